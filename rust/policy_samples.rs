//! The distribution probe's policy samples of MODEL.md 4.1: states picked from the pool, actions from
//! mu, the ratios pi/mu, the TV sum and the state moment, and for the first samples the MMD set (a pi
//! action beside the mu action).
//!
//! Samples are processed in blocks of [`BLOCK`] consecutive samples in parallel; each block's sums
//! run left to right from 0.0 and the block sums are then added in block order from 0.0, so results
//! are bit-identical for any number of threads. Besides the ratios and the MMD rows, every block
//! keeps `1 + n(n+1)/2` partial sums. The kernel is planned ([`policy_samples_bytes`]) and allocates
//! fallibly; blocks tick the interruption ([`crate::interrupt`]).

use crate::checks::check_gain;
use crate::density::RatioConsts;
use crate::error::{CoreError, CoreResult};
use crate::linalg::{matvec, matvec_fixed, to_rows, BLOCK};
use crate::philox::{fill_normals, fill_uniforms, Normals, Stream, Uniforms};
use crate::pool::{check_pool, pick};
use crate::problem::Problem;
use crate::transitions::{PAR_MIN_SAMPLES, SUB};
use crate::{interrupt, mem, par};

/// Distribution-probe purposes (section 1; the registry is crate::streams).
pub use crate::streams::{
    DIST_MU_ACTION as PURPOSE_DIST_MU, DIST_PI_ACTION as PURPOSE_DIST_PI,
    DIST_STATE as PURPOSE_DIST_STATE,
};

/// Distribution-probe draws (backend.PolicySamples).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySamplesOut {
    /// (K,)
    pub rho: Vec<f64>,
    pub tv_sum: f64,
    /// (n, n)
    pub state_moment: Vec<f64>,
    /// (M, n)
    pub mmd_s: Vec<f64>,
    /// (M, m)
    pub mmd_a_pi: Vec<f64>,
    /// (M, m)
    pub mmd_a_mu: Vec<f64>,
}

/// The distribution probe's draws (4.1): `count` samples with states picked from `pool`, actions
/// from mu, ratios pi/mu; the first `mmd_count` samples also get a pi action (the MMD set).
/// Of the problem it reads the sizes, `sigma_pi`, `sigma_mu` and `seed` (the ratio is pi/mu whatever
/// `p_mix`), and checks it whole.
pub fn policy_samples(
    p: &Problem,
    k_pi: &[f64],
    k_mu: &[f64],
    pool: &[f64],
    count: usize,
    mmd_count: usize,
    iteration: u64,
) -> CoreResult<PolicySamplesOut> {
    policy_samples_impl(p, k_pi, k_mu, pool, count, mmd_count, iteration, true)
}

/// The bytes [`policy_samples`] holds at once for `count` samples, `mmd_count` of them in the MMD
/// set (n states, m actions): the ratios, the MMD rows, every block's partial sums, the work items
/// and the per-thread scratch.
pub fn policy_samples_bytes(n: usize, m: usize, count: usize, mmd_count: usize) -> u128 {
    let blocks = count.div_ceil(BLOCK) as u128;
    let threads = par::threads_for(count.div_ceil(BLOCK).max(1), true) as u128;
    let scratch = std::mem::size_of::<PolicyBuf<4, 4>>() as u128 + 8 * 3 * m as u128;
    mem::total(&[
        (count as u128, 8),                                        // ratios
        (mmd_count as u128, 8 * (n + 2 * m) as u128),              // MMD rows
        (blocks, 8 * (1 + n * (n + 1) / 2) as u128 + 4 * 16 + 96), // partials, pieces, items
        (1, par::overhead_bytes::<[usize; 10]>(blocks as usize)),
        (threads, scratch),
        ((1 + n * (n + 1) / 2 + n * n) as u128, 8),
    ])
}

/// The interruption work of one sample ([`crate::interrupt`], roughly its operations): `K_pi s`
/// and `K_mu s` (4mn), the state moment (~n^2), per action dimension its normal (~50) and the
/// action and densities, and the pick, the ratio's exp and the TV term (64). The fixed-size kernel
/// ticks the same per sample.
#[inline(always)]
fn sample_work(n: usize, m: usize) -> u64 {
    (4 * m * n + n * n + 64 * m + 64) as u64
}

