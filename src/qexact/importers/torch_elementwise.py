"""torch import handlers for elementwise ops and activations.

Eager converted models call ``QFunctional.add(a, b)``; torch.fx traces that into
``torch.ops.quantized.add(a, b, scale, zero_point)`` (a call_function), and quantized activation
modules (nnq.Hardswish, nnq.ELU, ...) are leaves. Each node records ``torch.get_num_threads()``:
ATen cuts large tensors into one chunk per thread, each with its own SIMD body and scalar tail.
"""

from __future__ import annotations

from ..dtypes import dtype_named
from ..errors import UnsupportedError
from ..graph import Node
from ..qparams import QParams, qparams_to_fields
from ._handlers import _arg, function_handler, method_handler, module_handler
from ._handlers import torch_threads as _threads


def _output(scale, zero_point, dtype: str = "quint8") -> dict:
    attrs, _ = qparams_to_fields(QParams.per_tensor(float(scale), int(zero_point),
                                                    dtype_named(dtype)), "output")
    return attrs


def _binary(op: str):
    def handler(name, args, kwargs) -> Node:
        first = _arg(args, kwargs, 0, "qa", None)
        if _is_number(first) and len(args) >= 2:
            # quantized::add.Scalar2 / mul.Scalar2 (FX-converted ``3 * x``): the scalar first,
            # the same kernel as ``x * 3`` (aten/src/ATen/native/quantized/cpu/BinaryOps.cpp)
            args = (args[1], first) + tuple(args[2:])
        other = _arg(args, kwargs, 1, "other", None)
        if _is_number(other):
            # quantized::add.Scalar / mul.Scalar (FX-converted ``x + 1.0``): the scalar ops
            return Node(name, op.replace("_relu", "") + "_scalar", tuple(args[:1]),
                        {"scalar": float(other), "relu": op.endswith("_relu")})
        scale = _arg(args, kwargs, 2, "scale", None)
        zero_point = _arg(args, kwargs, 3, "zero_point", None)
        if scale is None or zero_point is None:
            raise UnsupportedError(f"quantized.{op} needs a constant output scale and zero point")
        attrs = _output(scale, zero_point)
        attrs["num_threads"] = _threads()
        return Node(name, op, tuple(args[:2]), attrs)

    return handler


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


# --- Tensor-scalar ops, cat, and more activations ------------------------------------------------


def _scalar(op: str, relu: bool):
    def handler(name, args, kwargs) -> Node:
        scalar = _arg(args, kwargs, 1, "other", None)
        if not isinstance(scalar, (int, float)) or isinstance(scalar, bool):
            raise UnsupportedError(f"quantized.{op} needs a constant Python number, got "
                                   f"{type(scalar).__name__}")
        return Node(name, op, tuple(args[:1]), {"scalar": float(scalar), "relu": relu})

    return handler


for _op in ("add_scalar", "mul_scalar"):
    for _relu in (False, True):
        _path = f"torch.ops.quantized.{_op}{'_relu' if _relu else ''}"
        function_handler(_path, _path + ".default")(_scalar(_op, _relu))


def _cat(relu: bool):
    def handler(name, args, kwargs) -> Node:
        tensors = _arg(args, kwargs, 0, "qx", None)
        dim = _arg(args, kwargs, 1, "dim", 0)
        scale = _arg(args, kwargs, 2, "scale", None)
        zero_point = _arg(args, kwargs, 3, "zero_point", None)
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise UnsupportedError("quantized.cat needs a list of tensors")
        attrs = {"dim": int(dim), "relu": relu}
        if scale is not None and zero_point is not None:  # the dtype is the inputs' (qint32 too)
            attrs.update(output_scale=float(scale), output_zero_point=int(zero_point))
        return Node(name, "cat", tuple(tensors), attrs)

    return handler


function_handler("torch.ops.quantized.cat", "torch.ops.quantized.cat.default")(_cat(False))
function_handler("torch.ops.quantized.cat_relu", "torch.ops.quantized.cat_relu.default")(_cat(True))


