"""``diagnose``: each catalog mistake, made by an independent wrong implementation, is found first.

The wrong implementations live in ``support/mistakes.py`` (plain NumPy from the layer parameters;
nothing of diagnose's own mistake models). Also: noise is explained by nothing, exact numbers have
nothing to diagnose, and the forum scenario (the output never requantized, and saturating past
the calibrated range) is explained in full. Reports: JSON schema name, text within 80 columns.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import qexact
from qexact.engines import engine_names

torch = pytest.importorskip("torch")

from support import mistakes  # noqa: E402  (needs torch)
from support.models import build, forum_model  # noqa: E402

pytestmark = pytest.mark.torch

from qexact.diagnose import CATALOG  # noqa: E402

LINEAR_IDS = tuple(deviation.id for deviation in CATALOG if deviation.applies_to("linear"))
"""The mistakes Linear's models know (the other op families' are in test_diagnose_ops.py)."""


@functools.lru_cache(maxsize=None)
def case(identifier: str) -> mistakes.Case:
    return mistakes.CASES[identifier]()


@functools.lru_cache(maxsize=None)
def diagnosis_of(identifier: str) -> qexact.Diagnosis:
    made = case(identifier)
    return qexact.diagnose(made.net, made.x, made.theirs, layer=made.layer)


def exact_codes(made: mistakes.Case) -> np.ndarray:
    if made.layer is None:
        return made.net.run_quantized(made.x).values.astype(np.int64)
    return made.net.run_values(made.x)[made.layer].values.astype(np.int64)


def test_every_catalog_id_has_a_case():
    assert set(mistakes.CASES) == set(LINEAR_IDS)
    assert len(LINEAR_IDS) == 17


@pytest.mark.parametrize("identifier", LINEAR_IDS)
def test_wrong_implementation_is_right_without_its_mistake(identifier):
    """The user's implementation with the mistake switched off gives qexact's exact integers, so
    every difference in a case is its mistake's."""
    made = case(identifier)
    if made.control is None:
        pytest.skip("this mistake has no integer pipeline to switch off")
    np.testing.assert_array_equal(made.control, exact_codes(made))
    assert not np.array_equal(made.theirs, made.control), "the mistake does not show"


@pytest.mark.parametrize("identifier", LINEAR_IDS)
def test_mistake_is_ranked_first(identifier):
    made = case(identifier)
    diagnosis = diagnosis_of(identifier)
    ids = [finding.id for finding in diagnosis.findings]
    assert diagnosis.differing > 0
    assert ids and ids[0] == identifier, (made.what, diagnosis.render("text"))
    top = diagnosis.findings[0]
    assert top.explained_count == len(top.explained) > 0
    assert top.precision >= 0.9
    assert top.share == pytest.approx(top.explained_count / diagnosis.differing)
    if diagnosis.combination is not None:
        assert diagnosis.combination.id == identifier
    # Every element it explains differs from the exact output, and is the user's number.
    exact, theirs = diagnosis.exact, diagnosis.theirs
    for index in top.explained[:50]:
        assert exact[index] != theirs[index]
    assert diagnosis.summary.startswith(" + ".join(
        (identifier,) + (diagnosis.combination.combined_with if diagnosis.combination else ())))
    assert len(set(ids)) == len(ids)
    assert set(ids) <= set(qexact.CATALOG_IDS)


@pytest.mark.parametrize("identifier", ["rounding_truncation", "input_zero_point_ignored",
                                        "weight_zero_point_ignored", "per_channel_scales_ignored",
                                        "accumulator_overflow", "fused_relu_ignored",
                                        "reduce_range_mismatch", "wrong_engine"])
def test_mistake_is_ranked_first_from_floats(identifier):
    """The same numbers as the user would print them: real values s_out * (q - z_out), float64."""
    made = case(identifier)
    layer = made.net.layers["fc"]
    theirs = mistakes.dequantized(layer, made.theirs)
    diagnosis = qexact.diagnose(made.net, made.x, theirs, layer=made.layer)
    assert not diagnosis.integer
    assert diagnosis.findings and diagnosis.findings[0].id == identifier, diagnosis.render()


# --- Noise and exact numbers --------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def forum(engine: str):
    previous = torch.backends.quantized.engine
    try:
        model, _ = build(forum_model, engine)
        net = qexact.from_torch(model, engine=engine)
    finally:
        torch.backends.quantized.engine = previous
    return model, net


ENGINES = engine_names()


