"""Closed forms of MODEL.md sections 2-3 against independent oracles (scipy, Monte Carlo)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from offtd import model
from offtd.backend import FIXED_POINT_BASE, Problem
from offtd.reference import ReferenceBackend

sigmas = st.floats(min_value=0.1, max_value=2.0)


def _problem(n=2, m=2, gamma=0.9, sigma_pi=0.4, sigma_eps=0.1, c_r=1.0, seed=0, a=None, b=None) -> Problem:
    a = np.eye(n) * 0.9 + np.eye(n, k=1) * 0.1 if a is None else a
    b = np.eye(n, m) * 0.5 if b is None else b
    return Problem(a, b, np.eye(n), np.eye(m), sigma_eps, 1.0, c_r, sigma_pi, 0.5, 0.0, gamma, math.inf, seed)


@given(m=st.integers(1, 6), sp=sigmas, sm=sigmas)
def test_kl_matches_scipy_entropy_identity(m, sp, sm):
    # KL(N(0, sp^2 I) || N(0, sm^2 I)) = -H(pi) - E_pi[log mu]; both terms in closed form via scipy's
    # Gaussian entropy and E_pi[||a||^2] = m sp^2. Agreement to rounding (1e-10 relative).
    h_pi = scipy.stats.multivariate_normal(np.zeros(m), sp**2 * np.eye(m)).entropy()
    e_log_mu = -0.5 * m * math.log(2 * math.pi * sm**2) - m * sp**2 / (2 * sm**2)
    assert model.kl_gaussian(m, sp, sm) == pytest.approx(-h_pi - e_log_mu, rel=1e-10, abs=1e-12)


def test_kl_of_example_report():
    # The example report's dist_action_kl: m = 2, sigma_mu = 0.2, sigma_pi = 0.6.
    assert round(model.kl_gaussian(2, 0.6, 0.2), 3) == 5.803


def test_kl_mean_shift_term():
    # A mean shift adds ||delta||^2 / (2 sigma_mu^2) exactly.
    base = model.kl_gaussian(2, 0.6, 0.2)
    assert model.kl_gaussian(2, 0.6, 0.2, 0.01) - base == pytest.approx(0.01 / (2 * 0.04), rel=1e-12)


@given(k=st.integers(1, 8), x=st.floats(min_value=0.0, max_value=80.0))
def test_chi2_cdf_matches_scipy(k, x):
    # Series / continued fraction to ~1e-15; 1e-12 absolute covers rounding in lgamma/exp.
    assert model.chi2_cdf(x, k) == pytest.approx(scipy.stats.chi2.cdf(x, k), abs=1e-12)


@given(k=st.integers(1, 8), p=st.floats(min_value=1e-6, max_value=1 - 1e-6))
def test_chi2_ppf_matches_scipy(k, p):
    # Bisection to ~1e-15 relative; scipy's own inverse is accurate to ~1e-12 relative.
    assert model.chi2_ppf(p, k) == pytest.approx(scipy.stats.chi2.ppf(p, k), rel=1e-9, abs=1e-12)


def test_tv_example_value():
    # The brief: exact TV for m = 2, sigma_mu = 0.2, sigma_pi = 0.6 is 0.6754.
    assert round(model.tv_equal_means(2, 0.6, 0.2), 4) == 0.6754


@pytest.mark.parametrize("m,sp,sm", [(1, 0.6, 0.2), (2, 0.6, 0.2), (3, 0.3, 0.5), (2, 0.5, 0.45)])
def test_tv_and_quantiles_against_monte_carlo(m, sp, sm):
    rng = np.random.default_rng(1)
    n = 400_000
    a = rng.normal(0.0, sm, size=(n, m))
    q2 = (a * a).sum(axis=1)
    log_rho = m * math.log(sm / sp) - 0.5 * q2 / sp**2 + 0.5 * q2 / sm**2
    rho = np.exp(log_rho)
    tv_terms = np.maximum(1.0 - rho, 0.0)
    # Monte Carlo mean: 5 standard errors (terms lie in [0, 1]).
    se = tv_terms.std() / math.sqrt(n)
    assert abs(tv_terms.mean() - model.tv_equal_means(m, sp, sm)) < 5 * se + 1e-12
    if sm < sp:
        for q in (0.5, 0.95, 0.99):
            emp = np.quantile(rho, q)
            # Quantile SE ~ sqrt(q(1-q)/n) / density: compare in probability space instead, where the
            # empirical CDF at the predicted quantile has SE sqrt(q(1-q)/n); allow 5 SE.
            pred = model.rho_quantile(q, m, sp, sm)
            cdf_at_pred = (rho <= pred).mean()
            assert abs(cdf_at_pred - q) < 5 * math.sqrt(q * (1 - q) / n), (q, emp, pred)


@pytest.mark.parametrize("m,sp,sm", [(1, 0.25, 0.2), (2, 0.25, 0.2), (2, 0.4, 0.5)])
def test_second_moment_finite_case_against_monte_carlo(m, sp, sm):
    assert sp**2 < 2 * sm**2
    rng = np.random.default_rng(2)
    n = 1_000_000
    a = rng.normal(0.0, sm, size=(n, m))
    q2 = (a * a).sum(axis=1)
    rho2 = np.exp(2 * (m * math.log(sm / sp) - 0.5 * q2 / sp**2 + 0.5 * q2 / sm**2))
    # These cases have finite fourth moments, so the sample mean is within 5 SE of the truth.
    se = rho2.std() / math.sqrt(n)
    assert abs(rho2.mean() - model.e_mu_rho2(m, sp, sm)) < 5 * se


def test_second_moment_infinite_boundary():
    assert math.isinf(model.e_mu_rho2(2, 0.6, 0.2))
    assert math.isinf(model.e_mu_rho2(1, math.sqrt(2) * 0.3, 0.3))


@given(m=st.integers(1, 4), sp=sigmas, sm=sigmas, p=st.floats(0.0, 0.9))
def test_rho_bounds_are_the_extremes_of_the_density_ratio(m, sp, sm, p):
    # pi/b from scipy's Gaussian densities on a radial grid (equal means at 0): its minimum and maximum
    # over the grid match rho_inf / rho_sup where they are attained (at the mean, or as r -> infinity),
    # and never cross them.
    pi = scipy.stats.multivariate_normal(np.zeros(m), sp**2 * np.eye(m))
    mu = scipy.stats.multivariate_normal(np.zeros(m), sm**2 * np.eye(m))
    radii = np.linspace(0.0, 12.0 * max(sp, sm), 4001)
    a = np.zeros((radii.size, m))
    a[:, 0] = radii
    lp, lm = pi.logpdf(a), mu.logpdf(a)
    lb = np.logaddexp(lm + math.log1p(-p), lp + math.log(p)) if p > 0 else lm
    rho = np.exp(lp - lb)
    lo, hi = model.rho_inf(m, sp, sm, p), model.rho_sup(m, sp, sm, p)
    tol = 1e-9  # scipy's log densities vs offtd's closed forms: rounding
    assert np.all(rho >= lo * (1 - tol)) and np.all(rho <= hi * (1 + tol))
    if sm <= sp:
        assert rho[0] == pytest.approx(lo, rel=tol)  # attained at the mean
    else:
        assert rho[0] == pytest.approx(hi, rel=tol)
    if p >= 1e-3 and sm < 0.8 * sp:
        assert rho[-1] == pytest.approx(hi, rel=1e-6)  # -> 1/p far out (12 sigma), where mu/pi < 1e-9 p


# ------------------------------------------------------------------------------------------- teacher


@given(
    gamma=st.floats(0.0, 0.99),
    k=st.lists(st.floats(-0.3, 0.3), min_size=4, max_size=4),
    sp=st.floats(0.05, 1.0),
)
def test_teacher_against_scipy_lyapunov(gamma, k, sp):
    p = _problem(gamma=gamma, sigma_pi=sp)
    kmat = np.array(k).reshape(2, 2)
    t = model.teacher(p, kmat)
    lmat = p.a + p.b @ kmat
    radius = max(abs(np.linalg.eigvals(lmat)))
    assert t.defined == (math.sqrt(gamma) * radius < 1)
    if not t.defined:
        assert np.isnan(t.w).all()
        return
    # scipy solves X = A X A^H + Q; with A = sqrt(gamma) L^T this is P = Q_K + gamma L^T P L.
    q_k = p.q + kmat.T @ p.r @ kmat
    ref = scipy.linalg.solve_discrete_lyapunov(math.sqrt(gamma) * lmat.T, q_k)
    # Both are direct solves of a 4x4 system: agreement to ~1e3 * eps relative to ||P||.
    assert np.allclose(t.p, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_teacher_undefined_when_closed_loop_unstable():
    p = _problem(gamma=0.99)
    t = model.teacher(p, np.eye(2) * 1.0)  # A + 0.5 I has radius 1.4
    assert not t.defined and math.isnan(t.c0) and t.closed_loop_radius > 1


def test_teacher_against_monte_carlo_return():
    # V_pi(s0) = E[sum_t gamma^t r_t] from s0 under pi; truncation at H with gamma^H < 1e-9.
    gamma, sp, c_r = 0.8, 0.3, 1.0
    p = _problem(gamma=gamma, sigma_pi=sp, sigma_eps=0.2, c_r=c_r)
    kmat = np.array([[-0.2, 0.0], [0.1, -0.3]])
    t = model.teacher(p, kmat)
    rng = np.random.default_rng(3)
    n_traj, horizon = 40_000, 95
    s0 = np.array([1.0, -0.5])
    s = np.tile(s0, (n_traj, 1))
    ret = np.zeros(n_traj)
    disc = 1.0
    for _ in range(horizon):
        a = s @ kmat.T + sp * rng.standard_normal((n_traj, 2))
        r = -c_r * ((s * s).sum(1) + (a * a).sum(1))
        ret += disc * r
        disc *= gamma
        s = s @ p.a.T + a @ p.b.T + p.sigma_eps * rng.standard_normal((n_traj, 2))
    v = t.value(s0, c_r)
    # 5 standard errors of the Monte Carlo mean, plus the truncated tail (gamma^95 ~ 6e-10 of |V|).
    se = ret.std() / math.sqrt(n_traj)
    assert abs(ret.mean() - v) < 5 * se + 1e-8 * abs(v)
    # The feature coefficients reproduce the value function.
    assert model.features(s0) @ t.w == pytest.approx(float(v), rel=1e-12)


# ------------------------------------------------------------------------------- features and kernel


@given(
    n=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_kernel_form_equals_features(n, seed, scale):
    rng = np.random.default_rng(seed)
    d = model.feature_dim(n)
    w = rng.normal(size=d) * scale
    s = rng.normal(size=(50, n)) * scale
    via_features = model.features(s) @ w
    via_kernel = model.kernel_values(w, s)
    # Same quadratic form summed in different orders: relative to the sum of |terms| the rounding
    # error is a few eps * d.
    mag = np.abs(model.features(s)) @ np.abs(w)
    assert np.all(np.abs(via_features - via_kernel) <= 64 * np.finfo(float).eps * mag)
    p, q, c = model.kernel_form(w, n)
    assert np.array_equal(p, p.T)
    assert np.allclose(model.weights_from_kernel(p, q, c), w, rtol=1e-15, atol=0)


def test_teacher_is_undefined_when_only_its_constant_overflows():
    """With A = 0 and K = 0 the closed loop is L = 0, so P = Q exactly (MODEL.md 3.7: P = Q_K + gamma L^T P L),
    here 1e300 I: finite. c0 = [sigma_pi^2 tr R + gamma (sigma_pi^2 tr(B^T P B) + sigma_eps^2 tr P)] / (1 - gamma)
    has sigma_eps^2 tr P = 1e10 * 2e300, past the largest double (1.8e308): the teacher exists in exact arithmetic
    but is not representable, so it is undefined (NaN), and teacher_overflows says so."""
    problem = dataclasses.replace(_problem(gamma=0.5, sigma_eps=1e5, a=np.zeros((2, 2))), q=1e300 * np.eye(2))
    tch = model.teacher(problem, np.zeros((2, 2)))
    assert tch.closed_loop_radius == 0.0
    assert not tch.defined and math.isnan(tch.c0) and np.all(np.isnan(tch.p)) and np.all(np.isnan(tch.w))
    assert model.teacher_overflows(problem, tch)
    # the same with sigma_eps = 1 (tr P sigma_eps^2 = 2e300, c0 finite): defined, P = Q
    ok = model.teacher(dataclasses.replace(problem, sigma_eps=1.0), np.zeros((2, 2)))
    assert ok.defined and np.array_equal(ok.p, 1e300 * np.eye(2)) and math.isfinite(ok.c0)


def test_features_of_integer_states_are_float_products():
    """phi(s) = [s_i s_j (i <= j); s; 1] (MODEL.md 3.2) in floating point whatever the states' type: an
    integer state of 4e9 gives 1.6e19, past int64 (an integer product would wrap around)."""
    got = model.features([4_000_000_000, 3])
    assert got.dtype == np.float64
    assert got.tolist() == [1.6e19, 1.2e10, 9.0, 4e9, 3.0, 1.0]


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4), gamma=st.floats(0.0, 0.999))
def test_q_kernel_td_loss_matches_feature_td_loss(seed, n, gamma):
    # td consistency (MODEL.md 4.5): the kernel-form TD loss equals the feature TD loss to rounding.
    rng = np.random.default_rng(seed)
    w = rng.normal(size=model.feature_dim(n))
    states = rng.normal(size=(3, 7, n))
    rewards = rng.normal(size=(3, 6))
    phi = model.features(states)
    v = phi @ w
    delta = (rewards + gamma * v[:, 1:]) - v[:, :-1]
    loss_f = float(np.mean(delta * delta))
    loss_q, valid = model.q_kernel_td_loss(w, states, rewards, gamma)
    assert valid == 6
    assert loss_q == pytest.approx(loss_f, rel=1e-10)


def test_q_kernel_valid_prefix_stops_at_nonfinite():
    states = np.zeros((2, 6, 2))
    rewards = np.zeros((2, 5))
    states[1, 4, 0] = np.inf
    _, valid = model.q_kernel_td_loss(np.zeros(6), states, rewards, 0.9)
    assert valid == 3  # transition 3 reads s_4, which is not finite


def _probe_setup(sigma_mu=0.5, sigma_pi=0.4, p_mix=0.1, gamma=0.8, seed=0):
    n, m = 2, 2
    a = np.array([[0.9, 0.1], [0.0, 0.9]])
    b = 0.5 * np.eye(2)
    problem = Problem(a, b, np.eye(n), np.eye(m), 0.1, 1.0, 1.0, sigma_pi, sigma_mu, p_mix, gamma, math.inf, seed)
    k_pi = np.array([[-0.1, 0.0], [0.05, -0.2]])
    k_mu = k_pi + 0.05
    pool = np.random.default_rng(seed).normal(size=(300, n))
    return problem, k_pi, k_mu, pool


def _residuals(problem, k_pi, k_mu, pool, count, repeats, iteration=0):
    """A_r w_teacher - b_r for each sub-batch r: mean zero by the teacher's Bellman equation."""
    ts = ReferenceBackend().transitions(problem, k_pi, k_mu, pool, count, repeats, FIXED_POINT_BASE, iteration)
    w_t = model.teacher(problem, k_pi).w
    return np.array([ts.a_sums[r] @ w_t / ts.counts[r] - ts.b_sums[r] / ts.counts[r] for r in range(repeats)]), ts


def test_teacher_solves_the_expected_fixed_point_equation():
    # E[A_hat] w_teacher = E[b_hat] exactly (realizable features, rho corrects b to pi). Over 16
    # independent sub-batches, each component's mean residual lies within 5 standard errors of 0.
    problem, k_pi, k_mu, pool = _probe_setup()
    res, _ = _residuals(problem, k_pi, k_mu, pool, 16 * 400, 16)
    mean = res.mean(axis=0)
    se = res.std(axis=0, ddof=1) / math.sqrt(len(res))
    assert np.all(np.abs(mean) <= 5 * se), (mean, se)
