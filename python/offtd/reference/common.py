"""Shared pure-Python kernels of the reference backend (specs/MODEL.md sections 0, 2 and 3.2).

Everything here works on Python floats and lists, in exactly the operation order MODEL.md writes.
Python raises where IEEE-754 arithmetic would return inf/NaN (division by zero, ``math.exp`` overflow,
``math.log(0)``); the ``ieee_*`` helpers restore the IEEE results so the reference agrees with the Rust
core on degenerate inputs too (a diverging run must produce inf/NaN, never a Python exception).
"""

from __future__ import annotations

import math

BLOCK = 1024  # MODEL.md 0.2

NAN = math.nan
INF = math.inf


# ---------------------------------------------------------------------------------------------------
# IEEE-754 semantics for the few operations where Python raises instead.


def ieee_div(a: float, b: float) -> float:
    """``a / b`` with IEEE-754 semantics (x/0 = +-inf, 0/0 = NaN)."""
    try:
        return a / b
    except ZeroDivisionError:
        if a != a or a == 0.0:
            return NAN
        return math.copysign(INF, math.copysign(1.0, a) * math.copysign(1.0, b))


def ieee_exp(x: float) -> float:
    """C ``exp``: +inf on overflow instead of OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def ieee_log(x: float) -> float:
    """C ``log``: log(0) = -inf, log(x < 0) = NaN."""
    if x > 0.0:
        return math.log(x)  # also handles +inf
    if x == 0.0:
        return -INF
    return NAN  # negative or NaN


def ieee_log1p(x: float) -> float:
    """C ``log1p``: log1p(-1) = -inf, log1p(x < -1) = NaN."""
    if x > -1.0:
        return math.log1p(x)
    if x == -1.0:
        return -INF
    return NAN


def ieee_sqrt(x: float) -> float:
    """C ``sqrt``: NaN for negative input (sqrt(-0.0) = -0.0 as in C)."""
    if x >= 0.0 or x != x:
        return math.sqrt(x)
    return NAN


def is_finite(x: float) -> bool:
    return x - x == 0.0  # False for inf and NaN


# ---------------------------------------------------------------------------------------------------
# Sums and small linear algebra (MODEL.md 0.1 / 0.2).


def plain_sum(xs) -> float:
    """Left-to-right sum from 0.0 (MODEL.md: "sum")."""
    total = 0.0
    for x in xs:
        total += x
    return total


def block_sum(xs) -> float:
    """MODEL.md 0.2 block rule over samples: each run of BLOCK consecutive samples is summed left to
    right from 0.0, then the block sums are added left to right from 0.0."""
    xs = list(xs)
    total = 0.0
    for start in range(0, len(xs), BLOCK):
        part = 0.0
        for x in xs[start : start + BLOCK]:
            part += x
        total += part
    return total


def dot(x, y) -> float:
    """``x . y`` = sum over i of ``x[i] * y[i]``, left to right from 0.0."""
    total = 0.0
    for xi, yi in zip(x, y):
        total += xi * yi
    return total


def matvec(k, s) -> list[float]:
    """``(K s)[i]`` = sum over j of ``K[i][j] * s[j]`` (K a list of rows)."""
    return [dot(row, s) for row in k]


def norm2(x) -> float:
    """``sqrt(sum x_i * x_i)``, the sum left to right from 0.0."""
    return ieee_sqrt(dot(x, x))


def feature_dim(n: int) -> int:
    """``d = n(n+1)/2 + n + 1``."""
    return n * (n + 1) // 2 + n + 1


def phi(s) -> list[float]:
    """Features (MODEL.md 3.2): ``[s[i]*s[j] for i <= j (i outer, j inner); s_0 .. s_{n-1}; 1]``."""
    n = len(s)
    out = []
    for i in range(n):
        si = s[i]
        for j in range(i, n):
            out.append(si * s[j])
    out.extend(s)
    out.append(1.0)
    return out


# ---------------------------------------------------------------------------------------------------
# Environment and policies (MODEL.md section 2).


def quad_form(x, q) -> float:
    """``sum_i sum_j (x[i]*Q[i][j])*x[j]``: one running sum from 0.0, i outer, j inner."""
    total = 0.0
    for i, xi in enumerate(x):
        row = q[i]
        for j, xj in enumerate(x):
            total += (xi * row[j]) * xj
    return total


def reward(s, a, q, r, reward_scale: float) -> float:
    """``r = -c_r * (sQs + aRa)``."""
    return -reward_scale * (quad_form(s, q) + quad_form(a, r))


def env_step(s, a, a_mat, b_mat, sigma_eps: float, z) -> list[float]:
    """``s'_i = (x_i + y_i) + sigma_eps*z_i`` with ``x = A s``, ``y = B a`` (each a left-to-right sum)."""
    out = []
    for i in range(len(a_mat)):
        x_i = dot(a_mat[i], s)
        y_i = dot(b_mat[i], a)
        out.append((x_i + y_i) + sigma_eps * z[i])
    return out


