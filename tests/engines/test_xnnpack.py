"""Engine ``xnnpack``'s non-GEMM kernels (engines/xnnpack_elementwise.py, xnnpack_pooling.py)
against the formulas measured on ExecuTorch's runtime (/tmp/p10/xnnpack/notes.md), written again
here element by element in plain Python/NumPy: ties, saturation and the extremes notes.md lists.
The models of tests/support/pt2e.py hold the same kernels against the runtime itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qexact import QINT8, QParams, QuantizedArray, UnsupportedError
from qexact.engines import get_engine
from qexact.ops.activations import clamp
from qexact.ops.elementwise import binary, prepare_binary
from qexact.ops.pooling import (adaptive_avg_pool, avg_pool, max_pool, prepare_adaptive_pool,
                                prepare_pool)
from qexact.ops.reduce import mean, prepare_mean
from qexact.ops.resample import prepare_upsample, upsample
from qexact.trace import apply_steps

F = np.float32
ENGINE = get_engine("xnnpack")
RNG = np.random.default_rng(10)


def qp(scale, zero_point=0):
    return QParams.per_tensor(float(F(scale)), zero_point, QINT8)


def codes(shape, low=-128, high=128):
    return RNG.integers(low, high, size=shape).astype(np.int8)


# --- quantize: XNNConvert f32 -> qs8 ----------------------------------------------------------


def convert_reference(x: float, scale: float, zero_point: int) -> int:
    """notes.md section 1, one element: min(x inv, 32767) (NaN: 32767), cvtps2dq, sat16, + z,
    sat16, sat8."""
    t = F(F(x) * (F(1.0) / F(scale)))
    t = F(32767.0) if math.isnan(t) else min(t, F(32767.0))
    rounded = float(np.rint(np.float64(t)))
    r = int(rounded) if -2.0 ** 31 <= rounded < 2.0 ** 31 else -2 ** 31  # cvtps2dq
    r = min(max(r, -32768), 32767)
    r = min(max(r + zero_point, -32768), 32767)
    return min(max(r, -128), 127)


@pytest.mark.parametrize("scale, zero_point", [(0.05, 0), (0.05, -7), (2.0 ** -4, 3),
                                               (1e-3, 127), (0.3, -128)])
def test_convert_special_values_and_ties(scale, zero_point):
    s = float(F(scale))
    specials = [np.nan, np.inf, -np.inf, 3e38, -3e38, 1e10, -1e10, 2.0 ** 31, 0.0, -0.0, 1e-45,
                127.5 * s, 128.5 * s, -127.5 * s, -128.5 * s, 0.5 * s, 1.5 * s, -2.5 * s]
    x = np.array(specials + list(RNG.normal(size=200) * 10 * s), F)
    kernel = ENGINE.kernel("quantize", qp(s, zero_point), 1)
    got = apply_steps(x, kernel.steps)
    assert [int(v) for v in got] == [convert_reference(v, s, zero_point) for v in x]
    assert got[0] == 127  # NaN -> 127 (eager PT2E: 0)


# --- add: XNNAdd ------------------------------------------------------------------------------


def add_reference(qa, qb, a, b, o, relu=False):
    """notes.md section 2, in Python integers."""
    a_os, b_os = F(F(a.scale) / F(o.scale)), F(F(b.scale) / F(o.scale))
    shift = 20 - (math.frexp(float(max(a_os, b_os)))[1] - 1)
    am, bm = int(np.rint(float(a_os) * 2 ** shift)), int(np.rint(float(b_os) * 2 ** shift))
    bias = 2 ** (shift - 1) - am * a.zero_point - bm * b.zero_point
    out = []
    for x, y in zip(np.ravel(qa).tolist(), np.ravel(qb).tolist()):
        r = (bias + am * x + bm * y) >> shift  # Python >>: floor
        r = min(max(min(max(r, -32768), 32767) + o.zero_point, -32768), 32767)
        r = min(max(r, -128), 127)
        out.append(max(r, o.zero_point) if relu else r)
    return np.array(out).reshape(np.shape(qa))


def run_binary(op, qa, qb, a, b, o, relu=False):
    p = prepare_binary(op, a, b, o, relu=relu, engine=ENGINE)
    return binary(QuantizedArray(qa, a), QuantizedArray(qb, b), p).values


@pytest.mark.parametrize("scales, zero_points", [
    ((0.02, 0.03, 0.04), (1, -3, 5)),
    ((2.0 ** -5, 2.0 ** -4, 2.0 ** -4), (0, 0, 0)),   # ties
    ((3 / 64, 1 / 16, 1 / 16), (2, -1, 0)),            # ties
    ((512 * 0.01, 0.01, 0.01), (0, 4, -2)),            # ratio 512: shift 11
    ((4096 * 0.001, 0.001, 0.001), (0, 0, 0)),         # ratio 4096: shift 8
    ((2.0 ** -12, 2.0 ** -4, 1.0), (0, 0, 0)),         # ratio 2^-12 beside 2^-4: shift 24
])
@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_the_fixed_point_formula(scales, zero_points, relu):
    a, b, o = (qp(s, z) for s, z in zip(scales, zero_points))
    qa, qb = codes((4, 64)), codes((4, 64))
    got = run_binary("add", qa, qb, a, b, o, relu)
    assert np.array_equal(got, add_reference(qa, qb, a, b, o, relu))


def test_add_past_the_defined_shift_is_refused():
    """Both ratios below 2^-11: shift 32, ``1 << 31`` and ``>> 32`` in int32 (undefined in C)."""
    with pytest.raises(UnsupportedError, match="shift 32"):
        run_binary("add", codes(4), codes(4), qp(2.0 ** -12), qp(2.0 ** -12), qp(1.0))


def test_add_ties_go_toward_plus_infinity():
    """0.5 + 0 -> 1 and -0.5 + 0 -> 0 (``>>``), where eager PT2E rounds to even (0 and -0)."""
    a = b = qp(2.0 ** -5)
    o = qp(2.0 ** -4)
    got = run_binary("add", np.int8([1, -1, 3, -3]), np.int8([0, 0, 0, 0]), a, b, o)
    assert got.tolist() == [1, 0, 2, -1]


def test_add_saturates_and_broadcasts():
    a, b, o = qp(1.0), qp(1.0), qp(0.01, 100)
    assert run_binary("add", np.int8([127, -128]), np.int8([127, -128]), a, b, o).tolist() == \
        [127, -128]
    qa, qb = codes((2, 4, 8, 8)), codes((2, 4, 1, 8))
    a, b, o = qp(0.03, 2), qp(0.05, -4), qp(0.07, 1)
    got = run_binary("add", qa, qb, a, b, o)
    assert np.array_equal(got, add_reference(qa, np.broadcast_to(qb, qa.shape), a, b, o))
    single = codes((1, 1, 1, 1))
    got = run_binary("add", qa, single, a, b, o)  # vaddc
    assert np.array_equal(got, add_reference(qa, np.broadcast_to(single, qa.shape), a, b, o))


# --- mul: XNNMultiply ---------------------------------------------------------------------------


def mul_reference(qa, qb, a, b, o):
    m = F(F(F(a.scale) * F(b.scale)) / F(o.scale))
    product = (qa.astype(np.int64) - a.zero_point) * (qb.astype(np.int64) - b.zero_point)
    r = np.rint(F(F(product) * m).astype(np.float64)).astype(np.int64)
    return np.clip(np.clip(np.clip(r, -32768, 32767) + o.zero_point, -32768, 32767), -128, 127)


@pytest.mark.parametrize("scales, zero_points", [((0.02, 0.03, 0.01), (3, -2, 4)),
                                                 ((0.25, 0.5, 1.0), (0, 0, 0)),  # m = 0.125: ties
                                                 ((1.0, 1.0, 0.001), (0, 0, 0))])  # saturates
def test_mul_matches_the_fp32_formula(scales, zero_points):
    a, b, o = (qp(s, z) for s, z in zip(scales, zero_points))
    qa, qb = codes((3, 100)), codes((3, 100))
    assert np.array_equal(run_binary("mul", qa, qb, a, b, o), mul_reference(qa, qb, a, b, o))
    if scales == (0.25, 0.5, 1.0):  # 4 * 0.125 = 0.5 -> 0, 12 * 0.125 = 1.5 -> 2
        got = run_binary("mul", np.int8([2, 3, -2]), np.int8([2, 4, 2]), a, b, o)
        assert got.tolist() == [0, 2, 0]


def test_mul_relu_is_refused_with_the_reason():
    with pytest.raises(UnsupportedError, match="float32 multiply"):
        run_binary("mul", codes(4), codes(4), qp(0.1), qp(0.1), qp(0.1), relu=True)


# --- clamp: XNNClamp (qs8) -------------------------------------------------------------------


@pytest.mark.parametrize("scale, zero_point, expected", [
    (0.4, 3, (0, 6)),       # v / s = -2.5, 2.5: + z before rounding, ties to even
    (2 / 9, -1, (-6, 4)),   # -4.5, 4.5
    (0.4, -4, (-6, -2)),
])
def test_clamp_bounds_quantize_with_the_zero_point_before_rounding(scale, zero_point, expected):
    q = qp(scale, zero_point)
    x = QuantizedArray(np.arange(-128, 128, dtype=np.int8), q)
    got = clamp(x, -1.0, 1.0, ENGINE).values
    assert (int(got.min()), int(got.max())) == expected
    low = int(np.rint(F(F(F(-1.0) / F(q.scale)) + F(zero_point))))
    high = int(np.rint(F(F(F(1.0) / F(q.scale)) + F(zero_point))))
    assert np.array_equal(got, np.clip(np.arange(-128, 128), low, high))


# --- max pool, global average pool -----------------------------------------------------------


def test_max_pool_ceil_mode_skips_the_padding():
    x = codes((2, 3, 8, 8), -128, -100)  # padding would win if it were read as 0
    p = prepare_pool("max", 2, 3, 2, 0, 1, True, engine=ENGINE)
    got = max_pool(QuantizedArray(x, qp(0.1)), p).values
    assert got.shape == (2, 3, 4, 4)
    assert got[..., 3, 3].tolist() == x[..., 6:, 6:].max(axis=(-1, -2)).tolist()


def global_average_reference(q: np.ndarray, x: QParams, y: QParams):
    n = q.shape[2] * q.shape[3]
    inv = F(F(F(x.scale) / F(y.scale)) * F(F(1.0) / F(n)))
    yzp = F(F(y.zero_point) - F(F(n * x.zero_point) * inv))
    total = q.astype(np.int64).sum(axis=(2, 3), keepdims=True)
    return np.clip(np.rint(F(F(F(total) * inv) + yzp).astype(np.float64)), -128, 127)


@pytest.mark.parametrize("shape, x, y", [
    ((2, 8, 8, 8), qp(0.05, 3), qp(0.05, 3)),
    ((2, 8, 7, 5), qp(0.05, -2), qp(0.05, -2)),
    ((2, 8, 8, 8), qp(2.0 ** -4, 0), qp(2.0 ** -4, 0)),    # ties
    ((2, 8, 4, 4), qp(2.0 ** -3, -3), qp(2.0 ** -3, -3)),  # ties
    ((2, 8, 6, 6), qp(0.05, 3), qp(0.02, -10)),             # own output qparams
])
def test_global_average_pool_and_mean_keepdim(shape, x, y):
    q = codes(shape)
    expected = global_average_reference(q, x, y)
    pool = prepare_adaptive_pool("avg", 2, (1, 1), engine=ENGINE, output_qparams=y)
    got = adaptive_avg_pool(QuantizedArray(q, x), pool)
    assert got.qparams == y and np.array_equal(got.values, expected)
    got = mean(QuantizedArray(q, x), prepare_mean((2, 3), True, engine=ENGINE, output_qparams=y))
    assert got.qparams == y and np.array_equal(got.values, expected)


def test_other_reductions_are_refused():
    x = QuantizedArray(codes((1, 2, 4, 4)), qp(0.1))
    with pytest.raises(UnsupportedError, match="without keepdim"):
        mean(x, prepare_mean((2, 3), False, engine=ENGINE))
    with pytest.raises(UnsupportedError, match=r"\(1, 1\)"):
        adaptive_avg_pool(x, prepare_adaptive_pool("avg", 2, (2, 2), engine=ENGINE))


def test_a_kernel_that_keeps_its_qparams_refuses_others():
    """ATen's mean keeps its input's qparams: other output qparams are refused, not ignored."""
    from qexact import QUINT8

    x = QuantizedArray(RNG.integers(0, 256, (1, 8, 4, 4)).astype(np.uint8),
                       QParams.per_tensor(0.1, 3, QUINT8))
    p = prepare_mean((2, 3), True, engine="x86",
                     output_qparams=QParams.per_tensor(0.2, 3, QUINT8))
    with pytest.raises(UnsupportedError, match="keeps its input's qparams"):
        mean(x, p)


# --- float32 inside the delegate: avg_pool2d, bilinear --------------------------------------


def dequantized(q, x: QParams):
    return F(F(q.astype(np.int64) - x.zero_point) * F(x.scale))


def quantized(values, y: QParams):
    return np.array([convert_reference(v, y.scale, y.zero_point) for v in values.ravel()]
                    ).reshape(values.shape)


def avg_9p_reference(d, k, stride, pad, count_include_pad):
    """f32 avgpool 9p, one output at a time: column-major taps, 0.0 outside, the fixed tree."""
    n, c, h, w = d.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, c, oh, ow), F)
    for b, ch, oy, ox in np.ndindex(n, c, oh, ow):
        taps, valid = [], 0
        for kx in range(k):
            for ky in range(k):
                y, x = oy * stride - pad + ky, ox * stride - pad + kx
                inside = 0 <= y < h and 0 <= x < w
                taps.append(d[b, ch, y, x] if inside else F(0))
                valid += inside
        i = taps + [F(0)] * (9 - len(taps))
        total = F(F(F(i[2] + i[3]) + F(i[4] + i[5])) + F(F(F(i[0] + i[1]) + i[8]) + F(i[6] + i[7])))
        out[b, ch, oy, ox] = F(total * F(F(1) / F(k * k if count_include_pad else valid)))
    return out


@pytest.mark.parametrize("k, stride, pad, count_include_pad", [(2, 2, 0, True), (3, 1, 1, False),
                                                               (3, 2, 1, False), (3, 2, 0, True)])
def test_avg_pool_runs_xnnpack_float_order_between_converts(k, stride, pad, count_include_pad):
    x, y = qp(0.037, -5), qp(0.011, 9)
    q = codes((2, 3, 9, 9))
    p = prepare_pool("avg", 2, k, stride, pad, 1, False, count_include_pad, engine=ENGINE,
                     output_qparams=y)
    got = avg_pool(QuantizedArray(q, x), p)
    expected = quantized(avg_9p_reference(dequantized(q, x), k, stride, pad, count_include_pad), y)
    assert got.qparams == y and np.array_equal(got.values, expected)


def test_avg_pool_tap_order_is_not_the_sequential_one():
    """Values whose float32 sum depends on the order: the 9p tree, not a row-major loop."""
    d = np.array([[[[1e8, 1.0, 3.0], [-1e8, 1.0, 3.0], [1.0, 1.0, 1.0]]]], F)
    tree = avg_9p_reference(d, 3, 1, 0, True)
    from qexact.engines.xnnpack_pooling import average_pool_float
    got = average_pool_float(d, (3, 3), (1, 1), (0, 0), False, True)
    assert got.view(np.uint32).tolist() == tree.view(np.uint32).tolist()
    sequential = F(0)
    for value in d.ravel():
        sequential = F(sequential + value)
    assert F(sequential * F(F(1) / F(9))) != tree[0, 0, 0, 0]


def test_avg_pool_portable_path_sums_in_order_and_divides():
    """ceil_mode, or padding with count_include_pad: ExecuTorch's portable avg_pool2d."""
    from qexact.engines.xnnpack_pooling import average_pool_float
    d = RNG.normal(size=(1, 2, 7, 7)).astype(F)
    got = average_pool_float(d, (3, 3), (2, 2), (1, 1), True, True)
    n, c, h, w = d.shape
    for ch, oy, ox in np.ndindex(c, *got.shape[2:]):
        total, y0, x0 = F(0), oy * 2 - 1, ox * 2 - 1
        for y in range(max(y0, 0), min(y0 + 3, h)):
            for x in range(max(x0, 0), min(x0 + 3, w)):
                total = F(total + d[0, ch, y, x])
        divisor = (min(y0 + 3, h + 1) - y0) * (min(x0 + 3, w + 1) - x0)
        assert F(total / F(divisor)).view(np.uint32) == got[0, ch, oy, ox].view(np.uint32)


