"""ATen's float32 attention kernels on CPU: the ``"attention"`` family.

Every PyTorch engine runs the same float kernels (FX conversion leaves ``nn.MultiheadAttention``
and ``F.scaled_dot_product_attention`` in float32). Measured against torch 2.13.0 on this host
(ATen capability AVX512, MKL 2024.2), tests/ops/test_attention.py.

``nn.MultiheadAttention`` in inference (``eval``, ``batch_first``, self-attention ``m(x, x, x)``,
no masks, grad disabled, an even ``num_heads``: torch/nn/modules/activation.py's fast path)
calls ``torch._native_multi_head_attention``, whose CPU kernel (pytorch
aten/src/ATen/native/transformers/attention.cpp ``native_multi_head_attention_cpu``) is::

    qkv = x @ W_in^T                       at::matmul, (B*T, E) x (E, 3E): ATen's float matmul
    q = f32(f32(qkv_q + b_q) * c)          c = f32(1.0 / sqrtf(d))   (transform_bias_rescale_qkv)
    k = f32(qkv_k + b_k);  v = f32(qkv_v + b_v)          heads split: (B, H, T, d)
    s = bmm(q, k^T)                        (B*H) x (T, d) x (d, T)
    p = softmax(s, -1)                     ATen's softmax_lastdim kernel (op softmax)
    o = bmm(p, v)                          (B*H) x (T, T) x (T, d)
    y = addmm(b_out, o', W_out^T)          o' = o transposed to (B*T, E); at::linear -> addmm
                                           (MKL sgemm with beta = 1: engines.aten_matmul.mkl_addmm)
    weights (need_weights): at::sum(p, 1) / H   (not reproduced: its order was not found)

Every product is the ``"matmul"`` family's (engines/aten_matmul.py): reproduced inside its
measured MKL rule, else ``inexact_kernel("matmul", ...)``. (Measured: the flash-attention branch
that some builds take for ``d % 8 == 0`` is not taken by this CPU kernel.)

``F.scaled_dot_product_attention`` (no mask, no dropout, not causal) on CPU float32 runs the
flash-attention kernel (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp
``cpu_flash_attention``): for each (batch, head) and block of ``q_split`` query rows
(``q_split`` 32 below 192 query rows, 64 below 768, else 256) and each block of up to
``kv_split = 512`` keys::

    s = gemm(q_block, k_block^T)                       cpublas::gemm -> MKL sgemm, 1 thread
    s = f32(s * scale)                                 scale = f32(1 / sqrt(d)) (double)
    m = max(s)   e = exp(f32(s - m))                   exp: exp_u20 on whole 16-lane vectors,
                                                       the scalar tail f32(exp(double(z)))
    S = vec_reduce_all(+, lane sums) then + tail elements in order
    o = gemm(e, v_block)                               MKL sgemm, 1 thread
    out = f32(o * f32(1 / S))

``addmm`` (MKL sgemm with beta = 1, C holding the bias): inside the matmul rule, C starts at
the bias and each K block's FMA chain (from 0) is added to it in order: K <= 192
``f32(chain + b)``; 192 < K <= 384 ``f32(f32(f32(b + half_1) + half_2) + f32(a[K-1] b[K-1]))``
(the last term for odd K); K > 384 ``b``, then each block of 192 added. Measured: 0 of 10,000+
outputs differ for K 100-1000 (``f32(product + b)``, the bias last, differs for K > 192 on
~30 % of outputs). Outside the rule: the product in NumPy's order, then ``+ b`` (inexact).

More than one key block rescales the running sum and output with ``exp(m_old - m_new)``; that
path (more than 512 keys) is not measured: ``inexact_kernel("attention", ...)``.

``nn.TransformerEncoderLayer`` in inference (ops/transformer_layer.py; the fast path's
conditions: importers/torch_transformer_layer.py) runs ``torch._transformer_encoder_layer_fwd``
(``TRANSFORMER_LAYER`` below). Where the module takes its Python slow path (batch_first=False,
an odd nhead, unequal norm eps, the MHA fast path disabled, grad enabled) the sums are the same
with the module's activation, and its attention is either the MHA kernel above or
``F.multi_head_attention_forward``: ``linear`` in-projection (``addmm`` with C = bias on a
contiguous (T, B, E) input; on the transposed view of a batch_first input ``at::matmul`` then
``add_(bias)``, ``f32(x W^T + b)``), heads split, the flash kernel above, heads merged, ``addmm``
out-projection. Measured bit for bit against torch 2.13.0, every engine: 0 of ~500,000 outputs
differ (d_model 32-128, nhead 2-8, 12-64 tokens, batch 1-3, relu / gelu / gelu tanh,
norm_first both, fast and each slow path).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext

import numpy as np

from ..errors import UnsupportedError
from ..rounding import f32, fma_float32

MHA_SOURCE = ("pytorch aten/src/ATen/native/transformers/attention.cpp "
              "(native_multi_head_attention_cpu, transform_bias_rescale_qkv_cpu, bmm_nt, "
              "masked_softmax, bmm_nn, transform0213_gemm_nt_bias)")
FLASH_SOURCE = ("pytorch aten/src/ATen/native/cpu/FlashAttentionKernel.cpp (cpu_flash_attention, "
                "_mul_reduce_max_fusion_kernel, _exp_reduce_sum_fusion_kernel); "
                "aten/src/ATen/cpu/vec/vec512/vec512_float.h (exp_u20)")

TRANSFORMER_LAYER_SOURCE = (
    "pytorch aten/src/ATen/native/transformers/transformer.cpp (transformer_encoder_layer_forward,"
    " ffn, linear_for_ffn); aten/src/ATen/native/LinearAlgebra.cpp (addmm_activation_out_cpu)")
TRANSFORMER_LAYER = """\
x = src                                    float32 (B, T, E), batched, dense (not nested)
norm_first:  x = layer_norm(x, norm1)      at::layer_norm: the float LayerNorm kernel
a = native_multi_head_attention(x, x, x)   the MHA kernel above, need_weights = false
x = f32(a + src)                           add_in_place (a.add_(src))
not norm_first:  x = layer_norm(x, norm1)
r = x;  norm_first:  x = layer_norm(x, norm2)
u = _addmm_activation(b1, x', W1^T)        x' = x viewed (B*T, E); addmm_impl_cpu_ (MKL sgemm,
                                           beta = 1: C starts at b1), then in place:
    relu:  at::relu_(u)                    u < 0 -> +0 (-0.0 and NaN kept)
    gelu:  at::gelu_(u)                    approximate 'none' (also for nn.GELU('tanh')): the
                                           "gelu" family (oneDNN gelu_erf when enabled: contiguous)
f = addmm(b2, u, W2^T)                     MKL sgemm, beta = 1
x = f32(f + r)                             add_in_place
not norm_first:  x = layer_norm(x, norm2)
"""
"""``transformer_encoder_layer_forward``'s CPU steps (the ``"matmul"``, ``"attention"``,
``"float_normalization"`` and ``"gelu"`` families' kernels)."""

FLASH_Q_SPLITS = ((768, 256), (192, 64), (0, 32))
"""``flash_attention_kernel_impl``: (query rows at least, q_split_size)."""
FLASH_KV_SPLIT = 512
"""``kv_split_size``: keys per block; more keys take the (unmeasured) rescaling path."""

LN_FLT_MIN, LN_FLT_MAX = np.uint32(0xc2aeac50).view(np.float32), np.uint32(0x42b17218).view(
    np.float32)
LOG2E, LN2 = np.uint32(0x3fb8aa3b).view(np.float32), np.uint32(0x3f317218).view(np.float32)
EXP_U20_COEFFICIENTS = tuple(np.float32(c) for c in (0.00828929059, 0.0418978221, 0.166676521,
                                                       0.499991506, 0.999999701, 1.0))
"""``Vectorized<float>::exp_u20``'s polynomial, highest degree first (1/5! .. 1/1!, 1)."""


def exp_u20(x) -> np.ndarray:
    """``Vectorized<float>::exp_u20`` (vec512_float.h; the AVX2 build has the same steps)::

        src = max(min(x, ln_flt_max), ln_flt_min)
        n = floor(fmaf(src, log2e, 0.5));  r = fmaf(-n, ln2, src)
        p = Horner with fmaf over the coefficients (1/5! .. 1/1!, 1)
        y = f32(f32(p * 2^(n-1)) * 2)   (2^(n-1) = 0 where x < ln_flt_min)
    """
    x = np.asarray(x, np.float32)
    below = x < LN_FLT_MIN
    src = np.where(x < LN_FLT_MAX, x, LN_FLT_MAX)  # _mm512_min_ps(x, max): x < max ? x : max
    src = np.where(src > LN_FLT_MIN, src, LN_FLT_MIN).astype(np.float32)
    n = np.floor(fma_float32(src, LOG2E, np.float32(0.5))).astype(np.float32)
    r = fma_float32(-n, LN2, src)
    p = np.full(x.shape, EXP_U20_COEFFICIENTS[0], np.float32)
    for coefficient in EXP_U20_COEFFICIENTS[1:]:
        p = fma_float32(r, p, coefficient)
    bits = ((n.astype(np.int64) - 1 + 127) & 0x1FF) << 23
    power = np.where(below, np.float32(0), (bits & 0xFFFFFFFF).astype(np.uint32).view(np.float32))
    with np.errstate(all="ignore"):
        return f32(f32(p * power) * np.float32(2))


def expf_nearest(x) -> np.ndarray:
    """``f32(exp(double(x)))``: the flash kernel's scalar tail (``exp`` of a float: measured to
    give exp rounded to the nearest float, not glibc's ``expf``; 0 of 20,000 differ). Computed
    as NumPy's float64 exp rounded to float32; where that lies within 2^-40 (relative) of a
    float32 rounding midpoint the exact value decides (``decimal``, 40 digits)."""
    x = np.asarray(x, np.float32)
    with np.errstate(all="ignore"):
        wide = np.exp(x.astype(np.float64))
        out = wide.astype(np.float32)
        below = np.nextafter(out, np.float32(-np.inf)).astype(np.float64)
        above = np.nextafter(out, np.float32(np.inf)).astype(np.float64)
        value = out.astype(np.float64)
        near = (np.abs(wide - (value + below) / 2) <= np.abs(wide) * 2.0 ** -40) | (
            np.abs(wide - (value + above) / 2) <= np.abs(wide) * 2.0 ** -40)
    near &= np.isfinite(wide) & (wide > 0)
    if np.any(near):
        flat, exact = out.reshape(-1), near.reshape(-1)
        with localcontext() as context:
            context.prec = 40
            for i in np.flatnonzero(exact):
                flat[i] = np.float32(float(Decimal(float(x.reshape(-1)[i])).exp()))
        out = flat.reshape(out.shape)
    return out


@dataclass(frozen=True)
class AttentionKernel:
    """ATen's CPU attention on one engine: ``matmul``: the ``"matmul"`` family at the call's
    thread count (the MHA products; MKL splits a single product's rows between threads);
    ``block_matmul``: the same at one thread (the flash kernel's gemms run inside its parallel
    loop); ``softmax``: the ``"softmax"`` family (``SoftmaxKernel``); ``lanes``: float32 lanes of
    ``Vectorized<float>``; ``vector_exp``/``scalar_exp``: the flash kernel's exps;
    ``refuse``: ``engine.inexact_kernel`` bound to ``"attention"``."""

    name: str
    source: str
    matmul: object
    block_matmul: object
    softmax: object
    lanes: int
    vector_exp: object = exp_u20
    scalar_exp: object = expf_nearest
    q_splits: tuple = FLASH_Q_SPLITS
    kv_split: int = FLASH_KV_SPLIT
    refuse: object = None

    @property
    def inexact(self) -> str:
        return self.matmul.inexact

    def q_split(self, query_rows: int) -> int:
        for at_least, split in self.q_splits:
            if query_rows >= at_least:
                return split
        raise AssertionError("unreachable")


def choose_attention(engine, num_threads: int) -> AttentionKernel:
    """The ``"attention"`` family: ATen's native MHA and flash-attention CPU kernels."""
    from .aten import VECTOR_LANES_FLOAT
    from .aten_float import KERNEL_CAPABILITY

    capability = KERNEL_CAPABILITY.get(engine.aten_capability)
    if capability is None:
        raise UnsupportedError(f"float32 attention at ATen capability "
                               f"{engine.aten_capability!r} is not supported; supported: "
                               f"{sorted(KERNEL_CAPABILITY)}")
    return AttentionKernel(f"ATen attention ({capability})", f"{MHA_SOURCE}; {FLASH_SOURCE}",
                           engine.kernel("matmul", int(num_threads)),
                           engine.kernel("matmul", 1), engine.kernel("softmax", False),
                           VECTOR_LANES_FLOAT[capability],
                           refuse=lambda why: engine.inexact_kernel("attention", why))


KERNELS: dict = {"attention": choose_attention}
"""This module's entries of the ATen kernel table (``aten_kernels.ATEN_KERNELS``)."""
