"""Quantized PReLU (torch.ops.quantized.prelu, nnq.PReLU): bit-exact differential tests vs PyTorch.

Random cases (seeded NumPy generator): ranks 1-5, odd sizes, tails shorter than the SIMD body
unit (64 uint8 elements on AVX2), one slope or one per channel, contiguous and channels_last,
quint8 and qint8, power-of-two scales (exact ties), and huge multipliers where the SIMD body's
``cvtps2dq`` overflows (INT32_MIN) while the scalar tail saturates.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError, ShapeError
from qexact.ops.prelu import prelu, prepare_prelu
from qexact.layout import to_channels_last

CASES = 500


def random_case(rng, dtype):
    rank = int(rng.integers(1, 6))
    shape = tuple(int(s) for s in rng.integers(1, 9, rank))
    if rank == 1 and rng.random() < 0.5:
        shape = (int(rng.integers(1, 300)),)
    elif rank >= 2 and rng.random() < 0.4:
        shape = (shape[0], int(rng.integers(1, 40))) + shape[2:]
    channels = shape[1] if rank >= 2 else shape[0]
    count = channels if rng.random() < 0.6 else 1
    x = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
    if rank in (4, 5) and rng.random() < 0.4:
        x = to_channels_last(x)
    weight = rng.integers(dtype.qmin, dtype.qmax + 1, count).astype(dtype.numpy_dtype)
    kind = rng.random()
    if kind < 0.4:  # exact ties
        s_x, s_w = 2.0 ** rng.integers(-7, 0, 2)
        s_o = s_x * 2.0 ** int(rng.integers(-2, 3))
        z_o = int(rng.integers(dtype.qmin // 2, dtype.qmax // 2)) * 2 + 1
    elif kind < 0.5:  # huge multipliers: cvtps2dq overflows in the SIMD body
        s_x, s_w = 10.0 ** rng.uniform(0, 2, 2)
        s_o = 10.0 ** rng.uniform(-7, -4)
        z_o = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    else:
        s_x, s_w, s_o = 10.0 ** rng.uniform(-3, 0.5, 3)
        z_o = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    z_x, z_w = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
    return (x, QParams.per_tensor(s_x, z_x, dtype), weight, QParams.per_tensor(s_w, z_w, dtype),
            QParams.per_tensor(s_o, z_o, dtype))


def check(engine, x, x_qp, weight, w_qp, out_qp, threads=None):
    import torch

    tx = torch_quantized(np.ascontiguousarray(x), x_qp)
    if x.ndim in (4, 5) and not x.flags.c_contiguous:
        tx = tx.contiguous(memory_format=torch.channels_last if x.ndim == 4
                           else torch.channels_last_3d)
    expected = torch.ops.quantized.prelu(tx, torch_quantized(weight, w_qp), out_qp.scale,
                                         out_qp.zero_point)
    p = prepare_prelu(weight, w_qp, x_qp, out_qp, engine=engine,
                      num_threads=threads or torch.get_num_threads())
    actual = prelu(QuantizedArray(x, x_qp), p).values
    context = (f"{engine} x {x.shape} {x_qp.describe()} weight {weight.shape} {w_qp.describe()} "
               f"out {out_qp.describe()}")
    assert_bitexact(actual, expected.int_repr().numpy(), context)
    strides = tuple(stride // actual.itemsize for stride in actual.strides)
    assert strides == tuple(expected.stride()), f"memory format differs: {context}"
    return expected.numel()


@pytest.mark.torch
def test_prelu_random_vs_torch(engine):
    """500 random cases per engine, every output byte equal."""
    rng = np.random.default_rng([7, len(engine), ord(engine[0])])
    elements = 0
    for case in range(CASES):
        dtype = QUINT8 if case % 3 else QINT8
        elements += check(engine, *random_case(rng, dtype))
    assert elements > 50_000


@pytest.mark.torch
def test_prelu_overflow_splits_body_and_tail(engine):
    """``f32(c) m`` beyond int32: SIMD body gives INT32_MIN + z_o (clamped to qmin, or wrapped to
    qmax for a negative z_o), the scalar tail saturates to qmax."""
    for dtype, z in ((QUINT8, 10), (QINT8, -100), (QINT8, 20)):
        x = np.full(67, dtype.qmax, dtype.numpy_dtype)
        qp = QParams.per_tensor(100.0, z, dtype)
        out = QParams.per_tensor(1e-6, -3 if dtype is QINT8 else 3, dtype)
        check(engine, x, qp, np.array([dtype.qmax], dtype.numpy_dtype), qp, out)


@pytest.mark.torch
@pytest.mark.parametrize("threads", [1, 2])
def test_prelu_large_tensor_parallel_chunks(engine, threads):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        x = rng.integers(0, 256, (3, 5, 67, 71)).astype(np.uint8)
        qp = QParams.per_tensor(50.0, 100, QUINT8)
        check(engine, x, qp, rng.integers(0, 256, 5).astype(np.uint8), qp,
              QParams.per_tensor(1e-6, 7, QUINT8), threads=threads)
    finally:
        torch.set_num_threads(previous)


SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {support!r})
from support.torch_ref import torch_quantized
from qexact import QUINT8, QParams, QuantizedArray
from qexact.ops.prelu import prelu, prepare_prelu
bad = 0
for n in (1, 63, 64, 65, 130):
    x = np.full(n, 255, np.uint8); qp = QParams.per_tensor(100.0, 10, QUINT8)
    w = np.array([255], np.uint8); qo = QParams.per_tensor(1e-6, 3, QUINT8)
    ref = torch.ops.quantized.prelu(torch_quantized(x, qp), torch_quantized(w, qp), 1e-6, 3)
    p = prepare_prelu(w, qp, qp, qo, engine="fbgemm", num_threads=1)
    bad += int((prelu(QuantizedArray(x, qp), p).values != ref.int_repr().numpy()).sum())
print(torch.backends.cpu.get_cpu_capability(), p.kernel.placement.numerics.capability, bad)
"""


