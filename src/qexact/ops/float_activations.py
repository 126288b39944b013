"""Float32 activations that FX leaves between a dequantize and a quantize (no quantized kernel):
SiLU (nn.SiLU, F.silu: EfficientNet, YOLO-style models).

ATen's float kernel (aten/src/ATen/native/cpu/Activation.cpp ``silu_kernel``) has two lambdas,
split like the quantized elementwise kernels but in units of 16 floats
(``float_elementwise_numerics``):
    SIMD body:   y = f32(x / f32(1 + sleef_expf_u10(-x)))     (Vectorized<float>::exp)
    scalar tail: y = f32(x / f32(1 + glibc_expf(-x)))          (std::exp)
The two exps differ in the last bit on ~4 % of inputs (measured: 84 k of 2 M), so the split
matters; ``qexact.float_math`` emulates both bit for bit.
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


@dataclass(frozen=True)
class SiluParams:
    """``numerics``: the float elementwise split (SIMD body in units of 16 floats);
    ``num_threads``: PyTorch's thread count, which cuts large tensors into chunks."""

    numerics: ElementwiseNumerics
    num_threads: int


def _silu(x: np.ndarray, simd: bool) -> np.ndarray:
    exp = sleef_expf_u10 if simd else glibc_expf
    with np.errstate(all="ignore"):
        return (x / (np.float32(1) + exp(-x))).astype(np.float32)


def silu_float(x: np.ndarray, params: SiluParams) -> np.ndarray:
    """``F.silu`` on a float32 tensor, element for element as ATen's kernel (module docstring)."""
    from .elementwise import layout_simd_mask

    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"silu expects a float32 tensor, got {x.dtype}")
    mask = layout_simd_mask(params.numerics, x.shape, [x], params.num_threads)
    out = np.empty_like(x)  # the input's strides, as TensorIterator allocates the output
    out[mask] = _silu(x[mask], True)
    out[~mask] = _silu(x[~mask], False)
    return out


@graph_op("silu", "SiLU (nn.SiLU, F.silu) on float32 tensors, as ATen's float kernel")
class SiluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        from ..engines import get_engine

        if input_qparams and input_qparams[0] is not None:
            raise ShapeError("silu has no quantized kernel in PyTorch; it runs on float tensors")
        threads = int(node.attrs.get("num_threads") or default_num_threads())
        return SiluParams(float_elementwise_numerics(get_engine(engine)), threads), None

    @staticmethod
    def run(params, inputs):
        if isinstance(inputs[0], QuantizedArray):
            raise ShapeError("silu has no quantized kernel in PyTorch; it runs on float tensors")
        return silu_float(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        from .elementwise import layout_simd_mask

        x = np.asarray(inputs[0])
        simd = bool(layout_simd_mask(params.numerics, x.shape, [x], params.num_threads)[index])
        formula = ("y = f32(x / f32(1 + sleef_expf_u10(-x)))  (SIMD body)" if simd
                   else "y = f32(x / f32(1 + glibc_expf(-x)))  (scalar tail)")
        return [Stage("silu (float)", formula, {"x": x[index]}, np.asarray(result)[index])], \
            [(0, index)]
