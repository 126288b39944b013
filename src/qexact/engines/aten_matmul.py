"""ATen's float32 matrix product (``torch.matmul``, ``torch.bmm``, ``@``): the ``"matmul"`` family.

Every PyTorch engine runs the same float kernels; ``quantized::matmul`` reaches them too
(pytorch aten/src/ATen/native/quantized/cpu/qmatmul.cpp without ``USE_RUY_QMATMUL``, the x86
build: ``at::quantize_per_tensor(at::matmul(a.dequantize(), b.dequantize()), s, z, dtype)``).

How ``at::matmul`` gets to a kernel (aten/src/ATen/native/LinearAlgebra.cpp ``_matmul_impl``):

- both 2-D: ``mm``; a >= 3-D ``a`` times a 2-D ``b``: ``a`` folded to ``(batch * M, K)``, one
  ``mm``; both >= 3-D (or a 2-D ``a`` times a >= 3-D ``b``): batch dims broadcast, reshaped
  to one ``bmm`` of ``G`` products. (1-D operands, and a 2-D ``a`` times a >= 3-D ``b``, which
  ATen folds transposed, are not supported here.)
- ``bmm`` with ``K * M * N < 400`` runs ``baddbmm_cpu_kernel``: for each element, ``acc = 0;
  acc += a[k] * b[k]`` for ``k = 0..K-1``, float32, the product and the sum rounded apart (the
  generic build has no FMA contraction). Measured bit-equal on every shape tried.
- otherwise MKL's sgemm (``cpublas::gemm`` / ``gemm_batched_with_stride``; MKL 2024.2 in
  torch 2.13.0). MKL picks its kernel by CPU, shape and thread count, and its order is not
  documented. Measured on this host (AMD EPYC, AVX512, MKL's AVX512 path), for
  ``M >= 4`` and ``N >= 12`` (``C`` is ``M x N`` row-major) and ``K <= 1300``:

      K <= 192:        c = fmaf(a[K-1], b[K-1], ... fmaf(a[1], b[1], fmaf(a[0], b[0], 0)))
      192 < K <= 384:  h = K // 2; c = f32(seq_fma[0, h) + seq_fma[h, 2h))
                       odd K: c = f32(c + f32(a[K-1] b[K-1]))
      K > 384:         c = seq_fma[0, 192); c = f32(c + seq_fma[192, 384)); ... (blocks of 192)

  (each ``seq_fma[i, j)`` starts from 0; the K > 384 rule: 70 shapes, K 385-1300, 110,931
  outputs, measured with torchvision's Swin). This held for every element of 1,200+ random shapes
  (M, N up to 60, K up to 390; ``a`` and ``b`` contiguous or transposed, 2-D to 4-D, 1 and 2
  threads). With more than one thread and a single product (``mm``, or ``bmm`` of one
  matrix) MKL splits the rows between threads and the rows of a part smaller than 4 take the
  other kernel: only ``M`` a multiple of ``4 * threads`` is claimed there. For ``M < 4`` or
  ``N < 12`` MKL runs kernels whose order qexact has not found (for ``(16, 32, 4)`` a
  sequence of separately rounded products and sums; others mix): those, and ``K > 1300``,
  are the inexact part.

Outside that rule the kernel is inexact: ``engine.inexact_kernel("matmul", ...)`` refuses it
unless the user allowed ``"matmul"``; then qexact computes ``np.matmul`` in float32 (NumPy's
own BLAS order) and the output is marked inexact. Measured share of identical float32
outputs for those shapes: 10-60 % (random normal inputs); after ``quantized::matmul``'s
requantization most of the differences vanish (tests/ops/test_matmul.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..rounding import fma_float32

SOURCE = ("pytorch aten/src/ATen/native/LinearAlgebra.cpp (_matmul_impl, bmm_out_or_baddbmm_, "
          "baddbmm_cpu_kernel); aten/src/ATen/native/CPUBlas.cpp -> MKL 2024.2 sgemm")

SMALL_BMM = 400
"""``bmm_out_or_baddbmm_`` runs its own loop below ``K * M * N < 400`` (per product)."""

MKL_MIN_ROWS, MKL_MIN_COLUMNS, MKL_SINGLE_BLOCK, MKL_MAX_DEPTH = 4, 12, 192, 1300
"""The measured rule's bounds (module docstring): rows ``M >= 4``, columns ``N >= 12``, one
K block up to 192, two halves up to 384, blocks of 192 up to the largest K measured."""

MKL_MEASURED = (
    "torch.matmul on float32 runs MKL's sgemm, whose summation order qexact reproduces only "
    "for M >= 4, N >= 12, K <= 1300 (measured on this host's MKL AVX512 path); for this "
    "product ({shape}) MKL runs another kernel: measured, 10-60 % of float32 outputs are "
    "identical to NumPy's float32 matmul for such shapes (most quantized outputs of "
    "quantized::matmul still agree)")


def _sequential_mul_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``acc = f32(acc + f32(a[k] * b[k]))`` for k = 0..K-1 from 0 (baddbmm_cpu_kernel)."""
    acc = np.zeros(a.shape[:-1] + b.shape[-1:], np.float32)
    with np.errstate(all="ignore"):
        for k in range(a.shape[-1]):
            acc = acc + a[..., :, k, None] * b[..., None, k, :]
    return acc


