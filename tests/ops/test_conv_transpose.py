"""quantized ConvTranspose1d/2d/3d: properties, errors, and bit-exact differential tests vs PyTorch
on every engine (style.md 8.4).

Kernels on this machine (AVX2, no VNNI): FBGEMM (and x86) run the transposed im2col and sum raw
u8 x s8 pairs of the row from its start in int16, unreached taps holding z_x; QNNPACK's
deconvolution is exact (2-D only); oneDNN's jit deconvolution pairs the channels of one tap
(unreached taps raw 0), reads the weight buffer re-laid (``weight_buffer_reread``), and leaves
outputs no tap reaches nondeterministic when z_x != 0: those positions (and only those) are left
out of the oneDNN comparison and counted, because PyTorch's own bytes there change from process
to process (measured: bias-only in one run, 255 in the next), so no value can match them.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError, ShapeError
from qexact.errors import UnsupportedError
from qexact.ops.conv_transpose import (conv_transpose, conv_transpose_accumulator,
                                       explain_conv_transpose, prepare_conv_transpose,
                                       reached_outputs)

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
CASES_2D = 500
CASES_1D_3D = 25


def torch_conv_transpose(x, x_qp, w, w_qp, bias, out_qp, stride, padding, output_padding,
                         dilation, groups):
    """``quantized::conv_transpose{1,2,3}d`` under the current engine; uint8 outputs."""
    import torch

    dims = w.ndim - 2
    weight = torch_quantized(w, w_qp)
    if w_qp.is_per_channel:  # one scale per output channel, on an axis of that length
        axis = 1 if w.shape[1] == len(w_qp.scale) else 0
        weight = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(w), torch.from_numpy(np.asarray(w_qp.scale, np.float64)),
            torch.from_numpy(np.asarray(w_qp.zero_point, np.int64)), axis)
    prepack = getattr(torch.ops.quantized, f"conv_transpose{dims}d_prepack")
    op = getattr(torch.ops.quantized, f"conv_transpose{dims}d")
    packed = prepack(weight, None if bias is None else torch.from_numpy(bias), [stride] * dims,
                     [padding] * dims, [output_padding] * dims, [dilation] * dims, groups)
    return op(torch_quantized(x, x_qp), packed, out_qp.scale, out_qp.zero_point).int_repr().numpy()


def qexact_conv_transpose(x, x_qp, w, w_qp, bias, out_qp, stride, padding, output_padding,
                          dilation, groups, engine):
    params = prepare_conv_transpose(w, w_qp, bias, x_qp, out_qp, stride=stride, padding=padding,
                                    output_padding=output_padding, dilation=dilation,
                                    groups=groups, engine=engine)
    return conv_transpose(QuantizedArray(x, x_qp), params).values, params


def check_vs_torch(engine, case, context="", stats=None):
    import torch

    try:  # first: where PyTorch's result is undefined (FBGEMM direct conv) qexact refuses
        params = prepare_conv_transpose(
            case["w"], case["w_qp"], case["bias"], case["x_qp"], case["out_qp"],
            stride=case["stride"], padding=case["padding"], output_padding=case["output_padding"],
            dilation=case["dilation"], groups=case["groups"], engine=engine)
    except UnsupportedError as error:
        if "direct-convolution path" not in str(error):
            raise
        assert engine in ("fbgemm", "x86"), error
        if stats is not None:
            stats["refused_direct_conv"] += 1
        return np.zeros(0), None
    expected = torch_conv_transpose(**case)
    if (params.unreached_outputs_undefined and case["x_qp"].zero_point != 0
            and not reached_outputs(params, case["x"].shape[2:]).all()):
        # PyTorch leaves these positions uninitialized (run-to-run different bytes): qexact
        # refuses instead of inventing them.
        with pytest.raises(qexact.UnsupportedError, match="uninitialized"):
            qexact_conv_transpose(**case, engine=engine)
        if stats is not None:
            stats["refused_undefined_outputs"] += 1
        return expected, params
    actual, params = qexact_conv_transpose(**case, engine=engine)
    assert_bitexact(actual, expected, f"{engine} (torch {torch.__version__}, backend "
                    f"{torch.backends.quantized.engine}, isa {qexact.detect_isa()}, kernel "
                    f"{params.kernel}) {context}")
    return expected, params



@st.composite
def conv_transpose_cases(draw, engine, dims):
    rng = np.random.default_rng(draw(st.integers(0, 2**63 - 1)))
    kind = draw(st.sampled_from(["general", "general", "depthwise", "grouped"]))
    kernel = draw(st.sampled_from([1, 2, 3, 4] if dims < 3 else [1, 2, 3]))
    stride = draw(st.sampled_from([1, 2, 2, 3]))
    dilation = draw(st.sampled_from([1, 1, 2]))
    padding = draw(st.integers(0, 2))
    output_padding = 0
    if engine != "onednn" and draw(st.booleans()):  # oneDNN refuses output_padding
        output_padding = draw(st.integers(0, max(stride, dilation) - 1))
    if kind == "depthwise":
        groups = draw(st.sampled_from([3, 8, 16]))
        channels, out_per_group = groups, draw(st.sampled_from([1, 1, 2]))
    elif kind == "grouped":
        groups = draw(st.sampled_from([2, 3, 4]))
        channels = groups * draw(st.sampled_from([1, 2, 3, 4, 8]))
        out_per_group = draw(st.sampled_from([1, 2, 4, 5]))
    else:
        groups, channels = 1, draw(st.integers(1, 13))
        out_per_group = draw(st.integers(1, 11))
    out_channels = out_per_group * groups
    spatial = [draw(st.integers(1, 6 if dims < 3 else 3)) for _ in range(dims)]
    span = dilation * (kernel - 1) + output_padding + 1
    padding = min(padding, (span - 1) // 2)  # keep every output size >= 1
    batch = draw(st.integers(1, 2))
    full_range = draw(st.booleans())
    data = draw(st.sampled_from(["uniform", "uniform", "extreme", "high"]))
    hi = 256 if full_range else 128
    x_shape = [batch, channels] + spatial
    w_shape = [channels, out_per_group] + [kernel] * dims
    if data == "uniform":
        x = rng.integers(0, hi, size=x_shape)
        w = rng.integers(-128, 128, size=w_shape)
    elif data == "extreme":  # corners: int16 pair sums saturate
        x = rng.choice([0, 1, hi - 2, hi - 1], size=x_shape)
        w = rng.choice([-128, -127, -1, 0, 1, 126, 127], size=w_shape)
    else:  # high activations, same-sign weights per output channel
        x = rng.integers(hi * 3 // 4, hi, size=x_shape)
        sign = rng.choice([-1, 1], size=[1, out_per_group] + [1] * dims)
        w = np.clip(sign * rng.integers(64, 129, size=w_shape), -128, 127)
    x, w = x.astype(np.uint8), w.astype(np.int8)
    s_x = 10.0 ** draw(st.floats(-3.0, 0.0))
    z_x = draw(st.sampled_from([0, 128, 255]) | st.integers(0, 255))
    nonzero_zw = engine != "onednn" and draw(st.integers(0, 3)) == 0
    # Per-channel: QNNPACK only, with a tensor axis of length OC (C or OC/G).
    if (engine == "qnnpack" and out_channels in (channels, out_per_group)
            and draw(st.booleans())):
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
        bias = rng.standard_normal(out_channels) * grid * 10.0 ** draw(st.floats(-3.0, 5.0))
    else:
        bias = (rng.integers(-40000, 40000, size=out_channels) + 0.5) * grid
    case = dict(x=x, x_qp=QParams.per_tensor(s_x, z_x, QUINT8), w=w, w_qp=w_qp,
                bias=None if bias is None else bias.astype(np.float32),
                out_qp=QParams.per_tensor(s_out, draw(st.integers(0, 255)), QUINT8),
                stride=stride, padding=padding, output_padding=output_padding,
                dilation=dilation, groups=groups)
    return case, f"{kind}/{data}/{'full' if full_range else 'rr'}"


def run_random(engine, report, dims, examples):
    stats = report[f"conv_transpose{dims}d {engine}"]

    @settings(max_examples=examples, suppress_health_check=SUPPRESS)
    @given(drawn=conv_transpose_cases(engine, dims))
    def check(drawn):
        case, label = drawn
        expected, params = check_vs_torch(engine, case, label, stats)
        if params is None:
            return
        stats["cases"] += 1
        stats["elements"] += expected.size
        stats["saturating_cases"] += int(params.pair_saturation)
        stats["output_padding_cases"] += int(any(params.output_padding))
        stats["per_channel_cases"] += int(params.weight_qparams.is_per_channel)

    before = stats["cases"]
    check()
    return stats["cases"] - before


# ---------------------------------------------------------------------------------------------
# Properties and errors
# ---------------------------------------------------------------------------------------------

def _scatter_reference(x, w, z_x, z_w, stride, padding, output_padding, dilation, groups):
    """The definition, as a scatter: every input adds (x - z_x) * (w - z_w) into its outputs."""
    batch, channels, height, width = x.shape
    _, out_per_group, kh, kw = w.shape
    full_h = (height - 1) * stride + dilation * (kh - 1) + 1 + output_padding
    full_w = (width - 1) * stride + dilation * (kw - 1) + 1 + output_padding
    acc = np.zeros((batch, out_per_group * groups, full_h, full_w), np.int64)
    per_group = channels // groups
    for c in range(channels):
        g = c // per_group
        for iy in range(height):
            for ix in range(width):
                for fy in range(kh):
                    for fx in range(kw):
                        acc[:, g * out_per_group:(g + 1) * out_per_group,
                            iy * stride + fy * dilation, ix * stride + fx * dilation] += (
                            (x[:, c, iy, ix].astype(np.int64)[:, None] - z_x)
                            * (w[c, :, fy, fx].astype(np.int64) - z_w)[None, :])
    return acc[:, :, padding:full_h - padding, padding:full_w - padding]


@settings(max_examples=40, suppress_health_check=SUPPRESS)
@given(seed=st.integers(0, 2**32 - 1), groups=st.sampled_from([1, 2, 3]),
       stride=st.integers(1, 3), padding=st.integers(0, 1), dilation=st.integers(1, 2),
       output_padding=st.integers(0, 1))
def test_exact_accumulator_matches_scatter(seed, groups, stride, padding, dilation,
                                           output_padding):
    """QNNPACK's accumulator (exact) equals the scatter definition, computed by an int64 loop."""
    if output_padding >= max(stride, dilation):
        output_padding = 0
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(2, 2 * groups, 4, 3)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(2 * groups, 3, 3, 2)).astype(np.int8)
    z_x, z_w = int(rng.integers(0, 256)), int(rng.integers(-128, 128))
    params = prepare_conv_transpose(
        w, QParams.per_tensor(0.01, z_w, QINT8), None, QParams.per_tensor(0.1, z_x, QUINT8),
        QParams.per_tensor(1.0, 0, QUINT8), stride=stride, padding=padding,
        output_padding=output_padding, dilation=dilation, groups=groups, engine="qnnpack")
    out = params.output_shape(x.shape[2:])
    acc = conv_transpose_accumulator(x, params, out)
    expected = _scatter_reference(x, w, z_x, z_w, stride, padding, output_padding, dilation,
                                  groups)
    assert_bitexact(np.moveaxis(acc.reshape((2,) + out + (-1,)), -1, 1), expected)


