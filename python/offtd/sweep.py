"""Sweeps: one base spec, a grid of overrides, several seeds, run on any executor, resumable.

`offtd sweep SPEC --grid policy.p_mix=0,0.01,0.1 --grid policy.sigma_pi=0.3,0.6 --seeds 0..9` runs every
(cell, seed) pair of the Cartesian product of the grids. The sweep directory holds

- `sweep.toml`: the resolved base spec and a `[sweep]` table (grid, seeds, keep, backend); `offtd sweep
  sweep.toml` repeats the sweep and `offtd run sweep.toml` runs its base spec;
- one run directory per pair (`cell_0003`, or `cell_0003_seed_7` with several seeds), or none with
  `keep = "summary"`;
- `sweep.csv`: one row per pair, appended (and flushed) as pairs finish, never rewritten: the pair's
  overrides and seed, status, flagged checks, headline metrics, the exact theory of the cell at its
  initial gains, the run's wall time and directory. A resumed pair appends a new row; the last row of a
  pair counts;
- `sweep.md`, `sweep.json`: per cell, the verdict over seeds ("FAIL 9/10"), the fraction of seeds at each
  status and the mean and standard error of each headline metric; written at the end and on interrupt.

Every pair's result depends only on its spec and seed (counter-based random streams, MODEL.md 1), so any
executor, batch size or retry gives the same row bits; per-cell aggregates are computed in seed order
from the stored rows, never in arrival order.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures as cf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .api import OutputError, make_run_dir, output_estimate_bytes, run
from .report import jsonable, md, write_atomic
from .spec import Spec, SpecError, _printable, load_spec, read_toml, to_toml
from .summary import fmt

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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
# The exact theory of a cell at its initial gains (offtd.exact.grid.theory_row; the same for every seed).
EXACT = ("exact_radius", "exact_min_re_eig", "exact_alpha_w_crit", "exact_e_rho2")
METRICS = tuple(name for name, _ in HEADLINE) + EXACT

# Statuses of a sweep's runs, worst last: ERROR is a run that could not finish with a report.
STATUSES = ("PASS", "WARN", "FAIL", "INTERRUPTED", "ERROR")
DONE = ("PASS", "WARN", "FAIL")  # a resumed sweep skips these and reruns the others
_CODE = {s: i + 1 for i, s in enumerate(STATUSES)}  # 0: not run
KEEP = ("full", "summary")

VALIDATE_LIMIT = 1000  # grids up to this many cells are validated before anything starts; larger lazily
CONFIRM_RUNS = 100_000  # more runs than this, or
CONFIRM_SECONDS = 3600.0  # a longer estimated wall time, needs --yes (yes=True)
MAX_RUNS = 10**9  # one sweep directory's status table holds one byte per run
MAX_SEEDS = 10**6
STORE_LIMIT = 2_000_000  # runs whose metrics are kept for the per-cell tables (sweep.md / sweep.json)
MD_ROWS = 5000  # cells listed in sweep.md (all are in sweep.json and sweep.csv)
POOL_MIN_SECONDS = 2.0  # less estimated work than this runs in process: starting workers costs ~1 s
BATCH_SECONDS = 0.5  # a task holds about this much work (at least one run)


# ------------------------------------------------------------------------------------ grid and seeds


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


def parse_seeds(text: str | Sequence[int], where: str = "--seeds") -> list[int]:
    """`0..9` (inclusive), `0,3,7`, `5`, or a list of integers -> the seeds, each in [0, 2^64 - 1]."""
    if isinstance(text, str):
        raw = text.strip()
        if ".." in raw:
            lo_s, _, hi_s = raw.partition("..")
            try:
                lo, hi = int(lo_s), int(hi_s)
            except ValueError:
                raise SpecError(f"{where} {text}", "expected FIRST..LAST (inclusive), e.g. 0..9") from None
            if hi < lo:
                raise SpecError(f"{where} {text}", "the last seed is below the first")
            if hi - lo + 1 > MAX_SEEDS:
                raise SpecError(f"{where} {text}", f"more than {MAX_SEEDS} seeds")
            seeds = list(range(lo, hi + 1))
        else:
            try:
                seeds = [int(p) for p in raw.split(",")]
            except ValueError:
                raise SpecError(f"{where} {text}", "expected FIRST..LAST or S1,S2,... (integers)") from None
    else:
        seeds = []
        for s in text:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
                raise SpecError(where, f"seeds must be integers, got {s!r}")
            seeds.append(int(s))
    if not seeds:
        raise SpecError(where, "no seeds")
    if len(seeds) > MAX_SEEDS:
        raise SpecError(where, f"more than {MAX_SEEDS} seeds")
    for s in seeds:
        if not 0 <= s <= 2**64 - 1:
            raise SpecError(where, f"seed {s} is outside [0, 2^64 - 1]")
    if len(set(seeds)) != len(seeds):
        dup = next(s for s, n in Counter(seeds).items() if n > 1)
        raise SpecError(where, f"seed {dup} given twice")
    return seeds


def _seeds_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(str(s) for s in seeds)


def cells(base: Spec, grid: Mapping[str, list[Any]]) -> list[Cell]:
    """Every cell of the grid, validated (a bad value raises SpecError naming the cell)."""
    keys = list(grid)
    out = []
    for i, combo in enumerate(itertools.product(*(grid[k] for k in keys))):
        overrides = dict(zip(keys, combo))
        out.append(Cell(i, overrides, _cell_spec(base, i, overrides)))
    return out


def _cell_spec(base: Spec, index: int, overrides: Mapping[str, Any]) -> Spec:
    try:
        return load_spec(base, overrides)
    except SpecError as exc:
        raise SpecError(f"cell {index} ({_label(overrides)})", str(exc)) from None


def _label(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_value_text(v)}" for k, v in overrides.items())


def seeded(spec: Spec, seed: int) -> Spec:
    """`spec` with run.seed = seed (any seed in [0, 2^64 - 1] is valid: no re-validation)."""
    return dataclasses.replace(spec, run=dataclasses.replace(spec.run, seed=int(seed)))


# ------------------------------------------------------------------------------------ the definition


@dataclass(frozen=True)
class SweepDef:
    """What a sweep runs: sweep.toml. Pair p is (cell p // len(seeds), seed seeds[p % len(seeds)]); cell
    i is the i-th combination of itertools.product over the grid (the last key varies fastest)."""

    base: Spec
    grid: dict[str, list[Any]]
    seeds: tuple[int, ...]
    keep: str = "full"
    backend: str = "rust"

    @property
    def keys(self) -> list[str]:
        return list(self.grid)

    @property
    def n_cells(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def n_runs(self) -> int:
        return self.n_cells * self.n_seeds

    def overrides(self, cell: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in reversed(self.keys):
            values = self.grid[key]
            cell, j = divmod(cell, len(values))
            out[key] = values[j]
        return dict(reversed(list(out.items())))

    def cell_spec(self, cell: int) -> Spec:
        validated = self.__dict__.get("_validated")
        if validated is not None and cell in validated:
            return validated[cell]
        return _cell_spec(self.base, cell, self.overrides(cell))

    def __getstate__(self) -> dict[str, Any]:  # what a task carries: not the caches
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def pair(self, cell: int, seed: int) -> int:
        return cell * self.n_seeds + self._seed_index[seed]

    @property
    def _seed_index(self) -> dict[int, int]:
        cached = self.__dict__.get("_seed_index_cache")
        if cached is None:
            cached = {s: i for i, s in enumerate(self.seeds)}
            object.__setattr__(self, "_seed_index_cache", cached)
        return cached

    def run_dir_name(self, pair: int) -> str:
        cell, si = divmod(pair, self.n_seeds)
        width = max(4, len(str(self.n_cells - 1)))
        name = f"cell_{cell:0{width}d}"
        return name if self.n_seeds == 1 else f"{name}_seed_{self.seeds[si]}"

    def columns(self) -> list[str]:
        return ["cell", "seed", *self.keys, "status", "flagged", *METRICS, "elapsed_s", "run_dir"]

    def table(self) -> dict[str, Any]:
        """The `[sweep]` table of sweep.toml."""
        return {"seeds": _seeds_text(self.seeds), "keep": self.keep, "backend": self.backend, "grid": self.grid}

    def to_toml(self) -> str:
        from . import __version__

        lines = [
            "# offtd sweep: the resolved base spec and, under [sweep], the grid, seeds and what each run keeps.",
            f"# `offtd sweep sweep.toml` repeats the sweep; `offtd run sweep.toml` runs the base spec (offtd {__version__}).",
            to_toml(self.base).rstrip("\n"),
            "",
            "[sweep]",
            f"seeds = {_toml(_seeds_text(self.seeds))}",
            f"keep = {_toml(self.keep)}",
            f"backend = {_toml(self.backend)}",
            "",
            "[sweep.grid]",
            *(f"{_toml(k)} = {_toml(v)}" for k, v in self.grid.items()),
        ]
        return "\n".join(lines) + "\n"


def _toml(v: Any) -> str:
    """A TOML value (strings escaped so that any name round-trips)."""
    if isinstance(v, str):
        out = []
        for c in v:
            if c == '"' or c == "\\":
                out.append("\\" + c)
            elif not c.isprintable() or c in "\x7f":
                out.append(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
            else:
                out.append(c)
        return '"' + "".join(out) + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        x = float(v)
        return repr(x) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml(str(k))} = {_toml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _value_text(v: Any) -> str:
    """A grid value in the table and in messages: TOML for lists and booleans, the text for strings."""
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return repr(v)
    return _toml(v)


SWEEP_KEYS = ("grid", "seeds", "keep", "backend")
# The `[sweep]` table in the spec's JSON Schema (offtd.json_schema): `offtd run` ignores it.
SWEEP_TABLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "offtd sweep: the grid, seeds and what each run keeps (offtd run ignores this table)",
    "properties": {
        "grid": {
            "type": "object",
            "description": "dotted spec key = [values]; the sweep is the Cartesian product",
            "additionalProperties": {"type": "array", "minItems": 1},
        },
        "seeds": {
            "description": "seeds of every cell: \"FIRST..LAST\" (inclusive), \"S1,S2,...\" or a list of integers",
            "oneOf": [
                {"type": "string", "pattern": r"^\s*\d+\s*(\.\.\s*\d+|(,\s*\d+)*)\s*$"},
                {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1}, "minItems": 1},
            ],
        },
        "keep": {"type": "string", "enum": list(KEEP), "description": "full: a run directory per (cell, seed); summary: rows only"},
        "backend": {"type": "string", "enum": ["rust", "python"]},
    },
    "additionalProperties": False,
}


def sweep_table(source: Any) -> dict[str, Any]:
    """The `[sweep]` table of a spec file or dict (empty when it has none), checked: `grid` a table of
    dotted keys to non-empty lists, `seeds` as for --seeds, `keep` full or summary."""
    if source is None or isinstance(source, Spec):
        return {}
    data = source if isinstance(source, Mapping) else read_toml(source)
    table = data.get("sweep")
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise SpecError("sweep", "expected a table")
    for k in table:
        if k not in SWEEP_KEYS:
            from .spec import _suggest

            raise SpecError(f"sweep.{k}", f"unknown key{_suggest(k, list(SWEEP_KEYS))}")
    out: dict[str, Any] = {}
    if "grid" in table:
        grid = table["grid"]
        if not isinstance(grid, Mapping):
            raise SpecError("sweep.grid", "expected a table of KEY = [values]")
        out["grid"] = {}
        for key, values in _flat_grid(grid):
            if not isinstance(values, list) or not values:
                raise SpecError(f"sweep.grid.{key}", "expected a non-empty list of values")
            out["grid"][key] = list(values)
    if "seeds" in table:
        out["seeds"] = parse_seeds(table["seeds"], "sweep.seeds")
    if "keep" in table:
        if table["keep"] not in KEEP:
            raise SpecError("sweep.keep", f"must be one of {', '.join(KEEP)}, got {table['keep']!r}")
        out["keep"] = table["keep"]
    if "backend" in table:
        if table["backend"] not in ("rust", "python"):
            raise SpecError("sweep.backend", f"must be rust or python, got {table['backend']!r}")
        out["backend"] = table["backend"]
    return out


def _flat_grid(grid: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`[sweep.grid]` written with dotted keys (`policy.sigma_mu = [...]`, which TOML nests) or quoted
    ones (`"policy.sigma_mu" = [...]`), as (dotted key, values)."""
    for k, v in grid.items():
        if isinstance(v, Mapping):
            yield from _flat_grid(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def define(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: str | Sequence[int] | None = None,
    keep: str | None = None,
    backend: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SweepDef:
    """The sweep of `spec` (its `[sweep]` table, then `grid`, `seeds`, `keep`, `backend` on top: a grid
    key given here replaces the table's values of that key). Checks sizes and the first cell; does not
    validate every cell (see :func:`validate`)."""
    table = sweep_table(spec)
    base = load_spec(spec, overrides)
    full_grid: dict[str, list[Any]] = dict(table.get("grid", {}))
    for key, values in (grid or {}).items():
        vals = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
        if not vals:
            raise SpecError(f"--grid {key}", "no values")
        full_grid[key] = vals
    if "run.seed" in full_grid:
        raise SpecError("--grid run.seed", "sweep seeds with --seeds (seeds=...), not in the grid")
    if seeds is not None:
        seed_list = parse_seeds(seeds)
    else:
        seed_list = table.get("seeds") or [base.run.seed]
    keep = keep or table.get("keep") or "full"
    if keep not in KEEP:
        raise SpecError("--keep", f"must be one of {', '.join(KEEP)}, got {keep!r}")
    backend = backend or table.get("backend") or "rust"
    defn = SweepDef(base, full_grid, tuple(seed_list), keep, backend)
    if defn.n_runs > MAX_RUNS:
        raise SpecError(
            "--grid", f"{defn.n_cells:.3g} cells x {defn.n_seeds} seeds = {defn.n_runs:.3g} runs: more than {MAX_RUNS:.0e}; split the grid"
        )
    for key in defn.keys:  # an unknown key is bad input whatever the grid's size
        _check_key(base, key)
    defn.cell_spec(0)
    return defn


def _check_key(base: Spec, key: str) -> None:
    from .spec import _set_dotted

    try:
        _set_dotted({}, key, None)
    except SpecError as exc:
        raise SpecError(f"--grid {key}", exc.reason) from None


def validate(defn: SweepDef, limit: int = VALIDATE_LIMIT) -> bool:
    """Validate every cell when there are at most `limit` (a bad one raises SpecError naming it);
    returns whether it did. Larger grids are validated lazily: a bad cell becomes an ERROR row."""
    if defn.n_cells > limit:
        return False
    specs = {i: defn.cell_spec(i) for i in range(defn.n_cells)}
    object.__setattr__(defn, "_validated", specs)  # runs in this process reuse them
    return True


# -------------------------------------------------------------------------------- a batch of runs


@dataclass(frozen=True)
class Job:
    """What a task needs besides its pairs (pickled with every batch: a few kilobytes)."""

    defn: SweepDef
    root: str


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]
    stopped: bool = False
    fatal: str | None = None  # the run directory could not be written: the sweep stops (exit 3)


_backends: dict[str, Any] = {}
# True while this process's BLAS pools are already held at one thread for the whole sweep (a local pool
# worker, from its start; this process while the in-process executor runs): run_batch then skips its own
# limit, which costs ~1 ms to set and restore (threadpoolctl scans the loaded libraries), per run when
# the in-process executor hands it one run at a time.
_blas_held = False


def _backend(name: str) -> Any:
    if name not in _backends:
        from .backend import get_backend

        _backends[name] = get_backend(name)
    return _backends[name]


def run_batch(job: Job, pairs: Sequence[int], specs: Mapping[int, Spec] | None = None) -> BatchResult:
    """Run `pairs` of the sweep (the task every executor runs) and return their rows. Stops early when
    the sweep asks (offtd.executors.should_stop): the run in progress ends INTERRUPTED, the rest are not
    started. `specs`: the validated specs of (some of) the pairs' cells, which the sweep's process already
    built (unpickling one takes ~35 us, building and validating it again ~0.75 ms)."""
    from . import executors
    from .threads import blas_single_thread

    defn = job.defn
    rows: list[dict[str, Any]] = []
    with contextlib.nullcontext() if _blas_held else blas_single_thread():
        for pair in pairs:
            if executors.should_stop():
                return BatchResult(rows, stopped=True)
            cell, si = divmod(pair, defn.n_seeds)
            cell_spec, cell_error, exact = _prepare_cell(job, cell, specs.get(cell) if specs else None)
            start = time.perf_counter()
            if cell_spec is None:
                row = _row(pair, "ERROR", cell_error or "", [None] * len(HEADLINE), exact, 0.0, "")
            else:
                try:
                    row = _run_pair(job, pair, seeded(cell_spec, defn.seeds[si]), exact, start)
                except OutputError as exc:
                    return BatchResult(rows, fatal=str(exc))
                except Exception as exc:  # one broken run must not stop the others
                    _remove_partial(job, pair)
                    row = _row(pair, "ERROR", _error_message(exc), [None] * len(HEADLINE), exact, time.perf_counter() - start, "")
            rows.append(row)
            if row["status"] == "INTERRUPTED":
                return BatchResult(rows, stopped=True)
    return BatchResult(rows)


_cell_cache: tuple[Any, ...] | None = None  # (root, cell, spec, error, exact) of the last cell this process ran


def _prepare_cell(job: Job, cell: int, validated: Spec | None = None) -> tuple[Spec | None, str | None, list[float | None]]:
    """The cell's validated spec (`validated`, or built here; or why it is invalid) and its exact theory,
    computed once per cell in each process: the seeds of a cell run one after another."""
    global _cell_cache
    if _cell_cache is not None and _cell_cache[0] == job.root and _cell_cache[1] == cell:
        return _cell_cache[2], _cell_cache[3], _cell_cache[4]
    spec: Spec | None = None
    error: str | None = None
    exact: list[float | None] = [None] * len(EXACT)
    try:
        spec = validated if validated is not None else job.defn.cell_spec(cell)
    except Exception as exc:  # invalid (lazy validation), or a bug in validation: this cell only
        error = _error_message(exc)
    if spec is not None:
        exact = _exact(spec, job.defn.backend)
    _cell_cache = (job.root, cell, spec, error, exact)
    return spec, error, exact


def _row(pair: int, status: str, flagged: str, headline: list, exact: list, elapsed: float, run_dir: str) -> dict[str, Any]:
    return {"pair": pair, "status": status, "flagged": flagged, "values": [*headline, *exact], "elapsed_s": elapsed, "run_dir": run_dir}


def _exact(spec: Spec, backend: str) -> list[float | None]:
    """exact_radius, min Re eig, alpha_w* and E_b[rho^2] at the initial gains (None where it fails)."""
    from .exact.grid import theory_row

    try:
        with np.errstate(all="ignore"):
            row = theory_row(spec, _backend(backend))
        return [float(row[k]) for k in EXACT]
    except Exception:  # the theory of an extreme cell: the run still reports on it
        return [None] * len(EXACT)


def _run_pair(job: Job, pair: int, spec: Spec, exact: list, start: float) -> dict[str, Any]:
    from . import executors

    defn = job.defn
    if defn.keep == "full":
        target = Path(job.root) / defn.run_dir_name(pair)
        if os.path.lexists(target):  # left by an interrupted or killed run of this pair: not in sweep.csv
            shutil.rmtree(target, ignore_errors=True)
        result = run(spec, backend=defn.backend, run_dir=target, should_stop=executors.should_stop)
        report = result.report
        flagged = " ".join(f"{c['name']}:{c['status']}" for c in report["health"]["checks"] if c["status"] != "PASS")
        headline = [_number(_dig(report, path)) for _, path in HEADLINE]
        return _row(pair, result.status, flagged, headline, exact, time.perf_counter() - start, str(target))
    status, flagged, headline = summary_values(spec, defn.backend)
    return _row(pair, status, flagged, headline, exact, time.perf_counter() - start, "")


def summary_values(spec: Spec, backend: str) -> tuple[str, str, list[float | None]]:
    """(status, flagged checks, headline metrics) of a run, straight from the loop and the checks: no
    report, no advice, no files (`keep = "summary"`). Equal to what report.json gives."""
    from . import executors
    from .health import CHECKS, ORDER
    from .loop import run_loop
    from .summary import mean_last_k

    loop = run_loop(spec, _backend(backend), should_stop=executors.should_stop)
    with np.errstate(all="ignore"):
        checks = [c(spec, loop) for c in CHECKS]
    status = "INTERRUPTED" if loop.interrupted else max((c.status for c in checks), key=ORDER.__getitem__)
    flagged = " ".join(f"{c.name}:{c.status}" for c in checks if c.status != "PASS")
    done, k = loop.completed, spec.run.last_k
    out: list[float | None] = []
    for name, path in HEADLINE:
        if path[0] == "core_metrics":
            v = loop.series[name][:done]
            if path[2] == "mean_last_k":
                out.append(mean_last_k(v, k))
            else:
                out.append(float(v[-1]) if v.size else math.nan)
        else:
            rows = loop.probe_series.get(path[1]) or []
            out.append(float(rows[-1].get(path[2], math.nan)) if rows else None)
    return status, flagged, out


def _dig(report: dict, path: tuple[str, ...]) -> Any:
    cur: Any = report
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _number(v: Any) -> float | None:
    return None if v is None else float(v)


def _remove_partial(job: Job, pair: int) -> None:
    """api.run removes what it wrote when it fails; an interrupted cleanup may leave an empty directory."""
    if job.defn.keep == "full":
        try:
            (Path(job.root) / job.defn.run_dir_name(pair)).rmdir()
        except OSError:
            pass


POOL_DIED = (
    "a worker process died (killed, out of memory, or it could not start: in a script, call offtd.sweep under "
    '`if __name__ == "__main__":`, as the pool\'s workers import the script)'
)


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, cf.process.BrokenProcessPool):
        return POOL_DIED
    text = str(exc) if isinstance(exc, SpecError) else f"{type(exc).__name__}: {exc}"
    text = _printable(text)
    return text if len(text) <= 300 else text[:297] + "..."


# ------------------------------------------------------------------------------------ the results


class Store:
    """Every run's status (one byte a run) and, up to STORE_LIMIT runs, its metrics: what the per-cell
    tables are computed from, in seed order."""

    def __init__(self, defn: SweepDef):
        self.defn = defn
        n = defn.n_runs
        self.status = np.zeros(n, dtype=np.uint8)
        self.values = np.full((n, len(METRICS)), np.nan) if n <= STORE_LIMIT else None
        self.elapsed = np.full(n, np.nan) if n <= STORE_LIMIT else None
        self.flagged: dict[int, str] = {}

    def add(self, pair: int, status: str, flagged: str, values: Sequence[float | None], elapsed: float | None) -> None:
        self.status[pair] = _CODE[status]
        if flagged:
            self.flagged[pair] = flagged
        else:
            self.flagged.pop(pair, None)
        if self.values is not None and self.elapsed is not None:  # both kept, or neither (STORE_LIMIT)
            self.values[pair] = [math.nan if v is None else v for v in values]
            self.elapsed[pair] = math.nan if elapsed is None else elapsed

    def forget(self, pair: int) -> None:
        self.status[pair] = 0
        self.flagged.pop(pair, None)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.status, minlength=len(STATUSES) + 1)
        return {s: int(c[i + 1]) for i, s in enumerate(STATUSES)}

    def done(self) -> int:
        return int(np.count_nonzero(self.status))

    def cell_summaries(self, limit: int | None = None) -> list[dict[str, Any]] | None:
        """Per cell (up to `limit` cells): verdict, counts and fractions of statuses over its seeds, mean /
        standard error / count of each metric over the seeds that measured it, flagged checks."""
        if self.values is None:
            return None
        defn = self.defn
        S = defn.n_seeds
        n_cells = defn.n_cells if limit is None else min(limit, defn.n_cells)
        st = self.status[: n_cells * S].reshape(n_cells, S)
        vals = self.values[: n_cells * S].reshape(n_cells, S, len(METRICS))
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            measured = ~np.isnan(vals) & (st[:, :, None] != 0)
            v = np.where(measured, vals, 0.0)
            n = measured.sum(axis=1)
            mean = np.where(n > 0, v.sum(axis=1) / np.maximum(n, 1), np.nan)
            dev = np.where(measured, vals - mean[:, None, :], 0.0)
            var = (dev * dev).sum(axis=1) / np.maximum(n - 1, 1)
            se = np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), np.nan)
        out = []
        for c in range(n_cells):
            codes = st[c]
            ran = int(np.count_nonzero(codes))
            counts = {s: int(np.count_nonzero(codes == _CODE[s])) for s in STATUSES}
            verdict_status = _modal(counts)
            summary: dict[str, Any] = {
                "cell": c,
                "overrides": defn.overrides(c),
                "seeds_run": ran,
                "seeds": S,
                "status": verdict_status,
                "verdict": _verdict(verdict_status, counts, ran, S),
                "counts": counts,
                "fractions": {s: (counts[s] / ran if ran else math.nan) for s in STATUSES},
                "flagged": _flagged(self.flagged, codes, c * S, ran),
                "metrics": {
                    name: {"mean": float(mean[c, j]), "se": float(se[c, j]), "n": int(n[c, j])}
                    for j, name in enumerate(METRICS[: len(HEADLINE)])
                },
                "exact": {name: _first(vals[c, :, len(HEADLINE) + j], codes) for j, name in enumerate(EXACT)},
            }
            out.append(summary)
        return out


