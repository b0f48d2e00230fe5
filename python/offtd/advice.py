"""Next steps: advice from the health findings (by their `kind`), with remedies the exact theory checks.

A remedy that changes something the exact theory covers (alpha_w, p_mix, gamma, the clip) is evaluated
before it is offered: the advice names the value and what the exact theory says it gives, at the run's
final gains. Nothing already on is recommended (no "enable rho.clip" when it is enabled).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .backend import Backend, Problem
from .exact.expected_td import CriticSpec, critic_of, eig_summary, exact_td, fastest_step
from .exact.ratios import ratio_moments
from .health import Verdict, evaluate, last_exact, last_row, z_level
from .health import _nonfinite_ratios as nonfinite_ratios
from .loop import LoopResult
from .model import e_mu_rho2, problem_from_spec
from .spec import Spec


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _bisect(f, lo: float, hi: float, iters: int = 50) -> float:
    """The boundary of {x : f(x)} in [lo, hi] for f false at lo and true at hi."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if f(mid):
            hi = mid
        else:
            lo = mid
    return hi


class _Exact:
    """Exact quantities at the run's final gains under changed settings."""

    def __init__(self, spec: Spec, result: LoopResult, backend: Backend | None):
        self.spec = spec
        self.backend = backend
        self.problem = problem_from_spec(spec)
        ok = np.all(np.isfinite(result.final_k_pi)) and np.all(np.isfinite(result.final_k_mu))
        self.k_pi = result.final_k_pi if ok else np.array(spec.policy.k_init, dtype=float)
        self.k_mu = result.final_k_mu if ok else np.array(spec.policy.k_mu_init, dtype=float)

    def td(self, alpha_w: float | None = None, critic: CriticSpec | None = None, **changes: Any):
        """The exact quantities of the run's critic (or `critic`) with the changed settings."""
        if self.backend is None:
            return None
        problem: Problem = dataclasses.replace(self.problem, **changes) if changes else self.problem
        alpha = self.spec.critic.alpha_w if alpha_w is None else alpha_w
        return exact_td(problem, self.k_pi, self.k_mu, self.spec.run.horizon, alpha, self.spec.rho.clip_enabled, self.backend,
                        critic=critic or critic_of(self.spec))  # fmt: skip


# The secondary step sizes tried for the gradient-TD critics, as eta = alpha_h / alpha_w.
CRITIC_ETAS = (1.0, 10.0, 0.1)


def _critic_remedies(spec: Spec, ex: _Exact) -> list[str]:
    """The other critics whose exact expected update is stable at the run's final gains (MODEL.md 7):
    each checked with the exact theory, with the step size that makes it contract (half its critical
    step, or the run's alpha_w when that already contracts). Empty when none is, or none can be checked."""
    from .critics import ALGORITHMS, secondary_weights

    found = []
    alpha = spec.critic.alpha_w
    for alg in ALGORITHMS:
        if alg == spec.critic.algorithm:
            continue
        for eta in CRITIC_ETAS if secondary_weights(alg) else (0.0,):
            e = ex.td(critic=CriticSpec(alg, eta))
            if e is None or not (e.pop.min_re > 0 and e.pop.alpha_crit > 0):
                continue
            step = alpha if 0 < alpha < e.pop.alpha_crit else 0.5 * e.pop.alpha_crit
            # the same matrix at another step: its eigenvalues, not a second exact computation
            radius = eig_summary(e.critic_pop, step) if e.critic_pop is not None else None
            setting = f"critic.algorithm = \"{alg}\""
            if secondary_weights(alg):
                setting += f", critic.alpha_h = {_fmt(eta * step)}"
            if step != alpha:
                setting += f", critic.alpha_w = {_fmt(step)}"
            rad = f", exact radius {radius.radius:.6g}" if radius is not None else ""
            found.append(f"{setting} (exact min Re eig {_fmt(e.pop.min_re)}, stable for alpha_w < {_fmt(e.pop.alpha_crit)}{rad})")
            break
    return found


