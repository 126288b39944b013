"""Engines ``inductor`` and ``pt2e_eager``'s non-GEMM kernels (engines/pt2e_decomposed.py) and
Inductor's fused hardtanh post-op (engines/inductor.py), against the formulas measured on
torch.compile (/tmp/p10/inductor/notes.md), written again here element by element in plain
NumPy: ties, saturation, padding. tests/importers/test_pt2e.py holds the same kernels against
torch.compile and eager PT2E themselves."""

from __future__ import annotations

import numpy as np
import pytest

from qexact import QINT8, QUINT8, QParams, QuantizedArray, UnsupportedError
from qexact.engines import get_engine
from qexact.engines.base import LayerQuantization
from qexact.ops.activations import clamp
from qexact.ops.elementwise import binary, prepare_binary
from qexact.ops.pooling import (adaptive_avg_pool, avg_pool, max_pool, prepare_adaptive_pool,
                                prepare_pool)
from qexact.ops.reduce import mean, prepare_mean
from qexact.ops.resample import prepare_upsample, upsample
from qexact.requantize import requantize

F = np.float32
INDUCTOR = get_engine("inductor", isa="avx512_vnni")
EAGER = get_engine("pt2e_eager", isa="avx512_vnni")
ENGINES = [INDUCTOR, EAGER]
RNG = np.random.default_rng(11)


def qp(scale, zero_point=0, dtype=QUINT8):
    return QParams.per_tensor(float(F(scale)), zero_point, dtype)


def codes(shape, dtype=QUINT8):
    return RNG.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)


def dq(q, x: QParams):
    """``dequantize_per_tensor``: f32(f32(f32(q) - z) * s)."""
    return F(F(np.asarray(q, F) - F(x.zero_point)) * F(x.scale))


def q_(v, y: QParams):
    """``quantize_per_tensor``: clamp(rne(f32(v * f32(1 / s))) + z), zero point after rounding."""
    inv = F(1.0 / y.scale)
    r = np.rint(F(np.asarray(v, F) * inv).astype(np.float64)) + y.zero_point
    return np.clip(r, y.dtype.qmin, y.dtype.qmax).astype(np.int64)


# --- binary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
@pytest.mark.parametrize("op, relu", [("add", False), ("add", True), ("mul", False),
                                      ("mul", True)])
def test_binary_is_dequantize_float_op_quantize(engine, op, relu):
    # scales 0.5 and an output scale of 1.0: sums land on half-integers (ties to even)
    for a, b, o in ((qp(0.5, 3), qp(0.5, 250), qp(1.0, 128)), (qp(0.031, 17), qp(0.047, 130),
                                                              qp(0.0021, 90))):
        qa, qb = codes((2, 3, 5, 7)), codes((2, 3, 1, 7))
        p = prepare_binary(op, a, b, o, relu=relu, engine=engine)
        got = binary(QuantizedArray(qa, a), QuantizedArray(qb, b), p).values
        c = F(dq(qa, a) + dq(qb, b)) if op == "add" else F(dq(qa, a) * dq(qb, b))
        expected = q_(np.maximum(c, F(0)) if relu else c, o)
        assert np.array_equal(got, expected)


def test_binary_ties_round_to_even_and_saturate():
    a = b = qp(0.5, 0)
    o = qp(1.0, 0)
    qa = np.array([1, 3, 5, 200, 255], np.uint8)   # 0.5, 1.5, 2.5: 0, 2, 2
    qb = np.zeros(5, np.uint8)
    got = binary(QuantizedArray(qa, a), QuantizedArray(qb, b),
                 prepare_binary("add", a, b, o, engine=INDUCTOR)).values
    assert got.tolist() == [0, 2, 2, 100, 128]
    got = binary(QuantizedArray(qa, a), QuantizedArray(np.full(5, 255, np.uint8), b),
                 prepare_binary("mul", a, b, o, engine=INDUCTOR)).values
    assert got.tolist() == [64, 191, 255, 255, 255]  # 63.75 -> 64, 191.25 -> 191, saturated


# --- clamp, max pool, cat: the integer forms -------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
@pytest.mark.parametrize("x, low, high", [(qp(0.4, 3), -1.0, 1.0),      # -2.5, 2.5: ties
                                          (qp(0.05, 128), -0.5, 0.75),
                                          (qp(0.1, 0), 0.0, 6.0)])
