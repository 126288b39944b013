"""``save``/``load``: a qexact model file is a safetensors file, with no pickle anywhere.

Layout (https://github.com/huggingface/safetensors format, written and read here with NumPy only):

    8 bytes      little-endian uint64 N: the length of the JSON header
    N bytes      JSON: {"<node>.<array>": {"dtype": "I8", "shape": [...], "data_offsets": [b, e]},
                        ..., "__metadata__": {"qexact": "<graph JSON, a string>"}}
    the rest     raw little-endian array bytes, each at [8 + N + b, 8 + N + e)

The graph JSON (``docs/format.md``): ``{"format": "qexact-model", "format_version": 1,
"engine": ..., "isa": ..., "torch_version": ..., "qexact_version": ..., "inputs": [...],
"outputs": [...], "nodes": [{"name", "op", "inputs", "attrs", "arrays", "source"}, ...]}``.
Node inputs are ``{"ref": name}`` or JSON constants (lists stand for tuples). Loading validates
every field and raises ``FormatError`` on anything unexpected; it never executes code from the file.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from ._version import __version__
from .errors import FormatError, QexactError, UnsupportedError
from .graph import Graph, Net, Node, Ref

FORMAT_NAME = "qexact-model"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPE_CODES = {"I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
                "F32": np.float32, "F64": np.float64, "BOOL": np.bool_}
_CODE_OF_DTYPE = {np.dtype(dtype): code for code, dtype in _DTYPE_CODES.items()}


def _encode_input(item):
    if isinstance(item, Ref):
        return {"ref": item.name}
    if isinstance(item, (tuple, list)):
        return [_encode_input(element) for element in item]
    if isinstance(item, slice):
        return {"slice": [item.start, item.stop, item.step]}
    if item is Ellipsis:
        return {"ellipsis": True}
    return item


def _decode_input(item):
    if isinstance(item, dict):
        if set(item) == {"slice"} and isinstance(item["slice"], list) and len(item["slice"]) == 3 \
                and all(part is None or type(part) is int for part in item["slice"]):
            return slice(*item["slice"])
        if item == {"ellipsis": True}:
            return Ellipsis
        if set(item) != {"ref"} or not isinstance(item["ref"], str):
            raise FormatError(f"bad node input {item!r}")
        return Ref(item["ref"])
    if isinstance(item, list):
        return tuple(_decode_input(element) for element in item)
    if item is None or isinstance(item, (int, float, str, bool)):
        return item
    raise FormatError(f"bad node input {item!r}")


def graph_to_json(graph: Graph, engine: str, isa: str,
                  aten_capability: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """The graph as a JSON document plus its arrays, keyed ``<node>.<array>``."""
    tensors = {}
    nodes = []
    for node in graph.nodes:
        for key, array in node.arrays.items():
            tensors[f"{node.name}.{key}"] = np.ascontiguousarray(array)
        nodes.append({"name": node.name, "op": node.op,
                      "inputs": [_encode_input(item) for item in node.inputs],
                      "attrs": node.attrs, "arrays": sorted(node.arrays), "source": node.source})
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "engine": engine,
                "isa": isa, "aten_capability": aten_capability,
                "torch_version": graph.metadata.get("torch_version"),
                "qexact_version": __version__, "metadata": graph.metadata,
                "inputs": list(graph.inputs), "outputs": [ref.name for ref in graph.outputs],
                "nodes": nodes}
    return document, tensors


def save(net: Net, path: str | os.PathLike) -> None:
    """Write ``net`` (graph, engine, isa, versions) to ``path`` as a safetensors file."""
    document, tensors = graph_to_json(net.graph, net.engine.name, net.engine.isa,
                                      net.engine.aten_capability)
    write_safetensors(path, tensors, {"qexact": json.dumps(document, sort_keys=True)})


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str]) -> None:
    """Write ``tensors`` (sorted by name, little-endian, tiling the data section) and the string
    ``metadata`` to ``path`` in the safetensors layout above."""
    header = {"__metadata__": dict(metadata)}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        code = _CODE_OF_DTYPE.get(array.dtype)
        if code is None:
            raise FormatError(f"array {name!r} has dtype {array.dtype}, which the format cannot hold")
        blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, sort_keys=True).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # align the data section to 8 bytes
    try:
        with open(path, "wb") as file:
            file.write(struct.pack("<Q", len(encoded)))
            file.write(encoded)
            for blob in blobs:
                file.write(blob)
    except OSError as error:
        raise QexactError(f"cannot write {os.fspath(path)!r}: {error.strerror}") from None


_FOREIGN_FORMATS = (
    (b"\x93NUMPY", 0, "a NumPy array file (np.save)", ""),
    (b"ET", 4, "an ExecuTorch program",
     "; import it with qexact.from_torch(path) (XNNPACK delegates; no torch needed)"),
    (b"TFL3", 4, "a TensorFlow Lite model", ""),
    (b"\x89HDF", 0, "an HDF5 file", ""),
)
"""(magic bytes, offset, what the file is, what to do) of files mistaken for models."""


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and arrays of a safetensors file, validated; ``FormatError`` on any defect."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise FormatError(f"cannot read {os.fspath(path)!r}: {error.strerror}") from None
    if len(data) < 8:
        raise FormatError(f"{os.fspath(path)!r} is too short to be a qexact model file")
    if data[:4] == b"PK\x03\x04" or (data[0] == 0x80 and 2 <= data[1] <= 5):
        kind = "a zip archive" if data[0] == 0x50 else "a Python pickle"
        raise FormatError(
            f"{os.fspath(path)!r} is {kind}, as torch.save and torch.jit.save write them, not a "
            "qexact model file. qexact never unpickles (loading a pickle can run code). Import "
            "the model in Python with net = qexact.from_torch(model, example_inputs=...) and "
            "write it with qexact.save(net, path); or give the command line a TorchScript file "
            "(torch.jit.save), which it imports with torch")
    for magic, offset, kind, hint in _FOREIGN_FORMATS:
        if data[offset:offset + len(magic)] == magic:
            raise FormatError(f"{os.fspath(path)!r} is {kind}, not a qexact model file "
                              f"(qexact.save writes those){hint}")
    (header_length,) = struct.unpack("<Q", data[:8])
    if header_length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise FormatError(f"{os.fspath(path)!r} is not a qexact model file (qexact.save writes "
                          "those; qexact.from_torch reads TorchScript, .pt2 and .pte files), or it "
                          f"is truncated: its header length would be {header_length} bytes")
    try:
        header = json.loads(data[8:8 + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FormatError(f"{os.fspath(path)!r}: header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    body = memoryview(data)[8 + header_length:]
    arrays = {}
    extents = []
    for name, entry in header.items():
        try:
            dtype = np.dtype(_DTYPE_CODES[entry["dtype"]]).newbyteorder("<")
            shape = tuple(_exact_int(size) for size in entry["shape"])
            begin, end = (_exact_int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"array entry {name!r} is malformed: {entry!r}") from None
        count = 1
        for size in shape:
            count *= size  # Python ints: no overflow
        if (any(size < 0 for size in shape) or not 0 <= begin <= end <= len(body)
                or end - begin != count * dtype.itemsize):
            raise FormatError(f"array {name!r} does not fit the file (truncated or corrupt)")
        extents.append((begin, end, name))
        arrays[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).astype(
            dtype.newbyteorder("="))
    position = 0
    for begin, end, name in sorted(extents):
        if begin != position:  # safetensors: arrays tile the data section, in order, no gaps
            raise FormatError(f"array {name!r} overlaps another or leaves a gap (corrupt file)")
        position = end
    if position != len(body):
        raise FormatError(f"{len(body) - position} unexpected bytes after the last array")
    if not isinstance(metadata, dict):
        raise FormatError("__metadata__ is not a JSON object")
    return metadata, arrays


def _exact_int(value) -> int:
    if type(value) is not int:
        raise ValueError(f"{value!r} is not an integer")
    return value


def load(path: str | os.PathLike, engine: str | None = None, isa: str | None = None,
         allow_inexact=(), backend: str | None = None) -> Net:
    """Read a model written by ``save``. ``engine``/``isa`` default to the saved ones;
    ``allow_inexact`` and ``backend`` as for ``Net``."""
    metadata, arrays = read_safetensors(path)
    try:
        document = json.loads(metadata["qexact"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise FormatError(f"{os.fspath(path)!r} is a safetensors file without a qexact graph") from None
    graph = graph_from_json(document, arrays)
    engine = engine or document.get("engine")
    isa = isa or document.get("isa")
    aten_capability = document.get("aten_capability")
    if not isinstance(engine, str) or not isinstance(isa, str) or not isinstance(
            aten_capability, (str, type(None))):
        raise FormatError(f"engine {engine!r}, isa {isa!r} and aten_capability "
                          f"{aten_capability!r} must be strings")
    try:
        return Net(graph, engine, isa, aten_capability, allow_inexact, backend)
    except (UnsupportedError, FormatError):
        raise
    except QexactError as error:
        raise FormatError(f"{os.fspath(path)!r} holds invalid parameters: {error}") from None
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as error:
        raise FormatError(f"{os.fspath(path)!r} holds a malformed node: "
                          f"{type(error).__name__}: {error}") from None


def graph_from_json(document: dict, arrays: dict[str, np.ndarray]) -> Graph:
    """Rebuild a ``Graph`` from ``graph_to_json``'s output, validating its structure."""
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise FormatError("not a qexact model (missing format marker)")
    version = document.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise FormatError(f"format version {version!r} is not supported; this qexact reads "
                          f"version {FORMAT_VERSION}")
    try:
        nodes = []
        known = set(document["inputs"])
        for entry in document["nodes"]:
            name, op = entry["name"], entry["op"]
            if not (isinstance(name, str) and isinstance(op, str) and isinstance(entry["attrs"], dict)):
                raise FormatError(f"node {entry!r} is malformed")
            inputs = tuple(_decode_input(item) for item in entry["inputs"])
            for ref in _refs(inputs):
                if ref.name not in known:
                    raise FormatError(f"node {name!r} uses {ref.name!r} before it is defined")
            node_arrays = {}
            for key in entry["arrays"]:
                full = f"{name}.{key}"
                if full not in arrays:
                    raise FormatError(f"array {full!r} is missing")
                node_arrays[key] = arrays[full]
            nodes.append(Node(name, op, inputs, dict(entry["attrs"]), node_arrays,
                              str(entry.get("source", ""))))
            known.add(name)
        outputs = [Ref(name) for name in document["outputs"]]
        for ref in outputs:
            if ref.name not in known:
                raise FormatError(f"output {ref.name!r} is not defined")
        metadata = document.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise FormatError(f"metadata must be a JSON object, got {metadata!r}")
        return Graph(list(document["inputs"]), nodes, outputs, dict(metadata))
    except (KeyError, TypeError) as error:
        raise FormatError(f"graph is malformed: missing or wrong field {error}") from None


def _refs(inputs):
    for item in inputs:
        if isinstance(item, Ref):
            yield item
        elif isinstance(item, tuple):
            yield from _refs(item)
