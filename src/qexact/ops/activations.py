"""Quantized activations that need no rescaling.

relu: ``q = max(q, zp)`` with the input's qparams (pytorch QuantizedOpKernels.cpp ``qrelu_kernel``):
the zero point is the integer that stands for 0.0, so this is exact and integer-only.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op


def relu(x: QuantizedArray) -> QuantizedArray:
    """Quantized ReLU: ``max(q, zero_point)``; qparams unchanged (``torch.relu`` on a quantized tensor).

    >>> from qexact.qparams import QParams
    >>> from qexact.dtypes import QUINT8
    >>> relu(QuantizedArray(np.uint8([3, 10, 200]), QParams.per_tensor(0.1, 10, QUINT8))).values
    array([ 10,  10, 200], dtype=uint8)
    """
    if x.qparams.is_per_channel:
        raise ShapeError("quantized relu takes per-tensor quantized arrays")
    floor = x.values.dtype.type(x.qparams.zero_point)
    return QuantizedArray(np.maximum(x.values, floor), x.qparams)


def relu_float(x: np.ndarray) -> np.ndarray:
    """``torch.relu`` on floats: ``x < 0 ? 0 : x`` (keeps -0.0 and NaN, as torch does)."""
    return np.where(x < 0, np.zeros((), x.dtype), x)


@graph_op("relu", "ReLU (nn.ReLU, F.relu, torch.relu): quantized, or float between dequantize "
          "and quantize as FX-converted models run it")
class ReluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        x = inputs[0]
        return relu(x) if isinstance(x, QuantizedArray) else relu_float(np.asarray(x))

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        if not isinstance(x, QuantizedArray):
            return [Stage("relu (float)", "y = x < 0 ? 0 : x", {"x": np.asarray(x)[index]},
                          np.asarray(result)[index])], [(0, index)]
        return [Stage("relu", "q = max(q, z): z stands for 0.0",
                      {"q": x.values[index], "z": x.zero_point}, result.values[index])], [(0, index)]
