"""Parity at the size limits of the Rust core: the Rust backend against the pure-Python reference at
sizes just below, at and just above every chunk, block, fixed-size and parallel-split limit in
``rust/*.rs``.

Why: the fixed-size rollout kernel once reused its first chunk's mixture uniforms after step 256, and
no parity test saw it because none had a horizon over 256. Every limit below changes which code path
or which split of the work the core takes; MODEL.md fixes the result regardless, so both backends
must agree (bit for bit wherever MODEL.md fixes the order of operations, which is every kernel
here). Sizes stay small where the reference is slow (batch 1-2 for long horizons).

Limits found, and the test that covers each (sizes tested in brackets):

rust/rollout.rs
- ``CHUNK = 256`` (the fixed-size rollout draws a chunk's uniforms/normals ahead of its steps):
  ``test_rollout_fixed_kernel_across_chunks`` [horizon 255, 256, 257, 513 for (n, m) = (1,1), (2,2),
  (2,3), (3,2), (4,4); 511, 512, 600 for (2,2) and (1,3)] and ``test_rollout_clip_levels`` [horizon
  257, 300].
- ``ITEM_STEPS = 64`` (whole trajectories grouped into work items of >= 64 steps; trajectory index
  ``j = item * per_item + t``): ``test_rollout_items_and_parallel_threshold`` [horizon 1 x batch
  63/64/65/129; horizon 63/64/65 x batch 3; horizon 21 x batch 5 (4 per item, a partial last item)].
- ``PAR_MIN_STEPS = 512`` (batch * horizon from which trajectories run in parallel):
  ``test_rollout_items_and_parallel_threshold`` [7x73 = 511, 8x64 = 512, 9x57 = 513, 2x255 = 510,
  2x256 = 512, 2x257 = 514, 1x511/512/513 (one item: never parallel)], and
  ``test_boundary_results_do_not_depend_on_thread_count``.

rust/lqg.rs, linalg.rs, checks.rs, density.rs (the pieces the kernels share)
- ``dispatch_dims!`` (lqg.rs; fixed-size kernels for 1 <= n, m <= 4, the general kernel otherwise) in
  rollout, transitions and policy_samples: ``test_rollout_fixed_kernel_across_chunks`` [(4,4)],
  ``test_rollout_general_kernel_above_the_fixed_sizes`` [(5,1), (1,5), (5,4), (4,5), (5,5) at horizon
  257], ``test_transitions_fixed_and_general_kernels``, ``test_policy_samples_fixed_and_general_kernels``
  [(4,4), (5,1), (1,5), (4,5)].
- ``BLOCK = 1024`` (linalg.rs; block sums of MODEL.md 0.2): see transitions, policy_samples and ratios below.
- ``matvec_rows``' ``R = 8`` (linalg.rs; rows computed eight side by side, fewer than 8 rows the plain loop; used
  by GMRES and power iteration): ``test_power_iteration_around_eight_rows``,
  ``test_gmres_around_eight_rows`` [d = 1, 7, 8, 9, 15, 16, 17, 24].
- ``all_finite``'s groups of 8 (checks.rs; finiteness tested eight values at a time, the remainder one by one):
  ``test_nonfinite_parameters_found_at_every_position`` [lengths 7, 8, 9, 16, 17, 25; every position].
- ``clip_rho`` (density.rs; ``clip if clip < rho else rho``): ``test_rollout_clip_levels``,
  ``test_transitions_clip_levels``, ``test_rho_stats_clip_levels`` [clip below every ratio, equal to
  the smallest, between, equal to the largest (and to 1/p_mix, the mixture's bound), above every ratio,
  inf].

rust/transitions.rs, rust/policy_samples.rs
- ``BLOCK`` (per-sub-batch block tasks): ``test_transitions_blocks_and_sub_chunks`` [K = 1023, 1024,
  1025, 2047, 2048, 2049, 3073; K = 2048 / 2050 with R = 2 (sub-batches of exactly one block / one
  block + 1), 3072 with R = 3, 2049 with R = 5].
- ``SUB = 256`` (transitions.rs; draws generated per sub-chunk in ``block_fixed`` and ``policy_block_fixed``):
  ``test_transitions_blocks_and_sub_chunks`` [K = 255, 256, 257, 600 with R = 2 (sub-chunks starting
  at k = 300, not a multiple of 4)], ``test_policy_samples_blocks_and_mmd_rows`` [mmd_count 255, 256,
  257].
- ``PAR_MIN_SAMPLES = 2048`` (probe samples from which blocks run in parallel): both tests above
  [K = 2047, 2048, 2049].
- ``mmd_rows`` (policy_samples.rs; MMD rows split by block, a partial sub-chunk of MMD rows):
  ``test_policy_samples_blocks_and_mmd_rows`` [mmd_count 1023, 1024, 1025, 2048, 2049 = count].

rust/ratios.rs
- ``BLOCK`` (block sums of the moments and of the k_hat means): ``test_rho_stats_sizes`` [n = 1023,
  1024, 1025, 2049].
- ``LANES = 4`` (four full blocks summed side by side, groups of 4096): ``test_rho_stats_sizes``
  [4095, 4096, 4097, 8193].
- ``16 * BLOCK`` (chunks of ``map_chunks`` in ``moments``): ``test_rho_stats_sizes`` [16383, 16384,
  16385].
- ``SMALL = 1 << 16`` = ``PAR_MIN_RATIOS`` (large-n selection from a strided sample of ``SAMPLE = 8192``
  values; parallel moments and non-finite count): ``test_rho_stats_sizes`` [65535, 65536, 65537, with
  ties], ``test_rho_stats_nonfinite_across_small`` [65537 values of which 2 NaN: 65535 finite with the
  parallel non-finite count; 65539 values with 3 inf: 65536 finite].
- ``PAR_MIN_LOG1P = 1 << 15`` (k_hat candidates shared among threads when T' * mc >= 32768):
  ``test_rho_stats_khat_tail_sizes`` [T' = 606 (32724 log1p calls), 607 (32778)].
- the k_hat tail's block sums (T' > BLOCK): ``test_rho_stats_khat_tail_sizes`` [T' = 1024, 1025].
- ``CAND_ITEM = 4`` (candidates per work item; mc = 54 and 62 are not multiples of 4): same test.
- the 5-point minimum tail of the fit: ``test_rho_stats_khat_minimum_tail`` [4, 5, 6 exceedances].
- ties at a quantile's rank between -0.0 and +0.0 (selection may return either; the reference's stable
  sort returns a definite one): ``test_rho_stats_signed_zeros_at_the_quantiles`` [n = 100, 1025, 70000,
  small and large paths]. This found a real parity bug, fixed in ratios.rs (``stable_rank_value``).

rust/mmd.rs
- ``ITEM_PAIRS = 1 << 13`` (rows per work item of the stored triangle): ``test_mmd2_materialized_sizes``
  [M = 64 (8128 pairs, one item), 65 (8385, two)].
- ``PAR_MIN_PAIRS = 1 << 15`` (the stored triangle's rows in parallel): ``test_mmd2_materialized_sizes``
  [M = 128 (32640 pairs), 129 (33153)].
- ``ROW_GROUP = 64`` (rows of kernel values per parallel group when streaming; rows of distances per
  item in the selection): ``test_mmd2_streaming_paths`` [M = 1025 = 16 groups + 1 row].
- ``MATERIALIZE_CAP = 1 << 21`` (stored triangle up to M = 1024, streaming from 1025):
  ``test_mmd2_streaming_paths`` [M = 1024, 1025].
- ``DIRECT_CAP = 1 << 22`` and ``BUCKETS = 4096`` (median by direct selection up to M = 1448, by
  histogram passes from 1449): ``test_mmd2_streaming_paths`` [M = 1448, 1449]. The reference needs
  ~10 s per MMD at these sizes, so these four compare the core with a numpy oracle that performs
  MODEL.md 4.1's operations literally (per-column squared distances, an exact sort, glibc ``exp``
  through ``math.exp``, sequential ``cumsum`` sums); ``test_mmd2_oracle_equals_reference`` checks the
  oracle against the reference bit for bit first.

rust/philox.rs
- ``BATCH_BLOCKS = 128`` (normals generated 128 blocks = 512 normals at a time, with partial leading
  and trailing blocks) and ``ANGLE_BUCKETS = 64``: ``test_normals_and_uniforms_across_batches`` [count
  511, 512, 513, 1023, 1024, 1025, 2051 from start 0, 1, 2, 3].

rust/par.rs
- no size constant of its own: ``for_each_item`` runs in parallel when the caller's threshold says so
  and there is more than one item, with ``min(threads, items)`` threads. The callers' thresholds are
  covered above; ``test_boundary_results_do_not_depend_on_thread_count`` reruns the threshold sizes
  with RAYON_NUM_THREADS = 1, 2, 3.

rust/solver.rs, rust/power.rs: no limits besides ``matvec_rows`` (above); GMRES restarts every d
iterations (``test_gmres_around_eight_rows`` runs several cycles). rust/moments.rs: none (O(n^4) memory,
checked for overflow).
rust/bindings.rs: ``MAX_ELEMS = 1 << 30`` guards allocations (8 GiB), not a code path: not tested here.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import requires_rust
from offtd import rng
from offtd.backend import FIXED_POINT_BASE, STABILITY_BASE, Problem, get_backend

pytestmark = requires_rust

REF = get_backend("python")


def _rust():
    return get_backend("rust")


def assert_same(a, b, what=""):
    """Equal to 1e-12 relative (NaN where NaN, inf where inf), then bit for bit (a NaN's sign and
    payload carry no meaning and are not compared)."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    assert a.shape == b.shape, (what, a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True, err_msg=what)
    num = ~np.isnan(a)
    assert np.array_equal(a[num].view(np.uint64), b[num].view(np.uint64)), f"{what}: not bit-identical"


