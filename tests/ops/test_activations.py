"""Quantized activations: relu, clamp (relu6/hardtanh), sigmoid, tanh, hardsigmoid, hardswish,
leaky_relu, elu: bit-exact differential tests vs PyTorch (500 random cases per op per engine,
odd sizes, power-of-two scales for exact ties, quint8 and qint8)."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError
from qexact.ops.activations import activation, clamp, prepare_activation

CASES = 500


def torch_call(name, x, out_qp):
    import torch
    import torch.nn.functional as F

    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "hardsigmoid":
        return F.hardsigmoid(x)
    if name == "hardswish":
        return torch.ops.quantized.hardswish(x, out_qp.scale, out_qp.zero_point)
    if name == "leaky_relu":
        return torch.ops.quantized.leaky_relu(x, 0.1, False, out_qp.scale, out_qp.zero_point)
    return torch.ops.quantized.elu(x, out_qp.scale, out_qp.zero_point, 1.0, 1.0, 1.0)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "hardsigmoid", "hardswish", "leaky_relu", "elu"])
def test_activation_random_vs_torch(engine, name):
    import torch

    rng = np.random.default_rng([len(name), len(engine), ord(engine[0])])
    for case in range(CASES):
        dtype = QUINT8 if case % 2 else QINT8
        size = int(rng.integers(1, 200)) if case % 5 else int(rng.integers(1, 8))
        shape = (size,) if case % 3 else (1, size)
        values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
        if case % 4 < 2:
            s = 2.0 ** int(rng.integers(-7, 0))
            s_o = s * 2
        else:
            s, s_o = 10.0 ** rng.uniform(-3, 0, 2)
        z, z_o = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
        in_qp, out_qp = QParams.per_tensor(s, z, dtype), QParams.per_tensor(s_o, z_o, dtype)
        expected = torch_call(name, torch_quantized(values, in_qp), out_qp)
        extra = {"slope": 0.1} if name == "leaky_relu" else {}
        p = prepare_activation(name, in_qp, out_qp, engine=engine,
                               num_threads=torch.get_num_threads(), **extra)
        actual = activation(QuantizedArray(values, in_qp), p)
        assert (actual.scale, actual.zero_point) == (expected.q_scale(), expected.q_zero_point())
        assert_bitexact(actual.values, expected.int_repr().numpy(),
                        f"{engine} {name} {in_qp.describe()} -> {out_qp.describe()}")


@pytest.mark.torch
def test_clamps_random_vs_torch(engine):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(len(engine))
    for case in range(CASES):
        dtype = QUINT8 if case % 2 else QINT8
        values = rng.integers(dtype.qmin, dtype.qmax + 1, int(rng.integers(1, 200))).astype(
            dtype.numpy_dtype)
        qp = QParams.per_tensor(10.0 ** rng.uniform(-3, 0), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        x = torch_quantized(values, qp)
        low, high = sorted(rng.uniform(-3, 7, 2))
        for expected, (lo, hi) in ((torch.ops.quantized.relu6(x, False), (0.0, 6.0)),
                                   (F.hardtanh(x, low, high), (low, high)),
                                   (torch.relu(x), (0.0, None))):
            assert_bitexact(clamp(QuantizedArray(values, qp), lo, hi).values,
                            expected.int_repr().numpy(), f"{engine} clamp {lo} {hi}")


def test_errors():
    with pytest.raises(qexact.UnsupportedError, match="not supported"):
        prepare_activation("gelu", QParams.per_tensor(0.1, 0, QUINT8))
    with pytest.raises(QuantParamError, match="required"):
        prepare_activation("hardswish", QParams.per_tensor(0.1, 0, QUINT8))


@pytest.mark.torch
def test_eager_model_activations(engine):
    import torch
    from torch import nn
    from torch.ao import quantization as tq

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.layers = nn.Sequential(nn.LeakyReLU(0.2), nn.ReLU6(), nn.ELU(), nn.Hardtanh(-0.5, 2.0),
                                        nn.Tanh(), nn.Hardsigmoid())
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.layers(self.quant(x)))

    torch.manual_seed(1)
    model = Model().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    model(torch.randn(3, 5, 67) * 3)
    tq.convert(model, inplace=True)
    x = torch.randn(3, 5, 67) * 3
    net = qexact.from_torch(model)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)
