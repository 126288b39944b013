"""Movement ops on quantized tensors (flatten, reshape/view, identity) and shape arithmetic.

None of these touches a value: a quantized tensor keeps its integers and qparams. ``size`` and
``getitem`` evaluate the shape arithmetic a model's ``forward`` does (``x.view(x.size(0), -1)``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op


def _values(x):
    return x.values if isinstance(x, QuantizedArray) else np.asarray(x)


def _rewrap(x, values):
    return QuantizedArray(values, x.qparams) if isinstance(x, QuantizedArray) else values


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    """``torch.flatten``: merge dims ``start_dim..end_dim`` into one."""
    values = _values(x)
    if values.ndim == 0:
        return _rewrap(x, values.reshape(1))
    start, end = start_dim % values.ndim, end_dim % values.ndim
    if start > end:
        raise ShapeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shape = values.shape[:start] + (math.prod(values.shape[start:end + 1]),) + values.shape[end + 1:]
    return _rewrap(x, values.reshape(shape))


def reshape(x, shape: tuple[int, ...]):
    """``Tensor.reshape``/``view``: one dimension may be -1."""
    values = _values(x)
    shape = tuple(int(size) for size in shape)
    try:
        return _rewrap(x, values.reshape(shape))
    except ValueError:
        raise ShapeError(f"cannot reshape an array of shape {values.shape} into {shape}") from None


def _explain_move(name):
    """An explain hook for ops that only move elements: which input element this one is."""

    def explain(params, inputs, result, index):
        source = _values(inputs[0])
        flat = int(np.ravel_multi_index(index, _values(result).shape))
        input_index = tuple(int(i) for i in np.unravel_index(flat, source.shape))
        stage = Stage(name, "the same integer, moved", {"from_index": list(input_index),
                                                        "to_index": list(index)},
                      _values(result)[index])
        return [stage], [(0, input_index)]

    return staticmethod(explain)


@graph_op("flatten", "torch.flatten / Tensor.flatten / nn.Flatten")
class FlattenOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return (int(node.attrs.get("start_dim", 0)), int(node.attrs.get("end_dim", -1))), input_qparams[0]

    @staticmethod
    def run(params, inputs):
        return flatten(inputs[0], *params)

    explain = _explain_move("flatten")


@graph_op("reshape", "Tensor.reshape / view / torch.reshape (inputs: tensor, then sizes)")
class ReshapeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        sizes = inputs[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        return reshape(inputs[0], tuple(sizes))

    explain = _explain_move("reshape")


@graph_op("identity", "nn.Identity, nn.Dropout in eval, Tensor.contiguous")
class IdentityOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        return inputs[0]

    explain = _explain_move("identity")


@graph_op("size", "Tensor.size / shape: a tuple, or one size with attr dim")
class SizeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return node.attrs.get("dim"), None

    @staticmethod
    def run(dim, inputs):
        shape = tuple(int(size) for size in _values(inputs[0]).shape)
        return shape if dim is None else shape[dim]


@graph_op("getitem", "indexing into a shape tuple")
class GetItemOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, None

    @staticmethod
    def run(params, inputs):
        container, index = inputs
        if isinstance(container, QuantizedArray) or isinstance(container, np.ndarray):
            raise ShapeError("indexing tensors is not supported; only shape tuples")
        return container[index]
