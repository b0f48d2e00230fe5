//! Power iteration (MODEL.md section 6): `v = v0/||v0||`; `iters` times `x = M v`, `lam = ||x||`,
//! stop with 0 if `lam == 0`, `v = x/lam`; the estimate is the last `lam`.

use crate::checks::check_finite;
use crate::error::{CoreError, CoreResult};
use crate::linalg::{dot, matvec_rows};
use crate::{interrupt, mem};

/// The power-iteration estimate of the spectral radius of the row-major (d, d) matrix `m`.
/// `iters == 0` returns NaN (no estimate was made); so does `v0 = 0` (0/0). Each step ticks the
/// interruption ([`crate::interrupt`]): any `iters` up to 2^64 - 1 can be stopped.
pub fn power_iteration(m: &[f64], v0: &[f64], iters: u64) -> CoreResult<f64> {
    let d = v0.len();
    if d == 0 {
        return Err(CoreError::invalid("v0", "must hold at least one value"));
    }
    if m.len() != d * d {
        return Err(CoreError::ShapeMismatch {
            arg: "m",
            expected: crate::error::fmt_shape(&[d, d]),
            got: format!("{} elements", m.len()),
        });
    }
    check_finite("m", m)?;
    check_finite("v0", v0)?;
    // v0 = 0 gives 0/0 = NaN and a NaN estimate, as in the reference
    let n0 = dot(v0, v0).sqrt();
    let mut v: Vec<f64> = mem::collect("v0", v0.iter().map(|x| x / n0))?;
    let mut x: Vec<f64> = mem::zeroed("v0", d)?;
    let mut lam = f64::NAN;
    let work = (2 * d * d + 4 * d) as u64;
    // work since the last tick, kept here so a small matrix's step does not pay a tick
    let mut pending = 0u64;
    for _ in 0..iters {
        pending += work;
        if pending >= interrupt::TICK_UNITS {
            interrupt::tick_check(pending)?;
            pending = 0;
        }
        matvec_rows(m, &v, &mut x);
        lam = dot(&x, &x).sqrt();
        if lam == 0.0 {
            return Ok(0.0);
        }
        for i in 0..d {
            v[i] = x[i] / lam;
        }
    }
    Ok(lam)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagonal_matrix() {
        let m = [3.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.5];
        let lam = power_iteration(&m, &[1.0, 1.0, 1.0], 60).unwrap();
        assert!((lam - 3.0).abs() < 1e-12, "{lam}");
    }

    #[test]
    fn symmetric_known_spectrum() {
        // eigenvalues 3 and 1
        let m = [2.0, 1.0, 1.0, 2.0];
        let lam = power_iteration(&m, &[1.0, 0.0], 80).unwrap();
        assert!((lam - 3.0).abs() < 1e-12);
    }

    #[test]
    fn nilpotent_and_zero() {
        let m = [0.0, 1.0, 0.0, 0.0];
        assert_eq!(power_iteration(&m, &[1.0, 1.0], 5).unwrap(), 0.0);
        assert!(power_iteration(&m, &[1.0, 1.0], 0).unwrap().is_nan());
        assert!(power_iteration(&m, &[0.0, 0.0], 3).unwrap().is_nan());
        assert_eq!(
            power_iteration(&m[..3], &[1.0, 0.0], 3).unwrap_err().arg(),
            "m"
        );
    }

    #[test]
    fn one_step_by_hand() {
        let m = [1.0, 2.0, 3.0, 4.0];
        // v = (0.6, 0.8); x = (2.2, 5.0); lam = sqrt(4.84 + 25)
        let lam = power_iteration(&m, &[3.0, 4.0], 1).unwrap();
        let v: [f64; 2] = [3.0 / 5.0, 4.0 / 5.0];
        let x = [1.0 * v[0] + 2.0 * v[1], 3.0 * v[0] + 4.0 * v[1]];
        assert_eq!(lam, (x[0] * x[0] + x[1] * x[1]).sqrt());
    }

    /// The work each step ticks is its floating-point operations (the latency contract of
    /// `crate::interrupt`): `x = M v` is d^2 multiply-adds, `||x||` d more and a square root, `v =
    /// x / lam` d divisions. At d = 1 the vector terms are most of it, at d = 96 the product. The
    /// work of the last steps, below one tick, is not ticked (at most TICK_UNITS of the >= 400,000
    /// here, so within the tolerance), and steps are batched: one tick per TICK_UNITS of work.
    #[test]
    fn ticked_work_counts_the_flops() {
        use crate::interrupt::tally;
        for (d, iters) in [(1usize, 100_000u64), (2, 30_000), (7, 3_000), (96, 30)] {
            // a positive matrix: x never vanishes, so every step runs
            let m: Vec<f64> = (0..d * d)
                .map(|i| 1.0 / (1 + i % d + i / d) as f64)
                .collect();
            let v0 = vec![1.0; d];
            let (lam, t) = tally::measure(|| power_iteration(&m, &v0, iters).unwrap());
            assert!(lam > 0.0);
            let d = d as f64;
            let flops = iters as f64 * (2.0 * d * d + (2.0 * d + 1.0) + d);
            let what = format!("power_iteration d {d} iters {iters}");
            tally::check_work(&what, t, flops);
            tally::check_batched(&what, t);
        }
    }
}
