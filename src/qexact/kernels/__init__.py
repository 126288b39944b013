"""Kernel backends: the NumPy definition, and an exact compiled fast path (``qexact[fast]``).

- ``"numpy"``: every op in NumPy, as written in ``qexact.ops``: the definition.
- ``"fast"``: the accumulate-then-requantize layers (Linear, Conv) and their epilogues through
  numba-compiled integer kernels (``qexact.kernels.fast``): u8 x s8 dot products with the
  instruction that is exact on this CPU (``vpdpbusd`` on AVX512-VNNI, ``vpmaddwd`` on AVX2), or
  with the engine's own ``vpmaddubsw`` where the modelled engine saturates int16 pairs; a fused
  epilogue running the engine's ``Step``s in the same precision and order. Each kernel states
  why it is exact in its module docstring, and ``tests/kernels`` holds it equal to the NumPy
  path. Where a kernel does not apply (a layer it does not cover, an observed run, a CPU
  without AVX2) the NumPy path runs.

A ``Net`` runs its nodes under its ``backend`` (``Net(..., backend=)``, ``qexact.from_torch``,
``qexact.load``); the default is ``"fast"`` when numba is installed and the CPU has AVX2, else
``"numpy"``; the ``QEXACT_BACKEND`` environment variable sets another default.
"""

from __future__ import annotations

import functools
import hashlib
import os
from contextvars import ContextVar
from pathlib import Path

from ..errors import UnsupportedError

BACKENDS = ("numpy", "fast")
_ACTIVE: ContextVar[str] = ContextVar("qexact_backend", default="numpy")


@functools.cache
def fast_unavailable() -> str:
    """Why the fast backend cannot run here ("" when it can)."""
    from ..engines.base import cpu_flags

    if not {"avx2", "fma"} <= cpu_flags():
        return "the fast backend needs a CPU with AVX2 and FMA (this one has none)"
    try:
        import numba  # noqa: F401
    except ImportError:
        return "numba is not installed (pip install 'qexact[fast]')"
    return ""


def fast_available() -> bool:
    return not fast_unavailable()


def resolve_backend(backend: str | None = None) -> str:
    """The backend a ``Net`` runs: ``backend``, else ``$QEXACT_BACKEND``, else ``"fast"`` where it
    can run, else ``"numpy"``. Asking for ``"fast"`` where it cannot run is an error."""
    requested = backend or os.environ.get("QEXACT_BACKEND", "").strip().lower() or None
    if requested is None:
        return "fast" if fast_available() else "numpy"
    if requested not in BACKENDS:
        raise UnsupportedError(f"backend {requested!r} is not one of {list(BACKENDS)}")
    if requested == "fast" and fast_unavailable():
        raise UnsupportedError(f"backend 'fast': {fast_unavailable()}; backend 'numpy' runs "
                               "everywhere")
    return requested


def active_backend() -> str:
    """The backend of the run in progress (``"numpy"`` outside ``using``)."""
    return _ACTIVE.get()


class using:
    """Run the ops called inside on ``backend`` (a value of ``resolve_backend``): a context
    manager (a class: ``Net.run_values`` enters it on every call, ~0.3 us instead of ~1 us)."""

    __slots__ = ("backend", "_token")

    def __init__(self, backend: str):
        self.backend = backend

    def __enter__(self) -> None:
        self._token = _ACTIVE.set(self.backend)

    def __exit__(self, *exc_info) -> None:
        _ACTIVE.reset(self._token)


@functools.cache
def refresh_compiled_cache(directory: Path | None = None) -> None:
    """Drop numba's cached machine code of the kernels if any kernel source changed since it was
    compiled. numba keys a cached function by its own file alone, and the kernels call each
    other across files (the fused GEMM compiles the epilogue's ``run_block`` in): an edited
    ``_numba_epilogue.py`` under an unchanged ``_numba_fused.py`` would otherwise run stale code.
    The sources' sizes and times are stamped beside the cache; a cache that cannot be written
    (an installed, read-only package) is left to numba. Called by every ``_numba_*`` module;
    ``directory``: the kernels' (default: this package's)."""
    directory = directory or Path(__file__).parent
    cache = directory / "__pycache__"
    try:
        stamp = hashlib.sha256("".join(
            f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns};"
            for path in sorted(directory.glob("_numba_*.py"))).encode()).hexdigest()
        stamp_file = cache / "numba-sources.stamp"
        if stamp_file.is_file() and stamp_file.read_text(encoding="ascii") == stamp:
            return
        for path in cache.glob("_numba_*.nb[ic]"):
            path.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp_file.write_text(stamp, encoding="ascii")
    except OSError:
        pass
