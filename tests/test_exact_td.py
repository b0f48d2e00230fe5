"""The exact expected TD update (specs/MODEL.md 9.1-9.4) against independent oracles: Monte Carlo of
one environment step written here in numpy, the Lyapunov teacher (scipy), and the mean of many sampled
A_hat on one state pool (the kernels' own Monte Carlo, judged by z-scores)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from offtd.backend import STABILITY_BASE, Problem, get_backend
from offtd.exact.expected_td import eig_summary, exact_td, td_operator
from offtd.exact.operator import reward_coeffs, transition_operator
from offtd.model import features, problem_from_spec, teacher
from offtd.spec import load_spec

REF = get_backend("python")


def _problem(n=2, m=2, seed=0, gamma=0.9, sp=0.6, sm=0.3, p=0.1, clip=math.inf, c_r=1.0) -> Problem:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a *= 0.8 / max(1e-9, np.max(np.abs(np.linalg.eigvals(a))))
    b = rng.standard_normal((n, m)) * 0.5
    q = rng.standard_normal((n, n))
    r = rng.standard_normal((m, m))
    return Problem(a, b, q @ q.T, r @ r.T, 0.2, 1.0, c_r, sp, sm, p, gamma, clip, seed)


def test_transition_operator_against_monte_carlo():
    # E[phi(s') | s] by 400k simulated steps under pi from a fixed s, every feature within 5 of its
    # standard errors of T phi(s) (5 sigma per entry: d = 10 entries, a false alarm is ~1e-5).
    p = _problem(n=3, m=2, seed=3)
    k = np.random.default_rng(4).standard_normal((2, 3)) * 0.3
    s = np.array([0.7, -1.1, 0.4])
    rng = np.random.default_rng(5)
    n = 400_000
    a = (k @ s)[None, :] + p.sigma_pi * rng.standard_normal((n, 2))
    s_next = (p.a @ s)[None, :] + a @ p.b.T + p.sigma_eps * rng.standard_normal((n, 3))
    phi_next = features(s_next)
    want = transition_operator(p, k, p.sigma_pi) @ features(s)
    se = phi_next.std(axis=0, ddof=1) / math.sqrt(n)
    z = (phi_next.mean(axis=0) - want) / np.where(se > 0, se, 1.0)
    assert np.all(np.abs(z) < 5), z
    # the reward: E[r | s] = c . phi(s), with r = -c_r (s'Qs + a'Ra) sampled directly
    r = -p.reward_scale * (s @ p.q @ s + np.einsum("ni,ij,nj->n", a, p.r, a))
    c = reward_coeffs(p, k, p.sigma_pi)
    assert abs(r.mean() - c @ features(s)) < 5 * r.std(ddof=1) / math.sqrt(n)


@given(n=st.integers(1, 4), m=st.integers(1, 3), seed=st.integers(0, 10**6))
def test_eigenvalues_of_t_are_products_of_closed_loop_eigenvalues(n, m, seed):
    # THEORY.md 1: eig(T) = {l_i l_j (i <= j)} u {l_i} u {1}, l = eig(A + B K).
    p = _problem(n=n, m=m, seed=seed)
    k = np.random.default_rng(seed + 1).standard_normal((m, n)) * 0.2
    lam = np.linalg.eigvals(p.a + p.b @ k)
    iu, ju = np.triu_indices(n)
    want = np.sort_complex(np.concatenate([lam[iu] * lam[ju], lam, [1.0]]))
    got = np.sort_complex(np.linalg.eigvals(transition_operator(p, k, 0.7)))
    # eigenvalues of a non-normal matrix carry rounding ~ eps * condition; 1e-6 absolute is ample
    # for these well-conditioned draws, and any wrong entry of T moves them by O(1).
    assert np.allclose(np.sort(got.real), np.sort(want.real), atol=1e-6)
    assert np.allclose(np.sort(np.abs(got)), np.sort(np.abs(want)), atol=1e-6)


@given(n=st.integers(1, 4), m=st.integers(1, 3), seed=st.integers(0, 10**6), gamma=st.floats(0.1, 0.99))
def test_unclipped_fixed_point_is_the_teacher(n, m, seed, gamma):
    # Realizable features: the TD fixed point (I - gamma T)^T w = c is w_teacher, whose P solves the
    # Lyapunov equation (scipy's solver here, independently of offtd's teacher).
    p = _problem(n=n, m=m, seed=seed, gamma=gamma)
    k = np.random.default_rng(seed + 2).standard_normal((m, n)) * 0.1
    lmat = p.a + p.b @ k
    if math.sqrt(gamma) * np.max(np.abs(np.linalg.eigvals(lmat))) >= 0.99:
        return
    op, _ = td_operator(p, k, k, np.eye(n), clip_enabled=False)
    w = op.fixed_point()
    tch = teacher(p, k)
    assert np.allclose(w, tch.w, rtol=1e-10, atol=1e-10 * np.abs(tch.w).max())
    pmat = scipy.linalg.solve_discrete_lyapunov(math.sqrt(gamma) * lmat.T, p.q + k.T @ p.r @ k)
    iu, ju = np.triu_indices(n)
    quad = -p.reward_scale * np.where(iu == ju, 1.0, 2.0) * pmat[iu, ju]
    assert np.allclose(w[: len(iu)], quad, rtol=1e-8, atol=1e-10 * np.abs(quad).max())


def test_clipped_fixed_point_is_the_value_of_sigma_eff():
    # MODEL.md 9.4: with clipping at equal means the fixed point is the teacher of noise sigma_eff; the
    # quadratic block does not depend on the noise, the constant does.
    spec = load_spec("specs/clipped.toml")
    p = problem_from_spec(spec)
    k = np.zeros((2, 2))
    op, rm = td_operator(p, k, k, np.eye(2), clip_enabled=True)
    assert rm is not None and 0.0 < rm.e_rho_bar < 1.0
    eff = Problem(**{**p.__dict__, "sigma_pi": rm.sigma_eff})
    assert np.allclose(op.fixed_point(), teacher(eff, k).w, rtol=1e-10, atol=1e-14)
    assert not np.allclose(op.fixed_point(), teacher(p, k).w, rtol=1e-3)


@pytest.mark.parametrize(
    "spec_path,overrides",
    [
        ("specs/instab_sigma_mismatch.toml", {"policy.p_mix": 0.05}),
        ("specs/default.toml", {}),
        ("specs/clipped.toml", {"policy.p_mix": 0.05}),  # clipped, equal means: kappa0 and sigma_eff
    ],
)
def test_pool_expectation_equals_mean_of_sampled_a_hat(spec_path, overrides):
    # On one fixed state pool, average A_hat over 400 independent probe draws (distinct iteration numbers
    # address distinct random streams). Each entry's mean must be within 5 standard errors of the exact
    # E[A_hat | pool] = kappa0 G_pool (I - gamma T)^T (36 entries; 5 sigma keeps false alarms ~1e-5).
    rust = get_backend("rust")
    spec = load_spec(spec_path, overrides)
    p = problem_from_spec(spec)
    k = np.zeros((p.m, p.n))
    roll = rust.rollout(p, np.zeros(p.d), k, k, 0, spec.run.batch, spec.run.horizon)
    pool = np.ascontiguousarray(roll.states[:, :-1].reshape(-1, p.n))
    op, _ = td_operator(p, k, k, np.eye(p.n), spec.rho.clip_enabled)
    want = op.a(roll.gram / roll.count)
    sums = [rust.transitions(p, k, k, pool, 4096, 1, STABILITY_BASE, it) for it in range(1, 401)]
    draws = np.array([ts.a_sums[0] / 4096 for ts in sums])
    se = draws.std(axis=0, ddof=1) / math.sqrt(len(draws))
    z = (draws.mean(axis=0) - want) / np.where(se > 0, se, 1.0)
    assert np.all(np.abs(z) < 5), np.abs(z).max()
    # and E[b_hat | pool] = kappa0 G_pool c (6 entries, 5 SE)
    b_draws = np.array([ts.b_sums[0] / 4096 for ts in sums])
    b_se = b_draws.std(axis=0, ddof=1) / math.sqrt(len(b_draws))
    b_z = (b_draws.mean(axis=0) - op.b(roll.gram / roll.count)) / np.where(b_se > 0, b_se, 1.0)
    assert np.all(np.abs(b_z) < 5), np.abs(b_z).max()
    # and the check has power: pi's own operator without kappa0 is rejected under clipping
    if spec.rho.clip_enabled:
        wrong = transition_operator(p, k, p.sigma_pi)
        bad = (roll.gram / roll.count) @ (np.eye(p.d) - p.gamma * wrong).T
        assert np.abs((draws.mean(axis=0) - bad) / np.where(se > 0, se, 1.0)).max() > 10


def test_population_values_match_long_monte_carlo_of_a_hat():
    # E[A_hat] over rollouts too: 300 rollouts x 4096 probe transitions at the default spec, the mean
    # A_hat entrywise within 5 SE of the population value kappa0 G_pop (I - gamma T)^T.
    rust = get_backend("rust")
    spec = load_spec(None)
    p = problem_from_spec(spec)
    k = np.zeros((p.m, p.n))
    ex = exact_td(p, k, k, spec.run.horizon, spec.critic.alpha_w, False, rust)
    draws = []
    for it in range(300):
        roll = rust.rollout(p, np.zeros(p.d), k, k, it, spec.run.batch, spec.run.horizon)
        pool = np.ascontiguousarray(roll.states[:, :-1].reshape(-1, p.n))
        draws.append(rust.transitions(p, k, k, pool, 4096, 1, STABILITY_BASE, it).a_sums[0] / 4096)
    draws = np.array(draws)
    se = draws.std(axis=0, ddof=1) / math.sqrt(len(draws))
    z = (draws.mean(axis=0) - ex.a_pop) / np.where(se > 0, se, 1.0)
    assert np.all(np.abs(z) < 5), np.abs(z).max()


def test_theory_note_values_of_the_example_experiment():
    # THEORY.md 3 reports, for the example experiment at K = 0, min Re eig 1.837e-3, radius 0.999636 and
    # alpha_w* 20.43 from its own recursion, and 1.817e-3 / 0.99964 / 20.30 from a 4e7-state Monte Carlo.
    spec = load_spec("specs/instab_sigma_mismatch.toml")
    p = problem_from_spec(spec)
    k = np.zeros((2, 2))
    ex = exact_td(p, k, k, spec.run.horizon, spec.critic.alpha_w, False, REF)
    assert ex.pop.min_re == pytest.approx(1.837e-3, abs=1e-6)
    assert ex.pop.radius == pytest.approx(0.999636, abs=1e-6)
    assert ex.pop.alpha_crit == pytest.approx(20.43, abs=0.01)


def test_eig_summary_definitions():
    # hand-built A with eigenvalues 1 +- 2i and 0.5: radius of I - alpha A and the critical step.
    a = np.array([[1.0, -2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    s = eig_summary(a, 0.1)
    assert s.min_re == pytest.approx(0.5)
    assert s.radius == pytest.approx(max(abs(1 - 0.1 * (1 + 2j)), 1 - 0.1 * 0.5))
    assert s.alpha_crit == pytest.approx(min(2 * 1 / 5, 2 * 0.5 / 0.25))
    neg = eig_summary(np.diag([-0.1, 1.0]), 0.1)
    assert neg.alpha_crit == 0.0 and neg.min_re == pytest.approx(-0.1) and neg.radius > 1
    assert math.isnan(eig_summary(np.full((2, 2), math.nan), 0.1).radius)
