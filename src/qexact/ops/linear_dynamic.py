"""Dynamically quantized Linear: a float32 input, quantized at run time, an int8 GEMM, a float32
output. Eager engines: ``quantize_dynamic`` / FX dynamic convert (``quantized::linear_dynamic``,
``linear_relu_dynamic``; one scale and zero point for the whole input, ATen's
``ChooseQuantizationParams``, engines/dynamic_eager.py). XNNPACK: PT2E
``XNNPACKQuantizer(is_dynamic=True)``, lowered by ExecuTorch to ``qd8_f32_qc8w`` (per row).

    p        = parameters(x rows)                    per row (or one set repeated): S, zp, scale
    q[m, k]  = quantize(x[m, k], p[m])               the engine's codes
    acc[m, n] = sum_k (q[m, k] - zp[m]) * (w[n, k] - zw[n])   exact integers (int16 pair
                                                     saturation of raw codes without VNNI)
    y[m, n]  = epilogue(acc[m, n], scale[m], n)      float32 (the engine's steps)

The engine states all three (``GemmNumerics.dynamic``: a ``DynamicQuantization``); a row is
every dim of the input but the last.

Float16 weights (``quantize_dynamic(dtype=torch.float16)``: ``quantized::linear_dynamic_fp16``)
run FBGEMM's fp16 GEMM, an FMA chain in float32 (``linear_fp16``; the engine's ``linear_fp16``
kernel family states its blocking).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..accumulate import (exact_matmul, pair_positions, pair_saturation_correction,
                          saturating_weight_pairs, weight_pairs_of)
from ..dtypes import QINT8
from ..engines import get_engine
from ..engines.base import DynamicQuantization
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, qparams_from_fields
from ..requantize import AddFloat32, ClampFloat32, Step, bind_operand
from ..rounding import f32, fma_float32
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
    weight_t: np.ndarray  # run-time cache: (K, N) float32 weights minus their zero points
    reduce_range: bool = False
    pair_positions: np.ndarray | None = None  # int16 pair saturation (no VNNI): see linear.py
    weight_pairs: np.ndarray | None = None
    risky_pairs: np.ndarray | None = None

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> str:
        """The kernel the engine runs (for ``qexact inspect``)."""
        return self.dynamic.name


def prepare_linear_dynamic(weight, weight_qparams: QParams, bias=None, relu: bool = False, *,
                           engine, isa: str | None = None,
                           reduce_range: bool = False) -> DynamicLinearParams:
    """Validate a dynamically quantized Linear for ``engine`` (a name or an ``Engine``), whose
    GEMM must have a dynamic kernel (``GemmNumerics.dynamic``). ``reduce_range``: the flag the
    model passes (``ao.nn.quantized.dynamic.Linear`` passes True; a kernel without the flag, or
    one that ignores it, is unaffected)."""
    engine = get_engine(engine, isa)
    numerics = engine.linear
    dynamic = numerics.dynamic
    if dynamic is None:
        raise UnsupportedError(
            f"engine {engine.name!r} ({engine.isa}) has no dynamically quantized Linear in "
            "qexact; engines with one: fbgemm, x86, qnnpack, onednn (avx512_vnni), xnnpack")
    dynamic = dynamic.for_reduce_range(reduce_range)
    weight = np.asarray(weight)
    if weight.dtype != np.int8 or weight.ndim != 2:
        raise ShapeError(f"weight must be an int8 (out_features, in_features) array, got "
                         f"{weight.dtype} {weight.shape}")
    zero_point = np.asarray(weight_qparams.zero_point)
    if weight_qparams.dtype != QINT8 or (np.any(zero_point != 0)
                                         and not numerics.allows_weight_zero_point):
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
    centered = weight.astype(np.int64) - (zero_point[:, None] if zero_point.ndim else zero_point)
    positions = weight_pairs = risky = None
    if numerics.saturates_pairs(engine.isa):
        positions = pair_positions(weight.shape[1], numerics.pair_block_starts(weight.shape[1]))
        weight_pairs = weight_pairs_of(weight, positions)
        risky = saturating_weight_pairs(weight_pairs)
    return DynamicLinearParams(weight, weight_qparams, bias, bool(relu), dynamic, epilogue.steps,
                               engine.name, engine.isa,
                               np.ascontiguousarray(centered.T.astype(np.float32)),
                               dynamic.reduce_range, positions, weight_pairs, risky)


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
    whole = dynamic.granularity == "tensor"
    record("dynamic quantization: the " + ("input's" if whole else "row's") + " parameters",
           dynamic.name + ": S (the quantize multiplier), zp and the epilogue's scale, from the "
           + ("whole input's" if whole else "row's") + " min and max",
           np.broadcast_to(chosen.scale[:, None], out_shape),
           S=np.broadcast_to(chosen.multiplier[:, None], out_shape),
           zp=np.broadcast_to(chosen.zero_point[:, None], out_shape))
    codes = dynamic.quantize(rows, chosen)
    centered = (codes - chosen.zero_point[:, None]).astype(np.float32)
    acc = exact_matmul(centered, params.weight_t)
    if params.pair_positions is not None:  # raw u8 x s8 pairs summed in int16 (no VNNI)
        acc += pair_saturation_correction(codes, params.weight_pairs, params.risky_pairs,
                                          params.pair_positions)
    record("dot product", "acc = sum_k (q[k] - zp) * (w[n, k] - zw[n])  (exact integers"
           + (", then int16 pair saturation)" if params.pair_positions is not None else ")"), acc)
    steps = bind_operand(params.requantization, "input_scale", chosen.scale[:, None])
    out = apply_steps(acc, steps, prefix="epilogue: ").astype(np.float32)
    return out.reshape(x.shape[:-1] + (params.weight.shape[0],))


def _explain_row(run, params, inputs, result, index):
    """A float-input Linear's stages for one output element, observed on ``run``; upstream: the
    input row it reads."""
    stages = observed_block_stages(run, params, inputs, result, index)
    row = tuple(int(i) for i in index[:-1])
    return stages, [(0, row + (slice(None),))]


@graph_op("linear_dynamic", "dynamically quantized Linear (float32 in and out; PT2E is_dynamic)")
class LinearDynamicOp:
    """Graph node: arrays ``weight`` (int8), ``bias`` (float32, optional) and the weight
    qparams; attrs ``relu``, ``reduce_range`` (the flag the model passes; default False),
    ``input_dtype`` (the type the model quantizes the input to). Its input and output are
    float32."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise QuantParamError(f"input 0 of {node.op!r} must be a float32 tensor")
        params = prepare_linear_dynamic(
            node.arrays["weight"], qparams_from_fields(node.attrs, node.arrays, "weight"),
            node.arrays.get("bias"), bool(node.attrs.get("relu", False)), engine=engine,
            reduce_range=bool(node.attrs.get("reduce_range", False)))
        wanted = node.attrs.get("input_dtype", params.dynamic.dtype.name)
        if wanted != params.dynamic.dtype.name:
            raise QuantParamError(f"the model quantizes this Linear's input to {wanted}; "
                                  f"{params.dynamic.name} quantizes to "
                                  f"{params.dynamic.dtype.name}")
        return params, None

    run = staticmethod(lambda params, inputs: linear_dynamic(inputs[0], params))
    explain = staticmethod(lambda params, inputs, result, index: _explain_row(
        LinearDynamicOp.run, params, inputs, result, index))


