"""Diagnose a user's wrong numbers: which known mistake reproduces them, element by element.

Each catalog entry is a *model of a mistake*: the exact computation with one thing changed (the
bias added as float instead of int32, ties rounded away from zero, the output never requantized,
...). ``diagnose`` runs every model on the same input, compares each with the user's numbers, and
ranks the mistakes by how many of the differing elements they reproduce, alone and combined.

A mistake model *explains* an element when it reproduces the user's value there while the exact
value differs. It is reported only when it is also *consistent*: wherever it changes the exact
result, the user's numbers follow it (at least ``MIN_PRECISION`` of those elements), so random
noise, which matches a mistake here and there by chance, explains nothing.

Float numbers (a user's dequantized outputs) are matched with ``rtol``/``atol`` (their arithmetic
may be float64 where ours is float32); integers are matched exactly. Catalog ids are public and
stable; ``CATALOG`` lists them with their paragraphs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import numpy as np

from .accumulate import exact_matmul, pair_positions, pair_saturation_correction
from .accumulate import saturating_weight_pairs, weight_pairs_of
from .dtypes import QUINT8
from .engines import AVX2, AVX512_VNNI, ENGINES, LayerQuantization, engine_names, get_engine
from .engines.base import BiasMode
from .engines.qnnpack import quantize_bias
from .errors import QexactError, ShapeError
from .graph import Net, Ref
from .ops.linear import LinearParams, linear, prepare_linear
from .ops.quantize import ZeroPointEntry, dequantize, quantize_values, reciprocal_float32
from .qparams import QParams, QuantizedArray
from .requantize import AddFloat32, AddInt32, ClampInt, Step, ToFloat32
from .rounding import f32, round_half_away, round_half_even, round_toward_zero

MIN_PRECISION = 0.9
MAX_COMBINED = 3
SCHEMA_NAME = "qexact-diagnosis"
SCHEMA_VERSION = 1


# --- The catalog -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
    """What a (possibly mistaken) implementation does differently from the engine."""

    quantize_divide: bool = False           # q = round(x / s) instead of x * f32(1/s)
    zero_point_after_rounding: bool = False  # round(x * inv) + z instead of round(x * inv + z)
    reduce_range: bool = False              # activations quantized to 0..127, scale * 255/127
    input_zero_point: bool = True
    weight_zero_point: bool = True
    pair_saturation: bool | None = None     # None: as the engine and ISA do
    accumulator_bits: int = 32
    output_requantization: bool = True
    output_clamp: bool = True
    bias: str = "engine"                    # "engine", "float32" or "int32"
    rounding: str = "half_even"             # "half_even", "half_away", "truncation"
    multiplier: str = "engine"              # "engine" or "float64"
    per_channel_scales: bool = True
    fused_relu: bool = True
    engine: str | None = None               # another engine's numbers (with ``isa``)
    isa: str | None = None

    def merge(self, other: "Knobs") -> "Knobs | None":
        """Both sets of changes at once, or None where they conflict."""
        default = Knobs()
        merged = {}
        for name in self.__dataclass_fields__:
            mine, theirs, base = getattr(self, name), getattr(other, name), getattr(default, name)
            if mine != base and theirs != base and mine != theirs:
                return None
            merged[name] = mine if mine != base else theirs
        return Knobs(**merged)


@dataclass(frozen=True)
class Deviation:
    id: str
    title: str
    paragraph: str
    knobs: tuple[Knobs, ...]          # one mistake may have several variants (engines, ISAs)

    def applies_to(self, layer: LinearParams, integer_output: bool) -> bool:
        return True


CATALOG: tuple[Deviation, ...] = (
    Deviation("missing_output_requantization", "the output was never requantized",
              "The layer's result was used as the real value acc*s_x*s_w + bias. PyTorch "
              "rounds it to the output's grid: q = round(real / s_out) + z_out, and returns "
              "s_out * (q - z_out), so every output is a multiple of s_out away from -z_out*s_out.",
              (Knobs(output_requantization=False, output_clamp=True),)),
    Deviation("output_saturation", "the output was not clamped to the calibrated range",
              "PyTorch clamps the output integer to 0..255, i.e. to the range the observer saw "
              "during calibration; values beyond it saturate. These numbers go past that range.",
              (Knobs(output_clamp=False),)),
    Deviation("bias_float_vs_int32", "the bias entered in the wrong form",
              "This engine adds the bias as it is stated in its module: QNNPACK quantizes it to "
              "int32 at scale s_x*s_w before adding it to the accumulator; FBGEMM and oneDNN add "
              "it in float32 in the epilogue. These numbers used the other form.",
              (Knobs(bias="float32"), Knobs(bias="int32"))),
    Deviation("rounding_half_away", "ties were rounded away from zero",
              "The requantization rounds half to even (cvtps2dq, nearbyint); these numbers round "
              "x.5 away from zero (C round(), TFLite's reference).",
              (Knobs(rounding="half_away"),)),
    Deviation("rounding_truncation", "the requantization truncated instead of rounding",
              "The requantized value was cut toward zero (a C cast) instead of rounded to the "
              "nearest integer, ties to even.",
              (Knobs(rounding="truncation"),)),
    Deviation("quantize_divide_vs_reciprocal", "the input was quantized by division",
              "PyTorch quantizes with x * f32(1/s) (a float32 reciprocal, fused with the zero "
              "point); these numbers come from x / s, which differs in the last bit often enough "
              "to flip a rounding.",
              (Knobs(quantize_divide=True),)),
    Deviation("zero_point_after_rounding", "the zero point was added after rounding",
              "PyTorch adds the input zero point before rounding, in one fused multiply-add: "
              "round(fmaf(x, 1/s, z)); these numbers round first and add z after.",
              (Knobs(zero_point_after_rounding=True),)),
    Deviation("input_zero_point_ignored", "the input zero point was not subtracted",
              "The dot product must use (x_q - z_x); these numbers used x_q alone.",
              (Knobs(input_zero_point=False),)),
    Deviation("weight_zero_point_ignored", "the weight zero point was not subtracted",
              "The dot product must use (w_q - z_w); these numbers used w_q alone.",
              (Knobs(weight_zero_point=False),)),
    Deviation("per_channel_scales_ignored", "one weight scale was used for every channel",
              "The weights are quantized per output channel, each with its own scale (and zero "
              "point); these numbers use the first channel's scale for all of them.",
              (Knobs(per_channel_scales=False),)),
    Deviation("int16_pair_saturation", "int16 pair saturation was (or was not) modelled",
              "Without VNNI, FBGEMM and oneDNN add pairs of u8*s8 products in int16 with "
              "saturation (vpmaddubsw); with VNNI they do not. These numbers took the other path.",
              (Knobs(pair_saturation=True), Knobs(pair_saturation=False))),
    Deviation("multiplier_precision", "the multiplier was formed in another precision or order",
              "The engine forms its float32 multiplier in a fixed order (and may fuse the bias "
              "with an FMA); these numbers used the ideal float64 value s_x*s_w/s_out.",
              (Knobs(multiplier="float64"),)),
    Deviation("fused_relu_ignored", "the fused ReLU was left out",
              "This layer is LinearReLU: its output is clamped below at the zero point "
              "(real 0.0); these numbers keep negative values.",
              (Knobs(fused_relu=False),)),
    Deviation("reduce_range_mismatch", "the activations were quantized with the other range",
              "With reduce_range the activations use 0..127 (twice the scale) so that int16 "
              "pair sums cannot saturate; these numbers were quantized with reduce_range where "
              "the model has none.",
              (Knobs(reduce_range=True),)),
    Deviation("accumulator_overflow", "the accumulator overflowed",
              "The dot product needs 32 bits (up to K * 255 * 255); these numbers wrapped it "
              "in 16 bits.",
              (Knobs(accumulator_bits=16),)),
    Deviation("wrong_engine", "the numbers are another engine's",
              "These numbers are exactly another PyTorch engine's (or ISA's): each engine has its "
              "own arithmetic (see docs/arithmetic.md). For a PT2E model, the engines are its "
              "deployments: numbers of eager PT2E (pt2e_eager) are not what ExecuTorch's XNNPACK "
              "delegate (xnnpack) or Inductor (inductor) computes on the device.",
              tuple(Knobs(engine=engine, isa=isa) for engine in sorted(ENGINES)
                    for isa in (AVX512_VNNI, AVX2))),
)

CATALOG_IDS = tuple(deviation.id for deviation in CATALOG)


# --- Running a mistake model -----------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A mistake model's output: real values (float64) and, where it has them, integers."""

    real: np.ndarray
    codes: np.ndarray | None


