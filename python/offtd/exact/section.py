"""Closed-form predictions next to what the run measured (the report's Theory section)."""

from __future__ import annotations

import math

import numpy as np

from ..loop import LoopResult
from ..model import e_mu_rho2, kl_gaussian, problem_from_spec, rho_inf, rho_quantile, rho_sup, teacher, tv_equal_means
from ..spec import Spec


def _last(result: LoopResult, probe: str, metric: str) -> float | None:
    rows = result.probe_series.get(probe) or []
    return rows[-1].get(metric) if rows else None


def theory(spec: Spec, result: LoopResult) -> dict[str, dict]:
    """{quantity: {predicted, measured, note}}. Equal-means forms use the policies' noise levels only;
    a moving actor adds ||mean difference||^2 / (2 sigma_mu^2) to the KL, which the measured KL includes."""
    p = spec.policy
    m = spec.env.action_dim
    sp, sm, pm = p.sigma_pi, p.sigma_mu, p.p_mix
    out: dict[str, dict] = {}

    def row(name: str, predicted: float | None, measured: float | None, note: str) -> None:
        out[name] = {"predicted": predicted, "measured": measured, "note": note}

    dist, fp = "distribution_probe", "fixed_point_probe"
    row("dist_action_kl", kl_gaussian(m, sp, sm), _last(result, dist, "dist_action_kl"),
        "closed-form KL(pi||mu) at equal means; measured averages the exact KL over probe states")
    row("dist_action_tv", tv_equal_means(m, sp, sm), _last(result, dist, "dist_action_tv"),
        "exact TV via the chi^2_m CDF at the density crossing; measured is Monte Carlo E_mu[(1-rho)+]")
    row("rho_min (pi/mu)", rho_inf(m, sp, sm, 0.0), _last(result, dist, "rho_min"),
        "inf_a pi/mu = (sigma_mu/sigma_pi)^m when sigma_mu < sigma_pi")
    row("rho_max (pi/mu)", rho_sup(m, sp, sm, 0.0), _last(result, dist, "rho_max"),
        "sup_a pi/mu: (sigma_mu/sigma_pi)^m when sigma_mu > sigma_pi, unbounded otherwise")
    row("rho_min (pi/b)", rho_inf(m, sp, sm, pm), _last(result, fp, "rho_min"),
        "inf_a pi/b = 1/((1-p)(sigma_pi/sigma_mu)^m + p) with the defensive mixture")
    row("rho_max (pi/b)", rho_sup(m, sp, sm, pm), _last(result, fp, "rho_max"), "sup_a pi/b <= 1/p_mix")
    e2 = e_mu_rho2(m, sp, sm)
    row("E_mu[rho^2]", e2, _last(result, dist, "rho2_mean"),
        "infinite: sigma_pi^2 >= 2 sigma_mu^2" if math.isinf(e2) else "finite: sigma_pi^2 < 2 sigma_mu^2")
    if sm < sp:
        row("rho_khat (pi/mu)", 1.0 - sm**2 / sp**2, _last(result, dist, "rho_khat"),
            "asymptotic tail index of pi/mu under mu, k = 1 - sigma_mu^2/sigma_pi^2 (k >= 0.5 exactly when "
            "E_mu[rho^2] is infinite); PSIS k_hat at finite n differs systematically (MODEL.md 9.6)")
        row("rho_p95 (pi/mu)", rho_quantile(0.95, m, sp, sm), _last(result, dist, "rho_p95"), "chi^2_m quantile map")
        row("rho_p99 (pi/mu)", rho_quantile(0.99, m, sp, sm), _last(result, dist, "rho_p99"), "chi^2_m quantile map")
    _exact_rows(spec, result, row)
    problem = problem_from_spec(spec)
    k_pi = result.final_k_pi if np.all(np.isfinite(result.final_k_pi)) else np.array(spec.policy.k_init)
    tch = teacher(problem, k_pi)
    g = spec.critic.gamma
    row("closed_loop", math.sqrt(g) * tch.closed_loop_radius, None,
        "sqrt(gamma) * spectral radius of A + B K_pi (final); the teacher exists iff < 1")
    row("teacher V_pi(0)", -spec.env.reward_scale * tch.c0 if tch.defined else math.nan, None,
        "-c_r c0: the value of the start of the state space under the final pi")
    row("teacher ||w_teacher||", float(np.linalg.norm(tch.w)) if tch.defined else math.nan,
        _finite_last(result.series["w_norm"][: result.completed]), "measured: the critic's ||w||")
    return out


def _exact_rows(spec: Spec, result: LoopResult, row) -> None:
    """The exact expected-TD quantities of the last probe iteration next to the probes' estimates."""
    if not result.exact_series:
        return
    ex = result.exact_series[-1]
    stab, fp = "stability_probe", "fixed_point_probe"
    tag = f"exact at iteration {int(ex['iter'])}"
    if ex["exact_ratio_available"] == 1.0:
        done = result.completed
        row("E_b[rho^2] (pi/b)", ex["exact_e_rho2"], float(np.mean(result.series["mean_rho2"][:done][-spec.run.last_k:])),
            f"{tag}, equal means, radial quadrature; measured: mean_last_k(mean_rho2)")
        if spec.rho.clip_enabled:
            row("E_b[rho_bar] (clipped)", ex["exact_kappa0"], float(np.mean(result.series["mean_rho_bar"][:done][-spec.run.last_k:])),
                "the share of the importance weight the clip keeps; the critic's effective step is alpha_w times it")
    if ex["exact_available"] != 1.0:
        return
    row("radius of I - alpha_w A", ex["exact_radius"], _last(result, stab, "stability_radius"),
        f"{tag} (population); measured: eig of the probe's A_hat, whose own expectation is {fmt_g(ex['exact_radius_pool'])} for its states")
    row("min Re eig(A)", ex["exact_min_re_eig"], _last(result, stab, "a_min_real_eig"),
        f"{tag} (population); < 0: no step size is stable; given the iteration's states {fmt_g(ex['exact_min_re_eig_pool'])}")
    row("alpha_w* (critical step)", ex["exact_alpha_w_crit"], None,
        "min over eig with Re > 0 of 2 Re / |lambda|^2: the expected update contracts for 0 < alpha_w < alpha_w*")
    row("teacher_gap (fixed point vs teacher)", ex["exact_teacher_gap"], _last(result, fp, "teacher_gap"),
        "exact TD fixed point vs teacher, relative RMS over the states: 0 without clipping, the clipping bias with it")


def fmt_g(x: float) -> str:
    return f"{x:.4g}"


def _finite_last(values: np.ndarray) -> float | None:
    return float(values[-1]) if values.size else None