@pytest.mark.parametrize("engine", ENGINES)
def test_float_noise_is_explained_by_nothing(engine):
    _, net = forum(engine)
    rng = np.random.default_rng(1)
    x = rng.random((200, 10), dtype=np.float32)
    step = net.layers["fc_1"].output_scale
    noise = rng.uniform(0.05, 0.45, (200, 5)) * rng.choice([-1.0, 1.0], (200, 5))
    theirs = net(x).astype(np.float64) + noise * step
    diagnosis = qexact.diagnose(net, x, theirs)
    assert diagnosis.differing == 1000
    assert diagnosis.findings == () and diagnosis.combination is None
    assert diagnosis.summary.startswith("No known deviation explains this")
    assert len(diagnosis.residual) == 1000 and not diagnosis.explained_all
    assert diagnosis.step_differences == {0: 1000}          # all under half a step


@pytest.mark.parametrize("engine", ENGINES)
def test_integer_noise_is_explained_by_nothing(engine):
    _, net = forum(engine)
    rng = np.random.default_rng(2)
    x = rng.random((200, 10), dtype=np.float32)
    exact = net.run_quantized(x).values.astype(np.int64)
    noise = rng.choice([-1, 0, 1], size=exact.shape, p=[0.2, 0.6, 0.2])
    theirs = np.clip(exact + noise, 0, 255)
    diagnosis = qexact.diagnose(net, x, theirs)
    assert diagnosis.integer and diagnosis.differing == int((theirs != exact).sum()) > 100
    assert diagnosis.findings == (), diagnosis.render("text")
    assert diagnosis.summary.startswith("No known deviation explains this")
    assert set(diagnosis.step_differences) == {1}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["floats", "integers", "layer floats", "layer integers"])
def test_exact_numbers_have_nothing_to_diagnose(engine, kind):
    _, net = forum(engine)
    x = np.random.default_rng(3).random((50, 10), dtype=np.float32)
    layer = "fc_1" if kind.startswith("layer") else None
    if kind.endswith("floats"):
        theirs = net(x) if layer is None else qexact.dequantize(net.run_quantized(x))
    else:
        theirs = net.run_quantized(x).values
    diagnosis = qexact.diagnose(net, x, theirs, layer=layer)
    assert diagnosis.differing == 0 and diagnosis.elements == 250
    assert diagnosis.findings == () and diagnosis.residual == ()
    assert not diagnosis.explained_all
    assert diagnosis.summary == "Your numbers equal the exact ones: nothing to diagnose."


def test_wrong_shape_is_shape_error():
    _, net = forum("qnnpack")
    x = np.random.default_rng(4).random((5, 10), dtype=np.float32)
    with pytest.raises(qexact.ShapeError, match=r"your numbers have shape \(5, 4\)"):
        qexact.diagnose(net, x, np.zeros((5, 4)))


# --- The forum scenario ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["qnnpack", "x86"])
def test_forum_scenario(engine):
    """The user computed sum((x_q - z_x)(w_q - z_w)) * s_x * s_w + bias in float64 and compared it
    with PyTorch's output: never requantized, and inputs up to 1.2 go past the calibrated range."""
    model, net = forum(engine)
    torch.manual_seed(5)
    x = (torch.rand(200, 10) * 1.2).numpy()
    quantized = net.run_values(x)["quant"]
    layer = net.layers["fc_1"]
    x_q = quantized.values.astype(np.int64)
    w_q = layer.weight.astype(np.int64)
    z_w = np.asarray(layer.weight_zero_point, np.int64).reshape(-1, 1)
    acc = (x_q - quantized.zero_point) @ (w_q - z_w).T
    theirs = (acc * (quantized.scale * np.asarray(layer.weight_scale, np.float64))
              + layer.float_bias.astype(np.float64))
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with torch.no_grad():
            assert np.array_equal(net(x), model(torch.from_numpy(x)).numpy())
    finally:
        torch.backends.quantized.engine = previous

    diagnosis = qexact.diagnose(net, x, theirs)
    ids = [finding.id for finding in diagnosis.findings]
    assert ids[0] == "missing_output_requantization", diagnosis.render("text")
    assert "output_saturation" in ids
    assert diagnosis.combination is not None
    assert diagnosis.combination.id == "missing_output_requantization"
    assert "output_saturation" in diagnosis.combination.combined_with
    assert diagnosis.explained_all and diagnosis.residual == ()
    assert diagnosis.combination.explained_count == diagnosis.differing
    assert diagnosis.summary.endswith("(all of them).")
    saturation = diagnosis.findings[ids.index("output_saturation")]
    assert saturation.combined_with == ("missing_output_requantization",)
    outside = (theirs < layer.output_scale * (0 - layer.output_zero_point))
    outside |= theirs > layer.output_scale * (255 - layer.output_zero_point)
    assert outside.any()
    assert {tuple(index) for index in np.argwhere(outside)} <= set(saturation.explained)

    document = diagnosis.to_dict()
    assert document["schema"] == "qexact-diagnosis" and document["schema_version"] == 1
    assert json.loads(diagnosis.render("json")) == json.loads(json.dumps(document))
    assert document["findings"][0]["id"] == "missing_output_requantization"
    assert document["residual"] == [] and document["differing"] == diagnosis.differing
    text = diagnosis.render("text")
    assert str(diagnosis) == text
    assert max(len(line) for line in text.split("\n")) <= 80
    assert "1. missing_output_requantization:" in text
    markdown = diagnosis.render("markdown")
    assert "| rank | id | explains | share | with | what it means |" in markdown
    assert "| 1 | `missing_output_requantization` |" in markdown


