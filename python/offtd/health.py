"""Health checks and next-step advice (MODEL.md section 7)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .loop import LoopResult
from .model import e_mu_rho2
from .spec import Spec
from .summary import mean_last_k

ORDER = {"PASS": 0, "WARN": 1, "FAIL": 2}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS | WARN | FAIL
    reason: str


@dataclass
class Verdict:
    status: str  # PASS | WARN | FAIL | INTERRUPTED
    checks: list[Check]
    next_steps: list[str] = field(default_factory=list)

    @property
    def status_line(self) -> str:
        """`status: FAIL (rho_sane: rho exceeds threshold)` — the first check of the worst level."""
        if self.status == "INTERRUPTED":
            return "status: INTERRUPTED (run stopped by a signal; completed iterations are reported)"
        worst = [c for c in self.checks if c.status == self.status]
        if self.status == "PASS" or not worst:
            return f"status: {self.status}"
        return f"status: {self.status} ({worst[0].name}: {worst[0].reason})"

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "status_line": self.status_line,
            "checks": [{"name": c.name, "status": c.status, "reason": c.reason} for c in self.checks],
        }


def _last_rows(result: LoopResult, probe: str) -> list[dict[str, float]]:
    return result.probe_series.get(probe, [])


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _first_over_bound(spec: Spec, result: LoopResult) -> tuple[int, str, float] | None:
    """(iteration, metric, bound) of the earliest w_norm / td_loss above its health bound (inf counts)."""
    first = None
    for metric, bound in (("w_norm", spec.health.w_norm_max), ("td_loss", spec.health.td_loss_max)):
        with np.errstate(invalid="ignore"):
            over = np.flatnonzero(result.series[metric][: result.completed] > bound)
        if over.size and (first is None or over[0] < first[0]):
            first = (int(over[0]), metric, bound)
    return first


def check_finite(spec: Spec, result: LoopResult) -> Check:
    over = _first_over_bound(spec, result)
    if result.diverged_at is not None:
        reason = f"values stopped being finite at iteration {result.diverged_at} ({result.diverged_what})"
        if over is not None and over[0] < result.diverged_at:
            reason += f"; {over[1]} exceeded {_fmt(over[2])} from iteration {over[0]}"
        return Check("finite", "FAIL", reason)
    if over is not None:
        return Check("finite", "FAIL", f"{over[1]} exceeded {_fmt(over[2])} at iteration {over[0]}: diverging")
    return Check("finite", "PASS", "all core metrics finite")


def _nonfinite_ratios(result: LoopResult) -> str | None:
    """The probes' count of non-finite importance ratios (MODEL.md 5 leaves them out of the statistics)."""
    total, first = 0, None
    for probe in ("distribution_probe", "fixed_point_probe", "stability_probe"):
        for row in _last_rows(result, probe):
            count = row.get("rho_nonfinite", 0.0)
            if count > 0:
                total += int(count)
                if first is None or row["iter"] < first[1]:
                    first = (probe, int(row["iter"]))
    if first is None:
        return None
    return f"{total} non-finite importance ratio(s) left out of the rho statistics (first in {first[0]} at iteration {first[1]})"


def check_rho(spec: Spec, result: LoopResult) -> Check:
    h = spec.health
    if result.completed == 0:
        return Check("rho_sane", "PASS", "no iteration completed")
    m2 = mean_last_k(result.series["mean_rho2"][: result.completed], spec.run.last_k)
    note = _nonfinite_ratios(result)
    more = f"; {note}" if note else ""
    if math.isfinite(m2) and m2 > h.rho2_max:
        return Check("rho_sane", "FAIL", f"rho exceeds threshold: mean_last_k(mean_rho2) = {_fmt(m2)} > {_fmt(h.rho2_max)}{more}")
    # The tail that matters is that of the weights the updates use: pi/b, seen by the fixed-point and
    # stability probes. The distribution probe's pi/mu (independent of p_mix) stands in only when
    # neither ran; the Theory section compares it with its closed form.
    worst, where = -math.inf, None
    for group in (("fixed_point_probe", "stability_probe"), ("distribution_probe",)):
        for probe in group:
            rows = _last_rows(result, probe)
            if rows and math.isfinite(rows[-1].get("rho_khat", math.nan)) and rows[-1]["rho_khat"] > worst:
                worst, where = rows[-1]["rho_khat"], probe
        if where is not None:
            break
    clipped = spec.rho.clip_enabled
    if where is not None and worst > h.khat_fail:
        if clipped:
            return Check(
                "rho_sane",
                "WARN",
                f"PSIS k_hat = {_fmt(worst)} > {_fmt(h.khat_fail)} in {where}, but the updates clip rho at "
                f"{_fmt(spec.rho.clip)}: bounded variance, biased updates{more}",
            )
        return Check("rho_sane", "FAIL", f"PSIS k_hat = {_fmt(worst)} > {_fmt(h.khat_fail)} in {where}: importance weights untrustworthy{more}")
    if where is not None and worst > h.khat_warn:
        return Check("rho_sane", "WARN", f"PSIS k_hat = {_fmt(worst)} > {_fmt(h.khat_warn)} in {where}: slow importance-sampling convergence{more}")
    if not math.isfinite(m2):
        return Check("rho_sane", "WARN", f"mean_last_k(mean_rho2) is not finite ({_fmt(m2)}){more}")
    if note:
        return Check("rho_sane", "WARN", note)
    khat = f", worst k_hat {_fmt(worst)}" if where is not None else ""
    return Check("rho_sane", "PASS", f"mean_last_k(mean_rho2) = {_fmt(m2)} <= {_fmt(h.rho2_max)}{khat}")


