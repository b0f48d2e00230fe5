"""`offtd schema`: the JSON Schema of a spec agrees with offtd's own validation (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import offtd
from offtd.json_schema import spec_json_schema

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _keys(obj, prefix=""):
    for k, v in obj.items():
        if isinstance(v, dict) and "properties" in v:
            yield from _keys(v["properties"], f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _spec_keys(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _spec_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_schema_lists_exactly_the_spec_keys():
    schema = spec_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    sweep = {k for k in _keys(schema["properties"]) if k.startswith("sweep.")}  # offtd sweep's [sweep] table
    assert sweep == {"sweep.grid", "sweep.seeds", "sweep.keep", "sweep.backend"}
    assert set(_keys(schema["properties"])) - sweep == set(_spec_keys(offtd.load_spec(None).to_dict()))


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    jsonschema.validate(tomllib.loads(path.read_text()), spec_json_schema())


@pytest.mark.parametrize(
    "data,key",
    [
        ({"policy": {"p_mixx": 0.1}}, "p_mixx"),  # unknown key
        ({"policy": {"p_mix": 1.0}}, "p_mix"),  # exclusive maximum
        ({"critic": {"init": "random"}}, "init"),  # not one of the choices
        ({"run": {"outer_iters": 0}}, "outer_iters"),  # below the minimum
        ({"env": {"a": [[1, "x"]]}}, "a"),  # a matrix entry that is not a number
    ],
)
def test_what_offtd_refuses_the_schema_refuses(data, key):
    with pytest.raises(offtd.SpecError):
        offtd.load_spec(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, spec_json_schema())


def test_schema_command(offtd_cmd):
    proc = offtd_cmd("schema")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(spec_json_schema()))
