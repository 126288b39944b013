"""Arithmetic primitives of qexact.rounding against exact Python oracles (``fractions.Fraction``,
Python ``int``), on tables of edge values and on Hypothesis-seeded random batches."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexact.rounding import (INT16_MAX, INT16_MIN, INT32_MAX, INT32_MIN, f32, fma_float32,
                             round_half_away, round_half_even, round_half_even_to_int32,
                             round_toward_zero, saturate_int16, wrap_int32)
from support.assertions import assert_bitexact

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------- exact oracles

def round_fraction_to_f32(value: Fraction, negative_zero: bool = False) -> np.float32:
    """The float32 nearest to the exact rational ``value`` (ties to even, overflow to inf)."""
    if value == 0:
        return np.float32(-0.0) if negative_zero else np.float32(0.0)
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if magnitude < Fraction(2) ** exponent:
        exponent -= 1
    exponent = max(exponent, -126)  # subnormals share the quantum 2**-149
    quantum = Fraction(2) ** (exponent - 23)
    scaled = magnitude / quantum
    n = scaled.numerator // scaled.denominator
    remainder = scaled - n
    if remainder > Fraction(1, 2) or (remainder == Fraction(1, 2) and n % 2 == 1):
        n += 1
    result = n * quantum
    if result >= Fraction(2) ** 128:
        return np.float32(sign * math.inf)
    return np.float32(sign * float(result))  # exact: n <= 2**24


def fmaf_oracle(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    a, b, c = float(a), float(b), float(c)
    if not all(math.isfinite(v) for v in (a, b, c)):
        # a*b of two float32 is exact in float64, so the float64 result is the IEEE one.
        return np.float32(a * b + c)
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    product_negative = math.copysign(1.0, a) * math.copysign(1.0, b) < 0
    # An exact zero is -0.0 only when both addends are zeros of negative sign (round to nearest).
    both_negative_zero = (exact == 0 and a * b == 0 and c == 0 and product_negative
                          and math.copysign(1.0, c) < 0)
    return round_fraction_to_f32(exact, negative_zero=both_negative_zero)


def check_fma(a, b, c, context):
    a, b, c = (np.asarray(v, np.float32).reshape(-1) for v in (a, b, c))
    expected = np.array([fmaf_oracle(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    assert_bitexact(fma_float32(a, b, c), expected, context)


def random_float32_bits(rng, n, finite=True):
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    if finite:
        values = np.where(np.isfinite(values), values, np.float32(1.0))
    return values


# ---------------------------------------------------------------- the oracle itself

def test_round_fraction_to_f32_oracle():
    assert round_fraction_to_f32(Fraction(1) + Fraction(1, 2 ** 24)) == np.float32(1.0)  # tie, even
    assert round_fraction_to_f32(Fraction(1) + Fraction(3, 2 ** 24)) == np.float32(1 + 2 ** -22)
    assert round_fraction_to_f32(Fraction(1, 2 ** 150)) == np.float32(0.0)  # tie to even zero
    assert round_fraction_to_f32(Fraction(3, 2 ** 151)) == np.float32(2.0 ** -149)
    assert round_fraction_to_f32(Fraction(2) ** 128 - Fraction(2) ** 103) == np.float32(np.inf)
    assert round_fraction_to_f32(Fraction(F32_MAX)) == np.float32(F32_MAX)


# ---------------------------------------------------------------- fma_float32

@given(seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_fma_random_bit_patterns(seed):
    rng = np.random.default_rng(seed)
    n = 300
    check_fma(random_float32_bits(rng, n), random_float32_bits(rng, n), random_float32_bits(rng, n),
              f"random bits seed={seed}")


@given(seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_fma_random_moderate_and_cancelling(seed):
    rng = np.random.default_rng(seed)
    n = 300
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(np.float32)
    # c nearly cancels a*b: the result is the rounding error of the float32 product, and more.
    c = -(a.astype(np.float64) * b).astype(np.float32)
    c = np.where(rng.integers(0, 2, n) == 0, c, np.nextafter(c, np.float32(rng.choice([-1, 1]))))
    check_fma(a, b, c, f"cancelling seed={seed}")
    c2 = rng.standard_normal(n).astype(np.float32)
    check_fma(a, b, c2, f"moderate seed={seed}")


def _double_rounding_triples(rng, n):
    """a*b is (about) half an ulp of c: the exact sum is a float32 tie, or lies 2**-(2k) ulp
    next to one, closer than float64 can see, so a naive float64 sum lands exactly on the tie."""
    c = random_float32_bits(rng, n)
    c = np.where(np.abs(c) < 2.0 ** -100, np.float32(1.0), c)
    c = np.where(np.abs(c) > 2.0 ** 100, np.float32(3.0), c)
    ulp = np.abs(np.nextafter(c, np.float32(np.inf)) - c).astype(np.float64)
    half = ulp / 2
    k = rng.integers(12, 24, n).astype(np.float64)
    sign = rng.choice([-1.0, 1.0], n)
    factor_b = rng.choice([-1.0, 0.0, 1.0], n)  # 1 - 2**-k, exactly 1 (a true tie), 1 + 2**-k
    a = (sign * half * (1 + 2.0 ** -k)).astype(np.float32)
    b = (1 + factor_b * 2.0 ** -k).astype(np.float32)
    b = np.where(factor_b == 0, np.float32(1.0), b)
    a = np.where(factor_b == 0, (sign * half).astype(np.float32), a)
    return a, b, c


@given(seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_fma_ties_after_the_float64_sum(seed):
    rng = np.random.default_rng(seed)
    a, b, c = _double_rounding_triples(rng, 300)
    check_fma(a, b, c, f"double-rounding seed={seed}")


def test_fma_double_rounding_cases_defeat_naive_float64():
    """The adversarial triples are real traps: f32(float64 a*b + c) gets some of them wrong."""
    a, b, c = _double_rounding_triples(np.random.default_rng(0), 2000)
    naive = f32(a.astype(np.float64) * b + c)
    expected = np.array([fmaf_oracle(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    assert np.sum(naive.view(np.uint32) != expected.view(np.uint32)) > 50
    assert_bitexact(fma_float32(a, b, c), expected, "double rounding")


def test_fma_handpicked():
    one, ulp = 1.0, 2.0 ** -23
    cases = [
        # c odd (1 + 2**-23); a*b = 2**-24 * (1 - 2**-30): float64 sum hits the tie 1 + 3*2**-24.
        (2.0 ** -24 * (1 + 2.0 ** -15), 1 - 2.0 ** -15, one + ulp, one + ulp),
        # exact tie, ties to even
        (2.0 ** -24, 1.0, one, one),
        (2.0 ** -24, 1.0, one + ulp, one + 2 * ulp),
        # exact cancellation gives +0.0; -0 + -0 gives -0.0
        (3.0, 0.5, -1.5, 0.0),
        (-0.0, 1.0, -0.0, -0.0),
        (0.0, -1.0, -0.0, -0.0),
        (0.0, 1.0, -0.0, 0.0),
        # overflow and underflow
        (F32_MAX, 2.0, 0.0, math.inf),
        (F32_MAX, 1.0, F32_MAX, math.inf),
        (2.0 ** -100, 2.0 ** -49, 0.0, 2.0 ** -149),
        (2.0 ** -100, 2.0 ** -50, 0.0, 0.0),           # 2**-150: tie to even zero
        (2.0 ** -100, 3 * 2.0 ** -51, 0.0, 2.0 ** -149),  # 0.75 ulp rounds up
        # non-finite
        (math.inf, 0.0, 1.0, math.nan),
        (math.inf, 1.0, -math.inf, math.nan),
        (math.inf, -1.0, 5.0, -math.inf),
        (math.nan, 1.0, 1.0, math.nan),
        (1.0, 1.0, math.inf, math.inf),
    ]
    for a, b, c, expected in cases:
        got = fma_float32(np.float32(a), np.float32(b), np.float32(c))
        oracle = fmaf_oracle(np.float32(a), np.float32(b), np.float32(c))
        if math.isnan(expected):
            assert np.isnan(got) and np.isnan(oracle), (a, b, c)
        else:
            assert_bitexact(np.float32(got), np.float32(expected), f"fma({a}, {b}, {c})")
            assert_bitexact(np.float32(oracle), np.float32(expected), f"oracle({a}, {b}, {c})")


def test_fma_broadcasts_and_returns_float32():
    out = fma_float32(np.float32([1, 2, 3]), np.float32(2), np.float32([[0], [1]]))
    assert out.dtype == np.float32 and out.shape == (2, 3)
    assert_bitexact(out, np.float32([[2, 4, 6], [3, 5, 7]]), "broadcast")


# ---------------------------------------------------------------- float -> integer rounding

def test_round_half_even_table():
    x = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, -0.49999997, 8388607.5, -0.0])
    assert_bitexact(round_half_even(x), np.float32([0, 2, 2, -0.0, -2, -2, 0, -0.0, 8388608, -0.0]),
                    "round_half_even")
    special = round_half_even(np.float32([np.nan, np.inf, -np.inf]))
    assert np.isnan(special[0]) and special[1] == np.inf and special[2] == -np.inf


def round_half_away_oracle(x: float) -> float:
    if not math.isfinite(x):
        return x
    n = math.floor(abs(Fraction(x)) + Fraction(1, 2))
    return math.copysign(float(n), x)


def test_round_half_away_table_float32():
    x = np.float32([0.5, -0.5, 2.5, -2.5, 1.5, -1.5, 0.49999997, -0.49999997, 0.0, -1e-45, 1e-45,
                    8388607.5, -8388607.5, 8388609.0, 3.4e38, -3.4e38, 1.0000001, 2.4999998])
    expected = np.float32([1, -1, 3, -3, 2, -2, 0, -0.0, 0, -0.0, 0, 8388608, -8388608, 8388609,
                           3.4e38, -3.4e38, 1, 2])
    got = round_half_away(x)
    assert got.dtype == np.float32
    assert_bitexact(got, expected, "round_half_away float32")
    special = round_half_away(np.float32([np.nan, np.inf, -np.inf]))
    assert np.isnan(special[0]) and special[1] == np.inf and special[2] == -np.inf


def test_round_half_away_keeps_negative_zero():
    """C ``round(-0.0)`` is -0.0 (as is round(-0.4), which qexact gets right)."""
    for dtype in (np.float32, np.float64):
        assert_bitexact(round_half_away(np.array([-0.0], dtype)), np.array([-0.0], dtype),
                        f"round_half_away(-0.0) {np.dtype(dtype).name}")


@given(seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_round_half_away_random_float32(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([random_float32_bits(rng, 500),
                        (rng.integers(-1000, 1000, 500) / 2).astype(np.float32),
                        (rng.standard_normal(500) * 100).astype(np.float32)])
    expected = np.array([round_half_away_oracle(float(v)) for v in x], dtype=np.float32)
    assert_bitexact(round_half_away(x), expected, f"round_half_away seed={seed}")


def test_round_half_away_float64():
    """C ``round`` on doubles. ``floor(|x| + 0.5)`` is wrong in float64 when the addition rounds:
    0.49999999999999994 + 0.5 == 1.0, and 2**52 + 1 + 0.5 ties to 2**52 + 2."""
    x = np.array([0.49999999999999994, -0.49999999999999994, 2.0 ** 52 + 1, -(2.0 ** 52 + 1),
                  2.5, -2.5, 0.5], dtype=np.float64)
    expected = np.array([round_half_away_oracle(float(v)) for v in x], dtype=np.float64)
    assert_bitexact(expected, np.array([0.0, -0.0, 2.0 ** 52 + 1, -(2.0 ** 52 + 1), 3, -3, 1]),
                    "oracle")
    assert_bitexact(round_half_away(x), expected, "round_half_away float64")


def test_round_toward_zero_table():
    x = np.float32([0.5, -0.5, 1.9999999, -1.9999999, 2.5, -2.5, 1e10])
    assert_bitexact(round_toward_zero(x), np.float32([0, -0.0, 1, -1, 2, -2, 1e10]), "trunc")


def test_round_half_even_to_int32_edges():
    below_2_31 = float(np.nextafter(np.float32(2.0 ** 31), np.float32(0)))        # 2**31 - 128
    below_min = float(np.nextafter(np.float32(-(2.0 ** 31)), np.float32(-np.inf)))  # -2**31 - 256
    table = [
        (0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (-2.5, -2), (-0.0, 0),
        (0.49999997, 0), (8388607.5, 8388608), (-8388607.5, -8388608),
        (below_2_31, 2 ** 31 - 128), (2.0 ** 31, INT32_MIN), (-(2.0 ** 31), INT32_MIN),
        (below_min, INT32_MIN), (1e10, INT32_MIN), (-1e10, INT32_MIN), (3.4e38, INT32_MIN),
        (math.nan, INT32_MIN), (math.inf, INT32_MIN), (-math.inf, INT32_MIN),
        (1e-45, 0), (-1e-45, 0),
    ]
    x = np.float32([v for v, _ in table])
    got = round_half_even_to_int32(x)
    assert got.dtype == np.int64
    assert_bitexact(got, np.int64([e for _, e in table]), "cvtps2dq", {"x": x})


@given(seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_round_half_even_to_int32_random(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([random_float32_bits(rng, 1000, finite=False),
                        (rng.integers(-(2 ** 25), 2 ** 25, 1000) / 2).astype(np.float32),
                        rng.uniform(-(2.0 ** 31) * 1.01, 2.0 ** 31 * 1.01, 1000).astype(np.float32)])

    def oracle(v: float) -> int:
        if not math.isfinite(v):
            return INT32_MIN
        r = round(v)  # Python rounds floats half to even, exactly
        return r if INT32_MIN <= r <= INT32_MAX else INT32_MIN

    expected = np.array([oracle(float(v)) for v in x], dtype=np.int64)
    assert_bitexact(round_half_even_to_int32(x), expected, f"cvtps2dq seed={seed}")


# ---------------------------------------------------------------- integer wrap / saturation

def wrap_oracle(v: int) -> int:
    return (v + 2 ** 31) % 2 ** 32 - 2 ** 31


def test_wrap_int32_edges():
    edges = [0, 1, -1, INT32_MAX, INT32_MIN, INT32_MAX + 1, INT32_MIN - 1, 2 ** 32, -(2 ** 32),
             2 ** 32 + 5, 2 ** 33 - 1, 2 ** 62, -(2 ** 62), 2 ** 63 - 1, -(2 ** 63)]
    edges += [s * (2 ** i + d) for i in range(0, 62) for d in (-2, -1, 0, 1, 2) for s in (1, -1)]
    got = wrap_int32(np.array(edges, dtype=np.int64))
    assert got.dtype == np.int64
    assert_bitexact(got, np.array([wrap_oracle(v) for v in edges], dtype=np.int64), "wrap edges")


@given(seed=st.integers(0, 2 ** 32 - 1))
@settings(max_examples=20)
def test_wrap_int32_random(seed):
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.integers(-(2 ** 63), 2 ** 63 - 1, 1000, dtype=np.int64),
                        rng.integers(-(2 ** 34), 2 ** 34, 1000, dtype=np.int64)])
    expected = np.array([wrap_oracle(int(x)) for x in v], dtype=np.int64)
    assert_bitexact(wrap_int32(v), expected, f"wrap seed={seed}")


def test_saturate_int16_exhaustive_near_range():
    v = np.arange(-(2 ** 17), 2 ** 17, dtype=np.int64)
    expected = np.array([min(max(int(x), INT16_MIN), INT16_MAX) for x in v], dtype=np.int64)
    assert_bitexact(saturate_int16(v), expected, "saturate_int16")
    big = np.int64([2 ** 40, -(2 ** 40), 2 ** 63 - 1, -(2 ** 63)])
    assert_bitexact(saturate_int16(big), np.int64([INT16_MAX, INT16_MIN, INT16_MAX, INT16_MIN]),
                    "saturate_int16 extremes")


def test_f32_rounds_to_nearest_even():
    x = np.array([1 + 2.0 ** -24, 1 + 3 * 2.0 ** -24, 2.0 ** 128, -(2.0 ** 128), 2.0 ** -150,
                  3 * 2.0 ** -151], dtype=np.float64)
    assert_bitexact(f32(x), np.float32([1.0, 1 + 2.0 ** -22, np.inf, -np.inf, 0.0, 2.0 ** -149]),
                    "f32")


# --- the fast forms equal the definitions they replace (issue 13) ---------------------------------

from qexact.rounding import fma_float32_round_to_odd  # noqa: E402


def _random_float32(rng, count):
    return np.concatenate([
        rng.integers(0, 2 ** 32, count, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.standard_normal(count).astype(np.float32),
        (rng.integers(-300, 300, count) * 0.5).astype(np.float32),
        (rng.standard_normal(count) * 2.0 ** -130).astype(np.float32),   # subnormal results
    ])


@pytest.mark.parametrize("seed", range(4))
def test_fma_fast_equals_round_to_odd(seed):
    """The midpoint-screened fma equals rounding to odd on every element, including the
    cancelling and midpoint-making addends and subnormal results."""
    rng = np.random.default_rng(seed)
    a, b = _random_float32(rng, 50_000), _random_float32(rng, 50_000)
    product = a.astype(np.float64) * b.astype(np.float64)
    with np.errstate(all="ignore"):
        addends = [_random_float32(rng, 50_000), (-product).astype(np.float32),
                   (product * 2.0 ** -25).astype(np.float32), np.float32(0.5),
                   (-product + np.ldexp(1.0, np.frexp(product)[1] - 25)).astype(np.float32)]
        for c in addends:
            assert_bitexact(fma_float32(a, b, c), fma_float32_round_to_odd(a, b, c), "fma")


def test_fma_fast_midpoints_by_construction():
    """(1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: exactly a float32 midpoint, nudged by tiny addends."""
    a = np.full(6, 1 + 2.0 ** -12, np.float32)
    c = np.array([0, 2.0 ** -60, -2.0 ** -60, 2.0 ** -30, -2.0 ** -24, 2.0 ** -149], np.float32)
    assert_bitexact(fma_float32(a, a, c), fma_float32_round_to_odd(a, a, c), "midpoints")


def test_round_half_even_to_int32_float32_extremes():
    values = np.array([2.0 ** 31, -2.0 ** 31, 2147483520.0, -2147483904.0, np.nan, np.inf,
                       -np.inf, 8388607.5, -8388608.5, 0.5, -0.5, 1.5, -0.0], np.float32)
    expected = [INT32_MIN, INT32_MIN, 2147483520, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN,
                8388608, -8388608, 0, 0, 2, 0]
    actual = round_half_even_to_int32(values)
    assert actual.dtype == np.int64
    assert actual.tolist() == expected
