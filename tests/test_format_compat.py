"""Files written by qexact 0.1 still load, and compute exactly what qexact 0.1 computed.

``tests/data/v0_1`` holds model files written by qexact 0.1.0 (commit c66f8ec) with
``qexact.save``, and beside each an ``.npz`` with the inputs and 0.1's outputs on them
(``make_files.py`` there made them; it must not be re-run with a later qexact). Each file is
loaded with ``qexact.load`` and run on its stored inputs; every output must be bit-identical to
0.1's (float32 compared as bit patterns), the quantized outputs too (integers, scale, zero point).

No torch here: ``qexact.load`` runs a file without it. The engine, ISA and ATen capability come
from the file (``qexact.load`` defaults to the saved ones), so the result does not depend on the
CPU running the test. ``manifest.json`` lists every file with its engine, ISA and ATen capability.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

import qexact

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "v0_1")
FILES = sorted(name for name in os.listdir(DATA) if name.endswith(".qexact"))


def _manifest() -> dict:
    with open(os.path.join(DATA, "manifest.json"), encoding="utf-8") as file:
        return {entry["file"]: entry for entry in json.load(file)["files"]}


def _header(path: str) -> dict:
    """The graph JSON stored in the file (read directly: safetensors header, no qexact)."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    return json.loads(header["__metadata__"]["qexact"])


def _as_list(value) -> list:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (tuple, list)):
        return list(value)
    return [value]


def _assert_bits_equal(mine, stored: np.ndarray, what: str) -> None:
    mine = np.asarray(mine)
    assert mine.dtype == stored.dtype, f"{what}: dtype {mine.dtype}, 0.1 gave {stored.dtype}"
    assert mine.shape == stored.shape, f"{what}: shape {mine.shape}, 0.1 gave {stored.shape}"
    if stored.dtype == np.float32:
        mine, stored = mine.view(np.uint32), stored.view(np.uint32)
    elif stored.dtype == np.float64:
        mine, stored = mine.view(np.uint64), stored.view(np.uint64)
    differ = int(np.count_nonzero(mine != stored))
    assert differ == 0, f"{what}: {differ} of {stored.size} elements differ from qexact 0.1's"


def test_every_file_is_in_the_manifest():
    manifest = _manifest()
    assert FILES, f"no .qexact files in {DATA}"
    assert sorted(manifest) == FILES
    for name in FILES:
        assert os.path.exists(os.path.join(DATA, manifest[name]["npz"])), name


@pytest.mark.parametrize("name", FILES)
def test_v0_1_file_runs_bit_identically(name):
    path = os.path.join(DATA, name)
    entry = _manifest()[name]
    document = _header(path)
    assert (document["engine"], document["isa"], document["aten_capability"]) == (
        entry["engine"], entry["isa"], entry["aten_capability"])
    assert document["qexact_version"] == "0.1.0" and document["format_version"] == 1

    with np.load(os.path.join(DATA, entry["npz"]), allow_pickle=False) as npz:
        stored = {key: npz[key] for key in npz.files}
    inputs = [stored[f"input_{i}"] for i in range(len(entry["input_shapes"]))]
    count = len(entry["output_shapes"])

    net = qexact.load(path)  # engine, isa and aten_capability: the file's
    outputs = _as_list(net(*inputs))
    assert len(outputs) == count, f"{name}: {len(outputs)} outputs, 0.1 gave {count}"
    for index, output in enumerate(outputs):
        _assert_bits_equal(output, stored[f"output_{index}"], f"{name} output {index}")

    quantized = _as_list(net.run_quantized(*inputs))
    assert len(quantized) == count
    for index, q in enumerate(quantized):
        what = f"{name} quantized output {index}"
        _assert_bits_equal(q.values, stored[f"qoutput_{index}_values"], what)
        _assert_bits_equal(np.float64(q.scale), stored[f"qoutput_{index}_scale"], what + " scale")
        assert int(q.zero_point) == int(stored[f"qoutput_{index}_zero_point"]), what
