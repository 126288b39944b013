"""The C export (``qexact.export.c``): generated C99 compiled with the system gcc, run, and
compared bit for bit with qexact (every layer, ``--dump-layers``) and with PyTorch.

- every ``Step`` type's C against its NumPy ``apply`` on edge values (NaN, infinities, ties,
  int32/int64 overflow, signed zeros), at -O2 and -O3 -march=native;
- hand-built saturating Linear/Conv/depthwise graphs on ISA avx2 (int16 pair saturation: qexact
  is checked to differ from the exact sum, and the C to equal qexact);
- the Linear and CNN test models on fbgemm, x86, qnnpack, onednn vs qexact and PyTorch
  (a short matrix unmarked, the full one ``slow``); ``--golden`` against ``export_golden``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import qexact
from qexact import Graph, Net, Node, QParams, Ref
from qexact import requantize as rq
from qexact.dtypes import QINT8, QUINT8
from qexact.errors import UnsupportedError
from qexact.export.c import export_c
from qexact.export.c._model import _runtime
from qexact.export.c.steps import Pipeline, emit_pipeline
from qexact.qparams import qparams_to_fields

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
STRICT = "-std=c99 -Wall -Wextra -Werror -O2"
NATIVE = "-std=c99 -Wall -Wextra -Werror -O3 -march=native"
ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")


# --- helpers -----------------------------------------------------------------------------------


def make(directory: Path, cflags: str) -> Path:
    """``make -C directory`` with ``cflags``; the binary's path."""
    done = subprocess.run(["make", "-s", "-C", str(directory), f"CC={GCC}", f"CFLAGS={cflags}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return directory / "model_main"


def build(net, x: np.ndarray, directory: Path, cflags: str = STRICT, **options) -> Path:
    export_c(net, directory, (x,), **options)
    return make(directory, cflags)


def run_output(binary: Path, x: np.ndarray, dtype, shape) -> np.ndarray:
    work = binary.parent
    np.ascontiguousarray(x, dtype="<f4").tofile(work / "in.bin")
    subprocess.run([str(binary), str(work / "in.bin"), str(work / "out.bin")], check=True)
    return np.fromfile(work / "out.bin", dtype=dtype).reshape(shape)


def dump_layers(binary: Path, x: np.ndarray) -> Path:
    work = binary.parent
    out = work / "layers"
    out.mkdir(exist_ok=True)
    np.ascontiguousarray(x, dtype="<f4").tofile(work / "in.bin")
    subprocess.run([str(binary), "--dump-layers", str(work / "in.bin"), str(out)], check=True)
    return out


def plain(value) -> np.ndarray:
    return np.ascontiguousarray(getattr(value, "values", value))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8),
                                                                         b.view(np.uint8))


def check_layers(net, binary: Path, x: np.ndarray) -> int:
    """Every tensor a node computes equals qexact's, bit for bit; returns how many elements."""
    out = dump_layers(binary, x)
    values = net.run_values(x)
    checked = 0
    for item in net._prepared:
        value = values[item.node.name]
        pieces = ([("", value)] if not isinstance(value, (tuple, list))
                  else [(f".{i}", v) for i, v in enumerate(value)])
        for suffix, piece in pieces:
            if not hasattr(piece, "values") and not (isinstance(piece, np.ndarray) and piece.ndim):
                continue
            want = plain(piece)
            got = np.fromfile(out / f"{item.node.name}{suffix}.bin", dtype=want.dtype)
            assert same_bits(got.reshape(want.shape), want), f"layer {item.node.name}{suffix}"
            checked += want.size
    return checked


def check_model(net, binary: Path, inputs, torch_model=None) -> None:
    for x in inputs:
        want = plain(net(x))
        got = run_output(binary, x, want.dtype, want.shape)
        assert same_bits(got, want)
        if torch_model is not None:
            import torch
            theirs = torch_model(torch.from_numpy(x))
            theirs = theirs.int_repr().numpy() if theirs.is_quantized else theirs.numpy()
            assert same_bits(got, theirs)
    check_layers(net, binary, inputs[0])


# --- every Step type, on edge values -----------------------------------------------------------

