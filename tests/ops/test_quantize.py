"""quantize_per_tensor, quantize_per_channel, dequantize.

Sections: properties, errors, differential against PyTorch (every engine x dtype x per-tensor /
per-channel; each cell compares well over 100,000 elements, counted in ``COMPARED``).

The large value arrays are made by NumPy from a Hypothesis-drawn seed (``make_values``): a mix of
random values over the clamp range, exact .5 ties ``k * scale / 2`` (exact for power-of-two scales),
their float32 neighbours, values at and around the clamp edges, huge values, NaN, +-inf,
subnormals, +-0.0 and random float32 bit patterns.
"""

from __future__ import annotations

from functools import partial

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qexact
from qexact import QINT8, QINT32, QUINT8, QuantParamError, ShapeError
from qexact.rounding import INT32_MAX, INT32_MIN
from support.assertions import assert_bitexact

DTYPES = (QUINT8, QINT8, QINT32)
ENGINE_NAMES = ("fbgemm", "x86", "qnnpack", "onednn")
MIN_ELEMENTS_PER_CELL = 100_000

# inf * 0, overflow to inf, ... are the point of the edge inputs.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
ELEMENTS_PER_EXAMPLE = 10_000
DIFF_EXAMPLES = 12  # 12 x >= 10,000 = >= 120,000 elements per (engine, dtype, granularity)

# (engine, dtype name, "per_tensor" | "per_channel" | "dequantize_*") -> elements compared.
COMPARED: Counter = Counter()

DIFF_SETTINGS = settings(
    max_examples=DIFF_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

POWER_OF_TWO_SCALES = [2.0 ** e for e in range(-14, 4)]
ODD_SCALES = [1 / 3, 0.1, 1 / 127.5, 1 / 255, 0.007874015718698502, 3.0517578125e-05, 1e-4, 10.0,
              1e-6, 1e-10, 1e-30, 1e-40, 123.456, 1e5, 1e10, 1e30, 1e39, 2.0 ** -126, 2.0 ** -149]


def scales():
    """Power-of-two scales (exact ties), log-uniform 1e-4..10, and odd ones (subnormal float32,
    a float32 overflow, a reciprocal that overflows)."""
    return st.one_of(
        st.sampled_from(POWER_OF_TWO_SCALES),
        st.floats(-4, 1).map(lambda e: float(10.0 ** e)),
        st.floats(1e-4, 10.0),
        st.sampled_from(ODD_SCALES),
    )


def zero_points(dtype):
    if dtype == QINT32:
        return st.one_of(st.integers(-1000, 1000), st.integers(INT32_MIN, INT32_MAX),
                         st.sampled_from([INT32_MIN, INT32_MAX, INT32_MIN + 1, INT32_MAX - 1,
                                          1 << 24, -(1 << 24), (1 << 24) + 1, 1 << 30]))
    return st.one_of(st.integers(dtype.qmin, dtype.qmax), st.sampled_from([dtype.qmin, dtype.qmax]))


def torch_dtype(dtype):
    import torch

    return {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32}[dtype.name]


# ---------------------------------------------------------------- value generator

SPECIALS = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max,
                     -np.finfo(np.float32).max, 1e30, -1e30, 3e38, -3e38, 1e20, -1e20, 2.0 ** 31,
                     -(2.0 ** 31), 2.0 ** 24, 2.0 ** 23 + 0.5, -(2.0 ** 23) - 0.5,
                     np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny, 1e-45, -1e-45,
                     1e-40, -1e-40, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5], dtype=np.float32)


