"""KServe's model server, adjusted where it falls short of the serving contract.

Small subclasses and a logging filter, no patches of KServe's code:

- `RecsysDataPlane`: server readiness (`/v2/health/ready`, gRPC ServerReady) is false while a
  registered model is not ready or the server drains (KServe answers true as soon as the process
  is up); a REST inference on a model that is not ready is a 503 that gives the reason and is
  counted, as over gRPC; `:explain` answers without echoing the request's headers back; a v2
  body KServe cannot decode is a 400, not a 500; a v2 JSON body sent
  without `content-type: application/json` (plain `curl -d`, tritonclient with
  `binary_data=False`) is read as the JSON it is.
- `DisabledModelRepository`: the v2 model-repository extension (`/v2/repository/models/NAME/
  load|unload`, and its gRPC twins) lets any caller unload the model for good; here it refuses
  (403 / PERMISSION_DENIED) and the server metadata no longer lists it.
- `RecsysModelServer`: binds REST and gRPC to `--host` (KServe hard-codes every interface),
  and on SIGTERM/SIGINT drains: readiness turns false at once (a load balancer stops sending),
  requests keep being answered for `drain_seconds`, then the REST server stops accepting and
  finishes what is in flight, gRPC gets the same grace, and only then is the model stopped
  (its worker thread finished, its request log flushed).
- REST connections are served by `serving.connection_guard.GuardedHttpProtocol`: deadlines for a
  request's headers and body, a cap on connections per client address, and uvicorn's
  `limit_concurrency` (KServe sets none), so that one client cannot starve the others.
- `ClientErrorFilter`: KServe logs every 4xx/404/501/503 as `ERROR Exception:` with a full
  traceback (about 2 KB a request); a client's mistake is already one access-log line (and a
  count in `recsys_errors_total`), so those records are dropped. KServe's two per-request
  timing lines (`kserve.trace`) are dropped unless `--enable-latency-logging` is on, and
  without it the single REST worker runs without the middleware that times them.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from grpc_interceptor.exceptions import PermissionDenied
from kserve import ModelServer
from kserve.errors import (
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
    UnsupportedProtocol,
)
from kserve.model_server import FASTAPI_APP_IMPORT_STRING
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.multiprocess.server import RESTServerMultiProcess
from kserve.protocol.rest.server import RESTServer

from serving.fast_infer import FastInfer
from serving.fast_infer import answer as fast_answer

INFERENCE_CONTENT_LENGTH_HEADER = "inference-header-content-length"
CLIENT_ERRORS = (InvalidInput, ModelNotFound, ModelNotReady, NotImplementedError, ServerNotReady,
                 ServerNotLive, UnsupportedProtocol, PermissionDenied)
REPOSITORY_DISABLED = ("the model-repository extension (load/unload) is disabled on this "
                       "server: the model is set at start-up")


class RecsysDataPlane(DataPlane):
    """KServe's data plane with the corrections above (module level: REST workers get it
    pickled)."""

    draining = False

    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        if self.draining or not models or not await super().ready():
            return False
        for model in models.values():
            if not await model.healthy():
                return False
        return True

    async def model_ready(self, model_name: str, disable_predictor_health_check: bool = False) -> bool:
        ready = await super().model_ready(model_name, disable_predictor_health_check)
        if not ready and disable_predictor_health_check:  # KServe's REST infer and predict path
            model = self.model_registry.get_model(model_name)
            if hasattr(model, "not_ready_error"):
                raise model.not_ready_error()
        return ready

    async def explain(self, model_name: str, request, headers=None):
        """KServe's explain verb, without KServe's echo of the request's headers into the
        response's (its DataPlane.explain starts the response headers from the request's:
        `host`, `authorization`, a `transfer-encoding` that contradicts the body's length)."""
        from kserve.model import InferenceVerb

        model = await self.get_model(model_name)
        response, response_headers = await model(request, verb=InferenceVerb.EXPLAIN,
                                                 headers=headers)
        return response, dict(response_headers)

    def metadata(self) -> dict:
        metadata = dict(super().metadata())
        metadata["extensions"] = [
            e for e in metadata.get("extensions", []) if e != "model_repository_extension"
        ]
        return metadata

    def decode(self, body, headers, *args, **kwargs):
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever breaks in decoding is the body's fault
            raise InvalidInput(f"malformed request body: {type(exc).__name__}: {exc}") from None

    def decode_inference_request(self, body, headers, model_name):
        if isinstance(body, bytes) and INFERENCE_CONTENT_LENGTH_HEADER not in (headers or {}):
            from kserve.protocol.rest.v2_datamodels import InferenceRequest
            from pydantic import ValidationError

            try:  # JSON sent without its content type
                body = InferenceRequest.model_validate_json(body)
            except ValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                where = ".".join(str(p) for p in first.get("loc", ()))
                raise InvalidInput(
                    "the body is neither a v2 JSON request "
                    f"({where + ': ' if where else ''}{first.get('msg', 'invalid')}) nor a binary "
                    f"one (no {INFERENCE_CONTENT_LENGTH_HEADER} header); send JSON with "
                    "content-type: application/json"
                ) from None
        return super().decode_inference_request(body, headers, model_name)


