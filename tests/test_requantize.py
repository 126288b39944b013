"""Every requantization ``Step`` against hand-computed values, and each engine's pipeline on ties.

Hand values (float32 facts used below):
- 2**24 + 1 is not a float32: it is a tie between 2**24 and 2**24 + 2 and goes to the even one.
- (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 exactly; rounding that product first loses the 2**-24.
- 1 + 2**-24 is half an ulp above 1 (tie -> 1); 1 + 3 * 2**-24 is a tie between 1 + 2**-23 and
  1 + 2**-22 (-> 1 + 2**-22, even mantissa).
"""

from __future__ import annotations

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact import QINT8, QUINT8, QParams
from qexact.engines import LayerQuantization
from qexact.requantize import (AddFloat32, AddInt, AddInt32, ClampFloat32, ClampInt,
                               FusedMultiplyAdd, MultiplyFloat32, RoundHalfEvenToInt32, ToFloat32,
                               requantize, trace_requantize)
from qexact.engines import engine_names

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
F = np.float32


def test_add_int32_wraps():
    step = AddInt32("t", term=np.array([1, 2, -3], np.int64))
    value = np.array([[I32_MAX, -5, I32_MIN], [0, I32_MAX - 2, 7]], np.int64)
    assert_bitexact(step.apply(value),
                    np.array([[I32_MIN, -3, I32_MAX - 2], [1, I32_MAX, 4]], np.int64))
    assert set(step.constants()) == {"term"}


def test_to_float32_rounds_ties_to_even_above_2_pow_24():
    value = np.array([16777216, 16777217, 16777218, 16777219, -16777217, I32_MAX, 3], np.int64)
    assert_bitexact(ToFloat32("f").apply(value),
                    F([16777216, 16777216, 16777218, 16777220, -16777216, 2147483648.0, 3]))


def test_fused_multiply_add_rounds_once():
    a = F([1 + 2**-12, 2.0, 3.0])
    step = FusedMultiplyAdd("fma", a=a, b=a.copy())
    value = F([-1.0, 1.0, -9.0])
    # fused: 2**-11 + 2**-24; unfused would give 2**-11. 2*2+1 = 5; 3*3-9 = 0
    assert_bitexact(step.apply(value), F([2**-11 + 2**-24, 5.0, 0.0]))
    assert step.apply(value)[0] != F(F(a[0] * a[0]) - F(1.0))


def test_add_float32_ties_to_even():
    step = AddFloat32("a", term=F([2**-24, 3 * 2**-24, 0.5]))
    assert_bitexact(step.apply(F([1.0, 1.0, 0.25])), F([1.0, 1 + 2**-22, 0.75]))


def test_multiply_float32_per_channel_last_axis():
    step = MultiplyFloat32("m", factor=F([1 / 3, 0.5, 2.0]))
    value = F([[3.0, 3.0, 3.0], [-1.0, 5.0, 2**127]])
    # 3 * f32(1/3) = 1.0000000298... -> 1.0; 2**127 * 2 overflows to inf
    with np.errstate(over="ignore"):
        actual = step.apply(value)
    assert_bitexact(actual, F([[1.0, 1.5, 6.0], [-F(1 / 3), 2.5, np.inf]]))


def test_clamp_float32():
    assert_bitexact(ClampFloat32("relu", low=0.0).apply(F([-1.5, 0.0, 3.0, -np.inf])),
                    F([0.0, 0.0, 3.0, 0.0]))
    assert_bitexact(ClampFloat32("out", low=0.0, high=255.0).apply(F([-3.0, 254.5, 300.0, np.inf])),
                    F([0.0, 254.5, 255.0, 255.0]))


def test_round_half_even_to_int32_cvtps2dq():
    value = F([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 4194304.5, 4194305.5, 2147483520.0, 2.0**31,
               -(2.0**31), -2147483904.0, np.nan, np.inf, -np.inf])
    expected = np.array([0, 2, 2, 0, -2, -2, 4194304, 4194306, 2147483520, I32_MIN, I32_MIN,
                         I32_MIN, I32_MIN, I32_MIN, I32_MIN], np.int64)
    assert_bitexact(RoundHalfEvenToInt32("r").apply(value), expected)