# ------------------------------------------------------------------------------------------------
# Problems: stable closed loops (states stay finite over 600 steps), distinct policies and a mixture
# strictly inside (0, 1), so that every mixture uniform, action normal and environment normal changes
# the result.


def make_problem(n, m, *, p_mix=0.3, clip=math.inf, seed=7, sigma_pi=0.4, sigma_mu=0.7):
    gen = np.random.default_rng(1000 * n + 10 * m + seed)
    a = 0.5 * np.eye(n) + 0.15 * gen.standard_normal((n, n)) / math.sqrt(n)
    b = 0.5 * gen.standard_normal((n, m)) / math.sqrt(m)
    lq = gen.standard_normal((n, n))
    lr = gen.standard_normal((m, m))
    prob = Problem(
        a=a,
        b=b,
        q=lq @ lq.T / n + 0.1 * np.eye(n),
        r=0.1 * (lr @ lr.T) / m,
        sigma_eps=0.2,
        sigma_0=1.0,
        reward_scale=0.5,
        sigma_pi=sigma_pi,
        sigma_mu=sigma_mu,
        p_mix=p_mix,
        gamma=0.9,
        rho_clip=clip,
        seed=0x9E3779B97F4A7C15 ^ seed,
    )
    k_pi = 0.2 * gen.standard_normal((m, n))
    k_mu = 0.2 * gen.standard_normal((m, n))
    for k in (k_pi, k_mu):
        assert max(abs(np.linalg.eigvals(a + b @ k))) < 0.95
    w = gen.standard_normal(prob.d)
    return prob, w, k_pi, k_mu


