"""Conformance families: ``linear`` and ``linear_relu`` (``quantized::linear[_relu]``).

Params follow ``tests/data/recordings/*/README.md``: ``M``, ``K``, ``N``, ``x_shape`` ((M, K) or
(B, M', K)), the input's ``x_*``, the weight's ``w_*`` (npz ``w``, and ``w_scales`` /
``w_zero_points`` per channel), ``has_bias`` (npz ``bias``), ``out_scale_req`` /
``out_zero_point_req``.
"""

from __future__ import annotations

import numpy as np

from ._draws import (draw_gemm_operands, draw_scale, draw_weight_qparams, out_qparams_of,
                     qexact_input, qexact_outputs, torch_floats, torch_input, torch_outputs,
                     torch_weight, weight_qparams_of)
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

    p = case.params
    packed = torch.ops.quantized.linear_prepack(torch_weight(case),
                                                torch_floats(case.arrays.get("bias")))
    kernel = getattr(torch.ops.quantized, p["op"])
    return torch_outputs(kernel(torch_input(case), packed, p["out_scale_req"],
                                p["out_zero_point_req"]))


def _run_qexact(case, engine):
    from ..ops.linear import linear, prepare_linear

    p = case.params
    x = qexact_input(case)
    params = prepare_linear(case.arrays["w"], weight_qparams_of(case), case.arrays.get("bias"),
                            x.qparams, out_qparams_of(p), relu=p["op"] == "linear_relu",
                            engine=engine)
    return qexact_outputs(linear(x, params))


for _op in ("linear", "linear_relu"):
    family(_op, draw=_draw(_op), run_torch=_run_torch, run_qexact=_run_qexact)
