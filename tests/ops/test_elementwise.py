"""Quantized add / add_relu / mul / mul_relu: bit-exact differential tests vs PyTorch.

Random cases (seeded NumPy generator): odd sizes, tails shorter than the SIMD body unit (64 uint8
elements on AVX2), broadcasting of either input, power-of-two scales with odd output zero points
(exact ties, where the SIMD body and the scalar tail round differently), quint8 and qint8.
"""

from __future__ import annotations

import contextlib
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
from qexact.layout import to_channels_last

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
capability = p.choose_kernel((n,), (n,)).placement.numerics.capability
print(torch.backends.cpu.get_cpu_capability(), capability, bad)
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
        prepare_binary("add", u8, QParams.per_tensor(0.1, 0, QINT8), u8, engine="fbgemm")
    with pytest.raises(qexact.UnsupportedError, match="not supported"):
        prepare_binary("sub", u8, u8, u8, engine="fbgemm")
    with pytest.raises(TypeError, match="engine"):  # no default engine
        prepare_binary("add", u8, u8, u8)
    p = prepare_binary("add", u8, u8, u8, engine="fbgemm")
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


@contextlib.contextmanager
def torch_threads(count):
    """Run torch with ``count`` intra-op threads (small ops are ~15x faster on one thread here;
    cat and the scalar ops do not depend on the thread count)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- add_scalar / mul_scalar --------------------------------------------------------------------

SCALAR_OPS = ("add_scalar", "add_scalar_relu", "mul_scalar", "mul_scalar_relu")


def random_scalar_case(rng, dtype, op):
    n = int(rng.integers(1, 150)) if rng.random() < 0.8 else int(rng.integers(150, 700))
    shape = (n,) if rng.random() < 0.5 else (1, 3, n)
    values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
    if rng.random() < 0.4:  # power-of-two scales: exact ties in the requantization
        scale = 2.0 ** int(rng.integers(-8, 0))
    else:
        scale = float(10.0 ** rng.uniform(-3, 0.5))
    zero_point = int(rng.integers(dtype.qmin, dtype.qmax + 1))
    kind = rng.random()
    if op.startswith("mul"):
        scalar = float(rng.choice([0.0, -1.0, 1.0, 2.0])) if kind < 0.2 else float(rng.uniform(-5, 5))
    elif kind < 0.3:  # the zero point stays in range: integers copied
        scalar = float(rng.integers(-40, 40)) * scale
    elif kind < 0.5:  # exact halves of the scale: nearbyint(c / s) ties
        scalar = (float(rng.integers(-300, 300)) + 0.5) * scale
    else:
        scalar = float(rng.uniform(-1, 1) * 10.0 ** rng.uniform(-2, 2.5))
    return values, QParams.per_tensor(scale, zero_point, dtype), scalar


@pytest.mark.torch
@pytest.mark.parametrize("name", SCALAR_OPS)
def test_scalar_ops_random_vs_torch(engine, name):
    """500 random cases per op per engine: output bytes AND the derived output qparams equal."""
    import torch

    from qexact.ops.scalar import prepare_scalar, scalar_op

    rng = np.random.default_rng([SCALAR_OPS.index(name), len(engine), ord(engine[1])])
    op, relu = name.replace("_relu", ""), name.endswith("_relu")
    elements = requantized = 0
    for case in range(CASES_PER_OP):
        values, qp, scalar = random_scalar_case(rng, QUINT8 if case % 2 else QINT8, op)
        with torch_threads(1):
            expected = getattr(torch.ops.quantized, name)(torch_quantized(values, qp), scalar)
        p = prepare_scalar(op, qp, scalar, relu=relu, engine=engine)
        actual = scalar_op(QuantizedArray(values, qp), p)
        where = f"{engine} {name} c={scalar!r} {qp.describe()} n={values.size}"
        assert (actual.scale, actual.zero_point) == (expected.q_scale(), expected.q_zero_point()), where
        assert_bitexact(actual.values, expected.int_repr().numpy(), where)
        elements += values.size
        requantized += p.requantize
    assert elements > 30000
    assert op == "mul_scalar" or requantized > 100


def test_scalar_errors():
    from qexact.ops.scalar import prepare_scalar

    qp = QParams.per_tensor(0.1, 0, QUINT8)
    with pytest.raises(qexact.UnsupportedError, match="supported"):
        prepare_scalar("sub_scalar", qp, 1.0, engine="fbgemm")
    with pytest.raises(qexact.UnsupportedError, match="non-finite"):
        prepare_scalar("add_scalar", qp, float("nan"), engine="fbgemm")
    with pytest.raises(QuantParamError, match="per-tensor"):
        prepare_scalar("mul_scalar", QParams.per_channel([0.1, 0.2], [0, 0], 0, QUINT8), 2.0,
                       engine="fbgemm")
    with pytest.raises(TypeError, match="engine"):  # no default engine
        prepare_scalar("add_scalar", qp, 1.0)


# --- cat ------------------------------------------------------------------------------------------


def random_cat_case(rng, dtype, channels_last):
    count = int(rng.integers(1, 5))
    n, h, w = (int(v) for v in rng.integers(1, 5, 3))
    dim = 1 if channels_last or rng.random() < 0.5 else int(rng.integers(-4, 4))
    shapes = []
    for _ in range(count):
        shape = [n, 3, h, w]
        shape[dim % 4] = int(rng.integers(1, 45))  # channels below, at and above 8/32-lane blocks
        shapes.append(tuple(shape))
    ties = rng.random() < 0.5
    center = (dtype.qmin + dtype.qmax + 1) // 2
    qparams = []
    for _ in range(count):
        if ties:  # power-of-two scales, output zero point of the other parity: exact ties
            qparams.append(QParams.per_tensor(2.0 ** -int(rng.integers(2, 6)),
                                              center + int(rng.integers(-20, 20)) * 2, dtype))
        else:
            qparams.append(QParams.per_tensor(float(10 ** rng.uniform(-2.5, 0)),
                                              int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype))
    if rng.random() < 0.2:  # shares the first input's qparams: bytes copied
        out = qparams[0]
    elif ties:
        out = QParams.per_tensor(2.0 ** -3, center + int(rng.integers(-20, 20)) * 2 + 1, dtype)
    else:
        out = QParams.per_tensor(float(10 ** rng.uniform(-2.5, 0)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = [rng.integers(dtype.qmin, dtype.qmax + 1, s).astype(dtype.numpy_dtype) for s in shapes]
    return values, qparams, out, dim


@pytest.mark.torch
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_cat_random_vs_torch(engine, channels_last):
    """500 random cases per engine and layout (cat and cat_relu): every output byte equal.
    channels_last inputs take ATen's NHWC kernel (8-float SIMD blocks + scalar tail per pixel)."""
    import torch

    from qexact.ops.concat import cat, prepare_cat

    rng = np.random.default_rng([len(engine), ord(engine[0]), int(channels_last)])
    elements = 0
    for case in range(CASES_PER_OP):
        dtype = QUINT8 if case % 2 else QINT8
        values, qparams, out, dim = random_cat_case(rng, dtype, channels_last)
        relu = case % 3 == 0
        tensors = [torch_quantized(v, qp) for v, qp in zip(values, qparams)]
        if channels_last:
            tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
        op = torch.ops.quantized.cat_relu if relu else torch.ops.quantized.cat
        with torch_threads(1):
            result = op(tensors, dim, out.scale, out.zero_point)
        expected = result.int_repr().numpy()
        expected_strides = lambda *args: tuple(st * expected.itemsize for st in result.stride())
        if channels_last:
            values = [to_channels_last(v) for v in values]
        p = prepare_cat(qparams, out, dim, relu=relu, engine=engine)
        actual = cat([QuantizedArray(v, qp) for v, qp in zip(values, qparams)], p).values
        assert actual.strides == expected_strides(tensors, relu, dim, out)
        assert_bitexact(actual, expected, f"{engine} cat relu={relu} dim={dim} "
                        f"{[v.shape for v in values]} {[q.describe() for q in qparams]} -> "
                        f"{out.describe()}")
        elements += expected.size
    assert elements > 50000


