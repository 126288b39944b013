"""TorchScript (``torch.jit.trace`` + ``torch.jit.save``) of eager- and FX-converted models,
imported with ``qexact.from_torch(path)`` through the handlers the FX/eager importer uses: the
outputs equal the scripted module's on every engine, bit for bit; nodes are named after the
modules of the user's model, and a refused op is placed in the user's model and file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact.engines import engine_names

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from support.cnn_models import CNN_MODELS, build_cnn  # noqa: E402
from support.fx_models import as_args, build_fx_model, random_input  # noqa: E402

ENGINES = engine_names()

FX_EXACT = ["interpolate_middle", "cat_many", "mean_flatten_head", "residual_plus",
            "audio_conv1d", "squeeze_excite_mul", "spatial_attention", "activation_zoo",
            "norm_zoo", "gated_scalar", "transpose_linear", "two_inputs", "tuple_output",
            "size_from_shape", "size_from_size_method", "input_normalization",
            "adaptive_max_head", "layer_scale", "hardswish", "silu", "maxpool_module",
            "upsample_module_nearest", "f_pad", "float_scalar_sub", "float_scalar_div"]
"""FX-converted models (support/fx_models.py) exact through TorchScript on every engine."""

FX_QUICK = ["residual_plus", "norm_zoo", "activation_zoo", "size_from_shape", "audio_conv1d"]
"""The FX models of the unmarked run (every one of FX_EXACT runs in the slow sweep)."""


@pytest.fixture(autouse=True)
def _restore_engine():
    previous = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = previous


def _saved(model, example, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), str(path))
        return torch.jit.load(str(path))


def _outputs(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _assert_script_exact(path, scripted, args, engine, context):
    net = qexact.from_torch(str(path), engine=engine)
    with torch.no_grad():
        expected = _outputs(scripted(*args))
    ours = _outputs(net(*(arg.numpy() for arg in args)))
    assert len(ours) == len(expected), context
    for position, (mine, theirs) in enumerate(zip(ours, expected)):
        assert_bitexact(mine, theirs.numpy(), f"{context} output {position}")
    return net


CNN_QUICK = [("resnet", "fbgemm"), ("mobilenet_v2", "x86"), ("mobilenet_v3", "qnnpack"),
             ("shufflenet_v2", "onednn"), ("detector", "x86")]
"""One engine per CNN in the unmarked run; the slow sweep runs every CNN on every engine."""


@pytest.mark.parametrize("name,engine", [case for case in CNN_QUICK if case[1] in ENGINES])
def test_eager_cnn_through_torchscript_is_exact(name, engine, tmp_path):
    _cnn_case(name, engine, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", list(CNN_MODELS))
def test_every_eager_cnn_through_torchscript_is_exact(name, engine, tmp_path):
    _cnn_case(name, engine, tmp_path)


def _cnn_case(name, engine, tmp_path):
    model, shape = build_cnn(name, engine)
    scripted = _saved(model, torch.randn(shape), tmp_path / f"{name}.pt")
    x = torch.randn((3,) + tuple(shape[1:])) * 1.5
    net = _assert_script_exact(tmp_path / f"{name}.pt", scripted, (x,), engine,
                               f"{name} (eager) via TorchScript on {engine}")
    eager_names = {node.name for node in qexact.from_torch(model, engine=engine).graph.nodes
                   if node.op in ("conv", "linear")}
    script_names = {node.name for node in net.graph.nodes if node.op in ("conv", "linear")}
    assert script_names == eager_names  # layers keep their module names


def _fx_case(name, engine, tmp_path):
    if name == "tiny_unet" and engine in ("fbgemm", "onednn"):
        pytest.skip("ConvTranspose: fbgemm's is refused (undefined output), onednn has no "
                    "per-channel ConvTranspose")
    model, shape, kind = build_fx_model(name, engine)
    scripted = _saved(model, as_args(random_input(shape, kind, seed=99)), tmp_path / f"{name}.pt")
    for seed, scale in ((5, 1.0), (6, 4.0)):
        # batch 3: at batch 1 audio_conv1d's max_pool1d differs (FX import too; see the report)
        args = as_args(random_input(shape, kind, seed=seed, batch=3, scale=scale))
        _assert_script_exact(tmp_path / f"{name}.pt", scripted, args, engine,
                             f"{name} (FX) via TorchScript on {engine}, scale {scale}")


@pytest.mark.parametrize("name,engine", [(name, ENGINES[i % len(ENGINES)])
                                         for i, name in enumerate(FX_QUICK)])
def test_fx_models_through_torchscript_are_exact(name, engine, tmp_path):
    _fx_case(name, engine, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", FX_EXACT + ["tiny_unet"])
def test_every_fx_model_through_torchscript_is_exact(name, engine, tmp_path):
    _fx_case(name, engine, tmp_path)


class TransformerForms(torch.nn.Module):
    """A class token expanded and concatenated, a position embedding, a bias table indexed by
    a buffer, unbind, and Python numbers left of quantized ``*`` and ``+``."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.scale, self.patch = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 8, 2, stride=2)
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 7, 8) * 0.1)
        self.table = nn.Parameter(torch.randn(5, 8) * 0.2)
        self.register_buffer("index", torch.tensor([4, 0, 1, 2, 3, 4, 1]))
        self.mix, self.out = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        s = self.scale(x)
        s = 3 * s + (2 + s) * s
        n = x.shape[0]
        tokens = self.patch(s).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), tokens], dim=1)
        tokens = tokens + self.pos + self.table[self.index]
        a, b = self.mix(tokens).reshape(n, 7, 2, 4).unbind(2)
        return self.out(torch.cat([a, b], -1) + tokens)


