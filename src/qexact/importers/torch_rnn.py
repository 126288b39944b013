"""torch import handlers for the dynamically quantized recurrent modules
(``torch.ao.quantization.quantize_dynamic``): ``torch.ao.nn.quantized.dynamic`` LSTM, GRU,
LSTMCell, GRUCell and RNNCell.

Weights and biases come from the packed Linear params, as the kernels use them:
``torch.ops.quantized.linear_unpack`` (qint8: the int8 weight with its qparams, the float32
bias) or ``linear_unpack_fp16`` (float16 weights, returned and stored as float32 holding float16
values).
LSTM/GRU hold one ``CellParamsBase`` per layer and direction (``_all_weight_values[i].param``),
whose ``__getstate__()`` is ``(kind, tensors, doubles, longs, packed)``: kind
``"quantized_dynamic"`` (longs ``[reduce_range]``, packed ``[ih, hh]``) or ``"quantized_fp16"``
(packed ``[ih, hh]``). The cells always quantize with reduce_range (RNN.cpp
``DEFINE_QUANTIZED_RNN_CELL_DYNAMIC``). The nodes record ``torch.get_num_threads()``.

Inputs: the module's positional arguments, flattened (``lstm(x, (h0, c0))`` -> ``x, h0, c0``).
The node's output is what the module returns (a tuple for LSTM, GRU and LSTMCell; FX picks
its parts with ``getitem``).

TorchScript (``torch.jit.trace`` of such a model): ``aten::quantized_lstm`` /
``aten::quantized_gru`` read the same CellParamsBase objects from the node's inputs (an LSTM node
then returns ``(output, h_n, c_n)``, attr ``flat_outputs``), the cells'
``quantized::quantized_*_cell_dynamic`` their packed Linears; the default state a traced module
builds, ``aten::zeros(size, ...)``, becomes a ``zeros`` node, and ``aten::to`` to float32 after a
dynamic Linear an identity.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import qparams_to_fields
from ._handlers import (_import_torch, _qparams_of_tensor, function_handler, module_handler,
                        torch_threads, torchscript_handler)

_WEIGHT_DTYPES = {"torch.qint8": "qint8", "torch.float16": "float16"}


def _weight_dtype(dtype, name: str) -> str:
    found = _WEIGHT_DTYPES.get(str(dtype))
    if found is None:
        raise UnsupportedError(f"{name}: recurrent weights of dtype {dtype} are not supported; "
                               f"supported: {sorted(_WEIGHT_DTYPES.values())}")
    return found


def _unpack(packed, weight_dtype: str, key: str, attrs: dict, arrays: dict) -> None:
    """Weight (and qparams) ``weight_<key>``, bias ``bias_<key>`` of one packed Linear."""
    torch = _import_torch()
    if weight_dtype == "qint8":
        weight, bias = torch.ops.quantized.linear_unpack(packed)
        more_attrs, more_arrays = qparams_to_fields(_qparams_of_tensor(weight), f"weight_{key}")
        attrs.update(more_attrs)
        arrays.update(more_arrays)
        arrays[f"weight_{key}"] = weight.int_repr().numpy().astype(np.int8)
    else:
        weight, bias = torch.ops.quantized.linear_unpack_fp16(packed)
        # float32 holding the float16 values (the saved format has no float16 arrays)
        arrays[f"weight_{key}"] = weight.detach().to(torch.float32).numpy().copy()
    if bias is None:
        raise UnsupportedError(f"the packed Linear of weight_{key} has no bias; the dynamically "
                               "quantized recurrent modules require biases")
    arrays[f"bias_{key}"] = bias.detach().to(torch.float32).numpy().copy()


def _flat_inputs(name: str, inputs, state_count: int) -> tuple:
    """``(x,)``, ``(x, h)`` or ``(x, h, c)`` from the module's arguments."""
    if not inputs:
        raise UnsupportedError(f"{name}: a recurrent module needs an input")
    flat = [inputs[0]]
    if len(inputs) > 1 and inputs[1] is not None:
        state = inputs[1]
        state = tuple(state) if isinstance(state, (tuple, list)) else (state,)
        if len(state) != state_count:
            raise UnsupportedError(f"{name}: expected {state_count} hidden state tensor(s), got "
                                   f"{len(state)}")
        flat += list(state)
    if len(inputs) > 2:
        raise UnsupportedError(f"{name}: unexpected arguments after the hidden state")
    return tuple(flat)


