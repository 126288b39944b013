"""``run_conformance``: a randomized differential sweep of every supported op x engine against
the installed PyTorch (the data behind ``qexact conformance``). Needs torch.

Each op family has a module of case generators (``*_cases.py``). A generator registers with
``@conformance_case("name")``: given an engine and a NumPy generator, it draws parameters and
inputs (odd sizes, tails shorter than the SIMD width, ties on power-of-two scales), runs
PyTorch's kernel and qexact's, and returns both outputs. Every element is compared exactly.
"""

from __future__ import annotations

# registration order is the report's row order: from quantize to whole-tensor reductions
from . import quantize_cases, linear_cases, conv_cases  # noqa: F401, I001
from . import elementwise_cases, activation_cases, pooling_cases  # noqa: F401, I001
from . import normalization_cases, reduce_cases  # noqa: F401, I001
from .runner import CASES, ENGINES, ConformanceReport, OpResult, conformance_case, run_conformance

__all__ = ["CASES", "ENGINES", "ConformanceReport", "OpResult", "conformance_case",
           "run_conformance"]
