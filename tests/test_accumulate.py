"""``exact_matmul`` equals the int64 definition; ``pair_saturation_correction`` equals a brute-force
loop over ``vpmaddubsw`` pairs (one K block and oneDNN-style K blocks)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

from qexact.accumulate import (exact_matmul, pair_positions, pair_saturation_correction,
                               reference_matmul, saturating_weight_pairs, weight_pairs_of)

DEPTHS = [1, 255, 256, 257, 511, 512, 513, 2000]


def both(x_centered, w_centered_t):
    return (exact_matmul(x_centered.astype(np.float32), w_centered_t.astype(np.float32)),
            reference_matmul(x_centered, w_centered_t))


@pytest.mark.parametrize("depth", DEPTHS)
def test_exact_matmul_random(depth):
    rng = np.random.default_rng(depth)
    x = rng.integers(-255, 256, size=(9, depth))
    w = rng.integers(-255, 256, size=(depth, 7))
    actual, expected = both(x, w)
    assert actual.dtype == np.int64
    assert_bitexact(actual, expected, f"K={depth}")


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("signs", ["same", "opposite", "alternating", "mixed"])
def test_exact_matmul_extreme(depth, signs):
    """All |x| = |w| = 255: |acc| = 65025 * K (up to 1.3e8 > 2**24 at K = 2000)."""
    x = np.full((3, depth), 255, np.int64)
    w = np.full((depth, 4), 255, np.int64)
    if signs == "opposite":
        w = -w
    elif signs == "alternating":
        w[::2] *= -1
    elif signs == "mixed":
        x[1] *= -1
        w[:, 1] *= -1
        w[1::3, 2] *= -1
    actual, expected = both(x, w)
    assert_bitexact(actual, expected, f"K={depth} {signs}")
    if signs == "same":
        assert (actual == 65025 * depth).all()


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 12), depth=st.integers(1, 1100),
       cols=st.integers(1, 12))
@settings(max_examples=60)
def test_exact_matmul_hypothesis(seed, rows, depth, cols):
    rng = np.random.default_rng(seed)
    x = rng.choice([-255, -254, -1, 0, 1, 254, 255], size=(rows, depth))
    w = rng.integers(-255, 256, size=(depth, cols))
    actual, expected = both(x, w)
    assert_bitexact(actual, expected, f"K={depth}")


def brute_force_correction(x, w, block_starts=(0,)):
    """sum over pairs of (sat16(p) - p), pairs formed from each block's start, Python ints."""
    rows, depth = x.shape
    bounds = list(block_starts) + [depth]
    out = np.zeros((rows, w.shape[0]), np.int64)
    for m in range(rows):
        for n in range(w.shape[0]):
            total = 0
            for begin, end in zip(bounds[:-1], bounds[1:]):
                for t in range(begin, end, 2):
                    p = int(x[m, t]) * int(w[n, t])
                    if t + 1 < end:
                        p += int(x[m, t + 1]) * int(w[n, t + 1])
                    total += min(max(p, -32768), 32767) - p
            out[m, n] = total
    return out


@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 6), depth=st.integers(1, 40),
       cols=st.integers(1, 6), style=st.sampled_from(["uniform", "extreme", "high"]))
@settings(max_examples=120)
def test_pair_saturation_correction_vs_brute_force(seed, rows, depth, cols, style):
    rng = np.random.default_rng(seed)
    if style == "uniform":
        x = rng.integers(0, 256, size=(rows, depth))
        w = rng.integers(-128, 128, size=(cols, depth))
    elif style == "extreme":
        x = rng.choice([0, 1, 127, 128, 129, 254, 255], size=(rows, depth))
        w = rng.choice([-128, -127, -1, 0, 1, 126, 127], size=(cols, depth))
    else:
        x = rng.integers(180, 256, size=(rows, depth))
        w = rng.choice([-1, 1], size=(cols, 1)) * rng.integers(64, 129, size=(cols, depth))
        w = np.clip(w, -128, 127)
    x, w = x.astype(np.uint8), w.astype(np.int8)
    pairs = weight_pairs_of(w)
    actual = pair_saturation_correction(x, pairs, saturating_weight_pairs(pairs))
    assert_bitexact(actual, brute_force_correction(x, w), f"K={depth} {style}")


@pytest.mark.parametrize("depth, starts", [(258, (0, 129)), (257, (0, 129)), (262, (0, 131)),
                                           (9, (0, 3, 6)), (5, (0,)), (1, (0,))])
def test_pair_saturation_correction_blocks_vs_brute_force(depth, starts):
    rng = np.random.default_rng(depth)
    x = rng.integers(200, 256, size=(4, depth)).astype(np.uint8)
    w = np.clip(rng.choice([-1, 1], size=(5, 1)) * rng.integers(100, 129, size=(5, depth)),
                -128, 127).astype(np.int8)
    positions = pair_positions(depth, starts)
    pairs = weight_pairs_of(w, positions)
    actual = pair_saturation_correction(x, pairs, saturating_weight_pairs(pairs), positions)
    expected = brute_force_correction(x, w, starts)
    assert_bitexact(actual, expected, f"K={depth} blocks {starts}")
    if depth > 1:
        assert (expected != 0).any()


def test_all_corners_saturate_exactly():
    """x = 255 and w = +-128/127 everywhere: every pair is +-65280/64770 -> +-32768/32767."""
    depth = 6
    x = np.full((1, depth), 255, np.uint8)
    w = np.array([[127] * depth, [-128] * depth], np.int8)
    pairs = weight_pairs_of(w)
    actual = pair_saturation_correction(x, pairs, saturating_weight_pairs(pairs))
    assert_bitexact(actual, np.array([[3 * (32767 - 64770), 3 * (-32768 + 65280)]], np.int64))


@given(w0=st.integers(-128, 127), w1=st.integers(-128, 127))
@settings(max_examples=300)
def test_saturating_weight_pairs_is_exact(w0, w1):
    """A pair is flagged iff some (x0, x1) in [0, 255]^2 saturates (the extremes are corners)."""
    sums = [x0 * w0 + x1 * w1 for x0 in (0, 255) for x1 in (0, 255)]
    saturates = max(sums) > 32767 or min(sums) < -32768
    flagged = saturating_weight_pairs(np.array([[[w0, w1]]]))[0, 0]
    assert bool(flagged) == saturates


def test_pair_positions_layout():
    assert pair_positions(5).tolist() == [[0, 1], [2, 3], [4, -1]]
    assert pair_positions(6, (0, 3)).tolist() == [[0, 1], [2, -1], [3, 4], [5, -1]]
