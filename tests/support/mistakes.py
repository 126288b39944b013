"""Deliberately wrong implementations of a quantized Linear, one per ``qexact.CATALOG_IDS`` entry.

Each is what a user might write: plain NumPy, from the layer's parameters (``net.layers``), with
the engine's arithmetic copied correctly except for the one mistake. Nothing here calls
``qexact.diagnose`` or its mistake models (``Knobs``, ``run_mistake``), nor qexact's kernels: the
only things taken from qexact are the parameters (and, for ``wrong_engine``, another engine's Net,
which is what that mistake is). ``user_linear(..., **no mistake)`` equals qexact exactly; the
tests hold it so, so that every difference a case produces is its mistake's.

``CASES[id]()`` builds a ``Case``: a model where that mistake shows (engine, qconfig, data chosen
for it), its input ``x``, the user's numbers ``theirs`` and the ``layer`` to diagnose (or None).

Only importable where torch is (the models are converted by PyTorch).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.ao import quantization as tq

import qexact

SEED = 7331


# --- Float32 helpers (plain NumPy) -------------------------------------------------------------


def f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).astype(np.float32)


def fmaf(a, b, c) -> np.ndarray:
    """``fmaf(a, b, c)``: one rounding. ``a*b`` of float32s is exact in float64; the float64 sum's
    error is recovered (TwoSum) and folded in by rounding the sum to odd, after which rounding to
    float32 is correct."""
    a, b, c = (f32(v).astype(np.float64) for v in (a, b, c))
    product = a * b
    total = product + c
    virtual = total - product
    error = (product - (total - virtual)) + (c - virtual)
    even = (total.view(np.int64) & 1) == 0
    nudge = (error != 0) & even & np.isfinite(total)
    total = np.where(nudge, np.nextafter(total, np.where(error > 0, np.inf, -np.inf)), total)
    return total.astype(np.float32)


def round_even(v) -> np.ndarray:
    return np.rint(np.asarray(v, dtype=np.float64)).astype(np.int64)


def round_away(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


def round_trunc(v) -> np.ndarray:
    return np.trunc(np.asarray(v, dtype=np.float64)).astype(np.int64)


ROUNDING = {"even": round_even, "away": round_away, "trunc": round_trunc}


def wrap(value, bits: int) -> np.ndarray:
    half = 1 << (bits - 1)
    return ((np.asarray(value, dtype=np.int64) + half) % (1 << bits)) - half


# --- The user's implementation ----------------------------------------------------------------


def quantize_input(x, qparams, *, how: str = "fma", reduce_range: bool = False):
    """(x_q as int64, scale, zero point): PyTorch's ``round(fmaf(x, f32(1/s), z))``, or
    ``how="divide"``: ``round(f32(x / s) + z)``; ``how="zp_after"``: ``round(f32(x * inv)) + z``;
    ``reduce_range``: the 0..127 grid (scale * 255/127)."""
    x = np.asarray(x, dtype=np.float32)
    scale, zero_point, high = float(qparams.scale), int(qparams.zero_point), 255
    if reduce_range:
        scale, zero_point, high = scale * 255 / 127, int(round(zero_point * 127 / 255)), 127
    inv = f32(np.float32(1.0) / f32(scale))
    if how == "fma":
        scaled = round_even(fmaf(x, inv, zero_point))
    elif how == "divide":
        scaled = round_even(f32(f32(x / f32(scale)) + f32(zero_point)))
    elif how == "zp_after":
        scaled = round_even(f32(x * inv)) + zero_point
    else:
        raise ValueError(how)
    return np.clip(scaled, 0, high), scale, zero_point


def accumulate(x_q, z_x, weight, z_w, *, pair_saturation: bool = False, bits: int = 32):
    """sum_k (x_q - z_x) (w_q - z_w) in int64; ``pair_saturation``: the raw u8*s8 products summed
    in adjacent pairs with int16 saturation (AVX2 vpmaddubsw); ``bits=16``: a 16-bit accumulator."""
    x_q = np.asarray(x_q, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.int64)
    z_w = np.asarray(z_w, dtype=np.int64).reshape(-1, 1) if np.ndim(z_w) else int(z_w)
    acc = (x_q - z_x) @ (weight - z_w).T
    if pair_saturation:
        depth = weight.shape[1]
        for start in range(0, depth, 2):
            stop = min(start + 2, depth)
            raw = x_q[:, start:stop] @ weight[:, start:stop].T
            acc += np.clip(raw, -32768, 32767) - raw
    if bits != 32:
        acc = wrap(acc, bits)
    return acc


def user_linear(layer, x_q, input_scale, input_zero_point, *, engine: str,
                input_zero_point_used: bool = True, weight_zero_point_used: bool = True,
                per_channel: bool = True, pair_saturation: bool | None = None, bits: int = 32,
                bias: str = "engine", rounding: str = "even", multiplier: str = "engine",
                clamp: bool = True, relu: bool | None = None,
                bias_rounding: str = "even") -> np.ndarray:
    """Output integers of Linear ``layer`` (a ``LinearParams``: only its public fields are read)
    on integer inputs ``x_q`` quantized with (``input_scale``, ``input_zero_point``), with the
    arithmetic of ``engine`` ("qnnpack" or "fbgemm", which ``x86`` Linear is), unless told to
    make a mistake. ``pair_saturation`` defaults to the layer's (FBGEMM on AVX2 saturates).
    Returns int64, unclamped where ``clamp`` is False."""
    relu = layer.relu if relu is None else relu
    if pair_saturation is None:
        pair_saturation = bool(layer.pair_saturation)
    s_x = float(input_scale)
    s_w = np.asarray(layer.weight_scale, dtype=np.float64)
    z_w = np.asarray(layer.weight_zero_point, dtype=np.int64)
    if not per_channel and s_w.ndim:
        s_w, z_w = s_w.reshape(-1)[0], z_w.reshape(-1)[0]
    float_bias = None if layer.float_bias is None else np.asarray(layer.float_bias, np.float32)
    rows = x_q.reshape(-1, layer.weight.shape[1])
    acc = accumulate(rows, input_zero_point if input_zero_point_used else 0, layer.weight,
                     z_w if weight_zero_point_used else 0, pair_saturation=pair_saturation,
                     bits=bits)
    q = user_requantize(acc, s_x, s_w, float_bias, float(layer.output_scale),
                        int(layer.output_zero_point), engine=engine, bias=bias,
                        rounding=rounding, multiplier=multiplier, clamp=clamp, relu=relu,
                        bias_rounding=bias_rounding)
    return q.reshape(x_q.shape[:-1] + (layer.weight.shape[0],))


def user_requantize(acc, s_x: float, s_w, float_bias, s_out: float, z_out: int, *, engine: str,
                    bias: str = "engine", rounding: str = "even", multiplier: str = "engine",
                    clamp: bool = True, relu: bool = False,
                    bias_rounding: str = "even") -> np.ndarray:
    """Output integers (int64) of a GEMM layer's accumulator ``acc`` (rows, output channels):
    the arithmetic of ``engine`` ("qnnpack", or "fbgemm"/"x86"), unless told to make a
    mistake; ``s_w`` per channel (1-D) or one; ``float_bias`` float32 or None."""
    s_w = np.asarray(s_w, dtype=np.float64)
    if multiplier == "float64":                     # the ideal real value, rounded once
        real = acc * (s_x * s_w)
        if float_bias is not None:
            real = real + float_bias.astype(np.float64)
        q = ROUNDING[rounding](real / s_out) + z_out
    elif engine == "qnnpack":
        scale = f32(f32(f32(s_w) * f32(s_x)) * f32(np.float32(1.0) / f32(s_out)))
        if float_bias is not None and bias in ("engine", "int32"):
            bias_scale = s_w * s_x                   # double, as QuantizeBias forms it
            inv = f32(np.float32(1.0) / f32(bias_scale))
            int_bias = np.clip(ROUNDING[bias_rounding](f32(f32(float_bias * inv)
                                                           + np.float32(0))),
                               -(1 << 31), (1 << 31) - 1)
            value = f32(wrap(acc + int_bias, 32))
        else:
            value = f32(acc)
            if float_bias is not None:               # bias="float32"
                value = f32(value + f32(float_bias / f32(f32(s_x) * f32(s_w))))
        q = ROUNDING[rounding](f32(value * scale)) + z_out
    elif engine in ("fbgemm", "x86"):
        act_times_w_scale = f32(f32(s_x) * f32(s_w))
        factor = f32(act_times_w_scale / f32(s_out))
        value = f32(acc)
        if float_bias is not None and bias == "int32":
            bias_scale = s_w * s_x
            inv = f32(np.float32(1.0) / f32(bias_scale))
            int_bias = round_even(f32(f32(float_bias * inv) + np.float32(0)))
            value = f32(wrap(acc + int_bias, 32))
        elif float_bias is not None and s_w.ndim:
            value = f32(value + f32(float_bias / act_times_w_scale))
        elif float_bias is not None:
            reciprocal = f32(1.0 / act_times_w_scale.astype(np.float64))
            value = fmaf(float_bias, reciprocal, value)
        q = ROUNDING[rounding](f32(value * factor)) + z_out
    else:
        raise ValueError(f"no user implementation for {engine}")
    low = z_out if relu else 0
    q = np.clip(q, low, 255) if clamp else np.maximum(q, low) if relu else q
    return q


def user_model(net, x, **mistake) -> np.ndarray:
    """The user's output integers of the single-Linear model ``net`` on float input ``x``:
    quantize (``how``, ``reduce_range`` from ``mistake``), then ``user_linear``."""
    quantize_options = {key: mistake.pop(key) for key in ("how", "reduce_range") if key in mistake}
    (name,) = [name for name, params in net.layers.items() if hasattr(params, "weight")]
    x_q, scale, zero_point = quantize_input(x, net.layers["quant"], **quantize_options)
    return user_linear(net.layers[name], x_q, scale, zero_point, engine=net.engine.name,
                       **mistake)


def dequantized(layer, q) -> np.ndarray:
    """The user's real values of output integers (float64: s_out * (q - z_out))."""
    return float(layer.output_scale) * (np.asarray(q, np.float64) - int(layer.output_zero_point))


