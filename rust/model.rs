//! Shared pieces of MODEL.md sections 2 and 3: the problem, features, log densities, the importance
//! ratio and one environment step.
//!
//! Every function here performs its floating-point operations in exactly the order MODEL.md writes
//! them: sums run left to right from `0.0`, products are never fused, and the transcendental functions
//! are the C library's (`f64::ln`, `ln_1p`, `exp`, `sin`, `cos` call glibc, as Python's `math` does).

use crate::error::{CoreError, CoreResult};

/// Samples per block of a block sum (MODEL.md 0.2).
pub const BLOCK: usize = 1024;

/// Feature dimension `d = n(n+1)/2 + n + 1`.
#[inline]
pub fn feature_dim(n: usize) -> usize {
    n * (n + 1) / 2 + n + 1
}

/// The LQG problem and the policy pair's noise levels (backend.Problem without the gains).
#[derive(Debug, Clone, Copy)]
pub struct Problem<'a> {
    pub n: usize,
    pub m: usize,
    /// (n, n) row-major
    pub a: &'a [f64],
    /// (n, m)
    pub b: &'a [f64],
    /// (n, n)
    pub q: &'a [f64],
    /// (m, m)
    pub r: &'a [f64],
    pub sigma_eps: f64,
    pub sigma_0: f64,
    pub reward_scale: f64,
    pub sigma_pi: f64,
    pub sigma_mu: f64,
    pub p_mix: f64,
    pub gamma: f64,
    /// +inf when clipping is disabled
    pub rho_clip: f64,
    pub seed: u64,
}

