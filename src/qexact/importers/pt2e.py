"""Read PT2E models: ``convert_pt2e`` GraphModules, ``ExportedProgram``s and ``.pt2`` files.

A PT2E model (torchao ``prepare_pt2e``/``convert_pt2e``) is an ATen graph in which quantized
tensors appear as ``quantized_decomposed.quantize_per_tensor`` followed by
``dequantize_per_tensor``, with float ATen ops between, and weights as int8 constants behind
``dequantize_per_channel``::

    x -> quantize -> dequantize -> aten.conv2d(., dq(w_int8), b) -> [aten.relu] -> quantize -> ...

Every deployment fuses such a ``dequantize -> op -> quantize`` pattern into one quantized op
(ExecuTorch's XNNPACK delegate, Inductor's oneDNN ops), so qexact reads it as one: a ``conv``
node from the quantized input to the quantized output, with the int8 weight, the float bias
and the output's qparams; how it is computed is the engine's (``xnnpack``, ``inductor``,
``pt2e_eager``). An op that no quantize follows keeps a float32 output where the engine has one
(a last Linear under Inductor), and the float ops after it are float32 nodes up to the next
quantize, except the residual adds Inductor fuses into a conv or Linear (``_residual_add``).
A dynamically quantized Linear (``choose_qparams -> quantize -> dequantize -> linear``) is one
``linear_dynamic`` node. Unsupported ops are all reported at once, each with its place in the
user's model (the module path PT2E keeps in ``nn_module_stack``).

torch is imported only inside these functions: ``import qexact`` never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..dtypes import dtype_named
from ..errors import ImporterError, UnsupportedError
from ..graph import Graph, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ._handlers import _import_torch, torch_threads, unique_name

QUANTIZE = ("quantize_per_tensor",)
DEQUANTIZE = ("dequantize_per_tensor",)


# --- What a value of the PT2E graph is, seen from qexact -------------------------------------


@dataclass(frozen=True)
class Quantized:
    """A quantized tensor: a qexact value (``ref``) with its qparams."""

    ref: Ref
    qparams: QParams


@dataclass(frozen=True)
class Dequantized:
    """``dequantize(q)``: the float view of a quantized tensor, made a node only when a float op
    reads it (``float_ref``)."""

    quantized: Quantized


@dataclass(frozen=True)
class FloatValue:
    ref: Ref


@dataclass(frozen=True)
class Weight:
    """``dequantize_per_channel/per_tensor`` of an int8 constant: a layer's weight."""

    values: np.ndarray
    qparams: QParams


@dataclass(frozen=True)
class Constant:
    """A float constant (a bias), as NumPy."""

    values: np.ndarray


@dataclass(frozen=True)
class Fused:
    """A node folded into the op before it (a ReLU after a conv); reading it is an error."""

    into: str


@dataclass(frozen=True)
class DynamicChoice:
    """``choose_qparams(x)``: qparams chosen at run time from a float tensor (``ref``), and the
    values derived from it (its ``getitem`` parts, the quantize and dequantize it drives)."""

    ref: Ref
    dtype: str
    stage: str = "qparams"  # "scale", "zero_point", "quantized", "dequantized"


@dataclass(frozen=True)
class Pieces:
    """The tuple of a ``split``/``chunk`` (node ``ref``), of a quantized tensor (``qparams``) or
    a float one (None); ``getitem`` picks one."""

    ref: Ref
    qparams: QParams | None


@dataclass(frozen=True)
class Blocked:
    """The value of an op that is not supported: ops reading it are not reported again."""


BLOCKED = Blocked()


@dataclass
class _Capture:
    module: object
    nodes: list[Node] = field(default_factory=list)
    values: dict = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    blockers: list[str] = field(default_factory=list)
    float_refs: dict = field(default_factory=dict)
    dynamic_dtypes: set = field(default_factory=set)

    def unique(self, name: str) -> str:
        return unique_name(self.names, name)

    def add(self, node: Node) -> Ref:
        self.nodes.append(node)
        return Ref(node.name)


# --- Entry points -----------------------------------------------------------------------------


def is_pt2e(model) -> bool:
    """Whether ``model`` is a PT2E model: an ``ExportedProgram``, or a GraphModule whose graph
    calls ``quantized_decomposed`` ops. An exported GraphModule without them is refused: it is
    not quantized (its quantizer annotated none of its ops)."""
    torch = _import_torch()
    if isinstance(model, torch.export.ExportedProgram):
        return True
    if not isinstance(model, torch.fx.GraphModule):
        return False
    if any(node.op == "call_function" and _decomposed_name(node.target) is not None
           for node in model.graph.nodes):
        return True
    if any("val" in node.meta and "nn_module_stack" in node.meta for node in model.graph.nodes):
        raise UnsupportedError(
            "this exported model (torch.export) has no quantized_decomposed quantize/dequantize "
            "ops: it is not quantized. Quantize it with PT2E (prepare_pt2e, calibrate, "
            "convert_pt2e); if you did, the quantizer annotated none of its ops (for example "
            "X86InductorQuantizer leaves Conv1d in float32)")
    return False


