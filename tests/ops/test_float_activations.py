"""SiLU and sigmoid on float32 tensors (FX leaves SiLU between a dequantize and a quantize;
detection heads apply sigmoid after a DeQuantStub): bit-exact with ATen's float kernels, SIMD body
(SLEEF exp) and scalar tail (glibc expf) alike."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines.aten import float_elementwise_numerics
from qexact.ops.float_activations import FloatKernelParams, float_kernel

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn


def _params(engine="fbgemm", threads=None, capability=None, function="silu"):
    numerics = float_elementwise_numerics(qexact.get_engine(engine, aten_capability=capability))
    return FloatKernelParams(function, numerics, threads or torch.get_num_threads())


TORCH_FUNCTIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}


@pytest.mark.parametrize("function", ["silu", "sigmoid"])
def test_float_kernel_random_vs_torch(function):
    rng = np.random.default_rng(0 if function == "silu" else 1)
    elements = 0
    for case in range(500):
        rank = int(rng.integers(1, 5))
        shape = (int(rng.integers(1, 300)),) if rank == 1 else \
            tuple(int(s) for s in rng.integers(1, 12, rank))
        x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-1, 1.5)).astype(np.float32)
        if case % 10 == 0:
            x.flat[::7] = rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 88.7, -104.5, 1e-40])
        t = torch.from_numpy(x)
        if rank == 4 and case % 3 == 0:
            t = t.contiguous(memory_format=torch.channels_last)
        ours = float_kernel(t.numpy(), _params(function=function))
        assert_bitexact(ours, TORCH_FUNCTIONS[function](t).numpy(), f"{function} {shape}")
        assert tuple(s // 4 for s in ours.strides) == t.stride()
        elements += x.size
    assert elements > 50_000


@pytest.mark.parametrize("threads", [1, 2])
def test_silu_large_tensor_chunks(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = (np.random.default_rng(threads).standard_normal(70_001) * 8).astype(np.float32)
        assert_bitexact(float_kernel(x, _params(threads=threads)), F.silu(torch.from_numpy(x)).numpy(),
                        f"{threads} threads")
    finally:
        torch.set_num_threads(previous)


SCRIPT = r"""
import numpy as np, torch, qexact
from qexact.engines.aten import float_elementwise_numerics
from qexact.ops.float_activations import FloatKernelParams, float_kernel
x = (np.random.default_rng(5).standard_normal(4099) * 8).astype(np.float32)
p = FloatKernelParams("silu", float_elementwise_numerics(qexact.get_engine("fbgemm")), 1)
ours, theirs = float_kernel(x, p), torch.nn.functional.silu(torch.from_numpy(x)).numpy()
print(int((ours.view(np.uint32) != theirs.view(np.uint32)).sum()), p.numerics.capability)
"""


def test_silu_aten_capability_default_subprocess():
    env = dict(__import__("os").environ, ATEN_CPU_CAPABILITY="default")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == ["0", "default"]


class SqueezeExciteSiLU(nn.Module):
    """An EfficientNet-style block: conv, SiLU, squeeze-excite (sigmoid gate), conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.act(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.silu(self.fc1(self.pool(y)))))
        return self.out(y * gate)


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
def test_fx_efficientnet_block(engine):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = SqueezeExciteSiLU().eval()
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (torch.randn(2, 3, 9, 9),))
    for _ in range(3):
        prepared(torch.randn(2, 3, 9, 9))
    model = convert_fx(prepared)
    net = qexact.from_torch(model)
    assert "silu" in {node.op for node in net.graph.nodes}
    x = torch.randn(2, 3, 9, 9)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)


class DetectionHead(nn.Module):
    """A head that leaves the network quantized and decodes in float: sigmoid after DeQuantStub."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), \
            torch.ao.quantization.DeQuantStub()
        self.conv = nn.Conv2d(3, 18, 3, padding=1)

    def forward(self, x):
        y = self.dequant(self.conv(self.quant(x)))
        return torch.sigmoid(y[:, :2]), y[:, 2:].sigmoid() * 4.0 - 1.0


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
def test_eager_detection_head_float_sigmoid(engine):
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = engine
    torch.manual_seed(1)
    model = DetectionHead().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    model(torch.randn(2, 3, 9, 11))
    tq.convert(model, inplace=True)
    net = qexact.from_torch(model)
    x = torch.randn(2, 3, 9, 11)
    for ours, theirs in zip(net(x.numpy()), model(x)):
        assert_bitexact(ours, theirs.numpy(), engine)
    stages = net.explain(x.numpy(), index=(0, 1, 4, 5)).stages
    assert any("sigmoid (float)" in stage.name for stage in stages)