# --- Models -------------------------------------------------------------------------------------


class OneLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, relu: bool = False):
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc = nn.Linear(in_features, out_features)
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.relu(self.fc(self.quant(x))))


@functools.lru_cache(maxsize=None)
def converted(engine: str, in_features: int = 10, out_features: int = 5, *, relu: bool = False,
              qconfig: str = "default", weights: str = "default", calibration: str = "rand",
              isa: str | None = None):
    """A OneLinear converted under ``engine`` (fused LinearReLU with ``relu``), imported for
    ``isa`` (default: this CPU's)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        torch.manual_seed(SEED)
        model = OneLinear(in_features, out_features, relu).eval()
        with torch.no_grad():
            if weights == "large":              # large weights, adjacent ones of one sign
                sign = torch.where(torch.arange(in_features) % 4 < 2, 1.0, -1.0)
                model.fc.weight.copy_((0.6 + 0.4 * torch.rand(out_features, in_features)) * sign)
            elif weights == "positive":         # all > 0: an affine observer gives z_w = -128
                model.fc.weight.copy_(model.fc.weight.abs() + 0.05)
        if relu:
            tq.fuse_modules(model, [["fc", "relu"]], inplace=True)
        model.qconfig = {
            "default": tq.get_default_qconfig(engine),
            "affine_weight": tq.QConfig(
                activation=tq.MinMaxObserver.with_args(dtype=torch.quint8),
                weight=tq.MinMaxObserver.with_args(dtype=torch.qint8,
                                                   qscheme=torch.per_tensor_affine)),
            "symmetric_activation": tq.QConfig(   # quint8 symmetric: zero points 128
                activation=tq.MinMaxObserver.with_args(dtype=torch.quint8,
                                                       qscheme=torch.per_tensor_symmetric),
                weight=tq.default_per_channel_weight_observer),
            "full_range": tq.QConfig(             # activations 0..255 (no reduce_range)
                activation=tq.MinMaxObserver.with_args(dtype=torch.quint8),
                weight=tq.default_per_channel_weight_observer),
        }[qconfig]
        prepared = tq.prepare(model, inplace=False)
        generator = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            for _ in range(4):
                if calibration == "rand":
                    prepared(torch.rand(16, in_features, generator=generator))
                else:
                    prepared(torch.randn(16, in_features, generator=generator) * 2)
        quantized = tq.convert(prepared, inplace=False).eval()
        return qexact.from_torch(quantized, engine=engine, isa=isa)
    finally:
        torch.backends.quantized.engine = previous


def hand_linear_net(engine: str, weight, weight_scales, input_scale, input_zero_point,
                    output_scale, output_zero_point, bias=None):
    """quantize -> linear (per-channel weights) -> dequantize, built by hand."""
    from qexact import Graph, Net, Node, QParams, Ref
    from qexact.dtypes import QINT8, QUINT8
    from qexact.qparams import qparams_to_fields

    quant_attrs, _ = qparams_to_fields(QParams.per_tensor(input_scale, input_zero_point, QUINT8),
                                       "output")
    attrs, arrays = qparams_to_fields(QParams.per_tensor(output_scale, output_zero_point, QUINT8),
                                      "output")
    weight_qparams = QParams.per_channel(weight_scales, np.zeros(len(weight_scales), np.int64), 0,
                                         QINT8)
    weight_attrs, weight_arrays = qparams_to_fields(weight_qparams, "weight")
    attrs.update(weight_attrs, relu=False)
    arrays.update(weight_arrays, weight=np.asarray(weight, np.int8))
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32)
    nodes = [Node("quant", "quantize", (Ref("x"),), quant_attrs, {}),
             Node("fc", "linear", (Ref("quant"),), attrs, arrays),
             Node("dequant", "dequantize", (Ref("fc"),))]
    return Net(Graph(["x"], nodes, [Ref("dequant")]), engine, "avx2")


def inputs_for_codes(net, codes) -> np.ndarray:
    """Float inputs that quantize exactly to ``codes`` (power-of-two input scale)."""
    quant = net.layers["quant"]
    return f32((np.asarray(codes, np.float64) - quant.zero_point) * quant.scale)


# --- The cases ----------------------------------------------------------------------------------


@dataclass
class Case:
    """``theirs``: the user's numbers; ``control``: the same implementation without its mistake
    (None where there is none to speak of), which must equal qexact's exact numbers."""

    net: object
    x: np.ndarray
    theirs: np.ndarray
    layer: str | None = None
    control: np.ndarray | None = None
    what: str = ""


