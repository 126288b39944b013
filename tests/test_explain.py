"""``explain``: the stages of one element reproduce that element, exactly, on every engine.

- For the test models (forum, multilayer with 3-D input, ReLU, flatten/view, no-bias, per-tensor)
  and every engine, random elements of every node: the last stage's ``result`` is the node's
  output element; for Linear stages the dot product equals an int64 recomputation and every
  requantization step, applied to the previous stage's result, gives the next; ``to_dict()``
  validates against ``EXPLAIN_SCHEMA``.
- A hand-made Linear (2x3) graph: the text rendering's key lines, 80 columns; markdown is a table.
- Errors: a bad index is a ``ShapeError``; an unknown layer a ``QexactError`` naming the nodes.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qexact
from qexact import Graph, Net, Node, QParams, Ref
from qexact.dtypes import QINT8, QUINT8
from qexact.explain import EXPLAIN_SCHEMA, TEXT_WIDTH
from qexact.qparams import QuantizedArray, qparams_to_fields
from qexact.engines import engine_names

jsonschema = pytest.importorskip("jsonschema")

ENGINES = engine_names()
MODEL_NAMES = ("forum", "multilayer_flatten", "multilayer_view", "per_tensor", "no_bias")


@functools.lru_cache(maxsize=None)
def imported(model_name: str, engine: str):
    """(net, input shape) of a test model converted under ``engine`` (cached per session)."""
    torch = pytest.importorskip("torch")
    from support.models import MODELS, build

    previous = torch.backends.quantized.engine
    try:
        model, shape = build(MODELS[model_name], engine)
        net = qexact.from_torch(model, engine=engine)
    finally:
        torch.backends.quantized.engine = previous
    assert net.engine.name == engine
    return net, shape


def _values(value) -> np.ndarray:
    return value.values if isinstance(value, QuantizedArray) else np.asarray(value)


def _same(a, b) -> bool:
    """Exact equality of two scalars (floats by bit pattern when both are float32)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        if a.dtype == b.dtype:
            return a.tobytes() == b.tobytes()
        return float(a) == float(b)
    return a.shape == b.shape and bool(np.all(a == b))


def check_linear_chain(net: Net, values: dict, name: str, stages, index) -> None:
    """The Linear ``name``'s stages for element ``index``: dot product = int64 recomputation,
    pair saturation = dot + lost, and every requantization step chains from the one before."""
    params = net.layers[name]
    node = net.prepared_node(name).node
    mine = [stage for stage in stages if stage.node == name]
    names = [stage.name for stage in mine]
    assert names[:2] == ["weights", "dot product"], names
    row, channel = tuple(index[:-1]), index[-1]
    x_row = values[node.inputs[0].name].values[row].astype(np.int64)
    w_row = params.weight[channel].astype(np.int64)
    z_w = np.asarray(params.weight_zero_point).reshape(-1)
    z_w = int(z_w[channel] if z_w.size > 1 else z_w[0])
    exact = int(((x_row - int(params.input_zero_point)) * (w_row - z_w)).sum())
    dot = mine[1]
    assert dot.result == exact and type(dot.result) is int
    assert np.array_equal(dot.values["x_q"], x_row)
    assert int(np.asarray(dot.values["running_sum"])[-1]) == exact
    assert list(mine[0].values["w_q"]) == list(w_row)
    rest = mine[2:]
    acc = exact
    if params.pair_saturation:
        saturation = rest[0]
        assert saturation.name.startswith("int16 pair saturation")
        assert saturation.result == exact + saturation.values["lost"]
        acc = saturation.result
        rest = rest[1:]
    else:
        assert not any("saturation" in stage.name and "pair" in stage.name for stage in rest)
    steps = params.requantization
    assert [stage.name for stage in rest] == [step.label for step in steps]
    value = np.zeros((1, params.out_features), dtype=np.int64)
    value[0, channel] = acc
    for step, stage in zip(steps, rest):
        value = step.apply(value)
        assert _same(value[0, channel], stage.result), (step.label, value[0, channel], stage.result)
    assert int(rest[-1].result) == int(_values(values[name])[index])