def make_values(rng: np.random.Generator, scale, zero_point, dtype) -> np.ndarray:
    """Float32 test values; ``scale`` (float64) and ``zero_point`` (int64) are arrays of the output
    shape (per-channel parameters broadcast), so every element knows its own qparams."""
    shape = np.shape(scale)
    n = int(np.prod(shape))
    scale = np.asarray(scale, np.float64).reshape(-1)
    zp = np.asarray(zero_point, np.int64).reshape(-1).astype(np.float64)
    qmin, qmax = float(dtype.qmin), float(dtype.qmax)
    kind = rng.integers(0, 8, n)
    out = np.empty(n, np.float64)
    with np.errstate(all="ignore"):
        # 0: uniform over the (slightly widened) clamp range, in integer units.
        if dtype == QINT32:
            narrow = rng.uniform(-(2.0 ** 24), 2.0 ** 24, n)
            wide = rng.uniform(qmin * 1.01, qmax * 1.01, n)
            u = np.where(rng.integers(0, 2, n) == 0, narrow, wide - zp)
        else:
            u = rng.uniform(qmin - 4, qmax + 4, n) - zp
        out[:] = u * scale
        # 1, 2: exact ties k * scale / 2 (k odd mostly) and their float32 neighbours.
        if dtype == QINT32:
            k = rng.integers(-(1 << 25), 1 << 25, n).astype(np.float64)
        else:
            k = rng.integers(int(2 * (qmin - 4)), int(2 * (qmax + 4)), n) - 2 * zp
        ties = (k * scale / 2).astype(np.float32)
        out = np.where(kind == 1, ties, out)
        up = np.nextafter(ties, np.float32(np.inf))
        down = np.nextafter(ties, np.float32(-np.inf))
        out = np.where(kind == 2, np.where(rng.integers(0, 2, n) == 0, up, down), out)
        # 3: the clamp edges, +-{0, 0.5, 1, 2} integer steps, and float32 neighbours.
        edge = np.where(rng.integers(0, 2, n) == 0, qmin, qmax) - zp
        offset = rng.choice([-2.0, -1.0, -0.5, -0.49999, -0.50001, 0.0, 0.5, 0.49999, 0.50001, 1.0,
                             2.0], n)
        edges = ((edge + offset) * scale).astype(np.float32)
        step = rng.integers(-1, 2, n)
        edges = np.where(step > 0, np.nextafter(edges, np.float32(np.inf)),
                         np.where(step < 0, np.nextafter(edges, np.float32(-np.inf)), edges))
        out = np.where(kind == 3, edges, out)
        # 4: specials (NaN, +-inf, +-0.0, huge, subnormals, tiny normals, small ties).
        out = np.where(kind == 4, rng.choice(SPECIALS, n), out)
        # 5: random subnormals and tiny values.
        subnormal = rng.integers(1, 1 << 23, n, dtype=np.uint32).view(np.float32)
        subnormal = np.where(rng.integers(0, 2, n) == 0, subnormal, -subnormal)
        out = np.where(kind == 5, subnormal, out)
        # 6: random float32 bit patterns (every exponent, NaN payloads included).
        bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
        out = np.where(kind == 6, bits, out)
        # 7: values near zero in integer units (the zero point's neighbourhood).
        out = np.where(kind == 7, rng.uniform(-6, 6, n) * scale, out)
        values = out.astype(np.float32)
    # NaN payloads from kind 6 stay as they are; float64 -> float32 would quiet them, so put the
    # raw patterns back.
    values = np.where(kind == 6, bits, values).astype(np.float32)
    return values.reshape(shape)


# ---------------------------------------------------------------- properties

@given(seed=st.integers(0, 2 ** 32 - 1), scale=scales(), data=st.data())
@settings(max_examples=60)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_output_in_range_and_nan_rules(dtype, seed, scale, data):
    zp = data.draw(zero_points(dtype))
    rng = np.random.default_rng(seed)
    x = make_values(rng, np.full(2000, scale), np.full(2000, zp), dtype)
    q = qexact.quantize_per_tensor(x, scale, zp, dtype)
    assert q.values.dtype == dtype.numpy_dtype
    assert q.qparams == qexact.QParams.per_tensor(scale, zp, dtype)
    nan = np.isnan(x)
    expected_nan = INT32_MIN if dtype == QINT32 else dtype.qmax
    assert_bitexact(q.values[nan], np.full(int(nan.sum()), expected_nan, dtype.numpy_dtype), "NaN")
    inverse = np.float32(1) / np.float32(scale)
    if np.isfinite(inverse) and inverse != 0:  # a scale past float32 gives inf * 0 = NaN: qmax
        pos_inf = x == np.inf
        assert np.all(q.values[pos_inf] == dtype.qmax)
        assert np.all(q.values[x == -np.inf] == dtype.qmin)


