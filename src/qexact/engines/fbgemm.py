"""FBGEMM (engine ``fbgemm``; also ``x86`` Linear): float bias, one float32 multiplier.

Epilogue (FBGEMM src/QuantUtilsAvx2.cc ``requantizeOutputProcessingAvx2``; pytorch
aten/src/ATen/native/quantized/cpu/qlinear.cpp ``PackedLinearWeight::apply_impl``):

    atws[n] = f32(f32(s_x) * f32(s_w[n]))            act_times_w_scale
    M[n]    = f32(atws[n] / f32(s_out))               float32 division
    a       = f32(acc)
    per-tensor bias:  a = fmaf(bias[n], f32(1.0 / double(atws)), a)   compiler-contracted FMA
    per-channel bias: a = f32(a + f32(bias[n] / atws[n]))             _mm256_div_ps, no FMA
    q = clamp(round_half_even(f32(a * M[n])) + z_out, relu ? z_out : 0, 255)

The accumulator is exact on AVX512-VNNI (``vpdpbusd``); elsewhere (``avx2``) the GEMM sums u8 x s8
pairs with int16 saturation (src/GenerateKernelU8S8S32ACC32.cc).
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import numpy as np

from ..requantize import AddFloat32, FusedMultiplyAdd, MultiplyFloat32, ToFloat32
from ..rounding import f32
from .aten_kernels import ATEN_KERNELS
from .base import (AVX2, AVX512_VNNI, BiasMode, ConvGeometry, ConvKernel, Engine, GemmNumerics,
                   LayerQuantization, Requantization, integer_output_steps)
from .dynamic_eager import FBGEMM_DYNAMIC, FP16_KERNELS


def requantization(layer: LayerQuantization) -> Requantization:
    weight = layer.weight_qparams
    output = layer.output_qparams
    act_times_w_scale = f32(f32(layer.input_scale) * f32(weight.scale))
    multiplier = f32(act_times_w_scale / f32(output.scale))
    steps = [ToFloat32("accumulator to float32")]
    bias = None
    if layer.bias is not None:
        bias = f32(layer.bias)
        if weight.is_per_channel:
            steps.append(AddFloat32("bias / (s_x*s_w), float32 division", role="bias",
                                    term=f32(bias / act_times_w_scale)))
        else:
            reciprocal = f32(1.0 / act_times_w_scale.astype(np.float64))
            steps.append(FusedMultiplyAdd("bias * 1/(s_x*s_w), fused multiply-add", role="bias",
                                          a=bias, b=reciprocal))
    steps.append(MultiplyFloat32("multiplier M = f32(s_x*s_w) / s_out", factor=multiplier))
    steps += integer_output_steps(output, layer.relu)
    return Requantization(tuple(steps), bias, BiasMode.FLOAT32, (multiplier,))


FBGEMM_GEMM = GemmNumerics(
    name="fbgemm",
    source="FBGEMM fbgemmPacked + requantizeOutputProcessingAvx2",
    bias_mode=BiasMode.FLOAT32,
    pair_saturation_isas=frozenset({AVX2}),
    allows_weight_zero_point=True,
    requantization=requantization,
    dynamic=FBGEMM_DYNAMIC,
)


def _all(values, wanted) -> bool:
    return all(value in wanted for value in values)


def is_depthwise(geometry: ConvGeometry) -> bool:
    """FBGEMM src/FbgemmConv.cc ``takeDepthWiseFastPath``: one input channel per group and one or
    two output channels per group (a channel multiplier of 2), G % 8 == 0, 2-D or 3-D, strides 1
    or 2, every kernel size 3, 5 or 7 with the last two equal (a 3-D temporal size may differ),
    dilation 1, "same" padding (K - 1) / 2 per dim. Measured on VNNI with saturating data: every
    one of these runs the depthwise kernel (K 3/5/7, multiplier 1/2, 2-D and 3-D)."""
    kernel = geometry.kernel_size
    return (geometry.groups == geometry.in_channels
            and geometry.out_channels in (geometry.groups, 2 * geometry.groups)
            and geometry.groups % 8 == 0 and geometry.spatial_dims >= 2
            and _all(geometry.stride, (1, 2)) and kernel[-1] == kernel[-2]
            and _all(kernel, (3, 5, 7)) and _all(geometry.dilation, (1,))
            and all(pad == (size - 1) // 2 for pad, size in zip(geometry.padding, kernel))
            and not geometry.transposed)


def groups_together(geometry: ConvGeometry, isa: str) -> int:
    """FBGEMM src/PackWeightMatrixForGConv.cc ``numOfGroupsTogether``: the groups one groupwise
    kernel call covers, ``max(W / (OC/G) / max(C/G, 4), 1)`` with W = 32 bytes (AVX2) or 64."""
    width = 64 if isa == AVX512_VNNI else 32
    per_group = geometry.in_channels // geometry.groups
    return max(width // (geometry.out_channels // geometry.groups) // max(per_group, 4), 1)


def is_groupwise(geometry: ConvGeometry, isa: str) -> bool:
    """FBGEMM src/Fbgemm.cc ``fbgemmOptimizedGConv`` (2-D and 3-D): C/G == OC/G in {2, 4, 8, 16},
    at least ``groups_together`` groups, every kernel size 3, padding 1, dilation 1, the last two
    strides both 1 or both 2 (a temporal stride is free). Even one group (C = OC = 8 or 16)."""
    per_group = geometry.in_channels // geometry.groups
    spatial = geometry.stride[-2:]
    return (geometry.spatial_dims in (2, 3)
            and per_group == geometry.out_channels // geometry.groups
            and per_group in (2, 4, 8, 16) and geometry.groups >= groups_together(geometry, isa)
            and _all(geometry.kernel_size, (3,)) and _all(geometry.padding, (1,))
            and _all(geometry.dilation, (1,)) and (_all(spatial, (1,)) or _all(spatial, (2,)))
            and not geometry.transposed)


GROUPWISE_REMAINDER = (
    "PyTorch's FBGEMM groupwise convolution (3x3(x3) kernel, padding 1, {per_group} channels "
    "per group) processes {together} groups per kernel call and overruns its buffers when the "
    "number of groups ({groups}) is not a multiple of {together}. Measured on torch 2.13: its "
    "outputs disagree with the convolution, change from run to run, and the process often "
    "aborts with heap corruption ('double free or corruption'). Its result is undefined, so "
    "qexact does not compute one. "
    "Use a number of groups that is a multiple of {together}, or the qnnpack engine.")
"""FBGEMM src/GroupwiseConv.cc: the kernel walks ``groups_together`` groups at a time; a last,
partial block reads and writes past the ends (measured: 2-D and 3-D, strides 1 and 2)."""


def is_pointwise(geometry: ConvGeometry) -> bool:
    """FBGEMM ``takePointWiseFastPath``: 1x1 kernel, stride 1, dilation 1, no padding."""
    return (_all(geometry.kernel_size, (1,)) and _all(geometry.stride, (1,))
            and _all(geometry.dilation, (1,)) and _all(geometry.padding, (0,)))


# Every FBGEMM conv kernel pairs a group's im2col row (taps, channel fastest) from its start, on
# raw values with padded taps holding z_x (measured on AVX2: im2col, pointwise, groupwise and
# depthwise alike, for C/G even and odd). The depthwise kernel is generated for AVX2 only
# (src/GenerateI8Depthwise.cc: vpmaddubsw even on VNNI CPUs); the others use vpdpbusd with VNNI.
FBGEMM_CONV_KERNELS = {
    "depthwise": ConvKernel("fbgemm depthwise", "FBGEMM src/FbgemmI8DepthwiseAvx2.cc, "
                            "GenerateI8Depthwise.cc", FBGEMM_GEMM, frozenset({AVX2, AVX512_VNNI})),
    "groupwise": ConvKernel("fbgemm groupwise", "FBGEMM src/GroupwiseConv.cc", FBGEMM_GEMM,
                            frozenset({AVX2})),
    "pointwise": ConvKernel("fbgemm pointwise", "FBGEMM src/FbgemmConv.cc (fbgemmPacked, "
                            "PackAWithRowOffset)", FBGEMM_GEMM, frozenset({AVX2})),
    "im2col": ConvKernel("fbgemm im2col", "FBGEMM src/FbgemmConv.cc (fbgemmPacked, "
                         "PackAWithIm2Col)", FBGEMM_GEMM, frozenset({AVX2})),
}


DEPTHWISE_3D_SMALL_INPUT = (
    "PyTorch's FBGEMM 3-D depthwise convolution (kernel {kernel}, stride {stride}, padding "
    "{padding}) runs past its buffers when an input size is at most (padding - 1) x stride in "
    "some dim: measured on torch 2.13 (AVX512-VNNI), the process dies with a "
    "segmentation fault or heap corruption ('double free or corruption'), or raises. Its result "
    "is undefined.")
DEPTHWISE_3D_ROW_SUM = (
    "FBGEMM's 3-D depthwise kernel with an asymmetric weight (zero point != 0) and a {taps}-tap "
    "window: PyTorch's outputs differ from the convolution's on most elements once a window's "
    "activations (padding counted as the input zero point) sum past 32767 (measured on torch "
    "2.13: 7x7x7 windows on 80 % of elements, 3x7x7 on 3 %; <= 128 taps always exact), which "
    "points at a 16-bit sum of the activations for the zero-point correction. qexact does not "
    "reproduce that sum yet, so it does not compute this layer. Use symmetric weights "
    "(zero point 0), a window of at most 128 taps, or the qnnpack engine.")


def depthwise_3d_undefined_input(geometry: ConvGeometry, spatial: tuple[int, ...]) -> str:
    """FBGEMM src/FbgemmI8Depthwise3DAvx2.cc on small inputs: a size at most
    ``(padding - 1) * stride`` in some dim corrupts PyTorch's heap (measured with K 3/5/7 per dim,
    strides 1 and 2, 1296 cases: every crash had such a size, most often in depth or height;
    heap corruption need not crash, so every such size is refused)."""
    for dim in range(3):
        if spatial[dim] <= (geometry.padding[dim] - 1) * geometry.stride[dim]:
            return DEPTHWISE_3D_SMALL_INPUT.format(kernel=geometry.kernel_size,
                                                   stride=geometry.stride,
                                                   padding=geometry.padding)
    return ""


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """FBGEMM src/FbgemmConv.cc ``ConvFastPath``: depthwise, groupwise, pointwise, else im2col."""
    if is_depthwise(geometry):
        if geometry.spatial_dims == 3:
            taps = int(np.prod(geometry.kernel_size))
            return replace(FBGEMM_CONV_KERNELS["depthwise"],
                           undefined_input=depthwise_3d_undefined_input,
                           not_reproduced="" if geometry.symmetric_weights or taps <= 128 else
                           DEPTHWISE_3D_ROW_SUM.format(taps=taps))
        return FBGEMM_CONV_KERNELS["depthwise"]
    if is_groupwise(geometry, isa):
        together = groups_together(geometry, isa)
        if geometry.groups % together:
            reason = GROUPWISE_REMAINDER.format(per_group=geometry.in_channels // geometry.groups,
                                                together=together, groups=geometry.groups)
            return replace(FBGEMM_CONV_KERNELS["groupwise"], undefined_output=reason)
        return FBGEMM_CONV_KERNELS["groupwise"]
    if is_pointwise(geometry):
        return FBGEMM_CONV_KERNELS["pointwise"]
    return FBGEMM_CONV_KERNELS["im2col"]


FBGEMM_CONV_TRANSPOSE = ConvKernel(
    "fbgemm im2col transposed", "FBGEMM src/PackAWithIm2Col.cc (conv_p.transposed), fbgemmPacked",
    FBGEMM_GEMM, frozenset({AVX2}), per_channel_weights=False)
"""FBGEMM runs every transposed convolution through the transposed im2col (no fast path takes
``transposed``): a row per output position, taps in the weight's order with the channel fastest,
``x[(o + pad - t*dil) / stride]`` where that divides and falls inside, else ``z_x``; raw u8 x s8
pairs from the row's start in int16 on AVX2 (measured)."""


