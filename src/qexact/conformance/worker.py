"""PyTorch's side of a sweep, in a child process that may crash.

The parent (``TorchWorker``) sends one case at a time over the child's stdin; the child
(``python -m qexact.conformance.worker``) sets the quantized engine and the case's intra-op
threads (``num_threads``, else 1), calls the family's ``run_torch`` twice and answers over a private copy of its stdout (file descriptor 1 is pointed at
stderr, so torch's own prints cannot corrupt the protocol). The child's stderr goes to a file, so
torch's noise ("Error in QNNPACK: ...") never reaches the terminal; its tail is kept for the crash
report. When the child dies, ``run`` reports the exit (``signal 11``) and the next call starts a
fresh child.

Messages are length-prefixed (8 bytes, big-endian) ``.npz`` archives: the message as JSON with
its arrays stored beside it (``encode``/``decode``; loaded with ``allow_pickle=False``, so
reading a message never executes code).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TORCH_ENGINE_OF = {"aten": "fbgemm"}
"""The quantized engine set while a float (``aten``) cell runs: it takes no part in float kernels."""


ARRAY = "__array__"


def encode(message) -> bytes:
    """A message (dicts, lists, tuples, scalars, NumPy arrays) as npz bytes: its JSON under
    ``__json__`` with each array replaced by ``{"__array__": key}``; tuples become lists."""
    arrays: dict[str, np.ndarray] = {}

    def strip(value):
        if isinstance(value, np.ndarray):
            key = f"a{len(arrays)}"
            arrays[key] = value
            return {ARRAY: key}
        if isinstance(value, dict):
            return {str(k): strip(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    head = json.dumps(strip(message)).encode("utf-8")
    buffer = io.BytesIO()
    np.savez(buffer, __json__=np.frombuffer(head, np.uint8), **arrays)
    return buffer.getvalue()


def decode(data: bytes):
    """The inverse of ``encode`` (never unpickles)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}

    def restore(value):
        if isinstance(value, dict):
            if set(value) == {ARRAY}:
                return arrays[value[ARRAY]]
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    return restore(json.loads(arrays.pop("__json__").tobytes().decode("utf-8")))


@dataclass
class TorchOutcome:
    kind: str
    """``ok``, ``refused`` (torch raised), ``nondeterministic`` (two calls differ) or ``crash``."""
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    exit: str = ""
    stderr_tail: str = ""


