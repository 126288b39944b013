"""ATen's quantized activation kernels, prelu, and the float kernels FX models run between a
dequantize and a quantize: which code path runs each element and its arithmetic as ``Step``s.

Families of the kernel table (``KERNELS``; ``Engine.kernel(family, ...)``):

- ``"activation"``: sigmoid, tanh, hardsigmoid, hardswish, leaky_relu, elu, celu, threshold on
  quantized tensors,
  ``choose_activation(engine, function, input_qparams, output_qparams, constants, num_threads)
  -> ActivationKernel`` (chosen when the op is prepared);
- ``"clamp"``: clamp / hardtanh / relu6, ``choose_clamp(engine, qparams, low, high) ->
  ClampKernel`` (chosen per call: another engine refuses some calls);
- ``"float_activation"``: silu, sigmoid, hardswish, hardsigmoid, leaky_relu on float32,
  ``choose_float_activation(engine, function, constants, num_threads) -> ActivationKernel``;
- ``"prelu"``: ``choose_prelu(engine, input_qparams, weight_qparams, output_qparams,
  num_threads) -> PreluKernel``.

Source: pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
(``qsigmoid_kernel``, ``qtanh_kernel``, ``qhardsigmoid_kernel``, ``qhardswish_kernel``,
``leaky_qrelu_out_kernel``, ``qelu_kernel`` (also celu), ``qthreshold_kernel``, ``qclamp_kernel``,
``qprelu_out_kernel``) and
aten/src/ATen/native/cpu/Activation.cpp, UnaryOpsKernel.cpp (float kernels), all driven by
``cpu_kernel_vec`` (aten/src/ATen/native/cpu/Loops.h): the SIMD lambda on whole body units of
each inner loop, the scalar lambda on the rest (``engines.aten.layout_simd_mask``). A rescaling
activation's lambda is three stages:

    x = dequantize(q)     SIMD: Vectorized::dequantize (``aten.dequantize_vector``, or its
                          two-argument form ``aten.dequantize_vector_sub_mul`` for sigmoid);
                          scalar: dequantize_val (``aten.dequantize_scalar``)
    y = f(x)              float32; sigmoid, tanh and elu use SLEEF in the SIMD body and glibc in
                          the scalar tail (``qexact.float_math``), the others one formula
    q = quantize(y)       SIMD: QuantizeAvx2 (``aten.quantize_vector``); scalar: quantize_val
                          (``aten.quantize_scalar``)

The description classes (``ActivationKernel``, ``ActivationPath``, ``FloatFunction``,
``ClampKernel``) are any engine's: the qnnpack engine states its lookup tables and its clamp
operator with them (engines/qnnpack_lut.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..float_math import (glibc_expf, glibc_expm1f, glibc_tanhf, sleef_expf_u10, sleef_expm1f_u10,
                          sleef_tanhf_u10)
from ..layout import is_channels_first_contiguous, is_channels_last
from ..requantize import Step, requantize
from ..rounding import f32
from . import aten
from .aten import (ElementwiseNumerics, float_elementwise_numerics, inverse_scale,
                   layout_simd_mask, like_memory_format, simd_mask)

KERNELS_SOURCE = "pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp"
_ONE = np.float32(1.0)
_THREE, _SIX, _ZERO = np.float32(3), np.float32(6), np.float32(0)


# --- The description: code paths of dequantize, a float32 function, quantize ----------------


@dataclass(frozen=True)
class FloatFunction:
    """A code path's float32 function: ``apply(x)`` (its constants bound) and its ``formula``,
    whose ``{name}`` fields are the ``constants`` explain fills in."""

    formula: str
    apply: Callable
    constants: dict = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ActivationPath:
    """One code path of an activation kernel (a lambda of ``cpu_kernel_vec``, an operator's
    loop, ...): its ``name`` (explain shows it), the ``dequantize`` steps from the input integers
    to float32 (empty for a float kernel), the float32 ``function``, and the ``quantize`` steps
    to the output integers (empty for a float kernel).

    ``lookup``: the path's arithmetic runs once for every code of the input dtype (a table of
    256 entries, as a lookup-table kernel builds it when it is called) and each element reads
    its entry; otherwise it runs on the elements themselves."""

    name: str
    dequantize: tuple[Step, ...]
    function: FloatFunction
    quantize: tuple[Step, ...]
    lookup: bool = False


@dataclass(frozen=True)
class ActivationKernel:
    """The kernel an engine runs for one activation: ``name``, ``source``, its code ``paths`` and
    ``placement``, whose ``split(values)`` gives, in the order of ``paths``, the boolean mask of
    the elements each path computes, and a function laying the output values (computed in C
    order) out in the memory format the kernel allocates."""

    name: str
    source: str
    paths: tuple[ActivationPath, ...]
    placement: object

    def split(self, values: np.ndarray):
        return self.placement.split(values)


def _like_input(values: np.ndarray):
    """Output allocated with the input's strides (``TensorIterator`` on a float kernel)."""
    def output(result: np.ndarray) -> np.ndarray:
        out = np.empty_like(values, dtype=result.dtype)
        out[...] = result
        return out
    return output


