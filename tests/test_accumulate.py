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


# --- the NumPy path's fast forms (issue 13) ------------------------------------------------------

from qexact.accumulate import (depthwise_pair_saturation_correction,  # noqa: E402
                               exact_block_starts, exact_depthwise, exact_grouped_matmul)
from qexact.ops._window import (im2col, im2col_centered, output_shape,  # noqa: E402
                                padded_channels_last)


@pytest.mark.parametrize("groups, rows, depth, width, z_x", [
    (1, 50, 4608, 9, 0), (1, 7, 300, 3, 255), (4, 33, 700, 5, 128), (1, 1, 1, 1, 0),
    (2, 9, 2000, 8, 17), (3, 1, 513, 1, 200), (1, 64, 257, 2, 0)])
@pytest.mark.parametrize("extreme", [False, True])
def test_exact_grouped_matmul_equals_int64(groups, rows, depth, width, z_x, extreme):
    rng = np.random.default_rng(depth + rows)
    x = rng.integers(0, 256, (groups, rows, depth))
    w = rng.integers(-128, 128, (groups, width, depth))
    if extreme:  # every term at its largest magnitude, all of one sign
        x[:] = 255 if z_x < 128 else 0
        w[:] = -128
    columns = (x - z_x).astype(np.float32)
    weights = np.ascontiguousarray(np.swapaxes(w, 1, 2)).astype(np.float32)
    actual = exact_grouped_matmul(columns, weights, max(z_x, 255 - z_x))
    expected = np.concatenate([(x[g] - z_x) @ w[g].T for g in range(groups)], axis=1)
    assert actual.dtype == np.int32
    assert_bitexact(actual.astype(np.int64), expected, f"G={groups} M={rows} K={depth}")


def test_exact_block_starts_bound_each_block():
    rng = np.random.default_rng(3)
    weights = rng.integers(-255, 256, (3, 5000, 4)).astype(np.float32)
    starts = exact_block_starts(weights, 255)
    bounds = list(starts) + [5000]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        assert 255 * np.abs(weights[:, start:stop]).sum(axis=1).max() < 2 ** 24
        assert stop == 5000 or 255 * np.abs(weights[:, start:stop + 1]).sum(axis=1).max() >= 2 ** 24
    huge = np.full((40_000, 1), 255, np.float32)          # 255 * 255 * 40000 > 2**31
    assert exact_block_starts(huge, 255) is None
    columns = np.full((1, 2, 40_000), 255, np.float32)
    total = exact_grouped_matmul(columns, huge[None], 255)
    assert total.dtype == np.int64 and total.tolist() == [[255 * 255 * 40_000]] * 2


GEOMETRIES = [  # (N, C, *spatial), kernel, stride, padding, dilation
    ((2, 16, 11, 9), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((1, 8, 7, 7), (5, 5), (1, 1), (2, 2), (1, 1)),
    ((1, 3, 5, 6), (3, 3), (1, 2), (1, 0), (2, 1)),
    ((1, 4, 1, 9), (1, 3), (1, 1), (0, 1), (1, 1)),
    ((1, 2, 4, 4, 4), (3, 3, 3), (1, 2, 1), (1, 1, 0), (1, 1, 1)),
]


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", GEOMETRIES)
@pytest.mark.parametrize("extreme", [False, True])
def test_exact_depthwise_and_its_pair_saturation(shape, kernel, stride, padding, dilation,
                                                 extreme):
    rng = np.random.default_rng(sum(shape))
    channels = shape[1]
    values = rng.integers(0, 256, shape).astype(np.uint8)
    weight = rng.integers(-128, 128, (channels, 1) + kernel).astype(np.int8)
    if extreme:
        values[:] = 255
        weight[:] = -128
        weight[::2] = 127
    z_x = 3
    out = output_shape(shape[2:], kernel, stride, padding, dilation)
    rows = weight.reshape(channels, -1)                                     # (C, taps)
    centered = padded_channels_last(values, padding, z_x, np.float32, z_x)
    actual = exact_depthwise(centered, rows.T.astype(np.float32), kernel, stride, dilation, out)
    columns = im2col(values, kernel, stride, padding, dilation, z_x).astype(np.int64) - z_x
    expected = np.einsum("...tc,tc->...c", columns, rows.T.astype(np.int64)).reshape(-1, channels)
    assert actual.dtype == np.int32
    assert_bitexact(actual.astype(np.int64), expected, "depthwise")
    for pairs_per_tap in (False, True):
        starts = tuple(range(rows.shape[1])) if pairs_per_tap else (0,)
        positions = pair_positions(rows.shape[1], starts)
        pairs = weight_pairs_of(rows, positions)
        risky = saturating_weight_pairs(pairs)
        for raw_pad in (0, z_x):
            raw = padded_channels_last(values, padding, raw_pad)
            correction = depthwise_pair_saturation_correction(raw, pairs, risky, positions,
                                                              kernel, stride, dilation, out)
            raw_columns = im2col(values, kernel, stride, padding, dilation, raw_pad)
            raw_columns = raw_columns.reshape(-1, rows.shape[1], channels)
            reference = np.stack([
                pair_saturation_correction(raw_columns[:, :, c], pairs[c:c + 1], risky[c:c + 1],
                                           positions)[:, 0] for c in range(channels)], axis=1)
            assert_bitexact(correction.astype(np.int64), reference,
                            f"pairs per tap {pairs_per_tap}")


@pytest.mark.parametrize("seed", range(3))
def test_im2col_centered_equals_im2col(seed):
    rng = np.random.default_rng(seed)
    checked = 0
    while checked < 60:
        dims = int(rng.integers(1, 4))
        groups = int(rng.integers(1, 4))
        channels = groups * int(rng.integers(1, 4))
        spatial = tuple(int(s) for s in rng.integers(1, 8, dims))
        kernel, stride = (tuple(int(s) for s in rng.integers(1, 4, dims)) for _ in range(2))
        padding = tuple(int(s) for s in rng.integers(0, 3, dims))
        dilation = tuple(int(s) for s in rng.integers(1, 3, dims))
        values = rng.integers(0, 256, (int(rng.integers(1, 3)), channels) + spatial).astype(np.uint8)
        try:
            columns = im2col(values, kernel, stride, padding, dilation, 7)
        except Exception:  # the window does not fit
            continue
        positions, taps = int(np.prod(columns.shape[:-2])), columns.shape[-2]
        expected = np.ascontiguousarray(columns.reshape(positions, taps, groups, -1)
                                        .transpose(2, 0, 1, 3)).reshape(groups, positions, -1)
        actual = im2col_centered(values, kernel, stride, padding, dilation, 7, 3, groups)
        assert_bitexact(actual, expected.astype(np.float32) - np.float32(3), "im2col")
        checked += 1
