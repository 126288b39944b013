"""quantized Conv1d/2d/3d and ConvReLU: properties, errors, and bit-exact differential tests vs
PyTorch on every engine (style.md 8.4; no goldens directory exists yet).

Kernels on this machine (AVX2, no VNNI): FBGEMM depthwise / groupwise / pointwise / im2col all sum
raw u8 x s8 pairs of a group's im2col row (taps, channel fastest) in int16 with padded taps
holding z_x; x86 runs FBGEMM; oneDNN's ``jit_uni_int8:avx2`` pairs the channels of one tap with
padded taps skipped (its depthwise and ``ref:any`` kernels are exact); QNNPACK is exact.
Activations span 0..127 (reduce_range) and 0..255, and adversarial corners.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact
from support.torch_worker import torch_conv_in_child

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError, ShapeError
from qexact.engines import engine_names
from qexact.errors import UnsupportedError
from qexact.ops.conv import conv, conv_accumulator, prepare_conv
from qexact.ops._conv_explain import explain_conv

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
CASES_2D = 500
CASES_1D_3D = 100


def qexact_conv(x, x_qp, w, w_qp, bias, out_qp, stride, padding, dilation, groups, relu, engine):
    params = prepare_conv(w, w_qp, bias, x_qp, out_qp, stride=stride, padding=padding,
                          dilation=dilation, groups=groups, relu=relu, engine=engine)
    return conv(QuantizedArray(x, x_qp), params).values, params


def check_vs_torch(engine, case, context=""):
    """qexact first (it refuses what PyTorch leaves undefined), then PyTorch in a child process
    (``support.torch_worker``: a crash fails this case, not the run)."""
    import torch

    actual, params = qexact_conv(**case, engine=engine)
    expected = torch_conv_in_child(torch.backends.quantized.engine, **case)
    assert_bitexact(actual, expected, f"{engine} (torch {torch.__version__}, backend "
                    f"{torch.backends.quantized.engine}, isa {qexact.detect_isa()}, kernel "
                    f"{params.kernel}) {context}")
    return expected, params



def allows_weight_zero_point(engine: str) -> bool:
    return engine != "onednn"  # PackedConvWeightsOnednn::prepack refuses z_w != 0


@st.composite
def conv_cases(draw, engine, dims):
    rng = np.random.default_rng(draw(st.integers(0, 2**63 - 1)))
    kind = draw(st.sampled_from(["general", "depthwise", "grouped", "pointwise"]))
    kernel = draw(st.sampled_from([1, 2, 3, 5] if dims < 3 else [1, 2, 3]))
    stride = draw(st.sampled_from([1, 1, 2, 3]))
    dilation = draw(st.sampled_from([1, 1, 2]))
    padding = draw(st.integers(0, 2))
    if kind == "depthwise":  # FBGEMM's fast path: G % 8 == 0, 3x3 / 5x5, "same" padding
        kernel = draw(st.sampled_from([3, 5] if dims == 2 else [3]))
        groups = draw(st.sampled_from([8, 16, 24, 3, 5]))
        channels, out_channels = groups, groups * draw(st.sampled_from([1, 1, 2]))
        padding, dilation, stride = (kernel - 1) // 2, 1, draw(st.sampled_from([1, 2]))
    elif kind == "grouped":  # FBGEMM groupwise (C/G == K/G in 2..16, 3x3, pad 1) and others
        groups = draw(st.sampled_from([2, 3, 4, 8]))
        per_group = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
        channels = groups * per_group
        out_channels = groups * draw(st.sampled_from([per_group, per_group, 1, 2, 5]))
        if draw(st.booleans()):
            kernel, padding, dilation = 3, 1, 1
    elif kind == "pointwise":
        groups, channels, out_channels = 1, draw(st.integers(1, 40)), draw(st.integers(1, 40))
        kernel, padding, stride, dilation = 1, 0, 1, 1
    else:
        groups, channels, out_channels = 1, draw(st.integers(1, 20)), draw(st.integers(1, 24))
    span = (kernel - 1) * dilation + 1
    spatial = [draw(st.integers(max(1, span - 2 * padding), span + (7 if dims < 3 else 3)))
               for _ in range(dims)]
    batch = draw(st.integers(1, 2))
    full_range = draw(st.booleans())
    data = draw(st.sampled_from(["uniform", "uniform", "extreme", "high"]))
    hi = 256 if full_range else 128
    x_shape = [batch, channels] + spatial
    w_shape = [out_channels, channels // groups] + [kernel] * dims
    if data == "uniform":
        x = rng.integers(0, hi, size=x_shape)
        w = rng.integers(-128, 128, size=w_shape)
    elif data == "extreme":  # corners: int16 pair sums saturate
        x = rng.choice([0, 1, hi - 2, hi - 1], size=x_shape)
        w = rng.choice([-128, -127, -1, 0, 1, 126, 127], size=w_shape)
    else:  # high activations, same-sign weights per output channel
        x = rng.integers(hi * 3 // 4, hi, size=x_shape)
        sign = rng.choice([-1, 1], size=[out_channels] + [1] * (dims + 1))
        w = np.clip(sign * rng.integers(64, 129, size=w_shape), -128, 127)
    x, w = x.astype(np.uint8), w.astype(np.int8)
    s_x = 10.0 ** draw(st.floats(-3.0, 0.0))
    z_x = draw(st.sampled_from([0, 128, 255]) | st.integers(0, 255))
    nonzero_zw = allows_weight_zero_point(engine) and draw(st.integers(0, 3)) == 0
    if draw(st.booleans()):
        s_w = 10.0 ** rng.uniform(-3, -1, size=out_channels)
        z_w = (rng.integers(-128, 128, size=out_channels) if nonzero_zw
               else np.zeros(out_channels, np.int64))
        w_qp = QParams.per_channel(s_w, z_w, 0, QINT8)
    else:
        w_qp = QParams.per_tensor(10.0 ** draw(st.floats(-3.0, -1.0)),
                                  draw(st.integers(-128, 127)) if nonzero_zw else 0, QINT8)
    depth = channels // groups * kernel ** dims
    s_out = float(np.median(w_qp.scale) * s_x * 40.0 * np.sqrt(depth) * rng.uniform(0.5, 2.0))
    bias_kind = draw(st.sampled_from(["none", "relative", "relative", "half_grid"]))
    grid = s_x * np.asarray(w_qp.scale, np.float64) * np.ones(out_channels)
    if bias_kind == "none":
        bias = None
    elif bias_kind == "relative":
        bias = (rng.standard_normal(out_channels) * grid * 10.0 ** draw(st.floats(-3.0, 5.0)))
    else:
        bias = (rng.integers(-40000, 40000, size=out_channels) + 0.5) * grid
    return dict(x=x, x_qp=QParams.per_tensor(s_x, z_x, QUINT8), w=w, w_qp=w_qp,
                bias=None if bias is None else bias.astype(np.float32),
                out_qp=QParams.per_tensor(s_out, draw(st.integers(0, 255)), QUINT8),
                stride=stride, padding=padding, dilation=dilation, groups=groups,
                relu=draw(st.booleans())), f"{kind}/{data}/{'full' if full_range else 'rr'}"


def run_random(engine, report, dims, examples):
    stats = report[f"conv{dims}d {engine}"]

    @settings(max_examples=examples, suppress_health_check=SUPPRESS)
    @given(drawn=conv_cases(engine, dims))
    def check(drawn):
        case, label = drawn
        try:
            expected, params = check_vs_torch(engine, case, label)
        except UnsupportedError as error:  # PyTorch leaves it undefined (the message says why)
            assert "undefined" in str(error), error  # fbgemm groupwise, oneDNN brgemm on VNNI
            stats["refused (undefined in PyTorch)"] += 1
            return
        stats["cases"] += 1
        stats["elements"] += expected.size
        stats[f"kernel {params.kernel}"] += 1
        stats["saturating_cases"] += int(params.pair_saturation)

    before = stats["cases"] + stats["refused (undefined in PyTorch)"]
    check()
    return stats["cases"] + stats["refused (undefined in PyTorch)"] - before


# ---------------------------------------------------------------------------------------------
# Properties and errors
# ---------------------------------------------------------------------------------------------

def _reference_accumulator(x, w, z_x, z_w, stride, padding, dilation, groups):
    """Direct int64 loop over output positions (2-D), padded taps reading z_x."""
    batch, channels, height, width = x.shape
    out_channels, per_group, kh, kw = w.shape
    padded = np.full((batch, channels, height + 2 * padding, width + 2 * padding), z_x, np.int64)
    padded[:, :, padding:padding + height, padding:padding + width] = x
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    acc = np.zeros((batch, out_channels, out_h, out_w), np.int64)
    for oc in range(out_channels):
        group = oc // (out_channels // groups)
        for oy in range(out_h):
            for ox in range(out_w):
                field = padded[:, group * per_group:(group + 1) * per_group,
                               oy * stride:oy * stride + dilation * (kh - 1) + 1:dilation,
                               ox * stride:ox * stride + dilation * (kw - 1) + 1:dilation]
                acc[:, oc, oy, ox] = ((field - z_x) * (w[oc].astype(np.int64) - z_w)).sum(
                    axis=(1, 2, 3))
    return acc


@settings(max_examples=60, suppress_health_check=SUPPRESS)
@given(seed=st.integers(0, 2**32 - 1), groups=st.sampled_from([1, 2, 3]),
       stride=st.integers(1, 3), padding=st.integers(0, 2), dilation=st.integers(1, 2))
def test_exact_accumulator_matches_direct_loop(seed, groups, stride, padding, dilation):
    """QNNPACK's accumulator (exact) is the definition, computed by an int64 loop."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(2, 2 * groups, 7, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(3 * groups, 2, 3, 2)).astype(np.int8)
    z_x, z_w = int(rng.integers(0, 256)), int(rng.integers(-128, 128))
    params = prepare_conv(w, QParams.per_tensor(0.01, z_w, QINT8), None,
                          QParams.per_tensor(0.1, z_x, QUINT8), QParams.per_tensor(1.0, 0, QUINT8),
                          stride=stride, padding=padding, dilation=dilation, groups=groups,
                          engine="qnnpack")
    acc = conv_accumulator(x, params).astype(np.int64)
    expected = _reference_accumulator(x, w, z_x, z_w, stride, padding, dilation, groups)
    assert_bitexact(np.moveaxis(acc.reshape(expected.shape[0], expected.shape[2],
                                            expected.shape[3], -1), -1, 1), expected)


