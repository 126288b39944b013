"""Shared parts of the non-GEMM conformance families: draws (NumPy only), the params schema of
``tests/data/recordings/*/README.md`` (``x_scale``, ``x_zero_point``, ``x_dtype``,
``x_channels_last``, ...), and the two sides' tensors built from a case.

Draws never import torch or a qexact kernel; ``torch_*`` helpers run only inside ``run_torch``;
``qexact_*`` helpers only inside ``run_qexact``.
"""

from __future__ import annotations

import math

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..qparams import QParams, QuantizedArray

DTYPES = {"quint8": QUINT8, "qint8": QINT8}


# --- params <-> qparams -------------------------------------------------------------------------


def f32_scale(scale: float) -> float:
    """A scale as PyTorch stores it (``q_scale()`` is a double holding a float32)."""
    return float(np.float32(scale))


def qparams_of(params: dict, prefix: str = "x", dtype: str | None = None) -> QParams:
    """``{prefix}_scale``, ``{prefix}_zero_point`` and ``x_dtype`` of a case as QParams."""
    return QParams.per_tensor(float(params[f"{prefix}_scale"]), int(params[f"{prefix}_zero_point"]),
                              DTYPES[dtype or params["x_dtype"]])


def out_qparams_of(params: dict) -> QParams:
    """The requested output qparams (``out_scale_req``, ``out_zero_point_req``)."""
    return QParams.per_tensor(float(params["out_scale_req"]), int(params["out_zero_point_req"]),
                              DTYPES[params["x_dtype"]])


def as_engine(engine):
    """A ``qexact.engines.Engine`` (names too; ``"aten"``, the float family's cell, is fbgemm's:
    the quantized engine takes no part in float kernels)."""
    from ..engines import get_engine

    return get_engine("fbgemm" if engine == "aten" else engine)


def threads(params: dict) -> int:
    """PyTorch's intra-op threads for the case (1 unless it says ``num_threads``)."""
    return int(params.get("num_threads", 1))


def with_layout(values: np.ndarray, channels_last: bool) -> np.ndarray:
    """The logical array with torch's strides: ``.contiguous(channels_last[_3d])`` when asked
    (4-D / 5-D), else C-contiguous, as ``int_repr()`` would hand it to qexact. ``contiguous``
    returns the tensor itself when it already is ``is_contiguous(channels_last)`` (size-1 dims
    ignored: (1, C, 1, 1), C == 1, ...), keeping its NCHW strides (TensorBase::contiguous)."""
    from ..layout import is_channels_last, to_channels_last

    values = np.ascontiguousarray(values)
    if not channels_last or values.ndim not in (4, 5) or is_channels_last(values):
        return values
    return to_channels_last(values)


def qexact_input(case, name: str = "x", prefix: str = "x", layout_key: str = "x_channels_last"
                 ) -> QuantizedArray:
    params = case.params
    return QuantizedArray(with_layout(case.arrays[name], bool(params.get(layout_key, False))),
                          qparams_of(params, prefix))


def _logical(values: np.ndarray) -> np.ndarray:
    """C-contiguous in logical order, 0-d kept 0-d (``np.ascontiguousarray`` makes it 1-d)."""
    return np.array(values, order="C", copy=True)


def qexact_outputs(result: QuantizedArray) -> dict:
    return {"y": _logical(result.values), "out_scale": float(result.qparams.scale),
            "out_zero_point": int(result.qparams.zero_point)}


# --- torch side (run_torch only) ----------------------------------------------------------------


def torch_tensor(values: np.ndarray, scale: float, zero_point: int, channels_last: bool = False):
    """``_make_per_tensor_quantized_tensor`` of the logical integers, then the memory format."""
    import torch

    tensor = torch._make_per_tensor_quantized_tensor(
        torch.from_numpy(np.ascontiguousarray(values)), float(scale), int(zero_point))
    if channels_last and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if channels_last and tensor.dim() == 5:
        return tensor.contiguous(memory_format=torch.channels_last_3d)
    return tensor


