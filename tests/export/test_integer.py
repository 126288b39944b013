"""Certified integer-only requantization (``qexact.export.integer``).

Every certificate is checked independently of the module's own proof: the integer formula
``clamp((acc * M + B) >> s, low, high)`` (written again here) and the engine's pipeline
(``requantize(acc, steps)``) are compared with ``np.array_equal`` on every accumulator value of
each channel's range where it is small, else on the ends, the formula's own thresholds +-1
(computed here with Python integers) and random samples. The range itself is checked against
the kernel's accumulator (``linear_accumulator``/``conv_accumulator``) on inputs that reach its
ends, and exhaustively for one saturating int16 pair. Hand-made layers: ties on the thresholds,
a fused ReLU, per-channel scales, an int32 bias (qnnpack), a float bias (fbgemm, FMA), and
pipelines that cannot be certified (refused steps; a multiplier of exactly 1/2, whose ties to
even are not an affine floor).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from qexact import Graph, Net, Node, QParams, Ref
from qexact import requantize as rq
from qexact.dtypes import QINT8, QUINT8
from qexact.errors import UnsupportedError
from qexact.export.integer import (IntegerRequantization, LayerCertificate, certificate_table,
                                   certify, integer_requantization)
from qexact.graph import PreparedNode
from qexact.ops.conv import conv_accumulator
from qexact.ops.linear import linear_accumulator
from qexact.qparams import qparams_to_fields

SAMPLES = 2000


# --- independent check -------------------------------------------------------------------------


def formula(acc, result: IntegerRequantization, channels) -> np.ndarray:
    """The integer formula, written again: per channel, Python-free int64 math."""
    acc = np.asarray(acc, np.int64)
    m, b, s = (np.asarray(v, np.int64)[channels] for v in
               (result.multiplier, result.offset, result.shift))
    return np.clip((acc * m + b) >> s, result.low, result.high)


def formula_thresholds(result: IntegerRequantization, channel: int) -> list[int]:
    m, b, s = (int(v[channel]) for v in (result.multiplier, result.offset, result.shift))
    return [-((b - (k << s)) // m) for k in range(result.low + 1, result.high + 1)]


def check_points(result: IntegerRequantization, channel: int, rng) -> np.ndarray:
    lo, hi = int(result.acc_low[channel]), int(result.acc_high[channel])
    if hi - lo < 300_000:
        return np.arange(lo, hi + 1)
    thresholds = np.array(formula_thresholds(result, channel), np.int64)
    points = np.concatenate([[lo, hi], thresholds - 1, thresholds, thresholds + 1,
                             rng.integers(lo, hi + 1, SAMPLES)])
    return np.unique(np.clip(points, lo, hi))


def engine_output(steps, acc_by_channel: np.ndarray) -> np.ndarray:
    return rq.requantize(acc_by_channel, steps, np.int64)


def check_certificate(net, name: str, result: IntegerRequantization | None = None) -> int:
    """Assert every certified channel of ``name`` equals the engine on its check points; return
    the number of values compared."""
    result = result or integer_requantization(net, name)
    steps = net.prepared_node(name).params.requantization
    rng = np.random.default_rng(5)
    channels = result.certified.size
    points = [check_points(result, c, rng) for c in range(channels)]
    length = max(len(p) for p in points)
    acc = np.stack([np.pad(p, (0, length - len(p)), mode="edge") for p in points], axis=1)
    engine = engine_output(steps, acc)
    integer = formula(acc, result, slice(None))
    for c in np.flatnonzero(result.certified):
        assert np.array_equal(engine[:, c], integer[:, c]), (name, c)
    return int(sum(len(p) for p in points))


# --- hand-made layers --------------------------------------------------------------------------


def layer_attrs(out_scale, out_zp, weight_qparams):
    attrs, arrays = qparams_to_fields(QParams.per_tensor(out_scale, out_zp, QUINT8), "output")
    weight_attrs, weight_arrays = qparams_to_fields(weight_qparams, "weight")
    attrs.update(weight_attrs)
    arrays.update(weight_arrays)
    return attrs, arrays


def gemm_net(op, weight, weight_qparams, bias, *, engine, isa="avx512_vnni", in_scale=0.05,
             in_zp=7, out_scale=0.3, out_zp=100, relu=False, **conv) -> Net:
    quant, _ = qparams_to_fields(QParams.per_tensor(in_scale, in_zp, QUINT8), "output")
    attrs, arrays = layer_attrs(out_scale, out_zp, weight_qparams)
    attrs.update(relu=relu, **conv)
    arrays["weight"] = np.asarray(weight, np.int8)
    if bias is not None:
        arrays["bias"] = np.asarray(bias, np.float32)
    nodes = [Node("quant", "quantize", (Ref("x"),), quant, {}),
             Node("layer", op, (Ref("quant"),), attrs, arrays),
             Node("dequant", "dequantize", (Ref("layer"),))]
    return Net(Graph(["x"], nodes, [Ref("dequant")]), engine, isa=isa)


def random_linear(engine, *, per_channel=False, bias=True, relu=False, seed=0, k=16, n=6,
                  isa="avx512_vnni", weights=None, **kw) -> Net:
    rng = np.random.default_rng(seed)
    weight = rng.integers(-127, 128, (n, k)) if weights is None else weights
    qparams = (QParams.per_channel(rng.uniform(0.002, 0.02, n), np.zeros(n, np.int64), 0, QINT8)
               if per_channel else QParams.per_tensor(0.0071, 0, QINT8))
    return gemm_net("linear", weight, qparams,
                    rng.normal(0, 3, n).astype(np.float32) if bias else None,
                    engine=engine, relu=relu, isa=isa, **kw)


def swap_steps(net: Net, name: str, steps) -> Net:
    """``net`` with node ``name``'s requantization replaced (a pipeline no engine builds)."""
    for position, item in enumerate(net._prepared):
        if item.node.name == name:
            net._prepared[position] = PreparedNode(item.node, item.definition,
                                                   replace(item.params, requantization=steps),
                                                   item.output_qparams)
    return net


