"""Starting the model server: the options shared by `python -m serving` and `recsys serve`.

Importing this module is cheap (kserve is imported only when a server starts), so the `recsys`
CLI can add the `serve` options without paying for it. Every option also takes KServe's
underscore spelling (`--model_dir`, `--http_port`, ...) so KServe-style container args work.

The adjustments to KServe's server (readiness, drain, host, the model-repository extension
refused, quiet client errors) are in serving/model_server.py. A model that failed to load is
still registered, so the server starts, stays live, and tells the truth about readiness. Every
error body is `{"error": "..."}` (FastAPI's own are `{"detail": ...}`), and `/openapi.json`
documents the error answers (serving/http_errors.py).
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path

from serving.http_errors import install_request_error_handler

DEFAULT_MODEL_NAME = "recsys"
KSERVE_MODEL_MOUNT = "/mnt/models"


def default_model_dir() -> str:
    return os.environ.get("MODEL_DIR") or KSERVE_MODEL_MOUNT


def add_server_arguments(parser: argparse.ArgumentParser, *, model_dir_default: str | None) -> None:
    """The server options; `model_dir_default=None` makes --model-dir optional with no default
    (`recsys serve`, which also listens on loopback only unless told otherwise)."""
    from serving.limits import (
        DEFAULT_ANSWER_CACHE_SIZE,
        DEFAULT_MAX_ANSWER_ITEMS,
        DEFAULT_MAX_BATCH_SIZE,
        DEFAULT_MAX_EXPLAIN_ITEMS,
        DEFAULT_MAX_REQUEST_BYTES,
        DEFAULT_MAX_TITLE_QUERIES,
        add_connection_arguments,
    )
    from serving.model_calls import (
        DEFAULT_BATCH_MAX_SIZE,
        DEFAULT_BATCH_MAX_WAIT_MS,
        DEFAULT_LOOP_BATCH_ROWS,
        DEFAULT_MODEL_THREADS,
    )

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
    parser.add_argument("--host", default="0.0.0.0" if model_dir_default else "127.0.0.1",
                        help="interface REST and gRPC listen on (default: %(default)s; neither "
                        "port has authentication of its own: see the README's Security section)")
    parser.add_argument("--http-port", "--http_port", dest="http_port", type=int, default=8080,
                        help="REST port: v1, v2, /metrics (default: %(default)s)")
    parser.add_argument("--grpc-port", "--grpc_port", dest="grpc_port", type=int, default=8081,
                        help="gRPC (v2) port (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="REST worker processes, each with its own copy of the model and its "
                        "own metrics (default: %(default)s; prefer more pods)")
    parser.add_argument("--max-batch-size", "--max_batch_size", dest="max_batch_size", type=int,
                        default=DEFAULT_MAX_BATCH_SIZE,
                        help="largest batch (rows) a request may carry; larger ones are refused "
                        "with 400 (default: %(default)s)")
    parser.add_argument("--max-answer-items", dest="max_answer_items", type=int,
                        default=DEFAULT_MAX_ANSWER_ITEMS,
                        help="largest answer, batch x k, a request may ask for; larger ones are "
                        "refused with 400 (default: %(default)s, about 2.5 MB of JSON)")
    parser.add_argument("--max-explain-items", dest="max_explain_items", type=int,
                        default=DEFAULT_MAX_EXPLAIN_ITEMS,
                        help="largest answer, batch x k, an explained request (the explain input "
                        "or :explain) may ask for; each row's explanation costs about a model "
                        "call; larger ones are refused with 400 (default: %(default)s)")
    parser.add_argument("--max-title-queries", dest="max_title_queries", type=int,
                        default=DEFAULT_MAX_TITLE_QUERIES,
                        help="item_id values per request that are titles to match fuzzily (each "
                        "is scored against every title); exact ids are not limited "
                        "(default: %(default)s)")
    parser.add_argument("--drain-seconds", dest="drain_seconds", type=float, default=0.0,
                        help="on SIGTERM, report not ready and keep answering this long before "
                        "closing the listener; in-flight requests are always finished "
                        "(default: %(default)s; on a cluster, the time its endpoints take to "
                        "drop the pod)")
    add_connection_arguments(parser)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                        help="largest REST request body: a larger declared one is answered 413 "
                        "before it is read, a longer one is cut off with a 413 and the connection "
                        "closed; 0: no cap (default: %(default)s)")
    parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                        help="no access-log line per REST request (uvicorn's) and no \"grpc "
                        "method\" line per gRPC call (KServe's), both at INFO: at 10,000 "
                        "requests a minute they are 10,000 lines, written on the event loop "
                        "(README: the worst case with and without them); server errors are "
                        "still logged, and /metrics still counts answers and failed requests")
    parser.add_argument("--no-fast-infer", dest="fast_infer", action="store_false",
                        help="answer POST /v2/models/NAME/infer with JSON bodies on KServe's "
                        "FastAPI route instead of the thin path that gives the same answer "
                        "without FastAPI's per-request work (serving/fast_infer.py; one REST "
                        "worker only)")
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
    parser.add_argument("--answer-cache-size", dest="answer_cache_size", type=int,
                        default=DEFAULT_ANSWER_CACHE_SIZE, metavar="N",
                        help="answers kept for users with fresh feedback (until their next "
                        "event; least recently used dropped first, about 1 KB each), so a "
                        "repeat request is a lookup instead of a model call; 0 turns this off "
                        "(default: %(default)s)")
    parser.add_argument("--model-threads", dest="model_threads", type=int,
                        default=DEFAULT_MODEL_THREADS, metavar="N",
                        help="worker threads that run model calls, off the event loop; the "
                        "probes and cached answers never wait for them (default: %(default)s)")
    parser.add_argument("--batch-max-size", dest="batch_max_size", type=int,
                        default=DEFAULT_BATCH_MAX_SIZE, metavar="ROWS",
                        help="rows that need a model call (users whose answer is not cached), "
                        "gathered across concurrent requests and scored as one call, at most "
                        "this many; 1 turns batching off (default: %(default)s)")
    parser.add_argument("--batch-max-wait-ms", dest="batch_max_wait_ms", type=float,
                        default=DEFAULT_BATCH_MAX_WAIT_MS, metavar="MS",
                        help="how long the first such row waits for others before its batch is "
                        "scored (default: %(default)s)")
    parser.add_argument("--loop-batch-rows", dest="loop_batch_rows", type=int,
                        default=DEFAULT_LOOP_BATCH_ROWS, metavar="ROWS",
                        help="batches of at most this many rows are scored on the event loop's "
                        "own thread, not a worker thread (the two contend for the GIL: under "
                        "load a worker thread's call costs several times its CPU alone); "
                        "larger batches, bigger requests, explanations and similar items run "
                        "in the worker threads; 0 sends every call there (default: "
                        "%(default)s)")
    parser.add_argument("--no-compiled-ranker", dest="compiled_ranker", action="store_false",
                        help="score with LightGBM itself instead of the ranker's trees compiled "
                        "at load (the same scores; the compiled trees cost about a fifth)")
    parser.add_argument("--compiled-ranker-cache", dest="compiled_ranker_cache", metavar="DIR",
                        default=None,
                        help="where the compiled ranker is kept so a restart does not compile "
                        "again (default: $RECSYS_COMPILED_RANKER_CACHE, else "
                        "~/.cache/recsys/compiled-ranker; not writable: compiled at every load)")
    experiment = parser.add_argument_group(
        "champion and challenger",
        "serve a second model to a share of users (sticky: by a hash of the user id), and/or "
        "interleave both models' answers for another share; every answer says which version "
        "made it. Without --model-dir, `recsys serve` takes both from the local deployment "
        "record and follows it (promote and rollback apply without a restart).")
    experiment.add_argument("--challenger-dir", default=None, metavar="DIR",
                            help="the challenger's artifact directory (or MLflow/artifact URI)")
    experiment.add_argument("--challenger-percent", type=float, default=None, metavar="P",
                            help="share of users the challenger answers, 0-100 (default: the "
                            "deployment record's, else the experiment config's 10)")
    experiment.add_argument("--interleave-percent", type=float, default=None, metavar="Q",
                            help="share of users whose answers interleave both models "
                            "(team-draft), 0-100 (default: the record's, else 0)")
    experiment.add_argument("--no-challenger", action="store_true",
                            help="serve the champion alone even if the record names a challenger")
    # (no underscore alias here: KServe's own --enable_latency_logging takes a value)
    parser.add_argument("--enable-latency-logging", dest="latency_logging",
                        action=argparse.BooleanOptionalAction, default=False,
                        help="KServe's per-request latency log line (default: off)")


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
    for name in ("max_answer_items", "max_explain_items", "max_title_queries"):
        if getattr(args, name) < 1:
            raise RecsysError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.answer_cache_size < 0:
        raise RecsysError(f"--answer-cache-size must not be negative, got {args.answer_cache_size}")
    if args.model_threads < 1:
        raise RecsysError(f"--model-threads must be at least 1, got {args.model_threads}")
    if args.batch_max_size < 1:
        raise RecsysError(f"--batch-max-size must be at least 1, got {args.batch_max_size}")
    if args.loop_batch_rows < 0:
        raise RecsysError(f"--loop-batch-rows must not be negative, got {args.loop_batch_rows}")
    if not 0 <= args.batch_max_wait_ms <= 1000:
        raise RecsysError(f"--batch-max-wait-ms must be between 0 and 1000, got {args.batch_max_wait_ms:g}")
    if args.drain_seconds < 0:
        raise RecsysError(f"--drain-seconds must not be negative, got {args.drain_seconds}")
    problem = _connection_limits(args).problem()
    if problem:
        raise RecsysError(problem)
    if args.online_store:
        _check_online_store(args.online_store)
    if not is_remote(args.model_dir) and not Path(args.model_dir).exists():
        raise RecsysError(f"--model-dir {args.model_dir}: no such directory")
    challenger = getattr(args, "challenger_dir", None)
    if challenger and not is_remote(challenger) and not Path(challenger).exists():
        raise RecsysError(f"--challenger-dir {challenger}: no such directory")
    shares = [getattr(args, n, None) for n in ("challenger_percent", "interleave_percent")]
    for name, value in zip(("--challenger-percent", "--interleave-percent"), shares):
        if value is not None and not 0.0 <= value <= 100.0:
            raise RecsysError(f"{name} must be between 0 and 100, got {value:g}")
    if sum(v or 0.0 for v in shares) > 100.0:
        raise RecsysError("--challenger-percent and --interleave-percent add up to more than 100")
    if args.request_log is not None:  # before the model loads, not after
        from serving.request_log import check_writable

        try:
            check_writable(args.request_log)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise RecsysError(f"--request-log {args.request_log}: not a writable directory ({reason})") from None


def _connection_limits(args: argparse.Namespace):
    """The per-connection bounds of the options, with the predictor's body cap."""
    from dataclasses import replace

    from serving.limits import connection_limits

    return replace(connection_limits(args), max_body_bytes=args.max_body_bytes)


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
    from components.feedback.feedback_store import create_store_engine

    create_store_engine(url, pool_size=1).dispose()


