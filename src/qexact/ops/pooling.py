"""Quantized pooling: max, average and adaptive average/max pools in 1, 2 and 3 spatial dims.

A quantized pool keeps its input's scale and zero point. Max pools only pick integers; average
pools sum integers exactly and then round a float32 product, and *how* depends on the kernel
PyTorch picks, i.e. on the engine, the ATen CPU capability and the input's memory layout
(``qexact.engines.pooling_numerics``). With ``A = sum_valid x - size * z`` (an exact integer), ``D``
the divisor and ``m = f32(1 / D)``:

===========================  ==============================================================
kernel (torch source)        output
===========================  ==============================================================
avg NCHW (q_avgpool.cpp,     ``clamp(rne(f32(f32(A * m) + z)))``, no FMA, zp before rounding
  avg_pool2d_out_frame)
avg channels_last, SIMD      ``clamp(rne(f32(A * m)) + z)`` (QuantizeAvx2: zp after rounding)
  channels (QuantizedOp-
  Kernels.cpp)
avg channels_last, other     ``clamp(rne(f32(f32(A * inv) + z)))``, ``inv = f32(1 / f32(1 / m))``
  channels                   (quantize_val)
avg qnnpack (quint8, not     ``D = kH * kW`` always, padding counts as z; ``clamp(rne(f32(A *
  ceil_mode)                 f32(s / f32(s * D)))) + z)``
adaptive NCHW                ``rne(f32(S_raw * f32(f32(1/kH) / kW)))``: no zp, no clamp
  (AdaptiveAveragePooling.cpp)
adaptive channels_last       SIMD channels ``rne(fmaf(A, inv, z))``, others as avg above
adaptive 3-D to 1x1x1        no pooling kernel: quantized ``mean`` over the last 3 dims
  (AdaptiveAveragePooling-   (``ops.reduce``: inner fast path ``rne(f32(f32(S) / f32(N)))``
  3d.cpp)                    for NCDHW, dequantize / float sum / quantize for channels_last)
===========================  ==============================================================

The memory layout is carried by the NumPy array's strides, as PyTorch carries it by the tensor's:
an array that is channels_last-contiguous (``is_channels_last``) takes the channels_last kernel
and gives a channels_last result (the layout helpers live in ``ops.shape``). An unbatched
(C, D, H, W) input to a 3-D adaptive pool that is channels_last-contiguous in the 4-D sense (e.g.
any contiguous one with D == 1) takes that kernel too, which misreads and misplaces its values
(``_unbatched_simd_reads``, ``_unbatched_ndhwc_result``). The graph ops and their explain hooks
are in ``ops.pool_graph``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..engines.pooling_numerics import PoolingNumerics, pooling_numerics
from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ..rounding import f32, fma_float32, round_half_even
from ..layout import (is_channels_first_contiguous, is_channels_last,  # noqa: F401 (re-exported)
                    nhwc_kernel_result, suggests_channels_last, to_channels_last, to_contiguous)

if TYPE_CHECKING:
    from .reduce import MeanParams


# --- windows ------------------------------------------------------------------------------


def pooling_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int,
                        ceil_mode: bool) -> int:
    """ATen ``pooling_output_shape`` (aten/src/ATen/native/Pool.h)."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _tuple(value, n: int, name: str, default=None) -> tuple[int, ...]:
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        value = default
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            value = tuple(value) * n
        if len(value) != n:
            raise ShapeError(f"{name} must be an int or {n} ints, got {value!r}")
        return tuple(int(v) for v in value)
    return (int(value),) * n


@dataclass(frozen=True)
class PoolParams:
    """A max or average pool over the last ``len(kernel_size)`` dims (1, 2 or 3).

    ``kind``: ``"max"`` or ``"avg"``; ``kernel_size``, ``stride``, ``padding``, ``dilation`` per
    spatial dim; ``ceil_mode``; for avg: ``count_include_pad``, ``divisor_override`` (None or int);
    ``numerics``: the engine's ``PoolingNumerics``.
    """

    kind: str
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: int | None
    numerics: PoolingNumerics


