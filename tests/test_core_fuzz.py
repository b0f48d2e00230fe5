"""Hypothesis fuzzing of every offtd._core function with adversarial inputs (issue 5): each call
either raises TypeError/ValueError or returns a defined result. Never a panic, a crash or a hang.

A crash would take pytest down with it, and a hang is turned into a failure by faulthandler's
watchdog (it dumps the stacks and exits the process after WATCHDOG_S seconds in one test).
"""

from __future__ import annotations

import faulthandler
import math

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from conftest import requires_rust
from test_core_errors import _valid

pytestmark = requires_rust

WATCHDOG_S = 120
ADVERSARIAL = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -5e-324, 0.0, -0.0, 1.0, -1.0, 1e-300]
FUNCTIONS = sorted(_valid())


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _core():
    from offtd import _core

    return _core


def _check_defined(result) -> None:
    """A result is a number, a tuple/dict of them, or numpy arrays — nothing else."""
    if isinstance(result, dict):
        for v in result.values():
            _check_defined(v)
    elif isinstance(result, (tuple, list)):
        for v in result:
            _check_defined(v)
    else:
        assert isinstance(result, (int, float, bool, np.ndarray, np.integer, np.floating)), type(result)


def _call_checked(name: str, kwargs: dict) -> str:
    fn = getattr(_core(), name)
    try:
        result = fn(**kwargs)
    except (TypeError, ValueError, OverflowError) as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, msg  # one line, naming what was wrong
        return "rejected"
    _check_defined(result)
    return "accepted"


adversarial_floats = st.one_of(st.sampled_from(ADVERSARIAL), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def adversarial_array(draw, like: np.ndarray):
    kind = draw(st.sampled_from(["values", "empty", "extra_dim", "fewer_dims", "grow", "shrink", "dtype", "strided"]))
    if kind == "values":
        flat = like.astype(float).ravel().copy()
        for i in draw(st.lists(st.integers(0, max(flat.size - 1, 0)), min_size=1, max_size=4)):
            if flat.size:
                flat[i] = draw(adversarial_floats)
        return flat.reshape(like.shape)
    if kind == "empty":
        return np.zeros((0,) * like.ndim)
    if kind == "extra_dim":
        return like[..., None]
    if kind == "fewer_dims":
        return like.ravel()[:1].reshape(()) if like.ndim == 1 else like.ravel()
    if kind == "grow":
        return np.concatenate([like, like], axis=draw(st.integers(0, like.ndim - 1)))
    if kind == "shrink":
        axis = draw(st.integers(0, like.ndim - 1))
        return np.take(like, range(max(like.shape[axis] - 1, 0)), axis=axis)
    if kind == "dtype":
        return like.astype(draw(st.sampled_from([np.float32, np.int64, np.complex128, np.bool_, object])))
    # strided: a non-contiguous view of twice the data
    big = np.repeat(like, 2, axis=-1) if like.ndim else like
    return big[..., ::2] if like.ndim else big


adversarial_scalars = st.one_of(
    adversarial_floats,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([None, "1", True, 2**64, -1, 0, 10**9]),
)


@settings(max_examples=200)
@given(data=st.data(), name=st.sampled_from(FUNCTIONS))
def test_adversarial_inputs_raise_or_return(data, name):
    kwargs = _valid()[name]
    args = list(kwargs)
    for arg in data.draw(st.lists(st.sampled_from(args), min_size=1, max_size=2, unique=True), label="args"):
        v = kwargs[arg]
        if isinstance(v, np.ndarray):
            kwargs[arg] = data.draw(adversarial_array(v), label=arg)
        elif isinstance(v, tuple):
            kwargs[arg] = tuple(data.draw(adversarial_scalars) for _ in v)
        elif arg in ("batch", "horizon", "count", "mmd_count", "repeats", "iters", "max_iters", "start"):
            # Sizes stay small enough not to allocate gigabytes: large ones are the memory check's job.
            kwargs[arg] = data.draw(st.one_of(st.integers(-5, 64), st.sampled_from([None, 1.5, math.nan, "3"])))
        else:
            kwargs[arg] = data.draw(adversarial_scalars, label=arg)
    event(f"{name}: {_call_checked(name, kwargs)}")


@given(
    rho=st.lists(adversarial_floats, min_size=0, max_size=300),
    clip=adversarial_floats,
    enabled=st.booleans(),
)
def test_rho_stats_counts_what_it_drops(rho, clip, enabled):
    arr = np.array(rho, dtype=float)
    try:
        out = _core().rho_stats(arr, clip, enabled)
    except ValueError:
        assert not (math.isfinite(clip) and clip > 0), clip  # only the clip can be refused
        return
    assert out["nonfinite"] == int((~np.isfinite(arr)).sum())
    assert out["n"] == int(np.isfinite(arr).sum())
