"""XNNPACK's qs8 elementwise kernels as ExecuTorch's XNNPACK delegate runs them (engine
``xnnpack``): the ``"quantize"`` (XNNConvert f32 -> qs8), ``"binary"`` (XNNAdd, XNNMultiply),
``"clamp"`` (qs8 XNNClamp) and ``"cat"`` (XNNConcatenate) families of its kernel table.

XNNPACK read at 92a7ad5 (ExecuTorch's pin); measured against ExecuTorch 1.5.1's runtime on
x86-64 (AVX512-VNNI), bit for bit (/tmp/p10/xnnpack/notes.md sections 1-4 and 8; thread count
irrelevant: every op here is elementwise). ``sat16``/``sat8`` are the saturating packs.

XNNConvert f32 -> qs8 (src/f32-qs8-vcvt/avx512skx.c.in, ``xnn_init_f32_qs8_cvt_scalar_params``
in src/microparams-init.c)::

    t = min(f32(x * f32(1.0f / s)), 32767.0f)        vminps: NaN gives 32767, so NaN -> 127
    q = sat8(sat16(sat16(cvtps2dq(t)) + z))           cvtps2dq: RNE, out of range -> INT32_MIN

(finite inputs and infinities come out as ``quantized_decomposed.quantize_per_tensor``'s; NaN
gives 127 where eager PT2E gives 0). The dequantize (qs8-f32-vcvt) ``f32(f32(q - z) * s)`` is
PT2E's own (engines/pt2e.py).

XNNAdd (qs8), ``xnn_qs8_vadd_minmax_ukernel__avx512skx_mul32_ld128_u16`` and ``qs8_vaddc`` for a
broadcast single element (src/qs8-vadd/avx512skx-mul32-ld128.c.in, params
``xnn_init_qs8_add_minmax_scalar_params``)::

    a_os = f32(s_a / s_o), b_os = f32(s_b / s_o)
    shift = 20 - e,  e = exponent of max(|a_os|, |b_os|)     (max = m 2^e, 1 <= m < 2)
    m_a = lrintf(a_os 2^shift), m_b likewise
    bias = 2^(shift - 1) - m_a z_a - m_b z_b                  int32
    r = (bias + m_a q_a + m_b q_b) >> shift                  arithmetic shift: ties toward +inf
    q = sat8(sat16(sat16(r) + z_o)), then max(q, lo), min(q, hi)

add+relu: XNNPACK src/subgraph/binary.c inserts a qs8 clamp node for output_min_max = (0, +inf):
``lo = xnn_qs8_quantize(0) = z_o``, ``hi = 127``. XNNPACK refuses a scale that is <= 0,
subnormal, inf or NaN (src/operators/binary-elementwise-nd.c); its ratio range [2^-10, 2^8) is
an ``assert`` only (compiled out), so no ratio is refused.

XNNMultiply (qs8), ``xnn_qs8_vmul_minmax_fp32_ukernel__avx_mul16_ld64_u16``
(``xnn_init_qs8_mul_minmax_scalar_params``)::

    m = f32(f32(s_a * s_b) / s_o)
    q = sat8(sat16(sat16(cvtps2dq(f32(f32((q_a - z_a)(q_b - z_b)) m))) + z_o))

mul+relu is not a qs8 multiply: ExecuTorch lowers it as a float32 multiply between converts
(notes.md section 3); it is refused here.

XNNClamp (qs8; hardtanh after a quantized producer): the integer codes clamped to bounds
quantized by ``xnn_qs8_quantize`` (src/xnnpack/requantization.h, used by
``xnn_init_qs8_clamp_scalar_params``)::

    code(v) = lrintf(min(max(f32(f32(v / s) + (float) z), -128), 127))       ties to even

(an f32 division, the zero point added before rounding: eager's ``rne(v f32(1/s)) + z`` differs
at ties).

XNNConcatenate{2..5} (qs8): a byte copy; the quantizer gives every input and the output one
observer, so the inputs share the output's qparams (ATen's description: ``CatKernel``, whose
paths copy an input with the output's qparams).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..requantize import (AddFloat32, AddInt, AddInt32, ClampFloat32, ClampInt, DivideFloat32,
                          MinFloat32, MultiplyFloat32, MultiplyInt, RoundHalfEvenToInt32, Step,
                          ToFloat32)
from ..rounding import f32
from .aten_activations import ClampKernel, InPlacePlacement
from .aten_elementwise import BinaryKernel, BinaryPath, CatKernel, Combine
from .aten_quantize import ConversionKernel

SOURCE = "XNNPACK (92a7ad5)"
INT16 = (-32768, 32767)


@dataclass(frozen=True, eq=False)
class ArithmeticShiftRightInt32(Step):
    """``v = v >> shift`` on int32 ``v``: an arithmetic shift, rounding toward -inf (XNNPACK's
    qs8 add adds ``2^(shift - 1)`` first, so ties round toward +inf; ``vpsrad``)."""

    shift: int = 0
    formula = "v >> {shift} (arithmetic: floor)"

    def apply(self, value):
        return np.asarray(value, dtype=np.int64) >> self.shift


def _saturate16(label: str) -> ClampInt:
    return ClampInt(label, low=INT16[0], high=INT16[1])


def _output_int8(dtype, label: str = "saturate to int8 (packs_epi16)") -> ClampInt:
    return ClampInt(label, role="output_clamp", low=dtype.qmin, high=dtype.qmax)


def _check_int8(what: str, *qparams) -> None:
    for q in qparams:
        if q.dtype.name != "qint8":
            raise UnsupportedError(f"XNNPACK's {what} takes qint8 (qs8) tensors, got {q.dtype}")


def _check_scale(what: str, scale) -> None:
    """``xnn_create_binary_elementwise_nd``: a scale <= 0, subnormal, inf or NaN is refused."""
    value = np.float32(scale)
    if not (np.isfinite(value) and value >= np.finfo(np.float32).tiny):
        raise UnsupportedError(f"XNNPACK refuses the {what} scale {float(scale)!r} (not a normal "
                               "positive float32: xnn_create_binary_elementwise_nd fails, and "
                               "ExecuTorch cannot load the method)")


# --- quantize (XNNConvert f32 -> qs8) ------------------------------------------------------


def convert_steps(inv, zero_point: int, dtype) -> tuple[Step, ...]:
    """XNNConvert f32 -> qs8 as steps (module docstring)."""
    return (MultiplyFloat32("x * inv, inv = f32(1.0f / s)", factor=f32(inv)),
            MinFloat32("cap at 32767 (vminps; NaN: 32767)", high=32767.0),
            RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
            _saturate16("saturate to int16 (packs_epi32)"),
            AddInt("output zero point, after rounding", term=int(zero_point)),
            _saturate16("saturate to int16 (adds_epi16)"),
            _output_int8(dtype))


def choose_quantize(engine, qparams, ndim: int) -> ConversionKernel:
    """XNNConvert f32 -> qs8 (per tensor; ``convert_steps``)."""
    if qparams.is_per_channel:
        raise UnsupportedError(f"engine {engine.name!r} quantizes activations per tensor only")
    _check_int8("convert", qparams)
    inv = f32(np.float32(1.0) / f32(qparams.scale))
    return ConversionKernel("XNNPACK XNNConvert f32 -> qs8 (f32-qs8-vcvt avx512skx)",
                            f"{SOURCE} src/f32-qs8-vcvt/avx512skx.c.in, src/microparams-init.c "
                            "xnn_init_f32_qs8_cvt_scalar_params",
                            convert_steps(inv, int(qparams.zero_point), qparams.dtype), inv)


# --- binary: XNNAdd, XNNMultiply -----------------------------------------------------------


@dataclass(frozen=True)
class XnnpackAddParams:
    """The integer constants of XNNPACK's qs8 add (``xnn_init_qs8_add_minmax_scalar_params``)."""

    a_multiplier: int
    b_multiplier: int
    shift: int
    bias: int
    output_zero_point: int
    output_min: int
    output_max: int


