"""qexact.export.tables: each description kind on hand-made graphs and on the CNN test models, on
fbgemm, x86, qnnpack and onednn (and the avx2 ISA); every description applied to random inputs
must equal ``net.run_values`` bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from qexact.export.tables import (BinaryTable, Gather, UnaryTable, WindowReduce, binary_table,
                                  describe, describe_or_why, gather, unary_table, why_not,
                                  window_reduce)
from qexact.export import tables as tables_module
from qexact.graph import Graph, Net, Node, Ref
from qexact.qparams import QuantizedArray

ENGINES = ["fbgemm", "x86", "qnnpack", "onednn"]
QUICK = [pytest.param(engine, marks=() if engine in ("fbgemm", "qnnpack") else pytest.mark.slow)
         for engine in ENGINES]
"""x86 and onednn run ATen's kernels as fbgemm does: slow-marked for the hand-made graphs."""
SKIPPED_OPS = {"conv", "linear", "quantize", "dequantize"}


def quantize(name, source, scale, zero_point, dtype="quint8"):
    return Node(name, "quantize", (Ref(source),),
                {"output_dtype": dtype, "output_axis": None, "output_scale": scale,
                 "output_zero_point": zero_point})


def apply(description, arrays, out_shape) -> np.ndarray:
    """An independent application of a description (as a C port would)."""
    size = int(np.prod(out_shape))
    if isinstance(description, UnaryTable):
        x = arrays[0].reshape(-1).astype(np.int64)
        return description.table[x - description.in_min].reshape(out_shape)
    if isinstance(description, BinaryTable):
        a, b = (x.reshape(-1).astype(np.int64) for x in arrays)
        ai = np.arange(size) if description.a_index is None else description.a_index
        bi = np.arange(size) if description.b_index is None else description.b_index
        return description.table[a[ai] - description.a_min,
                                 b[bi] - description.b_min].reshape(out_shape)
    if isinstance(description, Gather):
        out = np.empty(size, np.int64)
        for i in range(size):  # the definition, element by element (small outputs only)
            k = int(description.source[i])
            v = int(arrays[k].reshape(-1)[description.index[i]])
            table = description.tables[k] if description.tables else None
            out[i] = v if table is None else table.table[v - table.in_min]
        return out.reshape(out_shape)
    assert isinstance(description, WindowReduce)
    x = arrays[0].reshape(-1).astype(np.int64)
    out = np.empty(size, np.int64)
    for i in range(size):
        taps = x[description.windows[i, :description.counts[i]]]
        assert (description.windows[i, description.counts[i]:] == -1).all()
        if description.kind == "max":
            out[i] = taps.max()
        else:
            key = int(description.divisor_key[i])
            out[i] = description.tables[key][int(taps.sum()) - description.sum_min]
    return out.reshape(out_shape)


def _plain(value):
    return np.ascontiguousarray(value.values if isinstance(value, QuantizedArray) else value)


def check_node(net, name, values, description, rng, cases=2) -> None:
    """The description on ``cases`` random model inputs equals the node's value."""
    node = net.prepared_node(name).node
    names = description.inputs if isinstance(description, Gather) else tuple(
        ref.name for ref in node.inputs if isinstance(ref, Ref)
        and isinstance(values[ref.name], QuantizedArray))
    for _ in range(cases):
        x = rng.standard_normal(np.shape(values[net.graph.inputs[0]])).astype(np.float32) * 2
        run = net.run_values(x)
        out = _plain(run[name])
        got = apply(description, [_plain(run[n]) for n in names], out.shape)
        assert np.array_equal(got, out.astype(np.int64)), name


def small_net(engine, nodes, shape, isa=None, scale=0.05, zero_point=128, dtype="quint8"):
    graph = Graph(["x"], [quantize("q", "x", scale, zero_point, dtype)] + nodes,
                  [Ref(nodes[-1].name)])
    net = Net(graph, engine, isa=isa)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 3
    return net, net.run_values(x)


