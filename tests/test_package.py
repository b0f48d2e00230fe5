"""The package as a packager and a new user see it (issue 12): one version, written in Cargo.toml only,
reaching `offtd.__version__`, `offtd --version`, the wheel's metadata and the schema's $id."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import offtd
from conftest import _subprocess_env

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _cargo_version() -> str:
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]


def _pep440(cargo: str) -> str:
    """Cargo's semver as maturin writes it into the wheel (1.2.3-alpha.1 -> 1.2.3a1, -dev.0 -> .dev0)."""
    m = re.fullmatch(r"(\d+\.\d+\.\d+)(?:-(alpha|beta|rc|dev)\.?(\d+))?", cargo)
    assert m, f"Cargo.toml version {cargo!r} is not one this test knows how to map"
    base, pre, n = m.groups()
    if pre is None:
        return base
    return base + {"alpha": "a", "beta": "b", "rc": "rc", "dev": ".dev"}[pre] + n


def test_version_is_written_only_in_cargo_toml():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert offtd.__version__ == importlib.metadata.version("offtd") == _pep440(_cargo_version())


def test_no_other_copy_of_the_version_in_the_sources():
    version = _cargo_version()
    pattern = re.compile(r"""["']""" + re.escape(version) + r"""["']""")
    hits = [p for p in (ROOT / "python" / "offtd").rglob("*.py") if pattern.search(p.read_text())]
    assert hits == []


def test_changelog_has_an_entry_for_the_version():
    base = re.match(r"\d+\.\d+\.\d+", _cargo_version()).group()
    headings = [line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert any(re.search(r"\b" + re.escape(base) + r"\b", h) for h in headings), headings


@pytest.mark.parametrize("how", ["python -m offtd", "offtd script"])
def test_version_command(offtd_cmd, how):
    if how == "python -m offtd":
        proc = offtd_cmd("--version")
    else:  # the console script pip installed next to this interpreter
        script = Path(sysconfig.get_path("scripts")) / "offtd"
        assert script.is_file(), f"no offtd console script at {script}: is offtd installed (pip install -e .)?"
        proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"offtd {offtd.__version__}\n"
    assert proc.stderr == ""


def test_version_to_a_full_stdout_is_exit_3():
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "offtd", "--version"], stdout=full, stderr=subprocess.PIPE,
                              text=True, env=_subprocess_env(), timeout=120)  # fmt: skip
    assert proc.returncode == 3
    assert proc.stderr == "offtd: error: cannot write to standard output: No space left on device\n"


def test_schema_id_names_the_version():
    from offtd.json_schema import spec_json_schema

    assert spec_json_schema()["$id"].endswith(f"/{offtd.__version__}.json")


def test_one_compiled_core_beside_the_package():
    """An editable install puts the core next to the sources. A core built before the abi3 switch
    (`_core.cpython-311-*.so`) would shadow the new `_core.abi3.so` (Python tries the version-specific
    name first), so a rebuilt core would silently not be the one imported: remove the stale file."""
    import offtd._core

    here = Path(offtd._core.__file__).parent
    cores = sorted(p.name for p in here.glob("_core.*") if p.suffix in (".so", ".pyd"))
    assert cores == [Path(offtd._core.__file__).name], f"stale compiled cores in {here}: {cores}; delete all but _core.abi3.so"
    assert offtd._core.__file__.endswith(".abi3.so") or offtd._core.__file__.endswith(".pyd")


# Every module-level name offtd.spec had before it was split into spec_schema (schema, defaults, key
# validation), spec_resolve (the whole-spec checks: shapes, the teacher, the budget) and spec_io (TOML,
# overrides); other code and old notebooks import them from offtd.spec.
SPEC_NAMES = [
    "ActorCfg", "CriticCfg", "DistributionProbeCfg", "EnvCfg", "FixedPointProbeCfg", "HealthCfg", "INT_MAX",
    "MAX_SPEC_BYTES", "Matrix", "PolicyCfg", "ProbesCfg", "QKernelProbeCfg", "REMOVED_KEYS", "RhoCfg",
    "RunCfg", "SWEEP_TABLE", "Spec", "SpecError", "StabilityProbeCfg", "_MATRIX_KEYS", "_MAX_NORMAL",
    "_PSD_KEYS", "_REPR", "_SUBTABLES", "_TEACHER_INPUTS", "_build", "_check_initial_teacher",
    "_check_matrix", "_check_memory", "_check_scalar", "_deep_copy", "_default_matrix", "_drop_none", "_f",
    "_float_or_none", "_format_toml_error", "_is_bool", "_is_ndarray", "_is_real", "_num", "_printable",
    "_resolve", "_set_dotted", "_short", "_suggest", "_to_plain", "_toml_value", "apply_overrides",
    "default_spec_text", "key_hparams", "load_spec", "memory_estimate_bytes", "memory_terms",
    "parse_override", "read_toml", "spec_from_dict", "sub_batches", "to_toml",
]