def _sequential_fma(a: np.ndarray, b: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``acc = fmaf(a[k], b[k], acc)`` for k = start..stop-1, from 0."""
    acc = np.zeros(a.shape[:-1] + b.shape[-1:], np.float32)
    for k in range(start, stop):
        acc = fma_float32(a[..., :, k, None], b[..., None, k, :], acc)
    return acc


def mkl_k_blocks(depth: int) -> list[tuple[int, int]]:
    """The K blocks whose FMA chains (each from 0) MKL's sgemm adds into ``C`` one after
    another, inside the measured rule (module docstring): ``[0, K)`` up to K = 192; ``[0, h)``,
    ``[h, 2h)`` and, for odd K, ``[2h, K)`` up to 384; blocks of 192 beyond."""
    if depth <= MKL_SINGLE_BLOCK:
        return [(0, depth)]
    if depth > 2 * MKL_SINGLE_BLOCK:
        return [(start, min(start + MKL_SINGLE_BLOCK, depth))
                for start in range(0, depth, MKL_SINGLE_BLOCK)]
    half = depth // 2
    return [(0, half), (half, 2 * half)] + ([(2 * half, depth)] if depth % 2 else [])


def _mkl_blocked_fma(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The measured MKL order: ``C`` is the first block's chain (``beta = 0``: ``mm``, ``bmm``)
    or the bias (``beta = 1``: ``addmm``, ``at::linear`` with a bias), then each (other) block's
    chain is added, ``C = f32(C + chain)``, in order (``mkl_k_blocks``)."""
    blocks = mkl_k_blocks(a.shape[-1])
    if bias is None:
        acc, blocks = _sequential_fma(a, b, *blocks[0]), blocks[1:]
    else:
        acc = np.broadcast_to(np.asarray(bias, np.float32),
                              a.shape[:-1] + b.shape[-1:]).astype(np.float32)
    with np.errstate(all="ignore"):
        for start, stop in blocks:
            acc = (acc + _sequential_fma(a, b, start, stop)).astype(np.float32)
    return acc


def mkl_addmm(bias: np.ndarray, a: np.ndarray, b: np.ndarray, kernel) -> np.ndarray:
    """``addmm(bias, a, b)`` (``at::linear`` with a bias) of float32 ``(M, K)`` and ``(K, N)``:
    ``kernel`` is this family's kernel for the shape (``FloatMatmul.plan(...).kernel``). Inside
    the rule ``C`` starts at the bias (MKL's ``beta = 1``; measured: the bias last differs for
    K > 192 on ~30 % of outputs); outside (allowed only), the product then ``+ bias``."""
    if kernel.order != "fma":
        with np.errstate(all="ignore"):
            return (kernel.compute(a, b) + np.asarray(bias, np.float32)).astype(np.float32)
    return _mkl_blocked_fma(a, b, bias)


def _numpy_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.matmul(a, b).astype(np.float32)


_ORDERS = {
    "mul_add": (_sequential_mul_add, "c = f32(... f32(f32(a0 b0) + f32(a1 b1)) ... + f32(aK bK)), "
                                     "k ascending, no FMA"),
    "fma": (_mkl_blocked_fma, "c = fmaf(a[K-1], b[K-1], ... fmaf(a0, b0, 0)), k ascending "
                              "(192 < K <= 384: two halves summed, an odd last product added; "
                              "K > 384: chains of 192 summed in order)"),
    "numpy": (_numpy_order, "np.matmul in float32 (NumPy's BLAS order; inexact)"),
}


@dataclass(frozen=True)
class MatmulKernel:
    """The kernel one matrix product runs: ``name``, ``order`` (a key of the orders above),
    ``formula`` and ``inexact`` (why it is not bit-exact; empty when it is)."""

    name: str
    source: str
    order: str
    formula: str
    inexact: str = ""

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` of float32 ``(..., M, K)`` and ``(..., K, N)`` (batch dims broadcast)."""
        return _ORDERS[self.order][0](a, b)


@dataclass(frozen=True)
class MatmulPlan:
    """What ``at::matmul`` does with two shapes: ``path`` (``"mm"`` or ``"bmm"``), the number
    of products ``count``, each ``(M, K, N)``, the output shape and the kernel."""

    path: str
    count: int
    rows: int
    depth: int
    columns: int
    output_shape: tuple[int, ...]
    kernel: MatmulKernel


@dataclass(frozen=True)
class FloatMatmul:
    """ATen's float32 matmul on one engine: ``plan(a_shape, b_shape)`` decides the kernel of a
    product of those shapes (they are known only at run time); ``num_threads``: PyTorch's
    intra-op threads; ``allowed_inexact``: whether the user allowed ``"matmul"``
    (``allow_inexact``), else a product outside the measured rule raises."""

    name: str
    source: str
    num_threads: int
    allowed_inexact: bool
    inexact: str
    refuse: object = None
    """``engine.inexact_kernel`` bound to ``"matmul"`` (raises unless allowed)."""

    def plan(self, a_shape, b_shape) -> MatmulPlan:
        a_shape, b_shape = tuple(a_shape), tuple(b_shape)
        if len(a_shape) < 2 or len(b_shape) < 2:
            raise UnsupportedError(f"matmul of a 1-D operand ({a_shape} @ {b_shape}) is not "
                                   "supported (ATen's dot/mv); reshape it to 2-D")
        if len(a_shape) == 2 and len(b_shape) > 2:
            raise UnsupportedError(f"matmul of a 2-D by a {len(b_shape)}-D operand ({a_shape} "
                                   f"@ {b_shape}) is not supported (ATen folds it transposed)")
        rows, depth = a_shape[-2:]
        if b_shape[-2] != depth:
            raise ShapeError(f"matmul: {a_shape} @ {b_shape}: inner dimensions differ")
        columns = b_shape[-1]
        try:
            batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
        except ValueError:
            raise ShapeError(f"matmul: batch dimensions of {a_shape} and {b_shape} do not "
                             "broadcast") from None
        output_shape = tuple(batch) + (rows, columns)
        if len(b_shape) == 2:  # mm, or >= 3-D a folded into (batch * M, K)
            path, count, rows = "mm", 1, rows * int(np.prod(batch, dtype=np.int64))
        else:
            path, count = "bmm", int(np.prod(batch, dtype=np.int64))
        return MatmulPlan(path, count, rows, depth, columns, output_shape,
                          self._kernel(path, count, rows, depth, columns))

    def _kernel(self, path, count, rows, depth, columns) -> MatmulKernel:
        if path == "bmm" and depth * rows * columns < SMALL_BMM:
            return MatmulKernel("ATen baddbmm_cpu_kernel (K*M*N < 400)", SOURCE, "mul_add",
                                _ORDERS["mul_add"][1])
        split_rows = 4 * self.num_threads if self.num_threads > 1 and count == 1 else 1
        if (rows >= MKL_MIN_ROWS and columns >= MKL_MIN_COLUMNS and depth <= MKL_MAX_DEPTH
                and rows % split_rows == 0):
            return MatmulKernel(f"MKL sgemm ({path})", SOURCE, "fma", _ORDERS["fma"][1])
        why = MKL_MEASURED.format(shape=f"{count} x (M={rows}, K={depth}, N={columns}), "
                                  f"{self.num_threads} thread(s)")
        inexact = self.refuse(why)
        return MatmulKernel(f"MKL sgemm ({path}), order not reproduced", SOURCE, "numpy",
                            _ORDERS["numpy"][1], inexact)


def choose_matmul(engine, num_threads: int) -> FloatMatmul:
    """The ``"matmul"`` family: ATen's float32 matmul (every engine runs the same)."""
    allowed = "matmul" in engine.allowed_inexact
    inexact = ("products outside the measured MKL rule run in NumPy's order (allow_inexact="
               "('matmul',))") if allowed else ""
    return FloatMatmul("ATen matmul (float32)", SOURCE, int(num_threads), allowed, inexact,
                       lambda why: engine.inexact_kernel("matmul", why))


KERNELS: dict = {"matmul": choose_matmul}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
