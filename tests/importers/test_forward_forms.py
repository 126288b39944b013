"""Forms users write in ``forward`` that FX-converted models keep: sizes from ``x.shape`` and
slices of them, dict outputs, and float arithmetic with Python numbers between a dequantize and a
quantize (input normalization). Each model is compared exactly with PyTorch on every engine and
survives a save/load."""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines import engine_names

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
F = torch.nn.functional
nn = torch.nn

ENGINES = engine_names()


class ShapeSizedHead(nn.Module):
    """A segmentation-style head: upsample back to the input's size, read from x.shape."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.body, self.head = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        if self.how == "shape":
            size = x.shape[-2:]
        elif self.how == "size":
            size = x.size()[2:]
        else:
            size = (x.size(2), x.size(3))
        return F.interpolate(self.head(self.body(x)), size=size, mode="bilinear",
                             align_corners=False)


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return {"out": self.a(x), "aux": self.b(x)}


class FloatArithmetic(nn.Module):
    """Input normalization and a float ``- 1`` after chunk (FX runs both in float)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.a((x - 0.45) / 0.226)
        return self.b(2.0 - torch.chunk(y, 2, 1)[0] * 3 + (-y[:, 3:]))


def fx_quantized(builder, engine, shape):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = builder().eval()
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (torch.randn(shape),))
    for _ in range(3):
        prepared(torch.randn(shape))
    return convert_fx(prepared)


def _compare(ours, theirs, context):
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), context
        for key in theirs:
            assert_bitexact(ours[key], theirs[key].numpy(), f"{context} [{key}]")
    else:
        assert_bitexact(ours, theirs.numpy(), context)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("builder,shape", [
    (lambda: ShapeSizedHead("shape"), (2, 3, 15, 17)),
    (lambda: ShapeSizedHead("size"), (1, 3, 9, 12)),
    (lambda: ShapeSizedHead("dims"), (1, 3, 10, 7)),
    (DictOutput, (2, 3, 9, 8)),
    (FloatArithmetic, (2, 3, 6, 7)),
], ids=["x.shape[-2:]", "x.size()[2:]", "(x.size(2), x.size(3))", "dict", "float-arithmetic"])
def test_forward_forms_are_exact_and_saved(engine, builder, shape, tmp_path):
    model = fx_quantized(builder, engine, shape)
    net = qexact.from_torch(model)
    for trial in range(2):  # the computed sizes follow each input
        x = torch.randn(shape[:2] + tuple(s + trial for s in shape[2:]))
        _compare(net(x.numpy()), model(x), f"{engine} trial {trial}")
    path = tmp_path / "model.qexact"
    qexact.save(net, path)
    _compare(qexact.load(path)(x.numpy()), model(x), f"{engine} after load")


def test_float_arithmetic_rounds_as_torch():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4099) * 10.0 ** rng.uniform(-30, 30, 4099)).astype(np.float32)
    x[:5] = [0.0, -0.0, np.inf, -np.inf, np.nan]
    from qexact.ops.arith import float_arithmetic

    t = torch.from_numpy(x)
    for name, ours, theirs in [
            ("sub", float_arithmetic("sub", [x, 0.45]), t - 0.45),
            ("truediv", float_arithmetic("truediv", [x, 0.226]), t / 0.226),
            ("rtruediv", float_arithmetic("truediv", [3.0, x]), 3.0 / t),
            ("mul", float_arithmetic("mul", [x, 1e-3]), t * 1e-3),
            ("radd", float_arithmetic("add", [7, x]), 7 + t),
            ("rsub", float_arithmetic("sub", [2.5, x]), 2.5 - t),
            ("neg", float_arithmetic("neg", [x]), -t),
            ("tensors", float_arithmetic("add", [x, x[::-1].copy()]), t + t.flip(0))]:
        assert_bitexact(ours, theirs.numpy(), name)


def test_unsupported_forward_forms_name_the_place():
    from qexact.ops.arith import float_arithmetic

    with pytest.raises(qexact.UnsupportedError, match="floordiv on float tensors"):
        float_arithmetic("floordiv", [np.zeros(3, np.float32), 2])

    class Attribute(nn.Module):
        def forward(self, x):
            return x * x.ndim

    with pytest.raises(qexact.UnsupportedError, match="at 'getattr.*only .shape"):
        qexact.from_torch(Attribute())


