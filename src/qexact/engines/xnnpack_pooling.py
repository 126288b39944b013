"""XNNPACK's pooling, mean and resize kernels as ExecuTorch's XNNPACK delegate runs them (engine
``xnnpack``): the ``"max_pool"``, ``"adaptive_avg_pool"``, ``"mean"``, ``"avg_pool"`` and
``"upsample"`` families of its kernel table.

XNNPACK read at 92a7ad5 (ExecuTorch's pin), ExecuTorch 1.5.1's portable kernels; measured
against its runtime on x86-64 (AVX512-VNNI), bit for bit, one thread (each output's order is
fixed: the thread count does not matter) (/tmp/p10/xnnpack/notes.md sections 5-7, 10).

max_pool2d (qs8 ``XNNMaxPooling2d``, s8 maxpool): the largest code over the in-bounds taps;
padding never wins; ``ceil_mode`` is lowered as extra right/bottom padding, which gives PyTorch's
output size and windows. A ``MaxPoolKernel`` with valid taps.

adaptive_avg_pool2d to (1, 1) and ``mean((2, 3), keepdim=True)`` (qs8
``XNNGlobalAvgPooling2d``, run as reduce-nd mean: src/operators/reduce-nd.c,
``xnn_init_qs8_reduce_scalar_params`` / ``xnn_update_qs8_reduce_scalar_params``, the int32 ->
qs8 quantize of src/xnnpack/reference-utils.h), over ``N = H W`` raw codes with sum ``S``::

    inv = f32(f32(s_x / s_y) * f32(1.0f / N))
    yzp = f32((float) z_y - f32((float)(N z_x) * inv))
    q   = sat8(rne(f32(f32((float) S * inv) + yzp)))

The quantizer gives both the input's qparams (``s_x == s_y``), but the kernel takes an output
scale and zero point of its own (``AveragePath.rescales``). Other adaptive sizes, and mean
without keepdim (a portable float32 ``mean.dim`` outside the delegate), are refused.

avg_pool2d is never quantized by XNNPACKQuantizer: the delegate dequantizes (XNNConvert), pools
in float32 and the next quantize converts back (``FloatAveragePoolKernel``):

- ``XNNAvgPooling2d`` (f32-avgpool 9p, src/f32-avgpool/avgpool.c.in, indirection
  src/indirection.c) when not ``ceil_mode`` and (no padding or not ``count_include_pad``): taps
  numbered column-major ``t = kx KH + ky`` (padded and missing taps read 0.0), summed as
  ``((i2 + i3) + (i4 + i5)) + (((i0 + i1) + i8) + (i6 + i7))``, then ``f32(sum * m)`` with
  ``m = f32(1 / (KH KW))`` (``f32(1 / valid taps)`` per pixel without count_include_pad); windows
  of more than 9 taps (the multipass order) are refused;
- otherwise ExecuTorch's portable ``avg_pool2d`` (kernels/portable/cpu/op_avg_pool2d.cpp): a
  sequential float32 sum of the in-bounds taps (rows outer, columns inner) from 0, then
  ``f32(sum / D)``, ``D`` the window clipped to the padded extent (count_include_pad) or the valid
  taps.

upsample_bilinear2d (f32 ``XNNStaticResizeBilinear2D``, src/f32-ibilinear, indirection
src/indirection.c ``xnn_indirection_init_resize_bilinear2d_hwc_f32``), per dim::

    half-pixel:     scale = f32(in / out), p = clamp(f32(f32(o scale) + f32(f32(0.5 scale) - 0.5)),
                    0, in - 1)
    align_corners:  p = f32(o f32((in - 1) / (out - 1)))
    i0 = floor(p), a = f32(p - i0), i1 = min(i0 + 1, in - 1)
    t = f32(tl + f32(f32(tr - tl) a_w)),  b likewise,  y = f32(t + f32(f32(b - t) a_h))    no FMA

nearest upsampling is not delegated (a portable op outside it) and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..requantize import AddFloat32, ClampInt, MultiplyFloat32, RoundHalfEvenToInt32, Step, ToFloat32
from ..rounding import f32
from .aten_pooling import AverageKernel, AveragePath, ChannelSplit, MaxPoolKernel

SOURCE = "XNNPACK (92a7ad5)"


def _check_int8(what: str, dtype) -> None:
    if dtype.name != "qint8":
        raise UnsupportedError(f"XNNPACK's {what} takes qint8 (qs8) tensors, got {dtype}")


# --- max pool ------------------------------------------------------------------------------------


def choose_max_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """qs8 ``XNNMaxPooling2d``: the largest code over the in-bounds taps (module docstring)."""
    _check_int8("max pooling", dtype)
    if len(kernel_size) != 2:
        raise UnsupportedError("XNNPACK's max pooling is 2-D only (max_pool2d)")
    return MaxPoolKernel("XNNPACK XNNMaxPooling2d (s8 maxpool)",
                         f"{SOURCE} src/s8-maxpool, src/operators/max-pooling-nhwc.c; executorch "
                         "backends/xnnpack/operators/op_max_pool2d.py (ceil_mode as padding)",
                         "valid", "contiguous")


# --- global average pooling: adaptive_avg_pool2d (1, 1), mean((2, 3), keepdim) -----------------


def global_average_steps(divisor, counts, qparams, output_qparams) -> tuple[Step, ...]:
    """The reduce-nd mean's requantization of the raw sum ``S`` (module docstring)."""
    count = np.asarray(divisor, np.int64)
    inv = f32(f32(f32(qparams.scale) / f32(output_qparams.scale))
              * f32(np.float32(1.0) / f32(count)))
    yzp = f32(f32(int(output_qparams.zero_point))
              - f32(f32(count * int(qparams.zero_point)) * inv))
    return (ToFloat32("S to float32"),
            MultiplyFloat32("times inv = f32(f32(s_x / s_y) * f32(1.0f / N))", factor=inv),
            AddFloat32("plus yzp = f32(z_y - f32(N z_x inv))", term=yzp),
            RoundHalfEvenToInt32("round half to even", role="round"),
            ClampInt("saturate to int8", role="output_clamp", low=output_qparams.dtype.qmin,
                     high=output_qparams.dtype.qmax))


