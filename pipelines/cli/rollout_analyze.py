"""`recsys rollout analyze [--auto] [--json]`: the online champion-challenger decision.

Reads what was shown and what users did from the feedback store (the run home's, or --store),
the serving metrics of each version (locally the predictor's /metrics; on a cluster Prometheus),
and which versions are being compared (locally the deployment record; on a cluster the
InferenceService's canary and the MLflow aliases). `components.experiments.experiment.analyze` decides;
with --auto the decision is carried out through the existing rollout code (`serving.rollout`
on a cluster, `components.release.deploy`'s local promote and rollback here) and recorded, with its
evidence, as an MLflow run (experiment `<registry experiment>-online`, tags `decision`,
`basis`, the versions; metrics; the full analysis as `analysis.json`), and as tags on the
challenger's model version.

The analysis keeps no state between runs (see `components/experiments/experiment.py`), so a CronJob may run
it every few minutes: rerunning it does not inflate false decisions.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import RecsysError

# kube-prometheus-stack's Service, as terraform/ installs it.
DEFAULT_PROMETHEUS = "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"


@dataclass
class Target:
    """Which two versions are compared, where, and how to act on the decision."""

    kind: str  # "local" | "cluster"
    champion: str  # artifact model versions, as answers and impressions carry them
    challenger: str
    registry_champion: str | None = None  # MLflow versions
    registry_challenger: str | None = None
    started_at: float | None = None  # when the challenger started serving, if known
    revisions: dict[str, str] = field(default_factory=dict)  # cluster: revision -> version
    model_name: str = "recsys"
    tracking_uri: str | None = None
    metrics_url: str | None = None  # local: the predictor the deployment record names


def artifact_version(client: Any, tracking_uri: str, model_name: str, version: str) -> str:
    """The artifact's own `model_version` (what answers carry) of a registered MLflow version."""
    import mlflow

    model_version = client.get_model_version(model_name, version)
    tagged = (model_version.tags or {}).get("model_version")
    if tagged:
        return tagged
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_version.source}/manifest.json", dst_path=tmp,
            tracking_uri=tracking_uri)
        return str(json.loads(Path(path).read_text())["model_version"])


def local_target(home: Path) -> Target:
    from components.release.deploy import RECORD, read_record

    path = home / RECORD
    if not path.exists():
        raise RecsysError(f"no local deployment under {home}: run `recsys run` first (or name "
                          "the versions with --champion-version and --challenger-version)")
    record = read_record(path)
    challenger = record.get("challenger")
    if not challenger:
        raise RecsysError(f"no challenger is being tried under {home}: version "
                          f"{record['version']} serves everyone")
    started = challenger.get("started_at")
    return Target(
        "local", record["model_version"], challenger["model_version"],
        registry_champion=record["version"], registry_challenger=challenger["version"],
        started_at=_parse_time(started) if started else None, model_name=record["model_name"],
        tracking_uri=record.get("tracking_uri"), metrics_url=recorded_metrics_url(record),
    )


def recorded_metrics_url(record: dict[str, Any]) -> str | None:
    """The /metrics of the predictor a deployment record names (`recsys serve` writes it)."""
    url = (record.get("predictor") or {}).get("url")
    return f"{url}/metrics" if url else None


def cluster_target(api: Any, tracking_uri: str, *, name: str, namespace: str,
                   model_name: str) -> Target:
    from mlflow import MlflowClient

    from serving.rollout import rollout_status

    client = MlflowClient(tracking_uri=tracking_uri)
    status = rollout_status(api, client, name=name, namespace=namespace, model_name=model_name)
    if status.phase != "canary" or not status.canary_version or not status.champion_version:
        raise RecsysError(f"no canary in progress on {namespace}/{name} (phase {status.phase}): "
                          "nothing to analyze")
    champion = artifact_version(client, tracking_uri, model_name, status.champion_version)
    challenger = artifact_version(client, tracking_uri, model_name, status.canary_version)
    started = (time.time() - status.canary_age_seconds
               if status.canary_age_seconds is not None else None)
    revisions = {r: v for r, v in ((status.champion_revision, champion),
                                   (status.canary_revision, challenger)) if r}
    return Target("cluster", champion, challenger, status.champion_version, status.canary_version,
                  started, revisions, model_name, tracking_uri)


