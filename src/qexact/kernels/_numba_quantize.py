"""Per-tensor quantize of float32 arrays, and dequantize of uint8/int8 ones, on the fast path
(numba): one pass instead of NumPy's float32 emulation of ``fmaf`` (``rounding.fma_float32``,
round to odd in float64) and the passes of the other steps, and little per-call work (a small
model's input quantize and output dequantize run in about 1-2 us).

Use only after ``qexact.kernels.fast_available()``: this module imports numba. The kernels
compile lazily (first call) with ``cache=True, nogil=True`` and never ``fastmath``. The NumPy
path (``qexact.ops.quantize._quantize`` / ``dequantize``: ``trace.apply_steps`` over the kernel's
``Step``s) is the definition; ``tests/kernels/test_numba_quantize.py`` holds ``quantize_fast``
and ``dequantize_fast`` equal to it. Measured, one thread: (8, 3, 224, 224) float32 quantized in
0.35 ms (NumPy path 19 ms); a (1, 10) input in 1.8 us per call (NumPy path about 35 us).

Covered: the steps of ``engines.aten_quantize.quantize_fused`` (FBGEMM ``QuantizeAvx2``, what
``torch.quantize_per_tensor`` runs for quint8/qint8 and the ``default`` build's
``quantize_vec``), recognised by their classes, with scalar constants:

    q = clamp(cvtps2dq(min(fmaf(x, inv, z), cap)), qmin, qmax)

Exactness, step by step (the arithmetic of each ``Step.apply``):

- ``MultiplyAddFloat32`` (fused): ``fma_float32`` is the correctly rounded ``x*inv + z`` in
  float32; here ``llvm.fma.f32`` (``_numba_epilogue._fmaf``), also one correct rounding of the
  same real number (NaN and infinities propagate as IEEE says in both): equal.
- ``MinFloat32``: ``v <= cap ? v : cap``, literally ``apply``'s ``np.where`` (NaN gives ``cap``).
- ``RoundHalfEvenToInt32``: ``rintf`` (``llvm.rint.f32``, ties to even) then INT32_MIN unless
  ``-2**31 <= r < 2**31`` (``rounding.round_half_even_to_int32``: the same rule in float32; NaN
  compares false; the conversion is only taken on in-range values).
- ``ClampInt``: ``min(max(q, low), high)`` on int64, NumPy's clip; the result fits the output
  dtype, stored as ``astype`` stores it.

``dequantize_fast``: the steps of ``engines.aten_quantize.dequantize_kernel`` per tensor (FBGEMM
``Dequantize``), ``v = f32(f32(q + t) * s)`` with ``t = -z``: ``AddInt32`` (``wrap_int32(q + t)``),
``ToFloat32``, ``MultiplyFloat32`` by a float32 scalar ``s``. For uint8/int8 ``q`` and ``|t| <=
2**16`` the sum is an integer below 2**17 in magnitude: no wrap, exactly a float32 (int32 in the
kernel, converted exactly), and the product of two float32s rounded once, as NumPy's float32
multiply (``MultiplyFloat32.apply``: float32 array times float32 scalar stays float32).

Memory: the result has ``np.empty_like(x)``'s layout (NumPy's ufuncs and ``astype`` keep the
input's memory order), and the kernel runs over both arrays' memory in one flat loop when they
are dense in the same order; other inputs (strided views, other steps, per-channel qparams)
return None (the NumPy path runs).
"""

from __future__ import annotations

import numba
import numpy as np

from ..requantize import (AddInt32, ClampInt, MinFloat32, MultiplyAddFloat32, MultiplyFloat32,
                          RoundHalfEvenToInt32, ToFloat32)
from . import refresh_compiled_cache
from ._numba_epilogue import _fmaf, _rintf

refresh_compiled_cache()  # before any cached kernel loads (see its docstring)

_JIT = dict(cache=True, nogil=True)
_OUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.int8))
INT32_MIN = -2147483648


@numba.njit(**_JIT)
def _quantize_fused(x, out, inv, zero_point, cap, low, high):
    """``out[i] = clamp(cvtps2dq(min(fmaf(x[i], inv, z), cap)), low, high)`` over flat arrays."""
    lowest_int32 = np.float32(-2147483648.0)
    beyond_int32 = np.float32(2147483648.0)
    for i in range(x.size):
        value = _fmaf(x[i], inv, zero_point)
        value = value if value <= cap else cap
        rounded = _rintf(value)
        q = np.int64(INT32_MIN)
        if rounded >= lowest_int32 and rounded < beyond_int32:
            q = np.int64(rounded)
        out[i] = min(max(q, low), high)


def _scalar_float32(value) -> np.float32 | None:
    array = np.asarray(value)
    return np.float32(array.reshape(-1)[0]) if array.size == 1 and array.dtype == np.float32 \
        else None


