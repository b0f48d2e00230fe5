"""End to end: `offtd run` as a subprocess on the reference backend, and the Python API around it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import offtd
from conftest import ROOT
from offtd.report import jsonable

INSTAB = str(ROOT / "specs" / "instab_sigma_mismatch.toml")


@pytest.fixture(scope="module")
def instab_run(tmp_path_factory, offtd_cmd):
    out = tmp_path_factory.mktemp("out")
    proc = offtd_cmd("run", INSTAB, "--backend", "python", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.splitlines()[0])
    return proc, run_dir, json.loads((run_dir / "report.json").read_text())


def test_instab_fails_on_rho(instab_run):
    proc, run_dir, report = instab_run
    assert proc.stdout.splitlines()[1].startswith("status: FAIL (rho_sane:")
    assert report["health"]["status"] == "FAIL"
    checks = {c["name"]: c for c in report["health"]["checks"]}
    assert checks["rho_sane"]["status"] == "FAIL" and "rho exceeds threshold" in checks["rho_sane"]["reason"]
    assert any("second moment is over health.rho2_max" in s for s in report["next_steps"])
    assert any("E_mu[(pi/mu)^2] is infinite" in s for s in report["next_steps"])


def test_instab_matches_the_example_report(instab_run):
    _, run_dir, report = instab_run
    dist = report["probes"]["distribution_probe"]
    # The example's KL to its printed 4 significant digits; the closed form is 5.8028.
    for col in ("last", "min", "max"):
        assert f"{dist['dist_action_kl'][col]:.4g}" == "5.803"
    # inf rho = (sigma_mu / sigma_pi)^2 = 1/9, attained only at the mean: the minimum of 4096 draws
    # sits within 0.1% of it (P(rho < 1.001/9) ~ chi2_2 CDF at 0.009 ~ 0.45% per draw).
    assert dist["rho_min"]["last"] == pytest.approx(1 / 9, rel=1e-3)
    # td_loss_from_Q recomputes the loss through the kernel form of V_w (numpy) and agrees with the
    # rollout kernel's feature-based td_loss to rounding (the old code's factor 2 is gone).
    q = report["probes"]["q_kernel_probe"]
    assert q["td_loss_from_Q_rel_diff"]["max"] < 1e-12


def test_report_files_and_sections(instab_run):
    _, run_dir, report = instab_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"report.md", "report.json", "spec.toml", "series.csv"} <= names
    assert {f"{p}.csv" for p in report["probe_series"]} <= names
    md = (run_dir / "report.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:8] == [
        "## Run Info", "## Health", "## Scale Checks", "## Core Metrics", "## Probe Metrics",
        "## Samples (Head)", "## Samples (Tail)", "## Next Steps",
    ]  # fmt: skip
    for probe in ("distribution_probe", "fixed_point_probe", "q_kernel_probe", "stability_probe"):
        assert f"### {probe}" in md
    assert "| metric | last | min | max | mean_last_k | slope_last_k |" in md
    for metric in ("td_loss", "w_norm", "mean_rho2", "tracking_gap", "critic_teacher_error"):
        assert f"| {metric} |" in md
    assert "## Theory" in md
    # report.json is strict JSON: the parser rejects NaN/Infinity tokens when asked to.
    json.loads((run_dir / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    for key in ("run_info", "health", "scale_checks", "core_metrics", "probes", "series", "probe_series", "next_steps", "theory"):
        assert key in report
    assert report["run_info"]["backend"] == "python"
    assert report["run_info"]["spec"]["policy"]["sigma_mu"] == 0.2


def test_series_files_read_with_pandas(instab_run):
    import pandas as pd  # a test dependency: never skipped
    _, run_dir, report = instab_run
    df = pd.read_csv(run_dir / "series.csv")
    assert len(df) == 80 and np.allclose(df["mean_rho2"], report["series"]["mean_rho2"], rtol=1e-15)
    probe = pd.read_csv(run_dir / "fixed_point_probe.csv")
    assert list(probe["iter"]) == [5.0 * i for i in range(1, 16)] + [79.0]


def test_load_run_round_trips(instab_run):
    _, run_dir, report = instab_run
    loaded = offtd.load_run(run_dir)
    # in memory non-finite numbers are floats; in the file they are "inf" / "nan" strings
    assert jsonable(loaded.report) == report
    assert loaded.status == "FAIL"
    assert loaded.spec == offtd.load_spec(INSTAB)
    assert loaded.series["mean_rho2"].shape == (80,)


def test_matched_policies_pass_rho_sane(tmp_path):
    res = offtd.run(
        None,
        backend="python",
        out=tmp_path,
        **{"policy.sigma_pi": 0.5, "policy.sigma_mu": 0.5, "policy.p_mix": 0.0, "run.outer_iters": 6, "run.horizon": 50},
    )
    checks = {c["name"]: c for c in res.checks}
    assert checks["rho_sane"]["status"] == "PASS"
    # Identical noise and tracked means: rho stays near 1 (the gains differ only by the tracking gap).
    assert np.all(np.abs(res.series["mean_rho2"] - 1.0) < 0.05)
    assert (res.run_dir / "report.json").exists()


def test_run_dirs_are_never_reused(tmp_path, offtd_cmd):
    args = ("run", "--backend", "python", "--out", str(tmp_path), "--set", "run.outer_iters=1", "--set", "run.horizon=10")
    first, second = offtd_cmd(*args), offtd_cmd(*args)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    d1, d2 = first.stdout.splitlines()[0], second.stdout.splitlines()[0]
    assert d1 != d2 and Path(d1).exists() and Path(d2).exists()
    # --run-dir of an existing directory is refused, and nothing in it changes.
    before = sorted(p.name for p in Path(d1).iterdir())
    third = offtd_cmd(*args, "--run-dir", d1)
    assert third.returncode == 2 and "already exists" in third.stderr
    assert sorted(p.name for p in Path(d1).iterdir()) == before


def test_fail_on_trips_exit_1(tmp_path, offtd_cmd):
    proc = offtd_cmd(
        "run", "--backend", "python", "--out", str(tmp_path), "--fail-on", "fail",
        "--set", "run.outer_iters=2", "--set", "run.horizon=20", "--set", "health.rho2_max=0.5",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "status: FAIL (rho_sane" in proc.stdout


def test_default_experiment_is_embedded(tmp_path, offtd_cmd):
    # Outside the source tree, `offtd run` with no spec runs the packaged default experiment.
    proc = offtd_cmd("run", "--backend", "python", "--out", str(tmp_path), "--set", "run.outer_iters=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.splitlines()[0])
    assert json.loads((run_dir / "report.json").read_text())["run_info"]["name"] == "default"


def test_packaged_specs_equal_the_repository_specs():
    from importlib import resources

    for name in ("default.toml", "instab_sigma_mismatch.toml"):
        packaged = resources.files("offtd").joinpath(f"specs/{name}").read_text()
        assert packaged == (ROOT / "specs" / name).read_text(), name


def test_probes_do_not_change_training():
    # MODEL.md section 1: every probe has its own streams, so switching probes off leaves the
    # training series bit-identical.
    small = {"run.outer_iters": 6, "run.horizon": 30, "run.probe_every": 2}
    on = offtd.run(None, backend="python", **small)
    off = offtd.run(
        None,
        backend="python",
        **small,
        **{f"probes.{p}.enabled": False for p in ("distribution", "fixed_point", "stability", "q_kernel")},
    )
    # the exact metrics (no random draws) are computed at probe iterations either way
    assert on.probe_series and set(off.probe_series) == {"exact_td"}
    for name in ("td_loss", "w_norm", "mean_rho2", "tracking_gap", "critic_teacher_error"):
        assert np.array_equal(on.series[name], off.series[name]), name


def test_same_seed_same_report_other_seed_different():
    small = {"run.outer_iters": 3, "run.horizon": 20}
    a = offtd.run(None, backend="python", **small)
    b = offtd.run(None, backend="python", **small)
    c = offtd.run(None, backend="python", **small, **{"run.seed": 1})
    strip = lambda r: {k: v for k, v in r.report.items() if k != "run_info"}  # noqa: E731
    assert jsonable(strip(a)) == jsonable(strip(b))  # NaN-safe comparison
    assert not math.isclose(a.series["td_loss"][0], c.series["td_loss"][0])
