"""ExecuTorch ``.pte`` files (XNNPACK delegates) imported by ``capture_pte``, run on engine
``xnnpack``, against ExecuTorch's runtime bit for bit and against the PT2E import of the same
``convert_pt2e`` model; torch-free use; errors.

Models: tests/support/pt2e.py's ``PT2E_MODELS`` and tests/support/pte_models.py (``per_op:mlp``:
one delegate per op, int8 tensors passed between five delegates; ``two_kernel_calls``).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")
pytest.importorskip("executorch")

import qexact  # noqa: E402
from qexact.errors import FormatError, UnsupportedError  # noqa: E402
from qexact.importers import pte as P  # noqa: E402
from qexact.importers.pte_graph import _activation, capture_pte  # noqa: E402
from tests.support import pt2e, pte_models  # noqa: E402
from tests.support.reporting import print_counts  # noqa: E402

pytestmark = pytest.mark.torch
SEEDS_AND_SCALES = [(seed, scale) for seed in range(10, 13) for scale in (0.5, 1.0, 3.0, 8.0)]
STATS: dict = collections.defaultdict(collections.Counter)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    print_counts(request, STATS)


def _sources(name: str):
    """(.pte bytes, runtime, converted model, inputs(seed, scale))."""
    if name in pt2e.PT2E_MODELS:
        return (pt2e.executorch_program(name), pt2e.executorch_runtime(name),
                pt2e.quantized(name, "xnnpack")[0], lambda s, k: pt2e.inputs(name, s, k))
    return (pte_models.program(name), pte_models.runtime(name), pte_models.converted(name)[0],
            lambda s, k: pte_models.inputs(name, s, k))


NOT_YET = {
    "avg_pool": pytest.mark.xfail(strict=True, raises=UnsupportedError, reason=(
        "the .pte computes avg_pool2d outside XNNPACK (kernel call aten::avg_pool2d.out: "
        "XnnpackPartitioner refuses it), and capture_pte computes XNNPACK delegates only")),
    "shuffle": pytest.mark.xfail(strict=True, raises=UnsupportedError, reason=(
        "the .pte splits a float tensor outside XNNPACK (kernel call "
        "aten::split_with_sizes_copy.out, a copy), and capture_pte computes XNNPACK delegates "
        "only")),
}
EXACT_MODELS = [pytest.param(name, marks=NOT_YET.get(name, ()))
                for name in sorted(pt2e.PT2E_MODELS)] + ["per_op:mlp"]


@pytest.mark.parametrize("name", EXACT_MODELS)
def test_equals_the_runtime_and_the_pt2e_import(name):
    data, runtime, converted, inputs = _sources(name)
    graph = capture_pte(data)
    net = qexact.Net(graph, "xnnpack")
    pt2e_net = qexact.from_torch(converted, engine="xnnpack")
    for seed, scale in SEEDS_AND_SCALES:
        x = inputs(seed, scale).numpy()
        mine, theirs, imported = net(x), runtime(x), pt2e_net(x)
        STATS[f"pte {name}"].update(cases=1, elements=theirs.size)
        assert pt2e.differing(mine, theirs) == 0, f"{name} seed {seed} scale {scale}: runtime"
        assert pt2e.differing(mine, imported) == 0, f"{name} seed {seed} scale {scale}: pt2e"


def test_graph_holds_the_pt2e_weights_and_the_stored_bias():
    """small_cnn: the conv/linear weights back in OIHW / (N, K) equal the PT2E import's, the
    int32 bias is the stored one (which the engine would compute alike), no permute is needed
    (the transposes are layout tags), and the metadata."""
    data, _, converted, _ = _sources("small_cnn")
    graph = capture_pte(data)
    assert graph.metadata == {"source_model": "pte", "flow": "pt2e", "engine": "xnnpack",
                              "activation_dtypes": ["qint8"]}
    assert [n.op for n in graph.nodes] == ["quantize", "conv", "conv", "conv", "reshape",
                                           "linear", "dequantize"]
    imported = [n for n in qexact.from_torch(converted).graph.nodes if n.op in ("conv", "linear")]
    net = qexact.Net(graph, "xnnpack")
    mine = [n for n in graph.nodes if n.op in ("conv", "linear")]
    assert len(mine) == len(imported) == 4
    for node, ref in zip(mine, imported):
        assert np.array_equal(node.arrays["weight"], ref.arrays["weight"])
        assert node.arrays["weight"].dtype == np.int8
        assert np.array_equal(node.arrays["weight_scale"], ref.arrays["weight_scale"])
        for key in ("stride", "padding", "dilation", "groups", "relu", "output_scale",
                    "output_zero_point"):
            assert node.attrs.get(key) == ref.attrs.get(key), key
        if "bias" in ref.arrays:
            stored = node.arrays["quantized_bias"]
            assert stored.dtype == np.int32 and stored.shape == ref.arrays["bias"].shape
        else:
            assert "quantized_bias" not in node.arrays
    assert net.engine.name == "xnnpack"


def test_a_path_names_the_source_model(tmp_path):
    path = tmp_path / "small.pte"
    path.write_bytes(_sources("mlp")[0])
    assert capture_pte(path).metadata["source_model"] == "small.pte"
    assert capture_pte(str(path)).metadata["source_model"] == "small.pte"


def test_float_ops_are_mapped():
    """bilinear: fp32 XNNStaticResizeBilinear2D between XNNConverts becomes one upsample node
    from quantized input to quantized output, as the PT2E importer writes it (the engine's
    kernel converts, resizes in float32 and converts back); align_corners from the flags."""
    graph = capture_pte(pt2e.executorch_program("bilinear"))
    assert [n.op for n in graph.nodes] == ["quantize", "conv"] + ["upsample", "conv"] * 2 + [
        "dequantize"]
    resizes = [{key: n.attrs[key] for key in ("mode", "size", "scale_factor", "align_corners")}
               for n in graph.nodes if n.op == "upsample"]
    assert resizes == [
        {"mode": "bilinear", "size": [10, 14], "scale_factor": None, "align_corners": False},
        {"mode": "bilinear", "size": [13, 11], "scale_factor": None, "align_corners": True}]
    assert all("output_scale" in n.attrs for n in graph.nodes if n.op == "upsample")


def test_delegates_chained_by_external_id():
    """per_op:mlp: five delegates, int8 tensors between them; a qexact graph without seams."""
    prog = P.read_pte(pte_models.program("per_op:mlp"))
    assert len(prog.forward.delegates) == 5
    graph = capture_pte(pte_models.program("per_op:mlp"))
    assert [n.op for n in graph.nodes] == ["quantize", "linear", "linear", "linear",
                                           "dequantize"]


def test_torch_free(tmp_path):
    """capture_pte and Net run with torch and executorch unimportable; outputs equal the
    runtime's (saved beforehand)."""
    data, runtime, _, inputs = _sources("small_cnn")
    (tmp_path / "m.pte").write_bytes(data)
    xs = [inputs(seed, scale).numpy() for seed, scale in SEEDS_AND_SCALES[:4]]
    np.savez(tmp_path / "io.npz", x=np.stack(xs), y=np.stack([runtime(x) for x in xs]))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["executorch"] = None
        import numpy as np
        import qexact
        io = np.load({str(tmp_path / "io.npz")!r})
        net = qexact.from_torch({str(tmp_path / "m.pte")!r})  # the entry point, without torch
        for x, y in zip(io["x"], io["y"]):
            assert np.array_equal(net(x).view(np.uint32), y.view(np.uint32))
        assert sys.modules["torch"] is None
        print("ok", io["y"].size)
    """)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
    inspect = subprocess.run([sys.executable, "-m", "qexact.cli", "inspect",
                              str(tmp_path / "m.pte")], capture_output=True, text=True, env=env)
    assert inspect.returncode == 0 and "xnnpack qs8_qc8w" in inspect.stdout, inspect.stderr


# --- Errors ---------------------------------------------------------------------------------


def test_kernel_calls_are_listed_at_once():
    with pytest.raises(UnsupportedError) as info:
        capture_pte(pte_models.program("two_kernel_calls"))
    message = str(info.value)
    assert "2 part(s)" in message
    assert "instruction [1]: kernel call aten::cumsum.out" in message
    assert "instruction [3]: kernel call aten::cumsum.out" in message


def test_other_backend_is_named():
    data = _sources("mlp")[0].replace(b"XnnpackBackend", b"MysteryBackend")
    with pytest.raises(UnsupportedError, match="instruction \\[0\\]: delegate #0 of backend "
                                               "'MysteryBackend'"):
        capture_pte(data)


def _patched_node_type(data: bytes, node: int, new_type: int, old_type: int) -> bytes:
    """The .pte with XNNPACK node ``node`` of delegate 0 given union type ``new_type``."""
    buf = bytearray(data)
    prog = P.read_pte(data)
    d = prog.forward.delegates[0]
    start = prog.segment_base_offset + prog.segments[d.index][0]
    fb_off = int.from_bytes(buf[start + 10:start + 14], "little")
    fb = bytes(buf[start + fb_off:])
    table = P._Table.root(fb).tables(1)[node]
    pos = start + fb_off + table._field(0)
    assert buf[pos] == old_type
    buf[pos] = new_type
    return bytes(buf)


def test_unsupported_xnnpack_node_is_named():
    # small_cnn node 0 is XNNConvert (union type 18); XNNSigmoid (4) has the same table layout
    data = _patched_node_type(_sources("small_cnn")[0], 0, 4, 18)
    with pytest.raises(UnsupportedError) as info:
        capture_pte(data)
    message = str(info.value)
    assert "1 part(s)" in message  # the nodes after it are not reported again
    assert "instruction [0] delegate #0 node n0 XNNSigmoid: XNNPACK node XNNSigmoid is not " \
           "supported" in message


def test_fused_output_clamp_other_than_relu():
    node = SimpleNamespace(output_min=0.0, output_max=6.0)
    with pytest.raises(UnsupportedError, match="fused output clamp \\[0.0, 6.0\\]"):
        _activation(node)
    assert _activation(SimpleNamespace(output_min=0.0, output_max=float("inf"))) is True
    assert _activation(SimpleNamespace(output_min=None, output_max=None)) is False
    assert _activation(SimpleNamespace(output_min=-float("inf"),
                                       output_max=float("inf"))) is False


def test_not_a_pte_and_missing_method():
    with pytest.raises(FormatError, match="not an ExecuTorch .pte"):
        capture_pte(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match="no execution plan 'backward'"):
        capture_pte(_sources("mlp")[0], method="backward")
