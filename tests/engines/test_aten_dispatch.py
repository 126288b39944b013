"""An AVX512 CPU runs the AVX2 build of every ATen stub registered with ``REGISTER_DISPATCH`` only
(aten/src/ATen/native/DispatchStub.h registers nullptr for AVX512; DispatchStub.cpp falls back).
Only channels_last avg_pool has an AVX512 build among the kernels qexact models."""

from __future__ import annotations

import numpy as np

import qexact
from qexact.dtypes import QUINT8
from qexact.engines.aten import elementwise_numerics, kernel_capability
from qexact.engines.aten_normalization import normalization_numerics
from qexact.layout import to_channels_last


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
        nhwc = to_channels_last(np.zeros((1, 17, 4, 4), np.uint8))
        for family, args in (("mean", (None, (0, 1, 2, 3), (), QUINT8, nhwc)),
                             ("upsample", ("bilinear", nhwc))):
            assert avx512.kernel(family, *args) == avx2.kernel(family, *args)
        adaptive = avx512.kernel("adaptive_avg_pool", (4, 4), (3, 3), QUINT8, nhwc)
        assert adaptive.placement.simd_channels == 8
        avg_pool = avx512.kernel("avg_pool", (3, 3), True, QUINT8, nhwc)
        assert avg_pool.placement.simd_channels == 16  # ALSO_REGISTER_AVX512_DISPATCH
