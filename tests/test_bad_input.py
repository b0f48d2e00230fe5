"""Bad input (issue 5): every malformed spec, override, option or output location ends with one line on
stderr naming the key or file, exit 2, no traceback, and no run directory.

The table runs `offtd run` as a subprocess once per case (concurrently, in a module fixture); each
case is then checked on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import offtd
from conftest import _subprocess_env
from offtd import cli

# (id, spec file contents (str, bytes) or a marker, extra CLI arguments, strings stderr must contain)
# Markers: None = no spec argument (the embedded default); "MISSING" = a path that does not exist;
# "DIR" = a directory. "{case}" in an argument is the case's own scratch directory.
CASES: list[tuple[str, object, tuple[str, ...], tuple[str, ...]]] = [
    # --- unknown keys and tables, with a suggestion
    ("unknown_key", "[run]\nouter_iter = 3\n", (), ("run.outer_iter", "unknown key", "did you mean 'outer_iters'")),
    ("unknown_top_key", 'nmae = "x"\n', (), ("nmae", "did you mean 'name'")),
    ("unknown_table", "[critc]\ngamma = 0.5\n", (), ("critc", "did you mean 'critic'")),
    ("unknown_probe_table", "[probes.stabilty]\nrepeats = 2\n", (), ("probes.stabilty", "did you mean 'stability'")),
    ("unknown_key_no_suggestion", "[health]\nzzzzzz = 1\n", (), ("health.zzzzzz", "unknown key")),
    ("key_with_newline", '"a\\nb" = 1\n', (), ("a\\nb: unknown key",)),  # escaped: the message stays one line
    ("table_as_scalar", "run = 5\n", (), ("run", "table")),
    ("scalar_as_table", "[critic.gamma]\nx = 1\n", (), ("critic.gamma", "expected a number")),
    # --- wrong types
    ("string_for_int", '[run]\nouter_iters = "ten"\n', (), ("run.outer_iters", "expected an integer")),
    ("float_for_int", "[run]\nhorizon = 2.5\n", (), ("run.horizon", "expected an integer")),
    ("bool_for_number", "[critic]\ngamma = true\n", (), ("critic.gamma", "expected a number")),
    ("bool_for_int", "[run]\nbatch = true\n", (), ("run.batch", "expected an integer")),
    ("string_for_bool", '[rho]\nclip_enabled = "yes"\n', (), ("rho.clip_enabled", "true or false")),
    ("int_for_bool", "[probes.q_kernel]\nenabled = 1\n", (), ("probes.q_kernel.enabled", "true or false")),
    ("number_for_string", "name = 3\n", (), ("name", "expected a string")),
    ("array_for_number", "[actor]\nalpha_pi = [0.1]\n", (), ("actor.alpha_pi", "expected a number")),
    ("date_for_int", "[run]\nseed = 1979-05-27\n", (), ("run.seed", "expected an integer")),
    ("bad_choice", '[critic]\ninit = "teachr"\n', (), ("critic.init", "zeros, teacher, teacher_noise", "did you mean 'teacher'")),
    # --- non-finite numbers (TOML spells them nan / inf)
    ("nan", "[critic]\nalpha_w = nan\n", (), ("critic.alpha_w", "finite")),
    ("inf", "[policy]\nsigma_mu = inf\n", (), ("policy.sigma_mu", "finite")),
    ("neg_inf", "[health]\nkhat_fail = -inf\n", (), ("health.khat_fail", "finite")),
    ("overflowing_float", "[env]\nsigma_eps = 1e400\n", (), ("env.sigma_eps", "finite")),
    # --- out-of-domain values
    ("p_mix_one", "[policy]\np_mix = 1.0\n", (), ("policy.p_mix", "must be < 1")),
    ("p_mix_negative", "[policy]\np_mix = -0.1\n", (), ("policy.p_mix", "must be >= 0")),
    ("gamma_one", "[critic]\ngamma = 1.0\n", (), ("critic.gamma", "must be < 1")),
    ("gamma_negative", "[critic]\ngamma = -0.5\n", (), ("critic.gamma", "must be >= 0")),
    ("sigma_zero", "[policy]\nsigma_pi = 0.0\n", (), ("policy.sigma_pi", "must be >= 1e-06")),
    ("sigma_negative", "[policy]\nsigma_mu = -1\n", (), ("policy.sigma_mu", "must be >= 1e-06")),
    ("sigma_too_small", "[policy]\nsigma_mu = 1e-200\n", (), ("policy.sigma_mu", "must be >= 1e-06")),
    ("sigma_too_large", "[policy]\nsigma_pi = 1e200\n", (), ("policy.sigma_pi", "must be <= 1e+06")),
    ("sigma_eps_too_large", "[env]\nsigma_eps = 1e300\n", (), ("env.sigma_eps", "must be <= 1e+06")),
    ("clip_zero", "[rho]\nclip = 0\n", (), ("rho.clip", "must be > 0")),
    ("beta_above_one", "[policy]\nbeta = 1.5\n", (), ("policy.beta", "must be <= 1")),
    ("alpha_w_negative", "[critic]\nalpha_w = -0.1\n", (), ("critic.alpha_w", "must be >= 0")),
    ("tol_zero", "[probes.fixed_point]\ntol = 0.0\n", (), ("probes.fixed_point.tol", "must be > 0")),
    ("outer_iters_zero", "[run]\nouter_iters = 0\n", (), ("run.outer_iters", "must be >= 1")),
    ("horizon_negative", "[run]\nhorizon = -5\n", (), ("run.horizon", "must be >= 1")),
    ("batch_zero", "[run]\nbatch = 0\n", (), ("run.batch", "must be >= 1")),
    ("num_samples_zero", "[probes.distribution]\nnum_samples = 0\n", (), ("probes.distribution.num_samples", ">= 1")),
    ("state_dim_too_big", "[env]\nstate_dim = 17\n", (), ("env.state_dim", "must be <= 16")),
    ("seed_negative_in_file", "[run]\nseed = -1\n", (), ("run.seed", "must be >= 0")),
    ("max_memory_zero", "[run]\nmax_memory_gb = 0\n", (), ("run.max_memory_gb", "must be > 0")),
    ("name_with_slash", 'name = "a/b"\n', (), ("name", "without '/'")),
    ("name_empty", 'name = ""\n', (), ("name", "non-empty")),
    ("name_with_nul", 'name = "a\\u0000b"\n', (), ("name", "control characters")),
    # --- cross-key constraints
    ("action_samples_gt_num_samples", "[probes.distribution]\nnum_samples = 8\naction_samples = 16\n", (),
     ("probes.distribution.action_samples", "num_samples")),
    ("khat_warn_above_fail", "[health]\nkhat_warn = 0.9\nkhat_fail = 0.7\n", (), ("health.khat_warn", "khat_fail")),
    # --- matrices: shape, entries, symmetry, positive semidefiniteness
    ("q_not_psd", "[env]\nq = [[1.0, 0.0], [0.0, -1.0]]\n", (), ("env.q", "positive semidefinite")),
    ("r_not_psd", "[env]\nr = [[1.0, 2.0], [2.0, 1.0]]\n", (), ("env.r", "positive semidefinite")),
    ("q_not_symmetric", "[env]\nq = [[1.0, 0.5], [0.0, 1.0]]\n", (), ("env.q", "symmetric")),
    ("a_wrong_shape", "[env]\na = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]\n", (), ("env.a", "2 x 2", "got 2 x 3")),
    ("b_wrong_shape", "[env]\nb = [[1.0], [0.5]]\n", (), ("env.b", "2 x 2", "got 2 x 1")),
    ("k_init_wrong_shape", "[env]\nstate_dim = 3\naction_dim = 1\n[policy]\nk_init = [[0.0, 0.0]]\n", (),
     ("policy.k_init", "1 x 3")),
    ("ragged_matrix", "[env]\na = [[1.0, 0.0], [0.0]]\n", (), ("env.a", "different lengths")),
    ("matrix_string_entry", '[env]\na = [[1.0, "x"], [0.0, 1.0]]\n', (), ("env.a", "must be numbers")),
    ("matrix_bool_entry", "[env]\nr = [[true, 0.0], [0.0, 1.0]]\n", (), ("env.r", "must be numbers")),
    ("matrix_nan_entry", "[env]\nq = [[nan, 0.0], [0.0, 1.0]]\n", (), ("env.q", "finite")),
    ("matrix_as_scalar", "[env]\na = 0.9\n", (), ("env.a", "expected a matrix")),
    ("matrix_empty", "[env]\nb = []\n", (), ("env.b", "expected a matrix")),
    # --- sizes that would not fit in memory: refused with the estimate, naming the dominant key
    ("huge_batch", "[run]\nbatch = 10000000\nhorizon = 1000000\n", (), ("run.batch", "GiB", "needs about")),
    ("huge_probe", "[probes.fixed_point]\nbatch_size = 100000000000000\n", (), ("probes.fixed_point.batch_size", "GiB")),
    ("huge_outer_iters", "[run]\nouter_iters = 1000000000000\n", (), ("run.outer_iters", "GiB")),
    ("memory_limit", "[run]\nmax_memory_gb = 0.000001\n", (), ("run.max_memory_gb", "GiB")),
    # --- the file itself
    ("malformed_toml", "[run]\nseed = 1\nhorizon = = 3\n", (), ("s.toml", "malformed TOML", "line 3", "column")),
    ("unclosed_table", "[run\nseed = 1\n", (), ("s.toml", "malformed TOML", "line 1")),
    ("duplicate_key", "[run]\nseed = 1\nseed = 2\n", (), ("s.toml", "malformed TOML", "line 3")),
    ("not_utf8", b'name = "\xff\xfe"\n', (), ("s.toml", "UTF-8")),
    ("missing_file", "MISSING", (), ("nonexistent.toml", "no such spec file")),
    ("directory_as_spec", "DIR", (), ("a_directory", "is a directory")),
    # --- --set overrides go through the same validation
    ("set_without_equals", None, ("--set", "policy.p_mix"), ("--set policy.p_mix", "KEY=VALUE")),
    ("set_unknown_key", None, ("--set", "policy.p_mx=0.1"), ("policy.p_mx", "did you mean 'p_mix'")),
    ("set_unknown_table", None, ("--set", "polcy.p_mix=0.1"), ("polcy", "did you mean 'policy'")),
    ("set_wrong_type", None, ("--set", "run.horizon=abc"), ("run.horizon", "expected an integer")),
    ("set_float_for_int", None, ("--set", "run.batch=1.5"), ("run.batch", "expected an integer")),
    ("set_out_of_domain", None, ("--set", "critic.gamma=1"), ("critic.gamma", "must be < 1")),
    ("set_p_mix_one", None, ("--set", "policy.p_mix=1.0"), ("policy.p_mix", "must be < 1")),
    ("set_nan", None, ("--set", "critic.alpha_w=nan"), ("critic.alpha_w", "finite")),
    ("set_a_table", None, ("--set", "run=3"), ("run", "is a table")),
    ("set_through_scalar", None, ("--set", "name.x=1"), ("name", "not a table")),
    ("set_empty_key", None, ("--set", "=3"), ("--set =3", "empty key")),
    ("set_empty_key_part", None, ("--set", "run..seed=3"), ("--set run..seed=3", "empty key")),
    ("set_bad_matrix", None, ("--set", "env.b=[[1.0],[0.5]]"), ("env.b", "got 2 x 1")),
    ("set_not_psd", None, ("--set", "env.q=[[0.0, 1.0], [1.0, 0.0]]"), ("env.q", "positive semidefinite")),
    ("set_huge", None, ("--set", "probes.stability.batch_size=100000000000000"), ("probes.stability.batch_size", "GiB")),
    ("set_overrides_file_badly", "[run]\nseed = 3\n", ("--set", "run.seed=-3"), ("run.seed", "must be >= 0")),
    # --- options
    ("seed_negative", None, ("--seed", "-1"), ("run.seed", "must be >= 0")),
    ("seed_too_big", None, ("--seed", str(2**64)), ("run.seed", "18446744073709551615")),
    ("seed_not_int", None, ("--seed", "abc"), ("--seed", "invalid int value")),
    ("unknown_backend", None, ("--backend", "fortran"), ("--backend", "fortran")),
    ("unknown_fail_on", None, ("--fail-on", "sometimes"), ("--fail-on", "sometimes")),
    ("unknown_option", None, ("--frobnicate",), ("--frobnicate",)),
    # --- output locations: refused before the run starts
    ("out_under_a_file", None, ("--out", "{case}/a_file/out"), ("a_file", "Not a directory")),
    ("out_name_is_a_file", None, ("--out", "{case}/taken"), ("taken/default", "not a directory")),
    ("run_dir_exists", None, ("--run-dir", "{case}/existing"), ("existing", "already exists")),
    ("run_dir_under_a_file", None, ("--run-dir", "{case}/a_file/run"), ("a_file", "exists and is not a directory")),
    ("name_too_long", f'name = "{"x" * 300}"\n', (), ("x" * 40, "File name too long")),
]


def _case_command(case_dir: Path, spec: object, args: tuple[str, ...]) -> list[str]:
    case_dir.mkdir(parents=True)
    (case_dir / "a_file").write_text("not a directory\n")
    (case_dir / "taken").mkdir()
    (case_dir / "taken" / "default").write_text("a file where the run's parent directory would go\n")
    (case_dir / "existing").mkdir()
    (case_dir / "existing" / "keep.txt").write_text("untouched\n")
    (case_dir / "a_directory").mkdir()
    if spec is None:
        spec_args: list[str] = []
    elif spec == "MISSING":
        spec_args = [str(case_dir / "nonexistent.toml")]
    elif spec == "DIR":
        spec_args = [str(case_dir / "a_directory")]
    else:
        path = case_dir / "s.toml"
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        else:
            path.write_text(str(spec))
        spec_args = [str(path)]
    rest = [a.replace("{case}", str(case_dir)) for a in args]
    return ["run", *spec_args, "--backend", "python", "--out", str(case_dir / "out"), *rest]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    env = _subprocess_env()

    def one(case):
        case_id, spec, args, _ = case
        case_dir = root / case_id
        argv = _case_command(case_dir, spec, args)
        proc = subprocess.run(
            [sys.executable, "-m", "offtd", *argv], capture_output=True, text=True, env=env, timeout=120
        )
        return case_id, (proc, case_dir)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, CASES))


def _run_dirs(case_dir: Path) -> list[Path]:
    """Anything that looks like a run: a report or spec file anywhere, or out/<name>/<stamp> directories."""
    found = [p for p in case_dir.rglob("*") if p.name in ("report.json", "report.md", "spec.toml", "series.csv")]
    out = case_dir / "out"
    if out.is_dir():
        found += [p for p in out.glob("*/*")]
    return found


def test_there_are_enough_cases():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(results, case):
    case_id, _, _, expected = case
    proc, case_dir = results[case_id]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("offtd: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert proc.stdout == ""
    assert _run_dirs(case_dir) == []
    # The pre-existing run directory is left exactly as it was.
    assert sorted(p.name for p in (case_dir / "existing").iterdir()) == ["keep.txt"]


def test_full_output_location_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    import shutil

    from offtd import api

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(api.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    ran = []
    monkeypatch.setattr(api, "run_loop", lambda *a, **k: ran.append(1))
    rc = cli.main(["run", "--backend", "python", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and not ran
    assert err.count("\n") == 1 and err.startswith("offtd: error: ")
    assert "output location is full" in err and "MiB" in err and str(tmp_path / "out") in err
    assert not list((tmp_path / "out").glob("*/*"))  # no run directory


def test_write_failure_mid_run_is_one_line_and_leaves_no_report(tmp_path):
    """A file-size limit makes the last (largest) file fail as a full disk would: clear error, exit 3
    ("could not write the run", not bad input), and nothing half-written left: no run directory at all,
    no temporary files."""
    import resource

    run_dir = tmp_path / "run"

    def limit():  # report.json of this run is ~23 kB; every other file is < 10 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (12000, 12000))

    proc = subprocess.run(
        [sys.executable, "-m", "offtd", "run", "--backend", "python", "--run-dir", str(run_dir),
         "--set", "run.outer_iters=3", "--set", "run.horizon=10"],
        capture_output=True, text=True, env=_subprocess_env(), timeout=120, preexec_fn=limit,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("offtd: error: ")
    assert str(run_dir) in proc.stderr and "could not write the run" in proc.stderr and "File too large" in proc.stderr
    assert proc.stdout == ""  # no run directory and no status: the run was not kept
    assert list(tmp_path.iterdir()) == []  # write_run removed its files, api.run the directory
    with pytest.raises(offtd.SpecError, match="not a complete offtd run directory"):
        offtd.load_run(run_dir)


def test_report_files_are_readable_by_others(tmp_path):
    # mkstemp creates 0600 files; the run's files get the usual 0666 & ~umask.
    old = os.umask(0o022)
    try:
        res = offtd.run(None, backend="python", run_dir=tmp_path / "run", **{"run.outer_iters": 1, "run.horizon": 5})
    finally:
        os.umask(old)
    for p in res.run_dir.iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_valid_input_still_runs(tmp_path, offtd_cmd):
    # The control case: the same command shape as the table, with valid input, runs and writes a report.
    proc = offtd_cmd(
        "run", "--backend", "python", "--out", str(tmp_path), "--set", "run.outer_iters=1", "--set", "run.horizon=5",
        "--set", "env.b=[[1.0, 0.0], [0.5, 0.2]]", "--seed", str(2**64 - 1),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((Path(proc.stdout.splitlines()[0]) / "report.json").read_text())
    assert report["run_info"]["seed"] == 2**64 - 1