def _stability_remedies(spec: Spec, ex: _Exact, kind: str, row: dict[str, float]) -> list[str]:
    steps = []
    if kind == "step_too_large":
        crit = row["exact_alpha_w_crit"]
        half = ex.td(alpha_w=0.5 * crit)
        tail = f" (exact radius at alpha_w = {_fmt(0.5 * crit)}: {_fmt(half.pop.radius)})" if half is not None else ""
        steps.append(
            f"the expected TD update expands because alpha_w = {_fmt(spec.critic.alpha_w)} exceeds the critical step size "
            f"alpha_w* = {_fmt(crit)} (exact) -> lower critic.alpha_w below {_fmt(crit)}{tail}."
        )
        return steps
    # no step size is stable: search the off-policy mismatch and the discount
    found = []
    p = spec.policy.p_mix
    for cand in sorted({min(0.9, x) for x in (2 * p, 4 * p, 0.1, 0.3, 0.5) if x > p}):
        e = ex.td(p_mix=cand)
        if e is not None and e.pop.min_re > 0:
            found.append(f"policy.p_mix = {_fmt(cand)} (exact min Re eig {_fmt(e.pop.min_re)}, alpha_w* = {_fmt(e.pop.alpha_crit)})")
            break
    g = spec.critic.gamma
    for cand in (g - 0.05, g - 0.1, g - 0.2, 0.5 * g):
        if cand <= 0:
            continue
        e = ex.td(gamma=cand)
        if e is not None and e.pop.min_re > 0:
            found.append(f"critic.gamma = {_fmt(cand)} (exact min Re eig {_fmt(e.pop.min_re)}, alpha_w* = {_fmt(e.pop.alpha_crit)})")
            break
    name = spec.critic.algorithm
    head = f"exact min Re eig = {_fmt(row['exact_min_re_eig'])} < 0: no step size makes {name} stable here" + (
        " (the deadly triad)" if name == "td0" else "")  # fmt: skip
    if found:
        steps.append(f"{head} -> checked remedies: " + "; ".join(found) + ".")
    else:
        steps.append(f"{head} -> raising p_mix up to 0.5 or lowering gamma by up to half does not fix it (exact); reduce the policies' mismatch.")
    critics = _critic_remedies(spec, ex)
    if critics:
        steps.append("other critics on the same data, checked with the exact theory: " + "; ".join(critics) + ".")
    return steps


def _slow_remedies(spec: Spec, ex: _Exact, ratios_ok: bool) -> list[str]:
    """A stable but slow expected update (health kind "slow"): the run length the current step needs, and,
    when the importance weights pass rho_sane, the step size that contracts fastest with its exact radius
    at the run's final gains. With heavy-tailed weights a larger step mostly amplifies their noise
    (instab_sigma_mismatch: critic_teacher_error 0.045 at its alpha_w = 0.2, 2.2 at the fastest 11.8), so
    it is not offered. For the gradient-TD critics the step scales alpha_w and alpha_h together (eta, hence
    the matrix, unchanged)."""
    cur = ex.td()
    if cur is None or not cur.pop.radius < 1.0:
        return []
    iters = spec.run.outer_iters
    r = cur.pop.radius
    tau_now = f"time constant {_fmt(1.0 / (1.0 - r))} iterations"
    need = math.ceil(math.log(0.05) / math.log(r))  # r^T <= 0.05: the slowest mode down to 5%
    run_longer = f"raise run.outer_iters from {iters} to about {need} (r^T = 0.05 at the exact radius {_fmt(r)})"
    alpha, best = fastest_step(cur.pop.eig)
    alpha_w = spec.critic.alpha_w
    if not ratios_ok:
        return [f"the expected critic update is stable but slow for this run ({tau_now}) -> {run_longer}; a larger "
                "alpha_w would mostly amplify the importance weights' noise until rho_sane passes."]  # fmt: skip
    if not (math.isfinite(alpha) and best < r):
        return [f"the expected critic update is stable but slow for this run ({tau_now}) -> {run_longer}."]
    check = ex.td(alpha_w=alpha)
    radius = check.pop.radius if check is not None else best
    tau = 1.0 / (1.0 - radius) if radius < 1.0 else math.inf
    alpha_h = f", critic.alpha_h = {_fmt(alpha * spec.critic.alpha_h / alpha_w)}" if spec.critic.algorithm in ("tdc", "gtd2") else ""
    return [
        f"the expected critic update is stable but slow for this run ({tau_now}) -> "
        f"critic.alpha_w = {_fmt(alpha)}{alpha_h} contracts fastest (exact radius {_fmt(radius)}, time constant {_fmt(tau)} "
        f"iterations), or {run_longer}. Larger steps also carry more of the sampled updates' noise."
    ]


