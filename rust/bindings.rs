//! The Python module `offtd._core`: thin `*_py` wrappers around the kernels.
//!
//! This is the only module that knows about Python. Each wrapper checks its arrays (numpy float64,
//! number of dimensions, shape, C-contiguity, finiteness where the math needs it), runs the kernel
//! with the interpreter detached ([`run_detached`]), and converts the result to numpy arrays, dicts
//! and tuples (the arrays take over the kernel's `Vec`s, no copy). Wrong dtype / number of
//! dimensions / non-array raise `TypeError`; wrong shape, non-contiguous, non-finite and
//! out-of-domain values raise `ValueError`; a call whose memory would not fit raises
//! `CoreMemoryError` (a `MemoryError`); every message starts with the argument's name. [`CoreError`]s
//! become exceptions in one place, [`to_py_err`].
//!
//! Signals: while a kernel runs, the calling thread re-attaches about every 10 ms of work and runs
//! `check_signals` (Python's signal handlers). When a handler raises, the kernel stops
//! ([`crate::interrupt`]) and that exception is raised from the call, partial results discarded.

use std::sync::Mutex;

use numpy::ndarray::{Array, IxDyn};
use numpy::{
    dtype, IntoPyArray, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyAttributeError, PyKeyboardInterrupt, PyMemoryError, PyOverflowError, PyRuntimeError,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PySequence, PyTuple, PyType};

use crate::checks::check_finite;
use crate::error::{fmt_shape, CoreError, CoreResult};
use crate::features::{feature_dim, features};
use crate::interrupt::{self, Interrupt};
use crate::linalg::BLOCK;
use crate::philox::{self, Stream};
use crate::problem::Problem;
use crate::record::Field;
use crate::{mem, mmd, moments, policy_samples, power, ratios, rollout, solver, transitions};

/// Size arguments (counts of samples, trajectories, steps) must be below this: far more than any
/// machine holds, and small enough that no product of a size with the other dimensions overflows.
/// Sizes below it are limited by the memory available, which the kernels check (`mem::plan`).
const MAX_SIZE: u64 = 1 << 48;

/// `offtd._core.CoreMemoryError`: a call whose outputs and scratch would not fit in the memory
/// available. A `MemoryError`, and a `ValueError` as well (the size arguments are what is wrong,
/// and callers that caught the `ValueError` of the old fixed limit keep working).
fn memory_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    static TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let ty = TYPE.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = PyTuple::new(
            py,
            [
                py.get_type::<PyMemoryError>(),
                py.get_type::<PyValueError>(),
            ],
        )?;
        let ns = PyDict::new(py);
        ns.set_item("__module__", "offtd._core")?;
        ns.set_item(
            "__doc__",
            "A call of offtd._core whose arrays and scratch would need more memory than is \
             available (MemAvailable, the address-space limit or the memory cgroup). The message \
             names the argument that sets the size and the bytes.",
        )?;
        let ty = py
            .get_type::<PyType>()
            .call1(("CoreMemoryError", bases, ns))?
            .cast_into::<PyType>()?;
        Ok(ty.unbind())
    })?;
    Ok(ty.bind(py))
}

/// The one place core errors become Python exceptions.
pub fn to_py_err(e: CoreError) -> PyErr {
    match e {
        CoreError::OutOfMemory { .. } => Python::attach(|py| match memory_error_type(py) {
            Ok(ty) => PyErr::from_type(ty.clone(), e.to_string()),
            Err(_) => PyMemoryError::new_err(e.to_string()),
        }),
        // only reached when no signal handler's exception was kept (see `run_detached`)
        CoreError::Interrupted => PyKeyboardInterrupt::new_err(e.to_string()),
        e if e.is_type_error() => PyTypeError::new_err(e.to_string()),
        e => PyValueError::new_err(e.to_string()),
    }
}

/// Runs `f` with the interpreter detached, polling Python's signal handlers from this thread about
/// every 10 ms of the kernel's work (the kernel's ticks decide when, [`crate::interrupt`]). When a
/// handler raises, the kernel stops and its exception is returned; other errors go through
/// [`to_py_err`].
fn run_detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> CoreResult<T> + Send,
    T: Send,
{
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let poll = || -> bool {
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(err) => {
                *raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                true
            }
        })
    };
    let out = py.detach(|| {
        let intr = Interrupt::new(&poll);
        interrupt::scope(&intr, f)
    });
    match out {
        Ok(v) => Ok(v),
        Err(CoreError::Interrupted) => {
            let raised = raised.into_inner().unwrap_or_else(|p| p.into_inner());
            Err(raised.unwrap_or_else(|| to_py_err(CoreError::Interrupted)))
        }
        Err(e) => Err(to_py_err(e)),
    }
}

