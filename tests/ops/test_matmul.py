"""Float32 matmul (torch.matmul / torch.bmm / @) and quantized::matmul: differential tests vs
PyTorch, bit for bit where qexact claims exactness, and the measured share of identical outputs
where it does not (MKL kernels whose order is not reproduced, run with allow_inexact).

Shapes are attention's: ``(G, T, d) @ (G, d, T)`` and ``(G, T, T) @ (G, T, d)`` with T 4..197
and d 8..64, plus the edges of the measured MKL rule (M >= 4, N >= 12, K <= 384; K 192/193;
the naive bmm loop below K*M*N = 400), transposed and broadcast operands, and folded 3-D @ 2-D.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError, ShapeError
from qexact.graph import Graph, Net, Node, Ref
from qexact.ops.matmul import (MatmulOp, QuantizedMatmulOp, float_matmul, prepare_matmul,
                               prepare_quantized_matmul, quantized_matmul)

EAGER_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")

ATTENTION = [(g, t, d) for g, t, d in ((24, 5, 64), (6, 17, 32), (4, 49, 32), (2, 50, 64),
                                       (3, 65, 16), (2, 101, 24), (1, 197, 64), (12, 12, 8))]
"""(products, tokens, head dim): ViT at 32 px (T=5, d=64), Swin windows (49, 32), ViT-B (197)."""

EDGES = [  # (batch shape, M, K, N): the rule's edges
    ((2,), 4, 8, 12), ((2,), 4, 24, 12), ((3,), 16, 192, 16), ((3,), 16, 193, 16),
    ((2,), 12, 384, 20), ((2,), 5, 197, 64), ((2,), 3, 8, 16), ((2,), 7, 7, 7),
    ((2, 3), 9, 33, 14), ((1,), 20, 100, 13),
]


def _allowing(engine: str):
    """``engine`` with the user's ``allow_inexact=("matmul",)``."""
    return replace(qexact.get_engine(engine), allowed_inexact=frozenset({"matmul"}))


def _torch_threads(threads):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    return previous


def torch_matmul(a, b, b_transposed=False, a_transposed=False):
    import torch

    ta = torch.from_numpy(np.ascontiguousarray(np.swapaxes(a, -1, -2))).transpose(-1, -2) \
        if a_transposed else torch.from_numpy(a)
    tb = torch.from_numpy(np.ascontiguousarray(np.swapaxes(b, -1, -2))).transpose(-1, -2) \
        if b_transposed else torch.from_numpy(b)
    return torch.matmul(ta, tb).numpy()


def _attention_operands(rng, g, t, d, kind):
    if kind == "scores":  # q @ k^T on dequantized values
        return ((rng.integers(-128, 128, (g, t, d)) * np.float32(0.031)).astype(np.float32),
                (rng.integers(-128, 128, (g, d, t)) * np.float32(0.027)).astype(np.float32))
    probs = rng.random((g, t, t), dtype=np.float32)
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    return probs, (rng.integers(-128, 128, (g, t, d)) * np.float32(0.05)).astype(np.float32)


def _in_rule(params, a, b):
    return not params.kernel.plan(a.shape, b.shape).kernel.inexact


@pytest.mark.torch
@pytest.mark.parametrize("threads", [1, 2])
def test_float_matmul_attention_shapes_vs_torch(threads):
    """Every attention product inside the rule is bit-equal; those outside are refused by
    default and, allowed, run in NumPy's order (share of identical outputs reported)."""
    pytest.importorskip("torch")
    previous = _torch_threads(threads)
    try:
        rng = np.random.default_rng([11, threads])
        exact = prepare_matmul("x86", threads)
        loose = prepare_matmul(_allowing("x86"), threads)
        checked = outside = same = total = 0
        for g, t, d in ATTENTION:
            for kind in ("scores", "context"):
                a, b = _attention_operands(rng, g, t, d, kind)
                expected = torch_matmul(a, b, b_transposed=kind == "scores")
                if _in_rule(loose, a, b):
                    assert_bitexact(float_matmul(a, b, exact), expected, f"{kind} {g, t, d}")
                    checked += expected.size
                    continue
                outside += 1
                with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
                    float_matmul(a, b, exact)
                ours = float_matmul(a, b, loose)
                same += int(np.sum(ours.view(np.uint32) == expected.view(np.uint32)))
                total += expected.size
        assert checked > 50_000
        assert outside >= 2  # (24, 5, 64) scores: N = 5 < 12; (12, 12, 8) context: N = 8
        print(f"threads {threads}: {checked} elements exact; outside the rule {total} "
              f"elements, {same / total:.1%} identical")
    finally:
        _torch_threads(previous)


