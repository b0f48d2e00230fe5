"""Kernel-by-kernel parity: the Rust core (``RustBackend`` / ``offtd._core``) against the pure-Python
reference (``ReferenceBackend`` / ``offtd.rng``) on Hypothesis-generated inputs.

MODEL.md fixes the order of every floating-point operation, so random draws, rollouts, probe sums,
rho statistics and MMD are expected to be bit-identical; they are asserted equal to 1e-12 relative
and then bit for bit. The solver is checked within a tolerance derived from the residuals and the
condition number, power iteration within one derived from the eigen-gap. Sizes stay small: the
reference is pure Python.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import requires_rust
from offtd import rng
from offtd.backend import FIXED_POINT_BASE, STABILITY_BASE, Problem
from offtd.reference import ReferenceBackend
from offtd.reference.common import phi

pytestmark = requires_rust

U64 = st.integers(0, 2**64 - 1)
EPS = np.finfo(float).eps


def _rust():
    from offtd.rust_backend import RustBackend

    return RustBackend()


REF = ReferenceBackend()


def assert_same(a, b, what=""):
    """Equal to 1e-12 relative (NaN where NaN, inf where inf), then bit for bit (the sign and payload
    of a NaN carry no meaning and are not compared)."""
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    assert a.shape == b.shape, (what, a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0.0, equal_nan=True, err_msg=what)
    num = ~np.isnan(a)
    assert np.array_equal(a[num].view(np.uint64), b[num].view(np.uint64)), f"{what}: not bit-identical"


# ------------------------------------------------------------------------------------------------
# Random draws


@given(st.tuples(U64, U64, U64, U64), st.tuples(U64, U64))
def test_philox_blocks_equal(counter, key):
    from offtd import _core

    assert _core.philox4x64(counter, key) == rng.philox_block(counter, key)


@given(U64, U64)
def test_philox_matches_numpy_with_counter_plus_one(c0, k0):
    from offtd import _core

    counter = (c0, 3, 5, 0)
    key = (k0, 11)
    raw = np.random.Philox(counter=np.array(counter, dtype=np.uint64), key=np.array(key, dtype=np.uint64)).random_raw(4)
    plus_one = ((c0 + 1) & (2**64 - 1), 3 + (c0 == 2**64 - 1), 5, 0)
    assert tuple(int(x) for x in raw) == _core.philox4x64(plus_one, key)


@given(U64, st.integers(0, 60), U64, U64, st.integers(0, 2**62), st.integers(0, 40))
def test_stream_blocks_uniforms_normals_equal(seed, purpose, iteration, substream, start, count):
    from offtd import _core

    s = rng.Stream(seed, purpose, iteration, substream)
    blocks = _core.philox_blocks(seed, purpose, iteration, substream, start, count)
    assert blocks.dtype == np.uint64 and blocks.shape == (count, 4)
    assert [tuple(int(w) for w in row) for row in blocks] == [s.block(start + q) for q in range(count)]
    assert_same(_core.uniforms(seed, purpose, iteration, substream, start, count), s.uniforms(start, count), "uniforms")
    assert_same(_core.normals(seed, purpose, iteration, substream, start, count), s.normals(start, count), "normals")


def test_many_normals_equal():
    """Box-Muller through glibc log/sqrt/sin/cos on both sides: 20000 consecutive normals."""
    from offtd import _core

    assert_same(_core.normals(12345, 3, 7, 1, 0, 20000), rng.Stream(12345, 3, 7, 1).normals(0, 20000), "normals")


@given(st.integers(1, 4), st.integers(0, 6), st.integers(0, 2**32))
def test_features_equal(n, rows, seed):
    from offtd import _core

    states = np.random.default_rng(seed).standard_normal((rows, n)) * 3.0
    d = n * (n + 1) // 2 + n + 1
    expect = np.array([phi(s.tolist()) for s in states]).reshape(rows, d)
    assert_same(_core.features(states), expect, "features")


# ------------------------------------------------------------------------------------------------
# Problems


@st.composite
def problems(draw, n=None, m=None):
    n = draw(st.integers(1, 4)) if n is None else n
    m = draw(st.integers(1, 4)) if m is None else m
    seed = draw(st.integers(0, 2**32 - 1))
    gen = np.random.default_rng(seed)
    a = gen.standard_normal((n, n)) * draw(st.sampled_from([0.3, 0.6, 1.1]))
    b = gen.standard_normal((n, m))
    lq = gen.standard_normal((n, n))
    lr = gen.standard_normal((m, m))
    q = lq @ lq.T + 0.1 * np.eye(n)
    r = lr @ lr.T * 0.1
    sigma_pi = draw(st.floats(0.05, 2.0))
    sigma_mu = draw(st.one_of(st.just(sigma_pi), st.floats(0.05, 2.0)))
    p_mix = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
    clip_enabled = draw(st.booleans())
    clip = draw(st.floats(0.5, 5.0))
    prob = Problem(
        a=a,
        b=b,
        q=q,
        r=r,
        sigma_eps=draw(st.sampled_from([0.0, 0.05, 0.3])),
        sigma_0=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
        reward_scale=draw(st.sampled_from([0.1, 1.0])),
        sigma_pi=sigma_pi,
        sigma_mu=sigma_mu,
        p_mix=p_mix,
        gamma=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])),
        rho_clip=clip if clip_enabled else math.inf,
        seed=draw(U64),
    )
    k_pi = gen.standard_normal((m, n)) * 0.3
    k_mu = k_pi.copy() if draw(st.booleans()) else gen.standard_normal((m, n)) * 0.3
    w = gen.standard_normal(prob.d)
    return prob, w, k_pi, k_mu


def _check_rollout(prob, w, k_pi, k_mu, iteration, batch, horizon):
    ro = _rust().rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)
    rp = REF.rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)
    assert ro.count == rp.count == batch * horizon
    for f in ("states", "rewards", "rho", "a", "b", "grad_k", "gram"):
        assert_same(getattr(ro, f), getattr(rp, f), f)
    assert_same(ro.td_sq, rp.td_sq, "td_sq")
    assert_same(ro.rho2, rp.rho2, "rho2")
    return ro


@given(problems(), U64, st.integers(1, 4), st.integers(1, 6))
def test_rollout_equal(pw, iteration, batch, horizon):
    prob, w, k_pi, k_mu = pw
    _check_rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)


@given(problems(n=5, m=2), U64, st.integers(1, 3), st.integers(1, 4))
def test_rollout_equal_dynamic_sizes(pw, iteration, batch, horizon):
    """n = 5 is above the core's fixed-size kernels (n, m <= 4): the general kernel runs."""
    prob, w, k_pi, k_mu = pw
    _check_rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)
    pool = _pool(prob, w, k_pi, k_mu, iteration, batch, horizon)
    to = _rust().transitions(prob, k_pi, k_mu, pool, 60, 2, FIXED_POINT_BASE, iteration)
    tp = REF.transitions(prob, k_pi, k_mu, pool, 60, 2, FIXED_POINT_BASE, iteration)
    for f in ("a_sums", "b_sums", "rho"):
        assert_same(getattr(to, f), getattr(tp, f), f)