def bilinear_reference(d, out_h, out_w, align_corners):
    def positions(size, out):
        result = []
        for o in range(out):
            if align_corners:
                scale = F(F(size - 1) / F(out - 1)) if out > 1 else F(0)
                p = F(F(o) * scale)
            else:
                scale = F(F(size) / F(out))
                p = F(F(F(o) * scale) + F(F(F(0.5) * scale) - F(0.5)))
                p = min(max(p, F(0)), F(size - 1))
            i0 = int(math.floor(p))
            result.append((i0, min(i0 + 1, size - 1), F(p - F(i0))))
        return result

    n, c, h, w = d.shape
    out = np.zeros((n, c, out_h, out_w), F)
    for (y0, y1, ay), oy in zip(positions(h, out_h), range(out_h)):
        for (x0, x1, ax), ox in zip(positions(w, out_w), range(out_w)):
            t = F(d[..., y0, x0] + F(F(d[..., y0, x1] - d[..., y0, x0]) * ax))
            b = F(d[..., y1, x0] + F(F(d[..., y1, x1] - d[..., y1, x0]) * ax))
            out[..., oy, ox] = F(t + F(F(b - t) * ay))
    return out


@pytest.mark.parametrize("in_size, out_size, align_corners", [
    ((5, 7), (10, 14), False), ((5, 7), (10, 14), True), ((8, 8), (13, 11), False),
    ((8, 8), (13, 11), True), ((7, 5), (3, 4), False)])
