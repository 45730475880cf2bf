"""`recsys serve`: run the KServe model server on a model artifact, locally.

Without --model-dir it serves the model the local pipeline's deploy step recorded (the MLflow
champion); without --online-store it reads users' fresh feedback from the run home's feedback
store (the one `recsys events serve` writes) and records what it showed there. The options are
the container entry point's (`python -m serving`).
"""
from __future__ import annotations

import argparse
import socket
import warnings
from pathlib import Path

from components.errors import RecsysError
from components.release.registry import default_home
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


def check_ports(host: str, ports: dict[str, int]) -> None:
    """Fail in a second, before the model loads, when a port cannot be listened on (KServe
    would find out only after loading, with tracebacks). SO_REUSEADDR as uvicorn sets it, so a
    port left in TIME_WAIT by a server that just stopped is not refused."""
    if len(set(ports.values())) < len(ports):
        raise RecsysError(" and ".join(ports) + f" are the same port ({next(iter(ports.values()))})")
    for option, port in ports.items():
        if not 0 < port < 65536:
            raise RecsysError(f"{option} must be a port number, got {port}")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise RecsysError(f"{option} {port}: cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from None


def predictor_url(host: str, port: int) -> str:
    """The address a client on this machine reaches a server listening on `host` by."""
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def record_predictor(home: Path, host: str, http_port: int, grpc_port: int) -> None:
    """Write the predictor's address into the run home's deployment record (`predictor`)."""
    import os
    import time

    from components.release.deploy import RECORD, read_record, write_record

    record = read_record(home / RECORD)
    write_record(home, {**record, "predictor": {
        "url": predictor_url(host, http_port), "grpc_port": grpc_port, "pid": os.getpid(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}})


def handler(args: argparse.Namespace) -> int:
    from serving.server import is_remote

    if args.model_dir is not None and not is_remote(args.model_dir) and not Path(args.model_dir).is_dir():
        # before anything is looked up or created (the run home's feedback store)
        raise RecsysError(f"--model-dir {args.model_dir}: no such directory")
    check_ports(args.host, {"--http-port": args.http_port, "--grpc-port": args.grpc_port})
    if args.model_dir is None:
        try:
            from components.release.deploy import RECORD, resolve_deployment
        except ImportError as exc:
            raise RecsysError(
                f"no --model-dir given and the deployed model cannot be looked up ({exc}); "
                "pass --model-dir DIR"
            ) from None
        record = resolve_deployment(args.home)
        args.model_dir = record["model_dir"]
        # Serve what the record names, and follow it: a promotion or rollback by
        # `recsys rollout analyze --auto` applies without a restart.
        home = args.home.resolve() if args.home else default_home()
        args.deployment_record = str(home / RECORD)
        # ...and say in it where this server answers: `recsys rollout analyze` reads its
        # /metrics there, `recsys simulate --traffic` sends its requests there.
        record_predictor(home, args.host, args.http_port, args.grpc_port)
        challenger = record.get("challenger")
        if challenger and not args.no_challenger and args.challenger_dir is None:
            args.challenger_dir = challenger["model_dir"]
            args.record_challenger_percent = float(challenger.get("percent", 0.0))
            args.record_interleave_percent = float(challenger.get("interleave_percent", 0.0))
        if args.request_log is None:
            # Serving the run home's model: log the answers there, where `recsys monitor` looks.
            args.request_log = str((args.home or default_home()) / "requests")
    if args.online_store is None:  # the store `recsys events serve` writes, on this machine
        from components.feedback.feedback_store import default_store_url

        args.online_store = default_store_url(args.home or default_home())
    # KServe answers with FastAPI's ORJSONResponse, which FastAPI deprecates with a warning on
    # the first request: nothing a user of this server can act on.
    warnings.filterwarnings("ignore", message=r"ORJSONResponse is deprecated")
    from serving.server import serve

    return serve(args)
