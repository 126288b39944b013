"""What the accumulate-then-requantize ops (Linear, Conv, ConvTranspose) share about their
activations: the types the engine's kernels take, and an output that is quantized or float32."""

from __future__ import annotations

import numpy as np

from ..engines.base import BiasMode
from ..kernels import active_backend
from ..requantize import requantize
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray


def check_activations(what: str, engine, input_qparams: QParams,
                      output_qparams: QParams | None) -> None:
    """Raise ``QuantParamError`` unless the engine's kernels take these activations: per-tensor,
    of one of ``engine.activation_dtypes``; a float32 output (None) only with ``float_output``."""
    allowed = engine.activation_dtypes
    names = " or ".join(dtype.name for dtype in allowed)
    for role, qparams in (("input", input_qparams), ("output", output_qparams)):
        if qparams is None and role == "output" and engine.float_output:
            continue
        if qparams is None:
            raise QuantParamError(f"quantized {what} on engine {engine.name!r} needs quantized "
                                  f"{role}s; its kernels have no float32 {role}")
        if qparams.is_per_channel or qparams.dtype not in allowed:
            raise QuantParamError(f"quantized {what} on engine {engine.name!r} needs per-tensor "
                                  f"{names} {role}s, got {qparams.describe()}")


def output_dtype(output_qparams: QParams | None) -> np.dtype:
    """The NumPy type the epilogue's last step gives: the output's integers, or float32."""
    return np.dtype(np.float32) if output_qparams is None else output_qparams.dtype.numpy_dtype


def quantized_or_float(values: np.ndarray, output_qparams: QParams | None):
    """The op's result: a ``QuantizedArray``, or the float32 array itself (no output qparams)."""
    return values if output_qparams is None else QuantizedArray(values, output_qparams)


def check_quantized_bias(quantized_bias, numerics, channels: int) -> np.ndarray | None:
    """A stored int32 bias (a ``.pte``'s), which only a kernel whose bias is fixed at lowering
    takes (``BiasMode.INT32_AT_LOWERING``)."""
    if quantized_bias is None:
        return None
    quantized_bias = np.asarray(quantized_bias)
    if numerics.bias_mode is not BiasMode.INT32_AT_LOWERING:
        raise UnsupportedError(f"{numerics.name} adds a float bias; this layer has only the "
                               "int32 bias of a lowered model (run it on engine 'xnnpack')")
    if quantized_bias.dtype != np.int32 or quantized_bias.shape != (channels,):
        raise ShapeError(f"the int32 bias must be int32 of shape ({channels},), got "
                         f"{quantized_bias.dtype} {quantized_bias.shape}")
    return quantized_bias


def gemm_output(params, steps, arrange, fast_output, accumulator) -> np.ndarray:
    """A GEMM layer's result laid out by ``arrange``: on the fast backend ``fast_output()``
    (compiled kernels; None where they do not apply), else the engine's ``steps`` (operands
    bound) on ``accumulator()`` through ``requantize``, the definition."""
    if active_backend() == "fast":
        result = fast_output()
        if result is not None:
            return arrange(result)
    return requantize(accumulator(), steps, output_dtype(params.output_qparams), arrange=arrange)
