"""Importance ratios (specs/MODEL.md section 2) and rho statistics (section 5) of the reference backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from offtd import rng
from offtd.backend import Problem
from offtd.model import e_mu_rho2
from offtd.reference import ReferenceBackend
from offtd.reference.common import clip_ratio, log_ratio, lpi_lmu
from offtd.reference.ratios import gpd_fit_k, pareto_khat, rho_stats

EPS = 2.220446049250313e-16

sigmas = st.floats(0.2, 3.0)
p_mix_open = st.floats(0.01, 0.99)


@st.composite
def policy_case(draw, equal_means=True):
    """(a, s, K_pi, K_mu) with m, n in 1..3; actions within a few sigmas of the means."""
    m = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    entry = st.floats(-2.0, 2.0)
    k_pi = [[draw(entry) for _ in range(n)] for _ in range(m)]
    k_mu = k_pi if equal_means else [[draw(entry) for _ in range(n)] for _ in range(m)]
    s = [draw(entry) for _ in range(n)]
    a = [draw(st.floats(-8.0, 8.0)) for _ in range(m)]
    return a, s, k_pi, k_mu


def _lr_tol(a, s, k_pi, k_mu, sp, sm) -> float:
    """Rounding budget for log rho: lr is a difference of log densities of size up to |lpi| + |lmu|, each
    a handful of roundings; 64 eps (1 + |lpi| + |lmu|) bounds the absolute error in lr (hence the
    relative error in rho = exp(lr)) with a wide margin."""
    lpi, lmu, _ = lpi_lmu(a, s, k_pi, k_mu, sp, sm)
    return 64 * EPS * (1.0 + abs(lpi) + abs(lmu))


def _mean(k, s):
    return [math.fsum(kij * sj for kij, sj in zip(row, s)) for row in k]


@given(policy_case(), sigmas, sigmas, st.one_of(st.just(0.0), p_mix_open))
def test_inf_rho_equal_means(case, s1, s2, p):
    # Equal means, sigma_mu < sigma_pi: inf rho = 1/((1-p)(sigma_pi/sigma_mu)^m + p) (= (sm/sp)^m at p=0).
    a, s, k_pi, k_mu = case
    sm, sp = min(s1, s2), max(s1, s2)
    assume(sp / sm > 1.01)
    m = len(a)
    bound = 1.0 / ((1.0 - p) * (sp / sm) ** m + p)
    tol = _lr_tol(a, s, k_pi, k_mu, sp, sm)
    lr = log_ratio(a, s, k_pi, k_mu, sp, sm, p)
    assert lr >= math.log(bound) - tol
    # The infimum is attained at a = mean, and its dependence on m is through (sigma_pi/sigma_mu)^m.
    mean = _mean(k_pi, s)
    lr0 = log_ratio(mean, s, k_pi, k_mu, sp, sm, p)
    assert abs(lr0 - math.log(bound)) <= tol
    if p == 0.0:
        assert abs(lr0 - m * math.log(sm / sp)) <= tol


@given(policy_case(), sigmas, sigmas)
def test_sup_rho_equal_means_p0(case, s1, s2):
    # sigma_mu > sigma_pi, p = 0: sup rho = (sigma_mu/sigma_pi)^m, attained at a = mean.
    a, s, k_pi, k_mu = case
    sp, sm = min(s1, s2), max(s1, s2)
    assume(sm / sp > 1.01)
    m = len(a)
    tol = _lr_tol(a, s, k_pi, k_mu, sp, sm)
    log_sup = m * math.log(sm / sp)
    assert log_ratio(a, s, k_pi, k_mu, sp, sm, 0.0) <= log_sup + tol
    assert abs(log_ratio(_mean(k_pi, s), s, k_pi, k_mu, sp, sm, 0.0) - log_sup) <= tol


@given(policy_case(equal_means=False), sigmas, sigmas, p_mix_open)
def test_rho_bounded_by_inverse_p(case, sp, sm, p):
    # b >= p pi, so rho = pi/b <= 1/p for any means and widths.
    a, s, k_pi, k_mu = case
    tol = _lr_tol(a, s, k_pi, k_mu, sp, sm)
    assert log_ratio(a, s, k_pi, k_mu, sp, sm, p) <= -math.log(p) + tol


@given(policy_case(), sigmas, st.one_of(st.just(0.0), st.just(1.0), p_mix_open))
def test_identical_policies_give_one(case, sigma, p):
    a, s, k_pi, k_mu = case
    lr = log_ratio(a, s, k_pi, k_mu, sigma, sigma, p)
    if p in (0.0, 1.0):
        assert lr == 0.0  # lpi - lmu of identical computations; p = 1 is 0 by definition
    else:
        # log(exp(x-M) + exp(y-M)) rounds; bound as in _lr_tol.
        assert abs(lr) <= _lr_tol(a, s, k_pi, k_mu, sigma, sigma)


@given(policy_case(equal_means=False), sigmas, sigmas)
def test_p_one_is_on_policy(case, sp, sm):
    # p = 1: b = pi, lr = 0 exactly whatever mu is.
    a, s, k_pi, k_mu = case
    assert log_ratio(a, s, k_pi, k_mu, sp, sm, 1.0) == 0.0


@given(
    st.floats(0.0, 1e300) | st.just(math.inf),
    st.floats(0.0, 1e300) | st.just(math.inf),
)
def test_clipping_never_raises(rho, clip):
    out = clip_ratio(rho, clip)
    assert out <= rho
    assert out <= clip
    if clip >= rho:
        assert out == rho  # identity when clip >= rho


def test_clipping_nan_propagates():
    assert math.isnan(clip_ratio(math.nan, 2.0))
    assert math.isnan(clip_ratio(math.nan, math.inf))


def _problem(p_mix: float, rho_clip: float = math.inf, sigma_pi: float = 0.6, sigma_mu: float = 0.5) -> Problem:
    return Problem(
        a=np.array([[0.95, 0.1], [0.0, 0.9]]),
        b=np.array([[0.0], [0.2]]),
        q=np.eye(2),
        r=np.eye(1) * 0.5,
        sigma_eps=0.2,
        sigma_0=1.0,
        reward_scale=1.0,
        sigma_pi=sigma_pi,
        sigma_mu=sigma_mu,
        p_mix=p_mix,
        gamma=0.9,
        rho_clip=rho_clip,
        seed=7,
    )


def _draw_mixture_ratios(k_pi, k_mu, sp, sm, p, count, seed):
    """rho = pi/b at a ~ b, drawn with the project's streams (mixture uniform, then m normals)."""
    m, n = len(k_pi), len(k_pi[0])
    mix = rng.Stream(seed, rng.ROLL_MIX, 0, 0)
    act = rng.Stream(seed, rng.ROLL_ACTION, 0, 0)
    st_s = rng.Stream(seed, rng.ROLL_ENV, 0, 0)
    out = []
    for k in range(count):
        s = [st_s.normal(k * n + i) for i in range(n)]
        from_pi = mix.uniform(k) < p
        mean = _mean(k_pi, s) if from_pi else _mean(k_mu, s)
        sig = sp if from_pi else sm
        a = [mean[j] + sig * act.normal(k * m + j) for j in range(m)]
        out.append(math.exp(log_ratio(a, s, k_pi, k_mu, sp, sm, p)))
    return out


