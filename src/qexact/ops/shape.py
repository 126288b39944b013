"""Movement ops on quantized tensors and shape arithmetic: flatten, reshape/view, identity,
contiguous, permute/transpose, squeeze/unsqueeze, split/chunk, pixel_shuffle, channel_shuffle.

None of these touches a value: a quantized tensor keeps its integers and qparams. The NumPy
strides follow torch's (a permute is a view with permuted strides, ``contiguous`` copies only a
non-contiguous tensor), because layout-dependent kernels downstream (pools, upsample) pick their
rounding from the strides. ``size`` and ``getitem`` evaluate the shape arithmetic a model's
``forward`` does (``x.view(x.size(0), -1)``); ``getitem`` also picks one output of split/chunk.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..layout import (is_channels_first_contiguous, is_channels_last, suggests_channels_last,
                      to_channels_last, to_contiguous)
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op


def _values(x):
    return x.values if isinstance(x, QuantizedArray) else np.asarray(x)


def _rewrap(x, values):
    return QuantizedArray(values, x.qparams) if isinstance(x, QuantizedArray) else values


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    """``torch.flatten``: merge dims ``start_dim..end_dim`` into one."""
    values = _values(x)
    if values.ndim == 0:
        return _rewrap(x, values.reshape(1))
    start, end = start_dim % values.ndim, end_dim % values.ndim
    if start > end:
        raise ShapeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    shape = values.shape[:start] + (math.prod(values.shape[start:end + 1]),) + values.shape[end + 1:]
    return _rewrap(x, values.reshape(shape))


def reshape(x, shape: tuple[int, ...]):
    """``Tensor.reshape``/``view``: one dimension may be -1."""
    values = _values(x)
    shape = tuple(int(size) for size in shape)
    try:
        return _rewrap(x, values.reshape(shape))
    except ValueError:
        raise ShapeError(f"cannot reshape an array of shape {values.shape} into {shape}") from None


def _explain_move(name):
    """An explain hook for ops that only move elements: which input element this one is."""

    def explain(params, inputs, result, index):
        source = _values(inputs[0])
        flat = int(np.ravel_multi_index(index, _values(result).shape))
        input_index = tuple(int(i) for i in np.unravel_index(flat, source.shape))
        stage = Stage(name, "the same integer, moved", {"from_index": list(input_index),
                                                        "to_index": list(index)},
                      _values(result)[index])
        return [stage], [(0, input_index)]

    return staticmethod(explain)


@graph_op("flatten", "torch.flatten / Tensor.flatten / nn.Flatten")
class FlattenOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return (int(node.attrs.get("start_dim", 0)), int(node.attrs.get("end_dim", -1))), input_qparams[0]

    @staticmethod
    def run(params, inputs):
        return flatten(inputs[0], *params)

    explain = _explain_move("flatten")


@graph_op("reshape", "Tensor.reshape / view / torch.reshape (inputs: tensor, then sizes)")
class ReshapeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        sizes = inputs[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = sizes[0]
        return reshape(inputs[0], tuple(sizes))

    explain = _explain_move("reshape")


@graph_op("identity", "nn.Identity, nn.Dropout in eval")
class IdentityOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        return inputs[0]

    explain = _explain_move("identity")


@graph_op("size", "Tensor.size / shape: a tuple, or one size with attr dim")
class SizeOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return node.attrs.get("dim"), None

    @staticmethod
    def run(dim, inputs):
        shape = tuple(int(size) for size in _values(inputs[0]).shape)
        return shape if dim is None else shape[dim]


def _index_from_template(template, bounds) -> tuple:
    """The index a ``dynamic_slice`` node states: ``{"input": k}`` is bound ``k`` (an int the
    graph computed), ``"..."`` Ellipsis, ``{"slice": [a, b, c]}`` a slice."""
    def part(value):
        return int(bounds[value["input"]]) if isinstance(value, dict) else value

    items = []
    for item in template:
        if isinstance(item, dict) and "slice" in item:
            items.append(slice(*(part(value) for value in item["slice"])))
        else:
            items.append(Ellipsis if item == "..." else item)
    return tuple(items)


@graph_op("dynamic_slice", "basic slicing whose bounds the model computes in forward "
          "(pos[:, :x.shape[1]]): inputs (tensor, *bounds); attr index (a template)")
class DynamicSliceOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return list(node.attrs["index"]), input_qparams[0] if input_qparams else None

    @staticmethod
    def run(template, inputs):
        container, bounds = inputs[0], inputs[1:]
        return _rewrap(container, _values(container)[_index_from_template(template, bounds)])


@graph_op("ndim", "Tensor.dim() / Tensor.ndim: the number of dimensions (an int)")
class NdimOp:
    prepare = staticmethod(lambda node, input_qparams, engine: (None, None))
    run = staticmethod(lambda params, inputs: int(np.ndim(_values(inputs[0]))))


def _tensor_index(index) -> tuple:
    """A constant basic index (ints, slices, None, Ellipsis), as a tuple; else ShapeError."""
    items = index if isinstance(index, tuple) else (index,)
    for item in items:
        if isinstance(item, np.ndarray) and item.dtype.kind in "iub":
            continue  # a constant index tensor (Swin's relative_position_index): a gather
        if not (item is None or item is Ellipsis or isinstance(item, (int, slice))):
            raise ShapeError(f"indexing a tensor with {item!r} is not supported; supported: "
                             "constant ints, slices, None, ... and integer tensors")
    if sum(isinstance(item, np.ndarray) for item in items) > 1:
        raise ShapeError("indexing with more than one index tensor is not supported")
    return items


@graph_op("getitem", "indexing: a shape tuple, one output of split/chunk/unbind, basic slicing "
          "of a tensor (ints, slices, None, ...; a view), or one integer index tensor (a gather)")
class GetItemOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        # a piece of a split or a slice keeps the tensor's qparams; a shape tuple has none
        return None, input_qparams[0] if input_qparams else None

    @staticmethod
    def run(params, inputs):
        container, index = inputs
        if isinstance(container, (QuantizedArray, np.ndarray)):  # x[:, 3:]: a view, as torch's
            return _rewrap(container, _values(container)[_tensor_index(index)])
        return container[index]

    @staticmethod
    def explain(params, inputs, result, index):
        container, item = inputs
        if isinstance(container, (QuantizedArray, np.ndarray)):
            source = _values(container)
            positions = np.arange(source.size).reshape(source.shape)[_tensor_index(item)]
            input_index = tuple(int(i) for i in np.unravel_index(int(positions[index]),
                                                                 source.shape))
            stage = Stage("getitem", "the same value, at its index in the sliced tensor",
                          {"from_index": list(input_index)}, _values(result)[index])
            return [stage], [(0, input_index)]
        stage = Stage("getitem", f"output {item} of a split", {"piece": item},
                      _values(result)[index])
        return [stage], [(0, (int(item),) + tuple(index))]


# --- permutations and views ---------------------------------------------------------------


def _dim(dim: int, ndim: int) -> int:
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ShapeError(f"dimension {dim} is out of range for a {ndim}-D tensor")
    return dim % max(ndim, 1)


def contiguous(values: np.ndarray, memory_format: str = "contiguous") -> np.ndarray:
    """``Tensor.contiguous(memory_format)``: the same array if it already is (size-1 dims
    ignored, as torch's ``is_contiguous``), else a dense copy in that format."""
    if memory_format in ("channels_last", "channels_last_3d"):
        return values if is_channels_last(values) else to_channels_last(values)
    if memory_format != "contiguous":
        raise ShapeError(f"memory format {memory_format!r}; supported: contiguous, channels_last")
    return values if is_channels_first_contiguous(values) else to_contiguous(values)


def permute(values: np.ndarray, dims) -> np.ndarray:
    """``Tensor.permute``: a view with permuted sizes and strides (np.transpose does the same)."""
    dims = tuple(_dim(int(d), values.ndim) for d in dims)
    if sorted(dims) != list(range(values.ndim)):
        raise ShapeError(f"permute dims {dims} are not a permutation of {values.ndim} dims")
    return values.transpose(dims)


def transpose(values: np.ndarray, dim0: int, dim1: int) -> np.ndarray:
    return np.swapaxes(values, _dim(dim0, values.ndim), _dim(dim1, values.ndim))


def squeeze(values: np.ndarray, dim=None) -> np.ndarray:
    """``squeeze``: drop size-1 dims (all, or those of ``dim``; others named are kept)."""
    if dim is None:
        dims = tuple(d for d, size in enumerate(values.shape) if size == 1)
    else:
        dims = tuple(_dim(int(d), values.ndim) for d in (dim if isinstance(dim, (tuple, list))
                                                          else (dim,)))
        dims = tuple(d for d in dims if values.shape[d] == 1)
    return np.squeeze(values, dims) if dims else values


def unsqueeze(values: np.ndarray, dim: int) -> np.ndarray:
    """``unsqueeze``: a size-1 dim whose stride is torch's ``size[d] * stride[d]`` (1 at the end)."""
    dim = _dim(int(dim), values.ndim + 1)
    stride = (values.shape[dim] * values.strides[dim] if dim < values.ndim else values.itemsize)
    shape = values.shape[:dim] + (1,) + values.shape[dim:]
    strides = values.strides[:dim] + (stride,) + values.strides[dim:]
    return np.lib.stride_tricks.as_strided(values, shape, strides, writeable=False)


def split(values: np.ndarray, split_size_or_sections, dim: int = 0) -> tuple[np.ndarray, ...]:
    """``torch.split``: pieces of ``split_size`` (the last one shorter) or of the given sizes."""
    dim = _dim(int(dim), values.ndim)
    size = values.shape[dim]
    if isinstance(split_size_or_sections, (tuple, list)):
        sections = [int(s) for s in split_size_or_sections]
        if sum(sections) != size or min(sections, default=0) < 0:
            raise ShapeError(f"split sections {sections} do not add up to size {size} of dim {dim}")
    else:
        step = int(split_size_or_sections)
        if step <= 0 and size > 0:
            raise ShapeError(f"split_size must be positive, got {step}")
        sections = [min(step, size - start) for start in range(0, size, step)] if size else [0]
    bounds = np.cumsum([0] + sections)
    index = [slice(None)] * values.ndim
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index[dim] = slice(int(start), int(stop))
        pieces.append(values[tuple(index)])
    return tuple(pieces)


def chunk(values: np.ndarray, chunks: int, dim: int = 0) -> tuple[np.ndarray, ...]:
    """``torch.chunk``: ``split(ceil(size / chunks))`` (so possibly fewer than ``chunks`` pieces)."""
    if int(chunks) <= 0:
        raise ShapeError(f"chunk expects a positive number of chunks, got {chunks}")
    size = values.shape[_dim(int(dim), values.ndim)]
    return split(values, max(-(-size // int(chunks)), 1), dim)


def pixel_shuffle(values: np.ndarray, factor: int) -> np.ndarray:
    """``pixel_shuffle``: (*, C r^2, H, W) -> (*, C, H r, W r), out[c, h r + i, w r + j] =
    in[c r^2 + i r + j, h, w]; the result is contiguous."""
    r = int(factor)
    *lead, channels, height, width = values.shape
    if channels % (r * r):
        raise ShapeError(f"pixel_shuffle: {channels} channels are not divisible by {r}^2")
    grid = values.reshape(*lead, channels // (r * r), r, r, height, width)
    n = len(lead)
    order = tuple(range(n)) + (n, n + 3, n + 1, n + 4, n + 2)
    return to_contiguous(grid.transpose(order).reshape(*lead, channels // (r * r), height * r,
                                                        width * r))


def channel_shuffle(values: np.ndarray, groups: int) -> np.ndarray:
    """``channel_shuffle``: (N, g k, *) -> out[:, j g + i] = in[:, i k + j], a pure copy, in the
    input's ``suggest_memory_format()`` (aten/src/ATen/native/ChanelShuffle.cpp; quantized
    ``channel_shuffle_quantized_cpu`` runs the same permutation, or QNNPACK's u8 channel shuffle
    on the qnnpack engine)."""
    g = int(groups)
    channels = values.shape[1]
    if g <= 0 or channels % g:
        raise ShapeError(f"channel_shuffle: {channels} channels are not divisible by groups {g}")
    grid = values.reshape(values.shape[0], g, channels // g, *values.shape[2:])
    shuffled = np.swapaxes(grid, 1, 2).reshape(values.shape)
    return to_channels_last(shuffled) if suggests_channels_last(values) else to_contiguous(shuffled)


_MOVES = {"contiguous": contiguous, "permute": permute, "transpose": transpose,
          "squeeze": squeeze, "unsqueeze": unsqueeze, "split": split, "chunk": chunk,
          "pixel_shuffle": pixel_shuffle, "channel_shuffle": channel_shuffle}


def move(op: str, x, **params):
    """Apply movement op ``op`` to a QuantizedArray or array; a tuple for split/chunk."""
    if op == "channel_shuffle" and isinstance(x, QuantizedArray) and x.dtype.name != "quint8":
        raise UnsupportedError("quantized channel_shuffle works only on quint8 (ATen "
                               f"ChanelShuffle.cpp channel_shuffle_quantized_cpu), got {x.dtype.name}")
    moved = _MOVES[op](_values(x), **params)
    if isinstance(moved, tuple):
        return tuple(_rewrap(x, piece) for piece in moved)
    return _rewrap(x, moved)


def _movement_op(op: str, summary: str):
    """Register graph op ``op``: ``node.attrs`` are the keyword arguments of ``_MOVES[op]``."""

    def prepare(node, input_qparams, engine):
        return dict(node.attrs), input_qparams[0]

    def run(params, inputs):
        return move(op, inputs[0], **params)

    def explain(params, inputs, result, index):
        # run the same move on the flat positions of the input: the element lands where its
        # value does
        shape = _values(inputs[0]).shape
        moved = _MOVES[op](np.arange(math.prod(shape)).reshape(shape), **params)
        if isinstance(moved, tuple):
            moved, out_index = moved[index[0]], tuple(index[1:])
        else:
            out_index = tuple(index)
        source = tuple(int(i) for i in np.unravel_index(int(moved[out_index]), shape))
        value = (result[index[0]] if isinstance(result, tuple) else result)
        stage = Stage(op, "the same integer, moved", {"from_index": list(source),
                                                      "to_index": list(out_index)},
                      _values(value)[out_index])
        return [stage], [(0, source)]

    graph_op(op, summary)(type(f"{op.title()}Op", (), {
        "prepare": staticmethod(prepare), "run": staticmethod(run),
        "explain": staticmethod(explain)}))


for _op, _summary in (
        ("contiguous", "Tensor.contiguous(memory_format): copies only a non-contiguous tensor"),
        ("permute", "Tensor.permute / torch.permute (attr dims)"),
        ("transpose", "torch.transpose / Tensor.transpose (attrs dim0, dim1)"),
        ("squeeze", "torch.squeeze / Tensor.squeeze (attr dim: None, int or ints)"),
        ("unsqueeze", "torch.unsqueeze / Tensor.unsqueeze (attr dim)"),
        ("split", "torch.split / Tensor.split: a tuple (attrs split_size_or_sections, dim)"),
        ("chunk", "torch.chunk / Tensor.chunk: a tuple (attrs chunks, dim)"),
        ("pixel_shuffle", "nn.PixelShuffle / F.pixel_shuffle (attr factor)"),
        ("channel_shuffle", "nn.ChannelShuffle / F.channel_shuffle (attr groups)")):
    _movement_op(_op, _summary)


# --- constant padding --------------------------------------------------------------------------


def pad_constant(x, pad, value: float = 0.0):
    """``F.pad(x, pad, mode="constant", value)`` (ATen ``constant_pad_nd``): ``pad`` holds
    (before, after) pairs from the last dim backwards; a negative amount crops. A quantized
    tensor keeps its qparams and is filled with ``quantize_per_tensor(value)`` (the fmaf rule;
    measured, 3000 values, 0 differences); a float32 tensor with ``f32(value)``. The output
    follows the input's ``suggest_memory_format()``, except that a quantized tensor only cropped
    (no positive amount) comes back contiguous (ATen returns ``narrow(...).clone()``)."""
    from .quantize import quantize_per_tensor

    values = _values(x)
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > values.ndim:
        raise ShapeError(f"pad must have an even length of at most 2 * {values.ndim} values, "
                         f"got {pad}")
    if isinstance(x, QuantizedArray):
        fill = quantize_per_tensor(np.float32([value]), x.qparams.scale, x.qparams.zero_point,
                                   x.dtype).values[0]
    else:
        fill = np.float32(value) if values.dtype == np.float32 else values.dtype.type(value)
    crop, widths = [slice(None)] * values.ndim, [(0, 0)] * values.ndim
    for pair in range(len(pad) // 2):
        axis = values.ndim - 1 - pair
        before, after = pad[2 * pair], pad[2 * pair + 1]
        size = values.shape[axis] + before + after
        if size < 0:
            raise ShapeError(f"padding {pad} crops more than dim {axis} of {values.shape} holds")
        crop[axis] = slice(max(-before, 0), values.shape[axis] - max(-after, 0))
        widths[axis] = (max(before, 0), max(after, 0))
    out = np.pad(values[tuple(crop)], widths, constant_values=fill)
    if all(p <= 0 for p in pad) and isinstance(x, QuantizedArray):
        return _rewrap(x, to_contiguous(out))  # the narrowed input's clone(): contiguous (measured)
    out = to_channels_last(out) if suggests_channels_last(values) else to_contiguous(out)
    return _rewrap(x, out)


@graph_op("pad", "F.pad, constant mode, on quantized or float tensors")
class PadOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        a = node.attrs
        if a.get("mode", "constant") != "constant":
            raise UnsupportedError(f"F.pad mode {a.get('mode')!r} is not supported; supported: "
                                   "'constant'")
        return (tuple(a["pad"]), float(a.get("value") or 0.0)), \
            (input_qparams[0] if input_qparams else None)

    @staticmethod
    def run(params, inputs):
        return pad_constant(inputs[0], *params)

    @staticmethod
    def explain(params, inputs, result, index):
        pad, value = params
        source = _values(inputs[0])
        offsets = [0] * source.ndim
        for pair in range(len(pad) // 2):
            offsets[source.ndim - 1 - pair] = pad[2 * pair]
        from_index = tuple(i - o for i, o in zip(index, offsets))
        inside = all(0 <= i < s for i, s in zip(from_index, source.shape))
        stage = Stage("pad", "the value at the unpadded index, or the fill "
                      "(quantize_per_tensor(value) on a quantized tensor)",
                      {"from_index": list(from_index) if inside else None, "value": value},
                      _values(result)[index])
        return [stage], ([(0, from_index)] if inside else [])