/// `policy_samples`, with the fixed-size kernels (n, m <= 4) allowed or not (tests compare the two).
#[allow(clippy::too_many_arguments)]
fn policy_samples_impl(
    p: &Problem,
    k_pi: &[f64],
    k_mu: &[f64],
    pool: &[f64],
    count: usize,
    mmd_count: usize,
    iteration: u64,
    allow_fixed: bool,
) -> CoreResult<PolicySamplesOut> {
    p.validate()?;
    let (n, m) = (p.n, p.m);
    let (sigma_pi, sigma_mu, seed) = (p.sigma_pi, p.sigma_mu, p.seed);
    check_gain("k_pi", k_pi, m, n)?;
    check_gain("k_mu", k_mu, m, n)?;
    let pool_len = check_pool(pool, n)?;
    if mmd_count > count {
        return Err(CoreError::invalid(
            "mmd_count",
            format!("must be <= count = {count}, got {mmd_count}"),
        ));
    }
    let rc = RatioConsts::new(m, sigma_pi, sigma_mu, 0.0);
    // the argument that makes the arrays large
    let arg = if mmd_count * (n + 2 * m) > count {
        "mmd_count"
    } else {
        "count"
    };
    let planned = policy_samples_bytes(n, m, count, mmd_count);
    mem::plan(arg, planned)?;
    let oom = |e: CoreError| e.as_planned(arg, planned);
    let nblocks = count.div_ceil(BLOCK);
    let part_len = 1 + n * (n + 1) / 2;
    let mut partials = mem::zeroed(arg, nblocks * part_len).map_err(oom)?;
    let mut rho = mem::zeroed(arg, count).map_err(oom)?;
    let mut mmd_s = mem::zeroed(arg, mmd_count * n).map_err(oom)?;
    let mut mmd_a_pi = mem::zeroed(arg, mmd_count * m).map_err(oom)?;
    let mut mmd_a_mu = mem::zeroed(arg, mmd_count * m).map_err(oom)?;
    // MMD rows belong to the block holding their sample
    let mmd_blocks = mmd_count.div_ceil(BLOCK);
    let mut mmd_s_pieces =
        par::split_lengths(&mut mmd_s, (0..nblocks).map(|b| mmd_rows(b, mmd_count) * n))
            .map_err(oom)?;
    let mut mmd_pi_pieces = par::split_lengths(
        &mut mmd_a_pi,
        (0..nblocks).map(|b| mmd_rows(b, mmd_count) * m),
    )
    .map_err(oom)?;
    let mut mmd_mu_pieces = par::split_lengths(
        &mut mmd_a_mu,
        (0..nblocks).map(|b| mmd_rows(b, mmd_count) * m),
    )
    .map_err(oom)?;
    debug_assert!(mmd_blocks <= nblocks);
    let pieces: Vec<_> = mem::collect(
        arg,
        rho.chunks_mut(BLOCK)
            .zip(partials.chunks_mut(part_len))
            .zip(mmd_s_pieces.drain(..))
            .zip(mmd_pi_pieces.drain(..))
            .zip(mmd_mu_pieces.drain(..))
            .enumerate(),
    )
    .map_err(oom)?;

    let parallel = count >= PAR_MIN_SAMPLES;
    crate::dispatch_dims!(
        if allow_fixed { n } else { 0 },
        m,
        |NN, MM, DD| {
            let kp = to_rows::<MM, NN>(k_pi);
            let km = to_rows::<MM, NN>(k_mu);
            par::for_each_item(
                pieces,
                parallel,
                PolicyBuf::<NN, MM>::new,
                |buf, _, (b, ((((rho_out, part), ms), mpi), mmu))| {
                    policy_block_fixed::<NN, MM>(
                        &kp,
                        &km,
                        &rc,
                        seed,
                        iteration,
                        pool,
                        pool_len,
                        mmd_count,
                        b * BLOCK,
                        rho_out,
                        part,
                        ms,
                        mpi,
                        mmu,
                        buf,
                    );
                },
            )
        },
        par::for_each_item(
            pieces,
            parallel,
            || (),
            |_, _, (b, ((((rho_out, part), ms), mpi), mmu))| {
                let mut pick_u = Uniforms::new(Stream::new(seed, PURPOSE_DIST_STATE, iteration, 0));
                let mut z_mu = Normals::new(Stream::new(seed, PURPOSE_DIST_MU, iteration, 0));
                let mut z_pi = Normals::new(Stream::new(seed, PURPOSE_DIST_PI, iteration, 0));
                let mut kpi_s = vec![0.0; m];
                let mut kmu_s = vec![0.0; m];
                let mut a = vec![0.0; m];
                let (tv, moment) = part.split_at_mut(1);
                let work = sample_work(n, m);
                for (slot, k) in (b * BLOCK..b * BLOCK + rho_out.len()).enumerate() {
                    if interrupt::tick(work) {
                        return; // the kernel is being stopped: its result is discarded
                    }
                    let ku = k as u64;
                    let idx = pick(pick_u.get(ku), pool_len);
                    let s = &pool[idx * n..(idx + 1) * n];
                    matvec(k_pi, s, &mut kpi_s);
                    matvec(k_mu, s, &mut kmu_s);
                    for j in 0..m {
                        a[j] = kmu_s[j] + sigma_mu * z_mu.get(ku * m as u64 + j as u64);
                    }
                    let mut qpi = 0.0;
                    let mut qmu = 0.0;
                    for j in 0..m {
                        let dp = a[j] - kpi_s[j];
                        qpi += dp * dp;
                        let dm = a[j] - kmu_s[j];
                        qmu += dm * dm;
                    }
                    let r = (rc.log_pi(qpi) - rc.log_mu(qmu)).exp();
                    rho_out[slot] = r;
                    // Python's max(1 - rho, 0.0)
                    let t = 1.0 - r;
                    tv[0] += if 0.0 > t { 0.0 } else { t };
                    let mut c = 0;
                    for i in 0..n {
                        for j in i..n {
                            moment[c] += s[i] * s[j];
                            c += 1;
                        }
                    }
                    if k < mmd_count {
                        ms[slot * n..(slot + 1) * n].copy_from_slice(s);
                        mmu[slot * m..(slot + 1) * m].copy_from_slice(&a);
                        for j in 0..m {
                            mpi[slot * m + j] =
                                kpi_s[j] + sigma_pi * z_pi.get(ku * m as u64 + j as u64);
                        }
                    }
                }
            },
        )
    )
    .map_err(oom)?;

    let mut total = vec![0.0; part_len];
    for part in partials.chunks_exact(part_len) {
        for (t, x) in total.iter_mut().zip(part) {
            *t += *x;
        }
    }
    let mut state_moment = vec![0.0; n * n];
    let mut c = 1;
    for i in 0..n {
        for j in i..n {
            state_moment[i * n + j] = total[c];
            state_moment[j * n + i] = total[c];
            c += 1;
        }
    }
    Ok(PolicySamplesOut {
        rho,
        tv_sum: total[0],
        state_moment,
        mmd_s,
        mmd_a_pi,
        mmd_a_mu,
    })
}

