"""``qexact.save`` / ``qexact.load``: safetensors files, round trips, and hostile files.

- Round trip (torch): every engine and model of ``support.models`` gives identical outputs and
  ``net.layers`` after save -> load, including in a subprocess where torch cannot be imported.
- The file is a real safetensors file (read by the ``safetensors`` package).
- Corrupt, truncated and crafted files raise ``FormatError`` (never another exception type), and
  loading never unpickles anything.
"""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import tempfile
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qexact
from qexact import Graph, Net, Node, QParams, Ref
from qexact.dtypes import QINT8, QUINT8
from qexact.qparams import qparams_to_fields
from qexact.engines import engine_names
from support.assertions import assert_bitexact

ENGINES = engine_names()


# --- A valid file without torch ------------------------------------------------------------------


def _linear(name, source, weight, weight_qparams, bias, out_scale, out_zp, relu):
    attrs, arrays = qparams_to_fields(QParams.per_tensor(out_scale, out_zp, QUINT8), "output")
    weight_attrs, weight_arrays = qparams_to_fields(weight_qparams, "weight")
    attrs.update(weight_attrs, relu=relu)
    arrays.update(weight_arrays, weight=np.asarray(weight, np.int8))
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32)
    return Node(name, "linear", (Ref(source),), attrs, arrays, source=f"model.{name}")


def small_graph() -> Graph:
    """quantize -> linear (per-channel, relu) -> view(size(0), -1) -> linear (per-tensor) -> dequantize."""
    rng = np.random.default_rng(3)
    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(0.037, 117, QUINT8), "output")
    nodes = [
        Node("quant", "quantize", (Ref("x"),), quant_attrs, {}, source="model.quant"),
        _linear("fc1", "quant", rng.integers(-128, 128, (6, 5)),
                QParams.per_channel(rng.uniform(0.005, 0.02, 6), np.zeros(6), 0, QINT8),
                rng.standard_normal(6), 0.041, 3, relu=True),
        Node("n", "size", (Ref("fc1"),), {"dim": 0}),
        Node("flat", "reshape", (Ref("fc1"), Ref("n"), -1)),
        _linear("fc2", "flat", rng.integers(-128, 128, (4, 12)),
                QParams.per_tensor(0.011, 0, QINT8), rng.standard_normal(4), 0.093, 140, relu=False),
        Node("dequant", "dequantize", (Ref("fc2"),)),
    ]
    return Graph(["x"], nodes, [Ref("dequant")], {"source_model": "hand-built"})


def small_input(rows=20, seed=0):
    return (np.random.default_rng(seed).standard_normal((rows, 2, 5)) * 3).astype(np.float32)


@pytest.fixture(scope="module")
def valid_file():
    """(path, bytes) of a saved ``small_graph`` on qnnpack."""
    directory = tempfile.mkdtemp(prefix="qexact-serialization-")
    path = os.path.join(directory, "valid.qx")
    qexact.save(Net(small_graph(), "qnnpack"), path)
    with open(path, "rb") as file:
        return path, file.read()