def test_add_int_and_clamp_int():
    assert_bitexact(AddInt("zp", term=128).apply(np.array([-1, 0, 200, I32_MIN], np.int64)),
                    np.array([127, 128, 328, I32_MIN + 128], np.int64))
    assert_bitexact(ClampInt("out", low=3, high=255).apply(np.array([-5, 3, 300, 77], np.int64)),
                    np.array([3, 3, 255, 77], np.int64))


def test_a_step_prints_with_its_constants():
    assert str(MultiplyFloat32("scale", factor=F(0.1))) == "scale: f32(v * 0.1)"
    assert str(ClampInt("range", low=0, high=255)) == "range: clamp(v, 0, 255)"
    assert str(AddInt32("bias", term=np.arange(6, dtype=np.int64))) == \
        "bias: v + [0, 1, 2, 3, ... (6 values)] (int32, wraps)"
    assert str(FusedMultiplyAdd("fma", a=F(2.5), b=F(-1))) == "fma: fmaf(2.5, -1.0, v)"


def test_requantize_and_trace():
    steps = (ToFloat32("f"), MultiplyFloat32("m", factor=F([0.5])),
             RoundHalfEvenToInt32("r"), AddInt("zp", term=10), ClampInt("c", low=0, high=255))
    acc = np.array([-25, -3, -1, 1, 3, 5, 1000], np.int64)
    out = requantize(acc, steps, np.uint8)
    assert_bitexact(out, np.array([0, 8, 10, 10, 12, 12, 255], np.uint8))
    trace = trace_requantize(acc, steps)
    assert [step for step, _ in trace] == list(steps)
    assert_bitexact(trace[1][1], F([-12.5, -1.5, -0.5, 0.5, 1.5, 2.5, 500.0]))
    assert_bitexact(trace[-1][1].astype(np.uint8), out)


# ---------------------------------------------------------------------------------------------
# Each engine's steps on tie cases (power-of-two scales, so every product is exact)
# ---------------------------------------------------------------------------------------------

def engine_steps(engine, s_x, s_w, s_out, z_out, bias=None, relu=False, per_channel=False):
    if per_channel:
        w_qp = QParams.per_channel([s_w] * len(bias), [0] * len(bias), 0, QINT8)
    else:
        w_qp = QParams.per_tensor(s_w, 0, QINT8)
    layer = LayerQuantization(s_x, w_qp, None if bias is None else F(bias),
                              QParams.per_tensor(s_out, z_out, QUINT8), relu)
    return qexact.get_engine(engine, "avx2").linear.requantization(layer).steps


ACC = np.array([-5, -3, -1, 1, 3, 5, 7], np.int64)
# acc * 0.5 = -2.5 -1.5 -0.5 0.5 1.5 2.5 3.5 -> ties to even: -2 -2 0 0 2 2 4
ZP_AFTER_ROUNDING = {100: [98, 98, 100, 100, 102, 102, 104], 101: [99, 99, 101, 101, 103, 103, 105]}
# oneDNN adds z_out in float before rounding: 101 + acc/2 = 98.5 ... 104.5 -> 98 100 100 102 ...
ZP_BEFORE_ROUNDING = {100: [98, 98, 100, 100, 102, 102, 104], 101: [98, 100, 100, 102, 102, 104, 104]}


@pytest.mark.parametrize("z_out", [100, 101])
@pytest.mark.parametrize("engine", engine_names())
def test_engine_multiplier_half_ties(engine, z_out):
    steps = engine_steps(engine, 2**-3, 2**-4, 2**-6, z_out)  # M = 2**-7 / 2**-6 = 0.5
    table = ZP_BEFORE_ROUNDING if engine == "onednn" else ZP_AFTER_ROUNDING
    assert_bitexact(requantize(ACC, steps, np.uint8), np.array(table[z_out], np.uint8), engine)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("engine", engine_names())
