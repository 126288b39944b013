"""ATen's own quantized elementwise kernels (add, mul, activations): their numerics, as data.

Source: pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (``qadd_kernel``,
``qmul_kernel``, ``qhardswish_kernel``, ...), driven by ``cpu_kernel_vec``
(aten/src/ATen/native/cpu/Loops.h) over a ``TensorIterator``. Each kernel has two lambdas that
round differently:

- the **SIMD body** (``Vectorized<quint8>``, aten/src/ATen/cpu/vec/vec256/vec256_qint.h):
  dequantize ``d = fmaf(f32(s), f32(q), f32(f32(s) * f32(-z)))`` (premultiplied zero point, FMA),
  quantize ``q = clamp(cvtps2dq(min(f32(y * inv), 2147483520)) + z)`` (zero point after rounding);
- the **scalar tail** (``dequantize_val``/``quantize_val``): ``d = f32(s * (q - z))``,
  ``q = clamp(rne(f32(f32(y * inv) + f32(z))))`` (zero point before rounding; FBGEMM ``Quantize``).

``vectorized_loop`` runs two vectors per iteration, so in each inner loop of ``n`` elements the
first ``floor(n / (2 * lanes)) * 2 * lanes`` go through the SIMD lambda and the rest through the
scalar one. Measured here (torch 2.13, AVX2, 32 uint8 lanes): the split is at multiples of 64;
16, 32 and 128 are rejected by exact ties (power-of-two scales, odd output zero point).
With ``ATEN_CPU_CAPABILITY=default`` every element takes the scalar lambda (measured).

``TensorIterator`` runs in parallel when the tensor has at least ``grain_size`` (32768) elements:
``at::parallel_for`` cuts the flat range into ``T = min(threads, ceil(n / grain))`` chunks of
``ceil(n / T)`` elements, and each chunk has its own SIMD body and scalar tail. The number of
threads PyTorch uses (``torch.get_num_threads()``) therefore changes outputs of large tensors;
measured with 1, 2 and 4 threads on 65599..200003 elements.

Which ops an engine hands to QNNPACK instead is the engine's own data
(``Engine.qnnpack_operators``); ops call only ``elementwise_numerics(engine)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

VECTOR_LANES_8BIT = {"avx512": 64, "avx2": 32, "default": 0}
"""uint8 lanes of ``Vectorized<quint8>`` per kernel build (0: no SIMD lambda runs). The quantized
elementwise kernels have no AVX512 build (``kernel_capability``), so 64 is never used for them."""

VECTOR_LANES_FLOAT = {"avx512": 16, "avx2": 8, "default": 0}
"""float32 lanes of ``Vectorized<float>`` per kernel build (aten/src/ATen/cpu/vec/vec512/
vec512_float.h: ``__m512``; vec256/vec256_float.h: ``__m256``; 0: no SIMD lambda runs)."""

FLOAT_KERNELS_WITH_AVX512_BUILD = frozenset({"sigmoid", "silu"})
"""ATen float kernels registered with ``ALSO_REGISTER_AVX512_DISPATCH``, so an AVX512 CPU runs
their AVX512 build (``kernel_capability``): ``sigmoid_stub`` (aten/src/ATen/native/cpu/
UnaryOpsKernel.cpp), ``silu_stub`` (aten/src/ATen/native/cpu/Activation.cpp). Measured on an
AVX512 CPU: their SIMD body is in units of 32 floats, where the quantized kernels' is 64 bytes."""

GRAIN_SIZE = 32768
"""``at::internal::GRAIN_SIZE``: TensorIterator runs serially below this many elements."""


