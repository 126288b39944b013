"""PT2E models against the runtimes that deploy them, bit for bit.

- ``xnnpack``: the model quantized with ``XNNPACKQuantizer``, lowered with ``XnnpackPartitioner``
  and run by ExecuTorch's runtime (its Python bindings);
- ``inductor``: quantized with ``X86InductorQuantizer`` and compiled by ``torch.compile`` with
  freezing (the deployment mode);
- ``pt2e_eager``: the converted model run as it is: its quantize/dequantize are exact, its float
  GEMMs are not reproduced (``engines/pt2e_eager.py``); the share of identical outputs is checked.

Inputs: several seeds at scales 0.5 to 8 (the largest saturate the input quantize).
"""

from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")
pytest.importorskip("executorch")

import qexact  # noqa: E402
from tests.support import pt2e  # noqa: E402
from tests.support.reporting import print_counts  # noqa: E402

pytestmark = pytest.mark.torch
SEEDS_AND_SCALES = [(seed, scale) for seed in range(10, 14) for scale in (0.5, 1.0, 3.0, 8.0)]
STATS: dict = collections.defaultdict(collections.Counter)
VNNI = qexact.detect_isa() == "avx512_vnni"


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    print_counts(request, STATS)


def _compare(name: str, engine: str, net, reference) -> None:
    for seed, scale in SEEDS_AND_SCALES:
        x = pt2e.inputs(name, seed, scale).numpy()
        mine, theirs = net(x), reference(x)
        STATS[f"{engine} {name}"].update(cases=1, elements=theirs.size)
        assert pt2e.differing(mine, theirs) == 0, f"{engine} {name} seed {seed} scale {scale}"


@pytest.mark.parametrize("name", sorted(pt2e.PT2E_MODELS))
def test_xnnpack_equals_the_executorch_runtime(name):
    converted, example = pt2e.quantized(name, "xnnpack")
    net = qexact.from_torch(converted, example_inputs=(example,))
    assert net.engine.name == "xnnpack"  # the default for qint8 activations
    _compare(name, "xnnpack", net, pt2e.executorch_runtime(name))


@pytest.mark.parametrize("name", sorted(pt2e.DYNAMIC_MODELS))
def test_dynamic_xnnpack_equals_the_executorch_runtime(name):
    """XNNPACKQuantizer(is_dynamic=True): ExecuTorch lowers the per-tensor dynamic quantize per
    row (qd8_f32_qc8w); the eager model differs from the runtime on most outputs."""
    converted, example = pt2e.quantized(name, "xnnpack_dynamic")
    net = qexact.from_torch(converted, example_inputs=(example,))
    assert net.engine.name == "xnnpack"
    assert any(node.op == "linear_dynamic" for node in net.graph.nodes)
    _compare(name, "xnnpack dynamic", net, pt2e.executorch_runtime(name, "xnnpack_dynamic"))


def test_dynamic_quantization_is_refused_on_engines_without_its_kernel():
    converted, example = pt2e.quantized("mlp3d", "xnnpack_dynamic")
    with pytest.raises(qexact.UnsupportedError, match="no dynamically quantized Linear"):
        qexact.from_torch(converted, example_inputs=(example,), engine="pt2e_eager")


_NOT_ON_INDUCTOR = pytest.mark.skip(reason="engine inductor does not yet run this model's "
                                   "non-GEMM ops (pt2e.XNNPACK_ONLY)")
INDUCTOR_MODELS = [pytest.param(name, marks=(_NOT_ON_INDUCTOR,) if name in pt2e.XNNPACK_ONLY
                                else () if name in ("small_cnn", "inductor_mix")
                                else pytest.mark.slow)
                   for name in sorted(pt2e.MODELS) if name not in pt2e.FLOAT_UNDER_INDUCTOR]
EAGER_MODELS = sorted(pt2e.PT2E_MODELS)


@pytest.mark.skipif(not VNNI, reason="engine inductor is modelled on AVX512-VNNI only")
@pytest.mark.parametrize("name", INDUCTOR_MODELS)
def test_inductor_equals_torch_compile_with_freezing(name):
    converted, example = pt2e.quantized(name, "inductor")
    net = qexact.from_torch(converted, example_inputs=(example,))
    assert net.engine.name == "inductor"  # the default for quint8 activations
    _compare(name, "inductor", net, pt2e.inductor_compiled(name))


@pytest.mark.skipif(not VNNI, reason="engine inductor is modelled on AVX512-VNNI only")
@pytest.mark.slow
def test_inductor_refuses_the_ceil_mode_max_pool_torch_compile_computes_without_it():
    converted, example = pt2e.quantized("max_pool_ceil", "inductor")
    x = pt2e.inputs("max_pool_ceil", 10)
    with torch.no_grad():
        eager_shape = converted(x).shape
    assert pt2e.inductor_compiled("max_pool_ceil")(x.numpy()).shape != eager_shape  # the reason
    with pytest.raises(qexact.UnsupportedError, match="ceil_mode.*another shape"):
        qexact.from_torch(converted, example_inputs=(example,))


@pytest.mark.skipif(not VNNI, reason="engine inductor is modelled on AVX512-VNNI only")
def test_inductor_refuses_a_linear_it_runs_as_a_float_matmul():
    converted, example = pt2e.quantized("permute_head", "inductor")  # Linear on (N, H, W, C)
    with pytest.raises(qexact.UnsupportedError, match="4-D input as a float32 matmul"):
        qexact.from_torch(converted, example_inputs=(example,))


