"""Quantized elementwise binary ops: add, add_relu, mul, mul_relu (add_scalar / mul_scalar are in
``qexact.ops.scalar``, cat in ``qexact.ops.concat``).

ATen kernels (pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp), each
element either in the SIMD body or the scalar tail (``qexact.engines.aten.simd_mask``):

    add (qadd_kernel):   SIMD   d = fmaf(f32(s), f32(q), f32(f32(s) f32(-z)))    per input
                                c = f32(d_a + d_b); relu: max(c, 0)
                                q = clamp(rne(f32(c inv)) + z_o)          inv = f32(1 / f32(s_o))
                         scalar d = f32(f32(s) f32(q - z)); c likewise
                                q = clamp(rne(f32(f32(c inv) + f32(z_o))))
    mul (qmul_kernel):   m = f32(f32(f32(s_a) f32(s_b)) f32(1 / f32(s_o)))
                         q = clamp(rne(f32(f32((q_a - z_a)(q_b - z_b)) m)) + z_o); relu: max(q, z_o)
                         (same on both paths)

Memory layouts (channels_last operands are quantized conv outputs; NumPy strides as
``qexact.ops.shape`` reads them): the output is allocated in ``a.suggest_memory_format()``, and
TensorIterator walks the dims in the output's memory order (N, H, W, C for a channels_last
``a``), so the body/tail split is taken in that order (``binary_walk``). An input strided along
the innermost walked dim (``a`` and ``b`` in different memory formats) sends every element of
that loop to the scalar lambda.

On the qnnpack engine, quint8 add/add_relu of equal shapes run QNNPACK's fixed-point add
(``qexact.engines.qnnpack_add``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..dtypes import QDType
from ..engines import aten
from ..engines.aten import (INT32_FLOAT_MAX, ElementwiseNumerics, IteratorWalk,  # noqa: F401
                            default_num_threads, elementwise_numerics, inverse_scale,
                            iterator_walk, layout_simd_mask, like_memory_format)
from ..engines.qnnpack_add import (QnnpackAddParams, prepare_qnnpack_add, qnnpack_add,
                                           qnnpack_add_stages, simd_mask_like)
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..rounding import f32, fma_float32, round_half_even_to_int32, wrap_int32
from ..stages import Stage
from ..trace import apply_steps
from ._registry import graph_op
from .quantize import require_quantized


# --- The two quantization paths of ATen's elementwise kernels (engines.aten's pipelines) ------


def dequantize_simd(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``Vectorized<quint8>::dequantize``: ``fmaf(f32(s), f32(q), f32(f32(s) * f32(-z)))``."""
    return apply_steps(q, aten.dequantize_vector(scale, zero_point))


