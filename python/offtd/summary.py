"""Summary statistics of a metric series and the report's number format (MODEL.md section 8)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SUMMARY_COLUMNS = ("last", "min", "max", "mean_last_k", "slope_last_k")


def mean_last_k(values: Sequence[float] | np.ndarray, k: int) -> float:
    v = np.asarray(values, dtype=float)[-k:]
    return float(np.mean(v)) if v.size else math.nan


def slope_last_k(iters: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, k: int) -> float:
    """Least-squares slope per iteration over the last k entries (0 for a single entry)."""
    x = np.asarray(iters, dtype=float)[-k:]
    y = np.asarray(values, dtype=float)[-k:]
    if y.size == 0:
        return math.nan
    if y.size == 1:
        return 0.0
    xc = x - x.mean()
    den = float(xc @ xc)
    return float(xc @ (y - y.mean())) / den if den > 0 else 0.0


def summarize(iters: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, k: int) -> dict[str, float]:
    """{last, min, max, mean_last_k, slope_last_k}; min and max over finite entries."""
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    with np.errstate(all="ignore"):  # inf - inf in a diverged series is nan, as it should read
        return _summary(iters, v, finite, k)


def _summary(iters, v: np.ndarray, finite: np.ndarray, k: int) -> dict[str, float]:
    return {
        "last": float(v[-1]) if v.size else math.nan,
        "min": float(finite.min()) if finite.size else math.nan,
        "max": float(finite.max()) if finite.size else math.nan,
        "mean_last_k": mean_last_k(v, k),
        "slope_last_k": slope_last_k(iters, v, k),
    }


def fmt(x: float | int | None) -> str:
    """4 significant digits; integers as integers; nan/inf spelled out; None as '-'."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.4g}"
