"""ATen's float math of the dynamically quantized recurrent cells: the ``"rnn_cell"`` family.

``torch.ao.nn.quantized.dynamic`` LSTM, GRU, LSTMCell, GRUCell and RNNCell run the cells of
pytorch aten/src/ATen/native/RNN.cpp (``LSTMCell``, ``GRUCell``, ``SimpleCell`` over
``QuantizedCellParamsDynamic`` / ``QuantizedCellParamsFP16``) on every engine: two dynamically
quantized Linears (``linear_ih``, ``linear_hh``: the packed params' ``apply_dynamic``, each
adding its own bias in its epilogue) and float32 ATen kernels between them. Measured against
torch 2.13 (fbgemm, x86, qnnpack, onednn; qint8 and float16 weights) given torch's own Linear
outputs: every output bit-equal with these formulas.

    LSTM  gates = f32(hh + ih)          hh.add_(ih): add's SIMD fmadd(b, 1, a) is a + b
          i, f, g, o = gates.unsafe_chunk(4, 1)      views of stride 4H (rows of H)
          i, f, o = sigmoid_(i, f, o)                ATen float sigmoid (SLEEF body, glibc tail)
          g = tanh_(g)                               at::tanh: MKL vsTanh (not reproduced)
          c' = f32(f32(f * c) + f32(i * g))          (forgetgate * cx).add_(ingate * cellgate)
          h' = f32(o * tanh(c'))
    GRU   r = sigmoid_(f32(hh_r + ih_r)); z = sigmoid_(f32(hh_z + ih_z))   chunk views of hh
          n = tanh(f32(ih_n + f32(hh_n * r)))         b_hn is inside hh_n (linear_hh's bias)
          h' = f32(f32(f32(h - n) * z) + n)           (hidden - new_gate).mul_(z).add_(n)
    RNN   h' = tanh(f32(hh + ih))  or  relu: h' = hh + ih < 0 ? 0 : hh + ih  (clamp_min: -0
          and NaN kept, both lambdas)

The sigmoids run in place on the chunk views, so their SIMD body and scalar tail are split per
row of H elements (``engines.aten._strided_simd_mask``), not over the contiguous tensor; every
add, sub and mul is one IEEE float32 operation in both lambdas.

``torch.tanh`` on float32 is MKL's ``vsTanh`` (aten/src/ATen/native/cpu/UnaryOpsKernel.cpp
``IMPLEMENT_FLOAT_KERNEL(tanh)`` -> aten/src/ATen/cpu/vml.h ``IMPLEMENT_VML_MKL(tanh, Tanh)``):
measured (torch 2.13.0, AMD EPYC), it differs from the correctly rounded tanh on 119 of
200,000 inputs ``2 * randn`` (240 of 200,000 on wider inputs; 687 from SLEEF's tanhf). A cell
with a tanh is therefore refused unless the user allows ``"tanh"``; then qexact uses the
correctly rounded float32 tanh and marks the layer inexact. RNNCell with
``nonlinearity="relu"`` has no tanh and is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError

SOURCE = "pytorch aten/src/ATen/native/RNN.cpp"

CELL_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
"""How many gate blocks of ``hidden_size`` rows each cell's weights hold."""

CELL_NAMES = {"lstm": "LSTMCell", "gru": "GRUCell", "rnn_tanh": "SimpleCell<tanh_f>",
              "rnn_relu": "SimpleCell<relu_f>"}

