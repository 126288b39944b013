"""QNNPACK's fixed-point quantized add (``pytorch_qnnp_create_add_nc_q8``), as data and a kernel.

Source: pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp (``qnnpack_add``: quint8, equal
shapes, engine qnnpack), aten/src/ATen/native/quantized/cpu/qnnpack/src/add.c and
qnnpack/requantization.h (``pytorch_qnnp_compute_add_quantization_params``). semantics.md §5 row 2.

    a_os = f32(f32(s_a) / f32(s_o)),  b_os likewise;  both must lie in [2^-14, 2^8)
    shift = 21 - exponent(max(a_os, b_os))               (exponent: max = m 2^e, 1 <= m < 2)
    m_a = lrintf(a_os 2^shift),  m_b likewise
    acc = q_a m_a + q_b m_b - (m_a z_a + m_b z_b)        (int32)
    q = acc >> shift, rounded half AWAY from zero        (remainder > mask >> 1, with -1 for acc < 0)
    y = clamp(q + z_o, relu ? z_o : 0, 255)              (add_relu with z_o = 255 is an error)

The kernel runs on tiles of 4096 elements in memory order (src/operator-run.c
``compute_add_contiguous``); ``q8vadd/sse2.c`` takes a tile of 8 or more elements in 8-lane SIMD
steps (the last step overlapping the previous one) and a shorter tile in scalar code. The two
differ only when ``shift >= 32`` (ratios below 2^-10, which PyTorch accepts down to 2^-14; the
source asserts ``shift < 32``, compiled out): the mask ``(1 << shift) - 1`` is computed with x86's
count masked to 5 bits, ``psrad`` by 32 or more fills with the sign bit, and the scalar ``>>``
masks its count too (measured: torch gives 255 where the shift is taken as 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..rounding import f32, wrap_int32


@dataclass(frozen=True)
class QnnpackAddParams:
    """The integer constants of QNNPACK's add: multipliers, shift, folded zero point, range."""

    a_multiplier: int
    b_multiplier: int
    shift: int
    zero_point_product: int
    output_zero_point: int
    output_min: int
    output_max: int


def prepare_qnnpack_add(a_scale: float, a_zero_point: int, b_scale: float, b_zero_point: int,
                        output_scale: float, output_zero_point: int, relu: bool) -> QnnpackAddParams:
    """The constants ``pytorch_qnnp_create_add_nc_q8`` derives; raises where PyTorch raises."""
    a_ratio = float(f32(f32(a_scale) / f32(output_scale)))
    b_ratio = float(f32(f32(b_scale) / f32(output_scale)))
    for name, ratio in (("A", a_ratio), ("B", b_ratio)):
        if not 2.0 ** -14 <= ratio < 2.0 ** 8:
            raise UnsupportedError(
                f"QNNPACK add: {name}-to-output scale ratio {ratio!r} outside [2**-14, 2**8) "
                "(PyTorch raises 'failed to create QNNPACK Add operator')")
    low = int(output_zero_point) if relu else 0
    if low >= 255:
        raise UnsupportedError("QNNPACK add_relu with output zero point 255: "
                               "PyTorch raises (output range min must be below range max)")
    exponent = math.frexp(max(a_ratio, b_ratio))[1] - 1
    shift = 21 - exponent
    a_multiplier = int(np.rint(a_ratio * 2.0 ** shift))
    b_multiplier = int(np.rint(b_ratio * 2.0 ** shift))
    return QnnpackAddParams(a_multiplier, b_multiplier, shift,
                            a_multiplier * int(a_zero_point) + b_multiplier * int(b_zero_point),
                            int(output_zero_point), low, 255)


ADD_TILE = 4096
"""Elements per ``compute_add_contiguous`` call (src/operator-run.c)."""
SIMD_MIN = 8
"""``q8vadd/sse2.c``: a call of at least 8 elements runs the SIMD body, a shorter one scalar code."""


def _remainder_mask(shift: int) -> int:
    """``(UINT32_C(1) << shift) - 1`` as x86 computes it: the count is taken modulo 32."""
    return (1 << (shift & 31)) - 1


