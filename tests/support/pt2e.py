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


class Mlp3d(nn.Module):
    """Linear layers on a (batch, tokens, features) input: one dynamic quantization per token."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(40, 16), nn.Linear(16, 8, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


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


def _conv(i, o, k=3, **kw):
    return nn.Conv2d(i, o, k, padding=k // 2, **kw)


class ResidualAddRelu(nn.Module):
    """add+relu of two convs (a residual block), and x + x of one tensor."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 8), _conv(8, 8), _conv(8, 4, 1)

    def forward(self, x):
        a = self.a(x)
        y = torch.relu(a + self.b(a))
        return self.out(y + y)


class BroadcastAdd(nn.Module):
    """(N, C, H, W) + (N, C, 1, 1): a global average pool broadcast over the image."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 8), _conv(3, 8), _conv(8, 4, 1)

    def forward(self, x):
        g = torch.nn.functional.adaptive_avg_pool2d(self.b(x), (1, 1))
        return self.out(self.a(x) + g)


class Mul(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 8), _conv(3, 8), _conv(8, 4, 1)

    def forward(self, x):
        return self.out(self.a(x) * self.b(x))


class Hardtanh(nn.Module):
    """A quantized clamp after a conv, its bounds quantized by XNNPACK."""

    def __init__(self):
        super().__init__()
        self.a, self.out = _conv(3, 8), _conv(8, 4, 1)

    def forward(self, x):
        return self.out(torch.nn.functional.hardtanh(self.a(x), -0.5, 0.75))


class MaxPoolCeil(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 8), _conv(8, 8), _conv(8, 4, 1)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.a(x), 3, 2, ceil_mode=True)
        y = torch.relu(torch.nn.functional.max_pool2d(self.b(y), 2, 1, padding=1))
        return self.out(y)


class GlobalPool(nn.Module):
    """adaptive_avg_pool2d((1, 1)) and mean((2, 3), keepdim=True), then flatten and a Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b = _conv(3, 8), _conv(3, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        p = torch.nn.functional.adaptive_avg_pool2d(self.a(x), (1, 1))
        m = self.b(x).mean((2, 3), keepdim=True)
        return self.head((p + m).flatten(1))


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 4), _conv(3, 6, 1), _conv(10, 4, 1)

    def forward(self, x):
        return self.out(torch.cat([self.a(x), self.b(x)], 1))


class AvgPool(nn.Module):
    """avg_pool2d in float32 inside the delegate: XNNPACK's 9-tap order (k2; k3 padded without
    count_include_pad) and ExecuTorch's portable kernel (count_include_pad with padding)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.out = _conv(3, 8), _conv(8, 8), _conv(8, 8), _conv(8, 4, 1)

    def forward(self, x):
        f = torch.nn.functional
        y = self.b(f.avg_pool2d(self.a(x), 3, 1, 1, count_include_pad=False))
        y = self.c(f.avg_pool2d(y, 2))
        return self.out(f.avg_pool2d(y, 3, 1, 1))


class Bilinear(nn.Module):
    """Bilinear upsampling in float32 inside the delegate (half-pixel and align_corners)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 8), _conv(8, 8), _conv(8, 4, 1)

    def forward(self, x):
        f = torch.nn.functional
        y = self.b(f.interpolate(self.a(x), scale_factor=2, mode="bilinear", align_corners=False))
        return self.out(f.interpolate(y, size=(13, 11), mode="bilinear", align_corners=True))


class PermuteHead(nn.Module):
    """permute to channels-last and a Linear over the channels, then a reshape."""

    def __init__(self):
        super().__init__()
        self.a = _conv(3, 8)
        self.head = nn.Linear(8, 6)

    def forward(self, x):
        y = self.head(self.a(x).permute(0, 2, 3, 1))
        return y.reshape(y.shape[0], -1)


