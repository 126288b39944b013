"""Conformance families: rescaling activations (act_*), clamps, prelu, and ATen's float kernels
(float_aten).

Params follow ``tests/data/recordings/*/README.md``: npz ``x`` with ``x_scale``, ``x_zero_point``,
``x_dtype``, ``x_channels_last``, ``shape``; ops that take output qparams read ``out_scale_req``/
``out_zero_point_req``; sigmoid, tanh and hardsigmoid have the fixed output qparams of
qsigmoid.cpp / qtanh.cpp / qhardsigmoid.cpp.
"""

from __future__ import annotations

import numpy as np

from ..qparams import QParams
from ._draws import (DTYPES, as_engine, draw_elementwise_shape, draw_input_params, draw_ints, draw_scale,
                     draw_zero_point, out_qparams_of, pytorch_qparams, pytorch_shape,
                     pytorch_tensor, qexact_input, qexact_outputs, threads, torch_input,
                     torch_outputs, torch_tensor)
from .family import Case, NotModelled, family

# --- act_*: one input, rescaled through a float function ----------------------------------------

_OUTPUT_REQUESTED = {"hardswish", "elu", "elu_scaled"}


def _activation_draw(function: str):
    def draw(rng, engine):
        params = {"op": function.removesuffix("_scaled"),
                  **draw_input_params(rng, engine, draw_elementwise_shape(rng), scale_range=(-2.5, -0.3))}
        dtype = DTYPES[params["x_dtype"]]
        requested = function in _OUTPUT_REQUESTED or (function == "leaky_relu" and rng.random() < 0.5)
        if requested:
            params.update(out_scale_req=draw_scale(rng, -2.5, -0.3),
                          out_zero_point_req=draw_zero_point(rng, dtype))
        if function in ("elu", "elu_scaled"):
            params["alpha"] = 1.0 if rng.random() < 0.4 else float(rng.uniform(0.25, 2.5))
        if function == "elu_scaled":  # the generalized form: scale * elu(input_scale * x)
            params.update(scale=float(rng.uniform(0.25, 2.0)), input_scale=float(rng.uniform(0.25, 2.0)))
        if function == "leaky_relu":
            params["negative_slope"] = (float(rng.choice([0.01, 0.1, 0.2])) if rng.random() < 0.8
                                        else float(rng.uniform(0.01, 1.0)))
        if function in ("hardtanh", "clamp"):
            params["min_val"], params["max_val"] = (float(v) for v in sorted(rng.uniform(-3, 7, 2)))
        return Case(params, {"x": draw_ints(rng, dtype, params["shape"], 0.05)})
    return draw


def _activation_pytorch_draw(function: str):
    """As test_qhardswish / test_qelu / test_leaky_relu_observed_output / test_sigmoid: hypothesis
    tensors of array_shapes(1, 5, 1, 5) (values up to 1e3 for elu, 1e6 otherwise; qparams from
    their range), output qparams from qparams() where the op takes them, both memory formats."""
    def draw(rng, engine):
        dtypes = ("quint8",) if engine == "qnnpack" and function == "hardswish" else ("quint8", "qint8")
        shape = pytorch_shape(rng, 1, 5, 1, 5)
        bound = 1e3 if function.startswith("elu") else 1e6
        x, scale, zero_point, dtype = pytorch_tensor(rng, shape, dtypes, -bound, bound)
        params = {"op": function.removesuffix("_scaled"), "shape": shape,
                  "x_channels_last": bool(len(shape) == 4 and rng.random() < 0.5),
                  "x_scale": scale, "x_zero_point": zero_point, "x_dtype": dtype}
        if function in _OUTPUT_REQUESTED or (function == "leaky_relu" and rng.random() < 0.5):
            out_scale, out_zp, _ = pytorch_qparams(rng, (dtype,), scale_min=1e-3)
            params.update(out_scale_req=out_scale, out_zero_point_req=out_zp)
        if function.startswith("elu"):
            params["alpha"] = float(rng.uniform(0.01, 10.0))
        if function == "elu_scaled":
            params.update(scale=float(rng.uniform(0.01, 10.0)), input_scale=float(rng.uniform(0.01, 10.0)))
        if function == "leaky_relu":
            params["negative_slope"] = float(rng.uniform(0.01, 0.9))
        if function in ("hardtanh", "clamp"):
            params["min_val"], params["max_val"] = (float(v) for v in sorted(rng.uniform(-1e3, 1e3, 2)))
        return Case(params, {"x": x})
    return draw


