"""The exact expected emphatic TD(0) update (specs/MODEL.md 9.9).

With interest 1 the follow-on trace is F_0 = 1, F_{h+1} = 1 + gamma rho_h F_h along a trajectory. F_h
depends only on the past, and E_b[rho_h g(s_{h+1}) | s_h] = E_pi[g(s_{h+1}) | s_h] for every g (the
ratio is unclipped), so the trace-weighted state measure nu_h(g) = E[F_h g(s_h)] obeys

    nu_0 = mu_0,        nu_{h+1} = mu_{h+1} + gamma P_pi nu_h,

with mu_h the behaviour mixture's marginal and P_pi the push-forward of a (non-normalised) measure through
pi's step s' = L_pi s + xi, xi ~ N(0, S_pi): mass m' = m, M2' = L M2 L^T + m S,
M4' = L^(x)4 M4 + sym6(L M2 L^T, S) + m Isserlis(S). Then, with G_F = mean_h nu_h(phi phi^T),

    E[A_e] / N = G_F (I - gamma T_pi)^T,        E[b_e] / N = G_F c_pi.

With clipping the weight rho_bar does not average out of the fourth moments that G_F needs (the
equivalent policy of 9.4 matches degree-2 moments of the action only): no closed form, "not available".
Cost O(horizon n^5) (numpy einsum), like the state moments.
"""

from __future__ import annotations

import numpy as np

from ..backend import Problem, StateMoments
from ..reference.moments import cross6, isserlis, mixture_components
from .gram import gram_from_moments


def emphatic_gram(problem: Problem, k_pi: np.ndarray, k_mu: np.ndarray, horizon: int) -> np.ndarray:
    """G_F = mean over h < horizon of E[F_h phi(s_h) phi(s_h)^T] under the behaviour mixture."""
    n = problem.n
    a, b = problem.a, problem.b
    eye = np.eye(n)
    sig0 = float(problem.sigma_0)
    m2, m4 = sig0**2 * eye, sig0**4 * isserlis(eye)
    mass, n2, n4 = 1.0, m2.copy(), m4.copy()
    comps = mixture_components(a, b, k_pi, k_mu, float(problem.sigma_pi), float(problem.sigma_mu),
                               float(problem.sigma_eps), float(problem.p_mix))  # fmt: skip
    l_pi = a + b @ k_pi
    s_pi = float(problem.sigma_pi) ** 2 * (b @ b.T) + float(problem.sigma_eps) ** 2 * eye
    gamma = float(problem.gamma)
    acc_m, acc2, acc4 = 0.0, np.zeros((n, n)), np.zeros((n, n, n, n))

    def push(lmat, smat, w0, x2, x4):
        y2 = lmat @ x2 @ lmat.T
        y4 = np.einsum("ia,jb,kc,ld,abcd->ijkl", lmat, lmat, lmat, lmat, x4, optimize=True)
        return y2 + w0 * smat, y4 + cross6(y2, smat) + w0 * isserlis(smat)

    for _ in range(horizon):
        acc_m += mass
        acc2 += n2
        acc4 += n4
        new2, new4 = np.zeros((n, n)), np.zeros((n, n, n, n))
        for weight, lmat, smat in comps:
            y2, y4 = push(lmat, smat, 1.0, m2, m4)
            new2 += weight * y2
            new4 += weight * y4
        p2, p4 = push(l_pi, s_pi, mass, n2, n4)
        m2, m4 = new2, new4
        mass, n2, n4 = 1.0 + gamma * mass, m2 + gamma * p2, m4 + gamma * p4
    g = gram_from_moments(StateMoments(m2=acc2 / horizon, m4=acc4 / horizon))
    g[-1, -1] = acc_m / horizon  # the trace's mean, not 1: the measure is not normalised
    return g