class RepositoryDisabled(PermissionDenied):
    """403 over REST (`repository_disabled_handler`), PERMISSION_DENIED over gRPC."""

    def __init__(self):
        super().__init__(REPOSITORY_DISABLED)
        self.reason = REPOSITORY_DISABLED


async def repository_disabled_handler(request, exc):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=403, content={"error": REPOSITORY_DISABLED})


class DisabledModelRepository(ModelRepositoryExtension):
    """The v2 model-repository extension, refused: listing stays, load and unload do not."""

    async def load(self, model_name: str) -> None:
        raise RepositoryDisabled()

    async def unload(self, model_name: str) -> None:
        raise RepositoryDisabled()


class _BoundGRPCServer(GRPCServer):
    """KServe's gRPC server on one interface: KServe's start() binds `[::]`, so this is its
    start() with the address as the one change."""

    def __init__(self, host: str, *args, access_log: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._host = f"[{host}]" if ":" in host else host
        self._access_log = access_log  # KServe's "grpc method: ..." line per call

    async def start(self, max_workers):
        from concurrent import futures

        from grpc import aio
        from kserve.logging import logger
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
        from kserve.protocol.grpc.interceptors import (
            ExceptionToStatusInterceptor,
            LoggingInterceptor,
        )
        from kserve.protocol.grpc.servicer import InferenceServicer

        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=((LoggingInterceptor(),) if self._access_log else ())
            + (ExceptionToStatusInterceptor(),),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length",
                 self._kwargs.get("grpc_max_receive_message_length")),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server
        )
        address = f"{self._host}:{self._port}"
        if not self._server.add_insecure_port(address):
            raise OSError(f"gRPC cannot listen on {address}")
        logger.info("Starting gRPC server on %s", address)
        await self._server.start()
        await self._server.wait_for_termination()


class RecsysModelServer(ModelServer):
    """KServe's ModelServer bound to one host, with our data plane, the model-repository
    extension refused, and a drain on SIGTERM (see the module docstring)."""

    def __init__(self, *, host: str = "0.0.0.0", drain_seconds: float = 0.0,
                 connection_limits=None, fast_infer: bool = True, access_log: bool = True,
                 **kwargs):
        from serving.limits import ConnectionLimits

        super().__init__(**kwargs)
        self.host = host
        self.connection_limits = connection_limits or ConnectionLimits()
        self.drain_seconds = drain_seconds
        self.fast_infer = fast_infer  # serving.fast_infer for the v2 infer route (one worker)
        self.access_log = access_log  # uvicorn's line per REST request, KServe's per gRPC call
        self.dataplane = RecsysDataPlane(model_registry=self.registered_models)
        self.model_repository_extension = DisabledModelRepository(self.registered_models)
        self._stopping = False
        self._rest_done: asyncio.Event | None = None

    def start(self, models) -> None:
        """KServe's start(), with the host and our gRPC server: it builds both servers and
        runs them in one call, so there is no hook between building and running."""
        self._register_and_check_atleast_one_model_is_ready(models)
        common = {"access_log_format": self.access_log_format, "workers": self.workers,
                  "grace_period": self.grace_period, "event_loop": self.event_loop,
                  "timeout_keep_alive": self.timeout_keep_alive}
        if self.workers > 1:
            from kserve.model_server import args as kserve_args

            self._rest_multiprocess_server = RESTServerMultiProcess(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                self.http_port, log_config_file=kserve_args.log_config_file, **common,
            )
            self._guard(self._rest_multiprocess_server._rest_server.config)
            self.servers.append(self._rest_multiprocess_server.start())
        else:
            self._rest_server = _RESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                self.http_port, **common,
            )
            self._rest_server.latency_logging = bool(self.enable_latency_logging)
            FastInfer.data_plane = self.dataplane if self.fast_infer else None
            self._guard(self._rest_server.config)
            self.servers.append(self._serve_rest())
        if self.enable_grpc:
            from kserve.model_server import args as kserve_args

            self._grpc_server = _BoundGRPCServer(
                self.host, self.grpc_port, self.dataplane, self.model_repository_extension,
                kwargs=vars(kserve_args), grace_period=self.grace_period,
                access_log=self.access_log,
            )
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        asyncio.run(self._serve())

    def _guard(self, config) -> None:
        from serving.connection_guard import apply
        from serving.limits import MAX_CONCURRENCY

        config.host = self.host
        config.limit_concurrency = MAX_CONCURRENCY
        config.access_log = config.access_log and self.access_log  # read by each connection
        apply(config, self.connection_limits)

    async def _serve_rest(self) -> None:
        # uvicorn takes SIGTERM/SIGINT while it serves; ours must decide the order instead.
        server = self._rest_server._server
        server.capture_signals = _no_capture
        self._rest_done = asyncio.Event()
        try:
            await self._rest_server.start()
        finally:
            self._rest_done.set()

    async def _serve(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, lambda s=sig: loop.create_task(self.drain_and_stop(s)))
        await asyncio.gather(*self.servers)

    async def drain_and_stop(self, sig: int) -> None:
        """Not ready at once; keep answering for `drain_seconds`; then stop accepting, finish
        what is in flight (REST and gRPC, up to the grace period), and stop the model last."""
        if self._stopping:
            return
        self._stopping = True
        from kserve.logging import logger

        self.dataplane.draining = True
        RecsysMiddleware.draining = True
        logger.info("%s: draining for %.1fs, then stopping", signal.Signals(sig).name,
                    self.drain_seconds)
        await asyncio.sleep(self.drain_seconds)
        stops = []
        if self._rest_server is not None:
            self._rest_server._server.should_exit = True  # uvicorn's graceful shutdown
            stops.append(self._rest_done.wait())
        if self._rest_multiprocess_server is not None:
            stops.append(self._rest_multiprocess_server.stop(sig))
        if self._grpc_server is not None:
            stops.append(self._grpc_server.stop(sig))
        await asyncio.gather(*stops, return_exceptions=True)
        for name in list(self.registered_models.get_models()):
            self.registered_models.unload(name)  # the model's stop(): worker done, log flushed