# What MLflow can download: registry and run URIs, and the artifact stores it supports.
_REMOTE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://",
                    "abfss://", "hdfs://", "http://", "https://", "file://")


def is_remote(model_dir: str) -> bool:
    return model_dir.startswith(_REMOTE_PREFIXES)


def fetch_model(uri: str, destination: Path) -> Path:
    """Download a model artifact named by an MLflow or object-store URI into `destination`."""
    from components.errors import RecsysError
    from components.release.registry import default_tracking_uri, download_model

    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    try:
        return download_model(tracking_uri, uri, destination)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds; the user needs the one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecsysError(f"--model-dir {uri}: cannot download from {tracking_uri}: {message}") from None


def serve(args: argparse.Namespace) -> int:
    """Load the model and run the server until it is stopped (SIGTERM/SIGINT)."""
    _validate(args)
    from kserve.logging import configure_logging

    from serving.heap import freeze_loaded
    from serving.model_server import RecsysModelServer, quiet_logging
    from serving.predictor import RecommenderModel

    configure_logging()  # before load(), so its outcome is logged in KServe's format
    quiet_logging(args.latency_logging)
    # The event loop shares the GIL with the model's worker thread: a 1 ms switch interval
    # (Python's default is 5 ms) bounds how long a probe or a cached answer waits for it.
    sys.setswitchinterval(0.001)
    try:  # `recsys serve` imported numpy before the entry point could set OPENBLAS_NUM_THREADS
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover (scikit-learn brings threadpoolctl)
        pass

    model_dir = _local(args.model_dir)
    routed = getattr(args, "challenger_dir", None) or getattr(args, "deployment_record", None)
    model = RecommenderModel(
        args.model_name,
        model_dir,
        max_batch_size=args.max_batch_size,
        max_answer_items=args.max_answer_items,
        max_explain_items=args.max_explain_items,
        max_title_queries=args.max_title_queries,
        request_log_dir=None if routed else args.request_log,
        online_store=args.online_store or None,
        online_store_prefix=args.online_store_prefix,
        answer_cache_size=args.answer_cache_size,
        **_call_options(args),
    )
    if routed:
        model = _router(args, model)
    model.load()
    atexit.register(model.stop)  # flush the request log however the server ends
    freeze_loaded()  # full collections no longer walk the model: no 100 ms pauses under load
    server = RecsysModelServer(
        host=args.host,
        drain_seconds=args.drain_seconds,
        connection_limits=_connection_limits(args),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        enable_latency_logging=args.latency_logging,
        fast_infer=args.fast_infer,
        access_log=args.access_log,
    )
    install_request_error_handler()
    if model.ready:
        server.start([model])
    else:
        # KServe refuses to start without a ready model; register it anyway so liveness is
        # true and readiness reports false (with the reason in the log) until it is replaced.
        server.register_model(model)
        server.start([])
    return 0


