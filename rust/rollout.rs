//! The rollout of MODEL.md section 3: `batch` trajectories of `horizon` steps from the defensive
//! mixture, with the TD, actor and Gram sums of step 3.
//!
//! Trajectories run in parallel ([`par`], for batches of at least `PAR_MIN_STEPS` transitions); each
//! produces its own partial sums (left to right over its steps, from 0.0), and the partials are then
//! added sequentially in trajectory order from 0.0. The result is therefore bit-identical for any
//! number of threads.
//!
//! Memory: besides the outputs (states, rewards, ratios), every trajectory produces partial sums
//! (`2 + d + m n + d(d+1)/2` values, 97 KB at n = m = 16) that are added in trajectory order. The
//! trajectories run in windows holding at most [`WINDOW_BYTES`] of partial sums, each window's sums
//! added to the running total in order before the next window starts (the same additions in the
//! same order, so the same bits), so the scratch stays bounded whatever `batch`. The whole is planned
//! against the available memory ([`rollout_bytes`]) and allocated fallibly. Trajectories tick the
//! interruption every chunk of steps ([`crate::interrupt`]).

use crate::checks::{check_finite, check_gain};
use crate::density::{clip_rho, RatioConsts};
use crate::error::{CoreError, CoreResult};
use crate::features::{feature_dim, features, features_fixed};
use crate::linalg::{dot, dot_fixed};
use crate::lqg::{step, FixedModel, StepScratch};
use crate::philox::{fill_normals, fill_uniforms, Normals, Stream, Uniforms};
use crate::problem::Problem;
use crate::{interrupt, mem, par};

/// The rollout's purposes (section 1; the registry is crate::streams).
pub use crate::streams::{
    ROLL_ACTION as PURPOSE_ACTION, ROLL_ENV as PURPOSE_ENV, ROLL_INIT as PURPOSE_START,
    ROLL_MIX as PURPOSE_MIX,
};

/// One iteration's rollout with its sums (backend.RolloutBatch).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOut {
    pub batch: usize,
    pub horizon: usize,
    /// (batch, horizon + 1, n)
    pub states: Vec<f64>,
    /// (batch, horizon)
    pub rewards: Vec<f64>,
    /// (batch, horizon), unclipped
    pub rho: Vec<f64>,
    pub count: u64,
    pub td_sq: f64,
    pub rho2: f64,
    /// (m, n)
    pub grad_k: Vec<f64>,
    /// (d, d) C = sum phi phi^T
    pub gram: Vec<f64>,
    /// (d, d) A = sum rho_bar phi (phi - gamma phi')^T
    pub a: Vec<f64>,
    /// (d,) b = sum rho_bar r phi
    pub b: Vec<f64>,
    /// (d, d) C_rho = sum rho_bar phi phi^T ([`STATS_CROSS`])
    pub c_rho: Option<Vec<f64>>,
    /// (d, d) A_e, the follow-on-weighted A ([`STATS_EMPHASIS`])
    pub a_e: Option<Vec<f64>>,
    /// (d,) b_e
    pub b_e: Option<Vec<f64>>,
}

/// Optional statistics of [`rollout`] (MODEL.md 3.3): C_rho (gradient TD).
pub const STATS_CROSS: u32 = 1;
/// Optional statistics of [`rollout`]: the emphatic A_e, b_e (follow-on trace, interest 1).
pub const STATS_EMPHASIS: u32 = 2;

/// Layout of one trajectory's partial sums: td_sq, rho2, grad_k (m*n), gram upper triangle
/// (d(d+1)/2, row-major i <= k), A (d*d), b (d), then with [`STATS_CROSS`] C_rho's upper triangle,
/// with [`STATS_EMPHASIS`] A_e (d*d) and b_e (d).
struct Layout {
    d: usize,
    mn: usize,
    cross: bool,
    emph: bool,
    len: usize,
}

impl Layout {
    fn new(n: usize, m: usize, stats: u32) -> Self {
        let d = feature_dim(n);
        let mn = m * n;
        let tri = d * (d + 1) / 2;
        let cross = stats & STATS_CROSS != 0;
        let emph = stats & STATS_EMPHASIS != 0;
        Layout {
            d,
            mn,
            cross,
            emph,
            len: 2
                + mn
                + tri
                + d * d
                + d
                + if cross { tri } else { 0 }
                + if emph { d * d + d } else { 0 },
        }
    }
    #[inline(always)]
    fn grad_k(&self) -> usize {
        2
    }
    #[inline(always)]
    fn gram(&self) -> usize {
        2 + self.mn
    }
    #[inline(always)]
    fn a(&self) -> usize {
        self.gram() + self.d * (self.d + 1) / 2
    }
    #[inline(always)]
    fn b(&self) -> usize {
        self.a() + self.d * self.d
    }
    #[inline(always)]
    fn c_rho(&self) -> usize {
        self.b() + self.d
    }
    #[inline(always)]
    fn a_e(&self) -> usize {
        self.c_rho()
            + if self.cross {
                self.d * (self.d + 1) / 2
            } else {
                0
            }
    }
    #[inline(always)]
    fn b_e(&self) -> usize {
        self.a_e() + self.d * self.d
    }
}

struct TrajScratch {
    step: StepScratch,
    s: Vec<f64>,
    za: Vec<f64>,
    ze: Vec<f64>,
    phi: Vec<f64>,
    phi_next: Vec<f64>,
    e: Vec<f64>,
}

impl TrajScratch {
    fn new(n: usize, m: usize) -> Self {
        let d = feature_dim(n);
        TrajScratch {
            step: StepScratch::new(n, m),
            s: vec![0.0; n],
            za: vec![0.0; m],
            ze: vec![0.0; n],
            phi: vec![0.0; d],
            phi_next: vec![0.0; d],
            e: vec![0.0; d],
        }
    }
}

/// Checks the rollout's inputs.
pub fn validate(
    p: &Problem,
    w: &[f64],
    k_pi: &[f64],
    k_mu: &[f64],
    batch: usize,
    horizon: usize,
) -> CoreResult<()> {
    p.validate()?;
    let d = p.d();
    if w.len() != d {
        return Err(CoreError::shape("w", &[d], &[w.len()]));
    }
    check_finite("w", w)?;
    check_gain("k_pi", k_pi, p.m, p.n)?;
    check_gain("k_mu", k_mu, p.m, p.n)?;
    if batch == 0 {
        return Err(CoreError::invalid("batch", "must be >= 1, got 0"));
    }
    if horizon == 0 {
        return Err(CoreError::invalid("horizon", "must be >= 1, got 0"));
    }
    batch
        .checked_mul(horizon + 1)
        .and_then(|x| x.checked_mul(p.n))
        .ok_or_else(|| CoreError::invalid("batch", "batch * (horizon + 1) * n overflows"))?;
    Ok(())
}

