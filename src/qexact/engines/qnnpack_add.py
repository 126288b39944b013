"""QNNPACK's fixed-point quantized add (``pytorch_qnnp_create_add_nc_q8``): its constants, its
refusals and its arithmetic as ``Step``s, the ``"binary"`` family of the qnnpack engine's table.

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
from ..requantize import AddInt, AddInt32, ClampInt, MultiplyInt, RoundingShiftRightInt32
from ..rounding import f32
from . import aten_elementwise
from .aten import like_memory_format
from .aten_elementwise import BinaryKernel, BinaryPath, Combine

SOURCE = ("pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp qnnpack_add, "
          "qnnpack/src/add.c, qnnpack/src/q8vadd/sse2.c")


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


def add_paths(p: QnnpackAddParams) -> tuple[BinaryPath, BinaryPath]:
    """``q8vadd/sse2.c`` as steps: ``q_a m_a + q_b m_b``, minus the folded zero points (int32),
    the rounding shift, ``+ z_o``, the clamp. The SIMD body packs with saturation (its add of
    ``z_o`` cannot wrap); the scalar code adds ``z_o`` in int32. They differ only for
    ``shift >= 32`` (``RoundingShiftRightInt32``)."""
    a_steps = (MultiplyInt("q_a m_a", factor=p.a_multiplier),)
    b_steps = (MultiplyInt("q_b m_b", factor=p.b_multiplier),)
    total = Combine("integer sum", "integer sum")
    zero_points = AddInt32("minus the folded zero points m_a z_a + m_b z_b (int32)",
                           term=-p.zero_point_product)
    output_range = ClampInt("output range (add_relu: from z_o)", role="output_clamp",
                            low=p.output_min, high=p.output_max)
    simd = BinaryPath(
        f"SIMD body (q8vadd sse2, a tile of {SIMD_MIN} or more elements)", a_steps, b_steps,
        total, (zero_points,
                RoundingShiftRightInt32("shift right, rounded half away from zero (psrad)",
                                        role="round", shift=p.shift),
                AddInt("output zero point (saturating packs)", term=p.output_zero_point),
                output_range))
    scalar = BinaryPath(
        f"scalar code (q8vadd sse2, a tile of fewer than {SIMD_MIN} elements)", a_steps, b_steps,
        total, (zero_points,
                RoundingShiftRightInt32("shift right, rounded half away from zero (sar)",
                                        role="round", shift=p.shift, count_modulo_32=True),
                AddInt32("output zero point (int32 add)", term=p.output_zero_point),
                output_range))
    return simd, scalar


@dataclass(frozen=True)
class TilePlacement:
    """``compute_add_contiguous`` over ``a``'s memory order (PyTorch makes both inputs contiguous
    in ``a.suggest_memory_format()``): tiles of ``ADD_TILE`` elements, the SIMD body for a tile of
    ``SIMD_MIN`` or more, scalar code for a shorter one (``simd_mask_like``); the output in
    ``a``'s memory format."""

    def split(self, out_shape, a, b):
        simd = simd_mask_like(a)
        return (simd, ~simd), self.layout(out_shape, a, b)

    def layout(self, out_shape, a, b):
        return lambda values: like_memory_format(values, a)


def add_kernel(p: QnnpackAddParams) -> BinaryKernel:
    """QNNPACK's add with the constants ``p`` (``prepare_qnnpack_add``)."""
    return BinaryKernel("QNNPACK add (q8vadd sse2)", SOURCE, add_paths(p), TilePlacement())


def choose_binary(engine, op: str, relu: bool, a_qparams, b_qparams, output_qparams, a_shape,
                  b_shape, num_threads: int) -> BinaryKernel:
    """pytorch BinaryOps.cpp ``qadd``: on the qnnpack engine, quint8 add/add_relu of equal shapes
    run QNNPACK's add (refused where PyTorch raises: ``prepare_qnnpack_add``); everything else
    ATen's kernels (``aten_elementwise.choose_binary``)."""
    if op == "add" and a_qparams.dtype.name == "quint8" and tuple(a_shape) == tuple(b_shape):
        return add_kernel(prepare_qnnpack_add(
            a_qparams.scale, a_qparams.zero_point, b_qparams.scale, b_qparams.zero_point,
            output_qparams.scale, output_qparams.zero_point, relu))
    return aten_elementwise.choose_binary(engine, op, relu, a_qparams, b_qparams, output_qparams,
                                          a_shape, b_shape, num_threads)


KERNELS: dict = {"binary": choose_binary}
"""This module's entries of the qnnpack engine's kernel table (``Engine.kernels``)."""