def _qp(zero_point=0):
    return QParams.per_tensor(0.1, zero_point, QUINT8)


def test_errors():
    w = np.zeros((4, 2, 3, 3), np.int8)
    wqp = QParams.per_tensor(0.01, 0, QINT8)
    with pytest.raises(ShapeError, match="int8"):
        prepare_conv_transpose(w.astype(np.int16), wqp, None, _qp(), _qp(), engine="fbgemm")
    with pytest.raises(ShapeError, match="multiple of groups"):
        prepare_conv_transpose(w, wqp, None, _qp(), _qp(), groups=3, engine="fbgemm")
    with pytest.raises(ShapeError, match="output_padding"):
        prepare_conv_transpose(w, wqp, None, _qp(), _qp(), stride=2, output_padding=2,
                               engine="fbgemm")
    with pytest.raises(QuantParamError, match="symmetric"):
        prepare_conv_transpose(w, QParams.per_tensor(0.01, 3, QINT8), None, _qp(), _qp(),
                               engine="onednn")
    with pytest.raises(UnsupportedError, match="output_padding"):
        prepare_conv_transpose(w, wqp, None, _qp(), _qp(), stride=2, output_padding=1,
                               engine="onednn")
    per_channel = QParams.per_channel(np.ones(2), np.zeros(2), 1, QINT8)
    for engine in ("fbgemm", "x86", "onednn"):
        with pytest.raises(QuantParamError, match="per-channel"):
            prepare_conv_transpose(w, per_channel, None, _qp(), _qp(), engine=engine)
    with pytest.raises(QuantParamError, match="one scale per output channel"):
        prepare_conv_transpose(w, QParams.per_channel(np.ones(4), np.zeros(4), 0, QINT8), None,
                               _qp(), _qp(), engine="qnnpack")
    with pytest.raises(UnsupportedError, match="ConvTranspose3d"):
        prepare_conv_transpose(np.zeros((4, 2, 3, 3, 3), np.int8), wqp, None, _qp(), _qp(),
                               engine="qnnpack")
    with pytest.raises(QuantParamError, match="qint8"):
        prepare_conv_transpose(w, QParams.per_tensor(0.1, 0, QUINT8), None, _qp(), _qp(),
                               engine="fbgemm")
    with pytest.raises(ShapeError, match="bias"):
        prepare_conv_transpose(w, wqp, np.zeros(3, np.float32), _qp(), _qp(), engine="fbgemm")
    params = prepare_conv_transpose(w, wqp, None, _qp(), _qp(), groups=2, engine="fbgemm")
    with pytest.raises(ShapeError, match="expects input"):
        conv_transpose(QuantizedArray(np.zeros((1, 3, 5, 5), np.uint8), _qp()), params)
    with pytest.raises(QuantParamError, match="prepared for input"):
        conv_transpose(QuantizedArray(np.zeros((1, 4, 5, 5), np.uint8), _qp(5)), params)


