"""Every `offtd bench` case as a pytest-benchmark, for both backends on the same inputs."""

from __future__ import annotations

import pytest

from offtd.backend import get_backend
from offtd.bench import cases

CASES = {c.name: c for c in cases(quick=True)}


@pytest.mark.parametrize("backend", ["rust", "python"])
@pytest.mark.parametrize("case", list(CASES))
def test_kernel(benchmark, backend, case):
    c = CASES[case]
    benchmark.extra_info.update(unit=c.unit, items=c.items)
    result = benchmark(c.make(get_backend(backend)))
    assert result is not None
