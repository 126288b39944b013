"""QNNPACK's 256-entry lookup-table activations (quint8 on the qnnpack engine), as data.

Source: pytorch aten/src/ATen/native/quantized/cpu/qnnpack/src/hardswish.c, sigmoid.c, tanh.c,
reached from qhardswish.cpp, qsigmoid.cpp, qtanh.cpp: each builds a table in float once per call
and maps every byte through it.
"""

from __future__ import annotations

import numpy as np

from ..rounding import f32

KERNELS: dict = {}
"""This module's entries of the qnnpack engine's kernel table (``Engine.kernels``)."""


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
