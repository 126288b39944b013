"""Golden directories: every layer's integers equal PyTorch's (forward hooks on the quantized
modules), the accumulators equal an independent NumPy convolution, the directory round-trips
through ``check_golden`` and the CLI, tampering is caught, and a user's layers that differ are
named by layer and element."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest

import qexact
from qexact.errors import FormatError, QexactError, ShapeError
from qexact.export.golden import check_golden, export_golden, read_golden

torch = pytest.importorskip("torch")

from support.cnn_models import build_cnn  # noqa: E402
from support.models import build, forum_model  # noqa: E402

pytestmark = pytest.mark.torch
CALLS = 2


@functools.lru_cache(maxsize=None)
def resnet(engine: str):
    """(quantized torch model, its Net, the calls: (CALLS, 2, 3, 32, 32) float32)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, shape = build_cnn("resnet", engine)
        net = qexact.from_torch(model, example_inputs=(torch.rand(shape),), engine=engine)
    finally:
        torch.set_num_threads(previous)
    calls = np.random.default_rng(3).standard_normal((CALLS,) + shape).astype(np.float32)
    return model, net, calls


@pytest.fixture(scope="module")
def golden_dirs(tmp_path_factory):
    made = {}

    def make(engine: str):
        if engine not in made:
            _, net, calls = resnet(engine)
            made[engine] = tmp_path_factory.mktemp(f"golden-{engine}")
            export_golden(net, calls, made[engine])
        return made[engine]

    return make


def torch_layer_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every quantized module's output integers (forward hooks), by module path."""
    found, hooks = {}, []
    for name, module in model.named_modules():
        def hook(_, __, output, name=name):
            if isinstance(output, torch.Tensor) and output.is_quantized:
                found[name] = output.int_repr().numpy()
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.from_numpy(x))
    finally:
        for handle in hooks:
            handle.remove()
    return found


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack", "x86", "onednn"])
def test_every_layer_equals_pytorch(engine, golden_dirs, torch1):
    torch1.backends.quantized.engine = engine
    model, net, calls = resnet(engine)
    golden = read_golden(golden_dirs(engine))
    assert golden.manifest["engine"] == engine and golden.manifest["cases"] == CALLS
    compared = 0
    for call in range(CALLS):
        layers = torch_layer_outputs(model, calls[call])
        for node in golden.manifest["nodes"]:
            if node["name"] in layers and f"{node['name']}.output" in golden.arrays:
                exact = golden.arrays[f"{node['name']}.output"][call]
                assert np.array_equal(exact, layers[node["name"]]), (engine, node["name"], call)
                compared += exact.size
    assert compared > 50_000
    with torch.no_grad():
        expected = model(torch.from_numpy(calls[1])).numpy()
    output = golden.arrays[f"{net.graph.outputs[0].name}.output"][1]
    assert np.array_equal(output.view(np.uint32), expected.view(np.uint32))


