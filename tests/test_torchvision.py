"""torchvision's quantizable models (weights=None, realistic BN statistics), converted on x86 and
qnnpack: qexact equals PyTorch on every output element."""

from __future__ import annotations

import pytest
from support.assertions import assert_bitexact

import qexact

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from support.torchvision_models import MODELS, build_torchvision, import_torchvision  # noqa: E402

if import_torchvision() is None:
    pytest.skip("torchvision is not installed (pip install torchvision==0.28.0)",
                allow_module_level=True)


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_quantizable_model_is_exact(name, engine):
    model, shape = build_torchvision(name, engine)
    net = qexact.from_torch(model)
    x = torch.randn((2,) + shape[1:], generator=torch.Generator().manual_seed(5))
    assert_bitexact(net(x), model(x).numpy(), f"torchvision {name} on {engine}")
