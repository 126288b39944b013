"""Quantized upsampling: ``F.interpolate`` / ``nn.Upsample`` in modes nearest, nearest-exact
(4-D and 5-D inputs) and bilinear (4-D).

Output qparams are the input's. Sources: aten/src/ATen/native/UpSample.h (source indices),
aten/src/ATen/native/quantized/cpu/UpSampleNearest2d.cpp, UpSampleBilinear2d.cpp and
kernels/QuantizedOpKernels.cpp (``qupsample_bilinear2d_nhwc_kernel``).

nearest (UpSample.h ``nearest_neighbor_compute_source_index``):
``src = min(floor(f32(o * r)), in - 1)``
with ``r = compute_scales_value<float>``: ``f32(1.0 / scale_factor)`` (double division) when the
user gave a scale_factor, else ``f32(in) / f32(out)``; a plain copy only when out == in in *both*
dims (no per-dim ``o >> 1`` shortcut, unlike the float kernel). Output size: ``floor(in * scale)``
in double.
nearest-exact (UpSample.h ``nearest_neighbor_exact_compute_source_index``):
``src = min(floor(f32(double(o + 0.5) * r)), in - 1)``: ``o + 0.5`` and the product are
doubles, ``floorf`` takes the product rounded to float (measured: identical to ``f32(o + 0.5)``
products below 2^23 outputs); the same ``r`` and the same plain copy when no size changes.
5-D inputs (quantized/cpu/UpSampleNearest3d.cpp, both modes): the same indices per dim (depth,
height, width), a plain copy only when all three sizes are unchanged.
bilinear, per output pixel, all float32; the kernel the engine runs for the call
(``Engine.kernel("upsample", ...)``: an ``UpsampleKernel``, engines/aten_pooling.py) states its
``BilinearNumerics``, which products are fused (``fmaf``, one rounding):
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
    ``rne(fmaf(v, 1, z))``) agree (``UpsampleKernel.quantize_steps``).
Every value is reported to ``qexact.trace`` as it is computed (explain observes the run).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..engines.aten_pooling import BilinearNumerics
from ..engines.base import Engine
from ..errors import ShapeError, UnsupportedError
from ..layout import suggests_channels_last, to_channels_last, to_contiguous
from ..qparams import QParams, QuantizedArray
from ..rounding import f32, fma_float32
from ..trace import apply_steps, observing, record
from ._average import (input_values, laid_out, require_float32_kernel, source_axes,
                       through_float32, upstream_from)
from ._registry import graph_op, observed_stages
from .quantize import output_qparams_of, require_quantized


NEAREST_MODES = ("nearest", "nearest-exact")


@dataclass(frozen=True)
class UpsampleParams:
    """``mode`` (nearest | bilinear), ``size`` (out H, W) or ``scale_factor`` (per dim, float),
    ``align_corners`` (bilinear), ``engine``: the ``Engine`` whose ``"upsample"`` kernel runs it
    (chosen per call: the input's layout picks it)."""

    mode: str
    size: tuple[int, ...] | None
    scale_factor: tuple[float, ...] | None
    align_corners: bool
    engine: Engine
    output_qparams: QParams | None = None
    """The output's qparams where they differ from the input's (None: the input's), for a
    kernel that takes them (a float32 kernel between converts, ``through_float32``)."""

    @property
    def inexact(self) -> str:
        """Why this op's kernel on its engine is not bit-exact ("": exact;
        ``Engine.inexact_kernels``)."""
        return self.engine.inexact_kernels.get(f"upsample {self.mode}", "")


def prepare_upsample(mode: str, size=None, scale_factor=None, align_corners=None, *,
                     engine, output_qparams: QParams | None = None) -> UpsampleParams:
    """Validate an upsample's arguments for ``engine`` (a name or an ``Engine``)."""
    from ..engines import get_engine

    if mode not in NEAREST_MODES + ("bilinear",):
        raise UnsupportedError(f"upsample mode {mode!r}; supported: 'nearest', 'nearest-exact', "
                               "'bilinear'")
    if (size is None) == (scale_factor is None):
        raise ShapeError("upsample takes exactly one of size and scale_factor")
    if size is not None:
        size = tuple(int(s) for s in (size if isinstance(size, (tuple, list)) else (size, size)))
    if scale_factor is not None:
        factors = (scale_factor if isinstance(scale_factor, (tuple, list))
                   else (scale_factor, scale_factor))
        scale_factor = tuple(float(s) for s in factors)
    return UpsampleParams(mode, size, scale_factor, bool(align_corners), get_engine(engine),
                          output_qparams)


def _per_dim(values: tuple, dims: int, what: str) -> tuple:
    """``values`` for ``dims`` spatial dims: a number given once (prepare repeats it twice)
    applies to every dim."""
    if len(values) == dims:
        return values
    if len(set(values)) == 1:
        return (values[0],) * dims
    raise ShapeError(f"upsample {what} {values!r} does not match {dims} spatial dims")


def _output_sizes(p: UpsampleParams, in_sizes):
    dims = len(in_sizes)
    if p.size is not None:
        return _per_dim(p.size, dims, "size"), (None,) * dims
    factors = _per_dim(p.scale_factor, dims, "scale_factor")
    sizes = tuple(int(np.floor(i * s)) for i, s in zip(in_sizes, factors))
    return sizes, factors


def _scale(in_size, out_size, scale, align_corners=False):
    if align_corners:
        if out_size <= 1:
            return np.float32(0)
        return f32(np.float32(in_size - 1) / np.float32(out_size - 1))
    if scale is not None and scale > 0:
        return f32(1.0 / scale)
    return f32(np.float32(in_size) / np.float32(out_size))


def nearest_indices(in_size: int, out_size: int, scale, exact: bool = False) -> np.ndarray:
    """``nearest``: ``min(floor(f32(o * r)), in - 1)``; ``exact`` (nearest-exact):
    ``min(floor(f32(double(o + 0.5) * r)), in - 1)``."""
    index = np.arange(out_size)
    ratio = _scale(in_size, out_size, scale)
    if exact:
        real = f32((index + 0.5) * np.float64(ratio))
    else:
        real = f32(f32(index) * ratio)
    return np.minimum(np.floor(real).astype(np.int64), in_size - 1)


def nearest_grid(in_h, in_w, out_h, out_w, scale_h, scale_w, exact: bool = False):
    """Source rows and columns: a plain copy only when *both* sizes are unchanged
    (UpSampleNearest2d.cpp: the quantized kernel has no per-dim ``o >> 1`` / identity shortcut)."""
    return nearest_axes((in_h, in_w), (out_h, out_w), (scale_h, scale_w), exact)


def nearest_axes(in_sizes, out_sizes, scales, exact: bool = False) -> list[np.ndarray]:
    """Source indices per spatial dim (2 or 3 of them): a plain copy only when every size is
    unchanged (quantized UpSampleNearest2d.cpp / UpSampleNearest3d.cpp)."""
    if tuple(in_sizes) == tuple(out_sizes):
        return [np.arange(size) for size in out_sizes]
    return [nearest_indices(i, o, s, exact) for i, o, s in zip(in_sizes, out_sizes, scales)]


def _gather(values: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    out = values
    for dim, index in enumerate(axes, start=2):
        out = np.take(out, index, axis=dim)
    return out


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


_BLEND_FORMULA = {"none": "f32(f32({a} * {x}) + f32({b} * {y}))",
                  "first": "fmaf({a}, {x}, f32({b} * {y}))",
                  "second": "fmaf({b}, {y}, f32({a} * {x}))"}


def blend_formula(rule: str, a: str, x: str, b: str, y: str) -> str:
    """The blend ``B(a, x, b, y)`` under ``rule`` as a formula over the named values."""
    return _BLEND_FORMULA[rule].format(a=f"{{{a}}}", x=f"{{{x}}}", b=f"{{{b}}}", y=f"{{{y}}}")


def simd_channel_count(rule: BilinearNumerics, channels: int) -> int:
    """How many channels ``do_quantized_bilinear_on_AVX2`` takes: ``C // w * w``."""
    width = rule.simd_channels
    return channels // width * width if width else 0


def _record_copy(label: str, formula: str, out: np.ndarray, rows, cols) -> None:
    """Report a copied output and the source pixel of each element (``from_k``)."""
    if not observing():
        return
    record(label, formula, out,
           **source_axes(out.shape, 2, [np.asarray(rows).reshape(-1, 1), np.asarray(cols)]))


def _bilinear(x: QuantizedArray, kernel, out_h: int, out_w: int, scales,
              align_corners: bool) -> np.ndarray:
    """The output integers (int64, NCHW logical order) of ``kernel``'s bilinear paths: the SIMD
    channels, then the scalar ones, each with its blend rule and quantize steps."""
    values = x.values
    rule = kernel.bilinear
    batch, channels, in_h, in_w = values.shape
    h0, h1, hl0, hl1 = bilinear_weights(in_h, out_h, scales[0], align_corners,
                                        rule.source_index_fused)
    w0, w1, wl0, wl1 = bilinear_weights(in_w, out_w, scales[1], align_corners,
                                        rule.source_index_fused)
    source = ("fmaf(scale, f32(o + 0.5), -0.5)" if rule.source_index_fused
              else "f32(f32(scale * f32(o + 0.5)) - 0.5)")
    record("upsample: source index", f"r = {source} clamped at 0 (align_corners: f32(scale * o)); "
           "i = int(r), l1 = f32(r - i), l0 = f32(1 - l1); neighbour i + (i < in - 1)", None,
           source_index_fused=rule.source_index_fused)
    z = np.float32(x.zero_point)
    split = simd_channel_count(rule, channels)
    channel = np.arange(channels).reshape(1, -1, 1, 1)
    out = np.empty((batch, channels, out_h, out_w), np.int64)
    for simd, part, kind, path in ((True, slice(0, split), rule.simd_blend, "SIMD channels "
                                    f"(do_quantized_bilinear_on_AVX2, blocks of "
                                    f"{rule.simd_channels})"),
                                   (False, slice(split, None), rule.tail_blend,
                                    "scalar channel loop")):
        grid = values[:, part].astype(np.float32)
        if grid.shape[1] == 0:
            continue
        where = np.broadcast_to(channel < split if simd else channel >= split, out.shape)
        record("upsample: path", "which code path of the kernel computes this element", None,
               where=where, kernel=kernel.name, path=path)
        rows0, rows1 = grid[:, :, h0], grid[:, :, h1]
        p00, p01, p10, p11 = rows0[..., w0], rows0[..., w1], rows1[..., w0], rows1[..., w1]
        shape = p00.shape
        shown, source = {}, {}
        if observing():
            shown = {name: np.broadcast_to(value, shape) for name, value in (
                ("h0", h0.reshape(-1, 1)), ("h1", h1.reshape(-1, 1)), ("w0", w0), ("w1", w1),
                ("h_l0", hl0.reshape(-1, 1)), ("h_l1", hl1.reshape(-1, 1)), ("w_l0", wl0),
                ("w_l1", wl1))}
            source = source_axes(shape, 1, [
                np.arange(part.start, part.start + shape[1]).reshape(1, -1, 1, 1),
                shown["h0"], shown["w0"]])
        top = record("upsample: top row", "top = "
                     + blend_formula(kind, "w_l0", "p00", "w_l1", "p01")
                     + "; p00 = x[{from_0}, {from_1}, {h0}, {w0}], p01 = x[..., {h0}, {w1}]",
                     blend(kind, wl0, p00, wl1, p01), where=where, p00=p00, p01=p01,
                     blend=kind, **shown, **source)
        bottom = record("upsample: bottom row", "bottom = "
                        + blend_formula(kind, "w_l0", "p10", "w_l1", "p11")
                        + "; p10 = x[..., {h1}, {w0}], p11 = x[..., {h1}, {w1}]",
                        blend(kind, wl0, p10, wl1, p11), where=where, p10=p10, p11=p11,
                        blend=kind, **shown)
        vertical = blend(kind, hl0[:, None], top, hl1[:, None], bottom)
        centered = record("upsample: blend minus z", "v = f32("
                          + blend_formula(kind, "h_l0", "top", "h_l1", "bottom") + " - {z})",
                          f32(vertical - z), where=where, top=top, bottom=bottom, z=z,
                          blend=kind, **{k: shown[k] for k in ("h_l0", "h_l1") if k in shown})
        out[:, part] = apply_steps(centered, kernel.quantize_steps(simd, x.qparams, x.qparams),
                                   where=where, prefix="upsample: ")
    return out


def upsample(x, p: UpsampleParams):
    """Quantized ``F.interpolate`` (nearest, bilinear) on an (N, C, H, W) input, by the kernel the
    engine runs for it (``UpsampleKernel``). A float32 ``x`` runs on an engine's float32 kernel
    (a PT2E model's float op) and stays float."""
    values, _ = input_values(x)
    if values.ndim == 5 and p.mode in NEAREST_MODES and isinstance(x, QuantizedArray):
        return _upsample_nearest_5d(x, p)
    if values.ndim != 4:
        raise ShapeError(f"quantized upsample expects a 4-D (N, C, H, W) input (5-D for the "
                         f"nearest modes), got {values.shape}")
    (out_h, out_w), (scale_h, scale_w) = _output_sizes(p, values.shape[2:])
    in_h, in_w = values.shape[2:]
    kernel = p.engine.kernel("upsample", p.mode, values)
    record("upsample: kernel", "the kernel that runs this call", None, kernel=kernel.name,
           source=kernel.source)
    require_float32_kernel("upsample", kernel, x)
    if getattr(kernel, "runs_in_float32", False):
        return through_float32("upsample", kernel, x, p.engine, p.output_qparams,
                               size=(out_h, out_w), align_corners=p.align_corners)
    if p.output_qparams is not None and p.output_qparams != x.qparams:
        raise UnsupportedError(f"upsample: the kernel {kernel.name} keeps its input's qparams, "
                               "and this op's output has others")
    if kernel.mode in NEAREST_MODES:
        exact = kernel.mode == "nearest-exact"
        rows, cols = nearest_grid(in_h, in_w, out_h, out_w, scale_h, scale_w, exact)
        out = values[:, :, rows][:, :, :, cols]
        _record_copy(f"upsample: {kernel.mode}", "q = x[{from_0}, {from_1}, {from_2}, {from_3}], "
                     "the nearest source pixel: " + _NEAREST_FORMULA[exact], out, rows, cols)
    elif kernel.copies_unchanged_size and (in_h, in_w) == (out_h, out_w):
        out = values.copy()
        _record_copy("upsample: copy", "the output size is the input's: the kernel returns a "
                     "copy, q = x[{from_0}, {from_1}, {from_2}, {from_3}]", out,
                     np.arange(out_h), np.arange(out_w))
    else:
        out = _bilinear(x, kernel, out_h, out_w, (scale_h, scale_w), p.align_corners)
        out = out.astype(x.dtype.numpy_dtype)
    return QuantizedArray(laid_out("upsample", kernel.output, out, values), x.qparams)


_NEAREST_FORMULA = {False: "src = min(floor(f32(o * r)), in - 1)",
                    True: "src = min(floor(f32(double(o + 0.5) * r)), in - 1)"}


def _upsample_nearest_5d(x: QuantizedArray, p: UpsampleParams) -> QuantizedArray:
    """Quantized nearest / nearest-exact on an (N, C, D, H, W) input (UpSampleNearest3d.cpp)."""
    values = x.values
    outs, scales = _output_sizes(p, values.shape[2:])
    kernel = p.engine.kernel("upsample", p.mode, values)
    record("upsample: kernel", "the kernel that runs this call", None, kernel=kernel.name,
           source=kernel.source)
    if getattr(kernel, "runs_in_float32", False) or kernel.mode not in NEAREST_MODES:
        raise UnsupportedError(f"5-D {p.mode} upsampling on engine {p.engine.name!r} is not "
                               "supported (ATen's quantized upsample_nearest3d is)")
    if p.output_qparams is not None and p.output_qparams != x.qparams:
        raise UnsupportedError(f"upsample: the kernel {kernel.name} keeps its input's qparams, "
                               "and this op's output has others")
    exact = kernel.mode == "nearest-exact"
    axes = nearest_axes(values.shape[2:], outs, scales, exact)
    out = _gather(values, axes)
    if observing():
        record(f"upsample: {kernel.mode} (3-D)", "q = x[{from_0}, {from_1}, {from_2}, {from_3}, "
               "{from_4}], the nearest source voxel: " + _NEAREST_FORMULA[exact], out,
               **source_axes(out.shape, 2, [axes[0].reshape(-1, 1, 1), axes[1].reshape(-1, 1),
                                            axes[2]]))
    return QuantizedArray(laid_out("upsample", kernel.output, out, values), x.qparams)


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
    if x.ndim != 4:
        raise ShapeError(f"upsample expects a 4-D (N, C, H, W) input, got {x.shape}")
    (out_h, out_w), (scale_h, scale_w) = _output_sizes(p, x.shape[2:])
    rows = float_nearest_indices(x.shape[2], out_h, scale_h)
    cols = float_nearest_indices(x.shape[3], out_w, scale_w)
    out = x[:, :, rows][:, :, :, cols]
    _record_copy("upsample (float): nearest", "y = x[{from_0}, {from_1}, {from_2}, {from_3}] "
                 "(UpSampleKernel.cpp nearest_idx: o, o >> 1, or min(floor(f32(o * r)), in - 1))",
                 out, rows, cols)
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
        from ..engines import get_engine

        a = node.attrs
        if not input_qparams or input_qparams[0] is None:
            if a["mode"] != "nearest" and get_engine(engine).flow != "pt2e":
                raise UnsupportedError(
                    f"{a['mode']} upsampling of a float tensor (F.interpolate between a dequantize "
                    "and a quantize, as FX leaves it) is not supported: the arithmetic of ATen's "
                    "float kernel is not modelled; quantize the upsample (e.g. apply it to the "
                    "quantized tensor) or use mode='nearest'")
            qparams = None
        else:
            qparams = require_quantized(node, input_qparams)
        size = (1, 1) if a.get("size_from_inputs") else a.get("size")  # placeholder: see run
        output = output_qparams_of(node) if qparams is not None else None  # PT2E's own, if any
        return prepare_upsample(a["mode"], size, a.get("scale_factor"),
                                a.get("align_corners"), engine=engine,
                                output_qparams=output), output or qparams

    @staticmethod
    def run(params, inputs):
        params = _with_runtime_size(params, inputs)
        x = inputs[0]
        if not isinstance(x, QuantizedArray) and not getattr(
                params.engine.kernel("upsample", params.mode, np.asarray(x)), "runs_in_float32",
                False):  # FX's float nearest upsample, as ATen's float kernel runs it
            return upsample_nearest_float(np.asarray(x), params)
        return upsample(x, params)

    @staticmethod
    def explain(params, inputs, result, index):
        stages = observed_stages(UpsampleOp.run, params, inputs, result, index)
        x = inputs[0]
        return stages, upstream_from(stages, np.shape(x.values if isinstance(x, QuantizedArray)
                                                      else x))
