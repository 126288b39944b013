"""Quantized tensor-scalar ops: add_scalar, mul_scalar (and their _relu forms).

``torch.ops.quantized.add_scalar(x, c)`` / ``mul_scalar(x, c)`` (QFunctional.add_scalar /
mul_scalar; PyTorch observes nothing for them): the OUTPUT QPARAMS are derived from the input's,
not given. Source: pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp (``_add_scalar_out``),
aten/src/ATen/native/quantized/cpu/Mul.cpp (``_mul_scalar_out``), QuantizedOpKernels.cpp
(``qadd_scalar_kernel``). The op derives the output qparams; the integer arithmetic is the
engine's ``"scalar"`` kernel (``ScalarKernel``, engines/aten_elementwise.py: ATen's, the same on
every engine and ATen capability, as the SIMD and scalar lambdas of ``qadd_scalar_kernel`` both
use ``requantize_from_int``, measured here on AVX2).

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

from ..engines.aten_elementwise import ScalarKernel
from ..errors import QuantParamError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..trace import apply_steps, record
from ._registry import graph_op, observed_stages
from .quantize import require_quantized


@dataclass(frozen=True)
class ScalarParams:
    """A prepared add_scalar / mul_scalar: ``op`` ("add_scalar" or "mul_scalar"), ``relu``,
    ``scalar`` (the Python float c), ``input_qparams``, ``output_qparams`` (derived, as PyTorch
    sets them), ``description`` (the engine's ``"scalar"`` kernel: its steps from the input
    integers to the output integers), ``scalar_quantized`` (add: c_q), ``requantize`` (add: True
    when the integers are requantized)."""

    op: str
    relu: bool
    scalar: float
    input_qparams: QParams
    output_qparams: QParams
    description: ScalarKernel
    scalar_quantized: int = 0
    requantize: bool = False


def prepare_scalar(op: str, input_qparams: QParams, scalar: float, relu: bool = False, *,
                   engine, isa: str | None = None) -> ScalarParams:
    """Validate ``quantized::add_scalar``/``mul_scalar`` (+``_relu``), derive the output qparams
    and ask ``engine`` (a name or an ``Engine``) for its ``"scalar"`` kernel."""
    from ..engines import get_engine

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
    engine = get_engine(engine, isa)
    s, z = float(input_qparams.scale), int(input_qparams.zero_point)
    qmin, qmax = dtype.qmin, dtype.qmax
    c_q, requantize = 0, False
    if op == "mul_scalar":
        if c > 0:
            out = QParams.per_tensor(c * s, z, dtype)
        elif c == 0:
            out = QParams.per_tensor(1.0, 0, dtype)
        else:
            out = QParams.per_tensor(abs(c) * s, qmax - (z - qmin), dtype)
    else:
        c_q = int(np.rint(c / s))
        if not -2 ** 31 <= c_q < 2 ** 31:
            raise UnsupportedError(f"quantized add_scalar: round(c / s) = {c_q} does not fit int32")
        k = z - c_q
        if k < qmin:
            out, requantize = QParams.per_tensor((float(qmax) - k) / (float(qmax) - qmin) * s,
                                                 qmin, dtype), True
        elif k > qmax:
            out, requantize = QParams.per_tensor((float(k) - qmin) / (float(qmax) - qmin) * s,
                                                 qmax, dtype), True
        else:
            out = QParams.per_tensor(s, k, dtype)
    description = engine.kernel("scalar", op, bool(relu), c, input_qparams, out, c_q, requantize)
    return ScalarParams(op, bool(relu), c, input_qparams, out, description, c_q, requantize)


def scalar_op(x: QuantizedArray, p: ScalarParams) -> QuantizedArray:
    """Quantized ``x + c`` or ``x * c``; returns values with ``p.output_qparams``: the kernel's
    steps applied to the input integers (none: copied)."""
    kernel = p.description
    q = x.values.astype(np.int64)
    record(f"{p.op}: path", "the output qparams (derived offline) and the case that runs", None,
           kernel=kernel.name, path=kernel.path, s=p.input_qparams.scale,
           z=p.input_qparams.zero_point, c=p.scalar, c_q=p.scalar_quantized,
           **{"s'": p.output_qparams.scale, "z'": p.output_qparams.zero_point})
    if kernel.steps:
        out = apply_steps(q, kernel.steps, prefix=f"{p.op}: ")
    else:
        out = record(f"{p.op}: integers copied", "q' = q", q, q=q)
    return QuantizedArray(out.astype(p.output_qparams.dtype.numpy_dtype), p.output_qparams)


def _run_scalar(params: ScalarParams, inputs) -> QuantizedArray:
    return scalar_op(inputs[0], params)


def _scalar_class(op: str):
    class ScalarOp:
        @staticmethod
        def prepare(node, input_qparams, engine):
            params = prepare_scalar(op, require_quantized(node, input_qparams),
                                    node.attrs["scalar"], relu=bool(node.attrs.get("relu", False)),
                                    engine=engine)
            return params, params.output_qparams

        run = staticmethod(_run_scalar)

        @staticmethod
        def explain(params, inputs, result, index):
            return observed_stages(_run_scalar, params, inputs, result, index), [(0, index)]

    return ScalarOp


for _op in ("add_scalar", "mul_scalar"):
    graph_op(_op, f"quantized::{_op} (QFunctional.{_op}; output qparams derived from the input's; "
             "attrs: scalar, relu)")(_scalar_class(_op))
