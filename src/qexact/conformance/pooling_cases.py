"""Conformance families: pool1d / pool2d / pool3d (max, avg, adaptive avg), upsample2d.

Params follow ``tests/data/recordings/*/README.md``: npz ``x`` with ``shape``, ``x_scale``,
``x_zero_point``, ``x_dtype``, ``x_channels_last``; ``op`` names the call (``max_pool2d``:
``kernel_size``, ``stride``, ``padding``, ``dilation``, ``ceil_mode``; ``avg_pool2d``: the same but
``count_include_pad``, ``divisor_override`` for dilation; ``adaptive_avg_pool2d``:
``output_size``), and the 1-D / 3-D families take the same fields with their own op names.
Upsample: ``mode``, ``size`` or ``scale_factor`` (the other null), ``align_corners``.
"""

from __future__ import annotations

import math

from ._draws import (DTYPES, draw_dtype, draw_ints, draw_scale, draw_zero_point, pytorch_shape,
                     pytorch_tensor, qexact_input, qexact_outputs, torch_input, torch_outputs)
from .family import Case, family


def pool_output_size(size, kernel, pad, stride, dilation, ceil_mode) -> int:
    """ATen ``pooling_output_shape`` (Pool.h): floor or ceil of the window count; with ceil_mode
    the last window must start inside the input or its left padding."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _draw_pool_input(rng, engine, dims: int, max_size: int) -> dict:
    """(N, C, *spatial) with C around the vector widths; channels_last one time in two (4-D/5-D)."""
    dtype = draw_dtype(rng, engine, 0.3)
    channels = int(rng.choice([1, 3, 8, 16, 17, 32, 64])) if rng.random() < 0.6 \
        else int(rng.integers(1, 21))
    shape = [int(rng.integers(1, 3)), channels, *(int(v) for v in rng.integers(1, max_size + 1, dims))]
    return {"shape": shape, "x_channels_last": bool(dims > 1 and rng.random() < 0.5),
            "x_dtype": dtype, "x_scale": draw_scale(rng, -3, 1),
            "x_zero_point": draw_zero_point(rng, DTYPES[dtype])}


def _window_params(rng, kind: str, spatial, dims: int) -> dict | None:
    kernel = [int(rng.integers(1, s + 1)) for s in spatial]
    padding = [int(rng.integers(0, k // 2 + 1)) for k in kernel]
    stride = [int(rng.integers(1, 4)) for _ in kernel]
    dilation = [int(rng.integers(1, 3)) if kind == "max" else 1 for _ in kernel]
    ceil_mode = bool(rng.random() < 0.3)
    if any(pool_output_size(s, k, p, st, d, ceil_mode) < 1
           for s, k, p, st, d in zip(spatial, kernel, padding, stride, dilation)):
        return None  # PyTorch: "Output size is too small"
    params = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    if kind == "max":
        params["dilation"] = dilation
    else:
        params["count_include_pad"] = bool(rng.random() < 0.5)
        params["divisor_override"] = (int(rng.integers(1, 20))
                                      if dims > 1 and rng.random() < 0.15 else None)
    return params


def _adaptive_sizes(rng, spatial) -> list[int]:
    return [int(rng.integers(1, s + 3)) if rng.random() < 0.6 else max(1, s // int(rng.integers(1, 4)))
            for s in spatial]


def _pool_draw(dims: int):
    def draw(rng, engine):
        kinds = ["max", "avg", "adaptive"]
        if dims == 3 and engine == "qnnpack":
            kinds = ["avg", "adaptive"]  # PyTorch: "QNNPACK backend doesn't support quantized_max_pool3d"
        kind = str(rng.choice(kinds))
        x = _draw_pool_input(rng, engine, dims, 12 if dims < 3 else 6)
        spatial = x["shape"][2:]
        if kind == "adaptive":
            params = {"op": f"adaptive_avg_pool{dims}d", **x, "output_size": _adaptive_sizes(rng, spatial)}
        else:
            window = _window_params(rng, kind, spatial, dims)
            if window is None:
                return None
            params = {"op": f"{kind}_pool{dims}d", **x, **window}
        return Case(params, {"x": draw_ints(rng, DTYPES[x["x_dtype"]], x["shape"], 0.15)})
    return draw


def _pool2d_pytorch_draw(rng, engine):
    """As test_max_pool2d / test_avg_pool2d / test_adaptive_avg_pool2d_nhwc: hypothesis tensors of
    4-D array_shapes (sides 1..10; avg 5..10, quint8), kernel from (3, 5, 7) (avg (3, 5)),
    stride None/1/2, padding 0..2 (<= kernel // 2), dilation 1..2, ceil_mode, both layouts."""
    kind = str(rng.choice(["max", "avg", "adaptive"]))
    dtypes = ("quint8", "qint8") if kind == "max" and engine != "qnnpack" else ("quint8",)
    shape = pytorch_shape(rng, 4, 4, 5 if kind == "avg" else 1, 10)
    shape[1] = min(shape[1], 8)
    x, scale, zero_point, dtype = pytorch_tensor(rng, shape, dtypes)
    params = {"shape": shape, "x_channels_last": bool(rng.random() < 0.5), "x_dtype": dtype,
              "x_scale": scale, "x_zero_point": zero_point}
    if kind == "adaptive":
        params = {"op": "adaptive_avg_pool2d", **params,
                  "output_size": [int(v) for v in rng.integers(1, 11, 2)]}
        return Case(params, {"x": x})
    kernel = int(rng.choice([3, 5, 7] if kind == "max" else [3, 5]))
    stride = [None, 1, 2][int(rng.integers(3))] or kernel
    padding = int(rng.integers(0, 3))
    dilation = int(rng.integers(1, 3)) if kind == "max" else 1
    ceil_mode = bool(rng.random() < 0.5)
    if padding > kernel // 2 or any(pool_output_size(s, kernel, padding, stride, dilation, ceil_mode) < 1
                                    for s in shape[2:]):
        return None
    params = {"op": f"{kind}_pool2d", **params, "kernel_size": [kernel] * 2, "stride": [stride] * 2,
              "padding": [padding] * 2, "ceil_mode": ceil_mode}
    if kind == "max":
        params["dilation"] = [dilation] * 2
    else:
        params["count_include_pad"] = bool(rng.random() < 0.5)
        params["divisor_override"] = None
    return Case(params, {"x": x})


