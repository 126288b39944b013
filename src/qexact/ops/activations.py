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
from .quantize import require_quantized


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


@graph_op("relu", "quantized ReLU (nn.ReLU, F.relu, torch.relu)")
class ReluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, require_quantized(node, input_qparams)

    @staticmethod
    def run(params, inputs):
        return relu(inputs[0])

    @staticmethod
    def explain(params, inputs, result, index):
        q = inputs[0]
        return [Stage("relu", "q = max(q, z): z stands for 0.0",
                      {"q": q.values[index], "z": q.zero_point}, result.values[index])], [(0, index)]
