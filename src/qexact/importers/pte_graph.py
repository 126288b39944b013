"""ExecuTorch ``.pte`` programs with XNNPACK delegates -> qexact ``Graph`` (engine ``xnnpack``).

``capture_pte(path_or_bytes, method="forward")`` reads the file with the torch-free reader
(:mod:`qexact.importers.pte`) and turns every XNNPACK node into the qexact op the PT2E importer
(:mod:`qexact.importers.pt2e`) emits for the same layer, so that ``Net(graph, "xnnpack")``
computes what ExecuTorch's runtime computes:

=============================  ==============================================================
XNNPACK node                   qexact node
=============================  ==============================================================
XNNConvert fp32 -> qint8       ``quantize`` (output qparams of the converted value)
XNNConvert qint8 -> fp32       ``dequantize``
XNNConv2d / DepthwiseConv2d    ``conv``: OHWI (depthwise 1HWO) filter back to OIHW, per-channel
                               weight qparams, the stored int32 bias as ``quantized_bias``
XNNFullyConnected              ``linear`` (weight (N, K); stored int32 bias)
XNNAdd / XNNMultiply           ``add`` / ``add_relu`` / ``mul`` / ``mul_relu`` (output qparams)
XNNClamp                       ``relu`` for [0, inf], else ``clamp`` (``low``/``high`` real)
XNNMaxPooling2d / AvgPooling2d ``max_pool`` / ``avg_pool``
XNNGlobalAvgPooling2d          ``mean`` over H, W
XNNConcatenate2..5             ``cat`` (output qparams)
XNNStaticReshape               ``reshape``
XNNStaticResizeBilinear2D      ``upsample`` (bilinear, ``size``)
XNNStaticTranspose             nothing: a layout tag (below); ``permute`` where order matters
=============================  ==============================================================

Layouts. XNNPACK computes in NHWC: the partitioner brackets convolutions and pooling with
``XNNStaticTranspose`` (NCHW -> NHWC and back; executorch backends/xnnpack/_passes/
channels_last_tagged_reshape_pass.py). qexact's ops take PyTorch's NCHW. Each XNNPACK value is
therefore kept as a qexact value ``q`` and a permutation ``perm`` with
``xnn_value == np.transpose(q, perm)``; a transpose only composes ``perm``. Conv and pooling want
``perm == (0, 2, 3, 1)`` (they read ``q`` as NCHW), elementwise ops and converts any ``perm``;
only where the element order matters (reshape, linear over the last dim, graph outputs, mixed
layouts) is a ``permute`` node emitted.

Programs. The plan's instructions are followed in order: delegate calls pass values by their
``external_id`` (``PteDelegateCall.args``), int8 tensors between delegates keep their qparams
(checked against the consumer's). Kernel calls (portable ``aten::*`` ops), control flow and other
backends' delegates are not computed: every one is listed in one ``UnsupportedError``, with the
unsupported XNNPACK nodes.

Torch-free: nothing here imports torch or executorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..dtypes import dtype_named
from ..errors import FormatError, UnsupportedError
from ..graph import Graph, Node, Ref
from ..qparams import QParams, qparams_to_fields
from ._handlers import unique_name
from . import pte as P

__all__ = ["capture_pte"]

NCHW_TO_NHWC = (0, 2, 3, 1)
_INF = float("inf")


@dataclass(frozen=True)
class _Val:
    """An XNNPACK (or plan) value as qexact computes it: ``xnn == np.transpose(ref, perm)``;
    ``qparams`` ``None`` for float32."""

    ref: Ref
    perm: tuple[int, ...]
    qparams: QParams | None

    @property
    def is_float(self) -> bool:
        return self.qparams is None


class _Blocked:
    """The value of an unsupported node or kernel call: its readers are not reported again."""

    def __repr__(self) -> str:
        return "BLOCKED"


BLOCKED = _Blocked()


def _identity(n: int) -> tuple[int, ...]:
    return tuple(range(n))


@dataclass
class _Capture:
    nodes: list[Node] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    blockers: list[str] = field(default_factory=list)
    permuted: dict = field(default_factory=dict)

    def unique(self, name: str) -> str:
        return unique_name(self.names, name)

    def add(self, op: str, inputs: tuple, attrs: dict | None = None,
            arrays: dict | None = None, source: str = "", name: str | None = None) -> Ref:
        node = Node(self.unique(name or op), op, tuple(inputs), dict(attrs or {}),
                    dict(arrays or {}), source=source)
        self.nodes.append(node)
        return Ref(node.name)

    def materialize(self, value: _Val, want: tuple[int, ...], source: str) -> Ref:
        """A qexact value ``q2`` with ``xnn == np.transpose(q2, want)``: ``value.ref`` itself
        when its layout is ``want``, else a ``permute`` node (one per value and layout)."""
        if len(want) != len(value.perm):
            raise UnsupportedError(f"rank {len(want)} expected, the value has rank "
                                   f"{len(value.perm)}")
        dims = [0] * len(want)
        for i, w in enumerate(want):
            dims[w] = value.perm[i]
        dims = tuple(dims)
        if dims == _identity(len(dims)):
            return value.ref
        key = (value.ref, dims)
        if key not in self.permuted:
            self.permuted[key] = self.add("permute", (value.ref,), {"dims": list(dims)},
                                          source=source, name=f"{value.ref.name}_permute")
        return self.permuted[key]


# --- Entry point ----------------------------------------------------------------------------


def capture_pte(path_or_bytes, method: str = "forward") -> Graph:
    """A qexact ``Graph`` of the method ``method`` of an ExecuTorch ``.pte`` program whose ops
    are all in XNNPACK delegates (module docstring). Run it on engine ``"xnnpack"``.

    Raises ``FormatError`` for a file that is not a readable ``.pte``, ``UnsupportedError``
    listing every instruction and XNNPACK node qexact does not compute."""
    program = P.read_pte(path_or_bytes, allow_unknown_backends=True)
    plan = program.plan(method)
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        source_model = "pte"
    else:
        source_model = os.path.basename(os.fspath(path_or_bytes))
    capture = _Capture()
    values: dict[int, Any] = {}
    inputs: list[str] = []
    for position, index in enumerate(plan.inputs):
        tensor = plan.values[index]
        name = capture.unique("x" if len(plan.inputs) == 1 else f"x{position}")
        inputs.append(name)
        if not isinstance(tensor, P.PteTensor) or tensor.scalar_type != "FLOAT":
            capture.blockers.append(f"input {position}: {P._short(tensor)} is not a float32 "
                                    "tensor; qexact takes float32 inputs")
            values[index] = BLOCKED
            continue
        values[index] = _Val(Ref(name), _identity(len(tensor.sizes)), None)

    for k, ins in enumerate(plan.instructions):
        where = f"instruction [{k}]"
        if isinstance(ins, P.PteDelegateCall):
            delegate = plan.delegates[ins.delegate_index]
            if delegate.xnnpack is None:
                capture.blockers.append(
                    f"{where}: delegate #{ins.delegate_index} of backend "
                    f"{delegate.backend_id!r} (qexact computes XnnpackBackend delegates only)")
                _block_unset(values, ins.args)
                continue
            _delegate(capture, plan, values, ins, delegate.xnnpack, where)
        elif isinstance(ins, P.PteKernelCall):
            capture.blockers.append(
                f"{where}: kernel call {ins.op} (operator #{ins.op_index}) runs outside the "
                "XNNPACK delegates; qexact computes only XNNPACK-delegated ops (lower the "
                "model so that XnnpackPartitioner takes this op, or remove it)")
            _block_unset(values, ins.args)
        elif isinstance(ins, P.PteMoveCall):
            values[ins.move_to] = values.get(ins.move_from, BLOCKED)
        elif isinstance(ins, P.PteFreeCall):
            continue
        else:
            capture.blockers.append(f"{where}: {type(ins).__name__} (control flow) is not "
                                    "supported")

    outputs: list[Ref] = []
    for position, index in enumerate(plan.outputs):
        value = values.get(index)
        if value is BLOCKED:
            continue
        if value is None:
            capture.blockers.append(f"output {position}: value {index} is "
                                    f"{P._short(plan.values[index])}, which no instruction "
                                    "computes (a constant or an input qexact does not pass)")
            continue
        try:
            outputs.append(capture.materialize(value, _identity(len(value.perm)),
                                               f"output {position}"))
        except UnsupportedError as error:
            capture.blockers.append(f"output {position}: {error}")
    if capture.blockers:
        raise UnsupportedError(
            f"{len(capture.blockers)} part(s) of method {plan.name!r} of this .pte are not "
            "supported:\n  - " + "\n  - ".join(capture.blockers)
            + f"\nSupported XNNPACK nodes: {', '.join(sorted(NODES))}")
    nodes = _fold_float_islands(capture.nodes, {ref.name for ref in outputs})
    dtypes = sorted({n.attrs["output_dtype"] for n in nodes
                     if "output_dtype" in n.attrs}) or ["qint8"]
    return Graph(inputs, nodes, outputs,
                 {"source_model": source_model, "flow": "pt2e", "engine": "xnnpack",
                  "activation_dtypes": dtypes})


FLOAT_ISLAND_OPS = ("upsample", "avg_pool")
"""Ops XNNPACK runs in float32 between two converts (qs8 -> f32 -> op -> f32 -> qs8), which the
PT2E importer gives as one node from quantized input to quantized output: the engine's kernel
converts, runs the float op and converts back (engines/xnnpack_pooling.py ``FloatKernel``)."""


def _fold_float_islands(nodes: list[Node], outputs: set[str]) -> list[Node]:
    """``dequantize -> op -> quantize`` (each value read once) as one ``op`` node on the quantized
    input with the quantize's output qparams and name, as the PT2E importer writes it."""
    readers: dict[str, list[Node]] = {}
    for node in nodes:
        for item in node.inputs:
            if isinstance(item, Ref):
                readers.setdefault(item.name, []).append(node)
    by_name = {node.name: node for node in nodes}
    dropped: set[str] = set()
    replaced: dict[str, Node] = {}
    for node in nodes:
        if node.op not in FLOAT_ISLAND_OPS or not node.inputs or not isinstance(node.inputs[0], Ref):
            continue
        source = by_name.get(node.inputs[0].name)
        after = readers.get(node.name, [])
        if (source is None or source.op != "dequantize" or len(readers[source.name]) != 1
                or len(after) != 1 or after[0].op != "quantize"
                or {source.name, node.name} & outputs):
            continue
        quantize = after[0]
        attrs = dict(node.attrs)
        attrs.update({k: v for k, v in quantize.attrs.items() if k.startswith("output_")})
        arrays = dict(node.arrays)
        arrays.update({k: v for k, v in quantize.arrays.items() if k.startswith("output_")})
        replaced[quantize.name] = Node(quantize.name, node.op, (source.inputs[0],) + node.inputs[1:],
                                       attrs, arrays, source=node.source)
        dropped |= {source.name, node.name}
    return [replaced.get(node.name, node) for node in nodes if node.name not in dropped]


