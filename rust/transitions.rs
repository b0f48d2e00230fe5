//! The probe transitions of MODEL.md 4.2 (fixed-point and stability probes): states picked from the
//! pool, one step each, the TD sums A and b per sub-batch and the ratios. (The distribution probe's
//! policy samples of 4.1 are [`crate::policy_samples`].)
//!
//! Samples are processed in blocks of [`BLOCK`] consecutive samples in parallel; each block's sums
//! run left to right from 0.0 and the block sums are then added in block order from 0.0, so results
//! are bit-identical for any number of threads.
//!
//! Memory: besides the ratios (one per sample), every block has partial sums for the ordered
//! reduction: `d^2 + d` values per block of [`BLOCK`] samples (188 KB at n = 16). The blocks run in
//! windows holding at most [`WINDOW_BYTES`] of partial sums, each window reduced in block order
//! before the next (the same additions in the same order, so the same bits). The kernel is planned
//! ([`transitions_bytes`]) and allocates fallibly; blocks tick the interruption
//! ([`crate::interrupt`]).

use crate::checks::check_gain;
use crate::density::clip_rho;
use crate::error::{CoreError, CoreResult};
use crate::features::{feature_dim, features, features_fixed};
use crate::linalg::BLOCK;
use crate::lqg::{step, FixedModel, StepScratch};
use crate::philox::{fill_normals, fill_uniforms, Normals, Stream, Uniforms};
use crate::pool::{check_pool, pick};
use crate::problem::Problem;
use crate::{interrupt, mem, par, streams};

/// Probe transition sums (backend.TransitionSums).
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionsOut {
    pub repeats: usize,
    /// (R, d, d)
    pub a_sums: Vec<f64>,
    /// (R, d)
    pub b_sums: Vec<f64>,
    /// (R,)
    pub counts: Vec<u64>,
    /// (K,), unclipped
    pub rho: Vec<f64>,
}

/// Sub-batch `r` of `R` over `K` samples: `[floor(r K / R), floor((r+1) K / R))`.
pub fn sub_batch(r: usize, repeats: usize, count: usize) -> (usize, usize) {
    let lo = (r as u128 * count as u128 / repeats as u128) as usize;
    let hi = ((r as u128 + 1) * count as u128 / repeats as u128) as usize;
    (lo, hi)
}

/// One block task: sub-batch `r`, samples `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct Task {
    r: usize,
    start: usize,
    end: usize,
}

/// The number of [`tasks`] of `repeats` sub-batches over `count` samples (at most
/// `count / BLOCK + repeats`).
fn task_count(repeats: usize, count: usize) -> usize {
    (0..repeats)
        .map(|r| {
            let (lo, hi) = sub_batch(r, repeats, count);
            (hi - lo).div_ceil(BLOCK)
        })
        .sum()
}

/// Splits `[0, count)` into per-sub-batch blocks, in order (the tests' form of [`try_tasks`]).
#[cfg(test)]
fn tasks(repeats: usize, count: usize) -> Vec<Task> {
    try_tasks(repeats, count).unwrap()
}

/// Splits `[0, count)` into per-sub-batch blocks, in order, in one fallible allocation.
fn try_tasks(repeats: usize, count: usize) -> CoreResult<Vec<Task>> {
    let mut out = mem::with_capacity("count", task_count(repeats, count))?;
    for r in 0..repeats {
        let (lo, hi) = sub_batch(r, repeats, count);
        let mut start = lo;
        while start < hi {
            let end = (start + BLOCK).min(hi);
            out.push(Task { r, start, end });
            start = end;
        }
    }
    Ok(out)
}

struct TransScratch {
    step: StepScratch,
    za: Vec<f64>,
    ze: Vec<f64>,
    phi: Vec<f64>,
    phi_next: Vec<f64>,
}

/// Samples whose draws are generated together in [`block_fixed`] (and in
/// [`crate::policy_samples`]' fixed-size blocks).
pub(crate) const SUB: usize = 256;
/// Samples from which the probe kernels (these and [`crate::policy_samples`]) share their blocks
/// among threads.
pub(crate) const PAR_MIN_SAMPLES: usize = 2048;
/// Most bytes of the probe transitions' per-block partial sums held at once (one window of blocks).
pub const WINDOW_BYTES: usize = 32 << 20;

/// Per-thread scratch of [`block_fixed`]: one sub-chunk's draws and per-sample values.
struct SubBuf<const N: usize, const M: usize> {
    pick_u: [f64; SUB],
    mix_u: [f64; SUB],
    za: [[f64; M]; SUB],
    ze: [[f64; N]; SUB],
    idx: [usize; SUB],
    lpi: [f64; SUB],
    lmu: [f64; SUB],
    reward: [f64; SUB],
    s_next: [[f64; N]; SUB],
    rho: [f64; SUB],
}