def test_kernel_choice_on_avx2():
    def kernel(engine, isa="avx2"):
        return prepare_conv_transpose(np.zeros((4, 4, 3, 3), np.int8),
                                      QParams.per_tensor(0.01, 0, QINT8), None, _qp(), _qp(),
                                      stride=2, engine=engine, isa=isa).kernel

    assert kernel("fbgemm") == kernel("x86") == "fbgemm im2col transposed"
    assert kernel("x86", "avx512_vnni") == "onednn deconvolution"
    assert kernel("qnnpack") == "qnnpack deconvolution"
    assert kernel("onednn") == "onednn jit_uni_int8 deconvolution:avx2"


@pytest.mark.parametrize("channels,out_channels,kernel,stride", [
    (8, 8, (2, 2), 2), (16, 8, (2, 2), 2), (8, 16, (2, 3), 1), (8, 8, (2, 1), 1),
    (8, 8, (2, 6), (1, 2)), (24, 8, (2, 4), 1)])
def test_fbgemm_direct_conv_transpose_is_refused(channels, out_channels, kernel, stride):
    """FBGEMM's direct transposed convolution (the UNet upsampler ConvTranspose2d(C, C/2, 2, 2))
    reads stale memory in torch 2.13 (run-to-run different, wrong bytes): fbgemm and x86 refuse
    it; qnnpack and onednn compute it; one step off the path (padding, kernel height 3, OC not a
    multiple of 8, groups) FBGEMM is used as usual."""
    w = np.zeros((channels, out_channels) + kernel, np.int8)
    weight_qp = QParams.per_tensor(0.01, 0, QINT8)

    def prepare(w, engine, **options):
        return prepare_conv_transpose(w, weight_qp, None, _qp(), _qp(), stride=stride,
                                      engine=engine, **options)

    for engine in ("fbgemm", "x86"):
        with pytest.raises(UnsupportedError, match="direct-convolution path"):
            prepare(w, engine, isa="avx2")
    prepare(w, "qnnpack")
    prepare(w, "onednn")
    assert prepare(w, "fbgemm", padding=1).kernel == "fbgemm im2col transposed"
    assert prepare(np.zeros((channels, out_channels, 3) + kernel[1:], np.int8),
                   "fbgemm").kernel == "fbgemm im2col transposed"
    assert prepare(np.zeros((channels, 4) + kernel, np.int8), "fbgemm").kernel == \
        "fbgemm im2col transposed"


