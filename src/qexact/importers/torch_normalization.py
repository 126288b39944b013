"""torch import handlers for quantized normalization modules (``qexact.ops.normalization``).

nnq.BatchNorm2d/3d and nniq.BNReLU2d/3d -> ``batch_norm``; nnq.LayerNorm -> ``layer_norm``;
nnq.GroupNorm -> ``group_norm``; nnq.InstanceNorm1d/2d/3d -> ``instance_norm``. The output dtype
is the input's (ATen allocates ``Y`` with ``X``'s scalar type). GroupNorm and InstanceNorm are
imported for contiguous (NCHW) inputs; ATen takes another path for channels-last inputs (what a
quantized Conv returns): set ``node.attrs["channels_last"] = True`` for those.
"""

from __future__ import annotations

from ..graph import Node
from ._handlers import _resolve, module_handler


def _float32(tensor):
    if tensor is None:
        return None
    return tensor.detach().float().contiguous().numpy().copy()


def _common(module) -> tuple[dict, dict]:
    attrs = {"eps": float(module.eps), "output_scale": float(module.scale),
             "output_zero_point": int(module.zero_point)}
    arrays = {}
    for name in ("weight", "bias"):
        value = _float32(getattr(module, name, None))
        if value is not None:
            arrays[name] = value
    return attrs, arrays


@module_handler("torch.ao.nn.intrinsic.quantized.BNReLU2d", "torch.ao.nn.intrinsic.quantized.BNReLU3d",
                "torch.ao.nn.quantized.BatchNorm2d", "torch.ao.nn.quantized.BatchNorm3d")
def _batch_norm(module, name, inputs):
    attrs, arrays = _common(module)
    arrays["running_mean"] = _float32(module.running_mean)
    arrays["running_var"] = _float32(module.running_var)
    three_d = [cls for path in ("torch.ao.nn.quantized.BatchNorm3d",
                                "torch.ao.nn.intrinsic.quantized.BNReLU3d")
               if (cls := _resolve(path)) is not None]
    relu = [cls for path in ("torch.ao.nn.intrinsic.quantized.BNReLU2d",
                             "torch.ao.nn.intrinsic.quantized.BNReLU3d")
            if (cls := _resolve(path)) is not None]
    attrs["spatial_dims"] = 3 if isinstance(module, tuple(three_d)) else 2
    attrs["relu"] = isinstance(module, tuple(relu))
    return Node(name, "batch_norm", inputs, attrs, arrays)


@module_handler("torch.ao.nn.quantized.LayerNorm")
def _layer_norm(module, name, inputs):
    attrs, arrays = _common(module)
    attrs["normalized_shape"] = [int(size) for size in module.normalized_shape]
    return Node(name, "layer_norm", inputs, attrs, arrays)


@module_handler("torch.ao.nn.quantized.GroupNorm")
def _group_norm(module, name, inputs):
    attrs, arrays = _common(module)
    attrs.update(num_groups=int(module.num_groups), num_channels=int(module.num_channels))
    return Node(name, "group_norm", inputs, attrs, arrays)


@module_handler("torch.ao.nn.quantized.InstanceNorm1d", "torch.ao.nn.quantized.InstanceNorm2d",
                "torch.ao.nn.quantized.InstanceNorm3d")
def _instance_norm(module, name, inputs):
    attrs, arrays = _common(module)
    channels = int(module.num_features)
    attrs.update(num_groups=channels, num_channels=channels)
    return Node(name, "instance_norm", inputs, attrs, arrays)

