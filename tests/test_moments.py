"""Exact state moments (MODEL.md 9.2): the Rust kernel ``offtd._core.state_moments`` against the numpy
reference ``offtd.reference.moments.state_moments``, both against a long Monte Carlo of the mixture
rollout, and the kernel's input checks.

Nothing here is skipped: the Rust core must be built for this file to pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offtd import _core
from offtd.backend import Problem
from offtd.reference import ReferenceBackend
from offtd.reference.moments import cross6, isserlis
from offtd.reference.moments import state_moments as ref_state_moments
from offtd.rust_backend import RustBackend

# The two implementations run the same recursion but add in different orders (numpy's einsum picks
# its own contraction order; the Rust kernel contracts one mode at a time with its own loops), so they
# agree to rounding, not to the bit: to RTOL relative wherever the recursion is well conditioned.
RTOL = 1e-12
# Where it is not (a closed loop that grows, spectral radius >= 1, with a strongly non-normal L: the
# products of each step cancel, and every step's rounding error then grows with the moments), the
# double-precision recursion itself is only accurate to ~1e-11 .. 1e-7, whichever order it adds in:
# measured against an extended-precision recomputation, the Rust kernel and the reference are then
# equally far off the truth (and from each other). There the tolerance is NOISE_FACTOR times the
# reference's own measured error instead.
NOISE_FACTOR = 8.0


def _holder_scales(m2: np.ndarray, m4: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The natural size of every entry: |M2_ij| <= sqrt(M2_ii M2_jj) (Cauchy-Schwarz) and
    |M4_ijkl| <= (M4_iiii M4_jjjj M4_kkkk M4_llll)^(1/4) (Hoelder), both for the time-averaged moments
    too (they are the moments of a state drawn at a uniformly random step). Off-diagonal entries can
    vanish by cancellation while the terms that produced them do not, so their rounding error is
    measured against this bound; for diagonal entries the bound is the entry itself."""
    n = m2.shape[0]
    r2 = np.sqrt(np.diag(m2))
    r4 = np.array([m4[i, i, i, i] for i in range(n)]) ** 0.25  # fourth roots first: no overflow
    s2 = np.einsum("i,j->ij", r2, r2)
    s4 = np.einsum("i,j,k,l->ijkl", r4, r4, r4, r4)
    return s2, s4


def _assert_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray, what: str, rtol: float = RTOL) -> None:
    assert got.shape == want.shape, what
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(want)), what
    err = np.abs(got - want)
    bad = err > rtol * scale
    assert not bad.any(), f"{what}: max relative error {np.max(err / np.where(scale > 0, scale, 1.0)):.3e} > {rtol:.1e}"


def _extended_moments(kw: dict) -> tuple[np.ndarray, np.ndarray]:
    """The recursion of offtd.reference.moments in np.longdouble (64-bit significand on x86-64, 11 bits
    more than float64): a stand-in for the exact values, to measure the float64 results' own error."""
    ld = np.longdouble
    a, b, k_pi, k_mu = (np.asarray(kw[k], dtype=ld) for k in ("a", "b", "k_pi", "k_mu"))
    n = a.shape[0]
    eye = np.eye(n, dtype=ld)
    s0, eps, p = ld(kw["sigma_0"]), ld(kw["sigma_eps"]), ld(kw["p_mix"])
    m2, m4 = s0 * s0 * eye, s0**4 * isserlis(eye)
    comps = [
        (w, a + b @ k, ld(sig) * ld(sig) * (b @ b.T) + eps * eps * eye)
        for w, k, sig in ((p, k_pi, kw["sigma_pi"]), (1 - p, k_mu, kw["sigma_mu"]))
        if w > 0
    ]
    acc2, acc4 = np.zeros_like(m2), np.zeros_like(m4)
    for _ in range(kw["horizon"]):
        acc2 += m2
        acc4 += m4
        new2, new4 = np.zeros_like(m2), np.zeros_like(m4)
        for w, lmat, smat in comps:
            s2 = lmat @ m2 @ lmat.T
            y = np.einsum("ia,abcd->ibcd", lmat, m4)
            y = np.einsum("jb,ibcd->ijcd", lmat, y)
            y = np.einsum("kc,ijcd->ijkd", lmat, y)
            y = np.einsum("ld,ijkd->ijkl", lmat, y)
            new2 += w * (s2 + smat)
            new4 += w * (y + cross6(s2, smat) + isserlis(smat))
        m2, m4 = new2, new4
    return (acc2 / kw["horizon"]).astype(np.float64), (acc4 / kw["horizon"]).astype(np.float64)