/// MODEL.md 3.3 for one transition: `a[i][j] += (weight*phi_i)*e_j`, `b[i] += (weight*r)*phi_i`,
/// with `ab` holding A (d*d, row-major) then b (d); weight rho_bar (A, b) or F*rho_bar (A_e, b_e).
#[inline(always)]
fn add_weighted(ab: &mut [f64], weight: f64, reward: f64, phi: &[f64], e: &[f64]) {
    let d = phi.len();
    let (a, b) = ab.split_at_mut(d * d);
    let wr = weight * reward;
    for i in 0..d {
        let wf = weight * phi[i];
        for (x, ej) in a[i * d..(i + 1) * d].iter_mut().zip(e) {
            *x += wf * ej;
        }
        b[i] += wr * phi[i];
    }
}

/// [`add_weighted`] with compile-time sizes (the fixed-size kernel's arrays).
#[inline(always)]
fn add_weighted_fixed<const D: usize>(
    a: &mut [[f64; D]; D],
    b: &mut [f64; D],
    weight: f64,
    reward: f64,
    phi: &[f64; D],
    e: &[f64; D],
) {
    let wr = weight * reward;
    for i in 0..D {
        let wf = weight * phi[i];
        for j in 0..D {
            a[i][j] += wf * e[j];
        }
        b[i] += wr * phi[i];
    }
}

/// The interruption work of one step ([`crate::interrupt`], roughly its flops): the sums' d x d
/// updates (A 2 d^2, the Gram matrix d^2; C_rho d^2 and A_e 2 d^2 when asked), and the draws and
/// dynamics, bounded by `8 (n + m)^2 + 64`. The fixed-size kernel ticks the same per step.
#[inline(always)]
fn step_work(n: usize, m: usize, d: usize, lay: &Layout) -> u64 {
    let squares = 3 + lay.cross as usize + 2 * lay.emph as usize;
    (squares * d * d + 8 * (n + m) * (n + m) + 64) as u64
}

/// One trajectory: writes its states, rewards and ratios, and its partial sums into `part`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn trajectory(
    p: &Problem,
    rc: &RatioConsts,
    lay: &Layout,
    w: &[f64],
    k_pi: &[f64],
    k_mu: &[f64],
    iteration: u64,
    j: u64,
    states: &mut [f64],
    rewards: &mut [f64],
    rhos: &mut [f64],
    part: &mut [f64],
    sc: &mut TrajScratch,
) {
    let n = p.n;
    let m = p.m;
    let d = lay.d;
    let seed = p.seed;
    let mut start = Normals::new(Stream::new(seed, PURPOSE_START, iteration, j));
    let mut mix = Uniforms::new(Stream::new(seed, PURPOSE_MIX, iteration, j));
    let mut act = Normals::new(Stream::new(seed, PURPOSE_ACTION, iteration, j));
    let mut env = Normals::new(Stream::new(seed, PURPOSE_ENV, iteration, j));

    for i in 0..n {
        sc.s[i] = p.sigma_0 * start.get(i as u64);
    }
    states[..n].copy_from_slice(&sc.s);
    part.fill(0.0);
    features(&sc.s, &mut sc.phi);
    let mut v = dot(w, &sc.phi);
    let (gk, gg) = (lay.grad_k(), lay.gram());
    let (ga, gb, gc, gae, gbe) = (lay.a(), lay.b(), lay.c_rho(), lay.a_e(), lay.b_e());
    let mut trace = 1.0; // the follow-on trace F_h: F_0 = 1, F_{h+1} = 1 + (gamma*rho_bar_h)*F_h
    let horizon = rewards.len();
    let work = step_work(n, m, d, lay);
    for h in 0..horizon {
        if interrupt::tick(work) {
            return; // the kernel is being stopped: its result is discarded
        }
        let hu = h as u64;
        let u = mix.get(hu);
        for k in 0..m {
            sc.za[k] = act.get(hu * m as u64 + k as u64);
        }
        for i in 0..n {
            sc.ze[i] = env.get(hu * n as u64 + i as u64);
        }
        let st = step(p, rc, k_pi, k_mu, &sc.s, u, &sc.za, &sc.ze, &mut sc.step);
        features(&sc.step.s_next, &mut sc.phi_next);
        let v_next = dot(w, &sc.phi_next);
        let delta = (st.reward + p.gamma * v_next) - v;

        part[0] += delta * delta;
        part[1] += st.rho * st.rho;
        let g = st.rho_bar * delta;
        for j in 0..d {
            sc.e[j] = sc.phi[j] - p.gamma * sc.phi_next[j];
        }
        add_weighted(&mut part[ga..gb + d], st.rho_bar, st.reward, &sc.phi, &sc.e);
        if lay.cross {
            let mut c = gc;
            for i in 0..d {
                let rf = st.rho_bar * sc.phi[i];
                for k in i..d {
                    part[c] += rf * sc.phi[k];
                    c += 1;
                }
            }
        }
        if lay.emph {
            add_weighted(
                &mut part[gae..gbe + d],
                trace * st.rho_bar,
                st.reward,
                &sc.phi,
                &sc.e,
            );
            trace = 1.0 + (p.gamma * st.rho_bar) * trace;
        }
        for i in 0..m {
            let gd = g * sc.step.dpi[i];
            for jj in 0..n {
                part[gk + i * n + jj] += gd * sc.s[jj];
            }
        }
        let mut c = gg;
        for i in 0..d {
            let pi = sc.phi[i];
            for k in i..d {
                part[c] += pi * sc.phi[k];
                c += 1;
            }
        }

        rewards[h] = st.reward;
        rhos[h] = st.rho;
        states[(h + 1) * n..(h + 2) * n].copy_from_slice(&sc.step.s_next);
        sc.s.copy_from_slice(&sc.step.s_next);
        std::mem::swap(&mut sc.phi, &mut sc.phi_next);
        v = v_next;
    }
}

/// Steps whose random draws are generated together, ahead of the steps that use them.
const CHUNK: usize = 256;
/// Transitions per work item of the parallel driver (whole trajectories are grouped up to this).
const ITEM_STEPS: usize = 64;
/// Transitions from which a rollout is shared among threads.
const PAR_MIN_STEPS: usize = 512;
/// Most bytes of per-trajectory partial sums held at once (one window of trajectories).
pub const WINDOW_BYTES: usize = 32 << 20;

/// `(trajectories per work item, trajectories per window)` for partial sums of `part_len` values:
/// items of at least `ITEM_STEPS` steps (fewer trajectories when their partial sums are large, so
/// a window holds at least 32 items), windows of whole items within [`WINDOW_BYTES`].
fn windows(part_len: usize, horizon: usize, batch: usize) -> (usize, usize) {
    windows_of(WINDOW_BYTES, part_len, horizon, batch)
}

/// [`windows`] for windows of `window_bytes`.
fn windows_of(
    window_bytes: usize,
    part_len: usize,
    horizon: usize,
    batch: usize,
) -> (usize, usize) {
    let fit = (window_bytes / (8 * part_len.max(1))).max(1);
    let per_item = ITEM_STEPS
        .div_ceil(horizon.max(1))
        .clamp(1, (fit / 32).max(1));
    let window = (fit / per_item).max(1) * per_item;
    (per_item, window.min(batch.max(1)))
}

