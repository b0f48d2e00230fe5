"""Threads of the numerical libraries offtd runs on.

offtd's matrices are small (d <= 153): LAPACK through numpy is fastest on one thread, and OpenBLAS's own
thread pool, spinning after each call, competes with the Rust core's rayon threads. On this 2-core
machine with other work running, a 153 x 153 eigenvalue problem took 3.3 s with OpenBLAS's threads and
0.024 s on one. So every run limits the BLAS pools to one thread for its duration (threadpoolctl; the
caller's setting is restored afterwards), which also makes the LAPACK results independent of
OPENBLAS_NUM_THREADS (specs/MODEL.md 0.4).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """Limit the BLAS thread pools to one thread inside the block (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def single_thread_blas(fn: F) -> F:
    """Decorator form of :func:`blas_single_thread`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with blas_single_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or `taskset` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cap_threads() -> str | None:
    """RAYON_NUM_THREADS above the usable cores only slows the Rust core down (5000 threads made a run
    150x slower): cap it at the core count before the core starts its threads (it reads the variable once
    per process). Thread counts never change results (specs/MODEL.md 0.2). Returns a warning when it
    capped, else None."""
    raw = os.environ.get("RAYON_NUM_THREADS")
    if raw is None:
        return None
    try:
        wanted = int(raw.strip())
    except ValueError:  # the core ignores what is not a positive integer
        return None
    cores = usable_cores()
    if wanted <= cores:
        return None
    os.environ["RAYON_NUM_THREADS"] = str(cores)
    return f"RAYON_NUM_THREADS={wanted} is more than the {cores} usable cores; using {cores}"
