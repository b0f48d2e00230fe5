//! The LQG problem and the policy pair's noise levels (MODEL.md section 2), with the checks of its
//! sizes and domains.

use crate::checks::{check_finite, check_finite_scalar, check_len, nonnegative, positive};
use crate::density::RatioConsts;
use crate::error::{CoreError, CoreResult};
use crate::features::feature_dim;

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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            arg(Problem {
                rho_clip: f64::NAN,
                ..ok
            }),
            "rho_clip"
        );
        assert_eq!(
            arg(Problem {
                sigma_pi: 0.0,
                ..ok
            }),
            "sigma_pi"
        );
        assert_eq!(arg(Problem { p_mix: 1.5, ..ok }), "p_mix");
    }
}
