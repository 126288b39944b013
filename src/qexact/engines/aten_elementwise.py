"""ATen's quantized elementwise kernels for the binary family (add, mul, their scalar forms, cat):
which code path runs each element and its arithmetic as ``Step``s.

Families of the kernel table (``KERNELS``; ``Engine.kernel(family, ...)``):

- ``"binary"``: quantized add / add_relu / mul / mul_relu, ``choose_binary(engine, op, relu,
  a_qparams, b_qparams, output_qparams, a_shape, b_shape, num_threads) -> BinaryKernel``
  (chosen per call: another engine's choice may depend on the shapes);
- ``"scalar"``: add_scalar / mul_scalar, ``choose_scalar(...) -> ScalarKernel``;
- ``"cat"``: quantized cat / cat_relu, ``choose_cat(engine) -> CatKernel``.

Source: pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp (``qadd_kernel``,
``qmul_kernel``, ``qadd_scalar_kernel``, ``qcat_nhwc_kernel``), driven by ``cpu_kernel_vec``
(aten/src/ATen/native/cpu/Loops.h) over a ``TensorIterator``; each element either in the SIMD
body or the scalar tail (``engines.aten.simd_mask``):

    add (qadd_kernel):   SIMD   d = fmaf(f32(s), f32(q), f32(f32(s) f32(-z)))    per input
                                c = f32(d_a + d_b); relu: max(c, 0)
                                q = clamp(rne(f32(c inv)) + z_o)          inv = f32(1 / f32(s_o))
                         scalar d = f32(f32(s) f32(q - z)); c likewise
                                q = clamp(rne(f32(f32(c inv) + f32(z_o))))
    mul (qmul_kernel):   m = f32(f32(f32(s_a) f32(s_b)) f32(1 / f32(s_o)))
                         c = (q_a - z_a)(q_b - z_b);  q = clamp(rne(f32(f32(c) m)) + z_o)
                         relu: max(q, z_o). Past int32 the SIMD body's cvtps2dq gives INT32_MIN
                         and its 32-bit add of z_o wraps (Vectorized<qint8>::requantize_from_int,
                         vec256_qint.h); the scalar tail's lrintf keeps 64 bits.

The description classes (``BinaryKernel``, ``BinaryPath``, ``Combine``) are any engine's: the
qnnpack engine states its fixed-point add with them (engines/qnnpack_add.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..layout import is_channels_last, suggests_channels_last, to_channels_last
from ..requantize import (AddInt, AddInt32, ClampFloat32, ClampInt, MultiplyFloat32, MultiplyInt,
                          Step, ToFloat32)
from ..rounding import f32
from . import aten
from .aten import ElementwiseNumerics, IteratorWalk, inverse_scale, iterator_walk

KERNELS_SOURCE = "pytorch aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp"


# --- The binary family: a description any engine can state ----------------------------------


COMBINE_FORMULAS = {"float32 sum": "f32(a + b)", "integer sum": "a + b",
                    "integer product": "a * b"}


@dataclass(frozen=True)
class Combine:
    """How a binary kernel joins its two inputs after each input's own steps: ``kind`` is
    ``"float32 sum"`` (``f32(a + b)``), ``"integer sum"`` or ``"integer product"`` (exact, int64);
    ``label`` names it in explain."""

    label: str
    kind: str

    def __post_init__(self):
        if self.kind not in COMBINE_FORMULAS:
            raise ValueError(f"Combine kind {self.kind!r}; known: {sorted(COMBINE_FORMULAS)}")

    @property
    def formula(self) -> str:
        return COMBINE_FORMULAS[self.kind]

    def apply(self, a, b):
        if self.kind == "float32 sum":
            return f32(a + b)
        if self.kind == "integer sum":
            return np.asarray(a, np.int64) + np.asarray(b, np.int64)
        return np.asarray(a, np.int64) * np.asarray(b, np.int64)


@dataclass(frozen=True)
class BinaryPath:
    """One code path of a binary kernel (a lambda of ``cpu_kernel_vec``, or an operator's SIMD or
    scalar code): its ``name`` (explain shows it), the steps of each input from its integers
    (``a_steps``, ``b_steps``), how the two are joined (``combine``), and the ``output_steps`` to
    the output integers."""

    name: str
    a_steps: tuple[Step, ...]
    b_steps: tuple[Step, ...]
    combine: Combine
    output_steps: tuple[Step, ...]


@dataclass(frozen=True)
class BinaryKernel:
    """The kernel an engine runs for one quantized add/mul call: ``name``, ``source``, its code
    ``paths`` and ``placement``, whose ``split(out_shape, a, b)`` gives, in the order of
    ``paths``, the boolean mask (over the broadcast output) of the elements each path computes,
    and a function laying the output values out in the output's memory format."""

    name: str
    source: str
    paths: tuple[BinaryPath, ...]
    placement: object

    def split(self, out_shape, a: np.ndarray, b: np.ndarray):
        return self.placement.split(tuple(out_shape), a, b)

    def layout(self, out_shape, a: np.ndarray, b: np.ndarray):
        """``split``'s second half alone (the output's memory format), for a caller that needs
        no masks; None where the placement does not say it apart."""
        layout = getattr(self.placement, "layout", None)
        return None if layout is None else layout(tuple(out_shape), a, b)


