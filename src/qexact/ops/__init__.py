"""Quantized ops, each usable alone on integer arrays plus prepared parameters.

Each module registers its graph ops (``ops._registry.OP_REGISTRY``) when imported;
``load_all_ops`` imports every public module of this package (``_`` modules are helpers), so a
new op module needs no list edit.
"""

from __future__ import annotations

import importlib
import pkgutil


def op_modules() -> list[str]:
    """The public modules of this package, by name."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_"))


def load_all_ops() -> None:
    """Import every op module: each registers its graph ops."""
    for module in op_modules():
        importlib.import_module(f"{__name__}.{module}")