def _target_layer(net: Net, layer: str | None) -> str:
    if layer is not None:
        return layer
    name = net.graph.outputs[0].name
    while True:
        node = net.prepared_node(name).node
        if node.op == "linear":
            return name
        refs = [item for item in node.inputs if isinstance(item, Ref)]
        if not refs or refs[0].name in net.graph.inputs:
            raise QexactError("no Linear layer feeds the model output; pass layer=")
        name = refs[0].name


def _quantize_input(x: np.ndarray, qparams: QParams, knobs: Knobs) -> QuantizedArray:
    dtype = qparams.dtype
    scale, zero_point, high = qparams.scale, qparams.zero_point, dtype.qmax
    if knobs.reduce_range and dtype == QUINT8:
        scale, zero_point, high = scale * 255 / 127, int(round(zero_point * 127 / 255)), 127
    inv = reciprocal_float32(scale)
    if knobs.quantize_divide:
        scaled = f32(f32(x / f32(scale)) + f32(zero_point))
    elif knobs.zero_point_after_rounding:
        scaled = quantize_values(x, inv, zero_point, ZeroPointEntry.ADDED_AFTER_ROUNDING)
    else:
        scaled = quantize_values(x, inv, zero_point, ZeroPointEntry.FUSED_BEFORE_ROUNDING)
    rounded = np.clip(round_half_even(scaled.astype(np.float64)), dtype.qmin, high)
    rounded = np.where(np.isnan(scaled), high, rounded)
    return QuantizedArray(rounded.astype(dtype.numpy_dtype),
                          QParams.per_tensor(scale, zero_point, dtype))


