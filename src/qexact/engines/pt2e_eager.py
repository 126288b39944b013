"""Eager PT2E (engine ``pt2e_eager``): a ``convert_pt2e`` model run by PyTorch as it is, the
``quantized_decomposed`` quantize/dequantize ops around float32 ATen ops.

The quantize and dequantize ops are exact (``engines.pt2e``). The float op between them is not
reproduced: ``aten.linear`` runs MKL's sgemm and ``aten.conv2d`` oneDNN's float convolution,
whose summation order is blocked and depends on the ISA and the thread count
(pt2e-semantics.md section 1: 10-25 % of their float32 outputs differ from any NumPy order).
qexact computes the exact real value of ``dq(x) * dq(w)`` summed, rounded once to float32, plus
the float32 bias, then PT2E's quantize: the output codes differ from PyTorch's only where its
float sum lands within its rounding error of a rounding boundary (measured: about 1e-4 of codes).

The other ops between dequantize and quantize (binary, clamp, pools, mean, cat, upsample) are in
engines/pt2e_decomposed.py, shared with engine ``inductor``: ATen's float32 add, mul, relu,
clamp, max_pool, avg_pool2d, cat and nearest upsampling round once per output (or are sequential
in an order qexact follows) and are exact; the float32 mean (SumKernel.cpp's cascade order) and
bilinear upsampling state what is not (``inexact`` on their descriptions).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..requantize import (AddInt, ClampInt, MultiplyFloat32, RoundHalfEvenToInt64,
                          ScaleToFloat32)
from ..rounding import f32
from . import pt2e, pt2e_decomposed
from .base import (BiasMode, ConvGeometry, ConvKernel, Engine, GemmNumerics, LayerQuantization,
                   Requantization)

INEXACT = ("the float32 GEMM or convolution between dequantize and quantize (MKL sgemm, oneDNN "
           "f32): its summation order is not reproduced; qexact rounds the exact sum once")


def requantization(layer: LayerQuantization) -> Requantization:
    weight = layer.weight_qparams
    output = layer.output_qparams
    scale = np.float64(f32(layer.input_scale)) * f32(weight.scale).astype(np.float64)
    steps = [ScaleToFloat32("the exact sum of dq(x) * dq(w), rounded once to float32",
                            factor=scale)]
    epilogue, bias = pt2e.float_epilogue(layer, post_ops=False)
    steps += epilogue
    multipliers = (scale,)
    if output is not None:
        inverse = f32(1.0 / output.scale)
        steps += [MultiplyFloat32("quantize: x * f32(1.0 / s)", factor=inverse),
                  RoundHalfEvenToInt64("round half to even", role="round"),
                  AddInt("zero point, after rounding", term=int(output.zero_point)),
                  ClampInt("clamp to [qmin, qmax]", role="output_clamp", low=output.dtype.qmin,
                           high=output.dtype.qmax)]
        multipliers += (inverse,)
    return Requantization(tuple(steps), bias, BiasMode.FLOAT32, multipliers)


FLOAT_GEMM = GemmNumerics(
    name="aten float32 linear/conv between dequantize and quantize",
    source="pytorch torch/ao/quantization/fx/_decomposed.py; aten.linear (MKL), aten.conv2d (oneDNN)",
    bias_mode=BiasMode.FLOAT32,
    pair_saturation_isas=frozenset(),
    allows_weight_zero_point=True,
    requantization=requantization,
    inexact=INEXACT,
)

FLOAT_CONV = ConvKernel("aten float32 convolution", FLOAT_GEMM.source, FLOAT_GEMM, frozenset())


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    return FLOAT_CONV


def engine(isa: str) -> Engine:
    return Engine("pt2e_eager", isa, linear=FLOAT_GEMM, conv=conv_kernel, flow="pt2e",
                  activation_dtypes=(QUINT8, QINT8), float_output=True,
                  kernels=MappingProxyType({**pt2e.KERNELS, **pt2e_decomposed.KERNELS}),
                  inexact=INEXACT,
                  inexact_kernels=MappingProxyType(pt2e_decomposed.INEXACT_KERNELS),
                  description="a convert_pt2e model run eagerly (quantized_decomposed q/dq "
                              "around float ATen ops)")
