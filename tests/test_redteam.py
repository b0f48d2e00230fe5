"""Red-team reproductions (issue "Robustness II"): every class of the issue, each reproduction run as
`offtd` in a subprocess with a timeout and an address-space cap, so that a regression (an unbounded
read, a recursion, a hang) fails one test instead of the machine.

Classes: 1 valid specs that crashed, 2 bad input that gave a traceback, 3 the umask race of
write_atomic, 4 user strings unescaped in markdown and on stdout, 5 output errors (closed pipe,
/dev/full, a disk filling up), 6 load_run on damaged run directories, 7 numpy values from notebooks,
8 smaller gaps (SIGTERM during validation, bench --json, --grid without '=', RAYON_NUM_THREADS),
9 the documented exit codes and tolerance.

The default selection runs one or two reproductions of each class; HYPOTHESIS_PROFILE=thorough runs
every variant."""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import offtd
from conftest import _subprocess_env
from offtd import cli
from offtd.report import md

ROOT = Path(__file__).resolve().parent.parent
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
MEM_CAP = 3 * 2**30  # address space of each child: numpy, OpenBLAS and the core fit with room
TIMEOUT = 120
# A run of about a tenth of a second on the reference backend.
FAST = (
    "--backend", "python", "--quiet", "--set", "run.outer_iters=2", "--set", "run.horizon=5", "--set", "run.batch=2",
    "--set", "probes.distribution.num_samples=64", "--set", "probes.distribution.action_samples=8",
    "--set", "probes.fixed_point.batch_size=64", "--set", "probes.stability.batch_size=64",
)  # fmt: skip
FAST_SWEEP = tuple(a for a in FAST if a != "--quiet")  # sweep has no --quiet
BIG_INT = "1" + "0" * 400  # a 400-digit integer: float() of it overflows


def select(fast: list, thorough: list) -> list:
    """The default selection, and every variant under HYPOTHESIS_PROFILE=thorough."""
    return fast + (thorough if THOROUGH else [])


def _limits(mem: int = MEM_CAP, fsize: int | None = None):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return apply


def offtd_proc(
    *args: str,
    code: str | None = None,
    timeout: float = TIMEOUT,
    fsize: int | None = None,
    env_extra: dict[str, str] | None = None,
    **kw,
) -> subprocess.CompletedProcess:
    """`python -m offtd ARGS` (or `python -c CODE ARGS`) with a memory cap and a timeout."""
    argv = [sys.executable, "-c", code, *args] if code is not None else [sys.executable, "-m", "offtd", *args]
    kw.setdefault("capture_output", True)
    return subprocess.run(
        argv, text=True, env={**_subprocess_env(), **(env_extra or {})}, timeout=timeout,
        preexec_fn=_limits(fsize=fsize), **kw,
    )  # fmt: skip


# A child that patches offtd before running the command line: PATCH (Python source) runs first.
PATCHED_CLI = """
import sys
{patch}
from offtd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def patched(patch: str) -> str:
    return PATCHED_CLI.format(patch=textwrap.dedent(patch))


def one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with `code`, one short `offtd: error:` line on stderr holding every needle, no
    traceback, nothing on stdout."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("offtd: error: "), proc.stderr
    assert len(lines[0]) < 500, lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    return lines[0]


def strict_json(path: Path) -> dict:
    def refuse(token: str):
        raise AssertionError(f"non-strict JSON token {token} in {path}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def completed_run(proc: subprocess.CompletedProcess) -> tuple[Path, dict]:
    """Exit 0, the run directory and status line on stdout, a strict-JSON report."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 2, proc.stdout
    report = strict_json(Path(out[0]) / "report.json")
    assert out[1] == report["health"]["status_line"]
    return Path(out[0]), report


# ------------------------------------------------------------------------- 1. valid specs that crashed