@dataclass(frozen=True, eq=False)
class _Rounding(Step):
    """A rounding step with another tie rule (a model of a mistake, not an engine's step)."""

    rule: str = "half_away"

    def apply(self, value):
        rule = {"half_away": round_half_away, "truncation": round_toward_zero}[self.rule]
        return rule(np.asarray(value, dtype=np.float64)).astype(np.int64)


def _deviated_linear(params: LinearParams, x: QuantizedArray, knobs: Knobs,
                     is_target: bool) -> QuantizedArray | Candidate:
    weight_qparams = params.weight_qparams
    if not knobs.per_channel_scales and weight_qparams.is_per_channel:
        weight_qparams = QParams.per_tensor(float(weight_qparams.scale[0]),
                                            int(weight_qparams.zero_point[0]), weight_qparams.dtype)
    engine = get_engine(params.engine, params.isa)
    numerics = engine.linear
    layer = LayerQuantization(x.qparams.scale, weight_qparams, params.float_bias,
                              params.output_qparams, params.relu and knobs.fused_relu)
    values = x.values.reshape(-1, params.in_features)
    z_x = x.qparams.zero_point if knobs.input_zero_point else 0
    z_w = np.asarray(weight_qparams.zero_point if knobs.weight_zero_point else 0, dtype=np.int64)
    centered_w = params.weight.astype(np.int64) - (z_w[:, None] if z_w.ndim else z_w)
    acc = exact_matmul(values.astype(np.float32) - np.float32(z_x),
                       np.ascontiguousarray(centered_w.T.astype(np.float32)))
    saturate = params.pair_saturation if knobs.pair_saturation is None else knobs.pair_saturation
    if saturate:
        positions = pair_positions(params.in_features, numerics.pair_block_starts(params.in_features))
        pairs = weight_pairs_of(params.weight, positions)
        acc = acc + pair_saturation_correction(values, pairs, saturating_weight_pairs(pairs),
                                               positions)
    if knobs.accumulator_bits == 16:
        acc = ((acc + 32768) & 0xFFFF) - 32768
    shape = x.values.shape[:-1] + (params.out_features,)
    scale_w = np.asarray(weight_qparams.scale, dtype=np.float64)
    if is_target and not knobs.output_requantization:
        real = acc * (x.qparams.scale * scale_w)
        if params.float_bias is not None:
            real = real + params.float_bias.astype(np.float64)
        if params.relu and knobs.fused_relu:
            real = np.maximum(real, 0.0)
        if knobs.output_clamp:
            output = params.output_qparams
            low = output.scale * (output.dtype.qmin - output.zero_point)
            high = output.scale * (output.dtype.qmax - output.zero_point)
            real = np.clip(real, low, high)
        return Candidate(real.reshape(shape), None)
    if knobs.multiplier == "float64":
        real = acc * (x.qparams.scale * scale_w)
        if params.float_bias is not None:
            real = real + params.float_bias.astype(np.float64)
        codes = round_half_even(real / params.output_qparams.scale) + params.output_zero_point
        codes = codes.astype(np.int64)
        if layer.relu:
            codes = np.maximum(codes, params.output_zero_point)
        if knobs.output_clamp or not is_target:
            codes = np.clip(codes, 0, 255)
    else:
        steps = list(numerics.requantization(layer).steps)
        steps = _swap_bias(steps, knobs.bias, layer, numerics.bias_mode)
        if knobs.rounding != "half_even":
            steps = [_Rounding(step.label, step.role, rule=knobs.rounding)
                     if step.role == "round" else step for step in steps]
        if is_target and not knobs.output_clamp:
            steps = [_unclamped(step, layer) for step in steps]
        codes = acc
        for step in steps:
            codes = step.apply(codes)
        codes = np.asarray(codes, dtype=np.int64)
    codes = codes.reshape(shape)
    if is_target:
        output = params.output_qparams
        real = f32(f32(output.scale) * f32(codes - output.zero_point)).astype(np.float64)
        return Candidate(real, codes)
    return QuantizedArray(np.clip(codes, 0, 255).astype(np.uint8), params.output_qparams)


