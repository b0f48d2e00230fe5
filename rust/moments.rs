//! Exact population moments of the rollout states under the behaviour mixture: the Rust twin of
//! `python/offtd/reference/moments.py` (MODEL.md 9.2).
//!
//! At every step the mixture takes pi's gain and noise with probability `p_mix` and mu's otherwise,
//! independently of the state: `s' = L_x s + xi_x`, `L_x = A + B K_x`, `xi_x ~ N(0, S_x)`,
//! `S_x = sigma_x^2 B B^T + sigma_eps^2 I`. From `s_0 ~ N(0, sigma_0^2 I)` the odd moments vanish and
//!
//! ```text
//! M2' = sum_x p_x (L_x M2 L_x^T + S_x)
//! M4' = sum_x p_x (L_x^{(x)4} M4 + cross6(L_x M2 L_x^T, S_x) + Isserlis(S_x))
//! ```
//!
//! The kernel returns the averages of `M2_h`, `M4_h` over `h = 0 .. horizon-1`. Components run pi
//! then mu, a component of weight 0 is left out (so its gain cannot turn 0 * inf into NaN), as in
//! the reference. `L^{(x)4} M4` is four successive single-mode contractions, each a product of `L`
//! with a reshaped `M4` (`O(n^5)` with contiguous inner loops) instead of the naive `O(n^8)` sum;
//! the whole kernel costs `O(horizon * n^5)` time and `O(n^4)` memory.
//!
//! The order of operations is the reference's up to the association inside the contractions (numpy's
//! `einsum` chooses its own), so the two backends agree to rounding, not to the bit.

use crate::checks::{check_finite, check_finite_scalar};
use crate::error::{CoreError, CoreResult};
use crate::problem::Problem;
use crate::{interrupt, mem};

/// `(mean_h M2_h, mean_h M4_h)`, row-major `(n, n)` and `(n, n, n, n)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMoments {
    pub m2: Vec<f64>,
    pub m4: Vec<f64>,
}

/// One mixture component: its weight, `L = A + B K`, `S = sigma^2 B B^T + sigma_eps^2 I` and the
/// constant `Isserlis(S)`.
struct Component {
    weight: f64,
    l: Vec<f64>,
    /// `L^T`, for the last mode's contraction
    lt: Vec<f64>,
    s: Vec<f64>,
    iss: Vec<f64>,
}

/// `E[x_i x_j x_k x_l]` for `x ~ N(0, s)`: `s_ij s_kl + s_ik s_jl + s_il s_jk`, row-major (n, n, n, n).
pub fn isserlis(s: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n * n * n];
    isserlis_into(s, n, &mut out);
    out
}

/// [`isserlis`] into a fallibly allocated buffer ([`CoreError::OutOfMemory`] naming `a`).
fn try_isserlis(s: &[f64], n: usize) -> CoreResult<Vec<f64>> {
    let mut out = mem::zeroed("a", n * n * n * n)?;
    isserlis_into(s, n, &mut out);
    Ok(out)
}

fn isserlis_into(s: &[f64], n: usize, out: &mut [f64]) {
    let mut idx = 0;
    for i in 0..n {
        for j in 0..n {
            for k in 0..n {
                for l in 0..n {
                    out[idx] = s[i * n + j] * s[k * n + l]
                        + s[i * n + k] * s[j * n + l]
                        + s[i * n + l] * s[j * n + k];
                    idx += 1;
                }
            }
        }
    }
}

