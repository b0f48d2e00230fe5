"""Unit tests of the advice (specs/MODEL.md section 7, Next Steps) on hand-built verdicts: every branch,
what it says, and the numbers it computes, against oracles written in the test: the ratio moments by
scipy quadrature over the radius, the batch size K (z / margin)^2 by hand, and the remedy searches
against a stand-in for the exact theory whose answers the test chooses (so the order of the candidates
and the first one that works are known)."""

from __future__ import annotations

import dataclasses
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import integrate, stats

from offtd import advice
from offtd.health import Check, Verdict
from test_health_units import NO_EXACT, Z95, exact_row, fp_row, make_result, make_spec, stab_row

CHECK_NAMES = ("finite", "rho_sane", "stable", "fixed_point", "td_consistency", "teacher")


def verdict(**findings: tuple) -> Verdict:
    """All checks PASS except the given ones, each (status, kind[, reason])."""
    checks = []
    for name in CHECK_NAMES:
        if name in findings:
            status, kind, *reason = findings[name]
            checks.append(Check(name, status, reason[0] if reason else f"{name} {kind}", kind))
        else:
            checks.append(Check(name, "PASS", f"{name} fine"))
    worst = max((c.status for c in checks), key={"PASS": 0, "WARN": 1, "FAIL": 2}.__getitem__)
    return Verdict(worst, checks)


def steps_of(spec, result=None, v=None, backend=None) -> list[str]:
    return advice.advise(spec, result or make_result(), v or verdict(), backend)


def numbers_after(text: str, prefix: str) -> float:
    m = re.search(re.escape(prefix) + r"\s*([-+0-9.e]+)", text)
    assert m, (prefix, text)
    return float(m.group(1).rstrip("."))


# ------------------------------------------------------------------------ an oracle for ratio moments


def e_b_min_rho_c(m: int, sp: float, sm: float, p: float, c: float, power: int, radial_power: int = 0) -> float:
    """E_b[min(pi/b, c)^power |x|^radial_power] for pi = N(0, sp^2 I_m), mu = N(0, sm^2 I_m),
    b = p pi + (1 - p) mu, by scipy quadrature over the radius (the densities depend on |x| only)."""

    def log_density(r, s):
        return -0.5 * m * math.log(2 * math.pi * s * s) - r * r / (2 * s * s)

    def radial(r, s):  # density of |x| for x ~ N(0, s^2 I_m)
        return stats.chi.pdf(r / s, m) / s

    def integrand(r):
        lp, lm = log_density(r, sp), log_density(r, sm)
        rho = 1.0 / (p + (1 - p) * math.exp(lm - lp))
        return (p * radial(r, sp) + (1 - p) * radial(r, sm)) * min(rho, c) ** power * r**radial_power

    top = 12 * max(sp, sm) + 12
    breaks = sorted({x * min(sp, sm) for x in (0.5, 1, 2, 4, 8)} | {x * max(sp, sm) for x in (0.5, 1, 2, 4, 8)})
    val, err = integrate.quad(integrand, 0, top, points=breaks, limit=400, epsabs=0, epsrel=1e-11)
    return val


def test_the_quadrature_oracle_knows_the_closed_forms():
    # E_b[rho] = 1 without clipping, and E_mu[rho^2] = (sm^2 / (sp sqrt(2 sm^2 - sp^2)))^m (MODEL.md 2)
    assert e_b_min_rho_c(2, 0.4, 0.5, 0.1, math.inf, 1) == pytest.approx(1.0, rel=1e-9)
    closed = (0.25 / (0.4 * math.sqrt(2 * 0.25 - 0.16))) ** 2
    assert e_b_min_rho_c(2, 0.4, 0.5, 0.0, math.inf, 2) == pytest.approx(closed, rel=1e-9)


# ------------------------------------------------------------------------------ rho_sane: moment


HEAVY = {"policy.sigma_pi": 1.0, "policy.sigma_mu": 0.5, "policy.p_mix": 0.01, "policy.beta": 0.1}