impl<const N: usize, const M: usize> SubBuf<N, M> {
    fn new() -> Box<Self> {
        Box::new(SubBuf {
            pick_u: [0.0; SUB],
            mix_u: [0.0; SUB],
            za: [[0.0; M]; SUB],
            ze: [[0.0; N]; SUB],
            idx: [0; SUB],
            lpi: [0.0; SUB],
            lmu: [0.0; SUB],
            reward: [0.0; SUB],
            s_next: [[0.0; N]; SUB],
            rho: [0.0; SUB],
        })
    }
}

/// The interruption work of one sample ([`crate::interrupt`], roughly its flops): A's update
/// (2 d^2), and the draws and dynamics, bounded by `8 (n + m)^2 + 64`. The fixed-size kernel ticks
/// the same per sample.
#[inline(always)]
fn sample_work(n: usize, m: usize, d: usize) -> u64 {
    (2 * d * d + 8 * (n + m) * (n + m) + 64) as u64
}

/// One block of probe transitions with compile-time sizes: the same operations, in the same order,
/// as the dynamic closure in [`transitions_with`], arranged in passes over sub-chunks of `SUB`
/// samples (draws; dynamics; ratios; sums in sample order), as in the rollout.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_fixed<const N: usize, const M: usize, const D: usize>(
    fm: &FixedModel<N, M>,
    seed: u64,
    base: u64,
    iteration: u64,
    pool: &[f64],
    pool_len: usize,
    task: &Task,
    rho_out: &mut [f64],
    part: &mut [f64],
    buf: &mut SubBuf<N, M>,
) {
    let st_pick = Stream::new(seed, base + streams::PROBE_STATE, iteration, 0);
    let st_mix = Stream::new(seed, base + streams::PROBE_MIX, iteration, 0);
    let st_act = Stream::new(seed, base + streams::PROBE_ACTION, iteration, 0);
    let st_env = Stream::new(seed, base + streams::PROBE_ENV, iteration, 0);
    let mut a_part = [[0.0; D]; D];
    let mut b_part = [0.0; D];
    let mut k0 = task.start;
    while k0 < task.end {
        let len = SUB.min(task.end - k0);
        if interrupt::tick(len as u64 * sample_work(N, M, D)) {
            return; // the kernel is being stopped: its result is discarded
        }
        let slot0 = k0 - task.start;
        // (1) draws
        fill_uniforms(&st_pick, k0 as u64, &mut buf.pick_u[..len]);
        fill_uniforms(&st_mix, k0 as u64, &mut buf.mix_u[..len]);
        fill_normals(&st_act, (k0 * M) as u64, buf.za[..len].as_flattened_mut());
        fill_normals(&st_env, (k0 * N) as u64, buf.ze[..len].as_flattened_mut());
        // (2) dynamics
        for c in 0..len {
            let idx = pick(buf.pick_u[c], pool_len);
            buf.idx[c] = idx;
            let mut s = [0.0; N];
            s.copy_from_slice(&pool[idx * N..(idx + 1) * N]);
            let dy = fm.dynamics(&s, buf.mix_u[c], &buf.za[c], &buf.ze[c]);
            buf.lpi[c] = dy.lpi;
            buf.lmu[c] = dy.lmu;
            buf.reward[c] = dy.reward;
            buf.s_next[c] = dy.s_next;
        }
        // (3) ratios
        for c in 0..len {
            let rho = fm.ratio(buf.lpi[c], buf.lmu[c]).0;
            buf.rho[c] = rho;
            rho_out[slot0 + c] = rho;
        }
        // (4) sums, in sample order
        for c in 0..len {
            let idx = buf.idx[c];
            let mut s = [0.0; N];
            s.copy_from_slice(&pool[idx * N..(idx + 1) * N]);
            let rho_bar = clip_rho(buf.rho[c], fm.rho_clip);
            let phi = features_fixed::<N, D>(&s);
            let phi_next = features_fixed::<N, D>(&buf.s_next[c]);
            let mut e = [0.0; D];
            for j in 0..D {
                e[j] = phi[j] - fm.gamma * phi_next[j];
            }
            for i in 0..D {
                let cf = rho_bar * phi[i];
                for j in 0..D {
                    a_part[i][j] += cf * e[j];
                }
            }
            let rb = rho_bar * buf.reward[c];
            for i in 0..D {
                b_part[i] += rb * phi[i];
            }
        }
        k0 += len;
    }
    for i in 0..D {
        part[i * D..(i + 1) * D].copy_from_slice(&a_part[i]);
    }
    part[D * D..D * D + D].copy_from_slice(&b_part);
}

