"""quantize_per_tensor, quantize_per_channel, dequantize: the only ops that take or give floats.

PyTorch's formulas (torch 2.13, every engine; docs/arithmetic.md eq. 2-4), stated as ``Step``
pipelines in ``qexact.engines.aten_quantize`` (``quantize_kernel``, ``dequantize_kernel``), which
these functions apply and explain observes:

    inv = f32(1.0f / f32(scale))                         # a float32 reciprocal, never x / scale
    per-tensor 8-bit:  t = fmaf(x, inv, f32(zp))         # zero point added BEFORE rounding, fused
    per-tensor qint32, per-channel: t = f32(f32(x * inv) + f32(zp))   # two roundings
    q = clamp(round_half_even(t), qmin, qmax)
    dequantize per-tensor:  r = f32(f32(scale) * f32(wrap_int32(q - zp)))
    dequantize per-channel: r = f32(float64(f32(f32(q) - f32(zp))) * scale_c)

NaN and infinities, as PyTorch maps them (clamping happens after rounding; the table's sources
and measurements are in engines/aten_quantize.py):

    =========  ==================  ==================  =================
    input      per-tensor 8-bit    per-channel 8-bit   qint32 (both)
    =========  ==================  ==================  =================
    NaN        qmax                0                   INT32_MIN
    +inf       qmax                qmax                qmax
    -inf       qmin                qmin                qmin
    =========  ==================  ==================  =================

``ZeroPointEntry`` and ``quantize_values`` model the places a port may add the zero point
(``qexact.diagnose`` reproduces such mistakes with them); the functions here run PyTorch's.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dtypes import QINT32, QDType
from ..engines.aten_quantize import dequantize_kernel, quantize_kernel
from ..errors import DTypeError, QuantParamError, ShapeError
from ..kernels import active_backend
from ..qparams import QParams, QuantizedArray, qparams_from_fields
from ..rounding import f32, fma_float32, round_half_even
from ..trace import apply_steps, observing, record
from ._registry import graph_op, observed_block_stages, observed_stages


class ZeroPointEntry(enum.Enum):
    """Where the zero point enters a float-to-integer quantization."""

    FUSED_BEFORE_ROUNDING = "fmaf(x, inv, zp), one rounding, then round to integer"
    ADDED_BEFORE_ROUNDING = "f32(f32(x * inv) + zp), then round to integer"
    ADDED_AFTER_ROUNDING = "round(f32(x * inv)) + zp"


def torch_zero_point_entry(dtype: QDType, per_channel: bool) -> ZeroPointEntry:
    """Where PyTorch's eager ``quantize_per_tensor``/``_per_channel`` add the zero point."""
    if per_channel or dtype == QINT32:
        return ZeroPointEntry.ADDED_BEFORE_ROUNDING
    return ZeroPointEntry.FUSED_BEFORE_ROUNDING


