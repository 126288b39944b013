"""Read eager-mode quantized PyTorch models (``torch.ao.quantization`` prepare/convert).

The model's ``forward`` is captured with ``torch.fx`` symbolic tracing: quantized modules stay
leaves (``call_module``), and functions called between them (``torch.flatten``, ``x.view``,
``F.relu``, shape arithmetic) become nodes, so the data flow is the model's own. Each module type
has a handler registered with ``@module_handler``; anything else raises ``UnsupportedError`` naming
the module, its place in the model and the supported list. Handlers of other op families live in
the other modules of this package (``_handlers``: the tables and their decorators).

torch is imported only inside these functions: ``import qexact`` never imports torch.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

from ..dtypes import dtype_named
from ..errors import ImporterError, UnsupportedError
from ..graph import Graph, Net, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ._handlers import (ConstantRef, _arg, _import_torch, _resolve, constant_node,
                        function_handler, function_node, handler_of_module, load_handler_modules,
                        method_handler, method_node, module_handler, module_handlers,
                        module_output_qparams, refusals_error, supported_modules, unsupported,
                        weighted_layer_fields)
from .pt2e import capture_pt2e, default_engine, is_pt2e, load_pt2
from .torch_onednn_fused import alias_overwritten_residuals
from .torchscript import capture_script, is_script_module, load_script


# --- Module handlers -------------------------------------------------------------------------


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
@function_handler("operator.getitem")
def _getitem(name, args, kwargs) -> Node:
    """``x[index]``: op ``getitem``; with slice bounds computed in forward (``pos[:, :n]``, ``n``
    from ``x.shape``) op ``dynamic_slice``, the bounds its extra inputs and ``index`` a JSON
    template where ``{"input": k}`` stands for extra input ``k``."""
    container, index = args[:2]
    items = index if isinstance(index, tuple) else (index,)
    if not any(isinstance(item, ComputedSlice) for item in items):
        return Node(name, "getitem", tuple(args))
    bounds: list[Ref] = []

    def part(value):
        if isinstance(value, Ref):
            bounds.append(value)
            return {"input": len(bounds) - 1}
        return value

    template = []
    for item in items:
        if isinstance(item, (ComputedSlice, slice)):
            template.append({"slice": [part(item.start), part(item.stop), part(item.step)]})
        elif item is Ellipsis:
            template.append("...")
        elif item is None or isinstance(item, int):
            template.append(item)
        else:
            raise UnsupportedError(f"indexing with {item!r} next to a computed slice is not "
                                   "supported")
    return Node(name, "dynamic_slice", (container, *bounds), {"index": template})


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


def _aten_arith(operator_name: str, swap: bool = False):
    """``torch.add(x, y, alpha=1)``, ``torch.sub``, ``torch.mul``, ``torch.div(x, y,
    rounding_mode=None)``, ``torch.rsub(x, c)`` (``c - x``: TorchScript's form of it), and the
    tensor methods of these names: the ``arith`` node of the Python operator, where ``alpha``
    is 1 and there is no rounding mode."""

    def handler(name, args, kwargs) -> Node:
        alpha = _arg(args, kwargs, 2, "alpha", 1) if operator_name in ("add", "sub") else 1
        mode = _arg(args, kwargs, 2, "rounding_mode", None) if operator_name == "truediv" else None
        if alpha != 1:
            raise UnsupportedError(f"{operator_name} with alpha={alpha!r} is not supported; "
                                   "alpha=1 is")
        if mode is not None:
            raise UnsupportedError(f"div with rounding_mode={mode!r} is not supported")
        operands = (_arg(args, kwargs, 0, "input", None), _arg(args, kwargs, 1, "other", None))
        return Node(name, "arith", operands[::-1] if swap else operands,
                    {"operator": operator_name})

    return handler


for _name, _operator in (("add", "add"), ("sub", "sub"), ("subtract", "sub"), ("mul", "mul"),
                         ("multiply", "mul"), ("div", "truediv"), ("divide", "truediv"),
                         ("true_divide", "truediv"), ("floor_divide", "floordiv"),
                         ("remainder", "mod")):
    function_handler(f"torch.{_name}")(_aten_arith(_operator))
    method_handler(_name)(_aten_arith(_operator))
function_handler("torch.rsub")(_aten_arith("sub", swap=True))
function_handler("torch.neg", "torch.negative")(
    lambda name, args, kwargs: Node(name, "arith", tuple(args[:1]), {"operator": "neg"}))
method_handler("neg")(lambda name, args, kwargs: Node(name, "arith", tuple(args[:1]),
                                                      {"operator": "neg"}))
method_handler("flatten")(_flatten_node)
method_handler("view", "reshape")(_reshape_node)
method_handler("relu", "relu_")(_first_input("relu"))
method_handler("dequantize")(_first_input("dequantize"))
method_handler("dim", "ndimension")(_first_input("ndim"))  # ViT: torch._assert(x.dim() == 3)
method_handler("size")(lambda name, args, kwargs: Node(
    name, "size", args[:1], {"dim": _arg(args, kwargs, 1, "dim", None)}))


def _sizes(positional, keyword) -> tuple:
    sizes = positional if positional else (keyword,)
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return tuple(sizes)


# --- Capture -----------------------------------------------------------------------------------


def capture(model) -> Graph:
    """Trace an eager-mode converted model into a qexact ``Graph``.

    A construct qexact does not support does not stop the capture: every one is named, with its
    place in the model (module path, the line of ``forward``), in one UnsupportedError; a node
    reading a refused node's output is skipped, not reported again."""
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise ImporterError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = model.eval()
    load_handler_modules()
    tracer = torch.fx.Tracer()
    tracer.record_stack_traces = True
    try:
        traced = tracer.trace(model)
    except Exception as error:  # torch.fx raises many types
        raise ImporterError(
            f"could not capture {type(model).__name__}.forward with torch.fx symbolic tracing: "
            f"{type(error).__name__}: {error}. forward must not branch on tensor values; move such "
            "logic out of forward, or wrap it in a submodule qexact supports"
        ) from None
    modules = dict(model.named_modules())
    handlers = module_handlers()
    inputs: list[str] = []
    nodes: list[Node] = []
    outputs: list[Ref] = []
    used_names: set[str] = set()
    renamed: dict[str, str] = {}  # fx node name -> qexact node name
    refused: set[str] = set()  # fx nodes qexact refused, and those reading them
    refusals: list[tuple[str, UnsupportedError]] = []

    constants: dict[str, object] = {}  # get_attr nodes: scales and zero points of FX models
    constant_nodes: dict[str, Node] = {}  # get_attr tensors: fx name -> constant node
    output_keys: list[str] | None = None  # forward returns a dict

    def convert(value):
        if isinstance(value, torch.fx.Node):
            if value.name in constants:
                return constants[value.name]
            if value.name in constant_nodes:
                return ConstantRef(renamed.get(value.name, value.name), constant_nodes[value.name])
            return Ref(renamed.get(value.name, value.name))
        if isinstance(value, (torch.dtype, torch.memory_format)):
            return str(value)
        if isinstance(value, (tuple, list)):
            return type(value)(convert(item) for item in value)
        if isinstance(value, dict):  # forward returns a dict
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, (int, float, bool, str)) or value is None or value is Ellipsis:
            return value
        if isinstance(value, slice):  # x.shape[2:], sizes[-2:], pos[:, :x.shape[1]]
            parts = tuple(convert(part) for part in (value.start, value.stop, value.step))
            if all(part is None or isinstance(part, int) for part in parts):
                return slice(*parts)
            if all(part is None or isinstance(part, (int, Ref)) for part in parts):
                return ComputedSlice(*parts)  # bounds computed in forward (op dynamic_slice)
            raise UnsupportedError(f"a slice with bounds {value!r} is not supported; use "
                                   "integers or sizes computed in forward")
        raise UnsupportedError(f"argument {value!r} of type {type(value).__name__} is not supported")

    for fx_node in traced.nodes:
        where = fx_node.target if fx_node.op == "call_module" else fx_node.name
        if any(item.name in refused for item in fx_node.all_input_nodes):
            refused.add(fx_node.name)
            continue
        try:
            args = tuple(convert(arg) for arg in fx_node.args)
            kwargs = {key: convert(value) for key, value in fx_node.kwargs.items()}
            if fx_node.op == "placeholder":
                inputs.append(fx_node.name)
                used_names.add(fx_node.name)
                continue
            if fx_node.op == "get_attr":
                value = _constant(model, fx_node.target)
                if not isinstance(value, Node):
                    constants[fx_node.name] = value
                    continue
                node = constant_nodes[fx_node.name] = value
            elif fx_node.op == "output":
                result = args[0]
                if isinstance(result, dict):  # segmentation models: {"out": ..., "aux": ...}
                    output_keys = [str(key) for key in result]
                    result = list(result.values())
                outputs = list(result) if isinstance(result, (tuple, list)) else [result]
                continue
            elif fx_node.op == "call_module":
                module = modules[fx_node.target]
                handler = handler_of_module(handlers, module)
                if handler is None:
                    raise _unsupported_module(fx_node.target, module,
                                              fx=isinstance(model, torch.fx.GraphModule))
                node = handler(module, fx_node.name, _positional(module, args, kwargs))
            elif fx_node.op == "call_function":
                node = function_node(fx_node.name, fx_node.target, args, kwargs)
            elif fx_node.op == "call_method":
                node = method_node(fx_node.name, fx_node.target, args, kwargs)
            else:
                raise UnsupportedError(f"graph operation {fx_node.op} ({fx_node.target}) is not supported")
        except UnsupportedError as error:
            refused.add(fx_node.name)
            line = _user_line(fx_node.stack_trace)
            place = f"{where!r} in {type(model).__name__}.forward" + (f" ({line})" if line else "")
            refusals.append((place, error))
            continue
        node.source = str(where)
        if fx_node.op == "call_module" and fx_node.target not in used_names:
            node.name = fx_node.target  # the module's qualified name, when first called
            renamed[fx_node.name] = node.name
        elif fx_node.op == "get_attr" and fx_node.target not in used_names:
            node.name = fx_node.target  # the attribute's qualified name
            renamed[fx_node.name] = node.name
        used_names.add(node.name)
        nodes.append(node)
    if len(refusals) == 1 and str(refusals[0][1]).startswith("module "):
        raise refusals[0][1]  # "module 'head' of type ... is not supported. Supported modules: .."
    if refusals:
        raise refusals_error(f"{type(model).__name__}.forward", refusals)
    if not all(isinstance(item, Ref) for item in outputs):
        raise UnsupportedError(f"{type(model).__name__}.forward returns {outputs!r}: qexact "
                               "models return tensors (one, a tuple, a list or a dict of them)")
    metadata = {"source_model": type(model).__name__}
    if output_keys is not None:
        metadata["output_keys"] = output_keys
    return Graph(inputs, _without_unread_constants(nodes, outputs), outputs, metadata)


