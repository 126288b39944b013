"""C for the GEMM layers (Linear, Conv incl. depthwise/grouped, fused ReLU).

The accumulator is formed as the kernel forms it (``qexact.ops.linear.linear_accumulator``,
``qexact.ops.conv.conv_accumulator``): the exact sum of (x - z_x)(w - z_w) in int64 (any order:
integers), plus, where the engine's ISA sums raw u8 x s8 pairs in int16 (``pair_saturation``),
``sum_t sat16(p_t) - p_t`` over the kernel's pairs ``p_t = x[k0] w[k0] + x[k1] w[k1]`` (raw
values; a padded conv tap holds ``z_x`` or 0 as ``padded_tap`` says). Then the requantization
pipeline (``steps.emit_pipeline``), or in integer-only mode
``clamp(floor((acc * M + B) / 2**s), low, high)`` (``qexact.export.integer``).
"""

from __future__ import annotations

import numpy as np

from ...engines.base import PAD_ZERO
from ...errors import UnsupportedError
from ...ops.conv import grouped_rows
from ._cwriter import C_TYPES, const_array, int_literal
from .steps import Pipeline, emit_pipeline


def _zero_point_expr(zero_point, prefix: str, channel: str, decls: list[str]) -> str:
    zero_point = np.asarray(zero_point, dtype=np.int64)
    if zero_point.size == 1:
        return int_literal(zero_point.reshape(-1)[0])
    decls.append(const_array(f"{prefix}_wzp", zero_point.astype(np.int32)))
    return f"{prefix}_wzp[{channel}]"


def _epilogue(params, prefix: str, where: str, channels: int, out_dtype, integer) -> tuple[
        list[str], list[str], str]:
    """(const declarations, statements, result expression) turning ``acc`` into the output."""
    if integer is not None:
        return _integer_epilogue(integer, prefix, channels, out_dtype)
    pipeline = Pipeline(prefix, "oc", channels, where)
    result = emit_pipeline(params.requantization, "acc", "i", out_dtype, pipeline)
    return pipeline.constants, pipeline.lines, result


def _integer_epilogue(integer, prefix: str, channels: int, out_dtype) -> tuple[
        list[str], list[str], str]:
    """Integer-only: ``t2 = clamp((acc * M + B) >> s, low, high)`` per channel; where
    ``integer.form`` is "thresholds", the channels without a certified multiplier instead take
    ``low + #{k : t_k <= acc}``, a binary search of their sorted thresholds (only theirs are
    stored; ``slot`` -1: the multiplier)."""
    low, high = int_literal(integer.low), int_literal(integer.high)
    decls = [const_array(f"{prefix}_mul", np.asarray(integer.multiplier, np.int64)),
             const_array(f"{prefix}_off", np.asarray(integer.offset, np.int64)),
             const_array(f"{prefix}_shift", np.asarray(integer.shift, np.int32))]
    affine = [f"const int64_t t1 = qx_asr(acc * {prefix}_mul[oc] + {prefix}_off[oc], "
              f"{prefix}_shift[oc]);",
              f"t2 = t1 < {low} ? {low} : (t1 > {high} ? {high} : t1);"]
    if integer.form != "thresholds":
        return decls, ["int64_t t2;", "{"] + [f"    {line}" for line in affine] + ["}"], \
            f"({C_TYPES[np.dtype(out_dtype)]})t2"
    levels = integer.thresholds.shape[1]
    table = np.flatnonzero(~np.asarray(integer.certified))
    slot = np.full(channels, -1, np.int32)
    slot[table] = np.arange(table.size, dtype=np.int32)
    decls += [const_array(f"{prefix}_slot", slot),
              const_array(f"{prefix}_thr",
                          np.asarray(integer.thresholds, np.int32)[table].reshape(-1))]
    lines = (["int64_t t2;", f"if ({prefix}_slot[oc] < 0) {{"] + [f"    {line}" for line in affine]
             + ["} else {",
                f"    const int32_t *thr = {prefix}_thr + (size_t){prefix}_slot[oc] * {levels};",
                f"    int below = 0, above = {levels};",
                "    while (below < above) {",
                "        const int middle = (below + above) / 2;",
                "        if (thr[middle] <= acc) below = middle + 1; else above = middle;",
                "    }",
                f"    t2 = {low} + below;",
                "}"])
    return decls, lines, f"({C_TYPES[np.dtype(out_dtype)]})t2"


