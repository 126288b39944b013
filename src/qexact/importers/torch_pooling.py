"""torch import handlers for pooling and resampling: nn.MaxPool*d, nn.AvgPool*d,
nn.AdaptiveAvgPool*d, nn.Upsample and their functional forms."""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node, Ref
from ._handlers import _arg, function_handler, module_handler

_SPATIAL = {"1d": 1, "2d": 2, "3d": 3}


def _dims(module) -> int:
    return _SPATIAL[type(module).__name__[-2:].lower()]


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


@module_handler("torch.nn.MaxPool1d", "torch.nn.MaxPool2d", "torch.nn.MaxPool3d")
def _max_pool(module, name, inputs):
    if module.return_indices:
        raise UnsupportedError("MaxPool with return_indices=True is not supported")
    return Node(name, "max_pool", inputs, {
        "spatial_dims": _dims(module), "kernel_size": _plain(module.kernel_size),
        "stride": _plain(module.stride), "padding": _plain(module.padding),
        "dilation": _plain(module.dilation), "ceil_mode": bool(module.ceil_mode)})


@module_handler("torch.nn.AvgPool1d", "torch.nn.AvgPool2d", "torch.nn.AvgPool3d")
def _avg_pool(module, name, inputs):
    return Node(name, "avg_pool", inputs, {
        "spatial_dims": _dims(module), "kernel_size": _plain(module.kernel_size),
        "stride": _plain(module.stride), "padding": _plain(module.padding),
        "ceil_mode": bool(module.ceil_mode), "count_include_pad": bool(module.count_include_pad),
        "divisor_override": getattr(module, "divisor_override", None)})


@module_handler("torch.nn.AdaptiveAvgPool1d", "torch.nn.AdaptiveAvgPool2d",
                "torch.nn.AdaptiveAvgPool3d")
def _adaptive_avg_pool(module, name, inputs):
    return Node(name, "adaptive_avg_pool", inputs, {
        "spatial_dims": _dims(module), "output_size": _plain(module.output_size)})


@module_handler("torch.nn.AdaptiveMaxPool1d", "torch.nn.AdaptiveMaxPool2d")
def _adaptive_max_pool(module, name, inputs):
    if module.return_indices:
        raise UnsupportedError("AdaptiveMaxPool with return_indices=True is not supported")
    return Node(name, "adaptive_max_pool", inputs, {
        "spatial_dims": _dims(module), "output_size": _plain(module.output_size)})


@module_handler("torch.nn.Upsample", "torch.nn.UpsamplingNearest2d", "torch.nn.UpsamplingBilinear2d")
def _upsample(module, name, inputs):
    mode = module.mode
    align = module.align_corners
    if type(module).__name__ == "UpsamplingBilinear2d":
        align = True
    if getattr(module, "recompute_scale_factor", None):
        raise UnsupportedError("Upsample with recompute_scale_factor=True is not supported")
    return Node(name, "upsample", inputs, {
        "mode": mode, "size": _plain(module.size), "scale_factor": _plain(module.scale_factor),
        "align_corners": align})


def _functional_pool(op, spatial, kind):
    names = (("kernel_size", None), ("stride", None), ("padding", 0))
    if kind == "max":
        names += (("dilation", 1), ("ceil_mode", False))
    else:
        names += (("ceil_mode", False), ("count_include_pad", True))
        if spatial > 1:
            names += (("divisor_override", None),)

    def handler(name, args, kwargs):
        attrs = {"spatial_dims": spatial}
        for position, (key, default) in enumerate(names, start=1):
            attrs[key] = _plain(_arg(args, kwargs, position, key, default))
        if kind == "max" and _arg(args, kwargs, 6, "return_indices", False):
            raise UnsupportedError("max_pool with return_indices=True is not supported")
        return Node(name, op, args[:1], attrs)

    return handler


for _spatial in (1, 2, 3):
    function_handler(f"torch.nn.functional.max_pool{_spatial}d",
                     f"torch.max_pool{_spatial}d")(_functional_pool("max_pool", _spatial, "max"))
    function_handler(f"torch.nn.functional.avg_pool{_spatial}d")(
        _functional_pool("avg_pool", _spatial, "avg"))
    if _spatial < 3:
        function_handler(f"torch.nn.functional.adaptive_max_pool{_spatial}d")(
            lambda name, args, kwargs, _s=_spatial: Node(name, "adaptive_max_pool", args[:1], {
                "spatial_dims": _s,
                "output_size": _plain(_arg(args, kwargs, 1, "output_size", None))}))
    function_handler(f"torch.nn.functional.adaptive_avg_pool{_spatial}d")(
        lambda name, args, kwargs, _s=_spatial: Node(name, "adaptive_avg_pool", args[:1], {
            "spatial_dims": _s, "output_size": _plain(_arg(args, kwargs, 1, "output_size", None))}))


@function_handler("torch.nn.functional.interpolate", "torch.nn.functional.upsample")
def _interpolate(name, args, kwargs):
    mode = _arg(args, kwargs, 3, "mode", "nearest")
    if _arg(args, kwargs, 5, "recompute_scale_factor", None):
        raise UnsupportedError("interpolate with recompute_scale_factor=True is not supported")
    size = _arg(args, kwargs, 1, "size", None)
    attrs = {"mode": mode, "scale_factor": _plain(_arg(args, kwargs, 2, "scale_factor", None)),
             "align_corners": _arg(args, kwargs, 4, "align_corners", None)}
    computed = isinstance(size, Ref) or (isinstance(size, (tuple, list))
                                         and any(isinstance(s, Ref) for s in size))
    if computed:  # size=y.shape[-2:] or (h, w) from x.size(): inputs of the node, read at run time
        parts = (size,) if isinstance(size, Ref) else tuple(size)
        return Node(name, "upsample", args[:1] + parts, dict(attrs, size=None,
                                                             size_from_inputs=True))
    return Node(name, "upsample", args[:1], dict(attrs, size=_plain(size)))
