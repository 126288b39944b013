"""Dynamically quantized Linear: a float32 input, quantized at run time, an int8 GEMM, a float32
output (PT2E ``XNNPACKQuantizer(is_dynamic=True)``: ``choose_qparams`` -> ``quantize`` ->
``dequantize`` -> ``linear``, which ExecuTorch lowers to XNNPACK's ``qd8_f32_qc8w`` GEMM).

    p        = parameters(x rows)                    per row: multiplier, zero point, scale
    q[m, k]  = quantize(x[m, k], p[m])               the engine's codes
    acc[m, n] = sum_k (q[m, k] - zp[m]) * w[n, k]    exact integers
    y[m, n]  = epilogue(acc[m, n], scale[m], n)      float32 (the engine's steps)

The engine states all three (``GemmNumerics.dynamic``: a ``DynamicQuantization``); a row is
every dim of the input but the last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..accumulate import exact_matmul
from ..dtypes import QINT8
from ..engines import get_engine
from ..engines.base import DynamicQuantization
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, qparams_from_fields
from ..requantize import Step, bind_operand
from ..trace import apply_steps, record
from ._registry import graph_op, observed_block_stages


@dataclass(frozen=True, eq=False)
class DynamicLinearParams:
    """A dynamically quantized Linear prepared for one engine: ``weight`` (N, K) int8 and its
    ``weight_qparams`` (symmetric), ``float_bias``, ``relu``; ``dynamic`` (how the engine
    quantizes the input); ``requantization`` (the epilogue's steps); ``engine``, ``isa``."""

    weight: np.ndarray
    weight_qparams: QParams
    float_bias: np.ndarray | None
    relu: bool
    dynamic: DynamicQuantization
    requantization: tuple[Step, ...]
    engine: str
    isa: str
    weight_t: np.ndarray  # run-time cache: (K, N) float32 weights

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> str:
        """The kernel the engine runs (for ``qexact inspect``)."""
        return self.dynamic.name


def prepare_linear_dynamic(weight, weight_qparams: QParams, bias=None, relu: bool = False, *,
                           engine, isa: str | None = None) -> DynamicLinearParams:
    """Validate a dynamically quantized Linear for ``engine`` (a name or an ``Engine``), whose
    GEMM must have a dynamic kernel (``GemmNumerics.dynamic``)."""
    engine = get_engine(engine, isa)
    dynamic = engine.linear.dynamic
    if dynamic is None:
        raise UnsupportedError(
            f"engine {engine.name!r} has no dynamically quantized Linear in qexact; engines "
            "with one: xnnpack (ExecuTorch's qd8_f32_qc8w GEMM)")
    weight = np.asarray(weight)
    if weight.dtype != np.int8 or weight.ndim != 2:
        raise ShapeError(f"weight must be an int8 (out_features, in_features) array, got "
                         f"{weight.dtype} {weight.shape}")
    if weight_qparams.dtype != QINT8 or np.any(np.asarray(weight_qparams.zero_point) != 0):
        raise QuantParamError(f"{dynamic.name} takes symmetric qint8 weights (zero point 0), got "
                              f"{weight_qparams.describe()}")
    if weight_qparams.is_per_channel and weight_qparams.axis != 0:
        raise QuantParamError("per-channel weight qparams must be on axis 0 (output features)")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.shape != (weight.shape[0],):
            raise ShapeError(f"bias must be float32 of shape ({weight.shape[0]},), got "
                             f"{bias.dtype} {bias.shape}")
    epilogue = dynamic.requantization(weight_qparams, bias, bool(relu))
    return DynamicLinearParams(weight, weight_qparams, bias, bool(relu), dynamic, epilogue.steps,
                               engine.name, engine.isa,
                               np.ascontiguousarray(weight.T.astype(np.float32)))


def linear_dynamic(x: np.ndarray, params: DynamicLinearParams) -> np.ndarray:
    """Run the prepared Linear on a float32 input (..., in_features): float32 (..., out)."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != params.in_features:
        raise ShapeError(f"a dynamically quantized Linear takes float32 (..., "
                         f"{params.in_features}), got {x.dtype} {x.shape}")
    rows = x.reshape(-1, params.in_features)
    if not np.isfinite(rows).all():
        raise UnsupportedError(f"{params.dynamic.name}: a row holding NaN or an infinity; how the "
                               "kernel's min/max and convert treat them is not modelled")
    out_shape = (rows.shape[0], params.weight.shape[0])
    dynamic = params.dynamic
    chosen = dynamic.parameters(rows)
    record("dynamic quantization: the row's parameters", dynamic.name + ": S (the quantize "
           "multiplier), zp and the scale f32(1 / S), from the row's min and max",
           np.broadcast_to(chosen.scale[:, None], out_shape),
           S=np.broadcast_to(chosen.multiplier[:, None], out_shape),
           zp=np.broadcast_to(chosen.zero_point[:, None], out_shape))
    codes = dynamic.quantize(rows, chosen)
    centered = (codes - chosen.zero_point[:, None]).astype(np.float32)
    acc = exact_matmul(centered, params.weight_t)
    record("dot product", "acc = sum_k (q[k] - zp) * w[n, k]  (exact integers)", acc)
    steps = bind_operand(params.requantization, "input_scale", chosen.scale[:, None])
    out = apply_steps(acc, steps, prefix="epilogue: ").astype(np.float32)
    return out.reshape(x.shape[:-1] + (params.weight.shape[0],))


@graph_op("linear_dynamic", "dynamically quantized Linear (float32 in and out; PT2E is_dynamic)")
class LinearDynamicOp:
    """Graph node: arrays ``weight`` (int8), ``bias`` (float32, optional) and the weight
    qparams; attrs ``relu``, ``input_dtype`` (the type the model quantizes the input to). Its
    input and output are float32."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise QuantParamError(f"input 0 of {node.op!r} must be a float32 tensor")
        params = prepare_linear_dynamic(
            node.arrays["weight"], qparams_from_fields(node.attrs, node.arrays, "weight"),
            node.arrays.get("bias"), bool(node.attrs.get("relu", False)), engine=engine)
        wanted = node.attrs.get("input_dtype", params.dynamic.dtype.name)
        if wanted != params.dynamic.dtype.name:
            raise QuantParamError(f"the model quantizes this Linear's input to {wanted}; "
                                  f"{params.dynamic.name} quantizes to "
                                  f"{params.dynamic.dtype.name}")
        return params, None

    @staticmethod
    def run(params, inputs):
        return linear_dynamic(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        stages = observed_block_stages(LinearDynamicOp.run, params, inputs, result, index)
        row = tuple(int(i) for i in index[:-1])
        return stages, [(0, row + (slice(None),))]
