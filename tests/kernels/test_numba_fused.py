"""The fused GEMM + epilogue (``qexact.kernels._numba_fused``) equals ``requantize`` of the
accumulator, bit for bit.

For every GEMM method this CPU runs: the int64 definition of the centered accumulator (plus
FBGEMM's pair saturation for ``avx2_saturate``), requantized by ``qexact.requantize.requantize``
with the real epilogues of several engines (per-tensor / per-channel weights, bias, relu, uint8 /
int8 / float32 outputs, a bound residual operand), against ``gemm_requantize_fast`` on
hypothesis-drawn shapes (fixed seed) and adversarial ones: x = 255 with w = -128 / 127 (maximal
accumulators and pair saturation), outputs saturating at both ends, M = 1, N = 1, K not a multiple
of 4, M across several chunks and epilogue blocks, N across several panels, threads.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qexact import requantize as rq  # noqa: E402
from qexact.accumulate import (pair_positions, pair_saturation_correction,  # noqa: E402
                               reference_matmul, saturating_weight_pairs, weight_pairs_of)
from qexact.dtypes import QINT8, QUINT8  # noqa: E402
from qexact.engines import get_engine  # noqa: E402
from qexact.errors import QexactError, UnsupportedError  # noqa: E402
from qexact.kernels import fast_available  # noqa: E402
from qexact.ops.conv import prepare_conv  # noqa: E402
from qexact.ops.linear import prepare_linear  # noqa: E402
from qexact.qparams import QParams  # noqa: E402

if not fast_available():
    pytest.skip("the fast backend is not available here", allow_module_level=True)

from qexact.kernels import _numba_fused as fused  # noqa: E402
from qexact.kernels import _numba_gemm as gemm  # noqa: E402
from qexact.kernels._numba_epilogue import compile_epilogue  # noqa: E402

AVAILABLE = gemm.available_methods()
METHODS = [pytest.param(method, marks=pytest.mark.skipif(
    method not in AVAILABLE, reason=f"this CPU cannot run {method}")) for method in gemm.METHODS]
COMPARED = {"elements": 0, "saturated_outputs": 0}
# (engine, isa) whose Linear / Conv epilogues are compiled
ENGINE_CASES = [("x86", "avx512_vnni"), ("x86", "avx2"), ("fbgemm", "avx2"),
                ("onednn", "avx512_vnni"), ("qnnpack", "avx2")]


def bits(values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values)
    return values.view(f"u{values.dtype.itemsize}")


def expected_accumulator(x, weight, x_zero_point, weight_zero_point, method):
    """int64: ``sum (x - zx)(w - zw)``, plus FBGEMM's pair saturation for ``avx2_saturate``."""
    zero_points = np.broadcast_to(np.asarray(weight_zero_point, np.int64), (weight.shape[0],))
    acc = reference_matmul(x.astype(np.int64) - x_zero_point,
                           (weight.astype(np.int64) - zero_points[:, None]).T)
    if method == "avx2_saturate":
        positions = pair_positions(weight.shape[1])
        pairs = weight_pairs_of(weight, positions)
        acc = acc + pair_saturation_correction(x, pairs, saturating_weight_pairs(pairs),
                                               positions)
    return acc


def layers(engine_name, isa, channels, rng, per_channel, relu):
    """(label, steps, out_dtype, operand kind) of the engine's Linear / Conv layers."""
    engine = get_engine(engine_name, isa)
    dtype = engine.activation_dtypes[0]
    zero = int(rng.integers(0, 256)) if dtype == QUINT8 else int(rng.integers(-128, 128))
    x_q = QParams.per_tensor(rng.uniform(0.002, 0.05), zero, dtype)
    scales = rng.uniform(1e-3, 3e-2, channels)
    w_q = (QParams.per_channel(scales, np.zeros(channels, np.int64), 0, QINT8) if per_channel
           else QParams.per_tensor(scales[0], 0, QINT8))
    bias = rng.normal(0, 2, channels).astype(np.float32)
    weight = rng.integers(-128, 128, (channels, 8)).astype(np.int8)
    conv_weight = rng.integers(-128, 128, (channels, 8, 1, 1)).astype(np.int8)
    found = []
    outputs = [QParams.per_tensor(rng.uniform(0.01, 0.2), zero, dtype)]
    if engine.float_output:
        outputs.append(None)
    for out_q in outputs:
        out_dtype = np.dtype(np.float32) if out_q is None else out_q.dtype.numpy_dtype
        attempts = [
            ("linear", lambda: prepare_linear(weight, w_q, bias, x_q, out_q, relu=relu,
                                              engine=engine), None),
            ("linear + float residual", lambda: prepare_linear(
                weight, w_q, bias, x_q, out_q, relu=relu, engine=engine, float_residual=True),
             "float"),
            ("conv", lambda: prepare_conv(conv_weight, w_q, bias, x_q, out_q, relu=relu,
                                          engine=engine), None),
            ("conv + residual", lambda: prepare_conv(conv_weight, w_q, bias, x_q, out_q,
                                                     relu=relu, engine=engine,
                                                     residual_qparams=x_q), "quantized")]
        for label, prepare, operand in attempts:
            try:
                params = prepare()
            except QexactError:
                continue
            found.append((label, params.requantization, out_dtype, operand, x_q.dtype))
    return found


