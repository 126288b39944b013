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
stable; ``CATALOG`` lists them with their paragraphs, and each entry the graph ops (``ops``) whose
mistake models know it.

Every op family: ``diagnose(net, x, theirs, layer=NAME)`` takes the user's numbers of any node
given that node's exact inputs. Linear's mistakes are modelled here (``run_mistake``: the model's
input quantization included when ``layer`` is None); the other families register theirs by op
name (``mistake_model``, ``FAMILIES``): ``diagnose_conv`` (conv, depthwise: the GEMM epilogue
shared with Linear, ``deviated_epilogue``), ``diagnose_elementwise`` (add, mul),
``diagnose_pool``, ``diagnose_activation``, ``diagnose_resample``, ``diagnose_quantize`` (the
input quantization); ``diagnose_models`` holds what they share. ``wrong_engine`` applies to
every op (the node prepared for another engine). A node of a family without mistake models gets
a diagnosis without findings. Equal evidence ranks a family's own mistake before a shared one,
then catalog order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .accumulate import exact_matmul, pair_positions, pair_saturation_correction
from .accumulate import saturating_weight_pairs, weight_pairs_of
from .engines import AVX2, AVX512_VNNI, ENGINES, LayerQuantization, engine_names, get_engine
from .errors import QexactError, ShapeError
from .graph import Net, PreparedNode, Ref
from .jsonable import JsonDocument
from .ops.linear import LinearParams, linear, prepare_linear
from .qparams import QParams, QuantizedArray
from . import diagnose_activation, diagnose_conv, diagnose_elementwise  # noqa: F401
from . import diagnose_pool, diagnose_quantize  # noqa: F401  (they register their families)
from . import diagnose_resample  # noqa: F401
from .diagnose_models import FAMILIES, mistake_model  # noqa: F401  (re-exported)
from .diagnose_models import (DEFAULT_KNOBS, Candidate, Knobs, candidate_of, changed_knobs,
                              deviated_epilogue, deviated_quantize, run_family)
from .rounding import f32, round_half_even

MIN_PRECISION = 0.9
MAX_COMBINED = 3
SCHEMA_NAME = "qexact-diagnosis"
SCHEMA_VERSION = 1


# --- The catalog -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Deviation:
    id: str
    title: str
    paragraph: str
    knobs: tuple[Knobs, ...]          # one mistake may have several variants (engines, ISAs)
    ops: tuple[str, ...] = ("linear",)
    """The graph ops whose mistake models know this mistake (``"*"``: every op)."""

    def applies_to(self, op: str) -> bool:
        return "*" in self.ops or op in self.ops


GEMM = ("linear", "conv")
ELEMENTWISE = ("add", "add_relu", "mul", "mul_relu")
AVG_POOLS = ("avg_pool", "adaptive_avg_pool")

