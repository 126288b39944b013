"""ATen's quantized activation kernels (and the float kernels FX models run between dequantize
and quantize): which lambda runs each element and its arithmetic as ``Step``s."""

from __future__ import annotations

KERNELS: dict = {}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
