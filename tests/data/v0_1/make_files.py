"""Make the frozen qexact 0.1 model files in this directory (tests/test_format_compat.py reads them).

THIS SCRIPT WAS RUN ONCE, WITH qexact 0.1.0 AT COMMIT c66f8ec
(c66f8ecaee8c20d22ae1d37d1d34c237c3721393; a git worktree of that commit, imported with
``PYTHONPATH=<worktree>/src``), torch 2.13.0+cpu, on an AVX512-VNNI CPU (ATen capability avx512,
2 threads). DO NOT RE-RUN IT WITH A LATER qexact: the point of these files is to freeze what
qexact 0.1 wrote and computed, so that later versions are checked against 0.1's files and outputs.
Re-running it with newer code would silently replace the reference with the newer code's own
output. The script refuses to run unless the imported qexact package lives in a clean git checkout
of commit c66f8ec (``--i-know-this-overwrites-the-reference`` skips that check). It is kept as
documentation of how the files were made.

What it does, per model (MODELS below) and engine:

1. builds a small float model (``torch.manual_seed``), runs a few train-mode batches so batch-norm
   statistics are realistic, then ``eval()``;
2. quantizes it in FX graph mode: ``prepare_fx(model, get_default_qconfig_mapping(engine), ...)``
   with ``torch.backends.quantized.engine = engine`` (each engine's own default qconfig, so
   onednn gets symmetric weights), calibrates the prepared model (it is called) on four random
   batches, and ``convert_fx``. Two exceptions: on onednn, ConvTranspose layers get per-tensor
   symmetric weights (torch's onednn mapping gives them a per-channel observer, which prepare_fx
   rejects; its fbgemm/x86 mappings do the same override), and ``group_norm_eager`` is quantized
   in eager mode (``prepare``/``convert`` with ``get_default_qconfig(engine)``), because FX
   leaves nn.GroupNorm in float32, which qexact 0.1 refuses;
3. imports it with ``qexact.from_torch(model, example_inputs=..., engine=engine,
   isa="avx512_vnni")`` and writes ``NAME.ENGINE.qexact`` with ``qexact.save`` (the file records
   engine, isa and ATen capability; ``qexact.load`` defaults to them);
4. reloads the file with ``qexact.load`` and runs the stored input(s) through the reloaded net;
   writes ``NAME.ENGINE.npz`` (``np.savez``, plain arrays only: loads with allow_pickle=False):

   - ``input_0``, ``input_1``, ...: the float32 inputs (batch 2; the second sample is scaled by 4
     so that quantization saturates somewhere);
   - ``output_0``, ...: qexact 0.1's float32 outputs (``net(*inputs)``; a dict output is taken
     in the dict's order, its keys are in manifest.json);
   - ``qoutput_0_values``, ``qoutput_0_scale`` (float64, 0-d), ``qoutput_0_zero_point`` (int64,
     0-d), ...: qexact 0.1's quantized outputs before the final dequantize
     (``net.run_quantized(*inputs)``);
   - ``torch_output_0``, ...: the converted PyTorch model's float32 outputs on the same inputs
     (the models end in a dequantize, so these compare with ``output_i``);

5. records everything in ``manifest.json``: model, engine, isa, aten_capability, the thread
   counts recorded in the nodes, torch and qexact versions and commit, the ops the model covers,
   the output shapes and whether qexact 0.1's outputs equal torch's bit for bit.

Engine/model combinations that qexact 0.1 refuses (``UnsupportedError``) would be listed in the
manifest under "skipped" with the reason; there were none in the run that made these files.
``conv3d_video`` is not made for qnnpack: PyTorch cannot unpack a qnnpack Conv3d's weights, so
qexact 0.1 cannot import it (and PyTorch's qnnpack has no quantized max_pool3d, so that model
pools with AvgPool3d). Float ops FX leaves between a dequantize and a quantize that qexact 0.1
does not model (GELU, softmax, float GroupNorm, bilinear ``nn.Upsample`` modules) are not used:
they raise ``UnsupportedError`` at import (GELU and bilinear nn.Upsample checked).

Usage (from the repository root, with the 0.1 worktree's src first on the path)::

    PYTHONPATH=/tmp/qexact-v01/src .venv/bin/python tests/data/v0_1/make_files.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import qexact

QEXACT_VERSION = "0.1.0"
QEXACT_COMMIT = "c66f8ec"
ISA = "avx512_vnni"
ALL_ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
HERE = os.path.dirname(os.path.abspath(__file__))


# --- Models ----------------------------------------------------------------------------------------


def conv_bn_relu(cin, cout, kernel=3, stride=1, groups=1, dims=2):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    return nn.Sequential(conv(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         norm(cout), nn.ReLU())


class MlpGated(nn.Module):
    """Linear+ReLU (fused LinearReLU), Linear, chunk, a * sigmoid(b) (quantized mul), * 0.5 and
    + 1 (mul_scalar, add_scalar), reshape(x.size(0), -1), Linear, torch.flatten."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(10, 16), nn.Linear(16, 16), nn.Linear(40, 6)

    def forward(self, x):
        a, b = self.fc2(F.relu(self.fc1(x))).chunk(2, dim=-1)
        y = a * torch.sigmoid(b) * 0.5 + 1
        return torch.flatten(self.fc3(y.reshape(y.size(0), -1)), 1)


