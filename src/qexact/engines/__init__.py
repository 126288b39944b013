"""Engines: PyTorch's quantized CPU backends, each stating its numerics as data.

>>> get_engine("qnnpack", isa="avx2").linear.name
'qnnpack'
"""

from __future__ import annotations

from ..errors import UnsupportedError
from . import fbgemm, onednn, qnnpack, x86
from .base import (AVX2, AVX512_VNNI, ISAS, BiasMode, Engine, GemmNumerics, LayerQuantization,
                   Requantization, check_isa, detect_isa)

ENGINES = {"fbgemm": fbgemm.engine, "x86": x86.engine, "qnnpack": qnnpack.engine,
           "onednn": onednn.engine}


def get_engine(name: str | Engine, isa: str | None = None) -> Engine:
    """The engine called ``name`` on ``isa`` (default: what this CPU runs, ``detect_isa()``)."""
    if isinstance(name, Engine):
        return name if isa is None or isa == name.isa else get_engine(name.name, isa)
    try:
        factory = ENGINES[name]
    except KeyError:
        raise UnsupportedError(
            f"engine {name!r} is not supported; supported: {sorted(ENGINES)}"
        ) from None
    return factory(check_isa(isa) if isa is not None else detect_isa())


__all__ = ["AVX2", "AVX512_VNNI", "ENGINES", "ISAS", "BiasMode", "Engine", "GemmNumerics",
           "LayerQuantization", "Requantization", "detect_isa", "get_engine"]
