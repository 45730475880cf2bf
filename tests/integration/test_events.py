"""The feedback events service (`python -m serving.events`, also `recsys events serve`) as a
real process on a loopback port, over a real SQLite store (and PostgreSQL where marked).

KServe's payload logger cannot run here (it is a sidecar on a cluster), so the tests post what
it posts: binary-mode CloudEvents, a request and a response per inference sharing `ce-id`, in
either order.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from components.feedback.feedback_store import FeedbackStore
from serving.payload_logger import REQUEST_TYPE, RESPONSE_TYPE, EventPairer
from serving.request_log import read_request_log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import POSTGRES_ADMIN_URL
from events_process import free_port, start_service, stop_service

REPO = Path(__file__).resolve().parents[2]
REQUEST = {"id": "r1", "inputs": [
    {"name": "user_id", "datatype": "BYTES", "shape": [2], "data": ["u1", "stranger"]},
    {"name": "k", "datatype": "INT32", "shape": [1], "data": [2]},
]}
RESPONSE = {"id": "answer-1", "model_name": "recsys", "model_version": "v7", "outputs": [
    {"name": "item_ids", "datatype": "BYTES", "shape": [2, 2], "data": ["a", "b", "c", "d"]},
    {"name": "scores", "datatype": "FP32", "shape": [2, 2], "data": [0.9, 0.5, 3.0, 2.0]},
    {"name": "cold_start", "datatype": "BOOL", "shape": [2], "data": [False, True]},
]}


ALLOWED_ORIGIN = "http://console.example:8088"


def ce_headers(kind: str, event_id: str) -> dict[str, str]:
    return {"Ce-Id": event_id, "Ce-Type": kind, "Ce-Specversion": "1.0",
            "Ce-Source": "http://localhost:9081/", "Ce-Time": "2025-01-31T12:00:00Z",
            "Ce-Inferenceservicename": "recsys", "Content-Type": "application/json"}


def click(event_id: str, **extra) -> dict:
    return {"event_id": event_id, "type": "click", "user_id": "u1", "item_id": "a", **extra}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`recsys events serve` with no --store: the run home's store (what `recsys serve` reads)."""
    home = tmp_path_factory.mktemp("events")
    port = free_port()
    log = home / "service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli.main", "events", "serve", "--home", str(home),
             "--port", str(port), "--request-log", str(home / "log"), "--pending-ttl", "2",
             "--max-batch", "50", "--max-body-bytes", "100000",
             "--allow-origin", ALLOWED_ORIGIN],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    yield base, f"sqlite:///{home / 'feedback.db'}", home, proc
    if proc.poll() is None:
        proc.kill()


def post(base: str, body, path: str = "/v1/events", **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs.setdefault("headers", {"content-type": "application/json"})
    return httpx.post(base + path, content=content, timeout=10, **kwargs)


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def stored(url: str) -> set[str]:
    with FeedbackStore(url) as store:
        return set(store.read_events().event_id)


def test_events_are_stored_and_a_retry_is_answered_as_a_duplicate(service):
    base, url = service[:2]
    first = post(base, click("s1", request_id="answer-1", position=1, item_id="b"))
    assert first.status_code == 200 and first.json() == {
        "accepted": 1, "duplicates": 0, "duplicate_ids": []}
    again = post(base, [click("s1"), click("s2", type="rating", value=4.5)])
    assert again.json() == {"accepted": 1, "duplicates": 1, "duplicate_ids": ["s1"]}
    assert {"s1", "s2"} <= stored(url)


@pytest.mark.parametrize("body, status, error", [
    (b"{not json", 400, "body: not JSON: unexpected character, expected a string key (at line 1"),
    ([], 400, "body: an empty batch"),
    ("just a string", 400, "event: must be a JSON object, not str"),
    ({"type": "click", "user_id": "u", "item_id": "i"}, 400, "event_id: required"),
    (click("b1", type="rating"), 400, "value: required for a rating"),
    (click("b2", type="view"), 400, "type: 'view' is not one of"),
    (click("b3", user_id=True), 400, "user_id: must be a string or an integer, not bool"),
    (click("b4", timestamp="yesterday"), 400, "timestamp: not ISO 8601 or Unix seconds"),
    (click("b5", position=1.5), 400, "position: must be an integer, not float"),
    (click("b6", item_id="x" * 300), 400, "item_id: longer than 256 characters"),
    (click("b7", item_id="a\u0000b"), 400, "item_id: must not contain a NUL character (U+0000"),
    (click("b8", extra=1), 400, "extra: unknown field"),
    ([click("b9"), click("b10", type="rating")], 400, "[1].value: required for a rating"),
    ([click(f"b{i}") for i in range(51)], 413, "body: 51 events exceed the limit of 50"),
    ({"event_id": "b11", "pad": "x" * 100_001}, 413, "body: "),
])
def test_bad_input_is_refused_and_nothing_of_it_is_stored(service, body, status, error):
    base, url = service[:2]
    response = post(base, body)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)
    assert not {f"b{i}" for i in range(12)} & stored(url)


