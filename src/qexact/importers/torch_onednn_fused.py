"""torch import handlers for oneDNN's fused quantized ops (PyTorch runs them on the ``onednn``
engine only): ``nniq.LinearLeakyReLU``, ``nniq.LinearTanh``, ``nniq.ConvAdd2d``,
``nniq.ConvAddReLU2d`` (FX with the onednn backend config fuses linear + leaky_relu / tanh and
conv + add (+ relu) into them), and the kernels they call, ``torch.ops.quantized.
linear_leaky_relu`` / ``linear_tanh`` / ``conv2d_add`` / ``conv2d_add_relu``.

PyTorch's oneDNN packed weights cache their primitive on first use (qlinear.cpp, qconv.cpp): a
pack called by two different ops gives the first op's post-ops to both. A converted model has one
pack and one op per module, so the module's own op is what runs.

``conv2d_add(x, accum, ...)`` writes its result into ``accum`` when ``accum`` is already
channels-last contiguous (as every quantized conv output is): a model that reads the residual
again after the add sees PyTorch's overwritten values (measured, torch 2.13). qexact keeps the
residual's own values; such graphs differ from PyTorch there.
"""

from __future__ import annotations

from ..dtypes import dtype_named
from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import QParams
from ._handlers import (_arg, _import_torch, function_handler, module_handler,
                        module_output_qparams, weighted_layer_fields)
from .torch_conv import _unpacked_weight


@module_handler("torch.ao.nn.intrinsic.quantized.LinearLeakyReLU")
def _linear_leaky_relu(module, name, inputs):
    attrs, arrays = weighted_layer_fields(module.weight(), module.bias(),
                                          module_output_qparams(module))
    attrs.update(relu=False, eltwise=["leaky_relu", float(module.negative_slope)])
    return Node(name, "linear", inputs, attrs, arrays)


@module_handler("torch.ao.nn.intrinsic.quantized.LinearTanh")
def _linear_tanh(module, name, inputs):
    attrs, arrays = weighted_layer_fields(module.weight(), module.bias(),
                                          module_output_qparams(module))
    attrs.update(relu=False, eltwise=["tanh"])
    return Node(name, "linear", inputs, attrs, arrays)


@module_handler("torch.ao.nn.intrinsic.quantized.ConvAdd2d",
                "torch.ao.nn.intrinsic.quantized.ConvAddReLU2d")
def _conv_add(module, name, inputs):
    """``forward(input, extra_input)``: conv(input) + extra_input (+ ReLU), a oneDNN "sum"."""
    if isinstance(module.padding, str):
        raise UnsupportedError(f"padding={module.padding!r} is not supported; give integers")
    if str(module.padding_mode) != "zeros":
        raise UnsupportedError(f"{type(module).__name__} with padding_mode "
                               f"{module.padding_mode!r}: only 'zeros' is supported")
    if len(inputs) != 2:
        raise UnsupportedError(f"{type(module).__name__} takes (input, extra_input), got "
                               f"{len(inputs)} inputs")
    attrs, arrays = weighted_layer_fields(_unpacked_weight(module), module.bias(),
                                          module_output_qparams(module))
    attrs.update(stride=[int(s) for s in module.stride], padding=[int(p) for p in module.padding],
                 dilation=[int(d) for d in module.dilation], groups=int(module.groups),
                 padding_mode="zeros", relu=type(module).__name__ == "ConvAddReLU2d")
    return Node(name, "conv", inputs, attrs, arrays)


def _output_qparams(scale, zero_point) -> QParams:
    if scale is None or zero_point is None:
        raise UnsupportedError("a quantized fused op needs a constant output scale and zero point")
    return QParams.per_tensor(float(scale), int(zero_point), dtype_named("quint8"))


def _packed_linear_eltwise(kind: str):
    def handler(name, args, kwargs):
        """``quantized::linear_leaky_relu(x, packed, scale, zp, negative_slope)`` /
        ``quantized::linear_tanh(x, packed, scale, zp)``."""
        torch = _import_torch()
        x = _arg(args, kwargs, 0, "X", None)
        packed = _arg(args, kwargs, 1, "W_prepack", None)
        output = _output_qparams(_arg(args, kwargs, 2, "Y_scale_i", None),
                                 _arg(args, kwargs, 3, "Y_zero_point_i", None))
        weight, bias = torch.ops.quantized.linear_unpack(packed)
        attrs, arrays = weighted_layer_fields(weight, bias, output)
        eltwise = ["tanh"]
        if kind == "leaky_relu":
            eltwise = ["leaky_relu", float(_arg(args, kwargs, 4, "negative_slope", None))]
        attrs.update(relu=False, eltwise=eltwise)
        return Node(name, "linear", (x,), attrs, arrays)

    return handler


def _packed_conv_add(relu: bool):
    def handler(name, args, kwargs):
        """``quantized::conv2d_add(qx, qaccum, packed_weight, output_scale, output_zero_point)``."""
        torch = _import_torch()
        x = _arg(args, kwargs, 0, "qx", None)
        accum = _arg(args, kwargs, 1, "qaccum", None)
        packed = _arg(args, kwargs, 2, "packed_weight", None)
        output = _output_qparams(_arg(args, kwargs, 3, "output_scale", None),
                                 _arg(args, kwargs, 4, "output_zero_point", None))
        ops = torch.ops.quantized
        weight, bias = ops.conv2d_unpack(packed)
        stride, padding, dilation, groups = (
            getattr(ops, f"conv2d_{field}")(packed)
            for field in ("stride", "padding", "dilation", "groups"))
        attrs, arrays = weighted_layer_fields(weight, bias, output)
        attrs.update(stride=[int(v) for v in stride], padding=[int(v) for v in padding],
                     dilation=[int(v) for v in dilation], groups=int(groups),
                     padding_mode="zeros", relu=relu)
        return Node(name, "conv", (x, accum), attrs, arrays)

    return handler


for _kind in ("leaky_relu", "tanh"):
    _path = f"torch.ops.quantized.linear_{_kind}"
    function_handler(_path, _path + ".default")(_packed_linear_eltwise(_kind))
for _relu in (False, True):
    _path = f"torch.ops.quantized.conv2d_add{'_relu' if _relu else ''}"
    function_handler(_path, _path + ".default")(_packed_conv_add(_relu))
