"""The one requantization pipeline: int32 accumulator -> output integers.

Every backend turns ``acc = sum (x - zx)(w - zw)`` into output bytes by a short sequence of
float32 and integer operations whose *order* is the whole difference between backends. qexact
writes that sequence as data: an engine's ``requantization`` returns a tuple of ``Step`` values,
prepared offline (float allowed), and ``requantize`` applies them at run time. The same steps drive
``explain`` (each step names its formula) and the exporters.

Per-channel constants are 1-D arrays over the output channel, which is the last axis of ``acc``.
Values flow as int64 (integer steps) or float32 (float steps); each step states which it takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from .rounding import f32, fma_float32, round_half_even_to_int32, wrap_int32
from .stages import constant_text
from .trace import report, tapping

# Float32 steps compute in float32 where NumPy does: an IEEE float32 +, -, *, / of two float32
# values is the exact result rounded once to float32, which is what ``f32(a op b)`` gave (NumPy
# computes ``a op b`` in float32 already for two float32 operands, and ``f32`` of a float32
# result is the identity: float32 -> double -> float32 is exact; arithmetic never yields a
# signalling NaN, the one value the round trip would change). Where NumPy promotes (an integer
# or float64 operand), ``_float32_result`` rounds the wider result once, as ``f32`` did.


def _float32_result(result) -> np.ndarray:
    """``f32(result)`` without the round trip when ``result`` is float32 already."""
    result = np.asarray(result)
    return result if result.dtype == np.float32 else f32(result)


_EXACT_INT64_TO_FLOAT = 2 ** 53
"""Below this magnitude int64 -> double is exact, so ``f32(v)`` rounds once, as a direct cast."""


@dataclass(frozen=True, eq=False)
class Step:
    """One operation of a requantization pipeline; ``label`` says what it stands for.

    ``role`` marks the steps other code looks for: ``"bias"``, ``"round"``, ``"relu"``,
    ``"output_clamp"`` (explain and diagnose use it; the arithmetic does not).
    """

    label: str
    role: str = ""

    formula = ""

    def apply(self, value: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def constants(self) -> dict[str, np.ndarray]:
        """The step's constants by name (for ``net.layers``, explain and export)."""
        return {}

    def shown(self) -> dict:
        """What ``formula`` names: the constants, and the step's own scalar fields."""
        shown = dict(self.constants())
        for name in re.findall(r"\{(\w+)\}", self.formula):
            if name not in shown and hasattr(self, name):
                shown[name] = getattr(self, name)
        return shown

    def __str__(self) -> str:
        """``label: formula`` with the constants written in (per-channel ones abbreviated)."""
        try:
            body = self.formula.format(**{name: constant_text(value)
                                          for name, value in self.shown().items()})
        except (KeyError, IndexError):
            body = self.formula
        return f"{self.label}: {body}"



@dataclass(frozen=True, eq=False)
class AddInt32(Step):
    """``v = wrap_int32(v + term)``: a 32-bit integer add, as the int32 bias enters in QNNPACK."""

    term: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    formula = "v + {term} (int32, wraps)"

    def apply(self, value):
        return wrap_int32(value + self.term)

    def constants(self):
        return {"term": self.term}


@dataclass(frozen=True, eq=False)
class ToFloat32(Step):
    """``v = f32(v)``: int32 to float32 (``cvtdq2ps``), exact below 2**24, ties to even above."""

    formula = "f32(v)"

    def apply(self, value):
        value = np.asarray(value)
        if value.dtype in (np.int32, np.int16, np.int8, np.uint8, np.uint16, np.float32):
            return value.astype(np.float32)      # exact in double, so one rounding either way
        if value.dtype == np.int64 and value.size and \
                -_EXACT_INT64_TO_FLOAT <= value.min() and value.max() <= _EXACT_INT64_TO_FLOAT:
            return value.astype(np.float32)      # int64 -> float32 rounds once (cvtsi2ss)
        return f32(value)


@dataclass(frozen=True, eq=False)
class FusedMultiplyAdd(Step):
    """``v = fmaf(a, b, v)``: one rounding (FBGEMM's per-tensor float bias, contracted to FMA)."""

    a: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    b: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    formula = "fmaf({a}, {b}, v)"

    def apply(self, value):
        return fma_float32(self.a, self.b, value)

    def constants(self):
        return {"a": self.a, "b": self.b}


