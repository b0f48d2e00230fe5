"""Rho statistics (specs/MODEL.md section 5), pure Python.

One kernel for every probe: non-finite ratios are counted and excluded; the statistics are over the
``n`` finite ratios (in their original order, so the block sums of 0.2 run over that filtered
sequence); all NaN when ``n = 0``.
"""

from __future__ import annotations

import math

from ..backend import RhoStats
from .common import NAN, block_sum, ieee_div, ieee_exp, ieee_log, ieee_log1p, is_finite, plain_sum

EPS = 2.220446049250313e-16  # DBL_EPSILON = numpy.finfo(float).eps
PRIOR_BS = 3.0  # Zhang-Stephens prior scale for b (arviz prior_bs)
PRIOR_K = 10  # PSIS weak prior on k: (T' k + 10 * 0.5) / (T' + 10)
MIN_TAIL = 5


def quantile_type1(sorted_x: list[float], p: float) -> float:
    """Hyndman-Fan type 1: the order statistic of 1-based rank ``max(1, ceil(p*n))``, ``p*n`` a double
    product. ``sorted_x`` ascending and non-empty."""
    n = len(sorted_x)
    rank = max(1, math.ceil(p * n))
    return sorted_x[rank - 1]


def gpd_fit_k(x: list[float]) -> float:
    """Zhang & Stephens (2009) generalized-Pareto shape with PSIS's weak prior (MODEL.md section 5).

    ``x`` ascending, positive, ``len(x) >= 5``. Mirrors arviz's ``_gpdfit`` (the version whose weights
    are ``1 / sum_l exp(L_l - L_j)``). The means over tail points are block sums (0.2: the tail points
    are ratio samples); plain sums elsewhere.
    """
    t = len(x)
    tf = float(t)
    mc = 30 + math.floor(math.sqrt(t))
    xq = x[math.floor(t / 4 + 0.5) - 1]  # x_{floor(T'/4 + 0.5)}, 1-based
    inv_last = 1.0 / x[-1]
    bs = []
    ls = []
    for j in range(1, mc + 1):
        b = (1.0 - math.sqrt(mc / (j - 0.5))) / (PRIOR_BS * xq) + inv_last
        k = block_sum([ieee_log1p(-b * xi) for xi in x]) / tf
        ell = tf * ((ieee_log(ieee_div(-b, k)) - k) - 1.0)
        bs.append(b)
        ls.append(ell)
    wts = []
    for ell_j in ls:
        denom = plain_sum([ieee_exp(ell_l - ell_j) for ell_l in ls])
        wts.append(ieee_div(1.0, denom))
    cutoff = 10.0 * EPS
    kept = [(b, wt) for b, wt in zip(bs, wts) if not (wt < cutoff)]
    total = plain_sum([wt for _, wt in kept])
    b_star = plain_sum([b * ieee_div(wt, total) for b, wt in kept])
    k_star = block_sum([ieee_log1p(-b_star * xi) for xi in x]) / tf
    return (tf * k_star + PRIOR_K * 0.5) / float(t + PRIOR_K)


def pareto_khat(finite: list[float]) -> float:
    """PSIS k_hat of the (finite) ratios; NaN when there is no fit (MODEL.md section 5)."""
    n = len(finite)
    if n == 0:
        return NAN
    t = math.ceil(min(0.2 * n, 3.0 * math.sqrt(n)))
    if n <= t:
        return NAN
    y = sorted(finite)
    u = y[n - t - 1]
    tail = [yi - u for yi in y[n - t :] if yi > u]  # ascending, since y is
    if len(tail) < MIN_TAIL:
        return NAN
    return gpd_fit_k(tail)


def rho_stats(rho, clip: float, clip_enabled: bool) -> RhoStats:
    """MODEL.md section 5. ``rho`` a sequence of floats; ``clip`` the threshold as configured.

    ``rho_clip`` reports ``clip`` as given and ``rho_clip_frac`` is the fraction of finite ratios
    ``> clip`` whether or not clipping is enabled (MODEL.md defines both without reference to
    ``clip_enabled``); callers that want 0 when disabled pass ``clip = inf``.
    """
    rho = [float(x) for x in rho]
    finite = [x for x in rho if is_finite(x)]
    n = len(finite)
    nonfinite = len(rho) - n
    clip = float(clip)
    active = 1 if clip_enabled else 0
    if n == 0:
        return RhoStats(
            n=0,
            nonfinite=nonfinite,
            mean=NAN,
            rho2_mean=NAN,
            min=NAN,
            max=NAN,
            p95=NAN,
            p99=NAN,
            clip=clip,
            clip_active=active,
            clip_frac=NAN,
            ess_frac=NAN,
            khat=NAN,
        )
    nf = float(n)
    s1 = block_sum(finite)
    s2 = block_sum([x * x for x in finite])
    lo = finite[0]
    hi = finite[0]
    above = 0
    for x in finite:
        if x < lo:
            lo = x
        if x > hi:
            hi = x
        if x > clip:
            above += 1
    srt = sorted(finite)
    return RhoStats(
        n=n,
        nonfinite=nonfinite,
        mean=s1 / nf,
        rho2_mean=s2 / nf,
        min=lo,
        max=hi,
        p95=quantile_type1(srt, 0.95),
        p99=quantile_type1(srt, 0.99),
        clip=clip,
        clip_active=active,
        clip_frac=above / nf,
        ess_frac=ieee_div(s1 * s1, nf * s2),
        khat=pareto_khat(finite),
    )
