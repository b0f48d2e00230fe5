"""Unit tests of the exact theory's small pieces (python/offtd/exact/) against independent oracles: the
special functions against scipy, the intervals against scipy's Student t, `offtd theory`'s row against
numpy eigenvalues and the closed forms, its markdown table written out by hand, and the report's Theory
section routed from hand-built probe rows (each measured value taken from the right probe and metric,
each note stating its formula)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special as sp_special
from scipy import stats

from offtd.backend import get_backend
from offtd.exact import special, uncertainty
from offtd.exact.grid import theory_row, to_markdown
from offtd.exact.section import theory
from offtd.model import problem_from_spec
from test_advice_units import e_b_min_rho_c
from test_health_units import exact_row, fp_row, make_result, make_spec, stab_row

# ------------------------------------------------------------------------------------------ special


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 10.0, 60.0])
@pytest.mark.parametrize("b", [0.5, 1.0, 3.0, 40.0])
def test_betainc_equals_scipy(a, b):
    # (not closer to 1: at x = 1 - 1e-9, a = b = 0.5 scipy itself is 1.1e-12 off mpmath's value, which
    # betainc matches to the bit)
    for x in [1e-9, 1e-3, 0.05, 0.3, 0.5, 0.7, 0.95, 0.999]:
        # the continued fraction converges to |delta - 1| < 1e-16; lgamma and exp add a few ulp each:
        # 1e-12 relative (and 1e-300 absolute for values that underflow) is far above that
        assert special.betainc(a, b, x) == pytest.approx(sp_special.betainc(a, b, x), rel=1e-12, abs=1e-300), (a, b, x)
    assert special.betainc(a, b, 0.0) == 0.0 and special.betainc(a, b, -1.0) == 0.0
    assert special.betainc(a, b, 1.0) == 1.0 and special.betainc(a, b, 2.0) == 1.0


@pytest.mark.parametrize("df", [1, 2, 3, 7, 15, 100])
def test_student_t_cdf_and_ppf_equal_scipy(df):
    for t in [-30.0, -2.5, -0.3, 0.0, 0.3, 1.0, 2.5, 30.0]:
        assert special.student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-12, abs=1e-15), (t, df)
    for p in [0.01, 0.025, 0.3, 0.5, 0.6, 0.9, 0.975, 0.995]:
        # bisection stops at hi - lo <= 1e-14 hi: 1e-13 relative
        assert special.student_t_ppf(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-13, abs=1e-15), (p, df)
    assert special.student_t_ppf(0.5, df) == 0.0
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="p must be in"):
            special.student_t_ppf(bad, df)


# -------------------------------------------------------------------------------------- uncertainty


def _loo(v: np.ndarray) -> np.ndarray:
    """The leave-one-out means of v: what the jackknife sees for the statistic 'mean of the sub-batches'."""
    return (v.sum() - v) / (v.size - 1)


def test_jackknife_and_mean_intervals_use_students_t():
    """For a linear statistic (the mean of equal sub-batches) the delete-a-group jackknife standard error
    is exactly the sub-batch means' std(ddof 1) / sqrt(R) (the classic identity): that is the oracle."""
    v = np.array([1.0, 1.5, 0.25, 2.0, 1.25])
    se = np.std(v, ddof=1) / math.sqrt(5)  # numpy, two-pass
    half = stats.t.ppf(0.975, 4) * se
    iv = uncertainty.jackknife_interval(1.2, _loo(v))
    assert (iv.estimate, iv.se) == (1.2, pytest.approx(se, rel=1e-13))
    assert iv.lo == pytest.approx(1.2 - half, rel=1e-12) and iv.hi == pytest.approx(1.2 + half, rel=1e-12)
    iv99 = uncertainty.jackknife_interval(1.2, _loo(v), level=0.99)
    assert iv99.hi == pytest.approx(1.2 + stats.t.ppf(0.995, 4) * se, rel=1e-12)
    m = uncertainty.mean_interval(np.array([1.0, 1.5, math.nan, 0.25, 2.0, math.inf, 1.25]))  # non-finite left out
    assert m.estimate == pytest.approx(v.mean(), rel=1e-15) and m.se == pytest.approx(se, rel=1e-14)
    assert m.lo == pytest.approx(v.mean() - half, rel=1e-12) and m.hi == pytest.approx(v.mean() + half, rel=1e-12)
    assert uncertainty.t_quantile(4) == pytest.approx(stats.t.ppf(0.975, 4), rel=1e-13)


