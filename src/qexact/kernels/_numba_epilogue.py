"""The requantization epilogue compiled: one numba pass instead of one NumPy pass per ``Step``.

``qexact.requantize.requantize(acc, steps, out_dtype)`` is the definition: it applies each
``Step`` of an engine's epilogue to the whole (M, N) accumulator in turn, in int64 / float32 /
float64 temporaries. ``compile_epilogue(steps, channels, out_dtype)`` translates the same steps
into a small program (one or two opcodes per step, its per-channel constants tiled to a block of
rows) that ``_run_program`` (one ``numba.njit`` function, ``cache=True, nogil=True``, never
``fastmath``) executes block by block: a block of rows (at most ``BLOCK_ELEMENTS`` values) is
loaded from the int32 accumulator, every opcode runs over the block (a flat loop that LLVM
vectorizes; the value lives in a float32 buffer or an int64 buffer, as the step states), and the
block is stored as ``out_dtype``. ``compile_epilogue`` returns ``None`` for a step it does not
translate (the caller keeps ``requantize``).

Run-time operands (``AddResidualFloat32``, ``AddOperandFloat32``, ``MultiplyOperandFloat32``,
``ScaledMultiplyAddFloat32``: arrays broadcasting to the accumulator, bound per call): compile
with the steps as they are (bound or not), then pass ``Epilogue.run(acc, operands=(...))``, one
array per operand step in step order; without ``operands`` the arrays bound to the steps
(``bind_operand``) are used.

Exactness, per step (every statement below is about the arithmetic in ``Step.apply``):

- Division by zero gives an infinity or NaN as in NumPy (``error_model="numpy"``: no
  ZeroDivisionError check).
- The same operations, in the same precision, in the same order, element by element. NumPy and
  LLVM both compute IEEE binary32 / binary64 operations with one rounding to nearest even
  (x86-64 SSE/AVX, MXCSR default); numba types ``float32 op float32`` as float32 (``fadd/fmul/
  fdiv float``), and with ``fastmath`` off LLVM may neither reassociate, contract a multiply and
  an add into an FMA, nor drop NaN/signed-zero cases. So a float32 op in numba is the float32
  op NumPy's ufunc loop does.
- Promotion is decided once, at compile time, as NumPy decides it in ``apply``: a float32 value
  with a constant ``c`` computes in ``np.result_type(float32 array, c)``. float32: the constant
  is converted to float32 (a safe, exact cast) and the op is one float32 op. float64 (a float64
  constant kept float64, or an int32/int64 one): the constant is converted to float64 by NumPy
  (the cast the ufunc does), the value widened (exact) and the op done in float64, then rounded
  once to float32: ``f32(v op c)`` exactly as ``apply`` computes it (``MultiplyFloat64``,
  ``ScaleToFloat32`` always take this path). Any other result type: not compiled.
- ``FusedMultiplyAdd``, fused ``MultiplyAddFloat32``/``AddResidualFloat32``/
  ``ScaledMultiplyAddFloat32``: ``fma_float32`` is, by its own argument (round to odd), the
  correctly rounded ``a*b + c`` in float32. Here it is ``llvm.fma.f32`` (``_fmaf``, an
  ``intrinsic``): LLVM defines it as the infinitely precise ``a*b + c`` rounded once, and lowers
  it to ``vfmadd`` (or to glibc's correctly rounded ``fmaf`` without FMA hardware). Two correct
  roundings of the same real number are equal; tests hold ``_fmaf`` against ``fma_float32`` on
  ties and random triples. The operands are converted to float32 first, as ``apply`` does.
- ``ClampFloat32``: ``np.maximum``/``np.minimum`` propagate a NaN operand as it is (the first if
  both are NaN, payload kept) and otherwise return the second operand when the two compare equal
  (``maximum(-0.0, +0.0)`` is +0.0; measured on NumPy 2.4 for every length): ``max(a, b) =
  (a > b or a != a) ? a : b``, ``min(a, b) = (a < b or a != a) ? a : b``, compares and selects
  only. An infinite bound that makes the operation the identity (``max(v, -inf)``) is skipped.
- ``MinFloat32``: ``v <= high ? v : high`` (NaN gives ``high``), as written in ``apply``.
- ``RoundHalfEvenToInt32`` (``cvtps2dq``): ``rint`` (``llvm.rint``, ties to even in the default
  rounding mode) of the float32 value, equal to ``rint(double(v))`` since both are the integer
  nearest to the same value; in range iff ``-2**31 <= r < 2**31`` (NaN compares false), else
  INT32_MIN. ``RoundHalfEvenToInt64``: NaN gives ``nan``, else ``rint(double(v))`` clipped to
  ``[-2**62, 2**62]``; ``RoundHalfEvenLrint``: in range iff ``-2**63 <= double(v) < 2**63``, else
  INT64_MIN. The float-to-int conversion is only taken on in-range values (to int32 where the
  range is int32's).
- Integer steps run on int64 with two's-complement wrapping, as NumPy's int64 arithmetic does
  (numba's ``+ - * & >>`` on int64 wrap, ``>>`` is arithmetic): ``AddInt32`` is literally
  ``((v + t) - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN``; ``AddInt``, ``MultiplyInt``, ``ClampInt``
  (``min(max(v, low), high)``, NumPy's clip), ``RoundingShiftRightInt32`` (same formula, the
  shift count cases of ``apply``). Scalars must fit int64 (NumPy would raise otherwise).
- ``ToFloat32`` on the int64 value: ``float32(float64(v))``, the two roundings ``f32`` does (one
  only for |v| < 2**53; for an int32 accumulator LLVM may fold it to one exact ``cvtdq2ps``).
- Storing: ``value.astype(out_dtype)``: int64 to an integer type keeps the low bytes (NumPy's C
  cast), int64 to float32/float64 is one correctly rounded conversion (``cvtsi2ss``/``sd``, as
  NumPy's cast), float32 to float32/float64 is exact. A float value stored to an integer type
  (a C cast, undefined out of range) is not compiled.
- Operands: an operand array is used in its own dtype when converting it in the kernel is one
  correctly rounded (or exact) conversion of an exactly representable value, which is what
  ``apply`` computes (uint8, int8, int32, float32, float64); other dtypes are converted first by
  NumPy with the cast ``apply`` makes. ``AddOperandFloat32``/``MultiplyOperandFloat32`` compute
  in ``np.result_type(float32, operand)`` as above.
- Whole-program kernels (``_recognise``; the generic program runs everything else). The
  common conv/linear epilogues with a uint8/int8 output run as one loop per group of rows
  (``_x86_rows``: x86/oneDNN/inductor ``f32(acc)*m1*m2 [+bias] [max relu] *m3 +zp``, clamp,
  ``cvtps2dq``, low byte; ``_int_tail_rows``: fbgemm/QNNPACK ``[wrap_int32(acc + bias)]``,
  ``f32``, ``[fmaf(a, b, v) | v + a]``, ``* m``, ``cvtps2dq``, ``+ zp``, clip, low byte),
  channels innermost, per-channel constants read from a prefix of the tiled rows (columns
  repeat every ``channels``), the value in a float32 register. Per element these are the
  opcodes' operations above in the same order, with three rewrites, each exact:
  (1) NumPy's ``maximum(v, b)`` for a bound ``b`` that is not NaN (checked at compile time) is
  ``b >= v ? b : v``: a NaN ``v`` compares false and stays ``v``, a tie (``-0.0`` and
  ``+0.0``) gives ``b``, otherwise the larger; ``minimum`` likewise with ``<=``.
  (2) The integer tail in int32 instead of int64: ``q`` (cvtps2dq) is an int32; for int32
  ``t``, ``low``, ``high``, ``low - t``, ``high - t`` (checked), ``min(max(q + t, low), high)
  = min(max(q, low - t), high - t) + t`` in exact integers (if ``low > high`` both sides are
  ``high``), and its value lies in ``[low, high]``, so no int32 operation overflows.
  (3) ``wrap_int32(acc + k)`` is the int64 sum truncated to its low 32 bits (``np.int32`` of an
  int64 is LLVM's ``trunc``), which is what the two's-complement formula computes.
  Stores keep the low byte of the int32, as ``STORE_INT`` does of the int64 (same low bits).
- NaN payloads: where a single NaN meets a number, x86 returns that NaN quieted in NumPy's loops
  and in LLVM's; two NaNs meeting in one add/multiply (only with a NaN constant) may give either
  payload (LLVM treats those ops as commutative), so such steps' float outputs are compared as
  NaN by the tests, not by payload.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .. import requantize as rq
from . import refresh_compiled_cache

refresh_compiled_cache()  # before any cached kernel loads (see its docstring)

BLOCK_ELEMENTS = 2048
"""Values per block: a float32 and an int64 buffer of this size (24 KiB) stay in L1 (measured on
the EPYC host: 2048 to 4096 best, 2.3-2.5 Gelem/s; 8192 and more 1.6-1.8)."""

MAX_OPERANDS = 3
"""Run-time operand slots of one program."""

INT32_MIN = -(1 << 31)
INT64_MIN = -(1 << 63)

# Opcodes; a program row is (opcode, a, b, c, d, e). ``k``: a row of the tiled constants.
LOAD_INT = 1          # ival = int64(acc)
LOAD_FLOAT = 2        # fval = f32(double(acc))                       (a leading ToFloat32)
TO_FLOAT = 3          # fval = f32(double(ival))
INT_SCALE_F64 = 4     # fval = f32(double(ival) * c64[a])              (ScaleToFloat32 on ints)
ADD_F32 = 10          # fval = fval + c32[a]
MUL_F32 = 11          # fval = fval * c32[a]
DIV_F32 = 12          # fval = fval / c32[a]
ADD_F64 = 13          # fval = f32(double(fval) + c64[a])
MUL_F64 = 14          # fval = f32(double(fval) * c64[a])
DIV_F64 = 15          # fval = f32(double(fval) / c64[a])
FMA_VALUE_ADDEND = 16  # fval = fmaf(c32[a], c32[b], fval)              (FusedMultiplyAdd)
FMA_VALUE_FACTOR = 17  # fval = fmaf(fval, c32[a], c32[b])              (fused MultiplyAdd)
MAX_F32 = 20          # fval = max(fval, s32[a])   NumPy's maximum
MIN_F32 = 21          # fval = min(fval, s32[a])   NumPy's minimum
MIN_NAN_HIGH = 22     # fval = fval <= s32[a] ? fval : s32[a]        (MinFloat32)
LEAKY = 23            # fval = fval > 0 ? fval : fval * s32[a]          (oneDNN leaky_relu)
ROUND_I32 = 30        # ival = cvtps2dq(fval)
ROUND_I64 = 31        # ival = isnan ? a : int64(clip(rint(double(fval)), -2**62, 2**62))
LRINT = 32            # ival = lrintf(fval), INT64_MIN out of range
ADD_WRAP32 = 40       # ival = wrap_int32(ival + i64[a])
ADD_INT = 41          # ival = ival + a
CLAMP_INT = 42        # ival = min(max(ival, a), b)
MUL_INT = 43          # ival = ival * a
SHIFT_ROUND = 44      # ival = rounding shift right by a (b: count modulo 32)
OPERAND_ADD = 50      # fval = f32(fval + r), slot a, b: in float64
OPERAND_MUL = 51      # fval = f32(fval * r), slot a, b: in float64
RESIDUAL = 52         # d = f32(f32(q) - s32[b]); fmaf(d, s32[c], fval) (d: 1) or f32(fval + f32(d*s))
SCALED_MULADD = 53    # m = f32(f32(r) * factor); fmaf(fval, m, term) or f32(f32(fval*m) + term)
STORE_INT = 60        # out = low a bytes of ival
STORE_F32 = 61        # out = fval
STORE_F64 = 62        # out = double(fval)
STORE_INT_F32 = 63    # out = float32(ival)
STORE_INT_F64 = 64    # out = float64(ival)
ROUND_ADD_CLAMP_STORE8 = 70  # ROUND_I32, ADD_INT a, CLAMP_INT b c, STORE_INT 1 in one loop
# Pairs of the above in one loop (``_fuse_pairs``): the same operations per element in the
# same order, one pass over the block instead of two (each pass is L1 loads and stores).
LOAD_MUL_F32 = 80     # LOAD_FLOAT; MUL_F32 a
MUL_MUL_F32 = 81      # MUL_F32 a; MUL_F32 b
MUL_ADD_F32 = 82      # MUL_F32 a; ADD_F32 b   (two roundings: no contraction without fastmath)
ADD_MUL_F32 = 83      # ADD_F32 a; MUL_F32 b
CLAMP_F32 = 84        # MAX_F32 a; MIN_F32 b
ROUND_STORE8 = 85     # ROUND_I32; STORE_INT 1
CLAMP_ROUND_STORE8 = 86  # MAX_F32 a; MIN_F32 b; ROUND_I32; STORE_INT 1
# Whole programs recognised by ``_recognise`` (the common conv/linear epilogues), run row by row
# with the per-channel constants read directly (channels innermost), one loop, float32
# values in registers; their constant rows are c32 0, 1, ... and s32 0, 1, ... in step order.
X86_U8 = 90           # see _x86_rows: a = has bias, b = has relu
INT_TAIL_U8 = 91      # see _int_tail_rows: a = head * 3 + pre, b = term, c/d = low/high - term

_NATIVE_OPERANDS = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32),
                    np.dtype(np.float32), np.dtype(np.float64))


@intrinsic
def _fmaf(typingctx, a, b, c):
    """``fmaf(a, b, c)``: ``llvm.fma.f32``, the exact ``a*b + c`` rounded once to float32."""
    if not all(arg == types.float32 for arg in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        single = ir.FloatType()
        fma = builder.module.declare_intrinsic(
            "llvm.fma", [single], ir.FunctionType(single, [single, single, single]))
        return builder.call(fma, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def _rintf(typingctx, value):
    """``rintf``: the nearest integer of a float32, ties to even (``llvm.rint.f32``)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        single = ir.FloatType()
        rint = builder.module.declare_intrinsic(
            "llvm.rint", [single], ir.FunctionType(single, [single]))
        return builder.call(rint, args)

    return types.float32(types.float32), codegen


