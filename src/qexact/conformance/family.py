"""A conformance family: one op's cases, drawn, run by PyTorch and run by qexact, as data.

A case is JSON-able ``params`` plus named NumPy ``arrays`` (inputs in logical order, the layout
``../recordings`` README describes: ``x``, ``w``, ``bias``, ``a``/``b``, ...). A family splits what
used to be one generator into three parts, so that each can run where it must:

- ``draw(rng, engine) -> Case | None``: parameters and inputs (no torch, no qexact; None: the draw
  is not admissible, draw again);
- ``run_torch(case) -> Outputs``: PyTorch's result, in a worker process that may crash
  (``torch.backends.quantized.engine`` is set by the caller);
- ``run_qexact(case, engine) -> Outputs``: qexact's result for a ``qexact.engines.Engine``
  (never imports torch), or ``UnsupportedError`` where qexact refuses.

Outputs are a dict of named arrays and scalars (``y``, ``out_scale``, ``out_zero_point``, ...),
compared key by key by ``compare_outputs``: integers by value, floats by bit pattern. qexact may
give ``NotModelled(reason)`` for a key it does not compute (counted apart, never as equal).

A family may have more than one way to draw its cases (``profiles``): ``"default"`` is ``draw``;
``"pytorch"`` draws as PyTorch's own tests do (test/quantization/core/test_quantized_op.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Outputs = dict[str, Any]


@dataclass(frozen=True)
class NotModelled:
    """An output qexact does not compute (e.g. a float kernel it does not emulate)."""

    reason: str


@dataclass
class Case:
    params: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    name: str
    draw: Callable[[np.random.Generator, str], Case | None]
    run_torch: Callable[[Case], Outputs]
    run_qexact: Callable[[Case, Any], Outputs]
    not_on: dict[str, str] = field(default_factory=dict)
    """Engines on which PyTorch gives this family no defined result, with the reason."""
    engines: tuple[str, ...] | None = None
    """Engines this family runs on (None: every engine; ``float_aten``: ``("aten",)``)."""
    profiles: dict[str, Callable[[np.random.Generator, str], Case | None]] = \
        field(default_factory=dict)
    """Other draws by profile name (``"pytorch"``); ``"default"`` is ``draw``."""

    def drawer(self, profile: str = "default"):
        """The draw of ``profile`` (a family without that profile uses its default draw)."""
        return self.profiles.get(profile, self.draw)


FAMILIES: dict[str, Family] = {}


def family(name: str, *, draw, run_torch, run_qexact, not_on=None, engines=None,
           profiles=None) -> Family:
    """Register a family (registration order is the report's row order)."""
    FAMILIES[name] = Family(name, draw, run_torch, run_qexact, dict(not_on or {}), engines,
                            dict(profiles or {}))
    return FAMILIES[name]


@dataclass
class Comparison:
    elements: int = 0
    """Elements compared (a scalar output counts as one)."""
    mismatches: int = 0
    not_modelled: int = 0
    """Elements of outputs qexact gave as ``NotModelled``."""
    first: str = ""
    """The first difference, for the report."""


def compare_outputs(ours: Outputs, theirs: Outputs) -> Comparison:
    """Compare every key PyTorch produced. Arrays: shape and dtype must agree, then each
    element (floats by bit pattern). Scalars (output qparams) count as one element each."""
    result = Comparison()
    for key, expected in theirs.items():
        actual = ours.get(key)
        expected_array = np.asarray(expected)
        if isinstance(actual, NotModelled):
            result.not_modelled += max(1, expected_array.size)
            continue
        count, first = _compare_one(key, actual, expected_array, expected)
        result.elements += max(1, expected_array.size)
        result.mismatches += count
        result.first = result.first or first
    return result


def _compare_one(key, actual, expected_array, expected) -> tuple[int, str]:
    size = max(1, expected_array.size)
    if actual is None:
        return size, f"{key}: qexact gave no value"
    actual_array = np.asarray(actual)
    if np.ndim(expected) == 0 and np.ndim(actual) == 0:  # output qparams: a Python scalar each
        if float(actual_array) != float(expected_array):
            return 1, f"{key}: qexact {actual!r}, torch {expected!r}"
        return 0, ""
    if actual_array.shape != expected_array.shape or actual_array.dtype != expected_array.dtype:
        return size, (f"{key}: qexact {actual_array.dtype}{list(actual_array.shape)}, "
                      f"torch {expected_array.dtype}{list(expected_array.shape)}")
    differ = _differ_mask(actual_array, expected_array)
    count = int(differ.sum())
    if not count:
        return 0, ""
    index = tuple(int(i) for i in np.argwhere(differ)[0])
    return count, (f"{key}{list(index)}: qexact {actual_array[index]!r}, "
                   f"torch {expected_array[index]!r}; {count} of {differ.size} differ")


def _differ_mask(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    if expected.dtype.kind == "f":
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[expected.dtype.itemsize]
        return actual.view(width) != expected.view(width)
    return actual != expected


FAMILY_MODULES = ("quantize_cases", "linear_cases", "conv_cases", "elementwise_cases",
                  "activation_cases", "pooling_cases", "normalization_cases", "reduce_cases",
                  "dynamic_cases", "float_cases")
"""The modules that register qexact's own families, in the report's row order (from quantize to
whole-tensor reductions, then the float-in float-out ops and ATen's float kernels)."""


def load_families() -> dict[str, "Family"]:
    """Import the family modules (each registers its families on import); returns ``FAMILIES``."""
    for name in FAMILY_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return FAMILIES