def prepare_add(a_qparams, b_qparams, output_qparams, relu: bool) -> XnnpackAddParams:
    """The constants of the module docstring's add (``relu``: the inserted clamp from ``z_o``)."""
    for what, q in (("input A", a_qparams), ("input B", b_qparams), ("output", output_qparams)):
        _check_scale(what, q.scale)
    a_ratio = f32(f32(a_qparams.scale) / f32(output_qparams.scale))
    b_ratio = f32(f32(b_qparams.scale) / f32(output_qparams.scale))
    exponent = math.frexp(float(max(abs(a_ratio), abs(b_ratio))))[1] - 1
    shift = 20 - exponent
    if not 0 < shift < 32:
        raise UnsupportedError(f"XNNPACK add with a scale ratio of {float(max(a_ratio, b_ratio))!r}"
                               f": its shift {shift} is outside [1, 31], where XNNPACK's int32 arithmetic is "
                               "undefined in C (not modelled)")
    a_multiplier = int(np.rint(float(a_ratio) * 2.0 ** shift))  # exact scaling, then lrintf
    b_multiplier = int(np.rint(float(b_ratio) * 2.0 ** shift))
    bias = ((1 << (shift - 1)) - a_multiplier * int(a_qparams.zero_point)
            - b_multiplier * int(b_qparams.zero_point))
    zero_point = int(output_qparams.zero_point)
    dtype = output_qparams.dtype
    low = max(zero_point, dtype.qmin) if relu else dtype.qmin
    return XnnpackAddParams(a_multiplier, b_multiplier, shift, bias, zero_point, low, dtype.qmax)