def linear_element_on_walk(net: Net, values: dict, name: str, index):
    """(Linear name, its element) that a walk back from (``name``, ``index``) reaches, or None:
    moves, ReLU and dequantize map one element to one element; a Linear is where it stops (its
    upstream is a whole row, walked only into a quantize)."""
    index = tuple(index)
    while True:
        node = net.prepared_node(name).node
        if node.op == "linear":
            return name, index
        source = node.inputs[0] if node.inputs else None
        if (node.op == "quantize" or not isinstance(source, Ref)
                or source.name in net.graph.inputs):
            return None
        if node.op in ("flatten", "reshape", "identity"):
            flat = int(np.ravel_multi_index(index, _values(values[name]).shape))
            index = tuple(int(i) for i in np.unravel_index(flat, _values(values[source.name]).shape))
        name = source.name


def explain_and_check(net: Net, x, name: str, index) -> None:
    values = net.run_values(x)
    explanation = net.explain(x, layer=name, index=index)
    output = _values(values[name])[index]
    assert explanation.layer == name and explanation.index == tuple(index)
    assert explanation.op == net.prepared_node(name).node.op
    assert explanation.engine == net.engine.name and explanation.isa == net.engine.isa
    last = explanation.stages[-1]
    assert last.node == name and last.result is not None
    assert _same(last.result, output), (name, index, last.result, output)
    assert _same(explanation.output, output)
    linears = {stage.node for stage in explanation.stages if stage.op == "linear"}
    reached = linear_element_on_walk(net, values, name, index)
    assert linears == ({reached[0]} if reached else set())
    if reached:
        check_linear_chain(net, values, reached[0], explanation.stages, reached[1])
    for stage in explanation.stages:
        assert stage.node in values and stage.op == net.prepared_node(stage.node).node.op
    document = explanation.to_dict()
    jsonschema.validate(document, EXPLAIN_SCHEMA)
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert json.loads(explanation.render("json")) == document
    assert document["output"] == (float(output) if np.asarray(output).dtype.kind == "f"
                                  else int(output))


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name", MODEL_NAMES)
def test_stages_reproduce_every_node_element(model_name, engine):
    net, shape = imported(model_name, engine)
    names = [node.name for node in net.graph.nodes]
    values = net.run_values(np.zeros(shape, np.float32))
    array_names = [name for name in names
                   if isinstance(values[name], (QuantizedArray, np.ndarray))]
    ops = {net.prepared_node(name).node.op for name in array_names}
    assert {"quantize", "linear", "dequantize"} <= ops

    @settings(max_examples=4)
    @given(st.data())
    def walk(data):
        seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal(shape) * data.draw(st.sampled_from([0.5, 1.0, 3.0]))
             ).astype(np.float32)
        values = net.run_values(x)
        for name in array_names:
            size = _values(values[name]).shape
            index = tuple(data.draw(st.integers(-s, s - 1), label=f"{name}[{axis}]")
                          for axis, s in enumerate(size))
            normalized = tuple(i % s for i, s in zip(index, size))
            explain_and_check(net, x, name, normalized)
        # A negative index names the same element.
        last = array_names[-1]
        size = _values(values[last]).shape
        assert net.explain(x, layer=last, index=tuple(-1 for _ in size)).index == tuple(
            s - 1 for s in size)

    walk()


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
def test_every_op_type_is_covered(engine):
    ops = set()
    for model_name in MODEL_NAMES:
        net, _ = imported(model_name, engine)
        ops |= {node.op for node in net.graph.nodes}
    assert {"quantize", "linear", "relu", "flatten", "reshape", "identity", "dequantize"} <= ops


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
def test_default_element_is_first_output_element(engine):
    net, shape = imported("forum", engine)
    x = np.random.default_rng(3).random(shape, dtype=np.float32)
    explanation = net.explain(x)
    assert explanation.layer == net.graph.outputs[0].name == "dequant"
    assert explanation.index == (0, 0)
    assert _same(explanation.output, net(x)[0, 0])
    names = [stage.name for stage in explanation.stages]
    # The walk starts at the input quantization of the row that feeds the Linear: the kernel,
    # the inverse scale, then its steps (observed on the run), the last giving the row.
    assert names[:6] == QUANTIZE_STAGES
    quantized_row = explanation.stages[5].result
    assert np.array_equal(quantized_row, net.run_values(x)["quant"].values[0])
    assert names[-4:] == DEQUANTIZE_STAGES


