"""Observing a run: kernels report the named steps they apply; explain reads them back.

One code path computes every value. A kernel applies its arithmetic with ``apply_steps`` (a
tuple of ``qexact.requantize.Step``) or reports a value it computed otherwise with ``record``;
both hand the value back unchanged and cost one context-variable read when no one observes.
``explain`` runs the op again inside ``observe()`` and picks its element out of every event, so
what it shows is what the run computed, never a second derivation.

An event's arrays are laid over the op's output:
- without ``where``: arrays of the result's shape, with as many elements as the output (the
  output itself, or a reshaped view of it such as a pool1d run as pool2d), read in C order;
- with ``where`` (a boolean mask with as many elements as the output): the elements of one code
  path, as a kernel computes ``x[where]``, in C order of the mask; the event concerns only the
  elements the mask selects.
Values of the result's shape are per element; anything else (a scalar, a per-channel table) is
shown as it is. Events of other sizes (an intermediate over a different shape) are not shown.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .stages import Stage, constant_text

_ACTIVE: ContextVar["Trace | None"] = ContextVar("qexact_trace", default=None)


@dataclass(frozen=True)
class Event:
    """One reported step: ``label``, its ``formula`` (a template over ``values``' names),
    the ``result`` it produced, the named input ``values``, and the ``where`` mask of its path."""

    label: str
    formula: str
    result: Any
    values: dict
    where: np.ndarray | None = None


@dataclass
class Trace:
    """The events of one observed run, in the order the kernel computed them."""

    events: list[Event] = field(default_factory=list)

    def stages_at(self, index: tuple[int, ...], shape: tuple[int, ...]) -> list[Stage]:
        """The events that concern element ``index`` of an output of ``shape``, as ``Stage``s."""
        size = int(np.prod(shape, dtype=np.int64))
        flat = int(np.ravel_multi_index(index, shape)) if shape else 0
        stages = []
        for event in self.events:
            position, elements = flat, size
            if event.where is not None:
                mask = np.asarray(event.where).reshape(-1)
                if mask.size != size or not mask[flat]:
                    continue
                position, elements = int(np.count_nonzero(mask[:flat])), int(mask.sum())
            per_element = _per_element_shape(event)
            if per_element and int(np.prod(per_element)) != elements:
                continue  # an intermediate over another shape: not this element's
            values = {name: _pick(value, per_element, position)
                      for name, value in event.values.items()}
            result = _pick(event.result, per_element, position)
            stages.append(Stage(event.label, _fill(event.formula, values), values, result))
        return stages


def _per_element_shape(event: Event) -> tuple[int, ...]:
    """The shape of the event's per-element arrays: its result's (``()`` for a descriptive
    event or a scalar result)."""
    result = event.result
    if result is None or np.ndim(result) == 0:
        return ()
    return np.shape(result)


def _pick(value, per_element, position: int):
    if isinstance(value, np.ndarray) and per_element and value.shape == per_element:
        return value.reshape(-1)[position][()]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def _fill(formula: str, values: dict) -> str:
    """``formula`` with ``{name}`` replaced by the element's values (left as is when it names
    something else)."""
    try:
        return formula.format(**{name: constant_text(value) for name, value in values.items()})
    except (KeyError, IndexError, ValueError):
        return formula


@contextmanager
def observe() -> Iterator[Trace]:
    """Record every event reported while the block runs (nested ``observe`` blocks each get
    their own trace; the outer one sees nothing of the inner block)."""
    trace = Trace()
    token = _ACTIVE.set(trace)
    try:
        yield trace
    finally:
        _ACTIVE.reset(token)


def observing() -> bool:
    """Whether a trace is recording (kernels may skip preparing values only explain shows)."""
    return _ACTIVE.get() is not None


def record(label: str, formula: str, result, *, where=None, **values):
    """Report that the run computed ``result`` as ``formula`` of ``values``; returns ``result``."""
    trace = _ACTIVE.get()
    if trace is not None:
        trace.events.append(Event(label, formula, result, values, where))
    return result


def apply_steps(value, steps, *, where=None, prefix: str = ""):
    """Apply ``steps`` (``requantize.Step``s) to ``value`` in order, reporting each; the value
    flows as each step states (int64 or float32). Constants that broadcast to the value are
    shown per element (a per-channel scale gives each element its channel's)."""
    trace = _ACTIVE.get()
    with np.errstate(over="ignore", invalid="ignore"):  # float overflow is modelled, not an error
        for step in steps:
            before = value
            value = step.apply(value)
            if trace is not None:
                values = {"v": before}
                for name, constant in step.shown().items():
                    values[name] = _broadcast(constant, np.shape(value))
                trace.events.append(Event(prefix + step.label, step.formula, value, values, where))
    return value


def _broadcast(constant, shape):
    array = np.asarray(constant)
    if array.ndim == 0 or array.size == 1:
        return array.reshape(())[()]
    try:
        return np.broadcast_to(array, shape)
    except ValueError:
        return constant


# --- Taps: the intermediates a golden directory keeps -------------------------------------------

_TAPS: ContextVar["dict[str, np.ndarray] | None"] = ContextVar("qexact_taps", default=None)


@contextmanager
def tap() -> Iterator[dict[str, np.ndarray]]:
    """Collect the named intermediates kernels ``report`` while the block runs (the accumulator
    of a GEMM layer before and after its bias, laid out as the layer's output), by name."""
    taps: dict[str, np.ndarray] = {}
    token = _TAPS.set(taps)
    try:
        yield taps
    finally:
        _TAPS.reset(token)


def tapping() -> bool:
    """Whether a ``tap`` block is collecting (kernels skip arranging values no one reads)."""
    return _TAPS.get() is not None


def report(name: str, value) -> None:
    """Hand intermediate ``name`` to the enclosing ``tap`` block, if any."""
    taps = _TAPS.get()
    if taps is not None:
        taps[name] = np.asarray(value)