def add_path(p: XnnpackAddParams, dtype) -> BinaryPath:
    """The add as steps: ``m_a q_a + m_b q_b`` (integer sum), ``+ bias`` (int32), ``>> shift``,
    ``sat16``, ``+ z_o``, ``sat16``, ``sat8``, the (relu) clamp."""
    steps = (AddInt32("plus bias = 2^(shift-1) - m_a z_a - m_b z_b (int32)", term=np.int64(p.bias)),
             ArithmeticShiftRightInt32("shift right (vpsrad): ties toward +inf", role="round",
                                       shift=p.shift),
             _saturate16("saturate to int16 (packs_epi32)"),
             AddInt("output zero point (adds_epi16)", term=p.output_zero_point),
             _saturate16("saturate to int16 (adds_epi16)"),
             _output_int8(dtype, "saturate to int8 (packs_epi16)"))
    if p.output_min > dtype.qmin:
        steps += (ClampInt("relu: the inserted qs8 clamp from xnn_qs8_quantize(0) = z_o",
                           role="relu", low=p.output_min, high=p.output_max),)
    return BinaryPath("qs8 vadd avx512skx mul32 (vaddc for a broadcast element)",
                      (MultiplyInt("q_a m_a", factor=p.a_multiplier),),
                      (MultiplyInt("q_b m_b", factor=p.b_multiplier),),
                      Combine("integer sum", "integer sum"), steps)


def mul_multiplier(a_qparams, b_qparams, output_qparams) -> np.float32:
    """``f32(f32(s_a * s_b) / s_o)`` (``xnn_init_qs8_mul_minmax_scalar_params``)."""
    return f32(f32(f32(a_qparams.scale) * f32(b_qparams.scale)) / f32(output_qparams.scale))[()]


def mul_path(a_qparams, b_qparams, output_qparams) -> BinaryPath:
    """The multiply as steps (module docstring)."""
    dtype = output_qparams.dtype
    return BinaryPath(
        "qs8 vmul fp32 avx mul16",
        (AddInt("q_a - z_a", term=-int(a_qparams.zero_point)),),
        (AddInt("q_b - z_b", term=-int(b_qparams.zero_point)),),
        Combine("integer product", "integer product"),
        (ToFloat32("product to float32 (exact: |p| <= 65536)"),
         MultiplyFloat32("times m = f32(f32(s_a s_b) / s_o)",
                         factor=mul_multiplier(a_qparams, b_qparams, output_qparams)),
         RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
         _saturate16("saturate to int16 (packs_epi32)"),
         AddInt("output zero point (adds_epi16)", term=int(output_qparams.zero_point)),
         _saturate16("saturate to int16 (adds_epi16)"),
         _output_int8(dtype)))