def _without_unread_constants(nodes: list[Node], outputs: list[Ref]) -> list[Node]:
    """``nodes`` without the constant nodes no node reads (a handler that took a constant's
    values at import time, as ``F.layer_norm``'s weight, leaves its node unread)."""
    read = {ref.name for ref in outputs}

    def collect(item):
        if isinstance(item, Ref):
            read.add(item.name)
        elif isinstance(item, (tuple, list)):
            for part in item:
                collect(part)

    for node in nodes:
        collect(node.inputs)
    return [node for node in nodes if node.op != "constant" or node.name in read]


def _user_line(stack_trace: str | None) -> str:
    """``file.py:12`` of the innermost frame of ``stack_trace`` (torch.fx's record of where a
    node was traced) outside torch, or "" when none is recorded."""
    if not stack_trace:
        return ""
    import re

    frames = re.findall(r'File "([^"]+)", line (\d+)', stack_trace)
    for path, line in reversed(frames):
        if not _inside_torch(path):
            return f"{path}:{line}"
    return ""


def _inside_torch(path: str) -> bool:
    """Whether a source file belongs to torch (or is code torch generated: ``<eval_with_key>``)."""
    normalized = path.replace("\\", "/")
    return normalized.startswith("<") or "/site-packages/torch/" in normalized \
        or "/torch/nn/" in normalized or "/torch/ao/" in normalized or "/torch/fx/" in normalized


