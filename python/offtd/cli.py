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
from collections.abc import Sequence
from typing import NoReturn

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
    def error(self, message: str) -> NoReturn:  # one line, exit 2
        sys.stderr.write(f"offtd: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


class _Version(argparse.Action):
    """`offtd --version`: printed through _emit, so that a closed or full stdout gives 141 / 3 as elsewhere."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:  # fmt: skip
        from . import __version__

        _emit(f"offtd {__version__}")
        raise SystemExit(EXIT_OK)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="offtd", description="Off-policy TD learning lab: run an experiment spec and read its report.")
    p.add_argument("--version", action=_Version)
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
    r.add_argument("--no-plots", action="store_true", help="do not draw the run's pictures (offtd plot RUN_DIR draws them later)")
    w = sub.add_parser("sweep", help="run a grid of overrides of one spec over seeds, in parallel, resumable; a summary table")
    w.add_argument("spec", nargs="?", help="base spec (TOML, may hold a [sweep] table); omitted: the embedded default experiment")
    w.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one key (repeatable; the sweep is the Cartesian product)")
    w.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override the base spec")
    w.add_argument("--seeds", help="seeds of every cell: FIRST..LAST (inclusive) or S1,S2,... (default: run.seed)")
    w.add_argument("--workers", type=int, help="local worker processes (default: the usable cores; 1 runs in this process)")
    w.add_argument("--dask", metavar="ADDRESS", help="run on the Dask scheduler at ADDRESS (pip install 'offtd[dask]')")
    w.add_argument("--dask-timeout", type=float, default=20.0, metavar="SECONDS",
                   help="with --dask: give up connecting, or waiting for a first worker, after SECONDS (default 20)")
    w.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR: skip finished runs, rerun interrupted or failed ones")
    w.add_argument("--keep", choices=("full", "summary"),
                   help="full: a run directory per (cell, seed) (default); summary: only the rows of sweep.csv")
    w.add_argument("--yes", action="store_true", help="run a sweep above the size or time limit without asking")
    w.add_argument("--out", default="outputs", help="root of the sweep directory (default: outputs)")
    w.add_argument("--backend", choices=("rust", "python"))
    w.add_argument("--fail-on", choices=("fail", "warn"), help="exit 1 when any run's status is at least this bad")
    w.add_argument("--no-plots", action="store_true", help="do not draw the sweep's heatmaps at the end")
    w.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    pl = sub.add_parser("plot", help="draw the pictures of a run directory or a sweep directory (pip install 'offtd[plot]')")
    pl.add_argument("dir", help="a run directory (report.json) or a sweep directory (sweep.toml)")
    pl.add_argument("--x", help="sweep: the key on the horizontal axis of the heatmaps (default: the first swept key)")
    pl.add_argument("--y", help="sweep: the key on the vertical axis (default: the second swept key)")
    t = sub.add_parser("theory", help="the exact expected TD update, fixed point and ratio moments of a spec or a grid (no sampling)")
    t.add_argument("spec", nargs="?", help="base spec (TOML); omitted: the embedded default experiment")
    t.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of one key (repeatable; the table is the Cartesian product)")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override the base spec")
    t.add_argument("--csv", dest="csv_out", help="also write the table as CSV to this file")
    t.add_argument("--backend", choices=("rust", "python"), default="rust")
    sub.add_parser("schema", help="print the JSON Schema of a spec, for TOML editors (Taplo, Even Better TOML)")
    b = sub.add_parser("bench", help="time the kernels and whole runs on both backends, and sweeps")
    b.add_argument("--quick", action="store_true", help="fewer repeats and smaller cases")
    b.add_argument("--json", dest="json_out", help="also write the results as JSON to this file")
    b.add_argument("--only", choices=("kernels", "sweeps"), help="only the kernel table, or only the sweep table")
    return p


class _StopFlag:
    """Set by SIGINT/SIGTERM. While the loop computes an iteration (`offtd.loop.computing()`), the
    handler also raises `offtd.loop.Interrupted`, which stops the iteration at once (inside a Rust
    kernel too: the core runs the handlers about every 10 ms) and discards it; otherwise (between
    iterations, while the report is written) the loop stops at its next check. A second signal aborts
    at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handler(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        loop = sys.modules.get("offtd.loop")  # not imported yet: no loop is computing
        if loop is not None and loop.computing():
            raise loop.Interrupted(signum)


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
        if not args.no_plots and result.status != "INTERRUPTED":
            _draw_run_plots(result)
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


def _draw_run_plots(result) -> None:
    """The run's pictures, after the run (its report is complete either way): a missing matplotlib or a
    picture that cannot be written is a warning, not a failed run."""
    from .plots import PlotsUnavailable, plot_run

    try:
        plot_run(result)
    except PlotsUnavailable as exc:
        _err(f"offtd: warning: no plots: {exc} (or --no-plots)")
    except OSError as exc:
        _err(f"offtd: warning: could not write the plots: {exc.strerror or exc}")


def _sweep_progress(enabled: bool, tty: bool):
    """Runs done, failed, elapsed and ETA: one line rewritten in place on a terminal, a line every ten
    seconds elsewhere (--progress), nothing otherwise."""
    if not enabled:
        return None
    from .sweep import duration

    last = [0.0]

    def show(p) -> None:
        failed = ", ".join(f"{p.counts[s]} {s}" for s in ("FAIL", "ERROR") if p.counts.get(s))
        eta = "" if p.eta_s is None or p.done == p.todo else f", ETA {duration(p.eta_s)}"
        line = f"runs {p.done}/{p.todo}" + (f" ({failed})" if failed else "") + f", {duration(p.elapsed_s)} elapsed{eta}"
        try:
            if tty:
                sys.stderr.write("\r\x1b[K  " + line + ("\n" if p.done == p.todo else ""))
            elif p.elapsed_s - last[0] >= 10 or p.done == p.todo:
                last[0] = p.elapsed_s
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    return show


def _confirm(question: str) -> bool:
    """Ask on the terminal (stdin and stderr both one); anywhere else the answer is no."""
    try:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            return False
        sys.stderr.write(_printable(question))
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower() in ("y", "yes")
    except (OSError, ValueError):
        return False


def _cmd_sweep(args: argparse.Namespace) -> int:
    import importlib

    from .api import OutputError
    from .spec import SpecError, parse_override

    if args.workers is not None and args.workers < 1:
        _err("offtd: error: --workers: must be >= 1")
        return EXIT_BAD_INPUT
    if args.workers is not None and args.dask:
        _err("offtd: error: --workers and --dask: give one")
        return EXIT_BAD_INPUT
    if args.workers == 1:  # one worker is one core: this process, one Rayon thread (read at the first kernel)
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
    sw = importlib.import_module("offtd.sweep")  # the module (offtd.sweep is also the function)
    try:
        overrides = dict(parse_override(item) for item in args.sets)
        grid = sw.parse_grid(args.grid)
        plan = sw.plan(args.spec, grid, args.seeds, keep=args.keep, backend=args.backend, resume=args.resume,
                       workers=args.workers, overrides=overrides or None)  # fmt: skip
    except SpecError as exc:
        _err(f"offtd: error: {exc}")
        return EXIT_BAD_INPUT
    client = executor = None
    tty = sys.stderr.isatty()
    if args.dask:
        from .executors import DaskUnavailable, dask_executor

        if not args.dask_timeout > 0:
            _err(f"offtd: error: --dask-timeout {args.dask_timeout}: must be a positive number of seconds")
            return EXIT_BAD_INPUT
        if tty:
            _err(f"offtd: connecting to the Dask scheduler at {args.dask} (up to {args.dask_timeout:g} s)")
        try:
            client, executor, plan.workers = dask_executor(args.dask, args.dask_timeout)
        except DaskUnavailable as exc:
            _err(f"offtd: error: {exc}")
            return EXIT_BAD_INPUT
        except (OSError, TimeoutError, ValueError) as exc:  # ValueError: an address distributed cannot parse
            _err(f"offtd: error: --dask {args.dask}: cannot connect: {exc}")
            return EXIT_BAD_INPUT
    why = plan.needs_confirmation()
    if why is not None and not args.yes and not _confirm(f"offtd: {plan.describe()}: {why}. Run it? [y/N] "):
        _err(f"offtd: error: {plan.describe()}: {why}; add --yes to run it")
        if client is not None:
            client.close()
        return EXIT_BAD_INPUT
    pool = sw.start_pool(plan) if executor is None else None  # its workers start while the grid is validated
    try:
        if plan.root is None:
            sw.validate(plan.defn)
    except BaseException as exc:  # a bad cell, or an interruption: end the workers being started, silently
        if pool is not None:
            pool.kill()
        if client is not None:
            client.close()
        if isinstance(exc, SpecError):
            _err(f"offtd: error: {exc}")
            return EXIT_BAD_INPUT
        raise
    _err(f"offtd: {plan.describe()}")
    stop = _StopFlag()
    old = {s: signal.signal(s, stop.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            result = sw.execute(plan, executor=executor, pool=pool, out=args.out, should_stop=stop,
                                progress=_sweep_progress(tty or args.progress, tty))  # fmt: skip
        except OutputError as exc:
            _err(f"offtd: error: {exc}")
            return EXIT_WRITE
        except SpecError as exc:
            _err(f"offtd: error: {exc}")
            return EXIT_BAD_INPUT
        finally:
            if client is not None:
                client.close()
        if not args.no_plots and not result.interrupted:
            from .plots import PlotsUnavailable
            from .sweep_plots import write_sweep_plots

            try:
                write_sweep_plots(result.root)
            except PlotsUnavailable as exc:
                _err(f"offtd: warning: no plots: {exc} (or --no-plots)")
            except OSError as exc:
                _err(f"offtd: warning: could not write the plots: {exc.strerror or exc}")
        defn, counts = result.defn, result.counts
        what = f"{defn.n_cells} cells" if defn.n_seeds == 1 else f"{defn.n_runs} runs ({defn.n_cells} cells x {defn.n_seeds} seeds)"
        _emit(result.root, f"{result.done}/{what}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        if stop() or result.interrupted or not result.complete:
            return EXIT_INTERRUPTED
        # An ERROR run (no report) counts as failing for --fail-on.
        bad = {"fail": ("FAIL", "ERROR"), "warn": ("FAIL", "WARN", "ERROR")}.get(args.fail_on or "", ())
        return EXIT_FAIL_ON if any(counts[s] for s in bad) else EXIT_OK
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .plots import PlotsUnavailable
    from .spec import SpecError

    target = Path(args.dir)
    try:
        if (target / "report.json").is_file():
            from .api import load_run
            from .plots import plot_run

            written = plot_run(load_run(target))
        elif (target / "sweep.toml").is_file():
            from .sweep_plots import write_sweep_plots

            written = write_sweep_plots(target, x=args.x, y=args.y)
        else:
            _err(f"offtd: error: {args.dir}: neither a run directory (report.json) nor a sweep directory (sweep.toml)")
            return EXIT_BAD_INPUT
    except PlotsUnavailable as exc:
        _err(f"offtd: error: {exc}")
        return EXIT_BAD_INPUT
    except SpecError as exc:
        _err(f"offtd: error: {exc}")
        return EXIT_BAD_INPUT
    except OSError as exc:
        _err(f"offtd: error: {args.dir}: could not write the plots: {exc.strerror or exc}")
        return EXIT_WRITE if _is_full(exc) else EXIT_BAD_INPUT
    _emit(*written)
    return EXIT_OK


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
        return bench_main(quick=args.quick, json_path=args.json_out, only=args.only)
    except OSError as exc:
        if exc.filename is None or str(exc.filename) != str(args.json_out):
            raise
        _err(f"offtd: error: --json {args.json_out}: cannot write: {exc.strerror or exc}")
        return EXIT_WRITE if _is_full(exc) else EXIT_BAD_INPUT


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def command() -> int:
    """The `offtd` console script and `python -m offtd`: :func:`main`, then an exit that signals no longer
    interrupt. Once the results are written and the exit code decided, a late Ctrl-C (the second one of
    an impatient user, arriving while the interpreter tears down) would kill the teardown, turning the
    exit code into a death by SIGINT or printing a finaliser's traceback."""
    code = main()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    # CPython 3.11 under -m: a KeyboardInterrupt raised inside code that exec() runs (dataclass methods
    # are made so while a module is imported) sets the interpreter's "unhandled Ctrl-C" flag even when
    # offtd catches it, and the process then kills itself with SIGINT instead of exiting with `code`.
    # Running anything through exec() clears the flag.
    exec("None")
    return code


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


def _may_use_pool(args: argparse.Namespace) -> bool:
    """Whether this sweep may run on the local process pool (the plan, made later, can still run a small
    sweep in this process)."""
    from .threads import usable_cores

    if args.dask or args.workers is not None and args.workers < 2:
        return False
    return args.workers is not None or usable_cores() > 1


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parser().parse_args(argv)
        from .threads import cap_threads

        warning = cap_threads()  # before the Rust core starts its threads
        if warning is not None:
            _err(f"offtd: warning: {warning}")
        if args.command == "sweep" and _may_use_pool(args):
            from . import executors

            try:  # the pool's fork server imports offtd while this process does (offtd/__init__.py is lazy)
                executors.prestart()
            except Exception:  # only a head start: a pool that cannot start says so when the sweep needs it
                pass
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "theory":
            return _cmd_theory(args)
        if args.command == "plot":
            return _cmd_plot(args)
        if args.command == "schema":
            from .json_schema import schema_text

            _emit(*schema_text().splitlines())
            return EXIT_OK
        return _cmd_bench(args)
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM, or one before the run started
        _err("offtd: error: interrupted before a report was written")
        return EXIT_INTERRUPTED

