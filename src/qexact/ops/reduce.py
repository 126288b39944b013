"""Quantized ``torch.mean`` / ``Tensor.mean(dim, keepdim)``: the output keeps the input's scale and
zero point. The engine states the kernel PyTorch runs for the call (``Engine.kernel("mean",
...)``, engines/aten_pooling.py ``choose_mean`` and, on the qnnpack engine, engines/
qnnpack_pooling.py): aten/src/ATen/native/quantized/cpu/ReduceOps.cpp ``mean_out_quantized_cpu``
runs

- an integer averaging kernel (``AverageKernel``: ATen's ``qmean_inner_dim_kernel`` when the
  reduced dims are the innermost ones of an NCHW-contiguous input, or all dims; QNNPACK's global
  average pooling on the qnnpack engine): the exact integer sum ``S`` of each group of ``N``
  elements, requantized by the kernel's ``Step``s (``ops._average``);
- otherwise the reference path (``FloatMeanKernel``): dequantize (``f32(s * (q - z))``), float32
  ``at::sum`` (ATen's cascade sum, native/cpu/SumKernel.cpp, in TensorIterator's loop order),
  ``div_(N)`` in float32, ``quantize_per_tensor``.

The float32 sum of the reference path depends on the order ATen adds in; ``_cascade_sum``
replays TensorIterator's dimension ordering and coalescing (reduced dims innermost, then by
strides) and SumKernel's ``vectorized_inner_sum`` / ``vectorized_outer_sum`` / ``scalar_*_sum``
loops with their 4-level cascades (``multi_row_sum``) and 4-way ILP rows (``row_sum``), with the
kernel's ``float_vector_lanes``. PyTorch's thread count matters only for a reference-path
reduction of >= 32768 elements to a single value (``MeanParams.intra_op_threads``); splitting
output columns between threads keeps each column's order (checked with 2 threads on
torchvision's head shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engines.aten_pooling import AverageKernel, Windows
from ..engines.base import Engine
from ..errors import ShapeError, UnsupportedError
from ..layout import (is_channels_last, reorder_dimensions, suggests_channels_last,
                      to_channels_last, to_contiguous)
from ..qparams import QParams, QuantizedArray
from ..requantize import DivideFloat32
from ..rounding import f32
from ..trace import apply_steps, observing, record
from ._average import (average_windows, input_values, laid_out, output_qparams_for,
                       require_float32_kernel, source_axes, source_text, upstream_from)
from ._registry import graph_op, observed_stages
from .quantize import dequantize, output_qparams_of, quantize_per_tensor

_LEVELS = 4  # SumKernel.cpp multi_row_sum num_levels
_ILP = 4  # SumKernel.cpp row_sum ilp_factor and the outer-sum row blocks (nrows)


@dataclass(frozen=True)
class MeanParams:
    """``dim``: the dims as given (None = all; their literal order matters to the kernel choice,
    e.g. QNNPACK's ``[2, 3]``); ``keepdim``; ``engine``: the ``Engine`` whose ``"mean"`` kernel
    runs it (chosen per call); ``intra_op_threads``: PyTorch's ``torch.get_num_threads()``,
    which changes the float sum of the reference kernel when it reduces a tensor of >= 32768
    elements to ONE value (TensorIterator ``two_pass_reduction``: per-thread partial sums of
    ``ceil(numel / threads)``-element chunks, then their sum)."""

    dim: tuple[int, ...] | None
    keepdim: bool
    engine: Engine
    intra_op_threads: int = 1
    output_qparams: QParams | None = None
    """The output's qparams where they differ from the input's (None: the input's), for a kernel
    whose paths rescale (``AveragePath.rescales``)."""

    @property
    def inexact(self) -> str:
        """Why this op's kernel on its engine is not bit-exact ("": exact;
        ``Engine.inexact_kernels``)."""
        return self.engine.inexact_kernels.get("mean", "")


def prepare_mean(dim=None, keepdim: bool = False, dtype=None, *, engine,
                 intra_op_threads: int = 1, output_qparams: QParams | None = None) -> MeanParams:
    """Validate ``mean``'s arguments for ``engine`` (a name or an ``Engine``)."""
    from ..engines import get_engine

    if int(intra_op_threads) < 1:
        raise UnsupportedError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
    if dtype is not None:
        raise UnsupportedError(f"quantized mean with dtype={dtype!r}: only the input's dtype "
                               "(dtype=None) is supported")
    if isinstance(dim, (int, np.integer)):
        dim = (int(dim),)
    elif dim is not None:
        dim = tuple(int(d) for d in dim)
    return MeanParams(dim, bool(keepdim), get_engine(engine), int(intra_op_threads),
                      output_qparams)


def reduced_dims(shape, dim) -> tuple[int, ...]:
    """The sorted, wrapped dims ``dim`` reduces (all for None or ``[]``); ATen's checks."""
    ndim = len(shape)
    if not dim:
        return tuple(range(ndim))
    wrapped = []
    for d in dim:
        if not -max(ndim, 1) <= d < max(ndim, 1):
            raise ShapeError(f"mean: dim {d} out of range for a {ndim}-D input")
        wrapped.append(d % max(ndim, 1))
    if len(set(wrapped)) != len(wrapped):
        raise ShapeError(f"mean: dim {list(dim)} appears multiple times in the list of dims")
    return tuple(sorted(wrapped))


def _output_shape(shape, reduced, keepdim):
    if keepdim:
        return tuple(1 if d in reduced else s for d, s in enumerate(shape))
    return tuple(s for d, s in enumerate(shape) if d not in reduced)


def mean_kernel(x: QuantizedArray, p: MeanParams):
    """The kernel description the engine runs for ``mean(x)`` (an ``AverageKernel`` or a
    ``FloatMeanKernel``; refused where PyTorch raises)."""
    values = x.values
    reduced = reduced_dims(values.shape, p.dim)
    out_shape = _output_shape(values.shape, reduced, p.keepdim)
    return p.engine.kernel("mean", p.dim, reduced, out_shape, x.dtype, values)


def _record_group(label: str, formula: str, result: np.ndarray, values: np.ndarray, reduced,
                  keepdim: bool, count: int, **shown) -> None:
    """Report a per-output event with the group's size and first element (``from_k``; the
    ``formula`` names it ``{first}``)."""
    if not observing():
        return
    kept = iter(range(result.ndim))
    axes = []
    for d in range(values.ndim):
        if d in reduced:
            axes.append(np.int64(0))
            if keepdim:
                next(kept)
        else:
            axis = next(kept)
            axes.append(np.arange(result.shape[axis]).reshape(
                [-1 if k == axis else 1 for k in range(result.ndim)]))
    record(label, formula.replace("{first}", source_text(values.ndim)), result, N=count,
           dims=list(reduced), **source_axes(result.shape, 0, axes), **shown)


def mean(x, p: MeanParams):
    """Quantized ``mean`` over ``p.dim`` (see the module docstring for the kernels). A float32
    ``x`` runs on an engine's float32 kernel (a PT2E model's float op) and stays float."""
    values, dtype = input_values(x)
    reduced = reduced_dims(values.shape, p.dim)
    count = math.prod(values.shape[d] for d in reduced)
    if count == 0 or values.size == 0:
        raise ShapeError(f"mean of an empty quantized tensor (shape {values.shape})")
    out_shape = _output_shape(values.shape, reduced, p.keepdim)
    kernel = p.engine.kernel("mean", p.dim, reduced, out_shape, dtype, values)
    record("mean: kernel", "the kernel that runs this call", None, kernel=kernel.name,
           source=kernel.source)
    require_float32_kernel("mean", kernel, x)
    if getattr(kernel, "runs_in_float32", False):
        return float_mean(x, kernel, reduced, out_shape, p.engine, p.output_qparams,
                          p.intra_op_threads)
    if isinstance(kernel, AverageKernel):
        sums = values.astype(np.int64).sum(axis=reduced).reshape(out_shape)
        _record_group("mean: group sum", "S = sum of the {N} elements of dims {dims} from "
                      "{first} (exact)", sums, values, reduced, p.keepdim, count)
        windows = Windows(np.int64(count), np.int64(count), ())
        output = output_qparams_for("mean", kernel, x, p.output_qparams)
        out = average_windows("mean", kernel, sums, windows, x, values, 0, p.output_qparams)
        return QuantizedArray(laid_out("mean", kernel.output, out.astype(output.dtype.numpy_dtype),
                                       values), output)
    output_qparams_for("mean", kernel, x, p.output_qparams)  # the reference path keeps them
    floats = dequantize(x)
    floats = to_channels_last(floats) if suggests_channels_last(values) else to_contiguous(floats)
    total = _cascade_sum(floats, reduced, kernel.float_vector_lanes,
                         p.intra_op_threads).reshape(out_shape)
    _record_group("mean: float sum", "at::sum of the {N} dequantized elements of dims {dims} "
                  "from {first}: float32, in SumKernel.cpp's cascade order ({lanes} float "
                  "lanes)", total, values, reduced, p.keepdim, count,
                  lanes=kernel.float_vector_lanes)
    averaged = apply_steps(total, (DivideFloat32("divided by N (div_)", divisor=f32(count)),),
                           prefix="mean: ")
    result = quantize_per_tensor(np.array(averaged, np.float32, order="C"), float(x.scale),
                                 int(x.zero_point), x.dtype)
    return QuantizedArray(to_contiguous(result.values), x.qparams)


def float_mean(x, kernel, reduced, out_shape, engine, output_qparams, threads: int = 1):
    """A mean in float32 between converts (a kernel with ``runs_in_float32`` and an ``order``):
    ``x`` dequantized by the engine's ``"dequantize"`` kernel, each group summed in
    ``kernel.order`` (``"sequential"``: from 0.0 in the logical C order; ``"aten cascade"``:
    ``_cascade_sum``; ``"inductor"``: ``kernel.summed_by`` with the layout and ``threads``),
    ``f32(sum / N)``, quantized to ``output_qparams`` (None: the input's) by the engine's
    ``"quantize"`` kernel; the output contiguous. A float32 ``x`` (a float op) gives the float32
    mean itself."""
    from .quantize import _quantize

    quantized = isinstance(x, QuantizedArray)
    values = x.values if quantized else x
    count = math.prod(values.shape[d] for d in reduced)
    floats = dequantize(x, engine.kernel("dequantize", x.qparams, values.ndim)) if quantized \
        else x
    if kernel.order == "sequential":
        kept = [d for d in range(values.ndim) if d not in reduced]
        grouped = np.transpose(floats, kept + list(reduced)).reshape(-1, count)
        total = np.zeros(grouped.shape[0], np.float32)
        for k in range(count):
            total = f32(total + grouped[:, k])
    elif kernel.order == "inductor":
        if values.ndim != 4 or tuple(sorted(reduced)) != (2, 3):
            raise UnsupportedError(f"{kernel.name}: only the spatial mean of a 4-D tensor is "
                                   "modelled")
        total = kernel.summed_by(floats, is_channels_last(values), threads)
    elif kernel.order == "aten cascade":
        total = _cascade_sum(to_contiguous(floats), reduced, kernel.float_vector_lanes)
    else:
        raise UnsupportedError(f"mean: summation order {kernel.order!r} is not known")
    total = np.asarray(total, np.float32).reshape(out_shape)
    _record_group("mean: float sum", "sum of the {N} dequantized elements of dims {dims} from "
                  "{first}: float32, " + kernel.order + " order", total, values, reduced,
                  len(out_shape) == values.ndim, count)
    averaged = apply_steps(total, (DivideFloat32("divided by N", divisor=f32(count)),),
                           prefix="mean: ")
    averaged = np.ascontiguousarray(averaged, np.float32)
    if not quantized:
        return averaged
    output_qparams = output_qparams or x.qparams
    return _quantize(averaged, output_qparams,
                     engine.kernel("quantize", output_qparams, averaged.ndim))


# --- ATen's float32 cascade sum (native/cpu/SumKernel.cpp) -----------------------------------


def _ceil_log2(value: int) -> int:
    return 0 if value <= 1 else int(value - 1).bit_length()


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """``multi_row_sum``: sum over axis 0 through a 4-level cascade of ``2^p``-row blocks."""
    size = rows.shape[0]
    power = max(4, _ceil_log2(size) // _LEVELS)
    step, mask = 1 << power, (1 << power) - 1
    acc = [np.zeros(rows.shape[1:], np.float32) for _ in range(_LEVELS)]
    i = 0
    while i + step <= size:
        for j in range(step):
            acc[0] = f32(acc[0] + rows[i + j])
        i += step
        for level in range(1, _LEVELS):
            acc[level] = f32(acc[level] + acc[level - 1])
            acc[level - 1] = np.zeros_like(acc[level - 1])
            if i & (mask << (level * power)):
                break
    for j in range(i, size):
        acc[0] = f32(acc[0] + rows[j])
    for level in range(1, _LEVELS):
        acc[0] = f32(acc[0] + acc[level])
    return acc[0]


def _row_sum(rows: np.ndarray) -> np.ndarray:
    """``row_sum``: 4 interleaved partial sums (``multi_row_sum`` of ``size/4`` rows of 4), the
    leftover rows into the first, then the partials added in order."""
    size = rows.shape[0]
    blocks = size // _ILP
    partial = _multi_row_sum(rows[:blocks * _ILP].reshape((blocks, _ILP) + rows.shape[1:]))
    first = partial[0]
    for j in range(blocks * _ILP, size):
        first = f32(first + rows[j])
    for k in range(1, _ILP):
        first = f32(first + partial[k])
    return first


def _columns(rows: np.ndarray, groups) -> np.ndarray:
    """Sum ``rows`` (reduced axis 0, columns axis 1) with ``groups``: (width, function) blocks."""
    out = np.zeros(rows.shape[1:], np.float32)
    j = 0
    for width, function in groups:
        while width and j + width <= rows.shape[1]:
            out[j:j + width] = function(rows[:, j:j + width])
            j += width
    for column in range(j, rows.shape[1]):
        out[column] = _row_sum(rows[:, column])
    return out


def _inner_rows(rows: np.ndarray, lanes: int) -> np.ndarray:
    """``vectorized_inner_sum`` of each column of ``rows`` (axis 0 contiguous, reduced)."""
    size = rows.shape[0]
    vectors = size // lanes
    lane_sums = _row_sum(rows[:vectors * lanes].reshape((vectors, lanes) + rows.shape[1:]))
    total = np.zeros(rows.shape[1:], np.float32)
    for k in range(vectors * lanes, size):
        total = f32(total + rows[k])
    for lane in range(lanes):
        total = f32(total + lane_sums[lane])
    return total


def _iterator_dims(shape, in_strides, reduced):
    """TensorIterator's reordered (innermost first) and coalesced dims of the sum:
    ``[(size, input stride, reduced)]`` (output: contiguous, stride 0 on reduced dims)."""
    out_strides, step = [0] * len(shape), 1
    for d in reversed(range(len(shape))):
        if d not in reduced:
            out_strides[d] = step
            step *= shape[d]

    def should_swap(a, b):
        if (out_strides[a] == 0) != (out_strides[b] == 0):
            return 1 if out_strides[b] == 0 else -1
        for strides in (out_strides, in_strides):
            if strides[a] == 0 or strides[b] == 0:
                continue
            if strides[a] != strides[b]:
                return -1 if strides[a] < strides[b] else 1
        return 0

    perm = reorder_dimensions(len(shape), should_swap)
    dims = [[shape[d], in_strides[d], out_strides[d]] for d in perm]
    merged = [dims[0]] if dims else []
    for size, in_stride, out_stride in dims[1:]:
        last = merged[-1]
        if last[0] == 1 or size == 1 or (last[0] * last[1] == in_stride
                                         and last[0] * last[2] == out_stride):
            if last[0] == 1:
                last[1], last[2] = in_stride, out_stride
            last[0] *= size
        else:
            merged.append([size, in_stride, out_stride])
    return [(size, in_stride, out_stride == 0 and size > 1) for size, in_stride, out_stride
            in merged]


def _loop2d(block: np.ndarray, stride0: int, stride1: int, lanes: int) -> np.ndarray:
    """``cascade_sum``'s 2-D loop: ``block`` (size0 reduced, size1, ...) -> per column sums."""
    size0, size1 = block.shape[:2]
    if stride0 == 1 and size0 >= lanes:  # vectorized_inner_sum
        return _inner_rows(block, lanes)
    if stride1 == 1 and size1 >= lanes:  # vectorized_outer_sum
        return _columns(block, [(_ILP * lanes, _multi_row_sum), (lanes, _row_sum)])
    if stride0 < stride1:  # scalar_inner_sum
        return _row_sum(block)
    return _columns(block, [(_ILP, _multi_row_sum)])  # scalar_outer_sum


_GRAIN_SIZE = 32768  # at::internal::GRAIN_SIZE


def _cascade_sum(floats: np.ndarray, reduced, lanes: int, threads: int = 1) -> np.ndarray:
    """``at::sum(floats, reduced)`` in float32, in SumKernel.cpp's order; returns the sums
    flattened in the (contiguous) output's order. Several threads change the order only for a
    reduction to one value (``two_pass_reduction``, TensorIterator.cpp); splitting the output
    columns (``parallel_dim_reduction``) keeps each column's order."""
    out_count = math.prod(s for d, s in enumerate(floats.shape) if d not in reduced)
    if threads > 1 and out_count == 1 and floats.size >= _GRAIN_SIZE:
        used = min(threads, -(-floats.size // _GRAIN_SIZE))  # at::parallel_for (OpenMP)
        chunk = -(-floats.size // used)
        flat = np.ravel(floats, order="K")  # a dense full reduction coalesces to one dim
        partials = np.zeros(threads, np.float32)
        for t in range(used):
            piece = flat[t * chunk:(t + 1) * chunk]
            partials[t] = _loop2d(piece[:, None], 1, 0, lanes)[0]
        return _loop2d(partials[:, None], 1, 0, lanes).reshape(-1)
    itemsize = floats.itemsize
    in_strides = [s // itemsize for s in floats.strides]
    dims = _iterator_dims(floats.shape, in_strides, set(reduced)) or [(1, 0, False)]
    if len(dims) == 1:
        dims = dims + [(1, 0, False)]
    sizes = [size for size, _, _ in dims]
    view = np.lib.stride_tricks.as_strided(
        floats, sizes[::-1], [stride * itemsize for _, stride, _ in dims][::-1])
    view = np.transpose(view, list(range(len(sizes)))[::-1])  # axes innermost first
    if not dims[0][2]:  # no true reduction: out = 0 + x
        return f32(np.transpose(view) + np.float32(0)).reshape(-1)
    # outer reduced dims (after d0, d1) accumulate in TensorIterator's counter order (d2
    # fastest); outer kept dims are independent: batch them
    outer_reduced = [a for a in range(2, len(dims)) if dims[a][2]]
    outer_kept = [a for a in range(2, len(dims)) if not dims[a][2]]
    block = np.transpose(view, [0, 1] + outer_reduced[::-1] + outer_kept[::-1])
    count = math.prod(sizes[a] for a in outer_reduced)
    block = block.reshape(sizes[0], sizes[1], count, -1)
    per_column = _loop2d(block, dims[0][1], dims[1][1], lanes)  # (size1, count, kept)
    if dims[1][2]:  # the columns are reduced too: each store adds into the same output
        total = np.zeros(per_column.shape[2:], np.float32)
        for r in range(count):
            for j in range(sizes[1]):
                total = f32(total + per_column[j, r])
        return total.reshape(-1)
    total = np.zeros((sizes[1],) + per_column.shape[2:], np.float32)
    for r in range(count):
        total = f32(total + per_column[:, r])
    return total.T.reshape(-1)  # kept dims outermost first, d1 innermost


# --- graph op ------------------------------------------------------------------------------


@graph_op("mean", "quantized mean over dims (torch.mean, Tensor.mean)")
class MeanOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = input_qparams[0]  # None: a float32 input (a PT2E model's float op)
        a = node.attrs
        output = output_qparams_of(node)  # a PT2E mean's own output qparams, if any
        return prepare_mean(a.get("dim"), a.get("keepdim", False), a.get("dtype"), engine=engine,
                            intra_op_threads=a.get("intra_op_threads", 1),
                            output_qparams=output), output or qparams

    @staticmethod
    def run(params, inputs):
        return mean(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        stages = observed_stages(MeanOp.run, params, inputs, result, index)
        return stages, upstream_from(stages, np.shape(getattr(inputs[0], "values", inputs[0])))


# --- torch.max(x, dim): values and indices ------------------------------------------------------


def max_dim(x, dim: int, keepdim: bool = False):
    """``torch.max(x, dim, keepdim)``: ``(values, indices)``. Exact on integers and floats: a
    quantized tensor compares its codes (the scale is positive, so the order is the values'),
    keeps its qparams; the index is the first maximum (NumPy's ``argmax``, also for a NaN,
    which wins as in ATen's ``max`` reduction)."""
    values = x.values if isinstance(x, QuantizedArray) else np.asarray(x)
    if values.ndim == 0:
        raise ShapeError("torch.max(x, dim) of a 0-d tensor is not supported")
    axis = int(dim) % values.ndim
    indices = np.expand_dims(np.argmax(values, axis=axis), axis)
    picked = np.take_along_axis(values, indices, axis=axis)
    if not keepdim:
        picked, indices = np.squeeze(picked, axis), np.squeeze(indices, axis)
    picked = np.ascontiguousarray(picked)
    if isinstance(x, QuantizedArray):
        picked = QuantizedArray(picked, x.qparams)
    return picked, np.ascontiguousarray(indices).astype(np.int64)


@graph_op("max_dim", "torch.max(x, dim, keepdim) / x.max(dim): (values, indices); attrs dim, "
          "keepdim")
class MaxDimOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return (int(node.attrs["dim"]), bool(node.attrs.get("keepdim", False))), \
            (input_qparams[0] if input_qparams else None)

    @staticmethod
    def run(params, inputs):
        return max_dim(inputs[0], *params)

