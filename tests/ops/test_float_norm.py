"""Float32 LayerNorm (nn.LayerNorm / F.layer_norm left float, ops/float_normalization.py) bit for
bit against ATen's CPU kernel: RowwiseMoments' 8-lane Welford chunks, cascade merge, scalar tail
and lane merge, then the second pass; and quantized::layer_norm as FX writes it for F.layer_norm.
Live tests run at this host's ATen capability, the lower ones in a subprocess with
ATEN_CPU_CAPABILITY."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

import qexact
from qexact.engines import ATEN_CAPABILITIES, detect_aten_capability
from qexact.errors import ShapeError, UnsupportedError
from qexact.ops.float_normalization import float_layer_norm, prepare_float_layer_norm

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn


def _torch_layer_norm(x, shape, weight, bias, eps):
    def tensor(value):
        return None if value is None else torch.from_numpy(value)
    return F.layer_norm(torch.from_numpy(x), shape, tensor(weight), tensor(bias), eps).numpy()


def _case(rng, rows, size, affine, scale=None, offset=None):
    scale = rng.uniform(0.01, 100) if scale is None else scale
    offset = rng.uniform(-50, 50) if offset is None else offset
    x = (rng.standard_normal((rows, size)) * scale + offset).astype(np.float32)
    weight = rng.standard_normal(size).astype(np.float32) if affine & 1 else None
    bias = rng.standard_normal(size).astype(np.float32) if affine & 2 else None
    return x, weight, bias


# Transformer widths (8..768, DeiT/ViT/BERT) and the kernel's boundaries: 8-float vectors,
# 16-vector chunks (128), cascade depths (256, 384, 2048+), scalar tails.
SIZES = (1, 3, 7, 8, 9, 15, 16, 17, 64, 96, 127, 128, 129, 192, 255, 256, 257, 384, 512, 768)


@pytest.mark.parametrize("affine", [0, 1, 2, 3], ids=["none", "weight", "bias", "both"])
def test_transformer_sizes_vs_torch(engine, affine, report):
    rng = np.random.default_rng(affine)
    torch.set_num_threads(1)
    for size in SIZES:
        rows = int(rng.integers(1, 201))
        x, weight, bias = _case(rng, rows, size, affine)
        for eps in (1e-5, 1e-6, 1e-12):
            params = prepare_float_layer_norm((size,), weight, bias, eps, engine=engine)
            assert_bitexact(float_layer_norm(x, params),
                            _torch_layer_norm(x, (size,), weight, bias, eps),
                            f"{engine} N={size} rows={rows} affine={affine} eps={eps}")
            report[f"float layer_norm {engine}"]["elements"] += x.size


@pytest.mark.slow
def test_long_rows_deep_cascade_vs_torch():
    """Rows long enough for cascade depths up to 7 (8200 = 1025 vectors, 65 chunks)."""
    rng = np.random.default_rng(7)
    for size in (2047, 2048, 2049, 4096, 4100, 8200, 16392):
        for affine in range(4):
            x, weight, bias = _case(rng, 5, size, affine)
            params = prepare_float_layer_norm((size,), weight, bias, 1e-5, engine="fbgemm")
            assert_bitexact(float_layer_norm(x, params),
                            _torch_layer_norm(x, (size,), weight, bias, 1e-5), f"N={size}")


def test_multi_dim_normalized_shape_and_threads():
    """normalized_shape over several dims flattens to one row; rows are independent, so the
    thread count changes nothing (parallel_for over rows)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 5, 4, 12)) * 3 + 1).astype(np.float32)
    weight = rng.standard_normal((4, 12)).astype(np.float32)
    bias = rng.standard_normal((4, 12)).astype(np.float32)
    params = prepare_float_layer_norm((4, 12), weight, bias, 1e-5, engine="x86")
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            expected = F.layer_norm(torch.from_numpy(x), (4, 12), torch.from_numpy(weight),
                                    torch.from_numpy(bias), 1e-5).numpy()
            assert_bitexact(float_layer_norm(x, params), expected, f"threads={threads}")
    finally:
        torch.set_num_threads(previous)


