"""The monitoring pipeline's drift-check step as a plain function over files (the KFP wrapper
in `kfp_components` calls it; `recsys monitor` runs it through the pipeline).

It loads the champion (from the MLflow registry, or a given artifact directory) and its drift
references, reads the window, decides, and writes the decision (JSON) and the HTML report. The
check is also logged to MLflow (experiment `<registry.experiment>-monitoring`: p-values as
metrics, the report and the decision as artifacts) and, given a Pushgateway, pushed there.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from components.monitoring.monitor import Decision

log = logging.getLogger("recsys")


def _champion_dir(tracking_uri: str, model_name: str, scratch: Path) -> Path:
    from components.errors import RecsysError
    from components.release.registry import current_champion, download_model

    champion = current_champion(tracking_uri, model_name)
    if champion is None:
        raise RecsysError(
            f"model '{model_name}' has no champion in {tracking_uri}: train one "
            "first (`recsys run`)"
        )
    version, source = champion
    log.info("checking the champion, %s version %s", model_name, version)
    return download_model(tracking_uri, source, scratch)


def drift_check(
    *,
    report_out: str,
    decision_out: str,
    config_yaml: str = "",
    tracking_uri: str = "",
    model_dir: str = "",
    request_log: str = "",
    feedback: str = "",
    as_of: float = 0.0,
    pushgateway: str = "",
) -> Decision:
    """Check the window before `as_of` (0: now) against the champion; write the decision
    JSON and the report; returns the decision."""
    from components.feedback.observations import BadRows
    from components.models.artifact import read_manifest, verify_files
    from components.monitoring.drift_features import ModelFacts
    from components.monitoring.drift_reference import load_references, reference_rows
    from components.monitoring.monitor import (
        OnlineMetric,
        count_new_interactions,
        decide,
        online_metric,
        read_window,
        window_tables,
    )
    from components.monitoring.monitor_report import render_drift_report
    from components.release.registry import default_tracking_uri
    from components.steps import parse_config, retry_transient

    config = parse_config(config_yaml)
    tracking_uri = tracking_uri or default_tracking_uri()
    now = as_of or time.time()

    def champion() -> tuple[dict, object, ModelFacts]:
        with tempfile.TemporaryDirectory() as scratch:
            directory = (
                Path(model_dir)
                if model_dir
                else _champion_dir(tracking_uri, config.registry.model_name, Path(scratch))
            )
            manifest = read_manifest(directory)
            verify_files(directory, manifest)
            return manifest, load_references(directory), ModelFacts.from_artifact(directory)

    def feedback_counts() -> tuple[OnlineMetric | None, int, BadRows]:
        more_bad = BadRows()  # the same sources, read again: merged, not added
        online = (
            online_metric(feedback, str(manifest.get("model_version")), window, more_bad)
            if feedback
            else None
        )
        return online, count_new_interactions(feedback or None, manifest, more_bad), more_bad

    # Only what may pass is tried again (a dropped connection, an unreachable registry): bad
    # data, a missing champion or a bad config are RecsysErrors, the same on every try.
    manifest, references, facts = retry_transient(champion)
    window = retry_transient(
        lambda: read_window(
            request_log=request_log or None,
            feedback=feedback or None,
            as_of=now,
            config=config.monitoring,
        )
    )
    online, new_interactions, more_bad = retry_transient(feedback_counts)
    window.bad.merge(more_bad)
    decision, results = decide(
        references=references,
        facts=facts,
        manifest=manifest,
        window=window,
        config=config.monitoring,
        new_interactions=new_interactions,
        online=online,
        now=now,
    )
    html = render_drift_report(
        decision,
        results,
        reference_rows(references),
        window_tables(window, facts, references),
        references.profile,
    )
    Path(report_out).write_text(html)
    Path(decision_out).write_text(decision.to_json())
    log.info(
        "drift check: %s%s",
        decision.decision,
        "".join(f"\n  - {r}" for r in decision.reasons + decision.notes),
    )
    retry_transient(
        lambda: _log_to_mlflow(
            tracking_uri,
            config.registry.experiment + "-monitoring",
            decision,
            Path(report_out),
            Path(decision_out),
        )
    )
    if pushgateway:
        from components.errors import RecsysError
        from components.monitoring.monitor_metrics import push_decision

        try:
            push_decision(pushgateway, decision, config.registry.model_name)
        except RecsysError as exc:  # the decision stands; the stale-check alert will tell
            log.warning("%s", exc)
    return decision


def _log_to_mlflow(
    tracking_uri: str, experiment: str, decision: Decision, report: Path, decision_file: Path
) -> None:
    from mlflow.entities import Metric

    from components.release.registry import _client, _experiment_id, mlflow_metric_name

    client = _client(tracking_uri)
    run = client.create_run(
        _experiment_id(client, experiment, tracking_uri),
        tags={
            "decision": decision.decision,
            "model_version": decision.model_version,
            "reasons": "; ".join(decision.reasons)[:5000] or "none",
            "no_retrain_reason": (decision.no_retrain_reason or "")[:5000],
        },
    )
    stamp = int(decision.checked_at * 1000)
    metrics = [Metric("retrain", float(decision.decision == "retrain"), stamp, 0)]
    for key, result in decision.drift.items():
        metrics.append(Metric(mlflow_metric_name(f"p_value.{key}"), result["p_value"], stamp, 0))
        metrics.append(
            Metric(mlflow_metric_name(f"statistic.{key}"), result["statistic"], stamp, 0)
        )
    for view, rows in decision.window.get("rows", {}).items():
        metrics.append(Metric(f"rows.{view}", float(rows), stamp, 0))
    client.log_batch(run.info.run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        # KFP's artifact paths have no suffix: give the files names a browser can open.
        named = Path(tmp)
        (named / "drift-report.html").write_bytes(report.read_bytes())
        (named / "decision.json").write_bytes(decision_file.read_bytes())
        client.log_artifacts(run.info.run_id, tmp, artifact_path="check")
    client.set_terminated(run.info.run_id)