def check_float32(x, what: str = "input") -> np.ndarray:
    """``x`` as a float32 NumPy array, or a clear error (no silent float64 -> float32 rounding)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise DTypeError(
            f"{what} must be float32 (as PyTorch quantizes it), got {x.dtype}; "
            "convert it with .astype(np.float32) if that rounding is what you want"
        )
    return x


def reciprocal_float32(scale) -> np.ndarray:
    """``f32(1.0f / f32(scale))``: the float32 reciprocal every quantize multiplies by."""
    return f32(np.float32(1.0) / f32(scale))


def quantize_values(x: np.ndarray, inv, zero_point, entry: ZeroPointEntry) -> np.ndarray:
    """``x * inv`` with the zero point entered per ``entry``; float32 before the final rounding
    (a model for ``qexact.diagnose``; ``quantize`` runs ``engines.aten_quantize``'s steps).

    For ``ADDED_AFTER_ROUNDING`` the result is already rounded (a float holding an integer).
    """
    zero_point = f32(zero_point)
    if entry is ZeroPointEntry.FUSED_BEFORE_ROUNDING:
        return fma_float32(x, inv, zero_point)
    with np.errstate(over="ignore", invalid="ignore"):  # huge values become inf, as in C
        if entry is ZeroPointEntry.ADDED_BEFORE_ROUNDING:
            return f32(f32(x * inv) + zero_point)
        return round_half_even(f32(x * inv)) + zero_point


def quantize_per_tensor(x, scale: float, zero_point: int, dtype: QDType) -> QuantizedArray:
    """Quantize a float32 array with one scale and zero point (``torch.quantize_per_tensor``).

    >>> from qexact.dtypes import QUINT8
    >>> quantize_per_tensor(np.float32([0.0, 0.25, 0.5, 1.0]), 0.5, 3, QUINT8).values
    array([3, 4, 4, 5], dtype=uint8)
    """
    qparams = QParams.per_tensor(scale, zero_point, dtype)
    return _quantize(check_float32(x), qparams)


def quantize_per_channel(x, scales, zero_points, axis: int, dtype: QDType) -> QuantizedArray:
    """Quantize with one scale and zero point per slice along ``axis``
    (``torch.quantize_per_channel``)."""
    x = check_float32(x)
    axis = _check_channels(x, axis, np.size(scales))
    return _quantize(x, QParams.per_channel(scales, zero_points, axis, dtype))


def _check_channels(x: np.ndarray, axis: int, count: int) -> int:
    """``axis`` of ``x`` (made non-negative), after checking it has ``count`` channels."""
    if not -x.ndim <= axis < x.ndim:
        raise ShapeError(f"axis {axis!r} out of range for an input of shape {x.shape}")
    axis = axis % x.ndim
    if count != x.shape[axis]:
        raise ShapeError(f"{count} per-channel scales for axis {axis} of size {x.shape[axis]}")
    return axis


def _quantize(x: np.ndarray, qparams: QParams, kernel=None) -> QuantizedArray:
    """Apply ``kernel`` (default: what ``torch.quantize_per_*`` runs,
    ``engines.aten_quantize.quantize_kernel``) to every element, reporting its steps."""
    kernel = kernel or quantize_kernel(qparams, x.ndim)
    if active_backend() == "fast" and not observing():
        q = _fast_kernels().quantize_fast(x, kernel.steps, qparams.dtype.numpy_dtype)
        if q is not None:
            return QuantizedArray(q, qparams)
    record("quantize: kernel", "the kernel that quantizes every element", None,
           kernel=kernel.name)
    inv = kernel.inverse_scale
    scale = np.reshape(qparams.scale, np.shape(inv))
    record("quantize: inverse scale", "inv = f32(1.0f / f32(s))", _per_element(inv, x.shape),
           s=_per_element(scale, x.shape))
    q = apply_steps(x, kernel.steps, prefix="quantize: ")
    return QuantizedArray(q.astype(qparams.dtype.numpy_dtype), qparams)


@functools.cache
def _fast_kernels():
    """``kernels._numba_quantize``, imported on first use (it imports numba; the fast backend
    is active only where it can run)."""
    from ..kernels import _numba_quantize

    return _numba_quantize


def _per_element(value, shape):
    """A scalar as it is; per-channel constants (shaped to broadcast) over every element."""
    value = np.asarray(value)
    return value[()] if value.size == 1 else np.broadcast_to(value, shape)


def quantize(x, qparams: QParams) -> QuantizedArray:
    """Quantize with per-tensor or per-channel ``qparams``."""
    if qparams.is_per_channel:
        return quantize_per_channel(x, qparams.scale, qparams.zero_point, qparams.axis,
                                    qparams.dtype)
    return quantize_per_tensor(x, qparams.scale, qparams.zero_point, qparams.dtype)


def dequantize(q: QuantizedArray, kernel=None) -> np.ndarray:
    """Float32 values of a quantized array by ``kernel`` (default: ``Tensor.dequantize``'s,
    ``engines.aten_quantize.dequantize_kernel``)."""
    kernel = kernel or dequantize_kernel(q.qparams, q.values.ndim)
    if active_backend() == "fast" and not observing():
        result = _fast_kernels().dequantize_fast(np.asarray(q.values), kernel.steps)
        if result is not None:
            return result
    record("dequantize: kernel", "the kernel that dequantizes every element", None,
           kernel=kernel.name)
    return apply_steps(np.asarray(q.values).astype(np.int64), kernel.steps,
                       prefix="dequantize: ")


@dataclass(frozen=True, eq=False)
class QuantizeParams(QParams):
    """A quantize node's output qparams (it reads as them, in ``net.layers``) and the engine
    whose ``quantize`` kernel it runs."""

    engine: Any = None

    @functools.cached_property
    def qparams(self) -> QParams:
        return QParams(self.scale, self.zero_point, self.dtype, self.axis)

    @functools.cached_property
    def _kernel_by_rank(self) -> dict:
        return {}

    def kernel_for_rank(self, ndim: int):
        """The engine's quantize kernel for a float32 input of ``ndim`` dims, chosen once per rank
        (``Engine.kernel("quantize", qparams, ndim)`` depends on nothing else)."""
        kernel = self._kernel_by_rank.get(ndim)
        if kernel is None:
            kernel = self._kernel_by_rank[ndim] = self.engine.kernel("quantize", self.qparams,
                                                                     ndim)
        return kernel


@graph_op("quantize", "float32 -> quantized, per tensor (QuantStub / nnq.Quantize)")
class QuantizeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        output = qparams_from_fields(node.attrs, node.arrays, "output")
        return QuantizeParams(output.scale, output.zero_point, output.dtype, output.axis,
                              engine), output

    @staticmethod
    def run(params: QuantizeParams, inputs):
        x = check_float32(_float_input(inputs[0], "quantize"))
        output = params.qparams
        if output.is_per_channel:
            _check_channels(x, output.axis, np.size(output.scale))
        return _quantize(x, output, params.kernel_for_rank(x.ndim))

    @staticmethod
    def explain(params, inputs, result, index):
        """Observed on the run: the kernel, ``inv``, and each step of its pipeline (for a
        Linear's input row, every element of the row)."""
        return observed_block_stages(QuantizeOp.run, params, inputs, result, index), []


class DequantizeChooser:
    """``engine.kernel("dequantize", qparams, ndim)``, kept for the last ``(qparams, ndim)``: a
    node's input carries the same (immutable) ``QParams`` object run after run."""

    def __init__(self, engine):
        self.engine = engine
        self._last = None

    def __call__(self, qparams: QParams, ndim: int):
        last = self._last
        if last is not None and last[0] is qparams and last[1] == ndim:
            return last[2]
        kernel = self.engine.kernel("dequantize", qparams, ndim)
        self._last = (qparams, ndim, kernel)
        return kernel


@graph_op("dequantize", "quantized -> float32 (DeQuantStub / nnq.DeQuantize)")
class DequantizeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        """Params: the engine's ``dequantize`` chooser (the kernel depends on the input's rank)."""
        require_quantized(node, input_qparams)
        return DequantizeChooser(engine), None

    @staticmethod
    def run(choose, inputs):
        (x,) = inputs
        if not isinstance(x, QuantizedArray):
            raise ShapeError("dequantize expects a quantized array")
        return dequantize(x, choose(x.qparams, x.values.ndim))

    @staticmethod
    def explain(choose, inputs, result, index):
        """Observed on the run: the kernel and each step of its pipeline."""
        return observed_stages(DequantizeOp.run, choose, inputs, result, index), [(0, index)]


def _float_input(x, op: str):
    if isinstance(x, QuantizedArray):
        raise ShapeError(f"{op} expects a float32 array, got an already quantized array")
    return x


def require_quantized(node, input_qparams, index: int = 0) -> QParams:
    """The qparams of input ``index`` of ``node``, which must be a quantized tensor."""
    qparams = input_qparams[index] if index < len(input_qparams) else None
    if qparams is None:
        raise QuantParamError(f"input {index} of {node.op!r} must be a quantized tensor")
    return qparams


def require_float32(x, what: str) -> np.ndarray:
    """``x`` as a float32 array: a float kernel's input (``what`` names it in the error), which
    must be neither a quantized tensor nor another float type."""
    if isinstance(x, QuantizedArray):
        raise DTypeError(f"{what} takes float32 tensors, got a quantized one")
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise DTypeError(f"{what} must be float32, got {x.dtype}")
    return x


def output_qparams_of(node) -> QParams | None:
    """The node's output qparams (attrs ``output_*``), or None where it has none: a layer whose
    output stays float32 (PT2E models compiled by Inductor, when no quantize follows)."""
    if "output_dtype" not in node.attrs:
        return None
    return qparams_from_fields(node.attrs, node.arrays, "output")