def binary_walk(op: str, out_shape, a: np.ndarray, b: np.ndarray) -> IteratorWalk:
    """``qadd_kernel``/``qmul_kernel``'s walk (``iterator_walk``). The output is allocated in
    ``a.suggest_memory_format()``, so its memory order decides the walk: add allocates it with
    ``a``'s shape (pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp ``qadd``), and when
    ``b`` broadcasts ``a`` larger TensorIterator resizes it (``b``'s strides decide the order,
    the output is dense in it); mul allocates it with the broadcast shape (qmul.cpp ``QMul``).

    So with ``a`` and ``b`` in different memory formats (contiguous and channels_last), ``b`` is
    strided along the innermost walked dim (W for a contiguous ``a``, C for a channels_last one)
    and every element takes the scalar lambda, unless the dims they differ in have size 1.
    Measured (torch 2.13, AVX2 build, the ATen kernels on every engine): 4-D and 5-D, N 1-2,
    C in {1, 3, 8, 16, 17, 32, 64, 96}, both layouts in both orders, broadcasting, permuted and
    sliced views, 1 and 4 threads on 32768+ elements: 0 elements and 0 output strides off."""
    out_shape = tuple(out_shape)
    out_strides = None
    if a.shape == out_shape or op == "mul":
        allocated = np.empty(out_shape, np.uint8)
        if len(out_shape) == a.ndim and suggests_channels_last(a):
            allocated = to_channels_last(allocated)
        out_strides = allocated.strides  # itemsize 1: strides in elements
    return iterator_walk(out_shape, [a, b], out_strides)


@dataclass(frozen=True)
class IteratorPlacement:
    """``cpu_kernel_vec`` over TensorIterator's walk (``binary_walk`` for ``op``'s output
    allocation): the SIMD lambda on whole body units of each inner loop and parallel chunk
    (``numerics``, ``num_threads``; ``IteratorWalk.simd_mask``), the scalar lambda on the rest;
    the output dense in the walk's order."""

    op: str
    numerics: ElementwiseNumerics
    num_threads: int

    def split(self, out_shape, a, b):
        walk = binary_walk(self.op, out_shape, a, b)
        simd = walk.simd_mask(self.numerics, self.num_threads)
        return (simd, ~simd), walk.output

    def layout(self, out_shape, a, b):
        return binary_walk(self.op, out_shape, a, b).output


def _relu_float(relu: bool) -> tuple[Step, ...]:
    return (ClampFloat32("relu: max(c, 0)", role="relu", low=0.0),) if relu else ()


def _relu_int(relu: bool, output_qparams, label: str = "relu: max(q, z_o)") -> tuple[Step, ...]:
    if not relu:
        return ()
    return (ClampInt(label, role="relu", low=int(output_qparams.zero_point),
                     high=output_qparams.dtype.qmax),)


