"""Unit tests of the report's rendering (python/offtd/report.py, summary.fmt) on hand-built reports:
the markdown layout section by section, the table layout and its escaping, the number format, and
non-finite and missing values in markdown, JSON and CSV (specs/MODEL.md 8). The expected text is written
out here, not produced by the code under test."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from offtd.report import (
    SAMPLE_COLUMNS,
    SAMPLE_ROWS,
    _table,
    decode_nonfinite,
    eigenvalues_csv,
    md,
    plain,
    render_markdown,
    series_csv,
    to_json,
)
from offtd.summary import fmt

INF, NAN = math.inf, math.nan


def _summary(last, lo=1.0, hi=2.0, mean=1.5, slope=0.0) -> dict[str, float]:
    return {"last": last, "min": lo, "max": hi, "mean_last_k": mean, "slope_last_k": slope}


def make_report(n: int = 3, **changes) -> dict:
    """A report with `n` iterations, two probes (distribution at iteration 1, stability at the last),
    numbers chosen so that each prints differently."""
    iters = [float(t) for t in range(n)]
    series = {"iter": iters}
    for j, name in enumerate(c for c in SAMPLE_COLUMNS[1:] if c not in ("fixed_point_gap", "stability_proxy", "dist_mmd2")):
        series[name] = [float(10 * j + t) for t in range(n)]
    report = {
        "run_info": {"run_dir": "out/x/1", "timestamp": "2026-01-01T00:00:00", "seed": 7, "key_hparams": "p_mix=0.1",
                     "backend": "rust", "name": "x", "completed_iters": n, "outer_iters": n},  # fmt: skip
        "health": {
            "status": "WARN",
            "status_line": "status: WARN (rho_sane: k_hat > 0.7)",
            "checks": [
                {"name": "finite", "status": "PASS", "reason": "all finite", "kind": "ok"},
                {"name": "rho_sane", "status": "WARN", "reason": "k_hat > 0.7", "kind": "rho_tail"},
            ],
        },
        "scale_checks": {"train_step_scale": 0.001, "stability_probe_step_scale": 0.001, "stability_probe_step_scale_ratio": 1.0},
        "core_metrics": {"td_loss": _summary(0.5), "w_norm": _summary(INF, hi=INF)},
        "probes": {
            "stability_probe": {"stability_radius": _summary(0.99)},
            "distribution_probe": {"mmd2": _summary(NAN)},
        },
        "series": series,
        "probe_series": {
            "distribution_probe": {"iter": [1.0], "mmd2": [0.25]},
            "stability_probe": {"iter": [float(n - 1)], "stability_proxy": [0.75]},
        },
        "next_steps": ["lower critic.alpha_w"],
        "theory": {"e_rho2": {"predicted": INF, "measured": 12.5, "note": "infinite: sigma_pi^2 >= 2 sigma_mu^2"}},
        "exact": {},
    }
    report.update(changes)
    return report


def _section(text: str, heading: str) -> list[str]:
    """The lines under `heading` up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading) + 1
    level = heading.split(" ")[0]
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#") and
                lines[i].split(" ")[0] <= level), len(lines))  # fmt: skip
    return [line for line in lines[start:end] if line]


def _cells(row: str) -> list[str]:
    """Cells of a markdown table row, splitting on pipes that are not escaped."""
    inner = row.strip()
    assert inner.startswith("| ") and inner.endswith(" |"), row
    out, cur, i = [], "", 1
    while i < len(inner) - 1:
        c = inner[i]
        if c == "\\" and i + 1 < len(inner):
            cur += inner[i : i + 2]
            i += 2
            continue
        if c == "|":
            out.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    out.append(cur.strip())
    return out


# ------------------------------------------------------------------------------------------ number format


@pytest.mark.parametrize(
    "x,text",
    [
        (None, "-"), (NAN, "nan"), (INF, "inf"), (-INF, "-inf"), (0.0, "0"), (-0.0, "0"), (3.0, "3"), (-12.0, "-12"),
        (999999.0, "999999"), (1e6, "1e+06"), (0.5, "0.5"), (1 / 3, "0.3333"), (123456.7, "1.235e+05"),
        (1e-5, "1e-05"), (2.0**0.5 * 1e-300, "1.414e-300"), (7, "7"), (np.float64(2.5), "2.5"), (np.int64(4), "4"),
    ],
)  # fmt: skip
def test_number_format(x, text):
    assert fmt(x) == text


