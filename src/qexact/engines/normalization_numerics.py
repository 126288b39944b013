"""The float32 arithmetic of ATen's quantized normalization kernels, stated as data.

BatchNorm, LayerNorm, GroupNorm and InstanceNorm are ATen kernels (pytorch
aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp: ``q_batch_norm_kernel``,
``quantized_normalize_kernel``, ``quantized_groupnorm_nhwc_kernel``), the same for every quantized
engine (fbgemm, x86, qnnpack, onednn): only ATen's CPU capability changes their numerics. It sets

- the vector width: a ``Vectorized<quint8>`` holds ``int_lanes`` bytes (32 on AVX2, and on AVX512
  CPUs, which run the AVX2 build), converted to floats in ``float_lanes``-wide registers (8); the elements past the last full
  vector of a row (LayerNorm), of a pixel's channels (BatchNorm, NHWC GroupNorm) take a scalar path;
- whether ``a * b + c`` is fused (``vec::fmadd`` and GCC's ``-ffp-contract=fast`` in the files built
  with ``-mavx2 -mfma``), for the variance ``E[x^2] - m^2``, the affine step and BatchNorm's
  ``alpha * (x - z) + beta``;
- how a vector of floats is quantized (``Vectorized<T>::quantize`` = ``QuantizeAvx2``: ``f32(y * inv)``,
  ``min`` with 2147483520, ``cvtps2dq``, ``+ z`` in int32, saturating packs) versus the scalar
  ``quantize_val`` (``f32(f32(y * inv) + z)``, round half to even, clamp).

Measured against torch 2.13.0 on AVX2 (tests/ops/test_normalization.py) and, in a process started
with ``ATEN_CPU_CAPABILITY=default``, the ``default`` row (scalar ``Vectorized`` fallbacks, no FMA
in a baseline x86-64 build; 750 random and tie cases, no mismatch). These stubs have no AVX512
build (``aten.kernel_capability``): an AVX512 CPU runs the ``avx2`` row.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedError
from .aten import kernel_capability


@dataclass(frozen=True)
class NormalizationNumerics:
    """The rule ATen's quantized normalization kernels follow at one CPU capability."""

    aten_capability: str
    int_lanes: int
    """Bytes in one ``Vectorized<quint8>``: the vector block of LayerNorm rows, BatchNorm and NHWC
    GroupNorm channels (the elements past the last full block are the scalar tail)."""
    float_lanes: int
    """Floats in one ``Vectorized<float>``: BatchNorm's second block size (channels between
    ``float_lanes`` and ``int_lanes`` run ``float_lanes`` at a time on the vector path)."""
    fused_multiply_add: bool
    """``a * b + c`` rounds once (``fmaf``) in the kernels and their scalar tails."""
    vector_zero_point_after_rounding: bool
    """``Vectorized::quantize`` adds the zero point in int32 after ``cvtps2dq`` (True, AVX2/AVX512),
    or calls ``quantize_val`` per element (False: ``default``)."""
    source: str = ("pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp, "
                   "aten/src/ATen/cpu/vec/vec256/vec256_qint.h (QuantizeAvx2)")


_NUMERICS = {
    "avx2": NormalizationNumerics("avx2", int_lanes=32, float_lanes=8, fused_multiply_add=True,
                                  vector_zero_point_after_rounding=True),
    "default": NormalizationNumerics("default", int_lanes=32, float_lanes=8,
                                     fused_multiply_add=False,
                                     vector_zero_point_after_rounding=False),
}


def normalization_numerics(engine) -> NormalizationNumerics:
    """The normalization numerics of ``engine`` (an ``Engine``; only its ATen capability matters)."""
    capability = kernel_capability(getattr(engine, "aten_capability", engine))
    if capability not in _NUMERICS:
        raise UnsupportedError(f"aten_capability {capability!r} is not supported; "
                               f"supported: {sorted(_NUMERICS)}")
    return _NUMERICS[capability]


KERNELS: dict = {}
"""This module's entries of the kernel table (``Engine.kernels``)."""
