"""Golden directories: every intermediate of N runs, for a testbench; and ``check``, which re-runs
one (with qexact, with the exported C, or against a user's own dumped layers) and names the first
layer and element that differ, and, through ``qexact.diagnose``, the likely mistake.

A golden directory (``export_golden``) holds:

    manifest.json        what is where: engine, ISA, versions, cases; per node (execution order)
                         its op, inputs, attributes, qparams, parameters and intermediates, each
                         array with dtype, shape and sha256 (schema ``GOLDEN_FORMAT``)
    golden.safetensors   the arrays (safetensors: 8-byte LE header length, JSON header, raw LE data)
    model.qexact         the model itself (``qexact.load`` reads it without torch)
    README.md            how to read all of it

Array keys: ``input.<k>`` (the model's k-th input: float32, or integer token ids); per node
``<node>.output`` (its integers as the engine stores them, or float32), and for a GEMM layer
(Linear, Conv, ConvTranspose) ``<node>.accumulator`` (the int32 sum of (x - z_x)(w - z_w) as the
kernel forms it, before the bias) and ``<node>.biased`` (right after the bias step: int32 where the
bias enters the accumulator, float32 where it enters the float epilogue). Every such array has a
leading case axis: ``[c]`` is call ``c`` of the model. Parameters as the engine uses them:
``<node>.param.<name>`` (int8 weights, weight scales and zero points, the bias as the engine adds
it) and ``<node>.step<i>.<name>`` (the constants of requantization step ``i``; the manifest gives
each step's formula). Tensors are in logical C order (NCHW for a conv), whatever layout the kernel
computes in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._version import __version__
from ..errors import DTypeError, FormatError, QexactError, ShapeError
from ..graph import Net, Ref
from ..jsonable import JsonDocument
from ..qparams import QParams, QuantizedArray
from ..serialization import load, read_safetensors, save, write_safetensors
from ..trace import tap

GOLDEN_FORMAT = "qexact-golden"
GOLDEN_VERSION = 1
ARRAYS_FILE = "golden.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.qexact"
README_FILE = "README.md"
INTERMEDIATES = ("accumulator", "biased")
"""What a GEMM layer's run reports (``qexact.trace.tap``) besides its output."""

Progress = Callable[[int, int, str], None]


# --- Export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GoldenExport:
    """What ``export_golden`` wrote: the directory, cases, nodes and arrays (count and bytes)."""

    directory: Path
    cases: int
    nodes: int
    arrays: int
    bytes: int


def as_cases(net: Net, inputs) -> list[tuple[np.ndarray, ...]]:
    """The calls of a golden directory from ``inputs``: a list of calls (each a tuple of arrays,
    one per model input, or one array), or, for ``stacked`` arrays (one per model input, the
    first axis indexing the calls) a tuple/array -> calls."""
    count = len(net.graph.inputs)
    if isinstance(inputs, np.ndarray) or (isinstance(inputs, tuple) and inputs
                                          and all(isinstance(a, np.ndarray) for a in inputs)):
        stacked = (inputs,) if isinstance(inputs, np.ndarray) else inputs
        if len(stacked) != count:
            raise ShapeError(f"the model takes {count} input(s), got {len(stacked)} arrays")
        sizes = {array.shape[0] if array.ndim else -1 for array in stacked}
        if len(sizes) != 1 or -1 in sizes:
            raise ShapeError("each input array's first axis indexes the calls; they must agree, "
                             f"got first axes {sorted(sizes)}")
        return [tuple(np.asarray(array[c]) for array in stacked) for c in range(sizes.pop())]
    cases = []
    for case in inputs:
        case = tuple(case) if isinstance(case, (tuple, list)) else (case,)
        if len(case) != count:
            raise ShapeError(f"the model takes {count} input(s), a call has {len(case)}")
        cases.append(tuple(np.asarray(item) for item in case))
    if not cases:
        raise ShapeError("no inputs: a golden directory needs at least one call")
    return cases