def exhaustive_stats(net, name, result):
    """(worst |F - Q|, mismatch count) over every acc of every channel's range."""
    steps = net.prepared_node(name).params.requantization
    worst, count = 0, 0
    for c in range(result.certified.size):
        acc = np.arange(result.acc_low[c], result.acc_high[c] + 1)[:, None]
        acc = np.repeat(acc, result.certified.size, axis=1)
        difference = np.abs(engine_output(steps, acc)[:, c] - formula(acc, result,
                                                                      slice(None))[:, c])
        worst, count = max(worst, int(difference.max())), count + int((difference != 0).sum())
    return worst, count


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "qnnpack", "onednn"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_certificates_hold(engine, per_channel):
    net = random_linear(engine, per_channel=per_channel, seed=1 + per_channel)
    result = integer_requantization(net, "layer")
    assert result.certified.shape == (6,) and result.multiplier.dtype == np.int64
    assert check_certificate(net, "layer", result) > 6 * 255
    assert (result.multiplier > 0).all() and (result.shift >= 0).all() and \
        (result.shift <= 62).all()
    if result.certified.all():
        assert result.worst_case == 0 and result.mismatch_rate == 0.0


@pytest.mark.parametrize("engine", ["fbgemm", "qnnpack", "onednn"])
def test_fused_relu_raises_low_to_the_zero_point(engine):
    net = random_linear(engine, relu=True, seed=3)
    result = integer_requantization(net, "layer")
    assert result.low == 100 and result.high == 255
    check_certificate(net, "layer", result)
    assert result.certified.any()


