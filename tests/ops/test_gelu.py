"""GELU on float32 (nn.GELU, F.gelu; FX leaves it between a dequantize and a quantize):
bit-exact with PyTorch on this host, through each of its paths: oneDNN's gelu_erf (contiguous,
approximate='none', oneDNN enabled), ATen's GeluKernelImpl SIMD body (ATen erf / SLEEF tanh) and
scalar tail (glibc erff / tanhf), at lengths around the SIMD unit, across threads and layouts;
glibc erff emulated bit for bit against this machine's libm."""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines import detect_aten_capability
from qexact.float_math import glibc_erff
from qexact.ops.gelu import gelu, prepare_gelu

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(detect_aten_capability() != "avx512",
                                 reason="measured on an AVX512 host")]
F = torch.nn.functional
LENGTHS = list(range(1, 71)) + [1000, 4099]


def _inputs(n, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    edges = np.float32([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40, 5.54, -5.54, 10.0, -10.0,
                        3e38, -3e38, 0.5, -0.5, 1e-20])
    x[:min(n, edges.size)] = edges[:min(n, edges.size)]
    return x


def _torch_gelu(x, approximate, library=True):
    with torch.backends.mkldnn.flags(enabled=library):
        return F.gelu(torch.from_numpy(x), approximate=approximate).numpy()


@pytest.mark.parametrize("library", [True, False])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_lengths_bitexact(approximate, library):
    params = prepare_gelu(approximate, engine="fbgemm", num_threads=1, library=library)
    with torch.backends.mkldnn.flags(enabled=library):
        for n in LENGTHS:
            x = _inputs(n, n)
            expected = _torch_gelu(x, approximate, library)
            assert_bitexact(gelu(x, params).view(np.uint32), expected.view(np.uint32),
                            context=f"gelu {approximate} n={n} library={library}")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_random_bit_patterns(approximate):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2 ** 32, 60000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for library in (True, False):
        params = prepare_gelu(approximate, engine="x86", num_threads=torch.get_num_threads(),
                              library=library)
        expected = _torch_gelu(x, approximate, library)
        got = gelu(x, params)
        nan = np.isnan(expected) & np.isnan(got)  # NaN payloads: compared only off the library
        assert_bitexact(np.where(nan, 0, got.view(np.uint32)),
                        np.where(nan, 0, expected.view(np.uint32)),
                        context=f"gelu {approximate} library={library}")


@pytest.mark.parametrize("threads", [1, 2])
def test_gelu_threads_and_layouts(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = _inputs(40001, 3).reshape(1, 40001)
        shapes = [x, np.ascontiguousarray(_inputs(3 * 8 * 5 * 7, 4).reshape(3, 8, 5, 7)
                                          .transpose(0, 2, 3, 1)), _inputs(200, 5)[::2]]
        for approximate in ("none", "tanh"):
            for library in (True, False):
                params = prepare_gelu(approximate, engine="qnnpack", num_threads=threads,
                                      library=library)
                for array in shapes:
                    with torch.backends.mkldnn.flags(enabled=library):
                        expected = F.gelu(torch.from_numpy(array),
                                          approximate=approximate).numpy()
                    assert_bitexact(gelu(array, params).view(np.uint32),
                                    expected.view(np.uint32),
                                    context=f"{approximate} {array.shape} threads={threads}")
    finally:
        torch.set_num_threads(previous)


def test_glibc_erff_matches_libm():
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.erff.restype, libm.erff.argtypes = ctypes.c_float, [ctypes.c_float]
    rng = np.random.default_rng(11)
    x = np.concatenate([(rng.standard_normal(8000) * 3).astype(np.float32),
                        rng.uniform(-7, 7, 8000).astype(np.float32),
                        rng.integers(0, 2 ** 32, 8000, dtype=np.uint64).astype(np.uint32)
                        .view(np.float32)])
    x = x[~np.isnan(x)]
    expected = np.array([libm.erff(float(v)) for v in x], np.float32)
    assert_bitexact(glibc_erff(x).view(np.uint32), expected.view(np.uint32), context="erff")


def test_quantized_input_refused():
    params = prepare_gelu("none", engine="fbgemm", num_threads=1)
    q = qexact.quantize_per_tensor(np.float32([0.0, 1.0]), 0.1, 0, qexact.QUINT8) \
        if hasattr(qexact, "quantize_per_tensor") else None
    if q is not None:
        with pytest.raises(qexact.UnsupportedError):
            gelu(q, params)
    with pytest.raises(qexact.UnsupportedError):
        prepare_gelu("erf", engine="fbgemm")
