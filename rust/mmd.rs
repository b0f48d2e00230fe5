//! The distribution probe's MMD (MODEL.md 4.1): the median-heuristic bandwidth over the pooled set
//! and the paired unbiased U-statistic MMD^2 with a Gaussian kernel. The cross sum leaves out the
//! pairs `(x_i, y_i)` as the within-set sums leave out `(x_i, x_i)`: the probe's `x_i` and `y_i` share
//! the state `s_i`, so `k(x_i, y_i)` is not distributed like `k(x_i, y_j)` and keeping it biases
//! MMD^2 below 0 when pi == mu.
//!
//! The median is an exact order statistic of the `L = M(2M-1)` pairwise distances. It is found on
//! the squared distances (sqrt is monotone, so the order statistic commutes with it) by selection.
//! Up to `MATERIALIZE_CAP` pairs (the usual MMD sets: M = 64 gives 8128), every squared distance is
//! computed once and stored; the median is selected from a copy, and each stored distance becomes
//! its kernel value, which serves both terms `k(z_i, z_j)` and `k(z_j, z_i)` of the sums. Larger
//! sets stream: direct selection when `L` is moderate, otherwise histogram passes over the
//! distances' bit patterns that narrow the range holding the wanted rank until few enough values
//! remain to select among (memory O(M (n+m)) whatever `M`), and kernel values row by row.
//! Each kernel sum is one left-to-right running sum (i outer, j inner); rows of kernel values are
//! computed in parallel and added in order, so results do not depend on the thread count.
//!
//! Memory is bounded whatever `M`: at most `2 DIRECT_CAP` stored distances, `HIST_ITEMS` histograms
//! and `ROW_GROUP` rows of kernel values ([`mmd2_bytes`]), planned and allocated fallibly. Work is
//! `O(M^2 (n+m))` per pass (one pass when materialized; a few histogram passes and three kernel sums
//! when streaming), ticked row by row so a large set can be interrupted.

use crate::error::{CoreError, CoreResult};
use crate::{interrupt, mem, par};

/// Pair counts up to this are selected directly.
const DIRECT_CAP: usize = 1 << 22;
/// Buckets per histogram pass.
const BUCKETS: usize = 4096;
/// Rows of kernel values computed in parallel before they are added in order.
const ROW_GROUP: usize = 64;
/// Most work items (and so histograms held at once) of one histogram pass.
const HIST_ITEMS: usize = 256;

/// Interruption work of one row of `len` pairs of `dim` coordinates.
#[inline(always)]
fn row_work(len: usize, dim: usize) -> u64 {
    (len * (3 * dim + 4)) as u64
}

#[inline(always)]
fn sq_dist(u: &[f64], v: &[f64]) -> f64 {
    let mut acc = 0.0;
    for (a, b) in u.iter().zip(v) {
        let t = a - b;
        acc += t * t;
    }
    acc
}

/// Row `i` of the pooled set `[x; y]`.
#[inline(always)]
fn pooled<'a>(x: &'a [f64], y: &'a [f64], m: usize, dim: usize, i: usize) -> &'a [f64] {
    if i < m {
        &x[i * dim..(i + 1) * dim]
    } else {
        &y[(i - m) * dim..(i - m + 1) * dim]
    }
}

/// Calls `f(d2)` for every pair i < j of row `i` in the pooled set.
#[inline(always)]
fn row_pairs(x: &[f64], y: &[f64], m: usize, dim: usize, i: usize, mut f: impl FnMut(f64)) {
    let zi = pooled(x, y, m, dim, i);
    for j in i + 1..2 * m {
        f(sq_dist(zi, pooled(x, y, m, dim, j)));
    }
}

/// The squared distances of rows `lo..hi` of the pooled set that `keep`, in row order.
fn rows_kept(
    x: &[f64],
    y: &[f64],
    m: usize,
    dim: usize,
    lo: usize,
    hi: usize,
    keep: impl Fn(f64) -> bool,
) -> Vec<f64> {
    let mut out = Vec::new();
    for i in lo..hi {
        if interrupt::tick(row_work(2 * m - 1 - i, dim)) {
            break;
        }
        row_pairs(x, y, m, dim, i, |d2| {
            if keep(d2) {
                out.push(d2)
            }
        });
    }
    out
}

/// The `rank`-th smallest (0-based) squared pairwise distance of the pooled set.
fn select_sq_distance(x: &[f64], y: &[f64], m: usize, dim: usize, rank: usize) -> CoreResult<f64> {
    select_sq_distance_capped(x, y, m, dim, rank, DIRECT_CAP)
}

