"""End to end, as a user runs it: ``qexact export golden``, ``qexact export c``, ``make``,
``qexact check DIR --c BUILD``; the C build equals the golden directory on every layer (tuple
pieces included), and a C build of another engine is caught at its first differing layer."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import qexact
import qexact.export.c
import qexact.export.golden
from qexact.export.golden import check_golden

torch = pytest.importorskip("torch")

from support.cnn_models import build_cnn  # noqa: E402

pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc on this machine")]


def qexact_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qexact", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@functools.lru_cache(maxsize=None)
def saved_model(name: str, engine: str, directory):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, shape = build_cnn(name, engine)
        net = qexact.from_torch(model, example_inputs=(torch.rand(shape),), engine=engine)
    finally:
        torch.set_num_threads(previous)
    path = directory / f"{name}-{engine}.qexact"
    qexact.save(net, path)
    return path, shape


@pytest.mark.parametrize("name", ["shufflenet_v2"])
def test_cli_golden_c_and_check(tmp_path, name):
    model, shape = saved_model(name, "qnnpack", tmp_path)
    calls = np.random.default_rng(2).standard_normal((2,) + shape).astype(np.float32)
    np.save(tmp_path / "x.npy", calls)
    golden, build = tmp_path / "golden", tmp_path / "c"
    made = qexact_cli("export", "golden", model, "--inputs", tmp_path / "x.npy", "--out", golden,
                      "--quiet")
    assert made.returncode == 0, made.stderr
    exported = qexact_cli("export", "c", model, "--out", build, "--json")  # shape: as imported
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["c_bytes"] > 10_000
    compiled = subprocess.run(["make", "-s", "-C", str(build)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    checked = qexact_cli("check", golden, "--c", build, "--json", "--quiet")
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    report = json.loads(checked.stdout)
    assert report["equal"] and not report["first_difference"]
    compared = [layer for layer in report["layers"] if not layer["missing"]]
    assert len(compared) >= 20 and any("output.0" in layer["compared"] for layer in compared)
    # model_main --golden reads the same directory by itself
    alone = subprocess.run([str(build / "model_main"), "--golden", str(golden)],
                           capture_output=True, text=True)
    assert alone.returncode == 0, alone.stdout[-3000:]


def test_a_c_build_of_another_engine_is_caught(tmp_path):
    model, shape = saved_model("resnet", "qnnpack", tmp_path)
    calls = np.random.default_rng(4).standard_normal((1,) + shape).astype(np.float32)
    golden = tmp_path / "golden"
    net = qexact.load(model)
    qexact.export.golden.export_golden(net, calls, golden)
    other = qexact.load(model, engine="fbgemm")      # the same graph, FBGEMM's arithmetic
    qexact.export.c.export_c(other, tmp_path / "c", (calls[0],))
    subprocess.run(["make", "-s", "-C", str(tmp_path / "c")], check=True, capture_output=True)
    report = check_golden(golden, c_build=tmp_path / "c")
    first = report.first_difference
    assert not report.equal and first is not None and first.op in ("conv", "linear")
    assert report.diagnosis is not None
    assert "wrong_engine" in [finding.id for finding in report.diagnosis.findings]


@pytest.mark.parametrize("name", ["gated_scalar", "squeeze_excite_mul"])
def test_fx_models_in_c(tmp_path, name, torch1):
    """FX-converted models beyond the eager test models (add_scalar/mul_scalar as tables, a
    broadcast mul): the C build equals PyTorch."""
    from support.fx_models import as_args, build_fx_model, random_input

    model, shape, kind = build_fx_model(name, "x86")
    (x,) = [np.asarray(a) for a in as_args(random_input(shape, kind))]
    net = qexact.from_torch(model, example_inputs=(torch.from_numpy(x),), engine="x86")
    qexact.export.c.export_c(net, tmp_path / "c", (x,))
    subprocess.run(["make", "-s", "-C", str(tmp_path / "c")], check=True, capture_output=True)
    np.ascontiguousarray(x, dtype="<f4").tofile(tmp_path / "in.bin")
    subprocess.run([str(tmp_path / "c" / "model_main"), str(tmp_path / "in.bin"),
                    str(tmp_path / "out.bin")], check=True)
    with torch.no_grad():
        expected = np.ascontiguousarray(model(torch.from_numpy(x)).numpy())
    got = np.fromfile(tmp_path / "out.bin", dtype=np.float32).reshape(expected.shape)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_cli_certify(tmp_path):
    model, shape = saved_model("resnet", "onednn", tmp_path)
    text = qexact_cli("certify", model)
    assert text.returncode == 0, text.stderr
    assert text.stdout.rstrip().endswith("more exact with the threshold table")
    listing = json.loads(qexact_cli("certify", model, "--json").stdout)
    assert len(listing) == 7 and all(item["exact"] or item["exact_by_thresholds"]
                                     for item in listing)
