"""The numba GEMM kernels (``qexact.kernels._numba_gemm``) equal the int64 definition.

``gemm_u8s8`` (raw ``sum x w``) and ``accumulate_u8s8`` (``sum (x - zx)(w - zw)``) of every method
the CPU can run equal ``reference_matmul``, plus ``pair_saturation_correction`` for
``avx2_saturate`` (FBGEMM's ``vpmaddubsw`` pairs, laid out by ``pair_positions`` with one or several
K blocks, odd blocks included), on hypothesis-drawn shapes (fixed seed) and adversarial corners:
maximal int16 saturation (x = 255, w = -128 / 127), zero points 0 / 128 / 255, per-channel weight
zero points, K not a multiple of 4 or 64, M = N = K = 1, a large K; threads equal one thread.
A method this CPU lacks is skipped (``available_methods``), never run.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.assertions import assert_bitexact  # noqa: E402

from qexact.accumulate import (pair_positions, pair_saturation_correction,  # noqa: E402
                               reference_matmul, saturating_weight_pairs, weight_pairs_of)
from qexact.errors import ShapeError, UnsupportedError  # noqa: E402
from qexact.kernels import _numba_gemm as gemm  # noqa: E402

AVAILABLE = gemm.available_methods()
COMPARED = {"elements": 0, "saturated": 0}  # tallies for the report (printed with -s)
METHODS = [pytest.param(method, marks=pytest.mark.skipif(
    method not in AVAILABLE, reason=f"this CPU cannot run {method}")) for method in gemm.METHODS]


def laid_out_x(x: np.ndarray, packed: gemm.PackedWeights) -> np.ndarray:
    """x (M, K) uint8 in the packed depth layout: columns gathered (-1 -> 0), zero-padded."""
    laid = np.zeros((x.shape[0], packed.padded_depth), np.uint8)
    if packed.columns is None:
        laid[:, :x.shape[1]] = x
    else:
        with_zero = np.concatenate([x, np.zeros((x.shape[0], 1), np.uint8)], axis=1)
        laid[:, :packed.columns.size] = with_zero[:, packed.columns]
    return laid


def expected_accumulator(x, weight, x_zero_point, weight_zero_point, saturated=0):
    """int64 definition: the centered product, plus FBGEMM's pair saturation (``saturated``)."""
    weight_zero_points = np.broadcast_to(np.asarray(weight_zero_point, np.int64),
                                         (weight.shape[0],))
    x_centered = x.astype(np.int64) - x_zero_point
    w_centered = weight.astype(np.int64) - weight_zero_points[:, None]
    return reference_matmul(x_centered, w_centered.T) + saturated


def saturation(x, weight, positions):
    if positions is None:
        positions = pair_positions(weight.shape[1])
    pairs = weight_pairs_of(weight, positions)
    return pair_saturation_correction(x, pairs, saturating_weight_pairs(pairs), positions)


def check(x, weight, x_zero_point, weight_zero_point, method, block_starts=None, context=""):
    """Raw and centered products of one method (and with given row sums) equal the definition."""
    positions = None if block_starts is None else pair_positions(weight.shape[1], block_starts)
    columns = None if positions is None else positions.reshape(-1)
    packed = gemm.pack_weights(weight, columns)
    laid = laid_out_x(x, packed)
    context = f"{method} M,K,N={x.shape[0]},{x.shape[1]},{weight.shape[0]} {context}"
    saturated = (saturation(x, weight, positions) if method == "avx2_saturate"
                 else np.zeros((x.shape[0], weight.shape[0]), np.int64))

    raw = gemm.gemm_u8s8(laid, packed, method)
    expected_raw = reference_matmul(x.astype(np.int64), weight.astype(np.int64).T) + saturated
    assert_bitexact(raw.astype(np.int64), expected_raw, f"raw {context}")

    acc = gemm.accumulate_u8s8(laid, packed, x_zero_point, weight_zero_point, method)
    expected = expected_accumulator(x, weight, x_zero_point, weight_zero_point, saturated)
    assert acc.dtype == np.int32
    assert_bitexact(acc.astype(np.int64), expected, f"centered {context}")
    given_sums = gemm.accumulate_u8s8(laid, packed, x_zero_point, weight_zero_point, method,
                                      x_row_sums=x.sum(axis=1, dtype=np.int32))
    assert_bitexact(given_sums, acc, f"given row sums {context}")
    COMPARED["elements"] += 3 * acc.size
    COMPARED["saturated"] += 3 * int(np.count_nonzero(saturated))


