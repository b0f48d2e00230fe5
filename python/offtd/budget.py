"""What a spec costs before it runs: the memory a run holds at its peak and the work it does, each split
by the key that sets it, next to the kernels whose allocations and loops they model.

Validation (`offtd.spec`) refuses a spec whose memory estimate exceeds `run.max_memory_gb` (or 80% of
RAM), or whose work estimate exceeds `run.max_work_seconds`, with a SpecError naming the dominant key
and the estimate.

**Memory** (bytes, besides the interpreter and its modules) mirrors the Rust core's plans
(`rollout_bytes`, `transitions_bytes`, `policy_samples_bytes`, `mmd2_bytes`, `rho_stats_bytes`,
`state_moments_bytes` in rust/) and what the loop holds around them: up to three rollout batches (the
iteration's, the previous one's and the last probe iteration's, which the probe context keeps), the
rollout's window of per-trajectory partial sums (at most 32 MiB), the copy of the state pool each probe
makes and the loop's per-ratio temporaries; the series; and the largest of the probes (the blocks'
`d^2 + d` partial sums, at most 32 MiB of them at once, the ratios and their copies, the MMD set) and
of the exact theory (`(n, n, n, n)` moment tensors, LAPACK's workspace). Probes run one at a time, so
only the largest counts. `tests/test_budget.py` checks the estimate against the measured peak RSS.

**Work** (CPU-seconds on one core of the development machine: 2-core x86_64 VM, rates measured with
`RAYON_NUM_THREADS=1` under load, so the estimate leans high; several cores take less wall time) per
kernel, times the iterations or probe iterations that call it: the rollout ~ batch * horizon * d^2 (plus
the per-trajectory partial sums), each probe's transitions ~ batch_size * d^2, power iteration ~
power_iters * (repeats + 1) * d^2, GMRES ~ num_iters * d^2 (the bound: tol may never be reached), MMD ~
action_samples^2 * (n + m), the exact state moments ~ horizon * n^5 (at every probe iteration, and about
ten more times for the advice at the end), eigenvalues and the loop's own numpy work ~ d^3. The
estimates are for the Rust core; the reference backend is ~100-500x slower.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from .spec_schema import SpecError

if TYPE_CHECKING:  # pragma: no cover
    from .spec_schema import FixedPointProbeCfg, Spec, StabilityProbeCfg

# ---------------------------------------------------------------------------------------------- shapes

BLOCK = 1024  # samples per block (MODEL.md 0.2)
ROLLOUT_WINDOW_BYTES = 32 << 20  # rust/rollout.rs WINDOW_BYTES
TRANSITIONS_WINDOW_BYTES = 32 << 20  # rust/transitions.rs WINDOW_BYTES
ROLLOUT_ITEM_STEPS = 64  # rust/rollout.rs ITEM_STEPS
MMD_MATERIALIZE_CAP = 1 << 21  # rust/mmd.rs
MMD_DIRECT_CAP = 1 << 22
MMD_HIST_BYTES = 256 * 4096 * 24  # HIST_ITEMS histograms of BUCKETS (count, min, max)
THREAD_SCRATCH = 128 * 1024  # per-thread scratch of the parallel kernels (fixed-size buffers)
LINALG_WORKSPACE = 16 << 20  # numpy / LAPACK buffers of the eigenvalue and solve calls (measured: < 10 MiB)
# Bytes per outer iteration held by the core series and their report forms (numpy, Python lists, JSON and
# CSV text), and per probe iteration by the probe rows (dicts of ~25 metrics for each of four probes).
SERIES_BYTES_PER_ITER = 1024
PROBE_ROW_BYTES = 16 * 1024
# Advice at the end of a run checks remedies with the exact theory: at most this many exact_td calls.
ADVICE_EXACT_CALLS = 10


def feature_dim(n: int) -> int:
    return n * (n + 1) // 2 + n + 1


def sub_batches(cfg: FixedPointProbeCfg | StabilityProbeCfg) -> int:
    """The number of sub-batches a probe uses: `repeats`, at most `batch_size`."""
    return min(cfg.repeats, cfg.batch_size)


def probe_iterations(spec: Spec) -> int:
    """Iterations at which the probes (and the exact theory) run: every probe_every-th after 0, and the
    last."""
    last, every = spec.run.outer_iters - 1, spec.run.probe_every
    return last // every + (0 if last > 0 and last % every == 0 else 1)


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("RAYON_NUM_THREADS", "")))
    except ValueError:
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------- memory


def rollout_layout(n: int, m: int, stats: int = 0) -> int:
    """Values per trajectory of the rollout's partial sums (rust/rollout.rs `Layout`): td_sq, rho2,
    grad_k, the gram's triangle, A, b, and C_rho's triangle (stats bit 1), A_e and b_e (bit 2)."""
    d = feature_dim(n)
    tri = d * (d + 1) // 2
    return 2 + m * n + tri + d * d + d + (tri if stats & 1 else 0) + (d * d + d if stats & 2 else 0)


def rollout_core_bytes(n: int, m: int, batch: int, horizon: int, stats: int = 0) -> int:
    """rust/rollout.rs `rollout_bytes`: outputs, one window of partial sums, items, per-thread scratch."""
    d = feature_dim(n)
    lay = rollout_layout(n, m, stats)
    fit = max(ROLLOUT_WINDOW_BYTES // (8 * lay), 1)
    per_item = min(max(-(-ROLLOUT_ITEM_STEPS // horizon), 1), max(fit // 32, 1))
    window = min(max(fit // per_item, 1) * per_item, batch)
    outputs = 8 * batch * (horizon + 1) * n + 16 * batch * horizon
    return outputs + 8 * window * lay + 128 * (-(-window // per_item)) + _threads() * THREAD_SCRATCH + 8 * (5 * d * d + 3 * d)


def transitions_core_bytes(n: int, m: int, count: int, repeats: int) -> int:
    """rust/transitions.rs `transitions_bytes`: the ratios, a window of blocks' d^2 + d partial sums (at
    most 32 MiB), the sub-batch sums."""
    d = feature_dim(n)
    blocks = count // BLOCK + repeats
    window = min(blocks, max(TRANSITIONS_WINDOW_BYTES // (8 * (d * d + d)), 1))
    return (
        8 * count + 40 * blocks + window * (8 * (d * d + d) + 160) + repeats * (8 * (d * d + d) + 32)
        + _threads() * THREAD_SCRATCH
    )


def policy_samples_core_bytes(n: int, m: int, count: int, mmd_count: int) -> int:
    """rust/policy_samples.rs `policy_samples_bytes`."""
    blocks = -(-count // BLOCK)
    return 8 * count + 8 * mmd_count * (n + 2 * m) + blocks * (8 * (1 + n * (n + 1) // 2) + 224) + _threads() * THREAD_SCRATCH


def mmd2_core_bytes(mset: int) -> int:
    """rust/mmd.rs `mmd2_bytes`: the stored triangle up to MATERIALIZE_CAP pairs, else bounded buffers."""
    z = 2 * mset
    pairs = mset * max(z - 1, 0)
    if pairs <= MMD_MATERIALIZE_CAP:
        return 16 * pairs + 64 * z
    return max(16 * MMD_DIRECT_CAP, MMD_HIST_BYTES) + 8 * min(64, mset) * mset + 64 * (z // 64 + 256)


def rho_stats_core_bytes(count: int) -> int:
    """rust/ratios.rs `rho_stats_bytes`: a copy of the ratios and the selection's candidates."""
    return 16 * count + 64 * 1024