@given(seed=st.integers(0, 2 ** 32 - 1), scale=st.floats(1e-4, 10.0), data=st.data())
@settings(max_examples=60)
@pytest.mark.parametrize("dtype", (QUINT8, QINT8), ids=lambda d: d.name)
def test_quantize_dequantize_idempotent_on_grid(dtype, seed, scale, data):
    zp = data.draw(zero_points(dtype))
    q = np.arange(dtype.qmin, dtype.qmax + 1).astype(dtype.numpy_dtype)
    np.random.default_rng(seed).shuffle(q)
    r = qexact.dequantize(qexact.QuantizedArray(q, qexact.QParams.per_tensor(scale, zp, dtype)))
    assert r.dtype == np.float32
    assert_bitexact(qexact.quantize_per_tensor(r, scale, zp, dtype).values, q, "q(dq(q))")


@given(seed=st.integers(0, 2 ** 32 - 1),
       scale=st.one_of(st.sampled_from(POWER_OF_TWO_SCALES), st.floats(1e-4, 10.0)), data=st.data())
@settings(max_examples=40)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_monotone_in_x(dtype, seed, scale, data):
    """Monotone for scales whose float32 reciprocal is finite and non-zero (for the odd scales
    1e-40 / 1e39, ``0 * inf`` and ``inf * 0`` are NaN, which torch maps to qmax)."""
    zp = data.draw(zero_points(dtype))
    x = make_values(np.random.default_rng(seed), np.full(3000, scale), np.full(3000, zp), dtype)
    x = np.sort(x[~np.isnan(x)])
    q = qexact.quantize_per_tensor(x, scale, zp, dtype).values.astype(np.int64)
    assert np.all(np.diff(q) >= 0)


def test_doc_example_and_ties_to_even():
    q = qexact.quantize_per_tensor(np.float32([0.0, 0.25, 0.5, 0.75, 1.0, -0.25]), 0.5, 3, QUINT8)
    # t = x/0.5 + 3 = 3, 3.5, 4, 4.5, 5, 2.5 -> ties to even.
    assert_bitexact(q.values, np.uint8([3, 4, 4, 4, 5, 2]), "ties")


def test_per_channel_nan_gives_zero_for_8_bit():
    x = np.float32([[np.nan, 1.0], [np.nan, -1.0]])
    q = qexact.quantize_per_channel(x, [0.5, 0.25], [10, 20], 0, QINT8)
    assert_bitexact(q.values, np.int8([[0, 12], [0, 16]]), "per-channel NaN")
    q32 = qexact.quantize_per_channel(x, [0.5, 0.25], [10, 20], 0, QINT32)
    assert_bitexact(q32.values, np.int32([[INT32_MIN, 12], [INT32_MIN, 16]]), "qint32 NaN")


# ---------------------------------------------------------------- errors

def test_float64_input_is_rejected():
    with pytest.raises(ShapeError, match="must be float32.*got float64"):
        qexact.quantize_per_tensor(np.zeros(3), 0.1, 0, QUINT8)
    with pytest.raises(ShapeError, match="must be float32.*got float64"):
        qexact.quantize_per_channel(np.zeros((2, 3)), [0.1, 0.2], [0, 0], 0, QINT8)


def test_integer_and_float16_input_are_rejected():
    with pytest.raises(ShapeError, match="must be float32.*got int64"):
        qexact.quantize_per_tensor(np.zeros(3, np.int64), 0.1, 0, QUINT8)
    with pytest.raises(ShapeError, match="must be float32.*got float16"):
        qexact.quantize_per_tensor(np.zeros(3, np.float16), 0.1, 0, QUINT8)


@pytest.mark.parametrize("axis", [2, -3, 5])
def test_bad_axis(axis):
    message = f"axis {axis} out of range for an input of shape \\(2, 3\\)"
    with pytest.raises(ShapeError, match=message):
        qexact.quantize_per_channel(np.zeros((2, 3), np.float32), [0.1, 0.2], [0, 0], axis, QINT8)


