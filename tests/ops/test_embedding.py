"""Quantized embedding lookups (quantized::embedding_bag_byte/4bit[_rowwise_offsets],
embedding_byte/4bit, nnq.Embedding, nnq.EmbeddingBag): bit-exact differential tests vs PyTorch.

Random tables come from PyTorch's own float prepacks (``embedding_bag_byte_prepack``,
``embedding_bag_4bit_prepack``) and from per-row float qparams (``ops.embedding.pack_rows``, as
the modules' prepack). Cases: empty bags, single-index bags, repeated indices, bags of hundreds
of rows (the accumulation order shows), negative and zero per-sample weights, int32/int64
indices and offsets, include_last_offset, 2-D indices, and the float modules' ``mode`` and
``padding_idx`` (which PyTorch's quantized modules do not apply).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.assertions import assert_bitexact

from qexact import ShapeError, UnsupportedError
from qexact.ops.embedding import (EmbeddingBagOp, embedding_bag, pack_rows,
                                  prepare_embedding_bag, unpack_rows)


def _torch():
    return pytest.importorskip("torch")


def torch_rows(weight: np.ndarray, bits: int) -> np.ndarray:
    """PyTorch's packed rows of a float table (FBGEMM's float prepack)."""
    torch = _torch()
    prepack = (torch.ops.quantized.embedding_bag_byte_prepack if bits == 8 else
               torch.ops.quantized.embedding_bag_4bit_prepack)
    return prepack(torch.from_numpy(np.ascontiguousarray(weight, np.float32))).numpy()


def torch_bag(rows, bits, indices, offsets, weights=None, include_last_offset=False):
    torch = _torch()
    op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if bits == 8 else
          torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
    tensor = (lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a)))
    return op(tensor(rows), tensor(indices), tensor(offsets),
              per_sample_weights=tensor(weights),
              include_last_offset=include_last_offset).numpy()


def check(engine, rows, bits, indices, offsets, weights=None, include_last_offset=False):
    import torch

    expected = torch_bag(rows, bits, indices, offsets, weights, include_last_offset)
    p = prepare_embedding_bag(rows, bits, engine=engine, include_last_offset=include_last_offset)
    actual = embedding_bag(indices, offsets, p, weights)
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert_bitexact(actual.view(np.uint32), expected.view(np.uint32),
                    f"{engine} ({torch.backends.quantized.engine}) {bits}-bit rows {rows.shape} "
                    f"indices {np.shape(indices)} weighted {weights is not None} "
                    f"include_last_offset {include_last_offset}")
    return expected.size


def random_case(rng, bits, long_bags=False):
    count = int(rng.integers(1, 60))
    dim = int(rng.integers(1, 70)) * (2 if bits == 4 else 1)
    if rng.random() < 0.15:
        dim = int(rng.integers(64, 260)) // 2 * 2  # several SIMD registers and a masked tail
    weight = rng.standard_normal((count, dim)) * 10.0 ** rng.uniform(-4, 4)
    if rng.random() < 0.2:
        weight[:, : dim // 2] += 10.0 ** rng.uniform(-2, 5)  # rows far from zero: large biases
    rows = torch_rows(weight, bits)
    bags = int(rng.integers(0, 9))
    lengths = rng.integers(0, 400 if long_bags else 6, bags)
    indices = rng.integers(0, count, int(lengths.sum()))
    if rng.random() < 0.3 and indices.size:  # repeated indices
        indices[:] = indices[0]
    include_last_offset = bool(rng.integers(0, 2))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if not include_last_offset:
        offsets = offsets[:-1]
    weights = None
    if rng.random() < 0.5:
        weights = rng.standard_normal(indices.size).astype(np.float32)
        weights[rng.random(indices.size) < 0.1] = 0.0
    index_type = np.int32 if rng.random() < 0.3 else np.int64
    offset_type = np.int32 if rng.random() < 0.3 else np.int64
    return (rows, bits, indices.astype(index_type), offsets.astype(offset_type), weights,
            include_last_offset)


@pytest.mark.torch
def test_embedding_bag_random_vs_torch(engine, report):
    """120 random lookups per engine (both bit widths), every float32 bit equal; the ops read
    no engine, so each engine must give the same bits."""
    rng = np.random.default_rng([11, len(engine), ord(engine[0])])
    elements = 0
    for case in range(120):
        elements += check(engine, *random_case(rng, 8 if case % 2 else 4, long_bags=case % 9 == 0))
    report[f"embedding_bag {engine}"].update(cases=120, elements=elements)
    assert elements > 5_000


@pytest.mark.torch
@settings(max_examples=60)
@given(data=st.data())
def test_embedding_bag_hypothesis_vs_torch(data):
    """Hypothesis-chosen tables, bags and weights (fixed seeds: the derandomized profile)."""
    _torch()
    bits = data.draw(st.sampled_from([8, 4]))
    count = data.draw(st.integers(1, 12))
    dim = data.draw(st.integers(1, 40)) * (2 if bits == 4 else 1)
    values = st.floats(-1e4, 1e4, allow_nan=False, width=32)
    weight = np.array(data.draw(st.lists(values, min_size=count * dim, max_size=count * dim)),
                      np.float32).reshape(count, dim)
    lengths = data.draw(st.lists(st.integers(0, 7), min_size=0, max_size=6))
    indices = np.array(data.draw(st.lists(st.integers(0, count - 1), min_size=sum(lengths),
                                          max_size=sum(lengths))), np.int64)
    weighted = data.draw(st.booleans())
    weights = np.array(data.draw(st.lists(values, min_size=indices.size, max_size=indices.size)),
                       np.float32) if weighted else None
    include_last_offset = data.draw(st.booleans())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if not include_last_offset:
        offsets = offsets[:-1]
    check("fbgemm", torch_rows(weight, bits), bits, indices, offsets, weights,
          include_last_offset)


@pytest.mark.torch
@pytest.mark.parametrize("bits", [8, 4])
def test_edge_cases_vs_torch(bits):
    """Empty bags (+0.0), single rows, one row repeated 3,000 times (the sum's rounding order),
    negative and zero weights, a zero-range row (scale 0 or 1), no bags at all."""
    rng = np.random.default_rng(bits)
    weight = rng.standard_normal((7, 16)).astype(np.float32) * 3
    weight[3] = 0.25  # a constant row
    weight[4] = -1e-30
    rows = torch_rows(weight, bits)
    cases = [
        (np.array([], np.int64), np.array([0, 0, 0], np.int64), None),          # empty bags
        (np.array([5], np.int64), np.array([0], np.int64), None),
        (np.full(3000, 2, np.int64), np.array([0, 1000], np.int64), None),      # long bags
        (np.arange(7), np.array([0, 2, 2, 5], np.int64),
         np.array([-1.5, 0.0, 2.0, -0.0, 1e-20, -3e3, 7.0], np.float32)),
        (np.array([3, 4, 3, 4]), np.array([0, 2], np.int64), None),
        (np.array([], np.int64), np.array([], np.int64), None),                 # no bags
    ]
    for indices, offsets, weights in cases:
        check("fbgemm", rows, bits, indices, offsets, weights)
    check("fbgemm", rows, bits, np.arange(7).reshape(7, 1), None)               # 2-D, bags of one
    check("fbgemm", rows, bits, rng.integers(0, 7, (4, 5)), None,
          rng.standard_normal((4, 5)).astype(np.float32))
    check("fbgemm", rows, bits, np.array([], np.int64), np.array([0], np.int64),
          include_last_offset=True)                                             # zero bags
    check("fbgemm", rows, bits, np.array([1, 2], np.int64), np.array([], np.int64))


@pytest.mark.torch
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_do_not_change_bags(threads):
    """The 8-bit op splits bags over threads (at::parallel_for): each bag keeps its order."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(threads)
        for bits in (8, 4):
            rows = torch_rows(rng.standard_normal((50, 32)), bits)
            lengths = rng.integers(0, 40, 300)
            check("fbgemm", rows, bits, rng.integers(0, 50, int(lengths.sum())),
                  np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64))
    finally:
        torch.set_num_threads(previous)