def test_int32_bias_qnnpack_is_folded_into_the_offset():
    """The int32 bias is a step of the pipeline (not of the range): the offset absorbs it.
    (Which channels certify depends on ties of v * scale in float32: with out_scale 0.3 this
    layer has none, with 0.61 all six.)"""
    net = random_linear("qnnpack", seed=4, out_scale=0.61)
    plain = random_linear("qnnpack", seed=4, out_scale=0.61, bias=False)
    params = net.prepared_node("layer").params
    assert isinstance(params.requantization[0], rq.AddInt32)
    result = integer_requantization(net, "layer")
    assert result.certified.all(), result.proof
    check_certificate(net, "layer", result)
    without = integer_requantization(plain, "layer")
    assert np.array_equal(result.acc_low, without.acc_low)
    assert not np.array_equal(result.offset, without.offset)
    tied = random_linear("qnnpack", seed=4, out_scale=0.3)
    result = integer_requantization(tied, "layer")
    assert not result.certified.any() and result.worst_case == 1
    check_certificate(tied, "layer", result)


def test_float_bias_fbgemm_fma_and_per_channel_division():
    for per_channel, kind in ((False, rq.FusedMultiplyAdd), (True, rq.AddFloat32)):
        net = random_linear("fbgemm", per_channel=per_channel, seed=5)
        assert any(isinstance(step, kind) for step in
                   net.prepared_node("layer").params.requantization)
        result = integer_requantization(net, "layer")
        check_certificate(net, "layer", result)
        assert result.certified.sum() >= 4, result.proof


def test_range_is_reached_by_extreme_inputs_linear():
    net = random_linear("fbgemm", seed=6, in_zp=31)
    params = net.prepared_node("layer").params
    result = integer_requantization(net, "layer")
    weight = params.weight.astype(np.int64)
    high_input = np.where(weight > 0, 255, 0).astype(np.uint8)     # one row per channel
    low_input = np.where(weight > 0, 0, 255).astype(np.uint8)
    channels = np.arange(weight.shape[0])
    assert np.array_equal(linear_accumulator(high_input, params)[channels, channels],
                          result.acc_high)
    assert np.array_equal(linear_accumulator(low_input, params)[channels, channels],
                          result.acc_low)


def test_range_is_reached_by_extreme_inputs_conv():
    rng = np.random.default_rng(7)
    weight = rng.integers(-127, 128, (5, 3, 3, 3))
    qparams = QParams.per_channel(rng.uniform(0.002, 0.02, 5), np.zeros(5, np.int64), 0, QINT8)
    net = gemm_net("conv", weight, qparams, rng.normal(0, 1, 5), engine="qnnpack", in_zp=50,
                   stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
    params = net.prepared_node("layer").params
    result = integer_requantization(net, "layer")
    for c in range(5):
        for wanted, expect in ((weight[c] > 0, result.acc_high[c]),
                               (weight[c] < 0, result.acc_low[c])):
            x = np.where(wanted, 255, 0).astype(np.uint8)[None]   # (1, 3, 3, 3): one position
            assert conv_accumulator(x, params)[0, c] == expect
    check_certificate(net, "layer", result)


@pytest.mark.parametrize("in_zp", [0, 90])
def test_saturating_pair_range_is_exact(in_zp):
    """One int16 pair on AVX2: the range equals the min/max over all 65,536 inputs."""
    weight = np.array([[127, 127], [-128, -128], [127, -128], [120, 90]])
    net = gemm_net("linear", weight, QParams.per_tensor(0.01, 0, QINT8), None, engine="fbgemm",
                   isa="avx2", in_zp=in_zp)
    params = net.prepared_node("layer").params
    assert params.pair_saturation and params.risky_pairs.any()
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256)), -1).reshape(-1, 2)
    acc = linear_accumulator(grid.astype(np.uint8), params)
    exact = (grid - in_zp) @ weight.T
    assert not np.array_equal(acc, exact)                     # the pairs do saturate
    result = integer_requantization(net, "layer")
    assert np.array_equal(result.acc_low, acc.min(axis=0))
    assert np.array_equal(result.acc_high, acc.max(axis=0))
    check_certificate(net, "layer", result)


