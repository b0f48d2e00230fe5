"""Memory errors of the Rust core (issue "Robustness II"): a call whose arrays would not fit raises
MemoryError naming the argument and the bytes, under an address-space cap (`ulimit -v`) or simply beyond
the machine's available memory; it never aborts the interpreter (Rust's infallible allocation used to
end the process with SIGABRT).

The error is `CoreMemoryError`, a MemoryError that is also a ValueError (callers that caught the
ValueError of the old fixed 8 GiB limit keep working). The limit follows the process's situation: the
least of MemAvailable, the RLIMIT_AS headroom and the memory cgroup's headroom (rust/mem.rs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import _subprocess_env, requires_rust

pytestmark = requires_rust

CAP = 3 * 2**30

CHILD = r"""
import json, resource, sys
cap = int(sys.argv[1])
if cap:
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import numpy as np
from offtd import _core
from offtd.backend import Problem

def problem(n, m):
    return Problem(a=np.eye(n) * 0.5, b=np.eye(n, m) * 0.5, q=np.eye(n), r=np.eye(m), sigma_eps=0.1, sigma_0=1.0,
                   reward_scale=1.0, sigma_pi=0.4, sigma_mu=0.5, p_mix=0.1, gamma=0.9, rho_clip=10.0, seed=0)

k, pool = np.zeros((2, 2)), np.zeros((10, 2))
CALLS = {
    "normals": lambda: _core.normals(0, 0, 0, 0, 0, 2**30),
    "uniforms": lambda: _core.uniforms(0, 0, 0, 0, 0, 2**30),
    "philox_blocks": lambda: _core.philox_blocks(0, 0, 0, 0, 0, 2**28),
    "transitions": lambda: _core.transitions(problem(2, 2), k_pi=k, k_mu=k, pool=pool, count=2**30, repeats=4,
                                             base=20, iteration=0),
    "policy_samples": lambda: _core.policy_samples(problem(2, 2), k, k, pool, 2**30, 2**30, 0),
    "rollout": lambda: _core.rollout(problem(2, 2), w=np.zeros(6), k_pi=k, k_mu=k, iteration=0,
                                     batch=2**30, horizon=1, stats=0),
    "features": lambda: _core.features(np.zeros((7_000_000, 16))),  # 8.0 GiB of output from 0.9 GiB
    "state_moments": lambda: _core.state_moments(problem(100, 1), np.zeros((1, 100)), np.zeros((1, 100)), 3),
    # 2**26 rows (1 GiB of input): the streaming path's rows of kernel values would need 32 GiB
    "mmd2": lambda: _core.mmd2(np.zeros((2**26, 1)), np.zeros((2**26, 1))),
}
out = {}
for name in sys.argv[2:]:
    try:
        CALLS[name]()
        out[name] = ["returned", "", False]
    except MemoryError as exc:
        out[name] = [type(exc).__name__, str(exc), isinstance(exc, ValueError)]
    # the process is intact: a small call still works
    assert _core.normals(0, 0, 0, 0, 0, 1000).shape == (1000,)
print(json.dumps(out))
"""

# the argument each message must start with, and the bytes it must name (at least)
EXPECTED = {
    "normals": ("count", 8 * 2**30),
    "uniforms": ("count", 8 * 2**30),
    "philox_blocks": ("count", 32 * 2**28),
    "transitions": ("count", 8 * 2**30),
    "policy_samples": ("mmd_count", 8 * 6 * 2**30),
    "rollout": ("batch", 8 * 4 * 2**30),
    "features": ("states", 8 * 153 * 7_000_000),
    "state_moments": ("a", 8 * 8 * 100**4),
    "mmd2": ("x", 16 * 2**22),
}


def _run(cap: int, names) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(cap), *names], capture_output=True, text=True, env=_subprocess_env(), timeout=600
    )
    # a SIGABRT would show as returncode -6 (and no JSON)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return json.loads(proc.stdout)


def _check(name: str, result: list) -> None:
    kind, msg, is_value_error = result
    arg, least = EXPECTED[name]
    assert kind == "CoreMemoryError", (name, result)
    assert is_value_error
    assert msg.startswith(f"{arg}: "), msg
    needed = int(re.search(r"needs (\d+) bytes", msg).group(1))
    assert needed >= least, (needed, least)
    assert "GiB" in msg and "available" in msg, msg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_oversized_calls_raise_memory_error_under_an_address_space_cap(name):
    _check(name, _run(CAP, [name])[name])


def test_every_oversized_call_in_one_capped_process():
    """One after another in the same process: each raises, none leaks what it planned, the process lives."""
    names = sorted(EXPECTED)
    out = _run(CAP, names)
    for name in names:
        _check(name, out[name])


def test_the_limit_follows_the_available_memory_not_a_fixed_size():
    """Without any cap, a request just beyond MemAvailable is refused, naming what is available."""
    with open("/proc/meminfo") as fh:
        avail = int(next(line for line in fh if line.startswith("MemAvailable")).split()[1]) * 1024
    count = 2 * avail // 8 + 1  # twice the available memory, as float64 normals
    code = (
        "from offtd import _core\n"
        f"try:\n    _core.normals(0, 0, 0, 0, 0, {count})\nexcept MemoryError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    msg = proc.stdout.strip()
    assert msg.startswith("count: this call needs") and "available" in msg, msg
    assert int(re.search(r"needs (\d+) bytes", msg).group(1)) == 8 * count


def test_the_limit_is_the_headroom_not_a_fixed_size():
    """The old limit was a fixed 2**30 elements (8 GiB): under a 3 GiB cap, 2**29 normals (4 GiB, below it)
    passed the check and aborted the process. Now they are refused, and 2**26 (512 MiB) are computed."""
    code = r"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
from offtd import _core
try:
    _core.normals(0, 0, 0, 0, 0, 2**29)
    print("computed")
except MemoryError as exc:
    print("refused", str(exc).split(":")[0])
print(_core.normals(0, 0, 0, 0, 0, 2**26).shape[0])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["refused", "count", str(2**26)]


def test_sizes_beyond_any_machine_are_value_errors():
    from offtd import _core

    with pytest.raises(ValueError, match="^count: must be < 2\\*\\*48"):
        _core.normals(0, 0, 0, 0, 0, 2**48)
