"""What every PT2E flow shares: the ``quantized_decomposed`` quantize and dequantize ops.

PT2E models (torchao ``prepare_pt2e``/``convert_pt2e``) hold float ops between
``quantized_decomposed.quantize_per_tensor`` and ``dequantize_per_tensor``, written in Python in
pytorch torch/ao/quantization/fx/_decomposed.py (pt2e-semantics.md section 1)::

    quantize:    q = clamp(round_half_even(f32(x * f32(1.0 / s))) + z, qmin, qmax)    zp after rounding
    dequantize:  r = f32(f32(f32(q) - z) * f32(s))

``1.0 / s`` is a Python (double) division whose result becomes a float32 scalar; the observers'
scales are float32 values, so it equals ``1.0f / s``. Inductor's generated quantize and dequantize
kernels compute the same (``static_cast<float>`` of the double reciprocal, ``Vectorized::round``).
"""

from __future__ import annotations

from ..qparams import QParams
from ..requantize import (AddFloat32, AddInt, AddOperandFloat32, AddResidualFloat32,
                          ClampFloat32, ClampInt, MultiplyFloat32, RoundHalfEvenToInt64, Step,
                          ToFloat32)
from ..rounding import f32
from ..errors import UnsupportedError
from .aten_quantize import ConversionKernel

SOURCE = "pytorch torch/ao/quantization/fx/_decomposed.py (quantize_per_tensor, dequantize_per_tensor)"


def quantize_decomposed(engine, qparams: QParams, ndim: int) -> ConversionKernel:
    """``quantized_decomposed.quantize_per_tensor`` (the module docstring)."""
    if qparams.is_per_channel:
        raise UnsupportedError(f"engine {engine.name!r} quantizes activations per tensor only")
    inv = f32(1.0 / qparams.scale)
    return ConversionKernel("quantized_decomposed.quantize_per_tensor", SOURCE, (
        MultiplyFloat32("x * f32(1.0 / s)", factor=inv),
        RoundHalfEvenToInt64("round half to even (torch.round)", role="round"),
        AddInt("zero point, after rounding", term=int(qparams.zero_point)),
        ClampInt("clamp to [qmin, qmax]", role="output_clamp", low=qparams.dtype.qmin,
                 high=qparams.dtype.qmax)), inv)


def dequantize_decomposed(engine, qparams: QParams, ndim: int) -> ConversionKernel:
    """``quantized_decomposed.dequantize_per_tensor`` (the module docstring)."""
    if qparams.is_per_channel:
        raise UnsupportedError(f"engine {engine.name!r} dequantizes activations per tensor only")
    return ConversionKernel("quantized_decomposed.dequantize_per_tensor", SOURCE, (
        ToFloat32("q to float32"),
        AddFloat32("minus the zero point", term=f32(-int(qparams.zero_point))),
        MultiplyFloat32("times f32(s)", factor=f32(qparams.scale))))


def float_epilogue(layer, post_ops: bool) -> tuple[list[Step], object]:
    """What follows the scaled sum of a Linear/Conv in float32 on the PT2E engines whose bias
    stays float, in their order: ``+ b``, a residual (``layer.residual_qparams``), a ReLU, a
    hardtanh/relu6 (``layer.clamp``). ``post_ops``: oneDNN's post-ops (Inductor), whose "sum"
    adds the residual with one FMA (measured: 0 of 1,903,638 conv outputs differ, and 9,646
    with a dequantize then an add); else eager PT2E's float ops, each rounded.
    Returns the steps and the float32 bias (or None)."""
    fused = "fused post-op" if post_ops else "float op"
    steps: list[Step] = []
    bias = None
    if layer.bias is not None:
        bias = f32(layer.bias)
        steps.append(AddFloat32("float bias", role="bias", term=bias))
    if layer.float_residual:
        steps.append(AddOperandFloat32(f"float residual add ({fused}{' add' if post_ops else ''})",
                                       role="sum"))
    residual = layer.residual_qparams
    if residual is not None:
        steps.append(AddResidualFloat32(
            f"residual add ({fused}{' sum' if post_ops else ''})", role="sum",
            zero_point=int(residual.zero_point), scale=float(f32(residual.scale)),
            fused=post_ops))
    if layer.relu:
        steps.append(ClampFloat32(f"ReLU ({fused})", role="relu", low=0.0))
    if layer.clamp is not None:
        steps.append(ClampFloat32(f"hardtanh ({fused}): min(max(t, f32(lo)), f32(hi))",
                                  role="clamp", low=float(f32(layer.clamp[0])),
                                  high=float(f32(layer.clamp[1]))))
    return steps, bias


KERNELS = {"quantize": quantize_decomposed, "dequantize": dequantize_decomposed}
"""The conversion families of the PT2E engines' tables."""
