"""Dynamically quantized recurrent cells and layers (ops/rnn.py) vs PyTorch, bit for bit.

RNNCell(relu) has no tanh: exact on every engine (qint8; float16 where PyTorch runs it).
Every other cell calls ``torch.tanh`` (MKL's vsTanh), which qexact refuses by default; with
torch's own tanh substituted for the correctly rounded one (``kernel.tanh``), every output is
bit-equal, which checks the Linears, the sigmoids' SIMD/tail split on the chunk views and the
cell updates; with ``allow_inexact=("tanh",)`` the share of identical outputs is measured.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from support.assertions import assert_bitexact

from qexact import UnsupportedError
from qexact.ops.rnn import prepare_recurrent, recurrent, recurrent_cell

EAGER = ("fbgemm", "x86", "qnnpack", "onednn")
FP16_ENGINES = ("fbgemm", "x86")  # PyTorch: "linear_prepack_fp16 is currently not supported by
#                                   QNNPACK" / "... by ONEDNN"
CASES = [(1, 7, 5), (3, 10, 20), (5, 33, 37), (2, 16, 70)]  # (batch, input, hidden)


pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.usefixtures("torch_no_grad")]


def _torch():
    return pytest.importorskip("torch")


def _unpack(torch, packed, dtype, key, weights):
    if dtype == "qint8":
        weight, bias = torch.ops.quantized.linear_unpack(packed)
        from qexact.importers._handlers import _qparams_of_tensor

        weights[f"weight_{key}"] = weight.int_repr().numpy().astype(np.int8)
        weights[f"weight_{key}_qparams"] = _qparams_of_tensor(weight)
    else:
        weight, bias = torch.ops.quantized.linear_unpack_fp16(packed)
        weights[f"weight_{key}"] = weight.to(torch.float16).numpy()
    weights[f"bias_{key}"] = bias.numpy().astype(np.float32)


def _quantized(torch, module, dtype):
    return torch.ao.quantization.quantize_dynamic(
        torch.nn.Sequential(module), {type(module)},
        dtype=torch.qint8 if dtype == "qint8" else torch.float16)[0]


def cell_case(engine, dtype, cell, batch, inputs, hidden, seed, allow=(), torch_tanh=False):
    """(qexact outputs, torch outputs) for one quantized cell, random weights and inputs."""
    torch = _torch()
    torch.backends.quantized.engine = engine
    torch.manual_seed(seed)
    module = {"lstm": lambda: torch.nn.LSTMCell(inputs, hidden),
              "gru": lambda: torch.nn.GRUCell(inputs, hidden),
              "rnn_tanh": lambda: torch.nn.RNNCell(inputs, hidden),
              "rnn_relu": lambda: torch.nn.RNNCell(inputs, hidden, nonlinearity="relu")}[cell]()
    quantized = _quantized(torch, module, dtype)
    weights: dict = {}
    _unpack(torch, quantized._packed_weight_ih, dtype, "ih", weights)
    _unpack(torch, quantized._packed_weight_hh, dtype, "hh", weights)
    from qexact.engines import get_engine

    prepared = prepare_recurrent(cell, weights, hidden_size=hidden, sequence=False,
                                 weight_dtype=dtype, engine=dataclasses.replace(
                                     get_engine(engine), allowed_inexact=frozenset(allow)),
                                 num_threads=torch.get_num_threads())
    if torch_tanh:
        prepared = _with_torch_tanh(torch, prepared)
    x = torch.randn(batch, inputs) * 2
    h = torch.randn(batch, hidden)
    c = torch.randn(batch, hidden)
    state = (h, c) if cell == "lstm" else h
    expected = [quantized(x, state), quantized(x)]
    actual = [recurrent_cell(x.numpy(), (h.numpy(), c.numpy()) if cell == "lstm" else h.numpy(),
                             prepared),
              recurrent_cell(x.numpy(), None, prepared)]
    return _flat(actual), _flat(expected)


def _with_torch_tanh(torch, prepared):
    """The prepared layer with PyTorch's own tanh in place of the correctly rounded one."""
    def tanh(x):
        return torch.from_numpy(np.ascontiguousarray(x, np.float32)).tanh().numpy()

    return dataclasses.replace(prepared, kernel=dataclasses.replace(prepared.kernel, tanh=tanh))


