"""Input checking of every offtd._core function.

Wrong dtype, wrong number of dimensions or a non-array raise TypeError; a wrong shape, a
non-contiguous array, a non-finite value where the math needs a finite one, and out-of-domain scalars
raise ValueError. Every message starts with the argument's name. No input reaches a Rust panic.

rollout, transitions and policy_samples take the problem's fields as one object (a backend.Problem,
read by attribute); here they are listed with the other arguments and put in that object by ``_call``,
and their errors name the field.
"""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest

from conftest import requires_rust
from offtd.backend import Problem

pytestmark = requires_rust

N, M = 2, 3
D = N * (N + 1) // 2 + N + 1


def _mat(r, c, scale=0.1):
    return np.arange(1, r * c + 1, dtype=np.float64).reshape(r, c) * scale


def _valid():
    """Valid keyword arguments for every function (arrays with >= 2 elements per axis where possible)."""
    env = dict(
        a=_mat(N, N),
        b=_mat(N, M),
        q=np.eye(N),
        r=np.eye(M),
        sigma_eps=0.1,
        reward_scale=1.0,
        sigma_pi=0.3,
        sigma_mu=0.5,
        p_mix=0.2,
        gamma=0.9,
        rho_clip=2.0,
        seed=1,
        sigma_0=1.0,
    )
    pool = _mat(5, N)
    return {
        "rollout": dict(
            env, w=np.linspace(-1, 1, D), k_pi=_mat(M, N), k_mu=_mat(M, N, 0.2), iteration=0, batch=2, horizon=3,
            stats=3,
        ),
        "transitions": dict(
            env, k_pi=_mat(M, N), k_mu=_mat(M, N, 0.2), pool=pool, count=10, repeats=2, base=20, iteration=1
        ),
        "policy_samples": dict(
            env, k_pi=_mat(M, N), k_mu=_mat(M, N, 0.2), pool=pool, count=10, mmd_count=4, iteration=1
        ),
        "rho_stats": dict(rho=np.linspace(0.1, 3.0, 50), clip=2.0, clip_enabled=True),
        "gmres": dict(a=np.eye(3) * 2.0 + 0.1, b=np.array([1.0, 2.0, 3.0]), max_iters=10, tol=1e-10),
        "lu_solve": dict(a=np.eye(3) * 2.0 + 0.1, b=np.array([1.0, 2.0, 3.0])),
        "power_iteration": dict(m=np.eye(3) * 0.5 + 0.1, v0=np.array([1.0, 2.0, 3.0]), iters=5),
        "mmd2": dict(x=_mat(4, 3), y=_mat(4, 3, 0.2)),
        "state_moments": dict(env, k_pi=_mat(M, N), k_mu=_mat(M, N, 0.2), horizon=3),
        "features": dict(states=_mat(4, N)),
        "philox_blocks": dict(seed=1, purpose=2, iteration=3, substream=4, start=0, count=3),
        "uniforms": dict(seed=1, purpose=2, iteration=3, substream=4, start=0, count=3),
        "normals": dict(seed=1, purpose=2, iteration=3, substream=4, start=0, count=3),
        "philox4x64": dict(counter=(1, 2, 3, 4), key=(5, 6)),
    }


def _core():
    from offtd import _core

    return _core


PROBLEM_FIELDS = [f.name for f in dataclasses.fields(Problem)]


def _call(name, **over):
    kw = _valid()[name]
    kw.update(over)
    if name in ("rollout", "transitions", "policy_samples", "state_moments"):
        kw = {"problem": Problem(**{k: kw.pop(k) for k in PROBLEM_FIELDS}), **kw}
    return getattr(_core(), name)(**kw)


def _array_args():
    for name, kw in _valid().items():
        for arg, v in kw.items():
            if isinstance(v, np.ndarray):
                yield name, arg


ARRAY_ARGS = list(_array_args())

# Arguments whose shape is fixed by other arguments: changing it alone is a shape error on it.
SHAPED = [
    ("rollout", "q"),
    ("rollout", "r"),
    ("rollout", "w"),
    ("rollout", "k_pi"),
    ("rollout", "k_mu"),
    ("rollout", "a"),
    ("transitions", "q"),
    ("transitions", "r"),
    ("transitions", "k_pi"),
    ("transitions", "k_mu"),
    ("transitions", "pool"),
    ("transitions", "a"),
    ("policy_samples", "q"),
    ("policy_samples", "r"),
    ("policy_samples", "k_pi"),
    ("policy_samples", "k_mu"),
    ("policy_samples", "pool"),
    ("policy_samples", "a"),
    ("gmres", "a"),
    ("lu_solve", "a"),
    ("power_iteration", "m"),
    ("mmd2", "y"),
    ("state_moments", "q"),
    ("state_moments", "r"),
    ("state_moments", "a"),
    ("state_moments", "k_pi"),
    ("state_moments", "k_mu"),
]

# Arguments that must be finite (the rest carry a diverged run's data and propagate inf/NaN).
FINITE = [
    (name, arg)
    for name, arg in ARRAY_ARGS
    if (name, arg)
    not in {("transitions", "pool"), ("policy_samples", "pool"), ("rho_stats", "rho"), ("mmd2", "x"), ("mmd2", "y"), ("features", "states")}
]