def test_rollout_equal_larger_batch():
    """More trajectories than threads, so the parallel reduction order is exercised."""
    gen = np.random.default_rng(5)
    n, m = 2, 2
    prob = Problem(
        a=np.array([[0.9, 0.2], [-0.1, 0.8]]),
        b=gen.standard_normal((n, m)),
        q=np.eye(n),
        r=0.1 * np.eye(m),
        sigma_eps=0.1,
        sigma_0=1.0,
        reward_scale=1.0,
        sigma_pi=0.4,
        sigma_mu=0.6,
        p_mix=0.1,
        gamma=0.95,
        rho_clip=3.0,
        seed=2024,
    )
    _check_rollout(prob, gen.standard_normal(prob.d), gen.standard_normal((m, n)) * 0.2, np.zeros((m, n)), 17, 64, 20)


def test_rollout_overflow_propagates_equally():
    """A blowing-up system: states overflow to inf/NaN in both backends, at the same places."""
    prob = Problem(
        a=np.array([[1e30]]),
        b=np.array([[1.0]]),
        q=np.eye(1),
        r=np.eye(1),
        sigma_eps=0.1,
        sigma_0=1.0,
        reward_scale=1.0,
        sigma_pi=0.5,
        sigma_mu=0.5,
        p_mix=0.0,
        gamma=0.9,
        rho_clip=math.inf,
        seed=3,
    )
    ro = _check_rollout(prob, np.ones(3), np.zeros((1, 1)), np.zeros((1, 1)), 0, 2, 30)
    assert not np.all(np.isfinite(ro.states))


