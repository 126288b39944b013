"""The numba quantize and dequantize (``qexact.kernels._numba_quantize``) equal the NumPy
definition (``qexact.ops.quantize`` on backend "numpy": ``apply_steps`` over the steps of
``engines.aten_quantize.quantize_fused`` / ``dequantize_kernel``): values, dtype, shape and
strides, on random floats (hypothesis, fixed seed) and adversarial ones: exact ties of
``x * inv + z`` and their neighbours, ties only the fused multiply-add sees, NaN (any sign and
payload), infinities, signed zeros, subnormals, FLT_MAX, values around INT32 limits, scales that
overflow; every integer code for dequantize."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from support.assertions import assert_bitexact  # noqa: E402

from qexact import QINT8, QUINT8, QParams  # noqa: E402
from qexact.engines.aten_quantize import dequantize_kernel, quantize_kernel  # noqa: E402
from qexact.kernels import fast_available, using  # noqa: E402
from qexact.layout import to_channels_last  # noqa: E402
from qexact.ops.quantize import dequantize, quantize_per_tensor  # noqa: E402
from qexact.qparams import QuantizedArray  # noqa: E402

if not fast_available():
    pytest.skip("the fast backend cannot run on this machine", allow_module_level=True)

from qexact.kernels._numba_quantize import dequantize_fast, quantize_fast  # noqa: E402

QTYPES = {"quint8": QUINT8, "qint8": QINT8}
ZERO_POINTS = {"quint8": (0, 128, 255), "qint8": (-128, 0, 127)}
SCALES = (1.0, 0.5, 0.1, 0.02, 1.0 / 3.0, 3.7e-5, 1e-30, 1e-39, 1e30)
COMPARED = {"calls": 0, "elements": 0}


def check(x: np.ndarray, scale: float, zero_point: int, qtype, context: str) -> None:
    with using("numpy"):
        expected = quantize_per_tensor(x, scale, zero_point, qtype).values
    steps = quantize_kernel(QParams.per_tensor(scale, zero_point, qtype), x.ndim).steps
    actual = quantize_fast(x, steps, qtype.numpy_dtype)
    assert actual is not None, f"{context}: not covered"
    assert_bitexact(actual, expected, context)
    assert actual.strides == expected.strides, f"{context}: strides"
    with using("fast"):  # the op's own dispatch, where it calls quantize_fast
        dispatched = quantize_per_tensor(x, scale, zero_point, qtype).values
    assert_bitexact(dispatched, expected, f"{context} dispatched")
    COMPARED["calls"] += 1
    COMPARED["elements"] += expected.size


def special_floats() -> np.ndarray:
    """NaNs (both signs, other payloads), infinities, zeros, subnormals, extremes, INT32 edges."""
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FA00000], np.uint32)
    specials = [np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38,
                3.4028235e38, -3.4028235e38, 2.0 ** 31, -2.0 ** 31, 2.0 ** 31 - 128,
                -2.0 ** 31 - 256, 2147483520.0, 2.0 ** 24 + 2, 0.5, -0.5, 1.5, -1.5, 2.5, 127.5,
                128.5, 255.5, -128.5, -127.5]
    return np.concatenate([bits.view(np.float32), np.float32(specials)])


def ties(scale: float, zero_point: int) -> np.ndarray:
    """x with ``x * inv + z`` at or next to a half-integer: exact ties of the product, and the
    float32 neighbours, where only a fused multiply-add rounds right."""
    with np.errstate(over="ignore"):  # scale 1e-39: inv = inf
        inv = np.float32(1.0) / np.float32(scale)
    halves = np.arange(-300, 301, dtype=np.float64) + 0.5
    x = np.float32((halves - zero_point) / np.float64(inv))
    neighbours = [x]
    for _ in (1, 2, 3):
        neighbours.append(np.nextafter(neighbours[-1], np.float32(np.inf)))
    down = [x]
    for _ in (1, 2, 3):
        down.append(np.nextafter(down[-1], np.float32(-np.inf)))
    return np.concatenate(neighbours + down[1:]).astype(np.float32)


@pytest.mark.parametrize("name", QTYPES)
def test_specials_and_ties(name):
    qtype = QTYPES[name]
    for zero_point in ZERO_POINTS[name]:
        for scale in SCALES:
            x = np.concatenate([special_floats(), ties(scale, zero_point)])
            with np.errstate(over="ignore"):  # inverse_scale(1e-39) overflows to inf, as in C
                check(x, scale, zero_point, qtype, f"{name} z={zero_point} s={scale}")


@pytest.mark.parametrize("name", QTYPES)
def test_layouts_and_shapes(name):
    """NCHW, channels_last, Fortran order, 0-d, empty and 1-element arrays: the result keeps the
    input's memory order; a strided (non-dense) view is left to the NumPy path."""
    qtype = QTYPES[name]
    rng = np.random.default_rng(4)
    x = np.float32(rng.standard_normal((2, 5, 7, 3)) * 40)
    for context, values in [("nchw", x), ("channels_last", to_channels_last(x)),
                            ("fortran", np.asfortranarray(x)), ("0-d", np.float32(3.5)[()]),
                            ("empty", np.zeros((0, 3), np.float32)),
                            ("one", np.float32([[-0.5]])), ("transposed", x.transpose(3, 1, 0, 2))]:
        check(np.asarray(values), 0.25, ZERO_POINTS[name][1], qtype, f"{name} {context}")
    for shape in [(1, 5, 1, 1), (2, 1, 3, 3), (1, 1, 1, 4), (3, 4, 1, 1)]:  # size-1 dims' strides
        values = to_channels_last(np.float32(rng.standard_normal(shape) * 40))
        check(values, 0.25, ZERO_POINTS[name][0], qtype, f"{name} channels_last {shape}")
    steps = quantize_kernel(QParams.per_tensor(0.25, 0, qtype), 4).steps
    assert quantize_fast(x[..., ::2], steps, qtype.numpy_dtype) is None


