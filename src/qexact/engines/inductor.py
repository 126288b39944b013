"""Inductor (engine ``inductor``): a PT2E model quantized with ``X86InductorQuantizer`` and
compiled by ``torch.compile`` with ``torch._inductor.config.freezing = True`` (the deployment
mode): Inductor calls oneDNN's quantized ops ``onednn.qconv_pointwise``/``qlinear_pointwise``
(and ``qconv2d_pointwise.binary`` for a residual add) with prepacked weights, and generates C++
for quantize, dequantize and the ops between.

Activations are quint8, weights qint8 per output channel, the bias stays float32. The int8
epilogue (pytorch aten/src/ATen/native/quantized/cpu/qlinear.cpp
``linear_int8_with_onednn_weight``; the convolution alike; pt2e-semantics.md section 3)::

    t = f32(f32(f32(acc) * f32(s_x)) * f32(s_w[c]))     two multiplies, not one combined scale
    t = f32(t + b[c]);  relu: t = max(t, 0)
    hardtanh/relu6 after a conv (post-op "hardtanh" [lo, hi]): t = min(max(t, f32(lo)), f32(hi))
    quint8 output (a quantize follows):  q = clamp(rne(f32(f32(t * f32(1.0f / s_out)) + z_out)))
    float32 output (none follows):       y = t

The other families (binary, clamp, max_pool, avg_pool, adaptive_avg_pool, mean, cat, upsample)
are Inductor's generated ``dequantize -> float32 op -> quantize`` loops: eager PT2E's kernels
where the arithmetic is the same (engines/pt2e_decomposed.py), and here where Inductor's loops
differ (``KERNELS``: bilinear lerps, the mean's sum order) or were not measured.

Unlike the legacy ``onednn`` engine, the scales reach oneDNN as they are (no reciprocal round
trips). Measured on AVX512-VNNI; on other ISAs oneDNN runs other int8 kernels whose pairing and
scale order were not measured for these ops, so qexact refuses them there.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import numpy as np

from ..dtypes import QUINT8
from ..errors import UnsupportedError
from ..requantize import (AddFloat32, ClampFloat32, MultiplyFloat32, RoundHalfEvenToInt32,
                          ToFloat32)
from ..rounding import f32
from . import pt2e, pt2e_decomposed
from .base import (AVX512_VNNI, BiasMode, ConvGeometry, ConvKernel, Engine, GemmNumerics,
                   LayerQuantization, Requantization)

SOURCE = ("pytorch aten/src/ATen/native/quantized/cpu/qlinear.cpp linear_int8_with_onednn_weight, "
          "qconv.cpp; torchao quantization/pt2e/inductor_passes/x86.py")


def requantization(layer: LayerQuantization) -> Requantization:
    weight = layer.weight_qparams
    output = layer.output_qparams
    input_scale = f32(layer.input_scale)
    weight_scale = f32(weight.scale)
    steps = [ToFloat32("accumulator to float32"),
             MultiplyFloat32("input scale", factor=input_scale),
             MultiplyFloat32("weight scale", factor=weight_scale)]
    epilogue, bias = pt2e.float_epilogue(layer, post_ops=True)
    steps += epilogue
    multipliers = (input_scale, weight_scale)
    if output is not None:
        inverse = f32(np.float32(1.0) / f32(output.scale))
        steps += [MultiplyFloat32("1 / output scale", factor=inverse),
                  AddFloat32("output zero point, before rounding", term=f32(output.zero_point)),
                  ClampFloat32("saturate to the output range", role="output_clamp",
                               low=float(output.dtype.qmin), high=float(output.dtype.qmax)),
                  RoundHalfEvenToInt32("round half to even", role="round")]
        multipliers += (inverse,)
    return Requantization(tuple(steps), bias, BiasMode.FLOAT32, multipliers)


def _not_qlinear(shape: tuple[int, ...], out_features: int) -> str:
    """Where Inductor runs no qlinear_pointwise for a PT2E Linear: torch/_inductor/
    decomposition.py decomposes addmm into its own float reduction on CPU for one row and at most
    16 input and output features; a 4-D input stays a float matmul (measured: 1,837 of 3,456
    outputs of a Linear over a permuted conv output differ from qlinear's arithmetic)."""
    rows = int(np.prod(shape[:-1]))
    if rows == 1 and shape[-1] <= 16 and out_features <= 16:
        return ("Inductor computes a Linear of one row with at most 16 input and output features "
                "as its own float32 reduction (torch/_inductor/decomposition.py addmm), not as "
                "oneDNN's qlinear; not modelled")
    if len(shape) > 3:
        return (f"Inductor runs a Linear over a {len(shape)}-D input as a float32 matmul, not "
                "as oneDNN's qlinear (which it uses for 2-D and 3-D inputs); not modelled")
    return ""


ONEDNN_QLINEAR = GemmNumerics(
    name="onednn qlinear_pointwise",
    source=SOURCE,
    bias_mode=BiasMode.FLOAT32,
    pair_saturation_isas=frozenset(),
    allows_weight_zero_point=False,
    requantization=requantization,
    not_run_for=_not_qlinear,
)

ONEDNN_QCONV = ConvKernel("onednn qconv_pointwise", SOURCE, ONEDNN_QLINEAR, frozenset())


# --- the generated loops between dequantize and quantize ---------------------------------------

GENERATED = f"{pt2e_decomposed.DECOMPOSED}; {pt2e_decomposed.INDUCTOR}"


def _generated(choose, note: str = ""):
    """Eager PT2E's kernel for a family whose arithmetic Inductor's loop shares, with the
    generated loop as its source."""
    def chosen(engine, *args):
        return replace(choose(engine, *args), source=GENERATED + note)
    return chosen


def choose_max_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    if ceil_mode and dtype != np.float32:
        raise UnsupportedError(
            "max_pool2d with ceil_mode=True between dequantize and quantize: torch.compile "
            "(torch 2.13, its quantized.max_pool2d lowering in torch/_inductor/fx_passes/"
            "quantization.py) computes it as if ceil_mode were False (measured), so the compiled "
            "model's output has another shape than the model's; qexact refuses rather than pick "
            "one")
    return _generated(pt2e_decomposed.choose_max_pool, "; quantized.max_pool2d on uint8")(
        engine, kernel_size, ceil_mode, dtype, values)


def choose_avg_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    if ceil_mode or np.prod(kernel_size) > 25:
        raise UnsupportedError(
            "avg_pool2d with ceil_mode or a window of more than 25 taps on engine 'inductor': "
            "Inductor then falls back to aten.avg_pool2d or another loop, not measured")
    return _generated(pt2e_decomposed.choose_avg_pool, "; torch/_inductor/lowering.py "
                      "_avg_poolnd")(engine, kernel_size, ceil_mode, dtype, values)


BILINEAR = pt2e_decomposed.DecomposedFloatKernel(
    "dequantize, float32 bilinear upsampling (generated lerps), quantize",
    pt2e_decomposed.INDUCTOR,
    "top = f32(v00 + f32(f32(v01 - v00) lx)), bottom likewise, "
    "y = f32(top + f32(f32(bottom - top) ly))", pt2e_decomposed.bilinear_inductor)


def choose_upsample(engine, mode: str, values: np.ndarray):
    if mode == "bilinear":
        return BILINEAR
    return _generated(pt2e_decomposed.choose_upsample)(engine, mode, values)


MEAN = pt2e_decomposed.MeanKernel(
    "dequantize, float32 mean (Inductor's loop), quantize",
    pt2e_decomposed.INDUCTOR + " cpp_fused_dequantize_per_tensor_mean_quantize_per_tensor",
    "inductor", summed_by=pt2e_decomposed.inductor_spatial_sum)


def choose_mean(engine, dim, reduced, out_shape, dtype, values: np.ndarray):
    """Inductor's measured form is the mean over the two spatial dims of a 4-D tensor."""
    if not (values.ndim == 4 and tuple(sorted(reduced)) == (2, 3)):
        raise UnsupportedError(f"mean over dims {list(reduced)} of a {values.ndim}-D tensor on "
                               "engine 'inductor': only the spatial mean of a 4-D tensor was "
                               "measured")
    return MEAN


def choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values: np.ndarray):
    pt2e_decomposed.choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values)
    return MEAN


KERNELS = {**{family: _generated(choose) for family, choose in pt2e_decomposed.KERNELS.items()},
           "max_pool": choose_max_pool, "avg_pool": choose_avg_pool,
           "upsample": choose_upsample, "mean": choose_mean,
           "adaptive_avg_pool": choose_adaptive_avg_pool}
"""Engine ``inductor``'s families between dequantize and quantize."""


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    return ONEDNN_QCONV


def engine(isa: str) -> Engine:
    if isa != AVX512_VNNI:
        raise UnsupportedError(
            f"engine 'inductor' on {isa!r}: oneDNN's int8 kernels without VNNI (their int16 pair "
            "sums and scale order for Inductor's qconv/qlinear ops) were not measured, so qexact "
            "does not claim them; use isa='avx512_vnni'")
    return Engine("inductor", isa, linear=ONEDNN_QLINEAR, conv=conv_kernel, flow="pt2e",
                  activation_dtypes=(QUINT8,), float_output=True,
                  kernels=MappingProxyType({**pt2e.KERNELS, **KERNELS}),
                  description="torch.compile (Inductor, freezing) of an X86InductorQuantizer "
                              "PT2E model: oneDNN qconv/qlinear and generated C++")
