"""Quantized mean: bit-exact differential tests against PyTorch, per engine, covering the three
kernels (QNNPACK global average pool, the inner-dim fast path, and the dequantize / float cascade
sum / quantize reference path), NCHW and channels_last inputs, keepdim, and exact ties.

Random cases are generated from fixed seeds (numpy default_rng), so every run tests the same ones.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact import QINT8, QUINT8, QParams
from qexact.errors import ShapeError, UnsupportedError
from qexact.engines.aten_pooling import FloatMeanKernel
from qexact.ops.reduce import mean, mean_kernel, prepare_mean
from qexact.qparams import QuantizedArray

CASES = 520
warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Thread-pool wake-ups cost more than these tiny reductions; results are checked with two
    threads on large inputs in ``test_mean_large_inputs_vs_torch``."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _kind(kernel) -> str:
    """Which of the three kernels a ``"mean"`` description is: ``"qnnpack"`` (QNNPACK's global
    average pooling), ``"inner"`` (ATen's inner-dim kernel) or ``"reference"``."""
    if isinstance(kernel, FloatMeanKernel):
        return "reference"
    return "qnnpack" if kernel.name.startswith("QNNPACK") else "inner"


def _random_case(rng):
    """A random input (NCHW or channels_last), dims and keepdim; 4-D (dims (2, 3)) half the time."""
    import torch

    ndim = 4 if rng.random() < 0.6 else int(rng.integers(1, 5))
    shape = [int(rng.integers(1, 12)) for _ in range(ndim)]
    if ndim == 4:  # channels around the 8/32-column blocks of ATen's float sum
        shape[1] = int(rng.integers(1, 80))
        shape[2], shape[3] = int(rng.integers(1, 10)), int(rng.integers(1, 10))
    dtype = QUINT8 if rng.random() < 0.65 else QINT8
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)
    if rng.random() < 0.15:  # exact ties: constant groups, and sums that are half-way
        values[...] = values.flat[0]
    elif rng.random() < 0.15:
        values[...] = rng.choice([qparams.zero_point, min(qparams.zero_point + 1, dtype.qmax)],
                                 size=shape).astype(dtype.numpy_dtype)
    t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(values), qparams.scale,
                                                qparams.zero_point)
    if ndim == 4 and rng.random() < 0.6:
        t = t.contiguous(memory_format=torch.channels_last)
    draw = rng.random()
    if ndim == 4 and draw < 0.55:
        dim = [2, 3] if rng.random() < 0.8 else [-2, -1]
    elif draw < 0.65:
        dim = None
    else:
        dim = sorted(rng.choice(ndim, int(rng.integers(1, ndim + 1)), replace=False).tolist())
        if rng.random() < 0.3:
            dim = dim[::-1]
    return t, qparams, dim, bool(rng.random() < 0.5)


def _check(t, qparams, dim, keepdim, engine, context="", threads=1):
    expected = t.mean(dim, keepdim=keepdim) if dim is not None else t.mean()
    x = QuantizedArray(t.int_repr().numpy(), qparams)
    params = prepare_mean(dim, keepdim if dim is not None else False, engine=engine,
                          intra_op_threads=threads)
    got = mean(x, params)
    context = (f"mean {engine} shape {tuple(t.shape)} strides {t.stride()} dim={dim} "
               f"keepdim={keepdim} {qparams.dtype.name} s={qparams.scale} z={qparams.zero_point}"
               f" kernel={mean_kernel(x, params).name} {context}")
    wanted = expected.int_repr().numpy()
    assert_bitexact(got.values, wanted, context)
    assert got.values.strides == wanted.strides, context
    return _kind(mean_kernel(x, params)), wanted.size


def test_mean_random_vs_torch(engine):
    rng = np.random.default_rng(2024)
    kernels, elements = Counter(), 0
    for _ in range(CASES):
        kernel, size = _check(*_random_case(rng), engine)
        kernels[kernel] += 1
        elements += size
    assert kernels["reference"] > 100 and kernels["inner"] > 100, kernels
    assert engine != "qnnpack" or kernels["qnnpack"] > 100, kernels
    assert elements > 5000


@pytest.mark.parametrize("threads", [1, 2])
def test_mean_large_inputs_vs_torch(engine, threads):
    """Long reductions (all cascade levels of ATen's float sum), torchvision's shapes, and inputs
    big enough for TensorIterator to split the work between threads."""
    import torch

    rng = np.random.default_rng(threads)
    torch.set_num_threads(threads)
    try:
        for shape, dim, channels_last in [
                ((1, 1024, 7, 7), [2, 3], True), ((2, 232, 14, 14), [2, 3], True),
                ((2, 40, 45, 47), [2, 3], True), ((1, 36, 33, 33), [2, 3], True),
                ((1, 2, 300, 300), [2, 3], True), ((1, 1, 300, 300), [2, 3], False),
                ((3, 300, 17, 5), [1], False), ((1, 5, 300, 301), [1, 3], False),
                ((7, 1000), [0], False), ((5000,), [0], False), ((1, 3, 100, 100), [0, 1], True),
                ((2, 64, 56, 56), None, True), ((1, 3, 150, 101), [0, 1, 2, 3], True)]:
            for keepdim in (False, True):
                dtype = QUINT8 if rng.random() < 0.7 else QINT8
                qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                             int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
                values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(
                    dtype.numpy_dtype)
                t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(values),
                                                            qparams.scale, qparams.zero_point)
                if channels_last:
                    t = t.contiguous(memory_format=torch.channels_last)
                _check(t, qparams, dim, keepdim, engine, f"threads={threads}", threads)
    finally:
        torch.set_num_threads(1)


