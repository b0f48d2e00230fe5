"""The Rust backend (``--backend rust``): a thin adapter from :class:`offtd.backend.Backend` to the
compiled module :mod:`offtd._core`.

Arrays are passed to the core as C-contiguous float64 (converted here if needed); the core checks
shapes, releases the interpreter lock while it computes, and returns numpy arrays that are wrapped in
backend.py's dataclasses unchanged.

Two things cross this adapter untouched: a call whose arrays would not fit in the memory available
raises ``MemoryError`` (``CoreMemoryError``, naming the argument and the bytes) instead of aborting, and
a signal handler's exception (``offtd.loop.Interrupted`` from the CLI, ``KeyboardInterrupt``) comes out
of a running kernel within about 10 ms, the kernel's partial work discarded (see ``_core.pyi``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from . import _core
from .backend import PolicySamples, Problem, RhoStats, RolloutBatch, SolveResult, StateMoments, TransitionSums


def _f64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


# backend.Problem's array fields (the core wants them C-contiguous float64)
_ARRAYS = tuple(f.name for f in dataclasses.fields(Problem) if "ndarray" in str(f.type))


def _is_f64(x) -> bool:
    return type(x) is np.ndarray and x.dtype == np.float64 and x.flags.c_contiguous


def _problem(problem: Problem) -> Problem:
    """The problem as the core reads it (by attribute): itself when its arrays are C-contiguous float64
    (~2 us), else a copy with converted arrays (dataclasses.replace costs ~10x more)."""
    arrays: dict[str, Any] = {name: _f64(v) for name in _ARRAYS if not _is_f64(v := getattr(problem, name))}
    return dataclasses.replace(problem, **arrays) if arrays else problem


def _pool(pool: np.ndarray, n: int) -> np.ndarray:
    return _f64(np.asarray(pool).reshape(-1, n))


class RustBackend:
    """Implements :class:`offtd.backend.Backend` with the Rust core."""

    name = "rust"

    def rollout(
        self,
        problem: Problem,
        w: np.ndarray,
        k_pi: np.ndarray,
        k_mu: np.ndarray,
        iteration: int,
        batch: int,
        horizon: int,
        stats: int = 0,
    ) -> RolloutBatch:
        out = _core.rollout(
            problem=_problem(problem),
            w=_f64(w),
            k_pi=_f64(k_pi),
            k_mu=_f64(k_mu),
            iteration=int(iteration),
            batch=int(batch),
            horizon=int(horizon),
            stats=int(stats),
        )
        return RolloutBatch(
            states=out["states"],
            rewards=out["rewards"],
            rho=out["rho"],
            count=int(out["count"]),
            td_sq=float(out["td_sq"]),
            rho2=float(out["rho2"]),
            grad_k=out["grad_k"],
            gram=out["gram"],
            a=out["a"],
            b=out["b"],
            c_rho=out["c_rho"],
            a_e=out["a_e"],
            b_e=out["b_e"],
        )

    def transitions(
        self,
        problem: Problem,
        k_pi: np.ndarray,
        k_mu: np.ndarray,
        pool: np.ndarray,
        count: int,
        repeats: int,
        base: int,
        iteration: int,
    ) -> TransitionSums:
        out = _core.transitions(
            problem=_problem(problem),
            k_pi=_f64(k_pi),
            k_mu=_f64(k_mu),
            pool=_pool(pool, problem.n),
            count=int(count),
            repeats=int(repeats),
            base=int(base),
            iteration=int(iteration),
        )
        return TransitionSums(a_sums=out["a_sums"], b_sums=out["b_sums"], counts=out["counts"], rho=out["rho"])

    def policy_samples(
        self,
        problem: Problem,
        k_pi: np.ndarray,
        k_mu: np.ndarray,
        pool: np.ndarray,
        count: int,
        mmd_count: int,
        iteration: int,
    ) -> PolicySamples:
        out = _core.policy_samples(
            problem=_problem(problem),
            k_pi=_f64(k_pi),
            k_mu=_f64(k_mu),
            pool=_pool(pool, problem.n),
            count=int(count),
            mmd_count=int(mmd_count),
            iteration=int(iteration),
        )
        return PolicySamples(
            rho=out["rho"],
            tv_sum=float(out["tv_sum"]),
            state_moment=out["state_moment"],
            mmd_s=out["mmd_s"],
            mmd_a_pi=out["mmd_a_pi"],
            mmd_a_mu=out["mmd_a_mu"],
        )

    def normals(self, seed: int, purpose: int, iteration: int, substream: int, count: int) -> np.ndarray:
        return _core.normals(seed, purpose, iteration, substream, 0, count)

    def rho_stats(self, rho: np.ndarray, clip: float, clip_enabled: bool) -> RhoStats:
        # the core's dict has the dataclass's fields (counts and clip_active as int)
        return RhoStats(**_core.rho_stats(_f64(np.asarray(rho).reshape(-1)), float(clip), bool(clip_enabled)))

    def solve(self, a: np.ndarray, b: np.ndarray, max_iters: int, tol: float) -> SolveResult:
        x, converged, iterations, residual = _core.gmres(_f64(a), _f64(b), int(max_iters), float(tol))
        return SolveResult(x=x, converged=bool(converged), iterations=int(iterations), residual=float(residual))

    def power_iteration(self, m: np.ndarray, v0: np.ndarray, iters: int) -> float:
        return float(_core.power_iteration(_f64(m), _f64(v0), int(iters)))

    def mmd2(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Returns (mmd2, mmd_sigma)."""
        value, sigma = _core.mmd2(_f64(x), _f64(y))
        return float(value), float(sigma)

    def state_moments(self, problem: Problem, k_pi: np.ndarray, k_mu: np.ndarray, horizon: int) -> StateMoments:
        """Exact time-averaged second and fourth moments of the rollout states (MODEL.md 9.2)."""
        m2, m4 = _core.state_moments(_problem(problem), _f64(k_pi), _f64(k_mu), int(horizon))
        return StateMoments(m2=m2, m4=m4)
