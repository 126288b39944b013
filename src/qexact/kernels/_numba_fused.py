"""The GEMM and its requantization epilogue in one pass: only the output bytes reach memory.

``gemm_requantize_fast(x, packed, x_zero_point, weight_zero_point, method, epilogue)`` returns
``epilogue.run(accumulate_u8s8(x, packed, x_zero_point, weight_zero_point, method))``, the same
(M, N) array, without writing the int32 (M, N) accumulator to memory and reading it back: a
numba driver per method walks chunks of rows; for each chunk it runs the method's GEMM driver
(``_numba_gemm._drive_*``, the function ``accumulate_u8s8`` runs, with the same arguments and an
output row origin: zero-point corrections applied in the tile's store) into a chunk-sized int32
buffer (at most ``CHUNK_ACC_BYTES``, so it stays in L2 between the two halves), then the
epilogue's program (``_numba_epilogue.run_block``, the function ``Epilogue.run`` calls per block)
on that buffer, block of ``epilogue.block_rows`` rows by block, writing the output rows of the
chunk.

Why it is exact: nothing per element changes, only the schedule.
- Accumulator: each element ``acc[m, n]`` is computed by the same driver code as in
  ``accumulate_u8s8``: one register tile over the whole depth, stored once with
  ``out = raw + bias[n] - zw[n] * rowsum[m]`` in wrapping int32 (same packed panels, same
  ``bias``/``zero_points`` from ``PackedWeights.corrections``, the same row sums; none when every
  zw[n] = 0, the tile then adding ``bias[n]`` alone, as ``accumulate_u8s8`` does).
  Which rows share a tile, or where a chunk ends, does not enter any element's value
  (``_numba_gemm``'s argument holds for any tile and block split: each lane sums its own
  products, wrapping int32 addition is associative).
- Epilogue: ``run_block`` applies the program to each element independently (per-channel
  constants ``c32[k][r * channels + c]`` depend only on the channel, the tiling repeats them for
  every row of a block; operands are read at their global row ``first_row + r``); given the same
  int32 values and the same block-local row index in ``0..block_rows-1``, it returns the same
  bits whichever rows form the block. The output is written at the same flat offsets
  ``row * channels + channel`` as ``Epilogue.run``.
So ``gemm_requantize_fast`` equals ``Epilogue.run(accumulate_u8s8(...))`` element for element,
hence ``requantize(accumulator)`` of the NumPy path (the two modules' own arguments);
``tests/kernels/test_numba_fused.py`` holds it so for every method this CPU runs.
"""

from __future__ import annotations

import numba
import numpy as np

from ..errors import ShapeError, UnsupportedError
from . import refresh_compiled_cache
from ._numba_epilogue import run_block
from ._numba_gemm import (_GEOMETRY, _VNNI_ROW_QUANTUM, MAX_CENTERED_DEPTH, _check, _chunks,
                          _drive_avx2_exact, _drive_avx2_saturate, _drive_vnni, _flat,
                          _thread_pool)

refresh_compiled_cache()  # before any cached kernel loads (see its docstring)

CHUNK_ACC_BYTES = 1 << 18
"""The int32 accumulator of one chunk of rows: 256 KiB at most, in L2 while the epilogue reads it
(64 KiB measured slower on ResNet-18: fewer rows per pass over the weights)."""
CHUNK_X_BYTES = 1 << 18
"""And at most this many bytes of x's rows per chunk (as the GEMM drivers' row blocks)."""


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _epilogue_chunk(acc, chunk_begin, chunk_end, channels, out_bytes, program, c32, c64, i64,
                    s32, block_rows, fval, ival, operand0, strides0, operand1, strides1,
                    operand2, strides2):
    """The program over the chunk's accumulator rows (acc row 0 = output row chunk_begin)."""
    for first in range(chunk_begin, chunk_end, block_rows):
        rows = min(block_rows, chunk_end - first)
        offset = (first - chunk_begin) * channels
        run_block(acc[offset:offset + rows * channels], rows, first, channels, out_bytes,
                  program, c32, c64, i64, s32, fval, ival,
                  operand0, strides0, operand1, strides1, operand2, strides2)


