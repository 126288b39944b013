"""Quantized tensor-scalar ops: add_scalar, mul_scalar (and their _relu forms).

``torch.ops.quantized.add_scalar(x, c)`` / ``mul_scalar(x, c)`` (QFunctional.add_scalar /
mul_scalar; PyTorch observes nothing for them): the OUTPUT QPARAMS are derived from the input's,
not given. Source: pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp (``_add_scalar_out``),
aten/src/ATen/native/quantized/cpu/Mul.cpp (``_mul_scalar_out``), QuantizedOpKernels.cpp
(``qadd_scalar_kernel``). Identical on every engine and ATen capability (the SIMD and scalar
lambdas of ``qadd_scalar_kernel`` both use ``requantize_from_int``, measured here on AVX2).

add_scalar, with ``c_q = nearbyint(c / s)`` (double) and ``k = z - c_q``:

    qmin <= k <= qmax:  s' = s, z' = k, integers copied                (relu: max(q, z'))
    k < qmin:           s' = (qmax - k) / (qmax - qmin) * s, z' = qmin  (double)
    k > qmax:           s' = (k - qmin) / (qmax - qmin) * s, z' = qmax
    requantized cases:  m = f32(f32(s) f32(1 / f32(s'))),  q' = clamp(rne(f32(f32(q - z + c_q) m)) + z')
                        (relu: max(q', z'))

mul_scalar (integers only):

    c > 0:  s' = c s, z' = z, q' = q                       (relu: max(q, z))
    c = 0:  s' = 1.0, z' = 0, q' = 0
    c < 0:  s' = |c| s, z' = qmax - (z - qmin), q' = qmax + qmin - q   (relu: max(q', z'))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QuantParamError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..rounding import f32
from ..stages import Stage
from ._registry import graph_op
from .quantize import require_quantized


@dataclass(frozen=True)
class ScalarParams:
    """A prepared add_scalar / mul_scalar: ``op`` ("add_scalar" or "mul_scalar"), ``relu``,
    ``scalar`` (the Python float c), ``input_qparams``, ``output_qparams`` (derived, as PyTorch
    sets them), ``scalar_quantized`` (add: c_q), ``requantize`` (add: True when the integers are
    requantized with ``multiplier``)."""

    op: str
    relu: bool
    scalar: float
    input_qparams: QParams
    output_qparams: QParams
    scalar_quantized: int = 0
    requantize: bool = False

    @property
    def multiplier(self) -> np.float32:
        """add_scalar requantization: ``f32(f32(s) f32(1 / f32(s')))``."""
        inv = f32(np.float32(1.0) / f32(self.output_qparams.scale))
        return f32(f32(self.input_qparams.scale) * inv)[()]


def prepare_scalar(op: str, input_qparams: QParams, scalar: float, relu: bool = False) -> ScalarParams:
    """Validate ``quantized::add_scalar``/``mul_scalar`` (+``_relu``) and derive the output qparams."""
    if op not in ("add_scalar", "mul_scalar"):
        raise UnsupportedError(f"scalar op {op!r} is not supported; supported: "
                               "['add_scalar', 'mul_scalar']")
    if input_qparams.is_per_channel:
        raise QuantParamError(f"quantized {op}: input must be per-tensor quantized "
                              "(PyTorch: 'Only per tensor quantization is supported')")
    dtype = input_qparams.dtype
    if dtype.bits != 8:
        raise UnsupportedError(f"quantized {op} on {dtype} is not supported (8-bit only)")
    c = float(scalar)
    if not np.isfinite(c):
        raise UnsupportedError(f"quantized {op} with a non-finite scalar {c!r} is not supported")
    s, z = float(input_qparams.scale), int(input_qparams.zero_point)
    qmin, qmax = dtype.qmin, dtype.qmax
    if op == "mul_scalar":
        if c > 0:
            out = QParams.per_tensor(c * s, z, dtype)
        elif c == 0:
            out = QParams.per_tensor(1.0, 0, dtype)
        else:
            out = QParams.per_tensor(abs(c) * s, qmax - (z - qmin), dtype)
        return ScalarParams(op, bool(relu), c, input_qparams, out)
    c_q = int(np.rint(c / s))
    if not -2 ** 31 <= c_q < 2 ** 31:
        raise UnsupportedError(f"quantized add_scalar: round(c / s) = {c_q} does not fit int32")
    k = z - c_q
    if k < qmin:
        out, requantize = QParams.per_tensor((float(qmax) - k) / (float(qmax) - qmin) * s, qmin, dtype), True
    elif k > qmax:
        out, requantize = QParams.per_tensor((float(k) - qmin) / (float(qmax) - qmin) * s, qmax, dtype), True
    else:
        out, requantize = QParams.per_tensor(s, k, dtype), False
    return ScalarParams(op, bool(relu), c, input_qparams, out, c_q, requantize)


def scalar_op(x: QuantizedArray, p: ScalarParams) -> QuantizedArray:
    """Quantized ``x + c`` or ``x * c``; returns values with ``p.output_qparams``."""
    dtype = p.output_qparams.dtype
    q = x.values.astype(np.int64)
    zo = int(p.output_qparams.zero_point)
    if p.op == "mul_scalar":
        if p.scalar == 0:
            out = np.zeros_like(q)
        elif p.scalar < 0:
            out = dtype.qmax + dtype.qmin - q
        else:
            out = q
    elif p.requantize:
        c = q - int(p.input_qparams.zero_point) + p.scalar_quantized
        out = np.clip(np.rint(f32(f32(c) * p.multiplier).astype(np.float64)) + zo,
                      dtype.qmin, dtype.qmax).astype(np.int64)
    else:
        out = q
    if p.relu:
        out = np.maximum(out, zo)
    return QuantizedArray(out.astype(dtype.numpy_dtype), p.output_qparams)


def explain_scalar(p: ScalarParams, x: QuantizedArray, result: QuantizedArray, index) -> list[Stage]:
    q = int(x.values[index])
    out = result.values[index]
    qparams = {"s": p.input_qparams.scale, "z": p.input_qparams.zero_point, "c": p.scalar}
    derived = {"s'": p.output_qparams.scale, "z'": p.output_qparams.zero_point}
    relu = "; relu: max(q', z')" if p.relu else ""
    if p.op == "mul_scalar":
        rule = ("c > 0: s' = c s, z' = z, q' = q" if p.scalar > 0 else
                "c = 0: s' = 1, z' = 0, q' = 0" if p.scalar == 0 else
                "c < 0: s' = |c| s, z' = qmax - (z - qmin), q' = qmax + qmin - q")
        return [Stage("mul_scalar: output qparams (offline)", rule, qparams, derived),
                Stage("mul_scalar: integers", rule.split(", ")[-1] + relu, {"q": q}, out)]
    stages = [Stage("add_scalar: output qparams (offline)",
                    "c_q = rne(c / s); z - c_q in range: s' = s, z' = z - c_q; else s' rescaled, "
                    "z' = qmin or qmax", dict(qparams, c_q=p.scalar_quantized), derived)]
    if not p.requantize:
        stages.append(Stage("add_scalar: integers copied", "q' = q" + relu, {"q": q}, out))
    else:
        c = q - int(p.input_qparams.zero_point) + p.scalar_quantized
        stages.append(Stage("add_scalar: requantize",
                            "q' = clamp(rne(f32(f32(q - z + c_q) m)) + z'), "
                            "m = f32(f32(s) f32(1/f32(s')))" + relu,
                            {"q - z + c_q": c, "m": p.multiplier, "z'": p.output_qparams.zero_point},
                            out))
    return stages


def _scalar_class(op: str):
    class ScalarOp:
        @staticmethod
        def prepare(node, input_qparams, engine):
            params = prepare_scalar(op, require_quantized(node, input_qparams), node.attrs["scalar"],
                                    relu=bool(node.attrs.get("relu", False)))
            return params, params.output_qparams

        @staticmethod
        def run(params, inputs):
            return scalar_op(inputs[0], params)

        @staticmethod
        def explain(params, inputs, result, index):
            return explain_scalar(params, inputs[0], result, index), [(0, index)]

    return ScalarOp


for _op in ("add_scalar", "mul_scalar"):
    graph_op(_op, f"quantized::{_op} (QFunctional.{_op}; output qparams derived from the input's; "
             "attrs: scalar, relu)")(_scalar_class(_op))
