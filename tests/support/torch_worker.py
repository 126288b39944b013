"""PyTorch's side of the op tests in a child process (``qexact.conformance.worker``): a kernel
that crashes on a case qexact computes fails that test, not the whole pytest run."""

from __future__ import annotations

import atexit

import numpy as np

from qexact.conformance import FAMILIES, Case

_WORKER = None


def worker():
    """One torch child for the test session, started on first use."""
    global _WORKER
    if _WORKER is None:
        from qexact.conformance.worker import TorchWorker

        _WORKER = TorchWorker()
        _WORKER.start()
        atexit.register(_WORKER.close)
    return _WORKER


def _listed(value, dims: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims


def conv_case(x, x_qp, w, w_qp, bias, out_qp, stride, padding, dilation, groups, relu) -> Case:
    """A quantized ConvNd call as a conformance case (the schema of tests/data/recordings)."""
    dims = w.ndim - 2
    params = {"op": f"conv{dims}d" + ("_relu" if relu else ""), "groups": int(groups),
              "in_channels": int(x.shape[1]), "out_channels": int(w.shape[0]),
              "kernel": list(w.shape[2:]), "stride": _listed(stride, dims),
              "padding": _listed(padding, dims), "dilation": _listed(dilation, dims),
              "x_scale": float(x_qp.scale), "x_zero_point": int(x_qp.zero_point),
              "x_dtype": "quint8", "x_channels_last": False, "has_bias": bias is not None,
              "out_scale_req": float(out_qp.scale), "out_zero_point_req": int(out_qp.zero_point)}
    arrays = {"x": np.ascontiguousarray(x), "w": np.ascontiguousarray(w)}
    if bias is not None:
        arrays["bias"] = np.ascontiguousarray(bias)
    if w_qp.is_per_channel:
        params |= {"w_qscheme": "per_channel", "w_axis": int(w_qp.axis)}
        arrays |= {"w_scales": np.asarray(w_qp.scale, np.float64),
                   "w_zero_points": np.asarray(w_qp.zero_point, np.int64)}
    else:
        params |= {"w_qscheme": "per_tensor", "w_scale": float(w_qp.scale),
                   "w_zero_point": int(w_qp.zero_point)}
    return Case(params, arrays)


def torch_conv_in_child(engine: str, **case) -> np.ndarray:
    """``quantized::conv{1,2,3}d[_relu]`` on ``engine`` in the torch child; the uint8 output.
    PyTorch must give one result, twice the same: a crash, an error or two different results
    fail the calling test with what happened."""
    outcome = worker().run(FAMILIES["conv2d"], engine, conv_case(**case))
    assert outcome.kind == "ok", (
        f"PyTorch {outcome.kind} on a case qexact computes ({outcome.exit or outcome.message}); "
        f"params {conv_case(**case).params}")
    return outcome.outputs["y"]