def torch_input(case, name: str = "x", prefix: str = "x", layout_key: str = "x_channels_last"):
    params = case.params
    return torch_tensor(case.arrays[name], params[f"{prefix}_scale"], params[f"{prefix}_zero_point"],
                        bool(params.get(layout_key, False)))


def torch_outputs(tensor) -> dict:
    """A quantized torch result as Outputs: int_repr in logical order and its qparams."""
    return {"y": _logical(tensor.int_repr().numpy()),
            "out_scale": float(tensor.q_scale()), "out_zero_point": int(tensor.q_zero_point())}


def torch_floats(array: np.ndarray | None):
    import torch

    return None if array is None else torch.from_numpy(np.ascontiguousarray(array))


# --- default draws ------------------------------------------------------------------------------


def draw_scale(rng, low: float = -3.0, high: float = 0.0) -> float:
    """10**U(low, high), or a power of two one time in four (exact ties); float32-valued."""
    if rng.random() < 0.25:
        return float(2.0 ** int(rng.integers(math.floor(low * 3.32), math.ceil(high * 3.32) + 1)))
    return f32_scale(10 ** rng.uniform(low, high))


def draw_zero_point(rng, dtype) -> int:
    return int(rng.integers(dtype.qmin, dtype.qmax + 1))


def draw_ints(rng, dtype, shape, constant_p: float = 0.0) -> np.ndarray:
    """Uniform integers of ``dtype``; all one value with probability ``constant_p`` (ties)."""
    values = rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)
    if values.size and rng.random() < constant_p:
        values[...] = values.flat[0]
    return values


def draw_dtype(rng, engine: str, qint8_p: float = 0.3, qnnpack_qint8: bool = False) -> str:
    if engine == "qnnpack" and not qnnpack_qint8:
        return "quint8"
    return "qint8" if rng.random() < qint8_p else "quint8"


def draw_elementwise_shape(rng, long_max: int = 800) -> list[int]:
    """A 1-D run (SIMD body and tail: 1..long_max) or an image (N, C, H, W) with C around the
    vector widths, one time in three a 2-D/3-D block."""
    kind = rng.random()
    if kind < 0.5:
        return [int(rng.integers(1, long_max + 1))]
    if kind < 0.65:
        return [int(v) for v in rng.integers(1, 16, int(rng.integers(2, 4)))]
    channels = int(rng.choice([1, 3, 8, 16, 17, 32, 64, 96]))
    return [int(rng.integers(1, 3)), channels, int(rng.integers(1, 12)), int(rng.integers(1, 16))]


def draw_input_params(rng, engine: str, shape, *, channels_last_p: float = 0.3,
                      scale_range=(-3.0, -0.3), qint8_p: float = 0.3) -> dict:
    """``x_*`` params of an elementwise case (the input's dtype, qparams and layout)."""
    dtype = draw_dtype(rng, engine, qint8_p, qnnpack_qint8=True)
    return {"shape": list(shape),
            "x_channels_last": bool(len(shape) in (4, 5) and rng.random() < channels_last_p),
            "x_scale": draw_scale(rng, *scale_range),
            "x_zero_point": draw_zero_point(rng, DTYPES[dtype]), "x_dtype": dtype}


# --- "pytorch" draws: as test/quantization/core/test_quantized_op.py ----------------------------


def pytorch_shape(rng, min_dims=1, max_dims=None, min_side=1, max_side=None) -> list[int]:
    """``hypothesis_utils.array_shapes``: rank in [min_dims, max_dims], sides in
    [min_side, max_side] (defaults min_dims + 2, min_side + 5)."""
    max_dims = min_dims + 2 if max_dims is None else max_dims
    max_side = min_side + 5 if max_side is None else max_side
    return [int(v) for v in rng.integers(min_side, max_side + 1, int(rng.integers(min_dims, max_dims + 1)))]