def test_second_moment_remedies_hit_rho2_max_exactly():
    spec = make_spec(**HEAVY)  # m = 2, rho2_max = 10; E_mu[rho^2] is infinite (sp^2 = 1 >= 2 sm^2 = 0.5)
    res = make_result(exact=[exact_row(exact_e_rho_bar2=40.0)])
    steps = steps_of(spec, res, verdict(rho_sane=("FAIL", "rho_second_moment")))
    assert steps[0] == "the importance weights' second moment is over health.rho2_max ->"
    e2 = lambda p, c: e_b_min_rho_c(2, 1.0, 0.5, p, c, 2)  # noqa: E731
    # raise p_mix to p*: E_b[rho^2] is decreasing in p and equals 10 at p*; the advice prints p* to 4
    # digits (relative rounding <= 5e-4), so E at p* (1 -+ 1e-3) brackets 10
    p_step = next(s for s in steps if s.startswith("raise policy.p_mix to"))
    p_star = numbers_after(p_step, "raise policy.p_mix to")
    assert e2(p_star * (1 - 1e-3), math.inf) > 10.0 > e2(p_star * (1 + 1e-3), math.inf), p_star
    assert "E_b[rho^2] = 10 there (exact, equal means)" in p_step
    # or clip at c*: E_b[min(rho, c*)^2] = 10, increasing in c
    c_step = next(s for s in steps if s.startswith("or enable rho.clip with rho.clip ="))
    c_star = numbers_after(c_step, "rho.clip =")
    assert e2(0.01, c_star * (1 - 1e-3)) < 10.0 < e2(0.01, c_star * (1 + 1e-3)), c_star
    assert numbers_after(c_step, "E_b[rho_bar^2] =") == pytest.approx(10.0, rel=1e-3)
    removed = 1.0 - e_b_min_rho_c(2, 1.0, 0.5, 0.01, c_star, 1)  # 1 - E_b[rho_bar]; 4 printed digits
    assert numbers_after(c_step, "clipping removes") == pytest.approx(removed, rel=2e-3)
    # theory: E_mu[rho^2] infinite, and the mixture's bound 1/p_mix
    assert any("E_mu[(pi/mu)^2] is infinite because sigma_pi^2 = 1 >= 2 sigma_mu^2 = 0.5" in s for s in steps)
    assert "theory: the defensive mixture bounds rho by 1/p_mix = 100." in steps


def test_second_moment_with_clipping_on_never_recommends_it():
    # clip 50: E_b[rho_bar^2] = 9.2 at p_mix = 0.01 (quadrature), over rho2_max = 5
    spec = make_spec(**HEAVY, **{"rho.clip_enabled": True, "rho.clip": 50.0, "health.rho2_max": 5.0})
    res = make_result(exact=[exact_row(exact_e_rho_bar2=9.2, exact_kappa0=1.0)])
    steps = steps_of(spec, res, verdict(rho_sane=("FAIL", "rho_second_moment")))
    assert not any("enable rho.clip" in s for s in steps), steps
    assert "rho.clip = 50 is already on; lower it further only at the price of more bias." in steps
    p_step = next(s for s in steps if s.startswith("raise policy.p_mix to"))
    p_star = numbers_after(p_step, "raise policy.p_mix to")
    e2 = lambda p: e_b_min_rho_c(2, 1.0, 0.5, p, 50.0, 2)  # noqa: E731
    assert e2(p_star * (1 - 1e-3)) > 5.0 > e2(p_star * (1 + 1e-3)), p_star
    assert "E_b[rho_bar^2] = 5 there" in p_step


