"""Float32 attention (ops/attention.py, engines/aten_attention.py) against torch, bit for bit:
``nn.MultiheadAttention``'s inference fast path and ``F.scaled_dot_product_attention``'s CPU
flash kernel; products outside the measured MKL rule refused, then run inexact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import qexact
from qexact.engines import get_engine
from qexact.engines.aten_attention import exp_u20, expf_nearest
from qexact.ops.attention import (multihead_attention, prepare_multihead_attention,
                                  prepare_scaled_dot_product_attention,
                                  scaled_dot_product_attention)

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")

# (batch, tokens, embed, heads): tokens >= 12 and head dims >= 12 keep every product inside the
# measured MKL rule (engines/aten_matmul.py)
MHA_SHAPES = [(1, 17, 64, 4), (2, 17, 64, 4), (3, 20, 32, 2), (1, 50, 128, 8), (2, 13, 96, 6),
              (1, 12, 24, 2), (1, 100, 64, 4), (2, 65, 128, 2), (1, 197, 128, 2)]
# (batch, heads, tokens, head dim): query blocks of >= 4 rows, >= 12 keys and head dims >= 12
SDPA_SHAPES = [(1, 4, 17, 16), (2, 2, 20, 32), (1, 2, 50, 16), (3, 1, 12, 24), (2, 4, 30, 16),
               (1, 8, 45, 16), (1, 3, 63, 32), (2, 2, 28, 48), (1, 2, 197, 16), (1, 1, 150, 64),
               (1, 2, 100, 40)]


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)




def _module(torch, embed, heads, seed=0):
    torch.manual_seed(seed)
    module = torch.nn.MultiheadAttention(embed, heads, batch_first=True).eval()
    with torch.no_grad():
        module.in_proj_bias.normal_()
        module.out_proj.bias.normal_()
    return module


def _prepare(module, engine="x86", threads=1):
    return prepare_multihead_attention(
        module.in_proj_weight.detach().numpy(), module.in_proj_bias.detach().numpy(),
        module.out_proj.weight.detach().numpy(), module.out_proj.bias.detach().numpy(),
        module.num_heads, engine, threads)


@pytest.mark.torch
@pytest.mark.parametrize("shape", MHA_SHAPES)
def test_multihead_attention_bit_exact(shape, torch1):
    torch = torch1
    batch, tokens, embed, heads = shape
    module = _module(torch, embed, heads)
    params = _prepare(module)
    for seed in range(2):
        x = np.random.default_rng(seed).standard_normal((batch, tokens, embed)).astype(np.float32)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            expected, weights = module(xt, xt, xt)
        out, ours = multihead_attention(x, params)
        np.testing.assert_array_equal(_bits(out), _bits(expected.numpy()))
        assert ours is None and weights is not None


@pytest.mark.torch
@pytest.mark.parametrize("shape", SDPA_SHAPES)
def test_scaled_dot_product_attention_bit_exact(shape, torch1):
    torch = torch1
    params = prepare_scaled_dot_product_attention("x86")
    rng = np.random.default_rng(sum(shape))
    for spread in (1.0, 3.0):
        q, k, v = (rng.standard_normal(shape).astype(np.float32) * np.float32(spread)
                   for _ in range(3))
        expected = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(a) for a in (q, k, v))).numpy()
        np.testing.assert_array_equal(_bits(scaled_dot_product_attention(q, k, v, params)),
                                      _bits(expected))


@pytest.mark.torch
def test_sdpa_scale_and_key_count(torch1):
    """An explicit scale, and fewer query rows than keys."""
    torch = torch1
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 16, 16)).astype(np.float32)
    k, v = (rng.standard_normal((1, 2, 40, 16)).astype(np.float32) for _ in range(2))
    params = prepare_scaled_dot_product_attention("x86", scale=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), scale=0.3).numpy()
    np.testing.assert_array_equal(_bits(scaled_dot_product_attention(q, k, v, params)),
                                  _bits(expected))


def test_scalar_exp_is_nearest():
    """The flash kernel's scalar tail: exp rounded to the nearest float32."""
    x = np.linspace(-20, 0, 5001, dtype=np.float32)
    with np.errstate(all="ignore"):
        reference = np.exp(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(_bits(expf_nearest(x)), _bits(reference))
    assert expf_nearest(np.float32(0)) == 1


def test_exp_u20_edges():
    x = np.array([0, -1, -87.5, -90, -1e30, 88.8, 1.0], np.float32)
    y = exp_u20(x)
    assert y[0] == 1 and y[3] == 0 and y[4] == 0
    assert np.all(np.abs(y[[1, 6]] / np.exp(x[[1, 6]].astype(np.float64)) - 1) < 1e-5)  # float-ok


@pytest.mark.torch
def test_exp_u20_matches_flash_kernel(torch1):
    """exp_u20 on whole 16-lane vectors: keys = 16 (no scalar tail), one row per head."""
    torch = torch1
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, 64, 16, 16)).astype(np.float32) * np.float32(2)
    k, v = (rng.standard_normal((1, 64, 16, 16)).astype(np.float32) for _ in range(2))
    params = prepare_scaled_dot_product_attention("x86")
    expected = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v))).numpy()
    np.testing.assert_array_equal(_bits(scaled_dot_product_attention(q, k, v, params)),
                                  _bits(expected))


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
def test_outside_the_rule_refused_then_inexact(engine, torch1, report):
    """T = 5 tokens (vit at 32x32, patch 16): q @ k^T has N = 5 < 12 columns; d = 8: p @ v has
    N = 8. Refused, then run in NumPy's order when allowed; the share is reported."""
    torch = torch1
    for batch, tokens, embed, heads in ((1, 5, 64, 4), (2, 16, 32, 4)):
        module = _module(torch, embed, heads)
        x = np.random.default_rng(0).standard_normal((batch, tokens, embed)).astype(np.float32)
        with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
            multihead_attention(x, _prepare(module, engine))
        allowed = replace(get_engine(engine), allowed_inexact=frozenset({"matmul"}))
        out, _ = multihead_attention(x, _prepare(module, allowed))
        with torch.no_grad():
            xt = torch.from_numpy(x)
            expected = module(xt, xt, xt, need_weights=False)[0].numpy()
        same = int(np.sum(_bits(out) == _bits(expected)))
        report[f"mha {tokens}x{embed}/{heads} {engine} (inexact)"].update(
            elements=expected.size, identical=same)