def split(data: bytes):
    """(header dict, graph document, body bytes) of a qexact file."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    return header, json.loads(header["__metadata__"]["qexact"]), data[8 + length:]


def join(header: dict, body: bytes, document: dict | None = None) -> bytes:
    header = dict(header)
    if document is not None:
        header["__metadata__"] = {"qexact": json.dumps(document)}
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + body


def write(tmp_path, data: bytes, name="file.qx"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_nets_equal(loaded: Net, original: Net, x, context: str):
    assert loaded.engine.name == original.engine.name and loaded.isa == original.isa
    assert_bitexact(loaded(x), original(x), f"{context}: outputs")
    assert list(loaded.layers) == list(original.layers)
    for name, p in original.layers.items():
        q = loaded.layers[name]
        if not isinstance(p, qexact.LinearParams):
            assert type(q) is type(p)
            continue
        for field in ("weight", "weight_scale", "weight_zero_point", "bias", "float_bias",
                      "input_scale", "input_zero_point", "output_scale", "output_zero_point"):
            a, b = getattr(q, field), getattr(p, field)
            if b is None:
                assert a is None, f"{context}: {name}.{field}"
            else:
                assert_bitexact(np.asarray(a), np.asarray(b), f"{context}: {name}.{field}")
        for a, b in zip(q.multiplier, p.multiplier, strict=True):
            assert_bitexact(np.asarray(a), np.asarray(b), f"{context}: {name}.multiplier")
        assert (q.relu, q.kernel, q.bias_mode, q.engine, q.isa, q.pair_saturation) == (
            p.relu, p.kernel, p.bias_mode, p.engine, p.isa, p.pair_saturation)


# --- Round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_round_trip_hand_built(engine, tmp_path):
    net = Net(small_graph(), engine)
    qexact.save(net, tmp_path / "m.qx")
    loaded = qexact.load(tmp_path / "m.qx")
    assert_nets_equal(loaded, net, small_input(), f"hand-built on {engine}")
    assert [n.source for n in loaded.graph.nodes] == [n.source for n in net.graph.nodes]
    assert loaded.graph.metadata == {"source_model": "hand-built"}
    # Saving the loaded net again gives the same bytes.
    qexact.save(loaded, tmp_path / "again.qx")
    assert (tmp_path / "again.qx").read_bytes() == (tmp_path / "m.qx").read_bytes()


def test_load_with_another_engine(tmp_path):
    qexact.save(Net(small_graph(), "fbgemm"), tmp_path / "m.qx")
    loaded = qexact.load(tmp_path / "m.qx", engine="qnnpack")
    assert loaded.engine.name == "qnnpack"
    assert_bitexact(loaded(small_input()), Net(small_graph(), "qnnpack")(small_input()), "qnnpack")


@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
def test_round_trip_torch_models(engine, tmp_path):
    torch = pytest.importorskip("torch")
    from support.models import MODELS, build

    previous = torch.backends.quantized.engine
    try:
        for name, builder in sorted(MODELS.items()):
            model, shape = build(builder, engine)
            net = qexact.from_torch(model, engine=engine)
            path = tmp_path / f"{name}.qx"
            qexact.save(net, path)
            loaded = qexact.load(path)
            x = (np.random.default_rng(5).standard_normal((100,) + shape[1:]) * 3).astype(np.float32)
            assert_nets_equal(loaded, net, x, f"{name} on {engine}")
            assert_bitexact(loaded(x), model(torch.from_numpy(x)).numpy(), f"{name} vs torch")
            rq, oq = loaded.run_quantized(x), net.run_quantized(x)
            assert_bitexact(rq.values, oq.values, f"{name} run_quantized")
            assert rq.qparams == oq.qparams
    finally:
        torch.backends.quantized.engine = previous


@pytest.mark.torch
def test_file_is_safetensors_with_graph_json(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from support.models import build, multilayer_model

    previous = torch.backends.quantized.engine
    try:
        model, shape = build(multilayer_model, "x86")
    finally:
        torch.backends.quantized.engine = previous
    net = qexact.from_torch(model, engine="x86")
    path = tmp_path / "m.safetensors"
    qexact.save(net, path)

    tensors = safetensors_numpy.load_file(str(path))
    for name, p in net.layers.items():
        if isinstance(p, qexact.LinearParams):
            assert_bitexact(tensors[f"{name}.weight"], p.weight, f"{name}.weight in the file")
            assert_bitexact(tensors[f"{name}.bias"], p.float_bias, f"{name}.bias in the file")
            assert tensors[f"{name}.weight"].dtype == np.int8
    from safetensors import safe_open
    with safe_open(str(path), framework="np") as file:
        metadata = file.metadata()
    document = json.loads(metadata["qexact"])
    assert document["format"] == "qexact-model"
    assert document["format_version"] == 1
    assert document["engine"] == "x86"
    assert document["isa"] == net.isa == qexact.detect_isa()
    assert document["torch_version"] == torch.__version__
    assert document["qexact_version"] == qexact.__version__
    assert document["inputs"] == ["x"] and document["outputs"] == ["dequant"]
    assert [node["name"] for node in document["nodes"]] == [n.name for n in net.graph.nodes]
    assert {node["op"] for node in document["nodes"]} == {
        "quantize", "linear", "identity", "relu", "flatten", "dequantize"}


def test_safetensors_package_reads_hand_built_file(valid_file):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path, _ = valid_file
    tensors = safetensors_numpy.load_file(path)
    graph = small_graph()
    expected = {f"{node.name}.{key}": array for node in graph.nodes
                for key, array in node.arrays.items()}
    assert sorted(tensors) == sorted(expected)
    for key, array in expected.items():
        assert_bitexact(tensors[key], np.ascontiguousarray(array), key)


@pytest.mark.torch
def test_load_without_torch_in_subprocess(tmp_path):
    torch = pytest.importorskip("torch")
    from support.models import build, multilayer_view_model

    outputs = {}
    previous = torch.backends.quantized.engine
    try:
        for engine in ENGINES:
            model, shape = build(multilayer_view_model, engine)
            net = qexact.from_torch(model, engine=engine)
            qexact.save(net, tmp_path / f"{engine}.qx")
            x = (np.random.default_rng(11).standard_normal((64,) + shape[1:]) * 3).astype(np.float32)
            x[0, 0, :3] = [np.nan, np.inf, -np.inf]
            expected = net(x)
            assert_bitexact(expected, model(torch.from_numpy(x)).numpy(), f"{engine} vs torch")
            np.save(tmp_path / f"{engine}_x.npy", x)
            np.save(tmp_path / f"{engine}_expected.npy", expected)
            np.save(tmp_path / f"{engine}_q.npy", net.run_quantized(x).values)
            outputs[engine] = expected
    finally:
        torch.backends.quantized.engine = previous
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import pathlib, numpy as np, qexact\n"
        "d = pathlib.Path(sys.argv[1])\n"
        "for engine in ('fbgemm', 'x86', 'qnnpack', 'onednn'):\n"
        "    net = qexact.load(d / f'{engine}.qx')\n"
        "    assert net.engine.name == engine\n"
        "    x = np.load(d / f'{engine}_x.npy')\n"
        "    np.save(d / f'{engine}_child.npy', net(x))\n"
        "    np.save(d / f'{engine}_child_q.npy', net.run_quantized(x).values)\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None and m.split('.')[0] == 'torch']\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    for engine in ENGINES:
        assert_bitexact(np.load(tmp_path / f"{engine}_child.npy"), outputs[engine],
                        f"{engine}: child process without torch")
        assert_bitexact(np.load(tmp_path / f"{engine}_child_q.npy"),
                        np.load(tmp_path / f"{engine}_q.npy"), f"{engine}: quantized in child")


def test_load_never_unpickles(valid_file, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("load must not unpickle or np.load")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                         (np, "load")):
        monkeypatch.setattr(module, name, forbidden)
    path, data = valid_file
    net = qexact.load(path)
    assert_bitexact(net(small_input()), Net(small_graph(), "qnnpack")(small_input()), "loaded")
    # A pickle file is refused without being unpickled.
    pickled = write(tmp_path, pickle.dumps({"weight": np.zeros(3)}, protocol=4), "p.pkl")
    with pytest.raises(qexact.FormatError):
        qexact.load(pickled)
    numpy_file = tmp_path / "a.npy"
    with open(numpy_file, "wb") as file:
        np.lib.format.write_array(file, np.zeros(3), allow_pickle=False)
    with pytest.raises(qexact.FormatError):
        qexact.load(numpy_file)


# --- Corrupt and hostile files -------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(qexact.FormatError, match="cannot read"):
        qexact.load(tmp_path / "nope.qx")
    with pytest.raises(qexact.FormatError, match="cannot read"):
        qexact.load(tmp_path)  # a directory


def test_empty_and_short_files(tmp_path):
    for data in (b"", b"\x00", b"\x01" * 7):
        with pytest.raises(qexact.FormatError, match="too short"):
            qexact.load(write(tmp_path, data))


def test_truncated_at_every_offset(valid_file, tmp_path):
    _, data = valid_file
    (length,) = struct.unpack("<Q", data[:8])
    offsets = sorted(set(range(0, 8 + length + 16)) | set(range(8 + length, len(data), 7)))
    for cut in offsets:
        if cut >= len(data):
            continue
        with pytest.raises(qexact.FormatError):
            qexact.load(write(tmp_path, data[:cut]))


def test_header_length_larger_than_file(valid_file, tmp_path):
    _, data = valid_file
    for length in (len(data) - 7, len(data), 2**40, 2**64 - 1):
        with pytest.raises(qexact.FormatError, match="not a qexact model file .* or it is "
                           "truncated: its header length would be"):
            qexact.load(write(tmp_path, struct.pack("<Q", length) + data[8:]))


def test_random_bytes_and_foreign_files(tmp_path):
    rng = np.random.default_rng(0)
    for size in (8, 9, 64, 1000, 5000):
        with pytest.raises(qexact.FormatError):
            qexact.load(write(tmp_path, rng.integers(0, 256, size, dtype=np.uint8).tobytes()))
    for data in (b"\x89PNG\r\n\x1a\n" + bytes(100), b"PK\x03\x04" + bytes(100),
                 struct.pack("<Q", 2) + b"{}", struct.pack("<Q", 4) + b"null",
                 struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 3) + b"\xff\xfe{"):
        with pytest.raises(qexact.FormatError):
            qexact.load(write(tmp_path, data))


def test_files_mistaken_for_models_are_named(tmp_path):
    """A .npy input, an ExecuTorch program or a TFLite model given where a model goes: the error
    says what the file is (and for a .pte, how qexact reads it)."""
    np.save(tmp_path / "x.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(qexact.FormatError, match="is a NumPy array file"):
        qexact.load(tmp_path / "x.npy")
    for data, kind in ((b"\x1c\0\0\0ET12" + bytes(64), "an ExecuTorch program.*from_torch"),
                       (b"\x1c\0\0\0TFL3" + bytes(64), "a TensorFlow Lite model")):
        with pytest.raises(qexact.FormatError, match=kind):
            qexact.load(write(tmp_path, data))


def test_flipped_header_bytes(valid_file, tmp_path):
    """Flipping any one byte of the JSON header's structure gives a FormatError."""
    _, data = valid_file
    (length,) = struct.unpack("<Q", data[:8])
    structural = [i for i in range(8, 8 + length) if data[i:i + 1] in b'{}[]":,']
    for index in structural[::3]:
        mutated = bytearray(data)
        mutated[index] ^= 0x40
        with pytest.raises(qexact.FormatError):
            qexact.load(write(tmp_path, bytes(mutated)))