/// Probe transitions (4.2). `base` is the probe's state purpose; mix, action and environment use
/// `base + 1 .. base + 3`; the substream is 0 and `iteration` addresses the streams.
#[allow(clippy::too_many_arguments)]
pub fn transitions(
    p: &Problem,
    k_pi: &[f64],
    k_mu: &[f64],
    pool: &[f64],
    count: usize,
    repeats: usize,
    base: u64,
    iteration: u64,
) -> CoreResult<TransitionsOut> {
    transitions_with(
        p,
        k_pi,
        k_mu,
        pool,
        count,
        repeats,
        base,
        iteration,
        true,
        WINDOW_BYTES,
    )
}

/// The bytes [`transitions`] holds at once for `count` samples in `repeats` sub-batches (n states, m
/// actions): the ratios, every block's partial sums, the sub-batch sums, the work items and the
/// per-thread scratch.
pub fn transitions_bytes(n: usize, m: usize, count: usize, repeats: usize) -> u128 {
    let d = feature_dim(n) as u128;
    let blocks = (count / BLOCK) as u128 + repeats as u128;
    let window = blocks.min((WINDOW_BYTES as u128 / (8 * (d * d + d))).max(1));
    let threads = par::threads_for(count.div_ceil(BLOCK).max(1), true) as u128;
    let scratch =
        std::mem::size_of::<SubBuf<4, 4>>() as u128 + 8 * ((2 * n + 5 * m) as u128 + 2 * d);
    mem::total(&[
        (count as u128, 8),             // ratios
        (blocks, 24 + 16),              // tasks, ratio pieces
        (window, 8 * (d * d + d) + 64), // a window's partial sums, items
        (1, par::overhead_bytes::<[usize; 6]>(window as usize)),
        (repeats as u128, 8 * (d * d + d) + 8 + 8 + 16), // sub-batch sums, counts
        (threads, scratch),
    ])
}