class TestCnn(nn.Module):
    """Conv, ReLU, max pool, a residual add+relu, cat, relu after cat, hardtanh, a global
    average pool, flatten and a Linear."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(3, 8)
        self.r1, self.r2 = _conv(8, 8), _conv(8, 8)
        self.left, self.right = _conv(8, 6, 1), _conv(8, 6)
        self.mix = _conv(12, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        f = torch.nn.functional
        y = f.max_pool2d(torch.relu(self.stem(x)), 2)
        y = torch.relu(y + self.r2(torch.relu(self.r1(y))))
        y = torch.relu(torch.cat([self.left(y), self.right(y)], 1))
        y = f.hardtanh(self.mix(y), -1.0, 1.0)
        return self.head(f.adaptive_avg_pool2d(y, (1, 1)).flatten(1))


class Shuffle(nn.Module):
    """ShuffleNetV2's block: chunk, a branch, cat, and the channel shuffle as view, transpose,
    contiguous, view."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv(3, 8), _conv(4, 4), _conv(8, 4, 1)

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        y = torch.cat([left, torch.relu(self.b(right))], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.out(y)


class InductorMix(nn.Module):
    """What X86InductorQuantizer quantizes besides GEMMs, in one model (one Inductor compile):
    relu6 and hardtanh fused into convs, max pool, mul, cat, a padded avg pool, a global average
    pool, flatten and a Linear."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(3, 8)
        self.a, self.b = _conv(8, 8), _conv(8, 8, 1)
        self.left, self.right = _conv(8, 4, 1), _conv(8, 6)
        self.mix = _conv(10, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        f = torch.nn.functional
        y = f.max_pool2d(f.relu6(self.stem(x)), 2)
        y = f.hardtanh(self.a(y), -0.5, 0.75) * self.b(y)
        y = torch.cat([self.left(y), self.right(y)], 1)
        y = self.mix(f.avg_pool2d(y, 3, 1, 1))
        return self.head(f.adaptive_avg_pool2d(y, (1, 1)).flatten(1))


PT2E_MODELS = {
    "mlp": (Mlp, (3, 20)),
    "small_cnn": (SmallCnn, (2, 3, 8, 8)),
    "conv1d": (Conv1dNet, (2, 4, 17)),
    "residual_add_relu": (ResidualAddRelu, (2, 3, 8, 8)),
    "broadcast_add": (BroadcastAdd, (2, 3, 8, 8)),
    "mul": (Mul, (2, 3, 8, 8)),
    "hardtanh": (Hardtanh, (2, 3, 8, 8)),
    "max_pool_ceil": (MaxPoolCeil, (2, 3, 8, 8)),
    "global_pool": (GlobalPool, (2, 3, 8, 8)),
    "cat": (Cat, (2, 3, 8, 8)),
    "avg_pool": (AvgPool, (2, 3, 8, 8)),
    "bilinear": (Bilinear, (2, 3, 5, 7)),
    "permute_head": (PermuteHead, (2, 3, 6, 6)),
    "test_cnn": (TestCnn, (2, 3, 16, 16)),
    "shuffle": (Shuffle, (2, 3, 8, 8)),
}
"""name -> (model class, input shape)."""
class LinearResidual(nn.Module):
    """``relu(linear(x) + x)`` quantized after (Inductor's fused "add" post-op), and a float
    ``linear(z) + z`` at the output (a float add)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(24, 24), nn.Linear(24, 10), nn.Linear(10, 10)

    def forward(self, x):
        z = self.b(torch.relu(self.a(x) + x))
        return self.c(z) + z


INDUCTOR_MODELS = {"inductor_mix": (InductorMix, (2, 3, 14, 13)),
                   "linear_residual": (LinearResidual, (4, 7, 24))}
"""Models for engine ``inductor`` only (X86InductorQuantizer's patterns; XNNPACKQuantizer leaves
their relu6 before a max pool in float32, which engine ``xnnpack`` does not run)."""
DYNAMIC_MODELS = {"mlp": (Mlp, (3, 20)), "mlp3d": (Mlp3d, (3, 5, 40))}
"""Models quantized dynamically (``XNNPACKQuantizer`` with ``is_dynamic=True``)."""
MODELS = {**PT2E_MODELS, **INDUCTOR_MODELS}
_EVERY_MODEL = {**MODELS, **DYNAMIC_MODELS}
XNNPACK_ONLY = {
    "max_pool_ceil",      # torch.compile drops ceil_mode (test_pt2e: refused, with the reason)
    "permute_head",       # Inductor runs a Linear on a 4-D input as a float mm: refused
}
"""Models of non-GEMM ops that engine ``xnnpack`` runs and engine ``inductor`` does not yet
(X86InductorQuantizer leaves these ops' inputs in float32): the inductor tests skip them."""
FLOAT_UNDER_INDUCTOR = {"conv1d"}
"""Models ``X86InductorQuantizer`` leaves in float32 (it annotates no Conv1d)."""


def _quantizer(kind: str):
    if kind in ("xnnpack", "xnnpack_dynamic"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(
            is_per_channel=True, is_dynamic=kind == "xnnpack_dynamic"))
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    return x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())


def inputs(name: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    shape = _EVERY_MODEL[name][1]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@functools.lru_cache(maxsize=None)
def quantized(name: str, quantizer: str):
    """(converted GraphModule, example input) of model ``name``, calibrated on three inputs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(sum(map(ord, name)))
    model = _EVERY_MODEL[name][0]().eval()
    example = inputs(name, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(),
                                _quantizer(quantizer))
        for seed, scale in ((1, 1.0), (2, 2.0), (3, 0.5)):
            prepared(inputs(name, seed, scale))
        return convert_pt2e(prepared), example


@functools.lru_cache(maxsize=None)
def executorch_program(name: str, quantizer: str = "xnnpack") -> bytes:
    """The ``.pte`` of model ``name`` (XNNPACKQuantizer, static or ``"xnnpack_dynamic"``),
    lowered with ``XnnpackPartitioner``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    converted, example = quantized(name, quantizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(converted, (example,))
        return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]
                                           ).to_executorch().buffer


def executorch_runtime(name: str, quantizer: str = "xnnpack"):
    """``run(x: np.ndarray) -> np.ndarray``: ExecuTorch's runtime on the lowered model."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(executorch_program(name, quantizer)).load_method("forward")
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
