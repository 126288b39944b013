"""Shared fixtures. Differential tests need torch and are marked ``torch``; hypothesis runs
derandomized (fixed seeds) so every run tests the same cases."""

from __future__ import annotations

import collections
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))

from qexact.engines import engine_names  # noqa: E402
from support.reporting import print_counts  # noqa: E402

settings.register_profile(
    "qexact", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("qexact")

collect_ignore_glob = ["data/*"]
"""Data and the scripts that made it (tests/data/v0_1/make_files.py needs the qexact it froze)."""

ENGINES = engine_names()
"""Every registered engine (``qexact.engines.ENGINES``): the tests' engine parametrization."""


@pytest.fixture(params=ENGINES)
def engine(request):
    """Each PyTorch engine in turn, with torch.backends.quantized.engine set to it."""
    torch = pytest.importorskip("torch")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = request.param
    yield request.param
    torch.backends.quantized.engine = previous


@pytest.fixture
def torch1():
    """torch on one thread (and its quantized engine restored after the test): kernels whose
    split between threads matters run as a single-threaded user's."""
    torch = pytest.importorskip("torch")
    previous, engine = torch.get_num_threads(), torch.backends.quantized.engine
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)
    torch.backends.quantized.engine = engine


@pytest.fixture
def torch_no_grad():
    """torch's outputs without autograd, for one test (no global state left behind)."""
    torch = pytest.importorskip("torch")
    with torch.no_grad():
        yield torch


@pytest.fixture(scope="module")
def report(request):
    """Collect case/element counts per key in a test module; printed at the end of the run."""
    stats = collections.defaultdict(collections.Counter)
    yield stats
    print_counts(request, stats)
