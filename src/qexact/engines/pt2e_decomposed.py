"""The ops between PT2E's quantize and dequantize as engines ``inductor`` and ``pt2e_eager`` run
them: ``dequantize -> float32 op -> quantize``, written once where the two share the arithmetic.

PT2E keeps these ops in float32 between ``quantized_decomposed.dequantize_per_tensor`` and
``quantize_per_tensor`` (pytorch torch/ao/quantization/fx/_decomposed.py; engines/pt2e.py)::

    dq(q) = f32(f32(f32(q) - z) * s)          q(x) = clamp(rne(f32(x * f32(1 / s))) + z)

Eager PT2E runs ATen's float32 op between them; Inductor fuses the three into one generated C++
loop (``cpp_fused_dequantize_per_tensor_<op>_quantize_per_tensor``) that computes the same
dequantize and quantize (``static_cast<float>`` of the double literals, ``Vectorized::round``),
built with ``-ffp-contract=off`` (torch/_inductor/cpp_builder.py: no FMA) and using true division
on CPU (torch/_inductor/lowering.py ``div_prim``). Measured bit for bit against torch.compile
(freezing) of X86InductorQuantizer models on AVX512-VNNI (/tmp/p10/inductor/notes.md) and
against eager PT2E (tests/importers/test_pt2e.py):

- ``"binary"``: ``q(f32(dq(a) + dq(b)))``, add+relu ``q(max(f32(dq(a) + dq(b)), 0))``,
  ``q(f32(dq(a) * dq(b)))`` (mul+relu likewise): one rounding per op, exact on both engines
  (ATen's float add/mul, BinaryOpsKernel.cpp, is a single IEEE operation per element; Inductor's
  generated ``a + b`` / ``a * b``);
- ``"clamp"`` (hardtanh, relu6 not fused into a conv): ``q(min(max(dq(x), lo), hi))`` with the
  output keeping the input's qparams equals the integer clamp of the codes to ``q(lo)``, ``q(hi)``
  (``q(dq(x)) = x`` and ``q`` is monotonic): a ``ClampKernel`` with the quantize as bound steps;
- ``"max_pool"``: the max of the dequantized in-bounds taps, quantized with the same qparams, is
  the integer max of the codes (Inductor calls ``quantized.max_pool2d`` on the uint8 codes);
- ``"cat"``: inputs that share the output's qparams (the quantizers give cat one observer) are
  copied;
- ``"avg_pool"`` (``avg_pool_float``): the in-bounds taps summed in row-major order, then
  ``f32(sum / D)`` (a true division; ``D`` the window clipped to the padded extent with
  count_include_pad, else the in-bounds taps, or divisor_override). Inductor starts from the
  first tap and adds padding as +0.0 (torch/_inductor/lowering.py ``_avg_poolnd``), ATen from 0.0
  over the in-bounds taps (aten/src/ATen/native/cpu/AvgPoolKernel.cpp ``cpu_avg_pool2d``): the
  same float32 sums (``0 + v = v``; ``+0.0`` changes only a zero's sign, which quantizes alike);
- ``"adaptive_avg_pool"`` to (1, 1) and ``"mean"`` (``MeanKernel``): Inductor sums each channel
  sequentially from 0.0 in row-major order (``cpp_fused_..._mean_...``, channels as vector
  lanes), then ``f32(sum / N)``; eager ATen computes ``at::sum`` in SumKernel.cpp's cascade order
  (aten/src/ATen/native/cpu/SumKernel.cpp; ``adaptive_avg_pool2d`` to (1, 1) is ``mean((-1, -2),
  keepdim)``, native/AdaptiveAveragePooling.cpp), then ``div_(N)``;
- ``"upsample"`` nearest: a gather, ``src = min(floor(f32(o * f32(in / out))), in - 1)`` (exact
  on both); bilinear (``bilinear_inductor``, ``bilinear_aten``) below.

What is not exact on ``pt2e_eager`` (``inexact`` on the description, ``INEXACT_KERNELS`` for
inspect): the float32 mean follows SumKernel.cpp's cascade order as qexact replays it for an
NCHW-contiguous tensor (AVX2 build, 8 lanes; measured equal), not a channels_last one; ATen's
bilinear upsampling (UpSampleKernel.cpp ``cpu_upsample_linear``) is not reproduced bit for bit
(``ATEN_BILINEAR_INEXACT``: 0.25 % of codes measured off by one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..requantize import (AddFloat32, AddInt, ClampFloat32, ClampInt, MultiplyFloat32,
                          RoundHalfEvenToInt64, Step, ToFloat32)
from ..rounding import f32
from .aten_activations import ClampKernel, InPlacePlacement
from .aten_elementwise import BinaryKernel, BinaryPath, CatKernel
from .aten_pooling import MaxPoolKernel

DECOMPOSED = "pytorch torch/ao/quantization/fx/_decomposed.py"
INDUCTOR = ("torch/_inductor (generated C++: cpp_fused_dequantize_per_tensor_<op>_"
            "quantize_per_tensor; -ffp-contract=off, cpp_builder.py)")


def dequantize_steps(qparams, label: str = "dq") -> tuple[Step, ...]:
    """``f32(f32(f32(q) - z) * s)`` (``dequantize_per_tensor``)."""
    return (ToFloat32(f"{label}: q to float32"),
            AddFloat32(f"{label}: minus the zero point", term=f32(-int(qparams.zero_point))),
            MultiplyFloat32(f"{label}: times f32(s)", factor=f32(qparams.scale)))


def quantize_steps(qparams) -> tuple[Step, ...]:
    """``clamp(rne(f32(x * f32(1 / s))) + z)`` (``quantize_per_tensor``; zero point after
    rounding)."""
    return (MultiplyFloat32("quantize: x * f32(1.0 / s)", factor=f32(1.0 / qparams.scale)),
            RoundHalfEvenToInt64("round half to even", role="round"),
            AddInt("zero point, after rounding", term=int(qparams.zero_point)),
            ClampInt("clamp to [qmin, qmax]", role="output_clamp", low=qparams.dtype.qmin,
                     high=qparams.dtype.qmax))


def _engine_source(engine, aten: str) -> str:
    """Eager PT2E's source: the decomposed converts around ATen's float kernel ``aten`` (engine
    ``inductor`` states its generated loops instead, engines/inductor.py)."""
    return f"{DECOMPOSED}; {aten}"


# --- binary ----------------------------------------------------------------------------------


FLOAT_COMBINES = {"float32 sum": ("f32(a + b)", np.add), "float32 product": ("f32(a * b)",
                                                                             np.multiply)}


@dataclass(frozen=True)
class FloatCombine:
    """A binary kernel's float32 join of its two dequantized inputs (``f32(a + b)`` or
    ``f32(a * b)``, one rounding); the interface of ``aten_elementwise.Combine``."""

    label: str
    kind: str

    @property
    def formula(self) -> str:
        return FLOAT_COMBINES[self.kind][0]

    def apply(self, a, b):
        return f32(FLOAT_COMBINES[self.kind][1](np.asarray(a, np.float32),
                                                np.asarray(b, np.float32)))


@dataclass(frozen=True)
class WholePlacement:
    """Every element of the broadcast output through the one path, the output in C order."""

    def split(self, out_shape, a, b):
        return (np.ones(out_shape, bool),), lambda values: np.ascontiguousarray(values)


def binary_path(op: str, relu: bool, a_qparams, b_qparams, output_qparams) -> BinaryPath:
    """``q(f32(dq(a) op dq(b)))`` with an optional float relu before the quantize."""
    kind = "float32 sum" if op == "add" else "float32 product"
    relu_steps = (ClampFloat32("relu: max(c, 0)", role="relu", low=0.0),) if relu else ()
    return BinaryPath("dequantize, float32 " + op + ", quantize",
                      dequantize_steps(a_qparams, "dq(a)"), dequantize_steps(b_qparams, "dq(b)"),
                      FloatCombine(f"float32 {op}", kind),
                      relu_steps + quantize_steps(output_qparams))


def choose_binary(engine, op: str, relu: bool, a_qparams, b_qparams, output_qparams, a_shape,
                  b_shape, num_threads: int) -> BinaryKernel:
    """add / add_relu / mul / mul_relu between dequantize and quantize (module docstring)."""
    return BinaryKernel(f"dequantize, float32 {op}{'+relu' if relu else ''}, quantize",
                        _engine_source(engine, "aten/src/ATen/native/cpu/BinaryOpsKernel.cpp"),
                        (binary_path(op, relu, a_qparams, b_qparams, output_qparams),),
                        WholePlacement())


# --- clamp, max_pool, cat: integer forms of exact float ops -----------------------------------


def choose_clamp(engine, qparams, low, high) -> ClampKernel:
    """``q(clamp(dq(x), lo, hi))`` as the integer clamp to ``q(lo)``, ``q(hi)`` (module
    docstring)."""
    return ClampKernel("dequantize, float32 clamp, quantize (the codes clamped to q(lo), q(hi))",
                       _engine_source(engine, "aten/src/ATen/native/cpu/TensorCompareKernel.cpp"),
                       quantize_steps(qparams), InPlacePlacement())


def choose_max_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """The integer max of the in-bounds codes (module docstring), or the max of a float32
    tensor."""
    return MaxPoolKernel("max of the in-bounds codes (dequantize, float32 max_pool, quantize)",
                         _engine_source(engine, "aten/src/ATen/native/cpu/MaxPoolKernel.cpp"),
                         "valid", "contiguous")


def choose_cat(engine) -> CatKernel:
    """A copy of inputs that share the output's qparams (module docstring)."""
    return CatKernel("dequantize, cat, quantize (a copy: one shared observer)",
                     _engine_source(engine, "aten cat"), "avx2", 8,
                     general="dequantize, cat, quantize (inputs share the output's qparams)")


