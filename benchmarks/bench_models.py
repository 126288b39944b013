"""Whole-model latency, single thread: qexact vs PyTorch per model and engine, in one run.

    .venv/bin/python benchmarks/bench_models.py [--repeat N] [--torchvision]

Models: the CNN test models (tests/support/cnn_models.py) and, with --torchvision, torchvision's
quantizable models at small inputs. Both sides run one thread; every output is also checked
for bit-exactness.
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import qexact  # noqa: E402


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--torchvision", action="store_true")
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from support.cnn_models import CNN_MODELS, build_cnn

    builders = [(name, lambda engine, n=name: build_cnn(n, engine)) for name in CNN_MODELS]
    if arguments.torchvision:
        from support.torchvision_models import MODELS, build_torchvision

        builders += [(name, lambda engine, n=name: build_torchvision(n, engine)) for name in MODELS]
    print(f"one thread, batch 1; qexact {qexact.__version__}, torch {torch.__version__}, "
          f"isa {qexact.detect_isa()}")
    print(f"{'model':<20} {'engine':<8} {'torch ms':>9} {'qexact ms':>10} {'ratio':>7}  exact")
    for name, builder in builders:
        for engine in ("x86", "qnnpack", "fbgemm", "onednn"):
            model, shape = builder(engine)
            torch.set_num_threads(1)
            net = qexact.from_torch(model)
            x = torch.randn(shape)
            torch_ms = 1e3 * best_time(lambda: model(x), arguments.repeat)
            array = x.numpy()
            qexact_ms = 1e3 * best_time(lambda: net(array), arguments.repeat)
            exact = np.array_equal(net(array), model(x).numpy())
            print(f"{name:<20} {engine:<8} {torch_ms:9.2f} {qexact_ms:10.2f} "
                  f"{qexact_ms / torch_ms:6.1f}x  {'yes' if exact else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
