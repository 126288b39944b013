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
from ..requantize import (AddInt32, ClampFloat32, ClampInt, MinFloat32, MultiplyAddFloat32,
                          MultiplyFloat32, MultiplyOperandFloat32, RoundHalfEvenToInt32,
                          ToFloat32)
from ..rounding import f32
from . import pt2e, xnnpack_elementwise, xnnpack_pooling
from .base import (BiasMode, ConvGeometry, ConvKernel, DynamicQuantization, Engine, GemmNumerics,
                   LayerQuantization, Requantization, RowQuantization)

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


# --- dynamically quantized Linear: qd8_f32_qc8w ------------------------------------------------

DYNAMIC_SOURCE = ("executorch backends/xnnpack/operators/quant_params.py (a per-tensor dynamic "
                  "quantize lowered per row: PerTokenDynamicQuant); XNNPACK src/microparams-init.c"
                  " xnn_qd8_asymmetric_quantization_params, src/f32-qs8-vcvt, "
                  "src/qd8-f32-qc8w-gemm")


def qd8_parameters(rows: np.ndarray) -> RowQuantization:
    """XNNPACK's per-row asymmetric int8 parameters (``xnn_qd8_asymmetric_quantization_params``)::

        rmin = min(row min, 0), rmax = max(row max, 0)
        S    = 1 if rmin == rmax else f32(255 / f32(rmax - rmin))        the quantize multiplier
        dmin = f32(rmin S), dmax = f32(rmax S)
        z    = f32(-128 - dmin) if f32(f32(-128 + dmin) + f32(127 + dmax)) > 0 else f32(127 - dmax)
        zp   = lrintf(clamp(z, -128, 127)),  scale = f32(1 / S)          (rounded to even)

    Rows holding NaN or an infinity are not modelled (ops/linear_dynamic.py refuses them)."""
    rows = np.asarray(rows, np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        low = np.minimum(rows.min(axis=-1), np.float32(0))
        high = np.maximum(rows.max(axis=-1), np.float32(0))
        multiplier = np.where(low == high, np.float32(1),
                              f32(np.float32(255) / f32(high - low))).astype(np.float32)
        scaled_low, scaled_high = f32(low * multiplier), f32(high * multiplier)
        from_low = f32(np.float32(-128) - scaled_low)
        from_high = f32(np.float32(127) - scaled_high)
        use_low = f32(f32(np.float32(-128) + scaled_low) + f32(np.float32(127) + scaled_high)) > 0
        zero = np.where(use_low, from_low, from_high)
        zero = np.where(np.isnan(zero), np.float32(-128), np.clip(zero, -128, 127))
        scale = f32(np.float32(1) / multiplier)
    return RowQuantization(multiplier, np.rint(zero).astype(np.int64), scale)


def qd8_quantize(rows: np.ndarray, p: RowQuantization) -> np.ndarray:
    """``q = sat8(rne(min(f32(x S), 127 - zp)) + zp)``: XNNPACK's f32-qs8 convert, the zero
    point added after rounding."""
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = f32(np.asarray(rows, np.float32) * p.multiplier[:, None])
        capped = np.minimum(scaled, f32(127 - p.zero_point)[:, None])
        rounded = np.rint(capped.astype(np.float64))
    rounded = np.clip(np.nan_to_num(rounded, nan=0.0), -2.0 ** 31, 2.0 ** 31 - 1)
    return np.clip(rounded.astype(np.int64) + p.zero_point[:, None], -128, 127)


def qd8_requantization(weight_qparams, bias, relu: bool) -> Requantization:
    """``y = fmaf(f32(f32(acc) * scale_row), s_w[c], b[c])`` (one FMA; the bias stays float32),
    then the fused ReLU's ``max(y, 0)`` (qd8_f32_qc8w gemm minmax, AVX2 and above)."""
    weight_scale = f32(weight_qparams.scale)
    term = f32(bias) if bias is not None else np.zeros_like(np.atleast_1d(weight_scale))
    steps = [ToFloat32("accumulator to float32 (vcvtdq2ps)"),
             MultiplyOperandFloat32("times the row's scale f32(1 / S) (vmulps)",
                                    role="input_scale"),
             MultiplyAddFloat32("fmaf(v, s_w, b): weight scale and float bias (vfmadd)",
                                role="bias", factor=weight_scale, term=term, fused=True)]
    if relu:
        steps.append(ClampFloat32("ReLU (output_min = 0)", role="relu", low=0.0))
    return Requantization(tuple(steps), None if bias is None else term, BiasMode.FLOAT32,
                          (weight_scale,))


QD8 = DynamicQuantization("xnnpack qd8_f32_qc8w gemm (per-row dynamic int8)", DYNAMIC_SOURCE,
                          QINT8, qd8_parameters, qd8_quantize, qd8_requantization)

XNNPACK_GEMM = GemmNumerics(
    name="xnnpack qs8_qc8w gemm",
    source=SOURCE,
    bias_mode=BiasMode.INT32_AT_LOWERING,
    pair_saturation_isas=frozenset(),
    allows_weight_zero_point=False,
    requantization=requantization,
    dynamic=QD8,
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
