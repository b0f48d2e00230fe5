//! Importance-ratio statistics (MODEL.md section 5), one kernel for every probe.
//!
//! Non-finite ratios are counted and excluded; the moments are block sums (0.2) over the finite ratios
//! in their input order; order statistics are found by selection (`select_nth_unstable_by`), never
//! by a full sort; `rho_khat` is the PSIS generalized-Pareto fit exactly as MODEL.md writes it.

use std::cmp::Ordering;

use crate::error::CoreResult;
use crate::{interrupt, mem, par};

use crate::linalg::BLOCK;

crate::record! {
    /// The statistics of section 5 (backend.RhoStats; the bindings' dict is [`RhoStatsOut::fields`]).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct RhoStatsOut {
        pub n: u64,
        pub nonfinite: u64,
        pub mean: f64,
        pub rho2_mean: f64,
        pub min: f64,
        pub max: f64,
        pub p95: f64,
        pub p99: f64,
        pub clip: f64,
        pub clip_active: bool,
        pub clip_frac: f64,
        pub ess_frac: f64,
        pub khat: f64,
    }
}

#[inline(always)]
fn cmp(a: &f64, b: &f64) -> Ordering {
    a.partial_cmp(b).unwrap_or(Ordering::Equal)
}

/// Per-block sums: sum, sum of squares, min, max, count above clip.
#[derive(Debug, Clone, Copy)]
struct BlockSums {
    sum: f64,
    sq: f64,
    min: f64,
    max: f64,
    above: u64,
}

fn block_sums(xs: &[f64], clip: f64) -> BlockSums {
    let mut sum = 0.0;
    let mut sq = 0.0;
    let mut min = xs[0];
    let mut max = xs[0];
    let mut above = 0u64;
    for &x in xs {
        sum += x;
        sq += x * x;
        if x < min {
            min = x;
        }
        if x > max {
            max = x;
        }
        above += (x > clip) as u64;
    }
    BlockSums {
        sum,
        sq,
        min,
        max,
        above,
    }
}

/// Blocks summed side by side in [`block_sums_lanes`].
const LANES: usize = 4;

/// [`block_sums`] of `LANES` consecutive full blocks, their loops interleaved.
fn block_sums_lanes(xs: &[f64], clip: f64) -> [BlockSums; LANES] {
    debug_assert_eq!(xs.len(), LANES * BLOCK);
    let mut sum = [0.0; LANES];
    let mut sq = [0.0; LANES];
    let mut min = [0.0; LANES];
    let mut max = [0.0; LANES];
    let mut above = [0u64; LANES];
    for b in 0..LANES {
        min[b] = xs[b * BLOCK];
        max[b] = xs[b * BLOCK];
    }
    for i in 0..BLOCK {
        for b in 0..LANES {
            let x = xs[b * BLOCK + i];
            sum[b] += x;
            sq[b] += x * x;
            if x < min[b] {
                min[b] = x;
            }
            if x > max[b] {
                max[b] = x;
            }
            above[b] += (x > clip) as u64;
        }
    }
    std::array::from_fn(|b| BlockSums {
        sum: sum[b],
        sq: sq[b],
        min: min[b],
        max: max[b],
        above: above[b],
    })
}

/// 1-based rank `max(1, ceil(p * n))` (p*n a double product), as a 0-based index.
pub fn quantile_index(p: f64, n: usize) -> usize {
    let r = (p * n as f64).ceil();
    let r = if r < 1.0 { 1usize } else { r as usize };
    r.min(n) - 1
}

/// `T = ceil(min(0.2 n, 3 sqrt(n)))`.
pub fn tail_len(n: usize) -> usize {
    let nf = n as f64;
    let a = 0.2 * nf;
    let b = 3.0 * nf.sqrt();
    // Python's min(a, b): a unless b < a
    let t = if b < a { b } else { a };
    t.ceil() as usize
}

/// Sizes below this take the plain path: copy everything and select.
const SMALL: usize = 1 << 16;
/// Sample size for the large-n threshold estimate.
const SAMPLE: usize = 8192;