@pytest.mark.parametrize("headers, status, error", [
    ({"content-type": "text/plain"}, 415, "content-type: expected application/json, got text/pl"),
    ({"content-type": "application/x-www-form-urlencoded"}, 415, "content-type: expected"),
    ({}, 415, "content-type: expected application/json, got none"),
    ({"content-type": "application/json", "origin": "http://evil.example"}, 403,
     "origin: http://evil.example is not allowed"),
    ({"content-type": "application/json", "origin": "null"}, 403, "origin: null is not allowed"),
    ({"content-type": "text/plain", "origin": "http://evil.example"}, 403, "origin: "),
])
def test_what_a_browser_can_send_cross_site_is_refused(service, headers, status, error):
    """A page elsewhere can post text/plain or a form without a preflight; with an Origin that
    is not allowed nothing is taken either, whatever the content type."""
    base, url = service[:2]
    event_id = f"cross-{status}-{len(headers)}-{hash(tuple(headers.items())) & 0xffff}"
    response = httpx.post(base + "/v1/events", content=json.dumps(click(event_id)).encode(),
                          headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(error)
    assert "access-control-allow-origin" not in response.headers
    assert event_id not in stored(url)


def test_an_allowed_origin_and_servers_without_one_may_post(service):
    base, url = service[:2]
    assert post(base, click("no-origin")).status_code == 200  # server to server, as before
    assert post(base, click("charset"),
                headers={"content-type": "application/json; charset=utf-8"}).status_code == 200
    preflight = httpx.options(base + "/v1/events", timeout=10, headers={
        "origin": ALLOWED_ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "content-type" in preflight.headers["access-control-allow-headers"]
    foreign = httpx.options(base + "/v1/events", timeout=10, headers={
        "origin": "http://evil.example", "access-control-request-method": "POST"})
    assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers
    answer = post(base, click("from-console"),
                  headers={"content-type": "application/json", "origin": ALLOWED_ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert {"no-origin", "charset", "from-console"} <= stored(url)


def test_a_page_on_another_port_cannot_store_an_event_from_a_browser(service, tmp_path):
    """Headless Chromium loads a page from another loopback port that posts a like both ways a
    page can: text/plain without a preflight (no-cors), and application/json (preflighted)."""
    import http.server
    import socketserver

    from browser import browser_missing, launch

    try:
        import playwright.sync_api as playwright_api
    except ImportError as exc:
        browser_missing(f"playwright not installed ({exc})")
    base, url = service[:2]
    (tmp_path / "index.html").write_text("<!doctype html><title>elsewhere</title>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    page_server = socketserver.TCPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    script = """async ([url, plain, json]) => {
      const out = [];
      try {
        await fetch(url, {method: "POST", mode: "no-cors", body: plain,
                          headers: {"content-type": "text/plain"}});
        out.push("no-cors sent");
      } catch (e) { out.push("no-cors failed: " + e); }
      try {
        const r = await fetch(url, {method: "POST", body: json,
                                    headers: {"content-type": "application/json"}});
        out.push("cors " + r.status);
      } catch (e) { out.push("cors refused: " + e); }
      return out;
    }"""
    try:
        with playwright_api.sync_playwright() as pw:
            try:
                browser = launch(pw)
            except RuntimeError as exc:
                browser_missing(str(exc))
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{page_server.server_address[1]}/index.html")
            outcome = page.evaluate(script, [
                base + "/v1/events", json.dumps(click("browser-plain", type="like")),
                json.dumps(click("browser-json", type="like"))])
            browser.close()
    finally:
        page_server.shutdown()
        page_server.server_close()
    assert outcome[0] == "no-cors sent"  # the browser did send it...
    assert outcome[1].startswith("cors refused")  # ...the preflighted one never left
    assert not {"browser-plain", "browser-json"} & stored(url)  # and nothing was stored


@pytest.mark.parametrize("body, error", [
    (click("c1", item_id="a\nb"), ("item_id: must not contain a control character (U+000A at "
     "index 1)")),
    (click("c2", user_id="u\r\nX-Injected: 1"), ("user_id: must not contain a control character "
     "(U+000D at index 1)")),
    (click("c3\n"), "event_id: must not contain a control character (U+000A at index 2)"),
    (click("c4", request_id="r\u2028"), "request_id: must not contain a line separator"),
    (click("c5", model_version="v\x1b[31m"), "model_version: must not contain a control char"),
    (click("c6", timestamp=0), ("timestamp: 0 is not a time between 1990-01-01T00:00:00Z and "
     "86400 s after now")),
    (click("c7", timestamp="1970-01-02T00:00:00Z"), "timestamp: 86400 is not a time between"),
    (click("c8", timestamp=time.time() * 1000), "timestamp: "),
    (b'{"event_id": "c9", "type": "rating", "user_id": "u", "item_id": "i", "value": NaN}',
     "body: not JSON: NaN and Infinity are not JSON numbers (at line 1, column 79)"),
    ((b'{"event_id": "c10", "type": "click", "user_id": "u", "item_id": "i", "timestamp": '
     b'-Infinity}'), "body: not JSON: NaN and Infinity are not JSON numbers"),
    (b"[" * 100_000, "body: not JSON: nested deeper than 1024 levels"),
    (b"", "body: not JSON: the body is empty"),
    (b'{"event_id": 1.5, "type": "click", "user_id": "u", "item_id": "i"}',
     "event_id: must be a string or an integer, not float"),
])
def test_each_refusal_names_its_problem_and_nothing_is_stored(service, body, error):
    base, url = service[:2]
    response = post(base, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(error), response.json()
    assert not {f"c{i}" for i in range(11)} & {i.strip() for i in stored(url)}


def test_a_big_integer_id_is_taken_exactly_as_a_string(service):
    base, url = service[:2]
    body = (b'{"event_id": 123456789012345678901234567890, "type": "click", '
            b'"user_id": 98765432109876543210, "item_id": 1}')
    response = post(base, body)
    assert response.status_code == 200, response.text
    with FeedbackStore(url) as store:
        events = store.read_events()
    row = events[events.event_id == "123456789012345678901234567890"]
    assert row.user_id.tolist() == ["98765432109876543210"]


def test_the_earliest_timestamp_is_an_option(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    proc, base = start_service(url, tmp_path / "service.log", "--earliest-timestamp", "0",
                               "--max-future-seconds", "0")
    try:
        assert post(base, click("epoch", timestamp=0)).status_code == 200
        late = post(base, click("late", timestamp=time.time() + 3600))
        assert late.status_code == 400 and "and 0 s after now" in late.json()["error"]
    finally:
        assert stop_service(proc) == 0
    bad = subprocess.run([sys.executable, "-m", "serving.events", "--store", url,
                          "--earliest-timestamp", "last tuesday"], cwd=REPO, check=False,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().endswith(
        "--earliest-timestamp last tuesday: not an ISO 8601 date or time, nor Unix seconds")


def test_fuzz_whatever_is_posted_the_answer_is_200_400_or_413(service):
    """A fuzz run over HTTP: arbitrary JSON (event-shaped or not) and arbitrary bytes. No
    answer is a 5xx, every refusal names a field, every 200 is stored, the service lives."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from components.feedback.feedback_events import EVENT_FIELDS, EVENT_TYPES

    base, url = service[:2]
    scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats()
               | st.text(max_size=30))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
    events = st.fixed_dictionaries(
        {"event_id": st.uuids().map(str), "type": st.sampled_from(EVENT_TYPES),
         "user_id": st.text(min_size=1, max_size=5), "item_id": st.integers(0, 99)},
        optional={field: values for field in EVENT_FIELDS[4:]})
    # ...and each field in turn given anything at all
    events = events | st.tuples(events, st.sampled_from([*EVENT_FIELDS, "extra"]), values).map(
        lambda drawn: {**drawn[0], drawn[1]: drawn[2]})
    bodies = (events.map(json.dumps) | st.lists(events, max_size=60).map(json.dumps)
              | values.map(lambda v: json.dumps(v, allow_nan=True)) | st.binary(max_size=200))
    accepted: set[str] = set()

    examples = int(os.environ.get("RECSYS_FUZZ_EXAMPLES", "150"))  # more for a long run

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def fuzz(body):
        raw = body.encode() if isinstance(body, str) else body
        response = http.post("/v1/events", content=raw,
                             headers={"content-type": "application/json"})
        assert response.status_code in (200, 400, 413), (response.status_code, body)
        if response.status_code == 200:
            data = json.loads(body)
            sent = [data] if isinstance(data, dict) else data
            accepted.update(str(e["event_id"]).strip() for e in sent)
        else:
            field, _, what = response.json()["error"].partition(": ")
            assert field and what, response.text

    with httpx.Client(base_url=base, timeout=10) as http:
        fuzz()
    assert httpx.get(base + "/healthz", timeout=5).status_code == 200
    assert accepted and accepted <= stored(url)


def test_a_body_larger_than_declared_limit_is_refused_before_it_is_read(service):
    """The declared length decides: the service answers 413 without waiting for 10 MB."""
    import socket

    host, port = service[0].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 10000000\r\n\r\n[")
        answer = b""
        while b"}" not in answer and (chunk := sock.recv(4096)):  # headers, then the body
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "exceed 100000" in answer


def test_payload_logger_pairs_become_impressions_and_request_log_records(service):
    base, url, home = service[:3]
    assert post(base, REQUEST, "/", headers=ce_headers(REQUEST_TYPE, "ce1")).json() == {
        "records": 0}
    assert post(base, RESPONSE, "/", headers=ce_headers(RESPONSE_TYPE, "ce1")).json() == {
        "records": 2}
    # the other order
    second = {**RESPONSE, "id": "answer-2"}
    assert post(base, second, "/", headers=ce_headers(RESPONSE_TYPE, "ce2")).json() == {
        "records": 0}
    assert post(base, REQUEST, "/", headers=ce_headers(REQUEST_TYPE, "ce2")).json() == {
        "records": 2}
    deadline = time.monotonic() + 10
    with FeedbackStore(url) as store:
        while len(shown := store.read_impressions()) < 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        clicked = store.read_events(types=["click"])
    first = shown[shown.request_id == "answer-1"]  # the response's id: what clients send back
    assert first[["user_id", "item_id", "position"]].values.tolist() == [
        ["stranger", "c", 0], ["stranger", "d", 1], ["u1", "a", 0], ["u1", "b", 1]]
    assert set(first.model_version) == set(first.source_version) == {"v7"}
    # the click posted with request_id answer-1 joins its impression and model version
    joined = clicked.merge(shown, on=["request_id", "user_id", "item_id"], suffixes=("", "_shown"))
    assert joined[["event_id", "position_shown", "model_version_shown"]].values.tolist() == [
        ["s1", 1, "v7"]]
    while len(records := read_request_log(home / "log")) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(records.request_id) == {"ce1", "ce2"} and records.model_version.eq("v7").all()


def test_bad_cloudevents_are_refused_and_everything_is_counted(service):
    base = service[0]
    assert post(base, b"\x00\x01binary tensors", "/",
                headers=ce_headers(REQUEST_TYPE, "bad")).status_code == 400
    plain = post(base, REQUEST, "/")  # not a CloudEvent
    assert plain.status_code == 400 and "ce-id" in plain.json()["error"]
    metrics = httpx.get(base + "/metrics", timeout=5).text
    for line in ('recsys_events_rejected_total{reason="not_json"}',
                 'recsys_events_rejected_total{reason="not_an_inference_event"}',
                 'recsys_events_rejected_total{reason="invalid_event"}',
                 'recsys_events_rejected_total{reason="batch_too_large"}',
                 'recsys_events_rejected_total{reason="body_too_large"}',
                 'recsys_events_received_total{type="request"}',
                 'recsys_events_accepted_total{type="click"}',
                 'recsys_events_accepted_total{type="rating"}',
                 "recsys_events_duplicate_total", "recsys_events_store_seconds_count"):
        value = next(x for x in metrics.splitlines() if x.startswith(line + " "))
        assert float(value.rsplit(" ", 1)[1]) >= 1, value
    assert httpx.get(base + "/healthz", timeout=5).json() == {"status": "ok", "store": "ok"}
    assert httpx.get(base + "/nowhere", timeout=5).status_code == 404


def test_sigterm_finishes_what_was_accepted_and_exits_cleanly(service):
    base, url, _home, proc = service
    assert post(base, REQUEST, "/", headers=ce_headers(REQUEST_TYPE, "last")).status_code == 202
    assert post(base, {**RESPONSE, "id": "answer-last"}, "/",
                headers=ce_headers(RESPONSE_TYPE, "last")).status_code == 202
    assert post(base, click("last-click")).status_code == 200
    assert stop_service(proc) == 0
    with FeedbackStore(url) as store:  # the queued impressions were written on the way out
        assert "answer-last" in set(store.read_impressions().request_id)
        assert "last-click" in set(store.read_events().event_id)


def test_the_pairer_expires_unpaired_events_and_bounds_its_memory():
    pairs, expired = [], []
    pairer = EventPairer(lambda req, resp, h: pairs.append(resp["id"]) or 2, ttl=10,
                         max_pending=2, on_expired=lambda: expired.append(1))
    req = lambda event_id: {"ce-id": event_id, "ce-type": REQUEST_TYPE}
    resp = lambda event_id: {"ce-id": event_id, "ce-type": RESPONSE_TYPE}
    assert pairer.add(req("a"), REQUEST, now=0) == 0
    assert pairer.add(req("b"), REQUEST, now=1) == 0
    assert pairer.add(req("c"), REQUEST, now=2) == 0  # over max_pending: "a" goes
    assert len(expired) == 1
    assert pairer.add(resp("a"), RESPONSE, now=3) == 0  # too late: waits as a new event
    assert pairer.add(resp("b"), RESPONSE, now=12) == 0  # b expired at 11
    assert len(expired) == 3  # "a" (bound), then "b" and "c" (ttl)
    assert pairer.add(req("a"), REQUEST, now=12.5) == 2 and pairs == ["answer-1"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_right_after_a_2xx_loses_nothing(backend, tmp_path, request):
    """A 200 means committed: clients post until the service is killed with SIGKILL at a
    random moment, and every event a 200 acknowledged is in the store afterwards."""
    url = (f"sqlite:///{tmp_path / 'feedback.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    proc, base = start_service(url, tmp_path / "service.log")
    acked: list[str] = []

    def client(name: str, batch: int) -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            for seq in range(100_000):
                events = [click(f"{name}-{seq}-{i}") for i in range(batch)]
                try:
                    response = http.post("/v1/events", json=events if batch > 1 else events[0])
                except httpx.HTTPError:
                    return  # the service is gone
                if response.status_code == 200:
                    acked.extend(e["event_id"] for e in events)  # acknowledged: must be stored

    threads = [threading.Thread(target=client, args=(f"c{i}", batch))
               for i, batch in enumerate((1, 1, 10, 100))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for thread in threads:
        thread.join(10)
    assert len(acked) >= 500
    missing = set(acked) - stored(url)
    assert not missing, f"{len(missing)} acknowledged events lost"


def test_an_unreachable_store_is_a_503_and_an_unhealthy_service(postgres_url, tmp_path):
    import sqlalchemy as sa

    proc, base = start_service(postgres_url, tmp_path / "service.log")
    try:
        assert post(base, click("before")).status_code == 200
        database = sa.engine.make_url(postgres_url).database
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # the database goes away under the service
            conn.exec_driver_sql(f'DROP DATABASE "{database}" WITH (FORCE)')
        admin.dispose()
        time.sleep(1.1)  # past the health check's one-second memory
        response = post(base, click("after"))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"].startswith("store: unavailable")
        assert httpx.get(base + "/healthz", timeout=10).status_code == 503
        metrics = httpx.get(base + "/metrics", timeout=5).text
        assert 'recsys_events_rejected_total{reason="store_unavailable"} 1.0' in metrics
    finally:
        assert stop_service(proc) == 0


def test_with_redis_the_users_history_lists_are_written_after_the_commit(redis_prefix,
                                                                          tmp_path):
    import redis

    redis_url, prefix = redis_prefix
    proc, base = start_service(f"sqlite:///{tmp_path / 'f.db'}", tmp_path / "service.log",
                               "--online-store", redis_url, "--online-store-prefix", prefix)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        answer = post(base, [click("r1", item_id="i1", timestamp=1_700_000_000),
                             click("r2", item_id="i2", type="like", timestamp=1_700_000_001),
                             click("r3", item_id="i3", type="impression"),
                             click("r4", item_id="i4", user_id="u2", type="consume")])
        assert answer.status_code == 200
        wait_for(lambda: client.lrange(f"{prefix}history:u2", 0, -1) == ["i4"])
        assert client.lrange(f"{prefix}history:u1", 0, -1) == ["i2", "i1"]  # newest first
        assert client.ttl(f"{prefix}history:u1") > 0
        changes = client.xrange(f"{prefix}history-changes")
        assert sorted(fields["user_id"] for _id, fields in changes) == ["u1", "u2"]
        assert post(base, click("r1", item_id="i1")).json()["duplicates"] == 1
        assert post(base, click("r5", item_id="i5", user_id="u3")).status_code == 200
        wait_for(lambda: client.lrange(f"{prefix}history:u3", 0, -1) == ["i5"])
        assert client.lrange(f"{prefix}history:u1", 0, -1) == ["i2", "i1"]  # not pushed again
    finally:
        client.close()
        assert stop_service(proc) == 0


def test_an_unreachable_redis_costs_the_history_not_the_event(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    proc, base = start_service(url, tmp_path / "service.log",
                               "--online-store", f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert post(base, click("kept")).status_code == 200

        def online(name: str) -> float:
            text = httpx.get(base + "/metrics", timeout=5).text
            return float(next(x for x in text.splitlines() if x.startswith(name + " "))
                         .rsplit(" ", 1)[1])

        wait_for(lambda: online("recsys_events_online_store_errors_total") >= 1)
        assert math.isnan(online("recsys_events_online_lag_events"))  # no cursor read yet
    finally:
        assert stop_service(proc) == 0
    assert "kept" in stored(url)
    assert "online store: cannot bring the users' history up to date" in (
        tmp_path / "service.log").read_text()


def test_a_store_that_cannot_work_is_one_line_and_exit_1(capsys):
    from pipelines.cli.main import main

    assert main(["events", "serve", "--store", "mysql://nobody@nowhere/db"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        ("recsys events: error: feedback store mysql://nobody@nowhere/db: only sqlite and "
         "postgresql are supported")]


def test_the_manifest_runs_this_module_with_options_it_has():
    """manifests/base/events.yaml starts the service from the project image: the module and
    every flag it passes must exist (a typo would only show on a cluster)."""
    import yaml

    from serving.events import main  # noqa: F401 (the module the manifest names)

    docs = yaml.safe_load_all((REPO / "manifests" / "base" / "events.yaml").read_text())
    deployment = next(d for d in docs if d and d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "serving.events"]
    help_text = subprocess.run(
        [sys.executable, "-m", "serving.events", "--help"], capture_output=True, text=True,
        check=True).stdout
    for flag in (a for a in container["args"] if a.startswith("--")):
        assert flag in help_text, flag
