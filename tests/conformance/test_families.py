"""Every conformance family, both ways:

- live: a few drawn cases per family x engine x profile: PyTorch in a child process (a crash
  fails nothing but must be a case qexact refuses), qexact on this host's ISA, compared exactly;
- replay: every case of ``tests/data/recordings/avx512_vnni`` (PyTorch 2.13.0 on an AVX512-VNNI
  CPU) through qexact with that machine's ISA and ATen capability, on any host, without torch;
  and every case PyTorch left undefined there (crashed, or two calls differed) is refused;
- replay of ``tests/data/recordings/avx2_lowered`` (the same PyTorch on the same host with
  FBGEMM, oneDNN, ATen and MKL lowered to AVX2 by environment) through qexact on isa ``avx2``
  and ATen capability ``avx2``: the AVX2 paths, checked from any CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qexact.conformance import FAMILIES, Case
from qexact.conformance.family import compare_outputs
from qexact.conformance.recording import cells, read_cell
from qexact.conformance.runner import ENGINES, draw_case, qexact_engine, run_qexact_case

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
RECORDING = RECORDINGS / "avx512_vnni"
AVX2_RECORDING = RECORDINGS / "avx2_lowered"
UNDEFINED = re.compile(r"undefined|uninitialized|only the first output depth slice|does not reproduce")
"""What qexact says when it refuses because PyTorch's own result is undefined (or, for a known
divergence, that it does not reproduce it: FBGEMM's 3-D depthwise with large windows)."""
LIVE_CASES = {"default": 4, "pytorch": 2}


def _assert_refusal_is_undefined(message: str, where) -> None:
    assert UNDEFINED.search(message), f"{where}: qexact refused a defined case: {message}"


# --- live --------------------------------------------------------------------------------------


def _live_cells():
    for name, fam in FAMILIES.items():
        if not fam.run_qexact.__module__.startswith("qexact."):
            continue  # families other tests register
        for engine in fam.engines or ENGINES:
            if engine in fam.not_on:
                continue
            for profile in LIVE_CASES:
                if profile == "default" or profile in fam.profiles:
                    yield pytest.param(name, engine, profile, id=f"{name}-{engine}-{profile}")


@pytest.fixture(scope="module")
def worker():
    pytest.importorskip("torch")
    from qexact.conformance.worker import TorchWorker

    with TorchWorker() as child:
        child.start()
        yield child


@pytest.mark.torch
@pytest.mark.parametrize("name, engine, profile", list(_live_cells()))
def test_live(name, engine, profile, worker, report):
    torch_engine = "fbgemm" if engine == "aten" else engine
    if torch_engine not in worker.info["supported_engines"]:
        pytest.skip(f"this torch has no {torch_engine} engine")
    fam = FAMILIES[name]
    ours_engine = qexact_engine(engine)
    counts = report[f"{name}/{engine}/{profile}"]
    for index in range(LIVE_CASES[profile]):
        case = draw_case(fam, profile, 20261205, engine, index)
        theirs = worker.run(fam, engine, case)
        ours, message = run_qexact_case(fam, case, ours_engine)
        where = f"{name} on {engine}, params {json.dumps(case.params, default=str)}"
        if theirs.kind == "refused":
            counts["torch_refused"] += 1
        elif theirs.kind in ("crash", "nondeterministic"):
            counts[f"torch_{theirs.kind}"] += 1
            assert ours is None, f"PyTorch's result is undefined ({theirs.kind}), qexact gave one: {where}"
            _assert_refusal_is_undefined(message, where)
        elif ours is None:
            _assert_refusal_is_undefined(message, where)
            counts["qexact_refused"] += 1
        else:
            result = compare_outputs(ours, theirs.outputs)
            counts["cases"] += 1
            counts["elements"] += result.elements
            counts["not_modelled"] += result.not_modelled
            assert result.mismatches == 0, f"{result.first}\n{where}"


# --- replay --------------------------------------------------------------------------------------


def _recorded_cells():
    return [pytest.param(f, e, id=f"{f}-{e}") for f, e in cells(RECORDING)]


def _recording_engine(engine: str):
    return qexact_engine(engine, isa="avx512_vnni", aten_capability="avx512")


def test_the_recording_is_complete():
    """Every family qexact has a cell in the recording (float_aten on 'aten', others on four
    engines), and the recording machine is the one the replay emulates."""
    manifest = json.loads((RECORDING / "manifest.json").read_text())
    assert manifest["has_avx512_vnni"] and manifest["cpu_capability"] == "AVX512"
    recorded = {family for family, _ in cells(RECORDING)}
    assert len(cells(RECORDING)) >= 120 and recorded <= set(FAMILIES)


@pytest.mark.parametrize("name, engine", _recorded_cells())
def test_replay(name, engine, report):
    _replay_cell(RECORDING, name, engine, _recording_engine(engine),
                 report[f"{name}/{engine}/replay"])