# ------------------------------------------------------------------------------------------------
# Probe kernels


def _pool(prob, w, k_pi, k_mu, iteration, batch=3, horizon=5):
    ro = _rust().rollout(prob, w, k_pi, k_mu, iteration, batch, horizon)
    return ro.states[:, :-1, :].reshape(-1, prob.n)


@given(
    problems(),
    U64,
    st.one_of(st.integers(0, 40), st.integers(1020, 1300)),
    st.integers(1, 4),
    st.sampled_from([FIXED_POINT_BASE, STABILITY_BASE]),
)
def test_transitions_equal(pw, iteration, count, repeats, base):
    prob, w, k_pi, k_mu = pw
    pool = _pool(prob, w, k_pi, k_mu, iteration)
    to = _rust().transitions(prob, k_pi, k_mu, pool, count, repeats, base, iteration)
    tp = REF.transitions(prob, k_pi, k_mu, pool, count, repeats, base, iteration)
    assert to.counts.dtype == np.int64
    assert to.counts.tolist() == list(tp.counts)
    for f in ("a_sums", "b_sums", "rho"):
        assert_same(getattr(to, f), getattr(tp, f), f)


@given(problems(), U64, st.one_of(st.integers(0, 30), st.integers(1024, 1100)), st.integers(0, 30))
def test_policy_samples_equal(pw, iteration, count, mmd_count):
    prob, w, k_pi, k_mu = pw
    mmd_count = min(mmd_count, count)
    pool = _pool(prob, w, k_pi, k_mu, iteration)
    po = _rust().policy_samples(prob, k_pi, k_mu, pool, count, mmd_count, iteration)
    pp = REF.policy_samples(prob, k_pi, k_mu, pool, count, mmd_count, iteration)
    for f in ("rho", "state_moment", "mmd_s", "mmd_a_pi", "mmd_a_mu"):
        assert_same(getattr(po, f), getattr(pp, f), f)
    assert_same(po.tv_sum, pp.tv_sum, "tv_sum")


def test_probe_kernels_with_nonfinite_pool():
    prob = Problem(
        a=np.eye(2),
        b=np.ones((2, 1)),
        q=np.eye(2),
        r=np.eye(1),
        sigma_eps=0.1,
        sigma_0=1.0,
        reward_scale=1.0,
        sigma_pi=0.5,
        sigma_mu=0.7,
        p_mix=0.3,
        gamma=0.9,
        rho_clip=2.0,
        seed=9,
    )
    pool = np.array([[1.0, 2.0], [math.inf, 0.0], [math.nan, 1.0], [0.5, -0.5]])
    k = np.array([[0.1, -0.2]])
    to = _rust().transitions(prob, k, k * 0.5, pool, 50, 2, STABILITY_BASE, 4)
    tp = REF.transitions(prob, k, k * 0.5, pool, 50, 2, STABILITY_BASE, 4)
    for f in ("a_sums", "b_sums", "rho"):
        assert_same(getattr(to, f), getattr(tp, f), f)
    po = _rust().policy_samples(prob, k, k * 0.5, pool, 50, 10, 4)
    pp = REF.policy_samples(prob, k, k * 0.5, pool, 50, 10, 4)
    for f in ("rho", "state_moment", "mmd_s", "mmd_a_pi", "mmd_a_mu"):
        assert_same(getattr(po, f), getattr(pp, f), f)
    assert_same(po.tv_sum, pp.tv_sum, "tv_sum")


# ------------------------------------------------------------------------------------------------
# Rho statistics


def _check_stats(rho, clip, enabled):
    so = _rust().rho_stats(rho, clip, enabled)
    sp = REF.rho_stats(rho, clip, enabled)
    assert (so.n, so.nonfinite, so.clip_active) == (sp.n, sp.nonfinite, sp.clip_active)
    for f in ("mean", "rho2_mean", "min", "max", "p95", "p99", "clip", "clip_frac", "ess_frac", "khat"):
        assert_same(getattr(so, f), getattr(sp, f), f)
    return so


