"""C for the nodes that are not GEMM layers: quantize/dequantize (their Step pipelines), and
every other op through ``qexact.export.tables.describe`` (tables, gathers, window reductions).

Each emitter returns ``(declarations, function body, note)``; buffers are named by the caller.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import UnsupportedError
from ._cwriter import C_TYPES, const_array, smallest_index_dtype
from .steps import Pipeline, emit_pipeline


def _channel_expr(axis: int | None, shape) -> tuple[str, int]:
    """The C expression of element ``i``'s index along ``axis`` (per-channel constants)."""
    if axis is None:
        return "0", 1
    inner = math.prod(shape[axis + 1:])
    return f"(int)((i / {inner}) % {shape[axis]})", int(shape[axis])


def emit_conversion(kernel, prefix: str, where: str, x: str, kind: str, shape, y: str,
                    y_dtype, axis: int | None) -> tuple[str, str, str]:
    """A quantize (``kind`` "f": float32 in) or dequantize ("i": integers in) kernel applied to
    every element: ``y[i] = steps(x[i])``."""
    channel, channels = _channel_expr(axis, shape)
    pipeline = Pipeline(prefix, channel, channels, where)
    result = emit_pipeline(kernel.steps, "x", kind, y_dtype, pipeline)
    size = math.prod(shape)
    read = f"(int64_t){x}[i]" if kind == "i" else f"{x}[i]"
    body = ["size_t i;", f"for (i = 0; i < {size}; ++i) {{",
            f"    const {'int64_t' if kind == 'i' else 'float'} x = {read};"]
    body += ["    " + line for line in pipeline.lines]
    body += [f"    {y}[i] = {result};", "}"]
    return "".join(pipeline.constants), "\n".join(body), kernel.name


def broadcast_expr(in_shape, out_shape) -> str:
    """The flat index into an input of ``in_shape`` broadcast to ``out_shape``, from ``i``."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if in_shape == out_shape:
        return "i"
    padded = (1,) * (len(out_shape) - len(in_shape)) + in_shape
    strides = [math.prod(padded[d + 1:]) for d in range(len(padded))]
    terms = []
    for d, (n_in, n_out) in enumerate(zip(padded, out_shape)):
        if n_in == 1:
            continue
        inner = math.prod(out_shape[d + 1:])
        terms.append(f"((i / {inner}) % {n_out}) * {strides[d]}")
    return " + ".join(terms) or "0"


def emit_unary(table, prefix: str, x: str, x_shape, y: str, out_shape) -> tuple[str, str, str]:
    decls = const_array(f"{prefix}_table", table.table)
    index = broadcast_expr(x_shape, out_shape)
    body = ["size_t i;", f"for (i = 0; i < {math.prod(out_shape)}; ++i) "
            f"{y}[i] = {prefix}_table[(int){x}[{index}] - ({table.in_min})];"]
    return decls, "\n".join(body), f"unary table of {table.table.size}"


def emit_binary(table, prefix: str, a: str, a_shape, b: str, b_shape, y: str,
                out_shape) -> tuple[str, str, str]:
    decls = const_array(f"{prefix}_table", table.table)
    nb = table.table.shape[1]
    body = ["size_t i;", f"for (i = 0; i < {math.prod(out_shape)}; ++i) "
            f"{y}[i] = {prefix}_table[((int){a}[{broadcast_expr(a_shape, out_shape)}] - "
            f"({table.a_min})) * {nb} + ((int){b}[{broadcast_expr(b_shape, out_shape)}] - "
            f"({table.b_min}))];"]
    return decls, "\n".join(body), f"binary table {table.table.shape[0]}x{nb}"


def _runs(source: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Maximal runs of (same source, constant index step): (R, 4) [source, first, step, length]."""
    n = len(index)
    if n == 0:
        return np.zeros((0, 4), np.int64)
    runs = []
    start = 0
    while start < n:
        end = start + 1
        if end < n and source[end] == source[start]:
            step = int(index[end]) - int(index[start])
            while end < n and source[end] == source[start] and \
                    int(index[end]) - int(index[end - 1]) == step:
                end += 1
        else:
            step = 0
        runs.append((int(source[start]), int(index[start]), step, end - start))
        start = end
    return np.asarray(runs, dtype=np.int64)


