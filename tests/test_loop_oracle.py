"""One outer iteration recomputed from specs/MODEL.md, independently of offtd's code.

The oracle here draws its random numbers with numpy's own Philox (MODEL.md 1: numpy's
`Philox(counter=c, key=k)` produces block c + 1), simulates the rollout with vectorised numpy
(section 2), and applies the critic, actor and behaviour-tracking updates (sections 3.3-3.6), the teacher
by scipy's Lyapunov solver (3.7) and the relative error (3.7) from their formulas. It shares no code with
offtd beyond reading the spec. Every backend's first iterations must match it to rounding: the only
difference is the order of the sums (per trajectory and blocked in offtd, numpy's pairwise sums here),
so 1e-10 relative is generous for these sizes and far tighter than any formula error (a missing
1/sigma_pi^2, tracking toward the old gain, or a missing clip all change results at O(1)).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg

import offtd
from offtd.spec import load_spec

TAU = 6.283185307179586
PURPOSE = {"start": 1, "mix": 2, "action": 3, "env": 4}


def _blocks(seed: int, purpose: int, iteration: int, substream: int, count: int) -> np.ndarray:
    """Blocks 0..count-1 of a stream, shape (count, 4) uint64: block b has counter [b, iteration,
    substream, 0] and key [seed, purpose]; numpy's Philox starts one counter later than it is given."""
    start = (iteration << 64) + (substream << 128)  # the 256-bit counter of block 0
    bitgen = np.random.Philox(counter=(start - 1) % (1 << 256), key=seed + (purpose << 64))
    return bitgen.random_raw(4 * count).reshape(count, 4)


