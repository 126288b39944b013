"""ATen's float32 kernels of transformer models (GELU, softmax, log_softmax), which FX-converted
models run between a dequantize and a quantize, and ATen's quantized softmax.

Families of the kernel table (``KERNELS``; ``Engine.kernel(family, ...)``):

- ``"gelu"``: ``choose_gelu(engine, approximate, num_threads, library) -> ActivationKernel``
  (the description classes of ``engines.aten_activations``): which code path runs each element;
- ``"softmax"``: ``choose_softmax(engine, log) -> SoftmaxKernel``;
- ``"quantized_softmax"``: ``choose_quantized_softmax(engine, input_qparams, output_qparams)
  -> QuantizedSoftmaxKernel``.

All measured against torch 2.13.0 on an AVX512 CPU (ATen capability AVX512; tests/ops/
test_gelu.py, test_softmax.py).

GELU (pytorch aten/src/ATen/native/Activation.cpp ``gelu_out_cpu``): with oneDNN enabled
(``torch.backends.mkldnn``, the default) a contiguous float32 tensor of more than one element
with ``approximate='none'`` goes to oneDNN's ``eltwise_gelu_erf``; its AVX512 JIT code evaluates
a piecewise degree-5 minimax polynomial in ``|x|`` (25 pieces chosen from the bits of ``|x|``;
oneDNN src/cpu/x64/injectors/jit_uni_eltwise_injector.cpp
``gelu_erf_minimax_approx_compute_vector_fwd``, oneDNN 3.12 in torch 2.13). Everything else runs
ATen's ``GeluKernelImpl`` (aten/src/ATen/native/cpu/Activation.cpp), whose AVX512 build runs on
an AVX512 CPU (measured: SIMD body in units of 32 floats; AVX2: 16) over ``cpu_kernel_vec`` with
its own grain (``numel / threads`` above 16384 elements)::

    erf   SIMD body:   y = f32(f32(x * 0.5) * f32(1 + aten_erf(f32(x * M_SQRT1_2))))
          scalar tail: y = f32(f32(x * 0.5) * f32(1 + glibc_erff(f32(x * M_SQRT1_2))))
    tanh  u = fmaf(0.044715, f32(f32(x*x)*x), x)          (GCC contracts the mul and add)
          y = f32(f32(0.5 * x) * f32(1 + tanh(f32(kBeta * u))))   SLEEF tanhf / glibc tanhf

``aten_erf`` is ``Vectorized<float>::erf`` (aten/src/ATen/cpu/vec/vec512/vec512_float.h: the
Abramowitz-Stegun 7.1.26 form with FMAs and SLEEF ``expf``).

softmax / log_softmax (aten/src/ATen/native/cpu/SoftMaxKernel.cpp, AVX512 build on an AVX512
CPU, measured: 16-lane reductions): along the last dim (``_vec_softmax_lastdim``,
``_vec_log_softmax_lastdim``) every element goes through ``Vectorized<float>`` code: the max
and the sum by ``vec::reduce_all`` (``reduce_order``), ``exp`` = SLEEF ``expf`` u10, softmax
multiplies by ``f32(1 / sum)``, log_softmax computes ``f32(f32(x - max) - sleef_logf(sum))``.
Along another dim (``_vec_softmax``, ``_vec_logsoftmax``) the reduction runs down the dim for
each inner index (max by ``x > max ? x : max``, the sum in dim order); the last ``inner % 16``
inner indices of each outer index take the scalar code (glibc ``expf``), the others the
vectorized code (SLEEF ``expf``); softmax divides by the sum, log_softmax subtracts
``sleef_logf(sum)`` (``vec::map``: SLEEF for all). The threads do not change any result (each
row, or column block, is one thread's).

Quantized softmax (aten/src/ATen/native/quantized/cpu/qsoftmax.cpp): when the quantized engine
is QNNPACK and the output is ``(1/256, 0)`` (the fixed qparams FX gives softmax), QNNPACK's
softargmax operator runs (``qsoftmax_qnnpack``: integer lookup table, qnnpack/src/softargmax.c
and u8lut32norm); otherwise ``quantize(softmax(dequantize(q)))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..float_math import (_fma, _from_bits, glibc_erff, glibc_expf, glibc_tanhf, sleef_expf_u10,
                          sleef_logf_u10, sleef_tanhf_u10)
from ..rounding import f32
from .aten import GRAIN_SIZE, VECTOR_LANES_FLOAT, ElementwiseNumerics, layout_simd_mask
from .aten_activations import ActivationKernel, ActivationPath, FloatFunction, _like_input

_F = np.float32
_ONE, _HALF = np.float32(1.0), np.float32(0.5)
ACTIVATION_SOURCE = "pytorch aten/src/ATen/native/cpu/Activation.cpp GeluKernelImpl"
SOFTMAX_SOURCE = "pytorch aten/src/ATen/native/cpu/SoftMaxKernel.cpp"
LIBRARY_GELU_SOURCE = ("oneDNN src/cpu/x64/injectors/jit_uni_eltwise_injector.cpp "
                       "gelu_erf_minimax_approx_compute_vector_fwd (via pytorch "
                       "aten/src/ATen/native/Activation.cpp gelu_out_cpu)")

GELU_MIN_ELEMENTS_FOR_MULTI_THREADING = 16384
"""``GeluKernelImpl``: above this many elements its grain is ``numel / threads``."""

KERNEL_CAPABILITY = {"avx512": "avx512", "avx2": "avx2"}
"""The build of ``GeluKernelImpl`` and of the softmax kernels at each ATen capability: both
have AVX512 builds (measured: GELU's SIMD body in units of 32 floats, softmax's reductions in
16 lanes); the ``default`` build (scalar ``Vectorized``) is not described."""


def _capability(engine, what: str) -> str:
    capability = KERNEL_CAPABILITY.get(engine.aten_capability)
    if capability is None:
        raise UnsupportedError(f"{what} at ATen capability {engine.aten_capability!r} is not "
                               f"supported; supported: {sorted(KERNEL_CAPABILITY)}")
    return capability


# --- GELU -------------------------------------------------------------------------------------

GELU_ERF_MINIMAX = np.array((
    (0xa6f2cb94, 0x32827792, 0x3381cc0c, 0x34523d4a, 0x351ac44d, 0x35f36d88, 0x36ee8229,
     0x37b8a3bb, 0x3867a213, 0x3940033b, 0x3a2a5a1d, 0x3ae35863, 0x3b7828f2, 0x3c08b14b,
     0x3c515ed3, 0xbb503236, 0xbd8d8e5e, 0xbe8abcd9, 0xbf0c19a2, 0xbeccb328, 0x3e176ced,
     0x3f470d99, 0x3f7abb28, 0x3f800000, 0x00000000),
    (0x3f4c422a, 0x3f4c421f, 0x3f4c4207, 0x3f4c41cb, 0x3f4c413b, 0x3f4c3fad, 0x3f4c3a2f,
     0x3f4c2d40, 0x3f4c146a, 0x3f4bc341, 0x3f4ad08c, 0x3f48f8cf, 0x3f45fac7, 0x3f404e07,
     0x3f3b980f, 0x3f48dff3, 0x3f78b21b, 0x3fbb0704, 0x40019c32, 0x3fe536d6, 0x3f81331e,
     0x3e6c8684, 0x3c98f936, 0x00000000, 0x3f800000),
    (0xb62173f4, 0x3735e4cf, 0x37f2ff89, 0x388c23be, 0x3917535c, 0x39ab2ab0, 0x3a60fadb,
     0x3af9b960, 0x3b6e5491, 0x3c0a4ec5, 0x3ca5aa8c, 0x3d2138d9, 0x3d8737d4, 0x3ddfb660,
     0x3e0f27ab, 0x3d94004b, 0xbe0efdeb, 0xbf1d96c3, 0xbf89db58, 0xbf6d9897, 0xbef69fb8,
     0xbdc4f8a8, 0xbbde6422, 0x00000000, 0x00000000),
    (0xbe081a19, 0xbe084570, 0xbe08639b, 0xbe089837, 0xbe08f409, 0xbe09ab95, 0xbe0b66d0,
     0xbe0e400a, 0xbe124df8, 0xbe1bde02, 0xbe2f19c9, 0xbe4931bf, 0xbe685fbc, 0xbe89c95f,
     0xbe96cbca, 0xbe8044aa, 0xbe0550f2, 0x3dcfd6a1, 0x3e94c826, 0x3e79345f, 0x3decec91,
     0x3ca46568, 0x3aa1e00a, 0x00000000, 0x00000000),
    (0xba3d61db, 0x39f097a3, 0x3a5845dc, 0x3ab1fa35, 0x3b0cefb8, 0x3b653ab6, 0x3bcae527,
     0x3c221712, 0x3c6c5840, 0x3cc0a703, 0x3d1dcc19, 0x3d63656d, 0x3d955907, 0x3dbf9910,
     0x3dd53f69, 0x3db7dcef, 0x3d639ebe, 0xba6ede48, 0xbd22be69, 0xbd041cf1, 0xbc64f5ab,
     0xbb097a32, 0xb8ebf380, 0x00000000, 0x00000000),
    (0x3cb7d80c, 0x3c9b6050, 0x3c978d11, 0x3c92e850, 0x3c8d058b, 0x3c848454, 0x3c6cd623,
     0x3c4c824b, 0x3c2a7935, 0x3be0b390, 0x3b0651ac, 0xbb232f53, 0xbbd42fa0, 0xbc2c5366,
     0xbc492c9e, 0xbc2a7aa6, 0xbbd55d04, 0xba823a76, 0x3b102aa8, 0x3ae25a7e, 0x3a31f792,
     0x38b84375, 0x3689bb5a, 0x00000000, 0x00000000)), dtype=np.uint32)
"""oneDNN ``gelu_erf_minimax_polynomial``: the bits of the coefficients of degree 0..5 (rows)
of the 25 pieces (columns; the table's zero padding to 32 dropped)."""

_GELU_ERF_IDX_BIAS = 0xC21FFFFF
_GELU_ERF_RBOUND = 0x40B15CEE


def library_gelu_erf(x) -> np.ndarray:
    """oneDNN's AVX512 ``gelu_erf`` (``gelu_erf_minimax_approx_compute_vector_fwd``):

        a = |x|;  i = clamp(int32(bits(a) + 0xc21fffff) >> 21, 1, 24);  i = a > 5.5425 ? 23 : i
        p = fma(...fma(fma(c5[i], a, c4[i]), a, c3[i])..., a, c0[i])     (Horner, FMAs)
        y = f32(f32(x * f32(copysign(p, x) + 1)) * 0.5)
    """
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.int64)
    positive_bits = bits & 0x7FFFFFFF
    positive = _from_bits(positive_bits)
    index = (positive_bits + _GELU_ERF_IDX_BIAS) & 0xFFFFFFFF
    index = np.where(index >= 2 ** 31, index - 2 ** 32, index) >> 21  # vpsrad: arithmetic
    index = np.clip(index, 1, 24)
    with np.errstate(invalid="ignore"):
        index = np.where(_from_bits(_GELU_ERF_RBOUND) < positive, 23, index)
    coefficients = GELU_ERF_MINIMAX.view(np.float32)
    with np.errstate(all="ignore"):
        poly = coefficients[5][index]
        for degree in range(4, -1, -1):
            poly = _fma(poly, positive, coefficients[degree][index])
        poly = _from_bits(poly.view(np.uint32).astype(np.int64) ^ (bits & 0x80000000))
        return f32(f32(x * f32(poly + _ONE)) * _HALF)


