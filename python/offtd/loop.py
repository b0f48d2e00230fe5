"""The outer iteration (MODEL.md section 3): rollout, critic, actor, behaviour tracking, teacher, and the
probe schedule. Knows nothing about which backend runs the kernels."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import rng
from .backend import Backend, Problem
from .model import critic_teacher_error, problem_from_spec, teacher
from .probes import PROBES, ProbeContext, ProbeState
from .spec import Spec

CORE_METRICS = ("td_loss", "w_norm", "mean_rho2", "tracking_gap", "critic_teacher_error")
EXTRA_CORE_METRICS = ("train_step_scale", "k_pi_norm", "closed_loop_radius", "teacher_defined")


@dataclass
class LoopResult:
    """Everything a run measured, before health and rendering."""

    iters: np.ndarray  # (T,) iteration numbers
    series: dict[str, np.ndarray]  # core metric -> (T,) values; NaN after divergence or interruption
    probe_series: dict[str, list[dict[str, float]]]  # probe name -> rows (each with "iter")
    completed: int  # iterations that ran
    diverged_at: int | None  # first iteration with a non-finite value
    diverged_what: str | None
    interrupted: bool
    final_w: np.ndarray
    final_k_pi: np.ndarray
    final_k_mu: np.ndarray
    elapsed_s: float
    teacher_undefined_iters: list[int] = field(default_factory=list)


def initial_weights(spec: Spec, problem: Problem, k_pi: np.ndarray, backend: Backend) -> np.ndarray:
    """MODEL.md 3, critic initialisation."""
    d = problem.d
    if spec.critic.init == "zeros":
        return np.zeros(d)
    tch = teacher(problem, k_pi)
    if not tch.defined:
        return np.zeros(d)  # no teacher to start from; the teacher check reports it
    w = tch.w.copy()
    if spec.critic.init == "teacher_noise":
        z = backend.normals(problem.seed, rng.CRITIC_INIT, 0, 0, d)
        w = w + (spec.critic.init_noise * float(np.linalg.norm(w)) / math.sqrt(d)) * z
    return w


def is_probe_iteration(t: int, spec: Spec) -> bool:
    return (t % spec.run.probe_every == 0 and t > 0) or t == spec.run.outer_iters - 1


def run_loop(
    spec: Spec,
    backend: Backend,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> LoopResult:
    """Run the outer iterations of `spec` on `backend`."""
    start = time.perf_counter()
    problem = problem_from_spec(spec)
    T = spec.run.outer_iters
    k_pi = np.array(spec.policy.k_init, dtype=float)
    k_mu = np.array(spec.policy.k_mu_init, dtype=float)
    w = initial_weights(spec, problem, k_pi, backend)
    series = {name: np.full(T, math.nan) for name in CORE_METRICS + EXTRA_CORE_METRICS}
    probe_series: dict[str, list[dict[str, float]]] = {name: [] for name, _ in PROBES}
    state = ProbeState()
    diverged_at: int | None = None
    diverged_what: str | None = None
    interrupted = False
    completed = 0
    undefined: list[int] = []
    sp2 = problem.sigma_pi * problem.sigma_pi

    with np.errstate(all="ignore"):
        for t in range(T):
            if should_stop is not None and should_stop():
                interrupted = True
                break
            roll = backend.rollout(problem, w, k_pi, k_mu, t, spec.run.batch, spec.run.horizon)
            n_tr = roll.count
            td_loss = roll.td_sq / n_tr
            mean_rho2 = roll.rho2 / n_tr
            train_step_scale = spec.critic.alpha_w / n_tr
            tch = teacher(problem, k_pi)
            if not tch.defined:
                undefined.append(t)

            if is_probe_iteration(t, spec):
                ctx = ProbeContext(
                    spec=spec,
                    problem=problem,
                    backend=backend,
                    iteration=t,
                    w=w,
                    k_pi=k_pi,
                    k_mu=k_mu,
                    rollout=roll,
                    teacher=tch,
                    td_loss=td_loss,
                    train_step_scale=train_step_scale,
                )
                for name, probe in PROBES:
                    if getattr(spec.probes, name.removesuffix("_probe")).enabled:
                        row = probe(ctx, state)
                        probe_series[name].append({"iter": float(t), **row})

            w_new = w + spec.critic.alpha_w * (roll.grad_w / n_tr)
            k_pi_new = k_pi + spec.actor.alpha_pi * ((roll.grad_k / n_tr) / sp2)
            k_mu_new = k_mu + spec.policy.beta * (k_pi_new - k_mu)
            gram_mean = roll.gram / n_tr
            row = {
                "td_loss": td_loss,
                "w_norm": float(np.linalg.norm(w_new)),
                "mean_rho2": mean_rho2,
                "tracking_gap": float(np.linalg.norm(k_pi_new - k_mu_new)),
                "critic_teacher_error": critic_teacher_error(w_new, tch.w, gram_mean),
                "train_step_scale": train_step_scale,
                "k_pi_norm": float(np.linalg.norm(k_pi_new)),
                "closed_loop_radius": tch.closed_loop_radius,
                "teacher_defined": 1.0 if tch.defined else 0.0,
            }
            for name, value in row.items():
                series[name][t] = value
            completed = t + 1
            w, k_pi, k_mu = w_new, k_pi_new, k_mu_new
            if progress is not None:
                progress(t + 1, T)

            broken = _first_nonfinite(row, w, k_pi, k_mu, teacher_defined=tch.defined)
            if broken is not None:
                diverged_at, diverged_what = t, broken
                break

    return LoopResult(
        iters=np.arange(T, dtype=float),
        series=series,
        probe_series=probe_series,
        completed=completed,
        diverged_at=diverged_at,
        diverged_what=diverged_what,
        interrupted=interrupted,
        final_w=w,
        final_k_pi=k_pi,
        final_k_mu=k_mu,
        elapsed_s=time.perf_counter() - start,
        teacher_undefined_iters=undefined,
    )


def _first_nonfinite(
    row: dict[str, float], w: np.ndarray, k_pi: np.ndarray, k_mu: np.ndarray, teacher_defined: bool
) -> str | None:
    for name in ("td_loss", "mean_rho2", "w_norm", "tracking_gap"):
        if not math.isfinite(row[name]):
            return name
    if teacher_defined and not math.isfinite(row["critic_teacher_error"]):
        return "critic_teacher_error"
    for label, arr in (("w", w), ("K_pi", k_pi), ("K_mu", k_mu)):
        if not np.all(np.isfinite(arr)):
            return label
    return None
