"""torch import handlers for dynamically quantized Linear (``quantize_dynamic``, FX
``prepare_fx``/``convert_fx`` with a dynamic qconfig, and TorchScript of either).

``torch.ao.nn.quantized.dynamic.Linear`` (a subclass of the static ``nnq.Linear``, so it needs
its own handler) and ``torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU`` hold packed
parameters of dtype qint8 (``quantized::linear_dynamic(x, packed, reduce_range=True)``, version
4 modules) or float16 (``quantized::linear_dynamic_fp16``); their output is float32. qint8
becomes a ``linear_dynamic`` node (input quantized at run time to quint8), float16 a
``linear_fp16`` node. Packed weights are read back with ``linear_unpack`` /
``linear_unpack_fp16``, so the node holds exactly what the kernel runs.
"""

from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import qparams_to_fields
from ._handlers import (_import_torch, _qparams_of_tensor, _resolve, function_handler,
                        module_handler, torchscript_handler)

_RELU_CLASS = "torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU"


def _int8_node(name, x, weight, bias, relu: bool, reduce_range: bool) -> Node:
    torch = _import_torch()
    if weight.dtype != torch.qint8:
        raise UnsupportedError(f"{name}: a dynamically quantized Linear with {weight.dtype} "
                               "weights is not supported; qint8 and float16 are")
    attrs, arrays = qparams_to_fields(_qparams_of_tensor(weight), "weight")
    arrays["weight"] = weight.int_repr().numpy().astype(np.int8)
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    attrs.update({"relu": bool(relu), "reduce_range": bool(reduce_range),
                  "input_dtype": "quint8"})
    return Node(name, "linear_dynamic", (x,), attrs, arrays)


def _fp16_node(name, x, weight, bias, relu: bool) -> Node:
    torch = _import_torch()
    # float32 holding the fp16 values (the file format has no float16; prepare converts exactly)
    arrays = {"weight": weight.detach().to(torch.float32).numpy().copy()}
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    return Node(name, "linear_fp16", (x,), {"relu": bool(relu)}, arrays)


def _packed_node(name, x, packed, relu: bool, fp16: bool, reduce_range: bool) -> Node:
    """A node from a ``LinearPackedParamsBase`` object: unpacked with the kernel's own unpack."""
    torch = _import_torch()
    unpack = torch.ops.quantized.linear_unpack_fp16 if fp16 else torch.ops.quantized.linear_unpack
    weight, bias = _unpacked(lambda: unpack(packed))
    if fp16:
        return _fp16_node(name, x, weight, bias, relu)
    return _int8_node(name, x, weight, bias, relu, reduce_range)


def _unpacked(unpack):
    """``unpack()``'s weight and bias; PyTorch's refusal to unpack under the current
    ``torch.backends.quantized.engine`` ("... is currently not supported by QNNPACK") as an
    ``UnsupportedError`` naming it."""
    torch = _import_torch()
    try:
        return unpack()
    except RuntimeError as error:
        raise UnsupportedError(
            f"torch cannot unpack this Linear's weights under torch.backends.quantized.engine "
            f"{torch.backends.quantized.engine!r}: {str(error).splitlines()[0]}; import the "
            "model under the engine it was converted with") from None


@module_handler(_RELU_CLASS, "torch.ao.nn.quantized.dynamic.Linear")
def _dynamic_linear(module, name, inputs):
    torch = _import_torch()
    relu_class = _resolve(_RELU_CLASS)
    relu = relu_class is not None and isinstance(module, relu_class)
    dtype = module._packed_params.dtype
    weight, bias = _unpacked(module._weight_bias)
    if dtype == torch.float16:
        return _fp16_node(name, inputs[0], weight, bias, relu)
    if dtype != torch.qint8:
        raise UnsupportedError(f"{name}: a dynamically quantized Linear of dtype {dtype} is not "
                               "supported; qint8 and float16 are")
    # DynamicQuantizedLinear.forward: version >= 4 passes reduce_range=True, older ones the
    # op's default (False); LinearReLU calls linear_relu_dynamic(x, packed, reduce_range=True)
    version = getattr(module, "version", None)
    reduce_range = relu or (version is not None and version >= 4)
    return _int8_node(name, inputs[0], weight, bias, relu, reduce_range)


def _reduce_range_argument(args, kwargs, index: int) -> bool:
    if len(args) > index:
        return bool(args[index])
    return bool(kwargs.get("reduce_range", False))


def _function(relu: bool, fp16: bool):
    def handler(name, args, kwargs):
        packed = args[1] if len(args) > 1 else kwargs.get("W_prepack")
        reduce_range = False if fp16 else _reduce_range_argument(args, kwargs, 2)
        return _packed_node(name, args[0], packed, relu, fp16, reduce_range)
    return handler


function_handler("torch.ops.quantized.linear_dynamic")(_function(False, False))
function_handler("torch.ops.quantized.linear_relu_dynamic")(_function(True, False))
function_handler("torch.ops.quantized.linear_dynamic_fp16")(_function(False, True))
function_handler("torch.ops.quantized.linear_relu_dynamic_fp16")(_function(True, True))


def _script(relu: bool, fp16: bool):
    def handler(name, inputs, module_path):
        reduce_range = False if fp16 or len(inputs) < 3 else bool(inputs[2])
        return _packed_node(name, inputs[0], inputs[1], relu, fp16, reduce_range)
    return handler


torchscript_handler("quantized::linear_dynamic")(_script(False, False))
torchscript_handler("quantized::linear_relu_dynamic")(_script(True, False))
torchscript_handler("quantized::linear_dynamic_fp16")(_script(False, True))
torchscript_handler("quantized::linear_relu_dynamic_fp16")(_script(True, True))

_FLOAT32 = 6
"""c10::ScalarType code of float32."""


@torchscript_handler("aten::to")
def _to(name, inputs, module_path):
    """``Y.to(x.dtype)`` at the end of the dynamic Linear's forward: float32 to float32 is the
    identity; any other conversion is refused."""
    dtype = next((value for value in inputs[1:] if isinstance(value, int)
                  and not isinstance(value, bool)), None)
    if dtype != _FLOAT32:
        raise UnsupportedError(f"{name}: aten::to with dtype code {dtype!r} is not supported; "
                               "only float32 (6), the identity on a float32 tensor, is")
    return Node(name, "identity", inputs[:1])
