"""The one family of errors qexact raises.

Every error is a ``QexactError`` (a ``ValueError``), so ``except qexact.QexactError`` catches all of
them; the subclasses let a caller tell the kinds apart. Messages state what was expected, what was
received (with ``!r``) and what is available.
"""

from __future__ import annotations


class QexactError(ValueError):
    """Root of every error raised by qexact."""


class QuantParamError(QexactError):
    """A scale, zero point or dtype is invalid, or an engine refuses it (as PyTorch does)."""


class ShapeError(QexactError):
    """An array has the wrong rank, shape or dtype for the operation."""


class DTypeError(ShapeError):
    """An array has the wrong dtype (float64 where PyTorch takes float32, a quantized tensor
    where a float one is expected). A ``ShapeError``, as earlier versions raised."""


class UnsupportedError(QexactError):
    """A module, op, engine or setting qexact does not implement."""


class ImporterError(QexactError):
    """A model could not be read (captured, traced) from its framework."""


class FormatError(QexactError):
    """A saved qexact file is corrupt, truncated, of another version, or not a qexact file."""
