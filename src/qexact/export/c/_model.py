"""Assemble ``model.c``/``model.h``/``README.md`` from a prepared ``Net`` and one example run."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..._version import __version__
from ...errors import UnsupportedError
from ...graph import Ref
from ...qparams import QuantizedArray
from ..golden import tensors_of
from ._cwriter import C_TYPES, DTYPE_CODES, identifier
from .gemm import emit_conv, emit_linear
from .nodes import emit_binary, emit_conversion, emit_gather, emit_unary, emit_window

FLAGS = "-std=c99 -ffp-contract=off (required), e.g. -O2; link -lm"


@dataclass
class Buffer:
    cname: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Model:
    header: str
    source: str
    readme: str
    notes: dict[str, str] = field(default_factory=dict)
    uncertified: dict[str, str] = field(default_factory=dict)


def _is_tensor(value) -> bool:
    return isinstance(value, QuantizedArray) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and value.ndim > 0)


def _plain(value) -> np.ndarray:
    return np.ascontiguousarray(value.values if isinstance(value, QuantizedArray) else value)


def _check(description, node, arrays: list[np.ndarray], out: np.ndarray) -> None:
    """The table/gather/window applied in NumPy to the example run must give the node's value."""
    from ..tables import apply

    got = apply(description, arrays, out.shape)
    if not np.array_equal(got, out.astype(np.int64)):
        raise UnsupportedError(f"{node}: its {type(description).__name__} does not reproduce "
                               "the example run (not exported)")


def build_model(net, example_inputs: tuple, *, integer_only: bool | str = False) -> Model:
    graph = net.graph
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedError(f"the C export takes models with one input and one output; this "
                               f"one has {len(graph.inputs)} and {len(graph.outputs)}")
    values = net.run_values(*example_inputs)
    input_name = graph.inputs[0]
    input_value = values[input_name]
    if not isinstance(input_value, np.ndarray) or input_value.dtype != np.float32:
        raise UnsupportedError("the C export takes a float32 model input")
    buffers: dict[str, Buffer] = {input_name: Buffer("model_input_buffer", input_value.dtype,
                                                     input_value.shape)}
    owned: list[Buffer] = [buffers[input_name]]
    decls: list[str] = []
    functions: list[str] = []
    calls: list[str] = []
    layers: list[tuple[str, str, Buffer]] = []
    notes: dict[str, str] = {}
    uncertified: dict[str, str] = {}
    errors: list[str] = []

    def new_buffer(key: str, array: np.ndarray, index: int) -> Buffer:
        if np.dtype(array.dtype) not in DTYPE_CODES:
            raise UnsupportedError(f"a {array.dtype} tensor (the C export holds float32, "
                                   "uint8, int8 and int32)")
        buffer = Buffer(f"b{index}_{identifier(key)}", np.dtype(array.dtype), array.shape)
        buffers[key] = buffer
        owned.append(buffer)
        return buffer

    for index, item in enumerate(net._prepared):
        node = item.node
        name, op = node.name, node.op
        where = f"node {name!r} [{op}]"
        pieces = list(tensors_of(values[name]))
        if not pieces:
            notes[name] = "no tensor value (shapes, Python numbers): constant-folded, no C"
            continue
        refs = [ref for ref in node.inputs if isinstance(ref, Ref)]
        tensor_refs = [ref.name for ref in refs if _is_tensor(values[ref.name])]
        prefix = f"n{index}"
        if any(ref not in buffers for ref in tensor_refs):
            continue  # reads a refused node's output: reported there
        try:
            result = None
            if op == "getitem" and refs and isinstance(values[refs[0].name], (tuple, list)) \
                    and len(pieces) == 1:
                key = f"{refs[0].name}.{node.inputs[1]}"
                if key not in buffers:
                    raise UnsupportedError(f"{where}: item {node.inputs[1]!r} of {refs[0].name!r}")
                buffers[name] = buffers[key]
                notes[name] = f"alias of {key}"
            elif op in ("chunk", "split") and len(pieces) > 1:
                source = buffers[tensor_refs[0]]
                made = [(suffix, new_buffer(f"{name}{suffix}", array, index))
                        for suffix, array in pieces]
                result = _emit_pieces(op, item.params, source, _plain(values[tensor_refs[0]]),
                                      pieces, made, prefix, where)
                layers += [(f"{name}{suffix}", f"{name}.output{suffix}", buffer)
                           for suffix, buffer in made]
            elif len(pieces) != 1:
                raise UnsupportedError(f"{where}: a node with {len(pieces)} tensor outputs")
            else:
                (_, out), = pieces
                result = _emit_node(net, item, values, buffers, tensor_refs, out, prefix, where,
                                    integer_only, uncertified, lambda: new_buffer(name, out, index))
        except UnsupportedError as error:
            text = str(error)
            errors.append(text if text.startswith("node ") else f"{where}: {text}")
            for suffix, array in pieces:  # a stand-in, so later nodes are examined too
                buffers.setdefault(f"{name}{suffix}", Buffer("refused", array.dtype,
                                                              array.shape))
            continue
        if result is not None:
            d, body, note = result
            notes[name] = note
            if body is not None:
                decls.append(d)
                functions.append(f"/* {name} [{op}]: {note} */\n"
                                 f"static void {prefix}_run(void) {{\n{_indent(body)}\n}}\n")
                calls.append(f"{prefix}_run();")
        if name in buffers:
            layers.append((name, f"{name}.output", buffers[name]))
    if errors:
        raise UnsupportedError(f"{len(errors)} node(s) cannot be exported to C:\n  - "
                               + "\n  - ".join(errors))
    output_name = graph.outputs[0].name
    output_layer = next((i for i, (n, _, _) in enumerate(layers) if n == output_name), None)
    if output_layer is None:
        raise UnsupportedError(f"the model output {output_name!r} is not a tensor a node computes")
    out_buffer = layers[output_layer][2]
    return _render(net, input_value, buffers[input_name], out_buffer, owned, decls, functions,
                   calls, layers, output_layer, notes, uncertified, integer_only)


