"""Quantized embedding lookups: the kernel every eager engine runs for ``quantized::embedding_*``.

Family of the kernel table (``KERNELS``; ``Engine.kernel(family, ...)``):

- ``"embedding_bag"``: ``choose_embedding_bag(engine, bit_width, weighted) ->
  EmbeddingBagKernel``, for ``quantized::embedding_bag_byte`` / ``embedding_bag_4bit`` (modules
  ``nnq.EmbeddingBag``), ``embedding_byte`` / ``embedding_4bit`` (``nnq.Embedding``: bags of one
  index each) and the ``*_rowwise_offsets`` forms that take the packed rows as a uint8 tensor.

Which kernel runs: pytorch aten/src/ATen/native/quantized/cpu/qembeddingbag.cpp
(``embedding_bag_byte_impl``, ``embedding_bag_nbit_impl``) calls FBGEMM's JIT kernels
``GenerateEmbeddingSpMDM<uint8_t, ...>`` (8-bit rows) and ``GenerateEmbeddingSpMDMNBit`` (4-bit
rows), with ``normalize_by_lengths=false`` and ``use_offsets=true``, whatever
``torch.backends.quantized.engine`` says: the op is registered once for the CPU in the quantized
library and reads no engine (measured: fbgemm, x86, qnnpack and onednn give the same bits). The
``mode`` argument is never read (``/* mode */``): ``nnq.EmbeddingBag.forward`` passes 0 and a
float ``mode="mean"``/``"max"`` module converts to one that sums.

Arithmetic (fbgemm src/EmbeddingSpMDM.cc and EmbeddingSpMDMNBit.cc, the emitted loop; the same
as ``EmbeddingSpMDM_ref`` in src/RefImplementations.cc and ATen's fallback loop): a packed row
holds the codes then the row's ``scale`` and ``bias`` (float32 for 8-bit rows; float16 for
4-bit rows, widened exactly by ``vcvtph2ps``). For each output bag, per lane ``j``:

    acc = +0.0
    for each index i of the bag, in order (row r = indices[i]):
        scale = s_r, bias = b_r                     (no per_sample_weights)
        scale = f32(w_i * s_r), bias = f32(w_i * b_r)   (per_sample_weights: vmulps)
        acc = f32(acc + bias)                       (vaddps)
        acc = fmaf(f32(q_r[j]), scale, acc)         (vfmadd231ps: one rounding)
    out[bag, j] = acc                               (empty bag: +0.0)

Every lane is independent (no horizontal sum), so the AVX512 and AVX2 JIT bodies and their
masked tails give the same bits (measured with FBGEMM_ENABLE_INSTRUCTIONS=AVX2), and
``at::parallel_for`` over bags (8-bit) changes no bag's order.

NaN operands (a table whose scale or bias bytes are NaN, e.g. 4-bit rows read by the byte
kernel): each instruction returns its first NaN operand, quieted, signaling or not (x86 SSE/AVX
rule, measured through the kernel): ``vmulps`` the row's value before the weight, ``vaddps`` the
accumulator before the bias, ``vfmadd231ps`` the scale before the accumulator; the steps here
state that order (``first_nan``), so NaN payloads match too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import UnsupportedError
from ..requantize import Step
from ..rounding import f32, fma_float32

SOURCE = ("pytorch aten/src/ATen/native/quantized/cpu/qembeddingbag.cpp; fbgemm "
          "src/EmbeddingSpMDM.cc, src/EmbeddingSpMDMNBit.cc (JIT), src/RefImplementations.cc "
          "EmbeddingSpMDM_ref")
BIT_WIDTHS = (8, 4)


_QUIET_BIT = np.uint32(0x00400000)


def first_nan(result: np.ndarray, *operands: np.ndarray) -> np.ndarray:
    """``result`` where no operand is NaN; else the first NaN operand (in the instruction's
    operand order), quieted: what x86 SSE/AVX arithmetic returns (a NaN the operation itself
    makes, such as ``inf - inf``, is the result's own: the default NaN)."""
    out = np.array(result, np.float32, copy=True)
    chosen = np.zeros(out.shape, bool)
    for operand in operands:
        operand = np.broadcast_to(np.asarray(operand, np.float32), out.shape)
        take = np.isnan(operand) & ~chosen
        if take.any():
            out[take] = (operand[take].view(np.uint32) | _QUIET_BIT).view(np.float32)
            chosen |= take
    return out


@dataclass(frozen=True, eq=False)
class MultiplyByOperand(Step):
    """``v = f32(v * w)`` with ``w`` bound per term (``vmulps v, v, w``; NaN: ``v``'s first)."""

    operand: np.ndarray | None = None
    formula = "f32(v * {operand})"

    def apply(self, value):
        if self.operand is None:
            raise ValueError(f"step {self.label!r} has no operand bound")
        return first_nan(f32(value * self.operand), value, self.operand)

    def shown(self):
        return {"operand": self.operand}


@dataclass(frozen=True, eq=False)
class AddOperand(Step):
    """``v = f32(v + b)`` with ``b`` bound per term (``vaddps v, v, b``; NaN: ``v``'s first)."""

    operand: np.ndarray | None = None
    formula = "f32(v + {operand})"

    def apply(self, value):
        if self.operand is None:
            raise ValueError(f"step {self.label!r} has no operand bound")
        return first_nan(f32(value + self.operand), value, self.operand)

    def shown(self):
        return {"operand": self.operand}


@dataclass(frozen=True, eq=False)
class FusedMultiplyAddOperands(Step):
    """``v = fmaf(q, scale, v)`` with the row's codes ``q`` (as float32, exact) and its
    ``scale`` read at run time (bound per term by ``EmbeddingBagKernel.term_steps``):
    ``vfmadd231ps v, q, scale``, one rounding; NaN: ``scale``'s before ``v``'s."""

    q: np.ndarray | None = None
    scale: np.ndarray | None = None
    formula = "fmaf({q}, {scale}, v)"

    def apply(self, value):
        if self.q is None or self.scale is None:
            raise ValueError(f"step {self.label!r} has no operands bound")
        return first_nan(fma_float32(f32(self.q), self.scale, value), self.scale, value)

    def shown(self):
        return {"q": self.q, "scale": self.scale}


@dataclass(frozen=True)
class EmbeddingBagKernel:
    """The embedding-bag kernel: which one runs and its arithmetic per bag term.

    ``row_scale_dtype``: how the packed row stores ``scale``/``bias`` (``"float32"`` or
    ``"float16"``); ``weight_steps``: applied to a term's ``scale`` and to its ``bias`` when
    per-sample weights are given (role ``"per_sample_weight"``: the weight, bound per term);
    ``term_steps``: the accumulator's update per term (roles ``"bias"`` and ``"fma"``, bound per
    term); ``initial``: the accumulator before the first term (an empty bag's output)."""

    name: str
    source: str
    bit_width: int
    row_scale_dtype: str
    weight_steps: tuple[Step, ...]
    term_steps: tuple[Step, ...]
    initial: float = 0.0
    ignores_mode: bool = True
    """The kernel always sums: ``mode`` is not read (``normalize_by_lengths=false``)."""

    def bound_weight_steps(self, weight: np.ndarray) -> tuple[Step, ...]:
        return tuple(replace(step, operand=weight) if step.role == "per_sample_weight" else step
                     for step in self.weight_steps)

    def bound_term_steps(self, codes: np.ndarray, scale: np.ndarray,
                         bias: np.ndarray) -> tuple[Step, ...]:
        bound = []
        for step in self.term_steps:
            if step.role == "bias":
                step = replace(step, operand=bias)
            elif step.role == "fma":
                step = replace(step, q=codes, scale=scale)
            bound.append(step)
        return tuple(bound)


def choose_embedding_bag(engine, bit_width: int, weighted: bool) -> EmbeddingBagKernel:
    """The kernel PyTorch runs for a quantized embedding lookup with ``bit_width``-bit rows
    (``weighted``: per_sample_weights given). The same on every eager engine and ISA."""
    if bit_width not in BIT_WIDTHS:
        raise UnsupportedError(f"quantized embedding rows of {bit_width} bits are not supported; "
                               f"supported: {list(BIT_WIDTHS)} (quint8, quint4x2)")
    name = ("FBGEMM EmbeddingSpMDM<uint8_t> (JIT)" if bit_width == 8 else
            "FBGEMM EmbeddingSpMDMNBit<4> (JIT)")
    weight_steps = (MultiplyByOperand("the row's scale or bias times the per-sample weight "
                                      "(vmulps)", role="per_sample_weight"),) if weighted else ()
    term_steps = (AddOperand("add the row's bias (vaddps)", role="bias"),
                  FusedMultiplyAddOperands("add code times scale (vfmadd231ps)", role="fma"))
    return EmbeddingBagKernel(name, SOURCE, bit_width,
                              "float32" if bit_width == 8 else "float16",
                              weight_steps, term_steps)


KERNELS: dict = {"embedding_bag": choose_embedding_bag}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
