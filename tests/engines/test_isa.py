"""ISA-dependent accumulation: int16 pair saturation (``vpmaddubsw``) vs exact VNNI dot products.

- PyTorch runs in a subprocess with ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` and
  ``ONEDNN_MAX_CPU_ISA=AVX2`` (read once, at start-up); inputs and parameters go through
  ``np.save`` files in ``tmp_path``; outputs come back the same way and are compared bit for bit
  with qexact ``isa="avx2"``.
- ``isa="avx512_vnni"`` gives the exact accumulator (the int64 reference) and both ISAs agree
  whenever activations are <= 127.

Scales of inputs and weights are powers of two here, so the float epilogues are exact up to the
output scale and these tests isolate the accumulator (semantics.md section 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

import qexact
from qexact import QINT8, QUINT8, QParams
from qexact.accumulate import reference_matmul
from qexact.ops.linear import linear_accumulator
from qexact.engines import engine_names

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_NAMES = engine_names()
AVX2_ENV = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def onednn_kblocking(engine, x, depth):
    """The open oneDNN AVX2 K-blocking case (K > 256, K % 4 != 0, activations above 127)."""
    return engine == "onednn" and depth > 256 and depth % 4 != 0 and int(x.max()) > 127


def make_case(rng, engine, rows, depth, channels, kind, per_channel, bias, relu):
    if kind == "adversarial":  # x near 255, same-sign weights near +-128 per row
        x = rng.integers(200, 256, size=(rows, depth))
        sign = rng.choice([-1, 1], size=(channels, 1))
        w = np.clip(sign * rng.integers(90, 129, size=(channels, depth)), -128, 127)
    elif kind == "full":
        x = rng.integers(0, 256, size=(rows, depth))
        w = rng.integers(-128, 128, size=(channels, depth))
    else:  # reduce_range activations
        x = rng.integers(0, 128, size=(rows, depth))
        w = rng.integers(-128, 128, size=(channels, depth))
    zero_points = engine != "onednn"
    if per_channel:
        w_scale = 2.0 ** rng.integers(-10, -4, size=channels)
        w_zp = rng.integers(-5, 6, size=channels) if zero_points else np.zeros(channels, np.int64)
    else:
        w_scale = np.array(2.0 ** int(rng.integers(-10, -4)))
        w_zp = np.array(int(rng.integers(-5, 6)) if zero_points else 0)
    x_scale, x_zp = 2.0 ** int(rng.integers(-6, -2)), int(rng.integers(0, 256))
    # output scale matched to the accumulator spread, so saturation changes the bytes
    spread = float(x_scale * np.max(w_scale) * depth * 255 * 128 / 127)
    case = dict(engine=engine, x=x.astype(np.uint8), w=w.astype(np.int8),
                w_scale=np.asarray(w_scale, np.float64), w_zp=np.asarray(w_zp, np.int64),
                per_channel=per_channel, x_scale=x_scale, x_zp=x_zp,
                out_scale=float(np.clip(spread * rng.uniform(0.5, 2.0), 1e-4, 10.0)),
                out_zp=int(rng.integers(0, 256)), relu=relu,
                bias=(rng.standard_normal(channels) * 5).astype(np.float32) if bias else None)
    return case


def qparams_of(case):
    if case["per_channel"]:
        w_qp = QParams.per_channel(case["w_scale"], case["w_zp"], 0, QINT8)
    else:
        w_qp = QParams.per_tensor(float(case["w_scale"]), int(case["w_zp"]), QINT8)
    return (QParams.per_tensor(case["x_scale"], case["x_zp"], QUINT8), w_qp,
            QParams.per_tensor(case["out_scale"], case["out_zp"], QUINT8))


def qexact_output(case, isa):
    x_qp, w_qp, out_qp = qparams_of(case)
    params = qexact.prepare_linear(case["w"], w_qp, case["bias"], x_qp, out_qp, relu=case["relu"],
                                   engine=case["engine"], isa=isa)
    return qexact.linear(qexact.QuantizedArray(case["x"], x_qp), params).values


def save_cases(directory, cases):
    meta = []
    for i, case in enumerate(cases):
        arrays = {k: case[k] for k in ("x", "w", "w_scale", "w_zp")}
        if case["bias"] is not None:
            arrays["bias"] = case["bias"]
        for name, array in arrays.items():
            np.save(os.path.join(directory, f"{i}_{name}.npy"), array)
        meta.append({k: case[k] for k in ("engine", "per_channel", "x_scale", "x_zp",
                                          "out_scale", "out_zp", "relu")}
                    | {"bias": case["bias"] is not None})
    with open(os.path.join(directory, "cases.json"), "w") as f:
        json.dump(meta, f)


TORCH_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import torch
    import qexact
    directory = sys.argv[1]
    load = lambda i, name: np.load(os.path.join(directory, f"{i}_{name}.npy"))
    with open(os.path.join(directory, "cases.json")) as f:
        meta = json.load(f)
    for i, case in enumerate(meta):
        torch.backends.quantized.engine = case["engine"]
        w, w_scale, w_zp = load(i, "w"), load(i, "w_scale"), load(i, "w_zp")
        if case["per_channel"]:
            qw = torch._make_per_channel_quantized_tensor(
                torch.from_numpy(w), torch.from_numpy(w_scale), torch.from_numpy(w_zp), 0)
        else:
            qw = torch._make_per_tensor_quantized_tensor(
                torch.from_numpy(w), float(w_scale), int(w_zp))
        bias = torch.from_numpy(load(i, "bias")) if case["bias"] else None
        packed = torch.ops.quantized.linear_prepack(qw, bias)
        qx = torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(load(i, "x")), case["x_scale"], case["x_zp"])
        op = torch.ops.quantized.linear_relu if case["relu"] else torch.ops.quantized.linear
        out = op(qx, packed, case["out_scale"], case["out_zp"])
        np.save(os.path.join(directory, f"{i}_out.npy"), out.int_repr().numpy())
    print(json.dumps({"torch": torch.__version__,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "qexact_isa": qexact.detect_isa()}))
""")


