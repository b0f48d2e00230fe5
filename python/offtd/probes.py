"""The four probes of MODEL.md section 4, built on backend kernels. Each returns one row of metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import critics, rng
from .backend import FIXED_POINT_BASE, STABILITY_BASE, Backend, Problem, RolloutBatch, TransitionSums
from .exact.exact_metrics import relative_gap, value_scale
from .exact.expected_td import ExactTD, eig_summary, g_norm
from .exact.uncertainty import jackknife_interval
from .model import Teacher, kl_gaussian, q_kernel_td_loss
from .spec import Spec, sub_batches


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
    exact: ExactTD | None = None  # the iteration's exact expected TD (MODEL.md 9), when computed
    exact_row: dict[str, float] | None = None

    def pool(self) -> np.ndarray:
        """The N states at which TD updates happened, trajectory-major (MODEL.md 4)."""
        s = self.rollout.states[:, :-1, :]
        return np.ascontiguousarray(s.reshape(-1, s.shape[-1]))

    def gram_pool(self) -> np.ndarray:
        """G over the pool states: the rollout's Gram sum over its count."""
        return self.rollout.gram / self.rollout.count


@dataclass
class ProbeState:
    """What probes carry from one probe iteration to the next."""

    w_sharp_prev: np.ndarray | None = None
    # the last probe iteration's pi/b ratios per probe and eigenvalues of A_hat / exact A (for the plots)
    ratios: dict[str, np.ndarray] = field(default_factory=dict)
    eigenvalues: dict[str, np.ndarray] = field(default_factory=dict)


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


def _gap_noise(a_hat: np.ndarray, ts: TransitionSums, w_sharp: np.ndarray, gram: np.ndarray) -> float:
    """RMS sampling noise of w_sharp in the G-norm, sqrt(tr(G Cov(w_sharp))), by the delete-one-group
    jackknife over the R sub-batches: w_(-r) solves the fixed point without sub-batch r, and
    Cov = (R - 1)/R sum_r (w_(-r) - mean)(w_(-r) - mean)^T. NaN when R < 2 or a solve fails."""
    reps = ts.a_sums.shape[0]
    if reps < 2 or not np.all(np.isfinite(w_sharp)):
        return math.nan
    counts = ts.counts.astype(float)
    total = counts.sum()
    a_loo = (ts.a_sums.sum(axis=0)[None] - ts.a_sums) / (total - counts)[:, None, None]
    b_loo = (ts.b_sums.sum(axis=0)[None] - ts.b_sums) / (total - counts)[:, None]
    try:
        w_loo = np.linalg.solve(a_loo, b_loo[..., None])[..., 0]  # (R, d)
    except np.linalg.LinAlgError:
        return math.nan
    dev = w_loo - w_loo.mean(axis=0)
    cov = (reps - 1) / reps * (dev.T @ dev)
    return math.sqrt(max(float(np.trace(gram @ cov)), 0.0))


def fixed_point_probe(ctx: ProbeContext, state: ProbeState) -> dict[str, float]:
    cfg = ctx.spec.probes.fixed_point
    k = cfg.batch_size
    reps = sub_batches(cfg)
    ts = ctx.backend.transitions(ctx.problem, ctx.k_pi, ctx.k_mu, ctx.pool(), k, reps, FIXED_POINT_BASE, ctx.iteration)
    a_hat, b_hat = _a_b_hat(ts, k)
    if np.all(np.isfinite(a_hat)) and np.all(np.isfinite(b_hat)):
        sol = ctx.backend.solve(a_hat, b_hat, cfg.num_iters, cfg.tol)
        w_sharp, converged, iters, resid = sol.x, sol.converged, sol.iterations, sol.residual
    else:
        w_sharp = np.full(ctx.problem.d, math.nan)
        converged, iters, resid = False, 0, math.nan
    gram = ctx.gram_pool()
    # Gaps are relative to the teacher's RMS value over the pool states (MODEL.md 4.3); without a teacher,
    # to w_sharp's own.
    scale = value_scale(ctx.teacher, gram)
    if not scale > 0.0:
        scale = g_norm(w_sharp, gram) if np.all(np.isfinite(w_sharp)) else math.nan
    prev = state.w_sharp_prev
    drift_defined = prev is not None
    drift = relative_gap(w_sharp - prev, gram, scale) if prev is not None else 0.0
    state.w_sharp_prev = w_sharp
    with np.errstate(all="ignore"):
        noise = _gap_noise(a_hat, ts, w_sharp, gram) / scale if scale > 0.0 else math.nan
    exact_gap = ctx.exact_row["exact_teacher_gap"] if ctx.exact_row is not None else math.nan
    state.ratios["fixed_point_probe"] = ts.rho
    return {
        "batch_size": float(k),
        "num_iters": float(cfg.num_iters),
        "tol": cfg.tol,
        "repeats": float(reps),
        "converged": 1.0 if converged else 0.0,
        "iterations": float(iters),
        "residual": resid,
        "w_gap": relative_gap(ctx.w - w_sharp, gram, scale),
        "w_gap_se": noise,
        "w_sharp_drift": drift,
        "w_sharp_drift_defined": 1.0 if drift_defined else 0.0,
        "teacher_gap": relative_gap(w_sharp - ctx.teacher.w, gram, scale),
        "teacher_gap_se": noise,
        "teacher_gap_exact": exact_gap,
        **_rho_metrics(ctx, ts.rho),
    }


