//! One environment step of the LQG problem (MODEL.md sections 2-3): the action from the mixture,
//! the log densities and ratio, the next state and the reward; on slices ([`step`]) and, for
//! n, m <= 4, on fixed-size arrays ([`FixedModel`], selected by [`dispatch_dims`](crate::dispatch_dims)).
//!
//! Every function here performs its floating-point operations in exactly the order MODEL.md writes
//! them: sums run left to right from `0.0`, products are never fused, and the transcendental functions
//! are the C library's (`f64::ln`, `ln_1p`, `exp`, `sin`, `cos` call glibc, as Python's `math` does).

use crate::density::{clip_rho, select, RatioConsts};
use crate::linalg::{dot, dot_fixed, matvec, matvec_fixed, quad_form, quad_form_fixed, to_rows};
use crate::problem::Problem;

/// Scratch buffers of one environment step (allocated once per trajectory or block).
#[derive(Debug, Clone)]
pub struct StepScratch {
    pub kpi_s: Vec<f64>,
    pub kmu_s: Vec<f64>,
    pub a: Vec<f64>,
    pub dpi: Vec<f64>,
    pub s_next: Vec<f64>,
}

impl StepScratch {
    pub fn new(n: usize, m: usize) -> Self {
        StepScratch {
            kpi_s: vec![0.0; m],
            kmu_s: vec![0.0; m],
            a: vec![0.0; m],
            dpi: vec![0.0; m],
            s_next: vec![0.0; n],
        }
    }
}

/// What one step returns besides the buffers.
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    pub reward: f64,
    pub rho: f64,
    pub rho_bar: f64,
}

/// One transition from `s` (section 2): mixture uniform `u`, action normals `za` (m), environment
/// normals `ze` (n). Fills `sc.a`, `sc.dpi`, `sc.s_next`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn step(
    p: &Problem,
    rc: &RatioConsts,
    k_pi: &[f64],
    k_mu: &[f64],
    s: &[f64],
    u: f64,
    za: &[f64],
    ze: &[f64],
    sc: &mut StepScratch,
) -> StepResult {
    let n = p.n;
    let m = p.m;
    matvec(k_pi, s, &mut sc.kpi_s);
    matvec(k_mu, s, &mut sc.kmu_s);
    if u < rc.p {
        for k in 0..m {
            sc.a[k] = sc.kpi_s[k] + rc.sigma_pi * za[k];
        }
    } else {
        for k in 0..m {
            sc.a[k] = sc.kmu_s[k] + rc.sigma_mu * za[k];
        }
    }
    let mut qpi = 0.0;
    let mut qmu = 0.0;
    for k in 0..m {
        let dp = sc.a[k] - sc.kpi_s[k];
        sc.dpi[k] = dp;
        qpi += dp * dp;
        let dm = sc.a[k] - sc.kmu_s[k];
        qmu += dm * dm;
    }
    let lpi = rc.log_pi(qpi);
    let lmu = rc.log_mu(qmu);
    let rho = rc.log_ratio(lpi, lmu).exp();
    let rho_bar = clip_rho(rho, p.rho_clip);
    // environment: x_i + y_i, then + sigma_eps * z_i
    for i in 0..n {
        let x = dot(&p.a[i * n..(i + 1) * n], s);
        let y = dot(&p.b[i * m..(i + 1) * m], &sc.a);
        sc.s_next[i] = (x + y) + p.sigma_eps * ze[i];
    }
    let sqs = quad_form(s, p.q);
    let ara = quad_form(&sc.a, p.r);
    let reward = -p.reward_scale * (sqs + ara);
    StepResult {
        reward,
        rho,
        rho_bar,
    }
}

// ---------------------------------------------------------------------------------------------------
// Fixed-size kernels: the same operations in the same order as [`step`] above, on stack
// arrays whose sizes are compile-time constants (the hot loops for n, m <= 4 are fully unrolled and
// free of bounds checks). `step_fixed_equals_step` checks the two agree bit for bit.

/// The problem and a gain pair as fixed-size arrays (n = N, m = M).
#[derive(Debug, Clone, Copy)]
pub struct FixedModel<const N: usize, const M: usize> {
    pub a: [[f64; N]; N],
    pub b: [[f64; M]; N],
    pub q: [[f64; N]; N],
    pub r: [[f64; M]; M],
    pub k_pi: [[f64; N]; M],
    pub k_mu: [[f64; N]; M],
    pub sigma_eps: f64,
    pub reward_scale: f64,
    pub gamma: f64,
    pub rho_clip: f64,
    pub rc: RatioConsts,
}