EDGE_FLOATS = np.array(
    [0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 1.0000001, 254.5, 255.5, -128.5,
     3.4e38, -3.4e38, 1e-45, 2147483520.0, 2147483648.0, -2147483648.0, -2147483904.0, 1e19,
     9.3e18, -9.3e18, 4.6e18, np.inf, -np.inf, np.nan, 12345.678, -0.3, 0.3, 8388607.5,
     16777217.0], np.float32)
EDGE_INTS = np.array([0, 1, -1, 127, -128, 255, 256, 32767, -32768, 2 ** 31 - 1, -2 ** 31,
                      2 ** 31, 2 ** 31 + 5, -2 ** 31 - 7, 2 ** 24 + 1, -(2 ** 24) - 3, 1 << 40,
                      -(1 << 40), 12345, -54321, 77, -77, 2 ** 53 - 1], np.int64)

F = np.float32
STEP_CASES = [
    ("f", (rq.MultiplyFloat32("m", factor=F([0.3])), rq.AddFloat32("a", term=F([0.5])))),
    ("f", (rq.MultiplyAddFloat32("fma", factor=F([0.1]), term=F([3.0]), fused=True),)),
    ("f", (rq.MultiplyAddFloat32("mad", factor=F([0.1]), term=F([3.0]), fused=False),)),
    ("f", (rq.ClampFloat32("c", low=0.0, high=6.0),)),
    ("f", (rq.ClampFloat32("c", low=-0.0, high=0.0),)),
    ("f", (rq.MinFloat32("min", high=2147483520.0), rq.RoundHalfEvenToInt32("r"),
           rq.ClampInt("c", low=0, high=255))),
    ("f", (rq.RoundHalfEvenToInt32("r"),)),
    ("f", (rq.RoundHalfEvenToInt64("r64", nan=-5),)),
    ("f", (rq.RoundHalfEvenLrint("lrint"),)),
    ("f", (rq.MultiplyFloat64("d", factor=np.float64([0.1])),)),
    ("f", (rq.DivideFloat32("div", divisor=F([3.0])),)),
    ("f", (rq.AddFloat32("a64", term=np.float64([0.1])),)),
    ("i", (rq.ToFloat32("f"), rq.FusedMultiplyAdd("fma", a=F([0.25]), b=F([1.5])),
           rq.MultiplyFloat32("m", factor=F([0.0123])), rq.RoundHalfEvenToInt32("r"),
           rq.AddInt("z", term=3), rq.ClampInt("c", low=-128, high=127))),
    ("i", (rq.AddInt32("wrap", term=np.int64([7])),
           rq.AddInt32("wrap", term=np.int64([-2 ** 31])))),
    ("i", (rq.ScaleToFloat32("s", factor=np.float64([1e-3])),)),
    ("i", (rq.MultiplyFloat32("int times float32", factor=F([0.7])),)),
    ("i", (rq.MultiplyInt("x", factor=3), rq.RoundingShiftRightInt32("rs", shift=5))),
    ("i", (rq.RoundingShiftRightInt32("rs", shift=1),)),
    ("i", (rq.RoundingShiftRightInt32("rs", shift=35),)),
    ("i", (rq.RoundingShiftRightInt32("rs", shift=35, count_modulo_32=True),)),
    ("i", (rq.ToFloat32("f"),)),
]


def _numpy_pipeline(values, steps, out_dtype):
    with np.errstate(all="ignore"):
        value = values
        for step in steps:
            value = step.apply(value)
        return np.asarray(value).astype(out_dtype) if np.dtype(out_dtype) != np.int64 \
            else np.asarray(value).astype(np.int64)


