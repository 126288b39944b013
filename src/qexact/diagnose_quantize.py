"""Mistake models of the input quantization (``quantize`` nodes): the float input quantized by
division (``round(f32(x / s) + z)``) or with the zero point added after rounding, where PyTorch
computes ``round(fmaf(x, f32(1 / s), z))`` (``deviated_quantize``, shared with Linear's model-level
diagnosis).
"""

from __future__ import annotations

import numpy as np

from .diagnose_models import Knobs, deviated_quantize, mistake_model
from .graph import PreparedNode


@mistake_model("quantize", knobs=("quantize_divide", "zero_point_after_rounding"))
def deviated_input_quantization(prepared: PreparedNode, arguments: list, knobs: Knobs):
    qparams = prepared.params
    x = np.asarray(arguments[0])
    if x.dtype != np.float32 or getattr(qparams, "is_per_channel", True):
        return None
    return deviated_quantize(x, qparams, knobs)