CELL_FORMULAS = {
    "lstm": (
        "gates = f32(hh + ih)  (linear_hh(hx).add_(linear_ih(x)))",
        "i, f, g, o = gates.unsafe_chunk(4, 1)  (views, rows of H)",
        "i, f, o = sigmoid_(i), sigmoid_(f), sigmoid_(o)  (ATen float sigmoid)",
        "g = tanh_(g)",
        "c' = f32(f32(f * c) + f32(i * g))",
        "h' = f32(o * tanh(c'))",
    ),
    "gru": (
        "r = sigmoid_(f32(hh_r + ih_r)), z = sigmoid_(f32(hh_z + ih_z))  (chunk views of hh)",
        "n = tanh(f32(ih_n + f32(hh_n * r)))  (b_hn is in hh_n: linear_hh's bias)",
        "h' = f32(f32(f32(h - n) * z) + n)",
    ),
    "rnn_tanh": ("h' = tanh(f32(hh + ih))",),
    "rnn_relu": ("h' = relu(f32(hh + ih)) = (s < 0 ? 0 : s)  (clamp_min: -0 and NaN kept)",),
}
"""Each cell's float32 steps after its two Linears, in ATen's order (RNN.cpp)."""

TANH_MEASURED = ("torch.tanh on float32 is MKL's vsTanh (aten/src/ATen/cpu/vml.h "
                 "IMPLEMENT_VML_MKL(tanh, Tanh)), whose results qexact does not reproduce: "
                 "measured, it differs from the correctly rounded tanh on 119 of 200,000 inputs "
                 "(2 * randn; about 0.06 %), and every later step of the recurrence inherits "
                 "such a difference")


def tanh_correctly_rounded(x: np.ndarray) -> np.ndarray:
    """``f32(tanh(double(x)))``: the correctly rounded float32 tanh (up to double rounding,
    which float64's 29 extra bits make vanishingly rare), used where the user allowed qexact
    to stand in for MKL's vsTanh."""
    with np.errstate(all="ignore"):
        return np.tanh(np.asarray(x, np.float64)).astype(np.float32)


def relu_clamp_min(x: np.ndarray) -> np.ndarray:
    """``at::relu`` = ``clamp_min(x, 0)`` on float32: SIMD ``max_ps(0, x)`` and the scalar
    ``isnan(a) ? a : (a < 0 ? 0 : a)`` agree: -0.0 and NaN stay (UnaryOpsKernel.cpp /
    TensorCompare clamp_min kernel)."""
    return np.where(x < 0, np.float32(0), x).astype(np.float32)


@dataclass(frozen=True)
class RnnCellKernel:
    """The float math of one recurrent cell between its two Linears: ``cell`` (a key of
    ``CELL_GATES``), ``sigmoid`` (the engine's float sigmoid kernel, an ``ActivationKernel``
    of the ``"float_activation"`` family; None for the simple cells), ``tanh`` (the float32 tanh
    qexact runs, None where the cell has none), ``inexact`` (why the cell is not bit-exact,
    empty when it is) and the ``formulas`` of its steps."""

    name: str
    source: str
    cell: str
    sigmoid: object
    tanh: object
    inexact: str
    formulas: tuple[str, ...]

    @property
    def gates(self) -> int:
        return CELL_GATES[self.cell]


def choose_rnn_cell(engine, cell: str, num_threads: int) -> RnnCellKernel:
    """ATen's cell ``cell`` (``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``) on every
    engine: the same float kernels run whichever engine packed the Linears. A cell with a tanh
    asks ``engine.inexact_kernel("tanh", ...)`` (refused unless allowed)."""
    if cell not in CELL_GATES:
        raise UnsupportedError(f"recurrent cell {cell!r} is not supported; supported: "
                               f"{sorted(CELL_GATES)}")
    sigmoid = None
    if cell in ("lstm", "gru"):
        sigmoid = engine.kernel("float_activation", "sigmoid", {}, int(num_threads))
    tanh, inexact = None, ""
    if cell != "rnn_relu":
        inexact = engine.inexact_kernel(
            "tanh", f"the tanh of ATen's {CELL_NAMES[cell]} (RNN.cpp): {TANH_MEASURED}; with "
            "allow_inexact=('tanh',) qexact uses the correctly rounded float32 tanh")
        tanh = tanh_correctly_rounded
    return RnnCellKernel(f"ATen {CELL_NAMES[cell]} (float32)", f"{SOURCE} {CELL_NAMES[cell]}",
                         cell, sigmoid, tanh, inexact, CELL_FORMULAS[cell])


KERNELS: dict = {"rnn_cell": choose_rnn_cell}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
