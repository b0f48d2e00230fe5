//! Philox4x64-10 (Salmon et al. 2011, Random123) and the addressed streams of MODEL.md section 1.
//!
//! A stream is `(seed, purpose, iteration, substream)`; draw `i` of it lives in the block
//! `philox(counter = [i / 4, iteration, substream, 0], key = [seed, purpose])`.
//! [`Uniforms`] and [`Normals`] read a stream by index and cache the last block, so reading a stream
//! sequentially generates every block exactly once.

use crate::error::{CoreError, CoreResult};
use crate::{interrupt, mem};

/// First round multiplier.
pub const PHILOX_M0: u64 = 0xD2E7_470E_E14C_6C93;
/// Second round multiplier.
pub const PHILOX_M1: u64 = 0xCA5A_8263_9512_1157;
/// Weyl increment of key word 0.
pub const PHILOX_W0: u64 = 0x9E37_79B9_7F4A_7C15;
/// Weyl increment of key word 1.
pub const PHILOX_W1: u64 = 0xBB67_AE85_84CA_A73B;
/// 2 pi; MODEL.md writes it as 6.283185307179586 (the same double, checked in the tests).
pub const TAU: f64 = std::f64::consts::TAU;
/// 2^-53: the spacing of the uniforms.
const TWO_POW_M53: f64 = 1.0 / 9_007_199_254_740_992.0;
#[cfg(test)]
const TWO_POW_53: f64 = 9_007_199_254_740_992.0;

#[inline(always)]
fn mulhilo(a: u64, b: u64) -> (u64, u64) {
    let p = (a as u128) * (b as u128);
    ((p >> 64) as u64, p as u64)
}

