"""SiLU on float32 tensors (FX leaves it between a dequantize and a quantize): bit-exact with
ATen's float kernel, SIMD body (SLEEF exp) and scalar tail (glibc expf) alike."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines.aten import float_elementwise_numerics
from qexact.ops.float_activations import SiluParams, silu_float

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn


def _params(engine="fbgemm", threads=None, capability=None):
    numerics = float_elementwise_numerics(qexact.get_engine(engine, aten_capability=capability))
    return SiluParams(numerics, threads or torch.get_num_threads())


def test_silu_random_vs_torch():
    rng = np.random.default_rng(0)
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
        ours = silu_float(t.numpy(), _params())
        assert_bitexact(ours, F.silu(t).numpy(), f"silu {shape}")
        assert tuple(s // 4 for s in ours.strides) == t.stride()
        elements += x.size
    assert elements > 50_000


@pytest.mark.parametrize("threads", [1, 2])
def test_silu_large_tensor_chunks(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = (np.random.default_rng(threads).standard_normal(70_001) * 8).astype(np.float32)
        assert_bitexact(silu_float(x, _params(threads=threads)), F.silu(torch.from_numpy(x)).numpy(),
                        f"{threads} threads")
    finally:
        torch.set_num_threads(previous)


SCRIPT = r"""
import numpy as np, torch, qexact
from qexact.engines.aten import float_elementwise_numerics
from qexact.ops.float_activations import SiluParams, silu_float
x = (np.random.default_rng(5).standard_normal(4099) * 8).astype(np.float32)
p = SiluParams(float_elementwise_numerics(qexact.get_engine("fbgemm")), 1)
ours, theirs = silu_float(x, p), torch.nn.functional.silu(torch.from_numpy(x)).numpy()
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
