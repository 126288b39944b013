"""PT2E models and the runtimes that deploy them, for differential tests.

``quantized(name, quantizer)`` prepares, calibrates and converts one of ``PT2E_MODELS`` with
``XNNPACKQuantizer`` (``"xnnpack"``) or ``X86InductorQuantizer`` (``"inductor"``);
``executorch_runtime`` lowers a converted model with ``XnnpackPartitioner`` and runs it in
ExecuTorch's runtime; ``inductor_compiled`` compiles it with ``torch.compile`` and freezing, the
deployment mode. All are cached: lowering takes seconds, compiling ten or more.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from torch import nn



class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(20, 32), nn.Linear(32, 24), nn.Linear(24, 5)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class SmallCnn(nn.Module):
    """Conv (padded, strided), ReLU, depthwise with a multiplier, 1x1, flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 16, 3, stride=2, groups=8)
        self.pointwise = nn.Conv2d(16, 8, 1, bias=False)
        self.head = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = torch.relu(self.depthwise(y))
        y = self.pointwise(y)
        return self.head(y.flatten(1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2, dilation=1)
        self.conv2 = nn.Conv1d(6, 6, 3, stride=2, dilation=2)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv(x)))


PT2E_MODELS = {
    "mlp": (Mlp, (3, 20)),
    "small_cnn": (SmallCnn, (2, 3, 8, 8)),
    "conv1d": (Conv1dNet, (2, 4, 17)),
}
"""name -> (model class, input shape)."""
FLOAT_UNDER_INDUCTOR = {"conv1d"}
"""Models ``X86InductorQuantizer`` leaves in float32 (it annotates no Conv1d)."""


def _quantizer(kind: str):
    if kind == "xnnpack":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    return x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())


def inputs(name: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    shape = PT2E_MODELS[name][1]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@functools.lru_cache(maxsize=None)
def quantized(name: str, quantizer: str):
    """(converted GraphModule, example input) of model ``name``, calibrated on three inputs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(sum(map(ord, name)))
    model = PT2E_MODELS[name][0]().eval()
    example = inputs(name, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(),
                                _quantizer(quantizer))
        for seed, scale in ((1, 1.0), (2, 2.0), (3, 0.5)):
            prepared(inputs(name, seed, scale))
        return convert_pt2e(prepared), example


@functools.lru_cache(maxsize=None)
def executorch_program(name: str) -> bytes:
    """The ``.pte`` of model ``name`` (XNNPACKQuantizer), lowered with ``XnnpackPartitioner``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    converted, example = quantized(name, "xnnpack")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(converted, (example,))
        return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]
                                           ).to_executorch().buffer


def executorch_runtime(name: str):
    """``run(x: np.ndarray) -> np.ndarray``: ExecuTorch's runtime on the lowered model."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(executorch_program(name)).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()


@functools.lru_cache(maxsize=None)
def inductor_compiled(name: str):
    """``run(x: np.ndarray) -> np.ndarray``: the model compiled by Inductor with freezing."""
    converted, example = quantized(name, "inductor")
    torch._inductor.config.freezing = True
    compiled = torch.compile(converted)
    with torch.no_grad():
        compiled(example)

    def run(x):
        with torch.no_grad():
            return compiled(torch.from_numpy(x)).numpy()

    return run


def differing(mine: np.ndarray, theirs: np.ndarray) -> int:
    """Elements whose float32 bit patterns differ."""
    assert mine.shape == theirs.shape and mine.dtype == theirs.dtype == np.float32
    return int(np.count_nonzero(mine.view(np.uint32) != theirs.view(np.uint32)))