def _pool_run_torch(case):
    import torch.nn.functional as F

    p = case.params
    x = torch_input(case)
    op = p["op"]
    function = getattr(F, op)
    if op.startswith("adaptive"):
        return torch_outputs(function(x, p["output_size"]))
    if op.startswith("max"):
        return torch_outputs(function(x, p["kernel_size"], p["stride"], p["padding"], p["dilation"],
                                      p["ceil_mode"]))
    if op == "avg_pool1d":  # no divisor_override
        return torch_outputs(function(x, p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"],
                                      p["count_include_pad"]))
    return torch_outputs(function(x, p["kernel_size"], p["stride"], p["padding"], p["ceil_mode"],
                                  p["count_include_pad"], p["divisor_override"]))


def _pool_run_qexact(case, engine):
    from ..ops.pooling import adaptive_avg_pool, pool, prepare_adaptive_pool, prepare_pool

    p = case.params
    x = qexact_input(case)
    op = p["op"]
    dims = int(op[-2])
    if op.startswith("adaptive"):
        return qexact_outputs(adaptive_avg_pool(x, prepare_adaptive_pool("avg", dims, p["output_size"],
                                                                         engine=engine)))
    kind = op.split("_")[0]
    params = prepare_pool(kind, dims, p["kernel_size"], p["stride"], p["padding"],
                          p.get("dilation", 1), p["ceil_mode"], p.get("count_include_pad", True),
                          p.get("divisor_override"), engine=engine)
    return qexact_outputs(pool(x, params))


family("pool1d", draw=_pool_draw(1), run_torch=_pool_run_torch, run_qexact=_pool_run_qexact)
family("pool2d", draw=_pool_draw(2), run_torch=_pool_run_torch, run_qexact=_pool_run_qexact,
       profiles={"pytorch": _pool2d_pytorch_draw})
family("pool3d", draw=_pool_draw(3), run_torch=_pool_run_torch, run_qexact=_pool_run_qexact)


# --- upsample2d ----------------------------------------------------------------------------------

_FACTORS = (0.5, 0.7, 1.0, 1.1, 1.3, 1.5, 2.0, 2.2, 2.5, 3.0)


def _upsample_draw(rng, engine):
    """F.interpolate, nearest or bilinear (align_corners both ways), by size or by factor (listed
    factors, one time in ten a random one), both memory formats."""
    mode = str(rng.choice(["nearest", "bilinear"]))
    x = _draw_pool_input(rng, engine, 2, 12)
    size = scale_factor = None
    if rng.random() < 0.4:
        size = [int(v) for v in rng.integers(1, 15, 2)]
    else:
        factor = float(rng.choice(_FACTORS)) if rng.random() < 0.9 else float(rng.uniform(1, 4))
        scale_factor = factor if rng.random() < 0.7 else [factor, float(rng.choice(_FACTORS))]
        factors = scale_factor if isinstance(scale_factor, list) else [scale_factor] * 2
        if min(math.floor(s * f) for s, f in zip(x["shape"][2:], factors)) < 1:
            return None  # PyTorch: "Input and output sizes should be greater than 0"
    params = {"op": "interpolate", "mode": mode, **x,
              "align_corners": bool(rng.random() < 0.5) if mode == "bilinear" else None,
              "size": size, "scale_factor": scale_factor}
    return Case(params, {"x": draw_ints(rng, DTYPES[x["x_dtype"]], x["shape"], 0.15)})


def _upsample_run_torch(case):
    import torch.nn.functional as F

    p = case.params
    return torch_outputs(F.interpolate(torch_input(case), size=p["size"], scale_factor=p["scale_factor"],
                                       mode=p["mode"], align_corners=p["align_corners"]))


def _upsample_run_qexact(case, engine):
    from ..ops.resample import prepare_upsample, upsample

    p = case.params
    params = prepare_upsample(p["mode"], p["size"], p["scale_factor"], p["align_corners"], engine=engine)
    return qexact_outputs(upsample(qexact_input(case), params))


family("upsample2d", draw=_upsample_draw, run_torch=_upsample_run_torch,
       run_qexact=_upsample_run_qexact)