@st.composite
def moment_problems(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 3))
    radius = draw(st.floats(0.0, 1.19))
    p_kind = draw(st.sampled_from(["zero", "random", "one"]))
    horizon = draw(st.integers(1, 300))
    sigma = st.one_of(st.just(0.0), st.floats(0.01, 2.0))
    sigma_pi, sigma_mu, sigma_eps = draw(sigma), draw(sigma), draw(sigma)
    sigma_0 = draw(st.floats(0.0, 3.0))
    gen = np.random.default_rng(seed)
    a = gen.standard_normal((n, n))
    rho = max(abs(np.linalg.eigvals(a)))
    a = a * (radius / rho) if rho > 0 else a  # spectral radius `radius` < 1.2
    b = gen.standard_normal((n, m))
    k_pi = 0.2 * gen.standard_normal((m, n)) / math.sqrt(n)
    k_mu = 0.2 * gen.standard_normal((m, n)) / math.sqrt(n)
    p_mix = {"zero": 0.0, "one": 1.0, "random": float(gen.uniform(0.0, 1.0))}[p_kind]
    return dict(
        a=a,
        b=b,
        k_pi=k_pi,
        k_mu=k_mu,
        sigma_pi=sigma_pi,
        sigma_mu=sigma_mu,
        sigma_eps=sigma_eps,
        sigma_0=sigma_0,
        p_mix=p_mix,
        horizon=horizon,
    )


@settings(max_examples=60)
@given(moment_problems())
def test_rust_matches_reference(kw):
    m2_r, m4_r = core_moments(**kw)
    m2_p, m4_p = ref_moments(**kw)
    n = kw["a"].shape[0]
    assert m2_r.shape == (n, n) and m4_r.shape == (n, n, n, n)
    assert m2_r.dtype == np.float64 and m4_r.dtype == np.float64
    t2, t4 = _extended_moments(kw)
    s2, s4 = _holder_scales(t2, t4)
    # the reference's own rounding error, relative to the entries' scales (0 where the scale is 0:
    # those entries are exactly 0 in all three computations)
    noise = max(
        np.max(np.abs(m2_p - t2) / np.where(s2 > 0, s2, 1.0)),
        np.max(np.abs(m4_p - t4) / np.where(s4 > 0, s4, 1.0)),
    )
    rtol = max(RTOL, NOISE_FACTOR * noise)
    _assert_close(m2_r, m2_p, s2, "m2", rtol)
    _assert_close(m4_r, m4_p, s4, "m4", rtol)


def test_stable_loops_agree_to_rtol():
    """Well-conditioned problems (every closed loop stable, rounding errors decay) meet RTOL itself,
    with no allowance for measured noise: horizon 300, n = 4, m = 3, both components."""
    gen = np.random.default_rng(12)
    n, m = 4, 3
    a = gen.standard_normal((n, n))
    a *= 0.6 / max(abs(np.linalg.eigvals(a)))
    kw = dict(
        a=a,
        b=gen.standard_normal((n, m)),
        k_pi=0.02 * gen.standard_normal((m, n)),
        k_mu=0.02 * gen.standard_normal((m, n)),
        sigma_pi=0.5,
        sigma_mu=1.1,
        sigma_eps=0.3,
        sigma_0=2.0,
        p_mix=0.37,
        horizon=300,
    )
    for k in (kw["k_pi"], kw["k_mu"]):
        assert max(abs(np.linalg.eigvals(a + kw["b"] @ k))) < 1.0
    m2_r, m4_r = core_moments(**kw)
    m2_p, m4_p = ref_moments(**kw)
    s2, s4 = _holder_scales(m2_p, m4_p)
    _assert_close(m2_r, m2_p, s2, "m2")
    _assert_close(m4_r, m4_p, s4, "m4")


def _problem(a, b, sigma_pi, sigma_mu, sigma_eps, sigma_0, p_mix) -> Problem:
    """A problem with these dynamics and noise levels (q, r, gamma, the clip and the seed do not enter the
    moments); a, b may be malformed (the error tests), q and r take their sizes from them."""
    n = np.shape(a)[0] if np.ndim(a) else 1
    m = np.shape(b)[-1] if np.ndim(b) else 1
    return Problem(
        a=a,
        b=b,
        q=np.eye(n),
        r=np.eye(m),
        sigma_eps=sigma_eps,
        sigma_0=sigma_0,
        reward_scale=1.0,
        sigma_pi=sigma_pi,
        sigma_mu=sigma_mu,
        p_mix=p_mix,
        gamma=0.9,
        rho_clip=math.inf,
        seed=1,
    )


def _args(kw: dict) -> tuple:
    """(problem, k_pi, k_mu, horizon) of a flat dict of the moments' inputs."""
    prob = _problem(*(kw[k] for k in ("a", "b", "sigma_pi", "sigma_mu", "sigma_eps", "sigma_0", "p_mix")))
    return prob, kw["k_pi"], kw["k_mu"], kw["horizon"]