/// Order statistics at the requested 0-based `indices` (any order), plus the values from `tail_from`
/// on, sorted ascending (`tail_from` <= n; empty when `None`).
fn order_stats(
    xs: &[f64],
    indices: &[usize],
    tail_from: Option<usize>,
) -> CoreResult<(Vec<f64>, Vec<f64>)> {
    let n = xs.len();
    let lowest = indices.iter().copied().chain(tail_from).min().unwrap_or(0);
    if n >= SMALL {
        // estimate a threshold t below y[lowest] from a strided sample, keep x >= t, select there
        let mut sample: Vec<f64> = (0..SAMPLE)
            .map(|i| xs[((i as u128 * n as u128) / SAMPLE as u128) as usize])
            .collect();
        sample.sort_unstable_by(cmp);
        let frac = lowest as f64 / n as f64;
        let margin = 3.0 * (SAMPLE as f64).sqrt() + 64.0;
        let pos = frac * SAMPLE as f64 - margin;
        if pos > 0.0 {
            let t = sample[(pos as usize).min(SAMPLE - 1)];
            let parts = par::map_chunks(xs, 1 << 16, true, |c| {
                if interrupt::tick(2 * c.len() as u64) {
                    return Vec::new();
                }
                c.iter().copied().filter(|&x| x >= t).collect::<Vec<f64>>()
            })?;
            let cand = mem::concat("rho", &parts)?;
            drop(parts);
            // every value < t ranks below every candidate
            let below = n - cand.len();
            if below <= lowest {
                let shifted: Vec<usize> = indices.iter().map(|&i| i - below).collect();
                return Ok(select_in_place(
                    cand,
                    &shifted,
                    tail_from.map(|t| t - below),
                ));
            }
        }
    }
    let copy = mem::collect("rho", xs.iter().copied())?;
    Ok(select_in_place(copy, indices, tail_from))
}

fn select_in_place(
    mut v: Vec<f64>,
    indices: &[usize],
    tail_from: Option<usize>,
) -> (Vec<f64>, Vec<f64>) {
    let mut targets: Vec<usize> = indices.to_vec();
    targets.sort_unstable();
    targets.dedup();
    let mut lo = 0;
    let mut found: Vec<(usize, f64)> = Vec::with_capacity(targets.len());
    for &idx in &targets {
        // after selecting idx, v[idx+1..] holds only values >= v[idx]: later (larger) indices are
        // selected inside it
        let (_, nth, _) = v[lo..].select_nth_unstable_by(idx - lo, cmp);
        found.push((idx, *nth));
        lo = idx + 1;
    }
    let vals = indices
        .iter()
        .map(|i| found.iter().find(|(j, _)| j == i).map_or(f64::NAN, |x| x.1))
        .collect();
    let tail = match tail_from {
        Some(t) => {
            // callers select t - 1 first, so v[t..] is exactly the multiset of the top n - t values
            let mut tail = v[t..].to_vec();
            tail.sort_unstable_by(cmp);
            tail
        }
        None => Vec::new(),
    };
    (vals, tail)
}

/// PSIS `k_hat` from `u = y[n-T-1]` and the top `T` values `y[n-T..]`, ascending.
pub fn khat_from_top(u: f64, top_sorted: &[f64]) -> f64 {
    let tail: Vec<f64> = top_sorted
        .iter()
        .filter(|&&y| y > u)
        .map(|&y| y - u)
        .collect();
    gpd_khat(&tail)
}

/// Block sum (0.2) of a sequence of samples.
#[inline(always)]
fn block_sum(xs: impl Iterator<Item = f64>) -> f64 {
    let mut total = 0.0;
    let mut part = 0.0;
    let mut k = 0;
    for x in xs {
        part += x;
        k += 1;
        if k == BLOCK {
            total += part;
            part = 0.0;
            k = 0;
        }
    }
    if k > 0 {
        total += part;
    }
    total
}

/// `mean_i log1p(-b x_i)` as a block sum (0.2) over the tail points, divided by `T'`.
#[inline(always)]
fn mean_log1p(b: f64, x: &[f64], tf: f64) -> f64 {
    block_sum(x.iter().map(|&xi| (-b * xi).ln_1p())) / tf
}

/// `log1p` calls (candidates x tail points) from which the candidates of [`gpd_khat`] are shared
/// among threads ([`par`]): below this (e.g. the 4096 ratios of a probe, ~40 us of work), waking a
/// helper costs about as much as it saves.
const PAR_MIN_LOG1P: usize = 1 << 15;
/// Candidates per work item of [`gpd_khat`].
const CAND_ITEM: usize = 4;

