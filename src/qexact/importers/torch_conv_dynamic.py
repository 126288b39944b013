"""torch import handlers for dynamically quantized convolutions
(``torch.ao.nn.quantized.dynamic.Conv1d/2d/3d``, whose forward calls
``quantized::conv{1,2,3}d_dynamic(input, packed, reduce_range=True)``; TorchScript's
``quantized::conv{1,2,3}d_dynamic``): a ``conv_dynamic`` node (ops/conv_dynamic.py)
with the weight and bias PyTorch's unpack gives."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import qparams_to_fields
from ._handlers import (_arg, _import_torch, _qparams_of_tensor, function_handler,
                        module_handler)
from .torch_conv import _unpacked_weight


def _fields(weight, bias) -> tuple[dict, dict]:
    torch = _import_torch()
    attrs, arrays = qparams_to_fields(_qparams_of_tensor(weight), "weight")
    arrays["weight"] = weight.int_repr().numpy().astype(np.int8)
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    return attrs, arrays


@module_handler("torch.ao.nn.quantized.dynamic.Conv1d", "torch.ao.nn.quantized.dynamic.Conv2d",
                "torch.ao.nn.quantized.dynamic.Conv3d")
def _conv_dynamic_module(module, name, inputs):
    if str(module.padding_mode) != "zeros":
        raise UnsupportedError(f"{name}: dynamic conv with padding_mode {module.padding_mode!r}: "
                               "only 'zeros' is supported")
    if isinstance(module.padding, str):
        raise UnsupportedError(f"{name}: padding={module.padding!r} is not supported")
    if len(inputs) > 1 and inputs[1] is not True:
        raise UnsupportedError(f"{name}: only forward(input) (reduce_range=True) is supported")
    attrs, arrays = _fields(_unpacked_weight(module), module.bias())
    attrs.update(stride=[int(v) for v in module.stride],
                 padding=[int(v) for v in module.padding],
                 dilation=[int(v) for v in module.dilation], groups=int(module.groups),
                 reduce_range=True)
    return Node(name, "conv_dynamic", tuple(inputs[:1]), attrs, arrays)


def _packed_conv_dynamic(dims: int):
    def handler(name, args, kwargs):
        """``quantized::conv{1,2,3}d_dynamic(input, packed_weight, reduce_range)``; a conv1d
        pack is a 2-D one on (N, C, 1, L): ``conv1d_unpack`` gives the 3-D weight, the 2-D
        geometry getters ``[1, v]`` (the last value is the conv1d's)."""
        torch = _import_torch()
        x = _arg(args, kwargs, 0, "input", None)
        packed = _arg(args, kwargs, 1, "packed_weight", None)
        reduce_range = _arg(args, kwargs, 2, "reduce_range", True)
        if not isinstance(reduce_range, bool):
            raise UnsupportedError(f"{name}: reduce_range must be a constant bool")
        ops = torch.ops.quantized
        try:
            weight, bias = getattr(ops, f"conv{dims}d_unpack")(packed)
        except RuntimeError as error:
            raise UnsupportedError(f"{name}: torch cannot unpack the weights ({error})") from None
        attrs, arrays = _fields(weight, bias)
        getter = max(dims, 2)
        attrs.update({field: [int(v) for v in getattr(ops, f"conv{getter}d_{field}")(packed)]
                      [-dims:] for field in ("stride", "padding", "dilation")})
        attrs.update(groups=int(getattr(ops, f"conv{getter}d_groups")(packed)),
                     reduce_range=reduce_range)
        return Node(name, "conv_dynamic", (x,), attrs, arrays)

    return handler


for _dims in (1, 2, 3):
    _path = f"torch.ops.quantized.conv{_dims}d_dynamic"
    function_handler(_path, _path + ".default")(_packed_conv_dynamic(_dims))
