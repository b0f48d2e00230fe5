"""GMRES(restart = d) and the checking LU solve of the reference backend (specs/MODEL.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offtd.reference import ReferenceBackend
from offtd.reference.solver import gmres, lu_solve

EPS = np.finfo(float).eps


def _system(seed: int, d: int, spread: float):
    """A random nonsymmetric system A = c I + spread * G / sqrt(d) (G standard normal): the
    perturbation's spectral norm is about 2 spread, so with c = 3 and spread <= 1 A is well
    conditioned (cond(A) <~ 5) yet far from symmetric."""
    gen = np.random.default_rng(seed)
    a = 3.0 * np.eye(d) + spread * gen.standard_normal((d, d)) / np.sqrt(d)
    b = gen.standard_normal(d)
    return a, b


@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.floats(0.05, 1.0), st.sampled_from([1e-6, 1e-10]))
def test_gmres_matches_numpy(seed, d, spread, tol):
    a, b = _system(seed, d, spread)
    res = gmres(a.tolist(), b.tolist(), max_iters=10 * d, tol=tol)
    exact = np.linalg.solve(a, b)
    x = np.array(res.x)
    assert res.converged
    # `residual` is the true relative residual at exit.
    true_res = np.linalg.norm(b - a @ x) / np.linalg.norm(b)
    assert res.residual == pytest.approx(true_res, rel=1e-6, abs=100 * EPS)
    assert res.residual <= tol
    # Forward error <= cond(A) * relative residual; the extra d * eps * cond covers numpy's own solve.
    cond = np.linalg.cond(a)
    err = np.linalg.norm(x - exact) / np.linalg.norm(exact)
    assert err <= cond * tol * 1.01 + 100 * d * EPS * cond
    # Small, well-conditioned: full GMRES needs at most d inner iterations (exact arithmetic), and
    # rounding (~1e-15) is far below tol, so no restart happens.
    assert 1 <= res.iterations <= d


@given(st.integers(0, 2**32 - 1), st.integers(2, 10))
def test_gmres_iteration_budget(seed, d):
    # A matrix with spread-out eigenvalues needs about d iterations; a budget of 1 must stop after 1
    # inner iteration, report it, and (for d >= 2 with a generic b) not claim convergence at 1e-12.
    gen = np.random.default_rng(seed)
    q, _ = np.linalg.qr(gen.standard_normal((d, d)))
    a = q @ np.diag(np.linspace(1.0, 10.0, d)) @ q.T + 0.1 * np.triu(gen.standard_normal((d, d)), 1)
    b = gen.standard_normal(d)
    res = gmres(a.tolist(), b.tolist(), max_iters=1, tol=1e-12)
    assert res.iterations == 1
    true_res = np.linalg.norm(b - a @ np.array(res.x)) / np.linalg.norm(b)
    assert res.residual == pytest.approx(true_res, rel=1e-9)
    assert res.converged == (res.residual <= 1e-12)
    assert not res.converged  # one Krylov step cannot solve a system with d >= 2 distinct eigenvalues


def test_gmres_restarts_use_the_budget():
    # Budget larger than d on a hard-ish system: iterations may exceed d (restarts) but never the budget,
    # and the reported residual is the true one.
    gen = np.random.default_rng(11)
    d = 6
    a = np.diag(np.logspace(0, 6, d)) + np.triu(gen.standard_normal((d, d)), 1)
    b = gen.standard_normal(d)
    res = gmres(a.tolist(), b.tolist(), max_iters=3 * d, tol=1e-15)
    assert res.iterations <= 3 * d
    true_res = np.linalg.norm(b - a @ np.array(res.x)) / np.linalg.norm(b)
    assert res.residual == pytest.approx(true_res, rel=1e-9, abs=EPS)
    # cond ~ 1e6 and d = 6: the solution is accurate to ~ cond * eps relative.
    exact = np.linalg.solve(a, b)
    assert np.linalg.norm(np.array(res.x) - exact) / np.linalg.norm(exact) < 1e6 * 1e3 * EPS


def test_gmres_zero_rhs():
    a = [[2.0, 1.0], [0.0, 3.0]]
    res = gmres(a, [0.0, 0.0], max_iters=10, tol=1e-8)
    assert res.x == [0.0, 0.0] and res.converged and res.iterations == 0 and res.residual == 0.0
    be = ReferenceBackend()
    out = be.solve(np.array(a), np.zeros(2), 10, 1e-8)
    assert out.converged and out.iterations == 0 and out.residual == 0.0
    assert np.array_equal(out.x, np.zeros(2))


def test_gmres_identity_one_iteration():
    # A = I: the first Krylov vector is b/||b||, so one iteration gives x = b (breakdown h_10 = 0).
    b = [1.0, -2.0, 0.5]
    res = gmres(np.eye(3).tolist(), b, max_iters=10, tol=1e-12)
    assert res.iterations == 1 and res.converged
    assert np.allclose(res.x, b, rtol=4 * EPS, atol=0)


def test_backend_solve_wraps_gmres():
    a, b = _system(5, 6, 0.5)
    out = ReferenceBackend().solve(a, b, 20, 1e-10)
    ref = gmres(a.tolist(), b.tolist(), 20, 1e-10)
    assert isinstance(out.x, np.ndarray) and out.x.dtype == np.float64
    assert out.x.tolist() == ref.x and out.iterations == ref.iterations and out.residual == ref.residual


@given(st.integers(0, 2**32 - 1), st.integers(1, 10))
def test_lu_solve_matches_numpy(seed, d):
    gen = np.random.default_rng(seed)
    a = gen.standard_normal((d, d)) + 0.5 * np.eye(d)
    b = gen.standard_normal(d)
    cond = np.linalg.cond(a)
    if cond > 1e8:
        return  # nearly singular draw: both solves are meaningless there
    x = np.array(lu_solve(a.tolist(), b.tolist()))
    exact = np.linalg.solve(a, b)
    # Backward-stable LU: relative forward error <~ d * eps * cond for both solvers; factor 100 slack.
    assert np.linalg.norm(x - exact) <= 100 * d * EPS * cond * np.linalg.norm(exact)


def test_lu_solve_needs_pivoting():
    # a[0][0] = 0: without pivoting the first step divides by zero.
    a = [[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [4.0, -3.0, 8.0]]
    b = [1.0, 2.0, 3.0]
    x = lu_solve(a, b)
    assert np.allclose(np.array(a) @ np.array(x), b, rtol=0, atol=1e-14)


def test_lu_solve_pivot_ties_keep_the_first_row():
    """The documented pivot rule: the FIRST row with the largest |a_ik|. Here |a_00| = |a_10| = 0.7; the
    solve is written out for the first row as pivot, and (the test is sharp) the other row as pivot
    rounds x_0 differently, although both are exact in exact arithmetic."""
    a, b = [[0.7, 2.0], [-0.7, 5.0]], [0.1, 0.3]

    def eliminate(a, b):
        f = a[1][0] / a[0][0]
        x1 = (b[1] - f * b[0]) / (a[1][1] - f * a[0][1])
        return [(b[0] - a[0][1] * x1) / a[0][0], x1]

    first = eliminate(a, b)
    swapped = eliminate(a[::-1], b[::-1])
    assert first != swapped
    assert lu_solve(a, b) == first
