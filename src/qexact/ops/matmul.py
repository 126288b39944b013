"""Matrix products of activations (attention): float32 ``torch.matmul`` / ``torch.bmm`` / ``@``
as FX leaves them between a dequantize and a quantize, and ``quantized::matmul`` (FX converts
``torch.matmul`` of two quantized tensors to it).

``quantized::matmul(qa, qb, s, z)`` on x86 builds (pytorch
aten/src/ATen/native/quantized/cpu/qmatmul.cpp, no ``USE_RUY_QMATMUL``) is

    ra = qa.dequantize(); rb = qb.dequantize()          r = f32(f32(s_x) * f32(q - z_x))
    rc = at::matmul(ra, rb)                              the float32 kernel below
    out = at::quantize_per_tensor(rc, s, z, qa.dtype)    q = clamp(rint(fmaf(rc, f32(1/s), z)))

with both inputs per-tensor quantized and of one dtype (quint8 or qint8). The float32 product
is ATen's (engines/aten_matmul.py, the ``"matmul"`` family): the naive loop of
``baddbmm_cpu_kernel`` for small batched products, MKL's sgemm otherwise, reproduced where its
order was measured and otherwise refused unless ``allow_inexact=("matmul",)`` (then NumPy's
order, marked inexact). The shapes, and so the kernel, are known only at run time: a product
outside the rule raises there when not allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import dtype_named
from ..engines.aten import default_num_threads
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..stages import Stage
from ..trace import record
from ._registry import graph_op
from .quantize import _quantize, dequantize, require_float32


@dataclass(frozen=True)
class MatmulParams:
    """A float32 matmul prepared for one engine: ``kernel``, the engine's ``FloatMatmul``
    (``plan(a_shape, b_shape)`` gives each product's kernel); ``inexact``: non-empty when the
    user allowed products outside the measured MKL order (they run in NumPy's order)."""

    kernel: object

    @property
    def inexact(self) -> str:
        return self.kernel.inexact


def prepare_matmul(engine, num_threads: int | None = None) -> MatmulParams:
    """The float32 matmul of ``engine`` (a name or an ``Engine``); ``num_threads``: PyTorch's
    intra-op threads (MKL splits a single product's rows between them)."""
    from ..engines import get_engine

    return MatmulParams(get_engine(engine).kernel("matmul", int(num_threads
                                                                 or default_num_threads())))


def float_matmul(a: np.ndarray, b: np.ndarray, params: MatmulParams) -> np.ndarray:
    """``torch.matmul(a, b)`` on float32 arrays, as ATen computes it on this engine."""
    a, b = require_float32(a, "matmul input 0"), require_float32(b, "matmul input 1")
    plan = params.kernel.plan(a.shape, b.shape)
    record("matmul: kernel", "the kernel of every product", None, kernel=plan.kernel.name,
           M=plan.rows, K=plan.depth, N=plan.columns, products=plan.count)
    out = plan.kernel.compute(a, b)
    return record("matmul: float32 product", plan.kernel.formula, out.reshape(plan.output_shape))


def _product_stages(a: np.ndarray, b: np.ndarray, params: MatmulParams, result, index):
    """The stages of element ``index`` of ``a @ b``: the kernel, the row and column it reads
    (batch dims broadcast) and the float32 result."""
    plan = params.kernel.plan(a.shape, b.shape)
    index = tuple(int(i) for i in index)
    batch = index[:-2]
    a_batch = tuple(i if n != 1 else 0 for i, n in zip(batch[len(batch) - (a.ndim - 2):],
                                                        a.shape[:-2]))
    b_batch = tuple(i if n != 1 else 0 for i, n in zip(batch[len(batch) - (b.ndim - 2):],
                                                        b.shape[:-2]))
    row, column = a[a_batch + (index[-2],)], b[b_batch + (slice(None), index[-1])]
    return [Stage("matmul: kernel", plan.kernel.formula,
                  {"kernel": plan.kernel.name, "M": plan.rows, "K": plan.depth,
                   "N": plan.columns, "inexact": plan.kernel.inexact}),
            Stage("matmul: operands", "row of a, column of b", {"a": row, "b": column}),
            Stage("matmul: float32 product", plan.kernel.formula, {},
                  np.asarray(result)[index][()])]


@graph_op("matmul", "float32 torch.matmul / torch.bmm / @ (ATen: naive bmm loop or MKL sgemm)")
class MatmulOp:
    """Graph node: two float32 inputs; attr ``num_threads``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams[:2]):
            raise ShapeError("the float32 matmul takes float32 tensors; a matmul of quantized "
                             "tensors is quantized::matmul (op 'quantized_matmul')")
        return prepare_matmul(engine, node.attrs.get("num_threads")), None

    @staticmethod
    def run(params, inputs):
        return float_matmul(inputs[0], inputs[1], params)

    @staticmethod
    def explain(params, inputs, result, index):
        a, b = (require_float32(x, f"matmul input {i}") for i, x in enumerate(inputs[:2]))
        return _product_stages(a, b, params, result, index), []


# --- quantized::matmul -------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantizedMatmulParams:
    """``quantized::matmul`` prepared for one engine: both inputs' qparams (per tensor, one
    dtype), the output's (that dtype), the float ``matmul`` and the engine (its
    ``dequantize``/``quantize`` kernels)."""

    input_qparams: tuple[QParams, QParams]
    output_qparams: QParams
    matmul: MatmulParams
    engine: object

    @property
    def inexact(self) -> str:
        return self.matmul.inexact


def prepare_quantized_matmul(a_qparams: QParams, b_qparams: QParams, output_scale: float,
                             output_zero_point: int, engine,
                             num_threads: int | None = None) -> QuantizedMatmulParams:
    """Validate as qmatmul.cpp ``check_inputs`` does and prepare ``quantized::matmul``."""
    from ..engines import get_engine

    engine = get_engine(engine)
    for position, qparams in enumerate((a_qparams, b_qparams)):
        if qparams.is_per_channel:
            raise QuantParamError(f"quantized::matmul input {position}: only per-tensor "
                                  "quantization is supported in Matmul")
        if qparams.dtype.name not in ("quint8", "qint8"):
            raise UnsupportedError(f"quantized::matmul operands must be quint8 or qint8, got "
                                   f"{qparams.dtype.name}")
    if a_qparams.dtype != b_qparams.dtype:
        raise QuantParamError(f"quantized::matmul operands must have one dtype, got "
                              f"{a_qparams.dtype.name} and {b_qparams.dtype.name}")
    output = QParams.per_tensor(output_scale, output_zero_point, a_qparams.dtype)
    return QuantizedMatmulParams((a_qparams, b_qparams), output,
                                 prepare_matmul(engine, num_threads), engine)


def quantized_matmul(a: QuantizedArray, b: QuantizedArray,
                     params: QuantizedMatmulParams) -> QuantizedArray:
    """``quantized::matmul(a, b, s, z)``: dequantize both, ATen's float32 matmul, quantize."""
    for position, (x, expected) in enumerate(zip((a, b), params.input_qparams)):
        if not isinstance(x, QuantizedArray):
            raise ShapeError(f"quantized::matmul input {position} must be a quantized array")
        if x.qparams != expected:
            raise QuantParamError(f"quantized::matmul input {position} does not match the "
                                  "prepared qparams")
    engine = params.engine
    real_a = dequantize(a, engine.kernel("dequantize", a.qparams, np.ndim(a.values)))
    real_b = dequantize(b, engine.kernel("dequantize", b.qparams, np.ndim(b.values)))
    product = float_matmul(real_a, real_b, params.matmul)
    return _quantize(product, params.output_qparams,
                     engine.kernel("quantize", params.output_qparams, product.ndim))