# --- unary -------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype,zero_point", [("quint8", 128), ("qint8", 3)])
def test_unary_kinds(engine, dtype, zero_point):
    if engine == "qnnpack" and dtype == "qint8":
        zero_point = 0
    nodes = [Node("relu", "relu", (Ref("q"),)),
             Node("hsw", "activation", (Ref("relu"),), {"function": "hardswish",
                                                        "output_scale": 0.03,
                                                        "output_zero_point": 5}),
             Node("sig", "activation", (Ref("hsw"),), {"function": "sigmoid"}),
             Node("leaky", "activation", (Ref("q"),), {"function": "leaky_relu", "slope": 0.1,
                                                       "output_scale": 0.04,
                                                       "output_zero_point": 7}),
             Node("hsig", "activation", (Ref("leaky"),), {"function": "hardsigmoid"}),
             Node("six", "clamp", (Ref("hsig"),), {"low": 0.0, "high": 0.6})]
    net, values = small_net(engine, nodes, (1, 4, 8, 8), zero_point=zero_point, dtype=dtype)
    rng = np.random.default_rng(0)
    for node in nodes:  # 256 elements: whole SIMD units, no scalar tail
        table = unary_table(net, node.name, values)
        assert table is not None, why_not(net, node.name, values)
        assert table.table.shape == (256,) and table.in_min == (0 if dtype == "quint8" else -128)
        assert "256 input values at each of 256 positions" in table.proof
        check_node(net, node.name, values, table, rng)
    relu = unary_table(net, "relu", values).table.astype(np.int64)
    levels = np.arange(256) + (0 if dtype == "quint8" else -128)
    assert np.array_equal(relu, np.maximum(levels, zero_point))
    assert binary_table(net, "relu", values) is None and gather(net, "relu", values) is None


def test_unary_refusal_names_positions():
    """ATen's hardswish on 105 elements: the SIMD body (64) and the scalar tail round some
    inputs differently, so no one table holds: None, and why_not names the tail's positions."""
    nodes = [Node("hsw", "activation", (Ref("q"),), {"function": "hardswish",
                                                     "output_scale": 0.03,
                                                     "output_zero_point": 5})]
    net, values = small_net("fbgemm", nodes, (1, 3, 5, 7))
    assert unary_table(net, "hsw", values) is None
    reason = why_not(net, "hsw", values)
    assert reason == ""  # describe finds a Gather: one source per code path, each its table
    _, reason = tables_module._attempt(tables_module._unary, net, "hsw", values)
    assert "depends on the position" in reason and "41 positions ((0, 1, 4, 1)" in reason, reason
    moved = describe(net, "hsw", values)
    assert isinstance(moved, Gather) and moved.inputs == ("q", "q")
    assert np.array_equal(moved.index, np.arange(105))
    assert sorted(np.bincount(moved.source)) == [41, 64] and len(moved.tables) == 2
    assert "2 maps at 64 positions" in moved.proof or "2 maps at 41 positions" in moved.proof
    check_node(net, "hsw", values, moved, np.random.default_rng(11))
    relu = Node("r", "relu", (Ref("q"),))
    net, values = small_net("fbgemm", [relu], (1, 3, 5, 7))
    assert unary_table(net, "r", values) is not None  # integer-only: every position agrees


# --- binary ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", QUICK)
def test_binary_with_tail_and_broadcast(engine):
    nodes = [quantize("q2", "x", 0.07, 100),
             Node("add", "add", (Ref("q"), Ref("q2")), {"output_scale": 0.09,
                                                        "output_zero_point": 120}),
             Node("addr", "add_relu", (Ref("q2"), Ref("add")), {"output_scale": 0.05,
                                                                "output_zero_point": 90}),
             Node("pool", "adaptive_avg_pool", (Ref("q2"),), {"spatial_dims": 2,
                                                              "output_size": 1}),
             Node("mul", "mul", (Ref("addr"), Ref("pool")), {"output_scale": 0.02,
                                                            "output_zero_point": 60})]
    net, values = small_net(engine, nodes, (1, 3, 5, 7))  # 105 elements: a SIMD body and a tail
    rng = np.random.default_rng(1)
    for name in ("add", "addr", "mul"):
        table, reason = describe_or_why(net, name, values)
        assert isinstance(table, BinaryTable), reason
        assert table.table.shape == (256, 256) and (table.a_min, table.b_min) == (0, 0)
        assert "all 65,536 pairs" in table.proof
        check_node(net, name, values, table, rng)
    if engine != "qnnpack":  # ATen's add: both code paths, each pair seen at two positions
        add = binary_table(net, "add", values)
        assert "64 positions" in add.proof and "41 positions" in add.proof
    mul = binary_table(net, "mul", values)  # b (1, 3, 1, 1) over (1, 3, 5, 7)
    assert mul.a_index is None and np.array_equal(mul.b_index, np.repeat(np.arange(3), 35))
    assert "broadcasting" in mul.proof


