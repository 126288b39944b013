"""Deliberately wrong implementations of the op families other than Linear: conv (and depthwise),
add, pools, activations, upsample; one case (or more) per catalog mistake of those families.

Each is what a user porting the layer might write: plain NumPy from the layer's public parameters
(``net.layers[name]``: weights, scales, zero points, stride, padding...) and the layer's exact
input integers, with the engine's arithmetic copied correctly except for the one mistake. Nothing
here calls ``qexact.diagnose``'s mistake models or qexact's kernels (the GEMM requantization is
``support.mistakes.user_requantize``, the user's own Linear epilogue).

``CASES[key]()`` builds a ``mistakes.Case`` (``layer`` always set: the user's numbers of that
node given its exact inputs); ``EXPECTED[key]`` is the catalog id it must be diagnosed as.
The models: the CNN test models (``support.cnn_models``), and ``Pools`` (avg / adaptive avg /
max pool on a quantized input with negative values), where the CNNs have no such layer.

Only importable where torch is.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.ao import quantization as tq

import qexact
from support.cnn_models import build_cnn
from support.mistakes import (ROUNDING, Case, _near_ties, f32, quantize_input, round_even,
                              user_requantize, wrap)

SEED = 4242


# --- Models --------------------------------------------------------------------------------------


def _restoring_engine(build):
    @functools.wraps(build)
    def wrapper(*args):
        previous = torch.backends.quantized.engine
        try:
            return build(*args)
        finally:
            torch.backends.quantized.engine = previous
    return functools.lru_cache(maxsize=None)(wrapper)


@_restoring_engine
def cnn(name: str, engine: str):
    """(net, x, values): a CNN test model imported for ``engine``, one input and every value."""
    torch.set_num_threads(1)
    model, shape = build_cnn(name, engine)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(SEED))
    net = qexact.from_torch(model, example_inputs=(x,), engine=engine)
    x = x.numpy()
    return net, x, net.run_values(x)


class Pools(nn.Module):
    """quantize -> avg_pool (3, 2, 1, count_include_pad), adaptive_avg_pool to 3x3, max_pool
    (3, 2, 1), each dequantized: the input keeps negative values (z_x near 128)."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.avg = nn.AvgPool2d(3, 2, 1, count_include_pad=True)
        self.ada = nn.AdaptiveAvgPool2d((3, 3))
        self.max = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        q = self.quant(x)
        return self.dequant(self.avg(q)), self.dequant(self.ada(q)), self.dequant(self.max(q))


@_restoring_engine
def pools(engine: str = "fbgemm"):
    torch.backends.quantized.engine = engine
    model = Pools().eval()
    model.qconfig = tq.get_default_qconfig(engine)
    prepared = tq.prepare(model, inplace=False)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        prepared(torch.randn(4, 4, 8, 8, generator=generator))
    converted = tq.convert(prepared, inplace=False).eval()
    x = torch.randn(4, 4, 8, 8, generator=generator) - 0.8   # most values below z_x
    net = qexact.from_torch(converted, example_inputs=(x,), engine=engine)
    x = x.numpy()
    return net, x, net.run_values(x)


def node_input(net, values, layer: str, position: int = 0):
    """The exact input value of node ``layer`` (its ``position``-th input)."""
    node = next(node for node in net.graph.nodes if node.name == layer)
    return values[node.inputs[position].name]


def _input_quantization_case(how: str, other: str) -> Case:
    """resnet's input quantization (``quant``) the user's way ``how``, on an input whose first
    60 values lie next to rounding boundaries where ``how`` flips an integer (and ``other``
    does not)."""
    net, x, _ = cnn("resnet", "fbgemm")
    x = x.copy()
    x.reshape(-1)[:60] = _near_ties(net, how, other, 60)
    theirs, _, _ = quantize_input(x, net.layers["quant"], how=how)
    control, _, _ = quantize_input(x, net.layers["quant"])
    return Case(net, x, theirs, "quant", control, f"the input quantized with {how}")


def quantize_divide() -> Case:
    return _input_quantization_case("divide", "zp_after")


def quantize_zero_point_after() -> Case:
    return _input_quantization_case("zp_after", "divide")


# --- The user's convolution ----------------------------------------------------------------------


