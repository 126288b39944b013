"""Integer-only requantization, certified per layer (issue 12, item 4; Interface B).

For every ``linear`` and ``conv`` node of a prepared ``Net`` we look, per output channel c, for

    q = clamp((acc * M[c] + B[c]) >> s[c], low, high)          int64, ">>" = floor(. / 2**s)

equal to the engine's float32 pipeline ``params.requantization`` (``requantize(acc, steps)``)
for EVERY accumulator value the layer can produce, and prove it.

The argument (what ``certified`` means):

1. Range. ``acc`` lies in [acc_low[c], acc_high[c]] for every input in the input dtype's range
   (``_integer_range``: sum over k of the min/max of (x - z_x)(w_k - z_w); int16-saturating pairs
   bounded by their exact saturated extremes; padded conv taps included). An int32 bias that
   enters the accumulator (``AddInt32``) is a step of the pipeline, not part of the range.
2. Monotone engine. Every step type is monotone non-decreasing in its input under a condition
   (``_integer_steps.TABLE``: float32 rounding is monotone; fmaf(a, b, v) = RN(v + a*b) is; a
   multiply by f >= 0 is; clamps are; rint is while the result fits its integer type; an int32
   add is while it does not wrap). Constant conditions are checked per channel (a negative
   factor is refused); domain conditions (no wrap, fits int32, finite floats) are checked at the
   two ends of the range, which suffices: by induction every value entering a step lies between
   its values at the ends, and each domain is an interval. A step without an argument (one that
   reads another run-time tensor, or an unknown type) makes the layer uncertified, with the
   reason. So the engine F is a non-decreasing integer function on the range.

       Step                     why non-decreasing in v            checked
       AddInt32                 v + term, exact                    no wrap at either end
       ToFloat32                RN(v)                              -
       FusedMultiplyAdd         RN(v + a*b): v plus a constant     finite ends
       AddFloat32               RN(v + term)                       finite ends
       MultiplyFloat32          RN(v * f)                          f >= 0, finite ends
       DivideFloat32            RN(v / d)                          d > 0, finite ends
       MultiplyAddFloat32       RN(v*f + t) / RN(RN(v*f) + t)      f >= 0, finite ends
       MultiplyFloat64,
       ScaleToFloat32           RN32(RN64(v * f))                  f >= 0, finite ends
       ClampFloat32, MinFloat32 min/max with constants             finite ends (no NaN)
       RoundHalfEvenToInt32     rint                               result fits int32 at both ends
       RoundHalfEvenToInt64     rint, clip to +-2**62              finite ends
       RoundHalfEvenLrint       rint                               fits int64 at both ends
       AddInt, ClampInt         v + c, clamp                       -
       MultiplyInt              v * f (exact)                      f >= 0
       RoundingShiftRightInt32  round-half-away(v / 2**s)          s < 32, v fits int32
       AddResidualFloat32, AddOperandFloat32, MultiplyOperandFloat32: refused (they read a
       second run-time tensor); any other step type: refused.
3. Thresholds. A non-decreasing integer function G on [lo, hi] with values in [low, high] is
   G(a) = low + #{k in (low, high] : t_k <= a}, with t_k = min{a in [lo, hi] : G(a) >= k}
   (hi + 1 if none). F's thresholds are found by bisection with the real pipeline (exact: F is
   monotone). Q = clamp(floor((a M + B) / 2**s), low, high) with M > 0 is non-decreasing with
   thresholds ceil((k 2**s - B) / M) clipped to [lo, hi + 1] (closed form). We check F(lo) >=
   low and F(hi) <= high; then equal threshold vectors imply F = Q on the whole range.
4. Search. For a given s, "Q's thresholds equal t" is a set of linear inequalities in (M, B):
   k 2**s - t_k M <= B (where t_k <= hi) and B <= k 2**s - (t_k - 1) M - 1 (where t_k > lo).
   For fixed M the feasible B form an interval [max L(M), min U(M)]; h(M) = min U - max L is
   concave (a min of lines minus a max of lines), so its maximum over integer M is found by
   bisection on the sign of h(M + 1) - h(M); s is feasible iff that maximum is >= 0. Feasible at
   s implies feasible at s + 1 ((2M, 2B) gives the same floor), so the smallest s is found by
   bisection too (capped so that |acc| M + |B| < 2**60: int64 math never overflows).
5. Belt and braces: the integer formula and ``requantize`` are also compared on every
   accumulator value where the layer's ranges total at most 2**22 values, else on each
   channel's ends, thresholds +-1 and random samples (seeded); any difference withdraws the
   certificate.

Not certifiable (no (M, B, s) fits, or a step without an argument): the closest choice (over
every shift, the M maximizing h with B mid-interval; of those, the one with the fewest differing
accumulator values, counted exactly from the two threshold vectors) with ``worst_case`` and
``mismatch_rate``: exhaustive where the range is small, else exact over the whole range from the
two threshold vectors where the pipeline is monotone, else measured on the stated sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import requantize as rq
from ..errors import UnsupportedError
from ..jsonable import JsonDocument
from ._integer_range import accumulator_range
from ._integer_steps import OPERAND_STEPS, TABLE, constant_refusal, domain_refusal

GEMM_OPS = ("linear", "conv")
EXHAUSTIVE_LIMIT = 1 << 22
"""Largest total number of accumulator values (over a layer's channels) checked exhaustively."""
SAMPLES = 4096
"""Random accumulator values per channel in the sampled check (plus ends and thresholds +-1)."""
VALUE_BOUND = 1 << 60
"""|k 2**s|, |acc M| and |B| stay below this: int64 arithmetic cannot overflow."""
MAX_SHIFT = 50
SEED = 12


@dataclass(frozen=True)
class IntegerRequantization:
    """``out = clamp((acc * multiplier + offset) >> shift, low, high)`` per output channel c
    (the last axis of ``acc``); acc is the int32 accumulator before any bias; int64 math."""

    multiplier: np.ndarray
    offset: np.ndarray
    shift: np.ndarray
    low: int
    high: int
    acc_low: np.ndarray
    acc_high: np.ndarray
    certified: np.ndarray
    proof: str
    worst_case: int
    mismatch_rate: float
    thresholds: np.ndarray | None = None
    """(C, high - low) int32: the engine's own thresholds t_k (non-decreasing in k), where the
    pipeline is proved monotone on every channel: ``out = low + #{k : t_k <= acc}`` equals the
    engine on the whole range by step 3 of the argument (exact whatever the affine search found;
    the fallback of ``form`` "thresholds")."""

    @property
    def form(self) -> str:
        """``"affine"`` (M, B, s certified on every channel), ``"thresholds"`` (not affine, but
        the threshold table is exact) or ``"closest"`` (neither: the closest affine choice)."""
        if np.all(self.certified):
            return "affine"
        return "thresholds" if self.thresholds is not None else "closest"

    @property
    def exact(self) -> bool:
        return self.form != "closest"

    def apply(self, acc) -> np.ndarray:
        """The integer form on ``acc`` (int64, channels on the last axis): the affine formula,
        or the threshold count where only that is exact."""
        if self.form == "thresholds":
            return apply_thresholds(acc, self.thresholds, self.low)
        return apply_integer(acc, self.multiplier, self.offset, self.shift, self.low, self.high)


@dataclass(frozen=True)
class LayerCertificate(JsonDocument):
    """One GEMM layer's certificate: how many channels are exact over their whole range
    [acc_low, acc_high] (min/max over the channels). A layer that has no integer
    requantization at all (a float32 output) has ``requantization`` None, the reason in
    ``proof``, ``worst_case`` -1 (unknown) and ``mismatch_rate`` 1.0."""

    name: str
    op: str
    engine: str
    isa: str
    certified: int
    channels: int
    acc_low: int
    acc_high: int
    proof: str
    worst_case: int
    mismatch_rate: float
    requantization: IntegerRequantization | None = None
    table: str = ""
    """A node that is not a GEMM, described by ``qexact.export.tables`` (its type name): exact by
    construction (the table or map was checked exhaustively where it was built)."""

    @property
    def exact(self) -> bool:
        """Certified exact with one multiplier, offset and shift per channel."""
        return self.channels > 0 and self.certified == self.channels

    @property
    def exact_by_thresholds(self) -> bool:
        """Not affine, but exact with the threshold table (``IntegerRequantization.form``)."""
        return (not self.exact and self.requantization is not None
                and self.requantization.form == "thresholds")

    def __str__(self) -> str:
        if self.table:
            return f"exact by construction ({self.table})"
        if self.exact:
            return f"exact (certified over [{self.acc_low}, {self.acc_high}])"
        if self.requantization is None:
            return f"not certified: {self.proof}"
        closest = (f"worst case {self.worst_case}, mismatch rate {self.mismatch_rate:.3g} "
                   f"({self.certified}/{self.channels} channels exact over "
                   f"[{self.acc_low}, {self.acc_high}])")
        if self.exact_by_thresholds:
            return f"exact with the threshold table (the closest multiplier: {closest})"
        return f"closest: {closest}"

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "engine": self.engine, "isa": self.isa,
                "certified_channels": self.certified, "channels": self.channels,
                "acc_low": self.acc_low, "acc_high": self.acc_high, "exact": self.exact,
                "exact_by_thresholds": self.exact_by_thresholds, "table": self.table,
                "worst_case": self.worst_case, "mismatch_rate": self.mismatch_rate,
                "verdict": str(self), "proof": self.proof}


