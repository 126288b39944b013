"""Tables and index maps for the ops that are not a GEMM, each derived from qexact's own op and
checked exhaustively (Interface A of the C export and the integer-only mode).

Every description is computed at export time from a prepared ``Net``, a node name and the values
of one run (``values = net.run_values(*example_inputs)``, which fixes every shape and memory
layout), by running the node's own op (``prepared.definition.run(prepared.params, inputs)``) on
probe inputs of the node's own shapes, strides and qparams -- never by re-deriving a formula:

- ``UnaryTable`` (relu, activation, clamp, add_scalar, mul_scalar): the op on its input shape
  filled with each value of the dtype; every position must give the same integer (SIMD body and
  scalar tail alike).
- ``BinaryTable`` (add, add_relu, mul, mul_relu): every one of the 65,536 pairs at a position of
  every code path the engine states for the call (its kernel's ``split``), every observation at
  every position checked against the table.
- ``Gather`` (flatten, reshape, transpose, permute, contiguous, identity, getitem, cat, upsample
  nearest, ...; and a unary op that moves elements, QNNPACK's clamp of a channels_last input):
  ``source``/``index`` read from probes that write the bits of each element's
  index (one run per bit, one per tensor input), the per-input value map (a requantizing cat)
  from the 256 constant fills, then checked on random inputs.
- ``WindowReduce`` (max_pool; adaptive_avg_pool, avg_pool, mean as ``"sum_table"``): windows
  from the op's parameters, checked by probes; averages as a table per divisor key over every
  reachable window sum, each sum realised by two different compositions of the taps.

All arrays are over the LOGICAL C-order layout of the values. A function returns None where its
kind does not describe the node; ``why_not(net, name, values)`` says why (which positions
differ, which op is not covered); ``describe_or_why`` gives both from one probing.

Extensions of Interface A (optional fields, defaults keep the stated meaning):
``BinaryTable.a_index``/``b_index`` (NumPy's broadcast of each operand, None: the output's shape),
``Gather.tables`` (a ``UnaryTable`` per source, None: a copy) and ``Gather.inputs`` (the value
each source reads, by name). A unary op whose engine rounds differently by position (ATen's SIMD
body and scalar tail) has no ``UnaryTable``; ``describe`` returns it as a ``Gather`` with one
source, and one table, per code path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..qparams import QuantizedArray

__all__ = ["BinaryTable", "Gather", "UnaryTable", "WindowReduce", "apply", "binary_table",
           "describe", "describe_or_why", "gather", "unary_table", "why_not", "window_reduce"]

UNARY_OPS = frozenset({"relu", "activation", "clamp", "add_scalar", "mul_scalar"})
BINARY_OPS = frozenset({"add", "add_relu", "mul", "mul_relu"})
GATHER_OPS = frozenset({"flatten", "reshape", "transpose", "permute", "contiguous", "identity",
                        "getitem", "cat", "stack", "upsample", "squeeze", "unsqueeze",
                        "pixel_shuffle", "channel_shuffle", "expand", "pad", "dynamic_slice"})
WINDOW_OPS = frozenset({"max_pool", "adaptive_avg_pool", "avg_pool", "mean"})


# --- The descriptions (Interface A) --------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class UnaryTable:
    """``out.flat[i] = table[in.flat[i] - in_min]`` (quantized in -> quantized out)."""

    table: np.ndarray  # (in_max - in_min + 1,), the output's integer dtype
    in_min: int        # 0 for quint8, -128 for qint8
    proof: str


@dataclass(frozen=True, eq=False)
class BinaryTable:
    """``out.flat[i] = table[a.flat[ai[i]] - a_min, b.flat[bi[i]] - b_min]``.

    ``a_index``/``b_index`` (an extension of Interface A): the flat C-order index into each
    operand per output element, or None where that operand has the output's shape (the
    identity). They are NumPy's broadcasting of the operand to the output shape, so
    ``np.broadcast_to(a, out_shape).reshape(-1)`` gives the same elements."""

    table: np.ndarray  # (na, nb), the output's integer dtype
    a_min: int
    b_min: int
    proof: str
    a_index: np.ndarray | None = None
    b_index: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Gather:
    """Pure data movement: ``out.flat[i] = inputs[source[i]].flat[index[i]]``, through
    ``tables[source[i]]`` where that is not None (extension: a requantizing cat maps each input's
    integers by a ``UnaryTable``; None everywhere, or ``tables`` None: plain copies).

    ``inputs`` (extension): the NAME of the value each source number reads, one per source. As a
    rule these are the node's tensor inputs in order; but a ``getitem`` of a ``chunk``/``split``
    tuple gathers from the tensor that node splits (the tuple is no tensor), and where one
    input's positions take different value maps (an engine's SIMD and scalar code paths: ATen's
    hardswish on a tensor with a scalar tail, the NHWC cat's SIMD and scalar channels) each map
    is a source of its own: ``inputs`` then names that input once per source (e.g.
    ``("x", "x")``), each with its own table. A consumer reads source ``k`` from the value named
    ``inputs[k]``."""

    source: np.ndarray  # (out.size,) int16
    index: np.ndarray   # (out.size,) int64
    proof: str
    tables: tuple | None = None
    inputs: tuple = ()


@dataclass(frozen=True, eq=False)
class WindowReduce:
    """Pooling: ``out.flat[i] = reduce over input.flat[windows[i, j]] for j < counts[i]``;
    ``"max"``: the largest; ``"sum_table"``: ``tables[divisor_key[i]][sum - sum_min]``."""

    windows: np.ndarray   # (out.size, W) int64, -1 past counts[i]
    counts: np.ndarray    # (out.size,) int32
    kind: str             # "max" | "sum_table"
    tables: dict
    divisor_key: np.ndarray | None
    sum_min: int
    proof: str


MAX_CLASSES = 16
"""At most this many value maps per gathered input (its positions' code paths)."""

_UNSEEN = np.iinfo(np.int64).min
"""A table entry no probe has produced yet (outputs are 8-bit integers)."""


class _Refused(Exception):
    """Why a description does not apply (``why_not`` returns the text)."""


# --- Probing the node's own op -------------------------------------------------------------------


def _ints(value) -> np.ndarray:
    return np.asarray(value.values if isinstance(value, QuantizedArray) else value)


def _like(template: np.ndarray, logical: np.ndarray) -> np.ndarray:
    """An array with ``template``'s dtype, shape and strides (the layout decides which kernel
    runs, and a view's strides whether it is contiguous) holding ``logical``'s values."""
    logical = np.asarray(logical).astype(template.dtype, copy=False)
    strides = template.strides
    if template.size > 0 and all(s > 0 or n == 1 for s, n in zip(strides, template.shape)):
        span = sum((n - 1) * abs(s) for n, s in zip(template.shape, strides)) + template.itemsize
        buffer = np.zeros(span, np.uint8)
        out = np.ndarray(template.shape, template.dtype, buffer=buffer,
                         strides=tuple(max(s, 0) for s in strides))
        out[...] = logical
        if np.array_equal(out, logical):  # not an overlapping view
            return out
    return np.array(logical, template.dtype)


@dataclass
class _Probe:
    """The node as a function of its tensor inputs' integers (logical order): ``names`` (what
    ``Gather.source`` numbers), ``templates`` (each input's value: dtype, strides, qparams),
    ``run(arrays) -> output integers`` (logical order), ``out`` (the example run's output)."""

    op: str
    names: tuple
    templates: list
    run: Callable
    out: np.ndarray
    runs: int = 0

    def __call__(self, arrays) -> np.ndarray:
        self.runs += 1
        return self.run(arrays)

    @property
    def inputs(self) -> list[np.ndarray]:
        return [np.ascontiguousarray(_ints(t)) for t in self.templates]


def _rewrap(template, array):
    if isinstance(template, QuantizedArray):
        return QuantizedArray(_like(template.values, array), template.qparams)
    return _like(np.asarray(template), array)


def _probe(net, name: str, values: dict) -> _Probe:
    from ..graph import Ref

    item = net.prepared_node(name)
    node = item.node
    out = values[name]
    if not isinstance(out, QuantizedArray):
        raise _Refused(f"node {name!r} [{node.op}]: its value is not one quantized tensor "
                       f"({type(out).__name__}); only quantized integer outputs have tables")
    args = [values[i.name] if isinstance(i, Ref) else i for i in node.inputs]
    positions = [k for k, a in enumerate(args) if isinstance(a, QuantizedArray)]
    if node.op == "getitem" and isinstance(args[0], (tuple, list)) and isinstance(
            node.inputs[0], Ref):
        producer = net.prepared_node(node.inputs[0].name)
        inner = [values[i.name] if isinstance(i, Ref) else i for i in producer.node.inputs]
        inner_positions = [k for k, a in enumerate(inner) if isinstance(a, QuantizedArray)]
        key = args[1]

        def run_item(arrays):
            local = list(inner)
            for k, array in zip(inner_positions, arrays):
                local[k] = _rewrap(inner[k], array)
            piece = producer.definition.run(producer.params, local)
            return _ints(item.definition.run(item.params, [piece, key]))

        return _Probe(node.op, tuple(producer.node.inputs[k].name for k in inner_positions),
                      [inner[k] for k in inner_positions], run_item, _ints(out))
    if not positions:
        raise _Refused(f"node {name!r} [{node.op}] has no quantized tensor input")

    def run(arrays):
        local = list(args)
        for k, array in zip(positions, arrays):
            local[k] = _rewrap(args[k], array)
        return _ints(item.definition.run(item.params, local))

    return _Probe(node.op, tuple(node.inputs[k].name for k in positions),
                  [args[k] for k in positions], run, _ints(out))


def _range(template) -> tuple[int, int]:
    dtype = template.qparams.dtype
    if dtype.bits != 8:
        raise _Refused(f"{dtype.name} inputs: tables cover 8-bit integers only")
    return int(dtype.qmin), int(dtype.qmax)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(name.encode()) + 12)  # fixed per node: reproducible proofs