def operand_for(kind, rows, channels, rng, dtype):
    if kind == "float":
        values = rng.normal(0, 30, (rows, channels)).astype(np.float32)
        values.reshape(-1)[:4] = [0.0, -0.0, 0.5, -2.5][:values.size]
        return values
    info = np.iinfo(dtype.numpy_dtype)
    return rng.integers(info.min, info.max, (rows, channels), endpoint=True).astype(
        dtype.numpy_dtype)


def check(method, x, weight, x_zero_point, weight_zero_point, steps, out_dtype, operand=None,
          parallel=False, context=""):
    """``gemm_requantize_fast`` == ``requantize(int64 accumulator)``, bit for bit."""
    packed = gemm.pack_weights(weight)
    laid = np.zeros((x.shape[0], packed.padded_depth), np.uint8)
    laid[:, :x.shape[1]] = x
    acc = expected_accumulator(x, weight, x_zero_point, weight_zero_point, method)
    if acc.size and (acc.min() < -(1 << 31) or acc.max() >= 1 << 31):
        pytest.skip("accumulator outside int32")  # never for these sizes
    reference_steps = steps if operand is None else rq.bind_operand(steps, "sum", operand)
    with np.errstate(all="ignore"):
        expected = rq.requantize(acc, reference_steps, out_dtype)
    epilogue = compile_epilogue(steps, weight.shape[0], out_dtype)
    assert epilogue is not None, [type(step).__name__ for step in steps]
    got = fused.gemm_requantize_fast(laid, packed, x_zero_point, weight_zero_point, method,
                                     epilogue, operands=None if operand is None else [operand],
                                     parallel=parallel)
    assert got.dtype == expected.dtype and got.shape == expected.shape, context
    differ = bits(got) != bits(expected)
    if differ.any():
        row, column = np.argwhere(differ)[0]
        raise AssertionError(f"{int(differ.sum())} of {differ.size} differ ({method} {context}); "
                             f"first at [{row}, {column}]: acc {acc[row, column]}, got "
                             f"{got[row, column]!r}, requantize {expected[row, column]!r}")
    COMPARED["elements"] += got.size
    if np.issubdtype(got.dtype, np.integer):
        info = np.iinfo(got.dtype)
        COMPARED["saturated_outputs"] += int(np.count_nonzero((got == info.min)
                                                              | (got == info.max)))
    return got




def run_layers(method, rng, rows, depth, channels, per_channel, relu, engine_case,
               extreme=None, parallel=False):
    engine_name, isa = engine_case
    for label, steps, out_dtype, operand_kind, x_dtype in layers(engine_name, isa, channels, rng,
                                                                 per_channel, relu):
        x = rng.integers(0, 256, (rows, depth)).astype(np.uint8)
        weight = rng.integers(-128, 128, (channels, depth)).astype(np.int8)
        if extreme is not None:
            x[:] = 255
            weight[:] = extreme
            weight[::2] = -128 if extreme == 127 else 127
        x_zero_point = int(rng.integers(0, 256))
        weight_zero_point = (rng.integers(-128, 128, channels) if per_channel
                             else int(rng.integers(-128, 128)))
        operand = (None if operand_kind is None
                   else operand_for(operand_kind, rows, channels, rng, x_dtype))
        check(method, x, weight, x_zero_point, weight_zero_point, steps, out_dtype, operand,
              parallel, f"{engine_name}/{isa} {label} M,K,N={rows},{depth},{channels}")


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(rows=st.integers(1, 90), depth=st.integers(1, 200), channels=st.integers(1, 140),
       per_channel=st.booleans(), relu=st.booleans(),
       engine_case=st.sampled_from(ENGINE_CASES), seed=st.integers(0, 2**32 - 1))
