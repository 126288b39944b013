"""Models qexact was not written against, quantized the way users quantize them (test support).

- torchvision classification / segmentation models and a detection backbone (``weights=None``),
  quantized in FX graph mode (``prepare_fx`` / ``convert_fx``, ``get_default_qconfig_mapping``);
- small hand-written models with what users put in ``forward`` (interpolate in the middle, cat of
  many tensors, ``x.mean((2, 3))``, ``x.reshape(x.size(0), -1)``, residual ``+``, float SiLU/GELU
  left in the graph by FX, Conv1d audio nets, Embedding, LSTM, ``x.shape``, dict outputs);
- ``ONE_OP``: conv -> one construct -> conv, to name exactly what breaks.

Every model gets realistic batch-norm statistics (a few train-mode batches before ``eval``), is
calibrated on a few random batches and converted on the given engine; builds are deterministic.

    model, shape, kind = build_fx_model("resnet18", "x86")
    x = random_input(shape, kind, batch=2); model(*as_args(x))
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0
IMAGE = (1, 3, 64, 64)

TORCHVISION_FX = {  # name -> (constructor keyword arguments, input shape)
    **{name: ({}, IMAGE) for name in (
        "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
        "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v2_x0_5", "squeezenet1_0",
        "squeezenet1_1", "densenet121", "mnasnet0_5", "regnet_y_400mf", "regnet_x_400mf",
        "efficientnet_b0", "convnext_tiny")},
    "googlenet": ({"aux_logits": False, "init_weights": True}, IMAGE),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, (1, 3, 80, 80)),
    "vgg11_bn": ({"num_classes": 100}, IMAGE),
    "alexnet": ({"num_classes": 100}, IMAGE),
    "vit_tiny": ({}, (1, 3, 32, 32)),  # VisionTransformer: 2 layers, 32 wide, 8x8 patches
}

SEGMENTATION_FX = {
    "lraspp_mobilenet_v3_large": ({"num_classes": 5}, IMAGE),
    "deeplabv3_mobilenet_v3_large": ({"num_classes": 5, "aux_loss": False}, IMAGE),
    "fcn_resnet50": ({"num_classes": 5, "aux_loss": False}, IMAGE),
    "resnet18_fpn_backbone": ({}, IMAGE),  # a detection backbone: an OrderedDict of 5 maps
}


def _conv_bn_relu(cin, cout, kernel=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class InterpolateMiddle(nn.Module):
    """F.interpolate with scale_factor between convolutions (nearest x2, then bilinear x0.5)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = _conv_bn_relu(3, 12, stride=2), _conv_bn_relu(12, 12)
        self.c = nn.Conv2d(12, 5, 3, padding=1)

    def forward(self, x):
        y = F.interpolate(self.a(x), scale_factor=2, mode="nearest")
        return self.c(F.interpolate(self.b(y), scale_factor=0.5, mode="bilinear", align_corners=False))


class CatMany(nn.Module):
    """torch.cat of three, then four tensors along channels (Inception-style branches)."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_relu(3, 8)
        self.b1, self.b2 = nn.Conv2d(8, 5, 1), nn.Conv2d(8, 7, 3, padding=1)
        self.b3, self.pool = nn.Conv2d(8, 3, 5, padding=2), nn.MaxPool2d(3, 1, 1)
        self.out = nn.Conv2d(23, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)
        return self.out(torch.cat([y, self.pool(x)], dim=1))


class MeanFlattenHead(nn.Module):
    """x.mean((2, 3)), x.reshape(x.size(0), -1) and torch.flatten(x, 1) heads, summed with +."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(3, 16, stride=2), _conv_bn_relu(16, 24, stride=2))
        self.fc1, self.fc2, self.fc3 = nn.Linear(24, 10), nn.Linear(384, 10), nn.Linear(384, 10)

    def forward(self, x):
        y = self.body(x)
        pooled, flat = y.mean((2, 3)), y.reshape(y.size(0), -1)
        return self.fc1(pooled) + self.fc2(flat) + self.fc3(torch.flatten(y, 1))


class ResidualPlus(nn.Module):
    """Residuals joined with operator + and torch.add (FX: quantized add / add_relu)."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_relu(3, 16)
        self.c1 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 7)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.c1(x) + x)
        x = torch.add(self.c2(x) + x, x)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class AudioConv1d(nn.Module):
    """Keyword-spotting style: Conv1d + BatchNorm1d + ReLU, MaxPool1d, dilated depthwise, GAP."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(1, 16, 9, stride=4, padding=4), nn.BatchNorm1d(16), nn.ReLU())
        self.pool = nn.MaxPool1d(4)
        self.c2 = nn.Sequential(nn.Conv1d(16, 24, 5, padding=2), nn.BatchNorm1d(24), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv1d(24, 24, 3, padding=2, dilation=2, groups=24),
                                nn.BatchNorm1d(24), nn.ReLU())
        self.gap, self.fc = nn.AdaptiveAvgPool1d(1), nn.Linear(24, 6)

    def forward(self, x):
        return self.fc(self.gap(self.c3(self.c2(self.pool(self.c1(x))))).squeeze(-1))


