"""`offtd bench`: time every kernel and whole runs on both backends, on the same inputs, in one process;
then sweeps (issue 10).

The kernel table has one row per case: reference time, Rust time (all cores), their ratio, the Rust time
on one thread, and throughput per core and on all cores. Single-thread Rust figures come from a child
process started with RAYON_NUM_THREADS=1 (rayon's pool size is fixed per process).

The sweep table times `offtd sweep` as a user runs it (a fresh process): the default executor against
`--workers 1`, the per-cell overhead of `--keep summary` beyond the runs, and 10^4 default cells,
measured (about 4 minutes; `--quick` extrapolates from 200) (`--only sweeps` for this table alone).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import STABILITY_BASE, STATS_CROSS, STATS_EMPHASIS, Backend, Problem, get_backend


@dataclass
class Case:
    name: str
    unit: str  # what throughput counts ("transitions", "ratios", "solves", ...)
    items: int  # units per call
    make: Callable[..., Callable[[], object]]  # make(backend): the call to time (extra defaults bind loop values)
    numpy_baseline: Callable[..., object] | None = None


def _problem(n: int = 2, m: int = 2) -> Problem:
    a = np.eye(n) * 0.9 + np.eye(n, k=1) * 0.1
    b = np.eye(n, m) * 0.5
    return Problem(a, b, np.eye(n), np.eye(m), 0.1, 1.0, 1.0, 0.4, 0.5, 0.1, 0.9, math.inf, 0)


def _gains(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.zeros((m, n))
    return k, k.copy()


def _pool(n: int, size: int = 4096) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(size, n))


def _system(d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(d)
    a = np.eye(d) * d + rng.normal(size=(d, d))
    return a, rng.normal(size=d)


def _contraction(d: int) -> np.ndarray:
    rng = np.random.default_rng(d + 1)
    q = rng.normal(size=(d, d))
    lam = np.linspace(0.2, 0.95, d)
    return q @ np.diag(lam) @ np.linalg.inv(q)


def _numpy_power(m: np.ndarray, v0: np.ndarray, iters: int) -> float:
    v = v0 / np.linalg.norm(v0)
    lam = 0.0
    for _ in range(iters):
        x = m @ v
        lam = float(np.linalg.norm(x))
        v = x / lam
    return lam


def cases(quick: bool) -> list[Case]:
    p = _problem()
    k_pi, k_mu = _gains(p.m, p.n)
    w = np.zeros(p.d)
    pool = _pool(p.n)
    batch, horizon = (16, 128) if quick else (64, 256)
    probe_k = 8192 if quick else 65536
    n_ratios = 100_000 if quick else 1_000_000
    rho = np.exp(np.random.default_rng(1).normal(0.0, 1.0, n_ratios))
    out = [
        Case(
            f"rollout n=m=2 ({batch}x{horizon})",
            "transitions",
            batch * horizon,
            lambda be: lambda: be.rollout(p, w, k_pi, k_mu, 0, batch, horizon),
        ),
        # the optional statistics of the gradient-TD and emphatic critics (MODEL.md 3.3): what they add
        # per transition, against the row above
        Case(
            f"rollout n=m=2 ({batch}x{horizon}) + C_rho (tdc)",
            "transitions",
            batch * horizon,
            lambda be: lambda: be.rollout(p, w, k_pi, k_mu, 0, batch, horizon, STATS_CROSS),
        ),
        Case(
            f"rollout n=m=2 ({batch}x{horizon}) + A_e, b_e (etd)",
            "transitions",
            batch * horizon,
            lambda be: lambda: be.rollout(p, w, k_pi, k_mu, 0, batch, horizon, STATS_EMPHASIS),
        ),
        Case(
            f"probe transitions (K={probe_k}, R=4)",
            "transitions",
            probe_k,
            lambda be: lambda: be.transitions(p, k_pi, k_mu, pool, probe_k, 4, STABILITY_BASE, 0),
        ),
        Case(
            f"policy samples (K={probe_k}, M=64)",
            "samples",
            probe_k,
            lambda be: lambda: be.policy_samples(p, k_pi, k_mu, pool, probe_k, 64, 0),
        ),
        Case(
            f"rho statistics (n={n_ratios})",
            "ratios",
            n_ratios,
            lambda be: lambda: be.rho_stats(rho, 10.0, False),
        ),
    ]
    for d in (6, 64):
        a, b = _system(d)
        out.append(
            Case(f"GMRES solve d={d}", "solves", 1, lambda be, a=a, b=b: lambda: be.solve(a, b, 2000, 1e-10),
                 numpy_baseline=lambda a=a, b=b: np.linalg.solve(a, b))
        )  # fmt: skip
        mat = _contraction(d)
        v0 = np.ones(d)
        out.append(
            Case(f"power iteration d={d} (20 steps)", "steps", 20,
                 lambda be, mat=mat, v0=v0: lambda: be.power_iteration(mat, v0, 20),
                 numpy_baseline=lambda mat=mat, v0=v0: _numpy_power(mat, v0, 20))
        )  # fmt: skip
    for mset in (64, 512):
        rng = np.random.default_rng(mset)
        x, y = rng.normal(size=(mset, 4)), rng.normal(size=(mset, 4)) + 0.1
        out.append(Case(f"MMD^2 (M={mset}, dim 4)", "pairs", mset * mset, lambda be, x=x, y=y: lambda: be.mmd2(x, y)))
    for n in (2, 4) if quick else (2, 4, 8, 16):
        out.append(Case(f"exact expected TD n={n} (H=100)", "iterations", 1, lambda be, n=n: _exact_iteration(be, n)))
    from .spec import load_spec

    for spec_name in ("default", "instab_sigma_mismatch"):
        spec = _spec_path(spec_name)
        s = load_spec(spec)
        if quick:
            s = s.replace(**{"run.outer_iters": 10})
        transitions = s.run.outer_iters * s.run.batch * s.run.horizon
        out.append(Case(f"whole run: {spec_name} ({s.run.outer_iters} it)", "transitions", transitions,
                        lambda be, s=s: lambda: _whole_run(s, be)))  # fmt: skip
    return out


def _exact_iteration(backend: Backend, n: int) -> Callable[[], object]:
    """One probe iteration's exact quantities (MODEL.md 9): state moments, G, A, b, eigenvalues, the
    fixed point, the pool values and the ratio moments, at n states and m = 2 actions."""
    from .exact.exact_metrics import exact_metrics
    from .exact.expected_td import exact_td
    from .model import teacher

    p = _problem(n, 2)
    k_pi, k_mu = _gains(p.m, p.n)
    tch = teacher(p, k_pi)
    gram = np.eye(p.d)
    return lambda: exact_metrics(exact_td(p, k_pi, k_mu, 100, 0.5, False, backend), gram, tch, 0.5)


def _spec_path(name: str):
    from importlib import resources

    return resources.files("offtd").joinpath(f"specs/{name}.toml")


def _whole_run(spec, backend: Backend) -> object:
    from .loop import run_loop

    return run_loop(spec, backend)


def time_call(fn: Callable[[], object], budget_s: float, min_reps: int = 3) -> float:
    """Median wall time of `fn` over at least `min_reps` calls, more while the budget lasts."""
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(backend_name: str, quick: bool, budget_s: float) -> dict[str, float]:
    be = get_backend(backend_name)
    return {c.name: time_call(c.make(be), budget_s) for c in cases(quick)}


def _single_thread_rust(quick: bool, budget_s: float) -> dict[str, float]:
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    code = (
        "import json, sys; from offtd.bench import measure; "
        f"json.dump(measure('rust', {quick!r}, {budget_s!r}), sys.stdout)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout)


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} us"


def _fmt_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}/s"
    return f"{x:.3g}/s"


def main(quick: bool = False, json_path: str | None = None, only: str | None = None) -> int:
    """Print the kernel table and the sweep table (`only`: "kernels" or "sweeps")."""
    cores = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    if only != "sweeps":
        rows = _kernels(quick, cores)
    sweeps: list[dict[str, Any]] = []
    if only != "kernels":
        sweeps = sweep_rows(quick)
        print(("\n" if rows else "") + sweep_table(sweeps))
        print("\nwall times of `offtd sweep ... --keep summary --no-plots` in a fresh process (RAYON_NUM_THREADS=1); "
              f"{cores} cores; quick={quick}")  # fmt: skip
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump({"cores": cores, "quick": quick, "rows": rows, "sweeps": sweeps}, fh, indent=1)
    return 0


def _kernels(quick: bool, cores: int) -> list[dict[str, Any]]:
    budget = 0.2 if quick else 1.0
    all_cases = cases(quick)
    ref = measure("python", quick, budget)
    rust = measure("rust", quick, budget)
    rust1 = _single_thread_rust(quick, budget)
    rows: list[dict[str, Any]] = []
    for c in all_cases:
        base = time_call(c.numpy_baseline, budget) if c.numpy_baseline is not None else None
        rows.append(
            {
                "case": c.name,
                "unit": c.unit,
                "items": c.items,
                "reference_s": ref[c.name],
                "rust_s": rust[c.name],
                "rust_1thread_s": rust1[c.name],
                "ratio": ref[c.name] / rust[c.name],
                "per_core_per_s": c.items / rust1[c.name],
                "all_cores_per_s": c.items / rust[c.name],
                "numpy_s": base,
                "rust_vs_numpy": (rust1[c.name] / base) if base else None,
            }
        )
    header = ["case", "reference", "rust", "ratio", "rust 1 thread", "per core", f"all {cores} cores", "rust/numpy"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    r["case"],
                    _fmt_time(r["reference_s"]),
                    _fmt_time(r["rust_s"]),
                    f"{r['ratio']:.0f}x",
                    _fmt_time(r["rust_1thread_s"]),
                    f"{_fmt_rate(r['per_core_per_s'])} {r['unit']}",
                    f"{_fmt_rate(r['all_cores_per_s'])} {r['unit']}",
                    "-" if r["rust_vs_numpy"] is None else f"{r['rust_vs_numpy']:.2f}",
                ]
            )
            + " |"
        )
    print("\n".join(lines))
    print(f"\nmedians; ratio = reference / rust (all cores), measured in this run; {cores} cores; quick={quick}")
    return rows


# ----------------------------------------------------------------------------------------------- sweeps

# Tiny runs (a few ms) for the per-cell overhead: the run's own cost is measured and subtracted, and a
# small one keeps that subtraction's noise small next to the milliseconds being measured.
TINY_RUN = {
    "run.outer_iters": 2, "run.horizon": 20, "run.probe_every": 1, "probes.distribution.num_samples": 256,
    "probes.fixed_point.batch_size": 256, "probes.stability.batch_size": 256,
}  # fmt: skip


def _grid_values(cells: int) -> str:
    """`cells` values of policy.p_mix in [0, 0.2): runs of one spec that cost the same."""
    return ",".join(repr(round(0.2 * i / cells, 12)) for i in range(cells))


def sweep_wall(cells: int, sets: Mapping[str, object], workers: int | None, copies: int = 1) -> float:
    """Wall seconds of `offtd sweep` over `cells` cells (policy.p_mix) of the default spec with `sets`,
    --keep summary, no plots, as a user runs it: a fresh process (its start-up included), the default
    executor (workers None) or --workers N. RAYON_NUM_THREADS=1: one core per worker, and --workers 1 is
    one core. `copies` > 1 starts that many such sweeps at once (the cells split between them) and times
    the last to finish: the same work on independent processes, with no executor at all."""
    import tempfile

    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="offtd-bench-") as out:
        commands = []
        for c in range(copies):
            share = len(range(c, cells, copies))
            args = [sys.executable, "-m", "offtd", "sweep", "--grid", f"policy.p_mix={_grid_values(share)}", "--keep", "summary",
                    "--no-plots", "--yes", "--out", os.path.join(out, str(c))]  # fmt: skip
            for k, v in sets.items():
                args += ["--set", f"{k}={v}"]
            if workers is not None:
                args += ["--workers", str(workers)]
            commands.append(args)
        start = time.perf_counter()
        procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for a in commands]
        for proc, args in zip(procs, commands):
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise subprocess.CalledProcessError(proc.returncode, args, stderr=err)
        return time.perf_counter() - start


def sweep_overhead(cells: int, repeats: int = 3) -> dict[str, float]:
    """Per-cell cost of a --keep summary sweep beyond its runs, in this process on one core (the in-process
    executor, `--workers 1`): (wall of offtd.sweep - the same runs timed alone) / cells, the median of
    `repeats`. What it holds: validating the cell, its exact theory, appending its row, the bookkeeping."""
    import importlib
    import tempfile

    from .spec import load_spec

    sw = importlib.import_module("offtd.sweep")
    values = [round(0.2 * i / cells, 12) for i in range(cells)]
    specs = [load_spec(None, {**TINY_RUN, "policy.p_mix": v}) for v in values]
    sw.summary_values(specs[0], "rust")  # warm-up: imports, caches
    overheads, runs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for s in specs:
            sw.summary_values(s, "rust")
        alone = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="offtd-bench-") as out:
            start = time.perf_counter()
            sw.sweep(None, {"policy.p_mix": values}, keep="summary", workers=1, out=out, **{k.replace(".", "__"): v for k, v in TINY_RUN.items()})
            swept = time.perf_counter() - start
        overheads.append((swept - alone) / cells)
        runs.append(alone / cells)
    return {"overhead_s": statistics.median(overheads), "run_s": statistics.median(runs)}


def _sweep_overhead_child(cells: int) -> dict[str, float]:
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    code = f"import json, sys; from offtd.bench import sweep_overhead; json.dump(sweep_overhead({cells}), sys.stdout)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout)


def sweep_rows(quick: bool) -> list[dict[str, Any]]:
    """The sweep figures of issue 10: the default executor against --workers 1 on a 200-cell sweep of
    default runs (outer_iters 40) and of short ones (10), next to the machine's own ceiling for that work:
    the cells split over independent `--workers 1` processes started together (a virtual machine's cores
    may share a physical core or a busy host, which no executor can beat); the per-cell overhead of
    --keep summary; and 10^4 cells of the default spec, measured (about 4 minutes; quick: 50 cells,
    and 10^4 extrapolated from 200). The timings are interleaved and repeated (medians): the speed of a shared
    machine drifts within seconds."""
    from .executors import usable_cores
    from .spec import load_spec

    cores = usable_cores()
    n = 50 if quick else 200
    reps = 1 if quick else 5
    rows: list[dict[str, Any]] = []
    variants = [("default spec (40 it)", {})] if quick else [("default spec (40 it)", {}), ("short runs (10 it)", {"run.outer_iters": 10})]
    for label, sets in variants:
        times = [(sweep_wall(n, sets, 1), sweep_wall(n, sets, None), sweep_wall(n, sets, 1, copies=cores)) for _ in range(reps)]
        one = statistics.median(t[0] for t in times)
        pool = statistics.median(t[1] for t in times)
        split = statistics.median(t[2] for t in times)
        rows.append({"case": f"{n} cells, {label}: --workers 1", "wall_s": one, "per_cell_s": one / n})
        rows.append({"case": f"{n} cells, {label}: default executor ({cores} workers)", "wall_s": pool, "per_cell_s": pool / n,
                     "speedup": one / pool, "speedups": [t[0] / t[1] for t in times]})  # fmt: skip
        rows.append({"case": f"{n} cells, {label}: {cores} independent --workers 1 sweeps of {n // cores} cells at once", "wall_s": split,
                     "per_cell_s": split / n, "speedup": one / split, "speedups": [t[0] / t[2] for t in times], "ceiling": True})  # fmt: skip
    m = 50 if quick else 200
    ov = _sweep_overhead_child(m)
    rows.append({"case": f"--keep summary overhead per cell beyond the run ({m} tiny cells, 1 core)", "per_cell_s": ov["overhead_s"],
                 "run_s": ov["run_s"]})  # fmt: skip
    big = 200 if quick else 10_000
    wall = sweep_wall(big, {}, None)
    default_iters = load_spec(None).run.outer_iters
    rows.append({"case": f"{big} cells, default spec ({default_iters} it), default executor", "wall_s": wall, "per_cell_s": wall / big})
    if quick:
        rows.append({"case": f"10^4 cells, default spec ({default_iters} it): extrapolated x{10_000 // big} from {big}",
                     "wall_s": wall * 10_000 / big, "extrapolated": True})  # fmt: skip
    return rows


def _fmt_wall(s: float) -> str:
    return f"{s / 60:.3g} min" if s >= 120 else f"{s:.3g} s"


def sweep_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| sweep case | wall | per cell | note |", "|---|---|---|---|"]
    for r in rows:
        note = ""
        if "speedup" in r:
            each = ", ".join(f"{x:.2f}" for x in r.get("speedups", []))
            note = f"{r['speedup']:.2f}x faster than --workers 1" + (f" (each repeat: {each})" if len(r.get("speedups", [])) > 1 else "")
            if r.get("ceiling"):
                note += "; no executor: the machine's ceiling for this work"
        elif "run_s" in r:
            note = f"the run itself: {_fmt_time(float(r['run_s']))}"
        elif r.get("extrapolated"):
            note = "linear in cells (pool start-up amortised)"
        wall = _fmt_wall(float(r["wall_s"])) if "wall_s" in r else "-"
        per = _fmt_time(float(r["per_cell_s"])) if "per_cell_s" in r else "-"
        lines.append(f"| {r['case']} | {wall} | {per} | {note} |")
    return "\n".join(lines)
