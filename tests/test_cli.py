"""The ``qexact`` command line, run as a user would: ``python -m qexact ...`` in a subprocess.

- ``--help``, ``--version`` and ``info --json`` work without a model.
- On a saved forum model (qnnpack): ``run`` writes the output bit for bit, ``run --quantized``,
  ``layers`` (text and JSON), ``explain`` in every format, ``diagnose`` on exact numbers (exit 0)
  and on the forum formula's numbers (exit 1, names the missing requantization), with JSON and
  HTML output.
- Errors (a corrupt model, a missing input, a bad ``--index``) exit 2 with a one-line
  ``qexact: error:`` message and no traceback.
- ``qexact demo --engine qnnpack`` fits in 80 columns and tells the whole story.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import qexact


def qexact_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qexact", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def forum_formula(net, x: np.ndarray) -> np.ndarray:
    """The forum user's ``sum((xq - zx) * (wq - zw)) * sx * sw + bias``, in float64."""
    quant, layer = net.layers["quant"], net.layers["fc_1"]
    xq = qexact.quantize_per_tensor(x, quant.scale, quant.zero_point, quant.dtype).values
    zw = np.asarray(layer.weight_zero_point, dtype=np.int64)
    weight = layer.weight.astype(np.int64) - (zw[:, None] if zw.ndim else zw)
    acc = (xq.astype(np.int64) - layer.input_zero_point) @ weight.T
    return (acc * (layer.input_scale * np.asarray(layer.weight_scale, dtype=np.float64))
            + layer.float_bias.astype(np.float64))


# --- Without a model -----------------------------------------------------------------------------


def test_help():
    result = qexact_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("demo", "run", "layers", "explain", "diagnose", "info"):
        assert command in result.stdout


def test_version():
    result = qexact_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"qexact {qexact.__version__}"


def test_info_json():
    result = qexact_cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["qexact"] == qexact.__version__
    assert set(info["engines"]) >= {"fbgemm", "x86", "qnnpack", "onednn"}
    assert info["this_cpu_isa"] in info["isas"]


def test_engine_choices_come_from_the_registry():
    result = qexact_cli("demo", "--engine", "no_such_engine")
    assert result.returncode == 2
    assert all(name in result.stderr for name in qexact.engines.engine_names())


# --- On a saved model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(directory, net, x)``: the forum model (qnnpack) saved as m.qexact, x saved as x.npy,
    the exact output as exact.npy and the forum formula's numbers as forum.npy."""
    torch = pytest.importorskip("torch")
    from support.models import build, forum_model

    previous = torch.backends.quantized.engine
    try:
        model, shape = build(forum_model, "qnnpack")
        net = qexact.from_torch(model, example_inputs=(torch.rand(shape),))
    finally:
        torch.backends.quantized.engine = previous
    directory = tmp_path_factory.mktemp("cli")
    qexact.save(net, directory / "m.qexact")
    x = np.random.default_rng(11).random((16, 10), dtype=np.float32)
    np.save(directory / "x.npy", x)
    np.save(directory / "exact.npy", net(x))
    np.save(directory / "forum.npy", forum_formula(net, x))
    return directory, net, x


@pytest.mark.torch
def test_run_writes_the_exact_output(saved):
    directory, net, x = saved
    result = qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy",
                        "--out", directory / "y.npy", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["shape"] == [16, 5]
    y = np.load(directory / "y.npy")
    expected = net(x)
    assert y.dtype == expected.dtype
    assert y.tobytes() == expected.tobytes()


@pytest.mark.torch
def test_run_quantized(saved):
    directory, net, x = saved
    result = qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy",
                        "--quantized", "--out", directory / "q.npy", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = net.run_quantized(x)
    assert summary["shape"] == [16, 5]
    assert summary["scale"] == expected.scale
    assert summary["zero_point"] == expected.zero_point
    np.testing.assert_array_equal(np.load(directory / "q.npy"), expected.values)
    # Text form too.
    text = qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy", "--quantized")
    assert text.returncode == 0, text.stderr
    assert "scale" in text.stdout and "zero_point" in text.stdout