@dataclass(frozen=True)
class LambdaPlacement:
    """``cpu_kernel_vec`` over a unary kernel's walk (``aten.layout_simd_mask``): the SIMD lambda
    on whole body units of each inner loop and parallel chunk, the scalar lambda on the rest.

    ``output``: ``"memory format"`` (the quantized kernels allocate the output in the input's
    ``suggest_memory_format()``), ``"contiguous"`` (``qelu_kernel`` allocates it contiguous
    whatever the input's layout; measured: a channels_last input gives NCHW strides, so against
    a channels_last input the inner loop is strided, ``cpu_kernel_vec`` runs ``basic_loop`` and
    every element takes the scalar lambda) or ``"input strides"`` (float kernels)."""

    numerics: ElementwiseNumerics
    num_threads: int
    output: str = "memory format"

    def split(self, values):
        if self.output == "contiguous" and is_channels_last(values):
            simd = np.zeros(values.shape, bool)
        else:
            simd = layout_simd_mask(self.numerics, values.shape, [values], self.num_threads)
        if self.output == "input strides":
            output = _like_input(values)
        elif self.output == "contiguous" and not is_channels_first_contiguous(values):
            output = np.ascontiguousarray
        else:
            def output(result):
                return like_memory_format(result, values)
        return (simd, ~simd), output


@dataclass(frozen=True)
class OnePathPlacement:
    """Every element through the kernel's one path (a kernel whose SIMD body and scalar tail
    compute alike); the output with the input's strides."""

    def split(self, values):
        return (np.ones(values.shape, bool),), _like_input(values)


# --- The float32 functions (each path's ``y = f(x)``) -----------------------------------------


def hardsigmoid(x):
    return f32(np.minimum(np.maximum(f32(x + _THREE), _ZERO), _SIX) / _SIX)


def hardswish(x):
    return f32(f32(x * np.minimum(np.maximum(f32(x + _THREE), _ZERO), _SIX)) / _SIX)


def leaky_relu(x, slope):
    return np.where(x > 0, x, f32(x * f32(slope)))


def sigmoid_sleef(x):
    return f32(_ONE / f32(_ONE + sleef_expf_u10(-x)))


def sigmoid_glibc_double(x):
    return f32(1.0 / (1.0 + glibc_expf(-x).astype(np.float64)))


def elu_sleef(x, alpha, scale, input_scale):
    negative = f32(sleef_expm1f_u10(f32(f32(x * _ONE) * f32(input_scale))) * f32(alpha))
    return f32(np.where(x > 0, x, negative) * f32(scale))


def elu_glibc(x, alpha, scale, input_scale):
    negative = f32(f32(glibc_expm1f(f32(x * f32(input_scale))) * f32(alpha)) * f32(scale))
    return np.where(x >= 0, f32(x * f32(scale)), negative)


def threshold(x, threshold, value):
    return np.where(x > f32(threshold), x, f32(value)).astype(np.float32)


SHARED_FORMULAS = {
    "hardsigmoid": "y = f32(min(max(f32(x + 3), 0), 6) / 6)",
    "hardswish": "y = f32(f32(x * min(max(f32(x + 3), 0), 6)) / 6)",
    "leaky_relu": "y = x > 0 ? x : f32(x * f32({slope}))",
    "threshold": "y = x > f32({threshold}) ? x : f32({value})",
}
"""The float32 functions whose SIMD and scalar lambdas compute alike (quantized and float)."""