@pytest.mark.torch
def test_prelu_aten_capability_default_subprocess():
    """ATEN_CPU_CAPABILITY=default: every element takes the scalar lambda (no overflow to qmin)."""
    support = os.path.dirname(os.path.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT.format(support=support)],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["DEFAULT", "default", "0"]


def test_errors():
    u8 = QParams.per_tensor(0.1, 0, QUINT8)
    with pytest.raises(QuantParamError, match="dtypes differ"):
        prepare_prelu(np.zeros(3, np.int8), QParams.per_tensor(0.1, 0, QINT8), u8, u8,
                      engine="fbgemm")
    with pytest.raises(ShapeError, match="1-D"):
        prepare_prelu(np.zeros((2, 3), np.uint8), u8, u8, u8, engine="fbgemm")
    with pytest.raises(qexact.UnsupportedError, match="8-bit"):
        i32 = QParams.per_tensor(0.1, 0, qexact.QINT32)
        prepare_prelu(np.zeros(3, np.int32), i32, i32, i32, engine="fbgemm")
    with pytest.raises(TypeError, match="engine"):
        prepare_prelu(np.zeros(3, np.uint8), u8, u8, u8)  # the engine is required
    p = prepare_prelu(np.zeros(3, np.uint8), u8, u8, u8, engine="fbgemm")
    with pytest.raises(ShapeError, match="broadcast"):
        prelu(QuantizedArray(np.zeros((2, 4), np.uint8), u8), p)
    with pytest.raises(ShapeError, match="zero-dim"):
        prelu(QuantizedArray(np.zeros((), np.uint8), u8), p)


