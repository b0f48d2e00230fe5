"""Population moments of the rollout states (specs/MODEL.md 9.2), numpy reference.

The behaviour mixture takes, at every step, pi's gain and noise with probability p_mix and mu's
otherwise, independently of the state: `s' = L_x s + xi_x`, `L_x = A + B K_x`,
`xi_x ~ N(0, S_x)`, `S_x = sigma_x^2 B B^T + sigma_eps^2 I`. From `s_0 ~ N(0, sigma_0^2 I)` every odd
moment is zero, and the second and fourth moments follow the exact recursion

    M2' = sum_x p_x (L_x M2 L_x^T + S_x)
    M4' = sum_x p_x (L_x^{(x)4} M4 + sym6(L_x M2 L_x^T, S_x) + Isserlis(S_x))

(THEORY.md section 2). The kernel returns their averages over h = 0 .. horizon-1: the moments of a state
drawn uniformly from the rollout's state pool. Written as tensor contractions so that the formulas read
as in the text; the Rust core implements the same recursion with loops, equal to rounding.
"""

from __future__ import annotations

import numpy as np

from ..backend import Problem


def isserlis(s: np.ndarray) -> np.ndarray:
    """E[x_i x_j x_k x_l] for x ~ N(0, s): s_ij s_kl + s_ik s_jl + s_il s_jk."""
    return np.einsum("ij,kl->ijkl", s, s) + np.einsum("ik,jl->ijkl", s, s) + np.einsum("il,jk->ijkl", s, s)


def cross6(u: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The six ways of placing the pair covariance u on two of four indices and s on the other two."""
    return (
        np.einsum("ij,kl->ijkl", u, s)
        + np.einsum("ik,jl->ijkl", u, s)
        + np.einsum("il,jk->ijkl", u, s)
        + np.einsum("jk,il->ijkl", u, s)
        + np.einsum("jl,ik->ijkl", u, s)
        + np.einsum("kl,ij->ijkl", u, s)
    )


def mixture_components(
    a: np.ndarray,
    b: np.ndarray,
    k_pi: np.ndarray,
    k_mu: np.ndarray,
    sigma_pi: float,
    sigma_mu: float,
    sigma_eps: float,
    p_mix: float,
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """[(p_x, L_x, S_x)] for x = pi, mu, leaving out a component of weight 0."""
    n = a.shape[0]
    out = []
    for weight, k, sigma in ((p_mix, k_pi, sigma_pi), (1.0 - p_mix, k_mu, sigma_mu)):
        if weight > 0.0:
            lmat = a + b @ k
            smat = sigma * sigma * (b @ b.T) + sigma_eps * sigma_eps * np.eye(n)
            out.append((weight, lmat, smat))
    return out


def state_moments(problem: Problem, k_pi: np.ndarray, k_mu: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean_h M2_h, mean_h M4_h) over h = 0 .. horizon-1, shapes (n, n) and (n, n, n, n); of the problem,
    its dynamics a, b, the noise levels and p_mix enter."""
    a, b = np.asarray(problem.a, dtype=float), np.asarray(problem.b, dtype=float)
    sigma_pi, sigma_mu, sigma_eps = float(problem.sigma_pi), float(problem.sigma_mu), float(problem.sigma_eps)
    sigma_0, p_mix = float(problem.sigma_0), float(problem.p_mix)
    n = a.shape[0]
    eye = np.eye(n)
    m2 = sigma_0**2 * eye
    m4 = sigma_0**4 * isserlis(eye)
    comps = mixture_components(a, b, k_pi, k_mu, sigma_pi, sigma_mu, sigma_eps, p_mix)
    acc2 = np.zeros((n, n))
    acc4 = np.zeros((n, n, n, n))
    for _ in range(horizon):
        acc2 += m2
        acc4 += m4
        new2 = np.zeros((n, n))
        new4 = np.zeros((n, n, n, n))
        for weight, lmat, smat in comps:
            s2 = lmat @ m2 @ lmat.T
            y = np.einsum("ia,jb,kc,ld,abcd->ijkl", lmat, lmat, lmat, lmat, m4, optimize=True)
            new2 += weight * (s2 + smat)
            new4 += weight * (y + cross6(s2, smat) + isserlis(smat))
        m2, m4 = new2, new4
    return acc2 / horizon, acc4 / horizon
