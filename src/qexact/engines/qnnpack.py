"""QNNPACK (engine ``qnnpack``): int32 bias at the current input scale, one float32 scale.

pytorch aten/src/ATen/native/quantized/cpu/qlinear.cpp ``PackedLinearWeightsQnnp::apply_impl``,
QnnpackUtils.h ``generate_requantization_scales``, QuantUtils.h ``QuantizeBias``, and the SSE2 kernel
qnnpack/src/q8gemm/4x4c2-sse2.c:

    b_q[n]   = quantize(bias[n], scale = double(s_w[n]) * double(s_x), zp = 0, qint32)
             = clamp(round_half_even(f32(f32(bias * f32(1/f32(scale))) + 0)), int32)
    scale[n] = f32(f32(f32(s_w[n]) * f32(s_x)) * f32(1.0f / f32(s_out)))   times 1/out, not /out
    q = clamp(round_half_even(f32(f32(wrap_int32(acc + b_q)) * scale[n])) + z_out,
              relu ? z_out : 0, 255)

Weights are stored as ``w + 128`` (uint8) with zero point ``z_w + 128``; the difference
``w - z_w`` is unchanged, so the int16 ``pmaddwd`` accumulator is exact on every ISA.
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from ..dtypes import QINT32
from ..errors import UnsupportedError
from ..qparams import QParams
from ..requantize import AddInt32, MultiplyFloat32, ToFloat32, requantize
from ..rounding import f32
from . import qnnpack_add, qnnpack_lut, qnnpack_pooling
from .aten_kernels import ATEN_KERNELS
from .aten_quantize import quantize_kernel
from .base import (BiasMode, ConvGeometry, ConvKernel, Engine, GemmNumerics, LayerQuantization,
                   Requantization, integer_output_steps)
from .dynamic_eager import QNNPACK_DYNAMIC, no_linear_fp16


def quantize_bias(bias: np.ndarray, input_scale: float, weight_scale) -> np.ndarray:
    """The int32 bias QNNPACK adds: ``quantize(bias, s_w * s_x, 0, qint32)`` (QuantizeBias:
    ``at::quantize_per_tensor``/``_per_channel`` to qint32, i.e. ``quantize_val`` per element,
    ``engines.aten_quantize.quantize_kernel``)."""
    return requantize(f32(bias), bias_quantization(input_scale, weight_scale), np.int32)


def bias_quantization(input_scale: float, weight_scale) -> tuple:
    """The steps of ``quantize_bias`` (per channel for 1-D ``weight_scale``)."""
    bias_scale = np.asarray(weight_scale, dtype=np.float64) * float(input_scale)
    if bias_scale.ndim:
        qparams = QParams.per_channel(bias_scale, np.zeros(bias_scale.shape, np.int64), 0,
                                      QINT32)
    else:
        qparams = QParams.per_tensor(float(bias_scale), 0, QINT32)
    return quantize_kernel(qparams, 1).steps


def requantization(layer: LayerQuantization) -> Requantization:
    weight = layer.weight_qparams
    output = layer.output_qparams
    scale = f32(f32(f32(weight.scale) * f32(layer.input_scale))
                * f32(np.float32(1.0) / f32(output.scale)))
    _refuse_unusable_scale(scale, layer)
    steps = []
    bias = None
    if layer.bias is not None:
        bias = quantize_bias(layer.bias, layer.input_scale, weight.scale)
        steps.append(AddInt32("int32 bias, quantized at scale s_x*s_w", role="bias", term=bias))
    steps += [ToFloat32("to float32"),
              MultiplyFloat32("scale = (s_w*s_x) * (1/s_out)", factor=scale)]
    steps += integer_output_steps(output, layer.relu)
    return Requantization(tuple(steps), bias, BiasMode.INT32_AT_INPUT_SCALE, (scale,))


def _refuse_unusable_scale(scale, layer: LayerQuantization) -> None:
    """PyTorch refuses to create the QNNPACK operator unless every requantization scale is a
    normal float32 (``scale > 0 && std::isnormal(scale)``: 0 or subnormal by underflow, inf when
    1/s_out overflows): QnnpackUtils.h ``generate_requantization_scales``, "requantization scale
    must be finite and positive"."""
    bad = np.ravel(~(np.isfinite(scale) & (scale >= np.finfo(np.float32).tiny)))
    if bad.any():
        value = float(np.ravel(scale)[np.argmax(bad)])
        raise UnsupportedError(
            f"QNNPACK refuses this layer, as PyTorch does: its requantization scale "
            f"(s_w*s_x)*(1/s_out) is {value:g} (s_x={layer.input_scale:g}, "
            f"s_out={layer.output_qparams.scale:g}); it must be a normal float32 (finite, "
            "positive, at least 1.2e-38)")


