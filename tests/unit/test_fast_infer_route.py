"""Which requests the thin v2 infer path (serving/fast_infer.py) takes, with a stand-in data
plane: a plain v2 JSON body is answered without KServe's app, everything else reaches it with
the body as sent. (That the answers equal KServe's route's: tests/integration/test_fast_infer.py.)"""
from __future__ import annotations

import asyncio

import orjson
import pytest

from serving.fast_infer import FastInfer
from serving.model_server import RecsysMiddleware

BODY = orjson.dumps({"id": "a", "inputs": [
    {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["1"]}]})


class _Model:
    ready = True


class _Registry:
    def get_model(self, name):
        return _Model() if name == "m" else None


class _Plane:
    model_registry = _Registry()
    calls = 0

    async def infer(self, model_name, request, headers):
        self.calls += 1
        assert request.inputs[0].data == ["1"] and request.id == "a"
        return ({"id": request.id, "model_name": model_name, "model_version": "1",
                 "outputs": [{"name": "o", "shape": [1], "datatype": "FP32",
                              "data": [float("nan")]}]}, {"X-Extra": "1"})

    def encode(self, model_name, response, headers, req_attributes):
        return response, {}


def _run(plane, path="/v2/models/m/infer", body=BODY, content_type=b"application/json"):
    inner, sent = [], []

    async def app(scope, receive, send):
        inner.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"kserve"})

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"content-type", content_type)]}
    FastInfer.data_plane = plane
    try:
        asyncio.run(RecsysMiddleware(app)(scope, receive, send))
    finally:
        FastInfer.data_plane = None
    return inner, sent


def test_a_plain_body_is_answered_without_kserves_app():
    plane = _Plane()
    inner, sent = _run(plane)
    assert inner == [] and plane.calls == 1
    assert sent[0]["headers"] == [(b"content-length", str(len(sent[1]["body"])).encode()),
                                  (b"content-type", b"application/json"), (b"x-extra", b"1")]
    assert orjson.loads(sent[1]["body"])["outputs"][0] == {
        "name": "o", "shape": [1], "datatype": "FP32", "parameters": None, "data": [None]}


@pytest.mark.parametrize("kwargs", [
    {"path": "/v2/models/other/infer"}, {"path": "/v2/models/m/ready"},
    {"content_type": b"text/plain"}, {"body": b"{nope"},
    {"body": orjson.dumps({"inputs": [{"name": "user_id", "datatype": "BYTES",
                                       "shape": ["1"], "data": ["1"]}]})},
])
def test_anything_else_reaches_kserves_app_with_its_body(kwargs):
    plane = _Plane()
    inner, sent = _run(plane, **kwargs)
    assert inner == [kwargs.get("body", BODY)] and plane.calls == 0
    assert sent[1]["body"] == b"kserve"
