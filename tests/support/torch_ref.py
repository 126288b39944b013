"""Run PyTorch's quantized kernels on NumPy data (the other side of every differential test)."""

from __future__ import annotations

import numpy as np

import qexact
from qexact.qparams import QParams

TORCH_DTYPES = {"quint8": "quint8", "qint8": "qint8", "qint32": "qint32"}


def torch_quantized(values: np.ndarray, qparams: QParams):
    """A quantized torch tensor holding exactly ``values`` with ``qparams``."""
    import torch

    data = torch.from_numpy(np.ascontiguousarray(values))
    if qparams.is_per_channel:
        return torch._make_per_channel_quantized_tensor(
            data, torch.from_numpy(np.asarray(qparams.scale, np.float64)),
            torch.from_numpy(np.asarray(qparams.zero_point, np.int64)), qparams.axis)
    return torch._make_per_tensor_quantized_tensor(data, qparams.scale, qparams.zero_point)


def torch_linear(x: np.ndarray, x_qparams: QParams, weight: np.ndarray, weight_qparams: QParams,
                 bias: np.ndarray | None, out_qparams: QParams, relu: bool) -> np.ndarray:
    """``quantized::linear`` / ``linear_relu`` under the current torch engine; uint8 outputs."""
    import torch

    packed = torch.ops.quantized.linear_prepack(
        torch_quantized(weight, weight_qparams), None if bias is None else torch.from_numpy(bias))
    op = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    out = op(torch_quantized(x, x_qparams), packed, out_qparams.scale, out_qparams.zero_point)
    return out.int_repr().numpy()


def qexact_linear(x, x_qparams, weight, weight_qparams, bias, out_qparams, relu, engine, isa=None):
    params = qexact.prepare_linear(weight, weight_qparams, bias, x_qparams, out_qparams,
                                   relu=relu, engine=engine, isa=isa)
    return qexact.linear(qexact.QuantizedArray(x, x_qparams), params).values