def dequantize_scalar(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``dequantize_val(float scale, z, q)``: ``f32(f32(s) * f32(q - z))``."""
    return apply_steps(np.asarray(q).astype(np.int64), aten.dequantize_scalar(scale, zero_point))


def quantize_simd(y: np.ndarray, inv, zero_point: int, dtype: QDType) -> np.ndarray:
    """``QuantizeAvx2``: ``clamp(cvtps2dq(min(f32(y * inv), 2147483520)) + z)`` (NaN -> qmax)."""
    return apply_steps(f32(y), aten.quantize_vector(inv, zero_point, dtype))


def quantize_scalar(y: np.ndarray, inv, zero_point: int, dtype: QDType) -> np.ndarray:
    """``quantize_val`` (FBGEMM ``Quantize``): ``clamp(rne(f32(f32(y * inv) + f32(z))))``."""
    return apply_steps(f32(y), aten.quantize_scalar(inv, zero_point, dtype))

def binary_walk(op: str, out_shape, a: np.ndarray, b: np.ndarray) -> IteratorWalk:
    """``qadd_kernel``/``qmul_kernel``'s walk (``iterator_walk``). The output is allocated in
    ``a.suggest_memory_format()``, so its memory order decides the walk: add allocates it with
    ``a``'s shape (pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp ``qadd``), and when
    ``b`` broadcasts ``a`` larger TensorIterator resizes it (``b``'s strides decide the order,
    the output is dense in it); mul allocates it with the broadcast shape (qmul.cpp ``QMul``).

    So with ``a`` and ``b`` in different memory formats (contiguous and channels_last), ``b`` is
    strided along the innermost walked dim (W for a contiguous ``a``, C for a channels_last one)
    and every element takes the scalar lambda, unless the dims they differ in have size 1.
    Measured (torch 2.13, AVX2 build, the ATen kernels on every engine): 4-D and 5-D, N 1-2,
    C in {1, 3, 8, 16, 17, 32, 64, 96}, both layouts in both orders, broadcasting, permuted and
    sliced views, 1 and 4 threads on 32768+ elements: 0 elements and 0 output strides off."""
    from ..layout import suggests_channels_last, to_channels_last

    out_shape = tuple(out_shape)
    out_strides = None
    if a.shape == out_shape or op == "mul":
        allocated = np.empty(out_shape, np.uint8)
        if len(out_shape) == a.ndim and suggests_channels_last(a):
            allocated = to_channels_last(allocated)
        out_strides = allocated.strides  # itemsize 1: strides in elements
    return iterator_walk(out_shape, [a, b], out_strides)


# --- add / mul ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryParams:
    """A quantized add/mul prepared for one engine.

    ``op``: "add" or "mul"; ``relu``: fused ReLU; ``a_qparams``, ``b_qparams``,
    ``output_qparams``; ``numerics``: ATen's elementwise numerics on this engine;
    ``num_threads``: PyTorch's intra-op threads (large tensors are cut into one chunk per
    thread); ``qnnpack``: QNNPACK add constants (quint8 add on qnnpack), or None;
    ``qnnpack_error``: why PyTorch would refuse the QNNPACK add, or "".
    """

    op: str
    relu: bool
    a_qparams: QParams
    b_qparams: QParams
    output_qparams: QParams
    numerics: ElementwiseNumerics
    num_threads: int
    qnnpack: QnnpackAddParams | None
    qnnpack_error: str = ""

    @property
    def mul_multiplier(self) -> np.float32:
        """``f32(f32(f32(s_a) f32(s_b)) f32(1 / f32(s_o)))``."""
        product = f32(f32(self.a_qparams.scale) * f32(self.b_qparams.scale))
        return f32(product * inverse_scale(self.output_qparams.scale))[()]


def prepare_binary(op: str, a_qparams: QParams, b_qparams: QParams, output_qparams: QParams,
                   relu: bool = False, engine="fbgemm", num_threads: int | None = None,
                   isa: str | None = None) -> BinaryParams:
    """Validate and prepare ``quantized::add``/``add_relu``/``mul``/``mul_relu``."""
    from ..engines import get_engine

    if op not in ("add", "mul"):
        raise UnsupportedError(f"binary op {op!r} is not supported; supported: ['add', 'mul']")
    for name, qparams in (("a", a_qparams), ("b", b_qparams), ("output", output_qparams)):
        if qparams.is_per_channel:
            raise QuantParamError(f"quantized {op}: {name} must be per-tensor quantized")
    if not a_qparams.dtype == b_qparams.dtype == output_qparams.dtype:
        raise QuantParamError(f"quantized {op}: dtypes differ ({a_qparams.dtype}, "
                              f"{b_qparams.dtype}, {output_qparams.dtype})")
    if a_qparams.dtype.bits != 8:
        raise UnsupportedError(f"quantized {op} on {a_qparams.dtype} is not supported (8-bit only)")
    engine = get_engine(engine, isa)
    numerics = elementwise_numerics(engine)
    qnnpack, error = None, ""
    if op == "add" and numerics.qnnpack_add and a_qparams.dtype.name == "quint8":
        try:
            qnnpack = prepare_qnnpack_add(a_qparams.scale, a_qparams.zero_point, b_qparams.scale,
                                          b_qparams.zero_point, output_qparams.scale,
                                          output_qparams.zero_point, relu)
        except UnsupportedError as failure:
            error = str(failure)
    return BinaryParams(op, bool(relu), a_qparams, b_qparams, output_qparams, numerics,
                        int(num_threads or default_num_threads()), qnnpack, error)


def _uses_qnnpack(p: BinaryParams, a: np.ndarray, b: np.ndarray) -> bool:
    return (p.op == "add" and p.numerics.qnnpack_add and p.a_qparams.dtype.name == "quint8"
            and a.shape == b.shape)


def binary(a: QuantizedArray, b: QuantizedArray, p: BinaryParams) -> QuantizedArray:
    """Quantized ``a + b`` or ``a * b`` (broadcasting) with ``p.output_qparams``."""
    try:
        out_shape = np.broadcast_shapes(a.values.shape, b.values.shape)
    except ValueError:
        raise ShapeError(f"quantized {p.op}: shapes {a.values.shape} and {b.values.shape} "
                         "do not broadcast") from None
    dtype = p.output_qparams.dtype
    if _uses_qnnpack(p, a.values, b.values):
        if p.qnnpack is None:
            raise UnsupportedError(p.qnnpack_error)
        return QuantizedArray(like_memory_format(qnnpack_add(a.values, b.values, p.qnnpack),
                                                 a.values), p.output_qparams)
    qa = np.broadcast_to(a.values, out_shape)
    qb = np.broadcast_to(b.values, out_shape)
    zo = int(p.output_qparams.zero_point)
    walk = binary_walk(p.op, out_shape, a.values, b.values)
    mask = walk.simd_mask(p.numerics, p.num_threads)
    if p.op == "mul":
        product = (qa.astype(np.int64) - p.a_qparams.zero_point) * \
            (qb.astype(np.int64) - p.b_qparams.zero_point)
        with np.errstate(over="ignore"):
            scaled = f32(f32(product) * p.mul_multiplier)
        # Both paths round half to even; beyond int32 the SIMD body's cvtps2dq gives INT32_MIN
        # and its 32-bit add of z_o wraps (a negative z_o turns it into INT32_MAX-ish: qmax;
        # Vectorized<qint8>::requantize_from_int, vec512/vec256_qint.h), while the scalar
        # tail's 64-bit rounding keeps the value.
        shifted = np.where(mask, wrap_int32(round_half_even_to_int32(scaled) + zo),
                           np.rint(scaled.astype(np.float64)).clip(-2.0**62, 2.0**62)
                           .astype(np.int64) + zo)
        out = np.clip(shifted, dtype.qmin, dtype.qmax)
        if p.relu:
            out = np.maximum(out, zo)
        return QuantizedArray(walk.output(out.astype(dtype.numpy_dtype)), p.output_qparams)
    inv = inverse_scale(p.output_qparams.scale)
    out = np.empty(out_shape, np.int64)
    for simd, dequant, quant in ((True, dequantize_simd, quantize_simd),
                                 (False, dequantize_scalar, quantize_scalar)):
        where = mask if simd else ~mask
        if not where.any():
            continue
        total = f32(dequant(qa[where], p.a_qparams.scale, p.a_qparams.zero_point)
                    + dequant(qb[where], p.b_qparams.scale, p.b_qparams.zero_point))
        if p.relu:
            total = np.maximum(total, np.float32(0))
        out[where] = quant(total, inv, zo, dtype)
    return QuantizedArray(walk.output(out.astype(dtype.numpy_dtype)), p.output_qparams)


def explain_binary(p: BinaryParams, a: QuantizedArray, b: QuantizedArray, result, index):
    out_shape = result.values.shape
    qa = np.broadcast_to(a.values, out_shape)[index]
    qb = np.broadcast_to(b.values, out_shape)[index]
    za, zb, zo = p.a_qparams.zero_point, p.b_qparams.zero_point, p.output_qparams.zero_point
    out = result.values[index]
    if _uses_qnnpack(p, a.values, b.values):
        simd = bool(simd_mask_like(a.values)[index])  # the element's tile: SIMD body or scalar
        return [Stage(name, formula, values, res) for name, formula, values, res
                in qnnpack_add_stages(qa, qb, p.qnnpack, simd)]
    if p.op == "mul":
        product = (int(qa) - za) * (int(qb) - zb)
        return [
            Stage("mul: multiplier (offline)", "m = f32(f32(f32(s_a) f32(s_b)) f32(1/f32(s_o)))",
                  {"s_a": p.a_qparams.scale, "s_b": p.b_qparams.scale, "s_o": p.output_qparams.scale},
                  p.mul_multiplier),
            Stage("mul: integer product", "c = (q_a - z_a)(q_b - z_b)",
                  {"q_a": qa, "z_a": za, "q_b": qb, "z_b": zb}, product),
            Stage("mul: requantize", "q = clamp(rne(f32(f32(c) m)) + z_o)"
                  + ("; relu: max(q, z_o)" if p.relu else "") + "; past int32 the SIMD body gets INT32_MIN",
                  {"c": product, "m": p.mul_multiplier, "z_o": zo}, out)]
    mask = binary_walk(p.op, out_shape, a.values, b.values).simd_mask(p.numerics, p.num_threads)
    simd = bool(mask[index])
    inv = inverse_scale(p.output_qparams.scale)
    dequant = dequantize_simd if simd else dequantize_scalar
    da = dequant(np.asarray(qa), p.a_qparams.scale, za)[()]
    db = dequant(np.asarray(qb), p.b_qparams.scale, zb)[()]
    total = f32(da + db)[()]
    path = (f"SIMD body ({p.numerics.capability}, units of {p.numerics.body_unit})" if simd
            else "scalar tail (basic_loop)")
    deq_formula = ("d = fmaf(f32(s), f32(q), f32(f32(s) f32(-z)))" if simd
                   else "d = f32(f32(s) f32(q - z))")
    stages = [
        Stage("add: path", "which lambda of cpu_kernel_vec runs this element", {"path": path}),
        Stage("add: dequantize a", deq_formula, {"q": qa, "s": p.a_qparams.scale, "z": za}, da),
        Stage("add: dequantize b", deq_formula, {"q": qb, "s": p.b_qparams.scale, "z": zb}, db),
        Stage("add: float sum", "c = f32(d_a + d_b)" + ("; relu: max(c, 0)" if p.relu else ""),
              {"d_a": da, "d_b": db}, np.maximum(total, 0) if p.relu else total),
        Stage("add: requantize", ("q = clamp(rne(f32(c inv)) + z_o): zero point after rounding"
                                  if simd else
                                  "q = clamp(rne(f32(f32(c inv) + f32(z_o)))): zero point before "
                                  "rounding"), {"inv": inv, "z_o": zo}, out)]
    return stages


def _binary_prepare(op: str, relu: bool):
    def prepare(node, input_qparams, engine):
        a_qparams = require_quantized(node, input_qparams, 0)
        b_qparams = require_quantized(node, input_qparams, 1)
        output = QParams.per_tensor(node.attrs["output_scale"], node.attrs["output_zero_point"],
                                    a_qparams.dtype)
        params = prepare_binary(op, a_qparams, b_qparams, output, relu=relu, engine=engine,
                                num_threads=node.attrs.get("num_threads"))
        return params, output

    return staticmethod(prepare)


def _binary_class(op: str, relu: bool):
    class BinaryOp:
        prepare = _binary_prepare(op, relu)

        @staticmethod
        def run(params, inputs):
            return binary(inputs[0], inputs[1], params)

        @staticmethod
        def explain(params, inputs, result, index):
            out_shape = result.values.shape
            upstream = []
            for position in (0, 1):
                shape = inputs[position].values.shape
                offset = len(out_shape) - len(shape)
                upstream.append((position, tuple(0 if size == 1 else index[offset + d]
                                                 for d, size in enumerate(shape))))
            return explain_binary(params, inputs[0], inputs[1], result, index), upstream

    return BinaryOp


for _op, _relu in (("add", False), ("add", True), ("mul", False), ("mul", True)):
    _name = _op + ("_relu" if _relu else "")
    graph_op(_name, f"quantized::{_name} (QFunctional.{_name})")(_binary_class(_op, _relu))