def test_no_p_mix_remedy_when_no_p_mix_reaches_the_cap_or_it_is_already_under():
    # rho2_max = 0.5 < 1 <= E_b[rho^2] at every p_mix (Jensen): no p_mix step, only a clip
    spec = make_spec(**HEAVY, **{"health.rho2_max": 0.5})
    steps = steps_of(spec, make_result(exact=[exact_row()]), verdict(rho_sane=("FAIL", "rho_second_moment")))
    assert not any(s.startswith("raise policy.p_mix") for s in steps)
    c_star = numbers_after(next(s for s in steps if "rho.clip =" in s), "rho.clip =")
    e2 = lambda c: e_b_min_rho_c(2, 1.0, 0.5, 0.01, c, 2)  # noqa: E731
    assert e2(c_star * (1 - 1e-3)) < 0.5 < e2(c_star * (1 + 1e-3))
    # the default policies are far under rho2_max = 10 (an estimate said otherwise): no p_mix step either
    steps = steps_of(make_spec(), make_result(exact=[exact_row()]), verdict(rho_sane=("WARN", "rho_second_moment_undetermined")))
    assert not any(s.startswith("raise policy.p_mix") for s in steps)


def test_second_moment_without_exact_ratios_gives_general_advice():
    spec = make_spec()
    for exact in (None, [exact_row(exact_ratio_available=0.0)]):
        steps = steps_of(spec, make_result(exact=exact), verdict(rho_sane=("FAIL", "rho_second_moment")))
        assert steps[0].endswith("bring sigma_pi closer to sigma_mu, or enable rho.clip.")
    clip = make_spec(**{"rho.clip_enabled": True})
    steps = steps_of(clip, make_result(), verdict(rho_sane=("FAIL", "rho_second_moment")))
    assert steps[0].endswith("bring sigma_pi closer to sigma_mu.")
    assert not any("more iterations" in s for s in steps)
    steps = steps_of(clip, make_result(), verdict(rho_sane=("WARN", "rho_second_moment_undetermined")))
    assert "the estimate is within its noise of the threshold" in steps[1]


def test_other_rho_kinds():
    spec = make_spec(**{"policy.p_mix": 0.0})
    tail = steps_of(spec, v=verdict(rho_sane=("WARN", "rho_tail")))
    assert tail[0] == "importance weights are heavy-tailed (PSIS k_hat) -> enable rho.clip, raise p_mix, or bring sigma_pi closer to sigma_mu."
    clip = make_spec(**{"rho.clip_enabled": True, "rho.clip": 2.5})
    assert steps_of(clip, v=verdict(rho_sane=("WARN", "rho_tail")))[0].startswith("importance weights are heavy-tailed (PSIS k_hat) -> raise p_mix")
    assert steps_of(clip, v=verdict(rho_sane=("FAIL", "clip_mass")))[0].startswith("clipping at 2.5 removes most of the importance weight")
    assert steps_of(clip, v=verdict(rho_sane=("WARN", "clip_bias")))[0].startswith("the clipped TD fixed point is biased")
    nonfinite = steps_of(spec, v=verdict(rho_sane=("WARN", "rho_nonfinite")))
    assert nonfinite[0].startswith("some importance ratios were not finite")
    # theory lines only when rho_sane is not PASS: none for p_mix = 0 and these policies (finite E_mu)
    assert not any(s.startswith("theory:") for s in tail)
    assert not any(s.startswith("theory:") for s in steps_of(make_spec(), v=verdict(stable=("FAIL", "step_too_large_estimate"))))


def test_the_infinite_moment_line_states_the_variances():
    spec = make_spec(**{"policy.sigma_pi": 1.5, "policy.sigma_mu": 0.5, "policy.p_mix": 0.0})
    line = next(s for s in steps_of(spec, v=verdict(rho_sane=("WARN", "rho_tail"))) if s.startswith("theory: E_mu"))
    assert "sigma_pi^2 = 2.25 >= 2 sigma_mu^2 = 0.5;" in line


def test_theory_lines_follow_rho_status_not_kind():
    spec = make_spec(**HEAVY)
    lines = lambda v: [s for s in steps_of(spec, v=v) if s.startswith("theory:")]  # noqa: E731
    assert len(lines(verdict(rho_sane=("WARN", "rho_tail")))) == 2
    assert lines(verdict()) == []  # rho PASS: no theory, whatever the policies


# ----------------------------------------------------------------------------------------- finite


