"""Sweeps at scale (issue 10): executors, seeds, resume, errors, the guard, progress, load_sweep.

Every sweep here is small (tiny runs of a few milliseconds) so that the file runs in seconds on two
cores. Expected values are computed in the tests from sweep.csv and the runs' own numbers, never taken
from the per-cell tables under test.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import offtd
from conftest import _subprocess_env
from offtd.spec import load_spec
from offtd.sweep import METRICS, SweepDef, load_sweep, seeded, summary_values

sweep_module = importlib.import_module("offtd.sweep")  # the module (offtd.sweep is also the function)

# A run of a few milliseconds that still runs every probe (so every metric has a value).
TINY = {
    "run.outer_iters": 2, "run.horizon": 20, "run.probe_every": 1, "probes.distribution.num_samples": 256,
    "probes.fixed_point.batch_size": 256, "probes.stability.batch_size": 256,
}  # fmt: skip
TINY_SETS = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
TINY_KW = {k.replace(".", "__"): v for k, v in TINY.items()}
# Columns that depend on where and when a run ran, not on what it computed.
PLACE = ("elapsed_s", "run_dir")


def _csv_rows(root: Path) -> list[dict[str, str]]:
    with (root / "sweep.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _computed(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    """(cell, seed) -> the row's text without the columns of where and when it ran (the last row of a
    pair counts, as in a resumed sweep)."""
    out = {}
    for r in rows:
        out[(r["cell"], r["seed"])] = {k: v for k, v in r.items() if k not in PLACE}
    return out


def _num(text: str) -> float:
    return math.nan if text == "" else float(text)


# --------------------------------------------------------------------------------------- executors


@pytest.fixture(scope="module")
def three_ways(tmp_path_factory):
    """The same sweep (3 cells x 2 seeds, keep summary) in this process, on the local process pool and
    on a local Dask cluster."""
    from distributed import Client, LocalCluster

    out = tmp_path_factory.mktemp("three")
    grid3 = {"policy.p_mix": [0.0, 0.2, 0.5], "policy.sigma_pi": [0.3]}
    common = dict(seeds="0..1", keep="summary", out=out, **TINY_KW)
    results = {"in_process": offtd.sweep(None, grid3, workers=1, **common)}
    results["pool"] = offtd.sweep(None, grid3, workers=2, **common)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            results["dask"] = offtd.sweep(None, grid3, executor=client.get_executor(pure=False), **common)
    return results


def test_every_executor_gives_the_same_numbers_for_every_cell(three_ways):
    rows = {how: _computed(_csv_rows(r.root)) for how, r in three_ways.items()}
    assert len(rows["in_process"]) == 6
    # Bit for bit: sweep.csv holds repr() of every float, so equal text is equal bits.
    assert rows["pool"] == rows["in_process"]
    assert rows["dask"] == rows["in_process"]
    statuses = {r["status"] for r in rows["in_process"].values()}
    assert statuses <= {"PASS", "WARN", "FAIL"}, statuses  # every run finished with a report


def test_a_row_is_the_run_of_its_cell_and_seed(three_ways):
    """The row of (cell, seed) is what running that cell's spec with that seed gives, computed here
    directly (and what report.json gives: keep=full and keep=summary agree)."""
    res = three_ways["pool"]
    defn: SweepDef = res.defn
    rows = _csv_rows(res.root)
    for r in rows[:3]:
        cell, seed = int(r["cell"]), int(r["seed"])
        spec = load_spec(None, {**TINY, **{k: v for k, v in defn.overrides(cell).items()}})
        assert float(r["policy.p_mix"]) == spec.policy.p_mix
        status, flagged, headline = summary_values(seeded(spec, seed), "rust")
        assert r["status"] == status and r["flagged"] == flagged
        for name, v in zip(METRICS, headline):
            assert r[name] == ("" if v is None else repr(float(v))), name
        report = offtd.run(seeded(spec, seed)).report
        assert r["status"] == report["health"]["status"]
        assert float(r["mean_rho2"]) == report["core_metrics"]["mean_rho2"]["mean_last_k"]


def test_tasks_carry_the_validated_specs_and_rebuild_none(tmp_path, monkeypatch):
    """A task bound for another process carries the specs the sweep's process validated (unpickling one
    costs ~35 us, building it again ~0.75 ms): no cell spec is built inside a task, and the rows are
    those of the in-process sweep, bit for bit."""
    import concurrent.futures as cf
    import pickle

    built_in_task = []
    in_task = [False]
    real = sweep_module._cell_spec

    def counting(base, index, overrides):
        if in_task[0]:
            built_in_task.append(index)
        return real(base, index, overrides)

    class Elsewhere(cf.Executor):  # runs each task at once, on arguments that went through pickle
        tasks: list = []

        def submit(self, fn, /, *args, **kwargs):
            args = pickle.loads(pickle.dumps(args))
            self.tasks.append(args)
            fut: cf.Future = cf.Future()
            in_task[0] = True
            try:
                fut.set_result(fn(*args))
            finally:
                in_task[0] = False
            return fut

    monkeypatch.setattr(sweep_module, "_cell_spec", counting)
    grid = {"policy.p_mix": [0.0, 0.2, 0.5]}
    res = offtd.sweep(None, grid, seeds="0..1", executor=Elsewhere(), keep="summary", out=tmp_path / "a", **TINY_KW)
    assert Elsewhere.tasks and built_in_task == []
    for job, pairs, specs in Elsewhere.tasks:
        assert sorted(specs) == sorted({p // 2 for p in pairs})
        assert all(specs[c] == load_spec(None, {**TINY, **job.defn.overrides(c)}) for c in specs)
    alone = offtd.sweep(None, grid, seeds="0..1", workers=1, keep="summary", out=tmp_path / "b", **TINY_KW)
    assert _computed(_csv_rows(res.root)) == _computed(_csv_rows(alone.root))
    # sweep.json: one line per cell, each a whole JSON object
    text = (res.root / "sweep.json").read_text()
    lines = [json.loads(line.strip().rstrip(",")) for line in text.splitlines() if line.startswith('  {"cell": ')]
    assert lines == json.loads(text)["cells"] and [c["cell"] for c in lines] == [0, 1, 2]


def test_keep_summary_writes_no_run_directories(three_ways):
    for res in three_ways.values():
        assert sorted(p.name for p in res.root.iterdir()) == ["sweep.csv", "sweep.json", "sweep.md", "sweep.toml"]
        assert all(r["run_dir"] == "" for r in _csv_rows(res.root))


def test_seeds_are_aggregated_from_the_rows(three_ways):
    """sweep.json's per-cell mean and standard error of each metric, recomputed here from sweep.csv:
    mean over the seeds, SE = sample standard deviation / sqrt(n)."""
    res = three_ways["dask"]
    rows = _csv_rows(res.root)
    cells = json.loads((res.root / "sweep.json").read_text())["cells"]
    assert len(cells) == 3
    for c in cells:
        mine = [r for r in rows if int(r["cell"]) == c["cell"]]
        assert len(mine) == 2 and c["seeds_run"] == 2
        for name in METRICS[:9]:
            xs = [_num(r[name]) for r in mine if r[name] != ""]
            m = c["metrics"][name]
            assert m["n"] == len(xs)
            # Rounding only: the same two numbers summed in another order differ in the last bits.
            assert m["mean"] == pytest.approx(statistics.fmean(xs), rel=1e-12, abs=1e-300)
            assert m["se"] == pytest.approx(statistics.stdev(xs) / math.sqrt(len(xs)), rel=1e-9, abs=1e-300)
        statuses = [r["status"] for r in mine]
        assert c["counts"][c["status"]] == max(statuses.count(s) for s in set(statuses))


# ------------------------------------------------------------------------------------ seeds, errors


def _fake_summary(calls: list):
    """summary_values replaced by a known pattern of statuses and metrics over the seeds of each cell
    (p_mix picks the pattern), so that the verdicts' text can be checked exactly."""

    def fake(spec, backend):
        seed, p = spec.run.seed, spec.policy.p_mix
        calls.append((p, seed))
        if p == 0.0:  # FAIL on 9 of 10 seeds
            status = "PASS" if seed == 3 else "FAIL"
        elif p == 0.1:  # 5 PASS and 5 WARN: a tie goes to the worse status
            status = "PASS" if seed < 5 else "WARN"
        else:  # seed 0 raises: ERROR, the other nine PASS
            if seed == 0:
                raise FloatingPointError("injected failure")
            status = "PASS"
        flagged = {"PASS": "", "WARN": "rho_sane:WARN", "FAIL": "stable:FAIL"}[status]
        headline = [1.0 + seed + 10 * p] + [None if seed % 4 == 0 else float(seed) ** 2] + [2.0] * 7
        return status, flagged, headline

    return fake


