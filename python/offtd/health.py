"""Health checks (specs/MODEL.md section 7): each a statistical claim about the run.

Where the model has an exact value (the expected TD update, the ratio moments at equal means), a check
judges by it and shows the estimate next to it. Where only an estimate exists, the check compares the
threshold with the estimate's interval: FAIL needs the whole interval past the threshold, an interval
that straddles it is WARN ("undetermined at this sample size"). Every check carries a `kind`, a stable
code the advice (advice.py) and the sweeps read instead of the reason text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from .loop import LoopResult
from .spec import Spec

ORDER = {"PASS": 0, "WARN": 1, "FAIL": 2}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS | WARN | FAIL
    reason: str
    kind: str = "ok"  # a stable code of the finding, e.g. "step_too_large"; "ok" for a clean PASS


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

    def by_name(self) -> dict[str, Check]:
        return {c.name: c for c in self.checks}

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "status_line": self.status_line,
            "checks": [{"name": c.name, "status": c.status, "reason": c.reason, "kind": c.kind} for c in self.checks],
        }


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def z_level(spec: Spec) -> float:
    """The two-sided normal quantile of health.level (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 * (1.0 + spec.health.level))


def last_row(result: LoopResult, probe: str) -> dict[str, float] | None:
    rows = result.probe_series.get(probe) or []
    return rows[-1] if rows else None


def last_exact(result: LoopResult) -> dict[str, float] | None:
    return result.exact_series[-1] if result.exact_series else None


def worst_of(name: str, findings: list[Check], clean: Check) -> Check:
    """The first finding of the worst status, or `clean` when there is none."""
    if not findings:
        return clean
    top = max(ORDER[f.status] for f in findings)
    return next(f for f in findings if ORDER[f.status] == top)


# ----------------------------------------------------------------------------------------------- finite


def _scale_series(result: LoopResult, key: str) -> np.ndarray:
    """The teacher's scale per iteration, carried forward over iterations where it is undefined."""
    done = result.completed
    raw = result.series[key][:done]
    out = np.full(done, math.nan)
    last = math.nan
    for i, v in enumerate(raw):
        if math.isfinite(v) and v > 0.0:
            last = v
        out[i] = last
    return out


def _first_over_bound(spec: Spec, result: LoopResult) -> tuple[int, str, float, bool] | None:
    """(iteration, metric, bound, relative) of the earliest w_norm / td_loss above its bound. Bounds are
    relative to the teacher (||w_teacher||, and its mean V^2 over the batch states), so they do not
    depend on reward_scale; where no teacher was ever defined they are absolute."""
    done = result.completed
    first = None
    w_scale = _scale_series(result, "teacher_w_norm")
    v_scale = _scale_series(result, "teacher_value_scale")
    for metric, bound, scale in (
        ("w_norm", spec.health.w_norm_max, w_scale),
        ("td_loss", spec.health.td_loss_max, v_scale * v_scale),
    ):
        relative = np.isfinite(scale)
        ref = np.where(relative, scale, 1.0)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            over = np.flatnonzero(result.series[metric][:done] / ref > bound)
        if over.size and (first is None or over[0] < first[0]):
            first = (int(over[0]), metric, bound, bool(relative[over[0]]))
    return first


def check_finite(spec: Spec, result: LoopResult) -> Check:
    over = _first_over_bound(spec, result)

    def bound_text(o: tuple[int, str, float, bool]) -> str:
        unit = " x the teacher's scale" if o[3] else " (absolute: no teacher defined)"
        return f"{o[1]} exceeded {_fmt(o[2])}{unit}"

    if result.diverged_at is not None:
        reason = f"values stopped being finite at iteration {result.diverged_at} ({result.diverged_what})"
        if over is not None and over[0] < result.diverged_at:
            reason += f"; {bound_text(over)} from iteration {over[0]}"
        return Check("finite", "FAIL", reason, "nonfinite")
    if over is not None:
        return Check("finite", "FAIL", f"{bound_text(over)} at iteration {over[0]}: diverging", "over_bound")
    return Check("finite", "PASS", "all core metrics finite and within bounds relative to the teacher")


# --------------------------------------------------------------------------------------------- rho_sane


def khat_se(khat: float, n: float) -> float:
    """Standard error of PSIS k_hat: the asymptotic sd of the generalized Pareto shape estimate,
    (1 + k) / sqrt(T), over the T = ceil(min(0.2 n, 3 sqrt(n))) tail points the fit uses."""
    if not (math.isfinite(khat) and n > 0):
        return math.nan
    tail = math.ceil(min(0.2 * n, 3.0 * math.sqrt(n)))
    return (1.0 + max(khat, -0.5)) / math.sqrt(tail)


