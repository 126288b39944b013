"""Quantized activations: relu and the clamps (integer-only), and the rescaling activations
(dequantize, a float32 function, quantize), each run as the engine states its kernel.

relu: ``q = max(q, zp)`` with the input's qparams (pytorch QuantizedOpKernels.cpp ``qrelu_kernel``):
the zero point is the integer that stands for 0.0, so this is exact and integer-only.

sigmoid, tanh, hardsigmoid, hardswish, leaky_relu, elu, celu, threshold: the ``"activation"``
family of ``Engine.kernels`` (engines/aten_activations.py: ATen's SIMD body and scalar tail,
each with its dequantize, float function and quantize; engines/qnnpack_lut.py: lookup tables).
clamp, hardtanh, relu6: the ``"clamp"`` family (bounds quantized, then an integer clamp). The op
validates, prepares and runs the description (``float_activations.run_paths``); explain observes
the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..engines.aten import default_num_threads
from ..engines.base import Engine
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..trace import apply_steps, record
from ._registry import graph_op, observed_stages
from .float_activations import FloatKernelParams, float_kernel, prepare_float_kernel, run_paths
from .quantize import require_quantized


def relu(x: QuantizedArray) -> QuantizedArray:
    """Quantized ReLU: ``max(q, zero_point)``; qparams unchanged (``torch.relu`` on a quantized
    tensor).

    >>> from qexact.qparams import QParams
    >>> from qexact.dtypes import QUINT8
    >>> relu(QuantizedArray(np.uint8([3, 10, 200]), QParams.per_tensor(0.1, 10, QUINT8))).values
    array([ 10,  10, 200], dtype=uint8)
    """
    if x.qparams.is_per_channel:
        raise ShapeError("quantized relu takes per-tensor quantized arrays")
    floor = x.values.dtype.type(x.qparams.zero_point)
    out = record("relu", "q = max(q, {z}): z stands for 0.0", np.maximum(x.values, floor),
                 q=x.values, z=int(x.qparams.zero_point))
    return QuantizedArray(out, x.qparams)


def relu_float(x: np.ndarray) -> np.ndarray:
    """``torch.relu`` on floats: ``x < 0 ? 0 : x`` (keeps -0.0 and NaN, as torch does)."""
    return record("relu (float)", "y = x < 0 ? 0 : x", np.where(x < 0, np.zeros((), x.dtype), x),
                  x=x)


@graph_op("relu", "ReLU (nn.ReLU, F.relu, torch.relu): quantized, or float between dequantize "
          "and quantize as FX-converted models run it")
class ReluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        return None, input_qparams[0]

    @staticmethod
    def run(params, inputs):
        x = inputs[0]
        return relu(x) if isinstance(x, QuantizedArray) else relu_float(np.asarray(x))

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(ReluOp.run, params, inputs, result, index), [(0, index)]


# --- Activations that rescale: dequantize, a float32 function, quantize ------------------------


ACTIVATIONS = ("sigmoid", "tanh", "hardsigmoid", "hardswish", "leaky_relu", "elu", "celu",
               "threshold")
"""The quantized activations PyTorch has (qsigmoid.cpp, qtanh.cpp, qhardsigmoid.cpp,
qhardswish.cpp, qrelu.cpp ``leaky_relu`` and ``threshold``, qelu.cpp ``elu`` and ``celu``)."""

SAME_QPARAMS = frozenset({"threshold"})
"""Activations whose output keeps the input's qparams (qrelu.cpp ``quantized_threshold_impl``)."""

FIXED_OUTPUT = {("sigmoid", "quint8"): (1.0 / 256, 0), ("sigmoid", "qint8"): (1.0 / 256, -128),
                ("hardsigmoid", "quint8"): (1.0 / 256, 0),
                ("hardsigmoid", "qint8"): (1.0 / 256, -128),
                ("tanh", "quint8"): (1.0 / 128, 128), ("tanh", "qint8"): (1.0 / 128, 0)}
"""Output qparams PyTorch fixes (qsigmoid.cpp, qtanh.cpp, qhardsigmoid.cpp)."""


@dataclass(frozen=True)
class ActivationParams:
    """A rescaling activation: ``function`` (one of ``ACTIVATIONS``), ``input_qparams``,
    ``output_qparams``, ``kernel`` (the engine's description: its code paths, each with its
    dequantize, float function and quantize, and which elements each computes), and the
    function's constants ``slope`` (leaky_relu), ``alpha``/``scale``/``input_scale`` (elu; celu
    sets ``scale = 1``, ``input_scale = 1 / alpha``), ``threshold``/``value`` (threshold)."""

    function: str
    input_qparams: QParams
    output_qparams: QParams
    kernel: object
    slope: float = 0.01
    alpha: float = 1.0
    scale: float = 1.0
    input_scale: float = 1.0
    threshold: float = 0.0
    value: float = 0.0


