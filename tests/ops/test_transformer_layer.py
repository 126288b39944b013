"""Float32 ``nn.TransformerEncoderLayer`` / ``nn.TransformerEncoder`` (ops/transformer_layer.py)
against torch's inference fast path (``torch._transformer_encoder_layer_fwd``), bit for bit:
relu and gelu (every spelling), norm_first both, the slow path of unequal norm eps, products
outside the measured MKL rule refused then run inexact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from qexact.errors import UnsupportedError
from qexact.ops.transformer_layer import (TransformerEncoderParams, prepare_transformer_layer,
                                          transformer_encoder, transformer_layer)

# (batch, tokens, d_model, nhead, dim_feedforward): tokens >= 12 and head dims >= 12 keep every
# product inside the measured MKL rule (engines/aten_matmul.py)
SHAPES = [(1, 12, 32, 2, 64), (2, 24, 64, 4, 128), (3, 20, 96, 8, 256), (1, 64, 128, 8, 192),
          (2, 16, 48, 4, 200), (3, 13, 128, 2, 512)]


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)




def _layer(torch, embed, heads, hidden, activation="relu", norm_first=False, seed=0,
           batch_first=True):
    torch.manual_seed(seed)
    layer = torch.nn.TransformerEncoderLayer(embed, heads, hidden, dropout=0.0,
                                             activation=activation, batch_first=batch_first,
                                             norm_first=norm_first).eval()
    with torch.no_grad():  # non-trivial biases and norm affines
        for name, value in layer.named_parameters():
            if name.endswith("bias") or name.startswith("norm"):
                value.add_(torch.randn_like(value) * 0.5)
    return layer


def _arrays(layer):
    def array(tensor):
        return tensor.detach().numpy().astype(np.float32)

    attention = layer.self_attn
    return {"in_proj_weight": array(attention.in_proj_weight),
            "in_proj_bias": array(attention.in_proj_bias),
            "out_proj_weight": array(attention.out_proj.weight),
            "out_proj_bias": array(attention.out_proj.bias),
            "linear1_weight": array(layer.linear1.weight),
            "linear1_bias": array(layer.linear1.bias),
            "linear2_weight": array(layer.linear2.weight),
            "linear2_bias": array(layer.linear2.bias),
            "norm1_weight": array(layer.norm1.weight), "norm1_bias": array(layer.norm1.bias),
            "norm2_weight": array(layer.norm2.weight), "norm2_bias": array(layer.norm2.bias)}


def _prepare(layer, engine="x86", grad=False, **kwargs):
    """The path torch takes for ``layer`` (as importers/torch_transformer_layer.py decides it);
    ``grad``: torch runs with grad enabled (parameters require grad)."""
    attention = layer.self_attn
    even = attention.num_heads % 2 == 0
    fast = attention.batch_first and even and layer.norm1.eps == layer.norm2.eps and not grad
    activation = "gelu" if layer.activation_relu_or_gelu == 2 else "relu"
    if not fast and getattr(layer.activation, "approximate", "none") == "tanh":
        activation = "gelu_tanh"
    eps2 = layer.norm2.eps if layer.norm2.eps != layer.norm1.eps else None
    return prepare_transformer_layer(
        _arrays(layer), attention.num_heads, norm_first=layer.norm_first, activation=activation,
        eps=layer.norm1.eps, eps2=eps2, engine=engine, num_threads=1,
        path="fast" if fast else "slow",
        attention="native" if attention.batch_first and even and not grad else "sdpa",
        batch_first=attention.batch_first, **kwargs)


def _torch_out(torch, module, x, grad=False):
    if grad:
        with torch.enable_grad():
            return module(torch.from_numpy(x)).detach().numpy()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _check(torch, layer, x, engine="x86", grad=False):
    expected = _torch_out(torch, layer, x, grad)
    got = transformer_layer(x, _prepare(layer, engine, grad))
    mismatches = int(np.count_nonzero(_bits(got) != _bits(expected)))
    assert mismatches == 0, f"{mismatches} of {expected.size} outputs differ"


@pytest.mark.torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_layer_matches_torch(torch1, shape, activation, norm_first):
    batch, tokens, embed, heads, hidden = shape
    layer = _layer(torch1, embed, heads, hidden, activation, norm_first)
    x = np.random.default_rng(batch * tokens + embed).standard_normal(
        (batch, tokens, embed)).astype(np.float32)
    _check(torch1, layer, x)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(24))
def test_layer_random_sweep(torch1, seed):
    rng = np.random.default_rng(seed)
    batch, tokens, embed, heads, hidden = SHAPES[seed % len(SHAPES)]
    tokens = int(rng.integers(12, 65))
    layer = _layer(torch1, embed, heads, hidden, ("relu", "gelu")[seed % 2],
                   bool(seed // 2 % 2), seed)
    x = (rng.standard_normal((batch, tokens, embed)) * rng.choice([0.1, 1.0, 10.0])).astype(
        np.float32)
    _check(torch1, layer, x)


@pytest.mark.torch
def test_activation_spellings(torch1):
    """``F.relu``, ``nn.ReLU()``, ``F.gelu``, ``nn.GELU()`` take the fast path like the strings;
    ``nn.GELU(approximate="tanh")`` too, where ``use_gelu`` runs the erf GELU (measured)."""
    nn, F = torch1.nn, torch1.nn.functional
    x = np.random.default_rng(5).standard_normal((2, 16, 64)).astype(np.float32)
    for activation in (F.relu, nn.ReLU(), F.gelu, nn.GELU(), nn.GELU(approximate="tanh")):
        _check(torch1, _layer(torch1, 64, 4, 96, activation), x)


@pytest.mark.torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_unequal_eps_slow_path(torch1, activation, norm_first):
    """norm1.eps != norm2.eps: torch's slow path (the attention's own fast path, F.linear ->
    addmm, the module's activation, the same LayerNorm) gives the same kernels' output."""
    layer = _layer(torch1, 32, 2, 64, activation, norm_first)
    layer.norm2.eps = 1e-3
    x = np.random.default_rng(3).standard_normal((2, 12, 32)).astype(np.float32)
    _check(torch1, layer, x)


@pytest.mark.torch
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("mode", ["batch_first=False", "odd nhead", "grad enabled"])
def test_slow_paths(torch1, mode, activation, norm_first):
    """torch's slow path with F.multi_head_attention_forward (linear, SDPA's flash kernel,
    linear): batch_first=False (the (T, B, E) input: addmm in-projection), an odd nhead and a
    grad-enabled run (the transposed view: matmul then + bias); the module's activation."""
    act = torch1.nn.GELU(approximate="tanh") if activation == "gelu_tanh" else activation
    embed, heads = (48, 3) if mode == "odd nhead" else (64, 4)
    layer = _layer(torch1, embed, heads, 96, act, norm_first,
                   batch_first=mode != "batch_first=False")
    shape = (20, 2, embed) if mode == "batch_first=False" else (2, 20, embed)
    x = np.random.default_rng(11).standard_normal(shape).astype(np.float32)
    _check(torch1, layer, x, grad=mode == "grad enabled")


