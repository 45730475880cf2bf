"""The feedback events service: `POST /v1/events` into the feedback store, and the sink of
KServe's payload logger, in one ASGI app (`build_app`; `serving/events.py` runs it).

- `POST /v1/events`: one event or a JSON array of up to `max_batch` (the contract is in
  `components/feedback/feedback_events.py`). The batch is checked whole before anything is stored: one
  bad event is a 400 `{"error": "<field>: <what>"}` and stores nothing; a body over
  `max_body_bytes` or a batch over `max_batch` is a 413. A 200 means committed:
  `{"accepted": n, "duplicates": m, "duplicate_ids": [...]}` (an event_id already stored is a
  retry: stored once, answered as a duplicate). With an online store (Redis), a background
  thread adds the committed positive events to the users' history lists right after the commit
  (`serving.online_history.HistoryPusher`): the answer never waits on Redis, and what was
  committed while Redis was down reaches the lists once it is back.
- `POST /` with CloudEvent headers: the payload logger's request/response events, paired
  (`serving/payload_logger.py`) into impressions (and, with a request log, its records).
- `GET /healthz` (503 while the store cannot be reached), `GET /metrics` (Prometheus).

Browsers: a web page can send a POST to any address without asking first when its body is
`text/plain` or a form; this service takes events as `content-type: application/json` only
(415 otherwise), which a browser sends cross-site only after a CORS preflight, and refuses any
request whose `Origin` header is not one of `allowed_origins` (403). Server-to-server clients
send no `Origin` and are not affected; an allowed origin's preflight (`OPTIONS`) is answered.

Events are stored by group commit (serving/group_commit.py): concurrent requests share a
transaction, each gets its own answer. The queue is bounded (`max_queued_events`): beyond it
the answer is 503 with Retry-After, never an unbounded backlog.

Why uvicorn + Starlette (they come with KServe): the standard library's threaded server starts a
thread per connection without limit and has no graceful drain; uvicorn bounds concurrent
connections (`limit_concurrency`: 503 beyond), answers SIGTERM by finishing in-flight requests,
and its HTTP parser is C (httptools). Starlette without FastAPI: the events are checked by
`normalize_event` once, not a second time by pydantic. Against the same core behind
`ThreadingHTTPServer` (with Nagle off, else each answer waits 40 ms for a delayed ACK), under
the benchmark's load, throughput was within this machine's noise (README, Closing the loop).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from components.feedback.feedback_events import (
    UNIX_EPOCH,
    InvalidEvent,
    TimeBounds,
    normalize_batch,
)
from serving.events_limits import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUED_EVENTS,
)
from serving.group_commit import GroupCommitter, Overloaded, accepted_rows
from serving.impressions import ImpressionWriter, impressions_from_records
from serving.payload_logger import REQUEST_TYPE, RESPONSE_TYPE, EventPairer
from serving.request_log import records_from_cloudevents

log = logging.getLogger("recsys.events")

BODY_TIMEOUT_SECONDS = 30.0


class EventMetrics:
    def __init__(self, registry: CollectorRegistry):
        def counter(name: str, text: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, text, list(labels), registry=registry)

        self.accepted = counter("recsys_events_accepted", "Feedback events stored", ["type"])
        self.duplicates = counter("recsys_events_duplicate",
                                  "Feedback events already stored (retries), answered as such")
        self.rejected = counter("recsys_events_rejected", "Requests refused, by reason",
                                ["reason"])
        self.store_seconds = Histogram(
            "recsys_events_store_seconds", "Time of one group commit to the feedback store",
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10),
            registry=registry)
        self.commit_events = Histogram(
            "recsys_events_commit_events", "Events stored per group commit",
            buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000), registry=registry)
        self.queued = Gauge("recsys_events_queued", "Events waiting for the writer",
                            registry=registry)
        self.online_errors = counter(
            "recsys_events_online_store_errors",
            "Failed attempts to bring the online history up to date with the store (retried)")
        self.online_pushed = counter(
            "recsys_events_online_pushed", "Positive events added to the online history")
        self.online_lag_events = Gauge(
            "recsys_events_online_lag_events",
            "Positive events committed to the store and not yet in the online history "
            "(NaN until its cursor was first read)", registry=registry)
        self.online_lag_seconds = Gauge(
            "recsys_events_online_lag_seconds",
            "Seconds since the oldest of them was received (0 when none)", registry=registry)
        self.online_lag_events.set(float("nan"))
        self.online_lag_seconds.set(float("nan"))
        # KServe's payload logger
        self.cloudevents = counter("recsys_events_received", "CloudEvents received, by type",
                                   ["type"])
        self.records = counter("recsys_events_records", "Request-log records written")
        self.expired = counter("recsys_events_expired",
                               "CloudEvents dropped because their partner never arrived")
        self.pending = Gauge("recsys_events_pending", "CloudEvents waiting for their partner",
                             registry=registry)
        self.impressions = counter("recsys_events_impressions", "Impressions stored")
        self.impressions_dropped = counter(
            "recsys_events_impressions_dropped",
            "Answers whose impressions were dropped (writer behind, or a store error)")


class _OncePerMinute:
    def __init__(self):
        self.last = 0.0

    def __call__(self, message: str, *args: Any) -> None:
        if time.monotonic() - self.last >= 60:
            self.last = time.monotonic()
            log.warning(message + " (logged at most once a minute)", *args)


class EventsService:
    """Everything but HTTP: the store, the writer, the online history, the payload logger."""

    def __init__(self, store: Any, *, registry: CollectorRegistry | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_queued_events: int = DEFAULT_MAX_QUEUED_EVENTS,
                 history_writer: Any = None, request_log: Any = None,
                 pending_ttl: float = 60.0, max_pending: int = 10_000,
                 allowed_origins: Sequence[str] = (), time_bounds: TimeBounds = UNIX_EPOCH):
        self.store = store
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self.time_bounds = time_bounds
        self.registry = registry or CollectorRegistry()
        self.metrics = m = EventMetrics(self.registry)
        self.max_batch, self.max_body_bytes = max_batch, max_body_bytes
        self.history_writer, self.request_log = history_writer, request_log
        self._warn = _OncePerMinute()
        self.pusher = None
        if history_writer is not None:
            from serving.online_history import HistoryPusher

            self.pusher = HistoryPusher(
                store, history_writer, on_error=lambda _exc: m.online_errors.inc(),
                on_pushed=m.online_pushed.inc, on_lag=self._lag)
        self.committer = GroupCommitter(
            store, m, max_queued_events=max_queued_events,
            on_commit=self.pusher.notify if self.pusher is not None else None)
        self.impressions = ImpressionWriter(
            store, on_drop=m.impressions_dropped.inc, on_error=m.impressions_dropped.inc,
            on_written=m.impressions.inc)
        self.pairer = EventPairer(self._on_pair, ttl=pending_ttl, max_pending=max_pending,
                                  on_expired=m.expired.inc, on_pending=m.pending.set)
        self._health: tuple[float, bool, str] = (0.0, False, "")

    def start(self) -> None:
        self.committer.start()
        if self.pusher is not None:
            self.pusher.start()
        self.impressions.start()
        if self.request_log is not None:
            self.request_log.start()

    def close(self) -> None:
        """After the server stopped taking requests: commit, write and close everything."""
        self.committer.close()
        if self.pusher is not None:
            self.pusher.close()
        self.impressions.close()
        if self.request_log is not None:
            self.request_log.close()
        if self.history_writer is not None:
            self.history_writer.close()
        self.store.close()

    # -- feedback events --------------------------------------------------------------------
    def parse_events(self, body: bytes) -> list[dict[str, Any]]:
        """The request's events in stored form; raises `RequestError`."""
        data = parse_json(body)
        if isinstance(data, list):
            if not data:
                raise RequestError(400, "invalid_event", "body: an empty batch")
            if len(data) > self.max_batch:
                raise RequestError(413, "batch_too_large", f"body: {len(data)} events exceed "
                                   f"the limit of {self.max_batch} per request")
        if _float_ids(data):  # orjson reads an integer beyond 64 bits as a float
            data = _exact_integers(body)
        try:
            return normalize_batch(data, time.time(), self.time_bounds)
        except InvalidEvent as exc:
            raise RequestError(400, "invalid_event", str(exc)) from None

    def _lag(self, events: int, seconds: float) -> None:
        self.metrics.online_lag_events.set(events)
        self.metrics.online_lag_seconds.set(seconds)

    def count(self, rows: list[dict[str, Any]], duplicates: list[str]) -> None:
        m = self.metrics
        if duplicates:
            m.duplicates.inc(len(duplicates))
        for kind, n in Tally(r["type"] for r in accepted_rows(rows, duplicates)).items():
            m.accepted.labels(kind).inc(n)

    # -- the payload logger -----------------------------------------------------------------
    def take_cloudevent(self, headers: Mapping[str, str], body: bytes) -> int:
        kind = headers.get("ce-type", "")
        if kind not in (REQUEST_TYPE, RESPONSE_TYPE) or not headers.get("ce-id"):
            raise RequestError(400, "not_an_inference_event",
                               f"ce-type: expected a CloudEvent of type {REQUEST_TYPE} or "
                               f"{RESPONSE_TYPE} with a ce-id header")
        self.metrics.cloudevents.labels(kind.rsplit(".", 1)[-1]).inc()
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise RequestError(400, "not_json", "body: the event body is not JSON") from None
        return self.pairer.add(headers, parsed)

    def _on_pair(self, request: Any, response: Any, headers: Mapping[str, str]) -> int:
        try:
            records = records_from_cloudevents(request, response, headers)
        except Exception as exc:  # noqa: BLE001 (JSON, but not an inference of ours)
            log.warning("event %s: cannot convert the pair (%s: %s)", headers.get("ce-id"),
                        type(exc).__name__, exc)
            self.metrics.rejected.labels("unconvertible").inc()
            return 0
        if self.request_log is not None:
            self.request_log.log(records)
            self.metrics.records.inc(len(records))
        response_id = response.get("id") if isinstance(response, dict) else None
        rows = impressions_from_records(records, str(response_id) if response_id else None)
        if rows:
            self.impressions.put(rows)
        return len(records)

    # -- health -----------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        """Whether the store answers (checked at most once a second)."""
        checked, ok, detail = self._health
        if time.monotonic() - checked < 1.0:
            return ok, detail
        try:
            with self.store.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            ok, detail = True, "ok"
        except Exception as exc:  # noqa: BLE001 (whatever the database says: unhealthy, with why)
            ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        self._health = (time.monotonic(), ok, detail)
        return ok, detail


