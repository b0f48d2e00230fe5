"""Shared test set-up: Hypothesis profiles and strategies.

HYPOTHESIS_PROFILE=thorough runs many more examples; the default profile keeps the suite fast.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _subprocess_env() -> dict[str, str]:
    """Environment for `python -m offtd` subprocesses: import the same offtd the tests import."""
    import offtd

    env = dict(os.environ)
    pkg_parent = str(Path(offtd.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="session")
def offtd_cmd():
    """Run the CLI as a subprocess: offtd_cmd(*args, **kw) -> CompletedProcess."""
    import subprocess

    env = _subprocess_env()

    def run(*args: str, timeout: float = 600, env_extra: dict[str, str] | None = None, **kw):
        return subprocess.run(
            [sys.executable, "-m", "offtd", *args],
            capture_output=True,
            text=True,
            env={**env, **(env_extra or {})},
            timeout=timeout,
            **kw,
        )

    return run


def rust_available() -> bool:
    try:
        import offtd._core  # noqa: F401
    except ImportError:
        return False
    return True


# Tests that need the compiled core carry this marker. It never skips: a suite run without the core
# must fail loudly (tests/test_core_api.py::test_core_is_importable), not pass by skipping half of itself.
requires_rust = pytest.mark.requires_rust


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_rust: needs the compiled offtd._core (never skipped)")
