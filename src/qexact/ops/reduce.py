"""Quantized ``torch.mean`` / ``Tensor.mean(dim, keepdim)``: the output keeps the input's scale and
zero point, and PyTorch picks one of three kernels (aten/src/ATen/native/quantized/cpu/
ReduceOps.cpp ``mean_out_quantized_cpu``), in this order:

===============================  ================================================================
kernel (when)                    output
===============================  ================================================================
QNNPACK global average pool      ``clamp(rne(f32(A * f32(s / f32(s * N)))) + z)``, ``A = S - N*z``
  (qnnpack engine, quint8, 4-D,  (q8gavgpool, as QNNPACK's avgpool: ``pooling.qnnpack_average``);
  ``dim`` literally ``[2, 3]``)  output contiguous, ``(N, C)`` or ``(N, C, 1, 1)``
inner fast path (input NCHW-     ``rne(f32(f32(S) / f32(N)))`` on the raw integers (no zero point,
  contiguous, reduced dims the   no clamp needed): ``qmean_inner_dim_kernel`` in
  innermost ones, or all dims)   kernels/QuantizedOpKernels.cpp
reference (anything else, e.g.   dequantize (``f32(s * (q - z))``), float32 ``at::sum`` (ATen's
  channels_last ``x.mean([2,     cascade sum, native/cpu/SumKernel.cpp, in TensorIterator's loop
  3])`` on fbgemm/x86/onednn)    order), ``div_(N)`` in float32, ``quantize_per_tensor``
===============================  ================================================================

``S`` is the exact integer sum of the group, ``N`` its element count. The float32 sum of the
reference path depends on the order ATen adds in; ``_cascade_sum`` replays TensorIterator's
dimension ordering and coalescing (reduced dims innermost, then by strides) and SumKernel's
``vectorized_inner_sum`` / ``vectorized_outer_sum`` / ``scalar_*_sum`` loops with their
4-level cascades (``multi_row_sum``) and 4-way ILP rows (``row_sum``). PyTorch's thread count
matters only for a reference-path reduction of >= 32768 elements to a single value
(``MeanParams.intra_op_threads``); splitting output columns between threads keeps each column's
order (checked with 2 threads on torchvision's head shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..engines.aten import kernel_capability
from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ..rounding import f32, round_half_even
from ..stages import Stage
from ._registry import graph_op
from .pooling import qnnpack_average
from .quantize import dequantize, quantize_per_tensor, require_quantized
from ..layout import (is_channels_first_contiguous, reorder_dimensions, suggests_channels_last,
                    to_channels_last, to_contiguous)

_LEVELS = 4  # SumKernel.cpp multi_row_sum num_levels
_ILP = 4  # SumKernel.cpp row_sum ilp_factor and the outer-sum row blocks (nrows)


@dataclass(frozen=True)
class MeanNumerics:
    """Engine data for quantized mean.

    - ``qnnpack_global_average_pool``: quint8 4-D ``mean(dim=[2, 3])`` runs QNNPACK's global
      average pooling (ReduceOps.cpp ``qnnpack_mean``; the qnnpack engine only).
    - ``float_vector_lanes``: ``Vectorized<float>::size()`` of the SumKernel build that runs (8
      for AVX2 and the default capability; AVX512 CPUs run the AVX2 build, SumKernel.cpp
      registers no AVX512 one): the column blocks of SumKernel's loops.
    """

    qnnpack_global_average_pool: bool
    float_vector_lanes: int


def mean_numerics(engine) -> MeanNumerics:
    """From the engine's data: whether it hands ``mean`` to QNNPACK's global average pooling,
    and ATen's float vector width at its capability."""
    return MeanNumerics("global_average_pool" in engine.qnnpack_operators,
                        16 if kernel_capability(engine.aten_capability) == "avx512" else 8)


@dataclass(frozen=True)
class MeanParams:
    """``dim``: the dims as given (None = all; their literal order matters to the qnnpack test);
    ``keepdim``; ``numerics``: the engine's ``MeanNumerics``; ``intra_op_threads``: PyTorch's
    ``torch.get_num_threads()``, which changes the float sum of the reference kernel when it
    reduces a tensor of >= 32768 elements to ONE value (TensorIterator ``two_pass_reduction``:
    per-thread partial sums of ``ceil(numel / threads)``-element chunks, then their sum)."""

    dim: tuple[int, ...] | None
    keepdim: bool
    numerics: MeanNumerics
    intra_op_threads: int = 1


def prepare_mean(dim=None, keepdim: bool = False, dtype=None, engine="fbgemm",
                 intra_op_threads: int = 1) -> MeanParams:
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
    return MeanParams(dim, bool(keepdim), mean_numerics(get_engine(engine)),
                      int(intra_op_threads))


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


def mean_kernel(x: QuantizedArray, p: MeanParams) -> str:
    """Which kernel PyTorch runs: ``"qnnpack"``, ``"inner"`` or ``"reference"``."""
    values = x.values
    if (p.numerics.qnnpack_global_average_pool and x.dtype.name == "quint8"
            and p.dim is not None and values.ndim == 4 and p.dim == (2, 3)):
        return "qnnpack"
    reduced = reduced_dims(values.shape, p.dim)
    innermost = reduced == tuple(range(values.ndim - len(reduced), values.ndim))
    return "inner" if innermost and is_channels_first_contiguous(values) else "reference"


