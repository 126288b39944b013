"""Graph ops and explain hooks for the pools of ``ops.pooling``: ``avg_pool``, ``max_pool``,
``adaptive_avg_pool``, and ``adaptive_max_pool`` on float tensors.

Each explain re-runs the op under ``qexact.trace.observe`` (``observed_stages``): the stages are
the run's own reports (the kernel, the window and its sum, the divisor, the code path and each
requantization step, or the maximum and its tap), and explain walks back to the tap the run
reported (``from_0``, ``from_1``, ...)."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..layout import suggests_channels_last, to_channels_last, to_contiguous
from ..trace import observing, record
from ._average import source_axes, source_text, upstream_from
from ._registry import graph_op, observed_stages
from .pooling import adaptive_avg_pool, avg_pool, max_pool, prepare_adaptive_pool, prepare_pool
from .quantize import output_qparams_of, require_quantized


def _explained(run, params, inputs, result, index):
    stages = observed_stages(run, params, inputs, result, index)
    return stages, upstream_from(stages, np.shape(getattr(inputs[0], "values", inputs[0])))


@graph_op("avg_pool", "quantized avg_pool1d/2d/3d (nn.AvgPool*d, F.avg_pool*d)")
class AvgPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = input_qparams[0]  # None: a float32 input (a PT2E model's float op)
        a = node.attrs
        output = output_qparams_of(node)  # a PT2E avg_pool's own output qparams, if any
        params = prepare_pool("avg", int(a["spatial_dims"]), a["kernel_size"], a.get("stride"),
                              a.get("padding", 0), 1, a.get("ceil_mode", False),
                              a.get("count_include_pad", True), a.get("divisor_override"),
                              engine=engine, output_qparams=output)
        return params, output or qparams

    @staticmethod
    def run(params, inputs):
        return avg_pool(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return _explained(AvgPoolOp.run, params, inputs, result, index)


@graph_op("max_pool", "quantized max_pool1d/2d/3d (nn.MaxPool*d, F.max_pool*d), or on float32")
class MaxPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = input_qparams[0]  # None: a float32 input
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
        return _explained(MaxPoolOp.run, params, inputs, result, index)


@graph_op("adaptive_avg_pool", "quantized adaptive_avg_pool1d/2d/3d (nn.AdaptiveAvgPool*d)")
class AdaptiveAvgPoolOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        qparams = input_qparams[0]  # None: a float32 input (a PT2E model's float op)
        a = node.attrs
        output = output_qparams_of(node)  # a PT2E adaptive pool's own output qparams, if any
        return prepare_adaptive_pool("avg", int(a["spatial_dims"]), a["output_size"],
                                     engine=engine, intra_op_threads=a.get("intra_op_threads", 1),
                                     output_qparams=output), output or qparams

    @staticmethod
    def run(params, inputs):
        return adaptive_avg_pool(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return _explained(AdaptiveAvgPoolOp.run, params, inputs, result, index)


def adaptive_max_pool_float(x: np.ndarray, output_size) -> np.ndarray:
    """``F.adaptive_max_pool{1,2}d`` on a float32 tensor (FX keeps it in float: PyTorch has no
    quantized kernel). AdaptiveMaxPoolKernel.cpp: integer windows ``[floor(o L / O),
    ceil((o + 1) L / O))``, taps in row-major order, ``best = v if v > best or isnan(v)``;
    the kernel and the output's memory format follow ``suggest_memory_format()``."""
    spatial = len(output_size)
    if x.ndim not in (spatial + 1, spatial + 2) or x.dtype != np.float32:
        raise ShapeError(f"adaptive_max_pool{spatial}d expects a float32 {spatial + 1}-D or "
                         f"{spatial + 2}-D input, got {x.dtype} {x.shape}")
    explaining = observing()
    result = x
    chosen = []  # explain: per pooled dim so far, the input position of each element's maximum
    for offset, out in enumerate(output_size):
        axis = x.ndim - spatial + offset
        size = x.shape[axis]
        out = size if out is None else int(out)
        index = np.arange(out)
        start, end = index * size // out, -((-(index + 1) * size) // out)
        shape = [1] * x.ndim
        shape[axis] = -1
        best = best_at = None
        for tap in range(int((end - start).max())):
            position = np.minimum(start + tap, end - 1)  # a shorter window repeats its last tap
            taken = np.take(result, position, axis=axis)
            if best is None:
                best, best_at = taken, np.broadcast_to(position.reshape(shape), taken.shape)
                continue
            wins = (taken > best) | np.isnan(taken)
            if explaining:
                best_at = np.where(wins, position.reshape(shape), best_at)
            best = np.where(wins, taken, best)
        if explaining:
            chosen = [np.take_along_axis(c, best_at, axis=axis) for c in chosen] + [best_at]
        result = best
    if explaining:
        record("adaptive_max_pool (float)", "y = max over the window (NaN wins) = "
               + source_text(result.ndim), result,
               **source_axes(result.shape, result.ndim - spatial, chosen))
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
        return _explained(AdaptiveMaxPoolOp.run, output_size, inputs, result, index)
