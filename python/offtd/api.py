"""The Python API the CLI is built on: `run`, `load_run`, and the result type."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .backend import get_backend
from .health import evaluate
from .loop import run_loop
from .report import build_report, decode_nonfinite, plain, render_markdown, write_run
from .spec import Spec, SpecError, load_spec, memory_terms
from .exact.section import theory as theory_section


@dataclass
class RunResult:
    """One run: its report (the dict behind report.json; non-finite numbers are floats here, strings in the
    file), health verdict and series as numpy arrays (`probe_series["exact_td"]` holds the exact metrics)."""

    report: dict
    spec: Spec
    run_dir: Path | None = None
    series: dict[str, np.ndarray] = field(default_factory=dict)
    probe_series: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    elapsed_s: float | None = None  # wall time of the loop (report.md shows it; report.json does not)

    @property
    def status(self) -> str:
        """PASS, WARN, FAIL or INTERRUPTED."""
        return self.report["health"]["status"]

    @property
    def status_line(self) -> str:
        return self.report["health"]["status_line"]

    @property
    def checks(self) -> list[dict]:
        return self.report["health"]["checks"]

    def markdown(self) -> str:
        return render_markdown(self.report, self.elapsed_s)


def _arrays(cols: Mapping[str, list]) -> dict[str, np.ndarray]:
    return {k: np.array([np.nan if v is None else v for v in vals], dtype=float) for k, vals in cols.items()}


def _probe_arrays(report: dict) -> dict[str, dict[str, np.ndarray]]:
    """Each probe's columns as arrays, and the exact metrics under "exact_td"."""
    out = {k: _arrays(v) for k, v in report["probe_series"].items()}
    if report.get("exact_series"):
        out["exact_td"] = _arrays(report["exact_series"])
    return out


def _normalise_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Accept `policy.p_mix` and, for keyword arguments, `policy__p_mix`."""
    return {k.replace("__", "."): v for k, v in overrides.items()}


def make_run_dir(
    out_root: str | os.PathLike[str],
    name: str,
    run_dir: str | os.PathLike[str] | None = None,
    need_bytes: int = 0,
) -> Path:
    """Create a new run directory (never reusing one): `run_dir` if given, else `out_root/name/<timestamp>`
    with a numeric suffix when that name is taken. Raises SpecError when the location is not writable or
    has less than `need_bytes` free."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() or path.is_symlink():
            raise SpecError(str(path), "run directory already exists; offtd never overwrites a run")
        _mkdir(path.parent, parents=True)
        _check_free_space(path.parent, need_bytes)
        _mkdir(path, parents=False)
        return path
    base = Path(out_root) / name
    _mkdir(base, parents=True)
    _check_free_space(base, need_bytes)
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    for i in range(10000):
        path = base / (stamp if i == 0 else f"{stamp}_{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise SpecError(str(path), f"cannot create run directory: {exc.strerror}") from None
    raise SpecError(str(base), "cannot find a free run directory name")


def _mkdir(path: Path, parents: bool) -> None:
    try:
        path.mkdir(parents=parents, exist_ok=parents)
    except FileExistsError:
        if parents:  # exist_ok: something that is not a directory is in the way
            raise SpecError(str(path), "exists and is not a directory") from None
        raise SpecError(str(path), "run directory already exists; offtd never overwrites a run") from None
    except OSError as exc:
        raise SpecError(str(path), f"cannot create directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpecError(str(path), "output location is not writable")


def output_estimate_bytes(spec: Spec) -> int:
    """Disk a run directory needs, roughly: the series and probe rows as CSV, JSON and markdown."""
    return 64 * 1024 + memory_terms(spec)["run.outer_iters"]


def _check_free_space(path: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(path).free
    except OSError:  # pragma: no cover - cannot tell; writing will say
        return
    if free < need:
        raise SpecError(
            str(path), f"output location is full: {free / 2**20:.3g} MiB free, a run needs about {need / 2**20:.3g} MiB"
        )


def run(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    backend: str = "rust",
    *,
    out: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **overrides: Any,
) -> RunResult:
    """Run an experiment and return its report.

    `spec` is a TOML path, a dict, a Spec, or None for the embedded default experiment. Overrides are
    dotted keys (`**{"policy.p_mix": 0.1}`) or keyword arguments with `__` for the dot
    (`policy__p_mix=0.1`). Files are written only when `out` (a root for `<name>/<timestamp>`) or
    `run_dir` is given.
    """
    resolved = load_spec(spec, _normalise_overrides(overrides))
    impl = get_backend(backend)
    directory = None
    if out is not None or run_dir is not None:  # before any work: an unusable location fails early
        directory = make_run_dir(out, resolved.name, run_dir, need_bytes=output_estimate_bytes(resolved))
    loop = run_loop(resolved, impl, progress=progress, should_stop=should_stop)
    th = theory_section(resolved, loop)
    verdict = evaluate(resolved, loop, impl)
    info = {
        "run_dir": str(directory) if directory is not None else None,
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "backend": impl.name,
    }
    report = build_report(resolved, loop, verdict, th, info)
    if directory is not None:
        try:
            write_run(directory, resolved, report, loop.elapsed_s)
        except OSError as exc:  # disk full, file too large, ...: no partial report.json is left behind
            raise SpecError(str(directory), f"cannot write the run: {exc.strerror or exc}") from None
    rep = plain(report)
    return RunResult(
        report=rep,
        spec=resolved,
        run_dir=directory,
        series=_arrays(rep["series"]),
        probe_series=_probe_arrays(rep),
        elapsed_s=loop.elapsed_s,
    )


def load_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """Read back a run directory written by `offtd run` (report.json and spec.toml)."""
    path = Path(run_dir)
    try:
        report = decode_nonfinite(json.loads((path / "report.json").read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise SpecError(str(path), "no report.json here: not a complete offtd run directory") from None
    spec = load_spec(path / "spec.toml")
    return RunResult(
        report=report,
        spec=spec,
        run_dir=path,
        series=_arrays(report["series"]),
        probe_series=_probe_arrays(report),
    )


def theory(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    grid: Mapping[str, Any] | None = None,
    backend: str = "rust",
    **overrides: Any,
) -> list[dict[str, Any]]:
    """The exact quantities of specs/MODEL.md 9 (radius, min Re eig, alpha_w*, E_b[rho^2], KL, TV, the
    teacher) at the spec's initial gains, one row per cell of `grid` ({dotted key: [values]}), with no
    sampling. `pandas.DataFrame(offtd.theory(...))` makes a table of it."""
    from .exact.grid import theory_table

    return theory_table(load_spec(spec, _normalise_overrides(overrides)), grid, backend=backend)