def aten_erf(x) -> np.ndarray:
    """``Vectorized<float>::erf`` (vec512_float.h / vec256_float.h, one arithmetic):
    ``t = f32(1 / fmaf(0.3275911, |x|, 1))``, ``r = fma Horner of p5..p1 in t``,
    ``e = sleef_expf(-f32(x*x))``, ``erf = copysign(fmaf(f32(-e * t), r, 1), x)``."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):
        sign = x.view(np.uint32).astype(np.int64) & 0x80000000
        t = f32(_ONE / _fma(_F(0.3275911), np.abs(x), _ONE))
        r = _fma(_F(1.061405429), t, _F(-1.453152027))
        for c in (1.421413741, -0.284496736, 0.254829592):
            r = _fma(r, t, _F(c))
        e = sleef_expf_u10(-f32(x * x))
        y = _fma(f32(-e * t), r, _ONE)
        return _from_bits(y.view(np.uint32).astype(np.int64) ^ sign)


_SQRT1_2 = np.float32(math.sqrt(0.5))
_KBETA = np.float32(math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5)
_KKAPPA = np.float32(0.044715)


def gelu_erf(x, erf: Callable) -> np.ndarray:
    """``x * 0.5 * (1 + erf(x * M_SQRT1_2))``, left to right in float32."""
    with np.errstate(all="ignore"):
        return f32(f32(x * _HALF) * f32(_ONE + erf(f32(x * _SQRT1_2))))


def gelu_tanh(x, tanh: Callable) -> np.ndarray:
    """``0.5 * x * (1 + tanh(kBeta * (x + kKappa * x^3)))`` with the add contracted into an
    FMA (GCC ``-ffp-contract=fast``; measured: without it 31 of 7584 elements differ)."""
    with np.errstate(all="ignore"):
        inner = f32(_KBETA * _fma(_KKAPPA, f32(f32(x * x) * x), x))
        return f32(f32(_HALF * x) * f32(_ONE + tanh(inner)))


GELU_LAMBDAS = {
    "none": ((partial(gelu_erf, erf=aten_erf),
              "y = f32(f32(x * 0.5) * f32(1 + aten_erf(f32(x * M_SQRT1_2))))  "
              "(Vectorized<float>::erf, SLEEF expf)"),
             (partial(gelu_erf, erf=glibc_erff),
              "y = f32(f32(x * 0.5) * f32(1 + glibc_erff(f32(x * M_SQRT1_2))))  (std::erf)")),
    "tanh": ((partial(gelu_tanh, tanh=sleef_tanhf_u10),
              "y = f32(f32(0.5 x) * f32(1 + sleef_tanhf(f32(kBeta * fmaf(kKappa, x^3, x)))))"),
             (partial(gelu_tanh, tanh=glibc_tanhf),
              "y = f32(f32(0.5 x) * f32(1 + glibc_tanhf(f32(kBeta * fmaf(kKappa, x^3, x)))))")),
}
"""approximate -> (SIMD lambda, scalar lambda) of ``GeluKernelImpl``: (function, formula)."""


@dataclass(frozen=True)
class GeluPlacement:
    """Which path computes each element of a GELU call: the library path (oneDNN) when
    ``library`` and the input is C-contiguous with more than one element; otherwise
    ``GeluKernelImpl``'s SIMD body and scalar tail over TensorIterator's walk
    (``aten.layout_simd_mask``) with GELU's grain (``numel / threads`` above 16384
    elements). The output: contiguous (library) or with the input's strides."""

    capability: str
    num_threads: int
    library: bool

    def split(self, values: np.ndarray):
        none = np.zeros(values.shape, bool)
        if self.library and values.size > 1 and values.flags.c_contiguous:
            return (~none, none, none), np.ascontiguousarray
        grain = GRAIN_SIZE
        if values.size > GELU_MIN_ELEMENTS_FOR_MULTI_THREADING and self.num_threads > 1:
            grain = values.size // self.num_threads
        numerics = ElementwiseNumerics(self.capability, VECTOR_LANES_FLOAT[self.capability],
                                       grain_size=grain)
        simd = layout_simd_mask(numerics, values.shape, [values], self.num_threads)
        return (none, simd, ~simd), _like_input(values)


