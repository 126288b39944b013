"""QNNPACK's fixed-point add where its shift reaches 32 or more (input-to-output scale ratios
below 2^-10, which PyTorch accepts down to 2^-14): the SIMD body and the scalar code of
``q8vadd/sse2.c`` then differ, and the kernel runs in tiles of 4096 elements."""

from __future__ import annotations

import numpy as np
import pytest

from qexact import QUINT8, QParams, QuantizedArray
from qexact.engines.qnnpack_add import ADD_TILE, prepare_qnnpack_add, simd_elements
from qexact.ops.elementwise import binary, prepare_binary


def qnnpack_add(a: np.ndarray, b: np.ndarray, a_scale, a_zero_point, b_scale, b_zero_point,
                out_scale, out_zero_point, relu=False) -> np.ndarray:
    """quint8 ``a + b`` of equal shapes on the qnnpack engine (its ``"binary"`` kernel)."""
    qparams = [QParams.per_tensor(s, z, QUINT8) for s, z in
               ((a_scale, a_zero_point), (b_scale, b_zero_point), (out_scale, out_zero_point))]
    p = prepare_binary("add", *qparams, relu=relu, engine="qnnpack")
    assert p.choose_kernel(a.shape, b.shape).name.startswith("QNNPACK add")
    return binary(QuantizedArray(a, qparams[0]), QuantizedArray(b, qparams[1]), p).values


def test_simd_elements_by_tile():
    assert simd_elements(7).sum() == 0 and simd_elements(8).all()
    assert simd_elements(ADD_TILE + 7)[:ADD_TILE].all()
    assert not simd_elements(ADD_TILE + 7)[ADD_TILE:].any()
    assert simd_elements(2 * ADD_TILE + 8).all()


def test_large_shift_scalar_takes_the_count_modulo_32():
    """shift 32: the scalar ``sar`` shifts by 0, so a positive sum saturates to 255; the SIMD
    ``psrad`` gives the sign (0) and the zero point."""
    scales = (1.0, 0, 1.0, 0, 1328.9736328125, 165)
    assert prepare_qnnpack_add(*scales, relu=False).shift == 32
    assert qnnpack_add(np.array([0], np.uint8), np.array([255], np.uint8), *scales)[0] == 255
    simd = qnnpack_add(np.full(8, 0, np.uint8), np.full(8, 255, np.uint8), *scales)
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
                shift = prepare_qnnpack_add(a_scale, zps[0], b_scale, zps[1], out_scale, zps[2],
                                            relu).shift
                op = torch.ops.quantized.add_relu if relu else torch.ops.quantized.add
                theirs = op(torch._make_per_tensor_quantized_tensor(torch.from_numpy(a), a_scale,
                                                                    zps[0]),
                            torch._make_per_tensor_quantized_tensor(torch.from_numpy(b), b_scale,
                                                                    zps[1]),
                            out_scale, zps[2]).int_repr().numpy()
                ours = qnnpack_add(a, b, a_scale, zps[0], b_scale, zps[1], out_scale, zps[2], relu)
                assert np.array_equal(ours, theirs), (exponent, shift, relu,
                                                      int((ours != theirs).sum()))
    finally:
        torch.backends.quantized.engine = previous


def test_explain_follows_the_run_at_a_large_shift():
    """Explain's stages reach the value the run computed, in the SIMD body and in scalar code,
    and name the path and the shift the element took."""
    from qexact.ops._registry import OP_REGISTRY

    qparams = [QParams.per_tensor(s, z, QUINT8) for s, z in ((1.0, 0), (1.0, 0),
                                                             (1328.9736328125, 165))]
    p = prepare_binary("add", *qparams, engine="qnnpack")
    for length, simd in ((1, False), (7, False), (8, True), (ADD_TILE + 3, False)):
        a, b = np.zeros(length, np.uint8), np.full(length, 255, np.uint8)
        inputs = [QuantizedArray(a, qparams[0]), QuantizedArray(b, qparams[1])]
        run = binary(*inputs, p)
        index = (length - 1,)
        stages, _ = OP_REGISTRY["add"].explain(p, inputs, run, index)
        assert stages[-1].result == run.values[index] == (165 if simd else 255)
        path = next(stage.values["path"] for stage in stages if stage.name == "add: path")
        assert path.startswith("SIMD body" if simd else "scalar code")
        shift = next(stage for stage in stages if "shift right" in stage.name)
        assert ("psrad" if simd else "mod 32 (sar)") in shift.formula
