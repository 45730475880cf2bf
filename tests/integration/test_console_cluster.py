"""The console as the manifests run it on a cluster: read-only, the experiment read from the
KServe canary.

There is no Kubernetes cluster here: the real `kubernetes` client talks to `tests/k8s_double.py`
(which plays KServe's controller), through a kubeconfig, as `recsys rollout` does in its own
tests. MLflow (SQLite) and the feedback store (SQLite) are real; the console runs in-process
(FastAPI's TestClient) with the backend `recsys console --target cluster` builds.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiment_data import experiment_feedback
from k8s_double import KubeApiDouble

from components.feedback.feedback_store import FeedbackStore
from components.release.kube_deploy import deploy_inference_service

MODEL = "recsys"


@pytest.fixture()
def cluster(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("recsys",
                                          artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model(MODEL)
    for version, model_version in (("1", "art-1"), ("2", "art-2")):
        model_dir = tmp_path / f"model-{version}"
        model_dir.mkdir()
        (model_dir / "manifest.json").write_text(json.dumps({"model_version": model_version}))
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(model_dir), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version(MODEL, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", "1")
    client.set_registered_model_alias(MODEL, "challenger", "2")
    store = f"sqlite:///{tmp_path / 'feedback.db'}"
    with KubeApiDouble() as k8s:
        for version in ("1", "2"):
            deploy_inference_service(name="recsys", namespace="recsys", image="img:1",
                                     storage_uri=f"s3://mlflow/{version}/model",
                                     model_version=version, api=k8s.api())
        # What users did once the canary started (the analysis' window starts there).
        impressions, events = experiment_feedback("art-1", "art-2", rate_a=0.04, rate_b=0.08,
                                                  start=time.time() + 1)
        with FeedbackStore(store) as feedback:
            feedback.add_impressions(impressions)
            feedback.add_events(events)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: double\n"
            f"clusters: [{{name: double, cluster: {{server: '{k8s.host}'}}}}]\n"
            "users: [{name: me, user: {token: not-a-secret}}]\n"
            "contexts: [{name: double, context: {cluster: double, user: me}}]\n")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield {"k8s": k8s, "uri": uri, "store": store, "home": tmp_path / "home"}


def test_read_only_console_follows_the_canary_and_changes_nothing(cluster):
    from fastapi.testclient import TestClient

    from components.config import ExperimentConfig
    from pipelines.cli.console import RolloutBackend
    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    closed = "http://127.0.0.1:9"
    config = console_config(cluster["home"], tracking_uri=cluster["uri"],
                            store_url=cluster["store"], predictor_url=closed, events_url=closed,
                            read_only=True, target="cluster", timeout=1.0)
    backend = RolloutBackend(config.home, kind="cluster", tracking_uri=cluster["uri"],
                             name="recsys", namespace="recsys", model_name=MODEL,
                             metrics_url=f"{closed}/metrics", prometheus=closed)
    before = cluster["k8s"].get("recsys", "recsys")
    app = create_app(build_console(config, experiments=backend,
                                   experiment_config=ExperimentConfig(min_detectable_effect=0.3)))
    with TestClient(app) as client:
        page = client.get("/experiments")
        assert page.status_code == 200
        text = page.text
        assert "Decision: <span class=\"badge decision-promote\">promote</span>" in text
        assert "Champion <code>art-1</code> (MLflow 1) against challenger" in text
        assert "cluster deployment" in text
        assert "This console is read-only" in text and "Promote the challenger" not in text
        assert "serving guardrails not measured: cannot query Prometheus" in text
        token = re.search(r'name="console-token" content="([0-9a-f]+)"', text).group(1)
        refused = client.post("/experiments/promote",
                              data={"challenger": "art-2", "confirmed": "yes", "token": token})
        assert refused.status_code == 409
        assert "this console is read-only: run `recsys rollout promote`" in refused.text
    after = cluster["k8s"].get("recsys", "recsys")
    assert after["spec"] == before["spec"]
    assert [c.method for c in cluster["k8s"].calls if c.method != "GET"] == ["POST", "PATCH"]