/// `dst = L x_mode src`: with `src` viewed as `(outer, n, inner)`,
/// `dst[o, i, r] = sum_c L[i, c] * src[o, c, r]`. Mode 1 of an (n, n, n, n) tensor is
/// `(1, n, n^3)`, mode 2 `(n, n, n^2)`, mode 3 `(n^2, n, n)`, mode 4 `(n^3, n, 1)`.
/// Ticks the interruption as it goes; `Err(Interrupted)` leaves `dst` partly written.
fn apply_mode(
    l: &[f64],
    lt: &[f64],
    src: &[f64],
    dst: &mut [f64],
    n: usize,
    outer: usize,
    inner: usize,
) -> CoreResult<()> {
    let blk = n * inner;
    if inner == 1 {
        // dst[o, :] = L src[o, :] = sum_c src[o, c] * L^T[c, :]: a contiguous axpy over i
        for (o, (s, d)) in src
            .chunks_exact(n)
            .zip(dst.chunks_exact_mut(n))
            .take(outer)
            .enumerate()
        {
            if o % n == 0 {
                interrupt::tick_check((2 * n * n * n) as u64)?;
            }
            d.fill(0.0);
            for (c, &sc) in s.iter().enumerate() {
                let ltc = &lt[c * n..(c + 1) * n];
                for (di, &lci) in d.iter_mut().zip(ltc) {
                    *di += lci * sc;
                }
            }
        }
        return Ok(());
    }
    for (s, d) in src
        .chunks_exact(blk)
        .zip(dst.chunks_exact_mut(blk))
        .take(outer)
    {
        for i in 0..n {
            interrupt::tick_check((2 * n * inner) as u64)?;
            let drow = &mut d[i * inner..(i + 1) * inner];
            drow.fill(0.0);
            for c in 0..n {
                let w = l[i * n + c];
                let srow = &s[c * inner..(c + 1) * inner];
                for (dr, &sr) in drow.iter_mut().zip(srow) {
                    *dr += w * sr;
                }
            }
        }
    }
    Ok(())
}

/// `new4 += w * ((y + cross6(u, s)) + iss)`, all (n, n, n, n) but `u = L M2 L^T` and `s` (n, n):
/// one component's share of the next fourth moment. Ticks the interruption row by row.
fn add_fourth(
    new4: &mut [f64],
    w: f64,
    y: &[f64],
    u: &[f64],
    s: &[f64],
    iss: &[f64],
    n: usize,
) -> CoreResult<()> {
    let mut idx = 0;
    for i in 0..n {
        // per element: 6 products and 5 sums of cross6, then + y, + iss, * w, +=
        interrupt::tick_check((15 * n * n * n) as u64)?;
        for j in 0..n {
            for k in 0..n {
                for q in 0..n {
                    let cross = u[i * n + j] * s[k * n + q]
                        + u[i * n + k] * s[j * n + q]
                        + u[i * n + q] * s[j * n + k]
                        + u[j * n + k] * s[i * n + q]
                        + u[j * n + q] * s[i * n + k]
                        + u[k * n + q] * s[i * n + j];
                    new4[idx] += w * ((y[idx] + cross) + iss[idx]);
                    idx += 1;
                }
            }
        }
    }
    Ok(())
}

/// The recursion's state: the current moments, their running sums and scratch space. One call of
/// [`Recursion::step`] is one step `h -> h + 1`.
struct Recursion {
    n: usize,
    comps: Vec<Component>,
    m2: Vec<f64>,
    m4: Vec<f64>,
    acc2: Vec<f64>,
    acc4: Vec<f64>,
    new2: Vec<f64>,
    new4: Vec<f64>,
    /// `L M2`, then `L M2 L^T`
    lm2: Vec<f64>,
    s2: Vec<f64>,
    t1: Vec<f64>,
    t2: Vec<f64>,
}

impl Recursion {
    fn new(n: usize, sigma_0: f64, comps: Vec<Component>) -> CoreResult<Self> {
        let n2 = n * n;
        let n4 = n2 * n2;
        let mut eye = vec![0.0; n2];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        let v2 = sigma_0 * sigma_0;
        let v4 = v2 * v2;
        let m2: Vec<f64> = eye.iter().map(|e| v2 * e).collect();
        let mut m4 = try_isserlis(&eye, n)?;
        for e in m4.iter_mut() {
            *e *= v4;
        }
        let zeros = |len: usize| mem::zeroed::<f64>("a", len);
        Ok(Recursion {
            n,
            comps,
            m2,
            m4,
            acc2: zeros(n2)?,
            acc4: zeros(n4)?,
            new2: zeros(n2)?,
            new4: zeros(n4)?,
            lm2: zeros(n2)?,
            s2: zeros(n2)?,
            t1: zeros(n4)?,
            t2: zeros(n4)?,
        })
    }

