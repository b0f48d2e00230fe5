"""The pure-Python reference backend (``--backend python``).

Slow and obviously correct: every kernel of specs/MODEL.md in plain Python floats and ``math``, in the
operation order MODEL.md writes, so the Rust core can be checked against it bit for bit. numpy arrays
come in and go out; inside, everything is converted with ``.tolist()`` and computed on Python floats.
"""

from __future__ import annotations

import numpy as np

from .. import rng
from ..backend import PolicySamples, Problem, RhoStats, RolloutBatch, SolveResult, StateMoments, TransitionSums
from .common import feature_dim, log_ratio, to_matrix, to_vector
from .mmd import mmd2 as _mmd2
from .moments import state_moments as _state_moments
from .power import power_iteration as _power_iteration
from .ratios import rho_stats as _rho_stats
from .rollout import rollout as _rollout
from .solver import gmres as _gmres
from .solver import lu_solve
from .transitions import policy_samples as _policy_samples
from .transitions import transitions as _transitions

__all__ = ["ReferenceBackend", "feature_dim", "log_ratio", "lu_solve"]


def _env_kwargs(problem: Problem) -> dict:
    return dict(
        a_mat=to_matrix(problem.a),
        b_mat=to_matrix(problem.b),
        q_mat=to_matrix(problem.q),
        r_mat=to_matrix(problem.r),
        sigma_eps=float(problem.sigma_eps),
        reward_scale=float(problem.reward_scale),
        sigma_pi=float(problem.sigma_pi),
        sigma_mu=float(problem.sigma_mu),
        p_mix=float(problem.p_mix),
        gamma=float(problem.gamma),
        rho_clip=float(problem.rho_clip),
        seed=int(problem.seed),
    )


def _f64(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64))


class ReferenceBackend:
    """Implements :class:`offtd.backend.Backend` in pure Python."""

    name = "python"

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
        n, m, d = problem.n, problem.m, problem.d
        out = _rollout(
            _env_kwargs(problem),
            sigma_0=float(problem.sigma_0),
            w=to_vector(w),
            k_pi=to_matrix(k_pi),
            k_mu=to_matrix(k_mu),
            iteration=int(iteration),
            batch=int(batch),
            horizon=int(horizon),
            stats=int(stats),
        )

        def opt(x, shape):
            return None if x is None else _f64(x).reshape(shape)

        return RolloutBatch(
            states=_f64(out.states).reshape(batch, horizon + 1, n),
            rewards=_f64(out.rewards).reshape(batch, horizon),
            rho=_f64(out.rho).reshape(batch, horizon),
            count=int(out.count),
            td_sq=float(out.td_sq),
            rho2=float(out.rho2),
            grad_k=_f64(out.grad_k).reshape(m, n),
            gram=_f64(out.gram).reshape(d, d),
            a=_f64(out.a).reshape(d, d),
            b=_f64(out.b).reshape(d),
            c_rho=opt(out.c_rho, (d, d)),
            a_e=opt(out.a_e, (d, d)),
            b_e=opt(out.b_e, (d,)),
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
        d = problem.d
        pool = np.asarray(pool).reshape(-1, problem.n)
        out = _transitions(
            _env_kwargs(problem),
            k_pi=to_matrix(k_pi),
            k_mu=to_matrix(k_mu),
            pool=to_matrix(pool),
            count=int(count),
            repeats=int(repeats),
            base=int(base),
            iteration=int(iteration),
        )
        return TransitionSums(
            a_sums=_f64(out.a_sums).reshape(repeats, d, d),
            b_sums=_f64(out.b_sums).reshape(repeats, d),
            counts=np.asarray(out.counts, dtype=np.int64),
            rho=_f64(out.rho).reshape(count),
        )

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
        n, m = problem.n, problem.m
        out = _policy_samples(
            k_pi=to_matrix(k_pi),
            k_mu=to_matrix(k_mu),
            sigma_pi=float(problem.sigma_pi),
            sigma_mu=float(problem.sigma_mu),
            seed=int(problem.seed),
            pool=to_matrix(np.asarray(pool).reshape(-1, n)),
            count=int(count),
            mmd_count=int(mmd_count),
            iteration=int(iteration),
        )
        return PolicySamples(
            rho=_f64(out.rho).reshape(count),
            tv_sum=float(out.tv_sum),
            state_moment=_f64(out.state_moment).reshape(n, n),
            mmd_s=_f64(out.mmd_s).reshape(mmd_count, n),
            mmd_a_pi=_f64(out.mmd_a_pi).reshape(mmd_count, m),
            mmd_a_mu=_f64(out.mmd_a_mu).reshape(mmd_count, m),
        )

    def normals(self, seed: int, purpose: int, iteration: int, substream: int, count: int) -> np.ndarray:
        return _f64(rng.normals(seed, purpose, iteration, substream, count))

    def rho_stats(self, rho: np.ndarray, clip: float, clip_enabled: bool) -> RhoStats:
        return _rho_stats(to_vector(np.asarray(rho).reshape(-1)), float(clip), bool(clip_enabled))

    def solve(self, a: np.ndarray, b: np.ndarray, max_iters: int, tol: float) -> SolveResult:
        res = _gmres(to_matrix(a), to_vector(b), int(max_iters), float(tol))
        return SolveResult(
            x=_f64(res.x), converged=bool(res.converged), iterations=int(res.iterations), residual=float(res.residual)
        )

    def power_iteration(self, m: np.ndarray, v0: np.ndarray, iters: int) -> float:
        return float(_power_iteration(to_matrix(m), to_vector(v0), int(iters)))

    def mmd2(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Returns (mmd2, mmd_sigma)."""
        value, sigma = _mmd2(to_matrix(x), to_matrix(y))
        return float(value), float(sigma)

    def state_moments(self, problem: Problem, k_pi: np.ndarray, k_mu: np.ndarray, horizon: int) -> StateMoments:
        m2, m4 = _state_moments(problem, _f64(k_pi), _f64(k_mu), int(horizon))
        return StateMoments(m2=m2, m4=m4)
