"""What the torch importers share: the handler tables with their decorators, the discovery of
the modules that fill them, and the helpers handlers use (torch, dotted paths, tensor fields).

Each module of this package registers its handlers when imported, with
``@module_handler("torch.ao.nn.quantized.Linear", ...)`` (eager and FX leaves),
``@function_handler`` / ``@method_handler`` (calls traced in ``forward``) or
``@torchscript_handler("quantized::linear", ...)`` (TorchScript node kinds).
``load_handler_modules`` imports every public module of the package, so a new handler module
needs no list edit. A module is handled by the handler of the most derived of its classes
(``type(module).__mro__``), whatever order the modules registered in.

torch is imported only inside functions: ``import qexact`` never imports torch.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..dtypes import dtype_named
from ..errors import ImporterError, UnsupportedError
from ..graph import Node, Ref
from ..qparams import QParams, qparams_to_fields

_MODULE_HANDLERS: list[tuple[str, Callable]] = []
"""(dotted class path, handler) pairs: ``handler(module, node_name, inputs) -> Node``."""
_FUNCTION_HANDLERS: list[tuple[str, Callable]] = []
"""(dotted path of a function, handler) pairs: ``torch.flatten``, ``torch.ops.quantized.add``."""
_METHOD_HANDLERS: dict[str, Callable] = {}
"""Tensor method name -> ``handler(name, args, kwargs) -> Node``."""
_SCRIPT_HANDLERS: dict[str, Callable] = {}
"""TorchScript node kind -> ``handler(name, inputs, module_path) -> Node``."""


def module_handler(*class_paths: str):
    """Register ``handler(module, node_name, inputs) -> Node`` for modules of these classes."""

    def register(handler):
        for path in class_paths:
            _MODULE_HANDLERS.append((path, handler))
        return handler

    return register


def function_handler(*paths: str):
    """Register ``handler(name, args, kwargs) -> Node`` for calls of these functions."""

    def register(handler):
        for path in paths:
            _FUNCTION_HANDLERS.append((path, handler))
        return handler

    return register


def method_handler(*names: str):
    """Register ``handler(name, args, kwargs) -> Node`` for these tensor methods."""

    def register(handler):
        for method in names:
            _METHOD_HANDLERS[method] = handler
        return handler

    return register


def torchscript_handler(*kinds: str):
    """Register ``handler(name, inputs, module_path) -> Node`` for TorchScript node kinds.

    ``inputs`` holds each input as a ``Ref`` (a tensor), or its constant value (numbers, lists,
    packed-parameter objects); ``module_path`` is the qualified name of the module the node's
    attribute reads came from (``head.out``), or "".
    """

    def register(handler):
        for kind in kinds:
            _SCRIPT_HANDLERS[kind] = handler
        return handler

    return register


def load_handler_modules() -> None:
    """Import every public module of this package: each registers its handlers."""
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")


# --- Looking handlers up -----------------------------------------------------------------------


def supported_modules() -> list[str]:
    return sorted({path for path, _ in _MODULE_HANDLERS})


def module_handlers() -> dict[type, Callable]:
    """Handler by class, for the classes this torch has (the first registration of a class)."""
    handlers: dict[type, Callable] = {}
    for path, handler in _MODULE_HANDLERS:
        cls = _resolve(path)
        if cls is not None:
            handlers.setdefault(cls, handler)
    return handlers


def handler_of_module(handlers: dict[type, Callable], module) -> Callable | None:
    """The handler of the most derived class of ``module`` that has one (``nnq.ReLU6``'s own,
    not that of ``nn.ReLU``, its base class), or None."""
    return next((handlers[cls] for cls in type(module).__mro__ if cls in handlers), None)


def function_node(name: str, function, args, kwargs) -> Node:
    for path, handler in _FUNCTION_HANDLERS:
        target = _resolve(path)
        if target is not None and function is target:
            return handler(name, args, kwargs)
    raise unsupported(
        f"function {getattr(function, '__module__', '')}.{getattr(function, '__name__', function)} "
        "is not supported", "functions", supported_functions())


def method_node(name: str, method: str, args, kwargs) -> Node:
    handler = _METHOD_HANDLERS.get(method)
    if handler is None:
        raise unsupported(f"tensor method .{method}() is not supported", "methods",
                          sorted(_METHOD_HANDLERS))
    return handler(name, args, kwargs)


def function_handler_at(path: str) -> Callable | None:
    """The handler registered for the function at ``path``: under that path, or under another
    path naming the same object (``torch.functional.split`` is ``torch.split``); or None."""
    for registered, handler in _FUNCTION_HANDLERS:
        if registered == path:
            return handler
    target = _resolve(path)
    if target is None:
        return None
    for registered, handler in _FUNCTION_HANDLERS:
        if _resolve(registered) is target:
            return handler
    return None


def method_handler_of(name: str) -> Callable | None:
    return _METHOD_HANDLERS.get(name)


def supported_methods() -> list[str]:
    return sorted(_METHOD_HANDLERS)


def supported_functions() -> list[str]:
    return sorted({path for path, _ in _FUNCTION_HANDLERS})


def unsupported(message: str, kind: str, supported: list[str]) -> UnsupportedError:
    """An UnsupportedError ``message; supported <kind>: <list>``. It keeps the parts apart
    (``error.short``; ``error.supported``: (kind, names) pairs), so an error listing many
    refusals states each supported list once (``refusals_error``)."""
    error = UnsupportedError(f"{message}; supported {kind}: {', '.join(supported)}")
    error.short = message
    error.supported = ((kind, tuple(supported)),)
    return error


def refusals_error(model: str, refusals: list[tuple[str, UnsupportedError]]) -> UnsupportedError:
    """One UnsupportedError for every construct of ``model`` qexact refused, as
    ``(place, error)`` pairs: each named with its place, then each supported list once. With one
    refusal, the error as it was raised, with its place."""
    if len(refusals) == 1:
        place, error = refusals[0]
        return UnsupportedError(f"at {place}: {error}") if place else error
    lines, supported = [], {}
    for place, error in refusals:
        short = getattr(error, "short", str(error))
        lines.append(f"at {place}: {short}" if place else short)
        for kind, names in getattr(error, "supported", ()):
            supported.setdefault(kind, names)
    text = (f"{len(refusals)} operations of {model} are not supported:\n  - "
            + "\n  - ".join(lines))
    for kind, names in supported.items():
        text += f"\nsupported {kind}: {', '.join(names)}"
    return UnsupportedError(text)


def script_handler(kind: str) -> Callable | None:
    return _SCRIPT_HANDLERS.get(kind)


def supported_script_kinds() -> list[str]:
    return sorted(_SCRIPT_HANDLERS)


# --- Helpers for handlers ----------------------------------------------------------------------


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImporterError(
            "reading a PyTorch model needs torch; install qexact[torch] (torch==2.13.0)"
        ) from None
    return torch


def torch_threads() -> int:
    """``torch.get_num_threads()`` now, which importers record on the nodes whose kernels split
    work between threads (ATen's chunks, Inductor's split sums)."""
    return int(_import_torch().get_num_threads())


def _resolve(path: str):
    """The object at a dotted path (``torch.ao.nn.quantized.Linear``, ``torch.ops.quantized.add``),
    or None where this torch has none."""
    parts = path.split(".")
    if parts[0] not in ("torch", "operator", "_operator", "builtins") \
            and parts[0] not in sys.modules:
        return None  # a model using torchvision has imported it; never import it ourselves
    try:
        value = importlib.import_module(parts[0])
        for part in parts[1:]:
            value = getattr(value, part)
    except (ImportError, AttributeError, RuntimeError):
        return None
    return value


def unique_name(taken: set[str], name: str) -> str:
    """``name``, or ``name_1``, ``name_2``, ... if taken; the result is added to ``taken``."""
    base, index = name, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def _arg(args, kwargs, index, keyword, default):
    if len(args) > index:
        return args[index]
    return kwargs.get(keyword, default)


def _qparams_of_tensor(tensor) -> QParams:
    """QParams of a quantized torch tensor (per-tensor or per-channel affine)."""
    torch = _import_torch()
    dtype = dtype_named(str(tensor.dtype).replace("torch.", ""))
    scheme = tensor.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return QParams.per_tensor(tensor.q_scale(), tensor.q_zero_point(), dtype)
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        return QParams.per_channel(
            tensor.q_per_channel_scales().double().numpy(),
            tensor.q_per_channel_zero_points().numpy(), tensor.q_per_channel_axis(), dtype,
        )
    raise UnsupportedError(f"quantization scheme {scheme} is not supported")


def weighted_layer_fields(weight, bias, output: QParams) -> tuple[dict, dict]:
    """Node attrs and arrays of a layer with weights: output and weight qparams, the int8
    weight as PyTorch's kernel unpacks it, and the float32 bias (if any)."""
    torch = _import_torch()
    attrs, arrays = qparams_to_fields(output, "output")
    weight_attrs, weight_arrays = qparams_to_fields(_qparams_of_tensor(weight), "weight")
    attrs.update(weight_attrs)
    arrays.update(weight_arrays)
    arrays["weight"] = weight.int_repr().numpy().astype(np.int8)
    if bias is not None:
        arrays["bias"] = bias.detach().to(torch.float32).numpy().copy()
    return attrs, arrays


