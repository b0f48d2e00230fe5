"""`offtd theory`: the exact quantities of section 9 over a grid of specs, with no sampling.

Each cell is evaluated at the spec's initial gains (policy.k_init, policy.k_mu_init) and its horizon: what
the first iteration's expected TD update, fixed point and importance ratios are. A cell costs one state
moment recursion and a few small eigenvalue problems (milliseconds at n = 2).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..backend import Backend
from ..model import kl_gaussian, problem_from_spec, teacher, tv_equal_means
from ..spec import Spec
from .expected_td import critic_of, exact_td, g_norm

COLUMNS = (
    "exact_radius",
    "exact_min_re_eig",
    "exact_alpha_w_crit",
    "exact_e_rho2",
    "exact_e_rho_bar2",
    "exact_kappa0",
    "exact_teacher_gap",
    "dist_action_kl",
    "dist_action_tv",
    "teacher_defined",
    "closed_loop",
    "teacher_value_rms",
)


def theory_row(spec: Spec, backend: Backend) -> dict[str, float]:
    """The exact quantities of one spec at its initial gains (population values, MODEL.md 9); the radius,
    min Re eig and alpha_w* are those of the spec's critic's expected update (MODEL.md 3.4)."""
    problem = problem_from_spec(spec)
    k_pi = np.array(spec.policy.k_init, dtype=float)
    k_mu = np.array(spec.policy.k_mu_init, dtype=float)
    ex = exact_td(problem, k_pi, k_mu, spec.run.horizon, spec.critic.alpha_w, spec.rho.clip_enabled, backend, critic=critic_of(spec))
    tch = teacher(problem, k_pi)
    p = spec.policy
    m = spec.env.action_dim
    gram = ex.gram_pop
    dk = k_pi - k_mu
    mean_sq = float(np.trace(dk @ ex.moments.m2 @ dk.T))
    scale = g_norm(tch.w, gram) if tch.defined else math.nan
    gap = g_norm(ex.fixed_point - tch.w, gram) / scale if (tch.defined and scale > 0 and ex.operator.available) else math.nan
    rm = ex.ratios
    return {
        "exact_radius": ex.pop.radius,
        "exact_min_re_eig": ex.pop.min_re,
        "exact_alpha_w_crit": ex.pop.alpha_crit,
        "exact_e_rho2": rm.e_rho2 if rm is not None else math.nan,
        "exact_e_rho_bar2": rm.e_rho_bar2 if rm is not None else math.nan,
        "exact_kappa0": ex.operator.kappa0,
        "exact_teacher_gap": gap,
        "dist_action_kl": kl_gaussian(m, p.sigma_pi, p.sigma_mu, mean_sq),
        "dist_action_tv": tv_equal_means(m, p.sigma_pi, p.sigma_mu) if not np.any(dk) else math.nan,
        "teacher_defined": 1.0 if tch.defined else 0.0,
        "closed_loop": math.sqrt(spec.critic.gamma) * tch.closed_loop_radius,
        "teacher_value_rms": scale,
    }


def theory_table(
    base: Spec, grid: Mapping[str, Sequence[Any]] | None = None, backend: str | Backend = "rust"
) -> list[dict[str, Any]]:
    """One row per grid cell: its overrides and the exact quantities. `grid` maps dotted keys to values
    (the Cartesian product is taken, as `offtd sweep` does)."""
    from ..backend import get_backend
    from ..sweep import cells

    impl = get_backend(backend) if isinstance(backend, str) else backend
    rows = []
    for cell in cells(base, {key: list(values) for key, values in (grid or {}).items()}):
        rows.append({"cell": cell.index, **cell.overrides, **theory_row(cell.spec, impl)})
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    from ..summary import fmt

    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v) for v in r.values()) + " |")
    return "\n".join(lines) + "\n"