@pytest.mark.torch
def test_unet_upsampler_in_a_model_names_the_layer():
    import torch
    import torch.ao.nn.quantized as nnq

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        model = torch.nn.Sequential(nnq.Quantize(0.01, 3, torch.quint8),
                                    nnq.ConvTranspose2d(16, 8, 2, stride=2), nnq.DeQuantize())
        with pytest.raises(UnsupportedError, match="node '1'.*direct-convolution path"):
            qexact.from_torch(model)
    finally:
        torch.backends.quantized.engine = previous


# ---------------------------------------------------------------------------------------------
# Differential against PyTorch
# ---------------------------------------------------------------------------------------------

@pytest.mark.torch
def test_conv_transpose2d_random_vs_torch(engine, report):
    """>= 500 random ConvTranspose2d cases per engine: every output byte equal to PyTorch."""
    assert run_random(engine, report, 2, CASES_2D) >= 500


@pytest.mark.torch
@pytest.mark.parametrize("dims", [1, 3])
def test_conv_transpose1d_3d_random_vs_torch(engine, report, dims):
    if engine == "qnnpack" and dims == 3:
        pytest.skip("qexact refuses qnnpack ConvTranspose3d: see the strict xfail "
                    "test_qnnpack_conv_transpose3d_vs_torch")
    assert run_random(engine, report, dims, CASES_1D_3D) >= CASES_1D_3D


