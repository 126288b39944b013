"""Running an engine's averaging kernel (``AverageKernel``, engines/aten_pooling.py) on window
sums, and laying a kernel's output out, observed: shared by ``ops.pooling``, ``ops.reduce`` and
``ops.resample`` (a helper module: it registers no graph op and imports none of them).

For each output element the op has summed its window exactly (``S`` over ``n`` valid taps); the
kernel states the divisor ``D`` and, per code path, the ``Step``s from ``A = S - n z`` (or ``S``)
to the output integer:

    q = path.steps(D, counts, qparams)(A)        for the elements the kernel's placement gives path

Every value is reported to ``qexact.trace`` as it is computed, so explain shows the run itself.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..qparams import QuantizedArray
from ..trace import apply_steps, observing, record


class Index(tuple):
    """A list of tap positions held per output position in an object array of a trace event: a
    tuple of ints that reads as ``[i, j, ...]`` and, like a NumPy scalar, returns itself for
    ``[()]`` (``qexact.trace`` picks an element's value that way)."""

    def __getitem__(self, key):
        return self if key == () else tuple.__getitem__(self, key)

    def __repr__(self) -> str:
        return "[" + ", ".join(str(int(i)) for i in self) + "]"


def source_axes(shape, lead: int, axes) -> dict[str, np.ndarray]:
    """Per output element of ``shape``, an input index as int arrays of ``shape`` (zero-copy
    broadcasts) named ``from_0``, ``from_1``, ...: the element's own first ``lead`` indices, then
    ``axes`` (integer arrays that broadcast to ``shape``). Explain walks back to it
    (``upstream_from``)."""
    named = {}
    for axis in range(lead):
        along = np.arange(shape[axis]).reshape([-1 if d == axis else 1 for d in range(len(shape))])
        named[f"from_{axis}"] = np.broadcast_to(along, shape)
    for axis, values in enumerate(axes, lead):
        named[f"from_{axis}"] = np.broadcast_to(np.asarray(values), shape)
    return named


def source_text(count: int, windows: int = 0) -> str:
    """``x[{from_0}, {from_1}, ...]`` over ``count`` input dims, the last ``windows`` of them as
    ranges ``{from_k}:{to_k}``."""
    parts = [f"{{from_{k}}}" if k < count - windows else f"{{from_{k}}}:{{to_{k}}}"
             for k in range(count)]
    return "x[" + ", ".join(parts) + "]"


def output_qparams_for(label: str, kernel, x: QuantizedArray, output_qparams):
    """The qparams ``kernel`` gives its output: ``output_qparams`` (None: the input's) where every
    path of the kernel rescales (``AveragePath.rescales``); a kernel that keeps its input's
    qparams refuses others."""
    if output_qparams is None or output_qparams == x.qparams:
        return x.qparams
    paths = getattr(kernel, "paths", ())
    if paths and all(getattr(path, "rescales", False) for path in paths):
        return output_qparams
    raise UnsupportedError(
        f"{label}: the kernel {kernel.name} keeps its input's qparams "
        f"({x.qparams.describe()}), and this op's output has others "
        f"({output_qparams.describe()})")


def average_windows(label: str, kernel, sums: np.ndarray, windows, x: QuantizedArray,
                    values: np.ndarray, spatial: int, output_qparams=None) -> np.ndarray:
    """The output integers (int64, logical order, the shape of ``sums``) of ``kernel`` on the
    window sums ``sums`` (``windows``: their sizes; ``values``: the kernel's input, whose channels
    its placement splits between paths; ``spatial``: the number of pooled dims;
    ``output_qparams``: the output's, for a kernel whose paths rescale, else None)."""
    zero_point = int(x.zero_point)
    size = np.broadcast_to(np.asarray(windows.size, np.int64), sums.shape)
    divisor = np.broadcast_to(np.asarray(kernel.divisors(windows), np.int64), sums.shape)
    record(f"{label}: divisor", f"D = {kernel.divisor_rule}", divisor, n=size,
           padded=np.broadcast_to(np.asarray(windows.padded, np.int64), sums.shape))
    integer = sums
    if kernel.centered:
        integer = record(f"{label}: centered sum", "A = S - n z = {S} - {n} * {z}",
                         sums - size * zero_point, S=sums, n=size, z=zero_point)
    counts = [np.broadcast_to(np.asarray(c, np.int64), sums.shape) for c in windows.counts]
    out = np.empty(sums.shape, np.int64)
    for path, where in zip(kernel.paths, kernel.split(values, sums.shape, spatial)):
        if not where.any():
            continue
        record(f"{label}: path", "which code path of the kernel computes this element", None,
               where=where, kernel=kernel.name, path=path.name)
        if path.rescales:
            steps = path.steps(divisor[where], [c[where] for c in counts], x.qparams,
                               output_qparams or x.qparams)
        else:
            steps = path.steps(divisor[where], [c[where] for c in counts], x.qparams)
        out[where] = apply_steps(integer[where], steps, where=where, prefix=f"{label}: ")
    return out


def input_values(x) -> tuple[np.ndarray, object]:
    """(values, dtype) of an averaging op's input: a ``QuantizedArray`` (its integers and
    quantized dtype), or a float32 array (a PT2E model's float op; dtype ``float32``)."""
    if isinstance(x, QuantizedArray):
        return x.values, x.dtype
    values = np.asarray(x)
    if values.dtype != np.float32:
        raise UnsupportedError(f"takes a QuantizedArray or a float32 array, got {values.dtype}")
    return values, values.dtype


def require_float32_kernel(label: str, kernel, x) -> None:
    """A float32 input runs only on a kernel that computes in float32 (``runs_in_float32``)."""
    if not isinstance(x, QuantizedArray) and not getattr(kernel, "runs_in_float32", False):
        raise UnsupportedError(f"{label} on a float32 tensor: the engine's kernel ({kernel.name}) "
                               "takes quantized tensors only")


def through_float32(label: str, kernel, x, engine, output_qparams, **arguments):
    """A kernel that runs in float32 between converts (``kernel.runs_in_float32``): ``x``
    dequantized by the engine's ``"dequantize"`` kernel, ``kernel.compute(d, **arguments)``,
    quantized to ``output_qparams`` (None: the input's) by the engine's ``"quantize"`` kernel;
    the output contiguous. A float32 ``x`` (a float op) gives the float32 result itself."""
    from .quantize import _quantize, dequantize

    quantized = isinstance(x, QuantizedArray)
    floats = dequantize(x, engine.kernel("dequantize", x.qparams, x.values.ndim)) if quantized \
        else x
    result = record(f"{label} (float32)", kernel.formula, kernel.compute(floats, **arguments),
                    kernel=kernel.name)
    result = np.ascontiguousarray(result)
    if not quantized:
        return result
    output_qparams = output_qparams or x.qparams
    return _quantize(result, output_qparams,
                     engine.kernel("quantize", output_qparams, result.ndim))


def laid_out(label: str, output, result: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``output(result, values)``: the kernel's output layout. Where it moves values (a kernel
    writing channels_last bytes that the output's strides read otherwise), explain gets a last
    stage naming the element whose computed value each moved element holds."""
    final = output(result, values)
    if observing():
        positions = np.arange(result.size).reshape(result.shape)
        source = np.asarray(output(positions, values))
        moved = source != positions
        if moved.any():
            computed_at = {f"computed_at_{axis}": index for axis, index
                           in enumerate(np.unravel_index(source[moved], result.shape))}
            element = ", ".join(f"{{{name}}}" for name in computed_at)
            record(f"{label}: memory layout",
                   "the kernel writes its results in its own memory order; read through this "
                   f"output's strides, this element holds the value computed for element "
                   f"[{element}] (the stages above are this element's own computation)",
                   np.asarray(final)[moved], where=moved, **computed_at)
    return final


def upstream_from(stages, shape) -> list[tuple[int, tuple[int, ...]]]:
    """Where explain walks back to: the input index the run reported as ``from_0``, ``from_1``,
    ... (the last stage that has one: a window's first tap, the maximum's tap, the source pixel),
    in input 0 of ``shape``. A 1-D pool runs as 2-D and reports the inserted dim, dropped here.
    None when the kernel moved the element's value (a ``memory layout`` stage) or no tap lies in
    the input."""
    if any("computed_at_0" in stage.values for stage in stages):
        return []
    for stage in reversed(stages):
        if "from_0" not in stage.values:
            continue
        index, axis = [], 0
        while f"from_{axis}" in stage.values:
            index.append(int(stage.values[f"from_{axis}"]))
            axis += 1
        if len(index) == len(shape) + 1:
            index = index[:-2] + index[-1:]
        if len(index) == len(shape) and all(0 <= i < s for i, s in zip(index, shape)):
            return [(0, tuple(index))]
        return []
    return []
