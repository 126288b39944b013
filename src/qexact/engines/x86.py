"""The ``x86`` engine: not one backend. Linear always runs on FBGEMM (qlinear_prepack.cpp:
``FBGEMM || X86``); convolutions go to oneDNN only for symmetric weights, groups <= 100 and VNNI
(qconv_prepack.cpp, ``onednn_utils::should_use_onednn_quant``), otherwise to FBGEMM."""

from __future__ import annotations

from .base import Engine
from .fbgemm import FBGEMM_GEMM


def engine(isa: str) -> Engine:
    return Engine("x86", isa, linear=FBGEMM_GEMM,
                  description="PyTorch's x86 default: FBGEMM for Linear, oneDNN or FBGEMM for conv")
