"""The root of pytest's configuration: ``QEXACT_HIDE_NUMBA=1`` runs the tests as an install
without the ``fast`` extra (``make test`` does so for the kernels' differential tests): ``import
numba`` fails, the default backend is ``numpy``, and the numba kernel modules are not collected
for their doctests. Subprocesses started by tests get ``QEXACT_BACKEND=numpy``."""

import importlib.util
import os
import sys

if os.environ.get("QEXACT_HIDE_NUMBA") == "1":
    sys.modules["numba"] = None  # ``import numba`` raises ImportError
    os.environ["QEXACT_BACKEND"] = "numpy"


def _numba_missing() -> bool:
    if "numba" in sys.modules:
        return sys.modules["numba"] is None
    return importlib.util.find_spec("numba") is None


if _numba_missing():
    collect_ignore_glob = ["src/qexact/kernels/_numba_*.py"]