def _pipeline_program(cases) -> str:
    parts = ["#include <float.h>\n#include <math.h>\n#include <stdint.h>\n#include <stdio.h>\n"
             "#include <string.h>\n", None, "\n"]
    main = ["int main(void) {", "    size_t i;", "    int64_t iv; float fv;",
            "    FILE *in = stdin, *out = stdout;"]
    for number, (kind, steps, out_dtype) in enumerate(cases):
        pipeline = Pipeline(f"p{number}", "0", 1, f"case {number}")
        result = emit_pipeline(steps, "x", kind, out_dtype, pipeline)
        parts += pipeline.constants
        ctype = {"f": "float", "i": "int64_t"}[kind]
        otype = {np.dtype(np.float32): "float", np.dtype(np.int64): "int64_t"}[np.dtype(out_dtype)]
        parts.append(f"static {otype} case{number}({ctype} x) {{\n    "
                     + "\n    ".join(pipeline.lines) + f"\n    return {result};\n}}\n")
        count = len(EDGE_FLOATS) if kind == "f" else len(EDGE_INTS)
        var = "fv" if kind == "f" else "iv"
        main += [f"    for (i = 0; i < {count}; ++i) {{",
                 f"        {otype} r; if (fread(&{var}, sizeof {var}, 1, in) != 1) return 1;",
                 f"        r = case{number}({var}); fwrite(&r, sizeof r, 1, out);", "    }"]
    main += ["    (void)iv; (void)fv;", "    return 0;", "}"]
    parts[1] = _runtime("".join(parts[2:]))
    return "".join(parts) + "\n".join(main) + "\n"


@needs_gcc
@pytest.mark.parametrize("cflags", [STRICT, NATIVE])
def test_every_step_type_matches_numpy_on_edge_values(tmp_path, cflags):
    cases = []
    for kind, steps in STEP_CASES:
        values = EDGE_FLOATS if kind == "f" else EDGE_INTS
        want = _numpy_pipeline(values, steps, np.float32)
        out_dtype = np.float32 if want.dtype.kind == "f" else np.int64
        cases.append((kind, steps, out_dtype))
    source = tmp_path / "steps.c"
    source.write_text(_pipeline_program(cases))
    subprocess.run([GCC, *cflags.split(), "-ffp-contract=off", "-o", str(tmp_path / "steps"),
                    str(source), "-lm"], check=True)
    stream = b"".join((EDGE_FLOATS if kind == "f" else EDGE_INTS).astype("<f4" if kind == "f"
                      else "<i8").tobytes() for kind, _, _ in cases)
    done = subprocess.run([str(tmp_path / "steps")], input=stream, capture_output=True, check=True)
    offset = 0
    for (kind, steps, out_dtype) in cases:
        values = EDGE_FLOATS if kind == "f" else EDGE_INTS
        want = _numpy_pipeline(values, steps, out_dtype)
        got = np.frombuffer(done.stdout, dtype=np.dtype(out_dtype).newbyteorder("<"),
                            count=len(values), offset=offset)
        offset += got.nbytes
        assert same_bits(got.astype(out_dtype), want), [type(s).__name__ for s in steps]


def test_unknown_step_type_is_refused_by_name():
    class Mystery(rq.Step):
        def apply(self, value):
            return value
    with pytest.raises(UnsupportedError, match="Mystery"):
        emit_pipeline((Mystery("odd"),), "x", "i", np.uint8, Pipeline("p", "0", 1, "node 'n'"))


# --- hand-built saturating GEMMs (no torch) ----------------------------------------------------


def _layer_fields(out_scale, out_zp, weight_qparams):
    attrs, arrays = qparams_to_fields(QParams.per_tensor(out_scale, out_zp, QUINT8), "output")
    weight_attrs, weight_arrays = qparams_to_fields(weight_qparams, "weight")
    attrs.update(weight_attrs)
    arrays.update(weight_arrays)
    return attrs, arrays