class ConvResidual(nn.Module):
    """Conv2d+BN+ReLU (fused), a residual ``relu(conv(x) + x)`` (add_relu), a depthwise conv
    joined with ``+`` (add) and torch.add, a grouped conv (4 groups of 4: FBGEMM's groupwise
    kernel), a strided conv, max_pool2d, adaptive_avg_pool2d, flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.c1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16))
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.down = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(24, 7)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.c1(x) + x)
        x = torch.add(self.dw(x) + x, x)
        x = self.pool(F.relu(self.grouped(x)))
        x = self.down(x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Conv1dAudio(nn.Module):
    """Conv1d+BN1d+ReLU (fused), MaxPool1d, a dilated depthwise Conv1d, AvgPool1d,
    AdaptiveAvgPool1d, squeeze, Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(1, 12, 9, stride=2, padding=4), nn.BatchNorm1d(12),
                                nn.ReLU())
        self.pool = nn.MaxPool1d(3, stride=2, padding=1)
        self.c2 = nn.Sequential(nn.Conv1d(12, 12, 3, padding=2, dilation=2, groups=12),
                                nn.BatchNorm1d(12), nn.ReLU())
        self.c3 = nn.Conv1d(12, 16, 1)
        self.avg = nn.AvgPool1d(2)
        self.gap, self.fc = nn.AdaptiveAvgPool1d(1), nn.Linear(16, 5)

    def forward(self, x):
        x = self.c3(self.c2(self.pool(self.c1(x))))
        return self.fc(self.gap(self.avg(x)).squeeze(-1))


class Conv3dVideo(nn.Module):
    """Conv3d+BN3d+ReLU (fused), a grouped strided Conv3d, AvgPool3d, AdaptiveAvgPool3d, flatten,
    Linear (no MaxPool3d: PyTorch's qnnpack engine has no quantized max_pool3d)."""

    def __init__(self):
        super().__init__()
        self.c1 = conv_bn_relu(2, 8, dims=3)
        self.c2 = nn.Conv3d(8, 8, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), groups=2)
        self.pool = nn.AvgPool3d((2, 1, 1))
        self.gap, self.fc = nn.AdaptiveAvgPool3d(1), nn.Linear(8, 4)

    def forward(self, x):
        x = self.pool(F.relu(self.c2(self.c1(x))))
        return self.fc(torch.flatten(self.gap(x), 1))


