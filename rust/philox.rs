//! Philox4x64-10 (Salmon et al. 2011, Random123) and the addressed streams of MODEL.md section 1.
//!
//! A stream is `(seed, purpose, iteration, substream)`; draw `i` of it lives in the block
//! `philox(counter = [i / 4, iteration, substream, 0], key = [seed, purpose])`.
//! [`Uniforms`] and [`Normals`] read a stream by index and cache the last block, so reading a stream
//! sequentially generates every block exactly once.

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

/// Box-Muller on one pair of words: `(r cos theta, r sin theta)`.
#[inline(always)]
pub fn box_muller(x: u64, y: u64) -> (f64, f64) {
    let u1 = 1.0 - ((x >> 11) as f64) * TWO_POW_M53;
    let u2 = ((y >> 11) as f64) * TWO_POW_M53;
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = TAU * u2;
    (r * theta.cos(), r * theta.sin())
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
    let mut u = Uniforms::new(stream);
    (0..count as u64).map(|k| u.get(start + k)).collect()
}

/// Normals #start .. #start+count of a stream.
pub fn normals(stream: Stream, start: u64, count: usize) -> Vec<f64> {
    let mut z = Normals::new(stream);
    (0..count as u64).map(|k| z.get(start + k)).collect()
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
        let mean: f64 = many.iter().sum::<f64>() / many.len() as f64;
        let var: f64 = many.iter().map(|z| z * z).sum::<f64>() / many.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "var {var}");
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
}