def with_clip(prob, clip):
    return Problem(**{**prob.__dict__, "rho_clip": clip})


def check_rollout(prob, w, k_pi, k_mu, iteration, batch, horizon):
    ro = _rust().rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)
    rp = REF.rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)
    assert ro.count == rp.count == batch * horizon
    assert ro.states.shape == (batch, horizon + 1, prob.n)
    for f in ("states", "rewards", "rho", "a", "b", "grad_k", "gram"):
        assert_same(getattr(ro, f), getattr(rp, f), f"{f} (batch {batch}, horizon {horizon})")
    assert_same(ro.td_sq, rp.td_sq, "td_sq")
    assert_same(ro.rho2, rp.rho2, "rho2")
    assert np.all(np.isfinite(ro.states))
    return ro


# ------------------------------------------------------------------------------------------------
# Rollout: CHUNK = 256, ITEM_STEPS = 64, PAR_MIN_STEPS = 512, the fixed-size dispatch


@pytest.mark.parametrize("n,m", [(1, 1), (2, 2), (2, 3), (3, 2), (4, 4)])
@pytest.mark.parametrize("horizon", [255, 256, 257, 513])
def test_rollout_fixed_kernel_across_chunks(n, m, horizon):
    prob, w, k_pi, k_mu = make_problem(n, m)
    ro = check_rollout(prob, w, k_pi, k_mu, 3, 1, horizon)
    assert np.all(ro.rho > 0)
    if horizon > 256:
        assert_chunk_sensitive(prob, 3, 0, horizon)


def assert_chunk_sensitive(prob, iteration, j, horizon, chunk=256):
    """The inputs can see the horizon-256 bug class: some step h >= chunk picks the other mixture
    component than step h - chunk, so reusing an earlier chunk's uniforms would change the action."""
    u = np.array(rng.Stream(prob.seed, 2, iteration, j).uniforms(0, horizon))
    pick_pi = u < prob.p_mix
    assert np.any(pick_pi[chunk:] != pick_pi[: horizon - chunk])


