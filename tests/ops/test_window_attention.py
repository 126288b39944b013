"""torchvision's Swin functions (ops/window_attention.py) against torchvision called directly.

``shifted_window_attention`` runs float32 (F.linear through MKL's sgemm, the batched products,
ATen's softmax): every output is compared bit for bit, with shift 0 and > 0, with padding to
the window and without, a window larger than the map (shift cleared), one shift axis only.
"""

from __future__ import annotations

import numpy as np
import pytest

import qexact
from qexact.dtypes import dtype_named
from qexact.graph import Graph, Node, Ref
from qexact.ops.window_attention import (MASK_FILL, patch_merging_pad,
                                         prepare_window_attention, relative_position_bias,
                                         shift_mask, window_attention)
from qexact.qparams import QParams, QuantizedArray

CASES = [  # (input shape (B, H, W, C), window, heads, shift)
    ((1, 8, 8, 32), [4, 4], 2, [0, 0]),
    ((1, 8, 8, 32), [4, 4], 2, [2, 2]),
    ((2, 6, 10, 32), [4, 4], 2, [2, 2]),  # padded to 8 x 12
    ((1, 5, 7, 32), [4, 4], 2, [2, 2]),  # padded on both axes
    ((1, 8, 8, 64), [4, 4], 4, [2, 0]),  # one axis shifted
    ((1, 4, 4, 32), [7, 7], 2, [3, 3]),  # window covers the map: shift cleared
    ((1, 14, 14, 48), [7, 7], 3, [3, 3]),  # swin_t's window, 49 tokens
    ((1, 7, 7, 384), [7, 7], 12, [3, 3]),  # swin_t's stage 3: F.linear K = 384 (two halves)
    ((1, 4, 4, 225), [4, 4], 3, [2, 2]),  # K = 225: halves and an odd last product
]


def _torchvision():
    pytest.importorskip("torch")
    from support.torchvision_models import import_torchvision

    if import_torchvision() is None:
        pytest.skip("torchvision is not installed")
    from torchvision.models import swin_transformer

    return swin_transformer


def _arrays(module):
    return [None if p is None else p.detach().numpy()
            for p in (module.qkv.weight, module.proj.weight, None, module.qkv.bias,
                      module.proj.bias)]


@pytest.mark.torch
@pytest.mark.parametrize("shape, window, heads, shift", CASES)
def test_window_attention_matches_torchvision(shape, window, heads, shift, report):
    import torch

    swin = _torchvision()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1)
        module = swin.ShiftedWindowAttention(shape[-1], window, shift, heads).eval()
        x = torch.randn(shape)
        with torch.no_grad():
            expected = module(x).numpy()
            expected_bias = module.get_relative_position_bias().numpy()
    finally:
        torch.set_num_threads(previous)
    bias = relative_position_bias(module.relative_position_bias_table.detach().numpy(),
                                  module.relative_position_index.numpy(), window)
    assert np.array_equal(bias.view(np.uint32), expected_bias.view(np.uint32))
    qkv_w, proj_w, _, qkv_b, proj_b = _arrays(module)
    params = prepare_window_attention(window, heads, shift, "x86", num_threads=1)
    out = window_attention(x.numpy(), qkv_w, proj_w, bias, qkv_b, proj_b, params)
    assert out.shape == expected.shape
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))
    report["shifted_window_attention (direct)"].update(cases=1, elements=expected.size)


@pytest.mark.torch
def test_without_biases_matches_torchvision():
    import torch

    swin = _torchvision()
    torch.manual_seed(2)
    module = swin.ShiftedWindowAttention(32, [4, 4], [2, 2], 2, qkv_bias=False,
                                         proj_bias=False).eval()
    x = torch.randn(1, 8, 12, 32)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            expected = module(x).numpy()
            bias = module.get_relative_position_bias().numpy()
    finally:
        torch.set_num_threads(previous)
    params = prepare_window_attention([4, 4], 2, [2, 2], "fbgemm", num_threads=1)
    out = window_attention(x.numpy(), module.qkv.weight.detach().numpy(),
                           module.proj.weight.detach().numpy(), bias, None, None, params)
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(1, 5, 7, 8), (2, 4, 6, 3), (3, 3, 5)])
def test_patch_merging_pad_matches_torchvision(shape):
    import torch

    swin = _torchvision()
    torch.manual_seed(3)
    x = torch.randn(shape)
    assert np.array_equal(patch_merging_pad(x.numpy()), swin._patch_merging_pad(x).numpy())
    qx = torch.quantize_per_tensor(x, 0.05, 7, torch.quint8)  # padded with the zero point
    out = patch_merging_pad(QuantizedArray(qx.int_repr().numpy(),
                                           QParams.per_tensor(0.05, 7, dtype_named("quint8"))))
    assert np.array_equal(out.values, swin._patch_merging_pad(qx).int_repr().numpy())