def test_relu_output_at_least_zero_point():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(1, 4, 6, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(5, 4, 3, 3)).astype(np.int8)
    for engine in engine_names():
        params = prepare_conv(w, QParams.per_tensor(0.01, 0, QINT8), None,
                              QParams.per_tensor(0.05, 7, QUINT8),
                              QParams.per_tensor(0.5, 100, QUINT8), relu=True, engine=engine)
        out = conv(QuantizedArray(x, params.input_qparams), params).values
        assert out.min() >= 100 and out.dtype == np.uint8


def _qp(zero_point=0):
    return QParams.per_tensor(0.1, zero_point, QUINT8)


def test_errors():
    w = np.zeros((4, 2, 3, 3), np.int8)
    wqp = QParams.per_tensor(0.01, 0, QINT8)
    with pytest.raises(ShapeError, match="int8"):
        prepare_conv(w.astype(np.int16), wqp, None, _qp(), _qp(), engine="fbgemm")
    with pytest.raises(ShapeError, match="multiple of groups"):
        prepare_conv(w, wqp, None, _qp(), _qp(), groups=3, engine="fbgemm")
    with pytest.raises(QuantParamError, match="symmetric"):
        prepare_conv(w, QParams.per_tensor(0.01, 3, QINT8), None, _qp(), _qp(), engine="onednn")
    with pytest.raises(QuantParamError, match="axis 0"):
        prepare_conv(w, QParams.per_channel(np.ones(3), np.zeros(3), 0, QINT8), None, _qp(), _qp(),
                     engine="fbgemm")
    with pytest.raises(QuantParamError, match="qint8"):
        prepare_conv(w, QParams.per_tensor(0.1, 0, QUINT8), None, _qp(), _qp(), engine="fbgemm")
    with pytest.raises(UnsupportedError, match="padding_mode"):
        prepare_conv(w, wqp, None, _qp(), _qp(), padding_mode="mirror", engine="fbgemm")
    with pytest.raises(ShapeError, match="bias"):
        prepare_conv(w, wqp, np.zeros(3, np.float32), _qp(), _qp(), engine="fbgemm")
    with pytest.raises(ShapeError, match="stride"):
        prepare_conv(w, wqp, None, _qp(), _qp(), stride=(1, 2, 3), engine="fbgemm")
    params = prepare_conv(w, wqp, None, _qp(), _qp(), groups=2, engine="fbgemm")
    with pytest.raises(ShapeError, match="expects input"):
        conv(QuantizedArray(np.zeros((1, 3, 5, 5), np.uint8), _qp()), params)
    with pytest.raises(ShapeError, match="too small"):
        conv(QuantizedArray(np.zeros((1, 4, 2, 2), np.uint8), _qp()), params)
    with pytest.raises(QuantParamError, match="prepared for input"):
        conv(QuantizedArray(np.zeros((1, 4, 5, 5), np.uint8), _qp(5)), params)


