"""Importing dynamically quantized Linear models: ``quantize_dynamic`` (qint8 per-tensor and
per-channel, float16), FX ``prepare_fx``/``convert_fx`` with dynamic qconfigs (modules, fused
LinearReLU, and ``F.linear``, which FX lowers to ``torch.ops.quantized.linear_dynamic`` on a
packed-weight attribute), TorchScript (``torch.jit.trace`` + ``torch.jit.save`` +
``from_torch(path)``), and ``qexact.save``/``load`` run where torch cannot be imported. Every
output is compared bit for bit with PyTorch on each engine that runs the model (fp16 weights:
fbgemm and x86; qnnpack and onednn refuse them in PyTorch and in qexact).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact import UnsupportedError

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
warnings.filterwarnings("ignore", message=".*reduce_range.*")

FP16_ENGINES = ("fbgemm", "x86")
DTYPES = {"qint8": torch.qint8, "float16": torch.float16}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(20, 48)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(48, 33)
        self.fc3 = torch.nn.Linear(33, 10, bias=False)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(self.act(self.fc1(x)))))


class BertLayer(torch.nn.Module):
    """A BERT encoder layer's Linears (value/output projections, feed-forward) with residuals."""

    def __init__(self, hidden=64, intermediate=128):
        super().__init__()
        self.value = torch.nn.Linear(hidden, hidden)
        self.attention_output = torch.nn.Linear(hidden, hidden)
        self.intermediate = torch.nn.Linear(hidden, intermediate)
        self.act = torch.nn.ReLU()
        self.output = torch.nn.Linear(intermediate, hidden)

    def forward(self, x):
        h = x + self.attention_output(self.value(x))
        return h + self.output(self.act(self.intermediate(h)))


class Bert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(BertLayer(), BertLayer())
        self.head = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.head(self.layers(x))


