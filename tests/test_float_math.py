"""qexact.float_math against the binaries torch runs: SLEEF's exported AVX2 and AVX512F entry
points in libtorch_cpu.so (what ``Vectorized<float>::exp/expm1/tanh`` call in ATen's AVX2 and
AVX512 kernel builds: ``Sleef_expf8_u10avx2`` / ``Sleef_expf16_u10avx512f``, ...; one emulation
holds both) and the process's glibc libm (what ``std::exp/expm1/tanh`` call), compared by bit
pattern.

The binaries are called one float at a time through ctypes: a SLEEF ``__m256``/``__m512``
argument arrives in ymm0/zmm0, whose lane 0 is the float ctypes passes in xmm0, and lane 0 of the
result is read back from xmm0 (lanes are independent). torch.exp and torch.tanh cannot serve as the reference: on
float32 they run MKL's vsExp/vsTanh (ATen vml.h), which neither quantized kernel uses.
``F.elu`` on float32 runs ``Vectorized<float>::expm1`` (SLEEF) in its SIMD body and
``std::expm1`` in its scalar tail, so it is checked as a whole-torch reference too. The
exhaustive check over all 2^32 inputs is a script, not part of the suite (docs/arithmetic.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import numpy as np
import pytest
from support.assertions import assert_bitexact

from qexact import float_math

RANDOM = 300_000

EDGES = np.float32([
    0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1.1754942e-38, -1.1754944e-38,
    2.0 ** -25, -(2.0 ** -25), 2.0 ** -26, 2.0 ** -55, 2.0 ** -60, 0.34657359, -0.34657359,
    0.5, -0.5, 1.0, -1.0, 1.0397208, -1.0397208, 2.0772462, -2.0772462, 8.664339742, -8.664339742,
    8.6643405, 9.0, 16.635532, -16.635532, -16.63553, -16.63554, 18.714973, -18.714973, 22.0,
    -22.0, 87.33654, -87.33655, 88.0, 88.72168, 88.72176, 88.722839, 88.722839 + 1e-5, 88.7228,
    -88.72283, 89.0, 99.99999, 100.0, 100.00001, -103.27893, -103.97208, -103.9721, -103.99999,
    -104.0, -104.00001, 3.4028235e38, -3.4028235e38,
])

SLEEF = {"sleef_expf_u10": "Sleef_expf{lanes}_u10{build}",
         "sleef_expm1f_u10": "Sleef_expm1f{lanes}_u10{build}",
         "sleef_tanhf_u10": "Sleef_tanhf{lanes}_u10{build}"}
SLEEF_BUILDS = {"avx2": (8, {"avx2", "fma"}), "avx512f": (16, {"avx512f"})}
"""SLEEF build -> (float lanes, CPU flags it needs)."""
GLIBC = {"glibc_expf": "expf", "glibc_expm1f": "expm1f", "glibc_tanhf": "tanhf"}


def _near_half_ln2() -> np.ndarray:
    """Floats within 8 ulps of (k + 1/2) ln2, k = -151..128: where the exps' range reduction
    rounds ``x / ln2`` to a different integer."""
    centres = np.float32((np.arange(-151, 129) + 0.5) * np.log(2.0))
    bits = centres.view(np.uint32).astype(np.int64)[:, None] + np.arange(-8, 9)
    return bits.astype(np.uint32).view(np.float32).ravel()


def _inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    random_bits = rng.integers(0, 2 ** 32, RANDOM, dtype=np.uint64).astype(np.uint32).view(np.float32)
    moderate = (rng.standard_normal(RANDOM // 3) * 10.0 ** rng.uniform(-3, 1.3, RANDOM // 3)).astype(np.float32)
    return np.concatenate([EDGES, np.nextafter(EDGES, np.float32(np.inf)),
                           np.nextafter(EDGES, np.float32(-np.inf)), _near_half_ln2(),
                           random_bits, moderate])


def _binary_function(library: ctypes.CDLL, symbol: str):
    function = getattr(library, symbol)
    function.argtypes, function.restype = [ctypes.c_float], ctypes.c_float
    return lambda x: np.array([function(v) for v in x.tolist()], np.float32)


@pytest.fixture(scope="module")
def libtorch():
    torch = pytest.importorskip("torch")
    return ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))


@pytest.mark.torch
@pytest.mark.parametrize("build", sorted(SLEEF_BUILDS))
@pytest.mark.parametrize("name", sorted(SLEEF))
def test_sleef_functions_vs_libtorch(libtorch, name, build):
    from qexact.engines.base import cpu_flags

    lanes, flags = SLEEF_BUILDS[build]
    if not flags <= cpu_flags():
        pytest.skip(f"this CPU cannot run SLEEF's {build} build")
    x = _inputs(len(name))
    expected = _binary_function(libtorch, SLEEF[name].format(lanes=lanes, build=build))(x)
    # NaN inputs pass through ctypes as doubles (signalling NaNs come back quiet); every NaN
    # result is quiet anyway, so the comparison covers payloads too.
    assert_bitexact(getattr(float_math, name)(x), expected, f"{name} ({build})")


@pytest.mark.parametrize("name", sorted(GLIBC))
def test_glibc_functions_vs_libm(name):
    libm_path = ctypes.util.find_library("m")
    if libm_path is None or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no glibc libm")
    flags = open("/proc/cpuinfo").read()
    if " fma " not in flags:
        pytest.skip("glibc's expf is emulated in its FMA variant (__expf_fma)")
    x = _inputs(len(name) + 100)
    expected = _binary_function(ctypes.CDLL(libm_path), GLIBC[name])(x)
    assert_bitexact(getattr(float_math, name)(x), expected, name)


@pytest.mark.torch
def test_float_elu_is_sleef_expm1_in_the_body_and_glibc_expm1_in_the_tail():
    """A whole-torch reference: ``F.elu`` on float32 (alpha = scale = input_scale = 1) computes
    ``expm1(x)`` for x <= 0 with SLEEF in 16-float blocks and std::expm1 in the tail."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(7)
    x = -np.abs(rng.standard_normal(1 << 19) * 10.0 ** rng.uniform(-4, 1.2, 1 << 19)).astype(np.float32)
    assert_bitexact(F.elu(torch.from_numpy(x)).numpy(), float_math.sleef_expm1f_u10(x), "SIMD body")
    tail = x[:3000]
    expected = np.concatenate([F.elu(torch.from_numpy(tail[i:i + 15])).numpy()
                               for i in range(0, tail.size, 15)])
    assert_bitexact(expected, float_math.glibc_expm1f(tail), "scalar tail (15-float tensors)")