def test_binary_qint8():
    """qint8 operands: negative outputs, tables indexed from -128."""
    nodes = [quantize("q2", "x", 0.07, -20, "qint8"),
             Node("add", "add", (Ref("q"), Ref("q2")), {"output_scale": 0.09,
                                                        "output_zero_point": 4}),
             Node("mul", "mul", (Ref("q"), Ref("q2")), {"output_scale": 0.2,
                                                        "output_zero_point": -3})]
    net, values = small_net("fbgemm", nodes, (1, 4, 8, 8), zero_point=7, dtype="qint8")
    rng = np.random.default_rng(7)
    for name in ("add", "mul"):
        table, reason = describe_or_why(net, name, values)
        assert table is not None, reason
        assert (table.a_min, table.b_min) == (-128, -128) and table.table.min() == -128
        check_node(net, name, values, table, rng)


def test_binary_refusal_names_positions():
    """fbgemm add on 105 elements with these qparams: the SIMD body (fmaf dequantize,
    ``QuantizeAvx2``) and the scalar tail give 191 and 190 for one pair of the 65,536."""
    nodes = [quantize("q2", "x", 0.140252977051332, 176),
             Node("add", "add", (Ref("q"), Ref("q2")), {"output_scale": 0.1335872624908851,
                                                        "output_zero_point": 180})]
    net, values = small_net("fbgemm", nodes, (1, 3, 5, 7), scale=0.19635871436748373,
                            zero_point=215)
    description, reason = describe_or_why(net, "add", values)
    assert description is None
    assert "code paths differ" in reason and "(245, 144)" in reason, reason
    assert "1 of 65,536 pairs differ" in reason and "41 positions ((0, 1, 4, 1)" in reason