def test_every_function_is_covered():
    names = {n for n in dir(_core()) if not n.startswith("_") and callable(getattr(_core(), n))}
    assert names == set(_valid())


def _numbers(obj):
    """Every number in a kernel's result (dicts, tuples, arrays, scalars)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, np.ndarray):
        yield from obj.astype(float).reshape(-1).tolist()
    elif isinstance(obj, (bool, int, float, np.integer, np.floating)):
        yield float(obj)


@pytest.mark.parametrize("name", sorted(_valid()))
def test_valid_inputs_work(name):
    # the valid, well-conditioned inputs are accepted and give a non-empty, all-finite result
    values = list(_numbers(_call(name)))
    assert values and all(np.isfinite(values)), name


def _raises(exc, arg, name, **over):
    with pytest.raises(exc) as info:
        _call(name, **over)
    msg = str(info.value)
    assert msg.startswith(f"{arg}:"), msg
    return msg


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_wrong_dtype_is_type_error(name, arg):
    v = _valid()[name][arg]
    msg = _raises(TypeError, arg, name, **{arg: v.astype(np.float32)})
    assert "float64" in msg
    _raises(TypeError, arg, name, **{arg: v.astype(np.int64)})


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_wrong_ndim_is_type_error(name, arg):
    v = _valid()[name][arg]
    msg = _raises(TypeError, arg, name, **{arg: v[np.newaxis]})
    assert f"{v.ndim}-D" in msg


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_not_an_array_is_type_error(name, arg):
    v = _valid()[name][arg]
    _raises(TypeError, arg, name, **{arg: v.tolist()})


@pytest.mark.parametrize(
    "name,arg,axis",
    [(n, a, -1) for n, a in SHAPED] + [("rollout", "b", 0), ("transitions", "b", 0), ("policy_samples", "b", 0)],
)
def test_wrong_shape_is_value_error(name, arg, axis):
    v = _valid()[name][arg]
    shape = list(v.shape)
    shape[axis] += 1
    bad = np.ones(shape)
    msg = _raises(ValueError, arg, name, **{arg: bad})
    assert "expected shape" in msg and f"got {tuple(shape)}" in msg


def test_shape_message_format():
    msg = _raises(ValueError, "k_pi", "rollout", k_pi=np.ones((4, 2)))
    assert msg == "k_pi: expected shape (3, 2), got (4, 2)"
    msg = _raises(ValueError, "w", "rollout", w=np.ones(5))
    assert msg == "w: expected shape (6,), got (5,)"


@pytest.mark.parametrize("name,arg", ARRAY_ARGS)
def test_non_contiguous_is_value_error(name, arg):
    v = _valid()[name][arg]
    wide = np.repeat(v, 2, axis=-1)
    view = wide[..., ::2]
    assert view.shape == v.shape and not view.flags.c_contiguous
    msg = _raises(ValueError, arg, name, **{arg: view})
    assert "contiguous" in msg


@pytest.mark.parametrize("name,arg", FINITE)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_value_error(name, arg, bad):
    v = _valid()[name][arg].copy()
    v.flat[-1] = bad
    msg = _raises(ValueError, arg, name, **{arg: v})
    assert "finite" in msg


def test_non_finite_data_propagates():
    pool = _valid()["transitions"]["pool"].copy()
    pool[:] = math.inf
    out = _call("transitions", pool=pool)
    assert not np.all(np.isfinite(out["a_sums"]))
    out = _call("policy_samples", pool=pool)
    assert out["rho"].shape == (10,)
    st = _call("rho_stats", rho=np.array([1.0, math.nan, math.inf, 2.0]))
    assert st["n"] == 2 and st["nonfinite"] == 2
    x = _valid()["mmd2"]["x"].copy()
    x[0, 0] = math.nan
    v, s = _call("mmd2", x=x)
    assert math.isnan(v) and math.isnan(s)
    f = _call("features", states=np.array([[math.nan, 1.0]]))
    assert math.isnan(f[0, 0]) and f[0, -1] == 1.0


@pytest.mark.parametrize(
    "name,arg,value",
    [
        ("rollout", "sigma_pi", -1.0),
        ("rollout", "sigma_pi", 0.0),
        ("rollout", "sigma_mu", math.nan),
        ("rollout", "sigma_eps", -0.1),
        ("rollout", "sigma_0", math.inf),
        ("rollout", "p_mix", 1.5),
        ("rollout", "p_mix", -0.1),
        ("rollout", "gamma", math.nan),
        ("rollout", "reward_scale", math.inf),
        ("rollout", "rho_clip", 0.0),
        ("rollout", "rho_clip", math.nan),
        ("rollout", "seed", -1),
        ("rollout", "seed", 2**64),
        ("rollout", "iteration", -3),
        ("rollout", "batch", 0),
        ("rollout", "horizon", 0),
        ("rollout", "stats", 4),  # bits 1 and 2 only (MODEL.md 3.3)
        ("rollout", "stats", -1),
        ("rollout", "batch", 2**40),
        ("transitions", "repeats", 0),
        ("transitions", "count", -1),
        ("transitions", "base", 2**64 - 2),
        ("transitions", "p_mix", 2.0),
        ("policy_samples", "mmd_count", 11),
        ("policy_samples", "sigma_pi", 0.0),
        ("policy_samples", "sigma_mu", math.inf),
        ("transitions", "sigma_0", -1.0),
        ("rho_stats", "clip", math.nan),
        ("gmres", "tol", -1.0),
        ("gmres", "max_iters", -1),
        ("power_iteration", "iters", -1),
        ("state_moments", "sigma_pi", -1.0),
        ("state_moments", "sigma_0", math.inf),
        ("state_moments", "p_mix", 1.5),
        ("state_moments", "horizon", 0),
        ("uniforms", "count", -1),
        ("normals", "start", 2**64),
        ("philox_blocks", "count", 2**62),
        ("philox4x64", "counter", (1, 2, 3)),
        ("philox4x64", "key", (1, -2)),
    ],
)
def test_out_of_domain_is_value_error(name, arg, value):
    _raises(ValueError, arg, name, **{arg: value})


@pytest.mark.parametrize(
    "name,arg,value",
    [
        ("rollout", "seed", 1.5),
        ("rollout", "batch", "2"),
        ("rollout", "sigma_pi", "x"),
        ("uniforms", "count", None),
        ("philox4x64", "counter", 5),
    ],
)
def test_wrong_scalar_type_is_type_error(name, arg, value):
    with pytest.raises(TypeError) as info:
        _call(name, **{arg: value})
    assert arg in str(info.value)


@pytest.mark.parametrize("name", ["rollout", "transitions", "policy_samples"])
@pytest.mark.parametrize("missing", ["a", "gamma", "seed", "sigma_0"])
def test_problem_without_a_field_is_type_error(name, missing):
    # any object with the fields as attributes is a problem; one without a field is refused by name
    kw = _valid()[name]
    fields = {k: kw.pop(k) for k in PROBLEM_FIELDS}
    ok = getattr(_core(), name)(problem=types.SimpleNamespace(**fields), **kw)
    want = _call(name)  # the same fields in a backend.Problem
    assert ok.keys() == want.keys()
    for k, v in want.items():
        assert (v is None and ok[k] is None) or np.array_equal(ok[k], v), k
    del fields[missing]
    with pytest.raises(TypeError) as info:
        getattr(_core(), name)(problem=types.SimpleNamespace(**fields), **kw)
    msg = str(info.value)
    assert msg.startswith("problem:") and f"'{missing}'" in msg, msg
    with pytest.raises(TypeError, match="^problem:"):
        getattr(_core(), name)(problem=dict(fields), **kw)  # a mapping's keys are not attributes


def test_singular_lu_is_value_error():
    _raises(ValueError, "a", "lu_solve", a=np.ones((3, 3)))


def test_empty_and_degenerate_inputs_do_not_panic():
    c = _core()
    with pytest.raises(ValueError):
        c.gmres(np.zeros((0, 0)), np.zeros(0), 5, 1e-8)
    with pytest.raises(ValueError):
        c.power_iteration(np.zeros((0, 0)), np.zeros(0), 5)
    with pytest.raises(ValueError):
        _call("transitions", pool=np.zeros((0, N)))
    with pytest.raises(ValueError):
        c.features(np.zeros((3, 0)))
    assert c.features(np.zeros((0, 2))).shape == (0, D)
    assert math.isnan(c.power_iteration(np.eye(2), np.zeros(2), 3))
    assert c.rho_stats(np.zeros(0), 1.0, False)["n"] == 0
    out = _call("transitions", count=0)
    assert out["rho"].shape == (0,) and out["counts"].tolist() == [0, 0]
    v, s = c.mmd2(np.zeros((1, 2)), np.ones((1, 2)))
    assert math.isnan(v) and s == math.sqrt(2.0)
    x, conv, it, res = c.gmres(np.zeros((2, 2)), np.ones(2), 5, 1e-8)
    assert not conv and np.all(np.isfinite(x))


def test_rust_backend_converts_the_problem_arrays():
    # the core reads the problem's arrays as they are; the Rust backend hands it C-contiguous float64
    # copies of any that are not (a list, Fortran order, float32, int) and the problem itself otherwise
    from offtd.rust_backend import RustBackend, _problem

    p = Problem(**{k: v for k, v in _valid()["rollout"].items() if k in PROBLEM_FIELDS})
    assert _problem(p) is p
    odd = dataclasses.replace(
        p, a=p.a.tolist(), b=np.asfortranarray(p.b), q=p.q.astype(np.float32), r=p.r.astype(np.int64)
    )
    args = (np.linspace(-1, 1, D), _mat(M, N), _mat(M, N, 0.2), 0, 2, 3)
    want = RustBackend().rollout(p, *args)
    got = RustBackend().rollout(odd, *args)
    assert np.array_equal(got.states, want.states) and np.array_equal(got.a, want.a) and got.td_sq == want.td_sq
