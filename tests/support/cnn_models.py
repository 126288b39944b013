"""Small CNNs in the shape of the architectures users port: ResNet, MobileNetV2, MobileNetV3,
ShuffleNetV2 and a detector head. Random weights, *realistic* batch-norm statistics (a few
train-mode batches before eval, or activations vanish and every output is zero), fused,
calibrated and converted the eager way on a given engine.

    model, shape = build_cnn(resnet_like, "x86")
"""

from __future__ import annotations

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn.quantized import FloatFunctional

SEED = 7


def conv_bn(cin, cout, kernel=3, stride=1, groups=1, act="relu"):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act == "relu":
        layers.append(nn.ReLU())
    elif act == "hardswish":
        layers.append(nn.Hardswish())
    elif act == "leaky":
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


def fuse_conv_bn(sequential: nn.Sequential) -> None:
    names = ["0", "1", "2"] if isinstance(sequential[-1], nn.ReLU) else ["0", "1"]
    tq.fuse_modules(sequential, [names], inplace=True)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = conv_bn(cout, cout, 3, 1, act=None)
        self.down = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None
        self.add = FloatFunctional()

    def forward(self, x):
        identity = self.down(x) if self.down is not None else x
        return self.add.add_relu(self.b(self.a(x)), identity)

    def fuse(self):
        for part in (self.a, self.b, self.down):
            if part is not None:
                fuse_conv_bn(part)


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem = conv_bn(3, 16, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 24, 2))
        self.head = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.blocks(self.pool(self.stem(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(self.head(x), 1)))

    def fuse(self):
        fuse_conv_bn(self.stem)
        for block in self.blocks:
            block.fuse()


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, act="relu", squeeze=False):
        super().__init__()
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden, 1, act=act)
        self.depthwise = conv_bn(hidden, hidden, 3, stride, groups=hidden, act=act)
        self.se = SqueezeExcite(hidden) if squeeze else None
        self.project = conv_bn(hidden, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout
        self.add = FloatFunctional()

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return self.add.add(x, y) if self.residual else y

    def fuse(self):
        for part in (self.expand, self.depthwise, self.project):
            fuse_conv_bn(part)
        if self.se is not None:
            self.se.fuse()


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, max(8, channels // 4), 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(max(8, channels // 4), channels, 1)
        self.gate = nn.Hardsigmoid()
        self.mul = FloatFunctional()

    def forward(self, x):
        scale = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return self.mul.mul(x, scale)

    def fuse(self):
        tq.fuse_modules(self, [["reduce", "relu"]], inplace=True)


class MobileNetV2Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem = conv_bn(3, 16, 3, 2)
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4),
                                    InvertedResidual(24, 24, 1, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(self.quant(x))))
        return self.dequant(self.fc(torch.flatten(x, 1)))

    def fuse(self):
        fuse_conv_bn(self.stem)
        for block in self.blocks:
            block.fuse()


class MobileNetV3Like(MobileNetV2Like):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, 3, 2, act="hardswish")
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 3, act="relu", squeeze=True),
            InvertedResidual(16, 24, 2, 3, act="hardswish", squeeze=True),
            InvertedResidual(24, 24, 1, 3, act="hardswish"))
        self.act = nn.Hardswish()

    def forward(self, x):
        x = self.pool(self.act(self.blocks(self.stem(self.quant(x)))))
        return self.dequant(self.fc(torch.flatten(x, 1)))


def channel_shuffle(x, groups: int):
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, -1, height, width)


class ShuffleUnit(nn.Module):
    def __init__(self, channels):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half,
                                                                    act=None), conv_bn(half, half, 1))
        self.cat = FloatFunctional()

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        out = self.cat.cat([left, self.branch(right)], dim=1)
        return channel_shuffle(out, 2)

    def fuse(self):
        for part in self.branch:
            fuse_conv_bn(part)


class ShuffleNetV2Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.stem = conv_bn(3, 24, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.units = nn.Sequential(ShuffleUnit(24), ShuffleUnit(24))
        self.head = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = self.head(self.units(self.pool(self.stem(self.quant(x)))))
        return self.dequant(self.fc(x.flatten(1)))

    def fuse(self):
        fuse_conv_bn(self.stem)
        for unit in self.units:
            unit.fuse()


class DetectorLike(nn.Module):
    """A tiny FPN-style head: downsample, upsample (nearest), cat, leaky_relu, sigmoid."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.c1 = conv_bn(3, 16, 3, 2, act="leaky")
        self.c2 = conv_bn(16, 24, 3, 2, act="leaky")
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.cat = FloatFunctional()
        self.out = nn.Conv2d(40, 6, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        a = self.c1(self.quant(x))
        b = self.up(self.c2(a))
        return self.dequant(self.sigmoid(self.out(self.cat.cat([a, b], dim=1))))

    def fuse(self):
        for part in (self.c1, self.c2):
            tq.fuse_modules(part, [["0", "1"]], inplace=True)


CNN_MODELS = {"resnet": ResNetLike, "mobilenet_v2": MobileNetV2Like,
              "mobilenet_v3": MobileNetV3Like, "shufflenet_v2": ShuffleNetV2Like,
              "detector": DetectorLike}
INPUT_SHAPE = (2, 3, 32, 32)


def build_cnn(name: str, engine: str):
    """``(quantized model, input shape)``: realistic BN statistics, fused, calibrated, converted."""
    torch.backends.quantized.engine = engine
    torch.manual_seed(SEED)
    model = CNN_MODELS[name]()
    model.train()
    with torch.no_grad():
        for _ in range(4):  # batch-norm running statistics from data, not the defaults
            model(torch.randn(8, 3, 32, 32))
    model.eval()
    model.fuse()
    model.qconfig = tq.get_default_qconfig(engine)
    prepared = tq.prepare(model, inplace=False)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn(4, 3, 32, 32))
    return tq.convert(prepared, inplace=False).eval(), INPUT_SHAPE
