"""Conformance families of ATen's float32 kernels that quantized models run between a dequantize
and a quantize (cell ``aten``, like ``float_aten``): ``float_gelu``, ``float_softmax``
(softmax and log_softmax), ``float_layer_norm``, ``float_group_norm``, ``float_matmul``
(``torch.matmul`` / ``bmm`` for shapes inside qexact's claimed rule,
engines/aten_matmul.py); and ``quantized_matmul`` (``quantized::matmul(a, b, s, z)``) on every
engine.

Params follow ``tests/data/recordings/*/README.md``; npz ``x`` (``a``, ``b`` for products)
float32 in logical order, ``y`` float32 (quantized_matmul: the int_repr and output qparams).

- float_gelu: ``approximate`` ("none" / "tanh"), ``mkldnn`` (``torch.backends.mkldnn.enabled``
  during the call: contiguous ``approximate='none'`` goes to oneDNN only when enabled),
  ``transposed`` (a 2-D input handed over as ``x.t()``: no oneDNN), ``num_threads``.
- float_softmax: ``log``, ``dim``, ``num_threads``.
- float_layer_norm: ``normalized_shape``, ``eps``, npz ``weight`` / ``bias`` iff ``has_weight``
  / ``has_bias``.
- float_group_norm: ``num_groups``, ``eps``, ``x_channels_last``, ``has_weight``, ``has_bias``.
- float_matmul: npz ``a``, ``b``; ``b_transposed`` (b handed over as a transposed view),
  ``num_threads``.
- quantized_matmul: npz ``a``, ``b`` (integers), ``a_scale``, ``a_zero_point``, ``b_scale``,
  ``b_zero_point``, ``x_dtype`` (both), ``out_scale_req``, ``out_zero_point_req``.
"""

from __future__ import annotations

import numpy as np

from ._draws import (DTYPES, draw_ints, draw_scale, draw_zero_point, qexact_outputs, threads,
                     torch_floats, torch_outputs, torch_tensor, with_layout)
from .family import Case, family

_F32 = np.float32
_ATEN = ("aten",)
_BLOCK = 256
"""Random elements per float input at most (larger inputs repeat a block, ``_float_values``)."""
_MAX_ELEMENTS = 2048
"""Elements per float input at most, but for the long 1-D GELU inputs (thread split)."""


