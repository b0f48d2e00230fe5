"""The experiment spec's schema: its tables and keys as frozen dataclasses with their defaults, and the
validation of each key (types, domains, matrices). The checks of a spec as a whole (shapes against the
dimensions, the initial teacher, the memory and work budgets) are offtd.spec_resolve; a spec's I/O (TOML
files, `--set` overrides, writing a spec back) is offtd.spec_io; `offtd.spec` holds all three.

A spec is a TOML file with the tables below; every key has a default, so `name = "x"` alone is a valid
spec. Validation happens before any work starts and raises :class:`SpecError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

Matrix = tuple[tuple[float, ...], ...]


class SpecError(ValueError):
    """A spec problem, with the key (or file) it concerns. `str()` is one line."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{_printable(where)}: {_printable(reason)}")


def _printable(text: str) -> str:
    """`text` with control characters escaped (a key or path may hold a newline): messages stay one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 3, 6, 6, 4
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = 60, 40, 60


def _short(value: Any) -> str:
    """A short repr of a value for an error message: a 400-digit integer, a megabyte string or a list
    nested 5000 deep stays a short line (repr itself would be huge, or raise)."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError, TypeError):  # ints beyond sys.get_int_max_str_digits(), ...
        return f"<{type(value).__name__}>"


# Integers every key accepts at most (the Rust core takes 64-bit sizes); a key's own `hi` may be lower.
INT_MAX = 2**63 - 1


def _is_bool(value: Any) -> bool:
    """Python's bool or numpy's (np.True_ is neither a bool nor an int subclass)."""
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy"


