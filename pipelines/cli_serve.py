"""`recsys serve`: run the KServe model server on a model artifact, locally.

Without --model-dir it serves the model the local pipeline's deploy step recorded (the MLflow
champion); without --online-store it reads users' fresh feedback from the run home's feedback
store (the one `recsys events serve` writes) and records what it showed there. The options are
the container entry point's (`python -m serving`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from components.errors import RecsysError
from components.registry import default_home
from serving.server import add_server_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model with the KServe model server (v1/v2 REST, v2 gRPC)",
        description="Serve a model artifact with the KServe model server: v1 and v2 REST on "
        "--http-port (plus /metrics), v2 gRPC on --grpc-port. Stop with Ctrl-C.",
    )
    add_server_arguments(p, model_dir_default=None)
    p.add_argument("--home", type=Path, default=None,
                   help="run home: the deployed model and the feedback store "
                   "(default: $RECSYS_HOME or ./runs)")
    p.epilog = ("Without --model-dir, the run home's deployed model is served and its answers are "
                "logged to <home>/requests (unless --request-log says otherwise), where "
                "`recsys monitor` reads them.")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if args.model_dir is None:
        try:
            from components.deploy import RECORD, resolve_deployment
        except ImportError as exc:
            raise RecsysError(
                f"no --model-dir given and the deployed model cannot be looked up ({exc}); "
                "pass --model-dir DIR"
            ) from None
        record = resolve_deployment(args.home)
        args.model_dir = record["model_dir"]
        # Serve what the record names, and follow it: a promotion or rollback by
        # `recsys rollout analyze --auto` applies without a restart.
        args.deployment_record = str((args.home.resolve() if args.home else default_home()) / RECORD)
        challenger = record.get("challenger")
        if challenger and not args.no_challenger and args.challenger_dir is None:
            args.challenger_dir = challenger["model_dir"]
            args.record_challenger_percent = float(challenger.get("percent", 0.0))
            args.record_interleave_percent = float(challenger.get("interleave_percent", 0.0))
        if args.request_log is None:
            # Serving the run home's model: log the answers there, where `recsys monitor` looks.
            args.request_log = str((args.home or default_home()) / "requests")
    if args.online_store is None:  # the store `recsys events serve` writes, on this machine
        from components.feedback_store import default_store_url

        args.online_store = default_store_url(args.home or default_home())
    from serving.server import serve

    return serve(args)
