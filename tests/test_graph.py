"""Hand-built ``Graph``s run by ``Net`` on every engine, without torch.

quantize -> linear(+relu) -> relu -> flatten -> linear -> dequantize, checked three ways:
- against a hand-derived result (power-of-two scales, so every engine's arithmetic is exact);
- against the same ops called one by one through the public functional API;
- (marked torch) against ``torch.ops.quantized`` on the same parameters.
Also: unknown ops and errors inside a node name the node.
"""

from __future__ import annotations

import numpy as np
import pytest

import qexact
from qexact import Graph, Net, Node, QParams, Ref
from qexact.dtypes import QINT8, QUINT8
from qexact.engines import engine_names
from qexact.qparams import qparams_to_fields
from support.assertions import assert_bitexact

ENGINES = engine_names()


def linear_node(name, source, weight, weight_qparams, bias, out_scale, out_zp, relu):
    attrs, arrays = qparams_to_fields(QParams.per_tensor(out_scale, out_zp, QUINT8), "output")
    weight_attrs, weight_arrays = qparams_to_fields(weight_qparams, "weight")
    attrs.update(weight_attrs, relu=relu)
    arrays.update(weight_arrays, weight=np.asarray(weight, np.int8))
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32)
    return Node(name, "linear", (Ref(source),), attrs, arrays)


def exact_graph():
    """(B, 2, 3) -> quantize(s=0.5, z=10) -> linear 3->4 (+relu) -> relu -> flatten -> linear 8->2
    -> dequantize. Scales are powers of two and the multipliers exactly 1/2 or 1, so every engine
    computes the same exact integers."""
    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(0.5, 10, QUINT8), "output")
    w1 = np.array([[1, 2, -1], [0, -3, 2], [4, 0, 0], [-1, -1, -1]], np.int8)
    w1_qparams = QParams.per_tensor(0.25, 0, QINT8)                      # s_x * s_w = 1/8
    b1 = np.array([0.5, -0.25, 0.0, 1.0], np.float32)                      # multiples of 1/8
    w2 = np.array([[1, 0, -1, 2, 0, 1, 1, -2], [0, 1, 1, 0, -1, 0, 2, 1]], np.int8)
    w2_qparams = QParams.per_channel([0.5, 0.25], [0, 0], 0, QINT8)         # s_x*s_w = 1/8, 1/16
    nodes = [
        Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
        linear_node("fc1", "quant", w1, w1_qparams, b1, 0.25, 20, relu=True),   # M = 1/2
        Node("act", "relu", (Ref("fc1"),)),
        Node("flat", "flatten", (Ref("act"),), {"start_dim": 1, "end_dim": -1}),
        linear_node("fc2", "flat", w2, w2_qparams, None, 0.0625, 128, relu=False),  # M = 2, 1
        Node("dequant", "dequantize", (Ref("fc2"),)),
    ]
    return Graph(["x"], nodes, [Ref("dequant")]), (w1, b1, w2)


def hand_derived(x, weights):
    """The exact result in Python integers (valid while no value hits a .5 tie)."""
    w1, b1, w2 = weights
    xq = np.clip(np.rint(x.astype(np.float64) / 0.5) + 10, 0, 255).astype(np.int64)
    acc1 = (xq - 10) @ w1.T.astype(np.int64) + (b1 / 0.125).astype(np.int64)
    q1 = np.clip(np.rint(acc1 / 2) + 20, 20, 255)                          # fused relu: low = zp
    q1 = np.maximum(q1, 20)                                                # relu module
    flat = q1.reshape(q1.shape[0], -1) - 20
    acc2 = flat @ w2.T.astype(np.int64)
    multiplier = np.array([0.125 / 0.0625, 0.0625 / 0.0625])
    q2 = np.clip(np.rint(acc2 * multiplier) + 128, 0, 255)
    return ((q2 - 128) * 0.0625).astype(np.float32)


def exact_inputs(rows=50, seed=0):
    """Integers: x_q - z_x is even and so is every fc1 accumulator (the int bias is even too), so
    halving it never reaches a rounding tie."""
    rng = np.random.default_rng(seed)
    return rng.integers(-5, 6, size=(rows, 2, 3)).astype(np.float32)


@pytest.mark.parametrize("engine", ENGINES)
def test_hand_built_graph_matches_hand_derived_result(engine):
    graph, weights = exact_graph()
    net = Net(graph, engine)
    x = exact_inputs()
    expected = hand_derived(x, weights)
    assert len(np.unique(expected)) > 10 and expected.min() < 0 < expected.max()
    assert_bitexact(net(x), expected, f"hand-built graph on {engine}")