@dataclass(frozen=True)
class ElementwiseNumerics:
    """How one engine on one ATen capability runs quantized elementwise ops.

    - ``capability``: the build of the kernel that runs (``kernel_capability``); ``lanes``: lanes
      of one vector (8-bit lanes for quantized kernels, float32 lanes for float kernels; 0: scalar
      only);
    - ``unroll``: vectors per ``vectorized_loop`` iteration (2), so the body unit is
      ``lanes * unroll`` elements;
    - ``grain_size``: TensorIterator's parallel grain;
    - ``qnnpack_add``: quint8 add/add_relu of equal shapes run QNNPACK's fixed-point add
      (pytorch BinaryOps.cpp ``qnnpack_add``), not the ATen kernel;
    - ``qnnpack_lut_activations``: quint8 activations PyTorch sends to a QNNPACK operator
      by op name;
    - ``qnnpack_clamp``: quint8 clamp / hardtanh / relu6 run QNNPACK's clamp operator
      (pytorch aten/src/ATen/native/quantized/cpu/qclamp.cpp ``qnnpack_clamp``, qrelu.cpp
      ``qnnpack_relu6``... measured here): it walks the input in its
      ``suggest_memory_format()`` order but writes a contiguous output, so a channels_last input
      comes out with its NHWC bytes read as NCHW (a PyTorch bug qexact reproduces); and
      ``torch.clamp`` with one bound raises ("Both min and max should be specified") on every
      dtype.
    """

    capability: str
    lanes: int
    unroll: int = 2
    grain_size: int = GRAIN_SIZE
    qnnpack_add: bool = False
    qnnpack_activations: frozenset = frozenset()
    qnnpack_clamp: bool = False

    @property
    def body_unit(self) -> int:
        return self.lanes * self.unroll


def kernel_capability(capability: str, avx512_build: bool = False) -> str:
    """The build of an ATen kernel that runs at ATen CPU ``capability``.

    aten/src/ATen/native/DispatchStub.h: in the AVX512 compilation of a kernel file,
    ``REGISTER_DISPATCH`` registers nullptr, and DispatchStub.cpp then falls back to the AVX2
    build. Only stubs registered with ``ALSO_REGISTER_AVX512_DISPATCH`` (``avx512_build``; in
    quantized/cpu/kernels/QuantizedOpKernels.cpp: channels_last avg_pool2d/3d, per-channel
    dequantize) run AVX512 code. So on an AVX512 CPU quantized add, mul, activations, cat,
    normalization, adaptive pooling, upsampling and ATen's float sum (SumKernel.cpp) run their
    AVX2 builds: 32-byte vectors, a 64-element SIMD body (as measured on AVX512 in semantics.md).
    """
    return "avx2" if capability == "avx512" and not avx512_build else capability


def elementwise_numerics(engine) -> ElementwiseNumerics:
    """The elementwise numerics of ``engine`` (a ``qexact.engines.Engine``).

    ATen's kernels at the engine's ``aten_capability``, except the ops the engine states it hands
    to QNNPACK operators (``Engine.qnnpack_operators``).
    """
    capability = kernel_capability(engine.aten_capability)
    handed = engine.qnnpack_operators
    return ElementwiseNumerics(
        capability, VECTOR_LANES_8BIT[capability], qnnpack_add="add" in handed,
        qnnpack_activations=frozenset(a for a in QNNPACK_ACTIVATIONS if a in handed),
        qnnpack_clamp="clamp" in handed)


def float_elementwise_numerics(engine, function: str) -> ElementwiseNumerics:
    """ATen's float32 elementwise kernel ``function`` (SiLU, sigmoid, ...) at the engine's
    ``aten_capability``: ``Vectorized<float>`` holds 16 floats in the AVX512 build (only kernels
    in ``FLOAT_KERNELS_WITH_AVX512_BUILD`` have one) and 8 in the AVX2 build, two vectors per
    ``vectorized_loop`` iteration (aten/src/ATen/native/cpu/Loops.h), so the SIMD body is in
    units of 32 or 16 floats (measured on SiLU and sigmoid: AVX2 rejects 8, 32 and 64; AVX512
    rejects 16 and 64); with the default capability every element takes the scalar lambda."""
    capability = kernel_capability(engine.aten_capability,
                                   avx512_build=function in FLOAT_KERNELS_WITH_AVX512_BUILD)
    return ElementwiseNumerics(capability, VECTOR_LANES_FLOAT[capability])


