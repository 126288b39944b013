"""oneDNN (engine ``onednn``; ``x86`` conv when dispatched there): scales applied one by one.

PyTorch hands oneDNN reciprocal scales (qlinear.cpp, qlinear_prepack.cpp), ideep inverts them back
(ideep/operators/matmul.hpp), and oneDNN inverts the output scale once more
(src/cpu/x64/matmul/brgemm_matmul.cpp); post-ops run in the order of
src/cpu/x64/brgemm/jit_brgemm_kernel.cpp ``store_accumulators_apply_post_ops``:

    s_in  = f32(1.0 / double(f32(1.0 / s_x)))
    s_w'  = f32(1.0 / double(f32(1.0 / s_w)))            per-tensor (linear)
          = f32(1.0 / double(f32(1.0f / f32(s_w[n]))))    per-channel (linear)
    inv   = f32(1.0f / f32(1.0f / f32(1.0 / s_out)))
    t = f32(f32(f32(acc) * s_in) * s_w'[n]);  t = f32(t + bias[n]);  relu: t = max(t, 0)
    t = f32(f32(t * inv) + f32(z_out));  q = round_half_even(clamp(t, 0, 255))   zp before rounding

Non-zero weight zero points are refused, as ``PackedLinearWeightsOnednn::prepack`` does.

Without VNNI (``avx2``) oneDNN runs its int8 ``gemm:jit`` matmul instead of brgemm. It multiplies
the accumulator by one combined factor ``f32(s_in * s_w')`` (measured; brgemm applies the two
one by one), and its driver sums u8 x s8 pairs with int16 saturation, in
K blocks (src/cpu/x64/gemm/gemm_driver.cpp ``get_k_padd``; AVX2 s8u8s32 blocking ``bk = 384``,
``bk_traditional = 256`` in gemm_info.cpp): one block up to K = 256, two halves of ceil(K/2) below
K = 768, blocks of 384 beyond. Pairs start at each block's start; this moves the pairing only when
a block starts at an odd K (257 <= K <= 766 with K % 4 in {1, 2}). M, N and the thread count do
not enter (measured K = 1..2100, M up to 200, N up to 1024, 1 and 2 threads).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType

import numpy as np

from ..errors import UnsupportedError
from ..requantize import (AddFloat32, AddResidualFloat32, ClampFloat32, DivideFloat32, MultiplyFloat32,
                          RoundHalfEvenToInt32, ToFloat32)
from ..rounding import f32
from ..requantize import Step
from .aten_kernels import ATEN_KERNELS
from .base import (AVX2, AVX512_VNNI, PAD_ZERO, BiasMode, ConvGeometry, ConvKernel, Engine,
                   GemmNumerics, LayerQuantization, Requantization)
from .dynamic_eager import ONEDNN_AVX2_DYNAMIC, ONEDNN_DYNAMIC, no_linear_fp16


def _round_trip(scale_float32_reciprocal) -> np.ndarray:
    """``f32(1.0 / double(r))``: ideep turning PyTorch's reciprocal scale back into a scale."""
    return f32(1.0 / np.asarray(scale_float32_reciprocal, dtype=np.float32).astype(np.float64))


