"""The theory table (python/offtd/exact/grid.py): one row per grid cell, and its default backend.

The row's values are checked in tests/test_exact_units.py and tests/test_critics.py; here the table's own
plumbing: the Cartesian product of the grid, the cell's overrides in its row, and that the table runs
without a backend argument, on the compiled core."""

from __future__ import annotations

import math

from offtd.backend import get_backend
from offtd.exact.grid import theory_row, theory_table
from offtd.spec import load_spec


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a.values(), b.values())
    )


def test_theory_table_cells_and_default_backend():
    base = load_spec(None, {})
    default = theory_table(base)
    assert len(default) == 1 and default[0]["cell"] == 0
    assert _same(default[0], {"cell": 0, **theory_row(base, get_backend("rust"))})
    rows = theory_table(base, {"policy.p_mix": [0.1, 0.3], "critic.gamma": [0.5]}, backend="python")
    assert [(r["cell"], r["policy.p_mix"], r["critic.gamma"]) for r in rows] == [(0, 0.1, 0.5), (1, 0.3, 0.5)]
    for r in rows:
        spec = load_spec(None, {"policy.p_mix": r["policy.p_mix"], "critic.gamma": 0.5})
        assert _same(r, {"cell": r["cell"], "policy.p_mix": r["policy.p_mix"], "critic.gamma": 0.5, **theory_row(spec, get_backend("python"))})
