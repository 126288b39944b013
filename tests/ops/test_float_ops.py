"""Float ops FX leaves between a dequantize and a quantize that qexact runs exactly (nearest
upsampling, adaptive max pooling), and clear refusals for those it does not model."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.ops.pool_graph import adaptive_max_pool_float
from qexact.ops.resample import prepare_upsample, upsample_nearest_float
from qexact.engines import engine_names

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn


def _float_inputs(rng, count):
    for case in range(count):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 12)),
                 int(rng.integers(1, 14)), int(rng.integers(1, 14)))
        x = rng.standard_normal(shape).astype(np.float32)
        if case % 5 == 0:
            x[..., 0] = np.nan
        if case % 7 == 0:
            x[:] = x.flat[0]  # ties everywhere
        t = torch.from_numpy(x)
        if case % 2:
            t = t.contiguous(memory_format=torch.channels_last)
        yield t


def _same(ours, theirs, context):
    assert_bitexact(ours, theirs.numpy(), context)
    strides = tuple(s // ours.itemsize for s in ours.strides)
    assert strides == tuple(theirs.stride()), f"memory format differs: {context}"


def test_adaptive_max_pool_float_vs_torch():
    rng = np.random.default_rng(0)
    for t in _float_inputs(rng, 300):
        out = tuple(int(rng.integers(1, s + 3)) for s in t.shape[2:])
        _same(adaptive_max_pool_float(t.numpy(), out), F.adaptive_max_pool2d(t, out),
              f"{tuple(t.shape)} -> {out}")
        flat = t.reshape(t.shape[0], -1, t.shape[-1]).contiguous()
        size = int(rng.integers(1, t.shape[-1] + 3))
        _same(adaptive_max_pool_float(flat.numpy(), (size,)), F.adaptive_max_pool1d(flat, size),
              f"1-D {tuple(flat.shape)} -> {size}")


def test_nearest_upsample_float_vs_torch():
    rng = np.random.default_rng(1)
    for t in _float_inputs(rng, 300):
        if rng.random() < 0.5:
            size, scale = tuple(int(rng.integers(1, 3 * s + 2)) for s in t.shape[2:]), None
        else:
            size, scale = None, float(rng.choice([0.5, 1.0, 1.5, 2.0, 3.0, 0.7, 2.3]))
            if min(int(s * scale) for s in t.shape[2:]) < 1:
                continue  # PyTorch refuses an empty output
        params = prepare_upsample("nearest", size, scale, engine="fbgemm")
        _same(upsample_nearest_float(t.numpy(), params),
              F.interpolate(t, size=size, scale_factor=scale, mode="nearest"),
              f"{tuple(t.shape)} size={size} scale={scale}")


class FloatPoolAndUpsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.pool, self.up = nn.AdaptiveMaxPool2d((3, 2)), nn.Upsample(scale_factor=2)

    def forward(self, x):
        return self.b(self.up(self.pool(self.a(x))))


def _fx(builder, engine, shape):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    prepared = prepare_fx(builder().eval(), get_default_qconfig_mapping(engine),
                          (torch.randn(shape),))
    prepared(torch.randn(shape))
    return convert_fx(prepared)


@pytest.mark.parametrize("engine", engine_names())
def test_fx_model_with_float_pool_and_upsample(engine):
    model = _fx(FloatPoolAndUpsample, engine, (2, 3, 9, 10))
    net = qexact.from_torch(model)
    x = torch.randn(2, 3, 9, 10)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)


def test_float_modules_qexact_does_not_model_are_named():
    class Bilinear(FloatPoolAndUpsample):
        def __init__(self):
            super().__init__()
            self.up = nn.Upsample(scale_factor=2, mode="bilinear")

    with pytest.raises(qexact.UnsupportedError, match="node 'up'.*bilinear upsampling of a float"):
        qexact.from_torch(_fx(Bilinear, "x86", (1, 3, 9, 10)))

    class Norm(FloatPoolAndUpsample):
        def __init__(self):
            super().__init__()
            self.up = nn.Mish()

    with pytest.raises(qexact.UnsupportedError, match="'up'.*Mish.*FX conversion left it"):
        qexact.from_torch(_fx(Norm, "x86", (1, 3, 9, 10)))
    quantized = torch.nn.Sequential(torch.ao.nn.quantized.Quantize(0.1, 0, torch.quint8),
                                    nn.AdaptiveMaxPool2d(2))
    with pytest.raises(qexact.UnsupportedError, match="no QuantizedCPU kernel"):
        qexact.from_torch(quantized)