def add_paths(numerics: ElementwiseNumerics, relu: bool, a_qparams, b_qparams,
              output_qparams) -> tuple[BinaryPath, BinaryPath]:
    """``qadd_kernel``: each input dequantized, a float32 sum, relu, quantized; the SIMD body with
    ``Vectorized``'s pipelines, the scalar tail with ``dequantize_val``/``quantize_val``."""
    inv = inverse_scale(output_qparams.scale)
    zo, dtype = int(output_qparams.zero_point), output_qparams.dtype
    total = Combine("float sum", "float32 sum")
    if dtype.bits == 32:
        return _add_paths_qint32(numerics, relu, a_qparams, b_qparams, inv, zo, dtype, total)
    simd = BinaryPath(
        f"SIMD body ({numerics.capability}, units of {numerics.body_unit})",
        aten.dequantize_vector(a_qparams.scale, a_qparams.zero_point),
        aten.dequantize_vector(b_qparams.scale, b_qparams.zero_point), total,
        _relu_float(relu) + aten.quantize_vector(inv, zo, dtype))
    tail = BinaryPath(
        "scalar tail (the scalar lambda)",
        aten.dequantize_scalar(a_qparams.scale, a_qparams.zero_point),
        aten.dequantize_scalar(b_qparams.scale, b_qparams.zero_point), total,
        _relu_float(relu) + aten.quantize_scalar(inv, zo, dtype))
    return simd, tail


def _add_paths_qint32(numerics, relu, a_qparams, b_qparams, inv, zo, dtype, total):
    """``qadd_kernel`` on qint32 (measured, torch 2.13, AVX2 build: 8 lanes, units of 16): the
    SIMD body dequantizes as for 8 bits, the tail as ``f32(f32(wrap32(q - z)) * f32(s))``, and
    both quantize with ``quantize_val`` (``Vectorized<qint32>::quantize`` quantizes lane by lane:
    the zero point added in float32 before rounding)."""

    def tail_dequantize(qparams):
        return (AddInt32("q - z (int32, wraps)", term=-int(qparams.zero_point)),
                ToFloat32("to float32"), MultiplyFloat32("dequantize (times s)",
                                                         factor=f32(qparams.scale)))

    output = _relu_float(relu) + aten.quantize_scalar(inv, zo, dtype)
    simd = BinaryPath(
        f"SIMD body ({numerics.capability}, units of {numerics.body_unit})",
        aten.dequantize_vector(a_qparams.scale, a_qparams.zero_point),
        aten.dequantize_vector(b_qparams.scale, b_qparams.zero_point), total, output)
    tail = BinaryPath("scalar tail (the scalar lambda)", tail_dequantize(a_qparams),
                      tail_dequantize(b_qparams), total, output)
    return simd, tail


def mul_multiplier(a_qparams, b_qparams, output_qparams) -> np.float32:
    """``qmul_kernel``'s ``f32(f32(f32(s_a) f32(s_b)) f32(1 / f32(s_o)))``."""
    product = f32(f32(a_qparams.scale) * f32(b_qparams.scale))
    return f32(product * inverse_scale(output_qparams.scale))[()]


def mul_paths(numerics: ElementwiseNumerics, relu: bool, a_qparams, b_qparams,
              output_qparams) -> tuple[BinaryPath, BinaryPath]:
    """``qmul_kernel``: the integer product of the centered inputs, requantized by
    ``requantize_from_int``: the SIMD body's ``cvtps2dq`` and 32-bit add of ``z_o`` (wrapping
    past int32), the scalar tail's 64-bit ``lrintf``; relu ``max(q, z_o)``."""
    m = mul_multiplier(a_qparams, b_qparams, output_qparams)
    dtype = output_qparams.dtype
    a_steps = (AddInt("q_a - z_a", term=-int(a_qparams.zero_point)),)
    b_steps = (AddInt("q_b - z_b", term=-int(b_qparams.zero_point)),)
    product = Combine("integer product", "integer product")
    zo = int(output_qparams.zero_point)
    simd = BinaryPath(
        f"SIMD body ({numerics.capability}, units of {numerics.body_unit})", a_steps, b_steps,
        product, aten.requantize_from_int_vector(m, zo, dtype) + _relu_int(relu, output_qparams))
    tail = BinaryPath(
        "scalar tail (the scalar lambda)", a_steps, b_steps, product,
        aten.requantize_from_int_scalar(m, zo, dtype) + _relu_int(relu, output_qparams))
    return simd, tail