def log_density(a, mean, sigma: float) -> tuple[float, list[float]]:
    """``(l, d)`` with ``d = a - mean``, ``q = sum_k d[k]*d[k]``,
    ``l = -0.5*q/(sigma*sigma) - m*log(sigma)`` (the ``-(m/2) log 2 pi`` constant omitted)."""
    diff = [ak - mk for ak, mk in zip(a, mean)]
    q = dot(diff, diff)
    m = len(diff)
    return ieee_div(-0.5 * q, sigma * sigma) - m * ieee_log(sigma), diff


def lpi_lmu(a, s, k_pi, k_mu, sigma_pi: float, sigma_mu: float):
    """``(lpi, lmu, dpi)`` for action ``a`` at state ``s`` (MODEL.md section 2)."""
    lpi, dpi = log_density(a, matvec(k_pi, s), sigma_pi)
    lmu, _ = log_density(a, matvec(k_mu, s), sigma_mu)
    return lpi, lmu, dpi


def log_ratio_from_logs(lpi: float, lmu: float, p_mix: float) -> float:
    """``lr = log(pi / b)`` with ``b = (1 - p) mu + p pi`` (MODEL.md section 2, all three branches)."""
    if p_mix == 0.0:
        return lpi - lmu
    if p_mix == 1.0:
        return 0.0
    x = lmu + ieee_log1p(-p_mix)
    y = lpi + ieee_log(p_mix)
    # M = max(x, y). A NaN in x or y makes lb NaN whichever of the two M picks.
    big = y if y > x else x
    lb = big + ieee_log(ieee_exp(x - big) + ieee_exp(y - big))
    return lpi - lb


def ratio_from_logs(lpi: float, lmu: float, p_mix: float) -> float:
    """``rho = exp(lr)``."""
    return ieee_exp(log_ratio_from_logs(lpi, lmu, p_mix))


def log_ratio(a, s, k_pi, k_mu, sigma_pi: float, sigma_mu: float, p_mix: float) -> float:
    """``log(pi(a|s) / b(a|s))`` for one action (MODEL.md section 2). ``a``, ``s`` are sequences;
    ``k_pi``, ``k_mu`` are (m, n) matrices (lists of rows or numpy arrays)."""
    a = [float(x) for x in a]
    s = [float(x) for x in s]
    k_pi = [[float(x) for x in row] for row in k_pi]
    k_mu = [[float(x) for x in row] for row in k_mu]
    lpi, lmu, _ = lpi_lmu(a, s, k_pi, k_mu, float(sigma_pi), float(sigma_mu))
    return log_ratio_from_logs(lpi, lmu, float(p_mix))


def clip_ratio(rho: float, clip: float) -> float:
    """``rho_bar = min(rho, clip)`` (clip = +inf when clipping is disabled).

    NaN-propagating: a NaN ratio stays NaN (``min`` is written as ``clip if rho > clip else rho``;
    MODEL.md does not say what min does with NaN, and hiding a NaN behind the clip would mask a
    diverged run)."""
    return clip if rho > clip else rho


def choose_action(u: float, z, mean_pi, mean_mu, sigma_pi: float, sigma_mu: float, p_mix: float):
    """``a = K_pi s + sigma_pi z`` if ``u < p``, else ``a = K_mu s + sigma_mu z``."""
    if u < p_mix:
        return [mk + sigma_pi * zk for mk, zk in zip(mean_pi, z)]
    return [mk + sigma_mu * zk for mk, zk in zip(mean_mu, z)]


def mixture_step(s, u, z_a, z_e, env: dict, k_pi, k_mu):
    """One transition of MODEL.md section 2 from state ``s`` (mixture uniform ``u``, action normals
    ``z_a``, environment normals ``z_e``): returns ``(dpi, rho, rho_bar, r, s_next)``. ``env`` holds
    a_mat, b_mat, q_mat, r_mat, sigma_eps, reward_scale, sigma_pi, sigma_mu, p_mix and rho_clip."""
    sigma_pi, sigma_mu, p_mix = env["sigma_pi"], env["sigma_mu"], env["p_mix"]
    a = choose_action(u, z_a, matvec(k_pi, s), matvec(k_mu, s), sigma_pi, sigma_mu, p_mix)
    lpi, lmu, dpi = lpi_lmu(a, s, k_pi, k_mu, sigma_pi, sigma_mu)
    rho = ratio_from_logs(lpi, lmu, p_mix)
    r = reward(s, a, env["q_mat"], env["r_mat"], env["reward_scale"])
    s_next = env_step(s, a, env["a_mat"], env["b_mat"], env["sigma_eps"], z_e)
    return dpi, rho, clip_ratio(rho, env["rho_clip"]), r, s_next


def pick(u: float, count: int) -> int:
    """State-pool pick (MODEL.md section 4): ``idx = min(floor(u * N), N - 1)``, ``u * N`` a double
    product."""
    return min(math.floor(u * count), count - 1)


def to_matrix(x) -> list[list[float]]:
    """numpy array / nested sequence -> list of rows of Python floats."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [[float(v) for v in row] for row in x]


def to_vector(x) -> list[float]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [float(v) for v in x]
