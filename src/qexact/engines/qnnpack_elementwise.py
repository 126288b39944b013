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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..rounding import f32


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


def qnnpack_add(a: np.ndarray, b: np.ndarray, p: QnnpackAddParams) -> np.ndarray:
    """uint8 ``a + b`` through QNNPACK's fixed point (ties away from zero); returns uint8."""
    acc = a.astype(np.int64) * p.a_multiplier + b.astype(np.int64) * p.b_multiplier \
        - p.zero_point_product
    mask = (1 << p.shift) - 1
    remainder = (acc & mask) - (acc < 0)
    shifted = (acc >> p.shift) + (remainder > (mask >> 1))
    return np.clip(shifted + p.output_zero_point, p.output_min, p.output_max).astype(np.uint8)


def qnnpack_add_stages(a: int, b: int, p: QnnpackAddParams) -> list[tuple[str, str, dict, int]]:
    """(name, formula, values, result) of each step for one element (for explain)."""
    acc = int(a) * p.a_multiplier + int(b) * p.b_multiplier - p.zero_point_product
    mask = (1 << p.shift) - 1
    remainder = (acc & mask) - (acc < 0)
    shifted = (acc >> p.shift) + (remainder > (mask >> 1))
    out = min(max(shifted + p.output_zero_point, p.output_min), p.output_max)
    return [
        ("qnnpack add: accumulate", "acc = q_a m_a + q_b m_b - (m_a z_a + m_b z_b) (int32)",
         {"q_a": int(a), "m_a": p.a_multiplier, "q_b": int(b), "m_b": p.b_multiplier,
          "m_a z_a + m_b z_b": p.zero_point_product}, acc),
        ("qnnpack add: shift", "q = acc >> shift, rounded half away from zero",
         {"acc": acc, "shift": p.shift}, shifted),
        ("qnnpack add: zero point and clamp", "y = clamp(q + z_o, lo, 255)",
         {"q": shifted, "z_o": p.output_zero_point, "lo": p.output_min}, out),
    ]


def qnnpack_hardswish_table(input_scale: float, input_zero_point: int, output_scale: float,
                            output_zero_point: int) -> np.ndarray:
    """QNNPACK's 256-entry hardswish table (qnnpack/src/hardswish.c; PyTorch qhardswish.cpp
    ``qnnpack_hardswish``, quint8 on the qnnpack engine):

        x = f32(f32(s) f32(i - z));  y = f32(f32(x min(max(f32(x + 3), 0), 6)) / 6)
        t = clamp(f32(f32(f32(1 / f32(s_o)) y) + z_o), 0, 255);  table[i] = lrintf(t)

    (an FMA for ``inv y + z_o`` gives the same table on 76,800 measured entries; not discriminated)
    """
    codes = np.arange(256, dtype=np.int64)
    x = f32(f32(input_scale) * f32(codes - int(input_zero_point)))
    clipped = np.minimum(np.maximum(f32(x + np.float32(3)), np.float32(0)), np.float32(6))
    y = f32(f32(x * clipped) / np.float32(6))
    inv = f32(np.float32(1) / f32(output_scale))
    scaled = np.clip(f32(f32(inv * y) + f32(output_zero_point)), 0, 255)
    return np.rint(scaled.astype(np.float64)).astype(np.uint8)
