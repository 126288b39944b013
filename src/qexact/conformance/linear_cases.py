"""Conformance families: ``linear`` and ``linear_relu`` (``quantized::linear[_relu]``).

Params follow ``tests/data/recordings/*/README.md``: ``M``, ``K``, ``N``, ``x_shape`` ((M, K) or
(B, M', K)), the input's ``x_*``, the weight's ``w_*`` (npz ``w``, and ``w_scales`` /
``w_zero_points`` per channel), ``has_bias`` (npz ``bias``), ``out_scale_req`` /
``out_zero_point_req``.
"""

from __future__ import annotations

import numpy as np

from ._draws import (draw_gemm_operands, draw_scale, draw_weight_qparams, f32_scale,
                     out_qparams_of, qexact_input, qexact_outputs, torch_floats,
                     torch_packed_outputs, torch_weight, weight_qparams_of)
from .family import Case, family


def _draw(op: str):
    def draw(rng, engine):
        rows, depth, channels = (int(rng.integers(1, 33)), int(rng.integers(1, 300)),
                                 int(rng.integers(1, 65)))
        x_shape = [rows, depth]
        if rng.random() < 0.2:  # a batch of rows: (B, M', K)
            x_shape = [int(rng.integers(1, 4)), rows, depth]
        x_scale = draw_scale(rng)
        w_params, w_arrays = draw_weight_qparams(rng, engine, channels)
        params, arrays = draw_gemm_operands(rng, (channels, depth), x_shape, channels, x_scale,
                                            bias_gain=300.0)
        params = {"op": op, "M": int(np.prod(x_shape[:-1])), "K": depth, "N": channels,
                  "x_shape": x_shape, "x_scale": x_scale,
                  "x_zero_point": int(rng.integers(0, 256)), "x_dtype": "quint8", **params,
                  "out_scale_req": draw_scale(rng), "out_zero_point_req": int(rng.integers(0, 256)),
                  **w_params}
        return Case(params, arrays | w_arrays)
    return draw


def _run_torch(case):
    import torch

    packed = torch.ops.quantized.linear_prepack(torch_weight(case),
                                                torch_floats(case.arrays.get("bias")))
    return torch_packed_outputs(case, packed)


def _run_qexact(case, engine):
    from ..ops.linear import linear, prepare_linear

    p = case.params
    x = qexact_input(case)
    params = prepare_linear(case.arrays["w"], weight_qparams_of(case), case.arrays.get("bias"),
                            x.qparams, out_qparams_of(p), relu=p["op"] == "linear_relu",
                            engine=engine)
    return qexact_outputs(linear(x, params))


def _pytorch_draw(op: str):
    """As ``_test_qlinear_impl`` (test/quantization/core/test_quantized_op.py) draws: the grid
    batch {1, 4} x K {16, 32} x N {4, 8}, a 3-D input one time in two, x uniform over the
    (reduce_range) quint8 range with z_x 5 and s_x 1.5, per-channel weight scales U(0, 1) (or
    one), weight zero points round(U*100 - 50) (0 on onednn and qnnpack), an int32-grid bias in
    [-10, 10], output 125.1234 / 5."""
    def draw(rng, engine):
        batch, depth, channels = (int(rng.choice([1, 4])), int(rng.choice([16, 32])),
                                  int(rng.choice([4, 8])))
        x_shape = [3, batch, depth] if rng.random() < 0.5 else [batch, depth]
        high = 128 if rng.random() < 0.5 else 256  # reduce_range
        x = np.round(rng.random(x_shape) * (high - 1)).astype(np.uint8)
        w = np.round(rng.random((channels, depth)) * 255 - 128).astype(np.int8)
        symmetric = engine in ("onednn", "qnnpack")
        zero_points = (np.zeros(channels, np.int64) if symmetric else
                       np.round(rng.random(channels) * 100 - 50).astype(np.int64))
        scales = np.array([f32_scale(max(v, 1e-3)) for v in rng.random(channels)])
        params = {"op": op, "M": int(np.prod(x_shape[:-1])), "K": depth, "N": channels,
                  "x_shape": x_shape, "x_scale": 1.5, "x_zero_point": 5, "x_dtype": "quint8",
                  "x_range": f"0..{high - 1}", "has_bias": bool(rng.random() < 0.5),
                  "out_scale_req": 125.1234, "out_zero_point_req": 5, "w_symmetric": symmetric}
        arrays = {"x": x, "w": w}
        if rng.random() < 0.5:
            params |= {"w_qscheme": "per_channel", "w_axis": 0}
            arrays |= {"w_scales": scales, "w_zero_points": zero_points}
        else:
            params |= {"w_qscheme": "per_tensor", "w_scale": float(scales[0]),
                       "w_zero_point": int(zero_points[0])}
        if params["has_bias"]:
            grid = 1.5 * (scales if params["w_qscheme"] == "per_channel" else scales[:1])
            arrays["bias"] = (np.round(rng.random(channels) * 20 - 10) * grid).astype(np.float32)
        return Case(params, arrays)
    return draw


for _op in ("linear", "linear_relu"):
    family(_op, draw=_draw(_op), run_torch=_run_torch, run_qexact=_run_qexact,
           profiles={"pytorch": _pytorch_draw(_op)})
