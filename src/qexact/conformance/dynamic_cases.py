"""Conformance families of float-in, float-out quantized ops: ``linear_dynamic``
(``quantized::linear_dynamic`` / ``linear_relu_dynamic``, qint8 weights),
``linear_dynamic_fp16`` (``quantized::linear_dynamic_fp16`` / ``linear_relu_dynamic_fp16``) and
``embedding_bag`` (``quantized::embedding_bag_byte_rowwise_offsets`` /
``embedding_bag_4bit_rowwise_offsets``).

Params follow ``tests/data/recordings/*/README.md``; the output ``y`` is float32.

- linear_dynamic: npz ``x`` float32 ``x_shape`` ((M, K) or (B, M', K)), ``w`` int8 (N, K) with
  the weight's ``w_*`` (as ``linear``), ``bias`` float32 iff ``has_bias``; ``relu``,
  ``reduce_range`` (the flag passed to the op), ``kind`` (how ``x`` was drawn).
- linear_dynamic_fp16: npz ``x``, ``w`` float32 (N, K) (the prepack rounds it to float16,
  clamped to +-65504), ``bias``; ``relu``.
- embedding_bag: npz ``rows`` uint8 (packed rows: 8-bit ``D`` codes + float32 scale + float32
  bias; 4-bit ``D/2`` bytes + float16 scale + float16 bias), ``indices``, ``offsets`` (absent
  for 2-D indices), ``per_sample_weights`` iff ``weighted``; ``bits``, ``include_last_offset``.
"""

from __future__ import annotations

import numpy as np

from ._draws import draw_weight_qparams, torch_floats, torch_weight, weight_qparams_of
from .family import Case, family

_F32 = np.float32


# --- linear_dynamic (qint8 weights) -------------------------------------------------------------


def _dynamic_x(rng, shape, kind: str) -> np.ndarray:
    """The float input of one ``kind``: ``normal`` (any magnitude, some offset), ``ties``
    (values (2k+1)/8 in [-32, 31.75] with both ends present: with reduce_range off the scale
    is 0.25, so every element is an exact tie of the input quantization), ``saturate`` (codes
    near 255 that saturate int16 pairs without VNNI), ``constant`` (min == max), ``zeros``,
    ``tiny`` (a range near the 6.1e-5 floor)."""
    if kind == "ties":
        x = ((2 * rng.integers(-128, 128, shape) + 1) / 8.0).astype(_F32)
        x.flat[0], x.flat[-1] = -32.0, 31.75
        return x
    if kind == "saturate":
        x = rng.uniform(0.5, 1.0, shape).astype(_F32)
        x[..., 0] = -0.01
        return x
    if kind == "constant":
        return np.full(shape, _F32(rng.standard_normal() * 3), _F32)
    if kind == "zeros":
        return np.zeros(shape, _F32)
    if kind == "tiny":
        return (rng.standard_normal(shape) * 1e-6).astype(_F32)
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 3)
            + rng.choice([0.0, 0.0, 1.0, -2.0]) * 10.0 ** rng.uniform(-3, 1)).astype(_F32)


def _repeat_block(values: np.ndarray, block: int = 256) -> np.ndarray:
    """Past ``block`` elements, the first ``block`` repeated (flat; the extremes a kind placed
    at both ends kept): the recordings stay small, the GEMM's blocking and the input's range
    are those of the shape."""
    if values.size <= block:
        return values
    out = np.resize(values.reshape(-1)[:block], values.size).reshape(values.shape)
    out.flat[-1] = values.flat[-1]
    return out


_DYNAMIC_KINDS = ("normal", "normal", "normal", "ties", "saturate", "constant", "zeros", "tiny")