def test_jackknife_of_a_nonlinear_statistic():
    """theta = mean^2 over R = 4 groups, written out: se^2 = (R - 1)/R sum (theta_(-r) - mean theta_(-r))^2."""
    v = np.array([1.0, 2.0, 4.0, 8.0])
    loo = np.array([((15.0 - x) / 3.0) ** 2 for x in v])  # 14/3, 13/3, 11/3, 7/3, squared
    se = math.sqrt(0.75 * sum((x - loo.mean()) ** 2 for x in loo))
    assert uncertainty.jackknife_interval(14.0625, loo).se == pytest.approx(se, rel=1e-14)


def test_two_sub_batches_already_give_an_interval():
    v = np.array([0.5, 1.5])
    iv = uncertainty.jackknife_interval(1.0, _loo(v))
    se = np.std(v, ddof=1) / math.sqrt(2)  # 0.5
    assert iv.se == pytest.approx(se, rel=1e-15)
    assert iv.hi == pytest.approx(1.0 + stats.t.ppf(0.975, 1) * se, rel=1e-12)  # t with 1 degree of freedom: 12.7


def test_intervals_without_enough_values_are_the_whole_line():
    for sub in ([1.0], [], [1.0, math.nan]):
        iv = uncertainty.jackknife_interval(0.5, np.array(sub))
        assert iv.estimate == 0.5 and math.isnan(iv.se) and (iv.lo, iv.hi) == (-math.inf, math.inf)
    assert math.isnan(uncertainty.jackknife_interval(math.nan, np.array([1.0, 2.0])).se)
    one = uncertainty.mean_interval(np.array([3.0, math.nan]))
    assert one.estimate == 3.0 and math.isnan(one.se) and (one.lo, one.hi) == (-math.inf, math.inf)
    none = uncertainty.mean_interval(np.array([]))
    assert math.isnan(none.estimate) and (none.lo, none.hi) == (-math.inf, math.inf)


def test_interval_side_and_z():
    iv = uncertainty.Interval(estimate=1.0, se=0.25, lo=0.5, hi=1.5)
    assert iv.side(0.25) == 1 and iv.side(2.0) == -1 and iv.side(1.0) == 0
    assert iv.side(0.5) == 0 and iv.side(1.5) == 0  # an end on the boundary straddles it
    assert iv.z(0.5) == 2.0 and iv.z(1.5) == -2.0
    assert math.isnan(iv.z(math.nan)) and math.isnan(uncertainty.Interval(1.0, 0.0, 1.0, 1.0).z(0.0))
    assert math.isnan(uncertainty.Interval(1.0, math.nan, -math.inf, math.inf).z(0.0))


# ------------------------------------------------------------------------------------ offtd theory


THEORY_COLUMNS = [
    "exact_radius", "exact_min_re_eig", "exact_alpha_w_crit", "exact_e_rho2", "exact_e_rho_bar2", "exact_kappa0",
    "exact_teacher_gap", "dist_action_kl", "dist_action_tv", "teacher_defined", "closed_loop", "teacher_value_rms",
]  # fmt: skip


