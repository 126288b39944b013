"""Conformance families: ``conv1d``/``conv2d``/``conv3d``/``conv2d_relu`` and
``conv_transpose1d``/``2d``/``3d`` (``quantized::conv*`` after ``conv*_prepack``).

Params follow ``tests/data/recordings/*/README.md``: ``kind`` (regular, depthwise: C == G,
depthwise_x2: OC == 2G, groupwise), ``groups``, ``in_channels``, ``out_channels``, and per spatial
dim ``kernel``, ``stride``, ``padding``, ``dilation`` (``output_padding`` for transposed),
``spatial``, ``batch``; the input's ``x_*`` (``x_channels_last``), the weight's ``w_*`` (npz
``w`` in torch's layout), ``has_bias`` (npz ``bias``), ``out_scale_req``/``out_zero_point_req``.

The draws aim at the kernels' choices: FBGEMM's depthwise (G % 8 == 0, K 3/5/7, "same" padding,
strides 1/2, multiplier 1 or 2) and groupwise (8 or 16 channels per group) paths, oneDNN's
brgemm shapes, and the saturating extremes (x = 255, w = -128) of int16 pair saturation.
"""

from __future__ import annotations

import numpy as np

from ._draws import (draw_gemm_operands, draw_scale, draw_weight_qparams, f32_scale,
                     out_qparams_of, qexact_input, qexact_outputs, torch_floats,
                     torch_packed_outputs, torch_weight, weight_qparams_of)
from .family import Case, family

KINDS = ("regular", "regular", "depthwise", "depthwise_x2", "groupwise")
MAX_SPATIAL = {1: (30,), 2: (14, 14), 3: (6, 8, 8)}


def _groups(rng, kind: str, transposed: bool) -> tuple[int, int, int]:
    """(groups, in_channels, out_channels) of a kind."""
    if kind in ("depthwise", "depthwise_x2"):
        groups = int(rng.choice([1, 2, 3, 8, 16, 24, 32]))
        return groups, groups, groups * (2 if kind == "depthwise_x2" else 1)
    if kind == "groupwise":
        groups = int(rng.choice([2, 3, 4, 8]))
        per_group = int(rng.choice([2, 4, 8, 16]))
        out_per_group = per_group if rng.random() < 0.7 else int(rng.integers(1, 9))
        return groups, groups * per_group, groups * out_per_group
    groups = int(rng.choice([1, 1, 2, 3]))
    return groups, groups * int(rng.integers(1, 9 if not transposed else 6)), \
        groups * int(rng.integers(1, 5 if not transposed else 6))


