"""Read eager-mode quantized PyTorch models (``torch.ao.quantization`` prepare/convert).

The model's ``forward`` is captured with ``torch.fx`` symbolic tracing: quantized modules stay
leaves (``call_module``), and functions called between them (``torch.flatten``, ``x.view``,
``F.relu``, shape arithmetic) become nodes, so the data flow is the model's own. Each module type
has a handler registered with ``@module_handler``; anything else raises ``UnsupportedError`` naming
the module, its place in the model and the supported list.

torch is imported only inside these functions: ``import qexact`` never imports torch.
"""

from __future__ import annotations

import os

from typing import Callable

import numpy as np

from ..errors import ImporterError, UnsupportedError
from ..graph import Graph, Net, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ..dtypes import dtype_named

_MODULE_HANDLERS: list[tuple[str, Callable]] = []
"""(dotted class path, handler) pairs; the first whose class the module is an instance of wins."""


def module_handler(*class_paths: str):
    """Register ``handler(module, node_name, inputs) -> Node`` for modules of these classes."""

    def register(handler):
        for path in class_paths:
            _MODULE_HANDLERS.append((path, handler))
        return handler

    return register


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImporterError(
            "reading a PyTorch model needs torch; install qexact[torch] (torch==2.13.0)"
        ) from None
    return torch


def _resolve(path: str):
    """The object at a dotted path (``torch.ao.nn.quantized.Linear``, ``torch.ops.quantized.add``),
    or None where this torch has none."""
    import importlib
    import sys

    parts = path.split(".")
    if parts[0] not in ("torch", "operator", "_operator", "builtins") and parts[0] not in sys.modules:
        return None  # a model using torchvision has imported it; never import it ourselves
    try:
        value = importlib.import_module(parts[0])
        for part in parts[1:]:
            value = getattr(value, part)
    except (ImportError, AttributeError, RuntimeError):
        return None
    return value


HANDLER_MODULES = ("torch_conv", "torch_elementwise", "torch_pooling", "torch_normalization",
                   "torch_shape", "torch_prelu")
"""Modules of this package that register more handlers (one per op family), loaded by capture."""


def _load_handler_modules() -> None:
    import importlib

    for module in HANDLER_MODULES:
        importlib.import_module(f"{__package__}.{module}")


def supported_modules() -> list[str]:
    return sorted({path for path, _ in _MODULE_HANDLERS})


# --- Module handlers -------------------------------------------------------------------------


def _qparams_of_tensor(tensor) -> QParams:
    """QParams of a quantized torch tensor (per-tensor or per-channel affine)."""
    torch = _import_torch()
    dtype = dtype_named(str(tensor.dtype).replace("torch.", ""))
    scheme = tensor.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return QParams.per_tensor(tensor.q_scale(), tensor.q_zero_point(), dtype)
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        return QParams.per_channel(
            tensor.q_per_channel_scales().double().numpy(),
            tensor.q_per_channel_zero_points().numpy(), tensor.q_per_channel_axis(), dtype,
        )
    raise UnsupportedError(f"quantization scheme {scheme} is not supported")


def weighted_layer_fields(weight, bias, output: QParams) -> tuple[dict, dict]:
    """Node attrs and arrays of a layer with weights: output and weight qparams, the int8
    weight as PyTorch's kernel unpacks it, and the float32 bias (if any)."""
    torch = _import_torch()
    attrs, arrays = qparams_to_fields(output, "output")
    weight_attrs, weight_arrays = qparams_to_fields(_qparams_of_tensor(weight), "weight")
    attrs.update(weight_attrs)
    arrays.update(weight_arrays)
    arrays["weight"] = weight.int_repr().numpy().astype(np.int8)
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    return attrs, arrays


def module_output_qparams(module, dtype: str = "quint8") -> QParams:
    return QParams.per_tensor(float(module.scale), int(module.zero_point), dtype_named(dtype))


@module_handler("torch.ao.nn.quantized.Quantize")
def _quantize(module, name, inputs):
    dtype = str(module.dtype).replace("torch.", "")
    attrs, arrays = qparams_to_fields(module_output_qparams(module, dtype), "output")
    return Node(name, "quantize", inputs, attrs, arrays)


@module_handler("torch.ao.nn.quantized.DeQuantize")
def _dequantize(module, name, inputs):
    return Node(name, "dequantize", inputs)


