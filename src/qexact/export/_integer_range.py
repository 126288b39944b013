"""The reachable int32 accumulator range of a Linear or convolution, per output channel.

For every input the layer may see (every activation integer in the input dtype's range, at
every position independently; not only observed inputs), the accumulator of output channel n is

    acc = sum_k (x_k - z_x) * (w[n, k] - z_w[n])                        (exact kernels)

so its range is ``[sum_k min_x term, sum_k max_x term]`` (each term is linear in its own x_k,
extremes at ``x_k`` = qmin or qmax). Every integer in between is covered (a superset of the
reachable set: certifying over it is stronger).

Where the kernel sums raw u8 x s8 pairs in int16 with saturation (``params.pair_saturation``,
``qexact.accumulate``), the pair ``t = (k0, k1)`` contributes

    c_t(x0, x1) = (x0 - z_x) wc0 + (x1 - z_x) wc1 + sat16(p) - p,   p = x0 w0 + x1 w1

(raw weights w, centered wc = w - z_w). Pairs are disjoint, so the range is the sum of each
pair's [min c_t, max c_t]. A pair that cannot saturate (``risky_pairs`` False) is exact. For a
risky pair, for fixed x0, c_t is piecewise linear in x1 with kinks only where p crosses 32767 or
-32768; its extremes are at x1 in {0, 255} or next to a kink, so evaluating every x0 with those
few x1 gives the exact extremes. A convolution with zero padding also has padded taps: exact
contribution 0 and raw value ``pad`` (0 or z_x, ``ConvKernel.padded_tap``) inside the pair; each
risky pair's range is widened to the union over {free, first padded, second padded, both}
(a superset again; for a pair that cannot saturate a padded tap adds 0, inside its free range).
"""

from __future__ import annotations

import numpy as np

from ..engines.base import PAD_ZERO

INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1