@pytest.mark.parametrize("engine", ENGINES)
def test_hand_built_graph_matches_functional_api(engine):
    graph, (w1, b1, w2) = exact_graph()
    net = Net(graph, engine)
    assert "torch" not in repr(net)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((80, 2, 3)) * 6).astype(np.float32)
    xq = qexact.quantize_per_tensor(x, 0.5, 10, QUINT8)
    p1 = qexact.prepare_linear(w1, QParams.per_tensor(0.25, 0, QINT8), b1, xq.qparams,
                               QParams.per_tensor(0.25, 20, QUINT8), relu=True, engine=engine)
    y = qexact.flatten(qexact.relu(qexact.linear(xq, p1)), 1)
    p2 = qexact.prepare_linear(w2, QParams.per_channel([0.5, 0.25], [0, 0], 0, QINT8), None,
                               y.qparams, QParams.per_tensor(0.0625, 128, QUINT8), engine=engine)
    out = qexact.linear(y, p2)
    result = net.run_quantized(x)
    assert_bitexact(result.values, out.values, f"run_quantized on {engine}")
    assert result.qparams == out.qparams
    assert_bitexact(net(x), qexact.dequantize(out), f"net(x) on {engine}")
    values = net.run_values(x)
    assert list(values) == ["x", "quant", "fc1", "act", "flat", "fc2", "dequant"]
    assert values["flat"].shape == (80, 8)
    assert list(net.layers) == ["quant", "fc1", "fc2"]
    assert isinstance(net.layers["fc1"], qexact.LinearParams)
    assert net.layers["fc1"].engine == engine == net.engine.name


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
def test_hand_built_graph_matches_torch_ops(engine):
    torch = pytest.importorskip("torch")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        graph, (w1, b1, w2) = exact_graph()
        # Make it less friendly: odd scales, non-exact bias, random inputs (ties happen).
        graph.nodes[1].attrs["output_scale"] = 0.0371
        graph.nodes[4].attrs["output_scale"] = 0.0913
        graph.nodes[1].arrays["bias"] = np.float32([0.31, -0.77, 0.05, 1.3])
        net = Net(graph, engine)
        x = (np.random.default_rng(2).standard_normal((200, 2, 3)) * 3).astype(np.float32)
        xq = torch.quantize_per_tensor(torch.from_numpy(x), 0.5, 10, torch.quint8)
        wq1 = torch.quantize_per_tensor(torch.from_numpy(w1.astype(np.float32) * 0.25), 0.25, 0,
                                        torch.qint8)
        wq2 = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(w2), torch.tensor([0.5, 0.25], dtype=torch.float64),
            torch.zeros(2, dtype=torch.int64), 0)
        p1 = torch.ops.quantized.linear_prepack(wq1, torch.from_numpy(graph.nodes[1].arrays["bias"]))
        p2 = torch.ops.quantized.linear_prepack(wq2, None)
        y = torch.ops.quantized.linear_relu(xq, p1, 0.0371, 20)
        y = torch.flatten(torch.relu(y), 1)
        out = torch.ops.quantized.linear(y, p2, 0.0913, 128)
        assert_bitexact(net.run_quantized(x).values, out.int_repr().numpy(), f"vs torch on {engine}")
        assert_bitexact(net(x), out.dequantize().numpy(), f"vs torch on {engine}")
    finally:
        torch.backends.quantized.engine = previous