def _emit_pieces(op, params, source: Buffer, source_values, pieces, made, prefix, where):
    """A ``chunk``/``split``: one strided copy per piece, the index maps from the op's own move
    applied to the flat positions (``qexact.ops.shape``), checked on the example run."""
    from ...ops.shape import _MOVES
    moved = _MOVES[op](np.arange(source.size).reshape(source.shape), **params)
    decls, parts = [], []
    for (suffix, array), (_, buffer), where_from in zip(pieces, made, moved):
        if where_from.shape != array.shape or not np.array_equal(
                source_values.reshape(-1)[where_from.reshape(-1)], array.reshape(-1)):
            raise UnsupportedError(f"{where}: piece {suffix} is not a pure copy")
        d, body, _ = emit_gather(np.zeros(array.size, np.int64), where_from.reshape(-1),
                                 f"{prefix}_{suffix[1:]}", [source.cname], array.dtype,
                                 buffer.cname)
        decls.append(d)
        parts.append("{\n" + _indent(body) + "\n}")
    return "".join(decls), "\n".join(parts), f"{op}: {len(pieces)} strided copies"


def _indent(text: str) -> str:
    return "\n".join("    " + line if line else line for line in text.split("\n"))


def _emit_node(net, item, values, buffers, tensor_refs, out, prefix, where, integer_only,
               uncertified, make_buffer):
    """(declarations, body or None for an alias, note); registers the node's buffer."""
    node = item.node
    op = node.op
    name = node.name
    inputs = [buffers[ref] for ref in tensor_refs]
    if op == "quantize":
        y = make_buffer()
        qparams = item.params.qparams
        kernel = item.params.engine.kernel("quantize", qparams, len(inputs[0].shape))
        axis = qparams.axis if qparams.is_per_channel else None
        return emit_conversion(kernel, prefix, where, inputs[0].cname, "f", inputs[0].shape,
                               y.cname, y.dtype, axis)
    if op == "dequantize":
        y = make_buffer()
        qparams = values[tensor_refs[0]].qparams
        kernel = item.params(qparams, len(inputs[0].shape))
        axis = qparams.axis if qparams.is_per_channel else None
        return emit_conversion(kernel, prefix, where, inputs[0].cname, "i", inputs[0].shape,
                               y.cname, y.dtype, axis)
    if op in ("linear", "conv"):
        if len(inputs) != 1:
            raise UnsupportedError(f"{where}: a {op} with a residual input")
        integer = None
        if integer_only:
            if item.output_qparams is None:
                raise UnsupportedError(f"{where}: integer-only export of a float32 output")
            from ..integer import integer_requantization
            integer = integer_requantization(net, name)
            if integer_only == "affine" and integer.form == "thresholds":
                integer = replace(integer, thresholds=None)  # the user wants M, B, s everywhere
            if not integer.exact:
                uncertified[name] = (f"worst case {integer.worst_case}, mismatch rate "
                                     f"{integer.mismatch_rate:.3g}")
        y = make_buffer()
        if op == "linear":
            d, body, note = emit_linear(item.params, prefix, where, inputs[0].cname,
                                        inputs[0].shape, y.cname, y.dtype, integer)
        else:
            d, body, note = emit_conv(item.params, prefix, where, inputs[0].cname, inputs[0].shape,
                                      y.cname, out.shape, y.dtype, integer)
        if integer is not None:
            note += ", integer-only" + (
                f" (NOT certified: {uncertified[name]})" if name in uncertified else
                " (threshold table)" if integer.form == "thresholds" else "")
        return d, body, note
    from .. import tables  # Interface A; its result types are told apart by name
    description = tables.describe(net, name, values)
    kind = type(description).__name__
    if description is None:
        why = getattr(tables, "why_not", lambda *args: "")(net, name, values)
        raise UnsupportedError(why or f"{where}: no table, gather or window reduction "
                               "describes it")
    if kind == "Gather" and getattr(description, "inputs", ()):
        tensor_refs = list(description.inputs)  # extension: the values ``source`` numbers
        missing = [ref for ref in tensor_refs if ref not in buffers]
        if missing:
            raise UnsupportedError(f"{where}: gathers from {missing}, which have no C buffer")
        inputs = [buffers[ref] for ref in tensor_refs]
    arrays = [_plain(values[ref]) for ref in tensor_refs]
    _check(description, where, arrays, out)
    d, body, note = _emit_description(description, kind, name, where, prefix, inputs,
                                      tensor_refs, buffers, out, make_buffer)
    proof = getattr(description, "proof", "")
    return d, body, note + (f"; proof: {proof}" if proof else "")