def test_edges_vs_torch():
    """Constant rows (var 0; eps 0 gives inf * 0 = NaN), signed zeros, huge offsets (the
    Welford streams' cancellation), NaN and infinities."""
    rows = [np.full(40, 3.0), np.full(40, -0.0), np.zeros(40), np.r_[np.full(39, 1e6), 1e6 + 1],
            np.linspace(-1e30, 1e30, 40), np.r_[np.ones(20), np.nan, np.ones(19)],
            np.r_[np.ones(20), np.inf, np.ones(19)], np.r_[np.full(20, -np.inf), np.ones(20)],
            np.r_[np.full(39, 1e-30), -1e-30], np.arange(40) * 1e-3 + 12345.0]
    x = np.stack(rows).astype(np.float32)
    rng = np.random.default_rng(4)
    weight = rng.standard_normal(40).astype(np.float32)
    weight[::7] = -0.0
    bias = rng.standard_normal(40).astype(np.float32)
    for eps in (1e-5, 0.0):
        for w, b in ((None, None), (weight, None), (None, bias), (weight, bias)):
            params = prepare_float_layer_norm(40, w, b, eps, engine="fbgemm")
            with np.errstate(all="ignore"):
                expected = _torch_layer_norm(x, (40,), w, b, eps)
            assert_bitexact(float_layer_norm(x, params), expected,
                            f"eps={eps} weight={w is not None} bias={b is not None}")


@given(rows=st.integers(1, 12), size=st.integers(1, 300), affine=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1), magnitude=st.sampled_from([1e-6, 1.0, 1e3, 1e8]),
       eps=st.sampled_from([1e-5, 1e-6, 1e-3]))
@settings(max_examples=120, deadline=None)
def test_random_vs_torch(rows, size, affine, seed, magnitude, eps):
    rng = np.random.default_rng(seed)
    x, weight, bias = _case(rng, rows, size, affine, scale=magnitude,
                            offset=rng.uniform(-3, 3) * magnitude)
    params = prepare_float_layer_norm((size,), weight, bias, eps, engine="fbgemm")
    assert_bitexact(float_layer_norm(x, params), _torch_layer_norm(x, (size,), weight, bias, eps),
                    f"rows={rows} N={size} affine={affine}")


SCRIPT = """
import sys, numpy as np, torch, qexact
from qexact.ops.float_normalization import float_layer_norm, prepare_float_layer_norm
torch.set_num_threads(1)
engine = qexact.get_engine("fbgemm", aten_capability=sys.argv[1])
rng = np.random.default_rng(6)
bad = 0
for size in (3, 8, 9, 100, 768, 2049):
    for affine in range(4):
        x = (rng.standard_normal((31, size)) * 7 + 2).astype(np.float32)
        w = rng.standard_normal(size).astype(np.float32) if affine & 1 else None
        b = rng.standard_normal(size).astype(np.float32) if affine & 2 else None
        ours = float_layer_norm(x, prepare_float_layer_norm(size, w, b, 1e-5, engine=engine))
        theirs = torch.nn.functional.layer_norm(torch.from_numpy(x), (size,),
            None if w is None else torch.from_numpy(w), None if b is None else torch.from_numpy(b),
            1e-5).numpy()
        bad += int((ours.view(np.uint32) != theirs.view(np.uint32)).sum())
print(bad, prepare_float_layer_norm(8, None, None, 1e-5, engine=engine).kernel.aten_capability)
"""


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_lower_aten_capability_subprocess(capability):
    """The default build (no FMA: every multiply-add rounds twice) and AVX2, in a process
    started with ATEN_CPU_CAPABILITY."""
    if ATEN_CAPABILITIES.index(capability) < ATEN_CAPABILITIES.index(detect_aten_capability()):
        pytest.skip(f"this CPU cannot run ATen's {capability} build")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", SCRIPT, capability], capture_output=True,
                         text=True, env=env, check=True).stdout.split()
    assert out == ["0", capability]


