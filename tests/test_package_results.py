"""A run's result as a notebook user meets it (issue 12): a one-line repr instead of 47 KB, the health table
in Jupyter (`_repr_markdown_`), and `summary()`, the headline numbers as one flat row."""

from __future__ import annotations

import math

import numpy as np
import pytest

import offtd
from conftest import ROOT

SPECS = ROOT / "specs"
SHORT = {"run.outer_iters": 4}  # deterministic (seed 0) and ~0.05 s on the Rust core


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """no_stable_step at 4 iterations: rho_sane and stable FAIL (as in tests/test_shipped_specs.py), the
    others PASS; written to a run directory."""
    out = tmp_path_factory.mktemp("runs")
    return offtd.run(SPECS / "no_stable_step.toml", out=out, **SHORT)


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_repr_is_one_short_line_with_name_status_flagged_iterations_and_run_dir(failing):
    text = repr(failing)
    assert "\n" not in text and len(text) < 400  # was 47 KB: the whole report and every series
    assert text.startswith("<RunResult 'no_stable_step', seed 0, rust backend: FAIL (")
    assert "rho_sane:FAIL" in text and "stable:FAIL" in text
    for name in ("finite", "fixed_point", "td_consistency", "teacher"):  # PASS checks are not listed
        assert name not in text
    assert "4 of 4 iterations" in text
    assert repr(str(failing.run_dir)) in text
    assert str(failing) == text


def test_repr_of_a_run_kept_in_memory_and_of_a_divergence():
    res = offtd.run(SPECS / "diverging_critic.toml", **{"critic.alpha_w": 1e6, "run.outer_iters": 40})
    text = repr(res)
    assert "FAIL (finite:FAIL, stable:FAIL)" in text
    done, at = res.report["run_info"]["completed_iters"], res.report["run_info"]["diverged_at"]
    assert at is not None and f"{done} of 40 iterations, diverged at iteration {at}" in text
    assert "not written" in text
    clean = offtd.run(None, **SHORT)
    assert clean.status == "PASS"
    assert ": PASS; 4 of 4 iterations;" in repr(clean)


def test_loaded_run_has_the_same_repr_and_summary(failing):
    again = offtd.load_run(failing.run_dir)
    assert repr(again) == repr(failing)
    a, b = failing.summary(), again.summary()
    assert a.keys() == b.keys()
    assert all(_same(a[k], b[k]) for k in a), {k: (a[k], b[k]) for k in a if not _same(a[k], b[k])}


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in rows]


def test_markdown_shows_the_health_table(failing):
    text = failing._repr_markdown_()
    rows = _table_rows(text)
    assert rows[0] == ["check", "status", "reason"]
    assert rows[1] == ["---", "---", "---"]
    body = rows[2:]
    assert [r[0] for r in body] == ["finite", "rho_sane", "stable", "fixed_point", "td_consistency", "teacher"]
    assert {r[0]: r[1] for r in body} == {c["name"]: c["status"] for c in failing.checks}
    assert "FAIL" in text.splitlines()[2]  # the status line, after the heading line
    assert len(text) < 4000


def test_markdown_escapes_the_name():
    res = offtd.run(None, name="a|b <i>x [l](u)", **SHORT)
    head = res._repr_markdown_().splitlines()[0]
    assert "<i>" not in head and "&lt;i>x" in head  # no HTML reaches the notebook
    assert "](" not in head  # no link


def test_summary_is_one_flat_row_of_the_headline_numbers(failing):
    row = failing.summary()
    k = failing.spec.run.last_k
    s, ps = failing.series, failing.probe_series
    # Each number recomputed here from the per-iteration series (rounding of a mean over <= last_k terms).
    assert row["mean_rho2"] == pytest.approx(np.mean(s["mean_rho2"][-k:]), rel=1e-12)
    assert row["td_loss"] == pytest.approx(np.mean(s["td_loss"][-k:]), rel=1e-12)
    assert row["critic_teacher_error"] == s["critic_teacher_error"][-1]
    assert row["w_norm"] == s["w_norm"][-1]
    assert row["dist_action_kl"] == ps["distribution_probe"]["dist_action_kl"][-1]
    assert row["rho_khat_pi_b"] == ps["fixed_point_probe"]["rho_khat"][-1]
    assert row["w_gap"] == ps["fixed_point_probe"]["w_gap"][-1]
    assert row["stability_radius"] == ps["stability_probe"]["stability_radius"][-1]
    assert row["a_min_real_eig"] == ps["stability_probe"]["a_min_real_eig"][-1]
    assert row["exact_radius"] == ps["exact_td"]["exact_radius"][-1]
    assert row["exact_min_re_eig"] == ps["exact_td"]["exact_min_re_eig"][-1] < 0  # no stable step (MODEL.md 9.8)
    assert row["exact_alpha_w_crit"] == ps["exact_td"]["exact_alpha_w_crit"][-1]
    assert (row["name"], row["seed"], row["backend"], row["status"]) == ("no_stable_step", 0, "rust", "FAIL")
    assert row["flagged"] == "rho_sane:FAIL stable:FAIL"
    assert (row["completed_iters"], row["outer_iters"], row["diverged_at"]) == (4, 4, None)
    assert row["run_dir"] == str(failing.run_dir)
    assert all(v is None or type(v) in (str, int, float) for v in row.values()), row


def test_summary_of_runs_makes_a_dataframe(failing):
    pd = pytest.importorskip("pandas")  # in the test extra: never skipped by tests/run_all.sh
    other = offtd.run(None, **SHORT)
    frame = pd.DataFrame([failing.summary(), other.summary()])
    assert list(frame["status"]) == ["FAIL", "PASS"]
    assert frame["mean_rho2"].dtype == float


def test_summary_of_a_run_without_probes_says_not_measured():
    off = {f"probes.{p}.enabled": False for p in ("distribution", "fixed_point", "stability", "q_kernel")}
    row = offtd.run(None, **SHORT, **off).summary()
    for name in ("dist_action_kl", "rho_khat_pi_b", "w_gap", "stability_radius", "a_min_real_eig"):
        assert row[name] is None, name
    assert math.isfinite(row["mean_rho2"])
    assert math.isfinite(row["exact_radius"])  # computed at every probe iteration (run.probe_every), probes on or off