# --- A hand-made Linear (2x3) -------------------------------------------------------------------


def tiny_graph(bias=True) -> Graph:
    """x (B, 3) -> quantize(s=0.5, z=10) -> linear 3->2 (s_w=0.25, out s=0.25 z=20) -> dequantize."""
    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(0.5, 10, QUINT8), "output")
    attrs, arrays = qparams_to_fields(QParams.per_tensor(0.25, 20, QUINT8), "output")
    weight_attrs, weight_arrays = qparams_to_fields(QParams.per_tensor(0.25, 0, QINT8), "weight")
    attrs.update(weight_attrs, relu=False)
    arrays.update(weight_arrays, weight=np.array([[1, 2, -1], [0, -3, 2]], np.int8))
    if bias:
        arrays["bias"] = np.float32([0.5, -0.25])
    nodes = [Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
             Node("fc", "linear", (Ref("quant"),), attrs, arrays),
             Node("dequant", "dequantize", (Ref("fc"),))]
    return Graph(["x"], nodes, [Ref("dequant")])


TINY_X = np.float32([[1.0, -2.0, 3.5], [0.25, 0.0, -1.0]])
QUANTIZE_STAGES = ["quantize: kernel", "quantize: inverse scale",
                   "quantize: x * inv + z (fused, zero point before rounding)",
                   "quantize: cap below INT32_MAX (minps)",
                   "quantize: round half to even (cvtps2dq)", "quantize: output range"]
"""An 8-bit per-tensor quantize as explain shows it (engines/aten_quantize.py)."""
DEQUANTIZE_STAGES = ["dequantize: kernel", "dequantize: q - z (int32, wraps)",
                     "dequantize: to float32", "dequantize: times s"]


@pytest.mark.parametrize("engine", ENGINES)
def test_tiny_linear_text_rendering(engine):
    net = Net(tiny_graph(), engine)
    explanation = net.explain(TINY_X, index=(0, 1))
    # x_q = [12, 6, 17]; acc = (2*0) + (-4*-3) + (7*2) = 26; real = 26/8 - 0.25 = 3.0
    # -> q = 3.0 / 0.25 + 20 = 32 -> 3.0.
    assert float(explanation.output) == 3.0
    text = explanation.render("text")
    assert str(explanation) == text
    lines = text.split("\n")
    assert lines[0] == "dequant [dequantize] element [0, 1]: 3.0"
    assert lines[1] == f"engine {engine}, isa {net.engine.isa}"
    assert lines[2] == ""
    too_long = [line for line in lines if len(line) > TEXT_WIDTH]
    assert not too_long, too_long
    assert all(len(line) <= 80 for line in lines)
    assert " 1. quantize: kernel  (quant)" in lines
    assert "      kernel = FBGEMM QuantizeAvx2 (fused zero point)" in lines
    assert " 2. quantize: inverse scale  (quant)" in lines
    assert "    inv = f32(1.0f / f32(s))" in lines
    assert "      -> 2.0" in lines                                     # 1 / 0.5
    assert "      -> [12, 6, 17]" in lines                             # the quantized row
    assert any(line.endswith(". weights  (fc)") for line in lines)
    assert "      w_q = [0, -3, 2]" in lines
    assert any(line.endswith(". dot product  (fc)") for line in lines)
    assert "    acc = sum_k (x_q[k] - z_x) * (w_q[n, k] - z_w)  (exact integers)" in lines
    assert "      x_q = [12, 6, 17]" in lines
    assert "      terms = [0, 12, 14]" in lines
    assert "      running_sum = [0, 12, 26]" in lines
    assert "      -> 26" in lines
    assert any("round half to even" in line for line in lines)
    assert "      -> 32" in lines
    assert any(line.endswith(". dequantize: times s  (dequant)") for line in lines)
    assert lines[-1] == "      -> 3.0"
    pair = any(line.endswith("int16 pair saturation (vpmaddubsw)  (fc)") for line in lines)
    assert pair == (engine != "qnnpack" and net.engine.isa == "avx2")  # VNNI sums exactly
    if engine == "qnnpack":
        assert any("int32 bias" in line for line in lines)
        assert "      -> 24" in lines                                 # 26 + int32 bias -2
    else:
        assert any("bias" in line for line in lines)
    # The stages in order: quantize (6), weights, dot product, [pair saturation], the engine's
    # requantization steps, dequantize (4).
    steps = net.layers["fc"].requantization
    assert len(explanation.stages) == 6 + 2 + pair + len(steps) + 4
    names = [stage.name for stage in explanation.stages]
    assert names[:6] == QUANTIZE_STAGES and names[-4:] == DEQUANTIZE_STAGES