class ShapeChecked(nn.Module):
    """ViT-style: the forward checks the image size it reads from x.shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        n, c, h, w = x.shape
        torch._assert(h == 8, f"Wrong image height! Expected 8 but got {h}!")
        torch._assert(w <= 9, "too wide")
        return self.conv(x)


def test_shape_checks_in_forward_run_and_fail_as_torch():
    model = fx_quantized(ShapeChecked, "fbgemm", (1, 3, 8, 9))
    net = qexact.from_torch(model)
    x = torch.randn(2, 3, 8, 9)
    assert_bitexact(net(x.numpy()), model(x).numpy(), "shape checked")
    from qexact.summary import inspect_net

    inspect_net(net, (x.numpy(),))  # the checks' None values do not upset inspect
    with pytest.raises(qexact.ShapeError, match="Wrong image height"):
        net(torch.randn(1, 3, 7, 9).numpy())


def test_stochastic_depth_is_the_identity_in_eval():
    from support.torchvision_models import import_torchvision

    if import_torchvision() is None:
        pytest.skip("torchvision is not installed")
    from torchvision.ops import StochasticDepth

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.sd, self.b = nn.Conv2d(3, 6, 3, padding=1), StochasticDepth(0.2, "row"), \
                nn.Conv2d(6, 4, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(self.sd(y) + y)

    for engine in ENGINES:
        model = fx_quantized(Block, engine, (2, 3, 7, 6))
        x = torch.randn(2, 3, 7, 6)
        assert_bitexact(qexact.from_torch(model)(x.numpy()), model(x).numpy(), engine)


# --- Parameters and buffers used in forward, unbind, scalars on the left -------------------------


class ParameterForms(nn.Module):
    """Transformer forms: ViT's class token expanded to the batch and concatenated with the patch
    tokens, a position embedding sliced to the sequence length (BERT's ``pos[:, :x.shape[1]]``:
    op dynamic_slice) and added, Swin's relative-position bias table indexed by a buffer,
    ``unbind`` of a stacked tensor, and Python numbers on the left of ``*`` and ``+``."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 9, 8) * 0.1)  # longer than the sequence
        self.table = nn.Parameter(torch.randn(5, 8) * 0.2)
        self.register_buffer("index", torch.tensor([[4, 0, 1, 2, 3, 4, 1]]))
        self.mix = nn.Linear(8, 8)
        self.scale = nn.Conv2d(3, 3, 1)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        s = self.scale(x)
        s = 3 * s + (2 + s) * s                        # quantized.mul(3, s), quantized.add(2, s)
        n = x.shape[0]
        tokens = self.patch(s).flatten(2).transpose(1, 2)          # (n, 6, 8)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        tokens = tokens + self.pos[:, :tokens.shape[1]] + self.table[self.index.view(-1)]
        a, b = self.mix(tokens).reshape(n, 7, 2, 4).unbind(2)
        return self.out(torch.cat([a, b], -1) + tokens)


@pytest.mark.parametrize("engine", ENGINES)
def test_parameters_buffers_unbind_and_left_scalars_are_exact_and_saved(engine, tmp_path):
    model = fx_quantized(ParameterForms, engine, (2, 3, 6, 4))
    net = qexact.from_torch(model)
    assert {"constant", "expand", "unbind"} <= {node.op for node in net.graph.nodes}
    for seed in range(2):
        x = torch.randn(3, 3, 6, 4, generator=torch.Generator().manual_seed(seed)) * (1 + 3 * seed)
        _compare(net(x.numpy()), model(x), f"{engine} seed {seed}")
    path = tmp_path / "model.qexact"
    qexact.save(net, path)
    _compare(qexact.load(path)(x.numpy()), model(x), f"{engine} after load")


def test_left_scalar_quantized_ops_match_right_scalar_ones():
    """``3 * x`` is ``torch.ops.quantized.mul(3, x)`` in a converted FX graph (mul.Scalar2):
    the node is the same as that of ``x * 3``."""
    from qexact.importers._handlers import function_handler_at, load_handler_modules
    from qexact.graph import Ref

    load_handler_modules()
    for op, expected in (("mul", "mul_scalar"), ("add", "add_scalar")):
        handler = function_handler_at(f"torch.ops.quantized.{op}")
        left, right = handler("n", (3, Ref("x")), {}), handler("n", (Ref("x"), 3), {})
        assert (left.op, left.inputs, left.attrs) == (right.op, right.inputs, right.attrs)
        assert left.op == expected