/// Zhang & Stephens (2009) generalized-Pareto shape with PSIS's weak prior, on ascending positive
/// exceedances `x`. NaN for fewer than 5 points. The means over tail points are block sums (0.2:
/// the tail points are ratio samples), the sums over the `mc` candidates plain sums.
///
/// Each candidate's sums run sequentially on one thread; candidates (and the weights, one plain sum
/// per candidate) may be spread over threads, which changes no bit.
pub fn gpd_khat(x: &[f64]) -> f64 {
    let tn = x.len();
    if tn < 5 {
        return f64::NAN;
    }
    let tf = tn as f64;
    let mc = 30 + (tf.sqrt().floor() as usize);
    let q_idx = (tf / 4.0 + 0.5).floor() as usize; // 1-based
    let xq = x[q_idx - 1];
    let x_last = x[tn - 1];
    let mcf = mc as f64;
    let cand = |j: usize| -> (f64, f64) {
        // j is 1-based
        let bj = (1.0 - (mcf / (j as f64 - 0.5)).sqrt()) / (3.0 * xq) + 1.0 / x_last;
        let kj = mean_log1p(bj, x, tf);
        (bj, tf * ((-bj / kj).ln() - kj - 1.0))
    };
    let parallel = tn * mc >= PAR_MIN_LOG1P;
    // (b_j, L_j), candidates in items of CAND_ITEM, each candidate's sums on one thread
    let mut bl = vec![(0.0, 0.0); mc];
    let items: Vec<_> = bl.chunks_mut(CAND_ITEM).collect();
    // an interrupted (or, for its few items, unallocatable) fit gives NaN; `try_rho_stats` then
    // reports the interruption
    let fitted = par::for_each_item(
        items,
        parallel,
        || (),
        |_, it, slots| {
            for (c, slot) in slots.iter_mut().enumerate() {
                if interrupt::tick(4 * tn as u64) {
                    return;
                }
                *slot = cand(it * CAND_ITEM + c + 1);
            }
        },
    );
    if fitted.is_err() {
        return f64::NAN;
    }
    let (b, l): (Vec<f64>, Vec<f64>) = bl.into_iter().unzip();
    let l: &[f64] = &l;
    // wt_j = 1 / sum_l exp(L_l - L_j), one plain sum per candidate
    let mut wt = vec![0.0; mc];
    let items: Vec<_> = wt.chunks_mut(CAND_ITEM).collect();
    let weighted = par::for_each_item(
        items,
        parallel,
        || (),
        |_, it, ws| {
            for (c, w) in ws.iter_mut().enumerate() {
                let lj = l[it * CAND_ITEM + c];
                let mut s = 0.0;
                for &ll in l {
                    s += (ll - lj).exp();
                }
                *w = 1.0 / s;
            }
        },
    );
    if weighted.is_err() {
        return f64::NAN;
    }
    // "drop wt_j < 10 eps": a NaN weight is not dropped (as in the reference)
    let eps10 = 10.0 * f64::EPSILON;
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let keep = |w: f64| !(w < eps10);
    let mut wsum = 0.0;
    for &w in wt.iter() {
        if keep(w) {
            wsum += w;
        }
    }
    let mut bstar = 0.0;
    for j in 0..mc {
        if keep(wt[j]) {
            bstar += b[j] * (wt[j] / wsum);
        }
    }
    let kstar = mean_log1p(bstar, x, tf);
    (tf * kstar + 10.0 * 0.5) / (tf + 10.0)
}

/// Ratio counts from which the moments are block-summed in parallel and the large-n selection runs.
const PAR_MIN_RATIOS: usize = SMALL;

/// Moments, extremes and clip count of `xs` (all finite) as block sums (0.2).
fn moments(xs: &[f64], clip: f64) -> CoreResult<BlockSums> {
    let fold = |acc: Option<BlockSums>, b: BlockSums| -> Option<BlockSums> {
        Some(match acc {
            None => BlockSums {
                sum: 0.0 + b.sum,
                sq: 0.0 + b.sq,
                ..b
            },
            Some(mut a) => {
                a.sum += b.sum;
                a.sq += b.sq;
                if b.min < a.min {
                    a.min = b.min;
                }
                if b.max > a.max {
                    a.max = b.max;
                }
                a.above += b.above;
                a
            }
        })
    };
    // the blocks of a stretch of samples (whose length is a multiple of BLOCK, except at the end):
    // groups of LANES full blocks summed side by side (each block's sums still run left to right:
    // the groups only interleave independent dependency chains), then the rest
    let blocks_of = |c: &[f64]| -> Vec<BlockSums> {
        if interrupt::tick(4 * c.len() as u64) {
            return Vec::new();
        }
        let full = c.len() / (LANES * BLOCK) * (LANES * BLOCK);
        let (grouped, rest) = c.split_at(full);
        grouped
            .chunks_exact(LANES * BLOCK)
            .flat_map(|g| block_sums_lanes(g, clip))
            .chain(rest.chunks(BLOCK).map(|b| block_sums(b, clip)))
            .collect()
    };
    let parallel = xs.len() >= PAR_MIN_RATIOS;
    let out = par::map_chunks(xs, 16 * BLOCK, parallel, blocks_of)?
        .into_iter()
        .flatten()
        .fold(None, fold);
    // xs is non-empty
    Ok(out.unwrap_or(BlockSums {
        sum: f64::NAN,
        sq: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
        above: 0,
    }))
}

