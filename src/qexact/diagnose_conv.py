"""Mistake models of quantized convolutions (Conv1d/2d/3d, depthwise and grouped, ConvReLU).

A convolution is a GEMM over im2col columns, so its mistakes are Linear's (``diagnose.py``: zero
points ignored, per-channel scales ignored, pair saturation, the bias's form, the rounding, the
ideal multiplier, a missing requantization, a fused ReLU left out) plus its own: the padding
filled with the integer 0 instead of the input zero point. Each model forms the accumulator the
mistaken way from the layer's int8 weights and the exact input integers, then runs the engine's
epilogue with the mistake (``deviated_epilogue``, shared with Linear).
"""

from __future__ import annotations

import numpy as np

from .accumulate import exact_matmul, pair_saturation_correction
from .diagnose_models import Candidate, Knobs, deviated_epilogue, mistake_model
from .engines import AVX2, LayerQuantization
from .engines.base import PAD_ZERO
from .graph import PreparedNode
from .ops._window import output_shape
from .ops.conv import ConvParams, conv_columns, grouped_rows, prepare_conv
from .qparams import QParams, QuantizedArray

KNOBS = ("pad_value", "input_zero_point", "weight_zero_point", "pair_saturation",
         "accumulator_bits", "output_requantization", "output_clamp", "bias", "bias_rounding",
         "rounding",
         "multiplier", "per_channel_scales", "fused_relu")


def _reprepared(params: ConvParams, weight_qparams: QParams, relu: bool, isa: str) -> ConvParams:
    return prepare_conv(params.weight, weight_qparams, params.float_bias, params.input_qparams,
                        params.output_qparams, stride=params.stride, padding=params.padding,
                        dilation=params.dilation, groups=params.groups,
                        padding_mode=params.padding_mode, relu=relu, engine=params.engine,
                        isa=isa)


@mistake_model("conv", knobs=KNOBS)
def deviated_conv(prepared: PreparedNode, arguments: list, knobs: Knobs) -> Candidate | None:
    """The convolution's output on its exact input under ``knobs`` (None: the mistake cannot
    show on this layer: no padding, no fused ReLU, per-tensor weights, ...)."""
    params: ConvParams = prepared.params
    x = arguments[0]
    if not isinstance(x, QuantizedArray) or params.residual_qparams is not None:
        return None
    if knobs.pad_value == "zero" and (params.padding_mode != "zeros" or not any(params.padding)):
        return None
    if (not knobs.fused_relu and not params.relu) or (
            not knobs.per_channel_scales and not params.weight_qparams.is_per_channel):
        return None
    weight_qparams = params.weight_qparams
    if not knobs.per_channel_scales:
        weight_qparams = QParams.per_tensor(float(weight_qparams.scale[0]),
                                            int(weight_qparams.zero_point[0]), weight_qparams.dtype)
    relu = params.relu and knobs.fused_relu
    saturate = params.pair_saturation if knobs.pair_saturation is None else knobs.pair_saturation
    if knobs.pair_saturation is not None and saturate == params.pair_saturation:
        return None
    base = params
    if weight_qparams is not params.weight_qparams or relu != params.relu:
        base = _reprepared(params, weight_qparams, relu, params.isa)
    pairs_from = base
    if saturate and not base.pair_saturation:      # the kernel's pairs as it forms them on AVX2
        pairs_from = _reprepared(params, weight_qparams, relu, AVX2)
        if not pairs_from.pair_saturation:
            return None

    values = x.values
    dims = len(params.kernel_size)
    unbatched = values.ndim == dims + 1
    if unbatched:
        values = values[None]
    z_x = int(params.input_qparams.zero_point)
    pad_value = 0 if knobs.pad_value == "zero" else z_x
    cols = conv_columns(values, params, pad_value)                       # (G, P, K)
    raw = cols
    if (saturate and pairs_from.padded_tap == PAD_ZERO and any(params.padding)
            and pad_value != 0):
        raw = conv_columns(values, params, 0)
    rows = grouped_rows(params.weight, params.groups).astype(np.int64)  # (G, OC/G, K)
    z_w = np.asarray(weight_qparams.zero_point if knobs.weight_zero_point else 0, np.int64)
    if z_w.ndim:
        z_w = z_w.reshape(params.groups, -1, 1)
    centered_w = rows - z_w
    x_center = np.float32(z_x if knobs.input_zero_point else 0)
    per_group = params.out_channels // params.groups
    acc = np.empty((cols.shape[1], params.out_channels), np.int64)
    for group in range(params.groups):
        group_acc = exact_matmul(cols[group].astype(np.float32) - x_center,
                                 np.ascontiguousarray(centered_w[group].T.astype(np.float32)))
        if saturate:
            group_acc = group_acc + pair_saturation_correction(
                raw[group], pairs_from.weight_pairs[group], pairs_from.risky_pairs[group],
                pairs_from.pair_positions)
        acc[:, group * per_group:(group + 1) * per_group] = group_acc

    layer = LayerQuantization(params.input_qparams.scale, weight_qparams, params.float_bias,
                              params.output_qparams, relu)
    result = deviated_epilogue(acc, layer, list(base.requantization), base.bias_mode, knobs,
                               True)
    spatial = values.shape[2:]
    if params.padding_mode == "zeros":
        out = output_shape(spatial, params.kernel_size, params.stride, params.padding,
                           params.dilation)
    else:
        out = output_shape(tuple(s + 2 * p for s, p in zip(spatial, params.padding)),
                           params.kernel_size, params.stride, (0,) * dims, params.dilation)

    def arrange(array):
        if array is None:
            return None
        array = np.moveaxis(array.reshape((values.shape[0],) + out + (params.out_channels,)),
                            -1, 1)
        return array[0] if unbatched else array

    return Candidate(arrange(result.real), arrange(result.codes))