# --- gather ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_gathers(engine):
    nodes = [quantize("q2", "x", 0.03, 10),
             Node("cl", "contiguous", (Ref("q"),), {"memory_format": "channels_last"}),
             Node("cat", "cat", (Ref("cl"), Ref("q2")), {"dim": 1, "output_scale": 0.06,
                                                        "output_zero_point": 128}),
             Node("up", "upsample", (Ref("cat"),), {"mode": "nearest", "scale_factor": 2.0}),
             Node("t", "transpose", (Ref("up"),), {"dim0": 1, "dim1": 3}),
             Node("c", "contiguous", (Ref("t"),), {"memory_format": "contiguous"}),
             Node("f", "flatten", (Ref("c"),), {"start_dim": 1, "end_dim": -1}),
             Node("r", "reshape", (Ref("f"), 2, -1)),
             Node("ch", "chunk", (Ref("cat"),), {"chunks": 2, "dim": 1}),
             Node("g", "getitem", (Ref("ch"), 1)),
             Node("s", "getitem", (Ref("up"), (slice(None), slice(1, 3)))),
             Node("i", "identity", (Ref("s"),))]
    net, values = small_net(engine, nodes, (1, 3, 4, 5))
    rng = np.random.default_rng(2)
    for node in nodes[1:]:
        if node.name == "ch":
            assert describe(net, "ch", values) is None  # a tuple: its getitems gather
            assert "tuple" in why_not(net, "ch", values) or "not one quantized" in why_not(
                net, "ch", values)
            continue
        description = gather(net, node.name, values)
        assert description is not None, why_not(net, node.name, values)
        assert description.source.dtype == np.int16 and description.index.dtype == np.int64
        check_node(net, node.name, values, description, rng, cases=1)
    cat = gather(net, "cat", values)
    assert cat.inputs == ("cl", "q2") and set(np.unique(cat.source)) == {0, 1}
    assert all(isinstance(t, UnaryTable) for t in cat.tables)  # both inputs requantized
    g = gather(net, "g", values)
    assert g.inputs == ("cat",)  # a getitem of a chunk gathers from the chunked tensor
    n, c, h, w = values["cat"].values.shape
    assert np.array_equal(g.index, np.arange(n * c * h * w).reshape(n, c, h, w)[:, c // 2:]
                          .reshape(-1))
    assert gather(net, "t", values).tables is None


def test_qnnpack_clamp_of_channels_last_is_a_gather():
    """QNNPACK's clamp reads a channels_last input in memory order into a contiguous output: no
    UnaryTable holds, a Gather through one table does (fbgemm: a UnaryTable)."""
    nodes = [Node("cl", "contiguous", (Ref("q"),), {"memory_format": "channels_last"}),
             Node("six", "clamp", (Ref("cl"),), {"low": 0.0, "high": 0.6})]
    rng = np.random.default_rng(10)
    for engine, kind in (("qnnpack", Gather), ("fbgemm", UnaryTable)):
        net, values = small_net(engine, nodes, (1, 4, 8, 8))
        description, reason = describe_or_why(net, "six", values)
        assert isinstance(description, kind), reason
        check_node(net, "six", values, description, rng)
        if kind is Gather:
            assert unary_table(net, "six", values) is None
            assert not np.array_equal(description.index, np.arange(256))
            assert description.tables[0].in_min == 0


def test_gather_refuses_bilinear():
    nodes = [Node("up", "upsample", (Ref("q"),), {"mode": "bilinear", "scale_factor": 2.0,
                                                  "align_corners": False})]
    net, values = small_net("fbgemm", nodes, (1, 2, 3, 4))
    assert describe(net, "up", values) is None
    assert why_not(net, "up", values)


# --- window reductions -------------------------------------------------------------------------


@pytest.mark.parametrize("engine", QUICK)
def test_windows(engine):
    nodes = [Node("cl", "contiguous", (Ref("q"),), {"memory_format": "channels_last"}),
             Node("mp", "max_pool", (Ref("cl"),), {"spatial_dims": 2, "kernel_size": 3,
                                                   "stride": 2, "padding": 1, "dilation": 1,
                                                   "ceil_mode": False}),
             Node("mpd", "max_pool", (Ref("q"),), {"spatial_dims": 2, "kernel_size": 2,
                                                   "stride": 1, "padding": 0, "dilation": 2,
                                                   "ceil_mode": True}),
             Node("gap", "adaptive_avg_pool", (Ref("cl"),), {"spatial_dims": 2,
                                                             "output_size": 1}),
             Node("ap", "adaptive_avg_pool", (Ref("q"),), {"spatial_dims": 2,
                                                           "output_size": [2, 3]}),
             Node("apl", "adaptive_avg_pool", (Ref("cl"),), {"spatial_dims": 2,
                                                             "output_size": [2, 3]}),
             Node("avg", "avg_pool", (Ref("q"),), {"spatial_dims": 2, "kernel_size": 2,
                                                   "stride": 2, "padding": 1,
                                                   "count_include_pad": False}),
             Node("avgc", "avg_pool", (Ref("cl"),), {"spatial_dims": 2, "kernel_size": 2,
                                                     "stride": 2, "padding": 1}),
             Node("mean", "mean", (Ref("q"),), {"dim": [2, 3], "keepdim": True}),
             Node("meancl", "mean", (Ref("cl"),), {"dim": [2, 3], "keepdim": True})]
    net, values = small_net(engine, nodes, (2, 20, 4, 6))  # 20 channels: SIMD + scalar ones
    rng = np.random.default_rng(4)
    found = {}
    for node in nodes[1:]:
        description, reason = describe_or_why(net, node.name, values)
        found[node.name] = description
        if description is None:
            assert node.name == "meancl" and engine != "qnnpack", reason
            # ATen's mean of a channels_last input: dequantize, float32 sum (SumKernel's
            # cascade), quantize: two compositions of one sum give different integers
            assert "not a function of (window sum, divisor key)" in reason, reason
            continue
        assert description.kind == ("max" if node.op == "max_pool" else "sum_table")
        check_node(net, node.name, values, description, rng, cases=1)
    gap = found["gap"]
    assert gap.windows.shape == (40, 24) and (gap.counts == 24).all()
    if engine == "fbgemm":  # ATen's NHWC kernel: 16 SIMD channels and 4 scalar ones differ
        assert len(gap.tables) == 2 and len(np.unique(gap.divisor_key[:20])) == 2
    avg = found["avg"]  # corner windows have 1 tap, edges 2, the inside 4: several keys
    assert set(np.unique(avg.counts)) == {1, 2, 4} and len(avg.tables) >= 3
    assert found["mp"].windows.shape[1] == 9 and found["mpd"].kind == "max"


def test_windows_qint8():
    """qint8 windows: sums from -128 n, tables indexed from ``sum_min``."""
    nodes = [Node("gap", "adaptive_avg_pool", (Ref("q"),), {"spatial_dims": 2,
                                                            "output_size": 1}),
             Node("mp", "max_pool", (Ref("q"),), {"spatial_dims": 2, "kernel_size": 2,
                                                  "stride": 2})]
    net, values = small_net("fbgemm", nodes, (1, 3, 4, 4), zero_point=-5, dtype="qint8")
    rng = np.random.default_rng(5)
    gap = window_reduce(net, "gap", values)
    assert gap.sum_min == 16 * -128 and gap.kind == "sum_table"
    check_node(net, "gap", values, gap, rng)
    assert gap.tables[0][0] == -128 and gap.tables[0][-1] == 127
    check_node(net, "mp", values, window_reduce(net, "mp", values), rng)


def test_overlapping_average_windows_refused():
    nodes = [Node("avg", "avg_pool", (Ref("q"),), {"spatial_dims": 2, "kernel_size": 3,
                                                   "stride": 1, "padding": 1})]
    net, values = small_net("fbgemm", nodes, (1, 2, 5, 5))
    assert window_reduce(net, "avg", values) is None
    assert "overlap" in why_not(net, "avg", values)


# --- the CNN test models -----------------------------------------------------------------------


def _check_model(model_name, engine, isa=None, cases=2):
    torch = pytest.importorskip("torch")
    import qexact
    from tests.support.cnn_models import build_cnn

    torch.set_num_threads(1)
    model, shape = build_cnn(model_name, engine)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    net = qexact.from_torch(model, example_inputs=(example,), engine=engine)
    if isa is not None:
        net = Net(net.graph, engine, isa=isa)
    values = net.run_values(example.numpy())
    rng = np.random.default_rng(6)
    kinds = {}
    for item in net._prepared:
        name, op = item.node.name, item.node.op
        if op in SKIPPED_OPS or not isinstance(values[name], QuantizedArray):
            continue
        description = describe(net, name, values)
        assert description is not None, why_not(net, name, values)
        assert description.proof
        kinds[op] = type(description).__name__
        if op != "identity" or name.endswith(".1"):  # identities: one of each kind suffices
            check_node(net, name, values, description, rng, cases)
    return kinds


EXPECTED = {"activation": "UnaryTable", "add": "BinaryTable", "add_relu": "BinaryTable",
            "mul": "BinaryTable", "cat": "Gather", "upsample": "Gather", "flatten": "Gather",
            "reshape": "Gather", "transpose": "Gather", "contiguous": "Gather",
            "getitem": "Gather", "identity": "Gather", "max_pool": "WindowReduce",
            "adaptive_avg_pool": "WindowReduce"}


@pytest.mark.torch
@pytest.mark.parametrize("model_name,engine", [("shufflenet_v2", "fbgemm"),
                                               ("detector", "qnnpack")])
def test_cnn_models_short(model_name, engine):
    kinds = _check_model(model_name, engine, cases=1)
    for op, kind in kinds.items():
        assert EXPECTED[op] == kind, op


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("isa", [None, "avx2"])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name", ["resnet", "mobilenet_v2", "mobilenet_v3",
                                        "shufflenet_v2", "detector"])