def _emit_description(description, kind, name, where, prefix, inputs, tensor_refs, buffers,
                      out, make_buffer):
    """C for a table, gather or window reduction (``qexact.export.tables``)."""
    if kind == "Gather":
        source = np.asarray(description.source).reshape(-1)
        index = np.asarray(description.index).reshape(-1)
        tables = getattr(description, "tables", None)
        if tables is not None and any(table is not None for table in tables):
            y = make_buffer()
            return emit_gather(source, index, prefix, [b.cname for b in inputs], out.dtype,
                               y.cname, tables)
        if len(inputs) == 1 and np.array_equal(index, np.arange(out.size)) and \
                inputs[0].dtype == out.dtype and not np.any(source):
            buffers[name] = Buffer(inputs[0].cname, inputs[0].dtype, tuple(out.shape))
            return "", None, f"alias of {tensor_refs[0]} (the same values in the same order)"
        y = make_buffer()
        return emit_gather(source, index, prefix, [b.cname for b in inputs], out.dtype, y.cname)
    y = make_buffer()
    if kind == "UnaryTable":
        return emit_unary(description, prefix, inputs[0].cname, inputs[0].shape, y.cname, out.shape)
    if kind == "BinaryTable":
        for operand, buffer in (("a", inputs[0]), ("b", inputs[1])):
            explicit = getattr(description, f"{operand}_index", None)
            broadcast = np.broadcast_to(np.arange(buffer.size).reshape(buffer.shape),
                                        out.shape).reshape(-1)
            if explicit is not None and not np.array_equal(np.asarray(explicit).reshape(-1),
                                                           broadcast):
                raise UnsupportedError(f"{where}: operand {operand} is indexed otherwise than "
                                       "by broadcasting, which the C export does not emit")
        return emit_binary(description, prefix, inputs[0].cname, inputs[0].shape, inputs[1].cname,
                           inputs[1].shape, y.cname, out.shape)
    if kind == "WindowReduce":
        return emit_window(description, prefix, inputs[0].cname, inputs[0].dtype, y.cname, y.dtype)
    raise UnsupportedError(f"{where}: describe gave {type(description).__name__}")


