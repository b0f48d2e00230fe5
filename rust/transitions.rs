//! Probe samples of MODEL.md section 4: the probe transitions of 4.2 (fixed-point and stability probes)
//! and the distribution probe's policy samples of 4.1.
//!
//! Samples are processed in blocks of [`BLOCK`] consecutive samples in parallel; each block's sums
//! run left to right from 0.0 and the block sums are then added in block order from 0.0, so results
//! are bit-identical for any number of threads.
//!
//! Memory: besides the ratios (one per sample), every block has partial sums for the ordered
//! reduction: `d^2 + d` values per block of [`BLOCK`] samples for the probe transitions (188 KB at
//! n = 16), `1 + n(n+1)/2` for the policy samples. The probe transitions run in windows of blocks
//! holding at most [`WINDOW_BYTES`] of partial sums, each window reduced in block order before the
//! next (the same additions in the same order, so the same bits). Both kernels are planned
//! ([`transitions_bytes`], [`policy_samples_bytes`]) and allocate fallibly; blocks tick the
//! interruption ([`crate::interrupt`]).

use crate::error::{CoreError, CoreResult};
use crate::model::{
    check_gain, clip_rho, feature_dim, features, features_fixed, matvec, matvec_fixed, pick, step,
    to_rows, FixedModel, Problem, RatioConsts, StepScratch, BLOCK,
};
use crate::philox::{fill_normals, fill_uniforms, Normals, Stream, Uniforms};
use crate::{interrupt, mem, par, streams};

/// Distribution-probe purposes (section 1; the registry is crate::streams).
pub use crate::streams::{
    DIST_MU_ACTION as PURPOSE_DIST_MU, DIST_PI_ACTION as PURPOSE_DIST_PI,
    DIST_STATE as PURPOSE_DIST_STATE,
};

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

