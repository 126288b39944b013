"""Quantized activations: relu, clamp (relu6/hardtanh), sigmoid, tanh, hardsigmoid, hardswish,
leaky_relu, elu: bit-exact differential tests vs PyTorch (500 random cases per op per engine,
odd sizes, power-of-two scales for exact ties, quint8 and qint8)."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError
from qexact.ops.activations import activation, clamp, prepare_activation

CASES = 500


def torch_call(name, x, out_qp):
    import torch
    import torch.nn.functional as F

    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "tanh":
        return torch.tanh(x)
    if name == "hardsigmoid":
        return F.hardsigmoid(x)
    if name == "hardswish":
        return torch.ops.quantized.hardswish(x, out_qp.scale, out_qp.zero_point)
    if name == "leaky_relu":
        return torch.ops.quantized.leaky_relu(x, 0.1, False, out_qp.scale, out_qp.zero_point)
    return torch.ops.quantized.elu(x, out_qp.scale, out_qp.zero_point, 1.0, 1.0, 1.0)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "hardsigmoid", "hardswish", "leaky_relu", "elu"])
def test_activation_random_vs_torch(engine, name):
    import torch

    rng = np.random.default_rng([len(name), len(engine), ord(engine[0])])
    for case in range(CASES):
        dtype = QUINT8 if case % 2 else QINT8
        size = int(rng.integers(1, 200)) if case % 5 else int(rng.integers(1, 8))
        shape = (size,) if case % 3 else (1, size)
        values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
        if case % 4 < 2:
            s = 2.0 ** int(rng.integers(-7, 0))
            s_o = s * 2
        else:
            s, s_o = 10.0 ** rng.uniform(-3, 0, 2)
        z, z_o = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
        in_qp, out_qp = QParams.per_tensor(s, z, dtype), QParams.per_tensor(s_o, z_o, dtype)
        expected = torch_call(name, torch_quantized(values, in_qp), out_qp)
        extra = {"slope": 0.1} if name == "leaky_relu" else {}
        p = prepare_activation(name, in_qp, out_qp, engine=engine,
                               num_threads=torch.get_num_threads(), **extra)
        actual = activation(QuantizedArray(values, in_qp), p)
        assert (actual.scale, actual.zero_point) == (expected.q_scale(), expected.q_zero_point())
        assert_bitexact(actual.values, expected.int_repr().numpy(),
                        f"{engine} {name} {in_qp.describe()} -> {out_qp.describe()}")


@pytest.mark.torch
def test_clamps_random_vs_torch(engine):
    """relu6, F.hardtanh, torch.clamp, relu and F.leaky_relu (output qparams = input's), 500 random
    cases per engine; every third case channels_last (on qnnpack, quint8 clamps of a channels_last
    tensor come out scrambled: NHWC bytes read as NCHW, as PyTorch does)."""
    import torch
    import torch.nn.functional as F

    from qexact.engines.aten import elementwise_numerics
    from qexact.ops.shape import to_channels_last

    numerics = elementwise_numerics(qexact.get_engine(engine))
    rng = np.random.default_rng(len(engine))
    for case in range(CASES):
        dtype = QUINT8 if case % 2 else QINT8
        shape = (int(rng.integers(1, 200)),) if case % 3 else tuple(
            int(v) for v in rng.integers(1, 7, 4))
        values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
        qp = QParams.per_tensor(10.0 ** rng.uniform(-3, 0), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        x = torch_quantized(values, qp)
        if len(shape) == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            values = to_channels_last(values)
        low, high = sorted(rng.uniform(-3, 7, 2))
        for expected, (lo, hi) in ((torch.ops.quantized.relu6(x, False), (0.0, 6.0)),
                                   (F.hardtanh(x, low, high), (low, high)),
                                   (torch.clamp(x, low, high), (low, high)),
                                   (torch.relu(x), (0.0, None))):
            actual = clamp(QuantizedArray(values, qp), lo, hi,
                           numerics if hi is not None else None).values
            assert_bitexact(actual, expected.int_repr().numpy(), f"{engine} clamp {lo} {hi} {shape}")
        slope = float(rng.choice([0.01, 0.1, 0.3]))
        expected = F.leaky_relu(x, slope)
        p = prepare_activation("leaky_relu", qp, qp, engine=engine, slope=slope,
                               num_threads=torch.get_num_threads())
        assert (expected.q_scale(), expected.q_zero_point()) == (qp.scale, qp.zero_point)
        assert_bitexact(activation(QuantizedArray(values, qp), p).values,
                        expected.int_repr().numpy(), f"{engine} F.leaky_relu {shape}")
    if numerics.qnnpack_clamp:
        with pytest.raises(qexact.UnsupportedError, match="Both min and max"):
            clamp(QuantizedArray(values, qp), 0.0, None, numerics)


FLOAT_CASES = 500


@pytest.mark.torch
@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid", "leaky_relu", "clamp"])
def test_float_activations_vs_torch(name):
    """Float32 activations FX-converted models run between dequantize and quantize: bit-identical
    to torch's float kernels (SIMD body and scalar tail), 500 random cases with odd sizes, exact
    eighths (ties at the hardswish/hardsigmoid kinks), +-0, inf and NaN (NaN payloads excepted)."""
    import torch
    import torch.nn.functional as F

    from qexact.ops.activations import clamp_float, float_activation, prepare_float_activation

    rng = np.random.default_rng(len(name))
    for case in range(FLOAT_CASES):
        n = int(rng.integers(1, 100)) if case % 5 else int(rng.integers(100, 3000))
        x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-1, 1.5)).astype(np.float32)
        x[:: 3] = np.round(x[:: 3] * 8) / 8
        x[rng.integers(0, n, 3)] = rng.choice(np.float32([0.0, -0.0, -3.0, 3.0, np.inf, -np.inf, np.nan]), 3)
        t = torch.from_numpy(x.copy())
        if name == "clamp":
            low, high = sorted(rng.uniform(-4, 4, 2))
            expected, actual = torch.clamp(t, low, high), clamp_float(x, low, high)
        else:
            slope = float(rng.uniform(0, 1))
            expected = {"hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
                        "leaky_relu": lambda v: F.leaky_relu(v, slope)}[name](t)
            actual = float_activation(x, prepare_float_activation(name, slope))
        expected = expected.numpy()
        # NaN payloads are not compared: ATen's SIMD min/max OR in an all-ones NaN mask
        # (0xFFFFFFFF) where NumPy gives the default NaN; every quantize maps any NaN alike.
        assert_bitexact(np.isnan(actual), np.isnan(expected), f"float {name} NaN positions n={n}")
        finite = ~np.isnan(expected)
        assert_bitexact(actual[finite].view(np.int32), expected[finite].view(np.int32),
                        f"float {name} n={n}")


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu"])
def test_float_activations_not_reproducible_raise(name):
    from qexact.ops.activations import prepare_float_activation

    with pytest.raises(qexact.UnsupportedError, match=f"{name} on float32"):
        prepare_float_activation(name)


@pytest.mark.torch
def test_fx_model_float_activations_and_cat(engine):
    """An FX-converted model whose Hardswish / Hardsigmoid / LeakyReLU stay float (qconfig None):
    they run on float32 between dequantize and quantize; then torch.cat, torch.clamp, x + 1.0
    (quantized::add.Scalar) and quantized.hardswish."""
    import warnings

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.hardswish, self.hardsigmoid, self.leaky = nn.Hardswish(), nn.Hardsigmoid(), nn.LeakyReLU(0.1)

        def forward(self, x):
            y = self.hardswish(F.hardswish(x))
            c = torch.cat([self.hardsigmoid(y), self.leaky(y)], 1)
            return F.hardswish(torch.clamp(c, -1.0, 1.0) * 2.0 + 1.0)

    torch.manual_seed(0)
    mapping = get_default_qconfig_mapping(engine)
    for module in (nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU):
        mapping = mapping.set_object_type(module, None)
    x = torch.randn(2, 3, 5, 7) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(Model().eval(), mapping, (x,))
        prepared(x)
        model = convert_fx(prepared)
    net = qexact.from_torch(model)
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randn(2, 3, 5, 7) * 3
        assert_bitexact(net(x.numpy()), model(x).numpy(), engine)


def test_errors():
    with pytest.raises(qexact.UnsupportedError, match="not supported"):
        prepare_activation("gelu", QParams.per_tensor(0.1, 0, QUINT8))
    with pytest.raises(QuantParamError, match="required"):
        prepare_activation("hardswish", QParams.per_tensor(0.1, 0, QUINT8))


@pytest.mark.torch
def test_eager_model_activations(engine):
    import torch
    from torch import nn
    from torch.ao import quantization as tq

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.layers = nn.Sequential(nn.LeakyReLU(0.2), nn.ReLU6(), nn.ELU(), nn.Hardtanh(-0.5, 2.0),
                                        nn.Tanh(), nn.Hardsigmoid())
            self.dequant = tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.layers(self.quant(x)))

    torch.manual_seed(1)
    model = Model().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(model, inplace=True)
    model(torch.randn(3, 5, 67) * 3)
    tq.convert(model, inplace=True)
    x = torch.randn(3, 5, 67) * 3
    net = qexact.from_torch(model)
    assert_bitexact(net(x.numpy()), model(x).numpy(), engine)


@pytest.mark.torch
@pytest.mark.xfail(strict=True, reason=(
    "ATen's vectorized sigmoid uses SLEEF's expf (1-ulp accurate), NumPy's expf is correctly "
    "rounded: where sigmoid(x) * 256 lands within an ulp of k + 0.5 the two round apart. Found by "
    "qexact conformance --seed 4 (13 elements): x_q = 83, s = 0.02308051080758487, z = 173 "
    "gives 28 in qexact, 29 in torch. Needs an emulation of Sleef_expf8_u10."))
def test_sigmoid_at_a_sleef_exp_rounding_boundary():
    torch = pytest.importorskip("torch")
    from qexact.ops.activations import activation, prepare_activation

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        x_qparams = qexact.QParams.per_tensor(0.02308051080758487, 173, qexact.QUINT8)
        x = np.full((4, 24, 26), 83, np.uint8)
        params = prepare_activation("sigmoid", x_qparams, None, "fbgemm",
                                    num_threads=torch.get_num_threads())
        ours = activation(qexact.QuantizedArray(x, x_qparams), params).values
        theirs = torch.sigmoid(torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(x), x_qparams.scale, x_qparams.zero_point)).int_repr().numpy()
    finally:
        torch.backends.quantized.engine = previous
    assert_bitexact(ours, theirs, "sigmoid at a SLEEF exp boundary")


@pytest.mark.torch
@pytest.mark.xfail(strict=True, reason=(
    "quantized elu on 64-element blocks rounds differently from qexact's model near a tie "
    "(found by qexact conformance --seed 4 on x86): all x_q = 29 with s = 0.016651272550631445, "
    "z = 108, s_out = 0.004558545378589201, z_out = 229 gives 69 in torch for a 64-element "
    "input (68 for 40 elements), 68 in qexact everywhere; the vectorized elu's float order "
    "(expm1 form or FMA) is not yet identified."))
def test_elu_vector_block_near_a_tie():
    torch = pytest.importorskip("torch")
    from qexact.ops.activations import activation, prepare_activation

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        x_qparams = qexact.QParams.per_tensor(0.016651272550631445, 108, qexact.QUINT8)
        out_qparams = qexact.QParams.per_tensor(0.004558545378589201, 229, qexact.QUINT8)
        x = np.full(64, 29, np.uint8)
        params = prepare_activation("elu", x_qparams, out_qparams, "x86",
                                    num_threads=torch.get_num_threads())
        ours = activation(qexact.QuantizedArray(x, x_qparams), params).values
        theirs = torch.ops.quantized.elu(torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(x), x_qparams.scale, x_qparams.zero_point),
            out_qparams.scale, out_qparams.zero_point).int_repr().numpy()
    finally:
        torch.backends.quantized.engine = previous
    assert_bitexact(ours, theirs, "elu near a tie")
