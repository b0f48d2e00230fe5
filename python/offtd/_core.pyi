"""Typed stub of the compiled Rust core ``offtd._core`` (rust/bindings.rs).

Array arguments must be C-contiguous numpy float64 arrays of the stated shape: a wrong dtype, number
of dimensions or a non-array raises ``TypeError``; a wrong shape, a non-contiguous array, a non-finite
value where one is not allowed, or an out-of-domain scalar raises ``ValueError``; messages start with
the argument's name (``"k_pi: expected shape (2, 2), got (3, 2)"``). Integer arguments (seeds,
purposes, iterations) must lie in ``[0, 2**64)``, sizes (counts of samples, trajectories, steps) in
``[0, 2**48)``. Non-finite values are allowed only in ``pool``, ``rho`` (rho_stats), ``x``/``y`` (mmd2)
and ``states`` (features): they are a diverged run's data and propagate as IEEE inf/NaN.

Memory: each call first adds up what it will hold at once (outputs, scratch, per-thread buffers) and
compares it with the memory available now (the least of MemAvailable, the RLIMIT_AS headroom and the
memory cgroup's headroom), and allocates fallibly; a call that would not fit raises ``CoreMemoryError``
(a ``MemoryError`` that is also a ``ValueError``) naming the argument that sets the size and the bytes,
e.g. ``"count: this call needs 8589934592 bytes (8.000 GiB) of memory, more than the 2.855 GiB
available"``. It never aborts the process. Output arrays take over the kernel's buffers (no copy).

Interruption: the kernels release the interpreter lock; while one runs, the calling thread re-attaches
about every 10 ms of work and runs Python's signal handlers (``PyErr_CheckSignals``). When a handler
raises (``KeyboardInterrupt`` for SIGINT by default, ``offtd.loop.Interrupted`` from the CLI's), the
kernel stops within ~10 ms more and that exception is raised from the call; its partial results are
discarded. Only the main thread runs signal handlers, so a kernel called from another thread runs to the
end. Exceptions: ``lu_solve``'s factorisation (one nalgebra call) and ``rho_stats``'s selections (std's
``select_nth_unstable``, ~10 ns a ratio) are not interrupted midway.
"""

from typing import TypedDict

import numpy as np
from numpy.typing import NDArray

from offtd.backend import Problem

F64 = NDArray[np.float64]

BLOCK: int
"""Samples per block of a block sum (MODEL.md 0.2): 1024."""

class RolloutDict(TypedDict):
    states: F64  # (batch, horizon + 1, n)
    rewards: F64  # (batch, horizon)
    rho: F64  # (batch, horizon), unclipped
    count: int
    td_sq: float
    rho2: float
    grad_k: F64  # (m, n)
    gram: F64  # (d, d), C = sum phi phi^T
    a: F64  # (d, d), A = sum rho_bar phi (phi - gamma phi')^T
    b: F64  # (d,), b = sum rho_bar r phi
    c_rho: F64 | None  # (d, d) with stats bit 1
    a_e: F64 | None  # (d, d) with stats bit 2
    b_e: F64 | None  # (d,) with stats bit 2

class TransitionsDict(TypedDict):
    a_sums: F64  # (R, d, d)
    b_sums: F64  # (R, d)
    counts: NDArray[np.int64]  # (R,)
    rho: F64  # (count,)

class PolicySamplesDict(TypedDict):
    rho: F64  # (count,)
    tv_sum: float
    state_moment: F64  # (n, n)
    mmd_s: F64  # (mmd_count, n)
    mmd_a_pi: F64  # (mmd_count, m)
    mmd_a_mu: F64  # (mmd_count, m)

class RhoStatsDict(TypedDict):
    # backend.RhoStats's fields, in order (tests/test_core_api.py checks it against both)
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

def philox4x64(counter: tuple[int, int, int, int] | list[int], key: tuple[int, int] | list[int]) -> tuple[int, int, int, int]:
    """Philox4x64-10 block of a 4-word counter and a 2-word key."""

def philox_blocks(seed: int, purpose: int, iteration: int, substream: int, start: int, count: int) -> NDArray[np.uint64]:
    """Blocks ``start .. start+count`` of the stream, shape (count, 4)."""

