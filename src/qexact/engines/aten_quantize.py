"""ATen's tensor quantize and dequantize (``torch.quantize_per_tensor``, ``quantize_per_channel``,
``Tensor.dequantize``) as named ``Step`` pipelines, and FBGEMM's ``Quantize`` that they and the
``default`` build's ``Vectorized<T>::quantize`` run.

PyTorch 2.13 on x86 (built with FBGEMM), for every quantized engine; measured the same with
``ATEN_CPU_CAPABILITY=default`` (FBGEMM picks its AVX2 code from the CPU itself, not from ATen's
capability), so no engine or capability chooses among them::

    inv = f32(1.0f / f32(s))
    per-tensor quint8/qint8 (FBGEMM QuantizeAvx2 as the 2.13 binary runs it, ``quantize_fused``):
        q = clamp(cvtps2dq(min(fmaf(x, inv, f32(z)), 2147483520)))      zero point before rounding
    per-tensor qint32, per-channel (``quantize_val`` per element, ``aten.quantize_scalar``):
        q = clamp(rne(f32(f32(x * inv) + f32(z))))
    dequantize per-tensor (FBGEMM ``Dequantize``):  r = f32(f32(s) * f32(wrap32(q - z)))
    dequantize per-channel:  r = f32(double(f32(f32(q) - f32(z_c))) * s_c)        (s_c a double)

Sources: pytorch aten/src/ATen/native/quantized/AffineQuantizer.cpp and AffineQuantizerBase.cpp
(``quantize_vec`` -> ``fbgemm::Quantize``, ``quantize_val``), FBGEMM src/QuantUtilsAvx2.cc
(``QuantizeAvx2<T, LEGACY>``: the remainder runs the same arithmetic on masked loads, so every
element takes one path), include/fbgemm/QuantUtils.h (``Dequantize``). The sources add the zero
point after rounding (``LEGACY`` false); the 2.13 binary fuses it before rounding, and qexact
follows the binary (tests/ops/test_quantize.py: over 100,000 elements per engine and dtype,
exact ties included).

NaN and infinities, as PyTorch maps them (clamping happens after rounding)::

    input   per-tensor 8-bit   per-channel 8-bit   qint32 (both)
    NaN     qmax (minps)       0 (quantize_val)    INT32_MIN (quantize_val)
    +inf    qmax               qmax                qmax
    -inf    qmin               qmin                qmin
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import QINT32
from ..qparams import QParams
from ..requantize import (AddFloat32, AddInt32, ClampInt, MinFloat32, MultiplyAddFloat32,
                          MultiplyFloat32, MultiplyFloat64, RoundHalfEvenToInt32, Step, ToFloat32)
from ..rounding import f32
from .aten import INT32_FLOAT_MAX, inverse_scale, quantize_scalar

QUANTIZE_SOURCE = ("pytorch aten/src/ATen/native/quantized/AffineQuantizer.cpp, "
                   "AffineQuantizerBase.cpp; FBGEMM src/QuantUtilsAvx2.cc")


@dataclass(frozen=True, eq=False)
class ConversionKernel:
    """A float <-> integer conversion kernel: its ``name``, ``source`` and ``steps``; every
    element takes the same path (per-channel constants are arrays that broadcast to the
    values)."""

    name: str
    source: str
    steps: tuple[Step, ...]
    inverse_scale: object = None
    """Quantize kernels: ``inv = f32(1.0f / f32(s))``, the factor their first step multiplies by
    (per channel: an array shaped to broadcast)."""


def quantize_fused(inv, zero_point: int, dtype) -> tuple[Step, ...]:
    """FBGEMM ``QuantizeAvx2<T, LEGACY>`` as the 2.13 binary runs it:
    ``clamp(cvtps2dq(min(fmaf(x, inv, f32(z)), 2147483520)))``: the zero point enters the fused
    multiply-add, before rounding (so it cannot wrap); NaN becomes 2147483520 at ``minps``, then
    qmax. Also the ``default`` build's ``Vectorized<T>::quantize`` (``quantize_vec``; measured on
    quantized LayerNorm: fused, not ``quantize_val``'s two roundings, and NaN -> qmax)."""
    return (MultiplyAddFloat32("x * inv + z (fused, zero point before rounding)",
                               factor=f32(inv), term=f32(int(zero_point)), fused=True),
            MinFloat32("cap below INT32_MAX (minps)", high=INT32_FLOAT_MAX),
            RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
            ClampInt("output range", role="output_clamp", low=dtype.qmin, high=dtype.qmax))