@pytest.mark.parametrize("identifier", LINEAR_IDS)
def test_reports_of_each_case(identifier):
    diagnosis = diagnosis_of(identifier)
    document = json.loads(diagnosis.render("json"))
    assert document["schema"] == "qexact-diagnosis"
    assert document["findings"][0]["id"] == identifier
    assert document["integer"] == diagnosis.integer
    text = diagnosis.render("text")
    assert max(len(line) for line in text.split("\n")) <= 80
    assert f"1. {identifier}:" in text


def test_equal_counts_fall_back_to_catalog_order():
    """Two genuine ties, settled by catalog order (documented, not a ranking by evidence):
    numbers without pair saturation ARE the VNNI engine's; QNNPACK's numbers with a float bias
    are those of the ideal float64 multiplier on these rows (which also adds the bias as float)."""
    pairs = diagnosis_of("int16_pair_saturation").findings
    assert [f.id for f in pairs[:2]] == ["int16_pair_saturation", "wrong_engine"]
    assert pairs[0].explained == pairs[1].explained and pairs[0].precision == pairs[1].precision
    assert "avx512_vnni" in pairs[1].variant
    bias = diagnosis_of("bias_float_vs_int32").findings
    assert bias[0].id == "bias_float_vs_int32"
    assert bias[0].explained_count == max(f.explained_count for f in bias)


@pytest.mark.parametrize("attribute,value,identifier", [
    ("scale", 1e-40, "degenerate_scale"), ("zero_point", 255, "zero_point_at_top")])
def test_degenerate_qparams_are_named_first(torch1, attribute, value, identifier):
    """A subnormal output scale (x86 runs it; QNNPACK refuses it) and a zero point at the top
    of the quint8 range (no positive output representable): named from the model alone, before
    any mistake, with the layer; the net still equals PyTorch."""
    model, _ = build(forum_model, "x86")
    setattr(model.fc_1, attribute, value)
    net = qexact.from_torch(model, engine="x86")
    x = np.random.default_rng(1).random((6, 10), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(net(x).view(np.uint32), expected.view(np.uint32))
    diagnosis = qexact.diagnose(net, x, expected + 0.5)
    assert [item.id for item in diagnosis.qparams_findings] == [identifier]
    assert diagnosis.qparams_findings[0].layers == ("fc_1",)
    assert diagnosis.summary.startswith("First, the model itself:")


def test_an_uncalibrated_model_is_named_first(torch1):
    """The forum code as pasted: the calibration loop never calls the prepared model, so every
    observer keeps its defaults (scale 1.0, zero point 0) and PyTorch outputs almost all zeros.
    Diagnose says the model was not calibrated, naming the layers, before any mistake."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare

    torch1.backends.quantized.engine = "x86"
    torch.manual_seed(0)
    model = mistakes.OneLinear(10, 5).eval()
    model.qconfig = get_default_qconfig("x86")
    prepared = prepare(model)
    batches = [torch.rand(1, 10) for _ in range(5)]   # ... and never prepared(batch)
    assert batches
    converted = convert(prepared)
    net = qexact.from_torch(converted, example_inputs=(torch.rand(1, 10),), engine="x86")
    x = np.random.default_rng(0).random((8, 10), dtype=np.float32)
    fc = net.layers["fc"]
    theirs = (x.astype(np.float64) @ (fc.weight.astype(np.float64).T
                                      * np.asarray(fc.weight_scale, np.float64).reshape(1, -1))
              + fc.float_bias.astype(np.float64))
    diagnosis = qexact.diagnose(net, x, theirs)
    ids = [item.id for item in diagnosis.qparams_findings]
    assert ids[0] == "uncalibrated_qparams" and "fc" in diagnosis.qparams_findings[0].layers
    assert diagnosis.summary.startswith("First, the model itself: the model was not calibrated")
    text = diagnosis.render("text")
    assert "not calibrated" in text and "never ran the prepared model" in text.replace("\n", " ")
    assert json.loads(diagnosis.render("json"))["qparams_findings"][0]["id"] == ids[0]
    from qexact.report import render_diagnosis_html

    page = render_diagnosis_html(diagnosis)
    assert "First, the model itself" in page and "never ran the prepared model" in page
    calibrated = case("bias_float_vs_int32")
    assert qexact.diagnose(calibrated.net, calibrated.x, calibrated.theirs,
                           layer="fc").qparams_findings == ()
