"""QNNPACK's pooling operators (average, max, global average) as the qnnpack engine runs them."""

from __future__ import annotations

KERNELS: dict = {}
"""This module's entries of the qnnpack engine's kernel table (``Engine.kernels``)."""
