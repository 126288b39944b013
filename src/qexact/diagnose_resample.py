"""Mistake models of quantized upsampling (nearest, nearest-exact, bilinear): the source index.

- ``nearest`` / ``nearest_exact``: the engine's own kernel in the other nearest mode
  (``floor(f32(dst * r))`` against ``floor((dst + 0.5) * r)``, ``r = in / out``);
- ``rounded``: ``src = min(floor(dst * r + 0.5), in - 1)`` in float64 (rounding the source
  position to the nearest pixel, a frequent hand-written version);
- ``align_corners``: the engine's bilinear kernel with ``align_corners`` flipped.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .diagnose_models import Knobs, mistake_model
from .graph import PreparedNode
from .ops.resample import NEAREST_MODES, UpsampleParams
from .qparams import QuantizedArray


@mistake_model("upsample", knobs=("source_index",))
def deviated_upsample(prepared: PreparedNode, arguments: list, knobs: Knobs):
    p = prepared.params
    x = arguments[0]
    if not isinstance(p, UpsampleParams) or not isinstance(x, QuantizedArray):
        return None
    run = prepared.definition.run
    wanted = knobs.source_index
    if wanted == "align_corners":
        return None if p.mode != "bilinear" else run(replace(p, align_corners=not p.align_corners),
                                                     arguments)
    if p.mode not in NEAREST_MODES:
        return None
    if wanted in ("nearest", "nearest_exact"):
        mode = wanted.replace("_", "-")
        return None if mode == p.mode else run(replace(p, mode=mode), arguments)
    exact = run(p, arguments)                                  # "rounded": the output's shape
    if exact.qparams != x.qparams:
        return None
    values = x.values
    out = values
    spatial = values.ndim - 2
    for d in range(spatial):
        axis = 2 + d
        size, out_size = values.shape[axis], exact.values.shape[axis]
        index = np.floor(np.arange(out_size) * (size / out_size) + 0.5).astype(np.int64)
        out = np.take(out, np.minimum(index, size - 1), axis=axis)
    return QuantizedArray(np.ascontiguousarray(out), x.qparams)
