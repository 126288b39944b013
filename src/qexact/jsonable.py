"""One convention for every result that reports: ``to_dict()`` is its JSON document as plain
Python values (dicts, lists, strings, numbers, None), ``to_json()`` that document as text (what
``--json`` prints and ``json.loads`` reads back)."""

from __future__ import annotations

import json


class JsonDocument:
    """Mixin: define ``to_dict``; ``to_json`` follows."""

    __slots__ = ()

    def to_dict(self) -> dict:
        raise NotImplementedError

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)
