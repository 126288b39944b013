"""``explain`` for quantized convolutions: the receptive field's taps as terms, the dot product,
int16 pair saturation where the kernel has it, then every requantization step.

Reads the prepared ``ConvParams`` (``qexact.ops.conv``, which imports this module) through its
fields and methods (``padded``, ``weight_row``)."""

from __future__ import annotations

import numpy as np

from ..engines.base import PAD_ZERO
from ..requantize import bind_operand
from ..stages import Stage
from ._gemm_explain import pair_saturation_stage, per_channel, requantization_stages


def _field(params, x_values: np.ndarray, index, pad_value: int):
    """The receptive field of output ``index`` = (n, out_channel, *out) as im2col row of its
    group: (taps * C/G,) raw values, plus the input index of every term (None when padded)."""
    batch, channel, out = index[0], index[1], tuple(index[2:])
    values, padding = params.padded(x_values[batch:batch + 1])
    per_group = params.weight.shape[1]
    group = channel // (params.out_channels // params.groups)
    spatial = values.shape[2:]
    row, where = [], []
    for tap in np.ndindex(*params.kernel_size):
        position = tuple(o * s - p + t * d for o, s, p, t, d in
                         zip(out, params.stride, padding, tap, params.dilation))
        inside = all(0 <= i < n for i, n in zip(position, spatial))
        for c in range(group * per_group, (group + 1) * per_group):
            row.append(int(values[(0, c) + position]) if inside else pad_value)
            where.append((batch, c) + position if inside and params.padding_mode == "zeros"
                         else None)
    return np.array(row, dtype=np.int64), where


def receptive_field_index(params, x, index):
    """Upstream: the box of input elements the receptive field reads (one slice per axis)."""
    index = tuple(int(i) for i in index)
    unbatched = x.values.ndim == len(params.kernel_size) + 1
    if unbatched:
        index = (0,) + index
    per_group = params.weight.shape[1]
    group = index[1] // (params.out_channels // params.groups)
    box = [index[0], slice(group * per_group, (group + 1) * per_group)]
    spatial = x.values.shape[-len(params.kernel_size):]
    for out, stride, pad, kernel, dilation, size in zip(index[2:], params.stride, params.padding,
                                                        params.kernel_size, params.dilation,
                                                        spatial):
        if params.padding_mode != "zeros":
            return [(0, (slice(None),) * (x.values.ndim - 1) if unbatched
                     else (index[0],) + (slice(None),) * (x.values.ndim - 1))]
        first = out * stride - pad
        last = first + (kernel - 1) * dilation
        box.append(slice(max(first, 0), max(min(last + 1, size), max(first, 0))))
    return [(0, tuple(box[1:]) if unbatched else tuple(box))]


def explain_conv(params, x, index, residual=None) -> list[Stage]:
    """The stages that produce output element ``index`` = (n, out_channel, *out_position);
    ``residual``: the layer's residual input, if it has one."""
    values = x.values
    index = tuple(int(i) for i in index)
    if values.ndim == len(params.kernel_size) + 1:
        values, index = values[None], (0,) + index
    channel = index[1]
    z_x = int(params.input_zero_point)
    x_row, _ = _field(params, values, index, z_x)
    weight_row = params.weight_row(channel).astype(np.int64)
    z_w = int(per_channel(params.weight_zero_point, channel))
    terms = (x_row - z_x) * (weight_row - z_w)
    exact = int(terms.sum())
    stages = [
        Stage("receptive field", f"taps of kernel {params.kernel_size} x {params.weight.shape[1]} "
              f"channels (channel fastest); stride {params.stride}, padding {params.padding} "
              f"({params.padding_mode}), dilation {params.dilation}, groups {params.groups}; "
              "padded taps read z_x",
              {"x_q": x_row, "z_x": z_x, "s_x": params.input_scale}),
        Stage("weights", f"w_q[{channel}, c, tap] in the same order",
              {"w_q": weight_row, "z_w": z_w, "s_w": per_channel(params.weight_scale, channel)}),
        Stage("dot product", "acc = sum_t (x_q[t] - z_x) * (w_q[t] - z_w)  (exact integers)",
              {"terms": terms, "running_sum": np.cumsum(terms)}, exact),
    ]
    acc = exact
    if params.pair_saturation:
        raw_x = x_row
        if params.padded_tap == PAD_ZERO:
            raw_x, _ = _field(params, values, index, 0)
        stage, acc = pair_saturation_stage(
            raw_x, weight_row, params.pair_positions, exact,
            f"{params.kernel} on {params.isa}: raw u8*s8 pairs are summed in int16 "
            f"({'per tap' if params.pairs_per_tap else 'along the im2col row'}; padded taps "
            f"read {params.padded_tap})")
        stages.append(stage)
    steps = params.requantization
    if params.residual_qparams is not None:
        residual_values = residual.values
        row = np.zeros((1, params.out_channels), dtype=residual_values.dtype)
        unbatched = residual_values.ndim == len(index) - 1
        row[0, channel] = residual_values[index[1:] if unbatched else index]
        steps = bind_operand(steps, "sum", row)
    stages += requantization_stages(steps, acc, channel, params.out_channels)
    return stages