@dataclass(frozen=True, eq=False)
class AddFloat32(Step):
    """``v = f32(v + term)``."""

    term: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    formula = "f32(v + {term})"

    def apply(self, value):
        return _float32_result(value + self.term)

    def constants(self):
        return {"term": self.term}


@dataclass(frozen=True, eq=False)
class AddResidualFloat32(Step):
    """A quantized residual tensor added to the layer's float result: ``d = f32(q_r) - z_r``
    (exact), then ``v = fmaf(d, s_r, v)`` (``fused``: one rounding, oneDNN's "sum" post-op,
    which Inductor fuses into a conv for ``conv(x) + y``) or ``f32(v + f32(d * s_r))`` (a
    dequantize, then a float add). Its integers ``q_r`` are read at run time: ``operand`` is
    bound per call (``bind_operand``, role ``"sum"``), laid out as the accumulator."""

    zero_point: int = 0
    scale: float = 1.0
    fused: bool = True
    operand: np.ndarray | None = None

    @property
    def formula(self):
        centered = "(f32(q_r) - {zero_point})"
        return (f"fmaf{centered[:-1]}, {{scale}}, v)  (q_r: the residual's integers)"
                if self.fused else
                f"f32(v + f32({centered} * {{scale}}))  (q_r: the residual's integers)")

    def apply(self, value):
        if self.operand is None:
            raise ValueError(f"step {self.label!r} has no residual bound (bind_operand)")
        centered = f32(f32(self.operand) - np.float32(self.zero_point))
        if self.fused:
            return fma_float32(centered, np.float32(self.scale), value)
        return f32(value + f32(centered * np.float32(self.scale)))


@dataclass(frozen=True, eq=False)
class AddOperandFloat32(Step):
    """``v = f32(v + r)`` with a float32 tensor ``r`` read at run time (``operand``, bound per
    call by ``bind_operand``): a float residual added to a layer's float result (oneDNN's
    "add" post-op, which Inductor fuses into a Linear for ``linear(x) + y``)."""

    operand: np.ndarray | None = None
    formula = "f32(v + {operand})"

    def apply(self, value):
        if self.operand is None:
            raise ValueError(f"step {self.label!r} has no operand bound (bind_operand)")
        return _float32_result(value + self.operand)

    def shown(self):
        return {"operand": self.operand}


@dataclass(frozen=True, eq=False)
class MultiplyOperandFloat32(Step):
    """``v = f32(v * r)`` with ``r`` read at run time (``operand``, bound per call by
    ``bind_operand``): a dynamically quantized input's per-row scale."""

    operand: np.ndarray | None = None
    formula = "f32(v * {operand})"

    def apply(self, value):
        if self.operand is None:
            raise ValueError(f"step {self.label!r} has no operand bound (bind_operand)")
        return _float32_result(value * self.operand)

    def shown(self):
        return {"operand": self.operand}


def bind_operand(steps: tuple[Step, ...], role: str, operand: np.ndarray) -> tuple[Step, ...]:
    """``steps`` with the run-time ``operand`` (broadcasting to the accumulator) bound to the
    steps of role ``role`` (an ``AddResidualFloat32``'s residual, a ``MultiplyOperandFloat32``'s
    factor)."""
    return tuple(replace(step, operand=operand) if step.role == role else step
                 for step in steps)


@dataclass(frozen=True, eq=False)
class MultiplyFloat32(Step):
    """``v = f32(v * factor)``."""

    factor: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    formula = "f32(v * {factor})"

    def apply(self, value):
        return _float32_result(value * self.factor)

    def constants(self):
        return {"factor": self.factor}


@dataclass(frozen=True, eq=False)
class DivideFloat32(Step):
    """``v = f32(v / divisor)``."""

    divisor: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    formula = "f32(v / {divisor})"

    def apply(self, value):
        return _float32_result(value / self.divisor)

    def constants(self):
        return {"divisor": self.divisor}


@dataclass(frozen=True, eq=False)
class ClampFloat32(Step):
    """``v = min(max(v, low), high)`` on floats (a fused ReLU, or a saturation before conversion)."""

    low: float = float("-inf")
    high: float = float("inf")
    formula = "min(max(v, {low}), {high})"

    def apply(self, value):
        clamped = np.asarray(np.maximum(value, np.float32(self.low)))
        return np.minimum(clamped, np.float32(self.high), out=clamped)