QNNPACK_GEMM = GemmNumerics(
    name="qnnpack",
    source="QNNPACK q8gemm 4x4c2-sse2 with fp32 requantization",
    bias_mode=BiasMode.INT32_AT_INPUT_SCALE,
    pair_saturation_isas=frozenset(),
    allows_weight_zero_point=True,
    requantization=requantization,
    weight_offset=128,
    dynamic=QNNPACK_DYNAMIC,
)


QNNPACK_CONV_KERNELS = {
    name: ConvKernel(f"qnnpack {name}", f"pytorch aten/src/ATen/native/quantized/cpu/qnnpack/src/{path}",
                     QNNPACK_GEMM, frozenset())
    for name, path in (("dwconv", "q8dwconv/up8x9-sse2.c, mp8x25-sse2.c"),
                       ("gemm", "q8gemm/4x4c2-sse2.c"), ("conv", "q8conv/4x4c2-sse2.c"))
}


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """pytorch QnnpackUtils.h / qnnpack src/convolution.c: depthwise (one channel per group, 3x3
    or 5x5), 1x1 gemm (stride 1, no padding), else the indirect conv. All exact (int16 ``pmaddwd``
    on ``x - z_x`` and ``w - z_w``); padded taps read the zero point."""
    kernel = geometry.kernel_size
    if (geometry.in_channels == geometry.groups and geometry.spatial_dims == 2
            and kernel in ((3, 3), (5, 5))):
        return QNNPACK_CONV_KERNELS["dwconv"]
    if (all(k == 1 for k in kernel) and all(s == 1 for s in geometry.stride)
            and all(p == 0 for p in geometry.padding)):
        return QNNPACK_CONV_KERNELS["gemm"]
    return QNNPACK_CONV_KERNELS["conv"]


QNNPACK_DECONVOLUTION = ConvKernel(
    "qnnpack deconvolution", "pytorch aten/src/ATen/native/quantized/cpu/qnnpack/src/"
    "deconvolution.c (indirection buffer + q8conv/4x4c2-sse2.c)", QNNPACK_GEMM, frozenset())
"""Exact (int16 ``pmaddwd`` of ``x - z_x`` and ``w - z_w``); taps that no input reaches point at
the zero buffer (``z_x``, adds 0); per-channel weights accepted (one scale per output channel)."""


def conv_transpose_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """2-D (and 1-D as 2-D) only: QNNPACK's deconvolution has no depth axis, and PyTorch's
    ``quantized::conv_transpose3d`` on qnnpack writes only the first output depth slice (the
    others come back 0; measured), which qexact refuses to imitate."""
    if geometry.spatial_dims == 3:
        raise UnsupportedError("qnnpack ConvTranspose3d is not supported: QNNPACK's deconvolution "
                               "is 2-D and PyTorch's conv_transpose3d on qnnpack computes only the "
                               "first output depth slice")
    return QNNPACK_DECONVOLUTION


def engine(isa: str) -> Engine:
    return Engine("qnnpack", isa, linear=QNNPACK_GEMM, conv=conv_kernel,
                  conv_transpose=conv_transpose_kernel, kernels=QNNPACK_KERNELS,
                  description="QNNPACK kernels (mobile; PyTorch's ARM default)")


QNNPACK_KERNELS = MappingProxyType({**ATEN_KERNELS, **qnnpack_add.KERNELS, **qnnpack_lut.KERNELS,
                                    **qnnpack_pooling.KERNELS,
                                    "linear_fp16": no_linear_fp16("QNNPACK")})
"""ATen's table, with the op families PyTorch hands to QNNPACK operators on this engine
(BinaryOps.cpp qnnpack_add, qhardswish.cpp, qsigmoid.cpp, qtanh.cpp (quint8: lookup tables),
qclamp.cpp, q_avgpool.cpp, qpool.cpp, ReduceOps.cpp); measured: hardsigmoid, leaky_relu and elu
stay on ATen's kernels, and quint8 sigmoid/tanh match the tables at every tie (the ATen formula
misses 199 of 773,120 sigmoid entries)."""