REFUSED_VALID = select(
    [
        ("a_entry_1e160", ["--set", "env.a=[[0.5,1e160],[0,0.5]]"], ("env.a", "teacher", "double precision")),
        ("init_noise_1e308", ["--set", 'critic.init="teacher_noise"', "--set", "critic.init_noise=1e308"],
         ("critic.init_noise", "overflows")),
        ("reward_scale_teacher_overflow", ["--set", 'critic.init="teacher"', "--set", "env.reward_scale=1e308",
                                           "--set", "critic.gamma=0.99"], ("env.reward_scale", "overflows")),
    ],
    [
        ("b_entry_1e160", ["--set", "env.b=[[1e160,0],[0,0.5]]"], ("env.b", "teacher")),
        ("k_init_1e200", ["--set", "policy.k_init=[[0,1e200],[0,0]]"], ("teacher",)),
        ("reward_scale_teacher_noise", ["--set", 'critic.init="teacher_noise"', "--set", "env.reward_scale=1e300"],
         ("critic.init", "||w_teacher||")),
        ("q_1e308", ["--set", "env.q=[[1e308,0],[0,1]]", "--set", "critic.gamma=0.99"], ("env.q", "teacher")),
    ],
)  # fmt: skip


@pytest.mark.parametrize("case", REFUSED_VALID, ids=[c[0] for c in REFUSED_VALID])
def test_specs_whose_teacher_overflows_are_refused_naming_the_key(tmp_path, case):
    _, args, needles = case
    proc = offtd_proc("run", *FAST, "--out", str(tmp_path / "out"), *args)
    one_line_error(proc, 2, *needles)
    assert not (tmp_path / "out").exists()  # refused before anything was created


FINISHED_VALID = select(
    [
        # The teacher's weights (~1e301) are finite: the run starts there and diverges at once: FAIL.
        ("reward_scale_1e300_teacher", ["--set", 'critic.init="teacher"', "--set", "env.reward_scale=1e300"], "FAIL"),
        # init_noise only matters for teacher_noise.
        ("init_noise_1e308_zeros", ["--set", "critic.init_noise=1e308"], None),
    ],
    [
        ("reward_scale_1e300_zeros", ["--set", "env.reward_scale=1e300"], "FAIL"),
        ("alpha_w_1e308", ["--set", "critic.alpha_w=1e308"], "FAIL"),
        ("unstable_a_1e300", ["--set", "env.a=[[1e300,0],[0,0.5]]"], "FAIL"),
        ("tiny_entries", ["--set", "env.a=[[5e-324,0],[0,5e-324]]", "--set", "env.b=[[5e-324,0],[0,0]]"], None),
    ],
)  # fmt: skip


@pytest.mark.parametrize("case", FINISHED_VALID, ids=[c[0] for c in FINISHED_VALID])
def test_extreme_valid_specs_finish_with_a_report(tmp_path, case):
    _, args, status = case
    run_dir, report = completed_run(offtd_proc("run", *FAST, "--out", str(tmp_path), *args))
    if status is not None:
        assert report["health"]["status"] == status, report["health"]["status_line"]
    assert offtd.load_run(run_dir).status == report["health"]["status"]


def test_teacher_never_raises():
    import dataclasses

    import numpy as np

    from offtd.model import problem_from_spec, teacher, teacher_overflows

    spec = offtd.load_spec(None)
    base = problem_from_spec(spec)
    k = np.zeros((2, 2))
    for a in ([[0.5, 1e160], [0.0, 0.5]], [[0.5, 1e300], [1e-300, 0.5]], [[1e308, 1e308], [1e308, 1e308]]):
        p = dataclasses.replace(base, a=np.array(a))
        t = teacher(p, k)
        assert not t.defined and np.isnan(t.w).all()
    overflow = dataclasses.replace(base, a=np.array([[0.5, 1e160], [0.0, 0.5]]))
    assert teacher_overflows(overflow, teacher(overflow, k))
    huge_gain = np.full((2, 2), 1e308)  # A + B K overflows: undefined, not an exception
    assert not teacher(base, huge_gain).defined


def test_an_error_in_one_sweep_cell_is_recorded_and_the_others_run(tmp_path):
    patch = """
    import offtd.api as api
    real = api.run_loop
    def run_loop(spec, *a, **k):
        if spec.policy.p_mix == 0.2:
            raise FloatingPointError("injected failure in cell 1")
        return real(spec, *a, **k)
    api.run_loop = run_loop
    """
    proc = offtd_proc("sweep", "--out", str(tmp_path), *FAST_SWEEP, "--grid", "policy.p_mix=0.1,0.2,0.3", code=patched(patch))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    root = Path(proc.stdout.splitlines()[0])
    assert proc.stdout.splitlines()[1].startswith("3/3 cells:") and "1 ERROR" in proc.stdout
    rows = (root / "sweep.csv").read_text().splitlines()
    assert len(rows) == 4 and ",ERROR," in rows[2] and "injected failure in cell 1" in rows[2]
    assert (root / "cell_0000" / "report.json").exists() and (root / "cell_0002" / "report.json").exists()
    assert not (root / "cell_0001").exists()  # no half-written cell
    assert "| 1 | 0.2 | ERROR | FloatingPointError: injected failure in cell 1 |" in (root / "sweep.md").read_text()
    # --fail-on counts an ERROR cell as failing
    again = offtd_proc("sweep", "--out", str(tmp_path / "b"), *FAST_SWEEP, "--grid", "policy.p_mix=0.2",
                       "--fail-on", "fail", code=patched(patch))  # fmt: skip
    assert again.returncode == 1, again.stderr


