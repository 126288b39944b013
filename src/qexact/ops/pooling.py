"""Quantized pooling: max, average and adaptive average pools in 1, 2 and 3 spatial dims.

A quantized pool keeps its input's scale and zero point. Max pools only pick integers; average
pools sum each window's integers exactly, ``S`` over its ``n`` valid taps, and the kernel the
engine runs for the call requantizes it (``Engine.kernel("avg_pool" | "adaptive_avg_pool" |
"max_pool", ...)``: an ``AverageKernel`` or ``MaxPoolKernel``, engines/aten_pooling.py, with its
divisor rule, its code paths as ``Step``s, which elements each path computes and the output's
memory layout):

    windows: [o*stride - pad, o*stride - pad + kernel) clipped to the input (avg_pool, Pool.h);
             [floor(f32(o L) / O), ceil(f32((o + 1) L) / O)) (adaptive, float32)
    q = path.steps(D)(S - n z)       (or of S itself, as the kernel states)

The memory layout is carried by the NumPy array's strides, as PyTorch carries it by the tensor's
(``qexact.layout``): the kernel an input takes, and the layout of its result, follow from them.
1-D pools run as 2-D pools of ``x.unsqueeze(-2)`` (as ATen does), with torch's strides
(``ops.shape.unsqueeze``: the new dim's stride is ``L * stride(L)``; NumPy's ``expand_dims`` may
restride size-1 dims, so a batch-1 channels_last-strided conv output would stop suggesting
channels_last and the NHWC kernel's output would be read scrambled). A 3-D adaptive average pool to
1x1x1 runs no pooling kernel: ATen computes it as quantized ``mean`` over the last three dims
(AdaptiveAveragePooling3d.cpp; ``ops.reduce``). The graph ops and their explain hooks are in
``ops.pool_graph``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..engines.aten_pooling import Windows
from ..engines.base import Engine
from ..errors import ShapeError, UnsupportedError
from ..kernels import active_backend
from ..layout import suggests_channels_last, to_channels_last
from ..qparams import QParams, QuantizedArray
from ..trace import observing, record
from ._average import (Index, average_windows, input_values, laid_out, output_qparams_for,
                       require_float32_kernel, source_axes, source_text, through_float32)
from ._window import (adaptive_windows, box_sums, outer_product, pool_window_starts,
                      pooling_output_size)
from .shape import unsqueeze

if TYPE_CHECKING:
    from .reduce import MeanParams

__all__ = ["AdaptivePoolParams", "PoolParams", "adaptive_avg_pool", "adaptive_windows",
           "avg_pool", "max_pool", "pool", "pooling_output_size", "prepare_adaptive_pool",
           "prepare_pool", "uses_global_mean"]

DIM_NAMES = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}
"""How explain names the pooled dims (a 1-D pool runs as 2-D: rows, then columns)."""


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
    ``engine``: the ``Engine`` whose ``"avg_pool"``/``"max_pool"`` kernel runs it (chosen per call:
    the choice depends on the input's dtype, rank and layout).
    """

    kind: str
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: int | None
    engine: Engine
    output_qparams: QParams | None = None
    """avg: the output's qparams where they differ from the input's (None: the input's), for a
    kernel that takes them (a float32 kernel between converts, ``through_float32``)."""

    def choose_kernel(self, x, values: np.ndarray):
        """The kernel description the engine runs for this input (``Engine.kernel``): a
        ``QuantizedArray``, or (max pool) a float32 array, whose dtype is then ``float32``."""
        dtype = x.dtype if isinstance(x, QuantizedArray) else np.dtype(np.float32)
        return self.engine.kernel(f"{self.kind}_pool", self.kernel_size, self.ceil_mode, dtype,
                                  values)


def prepare_pool(kind: str, spatial_dims: int, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                 engine, output_qparams: QParams | None = None) -> PoolParams:
    """Validate a pool's arguments as ATen does (Pool.h ``pool2d_shape_check``) for ``engine``
    (a name or an ``Engine``)."""
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
                      get_engine(engine), output_qparams)


def _per_dim(vector: np.ndarray, offset: int, spatial: int) -> np.ndarray:
    """A per-position vector of pooled dim ``offset`` shaped to broadcast over the trailing
    ``spatial`` dims."""
    return np.asarray(vector).reshape([-1 if d == offset else 1 for d in range(spatial)])


