"""torch import handlers for ``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``.

torch.fx treats torch.nn modules as leaves, so FX quantization leaves an encoder (or a layer)
whole and float32 between a dequantize and a quantize. Both import to op
``transformer_encoder`` (ops/transformer_layer.py): the layers' weights as node arrays, so a
saved model runs without torch.

A layer in inference runs one of two paths (torch/nn/modules/transformer.py
``TransformerEncoderLayer.forward``), both reproduced:

- the fast path, ``torch._transformer_encoder_layer_fwd``: batch_first=True, an even nhead,
  equal norm eps, ``torch.backends.mha.get_fastpath_enabled()`` (and grad disabled, below);
- otherwise the slow path: ``x + sa(x)`` ..., its attention ``nn.MultiheadAttention``'s own
  fast path (``_native_multi_head_attention``: batch_first, an even nhead) or
  ``F.multi_head_attention_forward`` (``linear``, ``F.scaled_dot_product_attention``,
  ``linear``); the activation is the module's own (``nn.GELU("tanh")`` is tanh here).

Refused, naming the condition: training, ``bias=False``, an activation other than relu/gelu,
masks or ``is_causal``, hooks, bias_k/add_zero_attn, a layer or final norm of another type, and
``quantize_dynamic``'s Linears (PyTorch raises on them). Grad mode is a run-time condition: with
grad enabled and parameters requiring grad, PyTorch runs the slow path with
``F.multi_head_attention_forward`` (measured: ~2/3 of float outputs differ in the last bits from
the inference result); qexact gives the inference result (``torch.no_grad()`` /
``inference_mode`` / parameters without ``requires_grad``). A node's per-layer attrs
``path="slow", attention="sdpa"`` reproduce the grad-enabled run instead.

An encoder without ``src_key_padding_mask`` runs its layers densely (no nested tensor, whatever
``enable_nested_tensor``), then its optional final ``norm`` (an ``nn.LayerNorm``).
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node
from ._handlers import _import_torch, module_handler, torch_threads

FAST_PATH = ("eval mode, a packed in_proj with bias, activation relu or gelu (a string, "
             "F.relu/F.gelu, nn.ReLU/nn.GELU), no masks, no hooks; its fast path and its slow "
             "path, run under torch.no_grad()/inference_mode")


def _refuse(name: str, kind: str, why: str):
    raise UnsupportedError(f"module {name!r} ({kind}): {why}. qexact reproduces the layer in "
                           f"inference ({FAST_PATH})")


def _float_array(tensor) -> np.ndarray:
    return tensor.detach().float().numpy().astype(np.float32)


def _linear_weight(layer, attr: str, name: str, kind: str):
    torch = _import_torch()
    linear = getattr(layer, attr)
    weight = getattr(linear, "weight", None)
    if callable(weight) and not isinstance(weight, torch.Tensor):
        raise UnsupportedError(
            f"module {name!r} ({kind}): {attr} is a {type(linear).__module__}."
            f"{type(linear).__name__} (quantize_dynamic): PyTorch 2.13 itself raises on such "
            "a layer in eval (torch/nn/modules/transformer.py, TransformerEncoderLayer.forward: "
            f"its fast-path check reads {attr}.weight, a method on a dynamic Linear: "
            "AttributeError: 'function' object has no attribute 'device'), so its output is "
            "undefined; quantize_dynamic the model without the encoder's Linears (e.g. "
            "qconfig_spec naming the other modules)")
    if type(linear) not in (torch.nn.Linear,) or linear.bias is None:
        _refuse(name, kind, f"{attr} must be a float nn.Linear with bias, got "
                f"{type(linear).__name__}")
    return weight


def _layer_config(layer, name: str, kind: str) -> tuple[dict, dict]:
    """The layer's attrs (which of torch's paths it takes) and arrays, or a refusal naming the
    condition qexact does not reproduce."""
    torch = _import_torch()
    if type(layer) is not torch.nn.TransformerEncoderLayer:
        _refuse(name, kind, f"a layer of type {type(layer).__name__} (only "
                "nn.TransformerEncoderLayer itself)")
    attention = layer.self_attn
    checks = ((layer.training, "training mode"),
              (attention.in_proj_bias is None, "bias=False"),
              (not attention._qkv_same_embed_dim, "separate q/k/v projection weights"),
              (not layer.activation_relu_or_gelu,
               f"activation {layer.activation!r} (only relu and gelu are supported)"),
              (any(len(getattr(m, "_forward_hooks", {})) + len(getattr(m, "_forward_pre_hooks",
                                                                         {}))
                   for m in layer.modules()), "forward hooks or pre-hooks are attached"),
              (attention.bias_k is not None or attention.add_zero_attn,
               "bias_k/bias_v or add_zero_attn"))
    for failed, why in checks:
        if failed:
            _refuse(name, kind, why)
    weights = {attr: _linear_weight(layer, attr, name, kind) for attr in ("linear1", "linear2")}
    for norm in ("norm1", "norm2"):
        module = getattr(layer, norm)
        if module.weight is None or module.bias is None:
            _refuse(name, kind, f"{norm} without weight or bias")
    # TransformerEncoderLayer.forward's fast-path checks (torch/nn/modules/transformer.py) that
    # qexact follows to the slow path; MultiheadAttention.forward's own (activation.py)
    enabled = bool(torch.backends.mha.get_fastpath_enabled())
    even = attention.num_heads % 2 == 0
    fast = enabled and attention.batch_first and even and layer.norm1.eps == layer.norm2.eps
    native = enabled and attention.batch_first and even
    activation = "relu" if layer.activation_relu_or_gelu == 1 else "gelu"
    if not fast and getattr(layer.activation, "approximate", "none") == "tanh":
        activation = "gelu_tanh"  # the slow path calls the module: nn.GELU("tanh")
    attrs = {"num_heads": int(attention.num_heads), "norm_first": bool(layer.norm_first),
             "activation": activation, "eps": float(layer.norm1.eps),
             "path": "fast" if fast else "slow", "attention": "native" if native else "sdpa",
             "batch_first": bool(attention.batch_first)}
    if layer.norm1.eps != layer.norm2.eps:
        attrs["eps2"] = float(layer.norm2.eps)
    arrays = {"in_proj_weight": attention.in_proj_weight, "in_proj_bias": attention.in_proj_bias,
              "out_proj_weight": attention.out_proj.weight,
              "out_proj_bias": attention.out_proj.bias,
              "linear1_weight": weights["linear1"], "linear1_bias": layer.linear1.bias,
              "linear2_weight": weights["linear2"], "linear2_bias": layer.linear2.bias,
              "norm1_weight": layer.norm1.weight, "norm1_bias": layer.norm1.bias,
              "norm2_weight": layer.norm2.weight, "norm2_bias": layer.norm2.bias}
    return attrs, {key: _float_array(value) for key, value in arrays.items()}


def _library_enabled() -> bool:
    torch = _import_torch()
    return bool(torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled())


def _no_masks(inputs, name: str, kind: str):
    # forward(src, mask/src_mask, src_key_padding_mask, is_causal): FX passes them positionally
    if any(value is not None and value is not False for value in tuple(inputs)[1:4]):
        _refuse(name, kind, "src_mask, src_key_padding_mask and is_causal are not supported")


def _encoder_node(name, src, layers, norm) -> Node:
    attrs = {"layers": [], "norm": None, "num_threads": torch_threads(),
             "library": _library_enabled()}
    arrays = {}
    for i, (layer_attrs, layer_arrays) in enumerate(layers):
        attrs["layers"].append(layer_attrs)
        arrays.update({f"layers.{i}.{key}": value for key, value in layer_arrays.items()})
    if norm is not None:
        attrs["norm"] = {"normalized_shape": [int(size) for size in norm.normalized_shape],
                         "eps": float(norm.eps)}
        for key in ("weight", "bias"):
            value = getattr(norm, key, None)
            if value is not None:
                arrays[f"norm.{key}"] = _float_array(value)
    return Node(name, "transformer_encoder", (src,), attrs, arrays)


@module_handler("torch.nn.TransformerEncoderLayer")
def _transformer_encoder_layer(module, name, inputs):
    kind = "nn.TransformerEncoderLayer"
    _no_masks(inputs, name, kind)
    return _encoder_node(name, inputs[0], [_layer_config(module, name, kind)], None)


@module_handler("torch.nn.TransformerEncoder")
def _transformer_encoder(module, name, inputs):
    torch = _import_torch()
    kind = "nn.TransformerEncoder"
    if type(module) is not torch.nn.TransformerEncoder:
        _refuse(name, kind, f"a subclass {type(module).__name__} (its forward may differ)")
    _no_masks(inputs, name, kind)
    if len(module._forward_hooks) + len(module._forward_pre_hooks):
        _refuse(name, kind, "forward hooks or pre-hooks are attached")
    layers = [_layer_config(layer, f"{name}.layers.{i}", kind)
              for i, layer in enumerate(module.layers)]
    norm = module.norm
    if norm is not None and type(norm) is not torch.nn.LayerNorm:
        _refuse(name, kind, f"a final norm of type {type(norm).__name__} (only nn.LayerNorm)")
    return _encoder_node(name, inputs[0], layers, norm)
