"""FX-quantized transformers: attention's matrix products imported and run bit for bit.

``torch.matmul`` of quantized heads becomes ``quantized::matmul``; ``@`` stays float32 (MKL's
sgemm, reproduced inside its measured rule: engines/aten_matmul.py). The full blocks
(support/transformer_models.py) also run float softmax, LayerNorm and GELU and read
Parameters in forward (other modules' ops). torchvision's ViT runs ``nn.MultiheadAttention``
(its inference fast path, op ``multihead_attention``: ops/attention.py), bit-exact where its
products fall inside the measured MKL rule (17 tokens, head dim 16);
``swin_t``'s FX-wrapped window attention: tests/importers/test_swin.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import qexact

torch = pytest.importorskip("torch")

from support.assertions import assert_bitexact  # noqa: E402
from support.fx_models import random_input  # noqa: E402
from support.transformer_models import build_transformer  # noqa: E402

pytestmark = pytest.mark.torch

EAGER_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")

def _need_torchvision():
    from support.torchvision_models import import_torchvision

    if import_torchvision() is None:
        pytest.skip("torchvision is not installed")


def _compare(name: str, engine: str, seeds=range(3), threads: int | None = None):
    """Import the FX-converted model, run ``seeds`` inputs; the elements compared."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model, shape = build_transformer(name, engine)
        net = qexact.from_torch(model, engine=engine)
        elements = 0
        for seed in seeds:
            x = random_input(shape, seed=seed, batch=shape[0])
            with torch.no_grad():
                expected = model(x).numpy()
            assert_bitexact(net(x), expected, f"{name} on {engine}, seed {seed}")
            elements += expected.size
        return net, elements
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("engine", EAGER_ENGINES)
@pytest.mark.parametrize("name", ["torch_matmul", "operator_matmul"])
def test_attention_products_bit_exact(name, engine):
    """quantized::matmul (torch.matmul of quantized heads) and float ``@`` of unbound heads."""
    net, elements = _compare(name, engine)
    ops = {node.op for node in net.graph.nodes}
    assert ("quantized_matmul" if name == "torch_matmul" else "matmul") in ops
    assert elements >= 384


def test_torchscript_of_fx_model():
    """``torch.jit.trace`` of the converted models: quantized::matmul and aten::matmul."""
    for name, op in (("torch_matmul", "quantized_matmul"), ("operator_matmul", "matmul")):
        model, shape = build_transformer(name, "x86")
        x = random_input(shape, seed=1)
        net = qexact.from_torch(torch.jit.trace(model, x), engine="x86")
        assert op in {node.op for node in net.graph.nodes}
        with torch.no_grad():
            assert_bitexact(net(x), model(x).numpy(), f"traced {name}")


@pytest.mark.parametrize("engine", EAGER_ENGINES)
@pytest.mark.parametrize("name", ["vit_block", "swin_block", "bert_layer"])
def test_transformer_blocks_bit_exact(name, engine):
    """ViT-, Swin- and BERT-style blocks: every output bit-equal (attention products inside
    the measured MKL rule: T = 17, 16, 12 tokens; head dims 16, 16, 8)."""
    _, elements = _compare(name, engine, threads=1)
    assert elements > 0


