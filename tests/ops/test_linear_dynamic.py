"""Dynamically quantized Linear on the eager engines (``quantized::linear_dynamic``,
``linear_relu_dynamic``, ``linear_dynamic_fp16``, ``linear_relu_dynamic_fp16``): bit-exact
differential tests vs PyTorch on every engine where torch runs the op.

- ``choose_qparams`` against ``torch._choose_qparams_per_tensor`` (ATen's
  ``ChooseQuantizationParams``, double scale), reduce_range both ways, the 6.1e-5 floor and the
  0.1 fallback;
- int8: random cases (2-D and 3-D, per-tensor and per-channel weights, bias or not, relu,
  reduce_range both ways), hypothesis, exact ties of the input quantization, degenerate inputs
  (all zero, constant, a range below the scale floor, huge values);
- int16 pair saturation without VNNI (fbgemm and onednn under ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2``
  / ``ONEDNN_MAX_CPU_ISA=AVX2`` in a subprocess, reduce_range False: codes up to 255);
- fp16: FBGEMM's FMA chain, K beyond its 512-row block with N not a multiple of the panel
  width (where blocks are summed apart), weight saturation to +-65504; refused on qnnpack and
  onednn as PyTorch refuses them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

from qexact import QINT8, QParams, UnsupportedError
from qexact.engines import detect_isa, get_engine
from qexact.engines.dynamic_eager import choose_qparams
from qexact.ops.linear_dynamic import (linear_dynamic, linear_fp16, prepare_linear_dynamic,
                                       prepare_linear_fp16)

FP16_ENGINES = ("fbgemm", "x86")
F = np.float32


def _torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    warnings.filterwarnings("ignore", message=".*reduce_range.*")
    return torch


# --- ChooseQuantizationParams ------------------------------------------------------------------

SPECIAL_RANGES = [(0.0, 0.0), (0.0, 1e-9), (-1e-9, 0.0), (-1e-9, 2e-9), (1.0, 1.0), (-3.0, -3.0),
                  (0.0, 1e-38), (-5e-3, 4e-3), (-1.0, 1.0), (-1e30, 1e30), (2.5, 7.0),
                  (-255.0, 0.0), (0.0, 255.0), (-0.0077, 0.0077), (-1e-6, 3e-3)]


@pytest.mark.torch
@pytest.mark.parametrize("reduce_range", [False, True])
def test_choose_qparams_matches_aten(reduce_range):
    torch = _torch()
    rng = np.random.default_rng(11)
    ranges = SPECIAL_RANGES + [tuple(sorted(rng.standard_normal(2) * 10.0 ** rng.uniform(-8, 6)))
                               for _ in range(400)]
    for low, high in ranges:
        x = torch.tensor([low, high], dtype=torch.float32)
        expected = torch._choose_qparams_per_tensor(x, reduce_range)
        got = choose_qparams(float(x[0]), float(x[1]), 0, 255, reduce_range)
        assert got == (expected[0], expected[1]), (low, high, reduce_range)


# --- int8 differential ---------------------------------------------------------------------------


def torch_dynamic(torch, x, weight, w_qp, bias, relu, reduce_range):
    w = torch.tensor(weight, dtype=torch.int8)
    if w_qp.is_per_channel:
        qw = torch._make_per_channel_quantized_tensor(
            w, torch.tensor(w_qp.scale, dtype=torch.float64),
            torch.tensor(w_qp.zero_point, dtype=torch.int64), 0)
    else:
        qw = torch._make_per_tensor_quantized_tensor(w, w_qp.scale, int(w_qp.zero_point))
    packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else torch.tensor(bias))
    op = torch.ops.quantized.linear_relu_dynamic if relu else torch.ops.quantized.linear_dynamic
    return op(torch.tensor(x), packed, reduce_range).numpy()


def check(engine, x, weight, w_qp, bias=None, relu=False, reduce_range=True, report=None):
    torch = _torch()
    expected = torch_dynamic(torch, x, weight, w_qp, bias, relu, reduce_range)
    params = prepare_linear_dynamic(weight, w_qp, bias, relu, engine=engine,
                                    reduce_range=reduce_range)
    assert_bitexact(linear_dynamic(x, params), expected, f"{engine} linear_dynamic",
                    {"shape": x.shape, "relu": relu, "reduce_range": reduce_range,
                     "per_channel": w_qp.is_per_channel})
    if report is not None:
        report[f"{engine} qint8"]["cases"] += 1
        report[f"{engine} qint8"]["elements"] += expected.size


def random_weight(rng, out_features, in_features, per_channel):
    weight = rng.integers(-128, 128, (out_features, in_features)).astype(np.int8)
    if per_channel:
        scales = 10.0 ** rng.uniform(-4, -1, out_features)
        return weight, QParams.per_channel(F(scales).astype(np.float64),
                                           np.zeros(out_features, np.int64), 0, QINT8)
    return weight, QParams.per_tensor(float(F(10.0 ** rng.uniform(-4, -1))), 0, QINT8)


def random_case(rng):
    depth, width = int(rng.integers(1, 90)), int(rng.integers(1, 40))
    shape = ((int(rng.integers(1, 6)), int(rng.integers(1, 5)), depth) if rng.random() < 0.4
             else (int(rng.integers(1, 9)), depth))
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 3)
         + rng.choice([0.0, 0.0, 1.0, -2.0]) * 10.0 ** rng.uniform(-3, 1)).astype(F)
    weight, w_qp = random_weight(rng, width, depth, rng.random() < 0.5)
    bias = (rng.standard_normal(width) * 10.0 ** rng.uniform(-2, 1)).astype(F) \
        if rng.random() < 0.7 else None
    return x, weight, w_qp, bias, bool(rng.random() < 0.3), bool(rng.random() < 0.7)


@pytest.mark.torch
def test_random_cases(engine, report):
    rng = np.random.default_rng(2026)
    for _ in range(120):
        x, weight, w_qp, bias, relu, reduce_range = random_case(rng)
        check(engine, x, weight, w_qp, bias, relu, reduce_range, report)


@pytest.mark.torch
@settings(max_examples=40)
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_hypothesis_cases(seed):
    torch = _torch()
    rng = np.random.default_rng(seed)
    previous = torch.backends.quantized.engine
    try:
        for name in ("fbgemm", "qnnpack", "onednn"):
            torch.backends.quantized.engine = name
            check(name, *random_case(rng))
    finally:
        torch.backends.quantized.engine = previous


@pytest.mark.torch
@pytest.mark.parametrize("reduce_range", [False, True])
def test_ties_of_the_input_quantization(engine, reduce_range, report):
    """Inputs at exact half-steps ``(k + 0.5) * s`` with an odd and an even zero point: the zero
    point is added before rounding (fmaf / reorder), which moves half the ties."""
    rng = np.random.default_rng(3)
    qmax = 127 if reduce_range and engine != "qnnpack" else 255
    for zero_point in (37, 64, 101):
        scale = 2.0 ** -6
        low, high = -zero_point * scale, (qmax - zero_point) * scale
        steps = rng.integers(-zero_point, qmax - zero_point, (4, 48)) + 0.5
        x = (steps * scale).astype(F)
        x[0, 0], x[0, 1] = low, high  # pins min and max, so s = 2^-6 and zp as chosen
        weight, w_qp = random_weight(rng, 24, 48, zero_point % 2 == 1)
        check(engine, x, weight, w_qp, None, False, reduce_range, report)


DEGENERATE = {
    "all zero": np.zeros((3, 16), F),
    "constant positive": np.full((2, 16), 0.75, F),
    "constant negative": np.full((2, 16), -3.0, F),
    "below the scale floor": (np.random.default_rng(4).standard_normal((3, 16)) * 1e-6).astype(F),
    "below the floor, one-sided": np.abs(np.random.default_rng(5).standard_normal((3, 16))
                                         * 1e-7).astype(F),
    "tiny subnormal range": np.array([[1e-40, -2e-41] * 8], F),
    "huge": (np.random.default_rng(6).standard_normal((3, 16)) * 1e30).astype(F),
    "one huge outlier": np.concatenate([np.random.default_rng(7).standard_normal((1, 15)),
                                        [[3e6]]], axis=1).astype(F),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_degenerate_inputs(engine, name, report):
    rng = np.random.default_rng(8)
    for per_channel in (False, True):
        weight, w_qp = random_weight(rng, 12, 16, per_channel)
        bias = rng.standard_normal(12).astype(F)
        for reduce_range in (False, True):
            check(engine, DEGENERATE[name], weight, w_qp, bias, per_channel, reduce_range, report)


def test_refuses_nan_and_infinity():
    weight = np.ones((3, 4), np.int8)
    params = prepare_linear_dynamic(weight, QParams.per_tensor(0.01, 0, QINT8), engine="fbgemm")
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((2, 4), F)
        x[1, 2] = bad
        with pytest.raises(UnsupportedError, match="NaN or an infinity"):
            linear_dynamic(x, params)


def test_onednn_refuses_weight_zero_points():
    weight = np.ones((3, 4), np.int8)
    with pytest.raises(Exception, match="symmetric"):
        prepare_linear_dynamic(weight, QParams.per_tensor(0.01, 3, QINT8), engine="onednn")


def test_qnnpack_ignores_reduce_range():
    """qlinear_dynamic.cpp: qnnpack always quantizes the input to [0, 255]."""
    weight = np.ones((3, 4), np.int8)
    params = prepare_linear_dynamic(weight, QParams.per_tensor(0.01, 0, QINT8),
                                    engine="qnnpack", reduce_range=True)
    assert not params.reduce_range
    assert prepare_linear_dynamic(weight, QParams.per_tensor(0.01, 0, QINT8), engine="fbgemm",
                                  reduce_range=True).reduce_range


# --- Without VNNI: int16 pair saturation (a subprocess with the ISA lowered) ---------------------

AVX2_SCRIPT = r"""
import sys, numpy as np, torch, warnings
warnings.filterwarnings("ignore")
torch.set_num_threads(1)
engine, path = sys.argv[1], sys.argv[2]
torch.backends.quantized.engine = engine
cases = np.load(path, allow_pickle=True).item()
for case in cases.values():
    w = torch.tensor(case["w"])
    if case["per_channel"]:
        qw = torch._make_per_channel_quantized_tensor(w, torch.tensor(case["scale"]),
                                                      torch.zeros(len(case["scale"]), dtype=torch.long), 0)
    else:
        qw = torch._make_per_tensor_quantized_tensor(w, float(case["scale"]), 0)
    bias = None if case["bias"] is None else torch.tensor(case["bias"])
    packed = torch.ops.quantized.linear_prepack(qw, bias)
    op = torch.ops.quantized.linear_relu_dynamic if case["relu"] else torch.ops.quantized.linear_dynamic
    case["y"] = op(torch.tensor(case["x"]), packed, case["reduce_range"]).numpy()
