"""Quantized pooling and upsampling: bit-exact differential tests against PyTorch, per engine,
for NCHW and channels_last inputs (the layout picks the kernel, and so the rounding).

Random cases are generated from fixed seeds (numpy default_rng), so every run tests the same ones.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact import QINT8, QUINT8, QParams
from qexact.errors import ShapeError, UnsupportedError
from qexact.layout import is_channels_last, to_channels_last
from qexact.ops.pooling import adaptive_avg_pool, pool, prepare_adaptive_pool, prepare_pool
from qexact.ops.resample import prepare_upsample, upsample
from qexact.qparams import QuantizedArray

CASES = 520
warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Intra-op threads cost ~5 ms per tiny quantized pool call here (thread-pool wake-up on a
    busy 2-core machine) and change no result: the kernels split work over channels/batches."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _torch_input(values, qparams, channels_last):
    import torch

    t = torch._make_per_tensor_quantized_tensor(
        torch.from_numpy(np.ascontiguousarray(values)), qparams.scale, qparams.zero_point)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last if values.ndim == 4
                         else torch.channels_last_3d)
    return t


def _random_input(rng, spatial, max_size, batch=True):
    dtype = QUINT8 if rng.random() < 0.7 else QINT8
    sizes = [int(rng.integers(1, max_size + 1)) for _ in range(spatial)]
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 20)), *sizes)
    if not batch:
        shape = shape[1:]
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)
    # exact ties: a constant block makes sums divisible, and half-way sums appear often
    if rng.random() < 0.2:
        values[...] = values.flat[0]
    channels_last = bool(rng.random() < 0.5) and spatial > 1 and len(shape) == spatial + 2
    return values, qparams, channels_last


def _compare(torch_out, got, context):
    expected = torch_out.int_repr().numpy()
    assert_bitexact(got.values, expected, context)
    return expected.size


@pytest.mark.parametrize("kind,spatial", [("avg", 1), ("avg", 2), ("avg", 3),
                                          ("max", 1), ("max", 2), ("max", 3)])
def test_pool_random_vs_torch(engine, kind, spatial):
    import torch
    import torch.nn.functional as F

    if kind == "max" and spatial == 3 and engine == "qnnpack":
        params = prepare_pool("max", 3, 2, engine="qnnpack")
        x = QuantizedArray(np.zeros((1, 1, 2, 2, 2), np.uint8), QParams.per_tensor(1.0, 0, QUINT8))
        with pytest.raises(UnsupportedError, match="max_pool3d"):
            pool(x, params)
        return
    rng = np.random.default_rng(100 * spatial + (kind == "max"))
    compared = elements = 0
    attempts = 0
    while compared < CASES and attempts < 4 * CASES:
        attempts += 1
        values, qparams, channels_last = _random_input(rng, spatial, 9 if spatial < 3 else 5,
                                                       batch=rng.random() < 0.85 or spatial == 3)
        spatial_sizes = values.shape[-spatial:]
        kernel = [int(rng.integers(1, s + 1)) for s in spatial_sizes]
        padding = [int(rng.integers(0, k // 2 + 1)) for k in kernel]
        stride = [int(rng.integers(1, 4)) for _ in kernel]
        dilation = [int(rng.integers(1, 3)) if kind == "max" else 1 for _ in kernel]
        ceil_mode = bool(rng.random() < 0.3)
        count_include_pad = bool(rng.random() < 0.5)
        divisor = int(rng.integers(1, 20)) if rng.random() < 0.2 and spatial > 1 else None
        t = _torch_input(values, qparams, channels_last)
        try:
            if kind == "max":
                expected = getattr(F, f"max_pool{spatial}d")(t, kernel, stride, padding, dilation,
                                                              ceil_mode)
            else:
                extra = [divisor] if spatial > 1 else []
                expected = getattr(F, f"avg_pool{spatial}d")(t, kernel, stride, padding, ceil_mode,
                                                              count_include_pad, *extra)
        except (RuntimeError, NotImplementedError):
            continue  # PyTorch rejects the case (output too small, qnnpack 3-D input, 1x1 ...)
        params = prepare_pool(kind, spatial, kernel, stride, padding, dilation, ceil_mode,
                              count_include_pad, divisor, engine=engine)
        got = pool(QuantizedArray(t.int_repr().numpy(), qparams), params)
        context = (f"{kind}_pool{spatial}d {engine} torch {torch.__version__} shape {values.shape} "
                   f"k{kernel} s{stride} p{padding} d{dilation} ceil={ceil_mode} "
                   f"cip={count_include_pad} div={divisor} channels_last={channels_last}")
        elements += _compare(expected, got, context)
        if expected.dim() >= 4 and min(expected.shape[2:]) > 1:
            fmt = torch.channels_last if expected.dim() == 4 else torch.channels_last_3d
            assert is_channels_last(got.values) == expected.is_contiguous(memory_format=fmt), \
                context
        compared += 1
    assert compared >= CASES, f"only {compared} cases ran"
    assert elements > 5000


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_adaptive_avg_pool_random_vs_torch(engine, spatial):
    import torch.nn.functional as F

    rng = np.random.default_rng(7 + spatial)
    elements = 0
    for _ in range(CASES):
        values, qparams, channels_last = _random_input(rng, spatial, 9 if spatial < 3 else 6)
        outs = [int(rng.integers(1, s + 2)) if rng.random() < 0.6
                else max(1, s // int(rng.integers(1, 4))) for s in values.shape[-spatial:]]
        t = _torch_input(values, qparams, channels_last)
        expected = getattr(F, f"adaptive_avg_pool{spatial}d")(t, outs)
        params = prepare_adaptive_pool("avg", spatial, outs, engine=engine)
        got = adaptive_avg_pool(QuantizedArray(t.int_repr().numpy(), qparams), params)
        elements += _compare(expected, got, f"adaptive_avg_pool{spatial}d {engine} {values.shape} "
                                            f"-> {outs} channels_last={channels_last}")
    assert elements > 5000


ADAPTIVE_CHANNELS = (1, 3, 8, 15, 16, 17, 19, 32, 33, 40)


def _adaptive_channels_last_case(rng, spatial, channels):
    """A channels_last adaptive pool case: both dtypes, small windows (half-way averages are
    common), a quarter of them pooled to all ones (3-D: PyTorch's mean), some ``None`` sizes.
    3-D: a fifth are unbatched (C, D, H, W) inputs, channels_last (the 2-D format) or contiguous
    (ambiguous with size-1 dims): those that are ``is_contiguous(channels_last)`` take the NDHWC
    kernel, which reads and writes them as if C were innermost."""
    dtype = QUINT8 if rng.random() < 0.6 else QINT8
    sizes = [int(rng.integers(1, 7 if spatial == 2 else 6)) for _ in range(spatial)]
    batch = () if spatial == 3 and rng.random() < 0.2 else (int(rng.integers(1, 3)),)
    values = rng.integers(dtype.qmin, dtype.qmax + 1,
                          size=(*batch, channels, *sizes)).astype(dtype.numpy_dtype)
    if rng.random() < 0.15:
        values[...] = values[(slice(None),) * (1 + len(batch)) + (slice(0, 1),) * spatial]
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    if rng.random() < 0.25:
        outs = [1] * spatial
    else:
        outs = [int(rng.integers(1, s + 2)) for s in sizes]
        if rng.random() < 0.15:
            outs[int(rng.integers(spatial))] = None
    return values, qparams, outs, bool(batch) or rng.random() < 0.5


def _adaptive_channels_last_vs_torch(engine, spatial, channels, rng, cases):
    """(elements, mismatches, stride mismatches of 3-D pools to 1x1x1) against PyTorch in this
    process; qexact's engine at the capability this process's ATen runs."""
    import torch.nn.functional as F

    elements = bad = bad_strides = 0
    for _ in range(cases):
        values, qparams, outs, channels_last = _adaptive_channels_last_case(rng, spatial, channels)
        t = _torch_input(values, qparams, channels_last)
        expected = getattr(F, f"adaptive_avg_pool{spatial}d")(t, outs)
        params = prepare_adaptive_pool("avg", spatial, outs, engine=engine)
        got = adaptive_avg_pool(QuantizedArray(t.int_repr().numpy(), qparams), params).values
        want = expected.int_repr().numpy()
        elements += want.size
        if not np.array_equal(got, want) or got.dtype != want.dtype:
            bad += int((got != want).sum()) or 1
        if spatial == 3 and want.shape[-3:] == (1, 1, 1):
            bad_strides += not np.array_equal(np.array(got.strides) // got.itemsize,
                                              np.array(expected.stride()))
    return elements, bad, bad_strides


@pytest.mark.torch
@pytest.mark.parametrize("spatial", [2, 3])
def test_adaptive_avg_pool_channels_last_channels_vs_torch(engine, spatial):
    """channels_last adaptive_avg_pool2d/3d for C around the SIMD widths, on this host's ATen
    capability: the kernel's AVX2 build (which AVX512 CPUs run too, the stub has no AVX512
    build) rounds channels < C // 8 * 8 with ``quantize_vec`` and the rest with ``quantize_val``;
    a 3-D pool to 1x1x1 is PyTorch's quantized mean instead."""
    rng = np.random.default_rng(31 + spatial)
    for channels in ADAPTIVE_CHANNELS:
        elements, bad, bad_strides = _adaptive_channels_last_vs_torch(engine, spatial, channels,
                                                                      rng, 24)
        assert (bad, bad_strides) == (0, 0), (
            f"adaptive_avg_pool{spatial}d {engine} C={channels}: {bad} of {elements} elements "
            f"differ, {bad_strides} stride mismatches")


