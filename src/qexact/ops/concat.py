"""Quantized concatenation: ``quantized::cat`` / ``cat_relu`` (QFunctional.cat, torch.cat).

Source: pytorch aten/src/ATen/native/quantized/cpu/TensorShape.cpp (``quantized_cat_impl``,
``is_cat_nhwc_fast_path``, ``cat_quantized_cpu``) and QuantizedOpKernels.cpp
(``qcat_nhwc_kernel``). Engine-independent (measured on fbgemm, x86, qnnpack, onednn).

Two paths, chosen by the inputs' memory format in PyTorch:

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
  ``c < floor(C_i / F) F`` (``F`` = float lanes, 8 on AVX2) take the SIMD rules of
  ``qexact.ops.elementwise`` (dequantize ``fmaf(f32(s_i), q, f32(f32(s_i) f32(-z_i)))``, quantize
  ``clamp(rne(f32(y inv_d)) + z)`` with ``inv_d = f32(1.0 / s)`` computed in double) and the rest
  the scalar rules (``dequantize_val`` / ``quantize_val`` with ``f32(1 / f32(s))``).

``torch.cat`` on quantized tensors (``cat_quantized_cpu``) uses the first input's scale and zero
point as the output qparams (PyTorch warns when the inputs' qparams differ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten import ElementwiseNumerics, elementwise_numerics
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..stages import Stage
from ._registry import graph_op
from .elementwise import (dequantize_scalar, dequantize_simd, inverse_scale, quantize_scalar,
                          quantize_simd)
from .quantize import dequantize, quantize_per_tensor, require_quantized
from ..layout import is_channels_last, suggests_channels_last, to_channels_last


@dataclass(frozen=True)
class CatParams:
    """A prepared quantized cat: ``dim``, ``input_qparams`` (one per input), ``output_qparams``,
    ``relu`` (cat_relu), ``numerics`` (ATen capability: float lanes of the NHWC kernel),
    ``wraps_dim`` (torch.cat wraps a negative dim before choosing the kernel; quantized::cat
    does not, so ``dim=-3`` never takes the NHWC kernel there). Which
    kernel runs depends on the inputs' strides (channels_last or not), read at run time."""

    dim: int
    input_qparams: tuple
    output_qparams: QParams
    relu: bool
    numerics: ElementwiseNumerics
    wraps_dim: bool = False

    @property
    def float_lanes(self) -> int:
        """``Vectorized<float>::size()``: a quarter of the 8-bit lanes (0: scalar only)."""
        return self.numerics.lanes // 4


def prepare_cat(input_qparams, output_qparams: QParams, dim: int, relu: bool = False,
                engine="fbgemm", isa: str | None = None, wraps_dim: bool = False) -> CatParams:
    """Validate ``quantized::cat``/``cat_relu``."""
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
    if output_qparams.dtype.bits != 8:
        raise UnsupportedError(f"quantized cat on {output_qparams.dtype} is not supported (8-bit only)")
    return CatParams(int(dim), input_qparams, output_qparams, bool(relu),
                     elementwise_numerics(get_engine(engine, isa)), bool(wraps_dim))


def uses_nhwc_path(p: CatParams, arrays) -> bool:
    """``is_cat_nhwc_fast_path``: dim 1 and every input 4-D and channels_last-contiguous."""
    dim = p.dim + 4 if p.dim < 0 and p.wraps_dim else p.dim
    return dim == 1 and all(a.ndim == 4 and is_channels_last(a) for a in arrays)


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