@pytest.mark.parametrize("n,m,batch,horizon", [(2, 2, 1, 511), (2, 2, 1, 512), (2, 2, 2, 600), (1, 3, 2, 600)])
def test_rollout_fixed_kernel_more_chunks(n, m, batch, horizon):
    prob, w, k_pi, k_mu = make_problem(n, m, seed=11)
    check_rollout(prob, w, k_pi, k_mu, 2**63 + 5, batch, horizon)
    for j in range(batch):
        assert_chunk_sensitive(prob, 2**63 + 5, j, horizon)


@pytest.mark.parametrize("n,m", [(5, 1), (1, 5), (5, 4), (4, 5), (5, 5)])
def test_rollout_general_kernel_above_the_fixed_sizes(n, m):
    prob, w, k_pi, k_mu = make_problem(n, m)
    check_rollout(prob, w, k_pi, k_mu, 1, 1, 257)


@pytest.mark.parametrize(
    "batch,horizon",
    [
        (63, 1),
        (64, 1),
        (65, 1),
        (129, 1),
        (3, 63),
        (3, 64),
        (3, 65),
        (5, 21),
        (7, 73),
        (8, 64),
        (9, 57),
        (2, 255),
        (2, 256),
        (2, 257),
        (1, 511),
        (1, 512),
        (1, 513),
    ],
)
def test_rollout_items_and_parallel_threshold(batch, horizon):
    prob, w, k_pi, k_mu = make_problem(2, 1, clip=2.0)
    ro = check_rollout(prob, w, k_pi, k_mu, 9, batch, horizon)
    # every trajectory starts from its own substream's normals (j = item * per_item + t)
    for j in range(batch):
        s0 = [prob.sigma_0 * z for z in rng.Stream(prob.seed, 1, 9, j).normals(0, prob.n)]
        assert_same(ro.states[j, 0], s0, f"start state of trajectory {j}")


def _clip_levels(rho, p_mix):
    """Clip values below every ratio, equal to the smallest, between, equal to the largest, equal to
    1/p_mix (the mixture's bound), above every ratio, and inf."""
    rho = np.asarray(rho, dtype=float).ravel()
    lo, hi = float(rho.min()), float(rho.max())
    levels = [lo / 2, lo, float(np.median(rho)), hi, hi * 2, math.inf]
    if p_mix > 0:
        levels.append(1.0 / p_mix)
    return levels


@pytest.mark.parametrize("n,m,horizon", [(2, 2, 257), (5, 1, 300)])
def test_rollout_clip_levels(n, m, horizon):
    prob, w, k_pi, k_mu = make_problem(n, m, p_mix=0.25)
    base = _rust().rollout(prob, w, k_pi, k_mu, 4, 1, horizon)
    results = {}
    for clip in _clip_levels(base.rho, prob.p_mix):
        ro = check_rollout(with_clip(prob, clip), w, k_pi, k_mu, 4, 1, horizon)
        # clipping changes rho_bar only: the ratios and the states are the same at every level
        assert_same(ro.rho, base.rho, "rho")
        assert_same(ro.states, base.states, "states")
        results[clip] = ro
    # at or above the largest ratio (and at the mixture's bound 1/p) nothing is clipped
    hi = float(base.rho.max())
    for clip in (hi, hi * 2, 1.0 / prob.p_mix):
        assert_same(results[clip].a, results[math.inf].a, f"A at clip {clip}")
        assert_same(results[clip].b, results[math.inf].b, f"b at clip {clip}")
    # at or below the smallest ratio every weight is the clip, so halving the clip (a power of two)
    # halves every term of A, b and grad_k exactly
    lo = float(base.rho.min())
    assert not np.array_equal(results[lo].a, results[math.inf].a)
    assert_same(results[lo / 2].a * 2.0, results[lo].a, "A below every ratio")
    assert_same(results[lo / 2].b * 2.0, results[lo].b, "b below every ratio")
    assert_same(results[lo / 2].grad_k * 2.0, results[lo].grad_k, "grad_k below every ratio")


# ------------------------------------------------------------------------------------------------
# Probe transitions: BLOCK, SUB = 256, PAR_MIN_SAMPLES = 2048


def _pool(n, rows=97, seed=3):
    return np.random.default_rng(seed).standard_normal((rows, n)) * 1.3


