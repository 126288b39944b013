"""Engines: PyTorch's quantized CPU backends, each stating its numerics as data.

>>> get_engine("qnnpack", isa="avx2").linear.name
'qnnpack'
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UnsupportedError
from . import fbgemm, onednn, qnnpack, x86
from .base import (ATEN_CAPABILITIES, AVX2, AVX512_VNNI, ISAS, BiasMode, Engine, GemmNumerics,
                   LayerQuantization, Requantization, check_isa, detect_aten_capability,
                   detect_isa)

ENGINES = {"fbgemm": fbgemm.engine, "x86": x86.engine, "qnnpack": qnnpack.engine,
           "onednn": onednn.engine}


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


__all__ = ["ATEN_CAPABILITIES", "detect_aten_capability", "AVX2", "AVX512_VNNI", "ENGINES", "ISAS", "BiasMode", "Engine", "GemmNumerics",
           "LayerQuantization", "Requantization", "detect_isa", "get_engine"]