class Activations(nn.Module):
    """PReLU, ELU, LeakyReLU, Hardtanh, ReLU6, F.relu6, clamp, Tanh, Sigmoid, Hardsigmoid,
    Hardswish on one conv output, concatenated (quantized cat), then a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.acts = nn.ModuleList([nn.PReLU(8), nn.ELU(), nn.LeakyReLU(0.2), nn.Hardtanh(-1.5, 2.0),
                                   nn.ReLU6(), nn.Tanh(), nn.Sigmoid(), nn.Hardsigmoid(),
                                   nn.Hardswish()])
        self.c2 = nn.Conv2d(8 * 11, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        outs = [act(y) for act in self.acts]
        outs += [F.relu6(y), torch.clamp(y, -0.5, 1.0)]
        return self.c2(torch.cat(outs, 1))


class PoolResample(nn.Module):
    """F.max_pool2d (padding), nn.AvgPool2d (ceil_mode, count_include_pad=False), F.avg_pool2d,
    F.adaptive_avg_pool2d to (3, 2), F.interpolate nearest x2 and bilinear to a size, x.mean((2, 3));
    two outputs (a tuple)."""

    def __init__(self):
        super().__init__()
        self.c1 = conv_bn_relu(3, 8)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        self.c2, self.c3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8 * 3 * 2 + 8, 5)

    def forward(self, x):
        x = self.c1(x)
        a = F.max_pool2d(x, 3, 2, 1)
        b = self.avg(x)
        up = F.interpolate(self.c2(a + b), scale_factor=2, mode="nearest")
        image = self.c3(F.interpolate(up, size=(9, 7), mode="bilinear", align_corners=False))
        pooled = F.adaptive_avg_pool2d(F.avg_pool2d(x, 2), (3, 2)).flatten(1)
        vector = self.fc(torch.cat([pooled, x.mean((2, 3))], 1))
        return image, vector


class Norms(nn.Module):
    """InstanceNorm2d (affine), + 0.0 (add_scalar) then a standalone BatchNorm2d, LayerNorm over
    channels in a channels-last view (permute there and back), 1x1 conv. (FX leaves GroupNorm in
    float, which qexact 0.1 refuses: GroupNorm is in the eager-mode model below.)"""

    def __init__(self):
        super().__init__()
        self.c1, self.inorm = nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True)
        self.bn, self.ln = nn.BatchNorm2d(8), nn.LayerNorm(8)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.bn(self.inorm(self.c1(x)) + 0.0)
        return self.c2(self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class GroupNormEager(nn.Module):
    """Eager mode (QuantStub/DeQuantStub, prepare/convert): FX graph mode leaves nn.GroupNorm in
    float32 (its backend config has no quantized GroupNorm), the eager mapping quantizes it
    (nnq.GroupNorm). Conv2d, GroupNorm(2, 8) on the conv's output, ReLU, GroupNorm(8, 8),
    Conv2d 1x1."""

    def __init__(self):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.dequant = QuantStub(), DeQuantStub()
        self.c1, self.gn1 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.relu, self.gn2 = nn.ReLU(), nn.GroupNorm(8, 8, affine=False)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.quant(x)
        x = self.c2(self.gn2(self.relu(self.gn1(self.c1(x)))))
        return self.dequant(x)


class ConvTransposeUNet(nn.Module):
    """Encoder/decoder: strided conv down, ConvTranspose2d(16, 8, 4, stride=2, padding=1) up,
    skip concatenation (cat), conv, 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2 = conv_bn_relu(3, 8), conv_bn_relu(8, 16, stride=2)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.d1, self.out = conv_bn_relu(16, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        return self.out(self.d1(torch.cat([self.up(self.e2(a)), a], 1)))


class TwoInputsDict(nn.Module):
    """Two inputs; a(x) + b(y) (add), a(x) * b(y) (mul), relu(a * b) (mul_relu); a dict output."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn_relu(3, 6), conv_bn_relu(3, 6)
        self.sum_out, self.prod_out = nn.Conv2d(6, 2, 1), nn.Conv2d(12, 3, 1)

    def forward(self, x, y):
        a, b = self.a(x), self.b(y)
        product = torch.cat([a * b, F.relu(a * b)], 1)
        return {"sum": self.sum_out(a + b), "product": self.prod_out(product)}


class ShapeOps(nn.Module):
    """Movement ops: permute, reshape, view, transpose, slicing, split, chunk, squeeze/unsqueeze,
    pixel_shuffle, channel_shuffle, constant F.pad, flatten, cat."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 1)
        self.shuffle = nn.ChannelShuffle(2)
        self.c3 = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.c1(x)                                              # (N, 8, 6, 8)
        t = y.permute(0, 2, 3, 1).reshape(y.size(0), 6, 8, 8)       # (N, 6, 8, 8) channels-last
        y = self.c2(t.permute(0, 3, 1, 2).contiguous())             # back to (N, 8, 6, 8)
        y = self.shuffle(y)
        p, q = torch.split(y, [6, 2], dim=1)
        top, bottom = p.chunk(2, dim=2)                             # (N, 6, 3, 8) each
        z = torch.cat([top[:, :, :, 1:-1], bottom[..., 2:]], 1)     # (N, 12, 3, 6)
        z = F.pixel_shuffle(torch.cat([z[:, :4], z[:, ::3]], 1), 2)  # (N, 2, 6, 12)
        z = self.c3(F.pad(z, [1, 1, 0, 0], value=0.0))              # (N, 4, 4, 12)
        v = z.transpose(2, 3).unsqueeze(1).squeeze(1)               # (N, 4, 12, 4)
        w = q.mean((2, 3)).view(-1, 2)                              # (N, 2)
        head = self.fc(torch.cat([v.flatten(2).mean(2), w], 1))     # (N, 6) -> (N, 3)
        return head, v


class FloatOps(nn.Module):
    """Float ops FX leaves between a dequantize and a quantize: input normalization
    ((x - 0.45) / 0.226), SiLU (nn.SiLU and F.silu), nearest nn.Upsample, F.adaptive_max_pool2d;
    plus quantized conv around them."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.SiLU()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.c2 = nn.Conv2d(8, 6, 3, stride=2)
        self.fc = nn.Linear(6 * 2 * 2, 4)

    def forward(self, x):
        y = self.act(self.c1((x - 0.45) / 0.226))
        y = F.silu(self.c2(self.up(y)))
        return self.fc(torch.flatten(F.adaptive_max_pool2d(y, 2), 1))


class SqueezeExcite(nn.Module):
    """MobileNetV3-style block: conv + Hardswish, depthwise conv + ReLU, a squeeze-excitation gate
    (adaptive_avg_pool2d, 1x1 conv, ReLU, 1x1 conv, Hardsigmoid; broadcast quantized mul), 1x1 conv,
    residual add, x.mean((2, 3)), Linear + Hardswish, Linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                nn.Hardswish())
        self.dw = conv_bn_relu(16, 16, groups=16)
        self.fc1, self.fc2 = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.gate = nn.Hardsigmoid()
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Linear(16, 12), nn.Hardswish(), nn.Linear(12, 5))

    def forward(self, x):
        x = self.c1(x)
        y = self.dw(x)
        s = self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        x = self.project(y * s) + x
        return self.head(x.mean((2, 3)))


