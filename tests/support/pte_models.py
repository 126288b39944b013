"""PT2E models lowered to ExecuTorch ``.pte`` files in ways tests/support/pt2e.py does not, for the
``.pte`` importer's tests (tests/importers/test_pte.py).

``program(name)`` is the ``.pte`` (XNNPACKQuantizer, XnnpackPartitioner; ``per_op`` models with
``XnnpackPartitioner(per_op_mode=True)``: one delegate per op, passing int8 tensors), ``runtime``
runs it in ExecuTorch's runtime, ``converted`` is the ``convert_pt2e`` GraphModule. All cached.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from . import pt2e


class _Conv(nn.Module):
    def __init__(self, cin=3, cout=6):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)


class TwoKernelCalls(_Conv):
    """Two ops XNNPACK does not take (cumsum): kernel calls between three delegates."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        y = torch.cumsum(self.conv(x), dim=3)
        return torch.cumsum(self.conv2(y), dim=2)


SHAPE = (2, 3, 7, 7)
MODELS = {"two_kernel_calls": TwoKernelCalls}
"""name -> model class; input shape ``SHAPE``. ``per_op:<name of PT2E_MODELS>`` lowers a model
of tests/support/pt2e.py one op per delegate."""


def inputs(name: str, seed: int, scale: float = 1.0) -> torch.Tensor:
    if name.startswith("per_op:"):
        return pt2e.inputs(name[len("per_op:"):], seed, scale)
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * scale


@functools.lru_cache(maxsize=None)
def converted(name: str):
    """(convert_pt2e GraphModule, example input)."""
    if name.startswith("per_op:"):
        return pt2e.quantized(name[len("per_op:"):], "xnnpack")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(sum(map(ord, name)))
    model = MODELS[name]().eval()
    example = inputs(name, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(),
                                pt2e._quantizer("xnnpack"))
        for seed, scale in ((1, 1.0), (2, 2.0)):
            prepared(inputs(name, seed, scale))
        return convert_pt2e(prepared), example


@functools.lru_cache(maxsize=None)
def program(name: str) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model, example = converted(name)
    partitioner = XnnpackPartitioner(per_op_mode=name.startswith("per_op:"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (example,))
        return to_edge_transform_and_lower(exported, partitioner=[partitioner]
                                           ).to_executorch().buffer


@functools.lru_cache(maxsize=None)
def runtime(name: str):
    """``run(x: np.ndarray) -> np.ndarray``: ExecuTorch's runtime on ``program(name)``."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(program(name)).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()
