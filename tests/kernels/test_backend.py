"""The backend choice (``qexact.kernels``), and the fast backend equal to the NumPy path on
whole models: every value of every node, by bit pattern, on every engine and both ISAs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import qexact
from qexact import kernels
from qexact.errors import UnsupportedError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_resolve_backend_names_and_environment(monkeypatch):
    monkeypatch.delenv("QEXACT_BACKEND", raising=False)
    assert kernels.resolve_backend("numpy") == "numpy"
    assert kernels.resolve_backend() == ("fast" if kernels.fast_available() else "numpy")
    monkeypatch.setenv("QEXACT_BACKEND", "numpy")
    assert kernels.resolve_backend() == "numpy"
    with pytest.raises(UnsupportedError, match="'gpu' is not one of"):
        kernels.resolve_backend("gpu")


def test_fast_backend_refused_with_the_reason_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(kernels, "fast_unavailable", lambda: "numba is not installed (pip ...)")
    with pytest.raises(UnsupportedError, match="backend 'fast': numba is not installed"):
        kernels.resolve_backend("fast")


def test_without_numba_qexact_runs_on_numpy():
    """A process where ``import numba`` fails (the extra not installed): the default backend is
    numpy, a model runs, and asking for the fast one says how to get it."""
    script = """
import sys
sys.modules["numba"] = None
import numpy as np
import qexact
from qexact import QParams, prepare_linear, QUINT8, QINT8
from qexact.graph import Graph, Net
assert qexact.kernels.resolve_backend() == "numpy", qexact.kernels.resolve_backend()
try:
    qexact.kernels.resolve_backend("fast")
except qexact.UnsupportedError as error:
    assert "pip install 'qexact[fast]'" in str(error), error
else:
    raise SystemExit("fast accepted without numba")
print("ok")
"""
    environment = dict(os.environ)
    environment.pop("QEXACT_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _node_values(net, x, backend):
    net.backend = backend
    values = net.run_values(x)
    out = {}
    for name, value in values.items():
        array = getattr(value, "values", value)
        if isinstance(array, np.ndarray):
            out[name] = array
    return out


def assert_backends_equal(net, x):
    """Every node's value on the fast backend equals the NumPy path's, bit for bit."""
    reference = _node_values(net, x, "numpy")
    fast = _node_values(net, x, "fast")
    assert reference.keys() == fast.keys()
    for name, expected in reference.items():
        got = fast[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert np.array_equal(np.ascontiguousarray(got).view(np.uint8),
                              np.ascontiguousarray(expected).view(np.uint8)), name
    return sum(array.size for array in reference.values())


needs_fast = pytest.mark.skipif(not kernels.fast_available(), reason=kernels.fast_unavailable())
CNN_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")


@needs_fast
@pytest.mark.torch
@pytest.mark.parametrize("engine_name", CNN_ENGINES)
@pytest.mark.parametrize("model_name", ["resnet", "mobilenet_v2", "mobilenet_v3",
                                        "shufflenet_v2", "detector"])
def test_fast_equals_numpy_on_cnn_models(model_name, engine_name, torch1):
    from support.cnn_models import build_cnn

    torch1.backends.quantized.engine = engine_name
    model, shape = build_cnn(model_name, engine_name)
    x = torch1.randn(shape, generator=torch1.Generator().manual_seed(3)).numpy() * 2
    for isa in qexact.ISAS:
        net = qexact.from_torch(model, engine=engine_name, isa=isa, backend="fast")
        assert assert_backends_equal(net, x) > 0
    with torch1.no_grad():
        expected = model(torch1.from_numpy(x)).numpy()
    net = qexact.from_torch(model, engine=engine_name, backend="fast")
    assert np.array_equal(net(x).view(np.uint32), expected.view(np.uint32))


@needs_fast
@pytest.mark.torch
@pytest.mark.parametrize("engine_name", CNN_ENGINES)
@pytest.mark.parametrize("builder", ["forum_model", "multilayer_model", "no_bias_model",
                                     "per_tensor_model"])
def test_fast_equals_numpy_on_linear_models(builder, engine_name, torch1):
    from support import models

    torch1.backends.quantized.engine = engine_name
    model, shape = models.build(getattr(models, builder), engine_name)
    x = np.random.default_rng(5).normal(0, 2, (7,) + tuple(shape)[1:]).astype(np.float32)
    for isa in qexact.ISAS:
        net = qexact.from_torch(model, engine=engine_name, isa=isa, backend="fast")
        assert assert_backends_equal(net, x) > 0


@needs_fast
def test_numba_compiling_for_an_avx2_target_leaves_vnni_out():
    """``NUMBA_CPU_NAME=haswell`` (an AVX2 machine, as the benchmarks emulate one): the GEMM
    methods are the AVX2 ones, whatever the host has, so no ``vpdpbusd`` is ever compiled."""
    script = ("from qexact.kernels._numba_gemm import available_methods; "
              "print(','.join(available_methods()))")
    environment = dict(os.environ, NUMBA_CPU_NAME="haswell")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=environment, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "avx2_exact,avx2_saturate"


def test_compiled_cache_is_dropped_when_a_kernel_source_changes(tmp_path):
    """numba checks a cached function against its own file only; the kernels' stamp covers
    every kernel file, so editing one drops the cached code of all (a fused kernel compiles
    another file's function in)."""
    (tmp_path / "_numba_a.py").write_text("a = 1\n")
    (tmp_path / "_numba_b.py").write_text("b = 1\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    compiled = [cache / "_numba_a.f-1.py311.nbi", cache / "_numba_b.g-1.py311.1.nbc"]

    def refresh():
        kernels.refresh_compiled_cache.cache_clear()
        kernels.refresh_compiled_cache(tmp_path)

    refresh()                                   # first stamp
    for path in compiled:
        path.write_bytes(b"machine code")
    refresh()                                   # sources unchanged: kept
    assert all(path.exists() for path in compiled)
    (tmp_path / "_numba_b.py").write_text("b = 22\n")
    refresh()                                   # one source changed: every kernel's cache goes
    assert not any(path.exists() for path in compiled)
    assert (cache / "numba-sources.stamp").is_file()