def _linear_dynamic_draw(rng, engine):
    """(M, K) or (B, M', K) float inputs of the kinds above, K up to 80 (one time in seven up to
    600, and 64-700 where int16 pairs saturate, with few output channels: recordings stay
    small), per-tensor or per-channel int8 weights (symmetric on onednn), the
    extremes w = +-(90..128) for ``saturate``, relu one time in three, reduce_range both ways
    (``ties`` with reduce_range off: the scale is then exactly 0.25)."""
    kind = str(rng.choice(_DYNAMIC_KINDS))
    rows, depth, channels = (int(rng.integers(1, 6)), int(rng.integers(1, 80)),
                             int(rng.integers(1, 20)))
    if rng.random() < 0.15:  # deep rows: the K blocks of the int8 GEMMs (kept narrow: small data)
        depth, channels = int(rng.integers(80, 600)), int(rng.integers(1, 5))
    if kind == "saturate":
        rows, depth, channels = (int(rng.integers(1, 3)), int(rng.choice([64, 255, 300, 513, 700])),
                                 int(rng.integers(1, 5)))
    x_shape = [rows, depth] if rng.random() < 0.7 else [int(rng.integers(1, 3)), rows, depth]
    w_params, w_arrays = draw_weight_qparams(rng, engine, channels, symmetric_p=0.8)
    if kind == "saturate":
        sign = rng.choice([-1, 1], (channels, 1))
        w = np.clip(sign * rng.integers(90, 129, (channels, depth)), -128, 127).astype(np.int8)
    else:
        w = rng.integers(-128, 128, (channels, depth)).astype(np.int8)
    params = {"op": "linear_dynamic", "kind": kind, "x_shape": x_shape, "K": depth,
              "N": channels, "relu": bool(rng.random() < 0.3),
              "reduce_range": bool(kind != "ties" and rng.random() < 0.6),
              "has_bias": bool(rng.random() < 0.7), **w_params}
    arrays = {"x": _repeat_block(_dynamic_x(rng, x_shape, kind)), "w": w, **w_arrays}
    if params["has_bias"]:
        arrays["bias"] = (rng.standard_normal(channels) * 10.0 ** rng.uniform(-2, 1)).astype(_F32)
    return Case(params, arrays)


def _linear_dynamic_run_torch(case):
    import torch

    p = case.params
    packed = torch.ops.quantized.linear_prepack(torch_weight(case),
                                                torch_floats(case.arrays.get("bias")))
    op = (torch.ops.quantized.linear_relu_dynamic if p["relu"]
          else torch.ops.quantized.linear_dynamic)
    return {"y": op(torch_floats(case.arrays["x"]), packed, bool(p["reduce_range"])).numpy()}


def _linear_dynamic_run_qexact(case, engine):
    from ..ops.linear_dynamic import linear_dynamic, prepare_linear_dynamic

    p = case.params
    params = prepare_linear_dynamic(case.arrays["w"], weight_qparams_of(case),
                                    case.arrays.get("bias"), bool(p["relu"]), engine=engine,
                                    reduce_range=bool(p["reduce_range"]))
    return {"y": linear_dynamic(case.arrays["x"], params)}


family("linear_dynamic", draw=_linear_dynamic_draw, run_torch=_linear_dynamic_run_torch,
       run_qexact=_linear_dynamic_run_qexact)


# --- linear_dynamic_fp16 ------------------------------------------------------------------------

_FP16_SHAPES = ((3, 600, 40), (2, 1100, 33), (5, 513, 17), (4, 7, 5), (2, 512, 31),
                (1, 1030, 48), (1, 1, 1), (6, 64, 64), (7, 50, 16), (14, 20, 16), (1, 9, 32),
                (2, 6, 16), (8, 13, 17))
"""Hand-picked (M, K, N): K blocks of 512 and their edges, panels of 16/32 columns and a tail,
row tiles of 1 and 2 rows (FBGEMM's AVX2 partition: M = 1, 2, 7 = 5 + 2, 14 = 6 + 6 + 2) and
K past their 4-way unrolled loop (K = 6, 9)."""