def test_kernel_choice_on_avx2():
    """The kernel each engine names (FBGEMM ConvFastPath; oneDNN jit / ref; QNNPACK)."""
    def kernel(engine, c, oc, g, k, padding=1, isa="avx2"):
        w = np.zeros((oc, c // g, k, k), np.int8)
        return prepare_conv(w, QParams.per_tensor(0.01, 0, QINT8), None, _qp(), _qp(),
                            padding=padding, groups=g, engine=engine, isa=isa).kernel

    assert kernel("fbgemm", 16, 16, 16, 3) == "fbgemm depthwise"
    assert kernel("fbgemm", 32, 32, 8, 3) == "fbgemm groupwise"
    assert kernel("fbgemm", 8, 8, 1, 3) == "fbgemm groupwise"  # one group of 8 channels
    assert kernel("fbgemm", 8, 8, 1, 1, padding=0) == "fbgemm pointwise"
    assert kernel("fbgemm", 8, 8, 1, 3, padding=0) == "fbgemm im2col"
    assert kernel("x86", 16, 16, 16, 3) == "fbgemm depthwise"
    assert kernel("x86", 16, 16, 1, 3, isa="avx512_vnni") == "onednn conv"
    assert kernel("onednn", 16, 16, 16, 3) == "onednn jit_uni_int8:avx2 depthwise"
    assert kernel("onednn", 6, 6, 3, 3) == "onednn ref:any"
    assert kernel("onednn", 16, 16, 4, 3) == "onednn jit_uni_int8:avx2"
    assert kernel("qnnpack", 16, 16, 16, 3) == "qnnpack dwconv"


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("per_group,groups", [(2, 5), (2, 6), (4, 3), (4, 5)])
def test_groupwise_with_a_partial_block_of_groups_is_refused(dims, per_group, groups):
    """FBGEMM's groupwise kernel takes groups in blocks (4 for 2 channels per group, 2 for 4 on
    AVX2); with a partial last block PyTorch's output is garbage and the process may abort
    (measured: heap corruption), so fbgemm and x86 refuse; qnnpack and onednn compute it."""
    channels = per_group * groups
    w = np.zeros((channels, per_group) + (3,) * dims, np.int8)
    for engine in ("fbgemm", "x86"):
        with pytest.raises(UnsupportedError, match=rf"groups \({groups}\) is not a multiple"):
            prepare_conv(w, QParams.per_tensor(0.01, 0, QINT8), None, _qp(), _qp(), padding=1,
                         groups=groups, engine=engine, isa="avx2")
    for engine in ("qnnpack", "onednn"):
        if engine == "qnnpack" and dims == 3:
            continue
        prepare_conv(w, QParams.per_tensor(0.01, 0, QINT8), None, _qp(), _qp(), padding=1,
                     groups=groups, engine=engine)
    # whole blocks, other paddings and other kernels are fine
    prepare_conv(np.zeros((per_group * 4, per_group) + (3,) * dims, np.int8),
                 QParams.per_tensor(0.01, 0, QINT8), None, _qp(), _qp(), padding=1, groups=4,
                 engine="fbgemm", isa="avx2")
    prepare_conv(w, QParams.per_tensor(0.01, 0, QINT8), None, _qp(), _qp(), padding=0,
                 groups=groups, engine="fbgemm", isa="avx2")


def _depthwise_3d(kernel, stride, zero_point, engine="fbgemm", isa="avx2", channels=16):
    w = np.ones((channels, 1) + tuple(kernel), np.int8)
    return prepare_conv(w, QParams.per_tensor(0.0025, zero_point, QINT8), None,
                        QParams.per_tensor(0.06, 140, QUINT8), QParams.per_tensor(0.36, 11, QUINT8),
                        stride=stride, padding=tuple((k - 1) // 2 for k in kernel),
                        groups=channels, engine=engine, isa=isa)


@pytest.mark.parametrize("isa", ["avx2", "avx512_vnni"])
def test_fbgemm_3d_depthwise_on_small_inputs_is_refused(isa):
    """FBGEMM's 3-D depthwise kernel corrupts PyTorch's heap when an input size is at most
    (padding - 1) x stride (measured: crashes, 'double free or corruption'): refused, as
    undefined, at run time; larger inputs and K = 3 run."""
    for kernel, stride, small, fine in [((5, 5, 5), 1, 1, 2), ((5, 5, 5), 2, 2, 3),
                                        ((7, 7, 7), 2, 4, 5), ((5, 3, 3), 1, 1, 2)]:
        params = _depthwise_3d(kernel, stride, 0, isa=isa)
        assert params.kernel == "fbgemm depthwise"
        for dim in range(3):
            if kernel[dim] < 5:
                continue
            shape = [8, 8, 8]
            shape[dim] = small
            x = QuantizedArray(np.full((1, 16, *shape), 140, np.uint8), params.input_qparams)
            with pytest.raises(UnsupportedError, match="undefined"):
                conv(x, params)
            shape[dim] = fine
            conv(QuantizedArray(np.full((1, 16, *shape), 140, np.uint8), params.input_qparams),
                 params)
    conv(QuantizedArray(np.full((1, 16, 1, 1, 1), 140, np.uint8), params.input_qparams),
         _depthwise_3d((3, 3, 3), 2, 0, isa=isa))


def test_fbgemm_3d_depthwise_with_large_window_and_asymmetric_weight_is_refused():
    """A known divergence (below): qexact refuses rather than give other numbers; symmetric
    weights and windows of at most 128 taps are computed."""
    for engine in ("fbgemm", "x86"):
        with pytest.raises(UnsupportedError, match="does not reproduce"):
            _depthwise_3d((7, 7, 7), 1, 3, engine=engine)
        with pytest.raises(UnsupportedError, match="does not reproduce"):
            _depthwise_3d((3, 7, 7), 1, -2, engine=engine)
    assert _depthwise_3d((7, 7, 7), 1, 0).kernel == "fbgemm depthwise"
    assert _depthwise_3d((5, 5, 5), 1, 3).kernel == "fbgemm depthwise"  # 125 taps
    assert _depthwise_3d((7, 3, 3), 1, 3).kernel == "fbgemm depthwise"


@pytest.mark.torch
@pytest.mark.xfail(strict=True, raises=(UnsupportedError, AssertionError), reason=(
    "Known divergence: FBGEMM's 3-D depthwise kernel (src/FbgemmI8Depthwise3DAvx2.cc) with a "
    "weight zero point != 0 and a window of more than 128 taps differs from the convolution "
    "on most elements once a window's activations sum past 32767, which points at a 16-bit "
    "row sum for the zero-point correction; qexact does not reproduce it and refuses the layer. "
    "Reproducer: this test (7x7x7, C=16, z_w=3, input 9x9x9 uniform 0..255): 9811 of 11664 "
    "elements differ when computed as a convolution."))
def test_fbgemm_3d_depthwise_large_window_asymmetric_weight_vs_torch():
    import torch

    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (16, 1, 7, 7, 7)).astype(np.int8)
    x = rng.integers(0, 256, (1, 16, 9, 9, 9)).astype(np.uint8)
    case = dict(x=x, x_qp=QParams.per_tensor(0.06, 140, QUINT8), w=w,
                w_qp=QParams.per_tensor(0.0025, 3, QINT8), bias=None,
                out_qp=QParams.per_tensor(0.36, 11, QUINT8), stride=1, padding=3, dilation=1,
                groups=16, relu=False)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        check_vs_torch("fbgemm", case, "3-D depthwise 7x7x7, z_w = 3")
    finally:
        torch.backends.quantized.engine = previous


# ---------------------------------------------------------------------------------------------
# Differential against PyTorch
# ---------------------------------------------------------------------------------------------

@pytest.mark.torch
@pytest.mark.parametrize("per_group,groups", [(2, 4), (2, 8), (4, 2), (4, 6), (8, 1), (8, 3),
                                              (16, 1), (16, 2)])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 1, 1), (2, 1, 1), (1, 2, 2), (3, 2, 2)])
