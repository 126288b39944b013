"""Quantized integer types: ``quint8``, ``qint8``, ``qint32`` as PyTorch names them."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedError


@dataclass(frozen=True)
class QDType:
    """A quantized integer type: its PyTorch name, width and signedness.

    >>> QUINT8.qmin, QUINT8.qmax
    (0, 255)
    """

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @functools.cached_property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(f"{'int' if self.signed else 'uint'}{self.bits}")

    def __str__(self) -> str:
        return self.name


QUINT8 = QDType("quint8", 8, False)
QINT8 = QDType("qint8", 8, True)
QINT32 = QDType("qint32", 32, True)

DTYPES = {dtype.name: dtype for dtype in (QUINT8, QINT8, QINT32)}


def dtype_named(name: str) -> QDType:
    """The ``QDType`` called ``name`` (``"quint8"``, ``"qint8"`` or ``"qint32"``)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise UnsupportedError(
            f"quantized dtype {name!r} is not supported; supported: {sorted(DTYPES)}"
        ) from None
