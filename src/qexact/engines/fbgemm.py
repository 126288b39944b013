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

import numpy as np

from ..requantize import AddFloat32, FusedMultiplyAdd, MultiplyFloat32, ToFloat32
from ..rounding import f32
from .base import (AVX2, BiasMode, Engine, GemmNumerics, LayerQuantization, Requantization,
                   integer_output_steps)


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
)


def engine(isa: str) -> Engine:
    return Engine("fbgemm", isa, linear=FBGEMM_GEMM,
                  description="FBGEMM kernels (server x86 CPUs)")
