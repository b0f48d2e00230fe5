"""The typed stub python/offtd/_core.pyi against the compiled module offtd._core.

Every function in the stub exists in the module and vice versa, with the same parameter names in the
same order (read from the module's ``__text_signature__`` through ``inspect.signature``); every
module-level constant in the stub exists in the module.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conftest import requires_rust

pytestmark = requires_rust

STUB = Path(__file__).resolve().parent.parent / "python" / "offtd" / "_core.pyi"


def _stub_functions() -> dict[str, list[str]]:
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
            out[node.name] = names
    return out


def _stub_constants() -> list[str]:
    tree = ast.parse(STUB.read_text())
    return [
        node.target.id
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id.isupper()
    ]


def _module_functions() -> dict:
    from offtd import _core

    return {name: obj for name, obj in vars(_core).items() if not name.startswith("_") and callable(obj)}


def test_stub_parses_and_lists_functions():
    assert len(_stub_functions()) >= 10


def test_same_function_names():
    stub = set(_stub_functions())
    mod = set(_module_functions())
    assert stub - mod == set(), f"in the stub but not in the module: {sorted(stub - mod)}"
    assert mod - stub == set(), f"in the module but not in the stub: {sorted(mod - stub)}"


@pytest.mark.parametrize("name", sorted(_stub_functions()))
def test_parameter_names_match(name):
    func = _module_functions()[name]
    assert func.__text_signature__, f"{name} has no __text_signature__"
    sig = inspect.signature(func)
    assert list(sig.parameters) == _stub_functions()[name]
    for p in sig.parameters.values():
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, (name, p.name, p.kind)
        assert p.default is inspect.Parameter.empty, (name, p.name)


def test_constants():
    from offtd import _core

    consts = _stub_constants()
    assert "BLOCK" in consts
    for c in consts:
        assert hasattr(_core, c), c
    assert _core.BLOCK == 1024


def test_functions_have_docstrings():
    for name, func in _module_functions().items():
        assert func.__doc__ and func.__doc__.strip(), name


def test_rust_backend_implements_the_protocol():
    from offtd.backend import Backend, get_backend
    from offtd.rust_backend import RustBackend

    rb = get_backend("rust")
    assert isinstance(rb, RustBackend)
    assert rb.name == "rust"
    proto = [n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")]
    for name in proto:
        want = list(inspect.signature(getattr(Backend, name)).parameters)
        got = list(inspect.signature(getattr(RustBackend, name)).parameters)
        assert got == want, name


def test_core_is_importable():
    # The suite fails, never skips, when the compiled core is missing.
    import offtd._core as core

    assert callable(core.rollout) and callable(core.state_moments)


def _stub_typed_dict(name: str) -> dict[str, str]:
    """The keys of a TypedDict of the stub and their annotations."""
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError(f"{name} not in the stub")


def test_rho_stats_dict_is_the_dataclass():
    """The core's rho_stats dict, the stub's RhoStatsDict and backend.RhoStats hold the same fields in the
    same order with the same types (the Rust record's one field list reaches Python unchanged)."""
    import dataclasses

    import numpy as np

    from offtd import _core
    from offtd.backend import RhoStats

    fields = {f.name: f.type for f in dataclasses.fields(RhoStats)}
    stub = _stub_typed_dict("RhoStatsDict")
    assert list(stub) == list(fields)
    assert stub == fields
    for rho in (np.array([0.5, 2.0, 1.0]), np.zeros(0)):
        got = _core.rho_stats(rho, 1.5, True)
        assert list(got) == list(fields)
        for name, value in got.items():
            assert type(value).__name__ == fields[name], (name, value)