def _call_options(args: argparse.Namespace) -> dict:
    """Where model calls run: the RecommenderModel arguments of --model-threads and --batch-*."""
    return {"model_threads": args.model_threads, "batch_max_size": args.batch_max_size,
            "batch_max_wait_ms": args.batch_max_wait_ms,
            "loop_batch_rows": args.loop_batch_rows,
            "compiled_ranker": getattr(args, "compiled_ranker", True),
            "compiled_ranker_cache": getattr(args, "compiled_ranker_cache", None)}


def _local(model_dir: str) -> str:
    if is_remote(model_dir):
        import tempfile

        return str(fetch_model(model_dir, Path(tempfile.mkdtemp(prefix="recsys-model-"))))
    return model_dir


def _router(args: argparse.Namespace, champion):
    """The champion, the challenger (if any) and, when serving from the local deployment
    record, the means to follow it."""
    from functools import partial

    from components.config import ExperimentConfig
    from serving.router import ExperimentRouter

    loader = partial(_loaded_model, args.model_name, args.max_batch_size,
                     args.online_store or None, args.online_store_prefix,
                     args.max_answer_items, args.max_title_queries, args.answer_cache_size,
                     _call_options(args))
    challenger = None
    if args.challenger_dir and not args.no_challenger:
        challenger = loader(_local(args.challenger_dir), load=False)
    record = getattr(args, "deployment_record", None)
    override = (args.challenger_percent, args.interleave_percent)
    percent = args.challenger_percent
    if percent is None:
        percent = getattr(args, "record_challenger_percent", None)
    if percent is None:
        percent = ExperimentConfig().challenger_percent
    interleave = args.interleave_percent
    if interleave is None:
        interleave = getattr(args, "record_interleave_percent", None) or 0.0
    return ExperimentRouter(
        args.model_name, champion, challenger, challenger_percent=percent,
        interleave_percent=interleave, request_log_dir=args.request_log,
        record=Path(record) if record else None, loader=loader,
        split_override=override, without_challenger=args.no_challenger,
    )


def _loaded_model(name: str, max_batch_size: int, online_store: str | None, prefix: str,
                  max_answer_items: int, max_title_queries: int, answer_cache_size: int,
                  calls: dict, model_dir: str, load: bool = True):
    """A RecommenderModel for the router (module level: REST workers get the router pickled).
    Each has its own online history (fresh items are filtered by its own training data)."""
    from serving.predictor import RecommenderModel

    model = RecommenderModel(name, model_dir, max_batch_size=max_batch_size,
                             max_answer_items=max_answer_items,
                             max_title_queries=max_title_queries,
                             online_store=online_store, online_store_prefix=prefix,
                             answer_cache_size=answer_cache_size, **calls)
    if load:
        model.load()
    return model