@graph_op("quantized_matmul", "quantized::matmul: dequantize, ATen's float32 matmul, quantize")
class QuantizedMatmulOp:
    """Graph node: two quantized inputs; attrs ``output_scale``, ``output_zero_point`` (the
    dtype is the inputs'), ``num_threads``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = list(input_qparams[:2]) + [None] * (2 - len(input_qparams[:2]))
        if any(q is None for q in qparams):
            raise QuantParamError("quantized::matmul takes two quantized tensors")
        dtype = node.attrs.get("output_dtype")
        if dtype is not None and dtype_named(dtype) != qparams[0].dtype:
            raise QuantParamError(f"quantized::matmul gives its inputs' dtype "
                                  f"({qparams[0].dtype.name}), not {dtype}")
        params = prepare_quantized_matmul(qparams[0], qparams[1], node.attrs["output_scale"],
                                          node.attrs["output_zero_point"], engine,
                                          node.attrs.get("num_threads"))
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return quantized_matmul(inputs[0], inputs[1], params)

    @staticmethod
    def explain(params, inputs, result, index):
        a, b = inputs[:2]
        engine = params.engine
        real_a = dequantize(a, engine.kernel("dequantize", a.qparams, np.ndim(a.values)))
        real_b = dequantize(b, engine.kernel("dequantize", b.qparams, np.ndim(b.values)))
        product = float_matmul(real_a, real_b, params.matmul)
        index = tuple(int(i) for i in index)
        stages = [Stage("dequantize: inputs", "r = f32(f32(s) * f32(q - z)) (per tensor)",
                        {"s_a": a.qparams.scale, "z_a": int(a.qparams.zero_point),
                         "s_b": b.qparams.scale, "z_b": int(b.qparams.zero_point)})]
        stages += _product_stages(real_a, real_b, params.matmul, product, index)
        from ..trace import observe

        with observe() as trace:
            element = np.asarray(product)[index].reshape(())
            _quantize(element, params.output_qparams,
                      engine.kernel("quantize", params.output_qparams, 0))
        return stages + trace.stages_at((), ()), []
