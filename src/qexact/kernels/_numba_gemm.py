"""Exact u8 x s8 -> int32 GEMM kernels in numba, one per instruction sequence an engine uses.

``gemm_u8s8(x, packed, method)`` returns the *raw* dot product ``sum_k x[m, k] * w[n, k]`` (uint8
activations, int8 weights, both as stored) computed the way the named instruction computes it;
``accumulate_u8s8`` adds the zero-point corrections, giving the centered accumulator of
docs/arithmetic.md eq. 5. The NumPy path (``qexact.accumulate``) is the definition; these kernels
are equal to it for every input, for the reasons below (``tests/kernels/test_numba_gemm.py``).

Methods and why each is exact
-----------------------------
``"vnni"`` (AVX512-VNNI, ``vpdpbusd`` = ``llvm.x86.avx512.vpdpbusd.512``): each int32 lane adds the
four products ``u8 * s8`` of its four bytes to the accumulator. Every product and every partial sum
is an exact integer; the only rounding the instruction can do is the int32 add, which *wraps*
(``vpdpbusd``, not the saturating ``vpdpbusds``). So the lane holds ``sum_k x*w mod 2**32``: the
exact raw dot product whenever it fits int32 (``|x*w| <= 255*128``, so K <= 65793 suffices), and
the same residue the int64 definition has in any case.

``"avx2_exact"`` (any AVX2 CPU): activations are widened to int16 pairs ``(x[2t], x[2t+1])``,
weights to int16 (at pack time), and ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``) multiplies int16
pairs and adds the two products into an int32: ``|x*w| <= 255*128 = 32640``, so the pair sum
(<= 65280) is exact; the int32 accumulation is a wrapping ``vpaddd``, as above.

``"avx2_saturate"`` (FBGEMM's AVX2 / AVX512-without-VNNI GEMM, ``genComputeBlock`` in
``src/GenerateKernelU8S8S32ACC32.cc``: ``vpbroadcastd A; vpmaddubsw res, A, B; vpmaddwd res, one,
res; vpaddd C, res, C`` with B packed ``[K/4][N][4]``, ROW_INTERLEAVE 4): ``vpmaddubsw``
(``llvm.x86.avx2.pmadd.ub.sw``, unsigned operand first) multiplies raw u8 by s8 and adds adjacent
products ``(2t, 2t+1)`` into an int16 *with saturation*; ``vpmaddwd`` with int16 ones widens and
adds two such int16 into an int32 (exact: |sum| <= 2 * 32768); ``vpaddd`` accumulates (wrapping,
so FBGEMM's splitting of K into KCB blocks, accumulated in C, gives the same residue).
That is FBGEMM's instruction sequence, so the saturation is FBGEMM's: the result is
``exact + sum_t (sat16(p_t) - p_t)`` with ``p_t = x[2t] w[2t] + x[2t+1] w[2t+1]``, the pair
saturation ``qexact.accumulate.pair_saturation_correction`` models (see accumulate.py's docstring).
The pairs are positions ``(2t, 2t+1)`` of the *packed* depth axis; ``pack_weights(...,
columns=...)`` lays the depth axis out so that they are the engine's pairs:
``columns = pair_positions(depth, block_starts).reshape(-1)`` (entry -1 = a zero column, so an
odd block pairs its last element with 0).

Zero points (``accumulate_u8s8``): ``sum_k (x - zx)(w - zw[n]) = raw - zx * colsum_n - zw[n] *
rowsum_m + K * zx * zw[n]`` is an identity of integers, so it holds mod 2**32 too (when every
``zw[n]`` is 0, symmetric weights as PyTorch's x86/fbgemm observers make them, the row term
``zw[n] * rowsum_m`` is 0 for every row: the row sums are then neither computed nor read, the
tile adds ``bias[n]`` alone, the same int32 value); computed in
wrapping int32 it is exact whenever the true value fits int32, which ``|x - zx|, |w - zw| <= 255``
guarantees (zx in [0, 255], zw in [-128, 127]) for ``K * 255 * 255 <= 2**31 - 1``, i.e.
``K <= 33025``; larger K, or zero points outside those ranges, are refused (``UnsupportedError``:
the caller runs the NumPy path). FBGEMM applies the same corrections after its saturating raw
product (row offsets times the weight zero point, column offsets times the activation zero point),
so the saturating method's centered value is ``exact + correction`` as in the NumPy path.

Packing layout
--------------
The depth axis is first laid out by ``columns`` (default: ``0..K-1``) and zero-filled to
``padded_depth`` = K' rounded up to 4; activations ``x`` (M, padded_depth) uint8 must use the same
layout, zero at -1 columns and past K'. Output channels are cut into panels of ``W`` columns
(the last one narrower, rounded up to the vector width, zero-filled past N):

- ``"vnni"``: ``W = 64`` (4 zmm of 16 int32 lanes), panel ``[K'/4][W][4]`` int8: the 4 depth
  bytes a lane multiplies are adjacent, as ``vpdpbusd`` wants.
- ``"avx2_saturate"``: ``W = 16`` (2 ymm of 8 lanes), the same ``[K'/4][W][4]`` int8 layout: in a
  lane's 4 bytes ``vpmaddubsw`` pairs (0, 1) and (2, 3), i.e. packed positions (2t, 2t+1).
- ``"avx2_exact"``: ``W = 16``, panel ``[K'/2][W][2]`` int16 (weights widened once).

Execution
---------
A register tile of R rows x W columns is accumulated over the whole depth (vnni: 4 x 64 = 16 zmm
accumulators, or a wide tile where no row sums ride in it: 6 x 4, 8 x 3, 8 x 2 and 12 x 1 zmm,
chosen per panel by its vector count, so that narrow panels (N <= 32, the last panel of N = 96)
keep enough independent ``vpdpbusd`` chains and amortize the weight loads; a block's rows that
do not fill a wide tile take 4-row tiles; avx2: 6 x 16 = 12 ymm, which fits AVX2's 16 registers
with the weights, the broadcast activation and a temporary), then stored with the zero-point
corrections applied in int32 vectors (``out = acc + bias[n] - zw[n] * rowsum[m]``, ``bias = K zx zw - zx colsum``; the partial last
vector of a panel is stored lane by lane). The tile is LLVM IR emitted by a numba ``intrinsic``
(LLVM does not form ``vpdpbusd`` from loops by itself), one specialization per (rows, vectors),
chosen by a switch; a tile of 1 or 2 rows splits the depth over 4 or 2 accumulator chains (summed
at the end, int32 addition is associative mod 2**32) so that a GEMV is not latency-bound. Which
tile shape covers an element does not enter its value: every lane accumulates the products of its
own (row, column) over the same depth steps, in the same wrapping int32, and gets the same
correction. Row sums, where needed, ride in the 4-row vnni tiles of the first panel (one more
``vpdpbusd`` with ones per row and step) where padded depth <= 128, else ``_row_sums`` sums the
block's rows first (the same uint32 sum); the other panels run wide tiles. Drivers walk blocks
of rows (~256 KB of x, summed into ``rowsum`` as they come into cache), panels, tiles.
``parallel`` runs the same driver on chunks of rows (or of panels, for few rows) in threads: the
drivers release the GIL, chunks write disjoint parts of ``out``; the result is the same.
Numba compiles each method on its first call (``cache=True``, never ``fastmath``).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..engines.base import cpu_flags
from ..errors import ShapeError, UnsupportedError
from . import refresh_compiled_cache

refresh_compiled_cache()  # before any cached kernel loads (see its docstring)

METHODS = ("vnni", "avx2_exact", "avx2_saturate")

MAX_CENTERED_DEPTH = 33025
"""Largest K for which ``K * 255 * 255 <= 2**31 - 1``: the centered accumulator fits int32."""

_VNNI_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_vnni"})
_AVX2_FLAGS = frozenset({"avx2"})


@functools.cache
def available_methods() -> tuple[str, ...]:
    """The methods this CPU can execute (``cpu_flags()``, read once); no other method is ever
    compiled. Where numba compiles for another CPU (``NUMBA_CPU_NAME``, e.g. ``haswell`` to run
    as an AVX2 machine would), ``vnni`` needs that target to have it (``NUMBA_CPU_FEATURES``
    with ``+avx512vnni``)."""
    flags = cpu_flags()
    methods = []
    target = numba.core.config.CPU_NAME
    target_has_vnni = (target in (None, "host")
                       or "+avx512vnni" in (numba.core.config.CPU_FEATURES or ""))
    if _VNNI_FLAGS <= flags and target_has_vnni:
        methods.append("vnni")
    if _AVX2_FLAGS <= flags:
        methods += ["avx2_exact", "avx2_saturate"]
    return tuple(methods)


# --------------------------------------------------------------------------------------------
# Kernel geometry per method.

@dataclass(frozen=True)
class _Geometry:
    lanes: int          # int32 lanes of one accumulator vector
    max_vectors: int    # accumulator vectors per row in a tile: panel width W = lanes * max_vectors
    rows: int           # rows per register tile
    step_depth: int     # depth positions one step consumes per lane (4 bytes or 2 int16)
    weight_bytes: int   # bytes of one packed weight

    @property
    def panel_width(self) -> int:
        return self.lanes * self.max_vectors


_GEOMETRY = {
    "vnni": _Geometry(lanes=16, max_vectors=4, rows=4, step_depth=4, weight_bytes=1),
    "avx2_saturate": _Geometry(lanes=8, max_vectors=2, rows=6, step_depth=4, weight_bytes=1),
    "avx2_exact": _Geometry(lanes=8, max_vectors=2, rows=6, step_depth=2, weight_bytes=2),
}


# --------------------------------------------------------------------------------------------
# Packed weights.

@dataclass(eq=False)
class PackedWeights:
    """Raw int8 weights laid out once for the kernels (packed per method on first use).

    ``laid_out`` (N, padded_depth) int8: the weights in the ``columns`` layout, zero at -1 columns
    and past K'. ``column_sums`` (N,) int32: sum of the raw weights over the true depth.
    """

    output_channels: int
    depth: int
    padded_depth: int
    columns: np.ndarray | None
    laid_out: np.ndarray
    column_sums: np.ndarray
    _panels: dict = field(default_factory=dict, repr=False)
    _corrections: dict = field(default_factory=dict, repr=False)

    def corrections(self, x_zero_point: int, weight_zero_point) -> tuple[np.ndarray, np.ndarray]:
        """Per output channel int32 ``bias = K zx zw[n] - zx colsum[n]`` and ``zw[n]``, each padded
        by one panel of zeros (vector loads); exact in int64, then taken mod 2**32. Cached.

        Refuses (``UnsupportedError``) zero points outside uint8 (x) / int8 (weights): the int32
        bound of the module docstring assumes them."""
        scalar = np.ndim(weight_zero_point) == 0
        key = (x_zero_point, int(weight_zero_point) if scalar
               else np.asarray(weight_zero_point, np.int64).tobytes())
        cached = self._corrections.get(key)
        if cached is not None:
            return cached
        weight_zero_points = np.broadcast_to(np.asarray(weight_zero_point, np.int64),
                                             (self.output_channels,))
        weight_in_int8 = (not weight_zero_points.size
                          or (-128 <= weight_zero_points.min() and weight_zero_points.max() <= 127))
        if not (0 <= x_zero_point <= 255 and weight_in_int8):
            raise UnsupportedError(f"zero points outside uint8 / int8 (x {x_zero_point!r}, "
                                   f"weight {weight_zero_point!r}); the NumPy path handles them")
        bias = (self.depth * x_zero_point * weight_zero_points
                - x_zero_point * self.column_sums.astype(np.int64))
        cached = (_wrapped_int32(bias, self.output_channels),
                  _wrapped_int32(weight_zero_points, self.output_channels))
        if len(self._corrections) > 8:
            self._corrections.clear()
        self._corrections[key] = cached
        return cached

    def panels(self, method: str) -> np.ndarray:
        """The flat byte buffer of ``method``'s panels (see the module docstring)."""
        if method not in self._panels:
            self._panels[method] = _pack_panels(self.laid_out, _GEOMETRY[method])
        return self._panels[method]


