"""Probe transitions and policy samples (specs/MODEL.md 4.1 and 4.2): ratios, sub-batches, draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from offtd.backend import Problem
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


def _pool(be: ReferenceBackend, problem: Problem, k_pi, k_mu):
    out = be.rollout(problem, np.zeros(problem.d), k_pi, k_mu, iteration=2, batch=4, horizon=20)
    return out.states[:, :-1].reshape(-1, problem.n)


def test_probe_transition_ratios_and_subbatches():
    be = ReferenceBackend()
    p = 0.2
    prob = _problem(p, rho_clip=3.0, sigma_pi=0.9, sigma_mu=0.5)
    k_pi = np.array([[-0.2, -0.3]])
    k_mu = np.array([[-0.1, -0.4]])
    pool = _pool(be, prob, k_pi, k_mu)
    full = be.transitions(prob, k_pi, k_mu, pool, count=2500, repeats=1, base=20, iteration=2)
    split = be.transitions(prob, k_pi, k_mu, pool, count=2500, repeats=3, base=20, iteration=2)
    # Sub-batch r holds k in [floor(r K / R), floor((r+1) K / R)).
    assert split.counts.tolist() == [833, 833, 834] and full.counts.tolist() == [2500]
    # R only regroups the sums: the draws (hence every ratio) are identical, and the sub-batch sums add
    # up to the full sums to rounding (a few hundred terms of size O(max); 1e-12 relative is generous).
    assert np.array_equal(split.rho, full.rho)
    scale_a = np.max(np.abs(full.a_sums))
    assert np.max(np.abs(split.a_sums.sum(axis=0) - full.a_sums[0])) <= 1e-12 * scale_a
    assert np.max(np.abs(split.b_sums.sum(axis=0) - full.b_sums[0])) <= 1e-12 * np.max(np.abs(full.b_sums))
    # Mixture ratios obey rho <= 1/p; their mean under b is 1 within 5 SEs (bounded ratios, 2500 draws).
    assert np.all(full.rho <= (1.0 / p) * (1.0 + 1e-12))
    se = full.rho.std(ddof=1) / np.sqrt(len(full.rho))
    assert abs(full.rho.mean() - 1.0) <= 5 * se
    # A different probe base means different draws.
    other = be.transitions(prob, k_pi, k_mu, pool, count=50, repeats=1, base=30, iteration=2)
    assert not np.array_equal(other.rho, full.rho[:50])


def test_policy_samples_ratio_under_mu():
    # Distribution probe: rho = pi/mu at a ~ mu, independent of p_mix. With sigma_pi < sigma_mu the ratio
    # is bounded, so E_mu[rho] = 1 is checked within 5 sample SEs; tv_sum = sum (1 - rho)_+ in [0, K].
    be = ReferenceBackend()
    k_pi = np.array([[-0.2, -0.3]])
    k_mu = np.array([[-0.1, -0.4]])
    prob_a = _problem(0.0, sigma_pi=0.4, sigma_mu=0.6)
    prob_b = _problem(0.7, sigma_pi=0.4, sigma_mu=0.6)
    pool = _pool(be, prob_a, k_pi, k_mu)
    a = be.policy_samples(prob_a, k_pi, k_mu, pool, count=2000, mmd_count=16, iteration=3)
    b = be.policy_samples(prob_b, k_pi, k_mu, pool, count=2000, mmd_count=16, iteration=3)
    assert np.array_equal(a.rho, b.rho) and a.tv_sum == b.tv_sum  # p_mix plays no part
    se = a.rho.std(ddof=1) / np.sqrt(len(a.rho))
    assert abs(a.rho.mean() - 1.0) <= 5 * se
    assert 0.0 <= a.tv_sum <= 2000
    assert a.tv_sum == pytest.approx(np.maximum(1.0 - a.rho, 0.0).sum(), rel=1e-12)
    assert a.mmd_s.shape == (16, 2) and a.mmd_a_pi.shape == (16, 1) and a.mmd_a_mu.shape == (16, 1)
    # The state moment is sum s s^T over the picked states: symmetric positive semi-definite.
    assert np.array_equal(a.state_moment, a.state_moment.T)
    assert np.all(np.linalg.eigvalsh(a.state_moment) >= -1e-9)
