"""The four probes of MODEL.md section 4, built on backend kernels. Each returns one row of metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import rng
from .backend import FIXED_POINT_BASE, STABILITY_BASE, Backend, Problem, RolloutBatch, TransitionSums
from .model import Teacher, kl_gaussian, q_kernel_td_loss
from .spec import Spec


@dataclass
class ProbeContext:
    """What a probe sees: the iteration's state before its updates, and its rollout."""

    spec: Spec
    problem: Problem
    backend: Backend
    iteration: int
    w: np.ndarray
    k_pi: np.ndarray
    k_mu: np.ndarray
    rollout: RolloutBatch
    teacher: Teacher
    td_loss: float
    train_step_scale: float

    def pool(self) -> np.ndarray:
        """The N states at which TD updates happened, trajectory-major (MODEL.md 4)."""
        s = self.rollout.states[:, :-1, :]
        return np.ascontiguousarray(s.reshape(-1, s.shape[-1]))


@dataclass
class ProbeState:
    """What probes carry from one probe iteration to the next."""

    w_sharp_prev: np.ndarray | None = None


def _rho_metrics(ctx: ProbeContext, rho: np.ndarray) -> dict[str, float]:
    stats = ctx.backend.rho_stats(rho, ctx.spec.rho.clip, ctx.spec.rho.clip_enabled)
    return stats.as_metrics()


def distribution_probe(ctx: ProbeContext, state: ProbeState) -> dict[str, float]:
    cfg = ctx.spec.probes.distribution
    p = ctx.problem
    k, mset = cfg.num_samples, cfg.action_samples
    ps = ctx.backend.policy_samples(p, ctx.k_pi, ctx.k_mu, ctx.pool(), k, mset, ctx.iteration)
    dk = ctx.k_pi - ctx.k_mu
    mean_sq = float(np.trace(dk @ ps.state_moment @ dk.T)) / k
    x = np.hstack([ps.mmd_s, ps.mmd_a_pi])
    y = np.hstack([ps.mmd_s, ps.mmd_a_mu])
    mmd2, mmd_sigma = ctx.backend.mmd2(np.ascontiguousarray(x), np.ascontiguousarray(y))
    return {
        "num_samples": float(k),
        "action_samples": float(mset),
        "dist_action_kl": kl_gaussian(p.m, p.sigma_pi, p.sigma_mu, mean_sq),
        "dist_action_tv": ps.tv_sum / k,
        "mmd2": mmd2,
        "mmd_sigma": mmd_sigma,
        "mean_l2": float(np.linalg.norm(ps.mmd_a_pi.mean(axis=0) - ps.mmd_a_mu.mean(axis=0))),
        **_rho_metrics(ctx, ps.rho),
    }


def _ordered_sum(parts: np.ndarray) -> np.ndarray:
    """Sub-batch sums added in order (MODEL.md 4.2), not numpy's pairwise sum."""
    acc = np.zeros(parts.shape[1:])
    for part in parts:
        acc = acc + part
    return acc


def _a_b_hat(ts: TransitionSums, count: int) -> tuple[np.ndarray, np.ndarray]:
    return _ordered_sum(ts.a_sums) / count, _ordered_sum(ts.b_sums) / count


def fixed_point_probe(ctx: ProbeContext, state: ProbeState) -> dict[str, float]:
    cfg = ctx.spec.probes.fixed_point
    k = cfg.batch_size
    ts = ctx.backend.transitions(ctx.problem, ctx.k_pi, ctx.k_mu, ctx.pool(), k, 1, FIXED_POINT_BASE, ctx.iteration)
    a_hat, b_hat = _a_b_hat(ts, k)
    if np.all(np.isfinite(a_hat)) and np.all(np.isfinite(b_hat)):
        sol = ctx.backend.solve(a_hat, b_hat, cfg.num_iters, cfg.tol)
        w_sharp, converged, iters, resid = sol.x, sol.converged, sol.iterations, sol.residual
    else:
        w_sharp = np.full(ctx.problem.d, math.nan)
        converged, iters, resid = False, 0, math.nan
    prev = state.w_sharp_prev
    drift_defined = prev is not None
    drift = float(np.linalg.norm(w_sharp - prev)) if prev is not None else 0.0
    state.w_sharp_prev = w_sharp
    return {
        "batch_size": float(k),
        "num_iters": float(cfg.num_iters),
        "tol": cfg.tol,
        "converged": 1.0 if converged else 0.0,
        "iterations": float(iters),
        "residual": resid,
        "w_gap": float(np.linalg.norm(ctx.w - w_sharp)),
        "w_sharp_drift": drift,
        "w_sharp_drift_defined": 1.0 if drift_defined else 0.0,
        "teacher_gap": float(np.linalg.norm(w_sharp - ctx.teacher.w)),
        **_rho_metrics(ctx, ts.rho),
    }


