"""Philox4x64-10 and the addressed streams (specs/MODEL.md section 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from offtd import rng
from offtd.rng import MASK64, Stream, philox_block

# Random123 known-answer vectors for philox4x64-10 (Random123's kat_vectors):
# counter (4 words), key (2 words) -> block (4 words).
KAT = [
    (
        (0, 0, 0, 0),
        (0, 0),
        (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B),
    ),
    (
        (MASK64, MASK64, MASK64, MASK64),
        (MASK64, MASK64),
        (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0),
    ),
    (  # the pi-digits vector
        (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
        (0x452821E638D01377, 0xBE5466CF34E90C6C),
        (0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answer_vectors(counter, key, expected):
    assert philox_block(counter, key) == expected


def _add_one(counter):
    """256-bit little-endian increment (word 0 least significant)."""
    value = sum(w << (64 * i) for i, w in enumerate(counter)) + 1
    value &= (1 << 256) - 1
    return tuple((value >> (64 * i)) & MASK64 for i in range(4))


NUMPY_COUNTERS = [
    (0, 0, 0, 0),
    (5, 0, 0, 0),
    (123456789, 7, 3, 0),
    (MASK64, 0, 0, 0),  # carry into word 1
    (MASK64, MASK64, 0, 0),  # carry into word 2
    (MASK64, MASK64, MASK64, 0),  # carry into word 3
    (MASK64, MASK64, MASK64, MASK64),  # wraps to 0
    (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
]


@pytest.mark.parametrize("counter", NUMPY_COUNTERS)
@pytest.mark.parametrize("key", [(0, 0), (7, 9), (MASK64, 1), (0x452821E638D01377, 0xBE5466CF34E90C6C)])
def test_numpy_philox_parity(counter, key):
    gen = np.random.Philox(counter=np.array(counter, dtype=np.uint64), key=np.array(key, dtype=np.uint64))
    raw = [int(v) for v in gen.random_raw(8)]
    c1 = _add_one(counter)
    c2 = _add_one(c1)
    assert tuple(raw[:4]) == philox_block(c1, key)
    assert tuple(raw[4:]) == philox_block(c2, key)


def test_stream_block_address():
    # Draw i lives in philox([i // 4, iteration, substream, 0], [seed, purpose]).
    s = Stream(seed=11, purpose=rng.ROLL_MIX, iteration=5, substream=3)
    blk = philox_block((2, 5, 3, 0), (11, rng.ROLL_MIX))
    for i in range(8, 12):
        assert s.uniform(i) == (blk[i % 4] >> 11) * 2.0**-53
    x, y = blk[2], blk[3]  # pair 1 of block 2 holds normals #10, #11
    u1 = 1.0 - (x >> 11) * 2.0**-53
    u2 = (y >> 11) * 2.0**-53
    r = math.sqrt(-2.0 * math.log(u1))
    assert s.normal(10) == r * math.cos(6.283185307179586 * u2)
    assert s.normal(11) == r * math.sin(6.283185307179586 * u2)


def test_purpose_ids():
    assert (rng.ROLL_INIT, rng.ROLL_MIX, rng.ROLL_ACTION, rng.ROLL_ENV) == (1, 2, 3, 4)
    assert (rng.DIST_STATE, rng.DIST_MU_ACTION, rng.DIST_PI_ACTION) == (10, 11, 12)
    assert (rng.FIXED_POINT_BASE, rng.STABILITY_BASE, rng.POWER_INIT, rng.CRITIC_INIT) == (20, 30, 40, 50)
    from offtd.backend import FIXED_POINT_BASE, STABILITY_BASE

    assert (FIXED_POINT_BASE, STABILITY_BASE) == (rng.FIXED_POINT_BASE, rng.STABILITY_BASE)


ADDRESS = st.tuples(
    st.integers(0, MASK64),  # seed
    st.integers(0, 60),  # purpose
    st.integers(0, 10_000),  # iteration
    st.integers(0, 10_000),  # substream
    st.integers(0, 10_000),  # index
)


@given(ADDRESS)
def test_determinism_by_address(addr):
    seed, purpose, iteration, substream, index = addr
    a = Stream(seed, purpose, iteration, substream)
    b = Stream(seed, purpose, iteration, substream)
    # Touch other draws first: the cache must not change any value.
    b.normal(index + 5)
    b.uniform(index + 1)
    assert a.uniform(index) == b.uniform(index) == rng.uniform(seed, purpose, iteration, substream, index)
    assert a.normal(index) == b.normal(index) == rng.normal(seed, purpose, iteration, substream, index)
    u = a.uniform(index)
    assert 0.0 <= u < 1.0
    assert math.isfinite(a.normal(index))


@given(ADDRESS)
def test_every_address_component_matters(addr):
    # Changing any one component of the address changes the draw (a collision of two 53-bit values has
    # probability 2**-53 per pair: the test cannot fail by chance in practice).
    seed, purpose, iteration, substream, index = addr
    base = rng.uniform(seed, purpose, iteration, substream, index)
    assert rng.uniform(seed ^ 1, purpose, iteration, substream, index) != base
    assert rng.uniform(seed, purpose + 1, iteration, substream, index) != base
    assert rng.uniform(seed, purpose, iteration + 1, substream, index) != base
    assert rng.uniform(seed, purpose, iteration, substream + 1, index) != base
    assert rng.uniform(seed, purpose, iteration, substream, index + 1) != base


def test_uniform_extremes():
    # (word >> 11) * 2**-53: 0 for word 0, the largest double below 1 for word 2**64 - 1.
    assert rng.word_to_uniform(0) == 0.0
    assert rng.word_to_uniform(MASK64) == 1.0 - 2.0**-53
    assert rng.word_to_uniform(MASK64) < 1.0
    # u1 = 1 - (x >> 11) * 2**-53 never reaches 0, so log(u1) is finite even for x = 2**64 - 1.
    r_cos, r_sin = rng.box_muller(MASK64, 0)
    assert math.isfinite(r_cos) and r_sin == 0.0
    assert r_cos == math.sqrt(-2.0 * math.log(2.0**-53))
    # x = 0 gives u1 = 1, r = 0 (exactly).
    assert all(v == 0.0 for v in rng.box_muller(0, 12345))


def test_uniform_moments():
    n = 40_000
    us = rng.uniforms(2024, rng.ROLL_MIX, 1, 0, n)
    assert all(0.0 <= u < 1.0 for u in us)
    mean = math.fsum(us) / n
    var = math.fsum((u - mean) ** 2 for u in us) / (n - 1)
    # U(0,1): mean 1/2 (SE sqrt(1/12/n) = 1.44e-3), variance 1/12 (SE sqrt(1/180/n) = 3.7e-4).
    # 5 standard errors: a false alarm has probability < 1e-6.
    assert abs(mean - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(var - 1 / 12) < 5 * math.sqrt(1 / 180 / n)


def test_normal_moments():
    n = 40_000
    zs = rng.normals(2024, rng.ROLL_ACTION, 1, 0, n)
    mean = math.fsum(zs) / n
    var = math.fsum((z - mean) ** 2 for z in zs) / (n - 1)
    # N(0,1): SE of the mean = 1/sqrt(n) = 5e-3; SE of the sample variance = sqrt(2/(n-1)) = 7.1e-3.
    # 5 standard errors (false alarm < 1e-6).
    assert abs(mean) < 5 / math.sqrt(n)
    assert abs(var - 1.0) < 5 * math.sqrt(2 / (n - 1))
    # Even and odd draws (cos and sin halves) separately: each has mean 0, variance 1 with n/2 draws.
    for half in (zs[0::2], zs[1::2]):
        h = len(half)
        hm = math.fsum(half) / h
        hv = math.fsum((z - hm) ** 2 for z in half) / (h - 1)
        assert abs(hm) < 5 / math.sqrt(h)
        assert abs(hv - 1.0) < 5 * math.sqrt(2 / (h - 1))
    # Cos and sin of the same pair are uncorrelated: SE of the sample correlation ~ 1/sqrt(n/2).
    corr = math.fsum(a * b for a, b in zip(zs[0::2], zs[1::2])) / (n / 2)
    assert abs(corr) < 5 / math.sqrt(n / 2)
    # Tail frequency: P(|Z| > 2) = 0.0455; binomial SE sqrt(p(1-p)/n) = 1.04e-3; 5 SEs.
    p2 = 0.04550026389635842
    frac = sum(1 for z in zs if abs(z) > 2.0) / n
    assert abs(frac - p2) < 5 * math.sqrt(p2 * (1 - p2) / n)


@given(
    st.integers(0, 2**32),
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 40),
    st.integers(1, 40),
)
def test_random_access_equals_sequential(seed, iteration, substream, start, count):
    seq_n = rng.normals(seed, rng.POWER_INIT, iteration, substream, start + count)
    seq_u = rng.uniforms(seed, rng.DIST_STATE, iteration, substream, start + count)
    fresh = Stream(seed, rng.POWER_INIT, iteration, substream)
    fresh_u = Stream(seed, rng.DIST_STATE, iteration, substream)
    # Reverse order defeats the cache; each value must equal its sequential counterpart exactly.
    for i in reversed(range(start, start + count)):
        assert fresh.normal(i) == seq_n[i]
        assert rng.normal(seed, rng.POWER_INIT, iteration, substream, i) == seq_n[i]
        assert fresh_u.uniform(i) == seq_u[i]
    assert Stream(seed, rng.POWER_INIT, iteration, substream).normals(start, count) == seq_n[start:]


def test_stream_registries_agree():
    """One name per random-stream purpose in each language: rust/streams.rs and python/offtd/rng.py hold
    the same names and values, no purpose is used twice, and a probe's four streams stay below the next
    base."""
    import re
    from pathlib import Path

    from offtd import rng as registry

    text = (Path(__file__).resolve().parents[1] / "rust" / "streams.rs").read_text()
    rust = {name: int(v) for name, v in re.findall(r"pub const ([A-Z_]+): u64 = (\d+);", text)}
    python = {name: getattr(registry, name) for name in rust}
    assert rust == python and len(rust) == 15
    purposes = [v for k, v in rust.items() if not k.startswith("PROBE_")]
    probes = [b + off for b in (rust["FIXED_POINT_BASE"], rust["STABILITY_BASE"])
              for off in (rust["PROBE_STATE"], rust["PROBE_MIX"], rust["PROBE_ACTION"], rust["PROBE_ENV"])]  # fmt: skip
    used = [v for k, v in rust.items() if not k.startswith("PROBE_") and not k.endswith("_BASE")] + probes
    assert len(used) == len(set(used)), sorted(used)
    assert len(set(purposes)) == len(purposes)