def test_theory_row_against_closed_forms():
    k = [[0.1, -0.2], [0.0, 0.3]]
    spec = make_spec(**{"policy.k_init": k, "policy.sigma_pi": 0.6, "policy.sigma_mu": 0.5, "policy.p_mix": 0.2})
    row = theory_row(spec, get_backend("python"))
    assert list(row) == THEORY_COLUMNS
    a, b = np.array(spec.env.a), np.array(spec.env.b)
    closed = math.sqrt(spec.critic.gamma) * max(abs(np.linalg.eigvals(a + b @ np.array(k))))
    assert row["closed_loop"] == pytest.approx(closed, rel=1e-12)
    assert row["teacher_defined"] == 1.0
    # equal gains: KL and TV of N(0, sp^2 I_2) against N(0, sm^2 I_2)
    r = 0.36 / 0.25
    assert row["dist_action_kl"] == pytest.approx(0.5 * 2 * (r - 1 - math.log(r)), rel=1e-12)
    # without clipping the clipped second moment is the second moment, E_b[rho^2] by quadrature
    assert row["exact_e_rho_bar2"] == row["exact_e_rho2"]
    assert row["exact_e_rho2"] == pytest.approx(e_b_min_rho_c(2, 0.6, 0.5, 0.2, math.inf, 2), rel=1e-9)
    clipped = theory_row(spec.replace(**{"rho.clip_enabled": True, "rho.clip": 1.5}), get_backend("python"))
    assert clipped["exact_e_rho_bar2"] == pytest.approx(e_b_min_rho_c(2, 0.6, 0.5, 0.2, 1.5, 2), rel=1e-9)
    assert clipped["exact_kappa0"] == pytest.approx(e_b_min_rho_c(2, 0.6, 0.5, 0.2, 1.5, 1), rel=1e-9)
    # unequal gains: no equal-means TV; an unstable closed loop: no teacher
    moved = theory_row(spec.replace(**{"policy.k_mu_init": [[0.0, 0.0], [0.0, 0.0]]}), get_backend("python"))
    assert math.isnan(moved["dist_action_tv"]) and moved["dist_action_kl"] > row["dist_action_kl"]
    unstable = theory_row(spec.replace(**{"policy.k_init": [[2.0, 0.0], [0.0, 2.0]]}), get_backend("python"))
    assert unstable["teacher_defined"] == 0.0 and unstable["closed_loop"] >= 1.0 and math.isnan(unstable["teacher_value_rms"])


def test_exact_metrics_row_and_the_noise_of_the_clipped_fixed_point():
    # MODEL.md 9.4: with clipping at equal means the fixed point is the teacher of noise
    # sigma_eff = sqrt(kappa2 / kappa0), kappa0 = E_b[rho_bar], kappa2 = E_b[rho_bar |a|^2] / m (quadrature)
    from offtd.exact.exact_metrics import exact_metrics
    from offtd.exact.expected_td import exact_td
    from offtd.model import teacher

    spec = make_spec(**{"policy.sigma_pi": 0.6, "policy.sigma_mu": 0.5, "policy.p_mix": 0.2, "rho.clip_enabled": True, "rho.clip": 1.5})
    problem = problem_from_spec(spec)
    k = np.zeros((2, 2))
    ex = exact_td(problem, k, k, spec.run.horizon, spec.critic.alpha_w, True, get_backend("python"))
    row = exact_metrics(ex, np.eye(6), teacher(problem, k), spec.critic.alpha_w)
    assert list(row) == [
        "exact_available", "exact_radius", "exact_min_re_eig", "exact_alpha_w_crit", "exact_tol", "exact_radius_pool",
        "exact_min_re_eig_pool", "exact_teacher_gap", "exact_kappa0", "exact_sigma_eff", "exact_ratio_available",
        "exact_e_rho2", "exact_e_rho_bar2", "exact_clip_prob",
    ]  # fmt: skip
    kappa0 = e_b_min_rho_c(2, 0.6, 0.5, 0.2, 1.5, 1)
    kappa2 = e_b_min_rho_c(2, 0.6, 0.5, 0.2, 1.5, 1, radial_power=2) / 2
    assert row["exact_kappa0"] == pytest.approx(kappa0, rel=1e-9)
    assert row["exact_sigma_eff"] == pytest.approx(math.sqrt(kappa2 / kappa0), rel=1e-9)
    assert row["exact_available"] == 1.0 and row["exact_ratio_available"] == 1.0


def test_exact_td_without_a_closed_form_is_nan():
    # clipping at unequal policy means: no operator, and every exact quantity NaN (floats, not None)
    from offtd.exact.exact_metrics import exact_metrics
    from offtd.exact.expected_td import exact_td
    from offtd.model import teacher

    spec = make_spec(**{"rho.clip_enabled": True, "rho.clip": 1.5})
    problem = problem_from_spec(spec)
    k_pi, k_mu = np.array([[0.3, 0.0], [0.0, 0.3]]), np.zeros((2, 2))
    ex = exact_td(problem, k_pi, k_mu, spec.run.horizon, spec.critic.alpha_w, True, get_backend("python"))
    assert not ex.operator.available
    assert ex.fixed_point.dtype == float and np.all(np.isnan(ex.fixed_point))
    row = exact_metrics(ex, np.eye(6), teacher(problem, k_pi), spec.critic.alpha_w)
    assert row["exact_available"] == 0.0 and math.isnan(row["exact_teacher_gap"])