def _library_gelu_path(engine, approximate: str):
    """The oneDNN path (``approximate='none'`` only), or None."""
    if approximate != "none":
        return None
    if engine.aten_capability == "avx512":
        return ActivationPath("oneDNN eltwise_gelu_erf (AVX512 JIT, minimax polynomial)", (),
                              FloatFunction("y = f32(f32(x * f32(copysign(P_i(|x|), x) + 1)) "
                                            "* 0.5)  (P_i: minimax piece i)", library_gelu_erf),
                              ())
    why = engine.inexact_kernel(
        "gelu", f"GELU on float32 with oneDNN at ATen capability {engine.aten_capability!r}: "
        "oneDNN's non-AVX512 gelu_erf (Abramowitz-Stegun with its own exp) is not reproduced; "
        "disable oneDNN (torch.backends.mkldnn.enabled = False) to run ATen's kernel")
    return ActivationPath(f"oneDNN eltwise_gelu_erf (inexact: {why})", (),
                          FloatFunction("y = x * 0.5 * (1 + erf(x / sqrt(2)))  (ATen's SIMD "
                                        "formula, inexact)", GELU_LAMBDAS["none"][0][0]), ())


def choose_gelu(engine, approximate: str, num_threads: int, library: bool) -> ActivationKernel:
    """GELU on float32 (``approximate`` ``"none"`` or ``"tanh"``) at the engine's ATen
    capability; ``library``: whether PyTorch had oneDNN enabled (``torch.backends.mkldnn``),
    which takes contiguous tensors of ``approximate='none'``."""
    if approximate not in GELU_LAMBDAS:
        raise UnsupportedError(f"gelu approximate={approximate!r} is not supported; supported: "
                               f"{sorted(GELU_LAMBDAS)}")
    capability = _capability(engine, "float32 GELU")
    unit = VECTOR_LANES_FLOAT[capability] * 2
    library_path = _library_gelu_path(engine, approximate) if library else None
    simd, tail = GELU_LAMBDAS[approximate]
    paths = (library_path or ActivationPath("oneDNN (not used)", (),
                                            FloatFunction("", lambda x: x), ()),
             ActivationPath(f"SIMD body ({capability}, units of {unit})", (),
                            FloatFunction(simd[1], simd[0]), ()),
             ActivationPath("scalar tail (the scalar lambda)", (),
                            FloatFunction(tail[1], tail[0]), ()))
    return ActivationKernel(f"ATen GeluKernelImpl ({capability})"
                            + (" / oneDNN gelu_erf" if library_path else ""),
                            ACTIVATION_SOURCE + ("; " + LIBRARY_GELU_SOURCE if library_path
                                                 else ""), paths,
                            GeluPlacement(capability, int(num_threads), library_path is not None))