@pytest.mark.parametrize(
    "sp,sm,p,kdiff",
    [
        (1.0, 0.6, 0.3, 0.5),  # pi wider than mu, mixture keeps rho <= 1/p
        (0.8, 0.8, 0.5, 1.0),  # same widths, different means
        (0.5, 1.0, 0.0, 0.3),  # p = 0 with sigma_pi < sigma_mu: rho bounded by (sm/sp)^m e^{...}
        (1.5, 0.7, 0.1, 0.0),  # equal means, heavy-ish ratio kept bounded by p
    ],
)
def test_behaviour_expectation_of_rho_is_one(sp, sm, p, kdiff):
    # E_b[pi/b] = 1. 4000 draws; the sample standard error of the mean is estimated from the draws and
    # the test allows 5 of them (false-alarm probability ~ 6e-7 under a normal approximation).
    k_pi = [[0.2, -0.1]]
    k_mu = [[0.2 + kdiff, -0.1 - 0.5 * kdiff]]
    count = 4000
    rhos = _draw_mixture_ratios(k_pi, k_mu, sp, sm, p, count, seed=99)
    mean = math.fsum(rhos) / count
    sd = math.sqrt(math.fsum((r - mean) ** 2 for r in rhos) / (count - 1))
    assert abs(mean - 1.0) <= 5 * sd / math.sqrt(count) + 1e-12