def rand(shape, scale=1.0, seed=SEED, offset=0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * scale + offset).astype(np.float32)


def _exact_layer_input(net, x):
    """The Linear's exact input integers (what PyTorch's quantize gives), with its qparams."""
    quantized = net.run_values(x)["quant"]
    return quantized.values.astype(np.int64), quantized.scale, quantized.zero_point


def layer_case(net, x, what: str, **mistake) -> Case:
    """The user's Linear ``fc`` on its exact input integers, with ``mistake``."""
    x_q, s_x, z_x = _exact_layer_input(net, x)
    layer = net.layers["fc"]
    engine = net.engine.name
    return Case(net, x, user_linear(layer, x_q, s_x, z_x, engine=engine, **mistake), "fc",
                user_linear(layer, x_q, s_x, z_x, engine=engine), what)


def model_case(net, x, what: str, **mistake) -> Case:
    """The user's whole model (input quantization included) on float ``x``, with ``mistake``."""
    return Case(net, x, user_model(net, x, **mistake), None, user_model(net, x), what)


def missing_output_requantization() -> Case:
    net = converted("qnnpack")
    x = rand((200, 10))
    layer = net.layers["fc"]
    x_q, s_x, z_x = _exact_layer_input(net, x)
    acc = accumulate(x_q, z_x, layer.weight, layer.weight_zero_point)
    theirs = acc * (s_x * float(layer.weight_scale)) + layer.float_bias.astype(np.float64)
    return Case(net, x, theirs, None, None, "the real value acc*s_x*s_w + bias, not requantized")