def core_moments(**kw):
    return _core.state_moments(*_args(kw))


def ref_moments(**kw):
    return ref_state_moments(*_args(kw))


def test_backends_agree():
    a = np.array([[0.9, 0.3, 0.0], [-0.2, 0.7, 0.1], [0.05, 0.0, 0.8]])
    b = np.array([[1.0, 0.0], [0.5, 0.3], [0.0, 1.0]])
    k_pi = np.array([[-0.2, 0.1, 0.0], [0.0, -0.1, 0.2]])
    k_mu = np.zeros((2, 3))
    prob = _problem(a, b, 0.4, 0.9, 0.2, 1.0, 0.3)
    got = RustBackend().state_moments(prob, k_pi, k_mu, 50)
    want = ReferenceBackend().state_moments(prob, k_pi, k_mu, 50)
    s2, s4 = _holder_scales(want.m2, want.m4)
    _assert_close(got.m2, want.m2, s2, "m2")
    _assert_close(got.m4, want.m4, s4, "m4")


# ------------------------------------------------------------------------------------------------
# Monte Carlo


def _simulate(a, b, k_pi, k_mu, sigma_pi, sigma_mu, sigma_eps, sigma_0, p_mix, horizon, trajectories, seed):
    """Per-trajectory time averages of s_h s_h^T and s_h^{(x)4} over h = 0 .. horizon-1, simulating the
    rollout of MODEL.md 2 directly (numpy's generator, none of offtd's kernels): s_0 = sigma_0 z_0; at
    each step the mixture picks pi with probability p_mix, a = K_x s + sigma_x z, s' = A s + B a +
    sigma_eps z_e."""
    gen = np.random.default_rng(seed)
    n, m = b.shape
    s = sigma_0 * gen.standard_normal((trajectories, n))
    acc2 = np.zeros((trajectories, n, n))
    acc4 = np.zeros((trajectories, n, n, n, n))
    for _ in range(horizon):
        acc2 += np.einsum("ti,tj->tij", s, s)
        acc4 += np.einsum("ti,tj,tk,tl->tijkl", s, s, s, s)
        use_pi = (gen.random(trajectories) < p_mix)[:, None]
        mean = np.where(use_pi, s @ k_pi.T, s @ k_mu.T)
        noise = np.where(use_pi, sigma_pi, sigma_mu) * gen.standard_normal((trajectories, m))
        act = mean + noise
        s = s @ a.T + act @ b.T + sigma_eps * gen.standard_normal((trajectories, n))
    return acc2 / horizon, acc4 / horizon


MC = dict(
    a=np.array([[0.85, 0.25], [-0.3, 0.7]]),
    b=np.array([[0.4], [1.0]]),
    k_pi=np.array([[-0.5, 0.2]]),
    k_mu=np.array([[0.3, -0.4]]),
    sigma_pi=0.3,
    sigma_mu=1.2,
    sigma_eps=0.2,
    sigma_0=1.0,
    p_mix=0.3,
    horizon=30,
)


@pytest.fixture(scope="module")
def monte_carlo():
    x2, x4 = _simulate(**MC, trajectories=200_000, seed=20261203)
    # Trajectories are independent, so their time averages are iid: the Monte Carlo mean of each
    # entry has standard error (sample std over trajectories) / sqrt(#trajectories), estimated from
    # the same samples.
    count = x2.shape[0]
    return (
        x2.mean(axis=0),
        x2.std(axis=0, ddof=1) / math.sqrt(count),
        x4.mean(axis=0),
        x4.std(axis=0, ddof=1) / math.sqrt(count),
    )


def _within(exact, mean, se, z=5.0) -> bool:
    return bool(np.all(np.abs(exact - mean) <= z * se))


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_moments_match_monte_carlo(monte_carlo, impl):
    mean2, se2, mean4, se4 = monte_carlo
    fn = core_moments if impl == "rust" else ref_moments
    m2, m4 = fn(**MC)
    # every entry of the exact moments within 5 Monte Carlo standard errors (estimated from the
    # samples, see the fixture): a false alarm has probability ~6e-7 per entry under the CLT
    assert np.all(se2 > 0) and np.all(se4 > 0)
    assert _within(m2, mean2, se2), np.max(np.abs(m2 - mean2) / se2)
    assert _within(m4, mean4, se4), np.max(np.abs(m4 - mean4) / se4)
    # The comparison has power: the states are a non-Gaussian mixture, so Isserlis of the averaged
    # covariance is rejected, and so are the moments of either component alone (p_mix = 0 or 1).
    assert not _within(isserlis(m2), mean4, se4)
    for p in (0.0, 1.0):
        w2, w4 = fn(**{**MC, "p_mix": p})
        assert not _within(w2, mean2, se2)
        assert not _within(w4, mean4, se4)


