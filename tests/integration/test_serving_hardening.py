"""What an attacker or a careless client can do to a running predictor, and what it must not.

Each test stands for a finding of an outside audit and failed on the code before its fix: a
request that held the event loop for minutes, the model-repository extension that let anyone
unload the model, request-log rows lost without a count, tracebacks logged for a client's
mistake, unbounded answers, JSON refused for lack of a content type, `{"detail": ...}` error
bodies, a REST 503 without its reason, an OpenAPI schema that hid the error answers, a server
listening on every interface, and in-flight requests reset on SIGTERM. The server is the
container's entry point (`python -m serving`) in a subprocess on loopback ports.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_process import (
    MODEL,
    GrpcClient,
    GrpcError,
    metric,
    post_v2,
    start_server,
    stop,
    v2_body,
    wait_live,
    wait_ready,
)

from serving.request_log import read_request_log

REPO = Path(__file__).resolve().parents[2]

MAX_ANSWER_ITEMS = 1_000
DRAIN_SECONDS = 2.0


@pytest.fixture(scope="module")
def server(small_model_dir, tmp_path_factory):
    """Listens on 127.0.0.1 only, with a small answer limit and a drain on SIGTERM."""
    srv = start_server(small_model_dir, tmp_path_factory.mktemp("hardened"),
                       "--host", "127.0.0.1", "--max-answer-items", str(MAX_ANSWER_ITEMS),
                       "--drain-seconds", str(DRAIN_SECONDS))
    try:
        wait_live(srv)
        wait_ready(srv)
        yield srv
    finally:
        stop(srv)


def _titles(n: int, length: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_letters + " ") for _ in range(length)) for _ in range(n)]


def _new_lines(server, since: int) -> list[str]:
    return server.output()[since:].splitlines()


# ------------------------------------------------------------------ High 1: bounded, off the loop
@pytest.mark.parametrize("threads", ["1", "4"])
def test_liveness_answers_within_a_second_while_the_heaviest_allowed_request_runs(
    small_model_dir, tmp_path, threads
):
    """With room for 100 title queries per request, 64 such requests of the longest allowed
    titles, eight at a time (each title fuzzily matched against every title): the model's worker
    threads (one, or four) are busy for seconds, and REST and gRPC liveness and REST readiness
    each still answer within a second."""
    from serving.limits import MAX_QUERY_LENGTH

    srv = start_server(small_model_dir, tmp_path, "--max-title-queries", "100",
                       "--max-batch-size", "100", "--model-threads", threads)
    grpc = None
    try:
        wait_live(srv)
        wait_ready(srv)
        grpc = GrpcClient(srv.grpc)
        bodies = [v2_body(("item_id", "BYTES", [100], _titles(100, MAX_QUERY_LENGTH, seed)))
                  for seed in range(64)]
        started = time.monotonic()
        rest_worst = grpc_worst = 0.0
        probes = 0
        with ThreadPoolExecutor(8) as pool:
            heavy = [pool.submit(post_v2, srv, body, 300) for body in bodies]
            time.sleep(0.2)  # all of them are in the server
            while not all(f.done() for f in heavy):
                t = time.monotonic()
                assert httpx.get(f"{srv.url}/v2/health/live", timeout=5).status_code == 200
                rest_worst = max(rest_worst, time.monotonic() - t)
                t = time.monotonic()
                assert httpx.get(f"{srv.url}/v2/models/{MODEL}/ready", timeout=5).status_code == 200
                rest_worst = max(rest_worst, time.monotonic() - t)
                t = time.monotonic()
                assert grpc.is_server_live()
                grpc_worst = max(grpc_worst, time.monotonic() - t)
                probes += 1
                time.sleep(0.1)
            answers = [f.result() for f in heavy]
        took = time.monotonic() - started
        assert {a.status_code for a in answers} == {200}, answers[0].text[:500]
        assert took > 1.0 and probes >= 3, (took, probes, rest_worst, grpc_worst)  # heavy enough
        assert rest_worst < 1.0, f"REST liveness took {rest_worst:.2f}s while heavy requests ran"
        assert grpc_worst < 1.0, f"gRPC liveness took {grpc_worst:.2f}s while heavy requests ran"
    finally:
        if grpc is not None:
            grpc.close()
        stop(srv)


def test_title_queries_and_their_length_are_bounded(server):
    from serving.limits import DEFAULT_MAX_TITLE_QUERIES, MAX_QUERY_LENGTH

    n = DEFAULT_MAX_TITLE_QUERIES + 1
    response = post_v2(server, v2_body(("item_id", "BYTES", [n], _titles(n, 20))))
    assert response.status_code == 400 and "titles" in response.json()["error"], response.text
    ids = [f"i{i}" for i in range(40)]  # exact ids cost a lookup: not limited
    assert post_v2(server, v2_body(("item_id", "BYTES", [40], ids))).status_code == 200
    long = _titles(1, MAX_QUERY_LENGTH + 1)
    response = post_v2(server, v2_body(("item_id", "BYTES", [1], long)))
    assert response.status_code == 400 and "characters" in response.json()["error"]
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:predict",
                          json={"instances": [{"item_id": long[0]}]}, timeout=10)
    assert response.status_code == 400 and "characters" in response.json()["error"]


# ------------------------------------------------------------------ High 2: no unload for anyone
def test_the_model_repository_extension_is_refused(server):
    before = httpx.get(f"{server.url}/metrics").text
    for action in ("unload", "load"):
        response = httpx.post(f"{server.url}/v2/repository/models/{MODEL}/{action}", timeout=10)
        assert response.status_code == 403, response.text
        assert "disabled" in response.json()["error"]
    grpc = GrpcClient(server.grpc)
    try:
        with pytest.raises(GrpcError) as err:
            grpc._call(op="unload_model", args=[MODEL])
        assert err.value.status == "StatusCode.PERMISSION_DENIED"
        assert grpc.is_model_ready(MODEL)
    finally:
        grpc.close()
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert post_v2(server, v2_body(("user_id", "BYTES", [1], ["u1"]))).status_code == 200
    assert "model_repository_extension" not in httpx.get(f"{server.url}/v2").json()["extensions"]
    assert metric(before, "recsys_model_ready", model_name=MODEL) == 1
    assert metric(httpx.get(f"{server.url}/metrics").text, "recsys_model_ready", model_name=MODEL) == 1


# ------------------------------------------------------------------ High 4a: nothing lost silently
def test_a_lone_surrogate_is_refused_not_answered_and_lost(server):
    """JSON may carry "\\ud800"; UTF-8 cannot, so the request log could not write the row. It is
    refused, naming the row, and counted as a client error."""
    before = httpx.get(f"{server.url}/metrics").text
    body = '{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "\\ud800"]}]}'
    response = post_v2(server, body.encode())
    assert response.status_code == 400 and "value 1" in response.json()["error"], response.text
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", timeout=10,
                          content=b'{"instances": [{"user_id": "\\ud800"}]}',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    after = httpx.get(f"{server.url}/metrics").text
    errors = "recsys_errors_total"
    assert metric(after, errors, kind="invalid_input") - metric(before, errors, kind="invalid_input") >= 1
    assert metric(after, "recsys_request_log_dropped_total", reason="encode") == 0


def test_every_answered_row_is_in_the_request_log(server):
    ids = [f"log-{i}" for i in range(30)]
    for i in range(0, 30, 3):
        body = v2_body(("user_id", "BYTES", [3], ids[i : i + 3]))
        body["id"] = f"all-rows-{i}"
        assert post_v2(server, body).status_code == 200
    deadline = time.monotonic() + 10
    while True:
        frame = read_request_log(server.request_log)
        logged = frame[frame["request_id"].str.startswith("all-rows-")]
        if len(logged) == 30 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sorted(logged["user_id"]) == sorted(ids)
    dropped = sum(metric(httpx.get(f"{server.url}/metrics").text,
                         "recsys_request_log_dropped_total", reason=r)
                  for r in ("queue_full", "encode", "write", "closed"))
    assert dropped == 0


# ------------------------------------------------------------------ Medium 5: one line at most
def test_client_errors_and_plain_answers_log_one_line_at_most(server):
    since = len(server.output())
    bad = [
        lambda: post_v2(server, v2_body(("user_id", "FP32", [1], [1.0]))),  # 400 from the model
        lambda: post_v2(server, b"{not json"),  # 400 from FastAPI
        lambda: httpx.post(f"{server.url}/v2/models/nobody/infer", json={}, timeout=10),  # 404
        lambda: httpx.post(f"{server.url}/v2/repository/models/{MODEL}/unload"),  # 403
        lambda: httpx.get(f"{server.url}/v2/models/{MODEL}/versions/1/ready"),  # 404
        lambda: httpx.get(f"{server.url}/v2/models/{MODEL}?model_version=2"),  # 400
        lambda: post_v2(server, v2_body(("user_id", "BYTES", [1], ["u1"]))),  # 200
    ]
    for call in bad:
        assert call().status_code in (200, 400, 403, 404)
    time.sleep(0.5)
    lines = _new_lines(server, since)
    assert len(lines) <= len(bad), "\n".join(lines)
    assert not any("Traceback" in line or " ERROR " in line for line in lines), "\n".join(lines)
    assert not any("kserve.trace" in line for line in lines)  # latency logging is off


# ------------------------------------------------------------------ Medium 6: bounded answers
def test_an_answer_larger_than_the_limit_is_a_400(server):
    users = [f"u{i}" for i in range(20)]
    k = MAX_ANSWER_ITEMS // len(users) + 1
    response = post_v2(server, v2_body(("user_id", "BYTES", [20], users), ("k", "INT32", [1], [k])))
    assert response.status_code == 400 and "limit" in response.json()["error"], response.text
    response = httpx.post(f"{server.url}/v1/models/{MODEL}:predict", timeout=10,
                          json={"instances": [{"user_id": u, "k": k} for u in users]})
    assert response.status_code == 400, response.text
    k = MAX_ANSWER_ITEMS // len(users)
    response = post_v2(server, v2_body(("user_id", "BYTES", [20], users), ("k", "INT32", [1], [k])))
    assert response.status_code == 200


# ------------------------------------------------------------------ Medium 9: JSON is JSON
@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"],
                         ids=["no content type", "curl -d"])
def test_v2_json_without_its_content_type_is_read_as_json(server, content_type):
    body = json.dumps(v2_body(("user_id", "BYTES", [1], ["u1"]))).encode()
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=body, headers=headers,
                          timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 10]
    response = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", content=b"user_id=u1",
                          headers=headers, timeout=10)
    assert response.status_code == 400 and "content-type" in response.json()["error"]


# ------------------------------------------------------------------ Low: error bodies, schema, host
def test_every_error_body_is_an_error_object(server):
    cases = {
        "invalid UTF-8": b'{"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["\xff"]}]}',
        "deep nesting": b"[" * 5000 + b"]" * 5000,
    }
    for case, body in cases.items():
        response = post_v2(server, body)
        assert response.status_code == 400, (case, response.text)
        assert set(response.json()) == {"error"}, (case, response.text)
    response = httpx.get(f"{server.url}/no/such/path")
    assert response.status_code == 404 and set(response.json()) == {"error"}


def test_openapi_documents_the_error_answers(server):
    schema = httpx.get(f"{server.url}/openapi.json").json()
    infer = schema["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]
    assert {"200", "400", "404", "503"} <= set(infer) and "422" not in infer
    assert infer["400"]["content"]["application/json"]["schema"]["required"] == ["error"]
    unload = schema["paths"]["/v2/repository/models/{model_name}/unload"]["post"]["responses"]
    assert "403" in unload and not any(
        code.startswith("5") and code != "503"
        for operations in schema["paths"].values() for op in operations.values()
        for code in op["responses"])


def test_the_server_listens_on_the_host_it_is_given_only(server):
    """Bound to 127.0.0.1, it does not answer on 127.0.0.2 (also this machine: a server bound to
    0.0.0.0 would)."""
    http_port, grpc_port = int(server.http.rsplit(":", 1)[1]), int(server.grpc.rsplit(":", 1)[1])
    for port in (http_port, grpc_port):
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.1", port)) == 0
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.2", port)) != 0, port


def test_recsys_serve_defaults_to_loopback():
    import argparse

    from pipelines.cli.serve import register
    from serving.server import build_parser

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert build_parser().parse_args([]).host == "0.0.0.0"  # the container: the pod's address


def test_a_rest_503_gives_the_reason_and_is_counted(small_model_dir, tmp_path):
    broken = tmp_path / "artifact"
    shutil.copytree(small_model_dir, broken)
    victim = next(p for p in sorted(broken.rglob("*.np[yz]")))
    victim.write_bytes(victim.read_bytes()[:-8] + b"corrupt!")
    srv = start_server(broken, tmp_path)
    try:
        wait_live(srv)
        before = httpx.get(f"{srv.url}/metrics").text
        since = len(srv.output())
        response = post_v2(srv, v2_body(("user_id", "BYTES", [1], ["u1"])))
        assert response.status_code == 503 and "checksum" in response.json()["error"], response.text
        v1 = httpx.post(f"{srv.url}/v1/models/{MODEL}:predict", json={"instances": [{"user_id": "u1"}]})
        assert v1.status_code == 503 and "checksum" in v1.json()["error"]
        for _ in range(3):  # failing readiness probes: one access line each, no traceback
            assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 503
        after = httpx.get(f"{srv.url}/metrics").text
        kind = "recsys_errors_total"
        assert metric(after, kind, kind="not_ready") - metric(before, kind, kind="not_ready") == 2
        time.sleep(0.3)
        lines = _new_lines(srv, since)
        assert len(lines) <= 6 and not any("Traceback" in line for line in lines), "\n".join(lines)
    finally:
        stop(srv)


# ------------------------------------------------------ issue 23, Medium 3: slow and greedy clients
SLOW_HEADERS = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Never-Finished: "
GREEDY_CLIENT = "127.0.0.2"  # loopback too: the flood comes from another address than the probes


def _flood(url: str, n: int) -> list[socket.socket]:
    """`n` connections from GREEDY_CLIENT that each send part of a request's headers, no more."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    held = []
    for _ in range(n):
        sock = socket.create_connection((host, int(port)), timeout=30,
                                        source_address=(GREEDY_CLIENT, 0))
        try:
            sock.sendall(SLOW_HEADERS)
        except OSError:  # refused and closed already
            pass
        held.append(sock)
    return held


