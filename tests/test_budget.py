"""Validation estimates memory and work (issue "Robustness II", offtd.budget).

Memory: the peak RSS of `offtd run` (as a subprocess: `getrusage(RUSAGE_CHILDREN).ru_maxrss`), less the
interpreter's baseline (the same command on a tiny spec), must stay within the estimate over many shapes
(state_dim up to 16, batch * horizon large and small, each probe's batch size, the MMD set stored and
streamed), and the estimate must not be absurdly above it (< 4x + 100 MiB). A reviewer found
`env.state_dim=16 env.action_dim=16 run.horizon=1 run.batch=40000 run.max_memory_gb=0.1` accepted with an
estimate of 11 MiB, then peaking at 3.85 GB (the per-trajectory partial sums): it must be refused, or, if
accepted (the rollout now holds at most 32 MiB of them), stay within its estimate.

Work: a spec whose estimated CPU time exceeds `run.max_work_seconds` is refused at validation (exit 2) with
the dominant key and the estimate in the message; integer keys are capped at what the kernels accept."""

from __future__ import annotations

import re
import resource
import subprocess
import sys

import pytest

from conftest import _subprocess_env, requires_rust
from offtd.budget import memory_estimate_bytes, memory_terms, probe_iterations, work_estimate_seconds, work_terms
from offtd.loop import is_probe_iteration
from offtd.spec import INT_MAX, SpecError, load_spec, parse_override

MiB = 2**20
TINY = [
    "run.outer_iters=1", "run.batch=1", "run.horizon=1", "probes.distribution.num_samples=2",
    "probes.distribution.action_samples=2", "probes.fixed_point.batch_size=2", "probes.stability.batch_size=2",
]  # fmt: skip
SHAPES = {
    "n2_long_rollouts": ["run.batch=2000", "run.horizon=2000"],
    "n16_wide_short": ["env.state_dim=16", "env.action_dim=16", "run.batch=20000", "run.horizon=1",
                       "probes.fixed_point.repeats=2", "probes.stability.repeats=2"],
    "n8_mid": ["env.state_dim=8", "env.action_dim=3", "run.batch=64", "run.horizon=500"],
    "n12_many_trajectories": ["env.state_dim=12", "env.action_dim=4", "run.batch=5000", "run.horizon=4",
                              "probes.fixed_point.repeats=2", "probes.stability.repeats=2"],
    "n16_stability_probe": ["env.state_dim=16", "env.action_dim=2", "run.batch=4", "run.horizon=50",
                            "probes.stability.batch_size=300000", "probes.stability.repeats=4",
                            "probes.fixed_point.repeats=2"],
    "n4_fixed_point_probe": ["env.state_dim=4", "probes.fixed_point.batch_size=1000000", "probes.fixed_point.repeats=64"],
    "distribution_stored_mmd": ["probes.distribution.num_samples=2000000", "probes.distribution.action_samples=1024"],
    "distribution_streamed_mmd": ["probes.distribution.num_samples=4000", "probes.distribution.action_samples=3000"],
    "n1_default_probes": ["env.state_dim=1", "env.action_dim=1", "run.batch=300", "run.horizon=300"],
}  # fmt: skip
REVIEWER = ["env.state_dim=16", "env.action_dim=16", "run.horizon=1", "run.batch=40000", "run.max_memory_gb=0.1"]


def _spec(sets):
    return load_spec(None, dict(parse_override(s) for s in sets))


PEAK = r"""
import resource, subprocess, sys
p = subprocess.run([sys.executable, "-m", "offtd", "run", "--out", sys.argv[1], "--quiet", *sys.argv[2:]],
                   capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(p.returncode, ru.ru_maxrss * 1024, ru.ru_utime + ru.ru_stime)
sys.stderr.write(p.stderr)
"""