def _modal(counts: dict[str, int]) -> str | None:
    """The status most seeds share; a tie goes to the worse status. None when no seed ran."""
    best, best_n = None, 0
    for s in STATUSES:  # best to worst: a later status wins a tie
        if counts[s] and counts[s] >= best_n:
            best, best_n = s, counts[s]
    return best


def _verdict(status: str | None, counts: dict[str, int], ran: int, seeds: int) -> str:
    if status is None:
        return "-"
    if seeds == 1:
        return status
    return f"{status} {counts[status]}/{ran}"


def _flagged(flagged: dict[int, str], codes: np.ndarray, first: int, ran: int) -> str:
    """One seed: its flagged checks (or its error). Several: each flagged check and on how many of the
    seeds that ran, e.g. "rho_sane:FAIL 9/10 ERROR 1/10"."""
    if codes.size == 1:
        return flagged.get(first, "")
    tally: Counter[str] = Counter()
    for j, code in enumerate(codes):
        if code == _CODE["ERROR"]:
            tally["ERROR"] += 1
        elif first + j in flagged:
            tally.update(flagged[first + j].split(" "))
    return " ".join(f"{k} {n}/{ran}" for k, n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])))


def _first(values: np.ndarray, codes: np.ndarray) -> float | None:
    for v, c in zip(values, codes):
        if c and not math.isnan(v):
            return float(v)
    return None


