"""Conformance cases: rescaling activations, hardsigmoid, elu, clamp, prelu."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..qparams import QParams, QuantizedArray
from ._inputs import draw_elementwise_input, draw_shape, draw_values, torch_quantized
from .runner import conformance_case


def _activation_case(engine, rng, function: str):
    import torch

    from ..ops.activations import activation, prepare_activation

    dtype = QUINT8 if rng.random() < 0.7 else QINT8
    shape = (int(rng.integers(1, 300)),) if rng.random() < 0.5 else draw_shape(rng)
    x_qparams = QParams.per_tensor(float(10 ** rng.uniform(-2.5, -0.5)),
                                   int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    out_qparams = QParams.per_tensor(float(10 ** rng.uniform(-2.5, -0.5)),
                                     int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    x = draw_values(rng, x_qparams, shape)
    tx = torch_quantized(x, x_qparams)
    if function == "sigmoid":
        theirs, params = torch.sigmoid(tx), prepare_activation("sigmoid", x_qparams, None, engine)
    elif function == "tanh":
        theirs, params = torch.tanh(tx), prepare_activation("tanh", x_qparams, None, engine)
    elif function == "hardswish":
        theirs = torch.ops.quantized.hardswish(tx, out_qparams.scale, out_qparams.zero_point)
        params = prepare_activation("hardswish", x_qparams, out_qparams, engine)
    else:  # leaky_relu
        slope = float(rng.uniform(0.01, 0.3))
        theirs = torch.ops.quantized.leaky_relu(tx, slope, False, out_qparams.scale,
                                                out_qparams.zero_point)
        params = prepare_activation("leaky_relu", x_qparams, out_qparams, engine, slope=slope)
    params = type(params)(**{**params.__dict__, "num_threads": torch.get_num_threads()})
    ours = activation(QuantizedArray(x, x_qparams), params).values
    return ours, theirs.int_repr().numpy(), f"{function} {dtype.name} shape={shape}"


for _function in ("sigmoid", "tanh", "hardswish", "leaky_relu"):
    conformance_case(_function)(lambda engine, rng, f=_function: _activation_case(engine, rng, f))


@conformance_case("hardsigmoid")
def _hardsigmoid_case(engine, rng):
    import torch
    import torch.nn.functional as F

    from ..ops.activations import activation, prepare_activation

    x, qparams = draw_elementwise_input(rng)
    theirs = F.hardsigmoid(torch_quantized(x, qparams))
    params = prepare_activation("hardsigmoid", qparams, None, engine,
                                num_threads=torch.get_num_threads())
    ours = activation(QuantizedArray(x, qparams), params).values
    return ours, theirs.int_repr().numpy(), f"{qparams.dtype.name} shape={x.shape}"


@conformance_case("elu")
def _elu_case(engine, rng):
    """quantized::elu with alpha, scale and input_scale drawn around 1 (nn.ELU(alpha) and the
    generalized form), SIMD blocks of 64 and scalar tails."""
    import torch

    from ..ops.activations import activation, prepare_activation

    x, qparams = draw_elementwise_input(rng)
    dtype = qparams.dtype
    out = QParams.per_tensor(float(10 ** rng.uniform(-2.5, -0.5)),
                             int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    alpha, scale, input_scale = ((1.0, 1.0, 1.0) if rng.random() < 0.4 else
                                 tuple(float(v) for v in rng.uniform(0.25, 2.0, 3)))
    theirs = torch.ops.quantized.elu(torch_quantized(x, qparams), out.scale, out.zero_point,
                                     alpha, scale, input_scale)
    params = prepare_activation("elu", qparams, out, engine, num_threads=torch.get_num_threads(),
                                alpha=alpha, scale=scale, input_scale=input_scale)
    ours = activation(QuantizedArray(x, qparams), params).values
    return ours, theirs.int_repr().numpy(), (f"{dtype.name} shape={x.shape} -> {out.describe()} "
                                             f"alpha={alpha} scale={scale} "
                                             f"input_scale={input_scale}")


@conformance_case("clamp")
def _clamp_case(engine, rng):
    import torch
    import torch.nn.functional as F

    from ..engines import get_engine
    from ..engines.aten import elementwise_numerics
    from ..ops.activations import clamp

    x, qparams = draw_elementwise_input(rng)
    tx = torch_quantized(x, qparams)
    low, high = (float(v) for v in sorted(rng.uniform(-3, 7, 2)))
    form = int(rng.integers(3))
    if form == 0:
        theirs, (low, high) = torch.ops.quantized.relu6(tx, False), (0.0, 6.0)
    elif form == 1:
        theirs = F.hardtanh(tx, low, high)
    else:
        theirs = torch.clamp(tx, low, high)
    ours = clamp(QuantizedArray(x, qparams), low, high, elementwise_numerics(get_engine(engine)))
    return ours.values, theirs.int_repr().numpy(), \
        f"{('relu6', 'hardtanh', 'clamp')[form]} [{low}, {high}] {qparams.describe()} shape={x.shape}"


@conformance_case("prelu")
def _prelu_case(engine, rng):
    import torch

    from ..ops.prelu import prelu, prepare_prelu

    dtype = QUINT8 if rng.random() < 0.7 else QINT8
    rank = int(rng.integers(1, 6))
    shape = tuple(int(s) for s in rng.integers(1, 9, rank))
    if rank == 1 and rng.random() < 0.5:
        shape = (int(rng.integers(1, 300)),)
    elif rank >= 2 and rng.random() < 0.4:
        shape = (shape[0], int(rng.integers(1, 40))) + shape[2:]
    channels = shape[1] if rank >= 2 else shape[0]
    x = draw_values(rng, QParams.per_tensor(1.0, 0, dtype), shape)
    weight = draw_values(rng, QParams.per_tensor(1.0, 0, dtype),
                         (channels if rng.random() < 0.6 else 1,))
    if rng.random() < 0.4:  # exact ties: power-of-two scales, odd output zero point
        s_x, s_w = 2.0 ** rng.integers(-7, 0, 2)
        s_o = s_x * 2.0 ** int(rng.integers(-2, 3))
        z_o = int(rng.integers(dtype.qmin // 2, dtype.qmax // 2)) * 2 + 1
    else:
        s_x, s_w, s_o = 10.0 ** rng.uniform(-3, 0.5, 3)
        z_o = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    z_x, z_w = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
    x_qp, w_qp = QParams.per_tensor(s_x, z_x, dtype), QParams.per_tensor(s_w, z_w, dtype)
    out_qp = QParams.per_tensor(s_o, z_o, dtype)
    tx = torch_quantized(x, x_qp)
    if rank in (4, 5) and rng.random() < 0.4:
        tx = tx.contiguous(memory_format=torch.channels_last if rank == 4
                           else torch.channels_last_3d)
    theirs = torch.ops.quantized.prelu(tx, torch_quantized(weight, w_qp), s_o, z_o)
    params = prepare_prelu(weight, w_qp, x_qp, out_qp, engine=engine,
                           num_threads=torch.get_num_threads())
    ours = prelu(QuantizedArray(tx.int_repr().numpy(), x_qp), params).values
    return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs.int_repr().numpy()),
            f"{dtype.name} x={shape} strides={tx.stride()} weight={weight.shape}")
