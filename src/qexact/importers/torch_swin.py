"""torch import handlers for torchvision's Swin Transformer (``swin_t``, ``swin_s``, ``swin_b``).

torchvision/models/swin_transformer.py registers ``shifted_window_attention``,
``_get_relative_position_bias`` and ``_patch_merging_pad`` with ``torch.fx.wrap``: FX keeps each
as one ``call_function`` node, float32 between a dequantize and a quantize, its Parameters
(``qkv.weight``, the bias table, the index buffer) read by ``get_attr`` (``constant`` nodes).
They become ops ``window_attention``, ``relative_position_bias`` and ``patch_merging_pad``
(ops/window_attention.py). ``window_attention`` records ``torch.get_num_threads()``: MKL splits a
single product's rows between threads.

Swin V2's attention (``logit_scale``: cosine attention, a clamp and an exp) and dropout in
training are refused.
"""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node, Ref
from ._handlers import _arg, function_handler, torch_threads

_MODULE = "torchvision.models.swin_transformer"


def _int_pair(value, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2 \
            or not all(isinstance(item, int) for item in value):
        raise UnsupportedError(f"shifted_window_attention needs a constant {what} of two ints, "
                               f"got {value!r}")
    return [int(item) for item in value]


@function_handler(f"{_MODULE}.shifted_window_attention")
def _shifted_window_attention(name, args, kwargs) -> Node:
    x, qkv_weight, proj_weight, position_bias = (
        _arg(args, kwargs, i, key, None) for i, key in enumerate(
            ("input", "qkv_weight", "proj_weight", "relative_position_bias")))
    window_size = _int_pair(_arg(args, kwargs, 4, "window_size", None), "window_size")
    num_heads = _arg(args, kwargs, 5, "num_heads", None)
    shift_size = _int_pair(_arg(args, kwargs, 6, "shift_size", None), "shift_size")
    attention_dropout = _arg(args, kwargs, 7, "attention_dropout", 0.0)
    dropout = _arg(args, kwargs, 8, "dropout", 0.0)
    qkv_bias, proj_bias = (_arg(args, kwargs, 9, "qkv_bias", None),
                           _arg(args, kwargs, 10, "proj_bias", None))
    logit_scale = _arg(args, kwargs, 11, "logit_scale", None)
    training = _arg(args, kwargs, 12, "training", True)
    if logit_scale is not None:
        raise UnsupportedError("shifted_window_attention with logit_scale (Swin V2's cosine "
                               "attention: F.normalize, clamp, exp) is not supported; Swin V1 "
                               "(swin_t, swin_s, swin_b) is")
    if not isinstance(num_heads, int):
        raise UnsupportedError(f"shifted_window_attention needs a constant num_heads, got "
                               f"{num_heads!r}")
    if training is not False and (attention_dropout or dropout):
        raise UnsupportedError("shifted_window_attention with dropout in training mode is not "
                               "supported (random); call model.eval()")
    for what, value in (("input", x), ("qkv_weight", qkv_weight), ("proj_weight", proj_weight),
                        ("relative_position_bias", position_bias)):
        if not isinstance(value, Ref):
            raise UnsupportedError(f"shifted_window_attention: {what} must be a tensor")
    for what, value in (("qkv_bias", qkv_bias), ("proj_bias", proj_bias)):
        if value is not None and not isinstance(value, Ref):
            raise UnsupportedError(f"shifted_window_attention: {what} must be a tensor or None")
    return Node(name, "window_attention",
                (x, qkv_weight, proj_weight, position_bias, qkv_bias, proj_bias),
                {"window_size": window_size, "num_heads": int(num_heads),
                 "shift_size": shift_size, "num_threads": torch_threads()})


@function_handler(f"{_MODULE}._get_relative_position_bias")
def _relative_position_bias(name, args, kwargs) -> Node:
    table = _arg(args, kwargs, 0, "relative_position_bias_table", None)
    index = _arg(args, kwargs, 1, "relative_position_index", None)
    window_size = _arg(args, kwargs, 2, "window_size", None)
    if not isinstance(window_size, (list, tuple)) or len(window_size) != 2:
        raise UnsupportedError(f"_get_relative_position_bias needs a constant window_size of "
                               f"two ints, got {window_size!r}")
    return Node(name, "relative_position_bias", (table, index),
                {"window_size": [int(size) for size in window_size]})


@function_handler(f"{_MODULE}._patch_merging_pad")
def _patch_merging_pad(name, args, kwargs) -> Node:
    return Node(name, "patch_merging_pad", (_arg(args, kwargs, 0, "x", None),), {})
