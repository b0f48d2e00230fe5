"""Interruption (issue 5): SIGINT or SIGTERM ends a run with a report marked INTERRUPTED holding every
completed iteration, exit 130; files are written atomically, so SIGKILL never leaves half a report.json.

Runs are started with `--progress`, which prints `iteration k/T` on stderr after each completed
iteration even when stderr is a pipe: the tests signal only after they have seen one."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import offtd
from conftest import _subprocess_env
from offtd.report import jsonable

OUTER = 50_000  # far more than a test waits for: the run is always interrupted
FAST = (
    "--set", "run.horizon=10", "--set", "run.batch=1", "--set", "critic.alpha_w=0.05", "--set", "run.probe_every=2",
    "--set", "probes.distribution.num_samples=32", "--set", "probes.distribution.action_samples=4",
    "--set", "probes.fixed_point.batch_size=32", "--set", "probes.stability.batch_size=32",
)  # fmt: skip
REPORT_FILES = {"spec.toml", "series.csv", "report.md", "report.json"}


class Run:
    """`offtd run` in the background, with its stderr read line by line on a thread."""

    def __init__(self, run_dir: Path, outer: int, *extra: str):
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offtd", "run", "--backend", "python", "--run-dir", str(run_dir), "--progress",
             "--set", f"run.outer_iters={outer}", *FAST, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
        )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_iteration(self, k: int, timeout: float = 60) -> int:
        """Block until `iteration j/T` with j >= k has been printed; return j."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, f"run ended before iteration {k}: {''.join(self.stderr)}"
            if line.startswith("iteration "):
                done = int(line.split()[1].split("/")[0])
                if done >= k:
                    return done

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc, self.proc.stdout.read(), "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def runs():
    started: list[Run] = []
    yield lambda *a: started.append(Run(*a)) or started[-1]
    for r in started:  # never leave a run behind, whatever failed
        r.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_gives_an_interrupted_report_and_exit_130(tmp_path, runs, signum):
    run = runs(tmp_path / "run", OUTER)
    seen = run.wait_for_iteration(3)
    # The run directory exists from the start; the report is written only at the end.
    assert run.run_dir.is_dir() and not (run.run_dir / "report.json").exists()
    run.proc.send_signal(signum)
    rc, out, err = run.finish()
    assert rc == 130, err
    assert "Traceback" not in err
    assert out.splitlines() == [str(run.run_dir), "status: INTERRUPTED (run stopped by a signal; completed iterations are reported)"]

    report = json.loads((run.run_dir / "report.json").read_text())
    info = report["run_info"]
    assert report["health"]["status"] == "INTERRUPTED" and info["interrupted"] is True
    done = info["completed_iters"]
    assert seen <= done < OUTER  # every iteration reported as done before the signal is in the report
    assert info["diverged_at"] is None
    td = report["series"]["td_loss"]
    assert len(td) == OUTER
    assert all(v is not None for v in td[:done]) and all(v is None for v in td[done:])
    assert report["probe_series"]["stability_probe"]["iter"] == [float(i) for i in range(2, done, 2)]
    assert any("interrupted after" in s for s in report["next_steps"])
    # The other files are complete too.
    names = {p.name for p in run.run_dir.iterdir()}
    assert REPORT_FILES <= names and not any(n.endswith(".tmp") for n in names)
    assert "INTERRUPTED" in (run.run_dir / "report.md").read_text()
    assert len((run.run_dir / "series.csv").read_text().splitlines()) == OUTER + 1
    assert offtd.load_run(run.run_dir).status == "INTERRUPTED"


def test_second_signal_stops_at_once_without_traceback(tmp_path, runs):
    run = runs(tmp_path / "run", OUTER)
    run.wait_for_iteration(1)
    run.proc.send_signal(signal.SIGINT)
    run.proc.send_signal(signal.SIGINT)
    rc, out, err = run.finish()
    assert rc == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if not line.startswith("iteration ")] in (
        [],  # the first signal's report was already written when the second came
        ["offtd: error: interrupted before a report was written"],
    )
    report = run.run_dir / "report.json"
    if report.exists():  # complete, never partial
        assert json.loads(report.read_text())["health"]["status"] == "INTERRUPTED"
    assert not [p.name for p in run.run_dir.iterdir() if not p.name.startswith(".") and p.name.endswith(".tmp")]


def _check_killed_run_dir(run_dir: Path, outer: int) -> str:
    """After SIGKILL: no report.json, or a complete one; every non-hidden file is a complete run file."""
    names = {p.name for p in run_dir.iterdir()}
    visible = {n for n in names if not n.startswith(".")}
    probe_files = {f"{p}.csv" for p in ("distribution_probe", "fixed_point_probe", "stability_probe", "q_kernel_probe", "exact_td")}
    pictures_data = {"ratios_last.npz", "eigenvalues.csv"}  # written with the run, before report.json
    pngs = {n for n in visible if n.endswith(".png")}  # drawn after report.json, each written atomically
    assert visible - pngs <= REPORT_FILES | probe_files | pictures_data, visible
    assert all(n.endswith(".tmp") for n in names - visible), names  # only write_atomic's hidden temporaries
    if "series.csv" in visible:
        assert len((run_dir / "series.csv").read_text().splitlines()) == outer + 1
    if "report.json" not in visible:
        with pytest.raises(offtd.SpecError, match="not a complete offtd run directory"):
            offtd.load_run(run_dir)
        return "none"
    report = json.loads((run_dir / "report.json").read_text())  # parses: never half a file
    assert report["run_info"]["completed_iters"] == outer and len(report["series"]["td_loss"]) == outer
    assert jsonable(offtd.load_run(run_dir).report) == report  # floats in memory, "nan" strings in the file
    return "complete"