@pytest.mark.torch
@pytest.mark.xfail(strict=True, raises=UnsupportedError, reason=(
    "qnnpack ConvTranspose3d: QNNPACK's deconvolution is 2-D and PyTorch's "
    "quantized::conv_transpose3d on qnnpack computes only the first output depth slice (the "
    "other slices come back 0), so qexact refuses it with UnsupportedError"))
def test_qnnpack_conv_transpose3d_vs_torch():
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        rng = np.random.default_rng(0)
        case = dict(x=rng.integers(0, 256, (1, 2, 2, 2, 2)).astype(np.uint8),
                    x_qp=_qp(3), w=rng.integers(-128, 128, (2, 3, 2, 2, 2)).astype(np.int8),
                    w_qp=QParams.per_tensor(0.01, 0, QINT8), bias=None, out_qp=_qp(128),
                    stride=2, padding=0, output_padding=0, dilation=1, groups=1)
        check_vs_torch("qnnpack", case)
    finally:
        torch.backends.quantized.engine = previous


def _pair_probe_case(positions, channels, out_per_group, kernel, stride, z_x=0, x_value=255):
    """Weights 127 at two (channel, tap) positions, activations ``x_value``: the two terms
    saturate together only where they form one ``vpmaddubsw`` pair."""
    w = np.zeros((channels, out_per_group, kernel, kernel), np.int8)
    for c, r, s in positions:
        w[c, :, r, s] = 127
    x = np.full((1, channels, 3, 3), x_value, np.uint8)
    return dict(x=x, x_qp=QParams.per_tensor(1.0, z_x, QUINT8), w=w,
                w_qp=QParams.per_tensor(1.0, 0, QINT8), bias=None,
                out_qp=QParams.per_tensor(300.0, 128, QUINT8), stride=stride, padding=0,
                output_padding=0, dilation=1, groups=1)