def memory_terms(spec: Spec) -> dict[str, int]:
    """Peak bytes a run holds, by the key that sets each part: the rollout batches and their scratch, the
    series of every iteration, each enabled probe, and the exact theory."""
    n, m = spec.env.state_dim, spec.env.action_dim
    d = feature_dim(n)
    b, h, t = spec.run.batch, spec.run.horizon, spec.run.outer_iters
    p = spec.probes
    N = b * h
    outputs = 8 * b * (h + 1) * n + 16 * N
    from .critics import rollout_stats

    stats = rollout_stats(spec.critic.algorithm)
    core = rollout_core_bytes(n, m, b, h, stats) - outputs
    # three batches alive (this iteration's, the previous one's, the last probe context's), the rollout's
    # scratch, a probe's copy of the pool, and the loop's per-ratio temporaries (_ratio_means, q_kernel)
    batch_bytes = 3 * outputs + core + 8 * N * n + 6 * 8 * N
    terms = {
        "run.horizon" if h > b else "run.batch": batch_bytes,
        "run.outer_iters": SERIES_BYTES_PER_ITER * t + PROBE_ROW_BYTES * (probe_iterations(spec) + 1),
    }
    if p.distribution.enabled:
        k, mset = p.distribution.num_samples, p.distribution.action_samples
        terms["probes.distribution.num_samples"] = (
            policy_samples_core_bytes(n, m, k, mset) + rho_stats_core_bytes(k) + 16 * mset * (n + m) + mmd2_core_bytes(mset)
        )
    for name, cfg in (("fixed_point", p.fixed_point), ("stability", p.stability)):
        if cfg.enabled:
            k, reps = cfg.batch_size, sub_batches(cfg)
            # the sums and their numpy forms: sub-batch matrices, leave-one-out or eigenvalue copies
            terms[f"probes.{name}.batch_size"] = (
                transitions_core_bytes(n, m, k, reps) + rho_stats_core_bytes(k) + 5 * 8 * reps * (d * d + d)
            )
    n4 = n**4
    # the core's (n, n, n, n) tensors, the numpy forms of G, T and their products, and LAPACK's workspace
    terms["env.state_dim"] = 8 * (9 * n4 + 16 * n * n + 40 * d * d) + LINALG_WORKSPACE
    return terms