def record_window(label: str, sums: np.ndarray, starts, ends, sizes) -> None:
    """Report each output element's window sum ``S`` and its valid taps ``x[n, c, a:b, ...]``
    (``from_k``: the first tap, where explain walks back to)."""
    if not observing():
        return
    spatial = len(starts)
    lead = sums.ndim - spatial
    taps = source_axes(sums.shape, lead, [_per_dim(start, d, spatial)
                                          for d, start in enumerate(starts)])
    for d, end in enumerate(ends):
        taps[f"to_{lead + d}"] = np.broadcast_to(_per_dim(end, d, spatial), sums.shape)
    record(f"{label}: window sum",
           f"S = sum of {source_text(sums.ndim, spatial)} over its {{n}} valid taps (exact)",
           sums, n=np.broadcast_to(outer_product(sizes), sums.shape), **taps)


def _record_kernel(label: str, kernel) -> None:
    record(f"{label}: kernel", "the kernel that runs this call", None, kernel=kernel.name,
           source=kernel.source)


def avg_pool(x, p: PoolParams):
    """Quantized ``avg_pool{1,2,3}d``: x (N, C, *spatial) or (C, *spatial); qparams kept. A
    float32 ``x`` runs on an engine's float32 kernel (a PT2E model's float op) and stays float."""
    spatial = len(p.kernel_size)
    values, _ = input_values(x)
    if values.ndim not in (spatial + 1, spatial + 2):
        raise ShapeError(f"avg_pool{spatial}d expects a {spatial + 1}-D or {spatial + 2}-D input, "
                         f"got shape {values.shape}")
    if spatial == 1:  # ATen: unsqueeze(-2), avg_pool2d, squeeze(-2)
        result = avg_pool(QuantizedArray(unsqueeze(values, -2), x.qparams), _as_2d(p))
        return QuantizedArray(np.squeeze(result.values, -2), result.qparams)
    kernel = p.choose_kernel(x, values)
    _record_kernel("avg_pool", kernel)
    require_float32_kernel("avg_pool", kernel, x)
    if getattr(kernel, "runs_in_float32", False):
        return through_float32("avg_pool", kernel, x, p.engine, p.output_qparams,
                               kernel_size=p.kernel_size, stride=p.stride, padding=p.padding,
                               ceil_mode=p.ceil_mode, count_include_pad=p.count_include_pad,
                               divisor_override=p.divisor_override)
    output_qparams_for("avg_pool", kernel, x, p.output_qparams)
    starts, ends, sizes, padded, counts = [], [], [], [], []
    for offset in range(spatial):
        size = values.shape[values.ndim - spatial + offset]
        window, pad = p.kernel_size[offset], p.padding[offset]
        start = pool_window_starts(size, window, p.stride[offset], pad, 1, p.ceil_mode)
        end = np.minimum(start + window, size + pad)  # ATen's hend: the padded window's end
        padded.append(end - start)
        start, end = np.maximum(start, 0), np.minimum(end, size)
        starts.append(start)
        ends.append(end)
        sizes.append(end - start)
        counts.append(_per_dim(end - start, offset, spatial))
    kernel_input = kernel.kernel_input(values)
    sums = box_sums(kernel.read(kernel_input), starts, ends)
    record_window("avg_pool", sums, starts, ends, sizes)
    windows = Windows(outer_product(sizes), outer_product(padded), tuple(counts),
                      p.divisor_override, p.count_include_pad)
    out = average_windows("avg_pool", kernel, sums, windows, x, kernel_input, spatial,
                          p.output_qparams)
    output = output_qparams_for("avg_pool", kernel, x, p.output_qparams)
    return QuantizedArray(laid_out("avg_pool", kernel.output, out.astype(output.dtype.numpy_dtype),
                                   kernel_input), output)


def _as_2d(p: PoolParams) -> PoolParams:
    return PoolParams(p.kind, (1,) + p.kernel_size, (1,) + p.stride, (0,) + p.padding,
                      (1,) + p.dilation, p.ceil_mode, p.count_include_pad, p.divisor_override,
                      p.engine, p.output_qparams)


