"""Quantized nearest-exact upsampling (4-D) and nearest / nearest-exact on 5-D inputs
(ops/resample.py) bit for bit against torch: the source index formulas, the plain copy when no
size changes, channels_last layouts, and models through from_torch (eager and FX) with a save /
load round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

import qexact
from qexact.dtypes import QINT8, QUINT8
from qexact.errors import UnsupportedError
from qexact.ops.resample import nearest_indices, prepare_upsample, upsample
from qexact.qparams import QParams, QuantizedArray

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn
warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")

FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0, 1 / 3, 0.7, 1.3, 2.5, 1.1, 0.999, 10 / 3)


def _quantized(rng, shape, dtype, channels_last=False):
    torch_dtype = torch.quint8 if dtype is QUINT8 else torch.qint8
    zero_point = 100 if dtype is QUINT8 else -3
    q = torch.quantize_per_tensor(torch.from_numpy(rng.standard_normal(shape).astype(np.float32)),
                                  0.05, zero_point, torch_dtype)
    if channels_last:
        q = q.contiguous(memory_format=torch.channels_last if len(shape) == 4
                         else torch.channels_last_3d)
    values = q.int_repr().numpy()
    return q, QuantizedArray(values, QParams.per_tensor(0.05, zero_point, dtype))


def _compare(engine, q, qa, mode, size, factor, context, report=None):
    expected = F.interpolate(q, size=size, scale_factor=factor, mode=mode).int_repr().numpy()
    out = upsample(qa, prepare_upsample(mode, size, factor, engine=engine)).values
    assert_bitexact(out, expected, context)
    assert out.strides == expected.strides, f"{context}: strides"
    if report is not None:
        report[f"upsample {mode} {q.dim()}-D {engine}"]["elements"] += expected.size


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
@pytest.mark.parametrize("rank", [4, 5])
def test_sizes_and_factors_vs_torch(engine, mode, rank, report):
    if rank == 4 and mode == "nearest":
        pytest.skip("4-D nearest: tests/ops/test_pooling.py")
    rng = np.random.default_rng(rank)
    dims = rank - 2
    for trial in range(60):
        ins = tuple(int(v) for v in rng.integers(1, 10, dims))
        q, qa = _quantized(rng, (2, 3) + ins, (QUINT8, QINT8)[trial % 2], trial % 3 == 0)
        if trial % 2:
            size, factor = tuple(int(v) for v in rng.integers(1, 22, dims)), None
        else:
            size = None
            factor = tuple(float(rng.choice(FACTORS)) for _ in range(dims))
            if any(int(np.floor(i * f)) < 1 for i, f in zip(ins, factor)):
                continue
        _compare(engine, q, qa, mode, size, factor, f"{ins} size={size} factor={factor}", report)


def test_unchanged_size_is_a_copy_and_one_changed_dim_is_not():
    """Same sizes in every dim: a copy, whatever the factor (1.1 on width 7 keeps 7); one dim
    changed: every dim takes the formula (the 1.1 factor maps 6 -> 5 on width 7)."""
    rng = np.random.default_rng(0)
    for rank, mode in ((4, "nearest-exact"), (5, "nearest"), (5, "nearest-exact")):
        shape = (1, 2) + (3,) * (rank - 3) + (7,)
        q, qa = _quantized(rng, shape, QUINT8)
        same = (1.0,) * (rank - 3) + (1.1,)
        _compare("fbgemm", q, qa, mode, None, same, f"{mode} {rank}-D copy")
        changed = (2.0,) + (1.0,) * (rank - 4) + (1.1,)
        _compare("fbgemm", q, qa, mode, None, changed, f"{mode} {rank}-D changed")


def test_index_formula_edges():
    """Scales that put (o + 0.5) * r on integers (r = 0.5, 2, 1/3 after float rounding), sizes
    1, odd/even, large; nearest-exact's double product rounded to float (floorf)."""
    rng = np.random.default_rng(1)
    for in_size, out_size in ((1, 1), (1, 5), (5, 1), (2, 4), (3, 9), (9, 3), (4, 2), (7, 8),
                              (8, 7), (255, 511), (300, 97), (1000, 3001)):
        for factor in (None, out_size / in_size):
            q, qa = _quantized(rng, (1, 1, 1, in_size), QUINT8)
            size = None if factor else (1, out_size)
            scale = None if factor is None else (1.0, factor)
            if factor is not None and int(np.floor(in_size * factor)) < 1:
                continue
            _compare("qnnpack", q, qa, "nearest-exact", size, scale, f"{in_size}->{out_size}")
    assert nearest_indices(4, 8, 2.0, exact=True).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert nearest_indices(3, 2, None, exact=True).tolist() == [0, 2]