@dataclass(frozen=True)
class ComputedSlice:
    """A slice whose bounds are values computed in ``forward`` (``Ref``s) or ints."""

    start: object
    stop: object
    step: object


def _positional(module, args: tuple, kwargs: dict) -> tuple:
    """A module call's arguments in ``forward``'s positional order (``bag(i, o,
    per_sample_weights=w)``): module handlers read inputs by position."""
    if not kwargs:
        return args
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError as error:
        raise UnsupportedError(f"cannot bind the call's arguments to "
                               f"{type(module).__name__}.forward: {error}") from None
    bound.apply_defaults()
    if bound.kwargs:
        raise UnsupportedError(f"keyword-only arguments of {type(module).__name__}.forward "
                               f"({', '.join(bound.kwargs)}) are not supported")
    return tuple(bound.args)


def _constant(model, target: str):
    """The value of a ``get_attr``: a one-element float or integer tensor becomes a Python
    number (scales, zero points); any other tensor (a Parameter or buffer used in forward:
    ViT's ``class_token``, a bias table) a ``constant`` node holding it (float32, or a quantized
    tensor's integers and qparams)."""
    torch = _import_torch()
    value = model
    for part in target.split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_quantized:
        return value.item()
    if isinstance(value, torch.Tensor):
        return constant_node(target.replace(".", "_"), value)
    if isinstance(value, torch.ScriptObject):
        return value  # packed parameters (LinearPackedParamsBase): their handlers unpack them
    raise UnsupportedError(f"attribute {target!r} ({type(value).__name__}) used in forward is "
                           "not supported; tensors and scalar constants are")


