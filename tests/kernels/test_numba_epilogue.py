"""The compiled epilogue (qexact.kernels._numba_epilogue) equals ``requantize`` bit for bit.

(a) every engine's real Linear/Conv epilogues (through ``prepare_linear``/``prepare_conv`` and the
dynamic Linear's requantizations), on random accumulators and adversarial ones: int32 extremes,
0, values whose float32 value lands on a .5 tie before rounding, values that saturate the
output or overflow to infinity; (b) each ``Step`` alone, fed float32 values of every magnitude,
infinities, NaN and signed zeros (``acc * 2**e`` per channel), or int64 extremes.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, settings, strategies as st  # noqa: E402

from qexact import requantize as rq  # noqa: E402
from qexact.dtypes import QINT8, QUINT8  # noqa: E402
from qexact.engines import ENGINES, get_engine  # noqa: E402
from qexact.engines import dynamic_eager, xnnpack  # noqa: E402
from qexact.engines.onednn import LeakyReLUFloat32, TanhFloat32  # noqa: E402
from qexact.errors import QexactError  # noqa: E402
from qexact.kernels import fast_available  # noqa: E402
from qexact.ops.conv import prepare_conv  # noqa: E402
from qexact.ops.linear import prepare_linear  # noqa: E402
from qexact.qparams import QParams  # noqa: E402
from qexact.rounding import fma_float32  # noqa: E402

if not fast_available():
    pytest.skip("the fast backend is not available here", allow_module_level=True)

from qexact.kernels._numba_epilogue import (  # noqa: E402
    INT_TAIL_U8, X86_U8, compile_epilogue, fmaf)

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
ISAS = ("avx512_vnni", "avx2")
COMPARED = {"elements": 0, "ties": 0}


def bits(values: np.ndarray) -> np.ndarray:
    """The values' bit patterns (floats compared exactly, NaN payload included)."""
    values = np.ascontiguousarray(values)
    return values.view(f"u{values.dtype.itemsize}")


def assert_same(steps, acc, out_dtype, operands=None, bound=None):
    """``compile_epilogue(steps).run`` equals ``requantize`` on ``acc`` (int32), bit for bit.
    ``operands``: the run-time operands, also bound to the reference's steps (``bound``: the
    bound steps, when the test binds them itself)."""
    epilogue = compile_epilogue(steps, acc.shape[1], out_dtype)
    assert epilogue is not None, [type(step).__name__ for step in steps]
    reference_steps = bound if bound is not None else steps
    with np.errstate(divide="ignore"):  # a DivideFloat32 by a zero divisor: inf, as modelled
        expected = rq.requantize(acc.astype(np.int64), reference_steps, out_dtype)
    got = epilogue.run(acc, operands=operands)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    differ = bits(got) != bits(expected)
    if differ.any():
        row, column = np.argwhere(differ)[0]
        raise AssertionError(
            f"{int(differ.sum())} of {differ.size} differ; first at acc[{row}, {column}] = "
            f"{acc[row, column]}: got {got[row, column]!r}, requantize {expected[row, column]!r}; "
            f"steps {[type(step).__name__ for step in steps]}")
    COMPARED["elements"] += differ.size
    return got


# --- accumulators -------------------------------------------------------------------------

EXTREMES = np.array([0, 1, -1, 2, -2, 127, -128, 255, 256, (1 << 24) - 1, 1 << 24, (1 << 24) + 1,
                     -(1 << 24) - 1, (1 << 30), -(1 << 30), INT32_MAX, INT32_MIN, INT32_MAX - 1,
                     INT32_MIN + 1, 16777217, 33554431, 2147483520, -2147483520], np.int64)


def tie_rows(steps, channels: int, rng, count: int = 16) -> np.ndarray:
    """Accumulators whose float32 value just before the first rounding step is k + 0.5 (per
    column, searched among small and medium integers); (count, channels) int32."""
    at = next((i for i, step in enumerate(steps) if type(step).__name__.startswith("RoundHalf")),
              None)
    if at is None or at == 0:
        return np.zeros((0, channels), np.int32)
    candidates = np.concatenate([
        np.arange(-4096, 4096, dtype=np.int64)[:, None].repeat(channels, 1),
        rng.integers(-(1 << 20), 1 << 20, (4096, channels))])
    prefix = rq.bind_operand(steps[:at], "sum", np.zeros(1, np.uint8))  # residuals: none
    with np.errstate(all="ignore"):
        before = rq.trace_requantize(candidates, prefix)[-1][1]
    before = np.asarray(before, np.float64)
    with np.errstate(invalid="ignore"):
        tie = np.abs(before - np.floor(before) - 0.5) == 0
    rows = np.zeros((count, channels), np.int32)
    for column in range(channels):
        where = np.flatnonzero(tie[:, column])
        if where.size:
            rows[:, column] = candidates[rng.choice(where, count), column]
            COMPARED["ties"] += count
    return rows