@pytest.mark.torch
def test_torch_cat_uses_first_input_qparams():
    import warnings

    import torch

    from qexact.ops.concat import cat, prepare_cat

    rng = np.random.default_rng(5)
    qps = [QParams.per_tensor(2.0 ** -4, 131, QUINT8), QParams.per_tensor(0.037, 7, QUINT8)]
    values = [rng.integers(0, 256, (2, c, 3, 3)).astype(np.uint8) for c in (5, 11)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch.cat([torch_quantized(v, q) for v, q in zip(values, qps)], 1)
    p = prepare_cat(qps, qps[0], 1, engine="fbgemm", wraps_dim=True)
    assert (expected.q_scale(), expected.q_zero_point()) == (qps[0].scale, qps[0].zero_point)
    assert_bitexact(cat([QuantizedArray(v, q) for v, q in zip(values, qps)], p).values,
                    expected.int_repr().numpy(), "torch.cat")


def test_cat_errors():
    from qexact.ops.concat import cat, prepare_cat

    u8 = QParams.per_tensor(0.1, 0, QUINT8)
    with pytest.raises(QuantParamError, match="dtype"):
        prepare_cat([u8, QParams.per_tensor(0.1, 0, QINT8)], u8, 0, engine="fbgemm")
    with pytest.raises(TypeError, match="engine"):  # no default engine
        prepare_cat([u8, u8], u8, 1)
    p = prepare_cat([u8, u8], u8, 1, engine="fbgemm")
    with pytest.raises(ShapeError, match="differ"):
        cat([QuantizedArray(np.zeros((2, 3), np.uint8), u8),
             QuantizedArray(np.zeros((3, 3), np.uint8), u8)], p)


CAT_DEFAULT_SCRIPT = r"""
import sys, numpy as np, torch
sys.path.insert(0, {support!r})
from support.torch_ref import torch_quantized
from qexact import QParams, QUINT8, QuantizedArray
from qexact.ops.concat import cat, prepare_cat
from qexact.layout import to_channels_last
rng = np.random.default_rng(0)
bad = 0
for c in range(1, 70, 3):
    vs = [rng.integers(0, 256, (2, c, 3, 2)).astype(np.uint8) for _ in range(2)]
    qps = [QParams.per_tensor(2.0 ** -3, 4, QUINT8), QParams.per_tensor(2.0 ** -4, 6, QUINT8)]
    out = QParams.per_tensor(2.0 ** -2, 7, QUINT8)
    ts = [torch_quantized(v, q).contiguous(memory_format=torch.channels_last) for v, q in zip(vs, qps)]
    ref = torch.ops.quantized.cat(ts, 1, out.scale, out.zero_point).int_repr().numpy()
    p = prepare_cat(qps, out, 1, engine="fbgemm")
    vs = [to_channels_last(v) for v in vs]
    bad += int((cat([QuantizedArray(v, q) for v, q in zip(vs, qps)], p).values != ref).sum())
print(torch.backends.cpu.get_cpu_capability(), p.description.capability, bad)
"""


@pytest.mark.torch
def test_cat_channels_last_aten_capability_default_subprocess():
    """ATEN_CPU_CAPABILITY=default: the NHWC cat kernel has no SIMD channels."""
    support = os.path.dirname(os.path.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c",
                             CAT_DEFAULT_SCRIPT.format(support=support)],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["DEFAULT", "default", "0"]


@pytest.mark.torch
def test_eager_model_scalar_ops_cat_clamp(engine):
    """QFunctional add_scalar / mul_scalar / cat, torch.cat, torch.clamp, Tensor.clamp, F.hardtanh,
    nn.Hardswish, F.leaky_relu and nn.LeakyReLU in a converted eager model through from_torch."""
    import warnings

    import torch
    from torch import nn
    from torch.ao import quantization as tq

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant_a, self.quant_b = tq.QuantStub(), tq.QuantStub()
            self.add_scalar, self.mul_neg, self.mul_pos, self.cat = (
                nn.quantized.FloatFunctional() for _ in range(4))
            self.hardswish, self.leaky = nn.Hardswish(), nn.LeakyReLU(0.2)
            self.dequant = tq.DeQuantStub()

        def forward(self, a, b):
            a, b = self.quant_a(a), self.quant_b(b)
            y = self.add_scalar.add_scalar(a, 3.0)
            z = self.mul_pos.mul_scalar(self.mul_neg.mul_scalar(y, -0.5), 2.5)
            w = torch.cat([self.cat.cat([y, z, b], 1), a], 1)
            w = torch.nn.functional.hardtanh(torch.clamp(w, -1, 2))
            w = self.hardswish(w.clamp(min=-0.5, max=5.0))
            return self.dequant(self.leaky(torch.nn.functional.leaky_relu(w, 0.3)))

    torch.manual_seed(0)
    model = Model().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    for _ in range(3):
        model(torch.randn(2, 3, 4, 5), torch.randn(2, 5, 4, 5) * 3)
    tq.convert(model, inplace=True)
    net = qexact.from_torch(model)
    for seed in range(3):
        torch.manual_seed(seed)
        a, b = torch.randn(2, 3, 4, 5) * 2, torch.randn(2, 5, 4, 5) * 4
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = model(a, b).numpy()
        assert_bitexact(net(a.numpy(), b.numpy()), expected, engine)
    explanation = net.explain((a.numpy(), b.numpy()), index=(1, 1, 3, 2))
    names = [stage.name for stage in explanation.stages]
    assert any("add_scalar" in n for n in names) and any("cat" in n for n in names)


@pytest.mark.torch
def test_add_and_activation_channels_last_follow_memory_order(engine):
    """channels_last operands (quantized conv outputs): TensorIterator walks memory (N, H, W, C),
    so the SIMD body / scalar tail split is in that order; outputs keep the layout."""
    import torch

    from qexact.ops.activations import activation, prepare_activation

    rng = np.random.default_rng([7, len(engine)])
    qa, qb = QParams.per_tensor(2.0 ** -4, 128, QUINT8), QParams.per_tensor(2.0 ** -5, 130, QUINT8)
    qo = QParams.per_tensor(2.0 ** -3, 101, QUINT8)
    for case in range(60):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 6)),
                 int(rng.integers(1, 6)))
        a, b = (to_channels_last(rng.integers(0, 256, shape).astype(np.uint8)) for _ in range(2))
        ta, tb = (torch_quantized(np.ascontiguousarray(v), q).contiguous(
            memory_format=torch.channels_last) for v, q in ((a, qa), (b, qb)))
        for name in ("add", "mul"):
            if name == "add" and engine == "qnnpack":
                continue  # QNNPACK's fixed-point add: no SIMD/scalar split
            expected = getattr(torch.ops.quantized, name)(ta, tb, qo.scale, qo.zero_point)
            p = prepare_binary(name, qa, qb, qo, engine=engine, num_threads=torch.get_num_threads())
            actual = binary(QuantizedArray(a, qa), QuantizedArray(b, qb), p).values
            assert_bitexact(actual, expected.int_repr().numpy(), f"{engine} {name} {shape}")
            assert actual.strides == tuple(s * actual.itemsize for s in expected.stride())
        expected = torch.ops.quantized.leaky_relu(ta, 0.5, False, qo.scale, qo.zero_point)
        p = prepare_activation("leaky_relu", qa, qo, engine=engine, slope=0.5,
                               num_threads=torch.get_num_threads())
        assert_bitexact(activation(QuantizedArray(a, qa), p).values, expected.int_repr().numpy(),
                        f"{engine} leaky_relu {shape}")