def emit_gather(source, index, prefix: str, inputs: list[str], dtype, y: str,
                tables=None, in_dtypes=None) -> tuple[str, str, str]:
    """``y[i] = inputs[source[i]][index[i]]``: as runs (``first + step * j``) when that is
    compact (a copy, a concatenation, a slice, a transpose's rows), else as index tables.

    ``tables`` (optional, one per input: a ``UnaryTable``, or None for a plain copy): the value
    read from input ``s`` goes through ``table[v - in_min]`` (a concatenation whose inputs
    are requantized to the output's qparams)."""
    source = np.asarray(source, dtype=np.int64).reshape(-1)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    n = len(index)
    ctype = C_TYPES[np.dtype(dtype)]
    if tables is not None and any(t is not None for t in tables):
        return _emit_mapped_gather(source, index, prefix, inputs, dtype, y, tables, in_dtypes)
    pointers = ", ".join(inputs)
    decls = f"static const {ctype} *const {prefix}_src[{len(inputs)}] = {{{pointers}}};\n"
    if n <= 1 << 20:
        runs = _runs(source, index)
    else:
        runs = None
    if runs is not None and len(runs) * 4 <= max(n, 8):
        if len(runs) == 1:
            s, first, step, length = (int(v) for v in runs[0])
            body = ["size_t j;", f"for (j = 0; j < {length}; ++j) {y}[j] = "
                    f"{prefix}_src[{s}][{first} + (ptrdiff_t){step} * (ptrdiff_t)j];"]
            return decls, "\n".join(body), "gather: one strided copy"
        decls += const_array(f"{prefix}_runs", runs.reshape(-1),
                             smallest_index_dtype(int(runs.max()), int(runs.min())))
        body = ["size_t r, j, o = 0;", f"for (r = 0; r < {len(runs)}; ++r) {{",
                f"    const {ctype} *s = {prefix}_src[{prefix}_runs[4 * r]];",
                f"    const ptrdiff_t first = (ptrdiff_t){prefix}_runs[4 * r + 1], "
                f"step = (ptrdiff_t){prefix}_runs[4 * r + 2];",
                f"    const size_t length = (size_t){prefix}_runs[4 * r + 3];",
                f"    for (j = 0; j < length; ++j) {y}[o++] = s[first + step * (ptrdiff_t)j];",
                "}"]
        return decls, "\n".join(body), f"gather: {len(runs)} strided runs"
    decls += const_array(f"{prefix}_index", index, smallest_index_dtype(int(index.max()),
                                                                        int(index.min())))
    if len(inputs) > 1:
        decls += const_array(f"{prefix}_source", source,
                             np.uint8 if len(inputs) < 256 else np.int16)
        read = f"{prefix}_src[{prefix}_source[i]][{prefix}_index[i]]"
    else:
        read = f"{prefix}_src[0][{prefix}_index[i]]"
    body = ["size_t i;", f"for (i = 0; i < {n}; ++i) {y}[i] = {read};"]
    return decls, "\n".join(body), f"gather: index table of {n}"