def saturating_graph(per_channel: bool) -> Graph:
    """quantize -> conv 3x3 pad 1 (+relu) -> depthwise 3x3 s2 -> flatten-free linear on the last
    axis -> dequantize, with weights of +-127 so raw u8 x s8 pairs exceed int16."""
    rng = np.random.default_rng(7)
    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(1 / 64, 0, QUINT8), "output")
    w1 = rng.choice(np.array([127, -128, 120, -90, 5], np.int8), size=(6, 4, 3, 3))
    w2 = rng.choice(np.array([127, -128, 100, -3], np.int8), size=(6, 1, 3, 3))
    w3 = rng.choice(np.array([127, -128, 126, -127, 1], np.int8), size=(5, 4))
    q1 = (QParams.per_channel(np.linspace(0.01, 0.02, 6), np.zeros(6, np.int64), 0, QINT8)
          if per_channel else QParams.per_tensor(0.013, 0, QINT8))
    q2 = QParams.per_tensor(0.02, 0, QINT8)
    q3 = QParams.per_tensor(0.011, 0, QINT8)
    a1, r1 = _layer_fields(0.7, 3, q1)
    a1.update(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1, relu=True)
    r1.update(weight=w1, bias=rng.normal(0, 2, 6).astype(np.float32))
    a2, r2 = _layer_fields(0.9, 128, q2)
    a2.update(stride=[2, 2], padding=[1, 1], dilation=[1, 1], groups=6, relu=False)
    r2.update(weight=w2, bias=rng.normal(0, 2, 6).astype(np.float32))
    a3, r3 = _layer_fields(0.5, 120, q3)
    a3.update(relu=False)
    r3.update(weight=w3, bias=rng.normal(0, 1, 5).astype(np.float32))
    nodes = [Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
             Node("conv1", "conv", (Ref("quant"),), a1, r1),
             Node("dw", "conv", (Ref("conv1"),), a2, r2),
             Node("fc", "linear", (Ref("dw"),), a3, r3),
             Node("dequant", "dequantize", (Ref("fc"),))]
    return Graph(["x"], nodes, [Ref("dequant")])