# --------------------------------------------------------------------------------------- the files


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return v
    return _toml(v)


class CsvLog:
    """sweep.csv, appended one row at a time and flushed after each (never rewritten)."""

    def __init__(self, path: Path, defn: SweepDef):
        self.path, self.defn = path, defn
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            _drop_partial_line(path)
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.fh, lineterminator="\n")
        if new:
            self.writer.writerow(defn.columns())
            self.fh.flush()

    def append(self, row: dict[str, Any]) -> None:
        defn = self.defn
        cell, si = divmod(row["pair"], defn.n_seeds)
        overrides = defn.overrides(cell)
        self.writer.writerow(
            [
                cell,
                defn.seeds[si],
                *(_csv_value(overrides[k]) for k in defn.keys),
                row["status"],
                row["flagged"],
                *(_csv_value(None if v is None else float(v)) for v in row["values"]),
                repr(round(float(row["elapsed_s"]), 6)),
                row["run_dir"],
            ]
        )
        self.fh.flush()

    def close(self) -> None:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
        except OSError:
            pass
        self.fh.close()


def _drop_partial_line(path: Path) -> None:
    """A sweep killed mid-append can leave a last line without its newline: cut it (the pair reruns)."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            data = fh.read(pos - start)
            i = data.rfind(b"\n")
            if i >= 0:
                fh.truncate(start + i + 1)
                return
            pos = start
        fh.truncate(0)


def read_rows(root: Path, defn: SweepDef) -> dict[int, dict[str, Any]]:
    """The last row of each pair in sweep.csv (rows that do not parse, e.g. a line cut by a kill, are
    skipped: their pairs run again)."""
    path = root / "sweep.csv"
    if not path.exists():
        return {}
    out: dict[int, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return {}
        if header != defn.columns():
            raise SpecError(str(path), "its columns are not this sweep's (a different grid or offtd version)")
        ncol = len(header)
        si = {name: i for i, name in enumerate(header)}
        first_metric = si[METRICS[0]]
        for rec in reader:
            if len(rec) != ncol:
                continue
            try:
                cell, seed = int(rec[0]), int(rec[1])
                pair = defn.pair(cell, seed)
                status = rec[si["status"]]
                if status not in _CODE or not 0 <= cell < defn.n_cells:
                    continue
                values = [float(x) if x != "" else None for x in rec[first_metric : first_metric + len(METRICS)]]
                elapsed = float(rec[si["elapsed_s"]]) if rec[si["elapsed_s"]] else None
            except (ValueError, KeyError):
                continue
            out[pair] = {
                "pair": pair,
                "status": status,
                "flagged": rec[si["flagged"]],
                "values": values,
                "elapsed_s": elapsed,
                "run_dir": rec[si["run_dir"]],
            }
    return out


def markdown(defn: SweepDef, store: Store, root: Path, note: str = "") -> str:
    counts = store.counts()
    done = store.done()
    keys = defn.keys
    S = defn.n_seeds
    total = defn.n_runs
    what = f"{defn.n_cells} cells" if S == 1 else f"{defn.n_cells} cells x {S} seeds = {total} runs"
    lines = [f"# Sweep: {md(defn.base.name)}", ""]
    lines.append(f"- directory: {md(str(root))}")
    lines.append(f"- backend: {defn.backend}; keep: {defn.keep}; seeds: {_seeds_text(defn.seeds)}")
    for k, v in defn.grid.items():
        lines.append(f"- {md(k)}: {md(', '.join(_value_text(x) for x in v))}")
    status_text = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"
    lines.append(f"- {what}: {done} run ({status_text})" + (f"; {total - done} not run" if done < total else ""))
    if note:
        lines.append(f"- {md(note)}")
    lines.append("")
    summaries = store.cell_summaries(limit=MD_ROWS)
    if summaries is None:
        lines.append(f"Per-cell table omitted above {STORE_LIMIT} runs: `offtd.load_sweep(DIR)` reads sweep.csv.")
        return "\n".join(lines) + "\n"
    if S > 1:
        lines.append(
            "Per cell: the status most seeds share and how many (a tie goes to the worse status), the checks "
            "flagged and on how many seeds, and each metric's mean +- standard error over the seeds that "
            "measured it. `exact_*`: the expected TD update at the initial gains (no sampling)."
        )
        lines.append("")
    cols = ["cell", *keys, "status", "flagged", *METRICS]
    lines.append("| " + " | ".join(md(c, table=True) for c in cols) + " |")
    lines.append("| " + " | ".join("---" for _ in cols) + " |")
    for s in summaries:
        vals = [str(s["cell"]), *(_cell_text(s["overrides"][k]) for k in keys)]
        vals += [s["verdict"], md(s["flagged"], table=True)]
        for name in METRICS[: len(HEADLINE)]:
            m = s["metrics"][name]
            if m["n"] == 0:
                vals.append("-")
            elif S == 1 or m["n"] < 2:
                vals.append(fmt(m["mean"]))
            else:
                vals.append(f"{fmt(m['mean'])} ± {fmt(m['se'])}")
        vals += [fmt(s["exact"][name]) for name in EXACT]
        lines.append("| " + " | ".join(vals) + " |")
    if defn.n_cells > MD_ROWS:
        lines.append("")
        lines.append(f"... {defn.n_cells - MD_ROWS} more cells in sweep.json and sweep.csv")
    return "\n".join(lines) + "\n"


def _cell_text(v: Any) -> str:
    """A table cell as inert markdown: a value such as name="a|b" or "<b>x</b>" stays one literal cell."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None or isinstance(v, (int, float)):
        return fmt(v)
    return md(_value_text(v), table=True)


