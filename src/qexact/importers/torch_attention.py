"""torch import handlers for attention's matrix products.

FX graph-mode quantization converts ``torch.matmul(a, b)`` of two quantized tensors to
``torch.ops.quantized.matmul(a, b, scale, zero_point)`` (op ``quantized_matmul``) and leaves
``a @ b`` (``operator.matmul``), ``torch.bmm`` and a ``torch.matmul`` of float tensors in
float32 (op ``matmul``). TorchScript's ``quantized::matmul``, ``aten::matmul`` and
``aten::bmm`` reach these handlers through their function paths. Each node records
``torch.get_num_threads()``: MKL splits a single product's rows between threads.

``nn.MultiheadAttention`` (its inference fast path) and ``F.scaled_dot_product_attention``
(unmasked) stay float32 after FX; they import to ops ``multihead_attention`` and
``scaled_dot_product_attention`` (ops/attention.py, engines/aten_attention.py). ``x.dim()``
(torchvision's ViT asserts it) imports to op ``ndim`` here until the shape handlers take it.
"""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node
from ._handlers import _arg, function_handler, method_handler, module_handler, torch_threads


@function_handler("torch.ops.quantized.matmul", "torch.ops.quantized.matmul.default")
def _quantized_matmul(name, args, kwargs) -> Node:
    a, b = _arg(args, kwargs, 0, "qa", None), _arg(args, kwargs, 1, "qb", None)
    scale = _arg(args, kwargs, 2, "output_scale", None)
    zero_point = _arg(args, kwargs, 3, "output_zero_point", None)
    if not isinstance(scale, (int, float)) or not isinstance(zero_point, int):
        raise UnsupportedError("quantized.matmul needs a constant output scale and zero point")
    return Node(name, "quantized_matmul", (a, b),
                {"output_scale": float(scale), "output_zero_point": int(zero_point),
                 "num_threads": torch_threads()})


def _float_matmul(name, args, kwargs) -> Node:
    a = _arg(args, kwargs, 0, "input", None)
    b = _arg(args, kwargs, 1, "other", kwargs.get("mat2"))
    if kwargs.get("out") is not None:
        raise UnsupportedError("matmul with out= is not supported")
    return Node(name, "matmul", (a, b), {"num_threads": torch_threads()})


function_handler("torch.matmul", "torch.bmm", "operator.matmul", "_operator.matmul")(
    _float_matmul)
method_handler("matmul", "bmm", "__matmul__")(_float_matmul)


def _refuse_mha(name: str, why: str):
    raise UnsupportedError(
        f"module {name!r} (nn.MultiheadAttention): {why}. qexact reproduces its inference fast "
        "path (torch._native_multi_head_attention: eval, batch_first=True, packed in_proj with "
        "bias, an even num_heads, no bias_k/bias_v/add_zero_attn, self-attention m(x, x, x) "
        "without masks, run under torch.no_grad()/inference_mode)")


@module_handler("torch.nn.MultiheadAttention")
def _multihead_attention(module, name, inputs):
    """The module's fast path (engines/aten_attention.py). The node returns the module's pair
    with the weights None (ops/attention.py: their order is not reproduced); the attention
    output is the same whatever ``need_weights`` is."""
    import numpy as np

    checks = ((module.training, "training mode"),
              (not module.batch_first, "batch_first=False"),
              (module.in_proj_bias is None, "no in_proj bias"),
              (not module._qkv_same_embed_dim, "separate q/k/v projection weights"),
              (module.num_heads % 2 != 0, "an odd num_heads (torch takes the slow path)"),
              (module.bias_k is not None or module.bias_v is not None, "bias_k/bias_v"),
              (module.add_zero_attn, "add_zero_attn"))
    for failed, why in checks:
        if failed:
            _refuse_mha(name, why)
    # FX passes forward's arguments positionally: (query, key, value, key_padding_mask,
    # need_weights, attn_mask, average_attn_weights, is_causal)
    inputs = tuple(inputs)
    if len(inputs) < 3 or not (inputs[0] == inputs[1] == inputs[2]):
        _refuse_mha(name, "query, key and value must be one tensor (self-attention)")
    extra = inputs[3:] + (None,) * (8 - len(inputs))
    if extra[0] is not None or extra[2] is not None or extra[4]:
        _refuse_mha(name, "key_padding_mask, attn_mask and is_causal are not supported")
    arrays = {"in_proj_weight": module.in_proj_weight, "in_proj_bias": module.in_proj_bias,
              "out_proj_weight": module.out_proj.weight, "out_proj_bias": module.out_proj.bias}
    arrays = {key: value.detach().float().numpy().astype(np.float32) for key, value in
              arrays.items()}
    return Node(name, "multihead_attention", (inputs[0],),
                {"num_heads": int(module.num_heads), "num_threads": torch_threads()}, arrays)


@function_handler("torch.nn.functional.scaled_dot_product_attention",
                  "torch._C._nn.scaled_dot_product_attention")
def _scaled_dot_product_attention(name, args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
             "enable_gqa")
    values = {key: _arg(args, kwargs, i, key, None) for i, key in enumerate(names)}
    if values["attn_mask"] is not None or values["dropout_p"] not in (None, 0, 0.0) or \
            values["is_causal"] or values["enable_gqa"]:
        raise UnsupportedError("F.scaled_dot_product_attention is supported without attn_mask, "
                               "dropout, is_causal and enable_gqa (ATen's flash kernel, "
                               "unmasked)")
    scale = values["scale"]
    if scale is not None and not isinstance(scale, (int, float)):
        raise UnsupportedError("scaled_dot_product_attention needs a constant scale")
    return Node(name, "scaled_dot_product_attention",
                (values["query"], values["key"], values["value"]),
                {"scale": None if scale is None else float(scale)})

