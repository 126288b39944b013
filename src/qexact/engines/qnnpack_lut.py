"""QNNPACK's 256-entry lookup-table activations and its clamp operator: the ``"activation"`` and
``"clamp"`` families of the qnnpack engine's table.

Source: pytorch aten/src/ATen/native/quantized/cpu/qnnpack/src/hardswish.c, sigmoid.c, tanh.c,
reached from qhardswish.cpp, qsigmoid.cpp, qtanh.cpp (quint8 on the qnnpack engine): each builds
a table in float once per call and maps every byte through it. With
``x = f32(f32(s) f32(i - z))`` for code ``i``:

    hardswish  y = f32(f32(x min(max(f32(x + 3), 0), 6)) / 6)
               table[i] = lrintf(clamp(f32(f32(f32(1 / f32(s_o)) y) + z_o), 0, 255))
    sigmoid    table[i] = lrintf(clamp(f32(256 / f32(1 + glibc_expf(-x))), 0, 255))
    tanh       table[i] = lrintf(clamp(f32(f32(128 glibc_tanhf(x)) + 128), 0, 255))

(hardswish: an FMA for ``inv y + z_o`` gives the same table on 76,800 measured entries, not
discriminated; tanh: measured float ``tanhf``, the source's double ``tanh`` misses 126 of 761,856
entries; sigmoid and tanh match PyTorch at every tie, where ATen's lambdas miss 199 of 773,120
sigmoid entries.) hardsigmoid, leaky_relu and elu stay on ATen's kernels (measured).

The clamp operator: pytorch aten/src/ATen/native/quantized/cpu/qclamp.cpp ``qnnpack_clamp``
(clamp, hardtanh, relu6 on quint8), qnnpack/src/clamp.c: the bounds quantized with
``quantize_val``, then an integer clamp; it walks the input in its ``suggest_memory_format()``
order but writes a contiguous output, so a channels_last input comes out with its NHWC bytes read
as NCHW (a PyTorch bug qexact reproduces). ``torch.clamp`` with one bound raises ("Both min and
max should be specified for quantized clamp!") on every dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..float_math import glibc_expf, glibc_tanhf
from ..layout import suggests_channels_last
from ..requantize import (AddInt, ClampFloat32, MultiplyAddFloat32, MultiplyFloat32,
                          RoundHalfEvenToInt64, ToFloat32)
from ..rounding import f32
from . import aten_activations
from .aten import like_memory_format
from .aten_activations import (ActivationKernel, ActivationPath, ClampKernel, FloatFunction,
                               bound_steps, hardswish)

SOURCE = "pytorch aten/src/ATen/native/quantized/cpu/qnnpack/src"
TABLE_OPERATORS = {"hardswish": "qhardswish.cpp, qnnpack/src/hardswish.c",
                   "sigmoid": "qsigmoid.cpp, qnnpack/src/sigmoid.c",
                   "tanh": "qtanh.cpp, qnnpack/src/tanh.c"}


def _sigmoid_256(x):
    with np.errstate(over="ignore"):
        return f32(np.float32(256) / f32(np.float32(1) + glibc_expf(-x)))


def table_path(function: str, input_qparams, output_qparams) -> ActivationPath:
    """How QNNPACK computes the table entry of every code (module docstring): the path runs on
    the 256 codes, each element reads its entry."""
    code_to_float = (AddInt("i - z", term=-int(input_qparams.zero_point)),
                     ToFloat32("to float32"),
                     MultiplyFloat32("x = s (i - z)", factor=f32(input_qparams.scale)))
    entry = (ClampFloat32("clamp to [0, 255]", low=0.0, high=255.0),
             RoundHalfEvenToInt64("round half to even (lrintf)", role="round", nan=0))
    if function == "hardswish":
        inv = f32(np.float32(1) / f32(output_qparams.scale))
        function_ = FloatFunction("y = f32(f32(x * min(max(f32(x + 3), 0), 6)) / 6)", hardswish)
        scale = (MultiplyAddFloat32("t = f32(f32(inv y) + z_o), inv = f32(1 / f32(s_o))",
                                    factor=inv, term=f32(int(output_qparams.zero_point)),
                                    fused=False),)
    elif function == "sigmoid":
        function_ = FloatFunction("t = f32(256 / f32(1 + glibc_expf(-x)))", _sigmoid_256)
        scale = ()
    else:
        function_ = FloatFunction("y = glibc_tanhf(x)", glibc_tanhf)
        scale = (MultiplyAddFloat32("t = f32(f32(128 y) + 128)", factor=np.float32(128),
                                    term=np.float32(128), fused=False),)
    return ActivationPath(f"QNNPACK {function} 256-entry table", code_to_float, function_,
                          scale + entry, lookup=True)


@dataclass(frozen=True)
class TablePlacement:
    """Every element through the table; the output in the input's memory format. PyTorch raises
    for a 0-d tensor ("Got empty input tensor")."""

    function: str

    def split(self, values):
        if values.ndim == 0:
            raise ShapeError(f"quantized {self.function} of a 0-d tensor on QNNPACK: PyTorch "
                             "raises 'Got empty input tensor'")
        return (np.ones(values.shape, bool),), lambda result: like_memory_format(result, values)


def table(kernel: ActivationKernel) -> np.ndarray:
    """The 256 entries of a table kernel (for inspection; the op builds them as it runs)."""
    (path,) = kernel.paths
    value = np.arange(256, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        for step in path.dequantize:
            value = step.apply(value)
        value = path.function.apply(value)
        for step in path.quantize:
            value = step.apply(value)
    return value.astype(np.uint8)


def choose_activation(engine, function: str, input_qparams, output_qparams, constants: dict,
                      num_threads: int) -> ActivationKernel:
    """quint8 hardswish, sigmoid, tanh: QNNPACK's table; everything else ATen's kernel
    (``aten_activations.choose_activation``)."""
    if function in TABLE_OPERATORS and input_qparams.dtype.name == "quint8":
        return ActivationKernel(f"QNNPACK {function} (256-entry table)",
                                f"{SOURCE}: {TABLE_OPERATORS[function]}",
                                (table_path(function, input_qparams, output_qparams),),
                                TablePlacement(function))
    return aten_activations.choose_activation(engine, function, input_qparams, output_qparams,
                                              constants, num_threads)


@dataclass(frozen=True)
class MemoryOrderPlacement:
    """``qnnpack_clamp``: output element ``k`` (C order, contiguous output) is the ``k``-th
    element of the input in its memory order, so a channels_last 4-D/5-D input's NHWC bytes are
    read as NCHW; other inputs keep their elements and layout."""

    def arrange(self, values):
        if values.ndim not in (4, 5) or not suggests_channels_last(values):
            return values, None, lambda result: result
        order = (0,) + tuple(range(2, values.ndim)) + (1,)
        read = np.ascontiguousarray(values.transpose(order)).reshape(values.shape)
        source = np.arange(values.size).reshape(values.shape).transpose(order).reshape(
            values.shape)
        return read, source, np.ascontiguousarray


def choose_clamp(engine, qparams, low, high) -> ClampKernel:
    """Both bounds required (every dtype); quint8: QNNPACK's clamp operator; qint8: ATen's."""
    if low is None or high is None:
        raise UnsupportedError("quantized clamp with one bound on the qnnpack engine: PyTorch "
                               "raises 'Both min and max should be specified for quantized clamp!'")
    if qparams.dtype.name != "quint8":
        return aten_activations.choose_clamp(engine, qparams, low, high)
    return ClampKernel("QNNPACK clamp operator (u8clamp)",
                       "pytorch aten/src/ATen/native/quantized/cpu/qclamp.cpp qnnpack_clamp, "
                       "qnnpack/src/clamp.c", bound_steps(qparams), MemoryOrderPlacement())


KERNELS: dict = {"activation": choose_activation, "clamp": choose_clamp}
"""This module's entries of the qnnpack engine's kernel table (``Engine.kernels``)."""
