"""Philox4x64-10 and the addressed random streams of specs/MODEL.md section 1, in pure Python.

This is the reference generator: slow and obviously correct. Words are Python ints masked to 64 bits;
floats are produced exactly as MODEL.md prescribes, so the Rust core can reproduce every draw bit for bit.

A stream is addressed by ``(seed, purpose, iteration, substream)``; draw ``i`` of a stream lives in the
block ``philox(counter=[i // 4, iteration, substream, 0], key=[seed, purpose])``.

* uniform #i = ``(word[i % 4] >> 11) * 2**-53`` in [0, 1);
* normal #i  = Box-Muller on the pair ``p = (i % 4) // 2`` of the block: ``x = word[2p]``,
  ``y = word[2p + 1]``, ``u1 = 1 - (x >> 11) * 2**-53``, ``u2 = (y >> 11) * 2**-53``,
  ``r = sqrt(-2 * log(u1))``, ``theta = TAU * u2``; ``r * cos(theta)`` for even i, ``r * sin(theta)``
  for odd i.
"""

from __future__ import annotations

import math

MASK64 = (1 << 64) - 1

PHILOX_M0 = 0xD2E7470EE14C6C93
PHILOX_M1 = 0xCA5A826395121157
PHILOX_W0 = 0x9E3779B97F4A7C15
PHILOX_W1 = 0xBB67AE8584CAA73B
ROUNDS = 10

TWO_M53 = 2.0**-53  # exact power of two
TAU = 6.283185307179586  # == math.tau

# Purposes (MODEL.md section 1, the key's second word).
ROLL_INIT = 1  # rollout start state: normal #i, i < n; substream = trajectory j
ROLL_MIX = 2  # rollout mixture choice: uniform #h; substream = trajectory j
ROLL_ACTION = 3  # rollout action noise: normal #(h*m + k); substream = trajectory j
ROLL_ENV = 4  # rollout environment noise: normal #(h*n + i); substream = trajectory j
DIST_STATE = 10  # distribution probe: state pick, uniform #k
DIST_MU_ACTION = 11  # distribution probe: mu action, normal #(k*m + j)
DIST_PI_ACTION = 12  # distribution probe: pi action (MMD set), normal #(k*m + j)
FIXED_POINT_BASE = 20  # fixed-point probe: state / mix / action / env = 20 / 21 / 22 / 23
STABILITY_BASE = 30  # stability probe: state / mix / action / env = 30 / 31 / 32 / 33
POWER_INIT = 40  # power iteration start vector: normal #i, i < d; substream r (R = full batch)
CRITIC_INIT = 50  # critic initial noise: normal #i, i < d; substream 0, iteration 0

# Offsets of a probe's purposes from its base (MODEL.md 4.2).
PROBE_STATE = 0
PROBE_MIX = 1
PROBE_ACTION = 2
PROBE_ENV = 3


def philox_block(counter, key) -> tuple[int, int, int, int]:
    """Philox4x64-10: ``counter`` (4 words) and ``key`` (2 words) to a block of 4 64-bit words.

    Reproduces the Random123 known-answer vectors. Words are taken modulo 2**64.
    """
    c0, c1, c2, c3 = (int(c) & MASK64 for c in counter)
    k0, k1 = (int(k) & MASK64 for k in key)
    for rnd in range(ROUNDS):
        if rnd:
            k0 = (k0 + PHILOX_W0) & MASK64
            k1 = (k1 + PHILOX_W1) & MASK64
        p0 = PHILOX_M0 * c0  # 128-bit products (Python ints are exact)
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> 64) ^ c1 ^ k0,
            p1 & MASK64,
            (p0 >> 64) ^ c3 ^ k1,
            p0 & MASK64,
        )
    return (c0, c1, c2, c3)


def word_to_uniform(word: int) -> float:
    """``(word >> 11) * 2**-53``: a double in [0, 1) (the int -> float conversion is exact)."""
    return (word >> 11) * TWO_M53


def box_muller(x: int, y: int) -> tuple[float, float]:
    """The Box-Muller pair ``(r cos theta, r sin theta)`` from two words (MODEL.md section 1)."""
    u1 = 1.0 - (x >> 11) * TWO_M53  # in (0, 1], so log(u1) is finite
    u2 = (y >> 11) * TWO_M53
    r = math.sqrt(-2.0 * math.log(u1))
    theta = TAU * u2
    return (r * math.cos(theta), r * math.sin(theta))


class Stream:
    """The stream ``(seed, purpose, iteration, substream)`` with random access to its draws.

    ``uniform(i)`` and ``normal(i)`` may be called in any order; the last block (and the last
    Box-Muller pair) is cached so sequential draws cost one Philox call per four draws.
    A stream must be used either for uniforms or for normals (MODEL.md: a purpose never mixes them),
    but nothing breaks if both are asked for: both are pure functions of the address.
    """

    __slots__ = ("seed", "purpose", "iteration", "substream", "_key", "_bidx", "_block", "_pidx", "_pair")

    def __init__(self, seed: int, purpose: int, iteration: int, substream: int):
        self.seed = int(seed) & MASK64
        self.purpose = int(purpose) & MASK64
        self.iteration = int(iteration) & MASK64
        self.substream = int(substream) & MASK64
        self._key = (self.seed, self.purpose)
        self._bidx = -1
        self._block: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._pidx = -1
        self._pair: tuple[float, float] = (0.0, 0.0)

    def block(self, q: int) -> tuple[int, int, int, int]:
        """Block ``q`` of the stream: ``philox([q, iteration, substream, 0], [seed, purpose])``."""
        if q != self._bidx:
            self._block = philox_block((q, self.iteration, self.substream, 0), self._key)
            self._bidx = q
        return self._block

    def uniform(self, i: int) -> float:
        """Uniform #i in [0, 1)."""
        return word_to_uniform(self.block(i >> 2)[i & 3])

    def normal(self, i: int) -> float:
        """Normal #i (Box-Muller, MODEL.md section 1)."""
        pidx = i >> 1  # global pair index: block i // 4, pair (i % 4) // 2
        if pidx != self._pidx:
            blk = self.block(i >> 2)
            p = pidx & 1
            self._pair = box_muller(blk[2 * p], blk[2 * p + 1])
            self._pidx = pidx
        return self._pair[i & 1]

    def uniforms(self, start: int, count: int) -> list[float]:
        """Uniforms #start .. #start+count-1."""
        return [self.uniform(i) for i in range(start, start + count)]

    def normals(self, start: int, count: int) -> list[float]:
        """Normals #start .. #start+count-1."""
        return [self.normal(i) for i in range(start, start + count)]


def uniform(seed: int, purpose: int, iteration: int, substream: int, index: int) -> float:
    """Uniform #index of the stream (random access, no caching)."""
    return Stream(seed, purpose, iteration, substream).uniform(index)


def normal(seed: int, purpose: int, iteration: int, substream: int, index: int) -> float:
    """Normal #index of the stream (random access, no caching)."""
    return Stream(seed, purpose, iteration, substream).normal(index)


def uniforms(seed: int, purpose: int, iteration: int, substream: int, count: int) -> list[float]:
    """Uniforms #0 .. #count-1 of the stream."""
    return Stream(seed, purpose, iteration, substream).uniforms(0, count)


def normals(seed: int, purpose: int, iteration: int, substream: int, count: int) -> list[float]:
    """Normals #0 .. #count-1 of the stream (e.g. the power-iteration start vector, the critic noise)."""
    return Stream(seed, purpose, iteration, substream).normals(0, count)
