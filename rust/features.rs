//! The features `phi(s) = [s_i s_j for i <= j; s; 1]` (MODEL.md section 2), on slices and on
//! fixed-size arrays.

/// Feature dimension `d = n(n+1)/2 + n + 1`.
#[inline]
pub fn feature_dim(n: usize) -> usize {
    n * (n + 1) / 2 + n + 1
}

/// `phi(s) = [s_i s_j for i <= j; s; 1]`; `out.len() == d`.
#[inline(always)]
pub fn features(s: &[f64], out: &mut [f64]) {
    let n = s.len();
    let mut c = 0;
    for i in 0..n {
        for j in i..n {
            out[c] = s[i] * s[j];
            c += 1;
        }
    }
    out[c..c + n].copy_from_slice(s);
    out[c + n] = 1.0;
}

/// `phi(s)` into a `[f64; D]`, `D = feature_dim(N)`.
#[inline(always)]
pub fn features_fixed<const N: usize, const D: usize>(s: &[f64; N]) -> [f64; D] {
    let mut out = [0.0; D];
    let mut c = 0;
    for i in 0..N {
        for j in i..N {
            out[c] = s[i] * s[j];
            c += 1;
        }
    }
    out[c..c + N].copy_from_slice(s);
    out[c + N] = 1.0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_layout() {
        let mut out = vec![0.0; feature_dim(2)];
        features(&[2.0, 3.0], &mut out);
        assert_eq!(out, vec![4.0, 6.0, 9.0, 2.0, 3.0, 1.0]);
        assert_eq!(feature_dim(1), 3);
        assert_eq!(feature_dim(3), 10);
    }

    #[test]
    fn fixed_features_equal_features() {
        let s = [0.5, -2.0, 3.0];
        let mut phi = vec![0.0; feature_dim(3)];
        features(&s, &mut phi);
        assert_eq!(phi, features_fixed::<3, 10>(&s).to_vec());
        assert_eq!(phi, [0.25, -1.0, 1.5, 4.0, -6.0, 9.0, 0.5, -2.0, 3.0, 1.0]);
    }
}
