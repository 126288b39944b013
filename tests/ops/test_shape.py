"""Movement ops on quantized tensors: bit-exact and stride-faithful against PyTorch, per engine.

Each random case draws a shape, a dtype, qparams and a layout (contiguous, channels_last, or a
permuted view), applies the op in torch and in qexact, and compares the integers and the strides
(layout-dependent kernels downstream read the strides). Fixed seeds: every run tests the same cases.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact import QINT8, QUINT8, QParams
from qexact.errors import ShapeError, UnsupportedError
from qexact.ops.shape import move
from qexact.qparams import QuantizedArray

CASES = 650  # channel_shuffle: ~20% qint8 cases only check that both refuse
warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _random_tensor(rng, min_dims=1, max_dims=5, shape=None):
    dtype = QUINT8 if rng.random() < 0.8 else QINT8
    if shape is None:
        ndim = int(rng.integers(min_dims, max_dims + 1))
        shape = tuple(int(rng.integers(1, 7)) for _ in range(ndim))
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = rng.integers(dtype.qmin, dtype.qmax + 1, size=shape).astype(dtype.numpy_dtype)
    t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(values), qparams.scale,
                                                qparams.zero_point)
    layout = rng.random()
    if layout < 0.3 and t.dim() in (4, 5):
        t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4
                         else torch.channels_last_3d)
    elif layout < 0.6 and t.dim() > 1:  # a permuted view of a contiguous tensor
        order = [int(d) for d in rng.permutation(t.dim())]
        base = t.permute(*np.argsort(order).tolist()).contiguous()
        t = base.permute(*order)
    return t, qparams


def _as_qexact(t, qparams):
    """The torch tensor's integers in a NumPy array with the tensor's exact strides."""
    logical = t.int_repr().numpy()
    span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    storage = np.empty(max(span, 1), logical.dtype)
    values = np.lib.stride_tricks.as_strided(
        storage, tuple(t.shape), tuple(s * logical.itemsize for s in t.stride()))
    values[...] = logical
    return QuantizedArray(values, qparams)


def _strides(array) -> tuple:
    return tuple(s // array.itemsize for s in array.strides)


def _check(expected, got, context):
    expected_int = expected.int_repr()
    assert_bitexact(got.values, expected_int.numpy(), context)
    assert got.qparams.scale == expected.q_scale() and got.qparams.zero_point == expected.q_zero_point()
    relevant = [d for d, size in enumerate(expected.shape) if size > 1]
    want = tuple(expected.stride()[d] for d in relevant)
    have = tuple(_strides(got.values)[d] for d in relevant)
    assert have == want, f"{context}: strides {_strides(got.values)} vs torch {expected.stride()}"
    return expected.numel()


def _case(op, rng):
    """(torch result, qexact result) for one random case of ``op``."""
    if op in ("pixel_shuffle", "channel_shuffle"):
        factor = int(rng.integers(1, 4))
        lead = [int(rng.integers(1, 3))]
        channels = factor * factor * int(rng.integers(1, 5)) if op == "pixel_shuffle" else \
            factor * int(rng.integers(1, 7))
        shape = lead + [channels] + [int(rng.integers(1, 6)) for _ in range(2)]
        t, qparams = _random_tensor(rng, shape=tuple(shape))
        if op == "pixel_shuffle":
            return F.pixel_shuffle(t, factor), move(op, _as_qexact(t, qparams), factor=factor)
        if qparams.dtype.name != "quint8":
            with pytest.raises(RuntimeError, match="QUInt8"):
                F.channel_shuffle(t, factor)
            with pytest.raises(UnsupportedError, match="quint8"):
                move(op, _as_qexact(t, qparams), groups=factor)
            return None, None
        return (F.channel_shuffle(t, factor),
                move(op, _as_qexact(t, qparams), groups=factor))
    t, qparams = _random_tensor(rng)
    x = _as_qexact(t, qparams)
    ndim = t.dim()
    dim = int(rng.integers(-ndim, ndim))
    if op == "permute":
        dims = [int(d) for d in rng.permutation(ndim)]
        return t.permute(*dims), move(op, x, dims=dims)
    if op == "transpose":
        other = int(rng.integers(-ndim, ndim))
        return torch.transpose(t, dim, other), move(op, x, dim0=dim, dim1=other)
    if op == "squeeze":
        choice = None if rng.random() < 0.4 else dim
        return (t.squeeze() if choice is None else t.squeeze(choice)), move(op, x, dim=choice)
    if op == "unsqueeze":
        dim = int(rng.integers(-ndim - 1, ndim + 1))
        return t.unsqueeze(dim), move(op, x, dim=dim)
    if op == "contiguous":
        fmt = "channels_last" if ndim == 4 and rng.random() < 0.4 else "contiguous"
        memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        return t.contiguous(memory_format=memory_format), move(op, x, memory_format=fmt)
    raise AssertionError(op)


def _split_case(op, rng):
    t, qparams = _random_tensor(rng)
    x = _as_qexact(t, qparams)
    dim = int(rng.integers(-t.dim(), t.dim()))
    size = t.shape[dim]
    if op == "chunk":
        chunks = int(rng.integers(1, size + 3))
        return torch.chunk(t, chunks, dim), move(op, x, chunks=chunks, dim=dim)
    if rng.random() < 0.5:
        step = int(rng.integers(1, size + 2))
        return torch.split(t, step, dim), move(op, x, split_size_or_sections=step, dim=dim)
    cuts = sorted(int(c) for c in rng.integers(0, size + 1, size=int(rng.integers(0, 3))))
    sections = [b - a for a, b in zip([0] + cuts, cuts + [size])]
    return torch.split(t, sections, dim), move(op, x, split_size_or_sections=sections, dim=dim)



@pytest.mark.parametrize("op", ["permute", "transpose", "squeeze", "unsqueeze", "contiguous",
                                "pixel_shuffle", "channel_shuffle"])
def test_movement_random_vs_torch(engine, op):
    rng = np.random.default_rng(sum(map(ord, op)))  # a fixed seed per op
    elements = 0
    for case in range(CASES):
        expected, got = _case(op, rng)
        if expected is None:
            continue
        elements += _check(expected, got, f"{op} {engine} case {case}")
    assert elements > 5000


@pytest.mark.parametrize("op", ["split", "chunk"])
def test_split_random_vs_torch(engine, op):
    rng = np.random.default_rng(5 if op == "split" else 6)
    for case in range(CASES):
        expected, got = _split_case(op, rng)
        assert len(expected) == len(got), f"{op} case {case}: {len(got)} pieces vs {len(expected)}"
        for piece, (e, g) in enumerate(zip(expected, got)):
            _check(e, g, f"{op} {engine} case {case} piece {piece}")


def test_shape_errors():
    x = np.zeros((2, 6, 3, 3), np.uint8)
    with pytest.raises(ShapeError, match="not divisible"):
        move("pixel_shuffle", x, factor=4)
    with pytest.raises(ShapeError, match="not divisible"):
        move("channel_shuffle", x, groups=4)
    with pytest.raises(ShapeError, match="out of range"):
        move("transpose", x, dim0=0, dim1=4)
    with pytest.raises(ShapeError, match="permutation"):
        move("permute", x, dims=[0, 0, 1, 2])


def test_eager_model_movement_vs_torch(engine):
    """A ShuffleNet-style unit through qexact.from_torch: chunk -> (pool one half) -> channel
    shuffle -> pixel shuffle -> transpose/contiguous -> split/unsqueeze/squeeze."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = torch.ao.quantization.QuantStub()
            self.pool = torch.nn.MaxPool2d(3, 1, 1)
            self.shuffle = torch.nn.ChannelShuffle(2)
            self.pixel = torch.nn.PixelShuffle(2)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            x = self.quant(x)
            left, right = x.chunk(2, dim=1)
            right = self.pool(right.contiguous())
            y = self.shuffle(right)
            y = self.pixel(y)
            y = torch.transpose(y, 2, 3).contiguous().unsqueeze(0).squeeze(0)
            first, rest = torch.split(left, [1, 7], dim=1)
            return self.dequant(y), self.dequant(first.permute(0, 2, 3, 1)), self.dequant(rest)

    model = Model().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(2, 16, 5, 7) * 3)
    converted = torch.ao.quantization.convert(prepared)
    net = qexact.from_torch(converted, engine=engine)
    for channels_last in (False, True):
        x = torch.randn(2, 16, 5, 7) * 3
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        got = net(x)
        for index, expected in enumerate(converted(x)):
            assert_bitexact(got[index], expected.numpy(), f"model {engine} output {index} "
                                                          f"channels_last={channels_last}")
    explanation = net.explain(torch.randn(2, 16, 5, 7), layer=net.graph.outputs[0].name,
                              index=(1, 1, 4, 2))
    assert explanation.stages
