"""The LQG model in closed form (MODEL.md sections 2-3): problem set-up, features and their kernel form,
the Lyapunov teacher, and the closed-form predictions the Theory section and the oracle tests use.

Shared by both backends: nothing here touches per-transition data except the vectorised q-kernel TD loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .backend import Problem, clip_value
from .spec_schema import Spec


def problem_from_spec(spec: Spec) -> Problem:
    """The kernels' view of a spec."""
    e, p = spec.env, spec.policy
    return Problem(
        a=np.array(e.a, dtype=float),
        b=np.array(e.b, dtype=float),
        q=np.array(e.q, dtype=float),
        r=np.array(e.r, dtype=float),
        sigma_eps=e.sigma_eps,
        sigma_0=e.sigma_0,
        reward_scale=e.reward_scale,
        sigma_pi=p.sigma_pi,
        sigma_mu=p.sigma_mu,
        p_mix=p.p_mix,
        gamma=spec.critic.gamma,
        rho_clip=clip_value(spec.rho.clip, spec.rho.clip_enabled),
        seed=spec.run.seed,
    )


def feature_dim(n: int) -> int:
    return n * (n + 1) // 2 + n + 1


def features(states: np.ndarray) -> np.ndarray:
    """phi(s) for a (..., n) array of states: [s_i s_j (i <= j); s; 1] (MODEL.md 3.2)."""
    s = np.asarray(states, dtype=float)
    n = s.shape[-1]
    iu, ju = np.triu_indices(n)
    quad = s[..., iu] * s[..., ju]
    return np.concatenate([quad, s, np.ones(s.shape[:-1] + (1,))], axis=-1)


