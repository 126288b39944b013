"""The fast backend's plan for a GEMM layer: what is prepared once, and the calls it makes.

A layer's plan (``plan_of(params)``) is built at its first run on the fast backend and kept
with its ``LinearParams``/``ConvParams`` (a weak-keyed cache): the int8 weights packed for the
kernel, the dot-product method, and the compiled epilogue of its requantization steps. Each
entry point returns None where its kernels do not apply, and the op runs its NumPy path:

- ``linear_accumulator``/``conv_accumulator``: the int32 accumulator, equal to the NumPy
  path's ``sum (x - z_x)(w - z_w)`` (pair saturation included where the engine has it);
- ``epilogue``: the engine's requantization ``Step``s fused in one compiled pass.

Which dot product runs (``gemm_method``): where the modelled engine sums raw u8 x s8 pairs in
int16 with saturation (``params.pair_saturation``) the same ``vpmaddubsw`` + ``vpmaddwd``
sequence; otherwise an exact one, ``vpdpbusd`` where this CPU has AVX512-VNNI, else
``vpmaddwd`` on values widened to int16. The method follows the *modelled* ISA's arithmetic,
the instruction follows the host's: an AVX2 engine is computed exactly on a VNNI host.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engines.base import PAD_ZERO
from ..errors import UnsupportedError
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
    from ._numba_epilogue import compile_epilogue
    from ._numba_gemm import pack_weights

    method = gemm_method(params.pair_saturation)
    if method is None or params.input_qparams.dtype.numpy_dtype.itemsize != 1:
        return None
    output = params.output_qparams
    out_dtype = np.dtype(np.float32) if output is None else output.dtype.numpy_dtype
    epilogue = compile_epilogue(params.requantization, _channels(params), out_dtype)
    from ._numba_conv import is_depthwise_params

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
    from ..ops.conv import grouped_rows

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


def linear_accumulator(rows: np.ndarray, params) -> np.ndarray | None:
    """(M, K) activations -> int32 (M, N) accumulator, or None (NumPy path)."""
    from ._numba_gemm import accumulate_u8s8

    plan = plan_of(params)
    if plan is None:
        return None
    x, shift = _as_u8(rows)
    x_zero_point, weight_zero_point = _zero_points(params)
    packed = plan.packed[0]
    x = _laid_out(x, packed, plan.columns)
    return accumulate_u8s8(x, packed, x_zero_point + shift, weight_zero_point, plan.method)


def _laid_out(x: np.ndarray, packed, columns: np.ndarray | None) -> np.ndarray:
    """(M, K) -> (M, padded_depth) uint8 in the packed depth layout, zeros past it."""
    padded = np.zeros((x.shape[0], packed.padded_depth), dtype=np.uint8)
    if columns is None:
        padded[:, :x.shape[1]] = x
    else:
        real = columns >= 0
        padded[:, :len(columns)][:, real] = x[:, columns[real]]
    return padded


def conv_accumulator(values: np.ndarray, params) -> np.ndarray | None:
    """(N, C, *spatial) activations -> int32 (N * positions, OC), or None (NumPy path)."""
    from ._numba_conv import accumulator_for, im2col_u8
    from ._numba_gemm import accumulate_u8s8

    plan = plan_of(params)
    if plan is None or len(params.kernel_size) > 2:
        return None
    if plan.depthwise:
        return accumulator_for(values, params) if values.dtype == np.uint8 else None
    values, shift = _as_u8(values)
    x_zero_point, weight_zero_point = _zero_points(params)
    values, padding = params.padded(values)
    if params.pair_saturation and params.padded_tap == PAD_ZERO and any(padding):
        return None         # oneDNN's AVX2 pairs read padded taps as raw 0: NumPy path
    if plan.columns is not None:
        return None         # pairs restart at every tap inside the row: NumPy path
    packed = plan.packed
    cols = im2col_u8(values, params.kernel_size, params.stride, padding, params.dilation,
                     params.groups, x_zero_point + shift, row_stride=packed[0].padded_depth)
    if cols is None:
        return None
    if params.groups == 1:
        return accumulate_u8s8(cols[0], packed[0], x_zero_point + shift,
                               weight_zero_point, plan.method)
    per_group = params.out_channels // params.groups
    acc = np.empty((cols.shape[1], params.out_channels), dtype=np.int32)
    grouped_zero_point = weight_zero_point.reshape(params.groups, -1) \
        if weight_zero_point.ndim else [weight_zero_point] * params.groups
    for group in range(params.groups):
        acc[:, group * per_group:(group + 1) * per_group] = accumulate_u8s8(
            cols[group], packed[group], x_zero_point + shift, grouped_zero_point[group],
            plan.method)
    return acc


def epilogue(params, acc: np.ndarray, steps: tuple) -> np.ndarray | None:
    """The requantized (M, N) result of ``steps`` (the layer's own, operands bound) on the
    accumulator, or None (NumPy ``requantize``: no compiled epilogue, or a ``tap`` observing)."""
    plan = plan_of(params)
    if plan is None or plan.epilogue is None or tapping() or acc.dtype != np.int32:
        return None
    operands = [step.operand for step in steps if hasattr(step, "operand")]
    return plan.epilogue.run(np.ascontiguousarray(acc), operands=operands or None)


# --- Quantized add / mul: a 256 x 256 table per code path ------------------------------------

_BINARY_TABLES: dict = {}
_BINARY_TABLES_KEPT = 256


def binary_tables(params, kernel, path_values) -> list[np.ndarray] | None:
    """One table per code path of ``kernel`` for 8-bit inputs: ``table[qa - lo, qb - lo]`` is
    what the path computes for the pair (``path_values(path, qa, qb)``, the op's own code on
    all 65,536 pairs). A path's arithmetic is elementwise with per-tensor constants, so the
    table gives every element what the path would: exact by construction. None: not 8-bit."""
    dtype = params.output_qparams.dtype
    if dtype.bits != 8 or params.a_qparams.dtype.bits != 8:
        return None
    key = (params.op, params.relu, params.a_qparams, params.b_qparams, params.output_qparams,
           params.engine.name, params.engine.isa, params.engine.aten_capability, kernel.name,
           tuple(path.name for path in kernel.paths))
    tables = _BINARY_TABLES.get(key)
    if tables is None:
        low = params.a_qparams.dtype.qmin
        codes = np.arange(low, low + 256, dtype=np.int64)
        qa = np.repeat(codes, 256)
        qb = np.tile(codes, 256)
        tables = [path_values(path, qa, qb).astype(dtype.numpy_dtype) for path in kernel.paths]
        if len(_BINARY_TABLES) >= _BINARY_TABLES_KEPT:
            _BINARY_TABLES.pop(next(iter(_BINARY_TABLES)))
        _BINARY_TABLES[key] = tables
    return tables


def binary_lookup(tables: list[np.ndarray], masks, qa: np.ndarray, qb: np.ndarray,
                  low: int) -> np.ndarray:
    """The op's integers: each element's pair looked up in the table of its code path."""
    pair = (qa.astype(np.intp) - low) << 8
    pair += np.asarray(qb, dtype=np.intp) - low
    if len(tables) == 1 or all(np.array_equal(tables[0], table) for table in tables[1:]):
        return tables[0][pair]
    out = np.empty(pair.shape, tables[0].dtype)
    for table, where in zip(tables, masks):
        out[where] = table[pair[where]]
    return out