@st.composite
def problems(draw):
    rows = draw(st.integers(1, 70))
    depth = draw(st.integers(1, 300))
    columns = draw(st.integers(1, 140))
    seed = draw(st.integers(0, 2**32 - 1))
    x_zero_point = draw(st.sampled_from([0, 1, 127, 128, 255]))
    per_channel = draw(st.booleans())
    starts = draw(st.sampled_from(["none", "one", "several"]))
    if starts == "none" or depth == 1:
        block_starts = None
    elif starts == "one":
        block_starts = (0,)
    else:
        inner = draw(st.lists(st.integers(1, depth - 1), min_size=1, max_size=4, unique=True))
        block_starts = (0, *sorted(inner))
    return rows, depth, columns, seed, x_zero_point, per_channel, block_starts


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(problem=problems())
def test_random_shapes(method, problem):
    rows, depth, columns, seed, x_zero_point, per_channel, block_starts = problem
    rng = np.random.default_rng(seed)
    # skewed draws: many extremes, so pairs saturate often
    x = rng.choice(np.array([0, 1, 128, 254, 255], np.uint8), size=(rows, depth))
    x = np.where(rng.random((rows, depth)) < 0.5, x, rng.integers(0, 256, (rows, depth)))
    x = x.astype(np.uint8)
    weight = rng.integers(-128, 128, size=(columns, depth)).astype(np.int8)
    weight_zero_point = (rng.integers(-128, 128, size=columns) if per_channel
                         else int(rng.integers(-128, 128)))
    check(x, weight, x_zero_point, weight_zero_point, method, block_starts,
          f"seed={seed} starts={block_starts}")


EXTREME_WEIGHTS = ["min", "max", "pairs", "alternating"]