@dataclass(frozen=True, eq=False)
class MultiplyAddFloat32(Step):
    """``v = fmaf(v, factor, term)`` (``fused``: one rounding) or ``f32(f32(v * factor) + term)``."""

    factor: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    term: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    fused: bool = True

    @property
    def formula(self):
        return "fmaf(v, {factor}, {term})" if self.fused else "f32(f32(v * {factor}) + {term})"

    def apply(self, value):
        if self.fused:
            return fma_float32(value, self.factor, self.term)
        return _float32_result(_float32_result(value * self.factor) + self.term)

    def constants(self):
        return {"factor": self.factor, "term": self.term}


@dataclass(frozen=True, eq=False)
class MinFloat32(Step):
    """``v = min(v, high)`` as ``minps(v, high)``: NaN gives ``high`` (x86 returns the second
    operand when either is NaN), as ``QuantizeAvx2`` caps values below INT32_MAX."""

    high: float = float("inf")
    formula = "min(v, {high}) (NaN: {high})"

    def apply(self, value):
        high = np.float32(self.high)
        # value <= high is False exactly for NaN and value > high: those give high.
        return np.where(value <= high, value, high).astype(np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class RoundHalfEvenToInt64(Step):
    """``v = int64(nearbyint(v))``: ties to even, in double, the result kept in 64 bits (the
    scalar ``quantize_val``); NaN gives ``nan``."""

    nan: int = 0
    formula = "round_half_even(v) (NaN: {nan})"

    def apply(self, value):
        value = np.asarray(value)
        rounded = np.rint(np.where(np.isnan(value), 0, value).astype(np.float64))
        rounded = np.clip(rounded, -2.0 ** 62, 2.0 ** 62).astype(np.int64)
        return np.where(np.isnan(value), np.int64(self.nan), rounded)


@dataclass(frozen=True, eq=False)
class RoundHalfEvenToInt32(Step):
    """``v = cvtps2dq(v)``: to int32, ties to even; NaN and out-of-range give INT32_MIN."""

    formula = "round_half_even(v)"

    def apply(self, value):
        return round_half_even_to_int32(value)


@dataclass(frozen=True, eq=False)
class AddInt(Step):
    """``v = v + term`` on integers (the output zero point after rounding)."""

    term: int = 0
    formula = "v + {term}"

    def apply(self, value):
        return value + self.term


@dataclass(frozen=True, eq=False)
class ClampInt(Step):
    """``v = min(max(v, low), high)`` on integers: the output range, raised to ``zp`` by a fused ReLU."""

    low: int = 0
    high: int = 255
    formula = "clamp(v, {low}, {high})"

    def apply(self, value):
        return np.clip(value, self.low, self.high)


@dataclass(frozen=True, eq=False)
class MultiplyInt(Step):
    """``v = v * factor`` on integers, exact (int64): an input times its fixed-point multiplier."""

    factor: int = 1
    formula = "v * {factor}"

    def apply(self, value):
        return np.asarray(value, dtype=np.int64) * self.factor


@dataclass(frozen=True, eq=False)
class RoundingShiftRightInt32(Step):
    """``v = (v >> shift) + (r > (mask >> 1))`` on int32 ``v``, with ``mask = (1 << shift) - 1``
    and ``r = (v & mask) - (v < 0)``: ``v / 2**shift`` rounded half away from zero (QNNPACK's
    add, qnnpack/src/q8vadd/sse2.c). x86 masks shift counts to 5 bits, so for ``shift >= 32`` the
    mask is ``(1 << (shift mod 32)) - 1``, and the shift itself fills with the sign (``psrad``;
    ``count_modulo_32`` False) or shifts by ``shift mod 32`` (the scalar ``sar``; True)."""

    shift: int = 0
    count_modulo_32: bool = False

    @property
    def formula(self):
        rounding = "(v >> {shift}) + ((v & mask) - (v < 0) > mask >> 1), mask = 2^{shift} - 1"
        if self.shift < 32:
            return rounding
        return (rounding.replace("2^{shift}", "2^({shift} mod 32)")
                + ("; v >> {shift} shifts by {shift} mod 32 (sar)" if self.count_modulo_32
                   else "; v >> {shift} gives the sign, 0 or -1 (psrad)"))

    def apply(self, value):
        value = np.asarray(value, dtype=np.int64)
        mask = (1 << (self.shift & 31)) - 1
        remainder = (value & mask) - (value < 0)
        if self.shift < 32:
            shifted = value >> self.shift
        elif self.count_modulo_32:
            shifted = value >> (self.shift & 31)
        else:
            shifted = np.where(value < 0, -1, 0).astype(np.int64)
        return shifted + (remainder > (mask >> 1))


@dataclass(frozen=True, eq=False)
class RoundHalfEvenLrint(Step):
    """``v = lrintf(v)`` on x86-64 (``cvtss2si`` to 64 bits): ties to even; NaN, infinities and
    values outside ``[-2**63, 2**63)`` give INT64_MIN (the "integer indefinite" value), so a
    huge positive value comes out most negative (ATen's scalar ``requantize_from_int``)."""

    formula = "lrintf(v) (NaN or past int64: INT64_MIN)"

    def apply(self, value):
        value = np.asarray(value)
        wide = value.astype(np.float64)
        fits = (wide >= -2.0 ** 63) & (wide < 2.0 ** 63)  # False for NaN
        rounded = np.rint(np.where(fits, wide, 0.0)).astype(np.int64)
        return np.where(fits, rounded, np.int64(-2 ** 63))


@dataclass(frozen=True, eq=False)
class MultiplyFloat64(Step):
    """``v = f32(double(v) * factor)``: a float32 ``v`` times a double ``factor`` in double (one
    rounding), then to float32 (a second), as ``(float)(f * (double)scale)`` in C (per-channel
    dequantize, whose scales are doubles)."""

    factor: np.ndarray = field(default_factory=lambda: np.ones(1, np.float64))
    formula = "f32(double(v) * {factor})"

    def apply(self, value):
        wide = np.asarray(value, dtype=np.float32).astype(np.float64)
        return f32(wide * np.asarray(self.factor, dtype=np.float64))

    def constants(self):
        return {"factor": self.factor}


@dataclass(frozen=True, eq=False)
class ScaleToFloat32(Step):
    """``v = f32(double(v) * factor)`` for an integer ``v``: the real value ``v * factor``
    (``factor`` a double) rounded to float32, after a first rounding to double (exact for
    ``|v| < 2**31`` and a float32 product of two float32 scales). A stand-in for a float sum
    whose order is not reproduced (``GemmNumerics.inexact``)."""

    factor: np.ndarray = field(default_factory=lambda: np.ones(1, np.float64))
    formula = "f32(v * {factor})"

    def apply(self, value):
        return f32(np.asarray(value, dtype=np.float64) * np.asarray(self.factor, np.float64))

    def constants(self):
        return {"factor": self.factor}


def requantize(acc: np.ndarray, steps: tuple[Step, ...], out_dtype: np.dtype,
               arrange=None) -> np.ndarray:
    """Apply ``steps`` to the int64 accumulator ``acc``; the last step must leave integers in
    range. ``arrange`` (optional) lays a value of ``acc``'s layout out as the op's output (a
    conv's (positions, channels) as (N, C, *spatial)); it is applied to the result, and to the
    accumulator before and after the bias step that a ``qexact.trace.tap`` block collects (as
    ``"accumulator"`` and ``"biased"``: int32, or float32 where the bias is a float step).

    An integer ``acc`` may also be int32 (the accumulator's own type): a first step other
    than ``ToFloat32`` sees it as int64 (other values, e.g. a float bias, pass as given). The usual tail ``cvtps2dq, + z, clamp`` runs fused
    (``round_offset_clamp``, the same integers)."""
    arrange = arrange or (lambda value: value)
    taps = tapping()
    if taps:
        report("accumulator", arrange(np.asarray(acc, dtype=np.int32)))
    value = np.asarray(acc)
    if not taps:
        result = chunked_float32_requantize(value, steps, out_dtype)
        if result is not None:
            return arrange(result)
    if value.dtype.kind in "iu" and value.dtype != np.int64 and \
            not (steps and isinstance(steps[0], ToFloat32)):
        value = value.astype(np.int64)
    steps, tail = _fused_tail(steps, out_dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # float overflow is modelled, not an error
        for step in steps:
            value = step.apply(value)
            if taps and step.role == "bias":
                biased = np.asarray(value)
                report("biased", arrange(biased.astype(np.int32) if biased.dtype.kind in "iu"
                                         else biased))
        if tail is not None and np.asarray(value).dtype == np.float32 and np.ndim(value):
            return arrange(round_offset_clamp(value, *tail, out_dtype))
        for step in _tail_steps(tail):
            value = step.apply(value)
    return arrange(value.astype(out_dtype))


def _fused_tail(steps: tuple[Step, ...], out_dtype) -> tuple[tuple[Step, ...], tuple | None]:
    """``steps`` without a final ``RoundHalfEvenToInt32, AddInt, ClampInt`` that
    ``round_offset_clamp`` can compute, and that tail as ``(zero_point, low, high, steps)``."""
    if len(steps) < 3:
        return steps, None
    rounding, offset, clamp = steps[-3:]
    if not (type(rounding) is RoundHalfEvenToInt32 and type(offset) is AddInt
            and type(clamp) is ClampInt):
        return steps, None
    out_dtype = np.dtype(out_dtype)
    if out_dtype.kind not in "iu":
        return steps, None
    limits = np.iinfo(out_dtype)
    low, high, zero_point = int(clamp.low), int(clamp.high), int(offset.term)
    if not (limits.min <= low <= high <= limits.max
            and max(abs(low - zero_point), abs(high - zero_point), abs(zero_point)) < 2 ** 23):
        return steps, None
    return steps[:-3], (zero_point, low, high, steps[-3:])


def _tail_steps(tail) -> tuple[Step, ...]:
    return () if tail is None else tail[3]


def round_offset_clamp(value: np.ndarray, zero_point: int, low: int, high: int, tail_steps,
                       out_dtype) -> np.ndarray:
    """``clamp(cvtps2dq(v) + zero_point, low, high)`` as ``out_dtype``, in float32.

    Equal to the three steps: for ``r = rint(v)`` with ``-2**31 <= r < 2**31`` (an integer
    float32, as ``round_half_even_to_int32``), ``clamp(r + z, low, high) == clamp(r, low - z,
    high - z) + z``, and the right side is exact in float32 (bounds and ``z`` below 2**23 in
    magnitude, so every value it forms is an integer float32); NaN and out-of-range ``r`` give
    ``INT32_MIN``, hence ``clamp(INT32_MIN + z, low, high)``, set apart. ``low..high`` lies in
    ``out_dtype``, so the final cast is exact. ``tail_steps`` are unused (kept for reference).
    """
    rounded = np.rint(value)
    fits = rounded >= np.float32(-2.0 ** 31)
    fits &= rounded < np.float32(2.0 ** 31)                   # False for NaN
    result = np.clip(rounded, np.float32(low - zero_point), np.float32(high - zero_point),
                     out=rounded)
    result += np.float32(zero_point)
    if not fits.all():
        result[~fits] = min(max(-2 ** 31 + zero_point, low), high)
    return result.astype(out_dtype)


CHUNK_ELEMENTS = 1 << 15
"""Rows of the accumulator are requantized in chunks of about this many elements, so that
every pass of the steps runs on values held in the L2 cache."""


def _float32_constant(constant, width: int):
    """``constant`` as used by a float32 step on (rows, ``width``) float32 values in place, or
    None where NumPy would compute ``value op constant`` in another type or shape."""
    array = np.asarray(constant)
    if np.result_type(np.float32, array) != np.float32 or array.ndim > 1 or \
            (array.ndim == 1 and array.shape[0] not in (1, width)):
        return None
    return array


def _chunk_program(steps: tuple[Step, ...], width: int):
    """The float32 steps after a leading ``ToFloat32`` as in-place operations on a chunk of
    (rows, ``width``) float32 values, or None where a step is not one of those below."""
    program = []
    for step in steps:
        kind = type(step)
        if kind in (MultiplyFloat32, AddFloat32, DivideFloat32):
            name = {MultiplyFloat32: "factor", AddFloat32: "term", DivideFloat32: "divisor"}[kind]
            constant = _float32_constant(getattr(step, name), width)
            if constant is None:
                return None
            operation = {MultiplyFloat32: np.multiply, AddFloat32: np.add,
                         DivideFloat32: np.divide}[kind]
            program.append(lambda v, rows, op=operation, c=constant: op(v, c, out=v))
        elif kind is ClampFloat32:
            low, high = np.float32(step.low), np.float32(step.high)
            program.append(lambda v, rows, low=low, high=high: np.minimum(
                np.maximum(v, low, out=v), high, out=v))
        elif kind is MinFloat32:
            high = np.float32(step.high)
            program.append(lambda v, rows, high=high: np.copyto(v, high, where=~(v <= high)))
        elif kind is MultiplyAddFloat32:
            factor = _float32_constant(step.factor, width)
            term = _float32_constant(step.term, width)
            if factor is None or term is None:
                return None
            if step.fused:
                program.append(lambda v, rows, f=factor, t=term: np.copyto(
                    v, fma_float32(v, f, t)))
            else:
                program.append(lambda v, rows, f=factor, t=term: np.add(
                    np.multiply(v, f, out=v), t, out=v))
        elif kind is FusedMultiplyAdd:
            a, b = _float32_constant(step.a, width), _float32_constant(step.b, width)
            if a is None or b is None:
                return None
            program.append(lambda v, rows, a=a, b=b: np.copyto(v, fma_float32(a, b, v)))
        else:
            return None
    return program


def chunked_float32_requantize(acc: np.ndarray, steps: tuple[Step, ...],
                               out_dtype) -> np.ndarray | None:
    """``requantize`` of a 2-D integer accumulator whose steps are ``ToFloat32``, float32
    steps with per-tensor or per-channel (last axis) constants, and a final
    ``RoundHalfEvenToInt32`` (alone, or with ``AddInt, ClampInt``): the same values, computed
    in chunks of rows, in place. None where the steps are of another form.

    Equal to the steps one by one: every step is elementwise with constants along the last
    axis, so rows may be taken in any grouping; each in-place operation is the float32
    operation ``_float32_result`` computes (NumPy's float32 loop for two float32 operands,
    ``_float32_constant`` checks that the constant keeps it float32); the fused FMAs call
    ``fma_float32``; the integer tail is ``round_offset_clamp`` or ``round_half_even_to_int32``
    then the cast to ``out_dtype`` (as ``requantize`` does: C's conversion of the int32 value).
    """
    out_dtype = np.dtype(out_dtype)
    if acc.ndim != 2 or acc.dtype.kind not in "iu" or out_dtype.kind not in "iu" or \
            len(steps) < 2 or type(steps[0]) is not ToFloat32:
        return None
    middle, tail = _fused_tail(tuple(steps[1:]), out_dtype)
    if tail is None:
        if type(middle[-1]) is not RoundHalfEvenToInt32:
            return None
        middle = middle[:-1]
    rows, width = acc.shape
    program = _chunk_program(middle, width)
    if program is None:
        return None
    if acc.dtype.itemsize > 4 and acc.size and not (
            -_EXACT_INT64_TO_FLOAT <= acc.min() and acc.max() <= _EXACT_INT64_TO_FLOAT):
        return None
    result = np.empty((rows, width), out_dtype)
    step_rows = max(1, CHUNK_ELEMENTS // max(width, 1))
    chunk = np.empty((min(step_rows, rows), width), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, rows, step_rows):
            stop = min(start + step_rows, rows)
            value = chunk[:stop - start]
            value[...] = acc[start:stop]      # int -> float32, one rounding (as ToFloat32)
            for operation in program:
                operation(value, (start, stop))
            if tail is not None:
                result[start:stop] = round_offset_clamp(value, *tail, out_dtype)
            else:
                result[start:stop] = round_half_even_to_int32(value).astype(out_dtype)
    return result


def trace_requantize(acc: np.ndarray, steps: tuple[Step, ...]) -> list[tuple[Step, np.ndarray]]:
    """Every intermediate value of ``requantize``: ``[(step, value after it), ...]``."""
    trace = []
    value = np.asarray(acc)
    if value.dtype.kind in "iu" and value.dtype != np.int64 and \
            not (steps and isinstance(steps[0], ToFloat32)):
        value = value.astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in steps:
            value = step.apply(value)
            trace.append((step, value))
    return trace