/// The statistics of section 5 for `rho` with threshold `clip` (reported as `rho_clip`). Panics
/// only where a `Vec` allocation would abort: [`try_rho_stats`] is the fallible form.
pub fn rho_stats(rho: &[f64], clip: f64, clip_enabled: bool) -> RhoStatsOut {
    match try_rho_stats(rho, clip, clip_enabled) {
        Ok(out) => out,
        Err(e) => panic!("rho_stats: {e}"),
    }
}

/// The bytes [`try_rho_stats`] may hold besides its input of `n` ratios: a copy of them and the
/// candidates of the large-n selection.
pub fn rho_stats_bytes(n: usize) -> u128 {
    16 * n as u128 + 64 * 1024
}

/// [`rho_stats`] with its copies planned and allocated fallibly ([`CoreError::OutOfMemory`] naming
/// `rho`) and its passes interruptible ([`CoreError::Interrupted`]).
pub fn try_rho_stats(rho: &[f64], clip: f64, clip_enabled: bool) -> CoreResult<RhoStatsOut> {
    mem::plan("rho", rho_stats_bytes(rho.len()))?;
    let nonfinite = if rho.len() >= PAR_MIN_RATIOS {
        par::map_chunks(rho, 1 << 16, true, |c| {
            if interrupt::tick(c.len() as u64) {
                return 0;
            }
            c.iter().filter(|x| !x.is_finite()).count()
        })?
        .into_iter()
        .sum()
    } else {
        rho.iter().filter(|x| !x.is_finite()).count()
    };
    let n = rho.len() - nonfinite;
    let nan = f64::NAN;
    if n == 0 {
        return Ok(RhoStatsOut {
            n: 0,
            nonfinite: nonfinite as u64,
            mean: nan,
            rho2_mean: nan,
            min: nan,
            max: nan,
            p95: nan,
            p99: nan,
            clip,
            clip_active: clip_enabled,
            clip_frac: nan,
            ess_frac: nan,
            khat: nan,
        });
    }
    let i95 = quantile_index(0.95, n);
    let i99 = quantile_index(0.99, n);
    let t = tail_len(n);
    let (bs, p95, p99, khat) = if n < SMALL {
        // one copy of the finite ratios, selected in place
        let mut v: Vec<f64> = if nonfinite == 0 {
            rho.to_vec()
        } else {
            rho.iter().copied().filter(|x| x.is_finite()).collect()
        };
        let bs = moments(&v, clip)?;
        let (p95, p99, khat) = small_order_stats(&mut v, i95, i99, t);
        (bs, p95, p99, khat)
    } else {
        let owned: Vec<f64>;
        let xs: &[f64] = if nonfinite == 0 {
            rho
        } else {
            let mut v = mem::with_capacity("rho", n)?;
            v.extend(rho.iter().copied().filter(|x| x.is_finite()));
            owned = v;
            &owned
        };
        let bs = moments(xs, clip)?;
        let (vals, top, u) = if n > t {
            // u = y[n-T-1]; selecting it leaves exactly the top T values to its right
            let (v, top) = order_stats(xs, &[i95, i99, n - t - 1], Some(n - t))?;
            let u = v[2];
            (v, top, u)
        } else {
            let (v, _) = order_stats(xs, &[i95, i99], None)?;
            (v, Vec::new(), nan)
        };
        let khat = if n > t { khat_from_top(u, &top) } else { nan };
        (bs, vals[0], vals[1], khat)
    };
    // a selection may return any of the zeros that compare equal at a rank; the reference's stable
    // sort puts a definite one there, whose sign the quantiles take
    let finite = || rho.iter().copied().filter(|x| x.is_finite());
    let p95 = stable_rank_value(finite, i95, p95);
    let p99 = stable_rank_value(finite, i99, p99);
    interrupt::check()?;
    let nf = n as f64;
    let (sum, sq) = (bs.sum, bs.sq);
    Ok(RhoStatsOut {
        n: n as u64,
        nonfinite: nonfinite as u64,
        mean: sum / nf,
        rho2_mean: sq / nf,
        min: bs.min,
        max: bs.max,
        p95,
        p99,
        clip,
        clip_active: clip_enabled,
        clip_frac: bs.above as f64 / nf,
        ess_frac: (sum * sum) / (nf * sq),
        khat,
    })
}

