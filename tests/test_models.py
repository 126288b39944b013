"""Whole quantized CNNs (ResNet-, MobileNetV2-, MobileNetV3-, ShuffleNetV2- and detector-style),
converted on each engine: qexact's outputs equal PyTorch's, also after save and load."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines import engine_names

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from support.cnn_models import CNN_MODELS, build_cnn as _build_cnn  # noqa: E402

ENGINE_CACHE: dict = {}


def build_cnn(name: str, engine: str):
    """Each (model, engine) is built once per session: building dominates these tests."""
    if (name, engine) not in ENGINE_CACHE:
        ENGINE_CACHE[(name, engine)] = _build_cnn(name, engine)
    torch.backends.quantized.engine = engine
    return ENGINE_CACHE[(name, engine)]

ENGINES = engine_names()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(CNN_MODELS))
def test_cnn_is_exact(name, engine, tmp_path):
    model, shape = build_cnn(name, engine)
    net = qexact.from_torch(model)
    generator = torch.Generator().manual_seed(11)
    x = torch.randn((6,) + shape[1:], generator=generator) * 1.5
    expected = model(x).numpy()
    assert np.abs(expected).max() > 0, "activations vanished: the test would prove nothing"
    assert_bitexact(net(x), expected, f"{name} on {engine}")
    path = tmp_path / "model.qexact"
    qexact.save(net, path)
    assert_bitexact(qexact.load(path)(x.numpy()), expected, f"{name} on {engine}, saved")


TORCH_FREE = [("resnet", "fbgemm"), ("mobilenet_v2", "x86"), ("mobilenet_v3", "qnnpack"),
              ("shufflenet_v2", "onednn"), ("detector", "qnnpack")]


def test_cnns_load_and_run_where_torch_cannot_be_imported(tmp_path):
    """Saved CNNs run identically in a process where ``import torch`` fails."""
    import subprocess
    import sys

    expected = {}
    for name, engine in TORCH_FREE:
        model, shape = build_cnn(name, engine)
        x = torch.randn((3,) + shape[1:], generator=torch.Generator().manual_seed(2))
        qexact.save(qexact.from_torch(model), tmp_path / f"{name}.qexact")
        np.save(tmp_path / f"{name}_x.npy", x.numpy())
        expected[name] = model(x).numpy()
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, qexact\n"
        f"for name in {[name for name, _ in TORCH_FREE]!r}:\n"
        f"    net = qexact.load(r'{tmp_path}/' + name + '.qexact')\n"
        f"    np.save(r'{tmp_path}/' + name + '_y.npy', net(np.load(r'{tmp_path}/' + name + '_x.npy')))\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for name, _ in TORCH_FREE:
        assert_bitexact(np.load(tmp_path / f"{name}_y.npy"), expected[name],
                        f"{name} loaded without torch")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(CNN_MODELS))
def test_explain_reproduces_a_random_element_of_every_node(name, engine):
    """For every node of the model, explain's last stage is that node's value (every op type)."""
    model, shape = build_cnn(name, engine)
    net = qexact.from_torch(model)
    rng = np.random.default_rng(len(name))
    x = (torch.randn((2,) + shape[1:], generator=torch.Generator().manual_seed(3)) * 1.5).numpy()
    values = net.run_values(x)
    walked = set()
    for node in net.graph.nodes:
        value = values[node.name]
        if not isinstance(value, (qexact.QuantizedArray, np.ndarray)):
            continue  # sizes and shape arithmetic
        array = value.values if isinstance(value, qexact.QuantizedArray) else value
        index = tuple(int(rng.integers(size)) for size in array.shape)
        explanation = net.explain(x, layer=node.name, index=index)
        result, expected = np.asarray(explanation.stages[-1].result), np.asarray(array[index])
        if expected.dtype.kind in "iu":  # stages carry integers as int64
            result, expected = result.astype(np.int64), expected.astype(np.int64)
        assert_bitexact(result, expected,
                        f"{name}/{engine}: explain of {node.name} [{node.op}] at {index}")
        walked.add(node.op)
    assert {"quantize", "conv", "dequantize"} <= walked