    /// Adds the current moments to the running sums and advances them one step.
    fn step(&mut self) -> CoreResult<()> {
        let n = self.n;
        let (n2, n3) = (n * n, n * n * n);
        for (a, &v) in self.acc2.iter_mut().zip(&self.m2) {
            *a += v;
        }
        for (a, &v) in self.acc4.iter_mut().zip(&self.m4) {
            *a += v;
        }
        self.new2.fill(0.0);
        self.new4.fill(0.0);
        for comp in &self.comps {
            let (l, s) = (&comp.l, &comp.s);
            // s2 = (L M2) L^T
            for i in 0..n {
                for j in 0..n {
                    let mut acc = 0.0;
                    for k in 0..n {
                        acc += l[i * n + k] * self.m2[k * n + j];
                    }
                    self.lm2[i * n + j] = acc;
                }
            }
            for i in 0..n {
                for j in 0..n {
                    let mut acc = 0.0;
                    for k in 0..n {
                        acc += self.lm2[i * n + k] * l[j * n + k];
                    }
                    self.s2[i * n + j] = acc;
                }
            }
            // y = L^{(x)4} M4, one mode at a time: m4 -> t1 -> t2 -> t1 -> t2
            apply_mode(l, &comp.lt, &self.m4, &mut self.t1, n, 1, n3)?;
            apply_mode(l, &comp.lt, &self.t1, &mut self.t2, n, n, n2)?;
            apply_mode(l, &comp.lt, &self.t2, &mut self.t1, n, n2, n)?;
            apply_mode(l, &comp.lt, &self.t1, &mut self.t2, n, n3, 1)?;
            let w = comp.weight;
            for (i, o) in self.new2.iter_mut().enumerate() {
                *o += w * (self.s2[i] + s[i]);
            }
            add_fourth(&mut self.new4, w, &self.t2, &self.s2, s, &comp.iss, n)?;
        }
        std::mem::swap(&mut self.m2, &mut self.new2);
        std::mem::swap(&mut self.m4, &mut self.new4);
        Ok(())
    }

    /// The running sums divided by the number of steps taken.
    fn finish(self, horizon: usize) -> StateMoments {
        let h = horizon as f64;
        let mut m4 = self.acc4;
        for v in m4.iter_mut() {
            *v /= h;
        }
        StateMoments {
            m2: self.acc2.iter().map(|v| v / h).collect(),
            m4,
        }
    }
}

fn check_shape(arg: &'static str, v: &[f64], shape: &[usize]) -> CoreResult<()> {
    if v.len() != shape.iter().product::<usize>() {
        return Err(CoreError::ShapeMismatch {
            arg,
            expected: crate::error::fmt_shape(shape),
            got: format!("{} elements", v.len()),
        });
    }
    Ok(())
}

fn check_sigma(arg: &'static str, v: f64) -> CoreResult<()> {
    check_finite_scalar(arg, v)?;
    if v < 0.0 {
        return Err(CoreError::invalid(arg, format!("must be >= 0, got {v}")));
    }
    Ok(())
}