fn value_err(arg: &'static str, reason: impl Into<String>) -> PyErr {
    to_py_err(CoreError::invalid(arg, reason))
}

/// A borrowed float64 array that passed the checks.
struct F64Array<'py> {
    arr: PyReadonlyArrayDyn<'py, f64>,
    shape: Vec<usize>,
}

impl<'py> F64Array<'py> {
    fn slice(&self) -> &[f64] {
        // contiguity was checked, so this cannot fail; an empty slice is the harmless fallback
        self.arr.as_slice().unwrap_or(&[])
    }
}

/// Checks `obj` is a C-contiguous numpy float64 array with `ndim` dimensions.
fn array_arg<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
    ndim: usize,
) -> PyResult<F64Array<'py>> {
    let py = obj.py();
    let untyped = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| wrong_type(obj, arg, "a numpy.ndarray of float64"))?;
    let dt = untyped.dtype();
    if !dt.is_equiv_to(&dtype::<f64>(py)) {
        let got = dt
            .str()
            .map(|s| s.to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(to_py_err(CoreError::WrongType {
            arg,
            expected: "dtype float64".into(),
            got: format!("dtype {got}"),
        }));
    }
    if untyped.ndim() != ndim {
        return Err(to_py_err(CoreError::WrongType {
            arg,
            expected: format!("a {ndim}-D array"),
            got: format!("{}-D", untyped.ndim()),
        }));
    }
    if !untyped.is_c_contiguous() {
        return Err(to_py_err(CoreError::NotContiguous { arg }));
    }
    let shape = untyped.shape().to_vec();
    let typed = obj.cast::<PyArrayDyn<f64>>().map_err(|_| {
        to_py_err(CoreError::WrongType {
            arg,
            expected: "dtype float64".into(),
            got: "other".into(),
        })
    })?;
    let arr = typed
        .try_readonly()
        .map_err(|e| value_err(arg, format!("cannot borrow the array: {e}")))?;
    Ok(F64Array { arr, shape })
}

/// `array_arg` plus an exact shape (`None` = any size on that axis) and optional finiteness.
fn array_shaped<'py>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
    shape: &[Option<usize>],
    finite: bool,
) -> PyResult<F64Array<'py>> {
    let a = array_arg(obj, arg, shape.len())?;
    let fits = a
        .shape
        .iter()
        .zip(shape)
        .all(|(g, e)| e.is_none_or(|e| e == *g));
    if !fits {
        let expected: Vec<String> = shape
            .iter()
            .map(|e| e.map_or_else(|| "*".to_string(), |v| v.to_string()))
            .collect();
        let expected = if expected.len() == 1 {
            format!("({},)", expected[0])
        } else {
            format!("({})", expected.join(", "))
        };
        return Err(to_py_err(CoreError::ShapeMismatch {
            arg,
            expected,
            got: fmt_shape(&a.shape),
        }));
    }
    if finite {
        check_finite(arg, a.slice()).map_err(to_py_err)?;
    }
    Ok(a)
}

