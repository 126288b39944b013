"""Quantized add / add_relu / mul / mul_relu: bit-exact differential tests vs PyTorch.

Random cases (seeded NumPy generator): odd sizes, tails shorter than the SIMD body unit (64 uint8
elements on AVX2), broadcasting of either input, power-of-two scales with odd output zero points
(exact ties, where the SIMD body and the scalar tail round differently), quint8 and qint8.
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
from qexact.engines.aten import elementwise_numerics, simd_mask
from qexact.ops.elementwise import binary, prepare_binary

CASES_PER_OP = 500
OPS = ("add", "add_relu", "mul", "mul_relu")


def random_case(rng, dtype):
    rank = int(rng.integers(1, 5))
    shape = tuple(int(s) for s in rng.integers(1, 10, rank))
    if rng.random() < 0.3:
        shape = (int(rng.integers(1, 400)),)
    a_shape, b_shape = shape, shape
    if rng.random() < 0.4:
        other = tuple(1 if rng.random() < 0.4 else s for s in shape)[int(rng.integers(0, rank)):]
        a_shape, b_shape = (other, shape) if rng.random() < 0.5 else (shape, other)
    a = rng.integers(dtype.qmin, dtype.qmax + 1, a_shape).astype(dtype.numpy_dtype)
    b = rng.integers(dtype.qmin, dtype.qmax + 1, b_shape).astype(dtype.numpy_dtype)
    if rng.random() < 0.5:  # exact ties
        s_a, s_b = 2.0 ** rng.integers(-7, 0, 2)
        s_o = max(s_a, s_b) * 2.0 ** int(rng.integers(0, 3))
        z_o = int(rng.integers(dtype.qmin // 2, dtype.qmax // 2)) * 2 + 1
    else:
        s_a, s_b, s_o = 10.0 ** rng.uniform(-3, 0.5, 3)
        z_o = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    z_a, z_b = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
    return a, QParams.per_tensor(s_a, z_a, dtype), b, QParams.per_tensor(s_b, z_b, dtype), \
        QParams.per_tensor(s_o, z_o, dtype)


def check(engine, name, a, a_qp, b, b_qp, out_qp, threads=None):
    import torch

    op, relu = name.split("_")[0], name.endswith("_relu")
    try:
        expected = getattr(torch.ops.quantized, name)(
            torch_quantized(a, a_qp), torch_quantized(b, b_qp), out_qp.scale,
            out_qp.zero_point).int_repr().numpy()
    except RuntimeError:
        p = prepare_binary(op, a_qp, b_qp, out_qp, relu=relu, engine=engine,
                           num_threads=torch.get_num_threads())
        with pytest.raises(qexact.UnsupportedError):
            binary(QuantizedArray(a, a_qp), QuantizedArray(b, b_qp), p)
        return 0
    p = prepare_binary(op, a_qp, b_qp, out_qp, relu=relu, engine=engine,
                       num_threads=threads or torch.get_num_threads())
    actual = binary(QuantizedArray(a, a_qp), QuantizedArray(b, b_qp), p).values
    assert_bitexact(actual, expected, f"{engine} {name} torch {torch.__version__} "
                    f"a {a.shape} {a_qp.describe()} b {b.shape} {b_qp.describe()} "
                    f"out {out_qp.describe()}")
    return expected.size


@pytest.mark.torch
@pytest.mark.parametrize("name", OPS)
def test_binary_random_vs_torch(engine, name):
    """500 random cases per op per engine, every output byte equal."""
    rng = np.random.default_rng([OPS.index(name), len(engine), ord(engine[0])])
    elements = 0
    for case in range(CASES_PER_OP):
        elements += check(engine, name, *random_case(rng, QUINT8 if case % 2 else QINT8))
    assert elements > 10000


@pytest.mark.torch
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_add_large_tensors_parallel_chunks(engine, threads):
    """Tensors of >= 32768 elements run in one chunk per thread, each with its own tail."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        for size in (32767, 32769, 65599, 100001):
            a = rng.integers(0, 256, size).astype(np.uint8)
            b = rng.integers(0, 256, size).astype(np.uint8)
            qp = QParams.per_tensor(2.0 ** -4, 3, QUINT8)
            if engine == "qnnpack":  # QNNPACK's add has no SIMD/scalar split
                b = b.reshape(1, -1)[:, :1]
            check(engine, "add", a, qp, b, QParams.per_tensor(2.0 ** -5, 7, QUINT8),
                  QParams.per_tensor(2.0 ** -3, 101, QUINT8), threads=threads)
    finally:
        torch.set_num_threads(previous)


