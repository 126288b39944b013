"""``inspect_net``: a per-layer account of what runs where (the data behind ``qexact inspect``).

For every node: its op, the kernel PyTorch uses for it on this engine and ISA, input and output
shapes (when inputs are given), scales and zero points, the multiplier(s), and for kernels that
sum int16 pairs (``vpmaddubsw``) whether saturation is possible at all for these weights, and
whether it happens on the given inputs; and, where the engine does not reproduce a float op's
order (``pt2e_eager``'s float GEMMs), that its outputs are not bit-exact, and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Net, Ref
from .jsonable import JsonDocument
from .qparams import QParams, QuantizedArray


@dataclass(frozen=True)
class LayerReport(JsonDocument):
    name: str
    op: str
    kernel: str = ""
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    input_qparams: str = ""
    output_qparams: str = ""
    multiplier: tuple[float, ...] = ()
    saturation: str = ""              # "", "impossible", "possible", "happens on N elements"
    inexact: str = ""                 # why its outputs are not bit-exact on this engine ("": exact)
    details: dict = field(default_factory=dict)
    reached_by: tuple[str, ...] = ()  # earlier inexact layers whose outputs reach this one

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "kernel": self.kernel,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "output_shape": None if self.output_shape is None else list(self.output_shape),
                "input_qparams": self.input_qparams, "output_qparams": self.output_qparams,
                "multiplier": [float(m) for m in self.multiplier], "saturation": self.saturation,
                "exact": not self.inexact and not self.reached_by, "inexact": self.inexact,
                "reached_by_inexact": list(self.reached_by)}


def _describe(qparams) -> str:
    if not isinstance(qparams, QParams):
        return ""
    if qparams.is_per_channel:
        return f"{qparams.dtype.name} per-channel({len(qparams.scale)})"
    return f"s={qparams.scale:.6g} z={qparams.zero_point}"


def _shape(value):
    if isinstance(value, QuantizedArray):
        return tuple(value.values.shape)
    if isinstance(value, np.ndarray):
        return tuple(value.shape)
    return None


def inspect_net(net: Net, inputs: tuple | None = None) -> list[LayerReport]:
    """One ``LayerReport`` per node, in execution order."""
    values = net.run_values(*inputs) if inputs is not None else {}
    qparams_of = {item.node.name: item.output_qparams for item in net._prepared}
    inexact_of = net._inexact_by_node()
    reports = []
    for item in net._prepared:
        node, params = item.node, item.params
        first = next((ref for ref in node.inputs if isinstance(ref, Ref)), None)
        input_value = values.get(first.name) if first is not None else None
        kernel = getattr(params, "kernel", "")
        multiplier = tuple(float(np.asarray(m).ravel()[0]) for m in getattr(params, "multiplier", ()))
        saturation = ""
        if getattr(params, "pair_saturation", None) is not None:
            saturation = _saturation(params, input_value)
        reports.append(LayerReport(
            name=node.name, op=node.op, kernel=kernel, input_shape=_shape(input_value),
            output_shape=_shape(values.get(node.name)),
            input_qparams=_describe(qparams_of.get(first.name) if first is not None else None),
            output_qparams=_describe(item.output_qparams), multiplier=multiplier,
            saturation=saturation, inexact=getattr(params, "inexact", ""),
            reached_by=tuple(name for name in inexact_of[node.name] if name != node.name)))
    return reports


def _saturation(params, input_value) -> str:
    if not params.pair_saturation:
        return "no (exact accumulator)"
    risky = getattr(params, "risky_pairs", None)
    if risky is not None and not risky.any():
        return "impossible for these weights"
    counter = getattr(params, "saturated_outputs", None)
    if counter is None or not isinstance(input_value, QuantizedArray):
        return "possible"
    count = counter(input_value)
    return f"happens: {count} output(s) changed" if count else "possible (not on this input)"
