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


SHIPPED = sorted((ROOT / "specs").glob("*.toml")) + sorted((ROOT / "python" / "offtd" / "specs").glob("*.toml"))


def test_every_shipped_spec_is_checked():
    assert len(SHIPPED) >= 9 and any(p.name == "sweep_sigma.toml" for p in SHIPPED)  # the glob found them


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
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
        ({"env": {"a": 1.0}}, "a"),  # a number where a matrix goes
        ({"run": {"seed": "zero"}}, "seed"),  # wrong types
        ({"run": {"outer_iters": 2.5}}, "outer_iters"),
        ({"run": {"outer_iters": True}}, "outer_iters"),
        ({"rho": {"clip_enabled": 1}}, "clip_enabled"),
        ({"rho": 3}, "rho"),  # a value where a table goes
        ({"name": 5}, "name"),
        ({"probes": {"stability": {"repeat": 4}}}, "repeat"),  # unknown key in a nested table
    ],
)
def test_what_offtd_refuses_the_schema_refuses(data, key):
    with pytest.raises(offtd.SpecError) as ours:
        offtd.load_spec(data)
    assert key in str(ours.value)
    with pytest.raises(jsonschema.ValidationError) as theirs:
        jsonschema.validate(data, spec_json_schema())
    err = theirs.value  # the editor points at the key: in the error's path, or named as unexpected
    assert key in list(err.absolute_path) or f"'{key}' was unexpected" in err.message, (list(err.absolute_path), err.message)


def test_schema_command(offtd_cmd):
    proc = offtd_cmd("schema")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(spec_json_schema()))
