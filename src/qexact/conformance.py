"""``run_conformance``: a randomized differential sweep of every supported op x engine against
the installed PyTorch (the data behind ``qexact conformance``). Needs torch.

Each op registers a case generator with ``@conformance_case("name")``: given an engine and a
NumPy generator, it draws parameters and inputs (odd sizes, tails shorter than the SIMD width,
ties on power-of-two scales), runs PyTorch's kernel and qexact's, and returns both outputs.
Every element is compared exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .dtypes import QINT8, QINT32, QUINT8
from .errors import ImporterError, UnsupportedError
from .qparams import QParams, QuantizedArray

ENGINES = ("fbgemm", "x86", "qnnpack", "onednn")
CASES: dict[str, Callable] = {}


def conformance_case(name: str):
    def register(generator):
        CASES[name] = generator
        return generator

    return register


@dataclass
class OpResult:
    op: str
    engine: str
    cases: int = 0
    elements: int = 0
    mismatches: int = 0
    first_mismatch: str = ""


@dataclass
class ConformanceReport:
    torch_version: str
    isa: str
    seed: int
    results: list[OpResult] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return sum(result.mismatches for result in self.results)

    def to_markdown(self) -> str:
        lines = [f"# qexact conformance (torch {self.torch_version}, isa {self.isa}, "
                 f"seed {self.seed})", "",
                 "| op | engine | cases | elements | mismatches |", "|---|---|---|---|---|"]
        for result in self.results:
            lines.append(f"| {result.op} | {result.engine} | {result.cases} | {result.elements} | "
                         f"{result.mismatches} |")
        failing = [result for result in self.results if result.mismatches]
        if failing:
            lines += ["", "## First mismatch per failing cell", ""]
            lines += [f"- {r.op} on {r.engine}: {r.first_mismatch}" for r in failing]
        lines += ["", f"Total mismatches: {self.mismatches}."]
        return "\n".join(lines) + "\n"

    def to_text(self) -> str:
        lines = [f"{'op':<22} {'engine':<8} {'cases':>6} {'elements':>10} {'mismatches':>10}"]
        for result in self.results:
            lines.append(f"{result.op:<22} {result.engine:<8} {result.cases:>6} "
                         f"{result.elements:>10} {result.mismatches:>10}")
        lines.append(f"total mismatches: {self.mismatches}")
        return "\n".join(lines)


def run_conformance(ops=None, engines=None, cases: int = 100, seed: int = 0,
                    progress: Callable[[int, int, str], None] | None = None) -> ConformanceReport:
    """Run ``cases`` random cases of each op on each engine; ``progress(done, total, label)``."""
    try:
        import torch
    except ImportError:
        raise ImporterError("conformance compares with PyTorch: install qexact[torch]") from None
    from .engines import detect_isa

    ops = list(ops or CASES)
    engines = list(engines or ENGINES)
    unknown = [op for op in ops if op not in CASES]
    if unknown:
        raise UnsupportedError(f"no conformance cases for {unknown}; ops: {sorted(CASES)}")
    bad_engines = [engine for engine in engines if engine not in ENGINES]
    if bad_engines:
        raise UnsupportedError(f"unknown engine(s) {bad_engines}; engines: {list(ENGINES)}")
    report = ConformanceReport(torch.__version__, detect_isa(), seed)
    total, done = len(ops) * len(engines) * cases, 0
    previous = torch.backends.quantized.engine
    try:
        for op in ops:
            for engine in engines:
                torch.backends.quantized.engine = engine
                result = OpResult(op, engine)
                rng = np.random.default_rng([seed, ops.index(op), engines.index(engine)])
                for case in range(cases):
                    ours, theirs, label = CASES[op](engine, rng)
                    result.cases += 1
                    result.elements += int(np.asarray(theirs).size)
                    differ = _differ(np.asarray(ours), np.asarray(theirs))
                    if differ and not result.first_mismatch:
                        result.first_mismatch = f"case {case}: {label}"
                    result.mismatches += differ
                    done += 1
                    if progress is not None:
                        progress(done, total, f"{op} / {engine}")
                report.results.append(result)
    finally:
        torch.backends.quantized.engine = previous
    return report


def _differ(ours: np.ndarray, theirs: np.ndarray) -> int:
    if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
        return max(1, theirs.size)
    if ours.dtype.kind == "f":
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[ours.dtype.itemsize]
        return int((ours.view(width) != theirs.view(width)).sum())
    return int((ours != theirs).sum())


# --- Case generators ---------------------------------------------------------------------------


def _torch_quantized(values: np.ndarray, qparams: QParams):
    import torch

    data = torch.from_numpy(np.ascontiguousarray(values))
    if qparams.is_per_channel:
        return torch._make_per_channel_quantized_tensor(
            data, torch.from_numpy(np.asarray(qparams.scale, np.float64)),
            torch.from_numpy(np.asarray(qparams.zero_point, np.int64)), qparams.axis)
    return torch._make_per_tensor_quantized_tensor(data, qparams.scale, qparams.zero_point)


def _scale(rng) -> float:
    if rng.random() < 0.25:
        return float(2.0 ** rng.integers(-8, 3))  # power of two: exact ties
    return float(10 ** rng.uniform(-4, 1))


def _shape(rng, rank_max: int = 3) -> tuple[int, ...]:
    rank = int(rng.integers(1, rank_max + 1))
    return tuple(int(size) for size in rng.integers(1, 40, rank))


def _activations(rng, qparams: QParams, shape) -> np.ndarray:
    dtype = qparams.dtype
    return rng.integers(dtype.qmin, dtype.qmax + 1, shape).astype(dtype.numpy_dtype)


@conformance_case("quantize_per_tensor")
def _quantize_case(engine, rng):
    import torch

    from .ops.quantize import dequantize, quantize_per_tensor

    dtype = (QUINT8, QINT8, QINT32)[int(rng.integers(3))]
    scale = _scale(rng)
    zero = int(rng.integers(dtype.qmin, dtype.qmax + 1)) if dtype.bits == 8 else int(rng.integers(-999, 999))
    x = (rng.standard_normal(_shape(rng)) * scale * 100).astype(np.float32)
    if rng.random() < 0.3:  # ties: half steps
        x = (rng.integers(-600, 600, x.shape) * (scale / 2)).astype(np.float32)
    ours = quantize_per_tensor(x, scale, zero, dtype)
    theirs = torch.quantize_per_tensor(torch.from_numpy(x), scale, zero,
                                       getattr(torch, dtype.name))
    return (np.concatenate([ours.values.ravel().astype(np.int64), dequantize(ours).view(np.int32).ravel()]),
            np.concatenate([theirs.int_repr().numpy().ravel().astype(np.int64),
                            theirs.dequantize().numpy().view(np.int32).ravel()]),
            f"{dtype.name} s={scale!r} z={zero} shape={x.shape}")


@conformance_case("quantize_per_channel")
def _quantize_per_channel_case(engine, rng):
    import torch

    from .ops.quantize import quantize_per_channel

    dtype = (QUINT8, QINT8)[int(rng.integers(2))]
    shape = _shape(rng)
    axis = int(rng.integers(len(shape)))
    scales = np.array([_scale(rng) for _ in range(shape[axis])])
    zeros = rng.integers(dtype.qmin, dtype.qmax + 1, shape[axis])
    x = (rng.standard_normal(shape) * 30 * scales.reshape([-1 if i == axis else 1
                                                           for i in range(len(shape))])).astype(np.float32)
    ours = quantize_per_channel(x, scales, zeros, axis, dtype)
    theirs = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(scales),
                                        torch.from_numpy(zeros), axis, getattr(torch, dtype.name))
    return ours.values, theirs.int_repr().numpy(), f"{dtype.name} axis={axis} shape={shape}"


def _linear_case(engine, rng, relu: bool):
    import torch

    from .ops.linear import linear, prepare_linear

    rows, depth, channels = int(rng.integers(1, 33)), int(rng.integers(1, 300)), int(rng.integers(1, 65))
    x_qparams = QParams.per_tensor(_scale(rng), int(rng.integers(0, 256)), QUINT8)
    out_qparams = QParams.per_tensor(_scale(rng), int(rng.integers(0, 256)), QUINT8)
    symmetric = engine == "onednn"
    if rng.random() < 0.5:
        w_qparams = QParams.per_channel(
            [_scale(rng) * 0.01 for _ in range(channels)],
            np.zeros(channels, np.int64) if symmetric else rng.integers(-128, 128, channels), 0, QINT8)
    else:
        w_qparams = QParams.per_tensor(_scale(rng) * 0.01, 0 if symmetric else int(rng.integers(-128, 128)), QINT8)
    weight = rng.integers(-128, 128, (channels, depth)).astype(np.int8)
    high = 128 if rng.random() < 0.5 else 256
    x = rng.integers(0, high, (rows, depth)).astype(np.uint8)
    bias = None
    if rng.random() < 0.7:
        bias = (rng.standard_normal(channels) * x_qparams.scale * 300).astype(np.float32)
    params = prepare_linear(weight, w_qparams, bias, x_qparams, out_qparams, relu=relu, engine=engine)
    ours = linear(QuantizedArray(x, x_qparams), params).values
    packed = torch.ops.quantized.linear_prepack(_torch_quantized(weight, w_qparams),
                                                None if bias is None else torch.from_numpy(bias))
    kernel = torch.ops.quantized.linear_relu if relu else torch.ops.quantized.linear
    theirs = kernel(_torch_quantized(x, x_qparams), packed, out_qparams.scale,
                    out_qparams.zero_point).int_repr().numpy()
    return ours, theirs, f"M={rows} K={depth} N={channels} x<{high}"


conformance_case("linear")(lambda engine, rng: _linear_case(engine, rng, False))
conformance_case("linear_relu")(lambda engine, rng: _linear_case(engine, rng, True))


def _binary_case(engine, rng, op: str, relu: bool):
    import torch

    from .ops.elementwise import binary, prepare_binary

    dtype = QUINT8 if engine == "qnnpack" or rng.random() < 0.7 else QINT8
    shape = _shape(rng)
    if rng.random() < 0.5:
        shape = (int(rng.integers(1, 300)),)  # long runs: SIMD body and tail
    qparams = [QParams.per_tensor(_scale(rng), int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
               for _ in range(3)]
    if op == "add" and engine == "qnnpack":  # scale ratios QNNPACK accepts
        qparams[1] = QParams.per_tensor(qparams[0].scale * float(rng.uniform(0.5, 2)),
                                        qparams[1].zero_point, dtype)
        qparams[2] = QParams.per_tensor(qparams[0].scale * float(rng.uniform(0.5, 4)),
                                        min(qparams[2].zero_point, 254), dtype)
    a, b = (_activations(rng, qparams[i], shape) for i in range(2))
    params = prepare_binary(op, qparams[0], qparams[1], qparams[2], relu=relu, engine=engine,
                            num_threads=torch.get_num_threads())
    ours = binary(QuantizedArray(a, qparams[0]), QuantizedArray(b, qparams[1]), params).values
    kernel = getattr(torch.ops.quantized, f"{op}_relu" if relu else op)
    theirs = kernel(_torch_quantized(a, qparams[0]), _torch_quantized(b, qparams[1]),
                    qparams[2].scale, qparams[2].zero_point).int_repr().numpy()
    return ours, theirs, f"{dtype.name} shape={shape}"


for _op in ("add", "mul"):
    for _relu in (False, True):
        conformance_case(f"{_op}_relu" if _relu else _op)(
            lambda engine, rng, op=_op, relu=_relu: _binary_case(engine, rng, op, relu))


def _activation_case(engine, rng, function: str):
    import torch

    from .ops.activations import activation, prepare_activation

    dtype = QUINT8 if rng.random() < 0.7 else QINT8
    shape = (int(rng.integers(1, 300)),) if rng.random() < 0.5 else _shape(rng)
    x_qparams = QParams.per_tensor(float(10 ** rng.uniform(-2.5, -0.5)),
                                   int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    out_qparams = QParams.per_tensor(float(10 ** rng.uniform(-2.5, -0.5)),
                                     int(rng.integers(dtype.qmin, dtype.qmax + 1)), dtype)
    x = _activations(rng, x_qparams, shape)
    tx = _torch_quantized(x, x_qparams)
    if function == "sigmoid":
        theirs, params = torch.sigmoid(tx), prepare_activation("sigmoid", x_qparams, None, engine)
    elif function == "tanh":
        theirs, params = torch.tanh(tx), prepare_activation("tanh", x_qparams, None, engine)
    elif function == "hardswish":
        theirs = torch.ops.quantized.hardswish(tx, out_qparams.scale, out_qparams.zero_point)
        params = prepare_activation("hardswish", x_qparams, out_qparams, engine)
    else:  # leaky_relu
        slope = float(rng.uniform(0.01, 0.3))
        theirs = torch.ops.quantized.leaky_relu(tx, slope, False, out_qparams.scale,
                                                out_qparams.zero_point)
        params = prepare_activation("leaky_relu", x_qparams, out_qparams, engine, slope=slope)
    params = type(params)(**{**params.__dict__, "num_threads": torch.get_num_threads()})
    ours = activation(QuantizedArray(x, x_qparams), params).values
    return ours, theirs.int_repr().numpy(), f"{function} {dtype.name} shape={shape}"


for _function in ("sigmoid", "tanh", "hardswish", "leaky_relu"):
    conformance_case(_function)(lambda engine, rng, f=_function: _activation_case(engine, rng, f))


def _conv2d_case(engine, rng, relu: bool):
    import torch

    from .ops.conv import conv, prepare_conv

    groups = int(rng.choice([1, 1, 2, 3])) if rng.random() < 0.7 else 0
    channels_in = int(rng.integers(1, 9)) * (groups or 1)
    if groups == 0:  # depthwise
        groups, channels_in = int(rng.integers(1, 17)), 0
        channels_in = groups
    channels_out = groups * int(rng.integers(1, 5))
    kernel = int(rng.choice([1, 3, 5]))
    stride, padding, dilation = int(rng.integers(1, 3)), int(rng.integers(0, 3)), int(rng.integers(1, 3))
    height, width = (int(size) for size in rng.integers(kernel * dilation, 14, 2))
    x_qparams = QParams.per_tensor(_scale(rng), int(rng.integers(0, 256)), QUINT8)
    out_qparams = QParams.per_tensor(_scale(rng), int(rng.integers(0, 256)), QUINT8)
    symmetric = engine == "onednn" or rng.random() < 0.5
    if rng.random() < 0.5:
        w_qparams = QParams.per_channel(
            [_scale(rng) * 0.01 for _ in range(channels_out)],
            np.zeros(channels_out, np.int64) if symmetric else rng.integers(-128, 128, channels_out),
            0, QINT8)
    else:
        w_qparams = QParams.per_tensor(_scale(rng) * 0.01, 0 if symmetric else int(rng.integers(-128, 128)), QINT8)
    weight = rng.integers(-128, 128, (channels_out, channels_in // groups, kernel, kernel)).astype(np.int8)
    high = 128 if rng.random() < 0.5 else 256
    x = rng.integers(0, high, (int(rng.integers(1, 3)), channels_in, height, width)).astype(np.uint8)
    bias = (rng.standard_normal(channels_out) * x_qparams.scale * 100).astype(np.float32) \
        if rng.random() < 0.7 else None
    params = prepare_conv(weight, w_qparams, bias, x_qparams, out_qparams, stride=stride,
                          padding=padding, dilation=dilation, groups=groups, relu=relu,
                          engine=engine)
    ours = conv(QuantizedArray(x, x_qparams), params).values
    packed = torch.ops.quantized.conv2d_prepack(
        _torch_quantized(weight, w_qparams), None if bias is None else torch.from_numpy(bias),
        [stride, stride], [padding, padding], [dilation, dilation], groups)
    kernel_op = torch.ops.quantized.conv2d_relu if relu else torch.ops.quantized.conv2d
    theirs = kernel_op(_torch_quantized(x, x_qparams), packed, out_qparams.scale,
                       out_qparams.zero_point).int_repr().numpy()
    return np.ascontiguousarray(ours), np.ascontiguousarray(theirs), \
        f"C={channels_in} OC={channels_out} G={groups} k={kernel} s={stride} p={padding} d={dilation}"


conformance_case("conv2d")(lambda engine, rng: _conv2d_case(engine, rng, False))
conformance_case("conv2d_relu")(lambda engine, rng: _conv2d_case(engine, rng, True))


@conformance_case("batch_norm2d")
def _batch_norm_case(engine, rng):
    import torch

    from .ops.normalization import batch_norm, prepare_batch_norm

    channels = int(rng.integers(1, 40))
    x_qparams = QParams.per_tensor(_scale(rng) * 0.1, int(rng.integers(0, 256)), QUINT8)
    out_scale, out_zero = _scale(rng) * 0.1, int(rng.integers(0, 256))
    weight, bias = (rng.standard_normal(channels).astype(np.float32) for _ in range(2))
    mean = rng.standard_normal(channels).astype(np.float32)
    var = rng.uniform(0.1, 3, channels).astype(np.float32)
    x = rng.integers(0, 256, (int(rng.integers(1, 3)), channels) + tuple(
        int(size) for size in rng.integers(1, 12, 2))).astype(np.uint8)
    params = prepare_batch_norm(weight, bias, mean, var, 1e-5, x_qparams, out_scale, out_zero,
                                engine=engine)
    ours = batch_norm(QuantizedArray(x, x_qparams), params).values
    theirs = torch.ops.quantized.batch_norm2d(
        _torch_quantized(x, x_qparams), *(torch.from_numpy(a) for a in (weight, bias, mean, var)),
        1e-5, out_scale, out_zero).int_repr().numpy()
    return np.ascontiguousarray(ours), np.ascontiguousarray(theirs), f"C={channels} x={x.shape}"