@pytest.mark.torch
def test_relu_keeps_negative_zero_and_nan(torch1):
    """``at::relu_`` keeps -0.0 and NaN (the op's ``_relu``), as measured on torch.relu_."""
    from qexact.ops.transformer_layer import _relu

    values = np.array([-0.0, np.nan, -np.nan, 0.0, -1.5, 2.0], np.float32)
    expected = torch1.relu_(torch1.from_numpy(values.copy())).numpy()
    assert np.array_equal(_bits(_relu(values)), _bits(expected))


@pytest.mark.torch
def test_encoder_stack_and_final_norm(torch1):
    nn = torch1.nn
    layer = _layer(torch1, 64, 4, 128, "gelu")
    encoder = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(64, eps=1e-6),
                                    enable_nested_tensor=False).eval()
    with torch1.no_grad():
        encoder.norm.weight.normal_()
        encoder.norm.bias.normal_()
        encoder.layers[1].linear1.bias.normal_()  # the clones differ
    from qexact.ops.float_normalization import prepare_float_layer_norm

    params = TransformerEncoderParams(
        tuple(_prepare(module) for module in encoder.layers),
        prepare_float_layer_norm((64,), encoder.norm.weight.detach().numpy(),
                                 encoder.norm.bias.detach().numpy(), 1e-6, engine="x86"))
    x = np.random.default_rng(9).standard_normal((2, 20, 64)).astype(np.float32)
    expected = _torch_out(torch1, encoder, x)
    assert np.array_equal(_bits(transformer_encoder(x, params)), _bits(expected))


@pytest.mark.torch
def test_products_outside_the_rule_refused_then_inexact(torch1):
    """Head dims of 8 (< 12 columns) run an MKL kernel whose order is not reproduced."""
    from qexact.engines import get_engine

    layer = _layer(torch1, 32, 4, 64)
    x = np.random.default_rng(1).standard_normal((1, 12, 32)).astype(np.float32)
    with pytest.raises(UnsupportedError, match="allow_inexact"):
        transformer_layer(x, _prepare(layer))
    engine = replace(get_engine("x86"), allowed_inexact=frozenset({"matmul"}))
    params = _prepare(layer, engine)
    assert "allow_inexact" in params.inexact
    got = transformer_layer(x, params)
    expected = _torch_out(torch1, layer, x)
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)  # float-ok: documented inexact


def test_unbatched_input_refused():
    rng = np.random.default_rng(0)
    arrays = {"in_proj_weight": rng.standard_normal((96, 32)), "in_proj_bias": np.zeros(96),
              "out_proj_weight": rng.standard_normal((32, 32)), "out_proj_bias": np.zeros(32),
              "linear1_weight": rng.standard_normal((64, 32)), "linear1_bias": np.zeros(64),
              "linear2_weight": rng.standard_normal((32, 64)), "linear2_bias": np.zeros(32),
              "norm1_weight": np.ones(32), "norm1_bias": np.zeros(32),
              "norm2_weight": np.ones(32), "norm2_bias": np.zeros(32)}
    params = prepare_transformer_layer(arrays, 2, norm_first=False, activation="relu",
                                       eps=1e-5, engine="x86", num_threads=1)
    with pytest.raises(UnsupportedError, match="batched"):
        transformer_layer(np.zeros((12, 32), np.float32), params)
    with pytest.raises(UnsupportedError, match="activation"):
        prepare_transformer_layer(arrays, 2, norm_first=False, activation="tanh", eps=1e-5,
                                  engine="x86")
