"""torch import handlers for quantized embeddings (recommendation models).

``torch.ao.nn.quantized.Embedding`` / ``EmbeddingBag`` (from ``float_qparams_weight_only_qconfig``
(quint8) or ``float_qparams_weight_only_qconfig_4bit`` (quint4x2), eager ``convert`` or FX
``convert_fx``) hold their table as a TorchBind ``EmbeddingPackedParamsBase``; its forward calls
``quantized::embedding_byte``/``embedding_4bit`` or ``embedding_bag_byte``/``embedding_bag_4bit``.
The node stores the packed rows as PyTorch's prepack builds them from the module's per-row float
qparams (``ops.embedding.pack_rows``: ``quantized::embedding_bag_unpack`` gives the codes,
scales and zero points the prepack was given). The ``*_rowwise_offsets`` kinds (TorchScript)
take the packed uint8 rows as a tensor: read as stored.

Float tables left unconverted (``nn.Embedding``, ``F.embedding``; TorchScript
``aten::embedding(weight, indices, ...)``) become ``float_embedding`` nodes (an exact gather);
``max_norm`` is refused (its forward renormalizes the table in place).

PyTorch's quantized EmbeddingBag always sums (``mode`` is recorded, not applied: see
``ops/embedding.py``); pruned tables (``compressed_indices_mapping``) are refused.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node
from ..ops.embedding import pack_rows
from ._handlers import _arg, _import_torch, function_handler, module_handler, torchscript_handler

_BITS = {"torch.quint8": 8, "torch.quint4x2": 4}


def rows_of_packed(packed, where: str) -> tuple[np.ndarray, int]:
    """The packed rows (uint8) and bit width of a TorchBind ``EmbeddingPackedParamsBase``."""
    torch = _import_torch()
    weight = torch.ops.quantized.embedding_bag_unpack(packed)
    bits = _BITS.get(str(weight.dtype))
    if bits is None or weight.qscheme() != torch.per_channel_affine_float_qparams:
        raise UnsupportedError(f"{where}: quantized embedding weight must be quint8 or quint4x2 "
                               f"with per-row float qparams, got {weight.dtype} "
                               f"{weight.qscheme()}")
    rows, dim = weight.shape
    stored = weight.int_repr().numpy().reshape(rows, -1)  # quint4x2: two codes a byte
    if bits == 4:
        codes = np.empty((rows, dim), np.uint8)
        codes[:, 0::2] = stored & 0x0F
        codes[:, 1::2] = stored >> 4
    else:
        codes = stored
    scales = weight.q_per_channel_scales().to(torch.float32).numpy()
    zero_points = weight.q_per_channel_zero_points().to(torch.float32).numpy()
    return pack_rows(codes, scales, zero_points, bits), bits


def _bag_inputs(inputs, where: str) -> tuple:
    """``(indices, offsets, per_sample_weights)`` of an EmbeddingBag call; a
    ``compressed_indices_mapping`` (pruned table) is refused."""
    inputs = tuple(inputs) + (None,) * (4 - len(inputs))
    if inputs[3] is not None:
        raise UnsupportedError(f"{where}: compressed_indices_mapping (pruned embedding tables) "
                               "is not supported")
    return inputs[:3]


def _kernel_bits(module) -> int:
    """The kernel the module's forward calls: ``embedding[_bag]_4bit`` for ``dtype`` quint4x2,
    else ``*_byte``. torch 2.13's ``nnq.Embedding.from_float`` leaves ``dtype`` quint8 on a
    quint4x2 table, so its forward runs the byte kernel on 4-bit rows."""
    return 4 if str(module.dtype) == "torch.quint4x2" else 8


def _embedding_attrs(kernel_bits: int, row_bits: int) -> dict:
    attrs = {"bit_width": kernel_bits}
    if row_bits != kernel_bits:
        attrs["row_bit_width"] = row_bits
    return attrs


@module_handler("torch.ao.nn.quantized.Embedding")
def _embedding(module, name, inputs):
    rows, bits = rows_of_packed(module._packed_params._packed_weight, name)
    return Node(name, "embedding", tuple(inputs[:1]), _embedding_attrs(_kernel_bits(module), bits),
                {"rows": rows})


@module_handler("torch.ao.nn.quantized.EmbeddingBag")
def _embedding_bag(module, name, inputs):
    if getattr(module, "pruned_weights", False):
        raise UnsupportedError(f"{name}: pruned quantized EmbeddingBag is not supported")
    rows, bits = rows_of_packed(module._packed_params._packed_weight, name)
    attrs = _embedding_attrs(_kernel_bits(module), bits)
    attrs.update({"include_last_offset": bool(module.include_last_offset),
                  "mode": str(module.mode)})
    return Node(name, "embedding_bag", _bag_inputs(inputs, name), attrs, {"rows": rows})


# --- TorchScript ------------------------------------------------------------------------------
# quantized::embedding_bag_byte(packed, indices, offsets, scale_grad_by_freq, mode,
#     pruned_weights, per_sample_weights, compressed_indices_mapping, include_last_offset)
# quantized::embedding_byte(packed, indices, pruned_weights)


def _script_bag(name, inputs, rows, bits, row_bits):
    (packed, indices, offsets, _scale_grad, mode, pruned, weights, mapping,
     include_last_offset) = (tuple(inputs) + (None,) * 9)[:9]
    if pruned or mapping is not None:
        raise UnsupportedError("pruned quantized embedding tables are not supported")
    attrs = _embedding_attrs(bits, row_bits)
    attrs.update({"include_last_offset": bool(include_last_offset),
                  "mode": {0: "sum", 1: "mean", 2: "max"}.get(mode or 0, "sum")})
    return Node(name, "embedding_bag", (indices, offsets, weights), attrs, {"rows": rows})


def _script_packed_bag(bits: int):
    def handler(name, inputs, module_path):
        rows, row_bits = rows_of_packed(inputs[0], module_path or name)
        return _script_bag(name, inputs, rows, bits, row_bits)

    return handler


torchscript_handler("quantized::embedding_bag_byte")(_script_packed_bag(8))
torchscript_handler("quantized::embedding_bag_4bit")(_script_packed_bag(4))


def _script_rowwise(bits: int):
    def handler(name, inputs, module_path):
        torch = _import_torch()
        weight = inputs[0]
        if not isinstance(weight, torch.Tensor) or weight.dtype != torch.uint8:
            raise UnsupportedError("the packed rows must be a constant uint8 tensor")
        return _script_bag(name, inputs, weight.contiguous().numpy().copy(), bits, bits)

    return handler


torchscript_handler("quantized::embedding_bag_byte_rowwise_offsets")(_script_rowwise(8))
torchscript_handler("quantized::embedding_bag_4bit_rowwise_offsets")(_script_rowwise(4))


def _script_embedding(bits: int):
    def handler(name, inputs, module_path):
        packed, indices = inputs[:2]
        if len(inputs) > 2 and inputs[2]:
            raise UnsupportedError("pruned quantized embedding tables are not supported")
        rows, row_bits = rows_of_packed(packed, module_path or name)
        return Node(name, "embedding", (indices,), _embedding_attrs(bits, row_bits),
                    {"rows": rows})

    return handler


torchscript_handler("quantized::embedding_byte")(_script_embedding(8))
torchscript_handler("quantized::embedding_4bit")(_script_embedding(4))


# --- Float embeddings (left unconverted: FX's default qconfig mapping has no Embedding) -------


def _float_table(weight, where: str) -> np.ndarray:
    torch = _import_torch()
    if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32 or weight.dim() != 2:
        raise UnsupportedError(f"{where}: a float embedding table must be a 2-D float32 tensor")
    return weight.detach().contiguous().numpy().copy()


def _refuse_max_norm(max_norm, where: str) -> None:
    if max_norm is not None:
        raise UnsupportedError(f"{where}: float embedding with max_norm is not supported (its "
                               "forward renormalizes the looked-up rows of the weight in place, "
                               "embedding_renorm_); use max_norm=None")


@module_handler("torch.nn.Embedding")
def _float_embedding_module(module, name, inputs):
    _refuse_max_norm(module.max_norm, name)
    return Node(name, "float_embedding", tuple(inputs[:1]),
                arrays={"weight": _float_table(module.weight, name)})


@function_handler("torch.nn.functional.embedding")
def _float_embedding_function(name, args, kwargs):
    """``F.embedding(input, weight, padding_idx, max_norm, ...)``: the table is a get_attr (a
    ``constant`` node) or a tensor."""
    torch = _import_torch()
    indices = _arg(args, kwargs, 0, "input", None)
    weight = _arg(args, kwargs, 1, "weight", None)
    _refuse_max_norm(_arg(args, kwargs, 3, "max_norm", None), name)
    if isinstance(weight, torch.Tensor):
        return Node(name, "float_embedding", (indices,),
                    arrays={"weight": _float_table(weight, name)})
    return Node(name, "float_embedding", (indices, weight))


@torchscript_handler("aten::embedding")
def _script_float_embedding(name, inputs, module_path):
    """``aten::embedding(weight, indices, padding_idx, scale_grad_by_freq, sparse)``: weight first
    (F.embedding takes it second). A traced ``max_norm`` shows as ``aten::embedding_renorm_``
    before it, which is refused."""
    weight, indices = inputs[:2]
    return Node(name, "float_embedding", (indices, weight))