ADAPTIVE_CAPABILITY_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from ops.test_pooling import ADAPTIVE_CHANNELS, _adaptive_channels_last_vs_torch
import qexact
torch.set_num_threads(1)
rng = np.random.default_rng(41)
elements = bad = 0
for engine in ("fbgemm", "qnnpack"):
    torch.backends.quantized.engine = engine
    for spatial in (2, 3):
        for channels in ADAPTIVE_CHANNELS:
            counts = _adaptive_channels_last_vs_torch(engine, spatial, channels, rng, 8)
            elements += counts[0]
            bad += counts[1] + counts[2]
print(torch.backends.cpu.get_cpu_capability().lower(), qexact.engines.detect_aten_capability(),
      elements > 20000, bad)
"""


@pytest.mark.torch
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_adaptive_avg_pool_channels_last_aten_capability_subprocess(capability):
    """The same comparison under ATEN_CPU_CAPABILITY (a CPU without that ISA runs its best one,
    and qexact detects the same)."""
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c",
                             ADAPTIVE_CAPABILITY_SCRIPT.format(tests=tests)],
                            env=env, capture_output=True, text=True, check=True)
    torch_capability, qexact_capability, enough, bad = result.stdout.split()
    assert torch_capability == qexact_capability, result.stdout
    assert (enough, bad) == ("True", "0"), result.stdout + result.stderr


@pytest.mark.torch
@pytest.mark.parametrize("channels_last,expected", [(True, 111), (False, 110)])
def test_adaptive_avg_pool3d_to_one_is_mean(engine, channels_last, expected):
    """Regression (conformance pool3d seed 101): adaptive_avg_pool3d to (1, 1, 1) runs
    ``mean(dim=(-1, -2, -3), keepdim=True)``. Channel 10 of batch 1 averages to 110.5 in integers:
    channels_last takes mean's dequantize / float sum / quantize path (111), NCDHW its integer
    inner path (110); the pooling kernel would give 110 for both."""
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    values = rng.integers(0, 256, size=(2, 19, 1, 1, 4)).astype(np.uint8)
    values[1, 10] = [147, 141, 112, 42]
    qparams = QParams.per_tensor(0.5549687743186951, 180, QUINT8)
    t = _torch_input(values, qparams, channels_last)
    want = F.adaptive_avg_pool3d(t, [1, 1, 1])
    params = prepare_adaptive_pool("avg", 3, [1, 1, 1], engine=engine)
    got = adaptive_avg_pool(QuantizedArray(t.int_repr().numpy(), qparams), params).values
    assert np.array_equal(got, want.int_repr().numpy())
    assert np.array_equal(np.array(got.strides) // got.itemsize, np.array(want.stride()))
    assert int(got[1, 10, 0, 0, 0]) == expected


def _upsample_cases(rng, mode, channels_last_choice):
    for _ in range(CASES):
        values, qparams, _ = _random_input(rng, 2, 7)
        if rng.random() < 0.5:
            size, scale = (int(rng.integers(1, 15)), int(rng.integers(1, 15))), None
        else:
            # non-integer factors: the quantized kernel indexes with f32(1.0 / scale_factor)
            # and has no per-dim shortcut (an unchanged H with a changed W still re-indexes H)
            factors = [1.0, 2.0, 3.0, 1.3, 0.7, 1.1, 2.2, 0.5, 1.5]
            size, scale = None, (float(rng.choice(factors)), float(rng.choice(factors)))
            if min(int(d * f) for d, f in zip(values.shape[2:], scale)) < 1:
                size, scale = values.shape[2:], None
        align = bool(rng.random() < 0.5) if mode == "bilinear" else None
        yield values, qparams, size, scale, align, channels_last_choice


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_nchw_vs_torch(engine, mode):
    import torch.nn.functional as F

    rng = np.random.default_rng(11 if mode == "nearest" else 12)
    for values, qparams, size, scale, align, _ in _upsample_cases(rng, mode, False):
        if mode == "bilinear" and is_channels_last(values):
            continue  # ambiguous strides (C == 1 or H == W == 1) take the channels_last kernel
        t = _torch_input(values, qparams, False)
        expected = F.interpolate(t, size=size, scale_factor=scale, mode=mode, align_corners=align)
        got = upsample(QuantizedArray(t.int_repr().numpy(), qparams),
                       prepare_upsample(mode, size, scale, align, engine=engine))
        _compare(expected, got, f"upsample {mode} {engine} {values.shape} size={size} "
                                f"scale={scale} align={align}")


def _bilinear_channels_last_case(rng):
    """A random channels_last bilinear case: odd sizes, C around multiples of 8, both dtypes,
    size or scale_factor; some constant images (every blend tests only the lambdas) and some
    that vary along W only or H only (one blend level at a time)."""
    dtype = QUINT8 if rng.random() < 0.5 else QINT8
    channels = int(rng.choice([1, 2, 3, 5, 7, 8, 9, 11, 13, 15, 16, 17, 19, 24, 27]))
    shape = (int(rng.integers(1, 3)), channels, int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)
    kind = rng.random()
    if kind < 0.15:
        values[...] = values[:, :, :1, :1]
    elif kind < 0.25:
        values[...] = values[:, :, :1, :]
    elif kind < 0.35:
        values[...] = values[:, :, :, :1]
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    if rng.random() < 0.5:
        size, scale = (int(rng.integers(1, 18)), int(rng.integers(1, 18))), None
    else:
        factors = [1.0, 2.0, 3.0, 1.3, 0.7, 1.1, 2.2, 0.5, 1.5, 1.7, 2.5, 0.9, 0.35, 4.0]
        size, scale = None, (float(rng.choice(factors)), float(rng.choice(factors)))
        if min(int(d * f) for d, f in zip(shape[2:], scale)) < 1:
            size, scale = shape[2:], None
    return values, qparams, size, scale, bool(rng.random() < 0.5)


def _nhwc_bilinear(engine):
    """The ``BilinearNumerics`` of the channels_last bilinear kernel ``engine`` runs (its table's
    ``"upsample"`` family, on a channels_last input)."""
    values = to_channels_last(np.zeros((1, 3, 2, 2), np.uint8))
    return qexact.get_engine(engine).kernel("upsample", "bilinear", values).bilinear


def _with_bilinear(engine, numerics):
    """``engine`` with its channels_last bilinear kernel computing under ``numerics`` instead (a
    table entry replaced: the op reads nothing else)."""
    import dataclasses
    from types import MappingProxyType

    base = qexact.get_engine(engine)
    choose = base.kernels["upsample"]

    def upsample_kernel(engine, mode, values):
        kernel = choose(engine, mode, values)
        if kernel.bilinear is None or not is_channels_last(values):
            return kernel
        return dataclasses.replace(kernel, bilinear=numerics)

    return dataclasses.replace(base, kernels=MappingProxyType(
        {**base.kernels, "upsample": upsample_kernel}))


def _bilinear_channels_last(engine, values, qparams, size, scale, align, numerics=None):
    """(torch's int_repr, qexact's values, context) for one channels_last case."""
    import torch.nn.functional as F

    t = _torch_input(values, qparams, True)
    expected = F.interpolate(t, size=size, scale_factor=scale, mode="bilinear", align_corners=align)
    params = prepare_upsample("bilinear", size, scale, align,
                              engine=engine if numerics is None else _with_bilinear(engine,
                                                                                    numerics))
    got = upsample(QuantizedArray(t.int_repr().numpy(), qparams), params)
    context = (f"bilinear channels_last {engine} {values.dtype} {values.shape} zp "
               f"{qparams.zero_point} size={size} scale={scale} align={align}")
    return expected.int_repr().numpy(), got.values, context


def test_upsample_bilinear_channels_last_vs_torch(engine):
    """qupsample_bilinear2d_nhwc_kernel: the AVX2 build's FMA contractions (BilinearNumerics)."""
    from qexact.ops.resample import simd_channel_count

    rng = np.random.default_rng(13)
    rule = _nhwc_bilinear(engine)
    elements = simd_elements = 0
    for _ in range(CASES):
        values, qparams, size, scale, align = _bilinear_channels_last_case(rng)
        expected, got, context = _bilinear_channels_last(engine, values, qparams, size, scale,
                                                         align)
        assert_bitexact(got, expected, context)
        elements += expected.size
        channels = values.shape[1]
        simd_elements += expected.size // channels * simd_channel_count(rule, channels)
    assert elements > 200_000 and simd_elements > 80_000 and elements - simd_elements > 60_000


