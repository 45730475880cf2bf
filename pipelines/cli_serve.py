"""`recsys serve`: run the KServe model server on a model artifact, locally.

Without --model-dir it serves the model the local pipeline's deploy step recorded (the MLflow
champion). The options are the container entry point's (`python -m serving`).
"""
from __future__ import annotations

import argparse

from components.errors import RecsysError
from serving.server import add_server_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model with the KServe model server (v1/v2 REST, v2 gRPC)",
        description="Serve a model artifact with the KServe model server: v1 and v2 REST on "
        "--http-port (plus /metrics), v2 gRPC on --grpc-port. Stop with Ctrl-C.",
    )
    add_server_arguments(p, model_dir_default=None)
    p.epilog = ("Without --model-dir, the run home's deployed model is served and its answers are "
                "logged to <home>/requests (unless --request-log says otherwise), where "
                "`recsys monitor` reads them.")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    if args.model_dir is None:
        try:
            from components.deploy import resolve_served_model
            from components.registry import default_home
        except ImportError as exc:
            raise RecsysError(
                f"no --model-dir given and the deployed model cannot be looked up ({exc}); "
                "pass --model-dir DIR"
            ) from None
        args.model_dir = str(resolve_served_model())
        if args.request_log is None:
            # Serving the run home's model: log the answers there, where `recsys monitor` looks.
            args.request_log = str(default_home() / "requests")
    from serving.server import serve

    return serve(args)
