"""``nn.TransformerEncoder`` / ``nn.TransformerEncoderLayer`` through ``qexact.from_torch``
(importers/torch_transformer_layer.py): an FX-quantized BERT-style model per engine bit for bit,
the float encoder's own output, save/load without torch, and the refusals (torch's slow-path
conditions; ``quantize_dynamic``, on which PyTorch itself raises)."""

from __future__ import annotations

import numpy as np
import pytest

import qexact
from qexact.errors import UnsupportedError

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")

pytestmark = pytest.mark.torch


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)




def _encoder(torch, embed=64, heads=4, hidden=128, layers=2, activation="gelu",
             norm_first=False, final_norm=True, nested=False, **kwargs):
    nn = torch.nn
    layer = nn.TransformerEncoderLayer(embed, heads, hidden, dropout=0.0, activation=activation,
                                       batch_first=True, norm_first=norm_first, **kwargs)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(embed) if final_norm else None,
                                 enable_nested_tensor=nested)


def _bert(torch, **kwargs):
    nn = torch.nn

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.embed = nn.Linear(16, 64)
            self.encoder = _encoder(torch, **kwargs)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.encoder(self.embed(self.quant(x))))

    return Bert().eval()


def _fx_quantize(torch, model, engine, x):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (x,))
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        prepared(torch.randn(x.shape, generator=generator) * 2)
    return convert_fx(prepared)


def _assert_same(got, expected, what):
    mismatches = int(np.count_nonzero(_bits(got) != _bits(expected)))
    assert mismatches == 0, f"{what}: {mismatches} of {expected.size} outputs differ"


@pytest.mark.parametrize("engine", ENGINES)
def test_fx_bert_per_engine(torch1, engine, tmp_path):
    torch1.manual_seed(0)
    x = torch1.randn(2, 24, 16)
    quantized = _fx_quantize(torch1, _bert(torch1), engine, x)
    seen = {}
    hook = quantized.encoder.register_forward_hook(  # the encoder's own hooks are not checked
        lambda module, args, out: seen.update(out=out.numpy()))
    with torch1.no_grad():
        expected = quantized(x).numpy()
    hook.remove()
    net = qexact.from_torch(quantized, engine=engine)
    assert any(node.op == "transformer_encoder" for node in net.graph.nodes)
    _assert_same(net(x.numpy()), expected, engine)
    encoded = seen["out"]  # the encoder's float output itself, before the quantize
    values = net.run_values(x.numpy())
    _assert_same(values["encoder"], encoded, f"{engine} encoder output")
    qexact.save(net, tmp_path / "bert")
    _assert_same(qexact.load(tmp_path / "bert")(x.numpy()), expected, f"{engine} loaded")


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_float_encoder(torch1, activation, norm_first, tmp_path):
    torch1.manual_seed(3)
    """enable_nested_tensor=True without a padding mask runs the dense path."""
    model = torch1.nn.Sequential(_encoder(torch1, 32, 2, 64, 2, activation, norm_first,
                                          final_norm=norm_first, nested=True)).eval()
    x = torch1.randn(3, 12, 32)
    with torch1.no_grad():
        expected = model(x).numpy()
    net = qexact.from_torch(model, engine="x86")
    _assert_same(net(x.numpy()), expected, "float encoder")
    qexact.save(net, tmp_path / "m")
    _assert_same(qexact.load(tmp_path / "m")(x.numpy()), expected, "loaded")


def test_two_threads(torch1):
    """MKL splits a single product's rows between threads: B*T a multiple of 8 stays exact."""
    torch1.set_num_threads(2)
    torch1.manual_seed(6)
    model = torch1.nn.Sequential(_encoder(torch1, 64, 4, 128, 2, "gelu")).eval()
    x = torch1.randn(2, 16, 64)
    with torch1.no_grad():
        expected = model(x).numpy()
    _assert_same(qexact.from_torch(model, engine="onednn")(x.numpy()), expected, "2 threads")