def uniforms(seed: int, purpose: int, iteration: int, substream: int, start: int, count: int) -> F64:
    """Uniforms #start .. #start+count-1 of the stream (MODEL.md section 1)."""

def normals(seed: int, purpose: int, iteration: int, substream: int, start: int, count: int) -> F64:
    """Normals #start .. #start+count-1 of the stream (Box-Muller, MODEL.md section 1)."""

def features(states: F64) -> F64:
    """phi(s) for each row of an (N, n) array: (N, d)."""

def rollout(
    problem: Problem,
    w: F64,
    k_pi: F64,
    k_mu: F64,
    iteration: int,
    batch: int,
    horizon: int,
    stats: int,
) -> RolloutDict:
    """One iteration's rollout with its TD/actor/Gram sums (MODEL.md section 3).

    ``problem``: a :class:`offtd.backend.Problem` (or any object with its attributes, read as they are:
    ``a`` (n, n), ``b`` (n, m), ``q`` (n, n), ``r`` (m, m) C-contiguous float64, finite; ``rho_clip`` = inf
    disables clipping; errors name the attribute). ``w`` (d,), ``k_pi``/``k_mu`` (m, n), all finite;
    ``batch``, ``horizon`` >= 1; ``stats``: bit 1 adds ``c_rho``, bit 2 ``a_e`` and ``b_e`` (MODEL.md 3.3)."""

def transitions(
    problem: Problem,
    k_pi: F64,
    k_mu: F64,
    pool: F64,
    count: int,
    repeats: int,
    base: int,
    iteration: int,
) -> TransitionsDict:
    """Probe transitions (MODEL.md 4.2) from the (N, n) state ``pool``, ``repeats`` sub-batches."""

def policy_samples(
    problem: Problem,
    k_pi: F64,
    k_mu: F64,
    pool: F64,
    count: int,
    mmd_count: int,
    iteration: int,
) -> PolicySamplesDict:
    """The distribution probe's draws (MODEL.md 4.1) under ``problem``'s policies (its ``sigma_pi``,
    ``sigma_mu`` and ``seed``; the ratio is pi/mu whatever ``p_mix``; the problem is checked whole);
    ``mmd_count <= count``."""

def rho_stats(rho: F64, clip: float, clip_enabled: bool) -> RhoStatsDict:
    """Importance-ratio statistics (MODEL.md section 5); non-finite ratios are counted and excluded."""

def gmres(a: F64, b: F64, max_iters: int, tol: float) -> tuple[F64, bool, int, float]:
    """Restarted GMRES(d) (MODEL.md section 6): ``(x, converged, iterations, residual)``."""

def lu_solve(a: F64, b: F64) -> F64:
    """Direct LU solve with partial pivoting (for checking); ``ValueError`` if ``a`` is singular."""

def power_iteration(m: F64, v0: F64, iters: int) -> float:
    """Power-iteration estimate of M's spectral radius (MODEL.md section 6); NaN for ``iters == 0``."""

def mmd2(x: F64, y: F64) -> tuple[float, float]:
    """``(mmd2, mmd_sigma)`` for two (M, D) sets (MODEL.md 4.1): the paired U-statistic, whose cross
    sum leaves out ``k(x_i, y_i)``; mmd2 is NaN for M < 2; both are NaN when some pairwise distance is
    NaN (a NaN input, or two points holding the same infinity in the same coordinate)."""

def state_moments(problem: Problem, k_pi: F64, k_mu: F64, horizon: int) -> tuple[F64, F64]:
    """``(m2, m4)``, shapes (n, n) and (n, n, n, n): the averages over h = 0 .. horizon-1 of the exact
    second and fourth moments of the rollout states under the behaviour mixture (MODEL.md 9.2).

    ``problem`` as for :func:`rollout` (its ``a``, ``b``, sigmas and ``p_mix`` enter; the sigmas may be
    0 here); ``k_pi``/``k_mu`` (m, n), finite; ``horizon >= 1``. Equal to
    ``offtd.reference.moments.state_moments`` up to
rounding (the contractions associate differently), not bit for bit. O(horizon * n^5) time."""
