"""The report's exact metrics of one probe iteration (specs/MODEL.md 9): what the expected TD update,
the TD fixed point and the importance ratios are, computed without sampling."""

from __future__ import annotations

import math

import numpy as np

from ..model import Teacher
from .expected_td import ExactTD, eig_summary, g_norm

EXACT_METRICS = (
    "exact_available",
    "exact_radius",
    "exact_min_re_eig",
    "exact_alpha_w_crit",
    "exact_tol",
    "exact_radius_pool",
    "exact_min_re_eig_pool",
    "exact_teacher_gap",
    "exact_kappa0",
    "exact_sigma_eff",
    "exact_ratio_available",
    "exact_e_rho2",
    "exact_e_rho_bar2",
    "exact_clip_prob",
)


def value_scale(teacher: Teacher, gram: np.ndarray) -> float:
    """The teacher's RMS value over the states, sqrt(w_T^T G w_T): the scale that makes the critic's
    errors and gaps relative (NaN when the teacher is undefined)."""
    if not teacher.defined or not np.all(np.isfinite(teacher.w)):
        return math.nan
    return g_norm(teacher.w, gram)


def relative_gap(x: np.ndarray, gram: np.ndarray, scale: float) -> float:
    """||x||_G / scale, with 0/0 = 0 and x/0 = NaN (a zero teacher gives no scale)."""
    if not np.all(np.isfinite(x)):
        return math.nan
    num = g_norm(x, gram)
    if scale > 0.0:
        return num / scale
    return 0.0 if num == 0.0 else math.nan


def exact_metrics(ex: ExactTD, gram_pool: np.ndarray, teacher: Teacher, alpha_w: float) -> dict[str, float]:
    """One row of the Exact section: population values (the expectation over rollouts of this iteration's
    gains), pool values (the expectation given this iteration's states) and the exact ratio moments."""
    op = ex.operator
    with np.errstate(all="ignore"):
        pool_mat = ex.critic_matrix(op.a(gram_pool), gram_pool) if op.available else None
        pool = eig_summary(pool_mat if pool_mat is not None else np.full((1, 1), math.nan), alpha_w)
        scale = value_scale(teacher, gram_pool)
        gap = relative_gap(ex.fixed_point - teacher.w, gram_pool, scale) if op.available else math.nan
    rm = ex.ratios
    nan = math.nan
    return {
        "exact_available": 1.0 if op.available and math.isfinite(ex.pop.radius) else 0.0,
        "exact_radius": ex.pop.radius,
        "exact_min_re_eig": ex.pop.min_re,
        "exact_alpha_w_crit": ex.pop.alpha_crit,
        "exact_tol": ex.pop.tol,
        "exact_radius_pool": pool.radius,
        "exact_min_re_eig_pool": pool.min_re,
        "exact_teacher_gap": gap,
        "exact_kappa0": op.kappa0,
        "exact_sigma_eff": op.sigma_eff,
        "exact_ratio_available": 1.0 if rm is not None else 0.0,
        "exact_e_rho2": rm.e_rho2 if rm is not None else nan,
        "exact_e_rho_bar2": rm.e_rho_bar2 if rm is not None else nan,
        "exact_clip_prob": rm.clip_prob if rm is not None else nan,
    }
