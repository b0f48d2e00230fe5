"""Where a sweep's runs execute: any `concurrent.futures.Executor`.

- :func:`local_pool` (the default of `offtd sweep`): a process pool over the usable cores, started with
  the ``forkserver`` context (``spawn`` where there is none): one server process imports offtd once and
  forks the workers from it, so starting them costs one import, not one per worker. Each worker runs one
  Rayon thread (``RAYON_NUM_THREADS=1`` is set by the initializer, before the Rust core's thread pool
  starts: rayon reads the variable at its first parallel call) and one BLAS thread, ignores the
  terminal's SIGINT (the sweep's own process decides what an interruption does), stops its run within a
  few milliseconds when the sweep asks it to (an event, and SIGTERM while a kernel runs), and dies with
  its parent (``PR_SET_PDEATHSIG`` on Linux; the fork server exits with the sweep's process), so a sweep
  killed with SIGKILL leaves no worker behind.
- :class:`InProcessExecutor`: runs each task at `submit`, in the calling process (`--workers 1`, and
  sweeps too small to pay for starting a pool).
- :func:`dask_executor`: a Dask distributed client's executor (`--dask ADDRESS`, the extra
  ``offtd[dask]``). Tasks are the same functions; a retried task reproduces the same bits (every random
  number comes from a counter-based stream of (seed, purpose, iteration, ...), specs/MODEL.md 1).

Any other executor works too: `offtd.sweep(..., executor=...)` only calls `submit` and reads the futures.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .threads import usable_cores

# Environment of a pool worker, set before the Rust core and numpy's BLAS start their threads.
WORKER_ENV = {"RAYON_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# --------------------------------------------------------------------------------- the stop request

_stop_check: Callable[[], bool] | None = None  # this process's "should the running sweep task stop?"
_worker_stop: mp.synchronize.Event | None = None
_worker_signalled = False


def should_stop() -> bool:
    """Whether the sweep task running in this process should stop (checked between runs, and by the
    loop between iterations)."""
    if _worker_signalled:
        return True
    if _worker_stop is not None and _worker_stop.is_set():
        return True
    return _stop_check is not None and _stop_check()


class stop_check:
    """Context manager: `should_stop()` also asks `fn` inside the block (the in-process executor runs
    tasks in the sweep's own process, where the CLI's signal flag decides)."""

    def __init__(self, fn: Callable[[], bool] | None):
        self.fn = fn

    def __enter__(self) -> None:
        global _stop_check
        self.saved = _stop_check
        _stop_check = self.fn

    def __exit__(self, *exc: object) -> None:
        global _stop_check
        _stop_check = self.saved


# ------------------------------------------------------------------------------------ process pool


def _die_with(sweep_pid: int) -> None:
    """End this worker (SIGKILL) when the sweep's process exits, even by SIGKILL: a thread waits on a
    pidfd of it (Linux), else polls it every second. (A forked worker's parent is the fork server, which
    the workers themselves keep alive, and the pool's queues never reach end-of-file: without this, a
    killed sweep would leave its workers waiting forever.) Also PR_SET_PDEATHSIG for spawned workers."""
    if sys.platform.startswith("linux") and os.getppid() == sweep_pid:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    try:
        fd: int | None = os.pidfd_open(sweep_pid)
    except ProcessLookupError:  # already gone
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (AttributeError, OSError):  # pragma: no cover - not Linux >= 5.3
        fd = None

    def watch() -> None:
        import select
        import time

        if fd is not None:
            select.select([fd], [], [])
        else:  # pragma: no cover
            while True:
                time.sleep(1.0)
                try:
                    os.kill(sweep_pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="offtd-sweep-watch", daemon=True).start()


def _on_sigterm(signum: int, frame: object) -> None:
    """A pool worker asked to stop: the running run ends at once (inside a Rust kernel too, which runs
    signal handlers about every 10 ms), its partial iteration discarded, as `offtd run` does."""
    global _worker_signalled
    _worker_signalled = True
    loop = sys.modules.get("offtd.loop")
    if loop is not None and loop.computing():
        raise loop.Interrupted(signum)


def _init_worker(stop_event: Any, sweep_pid: int, env: dict[str, str]) -> None:
    """Initializer of a :func:`local_pool` worker (runs before any task, so before the Rust core's
    thread pool starts: rayon reads RAYON_NUM_THREADS once, at its first parallel call)."""
    global _worker_stop
    os.environ.update(env)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, _on_sigterm)
    _worker_stop = stop_event
    _die_with(sweep_pid)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - a dependency
        pass
    else:  # held for the worker's life: run_batch need not set and restore it for every task
        import importlib

        sweep_module: Any = importlib.import_module("offtd.sweep")  # the module (offtd.sweep is also the function)
        sweep_module._blas_held = True


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (the pool's stop event is a semaphore it tracks) with its
    "leaked semaphore objects" warning off: a sweep killed with SIGKILL leaks the semaphore by
    definition, and the tracker, which outlives it, would print a UserWarning on the user's terminal
    after the shell's "Killed". It still unlinks the semaphore."""
    from multiprocessing import resource_tracker

    rule = "ignore::UserWarning:multiprocessing.resource_tracker"
    saved = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = rule if not saved else f"{saved},{rule}"
    try:
        resource_tracker.ensure_running()
    except Exception:  # pragma: no cover - the pool starts it anyway, warnings and all
        pass
    finally:
        if saved is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = saved