def test_second_moment_closed_form():
    # MODEL.md 2: E_mu[rho^2] = (sm^2 / (sp sqrt(2 sm^2 - sp^2)))^m (equal means, p = 0). With sp < sm the
    # ratio is bounded, so the sample SE is reliable; 5 SEs as above.
    sp, sm, m = 0.7, 1.0, 2
    k = [[0.3, -0.2], [0.1, 0.4]]
    rhos = _draw_mixture_ratios(k, k, sp, sm, 0.0, 4000, seed=5)
    sq = [r * r for r in rhos]
    mean = math.fsum(sq) / len(sq)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in sq) / (len(sq) - 1))
    expected = (sm**2 / (sp * math.sqrt(2 * sm**2 - sp**2))) ** m
    assert abs(mean - expected) <= 5 * sd / math.sqrt(len(sq))


# ---------------------------------------------------------------------------------------------------
# Rho statistics (section 5).


def test_quantile_rule_hand_examples():
    vals = [float(v) for v in range(1, 101)]
    np.random.default_rng(0).shuffle(vals)
    st100 = rho_stats(vals, clip=50.0, clip_enabled=True)
    # n = 100: ranks ceil(95) = 95 and ceil(99) = 99.
    assert (st100.p95, st100.p99) == (95.0, 99.0)
    assert (st100.min, st100.max) == (1.0, 100.0)
    assert st100.clip_frac == 0.5  # 51..100 are > 50; 50 itself is not
    # n = 10: ceil(9.5) = ceil(9.9) = 10 -> both quantiles are the maximum.
    st10 = rho_stats([3.0, 1.0, 2.0, 9.0, 4.0, 5.0, 8.0, 7.0, 6.0, 10.0], 1.0, False)
    assert (st10.p95, st10.p99) == (10.0, 10.0)
    # n = 1: rank max(1, ceil(p)) = 1.
    st1 = rho_stats([0.25], 1.0, False)
    assert (st1.p95, st1.p99, st1.mean, st1.ess_frac) == (0.25, 0.25, 0.25, 1.0)
    # n = 20: 0.95 * 20 is exactly 19.0 as a double, so rank 19 (not 20).
    st20 = rho_stats([float(v) for v in range(1, 21)], 1.0, False)
    assert st20.p95 == 19.0 and st20.p99 == 20.0


@given(st.lists(st.floats(0.0, 50.0), min_size=1, max_size=300))
def test_quantiles_match_numpy_inverted_cdf(vals):
    got = rho_stats(vals, 1.0, True)
    arr = np.array(vals)
    assert got.p95 == np.quantile(arr, 0.95, method="inverted_cdf")
    assert got.p99 == np.quantile(arr, 0.99, method="inverted_cdf")
    assert got.min == arr.min() and got.max == arr.max()
    # Means: the block-summed mean agrees with numpy's (pairwise) mean to rounding: n eps relative.
    assert got.mean == pytest.approx(arr.mean(), rel=len(vals) * EPS, abs=1e-300)
    assert got.clip_frac == np.mean(arr > 1.0)


