"""Mistake models of quantized pools: avg_pool, adaptive_avg_pool (the divisor, the rounding) and
max_pool (the padding value).

Each average model is the textbook average ``round(s_x (S - n z_x) / (D s_out)) + z_out`` in
float64, from the window sums ``S`` (``n`` valid taps) and divisors ``D`` the engine's run reports
(``qexact.trace.observe``), with the mistake's change:
- divisor ``count_include_pad``: ``D`` the other way (the valid taps, or the padded window);
  ``kernel_area``: the kernel's full area, as if the border windows were whole;
  ``largest_window`` (adaptive): the largest window's size, as if the windows were all alike;
- rounding: half away from zero, or truncation.
- max pool padded with the zero point (real 0.0, ``F.pad`` then pool): a border window's
  maximum is at least ``z_x``.
"""

from __future__ import annotations

import numpy as np

from .diagnose_models import Knobs, mistake_model
from .graph import PreparedNode
from .ops._window import pool_window_starts
from .ops.pooling import AdaptivePoolParams, PoolParams
from .qparams import QuantizedArray
from .rounding import round_half_away, round_half_even, round_toward_zero
from .trace import observe

ROUNDING = {"half_even": round_half_even, "half_away": round_half_away,
            "truncation": round_toward_zero}


def _observed(prepared: PreparedNode, arguments: list, label: str):
    """The engine's window sums S, tap counts n and divisors D (logical output order), or None
    where its kernel reports none (a float32 kernel between converts)."""
    with observe() as trace:
        exact = prepared.definition.run(prepared.params, arguments)
    found = {}
    for event in trace.events:
        if event.where is None and event.label in (f"{label}: window sum", f"{label}: divisor"):
            found[event.label.split(": ")[1]] = event
    if set(found) != {"window sum", "divisor"}:
        return None
    sums = np.asarray(found["window sum"].result, np.int64)
    taps = np.broadcast_to(np.asarray(found["window sum"].values["n"], np.int64), sums.shape)
    divisors = np.broadcast_to(np.asarray(found["divisor"].result, np.int64), sums.shape)
    padded = np.broadcast_to(np.asarray(found["divisor"].values.get("padded", divisors),
                                        np.int64), sums.shape)
    return exact, sums, taps, divisors, padded


@mistake_model("avg_pool", "adaptive_avg_pool", knobs=("divisor", "rounding"))
def deviated_average(prepared: PreparedNode, arguments: list, knobs: Knobs):
    p = prepared.params
    x = arguments[0]
    if not isinstance(x, QuantizedArray) or not isinstance(p, (PoolParams, AdaptivePoolParams)):
        return None
    adaptive = isinstance(p, AdaptivePoolParams)
    if (knobs.divisor == "largest_window") != adaptive and knobs.divisor != "engine":
        return None
    if knobs.divisor == "count_include_pad" and not any(p.padding):
        return None
    observed = _observed(prepared, arguments, "adaptive_avg_pool" if adaptive else "avg_pool")
    if observed is None:
        return None
    exact, sums, taps, divisors, padded = observed
    if knobs.divisor == "count_include_pad":
        divisors = taps if p.count_include_pad else padded
    elif knobs.divisor == "kernel_area":
        divisors = np.full_like(divisors, int(np.prod(p.kernel_size)))
    elif knobs.divisor == "largest_window":
        divisors = np.full_like(divisors, taps.max())
    output = exact.qparams
    centered = sums - taps * int(x.qparams.zero_point)
    # in output steps: A * (s_x / s_out) / D, exact ties where the qparams are kept (ratio 1)
    steps = centered * (float(x.qparams.scale) / float(output.scale)) / divisors
    codes = ROUNDING[knobs.rounding](steps) + int(output.zero_point)
    codes = np.clip(codes, output.dtype.qmin, output.dtype.qmax)
    return QuantizedArray(codes.astype(output.dtype.numpy_dtype), output)


@mistake_model("max_pool", knobs=("max_pad",))
def padded_max_pool(prepared: PreparedNode, arguments: list, knobs: Knobs):
    p = prepared.params
    x = arguments[0]
    if not isinstance(p, PoolParams) or not any(p.padding):
        return None
    exact = prepared.definition.run(p, arguments)
    quantized = isinstance(x, QuantizedArray)
    values = exact.values if quantized else np.asarray(exact)
    spatial = len(p.kernel_size)
    border = np.zeros(values.shape[-spatial:], bool)
    for offset in range(spatial):
        size = np.shape(getattr(x, "values", x))[-spatial + offset]
        start = pool_window_starts(size, p.kernel_size[offset], p.stride[offset],
                                   p.padding[offset], p.dilation[offset], p.ceil_mode)
        last = start + (p.kernel_size[offset] - 1) * p.dilation[offset]
        touches = (start < 0) | (last >= size)
        border |= touches.reshape([-1 if d == offset else 1 for d in range(spatial)])
    pad = int(x.qparams.zero_point) if quantized else 0.0
    result = np.where(border, np.maximum(values, pad), values).astype(values.dtype)
    return QuantizedArray(result, exact.qparams) if quantized else result