@dataclass(frozen=True)
class KernelLambda:
    """One lambda of an ATen quantized activation kernel: its ``dequantize`` pipeline (a key of
    ``DEQUANTIZE``), the float32 ``function(x, **constants)`` and its ``formula``."""

    dequantize: str
    function: Callable
    formula: str


DEQUANTIZE = {"vector": aten.dequantize_vector, "vector_sub_mul": aten.dequantize_vector_sub_mul,
              "scalar": aten.dequantize_scalar}
"""``Vectorized::dequantize(scale, zp, scale * -zp)`` (vec256_qint.h: the premultiplied zero
point, one FMA), its two-argument form ``dequantize(scale, zp)``, and ``dequantize_val``."""


def _shared(function: str, body: Callable) -> tuple[KernelLambda, KernelLambda]:
    formula = SHARED_FORMULAS[function]
    return KernelLambda("vector", body, formula), KernelLambda("scalar", body, formula)


KERNEL_LAMBDAS = {
    "sigmoid": (
        KernelLambda("vector_sub_mul", sigmoid_sleef,
                     "y = f32(1 / f32(1 + sleef_expf(-x)))  (Sleef_expf8_u10)"),
        KernelLambda("scalar", sigmoid_glibc_double,
                     "y = f32(1.0 / (1.0 + double(glibc_expf(-x))))  (double)")),
    "tanh": (
        KernelLambda("vector", sleef_tanhf_u10, "y = sleef_tanhf(x)  (Sleef_tanhf8_u10)"),
        KernelLambda("scalar", glibc_tanhf, "y = glibc_tanhf(x)  (std::tanh)")),
    "elu": (
        KernelLambda("vector", elu_sleef,
                     "n = f32(sleef_expm1f(f32(f32(x * 1) * f32({input_scale}))) * "
                     "f32({alpha})); y = f32((x > 0 ? x : n) * f32({scale}))  (Sleef_expm1f8_u10)"),
        KernelLambda("scalar", elu_glibc,
                     "y = x >= 0 ? f32(x * f32({scale})) : f32(f32(glibc_expm1f(f32(x * "
                     "f32({input_scale}))) * f32({alpha})) * f32({scale}))  (std::expm1)")),
    "hardsigmoid": _shared("hardsigmoid", hardsigmoid),
    "hardswish": _shared("hardswish", hardswish),
    "leaky_relu": _shared("leaky_relu", leaky_relu),
    "threshold": _shared("threshold", threshold),
}
KERNEL_LAMBDAS["celu"] = KERNEL_LAMBDAS["elu"]
# quantized::celu is qelu_kernel with scale = 1 and input_scale = f32(1.0 / alpha) (the reciprocal
# in double, then Scalar::to<float>; pytorch aten/src/ATen/native/quantized/cpu/qelu.cpp
# quantized_celu): the elu lambdas with those constants (ops.activations.prepare_activation).
"""function -> (SIMD lambda, scalar lambda) of ATen's quantized kernel (QuantizedOpKernels.cpp;
functions from ``qexact.float_math``; measured on AVX2 against torch 2.13)."""

KERNEL_NAMES = {"sigmoid": "qsigmoid_kernel", "tanh": "qtanh_kernel",
                "hardsigmoid": "qhardsigmoid_kernel", "hardswish": "qhardswish_kernel",
                "leaky_relu": "leaky_qrelu_out_kernel", "elu": "qelu_kernel",
                "celu": "qelu_kernel", "threshold": "qthreshold_kernel"}

CONSTANTS = {"leaky_relu": ("slope",), "elu": ("alpha", "scale", "input_scale"),
             "celu": ("alpha", "scale", "input_scale"), "threshold": ("threshold", "value")}
"""The constants each function takes (``ActivationParams`` fields of the same names)."""

CONTIGUOUS_OUTPUT = frozenset({"elu", "celu"})
"""Kernels that allocate their output contiguous whatever the input's layout (``qelu_kernel``;
``LambdaPlacement``)."""