def check_transitions(prob, k_pi, k_mu, pool, count, repeats, base, iteration):
    to = _rust().transitions(prob, k_pi, k_mu, pool, count, repeats, base, iteration)
    tp = REF.transitions(prob, k_pi, k_mu, pool, count, repeats, base, iteration)
    assert to.counts.tolist() == list(tp.counts)
    assert sum(tp.counts) == count
    for f in ("a_sums", "b_sums", "rho"):
        assert_same(getattr(to, f), getattr(tp, f), f"{f} (K {count}, R {repeats})")
    return to


@pytest.mark.parametrize(
    "count,repeats",
    [
        (255, 1),
        (256, 1),
        (257, 1),
        (600, 2),
        (1023, 1),
        (1024, 1),
        (1025, 1),
        (1025, 3),
        (2047, 1),
        (2048, 1),
        (2049, 1),
        (2048, 2),
        (2050, 2),
        (2049, 5),
        (3072, 3),
        (3073, 2),
    ],
)
def test_transitions_blocks_and_sub_chunks(count, repeats):
    prob, _, k_pi, k_mu = make_problem(2, 2, clip=1.5)
    check_transitions(prob, k_pi, k_mu, _pool(2), count, repeats, STABILITY_BASE, 6)


@pytest.mark.parametrize("n,m", [(4, 4), (5, 1), (1, 5), (4, 5)])
@pytest.mark.parametrize("count", [1025, 2049])
def test_transitions_fixed_and_general_kernels(n, m, count):
    prob, _, k_pi, k_mu = make_problem(n, m)
    check_transitions(prob, k_pi, k_mu, _pool(n), count, 2, FIXED_POINT_BASE, 1)


def test_transitions_clip_levels():
    prob, _, k_pi, k_mu = make_problem(3, 2, p_mix=0.2)
    pool = _pool(3)
    base = _rust().transitions(prob, k_pi, k_mu, pool, 1100, 2, FIXED_POINT_BASE, 2)
    unclipped = None
    for clip in _clip_levels(base.rho, prob.p_mix):
        to = check_transitions(with_clip(prob, clip), k_pi, k_mu, pool, 1100, 2, FIXED_POINT_BASE, 2)
        assert_same(to.rho, base.rho, "rho")
        if clip == math.inf:
            unclipped = to
    hi = float(base.rho.max())
    for clip in (hi, 1.0 / prob.p_mix):
        to = _rust().transitions(with_clip(prob, clip), k_pi, k_mu, pool, 1100, 2, FIXED_POINT_BASE, 2)
        assert_same(to.a_sums, unclipped.a_sums, f"a_sums at clip {clip}")


# ------------------------------------------------------------------------------------------------
# Distribution-probe samples: BLOCK, SUB, PAR_MIN_SAMPLES, MMD rows per block


def check_policy_samples(prob, k_pi, k_mu, pool, count, mmd_count, iteration):
    po = _rust().policy_samples(prob, k_pi, k_mu, pool, count, mmd_count, iteration)
    pp = REF.policy_samples(prob, k_pi, k_mu, pool, count, mmd_count, iteration)
    for f in ("rho", "state_moment", "mmd_s", "mmd_a_pi", "mmd_a_mu"):
        assert_same(getattr(po, f), getattr(pp, f), f"{f} (K {count}, M {mmd_count})")
    assert_same(po.tv_sum, pp.tv_sum, "tv_sum")
    assert po.mmd_s.shape == (mmd_count, prob.n)
    return po


@pytest.mark.parametrize(
    "count,mmd_count",
    [
        (255, 255),
        (256, 256),
        (257, 257),
        (600, 255),
        (600, 256),
        (600, 257),
        (1023, 1023),
        (1024, 1024),
        (1025, 1025),
        (1025, 1024),
        (2047, 300),
        (2048, 2048),
        (2049, 1023),
        (2049, 1025),
        (2049, 2049),
        (3000, 0),
    ],
)
def test_policy_samples_blocks_and_mmd_rows(count, mmd_count):
    prob, _, k_pi, k_mu = make_problem(2, 2)
    check_policy_samples(prob, k_pi, k_mu, _pool(2), count, mmd_count, 12)


@pytest.mark.parametrize("n,m", [(4, 4), (5, 1), (1, 5), (4, 5)])
def test_policy_samples_fixed_and_general_kernels(n, m):
    prob, _, k_pi, k_mu = make_problem(n, m)
    check_policy_samples(prob, k_pi, k_mu, _pool(n), 2049, 1025, 3)


# ------------------------------------------------------------------------------------------------
# Rho statistics: BLOCK, LANES * BLOCK, 16 * BLOCK, SMALL, PAR_MIN_LOG1P, tail > BLOCK