@pytest.mark.torch
def test_layers(saved):
    directory, net, _ = saved
    text = qexact_cli("layers", directory / "m.qexact")
    assert text.returncode == 0, text.stderr
    assert "fc_1" in text.stdout and "qnnpack" in text.stdout
    listing = json.loads(qexact_cli("layers", directory / "m.qexact", "--json").stdout)
    if isinstance(listing, dict):   # {"engine", "isa", "layers": [...]}
        assert listing["engine"] == "qnnpack"
        listing = listing["layers"]
    names = [row.get("name", row.get("layer")) for row in listing]
    assert "fc_1" in names
    fc_1 = listing[names.index("fc_1")]
    assert fc_1.get("op", "linear") == "linear" and fc_1["multiplier"]


@pytest.mark.torch
@pytest.mark.parametrize("format", ["text", "markdown", "json"])
def test_explain(saved, format):
    directory, net, x = saved
    result = qexact_cli("explain", directory / "m.qexact", "--input", directory / "x.npy",
                        "--index", "0,1", "--format", format)
    assert result.returncode == 0, result.stderr
    assert "quant" in result.stdout
    if format == "json":
        explanation = json.loads(result.stdout)
        assert explanation["index"] == [0, 1]
        assert np.float32(explanation["output"]) == net(x)[0, 1]
        assert explanation["stages"]
    else:
        assert "[0, 1]" in result.stdout


@pytest.mark.torch
def test_diagnose_exact_numbers(saved):
    directory, _, _ = saved
    result = qexact_cli("diagnose", directory / "m.qexact", "--input", directory / "x.npy",
                        "--theirs", directory / "exact.npy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing to diagnose" in result.stdout


@pytest.mark.torch
def test_diagnose_forum_formula(saved, tmp_path):
    directory, _, _ = saved
    report = tmp_path / "report.html"
    arguments = ("diagnose", directory / "m.qexact", "--input", directory / "x.npy",
                 "--theirs", directory / "forum.npy")
    result = qexact_cli(*arguments, "--html", report)
    assert result.returncode == 1, result.stderr
    assert "missing_output_requantization" in result.stdout
    assert "Traceback" not in result.stderr
    page = report.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "missing_output_requantization" in page and "<svg" in page

    as_json = qexact_cli(*arguments, "--format", "json")
    assert as_json.returncode == 1, as_json.stderr
    diagnosis = json.loads(as_json.stdout)
    assert "missing_output_requantization" in json.dumps(diagnosis)


# --- Errors: exit 2, one line, no traceback ------------------------------------------------------


def assert_usage_error(result: subprocess.CompletedProcess):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "qexact: error:" in result.stderr


def test_corrupt_model_file(tmp_path):
    model = tmp_path / "corrupt.qexact"
    model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(64))
    np.save(tmp_path / "x.npy", np.zeros((1, 10), np.float32))
    for command in ("layers", "run"):
        extra = ("--input", tmp_path / "x.npy") if command == "run" else ()
        assert_usage_error(qexact_cli(command, model, *extra))


def test_garbage_model_file(tmp_path):
    model = tmp_path / "garbage.qexact"
    model.write_bytes(b"this is not a safetensors file")
    assert_usage_error(qexact_cli("layers", model))


@pytest.mark.torch
def test_missing_input_file(saved, tmp_path):
    directory, _, _ = saved
    missing = tmp_path / "does_not_exist.npy"
    assert_usage_error(qexact_cli("explain", directory / "m.qexact", "--input", missing))
    assert_usage_error(qexact_cli("diagnose", directory / "m.qexact", "--input", missing,
                                  "--theirs", directory / "forum.npy"))


@pytest.mark.torch
@pytest.mark.parametrize("index", ["a,b", "0,99", "0"])
def test_bad_index(saved, index):
    directory, _, _ = saved
    result = qexact_cli("explain", directory / "m.qexact", "--input", directory / "x.npy",
                        "--index", index)
    assert_usage_error(result)


# --- The demo ------------------------------------------------------------------------------------


@pytest.mark.torch
def test_demo_qnnpack():
    pytest.importorskip("torch")
    result = qexact_cli("demo", "--engine", "qnnpack")
    assert result.returncode == 0, result.stdout + result.stderr
    too_long = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not too_long, too_long
    assert "identical" in result.stdout
    assert "DIFFERENT" not in result.stdout
    assert "missing_output_requantization" in result.stdout


@pytest.mark.torch
def test_run_missing_input_file(saved, tmp_path):
    directory, _, _ = saved
    assert_usage_error(qexact_cli("run", directory / "m.qexact", "--input",
                                  tmp_path / "does_not_exist.npy"))


# --- What a newcomer tripped over (issue 14) ------------------------------------------------------


