"""The numerics of PyTorch's quantized pooling and resampling kernels, stated as data.

Pooling kernels are ATen's own (``aten/src/ATen/native/quantized/cpu/``), except that the qnnpack
engine routes some quint8 average pools to QNNPACK. Two things decide the rounding:

- the ATen CPU capability: the channels_last kernels in ``kernels/QuantizedOpKernels.cpp``
  (``do_avg_pool_nhwc_on_AVX_n``, ``do_avg_pool_on_AVX_n``, ``do_quantized_bilinear_on_AVX_n``)
  process ``Vectorized<T>::size() / 4`` channels at a time (8 on AVX2; 16 on AVX512 only for
  avg_pool, the one stub here with an AVX512 build, see ``aten.kernel_capability``) and round
  those differently from the remaining ``C mod width`` channels; with ``ATEN_CPU_CAPABILITY=default``
  every channel takes the scalar path. That translation unit is compiled per capability with
  ``-mavx2 -mfma`` and GCC's default ``-ffp-contract=fast``, so products there may be fused
  (``BilinearNumerics``, read from the binary's instructions);
- the engine: with ``qnnpack``, quint8 ``avg_pool2d`` (not ceil_mode) and quint8
  ``adaptive_avg_pool2d`` whose input sizes are multiples of its output sizes run QNNPACK's
  average pooling (``AveragePool2d.cpp`` ``qnnpack_avg_pool2d``), and quint8 ``mean`` over
  dims (2, 3) of a 4-D tensor runs QNNPACK's global average pooling (``ReduceOps.cpp``).

No pooling kernel runs for ``adaptive_avg_pool3d`` to (1, 1, 1): ATen computes it as quantized
``mean`` over the last three dims (``native/AdaptiveAveragePooling3d.cpp``; ``ops.pooling``
hands it to ``ops.reduce`` with that engine's ``MeanNumerics``). ``adaptive_avg_pool2d`` has the
same shortcut for float inputs only.

``pooling_numerics(engine)`` derives the choice from the engine's data (``Engine.qnnpack_operators``
and ``aten_capability``); ops only ever read the returned ``PoolingNumerics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .aten import kernel_capability

# Channels per SIMD block: Vectorized<quint8>::size() / 4 (32-byte vectors on AVX2, 64 on AVX512).
_SIMD_CHANNELS = {"avx512": 16, "avx2": 8, "default": 0}


@dataclass(frozen=True)
class BilinearNumerics:
    """How one compiled ``upsample_bilinear2d`` kernel rounds (all float32).

    - ``source_index_fused``: the source coordinate (UpSample.h ``area_pixel_compute_source_index``,
      inlined) is ``fmaf(scale, f32(o + 0.5), -0.5)`` instead of
      ``f32(f32(scale * f32(o + 0.5)) - 0.5)``
      (align_corners: ``f32(scale * o)`` either way).
    - ``simd_channels``: channels ``c < C // w * w`` take ``do_quantized_bilinear_on_AVX_n``
      (0: none).
    - ``simd_blend`` / ``tail_blend``: how each two-term blend ``a x + b y`` is evaluated, the inner
      ``w0 p0 + w1 p1`` and the outer ``h0 top + h1 bottom`` alike:
      ``"none"`` = ``f32(f32(a x) + f32(b y))``,
      ``"first"`` = ``fmaf(a, x, f32(b y))``, ``"second"`` = ``fmaf(b, y, f32(a x))``.

    The lambdas (``r - int(r)``, ``1 - l1``) and ``- z`` are never fused (no product to fuse).
    """

    source_index_fused: bool
    simd_channels: int
    simd_blend: str
    tail_blend: str


# NCHW: UpSampleBilinear2d.cpp is compiled once, without -mfma: no contraction anywhere.
BILINEAR_UNFUSED = BilinearNumerics(source_index_fused=False, simd_channels=0,
                                    simd_blend="none", tail_blend="none")
# channels_last: qupsample_bilinear2d_nhwc_kernel in kernels/QuantizedOpKernels.cpp. Its stub is
# registered with REGISTER_DISPATCH only (no ALSO_REGISTER_AVX512_DISPATCH), so an AVX512 CPU runs
# the AVX2 build (DispatchStub.cpp falls back to AVX2 when the AVX512 slot is empty): 8 channels.
# The AVX2 build (read from libtorch_cpu.so 2.13.0: vfmadd213ss / vfmadd132ps / vfmadd132ss) fuses
# the source index, the second product of each SIMD blend (w1 p01, h1 bottom; the first is vmulps)
# and the first product of each scalar-tail blend (w0 p00, h0 top; the second is vmulss).
# The DEFAULT build has no FMA and no SIMD channels.
_NHWC_BILINEAR = {
    "avx2": BilinearNumerics(source_index_fused=True, simd_channels=8,
                             simd_blend="second", tail_blend="first"),
    "default": BILINEAR_UNFUSED,
}


@dataclass(frozen=True)
class PoolingNumerics:
    """Where an engine's pooling kernels round differently.

    - ``nhwc_avg_pool_simd_channels``: in channels_last ``avg_pool2d``/``avg_pool3d``, channels
      ``c < C // w * w`` are requantized as ``rne(f32(A * m)) + z`` (``QuantizeAvx2``: round,
      then add the zero point), the rest as ``rne(f32(f32(A * inv) + z))`` (``quantize_val``);
      0 means every channel takes the scalar path.
    - ``nhwc_adaptive_simd_channels``: likewise for channels_last ``adaptive_avg_pool``:
      ``rne(fmaf(A, inv, z))`` (``quantize_vec``) for the SIMD channels.
    - ``nchw_bilinear`` / ``nhwc_bilinear``: the ``BilinearNumerics`` of ``upsample_bilinear2d`` on
      NCHW (UpSampleBilinear2d.cpp) and channels_last (``qupsample_bilinear2d_nhwc_kernel``) inputs.
    - ``qnnpack_avg_pool``: quint8 average pools (see module docstring) run QNNPACK's kernel,
      which ignores ``count_include_pad`` and ``divisor_override`` and rejects 1x1 windows.
    """

    name: str
    nhwc_avg_pool_simd_channels: int
    nhwc_adaptive_simd_channels: int
    nchw_bilinear: BilinearNumerics
    nhwc_bilinear: BilinearNumerics
    qnnpack_avg_pool: bool
    qnnpack_max_pool: bool
    """quint8 ``max_pool2d`` (not ceil_mode; also ``max_pool1d``) runs QNNPACK's u8 max pooling,
    whose indirection buffer clamps each tap into the input (``doz(o*s + j*d, pad)``, then
    ``min(., size - 1)``; qnnpack/src/indirection.c) instead of skipping padded taps."""


def pooling_numerics(engine) -> PoolingNumerics:
    """The pooling numerics of ``engine`` (an ``Engine``), from its name and ATen capability."""
    capability = getattr(engine, "aten_capability", "avx2")
    avx2_fallback = kernel_capability(capability)  # stubs without an AVX512 build
    return PoolingNumerics(
        name=f"{engine.name}/{capability}",
        nhwc_avg_pool_simd_channels=_SIMD_CHANNELS[kernel_capability(capability, avx512_build=True)],
        # qadaptive_avg_pool2d_nhwc_stub / qadaptive_avg_pool3d_ndhwc_stub: REGISTER_DISPATCH
        # only (kernels/QuantizedOpKernels.cpp), so AVX512 CPUs run the AVX2 build: 8 channels
        # (measured on torch 2.13: 16 would miss 194 of 1.3M elements; ATEN_CPU_CAPABILITY=avx2
        # and default agree with 8 and 0)
        nhwc_adaptive_simd_channels=_SIMD_CHANNELS[avx2_fallback],
        nchw_bilinear=BILINEAR_UNFUSED,
        nhwc_bilinear=_NHWC_BILINEAR[avx2_fallback],
        qnnpack_avg_pool="avg_pool" in engine.qnnpack_operators,
        qnnpack_max_pool="max_pool" in engine.qnnpack_operators,
    )


KERNELS: dict = {}
"""This module's entries of the kernel table (``Engine.kernels``)."""
