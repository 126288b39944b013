"""Quantized concatenation: ``quantized::cat`` / ``cat_relu`` (QFunctional.cat, torch.cat).

Source: pytorch aten/src/ATen/native/quantized/cpu/TensorShape.cpp (``quantized_cat_impl``,
``is_cat_nhwc_fast_path``, ``cat_quantized_cpu``) and QuantizedOpKernels.cpp
(``qcat_nhwc_kernel``). The engine's ``"cat"`` kernel (``CatKernel``, engines/aten_elementwise.py)
states which inputs take which path and the NHWC kernel's steps; ATen's, the same on every engine
(measured on fbgemm, x86, qnnpack, onednn) but for the capability's float lanes.

Two paths, chosen by the inputs' memory format in PyTorch (qint32: the general path only; its
NHWC case is refused):

- **general** (any input not channels_last, or dim != 1, or not 4-D): ``quantize_per_tensor(
  cat(dequantize(x_i)), s, z)`` with the ``qexact.ops.quantize`` formulas (dequantize
  ``f32(f32(s_i) f32(q - z_i))``, quantize ``rne(fmaf(x, f32(1/f32(s)), z))``); relu:
  ``max(q, z)`` afterwards. Inputs sharing the output qparams come out unchanged (arithmetic).
  The output is channels_last when every input suggests channels_last (``at::cat`` then
  ``quantize_per_tensor`` keep ``suggest_memory_format()``), else contiguous.
- **NHWC** (dim == 1 and every input 4-D and channels_last-contiguous, read from the NumPy strides
  with ``qexact.layout.is_channels_last``: quantized conv outputs are channels_last; NCHW arrays
  with C == 1 or H*W == 1 are too); the output is channels_last. Per pixel and per input, an input
  with exactly the output scale and zero point is memcpy'd (not with relu); otherwise channels
  ``c < floor(C_i / F) F`` (``F`` = float lanes, 8 on AVX2) take ATen's SIMD pipelines
  (``qexact.engines.aten``: dequantize ``fmaf(f32(s_i), q, f32(f32(s_i) f32(-z_i)))``, quantize
  ``clamp(rne(f32(y inv_d)) + z)`` with ``inv_d = f32(1.0 / s)`` computed in double) and the rest
  the scalar rules (``dequantize_val`` / ``quantize_val`` with ``f32(1 / f32(s))``).

``torch.cat`` on quantized tensors (``cat_quantized_cpu``) uses the first input's scale and zero
point as the output qparams (PyTorch warns when the inputs' qparams differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten_elementwise import CatKernel
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..layout import suggests_channels_last, to_channels_last
from ..qparams import QParams, QuantizedArray
from ..requantize import ClampInt
from ..trace import apply_steps, observing, record
from ._registry import graph_op, observed_stages
from .quantize import dequantize, quantize_per_tensor, require_quantized
from .shape import unsqueeze


@dataclass(frozen=True)
class CatParams:
    """A prepared quantized cat: ``dim``, ``input_qparams`` (one per input), ``output_qparams``,
    ``relu`` (cat_relu), ``description`` (the engine's ``"cat"`` kernel: which kernel takes which
    inputs, and its steps), ``wraps_dim`` (torch.cat wraps a negative dim before choosing the
    kernel; quantized::cat does not, so ``dim=-3`` never takes the NHWC kernel there). Which
    kernel runs depends on the inputs' strides (channels_last or not), read at run time."""

    dim: int
    input_qparams: tuple
    output_qparams: QParams
    relu: bool
    description: CatKernel
    wraps_dim: bool = False


def prepare_cat(input_qparams, output_qparams: QParams, dim: int, relu: bool = False, *,
                engine, isa: str | None = None, wraps_dim: bool = False) -> CatParams:
    """Validate ``quantized::cat``/``cat_relu`` for ``engine`` (a name or an ``Engine``)."""
    from ..engines import get_engine

    input_qparams = tuple(input_qparams)
    if not input_qparams:
        raise ShapeError("quantized cat needs at least one input")
    for i, qparams in enumerate(input_qparams):
        if qparams.is_per_channel:
            raise QuantParamError(f"quantized cat: input {i} must be per-tensor quantized")
        if qparams.dtype != output_qparams.dtype:
            raise QuantParamError(f"quantized cat: input {i} dtype {qparams.dtype} differs from "
                                  f"output dtype {output_qparams.dtype} (PyTorch: 'All dtypes "
                                  "must be the same')")
    if output_qparams.dtype.bits not in (8, 32):
        raise UnsupportedError(f"quantized cat on {output_qparams.dtype} is not supported "
                               "(quint8, qint8, qint32)")
    return CatParams(int(dim), input_qparams, output_qparams, bool(relu),
                     get_engine(engine, isa).kernel("cat"), bool(wraps_dim))