fn check_len(arg: &'static str, v: &[f64], shape: &[usize]) -> CoreResult<()> {
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

impl<'a> Problem<'a> {
    /// Checks sizes and domains: finite matrices, `sigma_pi, sigma_mu > 0`, `sigma_eps, sigma_0 >= 0`,
    /// `p_mix` in [0, 1], finite `gamma` and `reward_scale`, `rho_clip > 0` (may be +inf).
    pub fn validate(&self) -> CoreResult<()> {
        if self.n == 0 {
            return Err(CoreError::invalid("a", "state dimension n must be >= 1"));
        }
        if self.m == 0 {
            return Err(CoreError::invalid("b", "action dimension m must be >= 1"));
        }
        check_len("a", self.a, &[self.n, self.n])?;
        check_len("b", self.b, &[self.n, self.m])?;
        check_len("q", self.q, &[self.n, self.n])?;
        check_len("r", self.r, &[self.m, self.m])?;
        check_finite("a", self.a)?;
        check_finite("b", self.b)?;
        check_finite("q", self.q)?;
        check_finite("r", self.r)?;
        positive("sigma_pi", self.sigma_pi)?;
        positive("sigma_mu", self.sigma_mu)?;
        nonnegative("sigma_eps", self.sigma_eps)?;
        nonnegative("sigma_0", self.sigma_0)?;
        check_finite_scalar("reward_scale", self.reward_scale)?;
        check_finite_scalar("gamma", self.gamma)?;
        check_finite_scalar("p_mix", self.p_mix)?;
        if !(0.0..=1.0).contains(&self.p_mix) {
            return Err(CoreError::invalid(
                "p_mix",
                format!("must be in [0, 1], got {}", self.p_mix),
            ));
        }
        if self.rho_clip.is_nan() || self.rho_clip <= 0.0 {
            return Err(CoreError::invalid(
                "rho_clip",
                format!("must be > 0 (inf disables), got {}", self.rho_clip),
            ));
        }
        Ok(())
    }

    /// The feature dimension.
    pub fn d(&self) -> usize {
        feature_dim(self.n)
    }

    /// Per-run constants of the ratio computation.
    pub fn consts(&self) -> RatioConsts {
        RatioConsts::new(self.m, self.sigma_pi, self.sigma_mu, self.p_mix)
    }
}

fn positive(arg: &'static str, x: f64) -> CoreResult<()> {
    check_finite_scalar(arg, x)?;
    if x > 0.0 {
        Ok(())
    } else {
        Err(CoreError::invalid(arg, format!("must be > 0, got {x}")))
    }
}

fn nonnegative(arg: &'static str, x: f64) -> CoreResult<()> {
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

/// Constants of section 2's log densities and mixture, computed once (each is the same value the
/// per-transition formula would compute).
#[derive(Debug, Clone, Copy)]
pub struct RatioConsts {
    pub sigma_pi: f64,
    pub sigma_mu: f64,
    /// sigma_pi * sigma_pi
    pub var_pi: f64,
    /// sigma_mu * sigma_mu
    pub var_mu: f64,
    /// m * log(sigma_pi)
    pub mlog_pi: f64,
    /// m * log(sigma_mu)
    pub mlog_mu: f64,
    pub p: f64,
    /// log1p(-p)
    pub log1m_p: f64,
    /// log(p)
    pub log_p: f64,
}

impl RatioConsts {
    pub fn new(m: usize, sigma_pi: f64, sigma_mu: f64, p: f64) -> Self {
        let mf = m as f64;
        RatioConsts {
            sigma_pi,
            sigma_mu,
            var_pi: sigma_pi * sigma_pi,
            var_mu: sigma_mu * sigma_mu,
            mlog_pi: mf * sigma_pi.ln(),
            mlog_mu: mf * sigma_mu.ln(),
            p,
            log1m_p: (-p).ln_1p(),
            log_p: p.ln(),
        }
    }

    /// `lpi = -0.5*qpi/(sigma_pi*sigma_pi) - m*log(sigma_pi)`.
    #[inline(always)]
    pub fn log_pi(&self, qpi: f64) -> f64 {
        -0.5 * qpi / self.var_pi - self.mlog_pi
    }

    /// `lmu` likewise.
    #[inline(always)]
    pub fn log_mu(&self, qmu: f64) -> f64 {
        -0.5 * qmu / self.var_mu - self.mlog_mu
    }

    /// `lr = log(pi / b)` for the mixture `b = (1-p) mu + p pi` (section 2).
    #[inline(always)]
    pub fn log_ratio(&self, lpi: f64, lmu: f64) -> f64 {
        let p = self.p;
        if p == 0.0 {
            lpi - lmu
        } else if p == 1.0 {
            0.0
        } else {
            let x = lmu + self.log1m_p;
            let y = lpi + self.log_p;
            if x.is_finite() && y.is_finite() {
                // Which term is the larger varies from sample to sample: select without a branch
                // (a mispredicted branch would also discard the libm calls in flight).
                // M = max(x, y) (Python's: x unless y > x) and the other term `lo`; then
                // x - M and y - M are `lo - M` and +-0 in some order, exp(+-0) = 1 exactly, and the
                // two-term sum is commutative, so `(exp(x-M) + exp(y-M))` = `exp(lo-M) + 1.0`.
                let y_gt = y > x;
                let mx = select(y_gt, y, x);
                let lo = select(y_gt, x, y);
                let lb = mx + (exp_or_one(lo - mx) + 1.0).ln();
                lpi - lb
            } else {
                // inf/NaN (a diverged run): the formula as written
                let mx = if y > x { y } else { x };
                let lb = mx + (exp_or_one(x - mx) + exp_or_one(y - mx)).ln();
                lpi - lb
            }
        }
    }
}

/// `if c { a } else { b }` as a bitwise blend, never a branch.
#[inline(always)]
pub fn select(c: bool, a: f64, b: f64) -> f64 {
    let mask = (c as u64).wrapping_neg();
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// `exp(t)`, skipping the call when `t` is +-0 (one of the two terms of the mixture's log-sum-exp
/// always is): C's `exp(+-0)` is exactly 1, so the result is the same bits.
#[inline(always)]
fn exp_or_one(t: f64) -> f64 {
    if t == 0.0 {
        1.0
    } else {
        t.exp()
    }
}

/// Python's `min(rho, clip)`: `clip` if `clip < rho`, else `rho` (NaN stays NaN).
#[inline(always)]
pub fn clip_rho(rho: f64, clip: f64) -> f64 {
    if clip < rho {
        clip
    } else {
        rho
    }
}

/// `x . y`, left to right from 0.0.
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

/// `min(floor(u * N), N - 1)`: the state-pool pick of section 4.
#[inline(always)]
pub fn pick(u: f64, pool_len: usize) -> usize {
    let idx = (u * pool_len as f64).floor() as usize;
    idx.min(pool_len - 1)
}

// ---------------------------------------------------------------------------------------------------
// Fixed-size kernels: the same operations in the same order as `features` / `step` above, on stack
// arrays whose sizes are compile-time constants (the hot loops for n, m <= 4 are fully unrolled and
// free of bounds checks). `step_fixed_equals_step` checks the two agree bit for bit.

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

/// `x . y` for fixed-size arrays, left to right from 0.0.
#[inline(always)]
pub fn dot_fixed<const K: usize>(x: &[f64; K], y: &[f64; K]) -> f64 {
    let mut acc = 0.0;
    for i in 0..K {
        acc += x[i] * y[i];
    }
    acc
}

#[inline(always)]
pub fn matvec_fixed<const R: usize, const C: usize>(k: &[[f64; C]; R], s: &[f64; C]) -> [f64; R] {
    let mut out = [0.0; R];
    for i in 0..R {
        out[i] = dot_fixed(&k[i], s);
    }
    out
}

#[inline(always)]
fn quad_form_fixed<const K: usize>(x: &[f64; K], q: &[[f64; K]; K]) -> f64 {
    let mut acc = 0.0;
    for i in 0..K {
        for j in 0..K {
            acc += (x[i] * q[i][j]) * x[j];
        }
    }
    acc
}

pub fn to_rows<const R: usize, const C: usize>(v: &[f64]) -> [[f64; C]; R] {
    let mut out = [[0.0; C]; R];
    for i in 0..R {
        out[i].copy_from_slice(&v[i * C..(i + 1) * C]);
    }
    out
}

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
    fn ratio_limits() {
        let rc0 = RatioConsts::new(1, 1.0, 2.0, 0.0);
        assert_eq!(rc0.log_ratio(-1.0, -3.0), 2.0);
        let rc1 = RatioConsts::new(1, 1.0, 2.0, 1.0);
        assert_eq!(rc1.log_ratio(-1.0, -3.0), 0.0);
        // mixture ratio is bounded by 1/p
        let rc = RatioConsts::new(2, 1.0, 0.1, 0.25);
        for lpi in [-50.0, -1.0, 0.0, 3.0] {
            for lmu in [-900.0, -5.0, 0.0, 2.0] {
                let rho = rc.log_ratio(lpi, lmu).exp();
                assert!(rho <= 4.0 * (1.0 + 1e-15), "{rho}");
            }
        }
    }

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
    fn quad_form_order() {
        let q = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quad_form(&[1.0, 1.0], &q), 10.0);
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

    /// Section 2's log densities, by hand: `lpi = -0.5*qpi/(sigma_pi*sigma_pi) - m*log(sigma_pi)`.
    #[test]
    fn log_densities_by_hand() {
        let rc = RatioConsts::new(3, 0.5, 2.0, 0.25);
        assert_eq!(rc.var_pi, 0.25);
        assert_eq!(rc.var_mu, 4.0);
        assert_eq!(rc.mlog_pi, 3.0 * 0.5f64.ln());
        assert_eq!(rc.mlog_mu, 3.0 * 2.0f64.ln());
        assert_eq!(rc.log1m_p, 0.75f64.ln());
        assert_eq!(rc.log_p, 0.25f64.ln());
        // q = 3: -0.5 * 3 / 0.25 = -6; - 3 ln 0.5 = +3 ln 2
        assert_eq!(rc.log_pi(3.0), -6.0 - 3.0 * 0.5f64.ln());
        assert_eq!(rc.log_mu(3.0), -0.375 - 3.0 * 2.0f64.ln());
        assert_eq!(rc.log_pi(0.0), -(3.0 * 0.5f64.ln()));
        assert!((rc.log_pi(3.0) - (-6.0 + 3.0 * std::f64::consts::LN_2)).abs() < 1e-14);
    }

    /// `log_ratio` is section 2's formula as written (x = lmu + log1p(-p), y = lpi + log(p),
    /// M = max(x, y), lb = M + log(exp(x - M) + exp(y - M)), lr = lpi - lb) to the bit, including
    /// inf/NaN inputs, and `exp(lr)` is the mixture ratio `pi / ((1-p) mu + p pi)`.
    #[test]
    fn log_ratio_is_the_formula_of_the_model() {
        let literal = |p: f64, lpi: f64, lmu: f64| -> f64 {
            if p == 0.0 {
                return lpi - lmu;
            }
            if p == 1.0 {
                return 0.0;
            }
            let x = lmu + (-p).ln_1p();
            let y = lpi + p.ln();
            let mx = if y > x { y } else { x };
            let lb = mx + ((x - mx).exp() + (y - mx).exp()).ln();
            lpi - lb
        };
        let vals = [
            -700.0,
            -30.5,
            -3.25,
            -1.0,
            -0.1,
            0.0,
            0.7,
            2.5,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NAN,
        ];
        for p in [0.0, 1e-3, 0.25, 0.5, 0.75, 0.999, 1.0] {
            let rc = RatioConsts::new(2, 0.7, 1.3, p);
            for &lpi in &vals {
                for &lmu in &vals {
                    let got = rc.log_ratio(lpi, lmu);
                    let want = literal(p, lpi, lmu);
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "p {p} lpi {lpi} lmu {lmu}: {got} vs {want}"
                    );
                    if lpi.is_finite() && lmu.is_finite() && lpi > -30.0 && lmu > -30.0 {
                        let ratio = lpi.exp() / ((1.0 - p) * lmu.exp() + p * lpi.exp());
                        let rel = (got.exp() - ratio).abs() / ratio;
                        assert!(rel < 1e-13, "p {p} lpi {lpi} lmu {lmu}: {rel}");
                        if p > 0.0 {
                            assert!(got.exp() <= (1.0 / p) * (1.0 + 1e-15));
                        }
                    }
                }
            }
        }
    }

    /// `clip_rho` is Python's `min(rho, clip)` written as `clip if clip < rho else rho`.
    #[test]
    fn clip_rho_is_python_min() {
        assert_eq!(clip_rho(2.0, 1.5), 1.5);
        assert_eq!(clip_rho(1.0, 1.5), 1.0);
        assert_eq!(clip_rho(1.5, 1.5), 1.5);
        assert_eq!(clip_rho(f64::INFINITY, 2.0), 2.0);
        assert_eq!(clip_rho(7.0, f64::INFINITY), 7.0);
        assert!(clip_rho(f64::NAN, 2.0).is_nan());
    }

    #[test]
    fn select_picks_the_bits_of_one_argument() {
        let pairs = [
            (1.5, -2.25),
            (-0.0, 0.0),
            (f64::NAN, f64::INFINITY),
            (f64::from_bits(0x7ff8_0000_dead_beef), 3.0),
            (5e-324, -f64::MAX),
        ];
        for (a, b) in pairs {
            assert_eq!(select(true, a, b).to_bits(), a.to_bits());
            assert_eq!(select(false, a, b).to_bits(), b.to_bits());
        }
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

    /// Every scalar of the problem is checked: non-finite values and values outside their domain
    /// are errors naming the argument.
    #[test]
    fn validation_of_every_scalar() {
        let a = [1.0];
        let ok = Problem {
            n: 1,
            m: 1,
            a: &a,
            b: &a,
            q: &a,
            r: &a,
            sigma_eps: 0.0,
            sigma_0: 0.0,
            reward_scale: 1.0,
            sigma_pi: 1.0,
            sigma_mu: 1.0,
            p_mix: 0.0,
            gamma: 0.9,
            rho_clip: f64::INFINITY,
            seed: 0,
        };
        assert!(ok.validate().is_ok());
        assert!(Problem { p_mix: 1.0, ..ok }.validate().is_ok());
        assert!(Problem {
            rho_clip: 1e-300,
            ..ok
        }
        .validate()
        .is_ok());
        let arg = |p: Problem| p.validate().unwrap_err().arg();
        assert_eq!(arg(Problem { n: 0, ..ok }), "a");
        assert_eq!(arg(Problem { m: 0, ..ok }), "b");
        assert_eq!(arg(Problem { n: 2, ..ok }), "a");
        assert_eq!(arg(Problem { m: 2, ..ok }), "b");
        assert_eq!(
            arg(Problem {
                b: &[1.0, 2.0],
                ..ok
            }),
            "b"
        );
        assert_eq!(arg(Problem { q: &[], ..ok }), "q");
        assert_eq!(
            arg(Problem {
                r: &[1.0, 1.0],
                ..ok
            }),
            "r"
        );
        assert_eq!(
            arg(Problem {
                a: &[f64::NAN],
                ..ok
            }),
            "a"
        );
        assert_eq!(
            arg(Problem {
                b: &[f64::INFINITY],
                ..ok
            }),
            "b"
        );
        assert_eq!(
            arg(Problem {
                q: &[f64::NAN],
                ..ok
            }),
            "q"
        );
        assert_eq!(
            arg(Problem {
                r: &[f64::NEG_INFINITY],
                ..ok
            }),
            "r"
        );
        assert_eq!(
            arg(Problem {
                sigma_mu: -1.0,
                ..ok
            }),
            "sigma_mu"
        );
        assert_eq!(
            arg(Problem {
                sigma_mu: f64::NAN,
                ..ok
            }),
            "sigma_mu"
        );
        assert_eq!(
            arg(Problem {
                sigma_eps: -1e-300,
                ..ok
            }),
            "sigma_eps"
        );
        assert_eq!(
            arg(Problem {
                sigma_eps: f64::INFINITY,
                ..ok
            }),
            "sigma_eps"
        );
        assert_eq!(
            arg(Problem {
                sigma_0: -1.0,
                ..ok
            }),
            "sigma_0"
        );
        assert_eq!(
            arg(Problem {
                reward_scale: f64::NAN,
                ..ok
            }),
            "reward_scale"
        );
        assert_eq!(
            arg(Problem {
                gamma: f64::INFINITY,
                ..ok
            }),
            "gamma"
        );
        assert_eq!(
            arg(Problem {
                p_mix: f64::NAN,
                ..ok
            }),
            "p_mix"
        );
        assert_eq!(arg(Problem { p_mix: -0.1, ..ok }), "p_mix");
        assert_eq!(
            arg(Problem {
                rho_clip: 0.0,
                ..ok
            }),
            "rho_clip"
        );
        assert_eq!(
            arg(Problem {
                rho_clip: -2.0,
                ..ok
            }),
            "rho_clip"
        );
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

    #[test]
    fn validation() {
        let a = [1.0];
        let p = Problem {
            n: 1,
            m: 1,
            a: &a,
            b: &a,
            q: &a,
            r: &a,
            sigma_eps: 0.1,
            sigma_0: 1.0,
            reward_scale: 1.0,
            sigma_pi: 0.0,
            sigma_mu: 1.0,
            p_mix: 0.0,
            gamma: 0.9,
            rho_clip: f64::INFINITY,
            seed: 0,
        };
        assert_eq!(p.validate().unwrap_err().arg(), "sigma_pi");
        let ok = Problem { sigma_pi: 1.0, ..p };
        assert!(ok.validate().is_ok());
        assert_eq!(
            Problem { p_mix: 1.5, ..ok }.validate().unwrap_err().arg(),
            "p_mix"
        );
        assert_eq!(
            Problem {
                rho_clip: f64::NAN,
                ..ok
            }
            .validate()
            .unwrap_err()
            .arg(),
            "rho_clip"
        );
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
