"""Quantized activations that need no rescaling.

relu: ``q = max(q, zp)`` with the input's qparams (pytorch QuantizedOpKernels.cpp ``qrelu_kernel``):
the zero point is the integer that stands for 0.0, so this is exact and integer-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..engines.aten import ElementwiseNumerics, default_num_threads, elementwise_numerics
from ..errors import QuantParamError, UnsupportedError
from ..qparams import QParams
from ..engines.qnnpack_elementwise import qnnpack_hardswish_table
from ..rounding import f32

from ..errors import ShapeError
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op
from .quantize import require_quantized


def relu(x: QuantizedArray) -> QuantizedArray:
    """Quantized ReLU: ``max(q, zero_point)``; qparams unchanged (``torch.relu`` on a quantized tensor).

    >>> from qexact.qparams import QParams
    >>> from qexact.dtypes import QUINT8
    >>> relu(QuantizedArray(np.uint8([3, 10, 200]), QParams.per_tensor(0.1, 10, QUINT8))).values
    array([ 10,  10, 200], dtype=uint8)
    """
    if x.qparams.is_per_channel:
        raise ShapeError("quantized relu takes per-tensor quantized arrays")
    floor = x.values.dtype.type(x.qparams.zero_point)
    return QuantizedArray(np.maximum(x.values, floor), x.qparams)


def relu_float(x: np.ndarray) -> np.ndarray:
    """``torch.relu`` on floats: ``x < 0 ? 0 : x`` (keeps -0.0 and NaN, as torch does)."""
    return np.where(x < 0, np.zeros((), x.dtype), x)


@graph_op("relu", "ReLU (nn.ReLU, F.relu, torch.relu): quantized, or float between dequantize "
          "and quantize as FX-converted models run it")
class ReluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        x = inputs[0]
        return relu(x) if isinstance(x, QuantizedArray) else relu_float(np.asarray(x))

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        if not isinstance(x, QuantizedArray):
            return [Stage("relu (float)", "y = x < 0 ? 0 : x", {"x": np.asarray(x)[index]},
                          np.asarray(result)[index])], [(0, index)]
        return [Stage("relu", "q = max(q, z): z stands for 0.0",
                      {"q": x.values[index], "z": x.zero_point}, result.values[index])], [(0, index)]


# --- Activations that rescale: dequantize, a float32 function, requantize --------------------
#
# pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp: qhardswish_kernel,
# qhardsigmoid_kernel, qsigmoid_kernel, qtanh_kernel, leaky_qrelu_out_kernel, qelu_kernel; the
# clamps (relu6, hardtanh, clamp) are integer-only (qclamp_kernel, relu6).



FLOAT_FUNCTIONS = {
    "sigmoid": "y = f32(1 / f32(1 + f32(exp(-x))))",
    "tanh": "y = tanh(x) (float32)",
    "hardsigmoid": "y = f32(min(max(f32(x + 3), 0), 6) / 6)",
    "hardswish": "y = f32(f32(x * min(max(f32(x + 3), 0), 6)) / 6)",
    "leaky_relu": "y = x > 0 ? x : f32(x * f32(slope))",
    "elu": "y = x > 0 ? f32(x * scale) : f32(f32(f32(exp(f32(x * input_scale))) - 1) * f32(alpha * scale))",
}
FIXED_OUTPUT = {("sigmoid", "quint8"): (1.0 / 256, 0), ("sigmoid", "qint8"): (1.0 / 256, -128),
                ("hardsigmoid", "quint8"): (1.0 / 256, 0), ("hardsigmoid", "qint8"): (1.0 / 256, -128),
                ("tanh", "quint8"): (1.0 / 128, 128), ("tanh", "qint8"): (1.0 / 128, 0)}
"""Output qparams PyTorch fixes (qsigmoid.cpp, qtanh.cpp, qhardsigmoid.cpp)."""


@dataclass(frozen=True)
class ActivationParams:
    """A rescaling activation: ``function`` (a key of ``FLOAT_FUNCTIONS``), ``input_qparams``,
    ``output_qparams``, the function's constants ``slope``/``alpha``/``scale``/``input_scale``,
    ``numerics`` (ATen SIMD body / scalar tail) and ``num_threads``."""

    function: str
    input_qparams: QParams
    output_qparams: QParams
    numerics: ElementwiseNumerics
    num_threads: int
    slope: float = 0.01
    alpha: float = 1.0
    scale: float = 1.0
    input_scale: float = 1.0


def prepare_activation(function: str, input_qparams: QParams, output_qparams: QParams | None = None,
                       engine="fbgemm", num_threads: int | None = None, **constants) -> ActivationParams:
    """Validate; output qparams are fixed for sigmoid/tanh/hardsigmoid (pass None)."""
    from ..engines import get_engine

    if function not in FLOAT_FUNCTIONS:
        raise UnsupportedError(f"activation {function!r} is not supported; supported: "
                               f"{sorted(FLOAT_FUNCTIONS)}")
    if input_qparams.is_per_channel or input_qparams.dtype not in (QUINT8, QINT8):
        raise QuantParamError(f"{function}: input must be per-tensor quint8 or qint8")
    fixed = FIXED_OUTPUT.get((function, input_qparams.dtype.name))
    if fixed is not None:
        output_qparams = QParams.per_tensor(fixed[0], fixed[1], input_qparams.dtype)
    if output_qparams is None:
        raise QuantParamError(f"{function}: output qparams are required")
    if output_qparams.dtype != input_qparams.dtype:
        raise QuantParamError(f"{function}: output dtype {output_qparams.dtype} != input dtype "
                              f"{input_qparams.dtype}")
    numerics = elementwise_numerics(get_engine(engine))
    return ActivationParams(function, input_qparams, output_qparams, numerics,
                            int(num_threads or default_num_threads()),
                            **{key: float(value) for key, value in constants.items()})


def _float_function(p: ActivationParams, x: np.ndarray) -> np.ndarray:
    one, three, six, zero = (np.float32(v) for v in (1, 3, 6, 0))
    if p.function == "sigmoid":
        return f32(one / f32(one + np.exp(-x, dtype=np.float32)))
    if p.function == "tanh":
        return np.tanh(x, dtype=np.float32)
    if p.function == "hardsigmoid":
        return f32(np.minimum(np.maximum(f32(x + three), zero), six) / six)
    if p.function == "hardswish":
        return f32(f32(x * np.minimum(np.maximum(f32(x + three), zero), six)) / six)
    if p.function == "leaky_relu":
        return np.where(x > 0, x, f32(x * f32(p.slope)))
    # elu
    negative = f32(f32(np.exp(f32(x * f32(p.input_scale)), dtype=np.float32) - one)
                   * f32(p.alpha * p.scale))
    return np.where(x > 0, f32(x * f32(p.scale)), negative)


def activation(x: QuantizedArray, p: ActivationParams) -> QuantizedArray:
    """Rescaling activation: dequantize, ``FLOAT_FUNCTIONS[p.function]``, quantize; each element
    with the SIMD-body or scalar-tail rules of ``qexact.ops.elementwise``."""
    from .elementwise import (dequantize_scalar, dequantize_simd, inverse_scale, layout_simd_mask,
                              like_memory_format, quantize_scalar, quantize_simd)

    dtype = p.output_qparams.dtype
    if p.function in p.numerics.qnnpack_activations and dtype == QUINT8 and p.function == "hardswish":
        table = qnnpack_hardswish_table(p.input_qparams.scale, p.input_qparams.zero_point,
                                        p.output_qparams.scale, p.output_qparams.zero_point)
        return QuantizedArray(like_memory_format(table[x.values], x.values), p.output_qparams)
    mask = layout_simd_mask(p.numerics, x.values.shape, [x.values], p.num_threads)
    inv = inverse_scale(p.output_qparams.scale)
    out = np.empty(x.values.shape, np.int64)
    for simd, dequant, quant in ((True, dequantize_simd, quantize_simd),
                                 (False, dequantize_scalar, quantize_scalar)):
        where = mask if simd else ~mask
        if where.any():
            real = dequant(x.values[where], p.input_qparams.scale, p.input_qparams.zero_point)
            out[where] = quant(_float_function(p, real), inv, p.output_qparams.zero_point, dtype)
    return QuantizedArray(like_memory_format(out.astype(dtype.numpy_dtype), x.values),
                          p.output_qparams)


def clamp(x: QuantizedArray, low: float | None, high: float | None,
          numerics: ElementwiseNumerics | None = None) -> QuantizedArray:
    """relu6 / hardtanh / clamp: ``q = min(max(q, quantize_val(low)), quantize_val(high))``,
    qparams unchanged; the bounds are quantized with the scalar rule
    ``clamp(rne(f32(f32(b * inv) + f32(z))))`` (qclamp_kernel, relu6: integer-only otherwise).

    ``numerics.qnnpack_clamp`` (qnnpack engine, quint8): the same values, but a channels_last
    input's NHWC bytes come out read as NCHW in a contiguous output (see
    ``ElementwiseNumerics.qnnpack_clamp``); with one bound missing PyTorch raises.
    """
    from .elementwise import inverse_scale, quantize_scalar
    from .shape import suggests_channels_last

    if numerics is not None and numerics.qnnpack_clamp and (low is None or high is None):
        raise UnsupportedError("quantized clamp with one bound on the qnnpack engine: PyTorch "
                               "raises 'Both min and max should be specified for quantized clamp!'")
    q = x.values.astype(np.int64)
    inv = inverse_scale(x.qparams.scale)
    for bound, pick in ((low, np.maximum), (high, np.minimum)):
        if bound is not None:
            q = pick(q, quantize_scalar(np.float32(bound), inv, x.qparams.zero_point, x.dtype))
    out = q.astype(x.values.dtype)
    if (numerics is not None and numerics.qnnpack_clamp and x.dtype == QUINT8
            and x.values.ndim in (4, 5) and suggests_channels_last(x.values)):
        order = (0,) + tuple(range(2, x.values.ndim)) + (1,)
        out = np.ascontiguousarray(out.transpose(order)).reshape(out.shape)
    return QuantizedArray(out, x.qparams)


def clamp_float(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """``torch.clamp`` / ``F.hardtanh`` / ``F.relu6`` on float32: ``min(max(x, f32(low)), f32(high))``
    (NaN propagates; ``low > high`` gives ``high``), exact (ATen clamp_kernel, scalar and SIMD alike)."""
    x = np.asarray(x)
    if low is not None:
        x = np.maximum(x, x.dtype.type(low))
    if high is not None:
        x = np.minimum(x, x.dtype.type(high))
    return x


@graph_op("clamp", "relu6 / hardtanh / clamp (nnq.ReLU6, F.hardtanh, torch.clamp): quantized "
          "(integer-only), or float between dequantize and quantize")
class ClampOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        from ..engines import get_engine

        return ((node.attrs.get("low"), node.attrs.get("high"),
                 elementwise_numerics(get_engine(engine))), input_qparams[0])

    @staticmethod
    def run(params, inputs):
        x = inputs[0]
        return clamp(x, *params) if isinstance(x, QuantizedArray) else clamp_float(x, *params[:2])

    @staticmethod
    def explain(params, inputs, result, index):
        q = inputs[0]
        if not isinstance(q, QuantizedArray):
            return [Stage("clamp (float)", "y = min(max(x, f32(low)), f32(high))",
                          {"x": np.asarray(q)[index], "low": params[0], "high": params[1]},
                          np.asarray(result)[index])], [(0, index)]
        return [Stage("clamp", "q = min(max(q, q_low), q_high); bounds quantized with "
                      "rne(f32(f32(b inv) + z))", {"q": q.values[index], "low": params[0],
                                                   "high": params[1]},
                      result.values[index])], [(0, index)]


FLOAT_EXACT = frozenset({"hardswish", "hardsigmoid", "leaky_relu"})
"""Activations whose float32 torch kernels qexact reproduces bit for bit (measured on AVX2, SIMD
body and scalar tail: ``F.hardswish``, ``F.hardsigmoid``, ``F.leaky_relu``; 0 differences on
48,259 elements each). torch's float ``sigmoid``, ``tanh`` and ``elu`` use SLEEF-style vectorized
``exp``/``tanh``/``expm1`` approximations that differ from correctly rounded float32 in the last
bit (8004, 14761 and 38 of 48,259 elements): not supported on floats. NaN payloads are not
reproduced: ATen's SIMD min/max give an all-ones NaN (0xFFFFFFFF) where NumPy gives the default
NaN (NaN arises only from NaN or infinite inputs; every quantize maps any NaN alike)."""


@dataclass(frozen=True)
class FloatActivationParams:
    """An activation run on float32 (FX-converted models run it between dequantize and quantize):
    ``function`` (one of ``FLOAT_EXACT``) and ``slope`` (leaky_relu)."""

    function: str
    slope: float = 0.01


def prepare_float_activation(function: str, slope: float = 0.01) -> FloatActivationParams:
    if function not in FLOAT_EXACT:
        raise UnsupportedError(
            f"{function} on float32 tensors is not supported: torch's float {function} kernel "
            "uses a vectorized approximation qexact does not reproduce bit for bit; quantize its "
            f"input (supported float activations: {sorted(FLOAT_EXACT)}, relu, clamp)")
    return FloatActivationParams(function, float(slope))


def float_activation(x: np.ndarray, p: FloatActivationParams) -> np.ndarray:
    """The float32 function of ``FLOAT_FUNCTIONS`` on float32 ``x`` (torch's float kernels)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise UnsupportedError(f"float {p.function} on {x.dtype} is not supported (float32 only)")
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 is NaN, as in C
        return _float_function(p, x)


@graph_op("activation", "sigmoid, tanh, hardsigmoid, hardswish, leaky_relu, elu (quantized); "
          "hardswish, hardsigmoid, leaky_relu also on float32")
class ActivationOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams[0] is None:
            return prepare_float_activation(node.attrs["function"],
                                            node.attrs.get("slope", 0.01)), None
        input_q = require_quantized(node, input_qparams)
        output = (QParams.per_tensor(node.attrs["output_scale"], node.attrs["output_zero_point"],
                                     input_q.dtype) if "output_scale" in node.attrs else None)
        if output is None and node.attrs.get("same_qparams"):  # F.leaky_relu on a quantized tensor
            output = input_q
        constants = {key: node.attrs[key] for key in ("slope", "alpha", "scale", "input_scale")
                     if key in node.attrs}
        params = prepare_activation(node.attrs["function"], input_q, output, engine=engine,
                                    num_threads=node.attrs.get("num_threads"), **constants)
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        if isinstance(params, FloatActivationParams):
            return float_activation(inputs[0], params)
        return activation(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        from .elementwise import dequantize_scalar, dequantize_simd, inverse_scale, layout_simd_mask

        q = inputs[0]
        if isinstance(params, FloatActivationParams):
            x = np.asarray(q)[index]
            return [Stage(f"{params.function} (float)", FLOAT_FUNCTIONS[params.function], {"x": x},
                          np.asarray(result)[index])], [(0, index)]
        value = np.asarray(q.values[index])
        if params.function in params.numerics.qnnpack_activations and q.dtype == QUINT8:
            return [Stage(params.function, "QNNPACK 256-entry table (qnnpack_hardswish_table)",
                          {"q": value}, result.values[index])], [(0, index)]
        simd = bool(layout_simd_mask(params.numerics, q.values.shape, [q.values],
                                     params.num_threads)[index])
        dequant = dequantize_simd if simd else dequantize_scalar
        real = dequant(value, params.input_qparams.scale, params.input_qparams.zero_point)
        y = _float_function(params, real)
        return [
            Stage(f"{params.function}: path", "which lambda of cpu_kernel_vec runs this element",
                  {"path": "SIMD body" if simd else "scalar tail"}),
            Stage(f"{params.function}: dequantize",
                  "d = fmaf(f32(s), f32(q), f32(f32(s) f32(-z)))" if simd else "d = f32(f32(s) f32(q - z))",
                  {"q": value, "s": params.input_qparams.scale, "z": params.input_qparams.zero_point}, real[()]),
            Stage(f"{params.function}: float function", FLOAT_FUNCTIONS[params.function], {"x": real[()]}, y[()]),
            Stage(f"{params.function}: requantize",
                  "q = clamp(rne(f32(y inv)) + z_o)" if simd else "q = clamp(rne(f32(f32(y inv) + f32(z_o))))",
                  {"inv": inverse_scale(params.output_qparams.scale),
                   "z_o": params.output_qparams.zero_point}, result.values[index]),
        ], [(0, index)]
