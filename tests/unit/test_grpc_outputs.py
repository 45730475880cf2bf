"""The predictor's own binary encoding of its gRPC outputs is KServe's, byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
from kserve.protocol.infer_type import InferOutput

from serving.predictor import _set_binary


@pytest.mark.parametrize("datatype, array", [
    ("BYTES", np.array([["1", "242", ""], ["Amélie", "日本", "x" * 300]], dtype=object)),
    ("BYTES", np.array([b"raw", b"", "text"], dtype=object)),
    ("BYTES", np.empty((1, 0), dtype=object)),
    ("FP32", np.array([[0.5, np.nan, -1.25]], dtype=np.float32)),
    ("FP32", np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]),  # not contiguous
    ("BOOL", np.array([True, False, True])),
])
def test_raw_bytes_and_size_are_what_kserve_sets(datatype, array):
    ours = InferOutput("out", list(array.shape), datatype, array)
    _set_binary(ours)
    kserves = InferOutput("out", list(array.shape), datatype)
    kserves.set_data_from_numpy(array, binary_data=True)
    assert ours._raw_data == kserves._raw_data
    assert ours.parameters == kserves.parameters
    assert ours.data is None