def _nonfinite_ratios(result: LoopResult) -> str | None:
    """The probes' count of non-finite importance ratios (MODEL.md 5 leaves them out of the statistics)."""
    total, first = 0, None
    for probe in ("distribution_probe", "fixed_point_probe", "stability_probe"):
        for row in result.probe_series.get(probe, []):
            count = row.get("rho_nonfinite", 0.0)
            if count > 0:
                total += int(count)
                if first is None or row["iter"] < first[1]:
                    first = (probe, int(row["iter"]))
    if first is None:
        return None
    return f"{total} non-finite importance ratio(s) left out of the rho statistics (first in {first[0]} at iteration {first[1]})"


def _estimate_last_k(result: LoopResult, key: str, k: int) -> tuple[float, float]:
    """mean_last_k of a per-iteration mean and its standard error (iterations are independent)."""
    done = result.completed
    v = result.series[key][:done][-k:]
    se = result.series[f"{key}_se"][:done][-k:]
    if v.size == 0:
        return math.nan, math.nan
    return float(np.mean(v)), float(np.sqrt(np.sum(se * se))) / v.size


def _second_moment(spec: Spec, result: LoopResult, ex: dict[str, float] | None, z: float) -> Check | None:
    """The second moment of the weights the updates use (rho_bar; rho without clipping) against rho2_max."""
    h = spec.health
    what = "E_b[rho_bar^2]" if spec.rho.clip_enabled else "E_b[rho^2]"
    if ex is not None and ex["exact_ratio_available"] == 1.0:
        v = ex["exact_e_rho_bar2"]
        est, se = _estimate_last_k(result, "mean_rho_bar2", spec.run.last_k)
        shown = f"{what} = {_fmt(v)} (exact; measured {_fmt(est)} +- {_fmt(se)})"
        if v > h.rho2_max:
            return Check("rho_sane", "FAIL", f"rho exceeds threshold: {shown} > {_fmt(h.rho2_max)}", "rho_second_moment")
        return None
    est, se = _estimate_last_k(result, "mean_rho_bar2", spec.run.last_k)
    shown = f"mean_last_k of mean(rho_bar^2) = {_fmt(est)} +- {_fmt(se)} (estimate)" if spec.rho.clip_enabled else (
        f"mean_last_k(mean_rho2) = {_fmt(est)} +- {_fmt(se)} (estimate)"
    )
    if not math.isfinite(est):
        return Check("rho_sane", "WARN", f"{shown} is not finite", "rho_nonfinite")
    if est - z * se > h.rho2_max:
        return Check("rho_sane", "FAIL", f"rho exceeds threshold: {shown} > {_fmt(h.rho2_max)} beyond its noise", "rho_second_moment")
    if est + z * se > h.rho2_max:
        side = "above" if est > h.rho2_max else ("below" if est < h.rho2_max else "at")
        return Check(
            "rho_sane",
            "WARN",
            f"undetermined at this sample size: {shown} is {side} {_fmt(h.rho2_max)}" + (
                f" but within {_fmt(z)} SE of it" if side != "at" else f", {_fmt(z)} SE either way"),
            "rho_second_moment_undetermined",
        )
    return None


def _clip_mass(spec: Spec, result: LoopResult, ex: dict[str, float] | None, z: float) -> list[Check]:
    """With clipping: the share of E_b[rho] = 1 the clip removes (the critic's step shrinks by kappa0) and
    the exact bias of the clipped fixed point."""
    h = spec.health
    out: list[Check] = []
    if ex is not None and math.isfinite(ex["exact_kappa0"]):
        removed, se, src = 1.0 - ex["exact_kappa0"], 0.0, "exact"
    else:
        est, se = _estimate_last_k(result, "mean_rho_bar", spec.run.last_k)
        removed, src = 1.0 - est, "estimate"
    shown = f"clipping at {_fmt(spec.rho.clip)} removes {_fmt(removed)} of E_b[rho] = 1 ({src}" + (
        f", SE {_fmt(se)})" if src == "estimate" else ")"
    )
    if removed - z * se > h.clip_mass_fail:
        why = f"{shown} > {_fmt(h.clip_mass_fail)}: the critic's effective step alpha_w * kappa0 is nearly 0"
        out.append(Check("rho_sane", "FAIL", why, "clip_mass"))
    elif removed > h.clip_mass_warn:
        out.append(Check("rho_sane", "WARN", f"{shown} > {_fmt(h.clip_mass_warn)}: the clipped updates are strongly biased", "clip_mass"))
    gap = ex["exact_teacher_gap"] if ex is not None else math.nan
    if math.isfinite(gap) and gap > h.teacher_gap_warn:
        out.append(
            Check(
                "rho_sane",
                "WARN",
                f"the clipped TD fixed point is {_fmt(gap)} (relative RMS, exact) from the teacher > {_fmt(h.teacher_gap_warn)}",
                "clip_bias",
            )
        )
    return out