def pytorch_floats(rng, shape, low=-1e6, high=1e6) -> np.ndarray:
    """float32 elements as hypothesis draws them: mostly uniform, with its favourite values
    (0, the bounds, small integers, one repeated value) mixed in."""
    x = rng.uniform(low, high, shape)
    special = rng.random(shape)
    x = np.where(special < 0.05, 0.0, x)
    x = np.where((special >= 0.05) & (special < 0.08), low, x)
    x = np.where((special >= 0.08) & (special < 0.11), high, x)
    x = np.where((special >= 0.11) & (special < 0.18), np.clip(rng.integers(-3, 4, shape), low, high), x)
    if x.size and rng.random() < 0.1:
        x[...] = x.flat[0]
    return x.astype(np.float32)


def dynamic_qparams(x: np.ndarray, dtype) -> tuple[float, int]:
    """``common_quantized._calculate_dynamic_qparams`` (per tensor affine): the scale spans
    [min(x, 0), max(x, 0)] over 255 steps, at least float32 eps; min == max gives (1.0, 0)."""
    low, high = float(x.min()), float(x.max())
    if low == high:
        return 1.0, 0
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max((high - low) / (dtype.qmax - dtype.qmin), float(np.finfo(np.float32).eps))
    zero_point = dtype.qmin - round(low / scale)
    return f32_scale(scale), int(min(max(zero_point, dtype.qmin), dtype.qmax))


