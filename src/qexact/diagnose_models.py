"""The machinery of diagnose's mistake models, shared by every op family.

``Knobs`` (what a mistaken implementation does differently), ``Candidate`` (a mistake model's
output), the GEMM epilogue under a mistake (``deviated_epilogue``: Linear and conv), and the
registry of the op families' mistake models (``mistake_model``, ``FAMILIES``, ``run_family``).
``qexact.diagnose`` holds the catalog and the ranking; the ``diagnose_*`` modules register their
families' models here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .engines import LayerQuantization
from .engines.base import BiasMode
from .engines.qnnpack import bias_quantization, quantize_bias
from .errors import ShapeError
from .graph import PreparedNode
from .dtypes import QUINT8
from .ops.quantize import ZeroPointEntry, dequantize, quantize_values, reciprocal_float32
from .qparams import QParams, QuantizedArray
from .requantize import AddFloat32, AddInt32, ClampInt, Step, ToFloat32, requantize
from .rounding import f32, round_half_away, round_half_even, round_toward_zero


@dataclass(frozen=True)
class Knobs:
    """What a (possibly mistaken) implementation does differently from the engine."""

    quantize_divide: bool = False           # q = round(x / s) instead of x * f32(1/s)
    zero_point_after_rounding: bool = False  # round(x * inv) + z instead of round(x * inv + z)
    reduce_range: bool = False              # activations quantized to 0..127, scale * 255/127
    input_zero_point: bool = True
    weight_zero_point: bool = True
    pair_saturation: bool | None = None     # None: as the engine and ISA do
    accumulator_bits: int = 32
    output_requantization: bool = True
    output_clamp: bool = True
    bias: str = "engine"                    # "engine", "float32" or "int32"
    bias_rounding: str = "half_even"        # an int32 bias rounded "half_away" or "truncation"
    rounding: str = "half_even"             # "half_even", "half_away", "truncation"
    multiplier: str = "engine"              # "engine" or "float64"
    per_channel_scales: bool = True
    fused_relu: bool = True
    engine: str | None = None               # another engine's numbers (with ``isa``)
    isa: str | None = None
    # Other op families (the diagnose_* modules):
    pad_value: str = "zero_point"           # conv: "zero_point" (the engine) or "zero"
    rescale: str = "engine"                 # add/mul: "float64" or "requantize_each"
    divisor: str = "engine"                 # avg pools: "count_include_pad", "kernel_area",
    #                                         "largest_window"
    max_pad: str = "engine"                 # max pool: "zero_point" (real 0.0 padded)
    formula: str = "engine"                 # activations: "float64" or "float32" textbook
    source_index: str = "engine"            # upsample: "nearest", "nearest_exact", "rounded",
    #                                         "align_corners"

    def merge(self, other: "Knobs") -> "Knobs | None":
        """Both sets of changes at once, or None where they conflict."""
        default = Knobs()
        merged = {}
        for name in self.__dataclass_fields__:
            mine, theirs, base = getattr(self, name), getattr(other, name), getattr(default, name)
            if mine != base and theirs != base and mine != theirs:
                return None
            merged[name] = mine if mine != base else theirs
        return Knobs(**merged)


@dataclass(frozen=True)
class Candidate:
    """A mistake model's output: real values (float64) and, where it has them, integers."""

    real: np.ndarray
    codes: np.ndarray | None


def deviated_quantize(x: np.ndarray, qparams: QParams, knobs: Knobs) -> QuantizedArray:
    """A per-tensor quantize of float ``x`` under ``knobs`` (by division, the zero point after
    rounding, or the reduce_range grid)."""
    dtype = qparams.dtype
    scale, zero_point, high = qparams.scale, qparams.zero_point, dtype.qmax
    if knobs.reduce_range and dtype == QUINT8:
        scale, zero_point, high = scale * 255 / 127, int(round(zero_point * 127 / 255)), 127
    inv = reciprocal_float32(scale)
    if knobs.quantize_divide:
        scaled = f32(f32(x / f32(scale)) + f32(zero_point))
    elif knobs.zero_point_after_rounding:
        scaled = quantize_values(x, inv, zero_point, ZeroPointEntry.ADDED_AFTER_ROUNDING)
    else:
        scaled = quantize_values(x, inv, zero_point, ZeroPointEntry.FUSED_BEFORE_ROUNDING)
    rounded = np.clip(round_half_even(scaled.astype(np.float64)), dtype.qmin, high)
    rounded = np.where(np.isnan(scaled), high, rounded)
    return QuantizedArray(rounded.astype(dtype.numpy_dtype),
                          QParams.per_tensor(scale, zero_point, dtype))


