"""The payload-logger sink (`python -m serving.events`) as a real process on a loopback port.

KServe's logger cannot run here (it is a sidecar on a cluster), so the tests post what it posts:
binary-mode CloudEvents, a request and a response per inference sharing `ce-id`, in either
order. The records must be the ones the predictor's own request log holds (that equivalence is
checked against a live model server in test_serving.py).
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.events import REQUEST_TYPE, RESPONSE_TYPE, EventMetrics, EventPairer
from serving.request_log import RequestLog, read_request_log

REQUEST = {"id": "r1", "inputs": [
    {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "stranger"]},
    {"name": "k", "datatype": "INT32", "shape": [1], "data": [2]},
]}
REPO = Path(__file__).resolve().parents[2]
RESPONSE = {"id": "r1", "model_name": "recsys", "model_version": "v7", "outputs": [
    {"name": "item_ids", "datatype": "BYTES", "shape": [2, 2], "data": ["a", "b", "c", "d"]},
    {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [0.9, 0.5, 3.0, 2.0]},
    {"name": "cold_start", "datatype": "BOOL", "shape": [2], "data": [False, True]},
]}


def _headers(kind: str, event_id: str) -> dict[str, str]:
    return {"Ce-Id": event_id, "Ce-Type": kind, "Ce-Specversion": "1.0",
            "Ce-Source": "http://localhost:9081/", "Ce-Time": "2025-01-31T12:00:00Z",
            "Ce-Inferenceservicename": "recsys", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    out = tmp_path_factory.mktemp("events")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.events", "--host", "127.0.0.1", "--port", str(port),
         "--output-dir", str(out), "--pending-ttl", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.1)
    yield url, out, proc
    if proc.poll() is None:
        proc.kill()


def _post(url: str, kind: str, event_id: str, body) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", url, json=body).content
    return httpx.post(url, content=content, headers=_headers(kind, event_id), timeout=5)


def test_pairs_in_either_order_become_request_log_records(sink):
    url, out, _ = sink
    assert _post(url, REQUEST_TYPE, "e1", REQUEST).json() == {"records": 0}
    assert _post(url, RESPONSE_TYPE, "e1", RESPONSE).json() == {"records": 2}
    assert _post(url, RESPONSE_TYPE, "e2", {**RESPONSE, "id": "e2"}).json() == {"records": 0}
    assert _post(url, REQUEST_TYPE, "e2", REQUEST).json() == {"records": 2}
    deadline = time.monotonic() + 10
    while len(frame := read_request_log(out)) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    first = frame[frame.request_id == "e1"]
    assert first.user_id.tolist() == ["u1", "stranger"] and first.cold_start.tolist() == [False, True]
    assert first.item_ids.tolist() == [["a", "b"], ["c", "d"]] and first.k.tolist() == [2, 2]
    assert first.model_version.eq("v7").all() and first.model_name.eq("recsys").all()
    assert set(frame.request_id) == {"e1", "e2"}


def test_bad_events_are_refused_with_400_and_counted(sink):
    url = sink[0]
    assert _post(url, REQUEST_TYPE, "bad", b"\x00\x01binary tensors").status_code == 400
    plain = httpx.post(url, json=REQUEST, timeout=5)  # not a CloudEvent
    assert plain.status_code == 400 and "ce-id" in plain.json()["error"]
    metrics = httpx.get(url + "/metrics", timeout=5).text
    assert 'recsys_events_rejected_total{reason="not_json"} 1.0' in metrics
    assert 'recsys_events_rejected_total{reason="not_an_inference_event"} 1.0' in metrics
    assert 'recsys_events_received_total{type="request"}' in metrics


def test_sigterm_flushes_what_was_written(sink):
    url, out, proc = sink
    assert _post(url, REQUEST_TYPE, "last", REQUEST).status_code == 202
    assert _post(url, RESPONSE_TYPE, "last", RESPONSE).status_code == 202
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "last" in set(read_request_log(out).request_id)


def test_unpaired_events_expire_and_the_pending_set_is_bounded(tmp_path):
    from prometheus_client import CollectorRegistry

    metrics = EventMetrics(CollectorRegistry())
    writer = RequestLog(tmp_path, "recsys").start()
    pairer = EventPairer(writer, metrics, ttl=10, max_pending=2)
    req = lambda event_id: {"ce-id": event_id, "ce-type": REQUEST_TYPE}  # noqa: E731
    assert pairer.add(req("a"), REQUEST, now=0) == 0
    assert pairer.add(req("b"), REQUEST, now=1) == 0
    assert pairer.add(req("c"), REQUEST, now=2) == 0  # over max_pending: "a" goes
    assert metrics.expired._value.get() == 1
    assert pairer.add({"ce-id": "a", "ce-type": RESPONSE_TYPE}, RESPONSE, now=3) == 0  # too late
    assert pairer.add({"ce-id": "b", "ce-type": RESPONSE_TYPE}, RESPONSE, now=12) == 0  # b expired at 11
    assert metrics.expired._value.get() == 3  # "a" (bound), then "b" and "c" (ttl)
    assert pairer.add({"ce-id": "a", "ce-type": REQUEST_TYPE}, REQUEST, now=12.5) == 2  # a's new pair
    writer.close()
    assert len(read_request_log(tmp_path)) == 2


def test_the_manifest_runs_this_module_with_options_it_has():
    """manifests/base/events.yaml starts the sink from the project image: the module and every
    flag it passes must exist (a typo would only show on a cluster)."""
    import yaml

    from serving.events import main  # noqa: F401 (the module the manifest names)

    docs = yaml.safe_load_all((REPO / "manifests" / "base" / "events.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "serving.events"]
    help_text = subprocess.run(
        [sys.executable, "-m", "serving.events", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (a for a in container["args"] if a.startswith("--")):
        assert flag in help_text, flag