def test_spec_names_survive_the_split(tmp_path):
    import offtd.report
    import offtd.spec
    import offtd.spec_io
    import offtd.spec_resolve
    import offtd.spec_schema

    for name in SPEC_NAMES:
        here = getattr(offtd.spec, name)
        if name != "key_hparams":
            homes = [m for m in (offtd.spec_schema, offtd.spec_resolve, offtd.spec_io) if hasattr(m, name)]
            home = homes[0]
            assert here is getattr(home, name), name
    spec = offtd.load_spec(None)
    assert offtd.spec.key_hparams(spec) == offtd.report.key_hparams(spec)
    assert offtd.spec.key_hparams(spec).startswith("outer_iters=")
    (tmp_path / "s.toml").write_text(offtd.spec.to_toml(spec))
    assert offtd.spec.load_spec(tmp_path / "s.toml") == spec
    assert not hasattr(offtd.spec_schema, "load_spec")  # the schema does no I/O


def _fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_subprocess_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_offtd_is_lazy_and_every_public_name_resolves():
    """`import offtd` imports none of its numerical modules (the sweep command relies on it to start its
    pool's fork server first), and each name of `offtd.__all__` is still there when asked for."""
    loaded = _fresh("import sys, offtd; print(sorted(m for m in sys.modules if m.startswith(('offtd', 'numpy'))))")
    assert loaded == "['offtd']"
    names = _fresh("import offtd; print(sorted(n for n in offtd.__all__ if getattr(offtd, n, None) is not None))")
    assert names == str(sorted(offtd.__all__))
    assert set(offtd.__all__) >= {"run", "sweep", "load_sweep", "load_spec", "Spec", "SpecError", "theory"}
    assert _fresh("import offtd; print(offtd.__version__)") == offtd.__version__


@pytest.mark.parametrize(
    "code",
    [
        "import importlib, offtd; m = importlib.import_module('offtd.sweep'); print(offtd.sweep is m.sweep)",
        "import offtd.sweep, offtd, sys; print(offtd.sweep is sys.modules['offtd.sweep'].sweep)",
        "from offtd import sweep; import offtd.sweep as s, sys; print(sweep is s is sys.modules['offtd.sweep'].sweep)",
        "import offtd, sys; f = offtd.sweep; import offtd.sweep_plots; print(offtd.sweep is f is sys.modules['offtd.sweep'].sweep)",
    ],
)
def test_offtd_sweep_is_the_function_whichever_import_comes_first(code):
    assert _fresh(code) == "True"


FORKSERVER_PROBE = """
import sys, tempfile
import multiprocessing.forkserver as fs
seen = []
real = fs.ensure_running
def ensure_running():
    seen.append("offtd.api" in sys.modules)
    real()
fs.ensure_running = ensure_running
from offtd import cli
with tempfile.TemporaryDirectory() as out:
    rc = cli.main(["sweep", "--grid", "policy.p_mix=0,0.1", "--set", "run.outer_iters=2", "--keep", "summary",
                   "--no-plots", "--out", out] + sys.argv[1:])
print(rc, seen[:1])
"""


@pytest.mark.parametrize(("extra", "expected"), [([], "0 [False]"), (["--workers", "1"], "0 []")])
def test_the_sweep_command_starts_the_fork_server_before_importing_the_numerics(extra, expected):
    """The pool's fork server imports offtd (~0.3 s) while the command imports it too: started before
    offtd.api is imported, and not at all for --workers 1. (A sweep this small then runs in process: the
    idle server exits with it.)"""
    proc = subprocess.run([sys.executable, "-c", FORKSERVER_PROBE, *extra], capture_output=True, text=True,
                          env=_subprocess_env(), timeout=300)  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == expected, proc.stderr  # after the command's own output
