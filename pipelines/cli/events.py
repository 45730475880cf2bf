"""`recsys events serve`: the feedback events service, on this machine or in a container.

The same service and options as `python -m serving.events` (the container's entry point). With
no `--store` it uses the run home's store, so `recsys run`, `recsys serve` and
`recsys events serve` on one machine share it with no flags.
"""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from serving.events import add_events_arguments

    p = subparsers.add_parser(
        "events", help="the feedback events service (what users did with the recommendations)",
        description="Feedback events: clicks, likes, ratings... and what was shown.",
    )
    actions = p.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    q = actions.add_parser(
        "serve", help="run the events service: POST /v1/events, /healthz, /metrics",
        description="Run the feedback events service: POST /v1/events (one event or a JSON array) "
        "into the feedback store, a 200 once committed; also the sink of KServe's payload logger "
        "(POST / with CloudEvent headers). Stop with Ctrl-C or SIGTERM.",
    )
    add_events_arguments(q)
    q.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from serving.events import serve_events

    return serve_events(args)
