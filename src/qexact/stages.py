"""``Stage``: one event of an explanation (see ``qexact.explain``). Ops build these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
