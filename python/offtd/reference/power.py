"""Power iteration (specs/MODEL.md section 6), pure Python.

``v = v0 / ||v0||``; repeat ``iters`` times: ``x = M v``, ``lam = ||x||``, stop with 0 if ``lam == 0``,
``v = x / lam``; the estimate is the last ``lam``. Each element is divided by the norm (not multiplied
by its reciprocal); ``(M v)_i`` and norms are left-to-right sums from 0.0.
"""

from __future__ import annotations

from .common import NAN, ieee_div, matvec, norm2


def power_iteration(m, v0, iters: int) -> float:
    """The power-iteration estimate of M's spectral radius (``m`` a list of rows, ``v0`` a list).

    ``iters = 0`` returns NaN (there is no "last lam"); ``v0 = 0`` gives NaN (0/0)."""
    nv = norm2(v0)
    v = [ieee_div(x, nv) for x in v0]
    lam = NAN
    for _ in range(iters):
        x = matvec(m, v)
        lam = norm2(x)
        if lam == 0.0:
            return 0.0
        v = [ieee_div(xi, lam) for xi in x]
    return lam
