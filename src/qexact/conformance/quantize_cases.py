"""Conformance cases: Quantize per tensor and per channel."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QINT32, QUINT8
from ._inputs import draw_scale, draw_shape
from .runner import conformance_case


@conformance_case("quantize_per_tensor")
def _quantize_case(engine, rng):
    import torch

    from ..ops.quantize import dequantize, quantize_per_tensor

    dtype = (QUINT8, QINT8, QINT32)[int(rng.integers(3))]
    scale = draw_scale(rng)
    zero = int(rng.integers(dtype.qmin, dtype.qmax + 1)) if dtype.bits == 8 else int(rng.integers(-999, 999))
    x = (rng.standard_normal(draw_shape(rng)) * scale * 100).astype(np.float32)
    if rng.random() < 0.3:  # ties: half steps
        x = (rng.integers(-600, 600, x.shape) * (scale / 2)).astype(np.float32)
    ours = quantize_per_tensor(x, scale, zero, dtype)
    theirs = torch.quantize_per_tensor(torch.from_numpy(x), scale, zero,
                                       getattr(torch, dtype.name))
    return (np.concatenate([ours.values.ravel().astype(np.int64), dequantize(ours).view(np.int32).ravel()]),
            np.concatenate([theirs.int_repr().numpy().ravel().astype(np.int64),
                            theirs.dequantize().numpy().view(np.int32).ravel()]),
            f"{dtype.name} s={scale!r} z={zero} shape={x.shape}")


@conformance_case("quantize_per_channel")
def _quantize_per_channel_case(engine, rng):
    import torch

    from ..ops.quantize import quantize_per_channel

    dtype = (QUINT8, QINT8)[int(rng.integers(2))]
    shape = draw_shape(rng)
    axis = int(rng.integers(len(shape)))
    scales = np.array([draw_scale(rng) for _ in range(shape[axis])])
    zeros = rng.integers(dtype.qmin, dtype.qmax + 1, shape[axis])
    x = (rng.standard_normal(shape) * 30 * scales.reshape([-1 if i == axis else 1
                                                           for i in range(len(shape))])).astype(np.float32)
    ours = quantize_per_channel(x, scales, zeros, axis, dtype)
    theirs = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(scales),
                                        torch.from_numpy(zeros), axis, getattr(torch, dtype.name))
    return ours.values, theirs.int_repr().numpy(), f"{dtype.name} axis={axis} shape={shape}"
