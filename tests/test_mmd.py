"""MMD^2 and the median-heuristic bandwidth of the reference backend (specs/MODEL.md 4.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offtd.reference import ReferenceBackend
from offtd.reference.mmd import mmd2, mmd_sigma

EPS = np.finfo(float).eps


def _numpy_mmd2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The same formula, straightforwardly in numpy."""
    m = len(x)
    z = np.vstack([x, y])
    dist = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1))
    iu = np.triu_indices(2 * m, k=1)
    pair_d = np.sort(dist[iu])
    med = pair_d[math.ceil(len(pair_d) / 2) - 1]
    sigma = 1.0 if med == 0 else med
    k = np.exp(-(dist**2) / (2 * sigma**2))
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    off = ~np.eye(m, dtype=bool)
    # paired: the cross sum leaves out k(x_i, y_i) as the within-set sums leave out k(x_i, x_i)
    val = kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy[off].sum() / (m * (m - 1))
    return float(val), float(sigma)


@given(st.integers(0, 2**32 - 1), st.integers(2, 12), st.integers(1, 4), st.floats(0.0, 2.0))
def test_mmd2_matches_numpy(seed, m, dim, shift):
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((m, dim))
    y = gen.standard_normal((m, dim)) + shift
    got, sigma = mmd2(x.tolist(), y.tolist())
    ref, ref_sigma = _numpy_mmd2(x, y)
    # The bandwidth is one order statistic of distances summed over <= 4 coordinates: a few ulps apart at
    # most between the two summation orders.
    assert sigma == pytest.approx(ref_sigma, rel=16 * EPS)
    # Kernel values lie in (0, 1]; each of the three sums has <= m^2 terms, so summation order moves
    # each normalised part by <= m^2 eps (plus ~16 eps from sigma's last bits through the exponent,
    # whose argument is <= ~ 50 here). mmd2 is a difference of O(1) parts: absolute tolerance 1e-12.
    assert got == pytest.approx(ref, abs=1e-12)


def test_median_rule_hand_example():
    # Pooled points on a line: 0, 1 (x) and 3, 7 (y). Distances 1, 3, 7, 2, 6, 4; sorted
    # 1, 2, 3, 4, 6, 7; L = 6, rank ceil(6/2) = 3 -> 3 (the lower median; the midpoint would be 3.5).
    assert mmd_sigma([[0.0], [1.0]], [[3.0], [7.0]]) == 3.0
    # M = 3: pooled 0, 1, 2 | 10, 20, 40. L = 15 distances, sorted
    # 1, 1, 2, 8, 9, 10, 10, 18, 19, 20, 20, 30, 38, 39, 40; rank ceil(15/2) = 8 -> 18 (the true median).
    assert mmd_sigma([[0.0], [1.0], [2.0]], [[10.0], [20.0], [40.0]]) == 18.0
    # Euclidean distance in 2-d: (0,0)-(3,4) = 5.
    assert mmd_sigma([[0.0, 0.0], [0.0, 0.0]], [[3.0, 4.0], [3.0, 4.0]]) == 5.0  # 0,5,5,5,5,0 -> 5


def test_mmd2_by_hand():
    # x = 0, 1 and y = 3, 7 on a line: sigma = 3 (test_median_rule_hand_example), 2 sigma^2 = 18.
    # Sxx = k(0,1) + k(1,0), Syy = k(3,7) + k(7,3); the paired cross sum leaves out (x_0, y_0) = (0, 3)
    # and (x_1, y_1) = (1, 7): Sxy = k(0,7) + k(1,3). M(M-1) = 2.
    e1, e16, e49, e4 = (math.exp(-d / 18.0) for d in (1.0, 16.0, 49.0, 4.0))
    sxx, syy, sxy = e1 + e1, e16 + e16, e49 + e4
    value, sigma = mmd2([[0.0], [1.0]], [[3.0], [7.0]])
    assert sigma == 3.0
    assert value == (sxx / 2.0 + syy / 2.0) - (2.0 * sxy) / 2.0
    # ~ 0.946 + 0.411 - (0.066 + 0.801) = 0.491 > 0: the sets differ
    assert value > 0.0


def test_zero_median_gives_unit_bandwidth():
    pts = [[1.0, 2.0]] * 3
    value, sigma = mmd2(pts, pts)
    assert sigma == 1.0
    # All kernel values are exp(0) = 1: 1 + 1 - 2 = 0 exactly.
    assert value == 0.0