@pytest.mark.parametrize("engine", ["x86", "qnnpack"])
def test_transformer_forms_through_torchscript_are_exact(engine, tmp_path):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(TransformerForms().eval(), get_default_qconfig_mapping(engine),
                              (torch.randn(2, 3, 6, 4),))
        for _ in range(3):
            prepared(torch.randn(2, 3, 6, 4))
        model = convert_fx(prepared)
    scripted = _saved(model, (torch.randn(2, 3, 6, 4),), tmp_path / "forms.pt")
    for scale in (1.0, 4.0):
        _assert_script_exact(tmp_path / "forms.pt", scripted, (torch.randn(3, 3, 6, 4) * scale,),
                             engine, f"transformer forms on {engine}")


def test_a_refused_op_is_placed_in_the_users_model_and_file(tmp_path):
    class Head(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(torch.nn.ReLU(), Head())

        def forward(self, x):
            return self.features(x)

    _saved(Model(), (torch.randn(2, 3),), tmp_path / "m.pt")
    with pytest.raises(qexact.UnsupportedError,
                       match=r"at 'features.1' \(.*test_torchscript.py:\d+\): TorchScript op "
                             r"aten::cumsum is not supported") as info:
        qexact.from_torch(str(tmp_path / "m.pt"), engine="x86")
    assert "site-packages" not in str(info.value).split("supported TorchScript kinds")[0]


class _QuantizedMLP(torch.nn.Module):
    """Eager quantization's stubs around Linear + ReLU, Linear: scriptable (no control flow)."""

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc1, self.relu = torch.nn.Linear(10, 16), torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(16, 5)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(x)))))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_scripted_eager_model_is_exact(engine, tmp_path):
    """``torch.jit.script`` (not trace) of an eager-converted model: the converted Quantize
    module computes ``float(self.scale)`` and ``int(self.zero_point)`` from its buffers, which
    the importer folds into constants."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    torch.backends.quantized.engine = engine
    torch.manual_seed(3)
    model = _QuantizedMLP().eval()
    model.qconfig = get_default_qconfig(engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(model, inplace=True)
        model(torch.randn(64, 10))
        convert(model, inplace=True)
        torch.jit.save(torch.jit.script(model), str(tmp_path / "scripted.pt"))
        scripted = torch.jit.load(str(tmp_path / "scripted.pt"))
    assert "aten::Float" in str(scripted.quant.graph)
    for scale in (1.0, 8.0):
        _assert_script_exact(tmp_path / "scripted.pt", scripted, (torch.randn(7, 10) * scale,),
                             engine, f"scripted eager MLP on {engine}, scale {scale}")