def test_prelu_past_int64_wraps_a_negative_zero_point():
    """The scalar tail's ``lrintf`` gives INT64_MIN past int64 and ``z_o + INT64_MIN`` wraps in
    int64 for a negative ``z_o`` (qmax), not for a positive one (qmin). Measured on torch 2.13
    with ATEN_CPU_CAPABILITY=default: [127, 127, 127] and [-128, -128, -128]."""
    for z_o, expected in ((-5, 127), (5, -128)):
        qp = QParams.per_tensor(1e10, 127, QINT8)
        p = prepare_prelu(np.full(1, -128, np.int8), qp, qp, QParams.per_tensor(1e-5, z_o, QINT8),
                          engine=qexact.get_engine("fbgemm", aten_capability="default"),
                          num_threads=1)
        out = prelu(QuantizedArray(np.full(3, -128, np.int8), qp), p).values
        assert_bitexact(out, np.full(3, expected, np.int8), f"z_o {z_o}")


@pytest.mark.parametrize("engine", qexact.engines.engine_names())
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_explain_replays_the_run(engine, capability):
    """Explain's last stage is the output element; it shows the offline constants, the integer
    product and the lambda that requantized it (SIMD body or scalar tail), for random cases with
    contiguous and channels_last inputs, including products past int32."""
    from qexact.ops.prelu import PreluOp

    ours = qexact.get_engine(engine, aten_capability=capability)
    rng = np.random.default_rng([len(engine), len(capability), 5])
    paths = set()
    for case in range(40):
        dtype = QUINT8 if case % 3 else QINT8
        x, x_qp, weight, w_qp, out_qp = random_case(rng, dtype)
        p = prepare_prelu(weight, w_qp, x_qp, out_qp, engine=ours, num_threads=1)
        qx = QuantizedArray(x, x_qp)
        result = prelu(qx, p)
        for _ in range(3):
            index = tuple(int(rng.integers(0, size)) for size in x.shape)
            stages, upstream = PreluOp.explain(p, [qx], result, index)
            assert upstream == [(0, index)]
            assert stages[-1].result == result.values[index], (engine, index)
            names = [stage.name for stage in stages]
            product = stages[names.index("prelu: integer product")]
            assert product.values["q_x"] == x[index]
            (path,) = [stage.values["path"] for stage in stages if stage.name == "prelu: path"]
            paths.add(path.split(" (")[0])
            assert "prelu: multiplier (offline)" in names
    assert paths == ({"SIMD body", "scalar tail"} if capability == "avx2" else {"scalar tail"})


@pytest.mark.torch
@pytest.mark.parametrize("channels_last", [False, True])
def test_eager_model_with_prelu(engine, channels_last):
    """A converted eager model with nn.PReLU(num_parameters=C) and nn.PReLU() (one slope).

    The default qconfigs' per-channel weight observers cannot convert PReLU (``from_float``
    quantizes the slopes per tensor, as quint8): a per-tensor quint8 weight observer is used.
    """
    import torch
    from torch import nn
    from torch.ao import quantization as tq

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.conv = nn.Conv2d(3, 5, 3)
            self.prelu = nn.PReLU(num_parameters=5)
            self.prelu_one = nn.PReLU()
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.prelu_one(self.prelu(self.conv(self.quant(x)))))

    torch.manual_seed(0)
    model = Model().eval()
    with torch.no_grad():
        model.prelu.weight.copy_(torch.randn(5) * 0.5)
        model.prelu_one.weight.fill_(-0.3)
    default = tq.get_default_qconfig(engine)
    model.qconfig = tq.QConfig(activation=default.activation, weight=default.weight)
    model.prelu.qconfig = model.prelu_one.qconfig = tq.QConfig(
        activation=default.activation,
        weight=tq.MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine))
    tq.prepare(model, inplace=True)
    for _ in range(4):
        model(torch.randn(2, 3, 9, 13))
    tq.convert(model, inplace=True)
    x = torch.randn(2, 3, 9, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    net = qexact.from_torch(model)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)
    explanation = net.explain((x.numpy(),), index=(1, 2, 5, 10))
    assert any("prelu" in stage.name for stage in explanation.stages)