def _block_unset(values: dict, args) -> None:
    """Mark the values an uncomputed call writes: those not set yet (its outputs)."""
    for a in args:
        if a not in values:
            values[a] = BLOCKED


# --- One delegate --------------------------------------------------------------------------


@dataclass
class _Delegate:
    capture: _Capture
    graph: P.XnnGraph
    env: dict
    where: str
    by_id: dict

    def xvalue(self, value_id: int) -> P.XnnTensor:
        if value_id not in self.by_id:
            raise FormatError(f"XNNPACK graph has no value with id {value_id}")
        return self.by_id[value_id]

    def read(self, value_id: int) -> _Val:
        value = self.env.get(value_id)
        if value is None:
            raise FormatError(f"XNNPACK value v{value_id} is read before it is written")
        return value

    def quantized(self, value_id: int, what: str) -> _Val:
        value = self.read(value_id)
        if value.is_float:
            raise UnsupportedError(f"{what} (v{value_id}) is float32; qexact computes this op "
                                   "on qint8 tensors only")
        return value


def _delegate(capture: _Capture, plan: P.PtePlan, values: dict, ins: P.PteDelegateCall,
              graph: P.XnnGraph, where: str) -> None:
    name = f"{where} delegate #{ins.delegate_index}"
    ext = graph.external_values
    if len(ext) != len(ins.args):
        raise FormatError(f"{name}: {len(ins.args)} args for {len(ext)} external values")
    d = _Delegate(capture, graph, {}, name, {v.id: v for v in graph.values})
    # Inputs, by external id (PteDelegateCall.args[k] is the value whose external_id is k).
    for arg, xv in zip(ins.args, ext):
        if not xv.is_external_input:
            continue
        value = values.get(arg)
        if value is BLOCKED:
            d.env[xv.id] = BLOCKED
            continue
        try:
            if value is None:
                raise UnsupportedError(f"its input {arg} ({P._short(plan.values[arg])}) is not "
                                       "computed by qexact (a constant tensor?)")
            _check_same(value, xv, f"input {arg}")
            d.env[xv.id] = value
        except UnsupportedError as error:
            capture.blockers.append(f"{name} input v{xv.id}: {error}")
            d.env[xv.id] = BLOCKED
    for k, node in enumerate(graph.nodes):
        place = f"{name} node n{k} {node.op}"
        if any(d.env.get(i) is BLOCKED for i in node.inputs):
            for o in node.outputs:
                d.env[o] = BLOCKED
            continue
        handler = NODES.get(node.op)
        try:
            if handler is None:
                raise UnsupportedError(f"XNNPACK node {node.op} is not supported")
            handler(d, node, f"{place} (debug_handle {node.debug_handle})")
        except UnsupportedError as error:
            capture.blockers.append(f"{place}: {error}")
            for o in node.outputs:
                d.env[o] = BLOCKED
    for arg, xv in zip(ins.args, ext):
        if xv.is_external_output:
            value = d.env.get(xv.id)
            if value is None:
                raise FormatError(f"{name}: output v{xv.id} is not written by any node")
            values[arg] = value