#[inline(always)]
fn round(ctr: [u64; 4], key: [u64; 2]) -> [u64; 4] {
    let (hi0, lo0) = mulhilo(PHILOX_M0, ctr[0]);
    let (hi1, lo1) = mulhilo(PHILOX_M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// The Philox4x64 bijection with 10 rounds: `philox(counter, key) -> block`.
#[inline]
pub fn philox4x64_10(counter: [u64; 4], key: [u64; 2]) -> [u64; 4] {
    let mut ctr = counter;
    let mut k = key;
    ctr = round(ctr, k);
    for _ in 1..10 {
        k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        ctr = round(ctr, k);
    }
    ctr
}

/// `(word >> 11) * 2^-53`, a uniform in [0, 1).
#[inline(always)]
pub fn word_to_uniform(word: u64) -> f64 {
    ((word >> 11) as f64) * TWO_POW_M53
}

/// `(sin(x), cos(x))` from one call of glibc's `sincos`, which gives the bits of its `sin` and
/// `cos` (Python's `math.sin` / `math.cos`) for every Box-Muller angle: see
/// `tests::sincos_equals_sin_and_cos`. (LLVM already merged the two calls into `sincos` in some
/// places; calling it explicitly makes every place do so.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[inline(always)]
pub fn sin_cos(x: f64) -> (f64, f64) {
    extern "C" {
        fn sincos(x: f64, s: *mut f64, c: *mut f64);
    }
    let mut s = 0.0;
    let mut c = 0.0;
    // SAFETY: glibc's sincos writes one double through each (valid, exclusive) pointer.
    unsafe { sincos(x, &mut s, &mut c) };
    (s, c)
}

/// `(sin(x), cos(x))` from the C library's `sin` and `cos`.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[inline(always)]
pub fn sin_cos(x: f64) -> (f64, f64) {
    (x.sin(), x.cos())
}

/// Box-Muller on one pair of words: `(r cos theta, r sin theta)`.
#[inline(always)]
pub fn box_muller(x: u64, y: u64) -> (f64, f64) {
    let u1 = 1.0 - ((x >> 11) as f64) * TWO_POW_M53;
    let u2 = ((y >> 11) as f64) * TWO_POW_M53;
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = TAU * u2;
    let (s, c) = sin_cos(theta);
    (r * c, r * s)
}

/// The four normals of one block (normal #4b .. #4b+3 of its stream).
#[inline(always)]
pub fn block_normals(words: [u64; 4]) -> [f64; 4] {
    let (a, b) = box_muller(words[0], words[1]);
    let (c, d) = box_muller(words[2], words[3]);
    [a, b, c, d]
}

/// The four uniforms of one block.
#[inline(always)]
pub fn block_uniforms(words: [u64; 4]) -> [f64; 4] {
    [
        word_to_uniform(words[0]),
        word_to_uniform(words[1]),
        word_to_uniform(words[2]),
        word_to_uniform(words[3]),
    ]
}

/// One addressed stream `(seed, purpose, iteration, substream)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub seed: u64,
    pub purpose: u64,
    pub iteration: u64,
    pub substream: u64,
}

impl Stream {
    pub fn new(seed: u64, purpose: u64, iteration: u64, substream: u64) -> Self {
        Stream {
            seed,
            purpose,
            iteration,
            substream,
        }
    }

    /// Block number `b` (holding draws `4b .. 4b+3`).
    #[inline(always)]
    pub fn block(&self, b: u64) -> [u64; 4] {
        philox4x64_10(
            [b, self.iteration, self.substream, 0],
            [self.seed, self.purpose],
        )
    }

    /// Uniform #i, uncached.
    pub fn uniform(&self, i: u64) -> f64 {
        word_to_uniform(self.block(i / 4)[(i % 4) as usize])
    }

    /// Normal #i, uncached.
    pub fn normal(&self, i: u64) -> f64 {
        block_normals(self.block(i / 4))[(i % 4) as usize]
    }
}

const NO_BLOCK: u64 = u64::MAX;

/// Philox blocks per batch of [`fill_normals`].
const BATCH_BLOCKS: usize = 128;
/// Angle buckets of [`normals_batch`]'s counting sort (a power of two).
const ANGLE_BUCKETS: usize = 64;

/// Reads uniform #i of a stream, caching the last block.
#[derive(Debug, Clone)]
pub struct Uniforms {
    stream: Stream,
    cached: u64,
    vals: [f64; 4],
}

impl Uniforms {
    pub fn new(stream: Stream) -> Self {
        Uniforms {
            stream,
            cached: NO_BLOCK,
            vals: [0.0; 4],
        }
    }

    #[inline(always)]
    pub fn get(&mut self, i: u64) -> f64 {
        let b = i >> 2;
        if b != self.cached {
            self.vals = block_uniforms(self.stream.block(b));
            self.cached = b;
        }
        self.vals[(i & 3) as usize]
    }
}

/// Reads normal #i of a stream, caching the last block's four normals.
#[derive(Debug, Clone)]
pub struct Normals {
    stream: Stream,
    cached: u64,
    vals: [f64; 4],
}

impl Normals {
    pub fn new(stream: Stream) -> Self {
        Normals {
            stream,
            cached: NO_BLOCK,
            vals: [0.0; 4],
        }
    }

    #[inline(always)]
    pub fn get(&mut self, i: u64) -> f64 {
        let b = i >> 2;
        if b != self.cached {
            self.vals = block_normals(self.stream.block(b));
            self.cached = b;
        }
        self.vals[(i & 3) as usize]
    }
}

/// Writes uniforms #first .. #first+out.len() of `stream` into `out`, generating each block once.
///
/// The blocks are independent of each other, so the loop keeps several Philox evaluations in flight
/// (no state is carried from one block to the next, unlike the cached [`Uniforms`]).
#[inline(always)]
pub fn fill_uniforms(stream: &Stream, first: u64, out: &mut [f64]) {
    let mut idx = first;
    let mut pos = 0;
    while pos < out.len() {
        let off = (idx & 3) as usize;
        let take = (4 - off).min(out.len() - pos);
        let words = stream.block(idx >> 2);
        for t in 0..take {
            out[pos + t] = word_to_uniform(words[off + t]);
        }
        pos += take;
        idx += take as u64;
    }
}

/// Writes normals #first .. #first+out.len() of `stream` into `out`, generating each block once and
/// computing only the Box-Muller pairs that `out` needs.
///
/// Box-Muller's `r * cos(theta)` and `r * sin(theta)` share one `sincos` call (LLVM fuses the two
/// glibc calls, as it always has in this crate); `philox::tests::sincos_equals_sin_and_cos` checks
/// that this gives the bits of separate `sin` and `cos` calls (Python's) for every `theta` that
/// Box-Muller can produce where glibc's two code paths could differ.
#[inline(always)]
pub fn fill_normals(stream: &Stream, first: u64, out: &mut [f64]) {
    let mut idx = first;
    let mut pos = 0;
    let len = out.len();
    // a leading partial block
    if idx & 3 != 0 {
        let off = (idx & 3) as usize;
        let take = (4 - off).min(len);
        let v = block_normals(stream.block(idx >> 2));
        out[..take].copy_from_slice(&v[off..off + take]);
        pos += take;
        idx += take as u64;
    }
    // whole blocks, in batches
    while len - pos >= 4 {
        let nb = ((len - pos) / 4).min(BATCH_BLOCKS);
        normals_batch(stream, idx >> 2, &mut out[pos..pos + 4 * nb]);
        pos += 4 * nb;
        idx += 4 * nb as u64;
    }
    // a trailing partial block: one or both pairs
    let rest = len - pos;
    if rest > 0 {
        let w = stream.block(idx >> 2);
        let (a, b) = box_muller(w[0], w[1]);
        out[pos] = a;
        if rest > 1 {
            out[pos + 1] = b;
        }
        if rest > 2 {
            out[pos + 2] = box_muller(w[2], w[3]).0;
        }
    }
}

/// The normals of the `out.len() / 4` whole blocks from block `b0` on: all Philox blocks first,
/// then all logarithms, then the sines and cosines in order of their angle.
///
/// glibc's `sincos` branches on the range of its argument (and on the quadrant); with angles in
/// random order those branches are mispredicted about half the time, which costs more than the
/// computation. Every call is a pure function of its argument, so the calls are made in order of the
/// angle's leading bits (a counting sort into [`ANGLE_BUCKETS`] buckets) and the results stored in
/// their places: the same values, at about half the cost.
#[inline(always)]
fn normals_batch(stream: &Stream, b0: u64, out: &mut [f64]) {
    let pairs = out.len() / 2;
    debug_assert!(pairs <= 2 * BATCH_BLOCKS && out.len().is_multiple_of(4));
    let mut u1 = [0.0; 2 * BATCH_BLOCKS];
    let mut y = [0u64; 2 * BATCH_BLOCKS];
    for b in 0..pairs / 2 {
        let w = stream.block(b0 + b as u64);
        u1[2 * b] = 1.0 - ((w[0] >> 11) as f64) * TWO_POW_M53;
        y[2 * b] = w[1] >> 11;
        u1[2 * b + 1] = 1.0 - ((w[2] >> 11) as f64) * TWO_POW_M53;
        y[2 * b + 1] = w[3] >> 11;
    }
    let mut r = [0.0; 2 * BATCH_BLOCKS];
    for p in 0..pairs {
        r[p] = (-2.0 * u1[p].ln()).sqrt();
    }
    // counting sort of the pair indices by the angle's leading bits
    const SHIFT: u32 = 53 - ANGLE_BUCKETS.trailing_zeros();
    let mut start = [0u16; ANGLE_BUCKETS + 1];
    for p in 0..pairs {
        start[(y[p] >> SHIFT) as usize + 1] += 1;
    }
    for k in 0..ANGLE_BUCKETS {
        start[k + 1] += start[k];
    }
    let mut order = [0u16; 2 * BATCH_BLOCKS];
    for p in 0..pairs {
        let k = (y[p] >> SHIFT) as usize;
        order[start[k] as usize] = p as u16;
        start[k] += 1;
    }
    for &p in &order[..pairs] {
        let p = p as usize;
        let theta = TAU * ((y[p] as f64) * TWO_POW_M53);
        let (s, c) = sin_cos(theta);
        out[2 * p] = r[p] * c;
        out[2 * p + 1] = r[p] * s;
    }
}

/// Values generated between two interruption ticks by the array functions below (a multiple of 4,
/// so the chunks of [`fill_normals`] stay block-aligned; the values do not depend on it).
const FILL_CHUNK: usize = 1 << 14;

/// A fallibly allocated output of `count` values of `T`, planned against the available memory.
fn output<T: mem::Zeroed>(count: usize) -> CoreResult<Vec<T>> {
    mem::plan("count", mem::bytes_of::<T>(count))?;
    mem::zeroed("count", count)
}

/// Blocks `start .. start + count` of a stream, flattened (4 words per block).
pub fn blocks(stream: Stream, start: u64, count: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(count * 4);
    for b in 0..count as u64 {
        out.extend_from_slice(&stream.block(start + b));
    }
    out
}

/// Uniforms #start .. #start+count of a stream.
pub fn uniforms(stream: Stream, start: u64, count: usize) -> Vec<f64> {
    let mut u = vec![0.0; count];
    fill_uniforms(&stream, start, &mut u);
    u
}

/// Normals #start .. #start+count of a stream.
pub fn normals(stream: Stream, start: u64, count: usize) -> Vec<f64> {
    let mut z = vec![0.0; count];
    fill_normals(&stream, start, &mut z);
    z
}

/// [`blocks`] for callers that pass the size: the output planned against the available memory and
/// allocated fallibly ([`CoreError::OutOfMemory`] naming `count`), the work interruptible.
pub fn try_blocks(stream: Stream, start: u64, count: usize) -> CoreResult<Vec<u64>> {
    let len = count.checked_mul(4).ok_or(CoreError::OutOfMemory {
        arg: "count",
        bytes: count as u128 * 32,
        available: None,
    })?;
    let mut out: Vec<u64> = output(len)?;
    for (c, chunk) in out.chunks_mut(FILL_CHUNK).enumerate() {
        interrupt::tick_check(8 * chunk.len() as u64)?;
        let b0 = start + (c * FILL_CHUNK / 4) as u64;
        for (b, words) in chunk.chunks_exact_mut(4).enumerate() {
            words.copy_from_slice(&stream.block(b0 + b as u64));
        }
    }
    Ok(out)
}

/// [`uniforms`], planned, fallible and interruptible like [`try_blocks`].
pub fn try_uniforms(stream: Stream, start: u64, count: usize) -> CoreResult<Vec<f64>> {
    let mut u = output(count)?;
    for (c, chunk) in u.chunks_mut(FILL_CHUNK).enumerate() {
        // the words of try_blocks, and a conversion each
        interrupt::tick_check(8 * chunk.len() as u64)?;
        fill_uniforms(&stream, start + (c * FILL_CHUNK) as u64, chunk);
    }
    Ok(u)
}

/// [`normals`], planned, fallible and interruptible like [`try_blocks`].
pub fn try_normals(stream: Stream, start: u64, count: usize) -> CoreResult<Vec<f64>> {
    let mut z = output(count)?;
    for (c, chunk) in z.chunks_mut(FILL_CHUNK).enumerate() {
        interrupt::tick_check(16 * chunk.len() as u64)?;
        fill_normals(&stream, start + (c * FILL_CHUNK) as u64, chunk);
    }
    Ok(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Random123 kat_vectors, "philox4x64 10" lines: counter[4] key[2] -> block[4].
    const KAT: [([u64; 4], [u64; 2], [u64; 4]); 3] = [
        (
            [0, 0, 0, 0],
            [0, 0],
            [
                0x16554d9eca36314c,
                0xdb20fe9d672d0fdc,
                0xd7e772cee186176b,
                0x7e68b68aec7ba23b,
            ],
        ),
        (
            [u64::MAX, u64::MAX, u64::MAX, u64::MAX],
            [u64::MAX, u64::MAX],
            [
                0x87b092c3013fe90b,
                0x438c3c67be8d0224,
                0x9cc7d7c69cd777b6,
                0xa09caebf594f0ba0,
            ],
        ),
        (
            [
                0x243f6a8885a308d3,
                0x13198a2e03707344,
                0xa4093822299f31d0,
                0x082efa98ec4e6c89,
            ],
            [0x452821e638d01377, 0xbe5466cf34e90c6c],
            [
                0xa528f45403e61d95,
                0x38c72dbd566e9788,
                0xa5a1610e72fd18b5,
                0x57bd43b5e52b7fe6,
            ],
        ),
    ];

    #[test]
    fn random123_known_answers() {
        for (ctr, key, expected) in KAT {
            assert_eq!(philox4x64_10(ctr, key), expected);
        }
    }

    #[test]
    fn stream_addressing() {
        let s = Stream::new(7, 3, 5, 11);
        assert_eq!(s.block(2), philox4x64_10([2, 5, 11, 0], [7, 3]));
        // uniform #9 = word 1 of block 2
        let w = s.block(2)[1];
        assert_eq!(s.uniform(9), ((w >> 11) as f64) * 2f64.powi(-53));
    }

    #[test]
    fn uniforms_in_unit_interval_and_cached_reads_match() {
        let s = Stream::new(1, 2, 3, 4);
        let v = uniforms(s, 0, 101);
        for (i, &u) in v.iter().enumerate() {
            assert!((0.0..1.0).contains(&u));
            assert_eq!(u.to_bits(), s.uniform(i as u64).to_bits());
        }
        // non-sequential reads through the cache
        let mut c = Uniforms::new(s);
        for &i in &[17u64, 3, 3, 90, 16, 0] {
            assert_eq!(c.get(i).to_bits(), s.uniform(i).to_bits());
        }
    }

    #[test]
    fn normals_box_muller_pairs() {
        let s = Stream::new(42, 12, 0, 0);
        let words = s.block(0);
        let x = words[2];
        let y = words[3];
        let u1 = 1.0 - ((x >> 11) as f64) * 2f64.powi(-53);
        let u2 = ((y >> 11) as f64) * 2f64.powi(-53);
        let r = (-2.0 * u1.ln()).sqrt();
        let th = TAU * u2;
        assert_eq!(s.normal(2).to_bits(), (r * th.cos()).to_bits());
        assert_eq!(s.normal(3).to_bits(), (r * th.sin()).to_bits());
        let v = normals(s, 1, 10);
        for (k, &z) in v.iter().enumerate() {
            assert_eq!(z.to_bits(), s.normal(1 + k as u64).to_bits());
        }
        // a rough moment check over many normals
        let many = normals(Stream::new(3, 3, 1, 9), 0, 40_000);
        // chunked generation equals one call per value, across chunk boundaries and offsets
        for first in [0u64, 1, 3, 5] {
            let long = try_normals(Stream::new(3, 3, 1, 9), first, 2 * FILL_CHUNK + 7).unwrap();
            let u = try_uniforms(Stream::new(3, 4, 1, 9), first, 2 * FILL_CHUNK + 7).unwrap();
            for i in [
                0,
                FILL_CHUNK - 1,
                FILL_CHUNK,
                FILL_CHUNK + 1,
                2 * FILL_CHUNK + 6,
            ] {
                assert_eq!(
                    long[i].to_bits(),
                    Stream::new(3, 3, 1, 9).normal(first + i as u64).to_bits()
                );
                assert_eq!(
                    u[i].to_bits(),
                    Stream::new(3, 4, 1, 9).uniform(first + i as u64).to_bits()
                );
            }
        }
        let b = try_blocks(Stream::new(1, 2, 3, 4), 7, FILL_CHUNK / 4 + 3).unwrap();
        assert_eq!(b, blocks(Stream::new(1, 2, 3, 4), 7, FILL_CHUNK / 4 + 3));
        for k in [0, FILL_CHUNK / 4 - 1, FILL_CHUNK / 4, FILL_CHUNK / 4 + 2] {
            assert_eq!(
                b[4 * k..4 * k + 4],
                Stream::new(1, 2, 3, 4).block(7 + k as u64)
            );
        }
        let mean: f64 = many.iter().sum::<f64>() / many.len() as f64;
        let var: f64 = many.iter().map(|z| z * z).sum::<f64>() / many.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "var {var}");
    }

    /// glibc's `sincos` and its `sin` reach `sin(x)` for 0.855469 <= |x| < 2.426265 through
    /// different splits of `pi/2 - |x|` (glibc 2.36 `s_sincos.c` / `s_sin.c`); the two agree unless
    /// `|pi/2 - x|` lies within a few ulps of a midpoint `(k + 1/2) / 128` of glibc's sin/cos table,
    /// where the table entry chosen can differ. LLVM turns `theta.cos()` + `theta.sin()` into one
    /// `sincos` call, so check every Box-Muller angle `TAU * (j * 2^-53)` near those midpoints.
    #[test]
    fn sincos_equals_sin_and_cos() {
        use std::hint::black_box;
        extern "C" {
            fn sincos(x: f64, s: *mut f64, c: *mut f64);
        }
        let hp0 = f64::from_bits(0x3FF9_21FB_5444_2D18); // pi/2 rounded
        let mut checked = 0;
        for k in -120i64..120 {
            let x0 = hp0 - (k as f64 + 0.5) / 128.0;
            if !(0.855..2.43).contains(&x0) {
                continue;
            }
            let j0 = (x0 / TAU * TWO_POW_53).round() as i64;
            for j in j0 - 40..=j0 + 40 {
                let theta = TAU * ((j as f64) * TWO_POW_M53);
                let mut fused = (0.0, 0.0);
                // SAFETY: glibc's sincos writes one double through each pointer.
                unsafe { sincos(theta, &mut fused.1, &mut fused.0) };
                let separate = (black_box(theta).cos(), black_box(theta).sin());
                assert_eq!(fused.0.to_bits(), separate.0.to_bits(), "cos {theta:e}");
                assert_eq!(fused.1.to_bits(), separate.1.to_bits(), "sin {theta:e}");
                checked += 1;
            }
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn bulk_fills_equal_indexed_draws() {
        let s = Stream::new(9, 3, 2, 1);
        for first in 0..9u64 {
            for len in 0..23usize {
                let mut u = vec![0.0; len];
                fill_uniforms(&s, first, &mut u);
                let mut z = vec![0.0; len];
                fill_normals(&s, first, &mut z);
                for i in 0..len {
                    assert_eq!(u[i].to_bits(), s.uniform(first + i as u64).to_bits());
                    assert_eq!(z[i].to_bits(), s.normal(first + i as u64).to_bits());
                }
            }
        }
    }

    /// Fills longer than one batch of normals (BATCH_BLOCKS blocks = 512 normals), from every
    /// offset within a block, equal the draws read one by one; `blocks` lists the stream's blocks.
    #[test]
    fn bulk_fills_across_batches_and_blocks_listing() {
        let s = Stream::new(31, 4, 9, 2);
        for first in 0..4u64 {
            for len in [511usize, 512, 513, 515, 1025, 1030] {
                let z = normals(s, first, len);
                let u = uniforms(s, first, len);
                assert_eq!(z.len(), len);
                for i in 0..len {
                    assert_eq!(
                        z[i].to_bits(),
                        s.normal(first + i as u64).to_bits(),
                        "{first}+{i}"
                    );
                    assert_eq!(u[i].to_bits(), s.uniform(first + i as u64).to_bits());
                }
            }
        }
        let b = blocks(s, 5, 3);
        assert_eq!(b.len(), 12);
        for q in 0..3 {
            assert_eq!(&b[4 * q..4 * q + 4], &s.block(5 + q as u64));
        }
        assert!(blocks(s, 0, 0).is_empty());
        // uniforms of a block are its words' top 53 bits scaled by 2^-53
        let w = s.block(7);
        let v = block_uniforms(w);
        for k in 0..4 {
            assert_eq!(v[k], (w[k] >> 11) as f64 / 9_007_199_254_740_992.0);
        }
    }

    /// Box-Muller by hand on chosen words: u1 = 1 - (x >> 11) 2^-53 = 3/4 for x = 2^62, u2 = 1/8 for
    /// y = 2^61 (theta = pi/4): (r cos theta, r sin theta) with r = sqrt(-2 ln 0.75).
    #[test]
    fn box_muller_by_hand() {
        let x = 1u64 << 62; // >> 11 gives 2^51
        let y = 1u64 << 61; // >> 11 gives 2^50: u2 = 1/8
        let (a, b) = box_muller(x, y);
        let r = (-2.0 * 0.75f64.ln()).sqrt();
        let th = TAU / 8.0;
        assert_eq!(a.to_bits(), (r * th.cos()).to_bits());
        assert_eq!(b.to_bits(), (r * th.sin()).to_bits());
        assert!((a - r * std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-15);
        let n = block_normals([x, y, y, x]);
        assert_eq!(n[0].to_bits(), a.to_bits());
        assert_eq!(n[1].to_bits(), b.to_bits());
        let (c, d) = box_muller(y, x);
        assert_eq!((n[2].to_bits(), n[3].to_bits()), (c.to_bits(), d.to_bits()));
        assert_eq!(mulhilo(u64::MAX, 3), (2, u64::MAX - 2));
        assert_eq!(mulhilo(1 << 40, 1 << 40), (1 << 16, 0));
    }

    #[test]
    fn tau_is_the_literal_of_the_model() {
        assert_eq!(
            TAU.to_bits(),
            "6.283185307179586".parse::<f64>().unwrap().to_bits()
        );
    }

    #[test]
    fn extreme_words() {
        // x = 0 -> u1 = 1 -> r = sqrt(-0.0) = -0.0 (finite); x = max -> u1 = 2^-53 > 0 -> finite r
        let (a, b) = box_muller(0, 0);
        assert!(a == 0.0 && b == 0.0);
        let (a, _) = box_muller(u64::MAX, 0);
        assert!(a.is_finite() && a > 8.0);
        assert_eq!(word_to_uniform(u64::MAX), 1.0 - 2f64.powi(-53));
    }

    /// The work the array functions tick against the operations they do (the latency contract of
    /// `crate::interrupt`, work roughly in floating-point operations). A Philox4x64-10 block is 10
    /// rounds of 2 wide products and 4 xors and 9 key steps of 2 additions: 78 integer operations
    /// for 4 words. A uniform adds a shift, a conversion and a product; a Box-Muller pair of
    /// normals adds 7 for its two uniforms, a logarithm (~20 flops of polynomial), a square root
    /// and 2 products, a sincos (~30) and 2 products. Integer and transcendental operations are not
    /// flops, so the kernels' units are only roughly these counts: within a factor 4 (polls every
    /// 2.5-40 ms), which still sees a per-chunk count replaced by a constant or a product read as
    /// a sum (off by the chunk's 16,384 values). Sizes: one partial chunk, and several chunks and
    /// a partial one.
    #[test]
    fn ticked_work_counts_the_operations() {
        use crate::interrupt::tally;
        let stream = Stream {
            seed: 5,
            purpose: 1,
            iteration: 2,
            substream: 3,
        };
        let block = 78.0 / 4.0;
        for count in [1000usize, 3 * FILL_CHUNK + 123] {
            let c = count as f64;
            let (r, t) = tally::measure(|| try_blocks(stream, 7, count));
            assert_eq!(r.unwrap().len(), 4 * count);
            tally::check_work_within(&format!("try_blocks {count}"), t, 4.0 * c * block, 4.0);
            let (r, t) = tally::measure(|| try_uniforms(stream, 7, count));
            assert_eq!(r.unwrap().len(), count);
            tally::check_work_within(&format!("try_uniforms {count}"), t, c * (block + 3.0), 4.0);
            let (r, t) = tally::measure(|| try_normals(stream, 7, count));
            assert_eq!(r.unwrap().len(), count);
            let pair = 7.0 + 20.0 + 1.0 + 2.0 + 30.0 + 2.0;
            tally::check_work_within(
                &format!("try_normals {count}"),
                t,
                c * (block + pair / 2.0),
                4.0,
            );
        }
    }
}
