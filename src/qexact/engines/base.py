"""What an engine is: a backend's numerics, stated as data.

An ``Engine`` names a PyTorch quantized engine (``torch.backends.quantized.engine``) and an ISA,
and says which *kernel numerics* each op runs on. A ``GemmNumerics`` describes one kernel family
(FBGEMM's, QNNPACK's, oneDNN's) for the accumulate-then-requantize ops (Linear; Conv in 0.2):

- ``bias``: where the bias enters (float32 in the epilogue, or int32 re-derived from the input scale);
- ``requantization``: the float32/integer steps from the int32 accumulator to output bytes, in the
  kernel's own order (a tuple of ``qexact.requantize.Step``);
- ``pair_saturation_isas``: the ISAs on which the u8 x s8 dot product saturates int16 pair sums;
- ``allows_weight_zero_point``: whether the kernel accepts non-zero weight zero points.

Ops are written once and ask the engine; no op tests an engine's name.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from ..dtypes import QDType, QUINT8
from ..errors import UnsupportedError
from ..qparams import QParams
from ..requantize import AddInt, ClampInt, RoundHalfEvenToInt32, Step

AVX512_VNNI = "avx512_vnni"
AVX2 = "avx2"
ISAS = (AVX512_VNNI, AVX2)
"""``avx512_vnni``: u8 x s8 dot products are exact (``vpdpbusd``). ``avx2``: no VNNI (AVX2, or
AVX512 without VNNI), so FBGEMM's GEMM sums u8 x s8 pairs with int16 saturation (``vpmaddubsw``)."""

# FBGEMM_ENABLE_INSTRUCTIONS values (FBGEMM src/Utils.cc, fbgemmEnvGetIsa) and whether they use VNNI.
_FBGEMM_ISA_OVERRIDES = {"AVX2": AVX2, "AVX512": AVX2, "AVX512_256": AVX2,
                         "AVX512_E1": AVX512_VNNI, "AVX512_E1_256": AVX512_VNNI}


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect_isa() -> str:
    """The ISA PyTorch's FBGEMM kernels take in a process started now on this machine.

    VNNI needs ``avx512_vnni`` with AVX512 F/BW/DQ/VL; ``FBGEMM_ENABLE_INSTRUCTIONS`` can only
    lower that choice, never raise it.
    """
    flags = cpu_flags()
    has_vnni = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"} <= flags
    override = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").strip().upper()
    if has_vnni and _FBGEMM_ISA_OVERRIDES.get(override, AVX512_VNNI) == AVX512_VNNI:
        return AVX512_VNNI
    return AVX2


ATEN_CAPABILITIES = ("avx512", "avx2", "default")
"""ATen's CPU capability (``torch.backends.cpu.get_cpu_capability()``): the SIMD width of its
elementwise quantized kernels (64-byte vectors on avx512, 32 on avx2), which decides where the
vectorized body of a tensor ends and its scalar tail begins."""


def detect_aten_capability() -> str:
    """What ATen dispatches to in a process started now: ``ATEN_CPU_CAPABILITY`` can lower it."""
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        best = "avx512"
    elif {"avx2", "fma"} <= flags:
        best = "avx2"
    else:
        best = "default"
    requested = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if requested in ATEN_CAPABILITIES and ATEN_CAPABILITIES.index(requested) > ATEN_CAPABILITIES.index(best):
        return requested
    return best


def check_isa(isa: str) -> str:
    if isa not in ISAS:
        raise UnsupportedError(f"isa {isa!r} is not supported; supported: {list(ISAS)}")
    return isa


class BiasMode(enum.Enum):
    FLOAT32 = "float32, added in the float epilogue"
    INT32_AT_INPUT_SCALE = "int32, quantized with scale s_x * s_w whenever s_x changes"
    INT32_AT_LOWERING = "int32, quantized once with scale f32(s_w * s_x) when the model is lowered"


@dataclass(frozen=True, eq=False)
class Requantization:
    """A kernel's epilogue for one layer: the steps and the constants a porter needs.

    ``bias`` is the bias as the kernel adds it (float32, or int32 at the input scale), or None.
    ``multiplier`` is the float32 factor(s) the accumulator is multiplied by (one per output
    channel, or a scalar); for kernels that apply several factors in turn, their product is not
    computed anywhere and ``multiplier`` holds them in order.
    """

    steps: tuple[Step, ...]
    bias: np.ndarray | None
    bias_mode: BiasMode
    multiplier: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class RowQuantization:
    """A dynamically quantized input's parameters, one set per row of the GEMM: ``multiplier``
    (float32, the quantize multiplies by it), ``zero_point`` (int64), ``scale`` (float32, the
    dequantization factor the epilogue applies). A kernel that quantizes the whole tensor with
    one set (``DynamicQuantization.granularity == "tensor"``) repeats it on every row."""

    multiplier: np.ndarray
    zero_point: np.ndarray
    scale: np.ndarray