def _unclamped(step: Step, layer: LayerQuantization) -> Step:
    if step.role != "output_clamp":
        return step
    if isinstance(step, ClampInt):
        low = int(layer.output_qparams.zero_point) if layer.relu else -(1 << 40)
        return ClampInt(step.label, step.role, low=low, high=1 << 40)
    return AddFloat32("no saturation", term=np.float32(0.0))


def _swap_bias(steps: list[Step], wanted: str, layer: LayerQuantization,
               engine_mode: BiasMode) -> list[Step]:
    if wanted == "engine" or layer.bias is None:
        return steps
    engine_float = engine_mode is BiasMode.FLOAT32
    if (wanted == "float32") == engine_float:
        return steps
    without = [step for step in steps if step.role != "bias"]
    if wanted == "int32":
        term = quantize_bias(layer.bias, layer.input_scale, layer.weight_qparams.scale)
        return [AddInt32("int32 bias (mistake model)", "bias", term=term)] + without
    scale = f32(f32(layer.input_scale) * f32(layer.weight_qparams.scale))
    index = next(i for i, step in enumerate(without) if isinstance(step, ToFloat32)) + 1
    return without[:index] + [AddFloat32("float bias (mistake model)", "bias",
                                         term=f32(f32(layer.bias) / scale))] + without[index:]


def run_mistake(net: Net, inputs: tuple, knobs: Knobs, layer: str | None = None,
                layer_input: QuantizedArray | None = None) -> Candidate:
    """The output of ``layer`` (default: the Linear feeding the model output) under ``knobs``."""
    target = _target_layer(net, layer)
    if knobs.engine is not None:
        other = Net(net.graph, knobs.engine, knobs.isa)
        if layer_input is not None:
            params = other.prepared_node(target).params
            return _candidate_of(linear(layer_input, params))
        values = other.run_values(*inputs)
        return _candidate_of(values[target])
    values: dict = {name: np.asarray(value) for name, value in zip(net.graph.inputs, inputs)}
    for item in net._prepared:
        node = item.node
        arguments = [values[ref.name] if isinstance(ref, Ref) else ref for ref in node.inputs]
        if node.name == target and layer_input is not None:
            arguments[0] = layer_input
        if node.op == "quantize":
            values[node.name] = _quantize_input(np.asarray(arguments[0]), item.params, knobs)
        elif node.op == "linear":
            params = item.params
            if arguments[0].qparams != params.input_qparams:
                params = prepare_linear(params.weight, params.weight_qparams, params.float_bias,
                                        arguments[0].qparams, params.output_qparams,
                                        relu=params.relu, engine=params.engine, isa=params.isa)
            values[node.name] = _deviated_linear(params, arguments[0], knobs, node.name == target)
        else:
            values[node.name] = item.definition.run(item.params, arguments)
        if node.name == target:
            return _candidate_of(values[node.name])
    raise QexactError(f"layer {target!r} was not reached")


def _candidate_of(value) -> Candidate:
    if isinstance(value, Candidate):
        return value
    if isinstance(value, QuantizedArray):
        return Candidate(dequantize(value).astype(np.float64), value.values.astype(np.int64))
    return Candidate(np.asarray(value, dtype=np.float64), None)


# --- Comparing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One catalog mistake that reproduces the user's numbers."""

    id: str
    title: str
    message: str
    explained: tuple[tuple[int, ...], ...]   # indices of the differing elements it reproduces
    explained_count: int
    share: float                              # explained_count / differing elements
    precision: float                          # where it changes the result, how often theirs follows
    variant: str = ""
    combined_with: tuple[str, ...] = ()