@intrinsic
def _rint(typingctx, value):
    """``rint``: the nearest integer of a float64, ties to even (``llvm.rint.f64``)."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        double = ir.DoubleType()
        rint = builder.module.declare_intrinsic(
            "llvm.rint", [double], ir.FunctionType(double, [double]))
        return builder.call(rint, args)

    return types.float64(types.float64), codegen


@numba.njit(cache=True, nogil=True)
def fmaf(a, b, c):
    """``fmaf`` on three float32 scalars (exposed for the tests)."""
    return _fmaf(np.float32(a), np.float32(b), np.float32(c))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _operand_step(op, fval, rows, channels, first_row, operand, row_stride, col_stride,
                  c32, c64, s32):
    """One operand opcode over the block (``operand`` flat, element (r, c) at
    ``r * row_stride + c * col_stride``)."""
    code = op[0]
    wide = op[2]
    for r in range(rows):
        base = (first_row + r) * row_stride
        at = r * channels
        for c in range(channels):
            x = operand[base + c * col_stride]
            i = at + c
            if code == OPERAND_ADD:
                if wide:
                    fval[i] = np.float32(np.float64(fval[i]) + np.float64(x))
                else:
                    fval[i] = fval[i] + np.float32(x)
            elif code == OPERAND_MUL:
                if wide:
                    fval[i] = np.float32(np.float64(fval[i]) * np.float64(x))
                else:
                    fval[i] = fval[i] * np.float32(x)
            elif code == RESIDUAL:
                centered = np.float32(x) - s32[op[3]]
                if wide:  # fused
                    fval[i] = _fmaf(centered, s32[op[4]], fval[i])
                else:
                    fval[i] = fval[i] + centered * s32[op[4]]
            else:  # SCALED_MULADD: op[3] factor row, op[4] its width, op[5] term row
                if op[4]:
                    multiplier = np.float32(np.float64(np.float32(x)) * c64[op[3], c])
                else:
                    multiplier = np.float32(x) * c32[op[3], c]
                if wide:  # fused
                    fval[i] = _fmaf(fval[i], multiplier, c32[op[5], c])
                else:
                    fval[i] = fval[i] * multiplier + c32[op[5], c]


@numba.njit(cache=True, nogil=True)
def _round_i32(value):
    """``cvtps2dq``: rint of a float32, INT32_MIN for NaN and out of range (as ROUND_I32)."""
    r = _rintf(value)
    fits = (r >= np.float32(-2147483648.0)) & (r < np.float32(2147483648.0))
    return np.int32(r if fits else np.float32(-2147483648.0))


@numba.njit(cache=True, nogil=True)
def _max_f32(value, bound):
    """NumPy's ``maximum(value, bound)`` for a bound that is not NaN (``_recognise`` checks):
    ``(value > bound or value != value) ? value : bound`` is ``bound >= value ? bound : value``
    (a NaN value compares false: value; a tie: bound), one compare and one select."""
    return bound if bound >= value else value


@numba.njit(cache=True, nogil=True)
def _min_f32(value, bound):
    """NumPy's ``minimum(value, bound)`` for a bound that is not NaN, as ``_max_f32``."""
    return bound if bound <= value else value