def test_finite_fail_lists_the_remedies_that_apply():
    fail = ("FAIL", "over_bound", "w_norm exceeded 4 x the teacher's scale at iteration 2: diverging")
    spec = make_spec(**{"critic.alpha_w": 0.05, "actor.alpha_pi": 0.01})
    s = steps_of(spec, make_result(exact=[exact_row(exact_alpha_w_crit=0.2)]), verdict(finite=fail))
    assert s[0] == (
        "w_norm exceeded 4 x the teacher's scale at iteration 2: diverging -> lower critic.alpha_w (now 0.05) "
        "(below the exact alpha_w* = 0.2), or lower actor.alpha_pi (now 0.01), or enable rho.clip."
    )
    for crit in (math.nan, 0.0, -1.0):  # no positive critical step: nothing to be below
        s = steps_of(spec, make_result(exact=[exact_row(exact_alpha_w_crit=crit)]), verdict(finite=fail))
        assert "lower critic.alpha_w (now 0.05), or" in s[0]
    s = steps_of(spec, make_result(), verdict(finite=fail))
    assert "lower critic.alpha_w (now 0.05), or" in s[0]
    frozen = make_spec(**{"critic.alpha_w": 0.0, "actor.alpha_pi": 0.0, "rho.clip_enabled": True})
    assert steps_of(frozen, make_result(), verdict(finite=fail))[0].endswith("-> reduce the off-policy mismatch.")
    s = steps_of(spec, make_result(), verdict(finite=fail, stable=("FAIL", "td_diverges_any_step")))
    assert s[0].endswith("-> expected: no step size is stable here (see the stable check and its remedies).")


# ----------------------------------------------------------------------------------------- stable


class FakeExact:
    """Stands in for advice._Exact.td: min Re eig positive where `ok(p_mix, gamma)`, radius 0.75."""

    def __init__(self, ok):
        self.ok, self.calls = ok, []

    def install(self, monkeypatch) -> FakeExact:
        monkeypatch.setattr(advice._Exact, "td", lambda _ex, alpha_w=None, **changes: self(alpha_w, **changes))
        return self

    def __call__(self, alpha_w=None, **changes):
        self.calls.append(changes or {"alpha_w": alpha_w})
        p, g = changes.get("p_mix", -1.0), changes.get("gamma", -1.0)
        good = self.ok(p, g)
        return SimpleNamespace(pop=SimpleNamespace(min_re=0.125 if good else -0.125, alpha_crit=0.5, radius=0.75))


def test_step_too_large_names_the_critical_step_and_the_radius_at_half(monkeypatch):
    fake = FakeExact(lambda p, g: True).install(monkeypatch)
    spec = make_spec(**{"critic.alpha_w": 0.5})
    s = steps_of(spec, make_result(exact=[exact_row(exact_alpha_w_crit=0.25, exact_radius=1.5)]), verdict(stable=("FAIL", "step_too_large")))
    assert s == [
        "the expected TD update expands because alpha_w = 0.5 exceeds the critical step size alpha_w* = 0.25 (exact) -> "
        "lower critic.alpha_w below 0.25 (exact radius at alpha_w = 0.125: 0.75)."
    ]
    assert fake.calls == [{"alpha_w": 0.125}]
    # no exact row: no remedy
    assert not any("critical step" in x for x in steps_of(spec, make_result(), verdict(stable=("FAIL", "step_too_large"))))


def test_step_too_large_without_a_backend_names_no_radius():
    spec = make_spec(**{"critic.alpha_w": 0.5})
    s = steps_of(spec, make_result(exact=[exact_row(exact_alpha_w_crit=0.25)]), verdict(stable=("FAIL", "step_too_large")))
    assert s[0].endswith("lower critic.alpha_w below 0.25.")