def test_cnn_models_full(model_name, engine, isa):
    if isa == "avx2" and engine == "qnnpack":
        pytest.skip("qnnpack has no avx2 ISA variant")
    kinds = _check_model(model_name, engine, isa)
    for op, kind in kinds.items():
        assert EXPECTED[op] == kind, op


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name", ["forum", "multilayer_flatten", "multilayer_view",
                                        "per_tensor", "no_bias"])
def test_linear_models(model_name, engine):
    """The Linear test models' non-GEMM nodes (relu, identity, flatten, view) on each engine."""
    torch = pytest.importorskip("torch")
    import qexact
    from tests.support.models import MODELS, build

    torch.set_num_threads(1)
    model, shape = build(MODELS[model_name], engine)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    net = qexact.from_torch(model, example_inputs=(example,), engine=engine)
    values = net.run_values(example.numpy())
    rng = np.random.default_rng(9)
    for item in net._prepared:
        name, op = item.node.name, item.node.op
        if op in SKIPPED_OPS or not isinstance(values[name], QuantizedArray):
            continue
        description, reason = describe_or_why(net, name, values)
        assert description is not None, reason
        assert type(description).__name__ == EXPECTED.get(op, "UnaryTable" if op == "relu"
                                                          else "Gather"), op
        check_node(net, name, values, description, rng)
