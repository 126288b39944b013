"""torch import handlers for quantized convolutions: nnq.Conv1d/2d/3d, nniq.ConvReLU1d/2d/3d
and nnq.ConvTranspose1d/2d/3d (fused Conv+BN(+ReLU) modules become these on conversion)."""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..qparams import qparams_to_fields
from .torch import Node, _import_torch, _output_fields, _qparams_of_tensor, _resolve, module_handler

_RELU_CLASSES = ("torch.ao.nn.intrinsic.quantized.ConvReLU1d",
                 "torch.ao.nn.intrinsic.quantized.ConvReLU2d",
                 "torch.ao.nn.intrinsic.quantized.ConvReLU3d")


@module_handler(*_RELU_CLASSES, "torch.ao.nn.quantized.Conv1d", "torch.ao.nn.quantized.Conv2d",
                "torch.ao.nn.quantized.Conv3d")
def _conv(module, name, inputs):
    torch = _import_torch()
    if isinstance(module.padding, str):
        raise UnsupportedError(f"padding={module.padding!r} is not supported; give integers")
    try:
        weight = module.weight()
    except RuntimeError as error:  # e.g. QNNPACK: "only supports conv2d_unpack right now"
        raise UnsupportedError(f"torch cannot unpack the weights of this {type(module).__name__} "
                               f"({error}); qexact needs them") from None
    attrs, arrays = _output_fields(module)
    weight_attrs, weight_arrays = qparams_to_fields(_qparams_of_tensor(weight), "weight")
    attrs.update(weight_attrs)
    arrays.update(weight_arrays)
    arrays["weight"] = weight.int_repr().numpy().astype(np.int8)
    bias = module.bias()
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    relu_classes = tuple(cls for path in _RELU_CLASSES if (cls := _resolve(path)) is not None)
    attrs.update(stride=[int(s) for s in module.stride], padding=[int(p) for p in module.padding],
                 dilation=[int(d) for d in module.dilation], groups=int(module.groups),
                 padding_mode=str(module.padding_mode),
                 relu=bool(relu_classes) and isinstance(module, relu_classes))
    return Node(name, "conv", inputs, attrs, arrays)


@module_handler("torch.ao.nn.quantized.ConvTranspose1d", "torch.ao.nn.quantized.ConvTranspose2d",
                "torch.ao.nn.quantized.ConvTranspose3d")
def _conv_transpose(module, name, inputs):
    torch = _import_torch()
    if str(getattr(module, "padding_mode", "zeros")) != "zeros":
        raise UnsupportedError(f"ConvTranspose padding_mode {module.padding_mode!r} is not "
                               "supported (PyTorch supports only 'zeros')")
    try:
        weight = module.weight()
    except RuntimeError as error:  # QNNPACK: "only supports conv2d_unpack right now"
        raise UnsupportedError(f"torch cannot unpack the weights of this {type(module).__name__} "
                               f"({error}); qexact needs them") from None
    attrs, arrays = _output_fields(module)
    weight_attrs, weight_arrays = qparams_to_fields(_qparams_of_tensor(weight), "weight")
    attrs.update(weight_attrs)
    arrays.update(weight_arrays)
    arrays["weight"] = weight.int_repr().numpy().astype(np.int8)
    bias = module.bias()
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    attrs.update(stride=[int(s) for s in module.stride], padding=[int(p) for p in module.padding],
                 output_padding=[int(p) for p in module.output_padding],
                 dilation=[int(d) for d in module.dilation], groups=int(module.groups))
    return Node(name, "conv_transpose", inputs, attrs, arrays)