def test_identical_sets_and_shift_sign():
    gen = np.random.default_rng(4)
    x = gen.standard_normal((10, 2))
    far = x + 50.0
    value, sigma = mmd2(x.tolist(), far.tolist())
    # The whole statistic by hand in numpy (MODEL.md 4.1): the bandwidth is the lower median of the pooled
    # pairwise distances, and mmd2 the mean over i != j of k(x_i,x_j) + k(y_i,y_j) - k(x_i,y_j) - k(x_j,y_i).
    z = np.vstack([x, far])
    dist = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    med = np.sort(dist)[(dist.size + 1) // 2 - 1]
    assert sigma == pytest.approx(med, rel=1e-12)

    def k(u, v):
        return np.exp(-((u[:, None, :] - v[None, :, :]) ** 2).sum(-1) / (2 * med * med))

    off = ~np.eye(len(x), dtype=bool)
    h = k(x, x) + k(far, far) - k(x, far) - k(x, far).T
    assert value == pytest.approx(h[off].mean(), rel=1e-10)
    assert value > 0.5  # and far-apart sets are told apart (a wrong sign or a missing term is not)


def test_expected_mmd2_is_zero_for_identical_distributions():
    # Unbiased U-statistic: E[mmd2] = 0 when x and y come from one distribution (exactly so conditional
    # on the pooled set, since the median bandwidth is a symmetric function of it). Over 200 independent
    # draws of M = 8 points in 3-d, the mean of mmd2 is within 5 standard errors (estimated from the
    # draws) of 0: false-alarm probability ~ 6e-7 under a normal approximation.
    gen = np.random.default_rng(2024)
    reps, m = 200, 8
    vals = []
    for _ in range(reps):
        x = gen.standard_normal((m, 3))
        y = gen.standard_normal((m, 3))
        vals.append(mmd2(x.tolist(), y.tolist())[0])
    vals = np.array(vals)
    se = vals.std(ddof=1) / np.sqrt(reps)
    assert abs(vals.mean()) <= 5 * se
    # And a real difference is detected: shifting y by 1.5 makes the mean far above its SE.
    shifted = []
    for _ in range(50):
        x = gen.standard_normal((m, 3))
        y = gen.standard_normal((m, 3)) + 1.5
        shifted.append(mmd2(x.tolist(), y.tolist())[0])
    shifted = np.array(shifted)
    assert shifted.mean() > 5 * shifted.std(ddof=1) / np.sqrt(len(shifted))


def _shared_state_draw(gen, m):
    """One MMD set of the distribution probe's shape with pi == mu: states s_k (2-d), and two actions
    drawn independently from the same policy a = K s + sigma z given each state."""
    gain, noise = np.array([[0.8, -0.5]]), 0.3
    s = gen.standard_normal((m, 2))
    a = s @ gain.T + noise * gen.standard_normal((m, 1))
    a2 = s @ gain.T + noise * gen.standard_normal((m, 1))
    return np.hstack([s, a]), np.hstack([s, a2])


def test_paired_mmd2_is_unbiased_when_pairs_share_states():
    # x_k = (s_k, a_k), y_k = (s_k, a'_k), a and a' iid given s: pi == mu, but x_k and y_k are not
    # independent. The paired statistic still has E[mmd2] = 0 (MODEL.md 4.1: swapping x_k with y_k
    # leaves everything's distribution unchanged and flips the sign of the terms holding k). Over
    # 400 independent draws of M = 12 points, the mean of mmd2 is within 4 standard errors of the mean
    # (estimated from the draws) of 0: a false alarm has probability ~6e-5 under the CLT.
    gen = np.random.default_rng(77)
    reps, m = 400, 12
    new, old = [], []
    off = ~np.eye(m, dtype=bool)
    for _ in range(reps):
        x, y = _shared_state_draw(gen, m)
        value, sigma = mmd2(x.tolist(), y.tolist())
        new.append(value)
        # For contrast, Gretton et al.'s eq. 3 (the old statistic) from the same kernel values: it keeps
        # the pairs k(x_i, y_i) in the cross sum and divides it by M^2.
        k = lambda u, v, sigma=sigma: np.exp(-((u[:, None, :] - v[None, :, :]) ** 2).sum(axis=-1) / (2.0 * sigma**2))  # noqa: E731
        kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
        within = kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1))
        assert value == pytest.approx(within - 2.0 * kxy[off].sum() / (m * (m - 1)), abs=1e-12)
        old.append(within - 2.0 * kxy.sum() / m**2)
    new, old = np.array(new), np.array(old)
    se_new = new.std(ddof=1) / np.sqrt(reps)
    assert abs(new.mean()) <= 4 * se_new, (new.mean(), se_new)
    # The old statistic fails the same test: the shared states make k(x_i, y_i) larger than the
    # other cross terms, so its mean lies clearly below 0.
    se_old = old.std(ddof=1) / np.sqrt(reps)
    assert old.mean() < -4 * se_old, (old.mean(), se_old)


def test_backend_mmd2():
    gen = np.random.default_rng(8)
    x = gen.standard_normal((6, 3))
    y = gen.standard_normal((6, 3))
    assert ReferenceBackend().mmd2(x, y) == mmd2(x.tolist(), y.tolist())


def test_mmd2_needs_two_points():
    value, sigma = mmd2([[0.0]], [[1.0]])
    assert math.isnan(value) and sigma == 1.0
    with pytest.raises(ValueError):
        mmd2([[0.0], [1.0]], [[1.0]])
