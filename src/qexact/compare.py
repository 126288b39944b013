"""Compare two engines (two deployments) of one model, element by element, and say why they differ.

``compare_engines(graph, ("xnnpack", "pt2e_eager"), inputs)`` runs the graph on both engines and,
node by node, counts the elements that differ (quantized codes, or float32 bit patterns) and by
how many output steps. A node whose inputs are identical in both runs but whose output differs
is where the flows *diverge*: its own arithmetic differs, and the report names the steps one
engine runs and the other does not (the bias rounded to int32 at lowering, a fixed-point add
rounding ties up) and, for the first differing element, both engines' stages (``Net.explain``),
so the value before rounding shows how close to a rounding boundary it sat. A node whose inputs
already differ inherits the difference (``propagated``).

Library code: returns data; the CLI renders it (``qexact compare``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Graph, Net, Ref
from .jsonable import JsonDocument
from .qparams import QuantizedArray
from .stages import Stage


@dataclass(frozen=True)
class NodeDifference(JsonDocument):
    """How one node's output differs between the two engines."""

    name: str
    op: str
    elements: int
    differing: int
    max_steps: float
    """The largest difference in output steps (quantized outputs; 0 for float ones)."""
    cause: str
    """``"diverges"`` (identical inputs, different output: its own arithmetic) or
    ``"propagated"`` (an input already differs)."""
    first_index: tuple[int, ...] | None = None
    steps_only_in: dict[str, list[str]] = field(default_factory=dict)
    """Per engine, the labels of the requantization or kernel steps the other does not run."""
    stages: dict[str, list[Stage]] = field(default_factory=dict)
    """For the first differing element of a diverging node: each engine's stages."""
    reason: str = ""
    """Why, in one sentence: the bias handling where it differs, and each engine's value just
    before its rounding step for the first differing element."""

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "elements": self.elements,
                "differing": self.differing, "max_steps": self.max_steps, "cause": self.cause,
                "first_index": None if self.first_index is None else list(self.first_index),
                "steps_only_in": self.steps_only_in, "reason": self.reason,
                "stages": {engine: [{"name": s.name, "formula": s.formula,
                                     "result": _plain(s.result)} for s in stages]
                           for engine, stages in self.stages.items()}}


@dataclass(frozen=True)
class Comparison(JsonDocument):
    engines: tuple[str, str]
    isa: str
    outputs_differing: int
    outputs_elements: int
    nodes: list[NodeDifference]
    """Every node whose output differs, in execution order."""

    @property
    def identical(self) -> bool:
        return self.outputs_differing == 0 and not self.nodes

    @property
    def diverging(self) -> list[NodeDifference]:
        return [node for node in self.nodes if node.cause == "diverges"]

    def to_dict(self) -> dict:
        return {"engines": list(self.engines), "isa": self.isa, "identical": self.identical,
                "outputs_differing": self.outputs_differing,
                "outputs_elements": self.outputs_elements,
                "nodes": [node.to_dict() for node in self.nodes]}


def compare_engines(graph: Graph, engines: tuple[str, str], inputs: tuple,
                    isa: str | None = None) -> Comparison:
    """Run ``graph`` on both ``engines`` (names) with ``inputs`` and compare (module docstring)."""
    nets = [Net(graph, engine, isa) for engine in engines]
    values = [net.run_values(*inputs) for net in nets]
    differs: dict[str, bool] = {name: False for name in graph.inputs}
    nodes = []
    for node in graph.nodes:
        first, second = values[0][node.name], values[1][node.name]
        mask = _differing(first, second)
        inputs_differ = any(differs.get(item.name, False) for item in node.inputs
                            if isinstance(item, Ref))
        differs[node.name] = mask is not None and bool(mask.any())
        if not differs[node.name]:
            continue
        index = tuple(int(i) for i in np.argwhere(mask)[0])
        cause = "propagated" if inputs_differ else "diverges"
        steps_only, stages, reason = {}, {}, ""
        if cause == "diverges":
            steps_only = _steps_only_in(nets, node.name)
            for net in nets:
                try:
                    stages[net.engine.name] = net.explain(list(inputs), layer=node.name,
                                                          index=index).stages
                except Exception:  # an op without an explain hook still gets compared
                    stages[net.engine.name] = []
            reason = _reason(nets, node.name, stages)
        nodes.append(NodeDifference(node.name, node.op, int(mask.size), int(mask.sum()),
                                    _max_steps(first, second), cause, index, steps_only, stages,
                                    reason))
    outputs = [(values[0][ref.name], values[1][ref.name]) for ref in graph.outputs]
    differing = sum(int(_differing(a, b).sum()) for a, b in outputs)
    elements = sum(int(np.size(_array(a))) for a, _ in outputs)
    return Comparison(tuple(engines), nets[0].engine.isa, differing, elements, nodes)


def _array(value) -> np.ndarray:
    return value.values if isinstance(value, QuantizedArray) else np.asarray(value)


def _differing(first, second) -> np.ndarray | None:
    """Elementwise difference (codes, or float32 bits); None for non-tensor values."""
    a, b = _array(first), _array(second)
    if a.shape != b.shape or a.dtype != b.dtype or a.dtype == object:
        return None
    if a.dtype == np.float32:
        return a.view(np.uint32) != b.view(np.uint32)
    return a != b


def _max_steps(first, second) -> float:
    if not isinstance(first, QuantizedArray):
        return 0.0
    return float(np.max(np.abs(first.values.astype(np.int64) - second.values.astype(np.int64))))


def _steps_only_in(nets: list[Net], name: str) -> dict[str, list[str]]:
    """The step labels of each engine's epilogue for this node that the other lacks."""
    labels = []
    for net in nets:
        params = net.prepared_node(name).params
        steps = getattr(params, "requantization", None) or getattr(params, "steps", None) or ()
        kernel = getattr(params, "kernel", "")
        labels.append(([f"kernel: {kernel}"] if kernel else []) +
                      [step.label for step in steps])
    first, second = labels
    return {nets[0].engine.name: [label for label in first if label not in second],
            nets[1].engine.name: [label for label in second if label not in first]}


def _reason(nets: list[Net], name: str, stages: dict[str, list[Stage]]) -> str:
    """The bias handling where the engines differ in it, and the values before rounding."""
    parts = []
    modes = [getattr(net.prepared_node(name).params, "bias_mode", None) for net in nets]
    if modes[0] is not None and modes[0] != modes[1]:
        parts.append("the bias: " + " vs ".join(f"{mode.value} ({net.engine.name})"
                                                for mode, net in zip(modes, nets)))
    before = []
    for net in nets:
        trail = [stage for stage in stages.get(net.engine.name, []) if stage.node == name]
        rounding = next((i for i, stage in enumerate(trail)
                         if stage.name.lower().startswith("round")), None)
        if rounding:
            before.append(f"{_plain(trail[rounding - 1].result)!r} ({net.engine.name})")
    if len(before) == 2:
        parts.append("before rounding: " + " vs ".join(before))
    return "; ".join(parts)


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