def choose_binary(engine, op: str, relu: bool, a_qparams, b_qparams, output_qparams, a_shape,
                  b_shape, num_threads: int) -> BinaryKernel:
    """ATen's ``qadd_kernel``/``qmul_kernel`` at the engine's capability (any shapes)."""
    numerics = aten.elementwise_numerics(engine, output_qparams.dtype.bits)
    paths = (add_paths if op == "add" else mul_paths)(numerics, relu, a_qparams, b_qparams,
                                                       output_qparams)
    return BinaryKernel(f"ATen q{op}_kernel ({numerics.capability})",
                        f"{KERNELS_SOURCE} q{op}_kernel", paths,
                        IteratorPlacement(op, numerics, int(num_threads)))


# --- add_scalar / mul_scalar ------------------------------------------------------------------


@dataclass(frozen=True)
class ScalarKernel:
    """The kernel of one add_scalar / mul_scalar call: ``name``, ``source``, ``path`` (which case
    runs, with its output qparams rule; explain shows it) and the ``steps`` from the input
    integers to the output integers (empty: the integers are copied)."""

    name: str
    source: str
    path: str
    steps: tuple[Step, ...]


def choose_scalar(engine, op: str, relu: bool, scalar: float, input_qparams, output_qparams,
                  scalar_quantized: int, requantize: bool) -> ScalarKernel:
    """ATen's add_scalar / mul_scalar on every engine and capability (the SIMD and scalar lambdas
    of ``qadd_scalar_kernel`` both call ``requantize_from_int``, whose product stays far inside
    int32 here; measured on AVX2). pytorch BinaryOps.cpp ``_add_scalar_out``, Mul.cpp
    ``_mul_scalar_out``:

        add_scalar requantized:  q' = clamp(rne(f32(f32(q - z + c_q) m)) + z'),
                                 m = f32(f32(s) f32(1 / f32(s')))          (relu: max(q', z'))
        add_scalar otherwise, mul_scalar c > 0: q' = q                     (relu: max(q', z'))
        mul_scalar c = 0: q' = 0;  c < 0: q' = qmax + qmin - q             (relu: max(q', z'))
    """
    dtype = output_qparams.dtype
    relu_steps = _relu_int(relu, output_qparams, "relu: max(q', z')")
    if op == "mul_scalar":
        source = "pytorch aten/src/ATen/native/quantized/cpu/Mul.cpp _mul_scalar_out"
        if scalar > 0:
            return ScalarKernel("ATen mul_scalar (copy)", source,
                                "c > 0: s' = c s, z' = z, q' = q", relu_steps)
        if scalar == 0:
            return ScalarKernel("ATen mul_scalar (fill)", source,
                                "c = 0: s' = 1, z' = 0, q' = 0",
                                (MultiplyInt("every output 0 (strided memset)", factor=0),))
        return ScalarKernel("ATen mul_scalar (reflect)", source,
                            "c < 0: s' = |c| s, z' = qmax - (z - qmin), q' = qmax + qmin - q",
                            (MultiplyInt("-q", factor=-1),
                             AddInt("qmax + qmin - q", term=dtype.qmax + dtype.qmin))
                            + relu_steps)
    source = ("pytorch aten/src/ATen/native/quantized/cpu/BinaryOps.cpp _add_scalar_out, "
              f"{KERNELS_SOURCE} qadd_scalar_kernel")
    rule = ("c_q = rne(c / s); z - c_q in range: s' = s, z' = z - c_q; else s' rescaled, "
            "z' = qmin or qmax")
    if not requantize:
        return ScalarKernel("ATen add_scalar (copy)", source, rule + "; q' = q", relu_steps)
    m = f32(f32(input_qparams.scale) * inverse_scale(output_qparams.scale))[()]
    return ScalarKernel("ATen qadd_scalar_kernel", source, rule + "; requantized", (
        AddInt("q - z + c_q", term=scalar_quantized - int(input_qparams.zero_point)),)
        + aten.requantize_from_int_scalar(m, int(output_qparams.zero_point), dtype)
        + relu_steps)