def test_groupwise_conv_vs_torch(engine, per_group, groups, stride):
    """FBGEMM's groupwise path (3x3 or 3x3x3, padding 1, H/W strides both 1 or both 2, any
    temporal stride) with whole blocks of groups, on random and on saturating data, against
    PyTorch on every engine."""
    dims = len(stride)
    if engine == "qnnpack" and dims == 3:
        pytest.skip("qnnpack has no Conv3d")
    rng = np.random.default_rng(per_group * 100 + groups * 10 + sum(stride) + dims)
    channels = per_group * groups
    spatial = (7, 9) if dims == 2 else (4, 5, 6)
    for data in ("uniform", "extreme"):
        if data == "uniform":
            x = rng.integers(0, 256, (2, channels) + spatial)
            w = rng.integers(-128, 128, (channels, per_group) + (3,) * dims)
        else:  # int16 pair sums saturate on AVX2
            x = rng.choice([0, 1, 254, 255], (2, channels) + spatial)
            w = rng.choice([-128, -127, 0, 126, 127], (channels, per_group) + (3,) * dims)
        case = dict(x=x.astype(np.uint8), x_qp=QParams.per_tensor(0.05, 77, QUINT8),
                    w=w.astype(np.int8), w_qp=QParams.per_tensor(0.01, 0, QINT8),
                    bias=rng.standard_normal(channels).astype(np.float32),
                    out_qp=QParams.per_tensor(0.02 * np.sqrt(per_group * 3 ** dims), 100, QUINT8),
                    stride=stride, padding=1, dilation=1, groups=groups, relu=False)
        try:
            _, params = check_vs_torch(engine, case, f"groupwise C/G={per_group} G={groups} {data}")
        except UnsupportedError as error:  # VNNI takes groups in blocks of 64 bytes, AVX2 of 32
            assert engine in ("fbgemm", "x86") and qexact.detect_isa() == "avx512_vnni", error
            assert "is not a multiple" in str(error) and "undefined" in str(error)
            return
        if engine == "fbgemm":  # VNNI: too few groups for one 64-byte block run im2col
            assert params.kernel == "fbgemm groupwise" or (
                qexact.detect_isa() == "avx512_vnni" and params.kernel == "fbgemm im2col")