def test_shape_errors():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((96, 32)).astype(np.float32), np.zeros(96, np.float32)
    ow, ob = rng.standard_normal((32, 32)).astype(np.float32), np.zeros(32, np.float32)
    with pytest.raises(qexact.ShapeError):
        prepare_multihead_attention(w, b, ow, ob, 5, "x86", 1)
    params = prepare_multihead_attention(w, b, ow, ob, 4, "x86", 1)
    with pytest.raises(qexact.ShapeError):
        multihead_attention(np.zeros((1, 12, 16), np.float32), params)


def _sweep(torch, count, seed):
    """Random MHA and SDPA shapes (tokens 2..200, head dims 8..64, heads 2..8, batch 1..3):
    inside the measured rule every element must match; outside it qexact refuses."""
    rng = np.random.default_rng(seed)
    exact = refused = 0
    for _ in range(count):
        batch, heads = int(rng.integers(1, 4)), 2 * int(rng.integers(1, 5))
        tokens, depth = int(rng.integers(2, 201)), int(rng.integers(8, 65))
        module = _module(torch, heads * depth, heads, seed=int(rng.integers(1000)))
        x = rng.standard_normal((batch, tokens, heads * depth)).astype(np.float32)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            expected = module(xt, xt, xt, need_weights=False)[0].numpy()
        q, k, v = (rng.standard_normal((batch, heads, tokens, depth)).astype(np.float32)
                   for _ in range(3))
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(a) for a in (q, k, v))).numpy()
        for run, want in ((lambda: multihead_attention(x, _prepare(module))[0], expected),
                          (lambda: scaled_dot_product_attention(
                              q, k, v, prepare_scaled_dot_product_attention("x86")), sdpa)):
            try:
                got = run()
            except qexact.UnsupportedError:
                refused += 1
                continue
            np.testing.assert_array_equal(_bits(got), _bits(want),
                                          f"{(batch, heads, tokens, depth)}")
            exact += want.size
    return exact, refused


@pytest.mark.torch
def test_random_shapes_short(torch1, report):
    exact, refused = _sweep(torch1, 6, seed=11)
    report["attention random shapes (short)"].update(elements=exact, refused=refused)


@pytest.mark.torch
@pytest.mark.slow
def test_random_shapes(torch1, report):
    exact, refused = _sweep(torch1, 60, seed=12)
    report["attention random shapes"].update(elements=exact, refused=refused)


@pytest.mark.torch
def test_sdpa_outside_the_rule(torch1):
    """5 keys (N = 5 columns), a query block of 1 row (33 rows: blocks 32 + 1), and more than
    512 keys (the unmeasured rescaling path) are refused."""
    rng = np.random.default_rng(0)
    params = prepare_scaled_dot_product_attention("x86")
    for q_rows, keys in ((5, 5), (33, 33)):
        q = rng.standard_normal((1, 1, q_rows, 16)).astype(np.float32)
        k = rng.standard_normal((1, 1, keys, 16)).astype(np.float32)
        with pytest.raises(qexact.UnsupportedError, match="matmul"):
            scaled_dot_product_attention(q, k, k, params)
    q = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
    k = rng.standard_normal((1, 1, 600, 16)).astype(np.float32)
    with pytest.raises(qexact.UnsupportedError, match="'attention'"):
        scaled_dot_product_attention(q, k, k, params)