def test_single_layer_and_explain(torch1):
    torch1.manual_seed(4)
    layer = torch1.nn.TransformerEncoderLayer(48, 4, 96, dropout=0.0, batch_first=True)
    model = torch1.nn.Sequential(layer).eval()
    x = torch1.randn(1, 16, 48)
    with torch1.no_grad():
        expected = model(x).numpy()
    net = qexact.from_torch(model, engine="fbgemm")
    _assert_same(net(x.numpy()), expected, "layer")
    explanation = net.explain(x.numpy(), index=(0, 3, 5))
    assert "transformer layer" in str(explanation)


def test_dynamic_quantized_encoder_refused(torch1):
    """quantize_dynamic swaps linear1/linear2 for dynamic Linears, whose ``weight`` is a method:
    PyTorch 2.13 raises in the layer's fast-path check, so there is no output to reproduce."""
    nn = torch1.nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _encoder(torch1, 32, 2, 64, activation="relu")
            self.head = nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.encoder(x))

    torch1.backends.quantized.engine = "fbgemm"
    model = torch1.ao.quantization.quantize_dynamic(Model().eval(), {nn.Linear})
    with pytest.raises(AttributeError, match="'function' object has no attribute 'device'"):
        with torch1.no_grad():
            model(torch1.randn(1, 12, 32))
    with pytest.raises(UnsupportedError, match="quantize_dynamic.*'function' object has no "
                                               "attribute 'device'"):
        qexact.from_torch(model, engine="fbgemm")


@pytest.mark.parametrize("kwargs", [{"batch_first": False}, {"heads": 3, "embed": 36},
                                    {"fastpath": False}, {"eps2": 1e-3}])
def test_slow_paths(torch1, kwargs, tmp_path):
    """Where torch takes the layer's slow path (batch_first=False, an odd nhead, the fast path
    disabled, unequal norm eps), with nn.GELU("tanh") run as tanh there."""
    nn = torch1.nn
    embed, heads = kwargs.get("embed", 32), kwargs.get("heads", 2)
    batch_first = kwargs.get("batch_first", True)
    torch1.manual_seed(2)
    layer = nn.TransformerEncoderLayer(embed, heads, 64, dropout=0.0, batch_first=batch_first,
                                       activation=nn.GELU(approximate="tanh"))
    if "eps2" in kwargs:
        layer.norm2.eps = kwargs["eps2"]
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).eval()
    x = torch1.randn((16, 2, embed) if not batch_first else (2, 16, embed))
    previous = torch1.backends.mha.get_fastpath_enabled()
    torch1.backends.mha.set_fastpath_enabled(kwargs.get("fastpath", True))
    try:
        with torch1.no_grad():
            expected = model(x).numpy()
        net = qexact.from_torch(model, engine="x86")
    finally:
        torch1.backends.mha.set_fastpath_enabled(previous)
    _assert_same(net(x.numpy()), expected, str(kwargs))
    qexact.save(net, tmp_path / "m")
    _assert_same(qexact.load(tmp_path / "m")(x.numpy()), expected, f"{kwargs} loaded")


@pytest.mark.parametrize("kwargs, why", [
    ({"activation": "tanh"}, "activation"),
    ({"bias": False}, "bias=False"),
])
def test_refused(torch1, kwargs, why):
    nn = torch1.nn
    activation = torch1.tanh if kwargs.pop("activation", None) == "tanh" else "relu"
    layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True,
                                       activation=activation, **kwargs)
    with pytest.raises(UnsupportedError, match=why):
        qexact.from_torch(nn.Sequential(layer).eval(), engine="x86")


def test_masks_and_other_norm_refused(torch1):
    nn = torch1.nn

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _encoder(torch1, 32, 2, 64)

        def forward(self, x, mask):
            return self.encoder(x, src_key_padding_mask=mask)

    with pytest.raises(UnsupportedError, match="src_key_padding_mask"):
        qexact.from_torch(Masked().eval(), engine="x86")
    encoder = _encoder(torch1, 32, 2, 64, final_norm=False)
    encoder.norm = nn.BatchNorm1d(12)
    with pytest.raises(UnsupportedError, match="final norm"):
        qexact.from_torch(nn.Sequential(encoder).eval(), engine="x86")
    hooked = _encoder(torch1, 32, 2, 64)
    hooked.layers[0].register_forward_hook(lambda *args: None)
    with pytest.raises(UnsupportedError, match="hooks"):
        qexact.from_torch(nn.Sequential(hooked).eval(), engine="x86")
