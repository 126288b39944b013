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
from qexact.ops.pooling import (adaptive_avg_pool, is_channels_last, pool, prepare_adaptive_pool,
                                prepare_pool)
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
            assert is_channels_last(got.values) == expected.is_contiguous(memory_format=fmt), context
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
        outs = [int(rng.integers(1, s + 2)) if rng.random() < 0.6 else max(1, s // int(rng.integers(1, 4)))
                for s in values.shape[-spatial:]]
        t = _torch_input(values, qparams, channels_last)
        expected = getattr(F, f"adaptive_avg_pool{spatial}d")(t, outs)
        params = prepare_adaptive_pool("avg", spatial, outs, engine=engine)
        got = adaptive_avg_pool(QuantizedArray(t.int_repr().numpy(), qparams), params)
        elements += _compare(expected, got, f"adaptive_avg_pool{spatial}d {engine} {values.shape} "
                                            f"-> {outs} channels_last={channels_last}")
    assert elements > 5000


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


@pytest.mark.xfail(strict=True, reason=(
    "channels_last upsample_bilinear2d (QuantizedOpKernels.cpp qupsample_bilinear2d_nhwc_kernel): "
    "~0.3% of elements differ by 1 at near-.5 blends, in SIMD and tail channels alike, with "
    "size or scale_factor, align_corners True or False; none of the 18 FMA-contraction variants "
    "tried (source index scale*(o+0.5)-0.5 fused or not x inner blend w0*a+w1*b unfused/fused "
    "either way x outer blend likewise) reproduces them all (best: 239/146k SIMD, 423/64k "
    "tail); the arithmetic of that AVX2 translation unit (-mfma, GCC contraction) is not yet "
    "identified"))
def test_upsample_bilinear_channels_last_vs_torch(engine):
    import torch.nn.functional as F

    rng = np.random.default_rng(13)
    for values, qparams, size, scale, align, _ in _upsample_cases(rng, "bilinear", True):
        t = _torch_input(values, qparams, True)
        expected = F.interpolate(t, size=size, scale_factor=scale, mode="bilinear",
                                 align_corners=align)
        got = upsample(QuantizedArray(t.int_repr().numpy(), qparams),
                       prepare_upsample("bilinear", size, scale, align, engine=engine))
        _compare(expected, got, f"bilinear channels_last {values.shape} size={size} scale={scale}")


def test_channel_split_width_is_eight_on_avx2():
    """On AVX2 the channels_last avg_pool kernel rounds channels < C//8*8 with zp after rounding:
    a 16-channel split (semantics.md, AVX512) must disagree somewhere; the 8-channel one never."""
    if qexact.engines.detect_aten_capability() != "avx2":
        pytest.skip("AVX2 only")
    from qexact.engines.pooling_numerics import pooling_numerics
    engine = qexact.get_engine("fbgemm")
    assert pooling_numerics(engine).nhwc_avg_pool_simd_channels == 8


def test_pool_errors():
    with pytest.raises(ShapeError, match="half of effective kernel"):
        prepare_pool("avg", 2, 2, padding=2)
    with pytest.raises(ShapeError, match="divisor must be not zero"):
        prepare_pool("avg", 2, 2, divisor_override=0)
    with pytest.raises(UnsupportedError, match="pool kind"):
        prepare_pool("min", 2, 2)
    params = prepare_pool("avg", 2, 1, engine="qnnpack")
    x = QuantizedArray(np.zeros((1, 2, 3, 3), np.uint8), QParams.per_tensor(0.1, 0, QUINT8))
    with pytest.raises(UnsupportedError, match="1x1"):
        pool(x, params)


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
