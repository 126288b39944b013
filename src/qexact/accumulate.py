"""Integer dot products, exactly, at BLAS speed; and the int16 pair saturation of ``vpmaddubsw``.

Reference semantics (docs/arithmetic.md eq. 5):

    acc[m, n] = sum_k (x[m, k] - zx) * (w[n, k] - zw[n])          exact integer

NumPy's integer matmul is ~400x slower than BLAS, so ``exact_matmul`` runs float32 BLAS on
blocks of at most ``EXACT_FLOAT32_BLOCK`` terms. Bound: |x - zx| <= 255 and |w - zw| <= 255, so a
term is at most 65025 < 2**16 (exact in float32) and a block's partial sums, in whatever order
and with whatever FMA contraction BLAS uses, stay below 256 * 65025 = 16,646,400 < 2**24, where
every integer is a float32. Blocks are summed in float64, exact below 2**53 (K < 1.3e11).
``tests/test_accumulate.py`` holds it equal to an int64 loop.

Pair saturation (AVX2 and AVX512 without VNNI; FBGEMM ``src/GenerateKernelU8S8S32ACC32.cc``,
``GenerateI8Depthwise.cc``): ``vpmaddubsw`` multiplies *raw* uint8 activations by int8 weights and
adds adjacent products into an int16 with saturation, so the raw dot product is

    acc_raw = sum_t sat16(x[2t] * w[2t] + x[2t+1] * w[2t+1])          (pairs (0,1), (2,3), ...)

and the zero points are corrected exactly afterwards. Hence
``acc = exact_acc + sum_t (sat16(p_t) - p_t)``, which ``pair_saturation_correction`` computes.
"""

from __future__ import annotations

import numpy as np

from .rounding import saturate_int16

EXACT_FLOAT32_BLOCK = 256
"""Largest number of terms summed in one float32 BLAS call (256 * 255 * 255 < 2**24)."""


def exact_matmul(x_centered: np.ndarray, w_centered_t: np.ndarray) -> np.ndarray:
    """``x_centered @ w_centered_t`` exactly, as int64.

    ``x_centered`` (M, K) and ``w_centered_t`` (K, N) are float32 arrays holding integers of
    magnitude <= 255 (zero points already subtracted).
    """
    depth = x_centered.shape[-1]
    if depth <= EXACT_FLOAT32_BLOCK:
        return (x_centered @ w_centered_t).astype(np.int64)
    total = np.zeros((x_centered.shape[0], w_centered_t.shape[1]), dtype=np.float64)
    for start in range(0, depth, EXACT_FLOAT32_BLOCK):
        stop = start + EXACT_FLOAT32_BLOCK
        total += x_centered[:, start:stop] @ w_centered_t[start:stop]
    return total.astype(np.int64)


def reference_matmul(x_centered: np.ndarray, w_centered_t: np.ndarray) -> np.ndarray:
    """The plain int64 definition of ``exact_matmul`` (slow; for tests and explain)."""
    return x_centered.astype(np.int64) @ w_centered_t.astype(np.int64)


def saturating_weight_pairs(weight_pairs: np.ndarray) -> np.ndarray:
    """Which (row, pair) of int8 weights can saturate for *some* uint8 input: (N, T) bool.

    ``weight_pairs`` is (N, T, 2) integers. A pair sum x0*w0 + x1*w1 over x in [0, 255] reaches
    ``255 * (w0+ + w1+)`` at most and ``255 * (w0- + w1-)`` at least.
    """
    positive = np.clip(weight_pairs, 0, None).sum(axis=-1).astype(np.int64) * 255
    negative = np.clip(weight_pairs, None, 0).sum(axis=-1).astype(np.int64) * 255
    return (positive > 32767) | (negative < -32768)


def pair_saturation_correction(x_raw: np.ndarray, weight_pairs: np.ndarray,
                               risky_pairs: np.ndarray,
                               positions: np.ndarray | None = None) -> np.ndarray:
    """``sum_t (sat16(p_t) - p_t)`` for every (m, n): what int16 pair saturation takes away.

    ``x_raw`` (M, K) raw uint8 activations; ``weight_pairs`` (N, T, 2) raw int8 weights laid out
    by ``positions`` (default: one K block); ``risky_pairs`` from ``saturating_weight_pairs``.
    Returns (M, N) int64.
    Only (m, t) with ``x0 + x1 > 256`` can reach |p| > 32767 (|w| <= 128), so only those are formed.
    """
    correction = np.zeros((x_raw.shape[0], weight_pairs.shape[0]), dtype=np.int64)
    if not risky_pairs.any():
        return correction
    if positions is None:
        positions = pair_positions(x_raw.shape[1])
    x_pairs = gather_pairs(x_raw, positions)
    candidate = x_pairs.sum(axis=-1) > 256                        # (M, T)
    candidate &= risky_pairs.any(axis=0)[None, :]
    for pair in np.flatnonzero(candidate.any(axis=0)):
        rows = np.flatnonzero(candidate[:, pair])
        columns = np.flatnonzero(risky_pairs[:, pair])
        weights = weight_pairs[columns, pair].astype(np.int32)      # (C, 2)
        pair_sum = (x_pairs[rows, pair, 0][:, None] * weights[None, :, 0]
                    + x_pairs[rows, pair, 1][:, None] * weights[None, :, 1])
        correction[np.ix_(rows, columns)] += saturate_int16(pair_sum) - pair_sum
    return correction


def pair_positions(depth: int, block_starts: tuple[int, ...] = (0,)) -> np.ndarray:
    """The K positions ``vpmaddubsw`` pairs: (T, 2) int64, -1 where a pair is padded with zero.

    Pairs are formed from the start of each K block: ``(b, b+1), (b+2, b+3), ...``; a block of
    odd length leaves its last element paired with padding. One block is FBGEMM's layout.
    """
    bounds = list(block_starts) + [depth]
    positions = []
    for begin, end in zip(bounds[:-1], bounds[1:]):
        first = np.arange(begin, end, 2)
        second = first + 1
        second[second >= end] = -1
        positions.append(np.stack([first, second], axis=1))
    if not positions:
        return np.zeros((0, 2), dtype=np.int64)
    return np.concatenate(positions).astype(np.int64)


def gather_pairs(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(R, K) integers as (R, T, 2) int32 laid out by ``positions`` (padding reads as 0)."""
    padded = np.concatenate([values.astype(np.int32), np.zeros((values.shape[0], 1), np.int32)],
                            axis=1)
    return padded[:, positions]  # index -1 reads the zero column


def weight_pairs_of(weight: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
    """Raw int8 weights (N, K) as (N, T, 2) int32: the ``vpmaddubsw`` pairs (one K block by default)."""
    if positions is None:
        positions = pair_positions(weight.shape[1])
    return gather_pairs(weight, positions)
