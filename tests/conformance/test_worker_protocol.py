"""The torch worker's messages: JSON with arrays beside it in an .npz, never a pickle."""

from __future__ import annotations

import math

import numpy as np

from qexact.conformance.worker import decode, encode


def test_round_trip_keeps_arrays_bit_for_bit_and_scalars_exactly():
    message = ("run", "conv2d", ("qexact.conformance.conv_cases", None), "fbgemm",
               {"x_scale": 0.1 + 2 ** -40, "nan": math.nan, "kernel": [3, 3], "flag": True,
                "np_scalar": np.float32(0.3)},
               {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "y": np.array(5.5, np.float32),
                "neg0": np.array([-0.0], np.float32)})
    kind, name, source, engine, params, arrays = decode(encode(message))
    assert (kind, name, source, engine) == ("run", "conv2d", ["qexact.conformance.conv_cases",
                                                              None], "fbgemm")
    assert params["x_scale"] == 0.1 + 2 ** -40 and math.isnan(params["nan"])
    assert params["kernel"] == [3, 3] and params["flag"] is True
    assert params["np_scalar"] == float(np.float32(0.3))
    assert arrays["x"].dtype == np.uint8 and np.array_equal(arrays["x"], message[5]["x"])
    assert arrays["y"].shape == () and arrays["y"].dtype == np.float32
    assert arrays["neg0"].view(np.uint32)[0] == np.float32(-0.0).view(np.uint32)


def test_a_message_is_an_npz_that_loads_without_pickle():
    data = encode({"a": np.zeros(2)})
    assert data[:2] == b"PK"
    with np.load(__import__("io").BytesIO(data), allow_pickle=False) as archive:
        assert "__json__" in archive.files