def user_conv_accumulator(layer, x_q, z_x: int, *, pad_value: int | None = None,
                          input_zero_point_used: bool = True) -> np.ndarray:
    """sum over taps and the group's channels of (x - z_x) (w - z_w), (N, OC, OH, OW) int64, with
    the input padded by ``pad_value`` (None: z_x, as PyTorch does); tap by tap, plain NumPy."""
    weight = np.asarray(layer.weight, np.int64)
    out_channels, per_group, kh, kw = weight.shape
    groups = layer.groups
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    fill = z_x if pad_value is None else pad_value
    padded = np.pad(np.asarray(x_q, np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                    constant_values=fill)
    if input_zero_point_used:
        padded = padded - z_x
    n, _, height, width = padded.shape
    oh = (height - dh * (kh - 1) - 1) // sh + 1
    ow = (width - dw * (kw - 1) - 1) // sw + 1
    z_w = np.broadcast_to(np.asarray(layer.weight_qparams.zero_point, np.int64), (out_channels,))
    centered = weight - z_w[:, None, None, None]
    outs = out_channels // groups
    acc = np.zeros((n, out_channels, oh, ow), np.int64)
    for g in range(groups):
        xs = padded[:, g * per_group:(g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                acc[:, g * outs:(g + 1) * outs] += np.einsum(
                    "nchw,oc->nohw", patch, centered[g * outs:(g + 1) * outs, :, i, j])
    return acc


def user_conv(layer, x, *, engine: str, pad_value: int | None = None,
              input_zero_point_used: bool = True, per_channel: bool = True,
              relu: bool | None = None, pair_saturation: bool = False, bits: int = 32,
              **requantization) -> np.ndarray:
    """Output integers of the conv ``layer`` (a ``ConvParams``: public fields only) on the exact
    input ``x`` (a ``QuantizedArray``), the user's way; ``requantization``: as
    ``user_requantize`` (bias, rounding, multiplier, clamp)."""
    z_x, s_x = int(x.zero_point), float(x.scale)
    acc = user_conv_accumulator(layer, x.values, z_x, pad_value=pad_value,
                                input_zero_point_used=input_zero_point_used)
    if pair_saturation:
        acc = acc + user_pair_saturation(layer, x.values)
    if bits != 32:
        acc = wrap(acc, bits)
    s_w = np.asarray(layer.weight_qparams.scale, np.float64)
    if not per_channel and s_w.ndim:
        s_w = s_w.reshape(-1)[0]
    n, oc, oh, ow = acc.shape
    rows = acc.transpose(0, 2, 3, 1).reshape(-1, oc)
    out = layer.output_qparams
    q = user_requantize(rows, s_x, s_w, layer.float_bias, float(out.scale),
                        int(out.zero_point), engine=engine,
                        relu=layer.relu if relu is None else relu, **requantization)
    return q.reshape(n, oh, ow, oc).transpose(0, 3, 1, 2)


def user_pair_saturation(layer, x_q) -> np.ndarray:
    """What AVX2's vpmaddubsw changes for a 1x1 convolution: the raw u8 x s8 products of input
    channels (2i, 2i+1) summed in int16 with saturation ((N, OC, H, W) correction)."""
    weight = np.asarray(layer.weight, np.int64)[:, :, 0, 0]
    x_q = np.asarray(x_q, np.int64)
    correction = 0
    for start in range(0, weight.shape[1], 2):
        raw = np.einsum("nchw,oc->nohw", x_q[:, start:start + 2], weight[:, start:start + 2])
        correction = correction + np.clip(raw, -32768, 32767) - raw
    return correction


def hand_conv_net(engine: str, weight, weight_scales, input_scale: float,
                  input_zero_point: int, output_scale: float, output_zero_point: int, *,
                  bias=None, relu: bool = False, padding: int = 0, isa: str | None = None):
    """quantize -> conv (per-channel int8 weights, zero points 0) -> dequantize, by hand."""
    from qexact import Graph, Net, Node, QParams, Ref
    from qexact.dtypes import QINT8, QUINT8
    from qexact.qparams import qparams_to_fields

    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(input_scale, input_zero_point, QUINT8),
                                       "output")
    attrs, arrays = qparams_to_fields(QParams.per_tensor(output_scale, output_zero_point, QUINT8),
                                      "output")
    weight_qparams = QParams.per_channel(np.asarray(weight_scales, np.float64),
                                         np.zeros(len(weight_scales), np.int64), 0, QINT8)
    weight_attrs, weight_arrays = qparams_to_fields(weight_qparams, "weight")
    attrs.update(weight_attrs, relu=relu, stride=1, padding=padding, dilation=1, groups=1)
    arrays.update(weight_arrays, weight=np.asarray(weight, np.int8))
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32)
    nodes = [Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
             Node("conv", "conv", (Ref("quant"),), attrs, arrays),
             Node("dequant", "dequantize", (Ref("conv"),))]
    return Net(Graph(["x"], nodes, [Ref("dequant")]), engine, isa)


def _codes_input(net, codes) -> np.ndarray:
    """Float inputs that quantize exactly to ``codes`` (checked)."""
    quant = net.layers["quant"]
    x = f32((np.asarray(codes, np.float64) - quant.zero_point) * quant.scale)
    assert np.array_equal(net.run_values(x)["quant"].values, codes)
    return x


def _hand_case(net, x, what: str, **mistake) -> Case:
    values = net.run_values(x)
    layer, layer_input = net.layers["conv"], values["quant"]
    engine = net.engine.name
    saturates = bool(layer.pair_saturation)
    theirs = user_conv(layer, layer_input, engine=engine,
                       **{"pair_saturation": saturates, **mistake})
    control = user_conv(layer, layer_input, engine=engine, pair_saturation=saturates)
    return Case(net, x, theirs, "conv", control, what)


def conv_fused_relu_ignored() -> Case:
    rng = np.random.default_rng(SEED)
    net = hand_conv_net("fbgemm", rng.integers(-60, 61, (8, 4, 3, 3)), rng.uniform(0.002, 0.01, 8),
                        0.02, 128, 0.03, 128, bias=rng.normal(0, 0.3, 8), relu=True, padding=1)
    x = _codes_input(net, rng.integers(0, 256, (2, 4, 8, 8)))
    return _hand_case(net, x, "ConvReLU2d computed without its ReLU", relu=False)


def conv_rounding_half_away() -> Case:
    """Power-of-two scales, no bias: M = s_x s_w / s_out = 1/2, every odd accumulator a tie."""
    rng = np.random.default_rng(SEED + 1)
    net = hand_conv_net("fbgemm", rng.integers(-20, 21, (6, 3, 3, 3)), [0.25] * 6, 0.5, 128,
                        0.25, 128, padding=1)
    x = _codes_input(net, rng.integers(120, 137, (2, 3, 6, 6)))
    return _hand_case(net, x, "ties rounded away from zero", rounding="away")


def conv_pair_saturation() -> Case:
    """FBGEMM's 1x1 conv on AVX2 (imported for it, whatever the host): full-range inputs and
    large weights of one sign per channel pair saturate int16 pair sums; the user's exact dot
    product does not."""
    rng = np.random.default_rng(SEED + 2)
    sign = np.where(np.arange(16) % 4 < 2, 1, -1)
    weight = (rng.integers(90, 128, (8, 16)) * sign).reshape(8, 16, 1, 1)
    net = hand_conv_net("fbgemm", weight, rng.uniform(0.002, 0.01, 8), 0.02, 0, 0.5, 128,
                        isa="avx2")
    assert net.layers["conv"].pair_saturation
    x = _codes_input(net, rng.integers(150, 256, (2, 16, 6, 6)))
    return _hand_case(net, x, "an exact dot product where AVX2 saturates pairs",
                      pair_saturation=False)


def conv_multiplier_float64() -> Case:
    """Per-channel weight scales where the engine's float32 multiplier is furthest from the
    float64 one; a 1x1 conv over two channels, acc = 127 (x0 - z) + (x1 - z), over every pair
    of input codes where the two round apart."""
    rng = np.random.default_rng(SEED + 3)
    s_x, s_out = 2.0 ** -5, 0.04123
    scales = rng.uniform(0.002, 0.02, 20000)
    float32 = f32(f32(f32(s_x) * f32(scales)) / f32(s_out)).astype(np.float64)
    scales = scales[np.argsort(-np.abs(float32 / (s_x * scales / s_out) - 1))[:32]]
    weight = np.tile([127, 1], (32, 1)).reshape(32, 2, 1, 1)
    net = hand_conv_net("fbgemm", weight, scales, s_x, 128, s_out, 128)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij")).reshape(1, 2, 1, -1)
    x = _codes_input(net, grid)
    made = _hand_case(net, x, "", multiplier="float64")
    columns = np.nonzero((made.theirs != made.control).any(axis=(0, 1, 2)))[0]
    assert len(columns) >= 3, len(columns)
    keep = np.concatenate([columns[:60], rng.integers(0, grid.shape[-1], 60)])
    return _hand_case(net, x[..., keep], "the ideal float64 multiplier", multiplier="float64")


def _conv_case(model: str, engine: str, layer_name: str, what: str, **mistake) -> Case:
    net, x, values = cnn(model, engine)
    layer = net.layers[layer_name]
    layer_input = node_input(net, values, layer_name)
    theirs = user_conv(layer, layer_input, engine=engine, **mistake)
    control = user_conv(layer, layer_input, engine=engine)
    return Case(net, x, theirs, layer_name, control, what)


def conv_padding_zero() -> Case:
    return _conv_case("resnet", "fbgemm", "stem.0", "conv padded with the integer 0 (z_x = 66)",
                      pad_value=0)


def depthwise_padding_zero() -> Case:
    return _conv_case("mobilenet_v3", "fbgemm", "blocks.1.depthwise.0",
                      "depthwise conv padded with the integer 0", pad_value=0)


def conv_per_channel_scales_ignored() -> Case:
    return _conv_case("resnet", "fbgemm", "stem.0", "the first channel's scale for all",
                      per_channel=False)


def conv_input_zero_point_ignored() -> Case:
    return _conv_case("resnet", "fbgemm", "stem.0", "x_q used without subtracting z_x",
                      input_zero_point_used=False)


def conv_rounding_truncation() -> Case:
    return _conv_case("resnet", "fbgemm", "blocks.0.b.0", "requantization truncated",
                      rounding="trunc")


def conv_bias_int32() -> Case:
    return _conv_case("mobilenet_v3", "fbgemm", "blocks.1.expand.0", "an int32 bias where "
                      "FBGEMM adds a float one", bias="int32")


def conv_bias_rounding() -> Case:
    return _conv_case("resnet", "qnnpack", "stem.0", "QNNPACK's int32 bias truncated instead of "
                      "rounded", bias_rounding="trunc")


def depthwise_bias_float() -> Case:
    return _conv_case("mobilenet_v2", "qnnpack", "blocks.0.depthwise.0",
                      "a float bias where QNNPACK adds an int32 one", bias="float32")


def conv_output_saturation() -> Case:
    """A small output scale: many results lie past 0..255; the user's are not clamped."""
    rng = np.random.default_rng(SEED + 4)
    net = hand_conv_net("fbgemm", rng.integers(-60, 61, (8, 4, 3, 3)),
                        rng.uniform(0.002, 0.01, 8), 0.02, 128, 0.004, 128, padding=1)
    x = _codes_input(net, rng.integers(0, 256, (2, 4, 8, 8)))
    return _hand_case(net, x, "output integers not clamped to 0..255", clamp=False)


def conv_accumulator_overflow() -> Case:
    return _conv_case("resnet", "fbgemm", "blocks.1.a.0", "a 16-bit accumulator", bits=16)


def conv_missing_output_requantization() -> Case:
    """The real value acc * s_x * s_w + bias (the ReLU applied), never requantized."""
    net, x, values = cnn("resnet", "fbgemm")
    layer = net.layers["stem.0"]
    layer_input = node_input(net, values, "stem.0")
    acc = user_conv_accumulator(layer, layer_input.values, int(layer_input.zero_point))
    s_w = np.asarray(layer.weight_qparams.scale, np.float64).reshape(1, -1, 1, 1)
    real = (acc * (float(layer_input.scale) * s_w)
            + layer.float_bias.astype(np.float64).reshape(1, -1, 1, 1))
    return Case(net, x, np.maximum(real, 0.0), "stem.0", None, "conv output never requantized")


# --- add -----------------------------------------------------------------------------------------


def user_add(a, b, s_out: float, z_out: int, *, relu: bool, how: str) -> np.ndarray:
    """``how="float64"``: the real values summed in float64 and quantized once;
    ``"requantize_each"``: each input requantized to (s_out) and the integers added."""
    real_a = float(a.scale) * (a.values.astype(np.int64) - int(a.zero_point))
    real_b = float(b.scale) * (b.values.astype(np.int64) - int(b.zero_point))
    if how == "float64":
        total = real_a + real_b
        if relu:
            total = np.maximum(total, 0.0)
        q = round_even(total / s_out) + z_out
    else:
        q = round_even(real_a / s_out) + round_even(real_b / s_out) + z_out
        if relu:
            q = np.maximum(q, z_out)
    return np.clip(q, 0, 255)


def _add_case(model: str, engine: str, layer_name: str, how: str) -> Case:
    net, x, values = cnn(model, engine)
    a, b = node_input(net, values, layer_name, 0), node_input(net, values, layer_name, 1)
    out = values[layer_name]
    relu = next(n for n in net.graph.nodes if n.name == layer_name).op.endswith("_relu")
    theirs = user_add(a, b, float(out.scale), int(out.zero_point), relu=relu, how=how)
    return Case(net, x, theirs, layer_name, None, f"add rescaled: {how}")


def add_requantize_each() -> Case:
    return _add_case("resnet", "fbgemm", "add_relu", "requantize_each")


def hand_net(engine: str, quantizers: dict, node):
    """quantize nodes (name -> (scale, zero point), all of input ``x``) -> ``node`` ->
    dequantize, built by hand."""
    from qexact import Graph, Net, Node, QParams, Ref
    from qexact.dtypes import QUINT8
    from qexact.qparams import qparams_to_fields

    nodes = [Node(name, "quantize", (Ref("x"),),
                  qparams_to_fields(QParams.per_tensor(scale, zero_point, QUINT8), "output")[0],
                  {}) for name, (scale, zero_point) in quantizers.items()]
    nodes += [node, Node("dequant", "dequantize", (Ref(node.name),))]
    return Net(Graph(["x"], nodes, [Ref("dequant")]), engine)


def hand_add_net(op: str, output_scale: float, output_zero_point: int):
    """a = quantize(x, 0.5, 128), b = quantize(x, 0.25, 120), ``op``(a, b): power-of-two
    scales, so a + b is a multiple of 0.25 and its quotient by ``output_scale`` can be a tie."""
    from qexact import Node, Ref

    node = Node("add", op, (Ref("qa"), Ref("qb")),
                {"output_scale": output_scale, "output_zero_point": output_zero_point}, {})
    return hand_net("fbgemm", {"qa": (0.5, 128), "qb": (0.25, 120)}, node)


def _hand_add_case(op: str, what: str, output_zero_point: int, *, rounding: str = "even",
                   relu: bool | None = None) -> Case:
    net = hand_add_net(op, 0.5, output_zero_point)
    x = np.random.default_rng(SEED + 5).normal(0, 8, (4, 3, 8, 8)).astype(np.float32)
    values = net.run_values(x)
    a, b = values["qa"], values["qb"]
    relu = op.endswith("_relu") if relu is None else relu
    real = (0.5 * (a.values.astype(np.int64) - 128) + 0.25 * (b.values.astype(np.int64) - 120))
    if relu:
        real = np.maximum(real, 0.0)
    theirs = np.clip(ROUNDING[rounding](real / 0.5) + output_zero_point, 0, 255)
    return Case(net, x, theirs, "add", None, what)


def mul_half_away() -> Case:
    """a * b with m = s_a s_b / s_out = 1/2: every odd product of the centered inputs is a tie;
    the user rounds the real product s_a s_b (q_a - z_a)(q_b - z_b) / s_out away from zero."""
    from qexact import Node, Ref

    node = Node("mul", "mul", (Ref("qa"), Ref("qb")),
                {"output_scale": 0.25, "output_zero_point": 128}, {})
    net = hand_net("fbgemm", {"qa": (0.5, 128), "qb": (0.25, 120)}, node)
    x = np.random.default_rng(SEED + 7).normal(0, 1.5, (4, 3, 8, 8)).astype(np.float32)
    values = net.run_values(x)
    real = (0.5 * (values["qa"].values.astype(np.int64) - 128)
            * 0.25 * (values["qb"].values.astype(np.int64) - 120))
    theirs = np.clip(ROUNDING["away"](real / 0.25) + 128, 0, 255)
    control = np.clip(ROUNDING["even"](real / 0.25) + 128, 0, 255)
    return Case(net, x, theirs, "mul", control, "the product's ties rounded away from zero")


def add_half_away() -> Case:
    return _hand_add_case("add", "the sum's ties rounded away from zero", 128, rounding="away")


def add_relu_ignored() -> Case:
    return _hand_add_case("add_relu", "add_relu computed without its ReLU", 128, relu=False)


def _upsample_net(mode: str, size: int, align_corners=None):
    from qexact import Node, Ref

    node = Node("up", "upsample", (Ref("quant"),),
                {"mode": mode, "size": [size, size], "align_corners": align_corners}, {})
    return hand_net("fbgemm", {"quant": (0.05, 128)}, node)


def upsample_nearest_floor() -> Case:
    """A 5x5 -> 8x8 nearest-exact upsample read with nearest's floor(dst * in / out)."""
    net = _upsample_net("nearest-exact", 8)
    x = np.random.default_rng(SEED + 8).normal(0, 2, (2, 3, 5, 5)).astype(np.float32)
    source = net.run_values(x)["quant"].values
    return Case(net, x, user_nearest(source, 8, 8, offset=0.0), "up",
                user_nearest(source, 8, 8, offset=0.5 * 5 / 8),
                "nearest-exact upsampling with nearest's source index")


def user_bilinear(q: np.ndarray, out_size: int, *, align_corners: bool) -> np.ndarray:
    """Bilinear upsampling of integers (qparams kept), textbook, float64, rounded half to even:
    src = dst (in - 1) / (out - 1) with align_corners, else (dst + 0.5) in / out - 0.5 (>= 0)."""
    def axis(size):
        dst = np.arange(out_size, dtype=np.float64)
        src = (dst * (size - 1) / (out_size - 1) if align_corners
               else np.maximum((dst + 0.5) * size / out_size - 0.5, 0.0))
        low = np.minimum(np.floor(src).astype(int), size - 1)
        return low, np.minimum(low + 1, size - 1), src - low

    h0, h1, lh = axis(q.shape[2])
    w0, w1, lw = axis(q.shape[3])
    q = q.astype(np.float64)
    top = q[:, :, h0][:, :, :, w0] * (1 - lw) + q[:, :, h0][:, :, :, w1] * lw
    bottom = q[:, :, h1][:, :, :, w0] * (1 - lw) + q[:, :, h1][:, :, :, w1] * lw
    real = top * (1 - lh)[:, None] + bottom * lh[:, None]
    return np.clip(round_even(real), 0, 255)


def upsample_align_corners() -> Case:
    """A 5x5 -> 9x9 bilinear upsample (align_corners=False) computed with align_corners=True."""
    net = _upsample_net("bilinear", 9, align_corners=False)
    x = np.random.default_rng(SEED + 9).normal(0, 2, (2, 3, 5, 5)).astype(np.float32)
    source = net.run_values(x)["quant"].values
    return Case(net, x, user_bilinear(source, 9, align_corners=True), "up", None,
                "bilinear upsampling with align_corners flipped")


def upsample_nearest_exact() -> Case:
    """A 5x5 -> 8x8 nearest upsample read with nearest-exact's floor((dst + 0.5) * in / out)."""
    from qexact import Node, Ref

    node = Node("up", "upsample", (Ref("quant"),),
                {"mode": "nearest", "size": [8, 8], "align_corners": None}, {})
    net = hand_net("fbgemm", {"quant": (0.05, 128)}, node)
    x = np.random.default_rng(SEED + 6).normal(0, 2, (2, 3, 5, 5)).astype(np.float32)
    source = net.run_values(x)["quant"].values
    return Case(net, x, user_nearest(source, 8, 8, offset=0.5 * 5 / 8), "up",
                user_nearest(source, 8, 8, offset=0.0),
                "nearest upsampling with nearest-exact's source index")


# --- Pools ---------------------------------------------------------------------------------------


def adaptive_windows(size: int, out: int):
    index = np.arange(out)
    return (index * size) // out, -((-(index + 1) * size) // out)


def user_adaptive_avg(x, out_size, s_out: float, z_out: int, *, rounding: str = "even",
                      largest_divisor: bool = False) -> np.ndarray:
    """Adaptive average pool of ``x`` (QuantizedArray, N C H W): windows [floor(i*in/out),
    ceil((i+1)*in/out)), the real average of each window quantized by ``rounding``;
    ``largest_divisor``: every window divided by the largest window's size."""
    q = x.values.astype(np.int64) - int(x.zero_point)
    (h0, h1), (w0, w1) = (adaptive_windows(q.shape[2], out_size[0]),
                          adaptive_windows(q.shape[3], out_size[1]))
    largest = int((h1 - h0).max() * (w1 - w0).max())
    out = np.empty(q.shape[:2] + tuple(out_size), np.int64)
    for i in range(out_size[0]):
        for j in range(out_size[1]):
            window = q[:, :, h0[i]:h1[i], w0[j]:w1[j]]
            count = largest if largest_divisor else window.shape[2] * window.shape[3]
            steps = window.sum(axis=(2, 3)) * (float(x.scale) / s_out) / count
            out[:, :, i, j] = ROUNDING[rounding](steps) + z_out
    return np.clip(out, 0, 255)


def _adaptive_case(net, x, values, layer: str, what: str, **mistake) -> Case:
    layer_input = node_input(net, values, layer)
    out = values[layer]
    size = out.values.shape[2:]
    theirs = user_adaptive_avg(layer_input, size, float(out.scale), int(out.zero_point),
                               **mistake)
    # No control: even without its mistake this textbook average (centered, float64) differs
    # from the engine at some ties, which rounds f32(S) * f32(1 / n) with S uncentered.
    return Case(net, x, theirs, layer, None, what)


def adaptive_pool_truncation() -> Case:
    return _adaptive_case(*cnn("resnet", "fbgemm"), "head", "the average truncated",
                          rounding="trunc")


def adaptive_pool_half_away() -> Case:
    return _adaptive_case(*pools(), "ada", "the average's ties rounded away", rounding="away")


def adaptive_pool_largest_window() -> Case:
    return _adaptive_case(*pools(), "ada", "every window divided by the largest one's size",
                          largest_divisor=True)


def user_avg_pool(x, kernel: int, stride: int, padding: int, *,
                  count_include_pad: bool) -> np.ndarray:
    """Average pool (square kernel) on integers: the centered sum of the valid taps divided by
    the padded window's size (``count_include_pad``) or the valid taps' count, rounded half
    to even."""
    q = x.values.astype(np.int64) - int(x.zero_point)
    height, width = q.shape[2:]
    oh = (height + 2 * padding - kernel) // stride + 1
    ow = (width + 2 * padding - kernel) // stride + 1
    out = np.empty(q.shape[:2] + (oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * stride - padding, j * stride - padding
            h1, w1 = min(h0 + kernel, height + padding), min(w0 + kernel, width + padding)
            padded_size = (h1 - h0) * (w1 - w0)
            window = q[:, :, max(h0, 0):min(h1, height), max(w0, 0):min(w1, width)]
            count = padded_size if count_include_pad else window.shape[2] * window.shape[3]
            out[:, :, i, j] = round_even(window.sum(axis=(2, 3)) / count) + int(x.zero_point)
    return np.clip(out, 0, 255)


def avg_pool_divisor() -> Case:
    net, x, values = pools()
    layer_input = node_input(net, values, "avg")
    theirs = user_avg_pool(layer_input, 3, 2, 1, count_include_pad=False)
    control = user_avg_pool(layer_input, 3, 2, 1, count_include_pad=True)
    return Case(net, x, theirs, "avg", control, "count_include_pad=False where it is True")


def user_max_pool_padded(x, kernel: int, stride: int, padding: int,
                         pad_value: int | None = None) -> np.ndarray:
    """Max pool after padding the integers with ``pad_value`` (None: the zero point, as
    F.pad of the real tensor does; PyTorch's padding never wins: -1 here)."""
    fill = int(x.zero_point) if pad_value is None else pad_value
    q = np.pad(x.values.astype(np.int64), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2),
               constant_values=fill)
    height, width = q.shape[2:]
    oh, ow = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    out = np.empty(q.shape[:2] + (oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = q[:, :, i * stride:i * stride + kernel,
                                j * stride:j * stride + kernel].max(axis=(2, 3))
    return out


def max_pool_padding() -> Case:
    net, x, values = pools()
    layer_input = node_input(net, values, "max")
    theirs = user_max_pool_padded(layer_input, 3, 2, 1)
    control = user_max_pool_padded(layer_input, 3, 2, 1, pad_value=-1)
    return Case(net, x, theirs, "max", control, "max pool padded with the zero point")


# --- Activations and upsample --------------------------------------------------------------------


TEXTBOOK = {
    "hardswish": lambda d, layer: d * np.clip(d + 3.0, 0.0, 6.0) / 6.0,
    "sigmoid": lambda d, layer: 1.0 / (1.0 + np.exp(-d)),
    "leaky_relu": lambda d, layer: np.where(d > 0, d, d * layer.slope),
}


def user_activation(layer, x) -> np.ndarray:
    """The textbook formula in float64 on the dequantized input, quantized half to even."""
    real = float(x.scale) * (x.values.astype(np.int64) - int(x.zero_point))
    out = layer.output_qparams
    y = TEXTBOOK[layer.function](real, layer)
    return np.clip(round_even(y / float(out.scale)) + int(out.zero_point), 0, 255)


def activation_net(function: str, engine: str, input_scale: float, input_zero_point: int,
                   output_scale: float | None = None, output_zero_point: int | None = None):
    """quantize -> activation -> dequantize, built by hand (qparams where the formula and the
    engine differ: on the CNN models they never do)."""
    from qexact import Graph, Net, Node, QParams, Ref
    from qexact.dtypes import QUINT8
    from qexact.qparams import qparams_to_fields

    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(input_scale, input_zero_point, QUINT8),
                                       "output")
    attrs = {"function": function}
    if output_scale is not None:
        attrs.update(output_scale=output_scale, output_zero_point=output_zero_point)
    nodes = [Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
             Node("act", "activation", (Ref("quant"),), attrs, {}),
             Node("dequant", "dequantize", (Ref("act"),))]
    return Net(Graph(["x"], nodes, [Ref("dequant")]), engine)


def _activation_case(net) -> Case:
    quant = net.layers["quant"]
    codes = np.tile(np.arange(256), 8).reshape(2, 4, 16, 16)
    x = ((codes - quant.zero_point) * quant.scale).astype(np.float32)
    values = net.run_values(x)
    theirs = user_activation(net.layers["act"], values["quant"])
    return Case(net, x, theirs, "act", None, f"{net.layers['act'].function} by its formula")


def hardswish_formula() -> Case:
    return _activation_case(activation_net("hardswish", "qnnpack", 0.09500670232716317, 42,
                                           0.08429166136239356, 46))


def sigmoid_formula() -> Case:
    return _activation_case(activation_net("sigmoid", "fbgemm", 0.09684423920388037, 64))


def hardswish_truncation() -> Case:
    """mobilenet_v3's first hardswish by its formula, quantized with a C cast (truncation)."""
    net, x, values = cnn("mobilenet_v3", "fbgemm")
    layer = net.layers["stem.2"]
    layer_input = node_input(net, values, "stem.2")
    real = float(layer_input.scale) * (layer_input.values.astype(np.int64)
                                       - int(layer_input.zero_point))
    out = layer.output_qparams
    y = TEXTBOOK["hardswish"](real, layer)
    theirs = np.clip(np.trunc(y / float(out.scale)).astype(np.int64) + int(out.zero_point),
                     0, 255)
    return Case(net, x, theirs, "stem.2", user_activation(layer, layer_input),
                "hardswish quantized by truncation")


def user_nearest(source: np.ndarray, out_h: int, out_w: int, *, offset: float) -> np.ndarray:
    """Nearest upsampling: src = min(floor(dst * in / out + offset), in - 1)."""
    rows = np.minimum(np.floor(np.arange(out_h) * (source.shape[2] / out_h) + offset).astype(int),
                      source.shape[2] - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (source.shape[3] / out_w) + offset).astype(int),
                      source.shape[3] - 1)
    return source[:, :, rows][:, :, :, cols]


def upsample_rounded_index() -> Case:
    """Nearest upsampling with src = min(floor(dst * in / out + 0.5), in - 1)."""
    net, x, values = cnn("detector", "fbgemm")
    source = node_input(net, values, "up").values
    out_h, out_w = values["up"].values.shape[2:]
    return Case(net, x, user_nearest(source, out_h, out_w, offset=0.5), "up",
                user_nearest(source, out_h, out_w, offset=0.0),
                "nearest upsampling with a rounded source index")


CASES = {
    "quantize_divide": quantize_divide,
    "quantize_zero_point_after": quantize_zero_point_after,
    "conv_padding_zero": conv_padding_zero,
    "conv_bias_rounding": conv_bias_rounding,
    "depthwise_padding_zero": depthwise_padding_zero,
    "conv_per_channel_scales_ignored": conv_per_channel_scales_ignored,
    "conv_input_zero_point_ignored": conv_input_zero_point_ignored,
    "conv_rounding_truncation": conv_rounding_truncation,
    "conv_bias_int32": conv_bias_int32,
    "depthwise_bias_float": depthwise_bias_float,
    "conv_missing_output_requantization": conv_missing_output_requantization,
    "conv_fused_relu_ignored": conv_fused_relu_ignored,
    "conv_rounding_half_away": conv_rounding_half_away,
    "conv_pair_saturation": conv_pair_saturation,
    "conv_multiplier_float64": conv_multiplier_float64,
    "conv_output_saturation": conv_output_saturation,
    "conv_accumulator_overflow": conv_accumulator_overflow,
    "add_requantize_each": add_requantize_each,
    "add_half_away": add_half_away,
    "add_relu_ignored": add_relu_ignored,
    "upsample_nearest_exact": upsample_nearest_exact,
    "upsample_nearest_floor": upsample_nearest_floor,
    "upsample_align_corners": upsample_align_corners,
    "mul_half_away": mul_half_away,
    "adaptive_pool_truncation": adaptive_pool_truncation,
    "adaptive_pool_half_away": adaptive_pool_half_away,
    "adaptive_pool_largest_window": adaptive_pool_largest_window,
    "avg_pool_divisor": avg_pool_divisor,
    "max_pool_padding": max_pool_padding,
    "hardswish_formula": hardswish_formula,
    "sigmoid_formula": sigmoid_formula,
    "hardswish_truncation": hardswish_truncation,
    "upsample_rounded_index": upsample_rounded_index,
}

EXPECTED = {
    "quantize_divide": "quantize_divide_vs_reciprocal",
    "quantize_zero_point_after": "zero_point_after_rounding",
    "conv_padding_zero": "conv_padding_zero",
    "conv_bias_rounding": "bias_rounding",
    "depthwise_padding_zero": "conv_padding_zero",
    "conv_per_channel_scales_ignored": "per_channel_scales_ignored",
    "conv_input_zero_point_ignored": "input_zero_point_ignored",
    "conv_rounding_truncation": "rounding_truncation",
    "conv_bias_int32": "bias_float_vs_int32",
    "depthwise_bias_float": "bias_float_vs_int32",
    "conv_missing_output_requantization": "missing_output_requantization",
    "conv_fused_relu_ignored": "fused_relu_ignored",
    "conv_rounding_half_away": "rounding_half_away",
    "conv_pair_saturation": "int16_pair_saturation",
    "conv_multiplier_float64": "multiplier_precision",
    "conv_output_saturation": "output_saturation",
    "conv_accumulator_overflow": "accumulator_overflow",
    "add_requantize_each": "elementwise_rescale_order",
    "add_half_away": "rounding_half_away",
    "add_relu_ignored": "fused_relu_ignored",
    "upsample_nearest_exact": "resample_source_index",
    "upsample_nearest_floor": "resample_source_index",
    "upsample_align_corners": "resample_source_index",
    "mul_half_away": "rounding_half_away",
    "adaptive_pool_truncation": "rounding_truncation",
    "adaptive_pool_half_away": "rounding_half_away",
    "adaptive_pool_largest_window": "pool_divisor",
    "avg_pool_divisor": "pool_divisor",
    "max_pool_padding": "max_pool_padding",
    "hardswish_formula": "activation_float_formula",
    "sigmoid_formula": "activation_float_formula",
    "hardswish_truncation": "rounding_truncation",
    "upsample_rounded_index": "resample_source_index",
}