def _ratio_remedies(spec: Spec, result: LoopResult) -> list[str]:
    """Verified settings that bring the second moment of the used weights under health.rho2_max."""
    p = spec.policy
    m = spec.env.action_dim
    cap = spec.health.rho2_max
    clip = spec.rho.clip if spec.rho.clip_enabled else math.inf
    steps = []

    def e2(p_mix: float, c: float) -> float:
        return ratio_moments(m, p.sigma_pi, p.sigma_mu, p_mix, c).e_rho_bar2

    if e2(0.999, clip) <= cap and e2(p.p_mix, clip) > cap:
        need = _bisect(lambda x: e2(x, clip) <= cap, p.p_mix, 0.999)
        bar = "_bar" if math.isfinite(clip) else ""
        steps.append(f"raise policy.p_mix to {_fmt(need)} or more: E_b[rho{bar}^2] = {_fmt(cap)} there (exact, equal means).")
    if not spec.rho.clip_enabled:
        c = _bisect(lambda x: e2(p.p_mix, x) > cap, 1e-6, 1e6)
        rm = ratio_moments(m, p.sigma_pi, p.sigma_mu, p.p_mix, c)
        steps.append(
            f"or enable rho.clip with rho.clip = {_fmt(c)}: E_b[rho_bar^2] = {_fmt(rm.e_rho_bar2)}, clipping removes "
            f"{_fmt(1 - rm.e_rho_bar)} of the weight and moves the fixed point to the value of noise {_fmt(rm.sigma_eff)} (exact)."
        )
    else:
        steps.append(f"rho.clip = {_fmt(spec.rho.clip)} is already on; lower it further only at the price of more bias.")
    return steps


def judge(spec: Spec, result: LoopResult, backend: Backend | None = None) -> Verdict:
    """The run's verdict (health.evaluate) with its advice, whose remedies `backend` evaluates exactly."""
    verdict = evaluate(spec, result)
    verdict.next_steps = advise(spec, result, verdict, backend)
    return verdict


