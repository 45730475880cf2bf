"""The thin v2 infer path (serving/fast_infer.py) answers exactly as KServe's route does: two
servers on one model, one with the path and one without (`--no-fast-infer`), get the same
requests over raw HTTP/1.1 and must send the same bytes back (status line, headers but the
date, body), for many users, bad requests and bodies the path hands to KServe's route.
tritonclient.http works against it and /metrics counts what it answered."""
from __future__ import annotations

import json
import random
import re
import socket
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_process import MODEL, start_server, stop, wait_live, wait_ready

PATH = f"/v2/models/{MODEL}/infer"
PLAIN = b'{"id": "x", "inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["1"]}]}'
LONE_SURROGATE = PLAIN.replace(b'"data": ["1"]', b'"data": ["\\ud800"]')


@pytest.fixture(scope="module")
def pair(small_model_dir, tmp_path_factory):
    """(fast path on, KServe's route) on the same model, no online history."""
    common = ("--no-online-store",)
    fast = start_server(small_model_dir, tmp_path_factory.mktemp("fast"), *common)
    plain = start_server(small_model_dir, tmp_path_factory.mktemp("plain"), *common,
                         "--no-fast-infer")
    try:
        for server in (fast, plain):
            wait_live(server)
            wait_ready(server)
        yield fast, plain
    finally:
        stop(fast)
        stop(plain)


def _raw(server, body: bytes, *, path: str = PATH, headers: bytes = b"",
         content_type: bytes | None = b"application/json") -> bytes:
    """The whole HTTP/1.1 answer, without its `date` header."""
    host, port = server.http.rsplit(":", 1)
    ctype = b"Content-Type: %s\r\n" % content_type if content_type is not None else b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: test\r\n%s%sContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (path.encode(), ctype, headers, len(body), body))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return re.sub(rb"(?im)^date: [^\r]*\r\n", b"", data)


def _inp(name: str, datatype: str, shape: list, data: list) -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _same(pair, body, **kwargs) -> bytes:
    fast, plain = pair
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    a, b = _raw(fast, raw, **kwargs), _raw(plain, raw, **kwargs)
    assert a == b, (raw[:300], a[:800], b[:800])
    return a


def test_answers_are_byte_identical_for_many_users(pair, small_dataset):
    users = sorted(small_dataset.interactions["user_id"].astype(str).unique())
    items = sorted(small_dataset.interactions["item_id"].astype(str).unique())
    rng = random.Random(5)
    for n, user in enumerate(users[:120] + ["nobody", "\u00e9t\u00e9"]):
        inputs = [_inp("user_id", "BYTES", [1], [user])]
        if n % 3 == 1:
            inputs.append(_inp("k", "INT32", [1], [rng.randint(1, 40)]))
        if n % 5 == 2:
            inputs.append(_inp("history_item_ids", "BYTES", [1, 2], rng.sample(items, 2)))
        if n % 7 == 3:
            inputs.append(_inp("exclude_item_ids", "BYTES", [1, 1], rng.sample(items, 1)))
        answer = _same(pair, {"id": f"req-{n}", "inputs": inputs})
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:300]
    # a batch, int ids, a whole-catalogue k (NaN padding: null), similar items, explanations
    _same(pair, {"id": "b", "inputs": [_inp("user_id", "BYTES", [3], users[:3]),
                                         _inp("k", "INT32", [3], [1, 5, 9])]})
    _same(pair, {"id": "i", "inputs": [_inp("user_id", "INT64", [2], [1, 2])]})
    whole = _same(pair, {"id": "w", "inputs": [_inp("user_id", "BYTES", [1], [users[0]]),
                                                 _inp("k", "INT32", [1], [len(items)])]})
    assert b"null" in whole
    _same(pair, {"id": "s", "inputs": [_inp("item_id", "BYTES", [2], [items[0], "no such"])]})
    _same(pair, {"id": "e", "inputs": [_inp("user_id", "BYTES", [1], [users[1]]),
                                         _inp("explain", "BOOL", [1], [True])]})
    _same(pair, {"id": None, "parameters": None, "outputs": None,
                 "inputs": [{**_inp("user_id", "BYTES", [1], [users[2]]), "parameters": None}]},
          headers=b"X-Request-Id: from-header\r\n")


BAD = [
    {"inputs": []},
    {"inputs": [_inp("nope", "BYTES", [1], ["1"])]},
    {"inputs": [_inp("user_id", "BYTES", [2], ["1"])]},
    {"inputs": [_inp("user_id", "BYTES", [1], ["1"]), _inp("k", "INT32", [1], [0])]},
    {"inputs": [_inp("user_id", "BYTES", [1], ["1"]), _inp("k", "FP32", [1], [1.5])]},
    {"inputs": [_inp("user_id", "BYTES", [1], [1.5])]},
    {"inputs": [_inp("user_id", "FP16", [1], [1])]},
    {"inputs": [_inp("user_id", "BYTES", [1], ["1"]), _inp("user_id", "BYTES", [1], ["2"])]},
    {"inputs": [_inp("user_id", "BYTES", ["1"], ["1"])]},  # pydantic's coercion: KServe's route
    {"inputs": [_inp("user_id", "BYTES", [1], [["1"]])]},
    {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1]}]},
    {"inputs": "user_id"},
    {"id": 5, "inputs": [_inp("user_id", "BYTES", [1], ["1"])]},
    {"inputs": [_inp("user_id", "BYTES", [1], ["1"])], "outputs": [{"name": "nope"}]},
    {"inputs": [_inp("user_id", "BYTES", [1], ["1"])], "extra": 1},
    [1, 2],
]


@pytest.mark.parametrize("body", BAD, ids=range(len(BAD)))
def test_bad_requests_get_the_same_answer(pair, body):
    body = {"id": "bad", **body} if isinstance(body, dict) and "id" not in body else body
    answer = _same(pair, body)
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:300]


@pytest.mark.parametrize("raw, kwargs", [
    (b"{not json", {}),
    (LONE_SURROGATE, {}),
    (PLAIN, {"content_type": None}),
    (PLAIN, {"content_type": b"text/plain"}),
    (PLAIN, {"content_type": b"application/json; charset=utf-8"}),
    (PLAIN, {"path": f"/v2/models/{MODEL}/infer?model_version=2"}),
    (PLAIN, {"path": "/v2/models/other/infer"}),
])
def test_other_bodies_and_routes_get_the_same_answer(pair, raw, kwargs):
    _same(pair, raw, **kwargs)


def test_tritonclient_http_and_metrics(pair):
    fast, _ = pair

    def served() -> float:
        text = httpx.get(f"{fast.url}/metrics").text
        found = re.search(r'^request_predict_seconds_count\{model_name="recsys"\} (\S+)$', 
                          text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = served()
    client = httpclient.InferenceServerClient(fast.http)
    try:
        for binary in (False, True):
            inp = httpclient.InferInput("user_id", [2], "BYTES")
            inp.set_data_from_numpy(np.asarray(["1", "2"], dtype=object), binary_data=binary)
            result = client.infer(MODEL, [inp], request_id="triton")
            assert result.as_numpy("item_ids").shape == (2, 10)
            assert result.get_response()["id"] == "triton"
    finally:
        client.close()
    for n in range(3):
        assert httpx.post(f"{fast.url}{PATH}", json={"inputs": [
            _inp("user_id", "BYTES", [1], [str(n + 1)])]}).status_code == 200
    assert served() - before == 5
