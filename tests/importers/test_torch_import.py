"""``qexact.from_torch`` against the eager-mode quantized models of ``support.models``.

Every float output is compared bit for bit with the PyTorch model's own output, on every engine,
for in-range, clipping, grid-tie and non-finite inputs. Also: ``run_quantized`` against torch's
quantized output, the fields of ``net.layers`` against the converted modules, and the errors the
importer raises for models it cannot read.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qexact  # noqa: E402
from qexact.engines import engine_names  # noqa: E402
from support.assertions import assert_bitexact  # noqa: E402
from support.models import (MODELS, build, forum_model_quantized_output,  # noqa: E402
                            multilayer_quantized_output)

pytestmark = pytest.mark.torch

ENGINES = engine_names()


@pytest.fixture(autouse=True)
def _restore_engine():
    previous = torch.backends.quantized.engine
    yield
    torch.backends.quantized.engine = previous


_BUILT: dict = {}


def built(name, engine):
    """(model, shape, net), built once per (model, engine) for the whole session."""
    key = (name, engine)
    if key not in _BUILT:
        builder = MODELS[name] if isinstance(name, str) else name
        model, shape = build(builder, engine)
        example = torch.rand(shape)
        net = qexact.from_torch(model, example_inputs=(example,), engine=engine)
        _BUILT[key] = (model, shape, net)
    torch.backends.quantized.engine = engine
    return _BUILT[key]


def input_families(model, shape, seed):
    """Named float32 input batches: calibrated range, clipping, grid ties, special values."""
    rng = np.random.default_rng(seed)
    rows = 64
    shape = (rows,) + tuple(shape[1:])
    quant = model.quant
    scale, zero_point = float(quant.scale), int(quant.zero_point)
    grid = (rng.integers(-5, 261, size=shape) - zero_point).astype(np.float64)
    families = {
        "uniform01": rng.random(shape, dtype=np.float32),
        "normal": rng.standard_normal(shape, dtype=np.float32),
        "wide": (rng.standard_normal(shape) * 20).astype(np.float32),   # far outside calibration
        "huge": (rng.standard_normal(shape) * 1e30).astype(np.float32),
        "tiny": (rng.standard_normal(shape) * 1e-40).astype(np.float32),  # subnormals
        "grid_ties": ((grid + 0.5) * scale).astype(np.float32),        # x/s lands near .5
        "grid_points": (grid * scale).astype(np.float32),
        "signed_zeros": np.where(rng.random(shape) < 0.5, np.float32(0.0), np.float32(-0.0)),
    }
    special = rng.standard_normal(shape, dtype=np.float32)
    mask = rng.random(shape)
    special[mask < 0.1] = np.nan
    special[(mask >= 0.1) & (mask < 0.2)] = np.inf
    special[(mask >= 0.2) & (mask < 0.3)] = -np.inf
    families["nan_inf"] = special
    return families


COMPARED: dict[str, int] = {}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_bitexact(name, engine):
    model, shape, net = built(name, engine)
    seed = zlib.crc32(f"{name}/{engine}".encode())
    for family, x in input_families(model, shape, seed).items():
        expected = model(torch.from_numpy(x)).numpy()
        context = f"{name} on {engine} ({net.isa}), inputs {family!r}, torch {torch.__version__}"
        assert_bitexact(net(x), expected, context)
        if family == "wide":  # the input quantization saturates: outputs clip somewhere
            saturated = model.quant(torch.from_numpy(x)).int_repr()
            assert bool((saturated == 0).any()) and bool((saturated == 255).any())
        COMPARED[engine] = COMPARED.get(engine, 0) + expected.size


@pytest.mark.parametrize("engine", ENGINES)
def test_torch_tensor_and_numpy_inputs_agree(engine):
    model, shape, net = built("multilayer_view", engine)
    x = torch.randn(50, *shape[1:]) * 4
    expected = model(x).numpy()
    from_tensor = net(x)
    assert isinstance(from_tensor, np.ndarray) and from_tensor.dtype == np.float32
    assert_bitexact(from_tensor, expected, f"torch tensor input on {engine}")
    assert_bitexact(net(x.numpy()), expected, f"numpy input on {engine}")
    # A non-contiguous tensor and a tensor that requires grad are fine too.
    wide = torch.randn(50, shape[1], 2 * shape[2]).requires_grad_(True)
    strided = wide[:, :, ::2]
    with torch.no_grad():
        assert_bitexact(net(strided), model(strided).numpy(), f"strided input on {engine}")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("builder", [forum_model_quantized_output, multilayer_quantized_output],
                         ids=["forum", "multilayer"])
def test_run_quantized_matches_torch_quantized_output(builder, engine):
    model, shape, net = built(builder, engine)
    rng = np.random.default_rng(7)
    for x in (rng.standard_normal((100,) + shape[1:], dtype=np.float32) * 3,
              rng.random((100,) + shape[1:], dtype=np.float32)):
        expected = model(torch.from_numpy(x))
        assert expected.is_quantized
        result = net.run_quantized(x)
        assert isinstance(result, qexact.QuantizedArray)
        assert_bitexact(result.values, expected.int_repr().numpy(), f"int values on {engine}")
        assert result.scale == expected.q_scale()
        assert result.zero_point == expected.q_zero_point()
        assert result.dtype == qexact.QUINT8


@pytest.mark.parametrize("engine", ENGINES)
def test_run_quantized_before_final_dequantize(engine):
    """With a DeQuantStub, run_quantized gives the last layer's quantized tensor."""
    model, shape, net = built("multilayer_flatten", engine)
    captured = {}
    handle = model.head.out.register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        x = torch.randn(40, *shape[1:]) * 2
        expected_float = model(x).numpy()
    finally:
        handle.remove()
    result = net.run_quantized(x)
    assert_bitexact(result.values, captured["out"].int_repr().numpy(), f"hooked output on {engine}")
    assert (result.scale, result.zero_point) == (captured["out"].q_scale(),
                                                 captured["out"].q_zero_point())
    assert_bitexact(qexact.dequantize(result), expected_float, f"dequantized on {engine}")