/// Per-thread scratch of [`trajectory_fixed`]: one chunk's draws and per-step values.
struct ChunkBuf<const N: usize, const M: usize> {
    mix_u: [f64; CHUNK],
    za: [[f64; M]; CHUNK],
    ze: [[f64; N]; CHUNK],
    lpi: [f64; CHUNK],
    lmu: [f64; CHUNK],
    delta: [f64; CHUNK],
    dpi: [[f64; M]; CHUNK],
}

impl<const N: usize, const M: usize> ChunkBuf<N, M> {
    fn new() -> Box<Self> {
        Box::new(ChunkBuf {
            mix_u: [0.0; CHUNK],
            za: [[0.0; M]; CHUNK],
            ze: [[0.0; N]; CHUNK],
            lpi: [0.0; CHUNK],
            lmu: [0.0; CHUNK],
            delta: [0.0; CHUNK],
            dpi: [[0.0; M]; CHUNK],
        })
    }
}

/// [`trajectory`] with compile-time sizes (n = N, m = M, d = D): the same operations, in the same
/// order, on stack arrays, arranged in passes over chunks of `CHUNK` steps so that independent work
/// sits side by side: (1) the chunk's random draws (they do not depend on the state); (2) the
/// dynamics, sequential through the state, with the TD errors; (3) the ratios, whose libm calls are
/// independent from step to step; (4) the sums, left to right over the steps as before.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn trajectory_fixed<const N: usize, const M: usize, const D: usize>(
    fm: &FixedModel<N, M>,
    seed: u64,
    sigma_0: f64,
    lay: &Layout,
    w: &[f64; D],
    iteration: u64,
    j: u64,
    states: &mut [f64],
    rewards: &mut [f64],
    rhos: &mut [f64],
    part: &mut [f64],
    buf: &mut ChunkBuf<N, M>,
) {
    let st_start = Stream::new(seed, PURPOSE_START, iteration, j);
    let st_mix = Stream::new(seed, PURPOSE_MIX, iteration, j);
    let st_act = Stream::new(seed, PURPOSE_ACTION, iteration, j);
    let st_env = Stream::new(seed, PURPOSE_ENV, iteration, j);

    let mut s = [0.0; N];
    fill_normals(&st_start, 0, &mut s);
    for i in 0..N {
        s[i] *= sigma_0;
    }
    states[..N].copy_from_slice(&s);
    let mut td_sq = 0.0;
    let mut rho2 = 0.0;
    let mut grad_k = [[0.0; N]; M];
    // the full square (each entry summed exactly as the upper triangle's), which vectorizes
    let mut gram = [[0.0; D]; D];
    let mut a_s = [[0.0; D]; D];
    let mut b_s = [0.0; D];
    // C_rho's full square: only its upper triangle is kept ((rho_bar*phi_i)*phi_k is not symmetric
    // in its rounding)
    let mut c_rho = [[0.0; D]; D];
    let mut a_e = [[0.0; D]; D];
    let mut b_e = [0.0; D];
    let mut trace = 1.0;
    let (cross, emph, gamma) = (lay.cross, lay.emph, fm.gamma);
    let mut v = dot_fixed(w, &features_fixed::<N, D>(&s));
    let horizon = rewards.len();
    let ChunkBuf {
        mix_u,
        za: za_all,
        ze: ze_all,
        lpi,
        lmu,
        delta,
        dpi,
    } = buf;
    let mut h0 = 0;
    while h0 < horizon {
        let len = CHUNK.min(horizon - h0);
        if interrupt::tick(len as u64 * step_work(N, M, D, lay)) {
            return; // the kernel is being stopped: its result is discarded
        }
        // (1) draws
        fill_uniforms(&st_mix, h0 as u64, &mut mix_u[..len]);
        fill_normals(&st_act, (h0 * M) as u64, za_all[..len].as_flattened_mut());
        fill_normals(&st_env, (h0 * N) as u64, ze_all[..len].as_flattened_mut());
        // (2) dynamics; states[h*N..] is s_h, states[(h+1)*N..] is s_{h+1}
        for c in 0..len {
            let h = h0 + c;
            let dy = fm.dynamics(&s, mix_u[c], &za_all[c], &ze_all[c]);
            let v_next = dot_fixed(w, &features_fixed::<N, D>(&dy.s_next));
            delta[c] = (dy.reward + fm.gamma * v_next) - v;
            lpi[c] = dy.lpi;
            lmu[c] = dy.lmu;
            dpi[c] = dy.dpi;
            rewards[h] = dy.reward;
            states[(h + 1) * N..(h + 2) * N].copy_from_slice(&dy.s_next);
            s = dy.s_next;
            v = v_next;
        }
        // (3) ratios
        for c in 0..len {
            rhos[h0 + c] = fm.ratio(lpi[c], lmu[c]).0;
        }
        // (4) sums, in step order
        for c in 0..len {
            let h = h0 + c;
            let mut sh = [0.0; N];
            sh.copy_from_slice(&states[h * N..(h + 1) * N]);
            let phi = features_fixed::<N, D>(&sh);
            let mut sn = [0.0; N];
            sn.copy_from_slice(&states[(h + 1) * N..(h + 2) * N]);
            let phi_next = features_fixed::<N, D>(&sn);
            let mut e = [0.0; D];
            for j in 0..D {
                e[j] = phi[j] - gamma * phi_next[j];
            }
            let rho = rhos[h];
            let rho_bar = clip_rho(rho, fm.rho_clip);
            let dl = delta[c];
            td_sq += dl * dl;
            rho2 += rho * rho;
            let g = rho_bar * dl;
            add_weighted_fixed(&mut a_s, &mut b_s, rho_bar, rewards[h], &phi, &e);
            if cross {
                for i in 0..D {
                    let rf = rho_bar * phi[i];
                    for k in 0..D {
                        c_rho[i][k] += rf * phi[k];
                    }
                }
            }
            if emph {
                add_weighted_fixed(&mut a_e, &mut b_e, trace * rho_bar, rewards[h], &phi, &e);
                trace = 1.0 + (gamma * rho_bar) * trace;
            }
            for i in 0..M {
                let gd = g * dpi[c][i];
                for jj in 0..N {
                    grad_k[i][jj] += gd * sh[jj];
                }
            }
            for i in 0..D {
                let pi = phi[i];
                for k in 0..D {
                    gram[i][k] += pi * phi[k];
                }
            }
        }
        h0 += len;
    }
    part[0] = td_sq;
    part[1] = rho2;
    for i in 0..M {
        part[lay.grad_k() + i * N..lay.grad_k() + (i + 1) * N].copy_from_slice(&grad_k[i]);
    }
    let mut c = lay.gram();
    for i in 0..D {
        for k in i..D {
            part[c] = gram[i][k];
            c += 1;
        }
    }
    for i in 0..D {
        part[lay.a() + i * D..lay.a() + (i + 1) * D].copy_from_slice(&a_s[i]);
    }
    part[lay.b()..lay.b() + D].copy_from_slice(&b_s);
    if cross {
        let mut c = lay.c_rho();
        for i in 0..D {
            for k in i..D {
                part[c] = c_rho[i][k];
                c += 1;
            }
        }
    }
    if emph {
        for i in 0..D {
            part[lay.a_e() + i * D..lay.a_e() + (i + 1) * D].copy_from_slice(&a_e[i]);
        }
        part[lay.b_e()..lay.b_e() + D].copy_from_slice(&b_e);
    }
}

