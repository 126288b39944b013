"""Conformance: qexact against PyTorch, op family by op family, on every engine.

A family (``family.py``) draws cases (NumPy only), runs PyTorch's kernel (in a child process,
``worker.py``) and qexact's, and compares every element exactly. The sweep runs live
(``run_conformance``), records what torch computed (``record_conformance``) or replays a
recording without torch (``replay_recording``); recordings follow the schema of
``tests/data/recordings/avx512_vnni/README.md`` (``recording.py``).
"""

from __future__ import annotations

# registration order is the report's row order: from quantize to whole-tensor reductions
from . import quantize_cases, linear_cases, conv_cases  # noqa: F401, I001
from . import elementwise_cases, activation_cases, pooling_cases  # noqa: F401, I001
from . import normalization_cases, reduce_cases  # noqa: F401, I001
from .family import FAMILIES, Case, Family, family
from .runner import (ENGINES, CellResult, ConformanceReport, record_conformance, replay_recording,
                     run_conformance)

__all__ = ["ENGINES", "FAMILIES", "Case", "CellResult", "ConformanceReport", "Family", "family",
           "record_conformance", "replay_recording", "run_conformance"]
