"""Advice reads a check's `kind` and the loop's counts, never the reason text (issue 12)."""

from __future__ import annotations

import dataclasses

from offtd.advice import advise
from offtd.health import evaluate
from test_health_units import make_result, make_spec


def _with_rho(verdict, **changes):
    checks = [dataclasses.replace(c, **changes) if c.name == "rho_sane" else c for c in verdict.checks]
    return dataclasses.replace(verdict, checks=checks, status="FAIL")


def _mentions_nonfinite(steps: list[str]) -> bool:
    return any("rho_nonfinite" in s for s in steps)


def test_reason_text_alone_does_not_trigger_advice():
    spec, result = make_spec(), make_result()
    verdict = _with_rho(evaluate(spec, result), status="FAIL", kind="rho_second_moment",
                        reason="rho exceeds threshold; 3 non-finite importance ratio(s) in a user's spec name")  # fmt: skip
    assert not _mentions_nonfinite(advise(spec, result, verdict))


def test_nonfinite_ratios_hidden_behind_a_fail_still_get_their_advice():
    spec = make_spec()
    result = make_result(probes={"distribution_probe": [{"iter": 5.0, "rho_nonfinite": 2.0}]})
    verdict = _with_rho(evaluate(spec, result), status="FAIL", kind="rho_second_moment", reason="rho exceeds threshold")
    assert _mentions_nonfinite(advise(spec, result, verdict))
    assert not _mentions_nonfinite(advise(spec, make_result(), _with_rho(evaluate(spec, make_result()), kind="rho_second_moment")))