class LocalPool(cf.ProcessPoolExecutor):
    """A process pool whose workers can be asked to stop their running task (:meth:`request_stop`) and
    killed (:meth:`kill`); see the module docstring."""

    def __init__(self, workers: int | None = None, rayon_threads: int = 1):
        _quiet_resource_tracker()
        ctx = _context()
        self.workers = max(1, workers or usable_cores())
        self.stop_event = ctx.Event()
        env = {**WORKER_ENV, "RAYON_NUM_THREADS": str(rayon_threads)}
        super().__init__(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(self.stop_event, os.getpid(), env),
        )
        prestart(ctx)  # if not already running: it imports offtd meanwhile

    def _pids(self) -> list[int]:
        procs = getattr(self, "_processes", None) or {}
        return [p.pid for p in list(procs.values()) if p.pid is not None and p.is_alive()]

    def request_stop(self) -> None:
        """Running tasks stop at once (their run ends INTERRUPTED); queued ones see the flag and return."""
        self.stop_event.set()
        for pid in self._pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass

    def kill(self) -> None:
        """End every worker now (a second interruption, a refused grid). Waits for the pool's own thread to
        see them gone: on Python 3.11 an interpreter exiting while that thread still tears the pool down
        can print an OSError from concurrent.futures' exit hook."""
        for pid in self._pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.shutdown(wait=True, cancel_futures=True)


# What the fork server imports once, so that forked workers start with offtd loaded (the Rust core too:
# its thread pool starts only at the first parallel call, in a worker, after the initializer).
PRELOAD = ["offtd.sweep", "offtd.rust_backend", "offtd.exact.grid", "offtd.health", "offtd.advice"]


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")  # pragma: no cover - not POSIX


def prestart(ctx: Any = None) -> None:
    """Start the pool's fork server (and resource tracker) now, if not yet running: it imports offtd (about
    0.3 s) while this process goes on. The `offtd sweep` command calls this before it imports offtd's
    numerical modules itself, so the two imports overlap on two cores and the workers start that much
    sooner; a sweep that then runs in this process leaves the idle server to exit with it."""
    ctx = ctx or _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        _quiet_resource_tracker()
        # The server is born with SIGINT blocked (the mask survives exec, as for the resource tracker):
        # a Ctrl-C, which the terminal sends to the whole process group, must not print its traceback
        # from the middle of its imports. The sweep's process decides what an interruption does; the
        # workers ignore SIGINT anyway and still receive SIGTERM (request_stop).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            forkserver.ensure_running()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def local_pool(workers: int | None = None) -> LocalPool:
    """The default executor: a process pool of `workers` (default: the usable cores) processes, one
    Rayon thread each."""
    return LocalPool(workers)


# ------------------------------------------------------------------------------------- in process


class InProcessExecutor(cf.Executor):
    """Runs each task when it is submitted, in this process (the future is done on return). Used for
    `--workers 1` and for sweeps too small to pay for starting processes. Exceptions go into the future,
    as with any executor; a KeyboardInterrupt propagates."""

    workers = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn, /, *args, **kwargs):
        if self._closed:
            raise RuntimeError("cannot submit after shutdown")
        fut: cf.Future = cf.Future()
        fut.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True


# ------------------------------------------------------------------------------------------- dask


class DaskUnavailable(ImportError):
    """dask.distributed is not installed."""


def dask_executor(address: str, timeout_s: float = 20.0) -> tuple[Any, cf.Executor, int]:
    """(client, executor, worker threads) for the Dask scheduler at `address` (e.g. tcp://host:8786).
    Start its workers with `--nthreads 1` and RAYON_NUM_THREADS=1 for one core per task.

    `timeout_s` bounds both the connection and, for a scheduler with no workers yet (a cluster still
    being granted its jobs), the wait for the first one: a sweep never waits forever on tasks that no
    worker will run. Raises TimeoutError or OSError, with the address, when either runs out."""
    try:
        from distributed import Client
    except ImportError:
        raise DaskUnavailable("--dask needs dask.distributed: pip install 'offtd[dask]'") from None
    client = Client(address, timeout=f"{timeout_s}s")
    try:
        if not client.nthreads():
            client.wait_for_workers(1, timeout=timeout_s)
    except (TimeoutError, OSError):
        client.close()
        raise TimeoutError(f"the scheduler has no workers (none joined within {timeout_s:g} s)") from None
    threads = sum(client.nthreads().values()) or 1
    return client, client.get_executor(pure=False), threads


def executor_workers(executor: cf.Executor) -> int:
    """How many tasks `executor` runs at once, as far as it tells (process pools, thread pools, Dask's
    ClientExecutor); else the usable cores."""
    for attr in ("workers", "_max_workers"):
        n = getattr(executor, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    client = getattr(executor, "_client", None)
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # pragma: no cover - a client without workers yet
            pass
    return usable_cores()
