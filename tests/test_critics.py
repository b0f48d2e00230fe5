"""The critics (MODEL.md 3.3-3.4, 9.9; python/offtd/critics.py).

- Each algorithm's batch update equals its textbook per-sample definition summed over the batch, written
  out below transition by transition from the rollout's own states, rewards and ratios (not from the
  kernel's statistics).
- Rust and the reference agree on every statistic (tests/test_parity_*.py) and on whole runs of every
  algorithm (here).
- Each algorithm's expected-update matrix agrees with the exact theory: the mean over independent
  rollouts of the matrix built from each rollout's statistics is within 5 standard errors of the exact
  population matrix, entry by entry.
- The known result: on the spec where no step size makes TD(0) stable, GTD2's expected update is stable
  for every eta and small enough steps, TDC's for eta large enough, and a run shows it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from offtd import critics
from offtd.api import run
from offtd.backend import STATS_CROSS, STATS_EMPHASIS, get_backend
from offtd.exact.expected_td import CriticSpec, exact_td
from offtd.model import problem_from_spec
from offtd.spec import load_spec, parse_override

ALL_STATS = STATS_CROSS | STATS_EMPHASIS
SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"


def _spec(*sets: str, path=None):
    return load_spec(path, dict(parse_override(s) for s in sets))


def _phi(s: np.ndarray) -> np.ndarray:
    n = s.shape[0]
    return np.array([s[i] * s[j] for i in range(n) for j in range(i, n)] + list(s) + [1.0])


def _textbook(alg: str, roll, w, h, gamma, clip, alpha_w, alpha_h):
    """The per-sample updates of the literature, summed over the batch and divided by N:
    TD(0)   w += a rho delta phi
    TDC     w += a rho (delta phi - gamma phi' (phi . h)),   h += b (rho delta - phi . h) phi
    GTD2    w += a rho (phi - gamma phi') (phi . h),          h += b (rho delta - phi . h) phi
    ETD(0)  w += a F rho delta phi, F_0 = 1, F_{t+1} = 1 + gamma rho_t F_t (interest 1, lambda 0)
    with rho the clipped ratio and delta = r + gamma w . phi' - w . phi."""
    B, H = roll.rho.shape
    dw, dh = np.zeros_like(w), np.zeros_like(h)
    for j in range(B):
        trace = 1.0
        for t in range(H):
            f, f2 = _phi(roll.states[j, t]), _phi(roll.states[j, t + 1])
            rho = min(float(roll.rho[j, t]), clip)
            delta = roll.rewards[j, t] + gamma * (w @ f2) - w @ f
            if alg == "td0":
                dw += rho * delta * f
            elif alg == "tdc":
                dw += rho * (delta * f - gamma * f2 * (f @ h))
                dh += (rho * delta - f @ h) * f
            elif alg == "gtd2":
                dw += rho * (f - gamma * f2) * (f @ h)
                dh += (rho * delta - f @ h) * f
            else:
                dw += trace * rho * delta * f
            trace = 1.0 + gamma * rho * trace
    n = B * H
    return w + alpha_w * dw / n, h + alpha_h * dh / n


@pytest.mark.parametrize("backend", ["rust", "python"])
@pytest.mark.parametrize("alg", critics.ALGORITHMS)
@pytest.mark.parametrize("clip_on", [False, True])
def test_batch_update_is_the_textbook_update_summed(backend, alg, clip_on):
    spec = _spec("policy.p_mix=0.2", f"rho.clip_enabled={str(clip_on).lower()}", "rho.clip=1.5")
    p = problem_from_spec(spec)
    be = get_backend(backend)
    rng = np.random.default_rng(7)
    w, h = rng.normal(size=p.d), rng.normal(size=p.d)
    k_pi, k_mu = 0.2 * rng.normal(size=(p.m, p.n)), 0.2 * rng.normal(size=(p.m, p.n))
    roll = be.rollout(p, w, k_pi, k_mu, 1, 4, 30, critics.rollout_stats(alg))
    got = critics.update(alg, w, h, roll, 0.3, 0.7)
    clip = p.rho_clip if clip_on else math.inf
    want_w, want_h = _textbook(alg, roll, w, h, p.gamma, clip, 0.3, 0.7)
    # the same sums in another order: rounding only (relative 1e-11 of the step's scale)
    for got_x, want_x, x0 in ((got.w, want_w, w), (got.h, want_h, h)):
        step = np.abs(want_x - x0).max() + 1e-300
        assert np.abs(got_x - want_x).max() <= 1e-11 * max(step, np.abs(x0).max()), alg
    if alg in ("td0", "etd"):
        assert np.array_equal(got.h, h)  # no secondary weights
    else:
        assert not np.array_equal(got.h, h)


@pytest.mark.parametrize("alg", ["tdc", "gtd2", "etd"])
def test_whole_runs_agree_across_backends(alg, tmp_path):
    sets = (f"critic.algorithm={alg}", "run.outer_iters=3", "run.probe_every=2", "run.horizon=20",
            "probes.fixed_point.batch_size=256", "probes.stability.batch_size=256",
            "probes.distribution.num_samples=256")  # fmt: skip
    reports = []
    for backend in ("rust", "python"):
        res = run(_spec(*sets), backend=backend, out=tmp_path / backend)
        reports.append(json.loads((res.run_dir / "report.json").read_text()))
    assert reports[0]["series"] == reports[1]["series"]
    assert reports[0]["probe_series"] == reports[1]["probe_series"]
    assert reports[0]["health"] == reports[1]["health"]


def _update_matrix(alg: str, roll, eta: float) -> np.ndarray:
    """G of the batch update read off critics.update itself (checked against the textbook above), not
    off critics.expected_matrix: z' - z = alpha_w (g - G z), so column k of G is
    -(step(e_k) - step(0)) / alpha_w, with alpha_h = eta alpha_w."""
    d = roll.a.shape[0]
    dim = 2 * d if critics.secondary_weights(alg) else d
    alpha_w = 1.0

    def step(z):
        w, h = z[:d], (z[d:] if dim > d else np.zeros(d))
        out = critics.update(alg, w, h, roll, alpha_w, eta * alpha_w)
        new = np.concatenate([out.w, out.h]) if dim > d else out.w
        return new - z

    base = step(np.zeros(dim))
    return np.column_stack([-(step(np.eye(dim)[k]) - base) / alpha_w for k in range(dim)])


@pytest.mark.parametrize("alg,eta", [("td0", 0.0), ("tdc", 2.0), ("gtd2", 0.5), ("etd", 0.0)])
def test_expected_matrix_agrees_with_the_exact_theory(alg, eta):
    """Mean over R = 60 independent rollouts (iterations 0..59 address independent streams) of the
    algorithm's matrix built from each rollout's statistics, against ExactTD.critic_pop. Each entry's z
    uses the replicates' standard error; 5 standard errors over ~150 entries: a false alarm has
    probability about 1e-4 under normality (the emphatic entries carry the trace's heavier noise, still
    finite at gamma = 0.5 and p_mix = 0.3)."""
    spec = _spec("policy.p_mix=0.3", "critic.gamma=0.5", "policy.sigma_pi=0.45", "policy.sigma_mu=0.5")
    p = problem_from_spec(spec)
    be = get_backend("rust")
    k_pi = np.array([[-0.1, 0.05], [0.0, -0.2]])
    k_mu = np.array([[0.05, 0.0], [-0.1, -0.1]])
    horizon, batch = 20, 200
    mats = []
    for it in range(60):
        roll = be.rollout(p, np.zeros(p.d), k_pi, k_mu, it, batch, horizon, ALL_STATS)
        mats.append(_update_matrix(alg, roll, eta))
    mats = np.array(mats)
    mean, se = mats.mean(axis=0), mats.std(axis=0, ddof=1) / math.sqrt(len(mats))
    ex = exact_td(p, k_pi, k_mu, horizon, 0.1, False, be, critic=CriticSpec(alg, eta))
    exact = ex.critic_pop
    assert exact is not None and exact.shape == mean.shape
    # structurally exact entries (zeros, the constant's row of C) up to the rounding of the differences
    zero = se <= 1e-12 * (1.0 + np.abs(mean))
    assert np.allclose(mean[zero], exact[zero], rtol=1e-9, atol=1e-9)
    z = np.abs(mean[~zero] - exact[~zero]) / se[~zero]
    assert z.max() < 5, (alg, float(z.max()))
    # and it is not trivially satisfied: a wrong discount in the theory is detected
    wrong = exact_td(problem_from_spec(_spec("policy.p_mix=0.3", "critic.gamma=0.6", "policy.sigma_pi=0.45",
                                             "policy.sigma_mu=0.5")), k_pi, k_mu, horizon, 0.1, False, be,
                     critic=CriticSpec(alg, eta)).critic_pop  # fmt: skip
    assert (np.abs(mean[~zero] - wrong[~zero]) / se[~zero]).max() > 5


def test_emphatic_theory_is_not_available_with_binding_clipping():
    spec = _spec("rho.clip_enabled=true", "rho.clip=1.2", "policy.p_mix=0.2")
    p = problem_from_spec(spec)
    k = np.zeros((p.m, p.n))
    ex = exact_td(p, k, k, 50, 0.1, True, get_backend("rust"), critic=CriticSpec("etd"))
    assert math.isnan(ex.pop.radius) and "clipping" in ex.note
    # TD(0)'s own theory exists there (equal means): the critic's matrix is what is missing
    assert math.isfinite(ex.td0.radius)


def test_gradient_td_is_stable_where_td0_is_not():
    """Sutton et al. (2009): with A nonsingular (and C positive definite), GTD2's expected update has
    eigenvalues with positive real parts for every eta > 0, TDC's for eta large enough; TD(0)'s does not
    here (exact min Re eig(A) = -1.54)."""
    spec = _spec(path=SPECS_DIR / "no_stable_step.toml")
    p = problem_from_spec(spec)
    k_pi, k_mu = np.array(spec.policy.k_init), np.array(spec.policy.k_mu_init)
    be = get_backend("rust")

    def summary(alg, eta):
        return exact_td(p, k_pi, k_mu, spec.run.horizon, 0.01, False, be, critic=CriticSpec(alg, eta)).pop

    assert summary("td0", 0.0).min_re < 0
    assert abs(np.linalg.det(exact_td(p, k_pi, k_mu, spec.run.horizon, 0.01, False, be).a_pop)) > 0
    for eta in (0.1, 1.0, 10.0, 100.0):
        s = summary("gtd2", eta)
        assert s.min_re > 0 and s.alpha_crit > 0, eta
    assert summary("tdc", 0.1).min_re < 0  # too slow a secondary step
    for eta in (1.0, 10.0, 100.0):
        assert summary("tdc", eta).min_re > 0, eta


def test_the_remedy_spec_runs_stable_where_td0_diverges(tmp_path):
    td0 = run(_spec(path=SPECS_DIR / "no_stable_step.toml"), out=tmp_path / "td0")
    gtd2 = run(_spec(path=SPECS_DIR / "critics_gtd2.toml"), out=tmp_path / "gtd2")
    by0 = {c["name"]: c for c in json.loads((td0.run_dir / "report.json").read_text())["health"]["checks"]}
    by2 = {c["name"]: c for c in json.loads((gtd2.run_dir / "report.json").read_text())["health"]["checks"]}
    assert by0["stable"]["status"] == "FAIL" and by0["finite"]["status"] == "FAIL"
    assert by2["stable"]["status"] == "PASS" and by2["finite"]["status"] == "PASS"
    assert "gtd2" in (gtd2.run_dir / "report.md").read_text().lower()
    # the advice of the diverging run names GTD2 among the checked remedies
    assert 'critic.algorithm = "gtd2"' in (td0.run_dir / "report.md").read_text()


@pytest.mark.parametrize("alg", ["td0", "tdc", "gtd2"])
def test_theory_and_sweep_columns_judge_the_specs_own_critic(alg):
    """`offtd theory` and a sweep's exact_* columns (exact/grid.py) describe the spec's critic, not TD(0):
    on critics_gtd2's data TD(0)'s min Re eig is negative and GTD2's and TDC's (at eta = 1) positive
    (the sign result above), and the numbers are those of the run's own first exact row (iteration 0
    runs at the initial gains the grid evaluates)."""
    from offtd.exact.grid import theory_row
    from offtd.loop import run_loop

    spec = _spec(f"critic.algorithm={alg}", "critic.alpha_w=0.001", "critic.alpha_h=0.001", "run.outer_iters=1",
                 "run.probe_every=1", path=SPECS_DIR / "critics_gtd2.toml")  # fmt: skip
    be = get_backend("rust")
    row = theory_row(spec, be)
    assert (row["exact_min_re_eig"] < 0) == (alg == "td0"), row
    first = run_loop(spec, be).exact_series[0]
    assert first["iter"] == 0.0
    for key in ("exact_radius", "exact_min_re_eig", "exact_alpha_w_crit"):
        assert row[key] == first[key] or (math.isnan(row[key]) and math.isnan(first[key])), key