def test_bilinear_runs_xnnpack_ibilinear_between_converts(in_size, out_size, align_corners):
    x, y = qp(0.021, 4), qp(0.019, -3)
    q = codes((2, 3) + in_size)
    p = prepare_upsample("bilinear", out_size, None, align_corners, engine=ENGINE,
                         output_qparams=y)
    got = upsample(QuantizedArray(q, x), p)
    expected = quantized(bilinear_reference(dequantized(q, x), *out_size, align_corners), y)
    assert got.qparams == y and np.array_equal(got.values, expected)


def test_unmodelled_float_kernels_are_refused():
    x = QuantizedArray(codes((1, 2, 8, 8)), qp(0.1))
    with pytest.raises(UnsupportedError, match="nearest"):
        upsample(x, prepare_upsample("nearest", (16, 16), engine=ENGINE))
    with pytest.raises(UnsupportedError, match="more than 9 taps"):
        avg_pool(x, prepare_pool("avg", 2, 4, 1, 0, engine=ENGINE))


# --- dynamic quantization (qd8): per-row parameters and codes ----------------------------------


def test_qd8_parameters_and_codes_by_hand():
    from qexact.engines.xnnpack import qd8_parameters, qd8_quantize

    rows = np.array([[0.0, 2.55, 1.275],      # S = 100: zp -128, 1.275 * 100 = 127.5 ties to even
                     [0.0, 0.0, 0.0],         # rmin == rmax: S = 1, zp = 127 (the max branch)
                     [-1.0, -2.0, -0.5],      # no positive values: rmax = 0
                     [3.0, -1.0, 1e-9]], np.float32)
    p = qd8_parameters(rows)
    assert p.multiplier[0] == np.float32(100) and p.zero_point[0] == -128
    assert p.scale[0] == np.float32(np.float32(1) / np.float32(100))
    assert (p.multiplier[1], p.zero_point[1]) == (1, 127)
    assert p.multiplier[2] == np.float32(np.float32(255) / np.float32(2.0))
    assert p.zero_point[2] == 127  # dmax = 0: 127 - 0
    codes = qd8_quantize(rows, p)
    assert codes[0].tolist() == [-128, 127, 0]      # 127.5 -> 128 (even) - 128
    assert codes[1].tolist() == [127, 127, 127]
    assert codes[2].tolist() == [-1, -128, 63]      # -0.5 * 127.5 = -63.75 -> -64 + 127
    multiplier = np.float32(np.float32(255) / np.float32(4.0))
    assert p.multiplier[3] == multiplier
    zero = np.float32(np.float32(-128) - np.float32(np.float32(-1.0) * multiplier))
    assert p.zero_point[3] == np.rint(zero)  # -128 + 63.75 = -64.25 -> -64
    assert codes[3].tolist() == [127, -128, -64]


def test_dynamic_linear_refuses_rows_it_does_not_model():
    from qexact.ops.linear_dynamic import linear_dynamic, prepare_linear_dynamic

    weight = RNG.integers(-127, 128, (4, 6)).astype(np.int8)
    params = prepare_linear_dynamic(weight, QParams.per_channel(F(np.full(4, 0.01)),
                                                                np.zeros(4), 0, QINT8),
                                    engine=ENGINE)
    x = F(RNG.normal(size=(3, 6)))
    assert linear_dynamic(x, params).shape == (3, 4)
    x[1, 2] = np.inf
    with pytest.raises(UnsupportedError, match="NaN or an infinity"):
        linear_dynamic(x, params)
    with pytest.raises(UnsupportedError, match="no dynamically quantized Linear"):
        prepare_linear_dynamic(weight, params.weight_qparams, engine=get_engine("inductor"))