@pytest.mark.parametrize(
    "p_mix, gamma, ok, p_named, g_named",
    [
        # candidates p: sorted {min(0.9, x) : x in (2p, 4p, 0.1, 0.3, 0.5), x > p}; gamma: g - 0.05, - 0.1, - 0.2, x 0.5
        (0.1, 0.9, lambda p, g: p >= 0.3 or 0 < g <= 0.75, "0.3", "0.7"),  # p: 0.2, 0.3, 0.4, 0.5
        (0.01, 0.9, lambda p, g: p >= 0.04 or 0 < g <= 0.85, "0.04", "0.85"),  # p: 0.02, 0.04, 0.1, ...
        (0.5, 0.9, lambda p, g: p >= 0.9 or 0 < g <= 0.45, "0.9", "0.45"),  # p: 0.9 (2p, 4p capped) only
        (0.0, 0.1, lambda p, g: p >= 0.1 or 0 < g <= 0.05, "0.1", "0.05"),  # p = 0: 0.1, 0.3, 0.5; gamma 0.05 (twice), no g <= 0
    ],
)
def test_deadly_triad_remedies_are_the_first_candidates_that_work(monkeypatch, p_mix, gamma, ok, p_named, g_named):
    fake = FakeExact(ok).install(monkeypatch)
    spec = make_spec(**{"policy.p_mix": p_mix, "critic.gamma": gamma})
    res = make_result(exact=[exact_row(exact_min_re_eig=-0.25)])
    s = steps_of(spec, res, verdict(stable=("FAIL", "td_diverges_any_step")))
    assert s[-1] == (
        "exact min Re eig = -0.25 < 0: no step size makes td0 stable here (the deadly triad) -> checked remedies: "
        f"policy.p_mix = {p_named} (exact min Re eig 0.125, alpha_w* = 0.5); critic.gamma = {g_named} (exact min Re eig 0.125, alpha_w* = 0.5)."
    )
    tried_p = [c["p_mix"] for c in fake.calls if "p_mix" in c]
    assert all(p > p_mix for p in tried_p) and tried_p == sorted(tried_p) and max(tried_p) <= 0.9
    assert all(c["gamma"] > 0 for c in fake.calls if "gamma" in c)


def test_deadly_triad_with_no_remedy(monkeypatch):
    FakeExact(lambda p, g: False).install(monkeypatch)
    s = steps_of(make_spec(), make_result(exact=[exact_row(exact_min_re_eig=-0.25)]), verdict(stable=("FAIL", "td_diverges_any_step")))
    assert s[-1].endswith("-> raising p_mix up to 0.5 or lowering gamma by up to half does not fix it (exact); reduce the policies' mismatch.")
    # the search only finds p_mix, or only gamma
    FakeExact(lambda p, g: p == 0.2).install(monkeypatch)
    s = steps_of(make_spec(), make_result(exact=[exact_row(exact_min_re_eig=-0.25)]), verdict(stable=("FAIL", "td_diverges_any_step")))
    assert s[-1].endswith("checked remedies: policy.p_mix = 0.2 (exact min Re eig 0.125, alpha_w* = 0.5).")


def test_estimated_instability_and_other_stable_kinds():
    for kind in ("td_diverges_estimate", "step_too_large_estimate"):
        s = steps_of(make_spec(), v=verdict(stable=("FAIL", kind)))
        assert s == ["the estimated expected TD update expands -> lower critic.alpha_w, raise p_mix or beta, or lower gamma."]
    s = steps_of(make_spec(), v=verdict(stable=("WARN", "frozen_unstable")))
    assert s[0].startswith("the critic is frozen (alpha_w = 0)")
    s = steps_of(make_spec(), v=verdict(stable=("WARN", "boundary")))
    assert s[0].startswith("the exact expected TD map sits on the stability boundary")


def _undetermined(spec, row) -> str:
    s = steps_of(spec, make_result(exact=[NO_EXACT], probes={"stability_probe": [row]}), verdict(stable=("WARN", "undetermined")))
    return next(x for x in s if x.startswith("the stability estimate straddles the boundary"))