NOT_QNNPACK = ("fbgemm", "x86", "onednn")


def spec(build, shapes, engines, ops, mode="fx"):
    return {"build": build, "shapes": shapes, "engines": engines, "ops": ops, "mode": mode}


MODELS = {
    "mlp_gated": spec(MlpGated, [(5, 10)], ALL_ENGINES, [
        "linear", "linear_relu", "chunk", "sigmoid", "mul", "mul_scalar", "add_scalar", "reshape",
        "size", "flatten"]),
    "conv_residual": spec(ConvResidual, [(3, 12, 10)], ALL_ENGINES, [
        "conv2d", "conv2d_relu (fused BN)", "conv2d depthwise", "conv2d grouped (4 groups)",
        "conv2d strided", "add", "add_relu", "torch.add", "max_pool2d", "adaptive_avg_pool2d",
        "flatten", "linear"]),
    "conv1d_audio": spec(Conv1dAudio, [(1, 64)], ALL_ENGINES, [
        "conv1d", "conv1d_relu (fused BN)", "conv1d depthwise dilated", "max_pool1d",
        "avg_pool1d", "adaptive_avg_pool1d", "squeeze", "linear"]),
    # qnnpack: PyTorch cannot unpack a qnnpack Conv3d's weights ("QNNPACK only supports
    # conv2d_unpack"), so qexact 0.1 cannot import it
    "conv3d_video": spec(Conv3dVideo, [(2, 4, 6, 6)], NOT_QNNPACK, [
        "conv3d_relu (fused BN)", "conv3d grouped strided", "relu", "avg_pool3d",
        "adaptive_avg_pool3d", "flatten", "linear"]),
    "activations": spec(Activations, [(3, 7, 9)], ALL_ENGINES, [
        "conv2d", "prelu", "elu", "leaky_relu", "hardtanh", "relu6 (module)", "relu6 (F.relu6)",
        "clamp", "tanh", "sigmoid", "hardsigmoid", "hardswish", "cat"]),
    "pool_resample": spec(PoolResample, [(3, 13, 11)], ALL_ENGINES, [
        "conv2d_relu", "max_pool2d", "avg_pool2d (ceil_mode, count_include_pad=False)",
        "avg_pool2d", "adaptive_avg_pool2d (3, 2)", "add", "upsample nearest (F.interpolate)",
        "upsample bilinear (F.interpolate to a size)", "mean", "cat", "flatten", "linear",
        "tuple output"]),
    "norms": spec(Norms, [(3, 7, 9)], ALL_ENGINES, [
        "conv2d", "instance_norm2d", "add_scalar", "batch_norm2d", "permute", "layer_norm"]),
    "group_norm_eager": spec(GroupNormEager, [(3, 7, 9)], ALL_ENGINES, [
        "eager mode (QuantStub/DeQuantStub)", "conv2d", "group_norm", "group_norm (no affine)",
        "relu"], mode="eager"),
    "conv_transpose_unet": spec(ConvTransposeUNet, [(3, 12, 10)], ALL_ENGINES, [
        "conv2d_relu", "conv2d strided", "conv_transpose2d", "cat"]),
    "two_inputs_dict": spec(TwoInputsDict, [(3, 8, 9), (3, 8, 9)], ALL_ENGINES, [
        "two inputs", "conv2d_relu", "add", "mul", "mul_relu", "cat", "dict output"]),
    "shape_ops": spec(ShapeOps, [(4, 6, 8)], ALL_ENGINES, [
        "conv2d", "permute", "reshape", "view", "contiguous", "channel_shuffle", "split", "chunk",
        "slicing", "cat", "pixel_shuffle", "pad (constant)", "transpose", "unsqueeze", "squeeze",
        "flatten", "mean", "linear", "tuple output"]),
    "float_ops": spec(FloatOps, [(3, 9, 8)], ALL_ENGINES, [
        "float input normalization (sub, div)", "float silu (nn.SiLU, F.silu)",
        "float nearest upsample (nn.Upsample)", "float adaptive_max_pool2d", "conv2d", "flatten",
        "linear"]),
    "squeeze_excite": spec(SqueezeExcite, [(3, 12, 10)], ALL_ENGINES, [
        "conv2d + hardswish", "conv2d depthwise relu", "adaptive_avg_pool2d", "conv2d 1x1", "relu",
        "hardsigmoid", "mul (broadcast)", "add", "mean", "linear", "hardswish"]),
}