def output_saturation() -> Case:
    net = converted("fbgemm")
    x = rand((200, 10), scale=4.0, offset=-1.5)      # well outside the calibrated [0, 1)
    return layer_case(net, x, "output integers not clamped to 0..255", clamp=False)


def _rows_where_differs(net, x, keep: int, **mistake) -> np.ndarray:
    """The rows of ``x`` where the mistake changes the layer's output (first ``keep`` of them),
    followed by 50 rows where it may not."""
    case = layer_case(net, x, "", **mistake)
    differs = (case.theirs != case.control).any(axis=1)
    assert differs.sum() >= keep, (mistake, int(differs.sum()))
    return np.concatenate([x[differs][:keep], x[~differs][:50]])


def bias_float_vs_int32() -> Case:
    """QNNPACK adds an int32 bias; the user adds the float one. The two differ where the bias's
    fraction moves a rounding (a fraction of a percent of elements): those rows are chosen."""
    net = converted("qnnpack")
    x = _rows_where_differs(net, rand((20000, 10)), 40, bias="float32")
    return layer_case(net, x, "QNNPACK's bias added in float32 instead of int32", bias="float32")


def bias_rounding() -> Case:
    """QNNPACK's int32 bias, truncated instead of rounded: one unit off in the channels whose
    bias / (s_x s_w) has a fraction above one half; the rows where that moves a rounding."""
    net = converted("qnnpack")
    x = _rows_where_differs(net, rand((20000, 10)), 40, bias_rounding="trunc")
    return layer_case(net, x, "QNNPACK's int32 bias truncated", bias_rounding="trunc")


