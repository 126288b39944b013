"""Float32 GroupNorm (contiguous: RowwiseMoments; channels_last impl-1: ColumnwiseMoments) and
eval BatchNorm1d/2d/3d (ops/float_normalization.py), and quantized::batch_norm1d
(ops/normalization.py), bit for bit against torch; models through from_torch, save / load."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

import qexact
from qexact.dtypes import QINT8, QUINT8
from qexact.engines import ATEN_CAPABILITIES, detect_aten_capability
from qexact.errors import UnsupportedError
from qexact.ops.float_normalization import (float_batch_norm, float_group_norm,
                                            prepare_float_batch_norm, prepare_float_group_norm)
from qexact.ops.normalization import batch_norm, prepare_batch_norm
from qexact.qparams import QParams, QuantizedArray

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn
warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")


def _t(value):
    return None if value is None else torch.from_numpy(value)


def _group_case(rng, shape, groups, affine):
    channels = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 100) + rng.uniform(-20, 20))
    weight = rng.standard_normal(channels).astype(np.float32) if affine & 1 else None
    bias = rng.standard_normal(channels).astype(np.float32) if affine & 2 else None
    return x.astype(np.float32), weight, bias


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_group_norm_vs_torch(engine, channels_last, report):
    torch.set_num_threads(1)
    rng = np.random.default_rng(int(channels_last))
    for trial in range(60):
        groups = int(rng.integers(1, 5))
        channels = groups * int(rng.integers(1, 20))
        spatial = [(int(rng.integers(1, 40)),), (int(rng.integers(1, 9)), int(rng.integers(1, 20))),
                   (2, 3, int(rng.integers(1, 6)))][trial % 3]
        if channels_last and len(spatial) == 1:
            spatial = (3, spatial[0])
        shape = (int(rng.integers(1, 3)), channels) + spatial
        x, weight, bias = _group_case(rng, shape, groups, trial % 4)
        tensor = torch.from_numpy(x)
        if channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last if len(shape) == 4
                                       else torch.channels_last_3d)
        for eps in (1e-5, 1e-3):
            expected = F.group_norm(tensor, groups, _t(weight), _t(bias), eps).numpy()
            params = prepare_float_group_norm(groups, channels, weight, bias, eps, engine=engine)
            out = float_group_norm(tensor.numpy(), params)
            assert_bitexact(out, expected, f"{shape} G={groups} affine={trial % 4}")
            assert out.strides == expected.strides
            report[f"float group_norm {'NHWC' if channels_last else 'NCHW'} {engine}"][
                "elements"] += x.size


def test_group_norm_edges_and_refusals():
    """Constant groups (var 0), one channel (counts as contiguous), the channels_last impl-2
    (H*W >= 1024) refused."""
    x = np.zeros((1, 4, 3, 3), np.float32)
    x[:, 2:] = 5.0
    for g in (1, 2, 4):
        expected = F.group_norm(torch.from_numpy(x), g, None, None, 1e-5).numpy()
        assert_bitexact(float_group_norm(x, prepare_float_group_norm(g, 4, None, None, 1e-5,
                                                                     engine="fbgemm")), expected)
    big = torch.randn(1, 4, 32, 32).contiguous(memory_format=torch.channels_last)
    with pytest.raises(UnsupportedError, match="impl-2"):
        float_group_norm(big.numpy(), prepare_float_group_norm(2, 4, None, None, 1e-5,
                                                               engine="fbgemm"))
    contiguous = big.contiguous()
    assert_bitexact(float_group_norm(contiguous.numpy(), prepare_float_group_norm(
        2, 4, None, None, 1e-5, engine="fbgemm")), F.group_norm(contiguous, 2).numpy())


@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(1, 4), per_group=st.integers(1, 12),
       hw=st.integers(1, 300), affine=st.integers(0, 3), channels_last=st.booleans())
@settings(max_examples=60, deadline=None)
def test_group_norm_random(seed, groups, per_group, hw, affine, channels_last):
    rng = np.random.default_rng(seed)
    shape = (2, groups * per_group, 1, hw)
    x, weight, bias = _group_case(rng, shape, groups, affine)
    tensor = torch.from_numpy(x)
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    expected = F.group_norm(tensor, groups, _t(weight), _t(bias), 1e-5).numpy()
    params = prepare_float_group_norm(groups, shape[1], weight, bias, 1e-5, engine="x86")
    assert_bitexact(float_group_norm(tensor.numpy(), params), expected, f"{shape}")


def _bn_case(rng, channels, affine):
    weight = rng.standard_normal(channels).astype(np.float32) if affine & 1 else None
    bias = rng.standard_normal(channels).astype(np.float32) if affine & 2 else None
    mean = (rng.standard_normal(channels) * 10).astype(np.float32)
    var = rng.uniform(0, 5, channels).astype(np.float32)
    return weight, bias, mean, var


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
def test_batch_norm_vs_torch(engine, rank, report):
    torch.set_num_threads(1)
    rng = np.random.default_rng(rank)
    for trial in range(40):
        channels = int(rng.integers(1, 40))
        shape = (int(rng.integers(1, 5)), channels) + tuple(int(v) for v in
                                                             rng.integers(1, 12, rank - 2))
        x = (rng.standard_normal(shape) * rng.uniform(0.1, 100)).astype(np.float32)
        weight, bias, mean, var = _bn_case(rng, channels, trial % 4)
        tensor = torch.from_numpy(x)
        if trial % 3 == 0 and rank >= 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last if rank == 4
                                       else torch.channels_last_3d)
        for eps in (1e-5, 1e-3, 0.0):
            expected = F.batch_norm(tensor, _t(mean), _t(var), _t(weight), _t(bias), False, 0.1,
                                    eps).numpy()
            params = prepare_float_batch_norm(weight, bias, mean, var, eps, engine=engine)
            out = float_batch_norm(tensor.numpy(), params)
            assert_bitexact(out, expected, f"{shape} eps={eps}")
            assert out.strides == expected.strides
            report[f"float batch_norm {rank}-D {engine}"]["elements"] += x.size


@pytest.mark.parametrize("dtype", [QUINT8, QINT8], ids=["quint8", "qint8"])
@pytest.mark.parametrize("relu", [False, True])
def test_quantized_batch_norm1d_vs_torch(engine, dtype, relu, report):
    torch.backends.quantized.engine = engine
    rng = np.random.default_rng(int(relu))
    op = torch.ops.quantized.batch_norm1d_relu if relu else torch.ops.quantized.batch_norm1d
    torch_dtype = torch.quint8 if dtype is QUINT8 else torch.qint8
    low, high = (0, 255) if dtype is QUINT8 else (-128, 127)
    for trial in range(40):
        channels = int(rng.integers(1, 70))  # 32-byte blocks, 8-float blocks, scalar tails
        shape = (int(rng.integers(1, 5)), channels) + (() if trial % 2 else
                                                       (int(rng.integers(1, 20)),))
        x = torch.from_numpy((rng.standard_normal(shape) * 3).astype(np.float32))
        scale, zero = float(rng.uniform(0.01, 0.5)), int(rng.integers(low, high + 1))
        q = torch.quantize_per_tensor(x, scale, zero, torch_dtype)
        weight, bias, mean, var = _bn_case(rng, channels, 3)
        out_scale, out_zero = float(rng.uniform(0.01, 0.5)), int(rng.integers(low, high + 1))
        expected = op(q, _t(weight), _t(bias), _t(mean), _t(var), 1e-5, out_scale,
                      out_zero).int_repr().numpy()
        qparams = QParams.per_tensor(scale, zero, dtype)
        params = prepare_batch_norm(weight, bias, mean, var, 1e-5, qparams, out_scale, out_zero,
                                    engine=engine, relu=relu, spatial_dims=1)
        assert_bitexact(batch_norm(QuantizedArray(q.int_repr().numpy(), qparams), params).values,
                        expected, f"{shape}")
        report[f"quantized batch_norm1d {engine}"]["elements"] += expected.size


SCRIPT = """
import sys, numpy as np, torch, qexact
from qexact.ops.float_normalization import *
torch.set_num_threads(1)
engine = qexact.get_engine("fbgemm", aten_capability=sys.argv[1])
rng = np.random.default_rng(6)
bad = 0
for trial in range(40):
    g = int(rng.integers(1, 4)); c = g * int(rng.integers(1, 12))
    x = (rng.standard_normal((2, c, 3, int(rng.integers(1, 30)))) * 7 + 2).astype(np.float32)
    w = rng.standard_normal(c).astype(np.float32) if trial & 1 else None
    b = rng.standard_normal(c).astype(np.float32) if trial & 2 else None
    T = lambda a: None if a is None else torch.from_numpy(a)
    for t in (torch.from_numpy(x), torch.from_numpy(x).contiguous(memory_format=torch.channels_last)):
        ours = float_group_norm(t.numpy(), prepare_float_group_norm(g, c, w, b, 1e-5, engine=engine))
        theirs = torch.nn.functional.group_norm(t, g, T(w), T(b), 1e-5).numpy()
        bad += int((ours.view(np.uint32) != theirs.view(np.uint32)).sum())
    m = rng.standard_normal(c).astype(np.float32); v = rng.uniform(0, 3, c).astype(np.float32)
    ours = float_batch_norm(x, prepare_float_batch_norm(w, b, m, v, 1e-5, engine=engine))
    theirs = torch.nn.functional.batch_norm(torch.from_numpy(x), T(m), T(v), T(w), T(b)).numpy()
    bad += int((ours.view(np.uint32) != theirs.view(np.uint32)).sum())