/// [`select_sq_distance`] selecting directly among at most `cap` values (the tests take the
/// histogram passes on small sets with a small cap).
fn select_sq_distance_capped(
    x: &[f64],
    y: &[f64],
    m: usize,
    dim: usize,
    rank: usize,
    cap: usize,
) -> CoreResult<f64> {
    let z = 2 * m;
    let pairs = m * (z - 1);
    if pairs <= cap {
        let parts = par::map_ranges(z, ROW_GROUP, true, |lo, hi| {
            rows_kept(x, y, m, dim, lo, hi, |_| true)
        })?;
        let mut all = mem::concat("x", &parts)?;
        drop(parts);
        let (_, v, _) = all.select_nth_unstable_by(rank, |a, b| a.total_cmp(b));
        return Ok(*v);
    }
    // rows per histogram item: at most HIST_ITEMS histograms are held at once
    let hist_rows = ROW_GROUP.max(z.div_ceil(HIST_ITEMS));
    // Squared distances are >= +0.0 (or +inf), so their bit patterns sort like their values.
    let mut lo: u64 = 0;
    let mut hi: u64 = f64::INFINITY.to_bits();
    let mut rank = rank;
    loop {
        let width = (hi - lo) as u128 + 1;
        let bucket_of = |bits: u64| (((bits - lo) as u128 * BUCKETS as u128) / width) as usize;
        // per bucket: count, min bits, max bits
        let hists = par::map_ranges(z, hist_rows, true, |rlo, rhi| {
            let mut h = vec![(0usize, u64::MAX, 0u64); BUCKETS];
            for i in rlo..rhi {
                if interrupt::tick(row_work(z - 1 - i, dim)) {
                    break;
                }
                row_pairs(x, y, m, dim, i, |d2| {
                    let bits = d2.to_bits();
                    if bits >= lo && bits <= hi {
                        let e = &mut h[bucket_of(bits)];
                        e.0 += 1;
                        e.1 = e.1.min(bits);
                        e.2 = e.2.max(bits);
                    }
                });
            }
            h
        })?;
        let mut hist = vec![(0usize, u64::MAX, 0u64); BUCKETS];
        for h in hists {
            for (p, q) in hist.iter_mut().zip(h) {
                p.0 += q.0;
                p.1 = p.1.min(q.1);
                p.2 = p.2.max(q.2);
            }
        }
        let mut cum = 0usize;
        let mut chosen = BUCKETS - 1;
        for (b, e) in hist.iter().enumerate() {
            if rank < cum + e.0 {
                chosen = b;
                break;
            }
            cum += e.0;
        }
        let (count, bmin, bmax) = hist[chosen];
        rank -= cum;
        lo = bmin;
        hi = bmax;
        if lo == hi {
            return Ok(f64::from_bits(lo));
        }
        if count <= cap {
            let parts = par::map_ranges(z, hist_rows, true, |rlo, rhi| {
                rows_kept(x, y, m, dim, rlo, rhi, |d2| {
                    let bits = d2.to_bits();
                    bits >= lo && bits <= hi
                })
            })?;
            let mut vals = mem::concat("x", &parts)?;
            drop(parts);
            let (_, v, _) = vals.select_nth_unstable_by(rank, |a, b| a.total_cmp(b));
            return Ok(*v);
        }
    }
}

/// The median-heuristic bandwidth: the lower median (1-based order statistic `ceil(L/2)`) of the
/// pairwise Euclidean distances of the pooled set, or 1.0 if that median is 0.
pub fn median_sigma(x: &[f64], y: &[f64], m: usize, dim: usize) -> CoreResult<f64> {
    let pairs = m * (2 * m - 1);
    let rank = pairs.div_ceil(2) - 1;
    let med = select_sq_distance(x, y, m, dim, rank)?.sqrt();
    Ok(if med == 0.0 { 1.0 } else { med })
}

/// `sum_{i != j} k(a_i, b_j)`, one running sum, i outer, j inner.
fn kernel_sum(a: &[f64], b: &[f64], m: usize, dim: usize, den: f64) -> CoreResult<f64> {
    let mut acc = 0.0;
    // ROW_GROUP rows of kernel values at a time, computed in parallel, added in order
    let mut buf: Vec<f64> = mem::zeroed("x", ROW_GROUP.min(m) * m)?;
    let mut start = 0;
    while start < m {
        let end = (start + ROW_GROUP).min(m);
        let rows: Vec<(usize, &mut [f64])> =
            mem::collect("x", (start..end).zip(buf.chunks_mut(m)))?;
        par::for_each_item(
            rows,
            true,
            || (),
            |_, _, (i, row)| {
                if interrupt::tick(row_work(m, dim)) {
                    return;
                }
                let ai = &a[i * dim..(i + 1) * dim];
                for (j, r) in row.iter_mut().enumerate() {
                    *r = if i == j {
                        0.0
                    } else {
                        (-sq_dist(ai, &b[j * dim..(j + 1) * dim]) / den).exp()
                    };
                }
            },
        )?;
        for (r, i) in buf.chunks(m).zip(start..end) {
            for (j, &k) in r.iter().enumerate() {
                if i != j {
                    acc += k;
                }
            }
        }
        start = end;
    }
    Ok(acc)
}