def apply_integer(acc, multiplier, offset, shift, low: int, high: int) -> np.ndarray:
    """``clamp((acc * multiplier + offset) >> shift, low, high)`` in int64."""
    acc = np.asarray(acc, dtype=np.int64)
    value = (acc * np.asarray(multiplier, np.int64) + np.asarray(offset, np.int64)) \
        >> np.asarray(shift, np.int64)
    return np.clip(value, low, high)


def apply_thresholds(acc, thresholds, low: int) -> np.ndarray:
    """``low + #{k : thresholds[c, k] <= acc}`` per output channel c (the last axis of acc)."""
    acc = np.asarray(acc, dtype=np.int64)
    table = np.asarray(thresholds, np.int64)
    count = np.zeros(acc.shape, np.int64)
    for c in range(table.shape[0]):
        count[..., c] = np.searchsorted(table[c], acc[..., c], side="right")
    return low + count


def _engine(steps, acc: np.ndarray) -> np.ndarray:
    """The engine's output (int64) for int64 ``acc`` (channels last)."""
    value = acc
    with np.errstate(over="ignore", invalid="ignore"):
        for step in steps:
            value = step.apply(value)
    return np.asarray(value).astype(np.int64)


def _trace_ends(steps, lo: np.ndarray, hi: np.ndarray) -> list[tuple[rq.Step, np.ndarray,
                                                                      np.ndarray]]:
    """[(step, value entering it, value leaving it)] at acc = (lo, hi), each (2, C)."""
    value = np.stack([lo, hi]).astype(np.int64)
    trace = []
    with np.errstate(over="ignore", invalid="ignore"):
        for step in steps:
            # a run-time operand is unknown here (the step is refused anyway): passed through
            after = value if isinstance(step, OPERAND_STEPS) else step.apply(value)
            trace.append((step, value, after))
            value = after
    return trace