def _check_same(value: _Val, xv: P.XnnTensor, what: str) -> None:
    """A value handed to a delegate has the type (and qparams) its XNNPACK value declares."""
    if xv.datatype == "fp32":
        if not value.is_float:
            raise UnsupportedError(f"{what} is quantized, the delegate reads float32")
        return
    qparams = _qparams(xv)
    if value.is_float:
        raise UnsupportedError(f"{what} is float32, the delegate reads {xv.datatype}")
    if value.qparams != qparams:
        raise UnsupportedError(f"{what} has qparams {value.qparams.describe()}, the delegate "
                               f"reads it as {qparams.describe()}")


def _qparams(xv: P.XnnTensor) -> QParams:
    """The per-tensor qparams of a qint8 activation value."""
    if xv.datatype != "qint8" or not isinstance(xv.quant, P.XnnPerTensorQuant):
        raise UnsupportedError(f"value v{xv.id} is {xv.datatype} ({type(xv.quant).__name__}); "
                               "qexact computes qint8 activations quantized per tensor")
    return QParams.per_tensor(xv.quant.scale, xv.quant.zero_point, dtype_named("qint8"))


def _output(d: _Delegate, node, ref: Ref, perm: tuple[int, ...]) -> None:
    xv = d.xvalue(node.output_id)
    qparams = None if xv.datatype == "fp32" else _qparams(xv)
    d.env[node.output_id] = _Val(ref, perm, qparams)