/// An integer in `[0, 2^64)`: `TypeError` for a non-integer, `ValueError` (naming `arg`) when out of range.
fn u64_arg(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<u64> {
    if obj.is_instance_of::<pyo3::types::PyFloat>() {
        return Err(to_py_err(CoreError::WrongType {
            arg,
            expected: "int".into(),
            got: "float".into(),
        }));
    }
    match obj.extract::<u64>() {
        Ok(v) => Ok(v),
        Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(value_err(
            arg,
            format!("must be an integer in [0, 2**64), got {obj}"),
        )),
        Err(_) => Err(wrong_type(obj, arg, "int")),
    }
}

/// `TypeError` naming `arg`: it wanted `expected` and got an object of `obj`'s type.
fn wrong_type(obj: &Bound<'_, PyAny>, arg: &'static str, expected: &str) -> PyErr {
    let got = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    to_py_err(CoreError::WrongType {
        arg,
        expected: expected.into(),
        got,
    })
}

/// A real number (Python float or int, numpy scalar): `TypeError` naming `arg` otherwise.
fn f64_arg(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<f64> {
    obj.extract::<f64>()
        .map_err(|_| wrong_type(obj, arg, "a real number"))
}

/// A bool (Python or numpy): `TypeError` naming `arg` otherwise.
fn bool_arg(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<bool> {
    obj.extract::<bool>()
        .map_err(|_| wrong_type(obj, arg, "bool"))
}

/// A size argument: an integer in `[min, 2^48)`; whether its arrays fit is the kernel's memory
/// plan's question (`CoreMemoryError`).
fn size_arg(obj: &Bound<'_, PyAny>, arg: &'static str, min: u64) -> PyResult<usize> {
    let v = u64_arg(obj, arg)?;
    if v < min {
        return Err(value_err(arg, format!("must be >= {min}, got {v}")));
    }
    if v >= MAX_SIZE {
        return Err(value_err(arg, format!("must be < 2**48, got {v}")));
    }
    usize::try_from(v).map_err(|_| value_err(arg, format!("too large for this machine, got {v}")))
}

fn to_numpy<'py, T: numpy::Element>(
    py: Python<'py>,
    v: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let arr = Array::from_shape_vec(IxDyn(shape), v)
        .map_err(|e| PyRuntimeError::new_err(format!("internal shape error: {e}")))?;
    Ok(arr.into_pyarray(py).into_any())
}

/// A record's fields ([`crate::record!`]) as a dict: counts and flags as `int`, the rest `float`.
fn record_dict<'py>(
    py: Python<'py>,
    fields: impl Iterator<Item = (&'static str, Field)>,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in fields {
        match value {
            Field::Count(v) => dict.set_item(name, v)?,
            Field::Flag(v) => dict.set_item(name, i64::from(v))?,
            Field::Real(v) => dict.set_item(name, v)?,
        }
    }
    Ok(dict)
}

/// The problem's arrays, checked (types, shapes, finiteness), and its scalars converted: the core's
/// [`Problem`] borrows from it. The scalars' domains are [`Problem::validate`]'s to check.
struct ProblemArgs<'py> {
    a: F64Array<'py>,
    b: F64Array<'py>,
    q: F64Array<'py>,
    r: F64Array<'py>,
    sigma_eps: f64,
    sigma_0: f64,
    reward_scale: f64,
    sigma_pi: f64,
    sigma_mu: f64,
    p_mix: f64,
    gamma: f64,
    rho_clip: f64,
    seed: u64,
}

