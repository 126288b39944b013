"""Engine ``inductor``'s residual add fused into a conv (oneDNN's "sum" post-op, which Inductor
emits as ``onednn.qconv2d_pointwise.binary`` for ``quantize(relu(conv(x) + dequantize(q)))``),
against that op called directly, on data made to tell its arithmetic apart: the sum term
``(q - z) * s`` added with one FMA rounding, not rounded first (``AddResidualFloat32``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray
from qexact.ops.conv import conv, prepare_conv
from qexact.requantize import AddResidualFloat32

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(qexact.detect_isa() != "avx512_vnni",
                                 reason="engine inductor is modelled on AVX512-VNNI only")]
F = np.float32


def _onednn(qx, x, weight, w_scales, bias, residual, relu, out, groups=1, padding=0):
    packed = torch.ops.onednn.qconv_prepack(
        torch.from_numpy(weight), torch.from_numpy(w_scales), float(x.scale),
        int(x.zero_point), [1, 1], [padding] * 2, [1, 1], groups, list(qx.shape))
    accum = torch.from_numpy(residual.values).contiguous(memory_format=torch.channels_last)
    result = torch.ops.onednn.qconv2d_pointwise.binary(
        torch.from_numpy(qx).contiguous(memory_format=torch.channels_last), float(x.scale),
        int(x.zero_point), packed, torch.from_numpy(w_scales),
        torch.zeros(weight.shape[0], dtype=torch.int64), accum,
        None if bias is None else torch.from_numpy(bias), [1, 1], [padding] * 2, [1, 1], groups,
        float(out.scale), int(out.zero_point), torch.uint8, float(residual.qparams.scale),
        int(residual.qparams.zero_point), "sum", 1.0, "relu" if relu else "none", [], "")
    return result.numpy()


def _case(seed: int, cancel: bool, relu: bool, groups: int = 1, padding: int = 0):
    rng = np.random.default_rng(seed)
    channels = 16 if groups > 1 else 3
    out_channels = 16 if groups > 1 else 20
    x = QParams.per_tensor(float(F(rng.uniform(0.01, 0.05))), int(rng.integers(100, 156)), QUINT8)
    out = QParams.per_tensor(float(F(rng.uniform(0.02, 0.2))), int(rng.integers(0, 256)), QUINT8)
    r = QParams.per_tensor(float(F(rng.uniform(0.01, 0.1))), int(rng.integers(0, 256)), QUINT8)
    w_scales = F(rng.uniform(0.002, 0.02, out_channels))
    weight = rng.integers(-127, 128, (out_channels, channels // groups, 3, 3)).astype(np.int8)
    bias = F(rng.normal(0, 0.5, out_channels))
    qx = rng.integers(0, 256, (2, channels, 7, 6)).astype(np.uint8)
    w = QParams.per_channel(w_scales, np.zeros(out_channels), 0, QINT8)
    params = prepare_conv(weight, w, bias, x, out, groups=groups, padding=padding, relu=relu,
                          engine="inductor", residual_qparams=r)
    shape = (2, out_channels) + tuple(s - 2 + 2 * padding for s in (7, 6))
    qr = rng.integers(0, 256, shape).astype(np.uint8)
    if cancel:  # the residual nearly cancels the conv: the rounding of (q - z) * s shows
        t = conv(QuantizedArray(qx, x), prepare_conv(weight, w, bias, x, None, groups=groups,
                                                     padding=padding, engine="inductor"))
        qr = np.clip(np.rint(-t / F(r.scale)) + r.zero_point, 0, 255).astype(np.uint8)
    return params, QuantizedArray(qx, x), QuantizedArray(qr, r), weight, w_scales, bias, out


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("cancel", [False, True])
@pytest.mark.parametrize("groups, padding", [(1, 0), (1, 1), (16, 1)])
def test_conv_residual_sum_equals_onednn(relu, cancel, groups, padding):
    unfused = 0
    for seed in range(6):
        params, qx, residual, weight, w_scales, bias, out = _case(seed, cancel, relu, groups,
                                                                  padding)
        mine = conv(qx, params, residual).values
        theirs = _onednn(qx.values, qx.qparams, weight, w_scales, bias, residual, relu, out,
                         groups, padding)
        assert np.array_equal(mine, theirs)
        two_roundings = replace(params, requantization=tuple(
            replace(step, fused=False) if isinstance(step, AddResidualFloat32) else step
            for step in params.requantization))
        unfused += int(np.count_nonzero(conv(qx, two_roundings, residual).values != theirs))
    if cancel and not relu:
        assert unfused > 0  # the data tells one FMA from a dequantize then an add


def _onednn_linear_add(qx, x, weight, w_scales, bias, other, relu, out):
    packed = torch.ops.onednn.qlinear_prepack(torch.from_numpy(weight), list(qx.shape))
    return torch.ops.onednn.qlinear_pointwise.binary(
        torch.from_numpy(qx), float(x.scale), int(x.zero_point), packed,
        torch.from_numpy(w_scales), torch.zeros(weight.shape[0], dtype=torch.int64),
        torch.from_numpy(other.copy()), None if bias is None else torch.from_numpy(bias),
        float(out.scale), int(out.zero_point), torch.uint8, 1.0, 0, "add", 1.0,
        "relu" if relu else "none", [], "").numpy()


@pytest.mark.parametrize("relu", [False, True])
def test_linear_float_residual_add_equals_onednn_at_output_ties(relu):
    """Inductor's ``linear(x) + y`` (y float32, quantized after): oneDNN's "add" post-op, then
    the zero point added before rounding; the residuals put ``t / s_out`` on .5 ties, where
    adding it after rounding (an Inductor quantize) would differ."""
    from qexact.ops.linear import linear, prepare_linear

    rng = np.random.default_rng(5)
    x = QParams.per_tensor(0.03125, 128, QUINT8)
    out = QParams.per_tensor(0.0625, 131, QUINT8)  # an odd zero point: ties differ
    w_scales = F(rng.uniform(0.002, 0.02, 24))
    weight = rng.integers(-127, 128, (24, 40)).astype(np.int8)
    bias = F(rng.normal(0, 0.5, 24))
    qx = rng.integers(0, 256, (3, 5, 40)).astype(np.uint8)
    w = QParams.per_channel(w_scales, np.zeros(24), 0, QINT8)
    t = linear(QuantizedArray(qx, x), prepare_linear(weight, w, bias, x, None,
                                                     engine="inductor"))
    halves = (np.floor(t / F(out.scale)) + F(0.5)) * F(out.scale)
    other = F(halves - t) + F(rng.integers(-4, 5, t.shape)) * F(out.scale)
    params = prepare_linear(weight, w, bias, x, out, relu=relu, engine="inductor",
                            float_residual=True)
    mine = linear(QuantizedArray(qx, x), params, other).values
    theirs = _onednn_linear_add(qx, x, weight, w_scales, bias, other, relu, out)
    assert np.array_equal(mine, theirs)
    summed = F(t + other)
    summed = np.maximum(summed, F(0)) if relu else summed
    scaled = F(summed * F(F(1) / F(out.scale)))
    after = np.clip(np.rint(scaled) + out.zero_point, 0, 255)
    assert np.count_nonzero(after != theirs) > 0
