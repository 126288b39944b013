"""Float32 attention as ATen runs it on CPU: ``nn.MultiheadAttention`` in inference (its fast
path, ``torch._native_multi_head_attention``) and ``F.scaled_dot_product_attention`` (the
flash-attention kernel). FX conversion leaves both in float32 between a dequantize and a
quantize (torchvision's ``vit_b_16``).

The formulas, each rounding and their sources are in engines/aten_attention.py (the
``"attention"`` family); the products are the ``"matmul"`` family's (engines/aten_matmul.py):
exact inside the measured MKL rule, else refused unless ``allow_inexact=("matmul",)``. Shapes
are known only at run time, so a product outside the rule raises there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten_matmul import mkl_addmm
from ..errors import ShapeError, UnsupportedError
from ..rounding import f32
from ..trace import record
from ._registry import graph_op, observed_stages
from .quantize import require_float32
from .softmax import softmax_float


def _product(kernel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` by the ``"matmul"`` family's kernel for these shapes (raises outside the
    measured rule unless allowed)."""
    plan = kernel.plan(a.shape, b.shape)
    return plan.kernel.compute(np.ascontiguousarray(a), np.ascontiguousarray(b))


def _addmm(kernel, bias, a, b) -> np.ndarray:
    """``addmm(bias, a, b)`` as ATen's at::linear runs it (the matmul family's ``mkl_addmm``)."""
    plan = kernel.plan(a.shape, b.shape)
    return mkl_addmm(bias, np.ascontiguousarray(a), np.ascontiguousarray(b), plan.kernel)


# --- nn.MultiheadAttention ---------------------------------------------------------------------


@dataclass(frozen=True)
class MultiheadAttentionParams:
    """``nn.MultiheadAttention`` (batch_first, packed in-projection) prepared for one engine:
    weights ``in_weight`` (3E, E), ``in_bias`` (3E), ``out_weight`` (E, E), ``out_bias`` (E);
    ``num_heads``; ``kernel``: the engine's ``AttentionKernel``."""

    in_weight: np.ndarray
    in_bias: np.ndarray
    out_weight: np.ndarray
    out_bias: np.ndarray
    num_heads: int
    kernel: object

    @property
    def inexact(self) -> str:
        return self.kernel.inexact


def prepare_multihead_attention(in_weight, in_bias, out_weight, out_bias, num_heads: int,
                                engine, num_threads: int | None = None):
    from ..engines import get_engine
    from ..engines.aten import default_num_threads

    in_weight, in_bias = (np.asarray(a, np.float32) for a in (in_weight, in_bias))
    out_weight, out_bias = (np.asarray(a, np.float32) for a in (out_weight, out_bias))
    embed = out_weight.shape[0]
    num_heads = int(num_heads)
    if (in_weight.shape != (3 * embed, embed) or in_bias.shape != (3 * embed,)
            or out_weight.shape != (embed, embed) or out_bias.shape != (embed,)):
        raise ShapeError("MultiheadAttention weights must be in_proj (3E, E), (3E,) and "
                         "out_proj (E, E), (E,)")
    if num_heads < 1 or embed % num_heads:
        raise ShapeError(f"embed_dim {embed} is not divisible by num_heads {num_heads}")
    kernel = get_engine(engine).kernel("attention", int(num_threads or default_num_threads()))
    return MultiheadAttentionParams(np.ascontiguousarray(in_weight.T), in_bias,
                                    np.ascontiguousarray(out_weight.T), out_bias, num_heads,
                                    kernel)


