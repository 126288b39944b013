"""Recordings of what PyTorch computed: reading and writing the schema of
``tests/data/recordings/avx512_vnni/README.md``. Never imports torch.

A recording is a directory: per family x engine a cell ``<family>__<engine>.json`` (params of every
stored case, and the refused / nondeterministic / crashed ones) with ``<family>__<engine>.npz``
(arrays ``<case>/<field>`` in logical order), plus ``manifest.json`` (the machine) and README.md.

Outputs of a case: the npz arrays ``y`` and ``y_*``, and the params ``out_scale`` /
``out_zero_point`` when present. A cell may list its output keys under ``outputs`` (an extension:
recordings written by qexact state it; older recordings use that default).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .family import Case

MANIFEST = "manifest.json"
OUTPUT_SCALARS = ("out_scale", "out_zero_point")
"""Params that hold an output (the output tensor's qparams as torch reports them)."""

ENV_OVERRIDES = ("FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                 "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that lower the ISA PyTorch's libraries take (recorded in the manifest)."""


def case_name(index: int) -> str:
    return f"c{index:04d}"


def cell_stem(family: str, engine: str) -> str:
    return f"{family}__{engine}"


def is_output_array(field: str) -> bool:
    return field == "y" or field.startswith("y_")


@dataclass
class RecordedCase:
    name: str
    case: Case
    """The inputs only: output arrays and output params removed."""
    expected: dict[str, Any]
    """What torch computed, keyed as ``run_torch`` returns it."""


def split_outputs(params: dict, arrays: dict[str, np.ndarray],
                  output_keys=None) -> tuple[Case, dict[str, Any]]:
    """Separate a stored case into qexact's inputs and torch's outputs."""
    def is_output(key):
        return key in output_keys if output_keys is not None else (
            is_output_array(key) or key in OUTPUT_SCALARS)

    inputs = Case({k: v for k, v in params.items() if not is_output(k)},
                  {k: v for k, v in arrays.items() if not is_output(k)})
    expected = {k: v for k, v in arrays.items() if is_output(k)}
    expected.update({k: v for k, v in params.items() if is_output(k)})
    return inputs, expected


def join_outputs(case: Case, outputs: dict[str, Any]) -> tuple[dict, dict[str, np.ndarray]]:
    """A case and torch's outputs as stored: arrays to the npz, scalars into the params."""
    params, arrays = dict(case.params), {k: np.ascontiguousarray(v) for k, v in case.arrays.items()}
    for key, value in outputs.items():
        if isinstance(value, np.ndarray):
            arrays[key] = np.ascontiguousarray(value)
            if key == "y":
                params.setdefault("out_shape", list(value.shape))
        else:
            params[key] = value.item() if isinstance(value, np.generic) else value
    return params, arrays


def cells(directory) -> list[tuple[str, str]]:
    """The (family, engine) cells of a recording, sorted by file name."""
    found = []
    for path in sorted(Path(directory).glob("*__*.json")):
        family, _, engine = path.stem.rpartition("__")
        found.append((family, engine))
    return found


def read_cell(directory, family: str, engine: str) -> tuple[dict, list[RecordedCase]]:
    """The cell's JSON and its stored cases, in case order."""
    stem = Path(directory) / cell_stem(family, engine)
    with open(stem.with_suffix(".json"), encoding="utf-8") as file:
        meta = json.load(file)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    npz_path = stem.with_suffix(".npz")
    if npz_path.exists():
        with np.load(npz_path, allow_pickle=False) as npz:
            for key in npz.files:
                name, _, field = key.partition("/")
                arrays.setdefault(name, {})[field] = npz[key]
    output_keys = set(meta["outputs"]) if "outputs" in meta else None
    recorded = []
    for name, params in meta.get("cases", {}).items():
        case, expected = split_outputs(params, arrays.get(name, {}), output_keys)
        recorded.append(RecordedCase(name, case, expected))
    return meta, recorded


def write_cell(directory, meta: dict, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    """Write a cell: ``meta`` as its JSON, ``arrays[case][field]`` as its npz."""
    stem = Path(directory) / cell_stem(meta["family"], meta["engine"])
    flat = {f"{name}/{field}": value for name, fields in arrays.items()
            for field, value in fields.items()}
    np.savez_compressed(stem.with_suffix(".npz"), **flat)
    _write_json(stem.with_suffix(".json"), meta)


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def write_manifest(directory, manifest: dict) -> None:
    _write_json(Path(directory) / MANIFEST, manifest)


def manifest_isa(manifest: dict) -> str | None:
    """The ISA qexact should emulate for this machine: ``qexact_isa`` if stated, else from the CPU
    flags (``avx512_vnni`` present: ``"avx512_vnni"``, else ``"avx2"``); None if unknown."""
    if manifest.get("qexact_isa"):
        return manifest["qexact_isa"]
    flags = manifest.get("cpu_flags")
    if flags is None:
        return None
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def manifest_aten_capability(manifest: dict) -> str | None:
    """ATen's capability on that machine: ``aten_capability`` if stated, else torch's
    ``cpu_capability`` lowered ("AVX512" -> "avx512"); None if unknown."""
    if manifest.get("aten_capability"):
        return manifest["aten_capability"]
    reported = str(manifest.get("cpu_capability") or "").lower()
    return reported if reported in ("avx512", "avx2", "default") else None


def environment_overrides() -> dict[str, str]:
    return {name: os.environ[name] for name in ENV_OVERRIDES if name in os.environ}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def write_readme(directory, manifest: dict) -> None:
    """A README for a recording: what wrote it, on what, the schema in brief, the cells."""
    lines = [
        "# PyTorch quantized CPU kernels, recorded by `qexact conformance --record`", "",
        f"torch {manifest.get('torch_version')}, ATen capability {manifest.get('cpu_capability')}, "
        f"CPU {manifest.get('cpu_model') or '?'}; qexact isa `{manifest.get('qexact_isa')}`, "
        f"aten_capability `{manifest.get('aten_capability')}`; seed {manifest.get('seed')}; "
        f"environment overrides {manifest.get('env_overrides') or 'none'}. Every torch call ran "
        "twice in a child process, with `torch.set_num_threads(num_threads)` where a case says "
        "`num_threads`, else 1.", "",
        "Schema: as `tests/data/recordings/avx512_vnni/README.md` of qexact. Per family x engine "
        "`<family>__<engine>.npz` (arrays `<case>/<field>`, C-contiguous in logical order) and "
        "`<family>__<engine>.json` (`family`, `engine`, `seed`, `generated`, `stored`, `cases` "
        "{name: params}, `refused`, `nondeterministic`, `crashes`, and `outputs`: the keys that "
        "hold torch's result). Outputs: npz `y` (and `y_*`), params `out_scale`, "
        "`out_zero_point`. Replay with `qexact conformance --replay DIR` (no torch needed).", "",
        "| family | engine | generated | stored | refused | nondeterministic | crashes |",
        "|---|---|---|---|---|---|---|"]
    for cell in manifest.get("cells", []):
        lines.append(f"| {cell['family']} | {cell['engine']} | {cell['generated']} | "
                     f"{cell['stored']} | {cell['refused']} | {cell['nondeterministic']} | "
                     f"{cell['crashes']} |")
    (Path(directory) / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_json(path, value) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, indent=1, default=_json_default)
        file.write("\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