/// The exact time-averaged second and fourth moments of the rollout states (module docs).
///
/// From the problem: `a` (n, n), `b` (n, m) finite, the sigmas finite and `>= 0` (0 is allowed here,
/// unlike [`Problem::validate`]: a noiseless policy has moments too), `p_mix` in [0, 1]; `k_pi`,
/// `k_mu` (m, n), row-major and finite; `horizon >= 1`. Errors name the offending argument. The moments
/// themselves may overflow to inf for an unstable closed loop (IEEE arithmetic, as the reference).
pub fn state_moments(
    p: &Problem,
    k_pi: &[f64],
    k_mu: &[f64],
    horizon: usize,
) -> CoreResult<StateMoments> {
    // what the moments depend on (q, r, gamma, the clip and the seed do not enter)
    let (n, m, a, b) = (p.n, p.m, p.a, p.b);
    let (sigma_pi, sigma_mu, sigma_eps, sigma_0, p_mix) =
        (p.sigma_pi, p.sigma_mu, p.sigma_eps, p.sigma_0, p.p_mix);
    if n == 0 {
        return Err(CoreError::invalid("a", "state dimension n must be >= 1"));
    }
    if m == 0 {
        return Err(CoreError::invalid("b", "action dimension m must be >= 1"));
    }
    if n.checked_pow(4).is_none() {
        return Err(CoreError::invalid(
            "a",
            format!("state dimension n = {n} is too large for (n, n, n, n) moments"),
        ));
    }
    check_shape("a", a, &[n, n])?;
    check_shape("b", b, &[n, m])?;
    check_shape("k_pi", k_pi, &[m, n])?;
    check_shape("k_mu", k_mu, &[m, n])?;
    check_finite("a", a)?;
    check_finite("b", b)?;
    check_finite("k_pi", k_pi)?;
    check_finite("k_mu", k_mu)?;
    check_sigma("sigma_pi", sigma_pi)?;
    check_sigma("sigma_mu", sigma_mu)?;
    check_sigma("sigma_eps", sigma_eps)?;
    check_sigma("sigma_0", sigma_0)?;
    check_finite_scalar("p_mix", p_mix)?;
    if !(0.0..=1.0).contains(&p_mix) {
        return Err(CoreError::invalid(
            "p_mix",
            format!("must be in [0, 1], got {p_mix}"),
        ));
    }
    if horizon == 0 {
        return Err(CoreError::invalid("horizon", "must be >= 1, got 0"));
    }
    mem::plan("a", state_moments_bytes(n))?;

    // B B^T, shared by both components
    let mut bbt = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let mut acc = 0.0;
            for k in 0..m {
                acc += b[i * m + k] * b[j * m + k];
            }
            bbt[i * n + j] = acc;
        }
    }
    let mut comps = Vec::with_capacity(2);
    for (weight, k, sigma) in [(p_mix, k_pi, sigma_pi), (1.0 - p_mix, k_mu, sigma_mu)] {
        if weight <= 0.0 {
            continue;
        }
        let mut l = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let mut bk = 0.0;
                for q in 0..m {
                    bk += b[i * m + q] * k[q * n + j];
                }
                l[i * n + j] = a[i * n + j] + bk;
            }
        }
        let mut lt = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                lt[j * n + i] = l[i * n + j];
            }
        }
        let (v, e) = (sigma * sigma, sigma_eps * sigma_eps);
        let mut s = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                s[i * n + j] = v * bbt[i * n + j] + if i == j { e } else { 0.0 };
            }
        }
        let iss = try_isserlis(&s, n)?;
        comps.push(Component {
            weight,
            l,
            lt,
            s,
            iss,
        });
    }

    let mut rec = Recursion::new(n, sigma_0, comps)?;
    for _ in 0..horizon {
        rec.step()?;
    }
    Ok(rec.finish(horizon))
}