def float_function(function: str, body: Callable, formula: str, constants: dict) -> FloatFunction:
    """``body`` with ``function``'s constants bound (``CONSTANTS``)."""
    bound = {name: float(constants[name]) for name in CONSTANTS.get(function, ())}
    return FloatFunction(formula, partial(body, **bound) if bound else body, bound)


def lambda_names(numerics: ElementwiseNumerics) -> tuple[str, str]:
    return (f"SIMD body ({numerics.capability}, units of {numerics.body_unit})",
            "scalar tail (the scalar lambda)")


def choose_activation(engine, function: str, input_qparams, output_qparams, constants: dict,
                      num_threads: int) -> ActivationKernel:
    """ATen's quantized kernel for ``function`` at the engine's capability (every engine):
    ``KERNEL_LAMBDAS`` dequantize and compute, ATen's pipelines quantize with
    ``inv = f32(1 / f32(s_o))``."""
    if function not in KERNEL_LAMBDAS:
        raise UnsupportedError(f"activation {function!r} is not supported; supported: "
                               f"{sorted(KERNEL_LAMBDAS)}")
    numerics = aten.elementwise_numerics(engine)
    inv = inverse_scale(output_qparams.scale)
    zero_point, dtype = int(output_qparams.zero_point), output_qparams.dtype
    quantize = (aten.quantize_vector(inv, zero_point, dtype),
                aten.quantize_scalar(inv, zero_point, dtype))
    paths = tuple(
        ActivationPath(name, DEQUANTIZE[rule.dequantize](input_qparams.scale,
                                                         input_qparams.zero_point),
                       float_function(function, rule.function, rule.formula, constants), steps)
        for name, rule, steps in zip(lambda_names(numerics), KERNEL_LAMBDAS[function], quantize))
    output = "contiguous" if function in CONTIGUOUS_OUTPUT else "memory format"
    return ActivationKernel(f"ATen {KERNEL_NAMES[function]} ({numerics.capability})",
                            f"{KERNELS_SOURCE} {KERNEL_NAMES[function]}", paths,
                            LambdaPlacement(numerics, int(num_threads), output))


# --- Float kernels (FX leaves them between dequantize and quantize) ---------------------------

FLOAT_KERNELS = {
    "silu": (lambda x, exp: x / (_ONE + exp(-x)), "y = f32(x / f32(1 + {exp}(-x)))"),
    "sigmoid": (lambda x, exp: _ONE / (_ONE + exp(-x)), "y = f32(1 / f32(1 + {exp}(-x)))"),
}
"""function -> (the float32 formula given an exp, its text); SIMD body: SLEEF exp
(``Sleef_expf8_u10`` / ``Sleef_expf16_u10``, one algorithm), tail: glibc ``expf`` (Activation.cpp
``silu_kernel``, UnaryOpsKernel.cpp ``sigmoid_kernel``). The two exps differ in the last bit on
~4 % of inputs (measured: 84 k of 2 M), so the split matters.

No "exp": ``torch.exp`` (float32) is MKL ``vmsExp`` in high-accuracy mode (aten/src/ATen/cpu/
vml.h ``IMPLEMENT_VML_MKL(exp, Exp)``), elementwise but not emulable here. Measured (torch
2.13.0, MKL 2024.2): against the float_aten recording (AMD EPYC) it differs from the correctly
rounded exp on 1996, glibc on 2011 and SLEEF on 23780 of 299972 elements, and from the same
torch on an Intel Xeon on 3485 elements (MKL picks its code by CPU)."""

FLOAT_EXACT = {"hardswish": hardswish, "hardsigmoid": hardsigmoid, "leaky_relu": leaky_relu}
"""Float32 kernels qexact reproduces bit for bit with one formula for both lambdas (measured on
AVX2, SIMD body and scalar tail: 0 differences on 48,259 elements each). Not supported on
floats: ``tanh`` (torch's float kernel is MKL's vsTanh, ATen vml.h) and ``elu`` (SLEEF in
16-float blocks, glibc in the tail: the pieces exist in ``qexact.float_math``). NaN payloads are
not reproduced: ATen's SIMD min/max give an all-ones NaN (0xFFFFFFFF) where NumPy gives the
default NaN (only from NaN or infinite inputs; every quantize maps any NaN alike)."""


def _float_kernel_body(function: str, exp: Callable, x):
    return FLOAT_KERNELS[function][0](x, exp).astype(np.float32)