def _output_channel(prefix: str, depth: int, zw: str, zx: int, source: str,
                    pair_lines: list[str], epilogue: list[str], store: str) -> list[str]:
    """The body of one output channel ``oc`` (indented for the loop over it): the exact sum of
    (source[k] - z_x)(w[k] - z_w), the pair saturation's corrections, the epilogue, the store."""
    lines = [f"const int8_t *wr = {prefix}_w + (size_t)oc * {depth};",
             f"const int64_t zw = {zw};",
             "int64_t acc = 0;",
             f"for (k = 0; k < {depth}; ++k) acc += ((int64_t){source}[k] - {zx}) * "
             "((int64_t)wr[k] - zw);",
             *pair_lines, "{", *("    " + line for line in epilogue), f"    {store}", "}"]
    return ["        " + line for line in lines]


def _pair_saturation(params, prefix: str, raw: str, decls: list[str]) -> list[str]:
    """Where the kernel sums raw u8 x s8 pairs in int16 (``params.pair_saturation``): the pair
    positions' declaration (appended to ``decls``) and the correction lines over ``raw``."""
    if not params.pair_saturation:
        return []
    pair_decls, count = _pairs_decl(params, prefix)
    decls += pair_decls
    return _pair_lines(prefix, count, raw, "wr")


def _pairs_decl(params, prefix: str) -> tuple[list[str], int]:
    positions = np.asarray(params.pair_positions, dtype=np.int32)
    return [const_array(f"{prefix}_pairs", positions.reshape(-1))], len(positions)


def _pair_lines(prefix: str, count: int, raw: str, weights: str) -> list[str]:
    """``acc += sat16(p) - p`` for every pair (raw activations ``raw[k]``, weights
    ``weights[k]``)."""
    return [f"for (t = 0; t < {count}; ++t) {{",
            f"    const int k0 = {prefix}_pairs[2 * t], k1 = {prefix}_pairs[2 * t + 1];",
            f"    const int64_t p = (int64_t){raw}[k0] * {weights}[k0]"
            f" + (k1 >= 0 ? (int64_t){raw}[k1] * {weights}[k1] : 0);",
            "    acc += qx_sat16(p) - p;",
            "}"]


def _check_supported(params, where: str) -> None:
    unsupported = [type(step).__name__ for step in params.requantization
                   if getattr(step, "role", "") == "sum" or hasattr(step, "operand")]
    if unsupported:
        raise UnsupportedError(f"{where}: steps reading a run-time operand ({unsupported}: a fused "
                               "residual add) are not exported to C")
    if getattr(params, "inexact", ""):
        raise UnsupportedError(f"{where}: qexact marks this layer inexact ({params.inexact})")


def emit_linear(params, prefix: str, where: str, x: str, x_shape, y: str, y_dtype,
                integer=None) -> tuple[str, str, str]:
    """(declarations, function body, note) for a Linear on the buffer ``x`` (..., K) into ``y``."""
    _check_supported(params, where)
    if params.float_residual or params.eltwise:
        raise UnsupportedError(f"{where}: a Linear with a fused residual or eltwise post-op")
    n_out, depth = params.weight.shape
    rows = int(np.prod(x_shape[:-1]))
    decls = [const_array(f"{prefix}_w", params.weight)]
    zw = _zero_point_expr(params.weight_zero_point, prefix, "oc", decls)
    zx = int(params.input_qparams.zero_point)
    more, lines, result = _epilogue(params, prefix, where, n_out, y_dtype, integer)
    decls += more
    pair_lines = _pair_saturation(params, prefix, "xr", decls)
    body = [f"int m, oc, k{', t' if pair_lines else ''};",
            f"for (m = 0; m < {rows}; ++m) {{",
            f"    const {C_TYPES[np.dtype(params.input_qparams.dtype.numpy_dtype)]} *xr = {x} + "
            f"(size_t)m * {depth};",
            f"    for (oc = 0; oc < {n_out}; ++oc) {{"]
    body += _output_channel(prefix, depth, zw, zx, "xr", pair_lines, lines,
                            f"{y}[(size_t)m * {n_out} + oc] = {result};")
    body += ["    }", "}"]
    note = (f"linear {depth}->{n_out} x{rows} rows, kernel {params.kernel}"
            + (", int16 pair saturation" if params.pair_saturation else ""))
    return "".join(decls), "\n".join(body), note


