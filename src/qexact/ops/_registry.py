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


def _observe(run: Callable, params, inputs, result):
    """Run the op again inside ``observe``: its trace, and the output's values (the second run
    must give the first run's output)."""
    with observe() as trace:
        again = run(params, inputs)
    first, second = (value.values if isinstance(value, QuantizedArray) else np.asarray(value)
                     for value in (result, again))
    if first.shape != second.shape or not np.array_equal(
            first, second, equal_nan=first.dtype.kind == "f"):
        raise QexactError("explain: running the op again gave a different output")
    return trace, first


def observed_stages(run: Callable, params, inputs, result, index) -> list[Stage]:
    """The stages of element ``index``, observed on a second run of the op (``run(params,
    inputs)`` inside ``qexact.trace.observe``): explain shows what the run computes, by the same
    code."""
    trace, first = _observe(run, params, inputs, result)
    return trace.stages_at(tuple(index), first.shape)


def observed_block_stages(run, params, inputs, result, index) -> list[Stage]:
    """``observed_stages`` for an ``index`` that may hold slices (a Linear walks back into the
    quantize of its whole input row): the op runs once under ``observe``, each element of the
    block gets its stages, and they are merged stage by stage, a value equal over the block
    shown once, others as arrays over the block; a step's results (the stages with a ``v``)
    are an array over the block. The formula is the first element's (their constants are the
    same for a per-tensor quantize)."""
    index = tuple(index)
    if all(isinstance(i, (int, np.integer)) for i in index):
        return observed_stages(run, params, inputs, result, index)
    trace, first = _observe(run, params, inputs, result)
    positions = np.arange(first.size).reshape(first.shape)[index].reshape(-1)
    per_element = [trace.stages_at(tuple(int(i) for i in np.unravel_index(flat, first.shape)),
                                   first.shape) for flat in positions]
    names = [[stage.name for stage in stages] for stages in per_element]
    if any(other != names[0] for other in names[1:]):
        return [stage for stages in per_element for stage in stages]
    return [_merge(list(stages)) for stages in zip(*per_element)]


def _merge(stages: list[Stage]) -> Stage:
    """One stage over a block of elements from each element's own stage (same name)."""
    def gathered(values):
        if all(_same(value, values[0]) for value in values[1:]):
            return values[0]
        return np.array(values)

    names = stages[0].values.keys()
    values = {name: gathered([stage.values[name] for stage in stages]) for name in names}
    results = [stage.result for stage in stages]
    if results[0] is None:
        result = None
    elif "v" in values:  # a step: its results over the block, an array even where they agree
        result = np.array(results)
    else:  # a value of constants (the inverse scale): once if the block agrees
        result = gathered(results)
    return Stage(stages[0].name, stages[0].formula, values, result)


def _same(a, b) -> bool:
    """Whether two shown values are the same: numbers bit for bit (NaN equals NaN)."""
    first, second = np.asarray(a), np.asarray(b)
    if first.dtype.kind not in "biuf" or second.dtype.kind not in "biuf":
        return type(a) is type(b) and bool(np.all(first == second))
    return (first.dtype == second.dtype and first.shape == second.shape
            and first.tobytes() == second.tobytes())