def test_theory_row_with_a_zero_teacher_has_no_relative_gap():
    # Q = R = 0: the teacher is 0, so no scale for the gap (0/0 is not 0 here: NaN)
    spec = make_spec(**{"env.q": [[0.0, 0.0], [0.0, 0.0]], "env.r": [[0.0, 0.0], [0.0, 0.0]]})
    row = theory_row(spec, get_backend("python"))
    assert row["teacher_defined"] == 1.0 and row["teacher_value_rms"] == 0.0 and math.isnan(row["exact_teacher_gap"])


def test_summary_statistics_by_hand():
    from offtd.summary import fmt, slope_last_k, summarize

    # least squares over the last k = 3: x = 2, 3, 4, y = 1, 3, 8 -> slope 3.5
    assert slope_last_k([0, 1, 2, 3, 4], [9, 9, 1, 3, 8], 3) == 3.5
    assert slope_last_k([5, 5], [1.0, 2.0], 2) == 0.0  # no spread in x: 0, not 0/0
    assert slope_last_k([1], [4.0], 3) == 0.0 and math.isnan(slope_last_k([], [], 3))
    s = summarize([0, 1, 2, 3], [1, math.inf, 2, 4], 2)
    assert s == {"last": 4.0, "min": 1.0, "max": 4.0, "mean_last_k": 3.0, "slope_last_k": 2.0}
    assert all(type(v) is float for v in s.values())
    assert (fmt(-math.inf), fmt(math.inf), fmt(math.nan), fmt(None), fmt(3.0), fmt(0.123456)) == ("-inf", "inf", "nan", "-", "3", "0.1235")


def test_edge_values_of_small_helpers():
    from offtd.model import chi2_ppf
    from offtd.probes import _ratio
    from offtd.reference.common import ieee_div

    assert chi2_ppf(1.0, 3) == math.inf and math.isnan(chi2_ppf(1.5, 3)) and math.isnan(chi2_ppf(-0.1, 3))
    assert chi2_ppf(0.95, 2) == pytest.approx(stats.chi2.ppf(0.95, 2), rel=1e-12)
    # IEEE division: x/0 takes the signs of both, 0/0 is NaN
    assert ieee_div(1.0, -0.0) == -math.inf and ieee_div(-2.0, 0.0) == -math.inf and ieee_div(-2.0, -0.0) == math.inf
    assert math.isnan(ieee_div(0.0, 0.0)) and ieee_div(3.0, 2.0) == 1.5
    # the step-scale ratio: 0/0 = 1 (a frozen critic), x/0 = inf
    assert (_ratio(0.0, 0.0), _ratio(1.0, 0.0), _ratio(1.0, 4.0)) == (1.0, math.inf, 0.25)


def test_theory_markdown_table():
    rows = [
        {"cell": 0, "policy.p_mix": 0.1, "exact_radius": 0.123456, "flag": True, "name": "a"},
        {"cell": 1, "policy.p_mix": 0.25, "exact_radius": math.inf, "flag": False, "name": "b c"},
    ]
    assert to_markdown(rows).splitlines() == [
        "| cell | policy.p_mix | exact_radius | flag | name |",
        "| --- | --- | --- | --- | --- |",
        "| 0 | 0.1 | 0.1235 | True | a |",
        "| 1 | 0.25 | inf | False | b c |",
    ]
    assert to_markdown(rows[:1]).splitlines()[2] == "| 0 | 0.1 | 0.1235 | True | a |"  # a one-cell grid


# ------------------------------------------------------------------------------- the Theory section