CATALOG: tuple[Deviation, ...] = (
    Deviation("missing_output_requantization", "the output was never requantized",
              "The layer's result was used as the real value acc*s_x*s_w + bias. PyTorch "
              "rounds it to the output's grid: q = round(real / s_out) + z_out, and returns "
              "s_out * (q - z_out), so every output is a multiple of s_out away from -z_out*s_out.",
              (Knobs(output_requantization=False, output_clamp=True),),
              ops=GEMM),
    Deviation("output_saturation", "the output was not clamped to the calibrated range",
              "PyTorch clamps the output integer to 0..255, i.e. to the range the observer saw "
              "during calibration; values beyond it saturate. These numbers go past that range.",
              (Knobs(output_clamp=False),),
              ops=GEMM),
    Deviation("bias_float_vs_int32", "the bias entered in the wrong form",
              "This engine adds the bias as it is stated in its module: QNNPACK quantizes it to "
              "int32 at scale s_x*s_w before adding it to the accumulator; FBGEMM and oneDNN add "
              "it in float32 in the epilogue. These numbers used the other form.",
              (Knobs(bias="float32"), Knobs(bias="int32")),
              ops=GEMM),
    Deviation("bias_rounding", "the int32 bias was rounded by another rule",
              "Where the engine adds an int32 bias (QNNPACK), it quantizes the float bias as "
              "ATen quantizes any tensor: round(bias / (s_x * s_w)), ties to even; these numbers "
              "used a bias rounded half away from zero or truncated, one unit off for some "
              "channels.",
              (Knobs(bias_rounding="half_away"), Knobs(bias_rounding="truncation")),
              ops=GEMM),
    Deviation("rounding_half_away", "ties were rounded away from zero",
              "The requantization rounds half to even (cvtps2dq, nearbyint); these numbers round "
              "x.5 away from zero (C round(), TFLite's reference).",
              (Knobs(rounding="half_away"),),
              ops=GEMM + ELEMENTWISE + AVG_POOLS + ("activation",)),
    Deviation("rounding_truncation", "the requantization truncated instead of rounding",
              "The requantized value was cut toward zero (a C cast) instead of rounded to the "
              "nearest integer, ties to even.",
              (Knobs(rounding="truncation"),),
              ops=GEMM + ELEMENTWISE + AVG_POOLS + ("activation",)),
    Deviation("quantize_divide_vs_reciprocal", "the input was quantized by division",
              "PyTorch quantizes with x * f32(1/s) (a float32 reciprocal, fused with the zero "
              "point); these numbers come from x / s, which differs in the last bit often enough "
              "to flip a rounding.",
              (Knobs(quantize_divide=True),),
              ops=("linear", "quantize")),
    Deviation("zero_point_after_rounding", "the zero point was added after rounding",
              "PyTorch adds the input zero point before rounding, in one fused multiply-add: "
              "round(fmaf(x, 1/s, z)); these numbers round first and add z after.",
              (Knobs(zero_point_after_rounding=True),),
              ops=("linear", "quantize")),
    Deviation("input_zero_point_ignored", "the input zero point was not subtracted",
              "The dot product must use (x_q - z_x); these numbers used x_q alone.",
              (Knobs(input_zero_point=False),),
              ops=GEMM),
    Deviation("weight_zero_point_ignored", "the weight zero point was not subtracted",
              "The dot product must use (w_q - z_w); these numbers used w_q alone.",
              (Knobs(weight_zero_point=False),),
              ops=GEMM),
    Deviation("per_channel_scales_ignored", "one weight scale was used for every channel",
              "The weights are quantized per output channel, each with its own scale (and zero "
              "point); these numbers use the first channel's scale for all of them.",
              (Knobs(per_channel_scales=False),),
              ops=GEMM),
    Deviation("int16_pair_saturation", "int16 pair saturation was (or was not) modelled",
              "Without VNNI, FBGEMM and oneDNN add pairs of u8*s8 products in int16 with "
              "saturation (vpmaddubsw); with VNNI they do not. These numbers took the other path.",
              (Knobs(pair_saturation=True), Knobs(pair_saturation=False)),
              ops=GEMM),
    Deviation("multiplier_precision", "the multiplier was formed in another precision or order",
              "The engine forms its float32 multiplier in a fixed order (and may fuse the bias "
              "with an FMA); these numbers used the ideal float64 value s_x*s_w/s_out.",
              (Knobs(multiplier="float64"),),
              ops=GEMM),
    Deviation("fused_relu_ignored", "the fused ReLU was left out",
              "This layer has a fused ReLU (LinearReLU, ConvReLU2d, add_relu): its output is "
              "clamped below at the zero point (real 0.0); these numbers keep negative values.",
              (Knobs(fused_relu=False),),
              ops=GEMM + ("add_relu", "mul_relu")),
    Deviation("reduce_range_mismatch", "the activations were quantized with the other range",
              "With reduce_range the activations use 0..127 (twice the scale) so that int16 "
              "pair sums cannot saturate; these numbers were quantized with reduce_range where "
              "the model has none.",
              (Knobs(reduce_range=True),)),
    Deviation("accumulator_overflow", "the accumulator overflowed",
              "The dot product needs 32 bits (up to K * 255 * 255); these numbers wrapped it "
              "in 16 bits.",
              (Knobs(accumulator_bits=16),),
              ops=GEMM),
    # --- Other op families (their mistake models: the diagnose_* modules) ---
    Deviation("conv_padding_zero", "the convolution's padding was filled with 0",
              "A quantized convolution pads its input with the input zero point z_x (real 0.0): "
              "a padded tap adds (z_x - z_x) * w = 0. These numbers padded the integers with 0, "
              "so each padded tap adds (0 - z_x) * w: the border outputs move.",
              (Knobs(pad_value="zero"),), ops=("conv",)),
    Deviation("elementwise_rescale_order", "the inputs were rescaled in another order",
              "PyTorch's quantized add dequantizes each input in float32 (s * (q - z)), sums in "
              "float32 and quantizes the sum once (round(f32(sum * f32(1/s_out))) + z_out); its "
              "mul requantizes the integer product of the centered inputs with one float32 "
              "multiplier. These numbers rescaled otherwise: the real values in float64, or "
              "each input requantized to the output scale first and the integers added.",
              (Knobs(rescale="float64"), Knobs(rescale="requantize_each")), ops=ELEMENTWISE),
    Deviation("pool_divisor", "the average used another divisor",
              "An average pool divides each window's sum by a divisor of its own: with "
              "count_include_pad the padded window's size (clipped at the padded input's end), "
              "without it the number of valid taps; an adaptive pool by its window's size, "
              "which differs at the borders when the output does not divide the input. These "
              "numbers divided by another.",
              (Knobs(divisor="count_include_pad"), Knobs(divisor="kernel_area"),
               Knobs(divisor="largest_window")), ops=AVG_POOLS),
    Deviation("max_pool_padding", "the max pool's padding took part in the maximum",
              "A max pool's padding is -infinity: it never wins. These numbers padded with the "
              "zero point (real 0.0), which wins wherever a border window holds only negative "
              "values.",
              (Knobs(max_pad="zero_point"),), ops=("max_pool",)),
    Deviation("activation_float_formula", "the activation was computed by its float formula",
              "The engine computes this activation its own way (a vectorized float32 path with "
              "its own operation order, or a table over the 256 input codes). These numbers "
              "follow the textbook formula on the dequantized input (in float64 or float32), "
              "quantized after: they differ wherever the two land on either side of a rounding "
              "boundary.",
              (Knobs(formula="float64"), Knobs(formula="float32")), ops=("activation",)),
    Deviation("resample_source_index", "the upsample read other source pixels",
              "Nearest upsampling reads source index min(floor(f32(dst * scale)), in - 1) "
              "(mode 'nearest'; 'nearest-exact' reads floor((dst + 0.5) * scale)); bilinear "
              "weights depend on align_corners. These numbers used another formula: the other "
              "nearest mode, floor(dst * scale + 0.5), or align_corners flipped.",
              (Knobs(source_index="nearest"), Knobs(source_index="nearest_exact"),
               Knobs(source_index="rounded"), Knobs(source_index="align_corners")),
              ops=("upsample",)),
    Deviation("wrong_engine", "the numbers are another engine's",
              "These numbers are exactly another PyTorch engine's (or ISA's): each engine has its "
              "own arithmetic (see docs/arithmetic.md). For a PT2E model, the engines are its "
              "deployments: numbers of eager PT2E (pt2e_eager) are not what ExecuTorch's XNNPACK "
              "delegate (xnnpack) or Inductor (inductor) computes on the device.",
              tuple(Knobs(engine=engine, isa=isa) for engine in sorted(ENGINES)
                    for isa in (AVX512_VNNI, AVX2)),
              ops=("*",)),
)