def test_random(method, rows, depth, channels, per_channel, relu, engine_case, seed):
    run_layers(method, np.random.default_rng(seed), rows, depth, channels, per_channel, relu,
               engine_case)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("extreme", [-128, 127])
def test_extreme_accumulators(method, extreme):
    """Maximal |accumulator| (x = 255, |w - zw| up to 255) and pair saturation; outputs saturate."""
    rng = np.random.default_rng(200 + extreme)
    for engine_case in ENGINE_CASES[:3]:
        run_layers(method, rng, 13, 517, 40, True, False, engine_case, extreme=extreme)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("rows, depth, channels", [
    (1, 1, 1), (1, 3, 1), (5, 7, 1), (1, 64, 300), (12000, 16, 24), (700, 150, 96),
    (40, 33, 1280), (257, 5, 65)])
def test_edge_shapes(method, rows, depth, channels):
    """M = 1, N = 1, K not a multiple of 4; M across several chunks (12000 x 24: chunks of 2728 rows)
    and epilogue blocks; N across panels, and large N (one row per epilogue block)."""
    rng = np.random.default_rng(rows * 7 + depth * 3 + channels)
    run_layers(method, rng, rows, depth, channels, True, True, ("x86", "avx512_vnni"))


@pytest.mark.parametrize("method", METHODS)
def test_narrow_panels_symmetric_weights(method):
    """zw = 0 (no row sums) and nonzero, narrow panels (vnni wide tiles 12 x 1 and 8 x 2 zmm), N =
    1..16 and around the panel edges, K = 1..20, M not a multiple of 8 or 12 and across chunks."""
    rng = np.random.default_rng(1314)
    engine_case = ("x86", "avx512_vnni")
    all_columns = list(range(1, 17)) + [24, 32, 33, 96]
    for case, channels in enumerate(all_columns):
        steps_list = layers(*engine_case, channels, rng, True, bool(case % 2))
        label, steps, out_dtype, _, _ = steps_list[0]
        for depth in range(1, 21, 3 if channels > 4 else 1):
            rows = (1, 7, 13, 23, 37, 97, 3001)[(case + depth) % 7]
            x = rng.integers(0, 256, (rows, depth)).astype(np.uint8)
            weight = rng.integers(-128, 128, (channels, depth)).astype(np.int8)
            kind = (case + depth) % 3
            weight_zero_point = (0 if kind == 0 else np.zeros(channels, np.int64) if kind == 1
                                 else rng.integers(-128, 128, channels))
            check(method, x, weight, int(rng.integers(0, 256)), weight_zero_point, steps,
                  out_dtype, None, False, f"{label} M,K,N={rows},{depth},{channels} zw {kind}")


@pytest.mark.parametrize("method", METHODS)
def test_threads_equal_one_thread(method):
    rng = np.random.default_rng(3)
    run_layers(method, rng, 203, 40, 70, True, False, ("fbgemm", "avx2"), parallel=3)


def test_refusals():
    method = AVAILABLE[0]
    weight = np.ones((4, 8), np.int8)
    packed = gemm.pack_weights(weight)
    epilogue = compile_epilogue((rq.ToFloat32("f"),), 4, np.float32)
    x = np.zeros((2, 8), np.uint8)
    with pytest.raises(UnsupportedError):
        fused.gemm_requantize_fast(x, packed, 300, 0, method, epilogue)  # zx outside uint8
    other = compile_epilogue((rq.ToFloat32("f"),), 5, np.float32)
    with pytest.raises(QexactError):
        fused.gemm_requantize_fast(x, packed, 0, 0, method, other)
    out = np.empty((2, 4), np.float32)
    assert fused.gemm_requantize_fast(x, packed, 0, 0, method, epilogue, out=out) is out
    assert fused.gemm_requantize_fast(x[:0], packed, 0, 0, method, epilogue).shape == (0, 4)


def test_chunk_rows():
    assert fused.chunk_rows(16, 24, 4) % 4 == 0
    assert fused.chunk_rows(16, 24, 24) % 24 == 0  # vnni: whole 4-, 8- and 12-row tiles
    assert fused.chunk_rows(64, 1280, 4) >= 4
    assert fused.chunk_rows(100000, 16, 6) == 6


def test_tally():
    """Printed with -s: how much was compared."""
    print(f"\nfused GEMM + epilogue: {COMPARED['elements']} outputs compared, "
          f"{COMPARED['saturated_outputs']} at the output type's bounds, 0 differing")
