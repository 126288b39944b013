"""Float32 arithmetic and integer rounding, each rule named.

The kernels qexact reproduces compute in IEEE float32 with round-to-nearest-even after every
operation, sometimes fused (FMA), and convert floats to integers with instructions whose tie rule
and out-of-range behaviour differ. Every such step is one function here; ops never call a generic
``round``.

NumPy traps, written down once:
- ``np.rint``/``np.round`` round half to even; Python's ``round`` on floats does too.
- float32 op float64 promotes to float64: every float32 product is written ``f32(a * b)`` with
  both operands float32 already, so the result is the float32 rounding of the exact product.
- int32 arithmetic wraps silently: integer pipelines run in int64 and wrap explicitly.
- ``>>`` on signed NumPy integers is an arithmetic (sign-propagating) shift.
"""

from __future__ import annotations

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
INT16_MIN = -(1 << 15)
INT16_MAX = (1 << 15) - 1


def f32(value) -> np.ndarray:
    """Round ``value`` (exact, or float64) to float32, to nearest, ties to even (``(float)x`` in C);
    beyond the float32 range the result is an infinity, as in C."""
    with np.errstate(over="ignore"):
        return np.asarray(value, dtype=np.float64).astype(np.float32)


def fma_float32(a, b, c) -> np.ndarray:
    """``fmaf(a, b, c)``: the float32 nearest to the exact ``a*b + c``, one rounding.

    Emulated exactly in float64: ``a*b`` of two float32 values needs 48 bits, so the float64
    product is exact; the sum's rounding error is recovered with TwoSum and folded in by rounding
    the float64 sum to odd, which makes the final float32 rounding correct (53 >= 24 + 2 bits).
    """
    a64 = np.asarray(a, dtype=np.float32).astype(np.float64)
    b64 = np.asarray(b, dtype=np.float32).astype(np.float64)
    c64 = np.asarray(c, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # infinities and NaN pass through
        product = a64 * b64
        total = product + c64
        # TwoSum (Knuth): total + error == product + c exactly.
        c_part = total - product
        error = (product - (total - c_part)) + (c64 - c_part)
        inexact = np.isfinite(total) & (error != 0)
        lowest_bit_even = (total.view(np.int64) & 1) == 0
        toward = np.where(error > 0, np.inf, -np.inf)
        rounded_to_odd = np.where(inexact & lowest_bit_even, np.nextafter(total, toward), total)
        return rounded_to_odd.astype(np.float32)


def round_half_even(value) -> np.ndarray:
    """Nearest integer, ties to even (``nearbyint``/``lrintf`` under the default rounding mode).

    Returns floats of the input's dtype; NaN and infinities pass through.
    """
    return np.rint(value)


def round_half_away(value) -> np.ndarray:
    """Nearest integer, ties away from zero (C ``round``; TFLite's reference rounding)."""
    value = np.asarray(value)
    if value.dtype.kind != "f":
        value = value.astype(np.float64)
    magnitude = np.abs(value)
    whole = np.floor(magnitude)
    rounded = whole + (magnitude - whole >= 0.5)  # the fraction is exact; no rounding in the add
    return np.copysign(rounded, value).astype(value.dtype)


def round_toward_zero(value) -> np.ndarray:
    """Drop the fraction (a C cast ``(int)x``)."""
    return np.trunc(value)


def round_half_even_to_int32(value) -> np.ndarray:
    """x86 ``cvtps2dq``: float32 to int32 with ties to even; NaN or out of range gives ``INT32_MIN``.

    The "integer indefinite" result ``0x80000000`` is what every SIMD requantization in FBGEMM
    and QNNPACK gets for a float whose rounded value does not fit in int32. Returns int64.
    """
    value = np.asarray(value, dtype=np.float32)
    rounded = np.rint(value.astype(np.float64))
    fits = (rounded >= INT32_MIN) & (rounded <= INT32_MAX)  # False for NaN
    return np.where(fits, rounded, INT32_MIN).astype(np.int64)


def wrap_int32(value) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 (what a 32-bit ``add`` does), as int64."""
    value = np.asarray(value, dtype=np.int64)
    return ((value - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN


def saturate(value, low: int, high: int) -> np.ndarray:
    """Clamp integers into ``[low, high]``."""
    return np.clip(value, low, high)


def saturate_int16(value) -> np.ndarray:
    """Clamp to int16, as ``vpmaddubsw``/``packssdw`` saturate."""
    return np.clip(value, INT16_MIN, INT16_MAX)
