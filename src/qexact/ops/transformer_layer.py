"""Float32 ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` in inference, as ATen's
``torch._transformer_encoder_layer_fwd`` runs them on CPU (BERT-style encoders: FX leaves the
torch.nn modules whole and float between a dequantize and a quantize).

The layer's formula, its roundings and sources are in engines/aten_attention.py (the
``TRANSFORMER_LAYER`` text); its pieces are the ops already stated: the attention is
``multihead_attention`` (ops/attention.py), the feed-forward products are the ``"matmul"``
family's ``addmm`` (engines/aten_matmul.py ``mkl_addmm``: exact inside the measured MKL rule,
else refused unless ``allow_inexact=("matmul",)``), the norms ``float_layer_norm``
(ops/float_normalization.py) and the GELU the ``"gelu"`` family (ops/gelu.py). An encoder is its
layers in order, then its optional final LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten_attention import TRANSFORMER_LAYER_SOURCE
from ..engines.aten_matmul import mkl_addmm
from ..errors import ShapeError, UnsupportedError
from ..rounding import f32
from ..trace import record
from ._registry import graph_op, observed_stages
from .attention import (multihead_attention, prepare_multihead_attention,
                        prepare_scaled_dot_product_attention, scaled_dot_product_attention)
from .float_normalization import float_layer_norm, prepare_float_layer_norm
from .gelu import gelu, prepare_gelu
from .quantize import require_float32

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")
"""``relu`` and ``gelu`` (erf): the fast path's ``use_gelu`` false / true. ``nn.GELU`` takes the
fast path as ``"gelu"`` whatever its ``approximate`` (the kernel's ``at::gelu_`` is the erf form,
measured: ``nn.GELU(approximate="tanh")`` gives the erf layer's output bit for bit); only the
slow path runs ``"gelu_tanh"``."""

PATHS = ("fast", "slow")
"""``fast``: ``torch._transformer_encoder_layer_fwd``; ``slow``: the module's Python forward
(``TransformerEncoderLayer._sa_block``/``_ff_block``), where the attention is ``"native"``
(``nn.MultiheadAttention``'s own fast path) or ``"sdpa"`` (``F.multi_head_attention_forward``:
``linear`` in-projection, ``F.scaled_dot_product_attention``, ``linear`` out-projection)."""

LAYER_ARRAYS = ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias",
                "linear1_weight", "linear1_bias", "linear2_weight", "linear2_bias",
                "norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias")
"""A layer's arrays (float32; a node stores them as ``layers.<i>.<name>``)."""


@dataclass(frozen=True)
class TransformerLayerParams:
    """One prepared layer: ``attention`` (``MultiheadAttentionParams``), ``norm1``/``norm2``
    (``FloatLayerNormParams``), the feed-forward weights transposed (``w1`` (E, F), ``w2``
    (F, E)) and biases, ``activation`` (``"relu"``/``"gelu"``), ``gelu`` (``GeluParams`` or
    None), ``norm_first``, ``matmul``: the ``"matmul"`` family's ``FloatMatmul``."""

    attention: object
    norm1: object
    norm2: object
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    activation: str
    gelu: object
    norm_first: bool
    matmul: object
    path: str = "fast"
    sdpa: object = None
    """For the slow path's ``"sdpa"`` attention: ``ScaledDotProductAttentionParams``."""
    batch_first: bool = True
    in_proj_fused: bool = True
    """``"sdpa"`` attention: whether ``linear`` adds the in-projection bias inside the product
    (``addmm``, C = bias: a contiguous (T, B, E) input, batch_first=False) or after it
    (``matmul`` then ``add_``: the transposed view of a batch_first input)."""

    @property
    def inexact(self) -> str:
        return self.attention.inexact


def prepare_transformer_layer(arrays: dict, num_heads: int, *, norm_first: bool,
                              activation: str, eps: float, engine,
                              num_threads: int | None = None, library: bool = True,
                              eps2: float | None = None, path: str = "fast",
                              attention: str = "native",
                              batch_first: bool = True) -> TransformerLayerParams:
    """A float32 encoder layer for ``engine`` from its ``LAYER_ARRAYS``. ``eps2``: norm2's eps
    where it differs from norm1's; ``library``: whether PyTorch had oneDNN enabled (the GELU's
    path); ``path`` (``PATHS``), ``attention`` (``"native"``/``"sdpa"``, the slow path's) and
    ``batch_first`` (False: the input is (T, B, E)) say which of torch's paths runs."""
    from ..engines import get_engine
    from ..engines.aten import default_num_threads

    if activation not in ACTIVATIONS or (path == "fast" and activation == "gelu_tanh"):
        raise UnsupportedError(f"TransformerEncoderLayer activation {activation!r} is not "
                               f"supported; supported: {list(ACTIVATIONS)} (gelu_tanh: slow "
                               "path only)")
    if path not in PATHS or attention not in ("native", "sdpa") or (
            path == "fast" and (attention != "native" or not batch_first)) or (
            attention == "native" and not batch_first):
        raise UnsupportedError(f"TransformerEncoderLayer: path {path!r} with attention "
                               f"{attention!r} and batch_first={batch_first} is not a path "
                               "torch takes")
    missing = [name for name in LAYER_ARRAYS if name not in arrays]
    if missing:
        raise ShapeError(f"TransformerEncoderLayer: arrays {missing} are missing")
    a = {name: np.asarray(arrays[name], np.float32) for name in LAYER_ARRAYS}
    threads = int(num_threads or default_num_threads())
    attention_params = prepare_multihead_attention(a["in_proj_weight"], a["in_proj_bias"],
                                                   a["out_proj_weight"], a["out_proj_bias"],
                                                   num_heads, engine, threads)
    embed = a["out_proj_bias"].shape[0]
    hidden = a["linear1_bias"].shape[0]
    if (a["linear1_weight"].shape != (hidden, embed)
            or a["linear2_weight"].shape != (embed, hidden) or a["linear2_bias"].shape != (embed,)):
        raise ShapeError(f"TransformerEncoderLayer feed-forward weights must be ({hidden}, "
                         f"{embed}) and ({embed}, {hidden})")
    norms = [prepare_float_layer_norm((embed,), a[f"norm{i}_weight"], a[f"norm{i}_bias"],
                                      epsilon, engine=engine)
             for i, epsilon in ((1, eps), (2, eps if eps2 is None else eps2))]
    gelu_params = None if activation == "relu" else prepare_gelu(
        "tanh" if activation == "gelu_tanh" else "none", engine=engine, num_threads=threads,
        library=library)
    return TransformerLayerParams(
        attention_params, norms[0], norms[1], np.ascontiguousarray(a["linear1_weight"].T),
        a["linear1_bias"], np.ascontiguousarray(a["linear2_weight"].T), a["linear2_bias"],
        activation, gelu_params, bool(norm_first),
        get_engine(engine).kernel("matmul", threads), path,
        prepare_scaled_dot_product_attention(engine) if attention == "sdpa" else None,
        bool(batch_first), not batch_first)


def _addmm(matmul, bias, a, b) -> np.ndarray:
    """``at::addmm(bias, a, b)`` (``linear_for_ffn``): the matmul family's ``mkl_addmm``."""
    return mkl_addmm(bias, a, b, matmul.plan(a.shape, b.shape).kernel)


def _relu(x: np.ndarray) -> np.ndarray:
    """``at::relu_`` (``clamp_min(x, 0)``): negatives to +0; -0.0 and NaN kept (measured)."""
    return np.where(x < 0, np.float32(0), x).astype(np.float32)


def _sdpa_attention(x: np.ndarray, params: TransformerLayerParams) -> np.ndarray:
    """``F.multi_head_attention_forward`` (need_weights=False, no masks) on logical
    ``(B, T, E)``: in-projection by ``linear`` (``addmm`` with C = bias for a contiguous input,
    else ``matmul`` then ``add_`` of the bias), q/k/v split into heads, the SDPA flash kernel
    (scale 1/sqrt(d) inside it), heads merged, out-projection by ``addmm`` (C = bias). MKL's
    per-element order does not depend on the row order, so rows are taken in (B, T) order."""
    attention = params.attention
    batch, tokens, embed = x.shape
    heads = attention.num_heads
    depth = embed // heads
    rows = np.ascontiguousarray(x.reshape(batch * tokens, embed))
    if params.in_proj_fused:
        proj = _addmm(params.matmul, attention.in_bias, rows, attention.in_weight)
        formula = "qkv = addmm(b_in, x, W_in^T) (C = b_in)"
    else:
        plan = params.matmul.plan(rows.shape, attention.in_weight.shape)
        proj = f32(plan.kernel.compute(rows, attention.in_weight) + attention.in_bias)
        formula = "qkv = f32(matmul(x, W_in^T) + b_in) (linear on a transposed view)"
    proj = record("transformer layer: in-projection", formula, proj)
    q, k, v = (np.ascontiguousarray(proj.reshape(batch, tokens, 3, heads, depth)[:, :, i]
                                    .transpose(0, 2, 1, 3)) for i in range(3))
    context = scaled_dot_product_attention(q, k, v, params.sdpa)
    merged = np.ascontiguousarray(context.transpose(0, 2, 1, 3).reshape(batch * tokens, embed))
    out = _addmm(params.matmul, attention.out_bias, merged, attention.out_weight)
    return record("transformer layer: out-projection", "y = addmm(b_out, o, W_out^T)",
                  out.reshape(batch, tokens, embed))


def _attention(x, params: TransformerLayerParams) -> np.ndarray:
    if params.sdpa is not None:
        return _sdpa_attention(x, params)
    return multihead_attention(x, params.attention)[0]


def _feed_forward(h: np.ndarray, params: TransformerLayerParams) -> np.ndarray:
    batch, tokens, embed = h.shape
    rows = np.ascontiguousarray(h.reshape(batch * tokens, embed))
    hidden = _addmm(params.matmul, params.b1, rows, params.w1)
    hidden = record("transformer layer: linear1", "u = addmm(b1, x, W1^T) (MKL, C = b1)",
                    hidden)
    if params.gelu is not None:
        hidden = gelu(hidden, params.gelu)
    else:
        hidden = record("transformer layer: relu", "relu(u): u < 0 -> +0", _relu(hidden))
    out = _addmm(params.matmul, params.b2, hidden, params.w2).reshape(batch, tokens, embed)
    return record("transformer layer: linear2", "f = addmm(b2, a, W2^T) (MKL, C = b2)", out)


def transformer_layer(x: np.ndarray, params: TransformerLayerParams) -> np.ndarray:
    """The layer on float32 ``(B, T, E)`` (``(T, B, E)`` if not ``batch_first``):
    engines/aten_attention.py ``TRANSFORMER_LAYER``; the slow path computes the same sums
    (``x + sa(norm1(x))`` ...: float addition commutes)."""
    x = require_float32(x, "TransformerEncoderLayer input")
    embed = params.b2.shape[0]
    if x.ndim != 3 or x.shape[2] != embed:
        raise UnsupportedError(f"TransformerEncoderLayer: only batched 3-D inputs with "
                               f"{embed} features are supported; got {x.shape} (an unbatched "
                               "input takes torch's slow path with an unsqueezed batch)")
    if not params.batch_first:
        x = x.transpose(1, 0, 2)  # (T, B, E) -> logical (B, T, E); the values do not move
    record("transformer layer: kernel", "torch._transformer_encoder_layer_fwd"
           if params.path == "fast" else "TransformerEncoderLayer's slow path", None,
           kernel=TRANSFORMER_LAYER_SOURCE, norm_first=params.norm_first,
           activation=params.activation,
           attention="multi_head_attention_forward + sdpa" if params.sdpa is not None
           else "native_multi_head_attention")
    src = np.ascontiguousarray(x)
    with np.errstate(all="ignore"):
        h = float_layer_norm(src, params.norm1) if params.norm_first else src
        h = _attention(h, params)
        h = record("transformer layer: attention residual", "x1 = f32(attn + src)",
                   f32(h + src))
        if not params.norm_first:
            h = float_layer_norm(h, params.norm1)
        residual = h
        if params.norm_first:
            h = float_layer_norm(h, params.norm2)
        out = _feed_forward(h, params)
        out = record("transformer layer: feed-forward residual", "x2 = f32(f + x1)",
                     f32(out + residual))
        if not params.norm_first:
            out = float_layer_norm(out, params.norm2)
    return out if params.batch_first else np.ascontiguousarray(out.transpose(1, 0, 2))


@dataclass(frozen=True)
class TransformerEncoderParams:
    """``layers`` (``TransformerLayerParams``, run in order) and ``norm`` (the encoder's final
    ``FloatLayerNormParams``, or None)."""

    layers: tuple
    norm: object

    @property
    def inexact(self) -> str:
        return next((layer.inexact for layer in self.layers if layer.inexact), "")


def transformer_encoder(x: np.ndarray, params: TransformerEncoderParams) -> np.ndarray:
    """``nn.TransformerEncoder(x)`` without masks: each layer's fast path in turn (the dense
    path: no ``src_key_padding_mask``, so no nested tensor), then the final norm."""
    for layer in params.layers:
        x = transformer_layer(x, layer)
    if params.norm is not None:
        x = float_layer_norm(x, params.norm)
    return x


def prepare_transformer_encoder_node(attrs: dict, arrays: dict, engine) -> \
        TransformerEncoderParams:
    threads = attrs.get("num_threads")
    library = attrs.get("library", True)
    layers = []
    for i, layer in enumerate(attrs["layers"]):
        prefix = f"layers.{i}."
        own = {name[len(prefix):]: value for name, value in arrays.items()
               if name.startswith(prefix)}
        layers.append(prepare_transformer_layer(
            own, layer["num_heads"], norm_first=layer["norm_first"],
            activation=layer["activation"], eps=layer["eps"], eps2=layer.get("eps2"),
            engine=engine, num_threads=threads, library=library,
            path=layer.get("path", "fast"), attention=layer.get("attention", "native"),
            batch_first=layer.get("batch_first", True)))
    if not layers:
        raise ShapeError("transformer_encoder needs at least one layer")
    norm = attrs.get("norm")
    norm_params = None if norm is None else prepare_float_layer_norm(
        norm["normalized_shape"], arrays.get("norm.weight"), arrays.get("norm.bias"),
        norm["eps"], engine=engine)
    return TransformerEncoderParams(tuple(layers), norm_params)


def _run(params, inputs):
    return transformer_encoder(inputs[0], params)


@graph_op("transformer_encoder", "float32 nn.TransformerEncoderLayer / nn.TransformerEncoder "
          "in inference (no masks): torch._transformer_encoder_layer_fwd's CPU kernel per layer")
class TransformerEncoderOp:
    """Graph node: one float32 input ``(B, T, E)``. Attrs ``layers``: one dict per layer
    (``num_heads``, ``norm_first``, ``activation`` (``ACTIVATIONS``), ``eps``, optional
    ``eps2``, ``path`` (``PATHS``), ``attention`` (``"native"``/``"sdpa"``), ``batch_first``);
    ``norm``: the final LayerNorm (``normalized_shape``, ``eps``) or None;
    ``num_threads``; ``library`` (oneDNN enabled: GELU's path). Arrays ``layers.<i>.<name>``
    (``LAYER_ARRAYS``) and ``norm.weight``/``norm.bias``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise ShapeError(f"{node.name}: a TransformerEncoder takes a float32 input")
        return prepare_transformer_encoder_node(node.attrs, node.arrays, engine), None

    run = staticmethod(_run)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run, params, inputs, result, index), []