def test_an_unexpected_error_is_one_line_exit_4_and_leaves_no_directory(tmp_path):
    patch = """
    import offtd.api as api
    def run_loop(*a, **k):
        raise ZeroDivisionError("injected")
    api.run_loop = run_loop
    """
    proc = offtd_proc("run", *FAST, "--out", str(tmp_path / "out"), code=patched(patch))
    assert proc.returncode == 4, proc.stderr  # never 1: that is --fail-on's
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "offtd: internal error: ZeroDivisionError: injected (a bug in offtd; OFFTD_TRACEBACK=1 shows the traceback)"
    ]
    assert not (tmp_path / "out").exists()  # the run's directory and its parents were removed
    shown = offtd_proc("run", *FAST, "--out", str(tmp_path / "out"), code=patched(patch), env_extra={"OFFTD_TRACEBACK": "1"})
    assert shown.returncode == 4 and "Traceback" in shown.stderr and "ZeroDivisionError" in shown.stderr


# ---------------------------------------------------------------------------------- 2. bad input


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_INPUT = select(
    [
        ("big_int_float_key", None, ["--set", f"critic.gamma={BIG_INT}"], ("critic.gamma", "must be finite")),
        ("big_int_matrix_entry", None, ["--set", f"env.a=[[{BIG_INT},0],[0,1]]"], ("env.a", "must be finite")),
        ("big_int_outer_iters", None, ["--set", f"run.outer_iters={BIG_INT}"], ("run.outer_iters", "must be <=")),
        ("deep_toml_file", f"a = {_nested(5000)}\n", [], ("s.toml", "nested too deeply")),
        ("dev_zero", "/dev/zero", [], ("/dev/zero", "larger than 1 MiB")),
    ],
    [
        ("big_int_in_file", f"[env]\nsigma_eps = {BIG_INT}\n", [], ("env.sigma_eps", "must be finite")),
        ("big_int_reward_scale", None, ["--set", f"env.reward_scale={BIG_INT}"], ("env.reward_scale", "finite")),
        ("big_int_seed", None, ["--set", f"run.seed={BIG_INT}"], ("run.seed", "must be <= 18446744073709551615")),
        ("big_int_horizon", None, ["--set", f"run.horizon={BIG_INT}"], ("run.horizon", "must be <=")),
        ("big_negative_int", None, ["--set", f"critic.alpha_w=-{BIG_INT}"], ("critic.alpha_w", "finite")),
        ("deep_set", None, ["--set", f"env.a={_nested(5000)}"], ("--set env.a", "nested too deeply")),
        ("deep_inline_tables", "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", [], ("s.toml", "nested too deeply")),
        ("deep_known_key", f"[env]\na = {_nested(100)}\n", [], ("env.a", "must be numbers")),
        ("dev_urandom", "/dev/urandom", [], ("/dev/urandom",)),
        ("two_mib_file", "# " + "x" * (2 << 20) + "\n", [], ("s.toml", "larger than 1 MiB")),
        ("huge_string_value", f'name = "{"y" * 100_000}"\n[run]\nseed = -1\n', [], ("run.seed",)),
    ],
)  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    _, spec, args, needles = case
    spec_args: list[str] = []
    if isinstance(spec, str) and spec.startswith("/dev/"):
        spec_args = [spec]
    elif spec is not None:
        (tmp_path / "s.toml").write_text(spec)
        spec_args = [str(tmp_path / "s.toml")]
    proc = offtd_proc("run", *spec_args, *FAST, "--out", str(tmp_path / "out"), *args, timeout=60)
    one_line_error(proc, 2, *needles)
    assert not (tmp_path / "out").exists()


