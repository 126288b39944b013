"""The graph-op registry: ``@graph_op("linear", ...)`` on a class with ``prepare`` and ``run``.

Kept free of engine imports so every op module (and the engines) can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import QexactError
from ..qparams import QuantizedArray
from ..stages import Stage
from ..trace import observe


@dataclass(frozen=True)
class OpDefinition:
    """How a graph op is prepared (offline) and run.

    ``prepare(node, input_qparams, engine) -> (params, output_qparams)``: ``input_qparams`` lists
    the static qparams of each input (None for values that are not quantized tensors).
    ``run(params, inputs) -> value``.
    ``explain(params, inputs, output, index) -> (stages, upstream)``, optional: the ``Stage``s
    that produce element ``index`` of the output, and ``(input position, input index)`` pairs
    to explain before them (see ``qexact.explain``).
    """

    name: str
    prepare: Callable
    run: Callable
    summary: str
    explain: Callable | None = None


OP_REGISTRY: dict[str, OpDefinition] = {}


def graph_op(name: str, summary: str):
    """Register a class with static ``prepare`` and ``run`` methods as graph op ``name``."""

    def register(cls):
        if name in OP_REGISTRY:
            raise RuntimeError(f"graph op {name!r} registered twice")
        OP_REGISTRY[name] = OpDefinition(name, cls.prepare, cls.run, summary,
                                         getattr(cls, "explain", None))
        return cls

    return register


def observed_stages(run: Callable, params, inputs, result, index) -> list[Stage]:
    """The stages of element ``index``, observed on a second run of the op (``run(params,
    inputs)`` inside ``qexact.trace.observe``): explain shows what the run computes, by the same
    code. The second run must give the first run's output."""
    with observe() as trace:
        again = run(params, inputs)
    first, second = (value.values if isinstance(value, QuantizedArray) else np.asarray(value)
                     for value in (result, again))
    if first.shape != second.shape or first.tobytes() != np.ascontiguousarray(second).tobytes() \
            and not np.array_equal(first, second, equal_nan=first.dtype.kind == "f"):
        raise QexactError("explain: running the op again gave a different output")
    return trace.stages_at(tuple(index), first.shape)