def _shift_right(acc: np.ndarray, shift: int, simd) -> np.ndarray:
    """``psrad`` (SIMD: a count of 32 or more fills with the sign) or the scalar ``sar`` (count
    modulo 32) of int32 ``acc``."""
    if shift < 32:
        return acc >> shift
    return np.where(simd, np.where(acc < 0, -1, 0), acc >> (shift & 31))


def simd_elements(count: int) -> np.ndarray:
    """Per element in memory order, whether its tile runs the SIMD body (tiles of ``ADD_TILE``;
    only the last can be shorter)."""
    mask = np.ones(count, bool)
    last = count % ADD_TILE
    if 0 < last < SIMD_MIN:
        mask[count - last:] = False
    return mask


def simd_mask_like(a: np.ndarray) -> np.ndarray:
    """``simd_elements`` laid over ``a``'s memory order (PyTorch runs the add on ``a`` made
    contiguous in its suggested memory format, and ``b`` in the same)."""
    mask = np.empty_like(a, dtype=bool)  # a's layout (order "K")
    flat = mask.ravel(order="K")
    if not np.shares_memory(flat, mask):  # a was not dense: PyTorch makes it contiguous
        return simd_elements(a.size).reshape(a.shape)
    flat[:] = simd_elements(a.size)
    return mask


def qnnpack_add(a: np.ndarray, b: np.ndarray, p: QnnpackAddParams) -> np.ndarray:
    """uint8 ``a + b`` through QNNPACK's fixed point (ties away from zero); returns uint8 of
    ``a``'s shape. The SIMD/scalar split follows ``a``'s memory order (``simd_mask_like``)."""
    acc = wrap_int32(a.astype(np.int64) * p.a_multiplier + b.astype(np.int64) * p.b_multiplier
                     - p.zero_point_product)
    mask = _remainder_mask(p.shift)
    simd = simd_mask_like(a)
    remainder = (acc & mask) - (acc < 0)
    shifted = _shift_right(acc, p.shift, simd) + (remainder > (mask >> 1))
    out = np.where(simd, shifted + p.output_zero_point, wrap_int32(shifted + p.output_zero_point))
    return np.clip(out, p.output_min, p.output_max).astype(np.uint8)


def qnnpack_add_stages(a: int, b: int, p: QnnpackAddParams,
                       simd: bool = True) -> list[tuple[str, str, dict, int]]:
    """(name, formula, values, result) of each step for one element (for explain); ``simd``: the
    element's tile runs the SIMD body (``simd_elements``)."""
    acc = int(wrap_int32(int(a) * p.a_multiplier + int(b) * p.b_multiplier
                         - p.zero_point_product))
    mask = _remainder_mask(p.shift)
    remainder = (acc & mask) - (acc < 0)
    shifted = int(_shift_right(np.int64(acc), p.shift, simd)) + (remainder > (mask >> 1))
    total = shifted + p.output_zero_point
    out = min(max(total if simd else int(wrap_int32(total)), p.output_min), p.output_max)
    return [
        ("qnnpack add: accumulate", "acc = q_a m_a + q_b m_b - (m_a z_a + m_b z_b) (int32)",
         {"q_a": int(a), "m_a": p.a_multiplier, "q_b": int(b), "m_b": p.b_multiplier,
          "m_a z_a + m_b z_b": p.zero_point_product}, acc),
        ("qnnpack add: shift", "q = acc >> shift, rounded half away from zero" + (
            "" if p.shift < 32 else " (shift >= 32: " + ("psrad gives the sign" if simd else
                                                         "sar takes the count modulo 32") + ")"),
         {"acc": acc, "shift": p.shift}, shifted),
        ("qnnpack add: zero point and clamp", "y = clamp(q + z_o, lo, 255)",
         {"q": shifted, "z_o": p.output_zero_point, "lo": p.output_min}, out),
    ]


KERNELS: dict = {}
"""This module's entries of the kernel table (``Engine.kernels``)."""
