"""Quantized activations: relu and the clamps (integer-only), and the rescaling activations
(dequantize, a float32 function, requantize) with the numerics of each ATen lambda.

relu: ``q = max(q, zp)`` with the input's qparams (pytorch QuantizedOpKernels.cpp ``qrelu_kernel``):
the zero point is the integer that stands for 0.0, so this is exact and integer-only.
sigmoid, tanh, elu: SLEEF in the SIMD body, glibc in the scalar tail (``qexact.float_math``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..engines.aten import ElementwiseNumerics, default_num_threads, elementwise_numerics
from ..engines.qnnpack_lut import qnnpack_hardswish_table
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..float_math import (glibc_expf, glibc_expm1f, glibc_tanhf, sleef_expf_u10, sleef_expm1f_u10,
                          sleef_tanhf_u10)
from ..qparams import QParams, QuantizedArray
from ..rounding import f32
from ..stages import Stage
from ._registry import graph_op
from .quantize import require_quantized

_ONE = np.float32(1.0)


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
    "sigmoid": "y = 1 / (1 + exp(-x)); SIMD body f32(1 / f32(1 + sleef_expf(-x))), scalar tail "
               "f32(1.0 / (1.0 + double(glibc_expf(-x)))) in double",
    "tanh": "y = tanh(x); SIMD body sleef_tanhf(x), scalar tail glibc_tanhf(x)",
    "hardsigmoid": "y = f32(min(max(f32(x + 3), 0), 6) / 6)",
    "hardswish": "y = f32(f32(x * min(max(f32(x + 3), 0), 6)) / 6)",
    "leaky_relu": "y = x > 0 ? x : f32(x * f32(slope))",
    "elu": "y = x > 0 ? x scale : expm1(x input_scale) alpha scale; SIMD body (sleef_expm1f), "
           "scalar tail (glibc_expm1f), each product rounded to float32 in that order",
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
    """The float32 functions both lambdas share (hardsigmoid, hardswish, leaky_relu)."""
    three, six, zero = (np.float32(v) for v in (3, 6, 0))
    if p.function == "hardsigmoid":
        return f32(np.minimum(np.maximum(f32(x + three), zero), six) / six)
    if p.function == "hardswish":
        return f32(f32(x * np.minimum(np.maximum(f32(x + three), zero), six)) / six)
    if p.function == "leaky_relu":
        return np.where(x > 0, x, f32(x * f32(p.slope)))
    raise UnsupportedError(f"{p.function} has per-lambda rules (KERNEL_LAMBDAS)")


def _sigmoid_simd(p, x):
    return f32(_ONE / f32(_ONE + sleef_expf_u10(-x)))


def _sigmoid_scalar(p, x):
    return f32(1.0 / (1.0 + glibc_expf(-x).astype(np.float64)))


def _elu_simd(p, x):
    negative = f32(sleef_expm1f_u10(f32(f32(x * _ONE) * f32(p.input_scale))) * f32(p.alpha))
    return f32(np.where(x > 0, x, negative) * f32(p.scale))


def _elu_scalar(p, x):
    negative = f32(f32(glibc_expm1f(f32(x * f32(p.input_scale))) * f32(p.alpha)) * f32(p.scale))
    return np.where(x >= 0, f32(x * f32(p.scale)), negative)


@dataclass(frozen=True)
class KernelLambda:
    """How one lambda of an ATen activation kernel turns ``q`` into the float it quantizes:
    ``dequantize`` (a key of ``DEQUANTIZE_FORMULAS``), ``function(params, x)`` (float32) and its
    ``formula`` (shown by explain)."""

    dequantize: str
    function: Callable
    formula: str


KERNEL_LAMBDAS = {
    ("sigmoid", "simd"): KernelLambda(
        "sub_mul", _sigmoid_simd, "y = f32(1 / f32(1 + sleef_expf(-x)))  (Sleef_expf8_u10)"),
    ("sigmoid", "scalar"): KernelLambda(
        "scalar", _sigmoid_scalar, "y = f32(1.0 / (1.0 + double(glibc_expf(-x))))  (double)"),
    ("tanh", "simd"): KernelLambda(
        "premul", lambda p, x: sleef_tanhf_u10(x), "y = sleef_tanhf(x)  (Sleef_tanhf8_u10)"),
    ("tanh", "scalar"): KernelLambda(
        "scalar", lambda p, x: glibc_tanhf(x), "y = glibc_tanhf(x)  (std::tanh)"),
    ("elu", "simd"): KernelLambda(
        "premul", _elu_simd, "n = f32(sleef_expm1f(f32(f32(x * 1) * f32(input_scale))) * "
        "f32(alpha)); y = f32((x > 0 ? x : n) * f32(scale))  (Sleef_expm1f8_u10)"),
    ("elu", "scalar"): KernelLambda(
        "scalar", _elu_scalar, "y = x >= 0 ? f32(x * f32(scale)) : f32(f32(glibc_expm1f("
        "f32(x * f32(input_scale))) * f32(alpha)) * f32(scale))  (std::expm1)"),
}
"""Per-lambda numerics of the activations whose SIMD body and scalar tail compute differently
(QuantizedOpKernels.cpp ``qsigmoid_kernel``, ``qtanh_kernel``, ``qelu_kernel``; functions from
``qexact.float_math``; measured on AVX2 against torch 2.13). Every other activation: SIMD
``"premul"`` / scalar ``"scalar"`` dequantize and the shared ``FLOAT_FUNCTIONS`` formula."""

DEQUANTIZE_FORMULAS = {"premul": "d = fmaf(f32(s), f32(q), f32(f32(s) f32(-z)))",
                       "sub_mul": "d = f32(f32(q - z) * f32(s))",
                       "scalar": "d = f32(f32(s) f32(q - z))"}
"""``Vectorized::dequantize(scale, zp, scale * -zp)`` (vec256_qint.h), its two-argument form
``dequantize(scale, zp)``, and ``dequantize_val`` (the scalar tail)."""


def kernel_lambda(function: str, simd: bool) -> KernelLambda:
    """The rule of ``function``'s SIMD body (``simd``) or scalar tail."""
    rule = KERNEL_LAMBDAS.get((function, "simd" if simd else "scalar"))
    if rule is not None:
        return rule
    return KernelLambda("premul" if simd else "scalar", _float_function, FLOAT_FUNCTIONS[function])


