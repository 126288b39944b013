"""``qexact compare``: where two deployments of one PT2E model differ, and why."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchao")
pytest.importorskip("executorch")

import qexact  # noqa: E402
from qexact.compare import compare_engines  # noqa: E402
from tests.support import pt2e  # noqa: E402


def _differing_input(net):
    """The first seeded input on which xnnpack and pt2e_eager differ somewhere in the graph."""
    for seed in range(60):
        x = pt2e.inputs("small_cnn", seed, 3.0).numpy()
        comparison = compare_engines(net.graph, ("xnnpack", "pt2e_eager"), (x,))
        if comparison.nodes:
            return x, comparison
    pytest.fail("no seed makes the two flows differ")


def test_compare_names_the_layer_where_the_flows_diverge_and_the_bias_rounding():
    converted, _ = pt2e.quantized("small_cnn", "xnnpack")
    net = qexact.from_torch(converted)
    _, comparison = _differing_input(net)
    first = comparison.nodes[0]
    assert first.cause == "diverges" and first.op == "conv" and first.max_steps == 1
    assert "the bias: int32" in first.reason and "before rounding" in first.reason
    before = [float(part.split(" (")[0]) for part in
              first.reason.split("before rounding: ")[1].split(" vs ")]
    assert np.floor(before[0] + 0.5) != np.floor(before[1] + 0.5)  # a .5 boundary between them
    assert all(later.cause in ("diverges", "propagated") for later in comparison.nodes[1:])


def test_compare_command_exits_1_where_the_flows_differ(tmp_path):
    converted, _ = pt2e.quantized("small_cnn", "xnnpack")
    net = qexact.from_torch(converted)
    x, _ = _differing_input(net)
    qexact.save(net, tmp_path / "m.qexact")
    np.save(tmp_path / "x.npy", x)
    command = [sys.executable, "-m", "qexact.cli", "compare", str(tmp_path / "m.qexact"),
               "--engines", "xnnpack,pt2e_eager", "--input", str(tmp_path / "x.npy")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "diverges at" in result.stdout and "why: the bias" in result.stdout
    same = subprocess.run(command[:6] + ["xnnpack,xnnpack"] + command[7:], capture_output=True,
                          text=True)
    assert same.returncode == 0 and "0 of" in same.stdout
