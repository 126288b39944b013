"""Conformance families: add / mul (+relu), add_scalar / mul_scalar (+relu), cat (+relu).

Params follow ``tests/data/recordings/*/README.md``: binary ops take npz ``a``, ``b`` with
``a_scale``, ``a_zero_point``, ``b_*``, ``a_channels_last``, ``b_channels_last``, ``shape``,
``qparams_mode`` and the requested ``out_scale_req``/``out_zero_point_req``; scalar ops ``x`` and
``scalar``; cat ``x0..x{k-1}`` with ``inputs`` = [{scale, zero_point, shape}], ``dim``,
``channels_last``.
"""

from __future__ import annotations

import numpy as np

from ..qparams import QParams, QuantizedArray
from ._draws import (DTYPES, draw_dtype, draw_elementwise_shape, draw_input_params, draw_ints,
                     draw_scale, draw_zero_point, f32_scale, out_qparams_of, pytorch_qparams,
                     pytorch_shape, pytorch_tensor, qexact_input, qexact_outputs, threads,
                     torch_input, torch_outputs, torch_tensor, with_layout)
from .family import Case, family

# --- add, add_relu, mul, mul_relu ----------------------------------------------------------------


def _qnnpack_add_admissible(params) -> bool:
    """QNNPACK's add takes input-to-output scale ratios in [2**-14, 2**8) (else PyTorch raises
    'failed to create QNNPACK Add operator'; pytorch_qnnp_create_add_nc_q8)."""
    out = np.float32(params["out_scale_req"])
    return all(2.0 ** -14 <= float(np.float32(params[f"{k}_scale"]) / out) < 2.0 ** 8 for k in "ab")


def _binary_draw(op: str):
    def draw(rng, engine):
        dtype = draw_dtype(rng, engine, 0.3)
        qdtype = DTYPES[dtype]
        shape = draw_elementwise_shape(rng)
        mode = str(rng.choice(["random", "random", "same_in", "all_same"]))
        a = (draw_scale(rng, -3, 0), draw_zero_point(rng, qdtype))
        b = a if mode != "random" else (draw_scale(rng, -3, 0), draw_zero_point(rng, qdtype))
        out = a if mode == "all_same" else (draw_scale(rng, -3, 0.3), draw_zero_point(rng, qdtype))
        if op == "add" and engine == "qnnpack" and mode == "random":  # ratios QNNPACK accepts
            b = (f32_scale(a[0] * rng.uniform(0.5, 2)), b[1])
            out = (f32_scale(a[0] * rng.uniform(0.5, 4)), out[1])
        image = len(shape) == 4
        a_last = bool(image and rng.random() < 0.3)
        b_last = a_last if rng.random() < 0.8 else bool(image and rng.random() < 0.5)
        params = {"op": op, "shape": shape, "a_channels_last": a_last, "b_channels_last": b_last,
                  "a_scale": a[0], "a_zero_point": a[1], "b_scale": b[0], "b_zero_point": b[1],
                  "x_dtype": dtype, "out_scale_req": out[0], "out_zero_point_req": out[1],
                  "qparams_mode": mode}
        if op.startswith("add") and engine == "qnnpack" and not _qnnpack_add_admissible(params):
            return None
        arrays = {"a": draw_ints(rng, qdtype, shape, 0.1), "b": draw_ints(rng, qdtype, shape, 0.1)}
        return Case(params, arrays)
    return draw


def _binary_pytorch_draw(op: str):
    """As test_qadd_relu_different_qparams / test_qmul_relu_*: hypothesis tensors (values up to
    1e6, scales from their range) of array_shapes(1, 5, 1, 5), output qparams from qparams()."""
    def draw(rng, engine):
        dtypes = ("quint8",) if engine == "qnnpack" else ("quint8", "qint8")
        shape = pytorch_shape(rng, 1, 5, 1, 5)
        a, a_scale, a_zp, dtype = pytorch_tensor(rng, shape, dtypes)
        b, b_scale, b_zp, _ = pytorch_tensor(rng, shape, (dtype,))
        if rng.random() < 0.3:  # the same qparams for both inputs (test_qadd_relu_same_qparams)
            b_scale, b_zp = a_scale, a_zp
        out_scale, out_zp, _ = pytorch_qparams(rng, (dtype,), scale_min=1e-3)
        params = {"op": op, "shape": shape, "a_channels_last": False, "b_channels_last": False,
                  "a_scale": a_scale, "a_zero_point": a_zp, "b_scale": b_scale, "b_zero_point": b_zp,
                  "x_dtype": dtype, "out_scale_req": out_scale, "out_zero_point_req": out_zp,
                  "qparams_mode": "pytorch"}
        if op.startswith("add") and engine == "qnnpack" and not _qnnpack_add_admissible(params):
            return None
        return Case(params, {"a": a, "b": b})
    return draw


def _binary_run_torch(case):
    import torch

    p = case.params
    a = torch_input(case, "a", "a", "a_channels_last")
    b = torch_input(case, "b", "b", "b_channels_last")
    kernel = getattr(torch.ops.quantized, p["op"])
    return torch_outputs(kernel(a, b, p["out_scale_req"], p["out_zero_point_req"]))


def _binary_run_qexact(case, engine):
    from ..ops.elementwise import binary, prepare_binary

    p = case.params
    op, relu = p["op"].removesuffix("_relu"), p["op"].endswith("_relu")
    a = qexact_input(case, "a", "a", "a_channels_last")
    b = qexact_input(case, "b", "b", "b_channels_last")
    params = prepare_binary(op, a.qparams, b.qparams, out_qparams_of(p), relu=relu, engine=engine,
                            num_threads=threads(p))
    return qexact_outputs(binary(a, b, params))


