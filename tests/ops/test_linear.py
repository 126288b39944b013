"""quantized Linear / LinearReLU: properties, errors, and bit-exact differential tests vs PyTorch.

Sections (style.md 8.4): goldens (none yet: no goldens directory exists), properties, errors,
differential against PyTorch (random cases per engine, exhaustive accumulator sweeps built on
rounding boundaries, int16 pair saturation). Every comparison is exact (``assert_bitexact``).

The default ISA is ``qexact.detect_isa()``, i.e. what PyTorch runs in this process. oneDNN on
AVX2 forms int16 pairs per K block (K > 256, K % 4 != 0) and combines its input and weight scales;
``test_linear_random_onednn_kblocking_vs_torch`` and the reproducer below hold both.
"""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact
from support.torch_ref import qexact_linear, torch_linear

import qexact
from qexact import QINT8, QUINT8, QParams, QuantParamError, ShapeError
from qexact.engines import engine_names
from qexact.ops.linear import linear_accumulator
from qexact.requantize import RoundHalfEvenToInt32, trace_requantize

ENGINE_NAMES = engine_names()
RANDOM_CASES_PER_ENGINE = 2000
SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def allows_weight_zero_point(engine: str) -> bool:
    return qexact.get_engine(engine).linear.allows_weight_zero_point


def onednn_kblocking_case(engine: str, full_range: bool, depth: int) -> bool:
    """oneDNN on AVX2 with activations above 127, K > 256, K % 4 != 0: pairs per K block."""
    return (engine == "onednn" and qexact.detect_isa() == "avx2" and full_range
            and depth > 256 and depth % 4 != 0)


def check_vs_torch(engine, x, x_qp, w, w_qp, bias, out_qp, relu, isa=None, context=""):
    """One case, both sides, bit for bit. Returns the torch output."""
    import torch

    expected = torch_linear(x, x_qp, w, w_qp, bias, out_qp, relu)
    actual = qexact_linear(x, x_qp, w, w_qp, bias, out_qp, relu, engine, isa=isa)
    message = (f"{engine} (torch {torch.__version__}, backend {torch.backends.quantized.engine}, "
               f"isa {isa or qexact.detect_isa()}) {context}")
    assert_bitexact(actual, expected, message)
    return expected



# ---------------------------------------------------------------------------------------------
# Random cases
# ---------------------------------------------------------------------------------------------

def log_uniform_exponent():
    """log10 of a scale in [1e-4, 10]."""
    return st.floats(min_value=-4.0, max_value=1.0, allow_nan=False, allow_infinity=False)