_ID_FIELDS = ("event_id", "user_id", "item_id", "request_id", "model_version")
_NOT_FINITE = (b"NaN", b"Infinity", b"-Infinity")
MAX_JSON_DEPTH = 1024  # orjson's limit


def parse_json(body: bytes) -> Any:
    """The body's JSON; a `RequestError` that says what is wrong and where otherwise."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        if not body.strip():
            problem = "the body is empty"
        elif exc.msg.startswith("depth limit"):
            problem = f"nested deeper than {MAX_JSON_DEPTH} levels (at {where})"
        elif body[exc.pos:].startswith(_NOT_FINITE) or body[exc.pos - 1:].startswith(b"-Inf"):
            problem = f"NaN and Infinity are not JSON numbers (at {where})"
        else:
            problem = f"{exc.msg} (at {where})"
        raise RequestError(400, "not_json", f"body: not JSON: {problem}") from None


def _float_ids(data: Any) -> bool:
    events = data if isinstance(data, list) else [data]
    return any(isinstance(e, dict) and any(isinstance(e.get(f), float) for f in _ID_FIELDS)
               for e in events)


def _exact_integers(body: bytes) -> Any:
    """The body again, with integers of any size kept exact (an id of 30 digits is an id)."""
    import json

    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # orjson read it: cannot happen, but never a 500
        raise RequestError(400, "not_json", "body: not JSON") from None


class RequestError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason
        self.origin: str | None = None  # an allowed origin's answers carry its CORS header


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"body: {declared} bytes exceed {limit}")
    chunks, size = [], 0
    async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body_too_large", f"body: more than {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json`, with or without parameters (`; charset=utf-8`)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/json"


def check_origin(origin: str | None, allowed: frozenset[str]) -> None:
    """No `Origin` (a server, curl) or an allowed one passes; any other is a 403."""
    if origin is not None and origin.rstrip("/") not in allowed:
        raise RequestError(403, "foreign_origin", f"origin: {origin[:200]} is not allowed to "
                           "post here (the service's --allow-origin option lists who is)")


def build_app(service: EventsService) -> Starlette:
    metrics = service.metrics

    def refused(exc: RequestError) -> Response:
        metrics.rejected.labels(exc.reason).inc()
        return _json(exc.status, {"error": str(exc)}, cors(exc.origin))

    def cors(origin: str | None) -> dict[str, str] | None:
        if origin is None or origin.rstrip("/") not in service.allowed_origins:
            return None
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def preflight(request: Request) -> Response:
        origin = request.headers.get("origin")
        try:
            check_origin(origin, service.allowed_origins)
        except RequestError as exc:
            return refused(exc)
        return Response(status_code=204, headers={
            **(cors(origin) or {}), "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "content-type", "Access-Control-Max-Age": "600"})

    async def post_events(request: Request) -> Response:
        origin = request.headers.get("origin")
        try:
            check_origin(origin, service.allowed_origins)
            if not is_json_media_type(request.headers.get("content-type")):
                raise RequestError(
                    415, "not_json_content_type",
                    f"content-type: expected application/json, got "
                    f"{(request.headers.get('content-type') or 'none')[:100]}")
            rows = service.parse_events(await _read_body(request, service.max_body_bytes))
            future = service.committer.submit(rows)
        except RequestError as exc:
            exc.origin = origin
            return refused(exc)
        except Overloaded as exc:
            metrics.rejected.labels("overloaded").inc()
            return _json(503, {"error": f"store: busy ({exc}); retry"}, {"Retry-After": "1"})
        except (ClientDisconnect, TimeoutError):
            metrics.rejected.labels("incomplete_body").inc()
            return _json(400, {"error": "body: incomplete"})
        try:
            accepted, duplicates = await asyncio.wrap_future(future)
        except Exception as exc:  # noqa: BLE001
            # the store's error, whatever it is: the client retries
            metrics.rejected.labels("store_unavailable").inc()
            service._warn("store error, answering 503: %s: %s", type(exc).__name__,
                          str(exc).splitlines()[0][:200])
            return _json(503, {"error": f"store: unavailable ({type(exc).__name__}); retry"},
                         {"Retry-After": "1"})
        service.count(rows, duplicates)
        return _json(200, {"accepted": accepted, "duplicates": len(duplicates),
                           "duplicate_ids": duplicates}, cors(origin))

    async def post_cloudevent(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            check_origin(headers.get("origin"), service.allowed_origins)
            body = await _read_body(request, service.max_body_bytes)
            written = service.take_cloudevent(headers, body)
        except RequestError as exc:
            return refused(exc)
        except (ClientDisconnect, TimeoutError):
            metrics.rejected.labels("incomplete_body").inc()
            return _json(400, {"error": "body: incomplete"})
        return _json(202, {"records": written})

    async def healthz(_request: Request) -> Response:
        ok, detail = await asyncio.to_thread(service.health)
        return _json(200 if ok else 503, {"status": "ok" if ok else "store unreachable",
                                          "store": detail})

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(service.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        service.start()
        try:
            yield
        finally:  # uvicorn has answered every request it accepted
            await asyncio.to_thread(service.close)

    return Starlette(routes=[
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/events", preflight, methods=["OPTIONS"]),
        Route("/", post_cloudevent, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ], lifespan=lifespan)
