"""KServe's REST timing middleware runs only while latency logging is on: off, a request costs
no `getrusage` calls and logs no `kserve.trace` records; on, both lines are there."""
from __future__ import annotations

import logging

import fastapi
import pytest
from fastapi.testclient import TestClient

from serving.model_server import _RESTServer


def _app(latency_logging: bool) -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/ping")
    def ping() -> dict:
        return {"ok": True}

    server = _RESTServer.__new__(_RESTServer)  # only the middleware step, no uvicorn config
    server.access_log_format = None
    server.latency_logging = latency_logging
    server._add_middlewares(app)
    return app


@pytest.mark.parametrize("latency_logging", [False, True])
def test_the_timing_middleware_runs_only_with_latency_logging(latency_logging, caplog):
    from timing_asgi import TimingMiddleware

    app = _app(latency_logging)
    assert any(m.cls is TimingMiddleware for m in app.user_middleware) == latency_logging
    with caplog.at_level(logging.INFO, logger="kserve.trace"), TestClient(app) as client:
        assert client.get("/ping").json() == {"ok": True}
    trace = [r for r in caplog.records if r.name == "kserve.trace"]
    assert len(trace) == (2 if latency_logging else 0), [r.getMessage() for r in trace]