CATALOG_IDS = tuple(deviation.id for deviation in CATALOG)


# --- Running a mistake model -----------------------------------------------------------------


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
    shape = x.values.shape[:-1] + (params.out_features,)
    steps = list(numerics.requantization(layer).steps)
    result = deviated_epilogue(acc, layer, steps, numerics.bias_mode, knobs, is_target)
    if isinstance(result, Candidate):
        return Candidate(result.real.reshape(shape),
                         None if result.codes is None else result.codes.reshape(shape))
    return QuantizedArray(np.clip(result, 0, 255).astype(np.uint8).reshape(shape),
                          params.output_qparams)


def run_mistake(net: Net, inputs: tuple, knobs: Knobs, layer: str | None = None,
                layer_input: QuantizedArray | None = None) -> Candidate:
    """The output of ``layer`` (default: the Linear feeding the model output) under ``knobs``."""
    target = _target_layer(net, layer)
    if layer_input is not None and knobs.engine is None:  # upstream values are not read
        params = net.prepared_node(target).params
        if layer_input.qparams != params.input_qparams:
            params = prepare_linear(params.weight, params.weight_qparams, params.float_bias,
                                    layer_input.qparams, params.output_qparams,
                                    relu=params.relu, engine=params.engine, isa=params.isa)
        return _deviated_linear(params, layer_input, knobs, True)
    if knobs.engine is not None:
        other = Net(net.graph, knobs.engine, knobs.isa)
        if layer_input is not None:
            params = other.prepared_node(target).params
            return candidate_of(linear(layer_input, params))
        values = other.run_values(*inputs)
        return candidate_of(values[target])
    values: dict = {name: np.asarray(value) for name, value in zip(net.graph.inputs, inputs)}
    for item in net._prepared:
        node = item.node
        arguments = [values[ref.name] if isinstance(ref, Ref) else ref for ref in node.inputs]
        if node.name == target and layer_input is not None:
            arguments[0] = layer_input
        if node.op == "quantize":
            values[node.name] = deviated_quantize(np.asarray(arguments[0]), item.params, knobs)
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
            return candidate_of(values[node.name])
    raise QexactError(f"layer {target!r} was not reached")