@module_handler("torch.ao.nn.quantized.dynamic.LSTM", "torch.ao.nn.quantized.dynamic.GRU")
def _recurrent_layer(module, name, inputs):
    mode = getattr(module, "mode", "")
    if mode not in ("LSTM", "GRU"):
        raise UnsupportedError(f"{name}: dynamic recurrent mode {mode!r}; supported: LSTM, GRU")
    if not module.bias:
        raise UnsupportedError(f"{name}: the dynamically quantized {mode} requires biases")
    weight_dtype = _weight_dtype(module.dtype, name)
    directions = 2 if module.bidirectional else 1
    attrs = {"hidden_size": int(module.hidden_size), "num_layers": int(module.num_layers),
             "bidirectional": bool(module.bidirectional),
             "batch_first": bool(module.batch_first), "weight_dtype": weight_dtype,
             "num_threads": torch_threads()}
    arrays: dict = {}
    reduce_range = set()
    for index, holder in enumerate(module._all_weight_values):
        layer, direction = divmod(index, directions)
        suffix = f"l{layer}" + ("_reverse" if direction else "")
        kind, _, _, longs, packed = holder.param.__getstate__()[0]
        if kind == "quantized_dynamic":
            reduce_range.add(bool(longs[0]) if longs else False)
        elif kind != "quantized_fp16":
            raise UnsupportedError(f"{name}: cell params of kind {kind!r}; supported: "
                                   "quantized_dynamic, quantized_fp16")
        for key, linear in zip(("ih", "hh"), packed):
            _unpack(linear, weight_dtype, f"{key}_{suffix}", attrs, arrays)
    if len(reduce_range) > 1:
        raise UnsupportedError(f"{name}: layers with different reduce_range flags")
    attrs["reduce_range"] = reduce_range.pop() if reduce_range else False
    op = "lstm" if mode == "LSTM" else "gru"
    return Node(name, op, _flat_inputs(name, inputs, 2 if op == "lstm" else 1), attrs, arrays)


@module_handler("torch.ao.nn.quantized.dynamic.LSTMCell", "torch.ao.nn.quantized.dynamic.GRUCell",
                "torch.ao.nn.quantized.dynamic.RNNCell")
def _recurrent_cell(module, name, inputs):
    torch = _import_torch()
    if not module.bias:
        raise UnsupportedError(f"{name}: the dynamically quantized cells require biases")
    weight_dtype = _weight_dtype(module.weight_dtype, name)
    attrs = {"hidden_size": int(module.hidden_size), "weight_dtype": weight_dtype,
             "reduce_range": True, "num_threads": torch_threads()}
    arrays: dict = {}
    _unpack(module._packed_weight_ih, weight_dtype, "ih", attrs, arrays)
    _unpack(module._packed_weight_hh, weight_dtype, "hh", attrs, arrays)
    lstm = torch.ao.nn.quantized.dynamic.LSTMCell
    gru = torch.ao.nn.quantized.dynamic.GRUCell
    if isinstance(module, lstm):
        return Node(name, "lstm_cell", _flat_inputs(name, inputs, 2), attrs, arrays)
    if isinstance(module, gru):
        return Node(name, "gru_cell", _flat_inputs(name, inputs, 1), attrs, arrays)
    attrs["nonlinearity"] = str(module.nonlinearity)
    return Node(name, "rnn_cell", _flat_inputs(name, inputs, 1), attrs, arrays)


# --- TorchScript (torch.jit.trace of a quantize_dynamic'd model) ------------------------------
# aten::quantized_lstm.input(input, hx: Tensor[], params: CellParamsBase[], has_biases,
#     num_layers, dropout, train, bidirectional, batch_first, *, dtype=None, use_dynamic=False)
# aten::quantized_gru.input(input, hx, params, has_biases, num_layers, dropout, train,
#     bidirectional, batch_first)
# quantized::quantized_lstm_cell_dynamic(input, hx: Tensor[], w_ih, w_hh, bias_ih, bias_hh)
# quantized::quantized_{gru,rnn_relu,rnn_tanh}_cell_dynamic(input, hx, w_ih, w_hh, b_ih, b_hh)
# The cells' separate bias tensors are not read by the kernels (RNN.cpp
# ``QuantizedCellParamsDynamic::linear_ih``: ``packed_w_ih->apply_dynamic``, whose packed params
# hold the bias; measured: other b_ih/b_hh give the same bits), so the packed biases are used.