@function_handler("torch.cat", "torch.concat", "torch.concatenate")
def _torch_cat(name, args, kwargs) -> Node:
    """``torch.cat`` on quantized tensors (``cat_quantized_cpu``): the first input's qparams;
    on float tensors an exact concatenation."""
    tensors = _arg(args, kwargs, 0, "tensors", None)
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise UnsupportedError("torch.cat needs a list of tensors")
    dim = _arg(args, kwargs, 1, "dim", kwargs.get("axis", 0))
    return Node(name, "cat", tuple(tensors), {"dim": int(dim), "relu": False})


@function_handler("torch.stack")
def _torch_stack(name, args, kwargs) -> Node:
    """``torch.stack``: each input unsqueezed at ``dim``, then ``torch.cat`` (op ``stack``)."""
    tensors = _arg(args, kwargs, 0, "tensors", None)
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise UnsupportedError("torch.stack needs a list of tensors")
    return Node(name, "stack", tuple(tensors), {"dim": int(_arg(args, kwargs, 1, "dim", 0))})


@function_handler("torch.ops.quantized.hardswish", "torch.ops.quantized.hardswish.default")
def _hardswish_function(name, args, kwargs):
    scale = _arg(args, kwargs, 1, "output_scale", None)
    zero_point = _arg(args, kwargs, 2, "output_zero_point", None)
    return _activation_node(name, args, "hardswish", **_output(scale, zero_point))


@function_handler("torch.ops.quantized.leaky_relu", "torch.ops.quantized.leaky_relu.default")
def _leaky_relu_function(name, args, kwargs):
    slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
    scale = _arg(args, kwargs, 3, "output_scale", None)
    zero_point = _arg(args, kwargs, 4, "output_zero_point", None)
    return _activation_node(name, args, "leaky_relu", slope=slope, **_output(scale, zero_point))


function_handler("torch.nn.functional.hardswish")(
    lambda name, args, kwargs: _activation_node(name, args, "hardswish"))
function_handler("torch.nn.functional.leaky_relu")(
    lambda name, args, kwargs: _activation_node(
        name, args, "leaky_relu", slope=float(_arg(args, kwargs, 1, "negative_slope", 0.01)),
        same_qparams=True))


@module_handler("torch.nn.Hardswish")
def _float_hardswish(module, name, inputs):
    return _activation_node(name, inputs, "hardswish")


@module_handler("torch.nn.LeakyReLU")
def _float_leaky_relu(module, name, inputs):
    return _activation_node(name, inputs, "leaky_relu", slope=float(module.negative_slope),
                            same_qparams=True)


def _clamp_node(name, args, kwargs) -> Node:
    low = _arg(args, kwargs, 1, "min", None)
    high = _arg(args, kwargs, 2, "max", None)
    for bound in (low, high):
        if bound is not None and not isinstance(bound, (int, float)):
            raise UnsupportedError("clamp with tensor bounds is not supported; use numbers")
    return Node(name, "clamp", tuple(args[:1]), {"low": None if low is None else float(low),
                                                 "high": None if high is None else float(high)})


function_handler("torch.clamp", "torch.clip")(_clamp_node)
method_handler("clamp", "clip")(_clamp_node)


def _silu_node(name, inputs):
    return Node(name, "silu", tuple(inputs[:1]), {"num_threads": _threads()})


module_handler("torch.nn.SiLU")(lambda module, name, inputs: _silu_node(name, inputs))
function_handler("torch.nn.functional.silu")(lambda name, args, kwargs: _silu_node(name, args))
method_handler("sigmoid")(lambda name, args, kwargs: _activation_node(name, args, "sigmoid"))


@function_handler("torch.ops.quantized.elu", "torch.ops.quantized.elu.default")
def _elu_function(name, args, kwargs):
    """``quantized::elu(x, output_scale, output_zero_point, alpha=1, scale=1, input_scale=1)``
    (nnq.ELU's forward; TorchScript's node)."""
    for position, keyword in ((4, "scale"), (5, "input_scale")):
        if float(_arg(args, kwargs, position, keyword, 1.0)) != 1.0:
            raise UnsupportedError(f"quantized.elu with {keyword} != 1 is not supported")
    return _activation_node(name, args, "elu", alpha=float(_arg(args, kwargs, 3, "alpha", 1.0)),
                            **_output(_arg(args, kwargs, 1, "output_scale", None),
                                      _arg(args, kwargs, 2, "output_zero_point", None)))
