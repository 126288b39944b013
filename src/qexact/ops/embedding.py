"""Quantized embedding lookups: ``torch.ao.nn.quantized.Embedding`` and ``EmbeddingBag``
(``quantized::embedding_byte``/``embedding_4bit``, ``embedding_bag_byte``/``embedding_bag_4bit``
and their ``*_rowwise_offsets`` forms on a uint8 tensor of packed rows).

The weight is a table of packed rows, as PyTorch stores it (pytorch
aten/src/ATen/native/quantized/cpu/qembeddingbag_prepack.cpp, ``PackedEmbeddingBagWeight``):

    8-bit (quint8):    | D codes (uint8)          | scale (float32) | bias (float32) |
    4-bit (quint4x2):  | D/2 bytes, code j in the | scale (float16) | bias (float16) |
                       | low nibble for even j    |                 |                |

all little-endian; a row dequantizes as ``scale * q + bias``. qexact keeps the rows as stored
(node array ``rows``) and reads them in ``prepare``; ``pack_rows`` builds them from a per-row
float-qparams tensor the way PyTorch's module prepack does (``bias = -f32(zero_point * scale)``,
4-bit: both rounded to float16, ties to even), for importers.

A lookup sums rows per bag, in the kernel's order and roundings (engines/aten_embedding.py,
family ``"embedding_bag"``):

    acc = +0.0;  for each index i of the bag: acc = fmaf(q_r, scale_i, f32(acc + bias_i))

with ``scale_i = f32(w_i * s_r)``, ``bias_i = f32(w_i * b_r)`` when per-sample weights ``w``
are given, else ``s_r``, ``b_r``. PyTorch's quantized ops always sum: ``mode`` ("mean", "max")
is recorded but not read by PyTorch, so neither by qexact (``EmbeddingBagParams.note``), and a
float module's ``padding_idx`` is not carried to the quantized module (its row is summed like
any other). Inputs PyTorch answers with undefined values (offsets not starting at 0 or
decreasing, a last offset other than the number of indices, per-sample weights of another size)
are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.base import Engine
from ..errors import QexactError, ShapeError, UnsupportedError
from ..rounding import f32
from ..trace import apply_steps, record
from ._registry import graph_op, observed_stages

SCALE_BIAS_BYTES = {8: 8, 4: 4}
"""Bytes after the codes of a packed row: two float32 (8-bit rows) or two float16 (4-bit)."""
MODES = ("sum", "mean", "max")


@dataclass(frozen=True)
class EmbeddingBagParams:
    """A quantized embedding table prepared for one engine.

    ``codes``: (N, D) uint8, each row's integer codes (4-bit rows unpacked); ``scale``,
    ``bias``: (N,) float32, as the kernel reads them (float16 widened exactly); ``bag``: False
    for ``nnq.Embedding`` (one row per index, output ``indices.shape + (D,)``);
    ``include_last_offset``, ``mode``: the module's; ``kernel``, ``weighted_kernel``: the
    engine's description without and with per-sample weights; ``note``: what PyTorch computes
    other than the float module would (``mode`` ignored)."""

    codes: np.ndarray
    scale: np.ndarray
    bias: np.ndarray
    bit_width: int
    bag: bool
    include_last_offset: bool
    mode: str
    kernel: object
    weighted_kernel: object
    note: str = ""

    @property
    def num_embeddings(self) -> int:
        return int(self.codes.shape[0])

    @property
    def embedding_dim(self) -> int:
        return int(self.codes.shape[1])


# --- Packed rows (offline) ------------------------------------------------------------------


def unpack_rows(rows: np.ndarray, bit_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, scale, bias)`` of a table of packed rows (module docstring layout)."""
    rows = np.ascontiguousarray(rows)
    if rows.dtype != np.uint8 or rows.ndim != 2:
        raise ShapeError(f"quantized embedding: packed rows must be a 2-D uint8 array, got "
                         f"{rows.dtype} {rows.shape}")
    if bit_width not in SCALE_BIAS_BYTES:
        raise UnsupportedError(f"quantized embedding rows of {bit_width} bits are not "
                               "supported; supported: [8, 4] (quint8, quint4x2)")
    tail = SCALE_BIAS_BYTES[bit_width]
    code_bytes = rows.shape[1] - tail
    if code_bytes < 0:
        raise ShapeError(f"quantized embedding: rows of {rows.shape[1]} bytes are shorter than "
                         f"the {tail} bytes of scale and bias of {bit_width}-bit rows")
    if bit_width == 8:
        codes = rows[:, :code_bytes].copy()
        pair = rows[:, code_bytes:].copy().view("<f4").astype(np.float32)
    else:
        packed = rows[:, :code_bytes]
        codes = np.empty((rows.shape[0], 2 * code_bytes), np.uint8)
        codes[:, 0::2] = packed & 0x0F   # code 2k: low nibble (j % 2 == 0 -> shift 0)
        codes[:, 1::2] = packed >> 4
        pair = rows[:, code_bytes:].copy().view("<f2").astype(np.float32)  # exact (vcvtph2ps)
    return codes, np.ascontiguousarray(pair[:, 0]), np.ascontiguousarray(pair[:, 1])


