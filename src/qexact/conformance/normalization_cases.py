"""Conformance families: batch_norm2d, layer_norm, group_norm, instance_norm.

Params follow ``tests/data/recordings/*/README.md``: npz ``x`` (``shape``, ``x_scale``,
``x_zero_point``, ``x_dtype``, ``x_channels_last``), float32 npz ``weight``/``bias`` (and
batch_norm's ``mean``/``var``) iff ``has_weight``, ``eps``, the requested ``out_scale_req``/
``out_zero_point_req``; layer_norm ``normalized_shape``, group_norm ``num_groups``.
"""

from __future__ import annotations

import numpy as np

from ._draws import (DTYPES, draw_ints, draw_scale, draw_zero_point, f32_scale, pytorch_tensor,
                     qexact_input, qexact_outputs, random_tensor_and_qparams, torch_floats,
                     torch_input, torch_outputs)
from .family import Case, family

_EPS = (1e-5, 1e-5, 1e-3, 0.1)


def _io(rng, dtype_name: str = "quint8", shape=(), channels_last_p: float = 0.0) -> dict:
    dtype = DTYPES[dtype_name]
    return {"shape": [int(s) for s in shape],
            "x_channels_last": bool(len(shape) in (4, 5) and rng.random() < channels_last_p),
            "x_scale": draw_scale(rng, -3, 1), "x_zero_point": draw_zero_point(rng, dtype),
            "x_dtype": dtype_name}


def _out(rng, dtype_name: str = "quint8") -> dict:
    return {"out_scale_req": draw_scale(rng, -3, -0.3),
            "out_zero_point_req": draw_zero_point(rng, DTYPES[dtype_name])}


def _affine(rng, shape, has_weight: bool) -> dict:
    if not has_weight:
        return {}
    return {"weight": (rng.standard_normal(shape) * 2).astype(np.float32),
            "bias": rng.standard_normal(shape).astype(np.float32)}


# --- batch_norm2d --------------------------------------------------------------------------------


def _batch_norm_draw(rng, engine):
    """(N, C, H, W) quint8, C up to 40 (SIMD body and tail of the channel loop), both layouts."""
    channels = int(rng.choice([int(rng.integers(1, 40)), 8, 16, 32, 64]))
    shape = [int(rng.integers(1, 3)), channels, *(int(v) for v in rng.integers(1, 12, 2))]
    params = {"op": "batch_norm2d", **_io(rng, "quint8", shape, 0.3), "eps": float(rng.choice(_EPS)),
              "has_weight": True, **_out(rng)}
    arrays = {"x": draw_ints(rng, DTYPES["quint8"], shape, 0.1), **_affine(rng, channels, True),
              "mean": rng.standard_normal(channels).astype(np.float32),
              "var": rng.uniform(0.1, 3, channels).astype(np.float32)}
    return Case(params, arrays)


def _batch_norm_pytorch_draw(rng, engine):
    """As test_batch_norm2d: a hypothesis quint8 tensor of 4-D array_shapes (sides 1..32; kept
    under 16k elements), mean/var/weight/bias torch.rand(C), eps 1e-3, Y_scale in [0.2, 2.6],
    Y_zero_point in [0, 5]."""
    shape = [int(v) for v in rng.integers(1, 33, 4)]
    while np.prod(shape) > 16384:
        shape[int(np.argmax(shape))] //= 2
    x, scale, zero_point, dtype = pytorch_tensor(rng, shape, ("quint8",))
    channels = shape[1]
    params = {"op": "batch_norm2d", "shape": shape, "x_channels_last": bool(rng.random() < 0.5),
              "x_scale": scale, "x_zero_point": zero_point, "x_dtype": dtype, "eps": 1e-3,
              "has_weight": True, "out_scale_req": f32_scale(rng.uniform(0.2, 2.6)),
              "out_zero_point_req": int(rng.integers(0, 6))}
    arrays = {"x": x, **{k: rng.random(channels, dtype=np.float32) for k in ("weight", "bias", "mean", "var")}}
    return Case(params, arrays)


def _batch_norm_run_torch(case):
    import torch

    p, a = case.params, case.arrays
    return torch_outputs(torch.ops.quantized.batch_norm2d(
        torch_input(case), *(torch_floats(a[k]) for k in ("weight", "bias", "mean", "var")),
        p["eps"], p["out_scale_req"], p["out_zero_point_req"]))


def _batch_norm_run_qexact(case, engine):
    from ..ops.normalization import batch_norm, prepare_batch_norm

    p, a = case.params, case.arrays
    x = qexact_input(case)
    params = prepare_batch_norm(a["weight"], a["bias"], a["mean"], a["var"], p["eps"], x.qparams,
                                p["out_scale_req"], p["out_zero_point_req"], engine=engine)
    return qexact_outputs(batch_norm(x, params))