# --- net.layers ---------------------------------------------------------------------------------


def linear_modules(model):
    quantized = (torch.ao.nn.quantized.Linear,)
    return {name: module for name, module in model.named_modules()
            if isinstance(module, quantized)}


def linear_layers(net):
    return {name: p for name, p in net.layers.items() if isinstance(p, qexact.LinearParams)}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_layers_fields(name, engine):
    model, shape, net = built(name, engine)
    modules = linear_modules(model)
    layers = linear_layers(net)
    assert list(layers) == list(modules), "one LinearParams per quantized Linear, by module name"
    previous_output = (float(model.quant.scale), int(model.quant.zero_point))
    for layer_name, module in modules.items():
        p = layers[layer_name]
        weight = module.weight()
        assert p.weight.dtype == np.int8
        assert_bitexact(p.weight, weight.int_repr().numpy(), f"{layer_name}.weight")
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            assert_bitexact(np.asarray(p.weight_scale),
                            weight.q_per_channel_scales().double().numpy(), "weight_scale")
            assert_bitexact(np.asarray(p.weight_zero_point, np.int64),
                            weight.q_per_channel_zero_points().numpy(), "weight_zero_point")
        else:
            assert p.weight_scale == weight.q_scale()
            assert p.weight_zero_point == weight.q_zero_point()
        torch_bias = module.bias()
        if torch_bias is None:
            assert p.float_bias is None and p.bias is None
        else:
            assert p.float_bias.dtype == np.float32
            assert_bitexact(p.float_bias, torch_bias.detach().numpy(), f"{layer_name}.float_bias")
            if engine == "qnnpack":
                assert p.bias.dtype.kind == "i"
            else:
                assert p.bias.dtype == np.float32
                assert_bitexact(p.bias, p.float_bias, "float bias is added as is")
        assert p.bias_mode.name == ("INT32_AT_INPUT_SCALE" if engine == "qnnpack" else "FLOAT32")
        # Layers chain: a Linear's input qparams are the previous quantized output's (ReLU,
        # dropout, flatten keep them).
        assert (p.input_scale, p.input_zero_point) == previous_output
        assert (p.output_scale, p.output_zero_point) == (module.scale, module.zero_point)
        previous_output = (p.output_scale, p.output_zero_point)
        assert isinstance(p.relu, bool)
        assert p.relu == isinstance(module, torch.ao.nn.intrinsic.quantized.LinearReLU)
        assert p.engine == engine and p.isa == net.isa == qexact.detect_isa()
        assert p.kernel == net.engine.linear.name
        assert p.kernel.startswith({"x86": "fbgemm"}.get(engine, engine))
        assert isinstance(p.pair_saturation, bool)
        assert len(p.multiplier) >= 1
        assert all(np.asarray(m).dtype == np.float32 for m in p.multiplier)
        assert len(p.requantization) >= 1