@pytest.mark.parametrize("engine", EAGER_ENGINES)
@pytest.mark.parametrize("name", ["bert_layer_d8", "vit_block_t5"])
def test_products_outside_the_rule_refused_then_measured(name, engine, report):
    """Attention products MKL computes with kernels qexact does not reproduce (N < 12) are
    refused by default; allowed, the model runs in NumPy's order for them, marked inexact, and
    the share of identical outputs is reported (not asserted: not guaranteed)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, shape = build_transformer(name, engine)
        x = random_input(shape, seed=0, batch=shape[0])
        with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
            qexact.from_torch(model, x, engine=engine)
        net = qexact.from_torch(model, engine=engine, allow_inexact=("matmul",))
        assert any("NumPy" in getattr(params, "inexact", "") for params in net.layers.values())
        same = total = 0
        for seed in range(3):
            x = random_input(shape, seed=seed, batch=shape[0])
            with torch.no_grad():
                expected = model(x).numpy()
            same += int(np.sum(net(x).view(np.uint32) == expected.view(np.uint32)))
            total += expected.size
        report[f"{name} {engine} (inexact matmul)"].update(elements=total, identical=same)
        print(f"{name} on {engine}: {same}/{total} outputs identical")
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("engine", EAGER_ENGINES)
def test_torchvision_vit_small_bit_exact(engine):
    """torchvision's VisionTransformer (64x64 images, patch 16: 17 tokens, 4 heads of 16, 2
    layers): nn.MultiheadAttention's fast path (op multihead_attention), LayerNorm, GELU and
    the quantized Linears, every output bit-equal."""
    _need_torchvision()
    net, elements = _compare("vit_small", engine, seeds=range(2), threads=1)
    assert "multihead_attention" in {node.op for node in net.graph.nodes}
    assert elements == 2 * 2 * 1000


def test_torchvision_vit_small_save_load(tmp_path):
    _need_torchvision()
    net, _ = _compare("vit_small", "x86", seeds=range(1), threads=1)
    model, shape = build_transformer("vit_small", "x86")
    path = tmp_path / "vit_small.qexact"
    qexact.save(net, path)
    loaded = qexact.load(path)
    x = random_input(shape, seed=5, batch=shape[0])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            expected = model(x).numpy()
    finally:
        torch.set_num_threads(previous)
    assert_bitexact(loaded(x.numpy()), expected, "vit_small after save/load")


@pytest.mark.parametrize("engine", EAGER_ENGINES)
def test_torchvision_vit_five_tokens_inexact(engine, report):
    """32x32 images: 5 tokens, so q @ k^T has 5 columns (outside the measured MKL rule):
    refused, then run in NumPy's order for those products when allowed."""
    _need_torchvision()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, shape = build_transformer("vit_small_t5", engine)
        x = random_input(shape, seed=0, batch=shape[0])
        with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
            qexact.from_torch(model, x, engine=engine)
        net = qexact.from_torch(model, engine=engine, allow_inexact=("matmul",))
        same = total = 0
        for seed in range(3):
            x = random_input(shape, seed=seed, batch=shape[0])
            with torch.no_grad():
                expected = model(x).numpy()
            same += int(np.sum(net(x).view(np.uint32) == expected.view(np.uint32)))
            total += expected.size
        report[f"vit_small_t5 {engine} (inexact matmul)"].update(elements=total, identical=same)
    finally:
        torch.set_num_threads(previous)


class _SdpaBlock(torch.nn.Module):
    """Linear projections around F.scaled_dot_product_attention (FX leaves it float32)."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(batch, tokens, channels))


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_scaled_dot_product_attention_function(engine):
    from support.fx_models import quantize_fx

    torch.manual_seed(0)
    shape = (2, 20, 32)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = quantize_fx(_SdpaBlock().eval(), shape, engine)
        net = qexact.from_torch(model, engine=engine)
        assert "scaled_dot_product_attention" in {node.op for node in net.graph.nodes}
        for seed in range(2):
            x = random_input(shape, seed=seed, batch=shape[0])
            with torch.no_grad():
                expected = model(x).numpy()
            assert_bitexact(net(x), expected, f"sdpa block on {engine}, seed {seed}")
    finally:
        torch.set_num_threads(previous)


def test_multihead_attention_refusals():
    """Forms of nn.MultiheadAttention whose CPU path is not the fast path: named refusals."""
    class Cross(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 2, **kwargs)

        def forward(self, x, y):
            return self.mha(x, y, y)[0]

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))[0]

    with pytest.raises(qexact.UnsupportedError, match="self-attention"):
        qexact.from_torch(Cross(batch_first=True).eval(), engine="x86")
    with pytest.raises(qexact.UnsupportedError, match="batch_first"):
        qexact.from_torch(Cross().eval(), engine="x86")
    with pytest.raises(qexact.UnsupportedError, match="MultiheadAttention"):
        qexact.from_torch(Masked().eval(), engine="x86")


@pytest.mark.slow
def test_torchvision_vit_b_16_224():
    """The real vit_b_16 (224x224: 197 tokens, 12 heads of 64, 12 layers) on x86, bit-equal."""
    _need_torchvision()
    _, elements = _compare("vit_b_16_224", "x86", seeds=range(1), threads=1)
    assert elements == 1000