def _geometry(rng, dims: int, kind: str, transposed: bool) -> dict:
    fast = kind.startswith("depthwise") and rng.random() < 0.6 and not transposed
    if fast:  # FBGEMM's depthwise fast path: a cubic 3/5/7 kernel, "same" padding, stride 1/2
        size = int(rng.choice([3, 5, 7]))
        kernel = [size] * dims
        stride = [int(rng.integers(1, 3))] * dims
        dilation = [1] * dims
        padding = [(size - 1) // 2] * dims
    else:
        kernel = [int(rng.choice([1, 2, 3] if dims == 3 else [1, 2, 3, 5])) for _ in range(dims)]
        stride = [int(rng.integers(1, 4 if transposed else 3)) for _ in range(dims)]
        dilation = [int(rng.integers(1, 3)) for _ in range(dims)]
        padding = [int(rng.integers(0, 3)) for _ in range(dims)]
        if rng.random() < 0.5:  # one value for every dim, as nn.Conv*d(k, s, p, d) gives
            kernel, stride, dilation, padding = ([v[0]] * dims for v in
                                                 (kernel, stride, dilation, padding))
    geometry = {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    if transposed:
        output_padding = [0] * dims
        if rng.random() < 0.4:
            output_padding = [int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation)]
        geometry["output_padding"] = output_padding
        geometry["padding"] = [min(p, (d * (k - 1) + o) // 2) for p, d, k, o in
                               zip(padding, dilation, kernel, output_padding)]
        spatial = [int(rng.integers(1, m // 2 + 2)) for m in MAX_SPATIAL[dims]]
    else:
        reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        low = [max(1, r - 2 * p) for r, p in zip(reach, padding)]
        spatial = [int(rng.integers(lo, max(lo, m) + 1)) for lo, m in zip(low, MAX_SPATIAL[dims])]
    return geometry | {"spatial": spatial}


def _input_zero_point(rng, engine: str, transposed: bool) -> int:
    """Any quint8 zero point; for oneDNN's deconvolution (x86 takes it too) 0 one time in three:
    with a non-zero one, outputs no tap reaches are undefined and qexact refuses the case."""
    if transposed and engine in ("onednn", "x86") and rng.random() < 1 / 3:
        return 0
    return int(rng.integers(0, 256))


def _draw(op: str, dims: int, transposed: bool):
    def draw(rng, engine):
        kind = str(rng.choice(KINDS))
        groups, channels_in, channels_out = _groups(rng, kind, transposed)
        geometry = _geometry(rng, dims, kind, transposed)
        batch = int(rng.integers(1, 3))
        x_scale = draw_scale(rng)
        # torch layout: conv (OC, IC/G, *k); conv_transpose (IC, OC/G, *k), per channel on axis 0
        weight_shape = ((channels_in, channels_out // groups) if transposed else
                        (channels_out, channels_in // groups)) + tuple(geometry["kernel"])
        w_params, w_arrays = draw_weight_qparams(rng, engine, weight_shape[0],
                                                 per_channel_p=0.3 if transposed else 0.5,
                                                 symmetric_p=0.7 if transposed else 0.5)
        operands, arrays = draw_gemm_operands(
            rng, weight_shape, [batch, channels_in] + geometry["spatial"], channels_out, x_scale)
        params = {"op": op, "kind": kind, "groups": groups, "in_channels": channels_in,
                  "out_channels": channels_out, **geometry, "batch": batch, "x_scale": x_scale,
                  "x_zero_point": _input_zero_point(rng, engine, transposed), "x_dtype": "quint8",
                  **operands, "x_channels_last": bool(dims > 1 and rng.random() < 0.3),
                  "out_scale_req": draw_scale(rng, -2.0, 1.0),
                  "out_zero_point_req": int(rng.integers(0, 256)), **w_params}
        return Case(params, arrays | w_arrays)
    return draw


def _pytorch_draw(op: str, dims: int):
    """As ``_test_qconv_impl`` / ``_make_qconv_tensors`` (test/quantization/core/
    test_quantized_op.py): groups 1..3, 2/4/5/8/16/32 channels per group in and out, sizes 4..16
    (3-D 4..8), kernel 1..7 (3-D 1..3), stride 1..2, padding 0..2, dilation 1..2; x integers in
    [0, 4) with s_x U(1.2, 1.6), z_x 0..4; weight integers in [-5, 5) around z_w in [-5, 5]
    (0 on onednn), scales U(0.2, 1.6) (one per channel when channelwise); output U(4.2, 5.6),
    z 0..4; bias U(-10, 10) (float)."""
    def draw(rng, engine):
        groups = int(rng.integers(1, 4))
        per_in, per_out = (int(rng.choice([2, 4, 5, 8, 16, 32])) for _ in range(2))
        channels_in, channels_out = groups * per_in, groups * per_out
        kernel = [int(rng.integers(1, 8 if dims < 3 else 4)) for _ in range(dims)]
        dilation = [int(rng.integers(1, 3)) for _ in range(dims)]
        padding = [int(rng.integers(0, 3)) for _ in range(dims)]
        stride = [int(rng.integers(1, 3)) for _ in range(dims)]
        spatial = [int(rng.integers(4, 17 if dims < 3 else 9)) for _ in range(dims)]
        if any(s + 2 * p < (k - 1) * d + 1 for s, p, k, d in zip(spatial, padding, kernel,
                                                                  dilation)):
            return None
        batch = int(rng.integers(1, 4))
        x_zero_point = int(rng.integers(0, 5))
        w_zero_point = 0 if engine == "onednn" else int(rng.integers(-5, 6))
        x = (rng.integers(0, 4, [batch, channels_in] + spatial)).astype(np.uint8)
        w = np.clip(rng.integers(-5, 5, (channels_out, per_in) + tuple(kernel)) + w_zero_point,
                    -128, 127).astype(np.int8)
        params = {"op": op, "kind": "regular" if groups == 1 else "groupwise", "groups": groups,
                  "in_channels": channels_in, "out_channels": channels_out, "kernel": kernel,
                  "stride": stride, "padding": padding, "dilation": dilation, "spatial": spatial,
                  "batch": batch, "x_scale": f32_scale(rng.uniform(1.2, 1.6)),
                  "x_zero_point": x_zero_point, "x_dtype": "quint8", "x_range": "0..3",
                  "has_bias": bool(rng.random() < 0.5), "x_channels_last": False,
                  "out_scale_req": f32_scale(rng.uniform(4.2, 5.6)),
                  "out_zero_point_req": int(rng.integers(0, 5)), "w_symmetric": w_zero_point == 0}
        arrays = {"x": x, "w": w}
        if rng.random() < 0.5:
            params |= {"w_qscheme": "per_channel", "w_axis": 0}
            arrays |= {"w_scales": np.array([f32_scale(rng.uniform(0.2, 1.6))
                                             for _ in range(channels_out)]),
                       "w_zero_points": np.full(channels_out, w_zero_point, np.int64)}
        else:
            params |= {"w_qscheme": "per_tensor", "w_scale": f32_scale(rng.uniform(0.2, 1.6)),
                       "w_zero_point": w_zero_point}
        if params["has_bias"]:
            arrays["bias"] = rng.uniform(-10, 10, channels_out).astype(np.float32)
        return Case(params, arrays)
    return draw


def _run_torch(case):
    import torch

    p = case.params
    dims = len(p["kernel"])
    geometry = [p["stride"], p["padding"]]
    if "output_padding" in p:
        geometry.append(p["output_padding"])
    kind = "conv_transpose" if "output_padding" in p else "conv"
    prepack = getattr(torch.ops.quantized, f"{kind}{dims}d_prepack")
    packed = prepack(torch_weight(case), torch_floats(case.arrays.get("bias")), *geometry,
                     p["dilation"], p["groups"])
    return torch_packed_outputs(case, packed)


def _run_qexact(case, engine):
    from ..ops.conv import conv, prepare_conv
    from ..ops.conv_transpose import conv_transpose, prepare_conv_transpose

    p = case.params
    x = qexact_input(case)
    common = dict(stride=p["stride"], padding=p["padding"], dilation=p["dilation"],
                  groups=p["groups"], engine=engine)
    operands = (case.arrays["w"], weight_qparams_of(case), case.arrays.get("bias"), x.qparams,
                out_qparams_of(p))
    if "output_padding" in p:
        params = prepare_conv_transpose(*operands, output_padding=p["output_padding"], **common)
        return qexact_outputs(conv_transpose(x, params))
    params = prepare_conv(*operands, relu=p["op"].endswith("_relu"), **common)
    return qexact_outputs(conv(x, params))


for _dims in (1, 2, 3):
    family(f"conv{_dims}d", draw=_draw(f"conv{_dims}d", _dims, False), run_torch=_run_torch,
           run_qexact=_run_qexact, profiles={"pytorch": _pytorch_draw(f"conv{_dims}d", _dims)})
family("conv2d_relu", draw=_draw("conv2d_relu", 2, False), run_torch=_run_torch,
       run_qexact=_run_qexact, profiles={"pytorch": _pytorch_draw("conv2d_relu", 2)})
for _dims in (1, 2, 3):
    family(f"conv_transpose{_dims}d", draw=_draw(f"conv_transpose{_dims}d", _dims, True),
           run_torch=_run_torch, run_qexact=_run_qexact,
           not_on={} if _dims < 3 else {
               "qnnpack": "QNNPACK's deconvolution is 2-D; PyTorch computes only the first "
                          "output depth slice (qexact refuses it)"})
