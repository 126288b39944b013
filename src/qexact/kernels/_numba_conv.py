"""Convolution helpers of the fast path (numba): im2col into packed uint8 rows, and a direct
depthwise accumulator with FBGEMM's int16 pair saturation.

Use only after ``qexact.kernels.fast_available()``: this module imports numba. Every kernel is
compiled lazily (first call) with ``cache=True, nogil=True`` and never ``fastmath``. The NumPy
path (``qexact.ops.conv.conv_columns`` / ``conv_accumulator``) is the definition; ``tests/kernels/
test_numba_conv.py`` holds these functions equal to it.

Layout. Activations are read channels-last: ``np.moveaxis(values, 1, -1)`` of qexact's own conv
outputs (and of PyTorch's channels_last tensors) is C-contiguous and read without a copy; other
inputs are copied to NHWC once. A Conv1d (N, C, L) is the 2-D convolution (N, C, 1, L) with
kernel (1, k), as PyTorch runs it; 3-D convolutions are not handled here (callers fall back).

``im2col_u8`` (copies only, exact by construction): row ``(n, out_y, out_x)`` of group ``g`` holds
``x[n, g*C/G + c, in_y, in_x]`` at column ``tap * C/G + c`` (taps row-major, channel fastest:
``qexact.ops.conv.grouped_rows`` order, FBGEMM's im2col), ``in_y = out_y*stride_y - pad_y +
filter_y*dilation_y``, ``pad_value`` outside the input, zeros in columns ``K..row_stride``.

``depthwise_accumulator``: one input channel per group, ``OC = C * multiplier``, output channel
``oc`` reads input channel ``oc // multiplier`` (``grouped_rows`` with C/G = 1, OC/G =
multiplier), K = taps. It forms

    acc[row, oc] = sum_tap (x[tap, oc // m] - z_x) * (w[oc, tap] - z_w[oc])     padded taps add 0

in int32. Exactness: |x - z_x| <= 255 and |w - z_w| <= 255 (both operands are bytes, zero points
in their type's range), so a term is at most 65,025 in magnitude and the sum of ``taps`` terms at
most ``taps * 65,025``; integer addition is associative, so any order gives the same int32 when
no partial sum can overflow, which holds for taps <= 33,025. The NumPy path sums the same terms in
float32 blocks proven exact (``qexact.accumulate``) and int64: the same integers.

With ``saturate_pairs`` (FBGEMM's depthwise kernel, ``src/FbgemmI8DepthwiseAvx2.cc`` with the
JIT of ``src/GenerateI8Depthwise.cc``: ``vpmaddubsw`` on raw u8 activations and raw s8 weights on
every ISA, then ``vpmaddwd`` with ones, the zero points corrected exactly afterwards) the taps
of an output channel are paired in row order (0, 1), (2, 3), ..., an odd last tap with a zero,
and each raw pair sum ``p = x0*w0 + x1*w1`` is held in int16 with saturation. As the NumPy path
models it (``qexact.accumulate.pair_saturation_correction`` with ``params.pair_positions`` from
``pair_positions(taps, (0,))``; ``ConvKernel.pairs_per_tap`` False, padded taps holding the raw
value ``padded_tap``: ``z_x``, or 0 where ``pad_raw_zero``):

    acc[row, oc] = exact + sum_pairs (sat16(p) - p)

A padded tap contributes 0 to ``exact`` and its raw value to ``p``. Bounds: |p| <= 2 * 255 * 128
= 65,280, so |sat16(p) - p| <= 32,513 and a pair adds at most 2 * 65,025 + 32,513 = 162,563 in
magnitude: partial sums stay in int32 for taps <= 26,420. The multiplier-1 kernel sums the same
value as ``sum_pairs sat16(p) + sum_valid (z_x z_w - z_x w) - pad_raw sum_padded w - z_w sum_valid
x`` (expand the product; FBGEMM's own zero-point correction); its partial sums stay below
taps * (3 * 32,640 + 16,384) < 2**31 for taps <= 18,800. ``MAX_DEPTHWISE_TAPS`` (16,384, a
128x128 kernel) is refused above. With ``pairs_per_tap`` (oneDNN's AVX2 pairing) and one channel
per group every pair is a single product, |x * w| <= 255 * 128 < 32,768: nothing saturates, so
such params take the exact path (``accumulator_for``).

``depthwise_requantize`` (multiplier 1) forms the same accumulator block by block of
``epilogue.block_rows`` output rows and runs ``_numba_epilogue.run_block`` on each block (the
function ``Epilogue.run`` calls; per element, with the block-local row, so the same bits). A 3x3
window inside the input: pairs mode ``interior + sum_pairs sat16(x0*w0 + x1*w1)`` with the
products in int16 (|x*w| <= 255*128 = 32,640: the wrapping int16 product is exact) and
``llvm.sadd.sat.i16`` (= clamp(a + b) to int16, = sat16(p)), tap 8 alone (its partner's weight
row is 0); exact mode ``interior + sum_tap x * (w - z_w)`` in int32. Other windows: the formulas
of ``_depthwise_exact`` / ``_depthwise_pairs`` per position. Same terms, integer sums within the
bounds above: the same int32 values.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ..engines.base import PAD_ZERO
from ..errors import ShapeError, UnsupportedError
from ..ops._window import output_shape
from . import refresh_compiled_cache
from ._numba_epilogue import run_block

refresh_compiled_cache()  # before any cached kernel loads (see its docstring)

MAX_DEPTHWISE_TAPS = 16384
"""Largest window (taps) ``depthwise_accumulator`` forms in int32 (the bound above: 26,420)."""

_JIT = dict(cache=True, nogil=True)
INT16_MIN = np.int32(-32768)
INT16_MAX = np.int32(32767)


# --- shapes ------------------------------------------------------------------------------------


def _pair2(value, dims: int, one: int, name: str) -> tuple[int, int]:
    """An int or per-dim tuple of a 1-D or 2-D conv as the 2-D pair PyTorch runs."""
    values = tuple(int(v) for v in np.atleast_1d(value))
    if len(values) == 1:
        values = values * dims
    if len(values) != dims:
        raise ShapeError(f"{name} must have {dims} values, got {value!r}")
    return (one,) + values if dims == 1 else values


def _channels_last(values: np.ndarray) -> np.ndarray:
    """(N, C, H, W) uint8 as a C-contiguous (N, H, W, C) array (a view for channels-last memory)."""
    nhwc = np.moveaxis(values, 1, -1)
    if nhwc.flags.c_contiguous:
        return nhwc
    if values.flags.c_contiguous:
        out = np.empty(nhwc.shape, np.uint8)
        _nchw_to_nhwc(values, out)
        return out
    return np.ascontiguousarray(nhwc)


@numba.njit(**_JIT)
def _nchw_to_nhwc(values, out):
    """out[n, y, x, c] = values[n, c, y, x] for C-contiguous arrays, in 8-channel blocks."""
    batch, channels, height, width = values.shape
    for n in range(batch):
        for y in range(height):
            for c0 in range(0, channels, 8):
                c1 = min(c0 + 8, channels)
                for c in range(c0, c1):
                    source = values[n, c, y]
                    for x in range(width):
                        out[n, y, x, c] = source[x]


# --- im2col ------------------------------------------------------------------------------------


def im2col_u8(values: np.ndarray, kernel_size, stride, padding, dilation, groups: int,
              pad_value: int, row_stride: int | None = None,
              out: np.ndarray | None = None) -> np.ndarray | None:
    """(N, C, H, W) or (N, C, L) uint8 -> (G, N * P, row_stride) uint8 im2col rows.

    Column ``tap * C/G + c`` of group ``g``'s row ``(n, out_y, out_x)`` is ``x[n, g*C/G + c,
    in_y, in_x]``, or ``pad_value`` in the padding; columns ``K = taps * C/G`` to ``row_stride``
    (default K; GEMM kernels want K rounded up to a multiple of 4) are 0. Equals
    ``conv_columns(values, params, pad_value)`` on the first K columns (zeros padding mode).
    ``out``: a C-contiguous uint8 buffer of that shape to fill. Returns None for a 3-D conv.
    Raises ``ShapeError`` where the window does not fit (as ``output_shape``).
    """
    values = np.asarray(values)
    if values.dtype != np.uint8 or values.ndim not in (3, 4, 5):
        raise ShapeError(f"im2col_u8 takes uint8 (N, C, *spatial) with 1 or 2 spatial dims, got "
                         f"{values.dtype} {values.shape}")
    if values.ndim == 5:
        return None
    dims = values.ndim - 2
    kernel = _pair2(kernel_size, dims, 1, "kernel_size")
    stride2, padding2, dilation2 = (_pair2(stride, dims, 1, "stride"),
                                    _pair2(padding, dims, 0, "padding"),
                                    _pair2(dilation, dims, 1, "dilation"))
    if dims == 1:
        values = values[:, :, None, :]
    batch, channels, height, width = values.shape
    if groups < 1 or channels % groups:
        raise ShapeError(f"in_channels {channels} must be a multiple of groups {groups}")
    out_h, out_w = output_shape((height, width), kernel, stride2, padding2, dilation2)
    depth = kernel[0] * kernel[1] * (channels // groups)
    row_stride = depth if row_stride is None else int(row_stride)
    if row_stride < depth:
        raise ShapeError(f"row_stride {row_stride} is below the depth K = {depth}")
    shape = (groups, batch * out_h * out_w, row_stride)
    if out is None:
        out = np.empty(shape, np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ShapeError(f"out must be a C-contiguous uint8 array {shape}, got {out.dtype} "
                         f"{out.shape}")
    if not 0 <= int(pad_value) <= 255:
        raise ShapeError(f"pad_value must be a byte, got {pad_value!r}")
    arguments = (_channels_last(values), kernel[0], kernel[1], stride2[0], stride2[1],
                 padding2[0], padding2[1], dilation2[0], dilation2[1])
    if groups == 1 and dilation2[1] == 1 and channels < 16:  # short runs: one slice per row
        _im2col_runs(*arguments, out_h, out_w, np.uint8(pad_value), out.reshape(-1))
    else:
        _im2col_nhwc(*arguments, groups, np.uint8(pad_value), out)
    return out


@numba.njit(**_JIT)
def _im2col_nhwc(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                 groups, pad_value, out):
    batch, height, width, channels = x.shape
    per_group = channels // groups
    rows_total = out.shape[1]
    depth = kernel_h * kernel_w * per_group
    row_stride = out.shape[2]
    out_h_times_w = rows_total // batch
    out_w = (width + 2 * pad_w - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
    out_h = out_h_times_w // out_w
    for n in range(batch):
        for out_y in range(out_h):
            for out_x in range(out_w):
                row = (n * out_h + out_y) * out_w + out_x
                for filter_y in range(kernel_h):
                    in_y = out_y * stride_h - pad_h + filter_y * dilation_h
                    for filter_x in range(kernel_w):
                        in_x = out_x * stride_w - pad_w + filter_x * dilation_w
                        column = (filter_y * kernel_w + filter_x) * per_group
                        inside = 0 <= in_y < height and 0 <= in_x < width
                        for group in range(groups):
                            target = out[group, row]
                            if inside:
                                source = x[n, in_y, in_x]
                                first = group * per_group
                                for c in range(per_group):
                                    target[column + c] = source[first + c]
                            else:
                                for c in range(per_group):
                                    target[column + c] = pad_value
                for group in range(groups):
                    target = out[group, row]
                    for k in range(depth, row_stride):
                        target[k] = 0


@numba.njit(**_JIT)
def _im2col_runs(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w,
                 out_h, out_w, pad_value, out):
    """One group, dilation_w 1: the taps (filter_y, filter_x..filter_x+r) of a row are r+1
    adjacent pixels, so their channels are one contiguous run in both x and the column row."""
    batch, height, width, channels = x.shape
    flat = x.reshape(-1)
    row_stride = out.shape[0] // (batch * out_h * out_w)
    depth = kernel_h * kernel_w * channels
    run = kernel_w * channels
    for n in range(batch):
        for out_y in range(out_h):
            for out_x in range(out_w):
                start = ((n * out_h + out_y) * out_w + out_x) * row_stride
                in_x0 = out_x * stride_w - pad_w
                first = max(0, -in_x0)                        # taps left of the input
                last = min(kernel_w, width - in_x0)            # taps up to the right edge
                for filter_y in range(kernel_h):
                    in_y = out_y * stride_h - pad_h + filter_y * dilation_h
                    target = start + filter_y * run
                    if in_y < 0 or in_y >= height or last <= first:
                        out[target:target + run] = pad_value
                        continue
                    out[target:target + first * channels] = pad_value
                    source = ((n * height + in_y) * width + in_x0 + first) * channels
                    length = (last - first) * channels
                    offset = target + first * channels
                    out[offset:offset + length] = flat[source:source + length]
                    out[target + last * channels:target + run] = pad_value
                for k in range(depth, row_stride):
                    out[start + k] = 0


# --- depthwise ---------------------------------------------------------------------------------


class DepthwiseWeights(NamedTuple):
    """A depthwise weight packed once (taps rounded up to even rows, the last one zeros when the
    count is odd), (taps, OC) so that a tap's weights are contiguous over output channels:
    ``centered`` int32 ``w - z_w[oc]``, ``raw`` int32 ``w``, ``centered16`` / ``raw16`` the same
    as int16; ``centered_sum`` / ``raw_sum`` (OC,) int32 sums over taps; ``zero_point`` (OC,)
    int32; ``kernel`` (kh, kw)."""

    centered: np.ndarray
    raw: np.ndarray
    centered16: np.ndarray
    raw16: np.ndarray
    centered_sum: np.ndarray
    raw_sum: np.ndarray
    zero_point: np.ndarray
    kernel: tuple[int, int]


def depthwise_weights(weight: np.ndarray, weight_zero_point) -> DepthwiseWeights:
    """Pack (OC, 1, kh, kw) or (OC, 1, k) int8 weights with a per-tensor or per-channel (OC,)
    zero point for ``depthwise_accumulator``."""
    weight = np.asarray(weight)
    if weight.dtype != np.int8 or weight.ndim not in (3, 4) or weight.shape[1] != 1:
        raise ShapeError(f"depthwise weights are int8 (OC, 1, *kernel) with 1 or 2 spatial dims, "
                         f"got {weight.dtype} {weight.shape}")
    kernel = (1,) + weight.shape[2:] if weight.ndim == 3 else tuple(weight.shape[2:])
    out_channels = weight.shape[0]
    taps = kernel[0] * kernel[1]
    if taps > MAX_DEPTHWISE_TAPS:
        raise UnsupportedError(f"a depthwise window of {taps} taps could overflow the int32 "
                               f"accumulator here (at most {MAX_DEPTHWISE_TAPS})")
    zero_point = np.ascontiguousarray(np.broadcast_to(
        np.asarray(weight_zero_point, np.int32).reshape(-1), (out_channels,)))
    raw = np.zeros((taps + taps % 2, out_channels), np.int32)
    raw[:taps] = weight.reshape(out_channels, taps).T
    centered = np.zeros_like(raw)
    centered[:taps] = raw[:taps] - zero_point[None, :]
    return DepthwiseWeights(centered, raw, centered.astype(np.int16), raw.astype(np.int16),
                            centered.sum(axis=0, dtype=np.int32), raw.sum(axis=0, dtype=np.int32),
                            zero_point, (int(kernel[0]), int(kernel[1])))


def depthwise_accumulator(values: np.ndarray, weight, x_zero_point: int, weight_zero_point,
                          stride, padding, dilation, *, saturate_pairs: bool = False,
                          pad_raw_zero: bool = False) -> np.ndarray | None:
    """The int32 accumulator of a depthwise conv, (N * P, OC), as ``conv_accumulator`` lays it out.

    ``values`` (N, C, H, W) or (N, C, L) uint8 (channels-last memory read in place); ``weight``
    (OC, 1, *kernel) int8 with OC = C * multiplier, or a ``DepthwiseWeights`` (then
    ``weight_zero_point`` is ignored); ``x_zero_point`` the input's; ``weight_zero_point`` a scalar
    or (OC,). ``saturate_pairs``: FBGEMM's int16 pair sums of raw taps (module docstring);
    ``pad_raw_zero``: padded taps are raw 0 in those pairs (else raw ``x_zero_point``). Zeros
    padding (apply another ``padding_mode`` first). Returns None for a 3-D conv.
    """
    values = np.asarray(values)
    if values.dtype != np.uint8 or values.ndim not in (3, 4, 5):
        raise ShapeError(f"depthwise_accumulator takes uint8 (N, C, *spatial), got "
                         f"{values.dtype} {values.shape}")
    if values.ndim == 5 or (not isinstance(weight, DepthwiseWeights) and np.ndim(weight) == 5):
        return None
    packed = weight if isinstance(weight, DepthwiseWeights) else depthwise_weights(
        weight, weight_zero_point)
    dims = values.ndim - 2
    if dims == 1:
        values = values[:, :, None, :]
    if packed.kernel[0] != 1 and dims == 1:
        raise ShapeError(f"a (N, C, L) input needs a 1-D kernel, got {packed.kernel}")
    stride2, padding2, dilation2 = (_pair2(stride, dims, 1, "stride"),
                                    _pair2(padding, dims, 0, "padding"),
                                    _pair2(dilation, dims, 1, "dilation"))
    batch, channels, height, width = values.shape
    out_channels = packed.raw.shape[1]
    if out_channels % channels:
        raise ShapeError(f"depthwise out_channels {out_channels} must be a multiple of the input's "
                         f"{channels} channels")
    out_h, out_w = output_shape((height, width), packed.kernel, stride2, padding2, dilation2)
    x_zero_point = int(x_zero_point)
    if not 0 <= x_zero_point <= 255:
        raise ShapeError(f"x_zero_point must be a byte, got {x_zero_point!r}")
    acc = np.empty((batch * out_h * out_w, out_channels), np.int32)
    arguments = (_channels_last(values), packed.kernel[0], packed.kernel[1], stride2[0],
                 stride2[1], padding2[0], padding2[1], dilation2[0], dilation2[1], out_h, out_w)
    if saturate_pairs:
        pad_raw = 0 if pad_raw_zero else x_zero_point
        taps = packed.kernel[0] * packed.kernel[1]
        # interior positions: sum_pairs sat16(p) - z_x sum_t w - z_w sum_t x + taps z_x z_w
        interior = (-x_zero_point * packed.raw_sum
                    + taps * x_zero_point * packed.zero_point).astype(np.int32)
        _depthwise_pairs(*arguments, np.int32(x_zero_point), packed.centered, packed.raw,
                         packed.raw16, interior, packed.zero_point,
                         bool(packed.zero_point.any()), np.full(channels, pad_raw, np.uint8),
                         np.int32(pad_raw), acc)
    elif out_channels == channels:
        _depthwise_exact(*arguments, np.int32(x_zero_point), packed.centered, packed.centered16,
                         -x_zero_point * packed.centered_sum, acc)
    else:
        _depthwise_exact_multiplier(*arguments, np.int32(x_zero_point), packed.centered, acc)
    return acc


@numba.njit(**_JIT)
def _depthwise_exact(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                     dilation_w, out_h, out_w, x_zero_point, centered, centered16, interior, acc):
    """Multiplier 1: acc[row, c] = sum over in-bounds taps (x[c] - z_x) * centered[tap, c].
    A window inside the input starts from ``interior`` = -z_x * sum_t centered[t] and adds
    x * centered (int16 weights: the products fit vpmaddwd)."""
    batch, height, width, channels = x.shape
    for n in range(batch):
        for out_y in range(out_h):
            in_y0 = out_y * stride_h - pad_h
            rows_inside = in_y0 >= 0 and in_y0 + (kernel_h - 1) * dilation_h < height
            for out_x in range(out_w):
                row = (n * out_h + out_y) * out_w + out_x
                total = acc[row]
                in_x0 = out_x * stride_w - pad_w
                if rows_inside and in_x0 >= 0 and in_x0 + (kernel_w - 1) * dilation_w < width:
                    for c in range(channels):
                        total[c] = interior[c]
                    for filter_y in range(kernel_h):
                        for filter_x in range(kernel_w):
                            source = x[n, in_y0 + filter_y * dilation_h,
                                       in_x0 + filter_x * dilation_w]
                            weights = centered16[filter_y * kernel_w + filter_x]
                            for c in range(channels):
                                total[c] += np.int32(source[c]) * np.int32(weights[c])
                    continue
                total[:] = 0
                for filter_y in range(kernel_h):
                    in_y = in_y0 + filter_y * dilation_h
                    if in_y < 0 or in_y >= height:
                        continue
                    for filter_x in range(kernel_w):
                        in_x = in_x0 + filter_x * dilation_w
                        if in_x < 0 or in_x >= width:
                            continue
                        source = x[n, in_y, in_x]
                        weights = centered[filter_y * kernel_w + filter_x]
                        for c in range(channels):
                            total[c] += (np.int32(source[c]) - x_zero_point) * weights[c]


@numba.njit(**_JIT)
def _depthwise_exact_multiplier(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                dilation_h, dilation_w, out_h, out_w, x_zero_point, centered,
                                acc):
    """Multiplier m > 1: output channel oc = c * m + j reads input channel c."""
    batch, height, width, channels = x.shape
    multiplier = acc.shape[1] // channels
    for n in range(batch):
        for out_y in range(out_h):
            for out_x in range(out_w):
                row = (n * out_h + out_y) * out_w + out_x
                total = acc[row]
                total[:] = 0
                for filter_y in range(kernel_h):
                    in_y = out_y * stride_h - pad_h + filter_y * dilation_h
                    if in_y < 0 or in_y >= height:
                        continue
                    for filter_x in range(kernel_w):
                        in_x = out_x * stride_w - pad_w + filter_x * dilation_w
                        if in_x < 0 or in_x >= width:
                            continue
                        source = x[n, in_y, in_x]
                        weights = centered[filter_y * kernel_w + filter_x]
                        for out_channel in range(acc.shape[1]):
                            total[out_channel] += ((np.int32(source[out_channel // multiplier])
                                                    - x_zero_point) * weights[out_channel])


@numba.njit(**_JIT)
def _depthwise_pairs(x, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h,
                     dilation_w, out_h, out_w, x_zero_point, centered, raw, raw16, interior,
                     zero_point, asymmetric, pad_row, pad_raw, acc):
    """Taps paired in row order (2t, 2t+1), p = x0*w0 + x1*w1 on raw values (a padded tap holds
    ``pad_raw``; the odd tail pairs with a zero weight row). Multiplier 1, per position:

        acc = sum_pairs sat16(p) + sum_valid (z_x z_w - z_x w) - pad_raw sum_padded w
              - z_w sum_valid x

    (= exact + sum (sat16(p) - p): expand (x - z_x)(w - z_w) over the valid taps and add the
    padded taps' raw products to both sides); ``interior`` is the middle term of a window with
    no padded tap. Multiplier m > 1 (output channel c*m + j): exact terms + sat16(p) - p per
    pair."""
    batch, height, width, channels = x.shape
    out_channels = acc.shape[1]
    multiplier = out_channels // channels
    taps = kernel_h * kernel_w
    pairs = centered.shape[0] // 2
    for n in range(batch):
        for out_y in range(out_h):
            in_y_origin = out_y * stride_h - pad_h
            rows_inside = (in_y_origin >= 0
                           and in_y_origin + (kernel_h - 1) * dilation_h < height)
            for out_x in range(out_w):
                row = (n * out_h + out_y) * out_w + out_x
                total = acc[row]
                in_x_origin = out_x * stride_w - pad_w
                window_inside = (rows_inside and in_x_origin >= 0
                                 and in_x_origin + (kernel_w - 1) * dilation_w < width)
                if multiplier == 1:
                    if window_inside:
                        for c in range(channels):
                            total[c] = interior[c]
                    else:
                        for c in range(channels):
                            total[c] = 0
                        for tap in range(taps):
                            in_y = in_y_origin + (tap // kernel_w) * dilation_h
                            in_x = in_x_origin + (tap % kernel_w) * dilation_w
                            weights = raw[tap]
                            if 0 <= in_y < height and 0 <= in_x < width:
                                for c in range(channels):
                                    total[c] += x_zero_point * (zero_point[c] - weights[c])
                            else:
                                for c in range(channels):
                                    total[c] -= pad_raw * weights[c]
                    for pair in range(pairs):
                        first_tap = 2 * pair
                        second_tap = min(first_tap + 1, taps - 1)  # odd tail: weight row 0
                        in_y0 = in_y_origin + (first_tap // kernel_w) * dilation_h
                        in_x0 = in_x_origin + (first_tap % kernel_w) * dilation_w
                        in_y1 = in_y_origin + (second_tap // kernel_w) * dilation_h
                        in_x1 = in_x_origin + (second_tap % kernel_w) * dilation_w
                        inside0 = 0 <= in_y0 < height and 0 <= in_x0 < width
                        inside1 = 0 <= in_y1 < height and 0 <= in_x1 < width
                        source0 = x[n, in_y0, in_x0] if inside0 else pad_row
                        source1 = x[n, in_y1, in_x1] if inside1 else pad_row
                        raw0 = raw16[first_tap]
                        raw1 = raw16[first_tap + 1]
                        for c in range(channels):
                            # np.int32: the clamp runs on 32-bit lanes (|p| <= 65,280)
                            pair_sum = np.int32(np.int32(source0[c]) * np.int32(raw0[c])
                                                + np.int32(source1[c]) * np.int32(raw1[c]))
                            total[c] += min(max(pair_sum, INT16_MIN), INT16_MAX)
                    if asymmetric:
                        for tap in range(taps):
                            in_y = in_y_origin + (tap // kernel_w) * dilation_h
                            in_x = in_x_origin + (tap % kernel_w) * dilation_w
                            if 0 <= in_y < height and 0 <= in_x < width:
                                source = x[n, in_y, in_x]
                                for c in range(channels):
                                    total[c] -= zero_point[c] * np.int32(source[c])
                    continue
                total[:] = 0
                for pair in range(pairs):
                    first_tap = 2 * pair
                    second_tap = first_tap + 1
                    in_y0 = in_y_origin + (first_tap // kernel_w) * dilation_h
                    in_x0 = in_x_origin + (first_tap % kernel_w) * dilation_w
                    inside0 = 0 <= in_y0 < height and 0 <= in_x0 < width
                    source0 = x[n, in_y0, in_x0] if inside0 else pad_row
                    zero0 = x_zero_point if inside0 else pad_raw
                    inside1 = False
                    in_y1 = 0
                    in_x1 = 0
                    if second_tap < taps:
                        in_y1 = in_y_origin + (second_tap // kernel_w) * dilation_h
                        in_x1 = in_x_origin + (second_tap % kernel_w) * dilation_w
                        inside1 = 0 <= in_y1 < height and 0 <= in_x1 < width
                    source1 = x[n, in_y1, in_x1] if inside1 else pad_row
                    zero1 = x_zero_point if inside1 else pad_raw
                    centered0 = centered[first_tap]
                    centered1 = centered[second_tap]
                    raw0 = raw[first_tap]
                    raw1 = raw[second_tap]
                    for c in range(channels):
                        value0 = np.int32(source0[c])
                        value1 = np.int32(source1[c])
                        for j in range(multiplier):
                            out_channel = c * multiplier + j
                            pair_sum = np.int32(value0 * raw0[out_channel]
                                                + value1 * raw1[out_channel])
                            saturated = min(max(pair_sum, INT16_MIN), INT16_MAX)
                            total[out_channel] += ((value0 - zero0) * centered0[out_channel]
                                                   + (value1 - zero1) * centered1[out_channel]
                                                   + (saturated - pair_sum))


# --- from prepared params ----------------------------------------------------------------------

_PACKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def is_depthwise_params(params) -> bool:
    """Whether ``depthwise_accumulator`` covers these ``ConvParams``: 1-D/2-D, groups == C."""
    return len(params.kernel_size) in (1, 2) and params.weight.shape[1] == 1


def accumulator_for(values: np.ndarray, params) -> np.ndarray | None:
    """``conv_accumulator(values, params)`` as int32 through ``depthwise_accumulator`` where it
    applies (a depthwise 1-D/2-D conv), else None (run the general path). Packs the weights once
    per ``params``; applies a non-zeros ``padding_mode`` as ``ConvParams.padded`` does."""
    if not is_depthwise_params(params):
        return None
    packed = _packed_for(params)
    values, padding = params.padded(values)
    # pairs_per_tap with one channel per group: single-product pairs, which never saturate
    saturate = bool(params.pair_saturation) and not params.pairs_per_tap
    return depthwise_accumulator(values, packed, int(params.input_qparams.zero_point), None,
                                 params.stride, padding, params.dilation,
                                 saturate_pairs=saturate,
                                 pad_raw_zero=params.padded_tap == PAD_ZERO)


# --- fused: 3x3 depthwise accumulator and requantization epilogue per block of rows -----------


@intrinsic
def _add_saturate16(typingctx, first, second):
    """``sat16(a + b)`` of two int16 (``llvm.sadd.sat.i16``; vectorized as ``vpaddsw``)."""
    if first != types.int16 or second != types.int16:
        return None

    def codegen(context, builder, signature, args):
        short = ir.IntType(16)
        add = builder.module.declare_intrinsic(
            "llvm.sadd.sat", [short], ir.FunctionType(short, [short, short]))
        return builder.call(add, args)

    return types.int16(types.int16, types.int16), codegen


@numba.njit(**_JIT)
def _product16(value, weight):
    """x * w of a byte and an int8-range weight as int16: |x * w| <= 255 * 128 = 32,640, so the
    wrapping int16 product is the exact one (``vpmullw``; ``vpmaddubsw``'s per-byte product)."""
    return np.int16(np.int32(value) * np.int32(weight))


@numba.njit(**_JIT)
def _pairs_3x3(flat, base, offsets, weights, interior, total, channels):
    """Window inside the input, 3x3, multiplier 1: total = interior + sum_pairs sat16(p), pairs
    (0,1) (2,3) (4,5) (6,7) and tap 8 alone (its partner a zero weight row: sat16(q + 0) = q)."""
    s0 = flat[base + offsets[0]:base + offsets[0] + channels]
    w0 = weights[0]
    s1 = flat[base + offsets[1]:base + offsets[1] + channels]
    w1 = weights[1]
    s2 = flat[base + offsets[2]:base + offsets[2] + channels]
    w2 = weights[2]
    s3 = flat[base + offsets[3]:base + offsets[3] + channels]
    w3 = weights[3]
    s4 = flat[base + offsets[4]:base + offsets[4] + channels]
    w4 = weights[4]
    s5 = flat[base + offsets[5]:base + offsets[5] + channels]
    w5 = weights[5]
    s6 = flat[base + offsets[6]:base + offsets[6] + channels]
    w6 = weights[6]
    s7 = flat[base + offsets[7]:base + offsets[7] + channels]
    w7 = weights[7]
    s8 = flat[base + offsets[8]:base + offsets[8] + channels]
    w8 = weights[8]
    for c in range(channels):
        pair0 = _add_saturate16(_product16(s0[c], w0[c]),
                                _product16(s1[c], w1[c]))
        pair1 = _add_saturate16(_product16(s2[c], w2[c]),
                                _product16(s3[c], w3[c]))
        pair2 = _add_saturate16(_product16(s4[c], w4[c]),
                                _product16(s5[c], w5[c]))
        pair3 = _add_saturate16(_product16(s6[c], w6[c]),
                                _product16(s7[c], w7[c]))
        last = _product16(s8[c], w8[c])
        total[c] = (interior[c] + np.int32(pair0) + np.int32(pair1) + np.int32(pair2)
                    + np.int32(pair3) + np.int32(last))


@numba.njit(**_JIT)
def _exact_3x3(flat, base, offsets, weights, interior, total, channels):
    """Window inside the input, 3x3, multiplier 1: total = interior + sum_tap x * (w - z_w)."""
    s0 = flat[base + offsets[0]:base + offsets[0] + channels]
    w0 = weights[0]
    s1 = flat[base + offsets[1]:base + offsets[1] + channels]
    w1 = weights[1]
    s2 = flat[base + offsets[2]:base + offsets[2] + channels]
    w2 = weights[2]
    s3 = flat[base + offsets[3]:base + offsets[3] + channels]
    w3 = weights[3]
    s4 = flat[base + offsets[4]:base + offsets[4] + channels]
    w4 = weights[4]
    s5 = flat[base + offsets[5]:base + offsets[5] + channels]
    w5 = weights[5]
    s6 = flat[base + offsets[6]:base + offsets[6] + channels]
    w6 = weights[6]
    s7 = flat[base + offsets[7]:base + offsets[7] + channels]
    w7 = weights[7]
    s8 = flat[base + offsets[8]:base + offsets[8] + channels]
    w8 = weights[8]
    for c in range(channels):
        total[c] = (interior[c]
                    + np.int32(s0[c]) * np.int32(w0[c])
                    + np.int32(s1[c]) * np.int32(w1[c])
                    + np.int32(s2[c]) * np.int32(w2[c])
                    + np.int32(s3[c]) * np.int32(w3[c])
                    + np.int32(s4[c]) * np.int32(w4[c])
                    + np.int32(s5[c]) * np.int32(w5[c])
                    + np.int32(s6[c]) * np.int32(w6[c])
                    + np.int32(s7[c]) * np.int32(w7[c])
                    + np.int32(s8[c]) * np.int32(w8[c]))


@numba.njit(**_JIT)
def _edge_position(flat, n, in_y_origin, in_x_origin, height, width, channels, kernel_h,
                   kernel_w, dilation_h, dilation_w, saturate, x_zero_point, centered, raw,
                   raw16, zero_point, pad_raw, pad_row, total):
    """One output position whose window leaves the input, multiplier 1: the same sums as
    ``_depthwise_exact`` (padded taps add 0) or ``_depthwise_pairs`` (padded taps raw
    ``pad_raw`` in the pairs, the exact part corrected as there)."""
    taps = kernel_h * kernel_w
    for c in range(channels):
        total[c] = 0
    if not saturate:
        for tap in range(taps):
            in_y = in_y_origin + (tap // kernel_w) * dilation_h
            in_x = in_x_origin + (tap % kernel_w) * dilation_w
            if 0 <= in_y < height and 0 <= in_x < width:
                start = ((n * height + in_y) * width + in_x) * channels
                source = flat[start:start + channels]
                weights = centered[tap]
                for c in range(channels):
                    total[c] += (np.int32(source[c]) - x_zero_point) * weights[c]
        return
    for tap in range(taps):
        in_y = in_y_origin + (tap // kernel_w) * dilation_h
        in_x = in_x_origin + (tap % kernel_w) * dilation_w
        weights = raw[tap]
        if 0 <= in_y < height and 0 <= in_x < width:
            start = ((n * height + in_y) * width + in_x) * channels
            source = flat[start:start + channels]
            for c in range(channels):
                total[c] += (x_zero_point * (zero_point[c] - weights[c])
                             - zero_point[c] * np.int32(source[c]))
        else:
            for c in range(channels):
                total[c] -= pad_raw * weights[c]
    for pair in range((taps + 1) // 2):
        first_tap = 2 * pair
        second_tap = min(first_tap + 1, taps - 1)  # odd tail: weight row taps is zeros
        in_y0 = in_y_origin + (first_tap // kernel_w) * dilation_h
        in_x0 = in_x_origin + (first_tap % kernel_w) * dilation_w
        in_y1 = in_y_origin + (second_tap // kernel_w) * dilation_h
        in_x1 = in_x_origin + (second_tap % kernel_w) * dilation_w
        inside0 = 0 <= in_y0 < height and 0 <= in_x0 < width
        inside1 = 0 <= in_y1 < height and 0 <= in_x1 < width
        start0 = ((n * height + in_y0) * width + in_x0) * channels if inside0 else 0
        start1 = ((n * height + in_y1) * width + in_x1) * channels if inside1 else 0
        source0 = flat[start0:start0 + channels] if inside0 else pad_row
        source1 = flat[start1:start1 + channels] if inside1 else pad_row
        raw0 = raw16[first_tap]
        raw1 = raw16[first_tap + 1]
        for c in range(channels):
            total[c] += np.int32(_add_saturate16(_product16(source0[c], raw0[c]),
                                                 _product16(source1[c], raw1[c])))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _depthwise_fused(flat, batch, height, width, channels, kernel_h, kernel_w, stride_h,
                     stride_w, pad_h, pad_w, dilation_h, dilation_w, out_h, out_w, saturate,
                     x_zero_point, weights16, centered, raw, raw16, interior, zero_point,
                     asymmetric, pad_raw, pad_row, out_bytes, program, c32, c64, i64, s32, block_rows,
                     operand0, strides0, operand1, strides1, operand2, strides2, row_begin,
                     row_end):
    """Output rows row_begin..row_end (row = (n, out_y, out_x)), ``block_rows`` at a time: the
    int32 accumulator of the block (3x3 interior windows by ``_pairs_3x3`` / ``_exact_3x3``,
    the others by ``_edge_position``), then the epilogue ``run_block`` on it."""
    acc = np.empty(block_rows * channels, np.int32)
    fval = np.empty(block_rows * channels, np.float32)
    ival = np.empty(block_rows * channels, np.int64)
    plane = out_h * out_w
    offsets = np.zeros(kernel_h * kernel_w, np.int64)
    for tap in range(kernel_h * kernel_w):
        offsets[tap] = ((tap // kernel_w) * dilation_h * width
                        + (tap % kernel_w) * dilation_w) * channels
    fast_window = kernel_h == 3 and kernel_w == 3
    for first in range(row_begin, row_end, block_rows):
        rows = min(block_rows, row_end - first)
        for r in range(rows):
            row = first + r
            n = row // plane
            position = row - n * plane
            out_y = position // out_w
            out_x = position - out_y * out_w
            in_y_origin = out_y * stride_h - pad_h
            in_x_origin = out_x * stride_w - pad_w
            total = acc[r * channels:(r + 1) * channels]
            inside = (in_y_origin >= 0 and in_y_origin + (kernel_h - 1) * dilation_h < height
                      and in_x_origin >= 0
                      and in_x_origin + (kernel_w - 1) * dilation_w < width)
            if fast_window and inside:
                base = ((n * height + in_y_origin) * width + in_x_origin) * channels
                if saturate:
                    _pairs_3x3(flat, base, offsets, weights16, interior, total, channels)
                    if asymmetric:  # - z_w sum_taps x
                        for tap in range(9):
                            start = base + offsets[tap]
                            for c in range(channels):
                                total[c] -= zero_point[c] * np.int32(flat[start + c])
                else:
                    _exact_3x3(flat, base, offsets, weights16, interior, total, channels)
            else:
                _edge_position(flat, n, in_y_origin, in_x_origin, height, width, channels,
                               kernel_h, kernel_w, dilation_h, dilation_w, saturate,
                               x_zero_point, centered, raw, raw16, zero_point, pad_raw, pad_row,
                               total)
        run_block(acc[:rows * channels], rows, first, channels, out_bytes, program, c32, c64,
                  i64, s32, fval, ival, operand0, strides0, operand1, strides1, operand2,
                  strides2)


def depthwise_requantize(values: np.ndarray, params, epilogue, operands=None,
                         out: np.ndarray | None = None) -> np.ndarray | None:
    """``epilogue.run(accumulator_for(values, params), operands=operands)``, the (N * P, OC)
    ``epilogue.out_dtype`` output, with the accumulator formed and requantized block by block
    (it never leaves L1/L2); None where ``accumulator_for`` gives None (not depthwise, not
    uint8). Multiplier 1 fuses; other depthwise layers run ``accumulator_for`` then the epilogue.
    ``operands``: as ``Epilogue.run``; ``out``: a C-contiguous array of the result's shape."""
    if not is_depthwise_params(params) or np.asarray(values).dtype != np.uint8:
        return None
    if values.ndim == 5 or params.weight.shape[0] != np.shape(values)[1]:
        acc = accumulator_for(values, params)
        return None if acc is None else epilogue.run(acc, out=out, operands=operands)
    packed = _packed_for(params)
    padded, padding = params.padded(values)
    dims = padded.ndim - 2
    if dims == 1:
        padded = padded[:, :, None, :]
    stride2, padding2, dilation2 = (_pair2(params.stride, dims, 1, "stride"),
                                    _pair2(padding, dims, 0, "padding"),
                                    _pair2(params.dilation, dims, 1, "dilation"))
    batch, channels, height, width = padded.shape
    out_h, out_w = output_shape((height, width), packed.kernel, stride2, padding2, dilation2)
    rows = batch * out_h * out_w
    if epilogue.channels != channels:
        raise ShapeError(f"the epilogue is for {epilogue.channels} channels, the layer has "
                         f"{channels}")
    out, program, slots = epilogue.output_for(rows, out, operands)
    if rows == 0:
        return out
    x_zero_point = int(params.input_qparams.zero_point)
    saturate = bool(params.pair_saturation) and not params.pairs_per_tap
    pad_raw = 0 if (saturate and params.padded_tap == PAD_ZERO) else x_zero_point
    taps = packed.kernel[0] * packed.kernel[1]
    if saturate:
        weights16 = packed.raw16
        interior = (-x_zero_point * packed.raw_sum
                    + taps * x_zero_point * packed.zero_point).astype(np.int32)
    else:
        weights16 = packed.centered16
        interior = (-x_zero_point * packed.centered_sum).astype(np.int32)
    flat = _channels_last(padded).reshape(-1)
    _depthwise_fused(flat, batch, height, width, channels, packed.kernel[0], packed.kernel[1],
                     stride2[0], stride2[1], padding2[0], padding2[1], dilation2[0],
                     dilation2[1], out_h, out_w, saturate, np.int32(x_zero_point), weights16,
                     packed.centered, packed.raw, packed.raw16, interior, packed.zero_point,
                     bool(packed.zero_point.any()), np.int32(pad_raw),
                     np.full(channels, pad_raw, np.uint8),
                     out.reshape(-1).view(np.uint8), program, epilogue.c32, epilogue.c64,
                     epilogue.i64, epilogue.s32, epilogue.block_rows, *slots, 0, rows)
    return out


def _packed_for(params) -> DepthwiseWeights:
    """The layer's weights packed for the depthwise kernels, once per ``params``."""
    packed = _PACKED.get(params)
    if packed is None:
        packed = depthwise_weights(params.weight, params.weight_qparams.zero_point)
        _PACKED[params] = packed
    return packed