@dataclass(frozen=True)
class DynamicQuantization:
    """How a kernel quantizes its float32 input at run time (dynamic quantization).
    ``parameters(rows) -> RowQuantization`` from the (M, K) float32 rows (every dim of a Linear's
    input but the last); ``granularity`` says whether each row gets its own parameters
    (``"row"``: XNNPACK's qd8) or the whole input one set (``"tensor"``: ATen's
    ``ChooseQuantizationParams`` on the eager engines). ``quantize(rows, parameters)`` -> the
    (M, K) integer codes; ``dtype`` the codes' type; ``requantization(weight_qparams, bias,
    relu)`` the epilogue, whose step of role ``"input_scale"`` takes each row's ``scale`` at run
    time. ``reduce_range``: whether the codes use half the range (the module's flag, as this
    kernel honours it); ``with_reduce_range(flag)`` gives the kernel for a module's flag (None:
    the kernel has no such flag; see ``for_reduce_range``)."""

    name: str
    source: str
    dtype: QDType
    parameters: Callable[[np.ndarray], RowQuantization]
    quantize: Callable[[np.ndarray, RowQuantization], np.ndarray]
    requantization: Callable[..., Requantization]
    granularity: str = "row"
    reduce_range: bool = False
    with_reduce_range: Callable[[bool], "DynamicQuantization"] | None = None

    def for_reduce_range(self, reduce_range: bool) -> "DynamicQuantization":
        """The kernel a layer with ``reduce_range`` runs (``self`` when the kernel has no flag)."""
        if self.with_reduce_range is None:
            return self
        return self.with_reduce_range(bool(reduce_range))


@dataclass(frozen=True)
class GemmNumerics:
    """One kernel family's arithmetic for accumulate-then-requantize ops."""

    name: str
    source: str
    bias_mode: BiasMode
    pair_saturation_isas: frozenset[str]
    allows_weight_zero_point: bool
    requantization: Callable[..., Requantization]
    weight_offset: int = 0
    """Added to int8 weights before the kernel sees them (QNNPACK stores ``w + 128`` as uint8)."""
    pair_block_starts: Callable[[int], tuple[int, ...]] = lambda depth: (0,)
    """Where K blocks start when pairs saturate: pairs are formed from each block's start."""
    inexact: str = ""
    """Why this kernel's outputs are not bit-exact (empty: they are): a float op whose summation
    order qexact does not reproduce (PT2E eager's MKL/oneDNN float GEMM)."""
    dynamic: DynamicQuantization | None = None
    """The kernel for a dynamically quantized float32 input (None: the engine has none)."""
    not_run_for: Callable[[tuple[int, ...], int], str] | None = None
    """``not_run_for(input_shape, out_features)``: why the deployment runs another computation
    than this kernel for a Linear of that input ("" or None: it runs this one)."""
    linear_min_rank: int = 2
    """The lowest input rank a Linear on this kernel takes (FBGEMM and QNNPACK: "The dimension
    of input tensor should be larger than or equal to 2"; oneDNN's takes a vector)."""

    def saturates_pairs(self, isa: str) -> bool:
        return isa in self.pair_saturation_isas


@dataclass(frozen=True)
class ConvGeometry:
    """What decides a convolution's kernel: shapes and hyper-parameters as the backend sees them
    (a Conv1d is the 2-D convolution PyTorch runs: kernel ``(1, k)``)."""

    in_channels: int
    out_channels: int
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    symmetric_weights: bool
    output_padding: tuple[int, ...] = ()
    transposed: bool = False

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel_size)


PAD_ZERO_POINT = "input zero point"
PAD_ZERO = "zero"