def _until_closed(sock: socket.socket, wait: float) -> bytes:
    """What the server sent before closing the connection; TimeoutError if it is still open."""
    sock.settimeout(wait)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def _check_flood(url: str, health: str, n: int, cap: int, header_timeout: float) -> None:
    """While `n` slow-header connections from one client are held, another client's health
    check answers 200; the connections beyond `cap` are answered 503 at once, the others 408
    once `header_timeout` has passed, and every one of them is closed."""
    held = _flood(url, n)
    try:
        for _ in range(3):
            assert httpx.get(url + health, timeout=10).status_code == 200
        answers = [_until_closed(sock, header_timeout + 30) for sock in held]
    finally:
        for sock in held:
            sock.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408")]
    assert len(refused) == n - cap, (len(refused), answers[:3])
    assert b"too many connections from 127.0.0.2" in refused[0]
    assert len(timed_out) == cap, (len(timed_out), answers[-3:])
    assert httpx.get(url + health, timeout=10).status_code == 200


def test_the_predictor_bounds_slow_headers_and_connections_per_client(server):
    """The defaults: 256 connections per client, 10 s for the headers."""
    from serving.limits import DEFAULT_HEADER_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_CLIENT

    _check_flood(server.url, "/v2/health/live", 300, DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
                 DEFAULT_HEADER_TIMEOUT)