def test_verdicts_say_how_many_seeds_agree_and_errors_are_recorded(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(sweep_module, "summary_values", _fake_summary(calls))
    res = offtd.sweep(None, {"policy.p_mix": [0.0, 0.1, 0.3]}, seeds="0..9", keep="summary", out=tmp_path, workers=1, **TINY_KW)
    assert res.complete and not res.interrupted
    rows = _csv_rows(res.root)
    assert len(rows) == 30
    err = [r for r in rows if r["status"] == "ERROR"]
    assert len(err) == 1 and err[0]["cell"] == "2" and err[0]["seed"] == "0"
    assert err[0]["flagged"] == "FloatingPointError: injected failure"
    assert all(err[0][m] == "" for m in METRICS[:9])  # no report: no metric
    assert err[0]["exact_radius"] != ""  # the cell's exact theory does not need the run
    by_cell = {c["cell"]: c for c in res.cells}
    assert by_cell[0]["verdict"] == "FAIL 9/10" and by_cell[0]["fractions"]["FAIL"] == 0.9
    assert by_cell[0]["flagged"] == "stable:FAIL 9/10"
    assert by_cell[1]["verdict"] == "WARN 5/10" and by_cell[1]["fractions"]["PASS"] == 0.5
    assert by_cell[2]["verdict"] == "PASS 9/10" and by_cell[2]["fractions"]["ERROR"] == 0.1
    assert by_cell[2]["flagged"] == "ERROR 1/10"
    # Each metric over the seeds that measured it, from the rows.
    for c in range(3):
        mine = [r for r in rows if int(r["cell"]) == c]
        for name in ("mean_rho2", "td_loss"):
            xs = [float(r[name]) for r in mine if r[name] != ""]
            m = by_cell[c]["metrics"][name]
            assert m["n"] == len(xs)
            assert m["mean"] == pytest.approx(statistics.fmean(xs), rel=1e-12)
            assert m["se"] == pytest.approx(statistics.stdev(xs) / math.sqrt(len(xs)), rel=1e-12)
    assert by_cell[0]["metrics"]["td_loss"]["n"] == 7  # seeds 0, 4, 8 measured none
    md = (res.root / "sweep.md").read_text()
    assert "| FAIL 9/10 | stable:FAIL 9/10 |" in md and "| PASS 9/10 | ERROR 1/10 |" in md
    frame = load_sweep(res.root, per="cell")
    assert list(frame["verdict"]) == ["FAIL 9/10", "WARN 5/10", "PASS 9/10"]
    assert list(frame["frac_ERROR"]) == [0.0, 0.0, 0.1]
    assert frame["mean_rho2_mean"][1] == pytest.approx(statistics.fmean(1.0 + s + 1.0 for s in range(10)), rel=1e-12)

    # A resume reruns the ERROR pair only, appending its new row: sweep.csv is never rewritten.
    before = (res.root / "sweep.csv").read_bytes()
    inode = os.stat(res.root / "sweep.csv").st_ino
    calls.clear()
    monkeypatch.setattr(sweep_module, "summary_values", lambda spec, backend: ("PASS", "", [3.0] * 9))
    again = offtd.sweep(resume=res.root, workers=1)
    after = (res.root / "sweep.csv").read_bytes()
    assert os.stat(res.root / "sweep.csv").st_ino == inode and after.startswith(before)
    new = list(csv.DictReader(after[len(before):].decode().splitlines(), fieldnames=list(rows[0])))
    assert [(r["cell"], r["seed"], r["status"]) for r in new] == [("2", "0", "PASS")]
    assert again.counts == {"PASS": 1 + 5 + 10, "WARN": 5, "FAIL": 9, "INTERRUPTED": 0, "ERROR": 0}
    frame = load_sweep(res.root)
    assert len(frame) == 30 and list(zip(frame["cell"], frame["seed"])) == [(c, s) for c in range(3) for s in range(10)]
    assert frame.loc[(frame["cell"] == 2) & (frame["seed"] == 0), "status"].item() == "PASS"  # the last row counts
    assert frame["mean_rho2"].dtype == np.float64 and frame["flagged"].iloc[0] == "stable:FAIL"


def test_load_sweep_reads_non_finite_metrics_as_numbers(tmp_path, monkeypatch):
    """A diverged run's metrics are nan and inf in sweep.csv: the columns stay numeric."""
    values = iter([[math.nan, math.inf] + [1.0] * 7, [2.0, -math.inf] + [None] * 7])
    monkeypatch.setattr(sweep_module, "summary_values", lambda spec, backend: ("FAIL", "finite:FAIL", next(values)))
    res = offtd.sweep(None, {"policy.p_mix": [0.0, 0.1]}, keep="summary", out=tmp_path, workers=1, **TINY_KW)
    frame = load_sweep(res.root)
    assert frame["mean_rho2"].dtype == np.float64 and frame["td_loss"].dtype == np.float64
    assert math.isnan(frame["mean_rho2"][0]) and frame["mean_rho2"][1] == 2.0
    assert list(frame["td_loss"]) == [math.inf, -math.inf]
    assert math.isnan(frame["w_gap"][1])  # not measured
    assert list(frame["run_dir"]) == ["", ""] and list(frame["flagged"]) == ["finite:FAIL"] * 2


# ------------------------------------------------------------------------------------------- resume


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _data_rows(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


def _group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """Whether every process of the group has exited (zombies waiting for their parent count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] != "Z":
                    members.append(entry)
        if not members:
            return True
        time.sleep(0.05)
    return False


def _ctrl_c(
    tmp_path: Path, when: Callable[[], bool], cells: int = 100, again: float | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """Start `offtd sweep` on the pool (`cells` default runs) in its own process group, wait until `when()`,
    then send SIGINT to the whole group, as a terminal's Ctrl-C does (and once more `again` s later)."""
    grid = ",".join(repr(i / (5 * cells)) for i in range(cells))
    args = [sys.executable, "-m", "offtd", "sweep", "--grid", f"policy.p_mix={grid}", "--keep", "summary", "--workers", "2",
            "--yes", "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not when() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    if again is not None:
        time.sleep(again)
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:  # already gone
            pass
    out, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(args, proc.returncode, out, err)
    assert _group_gone(proc.pid), "a process of the sweep outlived its Ctrl-C"
    return done, time.monotonic() - start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_pool_sweep_writes_its_tables_and_resume_finishes_it(tmp_path):
    """Ctrl-C while the pool runs: exit 130 within a second, no traceback, sweep.md and sweep.json written
    (saying interrupted), the finished rows kept, no process left; --resume then completes it."""

    def rows() -> int:
        found = list(tmp_path.glob("default_sweep/*/sweep.csv"))
        return _data_rows(found[0]) if found else 0

    proc, took = _ctrl_c(tmp_path, lambda: rows() >= 3)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 2, proc.stderr
    assert took < 5.0  # a run stops within ~10 ms of its SIGTERM; 5 s is slack for a loaded machine
    root = next(tmp_path.glob("default_sweep/*"))
    summary = json.loads((root / "sweep.json").read_text())
    assert summary["sweep"]["complete"] is False and summary["sweep"]["note"] == "interrupted"
    assert "interrupted" in (root / "sweep.md").read_text()
    kept = {(r["cell"], r["status"]) for r in _csv_rows(root)}
    assert 3 <= sum(1 for _, s in kept if s in ("PASS", "WARN", "FAIL")) < 100
    again = subprocess.run([sys.executable, "-m", "offtd", "sweep", "--resume", str(root), "--no-plots"],
                           capture_output=True, text=True, env=_subprocess_env(), timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads((root / "sweep.json").read_text())["sweep"]["complete"] is True


def _fork_server_started(since: list[float]) -> Callable[[], bool]:
    """A `when` for _ctrl_c: true once a fork server process exists in this test's sweep (its command line
    names multiprocessing.forkserver), `since[0]` - seconds after it was first seen."""
    seen: list[float] = []

    def when() -> bool:
        if not seen:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                        env = Path(f"/proc/{entry}/environ").read_bytes()
                    except OSError:
                        continue
                    if b"multiprocessing.forkserver" in cmd and since[1].encode() in env:
                        seen.append(time.monotonic())
                        break
        return bool(seen) and time.monotonic() - seen[0] >= since[0]

    return when


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("again", [0.02, 0.08, 0.15, 0.25])
def test_a_second_ctrl_c_stops_at_once_and_quietly(tmp_path, again):
    """An impatient second Ctrl-C, `again` s after the first: while the workers stop, while the tables
    are written or while the interpreter tears down. Exit 130 still, nothing but offtd's own lines on
    stderr (no "Exception ignored", no death by SIGINT), and no process left."""

    def rows() -> int:
        found = list(tmp_path.glob("default_sweep/*/sweep.csv"))
        return _data_rows(found[0]) if found else 0

    proc, _ = _ctrl_c(tmp_path, lambda: rows() >= 2, again=again)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert all(line.startswith("offtd: ") for line in proc.stderr.splitlines()), proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("after", [0.0, 0.1, 0.2, 0.3, 0.4])
def test_ctrl_c_while_a_sweep_starts_is_one_line_and_130(tmp_path, monkeypatch, after):
    """Ctrl-C reaches every process of the group, the pool's fork server too, which is importing offtd
    and numpy in the first few tenths of a second after the command starts it (`after` seconds after it
    appears here): the sweep says it was interrupted, exits 130 and leaves no process; nothing prints a
    traceback. (Before the command starts the server, a Ctrl-C meets the interpreter's own start-up.)"""
    tag = f"offtd-test-{os.getpid()}-{after}"
    monkeypatch.setenv("OFFTD_TEST_TAG", tag)  # found in the server's environment: this test's server
    proc, _ = _ctrl_c(tmp_path, _fork_server_started([after, tag]))
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr.replace("offtd: error:", ""), proc.stderr
    assert proc.stderr.splitlines()[-1] == "offtd: error: interrupted before a report was written" or (
        "INTERRUPTED" in proc.stdout or "cells:" in proc.stdout
    ), proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_fork_server_blocks_sigint_and_its_workers_still_take_sigterm():
    """What keeps a Ctrl-C quiet and a stop request prompt, read from the kernel's signal masks."""
    import multiprocessing.forkserver as fs

    from offtd.executors import LocalPool

    def blocked(pid: int) -> int:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("SigBlk:"))
        return int(line.split()[1], 16)

    pool = LocalPool(1)
    try:
        worker = pool.submit(os.getpid).result(timeout=120)
        server = fs._forkserver._forkserver_pid
        assert server is not None and blocked(server) & (1 << (signal.SIGINT - 1))
        assert not blocked(worker) & (1 << (signal.SIGTERM - 1))
        assert not blocked(os.getpid()) & (1 << (signal.SIGINT - 1))  # this process's mask is restored
    finally:
        pool.shutdown()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_resume_after_sigkill_keeps_finished_runs_and_completes_the_rest(tmp_path):
    """SIGKILL the sweep while its pool runs (4 cells x 8 seeds of 20-iteration runs, keep full), then
    --resume: the rows written before the kill stay (sweep.csv appended, same inode), those pairs are
    not rerun, the rest run, no worker outlives the kill, and every row equals an uninterrupted run."""
    sets = ["--set", "run.outer_iters=20"]
    args = [sys.executable, "-m", "offtd", "sweep", *sets, "--grid", "policy.p_mix=0,0.05,0.1,0.2", "--seeds", "0..7",
            "--workers", "2", "--out", str(tmp_path), "--no-plots"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_subprocess_env())
    deadline = time.monotonic() + 120
    csv_path = None
    workers: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        workers |= _descendants(proc.pid)
        found = list(tmp_path.glob("default_sweep/*/sweep.csv"))
        if found and _data_rows(found[0]) >= 4:
            csv_path = found[0]
            break
        time.sleep(0.005)
    workers |= _descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert csv_path is not None, f"the sweep ended or stalled before 4 rows: {proc.stderr.read().decode()}"
    root = csv_path.parent
    killed_at = csv_path.read_bytes()
    done_rows = killed_at[: killed_at.rfind(b"\n") + 1]  # a line cut by the kill is dropped on resume
    finished = {(r["cell"], r["seed"]) for r in csv.DictReader(done_rows.decode().splitlines())}
    assert 4 <= len(finished) < 32, "killed too late to test a resume"
    assert len(workers) >= 2  # the fork server and its workers were seen
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "a worker outlived the killed sweep"

    inode = os.stat(csv_path).st_ino
    again = subprocess.run([sys.executable, "-m", "offtd", "sweep", "--resume", str(root), "--no-plots"],
                           capture_output=True, text=True, env=_subprocess_env(), timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1].startswith("32/32 runs (4 cells x 8 seeds)")
    after = csv_path.read_bytes()
    assert os.stat(csv_path).st_ino == inode and after.startswith(done_rows)
    rows = _csv_rows(root)
    pairs = [(r["cell"], r["seed"]) for r in rows]
    assert len(set(pairs)) == 32 and len(pairs) == 32, "a finished pair ran again, or one is missing"
    # Every run directory is complete (a run cut by the kill was replaced), and there is one per pair.
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dirs == sorted(f"cell_{c:04d}_seed_{s}" for c in range(4) for s in range(8))
    assert all((root / d / "report.json").is_file() for d in dirs)
    # The numbers equal a sweep that was never interrupted (in this process, keep summary).
    fresh = offtd.sweep(None, {"policy.p_mix": [0, 0.05, 0.1, 0.2]}, seeds="0..7", keep="summary", workers=1,
                        out=tmp_path / "fresh", run__outer_iters=20)  # fmt: skip
    assert _computed(rows) == _computed(_csv_rows(fresh.root))


def test_resume_refuses_a_different_spec_grid_or_seeds(tmp_path, offtd_cmd):
    first = offtd_cmd("sweep", *TINY_SETS, "--grid", "policy.p_mix=0,0.1", "--seeds", "0..1", "--keep", "summary",
                      "--workers", "1", "--out", str(tmp_path), "--no-plots")  # fmt: skip
    assert first.returncode == 0, first.stderr
    root = Path(first.stdout.splitlines()[0])
    before = (root / "sweep.csv").read_bytes()
    cases = [
        (["--set", "critic.gamma=0.8", *TINY_SETS], "the base spec differs from the sweep's at critic.gamma"),
        ([*TINY_SETS, "--grid", "policy.p_mix=0,0.2"], "the grid's values of policy.p_mix differ"),
        ([*TINY_SETS, "--grid", "critic.gamma=0.9"], "the grid's keys differ"),
        ([*TINY_SETS, "--seeds", "0..2"], "the seeds differ from the sweep's (0,1)"),
        (["--keep", "full"], "keep differs from the sweep's (summary)"),
    ]
    for extra, why in cases:
        proc = offtd_cmd("sweep", "--resume", str(root), *extra, "--no-plots")
        assert proc.returncode == 2, (extra, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"offtd: error: --resume {root}: "), proc.stderr
        assert why in proc.stderr, (why, proc.stderr)
        assert proc.stdout == ""
    assert (root / "sweep.csv").read_bytes() == before  # nothing ran
    same = offtd_cmd("sweep", "--resume", str(root), "--no-plots")  # the sweep's own definition: nothing left
    assert same.returncode == 0, same.stderr
    assert (root / "sweep.csv").read_bytes() == before


# ------------------------------------------------------------------------------ guard and progress


def _on_terminal(args: list[str], answer: bytes | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with stdin and stderr on a pseudo-terminal; type `answer` when it asks. Returns the
    exit code and what the terminal showed."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "offtd", *args], stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, env=_subprocess_env())  # fmt: skip
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
                if answer is not None and b"[y/N]" in shown:
                    os.write(master, answer)
                    answer = None
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, shown.decode(errors="replace")


BIG = ["--grid", "policy.p_mix=" + ",".join(str(i / 1000) for i in range(1000)), "--seeds", "0..100"]


def test_an_oversized_sweep_needs_yes(tmp_path, offtd_cmd):
    """1000 cells x 101 seeds = 101000 runs is over the limit (100000): off a terminal it is refused with
    one line naming --yes, exit 2, and nothing is created; on a terminal it asks, and "n" refuses."""
    out = tmp_path / "out"
    proc = offtd_cmd("sweep", *BIG, "--out", str(out), stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "1000 cells x 101 seeds = 101000 runs" in proc.stderr
    assert "more than 100000 runs; add --yes to run it" in proc.stderr
    assert not out.exists()
    code, shown = _on_terminal(["sweep", *BIG, "--out", str(out)], answer=b"n\n")
    assert code == 2, shown
    assert "Run it? [y/N]" in shown and "add --yes to run it" in shown
    assert not out.exists()


def test_a_dask_scheduler_that_cannot_run_the_sweep_is_refused_in_one_line(tmp_path, offtd_cmd):
    """--dask to an address where nothing listens, or to a scheduler with no workers (whose tasks would
    wait forever): exit 2 within --dask-timeout, one line naming the address and why, nothing written.
    The subprocess's own timeout (120 s) is only a guard against a hang; the CLI gives up after 1 s."""
    from distributed import LocalCluster

    out = tmp_path / "out"
    base = ["sweep", *TINY_SETS, "--grid", "policy.p_mix=0,0.1", "--keep", "summary", "--no-plots", "--out", str(out)]
    proc = offtd_cmd(*base, "--dask", "tcp://127.0.0.1:9", "--dask-timeout", "1", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--dask tcp://127.0.0.1:9: cannot connect" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", dashboard_address=None) as cluster:
        proc = offtd_cmd(*base, "--dask", cluster.scheduler_address, "--dask-timeout", "1", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "the scheduler has no workers (none joined within 1 s)" in proc.stderr
    assert not out.exists()
    proc = offtd_cmd(*base, "--dask", "nonsense://", "--dask-timeout", "1", timeout=120)
    assert proc.returncode == 2 and "--dask nonsense://: cannot connect" in proc.stderr, proc.stderr
    proc = offtd_cmd(*base, "--dask", "tcp://127.0.0.1:9", "--dask-timeout", "0")
    assert proc.returncode == 2 and "--dask-timeout 0.0: must be a positive number of seconds" in proc.stderr


def test_progress_is_quiet_off_a_terminal_and_shown_on_one(tmp_path, offtd_cmd):
    base = ["sweep", *TINY_SETS, "--grid", "policy.p_mix=0,0.1,0.2", "--keep", "summary", "--workers", "1", "--no-plots"]
    quiet = offtd_cmd(*base, "--out", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("offtd: sweep of 3 cells x 1 seed = 3 runs: about ")
    asked = offtd_cmd(*base, "--out", str(tmp_path / "b"), "--progress")
    assert asked.returncode == 0
    assert asked.stderr.splitlines()[-1].startswith("runs 3/3, ")  # the last line: every run, no ETA
    code, shown = _on_terminal([*base, "--out", str(tmp_path / "c")])
    assert code == 0, shown
    assert "\r\x1b[K  runs 3/3, " in shown  # one line rewritten in place


def test_a_pool_whose_workers_cannot_start_gives_error_rows_that_say_why(tmp_path):
    """A script that calls offtd.sweep without the `if __name__ == "__main__":` guard: the pool's
    workers import the script and die. Every run is an ERROR row naming the likely causes, and the sweep
    returns instead of restarting the pool again and again."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import offtd\n"
        f"res = offtd.sweep(None, {{'policy.p_mix': [0, 0.1]}}, seeds='0..1', workers=2, keep='summary', out={str(tmp_path)!r},"
        " run__outer_iters=2)\n"
        "print(res.counts['ERROR'], res.complete)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "4 True"
    rows = _csv_rows(next(tmp_path.glob("default_sweep/*")))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ERROR"}
    assert all('call offtd.sweep under `if __name__ == "__main__":`' in r["flagged"] for r in rows)


def test_a_fork_server_that_cannot_start_early_does_not_stop_the_sweep(tmp_path, monkeypatch, capsys):
    """The command's early start of the pool's fork server is only a head start: when it fails (no
    fork, no sockets in a sandbox), a sweep that runs in this process is unaffected."""
    from offtd import cli, executors

    def refuse(ctx=None):
        raise OSError("no fork server here")

    monkeypatch.setattr(executors, "prestart", refuse)
    rc = cli.main(["sweep", "--grid", "policy.p_mix=0,0.1", *TINY_SETS, "--keep", "summary", "--no-plots", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    assert len(_csv_rows(next(tmp_path.glob("default_sweep/*")))) == 2