@pytest.mark.torch
@pytest.mark.parametrize("threads", [1, 2])
def test_float_matmul_rule_edges_and_layouts(threads):
    """The rule's edges, transposed operands, broadcast batch dims and 3-D @ 2-D folding."""
    pytest.importorskip("torch")
    previous = _torch_threads(threads)
    try:
        rng = np.random.default_rng([12, threads])
        params = prepare_matmul(_allowing("x86"), threads)
        exact_cases = 0
        for batch, m, k, n in EDGES:
            a = rng.standard_normal(batch + (m, k), dtype=np.float32)
            b = rng.standard_normal(batch + (k, n), dtype=np.float32)
            variants = [(a, b, {}), (a, b, {"b_transposed": True}),
                        (a, b, {"a_transposed": True}), (a, b[(0,) * (len(batch) - 1)][None]
                                                         if len(batch) > 1 else b, {}),
                        (a, b[(0,) * len(batch)], {})]
            for left, right, layout in variants:
                expected = torch_matmul(left, right, **layout)
                if _in_rule(params, left, right):
                    assert_bitexact(float_matmul(left, right, params), expected,
                                    f"{left.shape} @ {right.shape} {layout} threads {threads}")
                    exact_cases += 1
        assert exact_cases >= 20
    finally:
        _torch_threads(previous)


def _random_sweep(cases: int, seed: int):
    """Random shapes (M, N up to 60, K up to 390, 1-3 products, operands contiguous or
    transposed): bit-equal wherever the rule claims it; returns (claimed, compared elements)."""
    rng = np.random.default_rng(seed)
    params = prepare_matmul(_allowing("x86"), 1)
    claimed = elements = 0
    for _ in range(cases):
        m, n = (int(v) for v in rng.integers(1, 61, 2))
        k = int(rng.integers(1, 391))
        batch = (int(rng.integers(1, 4)),)
        a = rng.standard_normal(batch + (m, k), dtype=np.float32)
        b = rng.standard_normal(batch + (k, n), dtype=np.float32)
        if not _in_rule(params, a, b):
            continue
        layout = {"a_transposed": bool(rng.random() < 0.3),
                  "b_transposed": bool(rng.random() < 0.5)}
        expected = torch_matmul(a, b, **layout)
        assert_bitexact(float_matmul(a, b, params), expected, f"{a.shape} @ {b.shape} {layout}")
        claimed += 1
        elements += expected.size
    return claimed, elements


@pytest.mark.torch
def test_float_matmul_random_shapes_short():
    pytest.importorskip("torch")
    previous = _torch_threads(1)
    try:
        claimed, _ = _random_sweep(60, 16)
        assert claimed >= 20
    finally:
        _torch_threads(previous)


@pytest.mark.torch
@pytest.mark.slow
def test_float_matmul_random_shapes_sweep():
    pytest.importorskip("torch")
    previous = _torch_threads(1)
    try:
        claimed, elements = _random_sweep(600, 17)
        assert claimed >= 250 and elements > 500_000
    finally:
        _torch_threads(previous)


