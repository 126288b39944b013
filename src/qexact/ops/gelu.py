"""GELU on float32 tensors (nn.GELU, F.gelu; FX-converted models leave it float between a
dequantize and a quantize), as PyTorch computes it element for element.

The engine states the kernel (the ``"gelu"`` family of ``Engine.kernels``,
engines/aten_float.py): three code paths, the library path (oneDNN's ``gelu_erf``, which takes
contiguous tensors of ``approximate='none'`` when PyTorch has oneDNN enabled) and ATen's
``GeluKernelImpl`` SIMD body and scalar tail; its placement says which path computes each
element. The op validates and runs the description (``float_activations.run_paths``); explain
observes the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines.aten import default_num_threads
from ..errors import ShapeError, UnsupportedError
from ..qparams import QuantizedArray
from ._registry import graph_op, observed_stages
from .float_activations import run_paths

APPROXIMATIONS = ("none", "tanh")


@dataclass(frozen=True)
class GeluParams:
    """``approximate`` (``"none"``: erf; ``"tanh"``) and ``kernel``, the engine's description
    (``ActivationKernel``: its paths and their placement)."""

    approximate: str
    kernel: object


def prepare_gelu(approximate: str, *, engine, num_threads: int | None = None,
                 library: bool = True) -> GeluParams:
    """GELU on float32 for ``engine`` (a name or an ``Engine``). ``num_threads``: PyTorch's
    intra-op threads; ``library``: whether PyTorch had oneDNN enabled
    (``torch.backends.mkldnn.enabled``, the default True)."""
    from ..engines import get_engine

    if approximate not in APPROXIMATIONS:
        raise UnsupportedError(f"gelu approximate={approximate!r} is not supported; "
                               f"supported: {list(APPROXIMATIONS)}")
    kernel = get_engine(engine).kernel("gelu", approximate,
                                       int(num_threads or default_num_threads()), bool(library))
    return GeluParams(approximate, kernel)


def gelu(x: np.ndarray, params: GeluParams) -> np.ndarray:
    """GELU of a float32 array, element for element as PyTorch (contiguous output from the
    library path, the input's strides from ATen's kernel)."""
    if isinstance(x, QuantizedArray):
        raise UnsupportedError("quantized GELU is not supported: FX conversion leaves GELU in "
                               "float32; dequantize its input")
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise ShapeError(f"gelu expects a float32 tensor, got {x.dtype}")
    return run_paths(params.kernel, x, "gelu")


def _run_gelu(params: GeluParams, inputs):
    return gelu(inputs[0], params)


@graph_op("gelu", "GELU (nn.GELU, F.gelu; erf or tanh) on float32 tensors")
class GeluOp:
    """Graph node: attrs ``approximate``, ``num_threads``, ``library`` (oneDNN enabled)."""

    @staticmethod
    def prepare(node, input_qparams, engine):
        if input_qparams and input_qparams[0] is not None:
            raise UnsupportedError(f"{node.name}: quantized GELU is not supported; FX "
                                   "conversion runs GELU on float tensors")
        return prepare_gelu(node.attrs.get("approximate", "none"), engine=engine,
                            num_threads=node.attrs.get("num_threads"),
                            library=node.attrs.get("library", True)), None

    @staticmethod
    def run(params, inputs):
        return gelu(inputs[0], params)

    @staticmethod
    def explain(params, inputs, result, index):
        return observed_stages(_run_gelu, params, inputs, result, index), [(0, index)]