class Functional(torch.nn.Module):
    """``F.linear`` on parameters: FX's dynamic lowering makes it a ``call_function``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(24, 16))
        self.bias = torch.nn.Parameter(torch.randn(24))
        self.weight2 = torch.nn.Parameter(torch.randn(5, 24))

    def forward(self, x):
        y = torch.nn.functional.relu(torch.nn.functional.linear(x, self.weight, self.bias))
        return torch.nn.functional.linear(y, self.weight2)


def float_model(cls, seed=0):
    torch.manual_seed(seed)
    return cls().eval()


def inputs(shape, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 2


def compare(model, net, x, context, report=None, key=None):
    with torch.no_grad():
        expected = model(x).detach().numpy()
    assert_bitexact(np.asarray(net(x.numpy())), expected, context)
    if report is not None:
        report[key]["cases"] += 1
        report[key]["elements"] += expected.size


def quantize_eager(cls, dtype, per_channel=False):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {torch.nn.Linear: per_channel_dynamic_qconfig} if per_channel else {torch.nn.Linear}
    return quantize_dynamic(float_model(cls), spec, dtype=DTYPES[dtype])


def quantize_fx(cls, dtype, example, per_channel=False):
    from torch.ao.quantization import (QConfigMapping, default_dynamic_qconfig,
                                       float16_dynamic_qconfig, per_channel_dynamic_qconfig)
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    qconfig = (float16_dynamic_qconfig if dtype == "float16" else
               per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig)
    prepared = prepare_fx(float_model(cls), QConfigMapping().set_global(qconfig), (example,))
    return convert_fx(prepared)


CASES = [("qint8", False), ("qint8", True), ("float16", False)]


@pytest.mark.parametrize("dtype,per_channel", CASES)
@pytest.mark.parametrize("cls,shape", [(MLP, (5, 20)), (Bert, (2, 7, 64))],
                         ids=["mlp", "bert"])
def test_quantize_dynamic(engine, cls, shape, dtype, per_channel, report):
    if dtype == "float16" and engine not in FP16_ENGINES:
        with pytest.raises(RuntimeError, match="linear_prepack_fp16 is currently not supported"):
            quantize_eager(cls, dtype)
        return
    model = quantize_eager(cls, dtype, per_channel)
    names = {type(module).__name__ for module in model.modules()}
    assert "Linear" in names and not any(isinstance(module, torch.nn.Linear) and
                                         type(module) is torch.nn.Linear
                                         for module in model.modules())
    net = qexact.from_torch(model, (inputs(shape),), engine=engine)
    ops = {node.op for node in net.graph.nodes}
    assert ("linear_fp16" if dtype == "float16" else "linear_dynamic") in ops
    for seed in (1, 2):
        compare(model, net, inputs(shape, seed), f"{engine} {cls.__name__} {dtype}", report,
                f"{engine} {dtype} eager")


@pytest.mark.parametrize("dtype,per_channel", CASES)
@pytest.mark.parametrize("cls,shape", [(MLP, (5, 20)), (Functional, (3, 4, 16)),
                                       pytest.param(Bert, (2, 7, 64), marks=pytest.mark.slow)],
                         ids=["mlp", "functional", "bert"])
def test_fx_dynamic(engine, cls, shape, dtype, per_channel, report):
    if dtype == "float16" and engine not in FP16_ENGINES:
        pytest.skip("PyTorch refuses fp16 weights on this engine")
    model = quantize_fx(cls, dtype, inputs(shape), per_channel)
    net = qexact.from_torch(model, (inputs(shape),), engine=engine)
    if cls is MLP:  # nn.ReLU after fc1 is fused: a dynamic LinearReLU
        fused = [node for node in net.graph.nodes if node.attrs.get("relu")]
        assert fused
    for seed in (1, 2):
        compare(model, net, inputs(shape, seed), f"{engine} FX {cls.__name__} {dtype}", report,
                f"{engine} {dtype} fx")


def check_torchscript(engine, dtype, fx, tmp_path, report):
    shape = (2, 7, 64)
    model = quantize_fx(Bert, dtype, inputs(shape)) if fx else quantize_eager(Bert, dtype)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(model, inputs(shape)), str(path))
    net = qexact.from_torch(str(path), engine=engine)
    for seed in (1, 2):
        compare(model, net, inputs(shape, seed), f"{engine} TorchScript {dtype}", report,
                f"{engine} {dtype} torchscript")


def test_torchscript(engine, tmp_path, report):
    """quantize_dynamic (qint8) traced, saved and read back from the file, on each engine."""
    check_torchscript(engine, "qint8", False, tmp_path, report)


@pytest.mark.parametrize("dtype,fx", [("float16", False), ("float16", True), ("qint8", True)])
def test_torchscript_fp16_and_fx(dtype, fx, tmp_path, report):
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86"
        check_torchscript("x86", dtype, fx, tmp_path, report)
    finally:
        torch.backends.quantized.engine = previous


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["qint8", "float16"])
@pytest.mark.parametrize("fx", [False, True], ids=["eager", "fx"])
def test_torchscript_every_engine(engine, dtype, fx, tmp_path, report):
    if dtype == "float16" and engine not in FP16_ENGINES:
        pytest.skip("PyTorch refuses fp16 weights on this engine")
    check_torchscript(engine, dtype, fx, tmp_path, report)


def test_mlp_relu_fused_in_torchscript(tmp_path):
    """FX fuses nn.ReLU: TorchScript holds ``quantized::linear_relu_dynamic``."""
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"  # the engine the packed weights are for
        model = quantize_fx(MLP, "qint8", inputs((5, 20)))
        scripted = torch.jit.trace(model, inputs((5, 20)))
    finally:
        torch.backends.quantized.engine = previous
    kinds = {node.kind() for node in scripted.inlined_graph.nodes()}
    assert "quantized::linear_relu_dynamic" in kinds
    path = tmp_path / "mlp.pt"
    torch.jit.save(scripted, str(path))
    compare(model, qexact.from_torch(str(path), engine="fbgemm"), inputs((5, 20), 4),
            "TorchScript LinearReLU")


def test_reduce_range_follows_the_module():
    model = quantize_eager(MLP, "qint8")
    net = qexact.from_torch(model, (inputs((5, 20)),), engine="fbgemm")
    assert all(node.attrs["reduce_range"] for node in net.graph.nodes
               if node.op == "linear_dynamic")


def test_fp16_refused_on_qnnpack_and_onednn():
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        model = quantize_eager(MLP, "float16")
    finally:
        torch.backends.quantized.engine = previous
    for name in ("qnnpack", "onednn"):
        with pytest.raises(UnsupportedError, match="not supported by"):
            qexact.from_torch(model, (inputs((5, 20)),), engine=name)


def test_save_and_load_without_torch(tmp_path):
    """Saved dynamic models (qint8 per-channel on each eager engine, fp16 on fbgemm) load and
    run identically in a process where ``import torch`` fails."""
    x = inputs((2, 7, 64), 5)
    expected, names = {}, []
    previous = torch.backends.quantized.engine
    try:
        for engine, dtype in [("fbgemm", "qint8"), ("x86", "float16"), ("qnnpack", "qint8"),
                              ("onednn", "qint8")]:
            torch.backends.quantized.engine = engine
            model = quantize_eager(Bert, dtype, per_channel=dtype == "qint8")
            net = qexact.from_torch(model, (x,), engine=engine)
            name = f"{engine}_{dtype}"
            qexact.save(net, tmp_path / f"{name}.qexact")
            loaded = qexact.load(tmp_path / f"{name}.qexact")
            assert_bitexact(np.asarray(loaded(x.numpy())), model(x).detach().numpy(), name)
            expected[name] = model(x).detach().numpy()
            names.append(name)
    finally:
        torch.backends.quantized.engine = previous
    np.save(tmp_path / "x.npy", x.numpy())
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, qexact\n"
        f"x = np.load(r'{tmp_path}/x.npy')\n"
        f"for name in {names!r}:\n"
        f"    net = qexact.load(r'{tmp_path}/' + name + '.qexact')\n"
        f"    np.save(r'{tmp_path}/' + name + '_y.npy', net(x))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name in names:
        assert_bitexact(np.load(tmp_path / f"{name}_y.npy"), expected[name],
                        f"{name} loaded without torch")
