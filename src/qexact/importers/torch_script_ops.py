"""torch import handlers for the kernels quantized modules call, where the module's own handler
lives elsewhere: ``torch.ops.quantized.batch_norm2d/3d``, ``layer_norm``, ``group_norm``,
``instance_norm`` (what TorchScript records for nnq.BatchNorm2d, nnq.LayerNorm, ...), and
TorchScript's ATen upsampling nodes (``aten::upsample_nearest2d(x, output_size, scale_factors)``:
what ``F.interpolate`` and ``nn.Upsample`` become when traced). Each makes the node the module's
handler makes (``torch_normalization``, ``torch_pooling``).
"""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node, Ref
from ._handlers import _arg, function_handler, torchscript_handler


def _float32(tensor):
    return None if tensor is None else tensor.detach().float().contiguous().numpy().copy()


def _norm_fields(args, kwargs, weight_at: int, eps_at: int) -> tuple[dict, dict]:
    attrs = {"eps": float(_arg(args, kwargs, eps_at, "eps", 1e-5)),
             "output_scale": float(_arg(args, kwargs, eps_at + 1, "output_scale", None)),
             "output_zero_point": int(_arg(args, kwargs, eps_at + 2, "output_zero_point", None))}
    arrays = {}
    for offset, key in enumerate(("weight", "bias")):
        value = _float32(_arg(args, kwargs, weight_at + offset, key, None))
        if value is not None:
            arrays[key] = value
    return attrs, arrays


def _batch_norm(spatial: int, relu: bool):
    def handler(name, args, kwargs):
        """``quantized::batch_norm2d(x, weight, bias, mean, var, eps, output_scale, output_zp)``"""
        attrs, arrays = _norm_fields(args, kwargs, 1, 5)
        arrays["running_mean"] = _float32(_arg(args, kwargs, 3, "mean", None))
        arrays["running_var"] = _float32(_arg(args, kwargs, 4, "var", None))
        attrs.update(spatial_dims=spatial, relu=relu)
        return Node(name, "batch_norm", tuple(args[:1]), attrs, arrays)

    return handler


for _spatial in (2, 3):
    for _relu in (False, True):
        _path = f"torch.ops.quantized.batch_norm{_spatial}d{'_relu' if _relu else ''}"
        function_handler(_path, _path + ".default")(_batch_norm(_spatial, _relu))


@function_handler("torch.ops.quantized.layer_norm", "torch.ops.quantized.layer_norm.default")
def _layer_norm(name, args, kwargs):
    """``quantized::layer_norm(x, normalized_shape, weight, bias, eps, output_scale, output_zp)``"""
    attrs, arrays = _norm_fields(args, kwargs, 2, 4)
    attrs["normalized_shape"] = [int(size) for size in _arg(args, kwargs, 1, "normalized_shape", ())]
    return Node(name, "layer_norm", tuple(args[:1]), attrs, arrays)


@function_handler("torch.ops.quantized.group_norm", "torch.ops.quantized.group_norm.default")
def _group_norm(name, args, kwargs):
    """``quantized::group_norm(x, num_groups, weight, bias, eps, output_scale, output_zp)``"""
    attrs, arrays = _norm_fields(args, kwargs, 2, 4)
    weight = arrays.get("weight")
    if weight is None:
        raise UnsupportedError("quantized.group_norm without a weight is not supported")
    attrs.update(num_groups=int(_arg(args, kwargs, 1, "num_groups", None)),
                 num_channels=int(weight.size))
    return Node(name, "group_norm", tuple(args[:1]), attrs, arrays)


@function_handler("torch.ops.quantized.instance_norm", "torch.ops.quantized.instance_norm.default")
def _instance_norm(name, args, kwargs):
    """``quantized::instance_norm(x, weight, bias, eps, output_scale, output_zp)``"""
    attrs, arrays = _norm_fields(args, kwargs, 1, 3)
    weight = arrays.get("weight")
    if weight is None:
        raise UnsupportedError("quantized.instance_norm without a weight is not supported")
    attrs.update(num_groups=int(weight.size), num_channels=int(weight.size))
    return Node(name, "instance_norm", tuple(args[:1]), attrs, arrays)


# --- TorchScript's upsampling nodes ------------------------------------------------------------


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _upsample(mode: str, align_corners_at: int | None):
    def handler(name, inputs, module_path):
        """``aten::upsample_<mode>(x, output_size, [align_corners,] scale_factors)`` (the
        ``.vec`` overloads F.interpolate calls)."""
        size = inputs[1]
        scales_at = 2 if align_corners_at is None else 3
        scales = inputs[scales_at] if len(inputs) > scales_at else None
        if len(inputs) != scales_at + 1:  # upsample_nearest2d(x, size, scales_h, scales_w)
            if any(scale is not None for scale in inputs[scales_at:]):
                raise UnsupportedError(f"upsample_{mode} with both a size and per-dimension "
                                       "scales is not supported")
            scales = None
        attrs = {"mode": "nearest" if mode.startswith("nearest") else mode.rstrip("123d"),
                 "scale_factor": _plain(scales),
                 "align_corners": None if align_corners_at is None else
                 bool(inputs[align_corners_at])}
        if isinstance(size, Ref) or (isinstance(size, (tuple, list))
                                     and any(isinstance(s, Ref) for s in size)):
            parts = (size,) if isinstance(size, Ref) else tuple(size)
            return Node(name, "upsample", (inputs[0], *parts), dict(attrs, size=None,
                                                                     size_from_inputs=True))
        return Node(name, "upsample", (inputs[0],), dict(attrs, size=_plain(size)))

    return handler


for _kind, _mode, _align in (("upsample_nearest1d", "nearest1d", None),
                             ("upsample_nearest2d", "nearest2d", None),
                             ("upsample_nearest3d", "nearest3d", None),
                             ("upsample_linear1d", "linear1d", 2),
                             ("upsample_bilinear2d", "bilinear2d", 2),
                             ("upsample_trilinear3d", "trilinear3d", 2)):
    torchscript_handler(f"aten::{_kind}")(_upsample(_mode, _align))
