"""torch import handlers for quantized convolutions: nnq.Conv1d/2d/3d, nniq.ConvReLU1d/2d/3d
and nnq.ConvTranspose1d/2d/3d (fused Conv+BN(+ReLU) modules become these on conversion); the
kernels they call, ``torch.ops.quantized.conv2d`` ... and ``linear`` (TorchScript's nodes)."""

from __future__ import annotations

from ..dtypes import dtype_named
from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import QParams
from ._handlers import (_arg, _import_torch, _resolve, function_handler, module_handler,
                        module_output_qparams, weighted_layer_fields)

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


# --- The kernels themselves: torch.ops.quantized.conv2d(x, packed, scale, zero_point) ----------
# TorchScript records nnq.Conv2d's forward as ``quantized::conv2d(x, packed, scale, zp)``; the
# packed parameters are read back with the kernel's own unpack and accessors.


def _packed_conv(spatial: int, transpose: bool, relu: bool):
    def handler(name, args, kwargs):
        torch = _import_torch()
        x = _arg(args, kwargs, 0, "qx", None)
        packed = _arg(args, kwargs, 1, "packed_weight", None)
        scale = _arg(args, kwargs, 2, "output_scale", None)
        zero_point = _arg(args, kwargs, 3, "output_zero_point", None)
        if scale is None or zero_point is None:
            raise UnsupportedError("a quantized convolution needs a constant output scale and "
                                   "zero point")
        ops = torch.ops.quantized
        # conv1d packs as a 2-d convolution with a height-1 kernel (quantized/cpu/qconv.cpp)
        accessor = "conv3d" if spatial == 3 else "conv2d"
        unpack = {(1, False): "conv1d_unpack", (1, True): "conv_transpose1d_unpack",
                  (2, False): "conv2d_unpack", (2, True): "conv_transpose2d_unpack",
                  (3, False): "conv3d_unpack", (3, True): "conv_transpose3d_unpack"}
        try:
            weight, bias = getattr(ops, unpack[spatial, transpose])(packed)
            stride, padding, dilation, groups, output_padding = (
                getattr(ops, f"{accessor}_{field}")(packed)
                for field in ("stride", "padding", "dilation", "groups", "output_padding"))
        except (RuntimeError, AttributeError) as error:
            raise UnsupportedError(f"torch cannot unpack the weights of this convolution "
                                   f"({str(error).strip().splitlines()[0]}); qexact needs them"
                                   ) from None
        stride, padding, dilation, output_padding = (
            [int(v) for v in values][-spatial:] for values in (stride, padding, dilation,
                                                               output_padding))
        attrs, arrays = weighted_layer_fields(
            weight, bias, QParams.per_tensor(float(scale), int(zero_point), dtype_named("quint8")))
        attrs.update(stride=stride, padding=padding, dilation=dilation, groups=int(groups))
        if transpose:
            attrs["output_padding"] = output_padding
            return Node(name, "conv_transpose", (x,), attrs, arrays)
        attrs.update(padding_mode="zeros", relu=relu)
        return Node(name, "conv", (x,), attrs, arrays)

    return handler


for _spatial in (1, 2, 3):
    for _relu in (False, True):
        _path = f"torch.ops.quantized.conv{_spatial}d{'_relu' if _relu else ''}"
        function_handler(_path, _path + ".default")(_packed_conv(_spatial, False, _relu))
    _path = f"torch.ops.quantized.conv_transpose{_spatial}d"
    function_handler(_path, _path + ".default")(_packed_conv(_spatial, True, False))


def _packed_linear(relu: bool):
    def handler(name, args, kwargs):
        """``quantized::linear(x, packed, scale, zero_point)`` (nnq.Linear's forward)."""
        torch = _import_torch()
        x = _arg(args, kwargs, 0, "X", None)
        packed = _arg(args, kwargs, 1, "W_prepack", None)
        scale = _arg(args, kwargs, 2, "Y_scale_i", None)
        zero_point = _arg(args, kwargs, 3, "Y_zero_point_i", None)
        weight, bias = torch.ops.quantized.linear_unpack(packed)
        attrs, arrays = weighted_layer_fields(
            weight, bias, QParams.per_tensor(float(scale), int(zero_point), dtype_named("quint8")))
        attrs["relu"] = relu
        return Node(name, "linear", (x,), attrs, arrays)

    return handler


function_handler("torch.ops.quantized.linear", "torch.ops.quantized.linear.default")(
    _packed_linear(False))
function_handler("torch.ops.quantized.linear_relu", "torch.ops.quantized.linear_relu.default")(
    _packed_linear(True))
