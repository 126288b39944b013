"""ExecuTorch's XNNPACK delegate (engine ``xnnpack``): a PT2E model quantized with
``XNNPACKQuantizer`` and lowered with ``XnnpackPartitioner``, as the ExecuTorch runtime runs it.

Activations are qint8 (``qs8``), weights qint8 per output channel (``qc8w``), symmetric. The
float32 bias is quantized once, in Python, when the model is lowered (executorch
backends/xnnpack/operators/quant_params.py ``QuantParams.from_bias`` via
``quantized_decomposed.quantize_per_channel``); XNNPACK's GEMM, igemm and depthwise kernels then
run (src/operators/convolution-nhwc.c ``init_requantization_scale_qx8_qc8w``,
src/qs8-gemm/MRx16c8-avx512vnni.c.in, src/qs8-dwconv/unipass-avx512skx-mul32.c.in)::

    s_b[c] = f32(s_w[c] * f32(s_x))               per-tensor weights: the double s_w * s_x
    b_q[c] = int32(round_half_even(f32(b[c] * f32(1.0f / s_b[c]))))
    M[c]   = f32(f32(f32(s_x) * f32(s_w[c])) / f32(s_out))        must be below 256
    acc    = b_q[c] + sum (x - z_x) * w                           int32; padding reads z_x
    v      = min(f32(f32(acc) * M[c]), f32(q_max - z_out))        no FMA
    q      = clamp(cvtps2dq(v) + z_out, q_min, 127)               zero point after rounding

``q_min`` is -128, or ``z_out`` with a fused ReLU (``xnn_qs8_quantize(0)``). Every x86 variant
(SSE2 to AVX512-VNNI, AMX) rounds with ``cvtps2dq`` and accumulates exactly (AVX2 widens to int16
before ``vpmaddwd``), so the numerics do not depend on the ISA (pt2e-semantics.md section 2).

The other families of its table: ``"quantize"`` (XNNConvert; ``"dequantize"`` is PT2E's own,
engines/pt2e.py), ``"binary"``, ``"clamp"``, ``"cat"`` (engines/xnnpack_elementwise.py);
``"max_pool"``, ``"adaptive_avg_pool"``, ``"mean"``, and the float32 ``"avg_pool"`` and
``"upsample"`` the delegate runs between converts (engines/xnnpack_pooling.py). relu, flatten,
reshape and permute need no kernel (integer max with the zero point, data movement).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from ..dtypes import QINT8
from ..errors import UnsupportedError
from ..requantize import (AddInt32, ClampInt, MinFloat32, MultiplyFloat32, RoundHalfEvenToInt32,
                          ToFloat32)
from ..rounding import f32
from . import pt2e, xnnpack_elementwise, xnnpack_pooling
from .base import (BiasMode, ConvGeometry, ConvKernel, Engine, GemmNumerics, LayerQuantization,
                   Requantization)

SOURCE = ("executorch backends/xnnpack/operators/quant_params.py (bias); XNNPACK "
          "src/operators/convolution-nhwc.c, fully-connected-nc.c, src/qs8-gemm, src/qs8-dwconv")


def quantized_bias(layer: LayerQuantization) -> np.ndarray:
    """The int32 bias ExecuTorch stores in the delegate (``QuantParams.from_bias``)."""
    weight = layer.weight_qparams
    bias = f32(layer.bias)
    if weight.is_per_channel:
        bias_scale = f32(f32(weight.scale) * f32(layer.input_scale))
        inverse = f32(np.float32(1.0) / bias_scale)
    else:  # quantize_per_tensor with the double scale s_w * s_x
        inverse = f32(1.0 / (float(weight.scale) * float(layer.input_scale)))
    scaled = f32(bias * inverse).astype(np.float64)
    return np.clip(np.rint(scaled), -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int64)


def requantization(layer: LayerQuantization) -> Requantization:
    weight = layer.weight_qparams
    output = layer.output_qparams
    multiplier = f32(f32(f32(layer.input_scale) * f32(weight.scale)) / f32(output.scale))
    if np.any(multiplier >= 256):
        raise UnsupportedError(
            f"XNNPACK refuses a requantization scale s_x * s_w / s_out of 256 or more (here up "
            f"to {float(np.max(multiplier))!r}): xnn_create_convolution2d_nhwc_qs8_qc8w and "
            "xnn_create_fully_connected_nc_qs8_qc8w fail, and ExecuTorch cannot run the model")
    zero_point = int(output.zero_point)
    low = max(zero_point, output.dtype.qmin) if layer.relu else output.dtype.qmin
    steps = []
    bias = layer.quantized_bias
    if bias is None and layer.bias is not None:
        bias = quantized_bias(layer)
    if bias is not None:
        bias = np.asarray(bias, dtype=np.int64)
        steps.append(AddInt32("int32 bias, quantized at lowering", role="bias", term=bias))
    steps += [
        ToFloat32("accumulator to float32 (cvtdq2ps)"),
        MultiplyFloat32("M = f32(f32(s_x * s_w) / s_out)", factor=multiplier),
        MinFloat32("cap at q_max - z_out (vminps)", high=float(output.dtype.qmax - zero_point)),
        RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
        AddInt32("output zero point, after rounding (vpaddd)", term=np.int64(zero_point)),
        ClampInt("saturate to int8" + (", raised to z_out by the fused ReLU" if layer.relu else ""),
                 role="output_clamp", low=low, high=output.dtype.qmax),
    ]
    return Requantization(tuple(steps), bias, BiasMode.INT32_AT_LOWERING, (multiplier,))


XNNPACK_GEMM = GemmNumerics(
    name="xnnpack qs8_qc8w gemm",
    source=SOURCE,
    bias_mode=BiasMode.INT32_AT_LOWERING,
    pair_saturation_isas=frozenset(),
    allows_weight_zero_point=False,
    requantization=requantization,
)

XNNPACK_IGEMM = ConvKernel("xnnpack qs8_qc8w igemm", SOURCE, XNNPACK_GEMM, frozenset())
XNNPACK_DWCONV = ConvKernel("xnnpack qs8_qc8w dwconv", SOURCE + " (unipass mul32)", XNNPACK_GEMM,
                            frozenset())


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """Depthwise (one input channel per group) runs ``qs8_qc8w_dwconv``, every other convolution
    the indirect GEMM; both requantize alike (the depthwise kernel's int16 packing saturates
    exactly as the int8 clamp does)."""
    depthwise = geometry.groups > 1 and geometry.in_channels == geometry.groups
    return XNNPACK_DWCONV if depthwise else XNNPACK_IGEMM


def engine(isa: str) -> Engine:
    return Engine("xnnpack", isa, linear=XNNPACK_GEMM, conv=conv_kernel, flow="pt2e",
                  activation_dtypes=(QINT8,),
                  kernels=MappingProxyType({**pt2e.KERNELS, **xnnpack_elementwise.KERNELS,
                                            **xnnpack_pooling.KERNELS}),
                  description="ExecuTorch's XNNPACK delegate (PT2E, XNNPACKQuantizer)")
