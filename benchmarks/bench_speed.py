"""qexact vs PyTorch, one process, same machine: speed, exactness and peak memory (issue 13).

    .venv/bin/python benchmarks/bench_speed.py [--repeat N] [--quick] [--only PATTERN]
        [--backends fast,numpy] [--engines x86,qnnpack] [--threads 1|all] [--markdown]
        [--no-memory]

Workloads: a quantized Linear(1024, 1024) on a (64, 1024) input, torchvision's quantizable
ResNet-18 and MobileNetV2 (random weights, calibrated) at 224x224, batch 1 and 8, and the forum
model (Linear(10, 5), one call, in microseconds); engines x86 and qnnpack; qexact's backends
"fast" and "numpy". Every row checks that qexact's output equals PyTorch's bit for bit
(``np.array_equal`` of the float32 bit patterns); a row that does not prints NOT EXACT and the
script exits 1. A configuration that fails prints its error in its row and the run goes on
(exit 1 at the end). See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from _timing import (cpu_description, first_call, interleaved_best_times,  # noqa: E402
                     peak_extra_kib, release_free_memory,
                     single_thread_environment, status_kib, threads)

WORKLOADS = ("linear", "resnet18", "mobilenet_v2", "forum")
TITLES = {"linear": "Linear 64x1024x1024", "resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2",
          "forum": "forum Linear(10, 5)"}
SIDE = 224
BACKENDS = ("fast", "numpy")
ENGINES = ("x86", "qnnpack")


# --- the models -------------------------------------------------------------------------------


def _linear_module():
    """QuantStub -> Linear(1024, 1024) -> DeQuantStub, defined here so the memory subprocess
    (which runs this file as ``__main__``) can unpickle it."""
    from torch import nn
    from torch.ao.quantization import DeQuantStub, QuantStub

    global QuantizedLinearModel

    class QuantizedLinearModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.fc = nn.Linear(1024, 1024)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.fc(self.quant(x)))

    QuantizedLinearModel.__qualname__ = "QuantizedLinearModel"
    return QuantizedLinearModel


def build_model(workload: str, engine: str):
    """``(quantized eager model, batch sizes)``: converted the way a user does it on ``engine``
    (its default qconfig, calibrated on random batches)."""
    import torch
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = engine
    if workload == "linear":
        torch.manual_seed(0)
        model = _linear_module()().eval()
        model.qconfig = tq.get_default_qconfig(engine)
        prepared = tq.prepare(model, inplace=False)
        with torch.no_grad():
            for _ in range(4):
                prepared(torch.randn(64, 1024))
        return tq.convert(prepared, inplace=False).eval(), (64,)  # "batch": M = 64 rows
    if workload == "forum":
        from support.models import build, forum_model

        model, _ = build(forum_model, engine)
        return model, (1,)
    from support.torchvision_models import build_torchvision

    # torchvision's quantizable architecture, BN statistics and calibration on random inputs
    # (at the side the test support uses); the convolutions run at any side, here 224.
    model, _ = build_torchvision(workload, engine)
    return model, (1, 8)


def input_shape(workload: str, batch: int) -> tuple[int, ...]:
    if workload == "linear":
        return (64, 1024)
    if workload == "forum":
        return (batch, 10)
    return (batch, 3, SIDE, SIDE)


def make_input(workload: str, batch: int):
    import torch

    generator = torch.Generator().manual_seed(1234 + batch)
    shape = input_shape(workload, batch)
    if workload == "forum":
        return torch.rand(shape, generator=generator)
    return torch.randn(shape, generator=generator)


# --- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    engine: str
    batch: int
    threads: str            # "1" or "all"
    backend: str
    torch_s: float | None = None
    qexact_s: float | None = None
    first_call_s: float | None = None
    exact: bool | None = None
    error: str = ""
    note: str = ""
    memory_torch_kib: int | None = None
    memory_qexact_kib: int | None = None
    memory_error: str = ""

    @property
    def ratio(self) -> float | None:
        if self.torch_s and self.qexact_s is not None:
            return self.qexact_s / self.torch_s
        return None

    @property
    def memory_ratio(self) -> float | None:
        if self.memory_torch_kib and self.memory_qexact_kib is not None:
            return self.memory_qexact_kib / self.memory_torch_kib
        return None

    @property
    def label(self) -> str:
        return f"{self.workload} {self.engine} b{self.batch}"


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    thread_settings: dict[str, dict[str, int]] = field(default_factory=dict)
    memory_jobs: list[tuple[list[Row], dict]] = field(default_factory=list)


def same_bits(mine, theirs) -> bool:
    """qexact's output equals torch's: same shape and dtype, same bit patterns."""
    import numpy as np

    mine = np.asarray(mine)
    theirs = np.asarray(theirs)
    if mine.shape != theirs.shape or mine.dtype != theirs.dtype:
        return False
    if mine.dtype.kind == "f":
        unsigned = np.dtype(f"u{mine.dtype.itemsize}")
        return np.array_equal(mine.view(unsigned), theirs.view(unsigned))
    return np.array_equal(mine, theirs)


def torch_output(value):
    return (value.int_repr() if value.is_quantized else value).numpy()


def short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- timing (parent process) ------------------------------------------------------------------


def measure_config(run: Run, model, workload: str, engine: str, batch: int, thread_mode: str,
                   backends: list[str], repeat: int, files: dict | None) -> None:
    import qexact

    x = make_input(workload, batch)
    array = x.numpy()
    count = 1 if thread_mode == "1" else None
    with threads(count) as settings:
        run.thread_settings.setdefault(thread_mode, settings)
        expected = torch_output(model(x))
        rows: dict[str, Row] = {}
        calls = {"torch": lambda: model(x)}
        last: dict[str, object] = {}
        failures: dict[str, str] = {}
        for backend in backends:
            row = Row(workload, engine, batch, thread_mode, backend)
            run.rows.append(row)
            rows[backend] = row
            try:
                net = qexact.from_torch(model, example_inputs=(x,), engine=engine,
                                        backend=backend)
                if net.backend != backend:
                    raise RuntimeError(f"asked for backend {backend!r}, the net runs "
                                       f"{net.backend!r}")
                row.first_call_s, output = first_call(lambda: net(array))
                row.exact = same_bits(output, expected)
                if workload in ("resnet18", "mobilenet_v2") and len(set(
                        expected.ravel().tolist())) < 16:
                    row.note = "degenerate output (under 16 distinct values)"
            except Exception as error:  # noqa: BLE001 - a failing configuration is a result
                row.error = short_error(error)
                if os.environ.get("QEXACT_BENCH_TRACEBACK"):
                    traceback.print_exc()
                continue

            def call(net=net, backend=backend):
                if backend in failures:
                    return
                try:
                    last[backend] = net(array)
                except Exception as error:  # noqa: BLE001 - a later call failing is a result
                    failures[backend] = f"while timing: {short_error(error)}"

            calls[backend] = call
        micro = workload == "forum"
        try:
            if thread_mode == "1":
                best = interleaved_best_times(calls, max(100, 100 * repeat) if micro else repeat)
            else:  # every side's thread pool asleep before the next side's turn
                best = interleaved_best_times(calls, repeat, per_turn=100 if micro else 1,
                                              pause=0.2)
        except Exception as error:  # noqa: BLE001
            for row in rows.values():
                row.error = row.error or f"while timing: {short_error(error)}"
            return
        for backend, row in rows.items():
            row.torch_s = best["torch"]
            row.error = row.error or failures.get(backend, "")
            if backend in best and not row.error:
                row.qexact_s = best[backend]
                if not same_bits(last[backend], expected):  # the last timed call, too
                    row.exact = False
        timed = [row for backend, row in rows.items() if backend in calls and not row.error]
        if files is not None and thread_mode == "1" and timed:
            run.memory_jobs.append((timed, dict(files, side="torch")))
            run.memory_jobs += [([row], dict(files, side=row.backend)) for row in timed]
        for backend, row in rows.items():
            progress(f"  {row.label:<24} threads {thread_mode:<3} {backend:<6} "
                     + (f"ERROR {row.error}" if row.error else
                        f"torch {format_time(row.torch_s)}, qexact {format_time(row.qexact_s)}"
                        f" ({row.ratio:.2f}x), first call {row.first_call_s:.2f} s, "
                        + ("exact" if row.exact else "NOT EXACT")))


def save_for_memory(directory: str, model, workload: str, engine: str, batches):
    """Files the memory subprocesses load: the torch model's state dict, the qexact net
    (``qexact.save``; None where it cannot be saved: the child converts the torch model)."""
    import numpy as np
    import torch

    import qexact

    stem = os.path.join(directory, f"{workload}-{engine}")
    # a state dict: pickled whole, torch's quantized ConvReLU2d does not load back
    torch.save(model.state_dict(), stem + ".pt")
    files = {"workload": workload, "engine": engine, "torch_model": stem + ".pt",
             "net": None, "inputs": {}}
    for batch in batches:
        path = f"{stem}-b{batch}.npy"
        np.save(path, make_input(workload, batch).numpy())
        files["inputs"][batch] = path
    try:
        x = make_input(workload, batches[0])
        net = qexact.from_torch(model, example_inputs=(x,), engine=engine, backend="numpy")
        qexact.save(net, stem + ".qexact")
        files["net"] = stem + ".qexact"
    except Exception:  # noqa: BLE001 - the child falls back to from_torch
        pass
    return files


# --- memory (one fresh subprocess per workload and side) --------------------------------------


def memory_child(spec: dict) -> None:
    """Run in a fresh process: load one side, warm it up, print the peak extra KiB of one call."""
    single_thread_environment()
    warnings.simplefilter("ignore")
    import numpy as np

    x = np.load(spec["input"])
    side = spec["side"]
    if side == "torch" or spec["net"] is None:
        import torch

        torch.set_num_threads(1)
        model, _ = build_model(spec["workload"], spec["engine"])  # the same seeded build
        model.load_state_dict(torch.load(spec["torch_model"]))
        release_free_memory()
    if side == "torch":
        tensor = torch.from_numpy(x)

        def forward():
            return model(tensor)
    else:
        import qexact

        if spec["net"] is not None:
            net = qexact.load(spec["net"], backend=side)
        else:
            net = qexact.from_torch(model, example_inputs=(torch.from_numpy(x),),
                                    engine=spec["engine"], backend=side)
            del model

        def forward():
            return net(x)
    for _ in range(spec.get("warmup", 2)):
        forward()
    extra = peak_extra_kib(forward)
    print(json.dumps({"extra_kib": extra, "rss_kib": status_kib("VmRSS")}))


def run_memory_jobs(run: Run, warmup: int) -> None:
    environment = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
                       # fixed thresholds: freed blocks go back to the OS, so the resident set
                       # follows the live allocations in both sides alike
                       MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    for targets, files in run.memory_jobs:
        batch = targets[0].batch
        spec = {key: files[key] for key in ("workload", "engine", "torch_model", "net", "side")}
        spec["input"] = files["inputs"][batch]
        spec["warmup"] = warmup
        try:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child",
                                   json.dumps(spec)], capture_output=True, text=True,
                                  env=environment, timeout=900)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"memory subprocess failed: {tail}")
            extra = json.loads(lines[-1])["extra_kib"]
            for row in targets:
                if spec["side"] == "torch":
                    row.memory_torch_kib = extra
                else:
                    row.memory_qexact_kib = extra
            progress(f"  memory {targets[0].label:<24} {spec['side']:<6} "
                     f"{extra / 1024:.1f} MiB")
        except Exception as error:  # noqa: BLE001
            for row in targets:
                row.memory_error = short_error(error)
            progress(f"  memory {targets[0].label:<24} {spec['side']:<6} "
                     f"ERROR {short_error(error)}")


# --- printing ---------------------------------------------------------------------------------


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 10:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_kib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def row_cells(row: Row) -> list[str]:
    if row.error:
        exact = "ERROR"
    elif row.exact is None:
        exact = "-"
    else:
        exact = "yes" if row.exact else "NOT EXACT"
    memory_ratio = row.memory_ratio
    cells = [TITLES[row.workload], row.engine, str(row.batch), row.threads, row.backend,
             format_time(row.torch_s), format_time(row.qexact_s),
             "-" if row.ratio is None else f"{row.ratio:.2f}", exact,
             "-" if row.first_call_s is None else f"{row.first_call_s:.2f}",
             format_kib(row.memory_torch_kib), format_kib(row.memory_qexact_kib),
             "-" if memory_ratio is None else f"{memory_ratio:.2f}"]
    notes = [text for text in (row.error, row.note,
                               row.memory_error and f"memory: {row.memory_error}") if text]
    cells.append("; ".join(notes))
    return cells


HEADER = ["workload", "engine", "batch", "threads", "backend", "torch", "qexact",
          "qexact/torch", "exact", "first call s", "mem torch MiB", "mem qexact MiB",
          "mem qexact/torch", "error / note"]


def print_table(header: list[str], lines: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for cells in lines:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return
    widths = [max(len(header[i]), *(len(cells[i]) for cells in lines)) if lines
              else len(header[i]) for i in range(len(header))]
    print("  ".join(text.ljust(width) for text, width in zip(header, widths)).rstrip())
    for cells in lines:
        print("  ".join(text.ljust(width) for text, width in zip(cells, widths)).rstrip())


def goals(run: Run, cpu: dict[str, str]) -> list[list[str]]:
    """The issue's goal table: the measured ratios and met / not met per goal."""
    def ratios(workloads, engines, backend, batch=8):
        found = []
        for workload in workloads:
            for engine in engines:
                rows = [row for row in run.rows if (row.workload, row.engine, row.batch,
                        row.threads, row.backend) == (workload, engine, batch, "1", backend)]
                label = f"{TITLES[workload]} {engine} b{batch}"
                if not rows:
                    found.append((label, None, "not in this run"))
                elif rows[0].error:
                    found.append((label, None, "error"))
                elif not rows[0].exact:
                    found.append((label, None, "NOT EXACT"))
                else:
                    found.append((label, rows[0].ratio, ""))
        return found

    def verdict(found, limits, unit="x", scale=1.0):
        measured, missing, ok = [], [], True
        for (label, value, why), limit in zip(found, limits):
            if value is None:
                missing.append(f"{label}: {why}")
                continue
            measured.append(f"{label}: {value * scale:.2f}{unit}")
            ok = ok and value * scale <= limit
        if any(text.endswith("NOT EXACT") for text in missing):
            return "; ".join(measured + missing), "not met (NOT EXACT)"
        if missing and not measured:
            return "; ".join(missing), "not measured"
        text = "; ".join(measured + missing)
        if missing:
            return text, "not met" if not ok else "partly measured"
        return text, "met" if ok else "not met"

    vnni = cpu["vnni"] == "yes"
    lines = []
    for title, goal, found, limits in (
            ("ResNet-18 x86 b8, AVX512-VNNI CPU, fast path", "<= 1.0",
             ratios(["resnet18"], ["x86"], "fast"), [1.0]),
            ("MobileNetV2 x86 b8, VNNI, fast path", "<= 1.5",
             ratios(["mobilenet_v2"], ["x86"], "fast"), [1.5]),
            ("ResNet-18 and MobileNetV2 qnnpack b8, fast path", "<= 0.2",
             ratios(["resnet18", "mobilenet_v2"], ["qnnpack"], "fast"), [0.2, 0.2]),
            ("ResNet-18 / MobileNetV2 x86 b8 on an AVX2 CPU, fast path", "<= 2 / <= 3",
             ratios(["resnet18", "mobilenet_v2"], ["x86"], "fast"), [2.0, 3.0]),
            ("NumPy path, any CPU, ResNet-18 / MobileNetV2 b8", "<= 5 / <= 8",
             ratios(["resnet18"], ENGINES, "numpy") + ratios(["mobilenet_v2"], ENGINES, "numpy"),
             [5.0, 5.0, 8.0, 8.0])):
        if "VNNI" in title and not vnni:
            lines.append([title, goal, "-", "not measured: this CPU has no AVX512-VNNI"])
            continue
        if "AVX2 CPU" in title and vnni:
            lines.append([title, goal, "-", "not measured: this CPU has AVX512-VNNI (the fast "
                          "path runs vpdpbusd here); run on an AVX2-only CPU"])
            continue
        lines.append([title, goal, *verdict(found, limits)])
    for backend in BACKENDS:
        rows = [row for row in run.rows if row.workload == "forum" and row.threads == "1"
                and row.backend == backend]
        found = [(f"{row.engine}", None if row.error or not row.exact else row.qexact_s,
                  row.error and "error" or ("NOT EXACT" if not row.exact else "")) for row in rows]
        if found:
            lines.append([f"forum Linear(10, 5), one call ({backend})", "<= 20 us",
                          *verdict(found, [20.0] * len(found), unit=" us", scale=1e6)])
    for backend in BACKENDS:
        rows = [row for row in run.rows if row.threads == "1" and row.backend == backend
                and row.memory_ratio is not None]
        if rows:
            worst = max(rows, key=lambda row: row.memory_ratio)
            lines.append([f"peak extra memory of one forward ({backend})", "<= 2x PyTorch's",
                          f"worst {worst.memory_ratio:.2f}x ({TITLES[worst.workload]} "
                          f"{worst.engine} b{worst.batch}) over {len(rows)} rows",
                          "met" if worst.memory_ratio <= 2.0 else "not met"])
    return lines


