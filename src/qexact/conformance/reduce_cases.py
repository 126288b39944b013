"""Conformance cases: mean over dims."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..qparams import QParams, QuantizedArray
from ._inputs import draw_values, torch_image
from .runner import conformance_case


@conformance_case("mean")
def _mean_case(engine, rng):
    import torch

    from ..ops.reduce import mean, prepare_mean

    rank = 4 if rng.random() < 0.6 else int(rng.integers(1, 5))
    shape = [int(rng.integers(1, 12)) for _ in range(rank)]
    if rank == 4:  # channels around the 8/32-column blocks of ATen's float sum
        shape[1], shape[2], shape[3] = int(rng.integers(1, 80)), int(rng.integers(1, 10)), int(rng.integers(1, 10))
    dtype = QUINT8 if rng.random() < 0.65 else QINT8
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = draw_values(rng, qparams, tuple(shape))
    if rng.random() < 0.15:  # exact ties
        values[...] = values.flat[0]
    t = torch_image(values, qparams, rank == 4 and bool(rng.random() < 0.6))
    draw = rng.random()
    if rank == 4 and draw < 0.55:
        dim = [2, 3] if rng.random() < 0.8 else [-2, -1]
    elif draw < 0.65:
        dim = None
    else:
        dim = sorted(int(d) for d in rng.choice(rank, int(rng.integers(1, rank + 1)), replace=False))
    keepdim = dim is not None and bool(rng.random() < 0.5)
    theirs = t.mean(dim, keepdim=keepdim) if dim is not None else t.mean()
    params = prepare_mean(dim, keepdim, engine=engine, intra_op_threads=torch.get_num_threads())
    ours = mean(QuantizedArray(t.int_repr().numpy(), qparams), params).values
    return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs.int_repr().numpy()),
            f"{dtype.name} x={tuple(shape)} strides={t.stride()} dim={dim} keepdim={keepdim}")
