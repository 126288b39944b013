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

Which ops an engine hands to other kernels (QNNPACK operators on the qnnpack engine) is that
engine's own table (``Engine.kernels``); this module states ATen's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..layout import (is_channels_first_contiguous, is_channels_last, reorder_dimensions,
                      suggests_channels_last, to_channels_last)
from ..requantize import (AddFloat32, AddInt, AddInt32, ClampInt, MinFloat32, MultiplyAddFloat32,
                          MultiplyFloat32, RoundHalfEvenLrint, RoundHalfEvenToInt32,
                          RoundHalfEvenToInt64, Step, ToFloat32)
from ..rounding import INT32_MIN, f32

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
    """

    capability: str
    lanes: int
    unroll: int = 2
    grain_size: int = GRAIN_SIZE

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


def elementwise_numerics(engine, bits: int = 8) -> ElementwiseNumerics:
    """ATen's quantized elementwise kernels at ``engine.aten_capability``: their AVX2 build on an
    AVX512 CPU (``kernel_capability``), lanes of ``bits`` (a qint32 vector holds a quarter as
    many elements as a quint8 one), two vectors per loop iteration."""
    capability = kernel_capability(engine.aten_capability)
    return ElementwiseNumerics(capability, VECTOR_LANES_8BIT[capability] * 8 // bits)


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


# --- ATen's quantize and dequantize: the SIMD body's and the scalar tail's pipelines ----------
#
# aten/src/ATen/cpu/vec/vec256/vec256_qint.h (Vectorized<quint8>::dequantize, QuantizeAvx2) for
# the SIMD body; aten/src/ATen/native/quantized/AffineQuantizerBase.cpp (dequantize_val,
# quantize_val -> fbgemm::Quantize) for the scalar tail. Every ATen kernel that rescales through
# float (add, activations, normalization, pooling's NHWC tails, prelu, quantize) uses these.

INT32_FLOAT_MAX = 2147483520.0
"""The largest float32 below INT32_MAX: ``QuantizeAvx2`` caps values there before ``cvtps2dq``."""


def inverse_scale(scale: float) -> np.float32:
    """``1.0f / (float)scale``: the factor every ATen quantize multiplies by."""
    return f32(np.float32(1.0) / f32(scale))[()]


def dequantize_vector(scale: float, zero_point: int) -> tuple[Step, ...]:
    """``Vectorized::dequantize(scale, zp, scale * -zp)``: ``fmaf(f32(q), f32(s), f32(f32(s) f32(-z)))``
    (the zero point premultiplied, one FMA)."""
    scale32 = f32(scale)
    return (ToFloat32("q to float32"),
            MultiplyAddFloat32("dequantize (premultiplied zero point, FMA)", factor=scale32,
                               term=f32(scale32 * f32(-int(zero_point)))))


def dequantize_vector_sub_mul(scale: float, zero_point: int) -> tuple[Step, ...]:
    """``Vectorized::dequantize(scale, zp)`` (two arguments): ``f32(f32(q - z) * f32(s))``."""
    return (AddInt("q - z", term=-int(zero_point)), ToFloat32("to float32"),
            MultiplyFloat32("dequantize (times s)", factor=f32(scale)))


def dequantize_scalar(scale: float, zero_point: int) -> tuple[Step, ...]:
    """``dequantize_val``: ``f32(f32(s) * f32(q - z))``."""
    return (AddInt("q - z", term=-int(zero_point)), ToFloat32("to float32"),
            MultiplyFloat32("dequantize (times s)", factor=f32(scale)))


def quantize_vector(inv, zero_point: int, dtype) -> tuple[Step, ...]:
    """``QuantizeAvx2``: ``clamp(wrap32(cvtps2dq(min(f32(y * inv), 2147483520)) + z))``: the zero
    point added in integers after rounding, a 32-bit add (``_mm256_add_epi32``) that wraps.

    NaN (and +inf) become 2147483520 at ``minps``, -inf INT32_MIN at ``cvtps2dq``; measured on
    torch 2.13 (quantized LayerNorm/GroupNorm/InstanceNorm with eps=0 on a constant group, 0 * inf
    = NaN; BatchNorm with a NaN/inf bias; tests/ops/test_normalization.py): quint8 NaN gives 255
    for z < 128 and 0 for z >= 128 (2147483520 + z wraps), qint8 NaN gives 127, and qint8 -inf
    with z < 0 gives 127 (INT32_MIN + z wraps)."""
    return (MultiplyFloat32("times 1/s_out", factor=f32(inv)),
            MinFloat32("cap below INT32_MAX (minps)", high=INT32_FLOAT_MAX),
            RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
            AddInt32("output zero point, after rounding (int32 add, wraps)", term=int(zero_point)),
            ClampInt("output range", role="output_clamp", low=dtype.qmin, high=dtype.qmax))


def quantize_scalar(inv, zero_point, dtype) -> tuple[Step, ...]:
    """``quantize_val`` (FBGEMM ``Quantize``): ``clamp(rne(f32(f32(y * inv) + f32(z))))``: the
    zero point added in float32 before rounding. ``inv`` and ``zero_point`` may be arrays that
    broadcast to the values (``quantize_per_channel``: one per channel).

    NaN: ``nearbyint`` keeps it, FBGEMM's ``clamp`` (``std::min(std::max(v, lo), hi)``) keeps it,
    and the conversion to the integer type (``cvttsd2si``, 32 bits) gives 0x80000000, stored in
    the dtype's width: 0 for quint8/qint8, INT32_MIN for qint32. Measured on torch 2.13: the
    scalar tails of quantized LayerNorm and NHWC GroupNorm (eps=0 on a constant group), and
    ``quantize_per_channel``, give 0 for every zero point (not qmax, not qmin);
    ``quantize_per_tensor``/``_per_channel`` to qint32 give INT32_MIN."""
    return (MultiplyFloat32("times 1/s_out", factor=f32(inv)),
            AddFloat32("output zero point, before rounding",
                       term=f32(np.asarray(zero_point, dtype=np.int64))),
            RoundHalfEvenToInt64("round half to even (nearbyint)", role="round",
                                 nan=INT32_MIN if dtype.bits == 32 else 0),
            ClampInt("output range", role="output_clamp", low=dtype.qmin, high=dtype.qmax))


def requantize_from_int_vector(multiplier, zero_point: int, dtype) -> tuple[Step, ...]:
    """``Vectorized<T>::requantize_from_int`` (vec256_qint.h, ``RequantizeAvx2``) on an integer
    ``c``: ``clamp(wrap32(cvtps2dq(f32(f32(c) m)) + z))``: past int32 ``cvtps2dq`` gives
    INT32_MIN and the 32-bit add of the zero point wraps."""
    return (ToFloat32("to float32"),
            MultiplyFloat32("times the multiplier m", factor=f32(multiplier)),
            RoundHalfEvenToInt32("round half to even (cvtps2dq; past int32: INT32_MIN)",
                                 role="round"),
            AddInt32("output zero point (int32 add, wraps)", term=int(zero_point)),
            ClampInt("output range", role="output_clamp", low=dtype.qmin, high=dtype.qmax))


def requantize_from_int_scalar(multiplier, zero_point: int, dtype) -> tuple[Step, ...]:
    """``requantize_from_int`` (aten/src/ATen/native/quantized/AffineQuantizer.cpp) on an integer
    ``c``: ``clamp(z + lrintf(f32(f32(c) m)))`` in int64: ``lrintf`` gives INT64_MIN for NaN or
    past int64, and adding a negative zero point to that wraps (measured on prelu)."""
    return (ToFloat32("to float32"),
            MultiplyFloat32("times the multiplier m", factor=f32(multiplier)),
            RoundHalfEvenLrint("round half to even (lrintf, 64-bit)", role="round"),
            AddInt("output zero point (int64 add)", term=int(zero_point)),
            ClampInt("output range", role="output_clamp", low=dtype.qmin, high=dtype.qmax))


# --- Which elements take the SIMD body: TensorIterator's walk ---------------------------------


def layout_simd_mask(numerics: ElementwiseNumerics, out_shape, arrays, num_threads: int) -> np.ndarray:
    """``simd_mask`` in the order TensorIterator walks memory: when every operand has the output's
    shape and torch would call it channels_last (``suggests_channels_last`` on its NumPy strides),
    the walk is N, H, W, C; otherwise C order (``simd_mask``'s own coalescing). (Unary kernels;
    add and mul take ``binary_walk``, which also covers mixed layouts and broadcasting.)"""
    out_shape = tuple(out_shape)
    if (len(arrays) == 1 and arrays[0].shape == out_shape and arrays[0].size
            and not is_channels_first_contiguous(arrays[0]) and not is_channels_last(arrays[0])):
        return _strided_simd_mask(numerics, arrays[0], num_threads)
    if (len(out_shape) in (4, 5) and all(a.shape == out_shape for a in arrays)
            and all(suggests_channels_last(a) for a in arrays)):
        order = (0,) + tuple(range(2, len(out_shape))) + (1,)
        memory_shape = tuple(out_shape[d] for d in order)
        mask = simd_mask(numerics, memory_shape, [memory_shape] * len(arrays), num_threads)
        return mask.transpose(np.argsort(order))
    return simd_mask(numerics, out_shape, [a.shape for a in arrays], num_threads)


def _strided_simd_mask(numerics: ElementwiseNumerics, x: np.ndarray, num_threads: int):
    """A unary kernel on a non-dense input (a slice such as ``y[:, :2]`` or a chunk): TensorIterator
    orders the dims by the input's strides, allocates the output dense in that order, and
    coalesces adjacent dims only where the input's strides continue (c10 TensorIterator
    ``reorder_dimensions``/``coalesce_dimensions``); each inner loop then has its own SIMD body
    and scalar tail."""
    strides = [abs(s) // x.itemsize for s in x.strides]
    dims = [d for d in range(x.ndim) if x.shape[d] > 1]
    order = sorted(dims, key=lambda d: strides[d])  # innermost first
    inner = 1
    expected = None
    for d in order:
        if expected is not None and strides[d] != expected:
            break
        inner *= x.shape[d]
        expected = strides[d] * x.shape[d]
    if order and strides[order[0]] != 1:
        inner = 1  # the inner loop is not contiguous: basic_loop, every element scalar
    axes = [d for d in range(x.ndim) if x.shape[d] == 1] + order[::-1]  # outermost first
    total = x.size
    flat = (simd_mask(numerics, (total,), [(total,)], num_threads, inner=inner) if inner > 1
            else np.zeros(total, bool))
    positions = np.arange(total).reshape(x.shape).transpose(axes).ravel()  # walk -> logical
    mask = np.zeros(total, bool)
    mask[positions] = flat
    return mask.reshape(x.shape)


@dataclass(frozen=True)
class IteratorWalk:
    """How TensorIterator runs a kernel over ``shape``: ``perm``, the dims fastest first;
    ``inner``, the size of the coalesced innermost dim (one inner loop per row of that many
    elements of the walk); ``vectorized``, whether those inner loops run ``vectorized_loop``
    (SIMD body and scalar tail) or ``basic_loop`` (every element scalar); ``out_strides``, the
    output's strides in elements."""

    shape: tuple
    perm: tuple
    inner: int
    vectorized: bool
    out_strides: tuple

    def simd_mask(self, numerics: ElementwiseNumerics, num_threads: int) -> np.ndarray:
        """True where the SIMD lambda runs (``simd_mask`` over the walk, mapped back to the
        logical indices)."""
        total = math.prod(self.shape)
        if not self.vectorized or total == 0:
            return np.zeros(self.shape, bool)
        flat = simd_mask(numerics, (total,), [(total,)], num_threads, inner=self.inner)
        mask = np.zeros(total, bool)
        mask[self.positions()] = flat
        return mask.reshape(self.shape)

    def positions(self) -> np.ndarray:
        """The logical flat index of each element, in walk order."""
        return (np.arange(math.prod(self.shape)).reshape(self.shape)
                .transpose(self.perm[::-1]).ravel())

    def output(self, values: np.ndarray) -> np.ndarray:
        """``values`` (logical order) in a fresh array with the output's (dense) strides."""
        buffer = np.empty(math.prod(self.shape), values.dtype)
        out = np.lib.stride_tricks.as_strided(
            buffer, self.shape, tuple(s * values.itemsize for s in self.out_strides))
        out[...] = values
        return out


