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

import weakref

import numpy as np

from .rounding import INT16_MAX, INT16_MIN, saturate_int16

EXACT_FLOAT32_BLOCK = 256
"""Largest number of terms summed in one float32 BLAS call (256 * 255 * 255 < 2**24)."""


def exact_matmul(x_centered: np.ndarray, w_centered_t: np.ndarray) -> np.ndarray:
    """``x_centered @ w_centered_t`` exactly, as int64.

    ``x_centered`` (M, K) and ``w_centered_t`` (K, N) are float32 arrays holding integers of
    magnitude <= 255 (zero points already subtracted). K is cut in blocks of
    ``EXACT_FLOAT32_BLOCK`` terms, or, for M >= 32 (where planning once per weight array pays),
    in the fewer, longer blocks ``cached_block_starts(w, 255)`` proves exact; each block's
    float32 product is exact and is added into the int64 total by a float64 add (exact).
    """
    depth = x_centered.shape[-1]
    if depth <= EXACT_FLOAT32_BLOCK:
        return (x_centered @ w_centered_t).astype(np.int64)
    starts = None
    if x_centered.shape[0] >= 32:
        starts = cached_block_starts(w_centered_t, 255)
    if starts is None:
        starts = range(0, depth, EXACT_FLOAT32_BLOCK)
    bounds = list(starts) + [depth]
    total = None
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = x_centered[:, start:stop] @ w_centered_t[start:stop]
        if total is None:
            total = block.astype(np.int64)
        else:
            np.add(total, block, out=total, casting="unsafe")   # float64 add of integers, exact
    return total


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


# --- the NumPy path's fast forms (issue 13): same integers, fewer passes ----------------------

FLOAT32_EXACT_INTEGERS = 1 << 24
"""Every integer of magnitude <= 2**24 is a float32."""

INT32_LIMIT = 1 << 31


def exact_block_starts(weights: np.ndarray, input_bound: int) -> tuple[int, ...] | None:
    """Where to cut K so that one float32 BLAS call per block is exact: ``(0, b1, b2, ...)``,
    or None when even the int32 total may overflow (then ``exact_matmul``'s float64 sum runs).

    ``weights`` (K, N) or (G, K, N) hold centered integers, ``input_bound`` bounds ``|x - z_x|``
    (``max(z_x, 255 - z_x)`` for uint8). Any partial sum BLAS forms over a block, in any order
    and with any FMA contraction, is a sum of a subset of its terms, so its magnitude is at
    most ``input_bound * sum_k |w[k, n]|`` over the block: blocks are grown while that stays
    below 2**24, where every integer is a float32 and so every operation is exact. A single
    column's weight over one k may alone exceed it only if ``input_bound * 255 >= 2**24``,
    impossible. The same bound over all of K gives the int32 total's bound.
    """
    magnitude = np.abs(np.asarray(weights, dtype=np.float64))
    if magnitude.ndim == 2:
        magnitude = magnitude[None]
    depth = magnitude.shape[1]
    prefix = np.zeros((magnitude.shape[0], depth + 1, magnitude.shape[2]))
    np.cumsum(magnitude, axis=1, out=prefix[:, 1:])
    bound = max(int(input_bound), 1)
    if prefix.size and bound * prefix[:, -1].max() >= INT32_LIMIT:
        return None
    limit = (FLOAT32_EXACT_INTEGERS - 1) / bound
    starts = [0]
    while depth and starts[-1] < depth:
        start = starts[-1]
        reach = (prefix[:, start + 1:] - prefix[:, start:start + 1]).max(axis=(0, 2))
        stop = start + int(np.searchsorted(reach, limit, side="right"))  # reach is sorted
        starts.append(max(stop, start + 1))
    return tuple(starts[:-1]) if depth else (0,)


_BLOCK_PLANS: dict[tuple[int, int], tuple[weakref.ref, tuple[int, ...] | None]] = {}


def cached_block_starts(weights: np.ndarray, input_bound: int) -> tuple[int, ...] | None:
    """``exact_block_starts`` remembered per weight array (while it lives)."""
    key = (id(weights), int(input_bound))
    entry = _BLOCK_PLANS.get(key)
    if entry is not None and entry[0]() is weights:
        return entry[1]
    plan = exact_block_starts(weights, input_bound)
    _BLOCK_PLANS[key] = (weakref.ref(weights, lambda _, key=key: _BLOCK_PLANS.pop(key, None)),
                         plan)
    return plan