/// The bytes [`state_moments`] holds at once for state dimension `n`: five `(n, n, n, n)` tensors
/// of the recursion, one Isserlis tensor per component, one more while it starts, and `n^2` matrices.
pub fn state_moments_bytes(n: usize) -> u128 {
    let n2 = n as u128 * n as u128;
    8 * (8 * n2 * n2 + 16 * n2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A problem with these dynamics and noise levels (q, r, gamma, the clip and the seed do not enter
    /// the moments).
    #[allow(clippy::too_many_arguments)]
    fn prob<'a>(
        n: usize,
        m: usize,
        a: &'a [f64],
        b: &'a [f64],
        sigma_pi: f64,
        sigma_mu: f64,
        sigma_eps: f64,
        sigma_0: f64,
        p_mix: f64,
    ) -> Problem<'a> {
        Problem {
            n,
            m,
            a,
            b,
            q: &[],
            r: &[],
            sigma_eps,
            sigma_0,
            reward_scale: 1.0,
            sigma_pi,
            sigma_mu,
            p_mix,
            gamma: 0.9,
            rho_clip: f64::INFINITY,
            seed: 0,
        }
    }

    /// A small deterministic generator of values in [-1, 1).
    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / 9007199254740992.0 * 2.0 - 1.0
        }
    }

    fn rand_vec(next: &mut impl FnMut() -> f64, len: usize, scale: f64) -> Vec<f64> {
        (0..len).map(|_| scale * next()).collect()
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(f64::MIN_POSITIVE)
    }

    #[test]
    fn scalar_case_follows_the_scalar_recursion() {
        // n = m = 1: M2' = sum_x p_x (l_x^2 M2 + s_x), M4' = sum_x p_x (l_x^4 M4 + 6 l_x^2 M2 s_x + 3 s_x^2)
        // with l_x = a + b k_x, s_x = sigma_x^2 b^2 + sigma_eps^2; M2_0 = sigma_0^2, M4_0 = 3 sigma_0^4.
        let (a, b, kp, km) = (0.9, 0.5, -0.4, 0.3);
        let (sp, sm, se, s0) = (0.7, 1.3, 0.2, 1.5);
        for p in [0.0, 0.25, 1.0] {
            for horizon in [1, 2, 7, 60] {
                let got = state_moments(
                    &prob(1, 1, &[a], &[b], sp, sm, se, s0, p),
                    &[kp],
                    &[km],
                    horizon,
                )
                .unwrap();
                let comps = [
                    (p, a + b * kp, sp * sp * b * b + se * se),
                    (1.0 - p, a + b * km, sm * sm * b * b + se * se),
                ];
                let (mut m2, mut m4) = (s0 * s0, 3.0 * s0.powi(4));
                let (mut acc2, mut acc4) = (0.0, 0.0);
                for _ in 0..horizon {
                    acc2 += m2;
                    acc4 += m4;
                    let (mut n2, mut n4) = (0.0, 0.0);
                    for &(w, l, s) in &comps {
                        n2 += w * (l * l * m2 + s);
                        n4 += w * (l.powi(4) * m4 + 6.0 * l * l * m2 * s + 3.0 * s * s);
                    }
                    m2 = n2;
                    m4 = n4;
                }
                let (want2, want4) = (acc2 / horizon as f64, acc4 / horizon as f64);
                assert!(
                    close(got.m2[0], want2, 1e-14),
                    "p {p} h {horizon}: {} vs {want2}",
                    got.m2[0]
                );
                assert!(
                    close(got.m4[0], want4, 1e-14),
                    "p {p} h {horizon}: {} vs {want4}",
                    got.m4[0]
                );
            }
        }
    }

    #[test]
    fn scalar_single_component_is_gaussian_with_geometric_variance() {
        // p_mix = 1: s_h is N(0, v_h) with v_h = l^(2h) sigma_0^2 + s (1 - l^(2h)) / (1 - l^2) in closed
        // form, and E[s_h^4] = 3 v_h^2 (Gaussian).
        let (a, b, kp) = (0.8, 1.0, -0.3);
        let (sp, se, s0) = (0.6, 0.4, 2.0);
        let (l, s) = (a + b * kp, sp * sp * b * b + se * se);
        let horizon = 40;
        let got = state_moments(
            &prob(1, 1, &[a], &[b], sp, 1.0, se, s0, 1.0),
            &[kp],
            &[0.0],
            horizon,
        )
        .unwrap();
        let v = |h: i32| l.powi(2 * h) * s0 * s0 + s * (1.0 - l.powi(2 * h)) / (1.0 - l * l);
        let want2 = (0..horizon as i32).map(v).sum::<f64>() / horizon as f64;
        let want4 = (0..horizon as i32).map(|h| 3.0 * v(h) * v(h)).sum::<f64>() / horizon as f64;
        assert!(close(got.m2[0], want2, 1e-13), "{} vs {want2}", got.m2[0]);
        assert!(close(got.m4[0], want4, 1e-13), "{} vs {want4}", got.m4[0]);
    }

    #[test]
    fn horizon_one_is_the_start_distribution() {
        // h = 0 only: M2 = sigma_0^2 I and M4 = sigma_0^4 Isserlis(I), exactly (products with 0 and 1).
        let (n, m) = (3, 2);
        let mut next = lcg(7);
        let a = rand_vec(&mut next, n * n, 0.5);
        let b = rand_vec(&mut next, n * m, 1.0);
        let kp = rand_vec(&mut next, m * n, 1.0);
        let km = rand_vec(&mut next, m * n, 1.0);
        let s0 = 1.7;
        let got = state_moments(&prob(n, m, &a, &b, 0.4, 0.9, 0.3, s0, 0.3), &kp, &km, 1).unwrap();
        for i in 0..n {
            for j in 0..n {
                assert_eq!(got.m2[i * n + j], if i == j { s0 * s0 } else { 0.0 });
                for k in 0..n {
                    for l in 0..n {
                        let d = |p: usize, q: usize| (p == q) as u8 as f64;
                        let want = (s0 * s0)
                            * (s0 * s0)
                            * (d(i, j) * d(k, l) + d(i, k) * d(j, l) + d(i, l) * d(j, k));
                        assert_eq!(got.m4[((i * n + j) * n + k) * n + l], want, "{i}{j}{k}{l}");
                    }
                }
            }
        }
    }

    /// The single-component state is Gaussian at every step, so `M4_h = Isserlis(M2_h)`: the
    /// average of M4 equals the average of Isserlis(M2_h), with M2_h from its own plain recursion.
    #[test]
    fn single_component_fourth_moment_is_isserlis_of_the_second() {
        let (n, m) = (3, 2);
        let mut next = lcg(11);
        let a = rand_vec(&mut next, n * n, 0.45);
        let b = rand_vec(&mut next, n * m, 1.0);
        let kp = rand_vec(&mut next, m * n, 0.3);
        let km = rand_vec(&mut next, m * n, 0.3);
        let (sp, se, s0) = (0.8, 0.5, 1.2);
        let horizon = 25;
        let got =
            state_moments(&prob(n, m, &a, &b, sp, 2.0, se, s0, 1.0), &kp, &km, horizon).unwrap();
        // L = A + B K_pi, S = sp^2 B B^T + se^2 I
        let mut l = vec![0.0; n * n];
        let mut s = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                l[i * n + j] =
                    a[i * n + j] + (0..m).map(|q| b[i * m + q] * kp[q * n + j]).sum::<f64>();
                s[i * n + j] = sp * sp * (0..m).map(|q| b[i * m + q] * b[j * m + q]).sum::<f64>()
                    + if i == j { se * se } else { 0.0 };
            }
        }
        let mut m2: Vec<f64> = (0..n * n)
            .map(|i| if i % (n + 1) == 0 { s0 * s0 } else { 0.0 })
            .collect();
        let mut want2 = vec![0.0; n * n];
        let mut want4 = vec![0.0; n.pow(4)];
        for _ in 0..horizon {
            for (w, v) in want2.iter_mut().zip(&m2) {
                *w += v / horizon as f64;
            }
            for (w, v) in want4.iter_mut().zip(isserlis(&m2, n)) {
                *w += v / horizon as f64;
            }
            let mut next2 = vec![0.0; n * n];
            for i in 0..n {
                for j in 0..n {
                    let mut acc = s[i * n + j];
                    for p in 0..n {
                        for q in 0..n {
                            acc += l[i * n + p] * m2[p * n + q] * l[j * n + q];
                        }
                    }
                    next2[i * n + j] = acc;
                }
            }
            m2 = next2;
        }
        let scale2 = want2.iter().fold(0.0f64, |x, v| x.max(v.abs()));
        let scale4 = want4.iter().fold(0.0f64, |x, v| x.max(v.abs()));
        for (g, w) in got.m2.iter().zip(&want2) {
            assert!((g - w).abs() <= 1e-13 * scale2, "{g} vs {w}");
        }
        for (g, w) in got.m4.iter().zip(&want4) {
            assert!((g - w).abs() <= 1e-13 * scale4, "{g} vs {w}");
        }
    }

    #[test]
    fn fourth_moment_is_symmetric_under_index_permutations() {
        let (n, m) = (3, 2);
        let mut next = lcg(3);
        let a = rand_vec(&mut next, n * n, 0.6);
        let b = rand_vec(&mut next, n * m, 1.0);
        let kp = rand_vec(&mut next, m * n, 0.5);
        let km = rand_vec(&mut next, m * n, 0.5);
        let got =
            state_moments(&prob(n, m, &a, &b, 0.5, 1.1, 0.3, 1.0, 0.4), &kp, &km, 30).unwrap();
        let scale4 = got.m4.iter().fold(0.0f64, |x, v| x.max(v.abs()));
        let at = |t: [usize; 4]| got.m4[((t[0] * n + t[1]) * n + t[2]) * n + t[3]];
        // the 24 permutations of (0, 1, 2, 3)
        let mut perms = Vec::new();
        for p0 in 0..4 {
            for p1 in 0..4 {
                for p2 in 0..4 {
                    for p3 in 0..4 {
                        let p = [p0, p1, p2, p3];
                        if (0..4).all(|v| p.contains(&v)) {
                            perms.push(p);
                        }
                    }
                }
            }
        }
        assert_eq!(perms.len(), 24);
        // the contractions associate differently for permuted indices: equal to rounding
        for idx in 0..n.pow(4) {
            let t = [idx / (n * n * n), idx / (n * n) % n, idx / n % n, idx % n];
            for p in &perms {
                let u = [t[p[0]], t[p[1]], t[p[2]], t[p[3]]];
                assert!((at(t) - at(u)).abs() <= 1e-14 * scale4, "{t:?} vs {u:?}");
            }
        }
        for i in 0..n {
            for j in 0..n {
                assert!(
                    (got.m2[i * n + j] - got.m2[j * n + i]).abs()
                        <= 1e-15 * got.m2[0].abs().max(1.0)
                );
            }
            assert!(got.m2[i * n + i] > 0.0);
        }
    }

    #[test]
    fn a_weightless_component_is_dropped() {
        let (n, m) = (2, 1);
        let a = [0.7, 0.2, -0.1, 0.5];
        let b = [1.0, 0.4];
        let k = [0.1, -0.3];
        let huge = [1e200, -1e200];
        // p_mix = 0: pi's gain and sigma do not enter (a huge gain would give inf and 0 * inf = NaN)
        let p0 = state_moments(
            &prob(n, m, &a, &b, 1e150, 0.6, 0.2, 1.0, 0.0),
            &huge,
            &k,
            20,
        )
        .unwrap();
        // p_mix = 1 with the roles swapped is the same single component, weight 1.0: same bits
        let p1 = state_moments(
            &prob(n, m, &a, &b, 0.6, 1e150, 0.2, 1.0, 1.0),
            &k,
            &huge,
            20,
        )
        .unwrap();
        assert_eq!(p0, p1);
        assert!(p0.m2.iter().chain(&p0.m4).all(|v| v.is_finite()));
        // and p_mix strictly inside (0, 1) does mix in pi
        let mix = state_moments(
            &prob(n, m, &a, &b, 1.0, 0.6, 0.2, 1.0, 0.5),
            &[0.5, 0.5],
            &k,
            20,
        )
        .unwrap();
        assert_ne!(mix, p0);
    }

    #[test]
    fn errors_name_the_argument() {
        let (a, b, k) = ([0.5], [1.0], [0.1]);
        let call =
            |a: &[f64], b: &[f64], kp: &[f64], sp: f64, se: f64, s0: f64, p: f64, h: usize| {
                state_moments(&prob(1, 1, a, b, sp, 0.5, se, s0, p), kp, &k, h)
                    .unwrap_err()
                    .to_string()
            };
        assert!(call(&[f64::NAN], &b, &k, 0.3, 0.1, 1.0, 0.5, 3).starts_with("a: must be finite"));
        assert!(call(&a, &[f64::INFINITY], &k, 0.3, 0.1, 1.0, 0.5, 3).starts_with("b:"));
        assert!(call(&a, &b, &[f64::NAN], 0.3, 0.1, 1.0, 0.5, 3).starts_with("k_pi:"));
        assert!(
            call(&a, &b, &k, f64::NAN, 0.1, 1.0, 0.5, 3).starts_with("sigma_pi: must be finite")
        );
        assert!(call(&a, &b, &k, -0.3, 0.1, 1.0, 0.5, 3).starts_with("sigma_pi: must be >= 0"));
        assert!(call(&a, &b, &k, 0.3, -0.1, 1.0, 0.5, 3).starts_with("sigma_eps:"));
        assert!(call(&a, &b, &k, 0.3, 0.1, f64::INFINITY, 0.5, 3).starts_with("sigma_0:"));
        assert!(call(&a, &b, &k, 0.3, 0.1, 1.0, 1.5, 3).starts_with("p_mix: must be in [0, 1]"));
        assert!(call(&a, &b, &k, 0.3, 0.1, 1.0, f64::NAN, 3).starts_with("p_mix:"));
        assert!(call(&a, &b, &k, 0.3, 0.1, 1.0, 0.5, 0).starts_with("horizon:"));
        let e = state_moments(&prob(2, 1, &a, &b, 0.3, 0.5, 0.1, 1.0, 0.5), &k, &k, 3).unwrap_err();
        assert_eq!(e.arg(), "a");
        let e = state_moments(
            &prob(1, 1, &a, &b, 0.3, 0.5, 0.1, 1.0, 0.5),
            &k,
            &[0.1, 0.2],
            3,
        )
        .unwrap_err();
        assert_eq!(e.arg(), "k_mu");
        let e =
            state_moments(&prob(0, 1, &[], &b, 0.3, 0.5, 0.1, 1.0, 0.5), &k, &k, 3).unwrap_err();
        assert_eq!(e.arg(), "a");
        let e =
            state_moments(&prob(1, 0, &a, &[], 0.3, 0.5, 0.1, 1.0, 0.5), &[], &[], 3).unwrap_err();
        assert_eq!(e.arg(), "b");
        // sigmas of exactly 0 are allowed (a deterministic component)
        assert!(state_moments(&prob(1, 1, &a, &b, 0.0, 0.0, 0.0, 0.0, 0.5), &k, &k, 3).is_ok());
    }
    /// `state_moments_bytes` against what `state_moments` really holds at once (a counting
    /// allocator).
    #[test]
    fn state_moments_bytes_bounds_what_the_recursion_holds() {
        for (n, m) in [(1usize, 1usize), (2, 2), (4, 3), (7, 2)] {
            let a: Vec<f64> = (0..n * n)
                .map(|i| if i % (n + 1) == 0 { 0.5 } else { 0.05 })
                .collect();
            let b = vec![0.2; n * m];
            let k = vec![0.1; m * n];
            for p_mix in [0.0, 0.3] {
                let (est, out, peak) = crate::mem::counting::measure(
                    || state_moments_bytes(n),
                    || {
                        state_moments(&prob(n, m, &a, &b, 0.4, 0.5, 0.1, 1.0, p_mix), &k, &k, 5)
                            .unwrap()
                    },
                );
                crate::mem::counting::check_estimate(
                    &format!("state_moments n {n} m {m} p_mix {p_mix}"),
                    est,
                    peak,
                );
                drop(out);
            }
        }
    }

    /// The work the recursion ticks is its floating-point operations (the latency contract of
    /// `crate::interrupt`), part by part and for whole calls. One mode's contraction `L x_mode`
    /// of an (n, n, n, n) tensor: n^4 outputs of n multiply-adds each, 2 n^5 flops, whatever the
    /// mode (each has its own loop and tick). One component's fourth-moment update: per element,
    /// the six products and five sums of cross6 and four more (+ y, + Isserlis, * w, +=), 15 n^4.
    /// A step then adds per component four contractions, that update, `L M2 L^T` (4 n^3) and
    /// `M2'` (3 n^2), and the running sums (n^4 + n^2); the kernel ticks the first two, which are
    /// all but a few percent of it from n = 3 on.
    #[test]
    fn ticked_work_counts_the_flops() {
        use crate::interrupt::tally;
        let mut next = lcg(17);
        for n in [3usize, 6] {
            let nf = n as f64;
            let n4 = n * n * n * n;
            let l = rand_vec(&mut next, n * n, 1.0);
            let lt: Vec<f64> = (0..n * n).map(|i| l[(i % n) * n + i / n]).collect();
            let src = rand_vec(&mut next, n4, 1.0);
            let mut dst = vec![0.0; n4];
            for (mode, (outer, inner)) in [(1, n * n * n), (n, n * n), (n * n, n), (n * n * n, 1)]
                .into_iter()
                .enumerate()
            {
                let (r, t) =
                    tally::measure(|| apply_mode(&l, &lt, &src, &mut dst, n, outer, inner));
                r.unwrap();
                tally::check_work(
                    &format!("apply_mode n {n} mode {}", mode + 1),
                    t,
                    2.0 * nf.powi(5),
                );
            }
            let (u, s) = (
                rand_vec(&mut next, n * n, 1.0),
                rand_vec(&mut next, n * n, 1.0),
            );
            let (y, iss) = (rand_vec(&mut next, n4, 1.0), rand_vec(&mut next, n4, 1.0));
            let mut new4 = vec![0.0; n4];
            let (r, t) = tally::measure(|| add_fourth(&mut new4, 0.5, &y, &u, &s, &iss, n));
            r.unwrap();
            tally::check_work(&format!("add_fourth n {n}"), t, 15.0 * nf.powi(4));
        }
        for (n, m, p_mix, horizon) in [(3usize, 1usize, 0.3, 4usize), (5, 2, 1.0, 3)] {
            let a: Vec<f64> = (0..n * n)
                .map(|i| if i % (n + 1) == 0 { 0.5 } else { 0.05 })
                .collect();
            let (b, k) = (vec![0.2; n * m], vec![0.1; m * n]);
            let (r, t) = tally::measure(|| {
                state_moments(
                    &prob(n, m, &a, &b, 0.4, 0.5, 0.1, 1.0, p_mix),
                    &k,
                    &k,
                    horizon,
                )
            });
            r.unwrap();
            let comps = if p_mix < 1.0 { 2.0 } else { 1.0 };
            let nf = n as f64;
            let per_comp = 8.0 * nf.powi(5) + 15.0 * nf.powi(4) + 4.0 * nf.powi(3) + 3.0 * nf * nf;
            let flops = horizon as f64 * (comps * per_comp + nf.powi(4) + nf * nf);
            tally::check_work(&format!("state_moments n {n} p_mix {p_mix}"), t, flops);
        }
    }
}
