"""2-D max pooling of uint8/int8 activations on the fast path (numba).

Use only after ``qexact.kernels.fast_available()``: this module imports numba. Kernels compile
lazily (first call) with ``cache=True, nogil=True`` and never ``fastmath``. The NumPy path
(``qexact.ops.pooling.max_pool``) is the definition; ``tests/kernels/test_numba_pool.py`` holds
``max_pool_fast`` equal to it (values, dtype, shape and strides) on every engine.

``max_pool_fast(values, kernel, p)`` computes, for a 4-D (N, C, H, W) input and the
``MaxPoolKernel`` the engine chose (engines/aten_pooling.py, qnnpack_pooling.py,
xnnpack_pooling.py):

    out[n, c, oy, ox] = max over taps (ty, tx) the kernel compares of x[n, c, iy, ix]
    iy = oy*stride_y - pad_y + ty*dilation_y       (ix likewise)

with the tap rule of ``MaxPoolKernel.tap``: ``"valid"`` (ATen, XNNPACK) skips a tap outside
[0, size); ``"clamped"`` (QNNPACK's indirection buffer, ``min(doz(o*s + j*d, pad), size - 1)``)
clamps it into the input and never skips it. A window with no valid tap holds the dtype's
lowest integer, as the NumPy path's fill value. Exactness: only comparisons of integers of the
input's dtype; the maximum of a set does not depend on the order it is taken in, and the NumPy
path's separable pass (rows, then columns, each invalid tap filled with the lowest integer) is
the maximum over the same valid (row, column) pairs, or the lowest integer when none.

Two loop orders, one result: channels innermost in memory (a qexact conv's output, PyTorch's
channels_last; ``_max_pool_channels_inner``: per output pixel, the elementwise maximum of its
taps' channel rows, vectorized), else one channel plane at a time (``_max_pool_planes``: per
output row, the elementwise maximum of its valid input rows, then per output column the maximum
of that row over its valid columns: again the maximum over the same (row, column) pairs).
Measured on ResNet-18's max pool ((8, 64, 112, 112) uint8, 3x3, stride 2, padding 1, one
thread): 1.0-1.2 ms channels_last, 4.5 ms NCHW, against 27-34 ms and 11-20 ms for the NumPy path.

Output layout (``MaxPoolKernel.layout``, ``aten_pooling.LAYOUTS``), written directly:

- ``"contiguous"``: NCHW memory;
- ``"input's suggested format"``: NHWC memory (channels_last strides) when the input suggests
  channels_last (``layout.suggests_channels_last``), else NCHW;
- ``"channels_last kernel"``: NHWC memory; read through channels_last strides when the input
  suggests channels_last, else through contiguous strides (``layout.nhwc_kernel_result``: the
  NHWC bytes read as NCHW, scrambled as PyTorch returns them).

Fresh arrays from ``np.empty`` carry the same strides as ``layout.to_contiguous`` /
``to_channels_last`` (size-1 dims included). Other layouts, ranks, dtypes and tap rules return
None (the NumPy path runs).
"""

from __future__ import annotations

import numba
import numpy as np

from ..layout import suggests_channels_last
from ..ops._window import pooling_output_size
from . import refresh_compiled_cache

refresh_compiled_cache()  # before any cached kernel loads (see its docstring)

_JIT = dict(cache=True, nogil=True)
_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))
_LAYOUTS = ("contiguous", "input's suggested format", "channels_last kernel")