class TorchWorker:
    """A persistent child process running ``run_torch``; restarted after it dies."""

    def __init__(self, timeout: float = 600.0):
        self.timeout = timeout
        self.process: subprocess.Popen | None = None
        self.stderr = None
        self.info: dict[str, Any] = {}
        """What the child reported on start: torch version, CPU capability, engines."""
        self.starts = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self) -> dict[str, Any]:
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qexact.conformance.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0)
        self.starts += 1
        hello = self._receive(self.timeout)
        if hello is None or hello[0] != "hello":
            exit_text, tail = self._death()
            raise RuntimeError(f"the torch worker did not start ({exit_text}): {tail}")
        self.info = hello[1]
        return self.info

    def run(self, family, engine: str, case) -> TorchOutcome:
        if self.process is None:
            self.start()
        module = sys.modules.get(family.run_torch.__module__)
        source = (family.run_torch.__module__, getattr(module, "__file__", None))
        printed_from = self.stderr.seek(0, os.SEEK_END)
        try:
            self._send(("run", family.name, source, TORCH_ENGINE_OF.get(engine, engine),
                        case.params, case.arrays))
        except (BrokenPipeError, OSError):
            pass  # the child is gone: _receive reports it
        reply = self._receive(self.timeout)
        if reply is None:
            exit_text, tail = self._death()
            return TorchOutcome("crash", exit=exit_text, stderr_tail=tail)
        kind, payload = reply
        if kind == "ok" or kind == "nondeterministic":
            return TorchOutcome(kind, outputs=payload)
        printed = self._errors_printed_since(printed_from)
        return TorchOutcome(kind, message=f"{payload} (torch printed: {printed})" if printed
                            else payload)

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self._send(("stop",))
            self.process.stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self._discard()

    # --- protocol --------------------------------------------------------------------------

    def _send(self, message) -> None:
        data = encode(message)
        self.process.stdin.write(len(data).to_bytes(8, "big") + data)
        self.process.stdin.flush()

    def _receive(self, timeout: float):
        """The next message, or None when the child died (or hung past ``timeout``: killed)."""
        head = self._read_exactly(8, timeout)
        if head is None:
            return None
        body = self._read_exactly(int.from_bytes(head, "big"), timeout)
        return None if body is None else decode(body)

    def _read_exactly(self, size: int, timeout: float) -> bytes | None:
        pipe, chunks, deadline = self.process.stdout, [], time.monotonic() + timeout
        while size:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.process.kill()  # hung: a crash too
                return None
            chunk = os.read(pipe.fileno(), min(size, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _errors_printed_since(self, position: int) -> str:
        """The error lines the child wrote to its stderr since ``position`` (QNNPACK logs why it
        refuses an operator there, e.g. "1x1 pooling is meaningless", and raises without it)."""
        self.stderr.seek(position)
        text = self.stderr.read().decode("utf-8", "replace")
        return " ".join(line.strip() for line in text.splitlines() if "error" in line.lower())

    def _death(self) -> tuple[str, str]:
        """How the child ended and the tail of its stderr; forgets the child."""
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        exit_text = f"signal {-code}" if code < 0 else f"exit {code}"
        self.stderr.seek(0, os.SEEK_END)
        size = self.stderr.tell()
        self.stderr.seek(max(0, size - 2000))
        tail = self.stderr.read().decode("utf-8", "replace").strip()
        self._discard()
        return exit_text, "\n".join(tail.splitlines()[-8:])

    def _discard(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.stderr.close()
        self.process = self.stderr = None


# --- the child ------------------------------------------------------------------------------

def _same(first: dict, second: dict) -> bool:
    """Two results of one call are identical: same keys, shapes, dtypes and bytes."""
    if first.keys() != second.keys():
        return False
    for key, value in first.items():
        a, b = np.asarray(value), np.asarray(second[key])
        if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
            return False
    return True


def _family(name: str, source):
    from .family import FAMILIES

    if name not in FAMILIES:
        module_name, path = source
        try:
            importlib.import_module(module_name)
        except ImportError:
            if path:  # e.g. a test module registering its own family
                spec = importlib.util.spec_from_file_location(f"_conformance_{name}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
    return FAMILIES[name]


def _main() -> None:
    import warnings

    warnings.simplefilter("ignore")
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # torch's prints go to stderr, not into the protocol
    channel_in = sys.stdin.buffer

    def send(message):
        data = encode(message)
        channel_out.write(len(data).to_bytes(8, "big") + data)

    def receive():
        head = channel_in.read(8)
        if len(head) < 8:
            return None
        return decode(channel_in.read(int.from_bytes(head, "big")))

    import torch

    from .family import Case, load_families

    load_families()

    torch.set_num_threads(1)
    send(("hello", {"torch_version": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "supported_engines": list(torch.backends.quantized.supported_engines)}))
    while True:
        message = receive()
        if message is None or message[0] == "stop":
            return
        _, name, source, engine, params, arrays = message
        try:
            family = _family(name, source)
            if torch.backends.quantized.engine != engine:
                torch.backends.quantized.engine = engine
            case = Case(params, arrays)
            torch.set_num_threads(int(params.get("num_threads", 1)))  # as qexact emulates it
            try:
                first = family.run_torch(case)
                second = family.run_torch(case)
            finally:
                torch.set_num_threads(1)
        except Exception as error:  # torch refuses the configuration
            send(("refused", f"{type(error).__name__}: {error}".strip()[:500]))
            continue
        send(("ok" if _same(first, second) else "nondeterministic", first))


if __name__ == "__main__":
    _main()