def _tie_net(engine: str):
    """Power-of-two scales: M = s_x*s_w/s_out = 1/2 exactly, no bias: every odd accumulator is a
    tie (x.5) before rounding."""
    rng = np.random.default_rng(SEED)
    weight = rng.integers(-20, 21, (6, 8))
    return hand_linear_net(engine, weight, [0.25] * 6, 0.5, 128, 0.25, 128)


def rounding_half_away() -> Case:
    net = _tie_net("fbgemm")
    codes = np.random.default_rng(SEED + 1).integers(118, 139, (100, 8))
    x = inputs_for_codes(net, codes)
    assert np.array_equal(net.run_values(x)["quant"].values, codes)
    return layer_case(net, x, "ties rounded away from zero", rounding="away")


def rounding_truncation() -> Case:
    net = converted("qnnpack")
    return model_case(net, rand((200, 10)), "requantization truncated toward zero",
                      rounding="trunc")


def _ulps(value, delta: int) -> np.ndarray:
    return (value.view(np.int32) + np.int32(delta)).view(np.float32)


def _near_ties(net, how_differs: str, how_same: str, count: int) -> np.ndarray:
    """Inputs x (float32) next to the input quantization's rounding boundaries where the quantize
    variant ``how_differs`` gives another integer than PyTorch and ``how_same`` does not."""
    quant = net.layers["quant"]
    rng = np.random.default_rng(SEED + 2)
    k = rng.integers(-quant.zero_point, 255 - quant.zero_point, 40000)
    centre = f32((k + 0.5) * quant.scale)
    candidates = np.unique(np.concatenate([centre] + [_ulps(centre, delta)
                                                      for delta in (-3, -2, -1, 1, 2, 3)]))
    exact, _, _ = quantize_input(candidates, quant)
    differs, _, _ = quantize_input(candidates, quant, how=how_differs)
    same, _, _ = quantize_input(candidates, quant, how=how_same)
    chosen = candidates[(differs != exact) & (same == exact)]
    assert chosen.size >= count, (how_differs, chosen.size)
    return rng.permutation(chosen)[:count]


def _identity_net(engine: str, scale: float, zero_point: int, features: int = 10):
    """A Linear that copies its input codes: w = 64 I, s_w = 1/64, s_out = s_x, z_out = z_x, so
    each input integer that flips flips its output integer."""
    weight = 64 * np.eye(features, dtype=np.int64)
    return hand_linear_net(engine, weight, [1 / 64] * features, scale, zero_point, scale,
                           zero_point)


def _input_quantization_case(how: str, other: str) -> Case:
    net = _identity_net("qnnpack", 0.0123, 77)
    x = rand((60, 10), scale=3.0, offset=-0.9)
    x.reshape(-1)[:100] = _near_ties(net, how, other, 100)
    return model_case(net, x, f"input quantized with {how}", how=how)


def quantize_divide_vs_reciprocal() -> Case:
    return _input_quantization_case("divide", "zp_after")


def zero_point_after_rounding() -> Case:
    return _input_quantization_case("zp_after", "divide")


def input_zero_point_ignored() -> Case:
    net = converted("fbgemm", 10, 6, calibration="randn")  # inputs centred: z_x near 64
    assert net.layers["quant"].zero_point > 30
    return layer_case(net, rand((200, 10), scale=4.0, offset=-2.0),
                      "x_q used without subtracting z_x", input_zero_point_used=False)


def weight_zero_point_ignored() -> Case:
    net = converted("qnnpack", qconfig="affine_weight", weights="positive")
    assert net.layers["fc"].weight_zero_point != 0
    return layer_case(net, rand((200, 10)), "w_q used without subtracting z_w",
                      weight_zero_point_used=False)


def per_channel_scales_ignored() -> Case:
    net = converted("fbgemm", 10, 8)                    # default fbgemm: per-channel weights
    scales = np.asarray(net.layers["fc"].weight_scale)
    assert scales.ndim == 1 and np.ptp(scales) > 0.1 * scales.max()
    return layer_case(net, rand((200, 10)), "the first channel's weight scale for every channel",
                      per_channel=False)


