"""softmax and log_softmax: on float32 tensors (F.softmax, torch.softmax, Tensor.softmax,
torch.log_softmax, ...: FX-converted models run them between a dequantize and a quantize), and
quantized (``nnq.Softmax``, ``torch.ops.quantized.softmax``: FX converts nn.Softmax modules
to it, with the fixed output qparams (1/256, 0)).

The engine states the kernels (engines/aten_float.py): ``"softmax"`` gives the vector width
and the exp/log functions of ATen's float kernels, whose order this module follows::

    along the last dim, each row:
        m = reduce_all(max, x)            (engines.aten_float.reduce_all: lanes, then a tree)
        e = sleef_expf(f32(x - m))
        s = reduce_all(+, e)
        softmax:      y = f32(e * f32(1 / s))
        log_softmax:  y = f32(f32(x - m) - sleef_logf(s))
    along another dim, for each (outer, inner) column, down the dim in order:
        m = x > m ? x : m  (from -inf);   e = exp(f32(x - m));   s = f32(s + e)  (from 0)
        softmax: y = f32(e / s);  log_softmax: y = f32(f32(x - m) - sleef_logf(s))
        exp: SLEEF for the inner indices of whole vectors, glibc for the last inner % lanes

``"quantized_softmax"`` says whether a quantized softmax is QNNPACK's integer softargmax
(``lookup``) or ATen's dequantize, float softmax, quantize. The lookup::

    t = table(s_in, C)  (engines.aten_float.lookup_table, uint32)
    for each row along dim: a = t[q - max(q) + 255]; S = sum(a) (uint32, wraps)
    q_out = min(255, ((a << 8) + (S >> 1)) // S)          output qparams (1/256, 0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import dtype_named
from ..engines.aten import default_num_threads
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..rounding import f32
from ..trace import record
from ._registry import graph_op, observed_stages
from .quantize import dequantize, quantize_per_tensor


def implicit_dim(ndim: int) -> int:
    """``torch.nn.functional._get_softmax_dim`` for ``dim=None``: 0 for 0-, 1- and 3-D inputs,
    else 1 (PyTorch warns)."""
    return 0 if ndim in (0, 1, 3) else 1


def _wrap_dim(dim, ndim: int) -> int:
    size = max(ndim, 1)
    if dim is None:
        dim = implicit_dim(ndim)
    dim = int(dim)
    if not -size <= dim < size:
        raise ShapeError(f"softmax: dim {dim} out of range for a {ndim}-D input")
    return dim % size


def _maximum(a, b):
    return np.maximum(a, b)  # vec::maximum: NaN propagates


def _add(a, b):
    return f32(a + b)


def _lastdim(rows: np.ndarray, kernel) -> np.ndarray:
    from ..engines.aten_float import reduce_all

    top = reduce_all(rows, _maximum, kernel.lanes)[:, None]
    shifted = f32(rows - top)
    exp = kernel.exp(shifted)
    total = reduce_all(exp, _add, kernel.lanes)[:, None]
    record("softmax: row max", "m = reduce_all(max, x) ({lanes} lanes)",
           np.broadcast_to(top, rows.shape), lanes=kernel.lanes)
    record("softmax: exp", "e = sleef_expf(f32(x - m))", exp, x=rows)
    record("softmax: row sum", "s = reduce_all(+, e) ({lanes} lanes)",
           np.broadcast_to(total, rows.shape), lanes=kernel.lanes)
    if kernel.log:
        log_total = kernel.logarithm(total)
        return record("log_softmax: output", "y = f32(f32(x - m) - sleef_logf(s))",
                      f32(shifted - log_total), log_s=np.broadcast_to(log_total, rows.shape))
    inverse = f32(np.float32(1.0) / total)
    return record("softmax: output", "y = f32(e * f32(1 / s))", f32(exp * inverse),
                  inverse=np.broadcast_to(inverse, rows.shape))


def _column_block(block: np.ndarray, kernel, exp) -> np.ndarray:
    """(dim, columns): each column reduced down the dim in order (module docstring)."""
    size = block.shape[0]
    top = np.full(block.shape[1:], -np.inf, np.float32)
    for index in range(size):
        top = np.where(block[index] > top, block[index], top)
    total = np.zeros_like(top)
    exps = np.empty_like(block)
    for index in range(size):
        exps[index] = exp(f32(block[index] - top))
        total = f32(total + exps[index])
    if kernel.log:
        return f32(f32(block - top) - kernel.logarithm(total))
    return f32(exps / total)


def _along(columns: np.ndarray, kernel, num_threads: int) -> np.ndarray:
    """``columns``: (outer, dim, inner); runs of columns as the engine cuts them
    (``engines.aten_float.column_segments``), each vectorized then scalar."""
    from ..engines.aten_float import column_segments

    outer, size, inner = columns.shape
    out = np.empty_like(columns)
    simd = np.zeros((outer, inner), bool)
    for row, start, stop in column_segments(outer, size, inner, kernel.lanes, num_threads,
                                                flat=not kernel.log):
        body = start + (stop - start) // kernel.lanes * kernel.lanes
        simd[row, start:body] = True
    for row in range(outer):
        for where, exp in ((simd[row], kernel.exp), (~simd[row], kernel.scalar_exp)):
            if where.any():
                out[row][:, where] = _column_block(columns[row][:, where], kernel, exp)
    record("softmax: path", "vectorized (SLEEF exp) or scalar (glibc expf) column", None,
           vectorized=np.broadcast_to(simd[:, None, :], columns.shape))
    return out


def softmax_float(x: np.ndarray, dim, kernel, num_threads: int = 1) -> np.ndarray:
    """softmax (``kernel.log`` False) or log_softmax of a float32 array along ``dim``, as
    ATen's kernels (engines.aten_float.SoftmaxKernel) with ``num_threads`` (PyTorch's intra-op
    threads: they change which columns of a softmax along another dim are vectorized); the
    output is C-contiguous."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"softmax expects a float32 tensor, got {x.dtype}")
    shape = x.shape
    flat = np.ascontiguousarray(x).reshape(shape or (1,))
    axis = _wrap_dim(dim, x.ndim)
    if flat.size == 0:
        return np.empty(shape, np.float32)
    record("softmax: kernel", "the kernel that computes every element", None,
           kernel=kernel.name)
    with np.errstate(all="ignore"):
        if axis == flat.ndim - 1:
            out = _lastdim(flat.reshape(-1, flat.shape[-1]), kernel)
        else:
            outer = int(np.prod(flat.shape[:axis]))
            out = _along(flat.reshape(outer, flat.shape[axis], -1), kernel, num_threads)
    return np.ascontiguousarray(out.reshape(shape))