class SqueezeExciteMul(nn.Module):
    """Channel attention: x * sigmoid(fc(relu(fc(avgpool(x))))) (broadcast quantized mul)."""

    def __init__(self):
        super().__init__()
        self.body = _conv_bn_relu(3, 16)
        self.fc1, self.fc2, self.out = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1), nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = self.body(x)
        return self.out(x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))))


class SpatialAttention(nn.Module):
    """CBAM-style spatial gate from x.mean(1, keepdim=True) and a 1x1 conv, 7x7 conv, sigmoid."""

    def __init__(self):
        super().__init__()
        self.body = _conv_bn_relu(3, 8)
        self.squeeze, self.conv = nn.Conv2d(8, 1, 1), nn.Conv2d(2, 1, 7, padding=3)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.body(x)
        gate = self.conv(torch.cat([x.mean(1, keepdim=True), self.squeeze(x)], 1))
        return self.out(x * torch.sigmoid(gate))


class TinyUNet(nn.Module):
    """Encoder / decoder: ConvTranspose2d(16, 8, 2, stride=2) upsampling and skip concatenation."""

    def __init__(self):
        super().__init__()
        self.e1, self.e2 = _conv_bn_relu(3, 8), _conv_bn_relu(8, 16, stride=2)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.d1, self.out = _conv_bn_relu(16, 8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.e1(x)
        return self.out(self.d1(torch.cat([self.up(self.e2(a)), a], 1)))


class UpsampleConcat(nn.Module):
    """nn.Upsample(bilinear, align_corners=True) (a module: FX keeps it float), cat, reflect conv."""

    def __init__(self):
        super().__init__()
        self.down = _conv_bn_relu(3, 8, stride=2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = nn.Conv2d(11, 6, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        return self.conv(torch.cat([self.up(self.down(x)), x], 1))


class ActivationZoo(nn.Module):
    """PReLU, ELU, LeakyReLU, Hardtanh, ReLU6, Tanh, Sigmoid, Hardsigmoid, Hardswish, concatenated."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.acts = nn.ModuleList([nn.PReLU(8), nn.ELU(), nn.LeakyReLU(0.2), nn.Hardtanh(-1.5, 2.0),
                                   nn.ReLU6(), nn.Tanh(), nn.Sigmoid(), nn.Hardsigmoid(),
                                   nn.Hardswish()])
        self.c2 = nn.Conv2d(8 * 9, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        return self.c2(torch.cat([act(y) for act in self.acts], 1))


class NormZoo(nn.Module):
    """InstanceNorm2d, a standalone BatchNorm2d after + 0.0, LayerNorm over channels-last (permute)."""

    def __init__(self):
        super().__init__()
        self.c1, self.inorm = nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True)
        self.bn, self.ln, self.c2 = nn.BatchNorm2d(8), nn.LayerNorm(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.bn(self.inorm(self.c1(x)) + 0.0)
        return self.c2(self.ln(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class GatedScalar(nn.Module):
    """GLU-style gating: chunk (float in FX), a * sigmoid(b), then y * 0.5 + 1 (quantized scalars)."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(10, 16), nn.Linear(8, 3)

    def forward(self, x):
        a, b = self.fc(x).chunk(2, dim=-1)
        return self.out(a * torch.sigmoid(b) * 0.5 + 1)


class TransposeLinear(nn.Module):
    """Linear along time of a transposed sequence (MLP-Mixer style): (N, T, C) -> (N, C, 4)."""

    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Linear(6, 6), nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(self.a(x).transpose(1, 2))


class TwoInputs(nn.Module):
    """Two image inputs fused by +; TupleOutput: two heads returned as a tuple; DictOutput: a dict."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.out = _conv_bn_relu(3, 6), _conv_bn_relu(3, 6), nn.Conv2d(6, 2, 1)

    def forward(self, x, y):
        return self.out(self.a(x) + self.b(y))


class TupleOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.a = _conv_bn_relu(3, 8), nn.Conv2d(8, 3, 1)
        self.b = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        y = self.body(x)
        return self.a(y), self.b(y)


class DictOutput(TupleOutput):
    def forward(self, x):
        y = self.body(x)
        return {"out": self.a(y), "aux": self.b(y)}


class SizeFromShape(nn.Module):
    """Segmentation-style head upsampling to the input size, read as x.shape[-2:] (or, with
    ``method=True``, x.size()[2:])."""

    def __init__(self, method=False):
        super().__init__()
        self.method = method
        self.body, self.head = _conv_bn_relu(3, 8, stride=2), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        size = x.size()[2:] if self.method else x.shape[-2:]
        return F.interpolate(self.head(self.body(x)), size=size, mode="nearest")


class InputNormalization(nn.Module):
    """(x - 0.45) / 0.226 written in forward, on the float input, before the first layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv((x - 0.45) / 0.226)


class AdaptiveMaxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.pool = _conv_bn_relu(3, 10, stride=2), nn.AdaptiveMaxPool2d((3, 2))
        self.fc = nn.Linear(60, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


class LayerNormMLP(nn.Module):
    """Linear, LayerNorm (quantized by FX), F.gelu (float), Linear: a transformer MLP block."""

    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 16)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x))))