/// The bytes [`rollout`] holds at once for `batch` trajectories of `horizon` steps (n states, m
/// actions): its outputs, the per-trajectory partial sums, the work items and the per-thread
/// scratch. `None` when the count overflows.
pub fn rollout_bytes(n: usize, m: usize, batch: usize, horizon: usize, stats: u32) -> Option<u128> {
    let lay = Layout::new(n, m, stats);
    let (b, h) = (batch as u128, horizon as u128);
    let (per_item, window) = windows(lay.len, horizon, batch);
    let items = window.div_ceil(per_item) as u128;
    let threads = par::threads_for(window.div_ceil(per_item), true) as u128;
    let item_bytes = 8 * std::mem::size_of::<&mut [f64]>() as u128;
    let scratch = std::mem::size_of::<ChunkBuf<4, 4>>().max(std::mem::size_of::<TrajScratch>())
        as u128
        + 8 * (3 * n + 5 * m + 3 * lay.d) as u128;
    let total = mem::total(&[
        (b.checked_mul(h + 1)?.checked_mul(n as u128)?, 8), // states
        (b.checked_mul(h)?, 16),                            // rewards, ratios
        (window as u128 * lay.len as u128, 8),              // one window's partial sums
        (items, item_bytes),
        (1, par::overhead_bytes::<[&mut [f64]; 4]>(items as usize)),
        (threads, scratch),
        ((lay.len + 5 * lay.d * lay.d + 3 * lay.d + m * n) as u128, 8), // total, outputs
    ]);
    Some(total)
}

/// The rollout (section 3, steps 1-3). Inputs are validated first; no panic is reachable.
#[allow(clippy::too_many_arguments)]
pub fn rollout(
    p: &Problem,
    w: &[f64],
    k_pi: &[f64],
    k_mu: &[f64],
    iteration: u64,
    batch: usize,
    horizon: usize,
    stats: u32,
) -> CoreResult<RolloutOut> {
    rollout_with(
        p,
        w,
        k_pi,
        k_mu,
        iteration,
        batch,
        horizon,
        stats,
        true,
        WINDOW_BYTES,
    )
}

