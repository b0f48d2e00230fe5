"""The rollout kernel (specs/MODEL.md sections 0.2, 2 and 3): ratios and clipping inside the rollout,
and the order of its sums."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offtd.backend import Problem, get_backend
from offtd.reference import ReferenceBackend


def _problem(p_mix: float, rho_clip: float = math.inf, sigma_pi: float = 0.6, sigma_mu: float = 0.5) -> Problem:
    return Problem(
        a=np.array([[0.95, 0.1], [0.0, 0.9]]),
        b=np.array([[0.0], [0.2]]),
        q=np.eye(2),
        r=np.eye(1) * 0.5,
        sigma_eps=0.2,
        sigma_0=1.0,
        reward_scale=1.0,
        sigma_pi=sigma_pi,
        sigma_mu=sigma_mu,
        p_mix=p_mix,
        gamma=0.9,
        rho_clip=rho_clip,
        seed=7,
    )


def test_rollout_clip_identity_and_inverse_p_bound():
    be = ReferenceBackend()
    w = np.array([-1.0, 0.1, -0.5, 0.2, 0.0, -2.0])
    k_pi = np.array([[-0.2, -0.3]])
    k_mu = np.array([[-0.1, -0.4]])
    p = 0.25
    free = be.rollout(_problem(p), w, k_pi, k_mu, iteration=1, batch=4, horizon=25)
    rho_max = float(free.rho.max())
    # Every rollout ratio obeys rho <= 1/p (tolerance: a few ulps of the log-ratio, see _lr_tol).
    assert np.all(free.rho <= (1.0 / p) * (1.0 + 1e-12))
    assert np.all(free.rho > 0.0)
    # Clipping at clip >= max rho is the identity: every sum is bit-identical to the unclipped run.
    at_max = be.rollout(_problem(p, rho_clip=rho_max), w, k_pi, k_mu, iteration=1, batch=4, horizon=25)
    assert np.array_equal(at_max.a, free.a) and np.array_equal(at_max.b, free.b)
    assert np.array_equal(at_max.grad_k, free.grad_k)
    assert at_max.td_sq == free.td_sq and at_max.rho2 == free.rho2
    # A real clip changes the gradient but never the unclipped ratios, the TD loss or the gram matrix.
    clipped = be.rollout(_problem(p, rho_clip=0.5 * rho_max), w, k_pi, k_mu, iteration=1, batch=4, horizon=25)
    assert np.array_equal(clipped.rho, free.rho)
    assert clipped.td_sq == free.td_sq and np.array_equal(clipped.gram, free.gram)
    assert not np.array_equal(clipped.a, free.a) and not np.array_equal(clipped.b, free.b)


def _phi(s: list[float]) -> list[float]:
    n = len(s)
    return [s[i] * s[j] for i in range(n) for j in range(i, n)] + list(s) + [1.0]


def _dot(w: list[float], f: list[float]) -> float:
    total = 0.0
    for wi, fi in zip(w, f):
        total += wi * fi
    return total


@pytest.mark.parametrize("backend", ["rust", "python"])
def test_rollout_sums_follow_the_order_of_section_0_2(backend):
    # MODEL.md 0.2: per trajectory left to right from 0.0, then the trajectory sums left to right. The
    # test recomputes each transition's TD error in MODEL.md 3.3's literal order from the rollout's own
    # states, rewards and ratios (plain Python floats), accumulates in that order, and requires the
    # kernel's sums bit for bit. A flat sum over all transitions gives other bits (checked below), so a
    # kernel that summed in another order would fail.
    prob = _problem(0.3, rho_clip=1.5)
    w = [-1.0, 0.1, -0.5, 0.2, 0.03, -2.0]
    k = np.array([[-0.2, -0.3]])
    out = get_backend(backend).rollout(prob, np.array(w), k, k * 0.5, iteration=3, batch=5, horizon=9)
    gamma, clip = prob.gamma, prob.rho_clip
    per_traj = {"td_sq": [], "rho2": [], "a": [], "b": []}
    flat = {"td_sq": 0.0, "rho2": 0.0}
    for j in range(5):
        td, r2 = 0.0, 0.0
        a_t, b_t = [[0.0] * 6 for _ in range(6)], [0.0] * 6
        for h in range(9):
            s, s_next = out.states[j, h].tolist(), out.states[j, h + 1].tolist()
            f, f_next = _phi(s), _phi(s_next)
            r = float(out.rewards[j, h])
            delta = (r + gamma * _dot(w, f_next)) - _dot(w, f)
            rho = float(out.rho[j, h])
            rho_bar = clip if rho > clip else rho
            td += delta * delta
            r2 += rho * rho
            flat["td_sq"] += delta * delta
            flat["rho2"] += rho * rho
            e = [f[k] - gamma * f_next[k] for k in range(6)]  # MODEL.md 3.3
            for i in range(6):
                for k in range(6):
                    a_t[i][k] += (rho_bar * f[i]) * e[k]
                b_t[i] += (rho_bar * r) * f[i]
        per_traj["td_sq"].append(td)
        per_traj["rho2"].append(r2)
        per_traj["a"].append(a_t)
        per_traj["b"].append(b_t)
    total_td = 0.0
    total_r2 = 0.0
    total_a, total_b = [[0.0] * 6 for _ in range(6)], [0.0] * 6
    for j in range(5):
        total_td += per_traj["td_sq"][j]
        total_r2 += per_traj["rho2"][j]
        for i in range(6):
            for k in range(6):
                total_a[i][k] += per_traj["a"][j][i][k]
            total_b[i] += per_traj["b"][j][i]
    assert out.td_sq == total_td and out.rho2 == total_r2
    assert out.a.tolist() == total_a and out.b.tolist() == total_b
    assert out.count == 45
    # the order matters for these numbers: the flat sum differs in the last bits
    assert (flat["td_sq"], flat["rho2"]) != (total_td, total_r2)


@pytest.mark.parametrize("backend", ["rust", "python"])
def test_optional_statistics_are_returned_exactly_when_asked(backend):
    """MODEL.md 3.3: C_rho comes with bit STATS_CROSS, A_e and b_e with bit STATS_EMPHASIS, and nothing
    else changes with the bits (the same iteration's streams, so the same transitions)."""
    from offtd.backend import STATS_CROSS, STATS_EMPHASIS

    be = get_backend(backend)
    p = _problem(0.25)
    w = np.array([-1.0, 0.1, -0.5, 0.2, 0.0, -2.0])
    k_pi, k_mu = np.array([[-0.2, -0.3]]), np.array([[-0.1, -0.4]])
    plain = be.rollout(p, w, k_pi, k_mu, 2, 3, 4, 0)
    for stats in (0, STATS_CROSS, STATS_EMPHASIS, STATS_CROSS | STATS_EMPHASIS):
        roll = be.rollout(p, w, k_pi, k_mu, 2, 3, 4, stats)
        assert (roll.c_rho is not None) == bool(stats & STATS_CROSS), stats
        assert (roll.a_e is not None) == bool(stats & STATS_EMPHASIS) == (roll.b_e is not None), stats
        for name in ("states", "rho", "gram", "a", "b", "grad_k"):
            assert np.array_equal(getattr(roll, name), getattr(plain, name)), (stats, name)