def test_nonfinite_counted_and_excluded():
    got = rho_stats([1.0, math.nan, 3.0, math.inf, -math.inf], clip=2.0, clip_enabled=True)
    assert (got.n, got.nonfinite) == (2, 3)
    assert (got.mean, got.rho2_mean, got.min, got.max) == (2.0, 5.0, 1.0, 3.0)
    assert got.clip_frac == 0.5 and got.clip == 2.0 and got.clip_active == 1
    assert got.ess_frac == 16.0 / (2 * 10.0)


def test_all_nonfinite_gives_nan():
    for vals in ([], [math.nan, math.inf]):
        got = rho_stats(vals, clip=2.0, clip_enabled=False)
        assert got.n == 0 and got.nonfinite == len(vals) and got.clip_active == 0
        for v in (got.mean, got.rho2_mean, got.min, got.max, got.p95, got.p99, got.clip_frac, got.ess_frac, got.khat):
            assert math.isnan(v)


def test_ess_fraction():
    # Equal weights: (n c)^2 / (n * n c^2) = 1 (exact for a dyadic c; within 4 ulps otherwise).
    assert rho_stats([0.5] * 64, 1.0, False).ess_frac == 1.0
    assert rho_stats([0.37] * 1000, 1.0, False).ess_frac == pytest.approx(1.0, rel=4 * EPS)
    # One non-zero weight among n: ESS = 1 draw, fraction 1/n.
    assert rho_stats([0.0] * 9 + [3.0], 1.0, False).ess_frac == pytest.approx(0.1, rel=4 * EPS)


def test_block_sum_rule_in_mean():
    # 1e16 + 1 rounds back to 1e16 (the spacing of doubles at 1e16 is 2, ties to even). A plain left-to-
    # right sum of [1e16, 1, 1, ...] would lose every 1; with blocks of 1024 the second block's 1024 ones
    # are summed on their own first and survive.
    vals = [1e16] + [1.0] * 2047
    got = rho_stats(vals, 1.0, False)
    assert got.mean * len(vals) == 1e16 + 1024.0
    plain = 0.0
    for v in vals:
        plain += v
    assert plain == 1e16  # the block rule really matters here


def test_khat_nan_cases():
    # Constant ratios: no tail point exceeds the threshold.
    assert math.isnan(rho_stats([1.0] * 500, 1.0, False).khat)
    # n = 20: T = ceil(min(4, 13.4)) = 4 < 5 tail points.
    assert math.isnan(pareto_khat([float(v) for v in range(20)]))
    # n = 21: T = ceil(4.2) = 5 distinct tail points: a fit happens (finite).
    assert math.isfinite(pareto_khat([float(v) ** 2 for v in range(21)]))
    # Ties at the threshold: n = 100, T = 20, u = y[79] = 1; only values strictly above u are tail
    # points, so four 2s give no fit while five do.
    assert math.isnan(pareto_khat([1.0] * 96 + [2.0] * 4))
    assert math.isfinite(pareto_khat([1.0] * 95 + [2.0] * 5))


def _numpy_gpd_k(x: np.ndarray) -> float:
    """MODEL.md section 5's Zhang-Stephens fit, vectorised in numpy (independent transcription)."""
    t = len(x)
    mc = 30 + int(np.floor(np.sqrt(t)))
    j = np.arange(1, mc + 1, dtype=float)
    b = (1 - np.sqrt(mc / (j - 0.5))) / (3 * x[int(np.floor(t / 4 + 0.5)) - 1]) + 1 / x[-1]
    k = np.log1p(-b[:, None] * x[None, :]).mean(axis=1)
    ell = t * (np.log(-b / k) - k - 1)
    wt = 1 / np.exp(ell[None, :] - ell[:, None]).sum(axis=1)
    keep = wt >= 10 * np.finfo(float).eps
    wt = wt[keep] / wt[keep].sum()
    b_star = np.sum(b[keep] * wt)
    k_star = np.log1p(-b_star * x).mean()
    return (t * k_star + 10 * 0.5) / (t + 10)


