"""The outer iteration (MODEL.md section 3): rollout, critic, actor, behaviour tracking, teacher, and the
probe schedule. Knows nothing about which backend runs the kernels."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import critics, rng
from .backend import Backend, Problem
from .exact.exact_metrics import exact_metrics, value_scale
from .exact.expected_td import critic_of, exact_td
from .model import critic_teacher_error, problem_from_spec, teacher
from .probes import PROBES, ProbeContext, ProbeState
from .spec import Spec

CORE_METRICS = ("td_loss", "w_norm", "mean_rho2", "tracking_gap", "critic_teacher_error")
EXTRA_CORE_METRICS = (
    "train_step_scale",
    "k_pi_norm",
    "closed_loop_radius",
    "teacher_defined",
    "teacher_value_scale",
    "teacher_w_norm",
    "mean_rho2_se",
    "mean_rho_bar",
    "mean_rho_bar_se",
    "mean_rho_bar2",
    "mean_rho_bar2_se",
)


@dataclass
class LoopResult:
    """Everything a run measured, before health and rendering."""

    iters: np.ndarray  # (T,) iteration numbers
    series: dict[str, np.ndarray]  # core metric -> (T,) values; NaN after divergence or interruption
    probe_series: dict[str, list[dict[str, float]]]  # probe name -> rows (each with "iter")
    exact_series: list[dict[str, float]]  # the exact metrics (MODEL.md 9) of each probe iteration
    completed: int  # iterations that ran
    diverged_at: int | None  # first iteration with a non-finite value
    diverged_what: str | None
    interrupted: bool
    final_w: np.ndarray
    final_k_pi: np.ndarray
    final_k_mu: np.ndarray
    elapsed_s: float
    teacher_undefined_iters: list[int] = field(default_factory=list)
    last_ratios: dict[str, np.ndarray] = field(default_factory=dict)  # probe -> its last pi/b ratios
    last_eigenvalues: dict[str, np.ndarray] = field(default_factory=dict)  # "estimate" / "exact" -> eig(A)


class Interrupted(BaseException):
    """Raised by a signal handler (the CLI's) while the loop computes an iteration (:func:`computing`):
    `run_loop` discards that iteration's partial work and ends the run as interrupted, at once, even
    inside a long kernel (the Rust core runs the handlers about every 10 ms). A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


_COMPUTING: set[int] = set()  # threads whose run_loop is inside an iteration's computation


def computing() -> bool:
    """True while `run_loop` computes an iteration on this thread (not while it records the iteration
    or after the loop): a signal handler may then raise :class:`Interrupted`."""
    return threading.get_ident() in _COMPUTING


class _Iterations:
    """The loop's guard: marks each iteration's computation (:func:`computing`) and turns an
    :class:`Interrupted` raised inside the loop into an interrupted run, discarding the partial
    iteration (its exact and probe rows, and what the probes carry over)."""

    def __init__(self, probe_series: dict[str, list], exact_series: list, state: ProbeState):
        self.probe_series, self.exact_series, self.state = probe_series, exact_series, state
        self.interrupted = False
        self._saved: tuple[dict[str, int], int, dict[str, Any]] | None = None

    def begin(self, probes: bool) -> None:
        """An iteration's computation starts; `probes`: it runs the probes (only those add rows and
        change the probe state, so only they need a snapshot to roll back)."""
        if probes:
            self._saved = (
                {k: len(v) for k, v in self.probe_series.items()},
                len(self.exact_series),
                {k: _shallow_copy(v) for k, v in vars(self.state).items()},
            )
        _COMPUTING.add(threading.get_ident())

    def end(self) -> None:
        _COMPUTING.discard(threading.get_ident())
        self._saved = None

    def __enter__(self) -> _Iterations:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        _COMPUTING.discard(threading.get_ident())
        if exc_type is None or not issubclass(exc_type, Interrupted):
            return False
        if self._saved is not None:
            rows, exact, state = self._saved
            for name, n in rows.items():
                del self.probe_series[name][n:]
            del self.exact_series[exact:]
            for name, value in state.items():
                setattr(self.state, name, value)
        self.interrupted = True
        return True


def _shallow_copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value


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
    algorithm = spec.critic.algorithm
    stats = critics.rollout_stats(algorithm)
    h = np.zeros_like(w)  # the secondary weights of tdc / gtd2 (MODEL.md 3.4)
    series = {name: np.full(T, math.nan) for name in CORE_METRICS + EXTRA_CORE_METRICS}
    probe_series: dict[str, list[dict[str, float]]] = {name: [] for name, _ in PROBES}
    exact_series: list[dict[str, float]] = []
    clip = spec.rho.clip if spec.rho.clip_enabled else math.inf
    state = ProbeState()
    diverged_at: int | None = None
    diverged_what: str | None = None
    interrupted = False
    completed = 0
    undefined: list[int] = []
    sp2 = problem.sigma_pi * problem.sigma_pi
    guard = _Iterations(probe_series, exact_series, state)

    with np.errstate(all="ignore"), guard:
        for t in range(T):
            if should_stop is not None and should_stop():
                interrupted = True
                break
            guard.begin(is_probe_iteration(t, spec))  # until guard.end(), a handler may raise Interrupted
            roll = backend.rollout(problem, w, k_pi, k_mu, t, spec.run.batch, spec.run.horizon, stats)
            n_tr = roll.count
            td_loss = roll.td_sq / n_tr
            mean_rho2 = roll.rho2 / n_tr
            train_step_scale = spec.critic.alpha_w / n_tr
            tch = teacher(problem, k_pi)
            if not tch.defined:
                undefined.append(t)

            if is_probe_iteration(t, spec):
                ex = exact_td(problem, k_pi, k_mu, spec.run.horizon, spec.critic.alpha_w, spec.rho.clip_enabled, backend,
                              critic=critic_of(spec))
                exact_row = exact_metrics(ex, roll.gram / n_tr, tch, spec.critic.alpha_w)
                exact_series.append({"iter": float(t), **exact_row})
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
                    exact=ex,
                    exact_row=exact_row,
                )
                for name, probe in PROBES:
                    if getattr(spec.probes, name.removesuffix("_probe")).enabled:
                        row = probe(ctx, state)
                        probe_series[name].append({"iter": float(t), **row})

            step = critics.update(algorithm, w, h, roll, spec.critic.alpha_w, spec.critic.alpha_h)
            w_new, h_new = step.w, step.h
            k_pi_new = k_pi + spec.actor.alpha_pi * ((roll.grad_k / n_tr) / sp2)
            k_mu_new = k_mu + spec.policy.beta * (k_pi_new - k_mu)
            gram_mean = roll.gram / n_tr
            row = {
                **_ratio_means(roll.rho, clip),
                "td_loss": td_loss,
                "w_norm": float(np.linalg.norm(w_new)),
                "mean_rho2": mean_rho2,
                "tracking_gap": float(np.linalg.norm(k_pi_new - k_mu_new)),
                "critic_teacher_error": critic_teacher_error(w_new, tch.w, gram_mean),
                "train_step_scale": train_step_scale,
                "k_pi_norm": float(np.linalg.norm(k_pi_new)),
                "closed_loop_radius": tch.closed_loop_radius,
                "teacher_defined": 1.0 if tch.defined else 0.0,
                "teacher_value_scale": value_scale(tch, gram_mean),
                "teacher_w_norm": float(np.linalg.norm(tch.w)) if tch.defined else math.nan,
            }
            guard.end()
            for name, value in row.items():
                series[name][t] = value
            completed = t + 1
            w, h, k_pi, k_mu = w_new, h_new, k_pi_new, k_mu_new
            if progress is not None:
                progress(t + 1, T)

            broken = _first_nonfinite(row, np.concatenate([w, h]), k_pi, k_mu, teacher_scaled=tch.defined and row["teacher_value_scale"] > 0.0)
            if broken is not None:
                diverged_at, diverged_what = t, broken
                break
    interrupted = interrupted or guard.interrupted  # an Interrupted raised inside an iteration

    return LoopResult(
        iters=np.arange(T, dtype=float),
        series=series,
        probe_series=probe_series,
        exact_series=exact_series,
        completed=completed,
        diverged_at=diverged_at,
        diverged_what=diverged_what,
        interrupted=interrupted,
        final_w=w,
        final_k_pi=k_pi,
        final_k_mu=k_mu,
        elapsed_s=time.perf_counter() - start,
        teacher_undefined_iters=undefined,
        last_ratios=dict(state.ratios),
        last_eigenvalues=dict(state.eigenvalues),
    )