/// The value a stable sort of `xs()` (the reference's `sorted`) puts at 0-based rank `idx`, given
/// `v`, the value a selection found at that rank. Equal values differ only when they are zeros of
/// both signs (`-0.0 == 0.0`), so `v` is returned unless it is a zero; then the stable order holds
/// the values below zero first and the zeros in input order after them, and the zero at `idx` is
/// the `(idx - below)`-th zero of the input. Costs a pass over `xs` only when `v` is a zero.
fn stable_rank_value<I: Iterator<Item = f64>>(xs: impl Fn() -> I, idx: usize, v: f64) -> f64 {
    if v != 0.0 {
        return v;
    }
    let below = xs().filter(|&x| x < 0.0).count();
    idx.checked_sub(below)
        .and_then(|k| xs().filter(|&x| x == 0.0).nth(k))
        .unwrap_or(v)
}

/// `(p95, p99, k_hat)` of the (finite) values `v`, reordering `v` in place: selections at the
/// needed ranks in increasing order (each inside the part right of the previous one), then a sort of
/// the top `T` values (which the selection of `y[n-T-1]` leaves to its right); the tail exceedances
/// are formed in place.
fn small_order_stats(v: &mut [f64], i95: usize, i99: usize, t: usize) -> (f64, f64, f64) {
    let n = v.len();
    let iu = if n > t { Some(n - t - 1) } else { None };
    let mut targets = [i95, i99, iu.unwrap_or(i95)];
    targets.sort_unstable();
    let mut lo = 0;
    for &idx in &targets {
        if idx >= lo {
            v[lo..].select_nth_unstable_by(idx - lo, cmp);
            lo = idx + 1;
        }
    }
    // v[idx] now holds the order statistic of every target
    let (p95, p99) = (v[i95], v[i99]);
    let khat = match iu {
        Some(iu) => {
            let u = v[iu];
            let tail = &mut v[n - t..];
            tail.sort_unstable_by(cmp);
            // ascending: the values equal to u come first
            let first = tail.iter().position(|&y| y > u).unwrap_or(tail.len());
            let tail = &mut tail[first..];
            for y in tail.iter_mut() {
                *y -= u;
            }
            gpd_khat(tail)
        }
        None => f64::NAN,
    };
    (p95, p99, khat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(v: &[f64]) -> Vec<f64> {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        s
    }

    #[test]
    fn hand_made_sample() {
        let rho = [1.0, 2.0, 3.0, 4.0, f64::NAN, f64::INFINITY];
        let s = rho_stats(&rho, 2.5, true);
        assert_eq!(s.n, 4);
        assert_eq!(s.nonfinite, 2);
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.rho2_mean, 7.5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 4.0);
        // ceil(0.95*4) = 4, ceil(0.99*4) = 4
        assert_eq!(s.p95, 4.0);
        assert_eq!(s.p99, 4.0);
        assert_eq!(s.clip_frac, 0.5);
        assert!(s.clip_active);
        assert_eq!(s.ess_frac, 100.0 / (4.0 * 30.0));
        // T = ceil(min(0.8, 6)) = 1 -> 1 tail point < 5 -> NaN
        assert!(s.khat.is_nan());
    }

    #[test]
    fn constant_ratios() {
        let s = rho_stats(&[1.0; 100], 10.0, false);
        assert_eq!(s.mean, 1.0);
        assert_eq!(s.ess_frac, 1.0);
        assert_eq!(s.clip_frac, 0.0);
        assert!(!s.clip_active);
        assert!(s.khat.is_nan()); // no exceedances
    }

    #[test]
    fn empty_and_all_nonfinite() {
        let s = rho_stats(&[f64::NAN, f64::NEG_INFINITY], 2.0, true);
        assert_eq!(s.n, 0);
        assert_eq!(s.nonfinite, 2);
        assert!(s.mean.is_nan() && s.p95.is_nan() && s.khat.is_nan() && s.clip_frac.is_nan());
        assert_eq!(s.clip, 2.0);
        let e = rho_stats(&[], 2.0, false);
        assert_eq!(e.n, 0);
    }

    #[test]
    fn quantiles_match_sorted_order_statistics() {
        for n in [1usize, 2, 19, 20, 21, 100, 1001, 5000] {
            let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1013) as f64 / 7.0).collect();
            let s = rho_stats(&v, 50.0, true);
            let y = sorted(&v);
            assert_eq!(s.p95, y[quantile_index(0.95, n)]);
            assert_eq!(s.p99, y[quantile_index(0.99, n)]);
            assert_eq!(s.min, y[0]);
            assert_eq!(s.max, y[n - 1]);
        }
        assert_eq!(quantile_index(0.95, 20), 18); // ceil(19.0) = 19 -> index 18
        assert_eq!(quantile_index(0.95, 1), 0);
    }

    #[test]
    fn large_path_equals_small_path() {
        // pseudo-random heavy-tailed sample with ties, above SMALL so the threshold path runs
        let n = SMALL * 3 + 17;
        let mut x: u64 = 88172645463325252;
        let v: Vec<f64> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = ((x >> 11) as f64 + 1.0) / 9007199254740993.0;
                (1.0 / u.sqrt() * 8.0).floor() / 8.0
            })
            .collect();
        let s = rho_stats(&v, 3.0, true);
        let y = sorted(&v);
        assert_eq!(s.p95, y[quantile_index(0.95, n)]);
        assert_eq!(s.p99, y[quantile_index(0.99, n)]);
        let t = tail_len(n);
        let k_direct = khat_from_top(y[n - t - 1], &y[n - t..]);
        assert_eq!(s.khat.to_bits(), k_direct.to_bits());
    }

    #[test]
    fn khat_detects_heavy_tails() {
        // Pareto with shape xi: quantile (1-u)^-xi; deterministic u grid
        let n = 20000;
        let pareto = |xi: f64| -> Vec<f64> {
            (0..n)
                .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-xi))
                .rev()
                .collect()
        };
        let heavy = rho_stats(&pareto(0.9), 1e9, false).khat;
        let light = rho_stats(&pareto(0.2), 1e9, false).khat;
        assert!(heavy > 0.7, "heavy {heavy}");
        assert!(light < 0.5 && light > 0.0, "light {light}");
    }

    #[test]
    fn khat_fit_does_not_depend_on_threads() {
        // a tail long enough for the candidates to be shared among threads
        let x: Vec<f64> = (1..=3000)
            .map(|i| (i as f64 / 3001.0).powf(-0.8) - 1.0)
            .rev()
            .collect();
        let mut x = x;
        x.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let x: Vec<f64> = x.into_iter().filter(|&v| v > 0.0).collect();
        assert!(x.len() * (30 + (x.len() as f64).sqrt() as usize) >= PAR_MIN_LOG1P);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| gpd_khat(&x));
        for threads in [2, 3] {
            let k = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| gpd_khat(&x));
            assert_eq!(k.to_bits(), one.to_bits());
        }
        assert_eq!(gpd_khat(&x).to_bits(), one.to_bits());
    }

    /// MODEL.md section 5 written out plainly, as the reference does: the finite ratios in input
    /// order, block sums over BLOCK of them, Python's min/max (the first of equal values), a stable
    /// sort for the order statistics, and the PSIS fit of Zhang & Stephens with its weak prior.
    fn stats_oracle(rho: &[f64], clip: f64, clip_enabled: bool) -> RhoStatsOut {
        let fin: Vec<f64> = rho.iter().copied().filter(|x| x.is_finite()).collect();
        let n = fin.len();
        let nan = f64::NAN;
        let bsum = |v: &[f64]| -> f64 {
            let mut total = 0.0;
            for blk in v.chunks(BLOCK) {
                let mut part = 0.0;
                for &x in blk {
                    part += x;
                }
                total += part;
            }
            total
        };
        if n == 0 {
            return RhoStatsOut {
                n: 0,
                nonfinite: rho.len() as u64,
                mean: nan,
                rho2_mean: nan,
                min: nan,
                max: nan,
                p95: nan,
                p99: nan,
                clip,
                clip_active: clip_enabled,
                clip_frac: nan,
                ess_frac: nan,
                khat: nan,
            };
        }
        let nf = n as f64;
        let s1 = bsum(&fin);
        let sq: Vec<f64> = fin.iter().map(|x| x * x).collect();
        let s2 = bsum(&sq);
        let (mut lo, mut hi, mut above) = (fin[0], fin[0], 0usize);
        for &x in &fin {
            if x < lo {
                lo = x;
            }
            if x > hi {
                hi = x;
            }
            if x > clip {
                above += 1;
            }
        }
        let mut y = fin.clone();
        y.sort_by(|a, b| a.partial_cmp(b).unwrap()); // stable
        let q = |p: f64| -> f64 {
            let r = (p * nf).ceil().max(1.0) as usize;
            y[r - 1]
        };
        let t = (0.2 * nf).min(3.0 * nf.sqrt()).ceil() as usize;
        let khat = if n <= t {
            nan
        } else {
            let u = y[n - t - 1];
            let x: Vec<f64> = y[n - t..]
                .iter()
                .filter(|&&v| v > u)
                .map(|&v| v - u)
                .collect();
            if x.len() < 5 {
                nan
            } else {
                let tn = x.len();
                let tf = tn as f64;
                let mc = 30 + (tf.sqrt().floor() as usize);
                let xq = x[((tf / 4.0 + 0.5).floor() as usize) - 1];
                let mut bs = Vec::new();
                let mut ls = Vec::new();
                for j in 1..=mc {
                    let b = (1.0 - (mc as f64 / (j as f64 - 0.5)).sqrt()) / (3.0 * xq)
                        + 1.0 / x[tn - 1];
                    let lg: Vec<f64> = x.iter().map(|&xi| (-b * xi).ln_1p()).collect();
                    let k = bsum(&lg) / tf;
                    bs.push(b);
                    ls.push(tf * ((-b / k).ln() - k - 1.0));
                }
                let mut wts = Vec::new();
                for &lj in &ls {
                    let mut den = 0.0;
                    for &ll in &ls {
                        den += (ll - lj).exp();
                    }
                    wts.push(1.0 / den);
                }
                // "drop wt_j < 10 eps": a NaN weight is not dropped (as in the kernel)
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                let kept: Vec<(f64, f64)> = bs
                    .iter()
                    .zip(&wts)
                    .filter(|(_, &w)| !(w < 10.0 * f64::EPSILON))
                    .map(|(&b, &w)| (b, w))
                    .collect();
                let mut total = 0.0;
                for &(_, w) in &kept {
                    total += w;
                }
                let mut bstar = 0.0;
                for &(b, w) in &kept {
                    bstar += b * (w / total);
                }
                let lg: Vec<f64> = x.iter().map(|&xi| (-bstar * xi).ln_1p()).collect();
                let kstar = bsum(&lg) / tf;
                (tf * kstar + 10.0 * 0.5) / (tf + 10.0)
            }
        };
        RhoStatsOut {
            n: n as u64,
            nonfinite: (rho.len() - n) as u64,
            mean: s1 / nf,
            rho2_mean: s2 / nf,
            min: lo,
            max: hi,
            p95: q(0.95),
            p99: q(0.99),
            clip,
            clip_active: clip_enabled,
            clip_frac: above as f64 / nf,
            ess_frac: (s1 * s1) / (nf * s2),
            khat,
        }
    }

    fn assert_stats_eq(got: &RhoStatsOut, want: &RhoStatsOut, what: &str) {
        let f = |s: &RhoStatsOut| {
            [
                s.mean,
                s.rho2_mean,
                s.min,
                s.max,
                s.p95,
                s.p99,
                s.clip,
                s.clip_frac,
                s.ess_frac,
                s.khat,
            ]
        };
        assert_eq!(
            (got.n, got.nonfinite, got.clip_active),
            (want.n, want.nonfinite, want.clip_active),
            "{what}"
        );
        let names = [
            "mean",
            "rho2_mean",
            "min",
            "max",
            "p95",
            "p99",
            "clip",
            "clip_frac",
            "ess_frac",
            "khat",
        ];
        for ((a, b), name) in f(got).iter().zip(f(want)).zip(names) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{what}: {name} {a:e} vs {b:e}"
            );
        }
    }

    /// A deterministic heavy-tailed sample: u^-xi scaled, with some ties.
    fn sample(n: usize, seed: u64, xi: f64) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = ((x >> 11) as f64 + 1.0) / 9007199254740993.0;
                let v = u.powf(-xi) * 0.5;
                if i % 11 == 0 {
                    (v * 4.0).floor() / 4.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// Every statistic equals section 5 written out, to the bit, at the sizes where the kernel
    /// changes path: BLOCK, LANES * BLOCK, 16 * BLOCK, SMALL (the large-n selection), a k_hat tail
    /// longer than BLOCK; with ties, clip values at a ratio, signed zeros and non-finite ratios.
    #[test]
    fn statistics_equal_the_model_written_out() {
        let sizes = [
            0usize, 1, 2, 4, 5, 6, 7, 24, 25, 26, 100, 1023, 1024, 1025, 4095, 4096, 4097, 8193,
            16385, 65535, 65536, 65537, 70001,
        ];
        for (i, &n) in sizes.iter().enumerate() {
            let v = sample(n, i as u64 + 1, 0.6);
            for clip in [0.75, 1.0, f64::INFINITY] {
                assert_stats_eq(
                    &rho_stats(&v, clip, true),
                    &stats_oracle(&v, clip, true),
                    &format!("n {n}"),
                );
            }
            let mut w = v.clone();
            for k in (0..n).step_by(97) {
                w[k] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY][k % 3];
            }
            assert_stats_eq(
                &rho_stats(&w, 2.0, false),
                &stats_oracle(&w, 2.0, false),
                &format!("n {n} non-finite"),
            );
        }
        // a tail of more than BLOCK points: the k_hat means are block sums
        let v = sample(116_509, 99, 0.8);
        assert_eq!(tail_len(v.len()), 1025);
        assert_stats_eq(
            &rho_stats(&v, 3.0, true),
            &stats_oracle(&v, 3.0, true),
            "T = 1025",
        );
    }

    /// Python's min and max keep the first of equal values, and its stable sort keeps equal values
    /// in input order: with -0.0 and +0.0 mixed, the signs of min, max and the quantiles follow.
    #[test]
    fn signed_zeros_follow_the_stable_order() {
        let mut x: u64 = 12345;
        for n in [1usize, 2, 20, 100, 101, 3000, 70_000] {
            for trial in 0..4 {
                let v: Vec<f64> = (0..n)
                    .map(|i| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        match (x >> 60) % 4 {
                            0 if trial == 3 && i % 2 == 0 => -1.0,
                            0 | 1 => -0.0,
                            2 => 0.0,
                            _ if trial > 1 => 1.0,
                            _ => 0.0,
                        }
                    })
                    .collect();
                assert_stats_eq(
                    &rho_stats(&v, 0.0, true),
                    &stats_oracle(&v, 0.0, true),
                    &format!("n {n} trial {trial}"),
                );
            }
        }
        let s = rho_stats(&[0.0, -0.0, -0.0], 1.0, false);
        assert_eq!(s.min.to_bits(), 0.0f64.to_bits());
        assert_eq!(s.max.to_bits(), 0.0f64.to_bits());
        // stable order [0.0, -0.0, -0.0]: rank ceil(0.95 * 3) = 3 -> the last -0.0
        assert_eq!(s.p95.to_bits(), (-0.0f64).to_bits());
    }

    /// Each block's min and max start from the block's own first value (Python's `lo = x[0]`, then
    /// `x < lo`): a zero of the other sign at the start of a later block must not leak into an
    /// earlier block's extremes, in the four-block groups (LANES) and in single blocks.
    #[test]
    fn block_extremes_start_at_their_own_block() {
        for n in [LANES * BLOCK, LANES * BLOCK + 5, 3 * BLOCK] {
            for (fill, first, later) in [
                (1.0, 0.0, -0.0),
                (-1.0, 0.0, -0.0),
                (1.0, -0.0, 0.0),
                (-1.0, -0.0, 0.0),
            ] {
                let mut v = vec![fill; n];
                v[5] = first;
                for b in 1..n.div_ceil(BLOCK) {
                    for k in 0..LANES {
                        if b * BLOCK + k < n {
                            v[b * BLOCK + k] = later;
                        }
                    }
                }
                let s = rho_stats(&v, 0.5, true);
                let o = stats_oracle(&v, 0.5, true);
                assert_stats_eq(&s, &o, &format!("n {n} fill {fill} first {first}"));
                assert_eq!(
                    s.min.to_bits(),
                    if fill > 0.0 {
                        first.to_bits()
                    } else {
                        (-1.0f64).to_bits()
                    }
                );
                assert_eq!(
                    s.max.to_bits(),
                    if fill < 0.0 {
                        first.to_bits()
                    } else {
                        1.0f64.to_bits()
                    }
                );
            }
        }
    }

    #[test]
    fn rank_rules_by_hand() {
        // 1-based rank max(1, ceil(p n)) as a 0-based index
        assert_eq!(quantile_index(0.95, 100), 94);
        assert_eq!(quantile_index(0.95, 101), 95); // ceil(95.95) = 96
        assert_eq!(quantile_index(0.99, 100), 98);
        assert_eq!(quantile_index(0.5, 3), 1);
        assert_eq!(quantile_index(0.0, 7), 0);
        assert_eq!(quantile_index(0.01, 7), 0);
        assert_eq!(quantile_index(1.0, 7), 6);
        // T = ceil(min(0.2 n, 3 sqrt(n)))
        assert_eq!(tail_len(24), 5);
        assert_eq!(tail_len(26), 6);
        assert_eq!(tail_len(40_804), 606);
        assert_eq!(tail_len(40_805), 607);
        assert_eq!(tail_len(116_508), 1024);
        assert_eq!(tail_len(116_509), 1025);
    }

    #[test]
    fn tail_len_rule() {
        assert_eq!(tail_len(1), 1);
        assert_eq!(tail_len(10), 2);
        assert_eq!(tail_len(225), 45); // 0.2*225 = 45 = 3*15
        assert_eq!(tail_len(10000), 300);
    }
}