print(bad)
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_lower_aten_capability_subprocess(capability):
    if ATEN_CAPABILITIES.index(capability) < ATEN_CAPABILITIES.index(detect_aten_capability()):
        pytest.skip(f"this CPU cannot run ATen's {capability} build")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", SCRIPT, capability], capture_output=True,
                         text=True, env=env, check=True).stdout.split()
    assert out == ["0"]


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 8, 3)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.gn = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm2d(8)
        self.flat = nn.Flatten()
        self.quant2 = torch.ao.quantization.QuantStub()
        self.fc = nn.Linear(8 * 36, 16)
        self.dequant2 = torch.ao.quantization.DeQuantStub()
        self.bn1 = nn.BatchNorm1d(16)

    def forward(self, x):
        x = self.dequant(self.conv(self.quant(x)))
        x = self.bn(self.gn(x))
        x = F.group_norm(x, 4, None, None, 1e-4)
        return self.bn1(self.dequant2(self.fc(self.flat(self.quant2(x)))))


def _trained(model):
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-1, 1)
    return model.eval()


def test_eager_float_norms(engine, tmp_path):
    """Eager: the conv quantized; GroupNorm, F.group_norm, BatchNorm2d and BatchNorm1d float
    (the conv's dequantized output is channels_last: GroupNorm's impl-1)."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    torch.backends.quantized.engine = engine
    model = _trained(_Model())
    model.qconfig = None
    for name in ("quant", "conv", "dequant", "quant2", "fc", "dequant2"):
        getattr(model, name).qconfig = get_default_qconfig(engine)
    prepared = prepare(model)
    prepared(torch.randn(4, 3, 8, 8))
    converted = convert(prepared)
    x = torch.randn(4, 3, 8, 8)
    net = qexact.from_torch(converted, (x,))
    expected = converted(x).detach().numpy()
    assert_bitexact(net(x.numpy()), expected, engine)
    qexact.save(net, tmp_path / "m")
    assert_bitexact(qexact.load(tmp_path / "m")(x.numpy()), expected, "loaded")


def test_fx_leaves_group_norm_and_batch_norm1d_float(engine):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.gn = nn.GroupNorm(4, 8)
            self.fc = nn.Linear(8 * 36, 12)
            self.bn1 = nn.BatchNorm1d(12)

        def forward(self, x):
            return self.bn1(self.fc(torch.flatten(self.gn(self.conv(x)), 1)))

    torch.backends.quantized.engine = engine
    model = _trained(Model())
    x = torch.randn(3, 3, 8, 8)
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (x,))
    prepared(x)
    converted = convert_fx(prepared)
    net = qexact.from_torch(converted, (x,))
    ops = {node.op for node in net.graph.nodes}
    assert_bitexact(net(x.numpy()), converted(x).detach().numpy(), f"{engine} {sorted(ops)}")


def test_batch_statistics_refused():
    """track_running_stats=False normalizes with the batch's statistics even in eval."""
    model = nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedError, match="batch statistics"):
        qexact.from_torch(model, (torch.randn(3, 4),))
