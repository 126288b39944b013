"""Eager-mode quantized PyTorch models for importer, serialization and end-to-end tests.

Each builder is a function ``builder(engine) -> (model, calibration_batches, input_shape)``
returning a *float* model with QuantStub/DeQuantStub (and, where it wants one, its own qconfig
and fusion). ``build(builder, engine)`` does the rest the way a user would: set
``torch.backends.quantized.engine``, set the qconfig (``get_default_qconfig(engine)`` unless the
builder set one), prepare, calibrate, convert. Everything is seeded, so a builder gives the same
quantized model on every call.

    model, shape = build(forum_model, "qnnpack")
    net = qexact.from_torch(model, example_inputs=(torch.rand(shape),))

Only importable where torch is: callers use ``pytest.importorskip("torch")`` first.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.ao import quantization as tq
from torch.ao.quantization import DeQuantStub, QuantStub

SEED = 20240613


# --- (a) the forum model ----------------------------------------------------------------------


class ForumModel(nn.Module):
    """QuantStub -> nn.Linear(10, 5) -> DeQuantStub (semantics.md §8)."""

    def __init__(self, dequant: bool = True):
        super().__init__()
        self.quant = QuantStub()
        self.fc_1 = nn.Linear(10, 5)
        self.dequant = DeQuantStub() if dequant else nn.Identity()

    def forward(self, x):
        return self.dequant(self.fc_1(self.quant(x)))


def forum_model(engine: str, dequant: bool = True):
    torch.manual_seed(SEED)
    model = ForumModel(dequant)
    batches = [torch.rand(1, 10) for _ in range(5)]
    return model, batches, (1, 10)


def forum_model_quantized_output(engine: str):
    """The forum model without its DeQuantStub: the output is torch's quantized tensor."""
    return forum_model(engine, dequant=False)


# --- (b) a multi-layer model on (batch, seq, features) ---------------------------------------


class Head(nn.Module):
    """A submodule holding a nested Sequential."""

    def __init__(self, in_features: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(in_features, 16),
            nn.ReLU(),
            nn.Sequential(nn.Dropout(0.25), nn.Linear(16, 12), nn.Identity()),
        )
        self.out = nn.Linear(12, 6)

    def forward(self, x):
        return self.out(self.body(x))


class MultiLayerModel(nn.Module):
    """(B, 4, 8) -> Linear+ReLU (fused) -> ReLU module -> Linear -> flatten/view -> head."""

    def __init__(self, use_view: bool, dequant: bool = True):
        super().__init__()
        self.use_view = use_view
        self.quant = QuantStub()
        self.fc1 = nn.Linear(8, 20)
        self.act1 = nn.ReLU()           # fused into fc1 by fuse_modules
        self.fc2 = nn.Linear(20, 10)
        self.act2 = nn.ReLU()           # stays a quantized ReLU module
        self.drop = nn.Dropout(0.1)
        self.ident = nn.Identity()
        self.head = Head(4 * 10)
        self.dequant = DeQuantStub() if dequant else nn.Identity()

    def forward(self, x):
        x = self.quant(x)
        x = self.act1(self.fc1(x))
        x = self.ident(self.drop(self.act2(self.fc2(x))))
        if self.use_view:
            x = x.view(x.size(0), -1)
        else:
            x = torch.flatten(x, 1)
        return self.dequant(self.head(x))

    def fuse(self):
        tq.fuse_modules(self, [["fc1", "act1"]], inplace=True)


def multilayer_model(engine: str, use_view: bool = False, dequant: bool = True):
    torch.manual_seed(SEED + 1)
    model = MultiLayerModel(use_view, dequant)
    model.eval()
    model.fuse()
    batches = [torch.randn(8, 4, 8) for _ in range(4)]
    return model, batches, (3, 4, 8)


def multilayer_view_model(engine: str):
    return multilayer_model(engine, use_view=True)


def multilayer_quantized_output(engine: str):
    return multilayer_model(engine, dequant=False)


# --- (c) per-tensor weights, no bias ----------------------------------------------------------


class NoBiasModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = QuantStub()
        self.fc = nn.Linear(12, 7, bias=False)
        self.relu = nn.ReLU()
        self.fc_out = nn.Linear(7, 3, bias=False)
        self.dequant = DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc_out(self.relu(self.fc(self.quant(x)))))


def per_tensor_model(engine: str):
    """Per-tensor symmetric weights (``default_weight_observer``), histogram activations."""
    torch.manual_seed(SEED + 2)
    model = ForumModel()
    model.fc_1 = nn.Linear(10, 9)
    model.qconfig = tq.QConfig(activation=tq.HistogramObserver.with_args(reduce_range=False),
                               weight=tq.default_weight_observer)
    batches = [torch.randn(4, 10) * 2 for _ in range(3)]
    return model, batches, (6, 10)


def no_bias_model(engine: str):
    """Two Linear layers with ``bias=False`` (bias() is None), default qconfig."""
    torch.manual_seed(SEED + 3)
    model = NoBiasModel()
    batches = [torch.randn(5, 12) for _ in range(3)]
    return model, batches, (4, 12)


# The builders every end-to-end test runs (name -> builder).
MODELS: dict[str, Callable] = {
    "forum": forum_model,
    "multilayer_flatten": multilayer_model,
    "multilayer_view": multilayer_view_model,
    "per_tensor": per_tensor_model,
    "no_bias": no_bias_model,
}


def build(builder: Callable, engine: str):
    """``(quantized model, example input shape)``: prepared, calibrated and converted under
    ``engine`` (which stays set in ``torch.backends.quantized.engine`` afterwards)."""
    torch.backends.quantized.engine = engine
    model, batches, shape = builder(engine)
    model.eval()
    if getattr(model, "qconfig", None) is None:
        model.qconfig = tq.get_default_qconfig(engine)
    torch.manual_seed(SEED)
    prepared = tq.prepare(model, inplace=False)
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    return tq.convert(prepared, inplace=False).eval(), shape