family("batch_norm2d", draw=_batch_norm_draw, run_torch=_batch_norm_run_torch,
       run_qexact=_batch_norm_run_qexact, profiles={"pytorch": _batch_norm_pytorch_draw})


# --- layer_norm ----------------------------------------------------------------------------------


def _layer_norm_draw(rng, engine):
    """Ranks 2-4, the last dim past 25 one time in three (the 16/32-lane rows), normalized over
    1..rank-1 trailing dims, with or without affine, either layout of a 4-D input."""
    rank = int(rng.integers(2, 5))
    shape = [int(rng.integers(1, 4))] + [int(rng.integers(1, 10)) for _ in range(rank - 1)]
    if rank == 4 and rng.random() < 0.5:
        shape[1] = int(rng.choice([2, 16, 32, 64]))
    if rng.random() < 0.35:
        shape[-1] = int(rng.integers(25, 100))
    normalized = shape[rank - int(rng.integers(1, rank)):]
    has_weight = bool(rng.random() < 0.75)
    params = {"op": "layer_norm", **_io(rng, "quint8", shape, 0.3), "eps": float(rng.choice(_EPS)),
              "normalized_shape": normalized, "has_weight": has_weight, **_out(rng)}
    return Case(params, {"x": draw_ints(rng, DTYPES["quint8"], shape, 0.05),
                         **_affine(rng, normalized, has_weight)})


def _layer_norm_pytorch_draw(rng, engine):
    """As test_qlayer_norm: array_shapes(3, 5, 1, 32) (kept under 16k elements),
    _get_random_tensor_and_q_params(shape, U(0.01, 1e3), qint8 or quint8), weight and bias
    torch.rand of shape[1:], eps 1e-3, Y_scale in [0.2, 2.6], Y_zero_point in [0, 5]."""
    shape = [int(v) for v in rng.integers(1, 33, int(rng.integers(3, 6)))]
    while np.prod(shape) > 16384:
        shape[int(np.argmax(shape))] //= 2
    dtype = str(rng.choice(["qint8", "quint8"]))
    x, scale, zero_point = random_tensor_and_qparams(rng, shape, float(rng.uniform(0.01, 1e3)), dtype)
    normalized = shape[1:]
    params = {"op": "layer_norm", "shape": shape, "x_channels_last": False, "x_scale": scale,
              "x_zero_point": zero_point, "x_dtype": dtype, "eps": 1e-3,
              "normalized_shape": normalized, "has_weight": True,
              "out_scale_req": f32_scale(rng.uniform(0.2, 2.6)),
              "out_zero_point_req": int(rng.integers(0, 6))}
    return Case(params, {"x": x, "weight": rng.random(normalized, dtype=np.float32),
                         "bias": rng.random(normalized, dtype=np.float32)})


def _layer_norm_run_torch(case):
    import torch

    p, a = case.params, case.arrays
    return torch_outputs(torch.ops.quantized.layer_norm(
        torch_input(case), list(p["normalized_shape"]), torch_floats(a.get("weight")),
        torch_floats(a.get("bias")), p["eps"], p["out_scale_req"], p["out_zero_point_req"]))


def _layer_norm_run_qexact(case, engine):
    from ..ops.normalization import group_norm, prepare_layer_norm

    p, a = case.params, case.arrays
    x = qexact_input(case)
    params = prepare_layer_norm(p["normalized_shape"], a.get("weight"), a.get("bias"), p["eps"],
                                x.qparams, p["out_scale_req"], p["out_zero_point_req"], engine=engine)
    return qexact_outputs(group_norm(x, params))


family("layer_norm", draw=_layer_norm_draw, run_torch=_layer_norm_run_torch,
       run_qexact=_layer_norm_run_qexact, profiles={"pytorch": _layer_norm_pytorch_draw})


# --- group_norm, instance_norm -------------------------------------------------------------------