# --- softmax / log_softmax -------------------------------------------------------------------


@dataclass(frozen=True)
class SoftmaxKernel:
    """ATen's float32 softmax (``log`` False) or log_softmax: ``lanes`` of ``Vectorized<float>``
    in the build that runs (16 AVX512, 8 AVX2), the SIMD ``exp`` (SLEEF), the scalar ``exp``
    of the non-last-dim kernel's tail (glibc), and ``log`` (SLEEF, every element)."""

    name: str
    source: str
    log: bool
    lanes: int
    exp: Callable = sleef_expf_u10
    scalar_exp: Callable = glibc_expf
    logarithm: Callable = sleef_logf_u10


def choose_softmax(engine, log: bool) -> SoftmaxKernel:
    """``softmax_lastdim_kernel`` / ``softmax_kernel`` (or the log_softmax ones) at the
    engine's ATen capability (their AVX512 build on an AVX512 CPU)."""
    capability = _capability(engine, "float32 softmax")
    lanes = VECTOR_LANES_FLOAT[capability]
    kind = "log_softmax" if log else "softmax"
    return SoftmaxKernel(f"ATen {kind} ({capability}, {lanes} lanes)",
                         f"{SOFTMAX_SOURCE} _vec_{kind}_lastdim, _vec_{kind.replace('_', '')}",
                         bool(log), lanes,
                         logarithm=partial(sleef_logf_u10, avx512=capability == "avx512"))


