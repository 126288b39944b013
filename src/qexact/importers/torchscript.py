"""Read TorchScript quantized models (``torch.jit.trace`` + ``torch.jit.save`` of eager or FX
converted models), from a file or a loaded ``ScriptModule``.

The module's inlined graph is walked node by node: constants and attribute reads are evaluated,
and each other node becomes a qexact node through the SAME handlers the FX/eager importer uses:

- a kind registered with ``@torchscript_handler`` (``aten::quantize_per_tensor``...) has its own;
- ``ns::name`` (``quantized::conv2d``) reaches the function handler of ``torch.ops.ns.name``,
  called with TorchScript's positional arguments (every default included): the kernel's packed
  parameters are read back with its own unpack, so what qexact holds is what PyTorch runs;
- ``aten::name`` reaches the handler of ``torch.name``, else that of ``torch.nn.functional.name``
  where its positional parameters are the ATen schema's, else the tensor method ``name``.

Every node refused is named in one UnsupportedError with its place: the module path (the
traced scope, or the inlined call stack of a loaded file) and the user's ``file:line``, the
innermost frame outside torch of the Python stack torch.jit.trace recorded.
"""

from __future__ import annotations

import inspect
import os
import re
import zipfile

from ..dtypes import dtype_named
from ..errors import ImporterError, UnsupportedError
from ..graph import Graph, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ._handlers import (_import_torch, _resolve, constant_node, function_handler_at,
                        load_handler_modules, method_handler_of, refusals_error, script_handler,
                        supported_functions, supported_methods,
                        supported_script_kinds, torchscript_handler,
                        unique_name)

_SCALAR_TYPES = {12: "qint8", 13: "quint8", 14: "qint32"}
"""c10::ScalarType codes of the quantized dtypes, as traced graphs pass them."""

_MEMORY_FORMATS = {0: "torch.contiguous_format", 1: "torch.preserve_format",
                   2: "torch.channels_last", 3: "torch.channels_last_3d"}
"""c10::MemoryFormat codes, as traced graphs pass them."""

_FIRST_OUTPUT_ONLY = {"aten::adaptive_max_pool1d", "aten::adaptive_max_pool2d",
                      "aten::adaptive_max_pool3d"}
"""Kinds with more outputs than the FX function their handler serves returns (the indices of
``F.adaptive_max_pool2d``): the node is the first output; reading another is refused."""

_INT64_MAX = 2 ** 63 - 1

_SCALAR_CASTS = {"aten::Float": float, "aten::Int": int, "prim::NumToTensor": lambda v: v}
"""Casts folded when their operand is a constant number (not a value computed in forward)."""


@torchscript_handler("aten::quantize_per_tensor")
def _quantize(name, inputs, module_path):
    x, scale, zero_point, dtype = inputs[:4]
    if not isinstance(scale, (int, float)) or not isinstance(zero_point, int):
        raise UnsupportedError("quantize_per_tensor with a computed (not constant) scale or "
                               "zero point is not supported")
    qparams = QParams.per_tensor(float(scale), int(zero_point),
                                 dtype_named(_SCALAR_TYPES.get(dtype, "?")))
    attrs, arrays = qparams_to_fields(qparams, "output")
    return Node(name, "quantize", (x,), attrs, arrays)


@torchscript_handler("aten::dequantize")
def _dequantize(name, inputs, module_path):
    return Node(name, "dequantize", inputs[:1])


def _first(op: str):
    return lambda name, inputs, module_path: Node(name, op, inputs[:1])


torchscript_handler("aten::dropout", "aten::dropout_", "aten::feature_dropout",
                    "prim::NumToTensor", "aten::Int", "aten::Float", "aten::detach")(
    _first("identity"))
torchscript_handler("aten::size")(lambda name, inputs, module_path: Node(
    name, "size", inputs[:1], {"dim": inputs[1] if len(inputs) > 1 else None}))


@torchscript_handler("aten::contiguous")
def _contiguous(name, inputs, module_path):
    memory_format = inputs[1] if len(inputs) > 1 else 0
    return method_handler_of("contiguous")(
        name, (inputs[0], _MEMORY_FORMATS.get(memory_format, memory_format)), {})


@torchscript_handler("aten::slice")
def _slice(name, inputs, module_path):
    """``x[:, 3:]`` traces to ``aten::slice(x, dim, start, end, step)``: FX's getitem."""
    x, dim, start, end, step = (list(inputs) + [None] * 5)[:5]
    if not all(v is None or isinstance(v, int) for v in (dim, start, end, step)):
        raise UnsupportedError("a slice with computed bounds is not supported; use constant bounds")
    bounds = slice(start, None if end is None or end >= _INT64_MAX else end, step)
    return Node(name, "getitem", (x, _at_dim(dim or 0, bounds)))