def uses_nhwc_path(p: CatParams, arrays) -> bool:
    """Whether the kernel's NHWC path takes these inputs (``CatKernel.takes_nhwc_kernel``)."""
    return p.description.takes_nhwc_kernel(p.dim, arrays, p.wraps_dim)


def _check_shapes(p: CatParams, shapes) -> int:
    if len(shapes) != len(p.input_qparams):
        raise ShapeError(f"quantized cat: {len(shapes)} inputs, prepared for {len(p.input_qparams)}")
    ndim = len(shapes[0])
    if not -ndim <= p.dim < ndim:
        raise ShapeError(f"quantized cat: dim {p.dim} out of range for {ndim}-D inputs")
    dim = p.dim % ndim
    for shape in shapes:
        if len(shape) != ndim or any(a != b for d, (a, b) in enumerate(zip(shape, shapes[0]))
                                     if d != dim):
            raise ShapeError(f"quantized cat: shapes {[tuple(s) for s in shapes]} differ outside "
                             f"dim {dim}")
    return dim


def _slab(shape, dim: int, start: int, stop: int):
    """Where output elements ``start:stop`` along ``dim`` lie (a mask for ``trace``), or None
    when nobody observes the run."""
    if not observing():
        return None
    mask = np.zeros(shape, bool)
    mask[(slice(None),) * dim + (slice(start, stop),)] = True
    return mask


def _nhwc(p: CatParams, values, out_shape) -> np.ndarray:
    """The NHWC kernel: each input's channels requantized to the output qparams (int64, NCHW)."""
    kernel = p.description
    out = np.empty(out_shape, np.int64)
    offset = 0
    for i, (v, qparams) in enumerate(zip(values, p.input_qparams)):
        channels = v.shape[1]
        if kernel.copies(qparams, p.output_qparams, p.relu):
            segments = (("NHWC kernel, input shares the output qparams: bytes copied", None, 0,
                         channels),)
        else:
            body = kernel.simd_channels(channels)
            segments = ((f"NHWC kernel, SIMD channels (blocks of {kernel.float_lanes} floats)",
                         True, 0, body), ("NHWC kernel, scalar channels", False, body, channels))
        for path, simd, lo, hi in segments:
            if hi <= lo:
                continue
            where = _slab(out_shape, 1, offset + lo, offset + hi)
            record("cat: path", "which code path of the kernel computes this element", None,
                   where=where, kernel=kernel.name, path=path, input=i)
            part = v[:, lo:hi].astype(np.int64)
            if simd is None:
                result = record("cat: bytes copied", "q' = q", part.ravel(), where=where,
                                q=part.ravel())
            else:
                steps = kernel.nhwc_steps(simd, qparams, p.output_qparams, p.relu)
                result = apply_steps(part.ravel(), steps, where=where, prefix=f"cat input {i}: ")
            out[:, offset + lo:offset + hi] = result.reshape(part.shape)
        offset += channels
    return out


def _general(p: CatParams, values, dim: int) -> np.ndarray:
    """The general path: dequantize each input, ``at::cat``, ``quantize_per_tensor``, relu."""
    out_qp = p.output_qparams
    out_shape = list(values[0].shape)
    out_shape[dim] = sum(v.shape[dim] for v in values)
    record("cat: path", "which code path of the kernel computes this element", None,
           kernel=p.description.name, path=f"general: {p.description.general}")
    reals, offset = [], 0
    for i, (v, qparams) in enumerate(zip(values, p.input_qparams)):
        real = dequantize(QuantizedArray(v, qparams))
        # dequantize reports its steps over the input's elements; this places its result
        record(f"cat: dequantize input {i}", "d = dequantize(q) (the dequantize kernel)",
               real.ravel(),
               where=_slab(out_shape, dim, offset, offset + v.shape[dim]),
               q=v.astype(np.int64).ravel(), s_i=qparams.scale, z_i=qparams.zero_point)
        reals.append(real)
        offset += v.shape[dim]
    real = np.concatenate(reals, axis=dim)
    # quantize_per_tensor reports its own kernel and steps over the output's elements
    out = quantize_per_tensor(real, out_qp.scale, out_qp.zero_point, out_qp.dtype).values
    if p.relu:
        out = apply_steps(out.astype(np.int64), (ClampInt(
            "relu: max(q, z)", role="relu", low=int(out_qp.zero_point), high=out_qp.dtype.qmax),),
            prefix="cat: ")
    return out


