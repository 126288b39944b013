"""Quantized activations: relu, clamp (relu6/hardtanh), sigmoid, tanh, hardsigmoid, hardswish,
leaky_relu, elu: bit-exact differential tests vs PyTorch (500 random cases per op per engine,
odd sizes with SIMD bodies of 64 and shorter tails, power-of-two scales for exact ties, quint8 and
qint8), plus near-tie cases for sigmoid, tanh and elu, where the last bit of SLEEF's or glibc's
exp/expm1/tanh decides the output."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError
from qexact.ops.activations import activation, clamp, prepare_activation

CASES = 500
ELU_CONSTANTS = ((1.0, 1.0, 1.0), (0.5, 1.7, 0.3), (1.3, 0.9, 2.5), (2.0, 0.25, 1.1), (0.1, 3.0, 0.7))


def torch_call(name, x, out_qp, constants=(1.0, 1.0, 1.0)):
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
    return torch.ops.quantized.elu(x, out_qp.scale, out_qp.zero_point, *constants)


def _check(engine, name, values, in_qp, out_qp, constants=(1.0, 1.0, 1.0)):
    import torch

    expected = torch_call(name, torch_quantized(values, in_qp), out_qp, constants)
    extra = {"slope": 0.1} if name == "leaky_relu" else {}
    if name == "elu":
        extra = dict(zip(("alpha", "scale", "input_scale"), constants))
    p = prepare_activation(name, in_qp, out_qp, engine=engine,
                           num_threads=torch.get_num_threads(), **extra)
    actual = activation(QuantizedArray(values, in_qp), p)
    assert (actual.scale, actual.zero_point) == (expected.q_scale(), expected.q_zero_point())
    assert_bitexact(actual.values, expected.int_repr().numpy(),
                    f"{engine} {name} {constants} {in_qp.describe()} -> {out_qp.describe()}")
    return values.size


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "hardsigmoid", "hardswish", "leaky_relu", "elu"])
def test_activation_random_vs_torch(engine, name):
    rng = np.random.default_rng([len(name), len(engine), ord(engine[0])])
    for case in range(CASES):
        dtype = QUINT8 if case % 2 else QINT8
        size = 64 * int(rng.integers(0, 4)) + (int(rng.integers(0, 64)) if case % 5 else int(rng.integers(1, 8)))
        size = max(size, 1)
        shape = (size,) if case % 3 else (1, size)
        values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
        if case % 4 < 2:
            s = 2.0 ** int(rng.integers(-7, 0))
            s_o = s * 2
        else:
            s, s_o = 10.0 ** rng.uniform(-3, 0, 2)
        z, z_o = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
        constants = ELU_CONSTANTS[case % len(ELU_CONSTANTS)]
        _check(engine, name, values, QParams.per_tensor(s, z, dtype), QParams.per_tensor(s_o, z_o, dtype),
               constants)


NEAR_TIE_CASES = 300


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "elu"])
def test_near_ties_vs_torch(engine, name):
    """Inputs whose float result lands within a few ulps of a rounding boundary of the output
    grid, where one ulp of exp/expm1/tanh (SLEEF in the SIMD body, glibc in the scalar tail) or
    of the dequantize decides the integer: sigmoid and tanh pick the input scale that maps one
    ``q`` to ``f^-1((k + 1/2) s_out)``, elu picks the output scale that puts ``elu(x)`` on
    ``(k + 1/2) s_out``. Each case holds 64 copies (SIMD body) and 63 more (scalar tail)."""
    from qexact.float_math import glibc_expm1f, sleef_expm1f_u10

    rng = np.random.default_rng([len(name), 17, ord(engine[0])])
    for case in range(NEAR_TIE_CASES):
        dtype = QUINT8 if case % 2 else QINT8
        z = int(rng.integers(dtype.qmin + 40, dtype.qmax - 40))
        q = int(rng.integers(dtype.qmin, dtype.qmax + 1))
        while q == z:
            q = int(rng.integers(dtype.qmin, dtype.qmax + 1))
        constants = (1.0, 1.0, 1.0)
        if name in ("sigmoid", "tanh"):
            k = int(rng.integers(1, 255))
            target = (k + 0.5) / 256 if name == "sigmoid" else (k + 0.5) / 128 - 1.0
            x = np.log(target / (1 - target)) if name == "sigmoid" else np.arctanh(target)
            s = float(x / (q - z))
            if s <= 0:
                z, q = q, z
                s = -s
            in_qp, out_qp = QParams.per_tensor(s, z, dtype), None
        else:
            constants = ELU_CONSTANTS[case % len(ELU_CONSTANTS)]
            alpha, scale, input_scale = (np.float32(c) for c in constants)
            s = float(10 ** rng.uniform(-4, -0.5))
            q = min(q, z - 1)
            simd_x = np.float32(np.float32(q - z) * np.float32(s))
            y = np.float32(np.float32(sleef_expm1f_u10(np.float32(simd_x * input_scale)) * alpha) * scale)
            if case % 2:
                y = np.float32(np.float32(glibc_expm1f(np.float32(simd_x * input_scale)) * alpha) * scale)
            k = int(rng.integers(1, 100))
            s_o = float(-y) / (k + 0.5)
            in_qp = QParams.per_tensor(s, z, dtype)
            z_o = int(rng.integers(dtype.qmin + 110, dtype.qmax + 1))
            out_qp = QParams.per_tensor(s_o, z_o, dtype)
        values = np.full(127, q, dtype.numpy_dtype)
        values[rng.integers(0, 127, 8)] = rng.integers(dtype.qmin, dtype.qmax + 1, 8)
        if out_qp is None:
            out_qp = QParams.per_tensor(1.0, 0, dtype)  # replaced by the fixed qparams
        _check(engine, name, values, in_qp, out_qp, constants)


@pytest.mark.torch
def test_clamps_random_vs_torch(engine):
    """relu6, F.hardtanh, torch.clamp, relu and F.leaky_relu (output qparams = input's), 500 random
    cases per engine; every third case channels_last (on qnnpack, quint8 clamps of a channels_last
    tensor come out scrambled: NHWC bytes read as NCHW, as PyTorch does)."""
    import torch
    import torch.nn.functional as F

    from qexact.layout import to_channels_last

    ours = qexact.get_engine(engine)
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
            # torch.relu is no clamp call: ATen's one-bound clamp gives its values
            actual = clamp(QuantizedArray(values, qp), lo, hi,
                           ours if hi is not None else "fbgemm").values
            assert_bitexact(actual, expected.int_repr().numpy(), f"{engine} clamp {lo} {hi} {shape}")
        slope = float(rng.choice([0.01, 0.1, 0.3]))
        expected = F.leaky_relu(x, slope)
        p = prepare_activation("leaky_relu", qp, qp, engine=engine, slope=slope,
                               num_threads=torch.get_num_threads())
        assert (expected.q_scale(), expected.q_zero_point()) == (qp.scale, qp.zero_point)
        assert_bitexact(activation(QuantizedArray(values, qp), p).values,
                        expected.int_repr().numpy(), f"{engine} F.leaky_relu {shape}")
    if engine == "qnnpack":
        for dtype in (QUINT8, QINT8):
            with pytest.raises(qexact.UnsupportedError, match="Both min and max"):
                clamp(QuantizedArray(np.zeros(3, dtype.numpy_dtype),
                                     QParams.per_tensor(0.1, 0, dtype)), 0.0, None, ours)


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
            actual = float_activation(x, prepare_float_activation(name, slope,
                                                                  engine="fbgemm"))
        expected = expected.numpy()
        # NaN payloads are not compared: ATen's SIMD min/max OR in an all-ones NaN mask
        # (0xFFFFFFFF) where NumPy gives the default NaN; every quantize maps any NaN alike.
        assert_bitexact(np.isnan(actual), np.isnan(expected), f"float {name} NaN positions n={n}")
        finite = ~np.isnan(expected)
        assert_bitexact(actual[finite].view(np.int32), expected[finite].view(np.int32),
                        f"float {name} n={n}")


@pytest.mark.parametrize("name", ["tanh", "elu"])
def test_float_activations_not_reproducible_raise(name):
    from qexact.ops.activations import prepare_float_activation

    with pytest.raises(qexact.UnsupportedError, match=f"{name} on float32"):
        prepare_float_activation(name, engine="fbgemm")


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
        prepare_activation("gelu", QParams.per_tensor(0.1, 0, QUINT8), None, "fbgemm")
    with pytest.raises(QuantParamError, match="required"):
        prepare_activation("hardswish", QParams.per_tensor(0.1, 0, QUINT8), None, "fbgemm")
    qp = QParams.per_tensor(0.1, 3, QUINT8)
    p = prepare_activation("sigmoid", qp, None, "qnnpack")
    with pytest.raises(qexact.ShapeError, match="empty input tensor"):
        activation(QuantizedArray(np.zeros((), np.uint8), qp), p)


def _table_entries(function, s, z, s_o, z_o):
    """QNNPACK's tables as the sources write them (qnnpack/src/hardswish.c, sigmoid.c, tanh.c;
    measured: float tanhf), independently of the kernel's steps."""
    from qexact.float_math import glibc_expf, glibc_tanhf

    f32 = np.float32
    x = (f32(s) * (np.arange(256) - z).astype(f32)).astype(f32)
    with np.errstate(over="ignore"):
        if function == "sigmoid":
            t = (f32(256) / (f32(1) + glibc_expf(-x)).astype(f32)).astype(f32)
        elif function == "tanh":
            t = ((f32(128) * glibc_tanhf(x)).astype(f32) + f32(128)).astype(f32)
        else:
            clipped = np.minimum(np.maximum((x + f32(3)).astype(f32), f32(0)), f32(6))
            y = ((x * clipped).astype(f32) / f32(6)).astype(f32)
            t = ((f32(1) / f32(s_o)) * y).astype(f32)
            t = (t + f32(z_o)).astype(f32)
    return np.rint(np.clip(t, 0, 255).astype(np.float64)).astype(np.uint8)