def qnnpack_table(p: ActivationParams) -> np.ndarray:
    """QNNPACK's 256-entry quint8 table (pytorch qnnpack/src/hardswish.c, sigmoid.c, tanh.c,
    reached from qhardswish.cpp, qsigmoid.cpp, qtanh.cpp). With ``x = f32(f32(s) f32(i - z))``:
    sigmoid ``lrintf(clamp(f32(256 / f32(1 + glibc_expf(-x))), 0, 255))``, tanh
    ``lrintf(clamp(f32(f32(128 glibc_tanhf(x)) + 128), 0, 255))`` (measured: float ``tanhf``; the
    source's double ``tanh`` misses 126 of 761,856 entries)."""
    s, z = p.input_qparams.scale, p.input_qparams.zero_point
    if p.function == "hardswish":
        return qnnpack_hardswish_table(s, z, p.output_qparams.scale, p.output_qparams.zero_point)
    x = f32(f32(s) * f32(np.arange(256, dtype=np.int64) - int(z)))
    with np.errstate(over="ignore"):
        if p.function == "sigmoid":
            scaled = f32(np.float32(256) / f32(_ONE + glibc_expf(-x)))
        elif p.function == "tanh":
            scaled = f32(f32(np.float32(128) * glibc_tanhf(x)) + np.float32(128))
        else:
            raise UnsupportedError(f"QNNPACK has no {p.function} table")
    return np.rint(np.clip(scaled, 0, 255).astype(np.float64)).astype(np.uint8)


