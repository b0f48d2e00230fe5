"""Probe sample kernels (specs/MODEL.md 4.1 and 4.2), pure Python.

* :func:`transitions` — the probe transitions of 4.2 (fixed-point and stability probes): per sub-batch
  block sums (0.2) of ``A[i][j] += (rho_bar*phi_i(s))*e_j`` and ``b[i] += (rho_bar*r)*phi_i(s)``.
* :func:`policy_samples` — the distribution probe's draws of 4.1: ``rho = pi/mu`` at ``a ~ mu``,
  ``tv_sum``, the state moment ``S = sum s s^T`` and the MMD set.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import rng
from .common import (
    BLOCK,
    feature_dim,
    lpi_lmu,
    matvec,
    mixture_step,
    phi,
    pick,
    ratio_from_logs,
)


@dataclass
class TransitionSumsPy:
    a_sums: list  # [R][d][d]
    b_sums: list  # [R][d]
    counts: list  # [R]
    rho: list  # [K]


@dataclass
class PolicySamplesPy:
    rho: list  # [K]
    tv_sum: float
    state_moment: list  # [n][n]
    mmd_s: list  # [M][n]
    mmd_a_pi: list  # [M][m]
    mmd_a_mu: list  # [M][m]


def sub_batch_bounds(count: int, repeats: int) -> list[tuple[int, int]]:
    """Sub-batch r holds k in ``[floor(r*K/R), floor((r+1)*K/R))`` (exact integer arithmetic)."""
    return [(r * count // repeats, (r + 1) * count // repeats) for r in range(repeats)]


def transitions(
    env: dict,
    *,
    k_pi,
    k_mu,
    pool,
    count: int,
    repeats: int,
    base: int,
    iteration: int,
) -> TransitionSumsPy:
    """``count`` (= K) probe transitions from the state pool (a list of N states), split in ``repeats``
    (= R) contiguous sub-batches, each block-summed on its own."""
    n = len(env["a_mat"])
    m = len(env["b_mat"][0]) if n else 0
    d = feature_dim(n)
    gamma, seed = env["gamma"], env["seed"]
    n_pool = len(pool)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")

    st_state = rng.Stream(seed, base + rng.PROBE_STATE, iteration, 0)
    st_mix = rng.Stream(seed, base + rng.PROBE_MIX, iteration, 0)
    st_act = rng.Stream(seed, base + rng.PROBE_ACTION, iteration, 0)
    st_env = rng.Stream(seed, base + rng.PROBE_ENV, iteration, 0)

    a_sums = []
    b_sums = []
    counts = []
    rhos = []
    for k0, k1 in sub_batch_bounds(count, repeats):
        a_tot = [[0.0] * d for _ in range(d)]
        b_tot = [0.0] * d
        for blk_start in range(k0, k1, BLOCK):
            a_blk = [[0.0] * d for _ in range(d)]
            b_blk = [0.0] * d
            for k in range(blk_start, min(blk_start + BLOCK, k1)):
                s = pool[pick(st_state.uniform(k), n_pool)]
                z_a = [st_act.normal(k * m + j) for j in range(m)]
                z_e = [st_env.normal(k * n + i) for i in range(n)]
                _, rho, rho_bar, r, s_next = mixture_step(s, st_mix.uniform(k), z_a, z_e, env, k_pi, k_mu)
                f = phi(s)
                f_next = phi(s_next)
                e = [f[j] - gamma * f_next[j] for j in range(d)]
                rr = rho_bar * r
                for i in range(d):
                    rf = rho_bar * f[i]
                    row = a_blk[i]
                    for j in range(d):
                        row[j] += rf * e[j]
                    b_blk[i] += rr * f[i]
                rhos.append(rho)
            for i in range(d):
                row_t = a_tot[i]
                row_b = a_blk[i]
                for j in range(d):
                    row_t[j] += row_b[j]
                b_tot[i] += b_blk[i]
        a_sums.append(a_tot)
        b_sums.append(b_tot)
        counts.append(k1 - k0)
    return TransitionSumsPy(a_sums=a_sums, b_sums=b_sums, counts=counts, rho=rhos)


def policy_samples(
    *,
    k_pi,
    k_mu,
    sigma_pi: float,
    sigma_mu: float,
    seed: int,
    pool,
    count: int,
    mmd_count: int,
    iteration: int,
) -> PolicySamplesPy:
    """The distribution probe's ``count`` (= num_samples) draws; the first ``mmd_count`` (= M) form the
    MMD set. Independent of p_mix: ``rho = exp(lpi - lmu)`` (section 2 with p = 0)."""
    m = len(k_pi)
    n_pool = len(pool)
    n = len(pool[0]) if n_pool else 0
    if mmd_count > count:
        raise ValueError(f"mmd_count ({mmd_count}) must not exceed count ({count})")

    st_state = rng.Stream(seed, rng.DIST_STATE, iteration, 0)
    st_mu = rng.Stream(seed, rng.DIST_MU_ACTION, iteration, 0)
    st_pi = rng.Stream(seed, rng.DIST_PI_ACTION, iteration, 0)

    rhos = []
    tv_tot = 0.0
    s_tot = [[0.0] * n for _ in range(n)]
    mmd_s = []
    mmd_a_pi = []
    mmd_a_mu = []
    for blk_start in range(0, count, BLOCK):
        tv_blk = 0.0
        s_blk = [[0.0] * n for _ in range(n)]
        for k in range(blk_start, min(blk_start + BLOCK, count)):
            s = pool[pick(st_state.uniform(k), n_pool)]
            mean_mu = matvec(k_mu, s)
            a = [mean_mu[j] + sigma_mu * st_mu.normal(k * m + j) for j in range(m)]
            lpi, lmu, _ = lpi_lmu(a, s, k_pi, k_mu, sigma_pi, sigma_mu)
            rho = ratio_from_logs(lpi, lmu, 0.0)
            rhos.append(rho)
            t = 1.0 - rho
            # max(1 - rho, 0), NaN-propagating (MODEL.md does not say; NaN must not vanish).
            tv_blk += 0.0 if t < 0.0 else t
            for i in range(n):
                si = s[i]
                row = s_blk[i]
                for j in range(n):
                    row[j] += si * s[j]
            if k < mmd_count:
                mean_pi = matvec(k_pi, s)
                a_pi = [mean_pi[j] + sigma_pi * st_pi.normal(k * m + j) for j in range(m)]
                mmd_s.append(list(s))
                mmd_a_pi.append(a_pi)
                mmd_a_mu.append(a)
        tv_tot += tv_blk
        for i in range(n):
            for j in range(n):
                s_tot[i][j] += s_blk[i][j]
    return PolicySamplesPy(
        rho=rhos,
        tv_sum=tv_tot,
        state_moment=s_tot,
        mmd_s=mmd_s,
        mmd_a_pi=mmd_a_pi,
        mmd_a_mu=mmd_a_mu,
    )