def advise(spec: Spec, result: LoopResult, verdict: Verdict, backend: Backend | None = None) -> list[str]:
    """Turn findings into advice, citing theory where it applies and checking remedies exactly."""
    steps: list[str] = []
    by = verdict.by_name()
    p = spec.policy
    ex_row = last_exact(result)
    ex = _Exact(spec, result, backend)
    if result.interrupted:
        steps.append(f"run was interrupted after {result.completed} iteration(s) -> rerun to complete it.")

    rho = by["rho_sane"]
    if rho.kind in ("rho_second_moment", "rho_second_moment_undetermined"):
        if ex_row is not None and ex_row["exact_ratio_available"] == 1.0:
            steps.append("the importance weights' second moment is over health.rho2_max ->")
            steps += _ratio_remedies(spec, result)
        else:
            more = "" if spec.rho.clip_enabled else ", or enable rho.clip"
            steps.append(
                f"the importance weights' second moment is over health.rho2_max -> raise p_mix or beta, bring sigma_pi closer to sigma_mu{more}."
            )
        if rho.kind == "rho_second_moment_undetermined":
            steps.append("the estimate is within its noise of the threshold -> more iterations (run.last_k) or a larger run.batch narrows it.")
    elif rho.kind == "rho_tail":
        more = "enable rho.clip, " if not spec.rho.clip_enabled else ""
        steps.append(f"importance weights are heavy-tailed (PSIS k_hat) -> {more}raise p_mix, or bring sigma_pi closer to sigma_mu.")
    elif rho.kind == "clip_mass":
        steps.append(
            f"clipping at {_fmt(spec.rho.clip)} removes most of the importance weight -> raise rho.clip (the critic's step shrinks "
            "by E_b[rho_bar] and its fixed point moves away from the teacher), or raise p_mix so that fewer ratios need clipping."
        )
    elif rho.kind == "clip_bias":
        steps.append("the clipped TD fixed point is biased away from the teacher (exact gap in Exact Expected TD) -> raise rho.clip or p_mix.")
    # Non-finite ratios are counted from the probes, not read from the reason: rho_sane shows one finding,
    # and a FAIL of the second moment hides the WARN that counts them.
    if rho.kind == "rho_nonfinite" or nonfinite_ratios(result) is not None:
        steps.append(
            "some importance ratios were not finite (states or gains overflowed) -> they are counted in rho_nonfinite and "
            "left out of the rho statistics; lower actor.alpha_pi or critic.alpha_w."
        )
    if rho.status != "PASS":
        if math.isinf(e_mu_rho2(spec.env.action_dim, p.sigma_pi, p.sigma_mu)):
            steps.append(
                f"theory: E_mu[(pi/mu)^2] is infinite because sigma_pi^2 = {p.sigma_pi**2:.4g} >= 2 sigma_mu^2 = "
                f"{2 * p.sigma_mu**2:.4g}; without p_mix or clipping the variance of every importance-weighted average is unbounded."
            )
        if p.p_mix > 0:
            steps.append(f"theory: the defensive mixture bounds rho by 1/p_mix = {1 / p.p_mix:.4g}.")

    fin = by["finite"]
    if fin.status == "FAIL":
        if by["stable"].kind == "td_diverges_any_step":
            steps.append(f"{fin.reason} -> expected: no step size is stable here (see the stable check and its remedies).")
        else:
            options = []
            if spec.critic.alpha_w > 0:
                crit = ex_row["exact_alpha_w_crit"] if ex_row is not None else math.nan
                below = f" (below the exact alpha_w* = {_fmt(crit)})" if math.isfinite(crit) and crit > 0 else ""
                options.append(f"lower critic.alpha_w (now {spec.critic.alpha_w:g}){below}")
            if spec.actor.alpha_pi > 0:
                options.append(f"lower actor.alpha_pi (now {spec.actor.alpha_pi:g})")
            if not spec.rho.clip_enabled:
                options.append("enable rho.clip")
            steps.append(f"{fin.reason} -> " + (", or ".join(options) or "reduce the off-policy mismatch") + ".")

    stab = by["stable"]
    if stab.kind in ("step_too_large", "td_diverges_any_step") and ex_row is not None:
        steps += _stability_remedies(spec, ex, stab.kind, ex_row)
    elif stab.kind in ("td_diverges_estimate", "step_too_large_estimate"):
        steps.append("the estimated expected TD update expands -> lower critic.alpha_w, raise p_mix or beta, or lower gamma.")
    elif stab.kind == "undetermined":
        row = last_row(result, "stability_probe")
        if row is not None:
            z = z_level(spec)
            pairs = [(abs(row["stability_radius"] - 1.0), row["stability_radius_se"]), (abs(row["a_min_real_eig"]), row["a_min_real_eig_se"])]
            margins = [d / se for d, se in pairs if se > 0]  # a zero standard error (one sub-batch) gives no margin
            finite = [x for x in margins if math.isfinite(x) and x > 0]
            factor = (z / min(finite)) ** 2 if finite else math.nan
            size = spec.probes.stability.batch_size
            need = f"about {_fmt(math.ceil(size * factor))}" if math.isfinite(size * factor) else "a larger value"
            steps.append(
                f"the stability estimate straddles the boundary -> raise probes.stability.batch_size from {size} to {need} "
                "(the interval shrinks like 1/sqrt(batch_size)), or add margin (raise p_mix, lower gamma)."
            )
    elif stab.kind == "slow" and ex_row is not None:
        steps += _slow_remedies(spec, ex, by["rho_sane"].status == "PASS")
    elif stab.kind == "frozen_unstable":
        steps.append("the critic is frozen (alpha_w = 0); with any step size TD(0) would diverge on this data (exact).")
    elif stab.kind == "boundary":
        steps.append("the exact expected TD map sits on the stability boundary -> add margin: lower alpha_w, raise p_mix or lower gamma.")
        critics = _critic_remedies(spec, ex) if ex_row is not None else []
        if critics:
            steps.append("other critics on the same data, checked with the exact theory: " + "; ".join(critics) + ".")
    if by["teacher"].status != "PASS":
        steps.append(
            "theory: the closed loop sqrt(gamma) * rho(A + B K_pi) >= 1, so the policy's value is infinite -> lower actor.alpha_pi "
            "or start from a stabilising policy.k_init."
        )
    fp = by["fixed_point"]
    if fp.status != "PASS" and fp.kind != "nonfinite":
        steps.append("the fixed-point solve did not converge -> raise probes.fixed_point.num_iters or batch_size (A_hat may be near singular).")
    if by["td_consistency"].status == "FAIL":
        steps.append("the q-kernel TD loss disagrees with the feature TD loss -> a bug in the feature map: report it with the spec.")
    if all(c.status == "PASS" for c in verdict.checks):  # a "slow" note may precede it
        margin = ""
        if ex_row is not None and ex_row["exact_available"] == 1.0 and spec.critic.alpha_w > 0:
            margin = f" (alpha_w is {_fmt(spec.critic.alpha_w / ex_row['exact_alpha_w_crit'])} of the critical step alpha_w*, exact)"
        steps.append(
            f"all checks pass{margin} -> push the regime (lower p_mix, widen sigma_pi / sigma_mu) or raise gamma to look for the boundary."
        )
    return steps