def test_saturating_conv_with_padding_covers_every_accumulator():
    """A padded 3x3 conv on AVX2 (fbgemm: padded taps hold z_x in the pairs): every
    accumulator of random and extreme inputs lies in the certified range."""
    rng = np.random.default_rng(8)
    weight = rng.choice(np.array([127, -128, 120, -90, 5]), size=(4, 3, 3, 3))
    net = gemm_net("conv", weight, QParams.per_tensor(0.01, 0, QINT8), rng.normal(0, 1, 4),
                   engine="fbgemm", isa="avx2", in_zp=60, stride=[1, 1], padding=[1, 1],
                   dilation=[1, 1], groups=1)
    params = net.prepared_node("layer").params
    assert params.pair_saturation
    result = integer_requantization(net, "layer")
    inputs = np.concatenate([rng.integers(0, 256, (6, 3, 5, 5)),
                             np.full((1, 3, 5, 5), 255), np.zeros((1, 3, 5, 5))]).astype(np.uint8)
    acc = conv_accumulator(inputs, params)
    assert (acc >= result.acc_low).all() and (acc <= result.acc_high).all()
    check_certificate(net, "layer", result)


def test_ties_on_the_thresholds():
    """Multiplier 1/2 exactly (s_x s_w / s_out = 0.5): v * 0.5 hits .5 on every odd v and
    round-half-even sends them alternately down and up (0, 1, 2, 2, 2, 3, 4, 4, ...): no affine
    floor matches over a range of many levels, so the layer is reported, with its worst case and
    mismatch rate equal to an exhaustive count."""
    weight = np.array([[1, -1], [2, 1]])
    net = gemm_net("linear", weight, QParams.per_tensor(0.5, 0, QINT8), None, engine="qnnpack",
                   in_scale=0.25, in_zp=0, out_scale=0.25, out_zp=0)
    params = net.prepared_node("layer").params
    assert float(params.requantization[1].factor) == 0.5
    result = integer_requantization(net, "layer")
    assert not result.certified.all()
    worst, count = exhaustive_stats(net, "layer", result)
    total = int((result.acc_high - result.acc_low + 1).sum())
    assert result.worst_case == worst >= 1
    assert result.mismatch_rate == pytest.approx(count / total)
    certificate = LayerCertificate("layer", "linear", "qnnpack", "avx512_vnni",
                                   int(result.certified.sum()), 2, 0, 0, result.proof,
                                   result.worst_case, result.mismatch_rate, result)
    assert str(certificate).startswith("exact with the threshold table (the closest "
                                       "multiplier: worst case 1")
    # the threshold form: the engine's own thresholds, exact on every accumulator value
    assert result.form == "thresholds" and result.exact
    steps = params.requantization
    acc = np.arange(int(result.acc_low.min()), int(result.acc_high.max()) + 1)[:, None]
    acc = np.repeat(acc, 2, axis=1)
    inside = (acc >= result.acc_low) & (acc <= result.acc_high)
    assert np.array_equal(np.where(inside, result.apply(acc), 0),
                          np.where(inside, rq.requantize(acc, steps, np.int64), 0))


def test_ties_with_few_levels_are_certified():
    """The same ties where the output clamp leaves few levels (ReLU-like: z_out = 0 and the
    range mostly negative): certified, and the certificate holds on every value."""
    weight = np.array([[1]])
    net = gemm_net("linear", weight, QParams.per_tensor(0.5, 0, QINT8), None,
                   engine="qnnpack", in_scale=0.25, in_zp=252, out_scale=0.25, out_zp=0)
    result = integer_requantization(net, "layer")
    assert (int(result.acc_low[0]), int(result.acc_high[0])) == (-252, 3)
    steps = net.prepared_node("layer").params.requantization
    outputs = engine_output(steps, np.arange(-3, 4)[:, None])[:, 0]
    assert outputs.tolist() == [0, 0, 0, 0, 0, 1, 2]        # -1.5, -0.5, 0.5, 1.5: ties
    assert result.certified.all(), result.proof
    check_certificate(net, "layer", result)