def test_safetensors_without_qexact_graph(valid_file, tmp_path):
    _, data = valid_file
    header, document, body = split(data)
    for metadata in ({}, {"qexact": "not json"}, {"other": "x"}):
        crafted = dict(header, __metadata__=metadata)
        with pytest.raises(qexact.FormatError, match="without a qexact graph"):
            qexact.load(write(tmp_path, join(crafted, body)))
    crafted = {key: value for key, value in header.items() if key != "__metadata__"}
    with pytest.raises(qexact.FormatError, match="without a qexact graph"):
        qexact.load(write(tmp_path, join(crafted, body)))


def _document_cases(document):
    """(label, document) pairs each of which must raise FormatError."""
    def changed(update):
        copy = json.loads(json.dumps(document))
        update(copy)
        return copy

    yield "format marker", changed(lambda d: d.update(format="onnx"))
    yield "no format marker", changed(lambda d: d.pop("format"))
    yield "not an object", [document]
    for version in (0, 2, 99, "1", None):
        yield f"format_version {version!r}", changed(lambda d, v=version: d.update(format_version=v))
    yield "no format_version", changed(lambda d: d.pop("format_version"))
    yield "undefined ref", changed(lambda d: d["nodes"][1].update(inputs=[{"ref": "nope"}]))
    yield "forward ref", changed(lambda d: d["nodes"][1].update(inputs=[{"ref": "dequant"}]))
    yield "self ref", changed(lambda d: d["nodes"][1].update(inputs=[{"ref": "fc1"}]))
    yield "ref not a string", changed(lambda d: d["nodes"][1].update(inputs=[{"ref": 3}]))
    yield "ref with extra keys", changed(
        lambda d: d["nodes"][1].update(inputs=[{"ref": "quant", "code": "x"}]))
    yield "undefined output", changed(lambda d: d.update(outputs=["nope"]))
    yield "nodes not a list", changed(lambda d: d.update(nodes=3))
    yield "node not an object", changed(lambda d: d["nodes"].append(3))
    yield "node name not a string", changed(lambda d: d["nodes"][1].update(name=["fc1"]))
    yield "op not a string", changed(lambda d: d["nodes"][1].update(op=None))
    yield "attrs not an object", changed(lambda d: d["nodes"][1].update(attrs=[]))
    yield "arrays not a list", changed(lambda d: d["nodes"][1].update(arrays=5))
    yield "missing node field", changed(lambda d: d["nodes"][1].pop("inputs"))
    yield "inputs missing", changed(lambda d: d.pop("inputs"))
    yield "graph inputs not a list", changed(lambda d: d.update(inputs=7))
    yield "array listed but absent", changed(lambda d: d["nodes"][1]["arrays"].append("extra"))