def size(high):
    """A dimension in 1..high; small sizes drawn more often than large ones (runtime), but
    every size in the range can appear."""
    return st.one_of(st.integers(1, high), st.integers(1, max(1, high // 8)))


@st.composite
def linear_cases(draw, engine, kblocking=False):
    rng = np.random.default_rng(draw(st.integers(0, 2**63 - 1)))
    rows = draw(size(64))
    if kblocking:
        full_range = True
        depth = draw(st.integers(257, 512).filter(lambda k: k % 4 != 0))
    else:
        full_range = draw(st.booleans())
        depth = draw(size(512))
        if onednn_kblocking_case(engine, full_range, depth):
            depth -= depth % 4  # the unmodelled K-blocking cases are tested separately
    channels = draw(size(256))
    rank = draw(st.sampled_from([2, 3]))
    per_channel = draw(st.booleans())
    relu = draw(st.booleans())
    data = draw(st.sampled_from(["extreme", "high"] if kblocking
                                else ["uniform", "uniform", "extreme", "high"]))

    hi = 256 if full_range else 128
    if data == "uniform":
        x = rng.integers(0, hi, size=(rows, depth))
        w = rng.integers(-128, 128, size=(channels, depth))
    elif data == "extreme":  # the corners, where int16 pair sums saturate
        x = rng.choice([0, 1, hi - 2, hi - 1], size=(rows, depth))
        w = rng.choice([-128, -127, -1, 0, 1, 126, 127], size=(channels, depth))
    else:  # high activations, same-sign weights per row
        x = rng.integers(hi * 3 // 4, hi, size=(rows, depth))
        sign = rng.choice([-1, 1], size=(channels, 1))
        w = np.clip(sign * rng.integers(64, 129, size=(channels, depth)), -128, 127)
    x = x.astype(np.uint8)
    w = w.astype(np.int8)
    if rank == 3:
        batch = draw(st.integers(1, 4))
        x = x[: (rows // batch) * batch] if rows >= batch else np.repeat(x, batch, axis=0)
        x = x.reshape(batch, -1, depth)

    s_x = 10.0 ** draw(log_uniform_exponent())
    z_x = draw(st.integers(0, 255))
    nonzero_zw = allows_weight_zero_point(engine) and draw(st.booleans())
    if per_channel:
        low, high = sorted(draw(st.tuples(log_uniform_exponent(), log_uniform_exponent())))
        s_w = 10.0 ** rng.uniform(low, high, size=channels)
        z_w = rng.integers(-128, 128, size=channels) if nonzero_zw else np.zeros(channels, np.int64)
        w_qp = QParams.per_channel(s_w, z_w, 0, QINT8)
    else:
        s_w = 10.0 ** draw(log_uniform_exponent())
        z_w = draw(st.integers(-128, 127)) if nonzero_zw else 0
        w_qp = QParams.per_tensor(s_w, z_w, QINT8)

    if kblocking or draw(st.integers(0, 3)) == 0:
        # output scale matched to the accumulator's spread, so outputs are mostly not saturated
        s_out = float(np.clip(np.median(s_w) * s_x * 40.0 * np.sqrt(depth) * rng.uniform(0.5, 2.0),
                              1e-4, 10.0))
    else:
        s_out = 10.0 ** draw(log_uniform_exponent())
    z_out = draw(st.integers(0, 255))

    grid = np.asarray(s_x * np.asarray(s_w, np.float64)) * np.ones(channels)
    bias_kind = draw(st.sampled_from(["none", "relative", "relative", "grid", "half_grid"]))
    if bias_kind == "none":
        bias = None
    elif bias_kind == "relative":  # |bias| / (s_x*s_w) from 1e-3 (tiny) to 1e7 (large)
        bias = rng.standard_normal(channels) * grid * 10.0 ** draw(st.floats(-3.0, 7.0))
    else:
        steps = rng.integers(-40000, 40000, size=channels).astype(np.float64)
        bias = (steps + (0.5 if bias_kind == "half_grid" else 0.0)) * grid
    if bias is not None:
        bias = bias.astype(np.float32)
    return dict(x=x, x_qp=QParams.per_tensor(s_x, z_x, QUINT8), w=w, w_qp=w_qp, bias=bias,
                out_qp=QParams.per_tensor(s_out, z_out, QUINT8), relu=relu,
                label=f"{data}/{bias_kind}")


def run_random_cases(engine, report, examples, kblocking=False):
    """Run ``examples`` hypothesis cases; returns how many ran."""
    stats = report[f"{engine}{' kblocking' if kblocking else ''}"]

    @settings(max_examples=examples, suppress_health_check=SUPPRESS)
    @given(case=linear_cases(engine, kblocking))
    def check(case):
        label = case.pop("label")
        stats["cases"] += 1
        expected = check_vs_torch(engine, **case, context=label)
        stats["elements"] += expected.size
        stats["unsaturated_elements"] += int(((expected > 0) & (expected < 255)).sum())

    before = stats["cases"]
    check()
    return stats["cases"] - before


@pytest.mark.torch
def test_linear_random_vs_torch(engine, report):
    """>= 2,000 random Linear/LinearReLU cases per engine, every output byte equal to PyTorch."""
    ran = run_random_cases(engine, report, RANDOM_CASES_PER_ENGINE)
    assert ran >= RANDOM_CASES_PER_ENGINE


@pytest.mark.torch
@pytest.mark.parametrize("engine", ["onednn"], indirect=True)
def test_linear_random_onednn_kblocking_vs_torch(engine, report):
    """Full-range activations with K in (256, 512], K % 4 != 0 on oneDNN: pairs per K block."""
    if qexact.detect_isa() != "avx2":
        pytest.skip("K-blocking of int16 pairs only matters without VNNI")
    run_random_cases(engine, report, 100, kblocking=True)


# ---------------------------------------------------------------------------------------------
# Boundary cases: every accumulator in [-32640, 32640], built into a real K=4 Linear
# ---------------------------------------------------------------------------------------------

ACC_WEIGHTS = np.array([127, -128, 1, -1], np.int8)
"""Pairs (127a - 128c) and (b - d): never saturate in int16, so the accumulator is exact on every
ISA, and with z_x = z_w = 0 every integer in [-32640, 32640] is some (a, c, b, d)."""


def activations_for(targets: np.ndarray) -> np.ndarray:
    """uint8 rows x with x @ ACC_WEIGHTS == targets (z_x = 0)."""
    targets = np.asarray(targets, np.int64)
    positive = targets >= 0
    a = np.where(positive, np.minimum(targets // 127, 255), 0)
    c = np.where(positive, 0, np.minimum(-targets // 128, 255))
    rest = targets - 127 * a + 128 * c
    x = np.stack([a, c, np.maximum(rest, 0), np.maximum(-rest, 0)], axis=1)
    assert x.min() >= 0 and x.max() <= 255
    assert np.array_equal(x @ ACC_WEIGHTS.astype(np.int64), targets)
    return x.astype(np.uint8)


ALL_ACCUMULATORS = np.arange(-32640, 32641)
SWEEP_X = activations_for(ALL_ACCUMULATORS)


def weight_qparams(scales, per_channel):
    if per_channel:
        scales = np.asarray(scales, np.float64)
        return QParams.per_channel(scales, np.zeros(len(scales), np.int64), 0, QINT8)
    return QParams.per_tensor(float(scales), 0, QINT8)


def pre_rounding_values(engine, x, x_qp, w, w_qp, bias, out_qp, relu):
    """The float32 value the engine rounds, for every output element (from qexact's steps)."""
    params = qexact.prepare_linear(w, w_qp, bias, x_qp, out_qp, relu=relu, engine=engine)
    acc = linear_accumulator(x.reshape(-1, w.shape[1]), params)
    trace = trace_requantize(acc, params.requantization)
    rounding = [i for i, (step, _) in enumerate(trace) if isinstance(step, RoundHalfEvenToInt32)]
    assert len(rounding) == 1 and rounding[0] > 0
    return trace[rounding[0] - 1][1], [value for _, value in trace[:rounding[0]]]


def tie_fraction(values):
    values = np.asarray(values, np.float64)
    return np.abs(values - np.floor(values)) == 0.5


P2 = 2.0 ** np.arange(-13, 4)  # powers of two inside [1e-4, 10]

# name: (s_x, s_w (scalar or per-channel list), s_out, z_out, bias in units of s_x*s_w or None,
#        relu, where exact ties are expected: "all" engines at the final rounding, or
#        "float_bias": at the final rounding for float-bias engines and, for QNNPACK, in the
#        int32 bias quantization (half-grid biases))
SWEEPS = {
    "pow2_half_even_zp": (2**-3, 2**-4, 2**-6, 100, None, False, "all"),
    "pow2_half_odd_zp": (2**-3, 2**-4, 2**-6, 101, None, False, "all"),
    "pow2_quarter_relu": (2**-4, 2**-4, 2**-6, 37, None, True, "all"),
    "pow2_per_channel": (2**-2, [2**-3, 2**-5, 2**-7, 2**-9, 1.0, 2.0], 2**-7, 128, None, False,
                         "all"),
    "pow2_bias_on_grid": (2**-3, 2**-4, 2**-5, 128, [0, 1, -1, 1000, -30000, 7], False, "all"),
    "pow2_bias_half_grid": (2**-3, 2**-4, 2**-7, 127,
                            [0.5, 1.5, 2.5, -0.5, -1.5, -2.5], False, "float_bias"),
    "pow2_bias_half_grid_per_channel": (2**-3, [2**-4, 2**-5, 2**-6, 2**-3, 2**-2, 1.0], 2**-6,
                                        129, [0.5, 1.5, 2.5, -0.5, -1.5, -100.5], True, "float_bias"),
    "grid_bias_decimal_scales": (0.37, 0.011, 0.003, 77, [1, 2, -3, 1000, 0.5, -7.5], False,
                                 False),
    "grid_bias_decimal_per_channel": (0.1, [0.3, 0.7, 0.01, 0.2, 0.9, 0.05], 0.03, 200,
                                      [0.5, -0.5, 3.5, 1e4, -1e4 + 0.5, 2], True, False),
    "multiplier_above_one": (0.5, 0.25, 0.1, 128, None, False, False),
    "multiplier_pow2_above_one": (2**-1, 2**-2, 2**-4, 128, [0.25, 0.75, -0.25, -1.75, 0.5, 1.5],
                                  False, "float_bias"),
    "multiplier_tiny": (1e-4, 1e-4, 10.0, 3, None, False, False),
    "output_saturates_both_ends": (0.05, 0.02, 0.01, 128, None, False, False),
    "f32_product_exceeds_int32": (10.0, 10.0, 1e-4, 128, None, False, False),
    "f32_product_exceeds_int32_relu": (10.0, 10.0, 1e-4, 0, None, True, False),
    "huge_bias_exceeds_int32": (10.0, 10.0, 1e-4, 128, [1e7, -1e7, 3e6, -5.0, 0.5, 1.0], False,
                                False),
    "huge_bias_qint32_wraps": (1e-4, 1e-4, 1e-4, 7, [1e11, -1e11, 2.14747e9, -2.14747e9, 1, 0],
                               False, False),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(SWEEPS))
def test_linear_boundary_sweep_vs_torch(engine, name, report):
    """Each configuration evaluated on all 65,281 accumulators in [-32640, 32640] per channel."""
    s_x, s_w, s_out, z_out, bias_units, relu, expect_ties = SWEEPS[name]
    per_channel = isinstance(s_w, list)
    channels = len(s_w) if per_channel else (len(bias_units) if bias_units is not None else 4)
    w = np.tile(ACC_WEIGHTS, (channels, 1))
    w_qp = weight_qparams(s_w, per_channel)
    x_qp = QParams.per_tensor(s_x, 0, QUINT8)
    out_qp = QParams.per_tensor(s_out, z_out, QUINT8)
    bias = None
    if bias_units is not None:
        bias = (np.asarray(bias_units, np.float64) * s_x * np.asarray(s_w, np.float64)
                ).astype(np.float32)
    expected = check_vs_torch(engine, SWEEP_X, x_qp, w, w_qp, bias, out_qp, relu, context=name)
    stats = report[f"{engine} boundary"]
    stats["cases"] += 1
    stats["elements"] += expected.size
    if expect_ties == "float_bias" and engine == "qnnpack":  # ties in quantize(bias), to even
        params = qexact.prepare_linear(w, w_qp, bias, x_qp, out_qp, relu=relu, engine=engine)
        units = np.asarray(bias_units, np.float64)
        assert tie_fraction(units).any()
        assert_bitexact(params.bias.astype(np.int64), np.rint(units).astype(np.int64),
                        f"{name} bias ties")
    elif expect_ties:  # the configuration really sits on rounding boundaries
        values, _ = pre_rounding_values(engine, SWEEP_X, x_qp, w, w_qp, bias, out_qp, relu)
        ties = tie_fraction(values)
        assert ties.sum() > 100, f"{name}: only {ties.sum()} exact ties"
        stats["exact_ties"] += int(ties.sum())
    if name.startswith(("f32_product_exceeds", "huge_bias_exceeds")):
        _, intermediates = pre_rounding_values(engine, SWEEP_X, x_qp, w, w_qp, bias, out_qp, relu)
        # the cvtps2dq edge is reached (oneDNN clamps to [0, 255] in float before it)
        assert max(np.abs(v.astype(np.float64)).max() for v in intermediates) >= 2.0**31


def sweep_random_scales(engine, report, examples, shrink=True):
    stats = report[f"{engine} boundary"]
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.generate)

    @given(seed=st.integers(0, 2**32 - 1), per_channel=st.booleans(), relu=st.booleans(),
           z_out=st.integers(0, 255))
    @settings(max_examples=examples, suppress_health_check=SUPPRESS, phases=phases)
    def check(seed, per_channel, relu, z_out):
        rng = np.random.default_rng(seed)
        channels = 4
        s_x = 10.0 ** rng.uniform(-4, 1)
        s_w = 10.0 ** rng.uniform(-4, 1, size=channels) if per_channel else 10.0 ** rng.uniform(-4, 1)
        # s_out maps the accumulators onto the whole output range (many rounding boundaries)
        s_out = float(np.clip(s_x * np.max(s_w) * 32640 / 127 * rng.uniform(0.3, 3), 1e-4, 10.0))
        w = np.tile(ACC_WEIGHTS, (channels, 1))
        w_qp = weight_qparams(s_w if per_channel else float(s_w), per_channel)
        units = rng.integers(-3000, 3000, size=channels) + rng.choice([0.0, 0.5], size=channels)
        bias = (units * s_x * np.asarray(s_w)).astype(np.float32)
        x_qp = QParams.per_tensor(s_x, 0, QUINT8)
        out_qp = QParams.per_tensor(s_out, z_out, QUINT8)
        expected = check_vs_torch(engine, SWEEP_X, x_qp, w, w_qp, bias, out_qp, relu,
                                  context=f"seed {seed}")
        values, _ = pre_rounding_values(engine, SWEEP_X, x_qp, w, w_qp, bias, out_qp, relu)
        fraction = np.abs(values.astype(np.float64) % 1.0 - 0.5)
        stats["cases"] += 1
        stats["elements"] += expected.size
        stats["near_ties"] += int((fraction < 2.0**-10).sum())

    check()


@pytest.mark.torch
def test_linear_boundary_sweep_random_scales_vs_torch(engine, report):
    """Random log-uniform scales with on-grid/half-grid biases, each on every accumulator in
    [-32640, 32640]; near-ties (pre-rounding value within 2**-10 of k + 0.5) are counted."""
    sweep_random_scales(engine, report, 15)


@pytest.mark.torch
@pytest.mark.parametrize("engine", ["onednn"], indirect=True)
def test_onednn_avx2_combined_scale_reproducer(engine):
    """One element where the scale order shows: x = [0, 9, 0, 113], w = [127, -128, 1, -1]
    (acc = -1265), s_x = 0.05, s_w = 0.02, s_out = 0.01, z_out = 128. PyTorch's oneDNN on AVX2
    (gemm:jit, one combined factor f32(s_in * s_w')) gives 1; applying the two scales one by one
    (brgemm, VNNI) would give 2."""
    x = np.array([[0, 9, 0, 113]], np.uint8)
    args = (QParams.per_tensor(0.05, 0, QUINT8), ACC_WEIGHTS[None],
            QParams.per_tensor(0.02, 0, QINT8), None, QParams.per_tensor(0.01, 128, QUINT8),
            False)
    check_vs_torch(engine, x, *args, context="combined-scale reproducer")


@pytest.mark.torch
@pytest.mark.parametrize("relu", [False, True])
def test_linear_accumulator_above_2_pow_24_vs_torch(engine, relu, report):
    """|acc| > 2**24, where f32(acc) rounds (ties to even): needs z_w != 0 or large K."""
    depth = 512
    allows_zw = allows_weight_zero_point(engine)
    rows = np.arange(64)
    # centered x = x - z_x = -255 (x=0, z_x=255) almost everywhere, a few entries varied
    x = np.zeros((len(rows), depth), np.uint8)
    x[:, 0] = rows * 3
    x[:, 1] = rows % 7
    z_x = 255
    if allows_zw:  # w - z_w = -255: terms of 65025, acc ~ 3.3e7 > 2**24
        w = np.full((3, depth), -128, np.int8)
        w[1, 5] = 0
        w[2, :2] = [-127, 3]
        w_qp = QParams.per_tensor(2**-9, 127, QINT8)
        s_x, s_out = 2**-9, 1.0
    else:  # z_w = 0: terms of 255*128 = 32640, acc ~ 1.67e7 just below 2**24, still rounds
        w = np.full((3, depth), -128, np.int8)
        w[1, 5] = 1
        w[2, :2] = [-127, 3]
        w_qp = QParams.per_tensor(2**-8, 0, QINT8)
        s_x, s_out = 2**-9, 2**-1
    x_qp = QParams.per_tensor(s_x, z_x, QUINT8)
    out_qp = QParams.per_tensor(s_out, 3, QUINT8)
    bias = np.array([0.0, 2**-18, -2**-17], np.float32)
    expected = check_vs_torch(engine, x, x_qp, w, w_qp, bias, out_qp, relu, context="acc>2**24")
    acc = x.astype(np.int64) - z_x
    acc = acc @ (w.astype(np.int64) - int(w_qp.zero_point)).T
    assert np.abs(acc).max() > 2**24 if allows_zw else np.abs(acc).max() > 2**23
    report[f"{engine} boundary"]["cases"] += 1
    report[f"{engine} boundary"]["elements"] += expected.size


# ---------------------------------------------------------------------------------------------
# int16 pair saturation (vpmaddubsw) on this machine's default ISA
# ---------------------------------------------------------------------------------------------

def adversarial_case(rng, rows, depth, channels):
    """x near 255, weights near +-128 with one sign per row: int16 pair sums overflow."""
    x = rng.integers(200, 256, size=(rows, depth)).astype(np.uint8)
    sign = np.where(np.arange(channels) % 2 == 0, 1, -1)[:, None]
    w = np.clip(sign * rng.integers(90, 129, size=(channels, depth)), -128, 127).astype(np.int8)
    return x, w


SATURATION_DEPTHS = [1, 2, 3, 4, 5, 64, 255, 256, 257, 258, 259, 260, 384, 511, 512]


def saturation_params():
    for depth in SATURATION_DEPTHS:
        for engine in ENGINE_NAMES:
            yield pytest.param(engine, depth, id=f"{engine}-K{depth}")


@pytest.mark.torch
@pytest.mark.parametrize("engine, depth", list(saturation_params()), indirect=["engine"])
def test_linear_adversarial_saturation_vs_torch(engine, depth, report):
    """On this machine's ISA, qexact (its default, ``detect_isa()``) equals PyTorch even where
    int16 pairs saturate; on avx2 the fbgemm/x86/onednn outputs do differ from the exact model."""
    rng = np.random.default_rng(depth)
    x, w = adversarial_case(rng, 16, depth, 8)
    per_channel_qp = QParams.per_channel(np.full(8, 2**-6), np.zeros(8, np.int64), 0, QINT8)
    z_w = 3 if allows_weight_zero_point(engine) else 0
    for w_qp, z_x in ((QParams.per_tensor(2**-6, z_w, QINT8), 0), (per_channel_qp, 250)):
        x_qp = QParams.per_tensor(2**-4, z_x, QUINT8)
        out_qp = QParams.per_tensor(float(depth) * 2, 128, QUINT8)
        bias = np.linspace(-3, 3, 8).astype(np.float32)
        expected = check_vs_torch(engine, x, x_qp, w, w_qp, bias, out_qp, False,
                                  context=f"adversarial K={depth}")
        report[f"{engine} saturation"]["cases"] += 1
        report[f"{engine} saturation"]["elements"] += expected.size
        params = qexact.prepare_linear(w, w_qp, bias, x_qp, out_qp, engine=engine)
        if params.pair_saturation and depth >= 2:
            exact = qexact.prepare_linear(w, w_qp, bias, x_qp, out_qp, engine=engine,
                                          isa="avx512_vnni")
            differs = qexact.linear(qexact.QuantizedArray(x, x_qp), exact).values != expected
            report[f"{engine} saturation"]["elements_exact_model_wrong"] += int(differs.sum())
            assert differs.any(), "adversarial case did not exercise saturation"


PAIR_PROBE_DEPTHS = [2, 3, 4, 5, 64, 255, 256, 257, 258, 259, 260, 262, 384, 511, 512]


def pair_probe_params():
    for depth in PAIR_PROBE_DEPTHS:
        for engine in ENGINE_NAMES:
            yield pytest.param(engine, depth, id=f"{engine}-K{depth}")


@pytest.mark.torch
@pytest.mark.parametrize("engine, depth", list(pair_probe_params()), indirect=["engine"])
def test_linear_pair_structure_probe_vs_torch(engine, depth, report):
    """Which adjacent (i, i+1) form a vpmaddubsw pair: channel i has w[i] = w[i+1] = 127 (else 0)
    and x = 255, so the channel's accumulator is 32767 if (i, i+1) is a saturating pair and
    64770 if not. Outputs: 64 vs 127 (M = 2**-9)."""
    channels = max(1, depth - 1)
    w = np.zeros((channels, depth), np.int8)
    for i in range(depth - 1):
        w[i, i:i + 2] = 127
    if depth == 1:
        w[0, 0] = 127
    x = np.full((2, depth), 255, np.uint8)
    x[1, ::3] = 0  # second row: some pairs broken up
    args = (QParams.per_tensor(2**-4, 0, QUINT8), w, QParams.per_tensor(2**-4, 0, QINT8), None,
            QParams.per_tensor(2.0, 0, QUINT8), False)
    expected = check_vs_torch(engine, x, *args, context=f"pair probe K={depth}")
    report[f"{engine} saturation"]["cases"] += 1
    report[f"{engine} saturation"]["elements"] += expected.size
    params = qexact.prepare_linear(w, args[2], None, args[0], args[4], engine=engine)
    if params.pair_saturation and depth > 1:  # channel i is 64 iff (i, i+1) is a pair
        pairs = {tuple(pair) for pair in params.pair_positions.tolist()}
        saturated = np.array([(i, i + 1) in pairs for i in range(depth - 1)])
        assert_bitexact(expected[0], np.where(saturated, 64, 127).astype(np.uint8), "pairs")


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
@given(seed=st.integers(0, 2**32 - 1), relu=st.booleans())
@settings(max_examples=25)
def test_linear_output_in_range(engine_name, seed, relu):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(5, 9)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(4, 9)).astype(np.int8)
    z_out = int(rng.integers(0, 256))
    out = qexact_linear(x, QParams.per_tensor(0.1, 7, QUINT8), w,
                        QParams.per_tensor(0.05, 0, QINT8), rng.standard_normal(4).astype(np.float32),
                        QParams.per_tensor(10.0 ** rng.uniform(-4, 1), z_out, QUINT8), relu,
                        engine_name)
    assert out.dtype == np.uint8 and out.shape == (5, 4)
    if relu:
        assert out.min() >= z_out


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_linear_pow2_multiplier_divides_exactly(engine_name):
    """M = 2**-k on an exact accumulator is an exact division, ties to even (z_out even)."""
    acc = ALL_ACCUMULATORS
    out = qexact_linear(SWEEP_X, QParams.per_tensor(2**-2, 0, QUINT8), ACC_WEIGHTS[None],
                        QParams.per_tensor(2**-3, 0, QINT8), None,
                        QParams.per_tensor(2**-3, 128, QUINT8), False, engine_name)
    expected = np.clip(np.rint(acc / 4.0) + 128, 0, 255).astype(np.uint8)[:, None]
    assert_bitexact(out, expected, engine_name)


@pytest.mark.parametrize("engine_name", ENGINE_NAMES)
def test_linear_multiplier_one_is_identity(engine_name):
    acc = np.arange(-128, 128)
    out = qexact_linear(activations_for(acc), QParams.per_tensor(0.5, 0, QUINT8),
                        ACC_WEIGHTS[None], QParams.per_tensor(0.25, 0, QINT8), None,
                        QParams.per_tensor(0.125, 128, QUINT8), False, engine_name)
    assert_bitexact(out, (acc + 128).astype(np.uint8)[:, None], engine_name)


@pytest.mark.parametrize("isa", ["avx2", "avx512_vnni"])
def test_linear_rank3_equals_rank2(isa):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(3, 5, 33)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(7, 33)).astype(np.int8)
    args = (QParams.per_tensor(0.02, 9, QUINT8), w, QParams.per_tensor(0.01, 0, QINT8), None,
            QParams.per_tensor(0.3, 100, QUINT8), False, "fbgemm", isa)
    flat = qexact_linear(x.reshape(15, 33), *args)
    assert_bitexact(qexact_linear(x, *args), flat.reshape(3, 5, 7), "rank 3")


@pytest.mark.torch
@pytest.mark.parametrize("relu", [False, True])
def test_linear_on_a_vector_as_torch(engine, relu):
    """A 1-D input: oneDNN's Linear takes it as one row (output 1-D); FBGEMM and QNNPACK refuse
    it, and so does qexact, naming the kernel."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(40,)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(9, 40)).astype(np.int8)
    bias = rng.standard_normal(9).astype(np.float32)
    args = (QParams.per_tensor(0.02, 9, QUINT8), w, QParams.per_tensor(0.01, 0, QINT8), bias,
            QParams.per_tensor(0.3, 100, QUINT8), relu)
    try:
        expected = torch_linear(x, *args)
    except RuntimeError as error:
        assert "dimension" in str(error) or "rank" in str(error)
        with pytest.raises(ShapeError, match="rank >= 2"):
            qexact_linear(x, *args, engine)
        return
    assert engine == "onednn" and expected.shape == (9,)
    for isa in ("avx512_vnni", "avx2"):
        actual = qexact_linear(x, *args, engine, isa=isa)
        assert_bitexact(actual, qexact_linear(x[None], *args, engine, isa=isa)[0], isa)
        if isa == qexact.detect_isa():
            assert_bitexact(actual, expected, f"onednn vector input on {isa}")


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

W = np.zeros((3, 4), np.int8)
IN = QParams.per_tensor(0.1, 0, QUINT8)
OUT = QParams.per_tensor(0.1, 0, QUINT8)


def test_onednn_refuses_weight_zero_point():
    with pytest.raises(QuantParamError, match="symmetric"):
        qexact.prepare_linear(W, QParams.per_tensor(0.1, 1, QINT8), None, IN, OUT, engine="onednn")
    with pytest.raises(QuantParamError, match="symmetric"):
        qexact.prepare_linear(W, QParams.per_channel([0.1] * 3, [0, 0, 2], 0, QINT8), None, IN,
                              OUT, engine="onednn")


@pytest.mark.torch
def test_torch_onednn_refuses_weight_zero_point_too():
    torch = pytest.importorskip("torch")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"
    try:
        with pytest.raises(RuntimeError):
            torch_linear(np.zeros((1, 4), np.uint8), IN, W, QParams.per_tensor(0.1, 1, QINT8),
                         None, OUT, False)
    finally:
        torch.backends.quantized.engine = previous


def test_linear_validation_errors():
    wq = QParams.per_tensor(0.1, 0, QINT8)
    with pytest.raises(TypeError, match="engine"):  # no default engine: it must be named
        qexact.prepare_linear(W, wq, None, IN, OUT)
    with pytest.raises(ShapeError, match="2-D int8"):
        qexact.prepare_linear(W.astype(np.int16), wq, None, IN, OUT, engine="fbgemm")
    with pytest.raises(QuantParamError, match="qint8"):
        qexact.prepare_linear(W, QParams.per_tensor(0.1, 0, QUINT8), None, IN, OUT, engine="fbgemm")
    with pytest.raises(QuantParamError, match="axis 0"):
        qexact.prepare_linear(W, QParams.per_channel([0.1] * 4, [0] * 4, 1, QINT8), None, IN, OUT,
                              engine="fbgemm")
    with pytest.raises(QuantParamError, match="quint8"):
        qexact.prepare_linear(W, wq, None, QParams.per_tensor(0.1, 0, QINT8), OUT, engine="fbgemm")
    with pytest.raises(ShapeError, match="bias"):
        qexact.prepare_linear(W, wq, np.zeros(3, np.float64), IN, OUT, engine="fbgemm")
    params = qexact.prepare_linear(W, wq, None, IN, OUT, engine="fbgemm")
    with pytest.raises(ShapeError, match="rank >= 2"):
        qexact.linear(qexact.QuantizedArray(np.zeros(4, np.uint8), IN), params)
    with pytest.raises(QuantParamError, match="prepare it again"):
        qexact.linear(qexact.QuantizedArray(np.zeros((1, 4), np.uint8),
                                            QParams.per_tensor(0.2, 0, QUINT8)), params)