QNNPACK_ACTIVATIONS = ("hardswish", "sigmoid", "tanh")
"""quint8 activations PyTorch runs through a QNNPACK operator when the engine is qnnpack
(qhardswish.cpp, qsigmoid.cpp, qtanh.cpp: lookup tables built in float). Measured: hardsigmoid,
leaky_relu and elu give ATen's results on qnnpack."""


def default_num_threads() -> int:
    """PyTorch's default intra-op thread count, as far as qexact can tell without torch:
    ``OMP_NUM_THREADS`` if set, else the number of CPUs. Importers record the real one."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return os.cpu_count() or 1


def _coalesced_inner(out_shape: tuple[int, ...], input_shapes) -> tuple[int, list[bool]]:
    """TensorIterator on C-contiguous operands: the size of the coalesced innermost dimension,
    and for each input whether it is broadcast (stride 0) along it."""
    ndim = len(out_shape)
    strides = []
    for shape in input_shapes:
        shape = (1,) * (ndim - len(shape)) + tuple(shape)
        contiguous = [0] * ndim
        step = 1
        for dim in range(ndim - 1, -1, -1):
            contiguous[dim] = 0 if shape[dim] == 1 else step
            step *= shape[dim]
        strides.append(contiguous)
    out_strides = []
    step = 1
    for dim in range(ndim - 1, -1, -1):
        out_strides.insert(0, step)
        step *= out_shape[dim]
    dims = [d for d in range(ndim - 1, -1, -1) if out_shape[d] != 1]
    if not dims:
        return 1, [False] * len(input_shapes)
    inner = out_shape[dims[0]]
    for previous, dim in zip(dims, dims[1:]):
        mergeable = all(s[previous] * out_shape[previous] == s[dim] for s in strides + [out_strides])
        if not mergeable:
            break
        inner *= out_shape[dim]
    return inner, [s[dims[0]] == 0 for s in strides]


def simd_mask(numerics: ElementwiseNumerics, out_shape: tuple[int, ...], input_shapes,
              num_threads: int, inner: int | None = None) -> np.ndarray:
    """Boolean array of ``out_shape``: True where ``cpu_kernel_vec`` runs the SIMD lambda.

    Inner loops: rows of the coalesced innermost dimension, cut at parallel chunk boundaries.
    An inner loop is vectorized when every input is contiguous along it, or exactly one input is
    broadcast (``is_contiguous_scalar``); otherwise every element takes ``basic_loop`` (scalar).
    """
    total = math.prod(out_shape)
    mask = np.zeros(total, dtype=bool)
    if numerics.body_unit == 0 or total == 0:
        return mask.reshape(out_shape)
    if inner is None:
        inner, broadcast = _coalesced_inner(tuple(out_shape), input_shapes)
    else:  # the caller coalesced the dims from the operands' strides
        broadcast = [False] * len(input_shapes)
    if sum(broadcast) > 1 or (sum(broadcast) == 1 and len(broadcast) == 1):
        return mask.reshape(out_shape)
    if total < numerics.grain_size or num_threads <= 1:
        chunks = [(0, total)]
    else:  # aten/src/ATen/ParallelOpenMP.h invoke_parallel: min(T, divup(n, grain)) chunks of
        # divup(n, chunks); measured on float sigmoid/silu (AVX512 and AVX2 builds, 1-4 threads,
        # 32767..200000 elements) and the quantized kernels (module docstring)
        count = min(num_threads, -(-total // numerics.grain_size))
        size = -(-total // count)
        chunks = [(start, min(total, start + size)) for start in range(0, total, size)]
    unit = numerics.body_unit
    for begin, end in chunks:
        start = begin
        while start < end:
            stop = min(end, (start // inner + 1) * inner)
            mask[start:start + (stop - start) // unit * unit] = True
            start = stop
    return mask.reshape(out_shape)
