"""``qexact conformance``: the sweep runs, counts, reports, and fails on a mismatch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import qexact.conformance as conformance

pytestmark = pytest.mark.torch
pytest.importorskip("torch")


def test_short_sweep_of_every_op_and_engine_has_no_mismatch(tmp_path):
    """What CI runs: every registered op on every engine, a few cases each."""
    result = subprocess.run(
        [sys.executable, "-m", "qexact", "conformance", "--cases", "8", "--seed", "3",
         "--report", str(tmp_path / "report.md")],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "total mismatches: 0" in result.stdout
    report = (tmp_path / "report.md").read_text()
    assert report.count("| ") >= len(conformance.CASES) * 4
    assert "[" in result.stderr and "/" in result.stderr  # the progress bar


def test_selection_and_unknown_names():
    report = conformance.run_conformance(ops=["linear"], engines=["qnnpack"], cases=3, seed=1)
    assert [(r.op, r.engine, r.cases) for r in report.results] == [("linear", "qnnpack", 3)]
    assert report.results[0].elements > 0
    with pytest.raises(Exception, match="no conformance cases"):
        conformance.run_conformance(ops=["no_such_op"], cases=1)


def test_a_mismatch_is_counted_and_exits_one(monkeypatch):
    def broken(engine, rng):
        return np.zeros(4, np.uint8), np.arange(4, dtype=np.uint8), "deliberately wrong"

    monkeypatch.setitem(conformance.CASES, "broken", broken)
    report = conformance.run_conformance(ops=["broken"], engines=["fbgemm"], cases=2)
    assert report.mismatches == 6 and "deliberately wrong" in report.results[0].first_mismatch
    assert "Total mismatches: 6" in report.to_markdown()
