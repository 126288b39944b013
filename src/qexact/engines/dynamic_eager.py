"""Dynamically quantized Linear on PyTorch's eager engines (``quantized::linear_dynamic`` and
``linear_relu_dynamic``; ``ao.nn.quantized.dynamic.Linear``, whose ``forward`` passes
``reduce_range=True``): one scale and zero point for the WHOLE input tensor.

pytorch aten/src/ATen/native/quantized/cpu/qlinear_dynamic.cpp: every engine takes the input's
min and max (fbgemm/x86/onednn ``fbgemm::FindMinMax``, qnnpack ``Tensor.min()/max()``) and
``quant_utils::ChooseQuantizationParams`` (QuantUtils.h: double scale, see ``choose_qparams``)
over [0, 255], halved to [0, 127] by ``reduce_range`` (qnnpack ignores the flag). Then:

    fbgemm/x86  PackAWithQuantRowOffset: q = clamp(cvtps2dq(fmaf(x, f32(1/f32(s)), zp)), 0, 255)
                ReQuantizeForFloat:      y = fmaf(f32(acc), f32(f32(s) * f32(s_w[n])), b[n])
    qnnpack     quantize_per_tensor (the same fused quantize);
                qnnpackLinearDynamic:   y = f32(f32(f32(acc) * f32(f32(s_w[n]) * f32(s))) + b[n])
    onednn      reorder with r = f32(1.0 / s):  q = clamp(rne(f32(f32(x * r) + zp)), 0, 255)
                matmul post-ops:         y = f32(f32(f32(f32(acc) * si) * sw[n]) + b[n])
                si = f32(1.0 / double(r)), sw = ideep's reciprocal round trip (engines/onednn.py)

ReLU (``linear_relu_dynamic``): ``max(y, 0)`` after the bias on every engine (fused on
fbgemm/onednn, ``output.relu_()`` on qnnpack).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ..dtypes import QUINT8
from ..errors import UnsupportedError
from ..requantize import (AddFloat32, ClampFloat32, MultiplyFloat32, MultiplyOperandFloat32,
                          Step, ToFloat32)
from ..rounding import f32, fma_float32
from .base import BiasMode, DynamicQuantization, Requantization, RowQuantization

SMALL_SCALE_THRESHOLD = np.float32(6.1e-5)
"""pytorch QuantUtils.h: scales below the fp16 minimum normal are raised to it."""

def choose_qparams(x_min: float, x_max: float, qmin: int = 0, qmax: int = 255,
                   reduce_range: bool = False) -> tuple[float, int]:
    """ATen's ``quant_utils::ChooseQuantizationParams`` (no preserve_sparsity, no power of two)
    as C++ computes it: ``(scale, zero_point)``, the scale a double.

        reduce_range: qmin, qmax = qmin / 2, qmax / 2                       (C integer division)
        min = min(x_min, 0f), max = max(x_max, 0f)                          float32
        scale = (double(max) - min) / (qmax - qmin)                        double
        scale = 0.1 if f32(scale) == 0 or 1.0f / f32(scale) is inf
        scale < 6.1e-5f: org = f32(scale), scale = double(6.1e-5f) and
            min == 0: max = f32(6.1e-5f * (qmax - qmin));  max == 0: min = f32(-6.1e-5f * (...))
            else: a = f32(6.1e-5f / org), min = f32(min * a), max = f32(max * a)
        zp = qmin - min / scale if |qmin| - |min / scale| < |qmax| - |max / scale|
             else qmax - max / scale                                        (double)
        zp = clamp to [qmin, qmax], else nearbyint (half to even)
    """
    if reduce_range:
        qmin, qmax = int(qmin / 2), int(qmax / 2)
    low = min(np.float32(x_min), np.float32(0))
    high = max(np.float32(x_max), np.float32(0))
    scale = (float(high) - float(low)) / (qmax - qmin)
    with np.errstate(over="ignore", divide="ignore"):
        scale32 = f32(scale)[()]
        if scale32 == 0 or np.isinf(np.float32(1) / scale32):
            scale = 0.1
    if scale < float(SMALL_SCALE_THRESHOLD):
        original = f32(scale)[()]
        scale = float(SMALL_SCALE_THRESHOLD)
        span = np.float32(qmax - qmin)
        if low == 0:
            high = f32(SMALL_SCALE_THRESHOLD * span)[()]
        elif high == 0:
            low = f32(-SMALL_SCALE_THRESHOLD * span)[()]
        else:
            amplifier = f32(SMALL_SCALE_THRESHOLD / original)[()]
            low, high = f32(low * amplifier)[()], f32(high * amplifier)[()]
    from_min = qmin - float(low) / scale
    from_max = qmax - float(high) / scale
    error_min = abs(qmin) - abs(float(low) / scale)
    error_max = abs(qmax) - abs(float(high) / scale)
    initial = from_min if error_min < error_max else from_max
    if initial < qmin:
        zero_point = qmin
    elif initial > qmax:
        zero_point = qmax
    else:
        zero_point = int(np.rint(initial))
    return scale, zero_point


@dataclass(frozen=True, eq=False)
class ScaledMultiplyAddFloat32(Step):
    """``v = fmaf(v, f32(s * factor), term)`` (``fused``) or ``f32(f32(v * f32(s * factor)) +
    term)``: the input scale ``s`` (``operand``, bound per call, role ``"input_scale"``) times
    the weight scale, applied to the accumulator with the float bias (``term``)."""

    factor: np.ndarray = field(default_factory=lambda: np.ones(1, np.float32))
    term: np.ndarray = field(default_factory=lambda: np.zeros(1, np.float32))
    fused: bool = True
    operand: np.ndarray | None = None

    @property
    def formula(self):
        return ("fmaf(v, f32({operand} * {factor}), {term})" if self.fused else
                "f32(f32(v * f32({operand} * {factor})) + {term})")

    def apply(self, value):
        if self.operand is None:
            raise ValueError(f"step {self.label!r} has no input scale bound (bind_operand)")
        multiplier = f32(np.asarray(self.operand, np.float32) * self.factor)
        if self.fused:
            return fma_float32(value, multiplier, self.term)
        return f32(f32(value * multiplier) + self.term)

    def constants(self):
        return {"factor": self.factor, "term": self.term}

    def shown(self):
        return {"operand": self.operand, **self.constants()}


def tensor_minmax(rows: np.ndarray) -> tuple[np.float32, np.float32]:
    """The whole input's min and max (``fbgemm::FindMinMax``; ``Tensor.min()/max()``; an empty
    input gives 0, 0 as qnnpack states)."""
    if rows.size == 0:
        return np.float32(0), np.float32(0)
    return np.float32(rows.min()), np.float32(rows.max())


def _broadcast_rows(rows: np.ndarray, multiplier, zero_point: int, scale) -> RowQuantization:
    count = rows.shape[0]
    return RowQuantization(np.full(count, multiplier, np.float32),
                           np.full(count, zero_point, np.int64),
                           np.full(count, scale, np.float32))


def aten_parameters(rows: np.ndarray, reduce_range: bool) -> RowQuantization:
    """fbgemm/x86/qnnpack: ``s = f32(scale)`` (PackAWithQuantRowOffset and ReQuantizeForFloat
    take a float; ``quantize_per_tensor`` and QNNPACK use ``f32(scale)``), the quantize
    multiplier ``f32(1.0f / s)``."""
    scale, zero_point = choose_qparams(*tensor_minmax(rows), 0, 255, reduce_range)
    scale32 = f32(scale)[()]
    return _broadcast_rows(rows, f32(np.float32(1) / scale32)[()], zero_point, scale32)


def fused_quantize(rows: np.ndarray, p: RowQuantization) -> np.ndarray:
    """FBGEMM ``QuantizeAvx2`` as PyTorch 2.13's binary runs it (engines/aten_quantize.py):
    ``clamp(cvtps2dq(min(fmaf(x, inv, f32(zp)), 2147483520)), 0, 255)``, zp before rounding."""
    with np.errstate(invalid="ignore", over="ignore"):
        value = fma_float32(rows, p.multiplier[:, None], f32(p.zero_point)[:, None])
        value = np.minimum(value, np.float32(2147483520.0))
        rounded = np.rint(value.astype(np.float64))
    return np.clip(rounded, 0, 255).astype(np.int64)


def _relu(steps: list[Step], relu: bool) -> list[Step]:
    if relu:
        steps.append(ClampFloat32("ReLU: max(y, 0)", role="relu", low=0.0))
    return steps


def _float_bias(bias, weight_scale) -> np.ndarray:
    if bias is not None:
        return f32(bias)
    return np.zeros_like(np.atleast_1d(weight_scale), dtype=np.float32)


def fbgemm_requantization(weight_qparams, bias, relu: bool) -> Requantization:
    """FBGEMM ``ReQuantizeForFloat`` (src/QuantUtilsAvx2.cc ``requantizeForFloatAvx2``):
    ``y = fmaf(f32(acc), f32(s * s_w[n]), b[n])`` (mul + add contracted to one FMA; no bias:
    ``f32(acc * f32(s * s_w))``), relu ``max(y, 0)``."""
    weight_scale = f32(weight_qparams.scale)
    term = _float_bias(bias, weight_scale)
    steps = [ToFloat32("accumulator to float32 (cvtdq2ps)"),
             ScaledMultiplyAddFloat32("times f32(s_x * s_w), plus the float bias (one FMA)",
                                      role="input_scale", factor=weight_scale, term=term,
                                      fused=True)]
    return Requantization(tuple(_relu(steps, relu)), None if bias is None else term,
                          BiasMode.FLOAT32, (weight_scale,))


def qnnpack_requantization(weight_qparams, bias, relu: bool) -> Requantization:
    """QNNPACK ``qnnpackLinearDynamic`` (q8gemm dq kernels): the dequantization scale
    ``f32(s_w[n] * s_x)`` (QnnpackUtils.h ``generate_requantization_scales`` with output scale
    1), ``y = f32(f32(f32(acc) * scale) + b[n])``, no FMA; the bias is 0 when the module has
    none (PyTorch's prepack stores zeros). ReLU: ``output.relu_()`` afterwards."""
    weight_scale = f32(weight_qparams.scale)
    term = _float_bias(bias, weight_scale)
    steps = [ToFloat32("accumulator to float32"),
             ScaledMultiplyAddFloat32("times f32(s_w * s_x), then plus the bias (no FMA)",
                                      role="input_scale", factor=weight_scale, term=term,
                                      fused=False)]
    return Requantization(tuple(_relu(steps, relu)), None if bias is None else term,
                          BiasMode.FLOAT32, (weight_scale,))


def onednn_weight_scale(weight_qparams) -> np.ndarray:
    """ideep's weight scale after PyTorch's reciprocal and ideep's inversion (onednn.py)."""
    if weight_qparams.is_per_channel:
        reciprocal = f32(np.float32(1.0) / f32(weight_qparams.scale))
    else:
        reciprocal = f32(1.0 / weight_qparams.scale)
    return f32(1.0 / reciprocal.astype(np.float64))


def onednn_parameters(rows: np.ndarray, reduce_range: bool) -> RowQuantization:
    """oneDNN: PyTorch passes ``r = f32(1.0 / scale)`` (the double scale) as the source scale;
    the reorder multiplies by ``r``; ideep inverts it for the matmul, ``si = f32(1.0 / r)``."""
    scale, zero_point = choose_qparams(*tensor_minmax(rows), 0, 255, reduce_range)
    reciprocal = f32(1.0 / scale)[()]
    input_scale = f32(1.0 / float(reciprocal))[()]
    return _broadcast_rows(rows, reciprocal, zero_point, input_scale)


def onednn_quantize(rows: np.ndarray, p: RowQuantization) -> np.ndarray:
    """oneDNN's f32 -> u8 reorder: ``clamp(rne(f32(f32(x * r) + zp)), 0, 255)``."""
    with np.errstate(invalid="ignore", over="ignore"):
        value = f32(f32(rows * p.multiplier[:, None]) + f32(p.zero_point)[:, None])
        value = np.clip(value, np.float32(0), np.float32(255))
        rounded = np.rint(value.astype(np.float64))
    return rounded.astype(np.int64)


def onednn_requantization(weight_qparams, bias, relu: bool,
                          combined_scales: bool = False) -> Requantization:
    """oneDNN matmul post-ops (brgemm): ``f32(f32(f32(f32(acc) * si) * sw[n]) + b[n])``, ReLU
    after the bias; ``combined_scales`` (AVX2 ``gemm:jit``): ``f32(f32(acc) * f32(si * sw[n]))``
    then the bias."""
    weight_scale = onednn_weight_scale(weight_qparams)
    steps = [ToFloat32("accumulator to float32")]
    if combined_scales:
        steps.append(ScaledMultiplyAddFloat32(
            "times f32(si * sw), one factor", role="input_scale", factor=weight_scale,
            term=np.zeros_like(np.atleast_1d(weight_scale), dtype=np.float32), fused=False))
    else:
        steps += [MultiplyOperandFloat32("times the input scale si = f32(1 / r)",
                                         role="input_scale"),
                  MultiplyFloat32("times the weight scale (reciprocal round trip)",
                                  factor=weight_scale)]
    term = None
    if bias is not None:
        term = f32(bias)
        steps.append(AddFloat32("float bias", role="bias", term=term))
    return Requantization(tuple(_relu(steps, relu)), term, BiasMode.FLOAT32, (weight_scale,))


SOURCE = ("pytorch aten/src/ATen/native/quantized/cpu/qlinear_dynamic.cpp, QuantUtils.h; "
          "FBGEMM src/PackAWithQuantRowOffset.cc, src/QuantUtilsAvx2.cc")


def _fbgemm(reduce_range: bool) -> DynamicQuantization:
    return DynamicQuantization(
        "fbgemm PackAWithQuantRowOffset + ReQuantizeForFloat (per-tensor dynamic uint8)",
        SOURCE, QUINT8, lambda rows: aten_parameters(rows, reduce_range), fused_quantize,
        fbgemm_requantization, granularity="tensor", reduce_range=reduce_range,
        with_reduce_range=_fbgemm)


def _qnnpack(reduce_range: bool) -> DynamicQuantization:
    # qlinear_dynamic.cpp: "qnnpack incorrectly ignores reduce_range": always [0, 255]
    return DynamicQuantization(
        "qnnpack quantize_per_tensor + qnnpackLinearDynamic (per-tensor dynamic uint8; "
        "reduce_range ignored)", SOURCE + "; qnnpack src/q8gemm (dq)", QUINT8,
        lambda rows: aten_parameters(rows, False), fused_quantize, qnnpack_requantization,
        granularity="tensor", reduce_range=False, with_reduce_range=_qnnpack)


def _onednn(reduce_range: bool) -> DynamicQuantization:
    return DynamicQuantization(
        "onednn reorder + matmul (per-tensor dynamic uint8)",
        SOURCE + "; ideep matmul_forward (is_dynamic), oneDNN reorder", QUINT8,
        lambda rows: onednn_parameters(rows, reduce_range), onednn_quantize,
        onednn_requantization, granularity="tensor", reduce_range=reduce_range,
        with_reduce_range=_onednn)


def _onednn_avx2(reduce_range: bool) -> DynamicQuantization:
    return DynamicQuantization(
        "onednn reorder + gemm:jit matmul (per-tensor dynamic uint8, no VNNI)",
        SOURCE + "; ideep matmul_forward (is_dynamic), oneDNN reorder, gemm:jit", QUINT8,
        lambda rows: onednn_parameters(rows, reduce_range), onednn_quantize,
        partial(onednn_requantization, combined_scales=True), granularity="tensor",
        reduce_range=reduce_range, with_reduce_range=_onednn_avx2)


FBGEMM_DYNAMIC = _fbgemm(True)
QNNPACK_DYNAMIC = _qnnpack(True)
ONEDNN_DYNAMIC = _onednn(True)
ONEDNN_AVX2_DYNAMIC = _onednn_avx2(True)


# --- float16 weights: quantized::linear_dynamic_fp16 (FBGEMM's fp16 GEMM) ----------------------

FP16_MAX = 65504.0
"""pytorch QuantUtils.h ``HandleWeightsSaturation``: weights beyond +-65504 (the largest fp16)
are clamped to it before FBGEMM converts them (round to nearest even)."""

FP16_SOURCE = ("pytorch aten/src/ATen/native/quantized/cpu/qlinear_dynamic.cpp "
               "(PackedLinearWeightFp16::apply_dynamic_impl), qlinear_prepack.cpp, QuantUtils.h; "
               "FBGEMM include/fbgemm/FbgemmFPCommon.h (cblas_gemm_compute), "
               "include/fbgemm/FbgemmPackMatrixB.h, src/FbgemmFP16UKernelsAvx512.cc, "
               "FbgemmFP16UKernelsAvx2.cc")


@dataclass(frozen=True)
class Fp16GemmKernel:
    """FBGEMM's fp16-weight GEMM as PyTorch calls it (``cblas_gemm_compute`` with beta 0, then
    ``output.add_(bias)`` and ``output.relu_()``)::

        w16     = fp16(clamp(w, -65504, 65504))              prepack, round to nearest even
        K blocks of ``block_rows`` (512); output columns in panels of ``block_cols`` (32 with
        AVX512 zmm kernels, 16 with AVX2 ones); a kernel call runs, per K block,
            s = f32(x[m, k0] * w16[k0, n])          first block (beta 0)
            s = fmaf(x[m, k0], w16[k0, n], C)       later blocks (beta 1: beta * C = C)
            s = fmaf(x[m, k], w16[k, n], s)         every further k of the block, in order
        so a full panel's column is one FMA chain over k = 0 .. K-1. The columns past the last
        full panel (N % block_cols) are computed into a zeroed scratch tile and added:
            t = fmaf(x[m, k0], w16[k0, n], +0) ... (the block's own chain)
            C = t (first block), C = f32(C + t) (later blocks)
        y = f32(C + b[n])  (``output.add_``, after the GEMM);  relu: max(y, 0)
    """

    name: str
    source: str
    block_rows: int
    block_cols: int
    saturation: float = FP16_MAX
    unrolled_tiles: bool = False
    """Whether 1- and 2-row tiles run the unrolled kernels (FBGEMM's AVX2 ``gemmkernel_1x2`` /
    ``2x2``, fbgemm src/FbgemmFP16UKernelsAvx2.cc): after a K block's first k, while more than
    four remain, k goes in turn to ``acc, a1, a2, a3`` (1 row) or ``acc, b, acc, b`` (2 rows),
    each its own FMA chain from +0; the rest to ``acc``; then ``f32(f32(f32(acc + a1) + a2) +
    a3)`` or ``f32(acc + b)``. Measured (FBGEMM_ENABLE_INSTRUCTIONS=AVX2): 67,609 elements."""

    def row_tiles(self, rows: int) -> list[tuple[int, int, int]]:
        """``(start, stop, unrolled rows)`` per kernel tile that matters. PyTorch calls the GEMM
        as one task (``cblas_gemm_compute`` without a thread id: measured, 2 threads give 1
        thread's bits), which takes the rows in chunks of 120 (``mb_max``), each chunk in tiles
        (``partition_avx2``) whose only 1- or 2-row tile is its last (``unrolled`` 1 or 2);
        0: a plain FMA chain."""
        if not self.unrolled_tiles:
            return [(0, rows, 0)]
        tiles = []
        for chunk in range(0, rows, 120):
            stop = min(chunk + 120, rows)
            small = small_tile_rows(stop - chunk)
            tiles += [(chunk, stop - small, 0), (stop - small, stop, small)] if small else \
                [(chunk, stop, 0)]
        return [tile for tile in tiles if tile[0] < tile[1]]


def small_tile_rows(rows: int) -> int:
    """The rows of the last tile of FBGEMM's ``partition_avx2[rows]`` (fbgemm
    src/FbgemmFPCommon.cc; chunks of 1..120 rows) when it has 1 or 2 rows, else 0: chunks of 1,
    2, 7 (5 + 2) and 14 (6 + 6 + 2) rows, and from 31 rows up, 6-row tiles and a last 1-row tile
    (rows % 6 == 1) or 2-row tile (rows % 6 == 2)."""
    if rows in (1, 2):
        return rows
    if rows in (7, 14):
        return 2
    return rows % 6 if rows >= 31 and rows % 6 in (1, 2) else 0


def choose_linear_fp16(engine) -> Fp16GemmKernel:
    """The ``linear_fp16`` family on fbgemm and x86 (qlinear_prepack.cpp: ``FBGEMM || X86``).
    The panel width follows FBGEMM's own ISA (``fbgemmInstructionSet``): 32 columns where it
    runs zmm kernels (AVX512, qexact's ``avx512_vnni``), 16 on AVX2. qexact's ``avx2`` stands
    for every CPU without VNNI, and an AVX512 CPU without VNNI runs 32: such a CPU is not
    modelled for this family."""
    zmm = engine.isa == "avx512_vnni"
    return Fp16GemmKernel(
        "fbgemm fp16 gemm (" + ("avx512 kernels, 32-column panels" if zmm else
                               "avx2 kernels, 16-column panels, unrolled 1- and 2-row tiles") + ")",
        FP16_SOURCE, block_rows=512, block_cols=32 if zmm else 16, unrolled_tiles=not zmm)


def no_linear_fp16(engine_name: str):
    """PyTorch refuses fp16 weights on this engine (``quantized::linear_prepack_fp16 is
    currently not supported by QNNPACK/ONEDNN``, qlinear_prepack.cpp)."""
    def choose(engine):
        raise UnsupportedError(
            f"a Linear with float16 weights (quantize_dynamic dtype=torch.float16) does not run "
            f"on engine {engine.name!r}: PyTorch raises 'quantized::linear_prepack_fp16 is "
            f"currently not supported by {engine_name}'; it runs on fbgemm and x86")
    return choose


FP16_KERNELS = {"linear_fp16": choose_linear_fp16}
"""The eager engines' ``linear_fp16`` family (fbgemm, x86)."""
