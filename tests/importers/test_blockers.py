"""Every blocker at once: a model with several constructs qexact does not support gets ONE
UnsupportedError naming each (with its place: module path, the line of ``forward``) and the
supported lists once; nodes reading a refused node's output are not reported again. The same
for eager/FX capture and for TorchScript."""

from __future__ import annotations

import inspect

import pytest

import qexact

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
nn = torch.nn


class ThreeBlockers(nn.Module):
    """A converted conv, then three constructs qexact refuses: torch.cumsum, torch.fliplr (in
    forward) and nn.Softshrink (a module), each followed by ops reading its output."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shrink = nn.Softshrink(0.25)

    def forward(self, x):
        y = self.dequant(self.conv(self.quant(x)))
        a = torch.cumsum(y, 1)
        b = torch.fliplr(y)
        c = self.shrink(y)
        return torch.flatten(a, 1) + torch.flatten(b, 1) + torch.flatten(c, 1) * 2


def _line_of(text: str) -> int:
    lines, start = inspect.getsourcelines(ThreeBlockers.forward)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _converted(engine: str = "qnnpack"):
    torch.backends.quantized.engine = engine
    torch.manual_seed(0)
    model = ThreeBlockers().eval()
    model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
    for name in ("shrink",):
        getattr(model, name).qconfig = None
    prepared = torch.ao.quantization.prepare(model)
    prepared(torch.randn(2, 3, 6, 6))
    return torch.ao.quantization.convert(prepared).eval()


def _assert_all_three(message: str) -> None:
    assert message.startswith("3 operations of "), message
    assert "cumsum" in message and "fliplr" in message and "Softshrink" in message, message
    assert f"test_blockers.py:{_line_of('cumsum')}" in message, message
    assert f"test_blockers.py:{_line_of('fliplr')}" in message, message
    # ops reading a refused output (flatten, +, *) are not reported again
    assert "flatten" not in message.split("\nsupported")[0], message
    # each supported list once, after the items
    for kind in ("functions", "modules"):
        assert message.count(f"supported {kind}:") <= 1, message


def test_eager_capture_names_every_unsupported_op_in_one_error():
    with pytest.raises(qexact.UnsupportedError) as info:
        qexact.from_torch(_converted())
    _assert_all_three(str(info.value))
    assert "'shrink'" in str(info.value)


def test_torchscript_capture_names_every_unsupported_op_in_one_error(tmp_path):
    model = _converted()
    path = tmp_path / "blockers.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, 6, 6)), str(path))
    with pytest.raises(qexact.UnsupportedError) as info:
        qexact.from_torch(str(path), engine="qnnpack")
    message = str(info.value)
    assert message.startswith("3 operations of "), message
    for kind in ("aten::cumsum", "aten::fliplr", "aten::softshrink"):
        assert kind in message, message
    assert f"test_blockers.py:{_line_of('cumsum')}" in message, message
    assert "'shrink'" in message, message  # the module path


def test_one_blocker_keeps_its_own_message():
    class One(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    with pytest.raises(qexact.UnsupportedError, match=r"at 'cumsum' in One.forward .*"
                       r"test_blockers.py:\d+\): function torch.cumsum is not supported; "
                       r"supported functions: "):
        qexact.from_torch(One())


@pytest.mark.parametrize("mode", ["eager", "fx", "qat", "pt2e"])
def test_a_prepared_model_not_converted_is_named_as_such(mode):
    """A newcomer imports the prepared model (observers still in it) instead of the converted
    one: the error says so and what to call, not what observers do to a tracer."""
    import warnings

    from torch.ao.quantization import get_default_qat_qconfig, get_default_qconfig, prepare
    from torch.ao.quantization import prepare_qat
    from torch.ao.quantization.quantize_fx import prepare_fx

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.fc = torch.ao.quantization.QuantStub(), nn.Linear(4, 3)
            self.dequant = torch.ao.quantization.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.fc(self.quant(x)))

    example = (torch.rand(2, 4),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "pt2e":
            pytest.importorskip("torchao")
            from support.pt2e import _quantizer
            from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

            model = prepare_pt2e(torch.export.export(nn.Sequential(nn.Linear(4, 3)).eval(),
                                                     example).module(), _quantizer("x86"))
        elif mode == "fx":
            model = prepare_fx(nn.Sequential(nn.Linear(4, 3)).eval(),
                               {"": get_default_qconfig("x86")}, example)
        elif mode == "qat":
            model = Small().train()
            model.qconfig = get_default_qat_qconfig("x86")
            model = prepare_qat(model)
        else:
            model = Small().eval()
            model.qconfig = get_default_qconfig("x86")
            model = prepare(model)
        model(*example)
    with pytest.raises(qexact.UnsupportedError, match=r"prepared but not converted: it still "
                       r"holds \d+ observer\(s\), the first '[\w.]+' \(\w+\).*convert"):
        qexact.from_torch(model, example_inputs=example, engine="x86")
