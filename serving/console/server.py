"""Running the console: uvicorn on the FastAPI app, stopped cleanly by SIGTERM (exit code 0)
or Ctrl-C: uvicorn stops accepting, lets requests in flight finish for up to `GRACE_SECONDS`,
then the app's lifespan closes its clients."""
from __future__ import annotations

import logging
import signal

from components.errors import RecsysError
from serving.console.config import ConsoleConfig

GRACE_SECONDS = 5


def serve(config: ConsoleConfig, host: str, port: int, *, log_level: str = "info",
          experiment_config=None, experiments=None, connection_limits=None,
          allowed_hosts=()) -> int:
    import socket

    import uvicorn

    from serving.connection_guard import apply
    from serving.console.app import create_app
    from serving.console.state import build_console
    from serving.limits import MAX_CONCURRENCY, ConnectionLimits

    if not 0 < port < 65536:
        raise RecsysError(f"--port must be a port number, got {port}")
    limits = connection_limits or ConnectionLimits()
    if limits.problem():
        raise RecsysError(limits.problem())
    # Fail with one line if the port is taken, before uvicorn logs a traceback about it.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RecsysError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    app = create_app(build_console(config, experiment_config=experiment_config,
                                  experiments=experiments),
                     allowed_hosts=[host, *allowed_hosts])  # IP literals and localhost besides
    logging.getLogger("recsys.console").info("console on http://%s:%d/", host, port)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for whatever handler
    # was there before it: with this one, a stop that went well ends with exit code 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server_config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                   access_log=False, timeout_graceful_shutdown=GRACE_SECONDS,
                                   server_header=False, limit_concurrency=MAX_CONCURRENCY)
    # header and body deadlines and a cap on connections per client (serving/connection_guard.py)
    apply(server_config, limits)
    uvicorn.Server(server_config).run()
    return 0