def _is_real(value: Any) -> bool:
    """A real number that is not a bool: int, float, numpy integer and floating scalars, Fraction."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def _f(default: Any, doc: str = "", **check: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **check})


@dataclass(frozen=True)
class RunCfg:
    seed: int = _f(0, "seed of every random stream", lo=0, hi=2**64 - 1)
    outer_iters: int = _f(40, "outer iterations", lo=1)
    horizon: int = _f(100, "steps per trajectory", lo=1)
    batch: int = _f(8, "trajectories per iteration", lo=1)
    probe_every: int = _f(5, "probe period (iterations); probes also run at the last iteration", lo=1)
    last_k: int = _f(5, "entries in mean_last_k / slope_last_k", lo=1)
    max_memory_gb: float = _f(8.0, "refuse specs whose arrays would exceed this", lo=0.0, lo_open=True)
    max_work_seconds: float = _f(
        14400.0, "refuse specs whose estimated work exceeds this many CPU-seconds (offtd.budget)", lo=1.0
    )


@dataclass(frozen=True)
class EnvCfg:
    state_dim: int = _f(2, "n", lo=1, hi=16)
    action_dim: int = _f(2, "m", lo=1, hi=16)
    a: Matrix | None = _f(None, "n x n dynamics; default 0.9 I + 0.1 on the superdiagonal")
    b: Matrix | None = _f(None, "n x m input matrix; default 0.5 on the diagonal")
    q: Matrix | None = _f(None, "n x n state cost (symmetric PSD); default I")
    r: Matrix | None = _f(None, "m x m action cost (symmetric PSD); default I")
    sigma_eps: float = _f(0.1, "environment noise", lo=0.0, hi=1e6)
    sigma_0: float = _f(1.0, "start-state scale", lo=0.0, hi=1e6)
    reward_scale: float = _f(1.0, "c_r in r = -c_r (s'Qs + a'Ra)", lo=0.0, lo_open=True)


@dataclass(frozen=True)
class PolicyCfg:
    # Noise levels are bounded so that the closed forms (squares, their ratios and logs) stay finite.
    sigma_mu: float = _f(0.5, "behaviour std", lo=1e-6, hi=1e6)
    sigma_pi: float = _f(0.5, "target std", lo=1e-6, hi=1e6)
    p_mix: float = _f(0.0, "defensive-mixture weight of pi", lo=0.0, hi=1.0, hi_open=True)
    beta: float = _f(0.1, "behaviour tracking rate", lo=0.0, hi=1.0)
    k_init: Matrix | None = _f(None, "m x n initial gain of pi (and mu); default zeros")
    k_mu_init: Matrix | None = _f(None, "m x n initial gain of mu; default k_init")


@dataclass(frozen=True)
class CriticCfg:
    gamma: float = _f(0.9, "discount", lo=0.0, hi=1.0, hi_open=True)
    alpha_w: float = _f(0.05, "critic step size (0 freezes the critic)", lo=0.0)
    algorithm: str = _f("td0", "td0 | tdc | gtd2 | etd: off-policy TD(0), TDC, GTD2 or emphatic TD(0) (MODEL.md 3.4)",
                        choices=("td0", "tdc", "gtd2", "etd"))
    alpha_h: float = _f(0.1, "step size of the secondary weights h of tdc and gtd2", lo=0.0)
    init: str = _f("zeros", "zeros | teacher | teacher_noise", choices=("zeros", "teacher", "teacher_noise"))
    init_noise: float = _f(0.05, "relative noise on the teacher for teacher_noise (x ||w_teacher|| / sqrt(d))", lo=0.0)


@dataclass(frozen=True)
class ActorCfg:
    alpha_pi: float = _f(0.01, "actor step size", lo=0.0)


@dataclass(frozen=True)
class RhoCfg:
    clip: float = _f(10.0, "rho_clip", lo=0.0, lo_open=True)
    clip_enabled: bool = _f(False, "apply min(rho, clip) in the updates")


@dataclass(frozen=True)
class DistributionProbeCfg:
    enabled: bool = _f(True)
    num_samples: int = _f(4096, "probe states / mu actions", lo=1)
    action_samples: int = _f(64, "size of the MMD set (<= num_samples)", lo=2)


@dataclass(frozen=True)
class FixedPointProbeCfg:
    enabled: bool = _f(True)
    batch_size: int = _f(4096, "one-step transitions", lo=1)
    num_iters: int = _f(2000, "max GMRES inner iterations", lo=1)
    tol: float = _f(1e-7, "relative residual", lo=0.0, lo_open=True)
    repeats: int = _f(16, "disjoint sub-batches for the standard errors of the gaps (at most batch_size are used)", lo=1)


@dataclass(frozen=True)
class StabilityProbeCfg:
    enabled: bool = _f(True)
    batch_size: int = _f(4096, "one-step transitions", lo=1)
    power_iters: int = _f(20, "power-iteration steps", lo=1)
    repeats: int = _f(16, "disjoint sub-batches for the intervals of the estimates (at most batch_size are used)", lo=1)


@dataclass(frozen=True)
class QKernelProbeCfg:
    enabled: bool = _f(True)


@dataclass(frozen=True)
class ProbesCfg:
    distribution: DistributionProbeCfg = field(default_factory=DistributionProbeCfg)
    fixed_point: FixedPointProbeCfg = field(default_factory=FixedPointProbeCfg)
    stability: StabilityProbeCfg = field(default_factory=StabilityProbeCfg)
    q_kernel: QKernelProbeCfg = field(default_factory=QKernelProbeCfg)


@dataclass(frozen=True)
class HealthCfg:
    rho2_max: float = _f(10.0, "FAIL when the second moment of the weights the updates use exceeds this", lo=0.0, lo_open=True)
    khat_warn: float = _f(0.5, "WARN above this PSIS k_hat (of pi/b, without clipping)", lo=-math.inf)
    khat_fail: float = _f(0.7, "FAIL when PSIS k_hat is above this beyond its noise", lo=-math.inf)
    w_norm_max: float = _f(1e6, "FAIL when ||w|| exceeds this many times ||w_teacher||", lo=0.0, lo_open=True)
    td_loss_max: float = _f(1e12, "FAIL when td_loss exceeds this many times the teacher's mean V^2", lo=0.0, lo_open=True)
    # hi: the normal quantile of (1 + level) / 2 must be below 1 in double precision
    level: float = _f(0.95, "confidence level of the intervals verdicts use where no exact value exists", lo=0.5, hi=0.999999)
    clip_mass_warn: float = _f(0.5, "WARN when clipping removes more than this share of E_b[rho] = 1", lo=0.0, hi=1.0)
    clip_mass_fail: float = _f(0.99, "FAIL when clipping removes more than this share (the critic barely moves)", lo=0.0, hi=1.0)
    teacher_gap_warn: float = _f(0.1, "WARN when the exact clipped fixed point is this far from the teacher (relative RMS)", lo=0.0)
    td_rel_tol: float = _f(1e-9, "allowed q-kernel rel diff", lo=0.0)


# Keys that existed once: loading a spec that still sets one says what replaced it.
REMOVED_KEYS = {
    "health.stab_tol": "the stable check judges exact values, or estimates by their interval (health.level)",
    "health.stab_z": "the stable check judges exact values, or estimates by their interval (health.level)",
    "health.step_scale_tol": "the step-scale ratio is 1 by construction and is no longer a check (specs/MODEL.md 7)",
}


@dataclass(frozen=True)
class Spec:
    name: str = _f("default", "experiment name (run directory prefix)")
    run: RunCfg = field(default_factory=RunCfg)
    env: EnvCfg = field(default_factory=EnvCfg)
    policy: PolicyCfg = field(default_factory=PolicyCfg)
    critic: CriticCfg = field(default_factory=CriticCfg)
    actor: ActorCfg = field(default_factory=ActorCfg)
    rho: RhoCfg = field(default_factory=RhoCfg)
    probes: ProbesCfg = field(default_factory=ProbesCfg)
    health: HealthCfg = field(default_factory=HealthCfg)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain nested dicts and lists (TOML/JSON ready)."""
        return _to_plain(self)

    def replace(self, **overrides: Any) -> Spec:
        """A new validated spec with dotted-key overrides, e.g. `replace(**{"policy.p_mix": 0.1})`."""
        from .spec_io import apply_overrides

        return apply_overrides(self, overrides)