def accumulators(steps, channels: int, rng, random_rows: int = 48) -> np.ndarray:
    """Random (small, medium and full int32 range), extreme and tie accumulators."""
    parts = [
        rng.integers(-300, 300, (random_rows, channels)),
        rng.integers(-(1 << 18), 1 << 18, (random_rows, channels)),
        rng.integers(INT32_MIN, INT32_MAX, (random_rows // 2, channels), endpoint=True),
        np.repeat(EXTREMES[:, None], channels, 1),
        tie_rows(steps, channels, rng),
    ]
    return np.concatenate(parts).astype(np.int32)


# --- (a) the engines' epilogues --------------------------------------------------------------

def layer_qparams(engine, channels: int, per_channel: bool, dyadic: bool, rng,
                  float_output: bool):
    """Input, weight and output qparams: random scales, or powers of two (ties frequent)."""
    dtype = engine.activation_dtypes[0]
    zero = (lambda: int(rng.integers(0, 256))) if dtype == QUINT8 else (
        lambda: int(rng.integers(-128, 128)))
    if dyadic:
        input_scale, output_scale = 2.0 ** -int(rng.integers(2, 6)), 2.0 ** -int(rng.integers(0, 3))
        weight_scales = 2.0 ** -rng.integers(3, 8, channels).astype(np.float64)
    else:
        input_scale, output_scale = rng.uniform(0.002, 0.05), rng.uniform(0.01, 0.2)
        weight_scales = rng.uniform(1e-3, 3e-2, channels)
    if per_channel:
        weight = QParams.per_channel(weight_scales, np.zeros(channels, np.int64), 0, QINT8)
    else:
        weight = QParams.per_tensor(weight_scales[0], 0, QINT8)
    output = None if float_output else QParams.per_tensor(output_scale, zero(), dtype)
    return QParams.per_tensor(input_scale, zero(), dtype), weight, output


def engine_epilogues(name: str, isa: str, rng):
    """(label, steps, out_dtype, operand) for this engine's Linear and Conv layers over the
    options: per-tensor/per-channel weights, bias, relu, random/dyadic scales, float output,
    residuals."""
    engine = get_engine(name, isa)
    channels = 24
    found = []
    for per_channel in (False, True):
        for has_bias in (False, True):
            for relu in (False, True):
                for dyadic in (False, True):
                    for float_output in ((False, True) if engine.float_output else (False,)):
                        x_q, w_q, out_q = layer_qparams(engine, channels, per_channel, dyadic,
                                                        rng, float_output)
                        bias = (rng.normal(0, 2, channels).astype(np.float32) if has_bias
                                else None)
                        if dyadic and has_bias:
                            bias = np.round(bias * 64).astype(np.float32) / np.float32(64)
                        found += _layers(engine, channels, w_q, bias, x_q, out_q, relu, rng)
    return found


def _layers(engine, channels, w_q, bias, x_q, out_q, relu, rng):
    weight = rng.integers(-128, 128, (channels, 8)).astype(np.int8)
    conv_weight = rng.integers(-128, 128, (channels, 4, 3, 3)).astype(np.int8)
    out_dtype = np.dtype(np.float32) if out_q is None else out_q.dtype.numpy_dtype
    layers = []
    attempts = [("linear", lambda: prepare_linear(weight, w_q, bias, x_q, out_q, relu=relu,
                                                  engine=engine), None),
                ("linear + float residual",
                 lambda: prepare_linear(weight, w_q, bias, x_q, out_q, relu=relu, engine=engine,
                                        float_residual=True), "float"),
                ("conv", lambda: prepare_conv(conv_weight, w_q, bias, x_q, out_q, padding=1,
                                              relu=relu, engine=engine), None),
                ("conv + hardtanh", lambda: prepare_conv(conv_weight, w_q, bias, x_q, out_q,
                                                         padding=1, engine=engine,
                                                         clamp=(-1.0, 3.5)), None),
                ("conv + residual", lambda: prepare_conv(conv_weight, w_q, bias, x_q, out_q,
                                                         padding=1, relu=relu, engine=engine,
                                                         residual_qparams=x_q), "quantized")]
    for label, prepare, operand in attempts:
        try:
            params = prepare()
        except QexactError:
            continue  # the engine refuses this layer, as PyTorch does
        layers.append((label, params.requantization, out_dtype, operand))
    return layers


def operand_for(kind, rows: int, channels: int, rng, dtype=np.uint8):
    if kind == "float":
        values = rng.normal(0, 30, (rows, channels)).astype(np.float32)
        values.reshape(-1)[:6] = [0.0, -0.0, 0.5, -2.5, 1e30, -1e-30]
        return values
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, (rows, channels), endpoint=True).astype(dtype)
    values.reshape(-1)[:2] = [info.min, info.max]
    return values


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_epilogues(name, isa):
    rng = np.random.default_rng(sorted(ENGINES).index(name) * 2 + ISAS.index(isa))
    try:
        epilogues = engine_epilogues(name, isa, rng)
    except QexactError as refused:  # an engine not modelled on this ISA
        pytest.skip(str(refused))
    assert epilogues, name
    for label, steps, out_dtype, operand_kind in epilogues:
        acc = accumulators(steps, 24, rng)
        if operand_kind is None:
            assert_same(steps, acc, out_dtype)
            continue
        operand = operand_for(operand_kind, acc.shape[0], acc.shape[1], rng,
                              np.dtype(np.float32) if operand_kind == "float" else np.uint8)
        bound = rq.bind_operand(steps, "sum", operand)
        assert_same(steps, acc, out_dtype, operands=[operand], bound=bound)
        assert_same(bound, acc, out_dtype)  # compiled with the operand bound


def test_saturation_and_overflow_reach_every_path():
    """Huge multipliers: float32 overflow to inf, cvtps2dq's INT32_MIN, saturation both ways."""
    engine = get_engine("fbgemm", "avx512_vnni")
    rng = np.random.default_rng(5)
    x_q = QParams.per_tensor(1e20, 0, QUINT8)
    w_q = QParams.per_channel(np.array([1e18, 1e-3, 1e-30, 1e10]), np.zeros(4, np.int64), 0, QINT8)
    out_q = QParams.per_tensor(1e-10, 128, QUINT8)
    for bias in (None, np.array([1e30, -3.0, 0.0, -1e35], np.float32)):
        with np.errstate(over="ignore"):  # f32(s_x * s_w) is inf for channel 0
            params = prepare_linear(rng.integers(-128, 128, (4, 8)).astype(np.int8), w_q, bias,
                                    x_q, out_q, engine=engine)
        acc = accumulators(params.requantization, 4, rng)
        got = assert_same(params.requantization, acc, np.uint8)
        assert {0, 255} <= set(np.unique(got).tolist())


def dynamic_epilogues(rng, channels: int):
    """The dynamic Linear's requantizations (per-row input scale bound per call)."""
    per_tensor = QParams.per_tensor(0.011, 0, QINT8)
    per_channel = QParams.per_channel(rng.uniform(1e-3, 3e-2, channels),
                                      np.zeros(channels, np.int64), 0, QINT8)
    makers = [dynamic_eager.fbgemm_requantization, dynamic_eager.qnnpack_requantization,
              dynamic_eager.onednn_requantization, xnnpack.qd8_requantization,
              lambda w, b, r: dynamic_eager.onednn_requantization(w, b, r, combined_scales=True)]
    for make in makers:
        for weight in (per_tensor, per_channel):
            for bias in (None, rng.normal(0, 1, channels).astype(np.float32)):
                for relu in (False, True):
                    yield make(weight, bias, relu).steps


def test_dynamic_linear_epilogues():
    rng = np.random.default_rng(7)
    channels = 12
    for steps in dynamic_epilogues(rng, channels):
        acc = accumulators(steps, channels, rng, random_rows=16)
        row_scale = rng.uniform(1e-4, 0.1, (acc.shape[0], 1)).astype(np.float32)
        bound = rq.bind_operand(steps, "input_scale", row_scale)
        assert_same(steps, acc, np.float32, operands=[row_scale], bound=bound)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(name=st.sampled_from(list(ENGINES)), isa=st.sampled_from(ISAS),
       per_channel=st.booleans(), has_bias=st.booleans(), relu=st.booleans(),
       channels=st.integers(1, 70), rows=st.integers(1, 300),
       seed=st.integers(0, 2 ** 32 - 1))
def test_random_layers(name, isa, per_channel, has_bias, relu, channels, rows, seed):
    """Random engines, shapes (N = 1, M = 1, N past a block's width) and accumulators."""
    rng = np.random.default_rng(seed)
    try:
        engine = get_engine(name, isa)
    except QexactError:
        return
    x_q, w_q, out_q = layer_qparams(engine, channels, per_channel, bool(seed & 1), rng, False)
    bias = rng.normal(0, 3, channels).astype(np.float32) if has_bias else None
    try:
        params = prepare_linear(rng.integers(-128, 128, (channels, 5)).astype(np.int8), w_q,
                                bias, x_q, out_q, relu=relu, engine=engine)
    except QexactError:
        return
    scale = int(rng.integers(4, 32))
    acc = rng.integers(-(1 << scale), 1 << scale, (rows, channels)).astype(np.int32)
    assert_same(params.requantization, acc, out_q.dtype.numpy_dtype)


# --- (b) each step alone ---------------------------------------------------------------------

EXPONENTS = np.array([-150, -149, -140, -127, -126, -100, -60, -30, -24, -23, -12, -2, -1, 0, 1,
                      3, 10, 20, 40, 80, 100, 104, 110, 127], np.int64)
FEED_FACTORS = np.concatenate([
    np.ldexp(np.float32(1), EXPONENTS).astype(np.float32),
    -np.ldexp(np.float32(1), EXPONENTS[::3]).astype(np.float32),
    np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 0.5, -0.5, 1.5, 0.1], np.float32)])