/// True when some input is NaN, or some pair's difference is `inf - inf` = NaN (two pooled points
/// hold the same infinity in the same coordinate): then some distance is NaN and the median is
/// undefined.
fn has_nan_distance(x: &[f64], y: &[f64], m: usize, dim: usize) -> bool {
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return true;
    }
    (0..dim).any(|c| {
        let col = (0..m)
            .map(|i| x[i * dim + c])
            .chain((0..m).map(|i| y[i * dim + c]));
        let (mut pos, mut neg) = (0, 0);
        for v in col {
            pos += (v == f64::INFINITY) as usize;
            neg += (v == f64::NEG_INFINITY) as usize;
        }
        pos > 1 || neg > 1
    })
}

/// Pair counts up to this take [`mmd2_materialized`] (two arrays of this many values).
const MATERIALIZE_CAP: usize = 1 << 21;
/// Pair counts from which [`mmd2_materialized`] shares its rows among threads.
const PAR_MIN_PAIRS: usize = 1 << 15;
/// Pairs per work item of [`mmd2_materialized`].
const ITEM_PAIRS: usize = 1 << 13;

/// Start of row `i` of the pooled set's upper triangle (pairs `(i, j)`, `i < j < z`) in row-major
/// order: `sum_{r < i} (z - 1 - r)`.
#[inline(always)]
fn tri_offset(i: usize, z: usize) -> usize {
    i * (z - 1) - i * i.saturating_sub(1) / 2
}

/// Applies `f(row, values_of_row)` to every row of the pooled triangle stored in `tri`, in items of
/// whole rows (parallel when `parallel`).
fn for_rows(
    tri: &mut [f64],
    z: usize,
    dim: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [f64]) + Sync,
) -> CoreResult<()> {
    // split the triangle into items of consecutive rows holding about ITEM_PAIRS values
    let mut items = Vec::new();
    let mut rest: &mut [f64] = tri;
    let mut i = 0;
    while i + 1 < z {
        let first = i;
        let mut len = 0;
        while i + 1 < z && (len == 0 || len + (z - 1 - i) <= ITEM_PAIRS) {
            len += z - 1 - i;
            i += 1;
        }
        let (head, tail) = rest.split_at_mut(len);
        items.push((first, i, head));
        rest = tail;
    }
    par::for_each_item(
        items,
        parallel,
        || (),
        |_, _, (lo, hi, vals)| {
            if interrupt::tick(row_work(vals.len(), dim)) {
                return;
            }
            let mut off = 0;
            for row in lo..hi {
                let len = z - 1 - row;
                f(row, &mut vals[off..off + len]);
                off += len;
            }
        },
    )
}

/// `(mmd2, mmd_sigma)` with every pairwise squared distance of the pooled set stored once: the
/// median is selected from them, and each becomes its kernel value, `k(z_i, z_j)` for `i < j`,
/// which serves both `k(z_i, z_j)` and `k(z_j, z_i)` of the sums (`sq_dist` is symmetric to the
/// bit: `(v - u)^2 = (u - v)^2` exactly). The three sums then run in their order (i outer, j inner,
/// i != j) over the stored values: one exp per pair instead of one per term, no allocation per row.
fn mmd2_materialized(x: &[f64], y: &[f64], m: usize, dim: usize) -> CoreResult<(f64, f64)> {
    let z = 2 * m;
    let pairs = m * (z - 1);
    let parallel = pairs >= PAR_MIN_PAIRS;
    let mut tri: Vec<f64> = mem::zeroed("x", pairs)?;
    for_rows(&mut tri, z, dim, parallel, |i, vals| {
        let zi = pooled(x, y, m, dim, i);
        for (v, j) in vals.iter_mut().zip(i + 1..z) {
            *v = sq_dist(zi, pooled(x, y, m, dim, j));
        }
    })?;
    // median of the squared distances (>= +0.0 or +inf, no NaN here: their bit patterns order like
    // their values)
    let rank = pairs.div_ceil(2) - 1;
    let mut bits: Vec<u64> = mem::collect("x", tri.iter().map(|v| v.to_bits()))?;
    let (_, med_bits, _) = bits.select_nth_unstable(rank);
    let med = f64::from_bits(*med_bits).sqrt();
    drop(bits);
    let sigma = if med == 0.0 { 1.0 } else { med };
    if m < 2 {
        return Ok((f64::NAN, sigma));
    }
    let den = 2.0 * (sigma * sigma);
    for_rows(&mut tri, z, 1, parallel, |_, vals| {
        for v in vals.iter_mut() {
            *v = (-*v / den).exp();
        }
    })?;
    // k(z_a, z_b) for a != b
    let kv = |a: usize, b: usize| -> f64 {
        if a < b {
            tri[tri_offset(a, z) + (b - a - 1)]
        } else {
            tri[tri_offset(b, z) + (a - b - 1)]
        }
    };
    let (mut kxx, mut kyy, mut kxy) = (0.0, 0.0, 0.0);
    for i in 0..m {
        for j in 0..m {
            if i != j {
                kxx += kv(i, j);
                kyy += kv(m + i, m + j);
                kxy += kv(i, m + j);
            }
        }
    }
    let mm1 = (m * (m - 1)) as f64;
    Ok(((kxx / mm1 + kyy / mm1) - (2.0 * kxy) / mm1, sigma))
}