# (seed, dtype, C, H, W, size, align_corners): each of these has an element where one of the
# wrong rules in _WRONG_BILINEAR_RULES rounds the other way (blends within ~1 ulp of .5).
_NEAR_TIES = [(4, "i8", 11, 4, 5, (6, 10), False), (21, "i8", 8, 4, 3, (7, 9), False),
              (31, "i8", 8, 2, 4, (11, 9), False), (9, "i8", 11, 3, 2, (6, 11), True),
              (22, "u8", 8, 2, 5, (4, 9), False), (27, "i8", 3, 3, 5, (8, 9), True),
              (34, "u8", 3, 5, 2, (9, 11), True), (54, "u8", 3, 4, 4, (5, 4), False)]
_WRONG_BILINEAR_RULES = {"source index unfused": {"source_index_fused": False},
                         "SIMD blend unfused": {"simd_blend": "none"},
                         "SIMD blend fusing the first product": {"simd_blend": "first"},
                         "tail blend unfused": {"tail_blend": "none"},
                         "tail blend fusing the second product": {"tail_blend": "second"}}


def test_upsample_bilinear_channels_last_near_ties(engine):
    """Hand-picked near-tie cases: qexact matches torch, and every single-rule deviation from
    the AVX2 build's arithmetic (source index, SIMD blend, tail blend) is caught by some case."""
    import dataclasses

    rule = _nhwc_bilinear(engine)
    if rule.simd_channels != 8:
        pytest.skip("the near ties are those of the AVX2 build")
    caught = set()
    for seed, dtype_name, channels, height, width, size, align in _NEAR_TIES:
        rng = np.random.default_rng(seed)
        dtype = QUINT8 if dtype_name == "u8" else QINT8
        values = rng.integers(dtype.qmin, dtype.qmax + 1, (1, channels, height, width))
        qparams = QParams.per_tensor(0.05, int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        values = values.astype(dtype.numpy_dtype)
        expected, got, context = _bilinear_channels_last(engine, values, qparams, size, None, align)
        assert_bitexact(got, expected, context)
        for name, change in _WRONG_BILINEAR_RULES.items():
            _, wrong, _ = _bilinear_channels_last(engine, values, qparams, size, None, align,
                                                  dataclasses.replace(rule, **change))
            if not np.array_equal(wrong, expected):
                caught.add(name)
    assert caught == set(_WRONG_BILINEAR_RULES)


BILINEAR_DEFAULT_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from ops.test_pooling import _bilinear_channels_last, _bilinear_channels_last_case, _nhwc_bilinear
torch.set_num_threads(1)
rng = np.random.default_rng(21)
bad = elements = 0
for _ in range(150):
    expected, got, _ = _bilinear_channels_last("fbgemm", *_bilinear_channels_last_case(rng))
    bad += int((expected != got).sum())
    elements += expected.size
rule = _nhwc_bilinear("fbgemm")
print(torch.backends.cpu.get_cpu_capability(), rule.simd_channels, rule.source_index_fused,
      elements > 50000, bad)
"""


@pytest.mark.torch
def test_upsample_bilinear_channels_last_aten_capability_default_subprocess():
    """ATEN_CPU_CAPABILITY=default: the DEFAULT build has no SIMD channels and no FMA."""
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c",
                             BILINEAR_DEFAULT_SCRIPT.format(tests=tests)],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["DEFAULT", "0", "False", "True", "0"], result.stderr


def test_eager_model_bilinear_vs_torch(engine):
    """A converted eager model with nn.Upsample / F.interpolate bilinear on NCHW and channels_last
    inputs (11 channels: 8 SIMD + 3 tail), and explain on a SIMD and a tail channel."""
    import torch
    import torch.nn.functional as F

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.up = torch.nn.Upsample(scale_factor=1.7, mode="bilinear", align_corners=False)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            y = self.up(self.quant(x))
            return self.dequant(F.interpolate(y, size=(9, 4), mode="bilinear", align_corners=True))

    torch.manual_seed(1)
    model = Model().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(2, 11, 7, 5) * 3)
    converted = torch.ao.quantization.convert(prepared)
    net = qexact.from_torch(converted, engine=engine)
    for channels_last in (False, True):
        for _ in range(3):
            x = torch.randn(2, 11, 7, 5) * 3
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            assert_bitexact(net(x), converted(x).numpy(),
                            f"eager bilinear {engine} cl={channels_last}")
    x = torch.randn(1, 11, 7, 5).contiguous(memory_format=torch.channels_last)
    values = net.run_values(x)
    layers = [name for name in values if name not in net.graph.inputs
              and net.prepared_node(name).node.op == "upsample"]
    expected_blend = _nhwc_bilinear(engine)
    for channel, blend in ((2, expected_blend.simd_blend), (9, expected_blend.tail_blend)):
        explanation = net.explain(x, layer=layers[-1], index=(0, channel, 5, 3))
        own = [stage for stage in explanation.stages if stage.node == layers[-1]]
        assert {stage.values["blend"] for stage in own if "blend" in stage.values} == {blend}
        assert int(own[-1].result) == int(values[layers[-1]].values[0, channel, 5, 3])


def test_channel_split_width_is_eight_on_avx2():
    """On AVX2 the channels_last avg_pool kernel rounds channels < C//8*8 with zp after rounding:
    a 16-channel split (semantics.md, AVX512) must disagree somewhere; the 8-channel one never."""
    if qexact.engines.detect_aten_capability() != "avx2":
        pytest.skip("AVX2 only")
    engine = qexact.get_engine("fbgemm")
    values = to_channels_last(np.zeros((1, 17, 2, 2), np.uint8))
    kernel = engine.kernel("avg_pool", (2, 2), False, QUINT8, values)
    assert kernel.placement.simd_channels == 8


def test_pool_errors():
    with pytest.raises(ShapeError, match="half of effective kernel"):
        prepare_pool("avg", 2, 2, padding=2, engine="fbgemm")
    with pytest.raises(ShapeError, match="divisor must be not zero"):
        prepare_pool("avg", 2, 2, divisor_override=0, engine="fbgemm")
    with pytest.raises(UnsupportedError, match="pool kind"):
        prepare_pool("min", 2, 2, engine="fbgemm")
    params = prepare_pool("avg", 2, 1, engine="qnnpack")
    x = QuantizedArray(np.zeros((1, 2, 3, 3), np.uint8), QParams.per_tensor(0.1, 0, QUINT8))
    with pytest.raises(UnsupportedError, match="1x1"):
        pool(x, params)
    # unbatched inputs: QNNPACK's average pooling needs 4-D (torch 2.13 raises "Expected input
    # to be 4-dimensional" for (C, H, W) and for avg_pool1d's (C, W)); ceil_mode runs ATen's
    unbatched = QuantizedArray(np.zeros((2, 6, 6), np.uint8), QParams.per_tensor(0.1, 3, QUINT8))
    with pytest.raises(ShapeError, match="4-dimensional"):
        pool(unbatched, prepare_pool("avg", 2, 2, engine="qnnpack"))
    with pytest.raises(ShapeError, match="4-dimensional"):
        pool(QuantizedArray(unbatched.values[0], unbatched.qparams),
             prepare_pool("avg", 1, 2, engine="qnnpack"))
    assert pool(unbatched, prepare_pool("avg", 2, 2, ceil_mode=True,
                                        engine="qnnpack")).values.shape == (2, 3, 3)


def test_eager_model_pools_vs_torch(engine):
    """A converted eager model: conv output (channels_last on fbgemm) through pools and upsample."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.max = torch.nn.MaxPool2d(3, 2, 1)
            self.avg = torch.nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
            self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
            self.ada = torch.nn.AdaptiveAvgPool2d((3, 2))
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.ada(self.up(self.avg(self.max(self.quant(x))))))

    torch.manual_seed(0)
    model = Model().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    prepared = torch.ao.quantization.prepare(model)
    for channels_last in (False, True):
        x = torch.randn(2, 11, 13, 9) * 3
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        prepared(x)
    converted = torch.ao.quantization.convert(prepared)
    net = qexact.from_torch(converted, engine=engine)
    for channels_last in (False, True):
        x = torch.randn(2, 11, 13, 9) * 3
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        assert_bitexact(net(x), converted(x).numpy(), f"eager model {engine} cl={channels_last}")


