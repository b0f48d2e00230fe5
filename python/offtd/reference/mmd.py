"""Maximum mean discrepancy of the distribution probe (specs/MODEL.md 4.1), pure Python.

``mmd_sigma``: the lower median (order statistic ``ceil(L/2)``, 1-based) of the ``L = 2M(2M-1)/2``
pairwise distances ``sqrt(sum_c (z_i[c]-z_j[c])^2)``, ``i < j``, of the pooled set
``z = [x_0..x_{M-1}, y_0..y_{M-1}]``; 1.0 if that median is 0.

``mmd2``: the paired unbiased U-statistic with ``k(u, v) = exp(-||u-v||^2 / (2 sigma^2))``:
``Sxx/(M(M-1)) + Syy/(M(M-1)) - 2 Sxy/(M(M-1))``, with ``Sxx``, ``Syy``, ``Sxy`` the sums of
``k(x_i, x_j)``, ``k(y_i, y_j)``, ``k(x_i, y_j)`` over ``i != j``, each left to right, i outer, j inner.
The cross sum leaves out ``k(x_i, y_i)``: the probe's ``x_i = (s_i, a^pi_i)`` and ``y_i = (s_i, a_i)``
share the state ``s_i``, so those terms are larger on average than ``k(x_i, y_j)`` and keeping them
(Gretton et al. 2012, eq. 3, which assumes independent sets) biases mmd2 below 0 when pi == mu.
Literal choices: each sum is divided once (``S / (M(M-1))``, not term by term);
``-||u-v||^2 / (2 sigma^2)`` is ``(-sq) / (2.0 * (sigma * sigma))``; the three parts are combined as
``(Sxx/p + Syy/p) - (2.0 * Sxy) / p`` with ``p = float(M*(M-1))``. M < 2 gives NaN (the U-statistic is
undefined); a NaN pairwise distance (NaN input, or two points with the same infinity) makes both
``mmd_sigma`` and ``mmd2`` NaN.
"""

from __future__ import annotations

from .common import NAN, ieee_div, ieee_exp, ieee_sqrt


def sq_dist(u, v) -> float:
    """``sum_c (u[c]-v[c])*(u[c]-v[c])``, left to right from 0.0."""
    total = 0.0
    for uc, vc in zip(u, v):
        diff = uc - vc
        total += diff * diff
    return total


def mmd_sigma(x, y) -> float:
    """Median-heuristic bandwidth of the pooled set (lists of points)."""
    z = list(x) + list(y)
    dists = []
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            dists.append(ieee_sqrt(sq_dist(z[i], z[j])))
    if not dists:
        return 1.0
    if any(dd != dd for dd in dists):  # a NaN distance has no rank: the bandwidth is undefined
        return NAN
    dists.sort()
    med = dists[(len(dists) + 1) // 2 - 1]  # rank ceil(L/2), 1-based
    return 1.0 if med == 0.0 else med


def mmd2(x, y) -> tuple[float, float]:
    """``(mmd2, mmd_sigma)`` for two equally long lists of points ``x`` (from pi) and ``y`` (from mu)."""
    x = [[float(c) for c in p] for p in x]
    y = [[float(c) for c in p] for p in y]
    m = len(x)
    if len(y) != m:
        raise ValueError(f"x and y must have the same number of points ({m} != {len(y)})")
    sigma = mmd_sigma(x, y)
    if m < 2 or sigma != sigma:
        return NAN, sigma
    den = 2.0 * (sigma * sigma)

    def kern(u, v):
        return ieee_exp(ieee_div(-sq_dist(u, v), den))

    sxx = 0.0
    for i in range(m):
        for j in range(m):
            if i != j:
                sxx += kern(x[i], x[j])
    syy = 0.0
    for i in range(m):
        for j in range(m):
            if i != j:
                syy += kern(y[i], y[j])
    sxy = 0.0
    for i in range(m):
        for j in range(m):
            if i != j:  # x_i and y_i share a state: their pair is left out (module docstring)
                sxy += kern(x[i], y[j])
    pairs = float(m * (m - 1))
    return (sxx / pairs + syy / pairs) - (2.0 * sxy) / pairs, sigma
