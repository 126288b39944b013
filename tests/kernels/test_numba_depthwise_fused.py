"""``depthwise_requantize`` (the depthwise accumulator and the compiled epilogue fused per block of
rows) equals ``requantize(conv_accumulator(...))`` of the NumPy path, for every engine and ISA,
per-tensor / per-channel (asymmetric) weights, relu, multiplier 1 and 2, strides 1 and 2,
padding, 3x3 and other kernels, NCHW and channels-last inputs, saturating adversarial data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from qexact import QINT8, QUINT8, QParams  # noqa: E402
from qexact.kernels import fast_available  # noqa: E402
from qexact.ops.conv import conv_accumulator, prepare_conv  # noqa: E402
from qexact.requantize import requantize  # noqa: E402

if not fast_available():
    pytest.skip("the fast backend cannot run on this machine", allow_module_level=True)

from qexact.kernels._numba_conv import depthwise_requantize  # noqa: E402
from qexact.kernels._numba_epilogue import compile_epilogue  # noqa: E402

ENGINE_ISAS = [(engine, isa) for engine in ("fbgemm", "x86", "qnnpack", "onednn")
               for isa in ("avx512_vnni", "avx2")]
ASYMMETRIC_WEIGHTS = {"fbgemm", "x86", "qnnpack"}


def make(rng, engine, isa, channels, multiplier, kernel, stride, padding, per_channel, relu,
         z_x, extreme):
    out_channels = channels * multiplier
    if extreme:
        weight = rng.choice(np.array([-128, 127, -127, 126], np.int8), (out_channels, 1) + kernel)
    else:
        weight = rng.integers(-128, 128, (out_channels, 1) + kernel, dtype=np.int8)
    asymmetric = engine in ASYMMETRIC_WEIGHTS
    if per_channel:
        z_w = rng.integers(-5, 6, out_channels) if asymmetric else np.zeros(out_channels, int)
        w_qp = QParams.per_channel(rng.uniform(0.001, 0.02, out_channels), z_w, 0, QINT8)
    else:
        w_qp = QParams.per_tensor(0.01, 3 if asymmetric else 0, QINT8)
    bias = rng.standard_normal(out_channels).astype(np.float32)
    return prepare_conv(weight, w_qp, bias, QParams.per_tensor(0.05, z_x, QUINT8),
                        QParams.per_tensor(0.1, 7, QUINT8), stride=stride, padding=padding,
                        groups=channels, relu=relu, engine=engine, isa=isa)


CASES = [  # channels, multiplier, kernel, stride, padding, per_channel, relu, z_x, extreme, size
    (8, 1, (3, 3), 1, 1, True, True, 3, False, (7, 9)),
    (16, 1, (3, 3), 2, 1, False, False, 0, True, (8, 7)),
    (40, 1, (3, 3), 1, 1, True, False, 255, True, (5, 6)),
    (24, 1, (3, 3), 2, 0, True, True, 128, True, (9, 9)),
    (8, 2, (3, 3), 1, 1, True, True, 10, True, (6, 6)),
    (16, 1, (5, 5), 1, 2, True, False, 17, True, (6, 7)),
    (8, 1, (3, 3), 1, 3, False, True, 255, True, (1, 1)),
    (33, 1, (3, 3), 1, 1, True, True, 0, True, (4, 5)),
]


@pytest.mark.parametrize("engine,isa", ENGINE_ISAS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_fused_equals_numpy_path(engine, isa, case):
    rng = np.random.default_rng(1000 + case)
    channels, multiplier, kernel, stride, padding, per_channel, relu, z_x, extreme, size = \
        CASES[case]
    params = make(rng, engine, isa, channels, multiplier, kernel, stride, padding, per_channel,
                  relu, z_x, extreme)
    for batch in (1, 3):
        if extreme:
            x = rng.choice(np.array([0, 255, 254, 1], np.uint8), (batch, channels) + size)
        else:
            x = rng.integers(0, 256, (batch, channels) + size, dtype=np.uint8)
        expected = requantize(conv_accumulator(x, params), params.requantization,
                              params.output_qparams.dtype.numpy_dtype)
        epilogue = compile_epilogue(params.requantization, params.out_channels,
                                    params.output_qparams.dtype.numpy_dtype)
        assert epilogue is not None
        channels_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
        for name, values in (("nchw", np.ascontiguousarray(x)), ("nhwc", channels_last)):
            actual = depthwise_requantize(values, params, epilogue, None)
            assert actual.dtype == expected.dtype and actual.shape == expected.shape
            assert np.array_equal(actual, expected), f"{engine} {isa} case {case} {name}"


def test_not_depthwise_gives_none():
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (8, 4, 3, 3), dtype=np.int8)
    params = prepare_conv(weight, QParams.per_tensor(0.01, 0, QINT8), None,
                          QParams.per_tensor(0.05, 0, QUINT8), QParams.per_tensor(0.1, 0, QUINT8),
                          groups=2, engine="x86", isa="avx512_vnni")
    epilogue = compile_epilogue(params.requantization, 8, np.uint8)
    x = rng.integers(0, 256, (1, 8, 5, 5), dtype=np.uint8)
    assert depthwise_requantize(x, params, epilogue, None) is None