def extreme_weight(kind, columns, depth):
    if kind == "min":
        return np.full((columns, depth), -128, np.int8)
    if kind == "max":
        return np.full((columns, depth), 127, np.int8)
    if kind == "pairs":  # (127, 127) then (-128, -128): every pair saturates, both signs
        signs = np.where((np.arange(depth) // 2) % 2 == 0, 127, -128)
        return np.broadcast_to(signs, (columns, depth)).astype(np.int8)
    per_column = np.where(np.arange(columns)[:, None] % 2 == 0, 127, -128)
    return np.broadcast_to(per_column, (columns, depth)).astype(np.int8)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", EXTREME_WEIGHTS)
@pytest.mark.parametrize("x_zero_point", [0, 128, 255])
def test_max_saturation(method, kind, x_zero_point):
    """x = 255 everywhere: |pair| up to 65025, far past int16; K and N cut every tile edge."""
    for rows, depth, columns in [(9, 67, 70), (1, 5, 1), (5, 130, 17)]:
        x = np.full((rows, depth), 255, np.uint8)
        weight = extreme_weight(kind, columns, depth)
        per_channel = np.resize(np.array([-128, 0, 127, 5], np.int64), columns)
        for weight_zero_point in (0, -128, 127, per_channel):
            for block_starts in (None, (0,), (0, 3), (0, 1, depth // 2)):
                if block_starts is not None and max(block_starts) >= depth:
                    continue
                check(x, weight, x_zero_point, weight_zero_point, method, block_starts,
                      f"{kind} zw={weight_zero_point} starts={block_starts}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rows, depth, columns", [
    (1, 1, 1), (1, 1, 200), (200, 1, 1), (1, 2, 3), (3, 3, 3), (7, 4, 16), (7, 5, 17),
    (6, 63, 64), (4, 64, 65), (13, 65, 63), (25, 129, 129), (1, 1024, 1), (2, 4608, 20)])
def test_edge_shapes(method, rows, depth, columns):
    rng = np.random.default_rng(rows * 100003 + depth * 101 + columns)
    x = rng.integers(0, 256, size=(rows, depth)).astype(np.uint8)
    weight = rng.integers(-128, 128, size=(columns, depth)).astype(np.int8)
    per_channel = rng.integers(-128, 128, size=columns)
    check(x, weight, 255, per_channel, method, None, "per-channel")
    check(x, weight, 128, 0, method, (0,) if depth > 1 else None, "one block")


@pytest.mark.parametrize("method", METHODS)
def test_narrow_panels(method):
    """Wide tiles of narrow panels (vnni: 12 rows x 1 zmm for N <= 16, 8 x 2 for N <= 32, also
    as the last panel after full ones) and the paths without row sums (zw = 0): N = 1..16 and
    around the panel edges, K = 1..20, M not a multiple of 8 or 12 (with and without a full wide
    tile), weight zero points 0 (per tensor and per channel) and not 0."""
    rng = np.random.default_rng(1313)
    all_columns = list(range(1, 17)) + [23, 32, 33, 48, 65, 80, 96, 129]
    for case, columns in enumerate(all_columns):
        for depth in range(1, 21):
            rows = (1, 7, 11, 13, 23, 37, 97)[(case + depth) % 7]
            x = rng.integers(0, 256, (rows, depth)).astype(np.uint8)
            x[rng.random((rows, depth)) < 0.2] = 255
            weight = rng.integers(-128, 128, (columns, depth)).astype(np.int8)
            weight[rng.random((columns, depth)) < 0.2] = -128
            kind = (case + depth) % 3
            weight_zero_point = (0 if kind == 0 else np.zeros(columns, np.int64) if kind == 1
                                 else rng.integers(-128, 128, columns))
            check(x, weight, int(rng.integers(0, 256)), weight_zero_point, method, None,
                  f"zw kind {kind}")


@pytest.mark.parametrize("method", METHODS)
def test_depth_limit(method):
    """K = 33025, the largest accepted: |acc| reaches 33025 * 65025 = 2**31 - 33023 exactly."""
    depth = gemm.MAX_CENTERED_DEPTH
    x = np.tile(np.array([[255], [0]], np.uint8), (1, depth))
    weight = np.tile(np.array([[-128], [127], [-128]], np.int8), (1, depth))
    weight[2, 1::2] = 127
    for x_zero_point, weight_zero_point in [(0, 127), (255, -128), (0, [127, -128, 0])]:
        check(x, weight, x_zero_point, weight_zero_point, method, None, "K limit")
    assert np.abs(expected_accumulator(x, weight, 0, 127)).max() == depth * 65025


@pytest.mark.parametrize("method", METHODS)
def test_parallel_equals_serial(method):
    rng = np.random.default_rng(7)
    # row chunks, and column-panel chunks when there are few rows (M = 1, 5 with N = 300)
    for rows, depth, columns in [(203, 75, 70), (1, 33, 5), (64, 300, 130), (1, 40, 300),
                                 (5, 9, 300)]:
        x = rng.integers(0, 256, size=(rows, depth)).astype(np.uint8)
        weight = rng.integers(-128, 128, size=(columns, depth)).astype(np.int8)
        packed = gemm.pack_weights(weight, pair_positions(depth, (0, 7)).reshape(-1))
        laid = laid_out_x(x, packed)
        serial = gemm.gemm_u8s8(laid, packed, method)
        for threads in (True, 3):
            assert_bitexact(gemm.gemm_u8s8(laid, packed, method, parallel=threads), serial, "raw")
        zero_points = rng.integers(-128, 128, columns)
        serial = gemm.accumulate_u8s8(laid, packed, 3, zero_points, method)
        threaded = gemm.accumulate_u8s8(laid, packed, 3, zero_points, method, parallel=True)
        assert_bitexact(threaded, serial, "centered")


@pytest.mark.parametrize("method", METHODS)
def test_out_and_strided_rows(method):
    """``out=`` is filled in place; x may be a row-strided view (unit column stride)."""
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, size=(10, 30)).astype(np.uint8)
    weight = rng.integers(-128, 128, size=(20, 30)).astype(np.int8)
    packed = gemm.pack_weights(weight)
    wide = np.zeros((10, packed.padded_depth + 12), np.uint8)
    wide[:, :30] = x
    out = np.full((10, 20), 7, np.int32)
    result = gemm.gemm_u8s8(wide[:, :packed.padded_depth], packed, method, out=out)
    assert result is out
    expected = reference_matmul(x.astype(np.int64), weight.astype(np.int64).T)
    if method == "avx2_saturate":
        expected += saturation(x, weight, None)
    assert_bitexact(out.astype(np.int64), expected, "out=")


def test_refusals(monkeypatch):
    weight = np.zeros((2, 8), np.int8)
    packed = gemm.pack_weights(weight)
    x = np.zeros((3, packed.padded_depth), np.uint8)
    if AVAILABLE:
        with pytest.raises(ShapeError):
            gemm.gemm_u8s8(np.zeros((3, 9), np.uint8), packed, AVAILABLE[0])
    with pytest.raises(UnsupportedError):
        gemm.gemm_u8s8(x, packed, "sse")
    big = gemm.pack_weights(np.zeros((1, gemm.MAX_CENTERED_DEPTH + 1), np.int8))
    with pytest.raises(UnsupportedError):
        gemm.accumulate_u8s8(np.zeros((1, big.padded_depth), np.uint8), big, 0, 0, "vnni")
    for x_zero_point, weight_zero_point in [(256, 0), (-1, 0), (0, 128), (0, [0, -129])]:
        with pytest.raises(UnsupportedError):
            gemm.accumulate_u8s8(x, packed, x_zero_point, weight_zero_point, "vnni")
    with pytest.raises(ShapeError):
        gemm.pack_weights(weight.astype(np.int16))
    monkeypatch.setattr(gemm, "cpu_flags", lambda: frozenset())
    gemm.available_methods.cache_clear()
    try:
        assert gemm.available_methods() == ()
        with pytest.raises(UnsupportedError):
            gemm.gemm_u8s8(x, packed, "avx2_exact")
    finally:
        gemm.available_methods.cache_clear()


def test_packed_weights():
    """Depth, padding and column sums; a -1 column packs as zero."""
    weight = np.arange(-12, 12, dtype=np.int8).reshape(2, 12)
    columns = pair_positions(12, (0, 5)).reshape(-1)  # blocks of 5 and 7: two pads
    packed = gemm.pack_weights(weight, columns)
    assert (packed.depth, packed.output_channels) == (12, 2)
    assert columns.size == 14 and packed.padded_depth == 16
    assert packed.column_sums.tolist() == weight.sum(axis=1).tolist()
    assert not packed.laid_out[:, columns.size:].any()
    assert not packed.laid_out[:, :columns.size][:, columns < 0].any()


def test_tally():
    """Prints how much the tests above compared (run with -s)."""
    print(f"\nnumba GEMM: {COMPARED['elements']} elements equal to the int64 definition, "
          f"{COMPARED['saturated']} of them changed by int16 pair saturation")