def _flat(values) -> list[np.ndarray]:
    out = []
    for value in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(value, (list, tuple)):
            out += _flat(value)
        else:
            out.append(np.asarray(value.numpy() if hasattr(value, "numpy") else value))
    return out


def _compare(actual, expected, context):
    for a, e in zip(actual, expected, strict=True):
        assert_bitexact(np.ascontiguousarray(a).view(np.uint32),
                        np.ascontiguousarray(e).view(np.uint32), context)
    return sum(e.size for e in expected)


def _identical(actual, expected) -> tuple[int, int]:
    same = sum(int((np.ascontiguousarray(a).view(np.uint32)
                    == np.ascontiguousarray(e).view(np.uint32)).sum())
               for a, e in zip(actual, expected, strict=True))
    return same, sum(e.size for e in expected)


def _dtypes(engine):
    return ("qint8", "float16") if engine in FP16_ENGINES else ("qint8",)


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
def test_relu_cell_exact_vs_torch(engine):
    """RNNCell(nonlinearity="relu"): no tanh, every output bit-equal (with and without h)."""
    for dtype in _dtypes(engine):
        for seed, (batch, inputs, hidden) in enumerate(CASES):
            actual, expected = cell_case(engine, dtype, "rnn_relu", batch, inputs, hidden, seed)
            _compare(actual, expected, f"{engine} {dtype} relu cell {batch}x{inputs}->{hidden}")


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_tanh_cells_exact_given_torch_tanh(engine, cell):
    """LSTMCell, GRUCell, RNNCell(tanh) with PyTorch's tanh substituted: bit-equal, so only the
    tanh (MKL vsTanh) stands between qexact and PyTorch."""
    for dtype in _dtypes(engine):
        for seed, (batch, inputs, hidden) in enumerate(CASES):
            actual, expected = cell_case(engine, dtype, cell, batch, inputs, hidden, seed,
                                         allow=("tanh",), torch_tanh=True)
            _compare(actual, expected, f"{engine} {dtype} {cell} {batch}x{inputs}->{hidden}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_tanh_cells_refused_by_default(cell):
    weights = {"weight_ih": np.zeros((4 * 3, 2), np.float16),
               "weight_hh": np.zeros((4 * 3, 3), np.float16),
               "bias_ih": np.zeros(12, np.float32), "bias_hh": np.zeros(12, np.float32)}
    gates = {"lstm": 4, "gru": 3, "rnn_tanh": 1}[cell]
    for key in ("weight_ih", "weight_hh"):
        weights[key] = weights[key][:gates * 3]
    for key in ("bias_ih", "bias_hh"):
        weights[key] = weights[key][:gates * 3]
    with pytest.raises(UnsupportedError, match=r"vsTanh.*allow_inexact=\('tanh',\)"):
        prepare_recurrent(cell, weights, hidden_size=3, sequence=False, weight_dtype="float16",
                          engine="fbgemm")


def test_relu_cell_has_no_inexact():
    weights = {"weight_ih": np.ones((3, 2), np.float16), "weight_hh": np.ones((3, 3), np.float16),
               "bias_ih": np.zeros(3, np.float32), "bias_hh": np.zeros(3, np.float32)}
    try:
        params = prepare_recurrent("rnn_relu", weights, hidden_size=3, sequence=False,
                                   weight_dtype="float16", engine="fbgemm")
    except UnsupportedError as error:  # the float16 Linear on a host without it
        pytest.skip(str(error))
    assert params.inexact == ""


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
def test_tanh_cells_allow_inexact_measured(engine, report):
    """With allow_inexact=("tanh",) (correctly rounded tanh): the share of identical outputs.
    Not guaranteed equal: MKL's vsTanh differs from the correctly rounded tanh on ~0.06 % of
    inputs; asserted only to be large."""
    for dtype in _dtypes(engine):
        same = total = 0
        for cell in ("lstm", "gru", "rnn_tanh"):
            for seed, (batch, inputs, hidden) in enumerate(CASES):
                actual, expected = cell_case(engine, dtype, cell, batch, inputs, hidden, seed,
                                             allow=("tanh",))
                s, t = _identical(actual, expected)
                same, total = same + s, total + t
        report[f"{engine} {dtype} cells (allow_inexact tanh)"].update(identical=same,
                                                                       elements=total)
        assert same >= 0.98 * total, f"{engine} {dtype}: {same}/{total} identical"


def layer_case(engine, dtype, mode, *, layers, bidirectional, batch_first, seed, state,
               steps=5, batch=3, inputs=12, hidden=19):
    torch = _torch()
    torch.backends.quantized.engine = engine
    torch.manual_seed(seed)
    cls = torch.nn.LSTM if mode == "lstm" else torch.nn.GRU
    quantized = _quantized(torch, cls(inputs, hidden, num_layers=layers,
                                      bidirectional=bidirectional, batch_first=batch_first),
                           dtype)
    directions = 2 if bidirectional else 1
    weights: dict = {}
    for index, holder in enumerate(quantized._all_weight_values):
        layer, direction = divmod(index, directions)
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        packed = holder.param.__getstate__()[0][4]
        _unpack(torch, packed[0], dtype, f"ih_{suffix}", weights)
        _unpack(torch, packed[1], dtype, f"hh_{suffix}", weights)
    from qexact.engines import get_engine

    prepared = prepare_recurrent(mode, weights, hidden_size=hidden, num_layers=layers,
                                 bidirectional=bidirectional, batch_first=batch_first,
                                 weight_dtype=dtype,
                                 engine=dataclasses.replace(get_engine(engine),
                                                            allowed_inexact=frozenset({"tanh"})),
                                 num_threads=torch.get_num_threads())
    prepared = _with_torch_tanh(torch, prepared)
    shape = (batch, steps, inputs) if batch_first else (steps, batch, inputs)
    x = torch.randn(shape) * 1.5
    h0 = torch.randn(layers * directions, batch, hidden)
    c0 = torch.randn(layers * directions, batch, hidden)
    if state:
        expected = quantized(x, (h0, c0) if mode == "lstm" else h0)
        actual = recurrent(x.numpy(), h0.numpy(), c0.numpy() if mode == "lstm" else None,
                           prepared)
    else:
        expected = quantized(x)
        actual = recurrent(x.numpy(), None, None, prepared)
    assert actual[0].shape == tuple(expected[0].shape)
    return _flat(actual), _flat(expected)


@pytest.mark.torch
@pytest.mark.parametrize("engine", EAGER)
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_layers_exact_given_torch_tanh(engine, mode, report):
    """nn.LSTM / nn.GRU: 1 and 2 layers, uni- and bidirectional, batch_first both ways, with
    and without h0/c0: bit-equal with PyTorch's tanh substituted (whole-sequence linear_ih,
    per-step linear_hh, reverse direction, layer stacking)."""
    configs = [(1, False, False, False), (2, True, False, True), (2, True, True, False),
               (1, False, True, True)]
    for dtype in _dtypes(engine):
        for seed, (layers, bidirectional, batch_first, state) in enumerate(configs):
            actual, expected = layer_case(engine, dtype, mode, layers=layers,
                                          bidirectional=bidirectional, batch_first=batch_first,
                                          seed=seed, state=state)
            count = _compare(actual, expected, f"{engine} {dtype} {mode} layers={layers} "
                             f"bidirectional={bidirectional} batch_first={batch_first}")
            report[f"{engine} {dtype} {mode} (torch tanh)"].update(elements=count)


@pytest.mark.torch
@pytest.mark.parametrize("engine", ["qnnpack", "onednn"])
def test_float16_refused_where_torch_refuses(engine):
    """PyTorch has no float16 packed Linear on qnnpack/onednn ("linear_prepack_fp16 is
    currently not supported by QNNPACK/ONEDNN"); qexact refuses it there too."""
    torch = _torch()
    torch.backends.quantized.engine = engine
    with pytest.raises(RuntimeError, match="not supported"):
        _quantized(torch, torch.nn.RNNCell(4, 3, nonlinearity="relu"), "float16")
    weights = {"weight_ih": np.ones((3, 4), np.float16), "weight_hh": np.ones((3, 3), np.float16),
               "bias_ih": np.zeros(3, np.float32), "bias_hh": np.zeros(3, np.float32)}
    with pytest.raises(UnsupportedError):
        prepare_recurrent("rnn_relu", weights, hidden_size=3, sequence=False,
                          weight_dtype="float16", engine=engine)
