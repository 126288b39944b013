"""A new engine is one module: an ``Engine`` made of existing tables, registered in ``ENGINES``,
runs whole models with no change to ops, importers or the CLI; a family it does not state is
refused by name."""

from __future__ import annotations

import os
from dataclasses import replace
from types import MappingProxyType

import numpy as np
import pytest

import qexact
from qexact import QUINT8, QParams, QuantizedArray
from qexact.engines import ENGINES, engine_names, get_engine
from qexact.engines import fbgemm, qnnpack_add
from qexact.engines.aten_kernels import ATEN_KERNELS
from qexact.errors import UnsupportedError
from qexact.ops.elementwise import binary, prepare_binary

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "v0_1")


def toy_engine(isa: str, kernels=None):
    """FBGEMM's GEMMs with QNNPACK's add: a backend no one ships, stated in four lines."""
    return replace(fbgemm.engine(isa), name="toy",
                   kernels=MappingProxyType(kernels if kernels is not None else
                                            {**ATEN_KERNELS, **qnnpack_add.KERNELS}))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ENGINES, "toy", toy_engine)
    yield "toy"


def test_every_registered_engine_states_every_aten_family():
    for name in engine_names():
        engine = get_engine(name, isa="avx2", aten_capability="avx2")
        assert set(ATEN_KERNELS) <= set(engine.kernels), name


def test_a_family_from_another_engine_runs_as_there(registered):
    """The toy engine's add is QNNPACK's: where QNNPACK's fixed point and ATen's float add
    differ (a shift of 32 in QNNPACK's scalar code), it gives QNNPACK's answer."""
    qparams = [QParams.per_tensor(s, z, QUINT8) for s, z in ((1.0, 0), (1.0, 0),
                                                             (1328.9736328125, 165))]
    a, b = np.array([0], np.uint8), np.array([255], np.uint8)
    outputs = {}
    for name in ("toy", "qnnpack", "fbgemm"):
        p = prepare_binary("add", *qparams, engine=get_engine(name, isa="avx2",
                                                               aten_capability="avx2"))
        outputs[name] = binary(QuantizedArray(a, qparams[0]), QuantizedArray(b, qparams[1]),
                               p).values
        if name == "toy":
            assert p.choose_kernel(a.shape, b.shape).name.startswith("QNNPACK add")
    assert outputs["toy"][0] == outputs["qnnpack"][0] == 255
    assert outputs["fbgemm"][0] == 165


def test_a_missing_family_is_refused_by_name():
    engine = toy_engine("avx2", {key: value for key, value in ATEN_KERNELS.items()
                                 if key != "binary"})
    qparams = QParams.per_tensor(0.1, 0, QUINT8)
    with pytest.raises(UnsupportedError, match=r"engine 'toy' has no binary kernel"):
        p = prepare_binary("add", qparams, qparams, qparams, engine=engine)
        binary(QuantizedArray(np.zeros(3, np.uint8), qparams),
               QuantizedArray(np.zeros(3, np.uint8), qparams), p)


def test_a_registered_engine_runs_a_saved_model(registered):
    """A model file saved for fbgemm, run on the toy engine: every op but add runs fbgemm's or
    ATen's kernels, so outputs equal fbgemm's wherever no add of equal shapes is involved."""
    path = os.path.join(DATA, "conv1d_audio.fbgemm.qexact")
    arrays = np.load(path[:-len(".qexact")] + ".npz", allow_pickle=False)
    net = qexact.load(path, engine="toy")
    assert net.engine.name == "toy"
    out = net(arrays["input_0"])
    assert np.array_equal(np.asarray(out).view(np.uint32), arrays["output_0"].view(np.uint32))


def test_an_inexact_kernel_is_refused_unless_allowed():
    """``Engine.inexact_kernel``: a float kernel whose order qexact does not reproduce is refused,
    naming the opt-in; ``Net(..., allow_inexact=...)`` / ``qexact.load`` carry the opt-in."""
    engine = get_engine("fbgemm")
    with pytest.raises(UnsupportedError, match=r"allow_inexact=\('matmul',\)"):
        engine.inexact_kernel("matmul", "MKL's sgemm order")
    allowed = replace(engine, allowed_inexact=frozenset({"matmul"}))
    assert allowed.inexact_kernel("matmul", "MKL's sgemm order") == "MKL's sgemm order"
    path = os.path.join(DATA, "conv1d_audio.fbgemm.qexact")
    assert qexact.load(path, allow_inexact=("matmul",)).engine.allowed_inexact == {"matmul"}
    assert qexact.load(path).engine.allowed_inexact == frozenset()