def tap_table(size: int, out: int, kernel: int, stride: int, pad: int, dilation: int,
              clamped: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per output position along one dim, the input positions the kernel compares (the first
    ``count[o]`` entries of ``positions[o]``) under its tap rule (module docstring)."""
    position = (np.arange(out) * stride - pad)[:, None] + np.arange(kernel) * dilation
    if clamped:
        return np.clip(position, 0, size - 1), np.full(out, kernel, np.int64)
    valid = (position >= 0) & (position < size)
    order = np.argsort(~valid, axis=1, kind="stable")  # valid taps first, in tap order
    return (np.take_along_axis(position, order, axis=1),
            valid.sum(axis=1).astype(np.int64))


@numba.njit(**_JIT)
def _max_pool_channels_inner(x, out, rows, row_count, cols, col_count, lowest):
    """``x`` (N, H, W, C) and ``out`` (N, OH, OW, C) views, channels innermost: each window's
    taps are rows of C channels compared elementwise (vectorized when contiguous)."""
    batch, channels = x.shape[0], x.shape[3]
    out_h, out_w = out.shape[1], out.shape[2]
    for n in range(batch):
        for out_y in range(out_h):
            for out_x in range(out_w):
                out_row = out[n, out_y, out_x]
                for c in range(channels):
                    out_row[c] = lowest
                for i in range(row_count[out_y]):
                    for j in range(col_count[out_x]):
                        in_row = x[n, rows[out_y, i], cols[out_x, j]]
                        for c in range(channels):
                            out_row[c] = max(out_row[c], in_row[c])


@numba.njit(**_JIT)
def _max_pool_planes(x, out, rows, row_count, cols, col_count, lowest):
    """``x`` (N, C, H, W) and ``out`` (N, C, OH, OW) views, one channel plane at a time: per
    output row, the elementwise maximum of its input rows (vectorized), then per output
    column the maximum of that row's taps."""
    batch, channels, width = x.shape[0], x.shape[1], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    row_max = np.empty(width, x.dtype)
    for n in range(batch):
        for c in range(channels):
            plane = x[n, c]
            for out_y in range(out_h):
                for in_x in range(width):
                    row_max[in_x] = lowest
                for i in range(row_count[out_y]):
                    in_row = plane[rows[out_y, i]]
                    for in_x in range(width):
                        row_max[in_x] = max(row_max[in_x], in_row[in_x])
                for out_x in range(out_w):
                    best = lowest
                    for j in range(col_count[out_x]):
                        best = max(best, row_max[cols[out_x, j]])
                    out[n, c, out_y, out_x] = best


def _nhwc_memory(kernel_layout: str, values: np.ndarray) -> tuple[bool, bool]:
    """(whether the kernel writes NHWC memory, whether the result reads it through
    channels_last strides)."""
    if kernel_layout == "contiguous":
        return False, False
    channels_last = suggests_channels_last(values)
    if kernel_layout == "input's suggested format":
        return channels_last, channels_last
    return True, channels_last  # "channels_last kernel"


def max_pool_fast(values: np.ndarray, kernel, p) -> np.ndarray | None:
    """The max pool of raw integers ``values`` (N, C, H, W) by ``kernel`` (the engine's
    ``MaxPoolKernel`` for this call) with ``p`` (``PoolParams``), laid out as the kernel lays
    it out; None where this function does not cover the call (the NumPy path runs)."""
    if (values.ndim != 4 or values.dtype not in _DTYPES or len(p.kernel_size) != 2
            or kernel.taps not in ("valid", "clamped") or kernel.layout not in _LAYOUTS):
        return None
    batch, channels, height, width = values.shape
    out_h = pooling_output_size(height, p.kernel_size[0], p.padding[0], p.stride[0],
                                p.dilation[0], p.ceil_mode)
    out_w = pooling_output_size(width, p.kernel_size[1], p.padding[1], p.stride[1],
                                p.dilation[1], p.ceil_mode)
    if out_h <= 0 or out_w <= 0:
        return None  # the NumPy path raises
    nhwc, read_channels_last = _nhwc_memory(kernel.layout, values)
    if nhwc:
        memory = np.empty((batch, out_h, out_w, channels), values.dtype)
        out_nhwc, out_nchw = memory, memory.transpose(0, 3, 1, 2)
    else:
        memory = np.empty((batch, channels, out_h, out_w), values.dtype)
        out_nhwc, out_nchw = memory.transpose(0, 2, 3, 1), memory
    lowest = values.dtype.type(np.iinfo(values.dtype).min)
    clamped = kernel.taps == "clamped"
    args = (*tap_table(height, out_h, p.kernel_size[0], p.stride[0], p.padding[0], p.dilation[0],
                       clamped),
            *tap_table(width, out_w, p.kernel_size[1], p.stride[1], p.padding[1], p.dilation[1],
                       clamped),
            lowest)
    if memory.size:
        if values.strides[1] == values.itemsize and channels > 1:  # channels innermost in memory
            _max_pool_channels_inner(values.transpose(0, 2, 3, 1), out_nhwc, *args)
        else:
            _max_pool_planes(values, out_nchw, *args)
    if nhwc and not read_channels_last:  # NHWC bytes read through contiguous strides
        return memory.reshape(batch, channels, out_h, out_w)
    return out_nchw
