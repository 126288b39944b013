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
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import qparams_to_fields
from ._handlers import _import_torch, _qparams_of_tensor, module_handler, torch_threads

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