@dataclass(frozen=True)
class WholePlacement:
    """Every element of the broadcast output through the kernel's one path; the output in C order
    (the delegate's NHWC tensors are transposed back at its boundary: data movement only)."""

    def split(self, out_shape, a, b):
        return (np.ones(out_shape, bool),), lambda values: np.ascontiguousarray(values)


def choose_binary(engine, op: str, relu: bool, a_qparams, b_qparams, output_qparams, a_shape,
                  b_shape, num_threads: int) -> BinaryKernel:
    """XNNAdd / XNNMultiply (qs8) for any broadcast (module docstring); mul+relu refused."""
    _check_int8(op, a_qparams, b_qparams, output_qparams)
    if op == "add":
        p = prepare_add(a_qparams, b_qparams, output_qparams, relu)
        return BinaryKernel("XNNPACK XNNAdd (qs8 vadd)" + (" + qs8 clamp" if relu else ""),
                            f"{SOURCE} src/qs8-vadd/avx512skx-mul32-ld128.c.in, "
                            "src/microparams-init.c xnn_init_qs8_add_minmax_scalar_params, "
                            "src/subgraph/binary.c", (add_path(p, output_qparams.dtype),),
                            WholePlacement())
    if relu:
        raise UnsupportedError(
            "mul followed by relu: ExecuTorch's XNNPACK delegate runs it as a float32 multiply "
            "between converts (dequantize, f32 multiply with output_min 0, quantize), which "
            "engine 'xnnpack' does not model yet")
    for what, q in (("input A", a_qparams), ("input B", b_qparams), ("output", output_qparams)):
        _check_scale(what, q.scale)
    return BinaryKernel("XNNPACK XNNMultiply (qs8 vmul fp32)",
                        f"{SOURCE} src/qs8-vmul/, src/microparams-init.c "
                        "xnn_init_qs8_mul_minmax_scalar_params",
                        (mul_path(a_qparams, b_qparams, output_qparams),), WholePlacement())


# --- clamp: XNNClamp (qs8) -------------------------------------------------------------------


def clamp_bound_steps(qparams) -> tuple[Step, ...]:
    """``xnn_qs8_quantize(v)``: ``lrintf(min(max(f32(f32(v / s) + z), -128), 127))``."""
    return (DivideFloat32("v / s (float32 division)", divisor=f32(qparams.scale)),
            AddFloat32("plus the zero point, before rounding", term=f32(int(qparams.zero_point))),
            ClampFloat32("clamp to [-128, 127] in float", low=float(qparams.dtype.qmin),
                         high=float(qparams.dtype.qmax)),
            RoundHalfEvenToInt32("round half to even (lrintf)", role="round"))


def choose_clamp(engine, qparams, low, high) -> ClampKernel:
    """qs8 XNNClamp: the bounds by ``xnn_qs8_quantize``, an integer clamp of the codes."""
    _check_int8("clamp", qparams)
    return ClampKernel("XNNPACK XNNClamp (qs8)",
                       f"{SOURCE} src/xnnpack/requantization.h xnn_qs8_quantize, "
                       "src/microparams-init.c xnn_init_qs8_clamp_scalar_params",
                       clamp_bound_steps(qparams), InPlacePlacement())


# --- cat: XNNConcatenate (qs8) -----------------------------------------------------------------


def choose_cat(engine) -> CatKernel:
    """XNNConcatenate{2..5}: a byte copy of inputs that share the output's qparams (the quantizer
    gives them one observer). ``CatKernel`` copies such inputs on both of its paths; inputs with
    other qparams (never produced by XNNPACKQuantizer) would be requantized as ATen does."""
    return CatKernel("XNNPACK XNNConcatenate (qs8 byte copy)",
                     f"{SOURCE} src/subgraph/concatenate.c; executorch backends/xnnpack/"
                     "quantizer (one shared observer for cat)", "avx2", 8,
                     general="byte copy (inputs share the output's qparams)")


KERNELS: dict = {"quantize": choose_quantize, "binary": choose_binary, "clamp": choose_clamp,
                 "cat": choose_cat}
"""This module's entries of the xnnpack engine's kernel table (``Engine.kernels``)."""
