"""The fast backend's plan for a GEMM layer: what is prepared once, and the calls it makes.

A layer's plan (``plan_of(params)``) is built at its first run on the fast backend and kept
with its ``LinearParams``/``ConvParams`` (a weak-keyed cache): the int8 weights packed for the
kernel, the dot-product method, and the compiled epilogue of its requantization steps. Each
entry point returns None where its kernels do not apply, and the op runs its NumPy path:

- ``linear_output``/``conv_output``: the layer's output integers (or float32), the GEMM (or a
  depthwise conv's direct sum) and the compiled epilogue fused per block of rows
  (``_numba_fused``, ``_numba_conv.depthwise_requantize``); a grouped conv runs its
  accumulator, then the epilogue;
- ``linear_accumulator``/``conv_accumulator``: the int32 accumulator alone, equal to the NumPy
  path's ``sum (x - z_x)(w - z_w)`` (pair saturation included where the engine has it), for a
  run whose accumulator is observed (``qexact.trace.tap``) or whose epilogue has no compiled
  form: ``requantize`` then runs the steps.

Which dot product runs (``gemm_method``): where the modelled engine sums raw u8 x s8 pairs in
int16 with saturation (``params.pair_saturation``) the same ``vpmaddubsw`` + ``vpmaddwd``
sequence; otherwise an exact one, ``vpdpbusd`` where this CPU has AVX512-VNNI, else
``vpmaddwd`` on values widened to int16. The method follows the *modelled* ISA's arithmetic,
the instruction follows the host's: an AVX2 engine is computed exactly on a VNNI host.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engines.base import PAD_ZERO
from ..errors import UnsupportedError
from ..layout import grouped_rows
from ..trace import tapping

_PLANS: "weakref.WeakKeyDictionary[Any, GemmPlan | None]" = weakref.WeakKeyDictionary()


@dataclass
class GemmPlan:
    """What a GEMM layer's fast run needs, prepared once."""

    method: str
    packed: tuple               # one ``PackedWeights`` per group
    columns: np.ndarray | None  # the depth layout of saturating pairs (None: natural order)
    depthwise: bool
    epilogue: Any               # a compiled ``Epilogue``, or None (NumPy requantize)


def gemm_method(saturates: bool) -> str | None:
    """The dot-product method for a layer (None: no kernel for this host)."""
    from ._numba_gemm import available_methods

    methods = available_methods()
    if saturates:
        return "avx2_saturate" if "avx2_saturate" in methods else None
    for method in ("vnni", "avx2_exact"):
        if method in methods:
            return method
    return None


def plan_of(params) -> GemmPlan | None:
    """The layer's plan (built on first use; None: the layer runs on the NumPy path)."""
    try:
        return _PLANS[params]
    except KeyError:
        pass
    plan = _build_plan(params)
    _PLANS[params] = plan
    return plan


def _build_plan(params) -> GemmPlan | None:
    from ._numba_conv import is_depthwise_params
    from ._numba_epilogue import compile_epilogue
    from ._numba_gemm import pack_weights

    method = gemm_method(params.pair_saturation)
    if method is None or params.input_qparams.dtype.numpy_dtype.itemsize != 1:
        return None
    output = params.output_qparams
    out_dtype = np.dtype(np.float32) if output is None else output.dtype.numpy_dtype
    epilogue = compile_epilogue(params.requantization, _channels(params), out_dtype)
    depthwise = params.weight.ndim > 2 and is_depthwise_params(params)
    if depthwise:
        return GemmPlan(method, (), None, True, epilogue)
    rows = _weight_rows(params)                                   # (G, N/G, K)
    columns = None
    if params.pair_saturation:
        columns = np.asarray(params.pair_positions).reshape(-1)
        depth = rows.shape[2]
        natural = np.concatenate([np.arange(depth), np.full(len(columns) - depth, -1)])
        if len(columns) >= depth and np.array_equal(columns, natural):
            columns = None      # pairs already consecutive; an odd last one pairs with padding
    try:
        packed = tuple(pack_weights(np.ascontiguousarray(group), columns) for group in rows)
    except UnsupportedError:
        return None
    return GemmPlan(method, packed, columns, False, epilogue)


