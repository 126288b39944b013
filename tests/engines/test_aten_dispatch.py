"""An AVX512 CPU runs the AVX2 build of every ATen stub registered with ``REGISTER_DISPATCH`` only
(aten/src/ATen/native/DispatchStub.h registers nullptr for AVX512; DispatchStub.cpp falls back).
Only channels_last avg_pool has an AVX512 build among the kernels qexact models."""

from __future__ import annotations

import qexact
from qexact.engines.aten import elementwise_numerics, kernel_capability
from qexact.engines.normalization_numerics import normalization_numerics
from qexact.engines.pooling_numerics import pooling_numerics
from qexact.ops.reduce import mean_numerics


def test_kernel_capability():
    assert kernel_capability("avx512") == "avx2"
    assert kernel_capability("avx512", avx512_build=True) == "avx512"
    assert kernel_capability("avx2") == "avx2" and kernel_capability("default") == "default"


def test_avx512_cpus_run_the_avx2_quantized_kernels():
    for name in ("fbgemm", "x86", "qnnpack", "onednn"):
        avx512 = qexact.get_engine(name, aten_capability="avx512")
        avx2 = qexact.get_engine(name, aten_capability="avx2")
        assert elementwise_numerics(avx512).body_unit == elementwise_numerics(avx2).body_unit == 64
        assert normalization_numerics(avx512) == normalization_numerics(avx2)
        assert mean_numerics(avx512) == mean_numerics(avx2)
        pooling = pooling_numerics(avx512)
        assert pooling.nhwc_adaptive_simd_channels == 8
        assert pooling.nhwc_bilinear == pooling_numerics(avx2).nhwc_bilinear
        assert pooling.nhwc_avg_pool_simd_channels == 16  # ALSO_REGISTER_AVX512_DISPATCH
