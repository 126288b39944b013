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

GroupNorm (group_norm_kernel.cpp; ``kernel("float_normalization", "group_norm")``), per
(sample, group) of ``D = C / G`` channels times ``HxW`` pixels:

    contiguous input (``suggest_memory_format()``; a 1-channel input counts as contiguous):
        mean, var = RowwiseMoments(the group's D*HxW elements)        (as LayerNorm above)
    channels_last input, HxW < 1024 (impl-1, ``ColumnwiseMoments``): L lanes, for each pixel m
        in order, the group's channels in blocks of L (the last block zero-padded):
        S[l] = f32(S[l] + x);  Q[l] = f32(Q[l] + f32(x * x))          (never contracted)
        sum = reduce(S), sumsq = reduce(Q): the AVX2 tree ``((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))``
        (``VecReduceAllSIMD``), the default build's lane order ``(((l0+l1)+l2)+...)``;
        s = f32(1 / f32(D*HxW)); mean = f32(sum * s); var = fma(sumsq, s, -f32(mean * mean))
    var = max(var, 0);  rstd = f32(1.0 / sqrt(double(var) + eps))      (eps is a double)
    contiguous, neither weight nor bias: y = f32(f32(x - mean) * rstd)
    otherwise (gamma = 1, beta = 0 where None): scale = f32(rstd * gamma[c]);  bias = fma(-scale, mean, beta[c])
          (channels_last with a bias but no weight: f32(f32(-scale * mean) + beta[c]), measured)
          y = fma(scale, x, bias)
    channels_last with HxW >= 1024 (impl-2: per-thread float32 partial sums) is refused.

BatchNorm in eval (batch_norm_kernel.cpp; ``kernel("float_normalization", "batch_norm")``), per
channel, float32 (``opmath_t``), then one multiply-add per element (contiguous and channels_last
implementations alike, SIMD body and masked tail alike)::

    invstd = f32(1 / sqrtf(f32(var + f32(eps))));  alpha = f32(invstd * w)   (w = 1 if None)
    beta = fma(-mean, alpha, b)                    (b = 0 if None)
    y = fma(x, alpha, beta)

Measured against torch 2.13.0 (tests/ops/test_float_norm.py,
tests/ops/test_float_groupnorm_batchnorm.py) on the host's ATen capability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines import Engine, get_engine
from ..errors import ShapeError, UnsupportedError
from ..layout import suggests_channels_last, to_channels_last, to_contiguous
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


def _float_input(x, op: str, quantized_op: str):
    """``x``, which a float op's kernel takes; a quantized tensor takes ``quantized_op``."""
    if isinstance(x, QuantizedArray):
        raise ShapeError(f"{op} runs on float32 tensors; a quantized input takes {quantized_op}")
    return x


def _float_input_qparams(node, input_qparams, quantized_op: str) -> None:
    """Prepare's check of the same: the node's input must not be quantized."""
    if input_qparams and input_qparams[0] is not None:
        raise ShapeError(f"{node.op} {node.name!r} got a quantized input; a quantized input "
                         f"takes the {quantized_op} op")


def _run(params, inputs):
    x = _float_input(inputs[0], "float_layer_norm", "layer_norm (quantized::layer_norm)")
    return float_layer_norm(x, params)


@graph_op("float_layer_norm", "LayerNorm on float32 tensors (nn.LayerNorm, F.layer_norm), as "
          "ATen's CPU kernel")
class FloatLayerNormOp:
    """Attrs ``normalized_shape``, ``eps``; arrays ``weight``, ``bias`` (optional)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        _float_input_qparams(node, input_qparams, "layer_norm")
        params = prepare_float_layer_norm(node.attrs["normalized_shape"],
                                          node.arrays.get("weight"), node.arrays.get("bias"),
                                          node.attrs["eps"], engine=engine)
        return params, None

    run = staticmethod(_run)

    @staticmethod
    def explain(params, inputs, result, index):
        """Observed on the run: the row's moments and rstd, and the output formula."""
        return observed_stages(_run, params, inputs, result, index), [(0, index)]


# --- GroupNorm -------------------------------------------------------------------------------

CHANNELS_LAST_FEATURE_MAP_THRESHOLD = 1024
"""``feature_map_threshold`` of ``GroupNormKernelImplChannelsLastInternal``: from this HxW on
it parallelizes over pixels with per-thread float32 partial sums (impl-2, refused)."""


@dataclass(frozen=True, eq=False)
class FloatGroupNormParams:
    """A prepared float32 GroupNorm: ``num_groups``, ``num_channels`` (None: the input's, for
    F.group_norm without weight and bias), ``weight``/``bias`` (float32 per channel, or None),
    ``eps``, ``kernel``."""

    num_groups: int
    num_channels: int | None
    weight: np.ndarray | None
    bias: np.ndarray | None
    eps: float
    kernel: object


def prepare_float_group_norm(num_groups: int, num_channels: int, weight, bias, eps: float, *,
                             engine: Engine | str) -> FloatGroupNormParams:
    """Validate a float32 GroupNorm; ``engine`` (an ``Engine`` or a name) states the kernel."""
    groups = int(num_groups)
    channels = None if num_channels is None else int(num_channels)
    if groups <= 0 or (channels is not None and (channels <= 0 or channels % groups)):
        raise ShapeError(f"GroupNorm: {channels} channels cannot be split in {groups} groups")
    if channels is None and (weight is not None or bias is not None):
        raise ShapeError("GroupNorm with a weight or bias needs num_channels")
    kernel = get_engine(engine).kernel("float_normalization", "group_norm")
    return FloatGroupNormParams(groups, channels, _vector(weight, channels, "weight"),
                                _vector(bias, channels, "bias"), float(eps), kernel)


def _lane_reduce(lanes: np.ndarray, tree: bool) -> np.ndarray:
    """``vec_reduce_all(+)`` of (..., L) lanes: AVX2's shuffle tree or the lane order."""
    if tree:
        while lanes.shape[-1] > 1:
            half = lanes.shape[-1] // 2
            lanes = f32(lanes[..., :half] + lanes[..., half:])
        return lanes[..., 0]
    total = lanes[..., 0]
    for lane in range(1, lanes.shape[-1]):
        total = f32(total + lanes[..., lane])
    return total


def column_moments(x: np.ndarray, groups: int, kernel) -> tuple[np.ndarray, np.ndarray]:
    """``ColumnwiseMoments`` + the mean/var step of GroupNorm's channels_last impl-1 on x of
    logical shape (N, C, HxW): (mean, var) per (N, G), float32 (module docstring)."""
    batch, channels, pixels = x.shape
    per_group, lanes = channels // groups, kernel.lanes
    blocks = -(-per_group // lanes)
    padded = np.zeros((batch, groups, blocks * lanes, pixels), np.float32)
    padded[:, :, :per_group] = x.reshape(batch, groups, per_group, pixels)
    sums = np.zeros((batch, groups, lanes), np.float32)
    squares = np.zeros_like(sums)
    for pixel in range(pixels):
        for block in range(blocks):
            values = padded[:, :, block * lanes:(block + 1) * lanes, pixel]
            sums = f32(sums + values)
            squares = f32(squares + f32(values * values))
    tree = kernel.fused_multiply_add  # the AVX2 build's VecReduceAllSIMD; default: lane order
    total, total_sq = _lane_reduce(sums, tree), _lane_reduce(squares, tree)
    inverse = f32(np.float32(1) / np.float32(per_group * pixels))
    mean = f32(total * inverse)
    var = _fma(total_sq, inverse, -f32(mean * mean), kernel.fused_multiply_add)
    return mean, var


def float_group_norm(x: np.ndarray, params: FloatGroupNormParams) -> np.ndarray:
    """``torch.nn.functional.group_norm`` on a float32 (N, C, *spatial) array, as ATen's CPU
    kernel (the path ``suggest_memory_format()`` picks; the output keeps that layout)."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"float GroupNorm expects a float32 array, got {x.dtype}")
    expected = x.shape[1] if params.num_channels is None and x.ndim >= 2 else params.num_channels
    if x.ndim < 2 or x.shape[1] != expected or x.shape[1] % params.num_groups:
        raise ShapeError(f"GroupNorm with {params.num_groups} groups over {expected} channels "
                         f"expects (N, {expected}, ...), got {x.shape}")
    kernel, groups = params.kernel, params.num_groups
    fused = kernel.fused_multiply_add
    batch, channels = x.shape[:2]
    pixels = int(np.prod(x.shape[2:], dtype=np.int64))
    channels_last = suggests_channels_last(x)
    if channels_last and pixels >= CHANNELS_LAST_FEATURE_MAP_THRESHOLD:
        raise UnsupportedError(
            f"float GroupNorm on a channels_last input with H*W = {pixels} >= "
            f"{CHANNELS_LAST_FEATURE_MAP_THRESHOLD}: ATen's impl-2 (per-thread float32 partial "
            "sums, group_norm_kernel.cpp) is not modelled; give it a contiguous input "
            "(x.contiguous()) or smaller feature maps")
    logical = np.ascontiguousarray(x).reshape(batch, channels, pixels)
    with np.errstate(all="ignore"):  # NaN, infinities, eps = 0 on constant groups, as in C
        if channels_last:
            mean, var = column_moments(logical, groups, kernel)
            path = (f"ColumnwiseMoments ({kernel.lanes} lanes, "
                    + ("tree" if fused else "lane-order") + " reduce)")
        else:
            mean, var = row_moments(logical.reshape(batch * groups, -1), kernel.lanes, fused)
            mean, var = mean.reshape(batch, groups), var.reshape(batch, groups)
            path = f"RowwiseMoments ({kernel.lanes}-lane Welford)"
        var = np.maximum(var, np.float32(0))
        rstd = f32(1.0 / np.sqrt(var.astype(np.float64) + params.eps))
        grouped = logical.reshape(batch, groups, channels // groups, pixels)
        m, r = mean[:, :, None, None], rstd[:, :, None, None]
        if params.weight is None and params.bias is None and not channels_last:
            y = f32(f32(grouped - m) * r)
            formula = "y = f32(f32(x - mean) * rstd)"
        else:
            gamma = (np.ones(channels, np.float32) if params.weight is None
                     else params.weight).reshape(1, groups, -1, 1)
            beta = (np.zeros(channels, np.float32) if params.bias is None
                    else params.bias).reshape(1, groups, -1, 1)
            scale = f32(r * gamma)
            if channels_last and params.weight is None:  # measured: not contracted there
                bias = f32(f32(-scale * m) + beta)
            else:
                bias = _fma(-scale, m, beta, fused)
            y = _fma(scale, grouped, bias, fused)
            formula = "scale = f32(rstd * gamma); bias = fma(-scale, mean, beta); " \
                      "y = fma(scale, x, bias)"
    y = y.reshape(x.shape)
    if observing():
        def spread(value):
            return np.broadcast_to(np.asarray(value).reshape(batch, groups, 1, 1),
                                   grouped.shape).reshape(x.shape)
        record("group_norm (float): moments", f"{path}; rstd = f32(1 / sqrt(double(var) + eps))",
               spread(rstd), mean=spread(mean), var=spread(var), eps=params.eps,
               kernel=kernel.name)
        record("group_norm (float): output", formula, y, x=x, mean=spread(mean),
               rstd=spread(rstd))
    return to_channels_last(y) if channels_last else to_contiguous(y)


def _run_group(params, inputs):
    x = _float_input(inputs[0], "float_group_norm", "group_norm (quantized::group_norm)")
    return float_group_norm(x, params)


@graph_op("float_group_norm", "GroupNorm on float32 tensors (nn.GroupNorm, F.group_norm), as "
          "ATen's CPU kernel")
class FloatGroupNormOp:
    """Attrs ``num_groups``, ``num_channels``, ``eps``; arrays ``weight``, ``bias`` (optional)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        _float_input_qparams(node, input_qparams, "group_norm")
        params = prepare_float_group_norm(node.attrs["num_groups"], node.attrs.get("num_channels"),
                                          node.arrays.get("weight"), node.arrays.get("bias"),
                                          node.attrs["eps"], engine=engine)
        return params, None

    run = staticmethod(_run_group)

    @staticmethod
    def explain(params, inputs, result, index):
        """Observed on the run: the group's moments and rstd, and the output formula."""
        return observed_stages(_run_group, params, inputs, result, index), [(0, index)]


# --- BatchNorm (eval) ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FloatBatchNormParams:
    """A prepared float32 eval BatchNorm: the model's ``weight``, ``bias`` (or None),
    ``running_mean``, ``running_var``, ``eps``; ``alpha``/``beta`` what the kernel applies."""

    weight: np.ndarray | None
    bias: np.ndarray | None
    running_mean: np.ndarray
    running_var: np.ndarray
    eps: float
    alpha: np.ndarray
    beta: np.ndarray
    kernel: object

    @property
    def num_channels(self) -> int:
        return self.alpha.size


def prepare_float_batch_norm(weight, bias, running_mean, running_var, eps: float, *,
                             engine: Engine | str) -> FloatBatchNormParams:
    """``batch_norm_cpu_collect_linear_and_constant_terms`` (eval): alpha, beta per channel."""
    kernel = get_engine(engine).kernel("float_normalization", "batch_norm")
    mean = np.asarray(running_mean)
    channels = mean.size
    mean = _vector(mean, channels, "running_mean")
    var = _vector(running_var, channels, "running_var")
    weight, bias = _vector(weight, channels, "weight"), _vector(bias, channels, "bias")
    with np.errstate(all="ignore"):
        invstd = f32(np.float32(1) / np.sqrt(f32(var + np.float32(eps))))
        alpha = invstd if weight is None else f32(invstd * weight)
        beta = _fma(-mean, alpha, np.zeros(channels, np.float32) if bias is None else bias,
                    kernel.fused_multiply_add)
    return FloatBatchNormParams(weight, bias, mean, var, float(eps), alpha, beta, kernel)


def float_batch_norm(x: np.ndarray, params: FloatBatchNormParams) -> np.ndarray:
    """``F.batch_norm(training=False)`` on a float32 (N, C, *spatial) array: ``y = fma(x, alpha,
    beta)`` per element; the output keeps the input's ``suggest_memory_format()``."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"float BatchNorm expects a float32 array, got {x.dtype}")
    if x.ndim < 2 or x.shape[1] != params.num_channels:
        raise ShapeError(f"BatchNorm over {params.num_channels} channels expects (N, "
                         f"{params.num_channels}, ...), got {x.shape}")
    shape = (1, -1) + (1,) * (x.ndim - 2)
    alpha, beta = params.alpha.reshape(shape), params.beta.reshape(shape)
    with np.errstate(all="ignore"):
        y = _fma(x, alpha, beta, params.kernel.fused_multiply_add)
    if observing():
        record("batch_norm (float): linear terms (offline)",
               "invstd = f32(1 / sqrtf(f32(var + eps))); alpha = f32(invstd * w); "
               "beta = fma(-mean, alpha, b)", np.broadcast_to(beta, x.shape),
               alpha=np.broadcast_to(alpha, x.shape), eps=params.eps,
               kernel=params.kernel.name)
        record("batch_norm (float): output", "y = fma(x, alpha, beta)", y, x=x)
    return to_channels_last(y) if suggests_channels_last(x) else to_contiguous(y)


def _run_batch(params, inputs):
    x = _float_input(inputs[0], "float_batch_norm", "batch_norm (quantized::batch_norm*)")
    return float_batch_norm(x, params)


@graph_op("float_batch_norm", "BatchNorm1d/2d/3d in eval on float32 tensors (nn.BatchNorm*d, "
          "F.batch_norm with training=False), as ATen's CPU kernel")
class FloatBatchNormOp:
    """Arrays ``running_mean``, ``running_var``, ``weight``, ``bias`` (optional); attr ``eps``."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        _float_input_qparams(node, input_qparams, "batch_norm")
        arrays = node.arrays
        params = prepare_float_batch_norm(arrays.get("weight"), arrays.get("bias"),
                                          arrays["running_mean"], arrays["running_var"],
                                          node.attrs["eps"], engine=engine)
        return params, None

    run = staticmethod(_run_batch)

    @staticmethod
    def explain(params, inputs, result, index):
        """Observed on the run: the offline alpha/beta and the output's multiply-add."""
        return observed_stages(_run_batch, params, inputs, result, index), [(0, index)]
