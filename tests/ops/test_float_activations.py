"""SiLU and sigmoid on float32 tensors (FX leaves SiLU between a dequantize and a quantize;
detection heads apply sigmoid after a DeQuantStub): bit-exact with ATen's float kernels, SIMD body
(SLEEF exp) and scalar tail (glibc expf) alike, at the engine's ATen capability. Live tests run
at this host's capability; lower ones run in a subprocess with ATEN_CPU_CAPABILITY, and the
AVX512 build is also held by the avx512_vnni recording (any host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines import ATEN_CAPABILITIES, detect_aten_capability
from qexact.engines.aten import float_elementwise_numerics
from qexact.ops.float_activations import FLOAT_KERNELS, float_kernel, prepare_float_kernel

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn


RECORDING = Path(__file__).parents[1] / "data" / "recordings" / "avx512_vnni" / "float_aten__aten"


def _params(engine="fbgemm", threads=None, capability=None, function="silu"):
    return prepare_float_kernel(function, qexact.get_engine(engine, aten_capability=capability),
                                threads or torch.get_num_threads())


def _numerics(params):
    """The float split of the kernel's two lambdas (``LambdaPlacement.numerics``)."""
    return params.kernel.placement.numerics


@pytest.mark.parametrize("capability, lanes", [("avx512", 16), ("avx2", 8), ("default", 0)])
def test_float_numerics_by_capability(capability, lanes):
    """sigmoid and silu have AVX512 builds (ALSO_REGISTER_AVX512_DISPATCH): 16 float lanes."""
    engine = qexact.get_engine("fbgemm", aten_capability=capability)
    for function in ("silu", "sigmoid"):
        numerics = float_elementwise_numerics(engine, function)
        assert (numerics.capability, numerics.lanes) == (capability, lanes)
        assert numerics.body_unit == 2 * lanes


TORCH_FUNCTIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}