/// The bytes [`mmd2`] holds at once for two (M, dim) sets, besides its inputs.
pub fn mmd2_bytes(m: usize) -> u128 {
    let z = 2 * m as u128;
    let pairs = m as u128 * z.saturating_sub(1);
    if pairs <= MATERIALIZE_CAP as u128 {
        // the triangle and its bit patterns, and the row items
        return 16 * pairs + 64 * z;
    }
    let select = 16 * DIRECT_CAP as u128; // the kept distances, per item and concatenated
    let hists = (HIST_ITEMS * BUCKETS * std::mem::size_of::<(usize, u64, u64)>()) as u128;
    let rows = 8 * (ROW_GROUP as u128).min(m as u128) * m as u128;
    select.max(hists) + rows + 64 * (z / ROW_GROUP as u128 + HIST_ITEMS as u128)
}

/// `(mmd2, mmd_sigma)` for the (M, dim) sets `x` and `y`.
///
/// `M < 2`: the U-statistic is undefined and `mmd2` is NaN (`mmd_sigma` is still the median of the
/// pooled set's distances, 1.0 when there is no pair). Infinite coordinates (a diverged run's states)
/// give infinite distances, which order like any other (IEEE arithmetic throughout, as in the
/// reference); but when a distance is NaN (a NaN input, or `inf - inf`) the median is undefined and
/// the result is `(NaN, NaN)`.
pub fn mmd2(x: &[f64], y: &[f64], dim: usize) -> CoreResult<(f64, f64)> {
    if dim == 0 {
        return Err(CoreError::invalid("x", "rows must hold at least one value"));
    }
    if !x.len().is_multiple_of(dim) {
        return Err(CoreError::invalid(
            "x",
            "length is not a multiple of the row length",
        ));
    }
    let m = x.len() / dim;
    if m > 1 << 30 {
        return Err(CoreError::invalid(
            "x",
            format!("at most 2**30 rows, got {m}"),
        ));
    }
    if y.len() != x.len() {
        return Err(CoreError::shape("y", &[m, dim], &[y.len() / dim, dim]));
    }
    if has_nan_distance(x, y, m, dim) {
        return Ok((f64::NAN, f64::NAN));
    }
    if m == 0 {
        return Ok((f64::NAN, 1.0));
    }
    mem::plan("x", mmd2_bytes(m))?;
    if m * (2 * m - 1) <= MATERIALIZE_CAP {
        return mmd2_materialized(x, y, m, dim);
    }
    mmd2_streaming(x, y, m, dim)
}