def test_undetermined_names_the_batch_size_that_would_decide():
    spec = make_spec(**{"probes.stability.batch_size": 4096})
    # radius 1.02 with SE 0.02: 1 SE from the boundary; min Re eig 0.25 with SE 0.01: 25 SE. The smaller
    # margin decides: K (z / 1)^2 = 4096 x 3.8415 = 15735 -> "about 1.574e+04"
    text = _undetermined(spec, stab_row(radius=1.02, radius_se=0.02, a=0.25, a_se=0.01))
    need = math.ceil(4096 * Z95**2)
    assert need == 15735 and f"from 4096 to about {need:.4g}" in text, text
    assert text.endswith("(the interval shrinks like 1/sqrt(batch_size)), or add margin (raise p_mix, lower gamma).")
    # the margin of min Re eig decides when it is the smaller: |-0.01| / 0.01 = 1 SE vs 0.5 / 0.05 = 10
    text = _undetermined(spec, stab_row(radius=0.5, radius_se=0.05, a=-0.01, a_se=0.01))
    assert f"to about {need:.4g}" in text
    # margin 2 SE: (z / 2)^2 K
    text = _undetermined(spec, stab_row(radius=1.04, radius_se=0.02, a=0.25, a_se=0.01))
    assert f"to about {math.ceil(4096 * (Z95 / 2) ** 2):.4g}" in text


def test_undetermined_with_a_zero_se_or_no_margin():
    spec = make_spec(**{"probes.stability.batch_size": 4096})
    # a zero SE gives no margin (and no division by zero); the other one decides
    text = _undetermined(spec, stab_row(radius=1.02, radius_se=0.0, a=0.02, a_se=0.01))
    assert f"to about {math.ceil(4096 * (Z95 / 2) ** 2):.4g}" in text
    # both SEs zero, or estimates exactly on the boundary (a margin of 0): "a larger value"
    assert "to a larger value" in _undetermined(spec, stab_row(radius=1.02, a=0.25))
    assert "to a larger value" in _undetermined(spec, stab_row(radius=1.0, radius_se=0.01, a=0.0, a_se=0.01))
    # no probe row: nothing to size
    s = steps_of(spec, make_result(exact=[NO_EXACT]), verdict(stable=("WARN", "undetermined")))
    assert not any("straddles" in x for x in s)


# ----------------------------------------------------------------------------- the other checks


def test_teacher_fixed_point_and_kernel_advice():
    s = steps_of(make_spec(), v=verdict(teacher=("WARN", "undefined_earlier")))
    assert s[0].startswith("theory: the closed loop sqrt(gamma) * rho(A + B K_pi) >= 1")
    assert steps_of(make_spec(), v=verdict(fixed_point=("WARN", "not_converged_earlier")))[0].startswith("the fixed-point solve did not converge")
    assert steps_of(make_spec(), v=verdict(fixed_point=("FAIL", "not_converged")))[0].startswith("the fixed-point solve did not converge")
    # a non-finite A_hat is the finite check's business, not the solver's
    assert not any("fixed-point solve" in x for x in steps_of(make_spec(), v=verdict(fixed_point=("FAIL", "nonfinite"))))
    s = steps_of(make_spec(), v=verdict(td_consistency=("FAIL", "kernel_mismatch")))
    assert s[0].startswith("the q-kernel TD loss disagrees with the feature TD loss")


def test_all_pass_states_the_margin_to_the_critical_step():
    spec = make_spec(**{"critic.alpha_w": 0.05})
    s = steps_of(spec, make_result(exact=[exact_row(exact_alpha_w_crit=0.2)]))
    assert s == [
        "all checks pass (alpha_w is 0.25 of the critical step alpha_w*, exact) -> push the regime (lower p_mix, widen "
        "sigma_pi / sigma_mu) or raise gamma to look for the boundary."
    ]
    plain = "all checks pass -> push the regime"
    assert steps_of(spec, make_result())[0].startswith(plain)
    assert steps_of(spec, make_result(exact=[NO_EXACT]))[0].startswith(plain)
    assert steps_of(make_spec(**{"critic.alpha_w": 0.0}), make_result(exact=[exact_row()]))[0].startswith(plain)


def test_interrupted_run_is_told_to_rerun_first():
    s = steps_of(make_spec(), make_result(completed=3, interrupted=True), verdict(finite=("FAIL", "over_bound", "x")))
    assert s[0] == "run was interrupted after 3 iteration(s) -> rerun to complete it."
    assert len(s) == 2  # and the finding's own advice; no "all checks pass"


