"""The conformance registry, the sweep and its report."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ImporterError, UnsupportedError

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
CASES: dict[str, Callable] = {}


NOT_ON: dict[str, dict[str, str]] = {}
"""Per op, the engines it has no cell on, with the reason (shown in the report)."""


def conformance_case(name: str, not_on: dict[str, str] | None = None):
    """Register ``generator(engine, rng) -> (ours, theirs, label)`` as op ``name``; ``not_on``
    maps engines where PyTorch gives the op no defined result to the reason."""
    def register(generator):
        CASES[name] = generator
        NOT_ON[name] = dict(not_on or {})
        return generator

    return register


@dataclass
class OpResult:
    op: str
    engine: str
    cases: int = 0
    elements: int = 0
    mismatches: int = 0
    first_mismatch: str = ""


@dataclass
class ConformanceReport:
    torch_version: str
    isa: str
    seed: int
    results: list[OpResult] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    """Cells left out because PyTorch's result is undefined there, with the reason."""

    @property
    def mismatches(self) -> int:
        return sum(result.mismatches for result in self.results)

    def to_markdown(self) -> str:
        lines = [f"# qexact conformance (torch {self.torch_version}, isa {self.isa}, "
                 f"seed {self.seed})", "",
                 "| op | engine | cases | elements | mismatches |", "|---|---|---|---|---|"]
        for result in self.results:
            lines.append(f"| {result.op} | {result.engine} | {result.cases} | {result.elements} | "
                         f"{result.mismatches} |")
        failing = [result for result in self.results if result.mismatches]
        if failing:
            lines += ["", "## First mismatch per failing cell", ""]
            lines += [f"- {r.op} on {r.engine}: {r.first_mismatch}" for r in failing]
        if self.not_run:
            lines += ["", "## Not run (PyTorch's result is undefined)", ""]
            lines += [f"- {reason}" for reason in self.not_run]
        lines += ["", f"Total mismatches: {self.mismatches}."]
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        lines = [f"{'op':<22} {'engine':<8} {'cases':>6} {'elements':>10} {'mismatches':>10}"]
        for result in self.results:
            lines.append(f"{result.op:<22} {result.engine:<8} {result.cases:>6} "
                         f"{result.elements:>10} {result.mismatches:>10}")
        lines += [f"not run: {reason}" for reason in self.not_run]
        lines.append(f"total mismatches: {self.mismatches}")
        return "\n".join(lines)


def run_conformance(ops=None, engines=None, cases: int = 100, seed: int = 0,
                    progress: Callable[[int, int, str], None] | None = None) -> ConformanceReport:
    """Run ``cases`` random cases of each op on each engine; ``progress(done, total, label)``."""
    try:
        import torch
    except ImportError:
        raise ImporterError("conformance compares with PyTorch: install qexact[torch]") from None
    from ..engines import detect_isa

    ops = list(ops or CASES)
    engines = list(engines or ENGINES)
    unknown = [op for op in ops if op not in CASES]
    if unknown:
        raise UnsupportedError(f"no conformance cases for {unknown}; ops: {sorted(CASES)}")
    bad_engines = [engine for engine in engines if engine not in ENGINES]
    if bad_engines:
        raise UnsupportedError(f"unknown engine(s) {bad_engines}; engines: {list(ENGINES)}")
    cells = [(op, engine) for op in ops for engine in engines if engine not in NOT_ON.get(op, {})]
    report = ConformanceReport(torch.__version__, detect_isa(), seed, not_run=[
        f"{op} on {engine}: {NOT_ON[op][engine]}" for op in ops for engine in engines
        if engine in NOT_ON.get(op, {})])
    total, done = len(cells) * cases, 0
    previous = torch.backends.quantized.engine
    try:
        for op, engine in cells:
            torch.backends.quantized.engine = engine
            result = OpResult(op, engine)
            # streams keyed by names: selecting ops or engines leaves each cell's cases alone
            rng = np.random.default_rng([seed, zlib.crc32(op.encode()), ENGINES.index(engine)])
            for case in range(cases):
                ours, theirs, label = CASES[op](engine, rng)
                result.cases += 1
                result.elements += int(np.asarray(theirs).size)
                differ = _differ(np.asarray(ours), np.asarray(theirs))
                if differ and not result.first_mismatch:
                    result.first_mismatch = f"case {case}: {label}"
                result.mismatches += differ
                done += 1
                if progress is not None:
                    progress(done, total, f"{op} / {engine}")
            report.results.append(result)
    finally:
        torch.backends.quantized.engine = previous
    return report


def _differ(ours: np.ndarray, theirs: np.ndarray) -> int:
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return max(1, theirs.size)
    if ours.dtype.kind == "f":
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[ours.dtype.itemsize]
        return int((ours.view(width) != theirs.view(width)).sum())
    return int((ours != theirs).sum())


# --- Case generators ---------------------------------------------------------------------------
