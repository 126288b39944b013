"""torchvision's quantizable models, built the way a user converts them (test support only).

torchvision 0.28.0 installs beside torch 2.13.0 but imports only after its ``nms`` and ``qnms``
operator schemas exist; we declare them with ``torch.library`` (the kernels are never called).
"""

from __future__ import annotations

import torch
from torch.ao import quantization as tq

_LIBRARY = None


def import_torchvision():
    """torchvision, importable beside this torch, or None where it is not installed."""
    global _LIBRARY
    try:
        import torchvision  # noqa: F401
        return torchvision
    except ImportError:
        return None
    except RuntimeError:  # "operator torchvision::nms does not exist"
        pass
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision


MODELS = {  # name -> (constructor keyword arguments, input side)
    "resnet18": ({}, 64),
    "mobilenet_v2": ({}, 64),
    "mobilenet_v3_large": ({}, 64),
    "shufflenet_v2_x1_0": ({}, 64),
    "googlenet": ({"aux_logits": False, "init_weights": True}, 64),
    "inception_v3": ({"aux_logits": False, "init_weights": True}, 80),
}


def build_torchvision(name: str, engine: str):
    """``(quantized model, input shape)``: random weights, BN statistics from a few train-mode
    batches, fused, calibrated and converted on ``engine``."""
    torchvision = import_torchvision()
    from torchvision.models import quantization

    kwargs, side = MODELS[name]
    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = getattr(quantization, name)(weights=None, quantize=False, **kwargs)
    shape = (1, 3, side, side)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((4,) + shape[1:]))
    model.eval()
    model.fuse_model()
    model.qconfig = tq.get_default_qconfig(engine)
    prepared = tq.prepare(model, inplace=False)
    with torch.no_grad():
        for _ in range(2):
            prepared(torch.randn((2,) + shape[1:]))
    del torchvision
    return tq.convert(prepared, inplace=False).eval(), shape
