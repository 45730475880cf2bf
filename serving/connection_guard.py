"""uvicorn's HTTP protocol with the bounds it lacks against a slow or greedy client.

uvicorn bounds connections in total (`limit_concurrency`: a 503 beyond) and idle keep-alive time,
but not how long a client may take to send its headers or its body, nor how many connections one
client may hold: a single client opening a thousand connections that send half a header each
would fill `limit_concurrency` and every other request, health checks included, would be
answered 503 for as long as it liked. `GuardedHttpProtocol` (uvicorn's httptools protocol, the
one `http="auto"` picks) adds, per connection:

- a deadline for the request line and headers (`header_timeout`), from the connection's opening
  or the first byte of the next request on a kept-alive connection: a connection still without
  its headers then is answered 408 and closed; headers larger than `max_header_bytes` are a 431;
- a deadline for the body once the headers are in (`body_timeout`): closed when it passes (the
  application sees the client disconnect);
- a cap on the connections one client address holds at once (`max_per_client`): one more is
  answered 503 and closed at once, so that one client cannot take what the others need;
- a cap on a request's body (`max_body_bytes`, where a server sets one): a declared
  Content-Length past it is answered 413 before any of the body is read, and a body that grows
  past it (chunked, or longer than declared) is answered 413 and the connection closed, so that
  uvicorn never holds more of it than the cap.

The bounds come from the uvicorn `Config` (`apply(config, limits)`), which uvicorn hands to every
protocol instance and pickles into each worker process.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.limits import ConnectionLimits


def apply(config: Any, limits: ConnectionLimits) -> None:
    """Make a uvicorn Config (not yet loaded) serve with `GuardedHttpProtocol` and `limits`."""
    problem = limits.problem()
    if problem:
        raise ValueError(problem)
    config.http = GuardedHttpProtocol
    config.connection_limits = limits


# Connections held per client address, in this process (the event loop's thread only).
_OPEN: Counter[str] = Counter()


def _response(status: bytes, message: str, extra: bytes = b"") -> bytes:
    body = b'{"error": "' + message.encode() + b'"}'
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: ConnectionLimits = getattr(config, "connection_limits", ConnectionLimits())
        # uvicorn logs a request when "uvicorn.access" has handlers (KServe's log config gives
        # it one); `recsys serve --no-access-log` sets config.access_log False instead.
        self.access_log = self.access_log and config.access_log
        self._deadline: asyncio.TimerHandle | None = None
        self._awaiting_headers = False
        self._header_bytes = 0
        self._body_bytes = 0
        self._counted: str | None = None

    # -- the deadline -------------------------------------------------------------------------
    def _arm(self, seconds: float, on_expiry) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _await_headers(self) -> None:
        if not self._awaiting_headers:
            self._awaiting_headers, self._header_bytes = True, 0
            self._arm(self.limits.header_timeout, self._headers_too_slow)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._between_requests():
            self.transport.write(
                _response(b"408 Request Timeout", "request: headers not received in time")
            )
        self.transport.close()

    def _body_too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()  # the application sees the client disconnect

    # -- uvicorn's protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else None
        if address is not None:
            _OPEN[address] += 1
            self._counted = address
            cap = self.limits.max_per_client
            if cap and _OPEN[address] > cap:
                self.transport.write(
                    _response(
                        b"503 Service Unavailable",
                        f"too many connections from {address} (at most {cap} at once)",
                        b"retry-after: 1\r\n",
                    )
                )
                self.transport.close()
                return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted is not None:
            _OPEN[self._counted] -= 1
            if _OPEN[self._counted] <= 0:
                del _OPEN[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._between_requests():
            self._await_headers()  # the next request's first bytes (or bytes that start none)
        super().data_received(data)
        if self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._disarm()
            self.transport.write(
                _response(b"431 Request Header Fields Too Large", "request: headers too large")
            )
            self.transport.close()

    def _too_large(self) -> bool:
        return self._header_bytes > self.limits.max_header_bytes

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if not self._too_large():  # beyond, nothing more is kept: the answer is a 431
            super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if self._too_large() or self.transport.is_closing():
            return
        self._body_bytes += len(body)
        cap = self.limits.max_body_bytes
        if cap and self._body_bytes > cap:
            self._refuse_body(f"request: body over {cap} bytes")
            return
        super().on_body(body)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body_bytes = 0
        self._await_headers()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        if self._too_large() or self.transport.is_closing():
            return  # not handed to the application; data_received answers 431
        cap, declared = self.limits.max_body_bytes, self._declared_length()
        if cap and declared is not None and declared > cap:
            self._refuse_body(f"request: body of {declared} bytes, over {cap}")
            return  # not handed to the application
        self._arm(self.limits.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def _declared_length(self) -> int | None:
        for name, value in self.headers:  # names lower-cased by uvicorn's on_header
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None  # httptools refuses it as the body is read
        return None

    def _refuse_body(self, message: str) -> None:
        """413 and close: nothing more of this connection is read (a handler already waiting
        for the body sees the client disconnect)."""
        self._disarm()
        self.transport.write(_response(b"413 Content Too Large", message))
        self.transport.close()

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._too_large() and not self.transport.is_closing():
            super().on_message_complete()