def to_json(defn: SweepDef, store: Store, root: Path, complete: bool, note: str = "") -> str:
    from . import __version__

    data = {
        "sweep": {
            "name": defn.base.name,
            "dir": str(root),
            "version": __version__,
            "backend": defn.backend,
            "keep": defn.keep,
            "grid": defn.grid,
            "seeds": list(defn.seeds),
            "cells": defn.n_cells,
            "runs": defn.n_runs,
            "done": store.done(),
            "counts": store.counts(),
            "complete": complete,
            "note": note,
        },
        "cells": store.cell_summaries(),
    }
    return _json_text(jsonable(data))


def _json_text(data: dict[str, Any]) -> str:
    """sweep.json's text: a header key per line and a cell per line. Written with json's C encoder (with
    `indent` json switches to its Python encoder and one number per line: 4x slower, 20 ms more at 200
    cells, 1 s at 10^4, paid after the last run)."""

    def dump(v: Any) -> str:
        return json.dumps(v, allow_nan=False)

    head = ",\n".join(f"  {dump(k)}: {dump(v)}" for k, v in data["sweep"].items())
    cells = data["cells"]
    body = "null" if cells is None else "[\n" + ",\n".join("  " + dump(c) for c in cells) + "\n ]"
    return f'{{\n "sweep": {{\n{head}\n }},\n "cells": {body}\n}}\n'


