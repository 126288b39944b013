"""``diagnose(net, x, theirs, layer=NAME)`` for the op families other than Linear: each mistake,
made by an independent wrong implementation (``support/mistakes_ops.py``: plain NumPy from the
layer's parameters and its exact input), is named first; noise is explained by nothing; a node of
a family without mistake models gets a diagnosis without findings (never an error).
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import qexact

torch = pytest.importorskip("torch")

from qexact.diagnose import CATALOG, FAMILIES  # noqa: E402
from support import mistakes, mistakes_ops  # noqa: E402  (need torch)

pytestmark = pytest.mark.torch


@functools.lru_cache(maxsize=None)
def case(key: str) -> mistakes.Case:
    return mistakes_ops.CASES[key]()


@functools.lru_cache(maxsize=None)
def diagnosis_of(key: str) -> qexact.Diagnosis:
    made = case(key)
    return qexact.diagnose(made.net, made.x, made.theirs, layer=made.layer)


def exact_codes(made: mistakes.Case) -> np.ndarray:
    return made.net.run_values(made.x)[made.layer].values.astype(np.int64)


def test_every_catalog_id_has_a_case():
    """Linear's cases (support/mistakes.py) and these cover the catalog; every mistake of an
    op family other than Linear has a case of that family."""
    assert set(mistakes.CASES) | set(mistakes_ops.EXPECTED.values()) == set(qexact.CATALOG_IDS)
    assert set(mistakes_ops.EXPECTED) == set(mistakes_ops.CASES)
    for deviation in CATALOG:
        families = [op for op in deviation.ops if op not in ("linear", "*")]
        if families and deviation.id not in mistakes.CASES:
            assert deviation.id in mistakes_ops.EXPECTED.values(), deviation.id
    assert {"conv", "add", "add_relu", "mul", "avg_pool", "adaptive_avg_pool", "max_pool",
            "activation", "upsample"} <= set(FAMILIES)


@pytest.mark.parametrize("key", sorted(key for key in mistakes_ops.CASES))
def test_wrong_implementation_is_right_without_its_mistake(key):
    made = case(key)
    if made.control is None:
        pytest.skip("no integer pipeline of the engine's to switch the mistake off in")
    np.testing.assert_array_equal(made.control, exact_codes(made))
    assert not np.array_equal(made.theirs, made.control), "the mistake does not show"


@pytest.mark.parametrize("key", sorted(mistakes_ops.CASES))
def test_mistake_is_ranked_first(key):
    made = case(key)
    identifier = mistakes_ops.EXPECTED[key]
    diagnosis = diagnosis_of(key)
    ids = [finding.id for finding in diagnosis.findings]
    assert diagnosis.layer == made.layer and diagnosis.differing > 0
    assert ids and ids[0] == identifier, (made.what, diagnosis.render("text"))
    top = diagnosis.findings[0]
    assert top.explained_count == len(top.explained) > 0
    assert top.precision >= 0.9
    if diagnosis.combination is not None:
        assert diagnosis.combination.id == identifier
    exact, theirs = diagnosis.exact, diagnosis.theirs
    for index in top.explained[:50]:
        assert exact[index] != theirs[index]
    assert len(set(ids)) == len(ids) and set(ids) <= set(qexact.CATALOG_IDS)
    document = json.loads(diagnosis.render("json"))
    assert document["schema"] == "qexact-diagnosis" and document["schema_version"] == 1
    assert document["findings"][0]["id"] == identifier
    assert document["op"] == next(n.op for n in made.net.graph.nodes if n.name == made.layer)
    assert max(len(line) for line in diagnosis.render("text").split("\n")) <= 80


@pytest.mark.parametrize("key", ["conv_padding_zero", "add_requantize_each",
                                 "adaptive_pool_largest_window", "upsample_rounded_index"])
def test_mistake_is_ranked_first_from_floats(key):
    """The same numbers as the user would print them: s_out * (q - z_out) in float64."""
    made = case(key)
    output = made.net.run_values(made.x)[made.layer].qparams
    theirs = float(output.scale) * (made.theirs.astype(np.float64) - int(output.zero_point))
    diagnosis = qexact.diagnose(made.net, made.x, theirs, layer=made.layer)
    assert not diagnosis.integer
    assert diagnosis.findings and diagnosis.findings[0].id == mistakes_ops.EXPECTED[key], (
        diagnosis.render())


def test_variants_are_named():
    assert "each input requantized" in diagnosis_of("add_requantize_each").findings[0].variant
    assert "count_include_pad" in diagnosis_of("avg_pool_divisor").findings[0].variant
    assert "largest window" in diagnosis_of("adaptive_pool_largest_window").findings[0].variant
    assert "+ 0.5" in diagnosis_of("upsample_rounded_index").findings[0].variant
    assert "float64" in diagnosis_of("hardswish_formula").findings[0].variant


@pytest.mark.parametrize("layer", ["stem.0", "add_relu", "pool", "head"])
def test_integer_noise_is_explained_by_nothing(layer):
    net, x, values = mistakes_ops.cnn("resnet", "fbgemm")
    exact = values[layer].values.astype(np.int64)
    rng = np.random.default_rng(5)
    noise = rng.choice([-1, 0, 1], size=exact.shape, p=[0.2, 0.6, 0.2])
    theirs = np.clip(exact + noise, 0, 255)
    diagnosis = qexact.diagnose(net, x, theirs, layer=layer)
    assert diagnosis.differing == int((theirs != exact).sum()) > 0
    assert diagnosis.findings == (), diagnosis.render("text")
    assert diagnosis.summary.startswith("No known deviation explains this")


@pytest.mark.parametrize("layer", ["stem.0", "add_relu", "pool", "flatten", "fc"])
def test_exact_numbers_have_nothing_to_diagnose(layer):
    net, x, values = mistakes_ops.cnn("resnet", "fbgemm")
    diagnosis = qexact.diagnose(net, x, values[layer].values, layer=layer)
    assert diagnosis.differing == 0 and diagnosis.findings == ()


@pytest.mark.parametrize("model, layer", [("detector", "cat"), ("resnet", "flatten"),
                                          ("shufflenet_v2", "transpose")])
def test_family_without_mistake_models(model, layer):
    """A layer of an op family without mistake models: a diagnosis without findings."""
    net, x, values = mistakes_ops.cnn(model, "fbgemm")
    exact = values[layer].values.astype(np.int64)
    theirs = exact.copy()
    theirs.reshape(-1)[::7] = 255 - theirs.reshape(-1)[::7]
    diagnosis = qexact.diagnose(net, x, theirs, layer=layer)
    assert diagnosis.differing > 0 and diagnosis.findings == ()
    assert diagnosis.summary.startswith("No known deviation explains this")


def test_conv_numbers_of_another_engine():
    """A conv's numbers computed with another ISA's pair saturation: the engine named."""
    made = case("conv_pair_saturation")
    vnni = qexact.Net(made.net.graph, "fbgemm", "avx512_vnni")
    theirs = vnni.run_values(made.x)["conv"].values
    diagnosis = qexact.diagnose(made.net, made.x, theirs, layer="conv")
    ids = [finding.id for finding in diagnosis.findings]
    assert ids[:2] == ["int16_pair_saturation", "wrong_engine"], diagnosis.render()
    assert "avx512_vnni" in diagnosis.findings[1].variant


def test_docs_list_every_catalog_id():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "diagnose.md").read_text()
    for deviation in CATALOG:
        assert f"| `{deviation.id}` |" in page, deviation.id