def _activation_run_torch(case):
    import torch
    import torch.nn.functional as F

    p = case.params
    x = torch_input(case)
    op = p["op"]
    if op in ("sigmoid", "tanh"):
        y = getattr(torch, op)(x)
    elif op == "hardsigmoid":
        y = F.hardsigmoid(x)
    elif op == "hardswish":
        y = torch.ops.quantized.hardswish(x, p["out_scale_req"], p["out_zero_point_req"])
    elif op == "elu" and "scale" in p:
        y = torch.ops.quantized.elu(x, p["out_scale_req"], p["out_zero_point_req"], p["alpha"],
                                    p["scale"], p["input_scale"])
    elif op == "elu":
        y = torch.ops.quantized.elu(x, p["out_scale_req"], p["out_zero_point_req"], p["alpha"])
    elif op == "leaky_relu" and "out_scale_req" in p:
        y = torch.ops.quantized.leaky_relu(x, p["negative_slope"], False, p["out_scale_req"],
                                           p["out_zero_point_req"])
    elif op == "leaky_relu":
        y = F.leaky_relu(x, p["negative_slope"])
    elif op == "relu6":
        y = torch.ops.quantized.relu6(x, False)
    elif op == "hardtanh":
        y = torch.ao.nn.quantized.functional.hardtanh(x, p["min_val"], p["max_val"])
    else:  # clamp
        y = torch.clamp(x, p["min_val"], p["max_val"])
    return torch_outputs(y)


def _activation_run_qexact(case, engine):
    from ..ops.activations import activation, clamp, prepare_activation

    p = case.params
    x = qexact_input(case)
    op = p["op"]
    if op in ("relu6", "hardtanh", "clamp"):
        low, high = (0.0, 6.0) if op == "relu6" else (p["min_val"], p["max_val"])
        return qexact_outputs(clamp(x, low, high, as_engine(engine)))
    out = out_qparams_of(p) if "out_scale_req" in p else None
    if op == "leaky_relu" and out is None:  # F.leaky_relu keeps the input's qparams
        out = x.qparams
    constants = {"slope": p["negative_slope"]} if op == "leaky_relu" else {}
    if op == "elu":
        constants = {"alpha": p["alpha"], "scale": p.get("scale", 1.0),
                     "input_scale": p.get("input_scale", 1.0)}
    params = prepare_activation(op, x.qparams, out, engine, num_threads=threads(p), **constants)
    return qexact_outputs(activation(x, params))


for _function in ("sigmoid", "tanh", "hardswish", "hardsigmoid", "elu", "leaky_relu", "relu6",
                  "hardtanh", "elu_scaled", "clamp"):
    family(f"act_{_function}", draw=_activation_draw(_function), run_torch=_activation_run_torch,
           run_qexact=_activation_run_qexact,
           profiles={"pytorch": _activation_pytorch_draw(_function)})


# --- prelu ---------------------------------------------------------------------------------------