# ----------------------------------------------------------------------------------- the estimate


@dataclass
class Plan:
    """A sweep before it runs: its size, what is left to run, and the estimated time."""

    defn: SweepDef
    root: Path | None  # the directory being resumed, else None (created when the sweep starts)
    todo: int
    run_seconds: float  # estimated CPU-seconds of one run (one core)
    how: str  # "work estimate" or "calibration"
    workers: int = 1
    previous: dict[int, dict[str, Any]] = field(default_factory=dict)  # resumed rows, by pair

    @property
    def work_seconds(self) -> float:
        return self.todo * self.run_seconds

    @property
    def wall_seconds(self) -> float:
        return self.work_seconds / max(1, self.workers)

    def describe(self) -> str:
        d = self.defn
        what = f"{d.n_cells} cells x {d.n_seeds} seed{'s' if d.n_seeds != 1 else ''} = {d.n_runs} runs"
        left = "" if self.todo == d.n_runs else f", {self.todo} left to run"
        return (
            f"sweep of {what}{left}: about {duration(self.wall_seconds)} on {self.workers} "
            f"worker{'s' if self.workers != 1 else ''} ({duration(self.run_seconds)} a run, {self.how})"
        )

    def needs_confirmation(self) -> str | None:
        """Why this sweep needs --yes (None: it does not)."""
        if self.todo > CONFIRM_RUNS:
            return f"more than {CONFIRM_RUNS} runs"
        if self.wall_seconds > CONFIRM_SECONDS:
            return f"more than {duration(CONFIRM_SECONDS)}"
        return None


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds >= 86400 * 365:
        return f"{seconds / (86400 * 365):.3g} years"
    if seconds >= 86400:
        return f"{seconds / 86400:.3g} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    if seconds >= 60:
        return f"{seconds / 60:.3g} min"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    return f"{seconds * 1e3:.3g} ms"


