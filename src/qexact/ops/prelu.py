"""Quantized PReLU: ``torch.ops.quantized.prelu(x, weight, output_scale, output_zero_point)``
(``torch.ao.nn.quantized.PReLU``).

pytorch aten/src/ATen/native/quantized/cpu/qprelu.cpp allocates the output in
``x.suggest_memory_format()`` and calls ``qprelu_out_kernel``
(aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp). The quantized weight (one
value, or one per channel) is reshaped to ``(1, C, 1, ...)`` when its rank differs from ``x``'s
and broadcast by TensorIterator. The kernel is integer arithmetic plus one float multiply:

    m     = f32(f32(f32(s_x) f32(s_w)) f32(1 / f32(s_o)))               (offline)
    w_one = quantize_val(s_w, z_w, 1.0)          the weight's integer for slope 1.0
    c     = (max(q_x, z_x) - z_x)(w_one - z_w) + (min(q_x, z_x) - z_x)(q_w - z_w)
    scalar tail: q = clamp(z_o + lrintf(f32(f32(c) m)))       (requantize_from_int, int64)
    SIMD body:   q = clamp(wrap32(cvtps2dq(f32(f32(c) m)) + z_o))   (RequantizeAvx2)

Both paths agree unless ``f32(c) m`` does not fit int32: then ``cvtps2dq`` gives INT32_MIN (and
adding a negative zero point wraps to near INT32_MAX), while the scalar ``lrintf`` saturates
naturally. Which element takes which path is ``qexact.engines.aten.simd_mask`` over the iteration
order (channels_last inputs walk N, H, W, C); measured on AVX2 and ATEN_CPU_CAPABILITY=default.
No engine hands PReLU to another library: fbgemm, x86, qnnpack and onednn all run this kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import QDType
from ..engines.aten import ElementwiseNumerics, default_num_threads, elementwise_numerics, simd_mask
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray, qparams_from_fields
from ..rounding import f32, round_half_even_to_int32, wrap_int32
from ..stages import Stage
from ._registry import graph_op
from .elementwise import inverse_scale, quantize_scalar
from .quantize import require_quantized

INT64_MIN = -2 ** 63


@dataclass(frozen=True)
class PreluParams:
    """A quantized PReLU prepared for one engine.

    ``weight``: the quantized slopes (1-D, one value or one per channel); ``weight_qparams``,
    ``input_qparams``, ``output_qparams``: per-tensor; ``multiplier``: ``m`` of the module
    docstring; ``weight_one``: ``quantize_val(s_w, z_w, 1.0)``; ``numerics``: ATen's elementwise
    numerics on this engine; ``num_threads``: PyTorch's intra-op threads.
    """

    weight: np.ndarray
    weight_qparams: QParams
    input_qparams: QParams
    output_qparams: QParams
    multiplier: np.float32
    weight_one: int
    numerics: ElementwiseNumerics
    num_threads: int


def prepare_prelu(weight: np.ndarray, weight_qparams: QParams, input_qparams: QParams,
                  output_qparams: QParams, engine="fbgemm", num_threads: int | None = None,
                  isa: str | None = None) -> PreluParams:
    """Validate and prepare ``quantized::prelu``."""
    from ..engines import get_engine

    for name, qparams in (("input", input_qparams), ("weight", weight_qparams),
                          ("output", output_qparams)):
        if qparams.is_per_channel:
            raise QuantParamError(f"quantized prelu: {name} must be per-tensor quantized")
    dtype = input_qparams.dtype
    if dtype.bits != 8:
        raise UnsupportedError(f"quantized prelu on {dtype} is not supported (8-bit only)")
    if not weight_qparams.dtype == output_qparams.dtype == dtype:
        raise QuantParamError(f"quantized prelu: dtypes differ (input {dtype}, weight "
                              f"{weight_qparams.dtype}, output {output_qparams.dtype}); PyTorch "
                              "requires one dtype")
    weight = np.asarray(weight)
    if weight.ndim != 1 or weight.size == 0:
        raise ShapeError(f"quantized prelu: weight must be 1-D and non-empty, got {weight.shape}")
    if weight.min() < dtype.qmin or weight.max() > dtype.qmax:
        raise QuantParamError(f"quantized prelu: weight values outside {dtype}")
    multiplier = f32(f32(f32(input_qparams.scale) * f32(weight_qparams.scale))
                     * inverse_scale(output_qparams.scale))[()]
    one = quantize_scalar(np.float32(1.0), inverse_scale(weight_qparams.scale),
                          weight_qparams.zero_point, dtype)[()]
    numerics = elementwise_numerics(get_engine(engine, isa))
    return PreluParams(weight.astype(np.int64), weight_qparams, input_qparams, output_qparams,
                       multiplier, int(one), numerics, int(num_threads or default_num_threads()))


def _weight_shape(p: PreluParams, ndim: int) -> tuple[int, ...]:
    """qprelu_out_kernel's reshape: ``(1, C, 1, ...)`` when the ranks differ."""
    if ndim == 1:
        return (p.weight.size,)
    shape = [1] * ndim
    shape[1] = p.weight.size
    return tuple(shape)