SCRIPT = """
import sys, numpy as np, torch
sys.path.insert(0, {tests!r})
from ops.test_embedding import random_case, check
rng = np.random.default_rng(5)
print(sum(check("fbgemm", *random_case(rng, 8 if case % 2 else 4, case % 5 == 0))
          for case in range(40)))
"""


@pytest.mark.torch
def test_avx2_jit_gives_the_same_bits_subprocess():
    """FBGEMM_ENABLE_INSTRUCTIONS=AVX2: FBGEMM emits its AVX2 kernels (8 lanes, unmasked
    tail); lanes are independent, so the bits are the AVX512 kernels' (and qexact's)."""
    tests = os.path.dirname(os.path.dirname(__file__))
    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT.format(tests=tests)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) > 500


@pytest.mark.torch
@pytest.mark.parametrize("bits", [8, 4])
def test_nan_payloads_follow_the_instructions(bits):
    """Rows of arbitrary bytes (NaN, infinite, subnormal scales and biases; what the byte kernel
    reads from 4-bit rows in nnq.Embedding's from_float bug): x86 returns each instruction's
    first NaN operand, quieted, so even NaN payloads must match."""
    rng = np.random.default_rng(bits + 1)
    tail = 8 if bits == 8 else 4
    elements = nans = 0
    for case in range(40):
        rows = rng.integers(0, 256, (25, int(rng.integers(1, 20)) * 2 + tail)).astype(np.uint8)
        if case % 2:  # exponent bytes all ones: NaN or infinite scales and biases
            for end in (-1, -1 - tail // 2):
                rows[:, end] |= 0x7F if bits == 8 else 0x7C
        indices = rng.integers(0, 25, 48)
        weights = rng.standard_normal(48).astype(np.float32) if case % 3 else None
        if case % 5 == 0 and weights is not None:
            weights[::7] = np.float32("nan")
        elements += check("fbgemm", rows, bits, indices, np.arange(0, 48, 6), weights)
        nans += int(np.isnan(torch_bag(rows, bits, indices, np.arange(0, 48, 6), weights)).sum())
    assert nans > 100 and elements > nans


# --- Modules: nnq.Embedding and nnq.EmbeddingBag ---------------------------------------------


def _module(kind, bits, **kwargs):
    import torch
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization import (float_qparams_weight_only_qconfig,
                                       float_qparams_weight_only_qconfig_4bit)

    float_module = getattr(torch.nn, kind)(23, 12, **kwargs)
    with torch.no_grad():
        float_module.weight.normal_(0, 2)  # padding_idx's row too: PyTorch's module sums it
    float_module.qconfig = (float_qparams_weight_only_qconfig if bits == 8 else
                            float_qparams_weight_only_qconfig_4bit)
    return getattr(nnq, kind).from_float(float_module)


def _module_params(module, engine):
    from qexact.importers.torch_embedding import rows_of_packed

    rows, row_bits = rows_of_packed(module._packed_params._packed_weight, "module")
    bits = 4 if str(module.dtype) == "torch.quint4x2" else 8
    return prepare_embedding_bag(rows, bits, engine=engine, bag=hasattr(module, "mode"),
                                 include_last_offset=getattr(module, "include_last_offset", False),
                                 mode=getattr(module, "mode", "sum"), row_bit_width=row_bits)


@pytest.mark.torch
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_module_modes(engine, bits, mode, report):
    """nnq.EmbeddingBag from a float module of each mode: PyTorch sums whatever the mode (and
    sums padding_idx's row); qexact gives its bits and says so in ``note``."""
    import torch

    torch.manual_seed(bits)
    module = _module("EmbeddingBag", bits, mode=mode,
                     padding_idx=3 if mode == "sum" else None)
    p = _module_params(module, engine)
    assert ("not applied" in p.note) == (mode != "sum")
    rng = np.random.default_rng(len(mode))
    elements = 0
    for case in range(20):
        lengths = rng.integers(0, 9, 5)
        indices = rng.integers(0, 23, int(lengths.sum()))
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        weights = rng.standard_normal(indices.size).astype(np.float32) if case % 2 else None
        expected = module(torch.from_numpy(indices), torch.from_numpy(offsets),
                          None if weights is None else torch.from_numpy(weights)).numpy()
        actual = embedding_bag(indices, offsets, p, weights)
        assert_bitexact(actual.view(np.uint32), expected.view(np.uint32), f"{engine} {mode}")
        elements += expected.size
    report[f"module EmbeddingBag {engine}"].update(cases=20, elements=elements)


@pytest.mark.torch
@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_module(engine, bits):
    """nnq.Embedding, 1-D and 2-D indices (int32 and int64). For quint4x2, torch 2.13's
    ``from_float`` leaves ``dtype`` quint8, so forward runs ``embedding_byte`` on 4-bit rows
    (6 outputs per index for 12 columns); qexact reproduces it and says so."""
    import torch

    torch.manual_seed(bits)
    module = _module("Embedding", bits, padding_idx=0)
    p = _module_params(module, engine)
    assert ("drops dtype" in p.note) == (bits == 4)
    rng = np.random.default_rng(bits)
    for shape, index_type in (((9,), np.int64), ((4, 6), np.int32), ((1, 1), np.int64)):
        indices = rng.integers(0, 23, shape).astype(index_type)
        expected = module(torch.from_numpy(indices)).numpy()
        actual = embedding_bag(indices, None, p)
        assert actual.shape == expected.shape
        assert_bitexact(actual.view(np.uint32), expected.view(np.uint32), f"{engine} {shape}")


# --- Packed rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 4])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (5, 10)).astype(np.uint8)
    scale = rng.uniform(0.01, 1, 5).astype(np.float32)
    zero_point = rng.uniform(-50, 50, 5).astype(np.float32)
    rows = pack_rows(codes, scale, zero_point, bits)
    assert rows.shape == (5, 10 + 8 if bits == 8 else 5 + 4)
    again, scale_read, bias_read = unpack_rows(rows, bits)
    assert np.array_equal(again, codes)
    expected_bias = -(zero_point * scale).astype(np.float32)
    if bits == 4:
        scale, expected_bias = (a.astype(np.float16).astype(np.float32)
                                for a in (scale, expected_bias))
    assert np.array_equal(scale_read.view(np.uint32), scale.view(np.uint32))
    assert np.array_equal(bias_read.view(np.uint32), expected_bias.view(np.uint32))


# --- Errors ---------------------------------------------------------------------------------------


def test_errors():
    rows = pack_rows(np.zeros((4, 6), np.uint8), np.ones(4), np.zeros(4), 8)
    p = prepare_embedding_bag(rows, 8, engine="fbgemm")
    ok_indices = np.array([0, 1, 2], np.int64)
    with pytest.raises(ShapeError, match="out of range"):
        embedding_bag(np.array([0, 4]), np.array([0]), p)
    with pytest.raises(ShapeError, match="out of range"):
        embedding_bag(np.array([-1]), np.array([0]), p)
    with pytest.raises(ShapeError, match="int32 or int64"):
        embedding_bag(ok_indices.astype(np.uint8), np.array([0]), p)
    with pytest.raises(ShapeError, match="1-D or 2-D"):
        embedding_bag(np.zeros((1, 1, 1), np.int64), None, p)
    with pytest.raises(ShapeError, match="need offsets"):
        embedding_bag(ok_indices, None, p)
    with pytest.raises(ShapeError, match="offsets must be None"):
        embedding_bag(ok_indices.reshape(1, 3), np.array([0]), p)
    for offsets in ([1, 2], [0, 2, 1]):  # PyTorch: other bags, or stale memory
        with pytest.raises(ShapeError, match="undefined"):
            embedding_bag(ok_indices, np.array(offsets), p)
    last = prepare_embedding_bag(rows, 8, engine="fbgemm", include_last_offset=True)
    with pytest.raises(ShapeError, match="undefined"):
        embedding_bag(ok_indices, np.array([0, 2]), last)  # 4-bit: error; 8-bit: drops index 2
    with pytest.raises(ShapeError, match="undefined"):
        embedding_bag(ok_indices, np.array([0]), last)
    with pytest.raises(ShapeError, match="at least one"):
        embedding_bag(ok_indices, np.array([], np.int64), last)
    with pytest.raises(ShapeError, match="per_sample_weights for"):
        embedding_bag(ok_indices, np.array([0]), p, np.ones(2, np.float32))
    with pytest.raises(ShapeError, match="float32"):
        embedding_bag(ok_indices, np.array([0]), p, np.ones(3, np.float16))
    with pytest.raises(UnsupportedError, match="2 bits"):
        prepare_embedding_bag(rows, 2, engine="fbgemm")
    with pytest.raises(UnsupportedError, match="mode"):
        prepare_embedding_bag(rows, 8, engine="fbgemm", mode="median")
    with pytest.raises(ShapeError, match="shorter"):
        unpack_rows(np.zeros((2, 6), np.uint8), 8)
    with pytest.raises(ShapeError, match="even"):
        pack_rows(np.zeros((2, 3), np.uint8), np.ones(2), np.zeros(2), 4)


# --- Explain and the graph op ---------------------------------------------------------------------


def test_explain_replays_the_sum():
    """Explain walks one output element through its bag's terms: the row of each term, the
    weighted scale and bias, ``acc + bias`` and the FMA; the last result is the output."""
    rng = np.random.default_rng(3)
    rows = pack_rows(rng.integers(0, 256, (6, 5)).astype(np.uint8),
                     rng.uniform(0.01, 0.1, 6), rng.uniform(-100, 100, 6), 8)
    p = prepare_embedding_bag(rows, 8, engine="fbgemm")
    indices, offsets = np.array([4, 1, 1, 5]), np.array([0, 0, 3])
    weights = np.array([0.5, -2.0, 3.0, 1.0], np.float32)
    out = embedding_bag(indices, offsets, p, weights)
    stages, upstream = EmbeddingBagOp.explain(p, [indices, offsets, weights], out, (1, 2))
    assert upstream == []
    assert stages[-1].result == out[1, 2]
    assert [s.result for s in stages if s.name == "embedding: row of this term"] == [4, 1, 1]
    fmas = [s for s in stages if "vfmadd231ps" in s.name]
    assert len(fmas) == 3 and fmas[0].values["q"] == p.codes[4, 2]
    empty, _ = EmbeddingBagOp.explain(p, [indices, offsets, weights], out, (0, 0))
    assert empty[-1].result == 0.0 and len(empty) == 1