/// `rollout`, with the fixed-size kernels (n, m <= 4) allowed or not and windows of `window_bytes`
/// of partial sums (tests vary both: the result depends on neither).
#[allow(clippy::too_many_arguments)]
fn rollout_with(
    p: &Problem,
    w: &[f64],
    k_pi: &[f64],
    k_mu: &[f64],
    iteration: u64,
    batch: usize,
    horizon: usize,
    stats: u32,
    allow_fixed: bool,
    window_bytes: usize,
) -> CoreResult<RolloutOut> {
    validate(p, w, k_pi, k_mu, batch, horizon)?;
    let n = p.n;
    let m = p.m;
    let lay = Layout::new(n, m, stats);
    let d = lay.d;
    let rc = p.consts();
    // the argument that makes the arrays large
    let arg = if horizon > batch { "horizon" } else { "batch" };
    let planned = rollout_bytes(n, m, batch, horizon, stats).unwrap_or(u128::MAX);
    mem::plan(arg, planned)?;
    let oom = |e: CoreError| e.as_planned(arg, planned);
    let mut states = mem::zeroed(arg, batch * (horizon + 1) * n).map_err(oom)?;
    let mut rewards = mem::zeroed(arg, batch * horizon).map_err(oom)?;
    let mut rho = mem::zeroed(arg, batch * horizon).map_err(oom)?;
    // items of whole trajectories, windows of whole items
    let (per_item, window) = windows_of(window_bytes, lay.len, horizon, batch);
    let mut partials: Vec<f64> = mem::zeroed(arg, window * lay.len).map_err(oom)?;
    let parallel = batch * horizon >= PAR_MIN_STEPS;
    let mut total = vec![0.0; lay.len];
    for w0 in (0..batch).step_by(window) {
        let w1 = (w0 + window).min(batch);
        let items: Vec<_> = mem::collect(
            arg,
            states[w0 * (horizon + 1) * n..w1 * (horizon + 1) * n]
                .chunks_mut(per_item * (horizon + 1) * n)
                .zip(rewards[w0 * horizon..w1 * horizon].chunks_mut(per_item * horizon))
                .zip(rho[w0 * horizon..w1 * horizon].chunks_mut(per_item * horizon))
                .zip(partials[..(w1 - w0) * lay.len].chunks_mut(per_item * lay.len)),
        )
        .map_err(oom)?;
        crate::dispatch_dims!(
            if allow_fixed { n } else { 0 },
            m,
            |NN, MM, DD| {
                let fm = FixedModel::<NN, MM>::new(p, k_pi, k_mu);
                let mut wf = [0.0; DD];
                wf.copy_from_slice(w);
                let (seed, sigma_0) = (p.seed, p.sigma_0);
                par::for_each_item(
                    items,
                    parallel,
                    ChunkBuf::<NN, MM>::new,
                    |buf, it, (((st, rw), rh), part)| {
                        let trajs = rw.len() / horizon;
                        for t in 0..trajs {
                            let j = (w0 + it * per_item + t) as u64;
                            trajectory_fixed::<NN, MM, DD>(
                                &fm,
                                seed,
                                sigma_0,
                                &lay,
                                &wf,
                                iteration,
                                j,
                                &mut st[t * (horizon + 1) * n..(t + 1) * (horizon + 1) * n],
                                &mut rw[t * horizon..(t + 1) * horizon],
                                &mut rh[t * horizon..(t + 1) * horizon],
                                &mut part[t * lay.len..(t + 1) * lay.len],
                                buf,
                            );
                        }
                    },
                )
            },
            par::for_each_item(
                items,
                parallel,
                || TrajScratch::new(n, m),
                |sc, it, (((st, rw), rh), part)| {
                    let trajs = rw.len() / horizon;
                    for t in 0..trajs {
                        let j = (w0 + it * per_item + t) as u64;
                        trajectory(
                            p,
                            &rc,
                            &lay,
                            w,
                            k_pi,
                            k_mu,
                            iteration,
                            j,
                            &mut st[t * (horizon + 1) * n..(t + 1) * (horizon + 1) * n],
                            &mut rw[t * horizon..(t + 1) * horizon],
                            &mut rh[t * horizon..(t + 1) * horizon],
                            &mut part[t * lay.len..(t + 1) * lay.len],
                            sc,
                        );
                    }
                },
            )
        )
        .map_err(oom)?;

        // sequential reduction in trajectory order, from 0.0 (carried over the windows)
        for part in partials[..(w1 - w0) * lay.len].chunks_exact(lay.len) {
            for (t, x) in total.iter_mut().zip(part) {
                *t += *x;
            }
        }
    }
    let grad_k = total[lay.grad_k()..lay.grad_k() + m * n].to_vec();
    let symmetric = |start: usize| {
        let mut out = vec![0.0; d * d];
        let mut c = start;
        for i in 0..d {
            for k in i..d {
                out[i * d + k] = total[c];
                out[k * d + i] = total[c];
                c += 1;
            }
        }
        out
    };
    let gram = symmetric(lay.gram());
    let c_rho = lay.cross.then(|| symmetric(lay.c_rho()));
    let a = total[lay.a()..lay.a() + d * d].to_vec();
    let b = total[lay.b()..lay.b() + d].to_vec();
    let a_e = lay
        .emph
        .then(|| total[lay.a_e()..lay.a_e() + d * d].to_vec());
    let b_e = lay.emph.then(|| total[lay.b_e()..lay.b_e() + d].to_vec());
    Ok(RolloutOut {
        batch,
        horizon,
        states,
        rewards,
        rho,
        count: (batch * horizon) as u64,
        td_sq: total[0],
        rho2: total[1],
        grad_k,
        gram,
        a,
        b,
        c_rho,
        a_e,
        b_e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::features;
    use crate::linalg::quad_form;
    use crate::lqg::{diag, StepScratch, FIXED_SIZES};

    fn problem<'a>(
        a: &'a [f64],
        b: &'a [f64],
        q: &'a [f64],
        r: &'a [f64],
        p_mix: f64,
        clip: f64,
    ) -> Problem<'a> {
        Problem {
            n: 2,
            m: 1,
            a,
            b,
            q,
            r,
            sigma_eps: 0.1,
            sigma_0: 1.0,
            reward_scale: 0.5,
            sigma_pi: 0.3,
            sigma_mu: 0.5,
            p_mix,
            gamma: 0.9,
            rho_clip: clip,
            seed: 1234,
        }
    }

    const A: [f64; 4] = [0.9, 0.1, 0.0, 0.8];
    const B: [f64; 2] = [0.0, 1.0];
    const Q: [f64; 4] = [1.0, 0.0, 0.0, 1.0];
    const R: [f64; 1] = [0.1];

    #[test]
    fn sums_match_a_naive_recomputation() {
        let p = problem(&A, &B, &Q, &R, 0.2, 2.0);
        let w = [0.1, -0.2, 0.3, 0.01, -0.02, 0.5];
        let k_pi = [-0.1, -0.2];
        let k_mu = [0.05, -0.3];
        let out = rollout(&p, &w, &k_pi, &k_mu, 3, 5, 7, 0).unwrap();
        assert_eq!(out.count, 35);
        // recompute td_sq from the stored states and rewards
        let mut td = 0.0;
        let mut rho2 = 0.0;
        for j in 0..5 {
            let mut tj = 0.0;
            let mut rj = 0.0;
            for h in 0..7 {
                let s = &out.states[(j * 8 + h) * 2..(j * 8 + h + 1) * 2];
                let s2 = &out.states[(j * 8 + h + 1) * 2..(j * 8 + h + 2) * 2];
                let mut f = [0.0; 6];
                let mut f2 = [0.0; 6];
                features(s, &mut f);
                features(s2, &mut f2);
                let delta = (out.rewards[j * 7 + h] + 0.9 * dot(&w, &f2)) - dot(&w, &f);
                tj += delta * delta;
                let r = out.rho[j * 7 + h];
                rj += r * r;
                assert!(r <= 1.0 / 0.2 * (1.0 + 1e-12));
                assert!(out.rewards[j * 7 + h] <= 0.0);
                assert!(out.rewards[j * 7 + h] <= -0.5 * quad_form(s, &Q) + 1e-300);
            }
            td += tj;
            rho2 += rj;
        }
        assert_eq!(td.to_bits(), out.td_sq.to_bits());
        assert_eq!(rho2.to_bits(), out.rho2.to_bits());
        // gram is symmetric, its constant-constant entry counts transitions
        assert_eq!(out.gram[35], 35.0);
        for i in 0..6 {
            for k in 0..6 {
                assert_eq!(out.gram[i * 6 + k], out.gram[k * 6 + i]);
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_bits() {
        let p = Problem {
            sigma_mu: 0.3,
            ..problem(&A, &B, &Q, &R, 0.0, f64::INFINITY)
        };
        let w = [0.1, -0.2, 0.3, 0.01, -0.02, 0.5];
        let k = [-0.1, -0.2];
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| rollout(&p, &w, &k, &k, 1, 37, 11, 3).unwrap())
        };
        let one = run(1);
        for t in [2, 3, 4] {
            assert_eq!(one, run(t));
        }
        // equal policies and p = 0: every ratio is exactly 1
        assert!(one.rho.iter().all(|&r| r == 1.0));
    }

    #[test]
    fn rejects_bad_inputs() {
        let p = problem(&A, &B, &Q, &R, 0.0, f64::INFINITY);
        let w = [0.0; 6];
        let k = [0.0, 0.0];
        assert_eq!(
            rollout(&p, &w[..5], &k, &k, 0, 1, 1, 0).unwrap_err().arg(),
            "w"
        );
        assert_eq!(
            rollout(&p, &w, &k[..1], &k, 0, 1, 1, 0).unwrap_err().arg(),
            "k_pi"
        );
        assert_eq!(
            rollout(&p, &w, &k, &k, 0, 0, 1, 0).unwrap_err().arg(),
            "batch"
        );
        assert_eq!(
            rollout(&p, &w, &k, &k, 0, 1, 0, 0).unwrap_err().arg(),
            "horizon"
        );
        let bad = [f64::NAN, 0.0];
        assert_eq!(
            rollout(&p, &w, &k, &bad, 0, 1, 1, 0).unwrap_err().arg(),
            "k_mu"
        );
    }

    #[test]
    fn fixed_kernels_equal_the_dynamic_kernel() {
        let a3 = [0.9, 0.1, 0.0, -0.2, 0.8, 0.1, 0.05, 0.0, 0.7];
        let b3 = [0.0, 1.0, 0.5, -0.3, 1.0, 0.2];
        let q3 = [1.0, 0.1, 0.0, 0.1, 2.0, 0.0, 0.0, 0.0, 0.5];
        let r3 = [0.1, 0.01, 0.01, 0.2];
        for (p_mix, clip) in [(0.0, f64::INFINITY), (0.25, 1.5), (1.0, 2.0)] {
            let p = Problem {
                n: 3,
                m: 2,
                a: &a3,
                b: &b3,
                q: &q3,
                r: &r3,
                sigma_eps: 0.1,
                sigma_0: 1.5, // not 1: the fixed kernel scales its start state too
                reward_scale: 0.5,
                sigma_pi: 0.3,
                sigma_mu: 0.5,
                p_mix,
                gamma: 0.9,
                rho_clip: clip,
                seed: 77,
            };
            let w: Vec<f64> = (0..10).map(|i| (i as f64 * 0.37).sin()).collect();
            let kp = [0.1, -0.2, 0.05, 0.0, 0.3, -0.1];
            let km = [0.0, -0.1, 0.1, 0.1, 0.2, 0.0];
            let fixed = rollout_with(&p, &w, &kp, &km, 5, 9, 13, 3, true, WINDOW_BYTES).unwrap();
            let dynamic = rollout_with(&p, &w, &kp, &km, 5, 9, 13, 3, false, WINDOW_BYTES).unwrap();
            assert_eq!(fixed, dynamic);
        }
    }

    /// MODEL.md section 3, written out plainly: per trajectory j, its four streams read draw by draw
    /// (uncached), one `lqg::step` per step, the per-trajectory sums of step 3 over the full d x d
    /// Gram matrix, then the trajectory sums added in order from 0.0. The oracle of
    /// `rollout_equals_the_model_written_out`.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn rollout_oracle(
        p: &Problem,
        w: &[f64],
        k_pi: &[f64],
        k_mu: &[f64],
        iteration: u64,
        batch: usize,
        horizon: usize,
        stats: u32,
    ) -> RolloutOut {
        let (n, m) = (p.n, p.m);
        let d = feature_dim(n);
        let rc = p.consts();
        let mut states = Vec::new();
        let mut rewards = Vec::new();
        let mut rho = Vec::new();
        let (mut td_sq, mut rho2) = (0.0, 0.0);
        let mut grad_k = vec![0.0; m * n];
        let mut gram = vec![0.0; d * d];
        let (mut a_all, mut b_all) = (vec![0.0; d * d], vec![0.0; d]);
        let mut c_rho_all = vec![0.0; d * d];
        let (mut a_e_all, mut b_e_all) = (vec![0.0; d * d], vec![0.0; d]);
        for j in 0..batch as u64 {
            let start = Stream::new(p.seed, 1, iteration, j);
            let mix = Stream::new(p.seed, 2, iteration, j);
            let act = Stream::new(p.seed, 3, iteration, j);
            let env = Stream::new(p.seed, 4, iteration, j);
            let mut s: Vec<f64> = (0..n as u64).map(|i| p.sigma_0 * start.normal(i)).collect();
            states.extend_from_slice(&s);
            let (mut t_td, mut t_rho2) = (0.0, 0.0);
            let mut t_gk = vec![0.0; m * n];
            let mut t_gram = vec![0.0; d * d];
            let (mut t_a, mut t_b) = (vec![0.0; d * d], vec![0.0; d]);
            let mut t_c_rho = vec![0.0; d * d];
            let (mut t_a_e, mut t_b_e) = (vec![0.0; d * d], vec![0.0; d]);
            let mut trace = 1.0;
            let mut sc = StepScratch::new(n, m);
            for h in 0..horizon as u64 {
                let za: Vec<f64> = (0..m as u64)
                    .map(|k| act.normal(h * m as u64 + k))
                    .collect();
                let ze: Vec<f64> = (0..n as u64)
                    .map(|i| env.normal(h * n as u64 + i))
                    .collect();
                let st = step(p, &rc, k_pi, k_mu, &s, mix.uniform(h), &za, &ze, &mut sc);
                let mut f = vec![0.0; d];
                let mut f2 = vec![0.0; d];
                features(&s, &mut f);
                features(&sc.s_next, &mut f2);
                let delta = (st.reward + p.gamma * dot(w, &f2)) - dot(w, &f);
                t_td += delta * delta;
                t_rho2 += st.rho * st.rho;
                let g = st.rho_bar * delta;
                // MODEL.md 3.3, entry by entry
                for i in 0..d {
                    for jj in 0..d {
                        t_a[i * d + jj] += (st.rho_bar * f[i]) * (f[jj] - p.gamma * f2[jj]);
                        t_a_e[i * d + jj] +=
                            ((trace * st.rho_bar) * f[i]) * (f[jj] - p.gamma * f2[jj]);
                    }
                    for k in i..d {
                        t_c_rho[i * d + k] += (st.rho_bar * f[i]) * f[k];
                    }
                    t_b[i] += (st.rho_bar * st.reward) * f[i];
                    t_b_e[i] += ((trace * st.rho_bar) * st.reward) * f[i];
                }
                trace = 1.0 + (p.gamma * st.rho_bar) * trace;
                for i in 0..m {
                    for jj in 0..n {
                        t_gk[i * n + jj] += (g * sc.dpi[i]) * s[jj];
                    }
                }
                for i in 0..d {
                    for k in 0..d {
                        t_gram[i * d + k] += f[i] * f[k];
                    }
                }
                rewards.push(st.reward);
                rho.push(st.rho);
                s = sc.s_next.clone();
                states.extend_from_slice(&s);
            }
            td_sq += t_td;
            rho2 += t_rho2;
            for (tot, part) in [
                (&mut a_all, &t_a),
                (&mut b_all, &t_b),
                (&mut c_rho_all, &t_c_rho),
                (&mut a_e_all, &t_a_e),
                (&mut b_e_all, &t_b_e),
            ] {
                for (x, y) in tot.iter_mut().zip(part) {
                    *x += y;
                }
            }
            for (a, b) in grad_k.iter_mut().zip(&t_gk) {
                *a += b;
            }
            for (a, b) in gram.iter_mut().zip(&t_gram) {
                *a += b;
            }
        }
        RolloutOut {
            batch,
            horizon,
            states,
            rewards,
            rho,
            count: (batch * horizon) as u64,
            td_sq,
            rho2,
            grad_k,
            gram,
            a: a_all,
            b: b_all,
            c_rho: (stats & STATS_CROSS != 0).then(|| {
                let mut c = c_rho_all.clone();
                for i in 0..d {
                    for k in 0..i {
                        c[i * d + k] = c_rho_all[k * d + i];
                    }
                }
                c
            }),
            a_e: (stats & STATS_EMPHASIS != 0).then_some(a_e_all),
            b_e: (stats & STATS_EMPHASIS != 0).then_some(b_e_all),
        }
    }

    /// Every output of the rollout, fixed-size and general kernels, equals the model written out,
    /// at sizes around the chunk (CHUNK), work item (ITEM_STEPS) and parallel (PAR_MIN_STEPS) limits.
    #[test]
    fn rollout_equals_the_model_written_out() {
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
            let d = feature_dim(n);
            let w: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
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
                    sigma_pi: 0.4,
                    sigma_mu: 0.6,
                    ..problem(&A, &B, &Q, &R, p_mix, clip)
                };
                for (batch, horizon) in [(1, 1), (3, 2), (2, CHUNK + 1), (9, 57), (65, 1)] {
                    for stats in [0, 3] {
                        let want = rollout_oracle(&p, &w, &kp, &km, 6, batch, horizon, stats);
                        for allow_fixed in [true, false] {
                            let got = rollout_with(
                                &p,
                                &w,
                                &kp,
                                &km,
                                6,
                                batch,
                                horizon,
                                stats,
                                allow_fixed,
                                WINDOW_BYTES,
                            )
                            .unwrap();
                            assert_eq!(
                            got, want,
                            "n {n} m {m} p {p_mix} batch {batch} horizon {horizon} fixed {allow_fixed} stats {stats}"
                        );
                        }
                    }
                }
            }
        }
    }

    /// The fixed-size kernel draws its random numbers a chunk (`CHUNK` steps) ahead: around and
    /// beyond the chunk boundary (horizons 255..257, 513) it must still read draw #h at step h, as
    /// the general kernel (no chunks) does. p_mix inside (0, 1) with distinct policies, so every
    /// mixture uniform changes the trajectory.
    #[test]
    fn fixed_kernels_equal_the_dynamic_kernel_across_chunks() {
        let p = Problem {
            sigma_pi: 0.4,
            sigma_mu: 0.7,
            ..problem(&A, &B, &Q, &R, 0.3, 2.0)
        };
        let w = [0.1, -0.2, 0.3, 0.01, -0.02, 0.5];
        let kp = [-0.1, -0.2];
        let km = [0.05, -0.3];
        for horizon in [CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 1] {
            for batch in [1, 2] {
                let fixed =
                    rollout_with(&p, &w, &kp, &km, 3, batch, horizon, 3, true, WINDOW_BYTES)
                        .unwrap();
                let dynamic =
                    rollout_with(&p, &w, &kp, &km, 3, batch, horizon, 3, false, WINDOW_BYTES)
                        .unwrap();
                assert_eq!(fixed, dynamic, "batch {batch} horizon {horizon}");
            }
        }
        // the inputs can see a reused chunk: some step h >= CHUNK picks the other component than
        // step h - CHUNK
        let u = crate::philox::uniforms(Stream::new(p.seed, PURPOSE_MIX, 3, 0), 0, 2 * CHUNK + 1);
        assert!((CHUNK..2 * CHUNK + 1).any(|h| (u[h] < 0.3) != (u[h - CHUNK] < 0.3)));
    }

    /// Rollouts around the parallel threshold (`PAR_MIN_STEPS` transitions) and the work-item size
    /// (`ITEM_STEPS`) give the bits of one trajectory at a time, and trajectory j always starts from
    /// normals #0..n of its own substream j.
    #[test]
    fn items_and_parallel_threshold_keep_trajectories_apart() {
        let p = problem(&A, &B, &Q, &R, 0.2, 1.5);
        let w = [0.1, -0.2, 0.3, 0.01, -0.02, 0.5];
        let kp = [-0.1, -0.2];
        let km = [0.05, -0.3];
        for (batch, horizon) in [(7, 73), (8, 64), (9, 57), (65, 1), (5, 21), (3, 65)] {
            let all = rollout(&p, &w, &kp, &km, 2, batch, horizon, 0).unwrap();
            let mut td = 0.0;
            for j in 0..batch {
                let z =
                    crate::philox::normals(Stream::new(p.seed, PURPOSE_START, 2, j as u64), 0, 2);
                let s0 = &all.states[j * (horizon + 1) * 2..j * (horizon + 1) * 2 + 2];
                assert_eq!(s0, &[p.sigma_0 * z[0], p.sigma_0 * z[1]], "trajectory {j}");
                // the trajectory's own TD sum, recomputed from its states and rewards
                let mut tj = 0.0;
                for h in 0..horizon {
                    let o = (j * (horizon + 1) + h) * 2;
                    let mut f = [0.0; 6];
                    let mut f2 = [0.0; 6];
                    features(&all.states[o..o + 2], &mut f);
                    features(&all.states[o + 2..o + 4], &mut f2);
                    let delta =
                        (all.rewards[j * horizon + h] + p.gamma * dot(&w, &f2)) - dot(&w, &f);
                    tj += delta * delta;
                }
                td += tj;
            }
            assert_eq!(
                td.to_bits(),
                all.td_sq.to_bits(),
                "batch {batch} horizon {horizon}"
            );
            assert_eq!(all.count, (batch * horizon) as u64);
        }
    }
    /// Windows of partial sums change no bit: one window per trajectory, a few, or all at once;
    /// fixed-size and dynamic kernels; windows of single items and of many.
    #[test]
    fn windows_of_partial_sums_keep_the_bits() {
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
            seed: 99,
        };
        let w = [0.1, -0.2, 0.3, 0.01, -0.02, 0.5];
        let (kp, km) = ([-0.1, -0.2], [0.05, -0.3]);
        let part = Layout::new(2, 1, 3).len * 8;
        for (batch, horizon) in [(700, 1), (97, 9), (5, 300), (1, 3)] {
            for fixed in [true, false] {
                let one = rollout_with(
                    &p,
                    &w,
                    &kp,
                    &km,
                    4,
                    batch,
                    horizon,
                    3,
                    fixed,
                    usize::MAX / 2,
                )
                .unwrap();
                for bytes in [1, part, 3 * part, 40 * part, 1000 * part] {
                    let got =
                        rollout_with(&p, &w, &kp, &km, 4, batch, horizon, 3, fixed, bytes).unwrap();
                    assert_eq!(got, one, "batch {batch} horizon {horizon} window {bytes}");
                }
            }
        }
        // the default windows: a trajectory's partial sums of 285 KB (n = m = 16: the gram's triangle,
        // A and b) give items of 3 trajectories and windows of 117
        let len16 = Layout::new(16, 16, 0).len;
        assert_eq!(len16 * 8, 284_808);
        assert_eq!(windows(len16, 1, 100_000), (3, 117));
        assert_eq!(windows(Layout::new(2, 2, 0).len, 100, 8), (1, 8));
        assert_eq!(
            windows(Layout::new(2, 2, 0).len, 1, 1_000_000).0,
            ITEM_STEPS
        );
    }
    /// The estimate `rollout_bytes` against what `rollout` really holds at once (a counting
    /// allocator): never below it, and at most 1.5 times it plus the fixed scratch.
    #[test]
    fn rollout_bytes_bounds_what_the_kernel_holds() {
        for (n, m) in [(1usize, 1usize), (2, 1), (3, 2), (5, 2)] {
            let (a, q, r) = (diag(n, 0.5), diag(n, 1.0), diag(m, 1.0));
            let b = vec![0.1; n * m];
            let p = Problem {
                n,
                m,
                ..problem(&a, &b, &q, &r, 0.25, 2.0)
            };
            let w = vec![0.01; feature_dim(n)];
            let k = vec![0.0; m * n];
            for (batch, horizon) in [(1usize, 1usize), (3, 40), (2, 700), (40, 30)] {
                let (est, out, peak) = crate::mem::counting::measure(
                    || rollout_bytes(n, m, batch, horizon, 3).unwrap(),
                    || rollout(&p, &w, &k, &k, 0, batch, horizon, 3).unwrap(),
                );
                crate::mem::counting::check_estimate(
                    &format!("rollout n {n} m {m} batch {batch} horizon {horizon}"),
                    est,
                    peak,
                );
                drop(out);
            }
        }
    }
    /// An out-of-memory error names the argument that makes the arrays large; a size whose product
    /// overflows is refused as such, before any plan (batch (horizon + 1) n, not batch horizon n).
    #[test]
    fn oversized_requests_name_the_large_argument() {
        let p = problem(&A, &B, &Q, &R, 0.0, f64::INFINITY);
        let (w, k) = ([0.0; 6], [0.0, 0.0]);
        let oom = |r: CoreResult<RolloutOut>| match r {
            Err(CoreError::OutOfMemory { arg, .. }) => arg,
            other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
        };
        assert_eq!(oom(rollout(&p, &w, &k, &k, 0, 1, 1 << 40, 0)), "horizon");
        assert_eq!(oom(rollout(&p, &w, &k, &k, 0, 1 << 40, 1, 0)), "batch");
        assert_eq!(
            oom(rollout(&p, &w, &k, &k, 0, 1 << 30, 1 << 30, 0)),
            "batch"
        ); // a tie names batch
           // n = 2, horizon = usize::MAX / 2: (horizon + 1) n overflows, horizon n does not
        let e = rollout(&p, &w, &k, &k, 0, 1, usize::MAX / 2, 0).unwrap_err();
        assert!(
            matches!(e, CoreError::InvalidArgument { arg: "batch", .. }),
            "{e:?}"
        );
    }

    /// The work a rollout ticks is its floating-point operations (the latency contract of
    /// `crate::interrupt`), counted per step: the draws (a uniform ~22 operations, a normal ~50:
    /// `philox::tests::ticked_work_counts_the_operations`), the transition (`K_pi s`, `K_mu s`,
    /// the action and both log densities, the ratio's exp ~15, `A s + B a`, the two quadratic
    /// forms of the reward), the features and values, and the sums: A and b (2 d^2 + 3d), the
    /// Gram matrix's triangle (d^2 + d), grad_k (m (2n + 1)), C_rho's triangle (d^2 + 2d) and A_e,
    /// b_e (2 d^2 + 3d + 4) when asked. n = 12 (d = 91) makes the d^2 sums most of it (each
    /// statistic alone and both), m = 12 at n = 1, 2 the draws and the transition (n + m, not
    /// n m, sets their size). And the fixed-size kernels do the same operations as
    /// the dynamic one, so they must tick the same total, to the unit.
    #[test]
    fn ticked_work_counts_the_flops() {
        use crate::interrupt::tally;
        let run = |n: usize, m: usize, stats: u32, allow_fixed: bool, horizon: usize| {
            let (a, q, r) = (diag(n, 0.5), diag(n, 1.0), diag(m, 0.3));
            let b: Vec<f64> = (0..n * m).map(|i| 0.1 + 0.01 * i as f64).collect();
            let p = Problem {
                n,
                m,
                ..problem(&a, &b, &q, &r, 0.4, 2.0)
            };
            let w: Vec<f64> = (0..feature_dim(n))
                .map(|i| 0.01 * (i as f64).sin())
                .collect();
            let k: Vec<f64> = (0..m * n).map(|i| -0.02 * (i % 3) as f64).collect();
            let (out, t) = tally::measure(|| {
                rollout_with(
                    &p,
                    &w,
                    &k,
                    &k,
                    1,
                    3,
                    horizon,
                    stats,
                    allow_fixed,
                    WINDOW_BYTES,
                )
                .unwrap()
            });
            assert_eq!(out.count, (3 * horizon) as u64);
            t
        };
        let steps = |horizon: usize| (3 * horizon) as f64;
        for (n, m, stats) in [
            (12usize, 2usize, 0u32),
            (12, 2, STATS_CROSS),
            (12, 2, STATS_EMPHASIS),
            (12, 2, 3),
            (1, 12, 0),
            (1, 12, 3),
            (2, 12, 0),
        ] {
            let horizon = 20;
            let t = run(n, m, stats, true, horizon);
            let (nf, mf, d) = (n as f64, m as f64, feature_dim(n) as f64);
            let draws = 22.5 + 50.5 * (nf + mf);
            let transition = crate::lqg::step_flops(nf, mf);
            let values = nf * (nf + 1.0) / 2.0 + 2.0 * d + 10.0 + 2.0 * d;
            let mut sums = (2.0 * d * d + 3.0 * d) + (d * d + d) + mf * (2.0 * nf + 1.0);
            if stats & STATS_CROSS != 0 {
                sums += d * d + 2.0 * d;
            }
            if stats & STATS_EMPHASIS != 0 {
                sums += 2.0 * d * d + 3.0 * d + 4.0;
            }
            let flops = steps(horizon) * (draws + transition + values + sums);
            tally::check_work(&format!("rollout n {n} m {m} stats {stats}"), t, flops);
        }
        // sizes of the fixed-size kernels, with and without the optional sums, across a chunk
        for (n, m) in FIXED_SIZES {
            for stats in [0, STATS_CROSS, STATS_EMPHASIS, 3] {
                let fixed = run(n, m, stats, true, CHUNK + 3);
                let dynamic = run(n, m, stats, false, CHUNK + 3);
                assert_eq!(fixed.work, dynamic.work, "n {n} m {m} stats {stats}");
            }
        }
    }

    /// `rollout_bytes` is the layout it documents, term by term (the counting test above checks
    /// that this layout covers what the kernel holds; its allowance of 25% + 48 KiB cannot see a
    /// term of a few KiB), at sizes where each term counts: thousands of work items, a window cap
    /// that binds, n = 40 where the dynamic kernel's vectors outweigh the chunk buffers. The
    /// states, rewards and ratios; one window of per-trajectory partial sums; per work item 8
    /// slice references (it holds 4: margin) and the parallel driver's slot; per thread the larger
    /// of the fixed kernel's chunk buffers for n = m = 4 (reserved whatever n and m: the margin for
    /// smaller fixed kernels) and the dynamic kernel's struct, plus the dynamic kernel's vectors
    /// (s, ze and the next state: n each; za, K_pi s, K_mu s, the action and its score: m each;
    /// phi, phi' and e: d each); the running total, and the outputs with every statistic (grad_k,
    /// four d x d matrices, two d-vectors) and one d x d matrix and d-vector more (margin).
    #[test]
    fn rollout_bytes_is_its_layout() {
        for (n, m, batch, horizon, stats) in [
            (1usize, 1usize, 1usize, 1usize, 0u32),
            (4, 4, 40, 30, 3),
            (5, 2, 3, 700, 1),
            (12, 3, 100_000, 200, 2),
            (2, 1, 1 << 30, 10, 3),
            (40, 30, 7, 1 << 20, 0),
        ] {
            let lay = Layout::new(n, m, stats);
            let (nn, mm, d, len) = (n as u128, m as u128, lay.d as u128, lay.len as u128);
            let (b, h) = (batch as u128, horizon as u128);
            let (per_item, window) = windows(lay.len, horizon, batch);
            let items = window.div_ceil(per_item);
            let threads = par::threads_for(items, true) as u128;
            let buffers =
                std::mem::size_of::<ChunkBuf<4, 4>>().max(std::mem::size_of::<TrajScratch>());
            let per_thread = buffers as u128 + 8 * (3 * nn + 5 * mm + 3 * d);
            let slice_ref = 16; // a pointer and a length
            let want = 8 * b * (h + 1) * nn
                + 2 * 8 * b * h
                + 8 * window as u128 * len
                + items as u128 * 8 * slice_ref
                + par::overhead_bytes::<[&mut [f64]; 4]>(items)
                + threads * per_thread
                + 8 * (len + mm * nn + 4 * d * d + 2 * d)
                + 8 * (d * d + d);
            assert_eq!(
                rollout_bytes(n, m, batch, horizon, stats),
                Some(want),
                "n {n} m {m} batch {batch} horizon {horizon} stats {stats}"
            );
        }
    }
}