@pytest.mark.torch
def test_debug_after_the_subcommand_and_json_everywhere(saved):
    directory, net, x = saved
    late = qexact_cli("run", directory / "m.qexact", "--input", directory / "missing.npy",
                      "--debug")
    assert late.returncode != 0 and "Traceback" in late.stderr
    for command in ("explain", "diagnose"):
        extra = ("--theirs", directory / "exact.npy") if command == "diagnose" else ()
        result = qexact_cli(command, directory / "m.qexact", "--input", directory / "x.npy",
                            *extra, "--json")
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout), dict)


@pytest.mark.torch
def test_run_prints_the_values(saved):
    directory, net, x = saved
    result = qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy")
    assert result.returncode == 0, result.stderr
    first = net(x)[0, 0]
    assert repr(float(first))[:6] in result.stdout or str(first) in result.stdout
    values = json.loads(qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy",
                                   "--json").stdout)["values"]
    assert np.array_equal(np.array(values, dtype=np.float32), net(x))


def test_conformance_of_no_cases_is_an_error():
    result = qexact_cli("conformance", "--cases", "0", "--report", "")
    assert result.returncode == 2 and "--cases must be at least 1" in result.stderr


def test_a_pickle_is_named_as_such(tmp_path):
    import pickle
    import zipfile

    (tmp_path / "model.pt").write_bytes(pickle.dumps({"weight": [1, 2]}, protocol=2))
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    for name, kind in (("model.pt", "pickle"), ("archive.pt", "zip archive")):
        with pytest.raises(qexact.FormatError, match=f"{kind}.*never unpickles"):
            qexact.load(tmp_path / name)


@pytest.mark.torch
def test_save_into_a_missing_directory(saved, tmp_path):
    _, net, _ = saved
    with pytest.raises(qexact.QexactError, match="cannot write"):
        qexact.save(net, tmp_path / "no" / "such" / "dir" / "m.qexact")


