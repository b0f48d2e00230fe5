"""The wheel a packager builds (issue 12): `maturin build --release` gives one abi3 wheel (cp310-abi3, the
stable ABI of CPython >= 3.10), which installs into a clean virtual environment of every Python this
machine has from 3.10 on and runs the default experiment there, with the same numbers as the development
install.

Slow (about 10-30 s an interpreter, plus the build): the build reuses the release artifacts that
`pip install -e .` left in target/ (seconds), and pip's cache serves numpy after the first time. The
virtual environments are clean (no --system-site-packages): numpy and threadpoolctl come from the package
index, as for a user. OFFTD_TEST_WHEEL=path/to/wheel tests that wheel instead of building one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import offtd
from conftest import ROOT

pytestmark = pytest.mark.slow

ABI3_FLOOR = (3, 10)  # Cargo.toml: pyo3 feature abi3-py310; pyproject.toml: requires-python >= 3.10


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points Python at this source tree or another install."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("OFFTD_TEST_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--quiet", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (built,) = out.glob("*.whl")
    return built


def _interpreters() -> dict[tuple[int, int], str]:
    """One interpreter per CPython version >= 3.10 found here (this one, python3.X on PATH, pyenv's)."""
    candidates = [sys.executable]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for minor in range(ABI3_FLOOR[1], 20):
        candidates += [str(p) for p in sorted(root.glob(f"3.{minor}.*/bin/python3.{minor}"))]
        candidates.append(f"python3.{minor}")
    found: dict[tuple[int, int], str] = {}
    for exe in candidates:
        try:
            proc = subprocess.run([exe, "-c", "import sys, venv; print(*sys.version_info[:2])"], capture_output=True,
                                  text=True, timeout=60, env=_clean_env())  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0:
            version = tuple(int(x) for x in proc.stdout.split())
            if version >= ABI3_FLOOR:
                found.setdefault(version, exe)  # type: ignore[arg-type]
    return found


INTERPRETERS = _interpreters()
# This interpreter, the oldest the wheel supports and the newest, where this machine has them.
PICKED = sorted({sys.version_info[:2], min(INTERPRETERS), max(INTERPRETERS)})


def test_wheel_is_one_abi3_wheel_with_the_package_metadata(wheel):
    name = wheel.name
    assert re.fullmatch(r"offtd-[^-]+-cp310-abi3-(manylinux_\d+_\d+_x86_64|linux_x86_64|[a-z0-9_.]+)\.whl", name), name
    assert name.split("-")[1] == offtd.__version__
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        meta = z.read(f"offtd-{offtd.__version__}.dist-info/METADATA").decode()
    assert "offtd/_core.abi3.so" in files
    assert not any(re.match(r"offtd/_core\.cpython-", f) for f in files)  # nothing built for one Python only
    assert {"offtd/py.typed", "offtd/_core.pyi", "offtd/specs/default.toml", "offtd/json_schema.py"} <= files
    assert f"\nVersion: {offtd.__version__}\n" in meta
    assert "\nRequires-Python: >=3.10\n" in meta


@pytest.mark.parametrize("version", PICKED, ids=lambda v: f"py{v[0]}.{v[1]}")
def test_wheel_installs_into_a_clean_venv_and_runs_the_default_experiment(wheel, tmp_path, version):
    venv = tmp_path / "venv"
    env = _clean_env(RAYON_NUM_THREADS="1")
    subprocess.run([INTERPRETERS[version], "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    py, script = venv / "bin" / "python", venv / "bin" / "offtd"
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True,
                         env=env, timeout=900)  # fmt: skip
    assert pip.returncode == 0, f"pip could not install the wheel (is the package index reachable?):\n{pip.stderr[-3000:]}"

    where = subprocess.run([str(py), "-c", "import offtd, offtd._core; print(offtd._core.__file__); print(offtd.__version__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert where.returncode == 0, where.stderr
    core, version_text = where.stdout.split()
    assert Path(core).is_relative_to(venv) and core.endswith("_core.abi3.so")  # the wheel's core, not the tree's
    assert version_text == offtd.__version__

    run = subprocess.run([str(script), "run", "--out", str(tmp_path / "out"), "--no-plots"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    run_dir, status = run.stdout.splitlines()
    assert status == "status: PASS"  # the default experiment passes (tests/test_shipped_specs.py)
    report = json.loads((Path(run_dir) / "report.json").read_text())

    # The same numbers as the development install: the rollout's sums are the Rust core's, bit for bit
    # on every build (specs/MODEL.md 0.2); nothing here goes through BLAS.
    here = offtd.run(None)
    for key in ("td_loss", "mean_rho2", "mean_rho_bar2"):
        assert report["series"][key] == here.report["series"][key], key
    assert [c["status"] for c in report["health"]["checks"]] == [c["status"] for c in here.checks]