def _sub_eigs(subs: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(radius of I - alpha A_r, min Re eig A_r) of each sub-batch matrix; NaN when one is not finite."""
    if not np.all(np.isfinite(subs)):
        nan = np.full(subs.shape[0], math.nan)
        return nan, nan
    lam = np.linalg.eigvals(subs)
    return np.max(np.abs(1.0 - alpha * lam), axis=1), np.min(lam.real, axis=1)


def _leave_one_out(ts: TransitionSums) -> np.ndarray:
    """A_hat without sub-batch r, for each r: (sum of the other sub-batches' sums) / their count."""
    total, count = np.sum(ts.a_sums, axis=0), int(np.sum(ts.counts))
    rest = np.maximum(count - ts.counts, 1)  # one sub-batch: no rest (its interval is NaN anyway)
    return (total[None] - ts.a_sums) / rest[:, None, None]


def critic_matrix(ctx: ProbeContext, a_hat: np.ndarray) -> np.ndarray:
    """The critic's expected-update matrix estimated with the TD(0) matrix `a_hat` (MODEL.md 4.4)."""
    alg = ctx.spec.critic.algorithm
    roll = ctx.rollout
    if alg == "td0":
        return a_hat
    if alg == "etd":
        assert roll.a_e is not None, "etd's rollout carries A_e (critics.rollout_stats)"
        return np.asarray(roll.a_e / roll.count)
    c_rho = roll.c_rho / roll.count if roll.c_rho is not None else None
    return critics.expected_matrix(alg, a_hat, ctx.gram_pool(), c_rho, critics.eta(ctx.spec.critic.alpha_w, ctx.spec.critic.alpha_h))


def critic_sub_matrices(ctx: ProbeContext, subs: np.ndarray) -> np.ndarray:
    """The critic's matrix of each sub-batch; NaN for etd, whose A_e comes from the rollout as one total
    (no sub-batches: its interval is NaN and the verdict rests on the exact value)."""
    if ctx.spec.critic.algorithm == "etd":
        return np.full_like(subs, math.nan)
    return np.array([critic_matrix(ctx, a) for a in subs])


def stability_probe(ctx: ProbeContext, state: ProbeState) -> dict[str, float]:
    cfg = ctx.spec.probes.stability
    p = ctx.problem
    k, reps = cfg.batch_size, sub_batches(cfg)
    alpha = ctx.spec.critic.alpha_w
    ts = ctx.backend.transitions(p, ctx.k_pi, ctx.k_mu, ctx.pool(), k, reps, STABILITY_BASE, ctx.iteration)

    def proxy(a_hat: np.ndarray, substream: int) -> float:
        if not np.all(np.isfinite(a_hat)):
            return math.nan
        dim = a_hat.shape[0]
        v0 = ctx.backend.normals(p.seed, rng.POWER_INIT, ctx.iteration, substream, dim)
        m = np.eye(dim) - alpha * a_hat
        if not np.all(np.isfinite(m)):  # alpha_w x A_hat overflows (alpha_w ~ 1e308): no estimate
            return math.nan
        return ctx.backend.power_iteration(m, v0, cfg.power_iters)

    a_hat, _ = _a_b_hat(ts, k)
    subs = ts.a_sums / ts.counts[:, None, None]
    # the critic's own expected-update matrix (MODEL.md 4.4): from A_hat (and the pool's C, and the
    # rollout's C_rho for tdc), or for etd the rollout's A_e / N, which has no sub-batches
    a_hat = critic_matrix(ctx, a_hat)
    subs = critic_sub_matrices(ctx, subs)
    proxies = np.array([proxy(a, r) for r, a in enumerate(subs)])
    full = eig_summary(a_hat, alpha)
    state.ratios["stability_probe"] = ts.rho
    state.eigenvalues["estimate"] = full.eig
    if ctx.exact is not None:
        state.eigenvalues["exact"] = ctx.exact.pop.eig
    # the intervals: delete-a-group jackknife over the sub-batches (MODEL.md 9.7), each value the critic's
    # matrix without one sub-batch, where the eigenvalues are nearly linear in the sums
    loo_radius, loo_min_re = _sub_eigs(critic_sub_matrices(ctx, _leave_one_out(ts)), alpha)
    iv_r = jackknife_interval(full.radius, loo_radius)
    iv_a = jackknife_interval(full.min_re, loo_min_re)
    ex = ctx.exact_row or {}
    ddof_std = (lambda x: float(np.std(x, ddof=1))) if reps > 1 else (lambda x: 0.0)
    step_scale = (alpha / k) * k / ctx.rollout.count
    return {
        "batch_size": float(k),
        "power_iters": float(cfg.power_iters),
        "repeats": float(reps),
        "stability_proxy": proxy(a_hat, reps),
        "stability_proxy_mean": float(np.mean(proxies)),
        "stability_proxy_std": ddof_std(proxies),
        "stability_radius": iv_r.estimate,
        "stability_radius_se": iv_r.se,
        "stability_radius_lo": iv_r.lo,
        "stability_radius_hi": iv_r.hi,
        "stability_radius_z": iv_r.z(ex.get("exact_radius_pool", math.nan)),
        "a_min_real_eig": iv_a.estimate,
        "a_min_real_eig_se": iv_a.se,
        "a_min_real_eig_lo": iv_a.lo,
        "a_min_real_eig_hi": iv_a.hi,
        "a_min_real_eig_z": iv_a.z(ex.get("exact_min_re_eig_pool", math.nan)),
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