def test_kernel_choice():
    """Which order each product takes (the rule, stated as data)."""
    one = prepare_matmul("x86", 1).kernel
    assert one.plan((2, 5, 8), (2, 8, 9)).kernel.order == "mul_add"  # 360 < 400: naive loop
    assert one.plan((2, 17, 32), (2, 32, 17)).kernel.order == "fma"
    assert one.plan((17, 32), (32, 17)).path == "mm"
    plan = one.plan((2, 3, 5, 32), (32, 16))  # folded: one mm of 30 rows
    assert (plan.path, plan.rows, plan.output_shape) == ("mm", 30, (2, 3, 5, 16))
    two = prepare_matmul("x86", 2).kernel
    with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
        two.plan((10, 32), (32, 16))  # one product, rows not a multiple of 8 on 2 threads
    assert two.plan((2, 10, 32), (2, 32, 16)).kernel.order == "fma"
    with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
        one.plan((2, 17, 32), (2, 32, 5))  # N < 12
    with pytest.raises(qexact.UnsupportedError, match="1-D"):
        one.plan((5,), (5, 3))
    with pytest.raises(ShapeError, match="inner"):
        one.plan((2, 5, 8), (2, 7, 9))
    for engine in EAGER_ENGINES:  # every engine runs ATen's kernel
        assert prepare_matmul(engine, 1).kernel.plan((2, 17, 32), (2, 32, 17)).kernel.order == "fma"


# --- quantized::matmul -------------------------------------------------------------------------


