//! The probes' state pool (MODEL.md section 4): its check and the pick of a state.

use crate::error::{CoreError, CoreResult};

/// Checks a state pool of `len / n` states.
pub fn check_pool(pool: &[f64], n: usize) -> CoreResult<usize> {
    if n == 0 || !pool.len().is_multiple_of(n) {
        return Err(CoreError::invalid(
            "pool",
            format!("length {} is not a multiple of n = {n}", pool.len()),
        ));
    }
    let rows = pool.len() / n;
    if rows == 0 {
        return Err(CoreError::invalid("pool", "must hold at least one state"));
    }
    Ok(rows)
}

#[inline(always)]
pub fn pick(u: f64, pool_len: usize) -> usize {
    let idx = (u * pool_len as f64).floor() as usize;
    idx.min(pool_len - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_check() {
        assert_eq!(check_pool(&[1.0, 2.0, 3.0, 4.0], 2).unwrap(), 2);
        assert_eq!(check_pool(&[1.0, 2.0, 3.0], 2).unwrap_err().arg(), "pool");
        assert_eq!(check_pool(&[], 2).unwrap_err().arg(), "pool");
        assert_eq!(check_pool(&[1.0], 0).unwrap_err().arg(), "pool");
    }

    #[test]
    fn pick_bounds() {
        assert_eq!(pick(0.0, 5), 0);
        assert_eq!(pick(0.9999999999999999, 5), 4);
        assert_eq!(pick(0.5, 1), 0);
    }

    /// `min(floor(u * N), N - 1)`: for a uniform (u <= 1 - 2^-53) `u * N` stays below N for every
    /// pool size below 2^53, so the guard only shows at u = 1, where the formula still gives N - 1.
    #[test]
    fn pick_is_the_guarded_floor() {
        let u_max = 1.0 - f64::EPSILON / 2.0;
        for n in [1usize, 2, 3, 5, 7, 1000, 4097] {
            assert_eq!(pick(u_max, n), n - 1);
            assert_eq!(pick(1.0, n), n - 1);
        }
        assert_eq!(pick(0.5, 4), 2);
        assert_eq!(pick(0.74, 4), 2);
        assert_eq!(pick(0.75, 4), 3);
    }
}