def requantization(layer: LayerQuantization, combined_scales: bool = False,
                   direct_weight_scale: bool = False,
                   divide_output_scale: bool = False,
                   sum_post_op: bool = False) -> Requantization:
    """The post-ops; ``combined_scales``: one factor ``f32(s_in * s_w')`` (the AVX2 gemm:jit
    path), else the two scales applied one by one (brgemm). ``direct_weight_scale``: the
    convolution's ``s_w' = f32(s_w)`` (qconv_prepack.cpp passes weight scales as they are).
    ``divide_output_scale``: ``f32(v / s_out')`` instead of a multiply by its reciprocal.
    ``sum_post_op``: a quantized residual (``layer.residual_qparams``) is added by oneDNN's "sum"
    (quantized::conv2d_add, engine onednn only; without it no "sum" step: refused)."""
    weight = layer.weight_qparams
    output = layer.output_qparams
    input_scale = _round_trip(f32(1.0 / layer.input_scale))
    if direct_weight_scale:
        weight_scale = f32(weight.scale)
    elif weight.is_per_channel:
        weight_scale = _round_trip(f32(np.float32(1.0) / f32(weight.scale)))
    else:
        weight_scale = _round_trip(f32(1.0 / weight.scale))
    output_scale = f32(np.float32(1.0) / f32(1.0 / output.scale))
    inverse_output_scale = f32(np.float32(1.0) / output_scale)
    steps = [ToFloat32("accumulator to float32")]
    if combined_scales:
        combined = f32(input_scale * weight_scale)
        steps.append(MultiplyFloat32("s_in * s_w', one factor",
                                     factor=combined))
        multipliers = (combined,)
    else:
        steps += [MultiplyFloat32("input scale (reciprocal round trip)", factor=input_scale),
                  MultiplyFloat32("weight scale" + ("" if direct_weight_scale else
                                                    " (reciprocal round trip)"), factor=weight_scale)]
        multipliers = (input_scale, weight_scale)
    bias = None
    if layer.bias is not None:
        bias = f32(layer.bias)
        steps.append(AddFloat32("float bias", role="bias", term=bias))
    if layer.residual_qparams is not None and sum_post_op:
        # conv2d_add(_relu): oneDNN's "sum" post-op before the ReLU (qconv.cpp, has_accum)
        residual = layer.residual_qparams
        steps.append(AddResidualFloat32("residual add (oneDNN sum post-op)", role="sum",
                                        zero_point=int(residual.zero_point),
                                        scale=float(f32(residual.scale)), fused=True))
    if layer.relu:
        steps.append(ClampFloat32("fused ReLU", role="relu", low=0.0))
    steps += [
        DivideFloat32("output scale (reciprocal round trip)", divisor=output_scale)
        if divide_output_scale else
        MultiplyFloat32("1 / output scale", factor=inverse_output_scale),
        AddFloat32("output zero point, before rounding", term=f32(output.zero_point)),
        ClampFloat32("saturate to the output range", role="output_clamp", low=float(output.dtype.qmin),
                     high=float(output.dtype.qmax)),
        RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
    ]
    return Requantization(tuple(steps), bias, BiasMode.FLOAT32,
                          multipliers + (inverse_output_scale,))


def k_block_starts(depth: int) -> tuple[int, ...]:
    """Start of each K block of oneDNN's AVX2 int8 GEMM (see the module docstring)."""
    if depth <= 256:
        block = depth
    elif depth < 2 * 384:
        block = (depth + 1) // 2
    else:
        block = 384
    return tuple(range(0, depth, max(block, 1)))


ONEDNN_BRGEMM_MATMUL = GemmNumerics(
    name="onednn brgemm",
    source="oneDNN brgemm matmul via ideep (AVX512-VNNI)",
    bias_mode=BiasMode.FLOAT32,
    pair_saturation_isas=frozenset(),
    allows_weight_zero_point=False,
    requantization=requantization,
    dynamic=ONEDNN_DYNAMIC,
    linear_min_rank=1,  # qlinear.cpp PackedLinearWeightsOnednn::apply_impl: a vector is one row
)

ONEDNN_GEMM_JIT_MATMUL = GemmNumerics(
    name="onednn gemm:jit",
    source="oneDNN int8 gemm:jit matmul via ideep (no VNNI)",
    bias_mode=BiasMode.FLOAT32,
    pair_saturation_isas=frozenset({AVX2}),
    allows_weight_zero_point=False,
    requantization=partial(requantization, combined_scales=True),
    pair_block_starts=k_block_starts,
    dynamic=ONEDNN_AVX2_DYNAMIC,
    linear_min_rank=1,
)


def _taps(geometry: ConvGeometry, dim: int, size: int) -> list[list[int]]:
    """Per output index along spatial ``dim``, the input indices its taps read there."""
    kernel, stride = geometry.kernel_size[dim], geometry.stride[dim]
    pad, dilation = geometry.padding[dim], geometry.dilation[dim]
    count = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    return [[o * stride - pad + t * dilation for t in range(kernel)] for o in range(max(count, 0))]


def _reads_input(taps: list[list[int]], size: int) -> list[bool]:
    return [any(0 <= tap < size for tap in row) for row in taps]