def _emit_mapped_gather(source, index, prefix, inputs, dtype, y, tables, in_dtypes):
    """A gather whose inputs each pass through their own table (or none): one loop per input
    over its runs (inputs may differ in type)."""
    ctype = C_TYPES[np.dtype(dtype)]
    decls, body, count = [], ["size_t r, j;"], 0
    positions = np.arange(len(index))
    for s, (name, table) in enumerate(zip(inputs, tables)):
        chosen = source == s
        if not chosen.any():
            continue
        out_at, read_at = positions[chosen], index[chosen]
        runs = _runs(np.zeros(len(out_at), np.int64), read_at - out_at)  # out and in both step
        # runs of (in - out) constant: y[o] = x[o + delta] over consecutive o of this input
        starts = np.concatenate([[0], np.cumsum(runs[:, 3])[:-1]]).astype(np.int64)
        consecutive = all(np.all(np.diff(out_at[b:b + int(l)]) == 1)
                          for b, l in zip(starts, runs[:, 3]) if l > 1) and all(
            step == 0 for step in runs[:, 2])
        if consecutive and len(runs) * 3 <= max(len(out_at), 6):
            table_rows = np.stack([out_at[starts], runs[:, 1], runs[:, 3]], axis=1)
            decls.append(const_array(f"{prefix}_r{s}", table_rows.reshape(-1),
                                     smallest_index_dtype(int(table_rows.max()),
                                                          min(int(table_rows.min()), 0))))
            read = f"{name}[(ptrdiff_t)o + {prefix}_r{s}[3 * r + 1]]"
            loop = [f"for (r = 0; r < {len(runs)}; ++r) {{",
                    f"    const size_t first = (size_t){prefix}_r{s}[3 * r], "
                    f"length = (size_t){prefix}_r{s}[3 * r + 2];",
                    "    for (j = 0; j < length; ++j) {", "        const size_t o = first + j;"]
            close = ["    }", "}"]
        else:
            decls.append(const_array(f"{prefix}_o{s}", out_at, smallest_index_dtype(len(index))))
            decls.append(const_array(f"{prefix}_i{s}", read_at,
                                     smallest_index_dtype(int(read_at.max()))))
            read = f"{name}[{prefix}_i{s}[j]]"
            loop = [f"for (j = 0; j < {len(out_at)}; ++j) {{",
                    f"    {{ const size_t o = {prefix}_o{s}[j];"]
            close = ["    }", "}"]
        if table is None:
            value = read
        else:
            values, in_min = table.table, table.in_min
            decls.append(const_array(f"{prefix}_t{s}", np.asarray(values), dtype))
            value = f"{prefix}_t{s}[(int){read} - ({int(in_min)})]"
        body += loop + [f"        {y}[o] = ({ctype}){value};"] + close
        count += 1
    return "".join(decls), "\n".join(body), f"gather of {count} inputs through tables"


def emit_window(reduce, prefix: str, x: str, x_dtype, y: str, y_dtype) -> tuple[str, str, str]:
    """Pooling: ``y[i] = reduce(x[windows[i, j]] for j < counts[i])``."""
    windows = np.asarray(reduce.windows, dtype=np.int64)
    n, width = windows.shape
    decls = const_array(f"{prefix}_win", windows.reshape(-1),
                        smallest_index_dtype(max(int(windows.max()), 0),
                                             min(int(windows.min()), 0)))
    counts = np.asarray(reduce.counts, dtype=np.int64)
    uniform = bool(np.all(counts == counts[0])) if n else True
    if uniform:
        count = f"{int(counts[0]) if n else 0}"
    else:
        decls += const_array(f"{prefix}_count", counts, smallest_index_dtype(int(counts.max())))
        count = f"{prefix}_count[i]"
    ctype = C_TYPES[np.dtype(x_dtype)]
    body = ["size_t i;", "int j;", f"for (i = 0; i < {n}; ++i) {{",
            f"    const int count = (int){count};"]
    if reduce.kind == "max":
        body += [f"    {ctype} best = {x}[{prefix}_win[i * {width}]];",
                 f"    for (j = 1; j < count; ++j) {{ const {ctype} v = {x}[{prefix}_win[i * "
                 f"{width} + j]]; if (v > best) best = v; }}",
                 f"    {y}[i] = ({C_TYPES[np.dtype(y_dtype)]})best;", "}"]
        return decls, "\n".join(body), f"max over windows of {width}"
    if reduce.kind != "sum_table":
        raise UnsupportedError(f"window reduction kind {reduce.kind!r}")
    keys = sorted(reduce.tables)
    dense = {key: position for position, key in enumerate(keys)}
    ytype = C_TYPES[np.dtype(y_dtype)]
    for position, key in enumerate(keys):
        decls += const_array(f"{prefix}_t{position}", np.asarray(reduce.tables[key]), y_dtype)
    decls += (f"static const {ytype} *const {prefix}_tables[{len(keys)}] = {{"
              + ", ".join(f"{prefix}_t{p}" for p in range(len(keys))) + "};\n")
    divisor = np.asarray([dense[int(k)] for k in np.asarray(reduce.divisor_key).reshape(-1)])
    if len(keys) == 1:
        table = f"{prefix}_tables[0]"
    else:
        decls += const_array(f"{prefix}_key", divisor, smallest_index_dtype(len(keys)))
        table = f"{prefix}_tables[{prefix}_key[i]]"
    body += ["    int64_t sum = 0;",
             f"    for (j = 0; j < count; ++j) sum += {x}[{prefix}_win[i * {width} + j]];",
             f"    {y}[i] = {table}[sum - ({int(reduce.sum_min)})];", "}"]
    return decls, "\n".join(body), f"sum over windows of {width}, then a table"
