//! The core's one error type.
//!
//! Every fallible kernel returns [`CoreError`]; the Python bindings map it to an exception in one place
//! (`bindings::to_py_err`): [`CoreError::WrongType`] becomes `TypeError`, [`CoreError::OutOfMemory`]
//! `offtd._core.CoreMemoryError` (a `MemoryError`), [`CoreError::Interrupted`] whatever exception
//! the Python signal handler raised, everything else `ValueError`. Messages always start with the
//! argument's name so a caller sees which input was wrong.

use std::fmt;

/// Why a kernel refused its input.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A value outside its domain (a negative size, a sigma <= 0, p_mix outside [0, 1], ...).
    InvalidArgument { arg: &'static str, reason: String },
    /// An array whose shape does not fit the others.
    ShapeMismatch {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// An array or scalar that must be finite holds NaN or +-inf.
    NonFinite { arg: &'static str },
    /// An array that is not a C-contiguous buffer.
    NotContiguous { arg: &'static str },
    /// An argument of the wrong kind (dtype, number of dimensions, not an array).
    WrongType {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A matrix the direct solver cannot factor.
    Singular { arg: &'static str },
    /// The memory a call needs (its outputs and scratch, `bytes` in all) is more than the memory
    /// available (`available`: MemAvailable, the address-space limit's headroom or the cgroup's,
    /// whichever is least; `None` when an allocation itself failed). `arg` sets the size.
    OutOfMemory {
        arg: &'static str,
        bytes: u128,
        available: Option<u64>,
    },
    /// The computation was stopped because the caller asked (a signal arrived, see
    /// [`crate::interrupt`]); its partial results are discarded.
    Interrupted,
}

impl CoreError {
    /// Shorthand for [`CoreError::InvalidArgument`].
    pub fn invalid(arg: &'static str, reason: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            arg,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`CoreError::ShapeMismatch`] with shapes printed like numpy's, e.g. `(2, 3)`.
    pub fn shape(arg: &'static str, expected: &[usize], got: &[usize]) -> Self {
        CoreError::ShapeMismatch {
            arg,
            expected: fmt_shape(expected),
            got: fmt_shape(got),
        }
    }

    /// The name of the argument at fault.
    pub fn arg(&self) -> &'static str {
        match self {
            CoreError::InvalidArgument { arg, .. }
            | CoreError::ShapeMismatch { arg, .. }
            | CoreError::NonFinite { arg }
            | CoreError::NotContiguous { arg }
            | CoreError::WrongType { arg, .. }
            | CoreError::Singular { arg }
            | CoreError::OutOfMemory { arg, .. } => arg,
            CoreError::Interrupted => "interrupted",
        }
    }

    /// A kernel's out-of-memory error restated for the whole call: the argument that sets the
    /// size and the bytes the call planned (an allocation that fails reports only its own size);
    /// other errors unchanged.
    pub fn as_planned(self, arg: &'static str, bytes: u128) -> Self {
        match self {
            CoreError::OutOfMemory { available, .. } => CoreError::OutOfMemory {
                arg,
                bytes,
                available,
            },
            e => e,
        }
    }

    /// True for errors Python reports as `TypeError` (the rest are `ValueError`).
    pub fn is_type_error(&self) -> bool {
        matches!(self, CoreError::WrongType { .. })
    }
}

/// A byte count for messages: `1.5 GiB`, `12 MiB`, `512 bytes`.
pub fn fmt_bytes(bytes: u128) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.3} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.3} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.3} KiB", b / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// A shape written like numpy writes it: `(3,)`, `(2, 2)`.
pub fn fmt_shape(shape: &[usize]) -> String {
    match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => {
            let parts: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument { arg, reason } => write!(f, "{arg}: {reason}"),
            CoreError::ShapeMismatch { arg, expected, got } => {
                write!(f, "{arg}: expected shape {expected}, got {got}")
            }
            CoreError::NonFinite { arg } => write!(f, "{arg}: must be finite (holds NaN or inf)"),
            CoreError::NotContiguous { arg } => write!(f, "{arg}: array must be C-contiguous"),
            CoreError::WrongType { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            CoreError::Singular { arg } => write!(f, "{arg}: matrix is singular"),
            CoreError::OutOfMemory {
                arg,
                bytes,
                available: Some(avail),
            } => write!(
                f,
                "{arg}: this call needs {bytes} bytes ({}) of memory, more than the {} available",
                fmt_bytes(*bytes),
                fmt_bytes(*avail as u128)
            ),
            CoreError::OutOfMemory {
                arg,
                bytes,
                available: None,
            } => write!(
                f,
                "{arg}: cannot allocate the {bytes} bytes ({}) this call needs",
                fmt_bytes(*bytes)
            ),
            CoreError::Interrupted => write!(f, "interrupted: the computation was stopped"),
        }
    }
}

impl std::error::Error for CoreError {}

/// The result type of every fallible kernel.
pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_messages_name_the_argument() {
        assert_eq!(
            CoreError::shape("k_pi", &[2, 2], &[3, 2]).to_string(),
            "k_pi: expected shape (2, 2), got (3, 2)"
        );
        assert_eq!(
            CoreError::shape("w", &[6], &[5]).to_string(),
            "w: expected shape (6,), got (5,)"
        );
        assert_eq!(
            CoreError::invalid("sigma_pi", "must be > 0, got -1").to_string(),
            "sigma_pi: must be > 0, got -1"
        );
        assert_eq!(
            CoreError::NonFinite { arg: "w" }.to_string(),
            "w: must be finite (holds NaN or inf)"
        );
        assert_eq!(
            CoreError::NotContiguous { arg: "pool" }.to_string(),
            "pool: array must be C-contiguous"
        );
        assert_eq!(
            CoreError::WrongType {
                arg: "a",
                expected: "dtype float64".into(),
                got: "int64".into()
            }
            .to_string(),
            "a: expected dtype float64, got int64"
        );
        assert_eq!(
            CoreError::Singular { arg: "a" }.to_string(),
            "a: matrix is singular"
        );
        assert_eq!(
            CoreError::OutOfMemory {
                arg: "count",
                bytes: 8 << 30,
                available: Some(3 << 30)
            }
            .to_string(),
            "count: this call needs 8589934592 bytes (8.000 GiB) of memory, more than the 3.000 GiB available"
        );
        assert_eq!(
            CoreError::OutOfMemory {
                arg: "batch",
                bytes: 1536,
                available: None
            }
            .to_string(),
            "batch: cannot allocate the 1536 bytes (1.500 KiB) this call needs"
        );
        assert_eq!(CoreError::Interrupted.arg(), "interrupted");
    }

    #[test]
    fn arg_and_kind() {
        let e = CoreError::WrongType {
            arg: "x",
            expected: "2-D".into(),
            got: "1-D".into(),
        };
        assert_eq!(e.arg(), "x");
        assert!(e.is_type_error());
        assert!(!CoreError::NonFinite { arg: "y" }.is_type_error());
        assert_eq!(fmt_shape(&[]), "()");
    }

    /// An allocation's out-of-memory error becomes the call's (its argument and planned bytes,
    /// the memory available kept); other errors pass unchanged.
    #[test]
    fn as_planned_restates_only_out_of_memory() {
        let e = CoreError::OutOfMemory {
            arg: "len",
            bytes: 8,
            available: Some(3),
        };
        assert_eq!(
            e.as_planned("count", 1 << 40),
            CoreError::OutOfMemory {
                arg: "count",
                bytes: 1 << 40,
                available: Some(3),
            }
        );
        let none = CoreError::OutOfMemory {
            arg: "len",
            bytes: 8,
            available: None,
        };
        assert_eq!(
            none.as_planned("batch", 9),
            CoreError::OutOfMemory {
                arg: "batch",
                bytes: 9,
                available: None,
            }
        );
        assert_eq!(
            CoreError::NonFinite { arg: "w" }.as_planned("count", 9),
            CoreError::NonFinite { arg: "w" }
        );
    }
}
