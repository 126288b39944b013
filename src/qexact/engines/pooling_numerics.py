"""The numerics of PyTorch's quantized pooling and resampling kernels, stated as data.

Pooling kernels are ATen's own (``aten/src/ATen/native/quantized/cpu/``), except that the qnnpack
engine routes some quint8 average pools to QNNPACK. Two things decide the rounding:

- the ATen CPU capability: the channels_last kernels in ``kernels/QuantizedOpKernels.cpp``
  (``do_avg_pool_nhwc_on_AVX_n``, ``do_avg_pool_on_AVX_n``, ``do_quantized_bilinear_on_AVX_n``)
  process ``Vectorized<T>::size() / 4`` channels at a time (8 on AVX2, 16 on AVX512) and round
  those differently from the remaining ``C mod width`` channels; with ``ATEN_CPU_CAPABILITY=default``
  every channel takes the scalar path;
- the engine: with ``qnnpack``, quint8 ``avg_pool2d`` (not ceil_mode) and quint8
  ``adaptive_avg_pool2d`` whose input sizes are multiples of its output sizes run QNNPACK's
  average pooling (``AveragePool2d.cpp`` ``qnnpack_avg_pool2d``), and quint8 ``mean`` over
  dims (2, 3) of a 4-D tensor runs QNNPACK's global average pooling (``ReduceOps.cpp``).

``pooling_numerics(engine)`` derives the choice from the engine's data (``Engine.qnnpack_operators``
and ``aten_capability``); ops only ever read the returned ``PoolingNumerics``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Channels per SIMD block: Vectorized<quint8>::size() / 4 (32-byte vectors on AVX2, 64 on AVX512).
_SIMD_CHANNELS = {"avx512": 16, "avx2": 8, "default": 0}


@dataclass(frozen=True)
class PoolingNumerics:
    """Where an engine's pooling kernels round differently.

    - ``nhwc_avg_pool_simd_channels``: in channels_last ``avg_pool2d``/``avg_pool3d``, channels
      ``c < C // w * w`` are requantized as ``rne(f32(A * m)) + z`` (``QuantizeAvx2``: round,
      then add the zero point), the rest as ``rne(f32(f32(A * inv) + z))`` (``quantize_val``);
      0 means every channel takes the scalar path.
    - ``nhwc_adaptive_simd_channels``: likewise for channels_last ``adaptive_avg_pool``:
      ``rne(fmaf(A, inv, z))`` (``quantize_vec``) for the SIMD channels.
    - ``nhwc_bilinear_simd_channels``: likewise for channels_last ``upsample_bilinear2d``.
    - ``qnnpack_avg_pool``: quint8 average pools (see module docstring) run QNNPACK's kernel,
      which ignores ``count_include_pad`` and ``divisor_override`` and rejects 1x1 windows.
    """

    name: str
    nhwc_avg_pool_simd_channels: int
    nhwc_adaptive_simd_channels: int
    nhwc_bilinear_simd_channels: int
    qnnpack_avg_pool: bool
    qnnpack_max_pool: bool
    """quint8 ``max_pool2d`` (not ceil_mode; also ``max_pool1d``) runs QNNPACK's u8 max pooling,
    whose indirection buffer clamps each tap into the input (``doz(o*s + j*d, pad)``, then
    ``min(., size - 1)``; qnnpack/src/indirection.c) instead of skipping padded taps."""


def pooling_numerics(engine) -> PoolingNumerics:
    """The pooling numerics of ``engine`` (an ``Engine``), from its name and ATen capability."""
    width = _SIMD_CHANNELS.get(getattr(engine, "aten_capability", "avx2"), 8)
    return PoolingNumerics(
        name=f"{engine.name}/{getattr(engine, 'aten_capability', 'avx2')}",
        nhwc_avg_pool_simd_channels=width,
        nhwc_adaptive_simd_channels=width,
        nhwc_bilinear_simd_channels=width,
        qnnpack_avg_pool="avg_pool" in engine.qnnpack_operators,
        qnnpack_max_pool="max_pool" in engine.qnnpack_operators,
    )
