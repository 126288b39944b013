"""Graph ops and explain hooks for the quantized pools of ``ops.pooling``: ``avg_pool``,
``max_pool`` and ``adaptive_avg_pool`` (each explain names the window's taps and the rounding rule
of the kernel PyTorch runs for that element)."""

from __future__ import annotations

import math

import numpy as np

from ..engines.pooling_numerics import PoolingNumerics
from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ..stages import Stage
from ._registry import graph_op
from .pooling import (_uses_qnnpack_avg, adaptive_avg_pool, adaptive_windows, avg_pool,
                      is_channels_last, max_pool, prepare_adaptive_pool, prepare_pool,
                      uses_global_mean)
from .quantize import require_quantized



def _rule_name(x: QuantizedArray, numerics: PoolingNumerics, channel: int, channels_last: bool,
               qnnpack: bool, adaptive: bool) -> tuple[str, str]:
    if qnnpack:
        return "qnnpack", "q = clamp(rne(f32(A * f32(s / f32(s * kH*kW)))) + z)"
    if not channels_last:
        return (("nchw", "q = rne(f32(S_raw * f32(f32(1/kH) / kW)))  (no zp, no clamp)")
                if adaptive else ("nchw", "q = clamp(rne(f32(f32(A * m) + z))), m = f32(1/D)"))
    width = numerics.nhwc_adaptive_simd_channels if adaptive else numerics.nhwc_avg_pool_simd_channels
    channels = x.values.shape[1]
    if width and channel < channels // width * width:
        return (("nhwc_simd", "q = clamp(rne(fmaf(A, inv, z))), inv = f32(1/f32(1/m))")
                if adaptive else ("nhwc_simd", "q = clamp(rne(f32(A * m)) + z)"))
    return "nhwc_scalar", "q = clamp(rne(f32(f32(A * inv) + z))), inv = f32(1/f32(1/m))"


def _explain_window(name, x: QuantizedArray, result, index, taps, divisor, rule):
    values = x.values
    window = [int(values[tap]) for tap in taps]
    total = sum(window)
    zero_point = int(x.zero_point)
    stages = [Stage(f"{name}: window", "the valid taps (padding skipped)",
                    {"taps": [list(map(int, tap)) for tap in taps], "values": window}),
              Stage(f"{name}: sum", "S = sum of valid taps; A = S - size * z",
                    {"S": total, "size": len(window), "z": zero_point},
                    total - len(window) * zero_point),
              Stage(f"{name}: divide and round", rule[1],
                    {"divisor": divisor, "kernel": rule[0]}, result.values[index])]
    return stages, [(0, tap) for tap in taps[:1]]


def _window_taps(shape, index, spatial, bounds):
    """Input indices of the valid taps of output ``index`` (bounds: per dim (start, end, step))."""
    lead = tuple(index[:len(shape) - spatial])
    grids = [range(start, end, step) for start, end, step in bounds]
    taps = [lead]
    for grid in grids:
        taps = [tap + (i,) for tap in taps for i in grid]
    return taps