def _parse_time(text: str) -> float:
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise RecsysError(f"{text!r} is neither Unix seconds nor an ISO 8601 time") from None
        return parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp()


def read_feedback(store_url: str, since: float | None):
    from components.feedback.feedback_store import FeedbackStore

    with FeedbackStore(store_url, create=False) as store:
        return store.read_impressions(since=since), store.read_events(since=since)


def serving_health(args: argparse.Namespace, target: Target) -> tuple[dict, list[str]]:
    """VersionHealth per version, and notes on what could not be read."""
    from components.experiments.serving_health import cluster_health, scrape_local

    try:
        if target.kind == "cluster":
            window = int(time.time() - target.started_at) if target.started_at else 3600
            return cluster_health(args.prometheus, args.namespace, target.revisions, window), []
        url = args.metrics_url or target.metrics_url
        if url is None:
            return {}, [("serving guardrails not measured: the deployment record names no "
                         "predictor (start `recsys serve`, or pass --metrics-url)")]
        return scrape_local(url, args.model_name), []
    except RecsysError as exc:
        return {}, [f"serving guardrails not measured: {exc}"]


def apply_decision(action: str, target: Target, args: argparse.Namespace, home: Path) -> list[str]:
    if action not in ("promote", "rollback"):
        return []
    if target.kind == "local":
        from components.release.deploy import promote_local, rollback_local

        return (promote_local if action == "promote" else rollback_local)(home)
    from mlflow import MlflowClient

    from components.release.kube_deploy import kube_api
    from serving import rollout

    operation = rollout.promote if action == "promote" else rollout.rollback
    status = operation(kube_api(), MlflowClient(tracking_uri=args.tracking_uri), name=args.name,
                       namespace=args.namespace, model_name=target.model_name)
    return list(status.actions)


