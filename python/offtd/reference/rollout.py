"""The rollout kernel (specs/MODEL.md section 3, steps 1-3), pure Python.

Per trajectory j (its own random streams, substream j): ``s_0 = sigma_0 * z_0``; for each step h the
mixture uniform picks pi (``u < p``) or mu, the action is ``mean + sigma * z``, the ratio, reward and
next state follow section 2, and the TD sums are accumulated per trajectory from 0.0. The trajectory
sums are then added in trajectory order from 0.0 (MODEL.md 0.2).

The sums are the algorithm-neutral statistics of MODEL.md 3.3 (A, b, gram; with ``stats`` bit
``STATS_CROSS`` also C_rho, with bit ``STATS_EMPHASIS`` the emphatic A_e, b_e), the TD loss and the
actor's sums: every critic's update is computed from them in python/offtd/critics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import rng
from .common import dot, feature_dim, mixture_step, phi

STATS_CROSS = 1  # C_rho = sum rho_bar phi phi^T (TDC)
STATS_EMPHASIS = 2  # A_e, b_e with the follow-on trace (emphatic TD)


def _add_weighted(a: list, b: list, weight: float, r: float, f: list, e: list) -> None:
    """MODEL.md 3.3 for one transition with weight rho_bar (A, b) or F*rho_bar (A_e, b_e):
    ``a[i][j] += (weight*f_i)*e_j``, ``b[i] += (weight*r)*f_i``."""
    wr = weight * r
    for i, fi in enumerate(f):
        wf = weight * fi
        row = a[i]
        for j, ej in enumerate(e):
            row[j] += wf * ej
        b[i] += wr * fi


@dataclass
class RolloutSums:
    """Pure-Python rollout result (lists); the backend wraps it into a RolloutBatch."""

    states: list  # [batch][horizon + 1][n]
    rewards: list  # [batch][horizon]
    rho: list  # [batch][horizon], unclipped
    count: int
    td_sq: float
    rho2: float
    grad_k: list  # [m][n]
    gram: list  # [d][d]
    a: list  # [d][d]
    b: list  # [d]
    c_rho: list | None  # [d][d] (STATS_CROSS)
    a_e: list | None  # [d][d] (STATS_EMPHASIS)
    b_e: list | None  # [d]


def rollout(
    env: dict,
    *,
    sigma_0: float,
    w,
    k_pi,
    k_mu,
    iteration: int,
    batch: int,
    horizon: int,
    stats: int = 0,
) -> RolloutSums:
    """Roll out ``batch`` trajectories of ``horizon`` steps. ``env`` holds the environment and policy
    constants (see ``common.mixture_step``) plus ``gamma`` and ``seed``; matrices are lists of rows."""
    n = len(env["a_mat"])
    m = len(env["b_mat"][0]) if n else 0
    gamma, seed = env["gamma"], env["seed"]
    d = feature_dim(n)

    tot_td_sq = 0.0
    tot_rho2 = 0.0
    cross, emph = bool(stats & STATS_CROSS), bool(stats & STATS_EMPHASIS)
    tot_a = [[0.0] * d for _ in range(d)]
    tot_b = [0.0] * d
    tot_c_rho = [[0.0] * d for _ in range(d)]  # returned only when asked for
    tot_a_e = [[0.0] * d for _ in range(d)]
    tot_b_e = [0.0] * d
    tot_grad_k = [[0.0] * n for _ in range(m)]
    tot_gram = [[0.0] * d for _ in range(d)]
    all_states = []
    all_rewards = []
    all_rho = []
    count = 0


    for j in range(batch):
        init = rng.Stream(seed, rng.ROLL_INIT, iteration, j)
        mix = rng.Stream(seed, rng.ROLL_MIX, iteration, j)
        act = rng.Stream(seed, rng.ROLL_ACTION, iteration, j)
        env_noise = rng.Stream(seed, rng.ROLL_ENV, iteration, j)

        s = [sigma_0 * init.normal(i) for i in range(n)]
        states = [s]
        rewards = []
        rhos = []

        # Per-trajectory accumulators, from 0.0.
        td_sq = 0.0
        rho2 = 0.0
        grad_k = [[0.0] * n for _ in range(m)]
        gram = [[0.0] * d for _ in range(d)]  # upper triangle accumulated, mirrored below
        a_s = [[0.0] * d for _ in range(d)]
        b_s = [0.0] * d
        c_rho = [[0.0] * d for _ in range(d)]  # upper triangle, mirrored below
        a_e = [[0.0] * d for _ in range(d)]
        b_e = [0.0] * d
        trace = 1.0  # the follow-on trace F_h (interest 1): F_0 = 1, F_{h+1} = 1 + (gamma*rho_bar_h)*F_h

        for h in range(horizon):
            z_a = [act.normal(h * m + k) for k in range(m)]
            z_e = [env_noise.normal(h * n + i) for i in range(n)]
            dpi, rho, rho_bar, r, s_next = mixture_step(s, mix.uniform(h), z_a, z_e, env, k_pi, k_mu)

            f = phi(s)
            f_next = phi(s_next)
            v = dot(w, f)
            v_next = dot(w, f_next)
            delta = (r + gamma * v_next) - v

            td_sq += delta * delta
            rho2 += rho * rho
            g = rho_bar * delta
            e = [f[j] - gamma * f_next[j] for j in range(d)]
            _add_weighted(a_s, b_s, rho_bar, r, f, e)
            if cross:
                for i in range(d):
                    rf = rho_bar * f[i]
                    row = c_rho[i]
                    for k in range(i, d):
                        row[k] += rf * f[k]
            if emph:
                _add_weighted(a_e, b_e, trace * rho_bar, r, f, e)
                trace = 1.0 + (gamma * rho_bar) * trace
            for i in range(m):
                gd = g * dpi[i]
                row = grad_k[i]
                for jj in range(n):
                    row[jj] += gd * s[jj]
            for i in range(d):
                fi = f[i]
                row = gram[i]
                for k in range(i, d):
                    row[k] += fi * f[k]
            count += 1

            rewards.append(r)
            rhos.append(rho)
            states.append(s_next)
            s = s_next

        # phi_i*phi_k == phi_k*phi_i exactly and both entries see the same terms in the same order,
        # so mirroring the upper triangle gives exactly the full accumulation.
        for i in range(d):
            for k in range(i):
                gram[i][k] = gram[k][i]
                if cross:
                    c_rho[i][k] = c_rho[k][i]

        # Trajectory sums added in trajectory order (MODEL.md 0.2).
        tot_td_sq += td_sq
        tot_rho2 += rho2
        for i in range(d):
            for k in range(d):
                tot_a[i][k] += a_s[i][k]
            tot_b[i] += b_s[i]
        if cross:
            for i in range(d):
                for k in range(d):
                    tot_c_rho[i][k] += c_rho[i][k]
        if emph:
            for i in range(d):
                for k in range(d):
                    tot_a_e[i][k] += a_e[i][k]
                tot_b_e[i] += b_e[i]
        for i in range(m):
            for jj in range(n):
                tot_grad_k[i][jj] += grad_k[i][jj]
        for i in range(d):
            for k in range(d):
                tot_gram[i][k] += gram[i][k]
        all_states.append(states)
        all_rewards.append(rewards)
        all_rho.append(rhos)

    return RolloutSums(
        states=all_states,
        rewards=all_rewards,
        rho=all_rho,
        count=count,
        td_sq=tot_td_sq,
        rho2=tot_rho2,
        grad_k=tot_grad_k,
        gram=tot_gram,
        a=tot_a,
        b=tot_b,
        c_rho=tot_c_rho if cross else None,
        a_e=tot_a_e if emph else None,
        b_e=tot_b_e if emph else None,
    )