def _float_values(rng, shape, specials_p: float = 0.0) -> np.ndarray:
    """float32 of one kind per case: normals of a random magnitude, a wide uniform range,
    integers and halves (exact ties of the kernels' roundings), a large common offset
    (cancellation) or a constant; ``specials_p`` of the elements replaced by random bit
    patterns (NaN, infinities, denormals). Past ``_BLOCK`` elements, a block of whole rows is
    repeated (the recordings stay small; the kernels' blocking and thread split still see every
    position)."""
    size = int(np.prod(shape, dtype=np.int64))
    row = max(1, int(shape[-1])) if len(shape) else 1
    if size > _BLOCK:  # whole rows of a random block, repeated: outputs repeat, data stays small
        block = _float_values(rng, [max(1, _BLOCK // row), row] if row <= _BLOCK else [_BLOCK],
                              specials_p)
        return np.resize(block, shape).astype(_F32)
    kind = int(rng.integers(0, 5))
    if kind == 0:
        x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 2)
    elif kind == 1:
        x = rng.uniform(-12, 12, shape)
    elif kind == 2:
        x = rng.integers(-16, 17, shape) / 2.0
    elif kind == 3:
        x = rng.standard_normal(shape) + 10.0 ** rng.uniform(2, 5)
    else:
        x = np.full(shape, rng.standard_normal() * 4)
    x = np.asarray(x, _F32)
    if specials_p and x.size:
        pick = rng.random(x.shape) < specials_p
        bits = rng.integers(0, 2 ** 32, x.shape, dtype=np.uint64).astype(np.uint32)
        x = np.where(pick, bits.view(_F32), x).astype(_F32)
    return x


def _shape(rng, max_rank: int = 4) -> list[int]:
    """Ranks 1..max_rank, the last dim around the 8/16/32-lane vectors one time in two."""
    rank = int(rng.integers(1, max_rank + 1))
    shape = [int(v) for v in rng.integers(1, 8, rank)]
    if rng.random() < 0.5:
        shape[-1] = int(rng.choice([int(rng.integers(1, 200)), 15, 16, 17, 31, 32, 33, 64, 1000]))
    while int(np.prod(shape)) > _MAX_ELEMENTS:
        shape[int(np.argmax(shape[:-1])) if rank > 1 and max(shape[:-1]) > 1 else -1] //= 2
    return shape


# --- gelu ---------------------------------------------------------------------------------------


def _gelu_draw(rng, engine):
    """Both approximations, oneDNN enabled and disabled, contiguous and transposed 2-D inputs,
    lengths around the SIMD blocks, long inputs on 2 threads, 3 % special bit patterns."""
    if rng.random() < 0.15:
        shape = [int(rng.choice([32768, 40001, 70000]))]
    else:
        shape = _shape(rng)
    transposed = len(shape) == 2 and rng.random() < 0.3
    num_threads = 2 if shape[0] > 32768 and rng.random() < 0.5 else 1
    params = {"op": "gelu", "shape": shape, "approximate": str(rng.choice(["none", "tanh"])),
              "mkldnn": bool(rng.random() < 0.6), "transposed": bool(transposed),
              "num_threads": num_threads}
    return Case(params, {"x": _float_values(rng, shape, 0.03 if rng.random() < 0.3 else 0.0)})


def _gelu_run_torch(case):
    import torch
    import torch.nn.functional as F

    p = case.params
    x = torch.from_numpy(np.ascontiguousarray(case.arrays["x"]))
    if p["transposed"]:
        x = torch.from_numpy(np.ascontiguousarray(case.arrays["x"].T)).t()
    with torch.backends.mkldnn.flags(enabled=bool(p["mkldnn"])):
        y = F.gelu(x, approximate=p["approximate"])
    return {"y": np.ascontiguousarray(y.numpy())}


def _gelu_run_qexact(case, engine):
    from ..ops.gelu import gelu, prepare_gelu

    p = case.params
    x = case.arrays["x"]
    if p["transposed"]:
        x = np.ascontiguousarray(x.T).T
    params = prepare_gelu(p["approximate"], engine=engine, num_threads=threads(p),
                          library=bool(p["mkldnn"]))
    return {"y": np.ascontiguousarray(gelu(x, params))}


family("float_gelu", draw=_gelu_draw, run_torch=_gelu_run_torch, run_qexact=_gelu_run_qexact,
       engines=_ATEN)


# --- softmax / log_softmax ----------------------------------------------------------------------


def _softmax_draw(rng, engine):
    """softmax and log_softmax along the last dim (rows of the 16-lane reductions) and other
    dims (columns, inner sizes around the vector width), 2 threads one time in five."""
    shape = _shape(rng)
    if rng.random() < 0.5 and len(shape) > 1:
        dim = int(rng.integers(-len(shape), len(shape) - 1))  # not the last
        shape[-1] = int(rng.choice([1, 7, 8, 9, 16, 17, 40]))
    else:
        dim = -1 if rng.random() < 0.5 else len(shape) - 1
    params = {"op": "softmax", "shape": shape, "dim": dim, "log": bool(rng.random() < 0.5),
              "num_threads": 2 if rng.random() < 0.2 else 1}
    return Case(params, {"x": _float_values(rng, shape, 0.02 if rng.random() < 0.2 else 0.0)})


def _softmax_run_torch(case):
    import torch

    p = case.params
    x = torch.from_numpy(np.ascontiguousarray(case.arrays["x"]))
    op = torch.log_softmax if p["log"] else torch.softmax
    return {"y": op(x, int(p["dim"])).numpy()}


def _softmax_run_qexact(case, engine):
    from ..ops.softmax import prepare_softmax, softmax

    p = case.params
    params = prepare_softmax(int(p["dim"]), log=bool(p["log"]), engine=engine,
                             num_threads=threads(p))
    return {"y": np.ascontiguousarray(softmax(case.arrays["x"], params))}


family("float_softmax", draw=_softmax_draw, run_torch=_softmax_run_torch,
       run_qexact=_softmax_run_qexact, engines=_ATEN)


# --- layer_norm ---------------------------------------------------------------------------------


def _layer_norm_draw(rng, engine):
    """Rows of 1..1000 elements (Welford chunks of 16 vectors and the scalar tail), normalized
    over 1-3 trailing dims, weight and bias each present or not, eps 1e-6 .. 0.1, constant rows
    and rows with a large common offset."""
    shape = _shape(rng)
    if rng.random() < 0.3:
        shape = [1] * (len(shape) - 1) + [int(rng.choice([256, 300, 513, 1000]))]
    depth = int(rng.integers(1, len(shape) + 1))
    normalized = shape[len(shape) - depth:]
    has_weight, has_bias = bool(rng.random() < 0.7), bool(rng.random() < 0.7)
    x = _float_values(rng, shape)
    eps = float(rng.choice([1e-5, 1e-6, 1e-3, 0.1]))
    params = {"op": "layer_norm", "shape": shape, "normalized_shape": normalized, "eps": eps,
              "has_weight": has_weight, "has_bias": has_bias}
    arrays = {"x": x}
    if has_weight:
        arrays["weight"] = (rng.standard_normal(normalized) * 2).astype(_F32)
    if has_bias:
        arrays["bias"] = rng.standard_normal(normalized).astype(_F32)
    return Case(params, arrays)


def _layer_norm_run_torch(case):
    import torch.nn.functional as F

    p, a = case.params, case.arrays
    return {"y": F.layer_norm(torch_floats(a["x"]), list(p["normalized_shape"]),
                              torch_floats(a.get("weight")), torch_floats(a.get("bias")),
                              float(p["eps"])).numpy()}


def _layer_norm_run_qexact(case, engine):
    from ..ops.float_normalization import float_layer_norm, prepare_float_layer_norm

    p, a = case.params, case.arrays
    params = prepare_float_layer_norm(p["normalized_shape"], a.get("weight"), a.get("bias"),
                                      float(p["eps"]), engine=engine)
    return {"y": np.ascontiguousarray(float_layer_norm(a["x"], params))}


family("float_layer_norm", draw=_layer_norm_draw, run_torch=_layer_norm_run_torch,
       run_qexact=_layer_norm_run_qexact, engines=_ATEN)


# --- group_norm ---------------------------------------------------------------------------------


def _group_norm_draw(rng, engine):
    """(N, C, *spatial) with 0-3 spatial dims, groups dividing C, channels_last 4-D inputs with
    H*W < 1024 (ColumnwiseMoments; qexact refuses the larger ones) one time in three, weight and
    bias each present or not."""
    spatial = int(rng.choice([0, 1, 2, 2, 3]))
    channels = int(rng.choice([int(rng.integers(1, 40)), 8, 16, 32, 64]))
    sizes = [int(v) for v in rng.integers(1, (12, 20, 5)[max(spatial, 1) - 1], spatial)]
    if spatial == 2 and rng.random() < 0.15:
        channels = int(rng.choice([4, 8]))
        sizes = [int(rng.integers(16, 31)), int(rng.integers(16, 31))]
    shape = [int(rng.integers(1, 4)), channels, *sizes]
    while int(np.prod(shape)) > _MAX_ELEMENTS and shape[0] > 1:
        shape[0] -= 1
    while int(np.prod(shape)) > _MAX_ELEMENTS:
        shape[2] = max(1, shape[2] // 2)
    groups = int(rng.choice([g for g in range(1, channels + 1) if channels % g == 0]))
    has_weight, has_bias = bool(rng.random() < 0.7), bool(rng.random() < 0.7)
    params = {"op": "group_norm", "shape": shape, "num_groups": groups,
              "eps": float(rng.choice([1e-5, 1e-3, 0.1])),
              "x_channels_last": bool(spatial == 2 and rng.random() < 0.4),
              "has_weight": has_weight, "has_bias": has_bias}
    arrays = {"x": _float_values(rng, shape)}
    if has_weight:
        arrays["weight"] = (rng.standard_normal(channels) * 2).astype(_F32)
    if has_bias:
        arrays["bias"] = rng.standard_normal(channels).astype(_F32)
    return Case(params, arrays)


def _group_norm_run_torch(case):
    import torch
    import torch.nn.functional as F

    p, a = case.params, case.arrays
    x = torch_floats(a["x"])
    if p["x_channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = F.group_norm(x, int(p["num_groups"]), torch_floats(a.get("weight")),
                     torch_floats(a.get("bias")), float(p["eps"]))
    return {"y": np.ascontiguousarray(y.numpy())}


def _group_norm_run_qexact(case, engine):
    from ..ops.float_normalization import float_group_norm, prepare_float_group_norm

    p, a = case.params, case.arrays
    x = with_layout(a["x"], bool(p["x_channels_last"]))
    params = prepare_float_group_norm(int(p["num_groups"]), x.shape[1], a.get("weight"),
                                      a.get("bias"), float(p["eps"]), engine=engine)
    return {"y": np.ascontiguousarray(float_group_norm(x, params))}


family("float_group_norm", draw=_group_norm_draw, run_torch=_group_norm_run_torch,
       run_qexact=_group_norm_run_qexact, engines=_ATEN)


# --- matmul (float and quantized) ---------------------------------------------------------------


def _matmul_shapes(rng) -> tuple[list[int], list[int], int]:
    """Operand shapes inside qexact's claimed rule (engines/aten_matmul.py): small bmm products
    (K*M*N < 400, ATen's own loop), or MKL sgemm with M >= 4, N >= 12, K <= 1300 (one chain,
    two halves, blocks of 192 and their edges), as mm, a 3-D a folded into mm, or bmm; 2
    threads only with M a multiple of 8 (one product) or on a bmm of 2 or more products."""
    kind = rng.random()
    if kind < 0.25:  # baddbmm_cpu_kernel
        batch = int(rng.integers(1, 4))
        while True:
            m, k, n = (int(v) for v in rng.integers(1, 10, 3))
            if m * k * n < 400:
                break
        return [batch, m, k], [batch, k, n], 1
    m, n = int(rng.integers(4, 40)), int(rng.integers(12, 60))
    k = int(rng.choice([int(rng.integers(1, 192)), 192, 193, 255, 384, 385, 577,
                        int(rng.integers(386, 1300))]))
    if k > 100:  # deep products: few rows and columns (small data, same order rule)
        m, n = int(rng.integers(4, 9)), int(rng.integers(12, 21))
    num_threads = 1
    if kind < 0.55:  # mm
        if rng.random() < 0.25:
            num_threads, m = 2, 8 * int(rng.integers(1, 5))
        return [m, k], [k, n], num_threads
    if kind < 0.7:  # 3-D a times 2-D b: folded into one mm of (batch * M, K)
        return [int(rng.integers(1, 4)), m, k], [k, n], 1
    batch = int(rng.integers(1, 4))
    if batch > 1 and rng.random() < 0.25:  # MKL splits one product's rows, not a batch's
        num_threads = 2
    return [batch, m, k], [batch, k, n], num_threads


def _matmul_draw(rng, engine):
    a_shape, b_shape, num_threads = _matmul_shapes(rng)
    params = {"op": "matmul", "a_shape": a_shape, "b_shape": b_shape,
              "b_transposed": bool(rng.random() < 0.25), "num_threads": num_threads}
    return Case(params, {"a": _float_values(rng, a_shape), "b": _float_values(rng, b_shape)})


def _torch_operand(array, transposed: bool):
    """The float operand, as a transposed view of its transpose when asked (same values, the
    last two strides swapped: MKL reads it with the other transpose flag)."""
    import torch

    if not transposed:
        return torch.from_numpy(np.ascontiguousarray(array))
    return torch.from_numpy(np.ascontiguousarray(np.swapaxes(array, -1, -2))).transpose(-1, -2)


def _matmul_run_torch(case):
    import torch

    p, a = case.params, case.arrays
    return {"y": torch.matmul(_torch_operand(a["a"], False),
                              _torch_operand(a["b"], bool(p["b_transposed"]))).numpy()}


def _matmul_run_qexact(case, engine):
    from ..ops.matmul import float_matmul, prepare_matmul

    params = prepare_matmul(engine, threads(case.params))
    return {"y": float_matmul(case.arrays["a"], case.arrays["b"], params)}


family("float_matmul", draw=_matmul_draw, run_torch=_matmul_run_torch,
       run_qexact=_matmul_run_qexact, engines=_ATEN)


def _quantized_matmul_draw(rng, engine):
    """quint8 or qint8 operands (one dtype), shapes as float_matmul; power-of-two scales with
    an odd output zero point one time in three (exact ties of the output quantize), constant
    extremes (saturation) one time in ten."""
    a_shape, b_shape, num_threads = _matmul_shapes(rng)
    dtype_name = "qint8" if rng.random() < 0.4 else "quint8"
    dtype = DTYPES[dtype_name]
    params = {"op": "quantized_matmul", "a_shape": a_shape, "b_shape": b_shape,
              "x_dtype": dtype_name, "num_threads": num_threads}
    if rng.random() < 0.33:
        a_scale, b_scale = (float(2.0 ** int(e)) for e in rng.integers(-6, -1, 2))
        out_scale = a_scale * b_scale * 2.0 ** int(rng.integers(0, 6))
        out_zp = int(rng.integers(dtype.qmin // 2, dtype.qmax // 2)) * 2 + 1
    else:
        a_scale, b_scale, out_scale = (draw_scale(rng, -3, -0.5) for _ in range(3))
        out_zp = draw_zero_point(rng, dtype)
    params.update(a_scale=a_scale, a_zero_point=draw_zero_point(rng, dtype), b_scale=b_scale,
                  b_zero_point=draw_zero_point(rng, dtype), out_scale_req=out_scale,
                  out_zero_point_req=out_zp)
    a, b = draw_ints(rng, dtype, a_shape), draw_ints(rng, dtype, b_shape)
    if b_shape[-2] > 64:  # deep products: a's columns and b's rows repeat every 64 (small data)
        copies = b_shape[-2] // 64 + 1
        b = np.concatenate([b[..., :64, :]] * copies, axis=-2)[..., :b_shape[-2], :]
        a = np.concatenate([a[..., :64]] * copies, axis=-1)[..., :a_shape[-1]]
    if rng.random() < 0.1:
        a[...], b[...] = dtype.qmax, dtype.qmin
        params["hand_picked"] = "extremes"
    return Case(params, {"a": a, "b": b})


def _quantized_matmul_run_torch(case):
    import torch

    p, a = case.params, case.arrays
    qa = torch_tensor(a["a"], p["a_scale"], p["a_zero_point"])
    qb = torch_tensor(a["b"], p["b_scale"], p["b_zero_point"])
    return torch_outputs(torch.ops.quantized.matmul(qa, qb, float(p["out_scale_req"]),
                                                    int(p["out_zero_point_req"])))


def _quantized_matmul_run_qexact(case, engine):
    from ..ops.matmul import prepare_quantized_matmul, quantized_matmul
    from ..qparams import QParams, QuantizedArray

    p, a = case.params, case.arrays
    dtype = DTYPES[p["x_dtype"]]
    qa = QParams.per_tensor(float(p["a_scale"]), int(p["a_zero_point"]), dtype)
    qb = QParams.per_tensor(float(p["b_scale"]), int(p["b_zero_point"]), dtype)
    params = prepare_quantized_matmul(qa, qb, float(p["out_scale_req"]),
                                      int(p["out_zero_point_req"]), engine, threads(p))
    return qexact_outputs(quantized_matmul(QuantizedArray(a["a"], qa), QuantizedArray(a["b"], qb),
                                           params))


family("quantized_matmul", draw=_quantized_matmul_draw, run_torch=_quantized_matmul_run_torch,
       run_qexact=_quantized_matmul_run_qexact)
