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

from .api import RunResult, make_run_dir, run
from .report import write_atomic
from .spec import Spec, SpecError, load_spec, parse_override
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
    ("stability_radius_exact", ("probes", "stability_probe", "stability_radius_exact", "last")),
    ("a_min_real_eig", ("probes", "stability_probe", "a_min_real_eig", "last")),
)


@dataclass(frozen=True)
class Cell:
    index: int
    overrides: dict[str, Any]
    spec: Spec


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """`key=v1,v2,...` items -> {key: [values]}; values are TOML (a list value needs brackets:
    `env.b=[[0.5,0],[0,0.5]]` is one value, so give lists as `key=[...];[...]` separated by ';')."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, raw = parse_override(item)[0], item.split("=", 1)[1].strip()
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


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _cell_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None or isinstance(v, (int, float)):
        return fmt(v)
    return str(v)


def _markdown(rows: list[dict[str, Any]], keys: list[str]) -> str:
    cols = ["cell", *keys, "status", "flagged", *(name for name, _ in HEADLINE)]
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows:
        vals = [_cell_text(r[c]) for c in cols]
        lines.append("| " + " | ".join(vals) + " |")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "WARN", "FAIL", "INTERRUPTED")}
    head = f"# Sweep\n\n{len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + "\n\n"
    return head + "\n".join(lines) + "\n"


def sweep(
    spec: str | os.PathLike[str] | Spec | None,
    grid: Mapping[str, list[Any]],
    backend: str = "rust",
    out: str | os.PathLike[str] = "outputs",
    on_cell: Callable[[int, int, RunResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every cell; returns (sweep directory, summary rows). Writes sweep.csv and sweep.md after
    each cell, so an interrupted sweep still has the table of the cells it finished."""
    base = load_spec(spec)
    all_cells = cells(base, grid)
    root = make_run_dir(out, f"{base.name}_sweep")
    rows: list[dict[str, Any]] = []
    for cell in all_cells:
        if should_stop is not None and should_stop():
            break
        result = run(cell.spec, backend=backend, run_dir=root / f"cell_{cell.index:04d}", should_stop=should_stop)
        rows.append(summary_row(cell, result))
        write_atomic(root / "sweep.csv", _csv(rows))
        write_atomic(root / "sweep.md", _markdown(rows, list(grid)))
        if on_cell is not None:
            on_cell(cell.index, len(all_cells), result)
    return root, rows