def _tail(spec: Spec, result: LoopResult, z: float) -> tuple[Check | None, str]:
    """PSIS k_hat of the ratios the updates use, pi/b (fixed-point and stability probes)."""
    h = spec.health
    worst: tuple[float, float, str] | None = None
    light = []
    for probe in ("fixed_point_probe", "stability_probe"):
        row = last_row(result, probe)
        if row is None:
            continue
        k = row.get("rho_khat", math.nan)
        if math.isnan(k):
            light.append(probe)
            continue
        se = khat_se(k, row["batch_size"] - row.get("rho_nonfinite", 0.0))
        if worst is None or k > worst[0]:
            worst = (k, se, probe)
    if worst is None:
        note = "k_hat: light tail (too few distinct large ratios to fit)" if light else "no pi/b probe ran"
        return None, note
    k, se, probe = worst
    shown = f"PSIS k_hat = {_fmt(k)} +- {_fmt(se)} in {probe}"
    if spec.rho.clip_enabled:
        return None, f"{shown} (unclipped pi/b; the clipped weights are bounded by {_fmt(spec.rho.clip)})"
    if k - z * se > h.khat_fail:
        return Check("rho_sane", "FAIL", f"{shown} > {_fmt(h.khat_fail)} beyond its noise: importance weights untrustworthy", "rho_tail"), shown
    if k > h.khat_fail:
        why = f"{shown} > {_fmt(h.khat_fail)} but within {_fmt(z)} SE: heavy tail, undetermined at this sample size"
        return Check("rho_sane", "WARN", why, "rho_tail"), shown
    if k > h.khat_warn:
        return Check("rho_sane", "WARN", f"{shown} > {_fmt(h.khat_warn)}: slow importance-sampling convergence", "rho_tail"), shown
    return None, shown


def check_rho(spec: Spec, result: LoopResult) -> Check:
    if result.completed == 0:
        return Check("rho_sane", "PASS", "no iteration completed")
    z = z_level(spec)
    ex = last_exact(result)
    findings: list[Check] = []
    second = _second_moment(spec, result, ex, z)
    if second is not None:
        findings.append(second)
    if spec.rho.clip_enabled:
        findings += _clip_mass(spec, result, ex, z)
    tail, tail_note = _tail(spec, result, z)
    if tail is not None:
        findings.append(tail)
    note = _nonfinite_ratios(result)
    if note:
        findings.append(Check("rho_sane", "WARN", note, "rho_nonfinite"))
    if ex is not None and ex["exact_ratio_available"] == 1.0:
        what = "E_b[rho_bar^2]" if spec.rho.clip_enabled else "E_b[rho^2]"
        moment = f"{what} = {_fmt(ex['exact_e_rho_bar2'])} (exact)"
    else:
        est, se = _estimate_last_k(result, "mean_rho_bar2", spec.run.last_k)
        moment = f"mean(rho_bar^2) = {_fmt(est)} +- {_fmt(se)} (estimate)"
    clean = Check("rho_sane", "PASS", f"{moment} <= {_fmt(spec.health.rho2_max)}; {tail_note}")
    return worst_of("rho_sane", findings, clean)


# ----------------------------------------------------------------------------------------------- stable


def _estimate_text(row: dict[str, float] | None) -> str:
    if row is None:
        return ""
    return (
        f"; estimate from the probe: radius {_fmt(row['stability_radius'])} (SE {_fmt(row['stability_radius_se'])}, "
        f"z = {_fmt(row['stability_radius_z'])}), min Re eig {_fmt(row['a_min_real_eig'])} "
        f"(SE {_fmt(row['a_min_real_eig_se'])}, z = {_fmt(row['a_min_real_eig_z'])}) against the exact values for its states"
    )


def _fmt_radius(r: float) -> str:
    """A radius with the digits that show its distance from 1 (0.99998, not 1)."""
    return _fmt(r) if abs(1.0 - r) >= 5e-4 else f"{r:.8g}"


