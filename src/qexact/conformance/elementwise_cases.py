"""Conformance cases: add / mul (+relu), add_scalar / mul_scalar, cat."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..qparams import QParams, QuantizedArray
from ._inputs import (TorchThreads, draw_scale, draw_shape, draw_small_shape, draw_values,
                      torch_image, torch_quantized)
from .runner import conformance_case


def _binary_case(engine, rng, op: str, relu: bool):
    import torch

    from ..ops.elementwise import binary, prepare_binary

    dtype = QUINT8 if engine == "qnnpack" or rng.random() < 0.7 else QINT8
    shape = draw_shape(rng)
    if rng.random() < 0.5:
        shape = (int(rng.integers(1, 300)),)  # long runs: SIMD body and tail
    qparams = [QParams.per_tensor(draw_scale(rng), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
               for _ in range(3)]
    if op == "add" and engine == "qnnpack":  # scale ratios QNNPACK accepts
        qparams[1] = QParams.per_tensor(qparams[0].scale * float(rng.uniform(0.5, 2)),
                                        qparams[1].zero_point, dtype)
        qparams[2] = QParams.per_tensor(qparams[0].scale * float(rng.uniform(0.5, 4)),
                                        min(qparams[2].zero_point, 254), dtype)
    a, b = (draw_values(rng, qparams[i], shape) for i in range(2))
    params = prepare_binary(op, qparams[0], qparams[1], qparams[2], relu=relu, engine=engine,
                            num_threads=torch.get_num_threads())
    ours = binary(QuantizedArray(a, qparams[0]), QuantizedArray(b, qparams[1]), params).values
    kernel = getattr(torch.ops.quantized, f"{op}_relu" if relu else op)
    theirs = kernel(torch_quantized(a, qparams[0]), torch_quantized(b, qparams[1]),
                    qparams[2].scale, qparams[2].zero_point).int_repr().numpy()
    return ours, theirs, f"{dtype.name} shape={shape}"


for _op in ("add", "mul"):
    for _relu in (False, True):
        conformance_case(f"{_op}_relu" if _relu else _op)(
            lambda engine, rng, op=_op, relu=_relu: _binary_case(engine, rng, op, relu))


def _scalar_case(engine, rng, op: str):
    import torch

    from ..ops.scalar import prepare_scalar, scalar_op

    dtype = QUINT8 if rng.random() < 0.5 else QINT8
    shape = draw_small_shape(rng)
    scale = draw_scale(rng)
    qparams = QParams.per_tensor(scale, int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    x = draw_values(rng, qparams, shape)
    kind = rng.random()
    if op == "mul_scalar":
        scalar = float(rng.choice([0.0, -1.0, 1.0, 2.0])) if kind < 0.2 else float(rng.uniform(-5, 5))
    elif kind < 0.3:
        scalar = float(rng.integers(-40, 40)) * scale
    elif kind < 0.5:  # exact halves of the scale: ties
        scalar = (float(rng.integers(-300, 300)) + 0.5) * scale
    else:
        scalar = float(rng.uniform(-1, 1) * 10.0 ** rng.uniform(-2, 2.5))
    relu = bool(rng.random() < 0.3)
    with TorchThreads(1):
        theirs = getattr(torch.ops.quantized, op + ("_relu" if relu else ""))(
            torch_quantized(x, qparams), scalar)
    ours = scalar_op(QuantizedArray(x, qparams), prepare_scalar(op, qparams, scalar, relu=relu))
    ours_all = np.concatenate([ours.values.ravel().astype(np.float64), [ours.scale, ours.zero_point]])
    theirs_all = np.concatenate([theirs.int_repr().numpy().ravel().astype(np.float64),
                                 [theirs.q_scale(), theirs.q_zero_point()]])
    return ours_all, theirs_all, f"{dtype.name} c={scalar!r} relu={relu} {qparams.describe()} shape={shape}"


conformance_case("add_scalar")(lambda engine, rng: _scalar_case(engine, rng, "add_scalar"))
conformance_case("mul_scalar")(lambda engine, rng: _scalar_case(engine, rng, "mul_scalar"))


@conformance_case("cat")
def _cat_case(engine, rng):
    import torch

    from ..ops.concat import cat, prepare_cat

    dtype = QUINT8 if rng.random() < 0.6 else QINT8
    channels_last = bool(rng.random() < 0.4)
    base = [int(rng.integers(1, 3)), *(int(v) for v in rng.integers(1, 12, 3))] if channels_last \
        else [int(v) for v in rng.integers(1, 12, int(rng.integers(1, 5)))]
    dim = int(rng.integers(len(base)))
    shapes = []
    for _ in range(int(rng.integers(1, 4))):
        shape = list(base)
        shape[dim] = int(rng.integers(1, 12))
        shapes.append(tuple(shape))
    qparams = [qp if rng.random() < 0.3 and i else
               QParams.per_tensor(float(10 ** rng.uniform(-2.5, 0)),
                                  int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
               for i, qp in enumerate([None] * len(shapes))]
    qparams = [qp or qparams[0] for qp in qparams]
    out = qparams[0] if rng.random() < 0.2 else QParams.per_tensor(
        float(10 ** rng.uniform(-2.5, 0)), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = [draw_values(rng, qp, s) for qp, s in zip(qparams, shapes)]
    relu = bool(rng.random() < 0.3)
    tensors = [torch_image(v, qp, channels_last) for v, qp in zip(values, qparams)]
    op = torch.ops.quantized.cat_relu if relu else torch.ops.quantized.cat
    with TorchThreads(1):
        theirs = op(tensors, dim, out.scale, out.zero_point)
    params = prepare_cat(qparams, out, dim, relu=relu, engine=engine)
    ours = cat([QuantizedArray(t.int_repr().numpy(), qp) for t, qp in zip(tensors, qparams)], params)
    return (np.ascontiguousarray(ours.values), np.ascontiguousarray(theirs.int_repr().numpy()),
            f"{dtype.name} dim={dim} relu={relu} {shapes} channels_last={channels_last}")