def iterator_walk(shape, arrays, out_strides=None) -> IteratorWalk:
    """TensorIterator's walk of a kernel writing an output of ``shape`` from ``arrays`` (their
    NumPy strides; broadcast to ``shape``). ``out_strides``: the strides (in elements) of an
    output allocated beforehand with this shape, or None when TensorIterator allocates (or
    resizes) it.

    c10 TensorIterator.cpp: ``compute_strides`` (a broadcast dim gets stride 0);
    ``reorder_dimensions``: the dims sorted fastest first by an insertion sort on
    ``should_swap``, where the first operand (output first, unless it is being allocated) with
    unequal nonzero strides decides, and equal strides put the smaller dim first;
    ``allocate_or_resize_outputs``: an allocated output is dense in that order;
    ``coalesce_dimensions``: adjacent dims merge where every operand's strides continue (size-1
    dims always). (``fast_set_up``, all operands dense with the same strides, gives the same
    single loop.) aten/src/ATen/native/cpu/Loops.h ``VectorizedLoop2d``: an inner loop is
    vectorized when every operand is contiguous along it, or all but one input are and that one
    is broadcast (``is_contiguous_scalar``); otherwise ``basic_loop``."""
    shape = tuple(int(size) for size in shape)
    ndim = len(shape)
    inputs = []
    for array in arrays:
        offset = ndim - array.ndim
        inputs.append([0] * offset + [
            0 if array.shape[d] == 1 and shape[offset + d] != 1
            else array.strides[d] // array.itemsize for d in range(array.ndim)])
    deciding = ([list(out_strides)] if out_strides is not None else []) + inputs

    def should_swap(dim0, dim1):
        for strides in deciding:
            if strides[dim0] == 0 or strides[dim1] == 0:
                continue
            if strides[dim0] != strides[dim1]:
                return 1 if strides[dim0] > strides[dim1] else -1
            if shape[dim0] > shape[dim1]:
                return 1
        return 0

    perm = reorder_dimensions(ndim, should_swap)
    if out_strides is None:
        out_strides, step = [0] * ndim, 1
        for dim in perm:
            out_strides[dim] = step
            step *= shape[dim]
    sizes = [shape[d] for d in perm]
    walked = [[strides[d] for d in perm] for strides in [list(out_strides)] + inputs]
    previous = 0
    for dim in range(1, ndim):
        if sizes[previous] == 1 or sizes[dim] == 1 or all(
                strides[previous] * sizes[previous] == strides[dim] for strides in walked):
            if sizes[previous] == 1:
                for strides in walked:
                    strides[previous] = strides[dim]
            sizes[previous] *= sizes[dim]
        else:
            previous += 1
            for strides in walked:
                strides[previous] = strides[dim]
            sizes[previous] = sizes[dim]
    inner = [strides[0] for strides in walked] if ndim else [1] * len(walked)
    vectorized = (inner[0] == 1 and all(s in (0, 1) for s in inner[1:])
                  and inner[1:].count(0) <= 1)
    return IteratorWalk(shape, tuple(perm), sizes[0] if ndim else 1, vectorized,
                        tuple(int(s) for s in out_strides))


def like_memory_format(result: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``result`` with the strides of ``source.suggest_memory_format()`` (outputs of ATen's
    elementwise kernels are allocated that way)."""
    if result.shape == source.shape and suggests_channels_last(source):
        return to_channels_last(result)
    return result
