"""Quantized PReLU: ``torch.ops.quantized.prelu(x, weight, output_scale, output_zero_point)``
(``torch.ao.nn.quantized.PReLU``).

pytorch aten/src/ATen/native/quantized/cpu/qprelu.cpp allocates the output in
``x.suggest_memory_format()`` and calls ``qprelu_out_kernel``
(aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp). The quantized weight (one
value, or one per channel) is reshaped to ``(1, C, 1, ...)`` when its rank differs from ``x``'s
and broadcast by TensorIterator. The kernel is integer arithmetic plus one float multiply:

    m     = f32(f32(f32(s_x) f32(s_w)) f32(1 / f32(s_o)))               (offline)
    w_one = quantize_val(s_w, z_w, 1.0)          the weight's integer for slope 1.0
    c     = (max(q_x, z_x) - z_x)(w_one - z_w) + (min(q_x, z_x) - z_x)(q_w - z_w)
    scalar tail: q = clamp(z_o + lrintf(f32(f32(c) m)))       (requantize_from_int, int64)
    SIMD body:   q = clamp(wrap32(cvtps2dq(f32(f32(c) m)) + z_o))   (RequantizeAvx2)

The engine states that kernel (the ``"prelu"`` family of ``Engine.kernels``,
engines/aten_activations.py ``PreluKernel``: the constants, the product, each lambda's steps
from ``engines.aten.requantize_from_int_vector`` / ``_scalar``, and which element takes which
lambda); the op validates, broadcasts the weight and runs it. Explain observes the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten import default_num_threads
from ..engines.base import Engine
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray, qparams_from_fields
from ..trace import apply_steps, record
from ._registry import graph_op, observed_stages
from .quantize import require_quantized


@dataclass(frozen=True)
class PreluParams:
    """A quantized PReLU prepared for one engine.

    ``weight``: the quantized slopes (1-D, one value or one per channel); ``weight_qparams``,
    ``input_qparams``, ``output_qparams``: per-tensor; ``kernel``: the engine's description
    (``PreluKernel``: ``multiplier`` m and ``weight_one`` of the module docstring, the product,
    the SIMD body's and scalar tail's steps, and their placement).
    """

    weight: np.ndarray
    weight_qparams: QParams
    input_qparams: QParams
    output_qparams: QParams
    kernel: object

    @property
    def multiplier(self) -> np.float32:
        return self.kernel.multiplier

    @property
    def weight_one(self) -> int:
        return self.kernel.weight_one


def prepare_prelu(weight: np.ndarray, weight_qparams: QParams, input_qparams: QParams,
                  output_qparams: QParams, *, engine: Engine | str, num_threads: int | None = None,
                  isa: str | None = None) -> PreluParams:
    """Validate and prepare ``quantized::prelu`` for ``engine`` (a name or an ``Engine``);
    ``num_threads``: PyTorch's intra-op threads."""
    from ..engines import get_engine

    for name, qparams in (("input", input_qparams), ("weight", weight_qparams),
                          ("output", output_qparams)):
        if qparams.is_per_channel:
            raise QuantParamError(f"quantized prelu: {name} must be per-tensor quantized")
    dtype = input_qparams.dtype
    if dtype.bits != 8:
        raise UnsupportedError(f"quantized prelu on {dtype} is not supported (8-bit only)")
    if not weight_qparams.dtype == output_qparams.dtype == dtype:
        raise QuantParamError(f"quantized prelu: dtypes differ (input {dtype}, weight "
                              f"{weight_qparams.dtype}, output {output_qparams.dtype}); PyTorch "
                              "requires one dtype")
    weight = np.asarray(weight)
    if weight.ndim != 1 or weight.size == 0:
        raise ShapeError(f"quantized prelu: weight must be 1-D and non-empty, got {weight.shape}")
    if weight.min() < dtype.qmin or weight.max() > dtype.qmax:
        raise QuantParamError(f"quantized prelu: weight values outside {dtype}")
    kernel = get_engine(engine, isa).kernel("prelu", input_qparams, weight_qparams,
                                            output_qparams,
                                            int(num_threads or default_num_threads()))
    return PreluParams(weight.astype(np.int64), weight_qparams, input_qparams, output_qparams,
                       kernel)


