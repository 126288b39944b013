"""Memory layout: torch's ``is_contiguous(memory_format)`` and ``suggest_memory_format`` on NumPy
strides, and TensorIterator's dimension order.

A NumPy array carries its layout in its strides, as a torch tensor does; layout-dependent kernels
(pools, upsample, elementwise SIMD splits) pick their rounding from them, so every op reads the
layout through these helpers (c10/core/TensorImpl.h, c10/core/MemoryFormat.h).
"""

from __future__ import annotations

import numpy as np



def _dense_in_order(values: np.ndarray, order) -> bool:
    expected = 1
    for dim in order:
        size = values.shape[dim]
        if size != 1:
            if values.strides[dim] != expected * values.itemsize:
                return False
            expected *= size
    return True


def is_channels_last(values: np.ndarray) -> bool:
    """torch ``is_contiguous(ChannelsLast)`` (4-D) / ``ChannelsLast3d`` (5-D): size-1 dims ignored."""
    if values.ndim == 4:
        return _dense_in_order(values, (1, 3, 2, 0))
    if values.ndim == 5:
        return _dense_in_order(values, (1, 4, 3, 2, 0))
    return False


def is_channels_first_contiguous(values: np.ndarray) -> bool:
    return _dense_in_order(values, tuple(range(values.ndim - 1, -1, -1)))


def to_channels_last(values: np.ndarray) -> np.ndarray:
    """The same logical array with torch's channels_last strides (``.contiguous(channels_last)``),
    size-1 dims included (their strides matter to ``suggests_channels_last``)."""
    order = (0,) + tuple(range(2, values.ndim)) + (1,)
    back = (0, values.ndim - 1) + tuple(range(1, values.ndim - 1))
    dense = np.empty(tuple(values.shape[d] for d in order), values.dtype)
    dense[...] = values.transpose(order)
    return dense.transpose(back)


def to_contiguous(values: np.ndarray) -> np.ndarray:
    """A fresh C-contiguous copy with torch's strides for size-1 dims."""
    dense = np.empty(values.shape, values.dtype)
    dense[...] = values
    return dense


def suggests_channels_last(values: np.ndarray) -> bool:
    """torch ``suggest_memory_format() == ChannelsLast(3d)``: c10 ``is_channels_last_strides_2d``
    (``_3d``) on the array's strides, including its tie rules (an N111 tensor, or a size-1 C with
    equal strides, counts as contiguous)."""
    if values.ndim not in (4, 5):
        return False
    strides = [stride // values.itemsize for stride in values.strides]
    if strides[1] == 0:
        return False
    order = (1, 3, 2, 0) if values.ndim == 4 else (1, 4, 3, 2, 0)
    minimum = 0
    for dim in order:
        if values.shape[dim] == 0 or strides[dim] < minimum:
            return False
        if dim == 0 and minimum == strides[1]:
            return False
        minimum = strides[dim] * (values.shape[dim] if values.shape[dim] > 1 else 1)
    return True


def reorder_dimensions(ndim: int, should_swap) -> list[int]:
    """c10 TensorIterator.cpp ``reorder_dimensions``: dims fastest first, by an insertion sort
    from the reversed order on ``should_swap(dim0, dim1)`` (> 0: swap, < 0: stop, 0: go on)."""
    perm = list(range(ndim - 1, -1, -1))
    for i in range(1, ndim):
        moving = i
        for j in range(i - 1, -1, -1):
            comparison = should_swap(perm[j], perm[moving])
            if comparison > 0:
                perm[j], perm[moving] = perm[moving], perm[j]
                moving = j
            elif comparison < 0:
                break
    return perm


def nhwc_kernel_result(result: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The array a channels_last kernel returns for the logical ``result``.

    The kernels write channels-last *bytes* into an output allocated with
    ``source.suggest_memory_format()``. When ``source`` is channels_last-contiguous but suggests
    the contiguous format (ambiguous strides, e.g. H == W == 1), PyTorch reads those bytes as
    NCHW: the values come out scrambled, and qexact reproduces that.
    """
    if suggests_channels_last(source):
        return to_channels_last(result)
    order = (0,) + tuple(range(2, result.ndim)) + (1,)
    return to_contiguous(to_contiguous(result.transpose(order)).reshape(result.shape))


def grouped_rows(weight: np.ndarray, groups: int) -> np.ndarray:
    """(OC, C/G, *k) weights as (G, OC/G, taps * C/G): rows in im2col order, channel fastest."""
    out_channels, per_group = weight.shape[:2]
    taps_last = np.moveaxis(weight, 1, -1).reshape(out_channels, -1)
    return taps_last.reshape(groups, out_channels // groups, -1)