# ---------------------------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    "raw,plain_text,in_table",
    [
        ("p_mix=0.1", "p_mix=0.1", "p_mix=0.1"),
        ("a|b", "a|b", "a\\|b"),  # pipes matter only in a table
        ("line\nnext", "line\\nnext", "line\\nnext"),  # one line: a name cannot start a heading
        ("\x1b[31mred", "\\x1b[31mred", "\\x1b[31mred"),
        ("C:\\dir", "C:\\\\dir", "C:\\\\dir"),  # a backslash is doubled before control characters are escaped
        ("<script>x", "&lt;script>x", "&lt;script>x"),
        ("a < b", "a < b", "a < b"),  # a comparison stays readable
        ("&amp; &", "&amp;amp; &", "&amp;amp; &"),
        ("[t](http://x)", "[t]\\(http://x)", "[t]\\(http://x)"),  # no link
        ("# heading", "# heading", "# heading"),  # inline, never at a line start in the report
    ],
)
def test_md_escapes(raw, plain_text, in_table):
    assert md(raw) == plain_text
    assert md(raw, table=True) == in_table


def test_table_layout_and_escaped_cells_keep_the_columns():
    rows = _table(["check", "status", "reason"], [["a|b", "PASS", "x\ny"], ["c", "WARN", "<b>|</b"]])
    assert rows[0] == "| check | status | reason |"
    assert rows[1] == "| --- | --- | --- |"
    assert rows[2] == "| a\\|b | PASS | x\\ny |"
    assert rows[3] == "| c | WARN | &lt;b>\\|&lt;/b |"
    assert [len(_cells(r)) for r in rows] == [3, 3, 3, 3]
    assert _table(["only"], []) == ["| only |", "| --- |"]


# ----------------------------------------------------------------------------------------------- markdown


def test_markdown_sections_in_order():
    text = render_markdown(make_report(), elapsed_s=1.23456)
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Run Report", "## Run Info", "## Health", "## Scale Checks", "## Core Metrics", "## Probe Metrics",
        "### distribution_probe", "### stability_probe",  # sorted by name, not in report order
        "## Samples (Head)", "## Samples (Tail)", "## Next Steps", "## Theory", "## Health Checks",
    ]  # fmt: skip
    assert "## Exact Expected TD" not in text  # no exact rows: no section
    assert _section(text, "## Run Info") == [
        "- run_dir: out/x/1", "- timestamp: 2026-01-01T00:00:00", "- seed: 7", "- key_hparams: p_mix=0.1",
        "- backend: rust", "- name: x", "- iterations: 3 of 3 completed in 1.23 s",
    ]  # fmt: skip
    assert _section(text, "## Health") == ["- status: WARN (rho_sane: k_hat > 0.7)"]
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_markdown_without_elapsed_time_and_scale_ratio():
    rep = make_report()
    rep["scale_checks"]["stability_probe_step_scale_ratio"] = None
    rep["scale_checks"]["stability_probe_step_scale"] = None
    text = render_markdown(rep)
    assert "- iterations: 3 of 3 completed" in text.splitlines()
    assert _section(text, "## Scale Checks") == [
        "- train_step_scale: 0.001", "- stability_probe_step_scale: -", "- stability_probe_step_scale_ratio: - (expect ~1.0)",
    ]  # fmt: skip


def test_summary_tables_print_non_finite_values_as_words():
    text = render_markdown(make_report())
    core = _section(text, "## Core Metrics")
    assert core[0] == "| metric | last | min | max | mean_last_k | slope_last_k |"
    assert core[2:] == ["| td_loss | 0.5 | 1 | 2 | 1.5 | 0 |", "| w_norm | inf | 1 | inf | 1.5 | 0 |"]
    assert _section(text, "### distribution_probe")[2] == "| mmd2 | nan | 1 | 2 | 1.5 | 0 |"
    theory = _section(text, "## Theory")
    assert theory[2] == "| e_rho2 | inf | 12.5 | infinite: sigma_pi^2 >= 2 sigma_mu^2 |"


def test_samples_take_probe_columns_where_a_probe_ran():
    text = render_markdown(make_report(n=3))
    head = _section(text, "## Samples (Head)")
    assert _cells(head[0]) == list(SAMPLE_COLUMNS)
    rows = [dict(zip(SAMPLE_COLUMNS, _cells(r))) for r in head[2:]]
    assert [r["iter"] for r in rows] == ["0", "1", "2"]
    assert [r["dist_mmd2"] for r in rows] == ["-", "0.25", "-"]  # the distribution probe ran at iteration 1
    assert [r["stability_proxy"] for r in rows] == ["-", "-", "0.75"]
    assert [r["fixed_point_gap"] for r in rows] == ["-", "-", "-"]  # no fixed-point probe
    assert [r["td_loss"] for r in rows] == ["0", "1", "2"]
    assert _section(text, "## Samples (Tail)") == head  # 3 rows: head and tail are the same rows


