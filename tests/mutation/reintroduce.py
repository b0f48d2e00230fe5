#!/usr/bin/env python3
"""Reintroduce, one at a time, the bugs the mutation review found surviving the suite, and check that the
suite now catches each (issue 13). Not part of CI: Rust bugs need two release builds each.

    python3 tests/mutation/reintroduce.py            # every bug
    python3 tests/mutation/reintroduce.py tv_doubled # one bug by name

It works on a fresh git worktree of HEAD in a temporary directory (the checkout you work in is never
touched): the extension is copied from this checkout's build, and `offtd` is imported from the worktree
through PYTHONPATH. For each bug: apply the edit (exact text replacement, or a patch file), rebuild the
extension with `maturin build` when Rust changed, run `pytest -x` on the whole suite, record whether it
failed (caught) and which test failed first, then restore. Exit 1 if any bug survives.
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
        ("python/offtd/reference/transitions.py", "                rr = rho_bar * r\n", "                rho_bar = rho\n                rr = rho_bar * r\n"),
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


def _rebuild() -> None:
    """Build a wheel of the worktree and put its compiled module into the worktree's package."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["maturin", "build", "--release", "--quiet", "--out", out], cwd=ROOT, check=True)
        wheel = next(Path(out).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if re.fullmatch(r"offtd/_core\..*\.so", n))
            (ROOT / "python" / name).write_bytes(zf.read(name))


def _worktree(path: Path) -> None:
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), "HEAD"], cwd=SOURCE, check=True)
    for so in (SOURCE / "python" / "offtd").glob("_core*.so"):
        shutil.copy2(so, path / "python" / "offtd" / so.name)


def _apply(bug: object) -> tuple[dict[Path, str], bool]:
    """Apply a bug; returns the original text of every changed file and whether Rust changed."""
    originals: dict[Path, str] = {}
    if isinstance(bug, dict):
        patch = ROOT / bug["patch"]
        files = re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), flags=re.M)
        for f in files:
            originals[ROOT / f] = (ROOT / f).read_text()
        subprocess.run(["git", "apply", str(patch)], cwd=ROOT, check=True)
    else:
        for rel, old, new in bug:
            path = ROOT / rel
            text = originals.setdefault(path, path.read_text())
            current = path.read_text()
            if current.count(old) != 1:
                raise SystemExit(f"{rel}: the text to replace occurs {current.count(old)} times: {old!r}")
            path.write_text(current.replace(old, new))
            del text
    return originals, any(p.suffix == ".rs" for p in originals)


def run(name: str) -> bool:
    originals, rust = _apply(BUGS[name])
    if not originals:
        raise SystemExit(f"{name}: nothing applied")
    t0 = time.time()
    try:
        if rust:
            _rebuild()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "tests"],
                              cwd=ROOT, capture_output=True, text=True, env=env)  # fmt: skip
    finally:
        for path, text in originals.items():
            path.write_text(text)
        if rust:
            _rebuild()
    first = next((line for line in proc.stdout.splitlines() if line.startswith("FAILED")), "")
    caught = proc.returncode != 0 and bool(first)
    print(f"{name}: {'caught' if caught else 'SURVIVED'} in {time.time() - t0:.0f} s  {first}", flush=True)
    return caught


def main(argv: list[str]) -> int:
    names = argv or list(BUGS)
    unknown = [n for n in names if n not in BUGS]
    if unknown:
        print(f"unknown bug(s): {unknown}; choose from {list(BUGS)}", file=sys.stderr)
        return 2
    global ROOT
    tmp = Path(tempfile.mkdtemp(prefix="offtd-reintroduce-"))
    ROOT = tmp / "tree"
    _worktree(ROOT)
    try:
        results = {n: run(n) for n in names}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ROOT)], cwd=SOURCE, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