# --- Building and recording ----------------------------------------------------------------------

BATCH = 2
SEED = 0


def random_inputs(shapes, seed: int, batch: int = BATCH, saturate: bool = False):
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for shape in shapes:
        x = torch.randn((batch, *shape), generator=generator)
        if saturate:
            x[1:] *= 4.0  # the second sample leaves the calibrated range: saturation
        inputs.append(x)
    return tuple(inputs)


def qconfig_mapping_for(engine: str):
    """``get_default_qconfig_mapping(engine)``; on onednn, ConvTranspose gets per-tensor
    symmetric weights (``default_weight_observer``), as torch's mapping gives them on fbgemm and
    x86: with onednn's default per-channel observer prepare_fx raises ("Per channel weight
    observer is not supported yet for ConvTranspose{n}d")."""
    from torch.ao.quantization import QConfig, default_weight_observer, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(engine)
    if engine == "onednn":
        transpose = QConfig(activation=mapping.global_qconfig.activation,
                            weight=default_weight_observer)
        for kind in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
            mapping.set_object_type(kind, transpose)
    return mapping


def quantize(name: str, engine: str):
    """The converted model ``name`` on ``engine`` (its float model built with a fixed seed)."""
    from torch.ao.quantization import convert, get_default_qconfig, prepare
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    entry = MODELS[name]
    shapes = entry["shapes"]
    torch.manual_seed(SEED)
    model = entry["build"]()
    torch.backends.quantized.engine = engine
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            model.train()
            for seed in range(3):  # realistic batch-norm statistics
                model(*random_inputs(shapes, 100 + seed, batch=4))
        model.eval()
        if entry["mode"] == "eager":
            model.qconfig = get_default_qconfig(engine)
            prepared = prepare(model)
        else:
            prepared = prepare_fx(model, qconfig_mapping_for(engine), random_inputs(shapes, 99))
        for seed in range(4):  # calibration: the observers see these batches
            prepared(*random_inputs(shapes, 200 + seed, batch=4))
        return (convert(prepared) if entry["mode"] == "eager" else convert_fx(prepared)).eval()