def _broadcast_weight(p: PreluParams, shape: tuple[int, ...]) -> np.ndarray:
    weight_shape = _weight_shape(p, len(shape))
    try:
        return np.broadcast_to(p.weight.reshape(weight_shape), shape)
    except ValueError:
        raise ShapeError(f"quantized prelu: {p.weight.size} weights do not broadcast over input "
                         f"{shape} (weight shape {weight_shape})") from None


def prelu_mask(p: PreluParams, x: np.ndarray) -> np.ndarray:
    """True where ``cpu_kernel_vec`` runs the SIMD lambda. TensorIterator walks a channels_last
    input (and its channels_last output) in N, H, W, C order; others in C order."""
    from ..layout import suggests_channels_last

    shape = x.shape
    weight_shape = _weight_shape(p, x.ndim)
    if suggests_channels_last(x):
        order = (0,) + tuple(range(2, x.ndim)) + (1,)
        memory = tuple(shape[d] for d in order)
        mask = simd_mask(p.numerics, memory, [memory, tuple(weight_shape[d] for d in order)],
                         p.num_threads)
        return mask.transpose(np.argsort(order))
    return simd_mask(p.numerics, shape, [shape, weight_shape], p.num_threads)


def _accumulate(p: PreluParams, qx: np.ndarray, qw: np.ndarray) -> np.ndarray:
    zx, zw = int(p.input_qparams.zero_point), int(p.weight_qparams.zero_point)
    qx = qx.astype(np.int64)
    return ((np.maximum(qx, zx) - zx) * (p.weight_one - zw)
            + (np.minimum(qx, zx) - zx) * (qw.astype(np.int64) - zw))


def _requantize(p: PreluParams, acc: np.ndarray, simd: np.ndarray) -> np.ndarray:
    dtype: QDType = p.output_qparams.dtype
    zo = int(p.output_qparams.zero_point)
    scaled = f32(f32(acc) * p.multiplier)
    body = wrap_int32(round_half_even_to_int32(scaled) + zo)
    rounded = np.rint(scaled.astype(np.float64))
    fits = (rounded >= -2.0 ** 63) & (rounded < 2.0 ** 63)  # False for NaN: cvtss2si indefinite
    tail = np.where(fits, rounded, float(INT64_MIN)) + zo
    return np.clip(np.where(simd, body, tail), dtype.qmin, dtype.qmax).astype(np.int64)


