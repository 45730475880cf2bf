"""Starting the model server: the options shared by `python -m serving` and `recsys serve`.

Importing this module is cheap (kserve is imported only when a server starts), so the `recsys`
CLI can add the `serve` options without paying for it. Every option also takes KServe's
underscore spelling (`--model_dir`, `--http_port`, ...) so KServe-style container args work.

Two adjustments to KServe's server (`RecsysDataPlane`, in predictor.py), small subclasses, no patches:
- readiness (`/v2/health/ready`, gRPC ServerReady) is false while the model is not ready
  (KServe answers true as soon as the process is up), and a model that failed to load is still
  registered, so the server starts, stays live, and tells the truth about readiness;
- a body KServe itself cannot decode (say, a binary request whose JSON header lacks `inputs`)
  is a 400, not a 500.
"""
from __future__ import annotations

import argparse
import atexit
import os
from pathlib import Path

DEFAULT_MODEL_NAME = "recsys"
KSERVE_MODEL_MOUNT = "/mnt/models"


def default_model_dir() -> str:
    return os.environ.get("MODEL_DIR") or KSERVE_MODEL_MOUNT


def add_server_arguments(parser: argparse.ArgumentParser, *, model_dir_default: str | None) -> None:
    """The server options; `model_dir_default=None` makes --model-dir optional with no default."""
    help_dir = (
        "model artifact directory (default: $MODEL_DIR, else %(default)s, where KServe's storage "
        "initializer mounts the model)" if model_dir_default else
        "model artifact directory (default: the model the last local deploy recorded)"
    )
    parser.add_argument("--model-dir", "--model_dir", dest="model_dir", default=model_dir_default,
                        help=help_dir + "; an MLflow URI (models:/recsys@champion, runs:/ID/model) "
                        "or artifact URI (s3://..., file://...) is downloaded first, from the "
                        "registry at $MLFLOW_TRACKING_URI (default: the local store)")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default=DEFAULT_MODEL_NAME,
                        help="name on the endpoint path, /v2/models/NAME (default: %(default)s)")
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080,
                        help="REST port: v1, v2, /metrics (default: %(default)s)")
    parser.add_argument("--grpc-port", "--grpc_port", dest="grpc_port", type=int, default=8081,
                        help="gRPC (v2) port (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="REST worker processes, each with its own copy of the model and its "
                        "own metrics (default: %(default)s; prefer more pods)")
    parser.add_argument("--max-batch-size", "--max_batch_size", dest="max_batch_size", type=int, default=1000,
                        help="largest batch (rows) a request may carry; larger ones are refused "
                        "with 400 (default: %(default)s)")
    parser.add_argument("--request-log", "--request_log", dest="request_log", default=None, metavar="DIR",
                        help="append every answered row to size-rotated JSON-lines files in DIR")
    parser.add_argument("--online-store", dest="online_store", metavar="URL",
                        default=os.environ.get("RECSYS_ONLINE_STORE") or None,
                        help="where users' feedback since training is read from, so the next "
                        "answer counts it: redis://HOST:6379/0 (the events service's lists) or "
                        "a feedback store URL (sqlite:///FILE, postgresql+psycopg://...), which "
                        "also receives what was shown (impressions) (default: "
                        "$RECSYS_ONLINE_STORE" + (", else none)" if model_dir_default else
                                                  ", else the run home's feedback store)"))
    parser.add_argument("--no-online-store", dest="online_store", action="store_const", const="",
                        help="answer from the model's training data only")
    parser.add_argument("--online-store-prefix", default="recsys:", metavar="PREFIX",
                        help="Redis key prefix, as the events service's (default: %(default)s)")
    # (no underscore alias here: KServe's own --enable_latency_logging takes a value)
    parser.add_argument("--enable-latency-logging", dest="latency_logging",
                        action=argparse.BooleanOptionalAction, default=False,
                        help="KServe's per-request latency log line (default: off)")


def install_request_error_handler() -> None:
    """Answer a body FastAPI cannot parse (not JSON, or not a v2 request's shape) with 400 and
    {"error": ...}, like every other malformed request, instead of FastAPI's 422. KServe builds
    its REST app at import time (`kserve.model_server.app`), so the handler goes there; REST
    workers (--workers > 1) are spawned and import it afresh, so RecommenderModel, which each
    worker unpickles, installs it there too (a test checks every worker)."""
    from fastapi.exceptions import RequestValidationError
    from kserve.model_server import app

    app.add_exception_handler(RequestValidationError, _unparsable_request)