def cat(inputs, p: CatParams) -> QuantizedArray:
    """Quantized concatenation of ``inputs`` (QuantizedArrays) along ``p.dim``."""
    values = [x.values for x in inputs]
    dim = _check_shapes(p, [v.shape for v in values])
    out_qp = p.output_qparams
    dtype = out_qp.dtype.numpy_dtype
    if uses_nhwc_path(p, values):
        if out_qp.dtype.bits != 8:
            # qcat_nhwc_kernel's qint32 vectors (Vectorized<c10::qint32>) are not stated here
            raise UnsupportedError(f"quantized cat of channels_last 4-D {out_qp.dtype} inputs "
                                   "along dim 1 (ATen's NHWC kernel) is not supported; "
                                   "8-bit only there, qint32 on the general path")
        out_shape = list(values[0].shape)
        out_shape[1] = sum(v.shape[1] for v in values)
        return QuantizedArray(to_channels_last(_nhwc(p, values, tuple(out_shape)).astype(dtype)),
                              out_qp)
    out = _general(p, values, dim).astype(dtype)
    if out.ndim in (4, 5) and all(suggests_channels_last(v) for v in values):
        out = to_channels_last(out)
    return QuantizedArray(out, out_qp)


def _locate(shapes, dim: int, index) -> tuple[int, tuple]:
    """Which input holds output element ``index``, and its index there."""
    position = index[dim]
    for i, shape in enumerate(shapes):
        if position < shape[dim]:
            return i, tuple(position if d == dim else v for d, v in enumerate(index))
        position -= shape[dim]
    raise IndexError(index)


def _float_cat(inputs, dim: int) -> np.ndarray:
    """``torch.cat`` on floats: the values copied (exact)."""
    arrays = [np.asarray(x) for x in inputs]
    out = np.concatenate(arrays, axis=dim)
    if observing():
        source = np.concatenate([np.full(a.shape, i) for i, a in enumerate(arrays)], axis=dim)
        record("cat (float)", "values copied from input {input}", out, input=source)
    return out


def _run_cat(params, inputs):
    if isinstance(params, tuple):
        return _float_cat(inputs, params[1])
    return cat(inputs, params)


@graph_op("cat", "quantized cat / cat_relu (QFunctional.cat, torch.ops.quantized.cat, torch.cat); "
          "inputs: the tensors; attrs: dim, output scale/zero point, relu")
class CatOp:
    @staticmethod
    def prepare(node, input_qparams, engine):
        if all(qp is None for qp in input_qparams):  # torch.cat on floats: exact
            return ("float", int(node.attrs.get("dim", 0))), None
        qparams = [require_quantized(node, input_qparams, i) for i in range(len(input_qparams))]
        if "output_scale" in node.attrs:
            output = QParams.per_tensor(node.attrs["output_scale"], node.attrs["output_zero_point"],
                                        qparams[0].dtype)
        else:  # torch.cat: the first input's qparams
            output = QParams.per_tensor(qparams[0].scale, qparams[0].zero_point, qparams[0].dtype)
        params = prepare_cat(qparams, output, node.attrs.get("dim", 0),
                             relu=bool(node.attrs.get("relu", False)), engine=engine,
                             wraps_dim="output_scale" not in node.attrs)
        return params, output

    run = staticmethod(_run_cat)

    @staticmethod
    def explain(params, inputs, result, index):
        shapes = [x.values.shape if isinstance(x, QuantizedArray) else np.shape(x)
                  for x in inputs]
        dim = params[1] if isinstance(params, tuple) else params.dim
        which, inner = _locate(shapes, dim % len(shapes[0]), index)
        return observed_stages(_run_cat, params, inputs, result, index), [(which, inner)]


def _run_stack(params, inputs):
    """``torch.stack``: ATen unsqueezes each input at ``dim`` (torch's strides: the layout decides
    the NHWC cat kernel) and runs ``cat``; a quantized result takes the first input's qparams."""
    dim = params[1] if isinstance(params, tuple) else params.dim
    unsqueezed = [QuantizedArray(unsqueeze(x.values, dim), x.qparams)
                  if isinstance(x, QuantizedArray) else unsqueeze(np.asarray(x), dim)
                  for x in inputs]
    return _run_cat(params, unsqueezed)


@graph_op("stack", "torch.stack (float or quantized): inputs unsqueezed at dim, then cat; attr dim")
class StackOp:
    prepare = staticmethod(CatOp.prepare)
    run = staticmethod(_run_stack)

