"""Window arithmetic shared by convolution and pooling: output sizes and receptive fields.

    out = floor((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1

``im2col`` lays out, for each output position, the receptive field as a row ordered
``(taps..., channel)`` with the channel fastest (NHWC), which is the order FBGEMM's im2col uses.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import ShapeError
from ..rounding import f32


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_shape(spatial: tuple[int, ...], kernel, stride, padding, dilation) -> tuple[int, ...]:
    """Output spatial shape; raises ``ShapeError`` where the window does not fit."""
    shape = tuple(output_size(*args) for args in zip(spatial, kernel, stride, padding, dilation))
    if any(size < 1 for size in shape):
        raise ShapeError(
            f"input of spatial size {tuple(spatial)} is too small for kernel {tuple(kernel)} "
            f"(stride {tuple(stride)}, padding {tuple(padding)}, dilation {tuple(dilation)}): "
            f"output size {shape}")
    return shape


def tap_offsets(kernel: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The kernel taps in row-major order (``filter_y`` then ``filter_x``)."""
    return list(itertools.product(*(range(k) for k in kernel)))


def im2col(values: np.ndarray, kernel, stride, padding, dilation, pad_value: int) -> np.ndarray:
    """(N, C, *spatial) -> (N, *out, taps, C): every output position's receptive field.

    Loop nest: ``cols[n, out_y, out_x, tap, c] = x[n, c, out_y * stride_y - pad_y + filter_y *
    dilation_y, ...]``, or ``pad_value`` where that index falls outside the input.
    """
    batch, channels = values.shape[:2]
    spatial = values.shape[2:]
    out = output_shape(spatial, kernel, stride, padding, dilation)
    nhwc = np.moveaxis(values, 1, -1)
    padded = np.full((batch,) + tuple(s + 2 * p for s, p in zip(spatial, padding)) + (channels,),
                     pad_value, dtype=values.dtype)
    padded[(slice(None),) + tuple(slice(p, p + s) for s, p in zip(spatial, padding))] = nhwc
    columns = []
    for tap in tap_offsets(kernel):
        window = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                       for t, d, o, s in zip(tap, dilation, out, stride))
        columns.append(padded[(slice(None),) + window])
    return np.stack(columns, axis=-2)


# --- pooling windows (ops.pooling, ops.pool_graph) ------------------------------------------------


def pooling_output_size(size: int, kernel: int, pad: int, stride: int, dilation: int,
                        ceil_mode: bool) -> int:
    """ATen ``pooling_output_shape`` (aten/src/ATen/native/Pool.h)."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_window_starts(size: int, kernel: int, stride: int, pad: int, dilation: int,
                       ceil_mode: bool) -> np.ndarray:
    """Per output position along one dim, the first tap of its window, ``o * stride - pad``
    (negative in the padding)."""
    out = pooling_output_size(size, kernel, pad, stride, dilation, ceil_mode)
    if out <= 0:
        raise ShapeError(f"pool output size {out} is too small for input size {size}")
    return np.arange(out) * stride - pad


def adaptive_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """``[floor(f32(o*L)/O), ceil(f32((o+1)*L)/O))`` in float32, as AdaptiveAveragePooling.cpp
    ``start_index``/``end_index``."""
    index = np.arange(out, dtype=np.int64)
    start = np.floor(f32(f32(index * size) / np.float32(out))).astype(np.int64)
    end = np.ceil(f32(f32((index + 1) * size) / np.float32(out))).astype(np.int64)
    return start, end


def box_sums(values: np.ndarray, starts, ends) -> np.ndarray:
    """Exact int64 sums of ``values`` over the boxes ``[starts[d][o], ends[d][o])`` along the
    trailing ``len(starts)`` dims (prefix sums per dim)."""
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


def outer_product(vectors) -> np.ndarray:
    """``v0[i] * v1[j] * ...`` as an int64 array of shape ``(len(v0), len(v1), ...)``."""
    result = np.ones((), np.int64)
    for vector in vectors:
        result = np.multiply.outer(result, np.asarray(vector, np.int64))
    return result


# --- the NumPy path's fast forms: views and one copy ---------------------------------------------


def padded_channels_last(values: np.ndarray, padding, pad_value, dtype=None,
                         offset: int = 0) -> np.ndarray:
    """(N, C, *spatial) -> (N, *padded_spatial, C) of ``dtype`` holding ``values - offset``,
    ``pad_value - offset`` in the padding (one pass; exact: integers below 2**24 in float32)."""
    dtype = np.dtype(dtype or values.dtype)
    batch, channels = values.shape[:2]
    spatial = values.shape[2:]
    padded = np.empty((batch,) + tuple(s + 2 * p for s, p in zip(spatial, padding)) + (channels,),
                      dtype=dtype)
    if any(padding):
        padded.fill(pad_value - offset)
    inside = padded[(slice(None),) + tuple(slice(p, p + s) for s, p in zip(spatial, padding))]
    source = np.moveaxis(values, 1, -1)
    if offset:  # a 0-d array of ``dtype``, not a Python int: uint8 - int would stay uint8
        np.subtract(source, np.array(offset, dtype=dtype), out=inside, casting="unsafe")
    else:
        inside[...] = source
    return padded


def tap_windows(padded: np.ndarray, kernel, stride, dilation, out) -> list[np.ndarray]:
    """Per tap (``tap_offsets`` order), the strided view (N, *out, C) of ``padded`` (N,
    *padded_spatial, C) it reads: ``window[n, o..., c] = padded[n, o * stride + tap *
    dilation, ..., c]``. No copy."""
    windows = []
    for tap in tap_offsets(kernel):
        index = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                      for t, d, o, s in zip(tap, dilation, out, stride))
        windows.append(padded[(slice(None),) + index])
    return windows


def im2col_centered(values: np.ndarray, kernel, stride, padding, dilation, pad_value: int,
                    offset: int, groups: int = 1) -> np.ndarray:
    """``im2col`` minus ``offset`` as float32, laid out per group: (G, N * out_positions,
    taps * C/G), each row in the group's im2col order (taps..., channel), channel fastest.

    Equal to ``conv_columns(...).astype(float32) - offset`` (integers below 2**24 are float32s:
    exact), built with one copy of the padded input and one of the columns (two for G > 1):
    ``sliding_window_view`` gives every window as a view, strided by ``stride`` and
    ``dilation``; a transpose puts the taps before the channel."""
    batch, channels = values.shape[:2]
    dims = len(kernel)
    out = output_shape(values.shape[2:], kernel, stride, padding, dilation)
    padded = padded_channels_last(values, padding, pad_value, np.float32, offset)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    windows = np.lib.stride_tricks.sliding_window_view(padded, spans, axis=tuple(range(1, dims + 1)))
    # windows: (N, *positions, C, *spans); keep every stride-th position, every dilation-th tap
    windows = windows[(slice(None),)
                      + tuple(slice(0, (o - 1) * st + 1, st) for o, st in zip(out, stride))
                      + (slice(None),)
                      + tuple(slice(None, None, d) for d in dilation)]
    order = (0,) + tuple(range(1, dims + 1)) + tuple(range(dims + 2, 2 * dims + 2)) + (dims + 1,)
    columns = np.ascontiguousarray(windows.transpose(order))     # (N, *out, *kernel, C)
    positions = batch * int(np.prod(out))
    taps = int(np.prod(kernel))
    if groups == 1:
        return columns.reshape(1, positions, taps * channels)
    per_group = channels // groups
    columns = columns.reshape(positions, taps, groups, per_group).transpose(2, 0, 1, 3)
    return np.ascontiguousarray(columns).reshape(groups, positions, taps * per_group)