def _fp16_draw(rng, engine):
    """Weights of magnitude 0.01, 1 or 1e5 (past float16's 65504: the prepack clamps), exact
    float16 values one time in two (no rounding in the prepack), columns past 32 repeating, K
    past the 512-row block and
    N past the 16/32-column panels; relu one time in three."""
    if rng.random() < 0.3:
        rows, depth, channels = (int(v) for v in _FP16_SHAPES[int(rng.integers(len(_FP16_SHAPES)))])
    elif rng.random() < 0.7:
        rows, depth, channels = (int(rng.integers(1, 15)), int(rng.integers(1, 100)),
                                 int(rng.integers(1, 34)))
    else:
        rows, depth, channels = (int(rng.integers(1, 4)), int(rng.integers(100, 1100)),
                                 int(rng.integers(1, 34)))
    x_shape = [rows, depth] if rng.random() < 0.8 else [2, rows, depth]
    w = rng.standard_normal((channels, min(depth, 32))) * float(rng.choice([0.01, 1.0, 1e5]))
    w = np.resize(w.T, (depth, channels)).T  # columns past 32 repeat (small data, same order)
    if rng.random() < 0.5:  # float16 values: the prepack's conversion is exact (1e5: +-inf,
        with np.errstate(over="ignore"):  # which the prepack clamps to +-65504)
            w = w.astype(np.float16)
    x = _repeat_block((rng.standard_normal(x_shape)
                       * float(rng.choice([1e-3, 1.0, 100.0]))).astype(_F32))
    params = {"op": "linear_dynamic_fp16", "x_shape": x_shape, "K": depth, "N": channels,
              "relu": bool(rng.random() < 0.3), "has_bias": bool(rng.random() < 0.7)}
    arrays = {"x": x, "w": w.astype(_F32)}
    if params["has_bias"]:
        arrays["bias"] = rng.standard_normal(channels).astype(_F32)
    return Case(params, arrays)


def _fp16_run_torch(case):
    import torch

    p = case.params
    packed = torch.ops.quantized.linear_prepack_fp16(torch_floats(case.arrays["w"]),
                                                     torch_floats(case.arrays.get("bias")))
    op = (torch.ops.quantized.linear_relu_dynamic_fp16 if p["relu"]
          else torch.ops.quantized.linear_dynamic_fp16)
    return {"y": op(torch_floats(case.arrays["x"]), packed).numpy()}


def _fp16_run_qexact(case, engine):
    from ..ops.linear_dynamic import linear_fp16, prepare_linear_fp16

    params = prepare_linear_fp16(case.arrays["w"], case.arrays.get("bias"),
                                 bool(case.params["relu"]), engine=engine)
    return {"y": linear_fp16(case.arrays["x"], params)}


_NO_FP16 = ("PyTorch has no float16 Linear there (linear_prepack_fp16 is currently not "
            "supported by {engine})")
family("linear_dynamic_fp16", draw=_fp16_draw, run_torch=_fp16_run_torch,
       run_qexact=_fp16_run_qexact,
       not_on={e: _NO_FP16.format(engine=e) for e in ("qnnpack", "onednn")})


# --- embedding_bag (8-bit and 4-bit rows) -------------------------------------------------------


def _packed_rows(rng, bits: int, count: int, dim: int) -> np.ndarray:
    """Rows in the layout ``embedding_bag_byte_prepack`` / ``embedding_bag_4bit_prepack`` write
    (FBGEMM's fused rowwise format): codes, then scale and bias (float32 for 8-bit rows,
    float16 for 4-bit rows), with scale = range / qmax and bias = the row's minimum as the
    prepack sets them; rows of all-extreme codes, zero scales (constant rows) and biases far
    from zero (cancellation in the sum) mixed in."""
    qmax = (1 << bits) - 1
    codes = rng.integers(0, qmax + 1, (count, dim))
    extreme = rng.random(count) < 0.15
    codes[extreme] = rng.choice([0, qmax], (int(extreme.sum()), dim))
    magnitude = 10.0 ** rng.uniform(-4, 4, count)
    low = rng.standard_normal(count) * magnitude
    far = rng.random(count) < 0.2
    low[far] += 10.0 ** rng.uniform(-2, 5, int(far.sum()))
    scale = (2 * magnitude / qmax) * (rng.random(count) >= 0.1)  # 1 in 10: constant rows
    store = np.float32 if bits == 8 else np.float16
    pair = np.stack([scale, low], axis=1).astype(store).astype("<" + np.dtype(store).str[1:])
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return np.concatenate([codes.astype(np.uint8), pair.view(np.uint8)], axis=1)