def _is_float_out(d: _Delegate, node) -> bool:
    xv = d.xvalue(node.output_id)
    if xv.datatype == "fp32":
        return True
    _qparams(xv)
    return False


def _output_fields(d: _Delegate, node) -> tuple[dict, dict]:
    """``output_*`` attrs/arrays of a quantized output; nothing for a float32 one."""
    if _is_float_out(d, node):
        return {}, {}
    return qparams_to_fields(_qparams(d.xvalue(node.output_id)), "output")


def _same_qparams(d: _Delegate, node, x: _Val) -> None:
    """Ops whose output keeps the input's qparams in qexact (as the PT2E importer requires)."""
    out = d.xvalue(node.output_id)
    if x.is_float != (out.datatype == "fp32"):
        raise UnsupportedError(f"input is {'float32' if x.is_float else 'qint8'}, output "
                               f"{out.datatype}")
    if not x.is_float and _qparams(out) != x.qparams:
        raise UnsupportedError(f"output qparams {_qparams(out).describe()} differ from the "
                               f"input's {x.qparams.describe()}")


def _activation(node) -> bool:
    """Whether a fused output clamp is a ReLU; ``False`` for none."""
    low, high = node.output_min, node.output_max
    if (low, high) in ((None, None), (-_INF, _INF)):
        return False
    if (low, high) == (0.0, _INF):
        return True
    raise UnsupportedError(f"fused output clamp [{low!r}, {high!r}] is not supported (only ReLU "
                           "[0, inf] or none)")


