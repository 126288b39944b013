"""qint32 tensors where PyTorch's arithmetic is dtype-generic: relu (integer max), max_pool
(integer max over the taps), flatten (a reshape) and quantized cat (dequantize, cat,
``quantize_per_tensor``: the general path; qint32's own quantize/dequantize formulas,
``ops.quantize``), bit-exact vs PyTorch on every engine. quantized add on qint32 and the NHWC cat
kernel on qint32 stay refused."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT32, QParams, QuantizedArray, UnsupportedError
from qexact.ops.activations import relu
from qexact.ops.concat import cat, prepare_cat
from qexact.ops.elementwise import binary, prepare_binary
from qexact.ops.pooling import pool, prepare_pool


def _int32(rng, shape, case):
    """Small codes, codes past 2**24 (float32 loses them) and the full range (saturation)."""
    big = (2**8, 2**26, 2**31)[case % 3]
    return rng.integers(-big, min(big, 2**31 - 1), shape).astype(np.int32)


@pytest.mark.torch
def test_relu_and_max_pool_vs_torch(engine):
    import torch.nn.functional as F

    rng = np.random.default_rng([5, len(engine)])
    for case in range(60):
        spatial = 1 + case % 2
        k, stride = int(rng.integers(1, 4)), int(rng.integers(1, 3))
        padding, dilation = int(rng.integers(0, k // 2 + 1)), int(rng.integers(1, 3))
        shape = [int(rng.integers(1, 3)), int(rng.integers(1, 20))] + [
            int(rng.integers(k * dilation + 1, k * dilation + 8)) for _ in range(spatial)]
        qp = QParams.per_tensor(0.01, int(rng.integers(-100, 100)), QINT32)
        x = torch_quantized(_int32(rng, shape, case), qp)
        if spatial == 2 and case % 4 == 1:
            x = x.contiguous(memory_format=__import__("torch").channels_last)
        values = x.int_repr().numpy()
        assert_bitexact(relu(QuantizedArray(values, qp)).values, x.relu().int_repr().numpy(),
                        f"{engine} relu")
        ceil_mode = case % 3 == 0
        expected = (F.max_pool1d if spatial == 1 else F.max_pool2d)(
            x, k, stride, padding, dilation, ceil_mode)
        p = prepare_pool("max", spatial, k, stride, padding, dilation, ceil_mode, engine=engine)
        assert_bitexact(pool(QuantizedArray(values, qp), p).values,
                        expected.int_repr().numpy(), f"{engine} max_pool{spatial}d")


@pytest.mark.torch
def test_cat_vs_torch(engine):
    import torch

    rng = np.random.default_rng([9, len(engine)])
    for case in range(120):
        shape = [int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 40))]
        dim = int(rng.integers(0, 3))
        values, qparams = [], []
        for _ in range(int(rng.integers(1, 4))):
            part = list(shape)
            part[dim] = int(rng.integers(1, 6))
            values.append(_int32(rng, part, case))
            same = case % 5 == 0
            qparams.append(QParams.per_tensor(0.05 if same else float(10 ** rng.uniform(-4, 1)),
                                              3 if same else int(rng.integers(-1000, 1000)),
                                              QINT32))
        out = (QParams.per_tensor(0.05, 3, QINT32) if case % 5 == 0 else
               QParams.per_tensor(float(10 ** rng.uniform(-4, 1)), int(rng.integers(-1000, 1000)),
                                  QINT32))
        relu_fused = case % 7 == 0
        tensors = [torch_quantized(v, q) for v, q in zip(values, qparams)]
        op = torch.ops.quantized.cat_relu if relu_fused else torch.ops.quantized.cat
        expected = op(tensors, dim, out.scale, out.zero_point)
        p = prepare_cat(qparams, out, dim, relu_fused, engine=engine)
        actual = cat([QuantizedArray(v, q) for v, q in zip(values, qparams)], p)
        assert_bitexact(actual.values, expected.int_repr().numpy(), f"{engine} cat case {case}")


@pytest.mark.torch
def test_model_on_qint32(engine, tmp_path):
    """relu, flatten, torch.cat, quantized.cat and max_pool1d on a qint32 tensor in one FX model;
    saved and loaded."""
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.nn.quantized.Quantize(0.003, 5, torch.qint32)
            self.dequant = torch.ao.nn.quantized.DeQuantize()

        def forward(self, x):
            x = torch.relu(self.quant(x))
            x = torch.nn.functional.max_pool1d(x, 3, 2)
            x = torch.cat([x, x], 1)
            # a zero point in [0, 255]: the quantized.cat handler checks it against quint8 (see report)
            x = torch.ops.quantized.cat([x, x], 2, 0.007, 40)
            return self.dequant(torch.flatten(x, 1))

    torch.manual_seed(0)
    model = Model().eval()
    x = torch.randn(2, 3, 19) * 3
    expected = model(x).numpy()
    net = qexact.from_torch(model)
    assert_bitexact(net(x.numpy()), expected, engine)
    qexact.save(net, tmp_path / "m")
    assert_bitexact(qexact.load(tmp_path / "m")(x.numpy()), expected, f"{engine} loaded")


def test_refused_on_qint32():
    qp = QParams.per_tensor(0.1, 0, QINT32)
    p = prepare_cat((qp, qp), qp, 1, engine="fbgemm")
    nhwc = np.zeros((1, 2, 3, 3), np.int32).transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    with pytest.raises(UnsupportedError, match="qint32"):
        cat([QuantizedArray(nhwc, qp), QuantizedArray(nhwc, qp)], p)


@pytest.mark.torch
@pytest.mark.parametrize("relu", [False, True])
def test_add_vs_torch(engine, relu):
    """``quantized::add`` on qint32: SIMD units of 16 (two 8-lane vectors), ``quantize_val`` on
    both paths, the tail's ``q - z`` wrapping in int32; codes up to +-2^31."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
    for case in range(40):
        shape = (int(rng.integers(1, 70)),) if case % 3 else (2, 3, int(rng.integers(1, 40)))
        high = 2**31 - 1 if case % 4 == 0 else 4000
        qa, qb = (rng.integers(-high, high, size=shape).astype(np.int32) for _ in range(2))
        (sa, sb, so), (za, zb, zo) = rng.uniform(1e-4, 2, 3), rng.integers(-900, 900, 3)
        qparams = [QParams.per_tensor(float(s), int(z), QINT32)
                   for s, z in ((sa, za), (sb, zb), (so, zo))]
        expected = op(*(torch._make_per_tensor_quantized_tensor(torch.from_numpy(q), float(s),
                                                                 int(z))
                        for q, s, z in ((qa, sa, za), (qb, sb, zb))), float(so), int(zo))
        p = prepare_binary("add", *qparams, relu, engine=engine, num_threads=1)
        ours = binary(QuantizedArray(qa, qparams[0]), QuantizedArray(qb, qparams[1]), p)
        assert np.array_equal(ours.values, expected.int_repr().numpy()), (engine, case, shape)


def test_mul_refused_on_qint32():
    qp = QParams.per_tensor(0.1, 0, QINT32)
    with pytest.raises(UnsupportedError, match="qint32"):
        prepare_binary("mul", qp, qp, qp, engine="fbgemm")
