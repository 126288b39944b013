"""Conformance cases: Conv1d/2d/3d (+relu) and ConvTranspose2d."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..errors import UnsupportedError
from ..qparams import QParams, QuantizedArray
from ._inputs import draw_quint8_qparams, draw_scale, redraw, torch_quantized
from .runner import conformance_case


def _weight_qparams(engine, rng, channels_out: int) -> QParams:
    """qint8 weight qparams, per channel or per tensor, symmetric where the engine needs it."""
    symmetric = engine == "onednn" or rng.random() < 0.5
    if rng.random() < 0.5:
        zero_points = (np.zeros(channels_out, np.int64) if symmetric
                       else rng.integers(-128, 128, channels_out))
        return QParams.per_channel([draw_scale(rng) * 0.01 for _ in range(channels_out)],
                                   zero_points, 0, QINT8)
    return QParams.per_tensor(draw_scale(rng) * 0.01,
                              0 if symmetric else int(rng.integers(-128, 128)), QINT8)


def _conv2d_case(engine, rng, relu: bool):
    import torch

    from ..ops.conv import conv, prepare_conv

    groups = int(rng.choice([1, 1, 2, 3])) if rng.random() < 0.7 else 0
    channels_in = int(rng.integers(1, 9)) * (groups or 1)
    if groups == 0:  # depthwise
        groups, channels_in = int(rng.integers(1, 17)), 0
        channels_in = groups
    channels_out = groups * int(rng.integers(1, 5))
    kernel = int(rng.choice([1, 3, 5]))
    stride, padding, dilation = int(rng.integers(1, 3)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
    height, width = (int(size) for size in rng.integers(kernel * dilation, 14, 2))
    x_qparams = QParams.per_tensor(draw_scale(rng), int(rng.integers(0, 256)), QUINT8)
    out_qparams = QParams.per_tensor(draw_scale(rng), int(rng.integers(0, 256)), QUINT8)
    w_qparams = _weight_qparams(engine, rng, channels_out)
    weight = rng.integers(-128, 128, (channels_out, channels_in // groups, kernel, kernel)).astype(np.int8)
    high = 128 if rng.random() < 0.5 else 256
    x = rng.integers(0, high, (int(rng.integers(1, 3)), channels_in, height, width)).astype(np.uint8)
    bias = (rng.standard_normal(channels_out) * x_qparams.scale * 100).astype(np.float32) \
        if rng.random() < 0.7 else None
    try:  # before torch: where PyTorch's output is undefined its kernel may corrupt memory
        params = prepare_conv(weight, w_qparams, bias, x_qparams, out_qparams, stride=stride,
                              padding=padding, dilation=dilation, groups=groups, relu=relu,
                              engine=engine)
    except UnsupportedError as error:
        if "undefined" in str(error):
            return _conv2d_case(engine, rng, relu)  # draw again
        raise
    ours = conv(QuantizedArray(x, x_qparams), params).values
    packed = torch.ops.quantized.conv2d_prepack(
        torch_quantized(weight, w_qparams), None if bias is None else torch.from_numpy(bias),
        [stride, stride], [padding, padding], [dilation, dilation], groups)
    kernel_op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    theirs = kernel_op(torch_quantized(x, x_qparams), packed, out_qparams.scale,
                       out_qparams.zero_point).int_repr().numpy()
    return np.ascontiguousarray(ours), np.ascontiguousarray(theirs), \
        f"C={channels_in} OC={channels_out} G={groups} k={kernel} s={stride} p={padding} d={dilation}"


conformance_case("conv2d")(lambda engine, rng: _conv2d_case(engine, rng, False))
conformance_case("conv2d_relu")(lambda engine, rng: _conv2d_case(engine, rng, True))


def _conv_nd_case(engine, rng, dims: int):
    import torch

    from ..ops.conv import conv, prepare_conv

    def draw(rng):
        groups = int(rng.choice([1, 1, 2, 3]))
        channels_in, channels_out = int(rng.integers(1, 7)) * groups, groups * int(rng.integers(1, 5))
        kernel = int(rng.choice([1, 2, 3]))
        stride, padding, dilation = (int(v) for v in rng.integers(1, 3, 3))
        padding -= 1
        spatial = tuple(int(v) for v in rng.integers((kernel - 1) * dilation + 1,
                                                         (30, 10, 6)[dims - 1] + 1, dims))
        x_qparams, out_qparams = draw_quint8_qparams(rng), draw_quint8_qparams(rng)
        w_qparams = _weight_qparams(engine, rng, channels_out)
        weight = rng.integers(-128, 128, (channels_out, channels_in // groups) + (kernel,) * dims
                              ).astype(np.int8)
        high = 128 if rng.random() < 0.5 else 256
        x = rng.integers(0, high, (int(rng.integers(1, 3)), channels_in) + spatial).astype(np.uint8)
        bias = (rng.standard_normal(channels_out) * x_qparams.scale * 100).astype(np.float32) \
            if rng.random() < 0.7 else None
        try:  # before torch: where PyTorch's output is undefined its kernel may corrupt memory
            params = prepare_conv(weight, w_qparams, bias, x_qparams, out_qparams, stride=stride,
                                  padding=padding, dilation=dilation, groups=groups, engine=engine)
        except UnsupportedError as error:
            if "undefined" in str(error):
                return None
            raise
        try:
            packed = getattr(torch.ops.quantized, f"conv{dims}d_prepack")(
                torch_quantized(weight, w_qparams), None if bias is None else torch.from_numpy(bias),
                [stride] * dims, [padding] * dims, [dilation] * dims, groups)
            run = lambda: getattr(torch.ops.quantized, f"conv{dims}d")(  # noqa: E731
                torch_quantized(x, x_qparams), packed, out_qparams.scale,
                out_qparams.zero_point).int_repr().numpy()
            theirs, again = run(), run()
        except (RuntimeError, NotImplementedError):
            return None  # the engine refuses this configuration (e.g. qnnpack conv3d)
        if not np.array_equal(theirs, again):
            # PyTorch's own output is not reproducible: not comparable
            return None
        ours = conv(QuantizedArray(x, x_qparams), params).values
        return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs),
                f"conv{dims}d x={x.shape} OC={channels_out} G={groups} k={kernel} s={stride} "
                f"p={padding} d={dilation}")

    return redraw(draw, rng)


conformance_case("conv1d")(lambda engine, rng: _conv_nd_case(engine, rng, 1))
conformance_case("conv3d")(lambda engine, rng: _conv_nd_case(engine, rng, 3))


def _conv_transpose_case(engine, rng, dims: int):
    import torch

    from ..ops.conv_transpose import conv_transpose, prepare_conv_transpose

    def draw(rng):
        groups = int(rng.choice([1, 1, 2, 3]))
        channels_in, out_per_group = groups * int(rng.integers(1, 6)), int(rng.integers(1, 6))
        kernel, stride, dilation = (int(rng.integers(1, 4)), int(rng.integers(1, 4)),
                                    int(rng.integers(1, 3)))
        output_padding = 0 if engine == "onednn" or rng.random() < 0.5 else \
            int(rng.integers(0, max(stride, dilation)))
        padding = min(int(rng.integers(0, 3)), (dilation * (kernel - 1) + output_padding) // 2)
        x_qparams, out_qparams = draw_quint8_qparams(rng), draw_quint8_qparams(rng)
        w_qparams = QParams.per_tensor(draw_scale(rng) * 0.01,
                                       0 if engine == "onednn" or rng.random() < 0.7
                                       else int(rng.integers(-128, 128)), QINT8)
        weight = rng.integers(-128, 128, (channels_in, out_per_group) + (kernel,) * dims
                              ).astype(np.int8)
        spatial = tuple(int(v) for v in rng.integers(1, (12, 8, 5)[dims - 1], dims))
        x = rng.integers(0, 128 if rng.random() < 0.5 else 256,
                         (int(rng.integers(1, 3)), channels_in) + spatial).astype(np.uint8)
        bias = (rng.standard_normal(out_per_group * groups) * x_qparams.scale * 100
                ).astype(np.float32) if rng.random() < 0.7 else None
        try:
            params = prepare_conv_transpose(weight, w_qparams, bias, x_qparams, out_qparams,
                                            stride=stride, padding=padding,
                                            output_padding=output_padding, dilation=dilation,
                                            groups=groups, engine=engine)
            ours = conv_transpose(QuantizedArray(x, x_qparams), params).values
        except UnsupportedError as error:
            if "uninitialized" in str(error) or "undefined" in str(error):
                return None  # PyTorch's output is not defined here: not comparable
            if "output_padding" in str(error):
                return None  # PyTorch's prepack refuses it too
            raise
        try:
            packed = getattr(torch.ops.quantized, f"conv_transpose{dims}d_prepack")(
                torch_quantized(weight, w_qparams), None if bias is None else torch.from_numpy(bias),
                [stride] * dims, [padding] * dims, [output_padding] * dims, [dilation] * dims,
                groups)
            theirs = getattr(torch.ops.quantized, f"conv_transpose{dims}d")(
                torch_quantized(x, x_qparams), packed, out_qparams.scale, out_qparams.zero_point)
        except (RuntimeError, NotImplementedError):
            return None
        return (np.ascontiguousarray(ours), np.ascontiguousarray(theirs.int_repr().numpy()),
                f"x={x.shape} w={weight.shape} G={groups} s={stride} p={padding} "
                f"op={output_padding} d={dilation}")

    return redraw(draw, rng)


for _dims in (1, 2, 3):
    conformance_case(f"conv_transpose{_dims}d", not_on={} if _dims < 3 else {
        "qnnpack": "QNNPACK's deconvolution is 2-D; PyTorch computes only the first output "
                   "depth slice (qexact refuses it)"})(
        lambda engine, rng, dims=_dims: _conv_transpose_case(engine, rng, dims))
