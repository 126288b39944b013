"""QParams validation, equality and JSON round-trip; QuantizedArray's dtype check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexact import QINT8, QINT32, QUINT8, QParams, QuantizedArray, QuantParamError, ShapeError
from qexact.dtypes import dtype_named
from qexact.errors import UnsupportedError
from qexact.qparams import qparams_from_fields, qparams_to_fields


def test_dtype_ranges():
    assert (QUINT8.qmin, QUINT8.qmax, QUINT8.numpy_dtype) == (0, 255, np.dtype(np.uint8))
    assert (QINT8.qmin, QINT8.qmax, QINT8.numpy_dtype) == (-128, 127, np.dtype(np.int8))
    assert (QINT32.qmin, QINT32.qmax, QINT32.numpy_dtype) == (-(2 ** 31), 2 ** 31 - 1,
                                                              np.dtype(np.int32))
    assert dtype_named("qint8") is QINT8
    with pytest.raises(UnsupportedError, match=r"quantized dtype 'quint4' is not supported"):
        dtype_named("quint4")


@pytest.mark.parametrize("scale, match", [
    (0.0, "scale must be a positive finite number, got 0.0"),
    (-1.0, "scale must be a positive finite number, got -1.0"),
    (-0.0, "scale must be a positive finite number, got -0.0"),
    (float("nan"), "scale must be a positive finite number, got nan"),
    (float("inf"), "scale must be a positive finite number, got inf"),
    (float("-inf"), "scale must be a positive finite number, got -inf"),
])
def test_per_tensor_bad_scale(scale, match):
    with pytest.raises(QuantParamError, match=match):
        QParams.per_tensor(scale, 0, QUINT8)


@pytest.mark.parametrize("zp, dtype, match", [
    (-1, QUINT8, r"zero_point -1 out of range \[0, 255\] for quint8"),
    (256, QUINT8, r"zero_point 256 out of range \[0, 255\] for quint8"),
    (-129, QINT8, r"zero_point -129 out of range \[-128, 127\] for qint8"),
    (128, QINT8, r"zero_point 128 out of range \[-128, 127\] for qint8"),
    (2 ** 31, QINT32, r"zero_point 2147483648 out of range \[-2147483648, 2147483647\] for qint32"),
    (-(2 ** 31) - 1, QINT32, r"zero_point -2147483649 out of range"),
])
def test_per_tensor_bad_zero_point(zp, dtype, match):
    with pytest.raises(QuantParamError, match=match):
        QParams.per_tensor(0.1, zp, dtype)


def test_errors_are_value_errors():
    with pytest.raises(ValueError):
        QParams.per_tensor(0.0, 0, QUINT8)


@pytest.mark.parametrize("zp, dtype", [(0, QUINT8), (255, QUINT8), (-128, QINT8), (127, QINT8),
                                       (-(2 ** 31), QINT32), (2 ** 31 - 1, QINT32)])
def test_per_tensor_zero_point_limits_accepted(zp, dtype):
    q = QParams.per_tensor(1e-40, zp, dtype)  # any positive finite scale, even a float32 subnormal
    assert (q.scale, q.zero_point, q.dtype, q.axis, q.is_per_channel) == (1e-40, zp, dtype, None,
                                                                          False)
    assert isinstance(q.scale, float) and isinstance(q.zero_point, int)


def test_per_tensor_converts_numpy_scalars():
    q = QParams.per_tensor(np.float32(0.1), np.int64(3), QUINT8)
    assert type(q.scale) is float and q.scale == float(np.float32(0.1))
    assert type(q.zero_point) is int and q.zero_point == 3


@pytest.mark.parametrize("scales, zps, match", [
    ([0.1, 0.2], [0], "per-channel scales \\(2,\\) and zero points \\(1,\\) must be non-empty"),
    ([], [], "must be non-empty and of one length"),
    ([0.1, 0.0], [0, 0], "per-channel scales must be positive and finite"),
    ([0.1, -0.2], [0, 0], "per-channel scales must be positive and finite"),
    ([0.1, float("nan")], [0, 0], "per-channel scales must be positive and finite"),
    ([0.1, float("inf")], [0, 0], "per-channel scales must be positive and finite"),
])
def test_per_channel_bad_scales(scales, zps, match):
    with pytest.raises(QuantParamError, match=match):
        QParams.per_channel(scales, zps, 0, QINT8)


@pytest.mark.parametrize("zps, dtype", [([0, 256], QUINT8), ([-1, 0], QUINT8), ([0, 128], QINT8),
                                        ([-129, 0], QINT8), ([0, 2 ** 31], QINT32)])
def test_per_channel_bad_zero_points(zps, dtype):
    with pytest.raises(QuantParamError, match=f"per-channel zero points .* out of range .* for "
                                              f"{dtype.name}"):
        QParams.per_channel([0.1, 0.2], zps, 0, dtype)


def test_per_channel_arrays_are_read_only_and_typed():
    q = QParams.per_channel([[0.1, 0.2]], [1, 2], 1, QUINT8)  # reshaped to 1-D
    assert q.scale.dtype == np.float64 and q.zero_point.dtype == np.int64
    assert q.scale.shape == (2,) and q.is_per_channel and q.axis == 1
    with pytest.raises(ValueError):
        q.scale[0] = 1.0
    with pytest.raises(ValueError):
        q.zero_point[0] = 1


def test_equality_and_hash():
    a = QParams.per_channel([0.1, 0.2], [1, 2], 0, QUINT8)
    b = QParams.per_channel(np.array([0.1, 0.2]), np.array([1, 2]), 0, QUINT8)
    assert a == b and hash(a) == hash(b)
    assert a != QParams.per_channel([0.1, 0.2], [1, 2], 1, QUINT8)
    assert a != QParams.per_channel([0.1, 0.2], [1, 2], 0, QINT8)
    assert QParams.per_tensor(0.5, 3, QUINT8) == QParams.per_tensor(0.5, 3, QUINT8)
    assert QParams.per_tensor(0.5, 3, QUINT8) != QParams.per_tensor(0.5, 4, QUINT8)
    assert QParams.per_tensor(0.5, 3, QUINT8).__eq__("x") is NotImplemented


@settings(max_examples=50)
@given(scale=st.floats(1e-30, 1e30), data=st.data(),
       dtype=st.sampled_from([QUINT8, QINT8, QINT32]))
def test_fields_round_trip(scale, data, dtype):
    zp = data.draw(st.integers(dtype.qmin, dtype.qmax))
    q = QParams.per_tensor(scale, zp, dtype)
    attrs, arrays = qparams_to_fields(q, "out")
    assert arrays == {} and qparams_from_fields(attrs, arrays, "out") == q
    assert q.to_dict() == {"dtype": dtype.name, "scale": scale, "zero_point": zp}
    channels = data.draw(st.integers(1, 8))
    scales = data.draw(st.lists(st.floats(1e-30, 1e30), min_size=channels, max_size=channels))
    zps = data.draw(st.lists(st.integers(dtype.qmin, dtype.qmax), min_size=channels,
                             max_size=channels))
    pc = QParams.per_channel(scales, zps, 2, dtype)
    attrs, arrays = qparams_to_fields(pc, "w")
    assert qparams_from_fields(attrs, arrays, "w") == pc
    assert pc.to_dict()["scale"] == scales and pc.to_dict()["zero_point"] == zps


def test_describe():
    assert QParams.per_tensor(0.5, 3, QUINT8).describe() == "quint8 scale=0.5 zero_point=3"
    assert (QParams.per_channel([0.1, 0.2], [0, 0], 0, QINT8).describe()
            == "qint8 per-channel(axis=0, 2 channels)")


def test_quantized_array():
    qp = QParams.per_tensor(0.5, 3, QUINT8)
    qa = QuantizedArray(np.zeros((2, 3), np.uint8), qp)
    assert qa.shape == (2, 3) and qa.scale == 0.5 and qa.zero_point == 3 and qa.dtype is QUINT8
    with pytest.raises(ShapeError, match="values of a quint8 array must be uint8, got int32"):
        QuantizedArray(np.zeros(3, np.int32), qp)
    with pytest.raises(ShapeError, match="values of a qint32 array must be int32, got int64"):
        QuantizedArray(np.zeros(3, np.int64), QParams.per_tensor(0.5, 0, QINT32))