/// One fixed-size transition: what `step` computes.
#[derive(Debug, Clone, Copy)]
pub struct FixedStep<const N: usize, const M: usize> {
    pub a: [f64; M],
    pub dpi: [f64; M],
    pub s_next: [f64; N],
    pub reward: f64,
    pub rho: f64,
    pub rho_bar: f64,
}

impl<const N: usize, const M: usize> FixedModel<N, M> {
    /// Copies a validated problem (p.n == N, p.m == M) and gains into fixed-size arrays.
    pub fn new(p: &Problem, k_pi: &[f64], k_mu: &[f64]) -> Self {
        debug_assert!(p.n == N && p.m == M);
        FixedModel {
            a: to_rows(p.a),
            b: to_rows(p.b),
            q: to_rows(p.q),
            r: to_rows(p.r),
            k_pi: to_rows(k_pi),
            k_mu: to_rows(k_mu),
            sigma_eps: p.sigma_eps,
            reward_scale: p.reward_scale,
            gamma: p.gamma,
            rho_clip: p.rho_clip,
            rc: p.consts(),
        }
    }

    /// [`step`] for fixed sizes.
    #[inline(always)]
    pub fn step(&self, s: &[f64; N], u: f64, za: &[f64; M], ze: &[f64; N]) -> FixedStep<N, M> {
        let dy = self.dynamics(s, u, za, ze);
        let (rho, rho_bar) = self.ratio(dy.lpi, dy.lmu);
        FixedStep {
            a: dy.a,
            dpi: dy.dpi,
            s_next: dy.s_next,
            reward: dy.reward,
            rho,
            rho_bar,
        }
    }

    /// The part of [`step`](Self::step) without transcendental functions: the action, the log
    /// densities, the next state and the reward.
    #[inline(always)]
    pub fn dynamics(
        &self,
        s: &[f64; N],
        u: f64,
        za: &[f64; M],
        ze: &[f64; N],
    ) -> FixedDynamics<N, M> {
        let rc = &self.rc;
        let kpi_s = matvec_fixed(&self.k_pi, s);
        let kmu_s = matvec_fixed(&self.k_mu, s);
        // both candidate actions, then a branch-free select (u < p is a coin flip per step)
        let use_pi = u < rc.p;
        let mut a = [0.0; M];
        for k in 0..M {
            let a_pi = kpi_s[k] + rc.sigma_pi * za[k];
            let a_mu = kmu_s[k] + rc.sigma_mu * za[k];
            a[k] = select(use_pi, a_pi, a_mu);
        }
        let mut dpi = [0.0; M];
        let mut qpi = 0.0;
        let mut qmu = 0.0;
        for k in 0..M {
            let dp = a[k] - kpi_s[k];
            dpi[k] = dp;
            qpi += dp * dp;
            let dm = a[k] - kmu_s[k];
            qmu += dm * dm;
        }
        let lpi = rc.log_pi(qpi);
        let lmu = rc.log_mu(qmu);
        let mut s_next = [0.0; N];
        for i in 0..N {
            let x = dot_fixed(&self.a[i], s);
            let y = dot_fixed(&self.b[i], &a);
            s_next[i] = (x + y) + self.sigma_eps * ze[i];
        }
        let sqs = quad_form_fixed(s, &self.q);
        let ara = quad_form_fixed(&a, &self.r);
        let reward = -self.reward_scale * (sqs + ara);
        FixedDynamics {
            a,
            dpi,
            lpi,
            lmu,
            s_next,
            reward,
        }
    }

    /// `(rho, rho_bar)` from the log densities.
    #[inline(always)]
    pub fn ratio(&self, lpi: f64, lmu: f64) -> (f64, f64) {
        let rho = self.rc.log_ratio(lpi, lmu).exp();
        (rho, clip_rho(rho, self.rho_clip))
    }
}

/// [`FixedModel::dynamics`]'s result.
#[derive(Debug, Clone, Copy)]
pub struct FixedDynamics<const N: usize, const M: usize> {
    pub a: [f64; M],
    pub dpi: [f64; M],
    pub lpi: f64,
    pub lmu: f64,
    pub s_next: [f64; N],
    pub reward: f64,
}