def max_pool(x, p: PoolParams):
    """Quantized ``max_pool{1,2,3}d``: the largest integer over the taps the kernel compares
    (``MaxPoolKernel.tap``: the valid dilated taps, or each tap clamped into the input). On a
    float32 array (a PT2E model's float op), the largest value, the same way (no NaN inputs:
    the float ops of PT2E models read float32 conv outputs of finite inputs)."""
    spatial = len(p.kernel_size)
    quantized = isinstance(x, QuantizedArray)
    values = x.values if quantized else np.asarray(x)
    if not quantized and values.dtype != np.float32:
        raise ShapeError(f"max_pool takes a QuantizedArray or a float32 array, got {values.dtype}")
    if values.ndim not in (spatial + 1, spatial + 2):
        raise ShapeError(f"max_pool{spatial}d expects a {spatial + 1}-D or {spatial + 2}-D input, "
                         f"got shape {values.shape}")
    if spatial == 1:  # Pooling.cpp quantized_max_pool1d: unsqueeze, max_pool2d, squeeze
        wide = unsqueeze(values, -2)
        result = max_pool(QuantizedArray(wide, x.qparams) if quantized else wide, _as_2d(p))
        squeezed = np.squeeze(getattr(result, "values", result), -2)
        return QuantizedArray(squeezed, x.qparams) if quantized else squeezed
    kernel = p.choose_kernel(x, values)
    _record_kernel("max_pool", kernel)
    explaining = observing()
    if quantized and not explaining and active_backend() == "fast":
        from ..kernels._numba_pool import max_pool_fast

        fast = max_pool_fast(values, kernel, p)
        if fast is not None:
            return QuantizedArray(fast, x.qparams)
    lowest = np.iinfo(values.dtype).min if quantized else -np.inf
    result = values
    chosen = []  # explain: per pooled dim so far, the input position of each element's maximum
    taps_shown = {}
    for offset in range(spatial):
        axis = values.ndim - spatial + offset
        size = values.shape[axis]
        window, dilation = p.kernel_size[offset], p.dilation[offset]
        start = pool_window_starts(size, window, p.stride[offset], p.padding[offset], dilation,
                                   p.ceil_mode)
        shape = [1] * result.ndim
        shape[axis] = -1
        best = best_at = None
        read = []
        for tap in range(window):
            position, valid = kernel.tap(start + tap * dilation, size)
            taken = np.take(result, np.clip(position, 0, size - 1), axis=axis)
            taken = np.where(valid.reshape(shape), taken, lowest)
            read.append(np.where(valid, position, -1))
            if best is None:
                best = taken
                best_at = np.broadcast_to(position.reshape(shape), taken.shape)
            elif explaining:
                best_at = np.where(taken > best, position.reshape(shape), best_at)
                best = np.maximum(best, taken)
            else:
                best = np.maximum(best, taken)
        if explaining:
            along = np.clip(best_at, 0, size - 1)
            chosen = [np.take_along_axis(c, along, axis=axis) for c in chosen] + [best_at]
            taps = np.empty(len(start), object)
            taps[:] = [Index(sorted({int(t) for t in column if t >= 0})) for column in zip(*read)]
            taps_shown[DIM_NAMES[spatial][offset]] = taps
        result = best.astype(values.dtype)
    if explaining:
        names = DIM_NAMES[spatial]
        shown = {f"taps_{name}": np.broadcast_to(_per_dim(taps_shown[name], d, spatial),
                                                 result.shape) for d, name in enumerate(names)}
        taps = " x ".join(f"{{taps_{name}}}" for name in names)
        record("max_pool: maximum", f"q = max of x over the taps {taps} ({kernel.tap_rule}); "
               f"the largest is {source_text(result.ndim)}", result, **shown,
               **source_axes(result.shape, result.ndim - spatial, chosen))
    result = laid_out("max_pool", kernel.output, result, values)
    return QuantizedArray(result, x.qparams) if quantized else result


def pool(x: QuantizedArray, p: PoolParams) -> QuantizedArray:
    return max_pool(x, p) if p.kind == "max" else avg_pool(x, p)


# --- adaptive pools -----------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptivePoolParams:
    """An adaptive pool to ``output_size`` over the last ``len(output_size)`` dims, run by
    ``engine``'s ``"adaptive_avg_pool"`` kernel (chosen per call).

    ``mean``: for 3-D pools, the ``MeanParams`` of ``mean(dim=(-1, -2, -3), keepdim=True)``,
    which PyTorch runs instead of a pooling kernel when the output is 1x1x1
    (``uses_global_mean``); None for 1-D and 2-D pools.
    """

    kind: str
    output_size: tuple[int | None, ...]
    engine: Engine
    mean: MeanParams | None = None
    output_qparams: QParams | None = None
    """The output's qparams where they differ from the input's (None: the input's), for a kernel
    whose paths rescale (``AveragePath.rescales``)."""
    intra_op_threads: int = 1
    """``torch.get_num_threads()``: a float32 kernel may split its sums between threads."""

    @property
    def inexact(self) -> str:
        """Why this op's kernel on its engine is not bit-exact ("": exact;
        ``Engine.inexact_kernels``)."""
        return self.engine.inexact_kernels.get("adaptive_avg_pool", "")


# aten/src/ATen/native/AdaptiveAveragePooling3d.cpp adaptive_avg_pool3d_symint: an output of
# (1, 1, 1) is computed as input.mean({-1, -2, -3}, keepdim=true) -- quantized inputs included --
# and the result restrided to (C, 1, C, C, C) when the input suggests channels_last_3d. The 2-D
# shortcut (AdaptiveAveragePooling.cpp adaptive_avg_pool2d_symint) excludes quantized inputs,
# and 1-D pools go through 2-D: both always run the pooling kernels.
_GLOBAL_MEAN_DIMS = (-1, -2, -3)


