"""torch import handlers for quantized convolutions: nnq.Conv1d/2d/3d, nniq.ConvReLU1d/2d/3d
and nnq.ConvTranspose1d/2d/3d (fused Conv+BN(+ReLU) modules become these on conversion)."""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node
from ._handlers import _resolve, module_handler, module_output_qparams, weighted_layer_fields

_RELU_CLASSES = ("torch.ao.nn.intrinsic.quantized.ConvReLU1d",
                 "torch.ao.nn.intrinsic.quantized.ConvReLU2d",
                 "torch.ao.nn.intrinsic.quantized.ConvReLU3d")


@module_handler(*_RELU_CLASSES, "torch.ao.nn.quantized.Conv1d", "torch.ao.nn.quantized.Conv2d",
                "torch.ao.nn.quantized.Conv3d")
def _conv(module, name, inputs):
    if isinstance(module.padding, str):
        raise UnsupportedError(f"padding={module.padding!r} is not supported; give integers")
    attrs, arrays = weighted_layer_fields(_unpacked_weight(module), module.bias(),
                                          module_output_qparams(module))
    relu_classes = tuple(cls for path in _RELU_CLASSES if (cls := _resolve(path)) is not None)
    attrs.update(stride=[int(s) for s in module.stride], padding=[int(p) for p in module.padding],
                 dilation=[int(d) for d in module.dilation], groups=int(module.groups),
                 padding_mode=str(module.padding_mode),
                 relu=bool(relu_classes) and isinstance(module, relu_classes))
    return Node(name, "conv", inputs, attrs, arrays)


def _unpacked_weight(module):
    try:
        return module.weight()
    except RuntimeError as error:  # QNNPACK: "only supports conv2d_unpack right now"
        raise UnsupportedError(f"torch cannot unpack the weights of this {type(module).__name__} "
                               f"({error}); qexact needs them") from None


@module_handler("torch.ao.nn.quantized.ConvTranspose1d", "torch.ao.nn.quantized.ConvTranspose2d",
                "torch.ao.nn.quantized.ConvTranspose3d")
def _conv_transpose(module, name, inputs):
    if str(getattr(module, "padding_mode", "zeros")) != "zeros":
        raise UnsupportedError(f"ConvTranspose padding_mode {module.padding_mode!r} is not "
                               "supported (PyTorch supports only 'zeros')")
    attrs, arrays = weighted_layer_fields(_unpacked_weight(module), module.bias(),
                                          module_output_qparams(module))
    attrs.update(stride=[int(s) for s in module.stride], padding=[int(p) for p in module.padding],
                 output_padding=[int(p) for p in module.output_padding],
                 dilation=[int(d) for d in module.dilation], groups=int(module.groups))
    return Node(name, "conv_transpose", inputs, attrs, arrays)