def export_golden(net: Net, inputs, out_dir: str | os.PathLike, *,
                  progress: Progress | None = None) -> GoldenExport:
    """Run ``net`` on every call of ``inputs`` (see ``as_cases``) and write a golden directory to
    ``out_dir`` (created if missing)."""
    cases = as_cases(net, inputs)
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise QexactError(f"cannot create {os.fspath(directory)!r}: {error.strerror}") from None
    per_case: list[dict[str, np.ndarray]] = []
    for number, case in enumerate(cases):
        if progress:
            progress(number, len(cases), "running the model")
        try:
            per_case.append(_run_case(net, case))
        except DTypeError:
            raise
        except ShapeError as error:  # most often a stacked input given without its calls axis
            shapes = ", ".join(str(tuple(np.shape(item))) for item in case)
            raise ShapeError(f"call {number} (input shape {shapes}): {error}. Inputs stack the "
                             "calls along their first axis: for one call of x, give x[None]") \
                from None
    if progress:
        progress(len(cases), len(cases), "writing")
    keys = list(per_case[0])
    for number, arrays in enumerate(per_case[1:], 1):
        if list(arrays) != keys or any(arrays[k].shape != per_case[0][k].shape for k in keys):
            raise ShapeError(f"call {number} gives other shapes than call 0; a golden directory "
                             "holds calls of one shape")
    tensors = {key: np.stack([arrays[key] for arrays in per_case]) for key in keys}
    tensors.update(_parameters(net))
    manifest = _manifest(net, cases, tensors)
    write_safetensors(directory / ARRAYS_FILE, tensors, {"qexact-golden": "see manifest.json"})
    save(net, directory / MODEL_FILE)
    manifest["files"] = {name: _sha256_file(directory / name) for name in (ARRAYS_FILE, MODEL_FILE)}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (directory / README_FILE).write_text(_readme(manifest), encoding="utf-8")
    return GoldenExport(directory, len(cases), len(manifest["nodes"]), len(tensors),
                        sum(array.nbytes for array in tensors.values()))


def _run_case(net: Net, case: tuple) -> dict[str, np.ndarray]:
    """The model's inputs and every tensor a node computes (and a GEMM layer's intermediates),
    for one call, by array key."""
    arrays = {f"input.{k}": np.ascontiguousarray(value) for k, value in enumerate(case)}
    values = net.run_values(*case)
    for item in net._prepared:
        name = item.node.name
        for suffix, array in tensors_of(values[name]):
            arrays[f"{name}.output{suffix}"] = array
        if hasattr(item.params, "requantization"):
            arguments = [values[ref.name] if isinstance(ref, Ref) else ref
                         for ref in item.node.inputs]
            with tap() as taps:
                again = item.definition.run(item.params, arguments)
            if not np.array_equal(_plain(again), _plain(values[name])):
                raise QexactError(f"node {name!r}: a second run gave another output")
            for kind in INTERMEDIATES:
                if kind in taps:
                    arrays[f"{name}.{kind}"] = np.ascontiguousarray(taps[kind])
    return arrays


def _plain(value) -> np.ndarray:
    return value.values if isinstance(value, QuantizedArray) else np.asarray(value)


def tensors_of(value, suffix: str = ""):
    """``(key suffix, array)`` for each tensor in a node's value (a tuple's items numbered:
    ``.0``, ``.1``; the C export names its buffers so too); nothing for values that are not
    tensors (shapes, Python numbers, None)."""
    if isinstance(value, QuantizedArray):
        yield suffix, np.ascontiguousarray(value.values)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and value.ndim:
        yield suffix, np.ascontiguousarray(value)
    elif isinstance(value, (tuple, list)):
        for position, item in enumerate(value):
            yield from tensors_of(item, f"{suffix}.{position}")