def _exact_range(centered: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) centered weights, x - z_x in [low, high]: per column (sum of min, sum of max)."""
    a = centered * low
    b = centered * high
    return np.minimum(a, b).sum(axis=0), np.maximum(a, b).sum(axis=0)


def _pair_extremes(w0, w1, wc0, wc1, z_x: int, x0_values, x1_free: bool, x1_fixed: int,
                   exact0: bool, exact1: bool, bounds=(0, 255)) -> tuple[np.ndarray, np.ndarray]:
    """min and max of c_t over x0 in ``x0_values`` and x1 free in ``bounds`` (or ``x1_fixed``),
    for P pairs at once (w0.. are (P,) int64). ``exact0/1`` False: that tap is padded (its
    exact term is 0; its raw value still enters p)."""
    x0 = np.asarray(x0_values, dtype=np.int64)[None, :, None]                  # (1, X0, 1)
    w0, w1, wc0, wc1 = (np.asarray(v, np.int64)[:, None, None] for v in (w0, w1, wc0, wc1))
    if x1_free:
        base = x0 * w0                                                          # (P, X0, 1)
        safe = np.where(w1 == 0, 1, w1)
        candidates = [np.full_like(base, bounds[0]), np.full_like(base, bounds[1])]
        for bound in (INT16_MAX, INT16_MIN):
            kink = np.floor_divide(bound - base, safe)
            candidates += [kink, kink + 1]
        x1 = np.clip(np.concatenate(np.broadcast_arrays(*candidates), axis=2), *bounds)
    else:
        x1 = np.full((1, 1, 1), x1_fixed, dtype=np.int64)
    p = x0 * w0 + x1 * w1
    value = np.clip(p, INT16_MIN, INT16_MAX) - p
    if exact0:
        value = value + (x0 - z_x) * wc0
    if exact1:
        value = value + (x1 - z_x) * wc1
    value = np.broadcast_to(value, np.broadcast_shapes(value.shape, (w0.shape[0], 1, 1)))
    flat = value.reshape(value.shape[0], -1)
    return flat.min(axis=1), flat.max(axis=1)


def _saturated_adjustment(centered, raw_pairs, positions, risky, z_x, padded_raw,
                          bounds=(0, 255)):
    """For (K, N) centered weights, (N, T, 2) raw weight pairs laid out by ``positions`` (T, 2)
    and (N, T) risky flags: per column, (low, high) corrections to add to the exact range:
    each risky pair's exact [min, max] replaced by its saturated one. ``padded_raw``: the raw
    value of a padded tap (None: no padded taps)."""
    n_out = centered.shape[1]
    low_fix = np.zeros(n_out, np.int64)
    high_fix = np.zeros(n_out, np.int64)
    columns, pairs = np.nonzero(risky)
    if columns.size == 0:
        return low_fix, high_fix
    pos0 = positions[pairs, 0]
    pos1 = positions[pairs, 1]
    present1 = pos1 >= 0
    w0 = raw_pairs[columns, pairs, 0].astype(np.int64)
    w1 = np.where(present1, raw_pairs[columns, pairs, 1], 0).astype(np.int64)
    wc0 = centered[pos0, columns]
    wc1 = np.where(present1, centered[np.where(present1, pos1, 0), columns], 0)
    everything = np.arange(bounds[0], bounds[1] + 1)
    lows, highs = [], []
    for start in range(0, columns.size, 256):
        part = slice(start, start + 256)
        args = (w0[part], w1[part], wc0[part], wc1[part], z_x)
        variants = [_pair_extremes(*args, everything, True, 0, True, True, bounds)]
        if padded_raw is not None:
            variants += [
                _pair_extremes(*args, [padded_raw], True, 0, False, True, bounds),
                _pair_extremes(*args, everything, False, padded_raw, True, False, bounds),
                _pair_extremes(*args, [padded_raw], False, padded_raw, False, False, bounds)]
        lows.append(np.min([v[0] for v in variants], axis=0))
        highs.append(np.max([v[1] for v in variants], axis=0))
    sat_low = np.concatenate(lows)
    sat_high = np.concatenate(highs)
    # the exact range of the same pair (what _exact_range counted for it)
    exact_low = np.zeros_like(sat_low)
    exact_high = np.zeros_like(sat_high)
    for wc in (wc0, wc1):
        a, b = wc * (bounds[0] - z_x), wc * (bounds[1] - z_x)
        exact_low += np.minimum(a, b)
        exact_high += np.maximum(a, b)
    np.add.at(low_fix, columns, sat_low - exact_low)
    np.add.at(high_fix, columns, sat_high - exact_high)
    return low_fix, high_fix


def accumulator_range(op: str, params, input_bounds: tuple[int, int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, str]:
    """(acc_low, acc_high, how): the (C,) int64 bounds of the accumulator of every output
    channel of a prepared ``linear`` or ``conv`` layer over every input integer in
    ``input_bounds`` (default: the whole input dtype range)."""
    qparams = params.input_qparams
    z_x = int(qparams.zero_point)
    bounds = tuple(input_bounds or (qparams.dtype.qmin, qparams.dtype.qmax))
    x_low, x_high = bounds[0] - z_x, bounds[1] - z_x
    how = (f"every input integer in [{bounds[0]}, {bounds[1]}] at every "
           f"position: sum_k of min/max (x - z_x)(w_k - z_w)")
    if op == "linear":
        centered = np.rint(params.weight_centered_t).astype(np.int64)           # (K, N)
        low, high = _exact_range(centered, x_low, x_high)
        if params.pair_saturation:
            fix_low, fix_high = _saturated_adjustment(
                centered, params.weight_pairs, params.pair_positions, params.risky_pairs, z_x,
                None, bounds)
            low, high = low + fix_low, high + fix_high
            how += "; int16-saturating pairs bounded by their exact saturated extremes"
        return low, high, how
    groups = params.groups
    lows, highs = [], []
    padded = params.padding_mode == "zeros" and any(params.padding)
    pad_raw = (0 if params.padded_tap == PAD_ZERO else z_x) if padded else None
    for group in range(groups):
        centered = np.rint(params.weight_centered_t[group]).astype(np.int64)    # (K, OC/G)
        low, high = _exact_range(centered, x_low, x_high)
        if params.pair_saturation:
            fix_low, fix_high = _saturated_adjustment(
                centered, params.weight_pairs[group], params.pair_positions,
                params.risky_pairs[group], z_x, pad_raw, bounds)
            low, high = low + fix_low, high + fix_high
        lows.append(low)
        highs.append(high)
    if params.pair_saturation:
        how += ("; int16-saturating pairs bounded by their exact saturated extremes"
                + (f", padded taps (raw {pad_raw}) included" if padded else ""))
    if padded:
        how += "; padded taps add 0 (inside every tap's range)"
    return np.concatenate(lows), np.concatenate(highs), how