def reduce_all(values: np.ndarray, combine: Callable, lanes: int) -> np.ndarray:
    """``vec::reduce_all`` over the last axis of ``values`` (rows, n) (aten/src/ATen/cpu/vec/
    functional_base.h): ``n < lanes``: lane by lane, left to right; else one accumulator vector
    over whole vectors, the last partial vector combined into its first lanes only
    (``Vec::set``), then ``vec_reduce_all``'s shuffle tree (lane i with lane i ^ h, h = lanes/2
    .. 1), lane 0."""
    n = values.shape[-1]
    if n < lanes:
        acc = values[..., 0]
        for i in range(1, n):
            acc = combine(acc, values[..., i])
        return acc
    acc = values[..., :lanes].copy()
    full = n - n % lanes
    for start in range(lanes, full, lanes):
        acc = combine(acc, values[..., start:start + lanes])
    if n > full:
        acc[..., :n - full] = combine(acc[..., :n - full], values[..., full:])
    half = lanes // 2
    while half >= 1:
        acc = combine(acc, acc[..., np.arange(lanes) ^ half])
        half //= 2
    return acc[..., 0]


def column_segments(outer: int, size: int, inner: int, lanes: int, num_threads: int,
                    flat: bool = True):
    """How ``_vec_softmax`` / ``_vec_logsoftmax`` (softmax along a dim that is not the last)
    cut the (outer, inner) columns into runs, each run's first ``len - len % lanes`` columns
    vectorized and the rest scalar: ``(outer index, start, stop)`` triples.

    Measured on torch 2.13 (1, 2 and 4 threads; not in the 2.x sources read): softmax
    (``flat``) with more than one thread cuts the flat ``outer * inner`` range into pieces of
    ``ceil(outer * inner / threads)`` columns (a piece split at each outer boundary);
    log_softmax, and softmax on one thread, take each outer index in blocks of
    ``max(131072 / size / 4, lanes)`` rounded down to ``lanes`` (``CHUNK_SIZE``), so only its
    last ``inner % lanes`` columns are scalar."""
    segments = []
    if flat and num_threads > 1:
        total = outer * inner
        piece = -(-total // num_threads)
        for begin in range(0, total, piece):
            end = min(total, begin + piece)
            while begin < end:
                row, start = divmod(begin, inner)
                stop = min(inner, start + end - begin)
                segments.append((row, start, stop))
                begin += stop - start
        return segments
    block = max(131072 // size // 4, lanes) // lanes * lanes
    for row in range(outer):
        for start in range(0, inner, block):
            segments.append((row, start, min(inner, start + block)))
    return segments


# --- quantized softmax -------------------------------------------------------------------------

LOOKUP_OUTPUT = (1.0 / 256, 0)
"""``kQnnpackScale``, ``kQnnpackZeroPoint``: the output qparams QNNPACK's softargmax requires."""


@dataclass(frozen=True)
class QuantizedSoftmaxKernel:
    """``quantized::softmax``: ``lookup`` True runs QNNPACK's softargmax (integer; needs
    quint8), else ``float_kernel`` between ATen's dequantize and quantize. ``input_scale``:
    the float32 input scale the lookup table is built from."""

    name: str
    source: str
    lookup: bool
    float_kernel: SoftmaxKernel | None
    input_scale: float = 1.0


def lookup_table(input_scale: float, channels: int) -> np.ndarray:
    """QNNPACK ``pytorch_qnnp_create_softargmax_nc_q8``: for i in 0..255
    ``t[i] = (uint32) lrint(qscale * exp((double)(i - 255) * (double)s))`` with
    ``qscale = fmin(UINT32_MAX / channels, 8388607.0)`` and ``s`` the float32 input scale;
    ``exp`` is the C library's (``math.exp``: this machine's libm, as QNNPACK calls it)."""
    qscale = min(float(2 ** 32 - 1) / float(channels), 8388607.0)
    scale = float(np.float32(input_scale))
    values = np.array([qscale * math.exp(float(i - 255) * scale) for i in range(256)])
    return np.rint(values).astype(np.int64)


def choose_quantized_softmax(engine, input_qparams, output_qparams) -> QuantizedSoftmaxKernel:
    """ATen's ``qsoftmax``: QNNPACK's softargmax when the quantized engine is QNNPACK
    (``at::globalContext().qEngine()``, which ATen tests itself) and the output qparams are
    ``(1/256, 0)``; otherwise dequantize, float softmax, quantize."""
    if (engine.name == "qnnpack" and not output_qparams.is_per_channel
            and float(output_qparams.scale) == LOOKUP_OUTPUT[0]
            and int(output_qparams.zero_point) == LOOKUP_OUTPUT[1]):
        if input_qparams.dtype.name != "quint8":
            raise UnsupportedError("quantized softmax through QNNPACK's softargmax takes quint8 "
                                   f"inputs (PyTorch fails on {input_qparams.dtype.name})")
        return QuantizedSoftmaxKernel(
            "QNNPACK softargmax (u8rmax, u8lut32norm)",
            "pytorch aten/src/ATen/native/quantized/cpu/qsoftmax.cpp qsoftmax_qnnpack; "
            "qnnpack/src/softargmax.c, u8lut32norm/scalar.c", True, None,
            float(input_qparams.scale))
    return QuantizedSoftmaxKernel(
        "ATen qsoftmax: dequantize, float softmax, quantize",
        "pytorch aten/src/ATen/native/quantized/cpu/qsoftmax.cpp", False,
        choose_softmax(engine, False))


KERNELS: dict = {"gelu": choose_gelu, "softmax": choose_softmax,
                 "quantized_softmax": choose_quantized_softmax}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