def test_negative_factor_is_refused():
    net = random_linear("qnnpack", seed=9)
    steps = net.prepared_node("layer").params.requantization
    flipped = tuple(replace(step, factor=-step.factor) if isinstance(step, rq.MultiplyFloat32)
                    else step for step in steps)
    result = integer_requantization(swap_steps(net, "layer", flipped), "layer")
    assert not result.certified.any()
    assert "negative" in result.proof
    assert result.worst_case > 0 and result.mismatch_rate > 0


def test_run_time_operand_is_refused():
    net = random_linear("onednn", seed=10)
    steps = net.prepared_node("layer").params.requantization
    extra = steps[:-1] + (rq.AddOperandFloat32("residual", role="sum",
                                               operand=np.float32(0.0)),) + steps[-1:]
    result = integer_requantization(swap_steps(net, "layer", extra), "layer")
    assert not result.certified.any()
    assert "second run-time tensor" in result.proof


def test_wrapping_int32_bias_is_refused():
    net = random_linear("qnnpack", seed=11)
    steps = net.prepared_node("layer").params.requantization
    huge = tuple(replace(step, term=np.full(6, 2 ** 31 - 10, np.int64))
                 if isinstance(step, rq.AddInt32) else step for step in steps)
    result = integer_requantization(swap_steps(net, "layer", huge), "layer")
    assert not result.certified.any() and "wraps int32" in result.proof


def test_certify_lists_gemm_layers_and_refuses_other_nodes():
    net = random_linear("qnnpack", seed=5, out_scale=0.61)
    certificates = certify(net)
    assert [c.name for c in certificates] == ["layer"]
    assert certificates[0].exact and str(certificates[0]).startswith("exact (certified over [")
    table = certificate_table(certificates)
    assert "| layer | linear | 6/6 |" in table and table.endswith("1/1 GEMM layers certified exact with a multiplier and shift; "
                                    "0 more exact with the threshold table")
    with pytest.raises(UnsupportedError, match="quantize"):
        integer_requantization(net, "quant")


# --- the test models ---------------------------------------------------------------------------

ENGINE_ISAS = [("fbgemm", "avx512_vnni"), ("x86", "avx512_vnni"), ("qnnpack", "avx512_vnni"),
               ("onednn", "avx512_vnni"), ("fbgemm", "avx2"), ("x86", "avx2"), ("onednn", "avx2")]


def model_net(kind, name, engine, isa):
    torch = pytest.importorskip("torch")
    import qexact
    from support.cnn_models import build_cnn
    from support.models import build, forum_model, multilayer_model, no_bias_model, \
        per_tensor_model
    builders = {"forum": forum_model, "multilayer": multilayer_model, "no_bias": no_bias_model,
                "per_tensor": per_tensor_model}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, shape = build_cnn(name, engine) if kind == "cnn" else build(builders[name], engine)
        net = qexact.from_torch(model, example_inputs=(torch.rand(shape),), engine=engine)
    finally:
        torch.set_num_threads(previous)
    return net if isa == "avx512_vnni" else Net(net.graph, engine, isa=isa)


def check_model(net):
    certificates = certify(net)
    assert certificates
    for certificate in certificates:
        check_certificate(net, certificate.name, certificate.requantization)
        if not certificate.exact:
            assert certificate.worst_case >= 1 and certificate.mismatch_rate > 0
    return certificates


@pytest.mark.torch
@pytest.mark.parametrize("kind,name,engine,isa", [
    ("linear", "forum", "qnnpack", "avx512_vnni"), ("linear", "multilayer", "qnnpack",
                                                    "avx512_vnni"),
    ("cnn", "resnet", "qnnpack", "avx512_vnni"), ("cnn", "resnet", "fbgemm", "avx2"),
])
def test_models_short(kind, name, engine, isa):
    certificates = check_model(model_net(kind, name, engine, isa))
    if engine == "qnnpack":  # int32 bias and one float multiply: every layer certified
        assert all(c.exact for c in certificates), [str(c) for c in certificates]


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("engine,isa", ENGINE_ISAS)
@pytest.mark.parametrize("kind,name", [("linear", n) for n in ("forum", "multilayer", "no_bias",
                                                               "per_tensor")]
                         + [("cnn", n) for n in ("resnet", "mobilenet_v2", "mobilenet_v3",
                                                 "shufflenet_v2", "detector")])