def outputs_of(value) -> tuple[list, list | None]:
    """A model's outputs as a list, and the dict keys if it returned a dict."""
    if isinstance(value, dict):
        return list(value.values()), [str(key) for key in value]
    if isinstance(value, (tuple, list)):
        return list(value), None
    return [value], None


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == np.float32:
        return np.array_equal(a.view(np.uint32), b.view(np.uint32))
    return np.array_equal(a, b)


def make_one(name: str, engine: str, out_dir: str) -> dict:
    shapes, ops = MODELS[name]["shapes"], MODELS[name]["ops"]
    model = quantize(name, engine)
    inputs = random_inputs(shapes, 7, saturate=True)
    torch.backends.quantized.engine = engine
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cat of inputs with different qparams: intended
        theirs, keys = outputs_of(model(*inputs))
    theirs = [t.detach().numpy().astype(np.float32, copy=False) for t in theirs]

    net = qexact.from_torch(model, example_inputs=inputs, engine=engine, isa=ISA)
    stem = f"{name}.{engine}"
    path = os.path.join(out_dir, stem + ".qexact")
    qexact.save(net, path)
    loaded = qexact.load(path)
    arrays = [x.numpy() for x in inputs]
    ours, our_keys = outputs_of(loaded(*arrays))
    ours = [np.asarray(o) for o in ours]
    in_memory, _ = outputs_of(net(*arrays))
    assert all(bits_equal(a, b) for a, b in zip(ours, in_memory)), f"{stem}: save/load changed it"
    assert our_keys == keys and len(ours) == len(theirs), f"{stem}: outputs differ in structure"
    quantized, _ = outputs_of(loaded.run_quantized(*arrays))

    record = {}
    for index, x in enumerate(arrays):
        record[f"input_{index}"] = x
    for index, (mine, q, other) in enumerate(zip(ours, quantized, theirs)):
        record[f"output_{index}"] = mine
        record[f"qoutput_{index}_values"] = np.asarray(q.values)
        record[f"qoutput_{index}_scale"] = np.asarray(q.scale, dtype=np.float64)
        record[f"qoutput_{index}_zero_point"] = np.asarray(q.zero_point, dtype=np.int64)
        record[f"torch_output_{index}"] = other
    npz = os.path.join(out_dir, stem + ".npz")
    np.savez(npz, **record)
    with np.load(npz, allow_pickle=False) as check:  # plain arrays only
        assert sorted(check.files) == sorted(record)

    exact = [bits_equal(mine, other) for mine, other in zip(ours, theirs)]
    threads = sorted({node.attrs["num_threads"] for node in loaded.graph.nodes
                      if "num_threads" in node.attrs})
    entry = {
        "model": name, "engine": engine, "file": stem + ".qexact", "npz": stem + ".npz",
        "isa": loaded.engine.isa, "aten_capability": loaded.engine.aten_capability,
        "num_threads_recorded": threads, "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "qexact_version": qexact.__version__, "qexact_commit": QEXACT_COMMIT,
        "mode": MODELS[name]["mode"], "ops": ops, "node_ops": sorted({node.op for node in loaded.graph.nodes}),
        "input_shapes": [list(x.shape) for x in arrays],
        "output_shapes": [list(o.shape) for o in ours], "output_keys": keys,
        "bit_exact_vs_torch": all(exact), "bit_exact_vs_torch_per_output": exact,
        "file_bytes": os.path.getsize(path), "npz_bytes": os.path.getsize(npz),
    }
    print(f"{stem:32s} {entry['file_bytes']:7d} B  exact vs torch: {all(exact)}  "
          f"nodes: {len(loaded.graph.nodes)}", flush=True)
    return entry


