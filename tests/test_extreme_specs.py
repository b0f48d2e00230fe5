"""Valid but extreme specs (issue "Robustness II"): Hypothesis draws specs whose keys sit at the edges of
their domains — the smallest and largest allowed values, open bounds approached to one ulp, subnormal and
near-overflow floats, matrices of such entries at every shape up to the 16 x 16 cap — and runs each as
`offtd run` in a subprocess with a timeout and an address-space cap. Each must finish (exit 0) with a
strict-JSON report (no NaN / Infinity tokens) or be refused (exit 2, one line, no run directory): never a
traceback, another exit code or a hang.

Runs are kept short (outer_iters, horizon, batch and probe sizes of at most a few), so the default
profile takes a minute or two on 2 cores; HYPOTHESIS_PROFILE=thorough draws ten times as many specs."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from conftest import _subprocess_env
from offtd.spec import INT_MAX, Spec

THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
MAX_EXAMPLES = 400 if THOROUGH else 40
MEM_CAP = 3 * 2**30
TIMEOUT = 600  # n = 16 on a loaded machine; a typical example takes a second

F_MAX = sys.float_info.max
F_TINY = 5e-324  # the smallest subnormal
F_MIN_NORMAL = sys.float_info.min


def _schema(obj=None, prefix: str = ""):
    obj = Spec() if obj is None else obj
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from _schema(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


SCHEMA = dict(_schema())
MATRIX_KEYS = {"env.a", "env.b", "env.q", "env.r", "policy.k_init", "policy.k_mu_init"}

# ---------------------------------------------------------------------------------------- edges


def _in_domain(x: float, meta) -> bool:
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (x < lo or (meta.get("lo_open") and x == lo)):
        return False
    if hi is not None and (x > hi or (meta.get("hi_open") and x == hi)):
        return False
    return math.isfinite(x)


def float_edges(key: str) -> list[float]:
    """The edges of a float key's domain: its bounds (one ulp inside when open), the extremes of the
    doubles on the unbounded sides, subnormal and tiny values, and 1."""
    meta = SCHEMA[key].metadata
    lo, hi = meta.get("lo"), meta.get("hi")
    out = []
    if lo is not None and math.isfinite(lo):
        out.append(math.nextafter(lo, math.inf) if meta.get("lo_open") else lo)
    if hi is not None:
        out.append(math.nextafter(hi, -math.inf) if meta.get("hi_open") else hi)
    if hi is None:
        out += [F_MAX, 1e300, 1e154]
    if lo is None or not math.isfinite(lo):
        out += [-F_MAX, -1e300]
    out += [F_TINY, F_MIN_NORMAL, 1e-300, 1.0]
    return sorted({x for x in out if _in_domain(x, meta)})


# Integer keys: the edges that keep an accepted run short, and 2^63 - 1 where the memory estimate refuses
# it (sizes) or where it costs nothing (periods, repeats: at most batch_size sub-batches are used). The
# largest value is drawn one time in ten, so that most specs run rather than being refused for memory.
INT_EDGES = {
    "run.seed": [0, 1, 2**64 - 1],
    "run.outer_iters": [1, 2, 3],
    "run.horizon": [1, 2, 3],
    "run.batch": [1, 2],
    "run.probe_every": [1, 2],
    "run.last_k": [1, 2],
    "probes.distribution.num_samples": [2, 3, 64],
    "probes.fixed_point.batch_size": [1, 2, 16],
    "probes.fixed_point.num_iters": [1, 2, 50],
    "probes.fixed_point.repeats": [1, 2],
    "probes.stability.batch_size": [1, 2, 16],
    "probes.stability.power_iters": [1, 2, 50],
    "probes.stability.repeats": [1, 2],
}
HUGE_OK = {"run.outer_iters", "run.horizon", "run.batch", "run.probe_every", "run.last_k", "probes.distribution.num_samples",
           "probes.fixed_point.batch_size", "probes.fixed_point.repeats", "probes.stability.batch_size",
           "probes.stability.repeats"}  # fmt: skip
SCALES = [F_TINY, 1e-300, F_MIN_NORMAL, 1.0, 1.0, 1e154, 1e300, F_MAX]
BASE_ENTRIES = [0.0, -0.0, 0.5, -0.5, 1.0, 0.1]
EXTREME_ENTRIES = [F_TINY, -F_TINY, 1e-300, 1e154, -1e154, 1e300, -1e300, F_MAX, -F_MAX]
NAMES = ["x", "x" * 255, "a|b <b>c<b> & #", "ünïcödé ✓", "-", "_", "\\\\", "`code`", "[l](javascript:x)"]


@st.composite
def _matrix(draw, rows: int, cols: int):
    """Moderate entries times one extreme scale (entries at most |1| * scale: finite), or zeros with one
    extreme entry."""
    if draw(st.booleans()):
        scale = draw(st.sampled_from(SCALES))
        base = draw(st.lists(st.lists(st.sampled_from(BASE_ENTRIES), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
        return [[x * scale for x in row] for row in base]
    out = [[0.0] * cols for _ in range(rows)]
    out[draw(st.integers(0, rows - 1))][draw(st.integers(0, cols - 1))] = draw(st.sampled_from(EXTREME_ENTRIES))
    return out


def _psd(n: int):
    """Diagonal, each entry 0, 1 or an extreme scale (a positive semidefinite cost at the edges)."""
    return st.lists(st.sampled_from([0.0, 1.0, *SCALES]), min_size=n, max_size=n).map(
        lambda diag: [[diag[i] if i == j else 0.0 for j in range(n)] for i in range(n)]
    )


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    cur = data
    for part in path:
        cur = cur.setdefault(part, {})
    cur[last] = value


@st.composite
def extreme_specs(draw):
    """(spec dict, backend): most keys at an edge, the rest at their defaults."""
    backend = draw(st.sampled_from(["rust", "rust", "python"]))
    dims = [1, 2, 3] if backend == "python" else [1, 2, 3, 16]  # the reference is slow at n = 16
    n, m = draw(st.sampled_from(dims)), draw(st.sampled_from(dims))
    data: dict = {"env": {"state_dim": n, "action_dim": m}}
    for key, f in SCHEMA.items():
        if key in ("env.state_dim", "env.action_dim") or draw(st.integers(0, 9)) == 0:
            continue  # ~10% of keys keep their default
        ftype = str(f.type)
        if key in MATRIX_KEYS:
            if draw(st.booleans()):
                continue  # the default matrix
            shape = {"env.a": (n, n), "env.b": (n, m), "policy.k_init": (m, n), "policy.k_mu_init": (m, n)}
            value = draw(_psd(n if key == "env.q" else m)) if key in ("env.q", "env.r") else draw(_matrix(*shape[key]))
        elif ftype == "bool":
            value = draw(st.booleans())
        elif ftype == "int":
            if key == "probes.distribution.action_samples":
                continue  # set below, <= num_samples
            huge = key in HUGE_OK and draw(st.integers(0, 9)) == 0
            value = INT_MAX if huge else draw(st.sampled_from(INT_EDGES[key]))
        elif ftype == "str":
            value = draw(st.sampled_from(NAMES)) if key == "name" else draw(st.sampled_from(f.metadata["choices"]))
        elif key == "run.max_memory_gb":
            value = draw(st.sampled_from([8.0] * 8 + [F_MAX, F_TINY]))  # tiny refuses every spec
        else:
            value = draw(st.sampled_from(float_edges(key)))
        _set(data, key, value)
    num = data.get("probes", {}).get("distribution", {}).get("num_samples", 4096)
    _set(data, "probes.distribution.action_samples", draw(st.sampled_from([2, min(num, 64)])))
    health = data.setdefault("health", {})
    for warn, fail in (("khat_warn", "khat_fail"), ("clip_mass_warn", "clip_mass_fail")):  # warn <= fail
        lo, hi = (health.get(k, SCHEMA[f"health.{k}"].default) for k in (warn, fail))
        health[warn], health[fail] = min(lo, hi), max(lo, hi)
    for part in ("fixed_point", "stability"):  # keep accepted probes small whatever was drawn
        probe = data.setdefault("probes", {}).setdefault(part, {})
        probe.setdefault("batch_size", 16)
        probe.setdefault("power_iters" if part == "stability" else "num_iters", 20)
    _cap_defaults(data)
    return data, backend


def _cap_defaults(data: dict) -> None:
    """Sizes left at their defaults (horizon 100, 4096 probe samples) would make runs slow: small ones."""
    for key, small in (("run.outer_iters", 2), ("run.horizon", 3), ("run.batch", 2), ("probes.distribution.num_samples", 64)):
        table, name = key.rsplit(".", 1)
        cur = data
        for part in table.split("."):
            cur = cur.setdefault(part, {})
        cur.setdefault(name, small)


# ------------------------------------------------------------------------------------ TOML and run


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string of printable characters is a TOML basic string
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def to_toml(data: dict, path: tuple[str, ...] = ()) -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"[{'.'.join(path)}]"] if path and scalars else []
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    text = "\n".join(lines) + "\n" if lines else ""
    return text + "".join(to_toml(v, (*path, k)) for k, v in data.items() if isinstance(v, dict))


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP, MEM_CAP))


def _strict(path: Path) -> dict:
    def refuse(token: str):
        raise AssertionError(f"{path}: non-strict JSON token {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def check(data: dict, backend: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(to_toml(data), encoding="utf-8")
        out = Path(tmp) / "out"
        proc = subprocess.run(
            [sys.executable, "-m", "offtd", "run", str(spec), "--backend", backend, "--out", str(out), "--quiet"],
            capture_output=True, text=True, env=_subprocess_env(), timeout=TIMEOUT, preexec_fn=_limits,
        )  # fmt: skip
        assert "Traceback" not in proc.stderr, proc.stderr
        if proc.returncode == 2:
            lines = proc.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith("offtd: error: "), proc.stderr
            assert proc.stdout == ""
            assert not list(out.glob("*/*")), "refused, but a run directory exists"
            _record(f"refused: {lines[0].split(': ')[2]}")
            return "refused"
        assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr, to_toml(data))
        assert proc.stderr == ""
        run_dir, status_line = proc.stdout.splitlines()
        report = _strict(Path(run_dir) / "report.json")
        assert report["health"]["status"] in ("PASS", "WARN", "FAIL") and report["health"]["status_line"] == status_line
        info = report["run_info"]
        assert info["completed_iters"] == info["outer_iters"] or info["diverged_at"] == info["completed_iters"] - 1
        for name in ("report.md", "series.csv", "spec.toml"):
            assert (Path(run_dir) / name).is_file()
        _record(f"ran: {report['health']['status']}")
        return "ran"


def _record(what: str) -> None:
    """A Hypothesis event (shown with --hypothesis-show-statistics) when inside a Hypothesis test."""
    try:
        event(what[:80])
    except Exception:  # outside a Hypothesis test (the corners)
        pass


# Deterministic corners: everything at its lower edge at the 16 x 16 cap; everything huge; everything tiny.
LOWEST = {
    "name": "x", "env": {"state_dim": 16, "action_dim": 16, "sigma_eps": 0.0, "sigma_0": 0.0, "reward_scale": F_TINY},
    "run": {"seed": 0, "outer_iters": 1, "horizon": 1, "batch": 1, "probe_every": 1, "last_k": 1},
    "policy": {"sigma_mu": 1e-6, "sigma_pi": 1e-6, "p_mix": 0.0, "beta": 0.0},
    "critic": {"gamma": 0.0, "alpha_w": 0.0, "init": "teacher_noise", "init_noise": 0.0},
    "actor": {"alpha_pi": 0.0}, "rho": {"clip": F_TINY, "clip_enabled": True},
    "probes": {"distribution": {"num_samples": 2, "action_samples": 2},
               "fixed_point": {"batch_size": 1, "num_iters": 1, "tol": F_TINY, "repeats": 1},
               "stability": {"batch_size": 1, "power_iters": 1, "repeats": 1}},
    "health": {"rho2_max": F_TINY, "khat_warn": -F_MAX, "khat_fail": -F_MAX, "w_norm_max": F_TINY, "td_loss_max": F_TINY,
               "level": 0.5, "clip_mass_warn": 0.0, "clip_mass_fail": 0.0, "teacher_gap_warn": 0.0, "td_rel_tol": 0.0},
}  # fmt: skip
HIGHEST = {
    # reward_scale: c0 ~ sigma_pi^2 / (1 - gamma) ~ 1e28 here, so 1e250 keeps the teacher finite (F_MAX: below)
    "name": "x" * 255, "env": {"state_dim": 2, "action_dim": 2, "sigma_eps": 1e6, "sigma_0": 1e6, "reward_scale": 1e250},
    "run": {"seed": 2**64 - 1, "outer_iters": 2, "horizon": 3, "batch": 2, "probe_every": INT_MAX, "last_k": INT_MAX},
    "policy": {"sigma_mu": 1e6, "sigma_pi": 1e6, "p_mix": math.nextafter(1.0, 0.0), "beta": 1.0},
    "critic": {"gamma": math.nextafter(1.0, 0.0), "alpha_w": F_MAX, "init": "zeros", "init_noise": F_MAX},
    "actor": {"alpha_pi": F_MAX}, "rho": {"clip": F_MAX, "clip_enabled": True},
    "probes": {"distribution": {"num_samples": 64, "action_samples": 64},
               "fixed_point": {"batch_size": 16, "num_iters": 50, "tol": F_MAX, "repeats": INT_MAX},
               "stability": {"batch_size": 16, "power_iters": 50, "repeats": INT_MAX}},
    "health": {"rho2_max": F_MAX, "khat_warn": F_MAX, "khat_fail": F_MAX, "w_norm_max": F_MAX, "td_loss_max": F_MAX,
               "level": 0.999999, "clip_mass_warn": 1.0, "clip_mass_fail": 1.0, "teacher_gap_warn": F_MAX, "td_rel_tol": F_MAX},
}  # fmt: skip
TINY_ENTRIES = {
    "env": {"a": [[F_TINY, F_TINY], [F_TINY, F_TINY]], "b": [[F_TINY, 0.0], [0.0, F_TINY]], "q": [[F_TINY, 0.0], [0.0, F_TINY]],
            "r": [[F_TINY, 0.0], [0.0, 0.0]], "sigma_eps": F_TINY, "sigma_0": F_TINY, "reward_scale": F_TINY},
    "policy": {"k_init": [[F_TINY, -F_TINY], [0.0, F_TINY]]}, "critic": {"init": "teacher", "alpha_w": F_TINY},
    "run": {"outer_iters": 2, "horizon": 2, "batch": 1},
    "probes": {"distribution": {"num_samples": 8, "action_samples": 8}, "fixed_point": {"batch_size": 8},
               "stability": {"batch_size": 8}},
}  # fmt: skip


def test_corners_run():
    assert check(LOWEST, "rust") == "ran"
    assert check(HIGHEST, "rust") == "ran"
    overflow = {**HIGHEST, "env": {**HIGHEST["env"], "reward_scale": F_MAX}}
    assert check(overflow, "rust") == "refused"  # the teacher at the initial gains overflows
    assert check(TINY_ENTRIES, "rust") == "ran"
    assert check(TINY_ENTRIES, "python") == "ran"


# Found by this test: a zero standard error (one stability sub-batch) divided the advice's margin by 0.
ZERO_SE = {
    "name": "x", "env": {"state_dim": 1, "action_dim": 1, "a": [[-F_TINY]], "q": [[0.0]], "sigma_eps": 0.0, "sigma_0": 0.0,
                         "reward_scale": F_TINY},
    "run": {"outer_iters": 1, "horizon": 1, "probe_every": INT_MAX, "batch": 2},
    "policy": {"sigma_mu": 1e-6, "sigma_pi": 1e-6, "p_mix": 0.0, "beta": 0.0, "k_init": [[F_MAX]], "k_mu_init": [[F_TINY]]},
    "critic": {"gamma": F_MIN_NORMAL, "alpha_w": F_MAX},
    "probes": {"distribution": {"action_samples": 2, "num_samples": 64}, "fixed_point": {"batch_size": 16, "num_iters": 20},
               "stability": {"batch_size": 16, "power_iters": 20}},
}  # fmt: skip


@settings(max_examples=MAX_EXAMPLES)
@example((HIGHEST, "python"))
@example((ZERO_SE, "rust"))
@given(extreme_specs())
def test_extreme_specs_run_or_are_refused(drawn):
    data, backend = drawn
    check(data, backend)