def _linear_into(flat: np.ndarray, shape, source: np.ndarray) -> np.ndarray:
    """``flat`` written in memory order into an array of ``shape`` allocated in
    ``source.suggest_memory_format()`` (channels_last only when ``shape`` is 4-D)."""
    if len(shape) == 4 and suggests_channels_last(source):
        n, c, h, w = shape
        return to_channels_last(flat.reshape(n, h, w, c).transpose(0, 3, 1, 2))
    return to_contiguous(flat.reshape(shape))


def _output_shape(shape, reduced, keepdim):
    if keepdim:
        return tuple(1 if d in reduced else s for d, s in enumerate(shape))
    return tuple(s for d, s in enumerate(shape) if d not in reduced)


def mean(x: QuantizedArray, p: MeanParams) -> QuantizedArray:
    """Quantized ``mean`` over ``p.dim`` (see the module docstring for the three kernels)."""
    values = x.values
    reduced = reduced_dims(values.shape, p.dim)
    count = math.prod(values.shape[d] for d in reduced)
    if count == 0 or values.size == 0:
        raise ShapeError(f"mean of an empty quantized tensor (shape {values.shape})")
    kernel = mean_kernel(x, p)
    out_shape = _output_shape(values.shape, reduced, p.keepdim)
    if kernel == "qnnpack":
        sums = values.astype(np.int64).sum(axis=(2, 3))
        out = qnnpack_average(sums, count, x, values.shape[2:])
        return QuantizedArray(to_contiguous(out.reshape(out_shape)), x.qparams)
    if kernel == "inner":
        if suggests_channels_last(values) and len(out_shape) != values.ndim:
            # e.g. a conv output with a 1x1 image: strides (C, 1, C, C) are contiguous *and*
            # suggest channels_last; qmean_inner_dim_kernel allocates its rank-2/3 output in
            # that format and PyTorch raises
            raise UnsupportedError(
                f"mean over dims {list(reduced)} without keepdim of a tensor of shape "
                f"{values.shape} whose strides suggest channels_last: PyTorch's "
                "qmean_inner_dim_kernel raises 'required rank 4 tensor to use channels_last "
                "format' here, so the model cannot run in PyTorch either (keepdim=True, or "
                "flatten first, works)")
        sums = values.astype(np.int64).sum(axis=reduced)
        rounded = round_half_even(f32(f32(sums) / np.float32(count)))
        out = np.asarray(rounded).astype(np.int64).astype(x.dtype.numpy_dtype)
        # the kernel writes the result's bytes in order into suggest_memory_format()
        return QuantizedArray(_linear_into(out.reshape(-1), out_shape, values), x.qparams)
    floats = dequantize(x)
    floats = to_channels_last(floats) if suggests_channels_last(values) else to_contiguous(floats)
    total = _cascade_sum(floats, reduced, p.numerics.float_vector_lanes, p.intra_op_threads)
    averaged = f32(total / np.float32(count)).reshape(out_shape)
    result = quantize_per_tensor(np.array(averaged, np.float32, order="C"), float(x.scale),
                                 int(x.zero_point), x.dtype)
    return QuantizedArray(to_contiguous(result.values), x.qparams)


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

_RULES = {
    "qnnpack": "q = clamp(rne(f32(A * f32(s / f32(s * N)))) + z), A = S - N*z  (QNNPACK gavgpool)",
    "inner": "q = rne(f32(f32(S) / f32(N)))  (qmean_inner_dim_kernel, raw integers)",
    "reference": "q = quantize_per_tensor(f32(sum_f32(f32(s * (q_i - z))) / f32(N)), s, z)  "
                 "(dequantize, at::mean: cascade sum in SumKernel.cpp order, quantize)",
}


@graph_op("mean", "quantized mean over dims (torch.mean, Tensor.mean)")
class MeanOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = require_quantized(node, input_qparams)
        a = node.attrs
        return prepare_mean(a.get("dim"), a.get("keepdim", False), a.get("dtype"), engine=engine,
                            intra_op_threads=a.get("intra_op_threads", 1)), qparams

    @staticmethod
    def run(params, inputs):
        return mean(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        values = x.values
        reduced = reduced_dims(values.shape, params.dim)
        lead = []
        position = 0
        for d in range(values.ndim):
            if d in reduced:
                lead.append(slice(None))
                if params.keepdim:
                    position += 1
            else:
                lead.append(int(index[position]))
                position += 1
        group = values[tuple(lead)]
        taps = [tuple(int(i) for i in np.unravel_index(k, group.shape)) for k in range(group.size)]
        full = []
        for tap in taps:
            inner = iter(tap)
            full.append([next(inner) if isinstance(part, slice) else part for part in lead])
        total = int(group.astype(np.int64).sum())
        kernel = mean_kernel(x, params)
        stages = [Stage("mean: group", "the reduced elements of this output",
                        {"taps": full, "values": [int(v) for v in group.reshape(-1)]}),
                  Stage("mean: sum", "S = exact integer sum; N = group size",
                        {"N": int(group.size), "z": int(x.zero_point)}, total),
                  Stage("mean: divide and round", _RULES[kernel], {"kernel": kernel},
                        result.values[tuple(index)])]
        return stages, [(0, tuple(full[0]))]