def record_decision(tracking_uri: str, experiment: str, analysis: Any, target: Target,
                    actions: list[str]) -> str:
    """An MLflow run holding the decision and its evidence; returns its id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.release.registry import _experiment_id, mlflow_metric_name

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, experiment, tracking_uri)
    decision = analysis.decision
    run = client.create_run(experiment_id, run_name=f"{decision.action}-{target.registry_challenger}", tags={
        "decision": decision.action, "basis": decision.basis, "method": analysis.method,
        "target": target.kind, "champion_version": target.registry_champion or "",
        "challenger_version": target.registry_challenger or "",
        "champion_model_version": target.champion, "challenger_model_version": target.challenger,
        "reason": " | ".join(decision.reasons)[:5000], "actions": " | ".join(actions)[:5000],
    })
    metrics = {"impressions": analysis.impressions}
    test = analysis.to_dict()["test"] or {}
    for key in ("p_value", "effect", "relative_effect", "ci_low", "ci_high", "n_a", "n_b",
                "wins", "losses", "ties", "sign_test_p_value", "design_effect"):
        if isinstance(test.get(key), (int, float)):
            metrics[key] = test[key]
    for version, values in analysis.metrics.items():
        role = ("champion" if version == target.champion
                else "challenger" if version == target.challenger else mlflow_metric_name(version))
        for key in ("impressions", "clicks", "ctr", "like_rate", "mean_rating", "users"):
            value = values.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[f"{role}.{key}"] = value
    now = int(time.time() * 1000)
    from mlflow.entities import Metric

    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.log_dict(run.info.run_id, {**analysis.to_dict(), "actions": actions}, "analysis.json")
    client.set_terminated(run.info.run_id)
    if target.registry_challenger:
        try:
            client.set_model_version_tag(target.model_name, target.registry_challenger,
                                         "online_decision", decision.action)
            client.set_model_version_tag(target.model_name, target.registry_challenger,
                                         "online_decision_run", run.info.run_id)
        except MlflowException as exc:  # the run holds the evidence; the tag is a convenience
            logging.getLogger("recsys").warning("could not tag the model version: %s", exc)
    return run.info.run_id


def format_analysis(analysis: Any, target: Target, actions: list[str], notes: list[str]) -> str:
    roles = {target.champion: "champion", target.challenger: "challenger"}
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(analysis.since)) if analysis.since else "-"
    title = (f"champion {target.champion} (MLflow {target.registry_champion or '-'}) vs "
             f"challenger {target.challenger} (MLflow {target.registry_challenger or '-'}), "
             f"{analysis.method}, {analysis.primary_metric}, since {since} UTC")
    lines = [title, ""]
    header = ("VERSION", "ROLE", "REQUESTS", "USERS", "IMPRESSIONS", "CLICKS", "CTR", "LIKE RATE",
              "MEAN RATING")
    rows = [header]
    for version, m in analysis.metrics.items():
        base = version.removesuffix(" (interleaved)")
        role = roles.get(base, "-") + (" (interleaved)" if base != version else "")
        rating = m.get("mean_rating")
        rows.append((base, role, f"{m['requests']:,}", f"{m['users']:,}", f"{m['impressions']:,}",
                     f"{m['clicks']:,}", f"{m['ctr']:.4f}", f"{m['like_rate']:.4f}",
                     f"{rating:.2f}" if rating is not None and math.isfinite(rating) else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    test = analysis.test
    if test is not None and analysis.method == "ab":
        lines.append(f"test: mixture SPRT on {analysis.primary_metric}, effect {test.effect:+.4f}"
                     f" ({'n/a' if test.relative_effect is None else f'{test.relative_effect:+.1%}'}),"
                     f" always-valid {1 - analysis.alpha:.0%} interval [{test.ci_low:+.4f}, "
                     f"{test.ci_high:+.4f}], p = {test.p_value:.4g}, design effect "
                     f"{test.design_effect:.2f}")
    elif test is not None:
        lines.append(f"test: team-draft interleaving, challenger wins {test['wins']:,}, losses "
                     f"{test['losses']:,}, ties {test['ties']:,}, always-valid p = "
                     f"{test['p_value']:.4g} (sign test {test['sign_test_p_value']:.4g})")
    if analysis.min_sample_size:
        unit = "impressions per arm" if analysis.method == "ab" else "decided answers"
        lines.append(f"sample: minimum {analysis.min_sample_size:,} {unit} (power analysis), "
                     f"maximum {analysis.max_sample_size:,}")
    for check in analysis.guardrails:
        lines.append(f"guardrail {check.name}: {check.status} ({check.detail})")
    decision = analysis.decision
    lines += ["", f"decision: {decision.action.upper()} ({decision.basis})"]
    lines += [f"  {reason}" for reason in decision.reasons]
    lines += [f"done: {a}" for a in actions]
    lines += [f"note: {n}" for n in [*analysis.notes, *notes]]
    return "\n".join(lines)


@dataclass
class Outcome:
    """One run of the analysis: the result, what was compared, what was done."""

    analysis: Any
    target: Target
    actions: list[str]
    notes: list[str]
    mlflow_run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.analysis.to_dict(), "target": self.target.kind,
                "registry_champion": self.target.registry_champion,
                "registry_challenger": self.target.registry_challenger,
                "applied": bool(self.actions), "actions": self.actions,
                "mlflow_run_id": self.mlflow_run_id,
                "notes": [*self.analysis.notes, *self.notes]}


def run_analysis(args: argparse.Namespace) -> Outcome:
    """Everything `recsys rollout analyze` does but printing (`recsys simulate` calls it too)."""
    from components.config import load_config
    from components.experiments.experiment import analyze
    from components.feedback.feedback_store import default_store_url
    from components.release.registry import default_home

    config = load_config(args.config)
    experiment = config.experiment
    if args.method:
        experiment = experiment.model_copy(update={"method": args.method})
    home = (args.home or default_home()).resolve()
    kind = args.target
    if kind == "auto":
        kind = "cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    if args.champion_version and args.challenger_version:
        if args.auto:
            raise RecsysError("--auto acts on the deployment: leave out --champion-version and "
                              "--challenger-version")
        target = Target(kind, args.champion_version, args.challenger_version)
        if kind == "local" and (home / "deployment.json").is_file():
            from components.release.deploy import read_record

            target.metrics_url = recorded_metrics_url(read_record(home / "deployment.json"))
    elif args.champion_version or args.challenger_version:
        raise RecsysError("give both --champion-version and --challenger-version, or neither")
    elif kind == "local":
        target = local_target(home)
    else:
        from components.release.kube_deploy import kube_api

        if not args.tracking_uri:
            raise RecsysError("no MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
        target = cluster_target(kube_api(), args.tracking_uri, name=args.name,
                                namespace=args.namespace, model_name=args.model_name)
    store_url = args.store or os.environ.get("RECSYS_FEEDBACK_STORE") or default_store_url(home)
    since = _parse_time(args.since) if args.since else target.started_at
    impressions, events = read_feedback(store_url, since)
    health, notes = serving_health(args, target)
    analysis = analyze(impressions, events, champion=target.champion,
                       challenger=target.challenger, config=experiment, health=health)
    outcome = Outcome(analysis, target, [], notes)
    if args.auto and analysis.decision.action != "continue":
        outcome.actions = apply_decision(analysis.decision.action, target, args, home)
        tracking_uri = target.tracking_uri or args.tracking_uri
        if tracking_uri:
            outcome.mlflow_run_id = record_decision(
                tracking_uri, f"{config.registry.experiment}-online", analysis, target,
                outcome.actions)
            outcome.actions.append(f"MLflow: decision and evidence recorded in run "
                                   f"{outcome.mlflow_run_id}")
    return outcome


def cmd_analyze(args: argparse.Namespace) -> int:
    outcome = run_analysis(args)
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print(format_analysis(outcome.analysis, outcome.target, outcome.actions, outcome.notes))
    return 0


def add_analyze(actions: argparse._SubParsersAction) -> None:
    text = ("the online champion-challenger decision from what users did: promote, rollback "
            "or continue, and why")
    q = actions.add_parser("analyze", help=text, description=text + ". Locally it compares the "
                           "challenger and champion of the run home's deployment record; on a "
                           "cluster (--target cluster, the default inside a pod) the "
                           "InferenceService's canary and champion.")
    q.add_argument("--auto", action="store_true",
                   help="carry the decision out (promote or roll back) and record it in MLflow")
    q.add_argument("--json", action="store_true", help="print the analysis as JSON")
    q.add_argument("--home", type=Path, default=None,
                   help="run home (default: $RECSYS_HOME or ./runs)")
    q.add_argument("--store", default=None,
                   help="feedback store URL (default: $RECSYS_FEEDBACK_STORE, else the run "
                   "home's feedback.db)")
    q.add_argument("--config", type=Path, default=None,
                   help="YAML config; its `experiment` section sets the metric, alpha, power, "
                   "minimum detectable effect and guardrails")
    q.add_argument("--method", choices=("ab", "interleaving"), default=None,
                   help="override the config's experiment.method")
    q.add_argument("--target", choices=("auto", "local", "cluster"), default="auto",
                   help="local deployment record or KServe canary (default: cluster inside a "
                   "pod, else local)")
    q.add_argument("--since", default=None,
                   help="start of the window, Unix seconds or ISO 8601 (default: when the "
                   "challenger started serving)")
    q.add_argument("--champion-version", default=None, metavar="V",
                   help="compare these model versions (as answers carry them) instead of the "
                   "deployment's; not with --auto")
    q.add_argument("--challenger-version", default=None, metavar="V")
    q.add_argument("--metrics-url", default=None,
                   help="local: the predictor's /metrics (default: that of the predictor the "
                   "run home's deployment record names, where `recsys serve` wrote its address)")
    q.add_argument("--prometheus", default=os.environ.get("PROMETHEUS_URL", DEFAULT_PROMETHEUS),
                   help="cluster: Prometheus' URL (default: $PROMETHEUS_URL, else %(default)s)")
    q.add_argument("--name", default="recsys", help="InferenceService name (default: %(default)s)")
    q.add_argument("--namespace", default="recsys", help="Kubernetes namespace (default: %(default)s)")
    q.add_argument("--model-name", default="recsys",
                   help="MLflow registered model and served model name (default: %(default)s)")
    q.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""),
                   help="cluster: MLflow tracking URI (default: $MLFLOW_TRACKING_URI); locally "
                   "the deployment record's")
    q.set_defaults(func=cmd_analyze)