def kernel_form(w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(P_w, q_w, c_w) with V_w(s) = s'P_w s + q_w's + c_w; off-diagonal weights split in half."""
    w = np.asarray(w, dtype=float)
    p = np.zeros((n, n))
    k = 0
    for i in range(n):
        for j in range(i, n):
            if i == j:
                p[i, i] = w[k]
            else:
                p[i, j] = p[j, i] = w[k] / 2.0
            k += 1
    return p, w[k : k + n].copy(), float(w[k + n])


def weights_from_kernel(p: np.ndarray, q: np.ndarray, c: float) -> np.ndarray:
    """Inverse of :func:`kernel_form` for a symmetric P."""
    n = p.shape[0]
    quad = [p[i, i] if i == j else 2.0 * p[i, j] for i in range(n) for j in range(i, n)]
    return np.concatenate([np.array(quad, dtype=float), np.asarray(q, dtype=float), [float(c)]])


def kernel_values(w: np.ndarray, states: np.ndarray) -> np.ndarray:
    """V_w at (..., n) states through the kernel form (not through the features)."""
    s = np.asarray(states, dtype=float)
    p, q, c = kernel_form(w, s.shape[-1])
    return np.einsum("...i,ij,...j->...", s, p, s) + s @ q + c


def q_kernel_td_loss(w: np.ndarray, states: np.ndarray, rewards: np.ndarray, gamma: float) -> tuple[float, int]:
    """td_loss_from_Q (MODEL.md 4.5): mean TD error^2 through the kernel form over the leading steps
    where every trajectory's states and rewards are finite. Returns (loss, cache_valid_t)."""
    finite = np.isfinite(states).all(axis=(0, 2))  # (horizon + 1,)
    finite_r = np.isfinite(rewards).all(axis=0)  # (horizon,)
    ok = finite[:-1] & finite[1:] & finite_r
    valid = int(np.argmin(ok)) if not ok.all() else ok.size
    if valid == 0:
        return math.nan, 0
    v = kernel_values(w, states[:, : valid + 1])
    delta = (rewards[:, :valid] + gamma * v[:, 1:]) - v[:, :-1]
    return float(np.mean(delta * delta)), valid


# ---------------------------------------------------------------------------------------------- teacher


@dataclass(frozen=True)
class Teacher:
    """The exact value of a linear-Gaussian policy: V(s) = -c_r (s'Ps + c0)."""

    defined: bool
    p: np.ndarray
    c0: float
    w: np.ndarray  # feature coefficients (NaN when undefined)
    closed_loop_radius: float  # spectral radius of A + B K

    def value(self, states: np.ndarray, reward_scale: float) -> np.ndarray:
        s = np.asarray(states, dtype=float)
        return -reward_scale * (np.einsum("...i,ij,...j->...", s, self.p, s) + self.c0)


def solve_lyapunov(lmat: np.ndarray, qmat: np.ndarray, gamma: float) -> np.ndarray:
    """P = Q + gamma L'PL, solved as (I - gamma L'(x)L') vec(P) = vec(Q)."""
    n = lmat.shape[0]
    lt = lmat.T
    kron = (lt[:, None, :, None] * lt[None, :, None, :]).reshape(n * n, n * n)  # np.kron(L', L'), cheaper
    big = np.eye(n * n) - gamma * kron
    p = np.linalg.solve(big, qmat.reshape(-1)).reshape(n, n)
    return 0.5 * (p + p.T)


def teacher(problem: Problem, k_pi: np.ndarray) -> Teacher:
    """MODEL.md 3.7. Undefined (NaN, never an exception) when sqrt(gamma) rho(A + BK) >= 1, and when the
    value is not representable in double precision: the Lyapunov system is singular to working precision,
    or P, c0 or the weights overflow (`closed_loop_radius` then still says whether it exists in exact
    arithmetic: see :func:`teacher_overflows`)."""
    n, d = problem.n, problem.d

    def undefined(radius: float) -> Teacher:
        return Teacher(False, np.full((n, n), math.nan), math.nan, np.full(d, math.nan), radius)

    with np.errstate(all="ignore"):
        lmat = problem.a + problem.b @ k_pi
        if not np.all(np.isfinite(lmat)):
            return undefined(math.nan)
        try:
            radius = float(np.max(np.abs(np.linalg.eigvals(lmat))))
        except np.linalg.LinAlgError:  # the QR iteration did not converge
            return undefined(math.nan)
        if not math.sqrt(problem.gamma) * radius < 1.0:
            return undefined(radius)
        qk = problem.q + k_pi.T @ problem.r @ k_pi
        try:
            p = solve_lyapunov(lmat, qk, problem.gamma)
        except np.linalg.LinAlgError:  # singular to working precision (entries ~1e160 square to inf)
            return undefined(radius)
        sp2 = problem.sigma_pi**2
        g = problem.gamma
        c0 = float(
            (
                sp2 * np.trace(problem.r)
                + g * (sp2 * np.trace(problem.b.T @ p @ problem.b) + problem.sigma_eps**2 * np.trace(p))
            )
            / (1.0 - g)
        )
        c_r = problem.reward_scale
        w = weights_from_kernel(-c_r * p, np.zeros(n), -c_r * c0)
    if not (np.all(np.isfinite(p)) and math.isfinite(c0) and np.all(np.isfinite(w))):
        return undefined(radius)
    return Teacher(True, p, c0, w, radius)


def teacher_overflows(problem: Problem, tch: Teacher) -> bool:
    """True when `tch` (from :func:`teacher`) exists in exact arithmetic (sqrt(gamma) rho(A + BK) < 1)
    but is not representable in double precision."""
    r = tch.closed_loop_radius
    return not tch.defined and math.isfinite(r) and math.sqrt(problem.gamma) * r < 1.0


def critic_teacher_error(w: np.ndarray, w_teacher: np.ndarray, gram_mean: np.ndarray) -> float:
    """sqrt(e'Ge / w_t'G w_t), e = w - w_teacher (MODEL.md 3.7)."""
    if not np.all(np.isfinite(w_teacher)):
        return math.nan
    e = w - w_teacher
    num = float(e @ gram_mean @ e)
    den = float(w_teacher @ gram_mean @ w_teacher)
    if den <= 0.0:  # a zero teacher (Q = R = 0): 0 if the critic is exact too, else undefined
        return 0.0 if num <= 0.0 else math.nan
    return math.sqrt(max(num, 0.0)) / math.sqrt(den)


# ----------------------------------------------------------------------------------------- closed forms


def kl_gaussian(m: int, sigma_pi: float, sigma_mu: float, mean_sq_diff: float = 0.0) -> float:
    """KL(pi || mu) for isotropic Gaussians; mean_sq_diff = ||mean_pi - mean_mu||^2."""
    return m * (math.log(sigma_mu / sigma_pi) + sigma_pi**2 / (2 * sigma_mu**2) - 0.5) + mean_sq_diff / (
        2 * sigma_mu**2
    )


def gammainc_lower(s: float, x: float) -> float:
    """Regularized lower incomplete gamma P(s, x) (series / continued fraction, Numerical Recipes 6.2)."""
    if x <= 0.0:
        return 0.0
    if math.isinf(x):
        return 1.0
    lg = math.lgamma(s)
    if x < s + 1.0:
        term = total = 1.0 / s
        a = s
        for _ in range(10000):
            a += 1.0
            term *= x / a
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return min(1.0, total * math.exp(-x + s * math.log(x) - lg))
    tiny = 1e-300
    b = x + 1.0 - s
    c = 1.0 / tiny
    dd = 1.0 / b
    h = dd
    for i in range(1, 10000):
        an = -i * (i - s)
        b += 2.0
        dd = an * dd + b
        dd = tiny if abs(dd) < tiny else dd
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        dd = 1.0 / dd
        delta = dd * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return max(0.0, 1.0 - math.exp(-x + s * math.log(x) - lg) * h)


def chi2_cdf(x: float, k: int) -> float:
    return gammainc_lower(k / 2.0, x / 2.0)


def chi2_ppf(p: float, k: int) -> float:
    """Inverse chi^2_k CDF by bisection (to double precision)."""
    if not 0.0 <= p < 1.0:
        return math.inf if p == 1.0 else math.nan
    lo, hi = 0.0, max(1.0, float(k))
    while chi2_cdf(hi, k) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if chi2_cdf(mid, k) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def tv_equal_means(m: int, sigma_pi: float, sigma_mu: float) -> float:
    """Exact TV(pi, mu) for isotropic Gaussians with equal means (MODEL.md 2)."""
    if sigma_pi == sigma_mu:
        return 0.0
    r2 = m * math.log(sigma_pi**2 / sigma_mu**2) / (1.0 / sigma_mu**2 - 1.0 / sigma_pi**2)
    return abs(chi2_cdf(r2 / sigma_mu**2, m) - chi2_cdf(r2 / sigma_pi**2, m))


def e_mu_rho2(m: int, sigma_pi: float, sigma_mu: float) -> float:
    """E_mu[(pi/mu)^2] at equal means; inf when sigma_pi^2 >= 2 sigma_mu^2."""
    if sigma_pi**2 >= 2 * sigma_mu**2:
        return math.inf
    return (sigma_mu**2 / (sigma_pi * math.sqrt(2 * sigma_mu**2 - sigma_pi**2))) ** m


def rho_inf(m: int, sigma_pi: float, sigma_mu: float, p_mix: float) -> float:
    """inf_a pi/b at equal means (attained at the mean when sigma_mu <= sigma_pi)."""
    if sigma_mu <= sigma_pi:
        return 1.0 / ((1.0 - p_mix) * (sigma_pi / sigma_mu) ** m + p_mix)
    return 0.0  # pi's tail is lighter: rho -> 0 far from the mean


def rho_sup(m: int, sigma_pi: float, sigma_mu: float, p_mix: float) -> float:
    """sup_a pi/b at equal means."""
    if sigma_mu >= sigma_pi:
        return 1.0 / ((1.0 - p_mix) * (sigma_pi / sigma_mu) ** m + p_mix)
    return 1.0 / p_mix if p_mix > 0 else math.inf


def rho_quantile(q: float, m: int, sigma_pi: float, sigma_mu: float) -> float:
    """The q-quantile of pi/mu under mu at equal means, for sigma_mu < sigma_pi (c > 0)."""
    c = (1.0 / sigma_mu**2 - 1.0 / sigma_pi**2) / 2.0
    return (sigma_mu / sigma_pi) ** m * math.exp(c * sigma_mu**2 * chi2_ppf(q, m))