impl<'py> ProblemArgs<'py> {
    /// Reads and checks the `problem` argument of `rollout`, `transitions`, `policy_samples` and
    /// `state_moments`: any object with the attributes of `backend.Problem` (the fields of this
    /// struct), each checked where it is read, with errors that name it. An attribute it lacks is a
    /// `TypeError` naming `problem`.
    fn from_py(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        let py = obj.py();
        let missing = |e: PyErr| {
            if e.is_instance_of::<PyAttributeError>(py) {
                PyTypeError::new_err(format!("problem: {}", e.value(py)))
            } else {
                e
            }
        };
        // The attribute `$name` (its name interned: ~0.1 us a lookup, not a new string each call).
        macro_rules! attr {
            ($name:literal) => {
                obj.getattr(pyo3::intern!(py, $name)).map_err(missing)?
            };
        }
        macro_rules! real {
            ($name:literal) => {
                f64_arg(&attr!($name), $name)?
            };
        }
        let sigma_eps = real!("sigma_eps");
        let sigma_0 = real!("sigma_0");
        let reward_scale = real!("reward_scale");
        let sigma_pi = real!("sigma_pi");
        let sigma_mu = real!("sigma_mu");
        let p_mix = real!("p_mix");
        let gamma = real!("gamma");
        let rho_clip = real!("rho_clip");
        let a = array_arg(&attr!("a"), "a", 2)?;
        let n = a.shape[0];
        if n == 0 {
            return Err(value_err("a", "state dimension n must be >= 1"));
        }
        let a = {
            let fits = a.shape[1] == n;
            if !fits {
                return Err(to_py_err(CoreError::shape("a", &[n, n], &a.shape)));
            }
            check_finite("a", a.slice()).map_err(to_py_err)?;
            a
        };
        let b = array_shaped(&attr!("b"), "b", &[Some(n), None], true)?;
        let m = b.shape[1];
        if m == 0 {
            return Err(value_err("b", "action dimension m must be >= 1"));
        }
        let q = array_shaped(&attr!("q"), "q", &[Some(n), Some(n)], true)?;
        let r = array_shaped(&attr!("r"), "r", &[Some(m), Some(m)], true)?;
        let seed = u64_arg(&attr!("seed"), "seed")?;
        Ok(ProblemArgs {
            a,
            b,
            q,
            r,
            sigma_eps,
            sigma_0,
            reward_scale,
            sigma_pi,
            sigma_mu,
            p_mix,
            gamma,
            rho_clip,
            seed,
        })
    }
    /// The core's view.
    fn problem(&self) -> Problem<'_> {
        Problem {
            n: self.n(),
            m: self.m(),
            a: self.a.slice(),
            b: self.b.slice(),
            q: self.q.slice(),
            r: self.r.slice(),
            sigma_eps: self.sigma_eps,
            sigma_0: self.sigma_0,
            reward_scale: self.reward_scale,
            sigma_pi: self.sigma_pi,
            sigma_mu: self.sigma_mu,
            p_mix: self.p_mix,
            gamma: self.gamma,
            rho_clip: self.rho_clip,
            seed: self.seed,
        }
    }
    /// The gain pair, (m, n) each, checked.
    fn gains(
        &self,
        k_pi: &Bound<'py, PyAny>,
        k_mu: &Bound<'py, PyAny>,
    ) -> PyResult<(F64Array<'py>, F64Array<'py>)> {
        let shape = [Some(self.m()), Some(self.n())];
        Ok((
            array_shaped(k_pi, "k_pi", &shape, true)?,
            array_shaped(k_mu, "k_mu", &shape, true)?,
        ))
    }
    /// A state pool: rows of n, at least one (its values may be non-finite: a diverged run's states).
    fn pool(&self, pool: &Bound<'py, PyAny>) -> PyResult<F64Array<'py>> {
        let pool = array_shaped(pool, "pool", &[None, Some(self.n())], false)?;
        if pool.shape[0] == 0 {
            return Err(value_err("pool", "must hold at least one state"));
        }
        Ok(pool)
    }
    fn n(&self) -> usize {
        self.a.shape[0]
    }
    fn m(&self) -> usize {
        self.b.shape[1]
    }
}

/// `philox4x64(counter, key)`: the Philox4x64-10 block of a 4-word counter and a 2-word key.
#[pyfunction]
#[pyo3(name = "philox4x64")]
fn philox4x64_py(
    counter: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
) -> PyResult<(u64, u64, u64, u64)> {
    let c = words::<4>(counter, "counter")?;
    let k = words::<2>(key, "key")?;
    let b = philox::philox4x64_10(c, k);
    Ok((b[0], b[1], b[2], b[3]))
}

fn words<const N: usize>(obj: &Bound<'_, PyAny>, arg: &'static str) -> PyResult<[u64; N]> {
    let seq = obj.cast::<PySequence>().map_err(|_| {
        to_py_err(CoreError::WrongType {
            arg,
            expected: format!("a sequence of {N} ints"),
            got: "non-sequence".into(),
        })
    })?;
    let len = seq.len()?;
    if len != N {
        return Err(value_err(arg, format!("expected {N} words, got {len}")));
    }
    let mut out = [0u64; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u64_arg(&seq.get_item(i)?, arg)?;
    }
    Ok(out)
}

/// The stream arguments shared by the draw functions.
fn stream_args(
    seed: &Bound<'_, PyAny>,
    purpose: &Bound<'_, PyAny>,
    iteration: &Bound<'_, PyAny>,
    substream: &Bound<'_, PyAny>,
    start: &Bound<'_, PyAny>,
    count: &Bound<'_, PyAny>,
) -> PyResult<(Stream, u64, usize)> {
    let stream = Stream::new(
        u64_arg(seed, "seed")?,
        u64_arg(purpose, "purpose")?,
        u64_arg(iteration, "iteration")?,
        u64_arg(substream, "substream")?,
    );
    let start = u64_arg(start, "start")?;
    let count = size_arg(count, "count", 0)?;
    if start.checked_add(count as u64).is_none() {
        return Err(value_err("count", "start + count exceeds 2**64"));
    }
    Ok((stream, start, count))
}

