"""Dynamically quantized convolution (``torch.ao.nn.quantized.dynamic.Conv1d/2d/3d``:
``quantized::conv{1,2,3}d_dynamic``): a float32 input quantized at run time, a static quantized
conv whose OUTPUT qparams are the input's own, then dequantized to float32.

pytorch aten/src/ATen/native/quantized/cpu/qconv_dynamic.cpp ``apply_dynamic``:

    min, max = the whole input's (fbgemm::FindMinMax / Tensor.min(), max())
    s, zp    = quant_utils::ChooseQuantizationParams(min, max, 0, 255, reduce_range)  (double s)
    q        = at::quantize_per_tensor(x, s, zp, quint8)          (ATen's quantize kernel)
    out      = apply_impl<false>(q, output_scale=s, output_zero_point=zp)   (the static conv)
    y        = at::dequantize(out)

so every output is clamped to the INPUT's range [min(x, 0), max(x, 0)] (roughly): a conv whose
result leaves it saturates. ``reduce_range`` (the module passes True) halves the range to
[0, 127] where the engine's dynamic quantization honours the flag (qnnpack ignores it: "qnnpack
incorrectly ignores reduce_range", the same rule as its dynamic Linear, which the engine states:
``engine.linear.dynamic.for_reduce_range``). The quantize, conv and dequantize are qexact's
static ops (``ops.quantize``, ``ops.conv``) for the engine; the conv's constants depend on the
run-time scale, so the conv is prepared on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import QUINT8
from ..engines import get_engine
from ..engines.dynamic_eager import choose_qparams, tensor_minmax
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, qparams_from_fields
from ..trace import record
from ._registry import graph_op, observed_stages
from .conv import conv, prepare_conv
from .quantize import check_float32, dequantize, quantize_per_tensor


@dataclass(frozen=True, eq=False)
class DynamicConvParams:
    """``weight`` (OC, C/G, *kernel) int8 with ``weight_qparams``, float32 ``bias``, the conv's
    geometry, ``reduce_range`` (as the engine applies the module's flag), ``engine``."""

    weight: np.ndarray
    weight_qparams: QParams
    bias: np.ndarray | None
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    reduce_range: bool
    engine: object

    @property
    def isa(self) -> str:
        return self.engine.isa


def prepare_conv_dynamic(weight, weight_qparams: QParams, bias=None, *, stride=1, padding=0,
                         dilation=1, groups: int = 1, reduce_range: bool = True, engine,
                         isa: str | None = None) -> DynamicConvParams:
    """Validate a dynamically quantized ConvNd for ``engine`` (a static conv prepared with
    placeholder activation qparams checks what ``prepare_conv`` checks)."""
    engine = get_engine(engine, isa)
    dynamic = engine.linear.dynamic
    if dynamic is None or dynamic.granularity != "tensor":
        raise UnsupportedError(f"engine {engine.name!r} has no dynamically quantized conv "
                               "(PyTorch's eager engines run quantized::conv*d_dynamic)")
    placeholder = QParams.per_tensor(1.0, 0, QUINT8)
    checked = prepare_conv(weight, weight_qparams, bias, placeholder, placeholder, stride=stride,
                           padding=padding, dilation=dilation, groups=groups, engine=engine)
    return DynamicConvParams(np.asarray(weight), weight_qparams,
                             None if bias is None else np.asarray(bias, np.float32),
                             checked.stride, checked.padding, checked.dilation, int(groups),
                             bool(dynamic.for_reduce_range(bool(reduce_range)).reduce_range),
                             engine)


def conv_dynamic(x, params: DynamicConvParams) -> np.ndarray:
    """Run the dynamically quantized conv on float32 ``x`` (N, C, *spatial)."""
    x = check_float32(x)
    if x.ndim != params.weight.ndim:
        raise ShapeError(f"dynamic conv: input must be (N, C, *spatial) with "
                         f"{params.weight.ndim - 2} spatial dims, got {x.shape}")
    if x.size == 0:
        raise ShapeError("dynamic conv: empty input (PyTorch picks arbitrary qparams)")
    if np.isnan(x).any():
        raise QuantParamError("dynamic conv: NaN in the input (its min/max are undefined)")
    low, high = tensor_minmax(x)
    scale, zero_point = choose_qparams(low, high, 0, 255, params.reduce_range)
    record("dynamic conv: input qparams", "s, zp = ChooseQuantizationParams(min, max, 0, "
           "255, reduce_range)", np.broadcast_to(np.float32(scale), x.shape), min=low, max=high,
           zp=zero_point)
    qparams = QParams.per_tensor(scale, zero_point, QUINT8)
    qx = quantize_per_tensor(x, scale, zero_point, QUINT8)
    static = prepare_conv(params.weight, params.weight_qparams, params.bias, qparams, qparams,
                          stride=params.stride, padding=params.padding,
                          dilation=params.dilation, groups=params.groups, engine=params.engine)
    return dequantize(conv(qx, static))


@graph_op("conv_dynamic", "dynamically quantized Conv1d/2d/3d (float32 in and out; "
          "quantized::conv{1,2,3}d_dynamic)")
class ConvDynamicOp:
    """Graph node: input float32 ``x``; array ``weight`` (int8) with its ``weight_*`` qparams
    fields, optional float32 ``bias``; attrs ``stride``, ``padding``, ``dilation``, ``groups``,
    ``reduce_range`` (the module's flag, True)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams):
            raise QuantParamError("a dynamic conv takes a float32 input, not a quantized one")
        attrs = node.attrs
        params = prepare_conv_dynamic(
            node.arrays["weight"], qparams_from_fields(attrs, node.arrays, "weight"),
            node.arrays.get("bias"), stride=attrs.get("stride", 1),
            padding=attrs.get("padding", 0), dilation=attrs.get("dilation", 1),
            groups=int(attrs.get("groups", 1)), reduce_range=bool(attrs.get("reduce_range", True)),
            engine=engine)
        return params, None

    @staticmethod
    def run(params, inputs):
        return conv_dynamic(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(ConvDynamicOp.run, params, inputs, result, index), []