def test_clamp_equals_the_float_clamp_quantized(engine, x, low, high):
    q = np.arange(256, dtype=np.uint8)
    got = clamp(QuantizedArray(q, x), low, high, engine).values
    expected = q_(np.minimum(np.maximum(dq(q, x), F(low)), F(high)), x)
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
def test_max_pool_is_the_max_of_the_in_bounds_codes(engine):
    x = qp(0.1, 250)  # padding read as the zero point (or 0) would win
    q = RNG.integers(0, 200, (2, 3, 7, 6)).astype(np.uint8)
    got = max_pool(QuantizedArray(q, x), prepare_pool("max", 2, 3, 2, 1, engine=engine)).values
    d = np.pad(dq(q, x), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    expected = np.array([[[[d[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max()
                            for j in range(got.shape[3])] for i in range(got.shape[2])]
                          for c in range(3)] for n in range(2)], F)
    assert np.array_equal(got, q_(expected, x))


# --- avg pool, mean --------------------------------------------------------------------------


def avg_reference(d, k, stride, pad, count_include_pad):
    """Row-major in-bounds taps from 0.0, then f32(sum / D)."""
    n, c, h, w = d.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.zeros((n, c, oh, ow), F)
    for b, ch, oy, ox in np.ndindex(n, c, oh, ow):
        y0, x0 = oy * stride - pad, ox * stride - pad
        total, valid = F(0), 0
        for y in range(y0, y0 + k):
            for x in range(x0, x0 + k):
                if 0 <= y < h and 0 <= x < w:
                    total, valid = F(total + d[b, ch, y, x]), valid + 1
        padded = (min(y0 + k, h + pad) - y0) * (min(x0 + k, w + pad) - x0)
        out[b, ch, oy, ox] = F(total / F(padded if count_include_pad else valid))
    return out


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
@pytest.mark.parametrize("k, stride, pad, count_include_pad", [(2, 2, 0, True), (3, 1, 1, True),
                                                               (3, 1, 1, False), (3, 2, 1, True)])
def test_avg_pool_sums_in_row_major_order_and_divides(engine, k, stride, pad, count_include_pad):
    x, y = qp(0.037, 5), qp(0.011, 120)
    q = codes((2, 3, 9, 8))
    p = prepare_pool("avg", 2, k, stride, pad, 1, False, count_include_pad, engine=engine,
                     output_qparams=y)
    got = avg_pool(QuantizedArray(q, x), p)
    expected = q_(avg_reference(dq(q, x), k, stride, pad, count_include_pad), y)
    assert got.qparams == y and np.array_equal(got.values, expected)


def test_inductor_mean_is_sequential_from_zero():
    """mean((2, 3), keepdim) and adaptive_avg_pool2d((1, 1)): each channel summed from 0.0 in
    row-major order, then f32(sum / HW), quantized to the output's own qparams."""
    values = codes((2, 5, 6, 7))
    xq, yq = qp(0.013, 4), qp(0.004, 100)
    d = dq(values, xq)
    total = np.zeros((2, 5), F)
    for i in range(6):
        for j in range(7):
            total = F(total + d[:, :, i, j])
    expected = q_(F(total / F(42)), yq).reshape(2, 5, 1, 1)
    for run in (lambda a: mean(a, prepare_mean((2, 3), True, engine=INDUCTOR, output_qparams=yq)),
                lambda a: adaptive_avg_pool(a, prepare_adaptive_pool("avg", 2, (1, 1),
                                                                     engine=INDUCTOR,
                                                                     output_qparams=yq))):
        got = run(QuantizedArray(values, xq))
        assert got.qparams == yq and np.array_equal(got.values, expected)


def test_eager_mean_states_it_is_not_bit_exact_and_other_sizes_are_refused():
    kernel = EAGER.kernel("mean", (2, 3), (2, 3), (1, 2, 1, 1), QUINT8, codes((1, 2, 4, 4)))
    assert kernel.inexact and "SumKernel" in kernel.inexact
    assert not INDUCTOR.kernel("mean", (2, 3), (2, 3), (1, 2, 1, 1), QUINT8,
                               codes((1, 2, 4, 4))).inexact
    x = QuantizedArray(codes((1, 2, 4, 4)), qp(0.1, 3))
    with pytest.raises(UnsupportedError, match=r"\(1, 1\)"):
        adaptive_avg_pool(x, prepare_adaptive_pool("avg", 2, (2, 2), engine=INDUCTOR))
    with pytest.raises(UnsupportedError, match="measured"):
        mean(x, prepare_mean((1,), True, engine=INDUCTOR))


# --- upsample --------------------------------------------------------------------------------


def bilinear_reference(d, out_h, out_w, align_corners):
    """Inductor's three lerps, no FMA; src = max(f32(f32(f32(o + 0.5) r) - 0.5), 0)."""
    def positions(size, out):
        result = []
        for o in range(out):
            if align_corners:
                p = F(F(o) * (F(F(size - 1) / F(out - 1)) if out > 1 else F(0)))
            else:
                p = max(F(F(F(F(o) + F(0.5)) * F(F(size) / F(out))) - F(0.5)), F(0))
            i0 = min(int(p), size - 1)
            result.append((i0, min(i0 + 1, size - 1), min(max(F(p - F(i0)), F(0)), F(1))))
        return result

    out = np.zeros(d.shape[:2] + (out_h, out_w), F)
    for oy, (y0, y1, ly) in enumerate(positions(d.shape[2], out_h)):
        for ox, (x0, x1, lx) in enumerate(positions(d.shape[3], out_w)):
            t = F(d[..., y0, x0] + F(F(d[..., y0, x1] - d[..., y0, x0]) * lx))
            b = F(d[..., y1, x0] + F(F(d[..., y1, x1] - d[..., y1, x0]) * lx))
            out[..., oy, ox] = F(t + F(F(b - t) * ly))
    return out


@pytest.mark.parametrize("out_size, align_corners", [((10, 14), False), ((10, 14), True),
                                                     ((13, 11), False), ((13, 11), True)])
def test_inductor_bilinear_is_three_lerps(out_size, align_corners):
    x, y = qp(0.021, 4), qp(0.019, 130)
    q = codes((2, 3, 5, 7))
    p = prepare_upsample("bilinear", out_size, None, align_corners, engine=INDUCTOR,
                         output_qparams=y)
    got = upsample(QuantizedArray(q, x), p)
    expected = q_(bilinear_reference(dq(q, x), *out_size, align_corners), y)
    assert got.qparams == y and np.array_equal(got.values, expected)
    assert EAGER.kernel("upsample", "bilinear", q).inexact  # ATen's kernel: not reproduced


@pytest.mark.parametrize("engine", ENGINES, ids=lambda e: e.name)
def test_nearest_is_a_gather(engine):
    x = qp(0.021, 4)
    q = codes((1, 2, 5, 7))
    got = upsample(QuantizedArray(q, x), prepare_upsample("nearest", (10, 14), engine=engine))
    assert np.array_equal(got.values, q.repeat(2, axis=2).repeat(2, axis=3))
    got = upsample(QuantizedArray(q, x), prepare_upsample("nearest", (13, 11), engine=engine))
    rows = [min(int(np.floor(F(F(o) * F(F(5) / F(13))))), 4) for o in range(13)]
    cols = [min(int(np.floor(F(F(o) * F(F(7) / F(11))))), 6) for o in range(11)]
    assert np.array_equal(got.values, q[:, :, rows][:, :, :, cols])


# --- conv + hardtanh: the fused post-op ------------------------------------------------------


def test_inductor_fused_hardtanh_clamps_in_float_before_the_output_stage():
    w = QParams.per_channel(np.array([0.01, 0.02], F), np.zeros(2, np.int64), 0, QINT8)
    out = qp(0.005, 100)
    bias = np.array([0.1, -0.2], F)
    layer = LayerQuantization(0.05, w, bias, out, False, None, (-0.5, 0.75))
    steps = INDUCTOR.linear.requantization(layer).steps
    acc = RNG.integers(-3000, 3000, (64, 2))
    got = requantize(acc, steps, np.uint8)
    t = F(F(F(acc.astype(F)) * F(0.05)) * w.scale.astype(F))
    t = np.minimum(np.maximum(F(t + bias), F(-0.5)), F(0.75))
    inv = F(F(1) / F(0.005))
    expected = np.clip(np.rint(F(F(t * inv) + F(100)).astype(np.float64)), 0, 255)
    assert np.array_equal(got, expected)


def test_an_engine_without_a_clamp_post_op_refuses_a_fused_hardtanh():
    from qexact.ops.conv import prepare_conv

    weight = RNG.integers(-127, 128, (2, 3, 3, 3)).astype(np.int8)
    w = QParams.per_channel(np.array([0.01, 0.02], F), np.zeros(2, np.int64), 0, QINT8)
    with pytest.raises(UnsupportedError, match="hardtanh"):
        prepare_conv(weight, w, None, qp(0.05, 3), qp(0.1, 3), engine="fbgemm",
                     isa="avx2", clamp=(-1.0, 1.0))
    params = prepare_conv(weight, w, None, qp(0.05, 3), qp(0.1, 3), engine=INDUCTOR,
                          clamp=(-1.0, 1.0))
    assert any(step.role == "clamp" for step in params.requantization)


def test_inspect_names_the_eager_kernels_that_are_not_bit_exact():
    assert "SumKernel" in prepare_mean((2, 3), True, engine=EAGER).inexact
    assert "SumKernel" in prepare_adaptive_pool("avg", 2, (1, 1), engine=EAGER).inexact
    assert "bilinear" in prepare_upsample("bilinear", (4, 4), engine=EAGER).inexact
    assert not prepare_upsample("nearest", (4, 4), engine=EAGER).inexact
    assert not prepare_mean((2, 3), True, engine=INDUCTOR).inexact


# --- float32 inputs: the ops a PT2E model leaves in float, without converts ---------------------


def test_float_inputs_run_the_float32_kernels_and_stay_float():
    from qexact.engines.pt2e_decomposed import avg_pool_float
    from qexact.ops.elementwise import FloatBinaryParams, binary_float

    x = F(RNG.normal(size=(2, 3, 7, 6)) * 3)
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # a conv's layout
    got = mean(x, prepare_mean((2, 3), True, engine=INDUCTOR))
    total = np.zeros((2, 3), F)
    for k in range(42):  # channels_last, one thread: sequential from 0.0, row-major
        total = F(total + x.reshape(2, 3, 42)[:, :, k])
    assert got.dtype == F and np.array_equal(got, F(total / F(42)).reshape(2, 3, 1, 1))
    got = avg_pool(x, prepare_pool("avg", 2, 3, 2, 1, engine=INDUCTOR))
    assert np.array_equal(got, avg_pool_float(x, (3, 3), (2, 2), (1, 1), False, True))
    got = max_pool(x, prepare_pool("max", 2, 3, 2, 0, ceil_mode=True, engine=INDUCTOR))
    assert got.shape == (2, 3, 3, 3)  # ceil_mode: a last window starting inside the input
    assert got[0, 0, 2, 2] == x[0, 0, 4:, 4:].max()
    y = F(RNG.normal(size=(2, 3, 1, 6)))
    for op, relu in (("add", False), ("mul", True)):
        expected = F(x + y) if op == "add" else np.maximum(F(x * y), F(0))
        assert np.array_equal(binary_float(x, y, FloatBinaryParams(op, relu)), expected)


def test_float_inputs_are_refused_where_the_kernel_takes_quantized_tensors_only():
    x = F(RNG.normal(size=(1, 2, 4, 4)))
    with pytest.raises(UnsupportedError, match="float32 tensor.*quantized tensors only"):
        avg_pool(x, prepare_pool("avg", 2, 2, engine=get_engine("fbgemm")))
    quantized = QuantizedArray(codes((1, 2, 8, 8)), qp(0.1, 3))
    with pytest.raises(UnsupportedError, match="ceil_mode.*another shape"):
        max_pool(quantized, prepare_pool("max", 2, 3, 2, 0, ceil_mode=True, engine=INDUCTOR))


def test_inductor_mean_order_follows_layout_size_and_threads():
    """engines/pt2e_decomposed.py ``inductor_spatial_sum``, written again: values of mixed
    magnitude make every order give other float32 sums."""
    from qexact.engines.pt2e_decomposed import inductor_spatial_sum

    def seq(v, start, end, first=None):
        total = F(0) if first is None else first
        for p in range(start, end):
            total = F(total + v[p])
        return total

    x = F(RNG.normal(size=(2, 8, 8, 8)) * np.exp2(RNG.integers(-12, 12, size=(2, 8, 8, 8))))
    v = x.reshape(2, 8, 64)
    # channels_last, 2 threads: 2 * 8 * 64 // 2 = 512 and C // 16 = 0: split 32 + 32
    split = inductor_spatial_sum(x, True, 2)
    one = inductor_spatial_sum(x, True, 1)
    for n, c in np.ndindex(2, 8):
        assert split[n, c] == F(F(F(0) + seq(v[n, c], 0, 32)) + seq(v[n, c], 32, 64))
        assert one[n, c] == F(F(0) + seq(v[n, c], 0, 64))
    assert not np.array_equal(split, one)
    # NCHW: 16 lanes, then the tree (l, l ^ 8), (^ 4), (^ 2), (^ 1)
    nchw = inductor_spatial_sum(x, False, 2)
    for n, c in np.ndindex(2, 8):
        lanes = [seq(v[n, c, lane::16], 0, 4) for lane in range(16)]
        for step in (8, 4, 2, 1):
            lanes = [F(lanes[lane] + lanes[lane ^ step]) for lane in range(16)]
        assert nchw[n, c] == F(F(0) + lanes[0])
    # fewer than 8 positions: unrolled from the first value
    small = F(-np.zeros((1, 2, 2, 3)))
    assert np.signbit(inductor_spatial_sum(small, True, 1)).all()  # -0.0, not 0.0 + -0.0


def test_a_linear_inductor_decomposes_into_a_float_reduction_is_refused():
    from qexact.ops.linear import linear, prepare_linear

    weight = RNG.integers(-127, 128, (5, 8)).astype(np.int8)
    w = QParams.per_channel(F(np.full(5, 0.01)), np.zeros(5), 0, QINT8)
    params = prepare_linear(weight, w, None, qp(0.1, 3), None, engine=INDUCTOR)
    assert linear(QuantizedArray(codes((2, 8)), qp(0.1, 3)), params).shape == (2, 5)
    with pytest.raises(UnsupportedError, match="one row with at most 16"):
        linear(QuantizedArray(codes((1, 8)), qp(0.1, 3)), params)
