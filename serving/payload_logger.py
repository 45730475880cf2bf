"""KServe's payload logger, received: request and response CloudEvents paired by `ce-id`.

The InferenceService's `logger: {mode: all}` posts every inference twice, as binary-mode
CloudEvents sharing `ce-id`: `org.kubeflow.serving.inference.request` with the request body and
`...response` with the response body (the response only for HTTP 200). `EventPairer` holds the
first of a pair until its partner arrives and hands the pair to `on_pair`; the events service
turns it into request-log records and impressions. An event whose partner never arrives (the
logger gave up, or the call failed) is dropped after `ttl` seconds and counted, and at most
`max_pending` events wait (the oldest goes first), so memory is bounded whatever the logger
does.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"

# (request body, response body, the response event's headers) -> records written
PairHandler = Callable[[Any, Any, Mapping[str, str]], int]


class EventPairer:
    """Pairs request and response events by `ce-id`."""

    def __init__(self, on_pair: PairHandler, *, ttl: float = 60.0, max_pending: int = 10_000,
                 on_expired: Callable[[], None] | None = None,
                 on_pending: Callable[[int], None] | None = None):
        self.on_pair = on_pair
        self.ttl = ttl
        self.max_pending = max_pending
        self.on_expired = on_expired or (lambda: None)
        self.on_pending = on_pending or (lambda n: None)
        self._pending: OrderedDict[str, tuple[float, str, Any, Mapping[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, headers: Mapping[str, str], body: Any, now: float | None = None) -> int:
        """Take one event (headers lower-cased); returns what `on_pair` returned for a completed
        pair, 0 while it waits."""
        now = time.monotonic() if now is None else now
        kind, event_id = headers.get("ce-type", ""), headers.get("ce-id", "")
        with self._lock:
            self._expire(now)
            partner = self._pending.pop(event_id, None)
            if partner is None or partner[1] == kind:
                self._pending[event_id] = (now, kind, body, headers)
                if len(self._pending) > self.max_pending:
                    self._pending.popitem(last=False)
                    self.on_expired()
                self.on_pending(len(self._pending))
                return 0
            self.on_pending(len(self._pending))
        _, _, other_body, other_headers = partner
        request, response = (body, other_body) if kind == REQUEST_TYPE else (other_body, body)
        response_headers = headers if kind == RESPONSE_TYPE else other_headers
        return self.on_pair(request, response, response_headers)

    def _expire(self, now: float) -> None:
        while self._pending:
            event_id, (arrived, *_rest) = next(iter(self._pending.items()))
            if now - arrived < self.ttl:
                break
            del self._pending[event_id]
            self.on_expired()