@pytest.mark.torch
def test_conv2d_random_vs_torch(engine, report):
    """>= 500 random Conv2d/ConvReLU2d cases per engine: every output byte equal to PyTorch."""
    assert run_random(engine, report, 2, CASES_2D) >= 500


@pytest.mark.torch
@pytest.mark.parametrize("dims", [1, 3])
def test_conv1d_conv3d_random_vs_torch(engine, report, dims):
    assert run_random(engine, report, dims, CASES_1D_3D) >= 100


def _pair_probe_case(positions, kernel, channels, groups, z_x=0, x_value=255, padding=0, size=None):
    """Weights 127 at two (channel, tap) positions of every output channel, activations
    ``x_value``: the two terms saturate together only if they form one ``vpmaddubsw`` pair."""
    out_channels = groups
    w = np.zeros((out_channels, channels // groups, kernel, kernel), np.int8)
    for c, r, s in positions:
        w[:, c, r, s] = 127
    size = size or kernel + 2 * padding
    x = np.full((1, channels, size, size), x_value, np.uint8)
    return dict(x=x, x_qp=QParams.per_tensor(1.0, z_x, QUINT8), w=w,
                w_qp=QParams.per_tensor(1.0, 0, QINT8), bias=None,
                out_qp=QParams.per_tensor(300.0, 128, QUINT8), stride=1, padding=padding,
                dilation=1, groups=groups, relu=False)


@pytest.mark.torch
@pytest.mark.parametrize("channels,groups,kernel,padding", [
    (16, 16, 3, 1), (16, 16, 5, 2), (32, 8, 3, 1), (3, 1, 3, 0), (5, 1, 1, 0), (8, 1, 3, 1),
    (16, 4, 3, 1)])
def test_pair_layout_vs_torch(engine, channels, groups, kernel, padding):
    """Every pair of positions of a group's im2col row (ch, tap): saturating together or not,
    with activations 255 (and with padded taps holding z_x = 200 against x = 0)."""
    per_group = channels // groups
    positions = [(c, r, s) for r in range(kernel) for s in range(kernel) for c in range(per_group)]
    for i in range(0, len(positions), 5):
        for j in range(i + 1, min(len(positions), i + 3)):
            check_vs_torch(engine, _pair_probe_case([positions[i], positions[j]], kernel, channels,
                                                    groups, padding=padding), f"pair {i},{j}")
            if padding:
                check_vs_torch(engine, _pair_probe_case([positions[i], positions[j]], kernel,
                                                        channels, groups, z_x=200, x_value=0,
                                                        padding=padding), f"padded pair {i},{j}")


# ---------------------------------------------------------------------------------------------
# Whole eager models through qexact.from_torch, and explain
# ---------------------------------------------------------------------------------------------

def _model(dims):
    import torch
    from torch import nn

    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    batchnorm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.conv1 = conv(3, 16, 3, padding=1)
            self.bn1 = batchnorm(16)
            self.relu1 = nn.ReLU()
            self.conv2 = conv(16, 16, 3, padding=1, groups=16)
            self.relu2 = nn.ReLU()
            self.conv3 = conv(16, 8, 1, bias=False)
            self.conv4 = conv(8, 8, 3, stride=2, padding=1, groups=2,
                              padding_mode="reflect" if dims < 3 else "zeros")
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            x = self.relu1(self.bn1(self.conv1(self.quant(x))))
            x = self.relu2(self.conv2(x))
            return self.dequant(self.conv4(self.conv3(x)))

    return Model()


@pytest.mark.torch
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_eager_model_vs_torch(engine, dims):
    """Conv+BN+ReLU fused, depthwise+ReLU, pointwise, grouped with reflect padding."""
    import torch

    if engine == "qnnpack" and dims == 3:
        pytest.skip("torch cannot unpack QNNPACK conv3d weights (conv2d_unpack only), so no "
                    "Conv3d model converted for qnnpack can be read; covered by the op tests")
    torch.manual_seed(dims)
    model = _model(dims).eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    torch.ao.quantization.fuse_modules(model, [["conv1", "bn1", "relu1"], ["conv2", "relu2"]],
                                       inplace=True)
    torch.ao.quantization.prepare(model, inplace=True)
    shape = (2, 3) + (10,) * dims if dims < 3 else (2, 3, 6, 6, 6)
    for _ in range(3):
        model(torch.randn(shape))
    torch.ao.quantization.convert(model, inplace=True)
    net = qexact.from_torch(model)
    for scale in (1.0, 4.0):  # 4.0: inputs past the calibrated range reach x_q = 255
        x = torch.randn(shape) * scale
        assert_bitexact(np.asarray(net(x.numpy())), model(x).numpy(), f"{engine} conv{dims}d model")
    explanation = net.explain(torch.randn(shape).numpy() * 4, layer="conv4")
    assert "dot product" in explanation.render("text")


@pytest.mark.parametrize("engine_name", ["fbgemm", "onednn", "qnnpack"])
def test_explain_conv_reproduces_output(engine_name):
    rng = np.random.default_rng(5)
    x = rng.integers(200, 256, size=(1, 16, 5, 5)).astype(np.uint8)
    w = rng.choice([-128, 127, 126], size=(16, 1, 3, 3)).astype(np.int8)
    for groups, weight in ((16, w), (1, np.repeat(w, 16, axis=1))):
        params = prepare_conv(weight, QParams.per_tensor(0.01, 0, QINT8), None,
                              QParams.per_tensor(0.05, 3, QUINT8),
                              QParams.per_tensor(20.0, 128, QUINT8), padding=1, groups=groups,
                              engine=engine_name)
        x_q = QuantizedArray(x, params.input_qparams)
        out = conv(x_q, params).values
        for index in [(0, 0, 0, 0), (0, 5, 2, 3), (0, 15, 4, 4)]:
            stages = explain_conv(params, x_q, index)
            assert stages[-1].result == out[index], (engine_name, groups, index)
