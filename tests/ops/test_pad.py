"""F.pad / nn.ZeroPad2d / nn.ConstantPad*d (constant mode) on quantized and float tensors."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QUINT8, QINT8, QParams, QuantizedArray
from qexact.ops.shape import pad_constant
from qexact.engines import engine_names

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional


def _same(ours, theirs, context):
    assert_bitexact(ours, theirs, context)
    assert ours.strides == theirs.strides, f"memory format differs: {context}"


def test_pad_vs_torch():
    rng = np.random.default_rng(0)
    for case in range(600):
        rank = int(rng.integers(1, 6))
        shape = tuple(int(s) for s in rng.integers(2, 7, rank))
        pairs = int(rng.integers(1, rank + 1))
        pad = tuple(int(p) for p in rng.integers(-1, 4, 2 * pairs))
        value = float(rng.choice([0.0, 1.0, -2.5, float(rng.uniform(-3, 3))]))
        dtype = QUINT8 if case % 3 else QINT8
        qparams = QParams.per_tensor(float(2.0 ** rng.integers(-5, 1)) if case % 2
                                     else float(10 ** rng.uniform(-2, 0)),
                                     int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        x = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
        t = torch_quantized(x, qparams)
        if rank == 4 and case % 4 == 0:
            t = t.contiguous(memory_format=torch.channels_last)
        try:
            theirs = F.pad(t, pad, value=value)
        except RuntimeError:
            continue  # an empty result
        context = f"{shape} pad={pad} value={value} {qparams.describe()}"
        ours = pad_constant(QuantizedArray(t.int_repr().numpy(), qparams), pad, value)
        _same(ours.values, theirs.int_repr().numpy(), context)
        floats = t.dequantize()
        _same(pad_constant(floats.numpy(), pad, value), F.pad(floats, pad, value=value).numpy(),
              "float " + context)


@pytest.mark.parametrize("engine", engine_names())
def test_padding_modules_and_functions_in_models(engine):
    from torch import nn
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.pad, self.conv = nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(3, 4, 3)
            self.pad2 = nn.ConstantPad2d(1, 0.75)

        def forward(self, x):
            return F.pad(self.pad2(self.conv(self.pad(x))), (0, 1, 1, 0), value=-0.5)

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = convert_fx(prepare_fx(Padded().eval(), get_default_qconfig_mapping(engine),
                                  (torch.randn(2, 3, 7, 6),)))
    net = qexact.from_torch(model)
    x = torch.randn(2, 3, 7, 6)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)
    assert "pad" in {node.op for node in net.graph.nodes}
