"""Float32 activations that run between a dequantize and a quantize (no quantized kernel, or the
user left them float, as detection heads do): SiLU (nn.SiLU, F.silu: EfficientNet, YOLO-style
models), sigmoid, hardswish, hardsigmoid and leaky_relu on float tensors; and the runner of an
activation kernel's description, which the quantized activations share.

The engine states the kernel (the ``"float_activation"`` family of ``Engine.kernels``,
engines/aten_activations.py): ATen's float kernels have two lambdas, split like the quantized
elementwise kernels but in units of two ``Vectorized<float>`` (16 floats in the AVX2 build, 32
in the AVX512 build, which silu and sigmoid have):

    silu     SIMD body:   y = f32(x / f32(1 + sleef_expf_u10(-x)))     (Vectorized<float>::exp)
             scalar tail: y = f32(x / f32(1 + glibc_expf(-x)))          (std::exp)
    sigmoid  SIMD body:   y = f32(1 / f32(1 + sleef_expf_u10(-x)))      (neg, exp, reciprocal)
             scalar tail: y = f32(1 / f32(1 + glibc_expf(-x)))

``torch.exp`` on float32 is not here: MKL's ``vmsExp`` (``FLOAT_KERNELS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten import default_num_threads
from ..engines.aten_activations import FLOAT_KERNELS
from ..errors import ShapeError
from ..qparams import QuantizedArray
from ..trace import apply_steps, observe, observing, record
from ._registry import graph_op, observed_stages

__all__ = ["FLOAT_KERNELS", "FloatKernelParams", "float_kernel", "prepare_float_kernel",
           "run_paths"]
"""``FLOAT_KERNELS``: the float kernels with a per-lambda emulation (engines.aten_activations)."""


# --- Running an activation kernel's description ------------------------------------------------


def _compute(path, values: np.ndarray, where, label: str) -> np.ndarray:
    """``path``'s dequantize steps, float function and quantize steps on ``values``."""
    real = apply_steps(values, path.dequantize, where=where, prefix=f"{label}: ")
    with np.errstate(all="ignore"):  # float overflow and NaN are modelled, not errors
        y = path.function.apply(real)
    record(f"{label}: float function", path.function.formula, y, where=where, x=real,
           **path.function.constants)
    return apply_steps(y, path.quantize, where=where, prefix=f"{label}: ")


def _entry(value, entries: np.ndarray, codes: int):
    """An event's value at the table entries of the elements (arrays over the codes)."""
    if isinstance(value, np.ndarray) and value.shape == (codes,):
        return value[entries]
    return value


def _look_up(path, values: np.ndarray, where, label: str, first_code: int,
             codes: int) -> np.ndarray:
    """``path`` run on every code (the table, built as the kernel is called), each element
    reading its entry. The build's events are reported again at each element's entry, so
    explain shows how the entry it read was computed."""
    with observe() as build:
        table = _compute(path, np.arange(first_code, first_code + codes, dtype=np.int64), None,
                         f"{label} table entry")
    entries = values - first_code
    if observing():
        for event in build.events:
            record(event.label, event.formula, _entry(event.result, entries, codes),
                   where=where, **{name: _entry(value, entries, codes)
                                   for name, value in event.values.items()})
    return record(f"{label}: table lookup", "q_out = table[q]", table[entries], where=where,
                  q=values)


def run_paths(kernel, values: np.ndarray, label: str, dtype=None) -> np.ndarray:
    """Run an activation kernel's description (``engines.aten_activations.ActivationKernel``)
    on ``values``: its placement splits the elements between its paths, each path computes its
    elements (or reads them from its table over the codes of ``dtype``, the quantized dtype of
    input and output; None for float kernels), and the output comes out in the memory format
    the kernel allocates. Explain observes every step."""
    masks, output = kernel.split(values)
    out = np.empty(values.shape, values.dtype if dtype is None else dtype.numpy_dtype)
    for path, where in zip(kernel.paths, masks):
        if not where.any():
            continue
        record(f"{label}: path", "which code path of the kernel computes this element", None,
               where=where, kernel=kernel.name, path=path.name)
        selected = values[where]
        if selected.dtype.kind in "iu":
            selected = selected.astype(np.int64)
        if path.lookup:
            out[where] = _look_up(path, selected, where, label, dtype.qmin,
                                  dtype.qmax - dtype.qmin + 1)
        else:
            out[where] = _compute(path, selected, where, label)
    return output(out)


# --- Float kernels -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FloatKernelParams:
    """``function`` on float32 tensors and ``kernel``, the engine's description of it (the
    ``"float_activation"`` family: its code paths and their placement)."""

    function: str
    kernel: object


def prepare_float_kernel(function: str, engine, num_threads: int | None = None,
                         slope: float = 0.01) -> FloatKernelParams:
    """``function`` (silu, sigmoid, hardswish, hardsigmoid, leaky_relu with ``slope``) on float32
    tensors for ``engine`` (a name or an ``Engine``); ``num_threads``: PyTorch's intra-op
    threads (large tensors are cut into one chunk per thread)."""
    from ..engines import get_engine

    kernel = get_engine(engine).kernel("float_activation", function, {"slope": float(slope)},
                                       int(num_threads or default_num_threads()))
    return FloatKernelParams(function, kernel)


def float_kernel(x: np.ndarray, params: FloatKernelParams) -> np.ndarray:
    """``params.function`` on a float32 tensor, element for element as ATen's kernel (the
    output with the input's strides, as TensorIterator allocates it)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"{params.function} expects a float32 tensor, got {x.dtype}")
    return run_paths(params.kernel, x, f"{params.function} (float)")


def _run_float_kernel(params: FloatKernelParams, inputs):
    return float_kernel(inputs[0], params)


def explain_float_kernel(params: FloatKernelParams, inputs, result, index):
    return observed_stages(_run_float_kernel, params, inputs, result, index), [(0, index)]


@graph_op("silu", "SiLU (nn.SiLU, F.silu) on float32 tensors, as ATen's float kernel")
class SiluOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise ShapeError("silu has no quantized kernel in PyTorch; it runs on float tensors")
        return prepare_float_kernel("silu", engine, node.attrs.get("num_threads")), None

    @staticmethod
    def run(params, inputs):
        if isinstance(inputs[0], QuantizedArray):
            raise ShapeError("silu has no quantized kernel in PyTorch; it runs on float tensors")
        return float_kernel(inputs[0], params)

    explain = staticmethod(explain_float_kernel)