def _script_layer(mode: str):
    op = mode.lower()

    def handler(name, inputs, module_path):
        where = module_path or name
        inputs = list(inputs) + [None] * (11 - len(inputs))
        x, hx, cells, has_biases, num_layers, _dropout, train, bidirectional, batch_first = \
            inputs[:9]
        if op == "lstm" and not isinstance(hx, (list, tuple)) or not isinstance(cells, list):
            raise UnsupportedError(f"{where}: aten::quantized_{op} on a PackedSequence (the "
                                   "'.data' overload) is not supported; pass a padded tensor")
        if train:
            raise UnsupportedError(f"{where}: aten::quantized_{op} in training mode")
        if not has_biases:
            raise UnsupportedError(f"{where}: the dynamically quantized {mode} requires biases")
        directions = 2 if bidirectional else 1
        if len(cells) != int(num_layers) * directions:
            raise UnsupportedError(f"{where}: {len(cells)} cell params for {num_layers} layers "
                                   f"x {directions} directions")
        attrs = {"num_layers": int(num_layers), "bidirectional": bool(bidirectional),
                 "batch_first": bool(batch_first), "num_threads": torch_threads()}
        arrays: dict = {}
        kinds, reduce_range = set(), set()
        for index, cell in enumerate(cells):
            layer, direction = divmod(index, directions)
            suffix = f"l{layer}" + ("_reverse" if direction else "")
            kind, _, _, longs, packed = cell.__getstate__()[0]
            kinds.add(kind)
            if kind == "quantized_dynamic":
                reduce_range.add(bool(longs[0]) if longs else False)
            elif kind != "quantized_fp16":
                raise UnsupportedError(f"{where}: cell params of kind {kind!r}; supported: "
                                       "quantized_dynamic, quantized_fp16")
            weight_dtype = "qint8" if kind == "quantized_dynamic" else "float16"
            for key, linear in zip(("ih", "hh"), packed):
                _unpack(linear, weight_dtype, f"{key}_{suffix}", attrs, arrays)
        if len(kinds) != 1 or len(reduce_range) > 1:
            raise UnsupportedError(f"{where}: layers with different weight dtypes or "
                                   "reduce_range flags")
        attrs["weight_dtype"] = "qint8" if kinds == {"quantized_dynamic"} else "float16"
        attrs["reduce_range"] = reduce_range.pop() if reduce_range else False
        attrs["hidden_size"] = int(arrays["weight_hh_l0"].shape[1])
        if op == "lstm":
            attrs["flat_outputs"] = True  # the node's outputs: output, h_n, c_n
            state = tuple(hx)
            if len(state) != 2:
                raise UnsupportedError(f"{where}: an LSTM takes (h0, c0), got {len(state)} "
                                       "tensors")
        else:
            state = (hx,)
        return Node(name, op, (x,) + state, attrs, arrays)

    return handler


torchscript_handler("aten::quantized_lstm")(_script_layer("LSTM"))
torchscript_handler("aten::quantized_gru")(_script_layer("GRU"))


def _packed_dtype(packed) -> str:
    """``qint8`` or ``float16``: the weights a LinearPackedParamsBase holds (``linear_unpack`` of
    an fp16 pack gives float32 weights)."""
    torch = _import_torch()
    try:
        weight, _ = torch.ops.quantized.linear_unpack(packed)
    except RuntimeError:  # a float16 pack on an engine whose linear_unpack refuses it
        return "float16"
    return "qint8" if weight.is_quantized else "float16"


def _script_cell(op: str, nonlinearity: str | None = None):
    def handler(name, args, kwargs):
        x, hx, w_ih, w_hh = (tuple(args) + (None,) * 4)[:4]
        weight_dtype = _packed_dtype(w_ih)
        if _packed_dtype(w_hh) != weight_dtype:
            raise UnsupportedError(f"{name}: w_ih and w_hh of different dtypes")
        attrs = {"weight_dtype": weight_dtype, "reduce_range": True,
                 "num_threads": torch_threads()}
        arrays: dict = {}
        _unpack(w_ih, weight_dtype, "ih", attrs, arrays)
        _unpack(w_hh, weight_dtype, "hh", attrs, arrays)
        attrs["hidden_size"] = int(arrays["weight_hh"].shape[1])
        if nonlinearity is not None:
            attrs["nonlinearity"] = nonlinearity
        state = tuple(hx) if isinstance(hx, (list, tuple)) else (hx,)
        return Node(name, op, (x,) + state, attrs, arrays)

    return handler


for _kind, _op, _nonlinearity in (("lstm", "lstm_cell", None), ("gru", "gru_cell", None),
                                  ("rnn_relu", "rnn_cell", "relu"),
                                  ("rnn_tanh", "rnn_cell", "tanh")):
    _path = f"torch.ops.quantized.quantized_{_kind}_cell_dynamic"
    function_handler(_path, _path + ".default")(_script_cell(_op, _nonlinearity))


@torchscript_handler("aten::zeros")
def _zeros(name, inputs, module_path):
    """``aten::zeros(size, dtype, layout, device, pin_memory)``: the default state a traced
    recurrent module builds (``torch.zeros(L * D, x.size(1), H)``); float32 only."""
    size, dtype = (list(inputs) + [None, None])[:2]
    if dtype not in (None, 6):  # c10::ScalarType::Float
        raise UnsupportedError(f"aten::zeros of ScalarType {dtype}: only float32 is supported")
    if not isinstance(size, (list, tuple)):
        raise UnsupportedError("aten::zeros needs a list of sizes")
    return Node(name, "zeros", tuple(size))


@torchscript_handler("aten::to")
def _to(name, inputs, module_path):
    """``aten::to(x, dtype, non_blocking, copy, memory_format)`` to float32 of a float32 value
    (a traced dynamic Linear's ``Y.to(X.dtype)``): the same values."""
    if len(inputs) != 5 or inputs[1] != 6 or inputs[4] not in (None, 1):
        raise UnsupportedError("aten::to is supported only as a float32 -> float32 conversion "
                               "(Tensor.to(torch.float32)) keeping the memory format")
    return Node(name, "identity", tuple(inputs[:1]))