for _op in ("add", "add_relu", "mul", "mul_relu"):
    family(_op, draw=_binary_draw(_op), run_torch=_binary_run_torch, run_qexact=_binary_run_qexact,
           profiles={"pytorch": _binary_pytorch_draw(_op)})


# --- add_scalar, mul_scalar (+relu) -------------------------------------------------------------


def _scalar_draw(op: str):
    def draw(rng, engine):
        params = {"op": op, **draw_input_params(rng, engine, draw_elementwise_shape(rng),
                                                scale_range=(-3, 0))}
        scale = params["x_scale"]
        kind = str(rng.choice(["random", "zero", "multiple", "negative", "small", "half"]))
        if kind == "zero":
            scalar = 0.0
        elif kind == "multiple":  # an integer number of steps (add: no requantization)
            scalar = float(rng.integers(-40, 41)) * scale
        elif kind == "half":  # exact halves of the scale: round(c / s) ties
            scalar = (float(rng.integers(-300, 300)) + 0.5) * scale
        elif kind == "negative":
            scalar = -float(10 ** rng.uniform(-2, 0.5))
        elif kind == "small":
            scalar = float(rng.uniform(-1, 1)) * 1e-3
        else:
            scalar = float(rng.uniform(-1, 1) * 10.0 ** rng.uniform(-2, 2.5))
        if op.startswith("mul") and kind == "multiple":
            scalar = float(rng.choice([1.0, -1.0, 2.0, -1.6398849338293076]))
        params.update(scalar=scalar, scalar_kind=kind)
        return Case(params, {"x": draw_ints(rng, DTYPES[params["x_dtype"]], params["shape"], 0.1)})
    return draw


def _scalar_run_torch(case):
    import torch

    p = case.params
    return torch_outputs(getattr(torch.ops.quantized, p["op"])(torch_input(case), float(p["scalar"])))


def _scalar_run_qexact(case, engine):
    from ..ops.scalar import prepare_scalar, scalar_op

    p = case.params
    x = qexact_input(case)
    op, relu = p["op"].removesuffix("_relu"), p["op"].endswith("_relu")
    return qexact_outputs(scalar_op(x, prepare_scalar(op, x.qparams, float(p["scalar"]), relu=relu,
                                                      engine=engine)))


for _op in ("add_scalar", "mul_scalar", "add_scalar_relu", "mul_scalar_relu"):
    family(_op, draw=_scalar_draw(_op), run_torch=_scalar_run_torch, run_qexact=_scalar_run_qexact)


# --- cat (+relu) ---------------------------------------------------------------------------------


def _cat_draw(op: str):
    def draw(rng, engine):
        dtype = draw_dtype(rng, engine, 0.3)
        qdtype = DTYPES[dtype]
        channels_last = bool(rng.random() < 0.3)
        if channels_last:  # the NHWC kernel: 4-D, dim 1 (or -3: not wrapped, the generic kernel)
            base = [int(rng.integers(1, 3)), int(rng.choice([1, 3, 8, 16, 17])),
                    *(int(v) for v in rng.integers(1, 8, 2))]
            dim = int(rng.choice([1, 1, 1, -3, 2, 0]))
        else:
            base = [int(v) for v in rng.integers(1, 12, int(rng.integers(1, 5)))]
            dim = int(rng.integers(-len(base), len(base)))
        count = int(rng.integers(1, 5))
        shapes = []
        for _ in range(count):
            shape = list(base)
            shape[dim] = int(rng.integers(1, 12 if not channels_last else 20))
            shapes.append(shape)
        mode = str(rng.choice(["random", "random", "same", "same_out"]))
        first = (draw_scale(rng, -2.5, 0), draw_zero_point(rng, qdtype))
        inputs = [{"scale": qp[0], "zero_point": qp[1], "shape": s}
                  for qp, s in zip([first] + [first if mode != "random" else
                                              (draw_scale(rng, -2.5, 0), draw_zero_point(rng, qdtype))
                                              for _ in shapes[1:]], shapes)]
        out = first if mode == "same_out" else (draw_scale(rng, -2.5, 0), draw_zero_point(rng, qdtype))
        params = {"op": op, "dim": dim, "num_inputs": count, "inputs": inputs,
                  "channels_last": channels_last, "x_dtype": dtype, "out_scale_req": out[0],
                  "out_zero_point_req": out[1], "qparams_mode": mode}
        return Case(params, {f"x{i}": draw_ints(rng, qdtype, s, 0.1) for i, s in enumerate(shapes)})
    return draw


def _cat_run_torch(case):
    import torch

    p = case.params
    tensors = [torch_tensor(case.arrays[f"x{i}"], q["scale"], q["zero_point"], p["channels_last"])
               for i, q in enumerate(p["inputs"])]
    kernel = getattr(torch.ops.quantized, p["op"])
    return torch_outputs(kernel(tensors, p["dim"], p["out_scale_req"], p["out_zero_point_req"]))


def _cat_run_qexact(case, engine):
    from ..ops.concat import cat, prepare_cat

    p = case.params
    dtype = DTYPES[p["x_dtype"]]
    qparams = [QParams.per_tensor(float(q["scale"]), int(q["zero_point"]), dtype) for q in p["inputs"]]
    inputs = [QuantizedArray(with_layout(case.arrays[f"x{i}"], p["channels_last"]), qp)
              for i, qp in enumerate(qparams)]
    params = prepare_cat(qparams, out_qparams_of(p), p["dim"], relu=p["op"] == "cat_relu",
                         engine=engine)
    return qexact_outputs(cat(inputs, params))


for _op in ("cat", "cat_relu"):
    family(_op, draw=_cat_draw(_op), run_torch=_cat_run_torch, run_qexact=_cat_run_qexact)