def module_output_qparams(module, dtype: str = "quint8") -> QParams:
    return QParams.per_tensor(float(module.scale), int(module.zero_point), dtype_named(dtype))


@dataclass(frozen=True)
class ConstantRef(Ref):
    """A reference to a ``constant`` node (a Parameter or buffer read in ``forward``), with the
    node itself, so that a handler needing the values at import time (a weight given to
    ``F.layer_norm``) can read them; a handler that does not takes it as any other input."""

    node: Node | None = field(default=None, compare=False, repr=False)

    def float32_value(self, what: str) -> np.ndarray:
        """The constant's float32 values; ``UnsupportedError`` for a quantized or integer one."""
        value = self.node.arrays["value"]
        if "output_dtype" in self.node.attrs or value.dtype != np.float32:
            raise UnsupportedError(f"{what} must be a float32 tensor, got the "
                                   f"{'quantized' if 'output_dtype' in self.node.attrs else value.dtype} "
                                   f"tensor {self.name!r}")
        return value


def constant_node(name: str, tensor) -> Node:
    """A ``constant`` node holding ``tensor`` (a Parameter or buffer the model reads in
    forward): a quantized tensor's integers and qparams, float32 values, or int64 indices."""
    torch = _import_torch()
    tensor = tensor.detach()
    if tensor.is_quantized:
        attrs, arrays = qparams_to_fields(_qparams_of_tensor(tensor), "output")
        arrays["value"] = tensor.int_repr().contiguous().numpy().copy()
        return Node(name, "constant", (), attrs, arrays)
    if tensor.dtype == torch.float32:
        return Node(name, "constant", (), {}, {"value": tensor.contiguous().numpy().copy()})
    if tensor.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return Node(name, "constant", (), {},
                    {"value": tensor.contiguous().numpy().astype(np.int64)})
    if tensor.dtype == torch.bool:
        return Node(name, "constant", (), {}, {"value": tensor.contiguous().numpy().copy()})
    raise UnsupportedError(f"a {tensor.dtype} tensor used in forward is not supported; "
                           "float32, integer, bool and quantized tensors are")
