"""The README's Quickstart, run verbatim (its one ``python`` block), as a newcomer pastes it."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.torch
def test_quickstart_runs_verbatim(tmp_path, monkeypatch, torch1):
    pytest.importorskip("torch")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    quickstart = next(block for block in blocks if "qexact.from_torch" in block)
    monkeypatch.chdir(tmp_path)                      # it writes model.qexact
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(quickstart, "README.md (Quickstart)", "exec"), {})
    text = printed.getvalue()
    assert (tmp_path / "model.qexact").exists()
    assert "array(" not in text and "dtype=" not in text   # numbers print as numbers
    assert "qnnpack" in text.lower() and "int32" in text
    assert "{" not in text and "round_half_even(v)" in text   # steps with their constants