def test_deep_grid_value_and_deep_api_dict_are_refused(tmp_path):
    proc = offtd_proc("sweep", "--out", str(tmp_path), "--grid", f"env.a={_nested(5000)}")
    one_line_error(proc, 2, "--grid env.a", "nested too deeply")
    deep: dict = {}
    cur = deep
    for _ in range(5000):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(offtd.SpecError):
        offtd.load_spec(deep)


# ------------------------------------------------------------------------------- 3. the umask race

UMASK_CHILD = """
import os, sys, threading
from pathlib import Path
import offtd

def no_umask(*a):
    raise AssertionError("os.umask called: it changes the mask of every thread")
os.umask(0o027)
os.umask = no_umask
root = Path(sys.argv[1])
errors = []
def worker(i):
    try:
        for j in range(int(sys.argv[2])):
            offtd.run(None, backend="python", run_dir=root / f"{i}_{j}", **{"run.outer_iters": 1, "run.horizon": 2,
                      "probes.distribution.num_samples": 16, "probes.distribution.action_samples": 4,
                      "probes.fixed_point.batch_size": 16, "probes.stability.batch_size": 16})
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""


def test_concurrent_runs_never_touch_the_umask(tmp_path):
    proc = offtd_proc(str(tmp_path), "8" if THOROUGH else "2", code=UMASK_CHILD)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4 * 2 * 9
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {"0o640"}, modes  # 0o666 & ~0o027 for every file, as open() gives


def test_write_atomic_gives_the_mode_open_gives(tmp_path):
    from offtd.report import write_atomic

    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


# --------------------------------------------------------------------- 4. user strings in markdown

FAKE = "\n## Health\n- status: PASS\n"


def test_run_dir_with_newlines_cannot_forge_report_lines_or_stdout(tmp_path):
    run_dir = tmp_path / f"run{FAKE}x"
    proc = offtd_proc("run", *FAST, "--run-dir", str(run_dir), "--set", "critic.alpha_w=1e6")  # a FAIL run
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == 2 and out[0] == str(run_dir).replace("\n", "\\n")
    assert out[1].startswith("status: FAIL")
    md_text = (run_dir / "report.md").read_text()
    lines = md_text.splitlines()
    assert lines.count("## Health") == 1 and "- status: PASS" not in lines
    assert f"- run_dir: {str(run_dir)}".replace("\n", "\\n") in lines
    assert offtd.load_run(run_dir).report["run_info"]["run_dir"] == str(run_dir)  # JSON keeps the real path


def test_names_with_pipes_and_html_stay_inert(tmp_path):
    name = 'a|b<img src=x onerror=alert(1)><!-- &amp; [x](javascript:y)'
    proc = offtd_proc("run", *FAST, "--out", str(tmp_path), "--set", f"name={json.dumps(name)}")
    run_dir, report = completed_run(proc)
    assert report["run_info"]["name"] == name
    md_text = (run_dir / "report.md").read_text()
    assert "<img" not in md_text and "<!--" not in md_text and "&amp;" not in md_text.replace("&amp;amp;", "")
    assert "](javascript" not in md_text
    sweep = offtd_proc("sweep", "--out", str(tmp_path / "sw"), *FAST_SWEEP, "--grid", "name=a|b,<i>c,d")
    assert sweep.returncode == 0, sweep.stderr
    table = [line for line in (Path(sweep.stdout.splitlines()[0]) / "sweep.md").read_text().splitlines() if line.startswith("|")]
    cells = [len(_split_row(line)) for line in table]
    assert len(set(cells)) == 1 and len(table) == 5, table  # header, rule, 3 rows: same number of cells
    assert "<i>" not in "\n".join(table)


def _split_row(line: str) -> list[str]:
    """Cells of a markdown table row: split at pipes that are not backslash-escaped."""
    cells, cur, i = [], "", 0
    while i < len(line):
        if line[i] == "\\" and i + 1 < len(line):
            cur += line[i : i + 2]
            i += 2
            continue
        if line[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += line[i]
        i += 1
    return cells


@given(st.text())
def test_md_is_one_inert_line_and_keeps_table_cells(text):
    out = md(text, table=True)
    assert out.splitlines() == [out] or out == ""
    assert out.isprintable()
    assert len(_split_row(f"|{out}|")) == 2  # one cell
    import re

    assert not re.search(r"<[A-Za-z/!?]", out) and "](" not in out  # no tag, comment or link
    assert not re.search(r"&[A-Za-z0-9#]", re.sub(r"&(?:lt|amp);", "", out))  # the only entities are md's own


# ------------------------------------------------------------------------------ 5. output errors


def test_closed_stdout_pipe_is_sigpipe_semantics_and_the_run_is_complete(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| true`: the reader is gone before offtd prints
    try:
        proc = offtd_proc("run", *FAST, "--run-dir", str(tmp_path / "run"), stdout=write_end, stderr=subprocess.PIPE,
                          capture_output=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 128 + signal.SIGPIPE, proc.stderr
    assert proc.stderr == ""  # no traceback, no "Exception ignored"
    assert strict_json(tmp_path / "run" / "report.json")["run_info"]["completed_iters"] == 2


def test_stdout_on_a_full_device_is_exit_3_and_the_run_is_complete(tmp_path):
    with open("/dev/full", "w") as full:
        proc = offtd_proc("run", *FAST, "--run-dir", str(tmp_path / "run"), stdout=full, stderr=subprocess.PIPE,
                          capture_output=False)  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == "offtd: error: cannot write to standard output: No space left on device\n"
    assert strict_json(tmp_path / "run" / "report.json")["run_info"]["completed_iters"] == 2


@pytest.mark.parametrize("limit", select([12000], [300, 3000, 30000]))
def test_file_size_limit_mid_write_is_exit_3_and_keeps_nothing(tmp_path, limit):
    out = tmp_path / "new" / "root"  # parents the run creates are removed too
    proc = offtd_proc("run", *FAST, "--out", str(out), fsize=limit)
    one_line_error(proc, 3, "could not write the run", "File too large", "nothing was kept")
    assert list(tmp_path.iterdir()) == []


ENOSPC_PATCH = """
import errno, os
import offtd.report as report
real = report.write_atomic
calls = []
def write_atomic(path, text):
    calls.append(path)
    if len(calls) == {n}:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    real(path, text)