def _prelu_draw(rng, engine):
    """quantized::prelu: ranks 1-5, one slope or one per channel, channels_last 4-D/5-D inputs;
    power-of-two scales with an odd output zero point for exact ties."""
    dtype_name = "quint8" if rng.random() < 0.7 else "qint8"
    dtype = DTYPES[dtype_name]
    rank = int(rng.integers(1, 6))
    shape = [int(s) for s in rng.integers(1, 9, rank)]
    if rank == 1 and rng.random() < 0.5:
        shape = [int(rng.integers(1, 300))]
    elif rank >= 2 and rng.random() < 0.4:
        shape[1] = int(rng.integers(1, 40))
    channels = shape[1] if rank >= 2 else shape[0]
    if rng.random() < 0.4:  # exact ties
        x_scale, w_scale = (float(2.0 ** int(e)) for e in rng.integers(-7, 0, 2))
        out_scale = x_scale * 2.0 ** int(rng.integers(-2, 3))
        out_zero_point = int(rng.integers(dtype.qmin // 2, dtype.qmax // 2)) * 2 + 1
    else:
        x_scale, w_scale, out_scale = (draw_scale(rng, -3, 0.5) for _ in range(3))
        out_zero_point = draw_zero_point(rng, dtype)
    params = {"op": "prelu", "shape": shape,
              "x_channels_last": bool(rank in (4, 5) and rng.random() < 0.4),
              "x_scale": x_scale, "x_zero_point": draw_zero_point(rng, dtype), "x_dtype": dtype_name,
              "w_scale": w_scale, "w_zero_point": draw_zero_point(rng, dtype),
              "out_scale_req": out_scale, "out_zero_point_req": out_zero_point}
    w = draw_ints(rng, dtype, (channels if rng.random() < 0.6 else 1,))
    return Case(params, {"x": draw_ints(rng, dtype, shape), "w": w})


def _prelu_run_torch(case):
    import torch

    p = case.params
    w = torch_tensor(case.arrays["w"], p["w_scale"], p["w_zero_point"])
    return torch_outputs(torch.ops.quantized.prelu(torch_input(case), w, p["out_scale_req"],
                                                   p["out_zero_point_req"]))


def _prelu_run_qexact(case, engine):
    from ..ops.prelu import prelu, prepare_prelu

    p = case.params
    x = qexact_input(case)
    w_qparams = QParams.per_tensor(float(p["w_scale"]), int(p["w_zero_point"]), x.qparams.dtype)
    params = prepare_prelu(case.arrays["w"], w_qparams, x.qparams, out_qparams_of(p),
                           engine=engine, num_threads=threads(p))
    return qexact_outputs(prelu(x, params))


family("prelu", draw=_prelu_draw, run_torch=_prelu_run_torch, run_qexact=_prelu_run_qexact)


# --- float_aten: ATen's float32 sigmoid, silu, exp ---------------------------------------------

_FLOAT_FUNCTIONS = ("sigmoid", "silu", "exp")


def _float_draw(rng, engine):
    """float32 inputs mixing random bit patterns (NaN, inf, denormals), normals, [-110, 95]
    (exp's range) and values within 64 ulps of (k + 1/2) ln 2 (the exp reduction's ties); lengths
    around the 16/32-float SIMD blocks and the 32768-element grain of the parallel chunks."""
    length = int(rng.choice([int(rng.integers(1, 300)), int(rng.integers(300, 5000)), 32769,
                             66001, 120000]))
    kinds = rng.integers(0, 4, length)
    bits = rng.integers(0, 2 ** 32, length, dtype=np.uint64).astype(np.uint32).view(np.float32)
    normal = rng.standard_normal(length).astype(np.float32) * np.float32(4)
    wide = rng.uniform(-110, 95, length).astype(np.float32)
    k = rng.integers(-150, 129, length)
    near = ((k + 0.5) * np.log(2.0)).astype(np.float32).view(np.int32) + rng.integers(-64, 65, length)
    near = near.astype(np.int32).view(np.float32)
    x = np.select([kinds == 0, kinds == 1, kinds == 2], [bits, normal, wide], near).astype(np.float32)
    num_threads = 1 if length < 32768 or rng.random() < 0.5 else int(rng.choice([2, 3, 4]))
    params = {"op": ",".join(_FLOAT_FUNCTIONS), "length": length, "num_threads": num_threads}
    return Case(params, {"x": x})


def _float_run_torch(case):
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(case.arrays["x"]))
    return {"y_sigmoid": torch.sigmoid(x).numpy(), "y_silu": F.silu(x).numpy(),
            "y_exp": torch.exp(x).numpy()}


def _float_run_qexact(case, engine):
    from ..ops.float_activations import FLOAT_KERNELS, float_kernel, prepare_float_kernel

    engine = as_engine(engine)
    x = case.arrays["x"]
    outputs = {}
    for function in _FLOAT_FUNCTIONS:
        if function not in FLOAT_KERNELS:
            outputs[f"y_{function}"] = NotModelled(
                f"torch.{function} on float32 runs MKL VML (qexact.ops.float_activations "
                "FLOAT_KERNELS has no emulation)")
            continue
        params = prepare_float_kernel(function, engine, num_threads=threads(case.params))
        outputs[f"y_{function}"] = float_kernel(x, params)
    return outputs


family("float_aten", draw=_float_draw, run_torch=_float_run_torch, run_qexact=_float_run_qexact,
       engines=("aten",))