def global_average_kernel() -> AverageKernel:
    return AverageKernel(
        "XNNPACK XNNGlobalAvgPooling2d (qs8 reduce mean)",
        f"{SOURCE} src/operators/reduce-nd.c, src/microparams-init.c "
        "xnn_init_qs8_reduce_scalar_params, src/xnnpack/reference-utils.h", "window", False,
        (AveragePath("qs8 reduce mean",
                     "q = sat8(rne(f32(f32(S inv) + yzp))), inv = f32(f32(s_x / s_y) f32(1 / N)), "
                     "yzp = f32(z_y - f32(N z_x inv))", global_average_steps, rescales=True),),
        ChannelSplit(0, "contiguous"))


def choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values: np.ndarray):
    """adaptive_avg_pool2d to (1, 1): the global average pool; other sizes are refused."""
    _check_int8("global average pooling", dtype)
    if tuple(out_sizes) != (1, 1):
        raise UnsupportedError(f"adaptive_avg_pool to {tuple(out_sizes)} on engine 'xnnpack': "
                               "ExecuTorch's XNNPACK delegate takes output size (1, 1) only")
    return global_average_kernel()


def choose_mean(engine, dim, reduced, out_shape, dtype, values: np.ndarray):
    """``mean`` over the two spatial dims of a 4-D tensor with keepdim: the global average pool;
    the rest is refused."""
    _check_int8("mean", dtype)
    if not (values.ndim == 4 and tuple(sorted(reduced)) == (2, 3) and len(out_shape) == 4):
        raise UnsupportedError(
            f"mean over dims {list(reduced)} of a {values.ndim}-D tensor"
            f"{'' if len(out_shape) == values.ndim else ' without keepdim'} on engine 'xnnpack': "
            "the delegate runs mean((2, 3), keepdim=True) of a 4-D tensor only (without keepdim "
            "ExecuTorch runs a portable float32 mean outside the delegate, not modelled)")
    return global_average_kernel()