report.write_atomic = write_atomic
"""


@pytest.mark.parametrize("n", select([3], [1, 2, 5, 8]))
def test_disk_full_while_writing_is_exit_3_and_keeps_nothing(tmp_path, n):
    proc = offtd_proc("run", *FAST, "--run-dir", str(tmp_path / "a" / "run"), code=patched(ENOSPC_PATCH.format(n=n)))
    line = one_line_error(proc, 3, "could not write the run: No space left on device")
    assert str(tmp_path / "a" / "run") in line
    assert list(tmp_path.iterdir()) == []  # neither the run directory nor the parent it made


def test_a_full_file_system_refused_up_front_creates_nothing(tmp_path):
    patch = """
    import offtd.api as api
    real = api.shutil.disk_usage
    api.shutil.disk_usage = lambda p: real(p)._replace(free=1000)
    """
    proc = offtd_proc("run", *FAST, "--out", str(tmp_path / "out"), code=patched(patch))
    one_line_error(proc, 2, "output location is full", str(tmp_path / "out" / "default"))
    assert list(tmp_path.iterdir()) == []  # no empty out/<name>/


def test_closed_stderr_does_not_break_a_run(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = offtd_proc("run", *[a for a in FAST if a != "--quiet"], "--progress", "--run-dir", str(tmp_path / "run"),
                          stderr=write_end, stdout=subprocess.PIPE, capture_output=False)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert (tmp_path / "run" / "report.json").exists()


# ----------------------------------------------------------------------------- 6. damaged run dirs

DAMAGED = select(
    [
        ("truncated", lambda good: good[: len(good) // 2], "invalid JSON (truncated or damaged)"),
        ("empty", lambda good: b"", "is empty"),
        ("empty_object", lambda good: b"{}", 'not an offtd report: "run_info" is missing'),
        ("array", lambda good: b"[]", "not an offtd report: expected a JSON object, got list"),
        ("binary", lambda good: b"\xff\xfe\x00garbage", "is not UTF-8 text"),
        ("nan_token", lambda good: _token(good, b"NaN"), "invalid JSON: the number NaN"),
    ],
    [
        ("infinity_token", lambda good: _token(good, b"-Infinity"), "invalid JSON: the number -Infinity"),
        ("overflowing_number", lambda good: _token(good, b"1e999"), "invalid JSON: the number 1e999"),
        ("null", lambda good: b"null", "expected a JSON object, got null"),
        ("string_in_series", lambda good: _edit(good, lambda d: d["series"]["td_loss"].__setitem__(0, "x")),
         '"series.td_loss" is not a list of numbers'),
        ("bad_status", lambda good: _edit(good, lambda d: d["health"].__setitem__("status", "BROKEN")), "no valid status"),
        ("no_checks", lambda good: _edit(good, lambda d: d["health"].pop("checks")), '"health.checks"'),
        ("deep", lambda good: b"[" * 100000 + b"]" * 100000, "invalid JSON"),
        ("huge_int", lambda good: b"1" * 5000, "invalid JSON"),
    ],
)  # fmt: skip

def _token(good: bytes, token: bytes) -> bytes:
    old = b'"completed_iters": 2'
    assert old in good
    return good.replace(old, b'"completed_iters": ' + token)


def _edit(good: bytes, change) -> bytes:
    data = json.loads(good)
    change(data)
    return json.dumps(data).encode()


LOAD_CHILD = """
import json, sys
import offtd
try:
    offtd.load_run(sys.argv[1])
    print(json.dumps(["ok", ""]))
