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
from types import SimpleNamespace

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


def test_a_step_at_the_critical_step_is_halved(monkeypatch):
    """At alpha_w = alpha_w* exactly the expected update does not contract (radius 1): the remedy offers
    half the critical step. A stand-in matrix G = diag(2, 4): alpha_w* = min 2 Re/|lambda|^2 = 0.5, and
    the radius max |1 - alpha lambda| is 1 at alpha = 0.5, 0.5 at 0.25 and 0.9996 at 0.4999."""
    g = np.diag([2.0, 4.0])
    pop = SimpleNamespace(min_re=2.0, alpha_crit=0.5)
    monkeypatch.setattr(advice._Exact, "td", lambda _ex, alpha_w=None, critic=None, **_: SimpleNamespace(pop=pop, critic_pop=g))
    for alpha_w, setting, radius in ((0.5, ", critic.alpha_w = 0.25", "0.5"), (0.4999, "", "0.9996")):
        spec = load_spec(None, {"critic.alpha_w": alpha_w})
        lines = advice._critic_remedies(spec, advice._Exact(spec, make_result(), None))
        assert [line.split(" (")[0].split(",")[0] for line in lines] == [
            'critic.algorithm = "tdc"',
            'critic.algorithm = "gtd2"',
            'critic.algorithm = "etd"',
        ]
        for line in lines:
            assert line.endswith(f"{setting} (exact min Re eig 2, stable for alpha_w < 0.5, exact radius {radius})"), line
