"""The exported C vs qexact vs PyTorch on one model, one thread, outputs asserted identical.

    .venv/bin/python benchmarks/bench_c_export.py [--model resnet] [--engines fbgemm,qnnpack]
                                                  [--repeat N]

For each engine: the CNN test model (tests/support/cnn_models.py, input (2, 3, 32, 32)) is
converted, imported, exported to C (float requantization, and integer-only), built with gcc at
-O2 and at -O3 -march=native, and timed: the C by ``model_main --time`` (processor time per
run, in its own process), qexact and PyTorch in this process (best of N). The C outputs are
checked bit for bit against qexact and PyTorch first. Also printed: the size of model.c.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import best_time, single_thread_environment  # noqa: E402

single_thread_environment()

import argparse  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import qexact  # noqa: E402
from qexact.export.c import export_c  # noqa: E402

FLAGS = {"-O2": "-std=c99 -O2", "-O3 native": "-std=c99 -O3 -march=native"}


def c_seconds(directory: Path, x: np.ndarray, runs: int) -> float:
    np.ascontiguousarray(x, dtype="<f4").tofile(directory / "in.bin")
    done = subprocess.run([str(directory / "model_main"), "--time", str(runs),
                           str(directory / "in.bin")], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[0])


def c_output(directory: Path, x: np.ndarray, like: np.ndarray) -> np.ndarray:
    np.ascontiguousarray(x, dtype="<f4").tofile(directory / "in.bin")
    subprocess.run([str(directory / "model_main"), str(directory / "in.bin"),
                    str(directory / "out.bin")], check=True)
    return np.fromfile(directory / "out.bin", dtype=like.dtype).reshape(like.shape)


def main() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.cnn_models import build_cnn

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--engines", default="fbgemm,qnnpack")
    parser.add_argument("--repeat", type=int, default=20)
    arguments = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    print(f"{arguments.model} test model, one thread, qexact {qexact.__version__}, torch "
          f"{torch.__version__}, this CPU: isa {qexact.detect_isa()}")
    print(f"{'engine':<8} {'mode':<13} {'model.c':>9} {'C -O2 ms':>9} {'C -O3n ms':>10} "
          f"{'qexact ms':>10} {'torch ms':>9}  C==torch")
    for engine in arguments.engines.split(","):
        model, shape = build_cnn(arguments.model, engine)
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        net = qexact.from_torch(model, example_inputs=(torch.from_numpy(x),), engine=engine)
        tx = torch.from_numpy(x)
        with torch.no_grad():
            expected = model(tx).numpy()
            torch_ms = 1e3 * best_time(lambda: model(tx), arguments.repeat)
        qexact_ms = 1e3 * best_time(lambda: net(x), max(3, arguments.repeat // 4))
        for integer_only in (False, True):
            times, same = {}, True
            for label, flags in FLAGS.items():
                with tempfile.TemporaryDirectory() as scratch:
                    directory = Path(scratch)
                    written = export_c(net, directory, (x,), integer_only=integer_only)
                    subprocess.run(["make", "-s", "-C", scratch, f"CFLAGS={flags}"], check=True)
                    got = c_output(directory, x, expected)
                    same &= bool(np.array_equal(got.view(np.uint32), expected.view(np.uint32)))
                    if not integer_only:
                        assert np.array_equal(got.view(np.uint32),
                                              np.asarray(net(x)).view(np.uint32))
                    times[label] = 1e3 * c_seconds(directory, x, arguments.repeat * 10)
                    size = written.c_bytes
            mode = "integer-only" if integer_only else "float requant"
            print(f"{engine:<8} {mode:<13} {size / 1024:>7.0f}KB {times['-O2']:>9.3f} "
                  f"{times['-O3 native']:>10.3f} {qexact_ms:>10.3f} {torch_ms:>9.3f}  "
                  f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