def tail_len(n):
    return math.ceil(min(0.2 * n, 3.0 * math.sqrt(n)))


def check_stats(rho, clip, enabled=True):
    so = _rust().rho_stats(rho, clip, enabled)
    sp = REF.rho_stats(rho, clip, enabled)
    assert (so.n, so.nonfinite, so.clip_active) == (sp.n, sp.nonfinite, sp.clip_active)
    for f in ("mean", "rho2_mean", "min", "max", "p95", "p99", "clip", "clip_frac", "ess_frac", "khat"):
        assert_same(getattr(so, f), getattr(sp, f), f"{f} (n {len(rho)})")
    return so


def lognormal(size, seed, scale=1.2):
    return np.exp(np.random.default_rng(seed).standard_normal(size) * scale)


@pytest.mark.parametrize(
    "size", [1023, 1024, 1025, 2049, 4095, 4096, 4097, 8193, 16383, 16384, 16385, 65535, 65536, 65537]
)
def test_rho_stats_sizes(size):
    so = check_stats(lognormal(size, size), 2.0)
    assert so.n == size and math.isfinite(so.khat)
    # ties at every size: quantiles, the clip count at a tied value, and a k_hat tail with ties
    ties = np.round(lognormal(size, size + 1) * 4) / 4
    check_stats(ties, 1.0)


def test_rho_stats_nonfinite_across_small():
    rho = lognormal(65537, 5)
    rho[[10, 40000]] = math.nan
    assert check_stats(rho, 2.0).n == 65535
    rho = lognormal(65539, 6)
    rho[[0, 1024, 65538]] = [math.inf, -math.inf, math.inf]
    assert check_stats(rho, 2.0).n == 65536


@pytest.mark.parametrize("size", [40804, 40805, 116508, 116509])
def test_rho_stats_khat_tail_sizes(size):
    t = tail_len(size)
    mc = 30 + math.floor(math.sqrt(t))
    # 40804 / 40805: T' * mc = 32724 / 32778 around PAR_MIN_LOG1P = 32768; 116508 / 116509: T' = 1024 / 1025
    assert (size, t) in {(40804, 606), (40805, 607), (116508, 1024), (116509, 1025)}
    if size < 100000:
        assert (t * mc >= 1 << 15) == (size == 40805)
    rho = lognormal(size, size, scale=1.5)
    y = np.sort(rho)
    assert np.count_nonzero(y[size - t :] > y[size - t - 1]) == t  # T' = T: no ties at the threshold
    so = check_stats(rho, 3.0, False)
    assert math.isfinite(so.khat)


@pytest.mark.parametrize("exceed", [4, 5, 6])
def test_rho_stats_khat_minimum_tail(exceed):
    """n = 100: T = 20 and u = y[79]; with 100 - exceed ratios equal to 1.0 and `exceed` larger
    distinct ones, the tail holds `exceed` points: no fit below 5."""
    rho = np.ones(100)
    rho[:exceed] = 1.0 + np.arange(1, exceed + 1) ** 1.7
    so = check_stats(rho, 1.0)
    assert math.isnan(so.khat) == (exceed < 5)
    assert so.clip_frac == exceed / 100


def test_rho_stats_signed_zeros_at_the_quantiles():
    """-0.0 == +0.0, so a selection may return either zero at a quantile's rank; the reference's
    stable sort keeps equal values in input order and returns a definite one. Both signs must agree
    (the core once returned the sign selection happened to find)."""
    gen = np.random.default_rng(4)
    for size in (100, 1025, 70000):
        for extra in (0.0, 0.004):
            rho = np.where(gen.random(size) < 0.5, -0.0, 0.0)
            rho[gen.random(size) < extra] = 1.5  # a few positive ratios above the zeros
            rho[gen.random(size) < extra] = -1.0  # and a few negative ones below
            so = check_stats(rho, 1.0)
            assert so.p95 == 0.0 and so.p99 == 0.0


def test_rho_stats_clip_levels():
    rho = lognormal(5000, 8)
    rho[:50] = 1.0  # ratios exactly equal to a clip value
    for clip in _clip_levels(rho, 0.0) + [1.0]:
        for enabled in (True, False):
            so = check_stats(rho, clip, enabled)
            assert so.clip_frac == np.count_nonzero(rho > clip) / rho.size


# ------------------------------------------------------------------------------------------------
# MMD: ITEM_PAIRS, PAR_MIN_PAIRS, ROW_GROUP, MATERIALIZE_CAP, DIRECT_CAP / BUCKETS


