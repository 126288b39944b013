"""Quantized upsampling: ``F.interpolate`` / ``nn.Upsample`` in modes nearest and bilinear.

Output qparams are the input's. Sources: aten/src/ATen/native/UpSample.h (source indices),
aten/src/ATen/native/quantized/cpu/UpSampleNearest2d.cpp, UpSampleBilinear2d.cpp and
kernels/QuantizedOpKernels.cpp (``qupsample_bilinear2d_nhwc_kernel``).

nearest (UpSample.h ``nearest_neighbor_compute_source_index``): ``src = min(floor(f32(o * r)), in - 1)``
with ``r = compute_scales_value<float>``: ``f32(1.0 / scale_factor)`` (double division) when the
user gave a scale_factor, else ``f32(in) / f32(out)``; a plain copy only when out == in in *both*
dims (no per-dim ``o >> 1`` shortcut, unlike the float kernel). Output size: ``floor(in * scale)``
in double.
bilinear, per output pixel, all float32; ``PoolingNumerics.nchw_bilinear`` / ``nhwc_bilinear``
(a ``BilinearNumerics``) say which products are fused (``fmaf``, one rounding):
    ``r = scale * f32(o + 0.5) - 0.5`` clamped at 0 (``f32(scale * o)`` with align_corners),
    unfused on NCHW, ``fmaf(scale, f32(o + 0.5), -0.5)`` in the channels_last AVX2 build;
    ``i = int(r)``, ``l1 = f32(r - i)``, ``l0 = f32(1 - l1)``, the neighbour ``i + (i < in - 1)``;
    ``top = B(w0, p00, w1, p01)``, ``bottom = B(w0, p10, w1, p11)``,
    ``v = f32(B(h0, top, h1, bottom) - z)``, where the blend ``B(a, x, b, y)`` is
    ``f32(f32(a x) + f32(b y))`` on NCHW (UpSampleBilinear2d.cpp, no FMA) and with
    ``ATEN_CPU_CAPABILITY=default``; in the channels_last AVX2 build (QuantizedOpKernels.cpp,
    GCC contraction, read from the binary) the SIMD channels ``c < C // 8 * 8``
    (``do_quantized_bilinear_on_AVX_n``) compute ``fmaf(b, y, f32(a x))`` and the scalar tail
    channels ``fmaf(a, x, f32(b y))``. An AVX512 CPU runs that AVX2 build too (the
    stub has no AVX512 registration).
    ``q = clamp(rne(f32(v + z)))``: output qparams are the input's, so ``inverse_scale`` is 1.0 and
    ``quantize_val`` (``rne(f32(f32(v * 1) + z))``) and ``quantize_vec`` (FBGEMM ``QuantizeAvx2``,
    ``rne(fmaf(v, 1, z))``) agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..engines.pooling_numerics import BilinearNumerics, PoolingNumerics, pooling_numerics
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


def bilinear_weights(in_size: int, out_size: int, scale, align_corners: bool,
                     source_index_fused: bool = False):
    """``(i0, i1, l0, l1)`` per output position (UpSample.h area_pixel_compute_scale and
    area_pixel_compute_source_index; ``source_index_fused``: ``BilinearNumerics``)."""
    ratio = _scale(in_size, out_size, scale, align_corners)
    index = np.arange(out_size)
    if align_corners:
        real = f32(ratio * f32(index))
    else:
        shifted = f32(f32(index) + np.float32(0.5))
        if source_index_fused:
            real = fma_float32(ratio, shifted, np.float32(-0.5))
        else:
            real = f32(f32(ratio * shifted) - np.float32(0.5))
        real = np.where(real < 0, np.float32(0), real)
    first = real.astype(np.int64)
    step = (first < in_size - 1).astype(np.int64)
    lambda1 = f32(real - f32(first))
    lambda0 = f32(np.float32(1) - lambda1)
    return first, first + step, lambda0, lambda1


def blend(rule: str, a, x, b, y):
    """``a x + b y`` in float32 under ``rule`` (``BilinearNumerics.simd_blend``/``tail_blend``)."""
    if rule == "first":
        return fma_float32(a, x, f32(b * y))
    if rule == "second":
        return fma_float32(b, y, f32(a * x))
    if rule == "none":
        return f32(f32(a * x) + f32(b * y))
    raise UnsupportedError(f"bilinear blend rule {rule!r}; known: 'none', 'first', 'second'")


_BLEND_FORMULA = {"none": "f32(a x) + f32(b y)", "first": "fmaf(a, x, f32(b y))",
                  "second": "fmaf(b, y, f32(a x))"}


def bilinear_rule(p: UpsampleParams, values: np.ndarray) -> BilinearNumerics:
    """The kernel an input takes: channels_last-contiguous arrays take the NHWC kernel."""
    from ..layout import is_channels_last

    return p.numerics.nhwc_bilinear if is_channels_last(values) else p.numerics.nchw_bilinear


def simd_channel_count(rule: BilinearNumerics, channels: int) -> int:
    width = rule.simd_channels
    return channels // width * width if width else 0


def _bilinear(values: np.ndarray, zero_point: int, out_h: int, out_w: int, scales,
              align_corners: bool, rule: BilinearNumerics) -> np.ndarray:
    """Rounded (not yet clamped) float32 results, NCHW logical order."""
    in_h, in_w = values.shape[2:]
    h0, h1, hl0, hl1 = bilinear_weights(in_h, out_h, scales[0], align_corners,
                                        rule.source_index_fused)
    w0, w1, wl0, wl1 = bilinear_weights(in_w, out_w, scales[1], align_corners,
                                        rule.source_index_fused)
    hl0, hl1 = hl0[:, None], hl1[:, None]
    z = np.float32(zero_point)
    split = simd_channel_count(rule, values.shape[1])
    parts = []
    for channels, kind in ((slice(0, split), rule.simd_blend),
                           (slice(split, None), rule.tail_blend)):
        grid = values[:, channels].astype(np.float32)
        if grid.shape[1] == 0:
            continue
        rows0, rows1 = grid[:, :, h0], grid[:, :, h1]
        top = blend(kind, wl0, rows0[..., w0], wl1, rows0[..., w1])
        bottom = blend(kind, wl0, rows1[..., w0], wl1, rows1[..., w1])
        centered = f32(blend(kind, hl0, top, hl1, bottom) - z)
        parts.append(round_half_even(f32(centered + z)))
    if not parts:
        return np.zeros((values.shape[0], 0, out_h, out_w), np.float32)
    return np.concatenate(parts, axis=1)


def upsample(x: QuantizedArray, p: UpsampleParams) -> QuantizedArray:
    from ..layout import is_channels_last, nhwc_kernel_result, to_contiguous

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
        rule = bilinear_rule(p, values)
        rounded = _bilinear(values, x.zero_point, out_h, out_w, (scale_h, scale_w),
                            p.align_corners, rule)
        out = np.clip(rounded, x.dtype.qmin, x.dtype.qmax).astype(x.dtype.numpy_dtype)
    if channels_last:
        return QuantizedArray(nhwc_kernel_result(out, values), x.qparams)
    return QuantizedArray(to_contiguous(out), x.qparams)


def float_nearest_indices(in_size: int, out_size: int, scale) -> np.ndarray:
    """UpSampleKernel.cpp ``nearest_idx`` (float tensors): ``o`` when out == in, ``o >> 1`` when
    out == 2 in, else ``nearest_indices``."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    return nearest_indices(in_size, out_size, scale)


