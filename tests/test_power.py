"""Power iteration of the reference backend (specs/MODEL.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offtd.reference import ReferenceBackend
from offtd.reference.power import power_iteration

EPS = np.finfo(float).eps


def _gap_matrix(seed: int, d: int, lam1: float, ratio: float):
    """M = Q diag(lambda) Q^-1 with |lambda_1| = |lam1| and every other |lambda_i| <= ratio |lam1|.
    Q is random (nonsymmetric M) with a bounded condition number."""
    gen = np.random.default_rng(seed)
    q = np.eye(d) + 0.3 * gen.standard_normal((d, d)) / np.sqrt(d)
    rest = gen.uniform(-ratio, ratio, d - 1) * abs(lam1)
    lam = np.concatenate([[lam1], rest])
    m = q @ np.diag(lam) @ np.linalg.inv(q)
    v0 = gen.standard_normal(d)
    return m, v0, q, lam


def _error_bound(q, lam, v0, iters) -> float:
    """A rigorous bound on |lam_k - |lambda_1|| / |lambda_1| after k = iters steps.

    With c = Q^-1 v0, M^k v0 = lambda_1^k (c_1 q_1 + e_k), ||e_k|| <= ||Q||_2 ||c_rest|| r^k,
    r = max_{i>1} |lambda_i| / |lambda_1|. The estimate is ||M^k v0|| / ||M^{k-1} v0||, so
    |lam_k/|lambda_1| - 1| <= (eps_k + eps_{k-1}) / (a - eps_{k-1}) with a = |c_1| ||q_1||."""
    c = np.linalg.solve(q, v0)
    r = np.max(np.abs(lam[1:])) / abs(lam[0]) if len(lam) > 1 else 0.0
    a = abs(c[0]) * np.linalg.norm(q[:, 0])
    scale = np.linalg.norm(q, 2) * np.linalg.norm(c[1:])
    e_k = scale * r**iters
    e_k1 = scale * r ** (iters - 1)
    if a <= e_k1:
        return np.inf
    return (e_k + e_k1) / (a - e_k1)


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 8),
    st.floats(0.5, 3.0),
    st.booleans(),
    st.sampled_from([0.3, 0.6, 0.8]),
)
def test_power_iteration_converges_to_spectral_radius(seed, d, lam1, negative, ratio):
    lam1 = -lam1 if negative else lam1
    m, v0, q, lam = _gap_matrix(seed, d, lam1, ratio)
    iters = 60
    est = power_iteration(m.tolist(), v0.tolist(), iters)
    radius = np.max(np.abs(np.linalg.eigvals(m)))
    # Tolerance: the convergence bound (gap ratio^iters times the start vector's and Q's constants), plus
    # rounding: each step's norm and matvec carry ~ d eps relative error; 1e3 d eps covers it and numpy's
    # eigenvalue error (~ cond(Q) eps).
    tol = _error_bound(q, lam, v0, iters) + 1e3 * d * EPS * np.linalg.cond(q)
    assert abs(est - radius) <= tol * radius
    assert abs(est - abs(lam1)) <= tol * abs(lam1)


def test_power_iteration_is_noisy_without_gap():
    # No gap (a rotation by 90 degrees scaled by 0.9: eigenvalues +-0.9i): every ||M v|| is exactly 0.9
    # times ||v||, so the estimate is the radius regardless of convergence.
    m = [[0.0, -0.9], [0.9, 0.0]]
    assert power_iteration(m, [1.0, 2.0], 7) == pytest.approx(0.9, rel=4 * EPS)


def test_power_iteration_zero_and_nilpotent():
    # lam == 0 stops with 0.
    assert power_iteration([[0.0, 0.0], [0.0, 0.0]], [1.0, 1.0], 5) == 0.0
    # Nilpotent: M v0 != 0 but M^2 = 0, so the second step gives lam = 0 -> 0.
    assert power_iteration([[0.0, 1.0], [0.0, 0.0]], [0.0, 1.0], 5) == 0.0
    # With one step the estimate is ||M v0|| / ||v0||.
    assert power_iteration([[0.0, 1.0], [0.0, 0.0]], [0.0, 2.0], 1) == 1.0


def test_power_iteration_last_lam_definition():
    # The estimate is the last lam, not an average: for a diagonal M and v0 = e_1 + e_2 the exact
    # sequence is lam_k = sqrt(4^k + 1) / sqrt(4^(k-1) + 1), checked for k = 1..4.
    m = [[2.0, 0.0], [0.0, 1.0]]
    for k in range(1, 5):
        expected = np.sqrt(4.0**k + 1.0) / np.sqrt(4.0 ** (k - 1) + 1.0)
        assert power_iteration(m, [1.0, 1.0], k) == pytest.approx(expected, rel=16 * EPS)


def test_backend_power_iteration():
    m, v0, _, _ = _gap_matrix(1, 5, 1.5, 0.5)
    be = ReferenceBackend()
    assert be.power_iteration(m, v0, 30) == power_iteration(m.tolist(), v0.tolist(), 30)


def test_no_iteration_gives_nan_in_both_backends():
    # MODEL.md 6: the estimate is the last lam, and with iters = 0 there is none: NaN, a float
    from offtd import _core

    lam = power_iteration([[2.0, 0.0], [0.0, 1.0]], [1.0, 1.0], 0)
    assert isinstance(lam, float) and np.isnan(lam)
    assert np.isnan(_core.power_iteration(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([1.0, 1.0]), 0))