# --- The GEMM epilogue under a mistake (Linear, conv) ------------------------------------------


@dataclass(frozen=True, eq=False)
class _Rounding(Step):
    """A rounding step with another tie rule (a model of a mistake, not an engine's step)."""

    rule: str = "half_away"

    def apply(self, value):
        rule = {"half_away": round_half_away, "truncation": round_toward_zero}[self.rule]
        return rule(np.asarray(value, dtype=np.float64)).astype(np.int64)


def deviated_epilogue(acc: np.ndarray, layer: LayerQuantization, steps: list[Step],
                      bias_mode: BiasMode, knobs: Knobs, is_target: bool) -> Candidate | np.ndarray:
    """A GEMM layer's accumulator ``acc`` (rows, output channels; the mistake's own) through the
    engine's epilogue ``steps`` (for ``layer``, whose ``relu`` already says whether the mistake
    keeps it) under ``knobs``: the target's ``Candidate`` (real values, and codes where the
    output is requantized), or a layer upstream's output codes (int64)."""
    if knobs.accumulator_bits == 16:
        acc = ((acc + 32768) & 0xFFFF) - 32768
    output = layer.output_qparams
    scale_w = np.asarray(layer.weight_qparams.scale, dtype=np.float64)
    if is_target and not knobs.output_requantization:
        real = acc * (layer.input_scale * scale_w)
        if layer.bias is not None:
            real = real + layer.bias.astype(np.float64)
        if layer.relu:
            real = np.maximum(real, 0.0)
        if knobs.output_clamp:
            low = output.scale * (output.dtype.qmin - output.zero_point)
            high = output.scale * (output.dtype.qmax - output.zero_point)
            real = np.clip(real, low, high)
        return Candidate(real, None)
    if knobs.multiplier == "float64":
        real = acc * (layer.input_scale * scale_w)
        if layer.bias is not None:
            real = real + layer.bias.astype(np.float64)
        codes = round_half_even(real / output.scale) + int(output.zero_point)
        codes = codes.astype(np.int64)
        if layer.relu:
            codes = np.maximum(codes, int(output.zero_point))
        if knobs.output_clamp or not is_target:
            codes = np.clip(codes, output.dtype.qmin, output.dtype.qmax)
    else:
        steps = _swap_bias(list(steps), knobs.bias, layer, bias_mode)
        if knobs.bias_rounding != "half_even":
            steps = _rerounded_int32_bias(steps, layer, knobs.bias_rounding)
        if knobs.rounding != "half_even":
            steps = swap_rounding(steps, knobs.rounding)
        if is_target and not knobs.output_clamp:
            steps = [_unclamped(step, layer) for step in steps]
        codes = acc
        for step in steps:
            codes = step.apply(codes)
        codes = np.asarray(codes, dtype=np.int64)
    if is_target:
        real = f32(f32(output.scale) * f32(codes - output.zero_point)).astype(np.float64)
        return Candidate(real, codes)
    return codes


def swap_rounding(steps, rule: str) -> list[Step]:
    """``steps`` with each rounding step (role ``"round"``) rounding by ``rule`` instead."""
    return [_Rounding(step.label, step.role, rule=rule) if step.role == "round" else step
            for step in steps]


def _unclamped(step: Step, layer: LayerQuantization) -> Step:
    if step.role != "output_clamp":
        return step
    if isinstance(step, ClampInt):
        low = int(layer.output_qparams.zero_point) if layer.relu else -(1 << 40)
        return ClampInt(step.label, step.role, low=low, high=1 << 40)
    return AddFloat32("no saturation", term=np.float32(0.0))