def test_tiny_linear_long_lines_wrap_to_80_columns():
    graph = tiny_graph()
    rng = np.random.default_rng(0)
    graph.nodes[1].arrays["weight"] = rng.integers(-128, 128, (2, 300)).astype(np.int8)
    net = Net(graph, "fbgemm", "avx2")
    x = (rng.standard_normal((2, 300)) * 20).astype(np.float32)
    text = net.explain(x, layer="fc", index=(1, 0)).render("text")
    lines = text.split("\n")
    assert max(len(line) for line in lines) <= 80
    assert any("... (300 in all)" in line for line in lines)


@pytest.mark.parametrize("engine", ENGINES)
def test_tiny_linear_markdown_is_a_table(engine):
    net = Net(tiny_graph(), engine)
    explanation = net.explain(TINY_X, index=(0, 1))
    markdown = explanation.render("markdown")
    lines = markdown.split("\n")
    assert lines[0] == "### `dequant` [dequantize] element `[0, 1]` = `3.0`"
    header = lines.index("| # | stage | node | formula | values | result |")
    assert lines[header + 1] == "|---|---|---|---|---|---|"
    rows = lines[header + 2:]
    assert len(rows) == len(explanation.stages)
    for number, (row, stage) in enumerate(zip(rows, explanation.stages), 1):
        assert row.startswith(f"| {number} | {stage.name} | `{stage.node}` |")
        assert row.endswith("|")
        # Every row has the six columns (a '|' inside a formula is escaped).
        assert row.replace("\\|", "").count("|") == 7
    assert rows[-1].endswith("| `3.0` |")


def test_tiny_linear_json_and_formats():
    net = Net(tiny_graph(bias=False), "qnnpack")
    explanation = net.explain(TINY_X, layer="fc", index=(1, 0))
    document = explanation.to_dict()
    jsonschema.validate(document, EXPLAIN_SCHEMA)
    assert document["schema"] == "qexact-explain" and document["schema_version"] == 1
    assert document["layer"] == "fc" and document["op"] == "linear"
    assert document["index"] == [1, 0]
    # x_q = [10, 10, 8] -> centered [0, 0, -2]; acc = -2*-1 = 2; 2/8 / 0.25 = 1 -> q 21.
    assert document["output"] == 21
    assert [stage["node"] for stage in document["stages"]][:6] == ["quant"] * 6
    dot = next(stage for stage in document["stages"] if stage["name"] == "dot product")
    assert dot["result"] == 2 and dot["values"]["terms"] == [0, 0, 2]
    with pytest.raises(qexact.QexactError, match="unknown format 'html'"):
        explanation.render("html")


def test_non_finite_floats_are_strings_in_json():
    net = Net(tiny_graph(), "fbgemm", "avx2")
    x = np.float32([[np.nan, np.inf, -np.inf]])
    explanation = net.explain(x, layer="fc", index=(0, 0))      # quantize stages of a whole row
    document = explanation.to_dict()
    jsonschema.validate(document, EXPLAIN_SCHEMA)
    json.dumps(document, allow_nan=False)
    stages = {stage["name"]: stage for stage in document["stages"]}
    assert stages[QUANTIZE_STAGES[2]]["result"] == ["nan", "inf", "-inf"]
    assert stages[QUANTIZE_STAGES[3]]["result"] == [2147483520.0, 2147483520.0, "-inf"]
    assert stages["quantize: output range"]["result"] == [255, 255, 0]  # NaN -> qmax


