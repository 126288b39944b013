"""The forum scenario, end to end: why a hand-written quantized Linear is *almost* PyTorch's.

A user ported ``QuantStub -> nn.Linear(10, 5) -> DeQuantStub`` (qconfig for qnnpack, calibrated on
five ``torch.rand(1, 10)``) as

    out[j] = sum_h (xq[h] - zx) * (wq[j, h] - zw) * sx * sw + bias[j]          (the forum formula)

and got numbers close to PyTorch's but not equal. ``run_forum_demo`` builds that model on an
engine, runs PyTorch, qexact and the forum formula on one input, diagnoses the formula's numbers
on a batch (``qexact.diagnose``: which known mistakes reproduce them) and explains the worst
element step by step (``Net.explain``).

The result is data (``ForumDemo``); ``qexact.cli`` renders it. Needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .diagnose import Diagnosis, diagnose
from .errors import ImporterError
from .explain import Explanation
from .importers.torch import from_torch
from .ops.quantize import quantize_per_tensor


@dataclass(frozen=True)
class ForumDemo:
    engine: str
    isa: str
    input_values: np.ndarray
    torch_output: np.ndarray
    qexact_output: np.ndarray
    forum_output: np.ndarray
    identical: bool
    input_scale: float
    input_zero_point: int
    weight_scale: np.ndarray
    weight_zero_point: np.ndarray
    output_scale: float
    output_zero_point: int
    bias_mode: str
    diagnosis: Diagnosis             # qexact.diagnose on the forum formula's numbers (the batch)
    explanation: Explanation         # the worst element of the shown input, step by step
    checked_inputs: int
    checked_identical: int


def _build_forum_model(engine: str, seed: int):
    import torch
    from torch import nn
    from torch.ao.quantization import DeQuantStub, QuantStub, convert, get_default_qconfig, prepare

    class ForumModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant = QuantStub()
            self.fc_1 = nn.Linear(10, 5)
            self.dequant = DeQuantStub()

        def forward(self, x):
            return self.dequant(self.fc_1(self.quant(x)))

    torch.manual_seed(seed)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        model = ForumModel().eval()
        model.qconfig = get_default_qconfig(engine)
        prepare(model, inplace=True)
        for _ in range(5):
            model(torch.rand(1, 10))
        convert(model, inplace=True)
    finally:
        torch.backends.quantized.engine = previous
    return model


def _forum_formula(net, x: np.ndarray):
    """``sum (xq - zx)(wq - zw) * sx * sw + bias`` in float64 (and the accumulator)."""
    quant = net.layers["quant"]
    layer = net.layers["fc_1"]
    xq = quantize_per_tensor(x, quant.scale, quant.zero_point, quant.dtype).values.astype(np.int64)
    zw = np.asarray(layer.weight_zero_point, dtype=np.int64)
    centered_weight = layer.weight.astype(np.int64) - (zw[:, None] if zw.ndim else zw)
    acc = (xq - layer.input_zero_point) @ centered_weight.T
    scale = layer.input_scale * np.asarray(layer.weight_scale, dtype=np.float64)
    return acc * scale + layer.float_bias.astype(np.float64), acc


def run_forum_demo(engine: str, seed: int = 7, checks: int = 1000) -> ForumDemo:
    """Build the forum model on ``engine`` and account for every output element."""
    try:
        import torch
    except ImportError:
        raise ImporterError("the forum demo builds a PyTorch model: install qexact[torch]") from None
    model = _build_forum_model(engine, seed)
    net = from_torch(model, engine=engine)
    layer = net.layers["fc_1"]
    generator = torch.Generator().manual_seed(seed + 1)
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        x = torch.rand(1, 10, generator=generator)
        torch_output = model(x).numpy()
        batch = torch.rand(checks, 10, generator=generator)
        batch_torch = model(batch).numpy()
    finally:
        torch.backends.quantized.engine = previous
    x, batch = x.numpy(), batch.numpy()
    qexact_output = net(x)
    checked_identical = int(np.all(net(batch) == batch_torch, axis=1).sum())

    forum, _ = _forum_formula(net, x)
    batch_forum, _ = _forum_formula(net, batch)
    diagnosis = diagnose(net, batch, batch_forum)
    worst = int(np.argmax(np.abs(forum[0] - torch_output[0])))
    explanation = net.explain(x, index=(0, worst))
    return ForumDemo(
        engine=engine, isa=net.isa, input_values=x[0], torch_output=torch_output[0],
        qexact_output=qexact_output[0], forum_output=forum[0].astype(np.float32),
        identical=bool(np.array_equal(qexact_output, torch_output)),
        input_scale=layer.input_scale, input_zero_point=layer.input_zero_point,
        weight_scale=np.asarray(layer.weight_scale), weight_zero_point=np.asarray(
            layer.weight_zero_point), output_scale=layer.output_scale,
        output_zero_point=layer.output_zero_point, bias_mode=layer.bias_mode.value,
        diagnosis=diagnosis, explanation=explanation, checked_inputs=checks,
        checked_identical=checked_identical,
    )
