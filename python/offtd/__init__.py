"""offtd — a lab for off-policy temporal-difference learning.

Run an experiment spec and read its report::

    import offtd
    result = offtd.run("specs/instab_sigma_mismatch.toml", backend="rust")
    result.status, result.series["mean_rho2"]

Every number is defined by specs/MODEL.md; the Rust core (`backend="rust"`) and the pure-Python
reference (`backend="python"`) compute the same report.

The names below are imported when first used (PEP 562): `import offtd` costs a few milliseconds, so the
`offtd` command can start a sweep's worker processes before it imports the numerical modules itself
(offtd.executors.prestart), and `offtd --help` answers at once.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import RunResult, load_run, run, theory
    from .backend import Backend, get_backend
    from .spec import Spec, SpecError, load_spec
    from .sweep import load_sweep, sweep

# public name -> the module that defines it
_WHERE = {
    "RunResult": "api", "load_run": "api", "run": "api", "theory": "api", "Backend": "backend", "get_backend": "backend",
    "Spec": "spec", "SpecError": "spec", "load_spec": "spec", "load_sweep": "sweep", "sweep": "sweep",
}  # fmt: skip

__all__ = [
    "Backend", "RunResult", "Spec", "SpecError", "get_backend", "load_run", "load_spec", "load_sweep", "run", "sweep",
    "theory",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, "__version__"})


def _version() -> str:
    """The installed distribution's version (written once, in Cargo.toml; maturin copies it into the
    package metadata). A source tree that was never installed has no metadata: "0+unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("offtd")
    except PackageNotFoundError:  # pragma: no cover - imported from a tree that was never installed
        return "0+unknown"


class _Package(types.ModuleType):
    """`offtd.sweep` is the function: importing the submodule offtd.sweep (which the import system then
    sets as the package's attribute `sweep`) must not replace it. The module stays sys.modules["offtd.sweep"]."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "sweep" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
