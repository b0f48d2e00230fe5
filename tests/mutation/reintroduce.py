#!/usr/bin/env python3
"""Reintroduce, one at a time, the bugs the mutation review of issue 13 found surviving the suite, and
check that the suite now catches each. Not part of CI: a Rust bug needs a build of the extension.

    python3 tests/mutation/reintroduce.py --fast          # every bug, each against its own test files (minutes)
    python3 tests/mutation/reintroduce.py                 # every bug against the whole suite (pytest -x; long)
    python3 tests/mutation/reintroduce.py --fast tv_doubled stable_ge_boundary   # some bugs by name
    python3 tests/mutation/reintroduce.py --list          # the bugs, their files and their fast test files
    python3 tests/mutation/reintroduce.py --check         # does every edit still apply to this checkout?
    python3 tests/mutation/reintroduce.py --fast --python-only   # the bugs needing no Rust build (~30 s; CI)

It works on a fresh git worktree of HEAD in a temporary directory (the checkout you work in is never
touched, so commit a test before asking whether it catches a bug): the compiled extension is copied from
this checkout's build and `offtd` is imported from the worktree through PYTHONPATH. For each bug: apply
the edit (exact text replacement, or a patch file), rebuild the extension with `maturin build` when Rust
changed, run pytest (`-x`) on the bug's FAST test files (--fast) or on the whole suite, record whether
it failed (caught) and the first failing test, then restore the files and the original extension. Exit 1
if any bug survives, 2 if an edit no longer applies (the code it targets changed: update BUGS).

Rust builds use the release profile without LTO and with 16 codegen units (the same float semantics, a
few times faster to build) in a target directory kept between runs, target/reintroduce of this checkout
(REINTRODUCE_TARGET overrides). `--fast` takes about 3-5 minutes on 2 busy cores, most of it the two
Rust builds; see tests/README.md for the last run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]
ROOT = SOURCE  # the worktree under test, set by main()

# name -> list of (file, old text, new text); or {"patch": path}
BUGS: dict[str, object] = {
    # The probe transitions weight A_hat and b_hat by the unclipped rho, in both backends.
    "clip_ignored_in_probes": [
        (
            "python/offtd/reference/transitions.py",
            "                rr = rho_bar * r\n",
            "                rho_bar = rho\n                rr = rho_bar * r\n",
        ),
        ("rust/transitions.rs", "            let rho_bar = clip_rho(buf.rho[c], fm.rho_clip);", "            let rho_bar = buf.rho[c];"),
        ("rust/transitions.rs", "                        let c = st.rho_bar * sc.phi[i];", "                        let c = st.rho * sc.phi[i];"),
        ("rust/transitions.rs", "                    let rb = st.rho_bar * st.reward;", "                    let rb = st.rho * st.reward;"),
    ],
    # Behaviour tracking moves toward K_pi_t instead of K_pi_{t+1}.
    "tracking_old_gain": [
        ("python/offtd/loop.py", "k_mu + spec.policy.beta * (k_pi_new - k_mu)", "k_mu + spec.policy.beta * (k_pi - k_mu)"),
    ],
    # dist_action_tv doubled.
    "tv_doubled": [("python/offtd/probes.py", '"dist_action_tv": ps.tv_sum / k,', '"dist_action_tv": 2.0 * ps.tv_sum / k,')],
    # The stable check ignores the sampling error (judges the point estimate where only an estimate exists).
    "stable_ignores_se": [
        ("python/offtd/health.py", 'if row["a_min_real_eig_hi"] < 0.0:', 'if row["a_min_real_eig"] < 0.0:'),
        ("python/offtd/health.py", 'if row["stability_radius_lo"] > 1.0:', 'if row["stability_radius"] > 1.0:'),
    ],
    # The stable check compares with >= instead of > at the boundary.
    "stable_ge_boundary": [("python/offtd/health.py", "    if r > 1.0 + tol:", "    if r >= 1.0 + tol:")],
    # The Rust fixed-size rollout reuses the first chunk's mixture uniforms after step 256.
    "rust_horizon_256": {"patch": "tests/mutation/rust_bug_horizon256.patch"},
    # The actor step without its 1/sigma_pi^2 factor, and divided by sigma_mu^2 instead.
    "actor_no_sigma_factor": [("python/offtd/loop.py", "((roll.grad_k / n_tr) / sp2)", "(roll.grad_k / n_tr)")],
    "actor_sigma_mu": [("python/offtd/loop.py", "((roll.grad_k / n_tr) / sp2)", "((roll.grad_k / n_tr) / (problem.sigma_mu * problem.sigma_mu))")],
}

# The six bugs of issue 13, then two near-misses the review caught only by accident.
ISSUE_13 = ("clip_ignored_in_probes", "tracking_old_gain", "tv_doubled", "stable_ignores_se", "stable_ge_boundary", "rust_horizon_256")

# --fast: the test files that should catch each bug (the ones whose oracle covers the changed code).
FAST: dict[str, list[str]] = {
    # E[A_hat | pool] with clipping against the mean of sampled A_hat; clipped.toml's expected verdicts
    "clip_ignored_in_probes": ["tests/test_exact_td.py", "tests/test_transitions.py"],
    "tracking_old_gain": ["tests/test_loop_oracle.py"],  # numpy recomputation of the iteration
    "tv_doubled": ["tests/test_probes.py"],  # E[dist_action_tv] = the exact TV at equal gains
    "stable_ignores_se": ["tests/test_health_units.py"],  # a straddling interval is WARN, never FAIL
    "stable_ge_boundary": ["tests/test_health_units.py"],  # exactly 1 + tol is the boundary, not FAIL
    "rust_horizon_256": ["tests/test_parity_boundaries.py"],  # horizons 255, 256, 257, 513 against the reference
    "actor_no_sigma_factor": ["tests/test_loop_oracle.py"],
    "actor_sigma_mu": ["tests/test_loop_oracle.py"],
}
assert set(FAST) == set(BUGS)



class NoLongerApplies(Exception):
    """An edit's text is not in the file exactly once: the code it targets changed."""


