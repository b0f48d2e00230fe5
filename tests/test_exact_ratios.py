"""Exact ratio moments (specs/MODEL.md 9.5) against independent oracles: scipy's adaptive quadrature over
the radius (written here from the densities, not from offtd's formulas) and Monte Carlo draws from the
behaviour mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, optimize, stats

from offtd.exact.ratios import clip_region, means_equal, ratio_moments


def _log_rho(r: np.ndarray, m: int, sp: float, sm: float, p: float) -> np.ndarray:
    """log pi/b at radius r from the two Gaussian log densities (the 2 pi constants cancel)."""
    lp = -r * r / (2 * sp * sp) - m * math.log(sp)
    lm = -r * r / (2 * sm * sm) - m * math.log(sm)
    if p == 0.0:
        return lp - lm
    return lp - np.logaddexp(lm + math.log1p(-p), lp + math.log(p))


def _scipy_moments(m: int, sp: float, sm: float, p: float, c: float) -> dict[str, float]:
    """The same moments by scipy.integrate.quad over r with the radial densities of N(0, s^2 I_m),
    split at the clip radius (found here by root-finding on the ratio) where the integrand jumps."""

    def dens(r: float, s: float) -> float:
        return stats.chi.pdf(r / s, m) / s

    def b(r: float) -> float:
        return (1 - p) * dens(r, sm) + p * dens(r, sp)

    def rho(r: float) -> float:
        return float(np.exp(_log_rho(np.array(r), m, sp, sm, p)))

    top = 12 * max(sp, sm) * math.sqrt(m)
    grid = np.linspace(1e-9, top, 20001)
    lr = _log_rho(grid, m, sp, sm, p)
    cut = []
    if not math.isinf(c):
        for i in np.flatnonzero(np.diff(np.sign(lr - math.log(c)))):
            f = lambda r: float(_log_rho(np.array(r), m, sp, sm, p)) - math.log(c)  # noqa: E731
            cut.append(optimize.brentq(f, grid[i], grid[i + 1], xtol=1e-15, rtol=1e-15))
    pts = sorted(cut)
    o = dict(limit=1000, epsabs=0.0, epsrel=1e-13, points=pts or None)

    def q(f):
        return integrate.quad(f, 0.0, top, **o)[0]

    return {
        "e_rho2": q(lambda r: rho(r) ** 2 * b(r)) if p > 0 else math.nan,
        "e_rho_bar": q(lambda r: min(rho(r), c) * b(r)),
        "kappa2": q(lambda r: min(rho(r), c) * r * r * b(r)) / m,
        "e_rho_bar2": q(lambda r: min(rho(r), c) ** 2 * b(r)),
        "clip_prob": q(lambda r: (rho(r) > c) * b(r)),
    }


CASES = [
    (2, 0.6, 0.2, 0.01, 10.0),  # the example report's policies with a clip at 10 (rho reaches 1/p = 100)
    (2, 0.6, 0.2, 0.01, 2.0),  # clipped.toml
    (1, 0.4, 0.5, 0.1, 0.9),  # sigma_mu > sigma_pi: {rho > c} is a ball
    (3, 1.0, 0.3, 0.05, 3.0),
    (4, 0.3, 0.6, 0.2, 1.2),
    (2, 0.5, 0.5, 0.0, 0.5),  # equal policies: rho == 1, clipped everywhere
    (2, 0.6, 0.2, 0.3, math.inf),  # unclipped
    (2, 0.4, 0.5, 0.1, math.inf),  # the default spec
    # (1 - p) mu = p pi at the origin ((1 - p)/p = (sigma_mu/sigma_pi)^m = 4 exactly): the densities cross at radius 0
    (2, 0.5, 1.0, 0.2, math.inf),
    (2, 0.5, 1.0, 0.2, 1.5),
]


@pytest.mark.parametrize("m,sp,sm,p,c", CASES)
def test_ratio_moments_equal_scipy_quadrature(m, sp, sm, p, c):
    got = ratio_moments(m, sp, sm, p, c)
    want = _scipy_moments(m, sp, sm, p, c)
    # Both are deterministic quadratures of smooth pieces; 1e-9 relative is well above either's
    # error (scipy's epsrel is 1e-13) and far below any wrong formula's error.
    for key in ("e_rho_bar", "kappa2", "e_rho_bar2", "clip_prob"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-9, abs=1e-13), key
    if p > 0:
        assert got.e_rho2 == pytest.approx(want["e_rho2"], rel=1e-9)


@pytest.mark.parametrize("m,sp,sm", [(2, 0.6, 0.5), (3, 0.6, 0.9)])
@pytest.mark.parametrize("c", [math.inf, 2.0, 1.0, 0.5])
def test_a_behaviour_that_is_the_target_gives_unit_ratios(m, sp, sm, c):
    """p_mix = 1: the behaviour mixture is pi itself, rho = 1 everywhere, so rho_bar = min(1, c) and the
    pi-weighted second moment of the action is sigma_pi^2 (sigma_mu plays no part)."""
    got = ratio_moments(m, sp, sm, 1.0, c)
    bar = min(1.0, c)
    assert got.e_rho2 == 1.0
    assert got.e_rho_bar == pytest.approx(bar, rel=1e-12)
    assert got.e_rho_bar2 == pytest.approx(bar * bar, rel=1e-12)
    assert got.kappa2 == pytest.approx(bar * sp * sp, rel=1e-12)
    assert got.clip_prob == (1.0 if c < 1.0 else 0.0)


def test_example_spec_moments_against_monte_carlo():
    # 2e6 draws from the mixture b at equal means (m = 2, sigma_mu = 0.2, sigma_pi = 0.6, p = 0.01).
    # Every sample mean must lie within 5 of its standard errors of the exact value (per-quantity
    # 5-sigma bands; rho <= 1/p = 100 so the variances are finite).
    rng = np.random.default_rng(20261203)
    m, sp, sm, p, c = 2, 0.6, 0.2, 0.01, 2.0
    n = 2_000_000
    from_pi = rng.random(n) < p
    e = rng.standard_normal((n, m)) * np.where(from_pi, sp, sm)[:, None]
    r = np.sqrt(np.sum(e * e, axis=1))
    rho = np.exp(_log_rho(r, m, sp, sm, p))
    rb = np.minimum(rho, c)
    got = ratio_moments(m, sp, sm, p, c)
    for name, x, want in (
        ("E_b[rho]", rho, 1.0),
        ("E_b[rho^2]", rho * rho, got.e_rho2),
        ("kappa0", rb, got.e_rho_bar),
        ("E_b[rho_bar^2]", rb * rb, got.e_rho_bar2),
        ("kappa2", rb * r * r / m, got.kappa2),
        ("clip_prob", (rho > c).astype(float), got.clip_prob),
    ):
        se = x.std(ddof=1) / math.sqrt(n)
        assert abs(x.mean() - want) < 5 * se, (name, x.mean(), want, se)


def test_example_report_second_moment_and_issue_values():
    # E_b[rho^2] at p = 0.05 is the 10.8 the verdict issue reported (its own ratio-free computation).
    assert ratio_moments(2, 0.6, 0.2, 0.05, math.inf).e_rho2 == pytest.approx(10.8, abs=0.05)
    # p = 0 and sigma_pi^2 >= 2 sigma_mu^2: infinite (section 2's closed form).
    assert math.isinf(ratio_moments(2, 0.6, 0.2, 0.0, math.inf).e_rho2)
    # the defensive mixture bounds it: E_b[rho^2] = E_pi[rho] <= 1/p
    assert ratio_moments(2, 0.6, 0.2, 0.01, math.inf).e_rho2 < 100.0


@given(
    m=st.integers(1, 5),
    sp=st.floats(0.05, 3.0),
    sm=st.floats(0.05, 3.0),
    p=st.floats(0.0, 0.99),
    c=st.floats(0.01, 1e3),
)
def test_clip_invariants(m, sp, sm, p, c):
    rm = ratio_moments(m, sp, sm, p, c)
    un = ratio_moments(m, sp, sm, p, math.inf)
    # E_b[min(rho, c)] <= min(E_b[rho], c) = min(1, c); clipping never raises a second moment.
    assert rm.e_rho_bar <= min(1.0, c) + 1e-12
    assert rm.e_rho_bar2 <= un.e_rho2 * (1 + 1e-9) + 1e-12
    assert 0.0 <= rm.clip_prob <= 1.0
    assert un.e_rho_bar == 1.0 and un.clip_prob == 0.0 and un.kappa2 == sp * sp
    # Cauchy-Schwarz: E[rho_bar]^2 <= E[rho_bar^2]
    assert rm.e_rho_bar**2 <= rm.e_rho_bar2 * (1 + 1e-9) + 1e-15


@given(m=st.integers(1, 4), sp=st.floats(0.05, 3.0), sm=st.floats(0.05, 3.0), p=st.floats(0.0, 0.99), c=st.floats(0.01, 50.0))
def test_clip_region_is_where_rho_exceeds_the_clip(m, sp, sm, p, c):
    kind, r2 = clip_region(m, sp, sm, p, c)
    radii = np.linspace(0.0, 6 * max(sp, sm) * math.sqrt(m), 400)
    above = _log_rho(radii, m, sp, sm, p) > math.log(c)
    if kind == "none":
        expect = np.zeros_like(above)
    elif kind == "all":
        expect = np.ones_like(above)
    elif kind == "above":
        expect = radii**2 > r2
    else:
        assert kind == "below", kind  # the four kinds ratio_moments distinguishes, nothing else
        expect = radii**2 < r2
    near = np.abs(_log_rho(radii, m, sp, sm, p) - math.log(c)) < 1e-9  # rounding at the boundary itself
    assert np.all((above == expect) | near)


def test_means_equal_threshold():
    m2 = np.eye(2)
    k = np.zeros((2, 2))
    assert means_equal(k, k, m2, 0.5, 0.5)
    tiny = k.copy()
    tiny[0, 0] = 1e-9
    assert means_equal(tiny, k, m2, 0.5, 0.5)  # shift 8e-9 <= 5e-6
    big = k.copy()
    big[0, 0] = 1e-3
    assert not means_equal(big, k, m2, 0.5, 0.5)
