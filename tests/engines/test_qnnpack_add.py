"""QNNPACK's fixed-point add where its shift reaches 32 or more (input-to-output scale ratios
below 2^-10, which PyTorch accepts down to 2^-14): the SIMD body and the scalar code of
``q8vadd/sse2.c`` then differ, and the kernel runs in tiles of 4096 elements."""

from __future__ import annotations

import numpy as np
import pytest

from qexact.engines.qnnpack_add import (ADD_TILE, prepare_qnnpack_add, qnnpack_add,
                                                simd_elements)


def test_simd_elements_by_tile():
    assert simd_elements(7).sum() == 0 and simd_elements(8).all()
    assert simd_elements(ADD_TILE + 7)[:ADD_TILE].all()
    assert not simd_elements(ADD_TILE + 7)[ADD_TILE:].any()
    assert simd_elements(2 * ADD_TILE + 8).all()


def test_large_shift_scalar_takes_the_count_modulo_32():
    """shift 32: the scalar ``sar`` shifts by 0, so a positive sum saturates to 255; the SIMD
    ``psrad`` gives the sign (0) and the zero point."""
    p = prepare_qnnpack_add(1.0, 0, 1.0, 0, 1328.9736328125, 165, relu=False)
    assert p.shift == 32
    assert qnnpack_add(np.array([0], np.uint8), np.array([255], np.uint8), p)[0] == 255
    simd = qnnpack_add(np.full(8, 0, np.uint8), np.full(8, 255, np.uint8), p)
    assert (simd == 165).all()


@pytest.mark.torch
@pytest.mark.parametrize("length", [1, 3, 7, 8, 9, 15, ADD_TILE + 3, ADD_TILE + 8, 2 * ADD_TILE + 5])
def test_qnnpack_add_vs_torch_at_every_shift(length):
    torch = pytest.importorskip("torch")
    if "qnnpack" not in torch.backends.quantized.supported_engines:
        pytest.skip("no qnnpack engine")
    rng = np.random.default_rng(length)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        for exponent in range(-14, 8):  # ratio 2^e * U[1, 2): shifts 14 .. 35
            ratio = 2.0 ** exponent * rng.uniform(1, 1.99)
            a_scale = 0.5
            out_scale = a_scale / ratio
            b_scale = out_scale * 2.0 ** exponent * rng.uniform(1, 1.99)
            zps = [int(v) for v in rng.integers(0, 256, 3)]
            a = rng.integers(0, 256, length).astype(np.uint8)
            b = rng.integers(0, 256, length).astype(np.uint8)
            for relu in (False, True):
                if relu and zps[2] == 255:
                    continue
                p = prepare_qnnpack_add(a_scale, zps[0], b_scale, zps[1], out_scale, zps[2], relu)
                op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
                theirs = op(torch._make_per_tensor_quantized_tensor(torch.from_numpy(a), a_scale,
                                                                    zps[0]),
                            torch._make_per_tensor_quantized_tensor(torch.from_numpy(b), b_scale,
                                                                    zps[1]),
                            out_scale, zps[2]).int_repr().numpy()
                ours = qnnpack_add(a, b, p)
                assert np.array_equal(ours, theirs), (exponent, p.shift, relu,
                                                      int((ours != theirs).sum()))
    finally:
        torch.backends.quantized.engine = previous


def test_explain_follows_the_run_at_a_large_shift():
    """Explain's stages reach the value the run computed, in the SIMD body and in scalar code."""
    p = prepare_qnnpack_add(1.0, 0, 1.0, 0, 1328.9736328125, 165, relu=False)
    from qexact.engines.qnnpack_add import qnnpack_add_stages

    for length, simd in ((1, False), (8, True)):
        a, b = np.zeros(length, np.uint8), np.full(length, 255, np.uint8)
        run = qnnpack_add(a, b, p)
        stages = qnnpack_add_stages(0, 255, p, simd)
        assert stages[-1][3] == run[0]
        assert ("psrad" if simd else "modulo 32") in stages[1][1]
