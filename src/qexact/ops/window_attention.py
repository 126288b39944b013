"""Swin's shifted-window attention and its helpers, as torchvision computes them in float32.

torchvision (torchvision/models/swin_transformer.py) registers three functions with
``torch.fx.wrap``, so FX graph-mode quantization keeps each as one call and leaves it float32
(its weights are read as Parameters, its Linears never called as modules):

- ``_get_relative_position_bias(table, index, window_size)`` (op ``relative_position_bias``):
  ``table[index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)`` with ``N = wh * ww``; it moves
  values and computes none;
- ``_patch_merging_pad(x)`` (op ``patch_merging_pad``): ``F.pad`` to even H and W, then the
  four strided quarters ``x[..., 0::2, 0::2, :]``, ``[1::2, 0::2]``, ``[0::2, 1::2]``,
  ``[1::2, 1::2]`` concatenated along channels; values moved, none computed;
- ``shifted_window_attention(x, qkv_weight, proj_weight, bias, window_size, num_heads,
  shift_size, ...)`` (op ``window_attention``), step by step on ``x`` of shape (B, H, W, C)::

      x = F.pad(x) to multiples of the window;  shift set to 0 where the window covers the map
      x = roll(x, -shift)            (when sum(shift) > 0)
      x = windows of x, (B * nW, N, C)
      qkv = F.linear(x, W_qkv, b_qkv)      addmm: C = b, then C = f32(C + chain) for each of
                                            MKL's k-blocks (float_linear; measured bit-equal)
      q = f32(q * f32((C // heads) ** -0.5))
      attn = q @ k^T                        ATen's float matmul (engines/aten_matmul.py)
      attn = f32(attn + bias)               the relative-position bias (1, heads, N, N)
      attn = f32(attn + mask)               (sum(shift) > 0) mask 0.0 or -100.0 between the
                                            shifted regions
      attn = softmax(attn, -1)              ATen's float softmax (ops/softmax.py)
      x = (attn @ v) to (B * nW, N, C);  x = F.linear(x, W_proj, b_proj)
      x = windows reversed;  roll(x, +shift);  x[:, :H, :W, :]

  dropout runs only in training (refused with p > 0); Swin V2's cosine attention
  (``logit_scale``) is refused. The products use the engine's ``"matmul"`` kernel: inside
  MKL's measured rule (M >= 4, N >= 12, K <= 1300) they are exact; others are refused unless
  the user allows ``"matmul"`` (then NumPy's order, marked inexact). The shapes are known only
  at run time, so a product outside the rule raises there when not allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten_matmul import mkl_k_blocks
from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ..rounding import f32
from ..stages import Stage
from ..trace import record
from ._registry import graph_op
from .matmul import MatmulParams, float_matmul, prepare_matmul
from .quantize import require_float32
from .shape import pad_constant
from .softmax import SoftmaxParams, prepare_softmax, softmax_float

MASK_FILL = np.float32(-100.0)
"""torchvision's attention mask between tokens of different shifted regions."""


# --- _get_relative_position_bias and _patch_merging_pad -------------------------------------


def relative_position_bias(table: np.ndarray, index: np.ndarray, window_size) -> np.ndarray:
    """``table[index].view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)``."""
    table, index = require_float32(table, "window attention: the bias table"), np.asarray(index)
    if index.dtype.kind not in "iu":
        raise ShapeError(f"relative position index must be integers, got {index.dtype}")
    tokens = int(window_size[0]) * int(window_size[1])
    if index.size != tokens * tokens:
        raise ShapeError(f"relative position index has {index.size} entries, the window "
                         f"{list(window_size)} needs {tokens * tokens}")
    picked = table[index.reshape(-1)]
    return np.ascontiguousarray(picked.reshape(tokens, tokens, -1).transpose(2, 0, 1))[None]


def patch_merging_pad(x):
    """torchvision's ``_patch_merging_pad``: pad H and W to even (``F.pad`` with 0; a
    quantized tensor takes the zero point), cat the four strided quarters along channels."""
    values = x.values if isinstance(x, QuantizedArray) else np.asarray(x)
    if values.ndim < 3:
        raise ShapeError(f"_patch_merging_pad takes (..., H, W, C), got shape {values.shape}")
    height, width = values.shape[-3:-1]
    padded = pad_constant(x, (0, 0, 0, width % 2, 0, height % 2))
    values = padded.values if isinstance(padded, QuantizedArray) else padded
    quarters = [values[..., 0::2, 0::2, :], values[..., 1::2, 0::2, :],
                values[..., 0::2, 1::2, :], values[..., 1::2, 1::2, :]]
    out = np.ascontiguousarray(np.concatenate(quarters, axis=-1))
    return QuantizedArray(out, x.qparams) if isinstance(x, QuantizedArray) else out


