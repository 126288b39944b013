"""The conformance sweep in its three modes, one engine loop, one report.

- ``run_conformance``: live. Cases are drawn here, PyTorch runs them in a child process
  (``worker.TorchWorker``: a crash ends the case, not the sweep), qexact runs them here.
- ``record_conformance``: the same sweep, keeping every case and torch's result as a recording.
- ``replay_recording``: qexact against a recording; never imports torch.

Case ``i`` of a family on an engine draws from ``default_rng([seed, crc32(family), engine index,
i])``: selecting families, engines or a case count leaves every other case alone.
"""

from __future__ import annotations

import datetime
import json
import platform
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..engines import detect_aten_capability, detect_isa, engine_names, get_engine
from ..errors import QexactError, UnsupportedError
from ..jsonable import JsonDocument
from . import recording
from .family import FAMILIES, Case, Family, compare_outputs, load_families

ENGINES = engine_names()
"""Quantized engines (the registry ``qexact.engines.ENGINES``); a float family runs on ``aten``."""
FIRST_ENGINES = 4
"""The engines qexact 0.1 had: the first four of the registry, case streams 0..3."""
STREAM_ENGINES = ENGINES[:FIRST_ENGINES] + ("aten",) + ENGINES[FIRST_ENGINES:]
"""Case-stream order: each registered engine in registry order, with ``aten`` at 4 where qexact
0.1 put it; an engine appended to the registry later gets the next stream, so no stream moves."""
DRAW_ATTEMPTS = 50

Progress = Callable[[int, int, str], None]


# --- the report -----------------------------------------------------------------------------

@dataclass
class CellResult:
    family: str
    engine: str
    cases: int = 0
    """Cases compared (torch and qexact both gave a result)."""
    elements: int = 0
    mismatches: int = 0
    first_mismatch: str = ""
    not_modelled: int = 0
    """Elements of outputs qexact gives as NotModelled."""
    crashes: list[dict] = field(default_factory=list)
    torch_refused: list[dict] = field(default_factory=list)
    qexact_refused: list[dict] = field(default_factory=list)
    nondeterministic: list[dict] = field(default_factory=list)
    seconds: float | None = None

    @property
    def op(self) -> str:
        return self.family