def pack_rows(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
              bit_width: int) -> np.ndarray:
    """Packed rows from per-row float qparams, as ``PackedEmbeddingBagWeight::prepack``
    (qembeddingbag_prepack.cpp): ``bias = f32(f32(zero_point * scale) * -1)``; 8-bit rows store
    scale and bias as float32, 4-bit rows as float16 (``at::Half``: round to nearest even)."""
    codes = np.asarray(codes)
    scale = np.asarray(scale, np.float32).reshape(-1)
    zero_point = np.asarray(zero_point, np.float32).reshape(-1)
    if codes.ndim != 2 or scale.size != codes.shape[0] or zero_point.size != codes.shape[0]:
        raise ShapeError(f"quantized embedding: codes {codes.shape}, {scale.size} scales and "
                         f"{zero_point.size} zero points do not describe one table")
    qmax = (1 << bit_width) - 1
    if codes.size and (codes.min() < 0 or codes.max() > qmax):
        raise QexactError(f"quantized embedding: codes outside [0, {qmax}]")
    bias = f32(f32(zero_point * scale) * np.float32(-1))
    if bit_width == 8:
        pair = np.stack([scale, bias], axis=1).astype("<f4")
        return np.concatenate([codes.astype(np.uint8), pair.view(np.uint8)], axis=1)
    if bit_width != 4:
        raise UnsupportedError(f"quantized embedding rows of {bit_width} bits are not supported")
    if codes.shape[1] % 2:
        raise ShapeError("4-bit embedding rows need an even embedding_dim (two codes a byte)")
    codes = codes.astype(np.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    pair = np.stack([scale, bias], axis=1).astype("<f2")
    return np.concatenate([packed, pair.view(np.uint8)], axis=1)


def prepare_embedding_bag(rows: np.ndarray, bit_width: int, *, engine: Engine | str,
                          bag: bool = True, include_last_offset: bool = False,
                          mode: str = "sum", row_bit_width: int | None = None,
                          isa: str | None = None) -> EmbeddingBagParams:
    """Validate and prepare a quantized embedding table of packed ``rows`` (``bag`` False: an
    ``nnq.Embedding``) for ``engine``. ``bit_width``: the kernel PyTorch calls (8:
    ``*_byte``, 4: ``*_4bit``), which reads the rows in its own layout; ``row_bit_width``: the
    layout the rows were packed in, when it differs (a PyTorch bug, see ``note``)."""
    from ..engines import get_engine

    if mode not in MODES:
        raise UnsupportedError(f"quantized EmbeddingBag mode {mode!r} is not one of {MODES}")
    codes, scale, bias = unpack_rows(rows, bit_width)
    ours = get_engine(engine, isa)
    kernel = ours.kernel("embedding_bag", bit_width, False)
    weighted = ours.kernel("embedding_bag", bit_width, True)
    note = ""
    if bag and mode != "sum" and kernel.ignores_mode:
        note = (f"mode={mode!r} is not applied: PyTorch's quantized EmbeddingBag always sums "
                "(nnq.EmbeddingBag.forward passes mode 0 and qembeddingbag.cpp does not read "
                "it); this computes the sum, as PyTorch does")
    if row_bit_width is not None and row_bit_width != bit_width:
        note = (f"PyTorch runs its {bit_width}-bit kernel on rows packed as {row_bit_width}-bit "
                f"(torch 2.13 nnq.Embedding.from_float drops dtype=quint4x2, so forward calls "
                f"embedding_byte on 4-bit rows: {codes.shape[1]} outputs per index from the "
                f"packed bytes); qexact computes what PyTorch does")
    return EmbeddingBagParams(codes, scale, bias, bit_width, bag, bool(include_last_offset),
                              mode, kernel, weighted, note)


# --- The lookup (run time) ------------------------------------------------------------------


def _integer_array(value, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype not in (np.int32, np.int64):
        raise ShapeError(f"quantized embedding: {what} must be int32 or int64 (PyTorch: 'Expect "
                         f"32 or 64 bit {what}'), got {array.dtype}")
    return array.astype(np.int64)


def _bag_offsets(indices: np.ndarray, offsets, p: EmbeddingBagParams) -> np.ndarray:
    """The bag boundaries ``[start_0, ..., start_B = numel]`` (qembeddingbag.cpp
    ``embedding_bag_*_helper``: 2-D indices give fixed-length bags; 1-D need offsets)."""
    if indices.ndim == 2:
        if offsets is not None:
            raise ShapeError("quantized EmbeddingBag: indices are 2-D, so offsets must be None "
                             "(a mini-batch of fixed-length bags)")
        if indices.shape[1] == 0:
            raise ShapeError("quantized EmbeddingBag: 2-D indices with no columns (PyTorch "
                             "fails: arange step must be nonzero)")
        return np.arange(0, indices.size + 1, indices.shape[1], dtype=np.int64)
    if offsets is None:
        raise ShapeError("quantized EmbeddingBag: 1-D indices need offsets")
    offsets = _integer_array(offsets, "offsets")
    if offsets.ndim != 1:
        raise ShapeError(f"quantized EmbeddingBag: offsets must be 1-D, got {offsets.shape}")
    if p.include_last_offset:
        if offsets.size == 0:
            raise ShapeError("quantized EmbeddingBag: include_last_offset needs at least one "
                             "offset (PyTorch fails on an empty offsets tensor)")
        bounds = offsets
    else:
        bounds = np.append(offsets, indices.size)
    if offsets.size:  # no offsets (include_last_offset False): no bags, indices unread
        if bounds[0] != 0 or np.any(np.diff(bounds) < 0) or bounds[-1] != indices.size:
            raise ShapeError(
                f"quantized EmbeddingBag: offsets must start at 0, not decrease, and "
                f"{'end at' if p.include_last_offset else 'stay within'} the number of indices "
                f"({indices.size}); got {offsets.tolist()[:8]}. PyTorch's output is undefined "
                "otherwise (its kernels read indices sequentially or past the bag)")
    return bounds


def embedding_bag(indices, offsets, p: EmbeddingBagParams,
                  per_sample_weights=None) -> np.ndarray:
    """Sum the rows of each bag (float32 ``(bags, D)``; for ``p.bag`` False, ``nnq.Embedding``:
    ``indices.shape + (D,)``) in the engine kernel's order.

    Loop nest (vectorized over bags and lanes)::

        for bag, (start, end) in enumerate(pairs(bounds)):
            acc[:] = +0.0
            for i in range(start, end):
                r = indices[i]; s, b = scale[r], bias[r]
                if weights: s, b = f32(w[i] * s), f32(w[i] * b)
                acc = fmaf(f32(codes[r]), s, f32(acc + b))
            out[bag] = acc
    """
    flat = _integer_array(indices, "indices")
    if flat.ndim not in (1, 2):
        raise ShapeError(f"quantized embedding supports 1-D or 2-D indices, got "
                         f"{flat.ndim}-D")
    if p.bag:
        bounds = _bag_offsets(flat, offsets, p)
        shape = (bounds.size - 1, p.embedding_dim)
    else:
        bounds = np.arange(flat.size + 1, dtype=np.int64)
        shape = flat.shape + (p.embedding_dim,)
    flat = flat.reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= p.num_embeddings):
        bad = flat[(flat < 0) | (flat >= p.num_embeddings)][0]
        raise ShapeError(f"quantized embedding: index {int(bad)} is out of range [0, "
                         f"{p.num_embeddings})")
    weights = None
    if per_sample_weights is not None:
        if not p.bag:
            raise ShapeError("quantized Embedding takes no per_sample_weights")
        weights = np.asarray(per_sample_weights)
        if weights.dtype == np.float16 and p.bit_width == 4:
            weights = weights.astype(np.float32)  # embedding_bag_4bit: .to(kFloat), exact
        if weights.dtype != np.float32:
            raise ShapeError(f"quantized EmbeddingBag: per_sample_weights must be float32"
                             f"{' or float16' if p.bit_width == 4 else ''}, got {weights.dtype}")
        if weights.size != flat.size:
            raise ShapeError(f"quantized EmbeddingBag: {weights.size} per_sample_weights for "
                             f"{flat.size} indices (PyTorch reads past them: undefined)")
        weights = weights.reshape(-1)
    kernel = p.kernel if weights is None else p.weighted_kernel
    return _sum_bags(flat, bounds, weights, p, kernel).reshape(shape)


def _sum_bags(flat, bounds, weights, p: EmbeddingBagParams, kernel) -> np.ndarray:
    bags, width = bounds.size - 1, p.embedding_dim
    starts, lengths = bounds[:-1], np.diff(bounds)
    acc = np.full((bags, width), np.float32(kernel.initial), np.float32)
    record("embedding: initial accumulator", "acc = +0.0 (an empty bag's output)",
           acc.copy())
    for term in range(int(lengths.max()) if bags else 0):
        active = lengths > term
        where = np.broadcast_to(active[:, None], acc.shape)
        position = starts[active] + term
        rows = flat[position]
        lanes = (int(active.sum()), width)
        record("embedding: row of this term", "r = indices[{i}]",
               np.broadcast_to(rows[:, None], lanes), where=where,
               i=np.broadcast_to(position[:, None], lanes))
        scale = np.broadcast_to(p.scale[rows][:, None], lanes)
        bias = np.broadcast_to(p.bias[rows][:, None], lanes)
        if weights is not None:
            weight = np.broadcast_to(weights[position][:, None], lanes)
            steps = kernel.bound_weight_steps(weight)
            scale = apply_steps(scale, steps, where=where, prefix="embedding: scale: ")
            bias = apply_steps(bias, steps, where=where, prefix="embedding: bias: ")
        codes = p.codes[rows]
        acc[active] = apply_steps(acc[active], kernel.bound_term_steps(codes, scale, bias),
                                  where=where, prefix="embedding: ")
    return acc


def _run(params: EmbeddingBagParams, inputs):
    indices = inputs[0]
    offsets = inputs[1] if len(inputs) > 1 else None
    weights = inputs[2] if len(inputs) > 2 else None
    return embedding_bag(indices, offsets, params, weights)


def _prepare(node, input_qparams, engine, bag: bool):
    if any(qparams is not None for qparams in input_qparams):
        raise UnsupportedError("quantized embedding takes integer indices and offsets and float "
                               "per_sample_weights, not quantized tensors")
    params = prepare_embedding_bag(
        node.arrays["rows"], int(node.attrs["bit_width"]), engine=engine, bag=bag,
        include_last_offset=bool(node.attrs.get("include_last_offset", False)),
        mode=str(node.attrs.get("mode", "sum")), row_bit_width=node.attrs.get("row_bit_width"))
    return params, None


@graph_op("embedding_bag", "quantized EmbeddingBag (nnq.EmbeddingBag, "
          "quantized::embedding_bag_byte/4bit[_rowwise_offsets])")
class EmbeddingBagOp:
    """Graph node: inputs ``(indices, offsets or None, per_sample_weights or None)``; array
    ``rows`` (uint8 packed rows); attrs ``bit_width`` (the kernel's), ``include_last_offset``,
    ``mode``, optional ``row_bit_width`` (the rows' layout, if another). Output: float32."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        return _prepare(node, input_qparams, engine, bag=True)

    @staticmethod
    def run(params, inputs):
        return _run(params, inputs)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run, params, inputs, result, index), []


@graph_op("embedding", "quantized Embedding (nnq.Embedding, quantized::embedding_byte/4bit)")
class EmbeddingOp:
    """Graph node: input ``indices``; array ``rows``; attrs ``bit_width`` (the kernel's),
    optional ``row_bit_width``. Output: float32 ``indices.shape + (D,)``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        return _prepare(node, input_qparams, engine, bag=False)

    @staticmethod
    def run(params, inputs):
        return embedding_bag(inputs[0], None, params)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run, params, inputs[:1], result, index), []


# --- Float embedding (nn.Embedding / F.embedding left in float) ------------------------------


@dataclass(frozen=True)
class FloatEmbeddingParams:
    """A float32 table held by the node (``nn.Embedding``), or None when the table is the
    node's second input (``F.embedding(ids, weight)`` on a get_attr)."""

    weight: np.ndarray | None


def float_embedding(indices, weight) -> np.ndarray:
    """``weight[indices]`` (ATen ``embedding``: ``weight.index_select(0, indices.reshape(-1))``
    reshaped to ``indices.shape + (D,)``): values copied, no arithmetic (exact). padding_idx only
    affects gradients."""
    weight = np.asarray(weight)
    if weight.dtype != np.float32 or weight.ndim != 2:
        raise ShapeError(f"embedding: the table must be a 2-D float32 array, got {weight.dtype} "
                         f"{weight.shape}")
    flat = _integer_array(indices, "indices")
    if flat.size and (flat.min() < 0 or flat.max() >= weight.shape[0]):
        bad = flat[(flat < 0) | (flat >= weight.shape[0])].reshape(-1)[0]
        raise ShapeError(f"embedding: index {int(bad)} is out of range [0, {weight.shape[0]})")
    out = weight[flat.reshape(-1)].reshape(flat.shape + (weight.shape[1],))
    record("embedding (float): row copied", "out[..., :] = weight[indices[...], :]", out)
    return out


@graph_op("float_embedding", "float nn.Embedding / F.embedding / aten::embedding: rows of a "
          "float32 table (exact gather)")
class FloatEmbeddingOp:
    """Graph node: inputs ``indices`` (int32/int64) and, without array ``weight``, the table
    (a ``constant`` node). Array ``weight``: float32 (N, D). Output: float32
    ``indices.shape + (D,)``. ``max_norm`` (which rewrites the table in forward) is refused by
    the importers."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams):
            raise UnsupportedError("float embedding takes integer indices and a float32 table, "
                                   "not quantized tensors")
        weight = node.arrays.get("weight")
        if weight is None and len(node.inputs) < 2:
            raise ShapeError("float embedding needs a table (array 'weight' or a second input)")
        return FloatEmbeddingParams(None if weight is None else np.asarray(weight)), None

    @staticmethod
    def run(params, inputs):
        weight = params.weight if params.weight is not None else inputs[1]
        return float_embedding(inputs[0], weight)

    @staticmethod
    def explain(params, inputs, result, index):
        run = FloatEmbeddingOp.run
        return observed_stages(run, params, inputs, result, index), []