def test_fma_float32_fast_path_matches_the_exact_one():
    """``float_math._fma`` takes a shortcut except at float32 midpoints and in the subnormal range;
    check it against ``rounding.fma_float32`` on products that hit midpoints exactly."""
    from qexact.rounding import fma_float32

    rng = np.random.default_rng(3)
    a, b, c = (rng.standard_normal(200_000).astype(np.float32)
               * np.float32(10.0) ** rng.integers(-20, 20, 200_000).astype(np.float32) for _ in range(3))
    a[1::4], b[1::4] = np.float32(1 + 2 ** -23), np.float32(1.5)
    c[1::4] = np.float32(2.0 ** -60) * np.where(rng.random(c[1::4].size) < 0.5, -1, 1).astype(np.float32)
    c[2::4] = -(a[2::4].astype(np.float64) * b[2::4]).astype(np.float32)
    a[3::8] *= np.float32(2.0 ** -70)
    assert_bitexact(float_math._fma(a, b, c), fma_float32(a, b, c), "fma")


def test_fma_float64_matches_exact_rationals():
    from fractions import Fraction

    rng = np.random.default_rng(4)
    a, b, c = (rng.standard_normal(2000) * 10.0 ** rng.uniform(-5, 5, 2000) for _ in range(3))
    c[::3] = -(a[::3] * b[::3])
    ours = float_math.fma_float64(a, b, c)
    exact = [float(Fraction(x) * Fraction(y) + Fraction(z)) for x, y, z in zip(a, b, c)]
    assert_bitexact(ours, np.array(exact), "fma_float64")