/// `philox_blocks(seed, purpose, iteration, substream, start, count)`: blocks `start .. start+count`
/// of a stream as a (count, 4) uint64 array.
#[pyfunction]
#[pyo3(name = "philox_blocks")]
fn philox_blocks_py<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
    purpose: &Bound<'py, PyAny>,
    iteration: &Bound<'py, PyAny>,
    substream: &Bound<'py, PyAny>,
    start: &Bound<'py, PyAny>,
    count: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (stream, start, count) = stream_args(seed, purpose, iteration, substream, start, count)?;
    let v = run_detached(py, || philox::try_blocks(stream, start, count))?;
    to_numpy(py, v, &[count, 4])
}

/// `uniforms(seed, purpose, iteration, substream, start, count)`: uniform #start .. #start+count.
#[pyfunction]
#[pyo3(name = "uniforms")]
fn uniforms_py<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
    purpose: &Bound<'py, PyAny>,
    iteration: &Bound<'py, PyAny>,
    substream: &Bound<'py, PyAny>,
    start: &Bound<'py, PyAny>,
    count: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (stream, start, count) = stream_args(seed, purpose, iteration, substream, start, count)?;
    let v = run_detached(py, || philox::try_uniforms(stream, start, count))?;
    to_numpy(py, v, &[count])
}

/// `normals(seed, purpose, iteration, substream, start, count)`: normal #start .. #start+count.
#[pyfunction]
#[pyo3(name = "normals")]
fn normals_py<'py>(
    py: Python<'py>,
    seed: &Bound<'py, PyAny>,
    purpose: &Bound<'py, PyAny>,
    iteration: &Bound<'py, PyAny>,
    substream: &Bound<'py, PyAny>,
    start: &Bound<'py, PyAny>,
    count: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (stream, start, count) = stream_args(seed, purpose, iteration, substream, start, count)?;
    let v = run_detached(py, || philox::try_normals(stream, start, count))?;
    to_numpy(py, v, &[count])
}

/// `features(states)`: phi(s) for each row of an (N, n) array -> (N, d).
#[pyfunction]
#[pyo3(name = "features")]
fn features_py<'py>(py: Python<'py>, states: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let s = array_arg(states, "states", 2)?;
    let (rows, n) = (s.shape[0], s.shape[1]);
    if n == 0 {
        return Err(value_err("states", "state dimension n must be >= 1"));
    }
    let d = feature_dim(n);
    let src = s.slice();
    let out = run_detached(py, || {
        mem::plan("states", mem::bytes_of::<f64>(rows) * d as u128)?;
        let mut out: Vec<f64> = mem::zeroed("states", rows * d)?;
        for (c, o) in out.chunks_mut(1024 * d).enumerate() {
            interrupt::tick_check((o.len() + 1024 * n) as u64)?;
            let rows_in = &src[c * 1024 * n..];
            for (row, o) in rows_in.chunks_exact(n).zip(o.chunks_exact_mut(d)) {
                features(row, o);
            }
        }
        Ok(out)
    })?;
    to_numpy(py, out, &[rows, d])
}