def prepare_activation(function: str, input_qparams: QParams, output_qparams: QParams | None,
                       engine: Engine | str, num_threads: int | None = None,
                       **constants) -> ActivationParams:
    """Validate, and ask ``engine`` for its kernel; ``output_qparams`` is None for sigmoid, tanh
    and hardsigmoid (PyTorch fixes them: ``FIXED_OUTPUT``). ``num_threads``: PyTorch's intra-op
    threads (large tensors are cut into one chunk per thread)."""
    from ..engines import get_engine

    if function not in ACTIVATIONS:
        raise UnsupportedError(f"activation {function!r} is not supported; supported: "
                               f"{sorted(ACTIVATIONS)}")
    if input_qparams.is_per_channel or input_qparams.dtype not in (QUINT8, QINT8):
        raise QuantParamError(f"{function}: input must be per-tensor quint8 or qint8")
    fixed = FIXED_OUTPUT.get((function, input_qparams.dtype.name))
    if function in SAME_QPARAMS:
        output_qparams = input_qparams
    if function == "celu":
        # quantized_celu (pytorch aten/src/ATen/native/quantized/cpu/qelu.cpp): qelu_kernel with
        # scale = 1 and input_scale = 1. / alpha in double (the kernel rounds it to float)
        alpha = float(constants.get("alpha", 1.0))
        if alpha == 0:
            raise QuantParamError("celu: alpha cannot be 0")
        constants = dict(constants, scale=1.0, input_scale=1.0 / alpha)
    if fixed is not None:
        output_qparams = QParams.per_tensor(fixed[0], fixed[1], input_qparams.dtype)
    if output_qparams is None:
        raise QuantParamError(f"{function}: output qparams are required")
    if output_qparams.dtype != input_qparams.dtype:
        raise QuantParamError(f"{function}: output dtype {output_qparams.dtype} != input dtype "
                              f"{input_qparams.dtype}")
    params = ActivationParams(function, input_qparams, output_qparams, None,
                              **{key: float(value) for key, value in constants.items()})
    values = {"slope": params.slope, "alpha": params.alpha, "scale": params.scale,
              "input_scale": params.input_scale, "threshold": params.threshold,
              "value": params.value}
    kernel = get_engine(engine).kernel("activation", function, input_qparams, output_qparams,
                                       values, int(num_threads or default_num_threads()))
    return ActivationParams(function, input_qparams, output_qparams, kernel, **values)


def activation(x: QuantizedArray, p: ActivationParams) -> QuantizedArray:
    """Rescaling activation of ``x`` with ``p.output_qparams``: the kernel's placement splits
    the elements between its code paths, each path computes its elements (dequantize, the
    float32 function, quantize; or a table lookup), in the memory format the kernel allocates."""
    out = run_paths(p.kernel, np.asarray(x.values), p.function, p.output_qparams.dtype)
    return QuantizedArray(out, p.output_qparams)


# --- clamp / hardtanh / relu6 -------------------------------------------------------------------


@dataclass(frozen=True)
class ClampParams:
    """relu6 / hardtanh / clamp: the float bounds ``low``, ``high`` (None: no bound) and the
    ``engine`` whose ``"clamp"`` kernel runs each call."""

    low: float | None
    high: float | None
    engine: Engine


def clamp(x: QuantizedArray, low: float | None, high: float | None,
          engine: Engine | str) -> QuantizedArray:
    """relu6 / hardtanh / clamp: ``q = min(max(q, q_low), q_high)``, qparams unchanged, with
    the kernel ``engine`` states for the call (``"clamp"`` family): the bounds quantized by its
    ``bound_steps``, the input read in its placement's order (QNNPACK's clamp operator reads a
    channels_last input's bytes in memory order into a contiguous output); the kernel may refuse
    (QNNPACK: one bound)."""
    from ..engines import get_engine

    kernel = get_engine(engine).kernel("clamp", x.qparams, low, high)
    record("clamp: kernel", "the kernel that runs this call", None, kernel=kernel.name)
    read, source, output = kernel.arrange(x.values)
    if source is not None:
        read = record("clamp: read", "this output element reads input element {input_index} "
                      "(flat, C order): the kernel walks the input in memory order", read,
                      input_index=source)
    q = read.astype(np.int64)
    for name, bound, pick in (("low", low, np.maximum), ("high", high, np.minimum)):
        if bound is None:
            continue
        q_bound = apply_steps(np.float32(bound), kernel.bound_steps,
                              prefix=f"clamp: quantize the {name} bound {bound!r}: ")
        q = record(f"clamp: {'max' if name == 'low' else 'min'}(q, q_{name})",
                   f"{'max' if name == 'low' else 'min'}(q, {{q_{name}}})", pick(q, q_bound), q=q,
                   **{f"q_{name}": q_bound})
    return QuantizedArray(output(q.astype(x.values.dtype)), x.qparams)