def test_other_kernels_not_covered():
    """Per-channel (``quantize_val``) steps and float64 inputs are left to the NumPy path."""
    qparams = QParams.per_channel(np.float64([0.1, 0.2]), np.int64([0, 3]), 0, QUINT8)
    x = np.zeros((2, 3), np.float32)
    assert quantize_fast(x, quantize_kernel(qparams, 2).steps, np.uint8) is None
    steps = quantize_kernel(QParams.per_tensor(0.1, 0, QUINT8), 2).steps
    assert quantize_fast(x.astype(np.float64), steps, np.uint8) is None


@seed(20261206)
@settings(max_examples=150, deadline=None, derandomize=True)
@given(values=hnp.arrays(np.float32, st.integers(1, 300),
                         elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
       scale=st.floats(2.0 ** -20, 1024.0, width=32), name=st.sampled_from(sorted(QTYPES)),
       zero_index=st.integers(0, 2), stretch=st.sampled_from([1.0, 1e-3, 1e-30]))
def test_random(values, scale, name, zero_index, stretch):
    """hypothesis floats (any bits, NaN and inf included), scaled into the interesting range."""
    with np.errstate(over="ignore", under="ignore"):
        x = np.float32(values * np.float32(stretch))
    check(x, float(scale), ZERO_POINTS[name][zero_index], QTYPES[name], f"{name}")


def test_input_image_batch():
    """The (8, 3, 224, 224) input of a vision model, normal floats."""
    x = np.float32(np.random.default_rng(5).standard_normal((8, 3, 224, 224)))
    check(x, 0.018658, 114, QUINT8, "image batch")


# --- dequantize ------------------------------------------------------------------------------


def check_dequantize(values: np.ndarray, qparams: QParams, context: str) -> None:
    q = QuantizedArray(values, qparams)
    with using("numpy"):
        expected = dequantize(q)
    actual = dequantize_fast(values, dequantize_kernel(qparams, values.ndim).steps)
    assert actual is not None, f"{context}: not covered"
    assert_bitexact(actual, expected, context)
    assert actual.strides == expected.strides, f"{context}: strides"
    with using("fast"):  # the op's own dispatch, where it calls dequantize_fast
        assert_bitexact(dequantize(q), expected, f"{context} dispatched")
    COMPARED["calls"] += 1
    COMPARED["elements"] += expected.size


@pytest.mark.parametrize("name", QTYPES)
def test_dequantize_every_code(name):
    """Every integer of the dtype, every zero point of a few, scales from tiny to huge (products
    that round, underflow to subnormals or zero, overflow to inf)."""
    qtype = QTYPES[name]
    info = np.iinfo(qtype.numpy_dtype)
    codes = np.arange(int(info.min), int(info.max) + 1).astype(qtype.numpy_dtype)
    for zero_point in (int(info.min), 0 if info.min < 0 else 128, int(info.max), 3):
        for scale in SCALES + (3.4e38, 1e-45, 0.007843137718737125):
            qparams = QParams.per_tensor(scale, zero_point, qtype)
            with np.errstate(over="ignore", under="ignore"):
                check_dequantize(codes, qparams, f"{name} z={zero_point} s={scale}")
                check_dequantize(codes.reshape(4, 8, 8)[:, None], qparams, f"{name} 4-d")


def test_dequantize_layouts_and_not_covered():
    rng = np.random.default_rng(6)
    x = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    qparams = QParams.per_tensor(0.05, 17, QUINT8)
    for context, values in [("nchw", x), ("channels_last", to_channels_last(x)),
                            ("fortran", np.asfortranarray(x)), ("empty", x[:0]),
                            ("0-d", np.uint8(9)[()])]:
        check_dequantize(np.asarray(values), qparams, context)
    steps = dequantize_kernel(qparams, 4).steps
    assert dequantize_fast(x[..., ::2], steps) is None
    per_channel = QParams.per_channel(np.float64([0.1, 0.2]), np.int64([0, 3]), 0, QUINT8)
    assert dequantize_fast(x[:, :2], dequantize_kernel(per_channel, 4).steps) is None
    assert dequantize_fast(x.astype(np.int32), steps) is None


def test_report_counts():
    """Not a check: prints how much the tests above compared (run with -s)."""
    print(f"quantize_fast / dequantize_fast compared on {COMPARED['calls']} calls, "
          f"{COMPARED['elements']} elements, 0 mismatches")