# --- float16 weights (quantize_dynamic dtype=torch.float16) ---------------------------------


@dataclass(frozen=True, eq=False)
class Fp16LinearParams:
    """A Linear with float16 weights (``quantized::linear_dynamic_fp16``) prepared for one
    engine: ``weight`` (N, K) float16 as the packed matrix holds it, ``float_bias``, ``relu``,
    ``gemm`` (the engine's ``linear_fp16`` kernel), ``engine``, ``isa``."""

    weight: np.ndarray
    float_bias: np.ndarray | None
    relu: bool
    gemm: object
    engine: str
    isa: str
    weight_t: np.ndarray  # run-time cache: (K, N) float32 values of the fp16 weights

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> str:
        return self.gemm.name


def fp16_weight(weight, saturation: float = 65504.0) -> np.ndarray:
    """The float16 weight PyTorch packs: float16 as given, or float32 clamped to
    ``+-saturation`` (QuantUtils.h ``HandleWeightsSaturation``) and rounded to nearest even."""
    weight = np.asarray(weight)
    if weight.dtype == np.float16:
        return weight
    if weight.dtype != np.float32:
        raise ShapeError(f"fp16 Linear weight must be float16 or float32, got {weight.dtype}")
    with np.errstate(invalid="ignore"):
        return np.clip(weight, -saturation, saturation).astype(np.float16)


def prepare_linear_fp16(weight, bias=None, relu: bool = False, *, engine,
                        isa: str | None = None) -> Fp16LinearParams:
    """Validate a float16-weight Linear for ``engine``: ``weight`` (out, in) float16 (as
    ``linear_unpack_fp16`` gives it back, or float32 to be converted as PyTorch's prepack does),
    ``bias`` float32 (out,) or None. The engine states the GEMM (its ``linear_fp16`` family)."""
    engine = get_engine(engine, isa)
    gemm = engine.kernel("linear_fp16")
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ShapeError(f"weight must be (out_features, in_features), got {weight.shape}")
    weight = fp16_weight(weight, gemm.saturation)
    if not np.isfinite(weight).all():
        raise UnsupportedError(f"{gemm.name}: a weight holding NaN or an infinity")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.shape != (weight.shape[0],):
            raise ShapeError(f"bias must be float32 of shape ({weight.shape[0]},), got "
                             f"{bias.dtype} {bias.shape}")
    return Fp16LinearParams(weight, bias, bool(relu), gemm, engine.name, engine.isa,
                            np.ascontiguousarray(weight.T.astype(np.float32)))


