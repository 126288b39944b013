"""Float32 activations that run between a dequantize and a quantize (no quantized kernel, or the
user left them float, as detection heads do): SiLU (nn.SiLU, F.silu: EfficientNet, YOLO-style
models) and sigmoid on float tensors.

ATen's float kernels (aten/src/ATen/native/cpu/Activation.cpp ``silu_kernel``,
UnaryOpsKernel.cpp ``sigmoid_kernel``) have two lambdas, split like the quantized elementwise
kernels but in units of two ``Vectorized<float>`` (``float_elementwise_numerics``: 16 floats in
the AVX2 build, 32 in the AVX512 build, which both kernels have):
    silu     SIMD body:   y = f32(x / f32(1 + sleef_expf_u10(-x)))     (Vectorized<float>::exp)
             scalar tail: y = f32(x / f32(1 + glibc_expf(-x)))          (std::exp)
    sigmoid  SIMD body:   y = f32(1 / f32(1 + sleef_expf_u10(-x)))      (neg, exp, reciprocal)
             scalar tail: y = f32(1 / f32(1 + glibc_expf(-x)))
The SIMD exp is ``Sleef_expf8_u10`` (AVX2) or ``Sleef_expf16_u10`` (AVX512F), one algorithm
with the same results (``qexact.float_math``). The two exps differ in the last bit on ~4 % of
inputs (measured: 84 k of 2 M), so the split matters.

``torch.exp`` on float32 is not here: it runs MKL's ``vmsExp`` (VML_HA; aten/src/ATen/cpu/vml.h
``IMPLEMENT_VML_MKL(exp, Exp)``), which is not correctly rounded and whose results depend on the
CPU MKL dispatches to (measured: ``FLOAT_KERNELS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten import ElementwiseNumerics, default_num_threads, float_elementwise_numerics
from ..errors import ShapeError
from ..float_math import glibc_expf, sleef_expf_u10
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op

_ONE = np.float32(1)
FLOAT_KERNELS = {
    "silu": (lambda x, exp: x / (_ONE + exp(-x)), "y = f32(x / f32(1 + {exp}(-x)))"),
    "sigmoid": (lambda x, exp: _ONE / (_ONE + exp(-x)), "y = f32(1 / f32(1 + {exp}(-x)))"),
}
"""function -> (the float32 formula given an exp, its text); SIMD body: SLEEF exp, tail: glibc.

No "exp": ``torch.exp`` (float32) is MKL ``vmsExp`` in high-accuracy mode, elementwise but not
emulable here. Measured (torch 2.13.0, MKL 2024.2): against the float_aten recording (AMD EPYC)
it differs from the correctly rounded exp on 1996, glibc on 2011 and SLEEF on 23780 of 299972
elements, and from the same torch on an Intel Xeon on 3485 elements (MKL picks its code by CPU).
"""


@dataclass(frozen=True)
class FloatKernelParams:
    """``function`` (a key of ``FLOAT_KERNELS``); ``numerics``: the float elementwise split (SIMD
    body in units of 16 or 32 floats, by kernel build); ``num_threads``: PyTorch's thread count
    (large tensors are cut into one chunk per thread)."""

    function: str
    numerics: ElementwiseNumerics
    num_threads: int


def prepare_float_kernel(function: str, engine="fbgemm", num_threads: int | None = None
                         ) -> FloatKernelParams:
    from ..engines import get_engine

    if function not in FLOAT_KERNELS:
        raise ShapeError(f"no float kernel {function!r}; supported: {sorted(FLOAT_KERNELS)}")
    return FloatKernelParams(function, float_elementwise_numerics(get_engine(engine), function),
                             int(num_threads or default_num_threads()))


def _apply(function: str, x: np.ndarray, simd: bool) -> np.ndarray:
    formula, _ = FLOAT_KERNELS[function]
    with np.errstate(all="ignore"):
        return formula(x, sleef_expf_u10 if simd else glibc_expf).astype(np.float32)


def float_kernel(x: np.ndarray, params: FloatKernelParams) -> np.ndarray:
    """``params.function`` on a float32 tensor, element for element as ATen's kernel."""
    from .elementwise import layout_simd_mask

    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"{params.function} expects a float32 tensor, got {x.dtype}")
    mask = layout_simd_mask(params.numerics, x.shape, [x], params.num_threads)
    out = np.empty_like(x)  # the input's strides, as TensorIterator allocates the output
    out[mask] = _apply(params.function, x[mask], True)
    out[~mask] = _apply(params.function, x[~mask], False)
    return out


def explain_float_kernel(params: FloatKernelParams, inputs, result, index):
    from .elementwise import layout_simd_mask

    x = np.asarray(inputs[0])
    simd = bool(layout_simd_mask(params.numerics, x.shape, [x], params.num_threads)[index])
    text = FLOAT_KERNELS[params.function][1].format(exp="sleef_expf_u10" if simd else "glibc_expf")
    return [Stage(f"{params.function} (float)", f"{text}  ({'SIMD body' if simd else 'scalar tail'})",
                  {"x": x[index]}, np.asarray(result)[index])], [(0, index)]


@graph_op("silu", "SiLU (nn.SiLU, F.silu) on float32 tensors, as ATen's float kernel")
class SiluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise ShapeError("silu has no quantized kernel in PyTorch; it runs on float tensors")
        return prepare_float_kernel("silu", engine, node.attrs.get("num_threads")), None

    @staticmethod
    def run(params, inputs):
        if isinstance(inputs[0], QuantizedArray):
            raise ShapeError("silu has no quantized kernel in PyTorch; it runs on float tensors")
        return float_kernel(inputs[0], params)

    explain = staticmethod(explain_float_kernel)
