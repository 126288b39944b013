"""The numba convolution helpers (``qexact.kernels._numba_conv``) equal the NumPy definition:
``im2col_u8`` equals ``conv_columns`` and ``depthwise_accumulator`` / ``accumulator_for`` equal
``conv_accumulator``, on hypothesis-drawn geometries (fixed seeds) and adversarial corners
(int16 pair saturation, zero points 0 / 255, per-channel weight zero points, 1x1 inputs with
big padding), for inputs in NCHW and channels-last memory."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.assertions import assert_bitexact  # noqa: E402

from qexact import QINT8, QUINT8, QParams  # noqa: E402
from qexact.errors import QexactError, ShapeError  # noqa: E402
from qexact.kernels import fast_available  # noqa: E402
from qexact.ops._window import output_size  # noqa: E402
from qexact.ops.conv import conv_accumulator, conv_columns, prepare_conv  # noqa: E402

if not fast_available():
    pytest.skip("the fast backend cannot run on this machine", allow_module_level=True)

from qexact.kernels._numba_conv import (accumulator_for, depthwise_accumulator,  # noqa: E402
                                         depthwise_weights, im2col_u8)

ENGINE_ISAS = [(engine, isa) for engine in ("fbgemm", "x86", "qnnpack", "onednn")
               for isa in ("avx512_vnni", "avx2")]
ASYMMETRIC_WEIGHTS = {"fbgemm", "x86", "qnnpack"}  # onednn's prepack refuses z_w != 0
COMPARED = {"elements": 0, "saturated": 0}


def layouts(x: np.ndarray):
    """The same values as C-contiguous NCHW, as a channels-last view, and as a strided slice."""
    channels_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    doubled = np.repeat(x, 2, axis=-1)[..., ::2]
    return {"nchw": np.ascontiguousarray(x), "channels_last": channels_last, "strided": doubled}


def make_params(weight, engine, isa, z_x, z_w, stride, padding, dilation, groups):
    out_channels = weight.shape[0]
    if np.ndim(z_w):
        w_qp = QParams.per_channel(np.full(out_channels, 0.01), np.asarray(z_w), 0, QINT8)
    else:
        w_qp = QParams.per_tensor(0.01, int(z_w), QINT8)
    return prepare_conv(weight, w_qp, None, QParams.per_tensor(0.1, int(z_x), QUINT8),
                        QParams.per_tensor(1.0, 0, QUINT8), stride=stride, padding=padding,
                        dilation=dilation, groups=groups, engine=engine, isa=isa)


def check_depthwise(x, params, context):
    """accumulator_for and a direct depthwise_accumulator call equal conv_accumulator."""
    expected = conv_accumulator(x, params).astype(np.int64)
    packed = depthwise_weights(params.weight, params.weight_qparams.zero_point)
    for name, values in layouts(x).items():
        actual = accumulator_for(values, params)
        assert_bitexact(actual.astype(np.int64), expected, f"{context} {name}")
        direct = depthwise_accumulator(
            values, params.weight, int(params.input_qparams.zero_point),
            params.weight_qparams.zero_point, params.stride, params.padding, params.dilation,
            saturate_pairs=params.pair_saturation and not params.pairs_per_tap,
            pad_raw_zero=params.padded_tap == "zero")
        assert_bitexact(direct.astype(np.int64), expected, f"{context} {name} direct")
        again = depthwise_accumulator(values, packed, int(params.input_qparams.zero_point), None,
                                      params.stride, params.padding, params.dilation,
                                      saturate_pairs=params.pair_saturation
                                      and not params.pairs_per_tap)
        assert_bitexact(again.astype(np.int64), expected, f"{context} {name} packed")
        COMPARED["elements"] += 3 * expected.size
    return expected


def check_im2col(x, params, pad_value, context):
    expected = conv_columns(x, params, pad_value)
    depth = expected.shape[2]
    row_stride = -(-depth // 4) * 4
    for name, values in layouts(x).items():
        actual = im2col_u8(values, params.kernel_size, params.stride, params.padding,
                           params.dilation, params.groups, pad_value, row_stride=row_stride)
        assert actual.shape == expected.shape[:2] + (row_stride,)
        assert_bitexact(actual[:, :, :depth], expected, f"{context} {name}")
        assert not actual[:, :, depth:].any(), f"{context} {name}: tail not zero"
        COMPARED["elements"] += expected.size


@st.composite
def geometries(draw, depthwise: bool):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    engine, isa = draw(st.sampled_from(ENGINE_ISAS))
    one_d = draw(st.integers(0, 5)) == 0
    kernel = (1 if one_d else draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (1 if one_d else draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (0 if one_d else draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (1 if one_d else draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    spatial = (1 if one_d else draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    if depthwise:
        # FBGEMM's depthwise fast path (3/5 square, "same" padding, G % 8 == 0) half the time
        if draw(st.booleans()) and not one_d:
            size = draw(st.sampled_from([3, 5]))
            kernel, padding, dilation = (size, size), ((size - 1) // 2,) * 2, (1, 1)
            stride = (draw(st.sampled_from([1, 2])),) * 2
            channels = draw(st.sampled_from([8, 16, 24, 32, 40]))
        else:
            channels = draw(st.integers(1, 40))
        groups = channels
        out_channels = channels * draw(st.integers(1, 2))
    else:
        groups = draw(st.sampled_from([1, 1, 2, 3, 4]))
        channels = groups * draw(st.integers(1, max(1, 40 // groups)))
        out_channels = groups * draw(st.integers(1, 3))
    for size, k, s, p, d in zip(spatial, kernel, stride, padding, dilation):
        if output_size(size, k, s, p, d) < 1:
            spatial = tuple(max(a, (kk - 1) * dd + 1 - 2 * pp)
                            for a, kk, pp, dd in zip(spatial, kernel, padding, dilation))
    batch = draw(st.integers(1, 3))
    data = draw(st.sampled_from(["uniform", "uniform", "extreme", "saturating"]))
    x_shape = (batch, channels) + spatial
    w_shape = (out_channels, channels // groups) + kernel
    if data == "uniform":
        x = rng.integers(0, 256, x_shape)
        w = rng.integers(-128, 128, w_shape)
    elif data == "extreme":
        x = rng.choice([0, 1, 254, 255], x_shape)
        w = rng.choice([-128, -127, -1, 0, 1, 126, 127], w_shape)
    else:  # int16 pair sums of raw values leave the int16 range
        x = rng.integers(200, 256, x_shape)
        sign = rng.choice([-1, 1], (out_channels,) + (1,) * (len(kernel) + 1))
        w = np.clip(sign * rng.integers(100, 129, w_shape), -128, 127)
    z_x = draw(st.sampled_from([0, 255]) | st.integers(0, 255))
    z_w = 0
    if engine in ASYMMETRIC_WEIGHTS and draw(st.booleans()):
        z_w = (rng.integers(-128, 128, out_channels) if draw(st.booleans())
               else int(rng.integers(-128, 128)))
    x, w = x.astype(np.uint8), w.astype(np.int8)
    if one_d:
        x, w = x[:, :, 0], w[:, :, 0]
        stride, padding, dilation = stride[1:], padding[1:], dilation[1:]
    try:
        params = make_params(w, engine, isa, z_x, z_w, stride, padding, dilation, groups)
    except QexactError:  # a geometry PyTorch refuses or leaves undefined on this engine
        params = make_params(w, "qnnpack", isa, z_x, z_w, stride, padding, dilation, groups)
    return x, params, int(rng.integers(0, 256))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(geometries(depthwise=True))
def test_depthwise_equals_conv_accumulator(case):
    x, params, _ = case
    check_depthwise(x, params, f"{params.engine}/{params.isa} {params.kernel} x{x.shape} "
                               f"w{params.weight.shape} s{params.stride} p{params.padding} "
                               f"d{params.dilation}")


@settings(max_examples=120, derandomize=True, deadline=None)
@given(geometries(depthwise=False))
def test_im2col_equals_conv_columns(case):
    x, params, pad_value = case
    for pad in (pad_value, int(params.input_qparams.zero_point)):
        check_im2col(x, params, pad, f"g{params.groups} x{x.shape} w{params.weight.shape} "
                                     f"s{params.stride} p{params.padding} d{params.dilation}")


def _saturating(channels, multiplier, kernel, rng, sign_pattern="alternate"):
    """All-255 inputs and +-127/-128 weights: every raw pair sum saturates int16."""
    x = np.full((2, channels, 6, 7), 255, np.uint8)
    w = np.where(rng.random((channels * multiplier, 1, kernel, kernel)) < 0.5, -128, 127)
    if sign_pattern == "alternate":
        w = np.where(np.arange(channels * multiplier)[:, None, None, None] % 2, -128, 127)
        w = np.broadcast_to(w, (channels * multiplier, 1, kernel, kernel))
    return x, np.ascontiguousarray(w).astype(np.int8)


@pytest.mark.parametrize("engine,isa", ENGINE_ISAS)
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("z_x", [0, 255])
def test_depthwise_saturation_extremes(engine, isa, multiplier, kernel, z_x):
    rng = np.random.default_rng(kernel * 10 + multiplier)
    for pattern in ("alternate", "random"):
        x, w = _saturating(16, multiplier, kernel, rng, pattern)
        z_w = 0
        if engine in ASYMMETRIC_WEIGHTS:
            z_w = rng.integers(-128, 128, 16 * multiplier)
        for padding in ((kernel - 1) // 2, 0):
            try:
                params = make_params(w, engine, isa, z_x, z_w, 1, padding, 1, 16)
            except QexactError:
                continue
            expected = check_depthwise(x, params, f"{engine}/{isa} {params.kernel} p{padding}")
            if params.pair_saturation:  # the saturation is really exercised
                exact = depthwise_accumulator(x, w, z_x, z_w, 1, padding, 1)
                COMPARED["saturated"] += int((exact != expected).sum())
                assert (exact != expected).any()


@pytest.mark.parametrize("engine,isa", ENGINE_ISAS)
def test_depthwise_tiny_inputs_big_padding(engine, isa):
    """1x1 and 1xW inputs with padding 2: most taps in the padding (raw z_x in pairs)."""
    rng = np.random.default_rng(7)
    for spatial, kernel, padding, stride in (((1, 1), 5, 2, 1), ((1, 1), 3, 1, 2),
                                              ((1, 4), 5, 2, 2), ((2, 1), 3, 2, 1)):
        x = np.full((3, 8) + spatial, 250, np.uint8)
        x[1] = rng.integers(0, 256, (8,) + spatial)
        w = np.where(rng.random((8, 1, kernel, kernel)) < 0.5, -128, 127).astype(np.int8)
        for z_x in (0, 3, 255):
            try:
                params = make_params(w, engine, isa, z_x, 0, stride, padding, 1, 8)
            except QexactError:
                continue
            check_depthwise(x, params, f"{engine}/{isa} {spatial} k{kernel} p{padding}")


def test_pad_raw_zero_pairs():
    """saturate_pairs with pad_raw_zero: padded taps are raw 0 in the pair sums, still add 0
    to the exact part (the NumPy model of a PAD_ZERO kernel that saturated pairs)."""
    from qexact.accumulate import pair_positions, pair_saturation_correction
    from qexact.accumulate import saturating_weight_pairs, weight_pairs_of
    from qexact.ops.conv import grouped_rows

    rng = np.random.default_rng(3)
    x = rng.integers(180, 256, (2, 8, 5, 5)).astype(np.uint8)
    w = np.where(rng.random((8, 1, 3, 3)) < 0.5, -128, 127).astype(np.int8)
    params = make_params(w, "qnnpack", "avx2", 20, 0, 1, 1, 1, 8)
    exact = conv_accumulator(x, params).astype(np.int64)
    raw = conv_columns(x, params, 0)
    rows = grouped_rows(w, 8)
    positions = pair_positions(9)
    expected = exact.copy()
    for group in range(8):
        pairs = weight_pairs_of(rows[group], positions)
        expected[:, group:group + 1] += pair_saturation_correction(
            raw[group], pairs, saturating_weight_pairs(pairs), positions)
    actual = depthwise_accumulator(x, w, 20, 0, 1, 1, 1, saturate_pairs=True, pad_raw_zero=True)
    assert_bitexact(actual.astype(np.int64), expected, "pad raw zero")
    assert (expected != exact).any()


def test_im2col_extremes_and_buffers():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 6, 1, 1)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, 3, 5, 5)).astype(np.int8)
    params = make_params(w, "fbgemm", "avx2", 255, 0, 1, 2, 1, 2)
    check_im2col(x, params, 255, "1x1 input, padding 2")
    expected = conv_columns(x, params, 0)
    out = np.full((2, expected.shape[1], 80), 9, np.uint8)
    assert im2col_u8(x, (5, 5), 1, 2, 1, 2, 0, row_stride=80, out=out) is out
    assert_bitexact(out[:, :, :75], expected, "out buffer")
    assert not out[:, :, 75:].any()
    with pytest.raises(ShapeError):
        im2col_u8(x, (5, 5), 1, 2, 1, 2, 0, row_stride=74)
    with pytest.raises(ShapeError):
        im2col_u8(x, (5, 5), 1, 0, 1, 2, 0)  # window does not fit
    assert im2col_u8(np.zeros((1, 2, 3, 3, 3), np.uint8), (1, 1, 1), 1, 0, 1, 1, 0) is None
    assert depthwise_accumulator(np.zeros((1, 2, 3, 3, 3), np.uint8),
                                 np.zeros((2, 1, 1, 1, 1), np.int8), 0, 0, 1, 0, 1) is None


def test_not_depthwise_falls_back():
    w = np.ones((4, 2, 3, 3), np.int8)
    params = make_params(w, "fbgemm", "avx2", 0, 0, 1, 1, 1, 2)
    assert accumulator_for(np.zeros((1, 4, 5, 5), np.uint8), params) is None


def test_compared_counts():
    """Not a check: the number of elements compared above (printed with -s)."""
    print(f"\nnumba conv: {COMPARED['elements']} elements compared, "
          f"{COMPARED['saturated']} with saturated pairs in the adversarial cases")