def _unsupported_module(qualified_name: str, module, fx: bool = False) -> UnsupportedError:
    cls = type(module)
    hint = ""
    if cls.__module__.startswith("torch.nn.modules") and fx:
        hint = (" The FX conversion left it in float32 (between a dequantize and a quantize), "
                "and qexact does not model ATen's float kernel for it.")
    elif cls.__module__.startswith("torch.nn.modules") and hasattr(module, "weight"):
        hint = (" It is a float module: prepare, calibrate and convert the model with "
                "torch.ao.quantization (or give it qconfig=None only where it must stay float).")
    error = unsupported(f"module {qualified_name!r} of type {cls.__module__}.{cls.__qualname__}"
                        f" is not supported.{hint}", "modules", supported_modules())
    error.args = (f"{error.short} Supported modules: {', '.join(supported_modules())}",)
    return error


def from_pte(path, example_inputs: tuple | None = None, engine: str | None = None,
             isa: str | None = None, backend: str | None = None) -> Net:
    """An ExecuTorch ``.pte`` file with XNNPACK delegates, as the device runs it (engine
    ``xnnpack``): its weights, int32 biases and quantization parameters as the file stores them.
    Needs neither torch nor executorch."""
    from .pte_graph import capture_pte

    if engine not in (None, "xnnpack"):
        raise UnsupportedError(f"a .pte with XNNPACK delegates runs on engine 'xnnpack', not "
                               f"{engine!r}: it holds the int32 biases fixed at lowering")
    net = Net(capture_pte(path), "xnnpack", isa, backend=backend)
    if example_inputs is not None:
        net(*(example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)))
    return net


def _refuse_torchao_subclass(model) -> None:
    """torchao ``quantize_`` models hold tensor-subclass weights in float modules: say so, rather
    than call them float modules."""
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        return
    for name, parameter in model.named_parameters():
        kind = type(parameter.data) if isinstance(parameter, torch.nn.Parameter) else type(parameter)
        if kind.__module__.startswith("torchao"):
            raise UnsupportedError(
                f"parameter {name!r} is a torchao {kind.__name__}: this model was quantized with "
                "torchao's quantize_ (tensor-subclass weights), which qexact does not read. "
                "Quantize it with PT2E (torchao prepare_pt2e/convert_pt2e with XNNPACKQuantizer "
                "or X86InductorQuantizer) and import the converted model")