def _build_env() -> dict[str, str]:
    return {
        **os.environ,
        "CARGO_TARGET_DIR": os.environ.get("REINTRODUCE_TARGET", str(SOURCE / "target" / "reintroduce")),
        "CARGO_PROFILE_RELEASE_LTO": "false",
        "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "16",
    }


def _extension() -> Path:
    return next((ROOT / "python" / "offtd").glob("_core*.so"))


def _rebuild() -> None:
    """Build a wheel of the worktree and put its compiled module into the worktree's package."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["maturin", "build", "--release", "--quiet", "--out", out], cwd=ROOT, check=True, env=_build_env())
        wheel = next(Path(out).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if re.fullmatch(r"offtd/_core\..*\.so", n))
            (ROOT / "python" / name).write_bytes(zf.read(name))


def _worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), "HEAD"], cwd=SOURCE, check=True)
    for so in (SOURCE / "python" / "offtd").glob("_core*.so"):
        shutil.copy2(so, path / "python" / "offtd" / so.name)


def _apply(bug: object) -> tuple[dict[Path, str], bool]:
    """Apply a bug; returns the original text of every changed file and whether Rust changed. Nothing
    is left changed when an edit does not apply."""
    originals: dict[Path, str] = {}
    try:
        if isinstance(bug, dict):
            patch = ROOT / bug["patch"]
            files = re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), flags=re.M)
            for f in files:
                originals[ROOT / f] = (ROOT / f).read_text()
            proc = subprocess.run(["git", "apply", str(patch)], cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NoLongerApplies(f"{bug['patch']}: {proc.stderr.strip()}")
        else:
            for rel, old, new in bug:
                path = ROOT / rel
                originals.setdefault(path, path.read_text())
                current = path.read_text()
                if current.count(old) != 1:
                    raise NoLongerApplies(f"{rel}: the text to replace occurs {current.count(old)} times: {old!r}")
                path.write_text(current.replace(old, new))
    except NoLongerApplies:
        for path, text in originals.items():
            path.write_text(text)
        raise
    return originals, any(p.suffix == ".rs" for p in originals)


def _touches_rust(bug: object) -> bool:
    if isinstance(bug, dict):
        return any(f.endswith(".rs") for f in re.findall(r"^\+\+\+ b/(\S+)", (SOURCE / bug["patch"]).read_text(), flags=re.M))
    return any(rel.endswith(".rs") for rel, _, _ in bug)


def check(root: Path) -> list[str]:
    """The bugs whose edit no longer applies to the tree at `root` (without changing it)."""
    stale = []
    for name, bug in BUGS.items():
        if isinstance(bug, dict):
            proc = subprocess.run(["git", "apply", "--check", str(root / bug["patch"])], cwd=root, capture_output=True, text=True)
            if proc.returncode != 0:
                stale.append(f"{name}: {proc.stderr.strip()}")
        else:
            for rel, old, _ in bug:
                count = (root / rel).read_text().count(old)
                if count != 1:
                    stale.append(f"{name}: {rel}: the text to replace occurs {count} times: {old!r}")
    return stale


def run(name: str, fast: bool) -> bool:
    originals, rust = _apply(BUGS[name])
    so = _extension()
    saved = so.read_bytes()
    t0 = time.time()
    try:
        if rust:
            _rebuild()
        t1 = time.time()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
        targets = FAST[name] if fast else ["tests"]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *targets],
                              cwd=ROOT, capture_output=True, text=True, env=env)  # fmt: skip
    finally:
        for path, text in originals.items():
            path.write_text(text)
        so.write_bytes(saved)
    first = next((line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))), "")
    caught = proc.returncode == 1 and first.startswith("FAILED")
    build = f"build {t1 - t0:.0f} s + " if rust else ""
    print(f"{name}: {'caught' if caught else 'SURVIVED'} ({build}tests {time.time() - t1:.0f} s)  {first}", flush=True)
    if not caught and proc.returncode not in (0, 1):
        print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return caught


def main(argv: list[str]) -> int:
    fast = "--fast" in argv
    if "--check" in argv:
        stale = check(SOURCE)
        print("\n".join(stale) or f"all {len(BUGS)} edits apply to {SOURCE}")
        return 2 if stale else 0
    if "--list" in argv:
        for n, bug in BUGS.items():
            files = bug["patch"] if isinstance(bug, dict) else sorted({f for f, _, _ in bug})
            print(f"{n}{' (issue 13)' if n in ISSUE_13 else ''}: {files} -> {' '.join(FAST[n])}")
        return 0
    names = [a for a in argv if not a.startswith("--")] or list(BUGS)
    if "--python-only" in argv:  # the bugs that need no Rust build (tests/run_all.sh runs these)
        names = [n for n in names if not _touches_rust(BUGS[n])]
    options = ("--fast", "--list", "--check", "--python-only")
    unknown = [n for n in names if n not in BUGS] + [a for a in argv if a.startswith("--") and a not in options]
    if unknown:
        print(f"unknown bug(s) or option(s): {unknown}; bugs: {list(BUGS)}; options: --fast, --list, --check, --python-only", file=sys.stderr)
        return 2
    global ROOT
    tmp = Path(tempfile.mkdtemp(prefix="offtd-reintroduce-"))
    ROOT = tmp / "tree"
    _worktree(ROOT)
    start = time.time()
    try:
        results = {n: run(n, fast) for n in names}
    except NoLongerApplies as exc:
        print(f"an edit no longer applies: {exc}", file=sys.stderr)
        return 2
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ROOT)], cwd=SOURCE, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=SOURCE, capture_output=True, text=True).stdout.strip()
    caught = sum(results.values())
    print(f"{caught}/{len(results)} caught ({'fast: own test files' if fast else 'whole suite'}) at {head} in {time.time() - start:.0f} s")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
