"""`python -m serving.events`: the sink for KServe's payload logger, on a cluster.

The InferenceService's `logger: {mode: all}` posts every inference twice, as binary-mode
CloudEvents sharing `ce-id`: `org.kubeflow.serving.inference.request` with the request body and
`...response` with the response body. The sink pairs them, turns each pair into the records the
predictor's own `--request-log` writes (`records_from_cloudevents`), and appends them to the same
size-rotated JSON-lines files, so a drift check reads either with `read_request_log`.

An event whose partner never arrives (the logger gave up, or the response was an error) is
dropped after `--pending-ttl` seconds and counted; so is an event that is not JSON (tritonclient's
binary tensor encoding). The standard library's threaded HTTP server is enough for a logger's
rate; it also answers `GET /metrics` (Prometheus) and `GET /healthz`.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from serving.request_log import RequestLog, records_from_cloudevents

log = logging.getLogger("recsys.events")

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


class EventMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.events = Counter("recsys_events_received", "CloudEvents received, by type",
                              ["type"], registry=registry)
        self.records = Counter("recsys_events_records", "Request-log records written",
                               registry=registry)
        self.rejected = Counter("recsys_events_rejected", "Events refused, by reason",
                                ["reason"], registry=registry)
        self.expired = Counter("recsys_events_expired",
                               "Events dropped because their partner never arrived", registry=registry)
        self.pending = Gauge("recsys_events_pending", "Events waiting for their partner",
                             registry=registry)


class EventPairer:
    """Pairs request and response events by `ce-id` and writes their records."""

    def __init__(self, writer: RequestLog, metrics: EventMetrics, *, ttl: float = 60.0,
                 max_pending: int = 10_000):
        self.writer = writer
        self.metrics = metrics
        self.ttl = ttl
        self.max_pending = max_pending
        self._pending: OrderedDict[str, tuple[float, str, Any, dict[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, headers: dict[str, str], body: Any, now: float | None = None) -> int:
        """Take one event; returns the number of records written (0 while it waits)."""
        now = time.monotonic() if now is None else now
        kind, event_id = headers.get("ce-type", ""), headers.get("ce-id", "")
        with self._lock:
            self._expire(now)
            partner = self._pending.pop(event_id, None)
            if partner is None or partner[1] == kind:
                self._pending[event_id] = (now, kind, body, headers)
                if len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    self.metrics.expired.inc()
                self.metrics.pending.set(len(self._pending))
                return 0
            self.metrics.pending.set(len(self._pending))
        _, _, other_body, other_headers = partner
        request, response = (body, other_body) if kind == REQUEST_TYPE else (other_body, body)
        response_headers = headers if kind == RESPONSE_TYPE else other_headers
        try:
            records = records_from_cloudevents(request, response, response_headers)
        except Exception as exc:  # a body that is JSON but not an inference of ours
            log.warning("event %s: cannot convert the pair (%s: %s)", event_id, type(exc).__name__, exc)
            self.metrics.rejected.labels("unconvertible").inc()
            return 0
        self.writer.log(records)
        self.metrics.records.inc(len(records))
        return len(records)

    def _expire(self, now: float) -> None:
        while self._pending:
            event_id, (arrived, *_rest) = next(iter(self._pending.items()))
            if now - arrived < self.ttl:
                break
            del self._pending[event_id]
            self.metrics.expired.inc()


def make_handler(pairer: EventPairer, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    metrics = pairer.metrics

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            headers = {k.lower(): v for k, v in self.headers.items()}
            length = int(headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length > 0 else b""
            kind = headers.get("ce-type", "")
            if kind not in (REQUEST_TYPE, RESPONSE_TYPE) or not headers.get("ce-id"):
                metrics.rejected.labels("not_an_inference_event").inc()
                return self._answer(400, {"error": f"expected a CloudEvent of type {REQUEST_TYPE} "
                                                   f"or {RESPONSE_TYPE} with a ce-id header"})
            metrics.events.labels(kind.rsplit(".", 1)[-1]).inc()
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                metrics.rejected.labels("not_json").inc()
                return self._answer(400, {"error": "the event body is not JSON"})
            written = pairer.add(headers, body)
            self._answer(202, {"records": written})

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/metrics":
                return self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            if self.path == "/healthz":
                return self._answer(200, {"status": "ok"})
            self._answer(404, {"error": "not found"})

        def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug(format, *args)

    return Handler


def build_server(output_dir: Path, *, host: str = "0.0.0.0", port: int = 8080, ttl: float = 60.0,
                 max_pending: int = 10_000, model_name: str = "recsys") -> tuple[ThreadingHTTPServer, RequestLog]:
    registry = CollectorRegistry()
    writer = RequestLog(output_dir, model_name).start()
    pairer = EventPairer(writer, EventMetrics(registry), ttl=ttl, max_pending=max_pending)
    server = ThreadingHTTPServer((host, port), make_handler(pairer, registry))
    server.daemon_threads = True
    return server, writer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.events",
        description="Receive KServe payload-logger CloudEvents and append them to the request log.",
    )
    parser.add_argument("--port", type=int, default=8080, help="HTTP port (default: %(default)s)")
    parser.add_argument("--host", default="0.0.0.0", help="bind address (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, required=True, help="request-log directory")
    parser.add_argument("--pending-ttl", type=float, default=60.0,
                        help="seconds an event waits for its partner (default: %(default)s)")
    parser.add_argument("--max-pending", type=int, default=10_000,
                        help="events waiting at most; the oldest is dropped beyond (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        server, writer = build_server(args.output_dir, host=args.host, port=args.port,
                                      ttl=args.pending_ttl, max_pending=args.max_pending)
    except OSError as exc:
        print(f"serving.events: error: {exc}", file=sys.stderr)
        return 1
    log.info("listening on %s:%d, writing to %s", args.host, args.port, args.output_dir)
    # Kubernetes stops a pod with SIGTERM: stop serving, then flush what is queued.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