/// Calls `$body` with the const sizes `N`, `M`, `D` (= feature_dim(N)) bound for `n, m` in 1..=4;
/// `$fallback` otherwise.
#[macro_export]
macro_rules! dispatch_dims {
    ($n:expr, $m:expr, |$N:ident, $M:ident, $D:ident| $body:expr, $fallback:expr) => {{
        macro_rules! __arm {
            ($nn:literal, $mm:literal, $dd:literal) => {{
                #[allow(non_upper_case_globals, dead_code)]
                {
                    const $N: usize = $nn;
                    const $M: usize = $mm;
                    const $D: usize = $dd;
                    $body
                }
            }};
        }
        match ($n, $m) {
            (1, 1) => __arm!(1, 1, 3),
            (1, 2) => __arm!(1, 2, 3),
            (1, 3) => __arm!(1, 3, 3),
            (1, 4) => __arm!(1, 4, 3),
            (2, 1) => __arm!(2, 1, 6),
            (2, 2) => __arm!(2, 2, 6),
            (2, 3) => __arm!(2, 3, 6),
            (2, 4) => __arm!(2, 4, 6),
            (3, 1) => __arm!(3, 1, 10),
            (3, 2) => __arm!(3, 2, 10),
            (3, 3) => __arm!(3, 3, 10),
            (3, 4) => __arm!(3, 4, 10),
            (4, 1) => __arm!(4, 1, 15),
            (4, 2) => __arm!(4, 2, 15),
            (4, 3) => __arm!(4, 3, 15),
            (4, 4) => __arm!(4, 4, 15),
            _ => $fallback,
        }
    }};
}

/// Rough operations of one environment step in the dynamic kernels (the tests of the rollout's and the
/// transitions' interrupt work count against it): the two actions `K s` (4mn) and their noise (8m),
/// the mixture's pick and ratio (4 + 15), the next state and its noise (2n^2 + 2nm + 2n), the reward's
/// state and action quadratic forms (2n^2 + 2n, 2m^2 + 2m) and its scale (3).
#[cfg(test)]
pub(crate) fn step_flops(n: f64, m: f64) -> f64 {
    4.0 * m * n
        + 8.0 * m
        + 4.0
        + 15.0
        + (2.0 * n * n + 2.0 * n * m + 2.0 * n)
        + (2.0 * n * n + 2.0 * n)
        + (2.0 * m * m + 2.0 * m)
        + 3.0
}

/// (n, m) sizes, within [`dispatch_dims`]'s 1..=4, at which the kernels' tests compare the
/// fixed-size kernels with the dynamic one: both edges, m > n, n > m and the largest.
#[cfg(test)]
pub(crate) const FIXED_SIZES: [(usize, usize); 5] = [(1, 1), (2, 1), (1, 3), (3, 2), (4, 4)];