def test_wrong_number_of_channels():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match="3 per-channel scales for axis 0 of size 2"):
        qexact.quantize_per_channel(x, [0.1, 0.2, 0.3], [0, 0, 0], 0, QINT8)
    with pytest.raises(ShapeError, match="2 per-channel scales for axis 1 of size 3"):
        qexact.quantize_per_channel(x, [0.1, 0.2], [0, 0], -1, QINT8)


def test_negative_axis_is_normalised():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    q = qexact.quantize_per_channel(x, [1.0, 2.0, 4.0], [0, 1, 2], -1, QINT8)
    assert q.qparams.axis == 1
    assert_bitexact(q.values, np.int8([[0, 2, 2], [3, 3, 3]]), "axis -1")  # 1.5 -> 2, 2.5 -> 2


@pytest.mark.parametrize("scale, zp, dtype, match", [
    (0.0, 0, QUINT8, "scale must be a positive finite number, got 0.0"),
    (-0.1, 0, QINT8, "scale must be a positive finite number, got -0.1"),
    (float("nan"), 0, QINT8, "scale must be a positive finite number, got nan"),
    (float("inf"), 0, QINT32, "scale must be a positive finite number, got inf"),
    (0.1, 256, QUINT8, r"zero_point 256 out of range \[0, 255\] for quint8"),
    (0.1, -1, QUINT8, r"zero_point -1 out of range \[0, 255\] for quint8"),
    (0.1, 128, QINT8, r"zero_point 128 out of range \[-128, 127\] for qint8"),
    (0.1, 2 ** 31, QINT32, r"zero_point 2147483648 out of range"),
])
def test_quantize_per_tensor_bad_qparams(scale, zp, dtype, match):
    with pytest.raises(QuantParamError, match=match):
        qexact.quantize_per_tensor(np.zeros(3, np.float32), scale, zp, dtype)


def test_quantize_per_channel_bad_qparams():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(QuantParamError, match="must be positive and finite"):
        qexact.quantize_per_channel(x, [0.1, 0.0], [0, 0], 0, QINT8)
    with pytest.raises(QuantParamError, match="out of range"):
        qexact.quantize_per_channel(x, [0.1, 0.2], [0, 300], 0, QUINT8)
    with pytest.raises(QuantParamError, match="must be non-empty and of one length"):
        qexact.quantize_per_channel(x, [0.1, 0.2], [0], 0, QINT8)


def test_quantized_array_dtype_check():
    with pytest.raises(ShapeError, match="values of a quint8 array must be uint8, got int8"):
        qexact.QuantizedArray(np.zeros(3, np.int8), qexact.QParams.per_tensor(0.1, 0, QUINT8))


# ---------------------------------------------------------------- differential against PyTorch

def _context(engine, what, **params):
    import torch

    return (f"{what} torch {torch.__version__} engine={torch.backends.quantized.engine} ({engine}) "
            + " ".join(f"{k}={v!r}" for k, v in params.items()))


def _check_dequantize(engine, q, tq, context, inputs):
    """Dequantize of qexact's result vs torch's, compared as float32 bit patterns."""
    expected = tq.dequantize().numpy()
    assert_bitexact(qexact.dequantize(q), expected, "dequantize " + context, inputs)


def _exact_ties(x, scale, zp, dtype) -> int:
    """How many elements have a pre-rounding value ``t`` exactly halfway between two integers."""
    from qexact.ops.quantize import quantize_values, reciprocal_float32, torch_zero_point_entry

    t = quantize_values(x, reciprocal_float32(scale), zp, torch_zero_point_entry(dtype, False))
    t = t.astype(np.float64)
    return int(np.sum(np.isfinite(t) & (t - np.floor(t) == 0.5)))


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@DIFF_SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), scale=scales(), data=st.data())
def test_quantize_per_tensor_vs_torch(engine, dtype, seed, scale, data):
    torch = pytest.importorskip("torch")
    zp = data.draw(zero_points(dtype), label="zero_point")
    x = make_values(np.random.default_rng(seed), np.full(ELEMENTS_PER_EXAMPLE, scale),
                    np.full(ELEMENTS_PER_EXAMPLE, zp), dtype)
    tq = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, torch_dtype(dtype))
    q = qexact.quantize_per_tensor(x, scale, zp, dtype)
    context = _context(engine, "quantize_per_tensor", dtype=dtype.name, scale=scale, zp=zp,
                       seed=seed)
    assert_bitexact(q.values, tq.int_repr().numpy(), context, {"scale": scale, "zp": zp})
    _check_dequantize(engine, q, tq, context, {"scale": scale, "zp": zp})
    COMPARED[(engine, dtype.name, "per_tensor")] += x.size
    COMPARED[(engine, dtype.name, "per_tensor_exact_ties")] += _exact_ties(x, scale, zp, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@DIFF_SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), channels=st.integers(1, 24), ndim=st.integers(2, 3),
       scale_family=st.sampled_from(["pow2", "log", "odd", "mixed"]), data=st.data())
