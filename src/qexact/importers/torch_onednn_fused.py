"""torch import handlers for oneDNN's fused quantized ops (PyTorch runs them on the ``onednn``
engine only): ``nniq.LinearLeakyReLU``, ``nniq.LinearTanh``, ``nniq.ConvAdd2d``,
``nniq.ConvAddReLU2d`` (FX with the onednn backend config fuses linear + leaky_relu / tanh and
conv + add (+ relu) into them), and the kernels they call, ``torch.ops.quantized.
linear_leaky_relu`` / ``linear_tanh`` / ``conv2d_add`` / ``conv2d_add_relu``.

PyTorch's oneDNN packed weights cache their primitive on first use (qlinear.cpp, qconv.cpp): a
pack called by two different ops gives the first op's post-ops to both. A converted model has one
pack and one op per module, so the module's own op is what runs.

``conv2d_add(x, accum, ...)`` writes its result into ``accum`` when ``accum`` is already
channels-last contiguous (qconv.cpp: the output tensor IS ``accum``; measured, torch 2.13:
afterwards ``accum`` holds the result's codes and qparams): a model that reads the residual again
after the add reads the add's result. ``alias_overwritten_residuals`` states this on a captured
graph: later readers of a residual produced by a quantized conv (always channels-last) read the
conv_add's output instead; a residual of another producer (whose layout the graph does not
record) read again is refused. ``conv2d_add(z, z)`` (FX fuses ``relu(c2(z) + z)`` into
``self.c2(z, z)``) convolves a tensor while oneDNN overwrites it: PyTorch's result is not the
unfused computation (measured: 73 of 288 codes equal to conv2d_add(z, z.clone()), 92 with two
threads), so it is refused.
"""

from __future__ import annotations

from ..dtypes import dtype_named
from ..errors import UnsupportedError
from ..graph import Graph, Node, Ref
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
    _refuse_same_residual(inputs[0], inputs[1], name)
    attrs, arrays = weighted_layer_fields(_unpacked_weight(module), module.bias(),
                                          module_output_qparams(module))
    attrs.update(stride=[int(s) for s in module.stride], padding=[int(p) for p in module.padding],
                 dilation=[int(d) for d in module.dilation], groups=int(module.groups),
                 padding_mode="zeros", relu=type(module).__name__ == "ConvAddReLU2d")
    return Node(name, "conv", inputs, attrs, arrays)


def _refuse_same_residual(x, accum, name: str) -> None:
    if isinstance(x, Ref) and isinstance(accum, Ref) and x.name == accum.name:
        raise UnsupportedError(
            f"{name}: conv2d_add with the same tensor as conv input and residual (FX fuses "
            "relu(conv(z) + z) into conv(z, z)): oneDNN writes the result into the residual "
            "while the conv still reads it, so PyTorch's output is not conv(z) + z (measured: "
            "most codes differ, and vary with the thread count); add a copy (z.clone()) or keep "
            "the add unfused")


def alias_overwritten_residuals(graph: Graph) -> Graph:
    """The graph with PyTorch's in-place residual of ``conv2d_add`` stated: every node (or graph
    output) reading a conv_add's residual AFTER the conv_add reads the conv_add's output when
    the residual is a quantized conv's output (channels-last: overwritten by the add, codes and
    qparams); refused when the residual comes from another op (its layout decides, and the
    graph does not record it)."""
    producers = {node.name: node for node in graph.nodes}
    renamed: dict[str, str] = {}
    refusals = []

    def read(item):
        return Ref(renamed[item.name]) if isinstance(item, Ref) and item.name in renamed \
            else item

    nodes = []
    for node in graph.nodes:
        inputs = tuple(read(item) for item in node.inputs)
        if inputs != tuple(node.inputs):
            node = Node(node.name, node.op, inputs, node.attrs, node.arrays, node.source)
        nodes.append(node)
        if node.op != "conv" or len(node.inputs) < 2 or not isinstance(node.inputs[1], Ref):
            continue
        residual = node.inputs[1].name
        producer = producers.get(residual)
        if producer is not None and producer.op == "conv":
            renamed[residual] = node.name
        else:
            refusals.append((residual, node.name))
    outputs = [read(item) for item in graph.outputs]
    for residual, adder in refusals:
        later = [n.name for n in graph.nodes[[n.name for n in graph.nodes].index(adder) + 1:]
                 if any(isinstance(i, Ref) and i.name == residual for i in n.inputs)]
        if later or any(isinstance(i, Ref) and i.name == residual for i in graph.outputs):
            raise UnsupportedError(
                f"{adder}: its residual {residual!r} (not a quantized conv's output) is read "
                f"again after the conv2d_add ({', '.join(later) or 'a model output'}); PyTorch "
                "overwrites the residual with the result when it is channels-last contiguous, "
                "which depends on its layout: unsupported")
    return Graph(list(graph.inputs), nodes, outputs, dict(graph.metadata))


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
        _refuse_same_residual(x, accum, name)
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
