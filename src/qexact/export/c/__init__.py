"""``export_c``: a self-contained C99 library (one ``.c``, one ``.h``) with the engine's numerics.

``export_c(net, out_dir, example_inputs)`` writes ``model.h``, ``model.c`` (weights and tables as
``static const`` arrays, static buffers sized for the example inputs' shapes, no allocation),
``main.c`` (``model_main``), a ``Makefile`` and a ``README.md``. GEMM layers and quantize /
dequantize emit their ``Step`` pipelines (``steps.py``); every other op comes from
``qexact.export.tables.describe`` (tables, gathers, window reductions), checked here against the
example run before it is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...jsonable import JsonDocument
from ._model import build_model

RESOURCES = Path(__file__).parent


@dataclass(frozen=True)
class CExport(JsonDocument):
    """What ``export_c`` wrote: paths, the byte sizes of ``model.c``/``model.h``, per-layer notes
    (layer name -> how it is computed), and the integer-only layers whose certificate is not
    exact (name -> worst case)."""

    directory: Path
    model_c: Path
    model_h: Path
    main_c: Path
    makefile: Path
    readme: Path
    c_bytes: int
    h_bytes: int
    notes: dict[str, str] = field(default_factory=dict)
    integer_only: bool = False
    uncertified: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"directory": str(self.directory), "c_bytes": self.c_bytes,
                "h_bytes": self.h_bytes, "integer_only": self.integer_only,
                "layers": dict(self.notes), "uncertified": dict(self.uncertified)}

    def summary(self) -> str:
        """What the command line prints: the files, how to build, what is not certified."""
        lines = [f"wrote {self.directory}: model.c ({self.c_bytes:,} bytes), model.h "
                 f"({self.h_bytes:,} bytes), main.c, Makefile, README.md",
                 f"build: make -C {self.directory}; run: {self.directory}/model_main IN.bin OUT.bin"]
        if self.integer_only:
            lines.append("integer-only: " + (
                "every GEMM layer certified exact" if not self.uncertified else
                f"{len(self.uncertified)} layer(s) not certified exact: " + "; ".join(
                    f"{name} ({why})" for name, why in self.uncertified.items())))
        return "\n".join(lines)


def export_c(net, out_dir, example_inputs, *, integer_only: bool | str = False) -> CExport:
    """Write the C library of ``net`` for inputs shaped as ``example_inputs`` into ``out_dir``.

    ``integer_only``: False (the engine's float requantization), True (integer requantization:
    a certified multiplier, offset and shift per channel where one exists, else the exact
    threshold table, else the closest multiplier) or ``"affine"`` (a multiplier, offset and
    shift everywhere: the closest where none is certified).

    Raises ``UnsupportedError`` naming every node the C export cannot compute (all at once)."""
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    model = build_model(net, tuple(example_inputs), integer_only=integer_only)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"model.h": model.header, "model.c": model.source,
             "main.c": (RESOURCES / "main.c").read_text(),
             "Makefile": (RESOURCES / "Makefile").read_text(), "README.md": model.readme}
    for name, text in paths.items():
        (directory / name).write_text(text)
    return CExport(directory, directory / "model.c", directory / "model.h", directory / "main.c",
                   directory / "Makefile", directory / "README.md",
                   os.path.getsize(directory / "model.c"), os.path.getsize(directory / "model.h"),
                   model.notes, bool(integer_only), model.uncertified)


__all__ = ["CExport", "export_c"]