np.save(path, cases, allow_pickle=True)
"""


@pytest.mark.torch
@pytest.mark.parametrize("engine_name", ["fbgemm", "onednn"])
def test_pair_saturation_without_vnni(engine_name, tmp_path, report):
    pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    cases = {}
    for index, depth in enumerate([7, 64, 255, 300, 513, 700, 1100, 258, 262]):
        rows, width = int(rng.integers(1, 5)), int(rng.integers(1, 24))
        x = rng.uniform(0.5, 1.0, (rows, depth)).astype(F)  # codes near 255 (reduce_range off)
        x[:, 0] = -0.01
        sign = rng.choice([-1, 1], (width, 1))
        w = np.clip(sign * rng.integers(90, 129, (width, depth)), -128, 127).astype(np.int8)
        per_channel = index % 2 == 0
        scale = rng.uniform(1e-3, 1e-2, width) if per_channel else float(rng.uniform(1e-3, 1e-2))
        cases[str(index)] = dict(x=x, w=w, scale=scale, per_channel=per_channel,
                                 bias=rng.standard_normal(width).astype(F) if index % 3 else None,
                                 relu=index % 4 == 1, reduce_range=index == 3)
    path = tmp_path / "cases.npy"
    np.save(path, cases, allow_pickle=True)
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    result = subprocess.run([sys.executable, "-c", AVX2_SCRIPT, engine_name, str(path)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    differs_from_vnni = 0
    for key, case in np.load(path, allow_pickle=True).item().items():
        if case["per_channel"]:
            w_qp = QParams.per_channel(case["scale"], np.zeros(len(case["scale"]), np.int64), 0,
                                       QINT8)
        else:
            w_qp = QParams.per_tensor(case["scale"], 0, QINT8)
        outputs = {}
        for isa in ("avx2", "avx512_vnni"):
            params = prepare_linear_dynamic(case["w"], w_qp, case["bias"], case["relu"],
                                            engine=engine_name, isa=isa,
                                            reduce_range=case["reduce_range"])
            outputs[isa] = linear_dynamic(case["x"], params)
        assert_bitexact(outputs["avx2"], case["y"], f"{engine_name} avx2 case {key}")
        differs_from_vnni += int((outputs["avx512_vnni"] != case["y"]).sum())
        report[f"{engine_name} qint8 avx2"]["cases"] += 1
        report[f"{engine_name} qint8 avx2"]["elements"] += case["y"].size
    assert differs_from_vnni > 0  # the cases do saturate


# --- float16 weights ---------------------------------------------------------------------------


def torch_fp16(torch, x, weight, bias, relu):
    packed = torch.ops.quantized.linear_prepack_fp16(
        torch.tensor(weight), None if bias is None else torch.tensor(bias))
    op = (torch.ops.quantized.linear_relu_dynamic_fp16 if relu
          else torch.ops.quantized.linear_dynamic_fp16)
    unpacked, _ = torch.ops.quantized.linear_unpack_fp16(packed)
    return op(torch.tensor(x), packed).numpy(), unpacked.numpy()


FP16_SHAPES = [(3, 600, 40), (2, 1100, 33), (5, 513, 17), (1, 1030, 64), (4, 7, 5), (6, 64, 64),
               (2, 512, 31), (3, 1024, 48), (2, 1537, 70)]


@pytest.mark.torch
def test_fp16_random_cases(engine, report):
    torch = _torch()
    if engine not in FP16_ENGINES:
        with pytest.raises(UnsupportedError, match="linear_prepack_fp16 is currently not"):
            prepare_linear_fp16(np.ones((2, 3), np.float16), engine=engine)
        with pytest.raises(RuntimeError, match="linear_prepack_fp16 is currently not supported"):
            torch.ops.quantized.linear_prepack_fp16(torch.ones(2, 3), None)
        return
    rng = np.random.default_rng(16)
    for index in range(40):
        if index < len(FP16_SHAPES):
            rows, depth, width = FP16_SHAPES[index]
        else:
            rows, depth, width = (int(v) for v in (rng.integers(1, 9), rng.integers(1, 700),
                                                    rng.integers(1, 70)))
        shape = (rows, depth) if index % 5 else (2, rows, depth)
        weight = (rng.standard_normal((width, depth)) * rng.choice([0.01, 1.0, 1e5])).astype(F)
        bias = rng.standard_normal(width).astype(F) if index % 3 else None
        relu = index % 4 == 0
        x = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 100.0])).astype(F)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected, unpacked = torch_fp16(torch, x, weight, bias, relu)
        # PyTorch's prepack: clamp to +-65504, round to nearest even (what qexact does with float32)
        assert_bitexact(prepare_linear_fp16(weight, engine=engine).weight.astype(F), unpacked,
                        "fp16 weight conversion")
        params = prepare_linear_fp16(unpacked.astype(np.float16), bias, relu, engine=engine)
        assert_bitexact(linear_fp16(x, params), expected, f"{engine} fp16 {shape} x {width}")
        report[f"{engine} float16"]["cases"] += 1
        report[f"{engine} float16"]["elements"] += expected.size


def test_fp16_blocks_are_summed_apart_past_the_last_full_panel():
    """The columns beyond the last full panel sum each 512-row K block on its own, then add the
    block sums; full panels run one FMA chain over K. K = 514, x = (2^24, 0, ..., 1, 1): the
    chain rounds each +1 away (2^24 + 1 ties to 2^24), the tail's second block sums 2 first."""
    x = np.zeros((1, 514), F)
    x[0, 0], x[0, 512], x[0, 513] = 2.0 ** 24, 1.0, 1.0
    weight = np.ones((33, 514), np.float16)
    for isa, panel in (("avx512_vnni", 32), ("avx2", 16)):
        params = prepare_linear_fp16(weight, engine=get_engine("fbgemm", isa))
        assert params.gemm.block_cols == panel and params.gemm.block_rows == 512
        out = linear_fp16(x, params)
        assert out[0, 0] == 2.0 ** 24
        assert out[0, 32] == 2.0 ** 24 + 2


def test_fp16_refuses_nan_input():
    params = prepare_linear_fp16(np.ones((2, 3), np.float16), engine="fbgemm")
    with pytest.raises(UnsupportedError, match="NaN or an infinity"):
        linear_fp16(np.array([[1.0, np.nan, 0.0]], F), params)


def test_isa_is_detected():
    assert detect_isa() in ("avx2", "avx512_vnni")
