"""Mistake models of quantized add / add_relu / mul / mul_relu.

The engine's kernel (``BinaryParams.choose_kernel``) is run path by path with one change: its
rounding step rounds another way, or its fused ReLU step is left out. Or the user's textbook
rescaling: the real values s * (q - z) in float64, summed (multiplied) and quantized once; or
each input requantized to the output scale first and the integers added.
"""

from __future__ import annotations

import numpy as np

from .diagnose_models import Knobs, mistake_model, swap_rounding
from .graph import PreparedNode
from .ops.elementwise import BinaryParams
from .qparams import QuantizedArray
from .rounding import round_half_away, round_half_even, round_toward_zero

KNOBS = ("rescale", "rounding", "fused_relu")
ROUNDING = {"half_even": round_half_even, "half_away": round_half_away,
            "truncation": round_toward_zero}


def _apply(steps, value):
    with np.errstate(over="ignore", invalid="ignore"):
        for step in steps:
            value = step.apply(value)
    return value


@mistake_model("add", "add_relu", "mul", "mul_relu", knobs=KNOBS)
def deviated_binary(prepared: PreparedNode, arguments: list, knobs: Knobs):
    p = prepared.params
    a, b = arguments[0], arguments[1]
    if not isinstance(p, BinaryParams) or not isinstance(a, QuantizedArray):
        return None                                      # a float add: nothing quantized
    if not knobs.fused_relu and not p.relu:
        return None
    relu = p.relu and knobs.fused_relu
    out_shape = np.broadcast_shapes(a.values.shape, b.values.shape)
    qa = np.broadcast_to(a.values, out_shape).astype(np.int64)
    qb = np.broadcast_to(b.values, out_shape).astype(np.int64)
    output = p.output_qparams
    dtype = output.dtype
    if knobs.rescale != "engine":
        rule = ROUNDING[knobs.rounding]
        real_a = float(p.a_qparams.scale) * (qa - int(p.a_qparams.zero_point))
        real_b = float(p.b_qparams.scale) * (qb - int(p.b_qparams.zero_point))
        if knobs.rescale == "float64":
            real = real_a + real_b if p.op == "add" else real_a * real_b
            if relu:
                real = np.maximum(real, 0.0)
            codes = rule(real / float(output.scale)) + int(output.zero_point)
        elif p.op == "add":                               # requantize_each
            codes = (rule(real_a / float(output.scale)) + rule(real_b / float(output.scale))
                     + int(output.zero_point))
            if relu:
                codes = np.maximum(codes, int(output.zero_point))
        else:
            return None
        codes = np.clip(codes, dtype.qmin, dtype.qmax)
        return QuantizedArray(codes.astype(dtype.numpy_dtype), output)
    kernel = p.choose_kernel(a.values.shape, b.values.shape)
    masks, _ = kernel.split(out_shape, a.values, b.values)
    out = np.zeros(out_shape, np.int64)
    for path, where in zip(kernel.paths, masks):
        if not where.any():
            continue
        steps = [step for step in path.output_steps if relu or step.role != "relu"]
        if knobs.rounding != "half_even":
            steps = swap_rounding(steps, knobs.rounding)
        combined = path.combine.apply(_apply(path.a_steps, qa[where]),
                                      _apply(path.b_steps, qb[where]))
        out[where] = np.asarray(_apply(steps, combined), np.int64)
    return QuantizedArray(np.clip(out, dtype.qmin, dtype.qmax).astype(dtype.numpy_dtype), output)
