"""Why each requantization ``Step`` is monotone non-decreasing in its input, and where.

A step is accepted when its own argument holds for every channel (a constant condition, e.g. a
positive factor) and its *domain* condition holds at both ends of the channel's range (the
value entering the step at ``acc_low`` and at ``acc_high``). Since the steps before it are
monotone, every value entering it lies between those two, and each domain here is an interval:
the check at the ends covers the whole range (by induction over the pipeline).

``TABLE`` (step type -> the argument, as the proof text and the module docstring state it).
"""

from __future__ import annotations

import numpy as np

from .. import requantize as rq

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

TABLE = {
    rq.AddInt32: "v + term in 64 bits equals the int32 add while no end wraps: monotone",
    rq.ToFloat32: "int -> float32 rounds to nearest: monotone",
    rq.FusedMultiplyAdd: "RN(v + a*b): v plus a constant, rounded once: monotone (any a, b)",
    rq.AddFloat32: "RN(v + term): monotone",
    rq.MultiplyFloat32: "RN(v * f), f >= 0: monotone",
    rq.DivideFloat32: "RN(v / d), d > 0: monotone",
    rq.MultiplyAddFloat32: "RN(v*f + t) or RN(RN(v*f) + t), f >= 0: monotone",
    rq.MultiplyFloat64: "RN32(RN64(v * f)), f >= 0: monotone",
    rq.ScaleToFloat32: "RN32(RN64(v * f)), f >= 0: monotone",
    rq.ClampFloat32: "min/max with constants: monotone",
    rq.MinFloat32: "min with a constant (NaN excluded: finite ends): monotone",
    rq.RoundHalfEvenToInt32: "rint (ties to even) is monotone while the result fits int32",
    rq.RoundHalfEvenToInt64: "rint, then a clip to +-2**62: monotone",
    rq.RoundHalfEvenLrint: "rint is monotone while the result fits int64",
    rq.AddInt: "v + constant: monotone",
    rq.ClampInt: "clamp to constants: monotone",
    rq.MultiplyInt: "v * f, f >= 0 (int64, exact): monotone",
    rq.RoundingShiftRightInt32: "v / 2**s rounded half away from zero (s < 32, v in int32): "
                                "monotone",
}

OPERAND_STEPS = (rq.AddResidualFloat32, rq.AddOperandFloat32, rq.MultiplyOperandFloat32)

_FACTOR = {rq.MultiplyFloat32: "factor", rq.MultiplyAddFloat32: "factor",
           rq.MultiplyFloat64: "factor", rq.ScaleToFloat32: "factor"}


def constant_refusal(step: rq.Step, channels: int) -> tuple[np.ndarray, str]:
    """(channels where the step's constant condition fails (C,) bool, why)."""
    bad = np.zeros(channels, bool)
    kind = type(step)
    if isinstance(step, OPERAND_STEPS):
        return ~bad, (f"step {step.label!r} ({kind.__name__}) reads a second run-time tensor: "
                      f"the output is not a function of the accumulator alone")
    if kind not in TABLE:
        return ~bad, (f"step {step.label!r} ({kind.__name__}) has no monotonicity argument "
                      f"here")
    if kind in _FACTOR:
        factor = np.broadcast_to(np.asarray(getattr(step, _FACTOR[kind]), np.float64), (channels,))
        bad = ~(factor >= 0)
        return bad, f"step {step.label!r} multiplies by a negative (or NaN) factor"
    if kind is rq.DivideFloat32:
        divisor = np.broadcast_to(np.asarray(step.divisor, np.float64), (channels,))
        return ~(divisor > 0), f"step {step.label!r} divides by a non-positive divisor"
    if kind is rq.MultiplyInt:
        return np.full(channels, step.factor < 0), f"step {step.label!r} multiplies by < 0"
    if kind is rq.RoundingShiftRightInt32 and step.shift >= 32:
        return ~bad, f"step {step.label!r} shifts by {step.shift} >= 32 (x86 count masking)"
    if kind is rq.ClampFloat32 and not step.low <= step.high:
        return ~bad, f"step {step.label!r} clamps to an empty interval"
    return bad, ""


def domain_refusal(step: rq.Step, before: np.ndarray, after: np.ndarray
                   ) -> tuple[np.ndarray, str]:
    """(channels where the value entering the step at an end of the range is outside the
    step's monotone domain, why). ``before``/``after``: (2, C) values at acc_low, acc_high."""
    kind = type(step)
    channels = before.shape[-1]
    bad = np.zeros(channels, bool)
    if kind is rq.AddInt32:
        wide = np.asarray(before, np.int64) + np.asarray(step.term, np.int64)
        return ((wide < INT32_MIN) | (wide > INT32_MAX)).any(axis=0), \
            f"step {step.label!r}: acc + bias wraps int32 at an end of the range"
    if kind is rq.RoundHalfEvenToInt32:
        rounded = np.rint(np.asarray(before, np.float64))
        return (~((rounded >= INT32_MIN) & (rounded <= INT32_MAX))).any(axis=0), \
            f"step {step.label!r}: the value leaves int32 (cvtps2dq gives INT32_MIN)"
    if kind is rq.RoundHalfEvenLrint:
        wide = np.asarray(before, np.float64)
        return (~((wide >= -2.0 ** 63) & (wide < 2.0 ** 63))).any(axis=0), \
            f"step {step.label!r}: the value leaves int64"
    if kind is rq.RoundingShiftRightInt32:
        wide = np.asarray(before)
        return ((wide < INT32_MIN) | (wide > INT32_MAX)).any(axis=0), \
            f"step {step.label!r}: the value leaves int32"
    values = np.asarray(after)
    if values.dtype.kind == "f":
        return (~np.isfinite(values)).any(axis=0), \
            f"step {step.label!r}: a float value is not finite at an end of the range"
    return bad, ""
