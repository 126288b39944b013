"""``assert_bitexact``: equality of every element, with a report that helps when it fails."""

from __future__ import annotations

import numpy as np


def assert_bitexact(actual, expected, context: str = "", inputs: dict | None = None) -> None:
    """Fail unless ``actual`` and ``expected`` have one shape and equal elements (floats compared
    by bit pattern, so -0.0 != 0.0 and NaN == NaN of the same payload)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{context}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{context}: dtype {actual.dtype} != {expected.dtype}"
    if actual.dtype.kind == "f":
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.dtype.itemsize]
        differ = actual.view(width) != expected.view(width)
    else:
        differ = actual != expected
    if not differ.any():
        return
    where = np.argwhere(differ)
    lines = [f"{context}: {int(differ.sum())} of {differ.size} elements differ"]
    for index in where[:5]:
        index = tuple(int(i) for i in index)
        lines.append(f"  at {index}: qexact {actual[index]!r} vs torch {expected[index]!r}")
    if actual.dtype.kind in "iu":
        diff = actual.astype(np.int64)[differ] - expected.astype(np.int64)[differ]
        values, counts = np.unique(diff, return_counts=True)
        lines.append(f"  max |diff| {int(np.abs(diff).max())}; histogram "
                     + ", ".join(f"{v:+d}: {c}" for v, c in zip(values, counts)))
    if inputs:
        lines.append("  inputs: " + ", ".join(f"{k}={v!r}" for k, v in inputs.items()))
    raise AssertionError("\n".join(lines))
