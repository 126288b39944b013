"""Static quantized Conv1d/2d/3d and ConvReLU1d/2d/3d (``torch.ao.nn.quantized.Conv2d``,
``intrinsic.quantized.ConvReLU2d``; a fused Conv+BN(+ReLU) is one of these after conversion).

    acc[n, oc, out] = sum_{tap, c in group(oc)} (x[n, c, out*stride - pad + tap*dilation] - z_x)
                                                * (w[oc, c, tap] - z_w[oc])
    y[n, oc, out]   = requantize(acc, oc)          (the engine's epilogue, per output channel)

Padded taps read ``z_x`` and add 0 (pytorch qconv.cpp; FBGEMM im2col fills the zero point).
As a loop nest (2-D):

    for out_y, out_x, out_channel:
        group = out_channel // (out_channels // groups)
        acc = 0
        for filter_y, filter_x, in_channel in group:          # im2col order, channel fastest
            in_y = out_y * stride_y - pad_y + filter_y * dilation_y   (likewise in_x)
            acc += (x[in_channel, in_y, in_x] - z_x) * (w[out_channel, in_channel, filter_y, filter_x] - z_w)
        acc += pair_saturation(...)       # where the kernel sums raw u8 x s8 pairs in int16
        y[out_channel, out_y, out_x] = requantize(acc, out_channel)

The engine names the kernel PyTorch runs (``Engine.conv_kernel``: FBGEMM depthwise / groupwise /
pointwise / im2col, QNNPACK, oneDNN) and how it pairs terms (``qexact.engines.base.ConvKernel``).
A Conv1d is run by PyTorch as a 2-D convolution with a ``(1, k)`` kernel, and is so here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..accumulate import (as_int32_if_it_fits, centered_bound,
                          depthwise_pair_saturation_correction, exact_block_starts,
                          exact_depthwise,
                          exact_grouped_matmul, pair_positions, pair_saturation_correction,
                          saturating_weight_pairs, weight_pairs_of)
from ..dtypes import QINT8
from ..engines import Engine, LayerQuantization, get_engine
from ..engines.base import PAD_ZERO, BiasMode, ConvGeometry
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QuantizedLayerAccessors, QParams, QuantizedArray, qparams_from_fields
from ..requantize import Step, bind_operand
from ..kernels import active_backend, fast
from ..layout import grouped_rows
from ._gemm import (check_activations, check_quantized_bias, gemm_output,
                    quantized_or_float)
from ._conv_explain import explain_conv, receptive_field_index
from ._registry import graph_op
from ._window import im2col, im2col_centered, output_shape, padded_channels_last
from .quantize import output_qparams_of, require_quantized

PADDING_MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
"""nnq.ConvNd pads with ``F.pad(mode)`` before a convolution with padding 0 for the other modes."""


@dataclass(frozen=True, eq=False)
class ConvParams(QuantizedLayerAccessors):
    """A quantized convolution prepared for one engine. Public fields (stable names):

    - ``weight``: (out_channels, in_channels // groups, *kernel_size) int8; ``weight_qparams``;
    - ``stride``, ``padding``, ``dilation`` (tuples, one per spatial dim), ``groups``,
      ``padding_mode`` (``zeros``, ``reflect``, ``replicate``, ``circular``);
    - ``bias`` as the engine adds it (``bias_mode``), ``float_bias``; ``multiplier``,
      ``requantization`` (the steps), ``relu``;
    - ``kernel``: the kernel PyTorch runs; ``pair_saturation``: whether int16 pair sums saturate;
      ``pairs_per_tap`` and ``padded_tap``: how pairs are formed (``ConvKernel``).
    """

    weight: np.ndarray
    weight_qparams: QParams
    float_bias: np.ndarray | None
    input_qparams: QParams
    output_qparams: QParams
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str
    relu: bool
    engine: str
    isa: str
    kernel: str
    bias: np.ndarray | None
    bias_mode: BiasMode
    multiplier: tuple[np.ndarray, ...]
    requantization: tuple[Step, ...]
    pair_saturation: bool
    pairs_per_tap: bool
    padded_tap: str
    # Run-time caches: per group (G, K, OC/G) float32 centered weights; pair layouts.
    weight_centered_t: np.ndarray
    pair_positions: np.ndarray | None
    weight_pairs: np.ndarray | None
    risky_pairs: np.ndarray | None
    exact_blocks: tuple[int, ...] | None
    """Where the NumPy path cuts K so that each float32 BLAS product is exact (as
    ``LinearParams.exact_blocks``, over every group's weights)."""
    undefined_input: Callable[[tuple[int, ...]], str] | None = None
    """Why PyTorch's output is undefined for an input of a spatial size (``ConvKernel``)."""
    inexact: str = ""
    """Why this layer's outputs are not bit-exact on its engine (empty: they are)."""
    residual_qparams: QParams | None = None
    """A second input, a quantized residual with these qparams, is added to the float result
    before the activation (oneDNN's "sum" post-op: Inductor's ``conv(x) + y``); None: none."""

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def padded(self, values: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """Apply a non-zeros ``padding_mode`` to the integers (``F.pad``); returns (values,
        the padding left for the convolution)."""
        mode = PADDING_MODES[self.padding_mode]
        if mode is None:
            return values, self.padding
        widths = [(0, 0), (0, 0)] + [(p, p) for p in self.padding]
        return np.pad(values, widths, mode=mode), (0,) * len(self.padding)

    def weight_row(self, channel: int) -> np.ndarray:
        """Output channel ``channel``'s weights in im2col order (taps, channel fastest)."""
        per_group = self.out_channels // self.groups
        return grouped_rows(self.weight, self.groups)[channel // per_group, channel % per_group]


def _tuple(value, dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, str):
        raise UnsupportedError(f"{name}={value!r} is not supported; give integers")
    values = tuple(int(v) for v in np.atleast_1d(value))
    if len(values) == 1:
        values = values * dims
    if len(values) != dims:
        raise ShapeError(f"{name} must have {dims} values, got {value!r}")
    return values


def prepare_conv(weight, weight_qparams: QParams, bias, input_qparams: QParams,
                 output_qparams: QParams, *, stride=1, padding=0, dilation=1, groups: int = 1,
                 padding_mode: str = "zeros", relu: bool = False,
                 engine: Engine | str, isa: str | None = None, quantized_bias=None,
                 clamp=None, residual_qparams: QParams | None = None) -> ConvParams:
    """Validate a quantized ConvNd (N = weight.ndim - 2 in 1..3) and derive its kernel's constants.

    ``weight``: (OC, C/G, *kernel) int8, qint8 per-tensor or per-channel on axis 0; ``bias``: (OC,)
    float32 or None; activations per-tensor quint8. Raises ``QuantParamError``/``ShapeError``/
    ``UnsupportedError`` where PyTorch would refuse the convolution. ``engine`` (required: a name or
    an ``Engine``) on ``isa`` (default: this CPU's). ``clamp``: a fused hardtanh ``(low, high)``
    (a post-op of the float result; refused by an engine whose epilogue has none).
    ``residual_qparams``: a quantized tensor of the output's shape (per tensor, these qparams)
    is added to the float result before the activation (a "sum" post-op, refused likewise).
    """
    engine = get_engine(engine, isa)
    weight = np.asarray(weight)
    if weight.dtype != np.int8 or not 3 <= weight.ndim <= 5:
        raise ShapeError(f"weight must be an int8 array (OC, C/G, *kernel) with 1 to 3 spatial dims, "
                         f"got {weight.dtype} {weight.shape}")
    dims = weight.ndim - 2
    stride, padding, dilation = (_tuple(v, dims, n) for v, n in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ShapeError(f"stride and dilation must be >= 1 and padding >= 0, got stride {stride}, "
                         f"dilation {dilation}, padding {padding}")
    groups = int(groups)
    if groups < 1 or weight.shape[0] % groups:
        raise ShapeError(f"out_channels {weight.shape[0]} must be a multiple of groups {groups}")
    if padding_mode not in PADDING_MODES:
        raise UnsupportedError(f"padding_mode {padding_mode!r} is not supported; supported: "
                               f"{sorted(PADDING_MODES)}")
    if weight_qparams.dtype != QINT8:
        raise QuantParamError(f"weights must be qint8, got {weight_qparams.dtype.name}")
    if weight_qparams.is_per_channel and (weight_qparams.axis != 0
                                          or len(weight_qparams.scale) != weight.shape[0]):
        raise QuantParamError(f"per-channel weight qparams must be on axis 0 with {weight.shape[0]} "
                              f"channels, got axis {weight_qparams.axis} with "
                              f"{len(weight_qparams.scale)}")
    check_activations("Conv", engine, input_qparams, output_qparams)
    zero_points = np.asarray(weight_qparams.zero_point, dtype=np.int64)
    kernel_size = tuple(weight.shape[2:])
    as_2d = (lambda v, one: (one,) + v) if dims == 1 else (lambda v, one: v)
    geometry = ConvGeometry(weight.shape[1] * groups, weight.shape[0], groups,
                            as_2d(kernel_size, 1), as_2d(stride, 1),
                            as_2d(padding if padding_mode == "zeros" else (0,) * dims, 0),
                            as_2d(dilation, 1), bool(np.all(zero_points == 0)))
    conv_kernel = engine.conv_kernel(geometry)
    if conv_kernel.undefined_output:
        raise UnsupportedError(f"Conv{dims}d on engine {engine.name!r}: "
                               f"{conv_kernel.undefined_output}")
    if conv_kernel.not_reproduced:
        raise UnsupportedError(f"Conv{dims}d on engine {engine.name!r} ({conv_kernel.name}): "
                               f"{conv_kernel.not_reproduced}")
    numerics = conv_kernel.numerics
    if not numerics.allows_weight_zero_point and np.any(zero_points != 0):
        raise QuantParamError(
            f"engine {engine.name!r} supports only symmetric weights (zero point 0), got "
            f"{weight_qparams.zero_point!r}, as PyTorch's {conv_kernel.name} prepack refuses them")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.shape != (weight.shape[0],):
            raise ShapeError(f"bias must be float32 of shape ({weight.shape[0]},), got "
                             f"{bias.dtype} {bias.shape}")
    quantized_bias = check_quantized_bias(quantized_bias, numerics, weight.shape[0])
    clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
    if residual_qparams is not None and residual_qparams.is_per_channel:
        raise QuantParamError(f"the residual of Conv{dims}d must be quantized per tensor, got "
                              f"{residual_qparams.describe()}")
    epilogue = numerics.requantization(
        LayerQuantization(input_qparams.scale, weight_qparams, bias, output_qparams, relu,
                          quantized_bias, clamp, residual_qparams))
    roles = {step.role for step in epilogue.steps}
    for wanted, role, what in ((clamp is not None, "clamp", f"a fused hardtanh {list(clamp or ())}"),
                               (residual_qparams is not None, "sum", "a residual add")):
        if wanted and role not in roles:
            raise UnsupportedError(f"Conv{dims}d with {what} on engine {engine.name!r}: its "
                                   f"epilogue ({numerics.name}) has no such post-op")
    rows = grouped_rows(weight, groups)                                   # (G, OC/G, K)
    per_channel_zp = zero_points.reshape(groups, -1, 1) if zero_points.ndim else zero_points
    centered = rows.astype(np.int64) - per_channel_zp
    positions = weight_pairs = risky = None
    saturates = conv_kernel.saturates_pairs(engine.isa)
    if saturates:
        depth = rows.shape[2]
        starts = tuple(range(0, depth, weight.shape[1])) if conv_kernel.pairs_per_tap else (0,)
        positions = pair_positions(depth, starts)
        weight_pairs = np.stack([weight_pairs_of(rows[g], positions) for g in range(groups)])
        risky = np.stack([saturating_weight_pairs(pairs) for pairs in weight_pairs])
    weight_centered_t = np.ascontiguousarray(np.swapaxes(centered, 1, 2).astype(np.float32))
    return ConvParams(
        weight=weight, weight_qparams=weight_qparams, float_bias=bias, input_qparams=input_qparams,
        output_qparams=output_qparams, stride=stride, padding=padding, dilation=dilation,
        groups=groups, padding_mode=padding_mode, relu=relu, engine=engine.name, isa=engine.isa,
        kernel=conv_kernel.name, bias=epilogue.bias, bias_mode=epilogue.bias_mode,
        multiplier=epilogue.multiplier, requantization=epilogue.steps, pair_saturation=saturates,
        pairs_per_tap=conv_kernel.pairs_per_tap, padded_tap=conv_kernel.padded_tap,
        weight_centered_t=weight_centered_t,
        pair_positions=positions, weight_pairs=weight_pairs, risky_pairs=risky,
        exact_blocks=exact_block_starts(weight_centered_t, centered_bound(
            input_qparams.dtype.numpy_dtype, int(input_qparams.zero_point))),
        inexact=numerics.inexact, residual_qparams=residual_qparams,
        undefined_input=None if conv_kernel.undefined_input is None else
        (lambda spatial: conv_kernel.undefined_input(geometry, as_2d(tuple(spatial), 1))),
    )


def conv_columns(values: np.ndarray, params: ConvParams, pad_value: int) -> np.ndarray:
    """(N, C, *spatial) uint8 -> (G, N * out_positions, K) in each group's im2col order."""
    values, padding = params.padded(values)
    cols = im2col(values, params.kernel_size, params.stride, padding, params.dilation, pad_value)
    positions = int(np.prod(cols.shape[:-2]))
    taps = cols.shape[-2]
    per_group = params.weight.shape[1]
    cols = cols.reshape(positions, taps, params.groups, per_group)
    return np.ascontiguousarray(cols.transpose(2, 0, 1, 3)).reshape(params.groups, positions, -1)


def conv_accumulator(values: np.ndarray, params: ConvParams) -> np.ndarray:
    """The int32 accumulator, (N * out_positions, OC), as the kernel forms it (int32; int64
    where its int32 bound is not proved, see ``exact_grouped_matmul``)."""
    if active_backend() == "fast":
        acc = fast.conv_accumulator(values, params)
        if acc is not None:
            return acc
    z_x = int(params.input_qparams.zero_point)
    input_bound = centered_bound(values.dtype, z_x)
    padded_values, padding = params.padded(values)
    out = output_shape(padded_values.shape[2:], params.kernel_size, params.stride, padding,
                       params.dilation)
    per_group = params.out_channels // params.groups
    raw_pad = 0 if params.padded_tap == PAD_ZERO else z_x
    if params.weight.shape[1] == 1 and params.groups > 1:                 # depthwise: no im2col
        channel_of = np.arange(params.out_channels) // per_group   # its input channel, per output
        centered = padded_channels_last(padded_values, padding, z_x, np.float32, z_x)
        if per_group > 1:
            centered = centered[..., channel_of]
        taps = params.weight_centered_t.shape[1]
        weights = params.weight_centered_t.transpose(1, 0, 2).reshape(taps, params.out_channels)
        acc = exact_depthwise(centered, weights, params.kernel_size, params.stride,
                              params.dilation, out)
        if params.pair_saturation:
            raw = padded_channels_last(padded_values, padding, raw_pad)
            if per_group > 1:
                raw = raw[..., channel_of]
            pairs = params.weight_pairs.shape[2]
            acc += depthwise_pair_saturation_correction(
                raw, params.weight_pairs.reshape(params.out_channels, pairs, 2),
                params.risky_pairs.reshape(params.out_channels, pairs), params.pair_positions,
                params.kernel_size, params.stride, params.dilation, out)
        return acc
    columns = im2col_centered(padded_values, params.kernel_size, params.stride, padding,
                              params.dilation, z_x, z_x, params.groups)    # (G, M, K) float32
    acc = exact_grouped_matmul(columns, params.weight_centered_t, input_bound,
                               params.exact_blocks)
    if params.pair_saturation:
        acc = acc.astype(np.int64)
        raw = conv_columns(values, params, raw_pad)
        for group in range(params.groups):
            acc[:, group * per_group:(group + 1) * per_group] += pair_saturation_correction(
                raw[group], params.weight_pairs[group], params.risky_pairs[group],
                params.pair_positions)
        acc = as_int32_if_it_fits(acc)
    return acc


def conv(x: QuantizedArray, params: ConvParams, residual=None) -> QuantizedArray:
    """Run the prepared convolution on quint8 activations (N, C, *spatial) (or (C, *spatial)).
    ``residual`` (a layer prepared with ``residual_qparams``): a ``QuantizedArray`` of the
    output's shape, added before the activation."""
    values = x.values
    dims = len(params.kernel_size)
    unbatched = values.ndim == dims + 1
    if unbatched:
        values = values[None]
    if values.ndim != dims + 2 or values.shape[1] != params.in_channels:
        raise ShapeError(f"Conv{dims}d expects input (N, {params.in_channels}, ...) with {dims} "
                         f"spatial dims, got {x.values.shape}")
    if x.qparams != params.input_qparams:
        raise QuantParamError(f"Conv was prepared for input {params.input_qparams.describe()}, got "
                              f"{x.qparams.describe()}; prepare it again for these qparams")
    spatial = values.shape[2:]
    reason = params.undefined_input(spatial) if params.undefined_input else ""
    if reason:
        raise UnsupportedError(f"Conv{dims}d on engine {params.engine!r} ({params.kernel}), input "
                               f"of spatial size {tuple(spatial)}: {reason}")
    if params.padding_mode == "zeros":
        out = output_shape(spatial, params.kernel_size, params.stride, params.padding,
                           params.dilation)
    else:
        padded = tuple(s + 2 * p for s, p in zip(spatial, params.padding))
        out = output_shape(padded, params.kernel_size, params.stride, (0,) * dims, params.dilation)
    steps = params.requantization
    if params.residual_qparams is not None:
        operand = residual_operand(residual, params, (values.shape[0], params.out_channels) + out,
                                   unbatched)
        steps = bind_operand(steps, "sum",
                             np.moveaxis(operand, 1, -1).reshape(-1, params.out_channels))
    result = gemm_output(params, steps, channels_last_output((values.shape[0],) + out, unbatched),
                         fast_output=lambda: fast.conv_output(values, params, steps),
                         accumulator=lambda: conv_accumulator(values, params))
    return quantized_or_float(result, params.output_qparams)


def channels_last_output(batch_and_spatial: tuple[int, ...], unbatched: bool):
    """(N * positions, C) -> (N, C, *spatial), channels fastest in memory, as PyTorch's quantized
    conv returns it (channels_last): kernels downstream (pooling, mean, norms) choose their path,
    and so their rounding, by layout. (C, *spatial) for an unbatched input."""
    def arrange(rows: np.ndarray) -> np.ndarray:
        result = np.moveaxis(rows.reshape(batch_and_spatial + (rows.shape[-1],)), -1, 1)
        return result[0] if unbatched else result
    return arrange


def residual_operand(residual, params: ConvParams, shape: tuple[int, ...],
                     unbatched: bool) -> np.ndarray:
    """The residual's integers as (N, OC, *out), checked against the layer."""
    if not isinstance(residual, QuantizedArray) or residual.qparams != params.residual_qparams:
        raise QuantParamError(f"this Conv adds a residual quantized with "
                              f"{params.residual_qparams.describe()}; pass it as such")
    values = residual.values
    if unbatched:
        values = values[None]
    if values.shape != shape:
        raise ShapeError(f"the residual must have the conv output's shape {shape[1 - unbatched:]}"
                         f", got {values.shape[unbatched:]}")
    return values


@graph_op("conv", "quantized Conv1d/2d/3d and ConvReLU1d/2d/3d (nnq.ConvNd, nniq.ConvReLUNd)")
class ConvOp:
    """Graph node: arrays ``weight`` (int8), ``bias`` (float32, optional), per-channel weight
    qparams; attrs ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``, ``relu``,
    ``clamp`` (a fused hardtanh ``[low, high]``, optional), weight and output qparams. A second
    input is a quantized residual added before the activation."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        all_qparams = input_qparams
        input_qparams = require_quantized(node, all_qparams)
        attrs = node.attrs
        params = prepare_conv(
            node.arrays["weight"], qparams_from_fields(attrs, node.arrays, "weight"),
            node.arrays.get("bias"), input_qparams, output_qparams_of(node),
            stride=attrs.get("stride", 1), padding=attrs.get("padding", 0),
            dilation=attrs.get("dilation", 1), groups=attrs.get("groups", 1),
            padding_mode=attrs.get("padding_mode", "zeros"), relu=bool(attrs.get("relu", False)),
            engine=engine, quantized_bias=node.arrays.get("quantized_bias"),
            clamp=attrs.get("clamp"),
            residual_qparams=require_quantized(node, all_qparams, 1)
            if len(node.inputs) > 1 else None)
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return conv(inputs[0], params, *inputs[1:])

    @staticmethod
    def explain(params, inputs, result, index):
        upstream = receptive_field_index(params, inputs[0], index)
        residual = None
        if params.residual_qparams is not None:
            residual = inputs[1]
            upstream.append((1, tuple(int(i) for i in index)))
        return explain_conv(params, inputs[0], index, residual), upstream
