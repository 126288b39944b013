"""Graph capture beyond eager modules: FX-converted GraphModules and TorchScript (traced, saved)."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines import engine_names

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from support.models import build, forum_model, multilayer_model, multilayer_view_model  # noqa: E402

ENGINES = engine_names()


class FxModel(torch.nn.Module):
    """Linear, a float relu and flatten between quantized layers (FX keeps them in float)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 6)
        self.fc2 = torch.nn.Linear(6, 3)

    def forward(self, x):
        y = torch.relu(self.fc(x))
        return self.fc2(y.flatten(1))


def fx_converted(engine: str):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = FxModel().eval()
    example = (torch.randn(4, 8),)
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example)
    for _ in range(4):
        prepared(torch.randn(4, 8))
    return convert_fx(prepared)


@pytest.mark.parametrize("engine", ENGINES)
def test_fx_converted_graph_module_is_exact(engine):
    model = fx_converted(engine)
    net = qexact.from_torch(model)
    x = torch.randn(200, 8) * 2
    assert_bitexact(net(x), model(x).numpy(), f"FX model on {engine}")
    assert {node.op for node in net.graph.nodes} >= {"quantize", "linear", "dequantize", "relu"}


def test_float_relu_keeps_negative_zero_and_nan_as_torch():
    x = np.float32([-0.0, 0.0, -1.0, np.nan, 2.5])
    ours = qexact.ops.activations.relu_float(x)
    assert_bitexact(ours, torch.relu(torch.from_numpy(x)).numpy(), "float relu")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("builder", [forum_model, multilayer_model, multilayer_view_model],
                         ids=["forum", "multilayer", "view"])
def test_traced_and_saved_torchscript_is_exact(engine, builder, tmp_path):
    model, shape = build(builder, engine)
    example = torch.rand(shape) if builder is forum_model else torch.randn(shape)
    traced = torch.jit.trace(model, example)
    path = tmp_path / "model.pt"
    torch.jit.save(traced, str(path))
    x = (torch.rand((40,) + tuple(shape[1:])) * 1.5 if builder is forum_model
         else torch.randn((40,) + tuple(shape[1:])) * 2)
    expected = model(x).numpy()
    from_file = qexact.from_torch(str(path), engine=engine)
    assert_bitexact(from_file(x), expected, f"TorchScript file on {engine}")
    assert_bitexact(qexact.from_torch(traced, engine=engine)(x), expected,
                    f"ScriptModule on {engine}")
    linear_names = [name for name, p in from_file.layers.items()
                    if isinstance(p, qexact.LinearParams)]
    eager_names = [name for name, p in qexact.from_torch(model).layers.items()
                   if isinstance(p, qexact.LinearParams)]
    assert linear_names == eager_names  # layers keep their module names


def test_scripted_control_flow_is_refused_with_advice(tmp_path):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    scripted = torch.jit.script(Branchy())
    with pytest.raises(qexact.UnsupportedError, match="torch.jit.trace"):
        qexact.from_torch(scripted)


def test_a_file_that_is_not_torchscript_is_an_importer_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(qexact.ImporterError, match="TorchScript"):
        qexact.from_torch(str(path))


def test_cli_runs_a_torchscript_file(tmp_path):
    import subprocess
    import sys

    model, shape = build(forum_model, "qnnpack")
    path = tmp_path / "forum.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(shape)), str(path))
    x = torch.rand(7, 10)
    np.save(tmp_path / "x.npy", x.numpy())
    result = subprocess.run(
        [sys.executable, "-m", "qexact", "run", str(path), "--engine", "qnnpack", "--input",
         str(tmp_path / "x.npy"), "--out", str(tmp_path / "y.npy")],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    torch.backends.quantized.engine = "qnnpack"
    assert_bitexact(np.load(tmp_path / "y.npy"), model(x).numpy(), "CLI on a TorchScript file")