def _dequantize(kind: str, q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    from .elementwise import dequantize_scalar, dequantize_simd

    if kind == "premul":
        return dequantize_simd(q, scale, zero_point)
    if kind == "sub_mul":
        return f32(f32(q.astype(np.int64) - int(zero_point)) * f32(scale))
    return dequantize_scalar(q, scale, zero_point)


CONTIGUOUS_OUTPUT = frozenset({"elu"})
"""Kernels that allocate their output contiguous whatever the input's layout (QuantizedOpKernels.cpp
``qelu_kernel``; measured: a channels_last input gives NCHW strides). Against a channels_last
input the inner loop is then strided, so ``cpu_kernel_vec`` runs ``basic_loop``: every element
takes the scalar lambda."""


def activation_simd_mask(p: ActivationParams, values: np.ndarray) -> np.ndarray:
    """Which elements the kernel's SIMD lambda computes (the run and explain share it)."""
    from .elementwise import layout_simd_mask
    from ..layout import is_channels_last

    if p.function in CONTIGUOUS_OUTPUT and is_channels_last(values):
        return np.zeros(values.shape, bool)
    return layout_simd_mask(p.numerics, values.shape, [values], p.num_threads)


def activation(x: QuantizedArray, p: ActivationParams) -> QuantizedArray:
    """Rescaling activation: dequantize, the float32 function, quantize; each element with the
    rules of the lambda that runs it (``kernel_lambda``; SIMD body or scalar tail as
    ``qexact.ops.elementwise.layout_simd_mask`` decides)."""
    from .elementwise import inverse_scale, like_memory_format, quantize_scalar, quantize_simd

    dtype = p.output_qparams.dtype
    if p.function in p.numerics.qnnpack_activations and dtype == QUINT8:
        if x.values.ndim == 0:
            raise ShapeError(f"quantized {p.function} of a 0-d tensor on QNNPACK: PyTorch raises "
                             "'Got empty input tensor'")
        table = qnnpack_table(p)
        return QuantizedArray(like_memory_format(table[x.values], x.values), p.output_qparams)
    from ..layout import is_channels_first_contiguous

    contiguous_out = (p.function in CONTIGUOUS_OUTPUT
                      and not is_channels_first_contiguous(x.values))
    mask = activation_simd_mask(p, x.values)
    inv = inverse_scale(p.output_qparams.scale)
    out = np.empty(x.values.shape, np.int64)
    for simd, quant in ((True, quantize_simd), (False, quantize_scalar)):
        where = mask if simd else ~mask
        if where.any():
            rule = kernel_lambda(p.function, simd)
            real = _dequantize(rule.dequantize, x.values[where], p.input_qparams.scale,
                               p.input_qparams.zero_point)
            with np.errstate(over="ignore", invalid="ignore"):
                y = rule.function(p, real)
            out[where] = quant(y, inv, p.output_qparams.zero_point, dtype)
    out = out.astype(dtype.numpy_dtype)
    return QuantizedArray(out if contiguous_out else like_memory_format(out, x.values),
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
    from ..layout import suggests_channels_last

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
body and scalar tail: 0 differences on 48,259 elements each). Not supported on floats: ``tanh``
(torch's float kernel is MKL's vsTanh, ATen vml.h) and ``sigmoid``/``elu`` (SLEEF in 16-float
blocks, glibc in the tail: the pieces exist, ``qexact.float_math`` and the 16-float split of
``engines.aten.float_elementwise_numerics`` that SiLU uses in ``ops.float_activations``).
NaN payloads are not reproduced: ATen's SIMD min/max give an all-ones NaN (0xFFFFFFFF) where
NumPy gives the default NaN (only from NaN or infinite inputs; every quantize maps any NaN alike)."""


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
        from .float_activations import FLOAT_KERNELS, prepare_float_kernel

        if input_qparams[0] is None:
            if node.attrs["function"] in FLOAT_KERNELS:  # float sigmoid: SLEEF / glibc exp
                return prepare_float_kernel(node.attrs["function"], engine,
                                            node.attrs.get("num_threads")), None
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
        from .float_activations import FloatKernelParams, float_kernel

        if isinstance(params, FloatActivationParams):
            return float_activation(inputs[0], params)
        if isinstance(params, FloatKernelParams):
            return float_kernel(inputs[0], params)
        return activation(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        from .elementwise import inverse_scale

        from .float_activations import FloatKernelParams, explain_float_kernel

        q = inputs[0]
        if isinstance(params, FloatKernelParams):
            return explain_float_kernel(params, inputs, result, index)
        if isinstance(params, FloatActivationParams):
            x = np.asarray(q)[index]
            return [Stage(f"{params.function} (float)", FLOAT_FUNCTIONS[params.function], {"x": x},
                          np.asarray(result)[index])], [(0, index)]
        value = np.asarray(q.values[index])
        if params.function in params.numerics.qnnpack_activations and q.dtype == QUINT8:
            return [Stage(params.function, "QNNPACK 256-entry table (qnnpack_table)",
                          {"q": value}, result.values[index])], [(0, index)]
        simd = bool(activation_simd_mask(params, q.values)[index])
        rule = kernel_lambda(params.function, simd)
        real = _dequantize(rule.dequantize, value, params.input_qparams.scale,
                           params.input_qparams.zero_point)
        with np.errstate(over="ignore", invalid="ignore"):
            y = rule.function(params, real)
        return [
            Stage(f"{params.function}: path", "which lambda of cpu_kernel_vec runs this element",
                  {"path": "SIMD body" if simd else "scalar tail"}),
            Stage(f"{params.function}: dequantize", DEQUANTIZE_FORMULAS[rule.dequantize],
                  {"q": value, "s": params.input_qparams.scale, "z": params.input_qparams.zero_point}, real[()]),
            Stage(f"{params.function}: float function", rule.formula, {"x": real[()]}, y[()]),
            Stage(f"{params.function}: requantize",
                  "q = clamp(rne(f32(y inv)) + z_o)" if simd else "q = clamp(rne(f32(f32(y inv) + f32(z_o))))",
                  {"inv": inverse_scale(params.output_qparams.scale),
                   "z_o": params.output_qparams.zero_point}, result.values[index]),
        ], [(0, index)]