def memory_estimate_bytes(spec: Spec) -> int:
    """Peak bytes of the arrays a run holds at once: the batches, the series, and the largest probe (or
    the exact theory)."""
    terms = memory_terms(spec)
    peak_parts = ("probes.", "env.state_dim")
    probe = max((v for k, v in terms.items() if k.startswith(peak_parts)), default=0)
    return sum(v for k, v in terms.items() if not k.startswith(peak_parts)) + probe


def memory_limit_bytes(spec: Spec) -> float:
    """`run.max_memory_gb`, at most 80% of the machine's RAM."""
    limit = spec.run.max_memory_gb * 2**30
    try:
        phys = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = min(limit, 0.8 * phys)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        pass
    return limit


def _dominant(terms: dict[str, int] | dict[str, float]) -> str:
    """The key whose term is largest: the one a refusal names."""
    return max(terms, key=terms.__getitem__)


def check_memory(spec: Spec) -> None:
    """SpecError naming the largest term when the memory estimate exceeds the limit."""
    need = memory_estimate_bytes(spec)
    limit = memory_limit_bytes(spec)
    if need > limit:
        terms = memory_terms(spec)
        key = _dominant(terms)
        raise SpecError(
            key,
            f"this spec needs about {need / 2**30:.3g} GiB for its arrays ({terms[key] / 2**30:.3g} GiB from {key}), "
            f"more than the {limit / 2**30:.3g} GiB allowed (run.max_memory_gb or 80% of RAM)",
        )


# ------------------------------------------------------------------------------------------------ work

NS = 1e-9
# Nanoseconds on one core (see the module docstring), by kernel.
ROLLOUT_STEP_NS = (200.0, 1.6, 4.0)  # + 1.6 d^2 (gram, A) + 4 (n+m)^2 per transition; +1000 without fixed sizes
ROLLOUT_TRAJ_NS = (500.0, 3.0)  # + 3 per partial-sum value, per trajectory
DYNAMIC_NS = 1000.0  # the dynamic-size kernels (n or m > 4) per transition
TRANSITION_NS = (200.0, 0.8, 4.0)  # per probe transition, as the rollout step
POLICY_SAMPLE_NS = (100.0, 20.0)  # + 20 n m per distribution-probe sample
RHO_STATS_NS = 30.0  # per ratio
POWER_STEP_NS = (40.0, 0.6)  # + 0.6 d^2 per power step
GMRES_ITER_NS = (150.0, 3.0)  # + 3 d^2 per inner iteration
MMD_PAIR_NS = ((12.0, 3.5), (40.0, 12.0))  # per pair: (stored, streaming) (base, per coordinate)
MOMENTS_STEP_NS = 7.0  # per n^5, per mixture component, per horizon step
EIG_NS = 5.0  # per d^3, per eigen-decomposition or dense solve
LOOP_ITER_NS = (300_000.0, 3.0)  # the loop's own work per iteration: + 3 d^3 (teacher, metrics)
PROBE_ITER_NS = (500_000.0, 60.0)  # exact theory and probes' numpy work per probe iteration: + 60 d^3
Q_KERNEL_NS = (20.0, 3.0)  # per transition: + 3 n^2


