"""Quantized celu and threshold (``torch.ops.quantized.celu`` / ``quantized.threshold``):
bit-exact differential tests vs PyTorch on every engine.

celu is ATen's ``qelu_kernel`` with ``scale = 1`` and ``input_scale = f32(1.0 / alpha)`` (pytorch
aten/src/ATen/native/quantized/cpu/qelu.cpp ``quantized_celu``): SLEEF expm1 in the SIMD body,
glibc expm1f in the scalar tail. threshold is ``qthreshold_kernel``: dequantize,
``y = x > f32(threshold) ? x : f32(value)`` in float32, quantize with the input's qparams
(QuantizedOpKernels.cpp), so a ``value`` between two codes rounds half to even and a threshold on
a code keeps that code's element replaced."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact
from support.torch_ref import torch_quantized

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray, QuantParamError
from qexact.ops.activations import ActivationOp, activation, prepare_activation

CASES = 150
ALPHAS = (1.0, 0.3, 2.5, 0.7, 1e-3, -1.5)


def _random_case(rng, case):
    dtype = QUINT8 if case % 2 else QINT8
    size = max(1, 64 * int(rng.integers(0, 4)) + int(rng.integers(0, 64)))
    shape = (size,) if case % 3 else (1, size)
    values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
    if case % 4 < 2:
        s = 2.0 ** int(rng.integers(-7, 0))
        s_o = s * 2
    else:
        s, s_o = 10.0 ** rng.uniform(-3, 0, 2)
    z, z_o = (int(v) for v in rng.integers(dtype.qmin, dtype.qmax + 1, 2))
    return values, QParams.per_tensor(s, z, dtype), QParams.per_tensor(s_o, z_o, dtype)


def _compare(engine, expected, values, params, what):
    import torch  # noqa: F401

    actual = activation(QuantizedArray(values, params.input_qparams), params)
    assert (actual.scale, actual.zero_point) == (expected.q_scale(), expected.q_zero_point())
    assert_bitexact(actual.values, expected.int_repr().numpy(), f"{engine} {what}")
    return values.size


@pytest.mark.torch
def test_celu_random_vs_torch(engine):
    import torch

    rng = np.random.default_rng([7, len(engine), ord(engine[0])])
    for case in range(CASES):
        values, qp, qo = _random_case(rng, case)
        alpha = ALPHAS[case % len(ALPHAS)]
        expected = torch.ops.quantized.celu(torch_quantized(values, qp), qo.scale, qo.zero_point,
                                            alpha)
        params = prepare_activation("celu", qp, qo, engine=engine,
                                    num_threads=torch.get_num_threads(), alpha=alpha)
        _compare(engine, expected, values, params, f"celu alpha={alpha} {qp.describe()}")


@pytest.mark.torch
def test_threshold_random_vs_torch(engine):
    import torch

    rng = np.random.default_rng([11, len(engine), ord(engine[0])])
    for case in range(CASES):
        values, qp, _ = _random_case(rng, case)
        s, z, dtype = qp.scale, qp.zero_point, qp.dtype
        code = int(rng.integers(dtype.qmin, dtype.qmax + 1))
        # a threshold on a code (the comparison's tie) or anywhere; a value on a half code (the
        # quantization's tie), anywhere, or far out of range (saturation)
        threshold = (code - z) * s if case % 2 else float(rng.uniform(-1, 1) * 128 * s)
        value = [(code - z) * s + s / 2, float(rng.uniform(-2, 2) * 128 * s),
                 float(rng.choice([-1, 1]) * 1e4 * s)][case % 3]
        expected = torch.ops.quantized.threshold(torch_quantized(values, qp), threshold, value)
        params = prepare_activation("threshold", qp, None, engine=engine,
                                    num_threads=torch.get_num_threads(), threshold=threshold,
                                    value=value)
        _compare(engine, expected, values, params, f"threshold {threshold} {value} {qp.describe()}")


@pytest.mark.torch
@pytest.mark.parametrize("function", ["celu", "threshold"])
def test_channels_last_vs_torch(engine, function):
    """celu's kernel allocates a contiguous output (a channels_last input: every element in the
    scalar tail); threshold's keeps the input's memory format."""
    import torch

    rng = np.random.default_rng(3)
    qp = QParams.per_tensor(0.043, 131, QUINT8)
    x = torch_quantized(rng.integers(0, 256, (2, 19, 5, 7)).astype(np.uint8), qp)
    x = x.contiguous(memory_format=torch.channels_last)
    if function == "celu":
        expected = torch.ops.quantized.celu(x, 0.02, 200, 0.6)
        params = prepare_activation("celu", qp, QParams.per_tensor(0.02, 200, QUINT8),
                                    engine=engine, num_threads=1, alpha=0.6)
    else:
        expected = torch.ops.quantized.threshold(x, 0.2, -1.3)
        params = prepare_activation("threshold", qp, None, engine=engine, num_threads=1,
                                    threshold=0.2, value=-1.3)
    values = x.int_repr().numpy()
    actual = activation(QuantizedArray(values, qp), params)
    assert_bitexact(actual.values, expected.int_repr().numpy(), f"{engine} {function}")
    assert actual.values.strides == expected.int_repr().numpy().strides


class _Model:
    @staticmethod
    def build():
        import torch
        from torch import nn

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.quant = torch.ao.nn.quantized.Quantize(0.03, 64, torch.quint8)
                self.dequant = torch.ao.nn.quantized.DeQuantize()

            def forward(self, x):
                x = self.quant(x)
                x = torch.ops.quantized.celu(x, 0.05, 60, 0.7)
                x = torch.ops.quantized.threshold(x, 0.3, -0.2)
                x = torch.ops.quantized.celu(x, 0.04, 70)
                x = torch.ops.quantized.threshold(x, -0.1, 0.5)
                return self.dequant(x)

        return Model().eval()


@pytest.mark.torch
def test_fx_model_with_celu_and_threshold(engine, tmp_path):
    import torch

    torch.manual_seed(0)
    model = _Model.build()
    x = torch.randn(3, 5, 67) * 3
    expected = model(x).numpy()
    net = qexact.from_torch(model)
    assert_bitexact(net(x.numpy()), expected, engine)
    qexact.save(net, tmp_path / "m")
    assert_bitexact(qexact.load(tmp_path / "m")(x.numpy()), expected, f"{engine} loaded")
    explanation = net.explain((x.numpy(),), index=(1, 2, 5))
    assert explanation.stages


def test_explain_replays_threshold():
    qp = QParams.per_tensor(0.1, 3, QINT8)
    params = prepare_activation("threshold", qp, None, engine="fbgemm", num_threads=1,
                                threshold=0.25, value=-0.35)
    x = QuantizedArray(np.arange(-20, 45, dtype=np.int8), qp)
    result = activation(x, params)
    # y = x > 0.25 ? x : -0.35: codes <= 5 (0.2) become round(-3.5) + 3 = -1 (half to even)
    expected = np.where(x.values > 5, x.values, -1).astype(np.int8)
    assert np.array_equal(result.values, expected)
    assert result.qparams == qp
    for index in (0, 30, 64):
        stages, upstream = ActivationOp.explain(params, [x], result, (index,))
        assert upstream == [(0, (index,))]
        assert stages


def test_errors():
    qp = QParams.per_tensor(0.1, 3, QINT8)
    with pytest.raises(QuantParamError, match="alpha"):
        prepare_activation("celu", qp, qp, engine="fbgemm", alpha=0.0)
    with pytest.raises(QuantParamError):
        prepare_activation("celu", qp, None, engine="fbgemm", alpha=1.0)
