"""C for a requantization pipeline (``qexact.requantize.Step`` tuples), one emitter per Step type.

A pipeline's value is int64, float32 or float64 at each point, as in NumPy: every emitter
states the NumPy arithmetic of its ``apply`` in C, with NumPy's type promotion (float32 op
float32 stays float32; an int64 or float64 operand makes it a double operation, rounded to float32
by ``f32``). Conversions C leaves undefined (NaN or out-of-range float -> int, ``>>`` of negative
values) go through the ``qx_*`` helpers of ``runtime.c``. ``fmaf`` only where the step is fused;
the generated code is compiled with ``-ffp-contract=off`` so nothing else is contracted.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import UnsupportedError
from ... import requantize as rq
from ._cwriter import C_TYPES, const_array, int_literal, literal

KIND_TYPES = {"i": "int64_t", "f": "float", "d": "double"}


class Pipeline:
    """Emits the statements of one pipeline; ``constants`` collects the const arrays it needs.

    ``channel``: the C expression of the element's channel (per-channel constants are indexed by
    it); ``channels``: how many there are (a per-channel constant has that many values)."""

    def __init__(self, prefix: str, channel: str, channels: int, where: str):
        self.prefix, self.channel, self.channels, self.where = prefix, channel, channels, where
        self.constants: list[str] = []
        self.lines: list[str] = []
        self._count = 0

    def const(self, value, name: str, dtype=None) -> tuple[str, np.dtype]:
        """A constant as a C expression (a literal, or ``array[channel]``) and its NumPy dtype."""
        if isinstance(value, (bool, int, np.integer)) and dtype is None:
            dtype = np.dtype(np.int64)
        array = np.asarray(value)
        if dtype is None:
            dtype = np.dtype(np.float32) if isinstance(value, float) else array.dtype
        dtype = np.dtype(dtype)
        if dtype.kind == "i" or dtype.kind == "u" or dtype.kind == "b":
            dtype = np.dtype(np.int64)
        flat = array.astype(dtype).reshape(-1)
        if flat.size == 1:
            return literal(flat[0], dtype), dtype
        if flat.size != self.channels or sum(n > 1 for n in array.shape) != 1:
            raise UnsupportedError(f"{self.where}: constant {name!r} of shape {array.shape} is "
                                   f"neither one value nor one per channel ({self.channels})")
        array_name = f"{self.prefix}_{name}"
        self.constants.append(const_array(array_name, flat, dtype))
        return f"{array_name}[{self.channel}]", dtype

    def let(self, kind: str, expr: str) -> tuple[str, str]:
        self._count += 1
        name = f"t{self._count}"
        self.lines.append(f"const {KIND_TYPES[kind]} {name} = {expr};")
        return name, kind


def _as_float(value: str, kind: str) -> str:
    """``np.asarray(v, float32)``: one rounding from int64 or double."""
    return value if kind == "f" else f"(float){value}"


def _as_double(value: str, kind: str) -> str:
    return value if kind == "d" else f"(double){value}"


def _float_op(p: Pipeline, value: str, kind: str, op: str, constant: str,
              dtype: np.dtype) -> tuple[str, str]:
    """``f32(v op c)`` with NumPy promotion: float32 math when both are float32, else double."""
    if kind == "f" and dtype == np.float32:
        return p.let("f", f"{value} {op} {constant}")
    return p.let("f", f"(float)({_as_double(value, kind)} {op} (double){constant})")


def _require(p: Pipeline, step, kind: str, wanted: str) -> None:
    if kind not in wanted:
        raise UnsupportedError(f"{p.where}: step {type(step).__name__} ({step.label!r}) on a "
                               f"{KIND_TYPES[kind]} value, which the C export does not model")


def _add_int32(p, s, v, k):
    _require(p, s, k, "i")
    term, _ = p.const(s.term, "term", np.int64)
    return p.let("i", f"qx_wrap32({v} + {term})")


def _to_float32(p, s, v, k):
    if k == "f":
        return v, k
    if k == "i":  # f32(int64): to double (exact below 2**53), then to float32
        return p.let("f", f"(float)(double){v}")
    return p.let("f", f"(float){v}")


def _fused_multiply_add(p, s, v, k):
    a, _ = p.const(np.asarray(s.a, np.float32), "a")
    b, _ = p.const(np.asarray(s.b, np.float32), "b")
    return p.let("f", f"fmaf({a}, {b}, {_as_float(v, k)})")


def _add_float32(p, s, v, k):
    term, dtype = p.const(s.term, "term")
    return _float_op(p, v, k, "+", term, dtype)


def _multiply_float32(p, s, v, k):
    factor, dtype = p.const(s.factor, "factor")
    return _float_op(p, v, k, "*", factor, dtype)


def _divide_float32(p, s, v, k):
    divisor, dtype = p.const(s.divisor, "divisor")
    return _float_op(p, v, k, "/", divisor, dtype)


def _clamp_float32(p, s, v, k):
    # np.maximum(v, low) then np.minimum(., high): NaN propagates; on equal values (signed
    # zeros) NumPy returns the second operand, the bound.
    _require(p, s, k, "f")
    low, _ = p.const(np.float32(s.low), "low")
    high, _ = p.const(np.float32(s.high), "high")
    raised, _ = p.let("f", f"({v} > {low} || {v} != {v}) ? {v} : {low}")
    return p.let("f", f"({raised} < {high} || {raised} != {raised}) ? {raised} : {high}")


def _multiply_add_float32(p, s, v, k):
    factor, fdtype = p.const(s.factor, "factor")
    term, tdtype = p.const(s.term, "term")
    if s.fused:
        return p.let("f", f"fmaf({_as_float(v, k)}, (float){factor}, (float){term})")
    product = _float_op(p, v, k, "*", factor, fdtype)
    return _float_op(p, *product, "+", term, tdtype)


def _min_float32(p, s, v, k):
    _require(p, s, k, "f")
    high, _ = p.const(np.float32(s.high), "high")
    return p.let("f", f"({v} != {v} || {v} > {high}) ? {high} : {v}")


def _round_half_even_to_int64(p, s, v, k):
    _require(p, s, k, "fd")
    return p.let("i", f"qx_rne64({_as_double(v, k)}, {int_literal(s.nan)})")


def _round_half_even_to_int32(p, s, v, k):
    return p.let("i", f"qx_cvtps2dq({_as_float(v, k)})")


def _add_int(p, s, v, k):
    _require(p, s, k, "i")
    term, _ = p.const(s.term, "term", np.int64)
    return p.let("i", f"{v} + {term}")


def _clamp_int(p, s, v, k):
    _require(p, s, k, "i")
    low, high = int_literal(s.low), int_literal(s.high)
    return p.let("i", f"{v} < {low} ? {low} : ({v} > {high} ? {high} : {v})")


def _multiply_int(p, s, v, k):
    _require(p, s, k, "i")
    factor, _ = p.const(s.factor, "factor", np.int64)
    return p.let("i", f"{v} * {factor}")


def _rounding_shift_right_int32(p, s, v, k):
    _require(p, s, k, "i")
    mask = (1 << (s.shift & 31)) - 1
    remainder, _ = p.let("i", f"({v} & {mask}) - ({v} < 0)")
    if s.shift < 32:
        shifted = f"qx_asr({v}, {s.shift})"
    elif s.count_modulo_32:
        shifted = f"qx_asr({v}, {s.shift & 31})"
    else:
        shifted = f"({v} < 0 ? -1 : 0)"
    return p.let("i", f"{shifted} + ({remainder} > {mask >> 1})")


def _round_half_even_lrint(p, s, v, k):
    _require(p, s, k, "fd")
    return p.let("i", f"qx_lrint({_as_double(v, k)})")


def _multiply_float64(p, s, v, k):
    factor, _ = p.const(np.asarray(s.factor, np.float64), "factor")
    return p.let("f", f"(float)((double){_as_float(v, k)} * {factor})")


def _scale_to_float32(p, s, v, k):
    _require(p, s, k, "i")
    factor, _ = p.const(np.asarray(s.factor, np.float64), "factor")
    return p.let("f", f"(float)((double){v} * {factor})")


STEP_EMITTERS: dict[type, Callable] = {
    rq.AddInt32: _add_int32, rq.ToFloat32: _to_float32, rq.FusedMultiplyAdd: _fused_multiply_add,
    rq.AddFloat32: _add_float32, rq.MultiplyFloat32: _multiply_float32,
    rq.DivideFloat32: _divide_float32, rq.ClampFloat32: _clamp_float32,
    rq.MultiplyAddFloat32: _multiply_add_float32, rq.MinFloat32: _min_float32,
    rq.RoundHalfEvenToInt64: _round_half_even_to_int64,
    rq.RoundHalfEvenToInt32: _round_half_even_to_int32, rq.AddInt: _add_int,
    rq.ClampInt: _clamp_int, rq.MultiplyInt: _multiply_int,
    rq.RoundingShiftRightInt32: _rounding_shift_right_int32,
    rq.RoundHalfEvenLrint: _round_half_even_lrint, rq.MultiplyFloat64: _multiply_float64,
    rq.ScaleToFloat32: _scale_to_float32,
}
"""Step type -> emitter ``(pipeline, step, value, kind) -> (value, kind)``. Not here (refused):
the steps that read a run-time operand (residual adds, dynamic scales)."""


def emit_pipeline(steps, value: str, kind: str, out_dtype: np.dtype, pipeline: Pipeline) -> str:
    """Append the statements of ``steps`` applied to ``value`` (``kind`` ``"i"``/``"f"``) to
    ``pipeline.lines``; return the final C expression cast to ``out_dtype`` (as
    ``requantize``'s ``.astype(out_dtype)``: int32 wraps)."""
    for step in steps:
        emitter = STEP_EMITTERS.get(type(step))
        if emitter is None:
            raise UnsupportedError(
                f"{pipeline.where}: requantization step {type(step).__name__} ({step.label!r}) "
                f"has no C emitter; supported: {sorted(t.__name__ for t in STEP_EMITTERS)}")
        label = step.label.replace("*/", "* /")
        pipeline.lines.append(f"/* {label}: {type(step).__name__} */")
        value, kind = emitter(pipeline, step, value, kind)
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind == "f":
        if out_dtype != np.float32:
            raise UnsupportedError(f"{pipeline.where}: output type {out_dtype}")
        return _as_float(value, kind)
    if kind != "i":
        raise UnsupportedError(f"{pipeline.where}: the pipeline ends on a float, output "
                               f"{out_dtype}")
    if out_dtype == np.int32:
        return f"(int32_t)qx_wrap32({value})"
    return f"({C_TYPES[out_dtype]}){value}"