/// `transitions`, with the fixed-size kernels (n, m <= 4) allowed or not and windows of
/// `window_bytes` of partial sums (tests vary both: the result depends on neither).
#[allow(clippy::too_many_arguments)]
fn transitions_with(
    p: &Problem,
    k_pi: &[f64],
    k_mu: &[f64],
    pool: &[f64],
    count: usize,
    repeats: usize,
    base: u64,
    iteration: u64,
    allow_fixed: bool,
    window_bytes: usize,
) -> CoreResult<TransitionsOut> {
    p.validate()?;
    check_gain("k_pi", k_pi, p.m, p.n)?;
    check_gain("k_mu", k_mu, p.m, p.n)?;
    let pool_len = check_pool(pool, p.n)?;
    if repeats == 0 {
        return Err(CoreError::invalid("repeats", "must be >= 1, got 0"));
    }
    if base > u64::MAX - 3 {
        return Err(CoreError::invalid("base", "must leave room for base + 3"));
    }
    let n = p.n;
    let m = p.m;
    let d = feature_dim(n);
    let rc = p.consts();
    // the argument that makes the arrays large
    let arg = if repeats > count / BLOCK {
        "repeats"
    } else {
        "count"
    };
    let planned = transitions_bytes(n, m, count, repeats);
    mem::plan(arg, planned)?;
    let oom = |e: CoreError| e.as_planned(arg, planned);
    let tasks = try_tasks(repeats, count).map_err(oom)?;
    let part_len = d * d + d;
    let window = (window_bytes / (8 * part_len)).clamp(1, tasks.len().max(1));
    let mut partials: Vec<f64> = mem::zeroed(arg, window * part_len).map_err(oom)?;
    let mut rho = mem::zeroed(arg, count).map_err(oom)?;
    let mut rho_pieces =
        par::split_lengths(&mut rho, tasks.iter().map(|t| t.end - t.start)).map_err(oom)?;
    let seed = p.seed;
    let mut a_sums: Vec<f64> = mem::zeroed(arg, repeats * d * d).map_err(oom)?;
    let mut b_sums: Vec<f64> = mem::zeroed(arg, repeats * d).map_err(oom)?;
    let mut counts: Vec<u64> = mem::zeroed(arg, repeats).map_err(oom)?;

    let parallel = count >= PAR_MIN_SAMPLES;
    // windows of blocks, each reduced in block order before the next
    let mut t0 = 0;
    while t0 < tasks.len() {
        let t1 = (t0 + window).min(tasks.len());
        let items: Vec<_> = mem::collect(
            arg,
            tasks[t0..t1]
                .iter()
                .zip(rho_pieces.drain(..t1 - t0))
                .zip(partials.chunks_mut(part_len)),
        )
        .map_err(oom)?;
        crate::dispatch_dims!(
            if allow_fixed { n } else { 0 },
            m,
            |NN, MM, DD| {
                let fm = FixedModel::<NN, MM>::new(p, k_pi, k_mu);
                par::for_each_item(
                    items,
                    parallel,
                    SubBuf::<NN, MM>::new,
                    |buf, _, ((task, rho_out), part)| {
                        block_fixed::<NN, MM, DD>(
                            &fm, seed, base, iteration, pool, pool_len, task, rho_out, part, buf,
                        );
                    },
                )
            },
            par::for_each_item(
                items,
                parallel,
                || TransScratch {
                    step: StepScratch::new(n, m),
                    za: vec![0.0; m],
                    ze: vec![0.0; n],
                    phi: vec![0.0; d],
                    phi_next: vec![0.0; d],
                },
                |sc, _, ((task, rho_out), part)| {
                    let mut pick_u =
                        Uniforms::new(Stream::new(seed, base + streams::PROBE_STATE, iteration, 0));
                    let mut mix =
                        Uniforms::new(Stream::new(seed, base + streams::PROBE_MIX, iteration, 0));
                    let mut act = Normals::new(Stream::new(
                        seed,
                        base + streams::PROBE_ACTION,
                        iteration,
                        0,
                    ));
                    let mut env =
                        Normals::new(Stream::new(seed, base + streams::PROBE_ENV, iteration, 0));
                    part.fill(0.0); // the window's buffer holds an earlier block's sums
                    let (a_part, b_part) = part.split_at_mut(d * d);
                    let work = sample_work(n, m, d);
                    for (slot, k) in (task.start..task.end).enumerate() {
                        if interrupt::tick(work) {
                            return; // the kernel is being stopped: its result is discarded
                        }
                        let ku = k as u64;
                        let idx = pick(pick_u.get(ku), pool_len);
                        let s = &pool[idx * n..(idx + 1) * n];
                        let u = mix.get(ku);
                        for j in 0..m {
                            sc.za[j] = act.get(ku * m as u64 + j as u64);
                        }
                        for i in 0..n {
                            sc.ze[i] = env.get(ku * n as u64 + i as u64);
                        }
                        let st = step(p, &rc, k_pi, k_mu, s, u, &sc.za, &sc.ze, &mut sc.step);
                        features(s, &mut sc.phi);
                        features(&sc.step.s_next, &mut sc.phi_next);
                        // e_j = phi_j(s) - gamma * phi_j(s'), kept in phi_next
                        for j in 0..d {
                            sc.phi_next[j] = sc.phi[j] - p.gamma * sc.phi_next[j];
                        }
                        for i in 0..d {
                            let c = st.rho_bar * sc.phi[i];
                            let row = &mut a_part[i * d..(i + 1) * d];
                            for j in 0..d {
                                row[j] += c * sc.phi_next[j];
                            }
                        }
                        let rb = st.rho_bar * st.reward;
                        for i in 0..d {
                            b_part[i] += rb * sc.phi[i];
                        }
                        rho_out[slot] = st.rho;
                    }
                },
            )
        )
        .map_err(oom)?;

        for (task, part) in tasks[t0..t1].iter().zip(partials.chunks_exact(part_len)) {
            let r = task.r;
            for (t, x) in a_sums[r * d * d..(r + 1) * d * d]
                .iter_mut()
                .zip(&part[..d * d])
            {
                *t += *x;
            }
            for (t, x) in b_sums[r * d..(r + 1) * d].iter_mut().zip(&part[d * d..]) {
                *t += *x;
            }
        }
        t0 = t1;
    }
    for (r, c) in counts.iter_mut().enumerate() {
        let (lo, hi) = sub_batch(r, repeats, count);
        *c = (hi - lo) as u64;
    }
    Ok(TransitionsOut {
        repeats,
        a_sums,
        b_sums,
        counts,
        rho,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lqg::{diag, FIXED_SIZES};

    const A: [f64; 4] = [0.9, 0.1, 0.0, 0.8];
    const B: [f64; 2] = [0.0, 1.0];
    const Q: [f64; 4] = [1.0, 0.0, 0.0, 1.0];
    const R: [f64; 1] = [0.1];

    fn problem(p_mix: f64) -> Problem<'static> {
        Problem {
            n: 2,
            m: 1,
            a: &A,
            b: &B,
            q: &Q,
            r: &R,
            sigma_eps: 0.1,
            sigma_0: 1.0,
            reward_scale: 0.5,
            sigma_pi: 0.3,
            sigma_mu: 0.5,
            p_mix,
            gamma: 0.9,
            rho_clip: 1.5,
            seed: 99,
        }
    }

    fn pool() -> Vec<f64> {
        (0..40)
            .map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0)
            .collect()
    }

    /// MODEL.md 4.2 written out plainly: sub-batch r holds k in [floor(rK/R), floor((r+1)K/R)),
    /// each block of BLOCK consecutive samples inside it summed left to right from 0.0, the block
    /// sums added in order; one `lqg::step` per sample with draws read by index (uncached).
    // the kernel's own argument list, mirrored
    #[allow(clippy::too_many_arguments)]
    fn transitions_oracle(
        p: &Problem,
        k_pi: &[f64],
        k_mu: &[f64],
        pool: &[f64],
        count: usize,
        repeats: usize,
        base: u64,
        iteration: u64,
    ) -> TransitionsOut {
        let (n, m) = (p.n, p.m);
        let d = feature_dim(n);
        let rc = p.consts();
        let pool_len = pool.len() / n;
        let st = |off: u64| Stream::new(p.seed, base + off, iteration, 0);
        let (pick_s, mix_s, act_s, env_s) = (st(0), st(1), st(2), st(3));
        let mut a_sums = vec![0.0; repeats * d * d];
        let mut b_sums = vec![0.0; repeats * d];
        let mut counts = Vec::new();
        let mut rho = Vec::new();
        let mut sc = StepScratch::new(n, m);
        for r in 0..repeats {
            let lo = r * count / repeats;
            let hi = (r + 1) * count / repeats;
            counts.push((hi - lo) as u64);
            let mut start = lo;
            while start < hi {
                let end = (start + BLOCK).min(hi);
                let mut a_blk = vec![0.0; d * d];
                let mut b_blk = vec![0.0; d];
                for k in start..end {
                    let ku = k as u64;
                    let idx = pick(pick_s.uniform(ku), pool_len);
                    let s = &pool[idx * n..(idx + 1) * n];
                    let za: Vec<f64> = (0..m as u64)
                        .map(|j| act_s.normal(ku * m as u64 + j))
                        .collect();
                    let ze: Vec<f64> = (0..n as u64)
                        .map(|i| env_s.normal(ku * n as u64 + i))
                        .collect();
                    let out = step(p, &rc, k_pi, k_mu, s, mix_s.uniform(ku), &za, &ze, &mut sc);
                    let mut f = vec![0.0; d];
                    let mut f2 = vec![0.0; d];
                    features(s, &mut f);
                    features(&sc.s_next, &mut f2);
                    for i in 0..d {
                        for j in 0..d {
                            a_blk[i * d + j] += (out.rho_bar * f[i]) * (f[j] - p.gamma * f2[j]);
                        }
                        b_blk[i] += (out.rho_bar * out.reward) * f[i];
                    }
                    rho.push(out.rho);
                }
                for i in 0..d * d {
                    a_sums[r * d * d + i] += a_blk[i];
                }
                for i in 0..d {
                    b_sums[r * d + i] += b_blk[i];
                }
                start = end;
            }
        }
        TransitionsOut {
            repeats,
            a_sums,
            b_sums,
            counts,
            rho,
        }
    }

    /// The probe transitions, fixed-size and general, equal MODEL.md 4.2 written out, around BLOCK,
    /// SUB and PAR_MIN_SAMPLES and with sub-batches that start inside a block.
    #[test]
    fn probe_kernels_equal_the_model_written_out() {
        let a3 = [0.6, 0.1, 0.0, -0.2, 0.5, 0.1, 0.05, 0.0, 0.4];
        let b3 = [0.0, 1.0, 0.5, -0.3, 1.0, 0.2];
        let q3 = [1.0, 0.1, 0.0, 0.1, 2.0, 0.0, 0.0, 0.0, 0.5];
        let r3 = [0.1, 0.01, 0.01, 0.2];
        let a5: Vec<f64> = (0..25)
            .map(|i| {
                if i % 6 == 0 {
                    0.5
                } else {
                    0.02 * i as f64 - 0.25
                }
            })
            .collect();
        let b5: Vec<f64> = (0..5).map(|i| 0.3 * i as f64 - 0.5).collect();
        let q5: Vec<f64> = (0..25)
            .map(|i| if i % 6 == 0 { 1.0 } else { 0.0 })
            .collect();
        // (n, m, A, B, Q, R): a table of test cases
        #[allow(clippy::type_complexity)]
        let cases: [(usize, usize, &[f64], &[f64], &[f64], &[f64]); 3] = [
            (2, 1, &A, &B, &Q, &R),
            (3, 2, &a3, &b3, &q3, &r3),
            (5, 1, &a5, &b5, &q5, &R),
        ];
        for (n, m, a, b, q, r) in cases {
            let pool: Vec<f64> = (0..37 * n)
                .map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0)
                .collect();
            let kp: Vec<f64> = (0..m * n).map(|i| 0.1 * (i as f64 * 1.3).cos()).collect();
            let km: Vec<f64> = (0..m * n).map(|i| 0.1 * (i as f64 * 0.7).sin()).collect();
            for (p_mix, clip) in [(0.3, 1.2), (0.0, f64::INFINITY), (1.0, 0.5)] {
                let p = Problem {
                    n,
                    m,
                    a,
                    b,
                    q,
                    r,
                    ..problem(p_mix)
                };
                let p = Problem {
                    rho_clip: clip,
                    ..p
                };
                for (count, repeats) in [(0, 1), (1, 1), (5, 3), (600, 2), (2049, 2), (2050, 5)] {
                    let want = transitions_oracle(&p, &kp, &km, &pool, count, repeats, 30, 7);
                    for allow_fixed in [true, false] {
                        let got = transitions_with(
                            &p,
                            &kp,
                            &km,
                            &pool,
                            count,
                            repeats,
                            30,
                            7,
                            allow_fixed,
                            WINDOW_BYTES,
                        )
                        .unwrap();
                        assert_eq!(got, want, "n {n} m {m} K {count} R {repeats}");
                    }
                }
            }
        }
    }

    #[test]
    fn input_errors_name_the_argument() {
        let p = problem(0.3);
        let k = [0.0, 0.0];
        let pool = [1.0, 2.0, 3.0, 4.0];
        assert!(transitions(&p, &k, &k, &pool, 3, 1, 20, 0).is_ok());
        let arg = |r: CoreResult<TransitionsOut>| r.unwrap_err().arg();
        assert_eq!(
            arg(transitions(&p, &k[..1], &k, &pool, 3, 1, 20, 0)),
            "k_pi"
        );
        assert_eq!(
            arg(transitions(&p, &k, &[f64::NAN, 0.0], &pool, 3, 1, 20, 0)),
            "k_mu"
        );
        assert_eq!(
            arg(transitions(&p, &k, &k, &pool[..3], 3, 1, 20, 0)),
            "pool"
        );
        assert_eq!(arg(transitions(&p, &k, &k, &[], 3, 1, 20, 0)), "pool");
        assert_eq!(arg(transitions(&p, &k, &k, &pool, 3, 0, 20, 0)), "repeats");
        assert_eq!(
            arg(transitions(&p, &k, &k, &pool, 3, 1, u64::MAX - 2, 0)),
            "base"
        );
        assert!(transitions(&p, &k, &k, &pool, 3, 1, u64::MAX - 3, 0).is_ok());
        let bad = Problem {
            gamma: f64::NAN,
            ..p
        };
        assert_eq!(arg(transitions(&bad, &k, &k, &pool, 3, 1, 20, 0)), "gamma");
    }

    #[test]
    fn tasks_split_sub_batches_into_blocks() {
        let t = tasks(2, 2 * BLOCK + 2);
        let spans: Vec<(usize, usize, usize)> = t.iter().map(|t| (t.r, t.start, t.end)).collect();
        assert_eq!(
            spans,
            vec![
                (0, 0, BLOCK),
                (0, BLOCK, BLOCK + 1),
                (1, BLOCK + 1, 2 * BLOCK + 1),
                (1, 2 * BLOCK + 1, 2 * BLOCK + 2)
            ]
        );
    }

    #[test]
    fn sub_batches_partition_samples() {
        for (r_, k_) in [(1, 10), (3, 10), (4, 4), (5, 3), (7, 3000)] {
            let mut next = 0;
            for r in 0..r_ {
                let (lo, hi) = sub_batch(r, r_, k_);
                assert_eq!(lo, next);
                next = hi;
            }
            assert_eq!(next, k_);
        }
    }

    #[test]
    fn transitions_thread_invariant_and_consistent() {
        let p = problem(0.3);
        let kp = [-0.1, -0.2];
        let km = [0.0, -0.25];
        let pool = pool();
        let run = |threads: usize, repeats: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| transitions(&p, &kp, &km, &pool, 2500, repeats, 20, 4).unwrap())
        };
        let one = run(1, 3);
        assert_eq!(one, run(3, 3));
        assert_eq!(one.counts, vec![833, 833, 834]);
        // ratios do not depend on the sub-batch split, sums nearly do
        let single = run(2, 1);
        assert_eq!(single.rho, one.rho);
        let d = 6;
        for i in 0..d * d {
            let tot: f64 = (0..3).map(|r| one.a_sums[r * d * d + i]).sum();
            assert!((tot - single.a_sums[i]).abs() <= 1e-9 * (1.0 + tot.abs()));
        }
        assert!(one
            .rho
            .iter()
            .all(|&r| r.is_finite() && r > 0.0 && r <= 1.0 / 0.3 + 1e-12));
    }

    #[test]
    fn fixed_kernels_equal_the_dynamic_kernel() {
        for p_mix in [0.0, 0.4, 1.0] {
            let p = problem(p_mix);
            let kp = [-0.1, -0.2];
            let km = [0.0, -0.25];
            let pool = pool();
            let fixed =
                transitions_with(&p, &kp, &km, &pool, 2100, 3, 30, 4, true, WINDOW_BYTES).unwrap();
            let dynamic =
                transitions_with(&p, &kp, &km, &pool, 2100, 3, 30, 4, false, WINDOW_BYTES).unwrap();
            assert_eq!(fixed, dynamic);
        }
    }
    /// Windows of blocks change no bit: one block per window, a few, all; fixed-size and dynamic
    /// kernels; sub-batches that split blocks.
    #[test]
    fn windows_of_block_sums_keep_the_bits() {
        let a = [0.9, 0.1, 0.0, 0.8];
        let b = [0.0, 1.0];
        let q = [1.0, 0.0, 0.0, 1.0];
        let r = [0.1];
        let p = Problem {
            n: 2,
            m: 1,
            a: &a,
            b: &b,
            q: &q,
            r: &r,
            sigma_eps: 0.1,
            sigma_0: 1.0,
            reward_scale: 0.5,
            sigma_pi: 0.3,
            sigma_mu: 0.5,
            p_mix: 0.2,
            gamma: 0.9,
            rho_clip: 2.0,
            seed: 5,
        };
        let pool: Vec<f64> = (0..40).map(|i| ((i * 7 % 13) as f64 - 6.0) * 0.3).collect();
        let (kp, km) = ([-0.1, -0.2], [0.05, -0.3]);
        let part = (6 * 6 + 6) * 8;
        for (count, repeats) in [(5 * BLOCK + 17, 3), (2 * BLOCK, 16), (100, 1), (0, 2)] {
            for fixed in [true, false] {
                let one = transitions_with(
                    &p,
                    &kp,
                    &km,
                    &pool,
                    count,
                    repeats,
                    30,
                    2,
                    fixed,
                    usize::MAX / 2,
                )
                .unwrap();
                for bytes in [1, part, 2 * part, 5 * part] {
                    let got =
                        transitions_with(&p, &kp, &km, &pool, count, repeats, 30, 2, fixed, bytes)
                            .unwrap();
                    assert_eq!(got, one, "count {count} repeats {repeats} window {bytes}");
                }
            }
        }
    }
    /// `transitions_bytes` against what the kernel really holds at once (a counting allocator).
    #[test]
    fn bytes_estimate_bounds_what_the_kernel_holds() {
        let p = problem(0.3);
        let k = [0.1, -0.2];
        let pool = pool();
        for (count, repeats) in [(1usize, 1usize), (300, 1), (300, 16), (3000, 4), (5000, 16)] {
            let (est, out, peak) = crate::mem::counting::measure(
                || transitions_bytes(2, 1, count, repeats),
                || transitions(&p, &k, &k, &pool, count, repeats, 20, 0).unwrap(),
            );
            crate::mem::counting::check_estimate(
                &format!("transitions count {count} repeats {repeats}"),
                est,
                peak,
            );
            drop(out);
        }
    }

    /// The probe transitions name the sub-batches when there are more of them than blocks of
    /// samples, else the samples (a tie names the samples).
    #[test]
    fn oversized_transitions_name_the_large_argument() {
        let p = problem(0.3);
        let k = [0.0, 0.0];
        let pool = pool();
        let oom = |count: usize, repeats: usize| match transitions(
            &p, &k, &k, &pool, count, repeats, 20, 0,
        ) {
            Err(CoreError::OutOfMemory { arg, .. }) => arg,
            other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
        };
        assert_eq!(oom(1 << 40, 1), "count");
        assert_eq!(oom(1 << 40, 1 << 30), "count"); // 2^40 / BLOCK = 2^30 blocks: a tie
        assert_eq!(oom(1 << 40, (1 << 30) + 1), "repeats");
    }

    /// The work the probe transitions tick is their floating-point operations (the latency
    /// contract of `crate::interrupt`), counted per sample: the draws (2 uniforms ~22 operations
    /// each, n + m normals ~50: `philox::tests::ticked_work_counts_the_operations`), the pick of a
    /// pool state, the transition (`K_pi s`, `K_mu s`, the action and both log densities, the
    /// ratio's exp ~15, `A s + B a`, the reward's two quadratic forms), both states' features,
    /// `e = phi - gamma phi'` and the sums A (2 d^2 + d) and b (2d + 1). n = 12 (d = 91) makes A's
    /// update most of it, m = 12 at n = 1, 2 the draws and the transition (n + m sets their size,
    /// not n m). The fixed-size kernels do the same operations as the dynamic one, so they must
    /// tick the same total, to the unit.
    #[test]
    fn ticked_work_counts_the_flops() {
        use crate::interrupt::tally;
        let run = |n: usize, m: usize, count: usize, allow_fixed: bool| {
            let (a, q, r) = (diag(n, 0.5), diag(n, 1.0), diag(m, 0.3));
            let b: Vec<f64> = (0..n * m).map(|i| 0.1 + 0.01 * i as f64).collect();
            let p = Problem {
                n,
                m,
                a: &a,
                b: &b,
                q: &q,
                r: &r,
                ..problem(0.4)
            };
            let k: Vec<f64> = (0..m * n).map(|i| -0.02 * (i % 3) as f64).collect();
            let pool: Vec<f64> = (0..7 * n)
                .map(|i| ((i * 37 % 17) as f64 - 8.0) / 5.0)
                .collect();
            let (out, t) = tally::measure(|| {
                transitions_with(
                    &p,
                    &k,
                    &k,
                    &pool,
                    count,
                    3,
                    20,
                    1,
                    allow_fixed,
                    WINDOW_BYTES,
                )
                .unwrap()
            });
            assert_eq!(out.rho.len(), count);
            t
        };
        for (n, m) in [(12usize, 2usize), (1, 12), (2, 12)] {
            let count = 200;
            let t = run(n, m, count, true);
            let (nf, mf, d) = (n as f64, m as f64, feature_dim(n) as f64);
            let draws = 2.0 * 22.5 + 50.5 * (nf + mf) + 3.0;
            let transition = crate::lqg::step_flops(nf, mf);
            let sums = nf * (nf + 1.0) + 2.0 * d + (2.0 * d * d + d) + (2.0 * d + 1.0);
            let flops = count as f64 * (draws + transition + sums);
            tally::check_work(&format!("transitions n {n} m {m}"), t, flops);
        }
        // sizes of the fixed-size kernels, across a sub-chunk of samples
        for (n, m) in FIXED_SIZES {
            let count = 2 * SUB + 5;
            let (fixed, dynamic) = (run(n, m, count, true), run(n, m, count, false));
            assert_eq!(fixed.work, dynamic.work, "n {n} m {m}");
        }
    }

    /// `transitions_bytes` is the layout it documents, term by term (the counting test above checks
    /// that this layout covers what the kernel holds; its allowance of 25% + 48 KiB cannot see a
    /// term of a few KiB), at sizes where each term counts: a window cap that binds (n = 12),
    /// a million sub-batches, n = 40. The ratios; per block (at most count / BLOCK + repeats: each
    /// sub-batch may end with a partial one) its task (3 indices) and its piece of the ratios (a
    /// slice reference); one window of blocks' partial sums (A and b) with 64 bytes for each
    /// block's work item (it holds 40: margin) and the driver's slots; per sub-batch its A and b
    /// sums, its count and 24 bytes of margin; per thread the fixed kernel's buffers for
    /// n = m = 4 (reserved whatever n and m: the margin for smaller fixed kernels) and the dynamic
    /// kernel's vectors (za, K_pi s, K_mu s, the action and its score: m each; ze and the next
    /// state: n each; phi and e: d each).
    #[test]
    fn transitions_bytes_is_its_layout() {
        for (n, m, count, repeats) in [
            (1usize, 1usize, 1usize, 1usize),
            (2, 1, 300, 16),
            (4, 4, 5000, 3),
            (12, 2, 10_000_000, 7),
            (1, 12, 1 << 40, 1 << 20),
            (40, 3, 100_000, 5),
        ] {
            let (nn, mm, d) = (n as u128, m as u128, feature_dim(n) as u128);
            let blocks = (count / BLOCK + repeats) as u128;
            let sums = 8 * (d * d + d);
            let window = blocks.min((WINDOW_BYTES as u128 / sums).max(1));
            let threads = par::threads_for(count.div_ceil(BLOCK).max(1), true) as u128;
            let per_thread =
                std::mem::size_of::<SubBuf<4, 4>>() as u128 + 8 * (2 * nn + 5 * mm + 2 * d);
            let want = 8 * count as u128
                + blocks * (24 + 16)
                + window * (sums + 64)
                + par::overhead_bytes::<[usize; 6]>(window as usize)
                + repeats as u128 * (sums + 8 + 24)
                + threads * per_thread;
            assert_eq!(
                transitions_bytes(n, m, count, repeats),
                want,
                "n {n} m {m} count {count} repeats {repeats}"
            );
        }
    }
}