def mmd_sets(m, dim, seed):
    """The probe's shape: x_i and y_i share their leading (state) coordinates; some ties."""
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((m, dim))
    y = gen.standard_normal((m, dim)) + 0.25
    y[:, : (dim + 1) // 2] = x[:, : (dim + 1) // 2]
    x[::7] = np.round(x[::7])
    return x, y


def mmd_oracle(x, y):
    """MODEL.md 4.1, literally, in numpy: squared distances summed over coordinates left to right
    from 0.0 (elementwise IEEE operations, no fused multiply-add), the lower median by an exact sort,
    kernel values through glibc's exp (``math.exp``), and each kernel sum left to right over (i outer,
    j inner, i != j) by a sequential ``cumsum`` in which the left-out terms are +0.0 (adding +0.0 to a
    sum of positive terms changes no bit)."""
    m, dim = x.shape
    z = np.vstack([x, y])
    d2 = np.zeros((2 * m, 2 * m))
    for c in range(dim):
        diff = z[:, None, c] - z[None, :, c]
        d2 = d2 + diff * diff
    iu = np.triu_indices(2 * m, 1)
    tri = d2[iu]
    if tri.size == 0:
        return math.nan, 1.0
    med = math.sqrt(float(np.sort(tri)[(tri.size + 1) // 2 - 1]))
    sigma = 1.0 if med == 0.0 else med
    if m < 2:
        return math.nan, sigma
    den = 2.0 * (sigma * sigma)
    kern_tri = np.fromiter((math.exp(-v / den) for v in tri.tolist()), dtype=float, count=tri.size)
    k = np.zeros((2 * m, 2 * m))
    k[iu] = kern_tri
    k = k + k.T  # the diagonal stays +0.0
    pairs = float(m * (m - 1))

    def seqsum(block):
        return float(np.cumsum(block.ravel())[-1])

    sxx = seqsum(k[:m, :m])
    syy = seqsum(k[m:, m:])
    kxy = k[:m, m:].copy()
    np.fill_diagonal(kxy, 0.0)  # the pairs (x_i, y_i) are left out
    sxy = seqsum(kxy)
    return (sxx / pairs + syy / pairs) - (2.0 * sxy) / pairs, sigma


@pytest.mark.parametrize("m,dim", [(1, 2), (2, 1), (17, 3), (65, 2)])
def test_mmd2_oracle_equals_reference(m, dim):
    x, y = mmd_sets(m, dim, m)
    vp, sp = REF.mmd2(x, y)
    vo, so = mmd_oracle(x, y)
    assert_same(vo, vp, "oracle mmd2")
    assert_same(so, sp, "oracle mmd_sigma")


@pytest.mark.parametrize("m,dim", [(63, 2), (64, 2), (65, 2), (128, 1), (129, 1)])
def test_mmd2_materialized_sizes(m, dim):
    x, y = mmd_sets(m, dim, 100 + m)
    vr, sr = _rust().mmd2(x, y)
    vp, sp = REF.mmd2(x, y)
    assert_same(vr, vp, f"mmd2 (M {m})")
    assert_same(sr, sp, f"mmd_sigma (M {m})")


@pytest.mark.parametrize("m", [1024, 1025, 1448, 1449])
def test_mmd2_streaming_paths(m):
    pairs = m * (2 * m - 1)
    assert (pairs <= 1 << 21) == (m <= 1024) and (pairs <= 1 << 22) == (m <= 1448)
    x, y = mmd_sets(m, 2, m)
    vr, sr = _rust().mmd2(x, y)
    vo, so = mmd_oracle(x, y)
    assert_same(sr, so, f"mmd_sigma (M {m})")
    assert_same(vr, vo, f"mmd2 (M {m})")


# ------------------------------------------------------------------------------------------------
# Random draws: BATCH_BLOCKS = 128 blocks of normals at a time


@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_normals_and_uniforms_across_batches(start):
    from offtd import _core

    s = rng.Stream(2024, 3, 5, 7)
    for count in (511, 512, 513, 1023, 1024, 1025, 2051):
        assert_same(_core.normals(2024, 3, 5, 7, start, count), s.normals(start, count), f"normals {start}+{count}")
        assert_same(_core.uniforms(2024, 3, 5, 7, start, count), s.uniforms(start, count), f"uniforms {start}+{count}")


# ------------------------------------------------------------------------------------------------
# Linear algebra: matvec_rows' eight-row interleave; all_finite's groups of eight


def _matrix(d, seed):
    gen = np.random.default_rng(seed)
    return 3.0 * np.eye(d) + gen.standard_normal((d, d)) / math.sqrt(d), gen.standard_normal(d)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 15, 16, 17, 24])
def test_power_iteration_around_eight_rows(d):
    a, v0 = _matrix(d, d)
    for iters in (1, 2, 25):
        assert_same(_rust().power_iteration(a, v0, iters), REF.power_iteration(a, v0, iters), f"d {d} iters {iters}")


@pytest.mark.parametrize("d", [1, 7, 8, 9, 15, 16, 17, 24])
def test_gmres_around_eight_rows(d):
    """solver.rs makes the reference's literal choices where MODEL.md 6 leaves the order open, so the
    two agree bit for bit away from breakdowns; tol 1e-15 and a small budget force restarts."""
    a, b = _matrix(d, 50 + d)
    for max_iters, tol in ((3, 1e-15), (3 * d + 1, 1e-15), (200, 1e-10)):
        so = _rust().solve(a, b, max_iters, tol)
        sp = REF.solve(a, b, max_iters, tol)
        assert (so.converged, so.iterations) == (sp.converged, sp.iterations)
        assert_same(so.x, sp.x, f"x (d {d})")
        assert_same(so.residual, sp.residual, "residual")


@pytest.mark.parametrize("length", [7, 8, 9, 16, 17, 25])
def test_nonfinite_parameters_found_at_every_position(length):
    """The core's finiteness check looks at eight values at a time and then the remainder: a
    non-finite value is found wherever it sits (the reference has no such check)."""
    from offtd import _core

    d = length
    a = np.eye(d)
    v0 = np.ones(d)
    assert math.isfinite(_core.power_iteration(a, v0, 1))
    for pos in range(length):
        for bad in (math.nan, math.inf, -math.inf):
            v = v0.copy()
            v[pos] = bad
            with pytest.raises(ValueError, match="^v0"):
                _core.power_iteration(a, v, 1)
    flat = np.eye(3).ravel()  # 9 values: one group of eight and a remainder of one
    for pos in range(9):
        mm = flat.copy()
        mm[pos] = math.nan
        with pytest.raises(ValueError, match="^m"):
            _core.power_iteration(mm.reshape(3, 3), np.ones(3), 1)


# ------------------------------------------------------------------------------------------------
# Thread counts at the parallel thresholds (par.rs)


_THREAD_SCRIPT = r"""
import hashlib, sys, numpy as np
sys.path.insert(0, sys.argv[1])
from test_parity_boundaries import boundary_digest
print(boundary_digest())
"""


def boundary_digest():
    """A digest of the core's results at the parallel thresholds' sizes."""
    r = _rust()
    h = hashlib.sha256()
    prob, w, k_pi, k_mu = make_problem(2, 2, clip=2.0)
    for batch, horizon in ((7, 73), (8, 64), (9, 57), (2, 256), (3, 65), (129, 1)):
        ro = r.rollout(prob, w, k_pi, k_mu, 9, batch, horizon)
        for f in ("states", "rho", "a", "b", "grad_k", "gram"):
            h.update(np.ascontiguousarray(getattr(ro, f)).tobytes())
    pool = _pool(2)
    for count in (2047, 2048, 2049):
        to = r.transitions(prob, k_pi, k_mu, pool, count, 3, STABILITY_BASE, 6)
        po = r.policy_samples(prob, k_pi, k_mu, pool, count, 1025, 6)
        for arr in (to.a_sums, to.b_sums, to.rho, po.rho, po.state_moment, po.mmd_a_pi):
            h.update(np.ascontiguousarray(arr).tobytes())
    for size in (65535, 65537):
        s = r.rho_stats(lognormal(size, size), 2.0, True)
        h.update(np.array([s.mean, s.rho2_mean, s.p95, s.p99, s.khat]).tobytes())
    s = r.rho_stats(lognormal(40805, 40805, scale=1.5), 3.0, False)
    h.update(np.array([s.khat]).tobytes())
    for m in (128, 129, 1025):
        h.update(np.array(r.mmd2(*mmd_sets(m, 2, m))).tobytes())
    return h.hexdigest()


def test_boundary_results_do_not_depend_on_thread_count():
    here = boundary_digest()
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    for threads in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", _THREAD_SCRIPT, tests_dir],
            capture_output=True,
            text=True,
            env={**os.environ, "RAYON_NUM_THREADS": threads},
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == here, f"RAYON_NUM_THREADS={threads}"
