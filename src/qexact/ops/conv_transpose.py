"""Static quantized ConvTranspose1d/2d/3d (``torch.ao.nn.quantized.ConvTranspose2d``;
``torch.ops.quantized.conv_transpose2d``).

Every input position ``i`` scatters into the outputs ``o = i * stride - pad + tap * dilation``;
read from the output side (the "transposed im2col" FBGEMM packs, src/PackAWithIm2Col.cc):

    acc[n, oc, o] = sum_{tap, c in group(oc)} (x[n, c, (o + pad - tap*dil) / stride] - z_x)
                                              * (w[c, oc % (OC/G), tap] - z_w[oc])
    y[n, oc, o]   = requantize(acc, oc)          (the engine's epilogue, as for Conv)

where a tap contributes only if ``o + pad - tap*dil`` is a multiple of ``stride`` and the quotient
lies inside the input; other taps are "padded" (``z_x``, add 0). Output size per spatial dim:
``out = (in - 1) * stride - 2 * pad + dil * (k - 1) + output_padding + 1``. As a loop nest (2-D):

    for out_y, out_x, out_channel:
        group = out_channel // (out_channels // groups)
        acc = 0
        for filter_y, filter_x, in_channel in group:               # channel fastest
            num_y = out_y + pad_y - filter_y * dilation_y          (likewise x)
            if num_y % stride_y or not 0 <= num_y // stride_y < in_h: continue   (padded tap)
            acc += (x[in_channel, num_y // stride_y, num_x // stride_x] - z_x)
                   * (w[in_channel, out_channel % (OC/G), filter_y, filter_x] - z_w)
        acc += pair_saturation(...)      # where the kernel sums raw u8 x s8 pairs in int16
        y[out_channel, out_y, out_x] = requantize(acc, out_channel)

The engine names the kernel (``Engine.conv_transpose_kernel``) and how it pairs terms
(``ConvKernel``): FBGEMM pairs the row from its start with padded taps raw ``z_x``; oneDNN's jit
deconvolution pairs the channels of one tap with skipped taps raw 0; QNNPACK is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..accumulate import (exact_matmul, pair_positions, pair_saturation_correction,
                          saturating_weight_pairs, weight_pairs_of)
from ..dtypes import QINT8, QUINT8
from ..engines import Engine, LayerQuantization, get_engine
from ..engines.base import PAD_ZERO, BiasMode, ConvGeometry
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QuantizedLayerAccessors, QParams, QuantizedArray, qparams_from_fields
from ..requantize import Step, requantize
from ..stages import Stage
from ._gemm_explain import pair_saturation_stage, requantization_stages
from ._registry import graph_op
from .conv import _tuple, channels_last_output
from .quantize import require_quantized


@dataclass(frozen=True, eq=False)
class ConvTransposeParams(QuantizedLayerAccessors):
    """A quantized transposed convolution prepared for one engine. Public fields:

    - ``weight``: (in_channels, out_channels // groups, *kernel_size) int8 (PyTorch's layout);
      ``weight_qparams`` (per-tensor, or per-channel with one scale per output channel);
    - ``stride``, ``padding``, ``output_padding``, ``dilation`` (tuples), ``groups``;
    - ``bias`` as the engine adds it (``bias_mode``), ``float_bias``; ``multiplier``,
      ``requantization`` (the steps);
    - ``kernel``, ``pair_saturation``, ``pairs_per_tap``, ``padded_tap`` (``ConvKernel``).
    """

    weight: np.ndarray
    weight_qparams: QParams
    float_bias: np.ndarray | None
    input_qparams: QParams
    output_qparams: QParams
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
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
    unreached_outputs_undefined: bool
    # Run-time caches: (G, OC/G, K) int8 rows; (G, K, OC/G) float32 centered; pair layouts.
    weight_rows: np.ndarray
    weight_centered_t: np.ndarray
    pair_positions: np.ndarray | None
    weight_pairs: np.ndarray | None
    risky_pairs: np.ndarray | None

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[1] * self.groups


    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
                     zip(spatial, self.stride, self.padding, self.dilation, self.kernel_size,
                         self.output_padding))


def transposed_rows(weight: np.ndarray, groups: int) -> np.ndarray:
    """(C, OC/G, *k) weights as (G, OC/G, taps * C/G): each output channel's row, taps in the
    weight's order, channel fastest (FBGEMM's B matrix for a transposed convolution)."""
    channels, out_per_group = weight.shape[:2]
    per_group = channels // groups
    by_group = weight.reshape(groups, per_group, out_per_group, -1)   # (G, C/G, OC/G, taps)
    return np.ascontiguousarray(by_group.transpose(0, 2, 3, 1)).reshape(groups, out_per_group, -1)


def reread_weight_buffer(weight: np.ndarray, groups: int) -> np.ndarray:
    """The weight a kernel with ``weight_buffer_reread`` effectively uses (see ``ConvKernel``).

    Per group, the contiguous (C/G, OC/G, *k) block is viewed as ``B`` (OC/G, C/G, *k), then
    ``B`` transposed is made contiguous and taken as the convolution weight (OC/G, C/G, *k)."""
    channels, out_per_group = weight.shape[:2]
    per_group, kernel = channels // groups, weight.shape[2:]
    viewed = np.ascontiguousarray(weight).reshape((groups, out_per_group, per_group) + kernel)
    conv_weight = np.ascontiguousarray(viewed.swapaxes(1, 2)).reshape(
        (groups, out_per_group, per_group) + kernel)
    return np.ascontiguousarray(conv_weight.swapaxes(1, 2)).reshape(weight.shape)


def prepare_conv_transpose(weight, weight_qparams: QParams, bias, input_qparams: QParams,
                           output_qparams: QParams, *, stride=1, padding=0, output_padding=0,
                           dilation=1, groups: int = 1, engine: Engine | str,
                           isa: str | None = None) -> ConvTransposeParams:
    """Validate a quantized ConvTransposeNd (N = weight.ndim - 2 in 1..3).

    ``weight``: (C, OC/G, *kernel) int8 qint8; ``bias``: (OC,) float32 or None; activations
    per-tensor quint8. Raises where PyTorch (nn.ConvTranspose, qconv_prepack.cpp) refuses.
    ``engine`` (required: a name or an ``Engine``) on ``isa`` (default: this CPU's).
    """
    engine = get_engine(engine, isa)
    weight = np.asarray(weight)
    if weight.dtype != np.int8 or not 3 <= weight.ndim <= 5:
        raise ShapeError(f"weight must be an int8 array (C, OC/G, *kernel) with 1 to 3 spatial "
                         f"dims, got {weight.dtype} {weight.shape}")
    dims = weight.ndim - 2
    stride, padding, output_padding, dilation = (
        _tuple(v, dims, n) for v, n in ((stride, "stride"), (padding, "padding"),
                                        (output_padding, "output_padding"),
                                        (dilation, "dilation")))
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0 or min(output_padding) < 0:
        raise ShapeError(f"stride and dilation must be >= 1, padding and output_padding >= 0, "
                         f"got stride {stride}, dilation {dilation}, padding {padding}, "
                         f"output_padding {output_padding}")
    if any(op >= max(s, d) for op, s, d in zip(output_padding, stride, dilation)):
        raise ShapeError(f"output_padding {output_padding} must be smaller than stride {stride} "
                         f"or dilation {dilation} (nn.ConvTranspose)")
    groups = int(groups)
    if groups < 1 or weight.shape[0] % groups:
        raise ShapeError(f"in_channels {weight.shape[0]} must be a multiple of groups {groups}")
    out_channels = weight.shape[1] * groups
    if weight_qparams.dtype != QINT8:
        raise QuantParamError(f"weights must be qint8, got {weight_qparams.dtype.name}")
    for role, qparams in (("input", input_qparams), ("output", output_qparams)):
        if qparams.is_per_channel or qparams.dtype != QUINT8:
            raise QuantParamError(f"quantized ConvTranspose needs per-tensor quint8 {role}s, got "
                                  f"{qparams.describe()}")
    zero_points = np.asarray(weight_qparams.zero_point, dtype=np.int64)
    as_2d = (lambda v, one: (one,) + v) if dims == 1 else (lambda v, one: v)
    geometry = ConvGeometry(weight.shape[0], out_channels, groups,
                            as_2d(tuple(weight.shape[2:]), 1), as_2d(stride, 1),
                            as_2d(padding, 0), as_2d(dilation, 1), bool(np.all(zero_points == 0)),
                            output_padding=as_2d(output_padding, 0), transposed=True)
    kernel = engine.conv_transpose_kernel(geometry)
    if kernel.undefined_output:
        raise UnsupportedError(f"ConvTranspose{dims}d on engine {engine.name!r}: "
                               f"{kernel.undefined_output}")
    numerics = kernel.numerics
    if weight_qparams.is_per_channel:
        if not kernel.per_channel_weights:
            raise QuantParamError(f"engine {engine.name!r} ({kernel.name}) refuses per-channel "
                                  "weights for transposed convolutions, as PyTorch's prepack does")
        if len(weight_qparams.scale) != out_channels:
            raise QuantParamError(f"per-channel weight qparams need one scale per output channel "
                                  f"({out_channels}), got {len(weight_qparams.scale)}")
    if any(output_padding) and not kernel.output_padding:
        raise UnsupportedError(f"engine {engine.name!r} ({kernel.name}) supports only zero "
                               f"output_padding, got {output_padding}, as PyTorch's prepack")
    if not numerics.allows_weight_zero_point and np.any(zero_points != 0):
        raise QuantParamError(f"engine {engine.name!r} supports only symmetric weights (zero point"
                              f" 0), got {weight_qparams.zero_point!r}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.shape != (out_channels,):
            raise ShapeError(f"bias must be float32 of shape ({out_channels},), got "
                             f"{bias.dtype} {bias.shape}")
    epilogue = numerics.requantization(
        LayerQuantization(input_qparams.scale, weight_qparams, bias, output_qparams, False))
    effective = reread_weight_buffer(weight, groups) if kernel.weight_buffer_reread else weight
    rows = transposed_rows(effective, groups)                             # (G, OC/G, K)
    per_channel_zp = zero_points.reshape(groups, -1, 1) if zero_points.ndim else zero_points
    centered = rows.astype(np.int64) - per_channel_zp
    positions = weight_pairs = risky = None
    saturates = kernel.saturates_pairs(engine.isa)
    if saturates:
        depth, per_group = rows.shape[2], weight.shape[0] // groups
        starts = tuple(range(0, depth, per_group)) if kernel.pairs_per_tap else (0,)
        positions = pair_positions(depth, starts)
        weight_pairs = np.stack([weight_pairs_of(rows[g], positions) for g in range(groups)])
        risky = np.stack([saturating_weight_pairs(pairs) for pairs in weight_pairs])
    return ConvTransposeParams(
        weight=weight, weight_qparams=weight_qparams, float_bias=bias, input_qparams=input_qparams,
        output_qparams=output_qparams, stride=stride, padding=padding,
        output_padding=output_padding, dilation=dilation, groups=groups, engine=engine.name,
        isa=engine.isa, kernel=kernel.name, bias=epilogue.bias, bias_mode=epilogue.bias_mode,
        multiplier=epilogue.multiplier, requantization=epilogue.steps, pair_saturation=saturates,
        pairs_per_tap=kernel.pairs_per_tap, padded_tap=kernel.padded_tap,
        unreached_outputs_undefined=kernel.unreached_outputs_undefined, weight_rows=rows,
        weight_centered_t=np.ascontiguousarray(np.swapaxes(centered, 1, 2).astype(np.float32)),
        pair_positions=positions, weight_pairs=weight_pairs, risky_pairs=risky,
    )


def source_indices(params: ConvTransposeParams, spatial: tuple[int, ...], out: tuple[int, ...]):
    """Per spatial dim, (kernel, out) input indices: ``(o + pad - t*dil) / stride``, or ``size``
    (one past the end, the padded slot) where the tap does not contribute."""
    indices = []
    for size, out_size, k, s, p, d in zip(spatial, out, params.kernel_size, params.stride,
                                          params.padding, params.dilation):
        numerator = np.arange(out_size)[None, :] + p - np.arange(k)[:, None] * d
        source = numerator // s
        valid = (numerator % s == 0) & (source >= 0) & (source < size)
        indices.append(np.where(valid, source, size))
    return indices


def reached_outputs(params: ConvTransposeParams, spatial: tuple[int, ...]) -> np.ndarray:
    """Bool array over output positions: True where at least one tap reaches the input (the
    others hold accumulator 0; see ``ConvKernel.unreached_outputs_undefined``)."""
    out = params.output_shape(tuple(spatial))
    per_dim = [(index < size).any(axis=0)
               for index, size in zip(source_indices(params, tuple(spatial), out), spatial)]
    mask = np.ones((), dtype=bool)
    for reached in per_dim:
        mask = mask[..., None] & reached
    return mask


def transposed_columns(values: np.ndarray, params: ConvTransposeParams, out, pad_value: int):
    """(N, C, *spatial) uint8 -> (G, N * out_positions, taps * C/G): each group's rows."""
    batch, channels = values.shape[:2]
    spatial = values.shape[2:]
    padded = np.full((batch,) + tuple(s + 1 for s in spatial) + (channels,), pad_value,
                     dtype=values.dtype)
    padded[(slice(None),) + tuple(slice(0, s) for s in spatial)] = np.moveaxis(values, 1, -1)
    indices = source_indices(params, spatial, out)
    columns = [padded[(slice(None),) + np.ix_(*(index[t] for index, t in zip(indices, tap)))]
               for tap in np.ndindex(*params.kernel_size)]
    cols = np.stack(columns, axis=-2)                                     # (N, *out, taps, C)
    positions, taps = int(np.prod(cols.shape[:-2])), cols.shape[-2]
    cols = cols.reshape(positions, taps, params.groups, channels // params.groups)
    return np.ascontiguousarray(cols.transpose(2, 0, 1, 3)).reshape(params.groups, positions, -1)


def conv_transpose_accumulator(values: np.ndarray, params: ConvTransposeParams, out):
    """The int32 accumulator (as int64), (N * out_positions, OC), as the kernel forms it."""
    z_x = int(params.input_zero_point)
    cols = transposed_columns(values, params, out, z_x)
    raw = cols
    if params.pair_saturation and params.padded_tap == PAD_ZERO:
        raw = transposed_columns(values, params, out, 0)
    per_group = params.out_channels // params.groups
    acc = np.empty((cols.shape[1], params.out_channels), dtype=np.int64)
    for group in range(params.groups):
        centered = cols[group].astype(np.float32) - np.float32(z_x)
        group_acc = exact_matmul(centered, params.weight_centered_t[group])
        if params.pair_saturation:
            group_acc += pair_saturation_correction(raw[group], params.weight_pairs[group],
                                                    params.risky_pairs[group],
                                                    params.pair_positions)
        acc[:, group * per_group:(group + 1) * per_group] = group_acc
    return acc


def _batched(x: QuantizedArray, params: ConvTransposeParams) -> tuple[np.ndarray, bool]:
    values = x.values
    dims = len(params.kernel_size)
    unbatched = values.ndim == dims + 1
    if unbatched:
        values = values[None]
    if values.ndim != dims + 2 or values.shape[1] != params.in_channels:
        raise ShapeError(f"ConvTranspose{dims}d expects input (N, {params.in_channels}, ...) with "
                         f"{dims} spatial dims, got {x.values.shape}")
    if x.qparams != params.input_qparams:
        raise QuantParamError(f"ConvTranspose was prepared for input "
                              f"{params.input_qparams.describe()}, got {x.qparams.describe()}; "
                              "prepare it again for these qparams")
    return values, unbatched


def conv_transpose(x: QuantizedArray, params: ConvTransposeParams) -> QuantizedArray:
    """Run the prepared transposed convolution on quint8 (N, C, *spatial) (or (C, *spatial))."""
    values, unbatched = _batched(x, params)
    out = params.output_shape(values.shape[2:])
    if any(size < 1 for size in out):
        raise ShapeError(f"ConvTranspose output size {out} is not positive for input "
                         f"{values.shape[2:]}")
    if (params.unreached_outputs_undefined and params.input_qparams.zero_point != 0
            and not reached_outputs(params, values.shape[2:]).all()):
        raise UnsupportedError(
            f"{params.kernel}: output positions that no kernel tap reaches are left "
            "uninitialized by PyTorch when the input zero point is non-zero (their bytes change "
            "from run to run), so no reference can reproduce them; this stride/padding leaves "
            f"such positions for input {values.shape[2:]}. Use an input zero point of 0, or "
            "another engine")
    acc = conv_transpose_accumulator(values, params, out)
    result = requantize(acc, params.requantization, np.uint8,
                        arrange=channels_last_output((values.shape[0],) + out, unbatched))
    return QuantizedArray(np.ascontiguousarray(result), params.output_qparams)


@graph_op("conv_transpose", "quantized ConvTranspose1d/2d/3d (nnq.ConvTransposeNd)")
class ConvTransposeOp:
    """Graph node: arrays ``weight`` (int8), ``bias`` (float32, optional), per-channel weight
    qparams; attrs ``stride``, ``padding``, ``output_padding``, ``dilation``, ``groups``, weight
    and output qparams."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        input_qparams = require_quantized(node, input_qparams)
        attrs = node.attrs
        params = prepare_conv_transpose(
            node.arrays["weight"], qparams_from_fields(attrs, node.arrays, "weight"),
            node.arrays.get("bias"), input_qparams, qparams_from_fields(attrs, node.arrays, "output"),
            stride=attrs.get("stride", 1), padding=attrs.get("padding", 0),
            output_padding=attrs.get("output_padding", 0), dilation=attrs.get("dilation", 1),
            groups=attrs.get("groups", 1), engine=engine)
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return conv_transpose(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return explain_conv_transpose(params, inputs[0], index)


def explain_conv_transpose(params: ConvTransposeParams, x: QuantizedArray, index):
    """(stages, upstream) for output element ``index`` = (n, out_channel, *out_position): the
    contributing taps, the dot product, int16 pair saturation, every requantization step."""
    values = x.values
    index = tuple(int(i) for i in index)
    unbatched = values.ndim == len(params.kernel_size) + 1
    if unbatched:
        values, index = values[None], (0,) + index
    batch, channel, position = index[0], index[1], index[2:]
    out = params.output_shape(values.shape[2:])
    flat = int(np.ravel_multi_index(position, out))
    group, per_out = divmod(channel, params.out_channels // params.groups)
    z_x = int(params.input_zero_point)
    cols = transposed_columns(values[batch:batch + 1], params, out, z_x)[group, flat]
    weight_row = params.weight_rows[group, per_out].astype(np.int64)
    z_w = int(np.asarray(params.weight_qparams.zero_point).reshape(-1)[
        channel if params.weight_qparams.is_per_channel else 0])
    per_group = params.in_channels // params.groups
    indices = source_indices(params, values.shape[2:], out)
    taps, upstream = [], []
    for tap_number, tap in enumerate(np.ndindex(*params.kernel_size)):
        source = tuple(int(ix[t, o]) for ix, t, o in zip(indices, tap, position))
        if all(s < size for s, size in zip(source, values.shape[2:])):
            taps.append((tap, source))
            channels = slice(group * per_group, (group + 1) * per_group)
            upstream.append((0, ((channels,) + source) if unbatched
                             else ((batch, channels) + source)))
    terms = (cols.astype(np.int64) - z_x) * (weight_row - z_w)
    acc = exact = int(terms.sum())
    stages = [
        Stage("contributing taps", f"o = i*stride - pad + tap*dilation; stride {params.stride}, "
              f"padding {params.padding}, output_padding {params.output_padding}, dilation "
              f"{params.dilation}, groups {params.groups}; other taps read z_x (add 0)",
              {"taps (tap, input position)": taps, "z_x": z_x}),
        Stage("dot product", "acc = sum_(tap, c) (x_q - z_x) * (w_q[c, oc, tap] - z_w)",
              {"x_q": cols, "w_q": weight_row, "z_w": z_w, "terms": terms}, exact),
    ]
    if params.pair_saturation:
        raw = cols if params.padded_tap != PAD_ZERO else transposed_columns(
            values[batch:batch + 1], params, out, 0)[group, flat]
        stage, acc = pair_saturation_stage(
            raw.astype(np.int64), weight_row, params.pair_positions, exact,
            f"{params.kernel}: raw u8 x s8 pairs "
            f"{'per tap' if params.pairs_per_tap else 'along the row'}, padded taps "
            f"{params.padded_tap}")
        stages.append(stage)
    stages += requantization_stages(params.requantization, acc, channel, params.out_channels)
    return stages, upstream