def _render(net, input_value, in_buffer, out_buffer, owned, decls, functions, calls, layers,
            output_layer, notes, uncertified, integer_only) -> Model:
    engine, isa = net.engine.name, net.engine.isa
    out_kind = "float32" if out_buffer.dtype == np.float32 else \
        f"{out_buffer.dtype} integers (the model's quantized output)"
    mode = ("integer-only: GEMM layers requantize with int64 multiply, add and shift (or, where "
            "no multiplier is exact, a binary search of the engine's own thresholds); the float "
            "input quantize and the final dequantize stay float at the edges"
            if integer_only else "float requantization, as the engine")
    comment = (f"/* Generated by qexact {__version__}: bit-exact C99 of a quantized model.\n"
               f" * engine: {engine}, ISA: {isa}; numerics: {mode}.\n"
               f" * input: float32 {tuple(input_value.shape)}; output: {out_kind} "
               f"{tuple(out_buffer.shape)} (logical C order).\n"
               f" * Compile with: {FLAGS}. Float order matters: where the engine fuses a\n"
               " * multiply-add the code calls fmaf explicitly; nothing else may be contracted.\n"
               " * Needs FLT_EVAL_METHOD 0 (x86-64 SSE, AArch64), round-to-nearest-even mode,\n"
               " * two's-complement int64_t. No dynamic allocation: buffers are static.\n */\n")
    header = (comment + "#ifndef QEXACT_MODEL_H\n#define QEXACT_MODEL_H\n\n#include <stdint.h>\n\n"
              f"#define MODEL_INPUT_SIZE {in_buffer.size}\n"
              f"#define MODEL_OUTPUT_SIZE {out_buffer.size}\n"
              f"#define MODEL_NUM_LAYERS {len(layers)}\n\n"
              "enum { MODEL_F32 = 0, MODEL_U8 = 1, MODEL_S8 = 2, MODEL_S32 = 3 };\n\n"
              "/* one computed tensor: name (== qexact layers), golden key, dtype, logical\n"
              "   shape (C order) */\n"
              "typedef struct {\n    const char *name;\n    const char *key;\n    int dtype;\n"
              "    int ndim;\n    long shape[8];\n    long size;\n    const void *data;\n"
              "} model_layer;\n\n"
              "extern const model_layer model_layers[];\nextern const int model_num_layers;\n"
              "extern const int model_output_layer;  /* index of the model's output */\n\n"
              "/* Run the model: in: MODEL_INPUT_SIZE float32; out: MODEL_OUTPUT_SIZE float32\n"
              "   (the model's output; integers converted to float where it is quantized).\n"
              "   Afterwards every model_layers[i].data holds that layer's values. Returns 0. */\n"
              "int model_run(const float *in, float *out);\n\n"
              "/* model_run, then each(layer index, layer, context) for every layer in order. */\n"
              "int model_run_layers(const float *in, float *out,\n"
              "                     void (*each)(int layer, const model_layer *info,\n"
              "                                  void *context),\n"
              "                     void *context);\n\n#endif\n")
    buffers = "".join(f"static {C_TYPES[b.dtype]} {b.cname}[{b.size}];\n" for b in owned)
    table = []
    for name, key, buffer in layers:
        shape = ", ".join(str(s) for s in buffer.shape) or "1"
        table.append(f"    {{\"{name}\", \"{key}\", {DTYPE_CODES[buffer.dtype]}, "
                     f"{len(buffer.shape)}, {{{shape}}}, {buffer.size}, {buffer.cname}}},")
    if any(len(b.shape) > 8 for _, _, b in layers):
        raise UnsupportedError("a tensor of more than 8 dimensions")
    run = ["int model_run(const float *in, float *out) {", "    size_t i;",
           f"    memcpy({in_buffer.cname}, in, sizeof {in_buffer.cname});"]
    run += ["    " + call for call in calls]
    run += [f"    for (i = 0; i < {out_buffer.size}; ++i) out[i] = (float){out_buffer.cname}[i];",
            "    return 0;", "}", "",
            "int model_run_layers(const float *in, float *out,",
            "                     void (*each)(int layer, const model_layer *info, void *context),",
            "                     void *context) {",
            "    int i;", "    model_run(in, out);",
            "    for (i = 0; i < model_num_layers; ++i) each(i, &model_layers[i], context);",
            "    return 0;", "}"]
    runtime = _runtime("".join(decls) + "".join(functions))
    source = (comment + "#include <float.h>\n#include <math.h>\n#include <stddef.h>\n"
              "#include <stdint.h>\n#include <string.h>\n#include \"model.h\"\n\n" + runtime
              + "\n/* ---- buffers (static, sized for the exported shapes) ---- */\n" + buffers
              + "\n/* ---- constants ---- */\n" + "".join(decls)
              + "\n/* ---- layers ---- */\n" + "\n".join(functions)
              + "\nconst model_layer model_layers[] = {\n" + "\n".join(table) + "\n};\n"
              + f"const int model_num_layers = {len(layers)};\n"
              + f"const int model_output_layer = {output_layer};\n\n" + "\n".join(run) + "\n")
    readme = _readme(net, input_value, out_buffer, out_kind, notes, uncertified, integer_only,
                     mode)
    return Model(header, source, readme, notes, uncertified)