/// The k x k matrix `v I`, row-major (the kernels' tests' dynamics, costs and noise).
#[cfg(test)]
pub(crate) fn diag(k: usize, v: f64) -> Vec<f64> {
    (0..k * k)
        .map(|i| if i % (k + 1) == 0 { v } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{features, features_fixed};

    /// One environment step by hand (n = m = 1, the mixture picks pi): a = K_pi s + sigma_pi z,
    /// s' = (A s + B a) + sigma_eps z_e, r = -c_r (s Q s + a R a), the densities' ratio.
    #[test]
    fn step_by_hand() {
        let p = Problem {
            n: 1,
            m: 1,
            a: &[0.5],
            b: &[2.0],
            q: &[3.0],
            r: &[0.25],
            sigma_eps: 0.5,
            sigma_0: 1.0,
            reward_scale: 2.0,
            sigma_pi: 0.5,
            sigma_mu: 1.0,
            p_mix: 0.5,
            gamma: 0.9,
            rho_clip: 1.5,
            seed: 0,
        };
        let rc = p.consts();
        let mut sc = StepScratch::new(1, 1);
        // u = 0.25 < p: pi; s = 2, K_pi = 1, z = 2 -> a = 2 + 0.5 * 2 = 3; dpi = 1, dmu = 3 - (-1) = 4
        let st = step(
            &p,
            &rc,
            &[1.0],
            &[-0.5],
            &[2.0],
            0.25,
            &[2.0],
            &[-1.0],
            &mut sc,
        );
        assert_eq!(sc.a, vec![3.0]);
        assert_eq!(sc.dpi, vec![1.0]);
        // s' = (0.5 * 2 + 2 * 3) + 0.5 * -1 = 6.5; r = -2 * (2*3*2 + 3*0.25*3) = -2 * 14.25
        assert_eq!(sc.s_next, vec![6.5]);
        assert_eq!(st.reward, -28.5);
        let lpi = -0.5 * 1.0 / 0.25 - 0.5f64.ln();
        let lmu: f64 = -0.5 * 16.0 / 1.0 - 0.0;
        let ratio = lpi.exp() / (0.5 * lmu.exp() + 0.5 * lpi.exp());
        assert!((st.rho - ratio).abs() < 1e-14 * ratio);
        assert!(st.rho > 1.5 && st.rho <= 2.0);
        assert_eq!(st.rho_bar, 1.5);
        // u = 0.5 is not < p: mu; a = -0.5 * 2 + 1 * 2 = 1
        let st2 = step(
            &p,
            &rc,
            &[1.0],
            &[-0.5],
            &[2.0],
            0.5,
            &[2.0],
            &[-1.0],
            &mut sc,
        );
        assert_eq!(sc.a, vec![1.0]);
        assert_eq!(sc.dpi, vec![-1.0]);
        assert_eq!(sc.s_next, vec![2.5]);
        assert_eq!(st2.reward, -2.0 * (12.0 + 0.25));
        let fm = FixedModel::<1, 1>::new(&p, &[1.0], &[-0.5]);
        let fx = fm.step(&[2.0], 0.25, &[2.0], &[-1.0]);
        assert_eq!(
            (fx.a, fx.dpi, fx.s_next, fx.reward),
            ([3.0], [1.0], [6.5], -28.5)
        );
        assert_eq!(fx.rho.to_bits(), st.rho.to_bits());
        assert_eq!(fx.rho_bar, 1.5);
    }

    #[test]
    fn step_fixed_equals_step() {
        let a = [0.9, 0.1, -0.2, 0.7];
        let b = [0.3, -1.0, 0.5, 0.25, 2.0, -0.5];
        let q = [1.0, 0.2, 0.2, 2.0];
        let r = [0.1, 0.0, 0.01, 0.0, 0.2, 0.0, 0.01, 0.0, 0.3];
        let kp = [0.1, -0.2, 0.3, 0.05, -0.4, 0.2];
        let km = [0.0, -0.1, 0.2, 0.1, -0.3, 0.25];
        for (p_mix, clip) in [(0.0, f64::INFINITY), (0.3, 1.5), (1.0, 2.0)] {
            let p = Problem {
                n: 2,
                m: 3,
                a: &a,
                b: &b,
                q: &q,
                r: &r,
                sigma_eps: 0.1,
                sigma_0: 1.0,
                reward_scale: 0.5,
                sigma_pi: 0.3,
                sigma_mu: 0.7,
                p_mix,
                gamma: 0.9,
                rho_clip: clip,
                seed: 0,
            };
            let rc = p.consts();
            let fm = FixedModel::<2, 3>::new(&p, &kp, &km);
            let mut sc = StepScratch::new(2, 3);
            let zs = crate::philox::normals(crate::philox::Stream::new(1, 2, 3, 4), 0, 500);
            for t in 0..100 {
                let s = [zs[5 * t] * 2.0, zs[5 * t + 1]];
                let za = [zs[5 * t + 2], zs[5 * t + 3], zs[5 * t + 4]];
                let ze = [zs[5 * t + 1], -zs[5 * t + 3]];
                let u = (t as f64) / 100.0;
                let st = step(&p, &rc, &kp, &km, &s, u, &za, &ze, &mut sc);
                let fx = fm.step(&s, u, &za, &ze);
                assert_eq!(st.reward.to_bits(), fx.reward.to_bits());
                assert_eq!(st.rho.to_bits(), fx.rho.to_bits());
                assert_eq!(st.rho_bar.to_bits(), fx.rho_bar.to_bits());
                assert_eq!(sc.a, fx.a.to_vec());
                assert_eq!(sc.dpi, fx.dpi.to_vec());
                assert_eq!(sc.s_next, fx.s_next.to_vec());
                let mut phi = vec![0.0; 6];
                features(&s, &mut phi);
                assert_eq!(phi, features_fixed::<2, 6>(&s).to_vec());
            }
        }
    }
}
