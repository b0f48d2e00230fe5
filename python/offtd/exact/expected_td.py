"""The exact expected TD(0) update of one iteration (THEORY.md sections 1-3, specs/MODEL.md 9).

Conditional on a state s, `E_b[rho_bar f(a) | s]` for the polynomials f of degree <= 2 that TD needs is
`kappa0 E_{pi_eff}[f(a) | s]`, where pi_eff is pi itself without clipping (kappa0 = 1), and with clipping
and equal means the Gaussian policy with noise sigma_eff = sqrt(kappa2 / kappa0) (ratios.py). So

    E[A_hat | states] = kappa0 G (I - gamma T)^T,     E[b_hat | states] = kappa0 G c,

with T and c the one-step operators of pi_eff (operator.py) and G = mean over the states of
phi phi^T. G is the rollout's own Gram matrix for the iteration's states ("pool"), or the exact
population value from the state moments ("population", gram.py). The fixed point solves
`(I - gamma T)^T w = c` whatever G is: w_teacher without clipping, the value of pi_eff with it.

With clipping and unequal means the clipped weight depends on the state through (K_pi - K_mu) s and no
closed form exists: the quantities are "not available" and the verdicts fall back to estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import Backend, Problem, StateMoments
from .gram import gram_from_moments
from .operator import reward_coeffs, transition_operator
from .ratios import RatioMoments, means_equal, ratio_moments

EPS = float(np.finfo(float).eps)


@dataclass(frozen=True)
class TDOperator:
    """What maps a state distribution (its G) to the expected TD(0) update: A = kappa0 G (I - gamma T)^T,
    b = kappa0 G c. `available` is False when no closed form exists (`note` says why)."""

    available: bool
    note: str
    kappa0: float
    t: np.ndarray
    c: np.ndarray
    gamma: float
    sigma_eff: float

    def a(self, gram: np.ndarray) -> np.ndarray:
        return self.kappa0 * (gram @ (np.eye(self.t.shape[0]) - self.gamma * self.t).T)

    def b(self, gram: np.ndarray) -> np.ndarray:
        return self.kappa0 * (gram @ self.c)

    def fixed_point(self) -> np.ndarray:
        """The TD fixed point, independent of G: (I - gamma T)^T w = c (NaN when singular)."""
        d = self.t.shape[0]
        try:
            return np.linalg.solve(np.eye(d) - self.gamma * self.t.T, self.c)
        except np.linalg.LinAlgError:
            return np.full(d, math.nan)


@dataclass(frozen=True)
class EigSummary:
    """What the eigenvalues of A say about the critic's expected map M = I - alpha_w A."""

    eig: np.ndarray  # eigenvalues of A
    radius: float  # spectral radius of I - alpha_w A
    min_re: float  # min Re eig(A); < 0: no step size is stable
    alpha_crit: float  # sup of the stable step sizes: min over Re > 0 of 2 Re / |lambda|^2; 0 if min_re <= 0
    tol: float  # rounding tolerance of radius and min_re: 1e3 eps (1 + alpha_w ||A||_F)


NAN_EIG = EigSummary(np.array([]), math.nan, math.nan, math.nan, math.nan)


def eig_summary(a: np.ndarray, alpha_w: float) -> EigSummary:
    """Eigenvalue summary of A (LAPACK through numpy); NaN when A is not finite."""
    if a.size == 0 or not np.all(np.isfinite(a)):
        return NAN_EIG
    lam = np.linalg.eigvals(a)
    min_re = float(np.min(lam.real))
    radius = float(np.max(np.abs(1.0 - alpha_w * lam)))
    pos = lam[lam.real > 0.0]
    alpha_crit = float(np.min(2.0 * pos.real / (pos.real**2 + pos.imag**2))) if min_re > 0.0 else 0.0
    tol = 1e3 * EPS * (1.0 + alpha_w * float(np.linalg.norm(a)))
    return EigSummary(lam, radius, min_re, alpha_crit, tol)