# --- Mistake models of the other op families ---------------------------------------------------

def _on_other_engine(net: Net, prepared: PreparedNode, arguments: list,
                     knobs: Knobs) -> Candidate | None:
    """Node ``prepared`` prepared for another engine (and ISA), on the same exact arguments."""
    if changed_knobs(knobs) - {"engine", "isa"}:
        return None
    engine = get_engine(knobs.engine, knobs.isa)
    input_qparams = [None if not isinstance(item, Ref) or item.name in net.graph.inputs
                     else net.prepared_node(item.name).output_qparams
                     for item in prepared.node.inputs]
    params, _ = prepared.definition.prepare(prepared.node, input_qparams, engine)
    return candidate_of(prepared.definition.run(params, arguments))


def _output_step(prepared: PreparedNode) -> float:
    """One step of the node's output grid (its per-tensor scale; 1 where it has none)."""
    qparams = prepared.output_qparams
    if qparams is None or np.ndim(qparams.scale):
        return 1.0
    return float(qparams.scale)


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
class Diagnosis(JsonDocument):
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
    op: str = ""                              # the layer's graph op ("linear", "conv", ...)
    qparams_findings: tuple["QParamsFinding", ...] = ()
    """Quantization parameters on the way to the layer that no calibration would give (the
    observers' defaults, a degenerate scale): found from the model alone, before any mistake."""

    @property
    def explained_all(self) -> bool:
        return self.differing > 0 and not self.residual

    @property
    def summary(self) -> str:
        first = ""
        if self.qparams_findings:
            item = self.qparams_findings[0]
            first = f"First, the model itself: {item.title} ({', '.join(item.layers)}). "
        return first + self._mistakes_summary

    @property
    def _mistakes_summary(self) -> str:
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

    def to_dict(self) -> dict:
        def finding(item: Finding | None):
            if item is None:
                return None
            return {"id": item.id, "title": item.title, "message": item.message,
                    "explained": [list(index) for index in item.explained],
                    "explained_count": item.explained_count, "share": item.share,
                    "precision": item.precision, "variant": item.variant,
                    "combined_with": list(item.combined_with)}

        return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "layer": self.layer,
                "op": self.op, "engine": self.engine, "isa": self.isa, "integer": self.integer,
                "elements": self.elements, "differing": self.differing,
                "step_differences": {str(k): v for k, v in self.step_differences.items()},
                "summary": self.summary, "findings": [finding(f) for f in self.findings],
                "combination": finding(self.combination),
                "residual": [list(index) for index in self.residual],
                "qparams_findings": [{"id": item.id, "title": item.title,
                                      "message": item.message, "layers": list(item.layers)}
                                     for item in self.qparams_findings]}

    def render(self, format: str = "text") -> str:
        from .report import render_diagnosis_markdown, render_diagnosis_text

        if format == "json":
            return self.to_json(indent=1)
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
    model output (``layer=None``: the Linear feeding it) or for node ``layer`` (any op) given
    that node's exact inputs. An op without mistake models gets a diagnosis without findings.
    """
    inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
    values = net.run_values(*inputs)
    target = _target_layer(net, layer)
    theirs = np.asarray(theirs)
    integer = theirs.dtype.kind in "iu"
    prepared = net.prepared_node(target)
    op = prepared.node.op
    layer_input = arguments = None
    if layer is not None:
        arguments = [values[item.name] if isinstance(item, Ref) else item
                     for item in prepared.node.inputs]
        if op == "linear":
            layer_input = arguments[0]
    exact_value = candidate_of(values[target])
    if layer is None and not integer:
        exact_value = Candidate(np.asarray(net(*inputs), dtype=np.float64).reshape(
            exact_value.real.shape), exact_value.codes)
    exact = exact_value.codes if integer else exact_value.real
    if exact is None or exact.shape != theirs.shape:
        raise ShapeError(f"your numbers have shape {theirs.shape}; the exact output of "
                         f"{target!r} has shape {None if exact is None else exact.shape}")
    theirs_cmp = theirs.astype(np.int64 if integer else np.float64)
    differs = ~_matches(exact, theirs_cmp, integer, rtol, atol)
    steps = np.abs((theirs_cmp - exact) / (1 if integer else _output_step(prepared)))
    histogram = {}
    if differs.any():
        rounded = np.rint(steps[differs]).astype(np.int64)
        histogram = {int(k): int(v) for k, v in zip(*np.unique(rounded, return_counts=True))}
    catalog = tuple(deviation for deviation in CATALOG if deviation.applies_to(op))

    def run(knobs: Knobs) -> Candidate | None:
        if layer is None or op == "linear":
            return run_mistake(net, inputs, knobs, layer, layer_input)
        if knobs.engine is not None:
            return _on_other_engine(net, prepared, arguments, knobs)
        return run_family(prepared, arguments, knobs)

    def evaluate(knobs: Knobs):
        try:
            candidate = run(knobs)
        except QexactError:  # e.g. an engine that refuses this model's weights
            return None
        if candidate is None:
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
        for deviation in catalog:
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
                                   _breadth(item[0].id), CATALOG_IDS.index(item[0].id)))
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
            for deviation in catalog:
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
        exact=exact, theirs=theirs_cmp, op=op, qparams_findings=qparams_findings(net, target),
    )


@dataclass(frozen=True)
class QParamsFinding:
    """Quantization parameters no calibration would give, on nodes that reach the layer."""

    id: str
    title: str
    message: str
    layers: tuple[str, ...]


QPARAMS_CHECKS = (
    ("uncalibrated_qparams", "the model was not calibrated",
     "These layers' output scale is 1.0 with zero point 0: the value an observer returns when no "
     "data went through it (MinMaxObserver/HistogramObserver before any forward call). The "
     "calibration loop never ran the prepared model (a loop that builds batches but never calls "
     "prepared(x) does this), so PyTorch rounds every output to the integers of a grid of step "
     "1.0 and clamps it to the 0..255 range of that grid: almost every output is 0 or saturates. "
     "Run representative inputs through the prepared model before convert.",
     lambda q: q.scale == 1.0 and q.zero_point == 0),
    ("degenerate_scale", "a scale is zero, subnormal or not finite",
     "An output scale below the smallest normal float32 (1.2e-38) or not finite makes the "
     "requantization divide by (almost) zero: calibration saw a constant tensor, or a scale was "
     "set by hand.",
     lambda q: not (np.isfinite(q.scale) and q.scale >= np.finfo(np.float32).tiny)),
    ("zero_point_at_top", "the calibrated range has no positive values",
     "The zero point is at the top of the integer range: the observer never saw a positive "
     "value, so every positive output saturates at 0.0. Calibrate with data that reaches this "
     "layer's normal range.",
     lambda q: q.zero_point == q.dtype.qmax),
)


def qparams_findings(net: Net, target: str) -> tuple[QParamsFinding, ...]:
    """The ``QPARAMS_CHECKS`` that per-tensor output qparams of ``target`` or the nodes
    reaching it fail, each with the nodes that fail it (execution order)."""
    reaching = {target}
    for item in reversed(net._prepared):
        if item.node.name in reaching:
            reaching.update(ref.name for ref in item.node.inputs if isinstance(ref, Ref))
    found = []
    for identifier, title, message, fails in QPARAMS_CHECKS:
        layers = tuple(item.node.name for item in net._prepared
                       if item.node.name in reaching and item.output_qparams is not None
                       and not item.output_qparams.is_per_channel
                       and fails(item.output_qparams))
        if layers:
            found.append(QParamsFinding(identifier, title, message, layers))
    return tuple(found)


def _breadth(identifier: str) -> float:
    """Equal evidence: a mistake of this op family alone ranks before one many families share
    (a float formula before a rounding rule), then catalog order."""
    ops = _deviation(identifier).ops
    return float("inf") if "*" in ops else len(ops)


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
    else:
        variant = next((VARIANTS[name][getattr(knobs, name)] for name in VARIANTS
                        if getattr(knobs, name) != getattr(DEFAULT_KNOBS, name)), "")
    return Finding(deviation.id, deviation.title, deviation.paragraph + (
        f" ({variant}.)" if variant else ""), indices, len(indices),
        len(indices) / max(1, int(differs.sum())), precision, variant)


VARIANTS = {
    "bias_rounding": {"half_away": "the int32 bias rounded half away from zero",
                      "truncation": "the int32 bias truncated"},
    "rescale": {"float64": "the real values summed or multiplied in float64, quantized once",
                "requantize_each": "each input requantized to the output scale, the integers "
                                   "combined"},
    "divisor": {"count_include_pad": "count_include_pad the other way",
                "kernel_area": "every window divided by the kernel's full area",
                "largest_window": "every window divided by the largest window's size"},
    "formula": {"float64": "the formula in float64", "float32": "the formula in float32"},
    "source_index": {"nearest": "floor(dst * scale) (mode 'nearest')",
                     "nearest_exact": "floor((dst + 0.5) * scale) (mode 'nearest-exact')",
                     "rounded": "floor(dst * scale + 0.5)",
                     "align_corners": "align_corners flipped"},
}
"""How a finding names the variant of a mistake that reproduced the numbers."""