def _channels(params) -> int:
    return params.weight.shape[0]


def _weight_rows(params) -> np.ndarray:
    if params.weight.ndim == 2:
        return params.weight[None]
    return grouped_rows(params.weight, params.groups)


def _as_u8(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Activations as uint8 and the shift of their zero point: int8 ``x`` is ``x + 128`` as
    uint8 (flipping the sign bit), with ``z_x + 128``; the centered values are unchanged."""
    if values.dtype == np.uint8:
        return values, 0
    return (values.view(np.uint8) ^ np.uint8(0x80)), 128


def _zero_points(params) -> tuple[int, np.ndarray]:
    weight_zero_point = np.asarray(params.weight_qparams.zero_point, dtype=np.int64)
    return int(params.input_qparams.zero_point), weight_zero_point


def _or_numpy_path(entry):
    """An entry point giving None (the op's NumPy path) where a kernel refuses a size it cannot
    hold exactly in int32 (``UnsupportedError``: depth past 33,025, 16,384 depthwise taps)."""
    @functools.wraps(entry)
    def guarded(*arguments):
        try:
            return entry(*arguments)
        except UnsupportedError:
            return None
    return guarded


@_or_numpy_path
def linear_accumulator(rows: np.ndarray, params) -> np.ndarray | None:
    """(M, K) activations -> int32 (M, N) accumulator, or None (NumPy path)."""
    from ._numba_gemm import accumulate_u8s8

    plan = plan_of(params)
    if plan is None:
        return None
    x, x_zero_point, weight_zero_point = _gemm_input(rows, params, plan)
    return accumulate_u8s8(x, plan.packed[0], x_zero_point, weight_zero_point, plan.method)


@_or_numpy_path
def linear_output(rows: np.ndarray, params, steps: tuple) -> np.ndarray | None:
    """(M, K) activations -> the (M, N) output of the layer's ``steps`` (operands bound): the
    GEMM and the compiled epilogue fused per block of rows; None: the op runs its accumulator
    and ``requantize`` (no compiled epilogue, or a ``tap`` observing the accumulator)."""
    from ._numba_fused import gemm_requantize_fast

    plan = plan_of(params)
    if plan is None or plan.epilogue is None or tapping():
        return None
    x, x_zero_point, weight_zero_point = _gemm_input(rows, params, plan)
    return gemm_requantize_fast(x, plan.packed[0], x_zero_point, weight_zero_point, plan.method,
                                plan.epilogue, operands=_operands(steps),
                                parallel=_parallel(x, plan.packed[0]))


PARALLEL_MIN_MACS = 1 << 22
"""From this many multiply-adds a GEMM is split over numba's threads (``numba.set_num_threads``;
one thread by default in the benchmarks' single-thread rows). Same result on any count."""


def _parallel(x: np.ndarray, packed) -> bool:
    return x.shape[0] * x.shape[1] * packed.output_channels >= PARALLEL_MIN_MACS


def _gemm_input(rows: np.ndarray, params, plan: GemmPlan):
    """The activations as the packed kernel reads them, and the zero points it corrects by."""
    x, shift = _as_u8(rows)
    x_zero_point, weight_zero_point = _zero_points(params)
    return _laid_out(x, plan.packed[0], plan.columns), x_zero_point + shift, weight_zero_point


def _operands(steps: tuple) -> list | None:
    """The run-time operands bound to ``steps`` (a residual), in step order, or None."""
    return [step.operand for step in steps if hasattr(step, "operand")] or None


def _laid_out(x: np.ndarray, packed, columns: np.ndarray | None) -> np.ndarray:
    """(M, K) -> (M, padded_depth) uint8 in the packed depth layout, zeros past it."""
    if columns is None and x.shape[1] == packed.padded_depth and x.flags.c_contiguous:
        return x
    padded = np.zeros((x.shape[0], packed.padded_depth), dtype=np.uint8)
    if columns is None:
        padded[:, :x.shape[1]] = x
    else:
        real = columns >= 0
        padded[:, :len(columns)][:, real] = x[:, columns[real]]
    return padded


def _conv_columns(values: np.ndarray, params, plan: GemmPlan):
    """im2col of the activations into the packed depth layout: ``(columns (G, M, Kp), z_x,
    z_w)``, or None where the fast kernels do not form this layer's pairs."""
    from ._numba_conv import im2col_u8

    values, shift = _as_u8(values)
    x_zero_point, weight_zero_point = _zero_points(params)
    values, padding = params.padded(values)
    if params.pair_saturation and params.padded_tap == PAD_ZERO and any(padding):
        return None         # oneDNN's AVX2 pairs read padded taps as raw 0: NumPy path
    if plan.columns is not None:
        return None         # pairs restart at every tap inside the row: NumPy path
    rows = _pointwise_rows(values, params, plan)
    if rows is not None:
        return rows, x_zero_point + shift, weight_zero_point
    cols = im2col_u8(values, params.kernel_size, params.stride, padding, params.dilation,
                     params.groups, x_zero_point + shift, row_stride=plan.packed[0].padded_depth)
    return None if cols is None else (cols, x_zero_point + shift, weight_zero_point)


def _pointwise_rows(values: np.ndarray, params, plan: GemmPlan) -> np.ndarray | None:
    """A 1x1 convolution with stride 1 and no padding reads each position's channels: on
    channels-last memory whose channel count is the packed depth, the (1, N * H * W, C) im2col
    matrix is the activations themselves, viewed without a copy. None: im2col it."""
    if (params.kernel_size != (1, 1) or params.stride != (1, 1) or any(params.padding)
            or params.groups != 1 or values.ndim != 4):
        return None
    positions = np.moveaxis(values, 1, -1)
    if not positions.flags.c_contiguous or positions.shape[-1] != plan.packed[0].padded_depth:
        return None
    return positions.reshape(1, -1, positions.shape[-1])


@_or_numpy_path
def conv_accumulator(values: np.ndarray, params) -> np.ndarray | None:
    """(N, C, *spatial) activations -> int32 (N * positions, OC), or None (NumPy path)."""
    from ._numba_conv import accumulator_for
    from ._numba_gemm import accumulate_u8s8

    plan = plan_of(params)
    if plan is None or len(params.kernel_size) > 2:
        return None
    if plan.depthwise:
        return accumulator_for(values, params) if values.dtype == np.uint8 else None
    prepared = _conv_columns(values, params, plan)
    if prepared is None:
        return None
    cols, x_zero_point, weight_zero_point = prepared
    if params.groups == 1:
        return accumulate_u8s8(cols[0], plan.packed[0], x_zero_point, weight_zero_point,
                               plan.method)
    per_group = params.out_channels // params.groups
    acc = np.empty((cols.shape[1], params.out_channels), dtype=np.int32)
    grouped_zero_point = weight_zero_point.reshape(params.groups, -1) \
        if weight_zero_point.ndim else [weight_zero_point] * params.groups
    for group in range(params.groups):
        acc[:, group * per_group:(group + 1) * per_group] = accumulate_u8s8(
            cols[group], plan.packed[group], x_zero_point, grouped_zero_point[group],
            plan.method)
    return acc


@_or_numpy_path
def conv_output(values: np.ndarray, params, steps: tuple) -> np.ndarray | None:
    """(N, C, *spatial) activations -> the (N * positions, OC) output of ``steps``: im2col, then
    the GEMM and epilogue fused (one group), or the fast accumulator and the compiled epilogue
    (depthwise, grouped); None as for ``linear_output``."""
    from ._numba_fused import gemm_requantize_fast

    plan = plan_of(params)
    if plan is None or plan.epilogue is None or tapping() or len(params.kernel_size) > 2:
        return None
    if plan.depthwise:
        from ._numba_conv import depthwise_requantize

        return depthwise_requantize(values, params, plan.epilogue, _operands(steps))
    if params.groups > 1:
        acc = conv_accumulator(values, params)
        return None if acc is None else plan.epilogue.run(acc, operands=_operands(steps))
    prepared = _conv_columns(values, params, plan)
    if prepared is None:
        return None
    cols, x_zero_point, weight_zero_point = prepared
    return gemm_requantize_fast(cols[0], plan.packed[0], x_zero_point, weight_zero_point,
                                plan.method, plan.epilogue, operands=_operands(steps),
                                parallel=_parallel(cols[0], plan.packed[0]))