def check_stable(spec: Spec, result: LoopResult) -> Check:
    rows = _last_rows(result, "stability_probe")
    if not rows:
        return Check("stable", "WARN", "no stability probe ran")
    r = rows[-1]
    h = spec.health
    radius, min_re = r["stability_radius_exact"], r["a_min_real_eig"]
    if not (math.isfinite(radius) and math.isfinite(min_re)):
        return Check("stable", "FAIL", f"A_hat not finite at iteration {int(r['iter'])}")
    tol_r = max(h.stab_tol, h.stab_z * r["stability_radius_se"])
    tol_a = max(h.stab_tol, h.stab_z * r["a_min_real_eig_se"])
    if min_re < -tol_a:
        return Check("stable", "FAIL", f"min Re eig(A_hat) = {_fmt(min_re)} < 0: expected TD update diverges")
    if radius > 1 + tol_r:
        return Check("stable", "FAIL", f"spectral radius of I - alpha_w A_hat = {_fmt(radius)} > 1: critic step expands")
    if min_re < 0 or radius > 1:
        return Check(
            "stable",
            "WARN",
            f"marginal: radius {_fmt(radius)}, min Re eig(A_hat) = {_fmt(min_re)} are past the boundary "
            f"but within sampling error ({_fmt(h.stab_z)} SE: {_fmt(tol_r)}, {_fmt(tol_a)})",
        )
    if r["stability_proxy"] > 1 + tol_r:
        return Check(
            "stable",
            "WARN",
            f"power-iteration proxy {_fmt(r['stability_proxy'])} > 1 but exact radius {_fmt(radius)} is not (proxy is noisy)",
        )
    return Check("stable", "PASS", f"radius {_fmt(radius)} <= 1, min Re eig(A_hat) = {_fmt(min_re)} >= 0")


def check_fixed_point(spec: Spec, result: LoopResult) -> Check:
    rows = _last_rows(result, "fixed_point_probe")
    if not rows:
        return Check("fixed_point", "PASS", "no fixed-point probe ran")
    failed = [int(r["iter"]) for r in rows if r["converged"] != 1.0]
    if rows[-1]["converged"] != 1.0 and rows[-1]["iterations"] == 0 and not math.isfinite(rows[-1]["residual"]):
        return Check("fixed_point", "FAIL", f"no solve at iteration {int(rows[-1]['iter'])}: A_hat or b_hat not finite")
    if rows[-1]["converged"] != 1.0:
        return Check("fixed_point", "FAIL", f"solver did not converge at iteration {int(rows[-1]['iter'])} (residual {_fmt(rows[-1]['residual'])})")
    if failed:
        return Check("fixed_point", "WARN", f"solver did not converge at iterations {failed}")
    return Check("fixed_point", "PASS", f"solver converged at all {len(rows)} probes")


def check_step_scale(spec: Spec, result: LoopResult) -> Check:
    rows = _last_rows(result, "stability_probe")
    if not rows:
        return Check("step_scale", "PASS", "no stability probe ran")
    ratio = rows[-1]["stability_probe_step_scale_ratio"]
    if not abs(ratio - 1.0) <= spec.health.step_scale_tol:
        return Check("step_scale", "FAIL", f"stability probe step / train step = {ratio!r}, expected 1")
    return Check("step_scale", "PASS", "probe and training agree on the per-transition step")


def check_td(spec: Spec, result: LoopResult) -> Check:
    rows = _last_rows(result, "q_kernel_probe")
    if not rows:
        return Check("td_consistency", "PASS", "no q-kernel probe ran")
    skipped = [r for r in rows if not math.isfinite(r["td_loss"])]  # a diverged loss says nothing about the kernel form
    rows = [r for r in rows if math.isfinite(r["td_loss"])]
    if not rows:
        return Check("td_consistency", "PASS", f"not compared: td_loss not finite at all {len(skipped)} q-kernel probes")
    worst = max(rows, key=lambda r: r["td_loss_from_Q_rel_diff"] if math.isfinite(r["td_loss_from_Q_rel_diff"]) else math.inf)
    rel = worst["td_loss_from_Q_rel_diff"]
    if not rel <= spec.health.td_rel_tol:
        return Check("td_consistency", "FAIL", f"q-kernel TD loss differs by {_fmt(rel)} (relative) at iteration {int(worst['iter'])}")
    return Check("td_consistency", "PASS", f"q-kernel and feature TD losses agree (max rel diff {_fmt(rel)})")


