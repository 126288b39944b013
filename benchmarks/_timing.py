"""Shared by the benchmark scripts: one thread everywhere, best-of-N wall time."""

from __future__ import annotations

import os
import time


def single_thread_environment() -> None:
    """Pin BLAS and OpenMP to one thread; call before NumPy or torch is imported."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"


def best_time(function, repeat: int) -> float:
    """The fastest of ``repeat`` timed calls (after one warm-up call), in seconds."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
