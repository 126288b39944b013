"""torch import handler for quantized PReLU.

``torch.ao.nn.quantized.PReLU`` holds its slopes as a per-tensor quantized tensor (``.weight``,
quint8 from ``from_float``) and the output's ``scale``/``zero_point``; its forward calls
``torch.ops.quantized.prelu(x, weight, scale, zero_point)``. The node records
``torch.get_num_threads()``: ATen cuts large tensors into one chunk per thread.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import dtype_named
from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import QParams, qparams_to_fields
from ._handlers import _arg, _import_torch, function_handler, module_handler, torch_threads

_DTYPES = {"torch.quint8": "quint8", "torch.qint8": "qint8"}


@module_handler("torch.ao.nn.quantized.PReLU")
def _prelu(module, name, inputs):
    return _prelu_node(name, inputs[:1], module.weight, module.scale, module.zero_point)


@function_handler("torch.ops.quantized.prelu", "torch.ops.quantized.prelu.default")
def _prelu_function(name, args, kwargs):
    """``quantized::prelu(x, weight, output_scale, output_zero_point)`` (TorchScript's node)."""
    weight = _arg(args, kwargs, 1, "weight", None)
    if not getattr(weight, "is_quantized", False):
        raise UnsupportedError("quantized.prelu needs the model's quantized weight tensor")
    return _prelu_node(name, args[:1], weight, _arg(args, kwargs, 2, "output_scale", None),
                       _arg(args, kwargs, 3, "output_zero_point", None))


def _prelu_node(name, inputs, weight, scale, zero_point) -> Node:
    torch = _import_torch()
    dtype = _DTYPES.get(str(weight.dtype))
    if dtype is None or weight.qscheme() != torch.per_tensor_affine:
        raise UnsupportedError(f"{name}: quantized PReLU weight must be a per-tensor quint8/qint8 "
                               f"tensor, got {weight.dtype} {weight.qscheme()}")
    attrs, arrays = qparams_to_fields(
        QParams.per_tensor(float(scale), int(zero_point), dtype_named(dtype)), "output")
    weight_attrs, _ = qparams_to_fields(
        QParams.per_tensor(float(weight.q_scale()), int(weight.q_zero_point()),
                           dtype_named(dtype)), "weight")
    attrs.update(weight_attrs)
    attrs["num_threads"] = torch_threads()
    arrays["weight"] = weight.int_repr().numpy().reshape(-1).astype(np.int64)
    return Node(name, "prelu", tuple(inputs), attrs, arrays)
