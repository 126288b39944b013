"""Importing quantized embedding models (DLRM-like): nnq.Embedding / nnq.EmbeddingBag tables
(8-bit and 4-bit, eager ``convert`` and FX ``convert_fx``), float bag outputs concatenated with
dense features into a quantized MLP (QuantStub -> Linear -> ReLU -> Linear -> DeQuantStub), on
every engine; TorchScript (``torch.jit.trace``, in memory and through ``torch.jit.save``);
``qexact.save``/``load``. Every output bit equal to PyTorch's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

DENSE, DIM = 8, 16


class DLRM(torch.nn.Module):
    """Three sparse features (a weighted 8-bit sum bag, a 4-bit ``mode="mean"`` bag with
    ``include_last_offset``, an 8-bit Embedding over 2-D ids summed by a bag of one) and dense
    features, concatenated (float) into a quantized MLP."""

    def __init__(self, bag4_bits: int = 4):
        super().__init__()
        self.bag8 = torch.nn.EmbeddingBag(50, DIM, mode="sum", padding_idx=0)
        self.bag4 = torch.nn.EmbeddingBag(40, DIM, mode="mean", include_last_offset=True)
        self.emb = torch.nn.Embedding(30, DIM)
        self.quant = torch.ao.quantization.QuantStub()
        self.fc1 = torch.nn.Linear(DENSE + 3 * DIM, 24)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(24, 4)
        self.dequant = torch.ao.quantization.DeQuantStub()
        self.bag4_bits = bag4_bits

    def forward(self, dense, ids8, offsets8, weights8, ids4, offsets4, ids):
        features = torch.cat([dense, self.bag8(ids8, offsets8, weights8),
                              self.bag4(ids4, offsets4), self.emb(ids)], 1)
        return self.dequant(self.fc2(self.relu(self.fc1(self.quant(features)))))


def embedding_qconfigs(bag4_bits: int):
    from torch.ao.quantization import (float_qparams_weight_only_qconfig,
                                       float_qparams_weight_only_qconfig_4bit)

    return (float_qparams_weight_only_qconfig,
            float_qparams_weight_only_qconfig_4bit if bag4_bits == 4 else
            float_qparams_weight_only_qconfig)


def inputs(rng, batch=4):
    lengths8, lengths4 = rng.integers(0, 6, batch), rng.integers(0, 6, batch)
    ids8 = rng.integers(0, 50, int(lengths8.sum()))
    ids4 = rng.integers(0, 40, int(lengths4.sum()))
    return (rng.standard_normal((batch, DENSE)).astype(np.float32),
            ids8, np.concatenate([[0], np.cumsum(lengths8)[:-1]]),
            rng.standard_normal(ids8.size).astype(np.float32),
            ids4, np.concatenate([[0], np.cumsum(lengths4)]), rng.integers(0, 30, batch))


def _tensors(arrays):
    return tuple(torch.from_numpy(a) for a in arrays)


def _calibrated(model, prepare):
    torch.manual_seed(0)
    with torch.no_grad():
        for table in (model.bag8, model.bag4, model.emb):
            table.weight.normal_(0, 1)
    rng = np.random.default_rng(1)
    prepared = prepare(model, rng)
    for _ in range(6):
        prepared(*_tensors(inputs(rng)))
    return prepared


def eager_dlrm(engine, bag4_bits=4):
    model = DLRM(bag4_bits).eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    model.bag8.qconfig, model.bag4.qconfig = embedding_qconfigs(bag4_bits)
    model.emb.qconfig = model.bag8.qconfig  # 4-bit nnq.Embedding: see test_embedding_module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = _calibrated(model, lambda m, rng: torch.ao.quantization.prepare(m))
        return torch.ao.quantization.convert(prepared)


def fx_dlrm(engine, bag4_bits=4):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    q8, q4 = embedding_qconfigs(bag4_bits)
    mapping = (get_default_qconfig_mapping(engine).set_module_name("bag8", q8)
               .set_module_name("bag4", q4).set_module_name("emb", q4))
    model = DLRM(bag4_bits).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = _calibrated(model, lambda m, rng: prepare_fx(
            m, mapping, example_inputs=_tensors(inputs(rng))))
        return convert_fx(prepared)


def compare(net, model, rng, runs=6, context=""):
    elements = 0
    for _ in range(runs):
        arrays = inputs(rng, batch=int(rng.integers(1, 6)))
        expected = model(*_tensors(arrays))
        expected = expected if isinstance(expected, tuple) else (expected,)
        actual = net(*arrays)
        actual = actual if isinstance(actual, tuple) else (actual,)
        for mine, theirs in zip(actual, expected):
            theirs = theirs.numpy()
            assert_bitexact(mine.view(np.uint32), theirs.view(np.uint32), context)
            elements += theirs.size
    return elements


@pytest.mark.parametrize("build", [eager_dlrm, fx_dlrm], ids=["eager", "fx"])
def test_dlrm_is_exact(engine, build, report, tmp_path):
    model = build(engine)
    net = qexact.from_torch(model)
    ops = [node.op for node in net.graph.nodes]
    assert ops.count("embedding_bag") == 2 and ops.count("embedding") == 1, ops
    rng = np.random.default_rng([2, len(engine)])
    elements = compare(net, model, rng, context=f"{engine} {build.__name__}")
    assert "not applied" in net.layers["bag4"].note  # mode="mean": PyTorch sums
    path = tmp_path / "dlrm.qexact"
    qexact.save(net, path)
    elements += compare(qexact.load(path), model, rng, context=f"{engine} after load")
    report[f"DLRM {build.__name__} {engine}"].update(cases=12, elements=elements)


class Towers(torch.nn.Module):
    """A DLRM-like model TorchScript import can follow without ``aten::cat``: one quantized
    MLP head per sparse feature."""

    def __init__(self):
        super().__init__()
        self.bag8 = torch.nn.EmbeddingBag(50, DIM, mode="sum")
        self.bag4 = torch.nn.EmbeddingBag(40, DIM, mode="max", include_last_offset=True)
        self.emb = torch.nn.Embedding(30, DIM)
        self.q8, self.q4, self.qe = (torch.ao.quantization.QuantStub() for _ in range(3))
        self.fc8, self.fc4, self.fce = (torch.nn.Linear(DIM, 8) for _ in range(3))
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, dense, ids8, offsets8, weights8, ids4, offsets4, ids):
        return (self.dequant(self.fc8(self.q8(self.bag8(ids8, offsets8, weights8)))),
                self.dequant(self.fc4(self.q4(self.bag4(ids4, offsets4)))),
                self.dequant(self.fce(self.qe(self.emb(ids)))))


def eager_towers(engine, bag4_bits):
    model = Towers().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    model.bag8.qconfig, model.bag4.qconfig = embedding_qconfigs(bag4_bits)
    model.emb.qconfig = model.bag8.qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = _calibrated(model, lambda m, rng: torch.ao.quantization.prepare(m))
        return torch.ao.quantization.convert(prepared)


def _traced(model):
    rng = np.random.default_rng(9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, _tensors(inputs(rng)))


@pytest.mark.parametrize("bag4_bits", [8, 4])
def test_torchscript_is_exact(engine, bag4_bits, report, tmp_path):
    """Traced models in memory; 8-bit ones also through torch.jit.save + from_torch(path)."""
    model = eager_towers(engine, bag4_bits)
    script = _traced(model)
    nets = {"script": qexact.from_torch(script)}
    if bag4_bits == 8:
        path = tmp_path / "towers.pt"
        torch.jit.save(script, str(path))
        nets["file"] = qexact.from_torch(str(path))
    rng = np.random.default_rng([3, bag4_bits])
    for kind, net in nets.items():
        assert {"embedding", "embedding_bag"} <= {node.op for node in net.graph.nodes}
        elements = compare(net, model, rng, runs=5, context=f"{engine} {kind}")
        report[f"TorchScript {kind} {bag4_bits}-bit {engine}"].update(cases=5, elements=elements)


def test_torch_cannot_load_a_saved_4bit_table(tmp_path):
    """torch 2.13's ``torch.jit.load`` fails on a saved quint4x2 table (its storage holds two
    codes a byte, the loader expects one): qexact reports PyTorch's error. The in-memory
    ScriptModule imports (test_torchscript_is_exact)."""
    path = tmp_path / "towers4.pt"
    torch.jit.save(_traced(eager_towers("fbgemm", 4)), str(path))
    with pytest.raises(qexact.ImporterError, match="storage"):
        qexact.from_torch(str(path))


class RowwiseOffsets(torch.nn.Module):
    """The functional form on a uint8 tensor of packed rows (a buffer)."""

    def __init__(self, rows, bits):
        super().__init__()
        self.register_buffer("rows", rows)
        self.op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if bits == 8 else
                   torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)

    def forward(self, ids, offsets, weights):
        return self.op(self.rows, ids, offsets, False, 0, False, weights, None, True)


@pytest.mark.parametrize("bits", [8, 4])
def test_torchscript_rowwise_offsets(bits, tmp_path):
    """``quantized::embedding_bag_*_rowwise_offsets`` in a traced file: rows read as stored."""
    rng = np.random.default_rng(bits)
    weight = torch.from_numpy(rng.standard_normal((20, 12)).astype(np.float32))
    rows = (torch.ops.quantized.embedding_bag_byte_prepack(weight) if bits == 8 else
            torch.ops.quantized.embedding_bag_4bit_prepack(weight))
    model = RowwiseOffsets(rows, bits)

    def example():
        lengths = rng.integers(0, 5, 6)
        ids = rng.integers(0, 20, int(lengths.sum()))
        return ids, np.concatenate([[0], np.cumsum(lengths)]), \
            rng.standard_normal(ids.size).astype(np.float32)

    path = tmp_path / "rowwise.pt"
    torch.jit.save(torch.jit.trace(model, _tensors(example())), str(path))
    net = qexact.from_torch(str(path))
    for _ in range(5):
        arrays = example()
        expected = model(*_tensors(arrays)).numpy()
        assert_bitexact(net(*arrays).view(np.uint32), expected.view(np.uint32), f"{bits}-bit")


def test_pruned_tables_are_refused():
    model = eager_dlrm("fbgemm")
    model.bag8.pruned_weights = True
    with pytest.raises(qexact.UnsupportedError, match="pruned"):
        qexact.from_torch(model)


@pytest.mark.parametrize("build", [eager_dlrm, fx_dlrm], ids=["eager", "fx"])
def test_traced_dlrm_with_float_cat(engine, build, report):
    """The DLRM (8-bit tables; eager and FX converted), traced and saved: an ``aten::cat`` of
    float bag outputs and dense features feeds the quantized MLP."""
    import io

    model = build(engine, 8)
    script = _traced(model)
    buffer = io.BytesIO()
    torch.jit.save(script, buffer)
    buffer.seek(0)
    rng = np.random.default_rng([4, len(engine)])
    elements = 0
    for kind, source in (("traced", script), ("file", torch.jit.load(buffer))):
        net = qexact.from_torch(source)
        assert {"cat", "embedding", "embedding_bag"} <= {node.op for node in net.graph.nodes}
        elements += compare(net, model, rng, runs=4, context=f"{engine} {kind}")
    report[f"traced {build.__name__} (float cat) {engine}"].update(cases=8, elements=elements)
