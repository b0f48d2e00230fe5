"""A spec's I/O: reading TOML files (and the embedded default experiment), `--set` overrides, and writing
a resolved spec back as TOML. The schema and validation are offtd.spec_schema."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from . import spec_resolve
from .spec_schema import _SUBTABLES, Spec, SpecError, _suggest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _format_toml_error(path: str, err: Exception) -> SpecError:
    return SpecError(path, f"malformed TOML: {err}")


def parse_override(item: str) -> tuple[str, Any]:
    """`table.key=value` -> (dotted key, TOML-parsed value; bare words are strings)."""
    if "=" not in item:
        raise SpecError(f"--set {item}", "expected KEY=VALUE, e.g. policy.p_mix=0.1")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key or not all(part.strip() for part in key.split(".")):
        raise SpecError(f"--set {item}", "empty key or key part, expected e.g. policy.p_mix=0.1")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:  # [[[[... thousands deep: the parser recurses once per level
        raise SpecError(f"--set {key}", "value nested too deeply") from None
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur: Any = data
    cls: Any = Spec
    for i, part in enumerate(parts):
        known = {f.name: f for f in fields(cls)}
        if part not in known:
            where = ".".join(parts[: i + 1])
            raise SpecError(where, f"unknown key{_suggest(part, list(known))}")
        ftype = known[part].type
        ftype = ftype if isinstance(ftype, str) else getattr(ftype, "__name__", str(ftype))
        sub = _SUBTABLES.get(ftype)
        if i == len(parts) - 1:
            if sub is not None:
                raise SpecError(key, "is a table; set one of its keys, e.g. " f"{key}.{fields(sub)[0].name}=...")
            cur[part] = value
        else:
            if sub is None:
                raise SpecError(".".join(parts[: i + 1]), "is not a table")
            cur = cur.setdefault(part, {})
            if not isinstance(cur, dict):
                raise SpecError(".".join(parts[: i + 1]), "is not a table")
            cls = sub


def apply_overrides(spec: Spec | Mapping[str, Any], overrides: Mapping[str, Any]) -> Spec:
    """Apply dotted-key overrides (`{"policy.p_mix": 0.1}`) and re-validate the whole spec."""
    data = _drop_none(spec.to_dict()) if isinstance(spec, Spec) else _deep_copy(spec)
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    return spec_resolve.spec_from_dict(data)  # looked up at call time (tests patch it)


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}


# A spec is a few kilobytes; reading stops here (`offtd run /dev/zero` must not read forever).
MAX_SPEC_BYTES = 1 << 20


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a SpecError naming the file (and line, column)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            text = fh.read(MAX_SPEC_BYTES + 1)
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(str(path), f"larger than {MAX_SPEC_BYTES // 2**20} MiB: not a spec file")
    except FileNotFoundError:
        raise SpecError(str(path), "no such spec file") from None
    except IsADirectoryError:
        raise SpecError(str(path), "is a directory, not a spec file") from None
    except OSError as exc:
        raise SpecError(str(path), f"cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise SpecError(str(path), "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise _format_toml_error(str(path), exc) from None
    except RecursionError:
        raise SpecError(str(path), "malformed TOML: arrays or tables nested too deeply") from None


def default_spec_text() -> str:
    """The embedded default experiment (the same file as specs/default.toml)."""
    return resources.files("offtd").joinpath("specs/default.toml").read_text(encoding="utf-8")


def load_spec(
    source: str | os.PathLike[str] | Mapping[str, Any] | Spec | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Spec:
    """Load and validate a spec.

    `source` is a path to a TOML file, a nested dict, a Spec, or None for the embedded default
    experiment. `overrides` maps dotted keys to values (`{"run.seed": 3}`).
    """
    try:
        if source is None:
            data: dict[str, Any] = tomllib.loads(default_spec_text())
        elif isinstance(source, Spec):
            data = _drop_none(source.to_dict())
        elif isinstance(source, Mapping):
            data = _deep_copy(source)
        else:
            data = read_toml(source)
        for key, value in (overrides or {}).items():
            _set_dotted(data, key, value)
        return spec_resolve.spec_from_dict(data)  # looked up at call time (tests patch it)
    except RecursionError:  # a dict nested thousands deep from the Python API
        raise SpecError("spec", "tables nested too deeply") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(spec: Spec) -> str:
    """The resolved spec as TOML text that `load_spec` reads back to an equal Spec."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(spec.to_dict(), "")
    return "\n".join(lines).lstrip("\n") + "\n"