/// [`mmd2`] of large sets without storing the pairs: the median by selection (or histogram passes)
/// and the three kernel sums row by row. The same bits as [`mmd2_materialized`] (the tests run both
/// on every size).
fn mmd2_streaming(x: &[f64], y: &[f64], m: usize, dim: usize) -> CoreResult<(f64, f64)> {
    let sigma = median_sigma(x, y, m, dim)?;
    if m < 2 {
        return Ok((f64::NAN, sigma));
    }
    let den = 2.0 * (sigma * sigma);
    let kxx = kernel_sum(x, x, m, dim, den)?;
    let kyy = kernel_sum(y, y, m, dim, den)?;
    let kxy = kernel_sum(x, y, m, dim, den)?;
    let mm1 = (m * (m - 1)) as f64;
    let mmd = (kxx / mm1 + kyy / mm1) - (2.0 * kxy) / mm1;
    Ok((mmd, sigma))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_sq(x: &[f64], y: &[f64], m: usize, dim: usize) -> Vec<f64> {
        let mut v = Vec::new();
        for i in 0..2 * m {
            row_pairs(x, y, m, dim, i, |d| v.push(d));
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    #[test]
    fn median_by_hand() {
        // pooled points 0, 1, 3, 7 on a line: distances 1 3 7 2 6 4 -> sorted 1 2 3 4 6 7, L = 6,
        // rank ceil(6/2) = 3 -> 3
        let x = [0.0, 1.0];
        let y = [3.0, 7.0];
        assert_eq!(median_sigma(&x, &y, 2, 1).unwrap(), 3.0);
        // identical points: median 0 -> 1.0
        assert_eq!(median_sigma(&[2.0, 2.0], &[2.0, 2.0], 2, 1).unwrap(), 1.0);
    }

    #[test]
    fn histogram_path_equals_direct_selection() {
        let m = 1500; // L = 4.5M > DIRECT_CAP
        let dim = 3;
        let mut s: u64 = 12345;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / 9007199254740992.0 * 4.0).round() / 4.0 // ties on purpose
        };
        let x: Vec<f64> = (0..m * dim).map(|_| next()).collect();
        let y: Vec<f64> = (0..m * dim).map(|_| next() + 0.5).collect();
        let sorted = all_sq(&x, &y, m, dim);
        assert!(sorted.len() > DIRECT_CAP);
        for rank in [
            0,
            1,
            sorted.len() / 3,
            sorted.len().div_ceil(2) - 1,
            sorted.len() - 1,
        ] {
            assert_eq!(
                select_sq_distance(&x, &y, m, dim, rank).unwrap(),
                sorted[rank],
                "rank {rank}"
            );
        }
    }

    /// The streaming path of large sets (kernel sums row by row, median by selection or histogram),
    /// at any size: mmd2 itself, not a copy of it
    fn streaming(x: &[f64], y: &[f64], m: usize, dim: usize) -> (f64, f64) {
        mmd2_streaming(x, y, m, dim).unwrap()
    }

    #[test]
    fn materialized_equals_streaming() {
        for (m, dim) in [(1, 1), (2, 3), (3, 1), (17, 4), (64, 4), (130, 2)] {
            let x: Vec<f64> = (0..m * dim)
                .map(|i| ((i * 37 % 101) as f64 * 0.37).sin())
                .collect();
            let mut y: Vec<f64> = (0..m * dim)
                .map(|i| ((i * 17 % 89) as f64 * 0.5).cos())
                .collect();
            if m > 2 {
                y[dim] = f64::INFINITY; // an infinite distance orders like any other
            }
            let a = mmd2_materialized(&x, &y, m, dim).unwrap();
            let b = streaming(&x, &y, m, dim);
            assert_eq!(a.0.to_bits(), b.0.to_bits(), "m {m}");
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "m {m}");
        }
    }

    /// MODEL.md 4.1 written out plainly: the pooled set, every distance `sqrt(sum_c (z_i[c] -
    /// z_j[c])^2)` for i < j, sorted, the lower median (1.0 if 0, NaN if some distance is NaN),
    /// and the three kernel sums over i != j, i outer, j inner.
    fn mmd_oracle(x: &[f64], y: &[f64], dim: usize) -> (f64, f64) {
        let m = x.len() / dim;
        let z: Vec<&[f64]> = x.chunks(dim).chain(y.chunks(dim)).collect();
        let sq = |u: &[f64], v: &[f64]| -> f64 {
            let mut acc = 0.0;
            for c in 0..dim {
                acc += (u[c] - v[c]) * (u[c] - v[c]);
            }
            acc
        };
        let mut dists = Vec::new();
        for i in 0..z.len() {
            for j in i + 1..z.len() {
                dists.push(sq(z[i], z[j]).sqrt());
            }
        }
        if dists.is_empty() {
            return (f64::NAN, 1.0);
        }
        if dists.iter().any(|d| d.is_nan()) {
            return (f64::NAN, f64::NAN);
        }
        dists.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = dists[dists.len().div_ceil(2) - 1];
        let sigma = if med == 0.0 { 1.0 } else { med };
        if m < 2 {
            return (f64::NAN, sigma);
        }
        let den = 2.0 * (sigma * sigma);
        let k = |u: &[f64], v: &[f64]| (-sq(u, v) / den).exp();
        let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    sxx += k(z[i], z[j]);
                }
            }
        }
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    syy += k(z[m + i], z[m + j]);
                }
            }
        }
        for i in 0..m {
            for j in 0..m {
                if i != j {
                    sxy += k(z[i], z[m + j]);
                }
            }
        }
        let p = (m * (m - 1)) as f64;
        ((sxx / p + syy / p) - (2.0 * sxy) / p, sigma)
    }

    fn same(a: (f64, f64), b: (f64, f64)) -> bool {
        let eq = |u: f64, v: f64| u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan());
        eq(a.0, b.0) && eq(a.1, b.1)
    }

    /// Both paths (the stored triangle of `mmd2` and the streaming sums of large sets) equal the
    /// model written out, for sets with several coordinates, ties, shared state coordinates,
    /// infinities that order like any other distance and ones that make a distance NaN.
    #[test]
    fn both_paths_equal_the_model_written_out() {
        let mut s: u64 = 777;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / 9007199254740992.0 * 4.0 - 2.0
        };
        for (m, dim) in [
            (1, 1),
            (1, 3),
            (2, 2),
            (3, 3),
            (5, 2),
            (17, 4),
            (64, 3),
            (65, 2),
            (130, 2),
        ] {
            let x: Vec<f64> = (0..m * dim).map(|_| next()).collect();
            let mut y: Vec<f64> = (0..m * dim).map(|_| next() + 0.3).collect();
            for i in 0..m {
                y[i * dim] = x[i * dim]; // the shared state coordinate
            }
            let mut xt = x.clone();
            for v in xt.iter_mut().step_by(3) {
                *v = (*v * 2.0).round() / 2.0; // ties
            }
            let cases: Vec<(Vec<f64>, Vec<f64>)> = vec![
                (x.clone(), y.clone()),
                (xt.clone(), y.clone()),
                (x.clone(), x.clone()),
                (vec![1.0; m * dim], vec![1.0; m * dim]),
            ];
            for (a, b) in cases {
                let want = mmd_oracle(&a, &b, dim);
                assert!(same(mmd2(&a, &b, dim).unwrap(), want), "m {m} dim {dim}");
                assert!(same(streaming(&a, &b, m, dim), want), "m {m} dim {dim}");
            }
            if m >= 2 {
                // +inf and -inf in one column: an infinite distance, no NaN
                let mut a = x.clone();
                let mut b = y.clone();
                a[dim - 1] = f64::INFINITY;
                b[(m - 1) * dim + dim - 1] = f64::NEG_INFINITY;
                let want = mmd_oracle(&a, &b, dim);
                assert!(!want.1.is_nan());
                assert!(
                    same(mmd2(&a, &b, dim).unwrap(), want),
                    "inf m {m} dim {dim}"
                );
                assert!(same(streaming(&a, &b, m, dim), want), "inf m {m} dim {dim}");
                // two -inf in one column: inf - inf = NaN somewhere
                b[dim - 1] = f64::NEG_INFINITY;
                assert!(same(mmd2(&a, &b, dim).unwrap(), (f64::NAN, f64::NAN)));
                assert!(mmd_oracle(&a, &b, dim).1.is_nan());
                // and two +inf
                let mut c = x.clone();
                c[0] = f64::INFINITY;
                c[(m - 1) * dim] = f64::INFINITY;
                assert!(same(mmd2(&c, &y, dim).unwrap(), (f64::NAN, f64::NAN)));
            }
        }
    }

    /// The stored triangle's row offsets: row i of the pairs (i, j), i < j < z, starts after the
    /// z-1 + z-2 + ... + z-i pairs of the rows before it.
    #[test]
    fn triangle_offsets() {
        for z in [2usize, 3, 4, 10, 129] {
            let mut off = 0;
            for i in 0..z - 1 {
                assert_eq!(tri_offset(i, z), off, "z {z} i {i}");
                off += z - 1 - i;
            }
            assert_eq!(off, z * (z - 1) / 2);
        }
    }

    #[test]
    fn mmd_by_hand() {
        let x = [0.0, 1.0];
        let y = [3.0, 7.0];
        let (mmd, sigma) = mmd2(&x, &y, 1).unwrap();
        assert_eq!(sigma, 3.0);
        let k = |a: f64, b: f64| (-((a - b) * (a - b)) / (2.0 * 9.0)).exp();
        let kxx = k(0.0, 1.0) + k(1.0, 0.0);
        let kyy = k(3.0, 7.0) + k(7.0, 3.0);
        // the paired cross sum leaves out (x_0, y_0) = (0, 3) and (x_1, y_1) = (1, 7)
        let kxy = k(0.0, 7.0) + k(1.0, 3.0);
        let expect = (kxx / 2.0 + kyy / 2.0) - 2.0 * kxy / 2.0;
        assert_eq!(mmd, expect);
        // identical sets: the cross sum is the within-set sum term by term, so mmd2 = a/p + a/p - 2a/p,
        // which is exactly 0 (doubling is exact). The old statistic, whose cross sum kept the
        // k(x_i, x_i) = 1 terms, was negative here.
        let (same, _) = mmd2(&x, &x, 1).unwrap();
        assert_eq!(same, 0.0);
    }

    #[test]
    fn kernel_sum_is_thread_independent() {
        let m = 200;
        let x: Vec<f64> = (0..m * 2).map(|i| ((i * 31 % 97) as f64).sin()).collect();
        let y: Vec<f64> = (0..m * 2).map(|i| ((i * 17 % 89) as f64).cos()).collect();
        let a = mmd2(&x, &y, 2).unwrap();
        let b = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| mmd2(&x, &y, 2).unwrap());
        assert_eq!(a.0.to_bits(), b.0.to_bits());
        assert_eq!(a.1.to_bits(), b.1.to_bits());
    }

    #[test]
    fn errors_and_degenerate_sets() {
        assert_eq!(mmd2(&[1.0, 2.0], &[1.0], 1).unwrap_err().arg(), "y");
        // the error gives both shapes: 3 rows of 2 expected, y holds 2 rows
        assert_eq!(
            mmd2(&[1.0; 6], &[1.0; 4], 2).unwrap_err(),
            CoreError::shape("y", &[3, 2], &[2, 2])
        );
        assert_eq!(mmd2(&[1.0, 2.0], &[1.0, 2.0], 0).unwrap_err().arg(), "x");
        let (v, s) = mmd2(&[1.0], &[4.0], 1).unwrap();
        assert!(v.is_nan());
        assert_eq!(s, 3.0);
        let (v, s) = mmd2(&[], &[], 2).unwrap();
        assert!(v.is_nan());
        assert_eq!(s, 1.0);
        let (v, s) = mmd2(&[1.0, f64::NAN], &[1.0, 2.0], 1).unwrap();
        assert!(v.is_nan() && s.is_nan());
        // inf - inf in some pair: undefined median
        let (v, s) = mmd2(&[1.0, f64::INFINITY], &[f64::INFINITY, 2.0], 1).unwrap();
        assert!(v.is_nan() && s.is_nan());
        // a single infinity: distances 1, inf, 1, inf, 0, inf -> sorted 0 1 1 inf inf inf, rank 3 -> 1
        let (v, s) = mmd2(&[1.0, f64::INFINITY], &[1.0, 2.0], 1).unwrap();
        assert_eq!(s, 1.0);
        assert!(v.is_finite());
    }
    /// Two deterministic (m, dim) sets for the memory tests.
    fn two_sets(m: usize, dim: usize) -> (Vec<f64>, Vec<f64>) {
        let x = (0..m * dim)
            .map(|i| ((i * 37 % 101) as f64 * 0.37).sin())
            .collect();
        let y = (0..m * dim)
            .map(|i| ((i * 17 % 89) as f64 * 0.5).cos())
            .collect();
        (x, y)
    }
    /// `mmd2_bytes` against what `mmd2` really holds at once (a counting allocator).
    #[test]
    fn mmd2_bytes_bounds_what_mmd2_holds() {
        for (m, dim) in [(2usize, 1usize), (30, 3), (300, 4), (1000, 2)] {
            let (x, y) = two_sets(m, dim);
            let (est, out, peak) =
                crate::mem::counting::measure(|| mmd2_bytes(m), || mmd2(&x, &y, dim).unwrap());
            crate::mem::counting::check_estimate(&format!("mmd2 m {m} dim {dim}"), est, peak);
            assert!(out.1 > 0.0);
        }
    }
    /// The histogram passes on small sets (a small cap forces them, several passes deep): ranks of
    /// the pooled squared distances written out plainly (i < j, coordinates in order) and sorted,
    /// with ties, zeros and infinite distances.
    #[test]
    fn histogram_passes_select_every_rank() {
        let mut s: u64 = 99;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / 9007199254740992.0 * 8.0).round() / 4.0 // ties on purpose
        };
        for (m, dim, inf) in [(2usize, 1usize, false), (12, 2, false), (25, 3, true)] {
            let x: Vec<f64> = (0..m * dim).map(|_| next()).collect();
            let mut y: Vec<f64> = (0..m * dim).map(|_| next() + 0.25).collect();
            y[dim] = x[dim]; // a zero distance
            if inf {
                y[0] = f64::INFINITY; // a row of infinite distances
            }
            let z: Vec<&[f64]> = x.chunks(dim).chain(y.chunks(dim)).collect();
            let mut want = Vec::new();
            for i in 0..z.len() {
                for j in i + 1..z.len() {
                    let mut acc = 0.0;
                    for c in 0..dim {
                        acc += (z[i][c] - z[j][c]) * (z[i][c] - z[j][c]);
                    }
                    want.push(acc);
                }
            }
            want.sort_by(|a, b| a.total_cmp(b));
            for cap in [0usize, 3, 50] {
                for rank in (0..want.len())
                    .step_by(1 + want.len() / 150)
                    .chain([want.len() - 1])
                {
                    let got = select_sq_distance_capped(&x, &y, m, dim, rank, cap).unwrap();
                    assert_eq!(
                        got.to_bits(),
                        want[rank].to_bits(),
                        "m {m} cap {cap} rank {rank}"
                    );
                }
            }
        }
    }

    /// The work the passes over the pairs tick is their floating-point operations (the latency
    /// contract of `crate::interrupt`). A pair's squared distance is `dim` differences, products
    /// and sums (3 dim flops); each pass does a few more per pair: keeping and storing it (~2) and
    /// the selection among the kept values (~3 comparisons a value) in the direct selection, the
    /// bucket (a comparison pair, a product and a quotient, ~5) in a histogram pass, the kernel
    /// value `exp(-d2 / den)` (a quotient and an exp, ~12 flops of polynomial) and its sum in the
    /// kernel sums and mmd2's second pass. dim = 2 makes those per-pair terms a third or more of
    /// it, dim = 30 leaves the distance.
    #[test]
    fn ticked_work_counts_the_flops() {
        use crate::interrupt::tally;
        let m = 60;
        let z = 2 * m;
        let pairs = (m * (z - 1)) as f64;
        for dim in [2usize, 30] {
            let d = dim as f64;
            let (x, y) = two_sets(m, dim);
            let rank = m * (z - 1) / 2;
            let want = all_sq(&x, &y, m, dim)[rank];
            // the direct selection: one pass over the pairs
            let (v, t) = tally::measure(|| select_sq_distance(&x, &y, m, dim, rank).unwrap());
            assert_eq!(v, want);
            tally::check_work(
                &format!("direct selection dim {dim}"),
                t,
                pairs * (3.0 * d + 5.0),
            );
            // the histogram passes (a cap of 100 values): every pass, the last one a direct
            // selection, visits each row once and ticks it, so the passes are the ticks / z
            let (v, t) =
                tally::measure(|| select_sq_distance_capped(&x, &y, m, dim, rank, 100).unwrap());
            assert_eq!(v, want);
            assert!(t.ticks >= 2 * z as u64 && t.ticks % z as u64 == 0, "{t:?}");
            let passes = (t.ticks / z as u64) as f64;
            let flops = (passes - 1.0) * pairs * (3.0 * d + 5.0) + pairs * (3.0 * d + 2.0);
            tally::check_work(&format!("histogram passes dim {dim}"), t, flops);
            if dim == 30 {
                // one kernel sum: m^2 pairs (the m diagonal ones are computed too, then skipped)
                let (_, t) = tally::measure(|| kernel_sum(&x, &y, m, dim, 3.0).unwrap());
                let mm = (m * m) as f64;
                tally::check_work("kernel_sum dim 30", t, mm * (3.0 * d + 12.0 + 1.0));
                // mmd2 (materialized at this size): the distances, their selection, the kernel
                // values and the three sums over m (m - 1) pairs each
                let (_, t) = tally::measure(|| mmd2(&x, &y, dim).unwrap());
                let flops = pairs * (3.0 * d + 3.0 + 12.0) + 3.0 * (m * (m - 1)) as f64;
                tally::check_work("mmd2 dim 30", t, flops);
            }
        }
    }

    /// `mmd2_bytes` against the layout of what `mmd2` holds. Materialized (up to MATERIALIZE_CAP
    /// pairs): the triangle and its bit patterns, 16 bytes a pair, and the row items (at most one a
    /// row); measured with the counting allocator, the estimate must cover it to the byte even
    /// where the items outweigh the pairs (m = 1, 2: the list of items is allocated for 4). Streaming
    /// (pure, evaluated at sizes that are never allocated): the median's selection holds at most
    /// 2 DIRECT_CAP distances (the kept values per item and concatenated) or the HIST_ITEMS
    /// histograms of a pass (24 bytes a bucket, never both at once), the kernel sums ROW_GROUP rows
    /// of m values; the estimate adds the two phases (deliberately: no phase is undercounted) and
    /// 64 bytes per work item (ROW_GROUP rows or a histogram item), and the test asserts that sum,
    /// which is at least what one phase holds.
    #[test]
    fn mmd2_bytes_follows_the_layout() {
        for (m, dim) in [(1usize, 1usize), (2, 1), (3, 2), (10, 2)] {
            let (x, y) = two_sets(m, dim);
            let (est, out, peak) =
                crate::mem::counting::measure(|| mmd2_bytes(m), || mmd2(&x, &y, dim).unwrap());
            assert!(out.1 > 0.0);
            assert!(
                peak <= est,
                "mmd2 m {m}: holds {peak} bytes, estimate {est}"
            );
            let (pairs, z) = ((m * (2 * m - 1)) as u128, 2 * m as u128);
            assert!(
                est >= 16 * pairs && est <= 16 * pairs + 64 * z,
                "m {m}: {est}"
            );
        }
        let direct = 16 * DIRECT_CAP as u128;
        let hists = (HIST_ITEMS * BUCKETS * std::mem::size_of::<(usize, u64, u64)>()) as u128;
        // from the first streaming size to one where the kernel sums' rows outweigh the selection
        for m in [1025usize, 1448, 1449, 1 << 17, 1 << 20, 1 << 30] {
            let (mu, z) = (m as u128, 2 * m as u128);
            let rows = 8 * ROW_GROUP as u128 * mu;
            let items = z / ROW_GROUP as u128 + HIST_ITEMS as u128;
            let est = mmd2_bytes(m);
            assert!(est >= direct.max(hists).max(rows), "one phase, m {m}");
            assert_eq!(est, direct.max(hists) + rows + 64 * items, "m {m}");
        }
    }
}
