"""Explain on the PT2E engines: for every node of every PT2E model, explain's last stage is the
node's value (explain observes the run; one code path computes both)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("torchao")
pytest.importorskip("executorch")

import qexact  # noqa: E402
from tests.support import pt2e  # noqa: E402
from tests.support.assertions import assert_bitexact  # noqa: E402


CASES = ([(name, "xnnpack", engine) for name in sorted(pt2e.PT2E_MODELS)
          for engine in ("xnnpack", "pt2e_eager")]
         + [(name, "xnnpack_dynamic", "xnnpack") for name in sorted(pt2e.DYNAMIC_MODELS)]
         + [(name, "inductor", "inductor") for name in sorted(pt2e.MODELS)
            if name not in pt2e.FLOAT_UNDER_INDUCTOR | pt2e.XNNPACK_ONLY])


@pytest.mark.parametrize("name, quantizer, engine", CASES)
def test_explain_reproduces_a_random_element_of_every_node(name, quantizer, engine):
    converted, _ = pt2e.quantized(name, quantizer)
    x = pt2e.inputs(name, 7, 2.0).numpy()
    try:
        net = qexact.from_torch(converted, engine=engine)
        values = net.run_values(x)
    except qexact.UnsupportedError as error:
        pytest.skip(f"{engine} does not run {name} yet: {str(error)[:120]}")
    rng = np.random.default_rng(len(name))
    for node in net.graph.nodes:
        value = values[node.name]
        if not isinstance(value, (qexact.QuantizedArray, np.ndarray)):
            continue
        array = value.values if isinstance(value, qexact.QuantizedArray) else value
        index = tuple(int(rng.integers(size)) for size in array.shape)
        stages = net.explain(x, layer=node.name, index=index).stages
        result, expected = np.asarray(stages[-1].result), np.asarray(array[index])
        if expected.dtype.kind in "iu":  # stages carry integers as int64
            result, expected = result.astype(np.int64), expected.astype(np.int64)
        assert_bitexact(result, expected, f"{name}/{engine}: explain of {node.name} "
                                          f"[{node.op}] at {index}")
