"""torch import handlers for elementwise ops and activations.

Eager converted models call ``QFunctional.add(a, b)``; torch.fx traces that into
``torch.ops.quantized.add(a, b, scale, zero_point)`` (a call_function), and quantized activation
modules (nnq.Hardswish, nnq.ELU, ...) are leaves. Each node records ``torch.get_num_threads()``:
ATen cuts large tensors into one chunk per thread, each with its own SIMD body and scalar tail.
"""

from __future__ import annotations

from ..dtypes import dtype_named
from ..errors import UnsupportedError
from ..qparams import QParams, qparams_to_fields
from .torch import Node, _arg, _import_torch, function_handler, module_handler


def _threads() -> int:
    return int(_import_torch().get_num_threads())


def _output(scale, zero_point, dtype: str = "quint8") -> dict:
    attrs, _ = qparams_to_fields(QParams.per_tensor(float(scale), int(zero_point),
                                                    dtype_named(dtype)), "output")
    return attrs


def _binary(op: str):
    def handler(name, args, kwargs) -> Node:
        scale = _arg(args, kwargs, 2, "scale", None)
        zero_point = _arg(args, kwargs, 3, "zero_point", None)
        if scale is None or zero_point is None:
            raise UnsupportedError(f"quantized.{op} needs a constant output scale and zero point")
        attrs = _output(scale, zero_point)
        attrs["num_threads"] = _threads()
        return Node(name, op, tuple(args[:2]), attrs)

    return handler


for _op in ("add", "add_relu", "mul", "mul_relu"):
    function_handler(f"torch.ops.quantized.{_op}", f"torch.ops.quantized.{_op}.default")(_binary(_op))


def _activation_node(name, inputs, function, **attrs) -> Node:
    attrs.update(function=function, num_threads=_threads())
    return Node(name, "activation", tuple(inputs[:1]), attrs)


@module_handler("torch.ao.nn.quantized.Hardswish")
def _hardswish(module, name, inputs):
    return _activation_node(name, inputs, "hardswish", **_output(module.scale, module.zero_point))


@module_handler("torch.ao.nn.quantized.LeakyReLU")
def _leaky_relu(module, name, inputs):
    return _activation_node(name, inputs, "leaky_relu", slope=float(module.negative_slope),
                            **_output(module.scale, module.zero_point))


@module_handler("torch.ao.nn.quantized.ELU")
def _elu(module, name, inputs):
    return _activation_node(name, inputs, "elu", alpha=float(module.alpha),
                            **_output(module.scale, module.zero_point))


@module_handler("torch.nn.Sigmoid")
def _sigmoid(module, name, inputs):
    return _activation_node(name, inputs, "sigmoid")


@module_handler("torch.nn.Tanh")
def _tanh(module, name, inputs):
    return _activation_node(name, inputs, "tanh")


@module_handler("torch.nn.Hardsigmoid")
def _hardsigmoid(module, name, inputs):
    return _activation_node(name, inputs, "hardsigmoid")


@module_handler("torch.ao.nn.quantized.ReLU6", "torch.nn.ReLU6")
def _relu6(module, name, inputs):
    return Node(name, "clamp", tuple(inputs[:1]), {"low": 0.0, "high": 6.0})


@module_handler("torch.nn.Hardtanh")
def _hardtanh(module, name, inputs):
    return Node(name, "clamp", tuple(inputs[:1]), {"low": float(module.min_val),
                                                   "high": float(module.max_val)})


function_handler("torch.sigmoid", "torch.nn.functional.sigmoid")(
    lambda name, args, kwargs: _activation_node(name, args, "sigmoid"))
function_handler("torch.tanh", "torch.nn.functional.tanh")(
    lambda name, args, kwargs: _activation_node(name, args, "tanh"))
function_handler("torch.nn.functional.hardsigmoid")(
    lambda name, args, kwargs: _activation_node(name, args, "hardsigmoid"))
function_handler("torch.nn.functional.relu6")(
    lambda name, args, kwargs: Node(name, "clamp", tuple(args[:1]), {"low": 0.0, "high": 6.0}))
function_handler("torch.nn.functional.hardtanh")(
    lambda name, args, kwargs: Node(name, "clamp", tuple(args[:1]), {
        "low": float(_arg(args, kwargs, 1, "min_val", -1.0)),
        "high": float(_arg(args, kwargs, 2, "max_val", 1.0))}))