def test_engine_half_grid_bias_ties(engine, per_channel):
    """bias = 0.5 * s_x * s_w, M = 1. Float-bias engines see acc + 0.5 (a tie at the final
    rounding); QNNPACK rounds the bias itself: quantize(0.5) = 0 (ties to even)."""
    acc = np.array([[0], [1], [2], [-1], [-2]], np.int64)
    bias = [0.5 * 2**-7]
    steps = engine_steps(engine, 2**-3, 2**-4, 2**-7, 100, bias=bias, per_channel=per_channel)
    expected = {
        "fbgemm": [100, 102, 102, 100, 98],   # rne(acc + 0.5) + 100
        "x86": [100, 102, 102, 100, 98],
        "qnnpack": [100, 101, 102, 99, 98],   # acc + rne(0.5) + 100
        "onednn": [100, 102, 102, 100, 98],   # rne(acc + 0.5 + 100.0)
    }[engine]
    assert_bitexact(requantize(acc, steps, np.uint8), np.array(expected, np.uint8)[:, None], engine)


@pytest.mark.parametrize("engine", engine_names())
def test_engine_relu_lower_bound(engine):
    steps = engine_steps(engine, 2**-3, 2**-4, 2**-6, 101, relu=True)
    # oneDNN: max(acc/2, 0) + 101.0 = 101 101 101 101.5 102.5 103.5 104.5 -> ties to even
    expected = {"onednn": [101, 101, 101, 102, 102, 104, 104]}.get(
        engine, [101, 101, 101, 101, 103, 103, 105])
    assert_bitexact(requantize(ACC, steps, np.uint8), np.array(expected, np.uint8), engine)


def test_fbgemm_int32_overflow_gives_zero():
    """f32(acc * M) beyond int32: cvtps2dq gives INT32_MIN, so even huge positives clamp to 0.
    M = f32(f32(10) * f32(10) / f32(1e-4)) ~ 1e6: 3000 * M = 3e9 overflows, 2000 * M = 2e9 fits."""
    acc = np.array([3000, -3000, 2000, -2000], np.int64)
    fbgemm = engine_steps("fbgemm", 10.0, 10.0, 1e-4, 128)
    assert_bitexact(requantize(acc, fbgemm, np.uint8), np.array([0, 0, 255, 0], np.uint8))
    onednn = engine_steps("onednn", 10.0, 10.0, 1e-4, 128)  # clamps in float first
    assert_bitexact(requantize(acc, onednn, np.uint8), np.array([255, 0, 255, 0], np.uint8))


def test_qnnpack_int32_bias_saturates_then_sum_wraps():
    """bias / (s_x*s_w) = 1e11 quantizes to INT32_MAX; acc + INT32_MAX wraps for acc > 0."""
    steps = engine_steps("qnnpack", 1e-4, 1e-4, 1e-4, 7, bias=[1e3])
    assert_bitexact(steps[0].term, np.array([I32_MAX], np.int64).astype(steps[0].term.dtype))
    acc = np.array([[0], [1], [-1]], np.int64)
    # 0 -> INT32_MAX * 1e-4 -> 2.1e5 -> 255; 1 -> INT32_MIN -> very negative -> 0
    assert_bitexact(requantize(acc, steps, np.uint8), np.array([[255], [0], [255]], np.uint8))


# --- the fast forms (issue 13): chunked, in place, fused tail, tables -----------------------------

from qexact.requantize import (DivideFloat32, MinFloat32, MultiplyAddFloat32,  # noqa: E402
                               chunked_float32_requantize)
from qexact.rounding import fma_float32_round_to_odd  # noqa: E402


def _f32(value):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(value, np.float64).astype(np.float32)