def test_quantize_per_channel_vs_torch(engine, dtype, seed, channels, ndim, scale_family, data):
    torch = pytest.importorskip("torch")
    axis = data.draw(st.integers(0, ndim - 1), label="axis")
    rng = np.random.default_rng(seed)
    pow2 = rng.choice(POWER_OF_TWO_SCALES, channels)
    log = 10.0 ** rng.uniform(-4, 1, channels)
    odd = rng.choice(ODD_SCALES, channels)
    pick = {"pow2": 0, "log": 1, "odd": 2}.get(scale_family)
    which = rng.integers(0, 3, channels) if pick is None else np.full(channels, pick)
    scales_c = np.choose(which, [pow2, log, odd]).astype(np.float64)
    if dtype == QINT32:
        large = rng.integers(INT32_MIN, INT32_MAX, channels, endpoint=True)
        small = rng.integers(-1000, 1001, channels)
        zps = np.where(rng.integers(0, 2, channels) == 0, large, small)
    else:
        zps = rng.integers(dtype.qmin, dtype.qmax, channels, endpoint=True)
    # The axis holds the channels; the other dims hold >= ELEMENTS_PER_EXAMPLE elements in all.
    rest = -(-ELEMENTS_PER_EXAMPLE // channels)
    shape = [1] * ndim
    shape[axis] = channels
    others = [d for d in range(ndim) if d != axis]
    if len(others) == 2:  # split the rest over two dims (strided channels in the middle/front)
        shape[others[0]] = 2
        shape[others[1]] = -(-rest // 2)
    else:
        shape[others[0]] = rest
    bshape = [1] * ndim
    bshape[axis] = channels
    full_scale = np.broadcast_to(scales_c.reshape(bshape), shape)
    full_zp = np.broadcast_to(zps.reshape(bshape), shape)
    x = make_values(rng, full_scale, full_zp, dtype)
    tq = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(scales_c),
                                    torch.from_numpy(zps.astype(np.int64)), axis,
                                    torch_dtype(dtype))
    q = qexact.quantize_per_channel(x, scales_c, zps, axis, dtype)
    context = _context(engine, "quantize_per_channel", dtype=dtype.name, shape=x.shape,
                       axis=axis, seed=seed, scales=scales_c.tolist(), zps=zps.tolist())
    assert_bitexact(q.values, tq.int_repr().numpy(), context)
    if dtype != QINT32:
        # qint32 per-channel dequantize has its own tests below (a known discrepancy), so that
        # this test keeps checking quantize.
        _check_dequantize(engine, q, tq, context, {})
    COMPARED[(engine, dtype.name, "per_channel")] += x.size


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@DIFF_SETTINGS
@given(seed=st.integers(0, 2 ** 32 - 1), scale=scales(), data=st.data())
def test_dequantize_any_integers_vs_torch(engine, dtype, granularity, seed, scale, data):
    """Dequantize of arbitrary stored integers (not only quantize's outputs): every value of the
    8-bit types, the int32 extremes and large zero points (where ``q - zp`` leaves int32)."""
    pytest.importorskip("torch")
    from support.torch_ref import torch_quantized

    rng = np.random.default_rng(seed)
    n = 4096
    if dtype == QINT32:
        values = rng.integers(INT32_MIN, INT32_MAX, n, endpoint=True)
        values[: n // 8] = rng.choice([INT32_MIN, INT32_MAX, INT32_MIN + 1, INT32_MAX - 1, 0, -1,
                                       1], n // 8)
        values[n // 8: n // 4] = rng.integers(-(1 << 24), 1 << 24, n // 8)
    else:
        values = rng.integers(dtype.qmin, dtype.qmax, n, endpoint=True)
    if granularity == "per_tensor":
        zp = data.draw(zero_points(dtype), label="zero_point")
        qparams = qexact.QParams.per_tensor(scale, zp, dtype)
        values = values.astype(dtype.numpy_dtype)
    else:
        channels = 16
        values = values.astype(dtype.numpy_dtype).reshape(-1, channels)
        scales_c = np.where(rng.integers(0, 2, channels) == 0, rng.choice(ODD_SCALES, channels),
                            10.0 ** rng.uniform(-4, 1, channels))
        if dtype == QINT32:
            zps = np.where(rng.integers(0, 2, channels) == 0,
                           rng.integers(INT32_MIN, INT32_MAX, channels, endpoint=True),
                           rng.integers(-1000, 1001, channels))
        else:
            zps = rng.integers(dtype.qmin, dtype.qmax, channels, endpoint=True)
        qparams = qexact.QParams.per_channel(scales_c, zps, 1, dtype)
    q = qexact.QuantizedArray(values, qparams)
    expected = torch_quantized(values, qparams).dequantize().numpy()
    context = _context(engine, f"dequantize {granularity}", dtype=dtype.name, seed=seed,
                       qparams=qparams.describe())
    assert_bitexact(qexact.dequantize(q), expected, context)
    COMPARED[(engine, dtype.name, f"dequantize_{granularity}")] += values.size


@pytest.mark.torch
def test_dequantize_per_channel_qint32_minimal(engine):
    """Smallest reproducer of a discrepancy: torch computes per-channel dequantize as
    ``f32(double(f32(f32(q) - f32(zp))) * scale_c)`` (the subtraction in float32, after converting
    q and zp to float32 separately); qexact computes ``f32(q - zp)`` exactly in int64 first. The two
    agree for 8-bit types but not for qint32 once |q| or |zp| exceed 2**24. Here q = 2**24 + 1,
    zp = 1, scale 1.0: torch gives f32(16777217) - 1 = 16777215.0, qexact 16777216.0.
    (Checked on 200,000 random qint32 elements: torch's formula above matches 100 %.)"""
    pytest.importorskip("torch")
    from support.torch_ref import torch_quantized

    qparams = qexact.QParams.per_channel([1.0], [1], 0, QINT32)
    values = np.int32([2 ** 24 + 1])
    expected = torch_quantized(values, qparams).dequantize().numpy()
    assert_bitexact(expected, np.float32([16777215.0]), "torch's own result")
    assert_bitexact(qexact.dequantize(qexact.QuantizedArray(values, qparams)), expected,
                    _context(engine, "dequantize per_channel qint32 q=2**24+1 zp=1 scale=1.0"))


@pytest.mark.torch
def test_zz_elements_compared_per_cell():
    """Runs last in this file: every (engine, dtype, granularity) cell that ran compared at least
    MIN_ELEMENTS_PER_CELL elements (skipped when the differential tests were deselected)."""
    cells = [(e, d.name, g) for e in ENGINE_NAMES for d in DTYPES
             for g in ("per_tensor", "per_channel")]
    if not all(cell in COMPARED for cell in cells):
        pytest.skip("not every differential cell ran in this session")
    for cell in cells:
        assert COMPARED[cell] >= MIN_ELEMENTS_PER_CELL, (cell, COMPARED[cell])
    for engine in ENGINE_NAMES:
        for dtype in DTYPES:
            assert COMPARED[(engine, dtype.name, "per_tensor_exact_ties")] >= 1000
    print("\nelements compared:", dict(sorted(COMPARED.items())))


@pytest.mark.torch
def test_nan_in_vector_body_and_tail_vs_torch(engine):
    """NaN at the start, middle and end of tensors of 1..100 elements (FBGEMM's 8-element vector
    body and its masked remainder): per-tensor 8-bit gives qmax everywhere, qint32 INT32_MIN,
    per-channel 8-bit (quantize_val) 0; measured on torch 2.13, compared bit for bit."""
    torch = pytest.importorskip("torch")
    for dtype in DTYPES:
        zp = -3 if dtype == QINT8 else 3
        nan_value = INT32_MIN if dtype == QINT32 else dtype.qmax
        for n in (1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100):
            x = np.linspace(-20, 20, n).astype(np.float32)
            x[sorted({0, n // 2, n - 1})] = np.nan
            expected = torch.quantize_per_tensor(torch.from_numpy(x), 0.1, zp,
                                                 torch_dtype(dtype)).int_repr().numpy()
            actual = qexact.quantize_per_tensor(x, 0.1, zp, dtype).values
            assert_bitexact(actual, expected, _context(engine, "NaN per tensor", n=n))
            assert np.all(actual[np.isnan(x)] == nan_value)
            if dtype == QINT32:
                continue
            x2 = np.stack([x, x[::-1]])
            scales, zps = np.float64([0.1, 0.2]), np.int64([zp, 2 * zp])
            for axis in (0, 1):
                s, z = (scales, zps) if axis == 0 else (np.full(n, 0.1), np.full(n, zp))
                expected = torch.quantize_per_channel(
                    torch.from_numpy(x2), torch.from_numpy(s), torch.from_numpy(z), axis,
                    torch_dtype(dtype)).int_repr().numpy()
                actual = qexact.quantize_per_channel(x2, s, z, axis, dtype).values
                assert_bitexact(actual, expected, _context(engine, "NaN per channel", n=n))
                assert np.all(actual[np.isnan(x2)] == 0)


# ---------------------------------------------------------------- explain

def _explain(name, params, inputs, result, index):
    from qexact.ops._registry import OP_REGISTRY

    return OP_REGISTRY[name].explain(params, inputs, result, index)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_explain_last_stage_is_the_output(dtype, granularity):
    """Quantize and dequantize explain, observed on the run: the kernel is named, the last stage
    is the output element (float32 bit for bit for dequantize), NaN and infinities included; a
    Linear's walk into a quantize explains a whole row, whose last result is the row."""
    from qexact.engines.aten_quantize import dequantize_kernel, quantize_kernel
    from qexact.ops.quantize import QuantizeParams, quantize

    rng = np.random.default_rng(5)
    shape = (3, 37)
    if granularity == "per_tensor":
        zp = 7 if dtype != QINT8 else -7
        qparams = qexact.QParams.per_tensor(0.02, zp, dtype)
    else:
        zps = rng.integers(max(dtype.qmin, -100), min(dtype.qmax, 100), shape[1])
        qparams = qexact.QParams.per_channel(10 ** rng.uniform(-3, 0, shape[1]), zps, 1, dtype)
    x = make_values(rng, np.full(shape, 0.02), np.full(shape, 7), dtype)
    x[0, :4] = [np.nan, np.inf, -np.inf, 0.5]
    q = quantize(x, qparams)
    r = qexact.dequantize(q)
    kernel = quantize_kernel(qparams, x.ndim)
    engine = qexact.get_engine("fbgemm")
    params = QuantizeParams(qparams.scale, qparams.zero_point, qparams.dtype, qparams.axis, engine)
    for index in [(0, 0), (0, 1), (0, 2), (2, 36)] + [
            tuple(int(i) for i in rng.integers(0, shape)) for _ in range(20)]:
        stages, upstream = _explain("quantize", params, [x], q, index)
        assert upstream == []
        assert stages[-1].result == q.values[index], (index, stages[-1])
        assert stages[0].values["kernel"] == kernel.name
        stages, upstream = _explain("dequantize", partial(engine.kernel, "dequantize"), [q], r, index)
        assert upstream == [(0, index)]
        assert np.float32(stages[-1].result).view(np.uint32) == r[index].view(np.uint32)
        assert stages[0].values["kernel"] == dequantize_kernel(qparams, q.values.ndim).name
    stages, _ = _explain("quantize", params, [x], q, (1, slice(None)))
    assert np.array_equal(stages[-1].result, q.values[1])
    assert stages[0].values["kernel"] == kernel.name