@module_handler("torch.ao.nn.intrinsic.quantized.LinearReLU", "torch.ao.nn.quantized.Linear")
def _linear(module, name, inputs):
    attrs, arrays = weighted_layer_fields(module.weight(), module.bias(),
                                          module_output_qparams(module))
    relu_class = _resolve("torch.ao.nn.intrinsic.quantized.LinearReLU")
    attrs["relu"] = relu_class is not None and isinstance(module, relu_class)
    return Node(name, "linear", inputs, attrs, arrays)


@module_handler("torch.nn.ReLU")
def _relu(module, name, inputs):
    return Node(name, "relu", inputs)


@module_handler("torch.nn.Identity", "torch.nn.Dropout")
def _identity(module, name, inputs):
    return Node(name, "identity", inputs)


@module_handler("torch.nn.Flatten")
def _flatten(module, name, inputs):
    return Node(name, "flatten", inputs, {"start_dim": module.start_dim, "end_dim": module.end_dim})


# --- Functions and methods called in forward --------------------------------------------------

_FUNCTION_HANDLERS: list[tuple[str, Callable]] = []
"""(dotted path of a function, handler) pairs: ``torch.flatten``, ``torch.ops.quantized.add``."""
_METHOD_HANDLERS: dict[str, Callable] = {}


def function_handler(*paths: str):
    """Register ``handler(name, args, kwargs) -> Node`` for calls of these functions."""

    def register(handler):
        for path in paths:
            _FUNCTION_HANDLERS.append((path, handler))
        return handler

    return register


def method_handler(*names: str):
    """Register ``handler(name, args, kwargs) -> Node`` for these tensor methods."""

    def register(handler):
        for method in names:
            _METHOD_HANDLERS[method] = handler
        return handler

    return register


def _flatten_node(name, args, kwargs) -> Node:
    return Node(name, "flatten", args[:1], {"start_dim": _arg(args, kwargs, 1, "start_dim", 0),
                                            "end_dim": _arg(args, kwargs, 2, "end_dim", -1)})


def _reshape_node(name, args, kwargs) -> Node:
    return Node(name, "reshape", (args[0], *_sizes(args[1:], kwargs.get("shape"))))


def _first_input(op: str):
    def handler(name, args, kwargs) -> Node:
        return Node(name, op, args[:1])

    return handler


@function_handler("torch.quantize_per_tensor")
def _quantize_function(name, args, kwargs) -> Node:
    """FX-converted models quantize with ``torch.quantize_per_tensor(x, scale, zp, dtype)``."""
    scale = _arg(args, kwargs, 1, "scale", None)
    zero_point = _arg(args, kwargs, 2, "zero_point", None)
    dtype = str(_arg(args, kwargs, 3, "dtype", None)).replace("torch.", "")
    if not isinstance(scale, (int, float)) or not isinstance(zero_point, int):
        raise UnsupportedError("quantize_per_tensor with a computed (not constant) scale or "
                               "zero point is not supported")
    attrs, arrays = qparams_to_fields(QParams.per_tensor(scale, zero_point, dtype_named(dtype)),
                                      "output")
    return Node(name, "quantize", args[:1], attrs, arrays)


function_handler("torch.flatten")(_flatten_node)
function_handler("torch.reshape")(_reshape_node)
function_handler("torch.relu", "torch.relu_", "torch.nn.functional.relu")(_first_input("relu"))
function_handler("torch.nn.functional.dropout")(_first_input("identity"))
function_handler("operator.getitem")(lambda name, args, kwargs: Node(name, "getitem", tuple(args)))


@function_handler("torchvision.ops.stochastic_depth", "torchvision.ops.stochastic_depth.stochastic_depth")
def _stochastic_depth(name, args, kwargs):
    """torchvision's StochasticDepth (EfficientNet, ConvNeXt): the input itself in eval mode."""
    if _arg(args, kwargs, 3, "training", True):
        raise UnsupportedError("stochastic_depth in training mode is random; call model.eval()")
    return Node(name, "identity", args[:1])


@function_handler("torch._assert")
def _assert(name, args, kwargs):
    """``torch._assert(h == self.image_size, "...")``: checked on the sizes at run time."""
    return Node(name, "assert", args[:1], {"message": str(_arg(args, kwargs, 1, "message", ""))})