@graph_op("avg_pool", "quantized avg_pool1d/2d/3d (nn.AvgPool*d, F.avg_pool*d)")
class AvgPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = require_quantized(node, input_qparams)
        a = node.attrs
        params = prepare_pool("avg", int(a["spatial_dims"]), a["kernel_size"], a.get("stride"),
                              a.get("padding", 0), 1, a.get("ceil_mode", False),
                              a.get("count_include_pad", True), a.get("divisor_override"),
                              engine=engine)
        return params, qparams

    @staticmethod
    def run(params, inputs):
        return avg_pool(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        spatial = len(params.kernel_size)
        bounds, pool = [], 1
        for d in range(spatial):
            size = x.values.shape[x.values.ndim - spatial + d]
            start = index[len(index) - spatial + d] * params.stride[d] - params.padding[d]
            end = min(start + params.kernel_size[d], size + params.padding[d])
            pool *= end - start
            bounds.append((max(start, 0), min(end, size), 1))
        taps = _window_taps(x.values.shape, index, spatial, bounds)
        qnnpack = _uses_qnnpack_avg(x, params)
        divisor = (math.prod(params.kernel_size) if qnnpack else params.divisor_override
                   if params.divisor_override is not None
                   else pool if params.count_include_pad else len(taps))
        channels_last = spatial == 3 or is_channels_last(x.values)
        rule = _rule_name(x, params.numerics, index[-spatial - 1], channels_last, qnnpack, False)
        return _explain_window("avg_pool", x, result, index, taps, divisor, rule)


@graph_op("max_pool", "quantized max_pool1d/2d/3d (nn.MaxPool*d, F.max_pool*d)")
class MaxPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = require_quantized(node, input_qparams)
        a = node.attrs
        params = prepare_pool("max", int(a["spatial_dims"]), a["kernel_size"], a.get("stride"),
                              a.get("padding", 0), a.get("dilation", 1),
                              a.get("ceil_mode", False), engine=engine)
        return params, qparams

    @staticmethod
    def run(params, inputs):
        return max_pool(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        spatial = len(params.kernel_size)
        bounds = []
        for d in range(spatial):
            size = x.values.shape[x.values.ndim - spatial + d]
            start = index[len(index) - spatial + d] * params.stride[d] - params.padding[d]
            positions = [start + j * params.dilation[d] for j in range(params.kernel_size[d])]
            bounds.append(sorted({min(max(p, 0), size - 1) for p in positions}
                                 if params.numerics.qnnpack_max_pool and x.dtype.name == "quint8"
                                 and not params.ceil_mode
                                 else {p for p in positions if 0 <= p < size}))
        taps = [tuple(index[:x.values.ndim - spatial])]
        for grid in bounds:
            taps = [tap + (i,) for tap in taps for i in grid]
        window = [int(x.values[tap]) for tap in taps]
        best = taps[int(np.argmax(window))]
        stage = Stage("max_pool", "q = max over the valid taps (integers; qparams kept)",
                      {"taps": [list(map(int, t)) for t in taps], "values": window,
                       "from_index": list(map(int, best))}, result.values[index])
        return [stage], [(0, best)]


@graph_op("adaptive_avg_pool", "quantized adaptive_avg_pool1d/2d/3d (nn.AdaptiveAvgPool*d)")
class AdaptiveAvgPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = require_quantized(node, input_qparams)
        a = node.attrs
        return prepare_adaptive_pool("avg", int(a["spatial_dims"]), a["output_size"],
                                     engine=engine,
                                     intra_op_threads=a.get("intra_op_threads", 1)), qparams

    @staticmethod
    def run(params, inputs):
        return adaptive_avg_pool(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        x = inputs[0]
        if uses_global_mean(x.values, params):  # PyTorch runs mean(dim=(-1, -2, -3), keepdim)
            from .reduce import MeanOp

            return MeanOp.explain(params.mean, inputs, result, index)
        spatial = len(params.output_size)
        bounds = []
        for d in range(spatial):
            size = x.values.shape[x.values.ndim - spatial + d]
            out = result.values.shape[result.values.ndim - spatial + d]
            start, end = adaptive_windows(size, out)
            o = index[len(index) - spatial + d]
            bounds.append((int(start[o]), int(end[o]), 1))
        taps = _window_taps(x.values.shape, index, spatial, bounds)
        rule = _rule_name(x, params.numerics, index[-spatial - 1], is_channels_last(x.values),
                          False, True)
        return _explain_window("adaptive_avg_pool", x, result, index, taps, len(taps), rule)


def adaptive_max_pool_float(x: np.ndarray, output_size) -> np.ndarray:
    """``F.adaptive_max_pool{1,2}d`` on a float32 tensor (FX keeps it in float: PyTorch has no
    quantized kernel). AdaptiveMaxPoolKernel.cpp: integer windows ``[floor(o L / O),
    ceil((o + 1) L / O))``, taps in row-major order, ``best = v if v > best or isnan(v)``;
    the kernel and the output's memory format follow ``suggest_memory_format()``."""
    from ..layout import suggests_channels_last, to_channels_last, to_contiguous

    spatial = len(output_size)
    if x.ndim not in (spatial + 1, spatial + 2) or x.dtype != np.float32:
        raise ShapeError(f"adaptive_max_pool{spatial}d expects a float32 {spatial + 1}-D or "
                         f"{spatial + 2}-D input, got {x.dtype} {x.shape}")
    result = x
    for offset, out in enumerate(output_size):
        axis = x.ndim - spatial + offset
        size = x.shape[axis]
        out = size if out is None else int(out)
        index = np.arange(out)
        start, end = index * size // out, -((-(index + 1) * size) // out)
        best = None
        for tap in range(int((end - start).max())):
            position = np.minimum(start + tap, end - 1)  # a shorter window repeats its last tap
            taken = np.take(result, position, axis=axis)
            best = taken if best is None else np.where((taken > best) | np.isnan(taken), taken,
                                                        best)
        result = best
    return to_channels_last(result) if suggests_channels_last(x) else to_contiguous(result)


@graph_op("adaptive_max_pool", "adaptive_max_pool1d/2d on float tensors (PyTorch has no "
          "quantized kernel for it)")
class AdaptiveMaxPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise UnsupportedError(
                "PyTorch 2.13 has no QuantizedCPU kernel for adaptive_max_pool "
                "(aten::adaptive_max_pool2d.out raises NotImplementedError), so a converted model "
                "that applies it to a quantized tensor cannot run in PyTorch either")
        a = node.attrs
        sizes = a["output_size"]
        sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,)
        return (sizes * int(a["spatial_dims"]) if len(sizes) == 1 else sizes), None

    @staticmethod
    def run(output_size, inputs):
        return adaptive_max_pool_float(np.asarray(inputs[0]), output_size)

    @staticmethod
    def explain(output_size, inputs, result, index):
        return [Stage("adaptive_max_pool (float)", "y = max over the window (NaN wins)", {},
                      np.asarray(result)[index])], []
