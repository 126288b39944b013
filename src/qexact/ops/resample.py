"""Quantized upsampling: ``F.interpolate`` / ``nn.Upsample`` in modes nearest and bilinear.

Output qparams are the input's. Sources: aten/src/ATen/native/UpSample.h (source indices),
aten/src/ATen/native/quantized/cpu/UpSampleNearest2d.cpp, UpSampleBilinear2d.cpp and
kernels/QuantizedOpKernels.cpp (``qupsample_bilinear2d_nhwc_kernel``).

nearest (UpSample.h ``nearest_neighbor_compute_source_index``): ``src = min(floor(f32(o * r)), in - 1)``
with ``r = compute_scales_value<float>``: ``f32(1.0 / scale_factor)`` (double division) when the
user gave a scale_factor, else ``f32(in) / f32(out)``; a plain copy only when out == in in *both*
dims (no per-dim ``o >> 1`` shortcut, unlike the float kernel). Output size: ``floor(in * scale)``
in double.
bilinear, per output pixel, all float32 (no FMA):
    ``r = f32(scale * f32(o + 0.5)) - 0.5`` clamped at 0 (``scale * o`` with align_corners),
    ``i = int(r)``, ``l1 = r - i``, ``l0 = 1 - l1``, the neighbour ``i + (i < in - 1)``;
    ``v = h0 (w0 p00 + w1 p01) + h1 (w0 p10 + w1 p11) - z``;
    NCHW and the channels_last tail channels: ``q = clamp(rne(f32(v + z)))``;
    channels_last SIMD channels (``PoolingNumerics.nhwc_bilinear_simd_channels``):
    ``q = clamp(rne(fmaf(v, 1, z)))`` (``quantize_vec``: one rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.pooling_numerics import PoolingNumerics, pooling_numerics
from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ..rounding import f32, fma_float32, round_half_even
from ..stages import Stage
from ._registry import graph_op
from .quantize import require_quantized


@dataclass(frozen=True)
class UpsampleParams:
    """``mode`` (nearest | bilinear), ``size`` (out H, W) or ``scale_factor`` (per dim, float),
    ``align_corners`` (bilinear), ``numerics``."""

    mode: str
    size: tuple[int, ...] | None
    scale_factor: tuple[float, ...] | None
    align_corners: bool
    numerics: PoolingNumerics


def prepare_upsample(mode: str, size=None, scale_factor=None, align_corners=None,
                     engine="fbgemm") -> UpsampleParams:
    from ..engines import get_engine

    if mode not in ("nearest", "bilinear"):
        raise UnsupportedError(f"upsample mode {mode!r}; supported: 'nearest', 'bilinear'")
    if (size is None) == (scale_factor is None):
        raise ShapeError("upsample takes exactly one of size and scale_factor")
    if size is not None:
        size = tuple(int(s) for s in (size if isinstance(size, (tuple, list)) else (size, size)))
    if scale_factor is not None:
        scale_factor = tuple(float(s) for s in (scale_factor if isinstance(scale_factor, (tuple, list))
                                                 else (scale_factor, scale_factor)))
    return UpsampleParams(mode, size, scale_factor, bool(align_corners),
                          pooling_numerics(get_engine(engine)))


def _output_sizes(p: UpsampleParams, in_sizes):
    if p.size is not None:
        return p.size, (None,) * len(in_sizes)
    sizes = tuple(int(np.floor(i * s)) for i, s in zip(in_sizes, p.scale_factor))
    return sizes, p.scale_factor


def _scale(in_size, out_size, scale, align_corners=False):
    if align_corners:
        return f32(np.float32(in_size - 1) / np.float32(out_size - 1)) if out_size > 1 else np.float32(0)
    if scale is not None and scale > 0:
        return f32(1.0 / scale)
    return f32(np.float32(in_size) / np.float32(out_size))


def nearest_indices(in_size: int, out_size: int, scale) -> np.ndarray:
    index = np.arange(out_size)
    ratio = _scale(in_size, out_size, scale)
    return np.minimum(np.floor(f32(f32(index) * ratio)).astype(np.int64), in_size - 1)


def nearest_grid(in_h, in_w, out_h, out_w, scale_h, scale_w):
    """Source rows and columns: a plain copy only when *both* sizes are unchanged
    (UpSampleNearest2d.cpp: the quantized kernel has no per-dim ``o >> 1`` / identity shortcut)."""
    if (in_h, in_w) == (out_h, out_w):
        return np.arange(out_h), np.arange(out_w)
    return nearest_indices(in_h, out_h, scale_h), nearest_indices(in_w, out_w, scale_w)


def bilinear_weights(in_size: int, out_size: int, scale, align_corners: bool):
    """``(i0, i1, l0, l1)`` per output position (UpSample.h area_pixel_compute_source_index)."""
    ratio = _scale(in_size, out_size, scale, align_corners)
    index = np.arange(out_size)
    if align_corners:
        real = f32(ratio * f32(index))
    else:
        real = f32(f32(ratio * f32(f32(index) + np.float32(0.5))) - np.float32(0.5))
        real = np.where(real < 0, np.float32(0), real)
    first = real.astype(np.int64)
    step = (first < in_size - 1).astype(np.int64)
    lambda1 = f32(real - f32(first))
    lambda0 = f32(np.float32(1) - lambda1)
    return first, first + step, lambda0, lambda1


def upsample(x: QuantizedArray, p: UpsampleParams) -> QuantizedArray:
    from .pooling import is_channels_last, nhwc_kernel_result, to_contiguous

    values = x.values
    if values.ndim != 4:
        raise ShapeError(f"quantized upsample expects a 4-D (N, C, H, W) input, got {values.shape}")
    (out_h, out_w), (scale_h, scale_w) = _output_sizes(p, values.shape[2:])
    in_h, in_w = values.shape[2:]
    channels_last = is_channels_last(values)
    if p.mode == "nearest":
        rows, cols = nearest_grid(in_h, in_w, out_h, out_w, scale_h, scale_w)
        out = values[:, :, rows][:, :, :, cols]
    elif (in_h, in_w) == (out_h, out_w) and not channels_last:
        out = values.copy()
    else:
        h0, h1, hl0, hl1 = bilinear_weights(in_h, out_h, scale_h, p.align_corners)
        w0, w1, wl0, wl1 = bilinear_weights(in_w, out_w, scale_w, p.align_corners)
        grid = values.astype(np.float32)
        p00 = grid[:, :, h0][:, :, :, w0]
        p01 = grid[:, :, h0][:, :, :, w1]
        p10 = grid[:, :, h1][:, :, :, w0]
        p11 = grid[:, :, h1][:, :, :, w1]
        hl0, hl1 = hl0[:, None], hl1[:, None]
        top = f32(f32(wl0 * p00) + f32(wl1 * p01))
        bottom = f32(f32(wl0 * p10) + f32(wl1 * p11))
        blended = f32(f32(hl0 * top) + f32(hl1 * bottom))
        zero_point = np.float32(x.zero_point)
        centered = f32(blended - zero_point)
        scalar = round_half_even(f32(centered + zero_point))
        if channels_last:
            simd = round_half_even(fma_float32(centered, np.float32(1), zero_point))
            width = p.numerics.nhwc_bilinear_simd_channels
            channels = values.shape[1]
            mask = (np.arange(channels) < (channels // width * width if width else 0))
            scalar = np.where(mask[None, :, None, None], simd, scalar)
        out = np.clip(scalar, x.dtype.qmin, x.dtype.qmax).astype(x.dtype.numpy_dtype)
    if channels_last:
        return QuantizedArray(nhwc_kernel_result(out, values), x.qparams)
    return QuantizedArray(to_contiguous(out), x.qparams)


@graph_op("upsample", "quantized F.interpolate / nn.Upsample (nearest, bilinear)")
class UpsampleOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = require_quantized(node, input_qparams)
        a = node.attrs
        return prepare_upsample(a["mode"], a.get("size"), a.get("scale_factor"),
                                a.get("align_corners"), engine=engine), qparams

    @staticmethod
    def run(params, inputs):
        return upsample(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        (out_h, out_w), (scale_h, scale_w) = _output_sizes(params, x.values.shape[2:])
        n, c, oy, ox = index
        if params.mode == "nearest":
            rows, cols = nearest_grid(*x.values.shape[2:], out_h, out_w, scale_h, scale_w)
            iy, ix = int(rows[oy]), int(cols[ox])
            source = (n, c, iy, ix)
            return [Stage("upsample nearest", "the same integer, copied from the nearest pixel",
                          {"from_index": list(source)}, result.values[index])], [(0, source)]
        h0, h1, hl0, hl1 = (a[oy] for a in bilinear_weights(x.values.shape[2], out_h, scale_h,
                                                               params.align_corners))
        w0, w1, wl0, wl1 = (a[ox] for a in bilinear_weights(x.values.shape[3], out_w, scale_w,
                                                               params.align_corners))
        taps = [(n, c, int(h), int(w)) for h in (h0, h1) for w in (w0, w1)]
        stage = Stage("upsample bilinear",
                      "v = h0 (w0 p00 + w1 p01) + h1 (w0 p10 + w1 p11) - z; q = clamp(rne(v + z))",
                      {"taps": [list(t) for t in taps],
                       "values": [int(x.values[t]) for t in taps],
                       "lambdas": [float(hl0), float(hl1), float(wl0), float(wl1)]},
                      result.values[index])
        return [stage], [(0, taps[0])]
