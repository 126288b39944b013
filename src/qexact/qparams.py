"""Quantization parameters and quantized arrays.

A real value ``r`` is represented by an integer ``q`` as ``r = scale * (q - zero_point)``
(docs/arithmetic.md eq. 1). Scales are kept as Python floats (float64), the way PyTorch's
``q_scale()`` returns them; each engine decides where it rounds them to float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dtypes import QDType
from .errors import QuantParamError, ShapeError
from .jsonable import JsonDocument


@dataclass(frozen=True, eq=False)
class QParams(JsonDocument):
    """Per-tensor (``axis is None``) or per-channel quantization parameters.

    Per-tensor: ``scale`` is a float, ``zero_point`` an int. Per-channel: both are 1-D arrays
    (float64 and int64) over ``axis``.
    """

    scale: float | np.ndarray
    zero_point: int | np.ndarray
    dtype: QDType
    axis: int | None = None

    @classmethod
    def per_tensor(cls, scale: float, zero_point: int, dtype: QDType) -> "QParams":
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise QuantParamError(f"scale must be a positive finite number, got {scale!r}")
        zero_point = int(zero_point)
        if not dtype.qmin <= zero_point <= dtype.qmax:
            raise QuantParamError(
                f"zero_point {zero_point!r} out of range [{dtype.qmin}, {dtype.qmax}] for {dtype.name}"
            )
        return cls(scale, zero_point, dtype, None)

    @classmethod
    def per_channel(cls, scales, zero_points, axis: int, dtype: QDType) -> "QParams":
        scales = np.asarray(scales, dtype=np.float64).reshape(-1)
        zero_points = np.asarray(zero_points, dtype=np.int64).reshape(-1)
        if scales.shape != zero_points.shape or scales.size == 0:
            raise QuantParamError(
                f"per-channel scales {scales.shape} and zero points {zero_points.shape} "
                "must be non-empty and of one length"
            )
        if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise QuantParamError(f"per-channel scales must be positive and finite, got {scales!r}")
        if np.any(zero_points < dtype.qmin) or np.any(zero_points > dtype.qmax):
            raise QuantParamError(
                f"per-channel zero points {zero_points!r} out of range "
                f"[{dtype.qmin}, {dtype.qmax}] for {dtype.name}"
            )
        scales.setflags(write=False)
        zero_points.setflags(write=False)
        return cls(scales, zero_points, dtype, int(axis))

    @property
    def is_per_channel(self) -> bool:
        return self.axis is not None

    def describe(self) -> str:
        if self.is_per_channel:
            return f"{self.dtype.name} per-channel(axis={self.axis}, {len(self.scale)} channels)"
        return f"{self.dtype.name} scale={self.scale!r} zero_point={self.zero_point}"

    def to_dict(self) -> dict:
        if self.is_per_channel:
            return {"dtype": self.dtype.name, "axis": self.axis,
                    "scale": [float(s) for s in self.scale],
                    "zero_point": [int(z) for z in self.zero_point]}
        return {"dtype": self.dtype.name, "scale": self.scale, "zero_point": self.zero_point}

    def __eq__(self, other) -> bool:
        if other is self:
            return True
        if not isinstance(other, QParams):
            return NotImplemented
        if (isinstance(self.scale, float) and isinstance(other.scale, float)
                and type(self.zero_point) is int and type(other.zero_point) is int):
            return (self.dtype == other.dtype and self.axis == other.axis
                    and self.scale == other.scale and self.zero_point == other.zero_point)
        return (self.dtype == other.dtype and self.axis == other.axis
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def __hash__(self) -> int:
        return hash((self.dtype, self.axis, np.asarray(self.scale).tobytes(),
                     np.asarray(self.zero_point).tobytes()))


@dataclass(frozen=True)
class QuantizedArray:
    """Integer values with the quantization parameters that give them meaning.

    ``values`` holds the integers in the dtype's NumPy type (uint8 for quint8, ...).
    """

    values: np.ndarray
    qparams: QParams

    def __post_init__(self):
        expected = self.qparams.dtype.numpy_dtype
        if self.values.dtype != expected:
            raise ShapeError(
                f"values of a {self.qparams.dtype.name} array must be {expected}, got {self.values.dtype}"
            )

    @property
    def scale(self):
        return self.qparams.scale

    @property
    def zero_point(self):
        return self.qparams.zero_point

    @property
    def dtype(self) -> QDType:
        return self.qparams.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    def __repr__(self) -> str:
        return f"QuantizedArray(shape={self.values.shape}, {self.qparams.describe()})"


def qparams_to_fields(qparams: QParams, prefix: str) -> tuple[dict, dict]:
    """Split qparams into JSON attributes and arrays named ``{prefix}_scale`` etc. (for graph nodes)."""
    attrs = {f"{prefix}_dtype": qparams.dtype.name, f"{prefix}_axis": qparams.axis}
    arrays = {}
    if qparams.is_per_channel:
        arrays[f"{prefix}_scale"] = np.asarray(qparams.scale, dtype=np.float64)
        arrays[f"{prefix}_zero_point"] = np.asarray(qparams.zero_point, dtype=np.int64)
    else:
        attrs[f"{prefix}_scale"] = float(qparams.scale)
        attrs[f"{prefix}_zero_point"] = int(qparams.zero_point)
    return attrs, arrays


def qparams_from_fields(attrs: dict, arrays: dict, prefix: str) -> QParams:
    """The inverse of ``qparams_to_fields``."""
    from .dtypes import dtype_named

    dtype = dtype_named(attrs[f"{prefix}_dtype"])
    axis = attrs.get(f"{prefix}_axis")
    if axis is None:
        return QParams.per_tensor(attrs[f"{prefix}_scale"], attrs[f"{prefix}_zero_point"], dtype)
    return QParams.per_channel(arrays[f"{prefix}_scale"], arrays[f"{prefix}_zero_point"], axis, dtype)


class QuantizedLayerAccessors:
    """The per-layer names users read (``weight_scale``, ``input_zero_point``, ...), for layer
    parameter classes that hold ``weight_qparams``, ``input_qparams`` and ``output_qparams``."""

    @property
    def weight_scale(self):
        return self.weight_qparams.scale

    @property
    def weight_zero_point(self):
        return self.weight_qparams.zero_point

    @property
    def input_scale(self) -> float:
        return self.input_qparams.scale

    @property
    def input_zero_point(self) -> int:
        return self.input_qparams.zero_point

    @property
    def output_scale(self) -> float:
        return self.output_qparams.scale

    @property
    def output_zero_point(self) -> int:
        return self.output_qparams.zero_point