def _where(positions: np.ndarray, shape) -> str:
    """Up to three positions (flat C order) as indices, and how many there are."""
    flat = np.flatnonzero(positions)
    shown = ", ".join(str(tuple(int(i) for i in np.unravel_index(int(f), shape)))
                      for f in flat[:3])
    return f"{flat.size:,} positions ({shown}{', ...' if flat.size > 3 else ''})"


# --- Unary ---------------------------------------------------------------------------------------


def _unary(net, name, values) -> UnaryTable:
    probe = _probe(net, name, values)
    if probe.op not in UNARY_OPS:
        raise _Refused(f"node {name!r} [{probe.op}] is not an elementwise unary op "
                       f"({sorted(UNARY_OPS)})")
    if len(probe.templates) != 1:
        raise _Refused(f"node {name!r}: {len(probe.templates)} tensor inputs")
    template = probe.templates[0]
    lo, hi = _range(template)
    shape = _ints(template).shape
    if probe.out.shape != shape:
        raise _Refused(f"node {name!r}: output shape {probe.out.shape} is not the input's {shape}")
    table = np.empty(hi - lo + 1, probe.out.dtype)
    for v in range(lo, hi + 1):
        got = probe([np.full(shape, v)])
        first = got.reshape(-1)[0]
        differ = got != first
        if differ.any():
            raise _Refused(f"node {name!r} [{probe.op}]: input value {v} gives {int(first)} at "
                           f"position 0 but another integer at {_where(differ, shape)}: the "
                           "output depends on the position (the engine's code paths differ)")
        table[v - lo] = first
    description = UnaryTable(table, lo, "")
    checked = _verify(probe, description, name, 3)
    return UnaryTable(table, lo, (
        f"exhaustive: {hi - lo + 1} input values at each of {math.prod(shape):,} positions "
        f"({(hi - lo + 1) * math.prod(shape):,} elements, {probe.runs} runs of the op), all "
        f"positions agree; applied to the example run and {checked - 1} random inputs: equal"))