def test_every_rest_worker_bounds_slow_headers(small_model_dir, tmp_path):
    """With --workers 2 the REST server runs in spawned processes: the bounds go with it."""
    srv = start_server(small_model_dir, tmp_path, "--host", "127.0.0.1", "--workers", "2",
                       "--header-timeout", "1", "--max-connections-per-client", "4")
    try:
        wait_live(srv)
        held = _flood(srv.url, 12)  # two workers: each caps what it holds at 4
        answers = [_until_closed(sock, 30) for sock in held]
        assert all(a.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")) for a in answers), answers
        assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 12 - 2 * 4
    finally:
        stop(srv)


def test_the_events_service_keeps_answering_others_under_a_slow_header_flood(tmp_path):
    """1,100 slow-header connections from one client made every request, /healthz included,
    answer 503 (uvicorn's limit_concurrency is 1,024) and one stayed open after 40 s. Now:
    /healthz answers, the flood is capped and closed; a kept-alive connection that starts its
    next request and stalls, and a body that stalls, are closed by their deadlines."""
    from events_process import start_service, stop_service

    proc, url = start_service(f"sqlite:///{tmp_path / 'f.db'}", tmp_path / "events.log",
                              "--header-timeout", "2", "--body-timeout", "2",
                              "--max-connections-per-client", "100")
    try:
        _check_flood(url, "/healthz", 1100, 100, 2)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /heal")  # the next request, never finished
            assert b"HTTP/1.1 408 Request Timeout" in _until_closed(kept, 30)  # after the 200's body
        with socket.create_connection((host, int(port)), timeout=30) as slow_body:
            slow_body.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: "
                              b"application/json\r\ncontent-length: 100\r\n\r\n[{")
            _until_closed(slow_body, 30)  # closed (the service's own 30 s are not waited for)
        huge = httpx.get(url + "/healthz", headers={f"x-{i}": "y" * 1000 for i in range(80)},
                         timeout=10)
        assert huge.status_code == 431
        assert stop_service(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_console_bounds_slow_headers_and_connections_per_client(tmp_path):
    from console_stack import free_port, start

    port = free_port()
    console = start("console", ["console", "--home", str(tmp_path / "home"), "--port", str(port),
                                "--predictor-url", f"http://127.0.0.1:{free_port()}",
                                "--events-url", f"http://127.0.0.1:{free_port()}",
                                "--header-timeout", "2", "--max-connections-per-client", "20"],
                    tmp_path / "console.log", "/healthz", url=f"http://127.0.0.1:{port}",
                    home=tmp_path / "home")
    try:
        _check_flood(console.url, "/healthz", 60, 20, 2)
    finally:
        assert console.stop() == 0, console.output()[-2000:]


@pytest.mark.parametrize("option, value, message", [
    ("--header-timeout", "0", "--header-timeout must be positive, got 0"),
    ("--body-timeout", "-1", "--body-timeout must be positive, got -1"),
    ("--max-connections-per-client", "-1", "--max-connections-per-client must not be negative"),
])
def test_connection_limits_that_cannot_work_are_one_line(tmp_path, option, value, message):
    for command in (["-m", "serving.events", "--store", f"sqlite:///{tmp_path / 'f.db'}"],
                    ["-m", "serving", "--model-dir", str(tmp_path)]):
        done = subprocess.run([sys.executable, *command, option, value], check=False, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0 and message in done.stderr, done.stderr[-1000:]
        assert "Traceback" not in done.stderr


def _raw_request(url: str, head: bytes, body_chunks=(), wait: float = 30) -> bytes:
    """Send a request's head and body pieces on a new connection; what the server sent before
    closing it (or all it sent within `wait`)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=wait)
    try:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
    except OSError:  # the server answered and closed while the body was still being sent
        pass
    try:
        return _until_closed(sock, wait)
    except TimeoutError:
        return b"(still open)"


def test_a_body_past_the_cap_is_a_413_before_it_is_read(server):
    """The default cap (16 MiB): a declared Content-Length past it is answered 413 at once,
    without the body; a chunked body that grows past it is cut off with a 413; a body below it
    (a v2 request padded to 2 MiB) is answered; the server goes on answering."""
    from serving.limits import DEFAULT_MAX_REQUEST_BYTES as cap

    path = f"/v2/models/{MODEL}/infer".encode()
    declared = _raw_request(server.url, b"POST %s HTTP/1.1\r\nHost: x\r\ncontent-type: "
                            b"application/json\r\ncontent-length: %d\r\n\r\n" % (path, cap + 1),
                            wait=10)
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert json.loads(declared.split(b"\r\n\r\n", 1)[1])["error"].endswith(f"over {cap}")
    piece = b" " * (1024 * 1024)
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (cap // len(piece) + 2) + [b"0\r\n\r\n"]
    chunked = _raw_request(server.url, b"POST %s HTTP/1.1\r\nHost: x\r\ncontent-type: "
                           b"application/json\r\ntransfer-encoding: chunked\r\n\r\n" % path, chunks)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    body = json.dumps(v2_body(("user_id", "BYTES", [1], ["1"]))) + " " * (2 * 1024 * 1024)
    answered = post_v2(server, body)
    assert answered.status_code == 200, answered.text[:300]
    assert len(answered.json()["outputs"][0]["data"]) > 0


def test_the_body_cap_is_an_option():
    done = subprocess.run([sys.executable, "-m", "serving", "--help"], check=True, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert "--max-body-bytes" in done.stdout
    done = subprocess.run([sys.executable, "-m", "serving", "--model-dir", "x", "--max-body-bytes",
                           "-1"], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--max-body-bytes must not be negative" in done.stderr
    assert "Traceback" not in done.stderr


def _one_rest_and_one_grpc_answer(server) -> list[str]:
    """The server's log lines written while it answers one REST and one gRPC request."""
    since = len(server.output())
    assert post_v2(server, v2_body(("user_id", "BYTES", [1], ["u1"]))).status_code == 200
    client = GrpcClient(server.grpc)
    try:
        client.infer(MODEL, [("user_id", "BYTES", ["u1"])])
    finally:
        client.close()
    time.sleep(0.5)
    return _new_lines(server, since)


def test_no_access_log_drops_the_line_per_request_over_rest_and_grpc(server, small_model_dir,
                                                                    tmp_path):
    logged = _one_rest_and_one_grpc_answer(server)  # the default: KServe's lines
    assert any("POST /v2/models/" in line for line in logged), "\n".join(logged)
    assert any("grpc method:" in line for line in logged), "\n".join(logged)
    quiet = start_server(small_model_dir, tmp_path, "--no-access-log")
    try:
        wait_live(quiet)
        wait_ready(quiet)
        logged = _one_rest_and_one_grpc_answer(quiet)
    finally:
        stop(quiet)
    assert not any("POST /v2/models/" in line or "grpc method:" in line for line in logged), (
        "\n".join(logged))


# ------------------------------------------------------------------ Low: SIGTERM drains (last)
def test_sigterm_drains_keep_alive_clients_and_exits_cleanly(server):
    """After SIGTERM: readiness is false at once; requests on kept-alive connections go on being
    answered (each saying `Connection: close`) for the drain; then the process exits 0 with
    every answered row in the request log. (This test stops the module's server.)"""
    answered: list[str] = []
    failures: list[str] = []
    stop_sending = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=10) as http:  # one kept-alive connection, reused
            i = 0
            while not stop_sending.is_set():
                body = v2_body(("user_id", "BYTES", [1], [f"drain-{n}-{i}"]))
                body["id"] = f"drain-{n}-{i}"
                try:
                    response = http.post(f"{server.url}/v2/models/{MODEL}/infer", json=body)
                    if response.status_code == 200:
                        answered.append(body["id"])
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                i += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
    during = len(answered)
    time.sleep(DRAIN_SECONDS - 0.8)  # a load balancer that saw readiness fail stops sending
    stop_sending.set()
    for t in threads:
        t.join()
    assert len(answered) > during, "nothing was answered during the drain"
    assert not failures, failures[:5]
    assert server.process.wait(30) == 0, server.output()[-2000:]
    logged = set(read_request_log(server.request_log)["request_id"])
    assert set(answered) <= logged