def load_pt2(path) -> object:
    """The ``ExportedProgram`` saved at ``path`` (``torch.export.save``)."""
    torch = _import_torch()
    try:
        return torch.export.load(os.fspath(path))
    except Exception as error:  # torch raises many types for a bad archive
        raise ImporterError(f"could not read {os.fspath(path)!r} as a torch.export archive "
                            f"(.pt2): {type(error).__name__}: {error}") from None


def capture_pt2e(model) -> Graph:
    """A qexact ``Graph`` of a PT2E model (module docstring)."""
    torch = _import_torch()
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    capture = _Capture(model)
    inputs: list[str] = []
    outputs: list[Ref] = []
    for fx_node in model.graph.nodes:
        if fx_node.op == "placeholder":
            name = capture.unique(fx_node.name)
            inputs.append(name)
            capture.values[fx_node] = FloatValue(Ref(name))
        elif fx_node.op == "get_attr":
            capture.values[fx_node] = _attribute(model, fx_node.target)
        elif fx_node.op == "call_module":  # export's _guards_fn: input checks, no data
            continue
        elif fx_node.op == "call_function":
            try:
                _call(capture, fx_node)
            except UnsupportedError as error:
                capture.blockers.append(f"{_place(fx_node)}: {error}")
                capture.values[fx_node] = BLOCKED
        elif fx_node.op == "output":
            for item in _flat(fx_node.args[0]):
                if capture.values.get(item) is BLOCKED:
                    continue
                try:
                    outputs.append(_float_ref(capture, capture.values.get(item), item))
                except UnsupportedError as error:
                    capture.blockers.append(f"output: {error}")
    if capture.blockers:
        raise UnsupportedError(
            f"{len(capture.blockers)} op(s) of this PT2E model are not supported:\n  - "
            + "\n  - ".join(capture.blockers)
            + f"\nSupported ATen ops between quantize and dequantize: {', '.join(sorted(OPS))}")
    return Graph(inputs, capture.nodes, outputs,
                 {"source_model": type(model).__name__, "flow": "pt2e",
                  "activation_dtypes": sorted({q.qparams.dtype.name for q in
                                               _quantized_values(capture)}
                                              | capture.dynamic_dtypes)})


def default_engine(graph: Graph) -> str:
    """The engine a PT2E model was quantized for, from its activations: qint8 is
    ``XNNPACKQuantizer``'s (engine ``xnnpack``), quint8 ``X86InductorQuantizer``'s (``inductor``)."""
    dtypes = graph.metadata.get("activation_dtypes", [])
    return "xnnpack" if dtypes == ["qint8"] else "inductor"


# --- Values --------------------------------------------------------------------------------------


def _quantized_values(capture: _Capture):
    return [value for value in capture.values.values() if isinstance(value, Quantized)]


def _attribute(model, target: str):
    torch = _import_torch()
    value = model
    for part in target.split("."):
        value = getattr(value, part)
    if isinstance(value, torch.Tensor):
        return Constant(value.detach().cpu().numpy().copy())
    return value


def _flat(value):
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def _float_ref(capture: _Capture, value, fx_node) -> Ref:
    """A float32 qexact value for ``value``: a dequantize node is added the first time a float
    consumer reads a quantized tensor."""
    if isinstance(value, FloatValue):
        return value.ref
    if isinstance(value, Dequantized):
        quantized = value.quantized
        if quantized.ref not in capture.float_refs:
            name = capture.unique(f"{quantized.ref.name}_dequantize")
            capture.float_refs[quantized.ref] = capture.add(
                Node(name, "dequantize", (quantized.ref,), source=name))
        return capture.float_refs[quantized.ref]
    if isinstance(value, Fused):
        raise UnsupportedError(f"{fx_node} was fused into {value.into} and cannot be read")
    raise UnsupportedError(f"{getattr(fx_node, 'name', fx_node)} is not a float tensor qexact "
                           "computes")


def _quantized_input(capture: _Capture, value, what: str) -> Quantized:
    if isinstance(value, Dequantized):
        return value.quantized
    raise UnsupportedError(f"{what} is not a dequantized quantized tensor; qexact runs the float "
                           "ops of a PT2E model only between dequantize and quantize")


