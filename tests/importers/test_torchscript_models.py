"""Float ``nn.Embedding`` / ``F.embedding`` left unconverted (FX's default qconfig mapping has no
Embedding; an eager model whose table has no qconfig): the ``float_embedding`` op, an exact
gather, imported eager, FX (module and functional forms) and from TorchScript
(``aten::embedding``, weight first; traced and saved). ``max_norm`` is refused: its forward
renormalizes the table's rows in place. Every output bit equal to PyTorch's on every engine.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


class Recommender(torch.nn.Module):
    """A float table (module) and a float table read functionally, into a quantized MLP."""

    def __init__(self, max_norm=None):
        super().__init__()
        self.emb = torch.nn.Embedding(30, 8, padding_idx=0, max_norm=max_norm)
        self.table = torch.nn.Parameter(torch.randn(20, 8))
        self.quant = torch.ao.quantization.QuantStub()
        self.fc = torch.nn.Linear(16, 5)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, ids, other):
        rows = torch.nn.functional.embedding(other, self.table)
        features = torch.cat([self.emb(ids), rows], -1)
        return self.dequant(self.fc(self.quant(features))), rows


def _inputs(rng, batch):
    return rng.integers(0, 30, (batch, 3)), rng.integers(0, 20, (batch, 3))


def _tensors(arrays):
    return tuple(torch.from_numpy(a) for a in arrays)


def _calibrate(prepared, rng):
    for _ in range(4):
        prepared(*_tensors(_inputs(rng, 4)))
    return prepared


def _eager(engine, rng, max_norm=None):
    model = Recommender(max_norm).eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    model.emb.qconfig = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = _calibrate(torch.ao.quantization.prepare(model), rng)
        return torch.ao.quantization.convert(prepared)


def _fx(engine, rng, max_norm=None):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = Recommender(max_norm).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine),
                              example_inputs=_tensors(_inputs(rng, 2)))
        return convert_fx(_calibrate(prepared, rng))


def _scripts(model, rng):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.trace(model, _tensors(_inputs(rng, 3)))
    buffer = io.BytesIO()
    torch.jit.save(script, buffer)
    buffer.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"traced": script, "file": torch.jit.load(buffer)}


def _compare(net, model, rng, context, runs=4):
    elements = 0
    for _ in range(runs):
        arrays = _inputs(rng, int(rng.integers(1, 6)))
        with torch.no_grad():
            expected = model(*_tensors(arrays))
        actual = net(*arrays)
        assert len(actual) == len(expected)
        for mine, theirs in zip(actual, expected):
            assert_bitexact(np.ascontiguousarray(mine).view(np.uint32),
                            theirs.numpy().view(np.uint32), context)
            elements += theirs.numel()
    return elements


@pytest.mark.parametrize("build", [_eager, _fx], ids=["eager", "fx"])
def test_float_embedding_is_exact(engine, build, report, tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng([5, len(engine)])
    model = build(engine, rng)
    nets = {build.__name__: qexact.from_torch(model)}
    nets.update({kind: qexact.from_torch(script)
                 for kind, script in _scripts(model, rng).items()})
    path = tmp_path / "recommender.qexact"
    qexact.save(nets[build.__name__], path)
    nets["qexact.load"] = qexact.load(path)
    for kind, net in nets.items():
        ops = [node.op for node in net.graph.nodes]
        assert ops.count("float_embedding") == 2, (kind, ops)
        elements = _compare(net, model, rng, f"{engine} {build.__name__} {kind}")
        report[f"float embedding {build.__name__.strip('_')} {kind} {engine}"].update(cases=4,
                                                                          elements=elements)


def test_max_norm_is_refused():
    torch.manual_seed(0)
    rng = np.random.default_rng(6)
    model = _eager("fbgemm", rng, max_norm=1.0)
    with pytest.raises(qexact.UnsupportedError, match="max_norm"):
        qexact.from_torch(model)
    with pytest.raises(qexact.UnsupportedError, match="embedding_renorm"):
        qexact.from_torch(_scripts(model, rng)["traced"])


def test_index_out_of_range_is_an_error():
    from qexact.ops.embedding import float_embedding

    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(float_embedding(np.array([[3, 0]]), table), table[[[3, 0]]])
    with pytest.raises(qexact.ShapeError, match="out of range"):
        float_embedding(np.array([4]), table)
