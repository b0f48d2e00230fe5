"""Hyperparameter sweeps: one spec, a grid of overrides, one run directory per cell and a summary table.

`offtd sweep SPEC --grid policy.p_mix=0,0.01,0.1 --grid policy.sigma_pi=0.3,0.6` runs the Cartesian
product of the grids. Every cell's spec is validated before the first cell runs. Each cell writes a
complete run directory; `sweep.csv` and `sweep.md` list per cell its overrides, status, the failing
checks and the headline metrics.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .api import OutputError, RunResult, make_run_dir, run
from .report import md, write_atomic
from .spec import Spec, SpecError, _printable, load_spec
from .summary import fmt

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

# (column, where in report.json) of the headline metrics in the summary table.
HEADLINE = (
    ("mean_rho2", ("core_metrics", "mean_rho2", "mean_last_k")),
    ("td_loss", ("core_metrics", "td_loss", "mean_last_k")),
    ("critic_teacher_error", ("core_metrics", "critic_teacher_error", "last")),
    ("w_norm", ("core_metrics", "w_norm", "last")),
    ("dist_action_kl", ("probes", "distribution_probe", "dist_action_kl", "last")),
    ("rho_khat_pi_b", ("probes", "fixed_point_probe", "rho_khat", "last")),
    ("w_gap", ("probes", "fixed_point_probe", "w_gap", "last")),
    ("stability_radius", ("probes", "stability_probe", "stability_radius", "last")),
    ("a_min_real_eig", ("probes", "stability_probe", "a_min_real_eig", "last")),
)


@dataclass(frozen=True)
class Cell:
    index: int
    overrides: dict[str, Any]
    spec: Spec


# Statuses of a sweep's cells, worst last: ERROR is a cell that could not run to a report.
STATUSES = ("PASS", "WARN", "FAIL", "INTERRUPTED", "ERROR")


@dataclass(frozen=True)
class CellError:
    """A cell that ended without a report (an unexpected error): what `on_cell` gets instead of a RunResult."""

    message: str
    run_dir: Path | None = None
    status: str = "ERROR"

    @property
    def status_line(self) -> str:
        return f"status: ERROR ({self.message})"


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`key=v1,v2,...` items -> {key: [values]}; values are TOML (a list value needs brackets:
    `env.b=[[0.5,0],[0,0.5]]` is one value, so give lists as `key=[...];[...]` separated by ';')."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"--grid {item}", "expected KEY=V1,V2,..., e.g. policy.p_mix=0,0.1")
        key, raw = (part.strip() for part in item.split("=", 1))
        if not key or not all(part.strip() for part in key.split(".")):
            raise SpecError(f"--grid {item}", "empty key or key part, expected e.g. policy.p_mix=0,0.1")
        sep = ";" if raw.startswith("[") else ","
        values = []
        for part in raw.split(sep):
            part = part.strip()
            if not part:
                raise SpecError(f"--grid {item}", "empty value in the list")
            try:
                values.append(tomllib.loads(f"v = {part}")["v"])
            except tomllib.TOMLDecodeError:
                values.append(part)
            except RecursionError:
                raise SpecError(f"--grid {key}", "value nested too deeply") from None
        if key in grid:
            raise SpecError(f"--grid {key}", "given twice")
        grid[key] = values
    return grid


def cells(base: Spec, grid: Mapping[str, list[Any]]) -> list[Cell]:
    """Every cell of the grid, validated (a bad value raises SpecError naming the cell)."""
    keys = list(grid)
    out = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        overrides = dict(zip(keys, combo))
        try:
            spec = load_spec(base, overrides)
        except SpecError as exc:
            raise SpecError(f"cell {i} ({_label(overrides)})", str(exc)) from None
        out.append(Cell(i, overrides, spec))
    return out


def _label(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items())


def _dig(report: dict, path: tuple[str, ...]) -> Any:
    cur: Any = report
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def summary_row(cell: Cell, result: RunResult) -> dict[str, Any]:
    report = result.report
    flagged = [f"{c['name']}:{c['status']}" for c in report["health"]["checks"] if c["status"] != "PASS"]
    row: dict[str, Any] = {"cell": cell.index, **cell.overrides, "status": result.status, "flagged": " ".join(flagged)}
    for name, path in HEADLINE:
        row[name] = _dig(report, path)
    row["run_dir"] = str(result.run_dir) if result.run_dir is not None else ""
    return row


def error_row(cell: Cell, error: CellError) -> dict[str, Any]:
    """The summary row of a cell that could not run: status ERROR and its message under `flagged`."""
    row: dict[str, Any] = {"cell": cell.index, **cell.overrides, "status": "ERROR", "flagged": error.message}
    row.update({name: None for name, _ in HEADLINE})
    row["run_dir"] = ""
    return row


def _error_message(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, SpecError) else f"{type(exc).__name__}: {exc}"
    text = _printable(text)
    return text if len(text) <= 300 else text[:297] + "..."


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _cell_text(v: Any) -> str:
    """A table cell as inert markdown: a value such as name="a|b" or "<b>x</b>" stays one literal cell."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None or isinstance(v, (int, float)):
        return fmt(v)
    return md(v, table=True)


def _markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    cols = ["cell", *keys, "status", "flagged", *(name for name, _ in HEADLINE)]
    lines = ["| " + " | ".join(md(c, table=True) for c in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows:
        vals = [_cell_text(r[c]) for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    head = f"# Sweep\n\n{len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + "\n\n"
    return head + "\n".join(lines) + "\n"


def sweep(
    spec: str | os.PathLike[str] | Spec | None,
    grid: Mapping[str, list[Any]],
    backend: str = "rust",
    out: str | os.PathLike[str] = "outputs",
    on_cell: Callable[[int, int, RunResult | CellError], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every cell; returns (sweep directory, summary rows). Writes sweep.csv and sweep.md after
    each cell, so an interrupted sweep still has the table of the cells it finished. A cell that fails
    with an error is recorded as ERROR with its message and the sweep goes on; a run or table that
    cannot be written (OutputError) stops it."""
    base = load_spec(spec)
    all_cells = cells(base, grid)
    root = make_run_dir(out, f"{base.name}_sweep")
    rows: list[dict[str, Any]] = []
    for cell in all_cells:
        if should_stop is not None and should_stop():
            break
        result: RunResult | CellError
        try:
            result = run(cell.spec, backend=backend, run_dir=root / f"cell_{cell.index:04d}", should_stop=should_stop)
        except OutputError:
            raise
        except Exception as exc:  # one broken cell must not stop the others
            result = CellError(_error_message(exc))
            rows.append(error_row(cell, result))
        else:
            rows.append(summary_row(cell, result))
        try:
            write_atomic(root / "sweep.csv", _csv(rows))
            write_atomic(root / "sweep.md", _markdown(rows, list(grid)))
        except OSError as exc:
            raise OutputError(str(root), f"could not write the sweep table: {exc.strerror or exc}") from None
        if on_cell is not None:
            on_cell(cell.index, len(all_cells), result)
    return root, rows