def test_mean_non_dense_input_vs_torch(engine):
    """A permuted (non-contiguous) input takes the reference path (dequantize makes it dense)."""
    import torch

    rng = np.random.default_rng(3)
    for perm, dim in [((0, 2, 1, 3), [2, 3]), ((0, 3, 1, 2), [1]), ((1, 0, 2, 3), [2, 3])]:
        qparams = QParams.per_tensor(0.05, 128, QUINT8)
        values = rng.integers(0, 256, size=(4, 9, 10, 11)).astype(np.uint8)
        t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(values), 0.05, 128)
        _check(t.permute(*perm), qparams, dim, False, engine)


def test_mean_errors():
    x = QuantizedArray(np.zeros((2, 3), np.uint8), QParams.per_tensor(1.0, 0, QUINT8))
    with pytest.raises(ShapeError, match="multiple times"):
        mean(x, prepare_mean([1, -1], engine="fbgemm"))
    with pytest.raises(ShapeError, match="out of range"):
        mean(x, prepare_mean([2], engine="fbgemm"))
    with pytest.raises(UnsupportedError, match="dtype"):
        prepare_mean([1], dtype="torch.float32", engine="fbgemm")
    empty = QuantizedArray(np.zeros((2, 0), np.uint8), QParams.per_tensor(1.0, 0, QUINT8))
    with pytest.raises(ShapeError, match="empty"):
        mean(empty, prepare_mean([1], engine="fbgemm"))


def test_eager_model_conv_mean_vs_torch(engine):
    """ShuffleNetV2's head: a quantized conv (channels_last output on fbgemm/x86) then
    ``x.mean([2, 3])``, and ``torch.mean(..., keepdim=True)`` on its input, through from_torch."""
    import torch

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.conv = torch.nn.Conv2d(5, 37, 3)
            self.dequant = torch.ao.quantization.DeQuantStub()
            self.dequant2 = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            y = self.conv(x)
            return self.dequant(y.mean([2, 3])), self.dequant2(torch.mean(x, (2, 3), True))

    torch.manual_seed(0)
    model = Model().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(2, 5, 9, 8) * 3)
    converted = torch.ao.quantization.convert(prepared)
    net = qexact.from_torch(converted, engine=engine)
    for _ in range(3):
        x = torch.randn(2, 5, 9, 8) * 3
        got, expected = net(x), converted(x)
        for index, (a, b) in enumerate(zip(got, expected)):
            assert_bitexact(a, b.numpy(), f"eager conv->mean {engine} output {index}")


def test_conv_output_reaches_mean_in_torchs_layout(engine, monkeypatch):
    """torch's quantized conv returns channels_last, so ``conv(x).mean([2, 3])`` takes the
    reference kernel (dequantize / float sum / quantize) on fbgemm, x86 and onednn. The two
    kernels disagree on some exact ties (e.g. S/N = k + 0.5 with an odd zero point), so qexact's
    conv must hand mean a channels_last array too."""
    import torch

    import qexact.ops.reduce as reduce_module

    kernels = []
    original = reduce_module.mean

    def spy(x, params):
        kernels.append(_kind(mean_kernel(x, params)))
        return original(x, params)

    monkeypatch.setattr(reduce_module, "mean", spy)
    model = torch.nn.Sequential(torch.ao.quantization.QuantStub(), torch.nn.Conv2d(3, 9, 3)).eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(1, 3, 6, 6))
    converted = torch.ao.quantization.convert(prepared)

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = converted
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.body(x).mean([2, 3]))

    head = Head().eval()
    conv_out = converted(torch.randn(1, 3, 6, 6))
    torch_kernel = ("qnnpack" if engine == "qnnpack" else
                    "inner" if conv_out.is_contiguous() else "reference")
    qexact.from_torch(head, engine=engine)(torch.randn(1, 3, 6, 6))
    assert kernels == [torch_kernel]