def _refuse_unconverted(model) -> None:
    """A prepared model still holds its observers (or fake quantizers): its forward is float.
    Say it needs converting, rather than what its observers do to a tracer."""
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return
    # torch.ao's and torchao's (PT2E) observer classes alike, by their bases' names
    observers = [(name, type(module).__name__) for name, module in model.named_modules()
                 if any(base.__name__ in ("ObserverBase", "FakeQuantizeBase")
                        for base in type(module).__mro__)]
    if observers:
        name, kind = observers[0]
        raise UnsupportedError(
            f"the model was prepared but not converted: it still holds {len(observers)} "
            f"observer(s), the first {name!r} ({kind}). Run it on calibration data, then convert "
            "it (torch.ao.quantization.convert for eager models, convert_fx for FX, torchao's "
            "convert_pt2e for PT2E) and import the converted model")


def from_torch(model, example_inputs: tuple | None = None, engine: str | None = None,
               isa: str | None = None, allow_inexact=(), backend: str | None = None) -> Net:
    """Import a quantized PyTorch model; returns a ``Net`` that computes what ``model`` does.

    ``model``: an eager-mode model converted with ``torch.ao.quantization`` (``prepare``/``convert``),
    an FX-converted ``GraphModule`` (``prepare_fx``/``convert_fx``), a ``ScriptModule`` of either
    (``torch.jit.trace``), or the path of a TorchScript file (``torch.jit.save``); or a PT2E model:
    the GraphModule of torchao's ``convert_pt2e``, an ``ExportedProgram`` of it, or the path of a
    ``.pt2`` file (``torch.export.save``); or an ExecuTorch ``.pte`` with XNNPACK delegates (read
    without torch; engine ``xnnpack``).

    ``engine``: for eager and FX models it defaults to ``torch.backends.quantized.engine`` (it
    must be the engine the model was converted under: PyTorch packs weights for it). For PT2E
    models it is the deployment: ``"xnnpack"`` (ExecuTorch's XNNPACK delegate), ``"inductor"``
    (``torch.compile`` with freezing) or ``"pt2e_eager"`` (the converted model run as it is);
    the default follows the quantizer: qint8 activations (``XNNPACKQuantizer``) give
    ``xnnpack``, quint8 (``X86InductorQuantizer``) ``inductor``. ``isa`` defaults to this CPU's.
    ``example_inputs``, if given, are run once through the imported net to check it.
    ``allow_inexact``: float kernels qexact may run in NumPy's order where it cannot reproduce
    PyTorch's (``("matmul",)``: MKL's sgemm); refused by default, marked inexact when allowed.
    ``backend``: ``"numpy"`` or ``"fast"`` (``qexact.kernels``; default: fast where it can run).
    """
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".pte"):
        return from_pte(model, example_inputs, engine, isa, backend)
    torch = _import_torch()
    if isinstance(model, (str, os.PathLike)):
        model = load_pt2(model) if os.fspath(model).endswith(".pt2") else load_script(model)
    _refuse_unconverted(model)
    if is_pt2e(model):
        graph = capture_pt2e(model)
        engine = engine or default_engine(graph)
    else:
        _refuse_torchao_subclass(model)
        graph = capture_script(model) if is_script_module(model) else capture(model)
        graph = alias_overwritten_residuals(graph)  # oneDNN's conv2d_add writes its residual
        engine = engine or torch.backends.quantized.engine
    graph.metadata.update({"torch_version": torch.__version__, "engine": engine})
    net = Net(graph, engine, isa, allow_inexact=allow_inexact, backend=backend)
    if example_inputs is not None:
        if not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        net(*example_inputs)
        # The shapes the model was imported with: what `qexact export c` builds for by default.
        graph.metadata["input_shapes"] = [list(getattr(item, "shape", ())) for item in example_inputs]
    return net