def _decomposed_name(target) -> str | None:
    """``quantize_per_tensor`` for ``torch.ops.quantized_decomposed.quantize_per_tensor.default``."""
    name = getattr(target, "name", None)
    text = name() if callable(name) else str(target)
    if not text.startswith("quantized_decomposed::"):
        return None
    return text.split("::", 1)[1].split(".", 1)[0]


def _aten_name(target) -> str:
    name = getattr(target, "name", None)
    text = name() if callable(name) else str(target)
    return text.replace("aten::", "")


def _place(fx_node) -> str:
    """Where ``fx_node`` is in the user's model: its module path and the ATen op."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    path = ""
    if stack:
        path, module_type = list(stack.values())[-1]
        module_type = getattr(module_type, "__name__", str(module_type)).split(".")[-1]
        path = f"{path} ({module_type})" if path else module_type
    op = _aten_name(fx_node.target) if fx_node.op == "call_function" else fx_node.op
    return f"{path + ': ' if path else ''}{op} [{fx_node.name}]"


def _source(fx_node) -> str:
    stack = fx_node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else fx_node.name


def _qparams(args, dtype_position: int = 5) -> QParams:
    """QParams of ``quantize_per_tensor(x, scale, zero_point, qmin, qmax, dtype)``."""
    scale, zero_point, qmin, qmax, dtype = args[1:6]
    if not isinstance(scale, float) and hasattr(scale, "item"):
        scale = float(scale.item())
    name = {"torch.int8": "qint8", "torch.uint8": "quint8", "torch.int32": "qint32"}.get(
        str(dtype))
    if name is None:
        raise UnsupportedError(f"quantized dtype {dtype} is not supported; supported: int8, "
                               "uint8, int32")
    qdtype = dtype_named(name)
    if (qmin, qmax) != (qdtype.qmin, qdtype.qmax):
        raise UnsupportedError(f"a quantized range [{qmin}, {qmax}] narrower than {dtype}'s "
                               f"[{qdtype.qmin}, {qdtype.qmax}] is not supported for activations")
    return QParams.per_tensor(float(scale), int(zero_point), qdtype)


# --- Ops -------------------------------------------------------------------------------------------


def _call(capture: _Capture, fx_node) -> None:
    values = capture.values
    if fx_node in values:  # already consumed (a fused ReLU, a quantize taken by its producer)
        return
    decomposed = _decomposed_name(fx_node.target)
    args = [values.get(arg, arg) if _is_fx_node(arg) else arg for arg in fx_node.args]
    if getattr(fx_node.target, "__name__", "") == "getitem" and isinstance(args[0], DynamicChoice):
        values[fx_node] = DynamicChoice(args[0].ref, args[0].dtype,
                                        ("scale", "zero_point")[int(args[1])])
        return
    if getattr(fx_node.target, "__name__", "") == "getitem" and isinstance(args[0], Pieces):
        ref = capture.add(Node(capture.unique(fx_node.name), "getitem", (args[0].ref,
                                                                         int(args[1])),
                               source=_source(fx_node)))
        values[fx_node] = FloatValue(ref) if args[0].qparams is None else \
            Dequantized(Quantized(ref, args[0].qparams))
        return
    name = _aten_name(fx_node.target)
    handler = OPS.get(name.split(".")[0])
    if decomposed is None and handler is None:
        raise UnsupportedError(f"ATen op {name} is not supported")
    if any(value is BLOCKED for value in _flat(args)):
        values[fx_node] = BLOCKED  # a supported op downstream of a blocker: not reported again
        return
    if decomposed is not None:
        values[fx_node] = _decomposed(capture, fx_node, decomposed, args)
        return
    handler(capture, fx_node, args)


def _is_fx_node(value) -> bool:
    return type(value).__name__ == "Node" and hasattr(value, "users")


def _decomposed(capture: _Capture, fx_node, op: str, args):
    if op == "choose_qparams":  # dynamic quantization: its qparams are the kernel's, at run time
        dtype = _dtype_name(args[4] if len(args) > 4 else fx_node.kwargs.get("dtype"))
        return DynamicChoice(_float_ref(capture, args[0], fx_node.args[0]), dtype)
    if isinstance(args[1] if len(args) > 1 else None, DynamicChoice):
        return _dynamic_convert(op, args)
    if op in QUANTIZE:
        qparams = _qparams(args)
        source = args[0]
        if isinstance(source, Dequantized) and source.quantized.qparams == qparams:
            return source.quantized  # quantize(dequantize(q)) with the same qparams: q itself
        ref = _float_ref(capture, source, fx_node.args[0])
        attrs, arrays = qparams_to_fields(qparams, "output")
        name = capture.unique(fx_node.name)
        return Quantized(capture.add(Node(name, "quantize", (ref,), attrs, arrays,
                                          source=_source(fx_node))), qparams)
    if op in DEQUANTIZE:
        if not isinstance(args[0], Quantized):
            raise UnsupportedError("dequantize_per_tensor of a value that is not a quantized "
                                   "tensor qexact computes")
        if _qparams([None, *args[1:6]]) != args[0].qparams:
            raise UnsupportedError("dequantize_per_tensor with qparams other than its input's")
        return Dequantized(args[0])
    if op == "dequantize_per_channel":
        weight, scales, zero_points, axis = args[:4]
        if not isinstance(weight, Constant) or weight.values.dtype != np.int8:
            raise UnsupportedError("dequantize_per_channel of a weight that is not a folded int8 "
                                   "constant (convert_pt2e(fold_quantize=True) folds them)")
        qparams = QParams.per_channel(_numpy(scales), _numpy(zero_points), int(axis),
                                      dtype_named("qint8"))
        return Weight(weight.values, qparams)
    raise UnsupportedError(f"quantized_decomposed.{op} is not supported")


def _dynamic_convert(op: str, args) -> DynamicChoice:
    """``quantize_per_tensor.tensor(x, scale, zero_point)`` and its ``dequantize`` with the
    parts of a ``choose_qparams(x)``: the dequantized value a dynamically quantized layer reads."""
    choice = args[1]
    if op in QUANTIZE and isinstance(args[0], FloatValue) and args[0].ref == choice.ref:
        return DynamicChoice(choice.ref, choice.dtype, "quantized")
    if op in DEQUANTIZE and isinstance(args[0], DynamicChoice) and args[0].stage == "quantized":
        return DynamicChoice(choice.ref, choice.dtype, "dequantized")
    raise UnsupportedError(f"{op} with run-time qparams is supported only as choose_qparams -> "
                           "quantize -> dequantize of one tensor, read by a Linear")


def _dtype_name(dtype) -> str:
    name = {"torch.int8": "qint8", "torch.uint8": "quint8"}.get(str(dtype))
    if name is None:
        raise UnsupportedError(f"dynamic quantization to {dtype} is not supported; supported: "
                               "int8, uint8")
    return name


def _numpy(value) -> np.ndarray:
    return value.values if isinstance(value, Constant) else np.asarray(value)


HARDTANH = ("hardtanh", "hardtanh_", "relu6", "relu6_")


def _hardtanh_bounds(fx_node) -> tuple[float, float]:
    """``(low, high)`` of an ``aten.hardtanh(x, low=-1, high=1)`` (relu6: ``(0, 6)``) node."""
    if _aten_name(fx_node.target).split(".")[0].startswith("relu6"):
        return 0.0, 6.0
    args = list(fx_node.args) + [fx_node.kwargs.get("min_val", -1.0),
                                 fx_node.kwargs.get("max_val", 1.0)][len(fx_node.args) - 1:]
    return float(args[1]), float(args[2])


def _following_quantize(fx_node, allow_relu: bool, allow_clamp: bool = False):
    """The ``quantize_per_tensor`` that takes this op's output (through a ReLU when
    ``allow_relu``, or a hardtanh/relu6 when ``allow_clamp``), and that activation node, or
    (None, None) where a float consumer reads it."""
    users = list(fx_node.users)
    relu = None
    if len(users) == 1:
        name = _aten_name(users[0].target).split(".")[0]
        if (allow_relu and name in ("relu", "relu_")) or (allow_clamp and name in HARDTANH):
            relu = users[0]
            users = list(relu.users)
    if len(users) == 1 and _decomposed_name(users[0].target) in QUANTIZE:
        return users[0], relu
    return None, None


def _emit(capture: _Capture, fx_node, op: str, inputs: tuple, attrs: dict,
          arrays: dict | None = None, *, allow_relu: bool = False, float_output: bool = False,
          output_qparams_attr: bool = True, allow_clamp: bool = False):
    """Add the qexact node for ``fx_node``: with the qparams of the quantize that follows (which
    then stands for this node's value), or a float32 output (``float_output``) where none does.
    ``allow_clamp``: a hardtanh/relu6 between the op and that quantize is fused (attr ``clamp``:
    Inductor's "hardtanh" post-op of a conv; the engine's epilogue applies it)."""
    quantize, relu = _following_quantize(fx_node, allow_relu, allow_clamp)
    arrays = dict(arrays or {})
    name = capture.unique(_source(fx_node) if op in ("conv", "linear") else fx_node.name)
    if relu is not None and _aten_name(relu.target).split(".")[0] in HARDTANH:
        attrs["clamp"] = list(_hardtanh_bounds(relu))
        relu_fused, relu = relu, None
    else:
        relu_fused = relu
    if allow_relu:
        attrs["relu"] = relu is not None
    if quantize is None:
        if not float_output:
            raise UnsupportedError("no quantize follows it (its output stays float32), and "
                                   "qexact computes it only between dequantize and quantize")
        ref = capture.add(Node(name, op, inputs, attrs, arrays, source=_source(fx_node)))
        capture.values[fx_node] = FloatValue(ref)
        return
    qparams = _qparams([None, *quantize.args[1:6]])
    if output_qparams_attr:
        output_attrs, output_arrays = qparams_to_fields(qparams, "output")
        attrs.update(output_attrs)
        arrays.update(output_arrays)
    ref = capture.add(Node(name, op, inputs, attrs, arrays, source=_source(fx_node)))
    result = Quantized(ref, qparams)
    capture.values[fx_node] = Fused(name)
    if relu_fused is not None:
        capture.values[relu_fused] = Fused(name)
    capture.values[quantize] = result


def _layer(capture: _Capture, fx_node, op: str, x, weight, bias, attrs: dict) -> None:
    dynamic = isinstance(x, DynamicChoice) and x.stage == "dequantized"
    if dynamic and op != "linear":
        raise UnsupportedError(f"a dynamically quantized {op} is not supported (qexact runs "
                               "dynamically quantized Linear layers)")
    quantized = None if dynamic else _quantized_input(capture, x, "the layer's input")
    if not isinstance(weight, Weight):
        raise UnsupportedError("its weight is not a quantized int8 constant (dequantize_per_channel"
                               " of a folded weight)")
    weight_attrs, arrays = qparams_to_fields(weight.qparams, "weight")
    attrs.update(weight_attrs)
    arrays["weight"] = weight.values
    if bias is not None:
        if not isinstance(bias, Constant):
            raise UnsupportedError("its bias is not a constant")
        arrays["bias"] = bias.values.astype(np.float32)
    if dynamic:  # float32 in and out; the engine quantizes the input (ops/linear_dynamic.py)
        attrs["input_dtype"] = x.dtype
        capture.dynamic_dtypes.add(x.dtype)
        capture.values[fx_node] = FloatValue(capture.add(Node(
            capture.unique(_source(fx_node)), "linear_dynamic", (x.ref,), attrs, arrays,
            source=_source(fx_node))))
        return
    _emit(capture, fx_node, op, (quantized.ref,), attrs, arrays, allow_relu=True,
          float_output=True, allow_clamp=op == "conv")


def _linear(capture, fx_node, args):
    x, weight = args[:2]
    bias = args[2] if len(args) > 2 else fx_node.kwargs.get("bias")
    _layer(capture, fx_node, "linear", x, weight, bias, {})


def _conv(capture, fx_node, args):
    name = _aten_name(fx_node.target).split(".")[0]
    x, weight = args[:2]
    bias = args[2] if len(args) > 2 else None
    dims = weight.values.ndim - 2 if isinstance(weight, Weight) else 2
    if name == "convolution":
        stride, padding, dilation, transposed, _, groups = args[3:9]
        if transposed:
            raise UnsupportedError("transposed convolution is not supported in PT2E models")
    else:
        defaults = (None, None, None, [1] * dims, [0] * dims, [1] * dims, 1)
        given = list(args) + list(defaults[len(args):])
        stride, padding, dilation, groups = given[3:7]
    if isinstance(padding, str):
        raise UnsupportedError(f"padding={padding!r} is not supported; give integers")
    _layer(capture, fx_node, "conv", x, weight, bias,
           {"stride": _ints(stride, dims), "padding": _ints(padding, dims),
            "dilation": _ints(dilation, dims), "groups": int(groups), "padding_mode": "zeros"})


def _ints(value, dims: int) -> list[int]:
    if isinstance(value, int):
        return [value] * dims
    value = [int(v) for v in value]
    return value * dims if len(value) == 1 else value


def _binary(op: str):
    def handler(capture, fx_node, args):
        a, b = args[:2]
        alpha = fx_node.kwargs.get("alpha", 1)
        if alpha != 1:
            raise UnsupportedError(f"{op} with alpha={alpha} is not supported")
        if op == "add" and _residual_add(capture, fx_node, a, b):
            return
        if any(isinstance(value, FloatValue) for value in (a, b)):
            # the quantizer left an input in float32 (a conv's output): a float32 op, as
            # Inductor's generated code and ATen run it (one IEEE operation per element)
            inputs = tuple(_float_ref(capture, value, arg) for value, arg in
                           zip((a, b), fx_node.args))
            capture.values[fx_node] = FloatValue(capture.add(Node(
                capture.unique(fx_node.name), op, inputs, source=_source(fx_node))))
            return
        inputs = tuple(_quantized_input(capture, value, f"input {i} of {op}").ref
                       for i, value in enumerate((a, b)))
        quantize, relu = _following_quantize(fx_node, allow_relu=True)
        _emit(capture, fx_node, op + ("_relu" if relu is not None else ""), inputs, {},
              allow_relu=True)
        node = capture.nodes[-1]
        node.attrs.pop("relu", None)

    return handler


def _residual_add(capture: _Capture, fx_node, a, b) -> bool:
    """``quantize([relu](layer(x) + y))`` with the layer's float32 output read by this add alone
    (X86InductorQuantizer leaves it unquantized for the fusion): Inductor fuses the add into the
    layer, with a quantized output (torchao quantization/pt2e/inductor_passes/x86.py
    ``_is_valid_quantized_op_binary_optimization_pattern``), and the layer node takes ``y`` as
    its second input:

    - a conv, ``y = dequantize(q)`` where ``q`` is not the conv's own input and nothing after the
      conv reads it: oneDNN's "sum" post-op on ``q``'s buffer, in place
      (``qconv2d_pointwise.binary``);
    - a Linear, ``y`` a float32 tensor nothing after the Linear reads: oneDNN's "add" post-op
      (``qlinear_pointwise.binary``; the extra input is never quantized).

    Returns False where the pattern does not apply: Inductor then adds in float32 (a float32
    "sum" post-op or its own loop, the same IEEE additions), and so does qexact."""
    quantize, relu = _following_quantize(fx_node, allow_relu=True)
    floats = [value.ref for value in (a, b) if isinstance(value, FloatValue)]
    position = next((i for i, node in enumerate(capture.nodes)
                     if Ref(node.name) in floats and node.op in ("conv", "linear")), None)
    if position is None:
        return False
    layer = capture.nodes[position]
    index = 0 if getattr(a, "ref", None) == Ref(layer.name) else 1
    layer_fx, other_fx, other = fx_node.args[index], fx_node.args[1 - index], (a, b)[1 - index]
    if (quantize is None or len(layer_fx.users) != 1 or layer.attrs.get("relu")
            or "clamp" in layer.attrs or _shape_of(layer_fx) != _shape_of(other_fx)):
        return False
    if layer.op == "conv":  # the residual in place: a quantized tensor nothing later reads
        if not isinstance(other, Dequantized) or other.quantized.ref == layer.inputs[0] or \
                len(_read_after(other_fx.args[0], layer_fx)) > 1:
            return False
        residual = other.quantized.ref
    else:  # Linear: a float32 tensor, not the layer's own input, nothing later reads
        if not isinstance(other, (FloatValue, Dequantized)) or \
                len(_read_after(other_fx, layer_fx)) > 1:
            return False
        residual = _float_ref(capture, other, other_fx)
    del capture.nodes[position]  # added again last: it now reads the residual too
    qparams = _qparams([None, *quantize.args[1:6]])
    output_attrs, output_arrays = qparams_to_fields(qparams, "output")
    ref = capture.add(Node(layer.name, layer.op, (layer.inputs[0], residual),
                           {**layer.attrs, "relu": relu is not None, **output_attrs},
                           {**layer.arrays, **output_arrays}, source=layer.source))
    for node in (fx_node, relu):
        if node is not None:
            capture.values[node] = Fused(layer.name)
    capture.values[quantize] = Quantized(ref, qparams)
    return True


def _shape_of(fx_node):
    value = fx_node.meta.get("val")
    return None if value is None else tuple(value.shape)


def _read_after(value_fx, layer_fx) -> list:
    """The readers of ``value_fx`` that are not ancestors of ``layer_fx`` (torch/_inductor/
    fx_passes/mkldnn_fusion.py ``_get_remaining_users``; PT2E gives each reader of a quantized
    tensor its own dequantize node): with one, the add, its buffer is free for the fusion."""
    ancestors, stack = set(), [layer_fx]
    while stack:
        node = stack.pop()
        for parent in node.all_input_nodes:
            if parent not in ancestors:
                ancestors.add(parent)
                stack.append(parent)
    return [user for user in value_fx.users  # (export's _guards_fn reads inputs: not an op)
            if user.op == "call_function" and user not in ancestors]


FLOAT_FORMS = ("relu", "clamp", "max_pool", "avg_pool", "adaptive_avg_pool", "mean", "upsample")
"""qexact ops that also run on float32 inputs: exactly (a max, a min, a comparison), or on the
engine's float32 kernel (the averages, upsampling)."""


def _unary(op: str, attrs_of=lambda args: {}, own_output_qparams: bool = False):
    """An op on one quantized tensor. By default its output keeps its input's qparams (the
    quantizer shares them with the quantize after it), and another quantize is refused.

    ``own_output_qparams``: the node keeps the qparams of the quantize after it (``output_*``
    attrs), whatever they are, and the op's kernel decides whether it can give them: XNNPACK's
    global average pool takes output qparams (mean, adaptive_avg_pool), and avg_pool2d and
    upsample_bilinear2d, which XNNPACKQuantizer leaves in float32 (``dequantize -> op ->
    quantize`` with the next op's input qparams), run in float32 between converts there."""

    def handler(capture, fx_node, args):
        quantize, _ = _following_quantize(fx_node, allow_relu=False)
        output = None if quantize is None else _qparams([None, *quantize.args[1:6]])
        if op in FLOAT_FORMS and (isinstance(args[0], FloatValue) or (
                isinstance(args[0], Dequantized) and output not in (None,
                                                                    args[0].quantized.qparams))):
            # on a float32 input (X86InductorQuantizer leaves a conv's output in float32 when
            # its consumers are not quantized), or between other qparams: the float32 op, after
            # a dequantize where there is one, as Inductor's generated loops run it
            ref = _float_ref(capture, args[0], fx_node.args[0])
            capture.values[fx_node] = FloatValue(capture.add(Node(
                capture.unique(fx_node.name), op, (ref,), attrs_of(args),
                source=_source(fx_node))))
            return
        quantized = _quantized_input(capture, args[0], f"the input of {op}")
        if not own_output_qparams and quantize is not None:
            if output != quantized.qparams:
                raise UnsupportedError(f"{op} with output qparams other than its input's "
                                       f"({output.describe()} vs "
                                       f"{quantized.qparams.describe()}) is not supported")
        _emit(capture, fx_node, op, (quantized.ref,), attrs_of(args),
              output_qparams_attr=own_output_qparams)

    return handler


def _pool_attrs(kind: str):
    def attrs_of(args):
        kernel = list(args[1])
        stride = list(args[2]) if len(args) > 2 and args[2] else kernel
        padding = _ints(args[3], len(kernel)) if len(args) > 3 else [0] * len(kernel)
        attrs = {"spatial_dims": len(kernel), "kernel_size": kernel, "stride": stride,
                 "padding": padding}
        if kind == "max":
            attrs["dilation"] = _ints(args[4], len(kernel)) if len(args) > 4 else [1] * len(kernel)
            attrs["ceil_mode"] = bool(args[5]) if len(args) > 5 else False
        else:
            attrs["ceil_mode"] = bool(args[4]) if len(args) > 4 else False
            attrs["count_include_pad"] = bool(args[5]) if len(args) > 5 else True
            attrs["divisor_override"] = args[6] if len(args) > 6 else None
        return attrs

    return attrs_of


def _cat(capture, fx_node, args):
    tensors = [capture.values.get(item, item) if _is_fx_node(item) else item
               for item in args[0]]  # a list argument: its fx nodes are not mapped by _call
    if any(value is BLOCKED for value in tensors):
        capture.values[fx_node] = BLOCKED
        return
    dim = args[1] if len(args) > 1 else 0
    if any(isinstance(value, FloatValue) for value in tensors):  # a float32 cat (a copy)
        inputs = tuple(_float_ref(capture, value, item) for value, item in zip(tensors, args[0]))
        capture.values[fx_node] = FloatValue(capture.add(Node(
            capture.unique(fx_node.name), "cat", inputs, {"dim": int(dim)},
            source=_source(fx_node))))
        return
    inputs = tuple(_quantized_input(capture, value, f"input {i} of cat").ref
                   for i, value in enumerate(tensors))
    _emit(capture, fx_node, "cat", inputs, {"dim": int(dim), "relu": False})


def _shape(op: str, attrs_of):
    """A movement op: on a quantized tensor (between dequantize and quantize with the same
    qparams) or on a float one."""

    def handler(capture, fx_node, args):
        value = args[0]
        if isinstance(value, FloatValue):
            node = Node(capture.unique(fx_node.name), op, (value.ref,) + attrs_of(args)[1],
                        attrs_of(args)[0], source=_source(fx_node))
            capture.values[fx_node] = FloatValue(capture.add(node))
            return
        quantized = _quantized_input(capture, value, f"the input of {op}")
        inputs, attrs = (quantized.ref,) + attrs_of(args)[1], attrs_of(args)[0]
        quantize, _ = _following_quantize(fx_node, allow_relu=False)
        node = Node(capture.unique(fx_node.name), op, inputs, attrs, source=_source(fx_node))
        ref = capture.add(node)
        if quantize is None:
            capture.values[fx_node] = Dequantized(Quantized(ref, quantized.qparams))
            return
        qparams = _qparams([None, *quantize.args[1:6]])
        if qparams != quantized.qparams:
            raise UnsupportedError(f"{op} between qparams that differ is not supported")
        capture.values[fx_node] = Fused(node.name)
        capture.values[quantize] = Quantized(ref, qparams)

    return handler


def _pieces(op: str, attrs_of):
    """``split``/``chunk``: a tuple of pieces (``Pieces``) of a quantized or float tensor."""

    def handler(capture, fx_node, args):
        value = args[0]
        if isinstance(value, FloatValue):
            ref, qparams = value.ref, None
        else:
            quantized = _quantized_input(capture, value, f"the input of {op}")
            ref, qparams = quantized.ref, quantized.qparams
        node = Node(capture.unique(fx_node.name), op, (ref,), attrs_of(args),
                    source=_source(fx_node))
        capture.values[fx_node] = Pieces(capture.add(node), qparams)

    return handler


def _upsample(mode: str):
    def attrs_of(args):
        size = args[1] if len(args) > 1 else None
        if mode == "bilinear":
            align = bool(args[2]) if len(args) > 2 else False
            scales = args[3] if len(args) > 3 else None
        else:
            align, scales = None, (args[2] if len(args) > 2 else None)
        return {"mode": mode, "size": None if size is None else list(size),
                "scale_factor": None if scales is None else list(scales), "align_corners": align}

    return attrs_of


OPS = {
    "linear": _linear,
    "conv1d": _conv, "conv2d": _conv, "convolution": _conv,
    "add": _binary("add"), "add_": _binary("add"), "mul": _binary("mul"),
    "relu": _unary("relu"), "relu_": _unary("relu"),
    "hardtanh": _unary("clamp", lambda args: {"low": float(args[1]) if len(args) > 1 else -1.0,
                                              "high": float(args[2]) if len(args) > 2 else 1.0}),
    "hardtanh_": _unary("clamp", lambda args: {"low": float(args[1]) if len(args) > 1 else -1.0,
                                               "high": float(args[2]) if len(args) > 2 else 1.0}),
    "relu6": _unary("clamp", lambda args: {"low": 0.0, "high": 6.0}),
    "relu6_": _unary("clamp", lambda args: {"low": 0.0, "high": 6.0}),
    "max_pool2d": _unary("max_pool", _pool_attrs("max")),
    "avg_pool2d": _unary("avg_pool", _pool_attrs("avg"), own_output_qparams=True),
    "adaptive_avg_pool2d": _unary("adaptive_avg_pool", lambda args: {
        "spatial_dims": 2, "output_size": list(args[1]), "intra_op_threads": torch_threads()},
        own_output_qparams=True),
    "mean": _unary("mean", lambda args: {"dim": list(args[1]),
                                         "keepdim": bool(args[2]) if len(args) > 2 else False,
                                         "intra_op_threads": torch_threads()},
                   own_output_qparams=True),
    "upsample_nearest2d": _unary("upsample", _upsample("nearest"), own_output_qparams=True),
    "upsample_bilinear2d": _unary("upsample", _upsample("bilinear"), own_output_qparams=True),
    "cat": _cat, "concat": _cat,
    "flatten": _shape("flatten", lambda args: ({"start_dim": args[1] if len(args) > 1 else 0,
                                                "end_dim": args[2] if len(args) > 2 else -1}, ())),
    "view": _shape("reshape", lambda args: ({}, tuple(args[1]))),
    "reshape": _shape("reshape", lambda args: ({}, tuple(args[1]))),
    "_unsafe_view": _shape("reshape", lambda args: ({}, tuple(args[1]))),
    "dropout": _shape("identity", lambda args: ({}, ())),
    "permute": _shape("permute", lambda args: ({"dims": list(args[1])}, ())),
    "transpose": _shape("transpose", lambda args: ({"dim0": int(args[1]), "dim1": int(args[2])},
                                                   ())),
    "contiguous": _shape("contiguous", lambda args: ({}, ())),
    "clone": _shape("contiguous", lambda args: ({}, ())),
    "chunk": _pieces("chunk", lambda args: {"chunks": int(args[1]),
                                            "dim": int(args[2]) if len(args) > 2 else 0}),
    "split": _pieces("split", lambda args: {"split_size_or_sections": args[1],
                                            "dim": int(args[2]) if len(args) > 2 else 0}),
    "split_with_sizes": _pieces("split", lambda args: {
        "split_size_or_sections": list(args[1]), "dim": int(args[2]) if len(args) > 2 else 0}),
}
"""ATen op (its name without overload) -> handler(capture, fx_node, args)."""