def test_qnnpack_engine_runs_quint8_hardswish_sigmoid_tanh_as_tables():
    """qhardswish.cpp / qsigmoid.cpp / qtanh.cpp send quint8 inputs to QNNPACK's lookup tables on
    the qnnpack engine (measured: the ATen lambdas miss 199 of 773,120 sigmoid entries near ties,
    the tables none); qint8, the other activations and the other engines run ATen's lambdas.
    The tables the kernel's steps build equal the sources' formulas."""
    from qexact.engines.qnnpack_lut import table

    rng = np.random.default_rng(3)
    for function in ("hardswish", "sigmoid", "tanh", "elu", "leaky_relu", "hardsigmoid"):
        for dtype in (QUINT8, QINT8):
            qp = QParams.per_tensor(0.05, 3 if dtype is QUINT8 else -3, dtype)
            out = QParams.per_tensor(0.02, 7, dtype)
            for engine in qexact.engines.engine_names():
                kernel = prepare_activation(function, qp, out, engine).kernel
                lookup = [path.lookup for path in kernel.paths]
                expected = engine == "qnnpack" and dtype is QUINT8 and function in (
                    "hardswish", "sigmoid", "tanh")
                assert lookup == ([True] if expected else [False, False]), (function, engine)
    for case in range(200):
        function = ("hardswish", "sigmoid", "tanh")[case % 3]
        s, s_o = (float(v) for v in 10.0 ** rng.uniform(-3, 0, 2))
        z, z_o = (int(v) for v in rng.integers(0, 256, 2))
        p = prepare_activation(function, QParams.per_tensor(s, z, QUINT8),
                               QParams.per_tensor(s_o, z_o, QUINT8), "qnnpack")
        s_o, z_o = p.output_qparams.scale, p.output_qparams.zero_point
        assert_bitexact(table(p.kernel), _table_entries(function, s, z, s_o, z_o),
                        f"{function} table s={s} z={z}")