# --- float32 inside the delegate: avg_pool2d, bilinear upsampling ------------------------------


@dataclass(frozen=True)
class FloatKernel:
    """A kernel that runs on the dequantized input in float32, between the engine's
    ``"dequantize"`` and ``"quantize"`` kernels (an op the quantizer leaves in float32 inside a
    quantized region: ``dequantize -> op -> quantize``). ``name``, ``source``, ``formula`` (what
    explain shows), and ``function(x, **arguments) -> y`` on float32 NCHW arrays (the op's
    geometry as keyword arguments). ``runs_in_float32`` marks the description for the ops."""

    name: str
    source: str
    formula: str
    function: Callable[..., np.ndarray]
    runs_in_float32: bool = True

    def compute(self, x: np.ndarray, **arguments) -> np.ndarray:
        return self.function(np.asarray(x, np.float32), **arguments)


def _pool_windows(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool):
    """PyTorch's pooling windows along one dim: starts (may be negative), ends clipped to the
    padded extent ``size + pad``, and the output size (Pool.h ``pooling_output_shape``)."""
    numerator = size + 2 * pad - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    start = np.arange(out) * stride - pad
    return start, np.minimum(start + kernel, size + pad), out


def _nine_tap_sum(taps: list[np.ndarray]) -> np.ndarray:
    """f32-avgpool 9p's order: ``((i2 + i3) + (i4 + i5)) + (((i0 + i1) + i8) + (i6 + i7))``."""
    i = taps + [np.zeros_like(taps[0])] * (9 - len(taps))
    s018 = f32(f32(i[0] + i[1]) + i[8])
    s67 = f32(i[6] + i[7])
    s23 = f32(i[2] + i[3])
    s45 = f32(i[4] + i[5])
    return f32(f32(s23 + s45) + f32(s018 + s67))


def average_pool_float(x: np.ndarray, kernel_size, stride, padding, ceil_mode: bool,
                       count_include_pad: bool, divisor_override=None) -> np.ndarray:
    """avg_pool2d on float32 NCHW ``x`` as ExecuTorch runs it (module docstring)."""
    if divisor_override is not None:
        raise UnsupportedError("avg_pool2d with divisor_override on engine 'xnnpack' is not "
                               "modelled")
    if x.ndim != 4:
        raise UnsupportedError(f"avg_pool2d on engine 'xnnpack' expects a 4-D input, got {x.shape}")
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    rows = _pool_windows(x.shape[2], kh, sh, ph, ceil_mode)
    cols = _pool_windows(x.shape[3], kw, sw, pw, ceil_mode)
    height, width = x.shape[2], x.shape[3]
    padded = np.pad(x, ((0, 0), (0, 0), (kh + ph, kh + ph), (kw + pw, kw + pw)))

    def tap(dy, dx):  # x[oy*sh - ph + dy, ox*sw - pw + dx], 0.0 outside the input
        r = rows[0][:, None] + dy
        c = cols[0][None, :] + dx
        value = padded[:, :, r + kh + ph, c + kw + pw]
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        return np.where(inside, value, np.float32(0)).astype(np.float32), inside

    valid_h = np.minimum(rows[1], height) - np.maximum(rows[0], 0)
    valid_w = np.minimum(cols[1], width) - np.maximum(cols[0], 0)
    valid = f32(valid_h[:, None] * valid_w[None, :])
    if not ceil_mode and (not any(padding) or not count_include_pad):  # XNNAvgPooling2d
        if kh * kw > 9:
            raise UnsupportedError(f"avg_pool2d with a {kh}x{kw} window on engine 'xnnpack': "
                                   "XNNPACK's multipass order (more than 9 taps) is not modelled")
        total = _nine_tap_sum([tap(dy, dx)[0] for dx in range(kw) for dy in range(kh)])
        multiplier = (f32(np.float32(1) / valid) if not count_include_pad
                      else f32(np.float32(1) / np.float32(kh * kw)))
        return f32(total * multiplier)
    total = np.zeros((x.shape[0], x.shape[1], len(rows[0]), len(cols[0])), np.float32)
    for dy in range(kh):  # portable avg_pool2d: rows outer, columns inner, in-bounds taps
        for dx in range(kw):
            value, inside = tap(dy, dx)
            total = np.where(inside, f32(total + value), total)
    divisor = (f32((rows[1] - rows[0])[:, None] * (cols[1] - cols[0])[None, :])
               if count_include_pad else valid)
    return f32(total / divisor)