def prepare_pool(kind: str, spatial_dims: int, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, count_include_pad=True, divisor_override=None,
                 engine="fbgemm") -> PoolParams:
    """Validate a pool's arguments as ATen does (Pool.h ``pool2d_shape_check``)."""
    from ..engines import get_engine

    if kind not in ("max", "avg"):
        raise UnsupportedError(f"pool kind {kind!r}; supported: 'max', 'avg'")
    kernel = _tuple(kernel_size, spatial_dims, "kernel_size")
    strides = _tuple(stride, spatial_dims, "stride", default=kernel)
    pads = _tuple(padding, spatial_dims, "padding")
    dilations = _tuple(dilation, spatial_dims, "dilation")
    if min(kernel) <= 0 or min(strides) <= 0 or min(dilations) <= 0 or min(pads) < 0:
        raise ShapeError(f"{kind}_pool: kernel {kernel}, stride {strides} and dilation "
                         f"{dilations} must be positive and padding {pads} non-negative")
    if any(p > k // 2 for p, k in zip(pads, kernel)):
        raise ShapeError(f"pad should be at most half of effective kernel size, got padding "
                         f"{pads} for kernel {kernel}")
    if kind == "avg" and dilations != (1,) * spatial_dims:
        raise ShapeError("avg_pool has no dilation")
    if divisor_override is not None and int(divisor_override) == 0:
        raise ShapeError("divisor must be not zero")
    return PoolParams(kind, kernel, strides, pads, dilations, bool(ceil_mode),
                      bool(count_include_pad),
                      None if divisor_override is None else int(divisor_override),
                      pooling_numerics(get_engine(engine)))


def _axis_windows(size, kernel, stride, pad, dilation, ceil_mode):
    """Per output position: first tap, and the padded-window end (ATen's ``hend`` before clipping)."""
    out = pooling_output_size(size, kernel, pad, stride, dilation, ceil_mode)
    if out <= 0:
        raise ShapeError(f"pool output size {out} is too small for input size {size}")
    start = np.arange(out) * stride - pad
    return out, start


def _box_sums(values: np.ndarray, starts, ends) -> np.ndarray:
    """Sums of ``values`` over boxes ``[starts[d][o], ends[d][o])`` along the trailing dims."""
    total = values.astype(np.int64)
    spatial = len(starts)
    for axis_offset, (start, end) in enumerate(zip(starts, ends)):
        axis = values.ndim - spatial + axis_offset
        cumulative = np.cumsum(total, axis=axis)
        zero_shape = list(cumulative.shape)
        zero_shape[axis] = 1
        cumulative = np.concatenate([np.zeros(zero_shape, np.int64), cumulative], axis=axis)
        total = np.take(cumulative, end, axis=axis) - np.take(cumulative, start, axis=axis)
    return total


def _outer(vectors) -> np.ndarray:
    result = np.ones((), np.int64)
    for vector in vectors:
        result = np.multiply.outer(result, np.asarray(vector, np.int64))
    return result


def avg_pool_sums(values: np.ndarray, p: PoolParams):
    """``(S, size, pool_size)``: raw sums over valid taps, valid tap counts, padded window sizes."""
    spatial = len(p.kernel_size)
    starts, ends, sizes, pool_sizes = [], [], [], []
    for axis_offset in range(spatial):
        size = values.shape[values.ndim - spatial + axis_offset]
        kernel, stride, pad = p.kernel_size[axis_offset], p.stride[axis_offset], p.padding[axis_offset]
        _, start = _axis_windows(size, kernel, stride, pad, 1, p.ceil_mode)
        end = np.minimum(start + kernel, size + pad)
        pool_sizes.append(end - start)
        start, end = np.maximum(start, 0), np.minimum(end, size)
        starts.append(start)
        ends.append(end)
        sizes.append(end - start)
    return _box_sums(values, starts, ends), _outer(sizes), _outer(pool_sizes)


def _channel_axis_broadcast(mask_channels: np.ndarray, ndim: int, spatial: int) -> np.ndarray:
    shape = [1] * ndim
    shape[ndim - spatial - 1] = -1
    return mask_channels.reshape(shape)


def _simd_channel_mask(channels: int, width: int) -> np.ndarray:
    """True for channels in the SIMD blocks: ``c < channels // width * width``."""
    if width <= 0:
        return np.zeros(channels, bool)
    return np.arange(channels) < channels // width * width


def _quantize_val(centered: np.ndarray, multiplier: np.ndarray, zero_point: int) -> np.ndarray:
    """``quantize_val(1.0f / m, z, A)`` (fbgemm::Quantize scalar): ``rne(f32(f32(A * inv) + z))``."""
    inverse = f32(np.float32(1.0) / f32(np.float32(1.0) / multiplier))
    return round_half_even(f32(f32(f32(centered) * inverse) + np.float32(zero_point)))


def average(sums, size, divisor, x: QuantizedArray, p: PoolParams, channels_last: bool,
            spatial: int) -> np.ndarray:
    """Requantize average-pool sums by the kernel PyTorch runs (see module docstring)."""
    zero_point = int(x.zero_point)
    dtype = x.dtype
    centered = sums - size * zero_point  # exact; |A| < 2^31 for any window ATen accepts
    multiplier = f32(1.0 / np.asarray(divisor, np.float64))  # f32(double(s/s) / D), s/s == 1
    if not channels_last:
        rounded = round_half_even(f32(f32(f32(centered) * multiplier) + np.float32(zero_point)))
    else:
        simd = round_half_even(f32(f32(centered) * multiplier)) + zero_point
        scalar = _quantize_val(centered, multiplier, zero_point)
        mask = _channel_axis_broadcast(
            _simd_channel_mask(x.values.shape[x.values.ndim - spatial - 1],
                               p.numerics.nhwc_avg_pool_simd_channels), sums.ndim, spatial)
        rounded = np.where(mask, simd, scalar)
    return np.clip(rounded, dtype.qmin, dtype.qmax).astype(dtype.numpy_dtype)


def _uses_qnnpack_avg(x: QuantizedArray, p: PoolParams) -> bool:
    return (p.numerics.qnnpack_avg_pool and x.dtype.name == "quint8" and not p.ceil_mode
            and len(p.kernel_size) == 2 and x.values.ndim == 4)


def qnnpack_average(sums, size, x: QuantizedArray, kernel_size) -> np.ndarray:
    """QNNPACK q8avgpool: padding counts as z, divisor ``kH*kW``, zp added after rounding.

    Source: pytorch aten/src/ATen/native/quantized/cpu/qnnpack/src/average-pooling.c
    (``pytorch_qnnp_compute_avgpool_quantization_params``) and the SSE2 q8avgpool micro-kernels.
    """
    zero_point = int(x.zero_point)
    scale = f32(x.scale)
    pool = math.prod(kernel_size)
    factor = f32(scale / f32(scale * f32(pool)))
    centered = sums - size * zero_point
    rounded = round_half_even(f32(f32(centered) * factor)) + zero_point
    return np.clip(rounded, 0, 255).astype(np.uint8)


def _strided_like(result: np.ndarray, channels_last: bool) -> np.ndarray:
    if channels_last and result.ndim in (4, 5):
        return to_channels_last(result)
    return to_contiguous(result)


def avg_pool(x: QuantizedArray, p: PoolParams) -> QuantizedArray:
    """Quantized ``avg_pool{1,2,3}d``: x (N, C, *spatial) or (C, *spatial); qparams kept."""
    spatial = len(p.kernel_size)
    values = x.values
    if values.ndim not in (spatial + 1, spatial + 2):
        raise ShapeError(f"avg_pool{spatial}d expects a {spatial + 1}-D or {spatial + 2}-D input, "
                         f"got shape {values.shape}")
    if spatial == 1:  # ATen: unsqueeze(-2), avg_pool2d, squeeze(-2)
        p2 = _as_2d(p)
        result = avg_pool(QuantizedArray(np.expand_dims(values, -2), x.qparams), p2)
        return QuantizedArray(np.squeeze(result.values, -2), x.qparams)
    sums, size, pool_size = avg_pool_sums(values, p)
    if spatial == 3 and values.ndim == 5:  # AveragePool3d.cpp: always the NDHWC kernel
        values = to_channels_last(values)
    if _uses_qnnpack_avg(x, p):
        if p.kernel_size == (1, 1):
            raise UnsupportedError("qnnpack avg_pool2d rejects a 1x1 kernel (QNNPACK "
                                   "pytorch_qnnp_create_average_pooling2d_nhwc_q8)")
        out = qnnpack_average(sums, size, x, p.kernel_size)
        return QuantizedArray(_strided_like(out, suggests_channels_last(values)), x.qparams)
    divisor = (p.divisor_override if p.divisor_override is not None
               else pool_size if p.count_include_pad else size)
    divisor = np.broadcast_to(np.asarray(divisor, np.int64), size.shape)
    channels_last = is_channels_last(values)
    out = average(sums, size, divisor, x, p, channels_last, spatial)
    return QuantizedArray(nhwc_kernel_result(out, values) if channels_last
                          else to_contiguous(out), x.qparams)


def _as_2d(p: PoolParams) -> PoolParams:
    return PoolParams(p.kind, (1,) + p.kernel_size, (1,) + p.stride, (0,) + p.padding,
                      (1,) + p.dilation, p.ceil_mode, p.count_include_pad, p.divisor_override,
                      p.numerics)


def max_pool(x: QuantizedArray, p: PoolParams) -> QuantizedArray:
    """Quantized ``max_pool{1,2,3}d``: the largest integer over the valid (dilated) taps."""
    spatial = len(p.kernel_size)
    values = x.values
    if values.ndim not in (spatial + 1, spatial + 2):
        raise ShapeError(f"max_pool{spatial}d expects a {spatial + 1}-D or {spatial + 2}-D input, "
                         f"got shape {values.shape}")
    if spatial == 1:  # Pooling.cpp quantized_max_pool1d: unsqueeze, max_pool2d, squeeze
        result = max_pool(QuantizedArray(np.expand_dims(values, -2), x.qparams), _as_2d(p))
        return QuantizedArray(np.squeeze(result.values, -2), x.qparams)
    if spatial == 3 and p.numerics.qnnpack_max_pool:
        raise UnsupportedError("QNNPACK backend doesn't support quantized_max_pool3d (Pooling.cpp)")
    clamp_taps = (p.numerics.qnnpack_max_pool and x.dtype.name == "quint8" and spatial == 2
                  and not p.ceil_mode)
    if clamp_taps and values.ndim != 4:
        raise ShapeError("qnnpack max_pool2d expects a 4-D input (qnnpack_maxpool2d)")
    if clamp_taps and tuple(p.kernel_size) == (1, 1):
        raise UnsupportedError("qnnpack max_pool2d with a 1x1 window: PyTorch raises (QNNPACK: "
                               "'1x1 pooling is meaningless', failed to create QNNPACK MaxPool "
                               "operator), so the model cannot run in PyTorch on qnnpack either")
    lowest = np.iinfo(values.dtype).min
    result = values
    for axis_offset in range(spatial):
        axis = values.ndim - spatial + axis_offset
        size = values.shape[axis]
        kernel, stride = p.kernel_size[axis_offset], p.stride[axis_offset]
        pad, dilation = p.padding[axis_offset], p.dilation[axis_offset]
        _, start = _axis_windows(size, kernel, stride, pad, dilation, p.ceil_mode)
        best = None
        for tap in range(kernel):
            position = start + tap * dilation
            if clamp_taps:  # QNNPACK: doz(o*s + j*d, pad) clamped to size - 1: never skipped
                position = np.clip(position, 0, size - 1)
            valid = (position >= 0) & (position < size)
            taken = np.take(result, np.clip(position, 0, size - 1), axis=axis)
            shape = [1] * result.ndim
            shape[axis] = -1
            taken = np.where(valid.reshape(shape), taken, lowest)
            best = taken if best is None else np.maximum(best, taken)
        result = best.astype(values.dtype)
    if clamp_taps:  # qy (channels_last).contiguous(input.suggest_memory_format())
        return QuantizedArray(_strided_like(result, suggests_channels_last(values)), x.qparams)
    if is_channels_last(values):  # the NHWC kernel writes into suggest_memory_format()
        return QuantizedArray(nhwc_kernel_result(result, values), x.qparams)
    return QuantizedArray(to_contiguous(result), x.qparams)


def pool(x: QuantizedArray, p: PoolParams) -> QuantizedArray:
    return max_pool(x, p) if p.kind == "max" else avg_pool(x, p)


# --- adaptive pools -----------------------------------------------------------------------


def adaptive_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """``[floor(f32(o*L)/O), ceil(f32((o+1)*L)/O))`` in float32, as AdaptiveAveragePooling.cpp."""
    index = np.arange(out, dtype=np.int64)
    start = np.floor(f32(f32(index * size) / np.float32(out))).astype(np.int64)
    end = np.ceil(f32(f32((index + 1) * size) / np.float32(out))).astype(np.int64)
    return start, end


@dataclass(frozen=True)
class AdaptivePoolParams:
    """An adaptive pool to ``output_size`` over the last ``len(output_size)`` dims.

    ``mean``: for 3-D pools, the engine's ``MeanParams`` of ``mean(dim=(-1, -2, -3),
    keepdim=True)``, which PyTorch runs instead of a pooling kernel when the output is 1x1x1
    (``uses_global_mean``); None for 1-D and 2-D pools.
    """

    kind: str
    output_size: tuple[int | None, ...]
    numerics: PoolingNumerics
    mean: MeanParams | None = None


# aten/src/ATen/native/AdaptiveAveragePooling3d.cpp adaptive_avg_pool3d_symint: an output of
# (1, 1, 1) is computed as input.mean({-1, -2, -3}, keepdim=true) -- quantized inputs included --
# and the result restrided to (C, 1, C, C, C) when the input suggests channels_last_3d. The 2-D
# shortcut (AdaptiveAveragePooling.cpp adaptive_avg_pool2d_symint) excludes quantized inputs,
# and 1-D pools go through 2-D: both always run the pooling kernels.
_GLOBAL_MEAN_DIMS = (-1, -2, -3)


def prepare_adaptive_pool(kind: str, spatial_dims: int, output_size,
                          engine="fbgemm", intra_op_threads: int = 1) -> AdaptivePoolParams:
    """``intra_op_threads`` (PyTorch's ``torch.get_num_threads()``) matters only to a 3-D pool
    to 1x1x1 that takes ``mean``'s reference path (see ``reduce.MeanParams``)."""
    from ..engines import get_engine
    from .reduce import prepare_mean  # reduce imports this module

    if kind not in ("max", "avg"):
        raise UnsupportedError(f"adaptive pool kind {kind!r}; supported: 'max', 'avg'")
    if isinstance(output_size, (tuple, list)):
        sizes = tuple(None if s is None else int(s) for s in output_size)
        if len(sizes) == 1:
            sizes = sizes * spatial_dims
    else:
        sizes = (int(output_size),) * spatial_dims
    if len(sizes) != spatial_dims or any(s is not None and s <= 0 for s in sizes):
        raise ShapeError(f"adaptive pool output_size must be {spatial_dims} positive ints, "
                         f"got {output_size!r}")
    engine = get_engine(engine)
    mean = (prepare_mean(_GLOBAL_MEAN_DIMS, True, engine=engine, intra_op_threads=intra_op_threads)
            if kind == "avg" and spatial_dims == 3 else None)
    return AdaptivePoolParams(kind, sizes, pooling_numerics(engine), mean)


def uses_global_mean(values: np.ndarray, p: AdaptivePoolParams) -> bool:
    """Whether PyTorch computes this adaptive avg pool as ``mean`` (a 3-D pool to 1x1x1; a
    ``None`` output size means the input's)."""
    spatial = len(p.output_size)
    return spatial == 3 and all(
        (values.shape[values.ndim - spatial + d] if out is None else out) == 1
        for d, out in enumerate(p.output_size))


def _adaptive_geometry(values: np.ndarray, output_size):
    spatial = len(output_size)
    starts, ends, counts = [], [], []
    for axis_offset, out in enumerate(output_size):
        size = values.shape[values.ndim - spatial + axis_offset]
        out = size if out is None else out
        start, end = adaptive_windows(size, out)
        starts.append(start)
        ends.append(end)
        counts.append(end - start)
    return starts, ends, counts


def _unbatched_simd_reads(values: np.ndarray, width: int) -> np.ndarray:
    """The elements the SIMD channels of the NDHWC kernel read from an unbatched (C, D, H, W)
    input (see ``_unbatched_ndhwc_result``): kernels/QuantizedOpKernels.cpp
    ``do_avg_pool_on_AVX_n`` loads ``width`` consecutive bytes at channel ``c0`` of each block,
    as if channels had stride 1, so channel ``c0 + j`` reads the element ``j`` places after
    ``(c0, d, h, w)`` in memory (here C is dim 0, the outermost). Tail channels read correctly."""
    strides = [stride // values.itemsize for stride in values.strides]
    offsets = sum(np.arange(size).reshape([-1 if d == axis else 1 for d in range(values.ndim)])
                  * stride for axis, (size, stride) in enumerate(zip(values.shape, strides)))
    offsets = np.broadcast_to(offsets, values.shape)
    memory = np.empty(values.size, values.dtype)
    memory[offsets.reshape(-1)] = values.reshape(-1)  # dense: offsets are a permutation
    channels = np.arange(values.shape[0] // width * width)
    first = channels - channels % width
    reads = np.array(values)
    reads[channels] = memory[offsets[first] + (channels - first).reshape(-1, 1, 1, 1)]
    return reads


def _unbatched_ndhwc_result(result: np.ndarray, source: np.ndarray) -> np.ndarray:
    """What a 3-D adaptive pool of an unbatched (C, D, H, W) input returns from the channels_last
    kernel (only 4-D inputs reach it: 3-D inputs are never channels_last).

    quantized/cpu/AdaptiveAveragePooling.cpp ``_adaptive_avg_pool`` takes the NDHWC kernel when
    the 4-D input ``is_contiguous(ChannelsLast)`` (the *2-D* format: dim 1, here D, innermost),
    allocates the output in ``suggest_memory_format()`` and the kernel writes it in D, H, W, C
    order (C innermost). Read through the output's strides (memory order C, H, W, D for
    channels_last, C, D, H, W otherwise) the values are scrambled; qexact reproduces that.
    """
    written = np.ascontiguousarray(np.moveaxis(result, 0, -1)).reshape(-1)
    c, d, h, w = result.shape
    if suggests_channels_last(source):
        return to_channels_last(written.reshape(c, h, w, d).transpose(0, 3, 1, 2))
    return to_contiguous(written.reshape(result.shape))


def adaptive_avg_pool(x: QuantizedArray, p: AdaptivePoolParams) -> QuantizedArray:
    """Quantized ``adaptive_avg_pool{1,2,3}d``; qparams kept (see module docstring)."""
    spatial = len(p.output_size)
    values = x.values
    if values.ndim not in (spatial + 1, spatial + 2) or min(values.shape[1:]) == 0:
        raise ShapeError(f"adaptive_avg_pool{spatial}d expects a non-empty {spatial + 1}-D or "
                         f"{spatial + 2}-D input, got shape {values.shape}")
    if spatial == 1:  # ATen: unsqueeze(-2), adaptive_avg_pool2d to (1, L), squeeze(-2)
        p2 = AdaptivePoolParams(p.kind, (1,) + p.output_size, p.numerics)
        result = adaptive_avg_pool(QuantizedArray(np.expand_dims(values, -2), x.qparams), p2)
        return QuantizedArray(np.squeeze(result.values, -2), x.qparams)
    if uses_global_mean(values, p):
        from .reduce import mean  # reduce imports this module

        if p.mean is None:
            raise UnsupportedError("a 3-D adaptive pool to 1x1x1 runs PyTorch's quantized mean: "
                                   "build its params with prepare_adaptive_pool")
        result = mean(x, p.mean).values
        if values.ndim == 5 and suggests_channels_last(values):  # as_strided_ to (C, 1, C, C, C)
            result = to_channels_last(result)
        return QuantizedArray(result, x.qparams)
    starts, ends, counts = _adaptive_geometry(values, p.output_size)
    sums = _box_sums(values, starts, ends)
    size = _outer(counts)
    in_sizes = values.shape[-spatial:]
    out_sizes = tuple(len(s) for s in starts)
    zero_point = int(x.zero_point)
    if (spatial == 2 and p.numerics.qnnpack_avg_pool and x.dtype.name == "quint8"
            and in_sizes != out_sizes and all(i % o == 0 for i, o in zip(in_sizes, out_sizes))):
        if values.ndim != 4:
            raise ShapeError("qnnpack adaptive_avg_pool2d expects a 4-D input")
        kernel = tuple(i // o for i, o in zip(in_sizes, out_sizes))
        out = qnnpack_average(sums, size, x, kernel)
        return QuantizedArray(_strided_like(out, suggests_channels_last(values)), x.qparams)
    if is_channels_last(values):
        width = p.numerics.nhwc_adaptive_simd_channels
        if values.ndim == spatial + 1 and width and values.shape[0] >= width:
            sums = _box_sums(_unbatched_simd_reads(values, width), starts, ends)
        centered = sums - size * zero_point
        multiplier = f32(np.float32(1.0) / f32(size))  # f32(f32(s_in) / f32(s_out)) / size, s/s = 1
        inverse = f32(np.float32(1.0) / f32(np.float32(1.0) / multiplier))
        simd = round_half_even(fma_float32(f32(centered), inverse, np.float32(zero_point)))
        scalar = round_half_even(f32(f32(f32(centered) * inverse) + np.float32(zero_point)))
        mask = _channel_axis_broadcast(_simd_channel_mask(
            values.shape[values.ndim - spatial - 1], p.numerics.nhwc_adaptive_simd_channels),
            sums.ndim, spatial)
        rounded = np.clip(np.where(mask, simd, scalar), x.dtype.qmin, x.dtype.qmax)
        out = rounded.astype(x.dtype.numpy_dtype)
        if values.ndim == spatial + 1:
            return QuantizedArray(_unbatched_ndhwc_result(out, values), x.qparams)
        return QuantizedArray(nhwc_kernel_result(out, values), x.qparams)
    # NCHW: no zero point, no clamp; 1/(kD kH kW) as f32(f32(f32(1.0 / kD) / kH) / kW).
    counts3 = ([np.ones(1, np.int64)] if spatial == 2 else []) + counts
    reciprocal = f32(1.0 / counts3[0].astype(np.float64))
    for count in counts3[1:]:
        reciprocal = f32(np.divide.outer(reciprocal, f32(count)))
    reciprocal = reciprocal.reshape(size.shape)
    rounded = round_half_even(f32(f32(sums) * reciprocal))
    out = rounded.astype(np.int64).astype(x.dtype.numpy_dtype)
    return QuantizedArray(out, x.qparams)


from . import pool_graph, resample  # noqa: E402,F401  (register the graph ops)