def _group_norm_draw(instance: bool):
    def draw(rng, engine):
        """(N, C, *spatial) with 1-3 spatial dims, groups dividing C (instance: groups = C),
        channels_last 4-D inputs (the NHWC kernel) one time in three; large 4-D maps one time in
        ten (the NHWC kernel's feature-map threshold and the 16/32-lane rows)."""
        spatial = int(rng.choice([1, 2, 2, 2, 3]))
        channels = int(rng.choice([int(rng.integers(1, 40)), 8, 16, 32, 64]))
        sizes = [int(v) for v in rng.integers(1, (12, 12, 5)[spatial - 1], spatial)]
        if spatial == 2 and rng.random() < 0.1:
            channels, sizes = int(rng.choice([4, 8, 16])), [int(rng.integers(16, 40)), int(rng.integers(16, 40))]
        shape = [int(rng.integers(1, 4)), channels, *sizes]
        params = {"op": "instance_norm" if instance else "group_norm",
                  **_io(rng, "quint8", shape, 0.4 if spatial == 2 else 0.0),
                  "eps": float(rng.choice(_EPS))}
        if not instance:
            params["num_groups"] = int(rng.choice([g for g in range(1, channels + 1) if channels % g == 0]))
        has_weight = bool(rng.random() < 0.85)
        params.update(has_weight=has_weight, **_out(rng))
        return Case(params, {"x": draw_ints(rng, DTYPES["quint8"], shape, 0.05),
                             **_affine(rng, channels, has_weight)})
    return draw


def _group_norm_pytorch_draw(instance: bool):
    def draw(rng, engine):
        """As test_group_norm / test_instance_norm: shape (batches, C, elements_per_channel, 1),
        batches in (1, 7), groups (1, 4) x channels per group (1, 36, 72) (instance: C in (1, 4)),
        elements per channel (8, 128, 1024), qint8 or quint8 from
        _get_random_tensor_and_q_params(shape, 1.0, dtype), Y_scale (0.1, 4.23), Y_zero_point
        (0, 1), both layouts, affine weight[i] = 0.5 i, bias[i] = i (instance: torch.rand), eps
        1e-3; cases over 64k elements are redrawn (the tests' largest is 2M)."""
        batches = int(rng.choice([1, 7]))
        if instance:
            groups = channels = int(rng.choice([1, 4]))
        else:
            groups = int(rng.choice([1, 4]))
            channels = groups * int(rng.choice([1, 36, 72]))
        shape = [batches, channels, int(rng.choice([8, 128, 1024])), 1]
        if np.prod(shape) > 65536:
            return None
        dtype = str(rng.choice(["qint8", "quint8"]))
        x, scale, zero_point = random_tensor_and_qparams(rng, shape, 1.0, dtype)
        params = {"op": "instance_norm" if instance else "group_norm", "shape": shape,
                  "x_channels_last": bool(rng.random() < 0.5), "x_scale": scale,
                  "x_zero_point": zero_point, "x_dtype": dtype, "eps": 1e-3}
        if not instance:
            params["num_groups"] = groups
        has_weight = bool(rng.random() < 0.5)
        params.update(has_weight=has_weight, out_scale_req=float(rng.choice([0.1, 4.23])),
                      out_zero_point_req=int(rng.integers(0, 2)))
        arrays = {"x": x}
        if has_weight and instance:
            arrays.update(weight=rng.random(channels, dtype=np.float32),
                          bias=rng.random(channels, dtype=np.float32))
        elif has_weight:
            arrays.update(weight=(np.arange(channels) * 0.5).astype(np.float32),
                          bias=np.arange(channels).astype(np.float32))
        return Case(params, arrays)
    return draw


def _group_norm_run_torch(case):
    import torch

    p, a = case.params, case.arrays
    weight, bias = torch_floats(a.get("weight")), torch_floats(a.get("bias"))
    if p["op"] == "instance_norm":
        y = torch.ops.quantized.instance_norm(torch_input(case), weight, bias, p["eps"],
                                              p["out_scale_req"], p["out_zero_point_req"])
    else:
        y = torch.ops.quantized.group_norm(torch_input(case), p["num_groups"], weight, bias, p["eps"],
                                           p["out_scale_req"], p["out_zero_point_req"])
    return torch_outputs(y)


def _group_norm_run_qexact(case, engine):
    from ..ops.normalization import group_norm, prepare_group_norm

    p, a = case.params, case.arrays
    x = qexact_input(case)
    instance = p["op"] == "instance_norm"
    channels = x.values.shape[1]
    params = prepare_group_norm(channels if instance else p["num_groups"], channels, a.get("weight"),
                                a.get("bias"), p["eps"], x.qparams, p["out_scale_req"],
                                p["out_zero_point_req"], channels_last=bool(p["x_channels_last"]),
                                instance=instance, engine=engine)
    return qexact_outputs(group_norm(x, params))


for _instance in (False, True):
    family("instance_norm" if _instance else "group_norm", draw=_group_norm_draw(_instance),
           run_torch=_group_norm_run_torch, run_qexact=_group_norm_run_qexact,
           profiles={"pytorch": _group_norm_pytorch_draw(_instance)})