@pytest.mark.torch
@pytest.mark.parametrize("channels,out_per_group,kernel,stride", [
    (3, 2, 3, 1), (5, 5, 2, 2), (8, 3, 3, 2), (4, 6, 2, 1)])
def test_pair_layout_vs_torch(engine, channels, out_per_group, kernel, stride):
    """Pairs of (channel, tap) positions, adjacent in the row or not: saturating together or not
    (and against unreached taps with z_x = 200, x = 0)."""
    positions = [(c, r, s) for r in range(kernel) for s in range(kernel) for c in range(channels)]
    for i in range(0, len(positions), 3):
        for j in range(i + 1, min(len(positions), i + 3)):
            check_vs_torch(engine, _pair_probe_case([positions[i], positions[j]], channels,
                                                    out_per_group, kernel, stride),
                           f"pair {i},{j}")
            check_vs_torch(engine, _pair_probe_case([positions[i], positions[j]], channels,
                                                    out_per_group, kernel, stride, z_x=200,
                                                    x_value=0), f"unreached pair {i},{j}")


# ---------------------------------------------------------------------------------------------
# A whole eager model through qexact.from_torch, and explain
# ---------------------------------------------------------------------------------------------

def _model():
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.relu = nn.ReLU()
            self.up1 = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1)
            self.up2 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, groups=2, bias=False)
            self.up3 = nn.ConvTranspose2d(4, 6, 2, stride=1, dilation=2)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            x = self.relu(self.conv(self.quant(x)))
            return self.dequant(self.up3(self.up2(self.up1(x))))

    return Model()


@pytest.mark.torch
def test_eager_model_vs_torch(engine):
    """Conv+ReLU, then three ConvTranspose2d (k4 s2, grouped k3 s2, dilated), through from_torch."""
    import torch

    torch.manual_seed(0)
    model = _model().eval()
    qconfig = torch.ao.quantization.get_default_qconfig(engine)
    model.qconfig = qconfig
    per_tensor = torch.ao.quantization.QConfig(  # ConvTranspose refuses per-channel observers
        activation=qconfig.activation, weight=torch.ao.quantization.default_weight_observer)
    for name in ("up1", "up2", "up3"):
        getattr(model, name).qconfig = per_tensor
    torch.ao.quantization.fuse_modules(model, [["conv", "relu"]], inplace=True)
    torch.ao.quantization.prepare(model, inplace=True)
    for _ in range(3):
        model(torch.randn(2, 3, 7, 6))
    torch.ao.quantization.convert(model, inplace=True)
    net = qexact.from_torch(model)
    for scale in (1.0, 4.0):
        x = torch.randn(2, 3, 7, 6) * scale
        assert_bitexact(np.asarray(net(x.numpy())), model(x).numpy(),
                        f"{engine} conv_transpose model")
    explanation = net.explain(torch.randn(2, 3, 7, 6).numpy() * 4, layer="up2")
    assert "contributing taps" in explanation.render("text")


@pytest.mark.parametrize("engine_name", ["fbgemm", "onednn", "qnnpack"])
def test_explain_reproduces_output(engine_name):
    rng = np.random.default_rng(5)
    x = rng.integers(200, 256, size=(1, 8, 3, 3)).astype(np.uint8)
    w = rng.choice([-128, 127, 126], size=(8, 6, 3, 3)).astype(np.int8)
    for groups in (1, 2):
        params = prepare_conv_transpose(w, QParams.per_tensor(0.01, 0, QINT8), None,
                                        QParams.per_tensor(0.05, 3, QUINT8),
                                        QParams.per_tensor(20.0, 128, QUINT8), stride=2,
                                        padding=1, groups=groups, engine=engine_name)
        x_q = QuantizedArray(x, params.input_qparams)
        out = conv_transpose(x_q, params).values
        for index in [(0, 0, 0, 0), (0, 5, 2, 3), (0, 6 * groups - 1, 4, 4)]:
            stages, upstream = explain_conv_transpose(params, x_q, index)
            assert stages[-1].result == out[index], (engine_name, groups, index)
            assert upstream