def takes_direct_conv_path(geometry: ConvGeometry) -> bool:
    """FBGEMM src/FbgemmConv.cc ``takeDirectConvPath`` (the UNet upsampler's shape): a 2-D
    transposed convolution, one group, C and OC multiples of 8, kernel height 2 and width <= 6,
    strides 1 or 2, dilation 1, padding 0 (measured boundary on torch 2.13)."""
    return (geometry.transposed and geometry.spatial_dims == 2 and geometry.groups == 1
            and geometry.in_channels % 8 == 0 and geometry.out_channels % 8 == 0
            and geometry.kernel_size[0] == 2 and geometry.kernel_size[1] <= 6
            and _all(geometry.stride, (1, 2)) and _all(geometry.dilation, (1,))
            and _all(geometry.padding, (0,)))


DIRECT_CONV_TRANSPOSE = (
    "PyTorch's FBGEMM runs this transposed convolution (one group, channels multiples of 8, "
    "kernel 2 x (1..6), stride 1 or 2, no padding) through its direct-convolution path, which on "
    "torch 2.13 reads stale memory: the same call gives different bytes from run to run, most "
    "outputs are far (100+ steps) from the convolution of the weight, and module.weight() "
    "unpacks a different weight on every call. Its result is undefined, so qexact does not "
    "compute one. Use the qnnpack or onednn engine, padding or a kernel height other than 2.")
"""Measured (8..24 channels, kernels 2x1..2x6, strides 1/2 mixed, output_padding 0/1): every
configuration on the path is wrong and nondeterministic; every one just off it is exact."""


def conv_transpose_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    if takes_direct_conv_path(geometry):
        return replace(FBGEMM_CONV_TRANSPOSE, undefined_output=DIRECT_CONV_TRANSPOSE)
    return FBGEMM_CONV_TRANSPOSE


KERNELS = MappingProxyType({**ATEN_KERNELS, **FP16_KERNELS})
"""ATen's table, with FBGEMM's fp16-weight GEMM (``linear_fp16``; engines/dynamic_eager.py)."""


def engine(isa: str) -> Engine:
    return Engine("fbgemm", isa, linear=FBGEMM_GEMM, conv=conv_kernel,
                  conv_transpose=conv_transpose_kernel, kernels=KERNELS,
                  description="FBGEMM kernels (server x86 CPUs)")