BRGEMM_NO_INPUT_COLUMN = (
    "no output column reads an input column (every tap along W falls in the padding) and W is "
    "dilated (a 1-wide kernel). PyTorch's oneDNN brgemm convolution (brg_conv_fwd, "
    "AVX512-VNNI/AMX) crashes the process with a segmentation fault on such shapes (measured on "
    "torch 2.13, whether H is padded or not): its result is undefined.")
BRGEMM_SKIPPED_INPUT = (
    "an output column's taps along W jump over the whole input (dilation wider than the input: "
    "all its taps fall in the padding on both sides) while another dim is padded too. PyTorch's "
    "oneDNN brgemm convolution (brg_conv_fwd, AVX512-VNNI/AMX) gives such columns bytes from "
    "uninitialized memory in many of these shapes (measured on torch 2.13: wrong by up to 225 "
    "steps, changing from process to process), so its result is undefined.")
BRGEMM_DEPTHWISE_MULTIPLIER_DEPTH_1 = (
    "a 3-D depthwise convolution with a channel multiplier (one input channel, {out} output "
    "channels per group) on an input of depth 1 with depth padding, a kernel depth and width "
    "above 1: PyTorch's oneDNN brgemm "
    "convolution (AVX512-VNNI/AMX) reads padding it never wrote, and its outputs disagree with "
    "the convolution and change between runs (measured on torch 2.13), so the result is undefined.")

BRGEMM_DEPTHWISE_PADDED_ROW = (
    "a depthwise convolution (one input channel per group) where a whole output row (or depth "
    "slice) reads only padding, with a channel multiplier and a kernel taller than 1 there, or "
    "with a multiple of 16 groups and a kernel 1 tall there: PyTorch's oneDNN brgemm "
    "convolution (AVX512-VNNI/AMX) then gives wrong outputs on the other rows too (measured on "
    "torch 2.13: 16 groups, a 1x3 kernel and H padding 1 give one value for every row whatever "
    "the input; with a multiplier, bytes that change between runs), so the result is undefined.")
BRGEMM_DEPTHWISE_MULTIPLIER_ONE_COLUMN = (
    "a 2-D depthwise convolution with a channel multiplier ({out} output channels per group) "
    "whose output is one column wide and several rows tall, with a W stride larger than the H "
    "stride: PyTorch's oneDNN brgemm convolution (AVX512-VNNI/AMX) gives outputs that disagree "
    "with the convolution by up to 250 steps, and some change between runs (measured on torch "
    "2.13: 69 of 76 such cases), so the result is undefined.")
BRGEMM_ONE_CHANNEL_DEPTH_1 = (
    "a 3-D convolution of one input channel on an input of depth 1 with a kernel depth above 3 "
    "(depth padding 2 or more): PyTorch's oneDNN brgemm convolution (AVX512-VNNI/AMX) reads "
    "padding it never wrote, and its outputs disagree with the convolution and change between "
    "runs (measured on torch 2.13), so the result is undefined.")