def _critic_names(spec: Spec) -> tuple[str, str]:
    """(the expected-update matrix's symbol, the update's name) for the run's critic (MODEL.md 3.4)."""
    from .critics import MATRIX_SYMBOLS, UPDATE_NAMES

    return MATRIX_SYMBOLS[spec.critic.algorithm], UPDATE_NAMES[spec.critic.algorithm]


def _stable_exact(spec: Spec, ex: dict[str, float], probe: dict[str, float] | None) -> Check:
    alpha = spec.critic.alpha_w
    mat, upd = _critic_names(spec)
    r, a, crit = ex["exact_radius"], ex["exact_min_re_eig"], ex["exact_alpha_w_crit"]
    t = int(ex["iter"])
    tol = ex["exact_tol"]  # rounding: 1e3 eps (1 + alpha_w ||A||_F)
    est = _estimate_text(probe)
    if alpha == 0.0:
        if a < -tol:
            why = f"critic frozen (alpha_w = 0); exact min Re eig({mat}) = {_fmt(a)} < 0 at iteration {t}: {upd} would diverge at any step size"
            return Check("stable", "WARN", why, "frozen_unstable")
        return Check("stable", "PASS", f"critic frozen (alpha_w = 0); exact alpha_w* = {_fmt(crit)} at iteration {t}")
    if a < -tol:
        return Check(
            "stable",
            "FAIL",
            f"exact min Re eig({mat}) = {_fmt(a)} < 0 at iteration {t}: the expected {upd} update diverges at every step size{est}",
            "td_diverges_any_step",
        )
    if r > 1.0 + tol:
        return Check(
            "stable",
            "FAIL",
            f"exact spectral radius of I - alpha_w {mat} = {_fmt(r)} > 1 at iteration {t}: alpha_w = {_fmt(alpha)} exceeds "
            f"the critical step size alpha_w* = {_fmt(crit)}{est}",
            "step_too_large",
        )
    if r >= 1.0 - tol or a <= tol:
        return Check("stable", "WARN", f"exactly on the stability boundary (to rounding): radius {r!r}, min Re eig {a!r}{est}", "boundary")
    slow = _slow_note(spec, r)
    return Check(
        "stable",
        "PASS",
        f"exact radius {_fmt_radius(r)} < 1 (alpha_w = {_fmt(alpha)} < alpha_w* = {_fmt(crit)}), min Re eig({mat}) = {_fmt(a)} > 0 "
        f"at iteration {t}{slow}{est}",
        "slow" if slow else "ok",
    )


def _slow_note(spec: Spec, r: float) -> str:
    """Stable, but slow for the run (MODEL.md 7): the expected update's slowest mode, which shrinks by the
    radius r per iteration, keeps more than half its size over the run's outer_iters."""
    iters = spec.run.outer_iters
    keep = r**iters
    if not keep > 0.5:
        return ""
    return (
        f"; slow: over the run's {iters} iterations the expected update shrinks its slowest mode only to r^{iters} = "
        f"{_fmt(keep)} (time constant 1/(1 - r) = {_fmt(1.0 / (1.0 - r))} iterations; w_gap says how far the critic is)"
    )


def _stable_estimate(spec: Spec, ex: dict[str, float] | None, row: dict[str, float] | None, why: str) -> Check:
    if row is None:
        return Check("stable", "WARN", f"no exact value ({why}) and no stability probe ran", "no_probe")
    t = int(row["iter"])
    mat, upd = _critic_names(spec)
    r, a = row["stability_radius"], row["a_min_real_eig"]
    if not (math.isfinite(r) and math.isfinite(a)):
        return Check("stable", "FAIL", f"A_hat not finite at iteration {t}", "nonfinite")
    pct = f"{100 * spec.health.level:g}%"
    iv = (
        f"radius {_fmt(r)} in [{_fmt(row['stability_radius_lo'])}, {_fmt(row['stability_radius_hi'])}], "
        f"min Re eig({mat}_hat) {_fmt(a)} in [{_fmt(row['a_min_real_eig_lo'])}, {_fmt(row['a_min_real_eig_hi'])}] "
        f"({pct} intervals over {int(row['repeats'])} sub-batches; no exact value: {why})"
    )
    # The gradient-TD critics' matrix is nonlinear in A_hat near its small eigenvalues and the estimate
    # can be biased beyond its interval (MODEL.md 4.4): an estimate alone never FAILs them.
    calibrated = spec.critic.algorithm == "td0"
    bad = "FAIL" if calibrated else "WARN"
    note = "" if calibrated else f" (an estimate for {upd}, which can be biased beyond its interval: not a FAIL)"
    if row["a_min_real_eig_hi"] < 0.0:
        return Check("stable", bad, f"expected {upd} update diverges at iteration {t}: {iv}{note}", "td_diverges_estimate")
    if row["stability_radius_lo"] > 1.0:
        return Check("stable", bad, f"critic step expands at iteration {t}: {iv}{note}", "step_too_large_estimate")
    if row["a_min_real_eig_lo"] < 0.0 or row["stability_radius_hi"] > 1.0:
        return Check("stable", "WARN", f"undetermined at this sample size at iteration {t}: {iv}", "undetermined")
    return Check("stable", "PASS", f"stable at iteration {t}: {iv}")