def test_theory_section_routes_every_measured_value():
    # sigma_mu < sigma_pi (the tail-index rows exist), m = 2; every measured value distinct
    spec = make_spec(**{"policy.sigma_pi": 0.6, "policy.sigma_mu": 0.5, "policy.p_mix": 0.2, "rho.clip_enabled": True})
    dist = {"iter": 5.0, "dist_action_kl": 0.11, "dist_action_tv": 0.12, "rho_min": 0.13, "rho_max": 0.14, "rho2_mean": 0.15,
            "rho_khat": 0.16, "rho_p95": 0.17, "rho_p99": 0.18}  # fmt: skip
    fp = fp_row(rho_min=0.21, rho_max=0.22, teacher_gap=0.23)
    st = stab_row(radius=0.31, a=0.32)
    ex = exact_row(exact_radius=0.41, exact_min_re_eig=0.42, exact_alpha_w_crit=0.43, exact_teacher_gap=0.44,
                   exact_e_rho2=0.45, exact_kappa0=0.46, exact_radius_pool=0.47, exact_min_re_eig_pool=0.48)  # fmt: skip
    res = make_result(series={"mean_rho2": [9, 9, 1, 2, 3, 4], "mean_rho_bar": [9, 9, 5, 6, 7, 8], "w_norm": [1, 2, 3, 4, 5, 6.5]},
                      probes={"distribution_probe": [dist], "fixed_point_probe": [fp], "stability_probe": [st]}, exact=[ex])  # fmt: skip
    th = theory(spec, res)
    measured = {name: row["measured"] for name, row in th.items()}
    assert measured == {
        "dist_action_kl": 0.11, "dist_action_tv": 0.12, "rho_min (pi/mu)": 0.13, "rho_max (pi/mu)": 0.14,
        "rho_min (pi/b)": 0.21, "rho_max (pi/b)": 0.22, "E_mu[rho^2]": 0.15, "rho_khat (pi/mu)": 0.16,
        "rho_p95 (pi/mu)": 0.17, "rho_p99 (pi/mu)": 0.18,
        "E_b[rho^2] (pi/b)": 2.5, "E_b[rho_bar] (clipped)": 6.5,  # mean of the last 4 (last_k) entries
        "radius of I - alpha_w A": 0.31, "min Re eig(A)": 0.32, "alpha_w* (critical step)": None,
        "teacher_gap (fixed point vs teacher)": 0.23, "closed_loop": None, "teacher V_pi(0)": None,
        "teacher ||w_teacher||": 6.5,
    }  # fmt: skip
    predicted = {name: row["predicted"] for name, row in th.items()}
    assert predicted["rho_khat (pi/mu)"] == pytest.approx(1 - 0.25 / 0.36, rel=1e-15)
    assert predicted["E_mu[rho^2]"] == pytest.approx((0.25 / (0.6 * math.sqrt(0.5 - 0.36))) ** 2, rel=1e-12)
    assert predicted["rho_min (pi/mu)"] == pytest.approx((0.5 / 0.6) ** 2, rel=1e-14)
    assert (predicted["radius of I - alpha_w A"], predicted["min Re eig(A)"], predicted["alpha_w* (critical step)"]) == (0.41, 0.42, 0.43)
    assert predicted["teacher_gap (fixed point vs teacher)"] == 0.44
    assert (predicted["E_b[rho^2] (pi/b)"], predicted["E_b[rho_bar] (clipped)"]) == (0.45, 0.46)
    # the notes state the formulas
    assert predicted["dist_action_kl"] == pytest.approx(0.5 * 2 * (0.36 / 0.25 - 1 - math.log(0.36 / 0.25)), rel=1e-12)
    assert "k = 1 - sigma_mu^2/sigma_pi^2 (k >= 0.5 exactly when E_mu[rho^2] is infinite)" in th["rho_khat (pi/mu)"]["note"]
    assert th["rho_min (pi/mu)"]["note"] == "inf_a pi/mu = (sigma_mu/sigma_pi)^m when sigma_mu < sigma_pi"
    assert th["teacher V_pi(0)"]["note"].startswith("-c_r c0: the value of the start")
    assert th["dist_action_kl"]["note"].startswith("closed-form KL(pi||mu) at equal means")
    assert "finite: sigma_pi^2 < 2 sigma_mu^2" == th["E_mu[rho^2]"]["note"]
    assert th["radius of I - alpha_w A"]["note"].startswith("exact at iteration 5 (population)")
    assert "whose own expectation is 0.47 for its states" in th["radius of I - alpha_w A"]["note"]
    assert th["min Re eig(A)"]["note"].endswith("given the iteration's states 0.48")
    assert "min over eig with Re > 0 of 2 Re / |lambda|^2" in th["alpha_w* (critical step)"]["note"]