@dataclass(frozen=True)
class ConvKernel:
    """The convolution kernel an engine runs for one geometry, and how its accumulator is formed.

    The exact accumulator is ``sum (x - z_x)(w - z_w)`` over the receptive field, padded taps
    holding ``z_x`` (so they add 0). Where the kernel saturates int16 pairs (``pair_saturation_isas``),
    the pairs are formed on raw values in the order of a group's im2col row ``(taps..., channel)``
    with the channel fastest: from the row's start (``pairs_per_tap`` False: a pair may join the
    last channel of one tap to the first of the next), or from each tap's first channel
    (``pairs_per_tap`` True); ``padded_tap`` is the raw value a padded tap holds in those pairs.
    ``numerics`` gives the bias handling and the requantization (per output channel).
    """

    name: str
    source: str
    numerics: GemmNumerics
    pair_saturation_isas: frozenset[str]
    pairs_per_tap: bool = False
    padded_tap: str = PAD_ZERO_POINT
    per_channel_weights: bool = True
    """Whether PyTorch's prepack accepts per-channel weights for this kernel (transposed
    convolutions: only QNNPACK does, qconv_prepack.cpp "Per Channel Quantization is currently
    disabled for transposed conv")."""
    weight_buffer_reread: bool = False
    """Transposed convolutions: the kernel reads each group's ``(C/G, OC/G, *k)`` weight buffer as
    if it were ``(OC/G, C/G, *k)`` and transposes that back (oneDNN via PyTorch's prepack, which
    permutes ``[i, o, ...]`` dims without moving the data; measured), so the effective weight
    ``w'[c, oc]`` is ``w.reshape(OC/G, C/G).T`` laid out as ``(C/G, OC/G)``; identity when
    ``C/G == OC/G``."""
    unreached_outputs_undefined: bool = False
    """Transposed convolutions: outputs that no tap reaches (stride holes) come out of PyTorch
    nondeterministic when ``z_x != 0`` (oneDNN on AVX2 leaves their zero-point compensation to
    stale memory; measured: the same call gives ``bias`` only in one process and saturated bytes
    in another). qexact gives them the defined value (accumulator 0)."""
    output_padding: bool = True
    """Whether PyTorch accepts a non-zero ``output_padding`` (transposed convolutions; oneDNN
    refuses it: "ONEDNN only supports zero output_padding")."""
    undefined_output: str = ""
    """Why PyTorch's output is undefined for this geometry (empty: it is defined). qexact refuses
    such a convolution with this text rather than invent a result."""
    not_reproduced: str = ""
    """Why qexact does not compute this geometry although PyTorch's output is defined (a known
    divergence, kept as a strict xfail): qexact refuses rather than give other numbers."""
    undefined_input: Callable[[ConvGeometry, tuple[int, ...]], str] | None = None
    """``undefined_input(geometry, spatial)``: why PyTorch's output is undefined for an input of
    this spatial size (empty: defined). Shapes the kernel mishandles are known only at run time;
    ``spatial`` is given as the backend sees it (a Conv1d's ``(1, W)``)."""

    def saturates_pairs(self, isa: str) -> bool:
        return isa in self.pair_saturation_isas


def _no_conv(geometry: ConvGeometry, isa: str) -> ConvKernel:
    raise UnsupportedError("this engine has no quantized convolution")