def apply(description, arrays: list[np.ndarray], out_shape) -> np.ndarray:
    """A description applied in NumPy to logical input integers (int64, ``out_shape``): what
    the checks here compare with the op, and what an exporter checks its reading against.
    For a ``Gather``, ``arrays[k]`` is the value its source ``k`` reads
    (``description.inputs``)."""
    if isinstance(description, UnaryTable):
        return description.table[arrays[0].astype(np.int64) - description.in_min].reshape(
            out_shape)
    if isinstance(description, BinaryTable):
        a = np.broadcast_to(arrays[0], out_shape).reshape(-1).astype(np.int64)
        b = np.broadcast_to(arrays[1], out_shape).reshape(-1).astype(np.int64)
        return description.table[a - description.a_min, b - description.b_min].reshape(out_shape)
    if isinstance(description, Gather):  # arrays: the probe's inputs, source k reads inputs[k]
        out = np.empty(int(np.prod(out_shape)), np.int64)
        tables = description.tables or (None,) * len(description.inputs)
        for k, (array, table) in enumerate(zip(arrays, tables)):
            chosen = description.source == k
            read = array.reshape(-1)[description.index[chosen]].astype(np.int64)
            out[chosen] = read if table is None else table.table[read - table.in_min]
        return out.reshape(out_shape)
    x = arrays[0].reshape(-1).astype(np.int64)
    windows = description.windows
    valid = np.arange(windows.shape[1])[None, :] < description.counts[:, None]
    taken = x[np.where(valid, windows, 0)]
    if description.kind == "max":
        return np.where(valid, taken, np.iinfo(np.int64).min).max(axis=1).reshape(out_shape)
    sums = np.where(valid, taken, 0).sum(axis=1) - description.sum_min
    out = np.empty(sums.shape, np.int64)
    for key, table in description.tables.items():
        chosen = description.divisor_key == key
        out[chosen] = table[sums[chosen]]
    return out.reshape(out_shape)


def _verify(probe: _Probe, description, name: str, random_inputs: int,
            extra: tuple = ()) -> int:
    """The description against the op: on the example run, ``random_inputs`` random inputs
    (uniform over the dtype) and ``extra`` inputs; raises ``_Refused`` on a difference. Returns
    how many inputs were checked."""
    rng = _rng(name)
    cases = [probe.inputs]
    for _ in range(random_inputs):
        case = []
        for template in probe.templates:
            lo, hi = _range(template)
            case.append(rng.integers(lo, hi + 1, _ints(template).shape))
        cases.append(case)
    cases += list(extra)
    for number, case in enumerate(cases):
        expected = probe.out if number == 0 else probe(case)
        if isinstance(description, Gather):  # a source per (input, value map)
            case = [case[probe.names.index(n)] for n in description.inputs]
        got = apply(description, case, expected.shape)
        if not np.array_equal(got, expected.astype(np.int64)):
            raise _Refused(f"node {name!r} [{probe.op}]: the {type(description).__name__} "
                           f"differs from the op at {_where(got != expected, expected.shape)} "
                           f"of check input {number}")
    return len(cases)


# --- Binary --------------------------------------------------------------------------------------


def _binary_classes(net, name, probe: _Probe, out_shape) -> tuple[list[np.ndarray], list[str]]:
    """The position classes the engine states for this call: the masks of its kernel's code paths
    (``BinaryParams.choose_kernel(...).split``: SIMD body and scalar tail), one class if the
    params state none."""
    params = net.prepared_node(name).params
    a, b = (_ints(t) for t in probe.templates)
    try:
        kernel = params.choose_kernel(a.shape, b.shape)
        masks, _ = kernel.split(out_shape, a, b)
        names = [path.name for path in kernel.paths]
        masks = [np.broadcast_to(np.asarray(m, bool), out_shape).reshape(-1) for m in masks]
    except AttributeError:
        return [np.ones(math.prod(out_shape), bool)], ["(no classes stated)"]
    keep = [(m, n) for m, n in zip(masks, names) if m.any()]
    return [m for m, _ in keep], [n for _, n in keep]


def _shifts(residues: list[np.ndarray]) -> list[int]:
    """Shifts ``s`` such that for every class, ``{(j + s) mod 256 : j in its residues}`` over the
    shifts covers all 256 values (greedy)."""
    covered = [np.zeros(256, bool) for _ in residues]
    present = []
    for r in residues:
        mask = np.zeros(256, bool)
        mask[r] = True
        present.append(mask)
    shifts = []
    while not all(c.all() for c in covered):
        best, gain = 0, -1
        for s in range(256):
            total = sum(int((np.roll(p, s) & ~c).sum()) for p, c in zip(present, covered))
            if total > gain:
                best, gain = s, total
        shifts.append(best)
        covered = [c | np.roll(p, best) for p, c in zip(present, covered)]
    return shifts


