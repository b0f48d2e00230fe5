//! Linear solves of MODEL.md section 6: restarted GMRES (restart = dimension, x0 = 0, modified
//! Gram-Schmidt Arnoldi, Givens rotations) and a direct LU solve (nalgebra, partial pivoting) for
//! checking.
//!
//! Where MODEL.md leaves the order open, GMRES makes the same literal choices as the reference
//! (`offtd/reference/solver.py`): norms `sqrt(sum v_i*v_i)`; Givens `den = sqrt(h_kk^2 + h_k1k^2)`,
//! `c = h_kk/den`, `s = h_k1k/den`; back substitution `y_i = (g_i - sum_{j>i} h_ij y_j) / h_ii`;
//! `x_i += sum_j V[j][i] y_j`; a cycle whose starting residual is already `<= tol` (or NaN) spends no
//! iteration. Only in the degenerate `den == 0` case (A singular on the Krylov space) does it differ:
//! the reference divides 0/0 and returns NaN, this keeps the solution of the non-singular part.

use nalgebra::{DMatrix, DVector};

use crate::checks::check_finite;
use crate::error::{CoreError, CoreResult};
use crate::linalg::{dot, matvec_rows};
use crate::{interrupt, mem};

/// What GMRES returns (backend.SolveResult).
#[derive(Debug, Clone, PartialEq)]
pub struct SolveOut {
    pub x: Vec<f64>,
    pub converged: bool,
    pub iterations: u64,
    /// true `||b - A x|| / ||b||` at exit
    pub residual: f64,
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

/// `b - A x` for a row-major (d, d) `a`.
fn residual_vec(a: &[f64], b: &[f64], x: &[f64], out: &mut [f64]) {
    matvec_rows(a, x, out);
    for (o, bi) in out.iter_mut().zip(b) {
        *o = bi - *o;
    }
}

fn check_system(a: &[f64], b: &[f64]) -> CoreResult<usize> {
    let d = b.len();
    if d == 0 {
        return Err(CoreError::invalid("b", "must hold at least one value"));
    }
    if a.len() != d * d {
        return Err(CoreError::ShapeMismatch {
            arg: "a",
            expected: crate::error::fmt_shape(&[d, d]),
            got: format!("{} elements", a.len()),
        });
    }
    check_finite("a", a)?;
    check_finite("b", b)?;
    Ok(d)
}

/// The bytes [`gmres`] allocates for a system of dimension `d`: the Krylov basis and the Hessenberg
/// matrix (`(d + 1) d` values each) and a few vectors.
pub fn gmres_bytes(d: usize) -> u128 {
    let d = d as u128;
    8 * (2 * (d + 1) * d + 8 * d + 8)
}

/// Restarted GMRES(d) on `A x = b` (row-major (d, d) `a`), at most `max_iters` inner iterations in
/// all, stopping when the updated relative residual is `<= tol`. Every inner iteration ticks the
/// interruption ([`crate::interrupt`]), so any `max_iters` can be stopped.
pub fn gmres(a: &[f64], b: &[f64], max_iters: u64, tol: f64) -> CoreResult<SolveOut> {
    let d = check_system(a, b)?;
    if tol.is_nan() || tol < 0.0 {
        return Err(CoreError::invalid(
            "tol",
            format!("must be >= 0, got {tol}"),
        ));
    }
    mem::plan("a", gmres_bytes(d))?;
    let bnorm = norm(b);
    let mut x: Vec<f64> = mem::zeroed("a", d)?;
    if bnorm == 0.0 {
        return Ok(SolveOut {
            x,
            converged: true,
            iterations: 0,
            residual: 0.0,
        });
    }
    let restart = d;
    let mut iterations = 0u64;
    let mut pending = 0u64;
    // one allocation for the scratch: residual, Krylov basis (restart + 1 vectors), Hessenberg
    // (restart + 1, restart), rotations, rhs, w, y
    let lens = [
        d,
        (restart + 1) * d,
        (restart + 1) * restart,
        restart,
        restart,
        restart + 1,
        d,
        restart,
    ];
    let mut scratch: Vec<f64> = mem::zeroed("a", lens.iter().sum())?;
    let (r, rest) = scratch.split_at_mut(lens[0]);
    let (v, rest) = rest.split_at_mut(lens[1]);
    let (h, rest) = rest.split_at_mut(lens[2]);
    let (cs, rest) = rest.split_at_mut(lens[3]);
    let (sn, rest) = rest.split_at_mut(lens[4]);
    let (g, rest) = rest.split_at_mut(lens[5]);
    let (w, y) = rest.split_at_mut(lens[6]);

    'outer: while iterations < max_iters {
        residual_vec(a, b, &x, r);
        let beta = norm(r);
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(beta / bnorm > tol) {
            // already there (or NaN): no iteration is spent on this cycle
            break;
        }
        for i in 0..d {
            v[i] = r[i] / beta;
        }
        g.fill(0.0);
        g[0] = beta;
        h.fill(0.0);
        let mut k_used = 0;
        let mut converged_estimate = false;
        for k in 0..restart {
            if iterations >= max_iters {
                break;
            }
            // work since the last tick, kept here so a small system's iteration does not pay one
            pending += (2 * d * d + 4 * (k + 1) * d + 4 * k) as u64;
            if pending >= interrupt::TICK_UNITS {
                interrupt::tick_check(pending)?;
                pending = 0;
            }
            // w = A v_k, then modified Gram-Schmidt against v_0..v_k
            matvec_rows(a, &v[k * d..(k + 1) * d], w);
            for i in 0..=k {
                let vi = &v[i * d..(i + 1) * d];
                let hik = dot(w, vi);
                h[i * restart + k] = hik;
                for c in 0..d {
                    w[c] -= hik * vi[c];
                }
            }
            let hnext = norm(w);
            h[(k + 1) * restart + k] = hnext;
            // previous rotations on column k
            for i in 0..k {
                let t0 = h[i * restart + k];
                let t1 = h[(i + 1) * restart + k];
                h[i * restart + k] = cs[i] * t0 + sn[i] * t1;
                h[(i + 1) * restart + k] = -sn[i] * t0 + cs[i] * t1;
            }
            // new rotation zeroing h[k+1][k]
            let hkk = h[k * restart + k];
            let hk1 = h[(k + 1) * restart + k];
            let den = (hkk * hkk + hk1 * hk1).sqrt();
            if den == 0.0 {
                // only when w = 0 and h_kk = 0 (A singular on the Krylov space): an identity
                // rotation instead of 0/0, and the zero diagonal is left out of the back substitution
                cs[k] = 1.0;
                sn[k] = 0.0;
            } else {
                cs[k] = hkk / den;
                sn[k] = hk1 / den;
            }
            h[k * restart + k] = cs[k] * hkk + sn[k] * hk1;
            h[(k + 1) * restart + k] = 0.0;
            let gk = g[k];
            g[k] = cs[k] * gk;
            g[k + 1] = -sn[k] * gk;
            iterations += 1;
            k_used = k + 1;
            if g[k + 1].abs() / bnorm <= tol {
                // the updated residual is small enough (an exact breakdown lands here too: sn = 0)
                converged_estimate = true;
                break;
            }
            if hnext == 0.0 {
                // breakdown: the cycle ends with its Krylov solution
                break;
            }
            for i in 0..d {
                v[(k + 1) * d + i] = w[i] / hnext;
            }
        }
        // back substitution on the leading nonsingular part of the triangle
        let mut kk = k_used;
        while kk > 0 && h[(kk - 1) * restart + (kk - 1)] == 0.0 {
            kk -= 1;
        }
        // y_i = (g_i - sum_{j>i} h_ij y_j) / h_ii, the sum left to right from 0.0
        for i in (0..kk).rev() {
            let mut acc = 0.0;
            for j in i + 1..kk {
                acc += h[i * restart + j] * y[j];
            }
            y[i] = (g[i] - acc) / h[i * restart + i];
        }
        // x_i = x_i + sum_j V[j][i] y_j, the sum left to right from 0.0
        for i in 0..d {
            let mut acc = 0.0;
            for j in 0..kk {
                acc += v[j * d + i] * y[j];
            }
            x[i] += acc;
        }
        if converged_estimate || kk == 0 {
            // stop on the updated residual; kk == 0 means A v = 0 and restarting cannot help
            break 'outer;
        }
    }
    residual_vec(a, b, &x, r);
    let residual = norm(r) / bnorm;
    Ok(SolveOut {
        x,
        converged: residual <= tol,
        iterations,
        residual,
    })
}