def _measure(tmp_path, sets, plots: bool = False) -> tuple[int, float]:
    """(peak RSS bytes, CPU seconds) of one `offtd run` in a fresh process; without its pictures unless
    `plots` (the estimate is of the run's arrays; drawing is a bounded step after the run)."""
    args = [a for s in sets for a in ("--set", s)] + ([] if plots else ["--no-plots"])
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, str(tmp_path / "out"), *args], capture_output=True, text=True,
        env=_subprocess_env(), timeout=1200,
    )  # fmt: skip
    rc, peak, cpu = proc.stdout.split()
    assert int(rc) == 0, proc.stderr[-2000:]
    return int(peak), float(cpu)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The interpreter, numpy and offtd: the peak of a run that holds almost nothing."""
    return _measure(tmp_path_factory.mktemp("baseline"), TINY)


@requires_rust
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_memory_estimate_covers_the_peak(tmp_path, baseline, shape):
    sets = ["run.outer_iters=2", *SHAPES[shape]]
    est = memory_estimate_bytes(_spec(sets))
    peak, _ = _measure(tmp_path, sets)
    used = peak - baseline[0]
    terms = {k: round(v / MiB, 1) for k, v in memory_terms(_spec(sets)).items()}
    assert est >= used, f"{shape}: peak {used / MiB:.1f} MiB above the interpreter, estimate {est / MiB:.1f} MiB {terms}"
    assert est < 4 * used + 100 * MiB, f"{shape}: estimate {est / MiB:.1f} MiB for a peak of {used / MiB:.1f} MiB {terms}"


@requires_rust
def test_the_pictures_add_a_bounded_amount(tmp_path, baseline):
    """Drawing after the run (matplotlib, five figures) adds a bounded amount whatever the probe sizes:
    the survival curve of a 10^6-ratio probe is thinned to offtd.plots.SURVIVAL_POINTS points. Bound:
    matplotlib's import and the figures measured ~45 MiB here; 100 MiB leaves room for other versions."""
    sets = ["run.outer_iters=2", *SHAPES["n4_fixed_point_probe"]]
    without, _ = _measure(tmp_path / "a", sets)
    with_plots, _ = _measure(tmp_path / "b", sets, plots=True)
    assert with_plots - without < 100 * MiB, f"the pictures added {(with_plots - without) / MiB:.1f} MiB"
    assert list((tmp_path / "b" / "out").rglob("*.png")), "no picture was drawn"


@requires_rust
def test_the_reviewers_reproduction(tmp_path, baseline):
    try:
        spec = _spec(REVIEWER)
    except SpecError as exc:  # refused at validation: fine, if it names the size and the limit
        assert "GiB" in str(exc) and "run.max_memory_gb" in str(exc)
        return
    est = memory_estimate_bytes(spec)
    assert est <= 0.1 * 2**30
    # memory does not grow with the iterations: one iteration (a probe iteration) shows the peak
    peak, _ = _measure(tmp_path, [*REVIEWER, "run.outer_iters=1"])
    used = peak - baseline[0]
    assert used <= est, f"peak {used / MiB:.1f} MiB above the interpreter, estimate {est / MiB:.1f} MiB"