@pytest.mark.torch
def test_mean_of_a_1x1_conv_output_refused_where_torch_raises(engine):
    """A conv output with a 1x1 image has strides (C, 1, C, C): contiguous, yet suggesting
    channels_last. qmean_inner_dim_kernel (reduced dims innermost) then allocates its rank-2/3
    output channels_last and PyTorch raises; qexact refuses exactly there and agrees elsewhere."""
    import torch

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        conv = torch.ao.nn.quantized.Conv2d(3, 8, 1)
        y = conv(torch.quantize_per_tensor(torch.rand(2, 3, 1, 1), 0.1, 3, torch.quint8))
        qparams = QParams.per_tensor(y.q_scale(), y.q_zero_point(), QUINT8)
        values = y.int_repr().numpy()
        for dim in ([2, 3], [2], [3], [1], [0], [1, 2], [1, 3], [3, 2], [0, 2], [-1, -2]):
            for keepdim in (False, True):
                params = prepare_mean(dim, keepdim, engine=engine, intra_op_threads=1)
                try:
                    theirs = y.mean(dim, keepdim=keepdim).int_repr().numpy()
                except RuntimeError as error:
                    assert "channels_last" in str(error)
                    with pytest.raises(UnsupportedError, match="required rank 4 tensor"):
                        mean(QuantizedArray(values, qparams), params)
                    continue
                assert_bitexact(mean(QuantizedArray(values, qparams), params).values, theirs,
                                f"{engine} dim={dim} keepdim={keepdim}")
    finally:
        torch.backends.quantized.engine = previous


@pytest.mark.parametrize("engine_name", qexact.engines.engine_names())
def test_mean_explain_is_the_run(engine_name):
    """explain's last stage is the output element for every mean kernel (ATen's inner-dim kernel,
    the reference path, QNNPACK's global average pooling on the qnnpack engine); its stages name
    the kernel, and upstream is the group's first element."""
    from qexact.layout import to_channels_last
    from qexact.ops.reduce import MeanOp

    rng = np.random.default_rng(83)
    seen = Counter()
    for case in range(40):
        ndim = 4 if case % 2 == 0 else int(rng.integers(1, 5))
        shape = tuple(int(rng.integers(1, 7)) for _ in range(ndim))
        dtype = QUINT8 if case % 3 else QINT8
        values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)
        if ndim == 4 and case % 4 == 0:
            values = to_channels_last(values)
        dim = ([2, 3] if ndim == 4 and case % 4 != 2 else
               sorted(rng.choice(ndim, int(rng.integers(1, ndim + 1)), replace=False).tolist()))
        x = QuantizedArray(values, QParams.per_tensor(float(10 ** rng.uniform(-2, 0)),
                                                      int(rng.integers(dtype.qmin,
                                                                       dtype.qmax + 1)), dtype))
        params = prepare_mean(dim, bool(case % 3 == 1), engine=engine_name, intra_op_threads=1)
        try:
            result = MeanOp.run(params, [x])
        except UnsupportedError:
            continue  # PyTorch raises there too (a channels_last-suggesting 1x1 image)
        kind = _kind(mean_kernel(x, params))
        out = result.values
        for flat in rng.choice(out.size, min(4, out.size), replace=False):
            index = tuple(int(i) for i in np.unravel_index(flat, out.shape))
            stages, upstream = MeanOp.explain(params, [x], result, index)
            assert stages[-1].result == out[index], (kind, index, stages[-1])
            assert stages[0].values["kernel"] == mean_kernel(x, params).name
            assert len(upstream) == 1 and all(0 <= i < s for i, s in
                                               zip(upstream[0][1], values.shape))
            seen[kind] += 1
    assert seen["inner"] and seen["reference"], seen
    assert (engine_name == "qnnpack") == bool(seen["qnnpack"]), seen


@pytest.mark.torch
def test_max_dim_values_and_indices_vs_torch():
    """``torch.max(x, dim)``: values and the first maximum's index, with ties, NaN and -0, on
    float32 and quantized tensors."""
    torch = pytest.importorskip("torch")
    from qexact.ops.reduce import max_dim

    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, size=(3, 5, 4, 6)).astype(np.float32)  # many ties
    x[0, 1, 2, 3] = np.nan
    x[1, :, 0, 0] = -0.0
    for dim in range(-4, 4):
        for keepdim in (False, True):
            values, indices = torch.max(torch.from_numpy(x), dim, keepdim)
            ours, our_indices = max_dim(x, dim, keepdim)
            assert np.array_equal(ours.view(np.uint32), values.numpy().view(np.uint32))
            assert np.array_equal(our_indices, indices.numpy())
            q = torch.quantize_per_tensor(torch.from_numpy(np.nan_to_num(x)), 0.5, 3,
                                          torch.quint8)
            values, indices = torch.max(q, dim, keepdim)
            ours, our_indices = max_dim(QuantizedArray(q.int_repr().numpy(),
                                                       QParams.per_tensor(0.5, 3, QUINT8)),
                                        dim, keepdim)
            assert np.array_equal(ours.values, values.int_repr().numpy())
            assert np.array_equal(our_indices, indices.numpy())