def test_demo_without_torch_says_so_first(tmp_path):
    """A torch that cannot be found (a stub package path first on sys.path hides it): the demo
    prints no introduction, only the error."""
    hider = tmp_path / "hide"
    hider.mkdir()
    (hider / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    import os

    environment = dict(os.environ, PYTHONPATH=str(hider))
    result = subprocess.run([sys.executable, "-m", "qexact", "demo"], capture_output=True,
                            text=True, env=environment, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and "torch is not installed" in result.stderr


@pytest.mark.torch
def test_a_float64_input_is_a_dtype_error(saved):
    _, net, x = saved
    with pytest.raises(qexact.DTypeError, match="must be float32"):
        net(x.astype(np.float64))
    assert issubclass(qexact.DTypeError, qexact.ShapeError)  # what earlier versions raised


@pytest.mark.torch
def test_model_from_a_python_factory(tmp_path):
    """``FILE.py:FACTORY``: the user's own script builds and converts the model."""
    (tmp_path / "mymodel.py").write_text(
        "import torch\n"
        "from torch.ao.quantization import QuantStub, DeQuantStub, get_default_qconfig, "
        "prepare, convert\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.quant, self.fc, self.dequant = QuantStub(), torch.nn.Linear(4, 3), "
        "DeQuantStub()\n"
        "    def forward(self, x):\n"
        "        return self.dequant(self.fc(self.quant(x)))\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    torch.backends.quantized.engine = 'qnnpack'\n"
        "    m = M().eval(); m.qconfig = get_default_qconfig('qnnpack')\n"
        "    prepare(m, inplace=True); m(torch.rand(8, 4)); convert(m, inplace=True)\n"
        "    return m, (torch.rand(1, 4),)\n")
    np.save(tmp_path / "x.npy", np.full((2, 4), 0.5, np.float32))
    result = qexact_cli("run", f"{tmp_path / 'mymodel.py'}:build", "--input", tmp_path / "x.npy",
                        "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["shape"] == [2, 3]
    missing = qexact_cli("layers", f"{tmp_path / 'mymodel.py'}:nothing")
    assert missing.returncode == 2 and "no function 'nothing'" in missing.stderr


@pytest.mark.torch
def test_to_json_is_text_and_to_dict_its_document(saved, tmp_path):
    """Every result that reports: ``to_json()`` is JSON text (what ``--json`` prints),
    ``to_dict()`` the same document as Python values."""
    from qexact.compare import compare_engines
    from qexact.export.c import export_c
    from qexact.export.golden import check_golden, export_golden
    from qexact.export.integer import certify
    from qexact.summary import inspect_net

    directory, net, x = saved
    golden = tmp_path / "golden"
    export_golden(net, x[None, :2], golden)
    results = [qexact.diagnose(net, x, forum_formula(net, x)), net.explain(x),
               *inspect_net(net, (x,)), net.run_quantized(x).qparams,
               compare_engines(net.graph, ("qnnpack", "x86"), (x,)), *certify(net),
               check_golden(golden), export_c(net, tmp_path / "c", (x[:1],))]
    for item in results:
        text = item.to_json()
        assert isinstance(text, str) and json.loads(text) == item.to_dict(), type(item)
        assert json.loads(item.to_json(indent=1)) == item.to_dict()


@pytest.mark.torch
def test_conformance_keeps_torch_prints_off_the_terminal_and_says_why_it_refused():
    """QNNPACK refuses a 1x1 pooling window and prints "Error in QNNPACK: ..." on stderr: the
    sweep's terminal stays clean (torch runs in a child whose stderr goes to a file), and the
    refusal in the report carries what QNNPACK printed."""
    result = qexact_cli("conformance", "--ops", "pool2d", "--engines", "qnnpack", "--cases",
                        "60", "--report", "", "--quiet", "--json")
    assert result.returncode == 0, result.stderr
    assert "QNNPACK" not in result.stderr
    refused = [item for row in json.loads(result.stdout)["results"]
               for item in row["torch_refused"]]
    assert refused and all("1x1 pooling is meaningless" in item["message"] for item in refused)


@pytest.mark.torch
def test_a_torch_save_checkpoint_is_named_as_such(tmp_path):
    """``torch.save(model)`` or ``torch.save(model.state_dict())`` is a zip archive as TorchScript
    is: the command says which it is and what to give instead, not torch.jit.load's "corrupted
    checkpoint"."""
    import torch

    torch.save({"fc.weight": torch.zeros(5, 10)}, tmp_path / "state.pth")
    result = qexact_cli("run", tmp_path / "state.pth", "--input", tmp_path / "x.npy")
    assert_usage_error(result)
    assert "written by torch.save" in result.stderr and "never unpickles" in result.stderr
    assert "corrupted" not in result.stderr


@pytest.mark.torch
def test_run_says_which_arithmetic_it_ran(saved):
    directory, net, x = saved
    result = qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy")
    assert result.stdout.startswith("engine: qnnpack, isa: "), result.stdout
    document = json.loads(qexact_cli("run", directory / "m.qexact", "--input",
                                     directory / "x.npy", "--json").stdout)
    assert document["engine"] == "qnnpack" and document["isa"] == net.engine.isa


def test_layers_is_an_alias_of_inspect():
    listing = qexact_cli("--help").stdout
    assert "inspect (layers)" in listing and "\n    layers " not in listing
    assert qexact_cli("layers", "--help").stdout == qexact_cli("inspect", "--help").stdout


# --- Exit codes: 0 the same, 1 a difference, 2 an error, for every command ----------------------


MODEL_COMMANDS = [["run", "--input", "x.npy"], ["inspect"], ["layers"], ["explain", "--input",
                  "x.npy"], ["diagnose", "--input", "x.npy", "--theirs", "x.npy"],
                  ["compare", "--engines", "x86,qnnpack", "--input", "x.npy"], ["certify"],
                  ["export", "golden", "--inputs", "x.npy", "--out", "g"],
                  ["export", "c", "--out", "c"]]


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_every_model_command_exits_2_on_a_missing_model(command, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1, 10), np.float32))
    where = 2 if command[0] == "export" else 1
    arguments = command[:where] + [tmp_path / "missing.qexact"] + command[where:]
    assert_usage_error(qexact_cli(*arguments, cwd=tmp_path))


@pytest.mark.torch
def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(saved, tmp_path):
    directory, _, _ = saved
    result = qexact_cli("run", directory / "m.qexact", "--input", directory / "x.npy", "--out",
                        tmp_path / "no" / "such" / "dir" / "y.npy")
    assert_usage_error(result)
    assert "cannot access" in result.stderr and "y.npy" in result.stderr


def test_exit_codes_of_check_on_a_missing_directory(tmp_path):
    assert_usage_error(qexact_cli("check", tmp_path / "missing"))
