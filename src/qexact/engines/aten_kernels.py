"""ATen's kernel table: what every PyTorch engine runs for the op families beyond the GEMMs,
unless it states otherwise (the qnnpack engine hands some to QNNPACK operators).

``ATEN_KERNELS`` maps an op family to ``choose(engine, ...)`` (see ``Engine.kernels``); each
family's entries live with its numerics, one module per family.
"""

from __future__ import annotations

from types import MappingProxyType

from . import (aten_activations, aten_attention, aten_elementwise, aten_embedding, aten_float,
               aten_matmul, aten_normalization, aten_pooling, aten_quantize, aten_rnn)

ATEN_KERNELS = MappingProxyType({
    **aten_elementwise.KERNELS,
    **aten_activations.KERNELS,
    **aten_pooling.KERNELS,
    **aten_normalization.KERNELS,
    **aten_quantize.KERNELS,
    **aten_embedding.KERNELS,
    **aten_float.KERNELS,
    **aten_rnn.KERNELS,
    **aten_matmul.KERNELS,
    **aten_attention.KERNELS,
})
