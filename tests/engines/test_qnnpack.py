"""QNNPACK's Linear and Conv refuse, as PyTorch does, a requantization scale
``(s_w*s_x)*(1/s_out)`` that is not a normal float32 (QnnpackUtils.h
``generate_requantization_scales``): 0 by underflow, subnormal, or inf when ``1/s_out``
overflows. Each case runs on a fresh module (PyTorch caches the QNNPACK operator per input
scale: a module already run keeps its old output scale)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import qexact

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from support.models import build, forum_model  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_engine():
    previous = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = previous


@pytest.mark.parametrize("output_scale,input_scale,refused", [
    (1e-30, None, False),   # scale 9.6e24: large, accepted
    (1e30, None, False),    # 9.6e-36: small, normal
    (1e-40, None, True),    # 1/s_out overflows: inf
    (1e33, None, True),     # 9.6e-39: subnormal
    (1e35, None, True),     # 9.6e-41: subnormal
    (3e38, 1e-5, True),     # underflows to 0
])
def test_requantization_scale_must_be_a_normal_float32(output_scale, input_scale, refused):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = build(forum_model, "qnnpack")
    model.fc_1.scale = output_scale
    if input_scale is not None:
        model.quant.scale = torch.tensor([input_scale])
    x = np.random.default_rng(0).random((4, 10), dtype=np.float32)
    try:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
    except RuntimeError as error:
        assert refused and "requantization scale must be finite and positive" in str(error)
        with pytest.raises(qexact.UnsupportedError, match="fc_1.*QNNPACK refuses this layer"):
            qexact.from_torch(model, engine="qnnpack")
        return
    assert not refused
    net = qexact.from_torch(model, engine="qnnpack")
    assert np.array_equal(net(x).view(np.uint32), expected.view(np.uint32))
