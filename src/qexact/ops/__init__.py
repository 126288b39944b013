"""Quantized ops, each usable alone on integer arrays plus prepared parameters.

Each module registers its graph ops (``ops._registry.OP_REGISTRY``) when imported;
``load_all_ops`` imports them all.
"""

from __future__ import annotations

import importlib

OP_MODULES = ("quantize", "linear", "activations", "shape", "conv", "elementwise", "pooling",
              "normalization", "scalar", "concat", "arith", "conv_transpose", "reduce", "prelu",
              "float_activations")


def load_all_ops() -> None:
    for module in OP_MODULES:
        importlib.import_module(f"{__name__}.{module}")