class RecsysMiddleware:
    """In front of KServe's routes (pure ASGI, cheap):

    - what this server does not serve is a 4xx, not KServe's 501 (a server error to any client
      or fuzzer): a model version (`?model_version=` or `/versions/V/`: one version is served,
      `model_version` in every answer says which);
    - while the server drains, every answer says `Connection: close`, so that clients stop
      reusing connections before the listener closes (a request sent on an idle keep-alive
      connection as it is closed would get a reset instead of an answer);
    - `POST /v2/models/<name>/infer` with a plain v2 JSON body takes `serving.fast_infer`: the
      same answer as KServe's route, without FastAPI's routing and pydantic work.
    """

    draining = False  # set by RecsysModelServer.drain_and_stop, in the serving process

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = _unserved(scope)
        if refusal is not None:
            from fastapi.responses import JSONResponse

            return await JSONResponse(status_code=refusal[0], content={"error": refusal[1]})(
                scope, receive, send)
        if self.draining:
            send = _closing(send)
        model = FastInfer.model_name(scope)
        if model is not None:  # the v2 infer route, without FastAPI's per-request work
            return await fast_answer(scope, receive, send, self.app, model)
        return await self.app(scope, receive, send)


def _closing(send):
    async def closing(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", [])
                       if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


def _unserved(scope) -> tuple[int, str] | None:
    path = scope.get("path", "")
    if "/versions/" in path and path.startswith("/v2/models/"):
        return 404, "model versions are not served by path: this server serves one version"
    if b"model_version=" in scope.get("query_string", b""):
        return 400, "model_version: this server serves one version; leave the parameter out"
    return None


class _RESTServer(RESTServer):
    """KServe's REST server without its timing middleware while latency logging is off: the
    middleware only feeds the `kserve.trace` lines (dropped then, see `quiet_logging`), yet
    costs two `getrusage` calls and two log records per request, about a sixth of the event
    loop's busy time under load. KServe's latency histograms are kept (they are measured in
    the model's own call)."""

    latency_logging = True

    def _add_middlewares(self, app) -> None:
        super()._add_middlewares(app)
        if not self.latency_logging:
            from timing_asgi import TimingMiddleware

            # Starlette builds the middleware stack on the first request, from this list.
            app.user_middleware[:] = [m for m in app.user_middleware
                                      if m.cls is not TimingMiddleware]


class _NoCapture:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _no_capture():
    return _NoCapture()


class ClientErrorFilter(logging.Filter):
    """Drops KServe's error records (with tracebacks) for what a client did wrong: the access
    log already has the request, /metrics counts it, the client has the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        return not isinstance(exc, CLIENT_ERRORS)


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def quiet_logging(latency_logging: bool) -> None:
    """Install the filters (idempotent; filters survive KServe's logging reconfiguration in a
    REST worker process)."""
    kserve_logger = logging.getLogger("kserve")
    if not any(isinstance(f, ClientErrorFilter) for f in kserve_logger.filters):
        kserve_logger.addFilter(ClientErrorFilter())
    trace = logging.getLogger("kserve.trace")
    for f in [f for f in trace.filters if isinstance(f, _DropAll)]:
        trace.removeFilter(f)
    if not latency_logging:
        trace.addFilter(_DropAll())