# --- Node handlers -------------------------------------------------------------------------


def _convert(d: _Delegate, node, source: str) -> None:
    x = d.read(node.input_id)
    out = d.xvalue(node.output_id)
    if x.is_float and out.datatype == "qint8":
        attrs, arrays = qparams_to_fields(_qparams(out), "output")
        ref = d.capture.add("quantize", (x.ref,), attrs, arrays, source)
    elif not x.is_float and out.datatype == "fp32":
        ref = d.capture.add("dequantize", (x.ref,), source=source)
    else:
        raise UnsupportedError(f"conversion {'fp32' if x.is_float else 'qint8'} -> "
                               f"{out.datatype} is not supported (fp32 <-> qint8 only)")
    _output(d, node, ref, x.perm)


def _transpose(d: _Delegate, node, source: str) -> None:
    x = d.read(node.input_id)
    perm = tuple(node.perm)
    if sorted(perm) != list(range(len(x.perm))):
        raise UnsupportedError(f"permutation {perm} of a rank-{len(x.perm)} value")
    _same_qparams(d, node, x)
    d.env[node.output_id] = _Val(x.ref, tuple(x.perm[p] for p in perm), x.qparams)


def _weight_qparams(filt: P.XnnTensor, channel_dim: int, channels: int) -> QParams:
    q = filt.quant
    if isinstance(q, P.XnnPerChannelQuant) and filt.datatype == "qcint8":
        if q.channel_dim != channel_dim or len(q.scales) != channels:
            raise UnsupportedError(f"filter scales along dim {q.channel_dim} "
                                   f"({len(q.scales)}), expected dim {channel_dim} ({channels})")
        return QParams.per_channel(np.asarray(q.scales, np.float64), np.zeros(channels, np.int64),
                                   0, dtype_named("qint8"))
    if isinstance(q, P.XnnPerTensorQuant) and filt.datatype == "qint8":
        return QParams.per_tensor(q.scale, q.zero_point, dtype_named("qint8"))
    raise UnsupportedError(f"filter v{filt.id} is {filt.datatype} ({type(q).__name__}); "
                           "supported: qcint8 per channel, qint8 per tensor")


def _layer_arrays(d: _Delegate, node, weight: np.ndarray, wq: QParams) -> tuple[dict, dict]:
    attrs, arrays = qparams_to_fields(wq, "weight")
    arrays["weight"] = np.ascontiguousarray(weight, dtype=np.int8)
    if node.bias_id != P.XNN_INVALID_VALUE_ID:
        bias = d.xvalue(node.bias_id)
        if bias.datatype not in ("qcint32", "qint32") or bias.data is None:
            raise UnsupportedError(f"bias v{bias.id} is {bias.datatype}"
                                   f"{'' if bias.data is not None else ' (not constant)'}; "
                                   "supported: a constant int32 (qcint32/qint32) bias")
        if bias.data.shape != (weight.shape[0],):
            raise FormatError(f"bias v{bias.id} of shape {bias.data.shape} for "
                              f"{weight.shape[0]} output channels")
        arrays["quantized_bias"] = np.array(bias.data, dtype=np.int32)
    return attrs, arrays


