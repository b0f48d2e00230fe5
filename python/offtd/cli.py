"""Command line: argument parsing and exit codes only.

Exit codes: 0 a completed run (whatever its health), 1 `--fail-on` tripped, 2 bad input, 3 could not
write the run (disk full, file too large; nothing half-written is kept) or standard output, 4 internal
error (a bug in offtd: one line, `OFFTD_TRACEBACK=1` shows the traceback), 130 interrupted (SIGINT /
SIGTERM; the report of the completed iterations is still written), 141 standard output was closed (as a
tool killed by SIGPIPE; the run directory is complete).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

EXIT_OK, EXIT_FAIL_ON, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_WRITE, EXIT_INTERNAL, EXIT_PIPE = 3, 4, 128 + signal.SIGPIPE


def _printable(text: object) -> str:
    from .spec import _printable as printable

    return printable(str(text))


def _err(message: str) -> None:
    """One line on stderr (control characters escaped); a closed or full stderr is ignored."""
    try:
        sys.stderr.write(_printable(message) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _StdoutError(Exception):
    """Standard output could not be written (other than a closed pipe): /dev/full, an I/O error."""


def _emit(*lines: object) -> None:
    """Lines on stdout, each escaped to one line (a run directory may hold a newline), then flushed."""
    try:
        sys.stdout.write("".join(_printable(line) + "\n" for line in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _StdoutError(exc.strerror or str(exc)) from None


def _detach_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's last flush of a dead stdout stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests redirect to StringIO)
        pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"offtd: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="offtd", description="Off-policy TD learning lab: run an experiment spec and read its report.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run an experiment spec (default: the embedded default experiment)")
    r.add_argument("spec", nargs="?", help="experiment spec (TOML); omitted: the embedded default experiment")
    r.add_argument("--out", default="outputs", help="root of run directories (default: outputs)")
    r.add_argument("--run-dir", help="exact run directory to create (must not exist)")
    r.add_argument("--backend", choices=("rust", "python"), default="rust", help="kernel implementation (default: rust)")
    r.add_argument("--seed", type=int, help="override run.seed")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set policy.p_mix=0.1 (repeatable)")
    r.add_argument("--fail-on", choices=("fail", "warn"), help="exit 1 when the status is at least this bad")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--progress", action="store_true",
                   help="show progress even when stderr is not a terminal (one line per iteration)")
    w = sub.add_parser("sweep", help="run a grid of overrides of one spec; one run directory per cell and a summary table")
    w.add_argument("spec", nargs="?", help="base spec (TOML); omitted: the embedded default experiment")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="values of one key (repeatable; the sweep is the Cartesian product)")
    w.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override the base spec")
    w.add_argument("--out", default="outputs", help="root of the sweep directory (default: outputs)")
    w.add_argument("--backend", choices=("rust", "python"), default="rust")
    w.add_argument("--fail-on", choices=("fail", "warn"), help="exit 1 when any cell's status is at least this bad")
    t = sub.add_parser("theory", help="the exact expected TD update, fixed point and ratio moments of a spec or a grid (no sampling)")
    t.add_argument("spec", nargs="?", help="base spec (TOML); omitted: the embedded default experiment")
    t.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one key (repeatable; the table is the Cartesian product)")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override the base spec")
    t.add_argument("--csv", dest="csv_out", help="also write the table as CSV to this file")
    t.add_argument("--backend", choices=("rust", "python"), default="rust")
    b = sub.add_parser("bench", help="time the kernels and whole runs on both backends")
    b.add_argument("--quick", action="store_true", help="fewer repeats and smaller cases")
    b.add_argument("--json", dest="json_out", help="also write the results as JSON to this file")
    return p


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops between iterations. A second signal aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handler(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


def _progress(enabled: bool, tty: bool):
    if not enabled:
        return None

    def show(done: int, total: int) -> None:
        try:
            if tty:
                sys.stderr.write(f"\r  iteration {done}/{total}")
                if done == total:
                    sys.stderr.write("\n")
            else:
                sys.stderr.write(f"iteration {done}/{total}\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or full: the display is optional, the run is not
            pass

    return show


def _cmd_run(args: argparse.Namespace) -> int:
    from . import api
    from .api import OutputError
    from .spec import SpecError, load_spec, parse_override

    try:
        overrides = dict(parse_override(item) for item in args.sets)
        if args.seed is not None:
            overrides["run.seed"] = args.seed
        spec = load_spec(args.spec, overrides)  # validate before anything is created
    except SpecError as exc:
        sys.stderr.write(f"offtd: error: {exc}\n")
        return EXIT_BAD_INPUT
    tty = sys.stderr.isatty()
    stop = _StopFlag()
    old = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # the handlers stay until the exit code is decided: a late signal still gives 130
        try:
            result = api.run(
                spec,
                backend=args.backend,
                out=args.out,
                run_dir=args.run_dir,
                progress=_progress((tty or args.progress) and not args.quiet, tty),
                should_stop=stop,
            )
        except OutputError as exc:  # disk full mid-write: not bad input, and no half-written run is left
            _err(f"offtd: error: {exc}")
            return EXIT_WRITE
        except SpecError as exc:
            sys.stderr.write(f"offtd: error: {exc}\n")
            return EXIT_BAD_INPUT
        except ImportError as exc:
            sys.stderr.write(f"offtd: error: backend {args.backend!r} is not available: {exc}\n")
            return EXIT_BAD_INPUT
        _emit(result.run_dir, result.status_line)
        if result.status == "INTERRUPTED":
            return EXIT_INTERRUPTED
        if stop():  # the signal came after the last iteration: the report is complete, but stop as asked
            sys.stderr.write("offtd: interrupted after the last iteration; the report is complete\n")
            return EXIT_INTERRUPTED
        bad = {"fail": ("FAIL",), "warn": ("FAIL", "WARN")}.get(args.fail_on or "", ())
        return EXIT_FAIL_ON if result.status in bad else EXIT_OK
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .api import OutputError
    from .spec import SpecError, load_spec, parse_override
    from .sweep import STATUSES, cells, parse_grid, sweep

    try:
        base = load_spec(args.spec, dict(parse_override(item) for item in args.sets))
        grid = parse_grid(args.grid)
        total = len(cells(base, grid))  # every cell validated before anything is created
    except SpecError as exc:
        sys.stderr.write(f"offtd: error: {exc}\n")
        return EXIT_BAD_INPUT
    stop = _StopFlag()
    old = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_cell(i: int, n: int, result) -> None:
        _err(f"cell {i + 1}/{n}: {result.status_line}")

    try:
        try:
            root, rows = sweep(base, grid, backend=args.backend, out=args.out, on_cell=on_cell, should_stop=stop)
        except OutputError as exc:
            _err(f"offtd: error: {exc}")
            return EXIT_WRITE
        except SpecError as exc:
            sys.stderr.write(f"offtd: error: {exc}\n")
            return EXIT_BAD_INPUT
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        _emit(root, f"{len(rows)}/{total} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        if stop() or len(rows) < total:
            return EXIT_INTERRUPTED
        # An ERROR cell (no report) counts as failing for --fail-on.
        bad = {"fail": ("FAIL", "ERROR"), "warn": ("FAIL", "WARN", "ERROR")}.get(args.fail_on or "", ())
        return EXIT_FAIL_ON if any(r["status"] in bad for r in rows) else EXIT_OK
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_theory(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .exact.grid import theory_table, to_csv, to_markdown
    from .report import write_atomic
    from .spec import SpecError, load_spec, parse_override
    from .sweep import parse_grid

    try:
        base = load_spec(args.spec, dict(parse_override(item) for item in args.sets))
        grid = parse_grid(args.grid)
        rows = theory_table(base, grid, backend=args.backend)
        if args.csv_out:
            write_atomic(Path(args.csv_out), to_csv(rows))
    except SpecError as exc:
        sys.stderr.write(f"offtd: error: {exc}\n")
        return EXIT_BAD_INPUT
    except OSError as exc:
        _err(f"offtd: error: {args.csv_out}: cannot write: {exc.strerror or exc}")
        return EXIT_WRITE if _is_full(exc) else EXIT_BAD_INPUT
    _emit(*to_markdown(rows).splitlines())
    return EXIT_OK


def _is_full(exc: OSError) -> bool:
    """A write that failed for lack of room or a device error (exit 3), not for a bad path (exit 2)."""
    import errno

    return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO)


def _check_output_file(path: str) -> str | None:
    """Why `path` cannot be written as a new or replaced file (None: it can), checked before the work."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return "is a directory"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        return f"no such directory: {parent}"
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return "not writable"
    return None


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    if args.json_out is not None:  # checked first: the benchmark takes minutes
        problem = _check_output_file(args.json_out)
        if problem is not None:
            _err(f"offtd: error: --json {args.json_out}: {problem}")
            return EXIT_BAD_INPUT
    try:
        return bench_main(quick=args.quick, json_path=args.json_out)
    except OSError as exc:
        if exc.filename is None or str(exc.filename) != str(args.json_out):
            raise
        _err(f"offtd: error: --json {args.json_out}: cannot write: {exc.strerror or exc}")
        return EXIT_WRITE if _is_full(exc) else EXIT_BAD_INPUT


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM before a command installs its own handlers (while parsing, importing, validating) is an
    # interruption like SIGINT: the message and 130, not a silent 143.
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: signals are the host program's business
        previous = None
    try:
        return _main(argv)
    except BrokenPipeError:  # stdout closed early (`offtd run | head -0`): as a tool killed by SIGPIPE
        _detach_stdout()
        return EXIT_PIPE
    except _StdoutError as exc:
        _detach_stdout()
        _err(f"offtd: error: cannot write to standard output: {exc}")
        return EXIT_WRITE
    except Exception as exc:  # a bug: one line and its own exit code (1 belongs to --fail-on)
        if os.environ.get("OFFTD_TRACEBACK"):
            import traceback

            traceback.print_exc()
        _err(f"offtd: internal error: {type(exc).__name__}: {exc} (a bug in offtd; OFFTD_TRACEBACK=1 shows the traceback)")
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        from .api import cap_threads

        warning = cap_threads()  # before the Rust core starts its threads
        if warning is not None:
            _err(f"offtd: warning: {warning}")
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "theory":
            return _cmd_theory(args)
        return _cmd_bench(args)
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM, or one before the run started
        _err("offtd: error: interrupted before a report was written")
        return EXIT_INTERRUPTED