def _parameters(net: Net) -> dict[str, np.ndarray]:
    """Each node's parameters as its engine uses them (see the module docstring)."""
    tensors: dict[str, np.ndarray] = {}
    for item in net._prepared:
        name, params = item.node.name, item.params
        if hasattr(params, "requantization"):
            tensors[f"{name}.param.weight"] = params.weight
            weight = params.weight_qparams
            tensors[f"{name}.param.weight_scale"] = np.atleast_1d(
                np.asarray(weight.scale, dtype=np.float64))
            tensors[f"{name}.param.weight_zero_point"] = np.atleast_1d(
                np.asarray(weight.zero_point, dtype=np.int64))
            bias = getattr(params, "bias", getattr(params, "float_bias", None))
            if bias is not None:
                tensors[f"{name}.param.bias"] = np.asarray(bias)
            for number, step in enumerate(params.requantization):
                for constant, value in step.constants().items():
                    tensors[f"{name}.step{number}.{constant}"] = np.atleast_1d(np.asarray(value))
        else:
            for array_name, array in item.node.arrays.items():
                tensors[f"{name}.param.{array_name}"] = np.asarray(array)
    return tensors


def _manifest(net: Net, cases: list, tensors: dict[str, np.ndarray]) -> dict:
    entries = {key: {"dtype": str(array.dtype), "shape": list(array.shape),
                     "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
               for key, array in tensors.items()}
    nodes = []
    for item in net._prepared:
        node, params = item.node, item.params
        prefix = f"{node.name}."
        entry = {"name": node.name, "op": node.op, "source": node.source,
                 "inputs": [_input_key(ref, net) for ref in node.inputs],
                 "attrs": node.attrs,
                 "output_qparams": None if item.output_qparams is None
                 else item.output_qparams.to_dict(),
                 "arrays": sorted(key for key in tensors if key.startswith(prefix))}
        if hasattr(params, "requantization"):
            if getattr(params, "input_qparams", None) is not None:
                entry["input_qparams"] = params.input_qparams.to_dict()
            mode = getattr(params, "bias_mode", None)
            entry["bias_mode"] = "float32" if mode is None else getattr(mode, "value", str(mode))
            entry["pair_saturation"] = bool(getattr(params, "pair_saturation", False))
            entry["kernel"] = getattr(params, "kernel", "")
            entry["steps"] = [_step_entry(step, number, node.name)
                              for number, step in enumerate(params.requantization)]
        nodes.append(entry)
    return {"format": GOLDEN_FORMAT, "format_version": GOLDEN_VERSION,
            "engine": net.engine.name, "isa": net.engine.isa,
            "aten_capability": net.engine.aten_capability,
            "qexact_version": __version__,
            "torch_version": net.graph.metadata.get("torch_version"),
            "numpy_version": np.__version__, "machine": platform.machine(),
            "cases": len(cases),
            "inputs": [{"name": name, "key": f"input.{k}"}
                       for k, name in enumerate(net.graph.inputs)],
            "outputs": [_input_key(ref, net) for ref in net.graph.outputs],
            "nodes": nodes, "arrays": entries}


def _input_key(item, net: Net):
    if isinstance(item, Ref):
        if item.name in net.graph.inputs:
            return {"array": f"input.{net.graph.inputs.index(item.name)}"}
        return {"array": f"{item.name}.output", "node": item.name}
    if isinstance(item, (tuple, list)):
        return [_input_key(element, net) for element in item]
    if isinstance(item, (slice, type(Ellipsis))):
        return repr(item)
    return item


def _step_entry(step, number: int, node: str) -> dict:
    scalars = {}
    for item in dataclasses.fields(step):
        value = getattr(step, item.name)
        if item.name not in ("label", "role") and isinstance(value, (bool, int, float, str)):
            scalars[item.name] = value
    return {"index": number, "type": type(step).__name__, "label": step.label,
            "role": step.role, "formula": step.formula,
            "constants": {name: f"{node}.step{number}.{name}" for name in step.constants()},
            "fields": scalars}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _readme(manifest: dict) -> str:
    gemm = [node["name"] for node in manifest["nodes"] if "steps" in node]
    return f"""# Golden vectors (qexact {manifest['qexact_version']})

Engine `{manifest['engine']}` on ISA `{manifest['isa']}`; {manifest['cases']} call(s) of the
model; {len(manifest['nodes'])} nodes, {len(gemm)} of them GEMM layers (Linear/Conv).

- `golden.safetensors`: every array. Safetensors layout: 8 bytes little-endian header length
  N, N bytes of JSON (`{{"key": {{"dtype", "shape", "data_offsets": [begin, end]}}}}`), then
  the raw little-endian data (offsets relative to its start). Python: `safetensors.numpy.
  load_file`, or `qexact.export.golden.read_golden(DIR)`; C: `model_main --golden DIR`.
- `manifest.json`: what each array is (dtype, shape, sha256), each node's op, inputs,
  attributes and qparams, and for a GEMM layer its requantization steps with their formulas.
- `model.qexact`: the model (`qexact.load("model.qexact")`, no torch needed).

Keys (the first axis of every per-call array is the call):
- `input.<k>`: the model's k-th input (float32, or int64 token ids).
- `<node>.output`: the node's result: its integers (uint8/int8/int32, with `output_qparams`:
  real = scale * (q - zero_point)) or float32. Node names are those of `qexact layers`.
- `<node>.accumulator` (GEMM layers): int32 sum over the layer's window of (x - z_x)(w - z_w),
  as the kernel forms it (including int16 pair saturation where the kernel saturates), before
  the bias; laid out as the output (NCHW for a conv).
- `<node>.biased` (GEMM layers with a bias): the value right after the bias step: int32 where the
  engine adds an int32 bias to the accumulator, float32 where it adds the bias in the epilogue.
- `<node>.param.*`: the weights (int8), weight scales and zero points, the bias as the engine
  adds it; `<node>.step<i>.*`: the constants of requantization step i (manifest: `steps`).

A node's inputs are other nodes' `.output` arrays (manifest: `inputs`). Check your own
implementation's layers against this directory with `qexact check DIR --theirs THEIRS` (THEIRS:
one `<node>.npy` per layer), or the exported C with `qexact check DIR --c BUILD`.
"""


# --- Reading and checking ----------------------------------------------------------------------


@dataclass(frozen=True)
class Golden:
    """A golden directory read back: its manifest, arrays, and the model prepared as recorded."""

    directory: Path
    manifest: dict
    arrays: dict[str, np.ndarray]
    net: Net

    @property
    def cases(self) -> list[tuple[np.ndarray, ...]]:
        keys = [entry["key"] for entry in self.manifest["inputs"]]
        return [tuple(self.arrays[key][c] for key in keys) for c in range(self.manifest["cases"])]

    def node_arrays(self, name: str) -> dict[str, np.ndarray]:
        """``kind -> array`` (``output``, ``accumulator``, ...) of node ``name``'s per-call
        intermediates."""
        prefix = f"{name}."
        return {key[len(prefix):]: array for key, array in self.arrays.items()
                if key.startswith(prefix) and not key[len(prefix):].startswith(("param.", "step"))}


def read_golden(directory: str | os.PathLike, *, verify: bool = True) -> Golden:
    """Read a golden directory; with ``verify``, every file's and array's sha256 is checked
    (``FormatError`` naming what changed)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except OSError as error:
        raise FormatError(f"{os.fspath(directory)!r} is not a golden directory: "
                          f"{MANIFEST_FILE}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise FormatError(f"{MANIFEST_FILE} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != GOLDEN_FORMAT:
        raise FormatError(f"{MANIFEST_FILE} is not a {GOLDEN_FORMAT} manifest")
    if manifest.get("format_version", 0) > GOLDEN_VERSION:
        raise FormatError(f"golden format version {manifest.get('format_version')} is newer "
                          f"than this qexact reads ({GOLDEN_VERSION}); upgrade qexact")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            if _sha256_file(directory / name) != digest:
                raise FormatError(f"{name} does not match its sha256 in {MANIFEST_FILE} "
                                  "(changed after export)")
    _, arrays = read_safetensors(directory / ARRAYS_FILE)
    for key, entry in manifest["arrays"].items():
        array = arrays.get(key)
        if array is None or str(array.dtype) != entry["dtype"] or \
                list(array.shape) != entry["shape"]:
            raise FormatError(f"array {key!r} is missing or differs from the manifest")
        if verify and hashlib.sha256(array.tobytes()).hexdigest() != entry["sha256"]:
            raise FormatError(f"array {key!r} does not match its sha256 in {MANIFEST_FILE}")
    net = load(directory / MODEL_FILE, engine=manifest["engine"], isa=manifest["isa"])
    return Golden(directory, manifest, arrays, net)


@dataclass(frozen=True)
class LayerCheck:
    """One node's comparison: ``kind`` (output, accumulator, biased) -> differing elements."""

    name: str
    op: str
    compared: dict[str, int]
    differing: dict[str, int]
    first: tuple | None = None
    """``(kind, call, index, theirs, exact)`` of the first differing element (C order)."""
    missing: bool = False

    @property
    def equal(self) -> bool:
        return not self.missing and not any(self.differing.values())


@dataclass(frozen=True)
class CheckReport(JsonDocument):
    """``check_golden``'s result: every node's comparison in execution order, the first differing
    layer (and its diagnosis, where a diagnosis applies)."""

    directory: str
    against: str
    engine: str
    isa: str
    cases: int
    layers: list[LayerCheck]
    diagnosis: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def first_difference(self) -> LayerCheck | None:
        return next((layer for layer in self.layers if not layer.missing and not layer.equal),
                    None)

    @property
    def equal(self) -> bool:
        return self.first_difference is None and any(not layer.missing for layer in self.layers)

    def to_dict(self) -> dict:
        first = self.first_difference
        return {"schema": "qexact-check", "schema_version": 1, "directory": self.directory,
                "against": self.against, "engine": self.engine, "isa": self.isa,
                "cases": self.cases, "equal": self.equal,
                "first_difference": None if first is None else _first_json(first),
                "layers": [{"name": layer.name, "op": layer.op, "missing": layer.missing,
                            "compared": layer.compared, "differing": layer.differing,
                            "equal": layer.equal} for layer in self.layers],
                "diagnosis": None if self.diagnosis is None else self.diagnosis.to_dict(),
                "notes": list(self.notes)}

    def render(self, format: str = "text") -> str:
        if format == "json":
            return self.to_json(indent=1)
        lines = [f"check {self.directory} against {self.against} (engine {self.engine}, isa "
                 f"{self.isa}, {self.cases} call(s))"]
        for layer in self.layers:
            if layer.missing:
                status = "not given"
            elif layer.equal:
                status = "bit-exact (" + ", ".join(f"{kind} {count:,}" for kind, count in
                                                   layer.compared.items()) + " elements)"
            else:
                status = "DIFFERS (" + ", ".join(
                    f"{kind} {layer.differing[kind]:,} of {count:,}"
                    for kind, count in layer.compared.items() if layer.differing[kind]) + ")"
            lines.append(f"  {layer.name} [{layer.op}]: {status}")
        first = self.first_difference
        if first is None:
            lines.append("every layer compared is bit-exact" if self.equal else
                         "no layer was compared")
        else:
            kind, call, index, theirs, exact = first.first
            lines += ["", f"first difference: layer {first.name!r} [{first.op}], {kind} of call "
                      f"{call}, element {list(index)}: yours {theirs}, exact {exact}"]
            if self.diagnosis is not None:
                lines += ["", self.diagnosis.render("text")]
        lines += self.notes
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _first_json(layer: LayerCheck) -> dict:
    kind, call, index, theirs, exact = layer.first
    return {"layer": layer.name, "op": layer.op, "kind": kind, "call": call,
            "index": list(index), "theirs": _scalar(theirs), "exact": _scalar(exact)}


def _scalar(value):
    value = np.asarray(value)[()]
    return value.item() if hasattr(value, "item") else value


def check_golden(directory: str | os.PathLike, *, theirs: str | os.PathLike | None = None,
                 c_build: str | os.PathLike | None = None, diagnose: bool = True,
                 progress: Progress | None = None) -> CheckReport:
    """Compare a golden directory with qexact's run of today (default), with the layers a user
    dumped (``theirs``: a directory of ``<node>.npy``, each (calls, *shape) or, for one call,
    the layer's shape; integers or floats), or with the exported C (``c_build``: the directory
    holding ``model_main``). The first differing layer is diagnosed (``qexact.diagnose``, given
    that layer's exact input) where ``diagnose``."""
    golden = read_golden(directory)
    if theirs is not None and c_build is not None:
        raise QexactError("compare with --theirs or with --c, not both")
    notes: list[str] = []
    if c_build is not None:
        against = f"the C build in {os.fspath(c_build)}"
        provided = _run_c(golden, Path(c_build), progress)
    elif theirs is not None:
        against = f"your layers in {os.fspath(theirs)}"
        provided, unknown = _read_theirs(golden, Path(theirs))
        if unknown:
            notes.append(f"not a node of this model (ignored): {', '.join(sorted(unknown))}")
    else:
        against = f"qexact {__version__}"
        provided = _run_qexact(golden, progress)
    layers = [_compare_node(golden, node, provided) for node in golden.manifest["nodes"]
              if golden.node_arrays(node["name"])]
    report = CheckReport(os.fspath(directory), against, golden.manifest["engine"],
                         golden.manifest["isa"], golden.manifest["cases"], layers, None, notes)
    first = report.first_difference
    if diagnose and first is not None and first.first[0] == "output":
        report = dataclasses.replace(report, diagnosis=_diagnose(golden, first, provided))
    return report


def _run_qexact(golden: Golden, progress: Progress | None) -> dict[str, np.ndarray]:
    runs = []
    cases = golden.cases
    for number, case in enumerate(cases):
        if progress:
            progress(number, len(cases), "running qexact")
        runs.append(_run_case(golden.net, case))
    if progress:
        progress(len(cases), len(cases), "comparing")
    return {key: np.stack([run[key] for run in runs]) for key in runs[0]}


def _read_theirs(golden: Golden, folder: Path) -> tuple[dict[str, np.ndarray], set[str]]:
    if not folder.is_dir():
        raise QexactError(f"--theirs {os.fspath(folder)!r} is not a directory of <node>.npy files")
    names = {node["name"] for node in golden.manifest["nodes"]}
    provided, unknown = {}, set()
    for path in sorted(folder.glob("*.npy")):
        name = path.stem
        if name not in names:
            unknown.add(name)
            continue
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise QexactError(f"cannot read {os.fspath(path)!r} as .npy: {error}") from None
        exact = golden.arrays.get(f"{name}.output")
        if exact is not None and array.shape == exact.shape[1:] and golden.manifest["cases"] == 1:
            array = array[None]
        provided[f"{name}.output"] = array
    if not provided:
        found = ", ".join(sorted(path.name for path in folder.glob("*.npy"))[:8]) or "none"
        raise QexactError(
            f"no file in {os.fspath(folder)!r} names a layer of this model: give one "
            f"<layer>.npy per layer you dumped, of {[n['name'] for n in golden.manifest['nodes']]} "
            f"(.npy files found: {found})")
    return provided, unknown


def _run_c(golden: Golden, build: Path, progress: Progress | None) -> dict[str, np.ndarray]:
    """Each call through ``build/model_main --dump-layers IN.bin OUTDIR``; every node's output
    read back (raw little-endian, the golden array's dtype and shape)."""
    program = build / "model_main"
    if not program.exists():
        raise QexactError(f"no model_main in {os.fspath(build)!r}: build it with make -C "
                          f"{os.fspath(build)}")
    if len(golden.manifest["inputs"]) != 1:
        raise QexactError("the exported C takes one input; this model takes "
                          f"{len(golden.manifest['inputs'])}")
    outputs: dict[str, list[np.ndarray]] = {}
    cases = golden.cases
    with tempfile.TemporaryDirectory(prefix="qexact-check-") as scratch:
        for number, case in enumerate(cases):
            if progress:
                progress(number, len(cases), "running the C build")
            given = Path(scratch) / "input.bin"
            np.ascontiguousarray(case[0], dtype="<f4").tofile(given)
            dump = Path(scratch) / f"call{number}"
            dump.mkdir()
            result = subprocess.run([os.fspath(program), "--dump-layers", os.fspath(given),
                                     os.fspath(dump)], capture_output=True, text=True)
            if result.returncode != 0:
                raise QexactError(f"model_main failed on call {number} (exit "
                                  f"{result.returncode}): {result.stderr.strip()[:500]}")
            for node in golden.manifest["nodes"]:
                # model_main names a tuple's pieces <node>.<k>.bin (golden: <node>.output.<k>)
                for kind, exact in golden.node_arrays(node["name"]).items():
                    if not kind.startswith("output"):
                        continue
                    path = dump / f"{node['name']}{kind[len('output'):]}.bin"
                    if not path.exists():
                        continue
                    raw = np.fromfile(path, dtype=exact.dtype.newbyteorder("<"))
                    if raw.size != exact[0].size:
                        raise QexactError(f"model_main wrote {raw.size} values for "
                                          f"{path.name!r}; the golden array has {exact[0].size}")
                    outputs.setdefault(f"{node['name']}.{kind}", []).append(
                        raw.astype(exact.dtype).reshape(exact.shape[1:]))
    return {key: np.stack(arrays) for key, arrays in outputs.items()
            if len(arrays) == len(cases)}


def _compare_node(golden: Golden, node: dict, provided: dict[str, np.ndarray]) -> LayerCheck:
    name = node["name"]
    compared, differing, first = {}, {}, None
    for kind, exact in golden.node_arrays(name).items():
        theirs = provided.get(f"{name}.{kind}")
        if theirs is None:
            continue
        theirs = np.asarray(theirs)
        if theirs.shape != exact.shape:
            raise ShapeError(f"your {name!r} ({kind}) has shape {theirs.shape[1:]} per call; "
                             f"the exact one has {exact.shape[1:]}")
        differs = ~_same(theirs, exact, node.get("output_qparams"))
        compared[kind], differing[kind] = int(exact.size), int(differs.sum())
        if first is None and differs.any():
            position = tuple(int(i) for i in np.argwhere(differs)[0])
            first = (kind, position[0], position[1:], theirs[position], exact[position])
    return LayerCheck(name, node["op"], compared, differing, first, missing=not compared)


def _same(theirs: np.ndarray, exact: np.ndarray, qparams: dict | None) -> np.ndarray:
    """Elementwise equality: integers by value; floats by bit pattern; a user's floats against a
    quantized layer by value against its dequantized integers (float32 ``s * (q - z)``)."""
    if theirs.dtype.kind == "f" and exact.dtype.kind in "iu":
        if qparams is None or "axis" in qparams:
            return np.zeros(exact.shape, dtype=bool)
        real = np.float32(qparams["scale"]) * (exact.astype(np.float32)
                                               - np.float32(qparams["zero_point"]))
        return theirs.astype(np.float32) == real
    if exact.dtype.kind == "f":
        theirs = theirs.astype(exact.dtype)
        same = theirs.view(f"u{exact.dtype.itemsize}") == exact.view(f"u{exact.dtype.itemsize}")
        return same | (np.isnan(theirs) & np.isnan(exact))
    return theirs.astype(np.int64) == exact.astype(np.int64)


def _diagnose(golden: Golden, first: LayerCheck, provided: dict[str, np.ndarray]):
    """``qexact.diagnose`` of the first differing layer's output, on the call that differs first
    (given that layer's exact input); None where no diagnosis applies."""
    from ..diagnose import diagnose

    _, call, _, _, _ = first.first
    theirs = provided[f"{first.name}.output"][call]
    try:
        return diagnose(golden.net, golden.cases[call], theirs, layer=first.name)
    except QexactError:
        return None


__all__ = ["export_golden", "read_golden", "check_golden", "tensors_of", "Golden", "GoldenExport",
           "CheckReport", "LayerCheck", "as_cases"]