/// Checks a state pool of `len / n` states.
fn check_pool(pool: &[f64], n: usize) -> CoreResult<usize> {
    if n == 0 || !pool.len().is_multiple_of(n) {
        return Err(CoreError::invalid(
            "pool",
            format!("length {} is not a multiple of n = {n}", pool.len()),
        ));
    }
    let rows = pool.len() / n;
    if rows == 0 {
        return Err(CoreError::invalid("pool", "must hold at least one state"));
    }
    Ok(rows)
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

/// Splits `v` into consecutive mutable pieces of the given lengths.
fn split_lengths<T>(
    mut v: &mut [T],
    lens: impl ExactSizeIterator<Item = usize>,
) -> CoreResult<Vec<&mut [T]>> {
    let mut out = mem::with_capacity("count", lens.len())?;
    for len in lens {
        let (head, tail) = v.split_at_mut(len);
        out.push(head);
        v = tail;
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

/// Samples whose draws are generated together in [`block_fixed`].
const SUB: usize = 256;
/// Samples from which the probe kernels share their blocks among threads.
const PAR_MIN_SAMPLES: usize = 2048;
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

/// One block of probe transitions with compile-time sizes: the same operations, in the same order,
/// as the dynamic closure in [`transitions_impl`], arranged in passes over sub-chunks of `SUB`
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
        if interrupt::tick((len * (2 * D * D + 8 * (N + M) * (N + M) + 64)) as u64) {
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
    transitions_impl(p, k_pi, k_mu, pool, count, repeats, base, iteration, true)
}

/// The bytes [`transitions`] holds at once for `count` samples in `repeats` sub-batches (n states, m
/// actions): the ratios, every block's partial sums, the sub-batch sums, the work items and the
/// per-thread scratch.
pub fn transitions_bytes(n: usize, m: usize, count: usize, repeats: usize) -> u128 {
    let d = feature_dim(n) as u128;
    let blocks = (count / BLOCK) as u128 + repeats as u128;
    let window = blocks.min((WINDOW_BYTES as u128 / (8 * (d * d + d))).max(1));
    let threads = par::threads_for(count.div_ceil(BLOCK).max(1), true) as u128;
    let scratch = std::mem::size_of::<SubBuf<4, 4>>() as u128 + 8 * (4 * (n + m) as u128 + 2 * d);
    mem::total(&[
        (count as u128, 8),             // ratios
        (blocks, 24 + 16),              // tasks, ratio pieces
        (window, 8 * (d * d + d) + 64), // a window's partial sums, items
        (1, par::overhead_bytes::<[usize; 6]>(window as usize)),
        (repeats as u128, 8 * (d * d + d) + 8 + 8 + 16), // sub-batch sums, counts
        (threads, scratch),
    ])
}

/// `transitions`, with the fixed-size kernels (n, m <= 4) allowed or not (tests compare the two).
#[allow(clippy::too_many_arguments)]
fn transitions_impl(
    p: &Problem,
    k_pi: &[f64],
    k_mu: &[f64],
    pool: &[f64],
    count: usize,
    repeats: usize,
    base: u64,
    iteration: u64,
    allow_fixed: bool,
) -> CoreResult<TransitionsOut> {
    transitions_windowed(
        p,
        k_pi,
        k_mu,
        pool,
        count,
        repeats,
        base,
        iteration,
        allow_fixed,
        WINDOW_BYTES,
    )
}

/// `transitions_impl` with windows of `window_bytes` of partial sums (tests vary it: the result does
/// not depend on it).
#[allow(clippy::too_many_arguments)]
fn transitions_windowed(
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
    let oom = |e: CoreError| match e {
        CoreError::OutOfMemory { available, .. } => CoreError::OutOfMemory {
            arg,
            bytes: planned,
            available,
        },
        e => e,
    };
    let tasks = try_tasks(repeats, count).map_err(oom)?;
    let part_len = d * d + d;
    let window = (window_bytes / (8 * part_len)).clamp(1, tasks.len().max(1));
    let mut partials: Vec<f64> = mem::zeroed(arg, window * part_len).map_err(oom)?;
    let mut rho = mem::zeroed(arg, count).map_err(oom)?;
    let mut rho_pieces =
        split_lengths(&mut rho, tasks.iter().map(|t| t.end - t.start)).map_err(oom)?;
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
                    let work = (2 * d * d + 8 * (n + m) * (n + m) + 64) as u64;
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

/// The distribution probe's draws (4.1): `count` samples with states picked from `pool`, actions
/// from mu, ratios pi/mu; the first `mmd_count` samples also get a pi action (the MMD set).
#[allow(clippy::too_many_arguments)]
pub fn policy_samples(
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
) -> CoreResult<PolicySamplesOut> {
    policy_samples_impl(
        n, m, sigma_pi, sigma_mu, seed, k_pi, k_mu, pool, count, mmd_count, iteration, true,
    )
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

/// `policy_samples`, with the fixed-size kernels (n, m <= 4) allowed or not (tests compare the two).
#[allow(clippy::too_many_arguments)]
fn policy_samples_impl(
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
    allow_fixed: bool,
) -> CoreResult<PolicySamplesOut> {
    for (arg, x) in [("sigma_pi", sigma_pi), ("sigma_mu", sigma_mu)] {
        if !(x.is_finite() && x > 0.0) {
            return Err(CoreError::invalid(
                arg,
                format!("must be finite and > 0, got {x}"),
            ));
        }
    }
    if m == 0 {
        return Err(CoreError::invalid(
            "k_pi",
            "action dimension m must be >= 1",
        ));
    }
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
    let oom = |e: CoreError| match e {
        CoreError::OutOfMemory { available, .. } => CoreError::OutOfMemory {
            arg,
            bytes: planned,
            available,
        },
        e => e,
    };
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
        split_lengths(&mut mmd_s, (0..nblocks).map(|b| mmd_rows(b, mmd_count) * n)).map_err(oom)?;
    let mut mmd_pi_pieces = split_lengths(
        &mut mmd_a_pi,
        (0..nblocks).map(|b| mmd_rows(b, mmd_count) * m),
    )
    .map_err(oom)?;
    let mut mmd_mu_pieces = split_lengths(
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
                let work = (4 * m * n + n * n + 32 * m + 64) as u64;
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
        if interrupt::tick((len * (4 * M * N + N * N + 32 * M + 64)) as u64) {
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
    /// sums added in order; one `model::step` per sample with draws read by index (uncached).
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

    /// The probe kernels, fixed-size and general, equal MODEL.md 4.1 / 4.2 written out, around
    /// BLOCK, SUB and PAR_MIN_SAMPLES and with sub-batches that start inside a block.
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
                        let got = transitions_impl(
                            &p,
                            &kp,
                            &km,
                            &pool,
                            count,
                            repeats,
                            30,
                            7,
                            allow_fixed,
                        )
                        .unwrap();
                        assert_eq!(got, want, "n {n} m {m} K {count} R {repeats}");
                    }
                }
            }
            for (count, mmd) in [(0, 0), (3, 3), (300, 257), (1025, 1025), (2049, 300)] {
                let want = policy_samples_oracle(n, m, 0.3, 0.5, 5, &kp, &km, &pool, count, mmd, 2);
                for allow_fixed in [true, false] {
                    let got = policy_samples_impl(
                        n,
                        m,
                        0.3,
                        0.5,
                        5,
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
        let ps = |sp: f64, sm: f64, m: usize, kp: &[f64], pool: &[f64], c: usize, mm: usize| {
            policy_samples(2, m, sp, sm, 1, kp, &k, pool, c, mm, 0)
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
        assert_eq!(ps(0.3, 0.5, 0, &[], &pool, 4, 4).unwrap_err().arg(), "k_pi");
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
        let bad_mu = policy_samples(2, 1, 0.3, 0.5, 1, &k, &[0.0, f64::NAN], &pool, 4, 4, 0);
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
    fn policy_samples_basic() {
        let kp = [-0.1, -0.2];
        let km = [0.0, -0.25];
        let pool = pool();
        let out = policy_samples(2, 1, 0.3, 0.5, 5, &kp, &km, &pool, 2100, 1030, 2).unwrap();
        assert_eq!(out.rho.len(), 2100);
        assert_eq!(out.mmd_s.len(), 2060);
        let tv: f64 = out.rho.iter().map(|r| (1.0 - r).max(0.0)).sum();
        assert!((tv - out.tv_sum).abs() < 1e-9);
        assert_eq!(out.state_moment[1], out.state_moment[2]);
        let other = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| policy_samples(2, 1, 0.3, 0.5, 5, &kp, &km, &pool, 2100, 1030, 2).unwrap());
        assert_eq!(out, other);
        // every MMD state is a pool state
        for row in out.mmd_s.chunks(2) {
            assert!(pool.chunks(2).any(|p| p == row));
        }
        assert_eq!(
            policy_samples(2, 1, 0.3, 0.5, 5, &kp, &km, &pool, 10, 11, 2)
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
            let fixed =
                policy_samples_impl(2, 2, 0.3, 0.5, 5, &kp, &km, &pool, count, mmd, 2, true)
                    .unwrap();
            let dynamic =
                policy_samples_impl(2, 2, 0.3, 0.5, 5, &kp, &km, &pool, count, mmd, 2, false)
                    .unwrap();
            assert_eq!(fixed, dynamic);
        }
    }

    #[test]
    fn fixed_kernels_equal_the_dynamic_kernel() {
        for p_mix in [0.0, 0.4, 1.0] {
            let p = problem(p_mix);
            let kp = [-0.1, -0.2];
            let km = [0.0, -0.25];
            let pool = pool();
            let fixed = transitions_impl(&p, &kp, &km, &pool, 2100, 3, 30, 4, true).unwrap();
            let dynamic = transitions_impl(&p, &kp, &km, &pool, 2100, 3, 30, 4, false).unwrap();
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
                let one = transitions_windowed(
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
                    let got = transitions_windowed(
                        &p, &kp, &km, &pool, count, repeats, 30, 2, fixed, bytes,
                    )
                    .unwrap();
                    assert_eq!(got, one, "count {count} repeats {repeats} window {bytes}");
                }
            }
        }
    }
    /// `transitions_bytes` and `policy_samples_bytes` against what the kernels really hold at once
    /// (a counting allocator).
    #[test]
    fn bytes_estimates_bound_what_the_probe_kernels_hold() {
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
        for (count, mmd) in [(2usize, 2usize), (300, 64), (3000, 3000), (5000, 100)] {
            let (est, out, peak) = crate::mem::counting::measure(
                || policy_samples_bytes(2, 1, count, mmd),
                || policy_samples(2, 1, 0.3, 0.5, 7, &k, &k, &pool, count, mmd, 0).unwrap(),
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
        let k = [0.0, 0.0];
        let pool = pool();
        let oom = |count: usize, mmd_count: usize| match policy_samples(
            2, 1, 0.3, 0.5, 1, &k, &k, &pool, count, mmd_count, 0,
        ) {
            Err(CoreError::OutOfMemory { arg, .. }) => arg,
            other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
        };
        assert_eq!(oom(1 << 40, 1 << 40), "mmd_count"); // 4 x 2^40 values of rows > 2^40 ratios
        assert_eq!(oom(1 << 40, 2), "count");
        assert_eq!(oom(1 << 40, 1 << 38), "count"); // 4 x 2^38 = 2^40 rows: not more than the samples
                                                    // m = 2: rows of n + 2m = 6 values (not n 2m = 8): 6 x 2^40 / 7 < 2^40 samples
        let k2 = [0.0; 4];
        let oom2 = |count: usize, mmd_count: usize| match policy_samples(
            2, 2, 0.3, 0.5, 1, &k2, &k2, &pool, count, mmd_count, 0,
        ) {
            Err(CoreError::OutOfMemory { arg, .. }) => arg,
            other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
        };
        assert_eq!(oom2(1 << 40, (1 << 40) / 7), "count");
        assert_eq!(oom2(1 << 40, (1 << 40) / 5), "mmd_count");
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
}