except offtd.SpecError as exc:
    print(json.dumps(["SpecError", str(exc)]))
except BaseException as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
"""


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("good") / "run"
    offtd.run(None, backend="python", run_dir=run_dir, **{"run.outer_iters": 2, "run.horizon": 3})
    return run_dir


@pytest.mark.parametrize("case", DAMAGED, ids=[c[0] for c in DAMAGED])
def test_damaged_report_json_is_one_error_naming_the_file(tmp_path, good_run, case):
    import shutil

    _, damage, needle = case
    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    good = (good_run / "report.json").read_bytes()
    (run_dir / "report.json").write_bytes(damage(good))
    proc = offtd_proc(str(run_dir), code=LOAD_CHILD, timeout=60)
    kind, message = json.loads(proc.stdout)
    assert kind == "SpecError", (kind, message)
    assert message.startswith(f"{run_dir / 'report.json'}: ") and needle in message, message
    assert "\n" not in message and len(message) < 500


def test_load_run_reads_back_what_run_wrote_and_names_missing_pieces(tmp_path, good_run):
    import shutil

    assert offtd.load_run(good_run).report["run_info"]["completed_iters"] == 2
    for missing in ("spec.toml", "report.json"):
        run_dir = tmp_path / missing
        shutil.copytree(good_run, run_dir)
        (run_dir / missing).unlink()
        with pytest.raises(offtd.SpecError, match="spec.toml: no such spec file|not a complete offtd run directory"):
            offtd.load_run(run_dir)


# ------------------------------------------------------------------------------- 7. numpy values

NUMPY_CHILD = """
import json
import numpy as np
import offtd
small = dict(run__outer_iters=np.int64(1), run__horizon=np.int32(3), probes__distribution__num_samples=np.uint16(32),
             probes__distribution__action_samples=np.int8(4), probes__fixed_point__batch_size=32,
             probes__stability__batch_size=32)
out = []
for kw in ({"policy__p_mix": np.float64(0.1)}, {"policy__p_mix": np.float32(0.25)}, {"run__seed": np.uint64(2**64 - 1)},
           {"env__a": np.eye(2) * 0.5}, {"env__b": [np.array([0.5, 0.0]), np.array([0.0, 0.5])]},
           {"env__q": np.eye(2, dtype=np.float32)}, {"rho__clip_enabled": np.bool_(True)}, {"critic__gamma": np.float16(0.5)}):
    res = offtd.run(None, backend="python", **{**small, **kw})
    spec = offtd.load_spec(res.spec)  # the resolved spec holds plain Python values
    assert offtd.spec.to_toml(spec) == offtd.spec.to_toml(res.spec)
    out.append(res.status)
try:
    offtd.run(None, env__a=np.eye(3))
except offtd.SpecError as exc:
    out.append(str(exc))