# --- explain: the stages the run executes, ending at the output element ----------------------


def _explain_all(op, params, x, indices):
    """(kernels, paths) named by explain over ``indices``: for each, the last stage's result is
    the output element, a stage names the kernel, and the upstream index lies in the input."""
    result = op.run(params, [x])
    out = result.values
    kernels, paths = set(), set()
    for index in indices:
        stages, upstream = op.explain(params, [x], result, index)
        assert stages[-1].result == out[index], (index, stages[-1])
        names = {stage.name.split(": ")[-1] for stage in stages}
        assert "kernel" in names, [stage.name for stage in stages]
        for stage in stages:
            kernels.update([stage.values["kernel"]] if "kernel" in stage.values else [])
            paths.update([stage.values["path"]] if "path" in stage.values else [])
        for position, source in upstream:
            assert position == 0 and all(0 <= i < s for i, s in zip(source, x.values.shape))
    return kernels, paths


def _indices(rng, shape, count=5):
    """Random output indices, plus the first element of the first and the last channel (dim 1:
    a SIMD and a scalar channel when there are both)."""
    size = int(np.prod(shape))
    picks = {tuple(int(i) for i in np.unravel_index(k, shape))
             for k in rng.choice(size, min(count, size), replace=False)}
    for channel in (0, shape[1] - 1):
        picks.add((0, channel) + (0,) * (len(shape) - 2))
    return sorted(picks)