def multihead_attention(x: np.ndarray, params: MultiheadAttentionParams):
    """``mha(x, x, x)`` on float32 ``(B, T, E)``: ``(output, None)`` (engines/aten_attention.py,
    native_multi_head_attention_cpu). The head-averaged weights (``need_weights=True``:
    ``at::sum`` over heads, then ``/ H``) are not produced: ATen's outer-dim sum order was not
    reproduced (a sequential sum differs on 5 of 5,000 elements for 8 heads)."""
    x = require_float32(x, "MultiheadAttention input")
    if x.ndim != 3 or x.shape[2] != params.out_bias.shape[0]:
        raise ShapeError(f"MultiheadAttention expects (batch, tokens, "
                         f"{params.out_bias.shape[0]}), got {x.shape}")
    batch, tokens, embed = x.shape
    heads = params.num_heads
    depth = embed // heads
    kernel = params.kernel
    record("attention: kernel", "the kernel of every element", None, kernel=kernel.name)
    with np.errstate(all="ignore"):
        qkv = _product(kernel.matmul, x.reshape(batch * tokens, embed), params.in_weight)
        qkv = record("attention: in-projection", "x @ W_in^T (ATen matmul, no bias)",
                     qkv.reshape(batch, tokens, 3, heads, depth))
        bias = params.in_bias.reshape(3, heads, depth)
        rescale = np.float32(1.0 / float(np.sqrt(np.float32(depth), dtype=np.float32)))
        q = f32(f32(qkv[:, :, 0] + bias[0]) * rescale).transpose(0, 2, 1, 3)
        k = f32(qkv[:, :, 1] + bias[1]).transpose(0, 2, 1, 3)
        v = f32(qkv[:, :, 2] + bias[2]).transpose(0, 2, 1, 3)
        scores = _product(kernel.matmul, q.reshape(batch * heads, tokens, depth),
                          k.reshape(batch * heads, tokens, depth).transpose(0, 2, 1))
        scores = record("attention: scores", "s = bmm(f32(f32(q + b_q) * c), (k + b_k)^T), "
                        "c = f32(1 / sqrtf(d))", scores.reshape(batch, heads, tokens, tokens),
                        c=rescale)
        probs = softmax_float(scores, -1, kernel.softmax)
        context = _product(kernel.matmul, probs.reshape(batch * heads, tokens, tokens),
                           v.reshape(batch * heads, tokens, depth))
        merged = context.reshape(batch, heads, tokens, depth).transpose(0, 2, 1, 3)
        merged = record("attention: context", "o = bmm(p, v + b_v), heads merged (B, T, E)",
                        np.ascontiguousarray(merged.reshape(batch, tokens, embed)))
        merged = merged.reshape(batch * tokens, embed)
        out = _addmm(kernel.matmul, params.out_bias, merged, params.out_weight)
        out = record("attention: output", "y = addmm(b_out, o, W_out^T): C = b_out, each K "
                     "block's FMA chain added in order", out.reshape(batch, tokens, embed))
    return out, None


def _run_mha(params, inputs):
    return multihead_attention(inputs[0], params)[0]


@graph_op("multihead_attention", "float32 nn.MultiheadAttention in inference (batch_first "
          "self-attention, no masks): torch._native_multi_head_attention's CPU kernel")
