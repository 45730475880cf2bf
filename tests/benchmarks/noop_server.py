"""A KServe model server whose model does nothing: the floor our predictor is measured against.

`python tests/benchmarks/noop_server.py --http-port P --grpc-port Q` serves `noop`, which
answers any v2 request with constant outputs of the predictor's shapes (item_ids BYTES [B, 10],
scores FP32 [B, 10], cold_start BOOL [B]), with the same server settings as `python -m serving`.
"""
from __future__ import annotations

import argparse

import kserve
import numpy as np
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

K = 10


class NoopModel(kserve.Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        batch = int(payload.inputs[0].shape[0])
        outputs = [
            InferOutput("item_ids", [batch, K], "BYTES", np.full((batch, K), "1", dtype=object)),
            InferOutput("scores", [batch, K], "FP32", np.ones((batch, K), dtype=np.float32)),
            InferOutput("cold_start", [batch], "BOOL", np.zeros(batch, dtype=bool)),
        ]
        if payload.from_grpc:  # encoded now, as the predictor does (KServe's to_grpc needs it)
            for out in outputs:
                data, out.data = out.data, None
                out.set_data_from_numpy(data, binary_data=True)
        return InferResponse(
            response_id=payload.id or "noop",
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    args = parser.parse_args()
    kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, workers=1, enable_latency_logging=False
    ).start([NoopModel("noop")])