def _eig_summary(a_hat: np.ndarray, alpha_w: float) -> tuple[float, float]:
    """(spectral radius of I - alpha_w A, min real part of eig A); NaN when A is not finite."""
    if not np.all(np.isfinite(a_hat)):
        return math.nan, math.nan
    lam = np.linalg.eigvals(a_hat)
    return float(np.max(np.abs(1.0 - alpha_w * lam))), float(np.min(lam.real))


def stability_probe(ctx: ProbeContext, state: ProbeState) -> dict[str, float]:
    cfg = ctx.spec.probes.stability
    p = ctx.problem
    k, reps = cfg.batch_size, cfg.repeats
    alpha = ctx.spec.critic.alpha_w
    ts = ctx.backend.transitions(p, ctx.k_pi, ctx.k_mu, ctx.pool(), k, reps, STABILITY_BASE, ctx.iteration)
    eye = np.eye(p.d)

    def proxy(a_hat: np.ndarray, substream: int) -> float:
        if not np.all(np.isfinite(a_hat)):
            return math.nan
        v0 = ctx.backend.normals(p.seed, rng.POWER_INIT, ctx.iteration, substream, p.d)
        return ctx.backend.power_iteration(eye - alpha * a_hat, v0, cfg.power_iters)

    a_hat, _ = _a_b_hat(ts, k)
    subs = [ts.a_sums[r] / ts.counts[r] for r in range(reps)]
    proxies = np.array([proxy(a, r) for r, a in enumerate(subs)])
    sub_eigs = np.array([_eig_summary(a, alpha) for a in subs])
    radius, min_re = _eig_summary(a_hat, alpha)
    ddof_std = (lambda x: float(np.std(x, ddof=1))) if reps > 1 else (lambda x: 0.0)
    step_scale = (alpha / k) * k / ctx.rollout.count
    return {
        "batch_size": float(k),
        "power_iters": float(cfg.power_iters),
        "repeats": float(reps),
        "stability_proxy": proxy(a_hat, reps),
        "stability_proxy_mean": float(np.mean(proxies)),
        "stability_proxy_std": ddof_std(proxies),
        "stability_radius_exact": radius,
        "stability_radius_se": ddof_std(sub_eigs[:, 0]) / math.sqrt(reps),
        "a_min_real_eig": min_re,
        "a_min_real_eig_se": ddof_std(sub_eigs[:, 1]) / math.sqrt(reps),
        "stability_probe_step_scale": step_scale,
        "stability_probe_step_scale_ratio": _ratio(step_scale, ctx.train_step_scale),
        **_rho_metrics(ctx, ts.rho),
    }


def _ratio(num: float, den: float) -> float:
    """num / den, with 0 / 0 = 1: a frozen critic (alpha_w = 0) has equal, zero steps in both places."""
    if num == 0.0 and den == 0.0:
        return 1.0
    return num / den if den != 0.0 else math.inf


def q_kernel_probe(ctx: ProbeContext, state: ProbeState) -> dict[str, float]:
    roll = ctx.rollout
    loss_q, valid = q_kernel_td_loss(ctx.w, roll.states, roll.rewards, ctx.problem.gamma)
    diff = abs(ctx.td_loss - loss_q)
    return {
        "cache_batch_size": float(roll.states.shape[0]),
        "cache_horizon": float(roll.rewards.shape[1]),
        "cache_valid_t": float(valid),
        "td_loss": ctx.td_loss,
        "td_loss_from_Q": loss_q,
        "td_loss_from_Q_abs_diff": diff,
        "td_loss_from_Q_rel_diff": diff / max(abs(ctx.td_loss), np.finfo(float).tiny),
    }


Probe = Callable[[ProbeContext, ProbeState], dict[str, float]]
PROBES: tuple[tuple[str, Probe], ...] = (
    ("distribution_probe", distribution_probe),
    ("fixed_point_probe", fixed_point_probe),
    ("q_kernel_probe", q_kernel_probe),
    ("stability_probe", stability_probe),
)
