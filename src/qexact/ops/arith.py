"""Python arithmetic in a model's ``forward``: on sizes (``channels // groups``), and on float
tensors between a dequantize and a quantize (``(x - 0.45) / 0.226``, ``y - 1``).

Sizes are Python integers. Float tensors follow ATen's float32 kernels (BinaryOpsKernel.cpp):
a Python number becomes ``f32(c)`` and each operation rounds once, ``x + c``, ``x - c``
(``x + (-1) c``, one rounding either way), ``x * c``, ``x / c`` (a true division, not a multiply
by ``1 / c``), ``c - x``, ``-x``, and ``c / x``, which torch computes as
``f32(f32(1 / x) * c)`` (``Tensor.__rtruediv__``); NumPy's float32 arithmetic is the same IEEE
operation.
"""

from __future__ import annotations

import operator

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op

OPERATORS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
             "floordiv": operator.floordiv, "truediv": operator.truediv, "mod": operator.mod,
             "neg": operator.neg, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
             "le": operator.le, "gt": operator.gt, "ge": operator.ge}
FLOAT_TENSOR_OPERATORS = ("add", "sub", "mul", "truediv", "neg")


def float_arithmetic(name: str, inputs) -> np.ndarray:
    """``name`` on float32 tensors and Python numbers, as ATen's float32 kernels round it."""
    if name not in FLOAT_TENSOR_OPERATORS:
        raise UnsupportedError(f"{name} on float tensors is not supported; supported: "
                               f"{list(FLOAT_TENSOR_OPERATORS)}")
    operands = []
    for value in inputs:
        if isinstance(value, QuantizedArray):
            raise UnsupportedError(f"Python {name} on a quantized tensor is not supported (PyTorch "
                                   "has no such kernel either); use FloatFunctional / "
                                   "torch.ops.quantized")
        if isinstance(value, np.ndarray):
            if value.dtype != np.float32:
                raise ShapeError(f"{name}: float tensors must be float32, got {value.dtype}")
            operands.append(value)
        elif isinstance(value, (bool, int, float, np.number)):
            operands.append(np.float32(value))  # a wrapped number takes the tensor's dtype
        else:
            raise ShapeError(f"{name}: cannot combine {type(value).__name__} with a tensor")
    with np.errstate(all="ignore"):  # inf and NaN as torch gives them
        if name == "truediv" and not isinstance(inputs[0], np.ndarray):
            # c / x is Tensor.__rtruediv__: x.reciprocal() * c (torch/_tensor.py), two roundings
            return np.asarray(np.float32(1) / operands[1] * operands[0], dtype=np.float32)
        return np.asarray(OPERATORS[name](*operands), dtype=np.float32)


@graph_op("arith", "Python arithmetic: on sizes (operator.add/sub/mul/floordiv/mod/neg and "
          "comparisons), and + - * / and negation on float tensors")
class ArithOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        name = node.attrs.get("operator")
        if name not in OPERATORS:
            raise ShapeError(f"unknown arithmetic operator {name!r}; known: {sorted(OPERATORS)}")
        return name, None

    @staticmethod
    def run(name, inputs):
        if any(isinstance(value, (np.ndarray, QuantizedArray)) for value in inputs):
            return float_arithmetic(name, inputs)
        if not all(isinstance(value, (int, float)) for value in inputs):
            raise ShapeError(f"{name} applies to sizes (numbers) and float tensors, got "
                             f"{[type(value).__name__ for value in inputs]}")
        return OPERATORS[name](*inputs)

    @staticmethod
    def explain(name, inputs, result, index):
        shape = np.shape(result)
        operands = [np.broadcast_to(value, shape)[index] if isinstance(value, np.ndarray)
                    else value for value in inputs]
        symbol = {"add": "+", "sub": "-", "mul": "*", "truediv": "/"}.get(name)
        formula = "y = f32(-x)" if name == "neg" else f"y = f32(a {symbol} b), numbers as f32"
        upstream = [(position, index) for position, value in enumerate(inputs)
                    if isinstance(value, np.ndarray) and value.shape == shape]
        return [Stage(f"float {name}", formula, {"operands": operands},
                      np.asarray(result)[index])], upstream


@graph_op("assert", "torch._assert(condition, message) on sizes (shape checks in forward)")
class AssertOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return str(node.attrs.get("message", "")), None

    @staticmethod
    def run(message, inputs):
        if not inputs[0]:
            raise ShapeError(f"the model's own check failed: {message}")
        return None
