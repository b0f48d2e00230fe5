"""The mutation-testing helpers stay usable: every reintroduced bug of issue 13 still applies to the
code (an edit whose text moved would make tests/mutation/reintroduce.py stop with exit 2, silently
testing nothing), each has test files for --fast, and the sample score's interval is the exact binomial
one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "mutation" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_reintroduced_bug_still_applies():
    reintroduce = _load("reintroduce")
    assert reintroduce.check(ROOT) == []  # an edit that no longer applies: update BUGS in reintroduce.py
    assert set(reintroduce.ISSUE_13) <= set(reintroduce.BUGS)
    for name in reintroduce.BUGS:
        assert reintroduce.FAST[name] and all((ROOT / f).is_file() for f in reintroduce.FAST[name]), name


@pytest.mark.parametrize("k, n", [(0, 20), (7, 20), (135, 150), (150, 150), (361, 380)])
def test_sample_interval_is_clopper_pearson(k, n):
    helper = _load("mutmut_sample")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = helper.clopper_pearson(k, n)
    # two evaluations of the same beta quantiles: agreement to 1e-12
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