def _path_of(stages, label):
    (path,) = [stage for stage in stages if stage.name == f"{label}: path"]
    return path.values["path"]


@pytest.mark.parametrize("engine", qexact.engines.engine_names())
@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_explain_replays_the_run(engine, capability):
    """Explain's last stage is the output element, for every activation, both dtypes, the SIMD
    body and the scalar tail (ATen's lambdas: the dequantized value, the function, the quantize
    steps with their constants), elu's contiguous output on a channels_last input (every
    element scalar), QNNPACK's tables (the entry read, and how it was built) and QNNPACK's clamp
    on a channels_last input (the element it read)."""
    from qexact.layout import to_channels_last
    from qexact.ops.activations import ActivationOp, ClampOp, ClampParams

    ours = qexact.get_engine(engine, aten_capability=capability)
    rng = np.random.default_rng([len(engine), len(capability)])
    for case in range(24):
        dtype = QUINT8 if case % 2 else QINT8
        function = ("sigmoid", "tanh", "hardsigmoid", "hardswish", "leaky_relu", "elu")[case % 6]
        qp = QParams.per_tensor(float(10 ** rng.uniform(-2, -0.5)),
                                int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        out = QParams.per_tensor(float(10 ** rng.uniform(-2, -0.5)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        constants = {"slope": 0.2} if function == "leaky_relu" else (
            {"alpha": 0.7, "scale": 1.3, "input_scale": 0.9} if function == "elu" else {})
        p = prepare_activation(function, qp, out, ours, num_threads=1, **constants)
        shape = (130,) if case % 4 < 2 else (2, 3, 5, 7)
        values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
        if len(shape) == 4:
            values = to_channels_last(values)
        x = QuantizedArray(values, qp)
        result = activation(x, p)
        table = p.kernel.paths[0].lookup
        for index in ([(0,), (63,), (64,), (129,)] if len(shape) == 1
                      else [(0, 0, 0, 0), (1, 2, 4, 6), (1, 1, 2, 3)]):
            stages, upstream = ActivationOp.explain(p, [x], result, index)
            assert upstream == [(0, index)]
            assert stages[-1].result == result.values[index], (engine, function, index)
            path = _path_of(stages, function)
            if table:
                assert path == f"QNNPACK {function} 256-entry table"
                (lookup,) = [stage for stage in stages if stage.name.endswith("table lookup")]
                assert lookup.values["q"] == values[index]
                built = [stage for stage in stages if "table entry" in stage.name]
                assert built[0].values["v"] == values[index]  # the entry of this element's code
                assert built[-1].result == lookup.result
                continue
            # the walk: C order (1-D), N, H, W, C (channels_last); SIMD units of 64 bytes
            walked = index[0] if len(shape) == 1 else (
                index[0] * 105 + (index[2] * 7 + index[3]) * 3 + index[1])
            simd = (capability == "avx2" and walked < (128 if len(shape) == 1 else 192)
                    and not (function == "elu" and len(shape) == 4))
            assert path.startswith("SIMD body" if simd else "scalar tail"), (function, index, path)
            names = [stage.name for stage in stages]
            assert f"{function}: float function" in names
            function_stage = stages[names.index(f"{function}: float function")]
            assert ("sleef" in function_stage.formula.lower()) == (
                simd and function in ("sigmoid", "tanh", "elu"))
            assert any("zero point" in name for name in names)
        if function == "elu" and len(shape) == 4:  # contiguous output, every element scalar
            assert result.values.flags.c_contiguous
    # QNNPACK's clamp operator reads a channels_last quint8 input's bytes in memory order
    values = to_channels_last(rng.integers(0, 256, (2, 3, 4, 5)).astype(np.uint8))
    x = QuantizedArray(values, QParams.per_tensor(0.03, 100, QUINT8))
    params = ClampParams(-1.0, 2.5, ours)
    result = ClampOp.run(params, [x])
    for index in [(0, 0, 0, 0), (0, 1, 0, 0), (1, 2, 3, 4), (0, 0, 1, 2)]:
        stages, [(position, source)] = ClampOp.explain(params, [x], result, index)
        assert stages[-1].result == result.values[index]
        (kernel,) = [stage for stage in stages if stage.name == "clamp: kernel"]
        if engine == "qnnpack":
            assert kernel.values["kernel"].startswith("QNNPACK clamp")
            order = (0, 2, 3, 1)  # NHWC bytes read as NCHW
            flat = np.ravel_multi_index(index, values.shape)
            assert source == np.unravel_index(
                np.arange(values.size).reshape(values.shape).transpose(order).ravel()[flat],
                values.shape)
        else:
            assert kernel.values["kernel"] == "ATen qclamp_kernel" and source == index
        low, high = (int(np.clip(np.rint(b / 0.03 + 100), 0, 255)) for b in (-1.0, 2.5))
        assert result.values[index] == min(max(int(values[source]), low), high)


CAPABILITY_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {support!r})
import numpy as np, torch
from support.torch_ref import torch_quantized
from qexact import QINT8, QUINT8, QParams, QuantizedArray
from qexact.ops.activations import activation, prepare_activation
rng = np.random.default_rng(11)
bad = elements = 0
for engine in ("fbgemm", "qnnpack"):
    torch.backends.quantized.engine = engine
    for case in range(150):
        dtype = QUINT8 if case % 2 else QINT8
        values = rng.integers(dtype.qmin, dtype.qmax + 1, 64 * 2 + int(rng.integers(0, 64))).astype(dtype.numpy_dtype)
        qp = QParams.per_tensor(float(10 ** rng.uniform(-3, 0)), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        out = QParams.per_tensor(float(10 ** rng.uniform(-3, -1)), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
        x = torch_quantized(values, qp)
        constants = (float(rng.uniform(0.2, 2)), float(rng.uniform(0.2, 2)), float(rng.uniform(0.2, 2)))
        for name, theirs in (("sigmoid", torch.sigmoid(x)), ("tanh", torch.tanh(x)),
                             ("elu", torch.ops.quantized.elu(x, out.scale, out.zero_point, *constants))):
            extra = dict(zip(("alpha", "scale", "input_scale"), constants)) if name == "elu" else {{}}
            p = prepare_activation(name, qp, out if name == "elu" else None, engine=engine,
                                   num_threads=torch.get_num_threads(), **extra)
            ours = activation(QuantizedArray(values, qp), p).values
            bad += int((ours != theirs.int_repr().numpy()).sum())
            elements += values.size
print(torch.backends.cpu.get_cpu_capability(), p.kernel.placement.numerics.capability, elements, bad)
"""


@pytest.mark.torch
def test_aten_capability_default_subprocess():
    """ATEN_CPU_CAPABILITY=default: every element takes the scalar lambda (glibc expf, tanhf,
    expm1f; no SLEEF), on fbgemm and on qnnpack (whose quint8 sigmoid/tanh tables do not depend
    on the capability)."""
    support = os.path.dirname(os.path.dirname(__file__))
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", CAPABILITY_SCRIPT.format(support=support)],
                            env=env, capture_output=True, text=True, check=True)
    capability, numerics, elements, bad = result.stdout.split()
    assert (capability, numerics, bad) == ("DEFAULT", "default", "0"), result.stdout
    assert int(elements) > 100_000


@pytest.mark.torch
def test_eager_model_activations(engine):
    import torch
    from torch import nn
    from torch.ao import quantization as tq

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = tq.QuantStub()
            self.layers = nn.Sequential(nn.LeakyReLU(0.2), nn.ReLU6(), nn.ELU(0.7), nn.Hardtanh(-0.5, 2.0),
                                        nn.Tanh(), nn.Sigmoid(), nn.ELU(), nn.Hardsigmoid())
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
def test_sigmoid_at_a_sleef_exp_rounding_boundary():
    """Found by qexact conformance --seed 4: x_q = 83, s = 0.02308051080758487, z = 173. The
    SIMD body dequantizes with ``f32(f32(q - z) s)`` (two-argument ``Vectorized::dequantize``),
    giving -2.077246 and sigmoid * 256 = 28.500006 -> 29; the fma form would give -2.0772462,
    exactly 28.5 -> 28."""
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
@pytest.mark.parametrize("size", [64, 40, 104])
def test_elu_vector_block_near_a_tie(size):
    """Found by qexact conformance --seed 4 on x86: x_q = 29, s = 0.016651272550631445, z = 108,
    s_out = 0.004558545378589201, z_out = 229. expm1(x) / s_out is exactly -160.5: the SIMD body
    rounds it and adds z_out (-160 + 229 = 69), the scalar tail adds z_out first (68.5 -> 68)."""
    torch = pytest.importorskip("torch")
    from qexact.ops.activations import activation, prepare_activation

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    try:
        x_qparams = qexact.QParams.per_tensor(0.016651272550631445, 108, qexact.QUINT8)
        out_qparams = qexact.QParams.per_tensor(0.004558545378589201, 229, qexact.QUINT8)
        x = np.full(size, 29, np.uint8)
        params = prepare_activation("elu", x_qparams, out_qparams, "x86",
                                    num_threads=torch.get_num_threads())
        ours = activation(qexact.QuantizedArray(x, x_qparams), params).values
        theirs = torch.ops.quantized.elu(torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(x), x_qparams.scale, x_qparams.zero_point),
            out_qparams.scale, out_qparams.zero_point).int_repr().numpy()
    finally:
        torch.backends.quantized.engine = previous
    assert_bitexact(ours, theirs, "elu near a tie")