MIXED_LAYOUT_SHAPES = ((1, 17, 9, 4), (2, 64, 3, 5), (1, 96, 1, 7), (2, 3, 4, 4), (1, 32, 5, 1),
                       (2, 16, 1, 1), (2, 1, 6, 11), (1, 8, 1, 70), (2, 17, 3, 2, 5),
                       (1, 64, 24, 23))


def _torch_layout(torch, tensor, channels_last):
    if not channels_last or tensor.dim() not in (4, 5):
        return tensor
    return tensor.contiguous(memory_format=torch.channels_last if tensor.dim() == 4
                             else torch.channels_last_3d)


def _mixed_layout_cases(rng, dtype):
    """(a, b) shapes and layouts: equal shapes in different memory formats (both orders), and
    one input broadcast (size-1 dims) in another format than the other."""
    for shape in MIXED_LAYOUT_SHAPES:
        for a_last in (False, True):
            yield shape, a_last, shape, not a_last
        small = tuple(1 if rng.random() < 0.5 else size for size in shape)
        a_last, b_last = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        if rng.random() < 0.5:
            yield small, a_last, shape, b_last
        else:
            yield shape, a_last, small, b_last


@pytest.mark.torch
@pytest.mark.parametrize("name", OPS)
def test_binary_mixed_layouts_vs_torch(name):
    """``a`` and ``b`` in different memory formats (a contiguous tensor plus a channels_last conv
    output), on every engine this torch has: the output follows ``a``'s memory format, and an
    input strided along the inner loop of TensorIterator's walk sends the elements to the scalar
    lambda. Power-of-two scales with odd output zero points (exact ties) for add, output scales
    past int32 for mul, where the SIMD body and the scalar tail give different integers."""
    import torch

    from qexact.ops.shape import contiguous

    op, relu = name.split("_")[0], name.endswith("_relu")
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    previous = torch.backends.quantized.engine
    elements = 0
    try:
        for engine in engines:
            torch.backends.quantized.engine = engine
            rng = np.random.default_rng([OPS.index(name), len(engine), ord(engine[0]), 11])
            for dtype in (QUINT8, QINT8):
                for a_shape, a_last, b_shape, b_last in _mixed_layout_cases(rng, dtype):
                    z_a, z_b = (int(z) for z in rng.integers(dtype.qmin // 2, dtype.qmax // 2, 2))
                    if op == "add":
                        a_qp = QParams.per_tensor(2.0 ** -4, z_a, dtype)
                        b_qp = QParams.per_tensor(2.0 ** -4, z_b, dtype)
                        out_qp = QParams.per_tensor(2.0 ** -3, int(rng.integers(-30, 30)) * 2 + 1
                                                    + (dtype.qmin + dtype.qmax + 1) // 2, dtype)
                    else:
                        a_qp = QParams.per_tensor(1.0, z_a, dtype)
                        b_qp = QParams.per_tensor(1.0, z_b, dtype)
                        out_scale = 2.0 ** -20 if rng.random() < 0.5 else 8.0  # -20: past int32
                        out_qp = QParams.per_tensor(
                            out_scale, int(rng.integers(dtype.qmin, dtype.qmax)), dtype)
                    a = rng.integers(dtype.qmin, dtype.qmax + 1, a_shape).astype(dtype.numpy_dtype)
                    b = rng.integers(dtype.qmin, dtype.qmax + 1, b_shape).astype(dtype.numpy_dtype)
                    ta = _torch_layout(torch, torch_quantized(a, a_qp), a_last)
                    tb = _torch_layout(torch, torch_quantized(b, b_qp), b_last)
                    a = contiguous(a, "channels_last") if a_last and a.ndim in (4, 5) else a
                    b = contiguous(b, "channels_last") if b_last and b.ndim in (4, 5) else b
                    assert a.strides == ta.stride() and b.strides == tb.stride()  # 1-byte items
                    context = (f"{engine} {name} {dtype.name} a {a_shape} channels_last {a_last} "
                               f"b {b_shape} channels_last {b_last} out {out_qp.describe()}")
                    try:
                        expected = getattr(torch.ops.quantized, name)(ta, tb, out_qp.scale,
                                                                      out_qp.zero_point)
                    except RuntimeError:  # e.g. QNNPACK refusing the scales
                        p = prepare_binary(op, a_qp, b_qp, out_qp, relu=relu, engine=engine)
                        with pytest.raises(qexact.UnsupportedError):
                            binary(QuantizedArray(a, a_qp), QuantizedArray(b, b_qp), p)
                        continue
                    p = prepare_binary(op, a_qp, b_qp, out_qp, relu=relu, engine=engine,
                                       num_threads=torch.get_num_threads())
                    actual = binary(QuantizedArray(a, a_qp), QuantizedArray(b, b_qp), p).values
                    assert np.array_equal(actual, expected.int_repr().numpy()), context
                    assert actual.strides == expected.stride(), context
                    elements += actual.size
    finally:
        torch.backends.quantized.engine = previous
    assert elements > 100000 * len(engines)


# --- explain: derived from the run ----------------------------------------------------------------

EXPLAIN_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")


def _explained(name, params, inputs, result, index):
    """The op's explain stages of element ``index``; the last one must give the output element,
    and one stage names the code path the element took (returned)."""
    from qexact.ops._registry import OP_REGISTRY

    stages, _ = OP_REGISTRY[name].explain(params, inputs, result, index)
    output = result.values[index]
    assert stages[-1].result == output and np.asarray(stages[-1].result).dtype.kind == "i", \
        (name, index, stages[-1], output)
    paths = [stage.values["path"] for stage in stages if stage.name.endswith("path")]
    assert len(paths) == 1, [stage.name for stage in stages]
    return stages, paths[0]


def _explain_binary_case(rng, engine, name):
    op, relu = name.split("_")[0], name.endswith("_relu")
    dtype = QUINT8 if rng.random() < 0.6 or engine.name == "qnnpack" else QINT8
    if rng.random() < 0.5:  # short ones: a QNNPACK tile of fewer than 8 runs scalar code
        a_shape = b_shape = (int(rng.integers(1, 12 if rng.random() < 0.3 else 300)),)
    else:
        a_shape = tuple(int(s) for s in rng.integers(1, 9, 4))
        b_shape = tuple(1 if rng.random() < 0.3 else s for s in a_shape)
    a = rng.integers(dtype.qmin, dtype.qmax + 1, a_shape).astype(dtype.numpy_dtype)
    b = rng.integers(dtype.qmin, dtype.qmax + 1, b_shape).astype(dtype.numpy_dtype)
    if rng.random() < 0.3:
        a = to_channels_last(a) if a.ndim == 4 else a
    z_a, z_b, z_o = (int(z) for z in rng.integers(dtype.qmin, dtype.qmax, 3))
    if op == "mul" and rng.random() < 0.5:  # past int32: the SIMD body wraps, the tail does not
        scales = (1.0, 1.0, 2.0 ** -20)
    elif engine.name == "qnnpack" and op == "add" and rng.random() < 0.3:  # shift >= 32
        scales = (1.0, 1.0, 1328.9736328125)
    else:  # power-of-two scales, odd output zero point: exact ties
        scales = (2.0 ** -4, 2.0 ** -5, 2.0 ** -3)
        z_o = min(z_o | 1, dtype.qmax - 2)
    qparams = [QParams.per_tensor(s, z, dtype) for s, z in zip(scales, (z_a, z_b, z_o))]
    p = prepare_binary(op, *qparams, relu=relu, engine=engine, num_threads=1)
    return p, [QuantizedArray(a, qparams[0]), QuantizedArray(b, qparams[1])]


@pytest.mark.parametrize("capability", ["avx2", "default"])
@pytest.mark.parametrize("engine_name", EXPLAIN_ENGINES)
def test_explain_binary_is_the_run(engine_name, capability):
    """Random add/mul cases on every engine: explain's last stage is the output element, and its
    path stage names the path the kernel's split gave that element (ATen's SIMD body and scalar
    tail, QNNPACK's SIMD body and scalar code, shift >= 32 included)."""
    engine = qexact.get_engine(engine_name, aten_capability=capability)
    rng = np.random.default_rng([len(engine_name), ord(engine_name[0]), len(capability)])
    seen = set()
    for case in range(60):
        name = OPS[case % len(OPS)]
        p, inputs = _explain_binary_case(rng, engine, name)
        try:
            result = binary(*inputs, p)
        except qexact.UnsupportedError:  # QNNPACK refusing the scales, as PyTorch does
            continue
        kernel = p.choose_kernel(inputs[0].values.shape, inputs[1].values.shape)
        masks, _ = kernel.split(result.values.shape, inputs[0].values, inputs[1].values)
        flat = [int(i) for i in rng.choice(result.values.size, min(3, result.values.size), False)]
        for path, mask in zip(kernel.paths, masks):  # an element of every path that runs
            if mask.any():
                flat.append(int(np.flatnonzero(mask)[-1]))
        for position in flat:
            index = tuple(int(i) for i in np.unravel_index(position, result.values.shape))
            _, shown = _explained(name, p, inputs, result, index)
            which = [mask[index] for mask in masks].index(True)
            assert shown == kernel.paths[which].name
            seen.add((kernel.name.split(" (")[0], shown.split(" (")[0]))
    expected = {("ATen qadd_kernel", "scalar tail"), ("ATen qmul_kernel", "scalar tail")}
    if capability != "default":
        expected |= {("ATen qmul_kernel", "SIMD body")}
    if engine_name == "qnnpack":
        expected |= {("QNNPACK add", "SIMD body"), ("QNNPACK add", "scalar code")}
    elif capability != "default":
        expected |= {("ATen qadd_kernel", "SIMD body")}
    assert expected <= seen, expected - seen


def test_explain_mul_past_int32_both_paths():
    """mul with ``f32(c) m`` past int32: the SIMD body's cvtps2dq gives INT32_MIN and its int32
    add of z_o wraps, the scalar tail keeps 64 bits; explain shows each path's steps."""
    qp, out = QParams.per_tensor(1.0, 0, QINT8), QParams.per_tensor(2.0 ** -20, -5, QINT8)
    a = np.full(65, 127, np.int8)
    inputs = [QuantizedArray(a, qp), QuantizedArray(a, qp)]
    engine = qexact.get_engine("fbgemm", aten_capability="avx2")
    p = prepare_binary("mul", qp, qp, out, engine=engine, num_threads=1)
    result = binary(*inputs, p)
    assert result.values[0] == 127 and result.values[64] == 127  # wrapped to qmax; clamped
    body, path = _explained("mul", p, inputs, result, (0,))
    assert path.startswith("SIMD body")
    rounded = next(stage for stage in body if stage.name.startswith("mul: round"))
    assert rounded.result == -2 ** 31
    tail, path = _explained("mul", p, inputs, result, (64,))
    assert path.startswith("scalar tail")
    rounded = next(stage for stage in tail if stage.name.startswith("mul: round"))
    assert rounded.result == 127 * 127 * 2 ** 20


@pytest.mark.parametrize("engine_name", EXPLAIN_ENGINES)
def test_explain_scalar_ops_and_cat_are_the_run(engine_name):
    """add_scalar / mul_scalar (every case) and cat (NHWC SIMD and scalar channels, copied
    inputs, the general path): explain's last stage is the output element."""
    from qexact.ops.concat import cat, prepare_cat
    from qexact.ops.scalar import prepare_scalar, scalar_op

    rng = np.random.default_rng([len(engine_name), 3])
    for case in range(40):
        dtype = QUINT8 if case % 2 else QINT8
        op = SCALAR_OPS[case % len(SCALAR_OPS)]
        values, qp, scalar = random_scalar_case(rng, dtype, op.replace("_relu", ""))
        p = prepare_scalar(op.replace("_relu", ""), qp, scalar, relu=op.endswith("_relu"),
                           engine=engine_name)
        inputs = [QuantizedArray(values, qp)]
        result = scalar_op(inputs[0], p)
        for index in {(0,) * values.ndim, tuple(s - 1 for s in values.shape)}:
            _explained(op.replace("_relu", ""), p, inputs, result, index)
    paths = set()
    for case in range(30):
        dtype = QUINT8 if case % 2 else QINT8
        values, qparams, out, dim = random_cat_case(rng, dtype, channels_last=case % 3 != 0)
        if case % 3:
            values = [to_channels_last(v) for v in values]
        p = prepare_cat(qparams, out, dim, relu=case % 4 == 0, engine=engine_name)
        inputs = [QuantizedArray(v, q) for v, q in zip(values, qparams)]
        result = cat(inputs, p)
        for position in rng.choice(result.values.size, min(6, result.values.size), False):
            index = tuple(int(i) for i in np.unravel_index(position, result.values.shape))
            paths.add(_explained("cat", p, inputs, result, index)[1].split(" (")[0])
    assert paths >= {"NHWC kernel, SIMD channels", "NHWC kernel, scalar channels",
                     "general: dequantize, at::cat, quantize_per_tensor"}, paths
