"""oneDNN's fused quantized ops on engine ``onednn`` (PyTorch runs them nowhere else):
LinearLeakyReLU / LinearTanh (an eltwise post-op before the output scale) and ConvAdd2d /
ConvAddReLU2d (oneDNN's "sum" post-op, then the ReLU), against torch on fresh packs, bit for
bit. Tanh is oneDNN's own polynomial: refused unless ``allow_inexact=("onednn_tanh",)``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import qexact
from qexact import QINT8, QUINT8, QParams, QuantizedArray
from qexact.errors import UnsupportedError
from qexact.ops.conv import conv, prepare_conv
from qexact.ops.linear import linear, prepare_linear

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = np.float32


@pytest.fixture(autouse=True)
def _onednn():
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"
    yield
    torch.backends.quantized.engine = previous


def _qparams(rng, dtype=QUINT8):
    return QParams.per_tensor(float(F(rng.uniform(0.01, 0.1))), int(rng.integers(0, 256)), dtype)


def _linear_case(seed, kind):
    rng = np.random.default_rng(seed)
    m, k, n = (int(v) for v in rng.integers(1, 40, 3))
    x, out = _qparams(rng), _qparams(rng)
    qx = rng.integers(0, 256, (m, k)).astype(np.uint8)
    weight = rng.integers(-127, 128, (n, k)).astype(np.int8)
    w_scale = float(F(rng.uniform(0.001, 0.01)))
    bias = F(rng.normal(0, 1, n))
    tx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), x.scale, x.zero_point)
    tw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(weight), w_scale, 0)
    packed = torch.ops.quantized.linear_prepack(tw, torch.from_numpy(bias))  # fresh pack
    alpha = float(rng.choice([0.01, 0.2, 0.5, 1.5]))
    if kind == "leaky_relu":
        y = torch.ops.quantized.linear_leaky_relu(tx, packed, out.scale, out.zero_point, alpha)
        eltwise = ("leaky_relu", alpha)
    else:
        y = torch.ops.quantized.linear_tanh(tx, packed, out.scale, out.zero_point)
        eltwise = ("tanh",)
    engine = replace(qexact.get_engine("onednn"), allowed_inexact=frozenset({"onednn_tanh"}))
    params = prepare_linear(weight, QParams.per_tensor(w_scale, 0, QINT8), bias, x, out,
                            engine=engine, eltwise=eltwise)
    return linear(QuantizedArray(qx, x), params).values, y.int_repr().numpy(), params


def test_linear_leaky_relu_is_exact():
    total = 0
    for seed in range(30):
        ours, theirs, _ = _linear_case(seed, "leaky_relu")
        assert np.array_equal(ours, theirs), seed
        total += ours.size
    assert total > 1000


def test_linear_tanh_refused_unless_allowed_and_identical_share():
    with pytest.raises(UnsupportedError, match="onednn_tanh"):
        prepare_linear(np.ones((2, 2), np.int8), QParams.per_tensor(0.1, 0, QINT8), None,
                       QParams.per_tensor(0.1, 0, QUINT8), QParams.per_tensor(0.1, 0, QUINT8),
                       engine="onednn", eltwise=("tanh",))
    same = total = 0
    for seed in range(30):
        ours, theirs, params = _linear_case(seed, "tanh")
        assert "tanh" in params.inexact
        same += int(np.count_nonzero(ours == theirs))
        total += ours.size
    # measured on AVX512-VNNI: every output identical; a correctly rounded tanh is not oneDNN's
    assert same / total > 0.99  # float-ok: documented inexact (onednn_tanh)


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack"])
def test_other_engines_refuse_the_fused_ops(engine):
    x = QParams.per_tensor(0.1, 0, QUINT8)
    with pytest.raises(UnsupportedError, match="no such post-op"):
        prepare_linear(np.ones((2, 2), np.int8), QParams.per_tensor(0.1, 0, QINT8), None, x, x,
                       engine=engine, eltwise=("leaky_relu", 0.1))
    with pytest.raises(UnsupportedError):
        prepare_conv(np.ones((2, 2, 1, 1), np.int8), QParams.per_tensor(0.1, 0, QINT8), None, x,
                     x, engine=engine, residual_qparams=x)


def _conv_case(seed, relu):
    rng = np.random.default_rng(seed)
    channels, out_channels = int(rng.integers(1, 9)), int(rng.integers(1, 17))
    size = int(rng.integers(3, 8))
    x, out, r = _qparams(rng), _qparams(rng), _qparams(rng)
    qx = rng.integers(0, 256, (2, channels, size, size)).astype(np.uint8)
    weight = rng.integers(-127, 128, (out_channels, channels, 3, 3)).astype(np.int8)
    w_scale = float(F(rng.uniform(0.0005, 0.005)))
    bias = F(rng.normal(0, 1, out_channels))
    qr = rng.integers(0, 256, (2, out_channels, size, size)).astype(np.uint8)
    tx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qx), x.scale, x.zero_point)
    tw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(weight), w_scale, 0)
    # a copy: PyTorch writes its result into a channels-last accum
    tr = torch._make_per_tensor_quantized_tensor(torch.from_numpy(qr.copy()), r.scale,
                                                 r.zero_point)
    packed = torch.ops.quantized.conv2d_prepack(tw, torch.from_numpy(bias), [1, 1], [1, 1],
                                                [1, 1], 1)
    op = torch.ops.quantized.conv2d_add_relu if relu else torch.ops.quantized.conv2d_add
    y = op(tx, tr, packed, out.scale, out.zero_point).int_repr().numpy()
    params = prepare_conv(weight, QParams.per_tensor(w_scale, 0, QINT8), bias, x, out, padding=1,
                          relu=relu, engine="onednn", residual_qparams=r)
    return conv(QuantizedArray(qx, x), params, QuantizedArray(qr, r)).values, y


@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_add_is_exact(relu):
    total = 0
    for seed in range(20):
        ours, theirs = _conv_case(seed, relu)
        assert np.array_equal(ours, theirs), seed
        total += ours.size
    assert total > 3000


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
        self.leaky, self.tanh, self.relu = torch.nn.LeakyReLU(0.2), torch.nn.Tanh(), torch.nn.ReLU()
        self.c1, self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1)
        self.c3, self.c4 = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x, img):
        y = self.tanh(self.l2(self.leaky(self.l1(x))))
        return y, self.relu(self.c1(img) + self.c2(img)), self.c3(img) + self.c4(img)


def _converted():
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.backend_config import get_onednn_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.manual_seed(0)
    model = _Model().eval()
    example = (torch.randn(5, 8), torch.randn(2, 4, 6, 6))
    config = get_onednn_backend_config()
    prepared = prepare_fx(model, QConfigMapping().set_global(get_default_qconfig("onednn")),
                          example, backend_config=config)
    for _ in range(4):
        prepared(*(torch.randn_like(e) * 2 for e in example))
    return convert_fx(prepared, backend_config=config), example


def test_fx_onednn_emits_the_fused_modules_and_qexact_matches(tmp_path):
    model, example = _converted()
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"LinearLeakyReLU", "LinearTanh", "ConvAdd2d", "ConvAddReLU2d"} <= kinds
    with pytest.raises(UnsupportedError, match="onednn_tanh"):
        qexact.from_torch(model, example, engine="onednn")
    net = qexact.from_torch(model, example, engine="onednn", allow_inexact=("onednn_tanh",))
    loaded_path = tmp_path / "fused.qexact"
    qexact.save(net, loaded_path)
    loaded = qexact.load(loaded_path, allow_inexact=("onednn_tanh",))
    for seed in range(3):
        torch.manual_seed(seed)
        inputs = tuple(torch.randn_like(e) * 2 for e in example)
        theirs = [t.numpy() for t in model(*inputs)]
        for candidate in (net, loaded):
            ours = candidate(*(i.numpy() for i in inputs))
            for a, b in zip(ours[1:], theirs[1:]):  # the conv outputs: exact
                assert np.array_equal(np.asarray(a).view(np.uint32), b.view(np.uint32))
            same = np.mean(np.asarray(ours[0]).view(np.uint32) == theirs[0].view(np.uint32))
            assert same > 0.99  # float-ok: documented inexact (onednn_tanh)


class _ResidualReadAgain(torch.nn.Module):
    """``c2``'s output is the residual of the fused ``c1(img) + r`` and is read again by ``c3``
    after the add: PyTorch's c3 reads the add's result (conv2d_add wrote into it)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.c2, self.c3 = torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 1)

    def forward(self, img):
        r = self.c2(img)
        return self.c1(img) + r, self.c3(r)