def test_shift_mask_regions():
    """4 x 4 map, window 2, shift 1: the last row and column of windows mix regions."""
    mask = shift_mask(4, 4, (2, 2), (1, 1))
    assert mask.shape == (4, 4, 4) and mask.dtype == np.float32
    assert not mask[0].any()  # the top-left window is one region
    assert set(np.unique(mask[3])) == {np.float32(0.0), MASK_FILL}
    assert np.array_equal(mask[3], mask[3].T)
    assert (np.diagonal(mask, axis1=1, axis2=2) == 0).all()


def _small_inputs(seed=0, shape=(1, 4, 4, 16), heads=2, window=2):
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    tokens = window * window
    return (rng.standard_normal(shape, dtype=np.float32),
            rng.standard_normal((3 * channels, channels), dtype=np.float32),
            rng.standard_normal((channels, channels), dtype=np.float32),
            rng.standard_normal((1, heads, tokens, tokens), dtype=np.float32),
            rng.standard_normal(3 * channels, dtype=np.float32),
            rng.standard_normal(channels, dtype=np.float32))


def test_refuses_quantized_and_bad_shapes():
    x, qkv_w, proj_w, bias, qkv_b, proj_b = _small_inputs()
    params = prepare_window_attention([2, 2], 2, [1, 1], "x86", num_threads=1)
    quantized = QuantizedArray(np.zeros(x.shape, np.uint8),
                               QParams.per_tensor(0.1, 0, dtype_named("quint8")))
    with pytest.raises(qexact.errors.ShapeError, match="quantized"):
        window_attention(quantized, qkv_w, proj_w, bias, qkv_b, proj_b, params)
    with pytest.raises(qexact.errors.ShapeError, match="do not fit"):
        window_attention(x, qkv_w[:-1], proj_w, bias, qkv_b, proj_b, params)
    with pytest.raises(qexact.errors.ShapeError):
        prepare_window_attention([2, 2, 2], 2, [1, 1], "x86")


def test_product_outside_the_mkl_rule_is_refused_unless_allowed():
    """Two threads and one F.linear of 4 rows: MKL splits the rows, a part smaller than 4 runs
    a kernel qexact does not reproduce: refused, or run in NumPy's order when allowed."""
    x, qkv_w, proj_w, bias, qkv_b, proj_b = _small_inputs(shape=(1, 2, 2, 16))
    params = prepare_window_attention([2, 2], 2, [0, 0], "x86", num_threads=2)
    with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
        window_attention(x, qkv_w, proj_w, bias, qkv_b, proj_b, params)
    net = qexact.Net(_graph((1, 2, 2, 16), num_threads=2, shift=(0, 0)), "x86",
                     allow_inexact=("matmul",))
    assert "NumPy" in net.layers["attention"].inexact
    assert net(x).shape == (1, 1, 1, 64)
    with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
        qexact.Net(_graph((1, 2, 2, 16), num_threads=2, shift=(0, 0)), "x86")(x)


def _graph(shape, num_threads=1, heads=2, window=2, shift=(1, 1), seed=0):
    """x -> window_attention with constant weights, bias from a table and index."""
    _, qkv_w, proj_w, _, qkv_b, proj_b = _small_inputs(seed, shape, heads, window)
    rng = np.random.default_rng(seed + 1)
    table = rng.standard_normal(((2 * window - 1) ** 2, heads), dtype=np.float32)
    index = rng.integers(0, table.shape[0], window ** 4).astype(np.int64)
    constants = [Node(name, "constant", (), {}, {"value": value}) for name, value in
                 (("qkv_w", qkv_w), ("proj_w", proj_w), ("qkv_b", qkv_b), ("proj_b", proj_b),
                  ("table", table), ("index", index))]
    nodes = constants + [
        Node("bias", "relative_position_bias", (Ref("table"), Ref("index")),
             {"window_size": [window, window]}),
        Node("attention", "window_attention",
             (Ref("x"), Ref("qkv_w"), Ref("proj_w"), Ref("bias"), Ref("qkv_b"), Ref("proj_b")),
             {"window_size": [window, window], "num_heads": heads, "shift_size": list(shift),
              "num_threads": num_threads}),
        Node("merged", "patch_merging_pad", (Ref("attention"),), {})]
    return Graph(["x"], nodes, [Ref("merged")])


def test_graph_runs_and_round_trips(tmp_path):
    graph = _graph((1, 6, 5, 16))
    net = qexact.Net(graph, "qnnpack")
    x = np.random.default_rng(9).standard_normal((1, 6, 5, 16), dtype=np.float32)
    out = net(x)
    assert out.shape == (1, 3, 3, 64)
    path = tmp_path / "swin_ops.qexact"
    qexact.save(net, path)
    loaded = qexact.load(path)
    assert np.array_equal(loaded(x).view(np.uint32), out.view(np.uint32))
    explanation = net.explain(x, layer="attention", index=(0, 5, 4, 3))
    sums = [stage for stage in explanation.stages if stage.name.endswith("projection + bias")]
    element = net.run_values(x)["attention"][0, 5, 4, 3]
    assert sums and sums[-1].result.view(np.uint32) == element.view(np.uint32)