def test_final_gains_are_used_unless_not_finite():
    spec = make_spec()
    res = make_result()
    res = dataclasses.replace(res, final_k_pi=np.full((2, 2), 0.125), final_k_mu=np.full((2, 2), 0.25))
    ex = advice._Exact(spec, res, None)
    assert np.all(ex.k_pi == 0.125) and np.all(ex.k_mu == 0.25)
    bad = dataclasses.replace(res, final_k_mu=np.array([[np.nan, 0.0], [0.0, 0.0]]))
    ex = advice._Exact(spec, bad, None)
    assert np.array_equal(ex.k_pi, np.array(spec.policy.k_init)) and np.array_equal(ex.k_mu, np.array(spec.policy.k_mu_init))
    assert ex.td() is None  # no backend: no exact evaluation
    assert fp_row()["converged"] == 1.0


def test_bisect_finds_the_boundary_from_above():
    # f false at lo, true at hi; 50 halvings of [0, 1]: within 2^-50 above the boundary 1/3
    x = advice._bisect(lambda v: v >= 1 / 3, 0.0, 1.0)
    assert 1 / 3 <= x <= 1 / 3 + 2**-49
    assert advice._bisect(lambda v: v >= 0.75, 0.0, 1.0, iters=2) == 0.75


# ----------------------------------------------------------------------------------- stable but slow


def _slow_run(**sets):
    """A run of the default experiment with the actor still (its gains stay at k_init, where the exact
    theory of a spec is evaluated) and alpha_w = 0.2: stable, and slow for its 40 iterations (exact radius
    0.9917 at k_init; 0.9791 at the default 0.5 is not slow: 0.9791^40 = 0.43)."""
    import offtd

    return offtd.run(None, **{"actor.alpha_pi": 0.0, "critic.alpha_w": 0.2, **sets})


def _number_after(text: str, label: str) -> float:
    m = re.search(re.escape(label) + r" ([-+0-9.e]+)", text)
    assert m, (label, text)
    return float(m.group(1))


def test_slow_offers_the_fastest_step_checked_against_the_exact_radius():
    """The offered alpha_w is checked independently: the exact theory of the spec run at it (offtd
    theory's row at the initial gains, where this actor stays) gives the radius the advice states, smaller
    than the current one, and 5% smaller or larger steps give no smaller radius (a minimum). The run
    length is the first T with r^T <= 0.05."""
    from offtd.backend import get_backend
    from offtd.exact.grid import theory_row

    res = _slow_run()
    stable = next(c for c in res.checks if c["name"] == "stable")
    assert (stable["status"], stable["kind"]) == ("PASS", "slow")
    line = next(s for s in res.report["next_steps"] if "stable but slow" in s)
    assert any(s.startswith("all checks pass") for s in res.report["next_steps"])  # all PASS: the margin line too
    alpha = _number_after(line, "critic.alpha_w =")
    stated = _number_after(line, "contracts fastest (exact radius")
    be = get_backend("rust")

    def radius(a: float) -> float:
        return theory_row(res.spec.replace(**{"critic.alpha_w": a}), be)["exact_radius"]

    now = radius(0.2)
    assert radius(alpha) == pytest.approx(stated, rel=5e-4)  # the advice prints 4 significant digits
    assert radius(alpha) < now
    assert radius(0.95 * alpha) >= radius(alpha) and radius(1.05 * alpha) >= radius(alpha)
    need = int(_number_after(line, "to about"))
    assert now**need <= 0.05 < now ** (need - 1)


def test_slow_with_heavy_ratios_only_says_run_longer():
    """rho_sane not passing: a larger step would amplify the weights' noise, so none is offered."""
    res = _slow_run(**{"policy.p_mix": 0.0, "policy.sigma_pi": 0.6, "policy.sigma_mu": 0.2})
    by = {c["name"]: c for c in res.checks}
    assert by["rho_sane"]["status"] != "PASS" and by["stable"]["kind"] == "slow", by
    line = next(s for s in res.report["next_steps"] if "stable but slow" in s)
    assert "critic.alpha_w =" not in line and "raise run.outer_iters" in line and "until rho_sane passes" in line
