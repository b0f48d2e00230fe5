"""`offtd schema`: a JSON Schema (draft 2020-12) of the experiment spec, generated from the dataclasses of
the spec schema, so that TOML editors (Taplo, Even Better TOML) complete and check keys.

Every key carries its description, default, type and domain (minimum / maximum, exclusive where the
spec says so, and the allowed strings); unknown keys are errors (`additionalProperties: false`), as in
offtd's own validation. Cross-key rules (e.g. khat_warn <= khat_fail) and matrix shapes that depend on
state_dim / action_dim are checked by `offtd run` only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from . import spec_schema as _spec

MATRIX = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 1}, "minItems": 1}


def _type_name(f: dataclasses.Field) -> str:
    t = f.type
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _leaf(f: dataclasses.Field, key: str) -> dict[str, Any]:
    meta = f.metadata
    tname = _type_name(f)
    out: dict[str, Any] = {}
    if meta.get("doc"):
        out["description"] = meta["doc"]
    if key in _spec._MATRIX_KEYS:
        rows, cols = _spec._MATRIX_KEYS[key]
        out.update(MATRIX)
        out["description"] = (out.get("description", "") + f" ({rows} x {cols}, rows as lists)").strip()
        return out
    if tname == "bool":
        out["type"] = "boolean"
    elif tname == "int":
        out["type"] = "integer"
    elif tname == "float":
        out["type"] = "number"
    elif tname == "str":
        out["type"] = "string"
        if meta.get("choices"):
            out["enum"] = list(meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and math.isfinite(lo):
        out["exclusiveMinimum" if meta.get("lo_open") else "minimum"] = lo
    if hi is not None and math.isfinite(hi):
        out["exclusiveMaximum" if meta.get("hi_open") else "maximum"] = hi
    if f.default is not dataclasses.MISSING and f.default is not None:
        out["default"] = f.default
    return out


def _object(cls: type, prefix: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        sub = _spec._SUBTABLES.get(_type_name(f))
        props[f.name] = _object(sub, f"{key}.") if sub is not None else _leaf(f, key)
    doc = (cls.__doc__ or "").strip().splitlines()
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if prefix and doc and not doc[0].startswith(cls.__name__ + "("):
        out["description"] = doc[0]
    return out


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of an offtd experiment spec."""
    from . import __version__
    from .sweep import SWEEP_TABLE_SCHEMA

    schema = _object(_spec.Spec, "")
    schema["properties"][_spec.SWEEP_TABLE] = SWEEP_TABLE_SCHEMA  # offtd sweep's table; offtd run ignores it
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://offtd.invalid/spec-schema/{__version__}.json",
        "title": "offtd experiment spec",
        "description": "An offtd experiment (TOML). Every key has a default; see specs/MODEL.md for the meaning of each.",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(spec_json_schema(), indent=2, sort_keys=False) + "\n"
