"""Small transformer blocks built the way users write them (test support).

Each is made of ``nn.Linear``, ``nn.LayerNorm``, ``nn.GELU``, ``softmax`` and ``@`` /
``torch.matmul`` on reshaped heads, so that FX graph-mode quantization
(``support.fx_models.quantize_fx``) quantizes the Linears and leaves the attention arithmetic
in float32 (or, where a backend config quantizes it, in ``quantized::matmul``):

- ``ViTBlock``: pre-norm block, one fused ``qkv`` Linear, ``reshape``/``permute``/``unbind``,
  ``(q @ k.transpose(-2, -1)) * scale``, softmax, ``attn @ v``, MLP with GELU (timm's ViT);
- ``SwinBlock``: window attention: a window partition by ``view``/``permute``, a learned
  relative-position bias table indexed by a buffer and added to the scores (Swin's
  ``WindowAttention``), then the window reverse;
- ``BertLayer``: post-norm encoder layer, separate ``query``/``key``/``value`` Linears,
  ``torch.matmul``, division by ``sqrt(d)``, softmax, LayerNorm after each residual;
- ``TorchMatmul``: two Linears and one ``torch.matmul`` of their outputs (the smallest case);
- ``OperatorMatmul``: ViT's attention without its softmax (``@`` left float32 by FX);
- ``TORCHVISION``: torchvision's ``vit_b_16`` / ``swin_t`` (``weights=None``) at a small image
  size (``vit_b_16_224``: the real one), and small ``VisionTransformer``s (``vit_small``: 64x64
  images, 17 tokens; ``vit_small_t5``: 32x32, 5 tokens).

    model, shape = build_transformer("vit_block", "x86")
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0


class Attention(nn.Module):
    """timm-style multi-head self-attention on ``(B, N, C)`` tokens."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Patch embedding (Linear on flattened patches) and one pre-norm encoder block."""

    def __init__(self, dim: int = 32, heads: int = 2, patch_dim: int = 48):
        super().__init__()
        self.embed = nn.Linear(patch_dim, dim)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WindowAttention(nn.Module):
    """Swin's window attention: scores plus a relative-position bias from a learned table."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                            indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        index = relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]
        self.register_buffer("relative_position_index", index.flatten())

    def forward(self, x):
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.heads, channels // self.heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index]
        bias = bias.view(tokens, tokens, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(windows, tokens, channels)
        return self.proj(x)


class SwinBlock(nn.Module):
    """One Swin block (no shift) on a ``(B, H, W, C)`` map of ``window``-sized windows."""

    def __init__(self, dim: int = 32, window: int = 4, heads: int = 2):
        super().__init__()
        self.window = window
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, window, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        batch, height, width, channels = x.shape
        w = self.window
        y = self.norm1(x).view(batch, height // w, w, width // w, w, channels)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, channels)
        y = self.attn(y).view(batch, height // w, width // w, w, w, channels)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)
        x = x + y
        return x + self.mlp(self.norm2(x))


class BertLayer(nn.Module):
    """A BERT encoder layer (post-norm), heads split with ``view``/``permute``."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.output, self.norm1 = nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.intermediate, self.act = nn.Linear(dim, 4 * dim), nn.GELU()
        self.out2, self.norm2 = nn.Linear(4 * dim, dim), nn.LayerNorm(dim)

    def _heads(self, x):
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x):
        batch, tokens, channels = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = F.softmax(scores, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(batch, tokens, channels)
        x = self.norm1(x + self.output(context))
        return self.norm2(x + self.out2(self.act(self.intermediate(x))))


class TorchMatmul(nn.Module):
    """``torch.matmul`` of two Linear outputs, reshaped to heads: the attention score alone."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.a, self.b, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(16, 4)

    def forward(self, x):
        batch, tokens, channels = x.shape
        a = self.a(x).view(batch, tokens, self.heads, -1).transpose(1, 2)
        b = self.b(x).view(batch, tokens, self.heads, -1).permute(0, 2, 3, 1)
        return self.out(torch.matmul(a, b))


class OperatorMatmul(nn.Module):
    """ViT attention without the softmax: ``@`` of unbound heads stays float32 under FX."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, channels // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, tokens, channels))


HAND_WRITTEN = {  # name -> (constructor, input shape)
    "torch_matmul": (TorchMatmul, (1, 16, 32)),
    "operator_matmul": (OperatorMatmul, (2, 16, 32)),
    "vit_block": (ViTBlock, (1, 17, 48)),
    "swin_block": (SwinBlock, (1, 8, 8, 32)),
    "bert_layer": (BertLayer, (1, 12, 32)),
    # outside the measured MKL rule (engines/aten_matmul.py): inexact, run with allow_inexact
    "bert_layer_d8": (lambda: BertLayer(32, 4), (1, 12, 32)),  # probs @ v: N = 8 < 12
    "vit_block_t5": (ViTBlock, (2, 5, 48)),  # q @ k^T: N = 5 tokens < 12
}

TORCHVISION = {  # name -> (constructor keyword arguments, input shape)
    "vit_b_16": ({"image_size": 32}, (1, 3, 32, 32)),
    "vit_b_16_224": ({}, (1, 3, 224, 224)),
    # torchvision.models.VisionTransformer, small: T = 1 + (64/16)^2 = 17 tokens, head dim 16
    "vit_small": ({"image_size": 64, "patch_size": 16, "num_layers": 2, "num_heads": 4,
                   "hidden_dim": 64, "mlp_dim": 128}, (2, 3, 64, 64)),
    # T = 5 tokens: q @ k^T has 5 columns, outside the measured MKL rule (inexact)
    "vit_small_t5": ({"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 4,
                      "hidden_dim": 64, "mlp_dim": 128}, (1, 3, 32, 32)),
    "swin_t": ({}, (1, 3, 64, 64)),
}


def float_transformer(name: str):
    """``(float model, input shape)`` with seeded random weights (``weights=None``)."""
    torch.manual_seed(SEED)
    if name in HAND_WRITTEN:
        build, shape = HAND_WRITTEN[name]
        return build().eval(), shape
    from support.torchvision_models import import_torchvision

    kwargs, shape = TORCHVISION[name]
    models = import_torchvision().models
    if name.startswith("vit_small"):
        return models.VisionTransformer(**kwargs).eval(), shape
    return getattr(models, name.replace("_224", ""))(weights=None, **kwargs).eval(), shape


def build_transformer(name: str, engine: str):
    """``(FX-converted model, input shape)`` on ``engine`` (``support.fx_models.quantize_fx``)."""
    from support.fx_models import quantize_fx

    model, shape = float_transformer(name)
    return quantize_fx(model, shape, engine), shape