def test_the_rollouts_partial_sums_are_in_the_estimate():
    """The estimate the reviewer saw (11 MiB) left out the per-trajectory partial sums; now they are in,
    bounded by the rollout's window (32 MiB) however large the batch."""
    small = memory_terms(_spec(["env.state_dim=16", "env.action_dim=16", "run.horizon=1", "run.batch=100"]))
    large = memory_terms(_spec(["env.state_dim=16", "env.action_dim=16", "run.horizon=1", "run.batch=40000"]))
    per_trajectory = 8 * (2 + 256 + 153 * 154 // 2 + 153 * 153 + 153)  # td_sq, rho2, grad_k, gram, A, b
    assert small["run.batch"] >= 100 * per_trajectory  # within one window (28.5 MB of 32 MiB): all of them
    assert large["run.batch"] >= 32 * MiB
    assert large["run.batch"] < 32 * MiB + 40000 * (3 * (2 * 16 * 8 + 16) + 16 * 8 + 6 * 8) + MiB


@requires_rust
@pytest.mark.parametrize("shape", ["n2_long_rollouts", "n16_wide_short", "n16_stability_probe"])
def test_work_estimate_is_of_the_order_of_the_cpu_time(tmp_path, baseline, shape):
    """The estimate is CPU-seconds at one core's measured rates: the measured CPU time of the run (all
    threads, less the interpreter's start) is below 3x the estimate and above a tenth of it."""
    sets = ["run.outer_iters=2", *SHAPES[shape]]
    est = work_estimate_seconds(_spec(sets))
    _, cpu = _measure(tmp_path, sets)
    used = max(cpu - baseline[1], 0.01)
    assert used < 3 * est + 1.0, f"{shape}: {used:.2f} CPU-s, estimated {est:.2f}"
    assert est < 10 * used + 1.0, f"{shape}: {used:.2f} CPU-s, estimated {est:.2f}"


OVER_BUDGET = {
    "probes.stability.power_iters": ["probes.stability.power_iters=100000000000"],
    "probes.fixed_point.num_iters": ["probes.fixed_point.num_iters=100000000000", "probes.fixed_point.tol=1e-300"],
    "probes.distribution.action_samples": ["probes.distribution.num_samples=200000", "probes.distribution.action_samples=200000"],
    "run.horizon": ["env.state_dim=16", "run.horizon=10000000", "run.batch=1"],
    "run.batch": ["run.batch=300000", "run.horizon=100", "run.outer_iters=10000"],
    "probes.stability.batch_size": ["env.state_dim=16", "probes.stability.batch_size=100000000"],
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(OVER_BUDGET))
def test_over_budget_specs_are_refused_naming_the_key_and_the_estimate(key):
    sets = OVER_BUDGET[key]
    with pytest.raises(SpecError) as info:
        _spec(sets)
    msg = str(info.value)
    assert msg.startswith(f"{key}: this spec needs about "), msg
    assert "CPU-seconds" in msg and "run.max_work_seconds = 14400" in msg, msg
    est = float(re.search(r"needs about ([0-9.e+]+) CPU-seconds", msg).group(1))
    assert est > 14400
    # the same spec with a larger budget validates (nothing else is wrong with it)
    spec = _spec([*sets, "run.max_work_seconds=1e18"])
    terms = work_terms(spec)
    assert max(terms, key=terms.__getitem__) == key
    assert work_estimate_seconds(spec) == pytest.approx(est, rel=6e-3)  # printed to 3 digits


def test_the_cli_refuses_over_budget_specs_with_exit_2(offtd_cmd, tmp_path):
    proc = offtd_cmd("run", "--out", str(tmp_path / "out"), "--set", "probes.stability.power_iters=100000000000", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("offtd: error: probes.stability.power_iters: this spec needs about")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "item,key",
    [
        ("probes.stability.power_iters=18446744073709551616", "probes.stability.power_iters"),  # 2**64
        (f"probes.stability.power_iters={INT_MAX}", "probes.stability.power_iters"),
        (f"probes.fixed_point.num_iters={INT_MAX}", "probes.fixed_point.num_iters"),
        (f"run.outer_iters={INT_MAX}", "run.outer_iters"),
        (f"run.horizon={INT_MAX}", "run.horizon"),
    ],
)
def test_integer_keys_are_capped_at_validation(offtd_cmd, tmp_path, item, key):
    """2**64 used to reach the bindings as a ValueError with a traceback; every integer key is capped at
    2**63 - 1 and then by the budgets: exit 2, one line naming the key."""
    proc = offtd_cmd("run", "--out", str(tmp_path / "out"), "--set", item, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"offtd: error: {key}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_shipped_specs_are_far_below_the_budgets():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parent.parent.joinpath("specs").glob("*.toml")):
        spec = load_spec(path)
        assert work_estimate_seconds(spec) < 60, path
        assert memory_estimate_bytes(spec) < 256 * MiB, path


@pytest.mark.parametrize("outer,every", [(1, 1), (1, 5), (2, 5), (5, 5), (6, 5), (40, 5), (41, 5), (7, 1), (3, 100)])
def test_probe_iterations_match_the_loop(outer, every):
    spec = _spec([f"run.outer_iters={outer}", f"run.probe_every={every}"])
    assert probe_iterations(spec) == sum(is_probe_iteration(t, spec) for t in range(outer))


def test_spec_memory_terms_are_the_budgets():
    """spec.memory_terms / memory_estimate_bytes moved to offtd.budget; spec.py calls them."""
    from offtd import spec as spec_mod

    s = _spec(["run.batch=100"])
    assert spec_mod.memory_terms(s) == memory_terms(s)
    assert spec_mod.memory_estimate_bytes(s) == memory_estimate_bytes(s)


def test_rusage_is_available():
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss >= 0