@torchscript_handler("aten::select")
def _select(name, inputs, module_path):
    """``x[:, -1]`` traces to ``aten::select(x, dim, index)``."""
    x, dim, index = inputs[:3]
    if not isinstance(dim, int) or not isinstance(index, int):
        raise UnsupportedError("select with a computed index is not supported")
    return Node(name, "getitem", (x, _at_dim(dim, index)))


def _at_dim(dim: int, item) -> tuple:
    if dim < 0:
        return (Ellipsis, item) + (slice(None),) * (-dim - 1)
    return (slice(None),) * dim + (item,)


@torchscript_handler("aten::index")
def _index(name, inputs, module_path):
    """``table[index]`` traces to ``aten::index(table, [index])``."""
    x, indices = inputs[:2]
    if not isinstance(indices, (list, tuple)) or len(indices) != 1 or indices[0] is None:
        raise UnsupportedError("indexing with anything but one index tensor is not supported")
    return Node(name, "getitem", (x, indices[0]))


# --- Dispatch: one handler table for FX, eager and TorchScript ----------------------------------


def _shared_handler(kind: str, ts_node):
    """``handler(name, inputs, module_path)`` for a kind: its own, or the FX/eager handler of
    the function (or tensor method) it is; None if there is none."""
    own = script_handler(kind)
    if own is not None:
        return own
    namespace, _, op = kind.partition("::")
    if namespace == "aten":
        names = [op] + ([op.rstrip("_")] if op.endswith("_") and not op.startswith("_") else [])
        for name in names:
            handler = function_handler_at(f"torch.{name}")
            if handler is None and _same_positions(ts_node, f"torch.nn.functional.{name}"):
                handler = function_handler_at(f"torch.nn.functional.{name}")
            handler = handler or method_handler_of(name)
            if handler is not None:
                return _positional(handler)
        return None
    handler = function_handler_at(f"torch.ops.{namespace}.{op}")
    return None if handler is None else _positional(handler)


def _positional(handler):
    return lambda name, inputs, module_path: handler(name, tuple(inputs), {})


def _same_positions(ts_node, path: str) -> bool:
    """Whether the Python function at ``path`` takes the ATen schema's arguments at the same
    positions (``F.max_pool2d`` does; ``F.embedding(input, weight)`` does not:
    ``aten::embedding(weight, indices)``). Builtins without a signature are taken as ATen's."""
    function = _resolve(path)
    if function is None:
        return False
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return True
    if any(parameter.kind == parameter.VAR_POSITIONAL for parameter in parameters):
        return True  # F.max_pool2d / adaptive_max_pool2d: boolean_dispatch(*args, **kwargs)
    parameters = [parameter.name for parameter in parameters]
    torch = _import_torch()
    try:
        arguments = [argument.name for argument in torch._C.parse_schema(ts_node.schema()).arguments]
    except RuntimeError:
        return False
    return all(position < len(parameters) and parameters[position] == name
               for position, name in enumerate(arguments) if position > 0)


# --- Capture ------------------------------------------------------------------------------------


def is_script_module(model) -> bool:
    torch = _import_torch()
    return isinstance(model, torch.jit.ScriptModule)