# --- cat --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatKernel:
    """ATen's quantized cat (pytorch aten/src/ATen/native/quantized/cpu/TensorShape.cpp
    ``quantized_cat_impl``, ``is_cat_nhwc_fast_path``; QuantizedOpKernels.cpp
    ``qcat_nhwc_kernel``) at ``capability``:

    - the NHWC kernel (dim 1, every input 4-D and channels_last): per pixel and input, an input
      with the output's scale and zero point is copied (not with relu); otherwise channels
      ``c < floor(C_i / F) F`` (``F = float_lanes``, 0: none) take the SIMD pipelines
      (``Vectorized<float>`` dequantize, relu, ``QuantizeAvx2`` with ``f32(1.0 / s)`` computed in
      double), the rest the scalar ones (``dequantize_val``, ``quantize_val``);
    - otherwise the general path (``general``): dequantize each input, ``at::cat``,
      ``quantize_per_tensor`` (the quantize op's arithmetic), relu ``max(q, z)``.
    """

    name: str
    source: str
    capability: str
    float_lanes: int
    general: str = "dequantize, at::cat, quantize_per_tensor"

    def takes_nhwc_kernel(self, dim: int, arrays, wraps_dim: bool) -> bool:
        """``is_cat_nhwc_fast_path``: dim 1 and every input 4-D and channels_last-contiguous
        (``wraps_dim``: the caller wraps a negative dim first, as torch.cat does)."""
        dim = dim + 4 if dim < 0 and wraps_dim else dim
        return dim == 1 and all(a.ndim == 4 and is_channels_last(a) for a in arrays)

    def copies(self, input_qparams, output_qparams, relu: bool) -> bool:
        """The NHWC kernel copies an input's bytes when its qparams are the output's."""
        return (float(input_qparams.scale) == float(output_qparams.scale)
                and input_qparams.zero_point == output_qparams.zero_point and not relu)

    def simd_channels(self, channels: int) -> int:
        """How many of an input's channels the NHWC kernel's SIMD loop takes."""
        return channels // self.float_lanes * self.float_lanes if self.float_lanes else 0

    def nhwc_steps(self, simd: bool, input_qparams, output_qparams,
                   relu: bool) -> tuple[Step, ...]:
        """One input's requantization in the NHWC kernel, SIMD channels or scalar ones."""
        scale, zero_point = input_qparams.scale, input_qparams.zero_point
        zo, dtype = int(output_qparams.zero_point), output_qparams.dtype
        if simd:
            inv = np.float32(1.0 / float(output_qparams.scale))  # computed in double
            return (aten.dequantize_vector(scale, zero_point) + _relu_float(relu)
                    + aten.quantize_vector(inv, zo, dtype))
        return (aten.dequantize_scalar(scale, zero_point) + _relu_float(relu)
                + aten.quantize_scalar(inverse_scale(output_qparams.scale), zo, dtype))


def choose_cat(engine) -> CatKernel:
    """ATen's cat on every engine (measured on fbgemm, x86, qnnpack, onednn), at the engine's
    capability: ``Vectorized<float>::size()``, a quarter of the 8-bit lanes."""
    numerics = aten.elementwise_numerics(engine)
    return CatKernel(f"ATen quantized cat ({numerics.capability})",
                     "pytorch aten/src/ATen/native/quantized/cpu/TensorShape.cpp, "
                     f"{KERNELS_SOURCE} qcat_nhwc_kernel", numerics.capability,
                     numerics.lanes // 4)


KERNELS: dict = {"binary": choose_binary, "scalar": choose_scalar, "cat": choose_cat}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
