"""``Stage``: one event of an explanation (see ``qexact.explain``). Ops build these;
``constant_text`` writes a constant into a formula."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stage:
    """One step of the arithmetic for one element.

    ``values`` holds the named inputs of the step (numbers, or lists for per-term data);
    ``result`` is the value the step produces (None for purely descriptive stages).
    """

    name: str
    formula: str
    values: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    node: str = ""
    op: str = ""
    note: str = ""


def constant_text(value) -> str:
    """A constant as its dtype prints it (float32 shortest); arrays: the first few values."""
    if isinstance(value, np.ndarray):
        flat = value.reshape(-1)
        if flat.size == 1:
            return str(flat[0])
        more = f", ... ({flat.size} values)" if flat.size > 4 else ""
        return "[" + ", ".join(str(item) for item in flat[:4]) + more + "]"
    return repr(value) if isinstance(value, float) else str(value)