def estimate_run_seconds(spec: Spec, backend: str) -> tuple[float, str]:
    """CPU-seconds of one run: offtd.budget's work estimate for the Rust core (plus the cell's exact
    theory and validation), else a short calibration run (two iterations, scaled)."""
    if backend == "rust":
        try:
            from .budget import work_estimate_seconds
        except ImportError:  # pragma: no cover - budget ships with offtd
            pass
        else:
            return work_estimate_seconds(spec) + 0.005, "work estimate"
    from .budget import probe_iterations
    from .loop import run_loop

    def timed(iters: int) -> float:
        short = dataclasses.replace(spec, run=dataclasses.replace(spec.run, outer_iters=iters))
        start = time.perf_counter()
        try:
            run_loop(short, _backend(backend))
        except Exception:  # the cell will be an ERROR row; the time still says something
            pass
        return time.perf_counter() - start

    # One iteration is a probe iteration (the last always is); two are a plain one and a probe one.
    one = timed(1)
    if spec.run.outer_iters == 1:
        return one, "calibration"
    plain = max(timed(2) - one, 0.0)
    probes = probe_iterations(spec)
    return one + (spec.run.outer_iters - 1) * plain + (probes - 1) * max(one - plain, 0.0), "calibration"


def plan(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: str | Sequence[int] | None = None,
    *,
    keep: str | None = None,
    backend: str | None = None,
    resume: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Plan:
    """Define the sweep (or read the one being resumed and check it is the same), count what is left to
    run and estimate its time. Creates nothing."""
    from .executors import usable_cores

    if resume is not None:
        defn, previous, root = _resume(resume, spec, grid, seeds, keep, backend, overrides)
    else:
        defn, previous, root = define(spec, grid, seeds, keep, backend, overrides), {}, None
    done = sum(1 for r in previous.values() if r["status"] in DONE)
    first = defn.cell_spec(0)
    per_run, how = estimate_run_seconds(first, defn.backend)
    todo = defn.n_runs - done
    n = workers or usable_cores()
    if n > 1 and (todo <= 1 or todo * per_run < POOL_MIN_SECONDS) and workers is None:
        n = 1
    return Plan(defn, root, todo, per_run, how, n, previous)


def _resume(
    directory: str | os.PathLike[str],
    spec: Any,
    grid: Mapping[str, Sequence[Any]] | None,
    seeds: str | Sequence[int] | None,
    keep: str | None,
    backend: str | None,
    overrides: Mapping[str, Any] | None,
) -> tuple[SweepDef, dict[int, dict[str, Any]], Path]:
    root = Path(directory)
    where = f"--resume {root}"
    if not (root / "sweep.toml").is_file():
        raise SpecError(where, "no sweep.toml here: not an offtd sweep directory")
    stored = define(root / "sweep.toml")
    # What the caller gave is compared; what it left out (and its spec file's [sweep] table does not
    # set) is the stored sweep's.
    table = sweep_table(spec) if spec is not None else {}
    asked = define(
        spec if spec is not None else stored.base,
        grid if grid else (None if "grid" in table else stored.grid),
        seeds if seeds is not None else (None if "seeds" in table else list(stored.seeds)),
        keep or stored.keep,  # what a run keeps does not change its results: only --keep is compared
        backend or (None if "backend" in table else stored.backend),
        overrides,
    )
    problem = _difference(stored, asked)
    if problem is not None:
        raise SpecError(where, f"{problem}; resume with the sweep's own spec and grid (or none), or start a new sweep")
    return stored, read_rows(root, stored), root


def _difference(a: SweepDef, b: SweepDef) -> str | None:
    """How sweep `b` differs from the stored sweep `a` (None: the same)."""
    key = _first_difference(a.base.to_dict(), b.base.to_dict())
    if key is not None:
        return f"the base spec differs from the sweep's at {key}"
    if list(a.grid) != list(b.grid):
        return f"the grid's keys differ from the sweep's ({', '.join(a.grid)})"
    for k in a.grid:
        if list(a.grid[k]) != list(b.grid[k]) or [type(x) for x in a.grid[k]] != [type(x) for x in b.grid[k]]:
            return f"the grid's values of {k} differ from the sweep's"
    if a.seeds != b.seeds:
        return f"the seeds differ from the sweep's ({_seeds_text(a.seeds)})"
    if a.keep != b.keep:
        return f"keep differs from the sweep's ({a.keep})"
    if a.backend != b.backend:
        return f"the backend differs from the sweep's ({a.backend})"
    return None


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if d is not None:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


# ----------------------------------------------------------------------------------------- running


@dataclass
class Progress:
    done: int  # runs finished in this sweep (this session)
    todo: int  # runs this session set out to run
    counts: dict[str, int]  # statuses of every finished run, resumed ones included
    elapsed_s: float
    eta_s: float | None


@dataclass
class SweepResult:
    root: Path
    defn: SweepDef
    counts: dict[str, int]
    done: int  # runs with a row (any status)
    complete: bool  # every run finished (PASS / WARN / FAIL / ERROR) and nothing was interrupted
    interrupted: bool
    cells: list[dict[str, Any]] | None  # the per-cell summaries of sweep.json
    plots: list[Path] = field(default_factory=list)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The last row of every run in sweep.csv, in (cell, seed) order, as {column: value}."""
        rows = read_rows(self.root, self.defn)
        out = []
        for pair in sorted(rows):
            r = rows[pair]
            cell, si = divmod(pair, self.defn.n_seeds)
            out.append(
                {
                    "cell": cell,
                    "seed": self.defn.seeds[si],
                    **self.defn.overrides(cell),
                    "status": r["status"],
                    "flagged": r["flagged"],
                    **dict(zip(METRICS, r["values"])),
                    "elapsed_s": r["elapsed_s"],
                    "run_dir": r["run_dir"],
                }
            )
        return out

    def table(self):
        """sweep.csv as a pandas DataFrame (:func:`load_sweep`)."""
        return load_sweep(self.root)


def sweep(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: str | Sequence[int] | None = None,
    *,
    executor: cf.Executor | None = None,
    resume: str | os.PathLike[str] | None = None,
    keep: str | None = None,
    backend: str | None = None,
    out: str | os.PathLike[str] = "outputs",
    workers: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[Progress], None] | None = None,
    plots: bool = False,
    **overrides: Any,
) -> SweepResult:
    """Run every (cell, seed) pair of `grid` x `seeds` over the base `spec` and return the summary.

    `grid` maps dotted keys to lists of values (added to the spec file's `[sweep.grid]`); `seeds` is a
    list of integers or "0..9" / "0,3,7" (default: the spec's run.seed). `executor` is any
    concurrent.futures.Executor (a Dask `client.get_executor()`, a process pool, ...); the default is a
    local process pool over the usable cores (`workers`), or this process when the sweep is small.
    `resume` continues the sweep in that directory (refused when spec, grid or seeds differ). `keep` is
    "full" (a run directory per pair) or "summary" (rows only). Keyword overrides apply to the base spec
    (`policy__p_mix=0.1`). `plots=True` also draws the sweep's heatmaps (offtd[plot])."""
    from .api import _normalise_overrides

    p = plan(spec, grid, seeds, keep=keep, backend=backend, resume=resume, workers=workers,
             overrides=_normalise_overrides(overrides) or None)  # fmt: skip
    return execute(p, executor=executor, out=out, should_stop=should_stop, progress=progress, plots=plots)


def start_pool(p: Plan):
    """The local process pool a plan runs on (None: it runs in this process). Its fork server is started
    now, if the command has not already (offtd.executors.prestart), and imports offtd while this process
    validates the grid; the workers are forked from it at the first tasks, in milliseconds."""
    from .executors import LocalPool

    if p.workers > 1 and p.todo > 1:
        return LocalPool(p.workers)
    return None


def execute(
    p: Plan,
    executor: cf.Executor | None = None,
    out: str | os.PathLike[str] = "outputs",
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[Progress], None] | None = None,
    plots: bool = False,
    pool: Any = None,
) -> SweepResult:
    """Run a :func:`plan`: validate the grid (up to VALIDATE_LIMIT cells, while the pool starts), create
    or reopen the sweep directory, run what is left, write sweep.md and sweep.json. `executor`: any
    Executor (not shut down here); else `pool` (from :func:`start_pool`, shut down here), else a local
    pool or this process as the plan says."""
    from .executors import InProcessExecutor, executor_workers

    defn = p.defn
    own = None
    if executor is None:
        own = pool if pool is not None else start_pool(p)
        executor = own if own is not None else InProcessExecutor()
    try:
        if p.root is None:
            if "_validated" not in defn.__dict__:
                validate(defn)
            root = _create(defn, out)
        else:
            root = p.root
        store = Store(defn)
        for pair, row in p.previous.items():
            if row["status"] in DONE:
                store.add(pair, row["status"], row["flagged"], row["values"], row["elapsed_s"])
        try:
            log = CsvLog(root / "sweep.csv", defn)
        except OSError as exc:
            raise OutputError(str(root), f"could not write sweep.csv: {exc.strerror or exc}") from None
        workers = executor_workers(executor)
        runner = _Runner(Job(defn, str(root)), store, log, executor, own, workers, p.run_seconds, should_stop, progress)
        try:
            with _hold_blas() if isinstance(executor, InProcessExecutor) else contextlib.nullcontext():
                runner.run()
        finally:
            log.close()
        complete = runner.fatal is None and not runner.interrupted and _all_finished(store)
        note = "" if complete else ("interrupted" if runner.interrupted else "incomplete")
        _write_summary(defn, store, root, complete, note)
        if runner.fatal is not None:
            raise OutputError(str(root), runner.fatal)
        result = SweepResult(root, defn, store.counts(), store.done(), complete, runner.interrupted, store.cell_summaries())
        if plots and not runner.interrupted:
            from .sweep_plots import write_sweep_plots

            result.plots = write_sweep_plots(root)
        return result
    except BaseException:
        if own is not None:
            own.kill()
        raise
    finally:
        if own is not None:
            own.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _hold_blas() -> Iterator[None]:
    """One BLAS thread in this process for the whole block (the in-process executor's runs)."""
    global _blas_held
    from .threads import blas_single_thread

    if _blas_held:
        yield
        return
    with blas_single_thread():
        _blas_held = True
        try:
            yield
        finally:
            _blas_held = False


def _all_finished(store: Store) -> bool:
    return store.done() == store.defn.n_runs and not np.any(store.status == _CODE["INTERRUPTED"])


def _create(defn: SweepDef, out: str | os.PathLike[str]) -> Path:
    need = 64 * 1024 + (output_estimate_bytes(defn.base) * defn.n_runs if defn.keep == "full" else 512 * defn.n_runs)
    root = make_run_dir(out, f"{defn.base.name}_sweep", need_bytes=need)
    try:
        write_atomic(root / "sweep.toml", defn.to_toml())
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise OutputError(str(root), f"could not write sweep.toml: {exc.strerror or exc}") from None
    return root


def _write_summary(defn: SweepDef, store: Store, root: Path, complete: bool, note: str) -> None:
    try:
        write_atomic(root / "sweep.md", markdown(defn, store, root, note))
        write_atomic(root / "sweep.json", to_json(defn, store, root, complete, note))
    except OSError as exc:
        raise OutputError(str(root), f"could not write the sweep table: {exc.strerror or exc}") from None


class _Runner:
    """Submits batches of pairs to the executor, a bounded number at a time, and records what comes back.
    Batch sizes shrink towards the end (guided self-scheduling), so no worker idles long at the tail. A
    task that fails as a whole (its worker died) is split into single runs and retried once each; a
    single run that fails so is an ERROR row."""

    def __init__(self, job, store, log, executor, own, workers, run_seconds, should_stop, progress):
        from .executors import InProcessExecutor

        self.job, self.store, self.log = job, store, log
        self.executor, self.own, self.workers = executor, own, max(1, workers)
        self.in_process = isinstance(executor, InProcessExecutor)
        self.run_seconds = max(run_seconds, 1e-4)
        self.should_stop = should_stop or (lambda: False)
        self.progress = progress
        self.defn = job.defn
        self.todo = [int(p) for p in np.flatnonzero(store.status == 0)] if self.defn.n_runs <= 10**7 else None
        self.total = int(np.count_nonzero(store.status == 0))
        self.cursor = 0  # next pair to consider (lazy path) or index into self.todo
        self.retry: list[int] = []
        self.submitted = 0
        self.finished = 0
        self.interrupted = False
        self.fatal: str | None = None
        self.restarts = 0
        self.start = time.perf_counter()
        self.last_progress = 0.0

    # the pairs, in order, that still have to run
    def _take(self, n: int) -> list[int]:
        if self.retry:
            return [self.retry.pop(0)]
        if self.todo is not None:
            batch: list[int] = self.todo[self.cursor : self.cursor + n]
            self.cursor += len(batch)
            return batch
        batch = []
        status = self.store.status
        while len(batch) < n and self.cursor < len(status):
            end = min(len(status), self.cursor + 65536)
            free = np.flatnonzero(status[self.cursor : end] == 0)
            need = n - len(batch)
            if free.size > need:
                free = free[:need]
                batch.extend(int(self.cursor + i) for i in free)
                self.cursor += int(free[-1]) + 1
            else:
                batch.extend(int(self.cursor + i) for i in free)
                self.cursor = end
        return batch

    def _specs(self, batch: list[int]) -> dict[int, Spec] | None:
        """The validated specs of the batch's cells, for a task that runs in another process (one in this
        process finds them in the definition's cache)."""
        validated = self.defn.__dict__.get("_validated")
        if self.in_process or not validated:
            return None
        cells = {pair // self.defn.n_seeds for pair in batch}
        return {c: validated[c] for c in cells if c in validated}

    def _batch_size(self) -> int:
        if self.in_process:  # no start-up cost per task: record every run as it finishes
            return 1
        remaining = self.total - self.submitted
        by_time = max(1, int(BATCH_SECONDS / self.run_seconds))
        guided = max(1, math.ceil(remaining / (4 * self.workers)))
        return max(1, min(by_time, guided))

    def run(self) -> None:
        from .executors import stop_check

        in_flight: dict[cf.Future, list[int]] = {}
        limit = 1 if self.in_process else 2 * self.workers
        stopping = False
        with stop_check(self.should_stop if self.in_process else None):
            try:
                while True:
                    while not stopping and len(in_flight) < limit:
                        batch = self._take(self._batch_size())
                        if not batch:
                            break
                        try:
                            fut = self.executor.submit(run_batch, self.job, batch, self._specs(batch))
                        except Exception as exc:  # a broken pool refuses new work
                            if self._restart(exc):
                                self.retry[:0] = batch
                            else:
                                self._record_failure(batch, exc)
                            continue
                        self.submitted += len(batch)
                        in_flight[fut] = batch
                        if self.in_process:
                            break
                    if not in_flight:
                        break
                    done, _ = cf.wait(list(in_flight), timeout=0.2, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        self._handle(fut, in_flight.pop(fut))
                    if self.fatal is not None and not stopping:
                        stopping = True
                        self._stop(in_flight)
                    if not stopping and self.should_stop():
                        stopping = True
                        self.interrupted = True
                        self._stop(in_flight)
                    self._show()
            except KeyboardInterrupt:  # a second signal: stop now
                self.interrupted = True
                if self.own is not None:
                    self.own.kill()
                for fut in in_flight:
                    fut.cancel()
        self._show(final=True)

    def _stop(self, in_flight: dict[cf.Future, list[int]]) -> None:
        for fut in list(in_flight):
            if fut.cancel():
                in_flight.pop(fut)
        if self.own is not None:
            self.own.request_stop()

    def _handle(self, fut: cf.Future, batch: list[int]) -> None:
        if fut.cancelled():
            return
        try:
            res: BatchResult = fut.result()
        except Exception as exc:  # the task as a whole failed: its worker died, the cluster lost it, ...
            if self.own is not None and isinstance(exc, cf.process.BrokenProcessPool):
                self._restart(exc)
            if len(batch) > 1:
                self.retry.extend(batch)
                self.submitted -= len(batch)
            else:
                self._record_failure(batch, exc)
            return
        for row in res.rows:
            self._record(row)
        if res.fatal is not None and self.fatal is None:
            self.fatal = res.fatal
        if res.stopped and not self.interrupted and not self.should_stop() and res.fatal is None:
            # a worker stopped although this sweep did not ask (someone signalled it): rerun what it left
            finished = {r["pair"] for r in res.rows if r["status"] != "INTERRUPTED"}
            left = [p for p in batch if p not in finished]
            self.retry.extend(left)
            self.submitted -= len(left)

    def _record(self, row: dict[str, Any]) -> None:
        try:
            self.log.append(row)
        except OSError as exc:
            if self.fatal is None:
                self.fatal = f"could not write sweep.csv: {exc.strerror or exc}"
            return
        self.store.add(row["pair"], row["status"], row["flagged"], row["values"], row["elapsed_s"])
        self.finished += 1

    def _record_failure(self, batch: list[int], exc: BaseException) -> None:
        msg = _error_message(exc)
        for pair in batch:
            self._record(_row(pair, "ERROR", f"the task failed: {msg}", [None] * len(HEADLINE), [None] * len(EXACT), 0.0, ""))

    def _restart(self, exc: BaseException) -> bool:
        """A broken local pool is replaced (at most 10 times): the sweep goes on."""
        from .executors import LocalPool

        # A pool that broke before any run came back breaks again (its workers cannot start: a script
        # without the `if __name__ == "__main__":` guard, a broken install): one restart, not ten.
        if self.own is None or self.restarts >= (10 if self.finished else 1):
            return False
        if not getattr(self.own, "_broken", False) and not isinstance(exc, cf.process.BrokenProcessPool):
            return False
        self.restarts += 1
        self.own.shutdown(wait=False, cancel_futures=True)
        self.own = self.executor = LocalPool(self.own.workers)
        return True

    def _show(self, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if not final and now - self.last_progress < 0.2:
            return
        self.last_progress = now
        elapsed = now - self.start
        left = self.total - self.finished
        eta = elapsed / self.finished * left if self.finished else self.run_seconds * left / self.workers
        self.progress(Progress(self.finished, self.total, self.store.counts(), elapsed, eta))


# ---------------------------------------------------------------------------------------- reading


def load_definition(directory: str | os.PathLike[str]) -> SweepDef:
    """The sweep of a sweep directory (its sweep.toml)."""
    root = Path(directory)
    if not (root / "sweep.toml").is_file():
        raise SpecError(str(root), "no sweep.toml here: not an offtd sweep directory")
    return define(root / "sweep.toml")


def load_store(directory: str | os.PathLike[str]) -> tuple[SweepDef, Store]:
    """The sweep's definition and its results as recorded in sweep.csv (last row of each run)."""
    root = Path(directory)
    defn = load_definition(root)
    store = Store(defn)
    for pair, row in read_rows(root, defn).items():
        store.add(pair, row["status"], row["flagged"], row["values"], row["elapsed_s"])
    return defn, store


def load_sweep(directory: str | os.PathLike[str], per: str = "run"):
    """A sweep as a pandas DataFrame: one row per (cell, seed) run with `per="run"` (the last row of each
    run in sweep.csv, in cell and seed order), or one row per cell with `per="cell"`: the verdict, the
    fraction of seeds at each status (`frac_PASS`, ...), each metric's `_mean`, `_se` and `_n`, and the
    exact theory."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("load_sweep needs pandas: pip install pandas") from None
    root = Path(directory)
    defn = load_definition(root)
    if per == "cell":
        store = Store(defn)
        for pair, row in read_rows(root, defn).items():
            store.add(pair, row["status"], row["flagged"], row["values"], row["elapsed_s"])
        records = []
        for s in store.cell_summaries() or []:
            rec: dict[str, Any] = {"cell": s["cell"], **s["overrides"], "verdict": s["verdict"], "status": s["status"],
                                   "seeds_run": s["seeds_run"], "flagged": s["flagged"]}  # fmt: skip
            rec.update({f"frac_{k}": v for k, v in s["fractions"].items()})
            for name, m in s["metrics"].items():
                rec.update({f"{name}_mean": m["mean"], f"{name}_se": m["se"], f"{name}_n": m["n"]})
            rec.update(s["exact"])
            records.append(rec)
        return pd.DataFrame.from_records(records)
    if per != "run":
        raise ValueError(f"per must be 'run' or 'cell', got {per!r}")
    # Metrics are floats ("" is a metric the run did not measure, "nan" / "inf" are what it measured);
    # status, flagged and run_dir are text ("" stays ""); a grid value is read as pandas infers it.
    numeric = [*METRICS, "elapsed_s"]
    text = ["status", "flagged", "run_dir"]
    try:
        frame = pd.read_csv(
            root / "sweep.csv",
            keep_default_na=False,
            na_values={c: ["", "nan", "NaN"] for c in numeric},
            dtype={**{c: "float64" for c in numeric}, **{c: str for c in text}},
            on_bad_lines="skip",
        )
    except FileNotFoundError:
        raise SpecError(str(root / "sweep.csv"), "missing: the sweep never started") from None
    except ValueError as exc:  # a value that is not a number where a metric belongs: a damaged file
        raise SpecError(str(root / "sweep.csv"), f"cannot be read: {exc}") from None
    frame = frame[frame["status"].isin(STATUSES)]
    frame = frame.drop_duplicates(subset=["cell", "seed"], keep="last")
    return frame.sort_values(["cell", "seed"], kind="stable").reset_index(drop=True)


def rewrite_summary(directory: str | os.PathLike[str]) -> None:
    """Write sweep.md and sweep.json again from sweep.csv (a sweep killed before it wrote them)."""
    root = Path(directory)
    defn, store = load_store(root)
    complete = _all_finished(store)
    _write_summary(defn, store, root, complete, "" if complete else "incomplete")


