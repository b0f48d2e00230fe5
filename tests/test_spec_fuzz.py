"""Hypothesis-generated specs (issue 5): mutations of a small valid spec — random keys, values and types —
written as TOML and run through the command line in-process. Each is either accepted and run (exit 0,
report.json written) or rejected (exit 2, one line naming the problem, no run directory); never a
traceback or another exit code."""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import fields, is_dataclass
from pathlib import Path

import tomllib
from hypothesis import event, example, given
from hypothesis import strategies as st

from offtd import cli
from offtd.spec import Spec

# A small valid spec: every accepted mutation runs in a fraction of a second on the reference backend.
TINY = {
    "name": "fuzz",
    "run": {"outer_iters": 2, "horizon": 3, "batch": 1, "probe_every": 1, "last_k": 2},
    "probes": {
        "distribution": {"num_samples": 16, "action_samples": 4},
        "fixed_point": {"batch_size": 16, "num_iters": 20, "repeats": 2},
        "stability": {"batch_size": 16, "power_iters": 5, "repeats": 2},
    },
}


def _schema(obj=None, prefix: str = ""):
    """(dotted key, dataclass field) of every leaf key of a spec."""
    obj = Spec() if obj is None else obj
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from _schema(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


SCHEMA = dict(_schema())
TABLES = sorted({k.rsplit(".", 1)[0] for k in SCHEMA if "." in k} | {"probes"})
# Keys whose size the memory check guards: huge values are refused there, not run. Elsewhere (power_iters,
# num_iters, ...) a huge accepted value would only make the run slow, so the fuzzer keeps those small.
HUGE_OK = {
    "run.seed", "run.outer_iters", "run.horizon", "run.batch", "run.probe_every", "run.last_k", "env.state_dim",
    "env.action_dim", "probes.distribution.num_samples", "probes.fixed_point.batch_size",
    "probes.stability.batch_size", "probes.stability.repeats",
}  # fmt: skip

# ------------------------------------------------------------------------------------ TOML writing

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE.fullmatch(k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(data: dict) -> str:
    lines: list[str] = []

    def emit(table: dict, path: list[str]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if path and (scalars or not subs):
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in subs.items():
            emit(v, [*path, k])

    emit(data, [])
    return "\n".join(lines) + "\n"


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------------------ strategies

small_floats = st.floats(-3, 8, allow_nan=False)
special_floats = st.sampled_from([0.0, -0.0, 1.0, 2.0, 0.5, math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324])
huge_ints = st.sampled_from([10**12, 2**63 - 1, 2**64 - 1, 2**64, -(2**63)])
strings = st.one_of(st.text(max_size=6), st.sampled_from(["zeros", "teacher", "teachr", "", "a/b", "true", "1"]))
matrices = st.lists(st.lists(st.one_of(small_floats, special_floats, st.integers(-2, 2)), min_size=0, max_size=3), max_size=3)
odd_values = st.one_of(
    st.booleans(),
    strings,
    st.lists(st.integers(-2, 2), max_size=3),
    matrices,
    st.dictionaries(st.sampled_from(["x", "seed", "gamma"]), st.integers(0, 3), max_size=2),
)


def value_for(key: str):
    """Any value for `key`: mostly its own type (in or out of domain), sometimes any other type."""
    f = SCHEMA.get(key)
    ftype = str(f.type) if f is not None else ""
    if ftype == "int":
        own = st.one_of(st.integers(-3, 8), st.sampled_from([2.0, 2.5, math.nan, math.inf]))
        if key in HUGE_OK:
            own = st.one_of(own, huge_ints, st.just(1e20))
    elif ftype == "float":
        own = st.one_of(small_floats, special_floats, st.floats(), st.integers(-3, 8))
    elif ftype == "bool":
        own = st.booleans()
    elif ftype == "str":
        own = strings
    elif "Matrix" in ftype:
        own = matrices
    else:
        own = st.one_of(st.integers(-3, 8), small_floats)
    return st.one_of(own, own, own, odd_values)


def _set(data: dict, key: str, value) -> None:
    *path, last = key.split(".")
    cur = data
    for part in path:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[last] = value


def _delete(data: dict, key: str) -> None:
    *path, last = key.split(".")
    cur = data
    for part in path:
        cur = cur.get(part)
        if not isinstance(cur, dict):
            return
    cur.pop(last, None)


def _copy(data):
    return {k: _copy(v) for k, v in data.items()} if isinstance(data, dict) else data


known_keys = st.sampled_from(sorted(SCHEMA))
unknown_names = st.one_of(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), st.text(min_size=1, max_size=6))


@st.composite
def mutation(draw):
    kind = draw(st.sampled_from(["set", "set", "set", "unknown", "delete", "table"]))
    if kind == "set":
        key = draw(known_keys)
        return ("set", key, draw(value_for(key)))
    if kind == "unknown":
        table = draw(st.sampled_from(["", *TABLES]))
        name = draw(unknown_names)
        return ("set", f"{table}.{name}" if table else name, draw(value_for("")))
    if kind == "delete":
        return ("delete", draw(known_keys), None)
    return ("set", draw(st.sampled_from(TABLES)), draw(st.one_of(st.integers(-1, 3), strings, st.booleans())))


@st.composite
def mutated_specs(draw):
    data = _copy(TINY)
    for op, key, value in draw(st.lists(mutation(), min_size=1, max_size=3)):
        if op == "set":
            _set(data, key, value)
        else:
            _delete(data, key)
    return data


# In-domain values (a valid spec stays valid): ranges that respect the cross-key constraints and keep the
# run tiny.
IN_DOMAIN_INTS = {
    "run.outer_iters": (1, 3), "run.horizon": (1, 4), "run.batch": (1, 2), "run.probe_every": (1, 3),
    "run.last_k": (1, 5), "run.seed": (0, 2**64 - 1), "env.state_dim": (1, 4), "env.action_dim": (1, 3),
    "probes.distribution.num_samples": (8, 32), "probes.distribution.action_samples": (2, 8),
    "probes.fixed_point.batch_size": (1, 32), "probes.fixed_point.num_iters": (1, 20),
    "probes.stability.batch_size": (4, 32), "probes.stability.power_iters": (1, 10),
    "probes.stability.repeats": (1, 4), "probes.fixed_point.repeats": (1, 4),
}  # fmt: skip
IN_DOMAIN_FLOATS = {
    "run.max_memory_gb": (1.0, 64.0),
    "health.khat_warn": (-1.0, 0.5),
    "health.khat_fail": (0.5, 2.0),
    "health.clip_mass_warn": (0.0, 0.5),
    "health.clip_mass_fail": (0.5, 1.0),
}


def in_domain(key: str):
    f = SCHEMA[key]
    meta, ftype = f.metadata, str(f.type)
    if ftype == "bool":
        return st.booleans()
    if ftype == "int":
        lo, hi = IN_DOMAIN_INTS[key]
        return st.integers(lo, hi)
    if ftype == "str":
        return st.sampled_from(meta["choices"]) if "choices" in meta else st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
    lo, hi = IN_DOMAIN_FLOATS.get(key, (meta.get("lo", -10.0), meta.get("hi")))
    lo = -10.0 if lo is None or math.isinf(lo) else lo
    hi = lo + 10.0 if hi is None else hi
    return st.floats(lo, hi, exclude_min=bool(meta.get("lo_open")), exclude_max=bool(meta.get("hi_open")))


SCALAR_KEYS = sorted(k for k, f in SCHEMA.items() if "Matrix" not in str(f.type))


@st.composite
def valid_specs(draw):
    data = _copy(TINY)
    for key in draw(st.lists(st.sampled_from(SCALAR_KEYS), min_size=1, max_size=6, unique=True)):
        _set(data, key, draw(in_domain(key)))
    return data


SET_VALUES = [
    "0", "1", "2", "-1", "0.5", "1.0", "2.5", "nan", "inf", "-inf", "true", "false", '"zeros"', "teacher", "abc", "",
    "[[1.0, 0.0], [0.0, 1.0]]", "[[1.0]]", "[[1.0],[0.5]]", "[1, 2]", "{x = 1}", "1e400", "1979-05-27", "'a/b'", "= 3",
]  # fmt: skip


@st.composite
def set_items(draw):
    key = draw(st.one_of(known_keys, known_keys, st.sampled_from(TABLES), unknown_names, st.just("")))
    raw = draw(st.one_of(st.sampled_from(SET_VALUES), st.just("100000000000000") if key in HUGE_OK else st.just("3")))
    return draw(st.sampled_from([f"{key}={raw}", f"{key}={raw}", key, f" {key} = {raw} "]))


# ------------------------------------------------------------------------------------ the check


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse's errors leave through _Parser.error
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def _accepted_or_rejected(rc: int, out: str, err: str, out_dir: Path) -> str:
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("offtd: error: "), err
        assert out == ""
        assert not list(out_dir.rglob("report.json")) and not list(out_dir.glob("*/*")), "rejected but a run directory exists"
        return "rejected"
    assert rc == 0, (rc, out, err)
    run_dir = Path(out.splitlines()[0])
    assert run_dir.parent.parent == out_dir
    report = json.loads((run_dir / "report.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert report["health"]["status"] in ("PASS", "WARN", "FAIL")
    info = report["run_info"]
    assert info["completed_iters"] == info["outer_iters"] or info["diverged_at"] == info["completed_iters"] - 1
    assert out.splitlines()[1] == report["health"]["status_line"]
    return "accepted"


def _run_spec(data: dict, *extra: str) -> str:
    text = to_toml(data)
    assert _same(tomllib.loads(text), data), text  # the test's TOML writer says what we mean
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_text(text, encoding="utf-8")
        out_dir = Path(tmp) / "out"
        rc, out, err = _cli(["run", str(path), "--backend", "python", "--out", str(out_dir), "--quiet", *extra])
        return _accepted_or_rejected(rc, out, err, out_dir)


def _with(key: str, value) -> dict:
    data = _copy(TINY)
    _set(data, key, value)
    return data


# Examples the fuzzer found (each was a traceback or a two-line error before the fix).
@example(_with("critic.alpha_w", 0.0))  # ZeroDivisionError in the stability probe's scale ratio
@example(_with("critic.alpha_w", 5e-324))
@example(_with("policy.sigma_mu", 5e-324))  # ZeroDivisionError in the closed-form KL
@example(_with("policy.sigma_pi", 1e-200))  # math domain error in the closed-form TV
@example(_with("env.sigma_eps", 1e300))  # OverflowError in the teacher
@example(_with("\r", 0))  # a key holding a newline split the error message
@example(_with("run.outer_iters", 1e20))  # the series arrays did not fit: a numpy traceback
@given(mutated_specs())
def test_mutated_specs_are_run_or_rejected_in_one_line(data):
    event(_run_spec(data))


@given(valid_specs())
def test_in_domain_mutations_are_accepted_and_run(data):
    assert _run_spec(data) == "accepted"


@given(st.lists(set_items(), min_size=1, max_size=3))
def test_set_overrides_are_run_or_rejected_in_one_line(items):
    event(_run_spec(TINY, *(f"--set={item}" for item in items)))


def test_tiny_spec_is_accepted():
    assert _run_spec(TINY) == "accepted"


def test_rejections_name_the_mutated_key():
    # Deterministic spot checks of the same machinery: the one line names the key that was broken.
    for key, value in [("critic.gamma", 1.0), ("run.horizon", 2.5), ("probes.stability.power_iters", 0), ("rho.clip", math.nan)]:
        data = _copy(TINY)
        _set(data, key, value)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "spec.toml"
            path.write_text(to_toml(data))
            rc, _, err = _cli(["run", str(path), "--backend", "python", "--out", str(Path(tmp) / "out")])
        assert rc == 2 and f"offtd: error: {key}: " in err, err