@dataclass(frozen=True)
class Diagnosis:
    layer: str
    engine: str
    isa: str
    integer: bool
    elements: int
    differing: int
    step_differences: dict[int, int]          # |theirs - exact| in output steps -> count
    findings: tuple[Finding, ...]
    combination: Finding | None               # the best set of findings together
    residual: tuple[tuple[int, ...], ...]     # differing elements nothing explains
    exact: np.ndarray = field(repr=False, default=None)
    theirs: np.ndarray = field(repr=False, default=None)

    @property
    def explained_all(self) -> bool:
        return self.differing > 0 and not self.residual

    @property
    def summary(self) -> str:
        if self.differing == 0:
            return "Your numbers equal the exact ones: nothing to diagnose."
        if not self.findings:
            return ("No known deviation explains this: none of the catalog's mistakes "
                    f"reproduces your numbers on the {self.differing} differing elements.")
        best = self.combination or self.findings[0]
        ids = " + ".join((best.id,) + best.combined_with)
        return (f"{ids} explains {best.explained_count} of {self.differing} differing elements"
                + (" (all of them)." if not self.residual else
                   f"; {len(self.residual)} remain unexplained."))

    def to_json(self) -> dict:
        def finding(item: Finding | None):
            if item is None:
                return None
            return {"id": item.id, "title": item.title, "message": item.message,
                    "explained": [list(index) for index in item.explained],
                    "explained_count": item.explained_count, "share": item.share,
                    "precision": item.precision, "variant": item.variant,
                    "combined_with": list(item.combined_with)}

        return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "layer": self.layer,
                "engine": self.engine, "isa": self.isa, "integer": self.integer,
                "elements": self.elements, "differing": self.differing,
                "step_differences": {str(k): v for k, v in self.step_differences.items()},
                "summary": self.summary, "findings": [finding(f) for f in self.findings],
                "combination": finding(self.combination),
                "residual": [list(index) for index in self.residual]}

    def render(self, format: str = "text") -> str:
        from .report import render_diagnosis_markdown, render_diagnosis_text

        if format == "json":
            return json.dumps(self.to_json(), indent=1)
        if format == "markdown":
            return render_diagnosis_markdown(self)
        return render_diagnosis_text(self)

    def __str__(self) -> str:
        return self.render("text")


def _matches(candidate: np.ndarray, theirs: np.ndarray, integer: bool, rtol: float,
             atol: float) -> np.ndarray:
    if integer:
        return candidate == theirs
    return np.abs(candidate - theirs) <= atol + rtol * np.abs(candidate)  # float-ok: user's floats


