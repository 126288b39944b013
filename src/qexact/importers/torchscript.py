"""Read TorchScript quantized models (``torch.jit.trace`` + ``torch.jit.save`` of eager or FX
converted models), from a file or a loaded ``ScriptModule``.

The module's inlined graph is walked node by node: constants and attribute reads are evaluated,
quantized kernels (``quantized::linear``...) and ATen ops become qexact nodes through handlers
registered with ``@torchscript_handler("quantized::linear", ...)``. Packed weights are read back
with the kernels' own unpack functions, so what qexact holds is exactly what PyTorch runs.
"""

from __future__ import annotations

import os

from ..dtypes import dtype_named
from ..errors import ImporterError, UnsupportedError
from ..graph import Graph, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ._handlers import (_import_torch, load_handler_modules, script_handler,
                        supported_script_kinds, torchscript_handler, weighted_layer_fields)

_SCALAR_TYPES = {12: "qint8", 13: "quint8", 14: "qint32"}
"""c10::ScalarType codes of the quantized dtypes, as traced graphs pass them."""


@torchscript_handler("aten::quantize_per_tensor")
def _quantize(name, inputs, module_path):
    x, scale, zero_point, dtype = inputs[:4]
    qparams = QParams.per_tensor(scale, zero_point, dtype_named(_SCALAR_TYPES.get(dtype, "?")))
    attrs, arrays = qparams_to_fields(qparams, "output")
    return Node(name, "quantize", (x,), attrs, arrays)


@torchscript_handler("aten::dequantize")
def _dequantize(name, inputs, module_path):
    return Node(name, "dequantize", inputs[:1])


@torchscript_handler("quantized::linear")
def _linear(name, inputs, module_path, relu=False):
    torch = _import_torch()
    x, packed, scale, zero_point = inputs[:4]
    weight, bias = torch.ops.quantized.linear_unpack(packed)
    attrs, arrays = weighted_layer_fields(
        weight, bias, QParams.per_tensor(scale, zero_point, dtype_named("quint8")))
    attrs["relu"] = relu
    return Node(name, "linear", (x,), attrs, arrays)


torchscript_handler("quantized::linear_relu")(
    lambda name, inputs, module_path: _linear(name, inputs, module_path, relu=True))


def _first(op: str):
    return lambda name, inputs, module_path: Node(name, op, inputs[:1])


torchscript_handler("aten::relu", "aten::relu_")(_first("relu"))
torchscript_handler("aten::contiguous", "aten::dropout", "aten::dropout_",
                    "aten::feature_dropout", "prim::NumToTensor", "aten::Int")(_first("identity"))
torchscript_handler("aten::flatten")(lambda name, inputs, module_path: Node(
    name, "flatten", inputs[:1], {"start_dim": inputs[1], "end_dim": inputs[2]}))
torchscript_handler("aten::view", "aten::reshape")(lambda name, inputs, module_path: Node(
    name, "reshape", (inputs[0], *inputs[1])))
torchscript_handler("aten::size")(lambda name, inputs, module_path: Node(
    name, "size", inputs[:1], {"dim": inputs[1] if len(inputs) > 1 else None}))


def is_script_module(model) -> bool:
    torch = _import_torch()
    return isinstance(model, torch.jit.ScriptModule)


def load_script(path: str | os.PathLike):
    """``torch.jit.load`` a file on the CPU, with qexact errors."""
    torch = _import_torch()
    try:
        return torch.jit.load(os.fspath(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImporterError(f"cannot load {os.fspath(path)!r} as a TorchScript model: "
                            f"{first_line}") from None


def capture_script(module) -> Graph:
    """Walk a ScriptModule's inlined graph into a qexact ``Graph``."""
    load_handler_modules()  # handler modules of op families register TorchScript kinds too
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
    for ts_node in graph.nodes():
        kind = ts_node.kind()
        outputs = list(ts_node.outputs())
        if kind == "prim::Constant":
            values[outputs[0].unique()] = outputs[0].toIValue()
            continue
        if kind == "prim::GetAttr":
            owner = ts_node.input()
            attribute = ts_node.s("name")
            values[outputs[0].unique()] = getattr(values[owner.unique()], attribute)
            prefix = paths.get(owner.unique(), "")
            paths[outputs[0].unique()] = f"{prefix}.{attribute}" if prefix else attribute
            continue
        arguments = [values.get(item.unique()) for item in ts_node.inputs()]
        if kind == "prim::ListConstruct":
            values[outputs[0].unique()] = list(arguments)
            continue
        if kind == "prim::TupleConstruct":
            values[outputs[0].unique()] = tuple(arguments)
            continue
        handler = script_handler(kind)
        location = _location(ts_node)
        if handler is None:
            raise UnsupportedError(
                f"TorchScript op {kind} at {location} is not supported; supported: "
                f"{', '.join(supported_script_kinds())}")
        module_path = next((paths[item.unique()] for item in ts_node.inputs()
                            if item.unique() in paths and paths[item.unique()]), "")
        module_path = module_path.replace("._packed_params._packed_params", "")
        name = module_path if module_path and module_path not in used else \
            f"{kind.split('::')[-1].rstrip('_')}_{outputs[0].debugName().replace('.', '_')}"
        while name in used:
            name += "_"
        try:
            node = handler(name, arguments, module_path)
        except UnsupportedError as error:
            raise UnsupportedError(f"{kind} at {location}: {error}") from None
        node.source = module_path or location
        used.add(node.name)
        nodes.append(node)
        values[outputs[0].unique()] = Ref(node.name)
    returned = [values.get(item.unique()) for item in graph.return_node().inputs()]
    if len(returned) == 1 and isinstance(returned[0], tuple):
        returned = list(returned[0])
    outputs = [item for item in returned if isinstance(item, Ref)]
    if not outputs:
        raise ImporterError("the TorchScript model returns no tensor qexact computed")
    return Graph(inputs, nodes, outputs, {"source_model": module.original_name})


def _location(ts_node) -> str:
    text = str(ts_node).strip()
    return text.split("#", 1)[1].strip() if "#" in text else ts_node.kind()
