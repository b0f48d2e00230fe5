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




def _context(spec_overrides: dict, k_pi: np.ndarray, k_mu: np.ndarray, iteration: int):
    from offtd.backend import get_backend
    from offtd.model import problem_from_spec
    from offtd.probes import ProbeContext
    from offtd.spec import load_spec

    spec = load_spec(None, spec_overrides)
    p = problem_from_spec(spec)
    rust = get_backend("rust")
    roll = rust.rollout(p, np.zeros(p.d), k_pi, k_mu, 0, spec.run.batch, spec.run.horizon)
    tch = model.teacher(p, k_pi)
    return ProbeContext(spec, p, rust, iteration, np.zeros(p.d), k_pi, k_mu, roll, tch, 0.0, 1.0)


def test_distribution_probe_kl_tv_and_mean_l2_against_their_expectations():
    # MODEL.md 4.1 over 300 independent probe draws (distinct iteration numbers) on one state pool:
    # - dist_action_kl is the closed form plus tr(D S D^T) / (K 2 sigma_mu^2) over the picked states; its
    #   expectation over picks uses the pool's mean s s^T (computed here from the rollout's states);
    # - mean_l2^2 = ||mean a_pi - mean a_mu||^2 over the M-sample MMD set: with equal gains the two sets
    #   share their states and the difference is the mean of M independent N(0, (sigma_pi^2 + sigma_mu^2) I)
    #   draws, so its expectation is m (sigma_pi^2 + sigma_mu^2) / M;
    # - dist_action_tv, a mean of (1 - rho)_+, has the exact TV as expectation at equal gains.
    # Each sample mean within 5 of its standard errors.
    from offtd.probes import ProbeState, distribution_probe

    sp, sm, m = 0.4, 0.5, 2
    over = {"policy.sigma_pi": sp, "policy.sigma_mu": sm, "probes.distribution.num_samples": 512,
            "probes.distribution.action_samples": 32}  # fmt: skip
    k_pi = np.array([[-0.3, 0.1], [0.2, -0.4]])
    k_mu = k_pi + np.array([[0.2, 0.0], [0.0, -0.1]])
    rows_eq = [distribution_probe(_context(over, k_pi, k_pi, it), ProbeState()) for it in range(1, 301)]
    ctx = _context(over, k_pi, k_mu, 1)
    rows_ne = [distribution_probe(_context(over, k_pi, k_mu, it), ProbeState()) for it in range(1, 301)]

    def within(values, want):
        v = np.asarray(values, dtype=float)
        se = v.std(ddof=1) / math.sqrt(v.size)
        assert abs(v.mean() - want) < 5 * se + 1e-12, (v.mean(), want, se)

    within([r["mean_l2"] ** 2 for r in rows_eq], m * (sp**2 + sm**2) / 32)
    within([r["dist_action_tv"] for r in rows_eq], model.tv_equal_means(m, sp, sm))
    pool = ctx.pool()
    d = k_pi - k_mu
    shift = float(np.mean(np.einsum("ij,nj->ni", d, pool) ** 2, axis=0).sum())
    within([r["dist_action_kl"] for r in rows_ne], model.kl_gaussian(m, sp, sm) + shift / (2 * sm**2))