def choose_float_activation(engine, function: str, constants: dict,
                            num_threads: int) -> ActivationKernel:
    """ATen's float32 kernel for ``function`` at the engine's capability: silu and sigmoid with
    their SIMD body (SLEEF exp) and scalar tail (glibc ``expf``) over
    ``aten.float_elementwise_numerics`` (16 or 32 floats a unit: sigmoid and silu have AVX512
    builds); hardswish, hardsigmoid, leaky_relu with one formula (``FLOAT_EXACT``)."""
    if function in FLOAT_KERNELS:
        numerics = float_elementwise_numerics(engine, function)
        text = FLOAT_KERNELS[function][1]
        paths = tuple(
            ActivationPath(name, (), FloatFunction(text.format(exp=exp_name),
                                                   partial(_float_kernel_body, function, exp)), ())
            for name, exp, exp_name in zip(lambda_names(numerics),
                                           (sleef_expf_u10, glibc_expf),
                                           ("sleef_expf_u10", "glibc_expf")))
        return ActivationKernel(f"ATen float {function} ({numerics.capability})",
                                "pytorch aten/src/ATen/native/cpu/Activation.cpp silu_kernel, "
                                "UnaryOpsKernel.cpp sigmoid_kernel", paths,
                                LambdaPlacement(numerics, int(num_threads), "input strides"))
    if function in FLOAT_EXACT:
        path = ActivationPath("SIMD body and scalar tail alike (one float32 formula)", (),
                              float_function(function, FLOAT_EXACT[function],
                                             SHARED_FORMULAS[function], constants), ())
        return ActivationKernel(f"ATen float {function}",
                                "pytorch aten/src/ATen/native/cpu/Activation.cpp", (path,),
                                OnePathPlacement())
    raise UnsupportedError(
        f"{function} on float32 tensors is not supported: torch's float {function} kernel "
        "uses a vectorized approximation qexact does not reproduce bit for bit; quantize its "
        f"input (supported float activations: {sorted({*FLOAT_KERNELS, *FLOAT_EXACT})}, relu, "
        "clamp)")


# --- clamp / hardtanh / relu6 ---------------------------------------------------------------


@dataclass(frozen=True)
class ClampKernel:
    """The kernel of one quantized clamp call: ``name``, ``source``, ``bound_steps`` (a float
    bound to the input's integers), and ``placement``, whose ``arrange(values)`` gives the input
    integers in the output's positions, for each output element the flat (C order) index of the
    input element it reads (None: its own), and a function laying the output out. The clamp
    itself is integer: ``q = min(max(q, q_low), q_high)`` (a missing bound is skipped)."""

    name: str
    source: str
    bound_steps: tuple[Step, ...]
    placement: object

    def arrange(self, values: np.ndarray):
        return self.placement.arrange(values)


@dataclass(frozen=True)
class InPlacePlacement:
    """Each output element from its own input element; the output in the input's layout."""

    def arrange(self, values):
        return values, None, lambda result: result


def bound_steps(qparams) -> tuple[Step, ...]:
    """``quantize_val(s, z, bound)`` of a ``float`` bound (``aten.quantize_scalar``)."""
    return aten.quantize_scalar(inverse_scale(qparams.scale), int(qparams.zero_point),
                                qparams.dtype)


def choose_clamp(engine, qparams, low, high) -> ClampKernel:
    """``qclamp_kernel`` (and relu6, hardtanh), every engine and dtype: the bounds quantized
    with ``quantize_val``, then an integer clamp (both lambdas alike)."""
    return ClampKernel("ATen qclamp_kernel", f"{KERNELS_SOURCE} qclamp_kernel",
                       bound_steps(qparams), InPlacePlacement())


