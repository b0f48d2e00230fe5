"""The exact emphatic Gram matrix (python/offtd/exact/emphatic.py, MODEL.md 9.9) against a closed form.

When the behaviour mixture equals the target policy (K_mu = K_pi, sigma_mu = sigma_pi) every ratio is 1,
so the follow-on trace is deterministic, F_h = 1 + gamma + ... + gamma^h, and

    G_F = (1/H) sum_{h<H} F_h E[phi(s_h) phi(s_h)^T],

with s_h ~ N(0, Sigma_h), Sigma_0 = sigma_0^2 I, Sigma_{h+1} = L Sigma_h L^T + sigma_pi^2 B B^T + sigma_eps^2 I
(MODEL.md 2), L = A + B K. E[phi phi^T] is written out below entry by entry from Isserlis' theorem for
a zero-mean Gaussian (fourth moments), the covariance (second moments) and zero odd moments: none of
offtd's moment code is used. sigma_eps, sigma_0 and sigma_pi differ from 1 and from each other, so a
power or a noise term swapped in the push-forward changes G_F.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from offtd.exact.emphatic import emphatic_gram
from offtd.model import features, problem_from_spec
from offtd.spec import load_spec


def _gaussian_feature_gram(sigma: np.ndarray) -> np.ndarray:
    """E[phi(s) phi(s)^T] for s ~ N(0, sigma), phi = [s_i s_j (i <= j); s; 1]."""
    n = sigma.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i, n)]
    q = len(pairs)
    d = q + n + 1
    g = np.zeros((d, d))
    for (a, (i, j)), (b, (k, u)) in itertools.product(enumerate(pairs), repeat=2):
        g[a, b] = sigma[i, j] * sigma[k, u] + sigma[i, k] * sigma[j, u] + sigma[i, u] * sigma[j, k]
    for a, (i, j) in enumerate(pairs):
        g[a, d - 1] = g[d - 1, a] = sigma[i, j]
    g[q : q + n, q : q + n] = sigma
    g[d - 1, d - 1] = 1.0
    return g


def test_emphatic_gram_on_policy_is_the_trace_weighted_gaussian_gram():
    base = problem_from_spec(load_spec(None, {}))
    p = dataclasses.replace(base, sigma_eps=0.5, sigma_0=0.8, sigma_pi=0.7, sigma_mu=0.7, p_mix=0.3, gamma=0.6)
    n, m = p.n, p.m
    k = np.array([[-0.2, 0.1], [0.05, -0.3]])[:m, :n]
    horizon = 6
    got = emphatic_gram(p, k, k.copy(), horizon)

    lmat = p.a + p.b @ k
    noise = p.sigma_pi**2 * (p.b @ p.b.T) + p.sigma_eps**2 * np.eye(n)
    sigma = p.sigma_0**2 * np.eye(n)
    want = np.zeros_like(got)
    for h in range(horizon):
        trace = sum(p.gamma**j for j in range(h + 1))
        want += trace * _gaussian_feature_gram(sigma)
        sigma = lmat @ sigma @ lmat.T + noise
    want /= horizon
    # the feature order written out above is the model's (MODEL.md 3.2)
    s = np.array([0.3, -1.7])[:n]
    assert np.allclose(features(s), [s[i] * s[j] for i in range(n) for j in range(i, n)] + list(s) + [1.0], rtol=0, atol=0)
    # the two are sums of the same few products in a different order: 1e-12 relative is rounding
    assert np.allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