def upsample_nearest_float(x: np.ndarray, p: UpsampleParams) -> np.ndarray:
    """``F.interpolate(mode="nearest")`` on a float32 tensor (FX leaves some upsamples between a
    dequantize and a quantize): a copy. Its source pixels differ from the quantized kernel's:
    UpSampleKernel.cpp ``nearest_idx`` decides per dim, ``o`` when out == in, ``o >> 1`` when
    out == 2 in (whatever the scale factor), else ``nearest_indices``. The output follows
    ``suggest_memory_format()``."""
    from ..layout import suggests_channels_last, to_channels_last, to_contiguous

    if x.ndim != 4:
        raise ShapeError(f"upsample expects a 4-D (N, C, H, W) input, got {x.shape}")
    (out_h, out_w), (scale_h, scale_w) = _output_sizes(p, x.shape[2:])
    rows = float_nearest_indices(x.shape[2], out_h, scale_h)
    out = x[:, :, rows][:, :, :, float_nearest_indices(x.shape[3], out_w, scale_w)]
    return to_channels_last(out) if suggests_channels_last(x) else to_contiguous(out)


def _with_runtime_size(params: UpsampleParams, inputs) -> UpsampleParams:
    """``F.interpolate(x, size=y.shape[-2:])``: a size computed in ``forward`` arrives as the
    node's further inputs (one tuple, or one number per dim)."""
    if len(inputs) == 1:
        return params
    parts = inputs[1:]
    size = parts[0] if len(parts) == 1 else parts
    if not isinstance(size, (tuple, list)):
        size = (size, size)
    try:
        size = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ShapeError(f"upsample size must be integers, got {size!r}") from None
    return replace(params, size=size)


