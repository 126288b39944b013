"""Import of dynamically quantized recurrent models (``quantize_dynamic`` with nn.LSTM, nn.GRU,
nn.LSTMCell, nn.GRUCell, nn.RNNCell, and nn.Linear heads) through ``qexact.from_torch``.

Models: a 2-layer bidirectional LSTM language model (float inputs stand in for the embedding),
a GRU language model, batch_first both ways, h0/c0 given, an LSTMCell/GRUCell/RNNCell loop.
Every cell with a tanh is refused by default (MKL vsTanh); with torch's tanh substituted for the
correctly rounded one the models are bit-equal; with ``allow_inexact=("tanh",)`` the share of
identical outputs is measured. Save/load round trips run without torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import qexact
from qexact import UnsupportedError

EAGER = ("fbgemm", "x86", "qnnpack", "onednn")
FP16_ENGINES = ("fbgemm", "x86")


pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("torch_no_grad")]


def _torch():
    return pytest.importorskip("torch")


def _models(torch):
    nn = torch.nn

    class LstmLM(nn.Module):
        def __init__(self, batch_first):
            super().__init__()
            self.lstm = nn.LSTM(16, 24, num_layers=2, bidirectional=True,
                                batch_first=batch_first)
            self.head = nn.Linear(48, 30)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out)

    class GruLM(nn.Module):
        def __init__(self, batch_first):
            super().__init__()
            self.gru = nn.GRU(16, 20, num_layers=2, batch_first=batch_first)
            self.head = nn.Linear(20, 30)

        def forward(self, x, h0):
            out, h = self.gru(x, h0)
            return self.head(out), h

    class LstmState(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(16, 12)

        def forward(self, x, h0, c0):
            return self.lstm(x, (h0, c0))

    class Cells(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTMCell(16, 12)
            self.gru = nn.GRUCell(12, 12)
            self.rnn = nn.RNNCell(12, 10, nonlinearity="relu")

        def forward(self, x):
            h, c = self.lstm(x)
            h = self.gru(h)
            return self.rnn(h)

    class ReluCells(nn.Module):
        def __init__(self):
            super().__init__()
            self.one = nn.RNNCell(16, 40, nonlinearity="relu")
            self.two = nn.RNNCell(40, 33, nonlinearity="relu")

        def forward(self, x, h):
            return self.two(self.one(x), h)

    def inputs(shape_first, batch_first=False):
        steps, batch = 6, 3
        shape = (batch, steps, 16) if batch_first else (steps, batch, 16)
        return (torch.randn(shape) * 1.5,) if shape_first else ()

    return {
        "lstm_lm": (lambda: LstmLM(False), lambda: inputs(True)),
        "lstm_lm_batch_first": (lambda: LstmLM(True), lambda: inputs(True, True)),
        "gru_lm": (lambda: GruLM(False),
                   lambda: inputs(True) + (torch.randn(2, 3, 20),)),
        "gru_lm_batch_first": (lambda: GruLM(True),
                               lambda: inputs(True, True) + (torch.randn(2, 3, 20),)),
        "lstm_state": (lambda: LstmState(),
                       lambda: inputs(True) + (torch.randn(1, 3, 12), torch.randn(1, 3, 12))),
        "cells": (lambda: Cells(), lambda: (torch.randn(4, 16),)),
        "relu_cells": (lambda: ReluCells(), lambda: (torch.randn(4, 16), torch.randn(4, 33))),
    }


MODELS = ["lstm_lm", "lstm_lm_batch_first", "gru_lm", "gru_lm_batch_first", "lstm_state",
          "cells", "relu_cells"]


def _build(torch, name, engine, dtype):
    torch.backends.quantized.engine = engine
    torch.manual_seed(MODELS.index(name))
    make_model, make_inputs = _models(torch)[name]
    model = make_model().eval()
    modules = {torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell, torch.nn.GRUCell,
               torch.nn.RNNCell, torch.nn.Linear}
    quantized = torch.ao.quantization.quantize_dynamic(
        model, modules, dtype=torch.qint8 if dtype == "qint8" else torch.float16)
    return quantized, make_inputs()


def _flat(values) -> list[np.ndarray]:
    if isinstance(values, (tuple, list)):
        return [item for value in values for item in _flat(value)]
    return [np.asarray(values.numpy() if hasattr(values, "numpy") else values)]


def _identical(actual, expected) -> tuple[int, int]:
    actual, expected = _flat(actual), _flat(expected)
    assert [a.shape for a in actual] == [e.shape for e in expected]
    same = sum(int((np.ascontiguousarray(a, np.float32).view(np.uint32)
                    == np.ascontiguousarray(e, np.float32).view(np.uint32)).sum())
               for a, e in zip(actual, expected))
    return same, sum(e.size for e in expected)


def _dtypes(engine):
    return ("qint8", "float16") if engine in FP16_ENGINES else ("qint8",)


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
def test_models_exact_given_torch_tanh(engine, monkeypatch, report):
    """Every model, every element bit-equal once PyTorch's own tanh replaces the correctly
    rounded one: the import (weights, biases, reduce_range, batch_first, states, tuple
    outputs) and everything else the layers compute are exact."""
    torch = _torch()
    from qexact.engines import aten_rnn

    monkeypatch.setattr(aten_rnn, "tanh_correctly_rounded", lambda x: torch.from_numpy(
        np.ascontiguousarray(x, np.float32)).tanh().numpy())
    for dtype in _dtypes(engine):
        for name in MODELS:
            model, inputs = _build(torch, name, engine, dtype)
            net = qexact.from_torch(model, engine=engine, allow_inexact=("tanh",))
            same, total = _identical(net(*[x.numpy() for x in inputs]), model(*inputs))
            report[f"{engine} {dtype} {name} (torch tanh)"].update(identical=same,
                                                                   elements=total)
            assert same == total, f"{engine} {dtype} {name}: {total - same} of {total} differ"


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
def test_models_allow_inexact_measured(engine, report):
    """allow_inexact=("tanh",): correctly rounded tanh; the identical share is measured (a
    tanh difference propagates through the recurrence, so only a large share is asserted).
    relu_cells has no tanh: exact, and not marked inexact."""
    torch = _torch()
    for dtype in _dtypes(engine):
        for name in MODELS:
            model, inputs = _build(torch, name, engine, dtype)
            if name != "relu_cells":
                with pytest.raises(UnsupportedError, match="vsTanh"):
                    qexact.from_torch(model, engine=engine)
            net = qexact.from_torch(model, engine=engine, allow_inexact=("tanh",))
            same, total = _identical(net(*[x.numpy() for x in inputs]), model(*inputs))
            report[f"{engine} {dtype} {name} (allow_inexact tanh)"].update(identical=same,
                                                                           elements=total)
            if name == "relu_cells":
                assert same == total
                assert all(not getattr(p, "inexact", "") for p in net.layers.values())
            else:
                assert same >= 0.9 * total, f"{engine} {dtype} {name}: {same}/{total}"
                assert any("vsTanh" in getattr(p, "inexact", "") for p in net.layers.values())


@pytest.mark.torch
def test_save_load_round_trip(tmp_path):
    """Saved recurrent models (qint8 and float16 weights) load without torch's help (allow_inexact
    again where they have a tanh) and give the same outputs."""
    torch = _torch()
    for name, allow, dtype in (("lstm_lm", ("tanh",), "qint8"), ("gru_lm", ("tanh",), "qint8"),
                               ("cells", ("tanh",), "qint8"), ("relu_cells", (), "qint8"),
                               ("lstm_state", ("tanh",), "float16"),
                               ("relu_cells", (), "float16")):
        model, inputs = _build(torch, name, "fbgemm", dtype)
        net = qexact.from_torch(model, engine="fbgemm", allow_inexact=allow)
        path = tmp_path / f"{name}_{dtype}.safetensors"
        qexact.save(net, path)
        if allow:
            with pytest.raises(UnsupportedError, match="tanh"):
                qexact.load(path)
        loaded = qexact.load(path, allow_inexact=allow)
        arrays = [x.numpy() for x in inputs]
        same, total = _identical(loaded(*arrays), net(*arrays))
        assert same == total


# --- TorchScript (torch.jit.trace, in memory and through torch.jit.save) ----------------------


def _trace(torch, model, inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: the modules' shape checks
        return torch.jit.trace(model, inputs)


def _flat_outputs(torch, model):
    """The model with its (nested) tuple outputs flattened, to trace: qexact's TorchScript import
    returns a flat tuple."""

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return tuple(_flat_tensors(self.model(*args)))

    return Flat()


def _flat_tensors(values):
    if isinstance(values, (tuple, list)):
        return [item for value in values for item in _flat_tensors(value)]
    return [values]


def _scripts(torch, model, inputs):
    """The traced module in memory and loaded back from a saved file."""
    import io

    script = _trace(torch, model, inputs)
    buffer = io.BytesIO()
    torch.jit.save(script, buffer)
    buffer.seek(0)
    return {"traced": script, "file": torch.jit.load(buffer)}


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
def test_torchscript_models(engine, monkeypatch, report):
    """Traced LSTM/GRU LMs and cells (aten::quantized_lstm/gru, quantized::quantized_*_cell_dynamic,
    aten::zeros default states, aten::to after linear_dynamic): relu_cells is exact with
    allow_inexact; every model is exact once torch's tanh replaces the correctly rounded one;
    the allow_inexact share is measured."""
    torch = _torch()
    from qexact.engines import aten_rnn

    def torch_tanh(x):
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).tanh().numpy()

    rounded = aten_rnn.tanh_correctly_rounded
    for dtype in _dtypes(engine):
        for name in MODELS:
            model, inputs = _build(torch, name, engine, dtype)
            model = _flat_outputs(torch, model)
            expected = model(*inputs)
            arrays = [x.numpy() for x in inputs]
            for kind, script in _scripts(torch, model, inputs).items():
                monkeypatch.setattr(aten_rnn, "tanh_correctly_rounded", rounded)
                net = qexact.from_torch(script, engine=engine, allow_inexact=("tanh",))
                same, total = _identical(net(*arrays), expected)
                report[f"TorchScript {kind} {engine} {dtype} {name} (allow_inexact tanh)"].update(
                    identical=same, elements=total)
                if name == "relu_cells":
                    assert same == total
                else:
                    assert same >= 0.9 * total, f"{engine} {dtype} {name}: {same}/{total}"
                monkeypatch.setattr(aten_rnn, "tanh_correctly_rounded", torch_tanh)
                net = qexact.from_torch(script, engine=engine, allow_inexact=("tanh",))
                same, total = _identical(net(*arrays), expected)
                assert same == total, f"{kind} {engine} {dtype} {name}: {total - same} differ"


@pytest.mark.torch
def test_torchscript_round_trip_and_refusals(tmp_path):
    """A traced LM's qexact net (zeros and flat LSTM outputs included) saves and loads; tanh
    cells are refused without allow_inexact."""
    torch = _torch()
    model, inputs = _build(torch, "lstm_lm", "fbgemm", "qint8")
    script = _trace(torch, model, inputs)
    with pytest.raises(UnsupportedError, match="vsTanh"):
        qexact.from_torch(script, engine="fbgemm")
    net = qexact.from_torch(script, engine="fbgemm", allow_inexact=("tanh",))
    assert {"zeros", "lstm"} <= {node.op for node in net.graph.nodes}
    path = tmp_path / "lstm_lm_script.safetensors"
    qexact.save(net, path)
    loaded = qexact.load(path, allow_inexact=("tanh",))
    arrays = [x.numpy() for x in inputs]
    same, total = _identical(loaded(*arrays), net(*arrays))
    assert same == total