def _monotone(steps, lo, hi, channels: int) -> tuple[np.ndarray, list[str]]:
    """(channels where the pipeline is proved monotone on [lo, hi], the reasons it is not)."""
    ok = np.ones(channels, bool)
    reasons = []
    for step, before, after in _trace_ends(steps, lo, hi):
        for bad, why in (constant_refusal(step, channels),
                         domain_refusal(step, np.broadcast_to(before, (2, channels)),
                                        np.broadcast_to(after, (2, channels)))):
            if bad.any():
                ok &= ~bad
                reasons.append(f"{why} ({int(bad.sum())} channels)")
    return ok, reasons


def _thresholds(steps, lo, hi, levels: np.ndarray) -> np.ndarray:
    """(K, C): per level k, the smallest acc in [lo, hi] with F(acc) >= k (hi + 1 if none),
    by bisection (F monotone); invariant F(a) < k <= F(b), F(lo - 1) = -inf, F(hi + 1) = +inf."""
    shape = (levels.size, lo.size)
    a = np.broadcast_to(lo - 1, shape).copy()
    b = np.broadcast_to(hi + 1, shape).copy()
    k = levels[:, None]
    while True:
        open_ = b - a > 1
        if not open_.any():
            return b
        middle = np.where(open_, (a + b) // 2, np.minimum(np.maximum(a, lo), hi))
        reached = _engine(steps, middle) >= k
        b = np.where(open_ & reached, middle, b)
        a = np.where(open_ & ~reached, middle, a)


def integer_thresholds(levels, multiplier, offset, shift, lo, hi) -> np.ndarray:
    """(K, C): Q's thresholds ceil((k 2**s - B) / M) clipped to [lo, hi + 1] (exact, Python
    integers: no overflow whatever the constants)."""
    out = np.empty((len(levels), len(lo)), np.int64)
    for c in range(len(lo)):
        m, b, s = int(multiplier[c]), int(offset[c]), int(shift[c])
        for i, k in enumerate(levels):
            t = -((b - (int(k) << s)) // m)          # ceil((k 2**s - B) / M)
            out[i, c] = min(max(t, int(lo[c])), int(hi[c]) + 1)
    return out


def _integer_thresholds_bounded(levels, multiplier, offset, shift, lo, hi) -> np.ndarray:
    """``integer_thresholds`` in int64, for constants from the search (|B|, |k 2**s| < 2**60)."""
    t = -((offset[None, :] - (levels[:, None] << shift[None, :])) // multiplier[None, :])
    return np.clip(t, lo[None, :], hi[None, :] + 1)


# --- the search --------------------------------------------------------------------------------


class _Bounds:
    """The linear constraints of one shift per channel: L_k(M) = k 2**s - t_k M where t_k <= hi,
    U_k(M) = k 2**s - (t_k - 1) M - 1 where t_k > lo."""

    def __init__(self, t, levels, lo, hi, shift):
        self.t = t
        self.scaled = levels[:, None] << shift[None, :]
        self.lower = t <= hi
        self.upper = t > lo

    def evaluate(self, multiplier):
        lower = np.where(self.lower, self.scaled - self.t * multiplier, -VALUE_BOUND).max(axis=0)
        upper = np.where(self.upper, self.scaled - (self.t - 1) * multiplier - 1,
                         VALUE_BOUND).min(axis=0)
        return lower, upper

    def h(self, multiplier):
        lower, upper = self.evaluate(multiplier)
        return upper - lower


def _multiplier_cap(t, levels, lo, hi, shift) -> np.ndarray:
    """Largest M to try: the bound from the first lower and the last upper constraint (any
    feasible M obeys it), and the int64 headroom."""
    magnitude = np.maximum(np.abs(lo), np.abs(hi) + 1) + 1
    headroom = (VALUE_BOUND // 4) // magnitude
    lower_rows = np.where((t <= hi).any(axis=0), np.argmax(t <= hi, axis=0), -1)
    upper_any = (t > lo).any(axis=0)
    upper_rows = np.where(upper_any, len(levels) - 1 - np.argmax((t > lo)[::-1], axis=0), -1)
    columns = np.arange(t.shape[1])
    t_a = t[np.maximum(lower_rows, 0), columns]
    t_b = t[np.maximum(upper_rows, 0), columns]
    gap = t_b - t_a - 1
    useful = (lower_rows >= 0) & (upper_rows > lower_rows) & (gap > 0)
    span = (upper_rows - lower_rows).astype(np.int64)
    with np.errstate(over="ignore"):
        bound = np.where(useful, ((span << shift) - 1) // np.where(useful, gap, 1), headroom)
    return np.clip(np.minimum(bound, headroom), 1, None)


def _best_multiplier(t, levels, lo, hi, shift):
    """Per channel at its ``shift``: (M maximizing h, h there, max L, min U)."""
    bounds = _Bounds(t, levels, lo, hi, shift)
    a = np.ones(lo.size, np.int64)
    b = _multiplier_cap(t, levels, lo, hi, shift)
    while (a < b).any():
        middle = (a + b) // 2
        falling = bounds.h(middle + 1) <= bounds.h(middle)
        b = np.where((a < b) & falling, middle, b)
        a = np.where((a < b) & ~falling, middle + 1, a)
    lower, upper = bounds.evaluate(a)
    return a, upper - lower, lower, upper


def _max_shift(lo, hi) -> np.ndarray:
    magnitude = np.maximum(np.abs(lo), np.abs(hi) + 1) + 1
    bits = np.floor(np.log2(VALUE_BOUND // 4 // magnitude)).astype(np.int64)
    return np.clip(np.minimum(bits, MAX_SHIFT), 0, MAX_SHIFT)


def _search(t, levels, lo, hi):
    """(M, B, s, feasible) per channel: the smallest feasible shift, by bisection over s."""
    top = _max_shift(lo, hi)
    a = np.zeros(lo.size, np.int64)
    b = top.copy()
    while (a < b).any():
        middle = (a + b) // 2
        _, h, _, _ = _best_multiplier(t, levels, lo, hi, middle)
        fits = h >= 0
        b = np.where((a < b) & fits, middle, b)
        a = np.where((a < b) & ~fits, middle + 1, a)
    multiplier, h, lower, upper = _best_multiplier(t, levels, lo, hi, a)
    feasible = h >= 0
    offset = _offset(lower, upper)
    if not feasible.all():
        _closest(t, levels, lo, hi, ~feasible, top, multiplier, offset, a)
    return multiplier, offset, a, feasible


def _offset(lower, upper):
    """B: mid-interval where both ends exist, else the one that does."""
    has_lower = lower > -VALUE_BOUND
    has_upper = upper < VALUE_BOUND
    return np.where(has_lower & has_upper, lower + (upper - lower) // 2,
                    np.where(has_lower, lower, upper))


def _closest(t, levels, lo, hi, wanted, top, multiplier, offset, shift) -> None:
    """For the channels ``wanted`` (no exact fit): the (M, B, s), over every shift up to ``top``
    (M maximizing h, B mid-interval), with the fewest accumulator values that differ (counted
    exactly from the thresholds); updates the arrays in place."""
    columns = np.flatnonzero(wanted)
    t, lo, hi, top = t[:, columns], lo[columns], hi[columns], top[columns]
    best = _mismatch_from_thresholds(t, _integer_thresholds_bounded(
        levels, multiplier[columns], offset[columns], shift[columns], lo, hi), lo, hi)[0]
    for candidate_shift in range(MAX_SHIFT + 1):
        trial_shift = np.minimum(np.full(columns.size, candidate_shift), top)
        trial_m, _, lower, upper = _best_multiplier(t, levels, lo, hi, trial_shift)
        trial_b = _offset(lower, upper)
        count = _mismatch_from_thresholds(t, _integer_thresholds_bounded(
            levels, trial_m, trial_b, trial_shift, lo, hi), lo, hi)[0]
        fewer = count < best
        best = np.where(fewer, count, best)
        for array, value in ((multiplier, trial_m), (offset, trial_b), (shift, trial_shift)):
            array[columns[fewer]] = value[fewer]


# --- certification -----------------------------------------------------------------------------


def _gemm_params(net, name):
    item = net.prepared_node(name)
    if item.node.op not in GEMM_OPS:
        raise UnsupportedError(f"integer requantization is for {list(GEMM_OPS)} nodes; node "
                               f"{name!r} is {item.node.op!r}")
    params = item.params
    if params.output_qparams is None:
        raise UnsupportedError(f"node {name!r} ({item.node.op}) ends in float32: there is no "
                               f"integer output to requantize to")
    return item.node.op, params


def _output_clamp(params) -> tuple[int, int]:
    """The output range; a fused ReLU raises ``low`` to the output zero point."""
    dtype = params.output_qparams.dtype
    low = int(params.output_qparams.zero_point) if params.relu else dtype.qmin
    return low, dtype.qmax


def _mismatch_from_thresholds(t_engine, t_integer, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (number of acc in [lo, hi] where F != Q, max |F - Q|), exactly, from the two
    threshold vectors of monotone F and Q (both = low + #{k : t_k <= acc})."""
    count = np.zeros(lo.size, np.int64)
    worst = np.zeros(lo.size, np.int64)
    for c in range(lo.size):
        te, ti = np.sort(t_engine[:, c]), np.sort(t_integer[:, c])
        points = np.unique(np.concatenate([[lo[c], hi[c] + 1], te, ti]))
        points = points[(points >= lo[c]) & (points <= hi[c] + 1)]
        difference = (np.searchsorted(te, points[:-1], "right")
                      - np.searchsorted(ti, points[:-1], "right"))
        lengths = np.diff(points)
        count[c] = int(lengths[difference != 0].sum())
        worst[c] = int(np.abs(difference).max()) if difference.size else 0
    return count, worst


def _check_points(lo, hi, t_engine, rng) -> list[np.ndarray]:
    """Per channel: ends, thresholds +-1 and random samples inside [lo, hi]."""
    points = []
    for c in range(lo.size):
        own = np.concatenate([[lo[c], hi[c]], t_engine[:, c] - 1, t_engine[:, c],
                              t_engine[:, c] + 1, rng.integers(lo[c], hi[c] + 1, SAMPLES)])
        points.append(np.unique(np.clip(own, lo[c], hi[c])))
    return points


def _compare(steps, formula, lo, hi, points=None):
    """Compare engine and formula on every acc of each channel's range (``points`` None) or on
    the given per-channel points: (values compared, mismatches per channel, worst per channel)."""
    channels = lo.size
    mismatches = np.zeros(channels, np.int64)
    worst = np.zeros(channels, np.int64)
    compared = 0
    if points is None:
        width = int((hi - lo).max()) + 1
        for start in range(0, width, 1 << 16):
            offsets = np.arange(start, min(start + (1 << 16), width))[:, None]
            acc = lo[None, :] + offsets
            valid = acc <= hi[None, :]
            acc = np.minimum(acc, hi[None, :])
            difference = np.where(valid, np.abs(_engine(steps, acc) - formula(acc)), 0)
            mismatches += (difference != 0).sum(axis=0)
            worst = np.maximum(worst, difference.max(axis=0))
            compared += int(valid.sum())
        return compared, mismatches, worst
    length = max(len(p) for p in points)
    acc = np.stack([np.pad(p, (0, length - len(p)), mode="edge") for p in points], axis=1)
    valid = np.stack([np.arange(length) < len(p) for p in points], axis=1)
    difference = np.where(valid, np.abs(_engine(steps, acc) - formula(acc)), 0)
    return int(valid.sum()), (difference != 0).sum(axis=0), difference.max(axis=0)


def integer_requantization(net, name: str) -> IntegerRequantization:
    """The certified (or closest) integer requantization of GEMM node ``name`` (see the module
    docstring for the argument ``proof`` summarizes)."""
    op, params = _gemm_params(net, name)
    lo, hi, range_how = accumulator_range(op, params)
    channels = lo.size
    low, high = _output_clamp(params)
    if lo.min() < -(1 << 31) or hi.max() > (1 << 31) - 1:
        monotone = np.zeros(channels, bool)
        reasons = ["the accumulator range leaves int32 (the kernel would wrap)"]
        lo, hi = np.maximum(lo, -(1 << 31)), np.minimum(hi, (1 << 31) - 1)
    else:
        monotone, reasons = _monotone(params.requantization, lo, hi, channels)
    # a step reading a second run-time tensor (a residual) cannot be certified (refused above);
    # the closest choice is fitted with that tensor taken as 0 (the step left out)
    steps = tuple(step for step in params.requantization if not isinstance(step, OPERAND_STEPS))
    if len(steps) < len(params.requantization):
        reasons.append("closest choice fitted with the run-time operand taken as 0")
    levels = np.arange(low + 1, high + 1, dtype=np.int64)
    t_engine = _thresholds(steps, lo, hi, levels)
    ends = _engine(steps, np.stack([lo, hi]))
    in_range = (ends[0] >= low) & (ends[1] <= high)
    if not in_range.all():
        reasons.append(f"the engine's output leaves [{low}, {high}] at an end of the range "
                       f"({int((~in_range).sum())} channels)")
    multiplier, offset, shift, feasible = _search(t_engine, levels, lo, hi)
    t_integer = integer_thresholds(levels, multiplier, offset, shift, lo, hi)
    thresholds_equal = (t_integer == t_engine).all(axis=0)
    proved = monotone & in_range & thresholds_equal

    def formula(acc):
        return apply_integer(acc, multiplier, offset, shift, low, high)

    total = int((hi - lo + 1).sum())
    rng = np.random.default_rng(SEED)
    if total <= EXHAUSTIVE_LIMIT:
        compared, mismatches, worst = _compare(steps, formula, lo, hi)
        check = f"exhaustive over all {compared:,} accumulator values"
        exact_stats = True
    else:
        compared, mismatches, worst = _compare(steps, formula, lo, hi,
                                               _check_points(lo, hi, t_engine, rng))
        check = (f"{compared:,} sampled accumulator values (ends, engine thresholds +-1, "
                 f"{SAMPLES} random per channel, seed {SEED})")
        exact_stats = False
    certified = proved & (mismatches == 0)
    if (proved & (mismatches != 0)).any():
        reasons.append(f"the check found differences on {int((proved & (mismatches != 0)).sum())}"
                       f" channels the threshold argument passed (a step's argument is wrong)")
    # worst case and rate over the range
    if exact_stats:
        rate = float(mismatches.sum()) / total
        worst_case = int(worst.max())
        how_measured = "exhaustively"
    elif monotone.all() and in_range.all():
        count, worst_by_threshold = _mismatch_from_thresholds(t_engine, t_integer, lo, hi)
        rate = float(count.sum()) / total
        worst_case = int(max(worst_by_threshold.max(), worst.max()))
        how_measured = "exactly over the range, from the two threshold vectors (monotone)"
    else:
        rate = float(mismatches.sum()) / compared
        worst_case = int(worst.max())
        how_measured = f"on the sample of {compared:,} values"
    # The threshold form: exact wherever the pipeline is proved monotone and stays in range
    # (step 3), checked like the affine formula; int32 constants (hi < INT32_MAX).
    thresholds = None
    if monotone.all() and in_range.all() and len(steps) == len(params.requantization) and \
            int(hi.max()) < (1 << 31) - 1 and not certified.all():
        table = np.ascontiguousarray(t_engine.T)

        def counted(acc):
            return apply_thresholds(acc, table, low)

        if exact_stats:
            _, wrong, _ = _compare(steps, counted, lo, hi)
        else:
            _, wrong, _ = _compare(steps, counted, lo, hi, _check_points(lo, hi, t_engine, rng))
        if not wrong.any():
            thresholds = table.astype(np.int32)
    step_names = ", ".join(type(step).__name__ for step in steps)
    lines = [
        f"range: {range_how}; [{int(lo.min())}, {int(hi.max())}] over {channels} channels, "
        f"{total:,} values in all",
        f"pipeline [{step_names}]: "
        + ("monotone on every channel (" + "; ".join(
            sorted({TABLE[type(step)] for step in steps if type(step) in TABLE})) + ")"
           if monotone.all() else "not proved monotone: " + "; ".join(reasons)),
        f"thresholds: {len(levels)} levels per channel by bisection on the engine; the integer "
        f"formula's closed-form thresholds equal them on {int(thresholds_equal.sum())}"
        f"/{channels} channels (shift {int(shift.min())}..{int(shift.max())})",
        f"check: {check}: {int(mismatches.sum())} differences",
        f"certified: {int(certified.sum())}/{channels} channels"
        + ("" if certified.all() else f"; worst case {worst_case}, mismatch rate {rate:.3g} "
           f"(measured {how_measured})"),
    ]
    if reasons and monotone.all():
        lines.append("; ".join(reasons))
    if thresholds is not None:
        lines.append(f"threshold form: out = {low} + #{{k : t_k <= acc}} with the engine's "
                     f"{len(levels)} thresholds per channel: exact on every channel (monotone "
                     f"pipeline, step 3), checked as above")
    return IntegerRequantization(
        multiplier=multiplier.astype(np.int64), offset=offset.astype(np.int64),
        shift=shift.astype(np.int64), low=low, high=high, acc_low=lo.astype(np.int64),
        acc_high=hi.astype(np.int64), certified=certified, proof="\n".join(lines),
        worst_case=0 if certified.all() else worst_case,
        mismatch_rate=0.0 if certified.all() else rate, thresholds=thresholds)


def certify(net, values: dict | None = None) -> list[LayerCertificate]:
    """A certificate for every ``linear`` and ``conv`` node of ``net``, in execution order (a
    node that cannot have one, e.g. a float output, is listed with the reason). With
    ``values`` (``net.run_values(*inputs)``), also every other node that
    ``qexact.export.tables.describe`` expresses as a table, gather or window reduction
    (exact by construction; its ``proof`` is the table's)."""
    certificates = []
    for item in net._prepared:
        if item.node.op not in GEMM_OPS:
            if values is not None:
                from .tables import describe
                description = describe(net, item.node.name, values)
                if description is not None:
                    engine = net.engine
                    certificates.append(LayerCertificate(
                        item.node.name, item.node.op, engine.name, engine.isa, 1, 1, 0, 0,
                        getattr(description, "proof", ""), 0, 0.0, None,
                        type(description).__name__))
            continue
        params = item.params
        try:
            result = integer_requantization(net, item.node.name)
        except UnsupportedError as error:
            certificates.append(LayerCertificate(
                item.node.name, item.node.op, params.engine, params.isa, 0,
                int(params.weight.shape[0]), 0, 0, str(error), -1, 1.0, None))
            continue
        certificates.append(LayerCertificate(
            item.node.name, item.node.op, params.engine, params.isa,
            int(result.certified.sum()), int(result.certified.size),
            int(result.acc_low.min()), int(result.acc_high.max()), result.proof,
            result.worst_case, result.mismatch_rate, result))
    return certificates


def certificate_table(certificates: list[LayerCertificate]) -> str:
    """The certificates as a Markdown table (layer, op, channels exact, range, verdict), with a
    last line counting the GEMM layers certified exact."""
    lines = ["| layer | op | channels exact | accumulator range | verdict |",
             "|---|---|---|---|---|"]
    gemm = [c for c in certificates if not c.table]
    for c in certificates:
        span = "" if c.table else f"[{c.acc_low}, {c.acc_high}]"
        lines.append(f"| {c.name} | {c.op} | {c.certified}/{c.channels} | {span} | {c} |")
    exact = sum(c.exact for c in gemm)
    by_thresholds = sum(c.exact_by_thresholds for c in gemm)
    lines.append(f"\n{exact}/{len(gemm)} GEMM layers certified exact with a multiplier and "
                 f"shift; {by_thresholds} more exact with the threshold table")
    return "\n".join(lines)


render_certificates = certificate_table
"""What ``qexact certify`` prints."""
