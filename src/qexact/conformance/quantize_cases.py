"""Conformance families: quantize_per_tensor (+ dequantize) and quantize_per_channel
(+ dequantize).

A case is a float32 npz ``x`` (``shape``) and the qparams passed: ``dtype`` (quint8, qint8,
qint32), ``scale`` and ``zero_point`` (per tensor), or ``axis`` with npz ``scales`` (float64) and
``zero_points`` (int64) exactly as given to ``torch.quantize_per_channel``. Outputs: ``y`` (the
int_repr) and ``y_dequantized`` (``dequantize()`` of it, float32).
"""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QINT32, QUINT8
from ._draws import draw_scale
from .family import Case, family

_DTYPES = {"quint8": QUINT8, "qint8": QINT8, "qint32": QINT32}


def _shape(rng) -> list[int]:
    if rng.random() < 0.4:
        return [int(rng.integers(1, 600))]  # SIMD body and tail
    return [int(v) for v in rng.integers(1, 24, int(rng.integers(1, 5)))]


def _floats(rng, shape, scale) -> np.ndarray:
    """Normals over ~100 steps; one time in three exact half steps (ties); specials sprinkled
    (0, -0, +-inf, NaN, values past the integer range)."""
    if rng.random() < 0.3:
        x = rng.integers(-600, 600, shape) * (scale / 2)
    else:
        x = rng.standard_normal(shape) * scale * 100
    x = np.asarray(x, np.float64)
    if rng.random() < 0.2:
        picks = rng.random(shape) < 0.05
        x = np.where(picks, rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e12, -1e12], shape), x)
    return x.astype(np.float32)


def _per_tensor_draw(rng, engine):
    dtype = str(rng.choice(list(_DTYPES)))
    qdtype = _DTYPES[dtype]
    scale = draw_scale(rng, -4, 1)
    zero_point = (int(rng.integers(qdtype.qmin, qdtype.qmax + 1)) if qdtype.bits == 8
                  else int(rng.integers(-999, 999)))
    shape = _shape(rng)
    return Case({"op": "quantize_per_tensor", "shape": shape, "dtype": dtype, "scale": scale,
                 "zero_point": zero_point}, {"x": _floats(rng, shape, scale)})


def _per_channel_draw(rng, engine):
    dtype = str(rng.choice(["quint8", "qint8"]))
    qdtype = _DTYPES[dtype]
    shape = _shape(rng)
    axis = int(rng.integers(len(shape)))
    scales = np.array([draw_scale(rng, -4, 1) for _ in range(shape[axis])], np.float64)
    zero_points = rng.integers(qdtype.qmin, qdtype.qmax + 1, shape[axis]).astype(np.int64)
    broadcast = scales.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    x = (rng.standard_normal(shape) * 30 * broadcast).astype(np.float32)
    return Case({"op": "quantize_per_channel", "shape": shape, "dtype": dtype, "axis": axis},
                {"x": x, "scales": scales, "zero_points": zero_points})


def _run_torch(case):
    import torch

    p, a = case.params, case.arrays
    x = torch.from_numpy(np.ascontiguousarray(a["x"]))
    if p["op"] == "quantize_per_tensor":
        q = torch.quantize_per_tensor(x, p["scale"], p["zero_point"], getattr(torch, p["dtype"]))
    else:
        q = torch.quantize_per_channel(x, torch.from_numpy(a["scales"]), torch.from_numpy(a["zero_points"]),
                                       p["axis"], getattr(torch, p["dtype"]))
    return {"y": q.int_repr().numpy(), "y_dequantized": q.dequantize().numpy()}


def _run_qexact(case, engine):
    from ..ops.quantize import dequantize, quantize_per_channel, quantize_per_tensor

    p, a = case.params, case.arrays
    if p["op"] == "quantize_per_tensor":
        q = quantize_per_tensor(a["x"], p["scale"], p["zero_point"], _DTYPES[p["dtype"]])
    else:
        q = quantize_per_channel(a["x"], a["scales"], a["zero_points"], p["axis"], _DTYPES[p["dtype"]])
    return {"y": q.values, "y_dequantized": dequantize(q)}


family("quantize_per_tensor", draw=_per_tensor_draw, run_torch=_run_torch, run_qexact=_run_qexact)
family("quantize_per_channel", draw=_per_channel_draw, run_torch=_run_torch, run_qexact=_run_qexact)