def centered_conv(x: np.ndarray, z_x: int, weight: np.ndarray, z_w: np.ndarray, stride, padding,
                  groups: int) -> np.ndarray:
    """sum (x - z_x)(w - z_w) over each window, padded taps at z_x: plain loops over taps."""
    n, c, h, w = x.shape
    oc, cg, kh, kw = weight.shape
    padded = np.full((n, c, h + 2 * padding[0], w + 2 * padding[1]), z_x, dtype=np.int64)
    padded[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w] = x
    out_h = (h + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (w + 2 * padding[1] - kw) // stride[1] + 1
    centered_w = weight.astype(np.int64) - z_w.reshape(-1, 1, 1, 1)
    acc = np.zeros((n, oc, out_h, out_w), dtype=np.int64)
    per_group = oc // groups
    for o in range(oc):
        g = o // per_group
        for i in range(kh):
            for j in range(kw):
                window = padded[:, g * cg:(g + 1) * cg, i:i + stride[0] * out_h:stride[0],
                                j:j + stride[1] * out_w:stride[1]] - z_x
                acc[:, o] += np.einsum("nchw,c->nhw", window, centered_w[o, :, i, j])
    return acc


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack"])
def test_accumulators_and_bias(engine, golden_dirs):
    golden = read_golden(golden_dirs(engine))
    checked = 0
    for node in golden.manifest["nodes"]:
        if node["op"] != "conv":
            continue
        name, attrs = node["name"], node["attrs"]
        producer = node["inputs"][0]["array"]
        acc = centered_conv(golden.arrays[producer].reshape((-1,) + golden.arrays[producer].shape[2:]),
                            node["input_qparams"]["zero_point"],
                            golden.arrays[f"{name}.param.weight"],
                            golden.arrays[f"{name}.param.weight_zero_point"],
                            attrs["stride"], attrs["padding"], attrs["groups"])
        accumulator = golden.arrays[f"{name}.accumulator"]
        assert accumulator.dtype == np.int32
        assert np.array_equal(accumulator.reshape(acc.shape), acc), name
        biased = golden.arrays[f"{name}.biased"]
        if node["bias_mode"].startswith("int32"):  # QNNPACK: the int32 bias enters the sum
            bias = golden.arrays[f"{name}.param.bias"].astype(np.int64)
            assert np.array_equal(biased.reshape(acc.shape), acc + bias.reshape(1, -1, 1, 1))
        else:
            assert biased.dtype == np.float32
        checked += acc.size
    assert checked > 20_000


def test_manifest_and_readme(golden_dirs):
    directory = golden_dirs("fbgemm")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["format"] == "qexact-golden" and manifest["isa"] in ("avx2", "avx512_vnni")
    assert manifest["torch_version"] == torch.__version__.split("+")[0] or manifest["torch_version"]
    conv = next(node for node in manifest["nodes"] if node["op"] == "conv")
    assert [step["role"] for step in conv["steps"]].count("bias") == 1
    for key, entry in manifest["arrays"].items():
        assert len(entry["sha256"]) == 64 and entry["shape"][0] >= 1, key
    readme = (directory / "README.md").read_text()
    assert "accumulator" in readme and "qexact check" in readme
    loaded = qexact.load(directory / "model.qexact")
    assert loaded.engine.name == "fbgemm"


def test_check_round_trip_with_qexact(golden_dirs):
    report = check_golden(golden_dirs("qnnpack"))
    assert report.equal and not report.first_difference
    assert all(layer.equal for layer in report.layers)
    assert json.loads(report.render("json"))["equal"] is True


def test_tampered_arrays_are_refused(golden_dirs, tmp_path):
    source = golden_dirs("fbgemm")
    for name in ("manifest.json", "golden.safetensors", "model.qexact", "README.md"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    data = bytearray((tmp_path / "golden.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "golden.safetensors").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="sha256"):
        read_golden(tmp_path)
    with pytest.raises(FormatError, match="not a golden directory"):
        read_golden(tmp_path / "missing")


def theirs_from(golden, directory, change=None):
    """A user's dump: every layer's output as ``<node>.npy`` (call axis first), one changed."""
    directory.mkdir(exist_ok=True)
    for node in golden.manifest["nodes"]:
        array = golden.arrays.get(f"{node['name']}.output")
        if array is not None:
            if change and node["name"] in change:
                array = change[node["name"]](array.copy())
            np.save(directory / f"{node['name']}.npy", array)
    return directory


def test_theirs_names_the_first_differing_layer_and_element(golden_dirs, tmp_path):
    golden = read_golden(golden_dirs("fbgemm"))
    layer = "blocks.0.b.0"

    def off_by_one(array):
        array[1, 1, 3, 2, 5] += 1
        return array

    downstream = next(node["name"] for node in golden.manifest["nodes"] if node["op"] == "linear")
    theirs = theirs_from(golden, tmp_path / "theirs",
                         {layer: off_by_one, downstream: lambda a: a ^ 1})
    report = check_golden(golden.directory, theirs=theirs, diagnose=False)
    first = report.first_difference
    assert not report.equal and first.name == layer
    assert first.first[:3] == ("output", 1, (1, 3, 2, 5)) and first.differing["output"] == 1
    text = report.render()
    assert f"first difference: layer {layer!r}" in text and "element [1, 3, 2, 5]" in text
    assert report.to_dict()["first_difference"]["layer"] == layer


def test_theirs_equal_and_floats(golden_dirs, tmp_path):
    golden = read_golden(golden_dirs("qnnpack"))
    theirs = theirs_from(golden, tmp_path / "same")
    (theirs / "not_a_layer.npy").write_bytes((theirs / "quant.npy").read_bytes())
    report = check_golden(golden.directory, theirs=theirs)
    assert report.equal and "not_a_layer" in report.render()
    # the same numbers as floats (dequantized as PyTorch does): still equal
    node = next(node for node in golden.manifest["nodes"] if node["op"] == "conv")
    q = node["output_qparams"]
    real = np.float32(q["scale"]) * (golden.arrays[f"{node['name']}.output"].astype(np.float32)
                                     - np.float32(q["zero_point"]))
    floats = tmp_path / "floats"
    floats.mkdir()
    np.save(floats / f"{node['name']}.npy", real)
    assert check_golden(golden.directory, theirs=floats).equal


def test_cases_from_a_list_and_shape_errors(tmp_path):
    model, shape = build(forum_model, "qnnpack")
    net = qexact.from_torch(model, example_inputs=(torch.rand(shape),), engine="qnnpack")
    calls = [np.random.default_rng(i).random(shape, dtype=np.float32) for i in range(3)]
    written = export_golden(net, calls, tmp_path / "forum")
    assert written.cases == 3
    golden = read_golden(tmp_path / "forum")
    for call, x in enumerate(calls):
        assert np.array_equal(golden.arrays["input.0"][call], x)
        assert np.array_equal(golden.arrays[f"{net.graph.outputs[0].name}.output"][call], net(x))
    with pytest.raises(ShapeError):
        export_golden(net, [], tmp_path / "none")
    with pytest.raises(ShapeError, match="another shape|other shapes"):
        export_golden(net, [calls[0], np.zeros((2, 10), np.float32)], tmp_path / "mixed")
    # one call of shape (4, 10) given without its calls axis: four calls of shape (10,)
    with pytest.raises(ShapeError, match=r"call 0 \(input shape \(10,\)\): .*rank >= 2.* for "
                       r"one call of x, give x\[None\]"):
        export_golden(net, np.zeros((4, 10), np.float32), tmp_path / "unstacked")


def qexact_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qexact", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_export_and_check(tmp_path):
    model, shape = build(forum_model, "x86")
    net = qexact.from_torch(model, example_inputs=(torch.rand(shape),), engine="x86")
    qexact.save(net, tmp_path / "forum.qexact")
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((4,) + shape, dtype=np.float32))
    made = qexact_cli("export", "golden", tmp_path / "forum.qexact", "--inputs", tmp_path / "x.npy",
                      "--out", tmp_path / "gold", "--quiet", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["calls"] == 4
    checked = qexact_cli("check", tmp_path / "gold", "--json", "--quiet")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["equal"] is True
    golden = read_golden(tmp_path / "gold")
    theirs = theirs_from(golden, tmp_path / "theirs",
                         {net.graph.outputs[0].name: lambda a: np.nextafter(a, np.inf)})
    differs = qexact_cli("check", tmp_path / "gold", "--theirs", theirs, "--quiet")
    assert differs.returncode == 1 and "first difference" in differs.stdout
    missing = qexact_cli("check", tmp_path / "gold", "--theirs", tmp_path / "nothing")
    assert missing.returncode == 2 and "qexact: error" in missing.stderr


def test_theirs_without_a_layer_of_the_model_is_an_error(golden_dirs, tmp_path):
    """Nothing to compare is not a difference: the check names the layers it expects."""
    (tmp_path / "dumps").mkdir()
    np.save(tmp_path / "dumps" / "layer1.npy", np.zeros(3, np.float32))
    with pytest.raises(qexact.QexactError, match=r"names a layer of this model.*layer1\.npy"):
        check_golden(golden_dirs("fbgemm"), theirs=tmp_path / "dumps")


def test_check_refuses_both_comparisons(golden_dirs, tmp_path):
    with pytest.raises(QexactError, match="not both"):
        check_golden(golden_dirs("qnnpack"), theirs=tmp_path, c_build=tmp_path)


def test_dynamic_linear_and_token_inputs(tmp_path, torch1):
    """Models whose layers hold no static qparams (dynamic Linear) and whose inputs are token
    ids keep their dtypes and round-trip."""
    torch1.backends.quantized.engine = "fbgemm"
    model = torch.nn.Sequential(torch.nn.Embedding(20, 16), torch.nn.Linear(16, 8)).eval()
    dynamic = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear})
    tokens = torch.tensor([[1, 5, 19]])
    net = qexact.from_torch(dynamic, example_inputs=(tokens,), engine="fbgemm")
    calls = np.stack([np.array([[1, 5, 19]]), np.array([[0, 2, 7]])])
    export_golden(net, calls, tmp_path / "dyn")
    golden = read_golden(tmp_path / "dyn")
    assert golden.arrays["input.0"].dtype == np.int64
    assert check_golden(tmp_path / "dyn").equal
    with torch.no_grad():
        expected = dynamic(torch.from_numpy(calls[1])).numpy()
    output = golden.arrays[f"{net.graph.outputs[0].name}.output"][1]
    assert np.array_equal(output.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("engine, mistake, expected", [
    ("fbgemm", {"pad_value": 0}, "conv_padding_zero"),
    ("qnnpack", {"bias_rounding": "trunc"}, "bias_rounding"),
])
def test_a_wrong_layer_is_named_with_its_mistake(engine, mistake, expected, golden_dirs,
                                                 tmp_path):
    """The user's first conv, made by an independent wrong implementation (support/
    mistakes_ops.py) on the exact input of every call; every other layer right: check names the
    layer, the first element and the mistake."""
    from support.mistakes_ops import user_conv

    golden = read_golden(golden_dirs(engine))
    layer = golden.net.layers["stem.0"]
    inputs = golden.arrays["quant.output"]
    wrong = np.stack([user_conv(layer, qexact.QuantizedArray(inputs[call], layer.input_qparams),
                                engine=engine, **mistake) for call in range(CALLS)])
    exact = golden.arrays["stem.0.output"]
    assert wrong.shape == exact.shape and not np.array_equal(wrong, exact)
    theirs = theirs_from(golden, tmp_path / "theirs",
                         {"stem.0": lambda _: wrong.astype(np.uint8)})
    report = check_golden(golden.directory, theirs=theirs)
    first = report.first_difference
    assert first.name == "stem.0"
    position = tuple(int(i) for i in np.argwhere(wrong != exact)[0])
    assert (first.first[1],) + tuple(first.first[2]) == position
    assert report.diagnosis is not None and report.diagnosis.findings[0].id == expected
    assert expected in report.render()