async def _unparsable_request(request, exc):
    from fastapi.responses import JSONResponse

    from serving.metrics import ERRORS

    errors = exc.errors() if hasattr(exc, "errors") else []
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        where, what = "", "the body is not valid JSON"
    else:
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        what = first.get("msg", "the request body is not a valid inference request")
    model = request.path_params.get("model_name")
    if model:
        ERRORS.labels(model, "invalid_input").inc()
    return JSONResponse(status_code=400, content={"error": f"{where}: {what}" if where else what})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="Serve a recommender model artifact with the KServe model server "
        "(v1 and v2 REST on --http-port, v2 gRPC on --grpc-port).",
    )
    add_server_arguments(parser, model_dir_default=default_model_dir())
    return parser


def _validate(args: argparse.Namespace) -> None:
    from components.errors import RecsysError

    for name in ("http_port", "grpc_port"):
        if not 0 < getattr(args, name) < 65536:
            raise RecsysError(f"--{name.replace('_', '-')} must be a port number, got {getattr(args, name)}")
    if args.workers < 1:
        raise RecsysError(f"--workers must be at least 1, got {args.workers}")
    if args.max_batch_size < 1:
        raise RecsysError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.online_store:
        _check_online_store(args.online_store)
    if not is_remote(args.model_dir) and not Path(args.model_dir).exists():
        raise RecsysError(f"--model-dir {args.model_dir}: no such directory")


def _check_online_store(url: str) -> None:
    """A URL that cannot work fails at startup, not in the background thread."""
    from components.errors import RecsysError
    from serving.online_history import is_redis_url

    if is_redis_url(url):
        import redis

        try:
            redis.Redis.from_url(url).close()
        except ValueError as exc:
            raise RecsysError(f"--online-store {url}: {exc}") from None
        return
    from components.feedback_store import create_store_engine

    create_store_engine(url, pool_size=1).dispose()


# What MLflow can download: registry and run URIs, and the artifact stores it supports.
_REMOTE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://",
                    "abfss://", "hdfs://", "http://", "https://", "file://")


def is_remote(model_dir: str) -> bool:
    return model_dir.startswith(_REMOTE_PREFIXES)


def fetch_model(uri: str, destination: Path) -> Path:
    """Download a model artifact named by an MLflow or object-store URI into `destination`."""
    from components.errors import RecsysError
    from components.registry import default_tracking_uri, download_model

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    try:
        return download_model(tracking_uri, uri, destination)
    except Exception as exc:  # MLflow raises many kinds; the user needs the one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecsysError(f"--model-dir {uri}: cannot download from {tracking_uri}: {message}") from None


def serve(args: argparse.Namespace) -> int:
    """Load the model and run the server until it is stopped (SIGTERM/SIGINT)."""
    _validate(args)
    import kserve
    from kserve.logging import configure_logging

    from serving.predictor import RecommenderModel, RecsysDataPlane

    configure_logging()  # before load(), so its outcome is logged in KServe's format
    try:  # `recsys serve` imported numpy before the entry point could set OPENBLAS_NUM_THREADS
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover (scikit-learn brings threadpoolctl)
        pass

    model_dir = args.model_dir
    if is_remote(model_dir):
        import tempfile

        model_dir = str(fetch_model(model_dir, Path(tempfile.mkdtemp(prefix="recsys-model-"))))
    model = RecommenderModel(
        args.model_name,
        model_dir,
        max_batch_size=args.max_batch_size,
        request_log_dir=args.request_log,
        online_store=args.online_store or None,
        online_store_prefix=args.online_store_prefix,
    )
    model.load()
    atexit.register(model.stop)  # flush the request log however the server ends
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        enable_latency_logging=args.latency_logging,
    )
    server.dataplane = RecsysDataPlane(model_registry=server.registered_models)
    install_request_error_handler()
    if model.ready:
        server.start([model])
    else:
        # KServe refuses to start without a ready model; register it anyway so liveness is
        # true and readiness reports false (with the reason in the log) until it is replaced.
        server.register_model(model)
        server.start([])
    return 0