def softargmax_lookup(values: np.ndarray, dim, input_scale: float) -> np.ndarray:
    """QNNPACK's quantized softmax (quint8 in, quint8 out with (1/256, 0)); see the module
    docstring."""
    from ..engines.aten_float import lookup_table

    axis = _wrap_dim(dim, values.ndim)
    moved = np.moveaxis(np.asarray(values).reshape(values.shape or (1,)), axis, -1)
    channels = moved.shape[-1]
    table = lookup_table(input_scale, channels)
    q = moved.astype(np.int64)
    looked = table[q - q.max(axis=-1, keepdims=True) + 255]
    total = looked.sum(axis=-1, keepdims=True) & 0xFFFFFFFF
    record("softmax (lookup): table entries", "a = t[q - max(q) + 255]",
           np.moveaxis(looked, -1, axis).reshape(values.shape), channels=channels)
    out = np.minimum(255, ((looked << 8) + (total >> 1)) // total)
    out = np.moveaxis(out, -1, axis).reshape(values.shape)
    return record("softmax (lookup): output", "q = min(255, ((a << 8) + (S >> 1)) // S)",
                  out.astype(np.uint8), S=np.broadcast_to(
                      np.moveaxis(total, -1, axis), np.moveaxis(looked, -1, axis).shape
                  ).reshape(values.shape))


@dataclass(frozen=True)
class SoftmaxParams:
    """softmax / log_softmax along ``dim`` (None: PyTorch's implicit dim): ``kernel`` the
    float kernel (``SoftmaxKernel``); for a quantized softmax ``quantized`` the engine's
    ``QuantizedSoftmaxKernel`` and the ``output_qparams``."""

    dim: int | None
    log: bool
    kernel: object
    quantized: object = None
    input_qparams: QParams | None = None
    output_qparams: QParams | None = None
    num_threads: int = 1


def prepare_softmax(dim, *, log: bool = False, engine, input_qparams: QParams | None = None,
                    output_qparams: QParams | None = None,
                    num_threads: int | None = None) -> SoftmaxParams:
    """softmax (or log_softmax) along ``dim`` for ``engine``; quantized when ``input_qparams``
    is given (then ``output_qparams`` is required; log_softmax has no quantized kernel)."""
    from ..engines import get_engine

    engine = get_engine(engine)
    kernel = engine.kernel("softmax", bool(log))
    threads = int(num_threads or default_num_threads())
    if input_qparams is None:
        return SoftmaxParams(dim, bool(log), kernel, num_threads=threads)
    if log:
        raise UnsupportedError("quantized log_softmax does not exist in PyTorch; dequantize")
    if input_qparams.is_per_channel or output_qparams is None or output_qparams.is_per_channel:
        raise QuantParamError("quantized softmax takes per-tensor input and output qparams")
    quantized = engine.kernel("quantized_softmax", input_qparams, output_qparams)
    return SoftmaxParams(dim, False, kernel, quantized, input_qparams, output_qparams, threads)


def softmax(x, params: SoftmaxParams):
    """Run a prepared softmax on a float32 array or a ``QuantizedArray``."""
    if not isinstance(x, QuantizedArray):
        if params.quantized is not None:
            raise ShapeError("this softmax was prepared for a quantized input")
        return softmax_float(x, params.dim, params.kernel, params.num_threads)
    if params.quantized is None:
        raise UnsupportedError("quantized log_softmax does not exist in PyTorch"
                               if params.log else "this softmax was prepared for a float input")
    record("softmax: kernel", "the kernel that runs this call", None,
           kernel=params.quantized.name)
    values = np.asarray(x.values)
    if params.quantized.lookup:
        return QuantizedArray(softargmax_lookup(values, params.dim,
                                                params.quantized.input_scale),
                              params.output_qparams)
    real = dequantize(QuantizedArray(np.ascontiguousarray(values), x.qparams))
    y = softmax_float(real, params.dim, params.quantized.float_kernel, params.num_threads)
    out = params.output_qparams
    return quantize_per_tensor(y, float(out.scale), int(out.zero_point), out.dtype)


def _run_softmax(params, inputs):
    return softmax(inputs[0], params)


@graph_op("softmax", "softmax / log_softmax (F.softmax, nn.Softmax, Tensor.softmax, "
          "torch.log_softmax) on float32 tensors; quantized softmax (nnq.Softmax)")
class SoftmaxOp:
    """Graph node: attrs ``dim`` (None: implicit), ``log``, ``num_threads``, and for a
    quantized softmax the output qparams (``output_scale``, ``output_zero_point``,
    ``output_dtype``)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        input_q = input_qparams[0] if input_qparams else None
        output = None
        if input_q is not None:
            if "output_scale" not in node.attrs:
                raise UnsupportedError(f"{node.name}: a float softmax got a quantized input")
            output = QParams.per_tensor(node.attrs["output_scale"],
                                        node.attrs["output_zero_point"],
                                        dtype_named(node.attrs.get("output_dtype",
                                                                   input_q.dtype.name)))
        params = prepare_softmax(node.attrs.get("dim"), log=node.attrs.get("log", False),
                                 engine=engine, input_qparams=input_q, output_qparams=output,
                                 num_threads=node.attrs.get("num_threads"))
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return softmax(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run_softmax, params, inputs, result, index), [(0, index)]
