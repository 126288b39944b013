"""Shared by the benchmark scripts: thread control, best-of-N wall time, peak memory, the host.

Nothing here imports NumPy or torch at module level: ``single_thread_environment`` must run
before they load.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator


def single_thread_environment() -> None:
    """Pin BLAS, OpenMP and numba to one thread; call before NumPy or torch is imported."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS"):
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


def first_call(function: Callable):
    """``(seconds, result)`` of one call: run it first to see compilation and planning cost."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def interleaved_best_times(functions: dict[str, Callable], repeat: int, warmup: int = 1,
                           per_turn: int = 1, pause: float = 0.0) -> dict[str, float]:
    """The fastest of ``repeat * per_turn`` calls of each function, in seconds, by name.

    The sides take turns (each round calls every function ``per_turn`` times, in order), so a
    drift of the CPU clock or a noisy neighbour hits every side alike; ``warmup`` untimed rounds
    run first. ``pause`` seconds of sleep before each turn let the previous side's thread pool
    (OpenMP, OpenBLAS, numba spin-wait after a parallel call) fall asleep before the next side
    runs: needed when both sides run several threads, not with one thread.
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
    best = {name: float("inf") for name in functions}
    for _ in range(max(1, repeat)):
        for name, function in functions.items():
            if pause:
                time.sleep(pause)
            for _ in range(per_turn):
                start = time.perf_counter()
                function()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


# --- threads ----------------------------------------------------------------------------------


def all_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def threads(count: int | None) -> Iterator[dict[str, int]]:
    """Run the block with ``count`` threads in torch, numba (when imported) and BLAS (through
    threadpoolctl when installed); ``None``: each library's default. Yields what was set."""
    import sys

    settings: dict[str, int] = {}
    torch = sys.modules.get("torch")
    numba = sys.modules.get("numba")
    saved_torch = torch.get_num_threads() if torch else None
    saved_numba = numba.get_num_threads() if numba else None
    if torch:
        torch.set_num_threads(count or all_threads())
        settings["torch"] = torch.get_num_threads()
    if numba:
        numba.set_num_threads(min(count or numba.config.NUMBA_NUM_THREADS,
                                  numba.config.NUMBA_NUM_THREADS))
        settings["numba"] = numba.get_num_threads()
    limiter = None
    try:
        import threadpoolctl

        limiter = threadpoolctl.threadpool_limits(count) if count else None
        infos = threadpoolctl.threadpool_info()
        if infos:
            settings["blas"] = max(info["num_threads"] for info in infos)
    except ImportError:
        pass
    try:
        yield settings
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        if torch and saved_torch:
            torch.set_num_threads(saved_torch)
        if numba and saved_numba:
            numba.set_num_threads(saved_numba)


# --- peak memory (Linux /proc) ----------------------------------------------------------------


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        match = re.search(rf"^{field}:\s+(\d+)\s+kB", status.read(), re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free heap back to the OS (``malloc_trim(0)``), so that
    memory freed by a warm-up call is not reused unseen by the measured call."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_kib(function: Callable) -> int:
    """Peak resident memory of one call above the memory resident before it, in KiB.

    Resets the peak (``VmHWM``) to the current resident set by writing ``5`` to
    ``/proc/self/clear_refs``, reads ``VmRSS``, calls ``function`` once and reads ``VmHWM``.
    Run it in a fresh process after warm-up calls, with ``release_free_memory`` first.
    """
    release_free_memory()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = status_kib("VmRSS")
    result = function()
    peak = status_kib("VmHWM")
    del result
    return peak - before


# --- the host ---------------------------------------------------------------------------------


def cpu_description() -> dict[str, str]:
    """The CPU model, its SIMD flags of interest and its logical CPU count."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            text = cpuinfo.read()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            model = found.group(1).strip()
        found = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
        if found:
            flags = set(found.group(1).split())
    except OSError:
        pass
    interesting = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    present = [flag for flag in interesting if flag in flags]
    return {"model": model, "flags": " ".join(present) or "none of " + ", ".join(interesting),
            "vnni": "yes" if "avx512_vnni" in flags else "no",
            "logical_cpus": str(os.cpu_count() or 1)}