def _ranks(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per position: its rank among the positions with its key, and how many have that key."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(keys.size, np.int64)
    rank[order] = np.arange(keys.size) - np.repeat(starts, counts)
    return rank, counts[inverse]


def _pair_schedule(a_shape, b_shape, out_shape, a_index, b_index, classes, na, nb):
    """Probe inputs ``(a, b)`` (offsets from each dtype's minimum, logical shapes) and the pair
    ``(x, y)`` they put at each output position, such that every class of positions sees every
    pair ``(x, y)`` at least once:

    - no broadcasting: each position takes pair number ``rank + t * |class|`` of its class in run
      ``t`` (``ceil(na nb / smallest class)`` runs), then again with the ranks reversed (each pair
      at two positions of each class);
    - one operand broadcast (a squeeze-excite ``x * gate``): the broadcast operand's elements take
      ``(j + u) mod n`` in round ``u``; within each (class, broadcast element) group the full
      operand's positions cycle through every value (``n * ceil(n / largest group)`` runs);
    - otherwise: the full cycle of one operand per shift of the other (``_shifts``)."""
    size = math.prod(out_shape)
    class_of = np.zeros(size, np.int64)
    for c, mask in enumerate(classes):
        class_of[mask] = c
    if tuple(a_shape) == tuple(out_shape) == tuple(b_shape):
        rank, count = _ranks(class_of)
        runs = -(-(na * nb) // int(count.min()))
        for order in (rank, count - 1 - rank):  # twice: each pair at two positions of a class
            for t in range(runs):
                k = (order + t * count) % (na * nb)
                x, y = k // nb, k % nb
                yield x.reshape(a_shape), y.reshape(b_shape), x, y
        return
    for full_is_a in (True, False):
        full_shape, part_index, n_full, n_part = ((a_shape, b_index, na, nb) if full_is_a
                                                  else (b_shape, a_index, nb, na))
        if tuple(full_shape) != tuple(out_shape):
            continue
        rank, count = _ranks(class_of * size + part_index)
        best = [int(count[mask].max()) for mask in classes]
        inner = max(-(-n_full // g) for g in best)
        part_size = int(part_index.max()) + 1
        part_shape = b_shape if full_is_a else a_shape
        for u in range(n_part):
            part = (np.arange(part_size) + u) % n_part
            p_at = part[part_index]
            for v in range(inner):
                f_at = (rank + v * count) % n_full
                if full_is_a:
                    yield f_at.reshape(a_shape), part.reshape(part_shape), f_at, p_at
                else:
                    yield part.reshape(part_shape), f_at.reshape(b_shape), p_at, f_at
        return
    a_base = np.arange(math.prod(a_shape)).reshape(a_shape)
    b_base = np.arange(math.prod(b_shape)).reshape(b_shape)
    for shift in _shifts([np.unique(b_index[c] % nb) for c in classes]):
        for r in range(na):
            yield (a_base + r) % na, (b_base + shift) % nb, (a_index + r) % na, \
                (b_index + shift) % nb


def _binary(net, name, values) -> BinaryTable:
    probe = _probe(net, name, values)
    if probe.op not in BINARY_OPS:
        raise _Refused(f"node {name!r} [{probe.op}] is not a binary elementwise op "
                       f"({sorted(BINARY_OPS)})")
    if len(probe.templates) != 2:
        raise _Refused(f"node {name!r}: {len(probe.templates)} tensor inputs")
    a_t, b_t = probe.templates
    (a_lo, a_hi), (b_lo, b_hi) = _range(a_t), _range(b_t)
    a_shape, b_shape = _ints(a_t).shape, _ints(b_t).shape
    out_shape = probe.out.shape
    if np.broadcast_shapes(a_shape, b_shape) != out_shape:
        raise _Refused(f"node {name!r}: output shape {out_shape} is not the inputs' broadcast")
    size = math.prod(out_shape)
    a_index = np.broadcast_to(np.arange(math.prod(a_shape)).reshape(a_shape),
                              out_shape).reshape(-1)
    b_index = np.broadcast_to(np.arange(math.prod(b_shape)).reshape(b_shape),
                              out_shape).reshape(-1)
    classes, class_names = _binary_classes(net, name, probe, out_shape)
    na, nb = a_hi - a_lo + 1, b_hi - b_lo + 1
    tables = [np.full((na, nb), _UNSEEN, np.int64) for _ in classes]
    observed = 0
    for a_case, b_case, x, y in _pair_schedule(a_shape, b_shape, out_shape, a_index, b_index,
                                               classes, na, nb):
        got = probe([a_case + a_lo, b_case + b_lo]).reshape(-1)
        observed += size
        for table, mask in zip(tables, classes):
            xs, ys, gs = x[mask], y[mask], got[mask].astype(np.int64)
            before = table[xs, ys]
            table[xs, ys] = gs
            clash = ((before != _UNSEEN) & (before != gs)) | (table[xs, ys] != gs)
            if clash.any():
                k = int(np.flatnonzero(clash)[0])
                raise _Refused(
                    f"node {name!r} [{probe.op}]: pair ({xs[k] + a_lo}, {ys[k] + b_lo}) gives "
                    "different integers at different positions of one code path: the output "
                    "depends on the position")
    for table, class_name in zip(tables, class_names):
        if (table == _UNSEEN).any():
            raise _Refused(f"node {name!r}: probes left {(table == _UNSEEN).sum()} pairs of "
                           f"{class_name} unseen")
    for table, mask, class_name in zip(tables[1:], classes[1:], class_names[1:]):
        differ = table != tables[0]
        if differ.any():
            x, y = (int(v) for v in np.argwhere(differ)[0])
            raise _Refused(
                f"node {name!r} [{probe.op}]: the engine's code paths differ: {class_names[0]} "
                f"(at {_where(classes[0], out_shape)}) and {class_name} (at "
                f"{_where(mask, out_shape)}) give {int(tables[0][x, y])} and {int(table[x, y])} "
                f"for the pair ({x + a_lo}, {y + b_lo}); {int(differ.sum()):,} of "
                f"{na * nb:,} pairs differ")
    table = tables[0].astype(probe.out.dtype)
    identity = (a_shape == out_shape, b_shape == out_shape)
    description = BinaryTable(table, a_lo, b_lo, "", None if identity[0] else a_index.copy(),
                              None if identity[1] else b_index.copy())
    checked = _verify(probe, description, name, 3)
    classes_text = "; ".join(f"{n}: {int(m.sum()):,} positions"
                             for n, m in zip(class_names, classes))
    proof = (f"exhaustive: all {na * nb:,} pairs at positions of every code path the engine "
             f"states ({classes_text}); {probe.runs - checked + 1} runs of the op, "
             f"{observed:,} (pair, position) observations, each equal to the table; "
             f"applied to the example run and {checked - 1} random inputs: equal")
    if not all(identity):
        proof += (f"; broadcasting a {a_shape} by b {b_shape} to {out_shape}: a_index/b_index "
                  "are NumPy's broadcast of each operand")
    return BinaryTable(table, a_lo, b_lo, proof, description.a_index, description.b_index)


# --- Gather --------------------------------------------------------------------------------------


def _gather(net, name, values, elementwise: bool = False) -> Gather:
    """``elementwise``: also try a unary op (QNNPACK's clamp reads a channels_last input in
    memory order into a contiguous output: a gather through a table)."""
    probe = _probe(net, name, values)
    if probe.op not in GATHER_OPS and not (elementwise and probe.op in UNARY_OPS):
        raise _Refused(f"node {name!r} [{probe.op}] is not a data-movement op "
                       f"({sorted(GATHER_OPS)})")
    templates = probe.templates
    ranges = [_range(t) for t in templates]
    shapes = [_ints(t).shape for t in templates]
    out_shape = probe.out.shape
    size = math.prod(out_shape)
    low = [np.full(s, lo) for s, (lo, _) in zip(shapes, ranges)]
    base = probe(low).reshape(-1)
    # which input: input k high, the others low
    source = np.full(size, -1, np.int64)
    for k, (s, (lo, hi)) in enumerate(zip(shapes, ranges)):
        case = list(low)
        case[k] = np.full(s, hi)
        changed = probe(case).reshape(-1) != base
        if (changed & (source >= 0)).any():
            raise _Refused(f"node {name!r} [{probe.op}]: an output element changes with more "
                           "than one input: not a gather")
        source[changed] = k
    if (source < 0).any():
        raise _Refused(f"node {name!r} [{probe.op}]: {_where(source < 0, out_shape)} follow no "
                       "input (a constant, padding, or a map that sends the lowest and highest "
                       "integers to one value): not a gather")
    # which element: one run per bit of the index, the elements whose bit is set high
    bits = max(1, int(max(math.prod(s) for s in shapes) - 1).bit_length())
    index = np.zeros(size, np.int64)
    for bit in range(bits):
        case = [np.where((np.arange(math.prod(s)).reshape(s) >> bit) & 1, hi, lo)
                for s, (lo, hi) in zip(shapes, ranges)]
        index |= (probe(case).reshape(-1) != base).astype(np.int64) << bit
    for k, s in enumerate(shapes):
        if (index[source == k] >= math.prod(s)).any():
            raise _Refused(f"node {name!r}: decoded an index past input {k}")
    # each input's value map: every input filled with each value of its dtype; the positions
    # of one input whose maps differ (an engine's SIMD and scalar code paths) become sources of
    # their own, reading the same input through their own table
    lo_all = min(lo for lo, _ in ranges)
    hi_all = max(hi for _, hi in ranges)
    fills = np.empty((hi_all - lo_all + 1, size), probe.out.dtype)
    for v in range(lo_all, hi_all + 1):
        fills[v - lo_all] = probe([np.full(s, min(max(v, lo), hi))
                                   for s, (lo, hi) in zip(shapes, ranges)]).reshape(-1)
    new_source = np.empty(size, np.int64)
    tables, names, split = [], [], []
    for k, (lo, hi) in enumerate(ranges):
        mine = np.flatnonzero(source == k)
        if not mine.size:
            continue
        maps, inverse = np.unique(fills[lo - lo_all:hi - lo_all + 1, mine], axis=1,
                                  return_inverse=True)
        if maps.shape[1] > MAX_CLASSES:
            raise _Refused(f"node {name!r} [{probe.op}]: input {k}'s value map takes "
                           f"{maps.shape[1]} forms over its positions (more than {MAX_CLASSES})")
        if maps.shape[1] > 1:
            split.append(f"input {k}: {maps.shape[1]} maps at " + ", ".join(
                _where(np.isin(np.arange(size), mine[inverse.reshape(-1) == j]), out_shape)
                for j in range(maps.shape[1])))
        for j in range(maps.shape[1]):
            new_source[mine[inverse.reshape(-1) == j]] = len(tables)
            table = maps[:, j]
            identity = np.array_equal(table.astype(np.int64), np.arange(lo, hi + 1))
            tables.append(None if identity else UnaryTable(table.copy(), lo, ""))
            names.append(probe.names[k])
    if len(tables) > np.iinfo(np.int16).max:
        raise _Refused(f"node {name!r}: too many sources")
    plain = all(t is None for t in tables)
    description = Gather(new_source.astype(np.int16), index, "", None if plain else tuple(tables),
                         tuple(names))
    checked = _verify(probe, description, name, 3)
    mapped = [k for k, t in enumerate(tables) if t is not None]
    proof = (f"probed with {probe.runs} runs of the op: {len(shapes) + 1} for the source, "
             f"{bits} for the index bits, {hi_all - lo_all + 1} constant fills for each input's "
             f"value map ({'identity' if not mapped else f'a table for sources {mapped}'}; "
             + ("; ".join(split) + " (sources of their own)" if split else
                "every output position of an input agrees")
             + f"); {size:,} output elements; applied to the example run and {checked - 1} "
             "random inputs: equal")
    tables = [None if t is None else UnaryTable(t.table, t.in_min, proof) for t in tables]
    return Gather(description.source, index, proof, None if plain else tuple(tables),
                  tuple(names))


# --- Window reductions ---------------------------------------------------------------------------


def _axis_taps(net, name, probe: _Probe) -> tuple[list, list, str]:
    """Per pooled dim: for each output position, the input positions of its taps (-1: none),
    from the op's parameters; and the reduction kind."""
    from ..ops._window import adaptive_windows, pool_window_starts

    item = net.prepared_node(name)
    params, op = item.params, probe.op
    x = _ints(probe.templates[0])
    if op == "mean":
        dims = getattr(params, "dim", None)
        ndim = x.ndim
        reduced = tuple(range(ndim)) if dims is None else tuple(sorted(int(d) % ndim
                                                                       for d in dims))
        return reduced, None, "mean"
    if op in ("max_pool", "avg_pool"):
        spatial = len(params.kernel_size)
        taps = []
        for d in range(spatial):
            size = x.shape[x.ndim - spatial + d]
            starts = pool_window_starts(size, params.kernel_size[d], params.stride[d],
                                        params.padding[d], params.dilation[d], params.ceil_mode)
            t = starts[:, None] + np.arange(params.kernel_size[d])[None, :] * params.dilation[d]
            taps.append(np.where((t >= 0) & (t < size), t, -1))
        return taps, spatial, "max" if params.kind == "max" else "avg"
    spatial = len(params.output_size)
    taps = []
    for d, out in enumerate(params.output_size):
        size = x.shape[x.ndim - spatial + d]
        start, end = adaptive_windows(size, size if out is None else out)
        width = int((end - start).max())
        t = start[:, None] + np.arange(width)[None, :]
        taps.append(np.where(t < end[:, None], t, -1))
    return taps, spatial, "avg"


def _windows(net, name, probe: _Probe):
    """``(windows, counts, kind)`` over the logical layout, from the op's parameters."""
    x = _ints(probe.templates[0])
    out_shape = probe.out.shape
    flat = np.arange(x.size).reshape(x.shape)
    taps, spatial, kind = _axis_taps(net, name, probe)
    if kind == "mean":
        reduced = taps
        kept = [d for d in range(x.ndim) if d not in reduced]
        moved = np.transpose(flat, kept + list(reduced)).reshape(
            [x.shape[d] for d in kept] + [-1])
        windows = moved.reshape(-1, moved.shape[-1])
        if windows.shape[0] != probe.out.size:
            raise _Refused(f"node {name!r}: mean windows do not match the output")
        return windows.astype(np.int64), np.full(windows.shape[0], windows.shape[1],
                                                 np.int32), "avg"
    lead = x.shape[:x.ndim - spatial]
    grid = [t.shape[0] for t in taps]
    if tuple(lead) + tuple(grid) != tuple(out_shape):
        raise _Refused(f"node {name!r}: windows of shape {tuple(lead) + tuple(grid)} do not "
                       f"match the output {out_shape}")
    # every combination of taps per dim, outermost dim first
    strides = [math.prod(x.shape[x.ndim - spatial + d + 1:]) for d in range(spatial)]
    combined = np.zeros([1] * (2 * spatial), np.int64)
    valid = np.ones([1] * (2 * spatial), bool)
    for d, t in enumerate(taps):
        shape = [1] * (2 * spatial)
        shape[d], shape[spatial + d] = t.shape
        tt = t.reshape(shape)
        combined = combined + np.where(tt >= 0, tt, 0) * strides[d]
        valid = valid & (tt >= 0)
    combined = np.broadcast_to(combined, grid + [t.shape[1] for t in taps]).reshape(
        math.prod(grid), -1)
    valid = np.broadcast_to(valid, grid + [t.shape[1] for t in taps]).reshape(math.prod(grid), -1)
    offsets = np.arange(math.prod(lead)) * math.prod(x.shape[x.ndim - spatial:])
    order = np.argsort(~valid, axis=1, kind="stable")  # valid taps first, in tap order
    packed = np.take_along_axis(np.where(valid, combined, -1), order, axis=1)
    windows = np.where(packed[None] >= 0, packed[None] + offsets[:, None, None], -1)
    counts = np.broadcast_to(valid.sum(axis=1)[None], (len(offsets), valid.shape[0]))
    return (windows.reshape(-1, windows.shape[-1]).astype(np.int64),
            counts.reshape(-1).astype(np.int32), kind)


def _max_reduce(net, name, probe: _Probe) -> WindowReduce:
    windows, counts, kind = _windows(net, name, probe)
    description = WindowReduce(windows, counts, "max", {}, None, 0, "")
    x = _ints(probe.templates[0])
    lo, hi = _range(probe.templates[0])
    extent = [int(c) for c in _extents(windows, counts, x.shape)]
    # one high element per run at every position spaced a window's extent apart in each dim:
    # the outputs that rise are exactly those whose described window holds it
    extra = []
    grid = np.indices(x.shape)
    for phase in np.ndindex(*extent):
        hit = np.ones(x.shape, bool)
        for d, (p, e) in enumerate(zip(phase, extent)):
            hit &= grid[d] % e == p
        extra.append([np.where(hit, hi, lo)])
    checked = _verify(probe, description, name, 4, tuple(extra))
    return WindowReduce(windows, counts, "max", {}, None, 0, (
        f"windows from the op's parameters ({windows.shape[1]} taps at most, padding skipped); "
        f"{probe.runs} runs of the op: {len(extra)} one-hot probes (one high element in every "
        f"block of {'x'.join(map(str, extent))} input positions: each output rises exactly "
        f"where its window holds one), the example run and 4 random inputs ({checked} inputs, "
        f"{checked * probe.out.size:,} output elements): equal"))


def _extents(windows, counts, shape) -> list[int]:
    """Per input dim, one more than the largest distance between two taps of a window (so that
    elements that far apart never share a window)."""
    ext = []
    valid = np.arange(windows.shape[1])[None, :] < counts[:, None]
    coords = np.unravel_index(np.where(valid, windows, 0), shape)
    for c in coords:
        span = np.where(valid, c, np.iinfo(np.int64).min).max(axis=1) - np.where(
            valid, c, np.iinfo(np.int64).max).min(axis=1)
        ext.append(int(span.max()) + 1 if span.size else 1)
    return ext


def _average_kernel(net, name, probe: _Probe):
    """The averaging kernel the engine states for this call (``AverageKernel``: the window's
    exact integer sum, then each code path's steps with per-element constants), and the number
    of pooled trailing dims; ``_Refused`` for a kernel that sums in float32 (ATen's reference
    mean: dequantize, SumKernel's cascade, quantize), whose output is no function of the sum."""
    from ..ops.pooling import uses_global_mean

    item = net.prepared_node(name)
    template = probe.templates[0]
    x = _ints(template)
    out_shape = probe.out.shape
    if probe.op == "avg_pool":
        kernel, spatial = item.params.choose_kernel(template, x), len(item.params.kernel_size)
    elif probe.op == "adaptive_avg_pool" and item.params.mean is not None and \
            uses_global_mean(x, item.params):  # a 3-D pool to 1x1x1: ATen runs mean
        from ..ops.reduce import mean_kernel

        kernel, spatial = mean_kernel(template, item.params.mean), 0
    elif probe.op == "adaptive_avg_pool":
        spatial = len(item.params.output_size)
        kernel = item.params.engine.kernel("adaptive_avg_pool", x.shape[-spatial:],
                                           out_shape[-spatial:], template.qparams.dtype, x)
    else:
        from ..ops.reduce import mean_kernel

        kernel, spatial = mean_kernel(template, item.params), 0
    if not hasattr(kernel, "paths") or getattr(kernel, "runs_in_float32", False):
        raise _Refused(f"node {name!r} [{probe.op}]: the engine runs {kernel.name}, a float32 "
                       "sum whose order decides the result: the output is not a function of "
                       "(window sum, divisor key)")
    return kernel, spatial


def _average_classes(net, name, probe: _Probe, counts) -> tuple[np.ndarray, str]:
    """Candidate keys per output element from the engine's statement: the code path that
    computes it (the kernel's ``split``: SIMD channels or scalar ones), its number of taps and
    its padded window size (the divisor follows from these); equal tables merge afterwards."""
    item = net.prepared_node(name)
    x = _ints(probe.templates[0])
    out_shape = probe.out.shape
    kernel, spatial = _average_kernel(net, name, probe)
    path = np.zeros(probe.out.size, np.int64)
    if spatial and len(kernel.paths) > 1:
        masks = kernel.split(kernel.kernel_input(x), out_shape, spatial)
        for k, mask in enumerate(masks):
            path[np.broadcast_to(mask, out_shape).reshape(-1)] = k
    padded = np.zeros(probe.out.size, np.int64)
    if probe.op == "avg_pool":  # the padded window's taps (count_include_pad, QNNPACK's bias)
        from ..ops._window import pool_window_starts

        p = item.params
        area = np.ones((), np.int64)
        for d in range(spatial):
            size = x.shape[x.ndim - spatial + d]
            starts = pool_window_starts(size, p.kernel_size[d], p.stride[d], p.padding[d], 1,
                                        p.ceil_mode)
            area = np.multiply.outer(area, np.minimum(starts + p.kernel_size[d],
                                                      size + p.padding[d]) - starts)
        padded = np.broadcast_to(area, out_shape).reshape(-1)
    _, inverse = np.unique(np.stack([path, counts.astype(np.int64), padded]), axis=1,
                           return_inverse=True)
    statement = (f"{kernel.name}: exact integer window sums, then {len(kernel.paths)} code "
                 f"path(s) with per-element constants ({kernel.divisor_rule})")
    return inverse.reshape(-1), statement


def _compose(total: np.ndarray, n: int, lo: int, hi: int, spread: bool,
             rng: np.random.Generator) -> np.ndarray:
    """Tap values (rows, n) in [lo, hi] summing to ``total`` per row: ``spread`` evenly (random
    order), else concentrated (taps at hi, one remainder, the rest at lo)."""
    rows = total.shape[0]
    extra = total - n * lo  # to distribute over taps, each at most hi - lo
    if spread:
        base, rest = np.divmod(extra, n)
        taps = np.repeat(base[:, None], n, axis=1)
        taps += np.arange(n)[None, :] < rest[:, None]
        taps = rng.permuted(taps, axis=1)
    else:
        width = hi - lo
        full = np.minimum(extra // max(width, 1), n)
        taps = np.where(np.arange(n)[None, :] < full[:, None], width, 0)
        remainder = extra - full * width
        at = np.minimum(full, n - 1)
        taps[np.arange(rows), at] += np.where(full < n, remainder, 0)
    return taps + lo


def _sum_reduce(net, name, probe: _Probe) -> WindowReduce:
    windows, counts, _ = _windows(net, name, probe)
    x = _ints(probe.templates[0])
    lo, hi = _range(probe.templates[0])
    classes, statement = _average_classes(net, name, probe, counts)
    if (np.bincount(windows[windows >= 0], minlength=x.size) > 1).any():
        raise _Refused(f"node {name!r} [{probe.op}]: windows overlap; the sum tables are probed "
                       "with one target sum per window and run, which needs disjoint windows")
    rng = _rng(name)
    sum_min = int(counts.max()) * lo
    n_classes = int(classes.max()) + 1
    tables: list[np.ndarray] = []
    spans = []
    for c in range(n_classes):
        n = int(counts[classes == c][0])
        spans.append((n * lo, n * hi))
        tables.append(np.full(n * hi - sum_min + 1, _UNSEEN, np.int64))
    members = [np.flatnonzero(classes == c) for c in range(n_classes)]
    if any(np.unique(counts[m]).size != 1 for m in members):
        raise _Refused(f"node {name!r}: a class of windows mixes tap counts")
    runs_needed = max(-(-(s_hi - s_lo + 1) // m.size) for (s_lo, s_hi), m in zip(spans, members))
    observed = 0
    for spread in (False, True):
        for r in range(runs_needed):
            case = np.full(x.size, lo, np.int64)
            targets = np.empty(probe.out.size, np.int64)
            for (s_lo, s_hi), m in zip(spans, members):
                targets[m] = s_lo + (r * m.size + np.arange(m.size)) % (s_hi - s_lo + 1)
            for (s_lo, s_hi), m in zip(spans, members):
                n = int(counts[m[0]])
                taps = _compose(targets[m], n, lo, hi, spread, rng)
                case[windows[m, :n].reshape(-1)] = taps.reshape(-1)
            got = probe([case.reshape(x.shape)]).reshape(-1).astype(np.int64)
            observed += got.size
            for c, m in enumerate(members):
                at = targets[m] - sum_min
                before = tables[c][at]
                tables[c][at] = got[m]
                clash = ((before != _UNSEEN) & (before != got[m])) | (tables[c][at] != got[m])
                if clash.any():
                    k = int(np.flatnonzero(clash)[0])
                    raise _Refused(
                        f"node {name!r} [{probe.op}]: window sum {int(targets[m][k])} gives "
                        f"different integers for two compositions or positions of one key: the "
                        "output is not a function of (window sum, divisor key)")
    # merge equal tables into keys
    keys: dict[bytes, int] = {}
    merged: dict[int, np.ndarray] = {}
    key_of_class = []
    for c, table in enumerate(tables):
        s_lo, s_hi = spans[c]
        reach = table[s_lo - sum_min:]
        if (reach == _UNSEEN).any():
            raise _Refused(f"node {name!r}: probes left sums of class {c} unseen")
        table = np.where(table == _UNSEEN, 0, table).astype(probe.out.dtype)  # 0: unreachable
        k = keys.setdefault(table.tobytes(), len(keys))
        merged[k] = table
        key_of_class.append(k)
    divisor_key = np.asarray(key_of_class, np.int32)[classes]
    description = WindowReduce(windows, counts, "sum_table", merged, divisor_key, sum_min, "")
    rng_extreme = [[np.full(x.shape, lo)], [np.full(x.shape, hi)]]
    checked = _verify(probe, description, name, 4, tuple(rng_extreme))
    proof = (f"engine statement: {statement}; windows from the op's parameters, disjoint; "
             f"{n_classes} candidate classes (code path, taps, padded size) merged into "
             f"{len(merged)} keys; every "
             f"reachable window sum of every class, each realised by two compositions "
             f"(concentrated, spread), {2 * runs_needed} runs, {observed:,} observations, all "
             f"consistent: the output is a function of (window sum, key); applied to the "
             f"example run, 4 random inputs and the all-low and all-high inputs ({checked} "
             f"inputs): equal")
    return WindowReduce(windows, counts, "sum_table", merged, divisor_key, sum_min, proof)


def _window(net, name, values) -> WindowReduce:
    probe = _probe(net, name, values)
    if probe.op not in WINDOW_OPS:
        raise _Refused(f"node {name!r} [{probe.op}] is not a pooling op ({sorted(WINDOW_OPS)})")
    if len(probe.templates) != 1:
        raise _Refused(f"node {name!r}: {len(probe.templates)} tensor inputs")
    _range(probe.templates[0])
    params = net.prepared_node(name).params
    if getattr(params, "inexact", ""):
        raise _Refused(f"node {name!r}: the engine's kernel is not reproduced exactly "
                       f"({params.inexact})")
    if probe.op == "max_pool":
        return _max_reduce(net, name, probe)
    return _sum_reduce(net, name, probe)


# --- Public API ----------------------------------------------------------------------------------


def _attempt(function, net, name, values):
    try:
        return function(net, name, values), ""
    except _Refused as refused:
        return None, str(refused)


def unary_table(net, name: str, values: dict) -> UnaryTable | None:
    """The node as a table of its input integer (None: not expressible as one)."""
    return _attempt(_unary, net, name, values)[0]


def binary_table(net, name: str, values: dict) -> BinaryTable | None:
    """The node as a table of its two input integers (None: not expressible as one)."""
    return _attempt(_binary, net, name, values)[0]


def gather(net, name: str, values: dict) -> Gather | None:
    """The node as pure data movement, with a value map per input (None: it is not)."""
    return _attempt(_gather, net, name, values)[0]


def window_reduce(net, name: str, values: dict) -> WindowReduce | None:
    """The node as a max or a table of window sums (None: it is not)."""
    return _attempt(_window, net, name, values)[0]


def _describe(net, name, values):
    op = net.prepared_node(name).node.op
    if op in UNARY_OPS:
        found, reason = _attempt(_unary, net, name, values)
        if found is None:
            moved, why = _attempt(lambda *a: _gather(*a, elementwise=True), net, name, values)
            if moved is not None:
                return moved, ""
            reason += f"; as a gather through a table: {why}"
        return found, reason
    if op in BINARY_OPS:
        return _attempt(_binary, net, name, values)
    if op in GATHER_OPS:
        return _attempt(_gather, net, name, values)
    if op in WINDOW_OPS:
        return _attempt(_window, net, name, values)
    return None, (f"node {name!r} [{op}]: no table kind covers this op (GEMM layers, quantize, "
                  "dequantize and tuple-valued nodes such as chunk are exported otherwise)")


def describe(net, name: str, values: dict):
    """Whichever description applies to node ``name`` (None: a GEMM layer, quantize/dequantize,
    a tuple-valued node, or refused: ``why_not`` says why)."""
    return _describe(net, name, values)[0]


def why_not(net, name: str, values: dict) -> str:
    """Why ``describe`` returns None for this node ("" if it does not)."""
    return _describe(net, name, values)[1]


def describe_or_why(net, name: str, values: dict):
    """``(describe(...), why_not(...))`` from one probing (each probes the op afresh)."""
    return _describe(net, name, values)