# One per method, as the GEMM drivers (numba's cache keys a function by its source location):
# each chunk's rows run through the method's GEMM driver into ``acc``, then the epilogue.
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fused_vnni(x, x_stride, depth, panels, channels, panel_count, bias, zero_points, row_sums,
                sum_rows, chunk_rows, out_bytes, program, c32, c64, i64, s32, block_rows,
                operand0, strides0, operand1, strides1, operand2, strides2, row_begin, row_end):
    acc = np.empty(chunk_rows * channels, np.int32)
    fval = np.empty(block_rows * channels, np.float32)
    ival = np.empty(block_rows * channels, np.int64)
    correction = 2 if sum_rows else 1  # the tile's store: 1 = bias only (every zw = 0)
    for chunk_begin in range(row_begin, row_end, chunk_rows):
        chunk_end = min(chunk_begin + chunk_rows, row_end)
        _drive_vnni(x, x_stride, depth, panels, acc, channels, channels, correction, bias,
                    zero_points, row_sums, sum_rows, chunk_begin, chunk_end, 0, panel_count,
                    chunk_begin)
        _epilogue_chunk(acc, chunk_begin, chunk_end, channels, out_bytes, program, c32, c64,
                        i64, s32, block_rows, fval, ival, operand0, strides0, operand1,
                        strides1, operand2, strides2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fused_avx2_saturate(x, x_stride, depth, panels, channels, panel_count, bias, zero_points,
                         row_sums, sum_rows, chunk_rows, out_bytes, program, c32, c64, i64, s32,
                         block_rows, operand0, strides0, operand1, strides1, operand2, strides2,
                         row_begin, row_end):
    acc = np.empty(chunk_rows * channels, np.int32)
    fval = np.empty(block_rows * channels, np.float32)
    ival = np.empty(block_rows * channels, np.int64)
    correction = 2 if sum_rows else 1
    for chunk_begin in range(row_begin, row_end, chunk_rows):
        chunk_end = min(chunk_begin + chunk_rows, row_end)
        _drive_avx2_saturate(x, x_stride, depth, panels, acc, channels, channels, correction,
                             bias, zero_points, row_sums, sum_rows, chunk_begin, chunk_end, 0,
                             panel_count, chunk_begin)
        _epilogue_chunk(acc, chunk_begin, chunk_end, channels, out_bytes, program, c32, c64,
                        i64, s32, block_rows, fval, ival, operand0, strides0, operand1,
                        strides1, operand2, strides2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fused_avx2_exact(x, x_stride, depth, panels, channels, panel_count, bias, zero_points,
                      row_sums, sum_rows, chunk_rows, out_bytes, program, c32, c64, i64, s32,
                      block_rows, operand0, strides0, operand1, strides1, operand2, strides2,
                      row_begin, row_end):
    acc = np.empty(chunk_rows * channels, np.int32)
    fval = np.empty(block_rows * channels, np.float32)
    ival = np.empty(block_rows * channels, np.int64)
    correction = 2 if sum_rows else 1
    for chunk_begin in range(row_begin, row_end, chunk_rows):
        chunk_end = min(chunk_begin + chunk_rows, row_end)
        _drive_avx2_exact(x, x_stride, depth, panels, acc, channels, channels, correction,
                          bias, zero_points, row_sums, sum_rows, chunk_begin, chunk_end, 0,
                          panel_count, chunk_begin)
        _epilogue_chunk(acc, chunk_begin, chunk_end, channels, out_bytes, program, c32, c64,
                        i64, s32, block_rows, fval, ival, operand0, strides0, operand1,
                        strides1, operand2, strides2)


_FUSED = {"vnni": _fused_vnni, "avx2_saturate": _fused_avx2_saturate,
          "avx2_exact": _fused_avx2_exact}


def chunk_rows(depth: int, channels: int, tile_rows: int) -> int:
    """Rows per chunk: the chunk's int32 accumulator within ``CHUNK_ACC_BYTES`` and its x rows
    within ``CHUNK_X_BYTES``, a whole number of register tiles (at least one)."""
    rows = min(CHUNK_ACC_BYTES // (4 * channels), CHUNK_X_BYTES // max(1, depth))
    return max(tile_rows, rows - rows % tile_rows)


def gemm_requantize_fast(x: np.ndarray, packed, x_zero_point: int, weight_zero_point,
                         method: str, epilogue, operands=None, out: np.ndarray | None = None,
                         parallel: bool | int = False) -> np.ndarray:
    """``epilogue.run(accumulate_u8s8(x, packed, x_zero_point, weight_zero_point, method),
    operands=operands)`` in one pass: the (M, N) ``epilogue.out_dtype`` result, row-major.

    ``x`` (M, padded_depth) uint8 in the packed depth layout (as ``accumulate_u8s8``);
    ``epilogue`` a compiled ``Epilogue`` for N = ``packed.output_channels`` channels;
    ``operands``: one array per run-time operand step, broadcasting to (M, N) (default: the
    arrays bound to its steps); ``out``: a C-contiguous (M, N) array to fill; ``parallel`` as in
    ``accumulate_u8s8`` (row chunks in threads; the same result).
    Raises ``UnsupportedError`` where ``accumulate_u8s8`` does (K > 33025, zero points outside
    uint8 / int8, a method this CPU lacks).
    """
    if packed.depth > MAX_CENTERED_DEPTH:
        raise UnsupportedError(f"depth {packed.depth} > {MAX_CENTERED_DEPTH}: the centered "
                               "accumulator may not fit int32; use the NumPy path")
    channels = packed.output_channels
    if epilogue.channels != channels:
        raise ShapeError(f"the epilogue is for {epilogue.channels} channels, the weights have "
                         f"{channels}")
    bias, zero_points = packed.corrections(int(x_zero_point), weight_zero_point)
    x = np.asarray(x)
    _check(x[:0], packed, method, None)  # method and x's type / depth layout (no allocation)
    if x.strides[0] < x.shape[1]:
        raise ShapeError(f"x's rows overlap (row stride {x.strides[0]})")
    rows = x.shape[0]
    out, program, slots = epilogue.output_for(rows, out, operands)
    if rows == 0:
        return out
    geometry = _GEOMETRY[method]
    x_stride = x.strides[0]
    x_flat = _flat(x, (rows - 1) * x_stride + x.shape[1])
    # zw = 0 everywhere (symmetric weights): the row-sum term zw * rowsum is 0, no sums needed
    sum_rows = bool(zero_points.any())
    row_sums = np.empty(rows + 8, np.int32)
    quantum = _VNNI_ROW_QUANTUM if method == "vnni" else geometry.rows
    panel_count = -(-channels // geometry.panel_width)
    arguments = (x_flat, x_stride, x.shape[1], packed.panels(method), channels, panel_count,
                 bias, zero_points, row_sums, sum_rows, chunk_rows(x.shape[1], channels, quantum),
                 out.reshape(-1).view(np.uint8), program, epilogue.c32, epilogue.c64,
                 epilogue.i64, epilogue.s32, epilogue.block_rows, *slots)
    driver = _FUSED[method]
    threads = numba.get_num_threads() if parallel is True else max(1, int(parallel))
    chunks = _chunks(rows, 1, geometry.rows, threads) if threads > 1 else ()
    if len(chunks) <= 1:
        driver(*arguments, 0, rows)
        return out
    # the drivers release the GIL (nogil): row chunks write disjoint rows of out
    pool = _thread_pool(threads)
    futures = [pool.submit(driver, *arguments, begin, end) for begin, end, _, _ in chunks]
    for future in futures:
        future.result()
    return out