def _qnnpack_bias_reference(p):
    """int32 bias per semantics.md §2.2, computed by torch's own quantize (QuantizeBias)."""
    bias = torch.from_numpy(p.float_bias)
    if np.ndim(p.weight_scale):
        scales = torch.from_numpy(np.asarray(p.weight_scale, np.float64) * p.input_scale)
        q = torch.quantize_per_channel(bias, scales, torch.zeros(len(scales), dtype=torch.int64),
                                       0, torch.qint32)
    else:
        q = torch.quantize_per_tensor(bias, float(p.weight_scale) * p.input_scale, 0, torch.qint32)
    return q.int_repr().numpy()


def _qnnpack_bias_formula(p):
    """clamp(rne(f32(bias * f32(1 / f32(s_w * s_x)))), int32), in NumPy."""
    scale = np.asarray(p.weight_scale, np.float64) * p.input_scale
    inv = np.float32(1.0) / scale.astype(np.float32)
    t = (p.float_bias * inv).astype(np.float32)
    return np.clip(np.rint(t.astype(np.float64)), -2**31, 2**31 - 1).astype(np.int32)


@pytest.mark.parametrize("name", ["forum", "multilayer_flatten", "per_tensor"])
def test_qnnpack_int32_bias_values(name):
    model, shape, net = built(name, "qnnpack")
    for layer_name, p in linear_layers(net).items():
        expected = _qnnpack_bias_reference(p)
        assert_bitexact(p.bias.astype(np.int32), expected, f"{layer_name} int32 bias vs torch")
        assert_bitexact(p.bias.astype(np.int32), _qnnpack_bias_formula(p),
                        f"{layer_name} int32 bias vs round(bias / (s_x * s_w))")
        assert np.all(p.bias >= -2**31) and np.all(p.bias < 2**31)


def test_qnnpack_bias_dtype_is_int32():
    model, shape, net = built("forum", "qnnpack")
    assert net.layers["fc_1"].bias.dtype == np.int32


@pytest.mark.parametrize("engine", ENGINES)
def test_layers_are_named_by_module_path(engine):
    model, shape, net = built("multilayer_flatten", engine)
    names = list(linear_layers(net))
    assert names == ["fc1", "fc2", "head.body.0", "head.body.2.1", "head.out"]
    assert net.layers["fc1"].relu and not net.layers["fc2"].relu
    ops = [node.op for node in net.graph.nodes]
    assert ops.count("relu") == 2 and ops.count("flatten") == 1 and ops.count("linear") == 5


def test_view_model_captures_size_arithmetic():
    model, shape, net = built("multilayer_view", "fbgemm")
    ops = [node.op for node in net.graph.nodes]
    assert "size" in ops and "reshape" in ops
    # The batch size is read at run time, not frozen from the example input.
    for rows in (1, 2, 17):
        x = torch.randn(rows, *shape[1:])
        assert_bitexact(net(x), model(x).numpy(), f"batch {rows}")


# --- Errors -------------------------------------------------------------------------------------


