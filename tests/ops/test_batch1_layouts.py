"""1-D pools at batch 1 on channels_last-strided inputs: a quantized Conv1d returns (N, C, L) with
strides (C L, 1, C) (it runs as a channels_last conv2d). ATen's 1-D pools run as 2-D pools of
``x.unsqueeze(-2)``, whose strides ``(C L, 1, C L, C)`` are channels_last and suggest it, so the
NHWC kernel runs and its output is read as written. NumPy's ``expand_dims`` restrides the size-1
batch dim (``(C, 1, C L, C)`` at N == 1), which no longer suggests channels_last: qexact read the
NHWC kernel's bytes as NCHW and scrambled the pool's output (audio_conv1d at batch 1 on fbgemm, x86
and onednn: 11 of 12 outputs wrong; batches 2 and 3 exact). ``ops.shape.unsqueeze`` keeps torch's
strides.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from support.assertions import assert_bitexact

import qexact
from qexact import QINT8, QUINT8, QParams
from qexact.ops.pooling import adaptive_avg_pool, pool, prepare_adaptive_pool, prepare_pool
from qexact.qparams import QuantizedArray

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from support.fx_models import as_args, build_fx_model, random_input  # noqa: E402

warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _conv1d_like(rng, batch, channels, length, dtype):
    """Integers of shape (batch, C, L) (or (C, L) for batch None) stored as a Conv1d output is:
    channels innermost, strides (C L, 1, C); the torch tensor with the same strides."""
    shape = (channels, length) if batch is None else (batch, channels, length)
    qparams = QParams.per_tensor(float(10 ** rng.uniform(-3, 0)),
                                 int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    stored = rng.integers(dtype.qmin, dtype.qmax + 1,
                          size=shape[:-2] + (length, channels)).astype(dtype.numpy_dtype)
    values = np.swapaxes(stored, -1, -2)
    t = torch._make_per_tensor_quantized_tensor(torch.from_numpy(stored), qparams.scale,
                                                qparams.zero_point).transpose(-1, -2)
    assert t.stride() == tuple(s // values.itemsize for s in values.strides)
    return QuantizedArray(values, qparams), t


CASES = [(batch, channels, dtype) for batch in (1, 2, None) for channels in (1, 6, 16, 24, 33)
         for dtype in (QUINT8, QINT8)]


@pytest.mark.parametrize("batch,channels,dtype", CASES,
                         ids=[f"n{b}-c{c}-{d.name}" for b, c, d in CASES])
def test_pools_1d_of_channels_last_strided_input_vs_torch(engine, batch, channels, dtype):
    """max_pool1d, avg_pool1d and adaptive_avg_pool1d of a Conv1d-strided input equal PyTorch's,
    values and layout, at batch 1 (the regression), 2 and unbatched."""
    import torch.nn.functional as F

    if engine == "qnnpack" and dtype is QINT8:
        pytest.skip("PyTorch's qnnpack engine quantizes to quint8")
    rng = np.random.default_rng(channels * 10 + (batch or 0) + (dtype is QINT8) * 1000)
    x, t = _conv1d_like(rng, batch, channels, 23, dtype)
    runs = [
        ("max_pool1d(4)", lambda: pool(x, prepare_pool("max", 1, 4, engine=engine)),
         lambda: F.max_pool1d(t, 4)),
        ("max_pool1d(3, 2, 1)", lambda: pool(x, prepare_pool("max", 1, 3, 2, 1, engine=engine)),
         lambda: F.max_pool1d(t, 3, 2, 1)),
        ("avg_pool1d(3, 2, 1)", lambda: pool(x, prepare_pool("avg", 1, 3, 2, 1, engine=engine)),
         lambda: F.avg_pool1d(t, 3, 2, 1)),
        ("adaptive_avg_pool1d(1)",
         lambda: adaptive_avg_pool(x, prepare_adaptive_pool("avg", 1, 1, engine=engine)),
         lambda: F.adaptive_avg_pool1d(t, 1)),
        ("adaptive_avg_pool1d(5)",
         lambda: adaptive_avg_pool(x, prepare_adaptive_pool("avg", 1, 5, engine=engine)),
         lambda: F.adaptive_avg_pool1d(t, 5)),
    ]
    for label, ours, theirs in runs:
        context = f"{label} on {engine}, shape {tuple(t.shape)}, {dtype.name}"
        try:
            expected = theirs()
        except RuntimeError as error:  # qnnpack: unbatched pools ("Expected input to be 4-D")
            with pytest.raises(qexact.QexactError):
                ours()
            assert batch is None and engine == "qnnpack", f"{context}: {error}"
            continue
        got = ours()
        assert_bitexact(got.values, expected.int_repr().numpy(), context)
        values = np.asarray(got.values)  # the layout the next layer sees (size-1 dims aside)
        assert [s // values.itemsize for s, n in zip(values.strides, values.shape) if n > 1] == \
            [s for s, n in zip(expected.stride(), expected.shape) if n > 1], context


def test_unsqueezed_batch1_conv1d_output_suggests_channels_last():
    """The root cause, on the helper: the strides qexact gives the 2-D pool's input."""
    from qexact.layout import suggests_channels_last
    from qexact.ops.shape import unsqueeze

    values = np.swapaxes(np.zeros((1, 100, 16), np.uint8), 1, 2)  # (1, 16, 100), (1600, 1, 16)
    wide = unsqueeze(values, -2)
    assert wide.strides == tuple(torch.zeros(1, 100, 16).transpose(1, 2).unsqueeze(-2).stride())
    assert suggests_channels_last(wide)
    assert not suggests_channels_last(np.expand_dims(values, -2))  # NumPy's: (16, 1, 1600, 16)


BATCH1_ENGINES = ["fbgemm", "x86", "onednn", "qnnpack"]
"""audio_conv1d was wrong at batch 1 on fbgemm, x86 and onednn (channels_last conv outputs);
qnnpack is there for completeness."""


@pytest.mark.parametrize("engine", BATCH1_ENGINES)
def test_audio_conv1d_is_exact_at_batch_1(engine):
    previous = torch.backends.quantized.engine
    try:
        model, shape, kind = build_fx_model("audio_conv1d", engine)
        net = qexact.from_torch(model)
        for batch in (1, 2):
            for seed, scale in ((5, 1.0), (6, 4.0), (7, 0.25)):
                args = as_args(random_input(shape, kind, seed=seed, batch=batch, scale=scale))
                with torch.no_grad():
                    expected = model(*args).numpy()
                assert_bitexact(net(*[arg.numpy() for arg in args]), expected,
                                f"audio_conv1d on {engine}, batch {batch}, x{scale}")
    finally:
        torch.backends.quantized.engine = previous
