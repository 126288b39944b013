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

import os

from ..dtypes import dtype_named
from ..errors import ImporterError, UnsupportedError
from ..graph import Graph, Net, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ._handlers import (_arg, _import_torch, _resolve, function_handler, function_node,
                        handler_of_module, load_handler_modules, method_handler, method_node,
                        module_handler, module_handlers, module_output_qparams,
                        supported_modules, weighted_layer_fields)
from .pt2e import capture_pt2e, default_engine, is_pt2e, load_pt2
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
method_handler("dequantize")(_first_input("dequantize"))
method_handler("size")(lambda name, args, kwargs: Node(
    name, "size", args[:1], {"dim": _arg(args, kwargs, 1, "dim", None)}))


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
    load_handler_modules()
    try:
        traced = torch.fx.Tracer().trace(model)
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
                handler = handler_of_module(handlers, module)
                if handler is None:
                    raise _unsupported_module(fx_node.target, module,
                                              fx=isinstance(model, torch.fx.GraphModule))
                node = handler(module, fx_node.name, args)
            elif fx_node.op == "call_function":
                node = function_node(fx_node.name, fx_node.target, args, kwargs)
            elif fx_node.op == "call_method":
                node = method_node(fx_node.name, fx_node.target, args, kwargs)
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


def from_pte(path, example_inputs: tuple | None = None, engine: str | None = None,
             isa: str | None = None) -> Net:
    """An ExecuTorch ``.pte`` file with XNNPACK delegates, as the device runs it (engine
    ``xnnpack``): its weights, int32 biases and quantization parameters as the file stores them.
    Needs neither torch nor executorch."""
    from .pte_graph import capture_pte

    if engine not in (None, "xnnpack"):
        raise UnsupportedError(f"a .pte with XNNPACK delegates runs on engine 'xnnpack', not "
                               f"{engine!r}: it holds the int32 biases fixed at lowering")
    net = Net(capture_pte(path), "xnnpack", isa)
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


def from_torch(model, example_inputs: tuple | None = None, engine: str | None = None,
               isa: str | None = None, allow_inexact=()) -> Net:
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
    """
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".pte"):
        return from_pte(model, example_inputs, engine, isa)
    torch = _import_torch()
    if isinstance(model, (str, os.PathLike)):
        model = load_pt2(model) if os.fspath(model).endswith(".pt2") else load_script(model)
    if is_pt2e(model):
        graph = capture_pt2e(model)
        engine = engine or default_engine(graph)
    else:
        _refuse_torchao_subclass(model)
        graph = capture_script(model) if is_script_module(model) else capture(model)
        engine = engine or torch.backends.quantized.engine
    graph.metadata.update({"torch_version": torch.__version__, "engine": engine})
    net = Net(graph, engine, isa, allow_inexact=allow_inexact)
    if example_inputs is not None:
        if not isinstance(example_inputs, (tuple, list)):
            example_inputs = (example_inputs,)
        net(*example_inputs)
    return net
