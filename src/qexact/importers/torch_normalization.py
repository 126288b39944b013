"""torch import handlers for quantized normalization modules (``qexact.ops.normalization``).

nnq.BatchNorm2d/3d and nniq.BNReLU2d/3d -> ``batch_norm``; nnq.LayerNorm -> ``layer_norm``;
nnq.GroupNorm -> ``group_norm``; nnq.InstanceNorm1d/2d/3d -> ``instance_norm``. The output dtype
is the input's (ATen allocates ``Y`` with ``X``'s scalar type). GroupNorm and InstanceNorm are
imported for contiguous (NCHW) inputs; ATen takes another path for channels-last inputs (what a
quantized Conv returns): set ``node.attrs["channels_last"] = True`` for those.

Float: nn.LayerNorm and F.layer_norm / torch.layer_norm on float tensors -> ``float_layer_norm``
(ops/float_normalization.py); ``torch.ops.quantized.layer_norm`` (FX's F.layer_norm) ->
``layer_norm``. nn.GroupNorm and F.group_norm on float tensors -> ``float_group_norm``;
nn.BatchNorm1d/2d/3d in eval and F.batch_norm(training=False) -> ``float_batch_norm`` (training
mode and track_running_stats=False are refused: batch statistics);
``torch.ops.quantized.batch_norm1d[_relu]`` -> ``batch_norm`` with ``spatial_dims`` 1.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node, Ref
from ._handlers import ConstantRef, _arg, _resolve, function_handler, module_handler


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



# --- Float LayerNorm, and quantized::layer_norm called in an FX forward ------------------------


def _float32_array(value, what: str):
    """A weight or bias given to F.layer_norm: a tensor, a Parameter the model holds (a
    constant node: ConvNeXt's LayerNorm2d), a number (a one-element get_attr), or None."""
    if value is None:
        return None
    if isinstance(value, ConstantRef):
        return value.float32_value(what)
    if isinstance(value, Ref):
        raise UnsupportedError(f"{what} computed in forward is not supported; give LayerNorm a "
                               "constant weight and bias")
    if isinstance(value, (int, float)):
        return np.asarray([value], np.float32)
    return _float32(value)


@module_handler("torch.nn.LayerNorm")
def _float_layer_norm_module(module, name, inputs):
    arrays = {key: value for key in ("weight", "bias")
              if (value := _float32(getattr(module, key, None))) is not None}
    return Node(name, "float_layer_norm", inputs, {
        "normalized_shape": [int(size) for size in module.normalized_shape],
        "eps": float(module.eps)}, arrays)


def _shape_list(shape):
    if isinstance(shape, Ref) or (isinstance(shape, (tuple, list))
                                  and any(isinstance(size, Ref) for size in shape)):
        raise UnsupportedError("layer_norm with a normalized_shape computed in forward "
                               "(x.shape[-1:]) is not supported; give it constant sizes")
    return [int(shape)] if isinstance(shape, int) else [int(size) for size in shape]


@function_handler("torch.nn.functional.layer_norm", "torch.layer_norm")
def _float_layer_norm_function(name, args, kwargs):
    arrays = {}
    for position, key in ((2, "weight"), (3, "bias")):
        value = _float32_array(_arg(args, kwargs, position, key, None), f"F.layer_norm {key}")
        if value is not None:
            arrays[key] = value
    return Node(name, "float_layer_norm", args[:1], {
        "normalized_shape": _shape_list(_arg(args, kwargs, 1, "normalized_shape", None)),
        "eps": float(_arg(args, kwargs, 4, "eps", 1e-5))}, arrays)


@function_handler("torch.ops.quantized.layer_norm")
def _quantized_layer_norm_function(name, args, kwargs):
    """``torch.ops.quantized.layer_norm(x, normalized_shape, weight, bias, eps, output_scale,
    output_zero_point)``: what FX's convert writes for F.layer_norm."""
    arrays = {}
    for position, key in ((2, "weight"), (3, "bias")):
        value = _float32_array(_arg(args, kwargs, position, key, None), f"layer_norm {key}")
        if value is not None:
            arrays[key] = value
    return Node(name, "layer_norm", args[:1], {
        "normalized_shape": _shape_list(_arg(args, kwargs, 1, "normalized_shape", None)),
        "eps": float(_arg(args, kwargs, 4, "eps", 1e-5)),
        "output_scale": float(_arg(args, kwargs, 5, "output_scale", None)),
        "output_zero_point": int(_arg(args, kwargs, 6, "output_zero_point", None))}, arrays)


# --- Float GroupNorm and eval BatchNorm; quantized::batch_norm1d --------------------------------


@module_handler("torch.nn.GroupNorm")
def _float_group_norm_module(module, name, inputs):
    arrays = {key: value for key in ("weight", "bias")
              if (value := _float32(getattr(module, key, None))) is not None}
    return Node(name, "float_group_norm", inputs, {
        "num_groups": int(module.num_groups), "num_channels": int(module.num_channels),
        "eps": float(module.eps)}, arrays)


@function_handler("torch.nn.functional.group_norm", "torch.group_norm")
def _float_group_norm_function(name, args, kwargs):
    arrays = {}
    for position, key in ((2, "weight"), (3, "bias")):
        value = _float32_array(_arg(args, kwargs, position, key, None), f"F.group_norm {key}")
        if value is not None:
            arrays[key] = value
    groups = _arg(args, kwargs, 1, "num_groups", None)
    if isinstance(groups, Ref):
        raise UnsupportedError("F.group_norm with num_groups computed in forward is not supported")
    channels = None  # without weight and bias: the input's, checked at run time
    for value in arrays.values():
        channels = int(value.size)
    return Node(name, "float_group_norm", args[:1], {
        "num_groups": int(groups), "num_channels": channels,
        "eps": float(_arg(args, kwargs, 4, "eps", 1e-5))}, arrays)


@module_handler("torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d")
def _float_batch_norm_module(module, name, inputs):
    if module.training or module.running_mean is None:
        raise UnsupportedError(
            f"{type(module).__name__} {name!r} normalizes with batch statistics (training mode "
            "or track_running_stats=False); qexact runs BatchNorm in eval with running "
            "statistics: call model.eval()")
    arrays = {key: value for key in ("weight", "bias", "running_mean", "running_var")
              if (value := _float32(getattr(module, key, None))) is not None}
    return Node(name, "float_batch_norm", inputs, {"eps": float(module.eps)}, arrays)


@function_handler("torch.nn.functional.batch_norm")
def _float_batch_norm_function(name, args, kwargs):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)``."""
    if _arg(args, kwargs, 5, "training", False):
        raise UnsupportedError("F.batch_norm with training=True (batch statistics) is not "
                               "supported; qexact runs eval BatchNorm")
    arrays = {}
    for position, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        value = _float32_array(_arg(args, kwargs, position, key, None), f"F.batch_norm {key}")
        if value is not None:
            arrays[key] = value
    if "running_mean" not in arrays or "running_var" not in arrays:
        raise UnsupportedError("F.batch_norm without running statistics is not supported")
    return Node(name, "float_batch_norm", args[:1],
                {"eps": float(_arg(args, kwargs, 7, "eps", 1e-5))}, arrays)


def _quantized_batch_norm(spatial: int, relu: bool):
    def handler(name, args, kwargs):
        """``quantized::batch_norm1d(x, weight, bias, mean, var, eps, output_scale,
        output_zero_point)``: (N, C) or (N, C, L) inputs."""
        arrays = {}
        for position, key in ((1, "weight"), (2, "bias"), (3, "running_mean"),
                              (4, "running_var")):
            value = _float32_array(_arg(args, kwargs, position, key, None),
                                   f"quantized batch_norm {key}")
            if value is not None:
                arrays[key] = value
        return Node(name, "batch_norm", args[:1], {
            "eps": float(_arg(args, kwargs, 5, "eps", 1e-5)),
            "output_scale": float(_arg(args, kwargs, 6, "output_scale", None)),
            "output_zero_point": int(_arg(args, kwargs, 7, "output_zero_point", None)),
            "spatial_dims": spatial, "relu": relu}, arrays)

    return handler


for _relu in (False, True):
    _path = f"torch.ops.quantized.batch_norm1d{'_relu' if _relu else ''}"
    function_handler(_path, _path + ".default")(_quantized_batch_norm(1, _relu))