class _Block(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


class _FloatLeftOver(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc = torch.nn.Linear(6, 6)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.block = _Block(torch.nn.Linear(6, 3))

    def forward(self, x):
        return self.block(self.dequant(self.fc(self.quant(x))))


class _MishModel(torch.nn.Module):
    """A module qexact lacks (Mish has no quantized kernel; it stays a float module)."""

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.block = torch.nn.Module()
        self.block.act = torch.nn.Mish()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(torch.flatten(self.block.act(self.quant(x)), 1))


class _SigmoidModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.fc = torch.nn.Linear(6, 4)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(torch.cumsum(self.fc(self.quant(x)), dim=1))


class _BranchingModel(_SigmoidModel):
    def forward(self, x):
        x = self.fc(self.quant(x))
        if x.dequantize().sum() > 0:
            x = torch.relu(x)
        return self.dequant(x)


def _convert(model, shape, engine="fbgemm"):
    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model.eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    if isinstance(model, _FloatLeftOver):
        model.block.qconfig = None
    prepared = torch.ao.quantization.prepare(model)
    for _ in range(3):
        prepared(torch.randn(shape))
    return torch.ao.quantization.convert(prepared)


def test_unconverted_float_linear_is_unsupported():
    model = _convert(_FloatLeftOver(), (4, 6))
    with pytest.raises(qexact.UnsupportedError) as info:
        qexact.from_torch(model)
    message = str(info.value)
    assert "'block.layer'" in message
    assert "torch.nn.modules.linear.Linear" in message
    assert "float module" in message
    assert "torch.ao.nn.quantized.Linear" in message and "torch.nn.ReLU" in message


def test_unsupported_module_is_named_with_its_place():
    model = _convert(_MishModel(), (2, 1, 5, 5))
    with pytest.raises(qexact.UnsupportedError) as info:
        qexact.from_torch(model)
    message = str(info.value)
    assert "'block.act'" in message
    assert "Mish" in message and "torch.nn.modules.activation" in message
    assert "Supported modules:" in message
    assert "torch.ao.nn.quantized.Linear" in message


def test_unsupported_function_in_forward():
    model = _convert(_SigmoidModel(), (4, 6))
    with pytest.raises(qexact.UnsupportedError) as info:
        qexact.from_torch(model)
    message = str(info.value)
    assert "cumsum" in message
    assert "_SigmoidModel.forward" in message
    assert "supported functions" in message and "torch.flatten" in message


def test_data_dependent_control_flow_is_an_importer_error():
    model = _convert(_BranchingModel(), (4, 6))
    with pytest.raises(qexact.ImporterError) as info:
        qexact.from_torch(model)
    message = str(info.value)
    assert "_BranchingModel.forward" in message and "symbolic tracing" in message
    assert "branch on tensor values" in message


def test_not_a_module_is_an_importer_error():
    with pytest.raises(qexact.ImporterError, match="expected a torch.nn.Module, got function"):
        qexact.from_torch(lambda x: x)


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_input_dtype(engine):
    model, shape, net = built("forum", engine)
    x64 = np.random.default_rng(0).random(shape)
    with pytest.raises(qexact.ShapeError, match=r"must be float32.*got float64.*astype\(np.float32\)"):
        net(x64)
    with pytest.raises(qexact.ShapeError, match="got float64"):
        net(torch.from_numpy(x64))
    with pytest.raises(qexact.ShapeError, match="got int64"):
        net(np.ones(shape, dtype=np.int64))


def test_wrong_number_of_inputs():
    model, shape, net = built("forum", "fbgemm")
    x = np.zeros(shape, np.float32)
    with pytest.raises(qexact.ShapeError, match=r"takes 1 input\(s\), got 2"):
        net(x, x)
    with pytest.raises(qexact.ShapeError, match=r"takes 1 input\(s\), got 0"):
        net()
    with pytest.raises(qexact.ShapeError, match=r"takes 1 input\(s\), got 2"):
        net.run_quantized(x, x)


def test_wrong_input_shape_names_the_layer():
    model, shape, net = built("forum", "fbgemm")
    with pytest.raises(qexact.ShapeError, match=r"node 'fc_1' \[linear\].*\(\.\.\., 10\).*\(3, 7\)"):
        net(np.zeros((3, 7), np.float32))


def test_quantized_tensor_input_is_rejected():
    model, shape, net = built("forum", "fbgemm")
    xq = torch.quantize_per_tensor(torch.rand(shape), 0.1, 0, torch.quint8)
    with pytest.raises(qexact.ShapeError, match="quantized torch tensors"):
        net(xq)


class _ReLU6Model(torch.nn.Module):
    """nn.ReLU6 converts to nnq.ReLU6, a subclass of nn.ReLU: the most derived class's handler
    (a clamp at 6) must win over nn.ReLU's, whatever order the handler modules registered in."""

    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.act = torch.nn.ReLU6()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.act(self.quant(x)))


def _relu6_model(engine):
    torch.manual_seed(0)
    return _ReLU6Model(), [torch.randn(64, 10) * 10 for _ in range(3)], (1, 10)


@pytest.mark.parametrize("engine", ENGINES)
def test_quantized_relu6_is_a_clamp_not_a_relu(engine):
    model, _ = build(_relu6_model, engine)
    assert isinstance(model.act, torch.ao.nn.quantized.ReLU6)
    net = qexact.from_torch(model, engine=engine)
    assert [node.op for node in net.graph.nodes] == ["quantize", "clamp", "dequantize"]
    x = torch.randn(256, 10) * 10
    assert_bitexact(net(x), model(x).numpy(), f"ReLU6 on {engine}")


def test_handler_modules_are_discovered():
    """Every public module of qexact.importers is loaded, without a list to keep."""
    import pkgutil
    import sys

    import qexact.importers
    from qexact.importers._handlers import load_handler_modules

    load_handler_modules()
    public = [info.name for info in pkgutil.iter_modules(qexact.importers.__path__)
              if not info.name.startswith("_")]
    assert {"torch", "torchscript", "torch_conv", "torch_shape"} <= set(public)
    assert all(f"qexact.importers.{name}" in sys.modules for name in public)