/// `rollout(problem, w, k_pi, k_mu, iteration, batch, horizon, stats)`: one iteration's rollout
/// (MODEL.md section 3) of `problem` (a `backend.Problem`, [`ProblemArgs::from_py`]) as a dict with keys
/// `states` (batch, horizon+1, n), `rewards`, `rho` (batch, horizon), `count`, `td_sq`, `rho2`,
/// `grad_k` (m, n), `gram` (d, d), `a` (d, d), `b` (d,), and `c_rho`, `a_e`, `b_e` (None unless
/// `stats` asks for them).
#[pyfunction]
#[pyo3(name = "rollout")]
#[allow(clippy::too_many_arguments)]
fn rollout_py<'py>(
    py: Python<'py>,
    problem: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    k_pi: &Bound<'py, PyAny>,
    k_mu: &Bound<'py, PyAny>,
    iteration: &Bound<'py, PyAny>,
    batch: &Bound<'py, PyAny>,
    horizon: &Bound<'py, PyAny>,
    stats: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let pa = ProblemArgs::from_py(problem)?;
    let (n, m) = (pa.n(), pa.m());
    let d = feature_dim(n);
    let w = array_shaped(w, "w", &[Some(d)], true)?;
    let (k_pi, k_mu) = pa.gains(k_pi, k_mu)?;
    let iteration = u64_arg(iteration, "iteration")?;
    let batch = size_arg(batch, "batch", 1)?;
    let horizon = size_arg(horizon, "horizon", 1)?;
    let stats = u64_arg(stats, "stats")?;
    if stats > u64::from(rollout::STATS_CROSS | rollout::STATS_EMPHASIS) {
        return Err(to_py_err(CoreError::invalid(
            "stats",
            format!("must be a combination of the bits 1 and 2, got {stats}"),
        )));
    }
    let stats = stats as u32;
    let p = pa.problem();
    let (ws, kp, km) = (w.slice(), k_pi.slice(), k_mu.slice());
    let out = run_detached(py, || {
        rollout::rollout(&p, ws, kp, km, iteration, batch, horizon, stats)
    })?;
    let dict = PyDict::new(py);
    dict.set_item(
        "states",
        to_numpy(py, out.states, &[batch, horizon + 1, n])?,
    )?;
    dict.set_item("rewards", to_numpy(py, out.rewards, &[batch, horizon])?)?;
    dict.set_item("rho", to_numpy(py, out.rho, &[batch, horizon])?)?;
    dict.set_item("count", out.count)?;
    dict.set_item("td_sq", out.td_sq)?;
    dict.set_item("rho2", out.rho2)?;
    dict.set_item("grad_k", to_numpy(py, out.grad_k, &[m, n])?)?;
    dict.set_item("gram", to_numpy(py, out.gram, &[d, d])?)?;
    dict.set_item("a", to_numpy(py, out.a, &[d, d])?)?;
    dict.set_item("b", to_numpy(py, out.b, &[d])?)?;
    for (key, value, shape) in [
        ("c_rho", out.c_rho, &[d, d][..]),
        ("a_e", out.a_e, &[d, d][..]),
        ("b_e", out.b_e, &[d][..]),
    ] {
        match value {
            Some(v) => dict.set_item(key, to_numpy(py, v, shape)?)?,
            None => dict.set_item(key, py.None())?,
        }
    }
    Ok(dict)
}

/// `transitions(problem, k_pi, k_mu, pool, count, repeats, base, iteration)`: probe transitions
/// (MODEL.md 4.2) as a dict with keys `a_sums` (R, d, d), `b_sums` (R, d), `counts` (R,) int64, `rho`
/// (count,).
#[pyfunction]
#[pyo3(name = "transitions")]
#[allow(clippy::too_many_arguments)]
fn transitions_py<'py>(
    py: Python<'py>,
    problem: &Bound<'py, PyAny>,
    k_pi: &Bound<'py, PyAny>,
    k_mu: &Bound<'py, PyAny>,
    pool: &Bound<'py, PyAny>,
    count: &Bound<'py, PyAny>,
    repeats: &Bound<'py, PyAny>,
    base: &Bound<'py, PyAny>,
    iteration: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let pa = ProblemArgs::from_py(problem)?;
    let n = pa.n();
    let d = feature_dim(n);
    let (k_pi, k_mu) = pa.gains(k_pi, k_mu)?;
    let pool = pa.pool(pool)?;
    let count = size_arg(count, "count", 0)?;
    let repeats = size_arg(repeats, "repeats", 1)?;
    let base = u64_arg(base, "base")?;
    let iteration = u64_arg(iteration, "iteration")?;
    let p = pa.problem();
    let (kp, km, pl) = (k_pi.slice(), k_mu.slice(), pool.slice());
    let out = run_detached(py, || {
        transitions::transitions(&p, kp, km, pl, count, repeats, base, iteration)
    })?;
    let counts: Vec<i64> =
        mem::collect("repeats", out.counts.iter().map(|&c| c as i64)).map_err(to_py_err)?;
    let dict = PyDict::new(py);
    dict.set_item("a_sums", to_numpy(py, out.a_sums, &[repeats, d, d])?)?;
    dict.set_item("b_sums", to_numpy(py, out.b_sums, &[repeats, d])?)?;
    dict.set_item("counts", to_numpy(py, counts, &[repeats])?)?;
    dict.set_item("rho", to_numpy(py, out.rho, &[count])?)?;
    Ok(dict)
}

