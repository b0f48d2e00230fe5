"""The one-step operators of the LQG model in feature coordinates (THEORY.md section 1).

With `phi(s) = [s_i s_j (i <= j); s; 1]` and one step under a linear-Gaussian policy,
`s' = L s + xi`, `L = A + B K`, `xi ~ N(0, S)`, `S = sigma^2 B B^T + sigma_eps^2 I`:

- `E[phi(s') | s] = T phi(s)` for a fixed d x d matrix T;
- `E[r | s] = c . phi(s)` with `r = -c_r (s^T Q s + a^T R a)`.

Both are exact: the features hold every monomial of degree <= 2, and a Gaussian step maps degree-2
polynomials to degree-2 polynomials.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..backend import Problem


@lru_cache(maxsize=32)
def feature_index(n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(iu, ju, q): the (i, j), i <= j, of the quadratic features in MODEL.md's order, and their count."""
    iu, ju = np.triu_indices(n)
    iu.setflags(write=False)
    ju.setflags(write=False)
    return iu, ju, len(iu)


def step_noise(problem: Problem, sigma: float) -> np.ndarray:
    """S = sigma^2 B B^T + sigma_eps^2 I: the covariance of s' given s under a policy with noise sigma."""
    b = problem.b
    return sigma * sigma * (b @ b.T) + problem.sigma_eps * problem.sigma_eps * np.eye(problem.n)


def transition_operator(problem: Problem, k: np.ndarray, sigma: float) -> np.ndarray:
    """T with `E[phi(s') | s] = T phi(s)` for the policy N(K s, sigma^2 I) (THEORY.md 1)."""
    n, d = problem.n, problem.d
    iu, ju, q = feature_index(n)
    lmat = problem.a + problem.b @ k
    smat = step_noise(problem, sigma)
    t = np.zeros((d, d))
    # (L s)_i (L s)_j = sum_{k,l} L_ik L_jl s_k s_l; the feature s_k s_l (k < l) collects both orders.
    li_k, lj_l = lmat[iu][:, iu], lmat[ju][:, ju]
    li_l, lj_k = lmat[iu][:, ju], lmat[ju][:, iu]
    half_on_diag = np.where(iu == ju, 0.5, 1.0)
    t[:q, :q] = (li_k * lj_l + li_l * lj_k) * half_on_diag[None, :]
    t[:q, d - 1] = smat[iu, ju]
    t[q : q + n, q : q + n] = lmat
    t[d - 1, d - 1] = 1.0
    return t


def quadratic_coeffs(mat: np.ndarray) -> np.ndarray:
    """Feature coefficients of s^T M s for a symmetric M: M_ii on s_i^2, 2 M_ij on s_i s_j (i < j)."""
    iu, ju, _ = feature_index(mat.shape[0])
    return np.where(iu == ju, 1.0, 2.0) * mat[iu, ju]


def reward_coeffs(problem: Problem, k: np.ndarray, sigma: float) -> np.ndarray:
    """c with `E[r | s] = c . phi(s)` under N(K s, sigma^2 I): -c_r (s^T (Q + K^T R K) s + sigma^2 tr R)."""
    n, d = problem.n, problem.d
    qk = problem.q + k.T @ problem.r @ k
    c = np.zeros(d)
    _, _, q = feature_index(n)
    c[:q] = quadratic_coeffs(0.5 * (qk + qk.T))
    c[d - 1] = sigma * sigma * float(np.trace(problem.r))
    return -problem.reward_scale * c