def prelu(x: QuantizedArray, p: PreluParams) -> QuantizedArray:
    """Quantized PReLU of ``x`` with ``p.output_qparams`` (output keeps ``x``'s memory format)."""
    from .elementwise import like_memory_format

    values = np.asarray(x.values)
    if values.ndim == 0:
        raise ShapeError("qprelu: zero-dim input tensor is not allowed")
    if x.qparams.is_per_channel or x.qparams.dtype != p.input_qparams.dtype:
        raise QuantParamError("quantized prelu: input does not match the prepared qparams")
    qw = _broadcast_weight(p, values.shape)
    out = _requantize(p, _accumulate(p, values, qw), prelu_mask(p, values))
    dtype = p.output_qparams.dtype
    return QuantizedArray(like_memory_format(out.astype(dtype.numpy_dtype), values),
                          p.output_qparams)


def explain_prelu(p: PreluParams, x: QuantizedArray, result: QuantizedArray, index) -> list:
    values = np.asarray(x.values)
    qx = int(values[index])
    qw = int(_broadcast_weight(p, values.shape)[index])
    simd = bool(prelu_mask(p, values)[index])
    zx, zw = p.input_qparams.zero_point, p.weight_qparams.zero_point
    zo = p.output_qparams.zero_point
    sx, sw = p.input_qparams.scale, p.weight_qparams.scale
    acc = int(_accumulate(p, np.asarray(qx), np.asarray(qw)))
    dx = float(f32(f32(sx) * f32(qx - zx)))
    slope = float(f32(f32(sw) * f32(qw - zw)))
    path = (f"SIMD body ({p.numerics.capability}, units of {p.numerics.body_unit})" if simd
            else "scalar tail (basic_loop)")
    return [
        Stage("prelu: dequantize x (for reference)", "x = f32(s_x (q_x - z_x))",
              {"q_x": qx, "s_x": sx, "z_x": zx}, dx),
        Stage("prelu: dequantize slope (for reference)", "a = f32(s_w (q_w - z_w))",
              {"q_w": qw, "s_w": sw, "z_w": zw}, slope),
        Stage("prelu: float formula", "y = x >= 0 ? x : a x (computed in integers below)",
              {"x": dx, "a": slope}, dx if dx >= 0 else dx * slope),
        Stage("prelu: slope one (offline)", "w_one = quantize_val(s_w, z_w, 1.0)",
              {"s_w": sw, "z_w": zw}, p.weight_one),
        Stage("prelu: multiplier (offline)", "m = f32(f32(f32(s_x) f32(s_w)) f32(1/f32(s_o)))",
              {"s_x": sx, "s_w": sw, "s_o": p.output_qparams.scale}, p.multiplier),
        Stage("prelu: integer product",
              "c = (max(q_x, z_x) - z_x)(w_one - z_w) + (min(q_x, z_x) - z_x)(q_w - z_w)",
              {"q_x": qx, "z_x": zx, "w_one": p.weight_one, "q_w": qw, "z_w": zw}, acc),
        Stage("prelu: path", "which lambda of cpu_kernel_vec runs this element", {"path": path}),
        Stage("prelu: requantize", ("q = clamp(wrap32(cvtps2dq(f32(f32(c) m)) + z_o)) "
                                    "(RequantizeAvx2)" if simd else
                                    "q = clamp(z_o + lrintf(f32(f32(c) m))) (requantize_from_int)"),
              {"c": acc, "m": p.multiplier, "z_o": zo}, result.values[index]),
    ]


@graph_op("prelu", "quantized PReLU (nnq.PReLU, torch.ops.quantized.prelu)")
class PreluOp:
    """Graph node: array ``weight`` (quantized slopes), attrs weight and output qparams,
    ``num_threads``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        input_qparams = require_quantized(node, input_qparams, 0)
        params = prepare_prelu(node.arrays["weight"],
                               qparams_from_fields(node.attrs, node.arrays, "weight"),
                               input_qparams,
                               qparams_from_fields(node.attrs, node.arrays, "output"),
                               engine=engine, num_threads=node.attrs.get("num_threads"))
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return prelu(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return explain_prelu(params, inputs[0], result, index), [(0, index)]
