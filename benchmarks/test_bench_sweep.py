"""Sweeps (issue 10) as pytest-benchmarks, outside the default test run:

    python -m pytest benchmarks/test_bench_sweep.py --benchmark-only

Each round is a whole `offtd sweep` in a fresh process (its start-up included), so rounds are few.
`offtd bench --only sweeps` prints the same figures as a table (those in the README).
"""

from __future__ import annotations

import pytest

from offtd.bench import sweep_overhead, sweep_wall
from offtd.executors import usable_cores

CELLS = 200


@pytest.mark.parametrize(
    "workers, copies", [(1, 1), (None, 1), (1, usable_cores())], ids=["workers-1", "default-executor", "independent-processes"]
)
def test_sweep_of_default_runs(benchmark, workers, copies):
    """200 cells of the default spec (outer_iters 40), --keep summary: one core, the default executor,
    and (the machine's ceiling) the cells split over independent --workers 1 processes at once."""
    benchmark.extra_info.update(cells=CELLS, workers=workers or "default", copies=copies)
    benchmark.pedantic(sweep_wall, args=(CELLS, {}, workers, copies), rounds=2, iterations=1)


def test_keep_summary_overhead_per_cell(benchmark):
    """The sweep's cost per cell beyond the run itself, in process on one core (extra_info, seconds)."""
    result = benchmark.pedantic(sweep_overhead, args=(100, 1), rounds=3, iterations=1)
    benchmark.extra_info.update(overhead_per_cell_s=result["overhead_s"], run_s=result["run_s"])
    assert result["run_s"] > 0