def host_lines(run: Run, repeat: int) -> list[str]:
    import numpy
    import torch

    import qexact

    try:
        import numba
        numba_version = numba.__version__
    except ImportError:
        numba_version = "not installed"
    cpu = cpu_description()
    thread_text = "; ".join(
        f"{'one thread' if mode == '1' else 'all threads'} ("
        + ", ".join(f"{library} {count}" for library, count in settings.items()) + ")"
        for mode, settings in run.thread_settings.items())
    return [f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs; flags: {cpu['flags']} "
            f"(AVX512-VNNI: {cpu['vnni']}); qexact isa: {qexact.detect_isa()}",
            f"qexact {qexact.__version__}, torch {torch.__version__}, numba {numba_version}, "
            f"numpy {numpy.__version__}, Python {sys.version.split()[0]}",
            f"threads: {thread_text or '-'}; time: best of {repeat} interleaved calls "
            f"(forum: best of {max(100, 100 * repeat)}) after one warm-up; "
            f"{datetime.date.today().isoformat()}"]


# --- main -------------------------------------------------------------------------------------


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per side (best of N)")
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, batch 1 only, one warm-up for memory (CI smoke)")
    parser.add_argument("--only", default="", metavar="PATTERN",
                        help="regular expression on 'workload engine bN' (e.g. 'resnet18.*b8')")
    parser.add_argument("--backends", default=None,
                        help="default: fast,numpy (numpy only where the fast backend cannot run)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--threads", choices=("1", "all"), default="1",
                        help="'all': also rows with every thread on both sides")
    parser.add_argument("--markdown", action="store_true",
                        help="print Markdown tables (for the README) with the host")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.repeat = 1
    arguments.backends = [name.strip() for name in (arguments.backends or "").split(",")
                          if name.strip()]
    arguments.engines = [name.strip() for name in arguments.engines.split(",") if name.strip()]
    for name in arguments.backends:
        if name not in BACKENDS:
            parser.error(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    return arguments


def main(argv=None) -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--memory-child":
        memory_child(json.loads(sys.argv[2]))
        return 0
    arguments = parse_arguments(argv)
    if arguments.threads == "1":
        single_thread_environment()  # before NumPy and torch load; "all" limits at run time
    warnings.simplefilter("ignore")
    import torch  # noqa: F401 - loaded before qexact's kernels pick their threads

    import qexact  # noqa: F401
    from qexact import kernels

    if not arguments.backends:
        arguments.backends = list(BACKENDS) if kernels.fast_available() else ["numpy"]
        if not kernels.fast_available():
            progress(f"backend 'fast' skipped: {kernels.fast_unavailable()}")
    if "fast" in arguments.backends and kernels.fast_available():
        import numba  # noqa: F401 - imported so that threads() pins its pool too
    pattern = re.compile(arguments.only, re.IGNORECASE) if arguments.only else None
    thread_modes = ["1"] + (["all"] if arguments.threads == "all" else [])
    run = Run()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qexact-bench-") as directory:
        for workload in WORKLOADS:
            for engine in arguments.engines:
                batches = {"linear": (64,), "forum": (1,)}.get(
                    workload, (1,) if arguments.quick else (1, 8))
                labels = [f"{workload} {engine} b{batch}" for batch in batches]
                if pattern and not any(pattern.search(label) for label in labels):
                    continue
                progress(f"{TITLES[workload]}, {engine}: building")
                try:
                    with threads(1):
                        model, _ = build_model(workload, engine)
                except Exception as error:  # noqa: BLE001
                    for batch in batches:
                        for backend in arguments.backends:
                            run.rows.append(Row(workload, engine, batch, "1", backend,
                                                error=f"building: {short_error(error)}"))
                    continue
                selected = [batch for batch, label in zip(batches, labels)
                            if not pattern or pattern.search(label)]
                files = None
                if not arguments.no_memory and workload != "forum":
                    try:
                        files = save_for_memory(directory, model, workload, engine, selected)
                    except Exception as error:  # noqa: BLE001
                        progress(f"  memory files: {short_error(error)}")
                for batch in selected:
                    for thread_mode in thread_modes:
                        measure_config(run, model, workload, engine, batch, thread_mode,
                                       arguments.backends, arguments.repeat, files)
        if not arguments.no_memory:
            progress("peak memory: one fresh subprocess per workload and side")
            run_memory_jobs(run, warmup=1 if arguments.quick else 2)
    elapsed = time.perf_counter() - started
    cpu = cpu_description()
    markdown = arguments.markdown
    print()
    for line in host_lines(run, arguments.repeat):
        print(f"{line}  " if markdown else line)
    print()
    print_table(HEADER, [row_cells(row) for row in run.rows], markdown)
    print()
    print("Goals of issue 13 (ratio qexact / PyTorch, one process, one thread each):")
    print()
    print_table(["workload", "goal", "measured", "status"], goals(run, cpu), markdown)
    print()
    inexact = [row for row in run.rows if row.exact is False]
    failed = [row for row in run.rows if row.error]
    print(f"{len(run.rows)} rows in {elapsed:.0f} s: {len(run.rows) - len(inexact) - len(failed)} "
          f"exact, {len(inexact)} NOT EXACT, {len(failed)} failed")
    if inexact:
        banner = "!" * 78
        message = "\n".join([banner, "NOT EXACT: qexact's output differs from PyTorch's in:"]
                            + [f"  {row.label} threads {row.threads} backend {row.backend}"
                               for row in inexact] + [banner])
        print(message)
    if failed:
        print("FAILED:")
        for row in failed:
            print(f"  {row.label} threads {row.threads} backend {row.backend}: {row.error}")
    return 1 if inexact or failed else 0


if __name__ == "__main__":
    sys.exit(main())