def test_theory_section_without_exact_rows_or_tail_rows():
    spec = make_spec(**{"policy.sigma_pi": 0.4, "policy.sigma_mu": 0.5})  # sigma_mu > sigma_pi: no tail rows
    th = theory(spec, make_result())
    assert "rho_khat (pi/mu)" not in th and "radius of I - alpha_w A" not in th and "E_b[rho^2] (pi/b)" not in th
    # final gains that are not finite: the teacher rows use policy.k_init (zeros): sqrt(gamma) rho(A)
    bad = make_result()
    bad.final_k_pi = np.full((2, 2), math.nan)
    th = theory(spec, bad)
    closed = math.sqrt(spec.critic.gamma) * max(abs(np.linalg.eigvals(np.array(spec.env.a))))
    assert th["closed_loop"]["predicted"] == pytest.approx(closed, rel=1e-12)
    heavy = theory(make_spec(**{"policy.sigma_pi": 1.0, "policy.sigma_mu": 0.5}), make_result())
    assert math.isinf(heavy["E_mu[rho^2]"]["predicted"]) and heavy["E_mu[rho^2]"]["note"] == "infinite: sigma_pi^2 >= 2 sigma_mu^2"
    assert th["E_mu[rho^2]"]["predicted"] == pytest.approx((0.25 / (0.4 * math.sqrt(0.5 - 0.16))) ** 2, rel=1e-12)
    assert th["rho_max (pi/mu)"]["predicted"] == pytest.approx((0.5 / 0.4) ** 2, rel=1e-14)
    # exact rows whose ratio moments or expected update are unavailable add nothing
    th = theory(spec, make_result(exact=[exact_row(exact_available=0.0, exact_ratio_available=0.0)]))
    assert "E_b[rho^2] (pi/b)" not in th and "min Re eig(A)" not in th
    th = theory(spec, make_result(exact=[exact_row(exact_available=0.0)]))
    assert "E_b[rho^2] (pi/b)" in th and "E_b[rho_bar] (clipped)" not in th and "min Re eig(A)" not in th


def test_fastest_step_against_a_bounded_scalar_search():
    """fastest_step's candidates (parabola vertices and crossings) against scipy's bounded search of
    max_i |1 - alpha lambda_i| over (0, alpha*), on random spectra with complex pairs: the radius found
    is never worse than the search's, and within 1e-9 of it (the search's own xatol is 1e-12 in alpha)."""
    from scipy.optimize import minimize_scalar

    from offtd.exact.expected_td import eig_summary, fastest_step

    rng = np.random.default_rng(7)
    for trial in range(40):
        d = int(rng.integers(1, 6))
        a = rng.normal(size=(d, d)) + (1.0 + 3.0 * rng.random()) * np.eye(d)
        lam = np.linalg.eigvals(a)
        if np.min(lam.real) <= 0:
            continue
        alpha, r = fastest_step(lam)
        crit = eig_summary(a, 0.0).alpha_crit
        grid = np.linspace(0.0, crit, 2001)[1:-1]
        start = grid[np.argmin([np.max(np.abs(1.0 - g * lam)) for g in grid])]
        step = crit / 2000
        res = minimize_scalar(lambda x, lam=lam: float(np.max(np.abs(1.0 - x * lam))), bounds=(max(start - step, 0.0), min(start + step, crit)),
                              method="bounded", options={"xatol": 1e-12})  # fmt: skip
        assert 0.0 < alpha < crit and r < 1.0, trial
        assert r <= res.fun + 1e-9, (trial, r, res.fun)
        assert r == float(np.max(np.abs(1.0 - alpha * lam)))
    # a real spectrum {1, 3}: the optimum 2 / (1 + 3) = 0.5 with radius (3 - 1) / (3 + 1) = 0.5
    assert fastest_step(np.array([1.0, 3.0])) == (0.5, 0.5)
    assert all(math.isnan(x) for x in fastest_step(np.array([1.0, -0.1])))