def exact_grouped_matmul(columns: np.ndarray, weights: np.ndarray,
                         input_bound: int = 255,
                         block_starts: tuple[int, ...] | None | str = "plan") -> np.ndarray:
    """``columns[g] @ weights[g]`` for every group, exactly, as (M, G * N) int32 (group-major
    columns: output channel ``g * N + n``); int64 when the int32 bound does not hold.

    ``columns`` (G, M, K) and ``weights`` (G, K, N) float32 hold centered integers, ``|columns|
    <= input_bound``. K is cut by ``block_starts`` (default: ``cached_block_starts``): each
    block's float32 product is exact (its partial sums are integers below 2**24); blocks are
    summed into int32 by a float64 add (exact: integers below 2**53) cast back, exact because
    the whole sum is below 2**31 by the same bound. One ``np.matmul`` per block for all groups.
    """
    groups, rows, depth = columns.shape
    width = weights.shape[2]
    if isinstance(block_starts, str):
        block_starts = cached_block_starts(weights, input_bound)
    if block_starts is None:
        return np.concatenate([exact_matmul(columns[g], weights[g]) for g in range(groups)],
                              axis=1)
    bounds = list(block_starts) + [depth]
    acc = None
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if groups == 1:
            block = columns[0, :, start:stop] @ weights[0, start:stop]     # (M, N)
        else:
            block = np.matmul(columns[:, :, start:stop], weights[:, start:stop])  # (G, M, N)
            block = block.transpose(1, 0, 2).reshape(rows, groups * width)
        if acc is None:
            acc = block.astype(np.int32)
        else:
            np.add(acc, block, out=acc, casting="unsafe")                  # float64 add, exact
    if acc is None:
        acc = np.zeros((rows, groups * width), np.int32)
    return acc


def exact_depthwise(padded: np.ndarray, weights: np.ndarray, kernel, stride, dilation,
                    out) -> np.ndarray:
    """A depthwise convolution's exact accumulator, (N * out_positions, C) int32, without
    im2col: ``acc[m, c] = sum_tap window_tap[m, c] * weights[tap, c]``.

    ``padded`` (N, *padded_spatial, C) float32 centered inputs (``x - z_x``, padding 0),
    ``weights`` (taps, C) float32 centered weights, taps in ``tap_offsets`` order. Exact in
    float32: every partial sum is an integer of magnitude at most ``255 * sum_tap |w|``, below
    2**24 for ``taps * 255 * 255 < 2**24`` (258 taps); checked, else int64 sums.
    """
    from .ops._window import tap_windows

    windows = tap_windows(padded, kernel, stride, dilation, out)
    channels = padded.shape[-1]
    bound = np.abs(weights.astype(np.float64)).sum(axis=0).max(initial=0) * 255
    if bound >= FLOAT32_EXACT_INTEGERS:
        total = np.zeros(windows[0].shape, np.int64)
        for window, weight in zip(windows, weights):
            total += window.astype(np.int64) * weight.astype(np.int64)
        return total.reshape(-1, channels).astype(np.int32)
    total = np.multiply(windows[0], weights[0])
    term = np.empty_like(total)
    for window, weight in zip(windows[1:], weights[1:]):
        np.multiply(window, weight, out=term)
        total += term
    return total.reshape(-1, channels).astype(np.int32)


def depthwise_pair_saturation_correction(raw_padded: np.ndarray, weight_pairs: np.ndarray,
                                         risky_pairs: np.ndarray, positions: np.ndarray,
                                         kernel, stride, dilation, out) -> np.ndarray:
    """``pair_saturation_correction`` of a depthwise convolution (one input channel per
    output channel), (N * out_positions, C) int32, for every channel at once.

    ``raw_padded`` (N, *padded_spatial, C) raw uint8 inputs, padded as the kernel pads raw
    values; ``weight_pairs`` (C, T, 2) raw int8 weights as paired by ``positions`` (T, 2) (a
    group's row is its taps, so a position is a tap; -1 pads with zero); ``risky_pairs`` (C, T).
    A pair sum is at most ``2 * 255 * 128`` in magnitude (int32 exact); ``sat16(p) - p`` is 0
    where ``p`` does not saturate, so every channel may be formed.
    """
    from .ops._window import tap_windows

    windows = tap_windows(raw_padded, kernel, stride, dilation, out)
    channels = raw_padded.shape[-1]
    correction = np.zeros(windows[0].shape, np.int32)
    for pair in np.flatnonzero(risky_pairs.any(axis=0)):
        pair_sum = np.zeros(windows[0].shape, np.int32)
        for side in range(2):
            tap = int(positions[pair, side])
            if tap >= 0:
                pair_sum += windows[tap].astype(np.int32) * weight_pairs[:, pair, side].astype(
                    np.int32)
        correction += np.clip(pair_sum, INT16_MIN, INT16_MAX) - pair_sum
    return correction.reshape(-1, channels)


def as_int32_if_it_fits(acc: np.ndarray) -> np.ndarray:
    """``acc`` as int32 where every value fits (the kernel's own accumulator type), else as is."""
    if acc.dtype == np.int32 or (acc.size and (acc.min() < -INT32_LIMIT or acc.max() >= INT32_LIMIT)):
        return acc
    return acc.astype(np.int32)


def centered_bound(dtype, zero_point: int) -> int:
    """The largest ``|x - z_x|`` over the values of the activations' integer ``dtype``."""
    limits = np.iinfo(dtype)
    return max(zero_point - int(limits.min), int(limits.max) - zero_point)
