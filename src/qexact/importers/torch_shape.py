"""torch import handlers for movement ops: permute, transpose, squeeze/unsqueeze, split/chunk
(tuples; FX picks pieces with ``operator.getitem``), contiguous, pixel_shuffle, channel_shuffle;
and the reduction ``mean`` (``ops.reduce``)."""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node
from ._handlers import _arg, function_handler, method_handler, module_handler


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _dims(args, kwargs):
    dims = args[1:] if len(args) > 1 else (kwargs.get("dims"),)
    return list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else list(dims)


def _permute(name, args, kwargs):
    return Node(name, "permute", args[:1], {"dims": _dims(args, kwargs)})


def _transpose(name, args, kwargs):
    return Node(name, "transpose", args[:1], {"dim0": _arg(args, kwargs, 1, "dim0", None),
                                              "dim1": _arg(args, kwargs, 2, "dim1", None)})


def _squeeze(name, args, kwargs):
    return Node(name, "squeeze", args[:1], {"dim": _plain(_arg(args, kwargs, 1, "dim", None))})


def _unsqueeze(name, args, kwargs):
    return Node(name, "unsqueeze", args[:1], {"dim": _arg(args, kwargs, 1, "dim", None)})


def _split(name, args, kwargs):
    return Node(name, "split", args[:1], {
        "split_size_or_sections": _plain(_arg(args, kwargs, 1, "split_size_or_sections",
                                              kwargs.get("split_size"))),
        "dim": _arg(args, kwargs, 2, "dim", 0)})


def _chunk(name, args, kwargs):
    return Node(name, "chunk", args[:1], {"chunks": _arg(args, kwargs, 1, "chunks", None),
                                          "dim": _arg(args, kwargs, 2, "dim", 0)})


def _contiguous(name, args, kwargs):
    memory_format = str(_arg(args, kwargs, 1, "memory_format", "torch.contiguous_format"))
    formats = {"torch.contiguous_format": "contiguous", "torch.channels_last": "channels_last",
               "torch.channels_last_3d": "channels_last_3d"}
    if memory_format not in formats:
        raise UnsupportedError(f"contiguous(memory_format={memory_format}) is not supported")
    return Node(name, "contiguous", args[:1], {"memory_format": formats[memory_format]})


def _pixel_shuffle(name, args, kwargs):
    return Node(name, "pixel_shuffle", args[:1],
                {"factor": _arg(args, kwargs, 1, "upscale_factor", None)})


def _channel_shuffle(name, args, kwargs):
    return Node(name, "channel_shuffle", args[:1], {"groups": _arg(args, kwargs, 1, "groups", None)})


function_handler("torch.permute")(_permute)
function_handler("torch.transpose")(_transpose)
function_handler("torch.squeeze")(_squeeze)
function_handler("torch.unsqueeze")(_unsqueeze)
function_handler("torch.split", "torch.functional.split")(_split)
function_handler("torch.chunk")(_chunk)
function_handler("torch.nn.functional.pixel_shuffle", "torch.pixel_shuffle")(_pixel_shuffle)
function_handler("torch.nn.functional.channel_shuffle", "torch.channel_shuffle",
                 "torch.native_channel_shuffle")(_channel_shuffle)
method_handler("permute")(_permute)
method_handler("transpose")(_transpose)
method_handler("squeeze")(_squeeze)
method_handler("unsqueeze")(_unsqueeze)
method_handler("split")(_split)
method_handler("chunk")(_chunk)
method_handler("contiguous")(_contiguous)


@module_handler("torch.nn.PixelShuffle")
def _pixel_shuffle_module(module, name, inputs):
    return Node(name, "pixel_shuffle", inputs, {"factor": int(module.upscale_factor)})


@module_handler("torch.nn.ChannelShuffle")
def _channel_shuffle_module(module, name, inputs):
    return Node(name, "channel_shuffle", inputs, {"groups": int(module.groups)})


def _mean(name, args, kwargs):
    """``torch.mean(x, dim=None, keepdim=False, *, dtype=None)`` and ``x.mean(...)``."""
    dtype = kwargs.get("dtype")
    return Node(name, "mean", args[:1], {
        "dim": _plain(_arg(args, kwargs, 1, "dim", None)),
        "keepdim": bool(_arg(args, kwargs, 2, "keepdim", False)),
        "dtype": None if dtype is None else str(dtype)})


function_handler("torch.mean")(_mean)
method_handler("mean")(_mean)


@function_handler("torch.nn.functional.pad")
def _pad(name, args, kwargs):
    pad = _arg(args, kwargs, 1, "pad", None)
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    if not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
        raise UnsupportedError(f"F.pad with computed amounts {pad!r} is not supported")
    return Node(name, "pad", args[:1], {"pad": list(pad), "mode": mode, "value": value})


@module_handler("torch.nn.ZeroPad1d", "torch.nn.ZeroPad2d", "torch.nn.ZeroPad3d",
                "torch.nn.ConstantPad1d", "torch.nn.ConstantPad2d", "torch.nn.ConstantPad3d")
def _pad_module(module, name, inputs):
    return Node(name, "pad", inputs, {"pad": list(module.padding), "mode": "constant",
                                      "value": float(module.value)})


def _expand(name, args, kwargs):
    """``x.expand(n, -1, -1)`` (ViT's ``class_token.expand``): a broadcast view."""
    sizes = args[1:] if len(args) > 1 else (kwargs.get("size"),)
    if isinstance(sizes[0], (tuple, list)):  # x.expand([n, -1]); aten::expand(x, size, implicit)
        sizes = tuple(sizes[0])
    return Node(name, "expand", (args[0], *sizes))


def _unbind(name, args, kwargs):
    """``x.unbind(dim)``: a tuple of views; FX picks them with ``operator.getitem``."""
    return Node(name, "unbind", args[:1], {"dim": _arg(args, kwargs, 1, "dim", 0)})


method_handler("expand")(_expand)
method_handler("expand_as")(lambda name, args, kwargs: Node(name, "expand", tuple(args[:2])))
function_handler("torch.unbind")(_unbind)
method_handler("unbind")(_unbind)


@function_handler("torch.max")
def _max(name, args, kwargs) -> Node:
    """``torch.max(x, dim, keepdim=False)`` / ``x.max(dim)``: op ``max_dim`` (values, indices);
    ``torch.max(x)`` and ``torch.max(a, b)`` are other ops, refused by name."""
    dim = _arg(args, kwargs, 1, "dim", None)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise UnsupportedError("torch.max is supported as torch.max(x, dim, keepdim) (values and "
                               "indices along one dim); not the max of all elements nor "
                               "torch.max(a, b)")
    return Node(name, "max_dim", tuple(args[:1]),
                {"dim": dim, "keepdim": bool(_arg(args, kwargs, 2, "keepdim", False))})


method_handler("max")(_max)