def _explain_input(rng, spatial, channels_last, channels=None, dtype=None, max_size=7):
    dtype = dtype or (QUINT8 if rng.random() < 0.7 else QINT8)
    channels = channels or int(rng.choice([1, 3, 8, 11, 17, 19, 33]))
    shape = (int(rng.integers(1, 3)), channels,
             *[int(rng.integers(2, max_size + 1)) for _ in range(spatial)])
    values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)
    if channels_last and spatial > 1:
        values = to_channels_last(values)
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-2, 0)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    return QuantizedArray(values, qparams)


@pytest.mark.parametrize("engine_name", qexact.engines.engine_names())
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pool_explain_is_the_run(engine_name, kind):
    """explain's last stage is the output element, for pools on every engine and code path: the
    NCHW kernel, the channels_last kernel's SIMD channels and scalar channels, QNNPACK's average
    and max pooling (quint8, 4-D); its stages name the kernel and the path."""
    from qexact.ops.pool_graph import AvgPoolOp, MaxPoolOp

    op = AvgPoolOp if kind == "avg" else MaxPoolOp
    rng = np.random.default_rng(71 + (kind == "max"))
    kernels, paths = set(), set()
    for case in range(36):
        spatial = (1, 2, 2, 2, 3)[case % 5]
        if kind == "max" and spatial == 3 and engine_name == "qnnpack":
            spatial = 2
        x = _explain_input(rng, spatial, channels_last=case % 2 == 0,
                           dtype=QUINT8 if case % 3 == 0 else None)
        kernel = [int(rng.integers(2, 4)) for _ in range(spatial)]
        padding = [int(rng.integers(0, k // 2 + 1)) for k in kernel]
        try:
            params = prepare_pool(kind, spatial, kernel, [int(rng.integers(1, 3))] * spatial,
                                  padding, [int(rng.integers(1, 3)) if kind == "max" else 1]
                                  * spatial, bool(rng.random() < 0.2), bool(rng.random() < 0.5),
                                  None, engine=engine_name)
            out_shape = pool(x, params).values.shape
        except ShapeError:
            continue
        found = _explain_all(op, params, x, _indices(rng, out_shape))
        kernels |= found[0]
        paths |= found[1]
    if kind == "avg":
        assert {"NCHW kernel (avg_pool2d_out_frame)", "scalar channel loop (quantize_val)"} <= paths
        assert any(path.startswith("SIMD channels") for path in paths), paths
        assert (engine_name == "qnnpack") == any(k.startswith("QNNPACK") for k in kernels)
    else:
        assert {"ATen max_pool2d", "ATen max_pool2d channels_last"} & kernels, kernels
        assert (engine_name == "qnnpack") == ("QNNPACK max pooling (u8maxpool)" in kernels)


@pytest.mark.parametrize("engine_name", qexact.engines.engine_names())
def test_adaptive_avg_pool_explain_is_the_run(engine_name):
    """explain's last stage is the output element for adaptive average pools: NCHW, channels_last
    SIMD and scalar channels, QNNPACK (quint8 with divisible sizes), and the 3-D pool to 1x1x1
    that runs ``mean``."""
    from qexact.ops.pool_graph import AdaptiveAvgPoolOp

    rng = np.random.default_rng(73)
    kernels, paths = set(), set()
    for case in range(30):
        spatial = (1, 2, 2, 3)[case % 4]
        x = _explain_input(rng, spatial, channels_last=case % 2 == 1,
                           dtype=QUINT8 if case % 3 == 0 else None, max_size=6)
        sizes = x.values.shape[-spatial:]
        outs = ([1] * spatial if case % 7 == 0 else
                [s // 2 if case % 3 == 0 and s % 2 == 0 else int(rng.integers(1, s + 2))
                 for s in sizes])
        params = prepare_adaptive_pool("avg", spatial, outs, engine=engine_name)
        out_shape = adaptive_avg_pool(x, params).values.shape
        found = _explain_all(AdaptiveAvgPoolOp, params, x, _indices(rng, out_shape))
        kernels |= found[0]
        paths |= found[1]
    assert "ATen qmean_inner_dim_kernel" in kernels or any("mean" in k for k in kernels), kernels
    assert any(path.startswith("SIMD channels") for path in paths), paths
    assert "scalar channel loop (quantize_val)" in paths
    assert "NCHW kernel (adaptive_avg_pool_single_out_frame)" in paths
    assert (engine_name == "qnnpack") == any(k.startswith("QNNPACK") for k in kernels), kernels


@pytest.mark.parametrize("engine_name", qexact.engines.engine_names())
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_explain_is_the_run(engine_name, mode):
    """explain's last stage is the output element for upsampling: nearest, bilinear NCHW (and
    its copy for an unchanged size), channels_last SIMD and scalar channels (each with its blend
    rule); upstream is the source pixel."""
    from qexact.ops.resample import UpsampleOp

    rng = np.random.default_rng(79)
    paths, blends = set(), set()
    for case in range(24):
        x = _explain_input(rng, 2, channels_last=case % 2 == 0)
        size = (x.values.shape[2:] if case % 5 == 0 else
                tuple(int(rng.integers(1, 12)) for _ in range(2)))
        params = prepare_upsample(mode, size, None, bool(rng.random() < 0.5), engine=engine_name)
        result = UpsampleOp.run(params, [x])
        _, found = _explain_all(UpsampleOp, params, x, _indices(rng, result.values.shape))
        paths |= found
        for index in _indices(rng, result.values.shape, 2):
            stages, _ = UpsampleOp.explain(params, [x], result, index)
            blends |= {stage.values["blend"] for stage in stages if "blend" in stage.values}
    if mode == "bilinear":
        assert {"scalar channel loop"} <= paths and any(p.startswith("SIMD") for p in paths)
        assert blends == {"none", "first", "second"} or qexact.engines.detect_aten_capability() \
            == "default", blends


def test_explain_names_the_element_a_scrambling_kernel_moved_here():
    """A channels_last-contiguous input whose strides suggest contiguous (H == W == 1): the NHWC
    kernel's bytes are read as NCHW, and explain's last stage says which computed value lands on
    the element (and gives no upstream)."""
    from qexact.ops.resample import UpsampleOp

    values = np.arange(6, dtype=np.uint8).reshape(2, 3, 1, 1)
    x = QuantizedArray(values, QParams.per_tensor(0.1, 3, QUINT8))
    params = prepare_upsample("nearest", (2, 2), None, None, engine="fbgemm")
    result = UpsampleOp.run(params, [x])
    moved = 0
    for index in np.ndindex(result.values.shape):
        stages, upstream = UpsampleOp.explain(params, [x], result, index)
        assert stages[-1].result == result.values[index]
        if stages[-1].name == "upsample: memory layout":
            moved += 1
            assert upstream == []
    assert moved > 0
