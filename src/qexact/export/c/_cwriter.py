"""C text helpers: exact literals (hex floats), const arrays, identifiers."""

from __future__ import annotations

import math
import re

import numpy as np

C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.uint8): "uint8_t", np.dtype(np.int8): "int8_t",
           np.dtype(np.int16): "int16_t", np.dtype(np.uint16): "uint16_t",
           np.dtype(np.int32): "int32_t", np.dtype(np.uint32): "uint32_t",
           np.dtype(np.int64): "int64_t"}
"""NumPy dtype -> C99 type (<stdint.h>)."""

DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.uint8): 1, np.dtype(np.int8): 2,
               np.dtype(np.int32): 3}
"""The layer table's dtype codes (model.h: MODEL_F32, MODEL_U8, MODEL_S8, MODEL_S32)."""


def identifier(name: str) -> str:
    """A C identifier for a node name (readability only; uniqueness comes from a prefix)."""
    return re.sub(r"\W", "_", name)[:40]


def float_literal(value, single: bool = True) -> str:
    """An exact C literal: a hex float (``0x1.8p+3f``), ``INFINITY`` or ``NAN``."""
    value = float(np.float32(value)) if single else float(value)
    if math.isnan(value):
        return "NAN" if single else "((double)NAN)"
    if math.isinf(value):
        text = "INFINITY" if single else "((double)INFINITY)"
        return text if value > 0 else f"(-{text})"
    return value.hex() + ("f" if single else "")


def int_literal(value: int) -> str:
    """A C integer literal of any int64 value (INT64_MIN written as an expression)."""
    value = int(value)
    if value == -(1 << 63):
        return "INT64_MIN"
    if -(1 << 31) <= value < (1 << 31):
        return str(value)
    return f"INT64_C({value})"


def literal(value, dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return float_literal(value, dtype == np.float32)
    return int_literal(value)


def const_array(name: str, values: np.ndarray, dtype=None, per_line: int = 24) -> str:
    """``static const T name[n] = {...};`` of a 1-D (flattened) array, exact literals."""
    values = np.asarray(values)
    dtype = np.dtype(dtype or values.dtype)
    flat = values.reshape(-1).astype(dtype)
    if dtype.kind == "f":
        items = [literal(v, dtype) for v in flat.tolist()]
    else:
        items = [int_literal(v) if dtype == np.int64 else str(v) for v in flat.tolist()]
    if not items:
        items = ["0"]
    lines = [",".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
    body = ",\n    ".join(lines)
    return f"static const {C_TYPES[dtype]} {name}[{max(len(flat), 1)}] = {{\n    {body}\n}};\n"


def smallest_index_dtype(high: int, low: int = 0) -> np.dtype:
    """The narrowest integer type holding [low, high]."""
    for dtype in (np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)