# --- float32 kernels between converts: avg_pool, upsample --------------------------------------


@dataclass(frozen=True)
class DecomposedFloatKernel:
    """A kernel that runs in float32 between the engine's ``"dequantize"`` and ``"quantize"``
    (``ops._average.through_float32``): ``function(x, **arguments) -> y`` on float32 NCHW arrays;
    ``inexact``: why its float32 results may differ from the runtime's ("": exact)."""

    name: str
    source: str
    formula: str
    function: Callable[..., np.ndarray]
    inexact: str = ""
    runs_in_float32: bool = True

    def compute(self, x: np.ndarray, **arguments) -> np.ndarray:
        return self.function(np.asarray(x, np.float32), **arguments)


def _windows(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool):
    """PyTorch's pooling windows along one dim (Pool.h ``pooling_output_shape``): starts (may be
    negative), ends clipped to the padded extent ``size + pad``."""
    numerator = size + 2 * pad - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    start = np.arange(out) * stride - pad
    return start, np.minimum(start + kernel, size + pad)


def avg_pool_float(x: np.ndarray, kernel_size, stride, padding, ceil_mode: bool,
                   count_include_pad: bool, divisor_override=None) -> np.ndarray:
    """avg_pool2d on float32 NCHW ``x``: in-bounds taps summed row-major, ``f32(sum / D)``."""
    if x.ndim != 4:
        raise UnsupportedError(f"avg_pool2d expects a 4-D input, got {x.shape}")
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    height, width = x.shape[2:]
    rows, row_ends = _windows(height, kh, sh, ph, ceil_mode)
    cols, col_ends = _windows(width, kw, sw, pw, ceil_mode)
    total = np.zeros(x.shape[:2] + (len(rows), len(cols)), np.float32)
    for dy in range(kh):
        r = rows + dy
        for dx in range(kw):
            c = cols + dx
            inside = ((r >= 0) & (r < height))[:, None] & ((c >= 0) & (c < width))[None, :]
            value = x[:, :, np.clip(r, 0, height - 1)][:, :, :, np.clip(c, 0, width - 1)]
            total = np.where(inside, f32(total + value), total)
    if divisor_override:
        divisor = np.float32(divisor_override)
    elif count_include_pad:
        divisor = f32((row_ends - rows)[:, None] * (col_ends - cols)[None, :])
    else:
        valid_h = np.minimum(row_ends, height) - np.maximum(rows, 0)
        valid_w = np.minimum(col_ends, width) - np.maximum(cols, 0)
        divisor = f32(valid_h[:, None] * valid_w[None, :])
    return f32(total / divisor)


