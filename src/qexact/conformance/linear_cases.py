"""Conformance cases: Linear and LinearReLU."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..qparams import QParams, QuantizedArray
from ._inputs import draw_scale, torch_quantized
from .runner import conformance_case


def _linear_case(engine, rng, relu: bool):
    import torch

    from ..ops.linear import linear, prepare_linear

    rows, depth, channels = int(rng.integers(1, 33)), int(rng.integers(1, 300)), int(rng.integers(1, 65))
    x_qparams = QParams.per_tensor(draw_scale(rng), int(rng.integers(0, 256)), QUINT8)
    out_qparams = QParams.per_tensor(draw_scale(rng), int(rng.integers(0, 256)), QUINT8)
    symmetric = engine == "onednn"
    if rng.random() < 0.5:
        w_qparams = QParams.per_channel(
            [draw_scale(rng) * 0.01 for _ in range(channels)],
            np.zeros(channels, np.int64) if symmetric else rng.integers(-128, 128, channels), 0, QINT8)
    else:
        w_qparams = QParams.per_tensor(draw_scale(rng) * 0.01, 0 if symmetric else int(rng.integers(-128, 128)), QINT8)
    weight = rng.integers(-128, 128, (channels, depth)).astype(np.int8)
    high = 128 if rng.random() < 0.5 else 256
    x = rng.integers(0, high, (rows, depth)).astype(np.uint8)
    bias = None
    if rng.random() < 0.7:
        bias = (rng.standard_normal(channels) * x_qparams.scale * 300).astype(np.float32)
    params = prepare_linear(weight, w_qparams, bias, x_qparams, out_qparams, relu=relu, engine=engine)
    ours = linear(QuantizedArray(x, x_qparams), params).values
    packed = torch.ops.quantized.linear_prepack(torch_quantized(weight, w_qparams),
                                                None if bias is None else torch.from_numpy(bias))
    kernel = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    theirs = kernel(torch_quantized(x, x_qparams), packed, out_qparams.scale,
                    out_qparams.zero_point).int_repr().numpy()
    return ours, theirs, f"M={rows} K={depth} N={channels} x<{high}"


conformance_case("linear")(lambda engine, rng: _linear_case(engine, rng, False))
conformance_case("linear_relu")(lambda engine, rng: _linear_case(engine, rng, True))