def diagnose(net: Net, x, theirs, layer: str | None = None, *, rtol: float = 1e-5,
             atol: float = 1e-6) -> Diagnosis:
    """Compare ``theirs`` with the exact output and find which catalog mistakes reproduce it.

    ``theirs``: the user's output, float (real values) or integer (quantized values), for the
    model output (``layer=None``) or for Linear layer ``layer`` given that layer's exact input.
    """
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    values = net.run_values(*inputs)
    target = _target_layer(net, layer)
    theirs = np.asarray(theirs)
    integer = theirs.dtype.kind in "iu"
    layer_input = None
    if layer is not None:
        node = net.prepared_node(target).node
        layer_input = values[node.inputs[0].name]
        exact_value = _candidate_of(values[target])
    else:
        exact_value = _candidate_of(values[target])
        if not integer:
            exact_value = Candidate(np.asarray(net(*inputs), dtype=np.float64).reshape(
                exact_value.real.shape), exact_value.codes)
    exact = exact_value.codes if integer else exact_value.real
    if exact is None or exact.shape != theirs.shape:
        raise ShapeError(f"your numbers have shape {theirs.shape}; the exact output of "
                         f"{target!r} has shape {None if exact is None else exact.shape}")
    theirs_cmp = theirs.astype(np.int64 if integer else np.float64)
    differs = ~_matches(exact, theirs_cmp, integer, rtol, atol)
    params = net.prepared_node(target).params
    steps = np.abs((theirs_cmp - exact) / (1 if integer else params.output_scale))
    histogram = {}
    if differs.any():
        rounded = np.rint(steps[differs]).astype(np.int64)
        histogram = {int(k): int(v) for k, v in zip(*np.unique(rounded, return_counts=True))}

    def evaluate(knobs: Knobs):
        try:
            candidate = run_mistake(net, inputs, knobs, layer, layer_input)
        except QexactError:  # e.g. an engine that refuses this model's weights
            return None
        produced = candidate.codes if integer else candidate.real
        if produced is None or produced.shape != exact.shape:
            return None
        changed = ~_matches(produced, exact.astype(produced.dtype), integer, rtol, atol)
        follows = _matches(produced, theirs_cmp, integer, rtol, atol)
        explained = differs & follows
        precision = float((follows & changed).sum() / changed.sum()) if changed.any() else 0.0
        return explained, precision

    singles: list[tuple[Finding, Knobs]] = []
    if differs.any():
        for deviation in CATALOG:
            best = None
            for knobs in deviation.knobs:
                if knobs.engine == net.engine.name and knobs.isa == net.engine.isa:
                    continue
                if knobs.engine is not None and knobs.engine not in engine_names(net.engine.flow):
                    continue  # engines of the model's own flow: PT2E deployments, or eager
                result = evaluate(knobs)
                if result is None:
                    continue
                explained, precision = result
                count = int(explained.sum())
                if count and precision >= MIN_PRECISION and (best is None or count > best[0]):
                    best = (count, explained, precision, knobs)
            if best is not None:
                count, explained, precision, knobs = best
                singles.append((_finding(deviation, explained, differs, precision, knobs), knobs))
    singles.sort(key=lambda item: (-item[0].explained_count, -item[0].precision,
                                   CATALOG_IDS.index(item[0].id)))
    combination = None
    explained_best = np.zeros_like(differs)
    if singles:
        top, top_knobs = singles[0]
        for index in top.explained:
            explained_best[index] = True
        members: list[tuple[Finding, Knobs]] = []
        knobs_so_far, precision_so_far = top_knobs, top.precision
        for _ in range(MAX_COMBINED - 1):  # greedily add the mistake that explains most besides
            best = None
            for deviation in CATALOG:
                if deviation.id in {top.id, *(member.id for member, _ in members)}:
                    continue
                for knobs in deviation.knobs:
                    merged = knobs_so_far.merge(knobs)
                    result = None if merged is None else evaluate(merged)
                    if result is None:
                        continue
                    explained, precision = result
                    count = int(explained.sum())
                    if (count > int(explained_best.sum()) and precision >= MIN_PRECISION
                            and (best is None or count > best[0])):
                        best = (count, deviation, explained, precision, knobs, merged)
            if best is None:
                break
            count, deviation, explained, precision, knobs, merged = best
            members.append((_finding(deviation, explained & ~explained_best, differs, precision,
                                     knobs), knobs))
            knobs_so_far, precision_so_far, explained_best = merged, precision, explained
        if members:
            partners = tuple(member.id for member, _ in members)
            combination = replace(_finding(_deviation(top.id), explained_best, differs,
                                           precision_so_far, top_knobs), combined_with=partners)
            others = [item for item in singles[1:] if item[0].id not in partners]
            singles = [singles[0]] + [(replace(member, combined_with=(top.id,)), knobs)
                                      for member, knobs in members] + others
    residual_mask = differs & ~explained_best
    return Diagnosis(
        layer=target, engine=net.engine.name, isa=net.engine.isa, integer=integer,
        elements=int(theirs.size), differing=int(differs.sum()), step_differences=histogram,
        findings=tuple(item[0] for item in singles), combination=combination,
        residual=tuple(tuple(int(i) for i in index) for index in np.argwhere(residual_mask)),
        exact=exact, theirs=theirs_cmp,
    )


def _deviation(identifier: str) -> Deviation:
    return next(deviation for deviation in CATALOG if deviation.id == identifier)


def _finding(deviation: Deviation, explained: np.ndarray, differs: np.ndarray, precision: float,
             knobs: Knobs) -> Finding:
    indices = tuple(tuple(int(i) for i in index) for index in np.argwhere(explained))
    variant = ""
    if knobs.engine:
        variant = f"the numbers are exactly {knobs.engine}'s on {knobs.isa}"
    elif knobs.bias != "engine":
        variant = f"bias added as {knobs.bias}"
    elif knobs.pair_saturation is not None:
        variant = "pairs saturated" if knobs.pair_saturation else "no pair saturation"
    return Finding(deviation.id, deviation.title, deviation.paragraph + (
        f" ({variant}.)" if variant else ""), indices, len(indices),
        len(indices) / max(1, int(differs.sum())), precision, variant)