def choose_avg_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """avg_pool2d in float32 between converts (``average_pool_float``)."""
    if len(kernel_size) != 2:
        raise UnsupportedError("avg_pool on engine 'xnnpack' is 2-D only")
    return FloatKernel(
        "XNNPACK XNNAvgPooling2d (f32 avgpool 9p) or ExecuTorch portable avg_pool2d",
        f"{SOURCE} src/f32-avgpool/avgpool.c.in, src/indirection.c; executorch kernels/portable/"
        "cpu/op_avg_pool2d.cpp (ceil_mode, or padding with count_include_pad)",
        "y = f32(sum * m), sum in f32-avgpool 9p's tap order, m = f32(1 / D) (XNNPACK); "
        "portable: f32(sequential sum / D)", average_pool_float)


def _bilinear_positions(in_size: int, out_size: int, align_corners: bool):
    index = f32(np.arange(out_size))
    if align_corners:
        scale = f32(np.float32(in_size - 1) / np.float32(out_size - 1)) if out_size > 1 \
            else np.float32(0)
        position = f32(index * scale)
    else:
        scale = f32(np.float32(in_size) / np.float32(out_size))
        offset = f32(f32(np.float32(0.5) * scale) - np.float32(0.5))
        position = f32(f32(index * scale) + offset)
        position = np.minimum(np.maximum(position, np.float32(0)), np.float32(in_size - 1))
    first = np.floor(position).astype(np.int64)
    alpha = f32(position - f32(first))
    return first, np.minimum(first + 1, in_size - 1), alpha


def resize_bilinear_float(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """upsample_bilinear2d on float32 NCHW ``x`` as XNNPACK's f32 ibilinear (module docstring)."""
    if x.ndim != 4:
        raise UnsupportedError(f"bilinear upsampling expects a 4-D input, got {x.shape}")
    top, bottom, alpha_h = _bilinear_positions(x.shape[2], size[0], align_corners)
    left, right, alpha_w = _bilinear_positions(x.shape[3], size[1], align_corners)
    upper, lower = x[:, :, top], x[:, :, bottom]
    tl, tr = upper[..., left], upper[..., right]
    bl, br = lower[..., left], lower[..., right]
    t = f32(tl + f32(f32(tr - tl) * alpha_w))
    b = f32(bl + f32(f32(br - bl) * alpha_w))
    return f32(t + f32(f32(b - t) * alpha_h[:, None]))


def choose_upsample(engine, mode: str, values: np.ndarray):
    """Bilinear upsampling in float32 between converts; nearest is refused."""
    if mode != "bilinear":
        raise UnsupportedError(
            f"{mode} upsampling on engine 'xnnpack': ExecuTorch runs it as a portable float32 "
            "op outside the delegate, not modelled (bilinear is)")
    return FloatKernel(
        "XNNPACK XNNStaticResizeBilinear2D (f32 ibilinear)",
        f"{SOURCE} src/f32-ibilinear, src/indirection.c "
        "xnn_indirection_init_resize_bilinear2d_hwc_f32",
        "t = f32(tl + f32(f32(tr - tl) a_w)), b likewise, y = f32(t + f32(f32(b - t) a_h))",
        lambda x, size, align_corners: resize_bilinear_float(x, size, align_corners))


KERNELS: dict = {"max_pool": choose_max_pool, "adaptive_avg_pool": choose_adaptive_avg_pool,
                 "mean": choose_mean, "avg_pool": choose_avg_pool, "upsample": choose_upsample}
"""This module's entries of the xnnpack engine's kernel table (``Engine.kernels``)."""
