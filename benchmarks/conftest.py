"""Benchmarks (pytest-benchmark), outside the default test run:

    python -m pytest benchmarks --benchmark-only
    python -m pytest benchmarks --benchmark-only --benchmark-group-by=param:case   # rust vs python side by side
"""
