"""torchvision's Swin Transformer quantized with FX (``prepare_fx``/``convert_fx``,
``get_default_qconfig_mapping``) imported and run bit for bit (importers/torch_swin.py).

A small Swin (patch 4, 32 wide, depths [2, 2], heads [2, 4], window 4) at 32 x 32 (no
padding) and 36 x 36 (attention padded to the window, patch merging padded to even), on every
eager engine: its logits and its normalized feature map compared with np.array_equal.
``swin_t`` itself (64 x 64, slow): stage 4's F.linear has K = 768 > 384, outside the measured
MKL rule (engines/aten_matmul.py): refused at run time, measured when allowed.
"""

from __future__ import annotations

import pytest

import qexact

torch = pytest.importorskip("torch")

from support.assertions import assert_bitexact  # noqa: E402
from support.fx_models import quantize_fx, random_input  # noqa: E402

pytestmark = pytest.mark.torch

EAGER_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")


def _swin():
    from support.torchvision_models import import_torchvision

    if import_torchvision() is None:
        pytest.skip("torchvision is not installed")
    from torchvision.models import swin_transformer

    return swin_transformer


class _LogitsAndFeatures(torch.nn.Module):
    """A SwinTransformer's logits and its normalized (B, H, W, C) feature map."""

    def __init__(self, swin):
        super().__init__()
        self.swin = swin

    def forward(self, x):
        s = self.swin
        features = s.norm(s.features(x))
        return s.head(s.flatten(s.avgpool(s.permute(features)))), features


def _small_swin(engine: str, side: int, v2: bool = False):
    swin = _swin()
    torch.manual_seed(0)
    extra = ({"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
             if v2 else {})
    model = swin.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2],
                                 num_heads=[2, 4], window_size=[4, 4], stochastic_depth_prob=0.0,
                                 num_classes=100, **extra).eval()
    shape = (1, 3, side, side)
    return quantize_fx(_LogitsAndFeatures(model), shape, engine), shape


def _run(model, net, shape, seeds):
    elements = 0
    for seed in seeds:
        x = random_input(shape, seed=seed, batch=1)
        with torch.no_grad():
            expected = [tensor.numpy() for tensor in model(x)]
        for position, (got, want) in enumerate(zip(net(x), expected)):
            assert_bitexact(got, want, f"output {position}, seed {seed}")
            elements += want.size
    return elements




@pytest.mark.parametrize("engine", EAGER_ENGINES)
def test_small_swin_bit_exact(engine, torch1, report):
    model, shape = _small_swin(engine, 32)
    net = qexact.from_torch(model, engine=engine)
    ops = {node.op for node in net.graph.nodes}
    assert {"window_attention", "relative_position_bias", "patch_merging_pad"} <= ops
    assert not any(getattr(params, "inexact", "") for params in net.layers.values())
    elements = _run(model, net, shape, range(3))
    report[f"small swin 32x32 {engine}"].update(elements=elements, mismatches=0)


def test_small_swin_padded_bit_exact(torch1, report):
    """36 x 36: a 9 x 9 token map (windows padded to 12, patch merging to 10), then 5 x 5."""
    model, shape = _small_swin("x86", 36)
    net = qexact.from_torch(model, engine="x86")
    elements = _run(model, net, shape, range(2))
    report["small swin 36x36 x86"].update(elements=elements, mismatches=0)


def test_small_swin_save_load(tmp_path, torch1):
    model, shape = _small_swin("qnnpack", 32)
    net = qexact.from_torch(model, engine="qnnpack")
    path = tmp_path / "swin.qexact"
    qexact.save(net, path)
    loaded = qexact.load(path)
    x = random_input(shape, seed=5, batch=1)
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in model(x)]
    for got, want in zip(loaded(x), expected):
        assert_bitexact(got, want, "loaded swin")


def test_swin_v2_attention_refused():
    model, _ = _small_swin("x86", 32, v2=True)
    with pytest.raises(qexact.UnsupportedError, match="logit_scale"):
        qexact.from_torch(model, engine="x86")


@pytest.mark.slow
def test_torchvision_swin_t(torch1, report):
    """swin_t at 64 x 64, bit-exact: stage 4 (768 channels) runs F.linear with K = 768, inside
    the engine's MKL rule (chains of 192 summed in order)."""
    from support.transformer_models import build_transformer

    _swin()
    model, shape = build_transformer("swin_t", "x86")
    x = random_input(shape, seed=0, batch=1)
    with torch.no_grad():
        expected = model(x).numpy()
    assert_bitexact(qexact.from_torch(model, engine="x86")(x), expected, "swin_t")
    report["swin_t 64x64 x86"].update(elements=expected.size, mismatches=0)
