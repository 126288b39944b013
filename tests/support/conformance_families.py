"""Conformance families the CLI tests register: one that disagrees with torch on purpose, one
whose torch side kills its process (as PyTorch's kernels do on undefined inputs). The torch
worker imports this file by path, so both sides see the same families."""

from __future__ import annotations

import os
import signal

import numpy as np

from qexact.conformance import Case, family


def _draw(rng, engine):
    return Case({"n": 4, "crash": bool(rng.random() < 0.5)}, {"x": np.arange(4, dtype=np.uint8)})


def _torch_identity(case):
    return {"y": case.arrays["x"].copy()}


def _qexact_zeros(case, engine):
    return {"y": np.zeros_like(case.arrays["x"])}


def _torch_crashing(case):
    if case.params["crash"]:
        os.kill(os.getpid(), signal.SIGSEGV)
    return {"y": case.arrays["x"].copy()}


def _qexact_identity(case, engine):
    return {"y": case.arrays["x"].copy()}


family("test_broken", draw=_draw, run_torch=_torch_identity, run_qexact=_qexact_zeros)
family("test_crashing", draw=_draw, run_torch=_torch_crashing, run_qexact=_qexact_identity)