def test_bad_graph_documents(valid_file, tmp_path):
    _, data = valid_file
    header, document, body = split(data)
    for label, crafted in _document_cases(document):
        path = write(tmp_path, join(header, body, crafted))
        with pytest.raises(qexact.FormatError):
            try:
                qexact.load(path)
            except qexact.FormatError:
                raise
            except Exception as error:  # report which case escaped
                raise AssertionError(f"{label}: {type(error).__name__}: {error}") from None


def test_unknown_format_version_message(valid_file, tmp_path):
    _, data = valid_file
    header, document, body = split(data)
    document["format_version"] = 2
    with pytest.raises(qexact.FormatError, match="format version 2 is not supported; this qexact "
                                                 "reads version 1"):
        qexact.load(write(tmp_path, join(header, body, document)))


def _entry_cases(header, body_length):
    """(label, header) pairs whose array table is wrong; each must raise FormatError."""
    def changed(name, **update):
        copy = json.loads(json.dumps(header))
        copy[name].update(update)
        return copy

    name = "fc1.bias"  # float32 (6,)
    begin, end = header[name]["data_offsets"]
    yield "offsets out of range", changed(name, data_offsets=[body_length, body_length + 24])
    yield "end beyond body", changed(name, data_offsets=[body_length - 8, body_length + 16])
    yield "offsets reversed", changed(name, data_offsets=[end, begin])
    yield "negative offsets", changed(name, data_offsets=[-24, 0])
    yield "size mismatch", changed(name, data_offsets=[begin, end - 4])
    yield "three offsets", changed(name, data_offsets=[begin, end, end])
    yield "offsets null", changed(name, data_offsets=None)
    yield "offsets strings", changed(name, data_offsets=["a", "b"])
    yield "unknown dtype", changed(name, dtype="F16")
    yield "dtype not a string", changed(name, dtype=["F32"])
    yield "shape not a list", changed(name, shape=6)
    yield "negative shape", changed(name, shape=[-2, -3])
    yield "shape of wrong size", changed(name, shape=[7])
    yield "huge shape", changed(name, shape=[2**62, 2**62])
    yield "shape with nan", changed(name, shape=[float("nan")])
    yield "entry not an object", json.loads(json.dumps({**header, name: "F32"}))
    missing = json.loads(json.dumps(header))
    del missing[name]
    yield "array missing from the file", missing
    yield "metadata not an object", {**json.loads(json.dumps(header)), "__metadata__": [1]}