def clamp_float(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    """``torch.clamp`` / ``F.hardtanh`` / ``F.relu6`` on float32:
    ``min(max(x, f32(low)), f32(high))`` (NaN propagates; ``low > high`` gives ``high``), exact
    (ATen clamp_kernel, scalar and SIMD alike)."""
    x = np.asarray(x)
    y = x
    if low is not None:
        y = np.maximum(y, x.dtype.type(low))
    if high is not None:
        y = np.minimum(y, x.dtype.type(high))
    return record("clamp (float)", "y = min(max(x, f32({low})), f32({high}))", y, x=x, low=low,
                  high=high)


@graph_op("clamp", "relu6 / hardtanh / clamp (nnq.ReLU6, F.hardtanh, torch.clamp): quantized "
          "(integer-only), or float between dequantize and quantize")
class ClampOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        from ..engines import get_engine

        return (ClampParams(node.attrs.get("low"), node.attrs.get("high"), get_engine(engine)),
                input_qparams[0])

    @staticmethod
    def run(params, inputs):
        x = inputs[0]
        if isinstance(x, QuantizedArray):
            return clamp(x, params.low, params.high, params.engine)
        return clamp_float(x, params.low, params.high)

    @staticmethod
    def explain(params, inputs, result, index):
        stages = observed_stages(ClampOp.run, params, inputs, result, index)
        upstream = tuple(index)
        for stage in stages:  # the kernel read another input element into this position
            if "input_index" in stage.values:
                shape = np.shape(getattr(inputs[0], "values", inputs[0]))
                upstream = tuple(int(i) for i in np.unravel_index(
                    int(stage.values["input_index"]), shape))
        return stages, [(0, upstream)]


# --- Float32 activations (FX-converted models run them between dequantize and quantize) -------


def prepare_float_activation(function: str, slope: float = 0.01, *, engine: Engine | str,
                             num_threads: int | None = None) -> FloatKernelParams:
    """hardswish, hardsigmoid, leaky_relu (``slope``), sigmoid on float32 tensors: the engine's
    float kernel (``ops.float_activations.prepare_float_kernel``); UnsupportedError for the
    functions whose float kernels qexact does not reproduce (tanh, elu)."""
    return prepare_float_kernel(function, engine, num_threads, slope=slope)


def float_activation(x: np.ndarray, p: FloatKernelParams) -> np.ndarray:
    """The float32 function ``p.function`` on float32 ``x`` (torch's float kernels)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise UnsupportedError(f"float {p.function} on {x.dtype} is not supported (float32 only)")
    return float_kernel(x, p)


@graph_op("activation", "sigmoid, tanh, hardsigmoid, hardswish, leaky_relu, elu, celu, threshold "
          "(quantized); "
          "sigmoid, hardswish, hardsigmoid, leaky_relu also on float32")
class ActivationOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        function = node.attrs["function"]
        if input_qparams[0] is None:
            return prepare_float_kernel(function, engine, node.attrs.get("num_threads"),
                                        slope=node.attrs.get("slope", 0.01)), None
        input_q = require_quantized(node, input_qparams)
        output = (QParams.per_tensor(node.attrs["output_scale"], node.attrs["output_zero_point"],
                                     input_q.dtype) if "output_scale" in node.attrs else None)
        if output is None and node.attrs.get("same_qparams"):  # F.leaky_relu on a quantized tensor
            output = input_q
        constants = {key: node.attrs[key] for key in ("slope", "alpha", "scale", "input_scale",
                                                      "threshold", "value")
                     if key in node.attrs}
        params = prepare_activation(function, input_q, output, engine,
                                    num_threads=node.attrs.get("num_threads"), **constants)
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        if isinstance(params, FloatKernelParams):
            return float_kernel(inputs[0], params)
        return activation(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(ActivationOp.run, params, inputs, result, index), [(0, index)]