def _fma_chain(x: np.ndarray, w_t: np.ndarray, start: int, stop: int, seed,
               unrolled: int = 0) -> np.ndarray:
    """``s = seed; s = fmaf(x[:, k], w[k, :], s)`` for k in [start, stop); ``seed`` None: the
    first step is the product ``f32(x * w)`` (a kernel with beta 0). ``unrolled`` 1 or 2: the
    AVX2 1- or 2-row kernel's extra accumulators (``Fp16GemmKernel.unrolled_tiles``)."""
    def step(k, acc):
        column, row = x[:, k, None], w_t[None, k, :]
        return f32(column * row) if acc is None else fma_float32(column, row, acc)

    acc = step(start, seed)
    extra = [np.zeros_like(acc) for _ in range({0: 0, 1: 3, 2: 1}[unrolled])]
    targets = {1: (0, 1, 2, 3), 2: (0, 1, 0, 1)}.get(unrolled, ())
    k = start + 1
    while targets and stop - k > 4:
        for offset, target in enumerate(targets):
            if target == 0:
                acc = step(k + offset, acc)
            else:
                extra[target - 1] = step(k + offset, extra[target - 1])
        k += 4
    for k in range(k, stop):
        acc = step(k, acc)
    for partial in extra:
        acc = f32(acc + partial)
    return acc


def linear_fp16(x: np.ndarray, params: Fp16LinearParams) -> np.ndarray:
    """Run the prepared fp16-weight Linear on float32 ``x`` (..., in): float32 (..., out)."""
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim < 1 or x.shape[-1] != params.in_features:
        raise ShapeError(f"an fp16-weight Linear takes float32 (..., {params.in_features}), "
                         f"got {x.dtype} {x.shape}")
    rows = x.reshape(-1, params.in_features)
    if not np.isfinite(rows).all():
        raise UnsupportedError(f"{params.gemm.name}: an input holding NaN or an infinity (the "
                               "NaN payloads the FMA chain propagates are not modelled)")
    depth, width = params.in_features, params.weight.shape[0]
    block_rows, block_cols = params.gemm.block_rows, params.gemm.block_cols
    full = width // block_cols * block_cols
    out = np.zeros((rows.shape[0], width), np.float32)
    blocks = [(start, min(start + block_rows, depth)) for start in range(0, depth, block_rows)]
    with np.errstate(over="ignore", invalid="ignore"):
        for first, last, unrolled in params.gemm.row_tiles(rows.shape[0]):
            tile = rows[first:last]
            if full:  # whole panels: later K blocks start from C (beta 1)
                acc = None
                for start, stop in blocks:
                    acc = _fma_chain(tile, params.weight_t[:, :full], start, stop, acc, unrolled)
                out[first:last, :full] = acc
            if full < width:  # the last partial panel: each K block alone, then added
                total = None
                for start, stop in blocks:  # later blocks: a zeroed scratch tile, fma onto +0
                    seed = None if total is None else np.zeros_like(total)
                    part = _fma_chain(tile, params.weight_t[:, full:], start, stop, seed,
                                      unrolled)
                    total = part if total is None else f32(total + part)
                out[first:last, full:] = total
        record("fp16 GEMM", params.gemm.name + ": fmaf chain over k of x * fp16(w) "
               "(panel columns past the last full panel: per K block of "
               f"{block_rows}, blocks added)", out)
        if params.float_bias is not None:
            out = apply_steps(out, (AddFloat32("bias, added after the GEMM (output.add_)",
                                               role="bias", term=f32(params.float_bias)),))
        if params.relu:
            out = apply_steps(out, (ClampFloat32("ReLU (output.relu_())", role="relu",
                                                 low=0.0),))
    return out.astype(np.float32).reshape(x.shape[:-1] + (width,))


@graph_op("linear_fp16", "Linear with float16 weights (float32 in and out; quantize_dynamic "
          "dtype=torch.float16)")
class LinearFp16Op:
    """Graph node: arrays ``weight`` ((out, in): float32 holding the float16 values PyTorch
    packed, as the file format stores them; float16 accepted too) and ``bias`` (float32,
    optional); attr ``relu``. Its input and output are float32."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise QuantParamError(f"input 0 of {node.op!r} must be a float32 tensor")
        params = prepare_linear_fp16(node.arrays["weight"], node.arrays.get("bias"),
                                     bool(node.attrs.get("relu", False)), engine=engine)
        return params, None

    run = staticmethod(lambda params, inputs: linear_fp16(inputs[0], params))
    explain = staticmethod(lambda params, inputs, result, index: _explain_row(
        LinearFp16Op.run, params, inputs, result, index))