def _quantized_case(rng, dtype, shape_a, shape_b):
    qa = QParams.per_tensor(float(10.0 ** rng.uniform(-2.5, -0.5)),
                            int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    qb = QParams.per_tensor(float(10.0 ** rng.uniform(-2.5, -0.5)),
                            int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    a = rng.integers(dtype.qmin, dtype.qmax + 1, shape_a).astype(dtype.numpy_dtype)
    b = rng.integers(dtype.qmin, dtype.qmax + 1, shape_b).astype(dtype.numpy_dtype)
    return QuantizedArray(a, qa), QuantizedArray(b, qb)


@pytest.mark.torch
@pytest.mark.parametrize("engine_name", EAGER_ENGINES)
def test_quantized_matmul_vs_torch(engine_name):
    """torch.ops.quantized.matmul: bit-equal inside the rule on every engine (quint8, qint8);
    outside it, allowed, the share of identical bytes is reported."""
    torch = pytest.importorskip("torch")
    previous_engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine_name
    previous = _torch_threads(1)
    try:
        rng = np.random.default_rng([13, len(engine_name)])
        loose = _allowing(engine_name)
        exact_elements = same = total = 0
        for case, (g, t, d) in enumerate(ATTENTION * 2):
            dtype = QUINT8 if case % 2 else QINT8
            for shape_a, shape_b in (((g, t, d), (g, d, t)), ((g, t, t), (g, t, d))):
                a, b = _quantized_case(rng, dtype, shape_a, shape_b)
                out_scale = float(a.qparams.scale * b.qparams.scale * np.sqrt(shape_a[-1]) * 20)
                out_zp = int(rng.integers(dtype.qmin, dtype.qmax + 1))
                expected = torch.ops.quantized.matmul(
                    torch_quantized(a.values, a.qparams), torch_quantized(b.values, b.qparams),
                    out_scale, out_zp).int_repr().numpy()
                params = prepare_quantized_matmul(a.qparams, b.qparams, out_scale, out_zp,
                                                  loose, 1)
                actual = quantized_matmul(a, b, params).values
                if not params.matmul.kernel.plan(shape_a, shape_b).kernel.inexact:
                    assert_bitexact(actual, expected, f"{engine_name} {shape_a} @ {shape_b}")
                    exact_elements += expected.size
                else:
                    same += int(np.sum(actual == expected))
                    total += expected.size
        assert exact_elements > 100_000
        print(f"{engine_name}: {exact_elements} bytes exact; outside the rule {same}/{total} "
              "identical")
    finally:
        torch.backends.quantized.engine = previous_engine
        _torch_threads(previous)


def test_quantized_matmul_errors():
    u8 = QParams.per_tensor(0.1, 3, QUINT8)
    s8 = QParams.per_tensor(0.1, 3, QINT8)
    with pytest.raises(QuantParamError, match="one dtype"):
        prepare_quantized_matmul(u8, s8, 0.5, 0, "x86")
    with pytest.raises(QuantParamError, match="per-tensor"):
        prepare_quantized_matmul(QParams.per_channel([0.1, 0.2], [0, 0], 0, QUINT8), u8, 0.5, 0,
                                 "x86")
    with pytest.raises(qexact.UnsupportedError, match="quint8 or qint8"):
        i32 = QParams.per_tensor(0.1, 0, qexact.QINT32)
        prepare_quantized_matmul(i32, i32, 0.5, 0, "x86")
    params = prepare_quantized_matmul(u8, u8, 0.5, 7, "x86", 1)
    assert params.output_qparams == QParams.per_tensor(0.5, 7, QUINT8)
    with pytest.raises(QuantParamError, match="prepared"):
        quantized_matmul(QuantizedArray(np.zeros((2, 4, 4), np.uint8), u8),
                         QuantizedArray(np.zeros((2, 4, 12), np.uint8),
                                        QParams.per_tensor(0.2, 3, QUINT8)), params)


def _graph():
    return Graph(["a", "b", "c"], [
        Node("qa", "quantize", (Ref("a"),), {"output_scale": 0.05, "output_zero_point": 128,
                                             "output_dtype": "quint8", "output_axis": None}),
        Node("qb", "quantize", (Ref("b"),), {"output_scale": 0.04, "output_zero_point": 120,
                                             "output_dtype": "quint8", "output_axis": None}),
        Node("qmm", "quantized_matmul", (Ref("qa"), Ref("qb")),
             {"output_scale": 0.3, "output_zero_point": 100, "num_threads": 1}),
        Node("scores", "dequantize", (Ref("qmm"),)),
        Node("mm", "matmul", (Ref("scores"), Ref("c")), {"num_threads": 1}),
    ], [Ref("mm")])


def test_graph_ops_save_load_and_explain(tmp_path):
    """A graph with quantized_matmul and matmul nodes runs, round-trips through save/load,
    and explains an element (its last stage is the output value)."""
    rng = np.random.default_rng(14)
    a = rng.standard_normal((2, 3, 16, 8), dtype=np.float32)
    b = rng.standard_normal((2, 3, 8, 16), dtype=np.float32)
    c = rng.standard_normal((2, 3, 16, 24), dtype=np.float32)
    net = Net(_graph(), "x86")
    out = net(a, b, c)
    assert out.shape == (2, 3, 16, 24) and out.dtype == np.float32
    path = tmp_path / "mm.qexact"
    qexact.save(net, path)
    assert_bitexact(qexact.load(path)(a, b, c), out, "save/load")
    explanation = net.explain((a, b, c), "mm", (1, 2, 3, 4))
    assert explanation.stages[-1].result == out[1, 2, 3, 4]
    quantized = net.explain((a, b, c), "qmm", (0, 1, 5, 6))
    assert quantized.stages[-1].result == net.run_values(a, b, c)["qmm"].values[0, 1, 5, 6]
    assert MatmulOp and QuantizedMatmulOp  # registered graph ops


def test_refused_shape_is_reported_and_allowed_is_marked():
    rng = np.random.default_rng(15)
    a = rng.standard_normal((2, 3, 16, 8), dtype=np.float32)
    b = rng.standard_normal((2, 3, 8, 16), dtype=np.float32)
    c = rng.standard_normal((2, 3, 16, 4), dtype=np.float32)  # N = 4: MKL's other kernels
    with pytest.raises(qexact.UnsupportedError, match="allow_inexact"):
        Net(_graph(), "x86")(a, b, c)
    net = Net(_graph(), "x86", allow_inexact=("matmul",))
    assert net(a, b, c).shape == (2, 3, 16, 4)
    assert "NumPy" in net.layers["mm"].inexact
