"""Explain one output element: every stage, in the order the engine computes it, with its values.

``Net.explain(inputs, layer=None, index=None)`` (``qexact.graph``; ``explain(net, ...)`` here is
the same) walks the graph back from the element and returns an ``Explanation``: a list of
``Stage`` events (structured data; no printing here). ``render_text``/``render_markdown``/
``to_json`` render it at the edge. Each op contributes its own stages through the ``explain`` hook
of its graph-op class (see ``Net.explain``). This module knows no graph: ``qexact.graph`` builds
on it.

JSON schema: ``EXPLAIN_SCHEMA`` (``docs/explain.md``), versioned by ``"schema_version"``.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import QexactError, ShapeError
from .jsonable import JsonDocument
from .stages import Stage

SCHEMA_NAME = "qexact-explain"
SCHEMA_VERSION = 1
TEXT_WIDTH = 80
SHOWN_TERMS = 8


@dataclass(frozen=True)
class Explanation(JsonDocument):
    layer: str
    op: str
    engine: str
    isa: str
    index: tuple[int, ...]
    stages: list[Stage]
    output: Any
    inexact: dict[str, str] = field(default_factory=dict)
    """The layers run with a float kernel qexact does not reproduce (``allow_inexact``) whose
    outputs reach this value: name -> why. Empty: the value is PyTorch's, bit for bit."""

    def to_dict(self) -> dict:
        return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "layer": self.layer,
                "op": self.op, "engine": self.engine, "isa": self.isa, "index": list(self.index),
                "output": _jsonable(self.output),
                "stages": [{"name": s.name, "node": s.node, "op": s.op, "formula": s.formula,
                            "values": _jsonable(s.values), "result": _jsonable(s.result),
                            "note": s.note} for s in self.stages],
                "exact": not self.inexact, "inexact": dict(self.inexact)}

    def render(self, format: str = "text") -> str:
        if format == "text":
            return render_text(self)
        if format == "markdown":
            return render_markdown(self)
        if format == "json":
            return self.to_json(indent=1)
        raise QexactError(f"unknown format {format!r}; formats: text, markdown, json")

    def __str__(self) -> str:
        return render_text(self)


def explain(net, inputs, layer: str | None = None, index=None) -> Explanation:
    """Explain element ``index`` of node ``layer``'s output (default: the model's first output)
    of ``net`` (a ``qexact.Net``): ``net.explain(inputs, layer, index)``."""
    return net.explain(inputs, layer=layer, index=index)


def normalize_index(index, shape: tuple[int, ...], name: str = "") -> tuple[int, ...]:
    if index is None:
        index = (0,) * len(shape)
    if isinstance(index, (int, np.integer)):
        index = (int(index),)
    index = tuple(int(i) for i in index)
    if len(index) != len(shape) or any(not -size <= i < size for i, size in zip(index, shape)):
        raise ShapeError(f"index {index} is not an element of {name!r}, whose shape is {shape}")
    return tuple(i % size for i, size in zip(index, shape))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value[()]) if value.ndim == 0 else [_jsonable(item) for item in value]
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else str(number)
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def format_number(value) -> str:
    """Shortest text that reads back to the same float32/float64/int."""
    if isinstance(value, (np.floating,)):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
        shown = ", ".join(format_number(item) for item in items[:SHOWN_TERMS])
        more = f", ... ({len(items)} in all)" if len(items) > SHOWN_TERMS else ""
        return f"[{shown}{more}]"
    return str(value)


def render_text(explanation: Explanation) -> str:
    lines = [f"{explanation.layer} [{explanation.op}] element {list(explanation.index)}: "
             f"{format_number(explanation.output)}",
             f"engine {explanation.engine}, isa {explanation.isa}", ""]
    for layer, why in explanation.inexact.items():
        lines += _wrap(f"NOT BIT-EXACT: depends on {layer!r}, allowed inexact: {why}",
                       indent="  ")
    if explanation.inexact:
        lines.append("")
    for number, stage in enumerate(explanation.stages, 1):
        head = f"{number:2d}. {stage.name}  ({stage.node})"
        lines.append(head[:TEXT_WIDTH])
        lines += _wrap(f"    {stage.formula}")
        for key, value in stage.values.items():
            lines += _wrap(f"      {key} = {format_number(value)}", indent="        ")
        if stage.result is not None:
            lines += _wrap(f"      -> {format_number(stage.result)}", indent="         ")
        if stage.note:
            lines += _wrap(f"      note: {stage.note}", indent="        ")
    return "\n".join(lines)


def _wrap(text: str, indent: str = "      ") -> list[str]:
    return textwrap.wrap(text, TEXT_WIDTH, subsequent_indent=indent, break_on_hyphens=False,
                         replace_whitespace=False) or [""]


def render_markdown(explanation: Explanation) -> str:
    lines = [f"### `{explanation.layer}` [{explanation.op}] element "
             f"`{list(explanation.index)}` = `{format_number(explanation.output)}`", "",
             f"Engine `{explanation.engine}`, ISA `{explanation.isa}`.", "",
             *(f"**Not bit-exact**: depends on `{layer}`, allowed inexact: {why}\n"
               for layer, why in explanation.inexact.items()),
             "| # | stage | node | formula | values | result |", "|---|---|---|---|---|---|"]
    for number, stage in enumerate(explanation.stages, 1):
        values = "<br>".join(f"{key} = `{format_number(value)}`"
                             for key, value in stage.values.items())
        result = "" if stage.result is None else f"`{format_number(stage.result)}`"
        formula = stage.formula.replace("|", "\\|")
        lines.append(f"| {number} | {stage.name} | `{stage.node}` | `{formula}` | {values} | "
                     f"{result} |")
    return "\n".join(lines)


EXPLAIN_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "qexact explain, schema version 1",
    "type": "object",
    "required": ["schema", "schema_version", "layer", "op", "engine", "isa", "index", "output",
                 "stages"],
    "properties": {
        "schema": {"const": SCHEMA_NAME},
        "schema_version": {"const": SCHEMA_VERSION},
        "layer": {"type": "string"},
        "op": {"type": "string"},
        "engine": {"type": "string"},
        "isa": {"type": "string"},
        "index": {"type": "array", "items": {"type": "integer"}},
        "output": {"type": ["number", "integer", "string"]},
        "stages": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "node", "op", "formula", "values", "result", "note"],
            "properties": {"name": {"type": "string"}, "node": {"type": "string"},
                           "op": {"type": "string"}, "formula": {"type": "string"},
                           "values": {"type": "object"}, "note": {"type": "string"}},
        }},
        "exact": {"type": "boolean"},
        "inexact": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