/// `policy_samples(problem, k_pi, k_mu, pool, count, mmd_count, iteration)`: the distribution
/// probe's draws (MODEL.md 4.1) as a dict with keys `rho` (count,), `tv_sum`, `state_moment` (n, n),
/// `mmd_s` (M, n), `mmd_a_pi`, `mmd_a_mu` (M, m).
#[pyfunction]
#[pyo3(name = "policy_samples")]
#[allow(clippy::too_many_arguments)]
fn policy_samples_py<'py>(
    py: Python<'py>,
    problem: &Bound<'py, PyAny>,
    k_pi: &Bound<'py, PyAny>,
    k_mu: &Bound<'py, PyAny>,
    pool: &Bound<'py, PyAny>,
    count: &Bound<'py, PyAny>,
    mmd_count: &Bound<'py, PyAny>,
    iteration: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let pa = ProblemArgs::from_py(problem)?;
    let (n, m) = (pa.n(), pa.m());
    let (k_pi, k_mu) = pa.gains(k_pi, k_mu)?;
    let pool = pa.pool(pool)?;
    let count = size_arg(count, "count", 0)?;
    let mmd_count = size_arg(mmd_count, "mmd_count", 0)?;
    let iteration = u64_arg(iteration, "iteration")?;
    let p = pa.problem();
    let (kp, km, pl) = (k_pi.slice(), k_mu.slice(), pool.slice());
    let out = run_detached(py, || {
        policy_samples::policy_samples(&p, kp, km, pl, count, mmd_count, iteration)
    })?;
    let dict = PyDict::new(py);
    dict.set_item("rho", to_numpy(py, out.rho, &[count])?)?;
    dict.set_item("tv_sum", out.tv_sum)?;
    dict.set_item("state_moment", to_numpy(py, out.state_moment, &[n, n])?)?;
    dict.set_item("mmd_s", to_numpy(py, out.mmd_s, &[mmd_count, n])?)?;
    dict.set_item("mmd_a_pi", to_numpy(py, out.mmd_a_pi, &[mmd_count, m])?)?;
    dict.set_item("mmd_a_mu", to_numpy(py, out.mmd_a_mu, &[mmd_count, m])?)?;
    Ok(dict)
}

/// `rho_stats(rho, clip, clip_enabled)`: MODEL.md section 5 as a dict with the fields of
/// [`ratios::RhoStatsOut`] (`clip_active` as 0 or 1). Non-finite ratios are allowed (counted and
/// excluded).
#[pyfunction]
#[pyo3(name = "rho_stats")]
fn rho_stats_py<'py>(
    py: Python<'py>,
    rho: &Bound<'py, PyAny>,
    clip: &Bound<'py, PyAny>,
    clip_enabled: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let clip = f64_arg(clip, "clip")?;
    let clip_enabled = bool_arg(clip_enabled, "clip_enabled")?;
    let rho = array_arg(rho, "rho", 1)?;
    if clip.is_nan() {
        return Err(value_err("clip", "must not be NaN"));
    }
    let xs = rho.slice();
    let s = run_detached(py, || ratios::try_rho_stats(xs, clip, clip_enabled))?;
    record_dict(py, s.fields())
}

/// `gmres(a, b, max_iters, tol)`: restarted GMRES (MODEL.md section 6) ->
/// `(x, converged, iterations, residual)`.
#[pyfunction]
#[pyo3(name = "gmres")]
fn gmres_py<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    max_iters: &Bound<'py, PyAny>,
    tol: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, bool, u64, f64)> {
    let tol = f64_arg(tol, "tol")?;
    let b = array_arg(b, "b", 1)?;
    let d = b.shape[0];
    if d == 0 {
        return Err(value_err("b", "must hold at least one value"));
    }
    let a = array_shaped(a, "a", &[Some(d), Some(d)], true)?;
    check_finite("b", b.slice()).map_err(to_py_err)?;
    let max_iters = u64_arg(max_iters, "max_iters")?;
    if tol.is_nan() || tol < 0.0 {
        return Err(value_err("tol", format!("must be >= 0, got {tol}")));
    }
    let (asl, bsl) = (a.slice(), b.slice());
    let out = run_detached(py, || solver::gmres(asl, bsl, max_iters, tol))?;
    Ok((
        to_numpy(py, out.x, &[d])?,
        out.converged,
        out.iterations,
        out.residual,
    ))
}

/// `lu_solve(a, b)`: the direct solve (LU, partial pivoting); `ValueError` if `a` is singular.
#[pyfunction]
#[pyo3(name = "lu_solve")]
fn lu_solve_py<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let b = array_arg(b, "b", 1)?;
    let d = b.shape[0];
    if d == 0 {
        return Err(value_err("b", "must hold at least one value"));
    }
    let a = array_shaped(a, "a", &[Some(d), Some(d)], true)?;
    check_finite("b", b.slice()).map_err(to_py_err)?;
    let (asl, bsl) = (a.slice(), b.slice());
    let x = run_detached(py, || solver::lu_solve(asl, bsl))?;
    to_numpy(py, x, &[d])
}

