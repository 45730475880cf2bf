"""`recsys console`: the web console over the run home's stores and the running services.

The console lives in `serving.console`; what `recsys rollout` knows about experiments (which
versions are compared, where their serving health is measured, how promote and rollback are
carried out) lives here in `pipelines`, above it. `RolloutBackend` hands that code to the
console, so its buttons do exactly what `recsys rollout analyze --auto` does.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


class RolloutBackend:
    """The console's `ExperimentBackend`, made of `pipelines.cli.rollout_analyze`'s functions."""

    def __init__(self, home: Path, *, kind: str, tracking_uri: str, name: str, namespace: str,
                 model_name: str, metrics_url: str, prometheus: str):
        self.home = home
        self.kind = kind
        self.args = argparse.Namespace(
            tracking_uri=tracking_uri, name=name, namespace=namespace, model_name=model_name,
            metrics_url=metrics_url, prometheus=prometheus)

    def target(self) -> Any:
        from pipelines.cli import rollout_analyze

        if self.kind == "local":
            return rollout_analyze.local_target(self.home)
        from components.release.kube_deploy import kube_api

        a = self.args
        return rollout_analyze.cluster_target(kube_api(), a.tracking_uri, name=a.name,
                                              namespace=a.namespace, model_name=a.model_name)

    def health(self, target: Any) -> tuple[dict, list[str]]:
        from pipelines.cli.rollout_analyze import serving_health

        return serving_health(self.args, target)

    def apply(self, action: str, target: Any) -> list[str]:
        from pipelines.cli.rollout_analyze import apply_decision

        return apply_decision(action, target, self.args, self.home)


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
                   help="change nothing: no promote or rollback from the Experiments page and no "
                   "feedback events from Try it (its buttons are off and posts are refused); the "
                   "pages only read (the manifests set it: the console's cluster role only reads)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config; its `experiment` section is the analysis' (metric, alpha, "
                   "power, minimum detectable effect, guardrails), as for `recsys rollout analyze`")
    p.add_argument("--target", choices=("auto", "local", "cluster"), default="auto",
                   help="where the experiment runs: the run home's deployment record or the "
                   "KServe canary (default: cluster inside a pod, else local)")
    p.add_argument("--name", default="recsys", help="cluster: InferenceService name (default: "
                   "%(default)s)")
    p.add_argument("--namespace", default="recsys",
                   help="cluster: Kubernetes namespace (default: %(default)s)")
    p.add_argument("--prometheus", default=os.environ.get("PROMETHEUS_URL", ""),
                   help="cluster: Prometheus' URL for the serving guardrails (default: "
                   "$PROMETHEUS_URL, else recsys rollout analyze's)")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for the predictor or the events service "
                   "(default: %(default)s)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[],
                   metavar="HOST[:PORT]",
                   help="a Host header the console answers besides the address it listens on "
                   "(the name it is reached by through a proxy or a Service); repeatable. "
                   "Requests naming any other host are refused (DNS rebinding)")
    from serving.limits import add_connection_arguments

    add_connection_arguments(p)
    p.set_defaults(func=cmd_console)


def cmd_console(args: argparse.Namespace) -> int:
    from components.config import load_config
    from pipelines.cli.rollout_analyze import DEFAULT_PROMETHEUS
    from serving.console.config import console_config
    from serving.console.server import serve
    from serving.limits import connection_limits

    experiment = load_config(args.config).experiment  # a bad config fails before serving
    kind = args.target
    if kind == "auto":
        kind = "cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    config = console_config(
        args.home, tracking_uri=args.tracking_uri, store_url=args.store,
        request_log=args.request_log, predictor_url=args.predictor_url,
        events_url=args.events_url, model_name=args.model_name, read_only=args.read_only,
        timeout=args.timeout, target=kind, namespace=args.namespace,
        inference_service=args.name,
    )
    backend = RolloutBackend(
        config.home, kind=kind, tracking_uri=config.tracking_uri, name=args.name,
        namespace=args.namespace, model_name=args.model_name,
        metrics_url=f"{config.predictor}/metrics", prometheus=args.prometheus or DEFAULT_PROMETHEUS)
    return serve(config, args.host, args.port, log_level="warning" if args.quiet else "info",
                 experiment_config=experiment, experiments=backend,
                 connection_limits=connection_limits(args), allowed_hosts=args.allowed_hosts)