@function_handler("builtins.getattr")
def _getattr_node(name, args, kwargs):
    """``x.shape`` (FX records it as ``getattr(x, "shape")``): the same node as ``x.size()``."""
    if len(args) == 2 and args[1] == "shape":
        return Node(name, "size", args[:1], {"dim": None})
    raise UnsupportedError(f"getattr(tensor, {args[1:]!r}) is not supported; of tensor "
                           "attributes only .shape is")


for _operator in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg",
                  "eq", "ne", "lt", "le", "gt", "ge"):
    function_handler(f"operator.{_operator}", f"_operator.{_operator}")(
        lambda name, args, kwargs, operator_name=_operator: Node(
            name, "arith", tuple(args), {"operator": operator_name}))
method_handler("flatten")(_flatten_node)
method_handler("view", "reshape")(_reshape_node)
method_handler("relu", "relu_")(_first_input("relu"))
method_handler("contiguous")(_first_input("identity"))
method_handler("dequantize")(_first_input("dequantize"))
method_handler("size")(lambda name, args, kwargs: Node(
    name, "size", args[:1], {"dim": _arg(args, kwargs, 1, "dim", None)}))


def _function_node(name: str, function, args, kwargs) -> Node:
    for path, handler in _FUNCTION_HANDLERS:
        target = _resolve(path)
        if target is not None and function is target:
            return handler(name, args, kwargs)
    raise UnsupportedError(
        f"function {getattr(function, '__module__', '')}.{getattr(function, '__name__', function)} "
        f"is not supported; supported functions: {', '.join(sorted({p for p, _ in _FUNCTION_HANDLERS}))}"
    )


def _method_node(name: str, method: str, args, kwargs) -> Node:
    handler = _METHOD_HANDLERS.get(method)
    if handler is None:
        raise UnsupportedError(
            f"tensor method .{method}() is not supported; supported methods: "
            f"{', '.join(sorted(_METHOD_HANDLERS))}"
        )
    return handler(name, args, kwargs)


def _arg(args, kwargs, index, keyword, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(keyword, default)


def _sizes(positional, keyword) -> tuple:
    sizes = positional if positional else (keyword,)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return tuple(sizes)


# --- Capture -----------------------------------------------------------------------------------


def capture(model) -> Graph:
    """Trace an eager-mode converted model into a qexact ``Graph``."""
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise ImporterError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = model.eval()
    _load_handler_modules()
    try:
        traced = torch.fx.Tracer().trace(model)
    except Exception as error:  # torch.fx raises many types
        raise ImporterError(
            f"could not capture {type(model).__name__}.forward with torch.fx symbolic tracing: "
            f"{type(error).__name__}: {error}. forward must not branch on tensor values; move such "
            "logic out of forward, or wrap it in a submodule qexact supports"
        ) from None
    modules = dict(model.named_modules())
    handlers = [(cls, handler) for path, handler in _MODULE_HANDLERS
                if (cls := _resolve(path)) is not None]
    inputs: list[str] = []
    nodes: list[Node] = []
    outputs: list[Ref] = []
    used_names: set[str] = set()
    renamed: dict[str, str] = {}  # fx node name -> qexact node name

    constants: dict[str, object] = {}  # get_attr nodes: scales and zero points of FX models
    output_keys: list[str] | None = None  # forward returns a dict

    def convert(value):
        if isinstance(value, torch.fx.Node):
            if value.name in constants:
                return constants[value.name]
            return Ref(renamed.get(value.name, value.name))
        if isinstance(value, (torch.dtype, torch.memory_format)):
            return str(value)
        if isinstance(value, (tuple, list)):
            return type(value)(convert(item) for item in value)
        if isinstance(value, dict):  # forward returns a dict
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (int, float, bool, str)) or value is None or value is Ellipsis:
            return value
        if isinstance(value, slice):  # x.shape[2:], sizes[-2:]
            parts = tuple(convert(part) for part in (value.start, value.stop, value.step))
            if not all(part is None or isinstance(part, int) for part in parts):
                raise UnsupportedError(f"a slice with computed bounds ({value!r}) is not "
                                       "supported; use constant bounds")
            return slice(*parts)
        raise UnsupportedError(f"argument {value!r} of type {type(value).__name__} is not supported")

    for fx_node in traced.nodes:
        where = fx_node.target if fx_node.op == "call_module" else fx_node.name
        try:
            args = tuple(convert(arg) for arg in fx_node.args)
            kwargs = {key: convert(value) for key, value in fx_node.kwargs.items()}
            if fx_node.op == "placeholder":
                inputs.append(fx_node.name)
                used_names.add(fx_node.name)
                continue
            if fx_node.op == "get_attr":
                constants[fx_node.name] = _constant(model, fx_node.target)
                continue
            if fx_node.op == "output":
                result = args[0]
                if isinstance(result, dict):  # segmentation models: {"out": ..., "aux": ...}
                    output_keys = [str(key) for key in result]
                    result = list(result.values())
                outputs = list(result) if isinstance(result, (tuple, list)) else [result]
                continue
            if fx_node.op == "call_module":
                module = modules[fx_node.target]
                handler = next((h for cls, h in handlers if isinstance(module, cls)), None)
                if handler is None:
                    raise _unsupported_module(fx_node.target, module,
                                              fx=isinstance(model, torch.fx.GraphModule))
                node = handler(module, fx_node.name, args)
            elif fx_node.op == "call_function":
                node = _function_node(fx_node.name, fx_node.target, args, kwargs)
            elif fx_node.op == "call_method":
                node = _method_node(fx_node.name, fx_node.target, args, kwargs)
            else:
                raise UnsupportedError(f"graph operation {fx_node.op} ({fx_node.target}) is not supported")
        except UnsupportedError as error:
            if str(error).startswith("module "):
                raise
            raise UnsupportedError(f"at {where!r} in {type(model).__name__}.forward: {error}") from None
        node.source = str(where)
        if fx_node.op == "call_module" and fx_node.target not in used_names:
            node.name = fx_node.target  # the module's qualified name, when first called
            renamed[fx_node.name] = node.name
        used_names.add(node.name)
        nodes.append(node)
    if not all(isinstance(item, Ref) for item in outputs):
        raise UnsupportedError(f"{type(model).__name__}.forward returns {outputs!r}: qexact "
                               "models return tensors (one, a tuple, a list or a dict of them)")
    metadata = {"source_model": type(model).__name__}
    if output_keys is not None:
        metadata["output_keys"] = output_keys
    return Graph(inputs, nodes, outputs, metadata)