/// `power_iteration(m, v0, iters)`: the power-iteration estimate of M's spectral radius (NaN for
/// `iters == 0`).
#[pyfunction]
#[pyo3(name = "power_iteration")]
fn power_iteration_py<'py>(
    py: Python<'py>,
    m: &Bound<'py, PyAny>,
    v0: &Bound<'py, PyAny>,
    iters: &Bound<'py, PyAny>,
) -> PyResult<f64> {
    let v0 = array_arg(v0, "v0", 1)?;
    let d = v0.shape[0];
    if d == 0 {
        return Err(value_err("v0", "must hold at least one value"));
    }
    let m = array_shaped(m, "m", &[Some(d), Some(d)], true)?;
    check_finite("v0", v0.slice()).map_err(to_py_err)?;
    let iters = u64_arg(iters, "iters")?;
    let (msl, vsl) = (m.slice(), v0.slice());
    run_detached(py, || power::power_iteration(msl, vsl, iters))
}

/// `mmd2(x, y)`: `(mmd2, mmd_sigma)` for two (M, D) sample sets (MODEL.md 4.1); `mmd2` is NaN for
/// M < 2, both are NaN when some pairwise distance is NaN (NaN input or `inf - inf`).
#[pyfunction]
#[pyo3(name = "mmd2")]
fn mmd2_py<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
) -> PyResult<(f64, f64)> {
    let x = array_arg(x, "x", 2)?;
    let (rows, dim) = (x.shape[0], x.shape[1]);
    if dim == 0 {
        return Err(value_err("x", "rows must hold at least one value"));
    }
    let y = array_shaped(y, "y", &[Some(rows), Some(dim)], false)?;
    let (xs, ys) = (x.slice(), y.slice());
    run_detached(py, || mmd::mmd2(xs, ys, dim))
}

/// `state_moments(problem, k_pi, k_mu, horizon)`: the exact averages over h = 0 .. horizon-1 of the
/// rollout states' second and fourth moments under the behaviour mixture (MODEL.md 9.2) -> `(m2 (n, n),
/// m4 (n, n, n, n))`. The problem is read as for `rollout`; its sigmas may be 0 here.
#[pyfunction]
#[pyo3(name = "state_moments")]
fn state_moments_py<'py>(
    py: Python<'py>,
    problem: &Bound<'py, PyAny>,
    k_pi: &Bound<'py, PyAny>,
    k_mu: &Bound<'py, PyAny>,
    horizon: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let args = ProblemArgs::from_py(problem)?;
    let (k_pi, k_mu) = args.gains(k_pi, k_mu)?;
    let horizon = size_arg(horizon, "horizon", 1)?;
    let p = args.problem();
    let (n, kp, km) = (p.n, k_pi.slice(), k_mu.slice());
    let out = run_detached(py, || moments::state_moments(&p, kp, km, horizon))?;
    Ok((
        to_numpy(py, out.m2, &[n, n])?,
        to_numpy(py, out.m4, &[n, n, n, n])?,
    ))
}

/// The extension module `offtd._core`.
#[pymodule]
#[pyo3(name = "_core")]
pub fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("BLOCK", BLOCK)?;
    m.add_function(wrap_pyfunction!(philox4x64_py, m)?)?;
    m.add_function(wrap_pyfunction!(philox_blocks_py, m)?)?;
    m.add_function(wrap_pyfunction!(uniforms_py, m)?)?;
    m.add_function(wrap_pyfunction!(normals_py, m)?)?;
    m.add_function(wrap_pyfunction!(features_py, m)?)?;
    m.add_function(wrap_pyfunction!(rollout_py, m)?)?;
    m.add_function(wrap_pyfunction!(transitions_py, m)?)?;
    m.add_function(wrap_pyfunction!(policy_samples_py, m)?)?;
    m.add_function(wrap_pyfunction!(rho_stats_py, m)?)?;
    m.add_function(wrap_pyfunction!(gmres_py, m)?)?;
    m.add_function(wrap_pyfunction!(lu_solve_py, m)?)?;
    m.add_function(wrap_pyfunction!(power_iteration_py, m)?)?;
    m.add_function(wrap_pyfunction!(mmd2_py, m)?)?;
    m.add_function(wrap_pyfunction!(state_moments_py, m)?)?;
    Ok(())
}