/// Per-thread scratch of [`policy_block_fixed`].
struct PolicyBuf<const N: usize, const M: usize> {
    pick_u: [f64; SUB],
    z: [[f64; M]; SUB],
    z_pi: [[f64; M]; SUB],
    idx: [usize; SUB],
    lr: [f64; SUB],
    rho: [f64; SUB],
}

impl<const N: usize, const M: usize> PolicyBuf<N, M> {
    fn new() -> Box<Self> {
        Box::new(PolicyBuf {
            pick_u: [0.0; SUB],
            z: [[0.0; M]; SUB],
            z_pi: [[0.0; M]; SUB],
            idx: [0; SUB],
            lr: [0.0; SUB],
            rho: [0.0; SUB],
        })
    }
}

/// One block of policy samples with compile-time sizes: the operations of the dynamic closure in
/// [`policy_samples`], in the same order, in passes over sub-chunks of `SUB` samples (draws; log
/// ratios; ratios; sums in sample order; the MMD rows).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn policy_block_fixed<const N: usize, const M: usize>(
    k_pi: &[[f64; N]; M],
    k_mu: &[[f64; N]; M],
    rc: &RatioConsts,
    seed: u64,
    iteration: u64,
    pool: &[f64],
    pool_len: usize,
    mmd_count: usize,
    first: usize,
    rho_out: &mut [f64],
    part: &mut [f64],
    ms: &mut [f64],
    mpi: &mut [f64],
    mmu: &mut [f64],
    buf: &mut PolicyBuf<N, M>,
) {
    let st_pick = Stream::new(seed, PURPOSE_DIST_STATE, iteration, 0);
    let st_mu = Stream::new(seed, PURPOSE_DIST_MU, iteration, 0);
    let st_pi = Stream::new(seed, PURPOSE_DIST_PI, iteration, 0);
    let mut tv = 0.0;
    let mut moment = [[0.0; N]; N];
    let end = first + rho_out.len();
    let mut k0 = first;
    while k0 < end {
        let len = SUB.min(end - k0);
        if interrupt::tick(len as u64 * sample_work(N, M)) {
            return; // the kernel is being stopped: its result is discarded
        }
        let slot0 = k0 - first;
        fill_uniforms(&st_pick, k0 as u64, &mut buf.pick_u[..len]);
        fill_normals(&st_mu, (k0 * M) as u64, buf.z[..len].as_flattened_mut());
        let mmd_len = mmd_count.saturating_sub(k0).min(len);
        if mmd_len > 0 {
            fill_normals(
                &st_pi,
                (k0 * M) as u64,
                buf.z_pi[..mmd_len].as_flattened_mut(),
            );
        }
        for c in 0..len {
            let idx = pick(buf.pick_u[c], pool_len);
            buf.idx[c] = idx;
            let mut s = [0.0; N];
            s.copy_from_slice(&pool[idx * N..(idx + 1) * N]);
            let kpi_s = matvec_fixed(k_pi, &s);
            let kmu_s = matvec_fixed(k_mu, &s);
            let mut a = [0.0; M];
            let mut qpi = 0.0;
            let mut qmu = 0.0;
            for j in 0..M {
                a[j] = kmu_s[j] + rc.sigma_mu * buf.z[c][j];
            }
            for j in 0..M {
                let dp = a[j] - kpi_s[j];
                qpi += dp * dp;
                let dm = a[j] - kmu_s[j];
                qmu += dm * dm;
            }
            buf.lr[c] = rc.log_pi(qpi) - rc.log_mu(qmu);
            if c < mmd_len {
                let slot = slot0 + c;
                ms[slot * N..(slot + 1) * N].copy_from_slice(&s);
                mmu[slot * M..(slot + 1) * M].copy_from_slice(&a);
                for j in 0..M {
                    mpi[slot * M + j] = kpi_s[j] + rc.sigma_pi * buf.z_pi[c][j];
                }
            }
        }
        for c in 0..len {
            let r = buf.lr[c].exp();
            buf.rho[c] = r;
            rho_out[slot0 + c] = r;
        }
        for c in 0..len {
            // Python's max(1 - rho, 0.0)
            let t = 1.0 - buf.rho[c];
            tv += if 0.0 > t { 0.0 } else { t };
            let idx = buf.idx[c];
            let mut s = [0.0; N];
            s.copy_from_slice(&pool[idx * N..(idx + 1) * N]);
            for i in 0..N {
                for j in 0..N {
                    moment[i][j] += s[i] * s[j];
                }
            }
        }
        k0 += len;
    }
    part[0] = tv;
    let mut c = 1;
    for i in 0..N {
        for j in i..N {
            part[c] = moment[i][j];
            c += 1;
        }
    }
}