def _constant(model, target: str):
    """The value of a ``get_attr``: a one-element tensor becomes a Python number."""
    torch = _import_torch()
    value = model
    for part in target.split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_quantized:
        return value.item()
    raise UnsupportedError(f"attribute {target!r} ({type(value).__name__}) used in forward is "
                           "not supported; only scalar constants (scales, zero points) are")


def _unsupported_module(qualified_name: str, module, fx: bool = False) -> UnsupportedError:
    cls = type(module)
    hint = ""
    if cls.__module__.startswith("torch.nn.modules") and fx:
        hint = (" The FX conversion left it in float32 (between a dequantize and a quantize), "
                "and qexact does not model ATen's float kernel for it.")
    elif cls.__module__.startswith("torch.nn.modules") and hasattr(module, "weight"):
        hint = (" It is a float module: prepare, calibrate and convert the model with "
                "torch.ao.quantization (or give it qconfig=None only where it must stay float).")
    return UnsupportedError(
        f"module {qualified_name!r} of type {cls.__module__}.{cls.__qualname__} is not supported."
        f"{hint} Supported modules: {', '.join(supported_modules())}"
    )


def from_torch(model, example_inputs: tuple | None = None, engine: str | None = None,
               isa: str | None = None) -> Net:
    """Import a quantized PyTorch model; returns a ``Net`` that computes what ``model`` does.

    ``model``: an eager-mode model converted with ``torch.ao.quantization`` (``prepare``/``convert``),
    an FX-converted ``GraphModule`` (``prepare_fx``/``convert_fx``), a ``ScriptModule`` of either
    (``torch.jit.trace``), or the path of a TorchScript file (``torch.jit.save``).

    ``engine`` defaults to ``torch.backends.quantized.engine`` (it must be the engine the model
    was converted under: PyTorch packs weights for it). ``isa`` defaults to this CPU's.
    ``example_inputs``, if given, are run once through the imported net to check it.
    """
    torch = _import_torch()
    from .torchscript import capture_script, is_script_module, load_script

    if isinstance(model, (str, os.PathLike)):
        model = load_script(model)
    graph = capture_script(model) if is_script_module(model) else capture(model)
    engine = engine or torch.backends.quantized.engine
    graph.metadata.update({"torch_version": torch.__version__, "engine": engine})
    net = Net(graph, engine, isa)
    if example_inputs is not None:
        if not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        net(*example_inputs)
    return net