_MATRIX_KEYS = {
    "env.a": ("n", "n"),
    "env.b": ("n", "m"),
    "env.q": ("n", "n"),
    "env.r": ("m", "m"),
    "policy.k_init": ("m", "n"),
    "policy.k_mu_init": ("m", "n"),
}
_PSD_KEYS = ("env.q", "env.r")


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    return obj


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _num(x: float | int) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _check_scalar(key: str, value: Any, ftype: Any, meta: Mapping[str, Any]) -> Any:
    tname = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
    # numpy scalars (np.int64, np.float32, np.bool_) are accepted and stored as Python values.
    if tname == "bool":
        if not _is_bool(value):
            raise SpecError(key, f"expected true or false, got {_short(value)}")
        return bool(value)
    if tname == "int":
        if isinstance(value, numbers.Integral) and not _is_bool(value):
            value = int(value)
        elif _is_real(value) and _float_or_none(value) is not None and float(value).is_integer():
            value = int(float(value))
        else:
            raise SpecError(key, f"expected an integer, got {_short(value)}")
    elif tname == "float":
        if not _is_real(value):
            raise SpecError(key, f"expected a number, got {_short(value)}")
        as_float = _float_or_none(value)
        if as_float is None or not math.isfinite(as_float):
            raise SpecError(key, f"must be finite, got {_short(value)}")
        value = as_float
    elif tname == "str":
        if not isinstance(value, str):
            raise SpecError(key, f"expected a string, got {_short(value)}")
        value = str(value)  # np.str_ -> str
        choices = meta.get("choices")
        if choices and value not in choices:
            raise SpecError(key, f"must be one of {', '.join(choices)}, got {_short(value)}{_suggest(value, list(choices))}")
        if key == "name" and (
            not value or value in (".", "..") or any(c == "/" or not c.isprintable() for c in value)
        ):
            raise SpecError(key, f"must be a non-empty name without '/' or control characters, got {_short(value)}")
        return value
    lo, hi = meta.get("lo"), meta.get("hi")
    if tname == "int" and hi is None:
        hi = INT_MAX
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        op = ">" if meta.get("lo_open") else ">="
        raise SpecError(key, f"must be {op} {_num(lo)}, got {_short(value)}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        op = "<" if meta.get("hi_open") else "<="
        raise SpecError(key, f"must be {op} {_num(hi)}, got {_short(value)}")
    return value


def _float_or_none(value: Any) -> float | None:
    """float(value), or None when it does not fit a double (a 400-digit integer: OverflowError)."""
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return None


def _check_matrix(key: str, value: Any) -> Matrix | None:
    if value is None:
        return None
    if _is_ndarray(value):  # numpy arrays from notebooks: rows of numbers, like a list of lists
        value = value.tolist() if value.ndim == 2 else value
    if not isinstance(value, (list, tuple)) or not value:
        raise SpecError(key, f"expected a matrix (a list of rows), got {_short(value)}")
    value = [r.tolist() if _is_ndarray(r) and r.ndim == 1 else r for r in value]
    if not all(isinstance(r, (list, tuple)) for r in value):
        raise SpecError(key, f"expected a matrix (a list of rows), got {_short(value)}")
    rows = []
    for row in value:
        out = []
        for x in row:
            if not _is_real(x):
                raise SpecError(key, f"matrix entries must be numbers, got {_short(x)}")
            as_float = _float_or_none(x)
            if as_float is None or not math.isfinite(as_float):
                raise SpecError(key, f"matrix entries must be finite, got {_short(x)}")
            out.append(as_float)
        rows.append(tuple(out))
    if len({len(r) for r in rows}) != 1:
        raise SpecError(key, "matrix rows have different lengths")
    return tuple(rows)


def _is_ndarray(value: Any) -> bool:
    return type(value).__name__ == "ndarray" and type(value).__module__ == "numpy"


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise SpecError(prefix.rstrip(".") or "spec", f"expected a table, got {_short(data)}")
    known = {f.name: f for f in fields(cls)}
    for k in data:
        if f"{prefix}{k}" in REMOVED_KEYS:
            raise SpecError(f"{prefix}{k}", f"no longer a key: {REMOVED_KEYS[f'{prefix}{k}']}")
        if k not in known:
            raise SpecError(f"{prefix}{k}", f"unknown key{_suggest(k, list(known))}")
    kwargs = {}
    for name, f in known.items():
        key = f"{prefix}{name}"
        if name not in data:
            continue
        value = data[name]
        ftype = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        sub = _SUBTABLES.get(ftype)
        if sub is not None:
            kwargs[name] = _build(sub, value, f"{key}.")
        elif key in _MATRIX_KEYS:
            kwargs[name] = _check_matrix(key, value)
        else:
            kwargs[name] = _check_scalar(key, value, ftype, f.metadata)
    return cls(**kwargs)


_SUBTABLES: dict[str, type] = {
    "RunCfg": RunCfg,
    "EnvCfg": EnvCfg,
    "PolicyCfg": PolicyCfg,
    "CriticCfg": CriticCfg,
    "ActorCfg": ActorCfg,
    "RhoCfg": RhoCfg,
    "ProbesCfg": ProbesCfg,
    "DistributionProbeCfg": DistributionProbeCfg,
    "FixedPointProbeCfg": FixedPointProbeCfg,
    "StabilityProbeCfg": StabilityProbeCfg,
    "QKernelProbeCfg": QKernelProbeCfg,
    "HealthCfg": HealthCfg,
}


def _default_matrix(key: str, n: int, m: int) -> Matrix:
    if key == "env.a":
        return tuple(tuple(0.9 if i == j else (0.1 if j == i + 1 else 0.0) for j in range(n)) for i in range(n))
    if key == "env.b":
        return tuple(tuple(0.5 if i == j else 0.0 for j in range(m)) for i in range(n))
    if key == "env.q":
        return tuple(tuple(1.0 if i == j else 0.0 for j in range(n)) for i in range(n))
    if key == "env.r":
        return tuple(tuple(1.0 if i == j else 0.0 for j in range(m)) for i in range(m))
    return tuple(tuple(0.0 for _ in range(n)) for _ in range(m))  # gains


def sub_batches(cfg: FixedPointProbeCfg | StabilityProbeCfg) -> int:
    """The number of sub-batches a probe uses: `repeats`, at most `batch_size`."""
    return min(cfg.repeats, cfg.batch_size)


# The `[sweep]` table of a spec file (grid, seeds, keep: offtd.sweep reads it) is not part of the experiment:
# `offtd run` ignores it.
SWEEP_TABLE = "sweep"