class _SameTensor(torch.nn.Module):
    """FX fuses ``relu(c2(z) + z)`` into ``c2(z, z)``: one tensor as conv input and residual."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = (torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2))

    def forward(self, img):
        z = self.c1(img)
        return torch.relu(self.c2(z) + z)


def _fx_onednn(model):
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.backend_config import get_onednn_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.manual_seed(0)
    model = model.eval()
    example = (torch.randn(2, 4, 6, 6),)
    config = get_onednn_backend_config()
    prepared = prepare_fx(model, QConfigMapping().set_global(get_default_qconfig("onednn")),
                          example, backend_config=config)
    for _ in range(4):
        prepared(torch.randn_like(example[0]) * 2)
    return convert_fx(prepared, backend_config=config), example


def test_residual_read_after_conv_add_reads_the_result(report):
    """torch: after conv2d_add the residual tensor holds the add's codes and qparams (measured
    here); ``alias_overwritten_residuals`` makes the later reader read the add's output, and the
    whole model is bit-equal. Without it the later reader differs (the residual's own values)."""
    from qexact.graph import Net
    from qexact.importers.torch import capture
    from qexact.importers.torch_onednn_fused import alias_overwritten_residuals

    x = torch.quantize_per_tensor(torch.randn(2, 4, 6, 6), 0.05, 128, torch.quint8)
    w = torch.quantize_per_tensor(torch.randn(4, 4, 3, 3) * 0.1, 0.002, 0, torch.qint8)
    def pack():
        return torch.ops.quantized.conv2d_prepack(w, torch.randn(4), [1, 1], [1, 1], [1, 1], 1)

    accum = torch.ops.quantized.conv2d(x, pack(), 0.07, 100)
    y = torch.ops.quantized.conv2d_add(x, accum, pack(), 0.09, 90)
    assert torch.equal(accum.int_repr(), y.int_repr())
    assert (accum.q_scale(), accum.q_zero_point()) == (y.q_scale(), y.q_zero_point())

    model, example = _fx_onednn(_ResidualReadAgain())
    captured = capture(model)  # as read, before from_torch states the in-place write
    net = qexact.from_torch(model, engine="onednn")
    assert len(alias_overwritten_residuals(captured).nodes) == len(net.graph.nodes)
    elements = 0
    for seed in range(4):
        torch.manual_seed(seed + 10)
        inputs = torch.randn_like(example[0]) * 2
        theirs = [t.numpy() for t in model(inputs)]
        ours = net(inputs.numpy())
        for a, b in zip(ours, theirs):
            assert np.array_equal(np.asarray(a).view(np.uint32), b.view(np.uint32)), seed
            elements += b.size
    report["onednn conv_add residual read again (aliased)"].update(cases=4, elements=elements)
    unaliased = Net(captured, "onednn")(inputs.numpy())
    assert not np.array_equal(np.asarray(unaliased[1]).view(np.uint32), theirs[1].view(np.uint32))


def test_residual_of_unknown_layout_read_again_is_refused():
    from qexact.graph import Graph, Node, Ref
    from qexact.importers.torch_onednn_fused import alias_overwritten_residuals

    graph = Graph(["x"], [Node("r", "quantize", (Ref("x"),)),
                          Node("add", "conv", (Ref("x"), Ref("r"))),
                          Node("after", "relu", (Ref("r"),))], [Ref("add"), Ref("after")])
    with pytest.raises(UnsupportedError, match="read again after the conv2d_add"):
        alias_overwritten_residuals(graph)
    graph.nodes.pop()
    graph.outputs.pop()
    assert alias_overwritten_residuals(graph).outputs == [Ref("add")]


def test_same_tensor_as_input_and_residual_is_refused():
    """PyTorch's ``conv2d_add(z, z)`` is not conv(z) + z (oneDNN overwrites z while reading it):
    measured against conv2d_add(z, z.clone()), then refused."""
    x = torch.quantize_per_tensor(torch.randn(2, 4, 6, 6), 0.05, 128, torch.quint8)
    w = torch.quantize_per_tensor(torch.randn(4, 4, 3, 3) * 0.1, 0.002, 0, torch.qint8)
    packed = torch.ops.quantized.conv2d_prepack(w, torch.randn(4), [1, 1], [1, 1], [1, 1], 1)
    z = torch.ops.quantized.conv2d(x, packed, 0.07, 100)
    other = torch.ops.quantized.conv2d_prepack(w, torch.randn(4), [1, 1], [1, 1], [1, 1], 1)
    copy = torch.ops.quantized.conv2d_add(z, z.clone(memory_format=torch.channels_last), other,
                                          0.09, 90)
    same = torch.ops.quantized.conv2d_add(z, z, other, 0.09, 90)
    assert not torch.equal(copy.int_repr(), same.int_repr())
    model, _ = _fx_onednn(_SameTensor())
    assert "c2(c1,c1)" in model.code.replace(" ", "")
    with pytest.raises(UnsupportedError, match="same tensor as conv input and residual"):
        qexact.from_torch(model, engine="onednn")


def test_traced_conv_add_quirks():
    """The same through TorchScript (``quantized::conv2d_add`` nodes): the aliased residual
    is exact, the same-tensor form refused."""
    import warnings

    from qexact.graph import Net
    from qexact.importers.torch_onednn_fused import alias_overwritten_residuals

    model, example = _fx_onednn(_ResidualReadAgain())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.trace(model, example)
    net = Net(alias_overwritten_residuals(qexact.from_torch(script, engine="onednn").graph),
              "onednn")
    inputs = torch.randn_like(example[0]) * 2
    for a, b in zip(net(inputs.numpy()), model(inputs)):
        assert np.array_equal(np.asarray(a).view(np.uint32), b.numpy().view(np.uint32))
    model, example = _fx_onednn(_SameTensor())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.trace(model, example)
    with pytest.raises(UnsupportedError, match="same tensor as conv input and residual"):
        qexact.from_torch(script, engine="onednn")