def check_teacher(spec: Spec, result: LoopResult) -> Check:
    bad = result.teacher_undefined_iters
    last = result.completed - 1
    if bad and bad[-1] == last:
        return Check("teacher", "FAIL", f"teacher undefined at iteration {last}: sqrt(gamma) * rho(A + B K_pi) >= 1")
    if bad:
        return Check("teacher", "WARN", f"teacher undefined at {len(bad)} iteration(s), first {bad[0]}")
    return Check("teacher", "PASS", "closed loop stable: teacher defined at every iteration")


CHECKS = (check_finite, check_rho, check_stable, check_fixed_point, check_step_scale, check_td, check_teacher)


def evaluate(spec: Spec, result: LoopResult) -> Verdict:
    checks = [c(spec, result) for c in CHECKS]
    status = max((c.status for c in checks), key=ORDER.__getitem__)
    if result.interrupted:
        status = "INTERRUPTED"
    verdict = Verdict(status, checks)
    verdict.next_steps = advise(spec, result, verdict)
    return verdict


def advise(spec: Spec, result: LoopResult, verdict: Verdict) -> list[str]:
    """Turn findings into advice, citing theory where it applies."""
    steps: list[str] = []
    by = {c.name: c for c in verdict.checks}
    p = spec.policy
    if result.interrupted:
        steps.append(f"run was interrupted after {result.completed} iteration(s) -> rerun to complete it.")
    if by["rho_sane"].status != "PASS":
        rho_reason = by["rho_sane"].reason
        if "rho exceeds" in rho_reason:
            steps.append("mean_rho2 is very large -> consider reducing sigma mismatch, increasing beta, increasing p_mix, or enabling rho_clip.")
        elif "k_hat" in rho_reason:
            steps.append("importance weights are heavy-tailed (PSIS k_hat) -> enable rho.clip, raise p_mix, or bring sigma_pi closer to sigma_mu.")
        if "non-finite importance ratio" in rho_reason:
            steps.append(
                "some importance ratios were not finite (states or gains overflowed) -> they are counted in rho_nonfinite and "
                "left out of the rho statistics; lower actor.alpha_pi or critic.alpha_w."
            )
        if math.isinf(e_mu_rho2(spec.env.action_dim, p.sigma_pi, p.sigma_mu)):
            steps.append(
                f"theory: E_mu[(pi/mu)^2] is infinite because sigma_pi^2 = {p.sigma_pi**2:.4g} >= 2 sigma_mu^2 = "
                f"{2 * p.sigma_mu**2:.4g}; without p_mix or clipping the variance of every importance-weighted average is unbounded."
            )
        if p.p_mix > 0:
            steps.append(f"theory: the defensive mixture bounds rho by 1/p_mix = {1 / p.p_mix:.4g}.")
    if by["finite"].status == "FAIL":
        steps.append(f"{by['finite'].reason} -> lower critic.alpha_w (now {spec.critic.alpha_w:g}) or actor.alpha_pi (now {spec.actor.alpha_pi:g}), or enable rho.clip.")
    if by["stable"].status == "FAIL" and "not finite" not in by["stable"].reason:
        steps.append(
            "the expected TD update expands (deadly triad) -> reduce the off-policy mismatch (raise p_mix or beta), "
            "lower gamma, or lower alpha_w."
        )
    elif by["stable"].status == "WARN" and "marginal" in by["stable"].reason:
        steps.append(
            "the expected TD map sits at the stability boundary within sampling error -> raise probes.stability.batch_size "
            "to resolve it, or add margin (raise p_mix, lower gamma)."
        )
    elif by["stable"].status == "WARN" and "proxy" in by["stable"].reason:
        steps.append("the power-iteration proxy is noisy near 1 -> raise probes.stability.power_iters; the exact radius is fine.")
    if by["teacher"].status != "PASS":
        steps.append(
            "theory: the closed loop sqrt(gamma) * rho(A + B K_pi) >= 1, so the policy's value is infinite -> lower actor.alpha_pi "
            "or start from a stabilising policy.k_init."
        )
    if by["fixed_point"].status != "PASS" and "not finite" not in by["fixed_point"].reason:
        steps.append("the fixed-point solve did not converge -> raise probes.fixed_point.num_iters or batch_size (A_hat may be near singular).")
    if by["step_scale"].status == "FAIL":
        steps.append("probe and training disagree on the critic step -> a bug: report it with the spec.")
    if by["td_consistency"].status == "FAIL":
        steps.append("the q-kernel TD loss disagrees with the feature TD loss -> a bug in the feature map: report it with the spec.")
    if not steps:
        steps.append("all checks pass -> push the regime (lower p_mix, widen sigma_pi / sigma_mu) or raise gamma to look for the boundary.")
    return steps