def _replay_cell(directory, name, engine, ours_engine, counts, known_refusal=None):
    """Every stored case of a cell through qexact: equal bits, or a refusal that says PyTorch's
    result is undefined (or matches ``known_refusal``, a documented refusal of this ISA)."""
    fam = FAMILIES[name]
    _, stored = read_cell(directory, name, engine)
    failures = []
    for item in stored:
        ours, message = run_qexact_case(fam, item.case, ours_engine)
        if ours is None:
            if not (known_refusal and known_refusal.search(message)):
                _assert_refusal_is_undefined(message, f"{name}/{engine} {item.name}")
            counts["qexact_refused"] += 1
            continue
        result = compare_outputs(ours, item.expected)
        counts["cases"] += 1
        counts["elements"] += result.elements
        counts["mismatches"] += result.mismatches
        counts["not_modelled"] += result.not_modelled
        if result.mismatches:
            failures.append(f"{item.name}: {result.first}")
    assert counts["cases"] > 0 or not stored or engine in fam.not_on
    assert not failures, "\n".join(failures[:10])


# --- replay of the AVX2 paths (recorded with the ISA lowered) -----------------------------------

AVX2_KNOWN_REFUSALS = {
    "float_gelu": re.compile(r"oneDNN's non-AVX512 gelu_erf .* is not reproduced"),
}
"""Refusals of isa/capability avx2 that qexact documents (not PyTorch-undefined cases): oneDNN's
AVX2 gelu_erf (contiguous approximate='none' with oneDNN enabled) is not emulated."""

AVX2_KNOWN_MISMATCHES: dict[tuple[str, str], str] = {}
"""Cells whose AVX2 replay differs from PyTorch: strict xfails (a fix makes them fail). None
today (FBGEMM's AVX2 fp16 row tiles: engines/dynamic_eager.py ``Fp16GemmKernel``)."""


def _avx2_cells():
    for family, engine in cells(AVX2_RECORDING):
        reason = AVX2_KNOWN_MISMATCHES.get((family, engine))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        yield pytest.param(family, engine, id=f"{family}-{engine}", marks=marks)


def test_the_avx2_recording_was_lowered():
    """The AVX2 recording ran PyTorch with every library's ISA lowered (on an AVX512-VNNI host),
    and holds every family issue 11 added."""
    manifest = json.loads((AVX2_RECORDING / "manifest.json").read_text())
    assert manifest["qexact_isa"] == "avx2" and manifest["aten_capability"] == "avx2"
    assert manifest["cpu_capability"] == "AVX2" and manifest["has_avx512_vnni"]
    assert manifest["env_overrides"] == {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
                                         "ONEDNN_MAX_CPU_ISA": "AVX2",
                                         "ATEN_CPU_CAPABILITY": "avx2",
                                         "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    recorded = {family for family, _ in cells(AVX2_RECORDING)}
    assert {"linear_dynamic", "linear_dynamic_fp16", "embedding_bag", "float_gelu",
            "float_softmax", "float_layer_norm", "float_group_norm", "float_matmul",
            "quantized_matmul"} <= recorded <= set(FAMILIES)


@pytest.mark.parametrize("name, engine", list(_avx2_cells()))
def test_replay_avx2_lowered(name, engine, report):
    _replay_cell(AVX2_RECORDING, name, engine,
                 qexact_engine(engine, isa="avx2", aten_capability="avx2"),
                 report[f"{name}/{engine}/replay avx2"], AVX2_KNOWN_REFUSALS.get(name))


def _synthetic_arrays(params: dict) -> dict:
    """Inputs for a case the recording lists by its params alone (PyTorch crashed or was
    nondeterministic, so no arrays were kept): qexact's refusal depends on shapes, not values."""
    if "kernel" in params:
        transposed, groups = "output_padding" in params, params["groups"]
        c_in, c_out = params["in_channels"], params["out_channels"]
        w_shape = ((c_in, c_out // groups) if transposed else (c_out, c_in // groups)) + \
            tuple(params["kernel"])
        arrays = {"x": np.full([params["batch"], c_in] + params["spatial"], 7, np.uint8),
                  "w": np.ones(w_shape, np.int8)}
        if params["w_qscheme"] == "per_channel":
            arrays |= {"w_scales": np.full(w_shape[0], 0.01),
                       "w_zero_points": np.zeros(w_shape[0], np.int64)}
        if params["has_bias"]:
            arrays["bias"] = np.zeros(c_out, np.float32)
        return arrays
    channels = params["shape"][1]
    arrays = {"x": np.full(params["shape"], 7, np.uint8)}
    if params.get("has_weight"):
        arrays |= {"weight": np.ones(channels, np.float32), "bias": np.zeros(channels, np.float32)}
    return arrays


def _undefined_cases():
    for family, engine in cells(RECORDING):
        meta = json.loads((RECORDING / f"{family}__{engine}.json").read_text())
        for kind in ("crashes", "nondeterministic"):
            for entry in meta.get(kind, []):
                yield family, engine, kind, entry


def test_cases_pytorch_left_undefined_are_refused(report):
    """The recording's crashes and nondeterministic cases: qexact refuses each, saying why."""
    counts = report["recording/undefined"]
    for family, engine, kind, entry in _undefined_cases():
        case = Case(entry["params"], _synthetic_arrays(entry["params"]))
        ours, message = run_qexact_case(FAMILIES[family], case, _recording_engine(engine))
        where = f"{family}/{engine} {entry['case']} ({kind})"
        assert ours is None, f"{where}: qexact computed a result PyTorch leaves undefined"
        _assert_refusal_is_undefined(message, where)
        counts[kind] += 1
    assert counts["crashes"] >= 10 and counts["nondeterministic"] >= 100