def brgemm_undefined_input(geometry: ConvGeometry, spatial: tuple[int, ...]) -> str:
    """Input shapes on which PyTorch's oneDNN brgemm convolution has no defined result (measured
    on AVX512-VNNI and AMX; the AVX2 jit kernels compute them): along W, no output column reads
    the input with W dilated (1-wide kernel: 42 of 48 such shapes crashed, H padded or not), or a
    column jumps over all of it while an outer dim is padded (W padding alone is exact); on an
    input of depth 1 with depth padding and kernel depth and width > 1, a 3-D depthwise
    multiplier (2-D and multiplier 1 are exact) or a single input channel with kernel depth 5
    (depth 3 is exact; measured on cubic kernels, 128 cases, torch 2.13); a depthwise conv with
    an output row (or depth slice) that reads only padding (2-D, 3 runs of 480 cases: 14-19 of
    the 96 such multiplier cases nondeterministic each run, one wrong by 174 steps yet
    repeatable in its process; with multiplier 1, kernel 1 tall there and G % 16 == 0 wrong on
    most elements, 90 of 90 cases; other depthwise and non-depthwise cases exact, 470 cases), or
    a depthwise multiplier whose output is one column wide and several rows tall with a W stride
    above the H stride (69 of 76 such 2-D cases wrong or nondeterministic; equal strides,
    multiplier 1, wider outputs and one row, as every Conv1d, exact: 1,084 cases and the
    recording's 18)."""
    columns = _taps(geometry, -1, spatial[-1])
    reads = _reads_input(columns, spatial[-1])
    outer_padding = any(geometry.padding[:-1])
    if outer_padding and any(not read and taps[0] < 0 and taps[-1] >= spatial[-1]
                             for read, taps in zip(reads, columns)):
        return BRGEMM_SKIPPED_INPUT
    if columns and not any(reads) and geometry.kernel_size[-1] == 1 and geometry.dilation[-1] > 1:
        return BRGEMM_NO_INPUT_COLUMN
    out_per_group = geometry.out_channels // geometry.groups
    kernel = geometry.kernel_size
    depthwise = geometry.groups > 1 and geometry.in_channels == geometry.groups
    multiplier = depthwise and out_per_group > 1
    rows = len(_taps(geometry, -2, spatial[-2]))
    if (multiplier and geometry.spatial_dims == 2 and len(columns) == 1 and rows > 1
            and geometry.stride[-1] > geometry.stride[-2]):
        return BRGEMM_DEPTHWISE_MULTIPLIER_ONE_COLUMN.format(out=out_per_group)
    padded_rows = [dim for dim in range(geometry.spatial_dims - 1)
                   if not all(_reads_input(_taps(geometry, dim, spatial[dim]), spatial[dim]))]
    # measured: a multiplier with a kernel taller than 1 there (any G), or full 16-channel blocks
    # (G % 16 == 0) with a kernel 1 tall there; other depthwise cases with such rows are exact
    if depthwise and any((multiplier and kernel[dim] > 1) or
                         (geometry.groups % 16 == 0 and kernel[dim] == 1) for dim in padded_rows):
        return BRGEMM_DEPTHWISE_PADDED_ROW
    if (geometry.spatial_dims == 3 and geometry.in_channels == geometry.groups
            and spatial[0] == 1 and geometry.padding[0] > 0 and kernel[0] > 1 and kernel[-1] > 1):
        if geometry.groups > 1 and out_per_group > 1:
            return BRGEMM_DEPTHWISE_MULTIPLIER_DEPTH_1.format(out=out_per_group)
        if geometry.groups == 1 and (kernel[0] > 3 or geometry.padding[0] > 1):
            return BRGEMM_ONE_CHANNEL_DEPTH_1
    return ""


ONEDNN_CONV_VNNI = ConvKernel(
    "onednn conv", "oneDNN brg_conv_fwd int8 convolution via ideep (AVX512-VNNI or AMX; exact "
    "accumulator)",
    GemmNumerics("onednn conv", "oneDNN int8 convolution post-ops", BiasMode.FLOAT32, frozenset(),
                 False, partial(requantization, direct_weight_scale=True)),
    frozenset(), undefined_input=brgemm_undefined_input)

ONEDNN_CONV_AVX2 = ConvKernel(
    "onednn jit_uni_int8:avx2", "oneDNN src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp via ideep",
    GemmNumerics("onednn jit_uni_int8:avx2", "oneDNN int8 convolution post-ops (AVX2)",
                 BiasMode.FLOAT32, frozenset(), False,
                 partial(requantization, combined_scales=True, direct_weight_scale=True)),
    frozenset({AVX2}), pairs_per_tap=True, padded_tap=PAD_ZERO)

ONEDNN_DEPTHWISE_AVX2 = replace(ONEDNN_CONV_AVX2, name="onednn jit_uni_int8:avx2 depthwise",
                                source="oneDNN src/cpu/x64/jit_uni_x8s8s32x_dw_conv_kernel.cpp",
                                pair_saturation_isas=frozenset())


ONEDNN_REF_AVX2 = replace(
    ONEDNN_CONV_AVX2, name="onednn ref:any", source="oneDNN src/cpu/ref_convolution_int8.cpp",
    numerics=GemmNumerics("onednn ref:any", "oneDNN ref_convolution_int8 post-ops",
                          BiasMode.FLOAT32, frozenset(), False,
                          partial(requantization, direct_weight_scale=True,
                                  divide_output_scale=True)),
    pair_saturation_isas=frozenset())