def quantize_numpy(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """The draw's own quantize (only to make input integers; the case is the integers)."""
    q = np.rint(x.astype(np.float64) / scale) + zero_point
    return np.clip(q, dtype.qmin, dtype.qmax).astype(dtype.numpy_dtype)


def pytorch_qparams(rng, dtypes=("quint8", "qint8"), scale_min=None, scale_max=1e6):
    """``hypothesis_utils.qparams``: a dtype, any zero point of it, a float32 scale
    (log-uniform between float32 eps and ``scale_max``: PyTorch's tests go to 1e6)."""
    dtype = str(rng.choice(list(dtypes)))
    scale_min = float(np.finfo(np.float32).eps) if scale_min is None else scale_min
    scale = f32_scale(math.exp(rng.uniform(math.log(scale_min), math.log(scale_max))))
    return scale, draw_zero_point(rng, DTYPES[dtype]), dtype


def pytorch_tensor(rng, shape, dtypes=("quint8", "qint8"), low=-1e6, high=1e6):
    """``hypothesis_utils.tensor(shapes, qparams=qparams())``: float elements, then qparams
    recomputed from them (``_calculate_dynamic_qparams``); returns (integers, scale, zp, dtype)."""
    dtype = str(rng.choice(list(dtypes)))
    x = pytorch_floats(rng, shape, low, high)
    scale, zero_point = dynamic_qparams(x, DTYPES[dtype])
    return quantize_numpy(x, scale, zero_point, DTYPES[dtype]), scale, zero_point, dtype


def random_tensor_and_qparams(rng, shape, rand_scale: float, dtype: str):
    """``_get_random_tensor_and_q_params``: x = (U[0, 1) - 0.5) * rand_scale (float32), scale
    (max - min) / 256 (1e-10 if 0), zero point 127 (quint8) or randint(-128, 127) (qint8)."""
    x = ((rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(rand_scale))
    scale = float(x.max() - x.min()) / 256 if x.size else 0.0
    scale = scale or 1e-10
    zero_point = 127 if dtype == "quint8" else int(rng.integers(-128, 127))
    return quantize_numpy(x, f32_scale(scale), zero_point, DTYPES[dtype]), f32_scale(scale), zero_point


# --- weights and biases of the GEMM families (linear, conv, conv_transpose) ---------------------


def draw_weight_qparams(rng, engine: str, channels: int, per_channel_p: float = 0.5,
                        symmetric_p: float = 0.5) -> tuple[dict, dict]:
    """qint8 weight qparams as params (``w_qscheme``, ``w_scale``/``w_zero_point`` or ``w_axis``)
    and arrays (``w_scales`` float64, ``w_zero_points`` int64 per channel); oneDNN takes only
    symmetric weights (qconv_prepack / qlinear_prepack refuse others), so it draws those."""
    symmetric = engine == "onednn" or rng.random() < symmetric_p
    params: dict = {"w_symmetric": bool(symmetric)}
    if rng.random() < per_channel_p:
        scales = np.array([f32_scale(draw_scale(rng) * 0.01) for _ in range(channels)])
        zero_points = (np.zeros(channels, np.int64) if symmetric
                       else rng.integers(-128, 128, channels).astype(np.int64))
        params |= {"w_qscheme": "per_channel", "w_axis": 0}
        return params, {"w_scales": scales, "w_zero_points": zero_points}
    params |= {"w_qscheme": "per_tensor", "w_scale": f32_scale(draw_scale(rng) * 0.01),
               "w_zero_point": 0 if symmetric else int(rng.integers(-128, 128))}
    return params, {}


def draw_gemm_operands(rng, weight_shape, x_shape, bias_channels: int, x_scale: float, *,
                       bias_gain: float = 100.0, extreme_p: float = 0.1) -> tuple[dict, dict]:
    """Weight (int8), input (quint8: 0..127 or 0..255, as pair saturation needs high values) and,
    seven times in ten, a float32 bias of ``bias_channels`` (about ``bias_gain`` input steps).
    One time in ``1/extreme_p`` the saturating extremes x = 255, w = -128 (``hand_picked``)."""
    extreme = rng.random() < extreme_p
    high = 256 if extreme or rng.random() < 0.5 else 128
    if extreme:
        arrays = {"x": np.full(x_shape, 255, np.uint8), "w": np.full(weight_shape, -128, np.int8)}
    else:
        arrays = {"x": rng.integers(0, high, x_shape).astype(np.uint8),
                  "w": rng.integers(-128, 128, weight_shape).astype(np.int8)}
    params = {"x_range": f"0..{high - 1}", "has_bias": bool(rng.random() < 0.7)}
    if params["has_bias"]:
        arrays["bias"] = (rng.standard_normal(bias_channels) * x_scale * bias_gain
                          ).astype(np.float32)
    if extreme:
        params["hand_picked"] = "extreme_x255_w-128"
    return params, arrays


def weight_qparams_of(case) -> QParams:
    p = case.params
    if p["w_qscheme"] == "per_channel":
        return QParams.per_channel(case.arrays["w_scales"], case.arrays["w_zero_points"],
                                   int(p.get("w_axis", 0)), QINT8)
    return QParams.per_tensor(float(p["w_scale"]), int(p["w_zero_point"]), QINT8)


def torch_weight(case):
    """The qint8 weight tensor, per tensor or per channel, from the case's exact integers."""
    import torch

    p, w = case.params, torch.from_numpy(np.ascontiguousarray(case.arrays["w"]))
    if p["w_qscheme"] == "per_channel":
        return torch._make_per_channel_quantized_tensor(
            w, torch.from_numpy(case.arrays["w_scales"]),
            torch.from_numpy(case.arrays["w_zero_points"]), int(p.get("w_axis", 0)))
    return torch._make_per_tensor_quantized_tensor(w, float(p["w_scale"]), int(p["w_zero_point"]))


def torch_packed_outputs(case, packed) -> dict:
    """``torch.ops.quantized.<op>(x, packed, out_scale_req, out_zero_point_req)`` as Outputs."""
    import torch

    p = case.params
    kernel = getattr(torch.ops.quantized, p["op"])
    return torch_outputs(kernel(torch_input(case), packed, p["out_scale_req"],
                                p["out_zero_point_req"]))