def test_sigkill_never_leaves_a_partial_report(tmp_path, runs):
    outer = 1000  # after the last iteration, building and writing the files takes ~60 ms
    outcomes = []
    for i, delay in enumerate((0.0, 0.02, 0.04, 0.3)):
        run = runs(tmp_path / f"run{i}", outer, "--set", "run.probe_every=1000000")
        run.wait_for_iteration(outer)  # the loop is done; the report is being built and written
        time.sleep(delay)
        run.proc.send_signal(signal.SIGKILL)
        run.finish()
        outcomes.append(_check_killed_run_dir(run.run_dir, outer))
    assert set(outcomes) <= {"none", "complete"}


CHILD = r"""
import json, sys
from pathlib import Path
from offtd.report import write_atomic
path = Path(sys.argv[1])
text = json.dumps({"version": "B", "pad": "x" * 40_000_000})
print("ready", flush=True)
while True:
    write_atomic(path, text)
"""


def test_sigkill_during_write_atomic_keeps_the_old_file(tmp_path):
    """Kill a writer while it is inside write_atomic (its temporary file exists): report.json is the old
    complete file or the new complete file, never a mix; leftovers are hidden temporaries only."""
    from offtd.report import write_atomic

    target = tmp_path / "report.json"
    old = json.dumps({"version": "A", "pad": "y" * 1000})
    write_atomic(target, old)
    mid_write = 0
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE, text=True, env=_subprocess_env())
        try:
            assert child.stdout.readline().strip() == "ready"
            deadline = time.monotonic() + 30
            while not any(p.name.startswith(".report.json.") for p in tmp_path.iterdir()):
                assert time.monotonic() < deadline, "the writer never started a temporary file"
                time.sleep(0.0005)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
        text = target.read_text()
        data = json.loads(text)  # complete JSON, whatever the moment of the kill
        assert text in (old, json.dumps({"version": "B", "pad": "x" * 40_000_000})), data["version"]
        leftovers = [p.name for p in tmp_path.iterdir() if p.name != "report.json"]
        assert all(n.startswith(".report.json.") and n.endswith(".tmp") for n in leftovers), leftovers
        mid_write += bool(leftovers)
        for n in leftovers:
            (tmp_path / n).unlink()
    assert mid_write >= 1  # at least one kill really landed inside a write


def test_stop_before_the_first_iteration_still_writes_a_report(tmp_path):
    res = offtd.run(None, backend="python", run_dir=tmp_path / "run", should_stop=lambda: True)
    assert res.status == "INTERRUPTED" and res.report["run_info"]["completed_iters"] == 0
    assert all(v is None for v in res.report["series"]["td_loss"])
    assert {c["name"]: c for c in res.checks}["rho_sane"]["reason"] == "no iteration completed"
    assert res.report["next_steps"] == ["run was interrupted after 0 iteration(s) -> rerun to complete it."]
    assert offtd.load_run(tmp_path / "run").status == "INTERRUPTED"
    assert "0 of 40 completed" in (tmp_path / "run" / "report.md").read_text()


def test_signal_after_the_last_iteration_exits_130_with_a_complete_report(tmp_path, monkeypatch, capsys):
    """The signal lands while the CLI is still running
    `api.run`, after the loop; the report is complete and the exit code is still 130."""
    from offtd import api, cli

    real_run = api.run

    def run_then_signal(*args, **kwargs):
        result = real_run(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the CLI's stop flag: no termination
        return result

    monkeypatch.setattr(api, "run", run_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    rc = cli.main(["run", "--backend", "python", "--run-dir", str(tmp_path / "run"), "--set", "run.outer_iters=2", "--set", "run.horizon=5"])
    out, err = capsys.readouterr()
    assert rc == 130
    assert err == "offtd: interrupted after the last iteration; the report is complete\n"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["health"]["status"] != "INTERRUPTED" and report["run_info"]["completed_iters"] == 2
    assert out.splitlines()[1] == report["health"]["status_line"]
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI restored the handlers


CAUGHT_IN_EXEC = """
import builtins, sys
real_import = builtins.__import__
def hook(name, *args, **kwargs):
    module = real_import(name, *args, **kwargs)
    cli = sys.modules.get("offtd.cli")
    if cli is not None and not getattr(hook, "done", False) and hasattr(cli, "_main"):
        hook.done = True
        real = cli._main
        def interrupted_then_caught(argv):
            code = real(argv)
            try:  # what a Ctrl-C during a dataclass's creation (exec), caught by offtd, leaves behind
                exec("raise KeyboardInterrupt")
            except KeyboardInterrupt:
                pass
            return code
        cli._main = interrupted_then_caught
    return module
builtins.__import__ = hook
"""


def test_a_caught_ctrl_c_inside_exec_keeps_the_exit_code(tmp_path):
    """CPython 3.11 under `python -m`: a KeyboardInterrupt caught after it left exec()'d code would turn
    the command's own exit code into a death by SIGINT (returncode -2); offtd/__main__.py clears it."""
    (tmp_path / "sitecustomize.py").write_text(CAUGHT_IN_EXEC)
    env = _subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "offtd", "schema"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert json.loads(proc.stdout)["$id"].endswith(".json")