class MatmulAttention(nn.Module):
    """Hand-written self-attention: softmax(q @ k^T / sqrt(d)) @ v."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x):
        scores = torch.matmul(self.q(x), self.k(x).transpose(-2, -1)) / 8 ** 0.5
        return self.out(torch.matmul(torch.softmax(scores, -1), self.v(x)))


class LayerScale(nn.Module):
    """ConvNeXt's layer scale: a Parameter multiplied in forward."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1)
        self.gamma = nn.Parameter(torch.full((6, 1, 1), 0.1))

    def forward(self, x):
        return self.b(self.gamma * self.a(x))


class EmbeddingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding, self.fc = nn.Embedding(50, 16), nn.Linear(16, 4)

    def forward(self, tokens):
        return self.fc(self.embedding(tokens).mean(1))


class LSTMModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


class MeanOf1x1(nn.Module):
    """conv on a 1x1 image, then x.mean([2, 3]) (ShuffleNetV2 / MNASNet heads at 32x32 input)."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean([2, 3]))


class OneOp(nn.Module):
    """conv(3 -> 6) -> ``op`` -> conv(-> 4), on (N, 3, 7, 6) images."""

    def __init__(self, op, channels_after_op):
        super().__init__()
        self.a, self.op, self.b = nn.Conv2d(3, 6, 3, padding=1), op, nn.Conv2d(channels_after_op, 4, 1)

    def forward(self, x):
        return self.b(self.op(self.a(x)))


ONE_OP = {  # name -> (op factory, channels after op)
    "hardswish": (nn.Hardswish, 6),
    "silu": (nn.SiLU, 6),
    "gelu": (nn.GELU, 6),
    "softmax": (lambda: lambda y: torch.softmax(y, 1), 6),
    "maxpool_module": (lambda: nn.MaxPool2d(2), 6),
    "upsample_module_nearest": (lambda: nn.Upsample(scale_factor=2), 6),
    "group_norm": (lambda: nn.GroupNorm(2, 6), 6),
    "channel_max": (lambda: lambda y: torch.max(y, 1, keepdim=True)[0], 1),
    "f_pad": (lambda: lambda y: F.pad(y, [1, 0, 0, 1]), 6),
    "stack": (lambda: lambda y: torch.stack([y, y], 1).flatten(1, 2), 12),
    "float_scalar_sub": (lambda: lambda y: torch.chunk(y, 2, 1)[0] - 1, 3),  # chunk is float in FX
    "float_scalar_div": (lambda: lambda y: torch.chunk(y, 2, 1)[0] / 3.0, 3),
    "maxpool_kernel1": (lambda: lambda y: F.max_pool2d(y, 1, 2, 0), 6),  # FPN LastLevelMaxPool
}

HAND_WRITTEN = {  # name -> (constructor, input shape, input kind)
    "interpolate_middle": (InterpolateMiddle, (1, 3, 21, 19), "float"),
    "cat_many": (CatMany, (1, 3, 13, 11), "float"),
    "mean_flatten_head": (MeanFlattenHead, (1, 3, 16, 16), "float"),
    "residual_plus": (ResidualPlus, (1, 3, 15, 13), "float"),
    "audio_conv1d": (AudioConv1d, (1, 1, 400), "float"),
    "squeeze_excite_mul": (SqueezeExciteMul, (1, 3, 12, 10), "float"),
    "spatial_attention": (SpatialAttention, (1, 3, 11, 9), "float"),
    "tiny_unet": (TinyUNet, (1, 3, 16, 14), "float"),
    "upsample_concat": (UpsampleConcat, (1, 3, 16, 14), "float"),
    "activation_zoo": (ActivationZoo, (1, 3, 7, 9), "float"),
    "norm_zoo": (NormZoo, (1, 3, 7, 9), "float"),
    "gated_scalar": (GatedScalar, (1, 5, 10), "float"),
    "transpose_linear": (TransposeLinear, (1, 5, 6), "float"),
    "two_inputs": (TwoInputs, (1, 3, 8, 9), "two"),
    "tuple_output": (TupleOutput, (1, 3, 9, 8), "float"),
    "dict_output": (DictOutput, (1, 3, 9, 8), "float"),
    "size_from_shape": (SizeFromShape, (1, 3, 15, 17), "float"),
    "size_from_size_method": (lambda: SizeFromShape(method=True), (1, 3, 15, 17), "float"),
    "input_normalization": (InputNormalization, (1, 3, 6, 7), "float"),
    "adaptive_max_head": (AdaptiveMaxHead, (1, 3, 17, 15), "float"),
    "layernorm_mlp": (LayerNormMLP, (1, 5, 16), "float"),
    "matmul_attention": (MatmulAttention, (1, 6, 8), "float"),
    "layer_scale": (LayerScale, (1, 3, 7, 6), "float"),
    "embedding": (EmbeddingModel, (1, 6), "tokens"),
    "lstm": (LSTMModel, (1, 5, 8), "float"),
    "mean_of_1x1": (MeanOf1x1, (1, 3, 1, 1), "float"),
    **{name: (lambda op=op, channels=channels: OneOp(op(), channels), (1, 3, 7, 6), "float")
       for name, (op, channels) in ONE_OP.items()},
}


# --- Building ----------------------------------------------------------------------------------


def random_input(shape, kind: str = "float", seed: int = 5, batch: int | None = None,
                 scale: float = 1.0):
    """A deterministic input of ``shape`` (batch dimension replaced by ``batch``); a tuple of two
    for ``kind == "two"``, token ids for ``"tokens"``."""
    if batch is not None:
        shape = (batch,) + tuple(shape[1:])
    generator = torch.Generator().manual_seed(seed)
    if kind == "tokens":
        return torch.randint(0, 50, shape, generator=generator)
    if kind == "two":
        return tuple(torch.randn(shape, generator=generator) * scale for _ in range(2))
    return torch.randn(shape, generator=generator) * scale


def as_args(x) -> tuple:
    """The model's positional arguments for an input made by ``random_input``."""
    return x if isinstance(x, tuple) else (x,)