class MultiheadAttentionOp:
    """Graph node: one float32 input ``(B, T, E)``; attrs ``num_heads``, ``num_threads``; arrays
    ``in_proj_weight``, ``in_proj_bias``, ``out_proj_weight``, ``out_proj_bias``. The output is
    the module's pair ``(attention output, None)``: the weights are not produced."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise ShapeError("nn.MultiheadAttention takes a float32 input")
        arrays = node.arrays
        return prepare_multihead_attention(
            arrays["in_proj_weight"], arrays["in_proj_bias"], arrays["out_proj_weight"],
            arrays["out_proj_bias"], node.attrs["num_heads"], engine,
            node.attrs.get("num_threads")), None

    @staticmethod
    def run(params, inputs):
        return multihead_attention(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        index = tuple(int(i) for i in index)
        if isinstance(result, tuple):  # reached through getitem: (piece, element index)
            if index[0] != 0:
                raise UnsupportedError("the attention weights are not produced")
            result, index = result[0], index[1:]
        return observed_stages(_run_mha, params, inputs, result, index), []


# --- F.scaled_dot_product_attention ------------------------------------------------------------


@dataclass(frozen=True)
class ScaledDotProductAttentionParams:
    """``F.scaled_dot_product_attention`` (no mask, no dropout, not causal) for one engine:
    ``scale`` (None: 1/sqrt(d)) and the ``AttentionKernel``."""

    scale: float | None
    kernel: object

    @property
    def inexact(self) -> str:
        return self.kernel.inexact


def prepare_scaled_dot_product_attention(engine, scale=None) -> ScaledDotProductAttentionParams:
    from ..engines import get_engine

    return ScaledDotProductAttentionParams(None if scale is None else float(scale),
                                           get_engine(engine).kernel("attention", 1))


def _lane_sum(values: np.ndarray, lanes: int) -> np.ndarray:
    """``_exp_reduce_sum_fusion_kernel``'s sum: lane sums over whole vectors, the shuffle tree
    (lane i with i ^ h, h = lanes/2 .. 1), then the tail elements one by one."""
    rows, size = values.shape
    full = size - size % lanes
    acc = np.zeros((rows, lanes), np.float32)
    for start in range(0, full, lanes):
        acc = f32(acc + values[:, start:start + lanes])
    half = lanes // 2
    while half >= 1:
        acc = f32(acc + acc[:, np.arange(lanes) ^ half])
        half //= 2
    total = acc[:, 0]
    for i in range(full, size):
        total = f32(total + values[:, i])
    return total


def _flash_block(q, k, v, scale, kernel):
    """One block of query rows against all keys (one key block)."""
    scores = f32(_product(kernel.block_matmul, q, k.T) * scale)
    top = scores.max(axis=1, keepdims=True)
    shifted = f32(scores - top)
    size = shifted.shape[1]
    full = size - size % kernel.lanes
    exps = np.empty_like(shifted)
    exps[:, :full] = kernel.vector_exp(shifted[:, :full])
    exps[:, full:] = kernel.scalar_exp(shifted[:, full:])
    total = _lane_sum(exps, kernel.lanes)
    record("attention: exp", "e = exp_u20(f32(f32(q k * scale) - m)) (scalar tail: "
           "f32(exp(z)))", None)
    out = _product(kernel.block_matmul, exps, v)
    return f32(out * f32(np.float32(1) / total)[:, None])


def scaled_dot_product_attention(q, k, v, params: ScaledDotProductAttentionParams):
    """``F.scaled_dot_product_attention(q, k, v)`` on float32 ``(..., L, d)``, ``(..., S, d)``,
    ``(..., S, d)`` (4-D, batch and heads equal) by the flash kernel."""
    q, k, v = (require_float32(a, "scaled_dot_product_attention input") for a in (q, k, v))
    if q.ndim != 4 or k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise UnsupportedError(f"scaled_dot_product_attention: only 4-D q, k, v with one batch, "
                               f"head count and head size are supported; got {q.shape}, "
                               f"{k.shape}, {v.shape}")
    kernel = params.kernel
    batch, heads, rows, depth = q.shape
    keys = k.shape[2]
    if keys > kernel.kv_split:
        kernel.refuse(f"F.scaled_dot_product_attention with {keys} keys (> {kernel.kv_split}) "
                      "runs the flash kernel's rescaling of the running sum and output between "
                      "key blocks, which qexact has not measured")
    scale = np.float32(params.scale if params.scale is not None
                       else 1.0 / np.sqrt(float(depth)))
    split = min(kernel.q_split(rows), rows)
    record("attention: kernel", "the kernel of every element", None, kernel=kernel.name,
           q_split=split)
    out = np.empty(q.shape, np.float32)
    with np.errstate(all="ignore"):
        for b in range(batch):
            for h in range(heads):
                for start in range(0, rows, split):
                    out[b, h, start:start + split] = _flash_block(
                        q[b, h, start:start + split], k[b, h], v[b, h], scale, kernel)
    return record("attention: output", "out = f32(gemm(e, v) * f32(1 / sum(e)))", out)


def _run_sdpa(params, inputs):
    return scaled_dot_product_attention(*inputs[:3], params)


@graph_op("scaled_dot_product_attention", "float32 F.scaled_dot_product_attention (no mask, "
          "no dropout, not causal): ATen's CPU flash-attention kernel")
class ScaledDotProductAttentionOp:
    """Graph node: float32 ``q``, ``k``, ``v``; attr ``scale`` (None: 1/sqrt(d))."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams[:3]):
            raise ShapeError("scaled_dot_product_attention takes float32 tensors")
        return prepare_scaled_dot_product_attention(engine, node.attrs.get("scale")), None

    @staticmethod
    def run(params, inputs):
        return _run_sdpa(params, inputs)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run_sdpa, params, inputs, result, index), []
