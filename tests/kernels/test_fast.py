"""``qexact.kernels.fast``: a Linear's and a Conv's output on the fast backend equals the NumPy
path's, bit for bit, on drawn geometries and every engine and ISA: the dispatch (fused GEMM and
epilogue, pointwise convs without im2col, depthwise, grouped, fallbacks) as the ops call it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexact import QINT8, QUINT8, QParams, QuantizedArray
from qexact.kernels import fast_available, fast_unavailable, using
from qexact.ops.conv import conv, prepare_conv
from qexact.ops.linear import linear, prepare_linear

pytestmark = pytest.mark.skipif(not fast_available(), reason=fast_unavailable())
GEMM_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
ISAS = ("avx512_vnni", "avx2")


def both_backends(run):
    with using("numpy"):
        expected = run()
    with using("fast"):
        got = run()
    return expected, got


def assert_same(expected, got, context):
    expected_values = getattr(expected, "values", expected)
    got_values = getattr(got, "values", got)
    assert got_values.dtype == expected_values.dtype, context
    assert got_values.shape == expected_values.shape, context
    assert np.array_equal(np.ascontiguousarray(got_values).view(np.uint8),
                          np.ascontiguousarray(expected_values).view(np.uint8)), context


def weight_qparams(rng, engine, channels, per_channel):
    symmetric = engine != "qnnpack"
    if per_channel:
        zero_points = np.zeros(channels, np.int64) if symmetric else rng.integers(-5, 6, channels)
        return QParams.per_channel(rng.uniform(0.002, 0.02, channels), zero_points, 0, QINT8)
    return QParams.per_tensor(float(rng.uniform(0.002, 0.02)),
                              0 if symmetric else int(rng.integers(-5, 6)), QINT8)


@settings(max_examples=120)
@given(seed=st.integers(0, 2 ** 31), engine=st.sampled_from(GEMM_ENGINES),
       isa=st.sampled_from(ISAS), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       padding=st.integers(0, 1), groups_kind=st.sampled_from(["one", "depthwise", "grouped"]),
       channels=st.sampled_from([3, 4, 8, 12, 16]), relu=st.booleans(),
       per_channel=st.booleans(), channels_last=st.booleans(), extreme=st.booleans())
def test_conv_fast_equals_numpy(seed, engine, isa, kernel, stride, padding, groups_kind,
                                channels, relu, per_channel, channels_last, extreme):
    rng = np.random.default_rng(seed)
    groups = {"one": 1, "depthwise": channels, "grouped": 2 if channels % 2 == 0 else 1}[
        groups_kind]
    out_channels = {"one": 12, "depthwise": channels, "grouped": 2 * groups}[groups_kind]
    weight = rng.integers(-128, 128, (out_channels, channels // groups, kernel, kernel))
    x = rng.integers(0, 256, (2, channels, 7, 6))
    if extreme:  # int16 pair saturation where the engine has it
        weight = np.where(weight < 0, -128, 127)
        x = np.where(x < 128, 0, 255)
    x_qp = QParams.per_tensor(0.05, int(rng.integers(0, 256)), QUINT8)
    out_qp = QParams.per_tensor(float(rng.uniform(0.05, 2.0)), int(rng.integers(0, 256)), QUINT8)
    bias = rng.normal(0, 3, out_channels).astype(np.float32)
    params = prepare_conv(weight.astype(np.int8), weight_qparams(rng, engine, out_channels,
                                                                 per_channel),
                          bias, x_qp, out_qp, stride=stride, padding=padding, groups=groups,
                          relu=relu, engine=engine, isa=isa)
    values = x.astype(np.uint8)
    if channels_last:
        values = np.moveaxis(np.ascontiguousarray(np.moveaxis(values, 1, -1)), -1, 1)
    expected, got = both_backends(lambda: conv(QuantizedArray(values, x_qp), params))
    assert_same(expected, got, f"{engine} {isa} {params.kernel}")
    assert got.values.strides == expected.values.strides


@pytest.mark.parametrize("engine", GEMM_ENGINES)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("depth", [1, 3, 4, 10, 64, 257])
def test_linear_fast_equals_numpy(engine, isa, depth):
    rng = np.random.default_rng(depth)
    for per_channel, relu in ((False, False), (True, True)):
        weight = rng.integers(-128, 128, (9, depth)).astype(np.int8)
        x_qp = QParams.per_tensor(0.03, int(rng.integers(0, 256)), QUINT8)
        out_qp = QParams.per_tensor(float(rng.uniform(0.1, 3.0)), int(rng.integers(0, 256)),
                                    QUINT8)
        params = prepare_linear(weight, weight_qparams(rng, engine, 9, per_channel),
                                rng.normal(0, 2, 9).astype(np.float32), x_qp, out_qp,
                                relu=relu, engine=engine, isa=isa)
        for rows in ((1, depth), (5, 3, depth)):
            x = QuantizedArray(rng.integers(0, 256, rows).astype(np.uint8), x_qp)
            expected, got = both_backends(lambda: linear(x, params))
            assert_same(expected, got, f"{engine} {isa} {rows}")


def test_pointwise_conv_reads_channels_last_activations_without_a_copy():
    """A 1x1 conv on channels-last activations whose channels fill the packed depth: the
    kernel's rows are the activations' own memory."""
    from qexact.kernels import fast

    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (16, 8, 1, 1)).astype(np.int8)
    x_qp = QParams.per_tensor(0.05, 3, QUINT8)
    params = prepare_conv(weight, QParams.per_tensor(0.01, 0, QINT8), None, x_qp,
                          QParams.per_tensor(0.5, 7, QUINT8), engine="x86", isa="avx512_vnni")
    values = np.moveaxis(rng.integers(0, 256, (2, 5, 4, 8)).astype(np.uint8), -1, 1)
    rows = fast._pointwise_rows(values, params, fast.plan_of(params))
    assert rows is not None and np.shares_memory(rows, values)
    expected, got = both_backends(lambda: conv(QuantizedArray(values, x_qp), params))
    assert_same(expected, got, "pointwise")


@pytest.mark.parametrize("engine, isa, channels, groups, out_channels, padding, padding_mode, "
                         "fast_path", [
                             ("onednn", "avx2", 4, 1, 8, 1, "zeros", False),  # raw-0 padded pairs
                             ("onednn", "avx2", 3, 1, 8, 0, "zeros", False),  # pairs per tap
                             ("onednn", "avx2", 4, 1, 8, 0, "zeros", True),
                             ("fbgemm", "avx2", 3, 1, 8, 1, "zeros", True),   # odd K, saturating
                             ("fbgemm", "avx2", 6, 6, 12, 1, "zeros", True),  # depthwise x2
                             ("qnnpack", "avx2", 5, 1, 7, 1, "reflect", True),
                             ("x86", "avx512_vnni", 8, 4, 8, 1, "circular", True),
                         ])
def test_conv_hand_picked_paths(engine, isa, channels, groups, out_channels, padding,
                                padding_mode, fast_path):
    """Saturating extremes on the kernels' own paths, and the layers the fast kernels leave to
    the NumPy path (``conv_output`` None) giving the same values."""
    from qexact.kernels import fast

    rng = np.random.default_rng(channels + groups)
    weight = np.where(rng.random((out_channels, channels // groups, 3, 3)) < 0.5, -128, 127)
    x_qp = QParams.per_tensor(0.05, 250, QUINT8)
    params = prepare_conv(weight.astype(np.int8),
                          weight_qparams(rng, engine, out_channels, True), None, x_qp,
                          QParams.per_tensor(4.0, 9, QUINT8), padding=padding, groups=groups,
                          padding_mode=padding_mode, engine=engine, isa=isa)
    values = np.where(rng.random((2, channels, 6, 5)) < 0.7, 255, 0).astype(np.uint8)
    with using("fast"):
        taken = fast.conv_output(values, params, params.requantization) is not None
    assert taken == fast_path
    expected, got = both_backends(lambda: conv(QuantizedArray(values, x_qp), params))
    assert_same(expected, got, f"{engine} {isa} {params.kernel}")