def _nhwc_channel_values(p: CatParams, values: np.ndarray, qparams: QParams) -> np.ndarray:
    """One input of the NHWC kernel, requantized to the output qparams (int64, NCHW)."""
    out_qp = p.output_qparams
    dtype = out_qp.dtype
    if (float(qparams.scale) == float(out_qp.scale) and qparams.zero_point == out_qp.zero_point
            and not p.relu):
        return values.astype(np.int64)
    channels = values.shape[1]
    body = channels // p.float_lanes * p.float_lanes if p.float_lanes else 0
    out = np.empty(values.shape, np.int64)
    inv_double = np.float32(1.0 / float(out_qp.scale))
    for lo, hi, dequant, quant, inv in ((0, body, dequantize_simd, quantize_simd, inv_double),
                                        (body, channels, dequantize_scalar, quantize_scalar,
                                         inverse_scale(out_qp.scale))):
        if hi > lo:
            real = dequant(values[:, lo:hi], qparams.scale, qparams.zero_point)
            if p.relu:
                real = np.maximum(real, np.float32(0))
            out[:, lo:hi] = quant(real, inv, out_qp.zero_point, dtype)
    return out


def cat(inputs, p: CatParams) -> QuantizedArray:
    """Quantized concatenation of ``inputs`` (QuantizedArrays) along ``p.dim``."""
    values = [x.values for x in inputs]
    dim = _check_shapes(p, [v.shape for v in values])
    out_qp = p.output_qparams
    if uses_nhwc_path(p, values):
        parts = [_nhwc_channel_values(p, v, qp) for v, qp in zip(values, p.input_qparams)]
        out = to_channels_last(np.concatenate(parts, axis=1).astype(out_qp.dtype.numpy_dtype))
        return QuantizedArray(out, out_qp)
    else:
        real = np.concatenate([dequantize(QuantizedArray(v, qp))
                               for v, qp in zip(values, p.input_qparams)], axis=dim)
        out = quantize_per_tensor(real, out_qp.scale, out_qp.zero_point, out_qp.dtype).values
        if p.relu:
            out = np.maximum(out, out_qp.dtype.numpy_dtype.type(out_qp.zero_point))
        out = out.astype(out_qp.dtype.numpy_dtype)
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


def explain_cat(p: CatParams, inputs, result: QuantizedArray, index):
    shapes = [x.values.shape for x in inputs]
    dim = p.dim % len(shapes[0])
    which, inner = _locate(shapes, dim, index)
    qp = p.input_qparams[which]
    q = inputs[which].values[inner]
    out = result.values[index]
    values = {"input": which, "q": q, "s_i": qp.scale, "z_i": qp.zero_point,
              "s": p.output_qparams.scale, "z": p.output_qparams.zero_point}
    relu = "; relu" if p.relu else ""
    if not uses_nhwc_path(p, [x.values for x in inputs]):
        formula = "q' = clamp(rne(fmaf(f32(f32(s_i) f32(q - z_i)), f32(1/f32(s)), z)))" + relu
        return [Stage("cat: dequantize, concatenate, quantize_per_tensor", formula, values, out)], \
            [(which, inner)]
    same = float(qp.scale) == float(p.output_qparams.scale) and qp.zero_point == p.output_qparams.zero_point
    channels = shapes[which][1]
    simd = p.float_lanes and inner[1] < channels // p.float_lanes * p.float_lanes
    if same and not p.relu:
        formula = "NHWC kernel: input shares the output qparams, bytes copied"
    elif simd:
        formula = ("NHWC kernel SIMD channels: q' = clamp(rne(f32(fmaf(f32(s_i), q, f32(f32(s_i) "
                   "f32(-z_i))) f32(1.0/s))) + z)" + relu)
    else:
        formula = "NHWC kernel scalar channels: q' = clamp(rne(f32(f32(d f32(1/f32(s))) + z)))" + relu
    return [Stage("cat (channels_last)", formula, values, out)], [(which, inner)]


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

    @staticmethod
    def run(params, inputs):
        if isinstance(params, tuple):
            return np.concatenate([np.asarray(x) for x in inputs], axis=params[1])
        return cat(inputs, params)

    @staticmethod
    def explain(params, inputs, result, index):
        if isinstance(params, tuple):
            shapes = [np.shape(x) for x in inputs]
            which, inner = _locate(shapes, params[1] % len(shapes[0]), index)
            return [Stage("cat (float)", "values copied", {"input": which},
                          np.asarray(result)[index])], [(which, inner)]
        return explain_cat(params, inputs, result, index)