def check_qexact_is_0_1(force: bool) -> str:
    """The git commit of the imported qexact's checkout; exits unless it is 0.1.0 at c66f8ec."""
    package = os.path.dirname(os.path.abspath(qexact.__file__))
    try:
        commit = subprocess.run(["git", "-C", package, "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", package, "status", "--porcelain", "--", "."],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    if qexact.__version__ == QEXACT_VERSION and commit.startswith(QEXACT_COMMIT) and not dirty:
        return commit
    message = (f"qexact imported from {package} is version {qexact.__version__} at commit "
               f"{commit}{' (modified)' if dirty else ''}; these files must be made by qexact "
               f"{QEXACT_VERSION} at commit {QEXACT_COMMIT} (see the docstring)")
    if not force:
        sys.exit(message)
    print("WARNING:", message, file=sys.stderr)
    return commit


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=HERE, help="output directory (default: beside this file)")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--i-know-this-overwrites-the-reference", dest="force",
                        action="store_true")
    args = parser.parse_args(argv)
    commit = check_qexact_is_0_1(args.force)
    print(f"qexact {qexact.__version__} from {qexact.__file__}; torch {torch.__version__}; "
          f"host isa {qexact.detect_isa()}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    entries, skipped = [], []
    for name in names:
        for engine in MODELS[name]["engines"]:
            try:
                entries.append(make_one(name, engine, args.out))
            except qexact.UnsupportedError as error:
                print(f"{name}.{engine}: SKIPPED: {error}", flush=True)
                skipped.append({"model": name, "engine": engine, "reason": str(error)})
    manifest = {
        "description": "qexact 0.1 model files and outputs, frozen; made by make_files.py",
        "qexact_version": qexact.__version__, "qexact_commit": commit,
        "qexact_package": os.path.dirname(os.path.abspath(qexact.__file__)),
        "torch_version": torch.__version__, "isa": ISA,
        "host_isa": qexact.detect_isa(),
        "host_torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "files": entries, "skipped": skipped,
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as file:
        json.dump(manifest, file, indent=1)
        file.write("\n")
    total = sum(e["file_bytes"] + e["npz_bytes"] for e in entries)
    print(f"{len(entries)} files, {len(skipped)} skipped, {total} bytes; all exact vs torch: "
          f"{all(e['bit_exact_vs_torch'] for e in entries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
