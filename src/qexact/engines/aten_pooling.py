"""ATen's quantized pooling, mean and upsampling kernels: which kernel runs and its arithmetic as
``Step``s, the ``"avg_pool"``, ``"max_pool"``, ``"adaptive_avg_pool"``, ``"mean"`` and
``"upsample"`` families of the kernel table (``KERNELS``; ``Engine.kernel(family, ...)``), each
chosen per call (the choice depends on the input's dtype, rank and memory layout):

- ``"avg_pool"``: ``choose_avg_pool(engine, kernel_size, ceil_mode, dtype, values) ->
  AverageKernel``;
- ``"max_pool"``: ``choose_max_pool(engine, kernel_size, ceil_mode, dtype, values) ->
  MaxPoolKernel``;
- ``"adaptive_avg_pool"``: ``choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype,
  values) -> AverageKernel``;
- ``"mean"``: ``choose_mean(engine, dim, reduced, out_shape, dtype, values) -> AverageKernel |
  FloatMeanKernel``;
- ``"upsample"``: ``choose_upsample(engine, mode, values) -> UpsampleKernel``.

An averaging kernel sums a window's integers exactly, ``S`` over its ``n`` valid taps (int32 in
the kernels; exact for every window ATen accepts), and requantizes ``A = S - n z`` (or ``S``
itself) by a float32 factor derived from the divisor ``D``; the output keeps the input's scale
and zero point, so ``s_in / s_out = 1``. With ``m = f32(1 / D)``:

==============================================  ==========================================
ATen kernel (pytorch aten/src/ATen/native/      output
quantized/cpu/)
==============================================  ==========================================
avg_pool NCHW (AveragePool2d.cpp                ``clamp(nearbyint(f32(f32(A m) + z)))``
  ``avg_pool2d_out_frame``)
avg_pool channels_last, SIMD channels           ``QuantizeAvx2(A, inv = m)``: zero point after
  (kernels/QuantizedOpKernels.cpp               rounding (``engines.aten.quantize_vector``)
  ``do_avg_pool_nhwc_on_AVX2``)
avg_pool channels_last, other channels          ``quantize_val(1.0f / m, z, A)``
  (``_qavg_pool_nhwc_kernel``)                  (``engines.aten.quantize_scalar``)
adaptive NCHW (AdaptiveAveragePooling.cpp)      ``nearbyint(f32(S f32(f32(f32(1/kD)/kH)/kW)))``,
                                                raw sum, no zero point, no clamp
adaptive channels_last, SIMD channels           ``quantize_vec(1.0f / m, z, A)``:
  (``do_avg_pool_on_AVX2``)                     ``rne(fmaf(A, inv, z))``
adaptive channels_last, other channels          ``quantize_val(1.0f / m, z, A)``
mean, inner dims (``qmean_inner_dim_kernel``)   ``nearbyint(f32(f32(S) / f32(N)))``, raw sum
mean, otherwise (ReduceOps.cpp)                 dequantize, float32 ``at::sum`` (SumKernel.cpp
                                                cascade), ``/ N``, ``quantize_per_tensor``
==============================================  ==========================================

The divisor (``DIVISORS``): ``divisor_override`` if given, else the padded window
(``count_include_pad``) or the valid taps for avg_pool; the window's taps for adaptive pools and
mean. Padded taps never add to ``A``.

The channels_last kernels process ``Vectorized<T>::size() / 4`` channels at a time (8 in the AVX2
build; 16 in the AVX512 build, which only the avg_pool2d/3d stubs have: ``aten.kernel_capability``)
and round those ``C // w * w`` channels differently from the remaining ones; with
``ATEN_CPU_CAPABILITY=default`` every channel takes the scalar path. That translation unit is
compiled per capability with ``-mavx2 -mfma`` and GCC's default ``-ffp-contract=fast``, so products
there may be fused (``BilinearNumerics``, read from the binary's instructions).

No pooling kernel runs for ``adaptive_avg_pool3d`` to (1, 1, 1): ATen computes it as quantized
``mean`` over the last three dims (native/AdaptiveAveragePooling3d.cpp; ``ops.pooling`` hands it
to ``ops.reduce``). ``adaptive_avg_pool2d`` has that shortcut for float inputs only.

The description classes (``AverageKernel``, ``AveragePath``, ``ChannelSplit``, ``MaxPoolKernel``,
``FloatMeanKernel``, ``UpsampleKernel``, ``BilinearNumerics``) are any engine's: the qnnpack engine
states its average pooling, max pooling and global average pooling with them
(engines/qnnpack_pooling.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..layout import (is_channels_first_contiguous, is_channels_last, nhwc_kernel_result,
                      suggests_channels_last, to_channels_last, to_contiguous)
from ..requantize import (AddFloat32, ClampInt, DivideFloat32, MultiplyAddFloat32,
                          MultiplyFloat32, RoundHalfEvenToInt32, RoundHalfEvenToInt64, Step,
                          ToFloat32)
from ..rounding import f32
from . import aten
from .aten import kernel_capability

SOURCE = "pytorch aten/src/ATen/native/quantized/cpu"
KERNELS_SOURCE = f"{SOURCE}/kernels/QuantizedOpKernels.cpp"

SIMD_CHANNELS = {"avx512": 16, "avx2": 8, "default": 0}
"""Channels per SIMD block of the channels_last kernels: ``Vectorized<quint8>::size() / 4``
(32-byte vectors in the AVX2 build, 64 in the AVX512 one; no SIMD block in the default build)."""


# --- Averaging kernels: the description --------------------------------------------------------


DIVISORS = {
    "pool": "divisor_override if given, else the padded window's taps (count_include_pad) or "
            "the valid taps",
    "kernel area": "the kernel area (every tap of the window, padded taps included: they read "
                   "z); count_include_pad and divisor_override are ignored",
    "window": "the window's taps",
}
"""The divisor rules of averaging kernels (``AverageKernel.divisor``)."""


@dataclass(frozen=True, eq=False)
class Windows:
    """The windows an averaging op sums, per output element (arrays of the result's shape, or
    broadcastable to it): ``size``, the valid taps ``n``; ``padded``, the taps of the window
    padding included (ATen's ``pool_size``); ``counts``, the valid taps per spatial dim, outermost
    first; ``divisor_override`` and ``count_include_pad`` (avg_pool's arguments)."""

    size: np.ndarray
    padded: np.ndarray
    counts: tuple
    divisor_override: int | None = None
    count_include_pad: bool = True


@dataclass(frozen=True)
class AveragePath:
    """One code path of an averaging kernel: its ``name`` (explain shows it), its ``formula``, and
    ``steps(divisor, counts, qparams)``: the steps from the window's integer (``A = S - n z``, or
    ``S``) to the output integer, with constants per element of the path (``divisor``: each
    element's divisor; ``counts``: its valid taps per spatial dim; ``qparams``: the input's, which
    the output keeps).

    ``rescales``: the kernel takes output qparams of its own, and ``steps`` takes them as a
    fourth argument, ``steps(divisor, counts, qparams, output_qparams)`` (XNNPACK's global
    average pool); a path that does not rescale keeps the input's qparams."""

    name: str
    formula: str
    steps: Callable[..., tuple[Step, ...]]
    rescales: bool = False


@dataclass(frozen=True)
class ChannelSplit:
    """Which path computes each output element, and the output's memory layout.

    ``simd_channels`` ``w``: channels ``c < C // w * w`` take the first path, the others the last
    (0: every channel the last, as for a one-path kernel). ``layout``: a key of ``LAYOUTS``.
    ``input``: what PyTorch hands the kernel, a key of ``INPUTS``; ``reads``: how the kernel's
    first path reads it, a key of ``READS``."""

    simd_channels: int
    layout: str
    input: str = "as given"
    reads: str = "as stored"

    def split(self, values: np.ndarray, out_shape, spatial: int) -> tuple[np.ndarray, ...]:
        """The masks (over the output) of the first and the last path."""
        channels = values.shape[values.ndim - spatial - 1]
        simd = np.zeros(channels, bool)
        if self.simd_channels:
            simd = np.arange(channels) < channels // self.simd_channels * self.simd_channels
        shape = [1] * len(out_shape)
        shape[len(out_shape) - spatial - 1] = channels
        simd = np.broadcast_to(simd.reshape(shape), out_shape)
        return simd, ~simd


@dataclass(frozen=True)
class AverageKernel:
    """The kernel an engine runs for one average pool, adaptive average pool or integer mean.

    ``name``, ``source``; ``divisor``: the divisor rule (a key of ``DIVISORS``); ``centered``:
    whether the paths start from ``A = S - n z`` (True) or the raw sum ``S``; ``paths``: the code
    paths, SIMD first; ``placement``: a ``ChannelSplit`` (which path computes each element, how
    the kernel reads its input and lays its output out)."""

    name: str
    source: str
    divisor: str
    centered: bool
    paths: tuple[AveragePath, ...]
    placement: ChannelSplit

    @property
    def divisor_rule(self) -> str:
        return DIVISORS[self.divisor]

    def split(self, values: np.ndarray, out_shape, spatial: int) -> tuple[np.ndarray, ...]:
        """The masks (over the output) of the elements each path computes, in path order."""
        if len(self.paths) == 1:
            return (np.ones(out_shape, bool),)
        return self.placement.split(values, out_shape, spatial)

    def kernel_input(self, values: np.ndarray) -> np.ndarray:
        """The array PyTorch hands the kernel (``INPUTS``)."""
        return INPUTS[self.placement.input](values)

    def divisors(self, windows: Windows) -> np.ndarray:
        """Each output element's divisor ``D`` under ``self.divisor``."""
        if self.divisor == "pool":
            if windows.divisor_override is not None:
                return np.broadcast_to(np.int64(windows.divisor_override), windows.size.shape)
            return windows.padded if windows.count_include_pad else windows.size
        if self.divisor == "kernel area":
            return windows.padded
        return windows.size

    def read(self, values: np.ndarray) -> np.ndarray:
        """The integers the kernel's first path reads (``READS``)."""
        return READS[self.placement.reads](values, self.placement.simd_channels)

    def output(self, result: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``result`` (logical order) as the kernel returns it for input ``values``."""
        return LAYOUTS[self.placement.layout](result, values)


# --- Output layouts and input reads ------------------------------------------------------------


def _suggested_format(result: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``.contiguous(input.suggest_memory_format())``."""
    if result.ndim in (4, 5) and suggests_channels_last(values):
        return to_channels_last(result)
    return to_contiguous(result)


def _linear_into_suggested(result: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The result's elements written in C order into an output of its shape allocated in
    ``values.suggest_memory_format()`` (channels_last only for a 4-D output)."""
    if result.ndim == 4 and suggests_channels_last(values):
        n, c, h, w = result.shape
        return to_channels_last(np.ascontiguousarray(result).reshape(n, h, w, c)
                                .transpose(0, 3, 1, 2))
    return to_contiguous(result)


def _unbatched_ndhwc_result(result: np.ndarray, values: np.ndarray) -> np.ndarray:
    """What a 3-D adaptive pool of an unbatched (C, D, H, W) input returns from the channels_last
    kernel (only 4-D inputs reach it: 3-D inputs are never channels_last).

    AdaptiveAveragePooling.cpp ``_adaptive_avg_pool`` takes the NDHWC kernel when the 4-D input
    ``is_contiguous(ChannelsLast)`` (the *2-D* format: dim 1, here D, innermost), allocates the
    output in ``suggest_memory_format()`` and the kernel writes it in D, H, W, C order (C
    innermost). Read through the output's strides (memory order C, H, W, D for channels_last, C,
    D, H, W otherwise) the values are scrambled; qexact reproduces that."""
    written = np.ascontiguousarray(np.moveaxis(result, 0, -1)).reshape(-1)
    c, d, h, w = result.shape
    if suggests_channels_last(values):
        return to_channels_last(written.reshape(c, h, w, d).transpose(0, 3, 1, 2))
    return to_contiguous(written.reshape(result.shape))


LAYOUTS = {
    "contiguous": lambda result, values: to_contiguous(result),
    "channels_last kernel": nhwc_kernel_result,
    "input's suggested format": _suggested_format,
    "written in order into the input's suggested format": _linear_into_suggested,
    "unbatched NDHWC kernel": _unbatched_ndhwc_result,
}
"""How a kernel lays its output out, from the logical result and the kernel's input:
``contiguous``; ``channels_last kernel``, channels_last bytes in an output allocated in the
input's ``suggest_memory_format()`` (``layout.nhwc_kernel_result``: scrambled for ambiguous
strides); the input's suggested format; the result's bytes written in C order into that format;
the unbatched NDHWC adaptive kernel's (``_unbatched_ndhwc_result``)."""


def _unbatched_simd_reads(values: np.ndarray, width: int) -> np.ndarray:
    """The elements the SIMD channels of the NDHWC kernel read from an unbatched (C, D, H, W)
    input (see ``_unbatched_ndhwc_result``): ``do_avg_pool_on_AVX2`` loads ``width`` consecutive
    bytes at channel ``c0`` of each block, as if channels had stride 1, so channel ``c0 + j``
    reads the element ``j`` places after ``(c0, d, h, w)`` in memory (here C is dim 0, the
    outermost). Tail channels read correctly."""
    if not width or values.shape[0] < width:
        return values
    strides = [stride // values.itemsize for stride in values.strides]
    offsets = sum(np.arange(size).reshape([-1 if d == axis else 1 for d in range(values.ndim)])
                  * stride for axis, (size, stride) in enumerate(zip(values.shape, strides)))
    offsets = np.broadcast_to(offsets, values.shape)
    memory = np.empty(values.size, values.dtype)
    memory[offsets.reshape(-1)] = values.reshape(-1)  # dense: offsets are a permutation
    channels = np.arange(values.shape[0] // width * width)
    first = channels - channels % width
    reads = np.array(values)
    reads[channels] = memory[offsets[first] + (channels - first).reshape(-1, 1, 1, 1)]
    return reads


INPUTS = {
    "as given": lambda values: values,
    "made channels_last": to_channels_last,
}
"""What PyTorch hands a kernel: the input as given, or made channels_last first
(AveragePool3d.cpp: ``input.contiguous(MemoryFormat::ChannelsLast3d)``, every 5-D input)."""


READS = {
    "as stored": lambda values, width: values,
    "unbatched, channels as if innermost": _unbatched_simd_reads,
}
"""How a kernel reads its input: as stored, or (the NDHWC adaptive kernel on an unbatched input)
with its SIMD channels reading memory as if channels were innermost (``_unbatched_simd_reads``)."""


# --- ATen's averaging paths --------------------------------------------------------------------


def _reciprocal(divisor) -> np.ndarray:
    """``m = f32(s_in / s_out / D)`` with ``s_in / s_out = 1``: ``f32(1 / D)``."""
    return f32(1.0 / np.asarray(divisor, np.float64))


def _inverse_of(multiplier) -> np.ndarray:
    """``quantize_val(1.0f / m, ...)``'s factor: ``inv = f32(1 / f32(1 / m))``."""
    return aten.inverse_scale(f32(np.float32(1.0) / f32(multiplier)))


def _named(steps: tuple[Step, ...], label: str) -> tuple[Step, ...]:
    """``steps`` with the first one (the multiply by the pipeline's inverse scale) relabelled:
    what the kernel passes as that inverse scale."""
    return (replace(steps[0], label=label),) + steps[1:]


def _output_range(dtype) -> ClampInt:
    return ClampInt("output range", role="output_clamp", low=dtype.qmin, high=dtype.qmax)


def nchw_avg_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """AveragePool2d.cpp ``avg_pool2d_out_frame``: ``float sum = A; nearbyint(sum * multiplier +
    output_zero_point)`` (no FMA), clamped."""
    return (ToFloat32("float sum = A"),
            MultiplyFloat32("times m = f32(1 / D)", factor=_reciprocal(divisor)),
            AddFloat32("output zero point, before rounding", term=f32(int(qparams.zero_point))),
            RoundHalfEvenToInt64("round half to even (nearbyint)", role="round"),
            _output_range(qparams.dtype))


def nhwc_avg_simd_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """``do_avg_pool_nhwc_on_AVX2``: the int32 sums to float (``vec256::convert``), then
    ``QuantizeAvx2`` with ``inverse_scale = m`` (zero point after rounding)."""
    return ((ToFloat32("A to float32"),)
            + _named(aten.quantize_vector(_reciprocal(divisor), int(qparams.zero_point),
                                          qparams.dtype), "times m = f32(1 / D)"))


def nhwc_avg_tail_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """``_qavg_pool_nhwc_kernel``'s channel loop: ``quantize_val(1.0f / m, z, A)``."""
    return ((ToFloat32("A to float32"),)
            + _named(aten.quantize_scalar(_inverse_of(_reciprocal(divisor)),
                                          int(qparams.zero_point), qparams.dtype),
                     "times inv = f32(1 / f32(1 / m)), m = f32(1 / D)"))


def _adaptive_multiplier(divisor) -> np.ndarray:
    """``_qadaptive_avg_pool_kernel``: ``float multiplier = s_in / s_out / size``, float32."""
    return f32(np.float32(1.0) / f32(divisor))


def nhwc_adaptive_simd_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """``do_avg_pool_on_AVX2``: ``quantize_vec(1.0f / m, z, A)``, whose FBGEMM ``Quantize``
    runs ``fmaf(A, inv, z)`` then rounds (measured)."""
    inverse = _inverse_of(_adaptive_multiplier(divisor))
    return (ToFloat32("A to float32"),
            MultiplyAddFloat32("fmaf(A, inv, z), inv = f32(1 / f32(1 / m)), m = f32(1 / n)",
                               factor=inverse, term=f32(int(qparams.zero_point)), fused=True),
            RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
            _output_range(qparams.dtype))


def nhwc_adaptive_tail_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """``_qadaptive_avg_pool_kernel``'s channel loop: ``quantize_val(1.0f / m, z, A)``."""
    return ((ToFloat32("A to float32"),)
            + _named(aten.quantize_scalar(_inverse_of(_adaptive_multiplier(divisor)),
                                          int(qparams.zero_point), qparams.dtype),
                     "times inv = f32(1 / f32(1 / m)), m = f32(1 / n)"))


def nchw_adaptive_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """AdaptiveAveragePooling.cpp (NCHW): the raw sum times ``f32(f32(f32(1 / kD) / kH) / kW)``
    (``kD = 1`` for 2-D), rounded; no zero point, no clamp (an average of the dtype's values)."""
    counts = list(counts)
    if len(counts) == 2:
        counts.insert(0, np.ones_like(counts[0]))
    factor = f32(1.0 / np.asarray(counts[0], np.float64))
    for count in counts[1:]:
        factor = f32(factor / f32(count))
    return (ToFloat32("S to float32"),
            MultiplyFloat32("times f32(f32(f32(1 / kD) / kH) / kW)", factor=factor),
            RoundHalfEvenToInt64("round half to even (nearbyint)", role="round"))


def inner_mean_steps(divisor, counts, qparams) -> tuple[Step, ...]:
    """``qmean_inner_dim_kernel``: the raw integer sum over the group, ``f32(f32(S) / f32(N))``,
    rounded (no zero point: an average of the dtype's values needs no clamp)."""
    return (ToFloat32("S to float32"),
            DivideFloat32("divided by f32(N)", divisor=f32(divisor)),
            RoundHalfEvenToInt64("round half to even (nearbyint)", role="round"))


_NCHW_AVG = AveragePath("NCHW kernel (avg_pool2d_out_frame)",
                        "q = clamp(nearbyint(f32(f32(A * m) + z))), m = f32(1 / D)",
                        nchw_avg_steps)
_SCALAR_CHANNELS = "scalar channel loop (quantize_val)"


def _simd_name(width: int, capability: str) -> str:
    return f"SIMD channels ({capability} build, blocks of {width} channels)"


def avg_pool_kernel(engine, values: np.ndarray, spatial: int) -> AverageKernel:
    """ATen's avg_pool2d/3d for ``values``: AveragePool3d.cpp always runs the NDHWC kernel
    (``input.contiguous(ChannelsLast3d)``); AveragePool2d.cpp runs the NHWC one for a
    channels_last-contiguous input, ``avg_pool2d_out_frame`` otherwise."""
    if not (spatial == 3 and values.ndim == 5 or is_channels_last(values)):
        return AverageKernel("ATen avg_pool2d (NCHW)", f"{SOURCE}/AveragePool2d.cpp", "pool",
                             True, (_NCHW_AVG,), ChannelSplit(0, "contiguous"))
    capability = kernel_capability(engine.aten_capability, avx512_build=True)
    width = SIMD_CHANNELS[capability]
    return AverageKernel(
        f"ATen avg_pool{spatial}d channels_last ({capability})",
        f"{KERNELS_SOURCE} _qavg_pool_nhwc_kernel, do_avg_pool_nhwc_on_AVX2", "pool", True,
        (AveragePath(_simd_name(width, capability),
                     "q = clamp(cvtps2dq(f32(A * m)) + z), m = f32(1 / D)", nhwc_avg_simd_steps),
         AveragePath(_SCALAR_CHANNELS,
                     "q = clamp(nearbyint(f32(f32(A * inv) + z))), inv = f32(1 / f32(1 / m))",
                     nhwc_avg_tail_steps)),
        ChannelSplit(width, "channels_last kernel",
                     "made channels_last" if spatial == 3 and values.ndim == 5 else "as given"))


def choose_avg_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """ATen's average pooling on every engine (``avg_pool_kernel``), at the engine's capability:
    the channels_last kernel's stub has an AVX512 build."""
    return avg_pool_kernel(engine, values, len(kernel_size))


def choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values: np.ndarray):
    """ATen's adaptive average pooling: the NHWC/NDHWC kernel (``qadaptive_avg_pool2d_nhwc_stub``,
    ``qadaptive_avg_pool3d_ndhwc_stub``, registered with ``REGISTER_DISPATCH`` only: AVX512 CPUs
    run the AVX2 build, 8 channels; measured on torch 2.13: 16 would miss 194 of 1.3M elements)
    for a channels_last-contiguous input, else AdaptiveAveragePooling.cpp's NCHW loop."""
    spatial = len(out_sizes)
    if not is_channels_last(values):
        return AverageKernel(
            f"ATen adaptive_avg_pool{spatial}d (NCHW)", f"{SOURCE}/AdaptiveAveragePooling.cpp",
            "window", False,
            (AveragePath("NCHW kernel (adaptive_avg_pool_single_out_frame)",
                         "q = nearbyint(f32(S * f32(f32(f32(1/kD) / kH) / kW)))",
                         nchw_adaptive_steps),),
            ChannelSplit(0, "contiguous"))
    capability = kernel_capability(engine.aten_capability)
    width = SIMD_CHANNELS[capability]
    unbatched = values.ndim == spatial + 1
    return AverageKernel(
        f"ATen adaptive_avg_pool{spatial}d channels_last ({capability})",
        f"{KERNELS_SOURCE} _qadaptive_avg_pool_kernel, do_avg_pool_on_AVX2", "window", True,
        (AveragePath(_simd_name(width, capability),
                     "q = clamp(rne(fmaf(A, inv, z))), inv = f32(1 / f32(1 / m)), m = f32(1 / n)",
                     nhwc_adaptive_simd_steps),
         AveragePath(_SCALAR_CHANNELS,
                     "q = clamp(nearbyint(f32(f32(A * inv) + z))), inv = f32(1 / f32(1 / m))",
                     nhwc_adaptive_tail_steps)),
        ChannelSplit(width, "unbatched NDHWC kernel" if unbatched else "channels_last kernel",
                     reads="unbatched, channels as if innermost" if unbatched else "as stored"))


# --- max pooling ---------------------------------------------------------------------------------


TAP_RULES = {
    "valid": "taps in the padding are skipped",
    "clamped": "each tap clamped into the input (doz(o*s + j*d, pad), then min(., size - 1)): "
               "never skipped",
}
"""Which taps a max pool compares (``MaxPoolKernel.taps``)."""


@dataclass(frozen=True)
class MaxPoolKernel:
    """The kernel an engine runs for one max pool: ``name``, ``source``, ``taps`` (a key of
    ``TAP_RULES``) and ``layout`` (a key of ``LAYOUTS``). No arithmetic: the largest integer."""

    name: str
    source: str
    taps: str
    layout: str

    @property
    def tap_rule(self) -> str:
        return TAP_RULES[self.taps]

    def tap(self, position: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the kernel reads a tap at ``position`` (per output position along a dim of
        ``size``), and whether it compares it."""
        if self.taps == "clamped":
            position = np.clip(position, 0, size - 1)
        return position, (position >= 0) & (position < size)

    def output(self, result: np.ndarray, values: np.ndarray) -> np.ndarray:
        return LAYOUTS[self.layout](result, values)


def choose_max_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """ATen's max pooling on every engine: Pooling.cpp (NCHW, ``max_pool2d``/3d) or the NHWC
    kernel (``qmaxpool_2d_nhwc_kernel``, into ``suggest_memory_format()``) for a channels_last
    input; padded taps are skipped."""
    spatial = len(kernel_size)
    if is_channels_last(values):
        return MaxPoolKernel(f"ATen max_pool{spatial}d channels_last",
                             f"{KERNELS_SOURCE} qmaxpool_{spatial}d_nhwc_kernel", "valid",
                             "channels_last kernel")
    return MaxPoolKernel(f"ATen max_pool{spatial}d", f"{SOURCE}/Pooling.cpp", "valid",
                         "contiguous")


# --- mean ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatMeanKernel:
    """ReduceOps.cpp ``mean_out_quantized_cpu``'s reference path: dequantize
    (``Tensor.dequantize``), float32 ``at::sum`` in SumKernel.cpp's cascade order
    (``float_vector_lanes``: ``Vectorized<float>::size()`` of the build that runs; AVX512 CPUs run
    the AVX2 build, SumKernel registers no AVX512 one), ``f32(sum / N)``, ``quantize_per_tensor``
    with the input's qparams; the output contiguous."""

    name: str
    source: str
    float_vector_lanes: int


def mean_inner_kernel() -> AverageKernel:
    return AverageKernel(
        "ATen qmean_inner_dim_kernel", f"{KERNELS_SOURCE} qmean_inner_dim_kernel", "window",
        False, (AveragePath("inner dims (raw integer sums)", "q = nearbyint(f32(f32(S) / f32(N)))",
                            inner_mean_steps),),
        ChannelSplit(0, "written in order into the input's suggested format"))


def choose_mean(engine, dim, reduced, out_shape, dtype, values: np.ndarray):
    """ReduceOps.cpp ``mean_out_quantized_cpu``: the inner-dim kernel when the reduced dims are the
    innermost ones of an NCHW-contiguous input (or all dims), else the reference path. The inner
    kernel allocates its output in ``suggest_memory_format()``: a rank-2/3 output of an input whose
    strides suggest channels_last (a conv output with a 1x1 image: strides (C, 1, C, C)) makes
    PyTorch raise, and qexact refuses there."""
    innermost = tuple(reduced) == tuple(range(values.ndim - len(reduced), values.ndim))
    if innermost and is_channels_first_contiguous(values):
        if suggests_channels_last(values) and len(out_shape) != values.ndim:
            raise UnsupportedError(
                f"mean over dims {list(reduced)} without keepdim of a tensor of shape "
                f"{values.shape} whose strides suggest channels_last: PyTorch's "
                "qmean_inner_dim_kernel raises 'required rank 4 tensor to use channels_last "
                "format' here, so the model cannot run in PyTorch either (keepdim=True, or "
                "flatten first, works)")
        return mean_inner_kernel()
    lanes = 16 if kernel_capability(engine.aten_capability) == "avx512" else 8
    return FloatMeanKernel("ATen quantized mean (dequantize, at::sum, quantize_per_tensor)",
                           f"{SOURCE}/ReduceOps.cpp mean_out_quantized_cpu, pytorch aten/src/"
                           "ATen/native/cpu/SumKernel.cpp", lanes)


# --- upsampling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BilinearNumerics:
    """How one compiled ``upsample_bilinear2d`` kernel rounds (all float32).

    - ``source_index_fused``: the source coordinate (UpSample.h ``area_pixel_compute_source_index``,
      inlined) is ``fmaf(scale, f32(o + 0.5), -0.5)`` instead of
      ``f32(f32(scale * f32(o + 0.5)) - 0.5)``
      (align_corners: ``f32(scale * o)`` either way).
    - ``simd_channels``: channels ``c < C // w * w`` take ``do_quantized_bilinear_on_AVX2``
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
NHWC_BILINEAR = {
    "avx2": BilinearNumerics(source_index_fused=True, simd_channels=8,
                             simd_blend="second", tail_blend="first"),
    "default": BILINEAR_UNFUSED,
}


@dataclass(frozen=True)
class UpsampleKernel:
    """The kernel an engine runs for one quantized upsample: ``name``, ``source``, ``mode``
    (``"nearest"``: a copy of the nearest source pixel; ``"bilinear"``), ``bilinear`` (its
    ``BilinearNumerics``, None for nearest), ``copies_unchanged_size`` (a bilinear kernel that
    returns a copy when the output size equals the input's) and ``layout`` (a key of
    ``LAYOUTS``)."""

    name: str
    source: str
    mode: str
    bilinear: BilinearNumerics | None
    copies_unchanged_size: bool
    layout: str

    def quantize_steps(self, simd: bool, input_qparams, output_qparams) -> tuple[Step, ...]:
        """``v = blend - z_in`` to the output integer, ``inverse_scale = f32(s_o / s_i)`` (1.0: the
        output keeps the input's qparams): the SIMD channels ``quantize_vec`` (FBGEMM
        ``Quantize``: ``rne(fmaf(v, 1 / inverse_scale, z))``), the others ``quantize_val``."""
        ratio = f32(float(output_qparams.scale) / float(input_qparams.scale))
        inv = aten.inverse_scale(ratio)
        zero_point, dtype = int(output_qparams.zero_point), output_qparams.dtype
        if not simd:
            return _named(aten.quantize_scalar(inv, zero_point, dtype),
                          "times inv = f32(1 / f32(s_o / s_i)) (quantize_val)")
        return (MultiplyAddFloat32("fmaf(v, inv, z) (quantize_vec)", factor=inv,
                                   term=f32(zero_point), fused=True),
                RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
                _output_range(dtype))

    def output(self, result: np.ndarray, values: np.ndarray) -> np.ndarray:
        return LAYOUTS[self.layout](result, values)


def choose_upsample(engine, mode: str, values: np.ndarray) -> UpsampleKernel:
    """UpSampleNearest2d.cpp / UpSampleNearest3d.cpp (nearest and nearest-exact, 4-D and 5-D:
    a gather), UpSampleBilinear2d.cpp (bilinear, NCHW: a copy when the size is unchanged),
    ``qupsample_bilinear2d_nhwc_kernel`` (bilinear, channels_last-contiguous input: the AVX2
    build on AVX512 CPUs). Channels_last inputs give channels_last bytes in the input's
    ``suggest_memory_format()`` (``layout.nhwc_kernel_result``)."""
    channels_last = is_channels_last(values)
    layout = "channels_last kernel" if channels_last else "contiguous"
    if mode in ("nearest", "nearest-exact"):
        dims = "3d" if values.ndim == 5 else "2d"
        op = "_upsample_nearest_exact" if mode == "nearest-exact" else "upsample_nearest"
        return UpsampleKernel(f"ATen {op}{dims}",
                              f"{SOURCE}/UpSampleNearest{dims.upper()[0]}d.cpp, "
                              "aten/src/ATen/native/UpSample.h", mode, None, False, layout)
    if mode != "bilinear":
        raise UnsupportedError(f"upsample mode {mode!r} is not supported; supported: 'nearest', "
                               "'nearest-exact', 'bilinear'")
    if not channels_last:
        return UpsampleKernel("ATen upsample_bilinear2d (NCHW)",
                              f"{SOURCE}/UpSampleBilinear2d.cpp", "bilinear", BILINEAR_UNFUSED,
                              True, layout)
    capability = kernel_capability(engine.aten_capability)
    return UpsampleKernel(f"ATen upsample_bilinear2d channels_last ({capability})",
                          f"{KERNELS_SOURCE} qupsample_bilinear2d_nhwc_kernel", "bilinear",
                          NHWC_BILINEAR[capability], False, layout)


KERNELS: dict = {"avg_pool": choose_avg_pool, "max_pool": choose_max_pool,
                 "adaptive_avg_pool": choose_adaptive_avg_pool, "mean": choose_mean,
                 "upsample": choose_upsample}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