def saturating_inputs(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    cases = [np.full((2, 4, 7, 8), 3.98, np.float32)]  # every raw input 255: pairs saturate
    cases += [rng.uniform(2.0, 4.0, (2, 4, 7, 8)).astype(np.float32) for _ in range(count - 1)]
    return cases


@needs_gcc
@pytest.mark.parametrize("engine", ["fbgemm", "x86", "onednn"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_pair_saturation_on_avx2_is_reproduced(tmp_path, engine, per_channel):
    graph = saturating_graph(per_channel)
    net = Net(graph, engine, isa="avx2")
    exact = Net(graph, engine, isa="avx512_vnni")
    inputs = saturating_inputs()
    assert any(net.layers[name].pair_saturation for name in ("conv1", "dw", "fc"))
    # the data saturates: some layer's output differs from the exact (VNNI) sum's
    values, reference = net.run_values(inputs[0]), exact.run_values(inputs[0])
    assert not np.array_equal(plain(values["conv1"]), plain(reference["conv1"]))
    binary = build(net, inputs[0], tmp_path / "c")
    check_model(net, binary, inputs)
    for x in inputs[1:]:
        check_layers(net, binary, x)


@needs_gcc
def test_saturating_graph_at_o3_native(tmp_path):
    net = Net(saturating_graph(True), "fbgemm", isa="avx2")
    inputs = saturating_inputs()
    check_model(net, build(net, inputs[0], tmp_path / "c", NATIVE), inputs)


@needs_gcc
@pytest.mark.parametrize("engine", ENGINES)
def test_hand_built_graph_every_engine_host_isa(tmp_path, engine):
    net = Net(saturating_graph(False), engine, isa="avx512_vnni")
    inputs = saturating_inputs()
    check_model(net, build(net, inputs[0], tmp_path / "c"), inputs)


def test_export_writes_the_promised_files(tmp_path):
    net = Net(saturating_graph(False), "fbgemm", isa="avx2")
    result = export_c(net, tmp_path, (saturating_inputs(1)[0],))
    for path in (result.model_c, result.model_h, result.main_c, result.makefile, result.readme):
        assert path.exists()
    header = result.model_h.read_text()
    for needle in ("fbgemm", "avx2", qexact.__version__, "-ffp-contract=off", "(2, 4, 7, 8)"):
        assert needle in header
    source = result.model_c.read_text()
    assert "malloc" not in source and "alloc(" not in source
    assert "fmaf(" in source  # the input quantize's fused multiply-add, written out
    assert result.c_bytes == os.path.getsize(result.model_c)
    assert set(result.notes) >= {"conv1", "dw", "fc", "quant", "dequant"}
    assert "pair saturation" in result.notes["conv1"]


def test_refusals_name_every_node_at_once(tmp_path, monkeypatch):
    import qexact.export.tables as tables
    monkeypatch.setattr(tables, "describe", lambda net, name, values: None, raising=False)
    graph = saturating_graph(False)
    nodes = list(graph.nodes)
    nodes.insert(2, Node("act1", "relu", (Ref("conv1"),)))
    nodes[3] = Node("dw", "conv", (Ref("act1"),), nodes[3].attrs, nodes[3].arrays)
    nodes.insert(5, Node("act2", "relu", (Ref("fc"),)))
    nodes[-1] = Node("dequant", "dequantize", (Ref("act2"),))
    net = Net(Graph(["x"], nodes, graph.outputs), "fbgemm")
    with pytest.raises(UnsupportedError) as raised:
        export_c(net, tmp_path, (saturating_inputs(1)[0],))
    assert "'act1'" in str(raised.value) and "'act2'" in str(raised.value)


def test_two_inputs_are_refused(tmp_path):
    graph = saturating_graph(False)
    net = Net(Graph(["x", "y"], graph.nodes, graph.outputs), "fbgemm")
    with pytest.raises(UnsupportedError, match="one input"):
        export_c(net, tmp_path, (saturating_inputs(1)[0], np.zeros(3, np.float32)))


# --- golden directories ------------------------------------------------------------------------


@needs_gcc
def test_golden_mode_reports_ok_and_the_first_difference(tmp_path):
    from qexact.export.golden import export_golden
    from qexact.serialization import read_safetensors, write_safetensors
    net = Net(saturating_graph(True), "onednn", isa="avx2")
    inputs = saturating_inputs()
    binary = build(net, inputs[0], tmp_path / "c")
    golden = tmp_path / "golden"
    export_golden(net, np.stack(inputs), golden)
    done = subprocess.run([str(binary), "--golden", str(golden)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("quant", "conv1", "dw", "fc", "dequant"):
        assert f"{name}: ok" in done.stdout
    metadata, arrays = read_safetensors(golden / "golden.safetensors")
    arrays = {key: np.array(value) for key, value in arrays.items()}
    arrays["dw.output"].reshape(-1)[len(inputs) * 0 + 37] ^= 1   # case 0, element 37
    write_safetensors(golden / "golden.safetensors", arrays, metadata)
    done = subprocess.run([str(binary), "--golden", str(golden)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "dw: first difference: case 0, element 37" in done.stdout
    assert "fc: ok" in done.stdout
    np.save(tmp_path / "x.npy", inputs[0])   # a .npy where raw float32 goes: said so
    done = subprocess.run([str(binary), str(tmp_path / "x.npy"), str(tmp_path / "y.bin")],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "is a .npy file" in done.stderr and "tofile" in done.stderr


# --- the test models (torch) -------------------------------------------------------------------

LINEAR_MODELS = ("forum_model", "multilayer_model", "no_bias_model", "per_tensor_model")
CNN_MODELS = ("resnet", "mobilenet_v2", "mobilenet_v3", "shufflenet_v2", "detector")


def _torch_model(name: str, engine: str):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    if name in CNN_MODELS:
        from support.cnn_models import build_cnn
        model, shape = build_cnn(name, engine)
    else:
        from support import models
        model, shape = models.build(getattr(models, name), engine)
    torch.backends.quantized.engine = engine
    generator = torch.Generator().manual_seed(5)
    inputs = [(torch.randn(shape, generator=generator) * scale).numpy()
              for scale in (1.0, 2.0, 4.0)]
    net = qexact.from_torch(model, example_inputs=(torch.from_numpy(inputs[0]),), engine=engine)
    return model, net, inputs


_BUILT: dict = {}


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build each (model, engine, isa, flags) once per session."""
    def get(name, engine, cflags=STRICT, isa=None):
        key = (name, engine, cflags, isa)
        if key not in _BUILT:
            model, net, inputs = _torch_model(name, engine)
            if isa is not None:
                net = Net(net.graph, engine, isa=isa)
            directory = tmp_path_factory.mktemp(f"{name}_{engine}_{isa}")
            result = export_c(net, directory, (inputs[0],))
            _BUILT[key] = (model, net, inputs, make(directory, cflags), result)
        return _BUILT[key]
    return get


def _check_torch(built, name, engine, cflags=STRICT, isa=None):
    model, net, inputs, binary, result = built(name, engine, cflags, isa)
    if isa is None:
        import torch
        torch.backends.quantized.engine = engine
    with np.errstate(all="ignore"):
        check_model(net, binary, inputs, model if isa is None else None)
    return result


@needs_gcc
@pytest.mark.torch
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["multilayer_model", "resnet"])
def test_models_short(built, name, engine):
    _check_torch(built, name, engine)


@needs_gcc
@pytest.mark.torch
def test_quantized_output_model(built):
    """No DeQuantStub: OUT.bin holds the output's integers, as ``net(x)`` gives them."""
    _check_torch(built, "forum_model_quantized_output", "qnnpack")


@needs_gcc
@pytest.mark.torch
def test_model_o3_native(built):
    _check_torch(built, "resnet", "x86", NATIVE)


@needs_gcc
@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("cflags", [STRICT, NATIVE])
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", LINEAR_MODELS + CNN_MODELS)
def test_models_full(built, name, engine, cflags):
    _check_torch(built, name, engine, cflags)


@needs_gcc
@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fbgemm", "x86", "onednn"])
@pytest.mark.parametrize("name", LINEAR_MODELS + CNN_MODELS)
def test_models_avx2(built, name, engine):
    _check_torch(built, name, engine, STRICT, "avx2")


# --- integer-only mode -------------------------------------------------------------------------


def _synthetic_integer(net, name):
    """An arbitrary integer requantization of Interface B's form (not the engine's): the C must
    compute exactly ``clamp(floor((acc * M + B) / 2**s), low, high)`` with it."""
    from qexact.export.integer import IntegerRequantization
    params = net.layers[name]
    channels = params.weight.shape[0]
    rng = np.random.default_rng(abs(hash(name)) % 2 ** 32)
    dtype = params.output_qparams.dtype
    return IntegerRequantization(
        multiplier=rng.integers(1, 2 ** 24, channels).astype(np.int64),
        offset=rng.integers(-2 ** 40, 2 ** 40, channels).astype(np.int64),
        shift=rng.integers(20, 40, channels).astype(np.int64),
        low=dtype.qmin,
        high=dtype.qmax, acc_low=None, acc_high=None,
        certified=np.zeros(channels, bool), proof="synthetic", worst_case=99,
        mismatch_rate=0.5)


def _integer_layer(params, acc: np.ndarray, integer) -> np.ndarray:
    value = (acc.astype(np.int64) * integer.multiplier + integer.offset) >> integer.shift
    return np.clip(value, integer.low, integer.high)


@needs_gcc
def test_integer_only_computes_the_given_requantization(tmp_path, monkeypatch):
    """Every layer of the integer-only C equals, on the C's own inputs to it: for a GEMM layer,
    ``clamp((acc * M + B) >> s)`` of the kernel's accumulator; for the others, qexact's op."""
    import qexact.export.integer as integer_module
    from qexact.ops.conv import channels_last_output, conv_accumulator
    from qexact.ops.linear import linear_accumulator
    from qexact.qparams import QuantizedArray
    monkeypatch.setattr(integer_module, "integer_requantization", _synthetic_integer,
                        raising=False)
    net = Net(saturating_graph(True), "fbgemm", isa="avx2")
    x = saturating_inputs(2)[1]
    result = export_c(net, tmp_path / "c", (x,), integer_only=True)
    assert result.integer_only and set(result.uncertified) == {"conv1", "dw", "fc"}
    assert "NOT certified" in result.readme.read_text()
    dumped = dump_layers(make(tmp_path / "c", STRICT), x)
    values = net.run_values(x)
    for item in net._prepared:
        name = item.node.name
        want_type = plain(values[name]).dtype
        got = np.fromfile(dumped / f"{name}.bin", dtype=want_type).reshape(
            plain(values[name]).shape)
        source = item.node.inputs[0].name
        if source == "x":
            arg = x
        else:
            reference = values[source]
            arg = QuantizedArray(np.fromfile(dumped / f"{source}.bin", reference.values.dtype)
                                 .reshape(reference.values.shape), reference.qparams)
        if item.node.op == "conv":
            acc = conv_accumulator(arg.values, item.params)
            shape = (arg.values.shape[0],) + got.shape[2:]
            want = channels_last_output(shape, False)(_integer_layer(
                item.params, acc, _synthetic_integer(net, name)))
        elif item.node.op == "linear":
            rows = arg.values.reshape(-1, arg.values.shape[-1])
            want = _integer_layer(item.params, linear_accumulator(rows, item.params),
                                  _synthetic_integer(net, name)).reshape(got.shape)
        else:
            want = plain(item.definition.run(item.params, [arg]))
        assert same_bits(got, want.astype(want_type)), name


@needs_gcc
@pytest.mark.parametrize("engine", ENGINES)
def test_integer_only_equals_qexact_where_certified(tmp_path, engine):
    """With H-int's certified integer requantization: a model whose GEMM layers are all
    certified gives qexact's integers exactly."""
    integer_module = pytest.importorskip("qexact.export.integer")
    if not hasattr(integer_module, "integer_requantization"):
        pytest.skip("qexact.export.integer.integer_requantization is not there yet")
    net = Net(saturating_graph(False), engine, isa="avx512_vnni")
    inputs = saturating_inputs()
    result = export_c(net, tmp_path / "c", (inputs[0],), integer_only=True)
    binary = make(tmp_path / "c", STRICT)
    out = dump_layers(binary, inputs[0])
    values = net.run_values(inputs[0])
    for item in net._prepared:
        name = item.node.name
        if name in result.uncertified:
            break  # downstream layers may differ from here on
        want = plain(values[name])
        got = np.fromfile(out / f"{name}.bin", dtype=want.dtype).reshape(want.shape)
        assert same_bits(got, want), name


@needs_gcc
@pytest.mark.torch
@pytest.mark.parametrize("name", ["resnet", "shufflenet_v2"])
def test_golden_directory_of_a_cnn(built, tmp_path, name):
    """``model_main --golden`` on ``export_golden``'s directory: every layer ok (tuple-valued
    nodes such as chunk included, under their ``.output.<k>`` keys)."""
    from qexact.export.golden import export_golden
    model, net, inputs, binary, result = built(name, "fbgemm")
    export_golden(net, np.stack(inputs), tmp_path / "golden")
    done = subprocess.run([str(binary), "--golden", str(tmp_path / "golden")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert "first difference" not in done.stdout and "missing" not in done.stdout


def _check_until_uncertified(net, binary: Path, x: np.ndarray, uncertified) -> int:
    """The integer-only C equals qexact on every layer before the first uncertified one."""
    out = dump_layers(binary, x)
    values = net.run_values(x)
    checked = 0
    for item in net._prepared:
        name = item.node.name
        if name in uncertified:
            break
        value = values[name]
        if not hasattr(value, "values") and not (isinstance(value, np.ndarray) and value.ndim):
            continue
        want = plain(value)
        got = np.fromfile(out / f"{name}.bin", dtype=want.dtype).reshape(want.shape)
        assert same_bits(got, want), name
        checked += 1
    return checked


@needs_gcc
@pytest.mark.torch
@pytest.mark.parametrize("name, engine", [
    ("resnet", "qnnpack"),
    ("resnet", "onednn"),        # 1 of 7 layers affine, 6 by the threshold table
    pytest.param("mobilenet_v2", "fbgemm", marks=pytest.mark.slow),
    pytest.param("detector", "qnnpack", marks=pytest.mark.slow),
    pytest.param("shufflenet_v2", "onednn", marks=pytest.mark.slow)])
def test_integer_only_model(tmp_path, name, engine):
    """Integer-only C: every GEMM layer exact (a certified multiplier and shift, or the threshold
    table), so the model equals PyTorch and qexact on every layer; where a layer is not exact
    (none of these), every layer up to it equals qexact."""
    model, net, inputs = _torch_model(name, engine)
    result = export_c(net, tmp_path / "c", (inputs[0],), integer_only=True)
    binary = make(tmp_path / "c", STRICT)
    assert "integer-only" in result.model_h.read_text()
    for layer, text in result.uncertified.items():
        assert f"`{layer}`: {text}" in result.readme.read_text()
    if not result.uncertified:
        import torch
        torch.backends.quantized.engine = engine
        check_model(net, binary, inputs, model)
    else:
        for x in inputs:
            assert _check_until_uncertified(net, binary, x, result.uncertified) > 0


# --- random GEMM layers (hypothesis, derandomized by tests/conftest.py) ------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def random_conv_graphs(draw):
    """quantize -> conv (random geometry, groups, per-tensor/per-channel, saturating weights
    half the time) -> linear on the last axis -> dequantize; and an input of matching shape."""
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    groups = draw(st.sampled_from([1, 2]))
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 1)))
    dilation = (draw(st.integers(1, 2)), 1)
    height, width = draw(st.integers(5, 8)), draw(st.integers(5, 8))
    saturating = draw(st.booleans())
    choices = np.array([127, -128, 126, -127, 3] if saturating else list(range(-20, 21)), np.int8)
    w1 = rng.choice(choices, size=(out_channels, in_channels // groups) + kernel)
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    w2 = rng.choice(choices, size=(3, out_w))
    per_channel = draw(st.booleans())
    q1 = (QParams.per_channel(rng.uniform(0.002, 0.02, out_channels),
                              np.zeros(out_channels, np.int64), 0, QINT8)
          if per_channel else QParams.per_tensor(float(rng.uniform(0.002, 0.02)), 0, QINT8))
    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(float(rng.uniform(0.005, 0.05)),
                                                          int(rng.integers(0, 256)), QUINT8),
                                       "output")
    a1, r1 = _layer_fields(float(rng.uniform(0.05, 0.5)), int(rng.integers(0, 256)), q1)
    a1.update(stride=list(stride), padding=list(padding), dilation=list(dilation), groups=groups,
              relu=draw(st.booleans()))
    r1.update(weight=w1, bias=rng.normal(0, 3, out_channels).astype(np.float32))
    a2, r2 = _layer_fields(float(rng.uniform(0.1, 1.0)), int(rng.integers(0, 256)),
                           QParams.per_tensor(float(rng.uniform(0.002, 0.02)), 0, QINT8))
    a2.update(relu=False)
    r2.update(weight=w2, bias=rng.normal(0, 3, 3).astype(np.float32))
    nodes = [Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
             Node("conv", "conv", (Ref("quant"),), a1, r1),
             Node("fc", "linear", (Ref("conv"),), a2, r2),
             Node("dequant", "dequantize", (Ref("fc"),))]
    x = rng.uniform(-3, 8, (1, in_channels, height, width)).astype(np.float32)
    return Graph(["x"], nodes, [Ref("dequant")]), x


@needs_gcc
@settings(max_examples=6)
@given(random_conv_graphs())
def test_random_gemm_layers_on_avx2_and_host(case):
    import tempfile
    graph, x = case
    for engine, isa in (("fbgemm", "avx2"), ("onednn", "avx2"), ("qnnpack", "avx512_vnni")):
        try:
            net = Net(graph, engine, isa=isa)
            net(x)
        except qexact.QexactError:
            continue  # a geometry this engine refuses
        with tempfile.TemporaryDirectory() as directory:
            binary = build(net, x, Path(directory))
            check_layers(net, binary, x)


@needs_gcc
@pytest.mark.torch
def test_integer_only_affine_form_lists_what_is_not_exact(tmp_path):
    """``integer_only="affine"``: a multiplier and shift everywhere; the layers where none is
    certified are listed (README, ``uncertified``) and are the ones the threshold form makes
    exact; the layers before the first of them equal qexact."""
    model, net, inputs = _torch_model("resnet", "onednn")
    result = export_c(net, tmp_path / "c", (inputs[0],), integer_only="affine")
    assert result.uncertified and "_thr" not in result.model_c.read_text()
    binary = make(tmp_path / "c", STRICT)
    assert _check_until_uncertified(net, binary, inputs[0], result.uncertified) > 0
    exact = export_c(net, tmp_path / "t", (inputs[0],), integer_only=True)
    assert not exact.uncertified and "_thr" in exact.model_c.read_text()
