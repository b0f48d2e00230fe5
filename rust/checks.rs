//! Argument checks shared by the kernels: lengths, finiteness and domains, each error naming the
//! argument ([`CoreError`]).

use crate::error::{CoreError, CoreResult};

/// Checks that `v` holds the number of values of `shape`.
pub fn check_len(arg: &'static str, v: &[f64], shape: &[usize]) -> CoreResult<()> {
    let want: usize = shape.iter().product();
    if v.len() != want {
        return Err(CoreError::ShapeMismatch {
            arg,
            expected: crate::error::fmt_shape(shape),
            got: format!("{} elements", v.len()),
        });
    }
    Ok(())
}

/// True when every value of `v` is finite: `x * 0 == 0` for finite `x` (a signed zero) and is NaN
/// for inf and NaN, tested eight values at a time without early exit inside a group (so it
/// vectorizes).
#[inline]
pub fn all_finite(v: &[f64]) -> bool {
    let mut groups = v.chunks_exact(8);
    for g in &mut groups {
        let mut ok = true;
        for &x in g {
            ok &= x * 0.0 == 0.0;
        }
        if !ok {
            return false;
        }
    }
    groups.remainder().iter().all(|x| x.is_finite())
}

/// Checks that every value of `v` is finite.
pub fn check_finite(arg: &'static str, v: &[f64]) -> CoreResult<()> {
    if all_finite(v) {
        Ok(())
    } else {
        Err(CoreError::NonFinite { arg })
    }
}

/// Checks a finite scalar.
pub fn check_finite_scalar(arg: &'static str, x: f64) -> CoreResult<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(CoreError::NonFinite { arg })
    }
}

/// Checks a finite scalar `> 0`.
pub fn positive(arg: &'static str, x: f64) -> CoreResult<()> {
    check_finite_scalar(arg, x)?;
    if x > 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(arg, format!("must be > 0, got {x}")))
    }
}

/// Checks a finite scalar `>= 0`.
pub fn nonnegative(arg: &'static str, x: f64) -> CoreResult<()> {
    check_finite_scalar(arg, x)?;
    if x >= 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(arg, format!("must be >= 0, got {x}")))
    }
}

/// Checks a gain matrix (m, n) and, optionally, critic weights (d,).
pub fn check_gain(arg: &'static str, k: &[f64], m: usize, n: usize) -> CoreResult<()> {
    check_len(arg, k, &[m, n])?;
    check_finite(arg, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_finite_finds_every_non_finite_value() {
        for len in [0usize, 1, 7, 8, 9, 16, 17, 64] {
            let v: Vec<f64> = (0..len).map(|i| i as f64 * 1e300 - 3.0).collect();
            assert!(all_finite(&v));
            for pos in 0..len {
                for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                    let mut w = v.clone();
                    w[pos] = bad;
                    assert!(!all_finite(&w), "len {len} pos {pos}");
                }
            }
        }
        assert!(all_finite(&[
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -0.0
        ]));
    }

    #[test]
    fn checks_name_the_argument() {
        assert!(check_gain("k", &[1.0, 2.0], 1, 2).is_ok());
        assert_eq!(check_gain("k", &[1.0], 1, 2).unwrap_err().arg(), "k");
        assert_eq!(
            check_gain("k", &[1.0, f64::NAN], 1, 2).unwrap_err().arg(),
            "k"
        );
        assert!(check_finite_scalar("x", f64::MAX).is_ok());
        assert_eq!(check_finite_scalar("x", f64::NAN).unwrap_err().arg(), "x");
        assert_eq!(
            check_finite("v", &[0.0, f64::INFINITY]).unwrap_err().arg(),
            "v"
        );
    }
}
