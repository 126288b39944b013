"""Quantized BatchNorm1d/2d/3d (+ReLU), LayerNorm, GroupNorm and InstanceNorm1d/2d/3d.

These are ATen float32 kernels, the same on every quantized engine (only ATen's CPU capability
matters): each op asks its engine for the kernel (``Engine.kernel("normalization", ...)``, a
``NormalizationKernel``, engines/aten_normalization.py), which states the vector widths, whether
multiply-adds are fused, and the quantize steps of its vector and scalar-tail paths. The inputs and
outputs are integers, the middle is float32 arithmetic reproduced operation by operation, and the
run reports every stage (``qexact.trace``) for explain. Sources: pytorch
aten/src/ATen/native/quantized/cpu/qbatch_norm.cpp (``compute_fused_params``), qnormalization.cpp,
kernels/QuantizedOpKernels.cpp (``q_batch_norm_kernel``, ``quantized_normalize_kernel``,
``quantized_groupnorm_nhwc_kernel``, ``hsum``/``hsum_sq``). ``fma`` is ``fmaf`` where the capability
fuses, else ``f32(f32(a*b) + c)``.

BatchNorm (offline, float64 where C++ promotes to double)::

    inv_sigma = f32(1.0 / double(sqrtf(f32(var + f32(eps)))))
    alpha = f32(double(f32(inv_sigma * w)) * (s_x / s_y))
    beta  = f32(double(f32(b - f32(f32(mean * inv_sigma) * w))) / s_y)
    y     = fma(alpha, f32(q - z_x), beta)
    vector channels: q_y = sat(wrap32(cvtps2dq(min(y, 2147483520)) + z_y))   (inverse scale 1)
    scalar tail:     q_y = clamp(z_y + lrintf(y))   (int64; lrintf of NaN or +-inf: INT64_MIN,
                     so qmin, or qmax when a negative z_y wraps it)

LayerNorm / GroupNorm / InstanceNorm, per group of N elements (sums of integers are exact)::

    m_s  = f32(f32(sum q) / f32(N));  mean = f32(m_s - f32(z_x))
    var  = max(fma(-m_s, m_s, f32(f32(sum q^2) / f32(N))), 0)
    rstd = f32(double(f32(s_x)) / sqrt(double(f32(f32(var * s_x) * s_x)) + eps))
    LayerNorm:          y = fma(f32(f32(f32(q - z_x) - mean) * rstd), gamma[i], beta[i])
    GroupNorm (NCHW):   y = fma(f32(f32(q - z_x) - mean), f32(rstd * gamma[c]), beta[c])
    GroupNorm (NHWC):   k = f32(rstd * gamma[c]); y = fma(f32(q - z_x), k, fma(-k, mean, beta[c]))
    inv = f32(1 / f32(s_y))
    vector:  q_y = sat(wrap32(cvtps2dq(min(f32(y * inv), 2147483520)) + z_y))   (QuantizeAvx2;
             the default build: clamp(cvtps2dq(min(fmaf(y, inv, f32(z_y)), 2147483520))))
    scalar:  q_y = clamp(rne(f32(f32(y * inv) + f32(z_y))))        (quantize_val; NaN -> 0)

The scalar tail is the last ``N % int_lanes`` elements of a LayerNorm row, and the last channels
of a pixel for BatchNorm and NHWC GroupNorm (``NormalizationKernel.tail_start``). NCHW GroupNorm
has no scalar tail.

``sum q`` and ``sum q^2`` are exact int64 sums (``hsum``/``hsum_sq``) except on the NHWC path with
``H*W >= 512`` (``quantized_groupnorm_nhwc_kernel`` impl-2, ``nhwc_float_sums``): there they are
float32, in the kernel's order::

    threads: parallel_for(0, B*H*W, 1) gives thread t the pixels [t*k, min((t+1)*k, B*H*W)),
             k = ceil(B*H*W / T), T = torch.get_num_threads() (one thread if T == 1)
    step 1:  partial[t][n][c] = f32(... f32(f32(0 + q_p0) + q_p1) ...) over thread t's pixels p
             of batch n, in pixel order (and the same for q^2, an exact int converted to float)
    step 2:  sum = f32(... + partial[t][n][c] ...) for t = 0..T-1, then c over the group's channels

Per channel, q^2 sums pass 2^24 from H*W ~ 258 (255^2 * 258), so these round: an off-by-one
output on ~0.1 % of elements against exact sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..engines import Engine, get_engine
from ..engines.aten_normalization import NormalizationKernel
from ..errors import QuantParamError, ShapeError, UnsupportedError
from ..qparams import QParams, QuantizedArray
from ..rounding import f32, fma_float32
from ..trace import apply_steps, observing, record
from ._registry import graph_op, observed_stages
from .quantize import require_quantized

NHWC_FEATURE_MAP_THRESHOLD = 512
"""``feature_map_threshold`` of ``quantized_groupnorm_nhwc_kernel``: from this H*W on it
parallelizes over pixels and sums q, q^2 in float32 per thread (``nhwc_float_sums``)."""


def fused(a, b, c, kernel: NormalizationKernel) -> np.ndarray:
    """``a * b + c`` as the kernel computes it: one rounding if fused, two otherwise."""
    if kernel.fused_multiply_add:
        return fma_float32(a, b, c)
    return f32(f32(np.float32(a) * np.float32(b)) + np.float32(c))


def _fma_text(kernel: NormalizationKernel) -> str:
    return "fmaf" if kernel.fused_multiply_add else "f32(f32(a*b)+c)"


def quantize_paths(kernel: NormalizationKernel, y: np.ndarray, tail: np.ndarray,
                   label: str) -> np.ndarray:
    """The output integers of the float32 ``y`` (the output's shape): the kernel's vector path
    quantizes the elements outside ``tail``, its scalar tail those inside, each with its own
    steps (reported, with the path each element takes)."""
    out = np.empty(y.shape, np.int64)
    for path, where in ((kernel.vector, ~tail), (kernel.tail, tail)):
        if not where.any():
            continue
        record(f"{label}: path", "which code path of the kernel computes this element", None,
               where=where, kernel=kernel.name, path=path.name)
        out[where] = apply_steps(y[where], path.quantize, where=where, prefix=f"{label}: ")
    return out


def _check_io(input_qparams: QParams, output_scale: float, output_zero_point: int, what: str):
    if input_qparams.is_per_channel or input_qparams.dtype not in (QUINT8, QINT8):
        raise QuantParamError(f"quantized {what} needs a per-tensor quint8 or qint8 input, "
                              f"got {input_qparams.describe()}")
    return QParams.per_tensor(float(output_scale), int(output_zero_point), input_qparams.dtype)


def _float_vector(value, size: int, name: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(size, default, np.float32)
    value = np.asarray(value)
    if value.dtype != np.float32 or value.size != size:
        raise ShapeError(f"{name} must be float32 with {size} elements, got {value.dtype} "
                         f"{value.shape}")
    return value.reshape(-1)


# --- BatchNorm ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BatchNormParams:
    """A prepared quantized BatchNorm: ``alpha``/``beta`` (float32, per channel) are what the kernel
    uses, ``y = fma(alpha, q - z_x, beta)``; the model's ``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``eps`` are kept for explanation."""

    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    eps: float
    input_qparams: QParams
    output_qparams: QParams
    relu: bool
    spatial_dims: int
    alpha: np.ndarray
    beta: np.ndarray
    inv_sigma: np.ndarray
    kernel: NormalizationKernel
    """What the engine runs (``Engine.kernel("normalization", "batch_norm", ...)``)."""

    @property
    def num_channels(self) -> int:
        return self.alpha.size


def batch_norm_fused_params(weight, bias, mean, var, eps: float, input_scale: float,
                            output_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``compute_fused_params`` (qbatch_norm.cpp): (inv_sigma, alpha, beta), float32."""
    inv_sigma = f32(1.0 / np.sqrt(f32(var + np.float32(eps))).astype(np.float64))
    alpha = f32(f32(inv_sigma * weight).astype(np.float64) * (input_scale / output_scale))
    beta = f32(f32(bias - f32(f32(mean * inv_sigma) * weight)).astype(np.float64) / output_scale)
    return inv_sigma, alpha, beta


def prepare_batch_norm(weight, bias, running_mean, running_var, eps: float, input_qparams: QParams,
                       output_scale: float, output_zero_point: int, *, engine: Engine | str,
                       relu: bool = False, spatial_dims: int = 2) -> BatchNormParams:
    """Validate a quantized BatchNorm1d (``spatial_dims=1``: (N, C) or (N, C, L) inputs), 2d or
    3d and precompute alpha/beta;
    ``engine`` (an ``Engine`` or a name) states the kernel."""
    if spatial_dims not in (1, 2, 3):
        raise ShapeError(f"quantized BatchNorm is 1d, 2d or 3d, got spatial_dims "
                         f"{spatial_dims!r}")
    output_qparams = _check_io(input_qparams, output_scale, output_zero_point, "BatchNorm")
    channels = np.asarray(running_mean).size
    weight, bias, mean, var = (_float_vector(value, channels, name, default)  # w None: 1
                               for value, name, default in (
        (weight, "weight", 1.0), (bias, "bias", 0.0), (running_mean, "running_mean", 0.0),
        (running_var, "running_var", 0.0)))
    inv_sigma, alpha, beta = batch_norm_fused_params(weight, bias, mean, var, float(eps),
                                                     input_qparams.scale, output_qparams.scale)
    kernel = get_engine(engine).kernel("normalization", "batch_norm", output_qparams, bool(relu))
    return BatchNormParams(weight, bias, mean, var, float(eps), input_qparams, output_qparams,
                           bool(relu), spatial_dims, alpha, beta, inv_sigma, kernel)


def batch_norm(x: QuantizedArray, params: BatchNormParams) -> QuantizedArray:
    """``quantized::batch_norm1d/2d/3d[_relu]`` on (N, C, *spatial) integers: ``y = fma(alpha,
    q - z_x, beta)`` per element, then the kernel's vector path quantizes a pixel's first
    ``tail_start`` channels and its scalar tail the rest (every stage reported). 1d
    (qbatch_norm.cpp ``q_batch_norm1d_impl``) runs the 2d kernel on (N, C, L, 1) (an (N, C)
    input: L = 1): the same per-pixel channel split."""
    values = x.values
    ranks = (2, 3) if params.spatial_dims == 1 else (params.spatial_dims + 2,)
    if values.ndim not in ranks or values.shape[1] != params.num_channels:
        raise ShapeError(f"BatchNorm{params.spatial_dims}d expects (N, {params.num_channels}, ...) "
                         f"of rank {' or '.join(map(str, ranks))}, got {values.shape}")
    _check_input(x, params.input_qparams, "BatchNorm")
    kernel = params.kernel
    shape = (1, -1) + (1,) * (values.ndim - 2)
    alpha, beta = params.alpha.reshape(shape), params.beta.reshape(shape)
    if observing():
        def per_element(table):
            return np.broadcast_to(table.reshape(shape), values.shape)
        record("batch norm: fused parameters (offline)",
               "inv_sigma = f32(1/double(sqrtf(var + eps))); alpha = f32(f32(inv_sigma*w) * "
               "(s_x/s_y)); beta = f32(f32(b - f32(f32(mean*inv_sigma)*w)) / s_y)",
               per_element(params.beta), w=per_element(params.weight),
               b=per_element(params.bias), mean=per_element(params.running_mean),
               var=per_element(params.running_var), eps=params.eps,
               s_x=params.input_qparams.scale, s_y=params.output_qparams.scale,
               inv_sigma=per_element(params.inv_sigma), alpha=per_element(params.alpha))
    zero_point = params.input_qparams.zero_point
    centered = f32(values.astype(np.int64) - zero_point)
    y = record("batch norm: affine", f"y = {_fma_text(kernel)}(alpha, q - z_x, beta)",
               fused(alpha, centered, beta, kernel), q=values, z_x=zero_point,
               alpha=np.broadcast_to(alpha, values.shape), beta=np.broadcast_to(beta, values.shape))
    start = kernel.tail_start(params.num_channels, middle_block=True)
    tail = np.broadcast_to((np.arange(params.num_channels) >= start).reshape(shape), values.shape)
    out = quantize_paths(kernel, y, tail, "batch norm")
    return QuantizedArray(out.astype(params.output_qparams.dtype.numpy_dtype),
                          params.output_qparams)


def _check_input(x: QuantizedArray, expected: QParams, what: str) -> None:
    if x.qparams != expected:
        raise QuantParamError(f"{what} was prepared for input {expected.describe()}, got "
                              f"{x.qparams.describe()}; prepare it again for these qparams")


# --- LayerNorm, GroupNorm, InstanceNorm --------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GroupNormParams:
    """A prepared quantized LayerNorm (``kind="layer_norm"``, ``normalized_shape``), GroupNorm
    (``num_groups``) or InstanceNorm (``num_groups == channels``). ``weight``/``bias``: float32
    (normalized_shape elements for LayerNorm, channels otherwise). ``channels_last``: the input is
    NHWC in memory (ATen runs ``quantized_groupnorm_nhwc_kernel``). ``num_threads``: PyTorch's
    ``torch.get_num_threads()``, which sets the float32 summation order of the NHWC path with
    H*W >= 512 (``nhwc_float_sums``); no other path depends on it."""

    kind: str
    normalized_shape: tuple[int, ...]
    num_groups: int
    weight: np.ndarray | None
    bias: np.ndarray | None
    eps: float
    input_qparams: QParams
    output_qparams: QParams
    channels_last: bool
    kernel: NormalizationKernel
    """What the engine runs (``Engine.kernel("normalization", kind, ...)``)."""
    num_threads: int = 1


def prepare_layer_norm(normalized_shape, weight, bias, eps: float, input_qparams: QParams,
                       output_scale: float, output_zero_point: int, *,
                       engine: Engine | str) -> GroupNormParams:
    """Validate a quantized LayerNorm over the trailing ``normalized_shape`` dims; ``engine``
    (an ``Engine`` or a name) states the kernel."""
    shape = tuple(int(size) for size in np.atleast_1d(normalized_shape))
    size = int(np.prod(shape))
    weight = None if weight is None else _float_vector(weight, size, "weight", 1.0)
    bias = None if bias is None else _float_vector(bias, size, "bias", 0.0)
    output_qparams = _check_io(input_qparams, output_scale, output_zero_point, "LayerNorm")
    kernel = get_engine(engine).kernel("normalization", "layer_norm", output_qparams)
    return GroupNormParams("layer_norm", shape, 1, weight, bias, float(eps), input_qparams,
                           output_qparams, False, kernel)


def prepare_group_norm(num_groups: int, num_channels: int, weight, bias, eps: float,
                       input_qparams: QParams, output_scale: float, output_zero_point: int, *,
                       engine: Engine | str, channels_last: bool = False, instance: bool = False,
                       num_threads: int = 1) -> GroupNormParams:
    """Validate a quantized GroupNorm (or InstanceNorm: ``instance=True``, groups = channels);
    ``engine`` (an ``Engine`` or a name) states the kernel. ``num_threads``: PyTorch's intra-op
    thread count (``GroupNormParams.num_threads``)."""
    if num_groups <= 0 or num_channels % num_groups:
        raise ShapeError(f"{num_channels} channels cannot be split in {num_groups!r} groups")
    if int(num_threads) < 1:
        raise UnsupportedError(f"num_threads must be >= 1, got {num_threads!r}")
    weight = None if weight is None else _float_vector(weight, num_channels, "weight", 1.0)
    bias = None if bias is None else _float_vector(bias, num_channels, "bias", 0.0)
    kind, what = ("instance_norm", "InstanceNorm") if instance else ("group_norm", "GroupNorm")
    output_qparams = _check_io(input_qparams, output_scale, output_zero_point, what)
    kernel = get_engine(engine).kernel("normalization", kind, output_qparams)
    return GroupNormParams(kind, (), int(num_groups), weight, bias, float(eps), input_qparams,
                           output_qparams, bool(channels_last), kernel, int(num_threads))


def group_statistics(rows: np.ndarray, params: GroupNormParams, sums=None) -> dict:
    """Per row (one group): ``sum``/``sum_sq`` (exact int64, or the float32 ``sums`` of
    ``nhwc_float_sums``), then ``mean`` (of q - z_x), ``var``, ``rstd`` (= s_x / std) in float32
    as ``quantized_normalize_kernel`` forms them."""
    count = np.float32(rows.shape[-1])
    if sums is None:
        wide = rows.astype(np.int64)
        total, total_sq = wide.sum(axis=-1), (wide * wide).sum(axis=-1)
    else:
        total, total_sq = sums
    mean_shifted = f32(f32(total) / count)
    mean = f32(mean_shifted - np.float32(params.input_qparams.zero_point))
    mean_sq = f32(f32(total_sq) / count)
    var = np.maximum(fused(-mean_shifted, mean_shifted, mean_sq, params.kernel), np.float32(0))
    x_scale = np.float32(params.input_qparams.scale)
    var_scaled = f32(f32(var * x_scale) * x_scale).astype(np.float64)
    with np.errstate(divide="ignore"):  # eps = 0 on a constant group: rstd = inf, as in C
        rstd = f32(np.float64(x_scale) / np.sqrt(var_scaled + params.eps))
    return {"sum": total, "sum_sq": total_sq, "mean_shifted": mean_shifted, "mean": mean,
            "mean_sq": mean_sq, "var": var, "rstd": rstd}


def _per_element(per_row: np.ndarray, rows: int, shape) -> np.ndarray:
    """A value per group (row) over every element of the group, in the output's shape."""
    return np.broadcast_to(np.asarray(per_row).reshape(rows, 1), (rows, int(np.prod(shape))
                                                                  // rows)).reshape(shape)


def _affine(params: GroupNormParams, values: np.ndarray, stats: dict
            ) -> tuple[np.ndarray, np.ndarray]:
    """The float32 ``y`` of every element and the mask of the elements of the scalar tail (both
    of the output's shape); reports the normalized value (LayerNorm) and the affine step."""
    kernel, zp = params.kernel, params.input_qparams.zero_point
    fma_text = _fma_text(kernel)
    if params.kind == "layer_norm":
        size = int(np.prod(params.normalized_shape))
        rows = values.reshape(-1, size)
        mean, rstd = stats["mean"][:, None], stats["rstd"][:, None]
        centered = f32(f32(rows.astype(np.int64) - zp) - mean)
        normalized = f32(centered * rstd)
        if observing():
            record("layer_norm: normalized value", "n = f32(f32(f32(q - z_x) - mean) * rstd)",
                   normalized.reshape(values.shape), q=values, z_x=zp,
                   mean=np.broadcast_to(mean, rows.shape).reshape(values.shape),
                   rstd=np.broadcast_to(rstd, rows.shape).reshape(values.shape))
        if params.weight is None and params.bias is None:
            y = normalized
        else:
            gamma = np.float32(1) if params.weight is None else params.weight
            beta = np.float32(0) if params.bias is None else params.bias
            y = fused(normalized, gamma, beta, kernel)
            if observing():
                record("layer_norm: affine", f"y = {fma_text}(n, gamma[i], beta[i])",
                       y.reshape(values.shape), n=normalized.reshape(values.shape),
                       gamma=np.broadcast_to(gamma, rows.shape).reshape(values.shape),
                       beta=np.broadcast_to(beta, rows.shape).reshape(values.shape))
        tail = np.arange(size) >= kernel.tail_start(size)
        return y.reshape(values.shape), np.broadcast_to(tail, rows.shape).reshape(values.shape)
    batch, channels = values.shape[:2]
    groups = params.num_groups
    grouped = values.reshape(batch, groups, channels // groups, -1).astype(np.int64)
    gamma = np.ones(channels, np.float32) if params.weight is None else params.weight
    beta = np.zeros(channels, np.float32) if params.bias is None else params.bias
    gamma, beta = (v.reshape(1, groups, -1, 1) for v in (gamma, beta))
    mean, rstd = (stats[k].reshape(batch, groups, 1, 1) for k in ("mean", "rstd"))
    scale = f32(rstd * gamma)
    nhwc = takes_nhwc_path(params, values.shape)
    if not nhwc:
        y = fused(f32(f32(grouped - zp) - mean), scale, beta, kernel)
        tail = np.zeros(y.shape, bool)
        formula, shift = f"y = {fma_text}(f32(f32(q - z_x) - mean), k, beta[c])", None
    else:
        shift = fused(-scale, mean, beta, kernel)
        y = fused(f32(grouped - zp), scale, shift, kernel)
        per_group = channels // groups
        if grouped.shape[-1] < NHWC_FEATURE_MAP_THRESHOLD:  # vectorized over a group's channels
            tail = (np.arange(per_group) >= kernel.tail_start(per_group))[None, None, :, None]
        else:  # vectorized over all channels of a pixel
            tail = (np.arange(channels) >= kernel.tail_start(channels)).reshape(1, groups, -1, 1)
        tail = np.broadcast_to(tail, y.shape)
        formula = f"y = {fma_text}(f32(q - z_x), k, b), b = {fma_text}(-k, mean, beta[c])"
    if observing():
        def spread(value):
            return np.broadcast_to(value, y.shape).reshape(values.shape)
        extra = {} if shift is None else {"b": spread(shift)}
        record(f"{params.kind}: affine", formula + "; k = f32(rstd * gamma[c])"
               + (" (quantized_groupnorm_nhwc_kernel)" if nhwc else ""),
               y.reshape(values.shape), q=values, z_x=zp, mean=spread(mean), rstd=spread(rstd),
               gamma=spread(gamma), beta=spread(beta), k=spread(scale), **extra)
    return y.reshape(values.shape), tail.reshape(values.shape)


def takes_nhwc_path(params: GroupNormParams, shape) -> bool:
    """ATen picks ``quantized_groupnorm_nhwc_kernel`` when the input
    ``is_contiguous(ChannelsLast)``: a 4-D channels-last input, or a 4-D contiguous one with
    C == 1 or H*W == 1 (qnormalization.cpp)."""
    if params.kind == "layer_norm" or len(shape) != 4:
        return False
    return params.channels_last or shape[1] == 1 or shape[2] * shape[3] == 1


def takes_float_sums(params: GroupNormParams, shape) -> bool:
    """The NHWC path with ``H*W >= 512`` sums in float32 (``nhwc_float_sums``)."""
    return takes_nhwc_path(params, shape) and shape[2] * shape[3] >= NHWC_FEATURE_MAP_THRESHOLD


def nhwc_float_sums(values: np.ndarray, params: GroupNormParams) -> tuple[np.ndarray, np.ndarray]:
    """Per group (batch-major), the float32 ``sum q`` and ``sum q^2`` of
    ``quantized_groupnorm_nhwc_kernel`` impl-2 (QuantizedOpKernels.cpp, steps 1 and 2; module
    docstring): per-thread, per-channel partials over a thread's pixels in order, then added up
    thread by thread and channel by channel. ``np.add.accumulate`` adds in order, one float32
    rounding a step (``np.sum`` would add pairwise)."""
    batch, channels, height, width = values.shape
    pixels, groups, threads = height * width, params.num_groups, params.num_threads
    by_pixel = values.reshape(batch, channels, pixels).transpose(0, 2, 1).reshape(-1, channels)
    by_pixel = by_pixel.astype(np.int64)
    terms = (f32(by_pixel), f32(by_pixel * by_pixel))  # |q^2| <= 65025: exact in float32
    count = batch * pixels
    workers = min(threads, count)  # parallel_for: min(threads, ceil(range / grain)) chunks
    chunk = -(-count // workers)
    partial = np.zeros((2, threads, batch, channels), np.float32)
    for thread in range(workers):
        begin, end = thread * chunk, min(count, (thread + 1) * chunk)
        for n in range(begin // pixels, -(-end // pixels)):
            low, high = max(begin, n * pixels), min(end, (n + 1) * pixels)
            for k in range(2):
                partial[k, thread, n] = np.add.accumulate(terms[k][low:high], axis=0)[-1]
    per_group = channels // groups
    ordered = partial.reshape(2, threads, batch, groups, per_group).transpose(0, 2, 3, 1, 4)
    ordered = ordered.reshape(2, batch * groups, threads * per_group)
    total, total_sq = np.add.accumulate(ordered, axis=-1)[..., -1]
    return total, total_sq


def _statistics(values: np.ndarray, params: GroupNormParams) -> dict:
    """Each group's statistics (``group_statistics``), reported over the group's elements."""
    float_sums = takes_float_sums(params, values.shape)
    sums = nhwc_float_sums(values, params) if float_sums else None
    rows = _rows(values, params)
    stats = group_statistics(rows, params, sums)
    count = rows.shape[0]
    if observing() and count and values.size:
        shown = {name: _per_element(stats[name], count, values.shape)
                 for name in ("sum", "sum_sq", "mean_shifted", "mean", "var")}
        sums_text = (f"float32 per-thread partial sums ({params.num_threads} threads, H*W >= "
                     f"{NHWC_FEATURE_MAP_THRESHOLD}); " if float_sums else "")
        record(f"{params.kind}: group statistics",
               sums_text + "m_s = f32(f32(sum q)/N); mean = f32(m_s - z_x); var = max(fma(-m_s, "
               "m_s, f32(f32(sum q^2)/N)), 0); rstd = f32(s_x / sqrt(double(f32(f32(var*s_x)"
               "*s_x)) + eps))", _per_element(stats["rstd"], count, values.shape),
               group=_per_element(np.arange(count), count, values.shape), N=rows.shape[1],
               **shown, eps=params.eps, s_x=params.input_qparams.scale)
    return stats


def group_norm(x: QuantizedArray, params: GroupNormParams) -> QuantizedArray:
    """``quantized::layer_norm`` / ``group_norm`` / ``instance_norm`` on integers: each group's
    statistics, every element's ``y``, then the kernel's vector path and scalar tail quantize
    their elements (every stage reported)."""
    values = _check_group_input(x, params)
    with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf = NaN, as in C
        stats = _statistics(values, params)
        y, tail = _affine(params, values, stats)
    out = quantize_paths(params.kernel, y, tail, params.kind)
    output = params.output_qparams
    return QuantizedArray(out.astype(output.dtype.numpy_dtype), output)


def _rows(values: np.ndarray, params: GroupNormParams) -> np.ndarray:
    if params.kind == "layer_norm":
        return values.reshape(-1, int(np.prod(params.normalized_shape)))
    return values.reshape(values.shape[0] * params.num_groups, -1)


def _check_group_input(x: QuantizedArray, params: GroupNormParams) -> np.ndarray:
    values = x.values
    if params.kind == "layer_norm":
        shape = params.normalized_shape
        if values.ndim < len(shape) or values.shape[values.ndim - len(shape):] != shape:
            raise ShapeError(f"LayerNorm over {shape} needs an input ending in those dims, "
                             f"got {values.shape}")
    else:
        channels = params.weight.size if params.weight is not None else None
        if values.ndim < 3 or (channels is not None and values.shape[1] != channels) \
                or values.shape[1] % params.num_groups:
            raise ShapeError(f"{params.kind} with {params.num_groups} groups expects (N, C, ...) "
                             f"of rank >= 3 with C = {channels or 'a multiple of groups'}, "
                             f"got {values.shape}")
    _check_input(x, params.input_qparams, params.kind)
    if params.kind != "layer_norm" and takes_nhwc_path(params, values.shape):
        per_group = values.size // (values.shape[0] * params.num_groups)
        spatial = values.shape[2] * values.shape[3]
        if spatial < NHWC_FEATURE_MAP_THRESHOLD and per_group < values.shape[0]:
            raise UnsupportedError(
                f"{params.kind} on a channels-last {values.shape} input: PyTorch's "
                f"quantized_groupnorm_nhwc_kernel indexes batches modulo the {per_group} elements "
                f"per group (data_index_init(begin, n, N, g, G)) and leaves batches >= {per_group} "
                "of its output uninitialized; there is no defined result to reproduce")
    return values


# --- Graph ops and explanations ------------------------------------------------------------------


def _output_attrs(node):
    return float(node.attrs["output_scale"]), int(node.attrs["output_zero_point"])


@graph_op("batch_norm", "quantized BatchNorm1d/2d/3d (+ReLU) (nnq.BatchNorm2d/3d, nniq.BNReLU2d/3d, "
          "quantized::batch_norm1d)")
class BatchNormOp:
    """Arrays ``weight``, ``bias``, ``running_mean``, ``running_var``; attrs ``eps``, ``relu``,
    ``spatial_dims``, ``output_scale``, ``output_zero_point`` (output dtype = input dtype)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        arrays = node.arrays
        params = prepare_batch_norm(
            arrays.get("weight"), arrays.get("bias"), arrays["running_mean"], arrays["running_var"],
            node.attrs["eps"], require_quantized(node, input_qparams), *_output_attrs(node),
            relu=bool(node.attrs.get("relu", False)),
            spatial_dims=int(node.attrs.get("spatial_dims", 2)), engine=engine)
        return params, params.output_qparams

    @staticmethod
    def run(params, inputs):
        return batch_norm(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        """Observed on the run: the offline alpha/beta, the affine step, the path and its
        quantize steps."""
        return observed_stages(BatchNormOp.run, params, inputs, result, index), [(0, index)]


def _group_prepare(node, input_qparams, engine):
    input_qparams = require_quantized(node, input_qparams)
    attrs, arrays = node.attrs, node.arrays
    if node.op == "layer_norm":
        params = prepare_layer_norm(attrs["normalized_shape"], arrays.get("weight"),
                                    arrays.get("bias"), attrs["eps"], input_qparams,
                                    *_output_attrs(node), engine=engine)
        return params, params.output_qparams
    params = prepare_group_norm(int(attrs["num_groups"]), int(attrs["num_channels"]),
                              arrays.get("weight"), arrays.get("bias"), attrs["eps"],
                              input_qparams, *_output_attrs(node),
                              channels_last=bool(attrs.get("channels_last", False)),
                              instance=node.op == "instance_norm", engine=engine,
                              num_threads=int(attrs.get("num_threads", 1)))
    return params, params.output_qparams


def _run_group(params, inputs):
    return group_norm(inputs[0], params)


def _register_group_op(name: str, summary: str):
    @graph_op(name, summary)
    class _GroupOp:
        prepare = staticmethod(_group_prepare)

        run = staticmethod(_run_group)

        @staticmethod
        def explain(params, inputs, result, index):
            """Observed on the run: the group's statistics, the normalized value and affine
            step, the path and its quantize steps."""
            return observed_stages(_run_group, params, inputs, result, index), [(0, index)]

    return _GroupOp


LayerNormOp = _register_group_op("layer_norm", "quantized LayerNorm (nnq.LayerNorm)")
GroupNormOp = _register_group_op("group_norm", "quantized GroupNorm (nnq.GroupNorm)")
InstanceNormOp = _register_group_op("instance_norm",
                                    "quantized InstanceNorm1d/2d/3d (nnq.InstanceNorm*)")
