"""Whole quantized CNNs (ResNet-, MobileNetV2-, MobileNetV3-, ShuffleNetV2- and detector-style),
converted on each engine: qexact's outputs equal PyTorch's, also after save and load."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from support.cnn_models import CNN_MODELS, build_cnn  # noqa: E402

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")


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
