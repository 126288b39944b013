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
    product ``p`` is exact, and ``t = RN64(p + c)`` is one rounding of the exact sum ``s``.
    ``RN32(t) == RN32(s)`` unless ``t`` is a float32 midpoint: rounding to nearest is monotone
    and every float32 midpoint ``m`` of the normal range (and the overflow threshold
    ``2**128 - 2**103``) is a double, so ``s < m`` gives ``t <= m``, and ``t != m`` then gives
    ``t < m`` (likewise above); ``s`` and ``t`` lie between the same two midpoints, and round to
    the same float32. A midpoint has its 29 low mantissa bits equal to ``1 << 28``. Those
    elements, and the rare ``|t| < 2**-126`` (float32 subnormal results, whose midpoints have
    another bit pattern), take ``fma_float32_round_to_odd``; NaN and infinities pass through
    ``RN32(t)`` as there.
    """
    a64 = np.asarray(a, dtype=np.float32).astype(np.float64)
    b64 = np.asarray(b, dtype=np.float32).astype(np.float64)
    c64 = np.asarray(c, dtype=np.float32).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # infinities and NaN pass through
        total = np.asarray(a64 * b64)
        if total.shape == np.broadcast_shapes(total.shape, c64.shape):
            total += c64                                       # the product is a temporary
        else:
            total = np.asarray(total + c64)
        result = total.astype(np.float32)
        bits = total.view(np.int64)
        low = bits & _LOW_29_BITS
        suspect = low == _FLOAT32_MIDPOINT_BITS
        suspect |= (bits & _DOUBLE_EXPONENT_BITS) < _DOUBLE_EXPONENT_OF_2_TO_MINUS_126
        if suspect.any():
            shape = result.shape
            where = suspect
            result[where] = fma_float32_round_to_odd(
                np.broadcast_to(np.asarray(a, np.float32), shape)[where],
                np.broadcast_to(np.asarray(b, np.float32), shape)[where],
                np.broadcast_to(np.asarray(c, np.float32), shape)[where])
        return result


_LOW_29_BITS = (1 << 29) - 1
_FLOAT32_MIDPOINT_BITS = 1 << 28
_DOUBLE_EXPONENT_BITS = 0x7FF << 52
_DOUBLE_EXPONENT_OF_2_TO_MINUS_126 = (1023 - 126) << 52


def fma_float32_round_to_odd(a, b, c) -> np.ndarray:
    """``fmaf(a, b, c)`` by rounding the float64 sum to odd (the definition ``fma_float32``
    falls back to): ``a*b`` of two float32 values needs 48 bits, so the float64 product is
    exact; the sum's rounding error is recovered with TwoSum and folded in by rounding the
    float64 sum to odd, which makes the final float32 rounding correct (53 >= 24 + 2 bits).
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
    Computed in float32: the integer nearest a float32 is a float32 (below 2**23 every integer
    is one; above, the value is an integer already), so ``rint`` in float32 equals ``rint`` in
    double; ``-2**31`` and ``2**31`` are float32s, and an integer ``r`` fits iff
    ``-2**31 <= r < 2**31``.
    """
    value = np.asarray(value, dtype=np.float32)
    rounded = np.rint(value)
    fits = rounded >= np.float32(INT32_MIN)
    fits &= rounded < np.float32(2.0 ** 31)                  # False for NaN
    with np.errstate(invalid="ignore"):                       # NaN/inf cast, replaced below
        result = rounded.astype(np.int64)
    if not fits.all():
        result[~fits] = INT32_MIN
    return result


def wrap_int32(value) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 (what a 32-bit ``add`` does), as int64.

    NumPy's int64 -> int32 cast is C's conversion, which GCC, Clang and MSVC define as
    reduction modulo 2**32 (GCC manual, "Integers implementation"): the wrap itself."""
    return np.asarray(value, dtype=np.int64).astype(np.int32).astype(np.int64)


def saturate(value, low: int, high: int) -> np.ndarray:
    """Clamp integers into ``[low, high]``."""
    return np.clip(value, low, high)


def saturate_int16(value) -> np.ndarray:
    """Clamp to int16, as ``vpmaddubsw``/``packssdw`` saturate."""
    return np.clip(value, INT16_MIN, INT16_MAX)