def test_bad_array_tables(valid_file, tmp_path):
    _, data = valid_file
    header, _, body = split(data)
    for label, crafted in _entry_cases(header, len(body)):
        path = write(tmp_path, join(crafted, body))
        try:
            qexact.load(path)
        except qexact.FormatError:
            continue
        except Exception as error:
            raise AssertionError(f"{label}: {type(error).__name__}: {error}") from None
        raise AssertionError(f"{label}: loaded without error")


def test_header_json_not_an_object(tmp_path, valid_file):
    _, data = valid_file
    _, _, body = split(data)
    for text in (b"[1, 2]", b"3", b'"qexact"', b"null", b"{"):
        with pytest.raises(qexact.FormatError):
            qexact.load(write(tmp_path, struct.pack("<Q", len(text)) + text + body))


# --- Crafted files whose defects surface only while nodes are prepared -------------------------


def _crafted(valid_file, tmp_path, update_document=None, update_header=None):
    _, data = valid_file
    header, document, body = split(data)
    if update_document:
        update_document(document)
    if update_header:
        update_header(header)
    return write(tmp_path, join(header, body, document))


ESCAPING_DOCUMENTS = {
    # label: mutation of the graph document (and the exception type it once escaped as)
    "attr missing (KeyError)": lambda d: d["nodes"][1]["attrs"].pop("output_dtype"),
    "scale a string (ValueError)": lambda d: d["nodes"][1]["attrs"].update(output_scale="abc"),
    "scale a list (TypeError)": lambda d: d["nodes"][1]["attrs"].update(output_scale=[1]),
    "dtype a list (TypeError)": lambda d: d["nodes"][1]["attrs"].update(output_dtype=["quint8"]),
    "axis a string (ValueError)": lambda d: d["nodes"][1]["attrs"].update(weight_axis="a"),
    "engine a list (TypeError)": lambda d: d.update(engine=["fbgemm"]),
    "node omits a required array (KeyError)": lambda d: d["nodes"][1]["arrays"].remove("weight"),
    "metadata a string (ValueError)": lambda d: d.update(metadata="ab"),
    "identity without inputs (IndexError)": lambda d: d["nodes"].insert(
        1, {"name": "i", "op": "identity", "inputs": [], "attrs": {}, "arrays": []}),
}