def _embedding_bag_draw(rng, engine):
    """Tables of 1-23 rows of D = 1-47 (4-bit: even) or up to 8 rows of 64-260 lanes (several
    SIMD registers and a masked tail), bags of 0-5 indices (empty bags) or up to 200,
    repeated indices, int32
    or int64 indices and offsets, include_last_offset both ways, per-sample weights (float32;
    zeros among them; float16 for 4-bit rows one time in four), 2-D indices (fixed-length
    bags, no offsets) one time in ten."""
    bits = int(rng.choice([8, 4]))
    count, dim = int(rng.integers(1, 24)), int(rng.integers(1, 48))
    if rng.random() < 0.15:
        count, dim = int(rng.integers(1, 8)), int(rng.integers(64, 260))
    dim += dim % 2 if bits == 4 else 0
    rows = _packed_rows(rng, bits, count, dim)
    params = {"op": "embedding_bag", "bits": bits, "num_embeddings": count, "dim": dim,
              "include_last_offset": bool(rng.random() < 0.5),
              "index_dtype": str(rng.choice(["int32", "int64"], p=[0.3, 0.7])),
              "offset_dtype": str(rng.choice(["int32", "int64"], p=[0.3, 0.7]))}
    if params["index_dtype"] != params["offset_dtype"]:
        params["offset_dtype"] = params["index_dtype"]  # torch requires one index type
    arrays = {"rows": rows}
    if rng.random() < 0.1:  # 2-D indices: bags of one fixed length
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        indices = rng.integers(0, count, shape)
        params["include_last_offset"] = False
    else:
        bags = int(rng.integers(0, 9))
        lengths = rng.integers(0, 200 if rng.random() < 0.1 else 6, bags)
        indices = rng.integers(0, count, int(lengths.sum()))
        if rng.random() < 0.3 and indices.size:
            indices[:] = indices[0]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if not params["include_last_offset"]:
            offsets = offsets[:-1]
        arrays["offsets"] = offsets.astype(params["offset_dtype"])
    arrays["indices"] = indices.astype(params["index_dtype"])
    params["weighted"] = bool(rng.random() < 0.5)
    if params["weighted"]:
        weights = rng.standard_normal(indices.size).astype(_F32)
        weights[rng.random(indices.size) < 0.1] = 0.0
        if bits == 4 and rng.random() < 0.25:
            weights = weights.astype(np.float16)
        arrays["per_sample_weights"] = weights.reshape(-1)
    return Case(params, arrays)


def _embedding_bag_run_torch(case):
    import torch

    p, a = case.params, case.arrays
    op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if p["bits"] == 8 else
          torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
    tensor = (lambda name: None if name not in a else
              torch.from_numpy(np.ascontiguousarray(a[name])))
    y = op(tensor("rows"), tensor("indices"), tensor("offsets"),
           per_sample_weights=tensor("per_sample_weights"),
           include_last_offset=bool(p["include_last_offset"]))
    return {"y": y.numpy()}


def _embedding_bag_run_qexact(case, engine):
    from ..ops.embedding import embedding_bag, prepare_embedding_bag

    p, a = case.params, case.arrays
    params = prepare_embedding_bag(a["rows"], int(p["bits"]), engine=engine,
                                   include_last_offset=bool(p["include_last_offset"]))
    return {"y": embedding_bag(a["indices"], a.get("offsets"), params,
                               a.get("per_sample_weights"))}


family("embedding_bag", draw=_embedding_bag_draw, run_torch=_embedding_bag_run_torch,
       run_qexact=_embedding_bag_run_qexact)