@dataclass(frozen=True)
class Engine:
    """A PyTorch quantized engine on one ISA: which kernel numerics each op uses."""

    name: str
    isa: str
    linear: GemmNumerics
    description: str
    aten_capability: str = "avx2"
    conv: Callable[[ConvGeometry, str], ConvKernel] = _no_conv
    """``conv(geometry, isa)``: the convolution kernel PyTorch runs (see ``conv_kernel``)."""

    conv_transpose: Callable[[ConvGeometry, str], ConvKernel] = _no_conv
    """``conv_transpose(geometry, isa)``: the kernel PyTorch runs for a transposed convolution
    (``geometry.transposed``; see ``conv_transpose_kernel``)."""

    flow: str = "eager"
    """Which models the engine runs: ``"eager"``, PyTorch's own quantized kernels
    (``torch.ao.quantization`` models, whose weights are packed for one engine), or ``"pt2e"``,
    a deployment of a PT2E model (``quantized_decomposed`` quantize/dequantize around float ops)."""

    activation_dtypes: tuple[QDType, ...] = (QUINT8,)
    """The activation types its Linear and convolution kernels take and give."""

    float_output: bool = False
    """Whether its Linear and convolution can end in float32 (no output quantization): the
    epilogue stops before the output scale (Inductor's oneDNN ops when no quantize follows)."""

    inexact: str = ""
    """What this engine computes that is not bit-exact, and why (empty: everything is exact).
    Each kernel that is not says so itself (``GemmNumerics.inexact``); ``qexact inspect`` shows it."""

    inexact_kernels: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False)
    """Families of ``kernels`` whose descriptions are not bit-exact (``"mean"``, ``"upsample
    bilinear"``: family and mode) -> why; the ops' params expose it as ``inexact`` for inspect."""

    allowed_inexact: frozenset[str] = frozenset()
    """Float kernels the user allowed to run in an order qexact does not reproduce
    (``from_torch(..., allow_inexact=("matmul",))``); see ``inexact_kernel``."""

    kernels: Mapping[str, Callable[..., Any]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False)
    """The engine's table for every op family beyond the GEMMs: family name -> ``choose(engine,
    ...)``, which returns that family's frozen kernel description (which kernel runs and its
    arithmetic as ``Step``s). Ops reach it through ``kernel``; docs/engines.md lists the
    families and what each description states."""

    def conv_kernel(self, geometry: ConvGeometry) -> ConvKernel:
        """The kernel (and its numerics) this engine runs for a convolution of ``geometry``."""
        return self.conv(geometry, self.isa)

    def conv_transpose_kernel(self, geometry: ConvGeometry) -> ConvKernel:
        """The kernel (and its numerics) this engine runs for a transposed convolution.

        Its pairing is stated on the transposed im2col row: for output position ``o`` and tap
        ``t`` (the weight's own order, channel fastest) the row holds ``x[(o + pad - t*dil) /
        stride]`` where that is an integer inside the input, else a "padded tap"."""
        return self.conv_transpose(geometry, self.isa)

    def kernel(self, family: str, *args, **kwargs):
        """The kernel this engine runs for an op of ``family`` (``kernels[family](self, ...)``)."""
        choose = self.kernels.get(family)
        if choose is None:
            raise UnsupportedError(f"engine {self.name!r} has no {family} kernel; its op "
                                   f"families: {sorted(self.kernels)}")
        return choose(self, *args, **kwargs)

    def inexact_kernel(self, name: str, why: str) -> str:
        """Where PyTorch runs a float kernel whose order qexact cannot reproduce (an MKL sgemm,
        MKL's ``vsTanh``): ``why`` (to store as the params' ``inexact``, which inspect and explain
        show) if the user allowed ``name`` with ``allow_inexact``; else an ``UnsupportedError``
        naming it and the opt-in."""
        if name in self.allowed_inexact:
            return why
        raise UnsupportedError(f"{why}. qexact refuses it by default; pass allow_inexact="
                               f"({name!r},) to run it in NumPy's order, marked inexact")

    def __str__(self) -> str:
        return f"{self.name} ({self.isa})"


def integer_output_steps(output: QParams, relu: bool) -> list[Step]:
    """The SIMD epilogue tail FBGEMM and QNNPACK share: ``cvtps2dq``, then ``+ z_out`` and a clamp
    in integers (``packs``/``packus`` saturation), raised to ``z_out`` by a fused ReLU."""
    return [
        RoundHalfEvenToInt32("round half to even (cvtps2dq)", role="round"),
        AddInt("output zero point", term=int(output.zero_point)),
        ClampInt("output range" + (" with fused ReLU" if relu else ""), role="output_clamp",
                 low=int(output.zero_point) if relu else output.dtype.qmin,
                 high=output.dtype.qmax),
    ]


@dataclass(frozen=True)
class LayerQuantization:
    """What a requantization needs to know about one layer (offline; floats allowed)."""

    input_scale: float
    weight_qparams: QParams
    bias: np.ndarray | None
    output_qparams: QParams | None
    """None: the layer's output stays float32 (an engine with ``float_output``)."""
    relu: bool
    quantized_bias: np.ndarray | None = None
    """The int32 bias as a deployed file stores it (an ExecuTorch ``.pte``), where the model's
    float bias is not known; only an engine whose bias is fixed at lowering takes it."""
    clamp: tuple[float, float] | None = None
    """A fused hardtanh/relu6 ``(low, high)`` on the float result before the output stage (a
    post-op; an engine whose requantization has no step of role ``"clamp"`` refuses it)."""
    residual_qparams: QParams | None = None
    """A quantized residual tensor (with these qparams) is added to the float result before the
    activation (a "sum" post-op; an engine whose requantization has no step of role ``"sum"``
    refuses it). None: no residual."""
    float_residual: bool = False
    """A float32 residual tensor is added there instead (an "add" post-op; refused likewise)."""
