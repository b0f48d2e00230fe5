//! Small linear algebra in MODEL.md's order of operations: dot products, matrix-vector products and
//! quadratic forms (each sum left to right from 0.0, products never fused), on slices and on
//! fixed-size arrays (whose loops the compiler unrolls for n, m <= 4), and the block size of a
//! block sum (MODEL.md 0.2).

/// Samples per block of a block sum (MODEL.md 0.2).
pub const BLOCK: usize = 1024;

#[inline(always)]
pub fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = 0.0;
    for (a, b) in x.iter().zip(y) {
        acc += a * b;
    }
    acc
}

/// `out[i] = sum_j k[i][j] * s[j]` for a (rows, s.len()) row-major matrix.
#[inline(always)]
pub fn matvec(k: &[f64], s: &[f64], out: &mut [f64]) {
    let cols = s.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = dot(&k[i * cols..(i + 1) * cols], s);
    }
}

/// `out[i] = a[i] . v` for the rows of a row-major (out.len(), v.len()) matrix `a`: each row's sum
/// left to right from 0.0, as [`dot`], with eight rows computed side by side (their dependency
/// chains interleave; the bits are those of [`matvec`]).
#[inline(always)]
pub fn matvec_rows(a: &[f64], v: &[f64], out: &mut [f64]) {
    const R: usize = 8;
    let d = v.len();
    let rows = out.len();
    if rows < R {
        // too few rows to interleave: the plain loop (which compiles tighter for tiny matrices)
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot(&a[r * d..(r + 1) * d], v);
        }
        return;
    }
    let mut i = 0;
    while i + R <= rows {
        let block = &a[i * d..(i + R) * d];
        let row: [&[f64]; R] = std::array::from_fn(|r| &block[r * d..r * d + d]);
        let mut acc = [0.0; R];
        for c in 0..d {
            let vc = v[c];
            for r in 0..R {
                acc[r] += row[r][c] * vc;
            }
        }
        out[i..i + R].copy_from_slice(&acc);
        i += R;
    }
    for r in i..rows {
        out[r] = dot(&a[r * d..(r + 1) * d], v);
    }
}

/// `sum_i sum_j (x[i]*Q[i][j])*x[j]`: one running sum, i outer, j inner.
#[inline(always)]
pub fn quad_form(x: &[f64], q: &[f64]) -> f64 {
    let k = x.len();
    let mut acc = 0.0;
    for i in 0..k {
        let xi = x[i];
        let row = &q[i * k..(i + 1) * k];
        for j in 0..k {
            acc += (xi * row[j]) * x[j];
        }
    }
    acc
}

#[inline(always)]
pub fn dot_fixed<const K: usize>(x: &[f64; K], y: &[f64; K]) -> f64 {
    let mut acc = 0.0;
    for i in 0..K {
        acc += x[i] * y[i];
    }
    acc
}

/// [`matvec`] for fixed-size arrays.
#[inline(always)]
pub fn matvec_fixed<const R: usize, const C: usize>(k: &[[f64; C]; R], s: &[f64; C]) -> [f64; R] {
    let mut out = [0.0; R];
    for i in 0..R {
        out[i] = dot_fixed(&k[i], s);
    }
    out
}

/// [`quad_form`] for fixed-size arrays.
#[inline(always)]
pub fn quad_form_fixed<const K: usize>(x: &[f64; K], q: &[[f64; K]; K]) -> f64 {
    let mut acc = 0.0;
    for i in 0..K {
        for j in 0..K {
            acc += (x[i] * q[i][j]) * x[j];
        }
    }
    acc
}

/// The rows of a row-major (R, C) matrix as a fixed-size array.
pub fn to_rows<const R: usize, const C: usize>(v: &[f64]) -> [[f64; C]; R] {
    let mut out = [[0.0; C]; R];
    for i in 0..R {
        out[i].copy_from_slice(&v[i * C..(i + 1) * C]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_rows_equals_matvec() {
        for (rows, cols) in [(1, 1), (7, 3), (8, 8), (13, 64), (64, 64), (9, 0)] {
            let a: Vec<f64> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1013) as f64).sin())
                .collect();
            let v: Vec<f64> = (0..cols).map(|i| ((i * 31) as f64).cos() * 1e3).collect();
            let mut x = vec![0.0; rows];
            let mut y = vec![0.0; rows];
            matvec(&a, &v, &mut x);
            matvec_rows(&a, &v, &mut y);
            assert_eq!(
                x.iter().map(|t| t.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|t| t.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn quad_form_order() {
        let q = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quad_form(&[1.0, 1.0], &q), 10.0);
    }

    #[test]
    fn quad_form_and_matvec_by_hand() {
        // x = (1, 2), Q = [[1, 2], [3, 4]]: 1*1*1 + 1*2*2 + 2*3*1 + 2*4*2 = 1 + 4 + 6 + 16
        assert_eq!(quad_form(&[1.0, 2.0], &[1.0, 2.0, 3.0, 4.0]), 27.0);
        let mut out = [0.0; 2];
        matvec(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0, -1.0, 2.0], &mut out);
        assert_eq!(out, [5.0, 11.0]);
        assert_eq!(dot(&[1.5, -2.0, 4.0], &[2.0, 3.0, 0.25]), -2.0);
        assert_eq!(
            matvec_fixed(&[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], &[1.0, -1.0, 2.0]),
            [5.0, 11.0]
        );
        assert_eq!(dot_fixed(&[1.5, -2.0, 4.0], &[2.0, 3.0, 0.25]), -2.0);
        assert_eq!(
            quad_form_fixed(&[1.0, 2.0], &[[1.0, 2.0], [3.0, 4.0]]),
            27.0
        );
    }
}