def _definition(step, value):
    """Each step as first written: float32 results of double arithmetic, rounded once."""
    wide = lambda v: np.asarray(v, np.float64)  # noqa: E731
    kind = type(step)
    if kind is ToFloat32:
        return _f32(value)
    if kind is MultiplyFloat32:
        return _f32(wide(value) * wide(step.factor))
    if kind is AddFloat32:
        return _f32(wide(value) + wide(step.term))
    if kind is DivideFloat32:
        return _f32(wide(value) / wide(step.divisor))
    if kind is ClampFloat32:
        return np.minimum(np.maximum(value, F(step.low)), F(step.high))
    if kind is MinFloat32:
        return np.where(np.isnan(value) | (value > F(step.high)), F(step.high), value).astype(F)
    if kind is MultiplyAddFloat32:
        if step.fused:
            return fma_float32_round_to_odd(value, step.factor, step.term)
        return _f32(wide(_f32(wide(value) * wide(step.factor))) + wide(step.term))
    if kind is FusedMultiplyAdd:
        return fma_float32_round_to_odd(step.a, step.b, value)
    if kind is RoundHalfEvenToInt32:
        rounded = np.rint(wide(value))
        fits = (rounded >= I32_MIN) & (rounded <= I32_MAX)
        return np.where(fits, rounded, I32_MIN).astype(np.int64)
    if kind is AddInt:
        return np.asarray(value, np.int64) + step.term
    if kind is ClampInt:
        return np.clip(value, step.low, step.high)
    raise AssertionError(kind)


def _random_pipeline(rng, width):
    def constant(scale=1.0):
        if rng.random() < 0.5:
            return F(rng.standard_normal() * scale)
        return (rng.standard_normal(width) * scale).astype(F)
    steps = [ToFloat32("f")]
    for _ in range(int(rng.integers(1, 6))):
        choice = int(rng.integers(0, 7))
        if choice == 0:
            steps.append(MultiplyFloat32("m", factor=np.asarray(constant(2.0 ** -8), F)))
        elif choice == 1:
            steps.append(AddFloat32("a", term=np.asarray(constant(100.0), F)))
        elif choice == 2:
            steps.append(DivideFloat32("d", divisor=np.asarray(constant(3.0), F)))
        elif choice == 3:
            steps.append(ClampFloat32("c", low=float(F(-rng.random() * 300)),
                                      high=float(F(rng.random() * 300))))
        elif choice == 4:
            steps.append(MinFloat32("min", high=float(F(rng.random() * 1e6))))
        elif choice == 5:
            steps.append(MultiplyAddFloat32("fma", factor=np.asarray(constant(2.0 ** -6), F),
                                            term=np.asarray(constant(10.0), F),
                                            fused=bool(rng.integers(0, 2))))
        else:
            steps.append(FusedMultiplyAdd("bias", a=np.asarray(constant(50.0), F),
                                          b=np.asarray(constant(1.0), F)))
    zero_point = int(rng.integers(-128, 256))
    if rng.random() < 0.7:
        low, high = (0, 255) if rng.random() < 0.5 else (-128, 127)
        steps += [RoundHalfEvenToInt32("r"), AddInt("z", term=zero_point),
                  ClampInt("c", low=low, high=high)]
        out_dtype = np.uint8 if low == 0 else np.int8
    else:
        steps.append(RoundHalfEvenToInt32("r"))
        out_dtype = np.int32
    return tuple(steps), out_dtype