# ------------------------------------------------------------------------------------------------
# Input checks (the kernel is new; tests/test_core_errors.py covers the older functions)


def _valid():
    return dict(
        a=np.array([[0.5, 0.1], [0.0, 0.4]]),
        b=np.array([[1.0], [0.5]]),
        k_pi=np.array([[0.1, -0.2]]),
        k_mu=np.array([[0.0, 0.3]]),
        sigma_pi=0.4,
        sigma_mu=0.8,
        sigma_eps=0.1,
        sigma_0=1.0,
        p_mix=0.2,
        horizon=5,
    )


def _msg(exc, **over) -> str:
    with pytest.raises(exc) as info:
        core_moments(**{**_valid(), **over})
    return str(info.value)


def test_valid_call():
    m2, m4 = core_moments(**_valid())
    assert m2.shape == (2, 2) and m4.shape == (2, 2, 2, 2)
    assert np.all(np.isfinite(m2)) and np.all(np.isfinite(m4))


@pytest.mark.parametrize("arg", ["a", "b", "k_pi", "k_mu"])
def test_array_checks(arg):
    v = _valid()[arg]
    assert _msg(TypeError, **{arg: v.astype(np.float32)}).startswith(f"{arg}:")
    assert _msg(TypeError, **{arg: v[None]}).startswith(f"{arg}:")
    assert _msg(TypeError, **{arg: v.tolist()}).startswith(f"{arg}:")
    view = np.repeat(v, 2, axis=-1)[..., ::2]
    assert "contiguous" in _msg(ValueError, **{arg: view})
    for bad in (math.nan, math.inf, -math.inf):
        w = v.copy()
        w.flat[-1] = bad
        msg = _msg(ValueError, **{arg: w})
        assert msg.startswith(f"{arg}:") and "finite" in msg


@pytest.mark.parametrize(
    "arg,value",
    [
        ("a", np.ones((2, 3))), ("a", np.zeros((0, 0))), ("b", np.ones((3, 1))), ("b", np.ones((2, 0))),
        ("k_pi", np.ones((1, 3))), ("k_mu", np.ones((2, 2))),
    ],  # fmt: skip
)
def test_shape_checks(arg, value):
    assert _msg(ValueError, **{arg: value}).startswith(f"{arg}:")


@pytest.mark.parametrize(
    "arg,value",
    [
        ("sigma_pi", -0.1),
        ("sigma_mu", math.nan),
        ("sigma_eps", -1e-9),
        ("sigma_0", math.inf),
        ("p_mix", 1.5),
        ("p_mix", -0.01),
        ("p_mix", math.nan),
        ("horizon", 0),
        ("horizon", -1),
    ],
)
def test_scalar_checks(arg, value):
    assert _msg(ValueError, **{arg: value}).startswith(f"{arg}:")


@pytest.mark.parametrize("arg,value", [("sigma_pi", "x"), ("horizon", 1.5), ("horizon", None), ("p_mix", None)])
def test_scalar_types(arg, value):
    assert arg in _msg(TypeError, **{arg: value})


def test_zero_sigmas_are_allowed():
    m2, m4 = core_moments(**{**_valid(), "sigma_pi": 0.0, "sigma_mu": 0.0, "sigma_eps": 0.0, "sigma_0": 0.0})
    assert np.all(m2 == 0.0) and np.all(m4 == 0.0)


def test_too_large_a_state_is_refused_before_allocating():
    n = 200  # 8 n^4 float64 buffers would exceed the core's 2**30-element limit
    msg = _msg(ValueError, a=np.zeros((n, n)), b=np.zeros((n, 1)), k_pi=np.zeros((1, n)), k_mu=np.zeros((1, n)))
    assert msg.startswith("a:")


@settings(max_examples=100)
@given(
    st.sampled_from(["sigma_pi", "sigma_mu", "sigma_eps", "sigma_0", "p_mix"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1.0, 5e-324, 1e308])),
)
def test_any_scalar_is_refused_or_gives_finite_moments(arg, value):
    """Finite parameters in their domains give finite moments here (a stable loop, 5 steps, sigmas up
    to 1e308 aside: those overflow under IEEE rules); everything else is a ValueError naming the
    argument."""
    try:
        m2, m4 = core_moments(**{**_valid(), arg: value})
    except ValueError as exc:
        assert str(exc).startswith(f"{arg}:")
        assert not (math.isfinite(value) and value >= 0 and (arg != "p_mix" or value <= 1))
        return
    assert math.isfinite(value) and value >= 0
    if value < 1e100:
        assert np.all(np.isfinite(m2)) and np.all(np.isfinite(m4))