def int16_pair_saturation() -> Case:
    # FBGEMM saturates pairs on AVX2 CPUs only: the model is imported for one, whatever the host
    net = converted("fbgemm", 16, 6, qconfig="full_range", weights="large", isa="avx2")
    assert net.layers["fc"].pair_saturation
    return layer_case(net, rand((200, 16)), "an exact dot product where AVX2 saturates pairs",
                      pair_saturation=False)


def multiplier_precision() -> Case:
    """Per-channel weight scales picked where the engine's float32 multiplier is furthest from
    the float64 one; inputs picked where the two round to different integers."""
    rng = np.random.default_rng(SEED + 3)
    s_x, s_out = 2.0 ** -5, 0.04123
    scales = rng.uniform(0.002, 0.02, 20000)
    float32 = f32(f32(f32(s_x) * f32(scales)) / f32(s_out)).astype(np.float64)
    error = np.abs(float32 / (s_x * scales / s_out) - 1)
    scales = scales[np.argsort(-error)[:32]]
    weight = np.tile([127, 1], (len(scales), 1))        # acc = 127 (x0 - z) + (x1 - z)
    net = hand_linear_net("fbgemm", weight, scales, s_x, 128, s_out, 128)
    layer = net.layers["fc"]
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 2)
    exact = user_linear(layer, grid, s_x, 128, engine="fbgemm")
    ideal = user_linear(layer, grid, s_x, 128, engine="fbgemm", multiplier="float64")
    rows = grid[(exact != ideal).any(axis=1)]
    assert len(rows) >= 5, len(rows)
    codes = np.concatenate([rows[:60], rng.integers(0, 256, (60, 2))])
    x = inputs_for_codes(net, codes)
    assert np.array_equal(net.run_values(x)["quant"].values, codes)
    return layer_case(net, x, "the ideal float64 multiplier", multiplier="float64")


def fused_relu_ignored() -> Case:
    net = converted("fbgemm", relu=True, qconfig="symmetric_activation")
    layer = net.layers["fc"]
    assert layer.relu and layer.output_zero_point == 128
    return layer_case(net, rand((200, 10)), "LinearReLU computed without its ReLU", relu=False)


def reduce_range_mismatch() -> Case:
    net = converted("qnnpack")                          # activations 0..255
    return model_case(net, rand((200, 10)), "activations quantized to 0..127", reduce_range=True)


def accumulator_overflow() -> Case:
    net = converted("qnnpack", 64, 8)
    return layer_case(net, rand((200, 64)), "a 16-bit accumulator", bits=16)


def wrong_engine() -> Case:
    """The model as converted for QNNPACK (per-tensor symmetric weights), run on oneDNN/AVX2:
    float bias, oneDNN's scale order, and int16 pair saturation in oneDNN's K blocks (for
    K = 258, two blocks of 129: the second block's pairs start at an odd k)."""
    net = converted("qnnpack", 258, 6, weights="large")
    x = rand((100, 258))
    other = qexact.Net(net.graph, "onednn", "avx2")
    theirs = other.run_quantized(x).values.astype(np.int64)
    return Case(net, x, theirs, None, net.run_quantized(x).values.astype(np.int64),
                "the numbers are oneDNN's")


CASES = {
    "missing_output_requantization": missing_output_requantization,
    "output_saturation": output_saturation,
    "bias_float_vs_int32": bias_float_vs_int32,
    "bias_rounding": bias_rounding,
    "rounding_half_away": rounding_half_away,
    "rounding_truncation": rounding_truncation,
    "quantize_divide_vs_reciprocal": quantize_divide_vs_reciprocal,
    "zero_point_after_rounding": zero_point_after_rounding,
    "input_zero_point_ignored": input_zero_point_ignored,
    "weight_zero_point_ignored": weight_zero_point_ignored,
    "per_channel_scales_ignored": per_channel_scales_ignored,
    "int16_pair_saturation": int16_pair_saturation,
    "multiplier_precision": multiplier_precision,
    "fused_relu_ignored": fused_relu_ignored,
    "reduce_range_mismatch": reduce_range_mismatch,
    "accumulator_overflow": accumulator_overflow,
    "wrong_engine": wrong_engine,
}
