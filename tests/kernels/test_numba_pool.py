"""The numba max pool (``qexact.kernels._numba_pool.max_pool_fast``) equals the NumPy definition
(``qexact.ops.pooling.max_pool`` on backend "numpy"): values, dtype, shape and strides, on every
engine's max pool kernel (ATen NCHW / channels_last, QNNPACK's clamped taps, XNNPACK's int8),
on hypothesis-drawn geometries (fixed seed) and layouts (NCHW, channels_last, strided slices,
ambiguous channels_last strides that PyTorch reads scrambled), and at the extremes."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.assertions import assert_bitexact  # noqa: E402

from qexact import QINT8, QUINT8, QParams  # noqa: E402
from qexact.errors import QexactError  # noqa: E402
from qexact.kernels import fast_available, using  # noqa: E402
from qexact.layout import to_channels_last  # noqa: E402
from qexact.ops.pooling import _as_2d, max_pool, prepare_pool  # noqa: E402
from qexact.ops.shape import unsqueeze  # noqa: E402
from qexact.qparams import QuantizedArray  # noqa: E402

if not fast_available():
    pytest.skip("the fast backend cannot run on this machine", allow_module_level=True)

from qexact.kernels._numba_pool import max_pool_fast  # noqa: E402

ENGINE_DTYPES = [("x86", QUINT8), ("fbgemm", QUINT8), ("qnnpack", QUINT8), ("onednn", QUINT8),
                 ("x86", QINT8), ("qnnpack", QINT8), ("xnnpack", QINT8)]
COMPARED = {"calls": 0, "elements": 0}


def layouts(x: np.ndarray) -> dict[str, np.ndarray]:
    """The same logical values in NCHW, channels_last and strided (non-dense) memory."""
    return {"nchw": np.ascontiguousarray(x), "channels_last": to_channels_last(x),
            "strided": np.repeat(x, 2, axis=-1)[..., ::2],
            "channels_last strided": to_channels_last(np.repeat(x, 2, axis=-1))[..., ::2]}


def check(values: np.ndarray, p, qtype, context: str) -> bool:
    """``max_pool_fast`` equals the NumPy path (values, dtype, shape, strides); False where
    the NumPy path refuses the call (nothing to compare)."""
    x = QuantizedArray(values, QParams.per_tensor(0.05, 0 if qtype is QINT8 else 7, qtype))
    try:
        with using("numpy"):
            expected = max_pool(x, p).values
    except QexactError:
        return False
    kernel = p.choose_kernel(x, values)
    actual = max_pool_fast(values, kernel, p)
    assert actual is not None, f"{context}: not covered ({kernel.name})"
    assert_bitexact(actual, expected, f"{context} ({kernel.name})")
    assert actual.strides == expected.strides, (
        f"{context} ({kernel.name}): strides {actual.strides} != {expected.strides}")
    with using("fast"):  # the op's own dispatch, where it calls max_pool_fast
        dispatched = max_pool(x, p).values
    assert_bitexact(dispatched, expected, f"{context} dispatched")
    assert dispatched.strides == expected.strides, f"{context} dispatched strides"
    COMPARED["calls"] += 1
    COMPARED["elements"] += expected.size
    return True


def random_values(rng, shape, qtype) -> np.ndarray:
    dtype = qtype.numpy_dtype
    info = np.iinfo(dtype)
    return rng.integers(int(info.min), int(info.max) + 1, shape, dtype=dtype)


def test_resnet_stem_shape_every_engine():
    """ResNet's max pool (3x3, stride 2, padding 1) on a conv output's channels_last layout."""
    rng = np.random.default_rng(1)
    for engine, qtype in ENGINE_DTYPES:
        x = random_values(rng, (2, 16, 23, 22), qtype)
        p = prepare_pool("max", 2, 3, 2, 1, engine=engine)
        for name, values in layouts(x).items():
            assert check(values, p, qtype, f"{engine} {qtype.name} {name}")


@seed(20261206)
@settings(max_examples=200, deadline=None, derandomize=True)
@given(batch=st.integers(1, 3), channels=st.integers(1, 19), height=st.integers(1, 11),
       width=st.integers(1, 11), kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), ceil_mode=st.booleans(),
       engine_dtype=st.sampled_from(ENGINE_DTYPES), data_seed=st.integers(0, 2**31))
def test_random_geometries(batch, channels, height, width, kernel, stride, dilation, pad,
                           ceil_mode, engine_dtype, data_seed):
    engine, qtype = engine_dtype
    padding = tuple(min(p, k // 2) for p, k in zip(pad, kernel))
    try:
        p = prepare_pool("max", 2, kernel, stride, padding, dilation, ceil_mode, engine=engine)
    except QexactError:
        return
    x = random_values(np.random.default_rng(data_seed), (batch, channels, height, width), qtype)
    for name, values in layouts(x).items():
        check(values, p, qtype, f"{engine} {qtype.name} {name} k{kernel} s{stride} p{padding} "
                                f"d{dilation} ceil={ceil_mode} shape {x.shape}")


@pytest.mark.parametrize("engine,qtype", ENGINE_DTYPES)
def test_extremes_and_padding_never_wins(engine, qtype):
    """Constant lowest / highest inputs, and lowest everywhere but one cell: padded taps never
    win ("valid"), clamped taps read the border (QNNPACK)."""
    info = np.iinfo(qtype.numpy_dtype)
    p = prepare_pool("max", 2, (3, 4), (1, 2), (1, 2), (1, 1), True, engine=engine)
    q = prepare_pool("max", 2, 3, 1, 1, engine=engine)
    dilated = prepare_pool("max", 2, 3, 1, 1, 2, engine=engine)  # clamped taps leave the window
    for fill in (int(info.min), int(info.max), 0):
        x = np.full((2, 9, 6, 7), fill, qtype.numpy_dtype)
        x[1, 3, 5, 6] = info.max if fill != info.max else info.min
        x[0, 8, 0, 0] = info.min + 1
        for name, values in layouts(x).items():
            for params in (p, q, dilated):
                check(values, params, qtype, f"{engine} fill {fill} {name}")


def test_ambiguous_channels_last_strides_are_read_scrambled():
    """Channels_last-contiguous with H == W == 1 suggests the contiguous format: the NHWC kernel's
    bytes are read as NCHW (``layout.nhwc_kernel_result``); also C == 1 and N == 1 corners."""
    rng = np.random.default_rng(2)
    for shape in [(3, 5, 1, 1), (1, 6, 1, 1), (2, 1, 5, 4), (1, 8, 3, 1), (1, 7, 1, 3)]:
        for engine, qtype in ENGINE_DTYPES:
            x = random_values(rng, shape, qtype)
            p = prepare_pool("max", 2, (min(2, shape[2]), min(2, shape[3])), 1, 0, engine=engine)
            for name, values in layouts(x).items():
                check(values, p, qtype, f"{engine} {qtype.name} {name} {shape}")


def test_max_pool1d_runs_as_2d_of_unsqueezed_input():
    """max_pool1d runs as a 2-D pool of ``unsqueeze(x, -2)`` (torch's strides for the new dim)."""
    rng = np.random.default_rng(3)
    for engine, qtype in ENGINE_DTYPES:
        p = prepare_pool("max", 1, 3, 2, 1, engine=engine)
        x = random_values(rng, (2, 12, 17), qtype)
        for values in (x, np.ascontiguousarray(x.transpose(0, 2, 1)).transpose(0, 2, 1)):
            check(unsqueeze(values, -2), _as_2d(p), qtype, f"{engine} {qtype.name} 1-d")
            expected = max_pool(QuantizedArray(values, QParams.per_tensor(0.1, 0, qtype)), p)
            with using("fast"):
                actual = max_pool(QuantizedArray(values, QParams.per_tensor(0.1, 0, qtype)), p)
            assert_bitexact(actual.values, expected.values, f"{engine} 1-d dispatched")
            assert actual.values.strides == expected.values.strides


def test_not_covered_returns_none():
    """3-D pools, float32 inputs and 3-D (unbatched) inputs are left to the NumPy path."""
    p3 = prepare_pool("max", 3, 2, engine="x86")
    x5 = np.zeros((1, 2, 4, 4, 4), np.uint8)
    qa5 = QuantizedArray(x5, QParams.per_tensor(0.1, 0, QUINT8))
    assert max_pool_fast(x5, p3.choose_kernel(qa5, x5), p3) is None
    p = prepare_pool("max", 2, 2, engine="x86")
    xf = np.zeros((1, 2, 4, 4), np.float32)
    assert max_pool_fast(xf, p.choose_kernel(xf, xf), p) is None
    x3 = np.zeros((2, 4, 4), np.uint8)
    qa3 = QuantizedArray(x3, QParams.per_tensor(0.1, 0, QUINT8))
    assert max_pool_fast(x3, p.choose_kernel(qa3, x3), p) is None


def test_report_counts():
    """Not a check: prints how much the tests above compared (run with -s)."""
    print(f"max_pool_fast compared on {COMPARED['calls']} calls, {COMPARED['elements']} "
          "elements, 0 mismatches")
