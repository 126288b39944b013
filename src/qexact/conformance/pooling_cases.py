"""Conformance cases: Max/avg pooling, adaptive average pooling, upsampling."""

from __future__ import annotations

import numpy as np

from ..qparams import QuantizedArray
from ._inputs import TorchThreads, draw_image, redraw, torch_image
from .runner import conformance_case


def _pooling_input(rng, dims: int):
    """A (N, C, *spatial) quantized input of ``dims`` spatial dims and its torch tensor, channels
    last one time in two (4-D and 5-D)."""
    import torch

    values, qparams = draw_image(rng, max_size=12 if dims < 3 else 6)
    if dims == 1:
        values = np.ascontiguousarray(values[:, :, 0, :])
    elif dims == 3:
        values = np.ascontiguousarray(np.repeat(values[:, :, None], int(rng.integers(1, 5)), 2))
        values = (values + rng.integers(0, 3, values.shape).astype(values.dtype)).astype(values.dtype)
    channels_last = dims > 1 and bool(rng.random() < 0.5)
    t = torch_image(values, qparams, False)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
    return t, qparams, channels_last


def _pool_case(engine, rng, kind: str, dims: int):
    import torch.nn.functional as F

    from ..ops.pooling import pool, prepare_pool

    def draw(rng):
        t, qparams, channels_last = _pooling_input(rng, dims)
        kernel = [int(rng.integers(1, s + 1)) for s in t.shape[2:]]
        padding = [int(rng.integers(0, k // 2 + 1)) for k in kernel]
        stride = [int(rng.integers(1, 4)) for _ in kernel]
        dilation = [int(rng.integers(1, 3)) if kind == "max" else 1 for _ in kernel]
        ceil_mode, count_include_pad = bool(rng.random() < 0.3), bool(rng.random() < 0.5)
        divisor = int(rng.integers(1, 20)) if kind == "avg" and dims > 1 and rng.random() < 0.2 \
            else None
        try:
            with TorchThreads(1):
                if kind == "max":
                    theirs = getattr(F, f"max_pool{dims}d")(t, kernel, stride, padding, dilation,
                                                            ceil_mode=ceil_mode)
                elif dims == 1:
                    theirs = F.avg_pool1d(t, kernel, stride, padding, ceil_mode, count_include_pad)
                else:
                    theirs = getattr(F, f"avg_pool{dims}d")(t, kernel, stride, padding, ceil_mode,
                                                            count_include_pad, divisor)
        except (RuntimeError, NotImplementedError):
            return None  # PyTorch rejects the window (output too small, ...) or the op
        params = prepare_pool(kind, dims, kernel, stride, padding, dilation, ceil_mode,
                              count_include_pad, divisor, engine=engine)
        ours = pool(QuantizedArray(t.int_repr().numpy(), qparams), params).values
        return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs.int_repr().numpy()),
                f"{qparams.dtype.name} x={tuple(t.shape)} channels_last={channels_last} "
                f"k={kernel} s={stride} p={padding} d={dilation} ceil={ceil_mode} "
                f"cip={count_include_pad} div={divisor}")

    return redraw(draw, rng)


for _dims in (1, 2, 3):
    for _kind in ("max", "avg"):
        conformance_case(f"{_kind}_pool{_dims}d", not_on={} if (_kind, _dims) != ("max", 3) else {
            "qnnpack": "PyTorch raises \"QNNPACK backend doesn't support quantized_max_pool3d\" "
                       "(qexact too)"})(
            lambda engine, rng, kind=_kind, dims=_dims: _pool_case(engine, rng, kind, dims))


@conformance_case("adaptive_avg_pool2d")
def _adaptive_avg_pool_case(engine, rng):
    import torch.nn.functional as F

    from ..ops.pooling import adaptive_avg_pool, prepare_adaptive_pool

    values, qparams = draw_image(rng)
    channels_last = bool(rng.random() < 0.5)
    outs = [int(rng.integers(1, s + 2)) if rng.random() < 0.6 else max(1, s // int(rng.integers(1, 4)))
            for s in values.shape[2:]]
    t = torch_image(values, qparams, channels_last)
    with TorchThreads(1):
        theirs = F.adaptive_avg_pool2d(t, outs)
    params = prepare_adaptive_pool("avg", 2, outs, engine=engine)
    ours = adaptive_avg_pool(QuantizedArray(t.int_repr().numpy(), qparams), params).values
    return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs.int_repr().numpy()),
            f"{qparams.dtype.name} x={values.shape} -> {outs} channels_last={channels_last}")


def _upsample_case(engine, rng, mode: str):
    import torch.nn.functional as F

    from ..ops.pooling import is_channels_last
    from ..ops.resample import prepare_upsample, upsample

    def draw(rng):
        values, qparams = draw_image(rng, max_size=7)
        if mode == "bilinear" and is_channels_last(values):
            return None  # ambiguous strides take the channels_last kernel (a known xfail)
        channels_last = mode == "nearest" and bool(rng.random() < 0.5)
        if rng.random() < 0.5:
            size, scale = (int(rng.integers(1, 15)), int(rng.integers(1, 15))), None
        else:
            factors = [1.0, 2.0, 3.0, 1.3, 0.7, 1.1, 2.2, 0.5, 1.5]
            size, scale = None, (float(rng.choice(factors)), float(rng.choice(factors)))
            if min(int(d * f) for d, f in zip(values.shape[2:], scale)) < 1:
                size, scale = values.shape[2:], None
        align = bool(rng.random() < 0.5) if mode == "bilinear" else None
        t = torch_image(values, qparams, channels_last)
        with TorchThreads(1):
            theirs = F.interpolate(t, size=size, scale_factor=scale, mode=mode, align_corners=align)
        ours = upsample(QuantizedArray(t.int_repr().numpy(), qparams),
                        prepare_upsample(mode, size, scale, align, engine=engine)).values
        return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs.int_repr().numpy()),
                f"{qparams.dtype.name} x={values.shape} size={size} scale={scale} align={align} "
                f"channels_last={channels_last}")

    return redraw(draw, rng)


conformance_case("upsample_nearest2d")(lambda engine, rng: _upsample_case(engine, rng, "nearest"))
conformance_case("upsample_bilinear2d")(lambda engine, rng: _upsample_case(engine, rng, "bilinear"))