def load_script(path: str | os.PathLike):
    """``torch.jit.load`` a file on the CPU, with qexact errors."""
    if _is_torch_save_archive(path):
        raise ImporterError(
            f"{os.fspath(path)!r} was written by torch.save (a pickled model or state_dict), not "
            "by torch.jit.save; qexact never unpickles (loading a pickle can run code). Give "
            "qexact a TorchScript file (torch.jit.save(torch.jit.trace(model, example), path)), "
            "FILE.py:FACTORY (a function of your script returning the quantized model), or in "
            "Python: qexact.save(qexact.from_torch(model, example_inputs=...), 'model.qexact')")
    torch = _import_torch()
    try:
        return torch.jit.load(os.fspath(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImporterError(f"cannot load {os.fspath(path)!r} as a TorchScript model: "
                            f"{first_line}") from None


def _is_torch_save_archive(path) -> bool:
    """A zip archive of ``torch.save`` (``<root>/data.pkl``, no ``code/``), told apart from a
    TorchScript archive without reading any pickle in it."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return (any(name.endswith("/data.pkl") for name in names)
            and not any("/code/" in name or name.endswith("/constants.pkl") for name in names))


class _Unavailable:
    """A node output qexact does not compute (the indices of adaptive_max_pool2d)."""

    def __init__(self, description: str):
        self.description = description


def capture_script(module) -> Graph:
    """Walk a ScriptModule's inlined graph into a qexact ``Graph``."""
    load_handler_modules()  # handler modules of op families register TorchScript kinds too
    torch = _import_torch()
    graph = module.inlined_graph
    branching = [node.kind() for node in graph.nodes() if node.kind() in ("prim::If", "prim::Loop")]
    if branching:
        raise UnsupportedError(
            f"the TorchScript graph has control flow ({', '.join(sorted(set(branching)))}), which "
            "qexact cannot follow: export the model with torch.jit.trace instead of torch.jit.script")
    graph_inputs = list(graph.inputs())
    values: dict = {graph_inputs[0].unique(): module}   # self
    paths: dict = {graph_inputs[0].unique(): ""}
    inputs = []
    for value in graph_inputs[1:]:
        name = value.debugName().replace(".", "_")
        values[value.unique()] = Ref(name)
        inputs.append(name)
    nodes: list[Node] = []
    used: set[str] = set(inputs)
    refused: set[int] = set()   # values of refused nodes, and of the nodes reading them
    refusals: list[tuple[str, UnsupportedError]] = []
    constants: dict[int, Ref] = {}  # id of a tensor -> its constant node

    def add(node: Node) -> Ref:
        node.name = unique_name(used, node.name)
        nodes.append(node)
        return Ref(node.name)

    def tensor_argument(value):
        """A float/int tensor the model holds, read by an ATen op: a ``constant`` node."""
        if isinstance(value, torch.Tensor):
            if value.numel() == 1 and not value.is_quantized:
                return value.item()
            if id(value) not in constants:
                constants[id(value)] = add(constant_node("constant", value))
            return constants[id(value)]
        if isinstance(value, (list, tuple)):
            return type(value)(tensor_argument(item) for item in value)
        return value

    for ts_node in graph.nodes():
        kind = ts_node.kind()
        outputs = list(ts_node.outputs())
        if any(item.unique() in refused for item in ts_node.inputs()):
            refused.update(item.unique() for item in outputs)
            continue
        if kind == "prim::Constant":
            value = outputs[0].toIValue()
            values[outputs[0].unique()] = value
            continue
        if kind == "prim::GetAttr":
            owner = ts_node.input()
            attribute = ts_node.s("name")
            value = getattr(values[owner.unique()], attribute)
            if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_quantized:
                value = value.item()  # scales and zero points of FX models
            values[outputs[0].unique()] = value
            prefix = paths.get(owner.unique(), "")
            # a module's path; a tensor or packed-parameter object: its module's
            is_module = isinstance(value, (torch.nn.Module, torch.jit.ScriptModule)) \
                and attribute != "_packed_params"
            paths[outputs[0].unique()] = (f"{prefix}.{attribute}" if prefix else attribute) \
                if is_module else prefix
            continue
        arguments = [values.get(item.unique()) for item in ts_node.inputs()]
        if kind == "prim::ListConstruct":
            values[outputs[0].unique()] = list(arguments)
            continue
        if kind == "prim::TupleConstruct":
            values[outputs[0].unique()] = tuple(arguments)
            continue
        if kind in _SCALAR_CASTS and isinstance(arguments[0], (bool, int, float)):
            # a scripted eager module's float(self.scale), int(self.zero_point): constants
            values[outputs[0].unique()] = _SCALAR_CASTS[kind](arguments[0])
            continue
        module_path = _module_path(ts_node, paths)
        location = _user_line(ts_node)
        place = (f"{module_path!r}" if module_path else "forward") \
            + (f" ({location})" if location else "")
        try:
            missing = [item for item in arguments if isinstance(item, _Unavailable)]
            if missing:
                raise UnsupportedError(f"{kind} reads {missing[0].description}, which qexact "
                                       "does not compute")
            if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
                _unpack(arguments[0], outputs, values, add, kind)
                continue
            if kind in ("prim::TupleIndex", "prim::ListIndex", "aten::__getitem__"):
                container, index = arguments[:2]
                values[outputs[0].unique()] = (
                    container[index] if isinstance(container, (list, tuple))
                    else add(Node(f"getitem_{outputs[0].debugName()}", "getitem",
                                  (container, index))))
                continue
            handler = _shared_handler(kind, ts_node)
            if handler is None:
                raise _unsupported_kind(kind)
            if not kind.startswith("quantized::"):
                arguments = [tensor_argument(item) for item in arguments]
            op_name = kind.split("::")[-1].rstrip("_")
            name = module_path if module_path and module_path not in used else \
                f"{op_name}_{outputs[0].debugName().replace('.', '_')}"
            node = handler(name, arguments, module_path)
        except UnsupportedError as error:
            refusals.append((place, error))
            refused.update(item.unique() for item in outputs)
            continue
        node.source = " ".join(part for part in (module_path, location) if part) or kind
        ref = add(node)
        values[outputs[0].unique()] = ref
        if len(outputs) > 1:
            if kind in _FIRST_OUTPUT_ONLY:
                for position, item in enumerate(outputs[1:], start=1):
                    values[item.unique()] = _Unavailable(f"output {position} of {kind}")
            else:  # the node's value is a tuple, as the FX function's
                _unpack(ref, outputs, values, add, kind)
    if refusals:
        raise refusals_error(f"the TorchScript model {module.original_name}", refusals)
    returned = [values.get(item.unique()) for item in graph.return_node().inputs()]
    outputs = [item for item in _flatten(returned) if isinstance(item, Ref)]
    if not outputs:
        raise ImporterError("the TorchScript model returns no tensor qexact computed")
    return Graph(inputs, nodes, outputs, {"source_model": module.original_name})


def _unpack(container, outputs, values, add, kind) -> None:
    """Outputs of a ListUnpack (chunk's pieces) or of a node with several: Python items, or
    ``getitem`` nodes on a tuple-valued node."""
    if isinstance(container, (list, tuple)):
        if len(container) != len(outputs):
            raise UnsupportedError(f"{kind}: {len(outputs)} outputs from {len(container)} items")
        for item, value in zip(outputs, container):
            values[item.unique()] = value
        return
    if not isinstance(container, Ref):
        raise UnsupportedError(f"{kind} of {type(container).__name__} is not supported")
    for position, item in enumerate(outputs):
        if item.uses():
            values[item.unique()] = add(Node(f"{container.name}_{position}", "getitem",
                                             (container, position)))


def _unsupported_kind(kind: str) -> UnsupportedError:
    namespace, _, op = kind.partition("::")
    forms = (f"torch.ops.{namespace}.{op}" if namespace != "aten"
             else f"torch.{op}, torch.nn.functional.{op} or Tensor.{op}")
    supported = (("TorchScript kinds", tuple(supported_script_kinds())),
                 ("functions (aten::name: torch.name, torch.nn.functional.name or Tensor.name; "
                  "ns::name: torch.ops.ns.name)", tuple(supported_functions())),
                 ("tensor methods", tuple(supported_methods())))
    error = UnsupportedError(
        f"TorchScript op {kind} is not supported (qexact has no handler for {forms}); "
        + "; ".join(f"supported {what}: {', '.join(names)}" for what, names in supported))
    error.short = f"TorchScript op {kind} is not supported"
    error.supported = supported
    return error


def _module_path(ts_node, paths: dict) -> str:
    """The qualified name of the module that ran the node: that of the module whose parameters
    it reads (``head.out`` for ``quantized::linear``), else the traced scope
    (``__module.features.0``) or, in a loaded file, the inlined call stack
    (``features(Sequential).0(Conv2d)``)."""
    for item in ts_node.inputs():
        path = paths.get(item.unique())
        if path:
            return path
    scope = ts_node.scopeName()
    if scope:
        return scope.split("/")[-1].removeprefix("__module.").removeprefix("__module")
    try:
        hierarchy = ts_node.getModuleHierarchy()
    except RuntimeError:
        return ""
    return re.sub(r"\([^()]*\)", "", hierarchy or "")


def _user_line(ts_node) -> str:
    """``file.py:12``: the innermost frame outside torch of the Python stack torch.jit.trace
    recorded for the node (the line of the user's ``forward``), or ""."""
    text = ts_node.sourceRange() or ""
    for line in text.split("\nSerialized", 1)[0].splitlines():
        match = re.match(r"(.+)\((\d+)\): \S+$", line.strip())
        if match and match.group(1).replace("\\", "/").endswith("torch/jit/_trace.py"):
            break  # the frames beyond are those of the code calling torch.jit.trace
        if match and not _inside_torch(match.group(1)):
            return f"{match.group(1)}:{match.group(2)}"
    return ""


def _inside_torch(path: str) -> bool:
    normalized = path.replace("\\", "/")
    return normalized.startswith("<") or "/site-packages/torch/" in normalized \
        or "/torch/nn/" in normalized or "/torch/ao/" in normalized or "/torch/jit/" in normalized \
        or "/torch/_ops.py" in normalized


def _flatten(items):
    """The tensors a model returns, nested tuples and lists flattened in order (an LSTM's
    ``(output, (h_n, c_n))`` gives three outputs)."""
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _flatten(item)
        else:
            yield item