def test_refusals():
    params = prepare_float_layer_norm((8,), None, None, 1e-5, engine="fbgemm")
    with pytest.raises(ShapeError):
        float_layer_norm(np.zeros((2, 7), np.float32), params)
    with pytest.raises(ShapeError):
        float_layer_norm(np.zeros((2, 8), np.float64), params)
    with pytest.raises(ShapeError):
        prepare_float_layer_norm((8,), np.ones(8), None, 1e-5, engine="fbgemm")  # float64
    with pytest.raises(UnsupportedError):
        qexact.get_engine("fbgemm").kernel("float_normalization", "instance_norm")


# --- Models through from_torch -------------------------------------------------------------------


class _Block(nn.Module):
    """A transformer-style block: quantized Linear, then LayerNorm kept float (module and
    functional), then a quantized Linear again."""

    def __init__(self, width=48):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc1 = nn.Linear(width, width)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.norm = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.quant2 = torch.ao.quantization.QuantStub()
        self.fc2 = nn.Linear(width, 8)
        self.dequant2 = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.dequant(self.fc1(self.quant(x)))
        x = self.norm2(self.norm(x))
        x = F.layer_norm(x, (48,), None, None, 1e-5)
        return self.dequant2(self.fc2(self.quant2(x)))


def test_fx_float_layer_norm_model(engine, tmp_path):
    """FX with qconfig None for the LayerNorms and F.layer_norm: they run float between a
    dequantize and a quantize; the model saves and loads."""
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.manual_seed(0)
    model = _Block().eval()
    mapping = (QConfigMapping().set_global(get_default_qconfig(engine))
               .set_object_type(nn.LayerNorm, None).set_object_type(F.layer_norm, None))
    x = torch.randn(3, 10, 48) * 4
    prepared = prepare_fx(model, mapping, (x,))
    for _ in range(3):
        prepared(torch.randn(3, 10, 48) * 4)
    converted = convert_fx(prepared)
    net = qexact.from_torch(converted, (x,))
    assert sum(node.op == "float_layer_norm" for node in net.graph.nodes) == 3
    expected = converted(x).numpy()
    assert_bitexact(net(x.numpy()), expected, engine)
    path = tmp_path / "block"
    qexact.save(net, path)
    assert_bitexact(qexact.load(path)(x.numpy()), expected, f"{engine} loaded")


def test_fx_quantized_functional_layer_norm(engine):
    """FX quantizes F.layer_norm as torch.ops.quantized.layer_norm (scale and zero point as
    get_attr constants)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(40, 40)

        def forward(self, x):  # a weight buffer would be a get_attr tensor: refused (a Ref)
            return F.layer_norm(self.fc(x), (40,), None, None, 1e-5)

    torch.manual_seed(1)
    x = torch.randn(5, 40)
    prepared = prepare_fx(Model().eval(), get_default_qconfig_mapping(engine), (x,))
    prepared(x)
    converted = convert_fx(prepared)
    if "quantized.layer_norm" not in converted.code:
        pytest.skip("this torch does not quantize F.layer_norm")
    net = qexact.from_torch(converted, (x,))
    assert any(node.op == "layer_norm" for node in net.graph.nodes)
    assert_bitexact(net(x.numpy()), converted(x).numpy(), engine)


def test_explain_names_the_moments():
    torch.manual_seed(2)
    model = nn.LayerNorm(24).eval()
    params = prepare_float_layer_norm(24, model.weight.detach().numpy(),
                                      model.bias.detach().numpy(), 1e-5, engine="fbgemm")
    x = np.random.default_rng(0).standard_normal((2, 24)).astype(np.float32)
    from qexact.trace import observe

    with observe() as trace:
        float_layer_norm(x, params)
    assert [event.label for event in trace.events] == ["layer_norm (float): row moments",
                                                        "layer_norm (float): output"]