@pytest.mark.parametrize("name", EAGER_MODELS)
def test_pt2e_eager_differs_only_where_the_float_gemm_rounds_otherwise(name):
    """PyTorch's float GEMM order is not reproduced (engines/pt2e_eager.py): output codes may
    differ, by one step, where the float sum lands within its rounding error of a rounding
    boundary; counted here, and held to a small share."""
    converted, _ = pt2e.quantized(name, "xnnpack")  # every output is quantized, then dequantized
    net = qexact.from_torch(converted, engine="pt2e_eager")
    assert net.engine.inexact
    differ = total = 0
    for seed, scale in SEEDS_AND_SCALES:
        x = pt2e.inputs(name, seed, scale)
        with torch.no_grad():
            theirs = converted(x).numpy()
        mine = net(x.numpy())
        steps = np.abs(mine.astype(np.float64) - theirs) / net.run_quantized(x.numpy()).scale
        assert np.all(steps < 1.5), "more than one output step apart"
        differ += pt2e.differing(mine, theirs)
        total += theirs.size
    STATS[f"pt2e_eager {name}"].update(elements=total, differing=differ)
    assert differ <= max(2, total // 100)


def test_pt2e_eager_float_outputs_are_within_the_float_gemms_rounding():
    """An Inductor-quantized model ends in a float Linear: its float32 bits are not reproduced
    (a stated inexact path, not an exactness test), only its value to float32 rounding."""
    converted, _ = pt2e.quantized("mlp", "inductor")
    net = qexact.from_torch(converted, engine="pt2e_eager")
    for seed, scale in SEEDS_AND_SCALES[:4]:
        x = pt2e.inputs("mlp", seed, scale)
        with torch.no_grad():
            theirs = converted(x).numpy()
        np.testing.assert_allclose(net(x.numpy()), theirs, rtol=1e-5,  # float-ok
                                   atol=1e-6 * float(np.abs(theirs).max()))  # float-ok


def test_an_exported_model_that_is_not_quantized_is_named_as_such():
    converted, _ = pt2e.quantized("conv1d", "inductor")  # X86InductorQuantizer skips Conv1d
    with pytest.raises(qexact.UnsupportedError, match="not quantized"):
        qexact.from_torch(converted)


def test_every_form_of_a_pt2e_model_imports_alike(tmp_path):
    """The GraphModule, its ExportedProgram and a .pt2 file of it give one net."""
    converted, example = pt2e.quantized("small_cnn", "xnnpack")
    program = torch.export.export(converted, (example,))
    torch.export.save(program, tmp_path / "model.pt2")
    x = pt2e.inputs("small_cnn", 5, 2.0).numpy()
    expected = qexact.from_torch(converted)(x)
    for form in (program, str(tmp_path / "model.pt2"), tmp_path / "model.pt2"):
        assert pt2e.differing(qexact.from_torch(form)(x), expected) == 0


def test_a_saved_xnnpack_model_runs_where_torch_cannot_be_imported(tmp_path):
    converted, _ = pt2e.quantized("small_cnn", "xnnpack")
    qexact.save(qexact.from_torch(converted), tmp_path / "model.qexact")
    x = pt2e.inputs("small_cnn", 6, 1.0).numpy()
    np.save(tmp_path / "x.npy", x)
    script = ("import sys; sys.modules['torch'] = None\n"
              "import numpy as np, qexact\n"
              f"net = qexact.load(r'{tmp_path}/model.qexact')\n"
              f"np.save(r'{tmp_path}/y.npy', net(np.load(r'{tmp_path}/x.npy')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert pt2e.differing(np.load(tmp_path / "y.npy"), pt2e.executorch_runtime("small_cnn")(x)) == 0


class _Unsupported(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 4)

    def forward(self, x):
        return torch.softmax(self.out(torch.nn.functional.gelu(self.fc(x))), dim=-1)


def test_every_unsupported_op_is_named_at_once_with_its_module():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.randn(2, 8)
    prepared = prepare_pt2e(torch.export.export(_Unsupported().eval(), (x,)).module(),
                            pt2e._quantizer("xnnpack"))
    prepared(x)
    with pytest.raises(qexact.UnsupportedError) as error:
        qexact.from_torch(convert_pt2e(prepared))
    message = str(error.value)
    assert "gelu" in message and "softmax" in message and "2 op(s)" in message, message
    assert "fc" not in message.split("gelu")[0] or "(Linear)" not in message  # not the Linear
    assert "Supported ATen ops" in message and "linear" in message


def test_a_model_of_another_quantizer_is_refused_by_the_engine():
    converted, _ = pt2e.quantized("mlp", "inductor")
    with pytest.raises(qexact.QuantParamError, match="qint8"):
        qexact.from_torch(converted, engine="xnnpack")


def test_a_torchao_quantize_model_is_named_as_such():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(16, 16)).eval()
    quantize_(model, Int8WeightOnlyConfig())
    with pytest.raises(qexact.UnsupportedError, match="quantize_"):
        qexact.from_torch(model)


def test_diagnose_says_numbers_of_eager_pt2e_are_not_the_devices():
    """Numbers computed as eager PT2E computes them, checked against the xnnpack deployment:
    diagnose names ``wrong_engine`` with pt2e_eager."""
    converted, _ = pt2e.quantized("mlp", "xnnpack")
    net = qexact.from_torch(converted)
    x = np.concatenate([pt2e.inputs("mlp", seed, 3.0).numpy() for seed in range(200)])
    theirs = qexact.from_torch(converted, engine="pt2e_eager")(x)
    assert np.any(theirs != net(x))
    finding = qexact.diagnose(net, [x], theirs).findings[0]
    assert finding.id == "wrong_engine" and "pt2e_eager" in finding.variant
    assert "XNNPACK" in finding.message