def pack_weights(weight: np.ndarray, columns: np.ndarray | None = None) -> PackedWeights:
    """Lay out (N, K) int8 weights for the GEMM kernels; ``columns`` (K',) int64 orders the
    depth axis (-1 = a zero column), e.g. ``pair_positions(K, starts).reshape(-1)`` for pair
    saturation. Panels are packed per method on first use (``PackedWeights.panels``)."""
    weight = np.asarray(weight)
    if weight.ndim != 2 or weight.dtype != np.int8:
        raise ShapeError(f"weight must be (N, K) int8, got {weight.dtype} {weight.shape!r}")
    output_channels, depth = weight.shape
    if columns is None:
        laid_depth = depth
        layout = weight
    else:
        columns = np.asarray(columns, dtype=np.int64).reshape(-1)
        if columns.size and (columns.min() < -1 or columns.max() >= depth):
            raise ShapeError(f"columns must lie in [-1, {depth}), got "
                             f"{columns.min()}..{columns.max()}")
        laid_depth = columns.size
        padded = np.concatenate([weight, np.zeros((output_channels, 1), np.int8)], axis=1)
        layout = padded[:, columns]  # -1 reads the zero column
    padded_depth = max(4, -(-laid_depth // 4) * 4)
    laid_out = np.zeros((output_channels, padded_depth), np.int8)
    laid_out[:, :laid_depth] = layout
    real_depth = depth if columns is None else int(np.count_nonzero(columns >= 0))
    column_sums = laid_out.sum(axis=1, dtype=np.int64).astype(np.int32)
    return PackedWeights(output_channels=output_channels, depth=real_depth,
                         padded_depth=padded_depth, columns=columns,
                         laid_out=np.ascontiguousarray(laid_out), column_sums=column_sums)


def _pack_panels(laid_out: np.ndarray, geometry: _Geometry) -> np.ndarray:
    """Panels of ``panel_width`` output channels, each ``[steps][width][step_depth]``, flat bytes.

    Panel p starts at byte ``p * panel_width * padded_depth * weight_bytes``; only the last panel
    may be narrower (its width rounded up to ``lanes``, zero-filled past N).
    """
    output_channels, padded_depth = laid_out.shape
    steps = padded_depth // geometry.step_depth
    dtype = np.int16 if geometry.weight_bytes == 2 else np.int8
    chunks = []
    for start in range(0, output_channels, geometry.panel_width):
        stop = min(start + geometry.panel_width, output_channels)
        width = -(-(stop - start) // geometry.lanes) * geometry.lanes
        panel = np.zeros((width, padded_depth), dtype)
        panel[:stop - start] = laid_out[start:stop]
        # (width, steps, step_depth) -> (steps, width, step_depth)
        panel = panel.reshape(width, steps, geometry.step_depth).transpose(1, 0, 2)
        chunks.append(np.ascontiguousarray(panel).reshape(-1).view(np.int8))
    if not chunks:
        return np.zeros(64, np.int8)
    # 64 spare bytes: the kernels never read them, but a zero-width tail stays addressable.
    return np.concatenate(chunks + [np.zeros(64, np.int8)])


# --------------------------------------------------------------------------------------------
# LLVM IR of one register tile.

_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _declare(builder, name, return_type, argument_types):
    module = builder.module
    function_type = ir.FunctionType(return_type, argument_types)
    return cgutils.get_or_insert_function(module, function_type, name)


def _address(builder, base, offset, pointee):
    """``(pointee*)(base + offset)``; base and offset are i64 byte addresses."""
    return builder.inttoptr(builder.add(base, offset), ir.PointerType(pointee))


def _splat(builder, scalar, lanes):
    vector_type = ir.VectorType(scalar.type, lanes)
    single = builder.insert_element(ir.Constant(vector_type, None), scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(single, ir.Constant(vector_type, None),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


class _Vnni:
    """acc += vpdpbusd(x4 broadcast, w[64 bytes]): 16 lanes, 4 depth bytes per lane."""
    geometry = _GEOMETRY["vnni"]
    sums_in_tile = True  # 4 more accumulators fit the 32 zmm registers
    # More rows per tile where the registers allow (no row sums in these): enough independent
    # vpdpbusd chains to hide its latency (4 x 1 zmm waits on it) and fewer weight loads and
    # stores per product: 12 x 1, 8 x 2, 8 x 3, 6 x 4 zmm accumulators (of 32 zmm).
    wide_tiles = {1: 12, 2: 8, 3: 8, 4: 6}

    @staticmethod
    def load_x(builder, row_address, step):
        word = builder.load(_address(builder, row_address, builder.mul(step, ir.Constant(_I64, 4)),
                                     _I32), align=1)
        return builder.bitcast(_splat(builder, word, 16), ir.VectorType(_I8, 64))

    @staticmethod
    def load_w(builder, panel_address, step, vector, vectors):
        # byte offset ((step * vectors + vector) * 16 lanes * 4 bytes)
        offset = builder.add(builder.mul(step, ir.Constant(_I64, vectors * 64)),
                             ir.Constant(_I64, vector * 64))
        return builder.load(_address(builder, panel_address, offset, ir.VectorType(_I8, 64)),
                            align=1)

    @staticmethod
    def accumulate(builder, acc, x, w):
        vector = ir.VectorType(_I8, 64)
        dpbusd = _declare(builder, "llvm.x86.avx512.vpdpbusd.512", ir.VectorType(_I32, 16),
                          [ir.VectorType(_I32, 16), vector, vector])
        return builder.call(dpbusd, [acc, x, w])

    @staticmethod
    def sum_x(builder, acc, x):
        """acc += the 4 bytes of x (every lane alike): vpdpbusd with int8 ones."""
        return _Vnni.accumulate(builder, acc, x, ir.Constant(ir.VectorType(_I8, 64), [1] * 64))


class _Avx2Saturate:
    """acc += vpmaddwd(vpmaddubsw(x4 broadcast, w[32 bytes]), ones): FBGEMM's AVX2 sequence."""
    geometry = _GEOMETRY["avx2_saturate"]
    sums_in_tile = False  # AVX2's 16 registers are taken
    wide_tiles = {}

    @staticmethod
    def load_x(builder, row_address, step):
        word = builder.load(_address(builder, row_address, builder.mul(step, ir.Constant(_I64, 4)),
                                     _I32), align=1)
        return builder.bitcast(_splat(builder, word, 8), ir.VectorType(_I8, 32))

    @staticmethod
    def load_w(builder, panel_address, step, vector, vectors):
        offset = builder.add(builder.mul(step, ir.Constant(_I64, vectors * 32)),
                             ir.Constant(_I64, vector * 32))
        return builder.load(_address(builder, panel_address, offset, ir.VectorType(_I8, 32)),
                            align=1)

    @staticmethod
    def accumulate(builder, acc, x, w):
        bytes_type = ir.VectorType(_I8, 32)
        words_type = ir.VectorType(_I16, 16)
        maddubs = _declare(builder, "llvm.x86.avx2.pmadd.ub.sw", words_type,
                           [bytes_type, bytes_type])
        maddwd = _declare(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8),
                          [words_type, words_type])
        pairs = builder.call(maddubs, [x, w])  # int16: sat16(x0 w0 + x1 w1), unsigned x first
        ones = ir.Constant(words_type, [1] * 16)
        return builder.add(acc, builder.call(maddwd, [pairs, ones]))


class _Avx2Exact:
    """acc += vpmaddwd((x0, x1) int16 broadcast, w[16 int16]): exact int16 products."""
    geometry = _GEOMETRY["avx2_exact"]
    sums_in_tile = False
    wide_tiles = {}

    @staticmethod
    def load_x(builder, row_address, step):
        two = builder.load(_address(builder, row_address, builder.mul(step, ir.Constant(_I64, 2)),
                                    ir.VectorType(_I8, 2)), align=1)
        pair = builder.bitcast(builder.zext(two, ir.VectorType(_I16, 2)), _I32)
        return builder.bitcast(_splat(builder, pair, 8), ir.VectorType(_I16, 16))

    @staticmethod
    def load_w(builder, panel_address, step, vector, vectors):
        offset = builder.add(builder.mul(step, ir.Constant(_I64, vectors * 32)),
                             ir.Constant(_I64, vector * 32))
        return builder.load(_address(builder, panel_address, offset, ir.VectorType(_I16, 16)),
                            align=1)

    @staticmethod
    def accumulate(builder, acc, x, w):
        words_type = ir.VectorType(_I16, 16)
        maddwd = _declare(builder, "llvm.x86.avx2.pmadd.wd", ir.VectorType(_I32, 8),
                          [words_type, words_type])
        return builder.add(acc, builder.call(maddwd, [x, w]))


def _emit_tile(builder, method, rows, vectors, with_sums, args):
    """One rows x (vectors * lanes) tile over all steps, then the corrected store. ``with_sums``:
    also sum each row of x over the depth (in lane 0 of one more accumulator per row) into
    ``row_sums`` before the correction reads it."""
    (x_address, x_stride, panel_address, steps, out_address, out_stride, valid_columns,
     centered, bias_address, zero_point_address, row_sums_address) = args
    lanes = method.geometry.lanes
    vector_type = ir.VectorType(_I32, lanes)
    row_addresses = [builder.add(x_address, builder.mul(x_stride, ir.Constant(_I64, r)))
                     for r in range(rows)]
    # One row alone would wait on vpdpbusd's latency: give it independent chains of steps,
    # summed at the end (int32 addition wraps, so any order gives the same residue).
    chains = 4 if rows == 1 else 2 if rows == 2 else 1
    zero = ir.Constant(vector_type, [0] * lanes)
    accumulators = [[[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                     for _ in range(rows)] for _ in range(chains)]
    assert not (with_sums and chains > 1)
    sums = [cgutils.alloca_once_value(builder, zero) for _ in range(rows if with_sums else 0)]

    def step(step_index, chain):
        weights = [method.load_w(builder, panel_address, step_index, v, vectors)
                   for v in range(vectors)]
        for r in range(rows):
            x = method.load_x(builder, row_addresses[r], step_index)
            if with_sums:
                builder.store(method.sum_x(builder, builder.load(sums[r]), x), sums[r])
            for v in range(vectors):
                acc = builder.load(accumulators[chain][r][v])
                builder.store(method.accumulate(builder, acc, x, weights[v]),
                              accumulators[chain][r][v])

    chain_count = ir.Constant(_I64, chains)
    rounds = builder.udiv(steps, chain_count)
    with cgutils.for_range(builder, rounds) as loop:
        for chain in range(chains):
            step(builder.add(builder.mul(loop.index, chain_count), ir.Constant(_I64, chain)), chain)
    with cgutils.for_range(builder, builder.sub(steps, builder.mul(rounds, chain_count))) as loop:
        step(builder.add(builder.mul(rounds, chain_count), loop.index), 0)
    for chain in range(1, chains):
        for r in range(rows):
            for v in range(vectors):
                total = builder.add(builder.load(accumulators[0][r][v]),
                                    builder.load(accumulators[chain][r][v]))
                builder.store(total, accumulators[0][r][v])
    accumulators = accumulators[0]
    for r in range(rows if with_sums else 0):
        row_sum = builder.extract_element(builder.load(sums[r]), ir.Constant(_I32, 0))
        builder.store(row_sum, _address(builder, row_sums_address, ir.Constant(_I64, 4 * r), _I32),
                      align=4)

    # centered 2: out = acc + bias[n] - zw[n] * rowsum[m]   (int32, wrapping; bias = K zx zw -
    # zx colsum); centered 1 (every zw[n] = 0, so zw[n] * rowsum[m] = 0): out = acc + bias[n]
    row_term = builder.icmp_signed(">=", centered, ir.Constant(_I64, 2))
    bias_only = builder.icmp_signed("==", centered, ir.Constant(_I64, 1))
    with builder.if_else(row_term) as (with_rows, without_rows):
        with with_rows:
            for v in range(vectors):
                column_offset = ir.Constant(_I64, v * lanes * 4)
                bias = builder.load(_address(builder, bias_address, column_offset, vector_type),
                                    align=4)
                zero_point = builder.load(_address(builder, zero_point_address, column_offset,
                                                   vector_type), align=4)
                for r in range(rows):
                    row_sum = builder.load(_address(builder, row_sums_address,
                                                    ir.Constant(_I64, 4 * r), _I32), align=4)
                    row_sum = _splat(builder, row_sum, lanes)
                    correction = builder.sub(bias, builder.mul(zero_point, row_sum))
                    acc = builder.load(accumulators[r][v])
                    builder.store(builder.add(acc, correction), accumulators[r][v])
        with without_rows:
            with builder.if_then(bias_only):
                for v in range(vectors):
                    column_offset = ir.Constant(_I64, v * lanes * 4)
                    bias = builder.load(_address(builder, bias_address, column_offset,
                                                 vector_type), align=4)
                    for r in range(rows):
                        acc = builder.load(accumulators[r][v])
                        builder.store(builder.add(acc, bias), accumulators[r][v])

    for v in range(vectors):
        column_offset = ir.Constant(_I64, v * lanes * 4)
        row_outputs = [builder.add(builder.add(out_address, builder.mul(out_stride,
                                                                        ir.Constant(_I64, r))),
                                   column_offset) for r in range(rows)]
        if v < vectors - 1:
            for r in range(rows):
                builder.store(builder.load(accumulators[r][v]),
                              _address(builder, row_outputs[r], ir.Constant(_I64, 0), vector_type),
                              align=4)
            continue
        remaining = builder.sub(valid_columns, ir.Constant(_I64, v * lanes))
        full = builder.icmp_signed(">=", remaining, ir.Constant(_I64, lanes))
        with builder.if_else(full) as (then, otherwise):
            with then:
                for r in range(rows):
                    builder.store(builder.load(accumulators[r][v]),
                                  _address(builder, row_outputs[r], ir.Constant(_I64, 0),
                                           vector_type), align=4)
            with otherwise:
                for r in range(rows):
                    acc = builder.load(accumulators[r][v])
                    with cgutils.for_range(builder, remaining) as lane_loop:
                        element = builder.extract_element(acc, lane_loop.index)
                        offset = builder.mul(lane_loop.index, ir.Constant(_I64, 4))
                        builder.store(element, _address(builder, row_outputs[r], offset, _I32),
                                      align=4)


def _make_tile(method):
    """An intrinsic ``tile(rows, vectors, sum_rows, ...)`` switching at run time to a specialized
    tile for each (rows in 1..R, vectors in 1..max_vectors), and for (R, vectors, summing the rows)
    where the method sums rows in the tile; all addresses are byte addresses."""
    geometry = method.geometry

    @intrinsic
    def tile(typingctx, rows, vectors, sum_rows, x_address, x_stride, panel_address, steps,
             out_address, out_stride, valid_columns, centered, bias_address, zero_point_address,
             row_sums_address):
        arguments = (rows, vectors, sum_rows, x_address, x_stride, panel_address, steps,
                     out_address, out_stride, valid_columns, centered, bias_address,
                     zero_point_address, row_sums_address)
        signature = types.void(*arguments)

        def codegen(context, builder, sig, llvm_args):
            values = []
            for value, value_type in zip(llvm_args, sig.args):
                if value_type == types.boolean:
                    values.append(builder.icmp_unsigned("!=", value,
                                                        ir.Constant(value.type, 0)))
                else:
                    values.append(context.cast(builder, value, value_type, types.int64))
            rows_value, vectors_value = values[0], values[1]
            sums_value = builder.zext(values[2], _I64)
            key = builder.add(builder.mul(rows_value, ir.Constant(_I64, 16)), vectors_value)
            key = builder.add(key, builder.mul(sums_value, ir.Constant(_I64, 256)))
            done = builder.append_basic_block("tile.done")
            switch = builder.switch(key, done)
            cases = [(tile_rows, tile_vectors, False) for tile_rows in range(1, geometry.rows + 1)
                     for tile_vectors in range(1, geometry.max_vectors + 1)]
            if method.sums_in_tile:
                cases += [(geometry.rows, tile_vectors, True)
                          for tile_vectors in range(1, geometry.max_vectors + 1)]
            cases += [(wide_rows, tile_vectors, False)
                      for tile_vectors, wide_rows in method.wide_tiles.items()]
            for tile_rows, tile_vectors, with_sums in cases:
                block = builder.append_basic_block(f"tile.{tile_rows}x{tile_vectors}.{with_sums}")
                key = tile_rows * 16 + tile_vectors + 256 * with_sums
                switch.add_case(ir.Constant(_I64, key), block)
                builder.position_at_end(block)
                _emit_tile(builder, method, tile_rows, tile_vectors, with_sums, values[3:])
                builder.branch(done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return signature, codegen

    return tile


_tile_vnni = _make_tile(_Vnni)
_tile_avx2_saturate = _make_tile(_Avx2Saturate)
_tile_avx2_exact = _make_tile(_Avx2Exact)


# --------------------------------------------------------------------------------------------
# Drivers: blocks of rows, panels of columns, register tiles. One per method (a method the host
# lacks is never compiled). ``parallel=True`` runs the same driver on row chunks in threads
# (``numba.get_num_threads()`` of them; the drivers release the GIL): no second compilation.
# ``out`` row r holds the result of x row ``out_row0 + r`` (0 here; _numba_fused fills a buffer
# of one chunk's rows).

_ROW_BLOCK_BYTES = 1 << 18  # x rows of one block stay in L2 while every panel passes over them
_TILE_SUM_DEPTH = 128  # up to this padded depth the vnni tile sums x's rows itself
_VNNI_ROW_QUANTUM = 24  # row blocks / chunks: whole 4-, 8- and 12-row vnni tiles


@numba.njit(cache=True, nogil=True)
def _vnni_wide_rows(vectors):
    """Rows of the wide vnni tile for a panel of ``vectors`` zmm (``_Vnni.wide_tiles``)."""
    if vectors == 1:
        return 12
    if vectors <= 3:
        return 8
    return 6


@numba.njit(cache=True, nogil=True)
def _row_sums(x, x_stride, depth, out, row_begin, row_end):
    """Sum of each uint8 row (uint32, exact: K * 255 < 2**32), stored as int32 (K <= 33025)."""
    for row in range(row_begin, row_end):
        values = x[row * x_stride:row * x_stride + depth]  # a slice: the loop vectorizes
        total = np.uint32(0)
        for column in range(values.size):
            total += np.uint32(values[column])
        out[row] = total


@numba.njit(cache=True, nogil=True)
def _row_block(padded_depth, tile_rows):
    rows = _ROW_BLOCK_BYTES // padded_depth
    return max(tile_rows, rows - rows % tile_rows)


@numba.njit(cache=True, nogil=True)
def _drive_vnni(x, x_stride, depth, panels, out, out_stride, output_channels,
                centered, bias, zero_points, row_sums, sum_rows, row_begin, row_end,
                panel_begin, panel_end, out_row0):
    tile_rows, lanes, panel_width = 4, 16, 64
    steps = depth // 4
    panel_bytes = panel_width * depth
    block = _row_block(depth, _VNNI_ROW_QUANTUM)
    # short rows: one more vpdpbusd per row and step beats a pass of ~3-4 ns per row (measured
    # also for N = 16, where it doubles the vpdpbusd count)
    sums_in_tile = sum_rows and depth <= _TILE_SUM_DEPTH
    for block_begin in range(row_begin, row_end, block):
        block_end = min(block_begin + block, row_end)
        if sum_rows and not sums_in_tile:  # while the block's rows come into cache
            _row_sums(x, x_stride, depth, row_sums, block_begin, block_end)
        for panel in range(panel_begin, panel_end):  # panels of panel_width columns
            column = panel * panel_width
            valid = min(panel_width, output_channels - column)
            vectors = (valid + lanes - 1) // lanes
            panel_address = panels.ctypes.data + panel * panel_bytes
            wide_rows = _vnni_wide_rows(vectors)
            row = block_begin
            while row < block_end:
                rows = min(tile_rows, block_end - row)
                tile_sums = sums_in_tile and panel == panel_begin
                if tile_sums and rows < tile_rows:
                    _row_sums(x, x_stride, depth, row_sums, row, row + rows)
                    tile_sums = False
                if not tile_sums and block_end - row >= wide_rows:
                    rows = wide_rows
                _tile_vnni(rows, vectors, tile_sums, x.ctypes.data + row * x_stride, x_stride,
                           panel_address, steps,
                           out.ctypes.data + ((row - out_row0) * out_stride + column) * 4,
                           out_stride * 4, valid, centered, bias.ctypes.data + column * 4,
                           zero_points.ctypes.data + column * 4, row_sums.ctypes.data + row * 4)
                row += rows


# The drivers are written out once per instruction sequence on purpose: numba's on-disk cache
# keys a function by its source location, so drivers made by one factory from one definition
# would share one cache entry and load each other's machine code.
@numba.njit(cache=True, nogil=True)
def _drive_avx2_saturate(x, x_stride, depth, panels, out, out_stride, output_channels,
                         centered, bias, zero_points, row_sums, sum_rows, row_begin, row_end,
                         panel_begin, panel_end, out_row0):
    tile_rows, lanes, panel_width = 6, 8, 16
    steps = depth // 4
    panel_bytes = panel_width * depth
    block = _row_block(depth, tile_rows)
    for block_begin in range(row_begin, row_end, block):
        block_end = min(block_begin + block, row_end)
        if sum_rows:  # while the block's rows come into cache for the panels
            _row_sums(x, x_stride, depth, row_sums, block_begin, block_end)
        for panel in range(panel_begin, panel_end):  # panels of panel_width columns
            column = panel * panel_width
            valid = min(panel_width, output_channels - column)
            vectors = (valid + lanes - 1) // lanes
            panel_address = panels.ctypes.data + panel * panel_bytes
            row = block_begin
            while row < block_end:
                rows = min(tile_rows, block_end - row)
                _tile_avx2_saturate(rows, vectors, False, x.ctypes.data + row * x_stride,
                                    x_stride, panel_address, steps,
                                    out.ctypes.data + ((row - out_row0) * out_stride + column) * 4,
                                    out_stride * 4,
                                    valid, centered, bias.ctypes.data + column * 4,
                                    zero_points.ctypes.data + column * 4,
                                    row_sums.ctypes.data + row * 4)
                row += rows


@numba.njit(cache=True, nogil=True)
def _drive_avx2_exact(x, x_stride, depth, panels, out, out_stride, output_channels,
                      centered, bias, zero_points, row_sums, sum_rows, row_begin, row_end,
                      panel_begin, panel_end, out_row0):
    tile_rows, lanes, panel_width = 6, 8, 16
    steps = depth // 2
    panel_bytes = panel_width * depth * 2  # int16 weights
    block = _row_block(depth, tile_rows)
    for block_begin in range(row_begin, row_end, block):
        block_end = min(block_begin + block, row_end)
        if sum_rows:  # while the block's rows come into cache for the panels
            _row_sums(x, x_stride, depth, row_sums, block_begin, block_end)
        for panel in range(panel_begin, panel_end):  # panels of panel_width columns
            column = panel * panel_width
            valid = min(panel_width, output_channels - column)
            vectors = (valid + lanes - 1) // lanes
            panel_address = panels.ctypes.data + panel * panel_bytes
            row = block_begin
            while row < block_end:
                rows = min(tile_rows, block_end - row)
                _tile_avx2_exact(rows, vectors, False, x.ctypes.data + row * x_stride,
                                 x_stride, panel_address, steps,
                                 out.ctypes.data + ((row - out_row0) * out_stride + column) * 4,
                                 out_stride * 4,
                                 valid, centered, bias.ctypes.data + column * 4,
                                 zero_points.ctypes.data + column * 4,
                                 row_sums.ctypes.data + row * 4)
                row += rows


_DRIVERS = {"vnni": _drive_vnni, "avx2_saturate": _drive_avx2_saturate,
            "avx2_exact": _drive_avx2_exact}


@functools.cache
def _thread_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qexact-gemm")


def _chunks(rows: int, panels: int, tile_rows: int, threads: int) -> list[tuple[int, ...]]:
    """(row_begin, row_end, panel_begin, panel_end) work items, about 2 per thread: whole register
    tiles of rows, or column panels when there are too few row tiles (a GEMV)."""
    tiles = -(-rows // tile_rows)
    if tiles >= 2 * threads or panels < 2:
        count = max(1, min(tiles, 2 * threads))
        bounds = [min(rows, (tiles * chunk // count) * tile_rows) for chunk in range(count + 1)]
        return [(begin, end, 0, panels) for begin, end in zip(bounds[:-1], bounds[1:])
                if end > begin]
    count = min(panels, 2 * threads)
    bounds = [panels * chunk // count for chunk in range(count + 1)]
    return [(0, rows, begin, end) for begin, end in zip(bounds[:-1], bounds[1:]) if end > begin]


# --------------------------------------------------------------------------------------------
# Public entry points.

def _check(x, packed, method, out):
    if method not in METHODS:
        raise UnsupportedError(f"GEMM method must be one of {METHODS}, got {method!r}")
    if method not in available_methods():
        raise UnsupportedError(f"this CPU cannot run GEMM method {method!r}; it runs "
                               f"{available_methods()!r}")
    x = np.asarray(x)
    if (x.ndim != 2 or x.dtype != np.uint8 or x.shape[1] != packed.padded_depth
            or x.strides[1] != 1 or x.strides[0] < x.shape[1]):
        raise ShapeError(f"x must be (M, {packed.padded_depth}) uint8 with unit column stride, "
                         f"got {x.dtype} {x.shape!r}")
    shape = (x.shape[0], packed.output_channels)
    if out is None:
        out = np.empty(shape, np.int32)
    elif (out.shape != shape or out.dtype != np.int32 or out.strides[1] != 4
          or out.strides[0] % 4 or out.strides[0] < 4 * shape[1]):
        raise ShapeError(f"out must be {shape!r} int32 with unit column stride, got "
                         f"{out.dtype} {out.shape!r}")
    return x, out


def _flat(array: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` elements from ``array``'s first one, as a 1-D view (rows may be strided)."""
    if array.flags.c_contiguous:
        return array.reshape(-1)
    return np.lib.stride_tricks.as_strided(array, (size,), (array.itemsize,))


def _run(x, packed, method, out, parallel, centered, bias, zero_points, row_sums, sum_rows):
    if x.shape[0] == 0 or packed.output_channels == 0:
        return out
    driver = _DRIVERS[method]
    panels = packed.panels(method)
    if parallel is True:
        threads = numba.get_num_threads()
    else:
        threads = max(1, int(parallel))  # False -> 1
    # One-dimensional views of x's and out's elements: one compiled signature for any row stride.
    x_stride, out_stride = x.strides[0], out.strides[0] // 4
    x_flat = _flat(x, (x.shape[0] - 1) * x_stride + x.shape[1])
    out_flat = _flat(out, (out.shape[0] - 1) * out_stride + out.shape[1])
    arguments = (x_flat, x_stride, x.shape[1], panels, out_flat, out_stride, out.shape[1],
                 centered, bias, zero_points, row_sums, sum_rows)
    geometry = _GEOMETRY[method]
    panel_count = -(-out.shape[1] // geometry.panel_width)
    chunks = _chunks(x.shape[0], panel_count, geometry.rows, threads) if threads > 1 else ()
    if len(chunks) <= 1:
        driver(*arguments, 0, x.shape[0], 0, panel_count, 0)
        return out
    if sum_rows and chunks[0][3] < panel_count:  # panels split: every chunk reads all row sums
        _row_sums(x_flat, x_stride, x.shape[1], row_sums, 0, x.shape[0])
        arguments = arguments[:-1] + (False,)
    # the drivers release the GIL (nogil): chunks run concurrently on disjoint parts of out
    pool = _thread_pool(threads)
    futures = [pool.submit(driver, *arguments, *chunk, 0) for chunk in chunks]
    for future in futures:
        future.result()
    return out


def _wrapped_int32(values: np.ndarray, output_channels: int) -> np.ndarray:
    """int64 values mod 2**32 as int32, zero-padded by one panel (a tile's vector loads)."""
    padded = np.zeros(output_channels + 64, np.int32)
    padded[:output_channels] = values.astype(np.uint64).astype(np.uint32).view(np.int32)
    return padded


def gemm_u8s8(x: np.ndarray, packed: PackedWeights, method: str, out: np.ndarray | None = None,
              parallel: bool | int = False) -> np.ndarray:
    """Raw ``sum_k x[m, k] * w[n, k]`` (M, N) int32 as ``method`` computes it (wrapping int32).

    ``x`` (M, padded_depth) uint8 in the packed depth layout, zero at -1 columns and past K'
    (rows may be strided). ``out`` (M, N) int32 is filled if given. ``parallel``: True runs row
    chunks on ``numba.get_num_threads()`` threads, an int on that many; same result.
    """
    x, out = _check(x, packed, method, out)
    unused = np.zeros(packed.output_channels + 64, np.int32)
    row_sums = np.zeros(8, np.int32)  # not read
    return _run(x, packed, method, out, parallel, 0, unused, unused, row_sums, False)


def accumulate_u8s8(x: np.ndarray, packed: PackedWeights, x_zero_point: int,
                    weight_zero_point, method: str, parallel: bool | int = False,
                    out: np.ndarray | None = None,
                    x_row_sums: np.ndarray | None = None) -> np.ndarray:
    """``sum_k (x - zx)(w - zw[n])`` (M, N) int32 over the true depth, from the raw ``method``
    product: ``raw - zx * colsum_n - zw[n] * rowsum_m + K zx zw[n]`` in wrapping int32.

    ``weight_zero_point``: an int or (N,) ints. ``x_row_sums`` (M,) int32, optional: the sums of
    x's rows if the caller has them (else computed in the kernel, block by block).
    Raises ``UnsupportedError`` for K > 33025 (the accumulator could leave int32).
    """
    if packed.depth > MAX_CENTERED_DEPTH:
        raise UnsupportedError(f"depth {packed.depth} > {MAX_CENTERED_DEPTH}: the centered "
                               "accumulator may not fit int32; use the NumPy path")
    bias, zero_points = packed.corrections(int(x_zero_point), weight_zero_point)
    x, out = _check(x, packed, method, out)
    if not zero_points.any():  # zw = 0 (symmetric weights): the row-sum term is 0 * rowsum = 0
        row_sums = np.zeros(x.shape[0] + 8, np.int32)  # not read
        return _run(x, packed, method, out, parallel, 1, bias, zero_points, row_sums, False)
    row_sums = np.empty(x.shape[0] + 8, np.int32)
    if x_row_sums is not None:
        row_sums[:x.shape[0]] = x_row_sums
    return _run(x, packed, method, out, parallel, 2, bias, zero_points, row_sums,
                x_row_sums is None)