"""``ref:any`` (ref_convolution_int8.cpp) applies the two scales one by one,
``f32(f32(acc * s_in) * s_w)``, and divides by the output scale: two hypothesis cases where the
jit kernel's combined factor and reciprocal multiply each miss one element by one step."""


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """ONEDNN_VERBOSE: ``jit_uni_int8:avx2`` without VNNI. Its u8 x s8 products go through
    ``vpmaddubsw`` pairing the input channels of one tap (weights blocked ``...8a4b``; padded taps
    are skipped, raw 0), except one channel per group (depthwise), which is exact (measured).
    A grouped convolution whose channels per group (in or out) are not multiples of 4 has no
    jit kernel (src/cpu/x64/jit_uni_x8s8s32x_conv_kernel.cpp ``init_conf``: "bad blocking
    parameters"), nor has a 3-D depthwise one: oneDNN runs ``ref:any``, exact."""
    if isa == AVX512_VNNI:
        return ONEDNN_CONV_VNNI
    in_per_group = geometry.in_channels // geometry.groups
    out_per_group = geometry.out_channels // geometry.groups
    if geometry.groups > 1 and in_per_group == out_per_group == 1:
        return ONEDNN_REF_AVX2 if geometry.spatial_dims == 3 else ONEDNN_DEPTHWISE_AVX2
    if geometry.groups > 1 and (in_per_group % 4 or out_per_group % 4):
        return ONEDNN_REF_AVX2
    return ONEDNN_CONV_AVX2


ONEDNN_DECONV_VNNI = replace(ONEDNN_CONV_VNNI, name="onednn deconvolution",
                             source="oneDNN jit_deconvolution (AVX512-VNNI) via ideep",
                             per_channel_weights=False, output_padding=False,
                             weight_buffer_reread=True, unreached_outputs_undefined=True,
                             undefined_input=None)
"""On VNNI as on AVX2, outputs no tap reaches are left to stale memory when ``z_x != 0``
(measured: recorded bytes differ between runs and machines on a stride (4, 5) depthwise case)."""
ONEDNN_DECONV_AVX2 = replace(ONEDNN_CONV_AVX2, name="onednn jit_uni_int8 deconvolution:avx2",
                             source="oneDNN src/cpu/x64/jit_uni_x8s8s32x_deconvolution.cpp",
                             per_channel_weights=False, output_padding=False,
                             weight_buffer_reread=True, unreached_outputs_undefined=True)


def conv_transpose_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """oneDNN deconvolution through ideep (PyTorch refuses per-channel weights and output
    padding). PyTorch's prepack (qconv_prepack.cpp ``PackedConvWeightsOnednn``, transpose branch:
    the ``[i, o, ...]`` dims are permuted, the buffer is not) makes the kernel reread the weight
    when ``C/G != OC/G`` (``weight_buffer_reread``; measured on AVX2, assumed on VNNI). On AVX2 the
    jit deconvolution pairs the input channels of one contributing tap in ``vpmaddubsw``; taps no
    input reaches are skipped (raw 0); outputs no tap reaches are nondeterministic when
    ``z_x != 0``. Measured on AVX2 with random and saturating cases: exact otherwise."""
    if isa == AVX512_VNNI:
        return ONEDNN_DECONV_VNNI
    return ONEDNN_DECONV_AVX2


@dataclass(frozen=True, eq=False)
class LeakyReLUFloat32(Step):
    """``v = v > 0 ? v : f32(v * alpha)``: oneDNN's eltwise ``relu`` with ``alpha`` (the jit
    injector's ``vmulps`` + blend, src/cpu/x64/injectors/jit_uni_eltwise_injector.cpp)."""

    alpha: float = 0.01
    formula = "v > 0 ? v : f32(v * {alpha})"

    def apply(self, value):
        value = np.asarray(value, dtype=np.float32)
        return np.where(value > 0, value, f32(value * np.float32(self.alpha)))


