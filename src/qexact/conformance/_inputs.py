"""Shared draws for the conformance cases: scales with exact ties, shapes, quantized inputs and
their torch tensors."""

from __future__ import annotations

import numpy as np

from ..dtypes import QINT8, QUINT8
from ..qparams import QParams


def torch_quantized(values: np.ndarray, qparams: QParams):
    import torch

    data = torch.from_numpy(np.ascontiguousarray(values))
    if qparams.is_per_channel:
        return torch._make_per_channel_quantized_tensor(
            data, torch.from_numpy(np.asarray(qparams.scale, np.float64)),
            torch.from_numpy(np.asarray(qparams.zero_point, np.int64)), qparams.axis)
    return torch._make_per_tensor_quantized_tensor(data, qparams.scale, qparams.zero_point)


def draw_scale(rng) -> float:
    if rng.random() < 0.25:
        return float(2.0 ** rng.integers(-8, 3))  # power of two: exact ties
    return float(10 ** rng.uniform(-4, 1))


def draw_shape(rng, rank_max: int = 3) -> tuple[int, ...]:
    rank = int(rng.integers(1, rank_max + 1))
    return tuple(int(size) for size in rng.integers(1, 40, rank))


def draw_values(rng, qparams: QParams, shape) -> np.ndarray:
    dtype = qparams.dtype
    return rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)


def redraw(draw, rng, attempts: int = 50):
    """Call ``draw(rng)`` until it returns a case (None: PyTorch or qexact refused; draw again)."""
    for _ in range(attempts):
        case = draw(rng)
        if case is not None:
            return case
    raise RuntimeError("conformance: no admissible case in 50 draws")


def draw_quint8_qparams(rng, factor: float = 1.0) -> QParams:
    return QParams.per_tensor(draw_scale(rng) * factor, int(rng.integers(0, 256)), QUINT8)


class TorchThreads:
    """Run PyTorch with ``count`` intra-op threads (for kernels whose results do not depend on it:
    tiny quantized calls are much faster on one thread)."""

    def __init__(self, count: int):
        self.count, self.previous = count, None

    def __enter__(self):
        import torch

        self.previous = torch.get_num_threads()
        torch.set_num_threads(self.count)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.previous)


def draw_image(rng, max_channels: int = 20, max_size: int = 12, dtype=None):
    """A random (N, C, H, W) quantized image; a constant block one time in five (exact ties)."""
    dtype = dtype or (QUINT8 if rng.random() < 0.7 else QINT8)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, max_channels + 1)),
             *(int(v) for v in rng.integers(1, max_size + 1, 2)))
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 1)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    values = draw_values(rng, qparams, shape)
    if rng.random() < 0.2:
        values[...] = values.flat[0]
    return values, qparams


def torch_image(values, qparams, channels_last: bool):
    import torch

    tensor = torch_quantized(values, qparams)
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def draw_small_shape(rng) -> tuple[int, ...]:
    """A 1-D run (SIMD body and tail) or a small 1- to 3-D block: a few thousand elements at most."""
    if rng.random() < 0.5:
        return (int(rng.integers(1, 300)),)
    return tuple(int(v) for v in rng.integers(1, 16, int(rng.integers(1, 4))))


def draw_elementwise_input(rng, dtype=None):
    dtype = dtype or (QUINT8 if rng.random() < 0.7 else QINT8)
    shape = draw_small_shape(rng)
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-2.5, -0.5)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    return draw_values(rng, qparams, shape), qparams