print(json.dumps(out))
"""


def test_numpy_scalars_and_arrays_are_accepted():
    proc = offtd_proc(code=NUMPY_CHILD)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert all(s in ("PASS", "WARN", "FAIL") for s in out[:-1]), out
    assert out[-1] == "env.a: expected a 2 x 2 matrix (n x n), got 3 x 3"


def test_numpy_values_are_stored_as_python_values():
    import numpy as np

    spec = offtd.load_spec(None, {"policy.p_mix": np.float32(0.5), "run.seed": np.int64(7), "env.a": np.eye(2)})
    assert type(spec.policy.p_mix) is float and type(spec.run.seed) is int
    assert spec.env.a == ((1.0, 0.0), (0.0, 1.0)) and all(type(x) is float for row in spec.env.a for x in row)
    with pytest.raises(offtd.SpecError, match="expected an integer"):
        offtd.load_spec(None, {"run.seed": np.float64(0.5)})
    with pytest.raises(offtd.SpecError, match="expected true or false"):
        offtd.load_spec(None, {"rho.clip_enabled": np.int64(1)})
    with pytest.raises(offtd.SpecError, match="expected a matrix"):
        offtd.load_spec(None, {"env.a": np.zeros((2, 2, 2))})


# -------------------------------------------------------------------------------- 8. smaller gaps

SLOW_VALIDATION = """
import sys, time
import offtd.spec_resolve as spec  # validation; offtd.spec_io's load_spec looks it up there at each call
real = spec.spec_from_dict
def slow(data):
    sys.stderr.write("validating\\n")
    sys.stderr.flush()
    time.sleep(60)
    return real(data)
spec.spec_from_dict = slow
"""


def test_sigterm_during_validation_is_the_interrupted_message_and_130(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", patched(SLOW_VALIDATION), "run", *FAST, "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(), preexec_fn=_limits(),
    )  # fmt: skip
    try:
        assert child.stderr.readline() == "validating\n"
        child.send_signal(signal.SIGTERM)
        rc = child.wait(timeout=30)
        err = child.stderr.read()
    finally:
        child.kill()
        child.wait()
    assert rc == 130
    assert err == "offtd: error: interrupted before a report was written\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("where", select(["missing_dir"], ["directory"]))
def test_bench_json_path_is_checked_before_the_benchmark(tmp_path, where):
    path = tmp_path / "nope" / "b.json" if where == "missing_dir" else tmp_path
    start = time.monotonic()
    proc = offtd_proc("bench", "--quick", "--json", str(path), timeout=60)
    one_line_error(proc, 2, "--json", str(path))
    assert time.monotonic() - start < 30  # refused at once, not after the benchmark


def test_grid_without_equals_blames_grid(tmp_path):
    proc = offtd_proc("sweep", "--out", str(tmp_path), "--grid", "policy.p_mix")
    line = one_line_error(proc, 2, "--grid policy.p_mix", "KEY=V1,V2")
    assert "--set" not in line


def test_many_rayon_threads_are_capped_with_a_warning(tmp_path):
    cores = len(os.sched_getaffinity(0))
    proc = offtd_proc("run", "--quiet", "--run-dir", str(tmp_path / "run"), "--set", "run.outer_iters=3",
                      env_extra={"RAYON_NUM_THREADS": "5000"}, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == f"offtd: warning: RAYON_NUM_THREADS=5000 is more than the {cores} usable cores; using {cores}\n"
    few = offtd_proc("run", "--quiet", "--run-dir", str(tmp_path / "run1"), "--set", "run.outer_iters=3",
                     env_extra={"RAYON_NUM_THREADS": "1"})  # fmt: skip
    assert few.returncode == 0 and few.stderr == ""
    # capping changes nothing in the report (thread counts never change a result)
    a, b = (strict_json(tmp_path / d / "report.json") for d in ("run", "run1"))
    for r in (a, b):
        r["run_info"].pop("timestamp"), r["run_info"].pop("run_dir")
    assert a == b


# ---------------------------------------------------------------------------------- 9. documented


def test_readme_documents_every_exit_code_and_model_md_the_tolerance():
    readme = (ROOT / "README.md").read_text()
    codes = {v for k, v in vars(cli).items() if k.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 4, 130, 141}
    for code in codes:
        assert f"\n| {code} |" in readme, code
    assert "OPENBLAS_CORETYPE" in readme and "state_dim" in readme
    model = (ROOT / "specs" / "MODEL.md").read_text()
    section0 = model.split("## 1. ")[0]
    assert "### 0.4 Reproduction tolerance" in section0 and "1e-9" in section0