@dataclass(frozen=True, eq=False)
class TanhFloat32(Step):
    """``v = tanh(v)`` correctly rounded to float32: NOT oneDNN's jit tanh (its own polynomial,
    src/cpu/x64/injectors/jit_uni_eltwise_injector.cpp ``tanh_compute_vector_fwd``), so a
    layer using it is marked inexact (``onednn_tanh``)."""

    formula = "f32(tanh(double(v)))  (correctly rounded; oneDNN's polynomial differs)"

    def apply(self, value):
        return f32(np.tanh(np.asarray(value, dtype=np.float32).astype(np.float64)))


ONEDNN_TANH_INEXACT = (
    "Linear with a fused tanh (quantized::linear_tanh) on engine 'onednn': oneDNN applies tanh "
    "with its own jit polynomial (jit_uni_eltwise_injector.cpp tanh_compute_vector_fwd), which "
    "qexact does not reproduce; it computes a correctly rounded tanh instead (measured on "
    "AVX512-VNNI, torch 2.13: every quint8 output identical in 3,732 of 3,732 and the test "
    "sweep, but not guaranteed)")


def linear_eltwise(engine: Engine, steps: tuple[Step, ...], kind: str,
                   alpha: float = 0.0) -> tuple[tuple[Step, ...], str]:
    """quantized::linear_leaky_relu / linear_tanh (qlinear.cpp ``apply_leaky_relu``,
    ``apply_tanh``): an eltwise post-op on the float result after the bias, before the output
    scale (measured: leaky_relu 0 of 4,191 outputs differ with alphas 0.01..1.7). Returns the
    steps and the ``inexact`` text (tanh: only if allowed)."""
    at = next(i for i, step in enumerate(steps) if step.role == "output_clamp") - 2
    if kind == "leaky_relu":
        step, inexact = LeakyReLUFloat32(f"fused leaky_relu (negative_slope {alpha})",
                                         role="eltwise", alpha=float(alpha)), ""
    elif kind == "tanh":
        inexact = engine.inexact_kernel("onednn_tanh", ONEDNN_TANH_INEXACT)
        step = TanhFloat32("fused tanh (correctly rounded)", role="eltwise")
    else:
        raise UnsupportedError(f"Linear with a fused {kind!r} on engine {engine.name!r}: "
                               "supported: 'leaky_relu', 'tanh'")
    return steps[:at] + (step,) + steps[at:], inexact


ONEDNN_KERNELS = MappingProxyType({**ATEN_KERNELS, "linear_fp16": no_linear_fp16("ONEDNN"),
                                   "linear_eltwise": linear_eltwise})
"""ATen's table; fp16-weight Linear refused as PyTorch does (engines/dynamic_eager.py); the
fused eltwise post-ops of quantized::linear_leaky_relu / linear_tanh (oneDNN only in PyTorch)."""


def conv_add_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """Engine onednn's convolutions: ``conv_kernel``, whose epilogue also takes
    quantized::conv2d_add(_relu)'s residual (qconv.cpp ``apply_impl`` with ``has_accum``:
    oneDNN's "sum" post-op, ``fmaf(f32(q_r) - z_r, s_r, t)`` after the bias, before the ReLU and
    the output scale; measured on AVX512-VNNI: 0 of 22,388 outputs differ, fresh packs, 3x3
    convs, 1-16 channels, ReLU or not; AVX2 assumed). PyTorch's x86 engine has no conv2d_add
    ("Didn't find engine for operation"), so ``conv_kernel`` (which x86 shares) refuses it."""
    kernel = conv_kernel(geometry, isa)
    return replace(kernel, numerics=replace(
        kernel.numerics, requantization=partial(kernel.numerics.requantization,
                                                sum_post_op=True)))


def engine(isa: str) -> Engine:
    """oneDNN picks brgemm on VNNI CPUs and its int8 ``gemm:jit`` elsewhere (ONEDNN_VERBOSE)."""
    linear = ONEDNN_BRGEMM_MATMUL if isa == AVX512_VNNI else ONEDNN_GEMM_JIT_MATMUL
    return Engine("onednn", isa, linear=linear, conv=conv_add_kernel,
                  conv_transpose=conv_transpose_kernel, kernels=ONEDNN_KERNELS,
                  description="oneDNN kernels through ideep")