def choose_avg_pool(engine, kernel_size, ceil_mode: bool, dtype, values: np.ndarray):
    """avg_pool2d in float32 between converts (``avg_pool_float``)."""
    if len(kernel_size) != 2:
        raise UnsupportedError(f"avg_pool on engine {engine.name!r} is 2-D only")
    return DecomposedFloatKernel(
        "dequantize, float32 avg_pool2d, quantize",
        _engine_source(engine, "aten/src/ATen/native/cpu/AvgPoolKernel.cpp cpu_avg_pool2d"),
        "y = f32(sum / D), the in-bounds taps summed in row-major order (true division)",
        avg_pool_float)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    scale = f32(np.float32(in_size) / np.float32(out_size))
    index = np.floor(f32(f32(np.arange(out_size)) * scale)).astype(np.int64)
    return np.minimum(index, in_size - 1)


def nearest_float(x: np.ndarray, size, align_corners=None) -> np.ndarray:
    """Nearest upsampling: a gather from ``min(floor(f32(o * f32(in / out))), in - 1)``."""
    return x[:, :, _nearest_index(x.shape[2], size[0])][:, :, :, _nearest_index(x.shape[3],
                                                                                size[1])]


def _source_positions(in_size: int, out_size: int, align_corners: bool):
    """Per output index: ``i0``, ``i1`` and ``lambda`` (float32), as both kernels compute them:
    ``src = o * f32((in-1)/(out-1))`` (align_corners) or ``max(f32(f32(f32(o + 0.5) r) - 0.5), 0)``
    with ``r = f32(in / out)``; ``i0 = trunc(src)``, ``i1 = min(i0 + 1, in - 1)``,
    ``lambda = clamp(f32(src - i0), 0, 1)``."""
    o = np.arange(out_size)
    if align_corners:
        r = f32(np.float32(in_size - 1) / np.float32(out_size - 1)) if out_size > 1 \
            else np.float32(0)
        src = f32(f32(o) * r)
    else:
        r = f32(np.float32(in_size) / np.float32(out_size))
        src = np.maximum(f32(f32(f32(f32(o) + np.float32(0.5)) * r) - np.float32(0.5)),
                         np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    lam = np.clip(f32(src - f32(i0)), np.float32(0), np.float32(1))
    return i0, np.minimum(i0 + 1, in_size - 1), lam


def _corners(x, size, align_corners):
    t, b, lh = _source_positions(x.shape[2], size[0], align_corners)
    l, r, lw = _source_positions(x.shape[3], size[1], align_corners)
    up, down = x[:, :, t], x[:, :, b]
    return up[..., l], up[..., r], down[..., l], down[..., r], lh[:, None], lw


def bilinear_inductor(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """Inductor's bilinear lerps, no FMA: ``top = f32(v00 + f32(f32(v01 - v00) lx))``, bottom
    likewise, ``y = f32(top + f32(f32(bottom - top) ly))``."""
    v00, v01, v10, v11, ly, lx = _corners(x, size, align_corners)
    top = f32(v00 + f32(f32(v01 - v00) * lx))
    bottom = f32(v10 + f32(f32(v11 - v10) * lx))
    return f32(top + f32(f32(bottom - top) * ly))


def bilinear_aten(x: np.ndarray, size, align_corners: bool) -> np.ndarray:
    """ATen's ``cpu_upsample_linear`` (UpSampleKernel.cpp, ``Interpolate``) as read, each
    operation rounded: ``top = f32(f32(v00 w0) + f32(v01 w1))``, bottom likewise,
    ``y = f32(f32(top h0) + f32(bottom h1))``, ``w0 = f32(1 - lx)``. Not bit-exact: 48 % of
    float32 outputs differ from ATen's on random data (FMA contraction and the other variants
    tried do not match either); after the quantize 0.25 % of codes differ (955 of 376,272
    measured)."""
    v00, v01, v10, v11, ly, lx = _corners(x, size, align_corners)
    w0, w1 = f32(np.float32(1) - lx), lx
    h0, h1 = f32(np.float32(1) - ly), ly
    top = f32(f32(v00 * w0) + f32(v01 * w1))
    bottom = f32(f32(v10 * w0) + f32(v11 * w1))
    return f32(f32(top * h0) + f32(bottom * h1))


ATEN_BILINEAR_INEXACT = ("ATen's float32 bilinear upsampling (UpSampleKernel.cpp "
                         "cpu_upsample_linear) is not reproduced bit for bit: qexact rounds each "
                         "operation of its interpolation as read; measured, 48 % of float32 "
                         "outputs and 0.25 % of the quantized codes differ, by one step")


def choose_upsample(engine, mode: str, values: np.ndarray):
    """Nearest (a gather) or bilinear upsampling in float32 between converts."""
    if mode == "nearest":
        return DecomposedFloatKernel(
            "dequantize, nearest upsampling (a gather), quantize",
            _engine_source(engine, "aten/src/ATen/native/cpu/UpSampleKernel.cpp nearest_idx"),
            "y = x[min(floor(f32(o * f32(in / out))), in - 1)]", nearest_float)
    if mode != "bilinear":
        raise UnsupportedError(f"{mode} upsampling on engine {engine.name!r} is not supported")
    return DecomposedFloatKernel(
        "dequantize, ATen float32 upsample_bilinear2d, quantize",
        f"{DECOMPOSED}; aten/src/ATen/native/cpu/UpSampleKernel.cpp cpu_upsample_linear",
        "y = f32(f32(top h0) + f32(bottom h1)), top = f32(f32(v00 w0) + f32(v01 w1))",
        bilinear_aten, inexact=ATEN_BILINEAR_INEXACT)


# --- mean, adaptive_avg_pool to (1, 1) -----------------------------------------------------------


@dataclass(frozen=True)
class MeanKernel:
    """A float32 mean between converts: dequantize, sum each group of ``N`` in ``order``
    (``"sequential"``: from 0.0 in memory order of the logical NCHW tensor; ``"aten cascade"``:
    SumKernel.cpp's order with ``float_vector_lanes``), ``f32(sum / N)``, quantize to the
    output's qparams (the op runs it: ``ops.reduce.float_mean``)."""

    name: str
    source: str
    order: str
    float_vector_lanes: int = 8
    inexact: str = ""
    runs_in_float32: bool = True
    summed_by: Callable[..., np.ndarray] | None = None
    """``order == "inductor"``: ``summed_by(floats, channels_last, threads)`` gives the (N, C)
    sums over the spatial dims of a 4-D tensor (``inductor_spatial_sum``)."""

    @property
    def formula(self) -> str:
        return f"y = f32(sum / N), sum in {self.order} order"


ATEN_MEAN_INEXACT = ("ATen's float32 mean (at::sum in SumKernel.cpp's cascade order, then div_): "
                     "qexact replays the AVX2 build's order for an NCHW-contiguous tensor "
                     "(measured equal on 203 means); a channels_last tensor is summed in another "
                     "order (158 of those 203 float32 means differ), not reproduced")


def inductor_spatial_sum(floats: np.ndarray, channels_last: bool, threads: int) -> np.ndarray:
    """The (N, C) float32 sums over H x W of Inductor's generated mean loop (torch/_inductor/
    codegen/cpp.py; measured on torch.compile with 1 to 4 threads, 0 of 11,655 sums differ per
    path; ``p = h W + w``, every add rounded to float32, no FMA):

    - H W < 8: unrolled, ``((v0 + v1) + v2) + ...`` (no leading 0.0);
    - NCHW contiguous: vectorised along H W, lane ``l`` of 16 sums ``v[16 k + l]`` from 0.0 (the
      tail masked into lanes 0..t-1), then ``f32(0 + tree)``, the tree of at::vec's
      ``vec_reduce_all`` (lanes l and l ^ 8, then ^ 4, ^ 2, ^ 1);
    - channels_last (a conv's output): each (n, c) from 0.0 in order, unless the reduction loop
      itself is split between the ``threads`` (``torch.get_num_threads()`` when the compiled model
      runs): when ``N C H W // threads >= 512`` (``config.cpp.min_chunk_size``), ``N (C // 16)
      300 < H W`` (the parallel loop moves to the reduction), and the loop is not fused with its
      consumer (assumed fused where N = 1, C >= 4 and ``C 300 >= H W``). Thread ``i`` sums its
      static chunk of p from 0.0 (``q = HW // T``, the first ``HW % T`` threads one more), and
      the partial sums are added to 0.0 in thread order."""
    n, c, h, w = floats.shape
    size = h * w
    if size > 4096 or n * c == 1:
        raise UnsupportedError(
            f"a mean over {size} positions of {n * c} channel(s) on engine 'inductor': Inductor "
            "then sums in a cascade (over 4096) or in a reduction-only kernel, not modelled")
    v = np.asarray(floats, np.float32).reshape(n, c, size)
    if size < 8:
        total = v[:, :, 0]
        for p in range(1, size):
            total = f32(total + v[:, :, p])
        return total
    if not channels_last:
        lanes = np.zeros((n, c, 16), np.float32)
        whole, tail = divmod(size, 16)
        for k in range(whole):
            lanes = f32(lanes + v[:, :, 16 * k:16 * (k + 1)])
        if tail:
            lanes[:, :, :tail] = f32(lanes[:, :, :tail] + v[:, :, 16 * whole:])
        lane = np.arange(16)
        for step in (8, 4, 2, 1):
            lanes = f32(lanes + lanes[:, :, lane ^ step])
        return f32(np.float32(0) + lanes[:, :, 0])
    fused = n == 1 and c >= 4 and not c * 300 < size
    split = (threads >= 2 and (n * c * size) // threads >= 512 and n * (c // 16) * 300 < size
             and not fused)
    chunks = [(0, size)]
    if split:
        share, extra = divmod(size, threads)
        starts = [i * share + min(i, extra) for i in range(threads + 1)]
        chunks = list(zip(starts[:-1], starts[1:]))
    total = np.zeros((n, c), np.float32)
    for start, end in chunks:
        part = np.zeros((n, c), np.float32)
        for p in range(start, end):
            part = f32(part + v[:, :, p])
        total = f32(total + part)
    return total


ATEN_MEAN = MeanKernel("dequantize, ATen float32 mean (cascade sum, div_), quantize",
                       f"{DECOMPOSED}; aten/src/ATen/native/cpu/SumKernel.cpp, ReduceOps.cpp "
                       "mean_out", "aten cascade", 8, inexact=ATEN_MEAN_INEXACT)


def choose_mean(engine, dim, reduced, out_shape, dtype, values: np.ndarray) -> MeanKernel:
    """``mean(dim, keepdim)`` in float32 between converts."""
    return ATEN_MEAN


def choose_adaptive_avg_pool(engine, in_sizes, out_sizes, dtype, values: np.ndarray):
    """adaptive_avg_pool2d to (1, 1): the spatial mean; other sizes are refused."""
    if tuple(out_sizes) != (1, 1) or len(in_sizes) != 2:
        raise UnsupportedError(f"adaptive_avg_pool to {tuple(out_sizes)} on engine "
                               f"{engine.name!r}: only output size (1, 1) (a mean) is supported")
    return ATEN_MEAN


INEXACT_KERNELS = {"mean": ATEN_MEAN_INEXACT, "adaptive_avg_pool": ATEN_MEAN_INEXACT,
                   "upsample bilinear": ATEN_BILINEAR_INEXACT}
"""Engine ``pt2e_eager``'s families that are not bit-exact (``Engine.inexact_kernels``)."""

KERNELS: dict = {"binary": choose_binary, "clamp": choose_clamp, "max_pool": choose_max_pool,
                 "cat": choose_cat, "avg_pool": choose_avg_pool, "upsample": choose_upsample,
                 "mean": choose_mean, "adaptive_avg_pool": choose_adaptive_avg_pool}
"""The families of eager PT2E (``Engine.kernels``); engine ``inductor`` takes them with its
generated loops' sources and states where its loops differ (engines/inductor.py)."""
