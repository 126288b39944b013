"""``qexact conformance``: the live sweep (torch in a child process that may crash), ``--record``
and ``--replay``, counts, reports, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import qexact.conformance as conformance
from qexact.conformance import FAMILIES
from qexact.conformance.recording import cells, read_cell
from support import conformance_families  # noqa: F401  (registers test_broken, test_crashing)

pytestmark = pytest.mark.torch
pytest.importorskip("torch")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qexact", "conformance", *args],
                          capture_output=True, text=True, check=False, cwd=cwd)


def test_short_sweep_of_every_family_and_engine_has_no_mismatch(tmp_path):
    """What CI runs: every family on every engine, a few cases each, torch in a child."""
    result = _cli("--cases", "3", "--seed", "3", "--report", str(tmp_path / "report.md"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total mismatches: 0" in result.stdout
    report = (tmp_path / "report.md").read_text()
    assert report.count("| ") >= len(FAMILIES) * 4
    assert "Error in QNNPACK" not in result.stdout + result.stderr  # torch's noise stays in the child


def test_record_then_replay_without_torch(tmp_path):
    """A recording written here replays to 0 mismatches in a process where torch cannot import."""
    recording = tmp_path / "rec"
    result = _cli("--record", str(recording), "--ops", "linear,add,act_sigmoid,float_aten",
                  "--engines", "qnnpack,fbgemm,aten", "--cases", "3", "--seed", "5", "--quiet",
                  "--report", "")
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((recording / "manifest.json").read_text())
    assert manifest["qexact_isa"] in ("avx2", "avx512_vnni") and manifest["cpu_flags"]
    assert {("linear", "qnnpack"), ("add", "fbgemm"), ("float_aten", "aten")} <= set(cells(recording))
    meta, stored = read_cell(recording, "linear", "qnnpack")
    assert meta["stored"] == len(stored) == 3 and "y" in stored[0].expected
    (tmp_path / "torch.py").write_text("raise ImportError('no torch here')\n")
    replay = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from qexact.cli import main; sys.exit(main(sys.argv[2:]))", str(tmp_path),
         "conformance", "--replay", str(recording), "--report", "", "--json"],
        capture_output=True, text=True, check=False, cwd=tmp_path)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    report = json.loads(replay.stdout)
    assert report["mode"] == "replay" and report["mismatches"] == 0
    assert sum(r["cases"] for r in report["results"]) >= 3 * 5


def test_a_mismatch_is_counted():
    report = conformance.run_conformance(["test_broken"], ["fbgemm"], cases=2)
    assert report.mismatches == 6 and "y[1]" in report.results[0].first_mismatch
    assert "Total mismatches: 6." in report.to_markdown()


def test_a_torch_crash_is_listed_and_the_sweep_goes_on():
    report = conformance.run_conformance(["test_crashing"], ["fbgemm", "qnnpack"], cases=6,
                                         seed=1)
    crashes = [c for r in report.results for c in r.crashes]
    compared = sum(r.cases for r in report.results)
    assert crashes and compared and len(crashes) + compared == 12
    assert all(c["exit"] == "signal 11" and c["crashes_alone"] for c in crashes)
    assert "PyTorch crashed: test_crashing on" in report.to_text()
    assert report.mismatches == 0


def test_bad_arguments_exit_two(tmp_path):
    assert _cli("--cases", "0").returncode == 2
    assert _cli("--ops", "no_such_family", "--cases", "1").returncode == 2
    assert _cli("--replay", str(tmp_path)).returncode == 2  # no recording there


def test_a_recording_states_every_isa_override(monkeypatch):
    """The manifest keeps the variables that lower PyTorch's libraries (the AVX2 recording of
    tests/data/recordings/avx2_lowered was made with all four), and only those."""
    from qexact.conformance.recording import environment_overrides

    for name in ("FBGEMM_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                 "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.setenv(name, "AVX2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert environment_overrides() == {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
                                       "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "AVX2",
                                       "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