# --- prelu ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreluPath:
    """One lambda of ``qprelu_out_kernel``: ``name`` and the ``steps`` from the integer product
    ``c`` to the output integers (``requantize_from_int``)."""

    name: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class PreluPlacement:
    """``cpu_kernel_vec`` over TensorIterator's walk of ``x`` and the broadcast weight: a
    channels_last input (and its channels_last output) in N, H, W, C order, others in C order;
    the weight broadcast along the inner loop makes it ``is_contiguous_scalar`` or strided
    (``aten.simd_mask``). Measured on AVX2 and ATEN_CPU_CAPABILITY=default."""

    numerics: ElementwiseNumerics
    num_threads: int

    def split(self, values: np.ndarray, weight_shape: tuple[int, ...]):
        from ..layout import suggests_channels_last

        shape = values.shape
        if suggests_channels_last(values):
            order = (0,) + tuple(range(2, values.ndim)) + (1,)
            memory = tuple(shape[d] for d in order)
            mask = simd_mask(self.numerics, memory,
                             [memory, tuple(weight_shape[d] for d in order)], self.num_threads)
            simd = mask.transpose(np.argsort(order))
        else:
            simd = simd_mask(self.numerics, shape, [shape, weight_shape], self.num_threads)
        return (simd, ~simd), lambda result: like_memory_format(result, values)


@dataclass(frozen=True)
class PreluKernel:
    """``qprelu_out_kernel``: integer arithmetic plus one float multiply.

        m     = f32(f32(f32(s_x) f32(s_w)) f32(1 / f32(s_o)))       (``multiplier``, offline)
        w_one = quantize_val(s_w, z_w, 1.0)                       (``weight_one``, offline)
        c     = (max(q_x, z_x) - z_x)(w_one - z_w) + (min(q_x, z_x) - z_x)(q_w - z_w)
        q     = requantize_from_int(c, m, z_o)          SIMD body / scalar tail (``paths``)
    """

    name: str
    source: str
    multiplier: np.float32
    weight_one: int
    input_zero_point: int
    weight_zero_point: int
    paths: tuple[PreluPath, ...]
    placement: PreluPlacement
    product_formula: str = ("c = (max(q_x, {z_x}) - {z_x})({w_one} - {z_w}) + "
                            "(min(q_x, {z_x}) - {z_x})(q_w - {z_w})")

    def product(self, q_x: np.ndarray, q_w: np.ndarray) -> np.ndarray:
        """The integer ``c`` of each element (int64, exact)."""
        z_x, z_w = self.input_zero_point, self.weight_zero_point
        q_x = np.asarray(q_x).astype(np.int64)
        return ((np.maximum(q_x, z_x) - z_x) * (self.weight_one - z_w)
                + (np.minimum(q_x, z_x) - z_x) * (np.asarray(q_w).astype(np.int64) - z_w))

    def split(self, values: np.ndarray, weight_shape: tuple[int, ...]):
        return self.placement.split(values, weight_shape)


def choose_prelu(engine, input_qparams, weight_qparams, output_qparams,
                 num_threads: int) -> PreluKernel:
    """``qprelu_out_kernel`` at the engine's capability (every engine runs it: none hands PReLU
    to another library). Both lambdas agree unless ``f32(c) m`` does not fit int32: then the
    SIMD body's ``cvtps2dq`` gives INT32_MIN (its 32-bit add of a negative zero point wraps to
    near INT32_MAX), while the scalar ``lrintf`` keeps 64 bits."""
    numerics = aten.elementwise_numerics(engine)
    multiplier = f32(f32(f32(input_qparams.scale) * f32(weight_qparams.scale))
                     * inverse_scale(output_qparams.scale))[()]
    weight_one = requantize(np.float32(1.0), aten.quantize_scalar(
        inverse_scale(weight_qparams.scale), int(weight_qparams.zero_point),
        weight_qparams.dtype), np.int64)
    zero_point, dtype = int(output_qparams.zero_point), output_qparams.dtype
    simd, tail = lambda_names(numerics)
    paths = (PreluPath(simd, aten.requantize_from_int_vector(multiplier, zero_point, dtype)),
             PreluPath(tail, aten.requantize_from_int_scalar(multiplier, zero_point, dtype)))
    return PreluKernel(f"ATen qprelu_out_kernel ({numerics.capability})",
                       f"{KERNELS_SOURCE} qprelu_out_kernel", multiplier, int(weight_one),
                       int(input_qparams.zero_point), int(weight_qparams.zero_point), paths,
                       PreluPlacement(numerics, int(num_threads)))


KERNELS: dict = {"activation": choose_activation, "clamp": choose_clamp,
                 "float_activation": choose_float_activation, "prelu": choose_prelu}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
