"""torch import handlers for the float32 kernels of transformer blocks (GELU, softmax,
log_softmax) and the quantized softmax.

FX conversion with ``get_default_qconfig_mapping`` leaves ``nn.GELU`` and functional
``F.gelu``/``F.softmax``/``Tensor.softmax``/``torch.log_softmax`` in float32 between a
dequantize and a quantize, and turns ``nn.Softmax`` modules into ``nnq.Softmax``
(``torch.ops.quantized.softmax``, output qparams (1/256, 0)). GELU nodes record
``torch.get_num_threads()`` (ATen's chunks) and whether oneDNN is enabled
(``torch.backends.mkldnn``: PyTorch hands contiguous erf GELU to it). TorchScript kinds
(``aten::gelu``, ``aten::softmax``, ``aten::log_softmax``, ``quantized::softmax``) reach these
handlers through the function table.
"""

from __future__ import annotations

from ..errors import UnsupportedError
from ..graph import Node
from ._handlers import (_arg, _import_torch, function_handler, method_handler, module_handler,
                        torch_threads)


def _library_enabled() -> bool:
    torch = _import_torch()
    return bool(torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled())


def _gelu_node(name, inputs, approximate) -> Node:
    return Node(name, "gelu", tuple(inputs[:1]),
                {"approximate": str(approximate), "num_threads": torch_threads(),
                 "library": _library_enabled()})


@module_handler("torch.nn.GELU")
def _gelu_module(module, name, inputs):
    return _gelu_node(name, inputs, module.approximate)


@function_handler("torch.nn.functional.gelu", "torch._C._nn.gelu")
def _gelu_function(name, args, kwargs):
    return _gelu_node(name, args, _arg(args, kwargs, 1, "approximate", "none"))


def _float_dtype(dtype) -> None:
    if dtype is not None and str(dtype) not in ("torch.float32", "6"):
        raise UnsupportedError(f"softmax with dtype={dtype!r} is not supported (float32 only)")


def _softmax_node(log: bool):
    def handler(name, args, kwargs) -> Node:
        dim = _arg(args, kwargs, 1, "dim", None)
        _float_dtype(_arg(args, kwargs, 3 if "_stacklevel" in kwargs or len(args) > 3 else 2,
                          "dtype", kwargs.get("dtype")))
        if dim is not None and not isinstance(dim, int):
            raise UnsupportedError(f"softmax needs a constant int dim, got {dim!r}")
        return Node(name, "softmax", tuple(args[:1]),
                    {"dim": dim, "log": log, "num_threads": torch_threads()})

    return handler


function_handler("torch.nn.functional.softmax", "torch.softmax", "torch.special.softmax",
                 "torch._softmax")(_softmax_node(False))
function_handler("torch.nn.functional.log_softmax", "torch.log_softmax",
                 "torch.special.log_softmax")(_softmax_node(True))
method_handler("softmax")(_softmax_node(False))
method_handler("log_softmax")(_softmax_node(True))


@module_handler("torch.nn.Softmax", "torch.nn.LogSoftmax")
def _softmax_module(module, name, inputs):
    torch = _import_torch()
    return Node(name, "softmax", tuple(inputs[:1]),
                {"dim": module.dim, "log": isinstance(module, torch.nn.LogSoftmax),
                 "num_threads": torch_threads()})


def _quantized_softmax_node(name, inputs, dim, scale, zero_point) -> Node:
    if scale is None or zero_point is None:
        raise UnsupportedError("quantized softmax needs a constant output scale and zero point")
    return Node(name, "softmax", tuple(inputs[:1]),
                {"dim": dim, "log": False, "output_scale": float(scale),
                 "output_zero_point": int(zero_point), "num_threads": torch_threads()})


@module_handler("torch.ao.nn.quantized.Softmax")
def _quantized_softmax_module(module, name, inputs):
    return _quantized_softmax_node(name, inputs, module.dim, module.scale, module.zero_point)


@function_handler("torch.ops.quantized.softmax", "torch.ops.quantized.softmax.default")
def _quantized_softmax_function(name, args, kwargs):
    return _quantized_softmax_node(name, args, _arg(args, kwargs, 1, "dim", None),
                                   _arg(args, kwargs, 2, "output_scale", None),
                                   _arg(args, kwargs, 3, "output_zero_point", None))


def _number(value, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UnsupportedError(f"{what} must be a constant number, got {type(value).__name__}")
    return float(value)


@function_handler("torch.ops.quantized.celu", "torch.ops.quantized.celu.default")
def _quantized_celu_function(name, args, kwargs):
    """``quantized::celu(x, output_scale, output_zero_point, alpha=1)``
    (``torch.ao.nn.quantized.functional.celu`` calls it; FX cannot trace that wrapper, which
    branches on ``is_quantized``, TorchScript inlines it): ATen's ``qelu_kernel`` with
    ``scale = 1``, ``input_scale = 1 / alpha`` (qelu.cpp)."""
    scale = _arg(args, kwargs, 1, "output_scale", None)
    zero_point = _arg(args, kwargs, 2, "output_zero_point", None)
    if scale is None or zero_point is None:
        raise UnsupportedError("quantized celu needs a constant output scale and zero point")
    alpha = _number(_arg(args, kwargs, 3, "alpha", 1.0), "quantized celu's alpha")
    if alpha == 0:
        raise UnsupportedError("quantized celu with alpha = 0 (PyTorch raises ZeroDivisionError)")
    return Node(name, "activation", tuple(args[:1]),
                {"function": "celu", "alpha": alpha, "output_scale": _number(scale, "scale"),
                 "output_zero_point": int(zero_point), "num_threads": torch_threads()})


@function_handler("torch.ops.quantized.threshold", "torch.ops.quantized.threshold.default")
def _quantized_threshold_function(name, args, kwargs):
    """``quantized::threshold(qx, threshold, value)``: ATen's ``qthreshold_kernel``, output
    qparams the input's (``torch.ao.nn.quantized.functional.threshold`` calls it)."""
    threshold = _arg(args, kwargs, 1, "threshold", None)
    value = _arg(args, kwargs, 2, "value", None)
    if threshold is None or value is None:
        raise UnsupportedError("quantized threshold needs a constant threshold and value")
    return Node(name, "activation", tuple(args[:1]),
                {"function": "threshold", "threshold": _number(threshold, "threshold"),
                 "value": _number(value, "value"), "same_qparams": True,
                 "num_threads": torch_threads()})