def test_graph_without_torch_in_a_subprocess(tmp_path):
    """Building and running a graph never imports torch."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, qexact\n"
        "from qexact import Graph, Net, Node, Ref\n"
        "g = Graph(['x'], [Node('q', 'quantize', (Ref('x'),), {'output_dtype': 'quint8',\n"
        "    'output_axis': None, 'output_scale': 0.5, 'output_zero_point': 3}),\n"
        "    Node('r', 'relu', (Ref('q'),)), Node('d', 'dequantize', (Ref('r'),))], [Ref('d')])\n"
        "for engine in qexact.engines.engine_names():\n"
        "    out = Net(g, engine)(np.float32([-1.0, 0.25, 0.75, 2.0]))\n"
        "    assert out.tolist() == [0.0, 0.5, 0.5, 2.0], out  # 0.75/0.5+3 = 4.5 -> 4 (half-even)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# --- Errors -------------------------------------------------------------------------------------


def test_unknown_op_names_node_and_known_ops():
    graph, _ = exact_graph()
    graph.nodes.insert(2, Node("pool", "max_pool2d", (Ref("fc1"),), source="features.3"))
    graph.nodes[3].inputs = (Ref("pool"),)
    with pytest.raises(qexact.UnsupportedError) as info:
        Net(graph, "fbgemm")
    message = str(info.value)
    assert "'pool'" in message and "'max_pool2d'" in message and "features.3" in message
    for op in ("dequantize", "flatten", "linear", "quantize", "relu", "reshape"):
        assert f"'{op}'" in message


def test_every_node_that_cannot_run_is_reported_at_once():
    """Two independent refusals in one error; a node reading a refused one is not reported."""
    graph, _ = exact_graph()
    graph.nodes.insert(2, Node("pool", "max_pool2d", (Ref("fc1"),), source="features.3"))
    graph.nodes[3].inputs = (Ref("pool"),)
    graph.nodes.append(Node("other", "cumsum", (Ref(graph.inputs[0]),), source="head.7"))
    with pytest.raises(qexact.UnsupportedError) as info:
        Net(graph, "fbgemm")
    message = str(info.value)
    assert message.startswith("2 nodes cannot run on engine 'fbgemm'")
    assert "'max_pool2d'" in message and "'cumsum'" in message and "head.7" in message
    assert f"node {graph.nodes[3].name!r}" not in message  # it reads the refused pool


def test_unknown_engine():
    graph, _ = exact_graph()
    with pytest.raises(qexact.UnsupportedError, match=r"engine 'mps' is not supported; supported: "
                                                      r"\['fbgemm', 'inductor', 'onednn', 'pt2e_eager', 'qnnpack', 'x86', "
                                                          r"'xnnpack'\]"):
        Net(graph, "mps")
    with pytest.raises(qexact.UnsupportedError, match="isa 'neon'"):
        Net(graph, "fbgemm", isa="neon")


def test_prepare_error_carries_node_name():
    graph, _ = exact_graph()
    graph.nodes[4].arrays["weight"] = graph.nodes[4].arrays["weight"][:, :5]   # 5 != 8 inputs
    net = Net(graph, "qnnpack")  # shapes are not known until run time
    with pytest.raises(qexact.ShapeError, match=r"^node 'fc2' \[linear\]: Linear \(qnnpack\) expects input of "
                                                r"shape \(\.\.\., 5\).*got \(4, 8\)"):
        net(np.zeros((4, 2, 3), np.float32))


def test_prepare_quant_param_error_carries_node_name():
    graph, _ = exact_graph()
    graph.nodes[1].attrs["output_zero_point"] = 300
    with pytest.raises(qexact.QuantParamError, match=r"^node 'fc1' \[linear\]: zero_point 300 out "
                                                     r"of range \[0, 255\] for quint8"):
        Net(graph, "x86")


def test_onednn_refuses_weight_zero_point_naming_node():
    graph, _ = exact_graph()
    graph.nodes[1].attrs["weight_zero_point"] = 3
    Net(graph, "fbgemm")  # allowed there
    with pytest.raises(qexact.QuantParamError, match=r"^node 'fc1' \[linear\]: engine 'onednn' "
                                                     r"supports only symmetric weights"):
        Net(graph, "onednn")


def test_run_error_carries_node_name_and_source():
    graph, _ = exact_graph()
    graph.nodes[3] = Node("flat", "reshape", (Ref("act"), 3, 7), source="model.view")
    net = Net(graph, "fbgemm")
    with pytest.raises(qexact.ShapeError, match=r"^node 'flat' \[reshape\] \(model: model\.view\): "
                                                r"cannot reshape an array of shape \(4, 2, 4\)"):
        net(np.zeros((4, 2, 3), np.float32))


def test_relu_of_float_input_is_torch_float_relu():
    """FX-converted models run relu in float between dequantize and quantize."""
    graph = Graph(["x"], [Node("r", "relu", (Ref("x"),))], [Ref("r")])
    x = np.float32([-1.0, -0.0, 0.0, 2.5, np.nan])
    assert_bitexact(Net(graph, "fbgemm")(x), np.float32([0.0, -0.0, 0.0, 2.5, np.nan]), "relu")


def test_dequantize_of_float_input_names_node():
    graph = Graph(["x"], [Node("d", "dequantize", (Ref("x"),))], [Ref("d")])
    with pytest.raises(qexact.QuantParamError, match=r"^node 'd' \[dequantize\]: input 0 of "
                                                     r"'dequantize' must be a quantized tensor"):
        Net(graph, "fbgemm")


def test_run_quantized_of_float_output():
    graph = Graph(["x"], [Node("i", "identity", (Ref("x"),))], [Ref("i")])
    net = Net(graph, "qnnpack")
    x = np.float32([1.5, -2.0])
    assert_bitexact(net(x), x, "identity")
    with pytest.raises(qexact.QexactError, match="output 'i' is not a quantized tensor"):
        net.run_quantized(x)


def test_multiple_outputs_and_shape_arithmetic():
    graph, _ = exact_graph()
    graph.nodes[3:4] = [
        Node("n", "size", (Ref("act"),), {"dim": 0}),
        Node("flat", "reshape", (Ref("act"), Ref("n"), -1)),
    ]
    graph.outputs = [Ref("dequant"), Ref("fc1")]
    reference = Net(exact_graph()[0], "fbgemm")
    x = exact_inputs(7)
    dequant, fc1 = Net(graph, "fbgemm")(x)
    assert_bitexact(dequant, reference(x), "view(size(0), -1) == flatten(1)")
    assert isinstance(fc1, qexact.QuantizedArray) and fc1.shape == (7, 2, 4)
