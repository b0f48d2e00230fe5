"""Unit tests of the health checks (specs/MODEL.md section 7) on hand-built LoopResults: every branch of
every check, each threshold approached from below, met exactly and crossed, the straddle rule (an
interval across a threshold is WARN, never FAIL; a zero standard error makes the estimate the interval),
and the status line's order. The expected verdicts are written out from MODEL.md 7, not produced by
the code. Boundaries use values that are exact in binary (tol = 2^-20, thresholds like 4 and 8), so
"exactly at the threshold" is exact, not rounding."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from offtd import health
from offtd.health import Check, Verdict, evaluate
from offtd.loop import LoopResult
from offtd.spec import load_spec

Z95 = float(stats.norm.ppf(0.975))  # 1.959963984540054, the z of health.level = 0.95 (scipy, not offtd)
TOL = 2.0**-20  # an exact_tol for which 1 + tol and 1 - tol are exact
BIG = 1e300  # a value past the completed iterations, which no check may read
_SPECS: dict[str, object] = {}


def make_spec(**over):
    """The default experiment with last_k = 4 and round thresholds, plus dotted overrides."""
    base = {"run.last_k": 4, "health.w_norm_max": 4.0, "health.td_loss_max": 8.0, "health.rho2_max": 10.0}
    key = repr(sorted({**base, **over}.items()))
    if key not in _SPECS:
        _SPECS[key] = load_spec(None, {**base, **over})
    return _SPECS[key]


def make_result(completed: int = 6, *, total: int | None = None, series: dict | None = None, probes: dict | None = None,
                exact: list | None = None, diverged_at: int | None = None, diverged_what: str | None = None,
                interrupted: bool = False, teacher_undefined: list[int] | None = None) -> LoopResult:  # fmt: skip
    """A LoopResult whose series are benign (everything 1, standard errors 0) unless given; entries past
    `completed` are BIG, as if a later iteration had diverged (a check that reads them is wrong)."""
    total = completed + 2 if total is None else total
    base = {
        "w_norm": 1.0, "td_loss": 1.0, "teacher_w_norm": 1.0, "teacher_value_scale": 1.0,
        "mean_rho2": 1.0, "mean_rho2_se": 0.0, "mean_rho_bar": 1.0, "mean_rho_bar_se": 0.0,
        "mean_rho_bar2": 1.0, "mean_rho_bar2_se": 0.0, "tracking_gap": 0.0, "critic_teacher_error": 0.0,
    }  # fmt: skip
    out = {}
    for key, default in base.items():
        given = (series or {}).get(key, default)
        arr = np.full(total, BIG)
        vals = np.broadcast_to(np.asarray(given, dtype=float), (completed,)) if np.ndim(given) == 0 else np.asarray(given, float)
        assert vals.size == completed, key
        arr[:completed] = vals
        out[key] = arr
    return LoopResult(
        iters=np.arange(total, dtype=float),
        series=out,
        probe_series={k: list(v) for k, v in (probes or {}).items()},
        exact_series=list(exact or []),
        completed=completed,
        diverged_at=diverged_at,
        diverged_what=diverged_what,
        interrupted=interrupted,
        final_w=np.zeros(6),
        final_k_pi=np.zeros((2, 2)),
        final_k_mu=np.zeros((2, 2)),
        elapsed_s=0.0,
        teacher_undefined_iters=list(teacher_undefined or []),
    )


def exact_row(**kw) -> dict[str, float]:
    """An exact-metrics row: a stable expected TD map far from every threshold unless changed."""
    row = {
        "iter": 5.0, "exact_available": 1.0, "exact_radius": 0.5, "exact_min_re_eig": 0.25, "exact_alpha_w_crit": 0.2,
        "exact_tol": TOL, "exact_radius_pool": 0.5, "exact_min_re_eig_pool": 0.25, "exact_teacher_gap": math.nan,
        "exact_kappa0": math.nan, "exact_sigma_eff": math.nan, "exact_ratio_available": 1.0, "exact_e_rho2": 2.0,
        "exact_e_rho_bar2": 2.0, "exact_clip_prob": math.nan,
    }  # fmt: skip
    row.update(kw)
    return row


def stab_row(radius=0.5, radius_se=0.0, a=0.25, a_se=0.0, *, lo=None, hi=None, a_lo=None, a_hi=None, **kw) -> dict:
    """A stability-probe row; intervals default to estimate +- 1.96 SE."""
    row = {
        "iter": 5.0, "repeats": 16.0, "batch_size": 4096.0, "rho_khat": math.nan, "rho_nonfinite": 0.0,
        "stability_radius": radius, "stability_radius_se": radius_se, "stability_radius_z": 0.0,
        "stability_radius_lo": radius - Z95 * radius_se if lo is None else lo,
        "stability_radius_hi": radius + Z95 * radius_se if hi is None else hi,
        "a_min_real_eig": a, "a_min_real_eig_se": a_se, "a_min_real_eig_z": 0.0,
        "a_min_real_eig_lo": a - Z95 * a_se if a_lo is None else a_lo,
        "a_min_real_eig_hi": a + Z95 * a_se if a_hi is None else a_hi,
    }  # fmt: skip
    row.update(kw)
    return row


def fp_row(**kw) -> dict:
    row = {"iter": 5.0, "batch_size": 4096.0, "rho_khat": math.nan, "rho_nonfinite": 0.0, "converged": 1.0, "iterations": 7.0, "residual": 1e-9}
    row.update(kw)
    return row


# ------------------------------------------------------------------------------------------------ z


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99, 0.999999])
def test_z_level_is_the_two_sided_normal_quantile(level):
    spec = make_spec(**{"health.level": level})
    # scipy's quantile of (1 + level) / 2; 1e-12 relative: two implementations of the inverse CDF
    assert health.z_level(spec) == pytest.approx(stats.norm.ppf(0.5 * (1 + level)), rel=1e-12)


# ------------------------------------------------------------------------------------------- finite


def test_finite_passes_within_bounds():
    c = health.check_finite(make_spec(), make_result())
    assert (c.status, c.kind) == ("PASS", "ok")


def test_finite_w_norm_bound_is_strict_and_relative_to_the_teacher():
    spec = make_spec()  # w_norm_max = 4
    # teacher ||w|| = 2: the bound is 8 at every iteration
    at = make_result(series={"teacher_w_norm": 2.0, "w_norm": [1, 1, 8.0, 1, 1, 1]})
    assert health.check_finite(spec, at).status == "PASS"  # exactly 4 x the teacher: not over
    over = make_result(series={"teacher_w_norm": 2.0, "w_norm": [1, 1, 8.000001, 9, 1, 1]})
    c = health.check_finite(spec, over)
    assert (c.status, c.kind) == ("FAIL", "over_bound")
    assert c.reason == "w_norm exceeded 4 x the teacher's scale at iteration 2: diverging"
    # the same norm against an absolute bound of 4 would FAIL; relative to a teacher of 2 it passes
    assert health.check_finite(spec, make_result(series={"teacher_w_norm": 2.0, "w_norm": 6.0})).status == "PASS"


def test_finite_td_loss_bound_uses_the_square_of_the_value_scale():
    spec = make_spec()  # td_loss_max = 8
    # teacher mean V^2 = 3^2 = 9: the bound is 72 (not 8 x 3 = 24)
    assert health.check_finite(spec, make_result(series={"teacher_value_scale": 3.0, "td_loss": 72.0})).status == "PASS"
    assert health.check_finite(spec, make_result(series={"teacher_value_scale": 3.0, "td_loss": 50.0})).status == "PASS"
    c = health.check_finite(spec, make_result(series={"teacher_value_scale": 3.0, "td_loss": [1, 1, 1, 72.5, 1, 1]}))
    assert c.status == "FAIL" and c.reason.startswith("td_loss exceeded 8 x the teacher's scale at iteration 3")


def test_finite_reports_the_earliest_crossing_of_either_bound():
    spec = make_spec()
    r = make_result(series={"w_norm": [1, 1, 1, 5, 5, 5], "td_loss": [1, 1, 9, 9, 9, 9]})
    assert "td_loss exceeded 8" in health.check_finite(spec, r).reason and "iteration 2" in health.check_finite(spec, r).reason
    r = make_result(series={"w_norm": [1, 5, 1, 5, 5, 5], "td_loss": [1, 1, 9, 9, 9, 9]})
    assert health.check_finite(spec, r).reason.startswith("w_norm exceeded 4 x the teacher's scale at iteration 1")
    # a tie (both at iteration 2): w_norm, the first of the two bounds, is named
    r = make_result(series={"w_norm": [1, 1, 5, 5, 5, 5], "td_loss": [1, 1, 9, 9, 9, 9]})
    assert health.check_finite(spec, r).reason.startswith("w_norm exceeded")


def test_finite_carries_the_last_defined_teacher_scale_forward():
    spec = make_spec()
    # teacher ||w|| 10 then undefined (NaN, then 0): the bound stays 40, so 30 passes and 41 fails
    r = make_result(series={"teacher_w_norm": [10, 10, math.nan, 0.0, math.nan, 0.0], "w_norm": [1, 1, 30, 30, 30, 30]})
    assert health.check_finite(spec, r).status == "PASS"
    r = make_result(series={"teacher_w_norm": [10, 10, math.nan, 0.0, math.nan, 0.0], "w_norm": [1, 1, 30, 41, 30, 30]})
    c = health.check_finite(spec, r)
    assert c.status == "FAIL" and "at iteration 3" in c.reason and "teacher's scale" in c.reason


def test_finite_without_any_teacher_uses_absolute_bounds():
    spec = make_spec()
    # a zero scale is "no teacher" (a zero teacher gives no scale), as is NaN
    for scale in (0.0, math.nan):
        assert health.check_finite(spec, make_result(series={"teacher_w_norm": scale, "w_norm": 4.0})).status == "PASS"
        c = health.check_finite(spec, make_result(series={"teacher_w_norm": scale, "w_norm": [1, 4.5, 1, 1, 1, 1]}))
        assert c.status == "FAIL" and c.reason == "w_norm exceeded 4 (absolute: no teacher defined) at iteration 1: diverging"
    # the teacher appears later: absolute before, relative from then on
    r = make_result(series={"teacher_w_norm": [math.nan, math.nan, 100, 100, 100, 100], "w_norm": [1, 1, 300, 300, 300, 300]})
    assert health.check_finite(spec, r).status == "PASS"


def test_finite_ignores_entries_past_the_completed_iterations():
    # make_result puts 1e300 in every series past `completed`
    assert health.check_finite(make_spec(), make_result(completed=3)).status == "PASS"
    assert health.check_finite(make_spec(), make_result(completed=0)).status == "PASS"


def test_finite_divergence_fails_and_names_an_earlier_bound_only():
    spec = make_spec()
    c = health.check_finite(spec, make_result(diverged_at=4, diverged_what="w"))
    assert (c.status, c.kind, c.reason) == ("FAIL", "nonfinite", "values stopped being finite at iteration 4 (w)")
    c = health.check_finite(spec, make_result(diverged_at=4, diverged_what="w", series={"w_norm": [1, 1, 1, 5, 1, 1]}))
    assert c.kind == "nonfinite" and c.reason.endswith("; w_norm exceeded 4 x the teacher's scale from iteration 3")
    # a crossing at the divergence iteration itself adds nothing
    c = health.check_finite(spec, make_result(diverged_at=3, diverged_what="w", series={"w_norm": [1, 1, 1, 5, 1, 1]}))
    assert c.reason == "values stopped being finite at iteration 3 (w)"


# ------------------------------------------------------------------------------------- rho_sane: moment


def _rho(spec, **kw) -> Check:
    return health.check_rho(spec, make_result(**kw))


def test_rho_no_iteration_completed_passes():
    c = _rho(make_spec(), completed=0)
    assert (c.status, c.reason) == ("PASS", "no iteration completed")


def test_rho_exact_second_moment_threshold_is_strict():
    spec = make_spec()  # rho2_max = 10
    c = _rho(spec, exact=[exact_row(exact_e_rho_bar2=10.0)])
    assert c.status == "PASS" and c.reason.startswith("E_b[rho^2] = 10 (exact) <= 10")
    c = _rho(spec, exact=[exact_row(exact_e_rho_bar2=10.5)])
    assert (c.status, c.kind) == ("FAIL", "rho_second_moment") and "E_b[rho^2] = 10.5 (exact" in c.reason
    # the exact value judges, whatever the estimate says
    c = _rho(spec, exact=[exact_row(exact_e_rho_bar2=9.0)], series={"mean_rho_bar2": 50.0})
    assert c.status == "PASS"
    # only the last probe iteration's exact value counts
    c = _rho(spec, exact=[exact_row(exact_e_rho_bar2=50.0, iter=0.0), exact_row(exact_e_rho_bar2=9.0)])
    assert c.status == "PASS"


def test_rho_estimate_with_zero_se_is_judged_at_its_value():
    spec = make_spec()
    no_exact = [exact_row(exact_ratio_available=0.0, exact_e_rho_bar2=math.nan)]
    for exact in (no_exact, None):
        assert _rho(spec, exact=exact, series={"mean_rho_bar2": 10.0}).status == "PASS"  # at the threshold
        c = _rho(spec, exact=exact, series={"mean_rho_bar2": 10.0 + 2**-40})
        assert (c.status, c.kind) == ("FAIL", "rho_second_moment"), c  # a zero SE: no straddle


def test_rho_estimate_straddle_is_warn_and_the_se_combines_the_last_k():
    spec = make_spec()  # last_k = 4, rho2_max = 10
    # last 4 SEs (3, 4, 0, 0): SE of the mean = sqrt(9 + 16) / 4 = 1.25 (not the mean SE 1.75, nor
    # sqrt(25) / sqrt(4) = 2.5). The earlier entries (SE 100, value 1000) are outside last_k.
    se = [100, 100, 3, 4, 0, 0]
    vals = lambda v: [1000, 1000, v, v, v, v]  # noqa: E731
    fail = _rho(spec, series={"mean_rho_bar2": vals(10 + Z95 * 1.5), "mean_rho_bar2_se": se})
    assert (fail.status, fail.kind) == ("FAIL", "rho_second_moment"), fail
    assert "+- 1.25" in fail.reason
    warn = _rho(spec, series={"mean_rho_bar2": vals(10 + Z95 * 1.0), "mean_rho_bar2_se": se})
    assert (warn.status, warn.kind) == ("WARN", "rho_second_moment_undetermined") and "is above 10" in warn.reason
    below = _rho(spec, series={"mean_rho_bar2": vals(10 - Z95 * 1.0), "mean_rho_bar2_se": se})
    assert (below.status, below.kind) == ("WARN", "rho_second_moment_undetermined") and "is below 10" in below.reason
    clear = _rho(spec, series={"mean_rho_bar2": vals(10 - Z95 * 1.5), "mean_rho_bar2_se": se})
    assert clear.status == "PASS"
    # an estimate exactly at the threshold with noise is neither above nor below it
    tie = _rho(spec, series={"mean_rho_bar2": vals(10.0), "mean_rho_bar2_se": se})
    assert (tie.status, tie.kind) == ("WARN", "rho_second_moment_undetermined"), tie
    assert "is at 10, 1.96 SE either way" in tie.reason and "above" not in tie.reason and "below" not in tie.reason


def test_rho_estimate_uses_health_level():
    # 10 + 2.2 SE: beyond 1.96 SE (FAIL at 95%), within 2.576 SE (WARN at 99%)
    series = {"mean_rho_bar2": 10 + 2.2, "mean_rho_bar2_se": [0, 0, 2, 2, 2, 2]}  # SE of the mean 1
    assert _rho(make_spec(), series=series).status == "FAIL"
    assert _rho(make_spec(**{"health.level": 0.99}), series=series).status == "WARN"


def test_rho_estimate_not_finite_is_warn():
    for bad in (math.nan, math.inf):
        c = _rho(make_spec(), series={"mean_rho_bar2": [1, 1, 1, 1, 1, bad]})
        assert (c.status, c.kind) == ("WARN", "rho_nonfinite") and "is not finite" in c.reason


def test_rho_wording_names_the_weights_used():
    assert "E_b[rho^2]" in _rho(make_spec(), exact=[exact_row(exact_e_rho_bar2=11.0)]).reason
    clip = make_spec(**{"rho.clip_enabled": True})
    assert "E_b[rho_bar^2]" in _rho(clip, exact=[exact_row(exact_e_rho_bar2=11.0, exact_kappa0=1.0)]).reason
    assert "mean(rho_bar^2)" in _rho(clip, series={"mean_rho_bar2": 11.0}).reason
    assert "mean_last_k(mean_rho2)" in _rho(make_spec(), series={"mean_rho_bar2": 11.0}).reason


# --------------------------------------------------------------------------------------- rho_sane: clip


def test_clip_mass_exact_thresholds_are_strict():
    spec = make_spec(**{"rho.clip_enabled": True, "health.clip_mass_warn": 0.5, "health.clip_mass_fail": 0.75})
    check = lambda kappa0: _rho(spec, exact=[exact_row(exact_kappa0=kappa0)])  # noqa: E731
    assert check(0.5).status == "PASS"  # removes exactly 0.5
    c = check(0.5 - 2**-20)
    assert (c.status, c.kind) == ("WARN", "clip_mass") and "(exact)" in c.reason
    assert check(0.25).status == "WARN"  # removes exactly 0.75: not beyond the FAIL threshold
    c = check(0.25 - 2**-20)
    assert (c.status, c.kind) == ("FAIL", "clip_mass")


def test_clip_mass_estimate_fails_only_beyond_its_noise():
    spec = make_spec(**{"rho.clip_enabled": True, "health.clip_mass_warn": 0.5, "health.clip_mass_fail": 0.75})
    no_kappa = [exact_row(exact_kappa0=math.nan)]
    # mean_rho_bar 0.2 removes 0.8; SE of the mean over the last 4: sqrt(4 * 0.02^2) / 4 = 0.01
    se = [0, 0, 0.02, 0.02, 0.02, 0.02]
    c = _rho(spec, exact=no_kappa, series={"mean_rho_bar": 0.2, "mean_rho_bar_se": se})
    assert (c.status, c.kind) == ("FAIL", "clip_mass") and "(estimate, SE 0.01)" in c.reason  # 0.8 - 0.0196 > 0.75
    se = [0, 0, 0.06, 0.06, 0.06, 0.06]  # SE 0.03: 0.8 - 0.0588 < 0.75, a straddle
    c = _rho(spec, exact=no_kappa, series={"mean_rho_bar": 0.2, "mean_rho_bar_se": se})
    assert (c.status, c.kind) == ("WARN", "clip_mass")
    # no exact row at all: the estimate too
    assert _rho(spec, series={"mean_rho_bar": 0.6}).status == "PASS"
    assert _rho(spec, series={"mean_rho_bar": 0.4}).status == "WARN"


def test_clip_bias_warns_above_the_teacher_gap_threshold():
    spec = make_spec(**{"rho.clip_enabled": True, "health.teacher_gap_warn": 0.125})
    assert _rho(spec, exact=[exact_row(exact_kappa0=1.0, exact_teacher_gap=0.125)]).status == "PASS"
    assert _rho(spec, exact=[exact_row(exact_kappa0=1.0, exact_teacher_gap=math.nan)]).status == "PASS"
    c = _rho(spec, exact=[exact_row(exact_kappa0=1.0, exact_teacher_gap=0.25)])
    assert (c.status, c.kind) == ("WARN", "clip_bias") and "0.25" in c.reason
    # without clipping the gap is not judged here
    assert _rho(make_spec(**{"health.teacher_gap_warn": 0.125}), exact=[exact_row(exact_teacher_gap=0.25)]).status == "PASS"


def test_clip_fail_outranks_the_other_findings():
    spec = make_spec(**{"rho.clip_enabled": True, "health.clip_mass_warn": 0.5, "health.clip_mass_fail": 0.75})
    c = _rho(spec, exact=[exact_row(exact_kappa0=0.1, exact_teacher_gap=1.0)])
    assert (c.status, c.kind) == ("FAIL", "clip_mass")


# --------------------------------------------------------------------------------------- rho_sane: tail


def test_khat_se_is_the_gpd_shape_sd_over_the_tail_size():
    # MODEL.md 7: at n = 4096 and k = 0.75 the SE is 0.126 (T = ceil(min(819.2, 192)) = 192)
    assert health.khat_se(0.75, 4096) == pytest.approx(1.75 / math.sqrt(192), rel=1e-15)
    assert round(health.khat_se(0.75, 4096), 3) == 0.126
    # small n: T = ceil(0.2 n) = 3 at n = 11 (3 sqrt(11) = 9.9); at n = 100, min(20, 30) = 20
    assert health.khat_se(0.0, 11) == pytest.approx(1 / math.sqrt(3), rel=1e-15)
    assert health.khat_se(0.0, 100) == pytest.approx(1 / math.sqrt(20), rel=1e-15)
    # k below -0.5 counts as -0.5 (the GPD sd formula's domain); -0.5 itself is unchanged
    assert health.khat_se(-2.0, 100) == pytest.approx(0.5 / math.sqrt(20), rel=1e-15)
    assert health.khat_se(-0.5, 100) == pytest.approx(0.5 / math.sqrt(20), rel=1e-15)
    assert math.isnan(health.khat_se(math.nan, 100)) and math.isnan(health.khat_se(0.5, 0))
    assert health.khat_se(0.5, 1) == 1.5  # one ratio: T = ceil(min(0.2, 3)) = 1


def _tail(spec, fp_khat=math.nan, st_khat=math.nan, n=4096.0, nonfinite=0.0) -> Check:
    probes = {
        "fixed_point_probe": [fp_row(rho_khat=fp_khat, batch_size=n, rho_nonfinite=0.0)],
        "stability_probe": [stab_row(rho_khat=st_khat, batch_size=n, rho_nonfinite=nonfinite)],
    }
    c = _rho(spec, probes=probes)
    assert c.name == "rho_sane"  # every finding of the tail is reported under the rho_sane check
    return c


def test_tail_thresholds():
    spec = make_spec(**{"health.khat_warn": 0.5, "health.khat_fail": 0.75})
    se = 1.75 / math.sqrt(192)  # at k = 0.75, n = 4096
    assert _tail(spec, fp_khat=0.5).status == "PASS"  # at khat_warn: not above
    c = _tail(spec, fp_khat=0.5 + 2**-20)
    assert (c.status, c.kind) == ("WARN", "rho_tail") and "slow importance-sampling" in c.reason
    c = _tail(spec, fp_khat=0.75)  # at khat_fail: the slow-convergence WARN, not the heavy-tail one
    assert c.status == "WARN" and "slow importance-sampling" in c.reason
    c = _tail(spec, fp_khat=0.76)  # above khat_fail within its noise: WARN, never FAIL
    assert (c.status, c.kind) == ("WARN", "rho_tail") and "undetermined" in c.reason
    # FAIL needs k - z (1 + k) / sqrt(T) > khat_fail, i.e. k > k* = (khat_fail + c) / (1 - c), c = z / sqrt(T)
    c_ = Z95 / math.sqrt(192)
    k_star = (0.75 + c_) / (1 - c_)  # 1.0383
    c = _tail(spec, st_khat=k_star + 1e-9)
    assert (c.name, c.status, c.kind) == ("rho_sane", "FAIL", "rho_tail") and "in stability_probe" in c.reason and "beyond its noise" in c.reason
    c = _tail(spec, st_khat=k_star - 1e-9)
    assert (c.status, c.kind) == ("WARN", "rho_tail") and "undetermined" in c.reason
    assert f"+- {se:.4g}" in _tail(spec, fp_khat=0.75).reason


def test_tail_judges_the_larger_k_hat_of_the_two_probes():
    spec = make_spec(**{"health.khat_warn": 0.5, "health.khat_fail": 0.75})
    c = _tail(spec, fp_khat=0.2, st_khat=0.6)
    assert c.status == "WARN" and "in stability_probe" in c.reason
    c = _tail(spec, fp_khat=0.6, st_khat=0.2)
    assert c.status == "WARN" and "in fixed_point_probe" in c.reason
    c = _tail(spec, fp_khat=0.6, st_khat=math.nan)  # NaN (light tail) never wins
    assert "in fixed_point_probe" in c.reason


def test_tail_se_leaves_out_nonfinite_ratios():
    spec = make_spec(**{"health.khat_warn": 0.5, "health.khat_fail": 0.75})
    # k = 1.2 at n = 100 finite ratios: T = 20, SE = 2.2 / sqrt(20) = 0.492, 1.2 - 1.96 SE < 0.75: WARN.
    # Counting 4096 - 3996 = 100 finite ratios, not 4096 (SE 2.2 / sqrt(192) = 0.159, 1.2 - 1.96 SE > 0.75: FAIL).
    c = _tail(spec, st_khat=1.2, n=4096.0, nonfinite=3996.0)
    assert (c.status, c.kind) == ("WARN", "rho_tail") and "1.2 +- 0.4919" in c.reason, c
    assert _tail(spec, st_khat=1.2, n=4096.0).status == "FAIL"


def test_tail_light_missing_and_clipped_are_not_judged():
    spec = make_spec(**{"health.khat_warn": 0.5, "health.khat_fail": 0.75})
    c = _tail(spec)
    assert c.status == "PASS" and "light tail" in c.reason
    c = _rho(spec)
    assert c.status == "PASS" and "no pi/b probe ran" in c.reason
    row = fp_row(rho_khat=0.6, batch_size=4097.0)
    del row["rho_nonfinite"]  # a row without the count: no non-finite ratio, n = 4097: T = ceil(3 sqrt(4097)) = 193
    assert "0.6 +- %.4g" % (1.6 / math.sqrt(193)) in _rho(spec, probes={"fixed_point_probe": [row]}).reason  # n = 4096 gives 192
    row = fp_row()
    del row["rho_khat"]  # a row without the statistic counts as a light tail
    c = _rho(spec, probes={"fixed_point_probe": [row]})
    assert c.status == "PASS" and "light tail" in c.reason
    clipped = make_spec(**{"rho.clip_enabled": True, "rho.clip": 5.0, "health.khat_warn": 0.5, "health.khat_fail": 0.75})
    c = _tail(clipped, fp_khat=3.0)
    assert c.status == "PASS" and "the clipped weights are bounded by 5" in c.reason
    # the pi/mu k_hat of the distribution probe never stands in
    c = _rho(spec, probes={"distribution_probe": [{"iter": 5.0, "rho_khat": 5.0, "batch_size": 4096.0}]})
    assert c.status == "PASS"


def test_nonfinite_ratios_make_rho_at_least_warn():
    spec = make_spec()
    probes = {
        "distribution_probe": [{"iter": 0.0, "rho_nonfinite": 0.0}, {"iter": 5.0, "rho_nonfinite": 2.0}],
        "stability_probe": [stab_row(iter=0.0, rho_nonfinite=0.0), stab_row(iter=3.0, rho_nonfinite=5.0)],
    }
    c = _rho(spec, probes=probes)
    assert (c.status, c.kind) == ("WARN", "rho_nonfinite")
    assert c.reason == "7 non-finite importance ratio(s) left out of the rho statistics (first in stability_probe at iteration 3)"
    # a FAIL elsewhere in rho_sane outranks it
    assert _rho(spec, probes=probes, exact=[exact_row(exact_e_rho_bar2=11.0)]).kind == "rho_second_moment"


# --------------------------------------------------------------------------------------- stable: exact


def _stable(spec=None, ex=None, probe=None, **kw) -> Check:
    probes = {"stability_probe": [probe]} if probe is not None else None
    return health.check_stable(spec or make_spec(), make_result(exact=[ex] if ex is not None else None, probes=probes, **kw))


def test_stable_exact_pass():
    c = _stable(ex=exact_row())
    assert (c.status, c.kind) == ("PASS", "ok") and "exact radius 0.5 < 1" in c.reason


def test_stable_exact_radius_boundary_is_strict():
    # exactly 1 + tol is "on the boundary to rounding": WARN, not FAIL (a >= here is the reintroduced bug)
    c = _stable(ex=exact_row(exact_radius=1.0 + TOL))
    assert (c.status, c.kind) == ("WARN", "boundary"), c
    c = _stable(ex=exact_row(exact_radius=1.0 + 2 * TOL))
    assert (c.status, c.kind) == ("FAIL", "step_too_large") and "alpha_w* = 0.2" in c.reason
    for r in (1.0 - TOL, 1.0):
        assert _stable(ex=exact_row(exact_radius=r)).kind == "boundary"
    assert _stable(ex=exact_row(exact_radius=1.0 - 2 * TOL)).status == "PASS"


def test_stable_exact_min_re_boundary_is_strict():
    c = _stable(ex=exact_row(exact_min_re_eig=-TOL))
    assert (c.status, c.kind) == ("WARN", "boundary"), c
    c = _stable(ex=exact_row(exact_min_re_eig=-2 * TOL))
    assert (c.status, c.kind) == ("FAIL", "td_diverges_any_step")
    for a in (0.0, TOL):
        assert _stable(ex=exact_row(exact_min_re_eig=a)).kind == "boundary"
    assert _stable(ex=exact_row(exact_min_re_eig=2 * TOL)).status == "PASS"
    # a negative min Re eig is reported before (and whatever) the radius says
    assert _stable(ex=exact_row(exact_min_re_eig=-1.0, exact_radius=3.0)).kind == "td_diverges_any_step"


def test_stable_exact_ignores_the_sampled_estimate():
    # the probe's interval entirely past the boundary does not overrule the exact value, both ways
    bad = stab_row(radius=1.5, radius_se=0.01, a=-1.0, a_se=0.01)
    assert _stable(ex=exact_row(), probe=bad).status == "PASS"
    good = stab_row(radius=0.5, radius_se=0.01, a=0.3, a_se=0.01)
    assert _stable(ex=exact_row(exact_radius=1.5), probe=good).status == "FAIL"


def test_stable_exact_shows_the_estimate_of_the_same_iteration_only():
    probe = stab_row(radius=0.625, radius_se=0.03125, a=0.25, a_se=0.0625)
    c = _stable(ex=exact_row(), probe=probe)
    assert "estimate from the probe: radius 0.625 (SE 0.03125" in c.reason
    c = _stable(ex=exact_row(iter=10.0), probe=probe)  # the probe row is from iteration 5
    assert "estimate from the probe" not in c.reason


def test_stable_frozen_critic():
    spec = make_spec(**{"critic.alpha_w": 0.0})
    c = _stable(spec, ex=exact_row(exact_min_re_eig=-2 * TOL, exact_radius=1.0))
    assert (c.status, c.kind) == ("WARN", "frozen_unstable")
    for a in (-TOL, 0.0, 0.5):
        c = _stable(spec, ex=exact_row(exact_min_re_eig=a, exact_radius=1.0))
        assert (c.status, c.kind) == ("PASS", "ok") and "critic frozen" in c.reason


# ------------------------------------------------------------------------------------ stable: estimate


NO_EXACT = exact_row(exact_available=0.0, exact_radius=math.nan, exact_min_re_eig=math.nan)


def test_stable_estimate_straddling_never_fails():
    # the point estimates are past the boundary, the intervals straddle it: undetermined, WARN
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=1.05, radius_se=0.05, a=0.25, a_se=0.01))
    assert (c.status, c.kind) == ("WARN", "undetermined"), c
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=0.5, radius_se=0.01, a=-0.05, a_se=0.05))
    assert (c.status, c.kind) == ("WARN", "undetermined"), c
    # an interval whose estimate is inside but whose upper end crosses: WARN too
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=0.98, radius_se=0.05, a=0.25, a_se=0.01))
    assert (c.status, c.kind) == ("WARN", "undetermined")


def test_stable_estimate_fails_when_a_whole_interval_is_past():
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=1.2, radius_se=0.05, a=0.25, a_se=0.01))
    assert (c.status, c.kind) == ("FAIL", "step_too_large_estimate")
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=1.2, radius_se=0.05, a=-0.2, a_se=0.05))
    assert (c.status, c.kind) == ("FAIL", "td_diverges_estimate")  # min Re eig is judged first


def test_stable_estimate_interval_ends_exactly_at_the_boundary():
    # lo = 1 exactly: not past (FAIL needs lo > 1), but hi > 1: WARN
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=1.1, lo=1.0, hi=1.2))
    assert (c.status, c.kind) == ("WARN", "undetermined")
    # hi = 1 exactly: not past; PASS when the other interval is clear
    assert _stable(ex=NO_EXACT, probe=stab_row(radius=0.9, lo=0.8, hi=1.0)).status == "PASS"
    # a_hi = 0 exactly: not past (FAIL needs hi < 0), a_lo < 0: WARN
    c = _stable(ex=NO_EXACT, probe=stab_row(a=-0.1, a_lo=-0.2, a_hi=0.0))
    assert (c.status, c.kind) == ("WARN", "undetermined")
    # a_lo = 0 exactly: not straddling
    assert _stable(ex=NO_EXACT, probe=stab_row(a=0.1, a_lo=0.0, a_hi=0.2)).status == "PASS"


def test_stable_estimate_with_zero_se_is_judged_at_its_value():
    # one sub-batch gives SE 0: the interval is the point, so a point past the boundary FAILs
    assert _stable(ex=NO_EXACT, probe=stab_row(radius=1.0 + 2**-40)).kind == "step_too_large_estimate"
    assert _stable(ex=NO_EXACT, probe=stab_row(a=-(2**-40))).kind == "td_diverges_estimate"
    assert _stable(ex=NO_EXACT, probe=stab_row(radius=1.0, a=0.0)).status == "PASS"


def test_stable_estimate_not_finite_or_missing():
    c = _stable(ex=NO_EXACT, probe=stab_row(radius=math.nan))
    assert (c.status, c.kind) == ("FAIL", "nonfinite")
    c = _stable(ex=NO_EXACT, probe=stab_row(a=math.inf))
    assert (c.status, c.kind) == ("FAIL", "nonfinite")
    c = _stable(ex=NO_EXACT)
    assert (c.status, c.kind) == ("WARN", "no_probe") and "the state moments are not finite" in c.reason


def test_stable_estimate_says_why_there_is_no_exact_value():
    probe = stab_row(radius=0.5, radius_se=0.01)
    assert "no probe iteration completed" in _stable(probe=probe).reason
    clip = make_spec(**{"rho.clip_enabled": True})
    no_ratio = exact_row(exact_available=0.0, exact_ratio_available=0.0)
    assert "clipping with unequal policy means has no closed form" in _stable(clip, ex=no_ratio, probe=probe).reason
    assert "the state moments are not finite" in _stable(ex=no_ratio, probe=probe).reason  # no clipping
    c = _stable(ex=NO_EXACT, probe=probe)
    assert "95% intervals over 16 sub-batches" in c.reason
    assert "99% intervals" in _stable(make_spec(**{"health.level": 0.99}), ex=NO_EXACT, probe=probe).reason


@pytest.mark.parametrize("alg, upd, mat", [("tdc", "TDC", "G"), ("gtd2", "GTD2", "G")])
def test_stable_estimate_of_a_gradient_td_critic_warns_and_says_why(alg, upd, mat):
    """MODEL.md 4.4: the gradient-TD critics' estimate can be biased beyond its interval, so an estimate
    wholly past the boundary is a WARN that says so; for TD(0) it is a FAIL without that note."""
    spec = make_spec(**{"critic.algorithm": alg})
    note = f" (an estimate for {upd}, which can be biased beyond its interval: not a FAIL)"
    for probe, kind, head in (
        (stab_row(a=-0.2, a_se=0.05), "td_diverges_estimate", f"expected {upd} update diverges at iteration 5: "),
        (stab_row(radius=1.2, radius_se=0.05), "step_too_large_estimate", "critic step expands at iteration 5: "),
    ):
        c = _stable(spec, ex=NO_EXACT, probe=probe)
        assert (c.status, c.kind) == ("WARN", kind), c
        assert c.reason.startswith(head) and c.reason.endswith(note), c.reason
        assert f"min Re eig({mat}_hat)" in c.reason
        td0 = _stable(ex=NO_EXACT, probe=probe)
        assert (td0.status, td0.kind) == ("FAIL", kind) and "biased" not in td0.reason


# -------------------------------------------------------------------------------------- other checks


def test_fixed_point_check():
    spec = make_spec()
    fp = lambda *rows: health.check_fixed_point(spec, make_result(probes={"fixed_point_probe": list(rows)}))  # noqa: E731
    assert (health.check_fixed_point(spec, make_result()).reason) == "no fixed-point probe ran"
    c = fp(fp_row(iter=0.0), fp_row(iter=5.0))
    assert (c.status, c.reason) == ("PASS", "solver converged at all 2 probes")
    c = fp(fp_row(iter=0.0, converged=0.0), fp_row(iter=3.0, converged=0.0), fp_row(iter=5.0))
    assert (c.status, c.kind, c.reason) == ("WARN", "not_converged_earlier", "solver did not converge at iterations [0, 3]")
    c = fp(fp_row(iter=0.0), fp_row(iter=5.0, converged=0.0, residual=0.5))
    assert (c.name, c.status, c.kind) == ("fixed_point", "FAIL", "not_converged") and "residual 0.5" in c.reason
    c = fp(fp_row(iter=5.0, converged=0.0, iterations=0.0, residual=math.nan))
    assert (c.name, c.status, c.kind) == ("fixed_point", "FAIL", "nonfinite")
    # zero iterations with a finite residual, or a non-finite residual after iterations: not converged
    assert fp(fp_row(converged=0.0, iterations=0.0, residual=1.0)).kind == "not_converged"
    assert fp(fp_row(converged=0.0, iterations=3.0, residual=math.inf)).kind == "not_converged"


def test_td_consistency_check():
    spec = make_spec(**{"health.td_rel_tol": 0.125})
    q = lambda *rows: health.check_td(spec, make_result(probes={"q_kernel_probe": list(rows)}))  # noqa: E731
    row = lambda it, rel, loss=1.0: {"iter": float(it), "td_loss": loss, "td_loss_from_Q_rel_diff": rel}  # noqa: E731
    assert health.check_td(spec, make_result()).reason == "no q-kernel probe ran"
    assert q(row(0, 0.125), row(5, 0.0)).status == "PASS"  # at the tolerance
    c = q(row(0, 0.5), row(3, 0.25), row(5, 0.0))
    assert (c.status, c.kind) == ("FAIL", "kernel_mismatch") and "0.5 (relative) at iteration 0" in c.reason
    c = q(row(0, 0.0), row(5, math.nan))  # a NaN difference is a failure, not a pass
    assert c.status == "FAIL" and "iteration 5" in c.reason
    # a row whose td_loss is not finite is skipped; all skipped is a PASS that says so
    assert q(row(0, 0.0), row(5, 9.0, loss=math.inf)).status == "PASS"
    c = q(row(0, 9.0, loss=math.nan), row(5, 9.0, loss=math.inf))
    assert c.status == "PASS" and "not finite at all 2" in c.reason


def test_teacher_check():
    spec = make_spec()
    t = lambda bad: health.check_teacher(spec, make_result(completed=6, teacher_undefined=bad))  # noqa: E731
    assert t([]).status == "PASS"
    c = t([1, 2])
    assert (c.status, c.kind, c.reason) == ("WARN", "undefined_earlier", "teacher undefined at 2 iteration(s), first 1")
    c = t([2, 5])
    assert (c.status, c.kind) == ("FAIL", "undefined") and "iteration 5" in c.reason


# ------------------------------------------------------------------------------------- status line


def test_status_is_the_worst_and_the_line_names_the_first_check_of_that_level():
    spec = make_spec(**{"health.khat_warn": 0.5, "health.khat_fail": 0.75})
    # finite FAIL and teacher FAIL: finite comes first in the order finite, rho_sane, stable, ...
    r = make_result(series={"w_norm": [1, 1, 1, 1, 1, 9]}, teacher_undefined=[5])
    v = evaluate(spec, r)
    assert [c.name for c in v.checks] == ["finite", "rho_sane", "stable", "fixed_point", "td_consistency", "teacher"]
    assert v.status == "FAIL" and v.status_line.startswith("status: FAIL (finite: w_norm exceeded")
    # rho WARN (earlier) and teacher FAIL (later): the FAIL is named
    probes = {"fixed_point_probe": [fp_row(rho_khat=0.6)]}
    v = evaluate(spec, make_result(probes=probes, teacher_undefined=[5]))
    assert v.status == "FAIL" and v.status_line.startswith("status: FAIL (teacher: teacher undefined at iteration 5")
    # two WARNs: the first in the order
    v = evaluate(spec, make_result(probes=probes, teacher_undefined=[2], exact=[NO_EXACT]))
    assert v.status == "WARN" and v.status_line.startswith("status: WARN (rho_sane: PSIS k_hat = 0.6")
    assert v.by_name()["stable"].status == "WARN" and v.by_name()["teacher"].status == "WARN"
    # all PASS
    v = evaluate(spec, make_result(exact=[exact_row()]))
    assert (v.status, v.status_line) == ("PASS", "status: PASS")
    d = v.to_dict()
    assert d["status_line"] == "status: PASS" and [c["name"] for c in d["checks"]][0] == "finite"
    assert all(set(c) == {"name", "status", "reason", "kind"} for c in d["checks"])


def test_interrupted_overrides_the_status():
    v = evaluate(make_spec(), make_result(series={"w_norm": [1, 1, 1, 1, 1, 9]}, interrupted=True))
    assert v.status == "INTERRUPTED" and v.by_name()["finite"].status == "FAIL"
    assert v.status_line == "status: INTERRUPTED (run stopped by a signal; completed iterations are reported)"


def test_status_line_of_a_hand_built_verdict():
    checks = [Check("a", "WARN", "first warn", "x"), Check("b", "FAIL", "the fail", "y"), Check("c", "FAIL", "second fail", "z")]
    assert Verdict("FAIL", checks).status_line == "status: FAIL (b: the fail)"
    assert Verdict("WARN", checks).status_line == "status: WARN (a: first warn)"
    assert Verdict("WARN", []).status_line == "status: WARN"


def test_worst_of_returns_the_first_finding_of_the_worst_level():
    clean = Check("x", "PASS", "clean")
    w1, f1, f2 = Check("x", "WARN", "w1"), Check("x", "FAIL", "f1"), Check("x", "FAIL", "f2")
    assert health.worst_of("x", [], clean) is clean
    assert health.worst_of("x", [w1, f1, f2], clean) is f1
    assert health.worst_of("x", [w1, Check("x", "WARN", "w2")], clean) is w1
    assert NormalDist().inv_cdf(0.975) == pytest.approx(Z95, rel=1e-12)


def test_stable_exact_pass_says_when_the_run_is_too_short_to_converge():
    """r^T > 0.5 (the slowest mode keeps over half its size over the run's T iterations) adds "slow";
    the boundary is strict and the status stays PASS. The default spec has T = 40 iterations:
    0.5^(1/40) = 0.98282..., so r = 0.983 keeps 0.5037 and r = 0.98 keeps 0.4457."""
    spec = make_spec()
    assert spec.run.outer_iters == 40
    slow = _stable(spec, ex=exact_row(exact_radius=0.983))
    assert slow.status == "PASS" and "slow: over the run's 40 iterations" in slow.reason
    assert "slowest mode only to r^40 = 0.5037" in slow.reason and "1/(1 - r) = 58.82 iterations" in slow.reason
    fast = _stable(spec, ex=exact_row(exact_radius=0.98))
    assert fast.status == "PASS" and "slow" not in fast.reason
    long_run = make_spec(**{"run.outer_iters": 400})
    assert "slow" not in _stable(long_run, ex=exact_row(exact_radius=0.983)).reason  # 0.983^400 = 1e-3