def _along(values, qparams: QParams, ndim: int) -> np.ndarray:
    """Per-channel ``values`` shaped to broadcast along ``qparams.axis`` of an ``ndim`` array."""
    shape = [1] * ndim
    shape[qparams.axis] = -1
    return np.asarray(values).reshape(shape)


def quantize_kernel(qparams: QParams, ndim: int) -> ConversionKernel:
    """What ``torch.quantize_per_tensor``/``quantize_per_channel`` run to quantize a float32
    array of ``ndim`` dims to ``qparams`` (module docstring)."""
    if qparams.is_per_channel:
        inv = _along(inverse_scale(qparams.scale), qparams, ndim)
        zero_point = _along(qparams.zero_point, qparams, ndim)
        return ConversionKernel("quantize_val per element (per channel)", QUANTIZE_SOURCE,
                                quantize_scalar(inv, zero_point, qparams.dtype), inv)
    inv = inverse_scale(qparams.scale)
    if qparams.dtype == QINT32:
        return ConversionKernel("quantize_val per element (qint32)", QUANTIZE_SOURCE,
                                quantize_scalar(inv, qparams.zero_point, qparams.dtype), inv)
    return ConversionKernel("FBGEMM QuantizeAvx2 (fused zero point)", QUANTIZE_SOURCE,
                            quantize_fused(inv, qparams.zero_point, qparams.dtype), inv)


def dequantize_kernel(qparams: QParams, ndim: int) -> ConversionKernel:
    """What ``Tensor.dequantize`` runs on integers of ``ndim`` dims quantized with ``qparams``:
    per tensor FBGEMM's ``Dequantize``, ``f32(f32(s) * f32(wrap32(q - z)))`` (an int32
    subtraction: it wraps for qint32 values near the ends); per channel
    ``f32(double(f32(f32(q) - f32(z_c))) * s_c)`` (q and z converted to float32 first)."""
    if qparams.is_per_channel:
        zero_point = f32(_along(qparams.zero_point, qparams, ndim))
        scale = _along(np.asarray(qparams.scale, dtype=np.float64), qparams, ndim)
        return ConversionKernel("dequantize per channel", QUANTIZE_SOURCE, (
            ToFloat32("q to float32"),
            AddFloat32("minus the zero point, in float32", term=-zero_point),
            MultiplyFloat64("times s (in double)", factor=scale)))
    return ConversionKernel("FBGEMM Dequantize (per tensor)", QUANTIZE_SOURCE, (
        AddInt32("q - z (int32, wraps)", term=-int(qparams.zero_point)),
        ToFloat32("to float32"),
        MultiplyFloat32("times s", factor=f32(qparams.scale))))


def choose_quantize(engine, qparams: QParams, ndim: int) -> ConversionKernel:
    """The ``quantize`` family: every PyTorch engine runs ATen's ``quantize_kernel`` (measured
    alike on fbgemm, x86, qnnpack, onednn and at every ATen capability)."""
    return quantize_kernel(qparams, ndim)


def choose_dequantize(engine, qparams: QParams, ndim: int) -> ConversionKernel:
    """The ``dequantize`` family: ATen's ``dequantize_kernel`` on every PyTorch engine."""
    return dequantize_kernel(qparams, ndim)


KERNELS: dict = {"quantize": choose_quantize, "dequantize": choose_dequantize}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
