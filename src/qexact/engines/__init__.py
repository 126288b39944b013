"""Engines: PyTorch's quantized CPU backends, each stating its numerics as data.

``ENGINES`` is the one list of engines: ``get_engine``, the command line (its ``--engine``
choices), the conformance sweep (its default engines) and the tests (their engine
parametrization) read it. A new engine is one module here with ``engine(isa) -> Engine`` and one
line in ``ENGINES``.

>>> get_engine("qnnpack", isa="avx2").linear.name
'qnnpack'
>>> engine_names()
('fbgemm', 'x86', 'qnnpack', 'onednn')
>>> engine_names("pt2e")
('xnnpack', 'inductor', 'pt2e_eager')
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from ..errors import UnsupportedError
from . import fbgemm, inductor, onednn, pt2e_eager, qnnpack, x86, xnnpack
from .base import (ATEN_CAPABILITIES, AVX2, AVX512_VNNI, ISAS, BiasMode, Engine, GemmNumerics,
                   LayerQuantization, Requantization, check_isa, detect_aten_capability,
                   detect_isa)

ENGINES: dict[str, Callable[[str], Engine]] = {
    "fbgemm": fbgemm.engine,
    "x86": x86.engine,
    "qnnpack": qnnpack.engine,
    "onednn": onednn.engine,
    "xnnpack": xnnpack.engine,
    "inductor": inductor.engine,
    "pt2e_eager": pt2e_eager.engine,
}
"""The engine registry: name -> ``engine(isa) -> Engine``. Append a new engine at the end: the
order is the conformance sweep's case-stream order, and appending leaves every existing stream
(and so every recorded case) as it was."""


FLOWS = {"eager": ("fbgemm", "x86", "qnnpack", "onednn"),
         "pt2e": ("xnnpack", "inductor", "pt2e_eager")}
"""Engines by the models they run (``Engine.flow``): ``eager``, PyTorch's quantized engines
(``torch.ao.quantization`` models); ``pt2e``, the deployments of PT2E models."""


def engine_names(flow: str = "eager") -> tuple[str, ...]:
    """The registered engines of ``flow`` (``"eager"``, ``"pt2e"`` or ``"all"``), in registry
    order."""
    if flow == "all":
        return tuple(ENGINES)
    if flow not in FLOWS:
        raise UnsupportedError(f"flow {flow!r} is not one of {sorted(FLOWS) + ['all']}")
    return FLOWS[flow]


def get_engine(name: str | Engine, isa: str | None = None,
               aten_capability: str | None = None) -> Engine:
    """The engine called ``name`` on ``isa`` (default: what this CPU runs, ``detect_isa()``),
    with ATen's elementwise kernels at ``aten_capability`` (default ``detect_aten_capability()``)."""
    if isinstance(name, Engine):
        if (isa is None or isa == name.isa) and (aten_capability in (None, name.aten_capability)):
            return name
        return get_engine(name.name, isa or name.isa, aten_capability or name.aten_capability)
    if not isinstance(name, str) or name not in ENGINES:
        raise UnsupportedError(f"engine {name!r} is not supported; supported: {sorted(ENGINES)}")
    if aten_capability is not None and aten_capability not in ATEN_CAPABILITIES:
        raise UnsupportedError(f"aten_capability {aten_capability!r} is not supported; "
                               f"supported: {list(ATEN_CAPABILITIES)}")
    engine = ENGINES[name](check_isa(isa) if isa is not None else detect_isa())
    return replace(engine, aten_capability=aten_capability or detect_aten_capability())


__all__ = ["ATEN_CAPABILITIES", "AVX2", "AVX512_VNNI", "ENGINES", "ISAS", "BiasMode", "Engine",
           "GemmNumerics", "LayerQuantization", "Requantization", "detect_aten_capability",
           "detect_isa", "engine_names", "get_engine", "FLOWS"]
