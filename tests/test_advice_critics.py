"""The advice's other-critic remedies (python/offtd/advice.py `_critic_remedies`, MODEL.md 7), each line's
numbers recomputed from the critic's exact expected-update matrix with numpy's eigenvalues.

For a matrix G with eigenvalues lambda, the expected update z' = z + alpha (g - G z) contracts iff
max |1 - alpha lambda| < 1; with every Re lambda > 0 that holds for alpha < min 2 Re lambda / |lambda|^2
(MODEL.md 4.4). The matrix itself is checked against sampled rollouts in tests/test_critics.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from offtd import advice
from offtd.backend import get_backend
from offtd.exact.expected_td import CriticSpec, exact_td
from offtd.model import problem_from_spec
from offtd.spec import load_spec
from test_health_units import make_result

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
LINE = re.compile(
    r'critic\.algorithm = "(\w+)"(?:, critic\.alpha_h = ([^,( ]+))?(?:, critic\.alpha_w = ([^,( ]+))? '
    r"\(exact min Re eig ([^,]+), stable for alpha_w < ([^,]+), exact radius ([^)]+)\)$"
)


def test_other_critics_are_offered_with_their_exact_radius_at_the_offered_step():
    # no_stable_step.toml: TD(0) has no stable step size at its initial gains (tests/test_critics.py)
    spec = load_spec(SPECS_DIR / "no_stable_step.toml", {"run.horizon": 40})
    k_pi, k_mu = np.array(spec.policy.k_init, dtype=float), np.array(spec.policy.k_mu_init, dtype=float)
    result = dataclasses.replace(make_result(), final_k_pi=k_pi, final_k_mu=k_mu)
    be = get_backend("rust")
    lines = advice._critic_remedies(spec, advice._Exact(spec, result, be))
    algs = []
    for line in lines:
        m = LINE.match(line)
        assert m, line
        alg, alpha_h, alpha_w, min_re, crit, radius = m.groups()
        algs.append(alg)
        step = float(alpha_w) if alpha_w is not None else spec.critic.alpha_w
        eta = float(alpha_h) / step if alpha_h is not None else 0.0
        assert (alpha_h is not None) == (alg in ("tdc", "gtd2"))
        if alpha_h is not None:
            # eta is one of the tried ratios, printed to 4 significant digits
            assert min(abs(eta - e) / e for e in advice.CRITIC_ETAS) < 1e-3, line
            eta = min(advice.CRITIC_ETAS, key=lambda e: abs(eta - e))
        g = exact_td(problem_from_spec(spec), k_pi, k_mu, spec.run.horizon, step, False, be, critic=CriticSpec(alg, eta)).critic_pop
        lam = np.linalg.eigvals(g)
        want_crit = float(np.min(2 * lam.real / np.abs(lam) ** 2))
        assert lam.real.min() > 0
        # printed to 4 significant digits (the radius to 6): half a unit in the last place
        assert abs(float(min_re) - lam.real.min()) <= 5e-4 * lam.real.min(), line
        assert abs(float(crit) - want_crit) <= 5e-4 * want_crit, line
        want_radius = float(np.max(np.abs(1.0 - step * lam)))
        assert abs(float(radius) - want_radius) <= 5e-7, (line, want_radius)
        assert want_radius < 1.0
        # the offered step is the run's when it contracts, else half the critical one
        if alpha_w is None:
            assert spec.critic.alpha_w < want_crit
        else:
            assert abs(step - 0.5 * want_crit) <= 5e-4 * step, line
    assert algs and spec.critic.algorithm not in algs and algs == sorted(set(algs), key=algs.index)
