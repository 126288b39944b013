"""A tiny graph IR, and ``Net``: a graph prepared for one engine, callable like the model.

A ``Graph`` is an ordered list of ``Node``s. A node names its op (a key of ``OP_REGISTRY``), its
inputs (references to earlier values by name, or JSON constants), JSON attributes, and raw NumPy
arrays (int8 weights, float32 biases). Graphs hold only what the source model holds; everything an
engine derives (multipliers, int32 biases) is computed by ``Net`` when it prepares each node, so a
saved graph runs with the numerics of the qexact that loads it.

Values flowing through a graph are ``QuantizedArray`` (quantized tensors), float32 ``np.ndarray``,
or Python ints and tuples (shapes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from .engines import Engine, get_engine
from .errors import QexactError, ShapeError, UnsupportedError
from .explain import Explanation, normalize_index
from .kernels import resolve_backend, using
from .ops import load_all_ops
from .ops._registry import OP_REGISTRY, OpDefinition
from .qparams import QParams, QuantizedArray
from .stages import Stage


@dataclass(frozen=True)
class Ref:
    """A reference to the value named ``name`` (a graph input or a node's output)."""

    name: str


@dataclass(eq=False)
class Node:
    """One operation. ``source`` is where it came from in the original model (for messages)."""

    name: str
    op: str
    inputs: tuple = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""


@dataclass(eq=False)
class Graph:
    """Inputs, nodes in execution order, and outputs (``Ref``s or a tuple of them)."""

    inputs: list[str]
    nodes: list[Node]
    outputs: list[Ref]
    metadata: dict[str, Any] = field(default_factory=dict)


# --- Net ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PreparedNode:
    node: Node
    definition: OpDefinition
    params: Any
    output_qparams: QParams | None


class Net:
    """A model prepared for one engine: ``net(x)`` gives PyTorch's float32 output, exactly.

    - ``net(*inputs)``: float32 arrays (or torch tensors) in, float32 arrays out;
    - ``net.run_quantized(*inputs)``: the quantized outputs (``QuantizedArray``: integers with
      their scale and zero point) before the final dequantization;
    - ``net.layers``: each node's prepared parameters by name (``LinearParams`` for Linear layers);
    - ``net.engine``, ``net.graph``.

    ``allow_inexact``: names of float kernels whose order qexact does not reproduce, which it
    then runs in NumPy's order and marks inexact (``Engine.inexact_kernel``); default none.
    ``backend``: ``"numpy"`` (the definition) or ``"fast"`` (compiled kernels, equal to it bit
    for bit; ``qexact.kernels``); default: ``"fast"`` where numba is installed.
    """

    def __init__(self, graph: Graph, engine: Engine | str, isa: str | None = None,
                 aten_capability: str | None = None, allow_inexact: Iterable[str] = (),
                 backend: str | None = None):
        self.graph = graph
        self.backend = resolve_backend(backend)
        self.engine = get_engine(engine, isa, aten_capability)
        if isinstance(allow_inexact, str):
            allow_inexact = (allow_inexact,)
        if allow_inexact:
            self.engine = replace(self.engine, allowed_inexact=frozenset(allow_inexact))
        load_all_ops()
        self._prepared = self._prepare()
        self._releases: list[set[str]] | None = None

    def _prepare(self) -> list[PreparedNode]:
        """Prepare every node. A node that cannot be prepared does not stop the others: every
        such node is reported in one error (a node reading a refused node's output is skipped,
        not reported again); with one, its own error type."""
        qparams_of: dict[str, QParams | None] = {name: None for name in self.graph.inputs}
        prepared = []
        errors: list[QexactError] = []
        refused: set[str] = set()
        for node in self.graph.nodes:
            if any(isinstance(item, Ref) and item.name in refused for item in node.inputs):
                refused.add(node.name)
                continue
            definition = OP_REGISTRY.get(node.op)
            try:
                if definition is None:
                    raise UnsupportedError(
                        f"op {node.op!r} ({node.source or 'no source'}) is not one this qexact "
                        f"knows; known ops: {sorted(OP_REGISTRY)}")
                input_qparams = [qparams_of[item.name] if isinstance(item, Ref) else None
                                 for item in node.inputs]
                params, output_qparams = definition.prepare(node, input_qparams, self.engine)
            except QexactError as error:
                errors.append(type(error)(f"{_where(node)}: {error}"))
                refused.add(node.name)
                continue
            qparams_of[node.name] = output_qparams
            prepared.append(PreparedNode(node, definition, params, output_qparams))
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise UnsupportedError(
                f"{len(errors)} nodes cannot run on engine {self.engine.name!r}:\n  - "
                + "\n  - ".join(str(error) for error in errors))
        return prepared

    @property
    def layers(self) -> dict[str, Any]:
        """Prepared parameters by node name, in execution order: ``LinearParams`` for Linear
        layers, ``QParams`` for quantize nodes (every node whose parameters are a dataclass)."""
        return {item.node.name: item.params for item in self._prepared
                if hasattr(item.params, "__dataclass_fields__")}

    def prepared_node(self, name: str) -> PreparedNode:
        """The prepared node called ``name``; ``QexactError`` listing the names if there is none."""
        for item in self._prepared:
            if item.node.name == name:
                return item
        raise QexactError(f"no layer or node {name!r}; nodes: "
                          f"{[item.node.name for item in self._prepared]}")

    def explain(self, x, layer: str | None = None, index=None) -> Explanation:
        """Every stage of element ``index`` of node ``layer``'s output (default: the model's
        first output), in the order the engine computes it, with its values.

        Each op contributes its own stages through the ``explain`` hook of its graph-op class:
        ``explain(params, inputs, output, index) -> (stages, upstream)``, where ``upstream``
        lists ``(input position, index into that input)`` to walk back through (a ReLU's one
        element, a Linear's row of inputs when they come straight from a quantize).
        """
        inputs = x if isinstance(x, (tuple, list)) else (x,)
        values = self.run_values(*inputs)
        name = layer or self.graph.outputs[0].name
        prepared = self.prepared_node(name)
        if isinstance(values[name], (tuple, list)):  # an LSTM's (output, (h, c)), MHA's pair
            readers = [node.name for node in self.graph.nodes
                       if any(isinstance(item, Ref) and item.name == name for item in node.inputs)]
            raise QexactError(f"node {name!r} ({prepared.node.op}) returns a tuple; explain one "
                              f"of its outputs through the nodes that read it: {readers}")
        output = _values_of(values[name])
        index = normalize_index(index, output.shape, name)
        stages = self._explain_stages(values, name, index)
        return Explanation(name, prepared.node.op, self.engine.name, self.engine.isa, index,
                           stages, output[index][()], self.inexact_reaching(name))

    def _explain_stages(self, values: dict, name: str, index) -> list[Stage]:
        """The stages of node ``name``'s element ``index``, after those of the upstream elements
        its hook names (inputs computed by a node: one element, or a quantize's row)."""
        prepared = self.prepared_node(name)
        node = prepared.node
        hook = prepared.definition.explain
        if hook is None:
            return [Stage(f"{node.op}", f"{node.op} (no explanation for this op yet)", node=name,
                          op=node.op)]
        stages, upstream = hook(prepared.params, _arguments(node, values), values[name], index)
        before: list[Stage] = []
        for position, input_index in upstream:
            item = node.inputs[position]
            if not isinstance(item, Ref) or item.name in self.graph.inputs:
                continue
            producer = self.prepared_node(item.name)
            scalar = all(isinstance(i, int) for i in input_index)
            if scalar or producer.node.op == "quantize":
                before += self._explain_stages(values, item.name, input_index)
        return before + [Stage(s.name, s.formula, s.values, s.result, s.node or name,
                               s.op or node.op, s.note) for s in stages]

    def inexact_reaching(self, name: str) -> dict[str, str]:
        """The layers whose outputs are not bit-exact (their params' ``inexact``: a float kernel
        the user allowed with ``allow_inexact``) and reach node ``name``'s output (itself
        included): layer name -> why. Empty: ``name``'s values are exact."""
        reached = self._inexact_by_node()
        if name not in reached:
            raise QexactError(f"no node {name!r}; nodes: {list(reached)}")
        return reached[name]

    def _inexact_by_node(self) -> dict[str, dict[str, str]]:
        reached: dict[str, dict[str, str]] = {}
        for item in self._prepared:
            found: dict[str, str] = {}
            for ref in item.node.inputs:
                if isinstance(ref, Ref):
                    found.update(reached.get(ref.name, {}))
            why = getattr(item.params, "inexact", "")
            if why:
                found[item.node.name] = why
            reached[item.node.name] = found
        return reached

    @property
    def isa(self) -> str:
        return self.engine.isa

    def run_values(self, *inputs, keep: Iterable[str] | None = None) -> dict[str, Any]:
        """Every value the graph computes, by name (inputs included); with ``keep``, only those
        names: a value is let go once the last node reading it has run, as PyTorch frees a
        tensor no one holds (a forward's peak memory is then the live values', not all)."""
        if len(inputs) != len(self.graph.inputs):
            raise ShapeError(f"the model takes {len(self.graph.inputs)} input(s), got {len(inputs)}")
        values: dict[str, Any] = {
            name: _as_numpy(value) for name, value in zip(self.graph.inputs, inputs)
        }
        released = self._released_after() if keep is not None else None
        keep = set(keep or ())
        with using(self.backend):
            for position, item in enumerate(self._prepared):
                try:
                    values[item.node.name] = item.definition.run(item.params,
                                                                 _arguments(item.node, values))
                except QexactError as error:
                    raise type(error)(f"{_where(item.node)}: {error}") from None
                if released is not None:
                    for name in released[position] - keep:
                        del values[name]
        return values

    def _released_after(self) -> list[set[str]]:
        """Per prepared node, the values no later node reads (its own, if no one reads it)."""
        if self._releases is None:
            last_reader = {}
            for position, item in enumerate(self._prepared):
                last_reader[item.node.name] = position
                for ref in item.node.inputs:
                    if isinstance(ref, Ref):
                        last_reader[ref.name] = position
            self._releases = [set() for _ in self._prepared]
            for name, position in last_reader.items():
                self._releases[position].add(name)
        return self._releases

    def __call__(self, *inputs):
        values = self.run_values(*inputs, keep=[ref.name for ref in self.graph.outputs])
        return self._select_outputs(values)

    def run_quantized(self, *inputs):
        """The outputs as ``QuantizedArray``s, taken before a final ``dequantize``."""
        by_name = {item.node.name: item.node for item in self._prepared}
        kept = [ref.name for ref in self.graph.outputs]
        kept += [by_name[name].inputs[0].name for name in kept
                 if name in by_name and by_name[name].op == "dequantize"]
        values = self.run_values(*inputs, keep=kept)
        results = []
        for ref in self.graph.outputs:
            node = by_name.get(ref.name)
            if node is not None and node.op == "dequantize":
                ref = node.inputs[0]
            value = values[ref.name]
            if not isinstance(value, QuantizedArray):
                raise QexactError(f"output {ref.name!r} is not a quantized tensor")
            results.append(value)
        return self._arrange(results)

    def _select_outputs(self, values):
        return self._arrange([values[ref.name] for ref in self.graph.outputs])

    def _arrange(self, results: list):
        """One output, a tuple of them, or a dict when the model returned one (``output_keys``)."""
        keys = self.graph.metadata.get("output_keys")
        if keys is not None:
            return dict(zip(keys, results))
        return results[0] if len(results) == 1 else tuple(results)

    def __repr__(self) -> str:
        ops = ", ".join(f"{item.node.name}:{item.node.op}" for item in self._prepared)
        return (f"Net(engine={self.engine.name!r}, isa={self.engine.isa!r}, "
                f"backend={self.backend!r}, nodes=[{ops}])")


def _where(node: Node) -> str:
    source = f" (model: {node.source})" if node.source and node.source != node.name else ""
    return f"node {node.name!r} [{node.op}]{source}"


def _arguments(node: Node, values: dict[str, Any]) -> list:
    """The node's arguments: each ``Ref`` replaced by its value, constants as they are."""
    return [values[item.name] if isinstance(item, Ref) else item for item in node.inputs]


def _values_of(value) -> np.ndarray:
    return value.values if isinstance(value, QuantizedArray) else np.asarray(value)


def _as_numpy(value):
    """A NumPy array from a NumPy array or a torch tensor (without importing torch)."""
    if isinstance(value, (np.ndarray, QuantizedArray)):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        if getattr(value, "is_quantized", False):
            raise ShapeError("pass float tensors; quantized torch tensors are not accepted as inputs")
        return value.detach().cpu().numpy()
    return np.asarray(value)
