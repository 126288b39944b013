"""Explain stages shared by the accumulate-then-requantize ops (Linear, Conv, ConvTranspose):
the int16 pair saturation of one output's dot product, and the engine's requantization steps."""

from __future__ import annotations

import numpy as np

from ..requantize import Step, trace_requantize
from ..stages import Stage, constant_text


def per_channel(value, channel: int):
    """``value[channel]`` for a per-channel constant, the value itself for a per-tensor one."""
    value = np.asarray(value)
    if value.ndim == 0:
        return value[()]
    flat = value.reshape(-1)
    return flat[channel] if flat.size > 1 else flat[0]


def pair_saturation_stage(raw_x: np.ndarray, weight_row: np.ndarray, pairs: np.ndarray,
                          exact: int, note: str) -> tuple[Stage, int]:
    """The stage that turns the exact dot product into what ``vpmaddubsw`` pairs give, and the
    resulting accumulator. ``pairs``: (T, 2) positions (-1: padding)."""
    x_pairs = np.where(pairs >= 0, raw_x[pairs], 0)
    w_pairs = np.where(pairs >= 0, weight_row[pairs], 0)
    raw = (x_pairs * w_pairs).sum(axis=1)
    saturated = np.flatnonzero((raw > 32767) | (raw < -32768))
    lost = int((np.clip(raw, -32768, 32767) - raw).sum())
    stage = Stage(
        "int16 pair saturation (vpmaddubsw)",
        "acc = sum_t sat16(x[i_t]*w[i_t] + x[j_t]*w[j_t]) - z_x*sum(w) - z_w*sum(x) + K*z_x*z_w",
        {"saturated_pairs": [[int(p) for p in pairs[t]] for t in saturated],
         "raw_pair_sums": raw[saturated], "lost": lost}, exact + lost, note=note)
    return stage, exact + lost


def requantization_stages(steps: tuple[Step, ...], acc: int, channel: int,
                          channels: int) -> list[Stage]:
    """One stage per requantization step for output channel ``channel``, with its constants."""
    acc_row = np.zeros((1, channels), dtype=np.int64)
    acc_row[0, channel] = acc
    stages = []
    for step, after in trace_requantize(acc_row, steps):
        constants = {name: per_channel(value, channel) for name, value in step.constants().items()}
        shown = {name: per_channel(value, channel) for name, value in step.shown().items()}
        formula = step.formula.format(**{key: constant_text(value) for key, value in shown.items()})
        stages.append(Stage(step.label, formula, constants, after[0, channel]))
    return stages