@st.composite
def ratio_arrays(draw):
    size = draw(st.one_of(st.integers(0, 30), st.integers(30, 3000)))
    seed = draw(st.integers(0, 2**32 - 1))
    gen = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["lognormal", "pareto", "ties", "constant"]))
    if kind == "lognormal":
        rho = np.exp(gen.standard_normal(size) * draw(st.floats(0.01, 3.0)))
    elif kind == "pareto":
        rho = (1.0 - gen.uniform(size=size)) ** -draw(st.floats(0.1, 1.5))
    elif kind == "ties":
        rho = np.round(gen.exponential(size=size) * 4) / 4
    else:
        rho = np.full(size, draw(st.floats(0.0, 10.0)))
    if size and draw(st.booleans()):
        idx = gen.integers(0, size, size=max(1, size // 20))
        rho[idx] = gen.choice([math.nan, math.inf, -math.inf], size=len(idx))
    return rho


@given(ratio_arrays(), st.floats(0.1, 10.0), st.booleans())
def test_rho_stats_equal(rho, clip, enabled):
    _check_stats(rho, clip if enabled else math.inf, enabled)
    _check_stats(rho, clip, enabled)


@pytest.mark.parametrize("size,seed", [(70_000, 1), (150_000, 2)])
def test_rho_stats_equal_large(size, seed):
    """Above 65536 finite ratios the core selects among the top candidates only; above ~116k the tail
    holds more than 1024 points and the k_hat means become block sums."""
    gen = np.random.default_rng(seed)
    rho = np.exp(gen.standard_normal(size) * 1.5)
    rho[::997] = math.nan
    st_ = _check_stats(rho, 3.0, True)
    assert st_.nonfinite == len(rho[::997])


# ------------------------------------------------------------------------------------------------
# MMD


@given(st.integers(0, 40), st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from(["normal", "ties", "same", "paired"]))
def test_mmd2_equal(m, dim, seed, kind):
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((m, dim))
    y = gen.standard_normal((m, dim)) + 0.3
    if kind == "paired":
        # the probe's shape: x_i and y_i share their leading (state) coordinates, so the left-out
        # pairs k(x_i, y_i) are the largest cross terms
        y[:, : (dim + 1) // 2] = x[:, : (dim + 1) // 2]
    elif kind == "ties":
        x = np.round(x)
        y = np.round(y)
    elif kind == "same":
        y = x.copy()
        x[:] = 1.0
        y[:] = 1.0
    vo, so = _rust().mmd2(x, y)
    vp, sp = REF.mmd2(x, y)
    assert_same(vo, vp, "mmd2")
    assert_same(so, sp, "mmd_sigma")


def test_mmd2_equal_with_infinite_points():
    """Infinite coordinates give infinite distances that order like any other on both sides (no
    distance is inf - inf = NaN here: each column holds at most one infinity of each sign)."""
    x = np.arange(24, dtype=float).reshape(6, 4)
    y = x[::-1] + 0.5
    x[0, 0] = math.inf
    y[2, 1] = -math.inf
    y[3, 0] = -math.inf
    vo, so = _rust().mmd2(x, y)
    vp, sp = REF.mmd2(x, y)
    assert_same(vo, vp, "mmd2")
    assert_same(so, sp, "mmd_sigma")


# ------------------------------------------------------------------------------------------------
# Solver and power iteration


@given(st.integers(0, 2**32 - 1), st.integers(1, 15), st.floats(0.05, 2.0), st.sampled_from([1e-6, 1e-10, 1e-13]), st.integers(1, 40))
def test_gmres_close(seed, d, spread, tol, max_iters):
    gen = np.random.default_rng(seed)
    a = 3.0 * np.eye(d) + spread * gen.standard_normal((d, d)) / np.sqrt(d)
    b = gen.standard_normal(d)
    so = _rust().solve(a, b, max_iters, tol)
    sp = REF.solve(a, b, max_iters, tol)
    # residuals are honest
    for s in (so, sp):
        true_res = np.linalg.norm(b - a @ s.x) / np.linalg.norm(b)
        assert s.residual == pytest.approx(true_res, rel=1e-6, abs=100 * EPS)
        assert s.converged == (s.residual <= tol)
    # forward difference bounded by cond(A) times the two residuals plus rounding
    cond = np.linalg.cond(a)
    diff = np.linalg.norm(so.x - sp.x) / np.linalg.norm(sp.x)
    assert diff <= cond * (so.residual + sp.residual) * 1.01 + 100 * d * EPS * cond
    # away from the tolerance boundary the verdicts agree, and the same algorithm spends the same budget
    if min(so.residual, sp.residual) > 2 * tol or max(so.residual, sp.residual) < 0.5 * tol:
        assert so.converged == sp.converged
    assert abs(so.iterations - sp.iterations) <= 1
    # the direct solve agrees with numpy
    from offtd import _core

    x_lu = _core.lu_solve(a, b)
    exact = np.linalg.solve(a, b)
    assert np.linalg.norm(x_lu - exact) <= 100 * d * EPS * cond * np.linalg.norm(exact)


def test_gmres_zero_rhs_and_singular():
    for a, b in [(np.eye(3), np.zeros(3)), (np.diag([2.0, 3.0]), np.array([4.0, 0.0]))]:
        so = _rust().solve(a, b, 10, 1e-12)
        sp = REF.solve(a, b, 10, 1e-12)
        assert (so.converged, so.iterations) == (sp.converged, sp.iterations)
        assert_same(so.x, sp.x, "x")
        assert_same(so.residual, sp.residual, "residual")


@given(st.integers(0, 2**32 - 1), st.integers(1, 10), st.floats(0.2, 3.0), st.sampled_from([0.1, 0.5, 0.8]), st.integers(1, 60))
def test_power_iteration_close(seed, d, lam1, ratio, iters):
    """M = Q diag(lam) Q^T with |lam_i| <= ratio * lam1 for i > 1: both estimates lie within the
    eigen-gap bound lam1 * 2 tan(theta_0) ratio^(iters-1) of lam1, hence of each other."""
    gen = np.random.default_rng(seed)
    q, _ = np.linalg.qr(gen.standard_normal((d, d)))
    lam = np.concatenate([[lam1], gen.uniform(-ratio, ratio, d - 1) * lam1])
    mat = q @ np.diag(lam) @ q.T
    v0 = gen.standard_normal(d)
    c = q.T @ v0
    assume(abs(c[0]) > 1e-3 * np.linalg.norm(v0))
    tan0 = np.linalg.norm(c[1:]) / abs(c[0])
    bound = lam1 * (2.0 * tan0 * ratio ** max(iters - 1, 0) + 1e-12) + 100 * d * EPS * lam1
    lo = _rust().power_iteration(mat, v0, iters)
    lp = REF.power_iteration(mat, v0, iters)
    assert abs(lo - lp) <= 2 * bound
    assert abs(lo - lam1) <= bound or iters < 3
    assert_same(lo, lp, "power iteration (same operations, same bits)")


# ------------------------------------------------------------------------------------------------
# Thread count


_THREAD_SCRIPT = r"""
import hashlib, json, numpy as np
from offtd import _core
from offtd.backend import Problem
g = np.random.default_rng(0)
a = np.array([[0.9, 0.2], [-0.1, 0.8]]); b = g.standard_normal((2, 2)); q = np.eye(2); r = 0.1 * np.eye(2)
prob = Problem(a=a, b=b, q=q, r=r, sigma_eps=0.1, sigma_0=1.0, reward_scale=1.0, sigma_pi=0.4, sigma_mu=0.6,
               p_mix=0.1, gamma=0.95, rho_clip=3.0, seed=77)
kp = g.standard_normal((2, 2)) * 0.2; km = np.zeros((2, 2)); w = g.standard_normal(6)
ro = _core.rollout(prob, w=w, k_pi=kp, k_mu=km, iteration=3, batch=200, horizon=30, stats=3)
pool = np.ascontiguousarray(ro["states"][:, :-1, :].reshape(-1, 2))
tr = _core.transitions(prob, k_pi=kp, k_mu=km, pool=pool, count=5000, repeats=3, base=30, iteration=3)
ps = _core.policy_samples(prob, kp, km, pool, 5000, 300, 3)
big = np.exp(g.standard_normal(100_000))
st = _core.rho_stats(big, 2.0, True)
x = np.hstack([ps["mmd_s"], ps["mmd_a_pi"]]); y = np.hstack([ps["mmd_s"], ps["mmd_a_mu"]])
h = hashlib.sha256()
for d in (ro, tr, ps, st):
    for k in sorted(d):
        if d[k] is not None:  # (an object array's bytes are addresses)
            h.update(np.asarray(d[k]).tobytes())
h.update(np.array(_core.mmd2(x, y)).tobytes())
print(h.hexdigest())
"""


def test_results_do_not_depend_on_thread_count():
    digests = set()
    for threads in ("1", "2", "3"):
        out = subprocess.run(
            [sys.executable, "-c", _THREAD_SCRIPT],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "RAYON_NUM_THREADS": threads},
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