def _filter(d: _Delegate, node) -> P.XnnTensor:
    filt = d.xvalue(node.filter_id)
    if filt.data is None:
        raise UnsupportedError(f"filter v{filt.id} is not a constant")
    return filt


def _conv(d: _Delegate, node, source: str) -> None:
    x = d.quantized(node.input1_id, "the input")
    if len(x.perm) != 4:
        raise FormatError(f"convolution input of rank {len(x.perm)}")
    if _is_float_out(d, node):
        raise UnsupportedError("a float32 output is not supported")
    filt = _filter(d, node)
    groups, cin, cout = node.groups, node.group_input_channels, node.group_output_channels
    kh, kw = node.kernel_height, node.kernel_width
    channels = groups * cout
    if node.op == "XNNDepthwiseConv2d":
        # stored (1, kH, kW, O): executorch node_visitor.py::define_tensor (depthwise)
        if filt.data.shape != (1, kh, kw, channels):
            raise FormatError(f"depthwise filter of shape {filt.data.shape}, expected "
                              f"{(1, kh, kw, channels)}")
        weight = filt.data[0].transpose(2, 0, 1)[:, None]
        wq = _weight_qparams(filt, 3, channels)
    else:
        # stored OHWI (channels last)
        if filt.data.shape != (channels, kh, kw, cin):
            raise FormatError(f"filter of shape {filt.data.shape}, expected "
                              f"{(channels, kh, kw, cin)}")
        weight = filt.data.transpose(0, 3, 1, 2)
        wq = _weight_qparams(filt, 0, channels)
    if (node.padding_top, node.padding_left) != (node.padding_bottom, node.padding_right):
        raise UnsupportedError(f"asymmetric padding (top, left) = ({node.padding_top}, "
                               f"{node.padding_left}), (bottom, right) = ({node.padding_bottom}, "
                               f"{node.padding_right})")
    relu = _activation(node)
    attrs, arrays = _layer_arrays(d, node, weight, wq)
    attrs.update({"stride": [node.subsampling_height, node.subsampling_width],
                  "padding": [node.padding_top, node.padding_left],
                  "dilation": [node.dilation_height, node.dilation_width],
                  "groups": groups, "padding_mode": "zeros", "relu": relu})
    out_attrs, out_arrays = _output_fields(d, node)
    attrs.update(out_attrs)
    arrays.update(out_arrays)
    ref = d.capture.add("conv", (d.capture.materialize(x, NCHW_TO_NHWC, source),), attrs, arrays,
                        source)
    _output(d, node, ref, NCHW_TO_NHWC)


def _fully_connected(d: _Delegate, node, source: str) -> None:
    x = d.quantized(node.input1_id, "the input")
    if _is_float_out(d, node):
        raise UnsupportedError("a float32 output is not supported")
    filt = _filter(d, node)
    weight = filt.data
    if weight.ndim != 2:
        raise FormatError(f"fully-connected filter of rank {weight.ndim}")
    transposed = bool(node.flags & P.XNN_FLAG_TRANSPOSE_WEIGHTS)
    if transposed:
        weight = weight.T
    wq = _weight_qparams(filt, 1 if transposed else 0, weight.shape[0])
    relu = _activation(node)
    attrs, arrays = _layer_arrays(d, node, weight, wq)
    attrs["relu"] = relu
    out_attrs, out_arrays = _output_fields(d, node)
    attrs.update(out_attrs)
    arrays.update(out_arrays)
    rank = len(x.perm)
    if x.perm[-1] == rank - 1:      # rows in another order: the same rows out, same layout
        ref_in, perm = x.ref, x.perm
    else:
        ref_in, perm = d.capture.materialize(x, _identity(rank), source), _identity(rank)
    ref = d.capture.add("linear", (ref_in,), attrs, arrays, source)
    _output(d, node, ref, perm)


