"""softmax / log_softmax on float32 (last and other dims, 1-D..4-D, lengths around the SIMD
width, large/small/negative/inf inputs, ties) and quantized softmax (nnq.Softmax: ATen's
dequantize-softmax-quantize, or QNNPACK's softargmax on the qnnpack engine), bit-exact with
PyTorch; and a transformer-style block Linear -> GELU -> Linear -> softmax quantized with FX on
every engine, run by qexact and compared with torch exactly, also after save/load."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.dtypes import QUINT8
from qexact.engines import detect_aten_capability
from qexact.qparams import QParams, QuantizedArray
from qexact.ops.softmax import prepare_softmax, softmax

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(detect_aten_capability() != "avx512",
                                 reason="measured on an AVX512 host")]
F = torch.nn.functional
nn = torch.nn


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    flat = x.reshape(-1)
    specials = np.float32([80.0, -80.0, 1e-30, -100.0, 3.0, 3.0, 3.0, 88.0, -1e30, 0.0])
    flat[:min(flat.size, specials.size)] = specials[:min(flat.size, specials.size)]
    return x


CASES = ([((n,), 0) for n in (1, 7, 15, 16, 17, 33, 70, 1000, 4099)]
         + [((3, n), -1) for n in range(1, 71)]
         + [((3, n), 0) for n in (1, 15, 16, 17, 70)]
         + [((4, 5, 3), 1), ((2, 7, 33), 1), ((3, 40, 17), 0), ((2, 3, 4, 5), 1),
            ((2, 3, 4, 37), 2), ((5, 1000), 0), ((2, 9, 4099), 1), ((3, 8, 1), 1),
            ((2, 3, 4, 5), -1), ((2, 3, 4, 5), 0), ((2, 3, 4, 5), 3)])


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("log", [False, True])
def test_float_softmax_bitexact(log, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_cases(log)
    finally:
        torch.set_num_threads(previous)


def _check_cases(log):
    compared = 0
    for shape, dim in CASES:
        x = _data(shape, len(shape) * 100 + shape[-1])
        params = prepare_softmax(dim, log=log, engine="fbgemm",
                                 num_threads=torch.get_num_threads())
        expected = (torch.log_softmax if log else torch.softmax)(torch.from_numpy(x), dim)
        assert_bitexact(softmax(x, params).view(np.uint32), expected.numpy().view(np.uint32),
                        context=f"{'log_' if log else ''}softmax {shape} dim={dim}")
        compared += x.size
    assert compared > 50000


@pytest.mark.parametrize("log", [False, True])
def test_float_softmax_infinities_and_noncontiguous(log):
    x = _data((4, 37), 1)
    x[0, 3] = np.inf
    x[1, :] = -np.inf
    x[2, 5] = np.nan
    cases = [(x, -1), (x, 0), (np.ascontiguousarray(_data((6, 20), 2).T)[:, ::2], 1),
             (_data((6, 20), 3).T, 0)]
    for array, dim in cases:
        params = prepare_softmax(dim, log=log, engine="x86",
                                 num_threads=torch.get_num_threads())
        expected = (torch.log_softmax if log else torch.softmax)(torch.from_numpy(array), dim)
        got, want = softmax(array, params), expected.numpy()
        nan = np.isnan(got) & np.isnan(want)  # NaN payloads are not modelled
        assert_bitexact(np.where(nan, 0, got.view(np.uint32)),
                        np.where(nan, 0, want.view(np.uint32)), context=f"{array.shape} {dim}")


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
@pytest.mark.parametrize("output", [(1.0 / 256, 0), (0.01, 3)])
def test_quantized_softmax(engine, output):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        rng = np.random.default_rng(4)
        for shape, dim, scale, zero_point in [((4, 37), -1, 0.05, 128), ((3, 70, 5), 1, 0.2, 10),
                                              ((2, 3, 4, 17), 0, 0.013, 200),
                                              ((8, 1000), 1, 0.1, 100)]:
            x = torch.from_numpy((rng.standard_normal(shape) * 3).astype(np.float32))
            qx = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8)
            expected = torch.ops.quantized.softmax(qx, dim, output[0], output[1])
            params = prepare_softmax(dim, engine=engine,
                                     input_qparams=QParams.per_tensor(scale, zero_point, QUINT8),
                                     output_qparams=QParams.per_tensor(*output, QUINT8),
                                     num_threads=torch.get_num_threads())
            got = softmax(QuantizedArray(qx.int_repr().numpy(), params.input_qparams), params)
            assert_bitexact(got.values, expected.int_repr().numpy(),
                            context=f"{engine} {shape} dim={dim} out={output}")
    finally:
        torch.backends.quantized.engine = previous


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.gelu, self.l2 = nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 40)
        self.softmax = nn.Softmax(-1)

    def forward(self, x):
        y = self.l2(self.gelu(self.l1(x)))
        return (self.softmax(y), F.softmax(y, dim=0), torch.log_softmax(y, -1),
                F.gelu(y, approximate="tanh"), y.softmax(-1), F.gelu(y))


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
def test_fx_transformer_block(engine, tmp_path):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        torch.manual_seed(0)
        model = Block().eval()
        example = torch.randn(8, 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (example,))
            prepared(example)
            converted = convert_fx(prepared)
        net = qexact.from_torch(converted, engine=engine)
        x = torch.randn(8, 16) * 2
        expected = converted(x)
        path = tmp_path / "block.qexact"
        qexact.save(net, path)
        for runner in (net, qexact.load(path)):
            outputs = runner(x.numpy())
            for index, (got, want) in enumerate(zip(outputs, expected)):
                if want.is_quantized:
                    assert_bitexact(got.values, want.int_repr().numpy(),
                                    context=f"{engine} output {index}")
                else:
                    assert_bitexact(np.asarray(got).view(np.uint32), want.numpy().view(np.uint32),
                                    context=f"{engine} output {index}")
    finally:
        torch.backends.quantized.engine = previous