def quantize_fx(model: nn.Module, shape, engine: str, kind: str = "float",
                train_batches: int = 2, calibration_batches: int = 2):
    """``model`` (float) with BN statistics from ``train_batches`` train-mode batches of 4,
    FX-prepared with ``get_default_qconfig_mapping(engine)``, calibrated, converted."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if train_batches and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                 for m in model.modules()):
            model.train()
            for seed in range(train_batches):
                model(*as_args(random_input(shape, kind, seed=100 + seed, batch=4)))
        model.eval()
        example = as_args(random_input(shape, kind, seed=99))
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example)
        for seed in range(calibration_batches):
            prepared(*as_args(random_input(shape, kind, seed=200 + seed, batch=2)))
        return convert_fx(prepared).eval()


def float_model(name: str, shape=None) -> tuple[nn.Module, tuple, str]:
    """``(float model, input shape, input kind)`` for a name of TORCHVISION_FX, SEGMENTATION_FX
    or HAND_WRITTEN (``weights=None``, seed fixed); ``shape`` overrides the default input shape."""
    torch.manual_seed(SEED)
    if name in HAND_WRITTEN:
        build, default, kind = HAND_WRITTEN[name]
        return build(), shape or default, kind
    from support.torchvision_models import import_torchvision

    models = import_torchvision().models
    if name in SEGMENTATION_FX:
        kwargs, default = SEGMENTATION_FX[name]
        if name == "resnet18_fpn_backbone":
            from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

            model = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                        norm_layer=nn.BatchNorm2d, trainable_layers=5)
        else:
            model = getattr(models.segmentation, name)(weights=None, weights_backbone=None, **kwargs)
        return model, shape or default, "float"
    kwargs, default = TORCHVISION_FX[name]
    if name == "vit_tiny":
        return models.vision_transformer.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
            num_classes=10), shape or default, "float"
    return getattr(models, name)(weights=None, **kwargs), shape or default, "float"


def build_fx_model(name: str, engine: str, shape=None):
    """``(FX-converted model, input shape, input kind)`` on ``engine``."""
    model, shape, kind = float_model(name, shape)
    return quantize_fx(model, shape, engine, kind), shape, kind
