"""`recsys console`: the web console over the run home's stores and the running services."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from serving.console.config import DEFAULT_EVENTS_URL, DEFAULT_PORT, DEFAULT_PREDICTOR_URL

    p = subparsers.add_parser(
        "console",
        help="web console: try recommendations, follow experiments, monitoring, models",
        description="Serve the web console: Try it (recommendations from the predictor, "
        "feedback through the events API), Experiments (the online champion-challenger "
        "analysis, promote and rollback), Monitoring (events, requests, latency, drift, "
        "pipeline runs) and Models (the MLflow registry). It reads the run home's stores and "
        "calls the running services; a page whose dependency is not there says so. "
        "GET /healthz and /metrics for probes and Prometheus. Stop with Ctrl-C or SIGTERM.",
    )
    p.add_argument("--home", type=Path, default=None,
                   help="run home (default: $RECSYS_HOME or ./runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default: %(default)s)")
    p.add_argument("--predictor-url", default=os.environ.get("RECSYS_PREDICTOR_URL",
                                                             DEFAULT_PREDICTOR_URL),
                   help="the predictor's REST address, `recsys serve` or the InferenceService "
                   "(default: $RECSYS_PREDICTOR_URL, else %(default)s)")
    p.add_argument("--events-url", default=os.environ.get("RECSYS_EVENTS_URL", DEFAULT_EVENTS_URL),
                   help="the events API, `recsys events serve` (default: $RECSYS_EVENTS_URL, "
                   "else %(default)s)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow (default: $MLFLOW_TRACKING_URI, else the run home's mlflow.db)")
    p.add_argument("--store", default=None,
                   help="feedback store URL (default: $RECSYS_FEEDBACK_STORE, else the run "
                   "home's feedback.db)")
    p.add_argument("--request-log", type=Path, default=None, metavar="DIR",
                   help="the predictor's request log (default: <home>/requests)")
    p.add_argument("--model-name", default="recsys",
                   help="MLflow registered model and served model name (default: %(default)s)")
    p.add_argument("--read-only", action="store_true",
                   help="no promote or rollback from the Experiments page (the manifests set "
                   "it: the console's cluster role only reads)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for the predictor or the events service "
                   "(default: %(default)s)")
    p.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    from serving.console.config import console_config
    from serving.console.server import serve

    config = console_config(
        args.home, tracking_uri=args.tracking_uri, store_url=args.store,
        request_log=args.request_log, predictor_url=args.predictor_url,
        events_url=args.events_url, model_name=args.model_name, read_only=args.read_only,
        timeout=args.timeout,
    )
    return serve(config, args.host, args.port, log_level="warning" if args.quiet else "info")
