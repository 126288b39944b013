"""Linear 64x1024x1024, single thread: qexact vs PyTorch, per engine. Prints ratios in one run.

    .venv/bin/python benchmarks/bench_linear.py [--repeat N]

Both sides run one thread (torch.set_num_threads(1); BLAS threads pinned by environment before
NumPy loads). Activations are drawn in 0..127 (what reduce_range calibration gives) and in
0..255 (full range: on CPUs without VNNI, FBGEMM's and oneDNN's int16 pair saturation must then be
modelled, which costs qexact extra work).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import best_time, single_thread_environment  # noqa: E402

single_thread_environment()

import argparse  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

import qexact  # noqa: E402
from qexact.qparams import QParams  # noqa: E402

M, K, N = 64, 1024, 1024


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (N, K)).astype(np.int8)
    bias = rng.standard_normal(N).astype(np.float32)
    print(f"Linear M={M} K={K} N={N}, one thread, qexact {qexact.__version__}, torch "
          f"{torch.__version__}, this CPU: isa {qexact.detect_isa()}")
    print(f"{'engine':<8} {'activations':<12} {'torch ms':>9} {'qexact ms':>10} {'ratio':>7}  exact")
    for engine in ("fbgemm", "x86", "qnnpack", "onednn"):
        torch.backends.quantized.engine = engine
        weight_qparams = QParams.per_tensor(0.01, 0, qexact.QINT8)
        in_qparams = QParams.per_tensor(0.05, 3, qexact.QUINT8)
        out_qparams = QParams.per_tensor(4.0, 128, qexact.QUINT8)
        tw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(weight), 0.01, 0)
        packed = torch.ops.quantized.linear_prepack(tw, torch.from_numpy(bias))
        params = qexact.prepare_linear(weight, weight_qparams, bias, in_qparams, out_qparams,
                                       engine=engine)
        for high in (127, 255):
            x = rng.integers(0, high + 1, (M, K)).astype(np.uint8)
            tx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(x), 0.05, 3)
            qx = qexact.QuantizedArray(x, in_qparams)
            torch_ms = 1e3 * best_time(lambda: torch.ops.quantized.linear(tx, packed, 4.0, 128),
                                       arguments.repeat)
            qexact_ms = 1e3 * best_time(lambda: qexact.linear(qx, params), arguments.repeat)
            same = np.array_equal(qexact.linear(qx, params).values,
                                  torch.ops.quantized.linear(tx, packed, 4.0, 128).int_repr().numpy())
            print(f"{engine:<8} {'0..' + str(high):<12} {torch_ms:9.2f} {qexact_ms:10.2f} "
                  f"{qexact_ms / torch_ms:6.1f}x  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