def _swap_bias(steps: list[Step], wanted: str, layer: LayerQuantization,
               engine_mode: BiasMode) -> list[Step]:
    if wanted == "engine" or layer.bias is None:
        return steps
    engine_float = engine_mode is BiasMode.FLOAT32
    if (wanted == "float32") == engine_float:
        return steps
    without = [step for step in steps if step.role != "bias"]
    if wanted == "int32":
        term = quantize_bias(layer.bias, layer.input_scale, layer.weight_qparams.scale)
        return [AddInt32("int32 bias (mistake model)", "bias", term=term)] + without
    scale = f32(f32(layer.input_scale) * f32(layer.weight_qparams.scale))
    index = next(i for i, step in enumerate(without) if isinstance(step, ToFloat32)) + 1
    return without[:index] + [AddFloat32("float bias (mistake model)", "bias",
                                         term=f32(f32(layer.bias) / scale))] + without[index:]


def _rerounded_int32_bias(steps: list[Step], layer: LayerQuantization, rule: str) -> list[Step]:
    """``steps`` with an int32 bias (an ``AddInt32`` of role ``"bias"``: QNNPACK's, or the
    int32-bias mistake's) quantized by the engine's bias quantization with ``rule`` for its
    rounding: round(bias / (s_x * s_w)) taken half away from zero or truncated."""
    if layer.bias is None:
        return steps
    rounding = swap_rounding(bias_quantization(layer.input_scale, layer.weight_qparams.scale),
                             rule)
    with np.errstate(over="ignore", invalid="ignore"):
        term = requantize(f32(layer.bias), tuple(rounding), np.int64)
    return [replace(step, term=term) if isinstance(step, AddInt32) and step.role == "bias"
            else step for step in steps]


def candidate_of(value) -> Candidate:
    if isinstance(value, Candidate):
        return value
    if isinstance(value, QuantizedArray):
        return Candidate(dequantize(value).astype(np.float64), value.values.astype(np.int64))
    array = np.asarray(value)
    if array.dtype.kind in "iub":                    # integers that are values (sizes, indices)
        return Candidate(array.astype(np.float64), array.astype(np.int64))
    if array.dtype.kind != "f":
        raise ShapeError(f"a value of type {type(value).__name__} is not an array of numbers")
    return Candidate(array.astype(np.float64), None)


# --- The op families' mistake models ---------------------------------------------------------


MistakeModel = Callable[[PreparedNode, list, Knobs], "Candidate | QuantizedArray | None"]


@dataclass(frozen=True)
class MistakeFamily:
    """The mistake models of one op family: ``model(prepared, arguments, knobs)`` computes the
    node's output from its prepared params and its exact ``arguments`` (the node's inputs) under
    ``knobs``, which change only fields of ``knobs_handled`` (None: the mistake does not apply
    to this node, e.g. a padding mistake on a convolution without padding)."""

    ops: tuple[str, ...]
    knobs_handled: frozenset[str]
    model: MistakeModel


FAMILIES: dict[str, MistakeFamily] = {}
"""Op name -> its family's mistake models (the ``diagnose_*`` modules register theirs)."""


DEFAULT_KNOBS = Knobs()


def mistake_model(*ops: str, knobs: tuple[str, ...]):
    """Register ``model`` as the mistake models of graph ops ``ops``, for the Knobs fields
    ``knobs``."""
    def register(model: MistakeModel) -> MistakeModel:
        family = MistakeFamily(tuple(ops), frozenset(knobs), model)
        for op in ops:
            FAMILIES[op] = family
        return model
    return register


def changed_knobs(knobs: Knobs) -> set[str]:
    return {name for name in Knobs.__dataclass_fields__
            if getattr(knobs, name) != getattr(DEFAULT_KNOBS, name)}


def run_family(prepared: PreparedNode, arguments: list, knobs: Knobs) -> Candidate | None:
    """Node ``prepared``'s output on its exact ``arguments`` under ``knobs`` (None: no model of
    this op family knows every change ``knobs`` makes)."""
    family = FAMILIES.get(prepared.node.op)
    changed = changed_knobs(knobs)
    if family is None or not changed or not changed <= family.knobs_handled:
        return None
    result = family.model(prepared, arguments, knobs)
    return None if result is None else candidate_of(result)