def _uniforms(seed, purpose, iteration, substream, count):
    words = _blocks(seed, purpose, iteration, substream, (count + 3) // 4).reshape(-1)[:count]
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _normals(seed, purpose, iteration, substream, count):
    blocks = _blocks(seed, purpose, iteration, substream, (count + 3) // 4)
    x = blocks[:, [0, 2]].reshape(-1)  # pair p uses words 2p (x) and 2p + 1 (y)
    y = blocks[:, [1, 3]].reshape(-1)
    u1 = 1.0 - (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u2 = (y >> np.uint64(11)).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    theta = TAU * u2
    out = np.empty(2 * r.size)
    out[0::2], out[1::2] = r * np.cos(theta), r * np.sin(theta)  # even index cos, odd index sin
    return out[:count]


def _features(s: np.ndarray) -> np.ndarray:
    n = s.shape[-1]
    iu, ju = np.triu_indices(n)
    return np.concatenate([s[..., iu] * s[..., ju], s, np.ones(s.shape[:-1] + (1,))], axis=-1)


def _teacher_w(spec, k: np.ndarray) -> np.ndarray:
    a, b = np.array(spec.env.a), np.array(spec.env.b)
    q, r = np.array(spec.env.q), np.array(spec.env.r)
    g, sp, c_r = spec.critic.gamma, spec.policy.sigma_pi, spec.env.reward_scale
    lmat = a + b @ k
    p = scipy.linalg.solve_discrete_lyapunov(math.sqrt(g) * lmat.T, q + k.T @ r @ k)
    c0 = (sp**2 * np.trace(r) + g * (sp**2 * np.trace(b.T @ p @ b) + spec.env.sigma_eps**2 * np.trace(p))) / (1 - g)
    n = a.shape[0]
    iu, ju = np.triu_indices(n)
    quad = np.where(iu == ju, 1.0, 2.0) * p[iu, ju]
    return -c_r * np.concatenate([quad, np.zeros(n), [c0]])


def _log_normal(a: np.ndarray, mean: np.ndarray, sigma: float) -> np.ndarray:
    d = a - mean
    return -0.5 * np.sum(d * d, axis=-1) / sigma**2 - a.shape[-1] * math.log(sigma)


def oracle_iteration(spec, t: int, w: np.ndarray, k_pi: np.ndarray, k_mu: np.ndarray) -> dict:
    """Iteration t of MODEL.md section 3 in numpy: the core metrics and the next (w, K_pi, K_mu)."""
    seed, B, H = spec.run.seed, spec.run.batch, spec.run.horizon
    a_mat, b_mat = np.array(spec.env.a), np.array(spec.env.b)
    q_mat, r_mat = np.array(spec.env.q), np.array(spec.env.r)
    n, m = a_mat.shape[0], b_mat.shape[1]
    pol = spec.policy
    p, sp, sm = pol.p_mix, pol.sigma_pi, pol.sigma_mu
    clip = spec.rho.clip if spec.rho.clip_enabled else math.inf
    g = spec.critic.gamma
    s = np.stack([spec.env.sigma_0 * _normals(seed, PURPOSE["start"], t, j, n) for j in range(B)])
    mix = np.stack([_uniforms(seed, PURPOSE["mix"], t, j, H) for j in range(B)])  # (B, H)
    z_a = np.stack([_normals(seed, PURPOSE["action"], t, j, H * m).reshape(H, m) for j in range(B)])
    z_e = np.stack([_normals(seed, PURPOSE["env"], t, j, H * n).reshape(H, n) for j in range(B)])
    sums = dict(td_sq=0.0, rho2=0.0, a=0.0, b=0.0, grad_k=0.0, gram=0.0)
    states = [s]
    for h in range(H):
        mean_pi, mean_mu = s @ k_pi.T, s @ k_mu.T
        from_pi = (mix[:, h] < p)[:, None]
        act = np.where(from_pi, mean_pi + sp * z_a[:, h], mean_mu + sm * z_a[:, h])
        lpi, lmu = _log_normal(act, mean_pi, sp), _log_normal(act, mean_mu, sm)
        if p == 0.0:
            lr = lpi - lmu
        else:
            lr = lpi - np.logaddexp(lmu + math.log1p(-p), lpi + math.log(p))
        rho = np.exp(lr)
        rho_bar = np.minimum(rho, clip)
        s_next = s @ a_mat.T + act @ b_mat.T + spec.env.sigma_eps * z_e[:, h]
        r = -spec.env.reward_scale * (np.einsum("bi,ij,bj->b", s, q_mat, s) + np.einsum("bi,ij,bj->b", act, r_mat, act))
        phi, phi_next = _features(s), _features(s_next)
        delta = r + g * phi_next @ w - phi @ w
        weight = rho_bar * delta
        sums["td_sq"] += float(delta @ delta)
        sums["rho2"] += float(rho @ rho)
        sums["a"] = sums["a"] + (rho_bar[:, None] * phi).T @ (phi - g * phi_next)
        sums["b"] = sums["b"] + (rho_bar * r) @ phi
        sums["grad_k"] = sums["grad_k"] + np.einsum("b,bi,bj->ij", weight, act - mean_pi, s)
        sums["gram"] = sums["gram"] + phi.T @ phi
        s = s_next
        states.append(s)
    N = B * H
    # TD(0) (MODEL.md 3.4): sum rho_bar delta phi = b - A w
    w_new = w + spec.critic.alpha_w * (sums["b"] - sums["a"] @ w) / N
    k_pi_new = k_pi + spec.actor.alpha_pi * (sums["grad_k"] / N) / sp**2
    k_mu_new = k_mu + pol.beta * (k_pi_new - k_mu)
    gram = sums["gram"] / N
    w_t = _teacher_w(spec, k_pi)
    e = w_new - w_t
    return {
        "td_loss": sums["td_sq"] / N,
        "mean_rho2": sums["rho2"] / N,
        "w_norm": float(np.linalg.norm(w_new)),
        "tracking_gap": float(np.linalg.norm(k_pi_new - k_mu_new)),
        "critic_teacher_error": math.sqrt(e @ gram @ e) / math.sqrt(w_t @ gram @ w_t),
        "k_pi_norm": float(np.linalg.norm(k_pi_new)),
        "next": (w_new, k_pi_new, k_mu_new),
        "states": np.stack(states, axis=1),
    }


def _initial_w(spec) -> np.ndarray:
    k = np.array(spec.policy.k_init)
    if spec.critic.init == "zeros":
        return np.zeros(_features(np.zeros(spec.env.state_dim)).size)
    w = _teacher_w(spec, k)
    if spec.critic.init == "teacher_noise":
        d = w.size
        w = w + spec.critic.init_noise * float(np.linalg.norm(w)) / math.sqrt(d) * _normals(spec.run.seed, 50, 0, 0, d)
    return w


NO_PROBES = {f"probes.{p}.enabled": False for p in ("distribution", "fixed_point", "stability", "q_kernel")}
CASES = {
    # a moving actor (K_pi moves at O(1e-2) an iteration), partial tracking, mixture
    "actor_tracking": {"actor.alpha_pi": 0.5, "policy.beta": 0.3, "policy.p_mix": 0.2, "policy.sigma_mu": 0.6},
    # clipping that binds, the critic starting at the noisy teacher
    "clipped_teacher_noise": {"rho.clip_enabled": True, "rho.clip": 1.2, "policy.sigma_mu": 0.3, "policy.sigma_pi": 0.5,
                              "critic.init": "teacher_noise", "critic.init_noise": 0.3, "actor.alpha_pi": 0.5},
    # p_mix = 0 (pure importance ratio pi/mu), unequal initial gains, n = 3, m = 1
    "p0_unequal_gains": {"env.state_dim": 3, "env.action_dim": 1, "policy.p_mix": 0.0, "policy.k_init": [[0.1, -0.2, 0.05]],
                         "policy.k_mu_init": [[0.0, 0.1, 0.0]], "actor.alpha_pi": 1.0, "policy.beta": 0.5},
    # beta = 1: the behaviour copies the target after every step, so the tracking gap is exactly 0
    "beta_one": {"policy.beta": 1.0, "actor.alpha_pi": 1.0},
}  # fmt: skip


@pytest.mark.parametrize("backend", ["rust", "python"])
@pytest.mark.parametrize("case", list(CASES))
def test_first_iterations_match_the_numpy_oracle(backend, case):
    overrides = {"run.outer_iters": 3, "run.horizon": 12, "run.batch": 3, "run.seed": 5, **NO_PROBES, **CASES[case]}
    spec = load_spec(None, overrides)
    res = offtd.run(spec, backend=backend)
    w = _initial_w(spec)
    k_pi = np.array(spec.policy.k_init)
    k_mu = np.array(spec.policy.k_mu_init)
    for t in range(3):
        want = oracle_iteration(spec, t, w, k_pi, k_mu)
        for metric in ("td_loss", "mean_rho2", "w_norm", "tracking_gap", "critic_teacher_error", "k_pi_norm"):
            got = res.series[metric][t]
            assert got == pytest.approx(want[metric], rel=1e-10, abs=1e-14), (case, t, metric)
        w, k_pi, k_mu = want["next"]
    if case == "beta_one":
        assert np.all(res.series["tracking_gap"] == 0.0)
    # the actor really moved, so the actor and tracking formulas were exercised
    assert not np.allclose(k_pi, np.array(spec.policy.k_init))


def test_oracle_states_are_the_rollout_states():
    # the rollout kernel's stored states equal the oracle's simulated ones (the same draws and dynamics)
    spec = load_spec(None, {"run.outer_iters": 1, "run.horizon": 7, "run.batch": 2, "policy.p_mix": 0.3, **NO_PROBES})
    from offtd.backend import get_backend
    from offtd.model import problem_from_spec

    roll = get_backend("rust").rollout(problem_from_spec(spec), np.zeros(6), np.zeros((2, 2)), np.zeros((2, 2)), 0, 2, 7)
    want = oracle_iteration(spec, 0, np.zeros(6), np.zeros((2, 2)), np.zeros((2, 2)))["states"]
    assert np.allclose(roll.states, want, rtol=1e-13, atol=1e-15)


def _small(**over):
    base = {"run.outer_iters": 3, "run.horizon": 10, "run.batch": 2, "run.probe_every": 1,
            "probes.fixed_point.batch_size": 64, "probes.fixed_point.repeats": 4, "probes.stability.batch_size": 64,
            "probes.stability.repeats": 4, "probes.distribution.num_samples": 64, "probes.distribution.action_samples": 8}  # fmt: skip
    return load_spec(None, {**base, **over})


@pytest.mark.parametrize("backend", ["python", "rust"])
def test_progress_counts_completed_iterations_and_the_last_ratios_are_kept(backend):
    from offtd.backend import get_backend
    from offtd.loop import run_loop

    seen = []
    res = run_loop(_small(), get_backend(backend), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    # the probes see their iteration's exact row, and the distribution probe reports its sizes
    fp, ex = res.probe_series["fixed_point_probe"][-1], res.exact_series[-1]
    assert fp["iter"] == ex["iter"] and (fp["teacher_gap_exact"] == ex["exact_teacher_gap"] or math.isnan(ex["exact_teacher_gap"]))
    assert math.isfinite(res.probe_series["stability_probe"][-1]["stability_radius_z"])  # against the exact pool value
    dist = res.probe_series["distribution_probe"][-1]
    assert (dist["num_samples"], dist["action_samples"]) == (64.0, 8.0)
    # the last probe iteration's pi/b ratios of the two transition probes, whose extremes its row reports
    assert sorted(res.last_ratios) == ["fixed_point_probe", "stability_probe"]
    for probe in ("fixed_point_probe", "stability_probe"):
        rho, row = res.last_ratios[probe], res.probe_series[probe][-1]
        assert rho.shape == (64,) and (rho.min(), rho.max()) == (row["rho_min"], row["rho_max"])


def test_fixed_point_gaps_without_a_teacher_are_relative_to_the_solution():
    # K = 0.4 I: A + B K = 1.1 I + 0.1 on the superdiagonal, sqrt(0.9) x 1.1 > 1: no teacher at any
    # iteration (alpha_pi = 0). The gaps are then relative to w_sharp's own G-norm (MODEL.md 4.3):
    # at iteration 0 the critic is 0, so w_gap = ||0 - w_sharp|| / ||w_sharp|| = 1 exactly.
    from offtd.backend import get_backend
    from offtd.loop import run_loop

    spec = _small(**{"policy.k_init": [[0.4, 0.0], [0.0, 0.4]], "actor.alpha_pi": 0.0, "critic.init": "zeros"})
    first = run_loop(spec.replace(**{"run.outer_iters": 1}), get_backend("rust"))  # one iteration, probed
    row = first.probe_series["fixed_point_probe"][0]
    assert first.teacher_undefined_iters == [0] and row["iter"] == 0.0
    assert row["w_gap"] == 1.0 and math.isnan(row["teacher_gap"])
    res = run_loop(spec, get_backend("rust"))
    assert res.teacher_undefined_iters == [0, 1, 2]
    rows = res.probe_series["fixed_point_probe"]
    assert len(rows) >= 2 and math.isnan(rows[0]["teacher_gap"]) and math.isfinite(rows[0]["w_gap"])
    assert (rows[0]["w_sharp_drift"], rows[0]["w_sharp_drift_defined"]) == (0.0, 0.0)
    for r in rows[1:]:  # successive solutions on new pools differ: a finite, positive drift
        assert r["w_sharp_drift_defined"] == 1.0 and isinstance(r["w_sharp_drift"], float)
        assert math.isfinite(r["w_sharp_drift"]) and r["w_sharp_drift"] > 0.0 and math.isfinite(r["w_gap"])