def _binary(op: str):
    def handler(d: _Delegate, node, source: str) -> None:
        a, b = d.read(node.input1_id), d.read(node.input2_id)
        if a.is_float != b.is_float:
            raise UnsupportedError("one input is float32, the other qint8")
        relu = _activation(node)
        if len(a.perm) == len(b.perm) and a.perm == b.perm:
            refs, perm = (a.ref, b.ref), a.perm
        else:
            rank = len(d.xvalue(node.output_id).dims)
            if len(a.perm) != rank or len(b.perm) != rank:
                raise UnsupportedError("broadcasting between ranks is not supported")
            perm = _identity(rank)
            refs = (d.capture.materialize(a, perm, source), d.capture.materialize(b, perm, source))
        attrs, arrays = _output_fields(d, node)
        ref = d.capture.add(op + ("_relu" if relu else ""), refs, attrs, arrays, source)
        _output(d, node, ref, perm)

    return handler


def _clamp(d: _Delegate, node, source: str) -> None:
    x = d.read(node.input_id)
    _same_qparams(d, node, x)
    low, high = node.output_min, node.output_max
    if low is None:
        low, high = -_INF, _INF
    if (low, high) == (0.0, _INF):
        ref = d.capture.add("relu", (x.ref,), source=source)
    else:
        ref = d.capture.add("clamp", (x.ref,), {"low": float(low), "high": float(high)},
                            source=source)
    _output(d, node, ref, x.perm)


