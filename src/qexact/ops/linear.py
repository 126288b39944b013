"""Static quantized Linear and LinearReLU (``torch.ao.nn.quantized.Linear``, ``intrinsic.LinearReLU``).

    acc[m, n] = sum_k (x[m, k] - z_x) * (w[n, k] - z_w[n])        (docs/arithmetic.md eq. 5)
    y[m, n]   = requantize(acc[m, n])                             (the engine's epilogue, eq. 6)

As a loop nest:

    for out_row in range(M):
        for out_channel in range(N):
            acc = 0
            for depth in range(K):
                acc += (x[out_row, depth] - z_x) * (w[out_channel, depth] - z_w[out_channel])
            acc += pair_saturation(...)          # only where the engine's ISA saturates pairs
            y[out_row, out_channel] = requantize(acc, out_channel)

``prepare_linear`` runs once (offline, floats allowed, validates everything); ``linear`` is the
integer kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..accumulate import (as_int32_if_it_fits, centered_bound, exact_block_starts,
                          exact_grouped_matmul, pair_positions, pair_saturation_correction,
                          saturating_weight_pairs, weight_pairs_of)
from ..dtypes import QINT8
from ..engines import Engine, LayerQuantization, get_engine
from ..engines.base import BiasMode
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QuantizedLayerAccessors, QParams, QuantizedArray, qparams_from_fields
from ..requantize import Step, bind_operand
from ..stages import Stage
from ..kernels import active_backend, fast
from ._gemm import (check_activations, check_quantized_bias, gemm_output,
                    quantized_or_float)
from ._gemm_explain import pair_saturation_stage, per_channel, requantization_stages
from ._registry import graph_op
from .quantize import output_qparams_of, require_quantized


@dataclass(frozen=True, eq=False)
class LinearParams(QuantizedLayerAccessors):
    """A quantized Linear prepared for one engine. Public fields (stable names):

    - ``weight``: (out_features, in_features) int8; ``weight_scale``, ``weight_zero_point``:
      float64 / int64, scalars (per-tensor) or (out_features,) arrays (per-channel);
    - ``bias``: the bias *as the engine adds it*: float32 (fbgemm, x86, onednn) or int32 quantized
      at ``input_scale * weight_scale`` (qnnpack), or None; ``bias_mode`` says which;
      ``float_bias``: the model's float32 bias;
    - ``input_scale``, ``input_zero_point``, ``output_scale``, ``output_zero_point``;
    - ``multiplier``: the float32 factor(s) the epilogue applies, in order;
    - ``requantization``: the epilogue's steps (``qexact.requantize``); ``relu``: fused ReLU;
    - ``kernel``: the kernel family PyTorch runs; ``pair_saturation``: whether int16 pair sums
      saturate on this engine's ISA; ``engine``, ``isa``.
    """

    weight: np.ndarray
    weight_qparams: QParams
    float_bias: np.ndarray | None
    input_qparams: QParams
    output_qparams: QParams
    relu: bool
    engine: str
    isa: str
    kernel: str
    bias: np.ndarray | None
    bias_mode: BiasMode
    multiplier: tuple[np.ndarray, ...]
    requantization: tuple[Step, ...]
    pair_saturation: bool
    # Run-time caches, derived from the above.
    weight_centered_t: np.ndarray
    pair_positions: np.ndarray | None
    weight_pairs: np.ndarray | None
    risky_pairs: np.ndarray | None
    exact_blocks: tuple[int, ...] | None
    """Where the NumPy path cuts K so that each float32 BLAS product is exact
    (``accumulate.exact_block_starts`` for these weights and the input's range; None: the
    int32 bound does not hold and ``exact_matmul``'s int64 sum runs)."""
    inexact: str = ""
    """Why this layer's outputs are not bit-exact on its engine (empty: they are)."""
    float_residual: bool = False
    """A second input, a float32 residual, is added to the float result before the activation
    (oneDNN's "add" post-op: Inductor's ``linear(x) + y``)."""
    eltwise: tuple = ()
    """A fused eltwise post-op: ``("leaky_relu", negative_slope)`` or ``("tanh",)`` (oneDNN's
    quantized::linear_leaky_relu / linear_tanh); empty: none."""
    not_run_for: object = None
    """The kernel's ``GemmNumerics.not_run_for``: sizes the deployment computes otherwise."""
    min_rank: int = 2
    """The kernel's ``GemmNumerics.linear_min_rank``: the lowest input rank it takes."""

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def saturated_outputs(self, x: QuantizedArray) -> int:
        """How many outputs int16 pair saturation changes for input ``x`` (0 without it)."""
        if not self.pair_saturation:
            return 0
        rows = x.values.reshape(-1, self.in_features)
        lost = pair_saturation_correction(rows, self.weight_pairs, self.risky_pairs,
                                          self.pair_positions)
        return int(np.count_nonzero(lost))


def prepare_linear(weight, weight_qparams: QParams, bias, input_qparams: QParams,
                   output_qparams: QParams, *, relu: bool = False,
                   engine: Engine | str, isa: str | None = None,
                   quantized_bias=None, float_residual: bool = False,
                   eltwise: tuple = ()) -> LinearParams:
    """Validate a quantized Linear and derive everything its integer kernel needs.

    ``weight``: (N, K) int8; ``weight_qparams``: qint8, per-tensor or per-channel on axis 0;
    ``bias``: (N,) float32 or None; ``input_qparams``/``output_qparams``: per-tensor, of a type
    the engine's kernels take (``Engine.activation_dtypes``: quint8, or qint8 for XNNPACK);
    ``output_qparams`` None: a float32 output, where the engine has one (``Engine.float_output``).
    ``engine`` (required: a name or an ``Engine``) on ``isa`` (default: this CPU's).
    ``float_residual``: a float32 tensor of the output's shape is added to the float result
    before the activation (an "add" post-op; refused by an engine whose epilogue has none).
    ``eltwise``: a fused ``("leaky_relu", negative_slope)`` or ``("tanh",)`` post-op (the
    engine's ``linear_eltwise`` kernel; refused by an engine without one).
    Raises ``QuantParamError`` where PyTorch's engine would refuse the parameters.
    """
    engine = get_engine(engine, isa)
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.dtype != np.int8:
        raise ShapeError(f"weight must be a 2-D int8 array, got {weight.dtype} {weight.shape}")
    if weight_qparams.dtype != QINT8:
        raise QuantParamError(f"weights must be qint8, got {weight_qparams.dtype.name}")
    if weight_qparams.is_per_channel and (weight_qparams.axis != 0
                                          or len(weight_qparams.scale) != weight.shape[0]):
        raise QuantParamError(
            f"per-channel weight qparams must be on axis 0 with {weight.shape[0]} channels, "
            f"got axis {weight_qparams.axis} with {len(weight_qparams.scale)}"
        )
    check_activations("Linear", engine, input_qparams, output_qparams)
    numerics = engine.linear
    if not numerics.allows_weight_zero_point and np.any(np.asarray(weight_qparams.zero_point) != 0):
        raise QuantParamError(
            f"engine {engine.name!r} supports only symmetric weights (zero point 0), got "
            f"{weight_qparams.zero_point!r}, as PyTorch's {numerics.name} prepack refuses them"
        )
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.shape != (weight.shape[0],):
            raise ShapeError(
                f"bias must be float32 of shape ({weight.shape[0]},), got {bias.dtype} {bias.shape}"
            )
    quantized_bias = check_quantized_bias(quantized_bias, numerics, weight.shape[0])
    epilogue = numerics.requantization(
        LayerQuantization(input_qparams.scale, weight_qparams, bias, output_qparams, relu,
                          quantized_bias, float_residual=float_residual)
    )
    if float_residual and not any(step.role == "sum" for step in epilogue.steps):
        raise UnsupportedError(f"Linear with a residual add on engine {engine.name!r}: its "
                               f"epilogue ({numerics.name}) has no such post-op")
    steps, inexact = epilogue.steps, numerics.inexact
    eltwise = tuple(eltwise or ())
    if eltwise:
        if relu:
            raise UnsupportedError(f"Linear with both a ReLU and a fused {eltwise[0]}")
        if "linear_eltwise" not in engine.kernels:
            raise UnsupportedError(
                f"Linear with a fused {eltwise[0]} (quantized::linear_{eltwise[0]}) on engine "
                f"{engine.name!r}: this engine has no such post-op (PyTorch refuses the op there: "
                f"\"Didn't find engine for operation\")")
        steps, eltwise_inexact = engine.kernel("linear_eltwise", steps, *eltwise)
        inexact = "; ".join(text for text in (inexact, eltwise_inexact) if text)
    zero_points = np.asarray(weight_qparams.zero_point, dtype=np.int64)
    centered = weight.astype(np.int64) - (zero_points[:, None] if zero_points.ndim else zero_points)
    positions = weight_pairs = risky = None
    saturates = numerics.saturates_pairs(engine.isa)
    if saturates:
        positions = pair_positions(weight.shape[1], numerics.pair_block_starts(weight.shape[1]))
        weight_pairs = weight_pairs_of(weight, positions)
        risky = saturating_weight_pairs(weight_pairs)
    weight_centered_t = np.ascontiguousarray(centered.T.astype(np.float32))
    return LinearParams(
        weight=weight, weight_qparams=weight_qparams, float_bias=bias,
        input_qparams=input_qparams, output_qparams=output_qparams, relu=relu,
        engine=engine.name, isa=engine.isa, kernel=numerics.name,
        bias=epilogue.bias, bias_mode=epilogue.bias_mode, multiplier=epilogue.multiplier,
        requantization=steps, pair_saturation=saturates,
        weight_centered_t=weight_centered_t,
        pair_positions=positions, weight_pairs=weight_pairs, risky_pairs=risky,
        exact_blocks=exact_block_starts(weight_centered_t, centered_bound(
            input_qparams.dtype.numpy_dtype, int(input_qparams.zero_point))),
        inexact=inexact, float_residual=bool(float_residual), eltwise=eltwise,
        not_run_for=numerics.not_run_for, min_rank=numerics.linear_min_rank,
    )


def linear_accumulator(x_values: np.ndarray, params: LinearParams) -> np.ndarray:
    """The int32 accumulator for (M, K) activations, as the kernel forms it (int32; int64 where
    its int32 bound is not proved, see ``exact_grouped_matmul``)."""
    if active_backend() == "fast":
        acc = fast.linear_accumulator(x_values, params)
        if acc is not None:
            return acc
    z_x = int(params.input_qparams.zero_point)
    input_bound = centered_bound(x_values.dtype, z_x)
    x_centered = np.subtract(x_values, np.float32(z_x), dtype=np.float32)
    acc = exact_grouped_matmul(x_centered[None], params.weight_centered_t[None], input_bound,
                               params.exact_blocks)
    if params.pair_saturation:
        acc = acc.astype(np.int64)
        acc += pair_saturation_correction(x_values, params.weight_pairs, params.risky_pairs,
                                          params.pair_positions)
        acc = as_int32_if_it_fits(acc)
    return acc


def linear(x: QuantizedArray, params: LinearParams, residual=None) -> QuantizedArray:
    """Run the prepared Linear on quint8 activations of shape (..., in_features); ``residual``
    (a layer prepared with ``float_residual``): the float32 tensor of the output's shape added
    before the activation."""
    values = x.values
    if values.ndim < params.min_rank or values.shape[-1] != params.in_features:
        raise ShapeError(
            f"Linear ({params.kernel}) expects input of shape (..., {params.in_features}) with "
            f"rank >= {params.min_rank}, got {values.shape}"
        )
    if x.qparams != params.input_qparams:
        raise QuantParamError(
            f"Linear was prepared for input {params.input_qparams.describe()}, "
            f"got {x.qparams.describe()}; prepare it again for these qparams"
        )
    rows = values.reshape(-1, params.in_features)
    reason = params.not_run_for(values.shape, params.out_features) if params.not_run_for else ""
    if reason:
        raise UnsupportedError(f"Linear on engine {params.engine!r}: {reason}")
    steps = params.requantization
    shape = values.shape[:-1] + (params.out_features,)
    if params.float_residual:
        steps = bind_operand(steps, "sum", _residual_rows(residual, shape))
    out = gemm_output(params, steps, lambda result: result.reshape(shape),
                      fast_output=lambda: fast.linear_output(rows, params, steps),
                      accumulator=lambda: linear_accumulator(rows, params))
    return quantized_or_float(out, params.output_qparams)


def _residual_rows(residual, shape: tuple[int, ...]) -> np.ndarray:
    """A float residual checked against the output's ``shape``, as (rows, out_features)."""
    if isinstance(residual, QuantizedArray) or residual is None or \
            np.asarray(residual).dtype != np.float32:
        raise QuantParamError("this Linear adds a float32 residual; pass one")
    residual = np.asarray(residual)
    if residual.shape != shape:
        raise ShapeError(f"the residual must have the Linear's output shape {shape}, got "
                         f"{residual.shape}")
    return residual.reshape(-1, shape[-1])


@graph_op("linear", "quantized Linear / LinearReLU / LinearLeakyReLU / LinearTanh (nnq.Linear, "
               "nniq.LinearReLU, ...)")
class LinearOp:
    """Graph node: arrays ``weight`` (int8), ``bias`` (float32, optional), per-channel
    ``weight_scale``/``weight_zero_point``; attrs ``relu``, ``eltwise`` (optional:
    ``["leaky_relu", slope]`` or ``["tanh"]``), weight and output qparams. A second
    input is a float32 residual added before the activation (Inductor's fused add)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        input_qparams_list = input_qparams
        input_qparams = require_quantized(node, input_qparams)
        params = prepare_linear(
            node.arrays["weight"], qparams_from_fields(node.attrs, node.arrays, "weight"),
            node.arrays.get("bias"), input_qparams,
            output_qparams_of(node), relu=bool(node.attrs.get("relu", False)), engine=engine,
            quantized_bias=node.arrays.get("quantized_bias"),
            float_residual=len(node.inputs) > 1, eltwise=tuple(node.attrs.get("eltwise", ())),
        )
        if len(node.inputs) > 1 and input_qparams_list[1] is not None:
            raise QuantParamError(f"input 1 of {node.op!r} (its residual) must be float32")
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return linear(inputs[0], params, *inputs[1:])

    @staticmethod
    def explain(params, inputs, result, index):
        upstream = [(0, index[:-1] + (slice(None),))]
        if params.float_residual:
            upstream.append((1, tuple(index)))
        return explain_linear(params, inputs[0], index, *inputs[1:]), upstream


def explain_linear(params: LinearParams, x: QuantizedArray, index,
                   residual=None) -> list[Stage]:
    """The stages that produce output element ``index`` (docs/arithmetic.md eq. 5-6)."""
    row, channel = index[:-1], index[-1]
    x_row = x.values[row].astype(np.int64)
    weight_row = params.weight[channel].astype(np.int64)
    z_x = int(params.input_zero_point)
    z_w = int(per_channel(params.weight_zero_point, channel))
    terms = (x_row - z_x) * (weight_row - z_w)
    exact = int(terms.sum())
    stages = [
        Stage("weights", f"w_q[{channel}, k], k = 0..{params.in_features - 1}",
              {"w_q": weight_row, "z_w": z_w, "s_w": per_channel(params.weight_scale, channel)}),
        Stage("dot product", "acc = sum_k (x_q[k] - z_x) * (w_q[n, k] - z_w)  (exact integers)",
              {"x_q": x_row, "z_x": z_x, "s_x": params.input_scale, "terms": terms,
               "running_sum": np.cumsum(terms)}, exact),
    ]
    acc = exact
    if params.pair_saturation:
        stage, acc = pair_saturation_stage(
            x_row, weight_row, params.pair_positions, exact,
            f"{params.kernel} on {params.isa} has no VNNI: raw u8*s8 pairs are summed in int16")
        stages.append(stage)
    steps = params.requantization
    if params.float_residual:
        row_of_residual = np.zeros((1, params.out_features), np.float32)
        row_of_residual[0, channel] = np.asarray(residual)[tuple(index)]
        steps = bind_operand(steps, "sum", row_of_residual)
    return stages + requantization_stages(steps, acc, channel, params.out_features)