def test_samples_show_the_first_and_last_rows_and_not_measured_as_dash():
    n = 2 * SAMPLE_ROWS + 3
    rep = make_report(n=n)
    rep["series"]["td_loss"][-1] = None  # not measured (after an interruption): "-"
    rep["series"]["w_norm"][-2] = NAN
    text = render_markdown(rep)
    head = [_cells(r) for r in _section(text, "## Samples (Head)")[2:]]
    tail = [_cells(r) for r in _section(text, "## Samples (Tail)")[2:]]
    assert [r[0] for r in head] == [str(t) for t in range(SAMPLE_ROWS)]
    assert [r[0] for r in tail] == [str(t) for t in range(n - SAMPLE_ROWS, n)]
    col = SAMPLE_COLUMNS.index
    assert tail[-1][col("td_loss")] == "-"
    assert tail[-2][col("w_norm")] == "nan"


def test_user_strings_are_escaped_everywhere():
    rep = make_report()
    rep["run_info"]["name"] = "n|<i>m\n# not a heading"
    rep["run_info"]["run_dir"] = "out/a\nb"
    rep["next_steps"] = ["see [here](javascript:x) & <b>now</b>"]
    rep["health"]["checks"][1]["reason"] = "a | b"
    text = render_markdown(rep)
    assert "- name: n|&lt;i>m\\n# not a heading" in text.splitlines()
    assert "- run_dir: out/a\\nb" in text.splitlines()
    assert "# not a heading" not in [line for line in text.splitlines() if line.startswith("#")]
    assert _section(text, "## Next Steps") == ["- see [here]\\(javascript:x) & &lt;b>now&lt;/b>"]
    checks = _section(text, "## Health Checks")
    assert _cells(checks[3]) == ["rho_sane", "WARN", "a \\| b"]


def test_exact_section_when_exact_rows_exist():
    rep = make_report(exact={"exact_radius": _summary(0.98), "exact_available": _summary(1.0, 1.0, 1.0, 1.0)})
    text = render_markdown(rep)
    lines = _section(text, "## Exact Expected TD")
    assert lines[0].startswith("Computed without sampling")
    assert lines[1] == "| metric | last | min | max | mean_last_k | slope_last_k |"
    assert lines[3:] == ["| exact_radius | 0.98 | 1 | 2 | 1.5 | 0 |", "| exact_available | 1 | 1 | 1 | 1 | 0 |"]
    assert text.splitlines()[-1].startswith("| exact_available")  # the last section


# ----------------------------------------------------------------------------------------- JSON and files


def test_json_spells_non_finite_numbers_and_keeps_null():
    rep = {"a": [1.0, INF, -INF, NAN, None], "b": {"c": np.float64(NAN), "d": np.int64(3), "e": np.bool_(True)}}
    text = to_json(rep)

    def refuse(token):
        raise AssertionError(f"bare {token} in report.json")

    data = json.loads(text, parse_constant=refuse)
    assert data == {"a": [1.0, "inf", "-inf", "nan", None], "b": {"c": "nan", "d": 3, "e": True}}
    back = decode_nonfinite(data)
    assert back["a"][:3] == [1.0, INF, -INF] and math.isnan(back["a"][3]) and back["a"][4] is None
    assert decode_nonfinite({"name": "infinity", "s": "inf "}) == {"name": "infinity", "s": "inf "}  # only exact words


def test_plain_turns_numpy_into_python():
    out = plain({1: np.arange(3), "f": np.float32(0.5), "t": (np.int8(1), [np.float64(INF)])})
    assert out == {"1": [0, 1, 2], "f": 0.5, "t": [1, [INF]]}
    assert type(out["f"]) is float and type(out["t"][0]) is int and type(out["1"][0]) is int


def test_series_csv_round_trips_and_leaves_not_measured_empty():
    x = 0.1 + 0.2  # not exactly representable in short decimal: repr keeps every bit
    text = series_csv({"iter": [0.0, 1.0, 2.0], "v": [x, INF, None], "w": [NAN, -0.0, 1e300]})
    lines = text.splitlines()
    assert lines[0] == "iter,v,w"
    assert lines[1] == f"0.0,{x!r},nan"
    assert lines[2] == "1.0,inf,-0.0"
    assert lines[3] == "2.0,,1e+300"
    assert float(lines[1].split(",")[1]) == x


def test_eigenvalues_csv_lists_estimate_then_exact():
    text = eigenvalues_csv({"exact": np.array([0.5 + 0.25j]), "estimate": np.array([1.0, 2.0 - 1.0j])})
    assert text == "source,re,im\n0,1.0,0.0\n0,2.0,-1.0\n1,0.5,0.25\n"
    assert eigenvalues_csv({}) == "source,re,im\n"