@graph_op("relative_position_bias", "torchvision's _get_relative_position_bias: a bias table "
          "indexed by the relative-position index, as (1, heads, N, N) (attr window_size)")
class RelativePositionBiasOp:
    """Graph node: inputs (table, index); attr ``window_size``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams[:2]):
            raise ShapeError("_get_relative_position_bias takes a float32 table")
        return tuple(int(size) for size in node.attrs["window_size"]), None

    @staticmethod
    def run(window_size, inputs):
        return relative_position_bias(inputs[0], inputs[1], window_size)

    @staticmethod
    def explain(window_size, inputs, result, index):
        return [Stage("relative position bias", "table[index[i, j], head]", {},
                      np.asarray(result)[tuple(index)])], []


@graph_op("patch_merging_pad", "torchvision's _patch_merging_pad: pad H, W to even, cat the "
          "four 2x2 strided quarters along channels (float32 or quantized)")
class PatchMergingPadOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, (input_qparams[0] if input_qparams else None)

    @staticmethod
    def run(params, inputs):
        return patch_merging_pad(inputs[0])

    @staticmethod
    def explain(params, inputs, result, index):
        values = result.values if isinstance(result, QuantizedArray) else np.asarray(result)
        return [Stage("patch merging pad", "x[..., 2i + dh, 2j + dw, c] (quarter dh, dw of the "
                      "channel block), 0 where padded", {}, values[tuple(index)])], []


# --- shifted_window_attention ----------------------------------------------------------------


@dataclass(frozen=True)
class WindowAttentionParams:
    """torchvision's ``shifted_window_attention`` prepared for one engine: ``window_size``
    (wh, ww), ``num_heads``, ``shift_size`` (before it is cleared where the window covers the
    map), ``matmul`` (the float matmul: F.linear's mm and the batched products) and
    ``softmax`` (ATen's float softmax)."""

    window_size: tuple[int, int]
    num_heads: int
    shift_size: tuple[int, int]
    matmul: MatmulParams
    softmax: SoftmaxParams

    @property
    def inexact(self) -> str:
        return self.matmul.inexact


def prepare_window_attention(window_size, num_heads: int, shift_size, engine,
                             num_threads: int | None = None) -> WindowAttentionParams:
    window_size = tuple(int(size) for size in window_size)
    shift_size = tuple(int(size) for size in shift_size)
    if len(window_size) != 2 or len(shift_size) != 2:
        raise ShapeError("window_size and shift_size must be of length 2")
    if min(window_size) < 1 or min(shift_size) < 0 or int(num_heads) < 1:
        raise ShapeError(f"window attention: window {window_size}, shift {shift_size} and "
                         f"{num_heads} heads are not valid")
    return WindowAttentionParams(window_size, int(num_heads), shift_size,
                                 prepare_matmul(engine, num_threads),
                                 prepare_softmax(-1, engine=engine))


def float_linear(x: np.ndarray, weight: np.ndarray, bias, matmul: MatmulParams) -> np.ndarray:
    """``F.linear(x, weight, bias)`` on float32: ATen folds ``x`` to ``(rows, K)`` and runs
    ``addmm(bias, x, weight^T)`` (``mm`` without bias), MKL's sgemm with ``beta = 1``: ``C``
    starts at the bias and each k-block's FMA chain is added to it,
    ``C = f32(f32(b + chain[0, h)) + chain[h, 2h))`` (measured bit-equal: K = 193..384, rows
    8..49, columns 24..1152; for K <= 192 it is ``f32(b + chain)``; K = 385..1300, 70 random
    shapes, 0 of 110,931 outputs differ). A product outside the engine's rule (refused unless
    allowed) runs whole, then the bias is added."""
    rows = x.reshape(-1, x.shape[-1])
    columns = weight.T
    plan = matmul.kernel.plan(rows.shape, columns.shape)
    if bias is None:
        out = float_matmul(rows, columns, matmul)
    elif plan.kernel.order != "fma":  # inexact (allowed): NumPy's order, the bias after
        with np.errstate(all="ignore"):
            out = f32(float_matmul(rows, columns, matmul) + bias)
    else:
        out = np.broadcast_to(bias, plan.output_shape).astype(np.float32)
        with np.errstate(all="ignore"):
            for start, stop in mkl_k_blocks(rows.shape[1]):
                chain = float_matmul(rows[:, start:stop], columns[start:stop], matmul)
                out = f32(out + chain)
                record("linear: k-block", "C = f32(C + chain[{start}, {stop}))", out,
                       start=start, stop=stop)
    return out.reshape(x.shape[:-1] + (weight.shape[0],))


def shift_mask(padded_height: int, padded_width: int, window_size, shift_size) -> np.ndarray:
    """torchvision's attention mask (nW, N, N): 0.0 between tokens of one shifted region, else
    -100.0 (regions numbered by the slices ``(0, -w), (-w, -s), (-s, None)`` per axis)."""
    wh, ww = window_size
    regions = np.zeros((padded_height, padded_width), np.float32)
    h_slices = ((0, -wh), (-wh, -shift_size[0]), (-shift_size[0], None))
    w_slices = ((0, -ww), (-ww, -shift_size[1]), (-shift_size[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            regions[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    regions = regions.reshape(padded_height // wh, wh, padded_width // ww, ww)
    regions = regions.transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    difference = regions[:, None, :] - regions[:, :, None]
    return np.where(difference != 0, MASK_FILL, np.float32(0.0)).astype(np.float32)


def window_attention(x, qkv_weight, proj_weight, position_bias, qkv_bias, proj_bias,
                     params: WindowAttentionParams) -> np.ndarray:
    """``shifted_window_attention`` of torchvision on float32 arrays (module docstring)."""
    x = require_float32(x, "window attention: the input")
    qkv_weight, proj_weight = require_float32(qkv_weight, "window attention: qkv_weight"), require_float32(proj_weight, "window attention: proj_weight")
    position_bias = require_float32(position_bias, "window attention: the relative position bias")
    qkv_bias = None if qkv_bias is None else require_float32(qkv_bias, "window attention: qkv_bias")
    proj_bias = None if proj_bias is None else require_float32(proj_bias, "window attention: proj_bias")
    if x.ndim != 4:
        raise ShapeError(f"shifted_window_attention takes (B, H, W, C), got shape {x.shape}")
    batch, height, width, channels = x.shape
    heads = params.num_heads
    if channels % heads or qkv_weight.shape != (3 * channels, channels) \
            or proj_weight.shape != (channels, channels):
        raise ShapeError(f"window attention: {channels} channels, {heads} heads, qkv weight "
                         f"{qkv_weight.shape}, proj weight {proj_weight.shape} do not fit")
    wh, ww = params.window_size
    pad_r, pad_b = (ww - width % ww) % ww, (wh - height % wh) % wh
    x = pad_constant(x, (0, 0, 0, pad_r, 0, pad_b))
    padded_height, padded_width = x.shape[1:3]
    shift = [params.shift_size[0] if wh < padded_height else 0,
             params.shift_size[1] if ww < padded_width else 0]
    shifted = sum(shift) > 0
    if shifted:
        x = np.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    windows = (padded_height // wh) * (padded_width // ww)
    tokens, head_dim = wh * ww, channels // heads
    x = x.reshape(batch, padded_height // wh, wh, padded_width // ww, ww, channels)
    x = np.ascontiguousarray(x.transpose(0, 1, 3, 2, 4, 5)).reshape(batch * windows, tokens,
                                                                     channels)
    with np.errstate(all="ignore"):
        qkv = float_linear(x, qkv_weight, qkv_bias, params.matmul)
        qkv = qkv.reshape(batch * windows, tokens, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scale = np.float32(float(head_dim) ** -0.5)  # a Python float, cast to the tensor's dtype
        q = record("window attention: scaled q", "q = f32(q * f32(d ** -0.5))", f32(q * scale))
        attn = float_matmul(q, k.swapaxes(-2, -1), params.matmul)
        attn = record("window attention: + position bias", "a = f32(a + bias)",
                      f32(attn + position_bias))
        if shifted:
            mask = shift_mask(padded_height, padded_width, params.window_size, shift)
            attn = attn.reshape(batch, windows, heads, tokens, tokens) + mask[None, :, None]
            attn = record("window attention: + shift mask", "a = f32(a + mask) (0 or -100)",
                          f32(attn).reshape(-1, heads, tokens, tokens))
        attn = softmax_float(attn, -1, params.softmax.kernel)
        x = float_matmul(attn, v, params.matmul)
        x = np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(batch * windows, tokens,
                                                                   channels)
        x = float_linear(x, proj_weight, proj_bias, params.matmul)
    x = x.reshape(batch, padded_height // wh, padded_width // ww, wh, ww, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, padded_height, padded_width, channels)
    if shifted:
        x = np.roll(x, (shift[0], shift[1]), axis=(1, 2))
    return np.ascontiguousarray(x[:, :height, :width, :])


def _run(params, inputs):
    return window_attention(*inputs[:6], params)


@graph_op("window_attention", "torchvision's shifted_window_attention in float32: F.linear, "
          "roll, window partition, q @ k^T, position bias, shift mask, softmax, @ v (ATen's "
          "float kernels)")
class WindowAttentionOp:
    """Graph node: inputs (x, qkv_weight, proj_weight, relative_position_bias, qkv_bias,
    proj_bias), the biases None when absent; attrs ``window_size``, ``num_heads``,
    ``shift_size``, ``num_threads``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams[:6]):
            raise UnsupportedError("torchvision's shifted_window_attention takes float32 "
                                   "tensors (FX leaves it float between a dequantize and a "
                                   "quantize)")
        a = node.attrs
        return prepare_window_attention(a["window_size"], a["num_heads"], a["shift_size"],
                                        engine, a.get("num_threads")), None

    @staticmethod
    def run(params, inputs):
        return _run(params, inputs)

    @staticmethod
    def explain(params, inputs, result, index):
        return _explain(params, inputs, result, index), []


def _explain(params, inputs, result, index) -> list[Stage]:
    """Element ``(b, h, w, c)``: its window and token, and the projection that gives it (the
    run observed: the last product and bias of the run are ``F.linear(x, W_proj, b_proj)``)."""
    from ..trace import observe

    with observe() as trace:
        again = _run(params, inputs)
    if not np.array_equal(np.asarray(result), again, equal_nan=True):
        raise ShapeError("explain: running the op again gave a different output")
    b, h, w, c = (int(i) for i in index)
    height, width = np.asarray(inputs[0]).shape[1:3]
    wh, ww = params.window_size
    padded_height, padded_width = height + (wh - height % wh) % wh, width + (ww - width % ww) % ww
    shift = [params.shift_size[0] if wh < padded_height else 0,
             params.shift_size[1] if ww < padded_width else 0]
    row, column = (h - shift[0]) % padded_height, (w - shift[1]) % padded_width
    across = padded_width // ww
    window = (b * (padded_height // wh) + row // wh) * across + column // ww
    token = (row % wh) * ww + column % ww
    stages = [Stage("window attention: place", "the window and token of this element after "
                    "padding and the cyclic shift",
                    {"window": window, "token": token, "shift": list(shift),
                     "window_size": list(params.window_size), "num_heads": params.num_heads,
                     "matmul": params.matmul.kernel.name,
                     "softmax": params.softmax.kernel.name})]
    if inputs[5] is not None:  # the start of C in F.linear's addmm
        stages.append(Stage("window attention: proj bias", "b[c]", {},
                            np.asarray(inputs[5])[c][()]))
    softmax_at = max(i for i, event in enumerate(trace.events)
                     if event.label.startswith("softmax"))
    later = [event for event in trace.events[softmax_at + 1:]
             if event.label in ("matmul: float32 product", "linear: k-block")][1:]
    row = window * wh * ww + token  # the row of F.linear(x, W_proj, b_proj)
    for event in later:  # the projection's products (one per k-block) and the bias sums
        value = np.asarray(event.result).reshape(-1, np.shape(event.result)[-1])[row, c][()]
        name = ("window attention: projection product" if event.label.startswith("matmul")
                else "window attention: projection + bias")
        stages.append(Stage(name, event.formula.format(**{k: v for k, v in event.values.items()
                                                          if np.ndim(v) == 0}),
                            {key: item for key, item in event.values.items()
                             if np.ndim(item) == 0}, value))
    return stages
