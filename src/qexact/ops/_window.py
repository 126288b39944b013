"""Window arithmetic shared by convolution and pooling: output sizes and receptive fields.

    out = floor((in + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1

``im2col`` lays out, for each output position, the receptive field as a row ordered
``(taps..., channel)`` with the channel fastest (NHWC), which is the order FBGEMM's im2col uses.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import ShapeError


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
