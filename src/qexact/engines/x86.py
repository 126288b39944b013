"""The ``x86`` engine: not one backend. Linear always runs on FBGEMM (qlinear_prepack.cpp:
``FBGEMM || X86``); convolutions go to oneDNN only for symmetric weights, groups <= 100, no output
padding and VNNI (qconv_prepack.cpp, ``onednn_utils::should_use_onednn_quant``), otherwise to
FBGEMM: always FBGEMM on AVX2."""

from __future__ import annotations

from . import fbgemm, onednn
from .base import AVX512_VNNI, ConvGeometry, ConvKernel, Engine
from .fbgemm import FBGEMM_GEMM, KERNELS


def uses_onednn_conv(geometry: ConvGeometry, isa: str) -> bool:
    """pytorch aten/src/ATen/native/quantized/cpu/OnednnUtils.h ``should_use_onednn_quant``."""
    return (isa == AVX512_VNNI and geometry.symmetric_weights and geometry.groups <= 100
            and not any(geometry.output_padding))


def conv_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    if uses_onednn_conv(geometry, isa):
        return onednn.conv_kernel(geometry, isa)
    return fbgemm.conv_kernel(geometry, isa)


def conv_transpose_kernel(geometry: ConvGeometry, isa: str) -> ConvKernel:
    """The same dispatch as conv (qconv_prepack.cpp): oneDNN's deconvolution only with VNNI,
    symmetric weights, groups <= 100 and no output padding; else FBGEMM's transposed im2col."""
    if uses_onednn_conv(geometry, isa):
        return onednn.conv_transpose_kernel(geometry, isa)
    return fbgemm.conv_transpose_kernel(geometry, isa)


def engine(isa: str) -> Engine:
    return Engine("x86", isa, linear=FBGEMM_GEMM, conv=conv_kernel,
                  conv_transpose=conv_transpose_kernel, kernels=KERNELS,
                  description="PyTorch's x86 default: FBGEMM for Linear, oneDNN or FBGEMM for conv")