def fastest_step(lam: np.ndarray) -> tuple[float, float]:
    """(alpha, radius): the step size that minimises the spectral radius max_i |1 - alpha lambda_i| of the
    expected map I - alpha A with eigenvalues `lam` (all with Re > 0), and that radius. Each
    |1 - alpha lambda_i|^2 = 1 - 2 alpha Re_i + alpha^2 |lambda_i|^2 is a convex parabola in alpha, so the
    minimum of their maximum lies at one parabola's vertex (Re_i / |lambda_i|^2) or where two cross
    (2 (Re_i - Re_j) / (|lambda_i|^2 - |lambda_j|^2)): the candidates are evaluated and the best kept.
    (NaN, NaN) when an eigenvalue has Re <= 0 or one is not finite."""
    lam = np.asarray(lam, dtype=complex)
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.min(lam.real) <= 0.0:
        return math.nan, math.nan
    re, sq = lam.real, np.abs(lam) ** 2
    i, j = np.triu_indices(lam.size, 1)
    apart = sq[i] != sq[j]
    i, j = i[apart], j[apart]
    cands = np.concatenate([re / sq, 2.0 * (re[i] - re[j]) / (sq[i] - sq[j])])
    cands = cands[(cands > 0.0) & np.isfinite(cands)]
    if cands.size == 0:
        return math.nan, math.nan
    # the radius at every candidate, in chunks (d = 2 x 153 eigenvalues give ~47k candidates)
    radii = np.concatenate([np.max(np.abs(1.0 - c[:, None] * lam[None, :]), axis=1) for c in np.array_split(cands, max(1, cands.size // 2048))])
    k = int(np.argmin(radii))  # the first of equal radii, as a scan in candidate order keeps
    return float(cands[k]), float(radii[k])


def td_operator(
    problem: Problem, k_pi: np.ndarray, k_mu: np.ndarray, m2: np.ndarray, clip_enabled: bool
) -> tuple[TDOperator, RatioMoments | None]:
    """The TD(0) operator of this iteration's policies, and the exact ratio moments when the means are
    equal (else None). `m2` is the states' second moment, used only to judge whether the means are equal."""
    m = problem.m
    clip = problem.rho_clip if clip_enabled else math.inf
    equal = means_equal(k_pi, k_mu, m2, problem.sigma_pi, problem.sigma_mu)
    rm = ratio_moments(m, float(problem.sigma_pi), float(problem.sigma_mu), float(problem.p_mix), float(clip)) if equal else None
    sigma = problem.sigma_pi
    kappa0 = 1.0
    available, note = True, "unclipped: E_b[rho f(a) | s] = E_pi[f(a) | s]"
    if clip_enabled and rm is not None and rm.clip_prob > 0.0:
        kappa0, sigma = rm.e_rho_bar, rm.sigma_eff
        note = "clipped, equal means: pi_eff has noise sigma_eff = sqrt(kappa2 / kappa0), weight kappa0"
        if not kappa0 > 0.0:
            available, note = False, "clipped at a threshold that removes every ratio (kappa0 = 0)"
    elif clip_enabled and rm is None:
        available, note = False, "clipped with unequal policy means: no closed form"
    elif clip_enabled:
        note = "clipping never binds (rho <= 1/p_mix <= clip, or rho <= clip everywhere)"
    if not available:
        d = problem.d
        nan = np.full((d, d), math.nan)
        return TDOperator(False, note, math.nan, nan, np.full(d, math.nan), problem.gamma, math.nan), rm
    t = transition_operator(problem, k_pi, sigma)
    c = reward_coeffs(problem, k_pi, sigma)
    return TDOperator(True, note, kappa0, t, c, problem.gamma, float(sigma)), rm


@dataclass(frozen=True)
class CriticSpec:
    """Which critic's expected update the exact theory judges (MODEL.md 3.4): its algorithm and
    eta = alpha_h / alpha_w."""

    algorithm: str = "td0"
    eta: float = 0.0


def critic_of(spec) -> CriticSpec:
    """The critic of a spec (offtd.spec.Spec)."""
    from ..critics import eta

    return CriticSpec(spec.critic.algorithm, eta(spec.critic.alpha_w, spec.critic.alpha_h))


@dataclass(frozen=True)
class ExactTD:
    """The exact quantities of one iteration (its gains K_pi, K_mu and the rollout's horizon). `pop` is
    the eigenvalue summary of the critic's own expected-update matrix (`critic_pop`: A for td0, A_e
    for etd, the 2d x 2d matrix of (w, h) for tdc and gtd2); `td0` is TD(0)'s, whatever the critic."""

    operator: TDOperator
    ratios: RatioMoments | None
    moments: StateMoments
    gram_pop: np.ndarray
    a_pop: np.ndarray
    b_pop: np.ndarray
    pop: EigSummary
    fixed_point: np.ndarray
    critic: CriticSpec = CriticSpec()
    critic_pop: np.ndarray | None = None
    td0: EigSummary | None = None
    note: str = ""

    def critic_matrix(self, a: np.ndarray, gram: np.ndarray) -> np.ndarray | None:
        """The critic's matrix given a TD(0) matrix `a` and a Gram matrix over the same states (the
        pool's), or None where the critic needs more than these (etd: the trace-weighted Gram)."""
        from ..critics import expected_matrix

        alg = self.critic.algorithm
        if alg == "etd":
            return None
        return expected_matrix(alg, a, gram, self.operator.kappa0 * gram, self.critic.eta)


def exact_td(
    problem: Problem,
    k_pi: np.ndarray,
    k_mu: np.ndarray,
    horizon: int,
    alpha_w: float,
    clip_enabled: bool,
    backend: Backend,
    critic: CriticSpec | None = None,
) -> ExactTD:
    """Population values for the iteration with gains (K_pi, K_mu): the state moments of the rollout's
    state pool, E[A_hat], E[b_hat], the eigenvalue summary of the critic's expected update (TD(0)'s
    unless `critic` says otherwise) and the TD fixed point."""
    critic = critic or CriticSpec()
    note = ""
    with np.errstate(all="ignore"):
        moments = backend.state_moments(problem, k_pi, k_mu, horizon)
        gram = gram_from_moments(moments)
        op, rm = td_operator(problem, k_pi, k_mu, moments.m2, clip_enabled)
        if op.available and np.all(np.isfinite(gram)):
            a, b = op.a(gram), op.b(gram)
        else:
            a = np.full((problem.d, problem.d), math.nan)
            b = np.full(problem.d, math.nan)
        td0 = eig_summary(a, alpha_w)
        w_fp = op.fixed_point() if op.available else np.full(problem.d, math.nan)
        if critic.algorithm == "td0":
            mat = a
        elif critic.algorithm == "etd":
            if op.available and op.kappa0 == 1.0 and op.sigma_eff == float(problem.sigma_pi):
                from .emphatic import emphatic_gram

                mat = op.a(emphatic_gram(problem, k_pi, k_mu, horizon))
            else:
                mat = np.full((problem.d, problem.d), math.nan)
                note = "emphatic TD with clipping that binds: no closed form"
        else:
            from ..critics import expected_matrix

            mat = expected_matrix(critic.algorithm, a, gram, op.kappa0 * gram, critic.eta)
        summary = td0 if critic.algorithm == "td0" else eig_summary(mat, alpha_w)
    return ExactTD(op, rm, moments, gram, a, b, summary, w_fp, critic, mat, td0, note)


def g_norm(x: np.ndarray, gram: np.ndarray) -> float:
    """sqrt(x^T G x): the RMS over the states of the value function with weights x."""
    return math.sqrt(max(float(x @ gram @ x), 0.0))