CHANNELS = FEED_FACTORS.size


def float_feed() -> list:
    """Steps giving float32 ``f32(acc) * factor[c]``: every magnitude, subnormals, ties (odd
    accumulators times 0.5), infinities, NaN (0 * inf) and signed zeros."""
    return [rq.ToFloat32("feed"), rq.MultiplyFloat32("feed", factor=FEED_FACTORS)]


def edge_acc(rows: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts = [np.repeat(EXTREMES[:, None], CHANNELS, 1),
             rng.integers(-(1 << 24), 1 << 24, (rows, CHANNELS)),
             rng.integers(-9, 9, (rows, CHANNELS)),
             rng.integers(INT32_MIN, INT32_MAX, (rows // 2, CHANNELS), endpoint=True)]
    return np.concatenate(parts).astype(np.int32)


def channel_constants(seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 4, CHANNELS) * np.exp2(rng.integers(-30, 30, CHANNELS))
    values[:8] = [0.0, -0.0, np.inf, -np.inf, 1.0, -1.0, 0.5, 3e38]
    return values.astype(dtype)


FLOAT_STEPS = [
    rq.AddFloat32("", term=channel_constants(1)),
    rq.AddFloat32("", term=channel_constants(2, np.float64)),
    rq.AddFloat32("", term=np.float32(-3.5)),
    rq.AddFloat32("", term=np.arange(CHANNELS, dtype=np.int64) - 20),
    rq.MultiplyFloat32("", factor=channel_constants(3)),
    rq.MultiplyFloat32("", factor=channel_constants(4, np.float64)),
    rq.MultiplyFloat32("", factor=0.1),
    rq.DivideFloat32("", divisor=channel_constants(5)),
    rq.DivideFloat32("", divisor=channel_constants(6, np.float64)),
    rq.FusedMultiplyAdd("", a=channel_constants(7), b=channel_constants(8)),
    rq.FusedMultiplyAdd("", a=channel_constants(9, np.float64), b=np.float32(1 / 3)),
    rq.MultiplyAddFloat32("", factor=channel_constants(10), term=channel_constants(11)),
    rq.MultiplyAddFloat32("", factor=channel_constants(12), term=channel_constants(13),
                          fused=False),
    rq.MultiplyAddFloat32("", factor=channel_constants(14, np.float64),
                          term=channel_constants(15, np.float64), fused=False),
    rq.ClampFloat32("", low=0.0),
    rq.ClampFloat32("", low=-0.0, high=0.0),
    rq.ClampFloat32("", low=-3.5, high=6.0),
    rq.ClampFloat32("", high=-1e-40),
    rq.ClampFloat32("", low=float("nan")),
    rq.ClampFloat32("", low=0.1, high=float("nan")),
    rq.MinFloat32("", high=2147483520.0),
    rq.MinFloat32("", high=-0.0),
    rq.MinFloat32("", high=float("nan")),
    LeakyReLUFloat32("", alpha=0.01),
    LeakyReLUFloat32("", alpha=-3.0),
    rq.MultiplyFloat64("", factor=channel_constants(16, np.float64)),
    rq.ScaleToFloat32("", factor=channel_constants(17, np.float64)),
    rq.ToFloat32(""),
]

ROUNDING_STEPS = [rq.RoundHalfEvenToInt32(""), rq.RoundHalfEvenToInt64(""),
                  rq.RoundHalfEvenToInt64("", nan=-7), rq.RoundHalfEvenLrint("")]


@pytest.mark.parametrize("step", FLOAT_STEPS, ids=lambda step: type(step).__name__)
def test_float_step_alone(step):
    steps = float_feed() + [step]
    assert_same(steps, edge_acc(), np.float32)
    assert_same(steps, edge_acc(8, seed=1), np.float64)


@pytest.mark.parametrize("out_dtype", [np.int64, np.int32, np.uint8, np.int8, np.int16,
                                       np.uint32, np.float32, np.float64])
@pytest.mark.parametrize("step", ROUNDING_STEPS, ids=lambda step: type(step).__name__)
def test_rounding_step_alone(step, out_dtype):
    assert_same(float_feed() + [step], edge_acc(), out_dtype)


def int_feeds():
    """Integer values: the int32 accumulator, and int64 values past int32 (wrapping products)."""
    return [[], [rq.MultiplyInt("", factor=(1 << 32) + 12345)],
            [rq.MultiplyInt("", factor=-(1 << 40) - 1), rq.AddInt("", term=(1 << 62))]]


INT_STEPS = [
    rq.AddInt32("", term=np.resize(np.array([0, 1, -1, INT32_MAX, INT32_MIN, 1 << 40], np.int64),
                                   CHANNELS)),
    rq.AddInt32("", term=np.int64(77)),
    rq.AddInt("", term=INT32_MAX), rq.AddInt("", term=-(1 << 63)),
    rq.ClampInt("", low=0, high=255), rq.ClampInt("", low=-128, high=127),
    rq.ClampInt("", low=10, high=-10),
    rq.MultiplyInt("", factor=3), rq.MultiplyInt("", factor=-(1 << 33) + 7),
    *[rq.RoundingShiftRightInt32("", shift=shift, count_modulo_32=modulo)
      for shift in (0, 1, 7, 31, 32, 33, 40, 63, 64, 70) for modulo in (False, True)],
    rq.ToFloat32(""),
    rq.ScaleToFloat32("", factor=channel_constants(18, np.float64)),
]


@pytest.mark.parametrize("feed", [0, 1, 2])
@pytest.mark.parametrize("step", INT_STEPS, ids=lambda step: type(step).__name__)
def test_int_step_alone(step, feed):
    steps = int_feeds()[feed] + [step]
    out = np.float32 if type(step) in (rq.ToFloat32, rq.ScaleToFloat32) else np.int64
    assert_same(steps, edge_acc(16), out)


@pytest.mark.parametrize("out_dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32,
                                       np.uint32, np.int64, np.uint64, np.float32, np.float64])
def test_integer_stores(out_dtype):
    """``astype`` from int64: the low bytes, or one rounding to float."""
    assert_same(int_feeds()[1], edge_acc(16), out_dtype)
    assert_same([], edge_acc(16), out_dtype)


def operand_steps():
    return [
        (rq.AddOperandFloat32("", role="sum"), "float"),
        (rq.MultiplyOperandFloat32("", role="sum"), "float"),
        (rq.AddResidualFloat32("", role="sum", zero_point=3, scale=0.0625, fused=True), "u8"),
        (rq.AddResidualFloat32("", role="sum", zero_point=-128, scale=0.3, fused=False), "u8"),
        (dynamic_eager.ScaledMultiplyAddFloat32("", role="sum", factor=channel_constants(20),
                                                term=channel_constants(21), fused=True), "float"),
        (dynamic_eager.ScaledMultiplyAddFloat32("", role="sum", factor=channel_constants(22),
                                                term=channel_constants(23), fused=False), "float"),
    ]


@pytest.mark.parametrize("index", range(6))
def test_operand_step_alone(index):
    """Operands of every broadcasting shape: full, per row, per channel, one value."""
    step, kind = operand_steps()[index]
    rng = np.random.default_rng(index)
    acc = edge_acc(16)
    rows = acc.shape[0]
    if kind == "u8":
        shapes = [operand_for("quantized", rows, CHANNELS, rng)]
        shapes += [shapes[0][:, :1], shapes[0][:1, :].reshape(-1)]
    else:
        full = operand_for("float", rows, CHANNELS, rng)
        full.reshape(-1)[6:10] = [np.inf, np.nan, -np.inf, 2.0 ** -140]
        shapes = [full, full[:, :1], full[0], np.float32(0.1), full.T.copy().T]
    for operand in shapes:
        steps = float_feed() + [step]
        bound = rq.bind_operand(steps, "sum", operand)
        assert_same(steps, acc, np.float32, operands=[operand], bound=bound)


def test_operand_in_float64_computes_in_float64():
    """``f32(v + r)`` with a float64 ``r`` is one float64 add then one rounding."""
    rng = np.random.default_rng(3)
    acc = edge_acc(16)
    operand = rng.normal(0, 1e3, (acc.shape[0], 1))
    for step in (rq.AddOperandFloat32("", role="sum"), rq.MultiplyOperandFloat32("", role="sum")):
        steps = float_feed() + [step]
        bound = rq.bind_operand(steps, "sum", operand)
        assert_same(steps, acc, np.float32, operands=[operand], bound=bound)


def test_fmaf_is_fma_float32():
    """``llvm.fma.f32`` against the round-to-odd emulation, on cancellations and ties."""
    rng = np.random.default_rng(11)
    count = 3000
    a = rng.standard_normal(count).astype(np.float32) * np.exp2(rng.integers(-20, 20, count))
    b = rng.standard_normal(count).astype(np.float32)
    a, b = a.astype(np.float32), b.astype(np.float32)
    product = (a.astype(np.float64) * b.astype(np.float64))
    near = (-product * (1 + rng.choice([-1, 1], count) * np.exp2(-rng.integers(10, 30, count))))
    c = np.concatenate([near.astype(np.float32), rng.standard_normal(count).astype(np.float32)])
    a, b = np.concatenate([a, a]), np.concatenate([b, b])
    # ties: a * b = 1 + 2**-11 + 2**-24 exactly, c = -2**-11: the exact sum is halfway
    a[:2] = b[:2] = np.float32(1 + 2 ** -12)
    c[:2] = [np.float32(-2 ** -11), np.float32(2 ** -11)]
    expected = fma_float32(a, b, c)
    got = np.array([fmaf(x, y, z) for x, y, z in zip(a, b, c)], np.float32)
    assert np.array_equal(bits(got), bits(expected))
    unfused = (a * b + c).astype(np.float32)
    assert np.count_nonzero(unfused != expected) > 10  # the cases tell a fused op apart


def test_fused_and_unfused_multiply_add_differ_where_they_should():
    """The non-fused step is not contracted into an FMA (no fastmath, no fp-contract)."""
    factor = np.float32(1 + 2 ** -12)
    acc = np.full((4, 2), 4097, np.int32)  # f32(4097) * factor: the product needs 25 bits
    term = np.float32(-4097.0)
    fused = [rq.ToFloat32(""), rq.MultiplyAddFloat32("", factor=factor, term=term)]
    unfused = [rq.ToFloat32(""), rq.MultiplyAddFloat32("", factor=factor, term=term,
                                                        fused=False)]
    assert not np.array_equal(assert_same(fused, acc, np.float32),
                              assert_same(unfused, acc, np.float32))


def test_unsupported_steps_give_none():
    assert compile_epilogue([rq.ToFloat32(""), TanhFloat32("")], 4, np.float32) is None
    assert compile_epilogue([rq.ToFloat32("")], 4, np.uint8) is None  # float to int: a C cast
    assert compile_epilogue([rq.AddFloat32("", term=np.ones(4, np.float32))], 4,
                            np.float32) is None  # a float step on the integer accumulator
    assert compile_epilogue([rq.ToFloat32(""), rq.AddInt("", term=1)], 4, np.float32) is None
    assert compile_epilogue([rq.ToFloat32(""), rq.AddFloat32("", term=np.ones(3, np.float32))],
                            4, np.float32) is None  # a constant that is not per channel


def test_empty_and_out_argument():
    steps = float_feed()[:1] + [rq.RoundHalfEvenToInt32(""), rq.AddInt("", term=3),
                                rq.ClampInt("", low=0, high=255)]
    epilogue = compile_epilogue(steps, 5, np.uint8)
    assert epilogue.run(np.zeros((0, 5), np.int32)).shape == (0, 5)
    out = np.empty((3, 5), np.uint8)
    acc = np.arange(15, dtype=np.int32).reshape(3, 5) * 50
    assert epilogue.run(acc, out=out) is out
    assert np.array_equal(out, rq.requantize(acc.astype(np.int64), steps, np.uint8))


# --- (c) the whole-program kernels (X86_U8, INT_TAIL_U8) -------------------------------------

def whole_kind(steps, channels: int, out_dtype=np.uint8) -> int:
    return int(compile_epilogue(steps, channels, out_dtype).program[0, 0])


@pytest.mark.parametrize("channels,rows", [(1, 300), (3, 97), (16, 300), (24, 41), (70, 33),
                                           (130, 20), (300, 9)])
@pytest.mark.parametrize("name,kind", [("x86", X86_U8), ("onednn", X86_U8),
                                       ("fbgemm", INT_TAIL_U8), ("qnnpack", INT_TAIL_U8)])
def test_engine_conv_epilogues_take_the_whole_program_kernels(name, kind, channels, rows):
    """The engines' conv epilogues (per-tensor and per-channel, bias or not, relu or not) run
    as one whole-program kernel, equal to ``requantize`` on random, extreme and tie
    accumulators; ``rows`` not a multiple of the kernels' row groups."""
    rng = np.random.default_rng(channels * 7 + rows)
    engine = get_engine(name, "avx512_vnni")
    weight = rng.integers(-128, 128, (channels, 2, 1, 1)).astype(np.int8)
    for per_channel in (False, True):
        for has_bias in (False, True):
            for relu in (False, True):
                x_q, w_q, out_q = layer_qparams(engine, channels, per_channel,
                                                bool(rng.integers(2)), rng, False)
                bias = rng.normal(0, 3, channels).astype(np.float32) if has_bias else None
                try:
                    params = prepare_conv(weight, w_q, bias, x_q, out_q, relu=relu,
                                          engine=engine)
                except QexactError:
                    continue
                steps = params.requantization
                out_dtype = out_q.dtype.numpy_dtype
                assert whole_kind(steps, channels, out_dtype) == kind, \
                    [type(step).__name__ for step in steps]
                acc = np.concatenate([accumulators(steps, channels, rng),
                                      rng.integers(-(1 << 16), 1 << 16, (rows, channels))])
                assert_same(steps, acc.astype(np.int32), out_dtype)


def x86_steps(m1, m2, bias, relu, m3, zp, low=0.0, high=255.0):
    steps = [rq.ToFloat32(""), rq.MultiplyFloat32("", factor=m1),
             rq.MultiplyFloat32("", factor=m2)]
    if bias is not None:
        steps.append(rq.AddFloat32("", term=bias))
    if relu is not None:
        steps.append(rq.ClampFloat32("", low=relu))
    return steps + [rq.MultiplyFloat32("", factor=m3), rq.AddFloat32("", term=zp),
                    rq.ClampFloat32("", low=low, high=high), rq.RoundHalfEvenToInt32("")]


def int_tail_steps(head, pre, m, term=3, low=0, high=255):
    steps = [rq.ToFloat32("")] if head is None else [rq.AddInt32("", term=head),
                                                      rq.ToFloat32("")]
    if pre is not None:
        steps.append(pre)
    return steps + [rq.MultiplyFloat32("", factor=m), rq.RoundHalfEvenToInt32(""),
                    rq.AddInt("", term=term), rq.ClampInt("", low=low, high=high)]


def test_whole_program_kernels_on_nan_inf_and_signed_zero_constants():
    """Constants giving NaN (0 * inf), infinities, signed zeros, subnormals and ties (0.5
    factors on odd accumulators), per channel and per tensor, fed int32 extremes."""
    acc = edge_acc(48, seed=5)
    c = [channel_constants(seed) for seed in range(20, 30)]
    half = np.float32(0.5)
    cases = [
        (x86_steps(c[0], c[1], c[2], 0.0, c[3], c[4]), X86_U8),
        (x86_steps(c[0], half, None, -0.0, c[3], np.float32(0.5)), X86_U8),
        (x86_steps(FEED_FACTORS, c[1], c[2], None, half, c[4], -0.0, 0.0), X86_U8),
        (x86_steps(c[5], c[6], None, None, c[7], c[8], -128.0, 127.0), X86_U8),
        (x86_steps(half, half, np.float32(-0.5), 3.5, half, np.float32(0.0), 5.0, 2.0), X86_U8),
        (x86_steps(c[0], c[1], c[2], float("nan"), c[3], c[4]), None),  # NaN bound: generic
        (int_tail_steps(None, None, c[0]), INT_TAIL_U8),
        (int_tail_steps(None, None, half, term=-7, low=-128, high=127), INT_TAIL_U8),
        (int_tail_steps(None, rq.FusedMultiplyAdd("", a=c[1], b=c[2]), c[3]), INT_TAIL_U8),
        (int_tail_steps(None, rq.FusedMultiplyAdd("", a=half, b=c[9]), half, term=255,
                        low=300, high=-5), INT_TAIL_U8),  # low > high: clip gives high
        (int_tail_steps(None, rq.AddFloat32("", term=c[4]), c[5]), INT_TAIL_U8),
        (int_tail_steps(np.full(CHANNELS, INT32_MAX, np.int32), None, c[6]), INT_TAIL_U8),
        (int_tail_steps((np.arange(CHANNELS) * 997_000_003 % (1 << 32) - (1 << 31)).astype(
            np.int64), rq.AddFloat32("", term=c[7]), c[8], term=INT32_MAX, low=INT32_MIN,
            high=INT32_MAX), None),  # low - term outside int32: the generic program
        (int_tail_steps(np.arange(CHANNELS, dtype=np.int64) * 65_537 - (1 << 31),
                        rq.AddFloat32("", term=c[7]), c[8], term=-100, low=-128, high=127),
         INT_TAIL_U8),
        (int_tail_steps(None, None, c[0], term=-(1 << 31), low=0, high=255), None),
        (int_tail_steps(None, None, c[0], term=1 << 40, low=0, high=255), None),
    ]
    for steps, kind in cases:
        got_kind = whole_kind(steps, CHANNELS)
        if kind is not None:
            assert got_kind == kind, [type(step).__name__ for step in steps]
        else:
            assert got_kind not in (X86_U8, INT_TAIL_U8)
        assert_same(steps, acc, np.uint8)
        assert_same(steps, acc, np.int8)


def test_whole_program_kernels_on_int64_accumulators():
    """An int64 accumulator (``Epilogue.run`` takes one): f32 of any int64, and the int32
    bias wrapping modulo 2**32 of the int64 sum."""
    rng = np.random.default_rng(11)
    channels = 9
    acc = np.concatenate([rng.integers(-(1 << 62), 1 << 62, (40, channels)),
                          rng.integers(-(1 << 33), 1 << 33, (40, channels)),
                          np.full((2, channels), (1 << 63) - 1),
                          np.full((2, channels), -(1 << 63))])
    m = rng.uniform(-1e-8, 1e-8, channels).astype(np.float32)
    for steps in (x86_steps(m, np.float32(3.0), m, 0.0, np.float32(2.0), np.float32(9.0)),
                  int_tail_steps(None, rq.FusedMultiplyAdd("", a=m, b=m), m),
                  int_tail_steps(rng.integers(INT32_MIN, INT32_MAX, channels), None,
                                 np.float32(1e-3))):
        epilogue = compile_epilogue(steps, channels, np.uint8)
        assert epilogue.program[0, 0] in (X86_U8, INT_TAIL_U8)
        expected = rq.requantize(acc, steps, np.uint8)
        assert np.array_equal(epilogue.run(acc), expected)
        COMPARED["elements"] += expected.size


def test_coverage_of_the_sweep():
    """Run last: the module's comparisons covered ties (and many elements)."""
    assert COMPARED["ties"] > 0 and COMPARED["elements"] > 100_000, COMPARED
    print(f"compared {COMPARED['elements']} elements ({COMPARED['ties']} tie accumulators)")
