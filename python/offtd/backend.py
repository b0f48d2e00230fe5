"""The backend interface: the only thing the Rust core and the Python reference differ in.

Every kernel named in specs/MODEL.md that touches per-transition or per-sample data is a method of
:class:`Backend`. The loop, probes, health and report call these methods and never know which backend
ran. Both implementations must return the same numbers (bit for bit where MODEL.md fixes the order of
operations).

Array conventions: float64, C-contiguous numpy arrays; matrices row-major.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .rng import FIXED_POINT_BASE, STABILITY_BASE  # noqa: F401  (probe purpose bases; the registry is rng.py)

BLOCK = 1024


@dataclass(frozen=True)
class Problem:
    """Everything a kernel needs to simulate transitions: the LQG environment and the policy pair's
    noise levels. Gains (K_pi, K_mu) and critic weights are passed separately because they change every
    iteration."""

    a: np.ndarray  # (n, n)
    b: np.ndarray  # (n, m)
    q: np.ndarray  # (n, n)
    r: np.ndarray  # (m, m)
    sigma_eps: float
    sigma_0: float
    reward_scale: float
    sigma_pi: float
    sigma_mu: float
    p_mix: float
    gamma: float
    rho_clip: float  # math.inf when clipping is disabled
    seed: int

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    @property
    def m(self) -> int:
        return int(self.b.shape[1])

    @property
    def d(self) -> int:
        n = self.n
        return n * (n + 1) // 2 + n + 1


# Optional rollout statistics (MODEL.md 3.3), bit flags of `Backend.rollout(stats=...)`.
STATS_CROSS = 1  # C_rho (TDC)
STATS_EMPHASIS = 2  # A_e, b_e with the follow-on trace (emphatic TD)


@dataclass
class RolloutBatch:
    """One iteration's rollout (MODEL.md section 3) with its accumulated sums."""

    states: np.ndarray  # (batch, horizon + 1, n); states[j, h] = s_{j,h}
    rewards: np.ndarray  # (batch, horizon)
    rho: np.ndarray  # (batch, horizon), unclipped
    count: int  # N, transitions accumulated
    td_sq: float  # sum delta^2
    rho2: float  # sum rho^2
    grad_k: np.ndarray  # (m, n) sum (rho_bar * delta * dpi[i]) * s[j]
    gram: np.ndarray  # (d, d) C = sum phi(s) phi(s)^T
    a: np.ndarray  # (d, d) A = sum rho_bar phi(s) (phi(s) - gamma phi(s'))^T
    b: np.ndarray  # (d,) b = sum rho_bar r phi(s)
    c_rho: np.ndarray | None = None  # (d, d) sum rho_bar phi(s) phi(s)^T (STATS_CROSS)
    a_e: np.ndarray | None = None  # (d, d) A weighted by the follow-on trace F (STATS_EMPHASIS)
    b_e: np.ndarray | None = None  # (d,)


@dataclass
class TransitionSums:
    """Probe transitions (MODEL.md 4.2): per-sub-batch sums and every ratio."""

    a_sums: np.ndarray  # (R, d, d)
    b_sums: np.ndarray  # (R, d)
    counts: np.ndarray  # (R,) int64, samples per sub-batch
    rho: np.ndarray  # (K,), unclipped


@dataclass
class PolicySamples:
    """Distribution-probe draws (MODEL.md 4.1)."""

    rho: np.ndarray  # (K,) pi/mu at a ~ mu
    tv_sum: float  # sum max(1 - rho, 0)
    state_moment: np.ndarray  # (n, n) sum s s^T
    mmd_s: np.ndarray  # (M, n)
    mmd_a_pi: np.ndarray  # (M, m)
    mmd_a_mu: np.ndarray  # (M, m)


@dataclass
class StateMoments:
    """Population moments of the rollout states (MODEL.md 9.2): the averages over h = 0 .. horizon-1
    of E[s_h s_h^T] and E[s_h (x) s_h (x) s_h (x) s_h] under the behaviour mixture (odd moments are 0)."""

    m2: np.ndarray  # (n, n)
    m4: np.ndarray  # (n, n, n, n)


@dataclass
class RhoStats:
    """MODEL.md section 5."""

    n: int
    nonfinite: int
    mean: float
    rho2_mean: float
    min: float
    max: float
    p95: float
    p99: float
    clip: float
    clip_active: int
    clip_frac: float
    ess_frac: float
    khat: float

    def as_metrics(self) -> dict[str, float]:
        """The report's metric names for these statistics."""
        return {
            "rho_mean": self.mean,
            "rho2_mean": self.rho2_mean,
            "rho_min": self.min,
            "rho_max": self.max,
            "rho_p95": self.p95,
            "rho_p99": self.p99,
            "rho_clip": self.clip,
            "rho_clip_active": float(self.clip_active),
            "rho_clip_frac": self.clip_frac,
            "rho_ess_frac": self.ess_frac,
            "rho_khat": self.khat,
            "rho_nonfinite": float(self.nonfinite),
        }


@dataclass
class SolveResult:
    x: np.ndarray
    converged: bool
    iterations: int
    residual: float


class Backend(Protocol):
    """The kernels of MODEL.md. `iteration` addresses the random streams (section 1)."""

    name: str

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
    ) -> RolloutBatch: ...

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
    ) -> TransitionSums: ...

    def policy_samples(
        self,
        problem: Problem,
        k_pi: np.ndarray,
        k_mu: np.ndarray,
        pool: np.ndarray,
        count: int,
        mmd_count: int,
        iteration: int,
    ) -> PolicySamples: ...

    def normals(self, seed: int, purpose: int, iteration: int, substream: int, count: int) -> np.ndarray:
        """Normals #0..count-1 of the stream (seed, purpose, iteration, substream) (MODEL.md 1)."""
        ...

    def rho_stats(self, rho: np.ndarray, clip: float, clip_enabled: bool) -> RhoStats: ...

    def solve(self, a: np.ndarray, b: np.ndarray, max_iters: int, tol: float) -> SolveResult: ...

    def power_iteration(self, m: np.ndarray, v0: np.ndarray, iters: int) -> float: ...

    def mmd2(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Returns (mmd2, mmd_sigma)."""
        ...

    def state_moments(self, problem: Problem, k_pi: np.ndarray, k_mu: np.ndarray, horizon: int) -> StateMoments:
        """Exact time-averaged second and fourth moments of the rollout states (MODEL.md 9.2)."""
        ...


BACKENDS = ("rust", "python")


def get_backend(name: str) -> Backend:
    """The backend called `name` ("rust" or "python")."""
    if name == "python":
        from .reference import ReferenceBackend

        return ReferenceBackend()
    if name == "rust":
        from .rust_backend import RustBackend

        return RustBackend()
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def clip_value(clip: float, enabled: bool) -> float:
    """The clip threshold the kernels apply: +inf when clipping is disabled."""
    return float(clip) if enabled else math.inf
