"""Tensors a model holds and uses in ``forward`` (ViT's ``class_token``, Swin's relative-position
bias table and its index buffer, a layer-scale ``gamma``), and the ops that follow them in
FX-converted transformers: ``expand`` (a broadcast view) and ``unbind`` (a tuple of views);
indexing by a constant integer tensor (``table[index]``) is ``getitem`` (``ops.shape``).

A ``constant`` node has no inputs; its array ``value`` is saved with the model: float32 (float
Parameters and buffers), int64 (index buffers), or a quantized tensor's integers with
``output_*`` qparams. None of these ops computes a new number: they move or pick values.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..qparams import QuantizedArray, qparams_from_fields
from ..stages import Stage
from ._registry import graph_op


def _values(x):
    return x.values if isinstance(x, QuantizedArray) else np.asarray(x)


def _rewrap(x, values):
    return QuantizedArray(values, x.qparams) if isinstance(x, QuantizedArray) else values


@graph_op("constant", "a tensor the model holds (Parameter or buffer read in forward): float32, "
          "int64, or quantized (array value, output_* qparams)")
class ConstantOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        value = np.asarray(node.arrays["value"])
        if "output_dtype" in node.attrs:
            qparams = qparams_from_fields(node.attrs, node.arrays, "output")
            return QuantizedArray(value.astype(qparams.dtype.numpy_dtype), qparams), qparams
        if value.dtype not in (np.float32, np.int64, np.bool_):
            raise ShapeError(f"a constant tensor must be float32, int64 or bool, got {value.dtype}")
        return value, None

    @staticmethod
    def run(value, inputs):
        return value

    @staticmethod
    def explain(value, inputs, result, index):
        return [Stage("constant", "a value the model holds", {}, _values(result)[index])], []


def expand(x, sizes):
    """``Tensor.expand(*sizes)``: a broadcast view; -1 keeps a dimension, new leading
    dimensions may be added (torch's rule)."""
    values = _values(x)
    sizes = [int(size) for size in sizes]
    if len(sizes) < values.ndim:
        raise ShapeError(f"expand to {sizes}: fewer sizes than the tensor's {values.ndim} dims")
    lead = len(sizes) - values.ndim
    shape = []
    for position, size in enumerate(sizes):
        if position < lead:
            if size < 0:
                raise ShapeError(f"expand: -1 is not allowed for a new leading dimension ({sizes})")
            shape.append(size)
            continue
        own = values.shape[position - lead]
        target = own if size == -1 else size
        if own != target and own != 1:
            raise ShapeError(f"expand: the size {own} of dim {position - lead} cannot become "
                             f"{target} ({values.shape} -> {sizes})")
        shape.append(target)
    return _rewrap(x, np.broadcast_to(values, tuple(shape)))


@graph_op("expand", "Tensor.expand / expand_as (inputs: tensor, then sizes): a broadcast view")
class ExpandOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        x, *sizes = inputs
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = list(sizes[0])
        if len(sizes) == 1 and isinstance(sizes[0], (np.ndarray, QuantizedArray)):
            sizes = list(_values(sizes[0]).shape)  # expand_as(other)
        return expand(x, sizes)

    @staticmethod
    def explain(params, inputs, result, index):
        source = _values(inputs[0])
        lead = _values(result).ndim - source.ndim
        input_index = tuple(0 if size == 1 else int(i)
                            for size, i in zip(source.shape, tuple(index)[lead:]))
        stage = Stage("expand", "the same value, broadcast", {"from_index": list(input_index)},
                      _values(result)[index])
        return [stage], [(0, input_index)]


@graph_op("unbind", "torch.unbind / Tensor.unbind: a tuple of views (attr dim)")
class UnbindOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return int(node.attrs.get("dim", 0)), input_qparams[0]

    @staticmethod
    def run(dim, inputs):
        x = inputs[0]
        values = _values(x)
        if not -values.ndim <= dim < values.ndim:
            raise ShapeError(f"unbind: dim {dim} out of range for a {values.ndim}-D tensor")
        return tuple(_rewrap(x, np.take(values, i, axis=dim)) for i in range(values.shape[dim]))