@dataclass
class ConformanceReport(JsonDocument):
    mode: str
    """``live``, ``record`` or ``replay``."""
    torch_version: str
    isa: str
    aten_capability: str
    seed: int | None
    results: list[CellResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    """Cells left out (PyTorch's result undefined there), with the reason."""
    not_modelled: list[str] = field(default_factory=list)
    """Replay: recorded families qexact's registry lacks."""
    source: str = ""
    """Replay: the recording's directory."""
    machine: dict = field(default_factory=dict)
    """Live and record: what torch's child reported (version, CPU capability, engines)."""

    @property
    def mismatches(self) -> int:
        return sum(result.mismatches for result in self.results)

    @property
    def crashes(self) -> int:
        return sum(len(result.crashes) for result in self.results)

    def cell(self, family: str, engine: str) -> CellResult:
        return next(r for r in self.results if (r.family, r.engine) == (family, engine))

    def _title(self) -> str:
        where = f" of {self.source}" if self.source else ""
        seed = "" if self.seed is None else f", seed {self.seed}"
        return (f"qexact conformance {self.mode}{where} (torch {self.torch_version}, isa "
                f"{self.isa}, aten {self.aten_capability}{seed})")

    def _problems(self) -> list[str]:
        lines = []
        for r in self.results:
            cell = f"{r.family} on {r.engine}"
            if r.mismatches:
                lines.append(f"mismatch: {cell}: {r.first_mismatch}")
            lines += [f"PyTorch crashed: {cell} {c['case']} ({c['exit']}"
                      f"{', alone too' if c.get('crashes_alone') else ''}): "
                      f"{_brief(c.get('params'))}" for c in r.crashes]
            lines += [f"qexact refused: {cell} {q['case']}: {q['message']}"
                      for q in r.qexact_refused]
        return lines

    def to_text(self) -> str:
        lines = [self._title(),
                 f"{'family':<20} {'engine':<8} {'cases':>6} {'elements':>9} {'mismatch':>8} "
                 f"{'crash':>5} {'t-ref':>5} {'q-ref':>5} {'nondet':>6} {'n/m':>6}"]
        for r in self.results:
            lines.append(f"{r.family:<20} {r.engine:<8} {r.cases:>6} {r.elements:>9} "
                         f"{r.mismatches:>8} {len(r.crashes):>5} {len(r.torch_refused):>5} "
                         f"{len(r.qexact_refused):>5} {len(r.nondeterministic):>6} "
                         f"{r.not_modelled:>6}")
        lines += self._problems()
        lines += [f"not run: {reason}" for reason in self.not_run]
        lines += [f"not modelled: {reason}" for reason in self.not_modelled]
        lines.append(f"total mismatches: {self.mismatches}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"# {self._title()}", "",
                 "| family | engine | cases | elements | mismatches | crashes | torch refused | "
                 "qexact refused | nondeterministic | not modelled |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.family} | {r.engine} | {r.cases} | {r.elements} | {r.mismatches}"
                         f" | {len(r.crashes)} | {len(r.torch_refused)} | "
                         f"{len(r.qexact_refused)} | {len(r.nondeterministic)} | "
                         f"{r.not_modelled} |")
        problems = self._problems()
        if problems:
            lines += ["", "## Mismatches, crashes, qexact refusals", ""]
            lines += [f"- {line}" for line in problems]
        refusals = _count_messages(r for r in self.results for r in r.torch_refused)
        if refusals:
            lines += ["", "## PyTorch refused (not compared)", ""]
            lines += [f"- {count} x {message}" for message, count in refusals]
        if any(r.nondeterministic for r in self.results):
            lines += ["", "## Nondeterministic in PyTorch (not compared)", ""]
            lines += [f"- {r.family} on {r.engine}: "
                      f"{', '.join(n['case'] for n in r.nondeterministic)}"
                      for r in self.results if r.nondeterministic]
        if self.not_run:
            lines += ["", "## Not run (PyTorch's result is undefined)", ""]
            lines += [f"- {reason}" for reason in self.not_run]
        if self.not_modelled:
            lines += ["", "## Not modelled by qexact", ""]
            lines += [f"- {reason}" for reason in self.not_modelled]
        lines += ["", f"Total mismatches: {self.mismatches}."]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return json.loads(self.to_json())  # asdict keeps NumPy values; the encoder makes them plain

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(asdict(self) | {"mismatches": self.mismatches}, indent=indent,
                          default=recording._json_default)


def _brief(params) -> str:
    return json.dumps(params, default=recording._json_default) if params else ""


def _count_messages(entries: Iterable[dict]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["message"]] = counts.get(entry["message"], 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


# --- selection ------------------------------------------------------------------------------

def _families(names) -> list[Family]:
    load_families()
    if not names:
        return list(FAMILIES.values())
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise UnsupportedError(f"no conformance family {unknown}; families: {sorted(FAMILIES)}")
    return [FAMILIES[name] for name in names]


def _cells(families: list[Family], engines) -> tuple[list[tuple[Family, str]], list[str]]:
    if engines:
        bad = [engine for engine in engines if engine not in STREAM_ENGINES]
        if bad:
            raise UnsupportedError(f"unknown engine(s) {bad}; engines: {list(STREAM_ENGINES)}")
    cells, not_run = [], []
    for family in families:
        for engine in family.engines or ENGINES:
            if engines and engine not in engines:
                continue
            if engine in family.not_on:
                not_run.append(f"{family.name} on {engine}: {family.not_on[engine]}")
            else:
                cells.append((family, engine))
    return cells, not_run


def qexact_engine(engine: str, isa: str | None = None, aten_capability: str | None = None):
    """qexact's engine for a cell (``aten``, a float family's cell: fbgemm's object, whose
    quantized numerics go unused; float kernels read only its ATen capability)."""
    return get_engine("fbgemm" if engine == "aten" else engine, isa, aten_capability)


def draw_case(family: Family, profile: str, seed: int, engine: str, index: int) -> Case:
    """Case ``index`` of ``family`` on ``engine``: its own stream, whatever else is selected."""
    rng = np.random.default_rng([seed, zlib.crc32(family.name.encode()),
                                 STREAM_ENGINES.index(engine), index])
    draw = family.drawer(profile)
    for _ in range(DRAW_ATTEMPTS):
        case = draw(rng, engine)
        if case is not None:
            return case
    raise RuntimeError(f"conformance: no admissible {family.name} case on {engine} in "
                       f"{DRAW_ATTEMPTS} draws")


def run_qexact_case(family: Family, case: Case, engine) -> tuple[dict | None, str]:
    """qexact's outputs, or None and the message of the ``QexactError`` it refused with."""
    try:
        return family.run_qexact(case, engine), ""
    except QexactError as error:
        return None, f"{type(error).__name__}: {error}"


def _compare(result: CellResult, name: str, case: Case, ours, message: str, theirs) -> None:
    """Count one case that torch computed: a comparison, or a qexact refusal."""
    if ours is None:
        result.qexact_refused.append({"case": name, "message": message, "params": case.params})
        return
    comparison = compare_outputs(ours, theirs)
    result.cases += 1
    result.elements += comparison.elements
    result.mismatches += comparison.mismatches
    result.not_modelled += comparison.not_modelled
    if comparison.mismatches and not result.first_mismatch:
        result.first_mismatch = f"{name}: {comparison.first} ({_brief(case.params)})"


# --- live and record ------------------------------------------------------------------------

def _sweep(mode: str, families, engines, cases: int, seed: int, profile: str,
           progress: Progress | None, keep: Callable | None, worker=None) -> ConformanceReport:
    from .worker import TorchWorker

    if cases < 1:
        raise UnsupportedError(f"nothing to run: cases must be >= 1, got {cases}")
    cells, not_run = _cells(_families(families), engines)
    isa, capability = detect_isa(), detect_aten_capability()
    own_worker = worker is None
    worker = worker or TorchWorker()
    try:
        info = worker.info or worker.start()
        report = ConformanceReport(mode, info["torch_version"], isa, capability, seed,
                                   not_run=not_run, machine=dict(info))
        total, done = len(cells) * cases, 0
        for family, engine in cells:
            engine_object = qexact_engine(engine, isa, capability)
            result = CellResult(family.name, engine)
            started = time.monotonic()
            for index in range(cases):
                name = recording.case_name(index)
                case = draw_case(family, profile, seed, engine, index)
                outcome = worker.run(family, engine, case)
                alone = None
                if outcome.kind == "crash":  # once more in a fresh child: alone, or after others?
                    alone = worker.run(family, engine, case)
                    result.crashes.append({
                        "case": name, "exit": outcome.exit, "crashes_alone": alone.kind == "crash",
                        "params": case.params, "stderr_tail": outcome.stderr_tail})
                    outcome = alone
                if outcome.kind == "refused":
                    result.torch_refused.append({"case": name, "message": outcome.message,
                                                 "params": case.params})
                elif outcome.kind == "nondeterministic":
                    result.nondeterministic.append({"case": name, "params": case.params})
                elif outcome.kind == "ok":
                    ours, message = run_qexact_case(family, case, engine_object)
                    _compare(result, name, case, ours, message, outcome.outputs)
                    if keep is not None:
                        keep(family, engine, name, case, outcome.outputs)
                done += 1
                if progress is not None:
                    progress(done, total, f"{family.name} / {engine}")
            result.seconds = round(time.monotonic() - started, 1)
            report.results.append(result)
    finally:
        if own_worker:
            worker.close()
    return report


def run_conformance(families=None, engines=None, cases: int = 100, seed: int = 0,
                    profile: str = "default", progress: Progress | None = None,
                    worker=None) -> ConformanceReport:
    """Run ``cases`` cases of each family on each engine, torch in a child process, qexact here;
    ``progress(done, total, label)`` after each case."""
    return _sweep("live", families, engines, cases, seed, profile, progress, None, worker)


def record_conformance(directory, families=None, engines=None, cases: int = 100, seed: int = 0,
                       profile: str = "default", progress: Progress | None = None,
                       worker=None) -> ConformanceReport:
    """The live sweep, also writing every case and torch's result to ``directory`` (the schema
    of ``tests/data/recordings/avx512_vnni``), with the machine in ``manifest.json``."""
    from ..engines.base import cpu_flags

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stored: dict[tuple[str, str], dict] = {}

    def keep(family, engine, name, case, outputs):
        cell = stored.setdefault((family.name, engine), {"cases": {}, "arrays": {}, "outputs": set()})
        params, arrays = recording.join_outputs(case, outputs)
        cell["cases"][name], cell["arrays"][name] = params, arrays
        cell["outputs"].update(outputs)

    started = time.monotonic()
    report = _sweep("record", families, engines, cases, seed, profile, progress, keep, worker)
    manifest_cells = []
    for result in report.results:
        cell = stored.get((result.family, result.engine), {"cases": {}, "arrays": {},
                                                           "outputs": set()})
        meta = {"family": result.family, "engine": result.engine, "seed": seed,
                "profile": profile, "generated": cases, "stored": len(cell["cases"]),
                "cases": cell["cases"], "refused": result.torch_refused,
                "nondeterministic": result.nondeterministic, "crashes": result.crashes,
                "outputs": sorted(cell["outputs"]), "seconds": result.seconds}
        recording.write_cell(directory, meta, cell["arrays"])
        manifest_cells.append({key: (len(meta[key]) if isinstance(meta[key], list) else meta[key])
                               for key in ("family", "engine", "generated", "stored", "refused",
                                           "nondeterministic", "crashes", "seconds")})
    info = report.machine
    flags = sorted(cpu_flags())
    manifest = {
        "torch_version": report.torch_version,
        "cpu_capability": info.get("cpu_capability"),
        "cpu_model": recording.cpu_model(), "cpu_flags": flags,
        "has_avx512_vnni": "avx512_vnni" in flags, "has_avx512f": "avx512f" in flags,
        "qexact_isa": report.isa, "aten_capability": report.aten_capability,
        "env_overrides": recording.environment_overrides(),
        "numpy_version": np.__version__, "python": platform.python_version(),
        "supported_engines": info.get("supported_engines"),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed, "profile": profile, "num_threads": "per case (num_threads, else 1)",
        "generator": "qexact conformance --record (numpy default_rng([seed, crc32(family), "
                     "engine index, case]))",
        "cells": manifest_cells,
        "totals": {key: sum(c[key] for c in manifest_cells)
                   for key in ("stored", "refused", "nondeterministic", "crashes")},
        "wall_seconds": round(time.monotonic() - started, 1)}
    recording.write_manifest(directory, manifest)
    recording.write_readme(directory, manifest)
    return report


# --- replay ---------------------------------------------------------------------------------

def replay_recording(directory, families=None, engines=None, isa: str | None = None,
                     aten_capability: str | None = None,
                     progress: Progress | None = None) -> ConformanceReport:
    """Run qexact on every stored case of a recording and compare with torch's stored result.
    ``isa`` / ``aten_capability`` default to the recording machine's (``manifest.json``)."""
    directory = Path(directory)
    manifest = recording.read_manifest(directory)
    isa = isa or recording.manifest_isa(manifest)
    aten_capability = aten_capability or recording.manifest_aten_capability(manifest)
    if isa is None or aten_capability is None:
        raise UnsupportedError(f"{directory}: the manifest states no ISA / ATen capability; "
                               "pass isa= and aten_capability=")
    selected = [(f, e) for f, e in recording.cells(directory)
                if (not families or f in families) and (not engines or e in engines)]
    if not selected:
        raise UnsupportedError(f"nothing to run: no recorded cell in {directory} matches "
                               f"families {families} and engines {engines}")
    report = ConformanceReport("replay", manifest.get("torch_version", "?"), isa,
                               aten_capability, manifest.get("seed"), source=str(directory))
    loaded = []
    for family_name, engine in selected:
        if family_name not in FAMILIES:
            report.not_modelled.append(f"{family_name} on {engine}: no such family in qexact")
            continue
        loaded.append((FAMILIES[family_name], engine,
                       *recording.read_cell(directory, family_name, engine)))
    total, done = sum(len(stored) for *_, stored in loaded), 0
    for family, engine, meta, stored in loaded:
        engine_object = qexact_engine(engine, isa, aten_capability)
        result = CellResult(family.name, engine)
        result.torch_refused = [dict(entry) for entry in meta.get("refused", [])]
        result.nondeterministic = [dict(entry) for entry in meta.get("nondeterministic", [])]
        result.crashes = [dict(entry) for entry in meta.get("crashes", [])]
        for item in stored:
            ours, message = run_qexact_case(family, item.case, engine_object)
            _compare(result, item.name, item.case, ours, message, item.expected)
            done += 1
            if progress is not None:
                progress(done, total, f"{family.name} / {engine}")
        report.results.append(result)
    return report