def prepare_adaptive_pool(kind: str, spatial_dims: int, output_size, *, engine,
                          intra_op_threads: int = 1,
                          output_qparams: QParams | None = None) -> AdaptivePoolParams:
    """``intra_op_threads`` (PyTorch's ``torch.get_num_threads()``) matters to a 3-D pool to
    1x1x1 that takes ``mean``'s reference path (see ``reduce.MeanParams``) and to a float32
    kernel that splits its sums between threads (Inductor's)."""
    from ..engines import get_engine
    from .reduce import prepare_mean

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
    mean = (prepare_mean(_GLOBAL_MEAN_DIMS, True, engine=engine, intra_op_threads=intra_op_threads,
                         output_qparams=output_qparams)
            if kind == "avg" and spatial_dims == 3 else None)
    return AdaptivePoolParams(kind, sizes, engine, mean, output_qparams, int(intra_op_threads))


def uses_global_mean(values: np.ndarray, p: AdaptivePoolParams) -> bool:
    """Whether PyTorch computes this adaptive avg pool as ``mean`` (a 3-D pool to 1x1x1; a
    ``None`` output size means the input's)."""
    spatial = len(p.output_size)
    return spatial == 3 and all(
        (values.shape[values.ndim - spatial + d] if out is None else out) == 1
        for d, out in enumerate(p.output_size))


def adaptive_avg_pool(x, p: AdaptivePoolParams):
    """Quantized ``adaptive_avg_pool{1,2,3}d``; qparams kept (see module docstring). A float32
    ``x`` runs on an engine's float32 kernel (a PT2E model's float op) and stays float."""
    spatial = len(p.output_size)
    values, dtype = input_values(x)
    if values.ndim not in (spatial + 1, spatial + 2) or min(values.shape[1:]) == 0:
        raise ShapeError(f"adaptive_avg_pool{spatial}d expects a non-empty {spatial + 1}-D or "
                         f"{spatial + 2}-D input, got shape {values.shape}")
    if spatial == 1:  # ATen: unsqueeze(-2), adaptive_avg_pool2d to (1, L), squeeze(-2)
        p2 = AdaptivePoolParams(p.kind, (1,) + p.output_size, p.engine,
                                output_qparams=p.output_qparams)
        result = adaptive_avg_pool(QuantizedArray(unsqueeze(values, -2), x.qparams), p2)
        return QuantizedArray(np.squeeze(result.values, -2), result.qparams)
    if uses_global_mean(values, p):
        from .reduce import mean

        if p.mean is None:
            raise UnsupportedError("a 3-D adaptive pool to 1x1x1 runs PyTorch's quantized mean: "
                                   "build its params with prepare_adaptive_pool")
        averaged = mean(x, p.mean)
        result = averaged.values
        if values.ndim == 5 and suggests_channels_last(values):  # as_strided_ to (C, 1, C, C, C)
            result = to_channels_last(result)
        return QuantizedArray(result, averaged.qparams)
    starts, ends, counts = [], [], []
    for offset, out in enumerate(p.output_size):
        size = values.shape[values.ndim - spatial + offset]
        start, end = adaptive_windows(size, size if out is None else out)
        starts.append(start)
        ends.append(end)
        counts.append(end - start)
    in_sizes = values.shape[-spatial:]
    out_sizes = tuple(len(start) for start in starts)
    kernel = p.engine.kernel("adaptive_avg_pool", in_sizes, out_sizes, dtype, values)
    _record_kernel("adaptive_avg_pool", kernel)
    require_float32_kernel("adaptive_avg_pool", kernel, x)
    if getattr(kernel, "runs_in_float32", False):  # a float32 mean over the pooled dims
        from .reduce import float_mean

        reduced = tuple(range(values.ndim - spatial, values.ndim))
        out_shape = values.shape[:values.ndim - spatial] + out_sizes
        return float_mean(x, kernel, reduced, out_shape, p.engine, p.output_qparams,
                          p.intra_op_threads)
    kernel_input = kernel.kernel_input(values)
    sums = box_sums(kernel.read(kernel_input), starts, ends)
    record_window("adaptive_avg_pool", sums, starts, ends, counts)
    size = outer_product(counts)
    windows = Windows(size, size, tuple(_per_dim(c, d, spatial) for d, c in enumerate(counts)))
    output = output_qparams_for("adaptive_avg_pool", kernel, x, p.output_qparams)
    out = average_windows("adaptive_avg_pool", kernel, sums, windows, x, kernel_input, spatial,
                          p.output_qparams)
    return QuantizedArray(laid_out("adaptive_avg_pool", kernel.output,
                                   out.astype(output.dtype.numpy_dtype), kernel_input), output)
