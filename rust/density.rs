//! The log densities of the two Gaussian policies and the importance ratio of the defensive mixture
//! (MODEL.md section 2), with their per-run constants ([`RatioConsts`]) and the clipping of the
//! ratio.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