def _fused_constants(steps) -> tuple | None:
    """(inv, z, cap, low, high) of ``quantize_fused``'s steps, or None for other steps."""
    if len(steps) != 4 or [type(step) for step in steps] != [MultiplyAddFloat32, MinFloat32,
                                                            RoundHalfEvenToInt32, ClampInt]:
        return None
    fma, cap, _, clamp = steps
    inv, zero_point = _scalar_float32(fma.factor), _scalar_float32(fma.term)
    if not fma.fused or inv is None or zero_point is None:
        return None
    return inv, zero_point, np.float32(cap.high), int(clamp.low), int(clamp.high)


def _flat_in_memory_order(x: np.ndarray, out: np.ndarray):
    """Both arrays as flat views in their common memory order, or None."""
    order = sorted(range(x.ndim), key=lambda axis: -x.strides[axis])
    x_view, out_view = x.transpose(order), out.transpose(order)
    if not (x_view.flags.c_contiguous and out_view.flags.c_contiguous):
        return None
    return x_view.reshape(-1), out_view.reshape(-1)


_CONSTANTS: dict[int, tuple] = {}
"""``_fused_constants`` by ``id(steps)``, each entry holding its steps (so the id stays theirs):
a node's kernel, chosen once, hands the same tuple run after run."""


def _constants_of(steps, out_dtype: np.dtype) -> tuple | None:
    entry = _CONSTANTS.get(id(steps))
    if entry is not None and entry[0] is steps and entry[1] == out_dtype:
        return entry[2]
    constants = _fused_constants(steps)
    if constants is not None:
        info = np.iinfo(out_dtype)
        if not info.min <= constants[3] <= constants[4] <= info.max:
            constants = None  # astype would wrap: the NumPy path shows it
        else:
            constants = constants[:3] + (np.int64(constants[3]), np.int64(constants[4]))
    if len(_CONSTANTS) >= 256:
        _CONSTANTS.clear()
    _CONSTANTS[id(steps)] = (steps, out_dtype, constants)
    return constants


def quantize_fast(x: np.ndarray, steps, out_dtype) -> np.ndarray | None:
    """``apply_steps(x, steps).astype(out_dtype)`` for a float32 ``x`` and the steps of
    ``quantize_fused`` (per tensor, uint8/int8 out); None where not covered."""
    out_dtype = np.dtype(out_dtype)
    if x.dtype != np.float32 or out_dtype not in _OUT_DTYPES:
        return None
    constants = _constants_of(steps, out_dtype)
    if constants is None:
        return None
    if x.flags.c_contiguous:
        out = np.empty(x.shape, out_dtype)
        flat = x.reshape(-1), out.reshape(-1)
    else:
        out = np.empty_like(x, dtype=out_dtype)
        flat = _flat_in_memory_order(x, out)
        if flat is None:
            return None
    if out.size:
        _quantize_fused(flat[0], flat[1], *constants)
    return out


_DEQUANTIZE_CONSTANTS: dict[int, tuple] = {}
"""``_dequantize_constants`` by ``id(steps)`` (as ``_CONSTANTS``)."""


@numba.njit(**_JIT)
def _dequantize(q, out, term, scale):
    """``out[i] = f32(f32(q[i] + term) * scale)`` over flat arrays."""
    for i in range(q.size):
        out[i] = np.float32(np.int32(q[i]) + term) * scale


def _dequantize_constants(steps) -> tuple | None:
    if len(steps) != 3 or [type(step) for step in steps] != [AddInt32, ToFloat32,
                                                            MultiplyFloat32]:
        return None
    add, _, multiply = steps
    term, scale = np.asarray(add.term), _scalar_float32(multiply.factor)
    if term.size != 1 or term.dtype.kind not in "iu" or scale is None:
        return None
    term = int(term.reshape(-1)[0])
    return (np.int32(term), scale) if abs(term) <= 2 ** 16 else None


def dequantize_fast(values: np.ndarray, steps) -> np.ndarray | None:
    """``apply_steps(values.astype(int64), steps)`` (float32) for uint8/int8 ``values`` and the
    per-tensor steps of ``dequantize_kernel``; None where not covered."""
    if values.dtype not in _OUT_DTYPES:
        return None
    entry = _DEQUANTIZE_CONSTANTS.get(id(steps))
    if entry is not None and entry[0] is steps:
        constants = entry[1]
    else:
        constants = _dequantize_constants(steps)
        if len(_DEQUANTIZE_CONSTANTS) >= 256:
            _DEQUANTIZE_CONSTANTS.clear()
        _DEQUANTIZE_CONSTANTS[id(steps)] = (steps, constants)
    if constants is None:
        return None
    if values.flags.c_contiguous:
        out = np.empty(values.shape, np.float32)
        flat = values.reshape(-1), out.reshape(-1)
    else:
        out = np.empty_like(values, dtype=np.float32)
        flat = _flat_in_memory_order(values, out)
        if flat is None:
            return None
    if out.size:
        _dequantize(flat[0], flat[1], *constants)
    return out
