"""quantize_per_tensor, quantize_per_channel, dequantize: the only ops that take or give floats.

PyTorch's formulas (torch 2.13, every engine; docs/arithmetic.md eq. 2-4):

    inv = f32(1.0f / f32(scale))                         # a float32 reciprocal, never x / scale
    per-tensor 8-bit:  t = fmaf(x, inv, f32(zp))         # zero point added BEFORE rounding, fused
    per-tensor qint32, per-channel: t = f32(f32(x * inv) + f32(zp))   # two roundings
    q = clamp(round_half_even(t), qmin, qmax)
    dequantize per-tensor:  r = f32(f32(scale) * f32(wrap_int32(q - zp)))
    dequantize per-channel: r = f32(float64(f32(f32(q) - f32(zp))) * scale_c)

Sources: pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
(``quantize_tensor_per_tensor_affine_cpu`` -> ``fbgemm::Quantize``), aten/src/ATen/native/quantized/
AffineQuantizerBase.cpp (``quantize_val``). The sources round before adding the zero point; the
2.13 binary adds it first (a fused multiply-add for 8-bit per-tensor), and qexact follows the binary.

NaN and infinities, as PyTorch maps them (clamping happens after rounding):

    =========  ==================  ==================  =================
    input      per-tensor 8-bit    per-channel 8-bit   qint32 (both)
    =========  ==================  ==================  =================
    NaN        qmax                0                   INT32_MIN
    +inf       qmax                qmax                qmax
    -inf       qmin                qmin                qmin
    =========  ==================  ==================  =================
"""

from __future__ import annotations

import enum

import numpy as np

from ..dtypes import QINT32, QDType
from ..errors import QuantParamError, ShapeError
from ..qparams import QParams, QuantizedArray, qparams_from_fields
from ..rounding import INT32_MIN, f32, fma_float32, round_half_even, wrap_int32
from ..stages import Stage
from ._registry import graph_op


class ZeroPointEntry(enum.Enum):
    """Where the zero point enters a float-to-integer quantization."""

    FUSED_BEFORE_ROUNDING = "fmaf(x, inv, zp), one rounding, then round to integer"
    ADDED_BEFORE_ROUNDING = "f32(f32(x * inv) + zp), then round to integer"
    ADDED_AFTER_ROUNDING = "round(f32(x * inv)) + zp"


def torch_zero_point_entry(dtype: QDType, per_channel: bool) -> ZeroPointEntry:
    """Where PyTorch's eager ``quantize_per_tensor``/``_per_channel`` add the zero point."""
    if per_channel or dtype == QINT32:
        return ZeroPointEntry.ADDED_BEFORE_ROUNDING
    return ZeroPointEntry.FUSED_BEFORE_ROUNDING


