"""The ``qexact`` command line: parses arguments, calls one public function, renders the result.

Exit codes: 0 OK, 1 a bit-exactness mismatch, 2 a usage error, a ``QexactError`` or a file that
cannot be read or written (never a traceback without ``--debug``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
import warnings

import numpy as np

from ._version import __version__
from .engines import ATEN_CAPABILITIES, ENGINES, ISAS, detect_isa, engine_names
from .errors import QexactError
from .kernels import BACKENDS, fast_unavailable, resolve_backend

WIDTH = 80


def _load_model(path: str, engine: str | None, isa: str | None, backend: str | None = None):
    """A qexact model file, a TorchScript or ``.pt2`` file (zip archives; need torch), an
    ExecuTorch ``.pte`` (XNNPACK delegates; read without torch), or ``FILE.py:FACTORY``: a Python
    file whose function FACTORY returns a quantized PyTorch model, or ``(model,
    example_inputs)`` (runs the file's code, with torch)."""
    from .serialization import load

    if ".py:" in path:
        return _model_from_factory(path, engine, isa, backend)
    try:
        with open(path, "rb") as file:
            is_zip = file.read(4) == b"PK\x03\x04"
    except OSError as error:
        raise QexactError(f"cannot read {path!r}: {error.strerror}") from None
    if is_zip or path.endswith(".pte"):
        from .importers.torch import from_torch

        return from_torch(path, engine=engine, isa=isa, backend=backend)
    return load(path, engine=engine, isa=isa, backend=backend)


def _model_from_factory(spec: str, engine: str | None, isa: str | None,
                        backend: str | None = None):
    import importlib.util

    from .importers.torch import from_torch

    path, _, factory = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("qexact_user_model", path)
    if module_spec is None or not os.path.isfile(path):
        raise QexactError(f"cannot read {path!r}: no such Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its own imports, as python does
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    build = getattr(module, factory, None)
    if not callable(build):
        names = sorted(name for name, value in vars(module).items()
                       if callable(value) and not name.startswith("_"))
        raise QexactError(f"{path!r} has no function {factory!r}; it has {names}")
    made = build()
    model, example = made if isinstance(made, tuple) else (made, None)
    return from_torch(model, example_inputs=example, engine=engine, isa=isa, backend=backend)


# --- demo ----------------------------------------------------------------------------------------


def _render_demo(demo) -> str:
    def row(values):
        return " ".join(f"{value:8.4f}" for value in values)

    sw = np.atleast_1d(demo.weight_scale)
    weight_scale = f"{sw[0]:.6g}" if sw.size == 1 else f"per channel, {sw.min():.3g}..{sw.max():.3g}"
    bias = "int32 at scale s_x*s_w" if demo.bias_mode.startswith("int32") else "float32"
    lines = [
        f"== engine {demo.engine} (isa {demo.isa}) ".ljust(WIDTH, "="),
        f"fc_1: s_x={demo.input_scale:.6g} z_x={demo.input_zero_point}  s_w={weight_scale}",
        f"      s_out={demo.output_scale:.6g} z_out={demo.output_zero_point}  bias: {bias}",
        "",
        f"  PyTorch         {row(demo.torch_output)}",
        f"  qexact          {row(demo.qexact_output)}"
        + ("   identical" if demo.identical else "   DIFFERENT"),
        f"  forum formula   {row(demo.forum_output)}",
        "",
        f"qexact == PyTorch on {demo.checked_identical} of {demo.checked_inputs} more inputs. "
        "On them, qexact.diagnose",
        "finds what the forum formula skipped:",
        "",
        demo.diagnosis.render("text"),
        "",
        "The worst element of the input above, step by step (Net.explain):",
        "",
        demo.explanation.render("text"),
    ]
    return "\n".join(lines)


def command_demo(arguments) -> int:
    from .demo import run_forum_demo

    try:
        import torch  # noqa: F401  (before the introduction, not after it)
    except ImportError:
        raise QexactError("the demo builds a PyTorch model and torch is not installed: install "
                          "qexact[torch] (pip install 'qexact[torch]')") from None
    engines = arguments.engine or ["qnnpack", "x86"]
    print(textwrap.fill(
        "The forum question: QuantStub -> nn.Linear(10, 5) -> DeQuantStub, qconfig "
        "get_default_qconfig(engine), calibrated on 5 inputs of torch.rand(1, 10), converted. "
        "The user computed sum((xq-zx)*(wq-zw))*sx*sw + bias and got numbers close to "
        "PyTorch's, but not equal. qexact computes PyTorch's numbers exactly, names the "
        f"steps the formula skips, and shows each. This CPU runs isa {detect_isa()}.", WIDTH))
    status = 0
    for engine in engines:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notices for torch.ao
            demo = run_forum_demo(engine, seed=arguments.seed)
        print()
        print(_render_demo(demo))
        if not demo.identical or demo.checked_identical != demo.checked_inputs:
            status = 1
    return status


# --- run / layers / info -----------------------------------------------------------------------


def command_run(arguments) -> int:
    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    inputs = _load_inputs(arguments.input)
    # the arithmetic the values are exact for: a TorchScript file does not record its engine
    summary = {"engine": net.engine.name, "isa": net.engine.isa}
    if arguments.quantized:
        result = net.run_quantized(*inputs)
        values = result.values
        summary |= {"shape": list(values.shape), "dtype": result.dtype.name,
                    "scale": result.scale, "zero_point": result.zero_point}
    else:
        values = net(*inputs)
        summary |= {"shape": list(values.shape), "dtype": str(values.dtype)}
    if arguments.out:
        np.save(arguments.out, values, allow_pickle=False)
        summary["written"] = arguments.out
    if arguments.json:
        summary["values"] = values.tolist()
        print(json.dumps(summary))
        return 0
    print(", ".join(f"{key}: {value}" for key, value in summary.items()))
    # Every value, shortest round-trip form (np.save with --out keeps them bit for bit).
    print(np.array2string(values, threshold=1000, max_line_width=WIDTH,
                          floatmode="unique" if values.dtype.kind == "f" else "maxprec"))
    return 0


def command_inspect(arguments) -> int:
    from .summary import inspect_net

    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    inputs = tuple(_load_inputs(arguments.input)) if getattr(arguments, "input", None) else None
    reports = inspect_net(net, inputs)
    if arguments.json:
        print(json.dumps({"engine": net.engine.name, "isa": net.engine.isa,
                          "layers": [report.to_dict() for report in reports]}))
        return 0
    print(f"engine {net.engine.name}, isa {net.engine.isa}, aten {net.engine.aten_capability}")
    inexact = [report for report in reports if report.inexact]
    if inexact:
        print(f"not bit-exact on this engine: {', '.join(r.name for r in inexact)}: "
              f"{inexact[0].inexact}")
    print(f"{'layer':<16} {'op':<10} {'kernel':<16} {'in -> out':<22} {'int16 pairs'}")
    for report in reports:
        shapes = ""
        if report.input_shape is not None or report.output_shape is not None:
            shapes = (f"{'x'.join(map(str, report.input_shape or ()))}->"
                      f"{'x'.join(map(str, report.output_shape or ()))}")
        print(f"{report.name:<16.16} {report.op:<10.10} {report.kernel:<16.16} {shapes:<22.22} "
              f"{report.saturation}")
        if report.multiplier or report.output_qparams:
            multipliers = " ".join(f"{m:.6g}" for m in report.multiplier)
            print(f"{'':<16} out {report.output_qparams:<24.24} {('M ' + multipliers)[:36]}"
                  if report.multiplier else f"{'':<16} out {report.output_qparams}")
        if report.inexact:
            print(f"{'':<16} not bit-exact (float op order not reproduced)")
        elif report.reached_by:
            print(f"{'':<16} not bit-exact: reached by {', '.join(report.reached_by)}")
    return 0


def _parse_index(text: str | None):
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise QexactError(f"--index takes comma-separated integers, got {text!r}") from None


def _load_inputs(paths: list[str]) -> list[np.ndarray]:
    inputs = []
    for path in paths:
        try:
            inputs.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as error:
            raise QexactError(f"cannot read input {path!r}: {error}") from None
    return inputs


def render_comparison(comparison) -> str:
    first, second = comparison.engines
    lines = [f"{first} vs {second} ({comparison.isa}): {comparison.outputs_differing} of "
             f"{comparison.outputs_elements} output elements differ"]
    for node in comparison.nodes:
        steps = f", up to {node.max_steps:g} step(s)" if node.max_steps else ""
        if node.cause == "propagated":
            lines.append(f"  {node.name} ({node.op}): {node.differing} of {node.elements} differ"
                         f"{steps}, propagated from an input")
            continue
        lines.append(f"diverges at {node.name} ({node.op}): {node.differing} of {node.elements} "
                     f"elements{steps}; its own arithmetic differs:")
        if node.reason:
            lines.append(f"  why: {node.reason}")
        for engine, labels in node.steps_only_in.items():
            if labels:
                lines.append(f"  only in {engine}: " + "; ".join(labels))
        index = ", ".join(map(str, node.first_index or ()))
        for engine, stages in node.stages.items():
            lines.append(f"  element ({index}) on {engine}:")
            for stage in stages[-6:]:
                lines.append(f"    {stage.name}: {stage.formula} = {stage.result}"[:WIDTH + 40])
    return "\n".join(lines)


def command_compare(arguments) -> int:
    from .compare import compare_engines

    engines = tuple(name.strip() for name in arguments.engines.split(","))
    if len(engines) != 2:
        raise QexactError(f"--engines takes two engines, comma-separated; got {arguments.engines!r}")
    net = _load_model(arguments.model, engines[0], arguments.isa, arguments.backend)
    comparison = compare_engines(net.graph, engines, tuple(_load_inputs(arguments.input)),
                                 arguments.isa)
    print(comparison.to_json() if arguments.json else render_comparison(comparison))
    return 0 if comparison.identical else 1


def command_explain(arguments) -> int:
    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    explanation = net.explain(_load_inputs(arguments.input), layer=arguments.layer,
                              index=_parse_index(arguments.index))
    print(explanation.render("json" if arguments.json else arguments.format))
    return 0


def command_diagnose(arguments) -> int:
    from .diagnose import diagnose
    from .report import render_diagnosis_html

    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    inputs = _load_inputs(arguments.input)
    (theirs,) = _load_inputs([arguments.theirs])
    diagnosis = diagnose(net, inputs, theirs, layer=arguments.layer, rtol=arguments.rtol,
                         atol=arguments.atol)
    if arguments.html:
        explanation = None
        if diagnosis.differing:
            worst = np.unravel_index(int(np.argmax(np.abs(diagnosis.theirs - diagnosis.exact))),
                                     diagnosis.exact.shape)
            layer = arguments.layer or net.graph.outputs[0].name
            explanation = net.explain(inputs, layer=layer if not diagnosis.integer or
                                      arguments.layer else diagnosis.layer,
                                      index=tuple(int(i) for i in worst))
        with open(arguments.html, "w", encoding="utf-8") as page:
            page.write(render_diagnosis_html(diagnosis, explanation))
    print(diagnosis.render("json" if arguments.json else arguments.format))
    return 0 if diagnosis.differing == 0 else 1


def command_conformance(arguments) -> int:
    """Live sweep (torch in a child process), ``--record DIR`` (the same, kept as a recording) or
    ``--replay DIR`` (qexact against a recording, no torch). Exit 1 on any mismatch."""
    from .conformance import record_conformance, replay_recording, run_conformance

    if arguments.record and arguments.replay:
        raise QexactError("--record and --replay exclude each other")
    if arguments.cases < 1 and not arguments.replay:
        raise QexactError(f"--cases must be at least 1, got {arguments.cases}: a sweep of no "
                          "cases checks nothing")
    split = (lambda text: [item for item in text.split(",") if item] if text else None)
    families, engines = split(arguments.ops), split(arguments.engines)
    with progress_bar(arguments.quiet) as progress:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notices
            if arguments.replay:
                report = replay_recording(arguments.replay, families, engines, arguments.isa,
                                          arguments.aten_capability, progress=progress)
            elif arguments.record:
                report = record_conformance(arguments.record, families, engines, arguments.cases,
                                            arguments.seed, arguments.profile, progress)
            else:
                report = run_conformance(families, engines, arguments.cases, arguments.seed,
                                         arguments.profile, progress)
    print(report.to_json() if arguments.json else report.to_text())
    if arguments.report:
        with open(arguments.report, "w", encoding="utf-8") as file:
            file.write(report.to_markdown())
    return 1 if report.mismatches else 0


@contextlib.contextmanager
def progress_bar(quiet: bool, unit: str = "case"):
    """A ``progress(done, total, label)`` callback drawing a tqdm bar on stderr (none if quiet)."""
    from tqdm import tqdm

    with tqdm(total=0, unit=unit, disable=quiet or None, file=sys.stderr, mininterval=1.0,
              dynamic_ncols=True) as bar:
        def progress(done: int, total: int, label: str) -> None:
            bar.total = total
            bar.set_description(label, refresh=False)
            bar.update(done - bar.n)

        yield progress


# --- export / check / certify ------------------------------------------------------------------


def command_export_golden(arguments) -> int:
    from .export.golden import export_golden

    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    inputs = tuple(_load_inputs(arguments.inputs))
    with progress_bar(arguments.quiet, unit="call") as progress:
        written = export_golden(net, inputs, arguments.out, progress=progress)
    summary = {"directory": str(written.directory), "calls": written.cases,
               "nodes": written.nodes, "arrays": written.arrays, "bytes": written.bytes,
               "engine": net.engine.name, "isa": net.engine.isa}
    print(json.dumps(summary) if arguments.json else
          f"wrote {written.directory}: {written.cases} call(s), {written.nodes} nodes, "
          f"{written.arrays} arrays ({written.bytes:,} bytes); engine {net.engine.name}, isa "
          f"{net.engine.isa}. Read {written.directory}/README.md")
    return 0


def _example_inputs(arguments, net) -> tuple:
    """Inputs of the shape to export for: --inputs, --shape, or the shapes the model was
    imported with (``from_torch(..., example_inputs=...)`` records them)."""
    if arguments.inputs:
        return tuple(array[0] if arguments.stacked else array
                     for array in _load_inputs(arguments.inputs))
    if arguments.shape:
        try:
            shape = tuple(int(part) for part in arguments.shape.split(","))
        except ValueError:
            raise QexactError(f"--shape takes comma-separated integers, got "
                              f"{arguments.shape!r}") from None
        return (np.zeros(shape, dtype=np.float32),)
    shapes = net.graph.metadata.get("input_shapes")
    if shapes:
        return tuple(np.zeros(shape, dtype=np.float32) for shape in shapes)
    raise QexactError("give the input shape to export for: --shape N,C,H,W or --inputs x.npy "
                      "(this model file records none)")


def command_export_c(arguments) -> int:
    from .export.c import export_c

    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    integer_only = ("affine" if arguments.integer_form == "affine" else True) \
        if arguments.integer_only else False
    written = export_c(net, arguments.out, _example_inputs(arguments, net),
                       integer_only=integer_only)
    print(written.to_json() if arguments.json else written.summary())
    return 0


def command_check(arguments) -> int:
    from .export.golden import check_golden

    with progress_bar(arguments.quiet, unit="call") as progress:
        report = check_golden(arguments.directory, theirs=arguments.theirs,
                              c_build=arguments.c, progress=progress)
    print(report.render("json" if arguments.json else "text"))
    return 0 if report.equal else 1


def command_certify(arguments) -> int:
    from .export.integer import certify, render_certificates

    net = _load_model(arguments.model, arguments.engine, arguments.isa, arguments.backend)
    values = None
    if arguments.input:
        values = net.run_values(*_load_inputs(arguments.input))
    certificates = certify(net, values)
    print(json.dumps([item.to_dict() for item in certificates]) if arguments.json else
          render_certificates(certificates))
    return 0


def command_info(arguments) -> int:
    info = {"qexact": __version__, "engines": sorted(ENGINES), "isas": list(ISAS),
            "this_cpu_isa": detect_isa(), "backends": list(BACKENDS),
            "default_backend": resolve_backend(),
            "fast_backend": fast_unavailable() or "available"}
    print(json.dumps(info) if arguments.json else
          "\n".join(f"{key}: {value}" for key, value in info.items()))
    return 0


class _SubcommandsWith:
    """``add_subparsers()``'s object, adding the ``common`` options to every subcommand."""

    def __init__(self, common: argparse.ArgumentParser, subparsers):
        self.common, self.subparsers = common, subparsers

    def add_parser(self, name: str, **keywords) -> argparse.ArgumentParser:
        return self.subparsers.add_parser(name, parents=[self.common], **keywords)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qexact",
        description="Bit-exact, explainable integer reference for quantized PyTorch models.")
    parser.add_argument("--version", action="version", version=f"qexact {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    # --debug is accepted after the subcommand too (SUPPRESS: it does not reset a --debug given
    # before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")
    commands = _SubcommandsWith(common, parser.add_subparsers(dest="command", metavar="COMMAND"))

    demo = commands.add_parser("demo", help="the forum scenario, end to end (needs torch)")
    demo.add_argument("--engine", action="append", choices=engine_names(),
                      help="engine(s) to show (default: qnnpack and x86)")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(handler=command_demo)

    def model_command(name, help_text, handler, parent=commands, aliases=()):
        command = parent.add_parser(name, help=help_text, aliases=list(aliases))
        command.add_argument("model", help="a model saved with qexact.save, a TorchScript file "
                             "(torch.jit.save; needs torch), or FILE.py:FACTORY (a function "
                             "returning a quantized model, or (model, example_inputs); needs "
                             "torch)")
        command.add_argument("--engine", help="override the saved engine")
        command.add_argument("--isa", choices=ISAS, help="override the saved ISA")
        command.add_argument("--backend", choices=BACKENDS,
                             help="numpy (the definition) or fast (compiled, equal to it; "
                             "default where numba is installed)")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        command.set_defaults(handler=handler)
        return command

    run = model_command("run", "run a saved model on .npy inputs", command_run)
    run.add_argument("--input", action="append", required=True, help="float32 .npy (repeatable)")
    run.add_argument("--out", help="write the output to this .npy file")
    run.add_argument("--quantized", action="store_true", help="output the integers")
    inspect = model_command("inspect", "per-layer table: op, kernel PyTorch uses, shapes, "
                            "qparams, multipliers, int16 saturation", command_inspect,
                            aliases=["layers"])
    inspect.add_argument("--input", action="append",
                         help="float32 .npy inputs: adds shapes and observed saturation")

    compare = model_command("compare", "where two engines (deployments) of one model differ, "
                            "element by element, and why", command_compare)
    compare.add_argument("--engines", required=True,
                         help="two engines, comma-separated (xnnpack,pt2e_eager)")
    compare.add_argument("--input", action="append", required=True, help="float32 .npy")

    explain = model_command("explain", "every stage of one output element", command_explain)
    explain.add_argument("--input", action="append", required=True, help="float32 .npy")
    explain.add_argument("--layer", help="node to explain (default: the model output)")
    explain.add_argument("--index", help="element index, comma-separated (default: first)")
    explain.add_argument("--format", choices=["text", "markdown", "json"], default="text")

    diagnose = model_command("diagnose", "which known mistake reproduces your numbers",
                             command_diagnose)
    diagnose.add_argument("--input", action="append", required=True, help="float32 .npy")
    diagnose.add_argument("--theirs", required=True,
                          help=".npy of your output: floats, or the quantized integers")
    diagnose.add_argument("--layer", help="any node (your numbers for it, given its exact "
                          "inputs; mistakes are modelled for linear, conv, add/mul, pools, "
                          "activations, upsample and quantize); default: the model output")
    diagnose.add_argument("--html", help="also write a self-contained HTML report here")
    diagnose.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    diagnose.add_argument("--rtol", type=float, default=1e-5, help="float matching tolerance")
    diagnose.add_argument("--atol", type=float, default=1e-6, help="float matching tolerance")

    export = commands.add_parser("export", help="what porting needs: golden vectors, C")
    exports = _SubcommandsWith(common, export.add_subparsers(dest="what", metavar="WHAT",
                                                             required=True))
    golden = model_command("golden", "every layer's inputs, accumulators, outputs and "
                           "parameters for N calls, with a manifest", command_export_golden,
                           exports)
    golden.add_argument("--inputs", action="append", required=True,
                        help="float32 .npy per model input, its first axis indexing the calls "
                        "(x[i] is call i's input; for one call save x[None])")
    golden.add_argument("--out", required=True, help="directory to write (created)")
    golden.add_argument("--quiet", action="store_true", help="no progress bar")
    c_code = model_command("c", "a self-contained C99 library with the engine's numerics, a "
                           "Makefile and model_main", command_export_c, exports)
    c_code.add_argument("--out", required=True, help="directory to write (created)")
    c_code.add_argument("--shape", help="the input shape to export for, comma-separated")
    c_code.add_argument("--inputs", action="append",
                        help="float32 .npy per model input giving the shape (see --stacked)")
    c_code.add_argument("--stacked", action="store_true",
                        help="--inputs hold calls along their first axis (as for golden)")
    c_code.add_argument("--integer-only", action="store_true",
                        help="integer requantization (certified per layer) instead of float")
    c_code.add_argument("--integer-form", choices=["auto", "affine"], default="auto",
                        help="integer-only: 'auto' uses the exact threshold table where no "
                        "multiplier and shift is certified; 'affine' uses the closest "
                        "multiplier and shift there (smaller, not exact)")

    check = commands.add_parser("check", help="re-run a golden directory: with qexact, the C "
                                "build (--c) or your dumped layers (--theirs); names the first "
                                "differing layer, element and the likely mistake")
    check.add_argument("directory", help="a golden directory (qexact export golden)")
    against = check.add_mutually_exclusive_group()
    against.add_argument("--c", metavar="BUILD", help="directory of an exported C build "
                         "(its model_main)")
    against.add_argument("--theirs", metavar="THEIRS", help="directory of <layer>.npy files: "
                         "your outputs per layer (names as qexact layers shows them)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.set_defaults(handler=command_check)

    certify = model_command("certify", "integer-only requantization per GEMM layer: certified "
                            "exact over the reachable accumulator range, or its worst case",
                            command_certify)
    certify.add_argument("--input", action="append", help="float32 .npy: also list the other "
                         "layers' exhaustively checked tables")

    conformance = commands.add_parser(
        "conformance", help="randomized differential sweep of every op x engine vs torch; "
        "record it, or replay a recording without torch",
        description="Live (default): draw cases, run PyTorch in a child process (a crash is "
        "reported, the sweep goes on) and qexact here, compare every element. --record DIR: the "
        "same, and keep inputs, parameters, outputs and this CPU in DIR. --replay DIR: run qexact "
        "against a recording (no torch needed), with the recording machine's ISA.")
    conformance.add_argument("--cases", type=int, default=50, help="cases per op and engine")
    conformance.add_argument("--ops", help="comma-separated families (default: all)")
    conformance.add_argument("--engines", help="comma-separated engines (default: all)")
    conformance.add_argument("--seed", type=int, default=0)
    conformance.add_argument("--profile", choices=["default", "pytorch"], default="default",
                             help="how cases are drawn: qexact's generators, or as PyTorch's own "
                             "quantized-op tests draw them")
    conformance.add_argument("--record", metavar="DIR", help="write a recording to DIR")
    conformance.add_argument("--replay", metavar="DIR", help="replay the recording in DIR")
    conformance.add_argument("--isa", choices=ISAS,
                             help="replay: the ISA to emulate (default: the recording's)")
    conformance.add_argument("--aten-capability", choices=ATEN_CAPABILITIES,
                             help="replay: ATen's capability (default: the recording's)")
    conformance.add_argument("--report", default="conformance.md",
                             help="markdown report path (default: conformance.md; '' for none)")
    conformance.add_argument("--json", action="store_true", help="print the report as JSON")
    conformance.add_argument("--quiet", action="store_true", help="no progress bar")
    conformance.set_defaults(handler=command_conformance)

    info = commands.add_parser("info", help="engines, ISAs, and what this CPU runs")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=command_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help()
        return 0
    try:
        return arguments.handler(arguments)
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stdout = open(os.devnull, "w")
        return 0
    except (QexactError, OSError) as error:  # OSError: a file qexact was told to read or write
        if getattr(arguments, "debug", False):
            raise
        print(f"qexact: error: {_error_text(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qexact: interrupted", file=sys.stderr)
        return 130


def _error_text(error: Exception) -> str:
    """The message of a qexact error; an OSError's with the file it concerns."""
    if isinstance(error, OSError) and error.filename is not None:
        return f"cannot access {error.filename!r}: {error.strerror or error}"
    return str(error)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
