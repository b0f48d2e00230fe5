"""Unit tests of the fixed-point and stability probes (specs/MODEL.md 4.3, 4.4) on transition sums the
test chooses: diagonal sub-batch matrices, whose eigenvalues, solutions, power iterations and
jackknife are written out by hand, so every number a probe row reports has an independent oracle.
The backend is the reference one except for `transitions` and `normals`, which return those sums and a
fixed start vector."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from offtd.backend import TransitionSums
from offtd.model import problem_from_spec
from offtd.probes import ProbeContext, ProbeState, fixed_point_probe, stability_probe
from offtd.reference import ReferenceBackend
from offtd.spec import load_spec

D = 6  # n = 2: d = 6 features
R = 4  # sub-batches of 10 samples: K = 40
DIAG = np.array(
    [
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        [1.5, 2.5, 2.0, 4.5, 6.0, 5.0],
        [0.5, 3.0, 3.5, 3.0, 5.5, 7.0],
        [2.0, 1.5, 2.5, 4.0, 4.5, 6.5],
    ]
)  # A_r = diag(DIAG[r]): positive, distinct
B = np.array([[1.0, -1.0, 2.0, 0.5, 0.0, 3.0], [2.0, 0.0, 1.0, 1.5, -1.0, 2.0], [0.0, 1.0, 1.0, 0.5, 1.0, 4.0], [1.0, -2.0, 3.0, 0.5, 2.0, 3.0]])


class StubBackend(ReferenceBackend):
    def __init__(self, diag=DIAG, b=B):
        self.diag, self.b = diag, b

    def transitions(self, problem, k_pi, k_mu, pool, count, repeats, base, iteration):
        assert (count, repeats) == (40, R)
        counts = np.full(R, 10)
        a_sums = np.stack([np.diag(10 * d) for d in self.diag])
        return TransitionSums(a_sums=a_sums, b_sums=10 * self.b, counts=counts, rho=np.linspace(0.5, 2.0, 40))

    def normals(self, seed, purpose, iteration, substream, count):
        return np.ones(count)


def _ctx(alpha=0.1, teacher_w=None, w=None):
    spec = load_spec(None, {"critic.alpha_w": alpha, "probes.stability.batch_size": 40, "probes.stability.repeats": R,
                            "probes.stability.power_iters": 30, "probes.fixed_point.batch_size": 40,
                            "probes.fixed_point.repeats": R, "probes.fixed_point.tol": 1e-13})  # fmt: skip
    problem = problem_from_spec(spec)
    rollout = SimpleNamespace(states=np.zeros((1, 2, 2)), count=100, gram=100 * np.eye(D))  # G = I: the G-norm is Euclidean
    teacher = SimpleNamespace(defined=teacher_w is not None, w=teacher_w if teacher_w is not None else np.full(D, math.nan))
    exact_row = {"exact_radius_pool": 0.5, "exact_min_re_eig_pool": 1.5, "exact_teacher_gap": 0.25}
    return ProbeContext(spec=spec, problem=problem, backend=StubBackend(), iteration=3, w=np.zeros(D) if w is None else w,
                        k_pi=np.zeros((2, 2)), k_mu=np.zeros((2, 2)), rollout=rollout, teacher=teacher, td_loss=1.0,
                        train_step_scale=alpha / 50, exact=None, exact_row=exact_row)  # fmt: skip


def _power(m_diag: np.ndarray, k: int) -> float:
    """Power iteration on diag(m) from a vector of ones: lam_k = ||M^k 1|| / ||M^(k-1) 1||."""
    return math.sqrt(np.sum(m_diag ** (2 * k))) / math.sqrt(np.sum(m_diag ** (2 * k - 2)))


def test_stability_probe_by_hand():
    alpha = 0.1
    state = ProbeState()
    ctx = _ctx(alpha)
    ctx.exact = SimpleNamespace(pop=SimpleNamespace(eig=np.array([1.0, 2.0])))
    row = stability_probe(ctx, state)
    # the eigenvalues kept for the plots: A_hat's (the mean diagonal) and the exact ones
    assert np.allclose(np.sort(state.eigenvalues["estimate"].real), np.sort(DIAG.mean(axis=0)), rtol=1e-13)
    assert list(state.eigenvalues["exact"]) == [1.0, 2.0]
    full = DIAG.mean(axis=0)  # equal counts: A_hat is the mean of the A_r
    radius = lambda a: np.max(np.abs(1 - alpha * a))  # noqa: E731
    # the delete-a-group jackknife (MODEL.md 9.7): A_hat without sub-batch r is the mean of the other
    # three diagonals (equal counts); se^2 = (R - 1)/R sum_r (theta_(-r) - their mean)^2
    loo = np.array([np.delete(DIAG, r, axis=0).mean(axis=0) for r in range(R)])
    loo_r = np.array([radius(a) for a in loo])
    loo_a = loo.min(axis=1)
    t = stats.t.ppf(0.975, R - 1)
    se_r = math.sqrt((R - 1) / R * np.sum((loo_r - loo_r.mean()) ** 2))
    se_a = math.sqrt((R - 1) / R * np.sum((loo_a - loo_a.mean()) ** 2))
    # eigenvalues through LAPACK: 1e-13 relative
    assert row["stability_radius"] == pytest.approx(radius(full), rel=1e-13)
    assert row["stability_radius_se"] == pytest.approx(se_r, rel=1e-12)
    assert row["stability_radius_lo"] == pytest.approx(radius(full) - t * se_r, rel=1e-12)
    assert row["stability_radius_hi"] == pytest.approx(radius(full) + t * se_r, rel=1e-12)
    assert row["stability_radius_z"] == pytest.approx((radius(full) - 0.5) / se_r, rel=1e-12)
    assert row["a_min_real_eig"] == pytest.approx(full.min(), rel=1e-13)
    assert row["a_min_real_eig_se"] == pytest.approx(se_a, rel=1e-12)
    assert row["a_min_real_eig_lo"] == pytest.approx(full.min() - t * se_a, rel=1e-12)
    assert row["a_min_real_eig_z"] == pytest.approx((full.min() - 1.5) / se_a, rel=1e-12)
    # the power-iteration proxy of I - alpha A (30 steps): the full batch, and the sub-batches' mean and
    # sample standard deviation (ddof = 1)
    proxies = np.array([_power(1 - alpha * a, 30) for a in DIAG])
    assert row["stability_proxy"] == pytest.approx(_power(1 - alpha * full, 30), rel=1e-12)
    assert row["stability_proxy_mean"] == pytest.approx(proxies.mean(), rel=1e-12)
    assert row["stability_proxy_std"] == pytest.approx(np.std(proxies, ddof=1), rel=1e-10)
    assert (row["batch_size"], row["repeats"], row["power_iters"]) == (40.0, 4.0, 30.0)
    # step scale (alpha / K) K / N with N = 100 rollout transitions; training's is alpha / 50 here
    assert row["stability_probe_step_scale"] == pytest.approx(alpha / 100, rel=1e-15)
    assert row["stability_probe_step_scale_ratio"] == pytest.approx(0.5, rel=1e-15)
    assert row["rho_max"] == 2.0 and row["rho_min"] == 0.5


def test_stability_probe_with_one_sub_batch_has_no_spread():
    ctx = _ctx()
    ctx.spec = ctx.spec.replace(**{"probes.stability.repeats": 1})
    one = DIAG[:1]
    ctx.backend = StubBackend(diag=one, b=B[:1])
    ctx.backend.transitions = lambda *a: TransitionSums(np.diag(40 * one[0])[None], 40 * B[:1], np.array([40]), np.ones(40))
    row = stability_probe(ctx, ProbeState())
    assert row["stability_proxy_std"] == 0.0 and math.isnan(row["stability_radius_se"])


def test_fixed_point_probe_by_hand():
    w_t = np.array([0.5, -0.2, 0.3, 0.1, 0.0, 0.4])  # the teacher; G = I so its scale is ||w_t||
    w = np.array([0.2, 0.1, 0.0, 0.3, -0.1, 0.2])
    state = ProbeState()
    first = _ctx(teacher_w=w_t, w=w)
    row = fixed_point_probe(first, state)
    # the row records the solver settings it ran with (saved with the probe series of the run)
    cfg = first.spec.probes.fixed_point
    assert (row["num_iters"], row["tol"], row["repeats"]) == (float(cfg.num_iters), cfg.tol, float(R))
    a_full, b_full = DIAG.mean(axis=0), B.mean(axis=0)
    w_sharp = b_full / a_full  # A_hat w = b_hat, A_hat diagonal
    scale = np.linalg.norm(w_t)
    # GMRES to tol 1e-13 relative: 1e-10 relative on the gaps
    assert row["converged"] == 1.0
    assert row["w_gap"] == pytest.approx(np.linalg.norm(w - w_sharp) / scale, rel=1e-10)
    assert row["teacher_gap"] == pytest.approx(np.linalg.norm(w_sharp - w_t) / scale, rel=1e-10)
    # delete-one-group jackknife over the R sub-batches (MODEL.md 4.3): w_(-r) solves the fixed point of
    # the other three, Cov = (R - 1)/R sum_r (w_(-r) - mean)(...)^T, noise sqrt(tr Cov) / scale
    w_loo = np.array([B[np.arange(R) != r].mean(axis=0) / DIAG[np.arange(R) != r].mean(axis=0) for r in range(R)])
    dev = w_loo - w_loo.mean(axis=0)
    noise = math.sqrt((R - 1) / R * np.sum(dev * dev)) / scale
    assert row["w_gap_se"] == pytest.approx(noise, rel=1e-10) and row["teacher_gap_se"] == row["w_gap_se"]
    assert (row["w_sharp_drift"], row["w_sharp_drift_defined"]) == (0.0, 0.0)
    assert row["teacher_gap_exact"] == 0.25  # the iteration's exact gap, shown next to the estimate
    # the next probe iteration: drift from this w_sharp, relative to the teacher's scale
    ctx = _ctx(teacher_w=w_t, w=w)
    ctx.backend = StubBackend(diag=DIAG * 2.0)
    again = fixed_point_probe(ctx, state)
    assert again["w_sharp_drift_defined"] == 1.0
    assert again["w_sharp_drift"] == pytest.approx(np.linalg.norm(w_sharp / 2 - w_sharp) / scale, rel=1e-10)


def test_fixed_point_probe_without_a_teacher_is_relative_to_w_sharp():
    w = np.array([0.2, 0.1, 0.0, 0.3, -0.1, 0.2])
    row = fixed_point_probe(_ctx(teacher_w=None, w=w), ProbeState())
    w_sharp = B.mean(axis=0) / DIAG.mean(axis=0)
    scale = np.linalg.norm(w_sharp)
    assert row["w_gap"] == pytest.approx(np.linalg.norm(w - w_sharp) / scale, rel=1e-10)
    assert math.isnan(row["teacher_gap"])
    w_loo = np.array([B[np.arange(R) != r].mean(axis=0) / DIAG[np.arange(R) != r].mean(axis=0) for r in range(R)])
    dev = w_loo - w_loo.mean(axis=0)
    assert row["w_gap_se"] == pytest.approx(math.sqrt((R - 1) / R * np.sum(dev * dev)) / scale, rel=1e-10)