@pytest.mark.parametrize("label", sorted(ESCAPING_DOCUMENTS))
def test_bad_node_fields_raise_format_error(label, valid_file, tmp_path):
    path = _crafted(valid_file, tmp_path, update_document=ESCAPING_DOCUMENTS[label])
    with pytest.raises(qexact.FormatError):
        qexact.load(path)


@pytest.mark.parametrize("shape", [[10**30], [float("inf")]], ids=["1e30", "inf"])
def test_overflowing_shape_raises_format_error(shape, valid_file, tmp_path):
    path = _crafted(valid_file, tmp_path,
                    update_header=lambda h: h["fc1.bias"].update(shape=shape))
    with pytest.raises(qexact.FormatError):
        qexact.load(path)


def test_overlapping_offsets_raise_format_error(valid_file, tmp_path):
    def overlap(header):
        entries = sorted((entry["data_offsets"], name) for name, entry in header.items()
                         if name != "__metadata__")
        (begin, end), name = entries[1]
        size = end - begin
        header[name]["data_offsets"] = [0, size]       # the same bytes as the first array
    with pytest.raises(qexact.FormatError):
        qexact.load(_crafted(valid_file, tmp_path, update_header=overlap))


# --- Property: any mutation gives a Net or a QexactError ---------------------------------------

_FUZZ_DIR = tempfile.mkdtemp(prefix="qexact-fuzz-")


def _mutations():
    position = st.integers(min_value=0, max_value=10**6)
    return st.lists(st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("set"), position, st.sampled_from(b'0123456789-.e{}[]",:\x00\xff ')),
        st.tuples(st.just("truncate"), position, st.just(0)),
        st.tuples(st.just("delete"), position, st.integers(1, 16)),
        st.tuples(st.just("insert"), position, st.integers(0, 255)),
    ), min_size=1, max_size=4)


def _apply(data: bytes, mutations) -> bytes:
    data = bytearray(data)
    for kind, position, value in mutations:
        if not data:
            break
        position %= len(data)
        if kind == "flip":
            data[position] ^= value
        elif kind == "set":
            data[position] = value
        elif kind == "truncate":
            del data[position:]
        elif kind == "delete":
            del data[position:position + value]
        else:
            data.insert(position, value)
    return bytes(data)


def _load_outcome(data: bytes):
    path = os.path.join(_FUZZ_DIR, "mutated.qx")
    with open(path, "wb") as file:
        file.write(data)
    try:
        return qexact.load(path)
    except qexact.QexactError as error:
        return error


def _body_only(data: bytes, mutations):
    """Mutations confined to the array bytes (after the header)."""
    (length,) = struct.unpack("<Q", data[:8])
    start = 8 + length
    return [(kind, start + position % (len(data) - start), value)
            for kind, position, value in mutations if kind in ("flip", "set")]


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=_mutations())
def test_fuzz_array_bytes_give_net_or_qexact_error(valid_file, mutations):
    """Corrupting array bytes (weights, scales, zero points) never raises a non-qexact error."""
    _, data = valid_file
    outcome = _load_outcome(_apply(data, _body_only(data, mutations)))
    assert isinstance(outcome, (Net, qexact.QexactError)), repr(outcome)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=_mutations())
def test_fuzz_any_bytes_give_net_or_qexact_error(valid_file, mutations):
    """Any byte mutation gives a Net, or a QexactError (FormatError for structural damage)."""
    _, data = valid_file
    try:
        outcome = _load_outcome(_apply(data, mutations))
    except Exception as error:
        raise AssertionError(f"{type(error).__name__}: {error}") from None
    assert isinstance(outcome, (Net, qexact.QexactError)), repr(outcome)
