"""The end-to-end test's calls to the InferenceService over the v2 (Open Inference) protocol.

`rest_and_grpc_version` calls one predictor with tritonclient over REST and gRPC;
`gateway_versions` sends plain v2 REST requests through an ingress (with the service's Host
header) and returns which model version answered each. Both check every answer's shape.
"""

from __future__ import annotations

import json
import urllib.request

from e2e.checks import check_v2_answer
from e2e.runner import E2EError

MODEL = "recsys"
USERS = ("1", "2", "3")
K = 5
V2_BODY = json.dumps(
    {
        "inputs": [
            {"name": "user_id", "datatype": "BYTES", "shape": [len(USERS)], "data": list(USERS)},
            {"name": "k", "datatype": "INT32", "shape": [1], "data": [K]},
        ]
    }
).encode()


def rest_and_grpc_version(http: str, grpc: str, timeout: float = 30.0) -> str:
    """One v2 call over REST (`host:port`) and one over gRPC, both through tritonclient; the
    model version both answered from (E2EError when they differ or an answer is malformed)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    users = np.asarray(USERS, dtype=object)
    k = np.asarray([K], dtype=np.int32)
    rest = httpclient.InferenceServerClient(url=http, network_timeout=timeout)
    inputs = [
        httpclient.InferInput("user_id", [len(USERS)], "BYTES"),
        httpclient.InferInput("k", [1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(users, binary_data=False)
    inputs[1].set_data_from_numpy(k, binary_data=False)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=False) for n in ("item_ids", "scores")
    ]
    rest_version = check_v2_answer(
        rest.infer(MODEL, inputs, outputs=outputs).get_response(), len(USERS), K, MODEL
    )
    rest.close()

    client = grpcclient.InferenceServerClient(url=grpc)
    inputs = [
        grpcclient.InferInput("user_id", [len(USERS)], "BYTES"),
        grpcclient.InferInput("k", [1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(users)
    inputs[1].set_data_from_numpy(k)
    result = client.infer(MODEL, inputs, client_timeout=timeout)
    for name in ("item_ids", "scores"):
        values = result.as_numpy(name)
        if values is None or list(values.shape) != [len(USERS), K]:
            raise E2EError(
                f"gRPC output {name} has shape "
                f"{None if values is None else list(values.shape)}, expected {[len(USERS), K]}"
            )
    grpc_version = str(result.get_response(as_json=True).get("model_version") or "")
    client.close()
    if grpc_version != rest_version:
        raise E2EError(
            f"REST answered from model version {rest_version!r}, gRPC from {grpc_version!r}"
        )
    return rest_version


def gateway_versions(base_url: str, host: str, n: int, timeout: float = 30.0) -> list[str]:
    """`n` v2 REST requests to `base_url` with `Host: host` (how an ingress gateway picks the
    service); the model version of each answer, in order."""
    versions = []
    for _ in range(n):
        request = urllib.request.Request(
            f"{base_url}/v2/models/{MODEL}/infer",
            data=V2_BODY,
            method="POST",
            headers={"Host": host, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            versions.append(check_v2_answer(json.load(answer), len(USERS), K, MODEL))
    return versions