def check_stable(spec: Spec, result: LoopResult) -> Check:
    ex = last_exact(result)
    probe = last_row(result, "stability_probe")
    if probe is not None and ex is not None and probe["iter"] != ex["iter"]:
        probe = None
    if ex is not None and ex["exact_available"] == 1.0:
        return _stable_exact(spec, ex, probe)
    if ex is None:
        why = "no probe iteration completed"
    elif spec.rho.clip_enabled and ex["exact_ratio_available"] == 0.0:
        why = "clipping with unequal policy means has no closed form"
    else:
        why = "the state moments are not finite"
    return _stable_estimate(spec, ex, last_row(result, "stability_probe"), why)


# ------------------------------------------------------------------------------------- the other checks


def check_fixed_point(spec: Spec, result: LoopResult) -> Check:
    rows = result.probe_series.get("fixed_point_probe", [])
    if not rows:
        return Check("fixed_point", "PASS", "no fixed-point probe ran")
    failed = [int(r["iter"]) for r in rows if r["converged"] != 1.0]
    last = rows[-1]
    if last["converged"] != 1.0 and last["iterations"] == 0 and not math.isfinite(last["residual"]):
        return Check("fixed_point", "FAIL", f"no solve at iteration {int(last['iter'])}: A_hat or b_hat not finite", "nonfinite")
    if last["converged"] != 1.0:
        return Check(
            "fixed_point",
            "FAIL",
            f"solver did not converge at iteration {int(last['iter'])} (residual {_fmt(last['residual'])})",
            "not_converged",
        )
    if failed:
        return Check("fixed_point", "WARN", f"solver did not converge at iterations {failed}", "not_converged_earlier")
    return Check("fixed_point", "PASS", f"solver converged at all {len(rows)} probes")


def check_td(spec: Spec, result: LoopResult) -> Check:
    rows = result.probe_series.get("q_kernel_probe", [])
    if not rows:
        return Check("td_consistency", "PASS", "no q-kernel probe ran")
    skipped = [r for r in rows if not math.isfinite(r["td_loss"])]  # a diverged loss says nothing about the kernel form
    rows = [r for r in rows if math.isfinite(r["td_loss"])]
    if not rows:
        return Check("td_consistency", "PASS", f"not compared: td_loss not finite at all {len(skipped)} q-kernel probes")
    worst = max(rows, key=lambda r: r["td_loss_from_Q_rel_diff"] if math.isfinite(r["td_loss_from_Q_rel_diff"]) else math.inf)
    rel = worst["td_loss_from_Q_rel_diff"]
    if not rel <= spec.health.td_rel_tol:
        why = f"q-kernel TD loss differs by {_fmt(rel)} (relative) at iteration {int(worst['iter'])}"
        return Check("td_consistency", "FAIL", why, "kernel_mismatch")
    return Check("td_consistency", "PASS", f"q-kernel and feature TD losses agree (max rel diff {_fmt(rel)})")


def check_teacher(spec: Spec, result: LoopResult) -> Check:
    bad = result.teacher_undefined_iters
    last = result.completed - 1
    if bad and bad[-1] == last:
        return Check("teacher", "FAIL", f"teacher undefined at iteration {last}: sqrt(gamma) * rho(A + B K_pi) >= 1", "undefined")
    if bad:
        return Check("teacher", "WARN", f"teacher undefined at {len(bad)} iteration(s), first {bad[0]}", "undefined_earlier")
    return Check("teacher", "PASS", "closed loop stable: teacher defined at every iteration")


CHECKS = (check_finite, check_rho, check_stable, check_fixed_point, check_td, check_teacher)


def evaluate(spec: Spec, result: LoopResult) -> Verdict:
    """Every check and the run's status; `next_steps` stays empty (advice.judge adds the advice, which
    reads these findings: health does not depend on advice)."""
    checks = [c(spec, result) for c in CHECKS]
    status = max((c.status for c in checks), key=ORDER.__getitem__)
    if result.interrupted:
        status = "INTERRUPTED"
    return Verdict(status, checks)