@pytest.mark.parametrize("function", ["silu", "sigmoid"])
def test_float_kernel_random_vs_torch(function):
    rng = np.random.default_rng(0 if function == "silu" else 1)
    elements = 0
    for case in range(500):
        rank = int(rng.integers(1, 5))
        shape = (int(rng.integers(1, 300)),) if rank == 1 else \
            tuple(int(s) for s in rng.integers(1, 12, rank))
        x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-1, 1.5)).astype(np.float32)
        if case % 10 == 0:
            x.flat[::7] = rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 88.7, -104.5, 1e-40])
        t = torch.from_numpy(x)
        if rank == 4 and case % 3 == 0:
            t = t.contiguous(memory_format=torch.channels_last)
        ours = float_kernel(t.numpy(), _params(function=function))
        assert_bitexact(ours, TORCH_FUNCTIONS[function](t).numpy(), f"{function} {shape}")
        assert tuple(s // 4 for s in ours.strides) == t.stride()
        elements += x.size
    assert elements > 50_000


@pytest.mark.parametrize("function", ["silu", "sigmoid"])
@pytest.mark.parametrize("threads", [1, 2])
def test_float_kernel_large_tensor_chunks(threads, function):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = (np.random.default_rng(threads).standard_normal(70_001) * 8).astype(np.float32)
        expected = TORCH_FUNCTIONS[function](torch.from_numpy(x)).numpy()
        assert_bitexact(float_kernel(x, _params(threads=threads, function=function)), expected,
                        f"{function}, {threads} threads")
    finally:
        torch.set_num_threads(previous)


def test_float_kernel_lengths_around_the_split():
    """Every length up to 300 (the body/tail split at multiples of 16 or 32 floats), at the host's
    capability."""
    assert _numerics(_params()).capability == detect_aten_capability()
    rng = np.random.default_rng(11)
    for function in ("silu", "sigmoid"):
        for n in range(1, 301):
            x = (rng.standard_normal(n) * 8).astype(np.float32)
            expected = TORCH_FUNCTIONS[function](torch.from_numpy(x)).numpy()
            assert_bitexact(float_kernel(x, _params(threads=1, function=function)), expected,
                            f"{function} {n}")


def _discriminating(function: str, n: int, seed: int) -> np.ndarray:
    """``n`` float32 inputs on each of which the SIMD body (SLEEF exp) and the scalar tail (glibc
    expf) give different bits, so torch's output tells which lambda ran every element."""
    from qexact.float_math import glibc_expf, sleef_expf_u10

    formula = FLOAT_KERNELS[function][0]
    rng = np.random.default_rng(seed)
    candidates = (rng.standard_normal(4 * n) * 8).astype(np.float32)
    with np.errstate(all="ignore"):
        simd = formula(candidates, sleef_expf_u10).astype(np.float32)
        scalar = formula(candidates, glibc_expf).astype(np.float32)
    pool = candidates[simd.view(np.uint32) != scalar.view(np.uint32)]
    return rng.choice(pool, n)


# Lengths over the grain (32768) whose per-thread chunks end off the SIMD unit: at::parallel_for
# (aten/src/ATen/ParallelOpenMP.h ``invoke_parallel``) cuts [0, n) into min(T, ceil(n / 32768))
# chunks of ceil(n / chunks); each chunk has its own body (multiples of 32 floats on AVX512, 16
# on AVX2) and scalar tail. 66001 on 2 threads: chunks [0, 33001), [33001, 66001), tails
# [32992, 33001) and [65993, 66001) on AVX512 (the conformance case float_aten c0004, seed 101).
THREAD_CHUNK_LENGTHS = (32769, 65537, 66001, 98305, 100003, 120000, 131073)


@pytest.mark.parametrize("function", ["silu", "sigmoid"])
@pytest.mark.parametrize("threads", [2, 3])
def test_float_kernel_thread_chunks_vs_torch(threads, function):
    """Each parallel chunk's own SIMD body and scalar tail, at the host's capability, on inputs
    where every element shows which lambda ran; the single-thread split must not fit (the
    boundaries matter on these lengths)."""
    params = _params(threads=threads, function=function)
    assert _numerics(params).capability == detect_aten_capability()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    serial_fits = []
    try:
        for n in THREAD_CHUNK_LENGTHS:
            x = _discriminating(function, n, seed=n + threads)
            theirs = TORCH_FUNCTIONS[function](torch.from_numpy(x)).numpy().view(np.uint32)
            ours = float_kernel(x, params).view(np.uint32)
            assert np.array_equal(ours, theirs), \
                f"{function} {n} on {threads} threads: {int((ours != theirs).sum())} elements differ"
            serial = float_kernel(x, _params(threads=1, function=function)).view(np.uint32)
            if np.array_equal(serial, theirs):
                serial_fits.append(n)
    finally:
        torch.set_num_threads(previous)
    # 120000 on 2 or 3 threads: chunks of 60000 / 40000 floats, whole SIMD units, no chunk tail
    if _numerics(params).body_unit:
        assert set(serial_fits) <= {120000}, serial_fits


SCRIPT = r"""
import sys
import numpy as np, torch, qexact
from qexact.ops.float_activations import float_kernel, prepare_float_kernel
function = sys.argv[1]
torch_function = {"silu": torch.nn.functional.silu, "sigmoid": torch.sigmoid}[function]
engine = qexact.get_engine("fbgemm")
rng = np.random.default_rng(5)
bad = 0
for n, threads in [(n, 1) for n in range(1, 130)] + [(4099, 1), (70001, 2)]:
    torch.set_num_threads(threads)
    x = (rng.standard_normal(n) * 8).astype(np.float32)
    ours = float_kernel(x, prepare_float_kernel(function, engine, threads))
    theirs = torch_function(torch.from_numpy(x)).numpy()
    bad += int((ours.view(np.uint32) != theirs.view(np.uint32)).sum())
# per-thread chunks: inputs where SLEEF and glibc differ, so every element shows its lambda;
# 70001 / 2 and 100003 / 3 leave chunk tails of 16..31 floats (scalar on AVX2 only in part)
from qexact.float_math import glibc_expf, sleef_expf_u10
from qexact.ops.float_activations import FLOAT_KERNELS
formula = FLOAT_KERNELS[function][0]
candidates = (rng.standard_normal(2_000_000) * 8).astype(np.float32)
with np.errstate(all="ignore"):
    differ = (formula(candidates, sleef_expf_u10).astype(np.float32).view(np.uint32)
              != formula(candidates, glibc_expf).astype(np.float32).view(np.uint32))
pool = candidates[differ]
for n, threads in [(66001, 2), (70001, 2), (32769, 3), (98305, 3), (100003, 3), (131073, 3)]:
    torch.set_num_threads(threads)
    x = rng.choice(pool, n)
    ours = float_kernel(x, prepare_float_kernel(function, engine, threads))
    theirs = torch_function(torch.from_numpy(x)).numpy()
    bad += int((ours.view(np.uint32) != theirs.view(np.uint32)).sum())
print(bad, prepare_float_kernel(function, engine, 1).kernel.placement.numerics.capability)
"""


@pytest.mark.parametrize("function", ["silu", "sigmoid"])
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_float_kernel_lower_aten_capability_subprocess(capability, function):
    """ATEN_CPU_CAPABILITY can only lower what ATen dispatches to; qexact follows it."""
    if ATEN_CAPABILITIES.index(capability) < ATEN_CAPABILITIES.index(detect_aten_capability()):
        pytest.skip(f"this CPU cannot run ATen's {capability} build")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", SCRIPT, function], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    assert out == ["0", capability]


@pytest.mark.parametrize("function", ["silu", "sigmoid"])
def test_float_kernel_matches_avx512_recording(function):
    """The avx512_vnni recording (torch 2.13.0, AMD EPYC, capability AVX512): every case's
    ``y_sigmoid`` / ``y_silu`` with the AVX512 build (32-float body), on any host. ``y_exp`` is
    MKL's and has no emulation (``ops.float_activations.FLOAT_KERNELS``)."""
    cases = json.loads(RECORDING.with_suffix(".json").read_text())["cases"]
    arrays = np.load(RECORDING.with_suffix(".npz"))
    engine = qexact.get_engine("fbgemm", "avx512_vnni", aten_capability="avx512")
    elements = 0
    for name, case in cases.items():
        x = arrays[f"{name}/x"]
        params = prepare_float_kernel(function, engine, case["num_threads"])
        assert _numerics(params).body_unit == 32
        assert_bitexact(float_kernel(x, params), arrays[f"{name}/y_{function}"], f"{name} {case}")
        elements += x.size
    assert elements > 250_000


@pytest.mark.parametrize("capability, unit", [("avx512", 32), ("avx2", 16), ("default", 0)])
def test_explain_replays_the_run(capability, unit):
    """Explain's last stage is the output element, and names the lambda that computed it (SLEEF
    in the SIMD body, glibc in the scalar tail); hardswish, hardsigmoid and leaky_relu have one
    path. Float kernels run between dequantize and quantize, so only their graph op explains."""
    from qexact.ops.activations import ActivationOp
    from qexact.ops.float_activations import SiluOp

    engine = qexact.get_engine("fbgemm", aten_capability=capability)
    rng = np.random.default_rng(unit)
    x = (rng.standard_normal(45) * 6).astype(np.float32)
    for function in ("silu", "sigmoid", "hardswish", "hardsigmoid", "leaky_relu"):
        params = prepare_float_kernel(function, engine, 1, slope=0.3)
        op = SiluOp if function == "silu" else ActivationOp
        result = op.run(params, [x])
        for index in [(0,), (31,), (32,), (44,)]:
            stages, upstream = op.explain(params, [x], result, index)
            assert upstream == [(0, index)]
            assert stages[-1].result.view(np.uint32) == result[index].view(np.uint32)
            assert stages[-1].values["x"] == x[index]
            (path,) = [stage.values["path"] for stage in stages if stage.name.endswith(": path")]
            if function in ("silu", "sigmoid"):
                simd = index[0] < (45 // unit * unit if unit else 0)
                assert path.startswith("SIMD body" if simd else "scalar tail"), (function, path)
                assert ("sleef" in stages[-1].formula) == simd
            else:
                assert path.startswith("SIMD body and scalar tail alike")


class SqueezeExciteSiLU(nn.Module):
    """An EfficientNet-style block: conv, SiLU, squeeze-excite (sigmoid gate), conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.act(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.silu(self.fc1(self.pool(y)))))
        return self.out(y * gate)


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
def test_fx_efficientnet_block(engine):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = SqueezeExciteSiLU().eval()
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (torch.randn(2, 3, 9, 9),))
    for _ in range(3):
        prepared(torch.randn(2, 3, 9, 9))
    model = convert_fx(prepared)
    net = qexact.from_torch(model)
    assert "silu" in {node.op for node in net.graph.nodes}
    x = torch.randn(2, 3, 9, 9)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)


class DetectionHead(nn.Module):
    """A head that leaves the network quantized and decodes in float: sigmoid after DeQuantStub."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), \
            torch.ao.quantization.DeQuantStub()
        self.conv = nn.Conv2d(3, 18, 3, padding=1)

    def forward(self, x):
        y = self.dequant(self.conv(self.quant(x)))
        return torch.sigmoid(y[:, :2]), y[:, 2:].sigmoid() * 4.0 - 1.0


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
def test_eager_detection_head_float_sigmoid(engine):
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = engine
    torch.manual_seed(1)
    model = DetectionHead().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    model(torch.randn(2, 3, 9, 11))
    tq.convert(model, inplace=True)
    net = qexact.from_torch(model)
    x = torch.randn(2, 3, 9, 11)
    for ours, theirs in zip(net(x.numpy()), model(x)):
        assert_bitexact(ours, theirs.numpy(), engine)
    stages = net.explain(x.numpy(), index=(0, 1, 4, 5)).stages
    assert any("sigmoid (float)" in stage.name for stage in stages)