def _ratio_means(rho: np.ndarray, clip: float) -> dict[str, float]:
    """Per-iteration means of rho^2, of rho_bar and of rho_bar^2 over the rollout, with the standard
    errors of those means (the ratios of distinct transitions are independent given the states). Sums by
    dot products: this runs every iteration."""
    r = np.asarray(rho, dtype=float).reshape(-1)
    n = r.size
    rb = np.minimum(r, clip) if math.isfinite(clip) else r
    r2 = r * r
    rb2 = rb * rb if math.isfinite(clip) else r2

    def mean_se(x: np.ndarray) -> tuple[float, float]:
        s1, s2 = float(x.sum()), float(x @ x)
        mean = s1 / n
        if n < 2:
            return mean, math.nan
        var = max(s2 - s1 * mean, 0.0) / (n - 1)
        return mean, math.sqrt(var / n)

    _, se_r2 = mean_se(r2)
    m_rb, se_rb = mean_se(rb)
    m_rb2, se_rb2 = (float(r2.sum()) / n, se_r2) if rb2 is r2 else mean_se(rb2)
    return {
        "mean_rho2_se": se_r2,
        "mean_rho_bar": m_rb,
        "mean_rho_bar_se": se_rb,
        "mean_rho_bar2": m_rb2,
        "mean_rho_bar2_se": se_rb2,
    }


def _first_nonfinite(
    row: dict[str, float], w: np.ndarray, k_pi: np.ndarray, k_mu: np.ndarray, teacher_scaled: bool
) -> str | None:
    for name in ("td_loss", "mean_rho2", "w_norm", "tracking_gap"):
        if not math.isfinite(row[name]):
            return name
    # critic_teacher_error is relative to the teacher's value: with a zero teacher (Q = R = 0) it is 0/0
    # or x/0, which says nothing about divergence.
    if teacher_scaled and not math.isfinite(row["critic_teacher_error"]):
        return "critic_teacher_error"
    for label, arr in (("w", w), ("K_pi", k_pi), ("K_mu", k_mu)):
        if not np.all(np.isfinite(arr)):
            return label
    return None
