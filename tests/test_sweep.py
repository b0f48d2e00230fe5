"""`offtd sweep`: a grid of overrides, one run directory per cell, a summary table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offtd.spec import SpecError, load_spec
from offtd.sweep import cells, parse_grid

TINY = ["--set", "run.outer_iters=2", "--set", "run.horizon=20", "--set", "run.probe_every=1",
        "--set", "probes.distribution.num_samples=256", "--set", "probes.fixed_point.batch_size=256",
        "--set", "probes.stability.batch_size=256"]  # fmt: skip


def test_parse_grid_values_are_toml():
    grid = parse_grid(["policy.p_mix=0,0.1", "rho.clip_enabled=false,true", "name=a,b", "env.b=[[1.0],[0.5]];[[0.5],[1.0]]"])
    assert grid["policy.p_mix"] == [0, 0.1]
    assert grid["rho.clip_enabled"] == [False, True]
    assert grid["name"] == ["a", "b"]
    assert grid["env.b"] == [[[1.0], [0.5]], [[0.5], [1.0]]]


def test_cells_are_the_cartesian_product_and_validated():
    base = load_spec(None)
    grid = {"policy.p_mix": [0.0, 0.1, 0.2], "critic.gamma": [0.5, 0.9]}
    all_cells = cells(base, grid)
    assert len(all_cells) == 6
    assert {(c.spec.policy.p_mix, c.spec.critic.gamma) for c in all_cells} == {
        (p, g) for p in grid["policy.p_mix"] for g in grid["critic.gamma"]
    }
    with pytest.raises(SpecError, match=r"cell 1 \(policy.p_mix=1.5\).*policy.p_mix"):
        cells(base, {"policy.p_mix": [0.0, 1.5]})


def test_sweep_cli_writes_every_cell_and_a_table(tmp_path, offtd_cmd):
    proc = offtd_cmd(
        "sweep", "--backend", "python", "--out", str(tmp_path), *TINY,
        "--grid", "policy.p_mix=0,0.2", "--grid", "policy.sigma_pi=0.3,0.6",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    root = Path(proc.stdout.splitlines()[0])
    assert proc.stdout.splitlines()[1].startswith("4/4 cells")
    import csv

    rows = list(csv.DictReader((root / "sweep.csv").open()))
    assert [int(r["cell"]) for r in rows] == [0, 1, 2, 3]
    for r in rows:
        report = json.loads((Path(r["run_dir"]) / "report.json").read_text())
        spec = report["run_info"]["spec"]
        assert float(r["policy.p_mix"]) == spec["policy"]["p_mix"]
        assert float(r["policy.sigma_pi"]) == spec["policy"]["sigma_pi"]
        assert r["status"] == report["health"]["status"]
        assert float(r["mean_rho2"]) == pytest.approx(report["core_metrics"]["mean_rho2"]["mean_last_k"], rel=1e-12)
    assert "| cell | policy.p_mix | policy.sigma_pi | status |" in (root / "sweep.md").read_text()


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["planned", "pool"])
def test_sweep_rejects_a_bad_cell_before_running(tmp_path, offtd_cmd, workers):
    """Also with a pool whose workers are still being started (from a background thread, while the grid
    is validated): one line, exit 2, nothing written, no traceback from the pool's teardown."""
    proc = offtd_cmd("sweep", "--backend", "python", "--out", str(tmp_path), "--grid", "policy.sigma_mu=0.5,-1", *workers)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "policy.sigma_mu" in proc.stderr and "cell 1" in proc.stderr
    assert not any(tmp_path.iterdir())