@pytest.mark.parametrize("shape", [0.5, 0.9])
def test_khat_on_generalized_pareto(shape):
    from scipy import stats

    from offtd import _core

    n = 100_000
    gen = np.random.default_rng(int(shape * 10))
    sample = stats.genpareto.rvs(shape, size=n, random_state=gen)
    got = rho_stats(sample, 1.0, False).khat
    # T = ceil(min(0.2 n, 3 sqrt n)) = 949 tail points. Above any threshold a GPD(k) tail is again GPD(k),
    # so the fit is unbiased apart from the weak prior, which moves k by at most 10/(T+10)*|k - 0.5| =
    # 0.004. The estimator's sd is ~ (1 + k)/sqrt(T): 0.049 at k = 0.5, 0.062 at k = 0.9. Averaged over
    # 16 independent samples (the Rust kernel, equal to this reference bit for bit by the parity tests),
    # the mean lies within 4 of its standard errors (0.062 / 4) plus the prior's 0.004 of k.
    fits = [_core.rho_stats(stats.genpareto.rvs(shape, size=n, random_state=gen), 1.0, False)["khat"] for _ in range(16)]
    assert abs(np.mean(fits) - shape) < 4 * (1 + shape) / math.sqrt(949) / 4 + 0.004, (np.mean(fits), shape)
    # The pure-Python fit equals a vectorised numpy transcription of the same formulas to rounding:
    # k_j, L_j and the weights differ only in summation order (relative 1e-13 at T' = 949), so 1e-9.
    y = np.sort(sample)
    t = math.ceil(min(0.2 * n, 3 * math.sqrt(n)))
    tail = y[n - t :] - y[n - t - 1]
    tail = tail[tail > 0]
    assert gpd_fit_k(tail.tolist()) == pytest.approx(_numpy_gpd_k(tail), abs=1e-9)
    assert got == gpd_fit_k(tail.tolist())


def test_khat_orders_tail_weight():
    from scipy import stats

    gen = np.random.default_rng(3)
    light = stats.genpareto.rvs(0.1, size=20_000, random_state=gen)
    heavy = stats.genpareto.rvs(0.9, size=20_000, random_state=gen)
    # With T = 425 the sd is < 0.1 each; 0.8 apart in truth, so the order cannot flip by chance.
    assert pareto_khat(heavy.tolist()) > pareto_khat(light.tolist()) + 0.4


def test_psis_khat_recovers_the_closed_form_tail_index():
    # m = 2: ||a - mean||^2 / sigma_mu^2 is exactly exponential, so pi/mu is exactly Pareto-tailed with
    # shape k = 1 - sigma_mu^2 / sigma_pi^2 (MODEL.md 2). PSIS fits the largest 3 sqrt(n) = 949 ratios
    # of n = 100000; the fit's SE is about (1 + k) / sqrt(949) ~ 0.05 per sample, so the mean of 8
    # independent samples lies within 0.1 (~5 SE of the mean) of k, prior shrinkage included.
    sm, sp = 0.3, 0.5
    k_true = 1 - sm**2 / sp**2
    rng = np.random.default_rng(7)
    khats = []
    for _ in range(8):
        a = rng.normal(0.0, sm, size=(100_000, 2))
        q2 = (a * a).sum(axis=1)
        rho = np.exp(2 * math.log(sm / sp) - 0.5 * q2 / sp**2 + 0.5 * q2 / sm**2)
        khats.append(ReferenceBackend().rho_stats(rho, 10.0, False).khat)
    assert abs(np.mean(khats) - k_true) < 0.1, (khats, k_true)
    assert math.isclose(e_mu_rho2(2, sp, sm), math.inf) == (k_true >= 0.5)
