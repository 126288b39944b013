"""Dynamically quantized recurrent layers (``torch.ao.quantization.quantize_dynamic`` of nn.LSTM,
nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell -> ``torch.ao.nn.quantized.dynamic``): float32 in and
out, the weights int8 (``qint8``) or float16.

Each cell is two dynamically quantized Linears, each with its own bias inside its epilogue
(``linear_ih`` on the input, ``linear_hh`` on the hidden state: the packed params'
``apply_dynamic``, qexact.ops.linear_dynamic), then ATen's float math, which the engine states
(the ``"rnn_cell"`` family, engines/aten_rnn.py):

    ih = linear_ih(x)         hh = linear_hh(h)
    LSTM  gates = hh + ih; i, f, g, o = chunk(4); c' = f*c + i*g; h' = o * tanh(c')
    GRU   r, z = sigmoid(hh + ih) (first two chunks); n = tanh(ih_n + hh_n * r);
          h' = (h - n) * z + n
    RNN   h' = tanh(hh + ih) or relu(hh + ih)

The sequence layers (pytorch aten/src/ATen/native/RNN.cpp ``quantized_lstm_input`` /
``quantized_gru_input``, ``FullLayer``, ``FullBidirectionalLayer``, ``apply_layer_stack``):

- ``batch_first``: the input is transposed to (T, B, I) and the output transposed back (a view);
- every layer and direction runs ``linear_ih`` once on the whole (T, B, I) sequence (so the
  dynamic quantization's parameters are the whole sequence's), then the cell step by step with
  ``linear_hh`` on (B, H); the reverse direction walks t = T-1 .. 0 and its outputs are put back
  in time order; a layer's output is ``cat([forward, reverse], -1)``, the next layer's input;
- ``h0``/``c0`` default to zeros (``num_layers * num_directions``, B, H); ``h_n``/``c_n`` stack
  each layer's and direction's last state in that order; eval mode: no dropout.

The cells (``quantized::quantized_lstm_cell_dynamic`` etc.) and the layers of models saved at
version 2 quantize their inputs with ``reduce_range=True`` (``DEFINE_QUANTIZED_RNN_CELL_DYNAMIC``;
``make_quantized_cell_params_dynamic(..., reduce_range)``, which the importer reads from the
packed cell params); float16 weights have no activation quantization.

Every cell but RNNCell(relu) runs ``torch.tanh``, MKL's vsTanh, which qexact does not reproduce:
prepare refuses such a layer unless ``allow_inexact=("tanh",)`` (then its ``inexact`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..engines import get_engine
from ..engines.aten import default_num_threads
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray, qparams_from_fields
from ..trace import record
from ._registry import graph_op
from .float_activations import run_paths
from .linear_dynamic import (linear_dynamic, linear_fp16, prepare_linear_dynamic,
                             prepare_linear_fp16)

WEIGHT_DTYPES = ("qint8", "float16")


# --- One Linear of a cell ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CellLinear:
    """One of a cell's Linears: ``weight_dtype`` (``"qint8"``: a dynamically quantized int8
    GEMM; ``"float16"``: float16 weights) and the prepared Linear (``linear``)."""

    weight_dtype: str
    linear: object

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.weight_dtype == "qint8":
            return linear_dynamic(x, self.linear)
        return linear_fp16(x, self.linear)


def prepare_cell_linear(weight, weight_qparams: QParams | None, bias, weight_dtype: str, *,
                        engine, reduce_range: bool) -> CellLinear:
    """``linear_ih`` or ``linear_hh`` of a cell, bias included (its epilogue adds it)."""
    if weight_dtype == "qint8":
        if weight_qparams is None:
            raise QuantParamError("a qint8 recurrent weight needs its qparams")
        return CellLinear(weight_dtype, prepare_linear_dynamic(
            weight, weight_qparams, bias, False, engine=engine, reduce_range=reduce_range))
    if weight_dtype == "float16":
        return CellLinear(weight_dtype, prepare_linear_fp16(weight, bias, False, engine=engine))
    raise UnsupportedError(f"recurrent weight dtype {weight_dtype!r} is not supported; "
                           f"supported: {list(WEIGHT_DTYPES)}")


# --- The cell's float math -----------------------------------------------------------------------


def _sigmoid_(kernel, view: np.ndarray, label: str) -> np.ndarray:
    """ATen's float sigmoid in place on a chunk view (its SIMD body and scalar tail split per
    row of the view, as TensorIterator walks it)."""
    return run_paths(kernel.sigmoid, view, label)


def cell_step(kernel, ih: np.ndarray, hh: np.ndarray, hidden):
    """One step of the cell ``kernel.cell`` from its Linears' outputs ``ih`` and ``hh`` (B, G*H)
    and the state (``h``, or ``(h, c)`` for an LSTM); returns the new state.

    The float32 arithmetic is ATen's (engines/aten_rnn.py ``CELL_FORMULAS``): each add, sub and
    mul one IEEE float32 operation; sigmoids on the chunk views of the gates."""
    cell = kernel.cell
    with np.errstate(all="ignore"):  # float overflow and NaN are modelled, not errors
        if cell == "lstm":
            h, c = hidden
            size = h.shape[-1]
            gates = (hh + ih).astype(np.float32)  # hh.add_(ih): a + b in both lambdas
            record("gates", "gates = f32(hh + ih)", gates, hh=hh, ih=ih)
            chunks = [gates[:, k * size:(k + 1) * size] for k in range(4)]
            ingate = _sigmoid_(kernel, chunks[0], "input gate sigmoid")
            forgetgate = _sigmoid_(kernel, chunks[1], "forget gate sigmoid")
            cellgate = kernel.tanh(chunks[2])
            record("cell gate tanh", "g = tanh(gates_g)  (inexact: correctly rounded)", cellgate)
            outgate = _sigmoid_(kernel, chunks[3], "output gate sigmoid")
            c_new = (forgetgate * c).astype(np.float32) + (ingate * cellgate).astype(np.float32)
            c_new = c_new.astype(np.float32)
            record("cell state", "c' = f32(f32(f * c) + f32(i * g))", c_new, f=forgetgate,
                   c=c, i=ingate, g=cellgate)
            h_new = (outgate * kernel.tanh(c_new)).astype(np.float32)
            record("hidden state", "h' = f32(o * tanh(c'))", h_new, o=outgate)
            return h_new, c_new
        h = hidden
        size = h.shape[-1]
        if cell == "gru":
            summed = hh.copy()
            summed[:, :2 * size] += ih[:, :2 * size]  # chunked_hgates[k].add_(chunked_igates[k])
            reset = _sigmoid_(kernel, summed[:, :size], "reset gate sigmoid")
            update = _sigmoid_(kernel, summed[:, size:2 * size], "update gate sigmoid")
            pre = (ih[:, 2 * size:] + (hh[:, 2 * size:] * reset).astype(np.float32))
            new = kernel.tanh(pre.astype(np.float32))
            record("new gate", "n = tanh(f32(ih_n + f32(hh_n * r)))  (inexact: correctly "
                   "rounded tanh)", new, r=reset)
            h_new = (((h - new).astype(np.float32) * update).astype(np.float32) + new)
            h_new = h_new.astype(np.float32)
            record("hidden state", "h' = f32(f32(f32(h - n) * z) + n)", h_new, h=h, n=new,
                   z=update)
            return h_new
        summed = (hh + ih).astype(np.float32)
        if cell == "rnn_relu":
            from ..engines.aten_rnn import relu_clamp_min

            h_new = relu_clamp_min(summed)
            record("hidden state", "h' = relu(f32(hh + ih))", h_new, hh=hh, ih=ih)
            return h_new
        h_new = kernel.tanh(summed)
        record("hidden state", "h' = tanh(f32(hh + ih))  (inexact: correctly rounded)", h_new,
               hh=hh, ih=ih)
        return h_new


# --- Prepared parameters -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RecurrentParams:
    """A recurrent layer or cell prepared for one engine.

    ``cell``: ``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``; ``sequence``: a whole
    nn.LSTM/nn.GRU (True) or one cell module (False); ``kernel``: the engine's float math
    (``engines.aten_rnn.RnnCellKernel``); ``linears``: ``(linear_ih, linear_hh)`` per layer and
    direction (layer-major, forward first); ``inexact``: why the outputs are not bit-exact
    (empty: they are)."""

    cell: str
    sequence: bool
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    batch_first: bool
    weight_dtype: str
    reduce_range: bool
    kernel: object
    linears: tuple
    engine: str
    isa: str
    inexact: str
    flat_outputs: bool = False
    """An LSTM layer returns ``(output, h_n, c_n)`` (TorchScript's ``aten::quantized_lstm``)
    instead of the module's ``(output, (h_n, c_n))``."""

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1


def layer_suffix(layer: int, direction: int) -> str:
    """PyTorch's parameter suffix: ``l0``, ``l0_reverse``, ..."""
    return f"l{layer}" + ("_reverse" if direction else "")


def prepare_recurrent(cell: str, weights: dict, *, hidden_size: int, num_layers: int = 1,
                      bidirectional: bool = False, batch_first: bool = False,
                      sequence: bool = True, weight_dtype: str = "qint8",
                      reduce_range: bool = True, engine, isa: str | None = None,
                      num_threads: int | None = None) -> RecurrentParams:
    """Prepare a recurrent layer (``sequence``) or one cell for ``engine``.

    ``weights``: for each layer and direction (suffix ``layer_suffix``; a cell has the empty
    suffix), ``weight_ih_<s>``/``weight_hh_<s>`` (int8 for qint8, float16 or float32 holding
    float16 values for float16), ``weight_ih_<s>_qparams``/``weight_hh_<s>_qparams`` (qint8),
    ``bias_ih_<s>``/``bias_hh_<s>`` (float32). ``num_threads``: PyTorch's intra-op threads."""
    engine = get_engine(engine, isa)
    if weight_dtype not in WEIGHT_DTYPES:
        raise UnsupportedError(f"recurrent weight dtype {weight_dtype!r} is not supported; "
                               f"supported: {list(WEIGHT_DTYPES)}")
    if sequence and cell not in ("lstm", "gru"):
        raise UnsupportedError(f"recurrent layer {cell!r}: quantize_dynamic makes LSTM and GRU "
                               "layers only")
    kernel = engine.kernel("rnn_cell", cell, int(num_threads or default_num_threads()))
    gates = kernel.gates
    suffixes = ([layer_suffix(layer, d) for layer in range(num_layers)
                 for d in range(2 if bidirectional else 1)] if sequence else [""])
    linears = []
    input_size = None
    for index, suffix in enumerate(suffixes):
        tail = f"_{suffix}" if suffix else ""
        pair = []
        for kind in ("ih", "hh"):
            weight = np.asarray(weights[f"weight_{kind}{tail}"])
            bias = weights.get(f"bias_{kind}{tail}")
            if bias is None:
                raise UnsupportedError("the dynamically quantized recurrent modules require "
                                       "biases (RNN.cpp: 'quantized LSTM requires biases')")
            bias = np.asarray(bias, np.float32)
            if weight.ndim != 2 or weight.shape[0] != gates * hidden_size:
                raise ShapeError(f"weight_{kind}{tail} must have {gates} * {hidden_size} rows, "
                                 f"got shape {weight.shape}")
            if kind == "hh" and weight.shape[1] != hidden_size:
                raise ShapeError(f"weight_hh{tail} must have {hidden_size} columns, got "
                                 f"{weight.shape}")
            pair.append(prepare_cell_linear(weight, weights.get(f"weight_{kind}{tail}_qparams"),
                                            bias, weight_dtype, engine=engine,
                                            reduce_range=reduce_range))
            if kind == "ih" and index == 0:
                input_size = int(weight.shape[1])
        linears.append(tuple(pair))
    return RecurrentParams(cell, bool(sequence), input_size, int(hidden_size), int(num_layers),
                           bool(bidirectional), bool(batch_first), weight_dtype,
                           bool(reduce_range), kernel, tuple(linears), engine.name, engine.isa,
                           kernel.inexact)


# --- Running -----------------------------------------------------------------------------------


def _float_input(x, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, QuantizedArray):
        raise ShapeError(f"{name} of a dynamically quantized recurrent layer is float32, "
                         "not a quantized tensor")
    x = np.asarray(x)
    if x.dtype != np.float32 or x.ndim != ndim:
        raise ShapeError(f"{name} must be a {ndim}-D float32 array, got {x.dtype} {x.shape}")
    return x


def recurrent_cell(x: np.ndarray, hx, params: RecurrentParams):
    """One cell step (the cell modules' forward): ``x`` (B, input_size) float32, ``hx`` the
    state (``h``, or ``(h, c)`` for an LSTM cell; None: zeros). Returns ``h'`` or ``(h', c')``."""
    x = _float_input(x, "input", 2)
    if x.shape[1] != params.input_size:
        raise ShapeError(f"input has {x.shape[1]} features, the cell takes {params.input_size}")
    zeros = np.zeros((x.shape[0], params.hidden_size), np.float32)
    if params.cell == "lstm":
        h, c = (zeros, zeros) if hx is None else hx
        h, c = _float_input(h, "h", 2), _float_input(c, "c", 2)
        _check_state(h, x.shape[0], params.hidden_size)
        _check_state(c, x.shape[0], params.hidden_size)
        hidden = (h, c)
    else:
        hidden = zeros if hx is None else _float_input(hx, "h", 2)
        _check_state(hidden, x.shape[0], params.hidden_size)
        h = hidden
    linear_ih, linear_hh = params.linears[0]
    ih = linear_ih(x)
    hh = linear_hh(h)
    return cell_step(params.kernel, ih, hh, hidden)


def _check_state(state: np.ndarray, batch: int, hidden: int) -> None:
    if state.shape[-2:] != (batch, hidden):
        raise ShapeError(f"a hidden state must be ({batch}, {hidden}), got {state.shape}")


def recurrent(x: np.ndarray, h0, c0, params: RecurrentParams):
    """A whole nn.LSTM / nn.GRU (dynamic): ``x`` (T, B, I), or (B, T, I) with ``batch_first``;
    ``h0``/``c0`` (layers * directions, B, H) or None (zeros). Returns ``(output, (h_n, c_n))``
    for an LSTM, ``(output, h_n)`` for a GRU, as torch does."""
    x = _float_input(x, "input", 3)
    sequence = np.swapaxes(x, 0, 1) if params.batch_first else x
    steps, batch = sequence.shape[:2]
    if sequence.shape[2] != params.input_size:
        raise ShapeError(f"input has {sequence.shape[2]} features, the layer takes "
                         f"{params.input_size}")
    if steps == 0:
        raise ShapeError("Expected sequence length to be larger than 0 in RNN")
    size = params.hidden_size
    state_shape = (params.num_layers * params.num_directions, batch, size)
    lstm = params.cell == "lstm"
    h0 = np.zeros(state_shape, np.float32) if h0 is None else _float_input(h0, "h0", 3)
    c0 = (np.zeros(state_shape, np.float32) if c0 is None else _float_input(c0, "c0", 3)) \
        if lstm else None
    for state in (h0, c0) if lstm else (h0,):
        if state.shape != state_shape:
            raise ShapeError(f"a hidden state must be {state_shape}, got {state.shape}")
    layer_input = sequence
    final_h, final_c = [], []
    for layer in range(params.num_layers):
        outputs = []
        for direction in range(params.num_directions):
            index = layer * params.num_directions + direction
            linear_ih, linear_hh = params.linears[index]
            inputs_w = linear_ih(layer_input)  # the whole sequence at once (pre_compute_input)
            hidden = (h0[index], c0[index]) if lstm else h0[index]
            step_outputs = [None] * steps
            order = range(steps) if direction == 0 else range(steps - 1, -1, -1)
            for t in order:
                h = hidden[0] if lstm else hidden
                hidden = cell_step(params.kernel, inputs_w[t], linear_hh(h), hidden)
                step_outputs[t] = hidden[0] if lstm else hidden
            outputs.append(np.stack(step_outputs))
            final_h.append(hidden[0] if lstm else hidden)
            if lstm:
                final_c.append(hidden[1])
        layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
    output = np.swapaxes(layer_input, 0, 1) if params.batch_first else layer_input
    h_n = np.stack(final_h)
    if lstm:
        return output, (h_n, np.stack(final_c))
    return output, h_n


# --- Graph ops ---------------------------------------------------------------------------------


def weights_from_node(node, sequence: bool, num_layers: int, bidirectional: bool) -> dict:
    """The ``weights`` of ``prepare_recurrent`` from a node's arrays and attrs: for suffix
    ``<s>`` arrays ``weight_ih_<s>``, ``weight_hh_<s>``, ``bias_ih_<s>``, ``bias_hh_<s>`` and
    (qint8) the weights' qparams fields of prefix ``weight_ih_<s>`` / ``weight_hh_<s>``."""
    suffixes = ([layer_suffix(layer, d) for layer in range(num_layers)
                 for d in range(2 if bidirectional else 1)] if sequence else [""])
    weights = {}
    for suffix in suffixes:
        tail = f"_{suffix}" if suffix else ""
        for kind in ("ih", "hh"):
            name = f"weight_{kind}{tail}"
            weights[name] = node.arrays[name]
            if f"{name}_dtype" in node.attrs:
                weights[f"{name}_qparams"] = qparams_from_fields(node.attrs, node.arrays, name)
            if f"bias_{kind}{tail}" in node.arrays:
                weights[f"bias_{kind}{tail}"] = node.arrays[f"bias_{kind}{tail}"]
    return weights


def _prepare_node(node, input_qparams, engine, cell: str, sequence: bool) -> RecurrentParams:
    if any(qparams is not None for qparams in input_qparams):
        raise QuantParamError(f"the inputs of {node.op!r} are float32 tensors (dynamic "
                              "quantization), not quantized ones")
    attrs = node.attrs
    num_layers = int(attrs.get("num_layers", 1))
    bidirectional = bool(attrs.get("bidirectional", False))
    return prepare_recurrent(
        cell, weights_from_node(node, sequence, num_layers, bidirectional),
        hidden_size=int(attrs["hidden_size"]), num_layers=num_layers,
        bidirectional=bidirectional, batch_first=bool(attrs.get("batch_first", False)),
        sequence=sequence, weight_dtype=attrs.get("weight_dtype", "qint8"),
        reduce_range=bool(attrs.get("reduce_range", True)), engine=engine,
        num_threads=attrs.get("num_threads"))


_NODE_DOC = """Graph node: float32 inputs (the input, then optionally the state: ``h0`` and for
an LSTM ``c0``); attrs ``hidden_size``, ``weight_dtype`` (``qint8``/``float16``),
``reduce_range``, ``num_threads`` (and for layers ``num_layers``, ``bidirectional``,
``batch_first``); arrays ``weight_ih_<s>``, ``weight_hh_<s>``, ``bias_ih_<s>``, ``bias_hh_<s>``
(``<s>``: ``l0``, ``l0_reverse``, ...; empty for a cell) with the qint8 weights' qparams. An
LSTM layer with attr ``flat_outputs`` (TorchScript's ``aten::quantized_lstm``) returns
``(output, h_n, c_n)``."""


def _state(inputs, count: int):
    return tuple(inputs[1 + k] if len(inputs) > 1 + k else None for k in range(count))


@graph_op("lstm", "dynamically quantized nn.LSTM (float32 in, (output, (h_n, c_n)) out)")
class LstmOp:
    __doc__ = _NODE_DOC

    @staticmethod
    def prepare(node, input_qparams, engine):
        params = _prepare_node(node, input_qparams, engine, "lstm", True)
        if node.attrs.get("flat_outputs", False):
            params = replace(params, flat_outputs=True)
        return params, None

    @staticmethod
    def run(params, inputs):
        h0, c0 = _state(inputs, 2)
        if (h0 is None) != (c0 is None):
            raise ShapeError("an LSTM takes both h0 and c0, or neither")
        output, (h_n, c_n) = recurrent(inputs[0], h0, c0, params)
        return (output, h_n, c_n) if params.flat_outputs else (output, (h_n, c_n))


@graph_op("gru", "dynamically quantized nn.GRU (float32 in, (output, h_n) out)")
class GruOp:
    __doc__ = _NODE_DOC

    @staticmethod
    def prepare(node, input_qparams, engine):
        return _prepare_node(node, input_qparams, engine, "gru", True), None

    @staticmethod
    def run(params, inputs):
        return recurrent(inputs[0], _state(inputs, 1)[0], None, params)


@graph_op("lstm_cell", "dynamically quantized nn.LSTMCell (float32 in, (h', c') out)")
class LstmCellOp:
    __doc__ = _NODE_DOC

    @staticmethod
    def prepare(node, input_qparams, engine):
        return _prepare_node(node, input_qparams, engine, "lstm", False), None

    @staticmethod
    def run(params, inputs):
        h, c = _state(inputs, 2)
        if (h is None) != (c is None):
            raise ShapeError("an LSTMCell takes both h and c, or neither")
        return recurrent_cell(inputs[0], None if h is None else (h, c), params)


@graph_op("gru_cell", "dynamically quantized nn.GRUCell (float32 in, h' out)")
class GruCellOp:
    __doc__ = _NODE_DOC

    @staticmethod
    def prepare(node, input_qparams, engine):
        return _prepare_node(node, input_qparams, engine, "gru", False), None

    @staticmethod
    def run(params, inputs):
        return recurrent_cell(inputs[0], _state(inputs, 1)[0], params)


@graph_op("rnn_cell", "dynamically quantized nn.RNNCell, tanh or relu (attr nonlinearity)")
class RnnCellOp:
    __doc__ = _NODE_DOC

    @staticmethod
    def prepare(node, input_qparams, engine):
        nonlinearity = node.attrs.get("nonlinearity", "tanh")
        if nonlinearity not in ("tanh", "relu"):
            raise UnsupportedError(f"RNNCell nonlinearity {nonlinearity!r}; supported: tanh, "
                                   "relu")
        return _prepare_node(node, input_qparams, engine, f"rnn_{nonlinearity}", False), None

    @staticmethod
    def run(params, inputs):
        return recurrent_cell(inputs[0], _state(inputs, 1)[0], params)


@graph_op("zeros", "float32 zeros of a shape given by sizes (torch.zeros: the default state "
          "of a traced recurrent module)")
class ZerosOp:
    """Graph node: inputs, the sizes (ints, or the values of ``size`` nodes); no attrs.
    Output: float32 zeros (+0.0) of that shape."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if any(qparams is not None for qparams in input_qparams):
            raise ShapeError("zeros takes integer sizes, not tensors")
        return None, None

    @staticmethod
    def run(params, inputs):
        sizes = [int(size) for size in inputs]
        if any(size < 0 for size in sizes):
            raise ShapeError(f"zeros: negative size in {sizes}")
        return np.zeros(sizes, np.float32)