def emit_conv(params, prefix: str, where: str, x: str, x_shape, y: str, y_shape, y_dtype,
              integer=None) -> tuple[str, str, str]:
    """(declarations, function body, note) for a 2-D (or 1-D) convolution, NCHW in and out."""
    _check_supported(params, where)
    if params.padding_mode != "zeros":
        raise UnsupportedError(f"{where}: padding_mode {params.padding_mode!r} (only 'zeros')")
    if getattr(params, "residual_qparams", None) is not None:
        raise UnsupportedError(f"{where}: a conv with a fused residual add")
    dims = len(params.kernel_size)
    if dims not in (1, 2) or len(x_shape) != dims + 2:
        raise UnsupportedError(f"{where}: Conv{dims}d on an input of shape {tuple(x_shape)} "
                               "(exported: batched Conv1d and Conv2d)")
    as2 = (lambda v, one: (one,) + tuple(v)) if dims == 1 else (lambda v, one: tuple(v))
    kh, kw = as2(params.kernel_size, 1)
    sh, sw = as2(params.stride, 1)
    ph, pw = as2(params.padding, 0)
    dh, dw = as2(params.dilation, 1)
    batch, channels = x_shape[:2]
    ih, iw = as2(x_shape[2:], 1)
    oh, ow = as2(y_shape[2:], 1)
    out_channels = params.out_channels
    groups = params.groups
    per_group_in = params.weight.shape[1]
    per_group_out = out_channels // groups
    depth = kh * kw * per_group_in
    rows = grouped_rows(params.weight, groups).reshape(out_channels, depth)
    decls = [const_array(f"{prefix}_w", rows)]
    zw = _zero_point_expr(params.weight_zero_point, prefix, "oc", decls)
    zx = int(params.input_qparams.zero_point)
    in_type = C_TYPES[np.dtype(params.input_qparams.dtype.numpy_dtype)]
    more, lines, result = _epilogue(params, prefix, where, out_channels, y_dtype, integer)
    decls += more
    pair_lines = _pair_saturation(params, prefix, "raw", decls)
    raw_pad = 0 if params.padded_tap == PAD_ZERO else zx
    body = [f"static {in_type} col[{depth}];"]
    if pair_lines:
        body.append(f"static {in_type} raw[{depth}];")
    body += [f"int n, g, oy, ox, fy, fx, c, oc, k{', t' if pair_lines else ''};",
             f"for (n = 0; n < {batch}; ++n)",
             f"for (g = 0; g < {groups}; ++g)",
             f"for (oy = 0; oy < {oh}; ++oy)",
             f"for (ox = 0; ox < {ow}; ++ox) {{",
             "    /* im2col row: taps (fy, fx), channel of the group fastest; padding reads z_x */",
             f"    for (fy = 0; fy < {kh}; ++fy)",
             f"    for (fx = 0; fx < {kw}; ++fx) {{",
             f"        const int iy = oy * {sh} - {ph} + fy * {dh};",
             f"        const int ix = ox * {sw} - {pw} + fx * {dw};",
             f"        const int inside = iy >= 0 && iy < {ih} && ix >= 0 && ix < {iw};",
             f"        for (c = 0; c < {per_group_in}; ++c) {{",
             f"            const int kk = (fy * {kw} + fx) * {per_group_in} + c;",
             f"            const {in_type} v = inside ? {x}[(((size_t)n * {channels} + "
             f"(size_t)g * {per_group_in} + c) * {ih} + iy) * {iw} + ix] : ({in_type}){zx};",
             "            col[kk] = v;"]
    if pair_lines:
        body.append(f"            raw[kk] = inside ? v : ({in_type}){raw_pad};")
    body += ["        }", "    }",
             f"    for (oc = g * {per_group_out}; oc < (g + 1) * {per_group_out}; ++oc) {{"]
    body += _output_channel(prefix, depth, zw, zx, "col", pair_lines, lines,
                            f"{y}[(((size_t)n * {out_channels} + oc) * {oh} + oy) * {ow} + ox] "
                            f"= {result};")
    body += ["    }", "}"]
    kind = ("depthwise" if groups == channels and per_group_in == 1 else
            f"groups={groups}" if groups > 1 else "dense")
    note = (f"conv {channels}->{out_channels} k{kh}x{kw} s{sh}x{sw} p{ph}x{pw} {kind}, kernel "
            f"{params.kernel}" + (", int16 pair saturation" if params.pair_saturation else ""))
    return "".join(decls), "\n".join(body), note
