"""ATen's quantized elementwise kernels for the binary family (add, mul, their scalar forms, cat):
which lambda runs each element and its arithmetic as ``Step``s."""

from __future__ import annotations

KERNELS: dict = {}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