@graph_op("upsample", "quantized F.interpolate / nn.Upsample (nearest, bilinear)")
class UpsampleOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        a = node.attrs
        if not input_qparams or input_qparams[0] is None:
            if a["mode"] != "nearest":
                raise UnsupportedError(
                    f"{a['mode']} upsampling of a float tensor (F.interpolate between a dequantize "
                    "and a quantize, as FX leaves it) is not supported: the arithmetic of ATen's "
                    "float kernel is not modelled; quantize the upsample (e.g. apply it to the "
                    "quantized tensor) or use mode='nearest'")
            qparams = None
        else:
            qparams = require_quantized(node, input_qparams)
        size = (1, 1) if a.get("size_from_inputs") else a.get("size")  # placeholder: see run
        return prepare_upsample(a["mode"], size, a.get("scale_factor"),
                                a.get("align_corners"), engine=engine), qparams

    @staticmethod
    def run(params, inputs):
        params = _with_runtime_size(params, inputs)
        if not isinstance(inputs[0], QuantizedArray):
            return upsample_nearest_float(np.asarray(inputs[0]), params)
        return upsample(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        params = _with_runtime_size(params, inputs)
        x = inputs[0]
        values = x.values if isinstance(x, QuantizedArray) else np.asarray(x)
        (out_h, out_w), (scale_h, scale_w) = _output_sizes(params, values.shape[2:])
        n, c, oy, ox = index
        if params.mode == "nearest":
            if isinstance(x, QuantizedArray):
                rows, cols = nearest_grid(*values.shape[2:], out_h, out_w, scale_h, scale_w)
            else:
                rows = float_nearest_indices(values.shape[2], out_h, scale_h)
                cols = float_nearest_indices(values.shape[3], out_w, scale_w)
            iy, ix = int(rows[oy]), int(cols[ox])
            source = (n, c, iy, ix)
            out = result.values if isinstance(result, QuantizedArray) else result
            return [Stage("upsample nearest", "the same value, copied from the nearest pixel",
                          {"from_index": list(source)}, out[index])], [(0, source)]
        rule = bilinear_rule(params, x.values)
        simd = c < simd_channel_count(rule, x.values.shape[1])
        kind = rule.simd_blend if simd else rule.tail_blend
        h0, h1, hl0, hl1 = (a[oy] for a in bilinear_weights(x.values.shape[2], out_h, scale_h,
                                                               params.align_corners,
                                                               rule.source_index_fused))
        w0, w1, wl0, wl1 = (a[ox] for a in bilinear_weights(x.values.shape[3], out_w, scale_w,
                                                               params.align_corners,
                                                               rule.source_index_fused))
        taps = [(n, c, int(h), int(w)) for h in (h0, h1) for w in (w0, w1)]
        source = ("fmaf(scale, o + 0.5, -0.5)" if rule.source_index_fused
                  else "f32(scale (o + 0.5)) - 0.5")
        stage = Stage("upsample bilinear",
                      f"r = {source} (align_corners: scale o), l1 = r - int(r), l0 = 1 - l1; "
                      f"v = B(h0, B(w0, p00, w1, p01), h1, B(w0, p10, w1, p11)) - z; "
                      f"q = clamp(rne(v + z)); B(a, x, b, y) = {_BLEND_FORMULA[kind]}",
                      {"taps": [list(t) for t in taps],
                       "values": [int(x.values[t]) for t in taps],
                       "lambdas": [float(hl0), float(hl1), float(wl0), float(wl1)],
                       "blend": kind, "source_index_fused": rule.source_index_fused},
                      result.values[index])
        return [stage], [(0, taps[0])]
