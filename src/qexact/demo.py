"""The forum scenario, end to end: why a hand-written quantized Linear is *almost* PyTorch's.

A user ported ``QuantStub -> nn.Linear(10, 5) -> DeQuantStub`` (qconfig for qnnpack, calibrated on
five ``torch.rand(1, 10)``) as

    out[j] = sum_h (xq[h] - zx) * (wq[j, h] - zw) * sx * sw + bias[j]          (the forum formula)

and got numbers close to PyTorch's but not equal. ``run_forum_demo`` builds that model on an
engine, runs PyTorch, qexact and the forum formula on one input, and walks each output element
through the steps the formula skips, in the order PyTorch takes them:

1. output requantization: the result is rounded to the grid of ``fc``'s output scale;
2. clamping: outputs outside the range calibrated on five samples saturate at q = 0 or 255;
3. (qnnpack) the bias is quantized to int32 at scale ``sx * sw`` before it is added;
4. float32 arithmetic in the kernel's order (multiplier formed in float32, FMA or not).

The result is data (``ForumDemo``); ``qexact.cli`` renders it. Needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ImporterError
from .importers.torch import from_torch
from .ops.quantize import quantize_per_tensor


@dataclass(frozen=True)
class ElementAccount:
    """One output element: the output integer after each step the forum formula skips."""

    index: int
    forum: float              # the forum formula, float64
    requantized_code: int     # step 1: round(forum / s_out) + z_out, not clamped
    clamped_code: int         # step 2: clamped to [0, 255]
    int32_bias_code: int      # step 3: with the bias quantized to int32 (qnnpack), else unchanged
    code: int                 # step 4: PyTorch's (and qexact's) output integer
    torch: float              # PyTorch's float32 output: f32(s_out * (code - z_out))
    qexact: float

    @property
    def steps(self) -> list[tuple[str, int | None, int]]:
        """(step, code before, code after) for each skipped step that changed the integer."""
        chain = [("output requantization", None, self.requantized_code),
                 ("clamp to the calibrated range", self.requantized_code, self.clamped_code),
                 ("int32 bias", self.clamped_code, self.int32_bias_code),
                 ("float32 arithmetic in kernel order", self.int32_bias_code, self.code)]
        return [(name, before, after) for name, before, after in chain
                if before is None or before != after]


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
    elements: list[ElementAccount]
    checked_inputs: int
    checked_identical: int
    forum_beyond_half_step: float    # checked outputs where |forum - PyTorch| > s_out / 2
    forum_max_error: float
    clipped_fraction: float          # outputs PyTorch clamps at q = 0 or 255


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
    batch_forum, _ = _forum_formula(net, batch)
    batch_codes = net.run_quantized(batch).values

    forum, acc = _forum_formula(net, x)
    sw = np.asarray(layer.weight_scale, dtype=np.float64)
    so, zo = layer.output_scale, layer.output_zero_point
    requantized = np.rint(forum[0] / so) + zo
    clamped = np.clip(requantized, 0, 255)
    if layer.bias_mode.name == "INT32_AT_INPUT_SCALE":
        with_int32 = ((acc + layer.bias) * (layer.input_scale * sw))[0]
        int32_codes = np.clip(np.rint(with_int32 / so) + zo, 0, 255)
    else:
        int32_codes = clamped
    codes = net.run_quantized(x).values[0]
    elements = [
        ElementAccount(j, float(forum[0, j]), int(requantized[j]), int(clamped[j]),
                       int(int32_codes[j]), int(codes[j]), float(torch_output[0, j]),
                       float(qexact_output[0, j]))
        for j in range(forum.shape[1])
    ]
    return ForumDemo(
        engine=engine, isa=net.isa, input_values=x[0], torch_output=torch_output[0],
        qexact_output=qexact_output[0], forum_output=forum[0].astype(np.float32),
        identical=bool(np.array_equal(qexact_output, torch_output)),
        input_scale=layer.input_scale, input_zero_point=layer.input_zero_point,
        weight_scale=sw, weight_zero_point=np.asarray(layer.weight_zero_point),
        output_scale=so, output_zero_point=zo, bias_mode=layer.bias_mode.value,
        elements=elements, checked_inputs=checks, checked_identical=checked_identical,
        forum_beyond_half_step=float(np.mean(np.abs(batch_forum - batch_torch) > so / 2)),
        forum_max_error=float(np.abs(batch_forum - batch_torch).max()),
        clipped_fraction=float(np.mean((batch_codes == 0) | (batch_codes == 255))),
    )