/// The bytes [`lu_solve`] holds at once for a (d, d) system: the matrix copy, the right-hand side
/// copy, the pivots (d pairs of indices), the solution and the returned copy of it.
pub fn lu_solve_bytes(d: usize) -> u128 {
    let d = d as u128;
    8 * (d * d + 5 * d)
}

/// Direct solve with LU and partial pivoting (nalgebra); for checking GMRES. Its matrix copy is
/// planned against the available memory (nalgebra's own allocations are not fallible), and the
/// factorisation, a single nalgebra call, is not interruptible.
pub fn lu_solve(a: &[f64], b: &[f64]) -> CoreResult<Vec<f64>> {
    let d = check_system(a, b)?;
    mem::plan("a", lu_solve_bytes(d))?;
    let m = DMatrix::from_row_slice(d, d, a);
    let rhs = DVector::from_column_slice(b);
    match m.lu().solve(&rhs) {
        Some(x) if x.iter().all(|v| v.is_finite()) => Ok(x.iter().copied().collect()),
        _ => Err(CoreError::Singular { arg: "a" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matvec(a: &[f64], x: &[f64]) -> Vec<f64> {
        let d = x.len();
        (0..d).map(|i| dot(&a[i * d..(i + 1) * d], x)).collect()
    }

    /// MODEL.md section 6's GMRES(d) written out with the literal choices listed in the module
    /// docs (those of the reference, `offtd/reference/solver.py`), for matrices without a zero
    /// rotation denominator: the oracle of `gmres_equals_the_model_written_out`.
    fn gmres_oracle(a: &[f64], b: &[f64], max_iters: u64, tol: f64) -> SolveOut {
        let d = b.len();
        let nrm = |v: &[f64]| -> f64 {
            let mut acc = 0.0;
            for x in v {
                acc += x * x;
            }
            acc.sqrt()
        };
        let res = |x: &[f64]| -> Vec<f64> {
            (0..d)
                .map(|i| b[i] - dot(&a[i * d..(i + 1) * d], x))
                .collect()
        };
        let mut x = vec![0.0; d];
        let bnorm = nrm(b);
        if bnorm == 0.0 {
            return SolveOut {
                x,
                converged: true,
                iterations: 0,
                residual: 0.0,
            };
        }
        let mut iters = 0u64;
        let mut done = false;
        while !done && iters < max_iters {
            let r = res(&x);
            let beta = nrm(&r);
            // NaN must stop too, as in the code under test
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            if !(beta / bnorm > tol) {
                break;
            }
            let mut vs: Vec<Vec<f64>> = vec![r.iter().map(|ri| ri / beta).collect()];
            let mut g = vec![0.0; d + 1];
            g[0] = beta;
            let mut h = vec![vec![0.0; d]; d + 1];
            let (mut cs, mut sn): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
            let mut k_used = 0;
            for k in 0..d {
                if iters >= max_iters {
                    break;
                }
                let mut w: Vec<f64> = (0..d)
                    .map(|i| dot(&a[i * d..(i + 1) * d], &vs[k]))
                    .collect();
                for i in 0..=k {
                    let hik = dot(&w, &vs[i]);
                    h[i][k] = hik;
                    for l in 0..d {
                        w[l] -= hik * vs[i][l];
                    }
                }
                let hk1 = nrm(&w);
                h[k + 1][k] = hk1;
                for i in 0..k {
                    let t = cs[i] * h[i][k] + sn[i] * h[i + 1][k];
                    h[i + 1][k] = -sn[i] * h[i][k] + cs[i] * h[i + 1][k];
                    h[i][k] = t;
                }
                let (hkk, hkk1) = (h[k][k], h[k + 1][k]);
                let den = (hkk * hkk + hkk1 * hkk1).sqrt();
                let (c, s) = (hkk / den, hkk1 / den);
                cs.push(c);
                sn.push(s);
                h[k][k] = c * hkk + s * hkk1;
                h[k + 1][k] = 0.0;
                g[k + 1] = -s * g[k];
                g[k] *= c;
                iters += 1;
                k_used = k + 1;
                if g[k + 1].abs() / bnorm <= tol {
                    done = true;
                    break;
                }
                if hk1 == 0.0 {
                    break;
                }
                vs.push(w.iter().map(|wl| wl / hk1).collect());
            }
            if k_used == 0 {
                break;
            }
            let mut y = vec![0.0; k_used];
            for i in (0..k_used).rev() {
                let mut acc = 0.0;
                for j in i + 1..k_used {
                    acc += h[i][j] * y[j];
                }
                y[i] = (g[i] - acc) / h[i][i];
            }
            for i in 0..d {
                let mut acc = 0.0;
                for j in 0..k_used {
                    acc += vs[j][i] * y[j];
                }
                x[i] += acc;
            }
        }
        let residual = nrm(&res(&x)) / bnorm;
        SolveOut {
            converged: residual <= tol,
            x,
            iterations: iters,
            residual,
        }
    }

    /// GMRES equals the model written out to the bit (solution, iterations, residual, verdict) on
    /// nonsymmetric systems of several sizes (below and above matvec_rows' eight-row interleave),
    /// with budgets that end mid-cycle and tolerances that force restarts or stop early.
    #[test]
    fn gmres_equals_the_model_written_out() {
        let mut s: u64 = 4242;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / 9007199254740992.0 * 2.0 - 1.0
        };
        for d in [1usize, 2, 3, 5, 8, 9, 12] {
            for shift in [0.3, 1.0, 4.0] {
                let a: Vec<f64> = (0..d * d)
                    .map(|i| next() + if i % (d + 1) == 0 { shift } else { 0.0 })
                    .collect();
                let b: Vec<f64> = (0..d).map(|_| next() * 3.0).collect();
                for (max_iters, tol) in [
                    (1, 1e-12),
                    (d as u64 - 1, 1e-14),
                    (d as u64 + 2, 1e-14),
                    (3 * d as u64 + 1, 1e-15),
                    (200, 1e-8),
                    (200, 0.5),
                    (200, 0.0),
                ] {
                    let got = gmres(&a, &b, max_iters, tol).unwrap();
                    let want = gmres_oracle(&a, &b, max_iters, tol);
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got.x),
                        bits(&want.x),
                        "d {d} shift {shift} it {max_iters} tol {tol}"
                    );
                    assert_eq!(
                        got.iterations, want.iterations,
                        "d {d} it {max_iters} tol {tol}"
                    );
                    assert_eq!(got.residual.to_bits(), want.residual.to_bits());
                    assert_eq!(got.converged, want.converged);
                }
            }
        }
    }

    /// Every iteration counts against the budget, across restarts; a converged solve reports the
    /// true residual, and the iteration count of an exactly solvable d x d system is at most d.
    #[test]
    fn iteration_budget_and_counts() {
        let a = [4.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 2.0];
        let b = [1.0, 2.0, 3.0];
        for it in 0..7u64 {
            let s = gmres(&a, &b, it, 1e-300).unwrap();
            assert_eq!(s.iterations, it, "budget {it}");
            assert_eq!(s.converged, s.residual <= 1e-300);
        }
        let s = gmres(&a, &b, 100, 1e-10).unwrap();
        assert!(s.converged && s.iterations <= 3 && s.iterations >= 1);
        let r: Vec<f64> = (0..3)
            .map(|i| b[i] - dot(&a[i * 3..i * 3 + 3], &s.x))
            .collect();
        assert_eq!(s.residual, dot(&r, &r).sqrt() / dot(&b, &b).sqrt());
        // a start that already meets the tolerance spends nothing: x = 0 when tol >= 1
        let s = gmres(&a, &b, 100, 1.0).unwrap();
        assert_eq!(
            (s.iterations, s.x.clone(), s.residual),
            (0, vec![0.0; 3], 1.0)
        );
        assert!(s.converged);
        // identity: one iteration, exact
        let s = gmres(&[1.0, 0.0, 0.0, 1.0], &[3.0, -4.0], 10, 1e-15).unwrap();
        assert_eq!(
            (s.iterations, s.x.clone(), s.residual),
            (1, vec![3.0, -4.0], 0.0)
        );
        // A v = 0 for the first Krylov vector (b in the null space): no progress is possible
        let s = gmres(&[0.0, 0.0, 0.0, 1.0], &[1.0, 0.0], 10, 1e-12).unwrap();
        assert_eq!(s.x, vec![0.0, 0.0]);
        assert_eq!(s.residual, 1.0);
        assert!(!s.converged);
        assert!(s.iterations <= 2);
    }

    #[test]
    fn small_systems() {
        let a = [4.0, 1.0, 0.0, 1.0, 3.0, 1.0, 0.0, 1.0, 2.0];
        let x_true = [1.0, -2.0, 0.5];
        let b = matvec(&a, &x_true);
        let s = gmres(&a, &b, 100, 1e-12).unwrap();
        assert!(s.converged);
        assert!(s.iterations <= 3);
        for (x, t) in s.x.iter().zip(x_true) {
            assert!((x - t).abs() < 1e-10);
        }
        let lu = lu_solve(&a, &b).unwrap();
        for (x, t) in lu.iter().zip(x_true) {
            assert!((x - t).abs() < 1e-12);
        }
    }

    #[test]
    fn nonsymmetric_with_restarts() {
        // a 6x6 nonnormal matrix; GMRES(6) converges within the first cycle in exact arithmetic
        let d = 6;
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            a[i * d + i] = 1.0 + i as f64;
            if i + 1 < d {
                a[i * d + i + 1] = 3.0;
            }
            a[i * d] += 0.1 * i as f64;
        }
        let b: Vec<f64> = (0..d).map(|i| (i as f64).sin() + 1.0).collect();
        let s = gmres(&a, &b, 50, 1e-13).unwrap();
        assert!(s.converged, "{s:?}");
        let lu = lu_solve(&a, &b).unwrap();
        for (x, t) in s.x.iter().zip(&lu) {
            assert!((x - t).abs() < 1e-9 * (1.0 + t.abs()));
        }
        // an iteration cap below what is needed: not converged, honest residual
        let capped = gmres(&a, &b, 2, 1e-13).unwrap();
        assert_eq!(capped.iterations, 2);
        assert!(!capped.converged);
        assert!(capped.residual > 1e-13);
    }

    #[test]
    fn zero_rhs_and_breakdown() {
        let a = [2.0, 0.0, 0.0, 3.0];
        let s = gmres(&a, &[0.0, 0.0], 10, 1e-10).unwrap();
        assert_eq!(
            s,
            SolveOut {
                x: vec![0.0, 0.0],
                converged: true,
                iterations: 0,
                residual: 0.0
            }
        );
        // b an eigenvector: breakdown after one step with the exact solution
        let s = gmres(&a, &[4.0, 0.0], 10, 1e-14).unwrap();
        assert_eq!(s.iterations, 1);
        assert_eq!(s.x, vec![2.0, 0.0]);
        assert!(s.converged);
    }

    #[test]
    fn singular_systems() {
        let a = [1.0, 2.0, 2.0, 4.0];
        assert_eq!(
            lu_solve(&a, &[1.0, 0.0]).unwrap_err(),
            CoreError::Singular { arg: "a" }
        );
        let s = gmres(&a, &[1.0, 0.0], 20, 1e-12).unwrap();
        assert!(!s.converged);
        assert!(s.residual.is_finite());
        let z = [0.0; 4];
        let s = gmres(&z, &[1.0, 1.0], 20, 1e-12).unwrap();
        assert!(!s.converged);
        assert_eq!(s.residual, 1.0);
    }

    #[test]
    fn input_errors() {
        assert_eq!(
            gmres(&[1.0, 2.0], &[1.0, 2.0], 5, 1e-8).unwrap_err().arg(),
            "a"
        );
        assert_eq!(gmres(&[1.0], &[f64::NAN], 5, 1e-8).unwrap_err().arg(), "b");
        assert_eq!(gmres(&[1.0], &[1.0], 5, -1.0).unwrap_err().arg(), "tol");
    }
    /// A diagonally dominant d x d system (2 on the diagonal, small off it) and b = (1, 2, .., d).
    fn dominant_system(d: usize) -> (Vec<f64>, Vec<f64>) {
        let a = (0..d * d)
            .map(|i| {
                if i % (d + 1) == 0 {
                    2.0
                } else {
                    ((i * 7 % 11) as f64 - 5.0) / 50.0
                }
            })
            .collect();
        (a, (0..d).map(|i| 1.0 + i as f64).collect())
    }
    /// `gmres_bytes` against what `gmres` really holds at once (a counting allocator).
    #[test]
    fn gmres_bytes_bounds_what_the_solver_holds() {
        for d in [1usize, 2, 5, 17, 60] {
            let (a, b) = dominant_system(d);
            let (est, out, peak) = crate::mem::counting::measure(
                || gmres_bytes(d),
                || gmres(&a, &b, 500, 1e-12).unwrap(),
            );
            crate::mem::counting::check_estimate(&format!("gmres d {d}"), est, peak);
            drop(out);
        }
    }

    /// The work GMRES ticks is its floating-point operations (the latency contract of
    /// `crate::interrupt`). Inner iteration k of a cycle: `w = A v_k` (d^2 multiply-adds), the
    /// modified Gram-Schmidt against v_0..v_k (k + 1 dots and axpys, 4 (k + 1) d flops), `||w||`
    /// and `v_{k+1} = w / ||w||` (3d), the k previous rotations on column k (6 each) and the new
    /// one (~13, a square root counted as one). Each cycle also forms the residual (2 d^2 + 4d)
    /// and ends with a back substitution and `x += V y` (~k^2 + 2dk). Sizes: d = 200 for 8
    /// iterations (the product dominates), d = 48 for three whole cycles (the product and the
    /// orthogonalisation are even), d = 8 for 200 cycles (the vector and rotation terms count more).
    /// The last iterations' work, below one tick, is not ticked (under 5% here), and iterations
    /// are batched: one tick per TICK_UNITS of work.
    #[test]
    fn ticked_work_counts_the_flops() {
        use crate::interrupt::tally;
        for (d, iters) in [(200usize, 8u64), (48, 144), (8, 1600)] {
            // diagonally dominant with irregular off-diagonal values: no exact convergence or
            // breakdown with tol = 0, so every cycle but the last runs its d iterations
            let a: Vec<f64> = (0..d * d)
                .map(|i| {
                    if i % (d + 1) == 0 {
                        3.0 + (i as f64).sin()
                    } else {
                        ((i * 7 % 13) as f64 - 6.0) / (9.0 * d as f64)
                    }
                })
                .collect();
            let b: Vec<f64> = (0..d).map(|i| 1.0 + (i as f64).cos()).collect();
            let (out, t) = tally::measure(|| gmres(&a, &b, iters, 0.0).unwrap());
            assert_eq!(out.iterations, iters);
            let df = d as f64;
            let mut flops = 0.0;
            for it in 0..iters {
                let k = (it % d as u64) as f64;
                flops += 2.0 * df * df + 4.0 * (k + 1.0) * df + 3.0 * df + 6.0 * k + 13.0;
                if k == 0.0 {
                    // the cycle's residual, back substitution and update (kc iterations)
                    let kc = (iters - it).min(d as u64) as f64;
                    flops += 2.0 * df * df + 4.0 * df + kc * kc + 2.0 * df * kc;
                }
            }
            let what = format!("gmres d {d} iterations {iters}");
            tally::check_work(&what, t, flops);
            tally::check_batched(&what, t);
        }
    }

    /// `lu_solve_bytes` against what `lu_solve` really holds at once (a counting allocator), and
    /// both estimates against the layout they document, at sizes where the vector terms matter
    /// (d = 1, 2) and where the matrices dominate. GMRES holds x (d), and in one scratch the
    /// residual, w and y (d each), the Krylov basis ((d + 1) d), the Hessenberg matrix
    /// ((d + 1) d), the rotations (2d) and the rhs g (d + 1): gmres_bytes may add a margin of at
    /// most one vector and 8 values (the counting test above allows 25% + 48 KiB, too loose to see
    /// a term of d values). lu_solve's layout is the one its docs list, d^2 + 5d values.
    #[test]
    fn lu_solve_bytes_bounds_what_it_holds() {
        for d in [1usize, 2, 5, 30, 100] {
            let (a, b) = dominant_system(d);
            let (est, out, peak) =
                crate::mem::counting::measure(|| lu_solve_bytes(d), || lu_solve(&a, &b).unwrap());
            crate::mem::counting::check_estimate(&format!("lu_solve d {d}"), est, peak);
            drop(out);
        }
        for d in [1usize, 2, 3, 100, 1 << 20] {
            let dd = d as u128;
            let gmres_layout = 8 * (dd + (3 * dd + 2 * (dd + 1) * dd + 2 * dd + dd + 1));
            let est = gmres_bytes(d);
            assert!(
                est >= gmres_layout && est <= gmres_layout + 8 * (dd + 8),
                "gmres d {d}: estimate {est}, layout {gmres_layout}"
            );
            assert_eq!(
                lu_solve_bytes(d),
                8 * (dd * dd + dd + 2 * dd + dd + dd),
                "lu d {d}"
            );
        }
    }
}