GROUP_ELEMENTS = 256
"""Values per inner loop of the whole-program kernels: ``GROUP_ELEMENTS // channels`` rows at
once (one loop over a prefix of the tiled constants, whose columns repeat every ``channels``),
so that few channels do not pay the loop's setup (alias checks) per row."""


@numba.njit(cache=True, nogil=True)
def _group_rows(channels, tiled):
    """Rows per inner loop: about ``GROUP_ELEMENTS`` values, within the tiling's ``tiled``."""
    return max(1, min(GROUP_ELEMENTS // channels, tiled // channels))


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _x86_rows(acc_block, rows, channels, dest, c32, s32, has_bias, has_relu):
    """``X86_U8`` (x86/oneDNN/inductor conv and linear, quantized output): per element, in the
    order of the steps, ``v = f32(acc) * m1 * m2 [+ bias] [max(v, relu)] * m3 + zp``, clamp to
    ``[low, high]`` (NumPy's maximum then minimum), ``cvtps2dq``, low byte. Constants: c32 rows
    m1, m2, [bias,] m3, zp; s32 [relu,] low, high."""
    m1 = c32[0]
    m2 = c32[1]
    bias = c32[2]
    m3 = c32[2 + has_bias]
    zp = c32[3 + has_bias]
    relu = s32[0]
    low = s32[has_relu]
    high = s32[has_relu + 1]
    group = _group_rows(channels, c32.shape[1])
    for first in range(0, rows, group):
        count = min(group, rows - first) * channels
        acc_rows = acc_block[first * channels:first * channels + count]
        out_rows = dest[first * channels:first * channels + count]
        if has_bias and has_relu:
            for i in range(count):
                v = ((np.float32(np.float64(acc_rows[i])) * m1[i]) * m2[i]) + bias[i]
                v = _max_f32(v, relu) * m3[i] + zp[i]
                q = _round_i32(_min_f32(_max_f32(v, low), high))
                out_rows[i] = np.uint8(q & 0xFF)
        elif has_bias:
            for i in range(count):
                v = ((np.float32(np.float64(acc_rows[i])) * m1[i]) * m2[i]) + bias[i]
                v = v * m3[i] + zp[i]
                q = _round_i32(_min_f32(_max_f32(v, low), high))
                out_rows[i] = np.uint8(q & 0xFF)
        elif has_relu:
            for i in range(count):
                v = (np.float32(np.float64(acc_rows[i])) * m1[i]) * m2[i]
                v = _max_f32(v, relu) * m3[i] + zp[i]
                q = _round_i32(_min_f32(_max_f32(v, low), high))
                out_rows[i] = np.uint8(q & 0xFF)
        else:
            for i in range(count):
                v = (np.float32(np.float64(acc_rows[i])) * m1[i]) * m2[i]
                v = v * m3[i] + zp[i]
                q = _round_i32(_min_f32(_max_f32(v, low), high))
                out_rows[i] = np.uint8(q & 0xFF)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _int_tail_rows(acc_block, rows, channels, dest, c32, i64, kind, term, low_shifted,
                   high_shifted):
    """``INT_TAIL_U8`` (fbgemm, qnnpack, ...): ``v = head(acc)``, ``v = pre(v) * m``,
    ``q = cvtps2dq(v)``, ``clip(q + term, low, high)``, low byte. head (kind // 3): 0
    ``f32(acc)``, 1 ``f32(wrap_int32(acc + k))`` (i64 row 0, qnnpack's int32 bias); pre
    (kind % 3): 0 none, 1 ``fmaf(a, b, v)``, 2 ``v + a``. c32 rows: [a, [b,]] m. The integer
    tail in int32: ``min(max(q + t, low), high) = min(max(q, low - t), high - t) + t`` (also
    when low > high: both give high), every term an int32 (checked by ``_recognise``)."""
    head = kind // 3
    pre = kind % 3
    a = c32[0]
    b = c32[min(1, c32.shape[0] - 1)]  # used only when pre is 1
    m = c32[0 if pre == 0 else (2 if pre == 1 else 1)]
    wrap = i64[0]
    low = np.int32(low_shifted)
    high = np.int32(high_shifted)
    shift = np.int32(term)
    group = _group_rows(channels, c32.shape[1])
    for first in range(0, rows, group):
        count = min(group, rows - first) * channels
        acc_rows = acc_block[first * channels:first * channels + count]
        out_rows = dest[first * channels:first * channels + count]
        if head == 1:
            for i in range(count):
                v = np.float32(np.float64(np.int32(np.int64(acc_rows[i]) + wrap[i])))
                if pre == 2:
                    v = v + a[i]
                q = min(max(_round_i32(v * m[i]), low), high)
                out_rows[i] = np.uint8(np.int32(q + shift) & 0xFF)
        elif pre == 0:
            for i in range(count):
                q = min(max(_round_i32(np.float32(np.float64(acc_rows[i])) * m[i]), low), high)
                out_rows[i] = np.uint8(np.int32(q + shift) & 0xFF)
        elif pre == 1:
            for i in range(count):
                v = _fmaf(a[i], b[i], np.float32(np.float64(acc_rows[i])))
                q = min(max(_round_i32(v * m[i]), low), high)
                out_rows[i] = np.uint8(np.int32(q + shift) & 0xFF)
        else:
            for i in range(count):
                v = np.float32(np.float64(acc_rows[i])) + a[i]
                q = min(max(_round_i32(v * m[i]), low), high)
                out_rows[i] = np.uint8(np.int32(q + shift) & 0xFF)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _run_program(acc, out_bytes, program, c32, c64, i64, s32, block_rows,
                 operand0, strides0, operand1, strides1, operand2, strides2):
    """Run ``program`` over the flat (M * channels) accumulator ``acc``, block by block, into
    ``out_bytes`` (the output's bytes). ``c32``/``c64``/``i64``: per-channel constants tiled
    to ``block_rows`` rows; ``s32``: float32 scalars."""
    channels = c32.shape[1] // block_rows
    total_rows = acc.shape[0] // channels
    block = block_rows * channels
    fval = np.empty(block, np.float32)
    ival = np.empty(block, np.int64)
    for first_row in range(0, total_rows, block_rows):
        rows = min(block_rows, total_rows - first_row)
        start = first_row * channels
        run_block(acc[start:start + rows * channels], rows, first_row, channels, out_bytes,
                  program, c32, c64, i64, s32, fval, ival,
                  operand0, strides0, operand1, strides1, operand2, strides2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def run_block(acc_block, rows, first_row, channels, out_bytes, program, c32, c64, i64, s32,
              fval, ival, operand0, strides0, operand1, strides1, operand2, strides2):
    """Every opcode of ``program`` over one block: ``rows`` (<= the tiling's ``block_rows``)
    accumulator rows ``acc_block`` (flat, rows * channels) of output rows ``first_row...``,
    stored into ``out_bytes`` (the whole output's bytes). ``fval``/``ival``: scratch of at least
    rows * channels values. Callable from other njit functions (the fused GEMM driver)."""
    n = rows * channels
    start = first_row * channels
    first = program[0]
    if first[0] == X86_U8:
        _x86_rows(acc_block, rows, channels, out_bytes[start:start + n], c32, s32, first[1],
                  first[2])
        return
    if first[0] == INT_TAIL_U8:
        _int_tail_rows(acc_block, rows, channels, out_bytes[start:start + n], c32, i64,
                       first[1], first[2], first[3], first[4])
        return
    for step in range(program.shape[0]):
        op = program[step]
        code = op[0]
        if code == LOAD_INT:
            for i in range(n):
                ival[i] = np.int64(acc_block[i])
        elif code == LOAD_FLOAT:
            for i in range(n):
                fval[i] = np.float32(np.float64(acc_block[i]))
        elif code == TO_FLOAT:
            for i in range(n):
                fval[i] = np.float32(np.float64(ival[i]))
        elif code == INT_SCALE_F64:
            k = c64[op[1]]
            for i in range(n):
                fval[i] = np.float32(np.float64(ival[i]) * k[i])
        elif code == ADD_F32:
            k32 = c32[op[1]]
            for i in range(n):
                fval[i] = fval[i] + k32[i]
        elif code == MUL_F32:
            k32 = c32[op[1]]
            for i in range(n):
                fval[i] = fval[i] * k32[i]
        elif code == DIV_F32:
            k32 = c32[op[1]]
            for i in range(n):
                fval[i] = fval[i] / k32[i]
        elif code == ADD_F64:
            k = c64[op[1]]
            for i in range(n):
                fval[i] = np.float32(np.float64(fval[i]) + k[i])
        elif code == MUL_F64:
            k = c64[op[1]]
            for i in range(n):
                fval[i] = np.float32(np.float64(fval[i]) * k[i])
        elif code == DIV_F64:
            k = c64[op[1]]
            for i in range(n):
                fval[i] = np.float32(np.float64(fval[i]) / k[i])
        elif code == FMA_VALUE_ADDEND:
            ka = c32[op[1]]
            kb = c32[op[2]]
            for i in range(n):
                fval[i] = _fmaf(ka[i], kb[i], fval[i])
        elif code == FMA_VALUE_FACTOR:
            ka = c32[op[1]]
            kb = c32[op[2]]
            for i in range(n):
                fval[i] = _fmaf(fval[i], ka[i], kb[i])
        elif code == MAX_F32:
            bound = s32[op[1]]
            for i in range(n):
                v = fval[i]
                fval[i] = v if (v > bound or v != v) else bound
        elif code == MIN_F32:
            bound = s32[op[1]]
            for i in range(n):
                v = fval[i]
                fval[i] = v if (v < bound or v != v) else bound
        elif code == MIN_NAN_HIGH:
            bound = s32[op[1]]
            for i in range(n):
                v = fval[i]
                fval[i] = v if v <= bound else bound
        elif code == LEAKY:
            slope = s32[op[1]]
            for i in range(n):
                v = fval[i]
                fval[i] = v if v > np.float32(0.0) else v * slope
        elif code == ROUND_I32:
            for i in range(n):
                r = _rintf(fval[i])
                fits = (r >= np.float32(-2147483648.0)) & (r < np.float32(2147483648.0))
                ival[i] = np.int32(r if fits else np.float32(-2147483648.0))
        elif code == ROUND_I64:
            nan_value = op[1]
            for i in range(n):
                v = fval[i]
                r = _rint(np.float64(v))
                r = min(max(r, -4611686018427387904.0), 4611686018427387904.0)
                ival[i] = nan_value if v != v else np.int64(r)
        elif code == LRINT:
            for i in range(n):
                w = np.float64(fval[i])
                fits = (w >= -9223372036854775808.0) & (w < 9223372036854775808.0)
                r = np.int64(_rint(w if fits else 0.0))
                ival[i] = r if fits else INT64_MIN
        elif code == ADD_WRAP32:
            k64 = i64[op[1]]
            for i in range(n):
                ival[i] = (((ival[i] + k64[i]) - INT32_MIN) & 0xFFFFFFFF) + INT32_MIN
        elif code == ADD_INT:
            term = op[1]
            for i in range(n):
                ival[i] = ival[i] + term
        elif code == CLAMP_INT:
            low = op[1]
            high = op[2]
            for i in range(n):
                ival[i] = min(max(ival[i], low), high)
        elif code == MUL_INT:
            factor = op[1]
            for i in range(n):
                ival[i] = ival[i] * factor
        elif code == SHIFT_ROUND:
            shift = op[1]
            mask = (np.int64(1) << (shift & 31)) - 1
            half = mask >> 1
            for i in range(n):
                v = ival[i]
                remainder = (v & mask) - (1 if v < 0 else 0)
                if shift < 32:
                    shifted = v >> shift
                elif op[2]:
                    shifted = v >> (shift & 31)
                else:
                    shifted = np.int64(-1) if v < 0 else np.int64(0)
                ival[i] = shifted + (1 if remainder > half else 0)
        elif code >= OPERAND_ADD and code <= SCALED_MULADD:
            slot = op[1]
            if slot == 0:
                _operand_step(op, fval, rows, channels, first_row, operand0,
                              strides0[0], strides0[1], c32, c64, s32)
            elif slot == 1:
                _operand_step(op, fval, rows, channels, first_row, operand1,
                              strides1[0], strides1[1], c32, c64, s32)
            else:
                _operand_step(op, fval, rows, channels, first_row, operand2,
                              strides2[0], strides2[1], c32, c64, s32)
        elif code == LOAD_MUL_F32:
            k32 = c32[op[1]]
            for i in range(n):
                fval[i] = np.float32(np.float64(acc_block[i])) * k32[i]
        elif code == MUL_MUL_F32:
            ka = c32[op[1]]
            kb = c32[op[2]]
            for i in range(n):
                fval[i] = (fval[i] * ka[i]) * kb[i]
        elif code == MUL_ADD_F32:
            ka = c32[op[1]]
            kb = c32[op[2]]
            for i in range(n):
                fval[i] = (fval[i] * ka[i]) + kb[i]
        elif code == ADD_MUL_F32:
            ka = c32[op[1]]
            kb = c32[op[2]]
            for i in range(n):
                fval[i] = (fval[i] + ka[i]) * kb[i]
        elif code == CLAMP_F32:
            low = s32[op[1]]
            high = s32[op[2]]
            for i in range(n):
                v = fval[i]
                v = v if (v > low or v != v) else low
                fval[i] = v if (v < high or v != v) else high
        elif code == ROUND_STORE8:
            dest_bytes = out_bytes[start:start + n]
            for i in range(n):
                r = _rintf(fval[i])
                fits = (r >= np.float32(-2147483648.0)) & (r < np.float32(2147483648.0))
                dest_bytes[i] = np.uint8(np.int32(r if fits else np.float32(-2147483648.0))
                                         & 0xFF)
        elif code == CLAMP_ROUND_STORE8:
            low = s32[op[1]]
            high = s32[op[2]]
            dest_bytes = out_bytes[start:start + n]
            for i in range(n):
                v = fval[i]
                v = v if (v > low or v != v) else low
                v = v if (v < high or v != v) else high
                r = _rintf(v)
                fits = (r >= np.float32(-2147483648.0)) & (r < np.float32(2147483648.0))
                dest_bytes[i] = np.uint8(np.int32(r if fits else np.float32(-2147483648.0))
                                         & 0xFF)
        elif code == ROUND_ADD_CLAMP_STORE8:
            term = op[1]
            low = op[2]
            high = op[3]
            dest_bytes = out_bytes[start:start + n]
            for i in range(n):
                r = _rintf(fval[i])
                fits = (r >= np.float32(-2147483648.0)) & (r < np.float32(2147483648.0))
                q = np.int64(np.int32(r if fits else np.float32(-2147483648.0))) + term
                dest_bytes[i] = np.uint8(min(max(q, low), high) & 0xFF)
        elif code == STORE_INT:
            width = op[1]
            if width == 1:
                dest_out_bytes = out_bytes[start:start + n]
                for i in range(n):
                    dest_out_bytes[i] = np.uint8(ival[i] & 0xFF)
            elif width == 2:
                dest_out_i16 = out_bytes.view(np.int16)[start:start + n]
                for i in range(n):
                    dest_out_i16[i] = np.int16(ival[i])
            elif width == 4:
                dest_out_i32 = out_bytes.view(np.int32)[start:start + n]
                for i in range(n):
                    dest_out_i32[i] = np.int32(ival[i])
            else:
                dest_out_i64 = out_bytes.view(np.int64)[start:start + n]
                for i in range(n):
                    dest_out_i64[i] = ival[i]
        elif code == STORE_F32:
            dest_out_f32 = out_bytes.view(np.float32)[start:start + n]
            for i in range(n):
                dest_out_f32[i] = fval[i]
        elif code == STORE_F64:
            dest_out_f64 = out_bytes.view(np.float64)[start:start + n]
            for i in range(n):
                dest_out_f64[i] = np.float64(fval[i])
        elif code == STORE_INT_F32:
            dest_out_f32 = out_bytes.view(np.float32)[start:start + n]
            for i in range(n):
                dest_out_f32[i] = np.float32(ival[i])
        elif code == STORE_INT_F64:
            dest_out_f64 = out_bytes.view(np.float64)[start:start + n]
            for i in range(n):
                dest_out_f64[i] = np.float64(ival[i])


def _step_classes():
    """Step types defined outside ``requantize`` (imported lazily: engines import numpy only)."""
    from ..engines.dynamic_eager import ScaledMultiplyAddFloat32
    from ..engines.onednn import LeakyReLUFloat32
    return ScaledMultiplyAddFloat32, LeakyReLUFloat32


class _Unsupported(Exception):
    """A step (or a constant of it) the program cannot reproduce exactly."""


class _Builder:
    """Collects opcodes and constants while translating steps."""

    def __init__(self, channels: int):
        self.channels = channels
        self.program: list[list[int]] = []
        self.c32: list[np.ndarray] = []
        self.c64: list[np.ndarray] = []
        self.i64: list[np.ndarray] = []
        self.s32: list[np.float32] = []
        self.operand_steps: list[tuple[int, object]] = []  # (program row, step)

    def emit(self, *fields) -> int:
        self.program.append([int(field) for field in fields] + [0] * (6 - len(fields)))
        return len(self.program) - 1

    def per_channel(self, constant, dtype) -> np.ndarray:
        """``constant`` (scalar, (1,), (N,), (1, N)...) as an (N,) array of ``dtype``, converted
        by NumPy's cast (the one ``apply``'s ufunc makes)."""
        array = np.asarray(constant)
        while array.ndim > 1 and array.shape[0] == 1:
            array = array[0]
        if array.ndim > 1 or (array.ndim == 1 and array.shape[0] not in (1, self.channels)):
            raise _Unsupported(f"constant of shape {np.shape(constant)}")
        return np.broadcast_to(array.astype(dtype), (self.channels,))

    def float32_row(self, constant) -> int:
        self.c32.append(self.per_channel(constant, np.float32))
        return len(self.c32) - 1

    def float64_row(self, constant) -> int:
        self.c64.append(self.per_channel(constant, np.float64))
        return len(self.c64) - 1

    def int64_row(self, constant) -> int:
        if np.result_type(np.zeros(1, np.int64), constant) != np.int64:
            raise _Unsupported(f"integer constant of type {np.asarray(constant).dtype}")
        self.i64.append(self.per_channel(constant, np.int64))
        return len(self.i64) - 1

    def scalar32(self, value) -> int:
        self.s32.append(np.float32(value))
        return len(self.s32) - 1

    def float_constant(self, constant) -> tuple[int, bool]:
        """The row of ``constant`` in the precision ``f32(value op constant)`` computes in:
        ``(row, wide)``, ``wide`` for float64."""
        result = np.result_type(np.zeros(1, np.float32), constant)
        if result == np.float32:
            return self.float32_row(constant), False
        if result == np.float64:
            return self.float64_row(constant), True
        raise _Unsupported(f"float constant computing in {result}")

    def binary(self, constant, narrow_code: int, wide_code: int):
        row, wide = self.float_constant(constant)
        self.emit(wide_code if wide else narrow_code, row)


def _int_scalar(value) -> int:
    """A Python/NumPy integer scalar that int64 arithmetic takes as int64."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _Unsupported(f"integer scalar {value!r}")
    if np.result_type(np.zeros(1, np.int64), value) != np.int64 or \
            not INT64_MIN <= int(value) < (1 << 63):
        raise _Unsupported(f"integer scalar {value!r} outside int64")
    return int(value)


def _translate(step, state: str, builder: _Builder) -> str:
    """Emit the opcodes of ``step`` applied to a value held as ``state`` ("int" or "float");
    returns the state after it."""
    ScaledMultiplyAddFloat32, LeakyReLUFloat32 = _step_classes()
    kind = type(step)
    if kind is rq.ToFloat32:
        if state == "int":
            builder.emit(TO_FLOAT)
        return "float"  # f32 of a float32 value is the identity
    if kind is rq.ScaleToFloat32:
        row = builder.float64_row(step.factor)
        builder.emit(INT_SCALE_F64 if state == "int" else MUL_F64, row)
        return "float"
    if kind is rq.AddInt32:
        _need(state, "int")
        builder.emit(ADD_WRAP32, builder.int64_row(step.term))
        return "int"
    if kind is rq.AddInt:
        _need(state, "int")
        builder.emit(ADD_INT, _int_scalar(step.term))
        return "int"
    if kind is rq.ClampInt:
        _need(state, "int")
        builder.emit(CLAMP_INT, _int_scalar(step.low), _int_scalar(step.high))
        return "int"
    if kind is rq.MultiplyInt:
        _need(state, "int")
        builder.emit(MUL_INT, _int_scalar(step.factor))
        return "int"
    if kind is rq.RoundingShiftRightInt32:
        _need(state, "int")
        shift = _int_scalar(step.shift)
        if shift < 0:
            raise _Unsupported("negative shift")
        builder.emit(SHIFT_ROUND, shift, bool(step.count_modulo_32))
        return "int"
    # Every remaining step takes a float32 value.
    _need(state, "float")
    if kind is rq.MultiplyFloat64:
        builder.emit(MUL_F64, builder.float64_row(step.factor))
    elif kind is rq.AddFloat32:
        builder.binary(step.term, ADD_F32, ADD_F64)
    elif kind is rq.MultiplyFloat32:
        builder.binary(step.factor, MUL_F32, MUL_F64)
    elif kind is rq.DivideFloat32:
        builder.binary(step.divisor, DIV_F32, DIV_F64)
    elif kind is rq.FusedMultiplyAdd:
        builder.emit(FMA_VALUE_ADDEND, builder.float32_row(step.a), builder.float32_row(step.b))
    elif kind is rq.MultiplyAddFloat32:
        if step.fused:
            builder.emit(FMA_VALUE_FACTOR, builder.float32_row(step.factor),
                         builder.float32_row(step.term))
        else:
            builder.binary(step.factor, MUL_F32, MUL_F64)
            builder.binary(step.term, ADD_F32, ADD_F64)
    elif kind is rq.ClampFloat32:
        low, high = np.float32(step.low), np.float32(step.high)
        if not low == -np.inf:  # max(v, -inf) is v (NaN and -inf included)
            builder.emit(MAX_F32, builder.scalar32(low))
        if not high == np.inf:
            builder.emit(MIN_F32, builder.scalar32(high))
    elif kind is rq.MinFloat32:
        builder.emit(MIN_NAN_HIGH, builder.scalar32(step.high))
    elif kind is LeakyReLUFloat32:
        builder.emit(LEAKY, builder.scalar32(step.alpha))
    elif kind is rq.RoundHalfEvenToInt32:
        builder.emit(ROUND_I32)
        return "int"
    elif kind is rq.RoundHalfEvenToInt64:
        builder.emit(ROUND_I64, _int_scalar(step.nan))
        return "int"
    elif kind is rq.RoundHalfEvenLrint:
        builder.emit(LRINT)
        return "int"
    elif kind in (rq.AddOperandFloat32, rq.MultiplyOperandFloat32):
        slot = len(builder.operand_steps)
        code = OPERAND_ADD if kind is rq.AddOperandFloat32 else OPERAND_MUL
        builder.operand_steps.append((builder.emit(code, slot, 0), step))
    elif kind is rq.AddResidualFloat32:
        slot = len(builder.operand_steps)
        row = builder.emit(RESIDUAL, slot, bool(step.fused), builder.scalar32(step.zero_point),
                           builder.scalar32(step.scale))
        builder.operand_steps.append((row, step))
    elif kind is ScaledMultiplyAddFloat32:
        slot = len(builder.operand_steps)
        factor, wide = builder.float_constant(step.factor)
        if step.fused:
            term = builder.float32_row(step.term)
        else:
            term, term_wide = builder.float_constant(step.term)
            if term_wide:
                raise _Unsupported("a float64 bias term")
        row = builder.emit(SCALED_MULADD, slot, bool(step.fused), factor, wide, term)
        builder.operand_steps.append((row, step))
    else:
        raise _Unsupported(f"step type {kind.__name__}")
    if len(builder.operand_steps) > MAX_OPERANDS:
        raise _Unsupported(f"more than {MAX_OPERANDS} run-time operands")
    return "float"


def _need(state: str, wanted: str):
    if state != wanted:
        raise _Unsupported(f"a {wanted} step on a {state} value")


@dataclass(frozen=True, eq=False)
class Epilogue:
    """A compiled requantization: ``run(acc)`` equals ``requantize(acc, steps, out_dtype)``."""

    steps: tuple
    channels: int
    out_dtype: np.dtype
    program: np.ndarray
    c32: np.ndarray
    c64: np.ndarray
    i64: np.ndarray
    s32: np.ndarray
    block_rows: int
    operand_steps: tuple

    def run(self, acc: np.ndarray, out: np.ndarray | None = None,
            operands=None) -> np.ndarray:
        """The (M, channels) ``out_dtype`` result for the (M, channels) int32 (or int64)
        accumulator ``acc``. ``out``: a C-contiguous (M, channels) ``out_dtype`` array to fill.
        ``operands``: one array per run-time operand step, in step order (default: the arrays
        bound to the steps)."""
        acc = np.ascontiguousarray(acc)
        if acc.ndim != 2 or acc.shape[1] != self.channels or acc.dtype not in (np.int32,
                                                                                np.int64):
            raise ValueError(f"the accumulator must be (M, {self.channels}) int32 or int64, got "
                             f"{acc.dtype} {acc.shape}")
        out, program, slots = self.output_for(acc.shape[0], out, operands)
        if out.size:
            _run_program(acc.reshape(-1), out.reshape(-1).view(np.uint8), program, self.c32,
                         self.c64, self.i64, self.s32, self.block_rows, *slots)
        return out

    def output_for(self, rows: int, out: np.ndarray | None = None, operands=None):
        """``(out, program, slots)`` for a run over ``rows`` rows: ``out`` checked (a
        C-contiguous (rows, channels) ``out_dtype`` array) or allocated, and ``_operands``."""
        shape = (rows, self.channels)
        if out is None:
            out = np.empty(shape, self.out_dtype)
        elif out.shape != shape or out.dtype != self.out_dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {self.out_dtype} {shape}")
        return (out,) + self._operands(operands, rows)

    def _operands(self, operands, rows: int) -> tuple[np.ndarray, list]:
        """The program (with each operand step's precision, which depends on the operand's
        dtype) and the kernel's operand slots: (flat array, (row stride, column stride))."""
        if operands is None:
            operands = [step.operand for _, step in self.operand_steps]
        operands = list(operands)
        if len(operands) != len(self.operand_steps):
            raise ValueError(f"{len(self.operand_steps)} operands expected, got {len(operands)}")
        slots = []
        program = self.program
        for (row, step), operand in zip(self.operand_steps, operands):
            if operand is None:
                raise ValueError(f"step {step.label!r} has no operand bound (bind_operand)")
            array, wide = _kernel_operand(step, operand)
            if program[row, 0] in (OPERAND_ADD, OPERAND_MUL) and program[row, 2] != wide:
                program = program.copy()
                program[row, 2] = wide
            slots += _strided(array, rows, self.channels)
        while len(slots) < 2 * MAX_OPERANDS:
            slots += [_NO_OPERAND, _NO_STRIDES]
        return program, slots


_NO_OPERAND = np.zeros(1, np.float32)
_NO_STRIDES = np.zeros(2, np.int64)


def _kernel_operand(step, operand) -> tuple[np.ndarray, int]:
    """``operand`` as the kernel reads it for ``step``, and whether the step computes in
    float64 (AddOperandFloat32/MultiplyOperandFloat32 only)."""
    kind = type(step)
    if kind in (rq.AddOperandFloat32, rq.MultiplyOperandFloat32):
        result = np.result_type(np.zeros(1, np.float32), operand)
        if result not in (np.float32, np.float64):
            raise ValueError(f"operand of step {step.label!r} computes in {result}")
        array = np.asarray(operand)
        if array.dtype not in _NATIVE_OPERANDS:
            array = array.astype(result)  # the cast the ufunc makes
        return array, int(result == np.float64)
    array = np.asarray(operand)
    if array.dtype not in _NATIVE_OPERANDS:
        # AddResidualFloat32: f32(operand); ScaledMultiplyAddFloat32: asarray(operand, float32)
        array = (rq.f32(array) if kind is rq.AddResidualFloat32
                 else np.asarray(array, dtype=np.float32))
    return array, 0


def _strided(array: np.ndarray, rows: int, channels: int) -> list:
    """``array`` (broadcasting to (rows, channels) without growing it) as a flat array with
    element strides."""
    shape = array.shape
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > 2:
        raise ValueError(f"operand of shape {array.shape} does not broadcast to "
                         f"({rows}, {channels})")
    shape = (1,) * (2 - len(shape)) + tuple(shape)
    if shape[0] not in (1, rows) or shape[1] not in (1, channels):
        raise ValueError(f"operand of shape {array.shape} does not broadcast to "
                         f"({rows}, {channels})")
    flat = np.ascontiguousarray(array.reshape(shape)).reshape(-1)
    if not flat.flags.writeable:
        flat = flat.copy()  # one kernel type per dtype: numba types read-only arrays apart
    strides = np.array([shape[1] if shape[0] > 1 else 0, 1 if shape[1] > 1 else 0], np.int64)
    return [flat, strides]


def compile_epilogue(steps, channels: int, out_dtype) -> Epilogue | None:
    """The compiled ``steps`` for accumulators with ``channels`` columns, writing ``out_dtype``;
    None when a step (or its constants, or the final conversion) is not reproduced exactly here
    (use ``requantize``)."""
    out_dtype = np.dtype(out_dtype)
    channels = int(channels)
    if channels < 1:
        return None
    builder = _Builder(channels)
    steps = tuple(steps)
    try:
        state = "int"
        if steps and type(steps[0]) is rq.ToFloat32:
            builder.emit(LOAD_FLOAT)
            state = "float"
            rest = steps[1:]
        else:
            builder.emit(LOAD_INT)
            rest = steps
        for step in rest:
            state = _translate(step, state, builder)
        builder.emit(*_store(state, out_dtype))
    except _Unsupported:
        return None
    whole = _recognise(builder.program, builder.s32)
    if whole is not None:
        builder.program[:] = [whole]
    _fuse_tail(builder.program)
    new_index = _fuse_pairs(builder.program)
    builder.operand_steps = [(new_index[row], step) for row, step in builder.operand_steps]
    block_rows = max(1, BLOCK_ELEMENTS // channels)

    def tiled(rows_of_constants, dtype):
        if not rows_of_constants:
            return np.zeros((1, block_rows * channels), dtype)
        return np.ascontiguousarray(np.tile(np.stack(rows_of_constants), (1, block_rows)))

    return Epilogue(
        steps=steps, channels=channels, out_dtype=out_dtype,
        program=np.array(builder.program, dtype=np.int64),
        c32=tiled(builder.c32, np.float32), c64=tiled(builder.c64, np.float64),
        i64=tiled(builder.i64, np.int64),
        s32=np.array(builder.s32 or [0.0], dtype=np.float32), block_rows=block_rows,
        operand_steps=tuple(builder.operand_steps))


def _fits_int32(*values: int) -> bool:
    return all(INT32_MIN <= value < (1 << 31) for value in values)


def _recognise(program: list[list[int]], scalars: list) -> list[int] | None:
    """The single ``X86_U8`` or ``INT_TAIL_U8`` row doing what the whole (unfused) ``program``
    does, or None. Their kernels read constant rows 0, 1, ... in step order, and their clamps
    take bounds that are not NaN (``scalars``, the s32 values): checked here."""
    codes = [row[0] for row in program]
    if any(np.isnan(value) for value in scalars):
        return None
    if codes[-1:] != [STORE_INT] or program[-1][1] != 1:
        return None

    def rows_in_order(ops, field_counts):
        """The constant indices of ``ops`` (fields 1..count) are 0, 1, 2, ..."""
        indices = [op[1 + k] for op, count in zip(ops, field_counts) for k in range(count)]
        return indices == list(range(len(indices)))

    # x86: ToFloat32, Multiply, Multiply, [Add bias], [Clamp(relu, inf)], Multiply, Add,
    # Clamp(low, high), RoundHalfEvenToInt32 (float32 constants only: no MUL_F64 ...).
    for has_bias in (1, 0):
        for has_relu in (1, 0):
            shape = ([LOAD_FLOAT, MUL_F32, MUL_F32] + [ADD_F32] * has_bias +
                     [MAX_F32] * has_relu + [MUL_F32, ADD_F32, MAX_F32, MIN_F32, ROUND_I32,
                                             STORE_INT])
            if codes != shape:
                continue
            floats = [row for row in program if row[0] in (MUL_F32, ADD_F32)]
            scalars = [row for row in program if row[0] in (MAX_F32, MIN_F32)]
            if rows_in_order(floats, [1] * len(floats)) and \
                    rows_in_order(scalars, [1] * len(scalars)):
                return [X86_U8, has_bias, has_relu, 0, 0, 0]
            return None
    # fbgemm, qnnpack: head, [fma | add], Multiply, RoundHalfEvenToInt32, AddInt, ClampInt.
    if codes[-5:-1] != [MUL_F32, ROUND_I32, ADD_INT, CLAMP_INT]:
        return None
    heads = {(LOAD_FLOAT,): 0, (LOAD_INT, ADD_WRAP32, TO_FLOAT): 1}
    pres = {(): (0, []), (FMA_VALUE_ADDEND,): (1, [2]), (ADD_F32,): (2, [1])}
    body = codes[:-5]
    for head_codes, head in heads.items():
        for pre_codes, (pre, counts) in pres.items():
            if tuple(body) != head_codes + pre_codes:
                continue
            if head == 1 and (pre == 1 or program[1][1] != 0):
                return None  # only the shapes _int_tail_rows has (and i64 row 0)
            floats = program[len(head_codes):-4]
            term = program[-3][1]
            low, high = program[-2][1], program[-2][2]
            if not rows_in_order(floats, counts + [1]) or \
                    not _fits_int32(term, low, high, low - term, high - term):
                return None
            return [INT_TAIL_U8, head * 3 + pre, term, low - term, high - term, 0]
    return None


def _fuse_tail(program: list[list[int]]):
    """The usual integer tail (round, + zero point, clamp, store bytes) as one opcode: the
    same operations per element, one pass over the block instead of four."""
    if len(program) >= 4 and [row[0] for row in program[-4:]] == [
            ROUND_I32, ADD_INT, CLAMP_INT, STORE_INT] and program[-1][1] == 1:
        add, clamp = program[-3], program[-2]
        program[-4:] = [[ROUND_ADD_CLAMP_STORE8, add[1], clamp[1], clamp[2], 0, 0]]


_PAIRS = {(LOAD_FLOAT, MUL_F32): LOAD_MUL_F32, (MUL_F32, MUL_F32): MUL_MUL_F32,
          (MUL_F32, ADD_F32): MUL_ADD_F32, (ADD_F32, MUL_F32): ADD_MUL_F32,
          (MAX_F32, MIN_F32): CLAMP_F32}


def _fuse_pairs(program: list[list[int]]) -> list[int]:
    """Adjacent float32 opcodes as one loop (``LOAD_MUL_F32`` ...), and a clamp, round and byte
    store as one: per element the same operations in the same order; fewer passes. Returns the
    new index of each old row (operand rows are never merged)."""
    fused: list[list[int]] = []
    merged: list[bool] = []  # a row already made of two
    new_index: list[int] = []
    for row in program:
        new_index.append(len(fused) - 1)  # where it merges; corrected below if appended
        if fused and fused[-1][0] == ROUND_I32 and row[0] == STORE_INT and row[1] == 1:
            if len(fused) >= 2 and fused[-2][0] == CLAMP_F32:
                clamp = fused[-2]
                fused[-2:] = [[CLAMP_ROUND_STORE8, clamp[1], clamp[2], 0, 0, 0]]
                merged[-2:] = [True]
            else:
                fused[-1] = [ROUND_STORE8, 0, 0, 0, 0, 0]
                merged[-1] = True
            continue
        code = _PAIRS.get((fused[-1][0], row[0])) if fused and not merged[-1] else None
        if code is None:
            fused.append(list(row))
            merged.append(False)
            new_index[-1] = len(fused) - 1
        elif fused[-1][0] == LOAD_FLOAT:
            fused[-1] = [code, row[1], 0, 0, 0, 0]
            merged[-1] = True
        else:
            fused[-1] = [code, fused[-1][1], row[1], 0, 0, 0]
            merged[-1] = True
    program[:] = fused
    return new_index


def _store(state: str, out_dtype: np.dtype) -> tuple[int, ...]:
    if state == "int":
        if out_dtype.kind in "iu" and out_dtype.itemsize in (1, 2, 4, 8):
            return STORE_INT, out_dtype.itemsize
        if out_dtype == np.float32:
            return (STORE_INT_F32,)
        if out_dtype == np.float64:
            return (STORE_INT_F64,)
    elif out_dtype == np.float32:
        return (STORE_F32,)
    elif out_dtype == np.float64:
        return (STORE_F64,)
    raise _Unsupported(f"a {state} value stored as {out_dtype}")