@pytest.mark.parametrize("seed", range(30))
def test_requantize_fast_forms_equal_the_step_definitions(seed):
    """``requantize`` (chunked, in place, fused tail) equals the steps as first written, on
    random pipelines and accumulators with extremes (int32 limits, 0, values giving NaN/inf)."""
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, 70))
    rows = int(rng.integers(1, 1200))
    acc = rng.integers(-(2 ** 24), 2 ** 24, (rows, width))
    acc.flat[:: max(1, acc.size // 7)] = rng.choice([I32_MIN, I32_MAX, 0, 2 ** 24 + 1, -1],
                                                    acc.flat[:: max(1, acc.size // 7)].size)
    steps, out_dtype = _random_pipeline(rng, width)
    with np.errstate(all="ignore"):
        expected = acc
        for step in steps:
            expected = _definition(step, expected)
        expected = expected.astype(out_dtype)
        for accumulator in (acc, acc.astype(np.int32)):
            actual = requantize(accumulator, steps, out_dtype)
            assert_bitexact(actual, expected, f"seed {seed}: {[s.label for s in steps]}")
            traced = trace_requantize(accumulator, steps)[-1][1].astype(out_dtype)
            assert_bitexact(traced, expected, "trace")


def test_requantize_chunking_covers_chunk_edges():
    rng = np.random.default_rng(5)
    width = 3
    steps = (ToFloat32("f"), MultiplyFloat32("m", factor=F([0.01, 0.5, 3.0])),
             RoundHalfEvenToInt32("r"), AddInt("z", term=7), ClampInt("c", low=0, high=255))
    for rows in (1, 10922, 10923, 10924, 30000):
        acc = rng.integers(-(2 ** 20), 2 ** 20, (rows, width)).astype(np.int32)
        expected = acc
        for step in steps:
            expected = _definition(step, expected)
        assert chunked_float32_requantize(acc, steps, np.uint8) is not None
        assert_bitexact(requantize(acc, steps, np.uint8), expected.astype(np.uint8), f"{rows}")


def test_requantize_takes_a_float_value_as_given():
    """A float input (QNNPACK's bias quantization runs the steps on float32 biases) is not
    converted to integers."""
    steps = (MultiplyFloat32("m", factor=F(4.0)), RoundHalfEvenToInt32("r"))
    assert requantize(F([0.375, -1.125]), steps, np.int32).tolist() == [2, -4]


@pytest.mark.parametrize("engine", ["x86", "fbgemm", "qnnpack", "onednn"])
@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_tables_equal_the_steps(engine, op, monkeypatch):
    """An 8-bit add/mul of many elements runs as a table of its 65,536 results: equal to the
    steps run on every element (``TABLE_MIN_ELEMENTS`` raised past the size)."""
    from qexact.ops import elementwise

    rng = np.random.default_rng(len(engine) + len(op))
    for relu in (False, True):
        qa = QParams(float(F(rng.random() * 0.2 + 0.01)), int(rng.integers(0, 256)), QUINT8)
        qb = QParams(float(F(rng.random() * 0.2 + 0.01)), int(rng.integers(0, 256)), QUINT8)
        qo = QParams(float(F(rng.random() * 0.3 + 0.01)), int(rng.integers(0, 256)), QUINT8)
        params = elementwise.prepare_binary(op, qa, qb, qo, relu, engine=engine)
        a_values = rng.integers(0, 256, (2, 16, 33, 35)).astype(np.uint8)
        b_values = rng.integers(0, 256, (2, 16, 33, 35)).astype(np.uint8)
        channels_last = (lambda v: np.moveaxis(np.ascontiguousarray(np.moveaxis(v, 1, -1)),
                                               -1, 1))
        layouts = {"contiguous": (a_values, b_values),
                   "channels_last": (channels_last(a_values), channels_last(b_values)),
                   "mixed": (a_values, channels_last(b_values)),
                   "broadcast": (channels_last(a_values), b_values[:1, :, :1, :1])}
        for layout, (a_array, b_array) in layouts.items():
            a = qexact.QuantizedArray(a_array, qa)
            b = qexact.QuantizedArray(b_array, qb)
            tabled = elementwise.binary(a, b, params)
            monkeypatch.setattr(elementwise, "TABLE_MIN_ELEMENTS", 1 << 40)
            direct = elementwise.binary(a, b, params)
            monkeypatch.undo()
            context = f"{engine} {op} relu={relu} {layout}"
            assert_bitexact(tabled.values, direct.values, context)
            assert tabled.values.strides == direct.values.strides, context
