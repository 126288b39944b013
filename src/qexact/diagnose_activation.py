"""Mistake models of quantized activations (hardswish, hardsigmoid, sigmoid, tanh, leaky_relu,
elu, celu, threshold): the textbook formula where the engine has its own path.

The engine computes an activation through its kernel (a vectorized float32 path with its own
operation order and its own exp, or a table over the 256 codes). The user's version: dequantize
``d = s_x (q - z_x)``, the textbook formula ``f(d)`` in float64 (or float32, each operation
rounded to float32), and quantize ``q = round_half_even(f(d) / s_out) + z_out``, clamped; or the
float64 formula quantized with another rounding (half away from zero, truncation).

Measured: the textbook formula almost always equals the engine. On every activation layer of the
CNN test models (mobilenet_v3, detector; fbgemm, qnnpack, x86, onednn) not one of the 256 codes
differs; over 300 random (input, output) qparams per function and engine, 4 of 691,200 (qparams,
code) pairs differ in float64 (hardswish, sigmoid, leaky_relu on fbgemm/qnnpack/onednn) and none
of 460,800 in float32 (fbgemm, qnnpack). The differences are ties of y / s_out.
"""

from __future__ import annotations

import numpy as np

from .diagnose_models import Knobs, mistake_model
from .graph import PreparedNode
from .ops.activations import ActivationParams
from .qparams import QuantizedArray
from .rounding import round_half_away, round_half_even, round_toward_zero

ROUNDING = {"half_even": round_half_even, "half_away": round_half_away,
            "truncation": round_toward_zero}


def _formulas(p: ActivationParams, dtype):
    one, three, six = dtype(1), dtype(3), dtype(6)

    def relu6(v):
        return np.minimum(np.maximum(v, dtype(0)), six)

    return {
        "hardswish": lambda v: v * relu6(v + three) / six,
        "hardsigmoid": lambda v: relu6(v + three) / six,
        "sigmoid": lambda v: one / (one + np.exp(-v)),
        "tanh": np.tanh,
        "leaky_relu": lambda v: np.where(v > 0, v, v * dtype(p.slope)),
        "elu": lambda v: np.where(v > 0, v * dtype(p.scale),
                                  (np.exp(v * dtype(p.input_scale)) - one)
                                  * dtype(p.alpha * p.scale)),
        "celu": lambda v: np.where(v > 0, v * dtype(p.scale),
                                   (np.exp(v * dtype(p.input_scale)) - one)
                                   * dtype(p.alpha * p.scale)),
        "threshold": lambda v: np.where(v <= dtype(p.threshold), dtype(p.value), v),
    }


@mistake_model("activation", knobs=("formula", "rounding"))
def textbook_activation(prepared: PreparedNode, arguments: list, knobs: Knobs):
    p = prepared.params
    x = arguments[0]
    if not isinstance(p, ActivationParams) or not isinstance(x, QuantizedArray):
        return None
    dtype = np.float32 if knobs.formula == "float32" else np.float64
    formula = _formulas(p, dtype).get(p.function)
    if formula is None:
        return None
    centered = x.values.astype(np.int64) - int(p.input_qparams.zero_point)
    real = dtype(p.input_qparams.scale) * centered.astype(dtype)
    with np.errstate(over="ignore"):
        result = formula(real).astype(np.float64)
    output = p.output_qparams
    codes = ROUNDING[knobs.rounding](result / float(output.scale)) + int(output.zero_point)
    codes = np.clip(codes, output.dtype.qmin, output.dtype.qmax)
    return QuantizedArray(codes.astype(output.dtype.numpy_dtype), output)