def check_float32(x, what: str = "input") -> np.ndarray:
    """``x`` as a float32 NumPy array, or a clear error (no silent float64 -> float32 rounding)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(
            f"{what} must be float32 (as PyTorch quantizes it), got {x.dtype}; "
            "convert it with .astype(np.float32) if that rounding is what you want"
        )
    return x


def reciprocal_float32(scale) -> np.ndarray:
    """``f32(1.0f / f32(scale))``: the float32 reciprocal every quantize multiplies by."""
    return f32(np.float32(1.0) / f32(scale))


def _round_and_clamp(scaled: np.ndarray, dtype: QDType, nan_value: int) -> np.ndarray:
    rounded = round_half_even(scaled.astype(np.float64))
    clamped = np.clip(rounded, dtype.qmin, dtype.qmax)
    clamped = np.where(np.isnan(scaled), nan_value, clamped)
    return clamped.astype(dtype.numpy_dtype)


def quantize_values(x: np.ndarray, inv, zero_point, entry: ZeroPointEntry) -> np.ndarray:
    """``x * inv`` with the zero point entered per ``entry``; float32 before the final rounding.

    For ``ADDED_AFTER_ROUNDING`` the result is already rounded (a float holding an integer).
    """
    zero_point = f32(zero_point)
    if entry is ZeroPointEntry.FUSED_BEFORE_ROUNDING:
        return fma_float32(x, inv, zero_point)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values become inf, as in C
        if entry is ZeroPointEntry.ADDED_BEFORE_ROUNDING:
            return f32(f32(x * inv) + zero_point)
        return round_half_even(f32(x * inv)) + zero_point


def quantize_per_tensor(x, scale: float, zero_point: int, dtype: QDType,
                        entry: ZeroPointEntry | None = None) -> QuantizedArray:
    """Quantize a float32 array with one scale and zero point (``torch.quantize_per_tensor``).

    >>> from qexact.dtypes import QUINT8
    >>> quantize_per_tensor(np.float32([0.0, 0.25, 0.5, 1.0]), 0.5, 3, QUINT8).values
    array([3, 4, 4, 5], dtype=uint8)
    """
    qparams = QParams.per_tensor(scale, zero_point, dtype)
    x = check_float32(x)
    entry = entry or torch_zero_point_entry(dtype, per_channel=False)
    scaled = quantize_values(x, reciprocal_float32(qparams.scale), qparams.zero_point, entry)
    nan_value = INT32_MIN if dtype == QINT32 else dtype.qmax
    return QuantizedArray(_round_and_clamp(scaled, dtype, nan_value), qparams)


def quantize_per_channel(x, scales, zero_points, axis: int, dtype: QDType) -> QuantizedArray:
    """Quantize with one scale and zero point per slice along ``axis`` (``torch.quantize_per_channel``)."""
    x = check_float32(x)
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis!r} out of range for an input of shape {x.shape}")
    axis = axis % x.ndim
    qparams = QParams.per_channel(scales, zero_points, axis, dtype)
    if len(qparams.scale) != x.shape[axis]:
        raise ShapeError(
            f"{len(qparams.scale)} per-channel scales for axis {axis} of size {x.shape[axis]}"
        )
    shape = [1] * x.ndim
    shape[axis] = -1
    inv = reciprocal_float32(qparams.scale).reshape(shape)
    zero = qparams.zero_point.reshape(shape)
    scaled = quantize_values(x, inv, zero, ZeroPointEntry.ADDED_BEFORE_ROUNDING)
    nan_value = INT32_MIN if dtype == QINT32 else 0
    return QuantizedArray(_round_and_clamp(scaled, dtype, nan_value), qparams)


def quantize(x, qparams: QParams) -> QuantizedArray:
    """Quantize with per-tensor or per-channel ``qparams``."""
    if qparams.is_per_channel:
        return quantize_per_channel(x, qparams.scale, qparams.zero_point, qparams.axis, qparams.dtype)
    return quantize_per_tensor(x, qparams.scale, qparams.zero_point, qparams.dtype)


def dequantize(q: QuantizedArray) -> np.ndarray:
    """Float32 values of a quantized array (``Tensor.dequantize``)."""
    qparams = q.qparams
    if qparams.is_per_channel:
        # Per channel, q and zp become float32 first and are subtracted in float32.
        centered = f32(f32(q.values) - f32(_broadcast(qparams.zero_point, q)))
        return f32(centered.astype(np.float64) * _broadcast(qparams.scale, q))
    # Per tensor, ``q - zp`` is an int32 subtraction: it wraps for qint32 values near the ends.
    centered = q.values.astype(np.int64) - qparams.zero_point
    return f32(f32(qparams.scale) * f32(wrap_int32(centered)))


def _broadcast(per_channel_values, q: QuantizedArray):
    if not q.qparams.is_per_channel:
        return per_channel_values
    shape = [1] * q.values.ndim
    shape[q.qparams.axis] = -1
    return np.asarray(per_channel_values).reshape(shape)


@graph_op("quantize", "float32 -> quantized, per tensor (QuantStub / nnq.Quantize)")
class QuantizeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        output = qparams_from_fields(node.attrs, node.arrays, "output")
        return output, output

    @staticmethod
    def run(output: QParams, inputs):
        (x,) = inputs
        if isinstance(x, QuantizedArray):
            raise ShapeError("quantize expects a float32 array, got an already quantized array")
        return quantize(x, output)

    @staticmethod
    def explain(output: QParams, inputs, result, index):
        x = np.asarray(inputs[0])[index]
        inv = reciprocal_float32(output.scale)
        entry = torch_zero_point_entry(output.dtype, per_channel=False)
        scaled = quantize_values(x, inv, output.zero_point, entry)
        formulas = {
            ZeroPointEntry.FUSED_BEFORE_ROUNDING: "t = fmaf(x, inv, z): one rounding, z before rounding",
            ZeroPointEntry.ADDED_BEFORE_ROUNDING: "t = f32(f32(x * inv) + z)",
            ZeroPointEntry.ADDED_AFTER_ROUNDING: "t = round(f32(x * inv)) + z",
        }
        dtype = output.dtype
        return [
            Stage("input quantization: scale", "inv = f32(1.0f / f32(s))",
                  {"s": output.scale}, inv[()] if np.ndim(inv) == 0 else inv),
            Stage("input quantization: multiply-add", formulas[entry],
                  {"x": x, "inv": inv[()], "z": output.zero_point}, scaled),
            Stage("input quantization: round and clamp",
                  f"q = clamp(round_half_even(t), {dtype.qmin}, {dtype.qmax}); NaN -> "
                  f"{INT32_MIN if dtype == QINT32 else dtype.qmax}",
                  {"t": scaled}, result.values[index]),
        ], []


@graph_op("dequantize", "quantized -> float32 (DeQuantStub / nnq.DeQuantize)")
class DequantizeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        require_quantized(node, input_qparams)
        return None, None

    @staticmethod
    def run(params, inputs):
        (x,) = inputs
        if not isinstance(x, QuantizedArray):
            raise ShapeError("dequantize expects a quantized array")
        return dequantize(x)

    @staticmethod
    def explain(params, inputs, result, index):
        q = inputs[0]
        formula = ("r = f32(float64(f32(f32(q) - f32(z))) * s)" if q.qparams.is_per_channel
                   else "r = f32(f32(s) * f32(q - z))")
        return [Stage("dequantize", formula, {"q": q.values[index], "s": q.scale,
                                              "z": q.zero_point}, result[index])], [(0, index)]


def require_quantized(node, input_qparams, index: int = 0) -> QParams:
    """The qparams of input ``index`` of ``node``, which must be a quantized tensor."""
    qparams = input_qparams[index] if index < len(input_qparams) else None
    if qparams is None:
        raise QuantParamError(f"input {index} of {node.op!r} must be a quantized tensor")
    return qparams
