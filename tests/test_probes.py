"""Probe oracles: the TD fixed point of realizable features is the teacher (MODEL.md 4.3)."""

from __future__ import annotations

import math

import numpy as np

from offtd import model
from offtd.backend import FIXED_POINT_BASE, Problem
from offtd.reference import ReferenceBackend

REF = ReferenceBackend()


def _setup(sigma_mu=0.5, sigma_pi=0.4, p_mix=0.1, gamma=0.8, seed=0):
    n, m = 2, 2
    a = np.array([[0.9, 0.1], [0.0, 0.9]])
    b = 0.5 * np.eye(2)
    problem = Problem(a, b, np.eye(n), np.eye(m), 0.1, 1.0, 1.0, sigma_pi, sigma_mu, p_mix, gamma, math.inf, seed)
    k_pi = np.array([[-0.1, 0.0], [0.05, -0.2]])
    k_mu = k_pi + 0.05
    pool = np.random.default_rng(seed).normal(size=(300, n))
    return problem, k_pi, k_mu, pool


def _residuals(problem, k_pi, k_mu, pool, count, repeats, iteration=0):
    """A_r w_teacher - b_r for each sub-batch r: mean zero by the teacher's Bellman equation."""
    ts = REF.transitions(problem, k_pi, k_mu, pool, count, repeats, FIXED_POINT_BASE, iteration)
    w_t = model.teacher(problem, k_pi).w
    return np.array([ts.a_sums[r] @ w_t / ts.counts[r] - ts.b_sums[r] / ts.counts[r] for r in range(repeats)]), ts


def test_teacher_solves_the_expected_fixed_point_equation():
    # E[A_hat] w_teacher = E[b_hat] exactly (realizable features, rho corrects b to pi). Over 16
    # independent sub-batches, each component's mean residual lies within 5 standard errors of 0.
    problem, k_pi, k_mu, pool = _setup()
    res, _ = _residuals(problem, k_pi, k_mu, pool, 16 * 400, 16)
    mean = res.mean(axis=0)
    se = res.std(axis=0, ddof=1) / math.sqrt(len(res))
    assert np.all(np.abs(mean) <= 5 * se), (mean, se)


def test_fixed_point_approaches_teacher_as_batch_grows():
    problem, k_pi, k_mu, pool = _setup()
    w_t = model.teacher(problem, k_pi).w

    def gap(count, seed):
        p = Problem(**{**problem.__dict__, "seed": seed})
        ts = REF.transitions(p, k_pi, k_mu, pool, count, 1, FIXED_POINT_BASE, 0)
        sol = REF.solve(ts.a_sums[0] / count, ts.b_sums[0] / count, 200, 1e-12)
        assert sol.converged
        return np.linalg.norm(sol.x - w_t) / np.linalg.norm(w_t)

    small = np.mean([gap(250, s) for s in range(4)])
    large = np.mean([gap(16 * 250, s) for s in range(4)])
    # Monte Carlo error of w_sharp scales as 1/sqrt(batch): 16x the samples should cut the gap about
    # 4x; require at least 2x (averaged over 4 seeds) and a small absolute gap at the large size.
    assert large < small / 2, (small, large)
    assert large < 0.05


def test_psis_khat_recovers_the_closed_form_tail_index():
    # m = 2: ||a - mean||^2 / sigma_mu^2 is exactly exponential, so pi/mu is exactly Pareto-tailed with
    # shape k = 1 - sigma_mu^2 / sigma_pi^2 (MODEL.md 2). PSIS fits the largest 3 sqrt(n) = 949 ratios
    # of n = 100000; the fit's SE is about (1 + k) / sqrt(949) ~ 0.05 per sample, so the mean of 8
    # independent samples lies within 0.1 (~5 SE of the mean) of k, prior shrinkage included.
    sm, sp = 0.3, 0.5
    k_true = 1 - sm**2 / sp**2
    rng = np.random.default_rng(7)
    khats = []
    for _ in range(8):
        a = rng.normal(0.0, sm, size=(100_000, 2))
        q2 = (a * a).sum(axis=1)
        rho = np.exp(2 * math.log(sm / sp) - 0.5 * q2 / sp**2 + 0.5 * q2 / sm**2)
        khats.append(REF.rho_stats(rho, 10.0, False).khat)
    assert abs(np.mean(khats) - k_true) < 0.1, (khats, k_true)
    assert math.isclose(model.e_mu_rho2(2, sp, sm), math.inf) == (k_true >= 0.5)