@pytest.mark.parametrize("engine", ENGINES)
def test_json_of_a_quantize_element(engine):
    net = Net(tiny_graph(), engine, "avx2")
    explanation = net.explain(TINY_X, layer="quant", index=(0, 2))
    assert explanation.stages[-1].result == 17
    document = explanation.to_dict()
    jsonschema.validate(document, EXPLAIN_SCHEMA)
    stages = {stage["name"]: stage for stage in document["stages"]}
    assert stages[QUANTIZE_STAGES[2]]["result"] == 17.0                 # fmaf(3.5, 2, 10)
    assert [stage["name"] for stage in document["stages"]] == QUANTIZE_STAGES


# --- Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [(2, 0), (0, 2), (0,), (0, 0, 0), (-3, 0), 5])
def test_bad_index_is_shape_error(index):
    net = Net(tiny_graph(), "fbgemm", "avx2")
    with pytest.raises(qexact.ShapeError, match=r"is not an element of 'dequant', whose shape is "
                                                r"\(2, 2\)"):
        net.explain(TINY_X, index=index)


def test_unknown_layer_names_the_nodes():
    net = Net(tiny_graph(), "fbgemm", "avx2")
    with pytest.raises(qexact.QexactError) as info:
        net.explain(TINY_X, layer="fc_2")
    message = str(info.value)
    assert "'fc_2'" in message
    for name in ("quant", "fc", "dequant"):
        assert f"'{name}'" in message


@pytest.mark.torch
def test_outputs_an_allowed_inexact_kernel_reaches_are_marked():
    """A GRU's tanh (MKL's vsTanh) runs only with allow_inexact; explain and inspect then mark
    the GRU and every layer its output reaches, and only those."""
    torch = pytest.importorskip("torch")
    from qexact.summary import inspect_net

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = torch.nn.GRU(4, 6), torch.nn.Linear(6, 3)

        def forward(self, x, y):
            return self.head(self.rnn(x)[0]), self.head(y)

    torch.manual_seed(0)
    model = torch.ao.quantization.quantize_dynamic(Model().eval(), {torch.nn.GRU, torch.nn.Linear})
    with pytest.raises(qexact.UnsupportedError, match=r"allow_inexact=\('tanh',\)"):
        qexact.from_torch(model, engine="fbgemm")
    net = qexact.from_torch(model, engine="fbgemm", allow_inexact=("tanh",))
    rng = np.random.default_rng(0)
    inputs = (rng.standard_normal((5, 2, 4)).astype(np.float32),
              rng.standard_normal((2, 6)).astype(np.float32))
    first, second = (node.name for node in net.graph.nodes if node.op == "linear_dynamic")
    marked = net.explain(inputs, layer=first)
    assert list(marked.inexact) == ["rnn"] and "vsTanh" in marked.inexact["rnn"]
    assert "NOT BIT-EXACT: depends on 'rnn'" in marked.render("text")
    document = marked.to_dict()
    jsonschema.validate(document, EXPLAIN_SCHEMA)
    assert document["exact"] is False
    assert net.explain(inputs, layer=second).to_dict()["exact"] is True
    reports = {report.name: report for report in inspect_net(net, inputs)}
    assert reports["rnn"].inexact and reports[first].reached_by == ("rnn",)
    assert reports[second].reached_by == () and reports[second].to_dict()["exact"]


@pytest.mark.torch
def test_a_tuple_output_names_the_nodes_to_explain_instead():
    """A GRU returns (output, h_n): explain names the getitem nodes that read it; explaining
    one of those works."""
    torch = pytest.importorskip("torch")

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNNCell(4, 6, nonlinearity="relu")
            self.gru = torch.nn.GRU(6, 5)

        def forward(self, x):
            return self.gru(self.rnn(x)[None])[0]

    torch.manual_seed(0)
    model = torch.ao.quantization.quantize_dynamic(Model().eval(),
                                                   {torch.nn.RNNCell, torch.nn.GRU})
    net = qexact.from_torch(model, engine="fbgemm", allow_inexact=("tanh",))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with pytest.raises(qexact.QexactError, match=r"'gru' \(gru\) returns a tuple.*getitem"):
        net.explain(x, layer="gru")
    reader = next(node.name for node in net.graph.nodes
                  if node.op == "getitem" and node.inputs[0] == qexact.Ref("gru"))
    assert net.explain(x, layer=reader).inexact