def _weight_shape(p: PreluParams, ndim: int) -> tuple[int, ...]:
    """qprelu_out_kernel's reshape: ``(1, C, 1, ...)`` when the ranks differ."""
    if ndim == 1:
        return (p.weight.size,)
    shape = [1] * ndim
    shape[1] = p.weight.size
    return tuple(shape)


def _broadcast_weight(p: PreluParams, shape: tuple[int, ...]) -> np.ndarray:
    weight_shape = _weight_shape(p, len(shape))
    try:
        return np.broadcast_to(p.weight.reshape(weight_shape), shape)
    except ValueError:
        raise ShapeError(f"quantized prelu: {p.weight.size} weights do not broadcast over input "
                         f"{shape} (weight shape {weight_shape})") from None


def prelu(x: QuantizedArray, p: PreluParams) -> QuantizedArray:
    """Quantized PReLU of ``x`` with ``p.output_qparams`` (output keeps ``x``'s memory format):
    the integer product of each element, then the requantization of the lambda that runs it."""
    values = np.asarray(x.values)
    if values.ndim == 0:
        raise ShapeError("qprelu: zero-dim input tensor is not allowed")
    if x.qparams.is_per_channel or x.qparams.dtype != p.input_qparams.dtype:
        raise QuantParamError("quantized prelu: input does not match the prepared qparams")
    kernel = p.kernel
    qw = _broadcast_weight(p, values.shape)
    masks, output = kernel.split(values, _weight_shape(p, values.ndim))
    record("prelu: weight for slope 1.0 (offline)", "w_one = quantize_val({s_w}, {z_w}, 1.0)",
           np.int64(kernel.weight_one), s_w=p.weight_qparams.scale,
           z_w=int(p.weight_qparams.zero_point))
    record("prelu: multiplier (offline)", "m = f32(f32(f32({s_x}) f32({s_w})) f32(1/f32({s_o})))",
           kernel.multiplier, s_x=p.input_qparams.scale, s_w=p.weight_qparams.scale,
           s_o=p.output_qparams.scale)
    product = record("prelu: integer product", kernel.product_formula,
                     kernel.product(values, qw), q_x=values, q_w=qw,
                     z_x=kernel.input_zero_point, z_w=kernel.weight_zero_point,
                     w_one=kernel.weight_one)
    out = np.empty(values.shape, p.output_qparams.dtype.numpy_dtype)
    for path, where in zip(kernel.paths, masks):
        if not where.any():
            continue
        record("prelu: path", "which code path of the kernel computes this element", None,
               where=where, kernel=kernel.name, path=path.name)
        out[where] = apply_steps(product[where], path.steps, where=where, prefix="prelu: ")
    return QuantizedArray(output(out), p.output_qparams)


def _run_prelu(params: PreluParams, inputs) -> QuantizedArray:
    return prelu(inputs[0], params)


@graph_op("prelu", "quantized PReLU (nnq.PReLU, torch.ops.quantized.prelu)")
class PreluOp:
    """Graph node: array ``weight`` (quantized slopes), attrs weight and output qparams,
    ``num_threads``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        input_qparams = require_quantized(node, input_qparams, 0)
        params = prepare_prelu(node.arrays["weight"],
                               qparams_from_fields(node.attrs, node.arrays, "weight"),
                               input_qparams,
                               qparams_from_fields(node.attrs, node.arrays, "output"),
                               engine=engine, num_threads=node.attrs.get("num_threads"))
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return prelu(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run_prelu, params, inputs, result, index), [(0, index)]