def _runtime(code: str) -> str:
    """``runtime.c``: its preamble, and the helpers ``code`` calls (unused static functions
    would warn)."""
    text = (Path(__file__).parent / "runtime.c").read_text()
    blocks = text.split("\n\n")
    kept = [blocks[0]]
    for block in blocks[1:]:
        match = re.search(r"static \w+ (qx_\w+)\(", block)
        if match is None or match.group(1) + "(" in code:
            kept.append(block)
    return "\n\n".join(kept)


def _readme(net, input_value, out_buffer, out_kind, notes, uncertified, integer_only, mode):
    lines = [f"# C export of a qexact model ({net.engine.name}, {net.engine.isa})", "",
             f"Generated by qexact {__version__}. Numerics: {mode}.", "",
             "    make -C DIR                 # builds DIR/model_main (CC, CFLAGS as usual; "
             "-ffp-contract=off is always appended)",
             "    DIR/model_main IN.bin OUT.bin",
             "    DIR/model_main --golden GOLDEN_DIR",
             "    DIR/model_main --dump-layers IN.bin OUTDIR",
             "    DIR/model_main --time N IN.bin  # processor seconds per run", "",
             f"- `IN.bin`: raw little-endian float32, shape {tuple(input_value.shape)} (C order).",
             f"- `OUT.bin`: the model's output as `net(x)` gives it: {out_kind}, shape "
             f"{tuple(out_buffer.shape)}, raw little-endian.",
             "- `--golden`: reads `golden.safetensors` (`qexact export golden`), runs every case "
             "and compares every layer bit for bit; one line per layer, exit 0 when all equal.",
             "- `--dump-layers`: `OUTDIR/<layer>.bin` per layer (its dtype, logical C order).", "",
             "The library: `model.h`/`model.c` (`model_run`, `model_run_layers`, the table "
             "`model_layers`). Compile with `-std=c99 -ffp-contract=off` and link `-lm`.", "",
             "## Layers", ""]
    lines += [f"- `{name}`: {note}" for name, note in notes.items()]
    if integer_only:
        lines += ["", "## Integer-only layers not certified exact", ""]
        lines += ([f"- `{name}`: {text}" for name, text in uncertified.items()]
                  or ["None: every GEMM layer's integer requantization is certified exact."])
    return "\n".join(lines) + "\n"