def run_torch_subprocess(directory, count):
    env = dict(os.environ, **AVX2_ENV)
    result = subprocess.run([sys.executable, "-c", TORCH_SCRIPT, str(directory)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    outputs = [np.load(os.path.join(directory, f"{i}_out.npy")) for i in range(count)]
    return info, outputs


def subprocess_cases():
    rng = np.random.default_rng(20240613)
    cases = []
    depths = [1, 2, 3, 4, 7, 64, 255, 256, 257, 260, 384, 512]
    for engine in ENGINE_NAMES:
        for i, depth in enumerate(depths):
            for kind in ("adversarial", "full", "reduced"):
                case = make_case(rng, engine, rows=int(rng.integers(1, 17)), depth=depth,
                                 channels=int(rng.integers(1, 24)), kind=kind,
                                 per_channel=bool(i % 2), bias=bool(i % 3), relu=bool(i % 4 == 1))
                cases.append(case)
    return cases


@pytest.mark.torch
def test_linear_avx2_subprocess_vs_qexact_avx2(tmp_path):
    """torch with FBGEMM_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2 == qexact isa='avx2'."""
    pytest.importorskip("torch")
    cases = subprocess_cases()
    save_cases(tmp_path, cases)
    info, outputs = run_torch_subprocess(tmp_path, len(cases))
    assert info["qexact_isa"] == "avx2"  # detect_isa honours FBGEMM_ENABLE_INSTRUCTIONS
    compared = kblocking = saturating = 0
    for i, (case, expected) in enumerate(zip(cases, outputs)):
        actual = qexact_output(case, "avx2")
        label = (f"case {i}: {case['engine']} K={case['x'].shape[1]} "
                 f"(torch {info['torch']}, {info['cpu_capability']}, env {AVX2_ENV})")
        if onednn_kblocking(case["engine"], case["x"], case["x"].shape[1]):
            kblocking += 1  # known open issue; compared once the rule lands
            continue
        assert_bitexact(actual, expected, label)
        compared += 1
        saturating += int(not np.array_equal(qexact_output(case, "avx512_vnni"), expected))
    assert compared >= 120 and saturating >= 10, (compared, saturating, kblocking)


@pytest.mark.torch
def test_linear_avx2_subprocess_onednn_kblocking(tmp_path):
    """The oneDNN cases with K > 256, K % 4 != 0 and activations above 127, in the subprocess:
    int16 pairs are formed per K block of oneDNN's AVX2 gemm driver."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    cases = [make_case(rng, "onednn", 8, depth, 16, kind, per_channel, True, False)
             for depth in (257, 258, 259, 262, 300, 511)
             for kind in ("adversarial", "full") for per_channel in (False, True)]
    for case in cases:  # channel c: pairs of 127s at (i, i+1) for i = c mod 16; x = 255
        case["x"][:] = 255
        case["w"][:] = 0
        for i in range(case["x"].shape[1] - 1):
            case["w"][i % 16, i:i + 2] = 127
        case.update(x_scale=2.0**-4, x_zp=0, out_scale=2.0 * case["x"].shape[1] / 16, out_zp=0,
                    w_scale=np.full_like(case["w_scale"], 2.0**-4))
    save_cases(tmp_path, cases)
    _, outputs = run_torch_subprocess(tmp_path, len(cases))
    for i, (case, expected) in enumerate(zip(cases, outputs)):
        assert_bitexact(qexact_output(case, "avx2"), expected, f"K-blocking case {i}")


def test_detect_isa_honours_fbgemm_override():
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2")
    result = subprocess.run([sys.executable, "-c", "import qexact; print(qexact.detect_isa())"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "avx2"


# ---------------------------------------------------------------------------------------------
# avx512_vnni (exact) vs avx2 (saturating), without torch
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINE_NAMES)
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 520), per_channel=st.booleans())
@settings(max_examples=30)
def test_avx512_vnni_accumulator_is_exact(engine, seed, depth, per_channel):
    rng = np.random.default_rng(seed)
    case = make_case(rng, engine, 6, depth, 9, "adversarial", per_channel, False, False)
    x_qp, w_qp, out_qp = qparams_of(case)
    params = qexact.prepare_linear(case["w"], w_qp, None, x_qp, out_qp, engine=engine,
                                   isa="avx512_vnni")
    assert not params.pair_saturation
    zw = np.asarray(w_qp.zero_point, np.int64)
    reference = reference_matmul(case["x"].astype(np.int64) - x_qp.zero_point,
                                 (case["w"].astype(np.int64) - (zw[:, None] if zw.ndim else zw)).T)
    assert_bitexact(linear_accumulator(case["x"], params).astype(np.int64), reference,
                    f"{engine} K={depth}")


@pytest.mark.parametrize("engine", ["fbgemm", "x86", "onednn"])
def test_avx2_accumulator_saturates_pairs(engine):
    """Adversarial inputs: the avx2 accumulator is the pairwise-saturated sum, by brute force."""
    rng = np.random.default_rng(3)
    depth = 37
    case = make_case(rng, engine, 5, depth, 6, "adversarial", False, False, False)
    x_qp, w_qp, out_qp = qparams_of(case)
    params = qexact.prepare_linear(case["w"], w_qp, None, x_qp, out_qp, engine=engine, isa="avx2")
    assert params.pair_saturation
    x, w = case["x"].astype(np.int64), case["w"].astype(np.int64)
    zw = int(w_qp.zero_point)
    expected = np.zeros((5, 6), np.int64)
    for m in range(5):
        for n in range(6):
            raw = 0
            for t in range(0, depth, 2):
                pair = x[m, t] * w[n, t] + (x[m, t + 1] * w[n, t + 1] if t + 1 < depth else 0)
                raw += min(max(pair, -32768), 32767)
            # exact zero-point corrections: - z_x*col_off - row_off*z_w (+ K*z_x*z_w folded in)
            expected[m, n] = (raw - x_qp.zero_point * (w[n].sum() - zw * depth)
                              - x[m].sum() * zw)
    actual = linear_accumulator(case["x"], params).astype(np.int64)
    assert_bitexact(actual, expected, engine)
    exact = reference_matmul(x - x_qp.zero_point, (w - zw).T)
    assert (actual != exact).all()  # every element saturates here


@pytest.mark.parametrize("engine", ENGINE_NAMES)
@given(seed=st.integers(0, 2**32 - 1), depth=st.integers(1, 520), per_channel=st.booleans(),
       bias=st.booleans(), relu=st.booleans())
@settings(max_examples=30)
def test_isas_agree_on_reduced_range(engine, seed, depth, per_channel, bias, relu):
    """Activations <= 127: no pair can reach 32768, so avx2 and avx512_vnni are identical."""
    rng = np.random.default_rng(seed)
    case = make_case(rng, engine, 7, depth, 5, "reduced", per_channel, bias, relu)
    case["w"][:, ::2] = -128  # the most negative pairs still fit: 127*(-128)*2 = -32512
    x_qp, w_qp, out_qp = qparams_of(case)
    accs = []
    for isa in ("avx2", "avx512_vnni"):
        params = qexact.prepare_linear(case["w"], w_qp, case["bias"], x_qp, out_qp,
                                       relu=relu, engine=engine, isa=isa)
        accs.append(linear_accumulator(case["x"], params).astype(np.int64))
    assert_bitexact(accs[0], accs[1], f"{engine} accumulators")
    assert_bitexact(qexact_output(case, "avx2"), qexact_output(case, "avx512_vnni"), engine)


def test_isas_differ_on_full_range():
    """The saturation is observable in output bytes (fbgemm, adversarial)."""
    rng = np.random.default_rng(11)
    case = make_case(rng, "fbgemm", 8, 64, 8, "adversarial", False, True, False)
    case.update(x_zp=0, out_zp=128,
                out_scale=case["x_scale"] * float(case["w_scale"]) * 64 * 255 * 128 / 127)
    assert not np.array_equal(qexact_output(case, "avx2"), qexact_output(case, "avx512_vnni"))
