"""QNNPACK's pooling operators as the qnnpack engine runs them: average pooling, max pooling and
global average pooling, the ``"avg_pool"``, ``"adaptive_avg_pool"``, ``"max_pool"`` and ``"mean"``
families of the qnnpack engine's table. Each falls back to ATen's kernel
(engines/aten_pooling.py) where PyTorch's conditions for the QNNPACK operator fail.

When PyTorch hands a call to QNNPACK (pytorch aten/src/ATen/native/quantized/cpu/, engine
qnnpack, quint8 only):

=================================  ==========================================================
op (source)                        conditions
=================================  ==========================================================
avg_pool2d (AveragePool2d.cpp      not ceil_mode; a 4-D input; a 1x1 window is refused
  ``qnnpack_avg_pool2d``)          (``pytorch_qnnp_create_average_pooling2d_nhwc_q8``)
adaptive_avg_pool2d (Adaptive-     input sizes multiples of the output sizes, not all equal;
  AveragePooling.cpp)              a 4-D input; run as an average pool, kernel = stride = in/out
max_pool2d, max_pool1d (Pooling    not ceil_mode; a 4-D input; a 1x1 window is refused ("1x1
  .cpp ``qnnpack_maxpool2d``)      pooling is meaningless"); max_pool3d is refused on every dtype
mean (ReduceOps.cpp                a 4-D input, ``dim`` literally ``[2, 3]``
  ``qnnpack_mean``)
=================================  ==========================================================

The average pools (qnnpack/src/average-pooling.c, ``pytorch_qnnp_compute_avgpool_quantization_
params``; q8avgpool SSE2) and the global average pool (global-average-pooling.c, q8gavgpool SSE2)
read padded taps from a buffer of ``z``, so over a window of ``D`` taps (the kernel area,
whatever ``count_include_pad`` and ``divisor_override`` say; ``H W`` for the global pool):

    A = bias + sum of the window = S - n z           (bias = -D z; n valid taps, exact int32)
    q = clamp(cvtps2dq(f32(f32(A) * f32(s / f32(s * D)))) + z, 0, 255)

Max pooling (max-pooling.c, u8maxpool SSE2) reads its taps through an indirection buffer
(qnnpack/src/indirection.c) that clamps each tap into the input, ``min(doz(o*s + j*d, pad),
size - 1)``, instead of skipping the padding. Every operator writes an NHWC output that PyTorch
returns ``.contiguous(input.suggest_memory_format())`` (mean: contiguous).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..requantize import AddInt, ClampInt, MultiplyFloat32, RoundHalfEvenToInt32, Step, ToFloat32
from ..rounding import f32
from . import aten_pooling
from .aten_pooling import AverageKernel, AveragePath, ChannelSplit, MaxPoolKernel

SOURCE = "pytorch aten/src/ATen/native/quantized/cpu"


def average_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """q8avgpool / q8gavgpool SSE2: the int32 accumulator (bias ``-D z`` included) to float, times
    ``f32(s / f32(s * D))`` (input and output scale alike), ``cvtps2dq``, plus ``z``, clamped
    (saturating packs, then the operator's [0, 255])."""
    scale = f32(qparams.scale)
    factor = f32(scale / f32(scale * f32(np.asarray(divisor))))
    return (ToFloat32("A to float32 (cvtdq2ps)"),
            MultiplyFloat32("times f32(s / f32(s * D))", factor=factor),
            RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
            AddInt("output zero point, after rounding", term=int(qparams.zero_point)),
            ClampInt("output range", role="output_clamp", low=0, high=255))


_FORMULA = "q = clamp(cvtps2dq(f32(A * f32(s / f32(s * D)))) + z, 0, 255)"


def average_kernel(name: str, source: str, divisor: str, layout: str) -> AverageKernel:
    return AverageKernel(name, source, divisor, True,
                         (AveragePath(name, _FORMULA, average_steps),),
                         ChannelSplit(0, layout))


def _quint8(dtype) -> bool:
    return dtype.name == "quint8"


def choose_avg_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """AveragePool2d.cpp ``avg_pool2d_quantized_cpu``: quint8 2-D pools, not ceil_mode, take
    QNNPACK's average pooling, which needs a 4-D input; the rest ATen's kernels."""
    if not (_quint8(dtype) and not ceil_mode and len(kernel_size) == 2):
        return aten_pooling.choose_avg_pool(engine, kernel_size, ceil_mode, dtype, values)
    if values.ndim != 4:  # measured on torch 2.13: an unbatched (C, H, W) input raises
        raise ShapeError("qnnpack avg_pool2d expects a 4-D input: PyTorch raises "
                         f"'qnnpack_avg_pool2d(): Expected input to be 4-dimensional: got "
                         f"{values.ndim}'")
    if tuple(kernel_size) == (1, 1):
        raise UnsupportedError("qnnpack avg_pool2d rejects a 1x1 kernel (QNNPACK "
                               "pytorch_qnnp_create_average_pooling2d_nhwc_q8)")
    return average_kernel("QNNPACK average pooling (q8avgpool)",
                          f"{SOURCE}/AveragePool2d.cpp qnnpack_avg_pool2d, qnnpack/src/"
                          "average-pooling.c", "kernel area", "input's suggested format")


def choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values: np.ndarray):
    """AdaptiveAveragePooling.cpp: quint8 2-D pools whose input sizes are multiples of the output
    sizes (not all equal) run QNNPACK's average pooling with kernel = stride = in / out."""
    in_sizes, out_sizes = tuple(in_sizes), tuple(out_sizes)
    if not (len(out_sizes) == 2 and _quint8(dtype) and in_sizes != out_sizes
            and all(i % o == 0 for i, o in zip(in_sizes, out_sizes))):
        return aten_pooling.choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values)
    if values.ndim != 4:
        raise ShapeError("qnnpack adaptive_avg_pool2d expects a 4-D input")
    kernel = tuple(i // o for i, o in zip(in_sizes, out_sizes))
    return average_kernel(f"QNNPACK average pooling (q8avgpool, kernel {kernel})",
                          f"{SOURCE}/AdaptiveAveragePooling.cpp qnnpack_adaptive_avg_pool2d, "
                          "qnnpack/src/average-pooling.c", "kernel area",
                          "input's suggested format")


def choose_max_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """Pooling.cpp: quint8 2-D max pools (max_pool1d runs as one), not ceil_mode, take QNNPACK's
    u8 max pooling; max_pool3d is refused; the rest ATen's kernel."""
    spatial = len(kernel_size)
    if spatial == 3:
        raise UnsupportedError("QNNPACK backend doesn't support quantized_max_pool3d (Pooling.cpp)")
    if not (_quint8(dtype) and spatial == 2 and not ceil_mode):
        return aten_pooling.choose_max_pool(engine, kernel_size, ceil_mode, dtype, values)
    if values.ndim != 4:
        raise ShapeError("qnnpack max_pool2d expects a 4-D input (qnnpack_maxpool2d)")
    if tuple(kernel_size) == (1, 1):
        raise UnsupportedError("qnnpack max_pool2d with a 1x1 window: PyTorch raises (QNNPACK: "
                               "'1x1 pooling is meaningless', failed to create QNNPACK MaxPool "
                               "operator), so the model cannot run in PyTorch on qnnpack either")
    return MaxPoolKernel("QNNPACK max pooling (u8maxpool)",
                         f"{SOURCE}/Pooling.cpp qnnpack_maxpool2d, qnnpack/src/max-pooling.c, "
                         "qnnpack/src/indirection.c", "clamped", "input's suggested format")


def choose_mean(engine, dim, reduced, out_shape, dtype, values: np.ndarray):
    """ReduceOps.cpp ``mean_out_quantized_cpu``: quint8, a 4-D input and ``dim`` literally
    ``[2, 3]`` run QNNPACK's global average pooling (``qnnpack_mean``); the rest ATen's kernels."""
    if _quint8(dtype) and dim is not None and values.ndim == 4 and tuple(dim) == (2, 3):
        return average_kernel(f"QNNPACK global average pooling (q8gavgpool, N = "
                              f"{math.prod(values.shape[2:])})",
                              f"{SOURCE}/ReduceOps.cpp qnnpack_mean, qnnpack/src/"
                              "global-average-pooling.c", "window", "contiguous")
    return aten_pooling.choose_mean(engine, dim, reduced, out_shape, dtype, values)


KERNELS: dict = {"avg_pool": choose_avg_pool, "adaptive_avg_pool": choose_adaptive_avg_pool,
                 "max_pool": choose_max_pool, "mean": choose_mean}
"""This module's entries of the qnnpack engine's kernel table (``Engine.kernels``)."""