/// How many MMD rows fall in block `b`.
fn mmd_rows(b: usize, mmd_count: usize) -> usize {
    let lo = b * BLOCK;
    let hi = (lo + BLOCK).min(mmd_count);
    hi.saturating_sub(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lqg::FIXED_SIZES;

    /// A problem with n states and m actions whose policy noise levels and seed are given (the
    /// matrices, which the policy samples do not read, are zeros and identities).
    fn problem(n: usize, m: usize, sigma_pi: f64, sigma_mu: f64, seed: u64) -> Problem<'static> {
        let eye = |k: usize| -> &'static [f64] {
            let v: Vec<f64> = (0..k * k)
                .map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 })
                .collect();
            Box::leak(v.into_boxed_slice())
        };
        Problem {
            n,
            m,
            a: eye(n),
            b: Box::leak(vec![0.0; n * m].into_boxed_slice()),
            q: eye(n),
            r: eye(m),
            sigma_eps: 0.1,
            sigma_0: 1.0,
            reward_scale: 1.0,
            sigma_pi,
            sigma_mu,
            p_mix: 0.3,
            gamma: 0.9,
            rho_clip: 2.0,
            seed,
        }
    }

    fn pool() -> Vec<f64> {
        (0..40)
            .map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0)
            .collect()
    }

    /// MODEL.md 4.1's draws written out plainly, block sums over BLOCK samples.
    #[allow(clippy::too_many_arguments)]
    fn policy_samples_oracle(
        n: usize,
        m: usize,
        sigma_pi: f64,
        sigma_mu: f64,
        seed: u64,
        k_pi: &[f64],
        k_mu: &[f64],
        pool: &[f64],
        count: usize,
        mmd_count: usize,
        iteration: u64,
    ) -> PolicySamplesOut {
        let pool_len = pool.len() / n;
        let pick_s = Stream::new(seed, 10, iteration, 0);
        let mu_s = Stream::new(seed, 11, iteration, 0);
        let pi_s = Stream::new(seed, 12, iteration, 0);
        let lpdf = |a: &[f64], mean: &[f64], sigma: f64| -> f64 {
            let mut q = 0.0;
            for j in 0..m {
                q += (a[j] - mean[j]) * (a[j] - mean[j]);
            }
            -0.5 * q / (sigma * sigma) - m as f64 * sigma.ln()
        };
        let mut out = PolicySamplesOut {
            rho: Vec::new(),
            tv_sum: 0.0,
            state_moment: vec![0.0; n * n],
            mmd_s: Vec::new(),
            mmd_a_pi: Vec::new(),
            mmd_a_mu: Vec::new(),
        };
        let mut start = 0;
        while start < count {
            let end = (start + BLOCK).min(count);
            let mut tv = 0.0;
            let mut mom = vec![0.0; n * n];
            for k in start..end {
                let ku = k as u64;
                let idx = pick(pick_s.uniform(ku), pool_len);
                let s = &pool[idx * n..(idx + 1) * n];
                let mut mean_pi = vec![0.0; m];
                let mut mean_mu = vec![0.0; m];
                matvec(k_pi, s, &mut mean_pi);
                matvec(k_mu, s, &mut mean_mu);
                let a: Vec<f64> = (0..m)
                    .map(|j| mean_mu[j] + sigma_mu * mu_s.normal(ku * m as u64 + j as u64))
                    .collect();
                let r = (lpdf(&a, &mean_pi, sigma_pi) - lpdf(&a, &mean_mu, sigma_mu)).exp();
                out.rho.push(r);
                tv += if 1.0 - r < 0.0 { 0.0 } else { 1.0 - r };
                for i in 0..n {
                    for j in 0..n {
                        mom[i * n + j] += s[i] * s[j];
                    }
                }
                if k < mmd_count {
                    out.mmd_s.extend_from_slice(s);
                    out.mmd_a_mu.extend_from_slice(&a);
                    for j in 0..m {
                        out.mmd_a_pi
                            .push(mean_pi[j] + sigma_pi * pi_s.normal(ku * m as u64 + j as u64));
                    }
                }
            }
            out.tv_sum += tv;
            for (t, x) in out.state_moment.iter_mut().zip(&mom) {
                *t += x;
            }
            start = end;
        }
        out
    }

    /// The policy samples, fixed-size and general, equal MODEL.md 4.1 written out, around BLOCK, SUB
    /// and PAR_MIN_SAMPLES.
    #[test]
    fn policy_samples_equal_the_model_written_out() {
        for (n, m) in [(2, 1), (3, 2), (5, 1)] {
            let pool: Vec<f64> = (0..37 * n)
                .map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0)
                .collect();
            let kp: Vec<f64> = (0..m * n).map(|i| 0.1 * (i as f64 * 1.3).cos()).collect();
            let km: Vec<f64> = (0..m * n).map(|i| 0.1 * (i as f64 * 0.7).sin()).collect();
            for (count, mmd) in [(0, 0), (3, 3), (300, 257), (1025, 1025), (2049, 300)] {
                let want = policy_samples_oracle(n, m, 0.3, 0.5, 5, &kp, &km, &pool, count, mmd, 2);
                for allow_fixed in [true, false] {
                    let got = policy_samples_impl(
                        &problem(n, m, 0.3, 0.5, 5),
                        &kp,
                        &km,
                        &pool,
                        count,
                        mmd,
                        2,
                        allow_fixed,
                    )
                    .unwrap();
                    assert_eq!(got, want, "n {n} m {m} K {count} M {mmd}");
                }
            }
        }
    }

    #[test]
    fn input_errors_name_the_argument() {
        let k = [0.0, 0.0];
        let pool = [1.0, 2.0, 3.0, 4.0];
        let ps = |sp: f64, sm: f64, m: usize, kp: &[f64], pool: &[f64], c: usize, mm: usize| {
            policy_samples(&problem(2, m, sp, sm, 1), kp, &k, pool, c, mm, 0)
        };
        assert!(ps(0.3, 0.5, 1, &k, &pool, 4, 4).is_ok());
        assert_eq!(
            ps(0.0, 0.5, 1, &k, &pool, 4, 4).unwrap_err().arg(),
            "sigma_pi"
        );
        assert_eq!(
            ps(f64::INFINITY, 0.5, 1, &k, &pool, 4, 4)
                .unwrap_err()
                .arg(),
            "sigma_pi"
        );
        assert_eq!(
            ps(0.3, -1.0, 1, &k, &pool, 4, 4).unwrap_err().arg(),
            "sigma_mu"
        );
        assert_eq!(
            ps(0.3, f64::NAN, 1, &k, &pool, 4, 4).unwrap_err().arg(),
            "sigma_mu"
        );
        assert_eq!(ps(0.3, 0.5, 0, &[], &pool, 4, 4).unwrap_err().arg(), "b");
        assert_eq!(
            ps(0.3, 0.5, 1, &k[..1], &pool, 4, 4).unwrap_err().arg(),
            "k_pi"
        );
        assert_eq!(
            ps(0.3, 0.5, 1, &k, &pool[..3], 4, 4).unwrap_err().arg(),
            "pool"
        );
        assert_eq!(
            ps(0.3, 0.5, 1, &k, &pool, 4, 5).unwrap_err().arg(),
            "mmd_count"
        );
        let bad_mu = policy_samples(
            &problem(2, 1, 0.3, 0.5, 1),
            &k,
            &[0.0, f64::NAN],
            &pool,
            4,
            4,
            0,
        );
        assert_eq!(bad_mu.unwrap_err().arg(), "k_mu");
    }

    #[test]
    fn mmd_rows_per_block() {
        assert_eq!(mmd_rows(0, 0), 0);
        assert_eq!(mmd_rows(0, 5), 5);
        assert_eq!(mmd_rows(0, BLOCK + 3), BLOCK);
        assert_eq!(mmd_rows(1, BLOCK + 3), 3);
        assert_eq!(mmd_rows(2, BLOCK + 3), 0);
        assert_eq!(mmd_rows(1, 2 * BLOCK), BLOCK);
    }

    #[test]
    fn policy_samples_basic() {
        let kp = [-0.1, -0.2];
        let km = [0.0, -0.25];
        let pool = pool();
        let out =
            policy_samples(&problem(2, 1, 0.3, 0.5, 5), &kp, &km, &pool, 2100, 1030, 2).unwrap();
        assert_eq!(out.rho.len(), 2100);
        assert_eq!(out.mmd_s.len(), 2060);
        let tv: f64 = out.rho.iter().map(|r| (1.0 - r).max(0.0)).sum();
        assert!((tv - out.tv_sum).abs() < 1e-9);
        assert_eq!(out.state_moment[1], out.state_moment[2]);
        let other = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| {
                policy_samples(&problem(2, 1, 0.3, 0.5, 5), &kp, &km, &pool, 2100, 1030, 2).unwrap()
            });
        assert_eq!(out, other);
        // every MMD state is a pool state
        for row in out.mmd_s.chunks(2) {
            assert!(pool.chunks(2).any(|p| p == row));
        }
        assert_eq!(
            policy_samples(&problem(2, 1, 0.3, 0.5, 5), &kp, &km, &pool, 10, 11, 2)
                .unwrap_err()
                .arg(),
            "mmd_count"
        );
    }

    #[test]
    fn fixed_policy_samples_equal_the_dynamic_kernel() {
        let kp = [-0.1, -0.2, 0.3, 0.05];
        let km = [0.0, -0.25, 0.1, 0.2];
        let pool = pool();
        for (count, mmd) in [(0, 0), (7, 3), (300, 300), (2100, 1030), (3000, 64)] {
            let p = problem(2, 2, 0.3, 0.5, 5);
            let call = |allow_fixed| {
                policy_samples_impl(&p, &kp, &km, &pool, count, mmd, 2, allow_fixed).unwrap()
            };
            assert_eq!(call(true), call(false));
        }
    }

    /// `policy_samples_bytes` against what the kernel really holds at once (a counting allocator).
    #[test]
    fn bytes_estimate_bounds_what_the_kernel_holds() {
        let k = [0.1, -0.2];
        let pool = pool();
        let p = problem(2, 1, 0.3, 0.5, 7);
        for (count, mmd) in [(2usize, 2usize), (300, 64), (3000, 3000), (5000, 100)] {
            let (est, out, peak) = crate::mem::counting::measure(
                || policy_samples_bytes(2, 1, count, mmd),
                || policy_samples(&p, &k, &k, &pool, count, mmd, 0).unwrap(),
            );
            crate::mem::counting::check_estimate(
                &format!("policy_samples count {count} mmd_count {mmd}"),
                est,
                peak,
            );
            drop(out);
        }
    }

    /// An out-of-memory error of the policy samples names the argument that makes the arrays
    /// large: the MMD rows (n + 2m values each) or the samples.
    #[test]
    fn oversized_policy_samples_name_the_large_argument() {
        let pool = pool();
        let oom = |m: usize, count: usize, mmd_count: usize| {
            let k = vec![0.0; 2 * m];
            match policy_samples(
                &problem(2, m, 0.3, 0.5, 1),
                &k,
                &k,
                &pool,
                count,
                mmd_count,
                0,
            ) {
                Err(CoreError::OutOfMemory { arg, .. }) => arg,
                other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
            }
        };
        assert_eq!(oom(1, 1 << 40, 1 << 40), "mmd_count"); // 4 x 2^40 values of rows > 2^40 ratios
        assert_eq!(oom(1, 1 << 40, 2), "count");
        // 4 x 2^38 = 2^40 rows: not more than the samples
        assert_eq!(oom(1, 1 << 40, 1 << 38), "count");
        // m = 2: rows of n + 2m = 6 values (not n 2m = 8): 6 x 2^40 / 7 < 2^40 samples
        assert_eq!(oom(2, 1 << 40, (1 << 40) / 7), "count");
        assert_eq!(oom(2, 1 << 40, (1 << 40) / 5), "mmd_count");
    }

    /// The work the policy samples tick is their operations (the latency contract of
    /// `crate::interrupt`), counted per sample: a uniform (~22 operations) and m normals (~50:
    /// `philox::tests::ticked_work_counts_the_operations`), the pick, `K_pi s` and `K_mu s`
    /// (4mn), the action and both squared distances (8m), the log densities and the ratio's exp
    /// (~19), the TV term (2) and the state moment's triangle (n (n + 1)); an MMD sample (one in
    /// ten here) adds m normals and a pi action (2m) and copies its rows. n = 12 makes the state
    /// moment most of it, m = 12 the normals, n = m = 20 the products. The fixed-size kernels do the
    /// same operations as the dynamic one, so they must tick the same total, to the unit.
    #[test]
    fn ticked_work_counts_the_operations() {
        use crate::interrupt::tally;
        let run = |n: usize, m: usize, count: usize, allow_fixed: bool| {
            let p = problem(n, m, 0.4, 0.6, 5);
            let k: Vec<f64> = (0..m * n).map(|i| -0.02 * (i % 3) as f64).collect();
            let pool: Vec<f64> = (0..7 * n)
                .map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0)
                .collect();
            let (out, t) = tally::measure(|| {
                policy_samples_impl(&p, &k, &k, &pool, count, count / 10, 2, allow_fixed).unwrap()
            });
            assert_eq!(out.rho.len(), count);
            t
        };
        for (n, m) in [(12usize, 1usize), (1, 12), (6, 6), (20, 20)] {
            let count = 3000;
            let t = run(n, m, count, true);
            let (nf, mf) = (n as f64, m as f64);
            let sample =
                22.5 + 3.0 + 50.5 * mf + 4.0 * mf * nf + 8.0 * mf + 19.0 + 2.0 + nf * (nf + 1.0);
            let mmd = 50.5 * mf + 2.0 * mf + (nf + 2.0 * mf);
            let flops = count as f64 * sample + (count / 10) as f64 * mmd;
            tally::check_work(&format!("policy_samples n {n} m {m}"), t, flops);
        }
        for (n, m) in FIXED_SIZES {
            let count = 2 * SUB + 5;
            let (fixed, dynamic) = (run(n, m, count, true), run(n, m, count, false));
            assert_eq!(fixed.work, dynamic.work, "n {n} m {m}");
        }
    }

    /// `policy_samples_bytes` is the layout it documents, term by term (the counting test above
    /// checks that this layout covers what the kernel holds; its allowance of 25% + 48 KiB cannot
    /// see a term of a few KiB), at sizes where each term counts (n = 40, m = 30, a billion
    /// samples). The ratios; the MMD rows (a state and two actions); per block its partial sums
    /// (the TV sum and the state moment's triangle), its 4 pieces (slice references) of the ratios
    /// and MMD rows, 96 bytes for its work item (it holds 88: the block index and 5 slices) and the
    /// driver's slot; per thread the fixed kernel's buffers for n = m = 4 (reserved whatever n and
    /// m: the margin for smaller fixed kernels) and the dynamic kernel's K_pi s, K_mu s and
    /// action; the running total and the (n, n) state moment.
    #[test]
    fn policy_samples_bytes_is_its_layout() {
        for (n, m, count, mmd_count) in [
            (1usize, 1usize, 1usize, 0usize),
            (2, 1, 3000, 40),
            (4, 4, 5000, 5000),
            (40, 3, 100_000, 10),
            (3, 30, 1 << 30, 1 << 20),
        ] {
            let (nn, mm) = (n as u128, m as u128);
            let blocks = count.div_ceil(BLOCK);
            let part = 1 + nn * (nn + 1) / 2;
            let threads = par::threads_for(blocks.max(1), true) as u128;
            let per_thread = std::mem::size_of::<PolicyBuf<4, 4>>() as u128 + 8 * 3 * mm;
            let want = 8 * count as u128
                + 8 * mmd_count as u128 * (nn + 2 * mm)
                + blocks as u128 * (8 * part + 4 * 16 + 96)
                + par::overhead_bytes::<[usize; 10]>(blocks)
                + threads * per_thread
                + 8 * (part + nn * nn);
            assert_eq!(
                policy_samples_bytes(n, m, count, mmd_count),
                want,
                "n {n} m {m} count {count} mmd {mmd_count}"
            );
        }
    }
}