def work_terms(spec: Spec) -> dict[str, float]:
    """Estimated CPU-seconds of a whole run, by the key that sets each part."""
    n, m = spec.env.state_dim, spec.env.action_dim
    d = feature_dim(n)
    b, h, t = spec.run.batch, spec.run.horizon, spec.run.outer_iters
    p = spec.probes
    piters = probe_iterations(spec)
    dyn = DYNAMIC_NS if n > 4 or m > 4 else 0.0
    nm2 = (n + m) ** 2
    step = ROLLOUT_STEP_NS[0] + ROLLOUT_STEP_NS[1] * d * d + ROLLOUT_STEP_NS[2] * nm2 + dyn
    from .critics import rollout_stats

    lay = rollout_layout(n, m, rollout_stats(spec.critic.algorithm))
    traj = ROLLOUT_TRAJ_NS[0] + ROLLOUT_TRAJ_NS[1] * lay
    rollout = t * (b * h * step + b * traj)
    if p.q_kernel.enabled:
        rollout += piters * b * h * (Q_KERNEL_NS[0] + Q_KERNEL_NS[1] * n * n)
    terms: dict[str, float] = {"run.horizon" if h > b else "run.batch": rollout * NS}
    comps = 2 if 0.0 < spec.policy.p_mix < 1.0 else 1
    moments = (piters + ADVICE_EXACT_CALLS) * h * comps * MOMENTS_STEP_NS * n**5
    terms["run.horizon"] = terms.get("run.horizon", 0.0) + moments * NS
    loop = t * (LOOP_ITER_NS[0] + LOOP_ITER_NS[1] * d**3) + (piters + ADVICE_EXACT_CALLS) * (
        PROBE_ITER_NS[0] + PROBE_ITER_NS[1] * d**3
    )
    terms["run.outer_iters"] = loop * NS
    transition = TRANSITION_NS[0] + TRANSITION_NS[1] * d * d + TRANSITION_NS[2] * nm2 + dyn
    if p.distribution.enabled:
        k, mset = p.distribution.num_samples, p.distribution.action_samples
        sample = POLICY_SAMPLE_NS[0] + POLICY_SAMPLE_NS[1] * n * m + RHO_STATS_NS
        terms["probes.distribution.num_samples"] = piters * k * sample * NS
        pairs = mset * (2 * mset - 1)
        base, per = MMD_PAIR_NS[0] if pairs <= MMD_MATERIALIZE_CAP else MMD_PAIR_NS[1]
        terms["probes.distribution.action_samples"] = piters * pairs * (base + per * (n + m)) * NS
    if p.fixed_point.enabled:
        fp = p.fixed_point
        reps = sub_batches(fp)
        terms["probes.fixed_point.batch_size"] = piters * (
            fp.batch_size * (transition + RHO_STATS_NS) + (reps + 1) * EIG_NS * d**3
        ) * NS
        terms["probes.fixed_point.num_iters"] = piters * fp.num_iters * (GMRES_ITER_NS[0] + GMRES_ITER_NS[1] * d * d) * NS
    if p.stability.enabled:
        st = p.stability
        reps = sub_batches(st)
        terms["probes.stability.batch_size"] = piters * (
            st.batch_size * (transition + RHO_STATS_NS) + (reps + 2) * EIG_NS * d**3
        ) * NS
        terms["probes.stability.power_iters"] = (
            piters * (reps + 1) * st.power_iters * (POWER_STEP_NS[0] + POWER_STEP_NS[1] * d * d) * NS
        )
    return terms


def work_estimate_seconds(spec: Spec) -> float:
    """Estimated CPU-seconds of the whole run (one core of the development machine)."""
    return math.fsum(work_terms(spec).values())


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    return f"{seconds:.3g} s"


def check_work(spec: Spec) -> None:
    """SpecError naming the dominant key when the work estimate exceeds `run.max_work_seconds`."""
    need = work_estimate_seconds(spec)
    limit = spec.run.max_work_seconds
    if need > limit:
        terms = work_terms(spec)
        key = _dominant(terms)
        raise SpecError(
            key,
            f"this spec needs about {need:.3g} CPU-seconds of work ({_duration(need)}; {_duration(terms[key])} from "
            f"{key}), more than run.max_work_seconds = {limit:g} ({_duration(limit)}); lower {key} or raise "
            "run.max_work_seconds",
        )
