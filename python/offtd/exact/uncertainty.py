"""Uncertainty for what stays estimated: intervals from disjoint sub-batches, and how a threshold is
judged against a noisy estimate.

A probe splits its K samples into R disjoint sub-batches. For a smooth statistic theta of the samples,
the sub-batch values theta_r vary R times as much as theta of the full batch does, so
`se = std(theta_r, ddof=1) / sqrt(R)` estimates the standard error of the full-batch value, and the
interval `theta +- t_{R-1, (1+level)/2} se` uses Student's t for the R - 1 degrees of freedom of that
standard error. tests/test_calibration.py measures its coverage against exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .special import student_t_ppf

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    estimate: float
    se: float
    lo: float
    hi: float

    def z(self, truth: float) -> float:
        """(estimate - truth) / se; NaN when either is unknown."""
        if not (math.isfinite(truth) and math.isfinite(self.se) and self.se > 0.0):
            return math.nan
        return (self.estimate - truth) / self.se

    def side(self, boundary: float) -> int:
        """+1 if the whole interval is above the boundary, -1 if below, 0 if it straddles it (or is unknown)."""
        if self.lo > boundary:
            return 1
        if self.hi < boundary:
            return -1
        return 0


@lru_cache(maxsize=64)
def t_quantile(dof: int, level: float = LEVEL) -> float:
    return student_t_ppf(0.5 * (1.0 + level), dof)


def jackknife_interval(estimate: float, loo_values: np.ndarray, level: float = LEVEL) -> Interval:
    """The delete-a-group jackknife interval for the full-batch `estimate` from its R leave-one-sub-batch-
    out values theta_(-r): `se = sqrt((R - 1) / R * sum_r (theta_(-r) - mean)^2)`, `estimate -+ t_{R-1} se`.
    Each theta_(-r) uses (R - 1) / R of the data, so a statistic that is nonlinear in the sums (an
    eigenvalue) is judged where it is nearly linear, unlike the values of single sub-batches (MODEL.md
    9.7). NaN-free R >= 2 needed; otherwise the interval is the whole line and the standard error NaN."""
    v = np.asarray(loo_values, dtype=float)
    r = v.size
    if r < 2 or not math.isfinite(estimate) or not np.all(np.isfinite(v)):
        return Interval(estimate, math.nan, -math.inf, math.inf)
    se = math.sqrt((r - 1) / r * float(np.sum((v - v.mean()) ** 2)))
    half = t_quantile(r - 1, level) * se
    return Interval(estimate, se, estimate - half, estimate + half)


def mean_interval(values: np.ndarray, level: float = LEVEL) -> Interval:
    """The interval for the mean of independent values (Student's t)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return Interval(float(v.mean()) if v.size else math.nan, math.nan, -math.inf, math.inf)
    est = float(v.mean())
    se = float(np.std(v, ddof=1)) / math.sqrt(v.size)
    half = t_quantile(v.size - 1, level) * se
    return Interval(est, se, est - half, est + half)
