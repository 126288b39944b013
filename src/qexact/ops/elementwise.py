"""Quantized elementwise binary ops: add, add_relu, mul, mul_relu (add_scalar / mul_scalar are in
``qexact.ops.scalar``, cat in ``qexact.ops.concat``).

The op validates, broadcasts, and runs the kernel its engine states for the call (the ``"binary"``
family of ``Engine.kernels``: a ``BinaryKernel``, engines/aten_elementwise.py): the kernel splits
the output's elements between its code paths (ATen's SIMD body and scalar tail over
TensorIterator's walk, or another engine's), and each path's steps compute its elements:

    d_a = a_steps(q_a),  d_b = b_steps(q_b),  c = combine(d_a, d_b),  q = output_steps(c)

ATen's add dequantizes (``Vectorized``'s or ``dequantize_val``'s pipeline), sums in float32 and
quantizes (``QuantizeAvx2`` or ``quantize_val``); its mul requantizes the integer product of the
centered inputs (engines/aten_elementwise.py states both). The output comes out in the memory
format the kernel allocates (``a.suggest_memory_format()`` for ATen's, ``binary_walk``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..engines.aten import default_num_threads
from ..engines.base import Engine
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..trace import apply_steps, observing, record
from ._registry import graph_op, observed_stages
from .quantize import require_quantized

__all__ = ["BinaryParams", "binary", "prepare_binary"]


# --- add / mul ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BinaryParams:
    """A quantized add/mul prepared for one engine.

    ``op``: "add" or "mul"; ``relu``: fused ReLU; ``a_qparams``, ``b_qparams``,
    ``output_qparams``; ``engine``: the ``Engine`` whose ``"binary"`` kernel runs it (chosen per
    call: the choice may depend on the input shapes); ``num_threads``: PyTorch's intra-op threads
    (large tensors are cut into one chunk per thread).
    """

    op: str
    relu: bool
    a_qparams: QParams
    b_qparams: QParams
    output_qparams: QParams
    engine: Engine
    num_threads: int

    def choose_kernel(self, a_shape, b_shape):
        """The kernel description the engine runs for inputs of these shapes
        (``Engine.kernel("binary", ...)``; engines/aten_elementwise.py ``BinaryKernel``)."""
        return self.engine.kernel("binary", self.op, self.relu, self.a_qparams, self.b_qparams,
                                  self.output_qparams, tuple(a_shape), tuple(b_shape),
                                  self.num_threads)


def prepare_binary(op: str, a_qparams: QParams, b_qparams: QParams, output_qparams: QParams,
                   relu: bool = False, *, engine, num_threads: int | None = None,
                   isa: str | None = None) -> BinaryParams:
    """Validate and prepare ``quantized::add``/``add_relu``/``mul``/``mul_relu`` for ``engine``
    (a name or an ``Engine``)."""
    from ..engines import get_engine

    if op not in ("add", "mul"):
        raise UnsupportedError(f"binary op {op!r} is not supported; supported: ['add', 'mul']")
    for name, qparams in (("a", a_qparams), ("b", b_qparams), ("output", output_qparams)):
        if qparams.is_per_channel:
            raise QuantParamError(f"quantized {op}: {name} must be per-tensor quantized")
    if not a_qparams.dtype == b_qparams.dtype == output_qparams.dtype:
        raise QuantParamError(f"quantized {op}: dtypes differ ({a_qparams.dtype}, "
                              f"{b_qparams.dtype}, {output_qparams.dtype})")
    if a_qparams.dtype.bits != 8 and not (op == "add" and a_qparams.dtype.bits == 32):
        raise UnsupportedError(f"quantized {op} on {a_qparams.dtype} is not supported (8-bit, "
                               "and add on qint32)")
    return BinaryParams(op, bool(relu), a_qparams, b_qparams, output_qparams,
                        get_engine(engine, isa), int(num_threads or default_num_threads()))


def binary(a: QuantizedArray, b: QuantizedArray, p: BinaryParams) -> QuantizedArray:
    """Quantized ``a + b`` or ``a * b`` (broadcasting) with ``p.output_qparams``: the engine's
    kernel (``BinaryParams.choose_kernel``) splits the elements between its code paths, and
    each path applies its steps to its elements (each input's steps, the combination, the
    output steps); explain observes every one of them."""
    try:
        out_shape = np.broadcast_shapes(a.values.shape, b.values.shape)
    except ValueError:
        raise ShapeError(f"quantized {p.op}: shapes {a.values.shape} and {b.values.shape} "
                         "do not broadcast") from None
    kernel = p.choose_kernel(a.values.shape, b.values.shape)
    qa = np.broadcast_to(a.values, out_shape)
    qb = np.broadcast_to(b.values, out_shape)
    tables = not observing() and _tabulable(qa, qb)
    dtype = p.output_qparams.dtype
    path_tables = [_path_table(path, qa.dtype, qb.dtype, dtype.numpy_dtype)
                   if tables and _value_functions(path) else None for path in kernel.paths]
    if all(table is not None for table in path_tables):
        # every path gives the same table: which path computes an element does not matter
        output = kernel.layout(out_shape, a.values, b.values)
        if output is not None and all(np.array_equal(path_tables[0], table)
                                      for table in path_tables[1:]):
            return QuantizedArray(output(path_tables[0][_pair_index(qa, qb)]), p.output_qparams)
    masks, output = kernel.split(out_shape, a.values, b.values)
    out = np.empty(out_shape, np.int64)
    for path, where, table in zip(kernel.paths, masks, path_tables):
        if not where.any():
            continue
        if table is not None:
            out[where] = table[_pair_index(qa[where], qb[where])]
            continue
        record(f"{p.op}: path", "which code path of the kernel computes this element", None,
               where=where, kernel=kernel.name, path=path.name)
        da = apply_steps(qa[where].astype(np.int64), path.a_steps, where=where,
                         prefix=f"{p.op} a: ")
        db = apply_steps(qb[where].astype(np.int64), path.b_steps, where=where,
                         prefix=f"{p.op} b: ")
        combined = record(f"{p.op}: {path.combine.label}", path.combine.formula,
                          path.combine.apply(da, db), where=where, a=da, b=db)
        out[where] = apply_steps(combined, path.output_steps, where=where, prefix=f"{p.op}: ")
    return QuantizedArray(output(out.astype(dtype.numpy_dtype)), p.output_qparams)


TABLE_MIN_ELEMENTS = 1 << 15
"""From this many elements, a path of an 8-bit add/mul runs as a table of its 65,536 results."""


def _tabulable(qa: np.ndarray, qb: np.ndarray) -> bool:
    return (qa.dtype in (np.uint8, np.int8) and qb.dtype in (np.uint8, np.int8)
            and qa.size >= TABLE_MIN_ELEMENTS)


def _value_functions(path) -> bool:
    """Whether every step of ``path`` is a function of the value alone: no array field with
    more than one element (per-channel constants, bound operands) that would tie a result to
    its position."""
    steps = tuple(path.a_steps) + tuple(path.b_steps) + tuple(path.output_steps) + (path.combine,)
    for step in steps:
        if not dataclasses.is_dataclass(step):
            return False
        for item in dataclasses.fields(step):
            value = getattr(step, item.name)
            if isinstance(value, np.ndarray) and value.size > 1:
                return False
    return True


def _all_codes(dtype) -> np.ndarray:
    limits = np.iinfo(dtype)
    return np.arange(limits.min, limits.max + 1, dtype=np.int64)


def _path_table(path, a_dtype, b_dtype, out_dtype) -> np.ndarray:
    """The path's output for every pair of codes, flat over ``_pair_index``: the same steps on
    the same values (every step is elementwise and a function of the value, ``_value_functions``;
    NumPy's float32 operations and ``fma_float32`` give each element the same result wherever
    it sits), so ``table[index(q_a, q_b)]`` is what the steps give for ``(q_a, q_b)``."""
    # A kernel (and its paths) is built per call: the key is what the path computes.
    key = (_fingerprint((path.a_steps, path.b_steps, path.combine, path.output_steps)),
           np.dtype(a_dtype).str, np.dtype(b_dtype).str, np.dtype(out_dtype).str)
    cached = _TABLES.get(key)
    if cached is not None:
        return cached
    a_codes, b_codes = _all_codes(a_dtype), _all_codes(b_dtype)
    qa = np.repeat(a_codes, b_codes.size)
    qb = np.tile(b_codes, a_codes.size)
    da = apply_steps(qa, path.a_steps)
    db = apply_steps(qb, path.b_steps)
    with np.errstate(over="ignore", invalid="ignore"):
        combined = path.combine.apply(da, db)
    table = np.asarray(apply_steps(combined, path.output_steps)).astype(out_dtype)  # in range
    if len(_TABLES) > 64:
        _TABLES.clear()
    _TABLES[key] = table
    return table


_TABLES: dict = {}


def _fingerprint(value):
    """A hashable value equal for equal steps: each dataclass's type and fields, arrays by
    dtype, shape and bytes (not by their printed form, which print options change)."""
    if isinstance(value, (tuple, list)):
        return tuple(_fingerprint(item) for item in value)
    if isinstance(value, np.ndarray) or isinstance(value, np.generic):
        array = np.asarray(value)
        return ("array", array.dtype.str, array.shape, array.tobytes())
    if dataclasses.is_dataclass(value):
        return (type(value).__qualname__,) + tuple(
            (item.name, _fingerprint(getattr(value, item.name)))
            for item in dataclasses.fields(value))
    return value


def _pair_index(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """``(q_a - min_a) * 256 + (q_b - min_b)`` for 8-bit codes (uint8 or int8: the byte with its
    top bit flipped for int8, which is ``q + 128``)."""
    index = qa.view(np.uint8).astype(np.uint16) << 8
    low = qb.view(np.uint8)
    if qa.dtype == np.int8:
        index ^= np.uint16(0x8000)
    index |= (low ^ np.uint8(0x80)) if qb.dtype == np.int8 else low
    return index


@dataclass(frozen=True)
class FloatBinaryParams:
    """``a + b`` / ``a * b`` on float32 tensors (a PT2E model's ops the quantizer left in
    float32): one IEEE operation per element in every kernel (ATen's BinaryOpsKernel.cpp,
    Inductor's generated loops), then the fused ReLU's ``max(v, 0)``."""

    op: str
    relu: bool


def binary_float(a: np.ndarray, b: np.ndarray, p: FloatBinaryParams) -> np.ndarray:
    """``f32(a + b)`` or ``f32(a * b)`` (broadcasting), then ReLU if ``p.relu``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.float32 or b.dtype != np.float32:
        raise QuantParamError(f"float {p.op} takes float32 arrays, got {a.dtype} and {b.dtype}")
    sign = "+" if p.op == "add" else "*"
    out = record(f"{p.op} (float32)", f"y = f32(a {sign} b)", a + b if p.op == "add" else a * b,
                 a=a, b=b)
    if p.relu:
        out = record("relu (float)", "y = max(y, 0)", np.maximum(out, np.float32(0)), y=out)
    return out


def _run_binary(params, inputs):
    if isinstance(params, FloatBinaryParams):
        return binary_float(inputs[0], inputs[1], params)
    return binary(inputs[0], inputs[1], params)


def _binary_prepare(op: str, relu: bool):
    def prepare(node, input_qparams, engine):
        if all(qparams is None for qparams in input_qparams[:2]):
            return FloatBinaryParams(op, relu), None
        a_qparams = require_quantized(node, input_qparams, 0)
        b_qparams = require_quantized(node, input_qparams, 1)
        output = QParams.per_tensor(node.attrs["output_scale"], node.attrs["output_zero_point"],
                                    a_qparams.dtype)
        params = prepare_binary(op, a_qparams, b_qparams, output, relu=relu, engine=engine,
                                num_threads=node.attrs.get("num_threads"))
        return params, output

    return staticmethod(prepare)


def _binary_class(op: str, relu: bool):
    class BinaryOp:
        prepare = _binary_prepare(op, relu)

        run = staticmethod(_run_binary)

        @staticmethod
        def explain(params, inputs, result, index):
            out_shape = np.shape(getattr(result, "values", result))
            upstream = []
            for position in (0, 1):
                shape = np.shape(getattr(inputs[position], "values", inputs[position]))
                offset = len(out_shape) - len(shape)
                upstream.append((position, tuple(0 if size == 1 else index[offset + d]
                                                 for d, size in enumerate(shape))))
            return observed_stages(_run_binary, params, inputs, result, index), upstream

    return BinaryOp


for _op, _relu in (("add", False), ("add", True), ("mul", False), ("mul", True)):
    _name = _op + ("_relu" if _relu else "")
    graph_op(_name, f"quantized::{_name} (QFunctional.{_name}), or {_op} of float32 tensors"
             )(_binary_class(_op, _relu))


