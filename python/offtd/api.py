"""The Python API the CLI is built on: `run`, `load_run`, and the result type."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .advice import judge
from .backend import get_backend
from .exact.section import theory as theory_section
from .loop import run_loop
from .report import NONFINITE, build_report, decode_nonfinite, plain, render_markdown, write_run
from .spec import Spec, SpecError, load_spec, memory_terms
from .threads import cap_threads, single_thread_blas


@dataclass(repr=False)
class RunResult:
    """One run: its report (the dict behind report.json; non-finite numbers are floats here, strings in the
    file), health verdict and series as numpy arrays (`probe_series["exact_td"]` holds the exact metrics).
    `repr()` is one line (name, status, flagged checks, iterations, run directory); notebooks show the
    health table (`_repr_markdown_`); `summary()` gives the headline numbers as one flat row."""

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

    def _flagged(self) -> list[str]:
        return [f"{c['name']}:{c['status']}" for c in self.checks if c["status"] != "PASS"]

    def __repr__(self) -> str:
        info = self.report["run_info"]
        flagged = self._flagged()
        status = self.status + (f" ({', '.join(flagged)})" if flagged else "")
        diverged = info.get("diverged_at")
        iters = f"{info['completed_iters']} of {info['outer_iters']} iterations" + (
            f", diverged at iteration {diverged}" if diverged is not None else ""
        )
        where = f"run_dir {str(self.run_dir)!r}" if self.run_dir is not None else "not written (out= or run_dir= writes it)"
        return f"<RunResult {str(info['name'])!r}, seed {info['seed']}, {info.get('backend') or '?'} backend: {status}; {iters}; {where}>"

    def _repr_markdown_(self) -> str:
        """Jupyter's rendering: the status line and the health table, every string escaped (report.md's rules)."""
        from .report import _table, md

        info = self.report["run_info"]
        where = f" · `{md(self.run_dir)}`" if self.run_dir is not None else ""
        head = (
            f"**offtd run {md(info['name'])}** · seed {md(info['seed'])} · {md(info.get('backend') or '?')} backend · "
            f"{md(info['completed_iters'])} of {md(info['outer_iters'])} iterations{where}"
        )
        table = _table(["check", "status", "reason"], [[c["name"], c["status"], c["reason"]] for c in self.checks])
        return "\n".join([head, "", f"**{md(self.status_line)}**", "", *table]) + "\n"

    def summary(self) -> dict[str, Any]:
        """The headline numbers as one flat row of plain values (None: not measured), the columns of a
        sweep's sweep.csv: name, seed, backend, status, flagged checks, iterations, then mean_rho2 and td_loss
        (mean over the last run.last_k iterations), critic_teacher_error and w_norm (last), the last probe's
        dist_action_kl, rho_khat_pi_b (fixed-point probe), w_gap, stability_radius, a_min_real_eig, and the
        exact expected TD at the last probe iteration (exact_radius, exact_min_re_eig, exact_alpha_w_crit,
        exact_e_rho2; a sweep's exact columns are at the initial gains instead). Tabulate runs with
        `pandas.DataFrame([offtd.load_run(d).summary() for d in dirs])`."""
        from .sweep import HEADLINE

        info = self.report["run_info"]
        row: dict[str, Any] = {
            "name": info["name"],
            "seed": info["seed"],
            "backend": info.get("backend"),
            "status": self.status,
            "flagged": " ".join(self._flagged()),
            "completed_iters": info["completed_iters"],
            "outer_iters": info["outer_iters"],
            "diverged_at": info.get("diverged_at"),
        }
        for name, path in HEADLINE:
            row[name] = _dig_number(self.report, path)
        for name in ("exact_radius", "exact_min_re_eig", "exact_alpha_w_crit", "exact_e_rho2"):
            row[name] = _dig_number(self.report, ("exact", name, "last"))
        row["run_dir"] = None if self.run_dir is None else str(self.run_dir)
        return row


def _dig_number(report: dict, path: tuple[str, ...]) -> float | None:
    """The number at `path` in a report as a float (inf / nan kept), None where it is missing."""
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if node is None or isinstance(node, bool) or not isinstance(node, (int, float)):
        return None
    return float(node)


def _arrays(cols: Mapping[str, list]) -> dict[str, np.ndarray]:
    return {k: np.array([np.nan if v is None else v for v in vals], dtype=float) for k, vals in cols.items()}


def _probe_arrays(report: dict) -> dict[str, dict[str, np.ndarray]]:
    """Each probe's columns as arrays, and the exact metrics under "exact_td"."""
    out = {k: _arrays(v) for k, v in report["probe_series"].items()}
    if report.get("exact_series"):
        out["exact_td"] = _arrays(report["exact_series"])
    return out


class OutputError(SpecError):
    """The run could not be written (disk full, file too large, an unwritable file system): not bad input
    (the command line exits 3, not 2). Nothing half-written is left behind: the files, the run directory
    and any parent directories the run created are removed."""


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
    has less than `need_bytes` free; a refused location is left as it was (no empty `out_root/name`)."""
    return _make_run_dir(out_root, name, run_dir, need_bytes)[0]


def _make_run_dir(
    out_root: str | os.PathLike[str] | None,
    name: str,
    run_dir: str | os.PathLike[str] | None,
    need_bytes: int,
) -> tuple[Path, list[Path]]:
    """:func:`make_run_dir`, also returning the directories it created (parents first), which
    :func:`_remove_dirs` takes away again when the run cannot be written."""
    created: list[Path] = []
    try:
        if run_dir is not None:
            path = Path(run_dir)
            if _lexists(path):
                raise SpecError(str(path), "run directory already exists; offtd never overwrites a run")
            _check_free_space(path.parent, need_bytes)  # before anything is created
            _mkdir(path.parent, parents=True, created=created)
            _mkdir(path, parents=False, created=created)
            return path, created
        base = Path(out_root if out_root is not None else "outputs") / name
        _check_free_space(base, need_bytes)
        _mkdir(base, parents=True, created=created)
        stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
        for i in range(10000):
            path = base / (stamp if i == 0 else f"{stamp}_{i}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise SpecError(str(path), f"cannot create run directory: {exc.strerror}") from None
            created.append(path)
            return path, created
        raise SpecError(str(base), "cannot find a free run directory name")
    except BaseException:
        _remove_dirs(created)
        raise


def _lexists(path: Path) -> bool:
    """Whether something (even a dangling symlink) is at `path`; a path that cannot be asked about (name
    too long, no permission) counts as existing, so that creating it reports the real error."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _remove_dirs(created: list[Path]) -> None:
    """Remove the directories a run created, deepest first, where they are empty."""
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            pass


def _mkdir(path: Path, parents: bool, created: list[Path]) -> None:
    missing = []
    if parents:
        p = path
        while not _lexists(p) and p != p.parent:
            missing.append(p)
            p = p.parent
    try:
        path.mkdir(parents=parents, exist_ok=parents)
        created.extend(reversed(missing) if parents else [path])
    except FileExistsError:
        if parents:  # exist_ok: something that is not a directory is in the way
            raise SpecError(str(path), "exists and is not a directory") from None
        raise SpecError(str(path), "run directory already exists; offtd never overwrites a run") from None
    except OSError as exc:
        created.extend(p for p in reversed(missing) if os.path.isdir(p))  # those made before the failure
        raise SpecError(str(path), f"cannot create directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpecError(str(path), "output location is not writable")


def output_estimate_bytes(spec: Spec) -> int:
    """Disk a run directory needs, roughly: the series and probe rows as CSV, JSON and markdown."""
    return 64 * 1024 + memory_terms(spec)["run.outer_iters"]


def _check_free_space(path: Path, need: int) -> None:
    """Refuse `path` (which need not exist yet: its nearest existing ancestor is asked) when its file
    system has less than `need` bytes free."""
    probe = path
    while not _lexists(probe) and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:  # pragma: no cover - cannot tell; writing will say
        return
    if free < need:
        raise SpecError(
            str(path), f"output location is full: {free / 2**20:.3g} MiB free, a run needs about {need / 2**20:.3g} MiB"
        )


@single_thread_blas
def run(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    backend: str = "rust",
    *,
    out: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    plots: bool = False,
    **overrides: Any,
) -> RunResult:
    """Run an experiment and return its report.

    `spec` is a TOML path, a dict, a Spec, or None for the embedded default experiment. Overrides are
    dotted keys (`**{"policy.p_mix": 0.1}`) or keyword arguments with `__` for the dot
    (`policy__p_mix=0.1`). Files are written only when `out` (a root for `<name>/<timestamp>`) or
    `run_dir` is given; `plots=True` then also draws the run's pictures into it after the run
    (offtd.plots, needs matplotlib: `offtd[plot]`).
    """
    resolved = load_spec(spec, _normalise_overrides(overrides))
    warning = cap_threads()
    if warning is not None:
        warnings.warn(warning, RuntimeWarning, stacklevel=2)
    impl = get_backend(backend)
    directory: Path | None = None
    created: list[Path] = []
    if out is not None or run_dir is not None:  # before any work: an unusable location fails early
        directory, created = _make_run_dir(out, resolved.name, run_dir, output_estimate_bytes(resolved))
    try:
        loop = run_loop(resolved, impl, progress=progress, should_stop=should_stop)
        with np.errstate(all="ignore"):  # extreme specs overflow to inf/NaN here as in the loop: no warnings
            th = theory_section(resolved, loop)
            verdict = judge(resolved, loop, impl)
        info = {
            "run_dir": str(directory) if directory is not None else None,
            "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
            "backend": impl.name,
        }
        report = build_report(resolved, loop, verdict, th, info)
        if directory is not None:
            try:
                write_run(directory, resolved, report, loop.elapsed_s, loop.last_ratios, loop.last_eigenvalues)
            except OSError as exc:  # disk full, file too large, ...: write_run removed what it wrote
                raise OutputError(str(directory), f"could not write the run: {exc.strerror or exc}; nothing was kept") from None
    except Exception:  # no empty or half-written run directory is left (an interruption keeps it: 130)
        _remove_dirs(created)
        raise
    rep = plain(report)
    result = RunResult(
        report=rep,
        spec=resolved,
        run_dir=directory,
        series=_arrays(rep["series"]),
        probe_series=_probe_arrays(rep),
        elapsed_s=loop.elapsed_s,
    )
    if plots and directory is not None:
        from .plots import plot_run

        plot_run(result)
    return result


def load_run(run_dir: str | os.PathLike[str]) -> RunResult:
    """Read back a run directory written by `offtd run` (report.json and spec.toml). A missing, truncated,
    empty or otherwise damaged report.json is a SpecError naming the file and what is wrong."""
    path = Path(run_dir)
    report = _read_report(path)
    spec = load_spec(path / "spec.toml")
    return RunResult(
        report=report,
        spec=spec,
        run_dir=path,
        series=_arrays(report["series"]),
        probe_series=_probe_arrays(report),
    )


class _BareConstant(Exception):
    pass


def _bare_constant(token: str) -> float:
    raise _BareConstant(token)


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):  # 1e999: valid JSON grammar, but report.json never writes it
        raise _BareConstant(text)
    return x


def _read_report(run_dir: Path) -> dict:
    """report.json as written by :func:`offtd.report.to_json`, checked: strict JSON (non-finite numbers
    are the strings "inf", "-inf", "nan"; bare NaN / Infinity tokens are invalid) with the structure
    RunResult reads."""
    file = run_dir / "report.json"
    where = str(file)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(run_dir), "no report.json here: not a complete offtd run directory") from None
    except IsADirectoryError:
        raise SpecError(where, "is a directory, not a report") from None
    except OSError as exc:
        raise SpecError(where, f"cannot read: {exc.strerror or exc}") from None
    if not raw.strip():
        raise SpecError(where, "is empty: the run directory is damaged")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(where, f"is not UTF-8 text (byte {exc.start}): the file is damaged") from None
    try:
        data = json.loads(text, parse_constant=_bare_constant, parse_float=_finite_float)
    except _BareConstant as exc:
        raise SpecError(
            where, f"invalid JSON: the number {exc} (report.json writes non-finite numbers as \"inf\", \"-inf\", \"nan\")"
        ) from None
    except json.JSONDecodeError as exc:
        raise SpecError(where, f"invalid JSON (truncated or damaged): {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # an integer beyond the digit limit, nesting thousands deep
        raise SpecError(where, f"invalid JSON: {type(exc).__name__}") from None
    problem = _report_problem(data)
    if problem is not None:
        raise SpecError(where, f"not an offtd report: {problem}")
    return decode_nonfinite(data)


_REPORT_TABLES = ("run_info", "health", "scale_checks", "core_metrics", "probes", "series", "probe_series", "theory")


def _report_problem(data: Any) -> str | None:
    """What keeps `data` from being a report RunResult can read (None: nothing)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__ if data is not None else 'null'}"
    for key in _REPORT_TABLES:
        if not isinstance(data.get(key), dict):
            return f'"{key}" is missing or not an object'
    if not isinstance(data.get("next_steps"), list):
        return '"next_steps" is missing or not a list'
    health = data["health"]
    if health.get("status") not in ("PASS", "WARN", "FAIL", "INTERRUPTED") or not isinstance(health.get("status_line"), str):
        return '"health" has no valid status and status_line'
    checks = health.get("checks")
    if not isinstance(checks, list) or not all(
        isinstance(c, dict) and all(isinstance(c.get(k), str) for k in ("name", "status", "reason")) for c in checks
    ):
        return '"health.checks" is not a list of checks'
    for key in ("seed", "name", "key_hparams", "completed_iters", "outer_iters"):
        if key not in data["run_info"]:
            return f'"run_info.{key}" is missing'
    columns = [(f"series.{k}", v) for k, v in data["series"].items()]
    for probe, cols in data["probe_series"].items():
        if not isinstance(cols, dict):
            return f'"probe_series.{probe}" is not an object'
        columns += [(f"probe_series.{probe}.{k}", v) for k, v in cols.items()]
    exact = data.get("exact_series", {})
    if not isinstance(exact, dict):
        return '"exact_series" is not an object'
    columns += [(f"exact_series.{k}", v) for k, v in exact.items()]
    for name, values in columns:
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            return f'"{name}" is not a list of numbers'
    return None


def _is_number(v: Any) -> bool:
    """A number of a report series: finite number, null (not measured) or "inf" / "-inf" / "nan"."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) or (isinstance(v, str) and v in NONFINITE)


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
