"""Conformance family: mean (``torch.mean(x, dim, keepdim=keepdim)``; ``dim`` null: ``torch.mean(x)``,
a full reduction to a 0-d tensor).

Params follow ``tests/data/recordings/*/README.md``: npz ``x`` (``shape``, ``x_scale``,
``x_zero_point``, ``x_dtype``, ``x_channels_last``), ``dim`` (a list or null), ``keepdim``, and
``num_threads`` on the large full reductions whose float sum PyTorch cuts per thread.
"""

from __future__ import annotations

from ._draws import (DTYPES, draw_ints, draw_scale, draw_zero_point, pytorch_shape, pytorch_tensor,
                     qexact_input, qexact_outputs, threads, torch_input, torch_outputs)
from .family import Case, family


def _mean_draw(rng, engine):
    """Ranks 1-4; 4-D inputs with channels around the 8/32-column blocks of ATen's float sum,
    either layout, reduced over H, W (the qnnpack/fbgemm fast path) or any subset; one time in
    twenty a full reduction of >= 32768 elements on 2-4 threads (two_pass_reduction)."""
    dtype = "qint8" if rng.random() < 0.35 else "quint8"
    if rng.random() < 0.05:
        shape = [int(rng.integers(2, 5)), int(rng.integers(64, 200)), 16, int(rng.integers(16, 32))]
        params = {"op": "mean", "shape": shape, "dim": None, "keepdim": False,
                  "x_channels_last": False, "num_threads": int(rng.integers(2, 5))}
    else:
        rank = 4 if rng.random() < 0.5 else int(rng.integers(1, 5))
        shape = [int(rng.integers(1, 12)) for _ in range(rank)]
        if rank == 4:
            shape[1:] = [int(rng.integers(1, 80)), int(rng.integers(1, 10)), int(rng.integers(1, 10))]
        kind = rng.random()
        if rank == 4 and kind < 0.5:
            dim = [2, 3] if rng.random() < 0.8 else [-1, -2]
        elif kind < 0.65:
            dim = None
        else:
            dim = sorted(int(d) for d in rng.choice(rank, int(rng.integers(1, rank + 1)), replace=False))
        params = {"op": "mean", "shape": shape, "dim": dim, "keepdim": bool(rng.random() < 0.5),
                  "x_channels_last": bool(rank == 4 and rng.random() < 0.5)}
    params.update(x_scale=draw_scale(rng, -3, 1), x_zero_point=draw_zero_point(rng, DTYPES[dtype]),
                  x_dtype=dtype)
    return Case(params, {"x": draw_ints(rng, DTYPES[dtype], params["shape"], 0.15)})


def _mean_pytorch_draw(rng, engine):
    """As test_mean: a hypothesis tensor of array_shapes(4, 4, 1, 5) (test_qmean: dims (2, 3)),
    quint8 or qint8 with qparams from its values; any dim subset one time in three."""
    shape = pytorch_shape(rng, 4, 4, 1, 5)
    x, scale, zero_point, dtype = pytorch_tensor(rng, shape)
    dim = [2, 3] if rng.random() < 0.67 else sorted(
        int(d) for d in rng.choice(4, int(rng.integers(1, 5)), replace=False))
    params = {"op": "mean", "shape": shape, "dim": dim, "keepdim": bool(rng.random() < 0.5),
              "x_channels_last": bool(rng.random() < 0.3), "x_scale": scale,
              "x_zero_point": zero_point, "x_dtype": dtype}
    return Case(params, {"x": x})


def _mean_run_torch(case):
    import torch

    p = case.params
    x = torch_input(case)
    y = torch.mean(x) if p["dim"] is None else torch.mean(x, p["dim"], keepdim=p["keepdim"])
    return torch_outputs(y)


def _mean_run_qexact(case, engine):
    from ..ops.reduce import mean, prepare_mean

    p = case.params
    params = prepare_mean(p["dim"], bool(p["keepdim"]) if p["dim"] is not None else False,
                          engine=engine, intra_op_threads=threads(p))
    return qexact_outputs(mean(qexact_input(case), params))


family("mean", draw=_mean_draw, run_torch=_mean_run_torch, run_qexact=_mean_run_qexact,
       profiles={"pytorch": _mean_pytorch_draw})