def _pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int,
                      ceil_mode: bool) -> int:
    """PyTorch's pooling output size (aten/src/ATen/native/Pool.h ``pooling_output_shape``)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pooling(op: str):
    def handler(d: _Delegate, node, source: str) -> None:
        x = d.read(node.input_id)
        if len(x.perm) != 4:
            raise FormatError(f"pooling input of rank {len(x.perm)}")
        _same_qparams(d, node, x)
        if _activation(node):
            raise UnsupportedError("a fused ReLU on pooling is not supported")
        xin = d.xvalue(node.input_id).dims
        out = d.xvalue(node.output_id).dims
        kernel = [node.pooling_height, node.pooling_width]
        stride = [node.stride_height, node.stride_width]
        dilation = [node.dilation_height or 1, node.dilation_width or 1]
        pad = [node.padding_top, node.padding_left]
        extra = [node.padding_bottom - node.padding_top, node.padding_right - node.padding_left]
        # ceil_mode is lowered as extra bottom/right padding (executorch
        # backends/xnnpack/operators/op_max_pool2d.py); max pooling ignores padding, so the
        # output size says which PyTorch pooling it is.
        ceil_mode = None
        for mode in (False, True):
            sizes = [_pool_output_size(xin[1 + i], kernel[i], stride[i], pad[i], dilation[i],
                                       mode) for i in range(2)]
            if tuple(sizes) == tuple(out[1:3]):
                ceil_mode = mode
                break
        if ceil_mode is None or any(e < 0 for e in extra) or (
                any(extra) and (op != "max_pool" or not ceil_mode)):
            raise UnsupportedError(f"padding (top, left, bottom, right) = ({node.padding_top}, "
                                   f"{node.padding_left}, {node.padding_bottom}, "
                                   f"{node.padding_right}) giving output {out[1:3]} has no "
                                   "PyTorch equivalent qexact knows")
        attrs = {"spatial_dims": 2, "kernel_size": kernel, "stride": stride, "padding": pad,
                 "ceil_mode": ceil_mode}
        if op == "max_pool":
            attrs["dilation"] = dilation
        else:
            if dilation != [1, 1]:
                raise UnsupportedError("dilated average pooling")
            # the partitioner takes avg_pool2d only without padding in the count
            # (executorch backends/xnnpack/partition/config/generic_node_configs.py)
            attrs.update(count_include_pad=False, divisor_override=None)
        ref = d.capture.add(op, (d.capture.materialize(x, NCHW_TO_NHWC, source),), attrs,
                            source=source)
        _output(d, node, ref, NCHW_TO_NHWC)

    return handler


def _global_avg_pool(d: _Delegate, node, source: str) -> None:
    x = d.read(node.input_id)
    if len(x.perm) != 4:
        raise FormatError(f"global average pooling input of rank {len(x.perm)}")
    _same_qparams(d, node, x)
    if _activation(node):
        raise UnsupportedError("a fused ReLU on global average pooling is not supported")
    keep = len(d.xvalue(node.output_id).dims) == 4
    ref = d.capture.add("mean", (d.capture.materialize(x, NCHW_TO_NHWC, source),),
                        {"dim": [2, 3], "keepdim": keep}, source=source)
    _output(d, node, ref, NCHW_TO_NHWC if keep else (0, 1))


def _concatenate(d: _Delegate, node, source: str) -> None:
    xs = [d.read(i) for i in node.inputs]
    if len({x.is_float for x in xs}) != 1:
        raise UnsupportedError("float32 and qint8 inputs mixed")
    rank = len(xs[0].perm)
    if any(len(x.perm) != rank for x in xs):
        raise FormatError("concatenation of values of different ranks")
    axis = node.axis
    if all(x.perm == xs[0].perm for x in xs):
        refs, perm = tuple(x.ref for x in xs), xs[0].perm
    else:
        perm = _identity(rank)
        refs = tuple(d.capture.materialize(x, perm, source) for x in xs)
    if _activation(node):
        raise UnsupportedError("a fused ReLU on concatenation is not supported")
    attrs, arrays = _output_fields(d, node)
    attrs.update({"dim": int(perm[axis]), "relu": False})
    ref = d.capture.add("cat", refs, attrs, arrays, source)
    _output(d, node, ref, perm)


def _reshape(d: _Delegate, node, source: str) -> None:
    x = d.read(node.input_id)
    _same_qparams(d, node, x)
    dims = tuple(d.xvalue(node.output_id).dims)
    ref = d.capture.add("reshape", (d.capture.materialize(x, _identity(len(x.perm)), source),)
                        + dims, source=source)
    _output(d, node, ref, _identity(len(dims)))


def _resize_bilinear(d: _Delegate, node, source: str) -> None:
    x = d.read(node.input_id)
    if len(x.perm) != 4:
        raise FormatError(f"resize input of rank {len(x.perm)}")
    _same_qparams(d, node, x)
    if node.flags & P.XNN_FLAG_TENSORFLOW_LEGACY_MODE:
        raise UnsupportedError("TensorFlow legacy mode (half_pixel_centers=False) is not "
                               "supported")
    attrs = {"mode": "bilinear", "size": [node.new_height, node.new_width],
             "scale_factor": None, "align_corners": bool(node.flags & P.XNN_FLAG_ALIGN_CORNERS)}
    ref = d.capture.add("upsample", (d.capture.materialize(x, NCHW_TO_NHWC, source),), attrs,
                        source=source)
    _output(d, node, ref, NCHW_TO_NHWC)


NODES = {
    "XNNConvert": _convert,
    "XNNStaticTranspose": _transpose,
    "XNNConv2d": _conv,
    "XNNDepthwiseConv2d": _conv,
    "XNNFullyConnected": _fully_connected,
    "XNNAdd": _binary("add"),
    "XNNMultiply": _binary("mul"),
    "XNNClamp": _clamp,
    "XNNMaxPooling2d": _pooling("max_pool"),
    "XNNAvgPooling2d": _pooling("avg_pool"),
    "XNNGlobalAvgPooling2d": _global_avg_pool,
    "XNNConcatenate2": _concatenate,
    "XNNConcatenate3": _concatenate,
    "XNNConcatenate4": _concatenate,
    "XNNConcatenate5": _concatenate,
    "XNNStaticReshape": _reshape,
    "XNNStaticResizeBilinear2D": _resize_bilinear,
}
"""XNNPACK node -> handler(delegate, node, source)."""
