"""A KServe model server (`python -m serving`, the container's entry point) in a subprocess on
loopback ports, and the clients the tests drive it with.

The gRPC client runs in a helper process of its own: its generated protobuf module clashes with
kserve's ("duplicate symbol 'inference.ServerLiveRequest'") when both are imported in one
process, and other test modules of the suite import kserve.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from ports import free_port  # re-exported: tests import it from here

REPO = Path(__file__).resolve().parents[1]
MODEL = "recsys"
MAX_BATCH = 50


# The gRPC side of the tests: tritonclient.grpc in a child process, one JSON line per call.
_GRPC_WORKER = r"""
import json, sys
import numpy as np
import tritonclient.grpc as g
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

client = g.InferenceServerClient(sys.argv[1])
for line in sys.stdin:
    req = json.loads(line)
    try:
        if req["op"] == "infer":
            inputs = []
            for name, dtype, values, shape in req["inputs"]:
                array = np.asarray(values, dtype=triton_to_np_dtype(dtype))
                inp = g.InferInput(name, list(array.shape), dtype)
                inp.set_data_from_numpy(array)
                if shape is not None:  # lie about the shape (raw contents stay as they are)
                    inp._input.shape[:] = shape
                inputs.append(inp)
            result = client.infer(req["model"], inputs, request_id=req.get("request_id", ""))
            response = result.get_response()
            reply = {"ok": {"id": response.id, "outputs": {
                o.name: result.as_numpy(o.name).tolist() for o in response.outputs}}}
        elif req["op"] == "metadata":
            reply = {"ok": client.get_model_metadata(req["model"], as_json=True)}
        else:
            reply = {"ok": getattr(client, req["op"])(*req.get("args", []))}
    except InferenceServerException as exc:
        reply = {"error": [exc.status(), exc.message()]}
    print(json.dumps(reply, default=lambda b: b.decode()), flush=True)
"""


class GrpcError(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class GrpcClient:
    """tritonclient.grpc, driven from a child process (see the module docstring)."""

    def __init__(self, url: str):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _GRPC_WORKER, url], cwd=REPO, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )

    def _call(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"gRPC helper exited with {self.process.wait(5)}")
        reply = json.loads(line)
        if "error" in reply:
            raise GrpcError(*reply["error"])
        return reply["ok"]

    def is_server_live(self) -> bool:
        return self._call(op="is_server_live")

    def is_server_ready(self) -> bool:
        return self._call(op="is_server_ready")

    def is_model_ready(self, model: str) -> bool:
        return self._call(op="is_model_ready", args=[model])

    def get_model_metadata(self, model: str) -> dict:
        return self._call(op="metadata", model=model)

    def infer(self, model: str, inputs: list, request_id: str = "") -> dict:
        """inputs: (name, datatype, values[, shape to claim]); answers {"id", "outputs"}."""
        inputs = [list(i) + [None] * (4 - len(i)) for i in inputs]
        reply = self._call(op="infer", model=model, inputs=inputs, request_id=request_id)
        reply["outputs"] = {k: np.asarray(v) for k, v in reply["outputs"].items()}
        return reply

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)


@dataclass
class Server:
    process: subprocess.Popen
    http: str  # host:port
    grpc: str
    log_path: Path
    request_log: Path

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model_dir: Path, work: Path, *extra: str) -> Server:
    http_port, grpc_port = free_port(), free_port()
    log_path = work / "server.log"
    request_log = work / "requests"
    cmd = [
        sys.executable, "-m", "serving", "--model-dir", str(model_dir),
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--max-batch-size", str(MAX_BATCH), "--request-log", str(request_log), *extra,
    ]
    with log_path.open("wb") as out:  # a file, not a pipe: a full pipe would block the server
        # A session of its own: REST workers (--workers N) outlive a SIGTERM to the parent
        # alone, so stop() signals the whole group.
        process = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Server(process, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log_path, request_log)


def wait_live(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"server exited with {server.process.returncode}:\n{server.output()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/v2/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not live after {timeout}s:\n{server.output()[-3000:]}")


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/v2/models/{MODEL}/ready", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, server.output()[-3000:]
        time.sleep(0.2)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when the labelled series is absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stop(server: Server) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(5)
    try:
        os.killpg(server.process.pid, signal.SIGKILL)  # what is left of the group: workers
    except ProcessLookupError:
        pass
    return server.process.returncode


def post_v2(server: Server, body, timeout: float = 10) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer", content=content,
        headers={"content-type": "application/json"}, timeout=timeout,
    )


def v2_body(*inputs) -> dict:
    return {"inputs": [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in inputs]}
