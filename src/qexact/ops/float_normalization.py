"""Float32 LayerNorm (nn.LayerNorm left float, F.layer_norm on float tensors), as ATen's CPU
kernel computes it, bit for bit.

FX's default qconfig mapping quantizes nn.LayerNorm and F.layer_norm (``quantized::layer_norm``,
ops/normalization.py); they stay float where the user gives them ``qconfig=None``, in eager models
that never quantize them, and in transformer blocks run between a dequantize and a quantize.

The engine states the kernel (``Engine.kernel("float_normalization", "layer_norm")``, a
``FloatLayerNormKernel``, engines/aten_normalization.py: ``lanes`` L and whether multiply-adds are
fused; ``fma(a, b, c)`` below is one rounding where it says so, else ``f32(f32(a*b) + c)``).
Per row of N elements (pytorch aten/src/ATen/native/cpu/moments_utils.h ``RowwiseMoments``,
layer_norm_kernel.cpp ``LayerNormKernelImplInternal``, ``LayerNormSecondPass``)::

    n = N // L vectors, in chunks of 16; every lane l runs its own Welford stream per chunk:
        d = x - m1;  m1 = fma(1/(j+1), d, m1);  m2 = fma(d, f32(x - m1), m2)    (j-th vector)
    chunk k is merged into stack[0] (AddMomentsVec), then while bit j of k+1 is 0 (j = 1 ..
    depth-1, depth = max(1, ceil(log2(#chunks)))) stack[j-1] is merged into stack[j] and cleared;
    at the end stack[1..depth-1] are merged into stack[0], in that order. AddMomentsVec(a -> b):
        c = f32(a.n / (a.n + b.n)); d = a.m1 - b.m1; t = f32(b.m2 + a.m2); cd = f32(c * d)
        b.m1 = f32(b.m1 + cd);  b.m2 = fma(f32(d * b.n), cd, t)
    the scalar tail x[n*L:] (in order, m0 = 1, 2, ...; never contracted, measured):
        d = x - m1;  m1 = f32(m1 + f32(d / m0));  m2 = f32(m2 + f32(d * f32(x - m1)))
    then each lane l = 0..L-1 is merged into the tail's (AddMoments, scalar):
        c = f32(n / (m0 + n)); d = lane.m1 - m1; m1 = fma(c, d, m1)
        m2 = f32(m2 + fma(f32(f32(d * d) * c), m0, lane.m2))
    mean = m1;  var = f32(m2 / N);  rstd = f32(1 / sqrtf(f32(var + f32(eps))))
    y = fma(f32(f32(x - mean) * rstd), gamma[i], beta[i])     (weight and bias: vec::map3)
    y = fma(f32(x - mean), rstd, beta[i])                      (bias only: GCC folds * 1)
    y = f32(f32(x - mean) * rstd) * gamma[i] + 0 | + 0         (weight only | neither)
    (map3 computes ``x + (-mean)``, the scalar loops ``x - mean`` (GCC's rewrite): the same
    values, but a NaN mean keeps its sign only in the latter; measured on NaN and inf rows.)

Measured against torch 2.13.0 (tests/ops/test_float_norm.py) on the host's ATen capability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines import Engine, get_engine
from ..errors import ShapeError
from ..qparams import QuantizedArray
from ..rounding import f32, fma_float32
from ..trace import observing, record
from ._registry import graph_op, observed_stages

CHUNK_VECTORS = 16
"""``kChunkSize`` of moments_utils.h: vectors per Welford chunk."""


@dataclass(frozen=True, eq=False)
class FloatLayerNormParams:
    """A prepared float32 LayerNorm over the trailing ``normalized_shape`` dims: ``weight`` and
    ``bias`` (float32, flattened, or None), ``eps``, and ``kernel``, what the engine runs."""

    normalized_shape: tuple[int, ...]
    weight: np.ndarray | None
    bias: np.ndarray | None
    eps: float
    kernel: object

    @property
    def size(self) -> int:
        return int(np.prod(self.normalized_shape))


def _vector(value, size: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    value = np.asarray(value)
    if value.dtype != np.float32 or value.size != size:
        raise ShapeError(f"LayerNorm {name} must be float32 with {size} elements, got "
                         f"{value.dtype} {value.shape}")
    return value.reshape(-1)


def prepare_float_layer_norm(normalized_shape, weight, bias, eps: float, *,
                             engine: Engine | str) -> FloatLayerNormParams:
    """Validate a float32 LayerNorm; ``engine`` (an ``Engine`` or a name) states the kernel."""
    shape = tuple(int(size) for size in np.atleast_1d(normalized_shape))
    if not shape or any(size <= 0 for size in shape):
        raise ShapeError(f"LayerNorm normalized_shape must be positive sizes, got {shape!r}")
    size = int(np.prod(shape))
    kernel = get_engine(engine).kernel("float_normalization", "layer_norm")
    return FloatLayerNormParams(shape, _vector(weight, size, "weight"),
                                _vector(bias, size, "bias"), float(eps), kernel)


def _fma(a, b, c, fused: bool) -> np.ndarray:
    if fused:
        return fma_float32(a, b, c)
    return f32(f32(np.float32(a) * np.float32(b)) + np.float32(c))


def _merge(into: list, other: list, fused: bool) -> None:
    """``AddMomentsVec(other -> into)``: ``[count, m1, m2]`` stacks of (rows, lanes) arrays."""
    count = into[0] + other[0]
    ratio = np.float32(0) if count == 0 else f32(np.float32(other[0]) / np.float32(count))
    delta = f32(other[1] - into[1])
    total = f32(into[2] + other[2])
    scaled = f32(ratio * delta)
    weighted = f32(delta * np.float32(into[0]))
    into[1] = f32(into[1] + scaled)
    into[2] = _fma(weighted, scaled, total, fused)
    into[0] = count


def row_moments(rows: np.ndarray, lanes: int, fused: bool) -> tuple[np.ndarray, np.ndarray]:
    """``RowwiseMoments(X, N)`` of every row of ``rows`` (float32, (M, N)): (mean, var), float32,
    in the kernel's order (module docstring)."""
    count_rows, size = rows.shape
    vectors = size // lanes
    chunks = -(-vectors // CHUNK_VECTORS)
    depth = 1 if chunks <= 2 else int(chunks - 1).bit_length()  # utils::CeilLog2, at least 1
    zero = np.zeros((count_rows, lanes), np.float32)
    stack = [[0, zero, zero] for _ in range(depth)]
    reciprocal = [np.float32(np.float32(1) / np.float32(j + 1)) for j in range(CHUNK_VECTORS)]
    for chunk in range(chunks):
        m1 = m2 = zero
        used = min(CHUNK_VECTORS, vectors - chunk * CHUNK_VECTORS)
        for j in range(used):
            start = (chunk * CHUNK_VECTORS + j) * lanes
            x = rows[:, start:start + lanes]
            delta = f32(x - m1)
            m1 = _fma(reciprocal[j], delta, m1, fused)
            m2 = _fma(delta, f32(x - m1), m2, fused)
        _merge(stack[0], [used, m1, m2], fused)
        mask = chunk + 1
        level = 1
        while level < depth and (mask & 1) == 0:
            _merge(stack[level], stack[level - 1], fused)
            stack[level - 1] = [0, zero, zero]
            mask >>= 1
            level += 1
    for level in range(1, depth):
        _merge(stack[0], stack[level], fused)
    count, m1, m2 = 0, np.zeros(count_rows, np.float32), np.zeros(count_rows, np.float32)
    for i in range(vectors * lanes, size):  # scalar tail, never contracted (measured)
        x = rows[:, i]
        delta = f32(x - m1)
        count += 1
        m1 = f32(m1 + f32(delta / np.float32(count)))
        m2 = f32(m2 + f32(delta * f32(x - m1)))
    lane_m1, lane_m2 = stack[0][1], stack[0][2]
    for lane in range(lanes):  # AddMoments(vectors, lane -> tail), scalar, GCC-contracted
        total = count + vectors
        ratio = np.float32(0) if total == 0 else f32(np.float32(vectors) / np.float32(total))
        delta = f32(lane_m1[:, lane] - m1)
        m1 = _fma(ratio, delta, m1, fused)
        m2 = f32(m2 + _fma(f32(f32(delta * delta) * ratio), np.float32(count),
                           lane_m2[:, lane], fused))
        count = total
    return m1, f32(m2 / np.float32(size))


def float_layer_norm(x: np.ndarray, params: FloatLayerNormParams) -> np.ndarray:
    """``torch.nn.functional.layer_norm`` on a float32 array, as ATen's CPU kernel."""
    x = np.asarray(x)
    shape = params.normalized_shape
    if x.dtype != np.float32:
        raise ShapeError(f"float LayerNorm expects a float32 array, got {x.dtype}")
    if x.ndim < len(shape) or x.shape[x.ndim - len(shape):] != shape:
        raise ShapeError(f"LayerNorm over {shape} needs an input ending in those dims, got "
                         f"{x.shape}")
    kernel, size = params.kernel, params.size
    fused = kernel.fused_multiply_add
    rows = np.ascontiguousarray(x).reshape(-1, size)
    with np.errstate(all="ignore"):  # NaN, infinities and eps = 0 on constant rows, as in C
        mean, var = row_moments(rows, kernel.lanes, fused)
        rstd = f32(np.float32(1) / np.sqrt(f32(var + np.float32(params.eps))))
        centered = f32(rows - mean[:, None])
        if params.weight is None:
            beta = np.float32(0) if params.bias is None else params.bias
            y = _fma(centered, rstd[:, None], beta, fused)
        elif params.bias is None:
            y = _fma(f32(centered * rstd[:, None]), params.weight, np.float32(0), fused)
        else:  # vec::map3 adds bias = -mean (a NaN mean's sign flips); the scalar loops subtract
            centered = f32(-mean[:, None] + rows)  # two NaNs: bias's, as the compiled add
            y = _fma(f32(centered * rstd[:, None]), params.weight, params.bias, fused)
    if observing():
        def spread(value):
            return np.broadcast_to(np.asarray(value).reshape(-1, 1), rows.shape).reshape(x.shape)
        record("layer_norm (float): row moments",
               f"RowwiseMoments: {kernel.lanes}-lane Welford in chunks of {CHUNK_VECTORS}, "
               "cascade merge, scalar tail, lane merge; rstd = f32(1/sqrtf(var + eps))",
               spread(rstd), mean=spread(mean), var=spread(var), eps=params.eps,
               N=size, kernel=kernel.name)
        record("layer_norm (float): output",
               "y = fma(f32(f32(x - mean) * rstd), gamma, beta)" if params.weight is not None
               else "y = fma(f32(x - mean), rstd, beta)", y.reshape(x.shape), x=x,
               mean=spread(mean), rstd=spread(rstd))
    return y.reshape(x.shape)


def _run(params, inputs):
    if isinstance(inputs[0], QuantizedArray):
        raise ShapeError("float_layer_norm runs on float32 tensors; a quantized input takes "
                         "layer_norm (quantized::layer_norm)")
    return float_layer_norm(inputs[0], params)


@graph_op("float_layer_norm", "LayerNorm on float32 tensors (nn.LayerNorm, F.layer_norm), as "
          "ATen's CPU kernel")
class FloatLayerNormOp:
    """Attrs ``normalized_shape``, ``eps``; arrays ``weight``, ``bias`` (optional)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise ShapeError(f"float_layer_norm {node.name!r} got a quantized input; "
                             "quantized LayerNorm is the layer_norm op")
        params = prepare_float_layer_norm(node.attrs["normalized_shape"],
                                          node.arrays.get("weight"), node.arrays.get("bias"),
                                          node.attrs["eps"], engine=engine)
        return params, None

    run = staticmethod(_run)

    @staticmethod
    def explain(params, inputs, result, index):
        """Observed on the run: the row's moments and rstd, and the output formula."""
        return observed_stages(_run, params, inputs, result, index), [(0, index)]
