"""Divergence (issue 5, MODEL.md 3 "Divergence"): a run whose critic or policy blows up completes with
status FAIL, a reason naming the iteration where values stopped being finite, every metric up to that
iteration kept, later iterations recorded as not measured (null in report.json), and the report written.
Kernels have defined behaviour on non-finite input; the same spec and seed give the same report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import offtd
from conftest import ROOT, requires_rust
from offtd.report import jsonable

DIVERGING = str(ROOT / "specs" / "diverging_critic.toml")
SMALL_PROBES = (
    "--set", "probes.distribution.num_samples=256", "--set", "probes.fixed_point.batch_size=256",
    "--set", "probes.stability.batch_size=256",
)  # fmt: skip
CORE = ("td_loss", "w_norm", "mean_rho2", "tracking_gap")

# name -> (extra arguments on specs/diverging_critic.toml, what blows up)
BLOW_UPS = {
    # A critic step so large that w overflows (alpha_w = 20 alone only crosses w_norm_max; see below).
    "critic": ("--set", "critic.alpha_w=1e6", "--set", "run.outer_iters=40"),
    # A policy step that makes the closed loop A + B K_pi unstable: states, then the TD loss, overflow.
    "actor": ("--set", "actor.alpha_pi=100"),
    # An unstable closed loop from the start.
    "k_init": ("--set", "policy.k_init=[[3.0, 0.0], [0.0, 3.0]]"),
}


def _run(offtd_cmd, tmp_path: Path, *args: str):
    proc = offtd_cmd("run", DIVERGING, "--backend", "python", "--out", str(tmp_path), *SMALL_PROBES, *args)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    run_dir = Path(proc.stdout.splitlines()[0])
    return proc, run_dir, json.loads((run_dir / "report.json").read_text())


@pytest.fixture(scope="module", params=list(BLOW_UPS))
def blown(request, tmp_path_factory, offtd_cmd):
    proc, run_dir, report = _run(offtd_cmd, tmp_path_factory.mktemp(request.param), *BLOW_UPS[request.param])
    return request.param, proc, run_dir, report


def test_status_fail_names_the_iteration(blown):
    _, proc, _, report = blown
    t = report["run_info"]["diverged_at"]
    assert isinstance(t, int) and t >= 0
    status_line = proc.stdout.splitlines()[1]
    assert status_line.startswith(f"status: FAIL (finite: values stopped being finite at iteration {t} (")
    assert report["health"]["status"] == "FAIL" and report["health"]["status_line"] == status_line
    finite = {c["name"]: c for c in report["health"]["checks"]}["finite"]
    assert finite["status"] == "FAIL" and f"iteration {t}" in finite["reason"]
    assert report["run_info"]["completed_iters"] == t + 1
    assert report["run_info"]["interrupted"] is False


def test_metrics_kept_up_to_the_iteration_and_null_after(blown):
    _, _, run_dir, report = blown
    t = report["run_info"]["diverged_at"]
    outer = report["run_info"]["outer_iters"]
    series = report["series"]
    assert series["iter"] == list(range(outer))
    assert t < outer - 1, "the blow-up must leave iterations to record as non-finite"
    for name, values in series.items():
        assert len(values) == outer, name
        if name != "iter":
            assert all(v is None for v in values[t + 1 :]), f"{name} invented after iteration {t}"
    for name in CORE:
        before = series[name][:t]
        assert all(v is not None and math.isfinite(v) for v in before), name
    # The metric that broke is recorded as computed: non-finite at t ("inf" / "nan" in strict JSON).
    what = re.search(r"iteration \d+ \((\w+)\)", report["health"]["status_line"]).group(1)
    if what in series:
        assert series[what][t] in ("inf", "-inf", "nan")
    # Summaries are over what was computed: the max of w_norm is the max of the kept finite values.
    kept = [v for v in series["w_norm"][: t + 1] if isinstance(v, float)]
    if kept:
        assert report["core_metrics"]["w_norm"]["max"] == max(kept)
    # Probes ran only at iterations that happened.
    for cols in report["probe_series"].values():
        assert all(i <= t for i in cols["iter"])


def test_files_written_and_readable(blown):
    import pandas as pd  # a test dependency: never skipped
    _, _, run_dir, report = blown
    t = report["run_info"]["diverged_at"]
    md = (run_dir / "report.md").read_text()
    assert report["health"]["status_line"] in md
    # the tail rows after the blow-up were never run: "-" (not measured), not an invented number
    assert "## Samples (Tail)" in md and "| - |" in md.split("## Samples (Tail)")[1]
    df = pd.read_csv(run_dir / "series.csv")
    assert len(df) == report["run_info"]["outer_iters"]
    assert df.loc[t + 1 :, list(CORE)].isna().all().all()
    assert np.array_equal(df["td_loss"][:t].to_numpy(), np.array(report["series"]["td_loss"][:t], dtype=float))
    json.loads((run_dir / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    loaded = offtd.load_run(run_dir)
    assert loaded.status == "FAIL"
    assert np.isnan(loaded.series["td_loss"][t + 1 :]).all()


def test_probes_before_the_blow_up_are_kept(blown):
    name, _, _, report = blown
    t = report["run_info"]["diverged_at"]
    if name == "k_init":
        assert report["probe_series"] == {}  # diverged before the first probe iteration: none invented
        return
    rows = report["probe_series"]["stability_probe"]["iter"]
    assert rows == [float(i) for i in range(5, t + 1, 5)]
    for metric, summary in report["probes"]["stability_probe"].items():
        assert set(summary) == {"last", "min", "max", "mean_last_k", "slope_last_k"}, metric


def test_unstable_closed_loop_is_named(blown):
    name, _, _, report = blown
    checks = {c["name"]: c for c in report["health"]["checks"]}
    if name == "critic":
        assert checks["teacher"]["status"] == "PASS"  # the policy is fixed: only the critic blows up
        assert all(v is None or (isinstance(v, float) and v < 1) for v in report["series"]["closed_loop_radius"])
        return
    assert checks["teacher"]["status"] == "FAIL"
    assert any("closed loop" in s for s in report["next_steps"])
    radius = [float(v) for v in report["series"]["closed_loop_radius"] if v is not None]
    gamma = report["run_info"]["spec"]["critic"]["gamma"]
    assert max(radius) * math.sqrt(gamma) >= 1


def test_shipped_diverging_critic_fails_on_the_bound(tmp_path, offtd_cmd):
    """As shipped, alpha_w = 20 grows w geometrically but stays finite in 20 iterations: `finite` fails on
    w_norm_max (relative to ||w_teacher||) at the crossing iteration and every value is kept (none
    truncated, none invented). `stable` says why: alpha_w is far above the exact alpha_w*."""
    proc, run_dir, report = _run(offtd_cmd, tmp_path)
    assert report["run_info"]["diverged_at"] is None and report["run_info"]["completed_iters"] == 20
    m = re.fullmatch(
        r"status: FAIL \(finite: w_norm exceeded 1e\+06 x the teacher's scale at iteration (\d+): diverging\)",
        proc.stdout.splitlines()[1],
    )
    assert m, proc.stdout
    t = int(m.group(1))
    w, scale = report["series"]["w_norm"], report["series"]["teacher_w_norm"]
    assert w[t] > 1e6 * scale[t] and all(v <= 1e6 * c for v, c in zip(w[:t], scale[:t]))
    stable = {c["name"]: c for c in report["health"]["checks"]}["stable"]
    assert stable["status"] == "FAIL" and stable["kind"] == "step_too_large"
    assert all(v is not None and math.isfinite(v) for name in CORE for v in report["series"][name])


def _overflowing_probe_spec() -> dict:
    # One iteration of an unstable closed loop over a long horizon: the pool's late states overflow, so
    # the probes see non-finite ratios; the iteration is also the last, so the probes do run.
    return {
        "run.outer_iters": 1, "run.horizon": 1000, "run.batch": 1, "policy.k_init": [[3.0, 0.0], [0.0, 3.0]],
        "probes.distribution.num_samples": 256, "probes.fixed_point.batch_size": 256, "probes.stability.batch_size": 256,
    }  # fmt: skip


def test_nonfinite_ratios_are_counted_and_reported():
    res = offtd.run(DIVERGING, backend="python", **_overflowing_probe_spec())
    assert res.status == "FAIL" and res.report["run_info"]["diverged_at"] == 0
    counts = {p: res.probe_series[p]["rho_nonfinite"][0] for p in ("distribution_probe", "fixed_point_probe", "stability_probe")}
    assert all(c > 0 for c in counts.values()), counts
    dist = res.probe_series["distribution_probe"]
    assert dist["rho_nonfinite"][0] < dist["num_samples"][0]  # some ratios were finite ...
    assert math.isfinite(dist["rho_mean"][0]) and math.isfinite(dist["rho_max"][0])  # ... and are summarised
    checks = {c["name"]: c for c in res.checks}
    total = int(sum(counts.values()))
    assert checks["rho_sane"]["status"] == "WARN"
    assert f"{total} non-finite importance ratio(s)" in checks["rho_sane"]["reason"]
    assert "distribution_probe at iteration 0" in checks["rho_sane"]["reason"]
    assert any("rho_nonfinite" in s for s in res.report["next_steps"])
    # Overflowed probe inputs are named as such, not as solver trouble or a feature-map bug.
    assert "not finite" in checks["fixed_point"]["reason"] and "not finite" in checks["stable"]["reason"]
    assert checks["td_consistency"]["status"] == "PASS" and "not compared" in checks["td_consistency"]["reason"]
    assert not any("a bug" in s or "deadly triad" in s or "num_iters" in s for s in res.report["next_steps"])


def test_finite_check_also_names_an_earlier_bound_crossing():
    res = offtd.run(DIVERGING, backend="python", **{"policy.k_init": [[3.0, 0.0], [0.0, 3.0]], "run.outer_iters": 4})
    reason = {c["name"]: c for c in res.checks}["finite"]["reason"]
    t = res.report["run_info"]["diverged_at"]
    assert reason.startswith(f"values stopped being finite at iteration {t} (")
    # the teacher is undefined here (unstable closed loop): the bound is absolute and says so
    assert t > 0 and "w_norm exceeded 1e+06 (absolute: no teacher defined) from iteration 0" in reason


def test_rho_sane_on_a_nan_mean_rho2_gives_no_khat_advice():
    # mean_rho2 is NaN at the divergence iteration (before any probe): the reason says exactly that, and
    # the advice does not blame a PSIS k_hat that was never computed.
    res = offtd.run(None, backend="python", **{"run.outer_iters": 30, "actor.alpha_pi": 50.0})
    t = res.report["run_info"]["diverged_at"]
    assert res.status == "FAIL" and t is not None and t < 5 and not res.probe_series
    assert math.isnan(res.series["mean_rho2"][t])
    rho = {c["name"]: c for c in res.checks}["rho_sane"]
    assert rho["status"] == "WARN" and rho["kind"] == "rho_nonfinite"
    assert rho["reason"].startswith("mean_last_k(mean_rho2) = nan") and rho["reason"].endswith("is not finite")
    assert not any("k_hat" in s for s in res.report["next_steps"])


# ------------------------------------------------------------------- kernels on non-finite input


@pytest.fixture(scope="module")
def reference():
    from offtd.model import problem_from_spec
    from offtd.reference import ReferenceBackend

    return ReferenceBackend(), problem_from_spec(offtd.load_spec(None))


def test_rho_stats_count_nonfinite_ratios(reference):
    backend, _ = reference
    st = backend.rho_stats(np.array([1.0, math.nan, math.inf, 2.0, 0.5, -math.inf]), 10.0, True)
    assert (st.n, st.nonfinite) == (3, 3)
    assert st.mean == pytest.approx(3.5 / 3) and (st.min, st.max) == (0.5, 2.0)
    assert st.as_metrics()["rho_nonfinite"] == 3.0
    none = backend.rho_stats(np.array([math.nan, math.inf]), 10.0, False)
    assert (none.n, none.nonfinite) == (0, 2)
    assert all(math.isnan(v) for v in (none.mean, none.rho2_mean, none.min, none.max, none.p95, none.khat))


def test_kernels_propagate_nonfinite_input(reference):
    backend, problem = reference
    d = problem.d
    a = np.eye(d)
    a[0, 0] = math.nan
    sol = backend.solve(a, np.ones(d), 50, 1e-8)
    assert not sol.converged and math.isnan(sol.residual)
    assert math.isnan(backend.power_iteration(np.full((d, d), math.nan), np.ones(d), 5))
    zero = np.zeros((problem.m, problem.n))
    roll = backend.rollout(problem, np.full(d, math.nan), zero, zero, 0, 2, 3)
    assert math.isnan(roll.td_sq) and np.isnan(roll.grad_k).all()
    pool = np.array([[math.inf, 0.0], [math.nan, 1.0], [1.0, 1.0]])
    ts = backend.transitions(problem, zero, zero, pool, 16, 2, 20, 0)
    assert np.isnan(ts.rho).any() and np.isfinite(ts.rho).any()
    ps = backend.policy_samples(problem, zero, zero, pool, 16, 4, 0)
    assert np.isnan(ps.rho).any() and math.isnan(ps.tv_sum)


def _mmd_points(bad: float) -> np.ndarray:
    x = np.arange(32, dtype=float).reshape(8, 4)
    x[0, 0] = bad
    return x


def test_mmd_of_nan_points_is_nan(reference):
    backend, _ = reference
    x = _mmd_points(math.nan)
    value, sigma = backend.mmd2(x, x + 1.0)
    assert math.isnan(value) and math.isnan(sigma)


def test_mmd_of_infinite_points_is_nan(reference):
    backend, _ = reference
    x = _mmd_points(math.inf)
    value, sigma = backend.mmd2(x, x + 1.0)
    assert math.isnan(value) and math.isnan(sigma)


# ------------------------------------------------------------------------------- reproducibility


def _without_volatile(report: dict) -> dict:
    out = dict(report)
    out["run_info"] = {k: v for k, v in report["run_info"].items() if k not in ("timestamp", "run_dir")}
    return out


def test_same_spec_and_seed_give_identical_report_json(tmp_path, offtd_cmd):
    args = BLOW_UPS["actor"] + ("--seed", "7")
    (_, dir_a, a), (_, dir_b, b) = _run(offtd_cmd, tmp_path / "a", *args), _run(offtd_cmd, tmp_path / "b", *args)
    assert dir_a != dir_b
    assert a["run_info"]["timestamp"] and a["run_info"]["run_dir"] == str(dir_a)
    assert set(a["run_info"]) - {"timestamp", "run_dir"} == set(b["run_info"]) - {"timestamp", "run_dir"}
    assert "elapsed_s" not in a["run_info"]  # wall time lives in report.md only
    assert jsonable(_without_volatile(a)) == jsonable(_without_volatile(b))
    assert "completed in" in (dir_a / "report.md").read_text()


@requires_rust
def test_rust_backend_is_reproducible_too():
    kw = {"run.outer_iters": 4, "run.horizon": 20, "run.seed": 11}
    a, b = offtd.run(DIVERGING, backend="rust", **kw), offtd.run(DIVERGING, backend="rust", **kw)
    assert jsonable(_without_volatile(a.report)) == jsonable(_without_volatile(b.report))
