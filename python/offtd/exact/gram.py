"""Second moments of the features, G = E[phi(s) phi(s)^T], from state moments or from states."""

from __future__ import annotations

import numpy as np

from ..backend import StateMoments
from .operator import feature_index


def gram_from_moments(moments: StateMoments) -> np.ndarray:
    """G from the state moments (THEORY.md 2): quadratic x quadratic entries are fourth moments,
    quadratic x constant and linear x linear entries second moments, the constant x constant entry 1;
    quadratic x linear and linear x constant entries are odd moments, 0 under the mixture."""
    m2, m4 = moments.m2, moments.m4
    n = m2.shape[0]
    iu, ju, q = feature_index(n)
    d = q + n + 1
    g = np.zeros((d, d))
    g[:q, :q] = m4[iu[:, None], ju[:, None], iu[None, :], ju[None, :]]
    g[:q, d - 1] = g[d - 1, :q] = m2[iu, ju]
    g[q : q + n, q : q + n] = m2
    g[d - 1, d - 1] = 1.0
    return g
