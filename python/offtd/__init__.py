"""offtd — a lab for off-policy temporal-difference learning.

Run an experiment spec and read its report::

    import offtd
    result = offtd.run("specs/instab_sigma_mismatch.toml", backend="rust")
    result.status, result.series["mean_rho2"]

Every number is defined by specs/MODEL.md; the Rust core (`backend="rust"`) and the pure-Python
reference (`backend="python"`) compute the same report.
"""

from .api import RunResult, load_run, run, theory
from .backend import Backend, get_backend
from .spec import Spec, SpecError, load_spec
from .sweep import load_sweep, sweep  # the function offtd.sweep (the module is offtd.sweep too)

__all__ = [
    "Backend", "RunResult", "Spec", "SpecError", "get_backend", "load_run", "load_spec", "load_sweep", "run", "sweep",
    "theory",
]  # fmt: skip


def _version() -> str:
    """The installed distribution's version (written once, in Cargo.toml; maturin copies it into the
    package metadata). A source tree that was never installed has no metadata: "0+unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("offtd")
    except PackageNotFoundError:  # pragma: no cover - imported from a tree that was never installed
        return "0+unknown"


__version__ = _version()
