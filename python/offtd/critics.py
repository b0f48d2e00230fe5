"""The critics (specs/MODEL.md 3.4): one function per algorithm, computed from the rollout's
algorithm-neutral statistics (MODEL.md 3.3), and the expected-update matrix each one's stability
depends on.

With the critic's weights fixed during an iteration every update below is the batch mean of its
textbook per-sample update (Sutton et al. 2009 for TDC and GTD2, Sutton, Mahmood and White 2016 for
emphatic TD(0) with interest 1), written with

    A = sum rho_bar phi (phi - gamma phi')^T     b = sum rho_bar r phi     C = sum phi phi^T
    C_rho = sum rho_bar phi phi^T                 (so gamma sum rho_bar phi' phi^T = C_rho - A^T)
    A_e, b_e: A and b with every term weighted by the follow-on trace F (F_0 = 1,
              F_{h+1} = 1 + gamma rho_bar_h F_h along each trajectory)

    td0:  w += alpha_w (b - A w) / N
    tdc:  w += alpha_w ((b - A w) - (C_rho - A^T) h) / N      h += alpha_h ((b - A w) - C h) / N
    gtd2: w += alpha_w (A^T h) / N                             h += alpha_h ((b - A w) - C h) / N
    etd:  w += alpha_w (b_e - A_e w) / N

Each is a linear map of the critic's state z (w, or (w, h)): `z' = z + alpha_w (g - G z) / N`, and the
expected update is stable iff every eigenvalue of `I - alpha_w G/N` lies inside the unit circle. G is
A for td0, A_e for etd, and with eta = alpha_h / alpha_w

    tdc:  [[A, C_rho - A^T], [eta A, eta C]]        gtd2: [[0, -A^T], [eta A, eta C]]

To add a critic: a function here, its matrix, its name in ALGORITHMS (and the spec's choices), MODEL.md,
and tests; a kernel change only if it needs a statistic the rollout does not yet return.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import STATS_CROSS, STATS_EMPHASIS, RolloutBatch

ALGORITHMS = ("td0", "tdc", "gtd2", "etd")
TWO_TIMESCALE = ("tdc", "gtd2")
# How reports name each critic's update and its expected-update matrix (health's `stable` reasons).
UPDATE_NAMES = {"td0": "TD", "tdc": "TDC", "gtd2": "GTD2", "etd": "emphatic TD"}
MATRIX_SYMBOLS = {"td0": "A", "tdc": "G", "gtd2": "G", "etd": "A_e"}


def rollout_stats(algorithm: str) -> int:
    """The optional rollout statistics (MODEL.md 3.3) the algorithm's update needs."""
    return {"tdc": STATS_CROSS, "etd": STATS_EMPHASIS}.get(algorithm, 0)


def secondary_weights(algorithm: str) -> bool:
    """True for the gradient-TD critics, which carry secondary weights h (step size alpha_h)."""
    return algorithm in TWO_TIMESCALE


@dataclass(frozen=True)
class CriticStep:
    w: np.ndarray
    h: np.ndarray  # the secondary weights (zeros and unchanged for td0 and etd)


def td0(w: np.ndarray, h: np.ndarray, roll: RolloutBatch, alpha_w: float, alpha_h: float) -> CriticStep:
    n = roll.count
    return CriticStep(w + alpha_w * ((roll.b - roll.a @ w) / n), h)


def tdc(w: np.ndarray, h: np.ndarray, roll: RolloutBatch, alpha_w: float, alpha_h: float) -> CriticStep:
    n = roll.count
    assert roll.c_rho is not None, "tdc needs the rollout's C_rho (stats=STATS_CROSS)"
    td = roll.b - roll.a @ w
    correction = (roll.c_rho - roll.a.T) @ h
    return CriticStep(w + alpha_w * ((td - correction) / n), h + alpha_h * ((td - roll.gram @ h) / n))


def gtd2(w: np.ndarray, h: np.ndarray, roll: RolloutBatch, alpha_w: float, alpha_h: float) -> CriticStep:
    n = roll.count
    td = roll.b - roll.a @ w
    return CriticStep(w + alpha_w * ((roll.a.T @ h) / n), h + alpha_h * ((td - roll.gram @ h) / n))


def etd(w: np.ndarray, h: np.ndarray, roll: RolloutBatch, alpha_w: float, alpha_h: float) -> CriticStep:
    n = roll.count
    assert roll.a_e is not None and roll.b_e is not None, "etd needs the rollout's A_e, b_e (stats=STATS_EMPHASIS)"
    return CriticStep(w + alpha_w * ((roll.b_e - roll.a_e @ w) / n), h)


UPDATES = {"td0": td0, "tdc": tdc, "gtd2": gtd2, "etd": etd}


def update(algorithm: str, w: np.ndarray, h: np.ndarray, roll: RolloutBatch, alpha_w: float, alpha_h: float) -> CriticStep:
    """One iteration's critic update from the rollout's statistics."""
    return UPDATES[algorithm](w, h, roll, alpha_w, alpha_h)


def expected_matrix(algorithm: str, a: np.ndarray, c: np.ndarray, c_rho: np.ndarray | None, eta: float) -> np.ndarray:
    """G of `z' = z + alpha_w (g - G z)` for per-transition means: `a` is A/N (A_e/N for etd), `c` C/N,
    `c_rho` C_rho/N (tdc only), eta = alpha_h / alpha_w."""
    if algorithm in ("td0", "etd"):
        return a
    d = a.shape[0]
    top_left = a if algorithm == "tdc" else np.zeros((d, d))
    if algorithm == "tdc":
        assert c_rho is not None
        top_right = c_rho - a.T
    else:
        top_right = -a.T
    return np.block([[top_left, top_right], [eta * a, eta * c]])


def eta(alpha_w: float, alpha_h: float) -> float:
    """alpha_h / alpha_w, the secondary weights' relative step (0 when the critic is frozen)."""
    return alpha_h / alpha_w if alpha_w > 0.0 else 0.0
