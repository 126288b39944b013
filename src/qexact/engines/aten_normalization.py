"""ATen's quantized normalization kernels, stated as data: the ``"normalization"`` family of the
kernel table (``KERNELS``; ``Engine.kernel("normalization", kind, output_qparams, relu)``).

BatchNorm, LayerNorm, GroupNorm and InstanceNorm are ATen kernels (pytorch
aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp: ``q_batch_norm_kernel``,
``quantized_normalize_kernel``, ``quantized_groupnorm_nhwc_kernel``), the same for every quantized
engine (fbgemm, x86, qnnpack, onednn): only ATen's CPU capability changes their numerics. It sets

- the vector width: a ``Vectorized<quint8>`` holds ``int_lanes`` bytes (32 on AVX2, and on AVX512
  CPUs, which run the AVX2 build), converted to floats in ``float_lanes``-wide registers (8); the
  elements past the last full vector of a row (LayerNorm), of a pixel's channels (BatchNorm, NHWC
  GroupNorm) take a scalar path (``NormalizationKernel.tail_start``);
- whether ``a * b + c`` is fused (``vec::fmadd`` and GCC's ``-ffp-contract=fast`` in the files built
  with ``-mavx2 -mfma``), for the variance ``E[x^2] - m^2``, the affine step and BatchNorm's
  ``alpha * (x - z) + beta``;
- how the vector path quantizes (``Vectorized<T>::quantize``): ``QuantizeAvx2`` on AVX2
  (``aten.quantize_vector``: ``f32(y * inv)``, ``min`` with 2147483520, ``cvtps2dq``, ``+ z`` in
  int32, saturating packs); the ``default`` build's fallback calls ``quantize_vec``, which is
  FBGEMM's ``Quantize`` (``aten_quantize.quantize_fused``: ``fmaf(y, inv, z)`` then ``cvtps2dq``;
  measured on LayerNorm rows of 1024 elements under ``ATEN_CPU_CAPABILITY=default``: 0 of
  2,621,440 differ, against 2 for ``quantize_val``'s two roundings, and NaN gives qmax).

The scalar tails quantize with ``quantize_val`` (``aten.quantize_scalar``), except BatchNorm's,
``out_zero_point + lrintf(y)`` in 64-bit integers (a NaN or infinite ``y`` gives INT64_MIN, and a
negative zero point then wraps to INT64_MAX: qint8 NaN -> 127; measured).

Measured against torch 2.13.0 on AVX2 (tests/ops/test_normalization.py) and, in a process started
with ``ATEN_CPU_CAPABILITY=default``, the ``default`` row (scalar ``Vectorized`` fallbacks, no FMA
in a baseline x86-64 build; 750 random and tie cases, no mismatch). These stubs have no AVX512
build (``aten.kernel_capability``): an AVX512 CPU runs the ``avx2`` row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UnsupportedError
from ..requantize import AddInt, ClampInt, RoundHalfEvenLrint, Step
from . import aten
from .aten import kernel_capability
from .aten_quantize import quantize_fused

KERNELS_SOURCE = ("pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp, "
                  "aten/src/ATen/cpu/vec/vec256/vec256_qint.h (QuantizeAvx2)")
KINDS = ("batch_norm", "layer_norm", "group_norm", "instance_norm")


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
    vector_quantize: Callable[..., tuple[Step, ...]]
    """``Vectorized<T>::quantize`` as ``vector_quantize(inv, zero_point, dtype)`` -> steps:
    ``aten.quantize_vector`` (AVX2: zero point after rounding, an int32 add) or
    ``aten_quantize.quantize_fused`` (``default``: FBGEMM's ``Quantize``, zero point fused)."""
    source: str = KERNELS_SOURCE


_NUMERICS = {
    "avx2": NormalizationNumerics("avx2", int_lanes=32, float_lanes=8, fused_multiply_add=True,
                                  vector_quantize=aten.quantize_vector),
    "default": NormalizationNumerics("default", int_lanes=32, float_lanes=8,
                                     fused_multiply_add=False, vector_quantize=quantize_fused),
}


def normalization_numerics(engine) -> NormalizationNumerics:
    """The normalization numerics of ``engine`` (an ``Engine``, or an ATen capability name)."""
    capability = kernel_capability(getattr(engine, "aten_capability", engine))
    if capability not in _NUMERICS:
        raise UnsupportedError(f"aten_capability {capability!r} is not supported; "
                               f"supported: {sorted(_NUMERICS)}")
    return _NUMERICS[capability]


@dataclass(frozen=True)
class NormalizationPath:
    """One code path of a normalization kernel: its ``name`` (explain shows it) and the
    ``quantize`` steps from an element's float32 ``y`` to its output integer."""

    name: str
    quantize: tuple[Step, ...]


@dataclass(frozen=True)
class NormalizationKernel:
    """The kernel an engine runs for one quantized normalization op (``kind``) with its output
    qparams: ``numerics`` (vector widths, FMA), and the ``vector`` and ``tail`` paths with their
    quantize steps. ``tail_start`` says where a row's (or a pixel's channels') scalar tail
    begins."""

    name: str
    source: str
    kind: str
    numerics: NormalizationNumerics
    vector: NormalizationPath
    tail: NormalizationPath

    @property
    def fused_multiply_add(self) -> bool:
        return self.numerics.fused_multiply_add

    def tail_start(self, channels: int, middle_block: bool = False) -> int:
        """Where the scalar tail of ``channels`` contiguous elements starts: after full
        ``int_lanes`` blocks, and for BatchNorm (``middle_block``) after ``float_lanes`` blocks
        too when ``int_lanes == 32`` (``q_batch_norm_kernel``: ``lanes == 32``)."""
        lanes = self.numerics.int_lanes
        start = channels // lanes * lanes
        if middle_block and lanes == 32:
            floats = self.numerics.float_lanes
            start += (channels - start) // floats * floats
        return start


def choose_normalization(engine, kind: str, output_qparams, relu: bool = False
                         ) -> NormalizationKernel:
    """ATen's kernel for a quantized normalization of ``kind`` (``KINDS``) writing
    ``output_qparams``; ``relu``: BatchNorm's fused ReLU (a floor at the output zero point)."""
    if kind not in KINDS:
        raise UnsupportedError(f"normalization {kind!r} is not supported; supported: {list(KINDS)}")
    numerics = normalization_numerics(engine)
    zero_point, dtype = int(output_qparams.zero_point), output_qparams.dtype
    capability = numerics.aten_capability
    vector_name = f"vector ({capability}, {numerics.int_lanes} bytes): Vectorized::quantize"
    if kind == "batch_norm":
        low = zero_point if relu else dtype.qmin
        floor = (ClampInt("fused ReLU: max(q, z_y)", role="relu", low=zero_point,
                          high=dtype.qmax),) if relu else ()
        return NormalizationKernel(
            f"ATen q_batch_norm_kernel ({capability})", KERNELS_SOURCE, kind, numerics,
            NormalizationPath(vector_name + " (inverse scale 1: alpha, beta hold 1/s_y)",
                              numerics.vector_quantize(1.0, zero_point, dtype) + floor),
            NormalizationPath("scalar channels: z_y + lrintf(y)", (
                RoundHalfEvenLrint("round half to even (lrintf, 64-bit)", role="round"),
                AddInt("output zero point (int64 add, wraps)", term=zero_point),
                ClampInt("output range" + (" with fused ReLU" if relu else ""),
                         role="output_clamp", low=low, high=dtype.qmax))))
    inv = aten.inverse_scale(output_qparams.scale)
    return NormalizationKernel(
        f"ATen quantized_normalize_kernel / quantized_groupnorm_nhwc_kernel ({capability})",
        KERNELS_SOURCE, kind, numerics,
        NormalizationPath(vector_name, numerics.vector_quantize(inv, zero_point, dtype)),
        NormalizationPath("scalar tail: quantize_val", aten.quantize_scalar(inv, zero_point,
                                                                             dtype)))


# --- Float32 LayerNorm, GroupNorm, BatchNorm (the kernels FX and eager models run where they stay
# float) -----------------------------------------------------------------------------------------

FLOAT_KERNELS_SOURCE = ("pytorch aten/src/ATen/native/cpu/layer_norm_kernel.cpp "
                        "(LayerNormKernelImplInternal, LayerNormSecondPass), "
                        "aten/src/ATen/native/cpu/moments_utils.h (RowwiseMoments)")
FLOAT_SOURCES = {
    "layer_norm": FLOAT_KERNELS_SOURCE,
    "group_norm": ("pytorch aten/src/ATen/native/cpu/group_norm_kernel.cpp "
                   "(GroupNormKernelImplInternal, GroupNormKernelImplChannelsLastInternal impl-1: "
                   "ColumnwiseMoments, ApplyScaleBias), aten/src/ATen/native/cpu/moments_utils.h "
                   "(RowwiseMoments)"),
    "batch_norm": ("pytorch aten/src/ATen/native/cpu/batch_norm_kernel.cpp "
                   "(batch_norm_cpu_collect_linear_and_constant_terms, "
                   "batch_norm_cpu_contiguous_impl, batch_norm_cpu_channels_last_impl)"),
}
FLOAT_KINDS = tuple(FLOAT_SOURCES)


@dataclass(frozen=True)
class FloatLayerNormKernel:
    """ATen's float32 LayerNorm, GroupNorm or eval BatchNorm (``kind``) at one CPU capability
    (``Engine.kernel("float_normalization", kind)``), the same for every engine:

    - ``lanes``: floats in one ``Vectorized<float>``: the Welford streams of ``RowwiseMoments``
      (LayerNorm, contiguous GroupNorm) and the sum lanes of GroupNorm's ``ColumnwiseMoments``
      (channels_last) (8 in the AVX2 build; none of these stubs has an AVX512 build
      (``REGISTER_DISPATCH`` only), so an AVX512 CPU runs the AVX2 one, and 8 in the ``default``
      build's 32-byte ``vec_base``);
    - ``fused_multiply_add``: ``vec::fmadd`` is one rounding (``_mm256_fmadd_ps``) and GCC
      contracts ``a*b + c`` (scalar code and ``Vectorized`` operators alike) in the files built
      with ``-mavx2 -mfma``: ``AddMoments``, LayerNorm's second pass, GroupNorm's
      ``bias = -scale*mean + beta`` and ``y = scale*x + bias``, BatchNorm's
      ``beta = b - mean*alpha`` and ``y = x*alpha + beta`` (all measured); the ``default`` build
      rounds twice everywhere. The scalar Welford tail ``m2 += delta * (x - m1)`` is not
      contracted in either build (measured).

    Rows (LayerNorm), groups (GroupNorm) and channels (BatchNorm) are independent: the thread
    count does not change any value on the paths qexact models.
    """

    name: str
    source: str
    aten_capability: str
    lanes: int
    fused_multiply_add: bool
    chunk_vectors: int = 16
    """``kChunkSize``: vectors per Welford chunk before the cascade merges it."""
    kind: str = "layer_norm"


_FLOAT_LANES = {"avx2": 8, "default": 8}
_FLOAT_NAMES = {"layer_norm": "LayerNormKernelImpl", "group_norm": "GroupNormKernelImpl",
                "batch_norm": "batch_norm_cpu_kernel (eval)"}


def choose_float_normalization(engine, kind: str) -> FloatLayerNormKernel:
    """ATen's float32 normalization kernel of ``kind`` (``FLOAT_KINDS``) at the engine's
    capability."""
    if kind not in FLOAT_SOURCES:
        raise UnsupportedError(f"float normalization {kind!r} is not supported; supported: "
                               f"{list(FLOAT_KINDS)}")
    capability = kernel_capability(getattr(engine, "aten_capability", engine))
    if capability not in _FLOAT_LANES:
        raise UnsupportedError(f"aten_capability {capability!r} is not supported for float "
                               f"{kind}; supported: {sorted(_FLOAT_LANES)}")
    return FloatLayerNormKernel(f"ATen {_FLOAT_NAMES[kind]} float32 ({capability})",
                                FLOAT_SOURCES[kind], capability, _FLOAT_LANES[capability],
                                fused_multiply_add=capability == "avx2", kind=kind)


KERNELS: dict = {"normalization": choose_normalization,
                 "float_normalization": choose_float_normalization}
"""This module's entries of the kernel table (``Engine.kernels``)."""
