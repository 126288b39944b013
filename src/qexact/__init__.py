"""qexact: the bit-exact, explainable integer reference for quantized PyTorch models.

>>> import qexact
>>> net = qexact.from_torch(model, example_inputs=(x,))      # doctest: +SKIP
>>> np.array_equal(net(x), model(x).numpy())                 # doctest: +SKIP
True
"""

from __future__ import annotations

from ._version import __version__

from .dtypes import QINT8, QINT32, QUINT8, QDType
from .engines import ENGINES, ISAS, Engine, detect_isa, get_engine
from .errors import (DTypeError, FormatError, ImporterError, QexactError, QuantParamError,
                     ShapeError, UnsupportedError)
from .graph import Graph, Net, Node, Ref
from .ops.activations import relu
from .ops.linear import LinearParams, linear, prepare_linear
from .ops.quantize import dequantize, quantize_per_channel, quantize_per_tensor
from .ops.shape import flatten, reshape
from .qparams import QParams, QuantizedArray
from .serialization import load, save
from .diagnose import CATALOG_IDS, Diagnosis, Finding, diagnose
from .explain import Explanation, Stage, explain


def from_torch(model, example_inputs=None, engine=None, isa=None, allow_inexact=(),
               backend=None) -> Net:
    """Import a quantized PyTorch model (see ``qexact.importers.torch.from_torch``)."""
    from .importers.torch import from_torch as _from_torch

    return _from_torch(model, example_inputs=example_inputs, engine=engine, isa=isa,
                       allow_inexact=allow_inexact, backend=backend)


__all__ = [
    "CATALOG_IDS", "Diagnosis", "Explanation", "Finding", "Stage", "diagnose", "explain",
    "ENGINES", "ISAS", "QINT8", "QINT32", "QUINT8", "DTypeError", "Engine", "FormatError",
    "Graph", "ImporterError", "LinearParams", "Net", "Node", "QDType", "QParams", "QexactError",
    "QuantParamError", "QuantizedArray", "Ref", "ShapeError", "UnsupportedError", "__version__",
    "dequantize", "detect_isa", "flatten", "from_torch", "get_engine", "linear", "load",
    "prepare_linear", "quantize_per_channel", "quantize_per_tensor", "relu", "reshape", "save",
]