def test_simd_mask_body_is_a_multiple_of_two_vectors():
    numerics = elementwise_numerics(qexact.get_engine("fbgemm", aten_capability="avx2"))
    mask = simd_mask(numerics, (130,), [(130,)], 1)
    assert mask[:128].all() and not mask[128:].any()
    default = elementwise_numerics(qexact.get_engine("fbgemm", aten_capability="default"))
    assert not simd_mask(default, (130,), [(130,)], 1).any()


SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, {support!r})
from support.torch_ref import torch_quantized
import qexact
from qexact import QParams, QUINT8, QuantizedArray
from qexact.ops.elementwise import binary, prepare_binary
rng = np.random.default_rng(0)
bad = 0
for n in range(1, 300, 7):
    a = rng.integers(0, 256, n).astype(np.uint8); b = rng.integers(0, 256, n).astype(np.uint8)
    qa, qb, qo = (QParams.per_tensor(2.0 ** -4, 3, QUINT8), QParams.per_tensor(2.0 ** -5, 7, QUINT8),
                  QParams.per_tensor(2.0 ** -3, 101, QUINT8))
    ref = torch.ops.quantized.add(torch_quantized(a, qa), torch_quantized(b, qb), qo.scale, qo.zero_point).int_repr().numpy()
    p = prepare_binary("add", qa, qb, qo, engine="fbgemm", num_threads=1)
    bad += int((binary(QuantizedArray(a, qa), QuantizedArray(b, qb), p).values != ref).sum())
print(torch.backends.cpu.get_cpu_capability(), p.numerics.capability, bad)
"""


@pytest.mark.torch
def test_add_aten_capability_default_subprocess():
    """ATEN_CPU_CAPABILITY=default: every element takes the scalar lambda."""
    support = os.path.dirname(os.path.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT.format(support=support)],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["DEFAULT", "default", "0"]


def test_errors():
    u8 = QParams.per_tensor(0.1, 0, QUINT8)
    with pytest.raises(QuantParamError, match="dtypes differ"):
        prepare_binary("add", u8, QParams.per_tensor(0.1, 0, QINT8), u8)
    with pytest.raises(qexact.UnsupportedError, match="not supported"):
        prepare_binary("sub", u8, u8, u8)
    p = prepare_binary("add", u8, u8, u8)
    with pytest.raises(ShapeError, match="broadcast"):
        binary(QuantizedArray(np.zeros(3, np.uint8), u8), QuantizedArray(np.zeros(4, np.uint8), u8), p)


@pytest.mark.torch
def test_eager_model_with_qfunctional(engine):
    """A converted eager model: Conv-free, FloatFunctional add/mul/add_relu + activations."""
    import torch
    from torch import nn
    from torch.ao import quantization as tq

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant_a, self.quant_b = tq.QuantStub(), tq.QuantStub()
            self.add, self.mul, self.add_relu = (nn.quantized.FloatFunctional() for _ in range(3))
            self.act = nn.Hardswish()
            self.sig = nn.Sigmoid()
            self.dequant = tq.DeQuantStub()

        def forward(self, a, b):
            a, b = self.quant_a(a), self.quant_b(b)
            y = self.add_relu.add_relu(self.add.add(a, b), self.mul.mul(a, b))
            return self.dequant(self.sig(self.act(y)))

    torch.manual_seed(0)
    model = Model().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    for _ in range(4):
        model(torch.randn(2, 3, 7, 11) * 2, torch.randn(2, 3, 7, 11))
    tq.convert(model, inplace=True)
    a, b = torch.randn(2, 3, 7, 11) * 2, torch.randn(2, 3, 7, 11)
    net = qexact.from_torch(model)
    assert_bitexact(net(a.numpy(), b.numpy()), model(a, b).numpy(), engine)
    explanation = net.explain((a.numpy(), b.numpy()), index=(1, 2, 6, 10))
    assert any("add" in stage.name for stage in explanation.stages)
