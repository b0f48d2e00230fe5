"""Memory (issue 4): probe sample counts must not allocate count x d feature matrices."""

from __future__ import annotations

import subprocess
import sys

from conftest import _subprocess_env, requires_rust

pytestmark = requires_rust

SCRIPT = r"""
import resource, numpy as np
from offtd.bench import _problem
from offtd.backend import get_backend, STABILITY_BASE
be = get_backend("rust")
p = _problem()
k = np.zeros((2, 2))
pool = np.random.default_rng(0).normal(size=(1000, 2))
be.transitions(p, k, k, pool, 1000, 4, STABILITY_BASE, 0)  # warm up: code, thread pool
be.policy_samples(p, k, k, pool, 1000, 64, 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
count = 2_000_000
ts = be.transitions(p, k, k, pool, count, 4, STABILITY_BASE, 0)
ps = be.policy_samples(p, k, k, pool, count, 64, 0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024, ts.rho.nbytes + ps.rho.nbytes)
"""


def test_probe_kernels_hold_only_their_ratios():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=_subprocess_env(), check=True)
    growth, ratio_bytes = map(int, proc.stdout.split())
    count, d = 2_000_000, 6
    feature_matrix = count * d * 8  # 96 MB: what a materialised phi(s) matrix would cost
    # The kernels keep the two ratio arrays (32 MB) plus bounded per-block scratch; allow 25% of the
    # ratio bytes for allocator slack, far below one feature matrix.
    assert growth <= 1.25 * ratio_bytes, (growth, ratio_bytes)
    assert growth < feature_matrix / 2