def test_models_full(kind, name, engine, isa):
    check_model(model_net(kind, name, engine, isa))


def test_unbound_residual_step_is_refused_and_fitted_without_it():
    net = random_linear("onednn", seed=13)
    steps = net.prepared_node("layer").params.requantization
    extra = steps[:-1] + (rq.AddOperandFloat32("residual", role="sum"),) + steps[-1:]
    result = integer_requantization(swap_steps(net, "layer", extra), "layer")
    assert not result.certified.any() and "taken as 0" in result.proof


def test_zero_weight_channel():
    weights = np.random.default_rng(14).integers(-127, 128, (3, 8))
    weights[1] = 0
    net = random_linear("qnnpack", weights=weights, n=3, k=8, seed=14)
    result = integer_requantization(net, "layer")
    assert (int(result.acc_low[1]), int(result.acc_high[1])) == (0, 0)
    assert result.certified[1]
    check_certificate(net, "layer", result)


def test_certify_with_values_lists_table_nodes():
    rng = np.random.default_rng(15)
    quant, _ = qparams_to_fields(QParams.per_tensor(0.05, 7, QUINT8), "output")
    attrs, arrays = layer_attrs(0.3, 100, QParams.per_tensor(0.0071, 0, QINT8))
    attrs.update(relu=False)
    arrays.update(weight=rng.integers(-127, 128, (4, 8)).astype(np.int8))
    nodes = [Node("quant", "quantize", (Ref("x"),), quant, {}),
             Node("layer", "linear", (Ref("quant"),), attrs, arrays),
             Node("act", "relu", (Ref("layer"),)),
             Node("dequant", "dequantize", (Ref("act"),))]
    net = Net(Graph(["x"], nodes, [Ref("dequant")]), "qnnpack")
    values = net.run_values(rng.normal(0, 2, (3, 8)).astype(np.float32))
    certificates = certify(net, values)
    names = [c.name for c in certificates]
    assert names[0] == "layer"
    tables = [c for c in certificates if c.table]
    assert [c.name for c in tables] == ["act"]
    assert tables[0].exact and str(tables[0]).startswith("exact by construction (UnaryTable)")


def test_qint8_activations_xnnpack():
    """Signed activations (XNNPACK: qint8 in and out, a MinFloat32 cap, the output zero point
    added in int32): the range uses [-128, 127] and the clamp the qint8 range."""
    rng = np.random.default_rng(16)
    quant, _ = qparams_to_fields(QParams.per_tensor(0.05, 3, QINT8), "output")
    attrs, arrays = qparams_to_fields(QParams.per_tensor(0.3, -5, QINT8), "output")
    weight_attrs, weight_arrays = qparams_to_fields(QParams.per_tensor(0.0071, 0, QINT8),
                                                    "weight")
    attrs.update(weight_attrs, relu=False)
    arrays.update(weight_arrays, weight=rng.integers(-127, 128, (4, 16)).astype(np.int8),
                  bias=rng.normal(0, 2, 4).astype(np.float32))
    nodes = [Node("quant", "quantize", (Ref("x"),), quant, {}),
             Node("layer", "linear", (Ref("quant"),), attrs, arrays),
             Node("dequant", "dequantize", (Ref("layer"),))]
    net = Net(Graph(["x"], nodes, [Ref("dequant")]), "xnnpack")
    result = integer_requantization(net, "layer")
    assert (result.low, result.high) == (-128, 127)
    weight = arrays["weight"].astype(np.int64)
    assert np.array_equal(result.acc_high, np.maximum(weight * (-128 - 3),
                                                      weight * (127 - 3)).sum(axis=1))
    assert result.certified.any()
    check_certificate(net, "layer", result)