@given(seed=st.integers(0, 2**32 - 1), rank=st.sampled_from([4, 5]),
       mode=st.sampled_from(["nearest", "nearest-exact"]), by_size=st.booleans())
@settings(max_examples=60, deadline=None)
def test_random_vs_torch(seed, rank, mode, by_size):
    rng = np.random.default_rng(seed)
    dims = rank - 2
    ins = tuple(int(v) for v in rng.integers(1, 9, dims))
    q, qa = _quantized(rng, (1, 2) + ins, QUINT8, bool(rng.integers(2)))
    if by_size:
        size, factor = tuple(int(v) for v in rng.integers(1, 20, dims)), None
    else:
        size, factor = None, tuple(float(v) for v in rng.uniform(0.3, 3.5, dims))
        if any(int(np.floor(i * f)) < 1 for i, f in zip(ins, factor)):
            return
    _compare("fbgemm", q, qa, mode, size, factor, f"{ins} {size} {factor}")


def test_float_nearest_exact_refused():
    """nearest-exact on a float tensor (ATen's float kernel between converts) is not modelled."""
    from qexact.graph import Node
    from qexact.ops.resample import UpsampleOp

    node = Node("up", "upsample", ("x",), {"mode": "nearest-exact", "size": [4, 4],
                                           "scale_factor": None, "align_corners": None})
    with pytest.raises(UnsupportedError, match="nearest-exact"):
        UpsampleOp.prepare(node, [None], "fbgemm")


class _Eager(nn.Module):
    def __init__(self, rank):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.up = nn.Upsample(scale_factor=1.5, mode="nearest-exact")
        self.up3 = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.rank = rank
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.up(self.quant(x))
        x = F.interpolate(x, scale_factor=0.7, mode="nearest-exact")
        return self.dequant(self.up3(x))


@pytest.mark.parametrize("rank", [4, 5])
def test_eager_model(engine, rank, tmp_path):
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    torch.backends.quantized.engine = engine
    model = _Eager(rank).eval()
    model.qconfig = get_default_qconfig(engine)
    shape = (2, 3, 5, 7) if rank == 4 else (1, 2, 3, 5, 4)
    prepared = prepare(model)
    prepared(torch.randn(shape))
    converted = convert(prepared)
    x = torch.randn(shape)
    net = qexact.from_torch(converted, (x,))
    expected = converted(x).numpy()
    assert_bitexact(net(x.numpy()), expected, f"{engine} eager {rank}-D")
    qexact.save(net, tmp_path / "m")
    assert_bitexact(qexact.load(tmp_path / "m")(x.numpy()), expected, "loaded")


def test_fx_model(engine, tmp_path):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = F.interpolate(self.conv(x), size=(9, 11), mode="nearest-exact")
            return torch.relu(y)

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8)
    prepared = prepare_fx(Model().eval(), get_default_qconfig_mapping(engine), (x,))
    prepared(x)
    converted = convert_fx(prepared)
    net = qexact.from_torch(converted, (x,))
    expected = converted(x).numpy()
    assert_bitexact(net(x.numpy()), expected, f"{engine} FX")
    qexact.save(net, tmp_path / "fx")
    assert_bitexact(qexact.load(tmp_path / "fx")(x.numpy()), expected, "loaded")
