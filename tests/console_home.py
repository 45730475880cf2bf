"""A run home with everything the console reads, built from real parts: two trained models
registered in MLflow (SQLite) the way the pipeline registers them (real offline metrics on
held-out interactions, the gate, the HTML report), a local deployment record with the second as
the challenger, and, optionally, an experiment's feedback in the feedback store.

Used by the console's browser tests and by `make screenshots` (tools/console_screenshots.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from experiment_data import experiment_feedback

MODEL = "recsys"


@dataclass
class ConsoleHome:
    home: Path
    tracking_uri: str
    store_url: str
    champion: str  # artifact model versions
    challenger: str
    users: list[str]  # users of the models' training data


def _register(model, test, dataset, directory: Path, version: str, tracking_uri: str,
              champion=None):
    from components.config import GateConfig, RegistryConfig
    from components.evaluation.offline_eval import evaluate_model
    from components.evaluation.report import render_html_report
    from components.models.artifact import save_model
    from components.release.registry import register_model

    artifact = save_model(model, directory / version, data_fingerprint=dataset.fingerprint,
                          model_version=version)
    results = evaluate_model(model, test, champion=champion)
    report = directory / f"report-{version}.html"
    report.write_text(render_html_report(results, title="Recommender evaluation",
                                         champion=results.get("champion"),
                                         context={"model version": version}))
    return register_model(artifact, results=results, params={"model_version": version},
                          data_fingerprint=dataset.fingerprint, gate_config=GateConfig(),
                          registry=RegistryConfig(), tracking_uri=tracking_uri,
                          report_path=report)


def build_home(home: Path, dataset, test, first, second, *, champion: str = "console-a",
               challenger: str = "console-b", feedback: bool = True,
               challenger_percent: float = 50.0) -> ConsoleHome:
    """Evaluate two fitted models on the held-out `test` interactions and register them (the
    second against the first, as the pipeline's gate does), deploy them locally as champion and
    challenger, and (with `feedback`) store an experiment where the challenger's answers are
    clicked more often. `first` and `second` may be the same model (saved as two versions)."""
    from mlflow import MlflowClient

    from components.feedback.feedback_store import FeedbackStore, default_store_url
    from components.release.deploy import RECORD, deploy_local

    home.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    work = home / "artifacts"
    _register(first, test, dataset, work, champion, tracking_uri)
    registration = _register(second, test, dataset, work, challenger, tracking_uri,
                             champion=first)
    if registration.alias != "challenger":
        # An experiment needs a challenger even when two near-equal models leave the gate
        # unconvinced; the gate's verdict stays on the version for the Models page.
        MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(
            MODEL, "challenger", registration.version)
    record = deploy_local(tracking_uri=tracking_uri, model_name=MODEL, home=home,
                          challenger_percent=challenger_percent)
    # As if deployed an hour ago: the experiment's window starts when the challenger did.
    started = time.time() - 3_600
    record["challenger"]["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    (home / RECORD).write_text(json.dumps(record, indent=2))
    store_url = default_store_url(home)
    with FeedbackStore(store_url) as store:
        if feedback:
            impressions, events = experiment_feedback(champion, challenger, rate_a=0.04,
                                                      rate_b=0.08, users=2_000, sessions=4_000,
                                                      start=time.time() - 3_000)
            store.add_impressions(impressions)
            store.add_events(events)
    users = sorted(dataset.interactions["user_id"].astype(str).unique(), key=lambda u: (len(u), u))
    return ConsoleHome(home, tracking_uri, store_url, champion, challenger, users)
