"""Conformance: qexact against PyTorch, op family by op family, on every engine.

A family (``family.py``) draws cases (NumPy only), runs PyTorch's kernel (in a child process,
``worker.py``) and qexact's, and compares every element exactly. The sweep runs live
(``run_conformance``), records what torch computed (``record_conformance``) or replays a
recording without torch (``replay_recording``); recordings follow the schema of
``tests/data/recordings/avx512_vnni/README.md`` (``recording.py``).
"""

from __future__ import annotations

from .family import FAMILIES, Case, Family, family, load_families
from .runner import (ENGINES, CellResult, ConformanceReport, record_conformance, replay_recording,
                     run_conformance)

load_families()

__all__ = ["ENGINES", "FAMILIES", "Case", "CellResult", "ConformanceReport", "Family", "family",
           "load_families", "record_conformance", "replay_recording", "run_conformance"]
