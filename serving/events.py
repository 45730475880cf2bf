"""`python -m serving.events` (the container's entry point) and `recsys events serve`: the
feedback events service, also the sink of KServe's payload logger (see
serving/events_service.py for what it answers).

The options are the same for both; the store comes from `--store`, else
`$RECSYS_FEEDBACK_STORE` (a cluster passes a PostgreSQL URL from a Secret that way), else the
run home's SQLite file (`--home`, `$RECSYS_HOME`, `runs/`), the one `recsys serve` reads.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from components.errors import ConfigError, RecsysError
from serving.events_limits import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUED_EVENTS,
)

log = logging.getLogger("recsys.events")

DEFAULT_PORT = 8090
# Event times before this are refused (a 0 or a small number is a client's bug, not a time).
DEFAULT_EARLIEST_TIMESTAMP = "1990-01-01"


def add_events_arguments(parser: argparse.ArgumentParser) -> None:
    from serving.limits import add_connection_arguments

    parser.add_argument("--store", default=os.environ.get("RECSYS_FEEDBACK_STORE") or None,
                        metavar="URL",
                        help="feedback store: sqlite:///FILE or postgresql+psycopg://USER@HOST/DB "
                        "(default: $RECSYS_FEEDBACK_STORE, else feedback.db in the run home)")
    parser.add_argument("--home", type=Path, default=None,
                        help="run home whose store is the default "
                        "(default: $RECSYS_HOME or ./runs)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address (default: %(default)s; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="HTTP port (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help="most events in one POST; more is a 413 (default: %(default)s)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body; larger is a 413 (default: %(default)s)")
    parser.add_argument("--max-queued-events", type=int, default=DEFAULT_MAX_QUEUED_EVENTS,
                        help="events waiting for the store at most; beyond, 503 with Retry-After "
                        "(default: %(default)s)")
    parser.add_argument("--online-store", default=os.environ.get("RECSYS_ONLINE_STORE") or None,
                        metavar="REDIS_URL",
                        help="also add positive feedback to the users' history lists in this "
                        "Redis (redis://HOST:6379/0), read by the predictor on a cluster "
                        "(default: $RECSYS_ONLINE_STORE, else none: locally the predictor reads "
                        "the store itself)")
    parser.add_argument("--online-store-prefix", default="recsys:", metavar="PREFIX",
                        help="Redis key prefix: lists are PREFIXhistory:USER_ID "
                        "(default: %(default)s)")
    parser.add_argument("--request-log", "--output-dir", dest="request_log", type=Path,
                        default=None, metavar="DIR",
                        help="also write the payload logger's answers as request-log records "
                        "(JSON lines, as `recsys serve --request-log`) to DIR")
    parser.add_argument("--allow-origin", dest="allowed_origins", action="append", default=[],
                        metavar="ORIGIN",
                        help="a web origin (scheme://host:port) whose pages may post events "
                        "(CORS); repeatable. Requests with any other Origin header are refused "
                        "with 403; clients that send none (servers, curl) are not affected "
                        "(default: none)")
    parser.add_argument("--earliest-timestamp", default=DEFAULT_EARLIEST_TIMESTAMP,
                        metavar="TIME",
                        help="events timed before this (ISO 8601 date or time, UTC, or Unix "
                        "seconds) are refused with 400 (default: %(default)s)")
    parser.add_argument("--max-future-seconds", type=float, default=86_400.0, metavar="SECONDS",
                        help="events timed more than this after the time received are refused "
                        "with 400 (default: %(default)s)")
    parser.add_argument("--pending-ttl", type=float, default=60.0,
                        help="seconds a payload-logger event waits for its partner "
                        "(default: %(default)s)")
    parser.add_argument("--max-pending", type=int, default=10_000,
                        help="payload-logger events waiting at most; the oldest is dropped beyond "
                        "(default: %(default)s)")
    add_connection_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.events",
        description="The feedback events service: POST /v1/events into the feedback store, and "
        "the sink of KServe's payload logger (impressions). Stop with SIGTERM or Ctrl-C.",
    )
    add_events_arguments(parser)
    return parser


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _time_bounds(earliest: str, future_seconds: float):
    from datetime import UTC, datetime

    from components.feedback.feedback_events import TimeBounds

    try:
        seconds = float(earliest)
    except ValueError:
        try:
            moment = datetime.fromisoformat(earliest.strip())
        except ValueError:
            raise ConfigError(f"--earliest-timestamp {earliest}: not an ISO 8601 date or time, "
                              "nor Unix seconds") from None
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not future_seconds >= 0:
        raise ConfigError(f"--max-future-seconds must not be negative, got {future_seconds:g}")
    return TimeBounds(earliest=seconds, future_slack=future_seconds)


def serve_events(args: argparse.Namespace) -> int:
    """Open the store, listen, and answer until SIGTERM/SIGINT (then finish what was accepted,
    commit what is queued and close)."""
    import uvicorn

    from components.feedback.feedback_store import FeedbackStore, default_store_url, display_url
    from components.release.registry import default_home
    from serving.connection_guard import apply
    from serving.events_service import EventsService, build_app
    from serving.limits import MAX_CONCURRENCY, connection_limits

    for name in ("max_batch", "max_body_bytes", "max_queued_events", "max_pending"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be a port number, got {args.port}")
    bounds = _time_bounds(args.earliest_timestamp, args.max_future_seconds)
    limits = connection_limits(args)
    if limits.problem():
        raise ConfigError(limits.problem())
    for origin in args.allowed_origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise ConfigError(f"--allow-origin {origin}: expected scheme://host[:port]")
    url = args.store or default_store_url(args.home or default_home())
    store = FeedbackStore(url)
    history_writer = request_log = None
    if args.online_store:
        from serving.online_history import RedisHistoryWriter, is_redis_url

        if not is_redis_url(args.online_store):
            raise ConfigError(f"--online-store {args.online_store}: expected redis://HOST:PORT/DB")
        history_writer = RedisHistoryWriter(args.online_store, prefix=args.online_store_prefix)
    if args.request_log is not None:
        from serving.request_log import RequestLog

        request_log = RequestLog(args.request_log, "recsys")
    service = EventsService(store, max_batch=args.max_batch, max_body_bytes=args.max_body_bytes,
                            max_queued_events=args.max_queued_events,
                            history_writer=history_writer, request_log=request_log,
                            pending_ttl=args.pending_ttl, max_pending=args.max_pending,
                            allowed_origins=args.allowed_origins, time_bounds=bounds)
    sock = _listen(args.host, args.port)
    config = uvicorn.Config(build_app(service), log_config=None, access_log=False,
                            limit_concurrency=MAX_CONCURRENCY, timeout_graceful_shutdown=30,
                            timeout_keep_alive=15, lifespan="on")
    apply(config, limits)  # header and body deadlines, connections per client
    log.info("feedback events on http://%s:%d (POST /v1/events), store %s%s", args.host,
             args.port, display_url(url),
             f", online history {args.online_store}" if args.online_store else "")
    # uvicorn answers SIGTERM (Kubernetes stopping the pod) by finishing accepted requests;
    # the app's shutdown then commits the queue and closes the store. Afterwards uvicorn
    # re-raises the signal to the handler it found: a no-op one makes a clean stop exit 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return serve_events(args)
    except RecsysError as exc:
        print(f"serving.events: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
