"""`recsys rollout analyze [--auto] [--json]`, locally and against a cluster.

Real parts: the feedback store (SQLite), MLflow on SQLite with registered versions whose
artifacts carry their own model versions, the local deployment record, the `recsys` CLI.
There is no Kubernetes cluster or Prometheus here: the cluster test drives the real
`kubernetes` client against `tests/k8s_double.py` (which plays KServe's controller) and the
real Prometheus HTTP client against a double that answers `/api/v1/query` with bodies shaped
as Prometheus' own (vector results per Knative revision).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiment_data import experiment_feedback
from k8s_double import KubeApiDouble
from registry_home import two_version_home

from components.feedback.feedback_store import FeedbackStore, default_store_url
from components.release.deploy import RECORD, deploy_local, read_record
from components.release.kube_deploy import deploy_inference_service
from pipelines.cli.main import main

MODEL = "recsys"
VERSIONS = {"1": "art-1", "2": "art-2"}  # MLflow version -> the artifact's own model_version


@pytest.fixture()
def registry(tmp_path):
    """A home whose MLflow store holds versions 1 (champion) and 2 (challenger)."""
    home, uri, client = two_version_home(tmp_path, MODEL, VERSIONS)
    # Sized for the data below: a 30% lift is what the power analysis must detect.
    (home / "config.yaml").write_text("experiment:\n  min_detectable_effect: 0.3\n")
    return home, uri, client


def _fill_store(url: str, *, rate_a: float, rate_b: float) -> None:
    """An experiment's feedback, after the challenger started (the analysis' window)."""
    impressions, events = experiment_feedback("art-1", "art-2", rate_a=rate_a, rate_b=rate_b,
                                              start=time.time() + 1)
    with FeedbackStore(url) as store:
        store.add_impressions(impressions)
        store.add_events(events)


def _analyze(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["rollout", "analyze", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}


@pytest.mark.parametrize("rate_b, action", [(0.09, "promote"), (0.02, "rollback")])
def test_local_auto_applies_the_decision_and_records_it(registry, capsys, monkeypatch, rate_b, action):
    home, uri, client = registry
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    deploy_local(tracking_uri=uri, model_name=MODEL, home=home, challenger_percent=50)
    _fill_store(default_store_url(home), rate_a=0.05, rate_b=rate_b)
    common = ["--home", str(home), "--config", str(home / "config.yaml"),
              "--metrics-url", "http://127.0.0.1:9/metrics"]

    code, out, _ = _analyze(capsys, *common)  # without --auto: report only
    # A worse challenger also drops the like rate: that guardrail may decide first.
    assert code == 0 and f"decision: {action.upper()} (" in out
    assert "guardrail p99_latency: not measured" in out and "note: serving guardrails not measured" in out
    assert read_record(home / RECORD)["challenger"]["version"] == "2"

    code, out, _ = _analyze(capsys, *common, "--auto", "--json")
    result = json.loads(out)
    assert code == 0 and result["decision"]["action"] == action and result["applied"]
    assert result["test"]["p_value"] <= 0.05 and result["metrics"]["art-2"]["impressions"] > 1000
    record = read_record(home / RECORD)
    assert "challenger" not in record
    if action == "promote":
        assert (record["version"], record["model_version"]) == ("2", "art-2")
        assert _aliases(client) == {"champion": "2"}
    else:
        assert (record["version"], record["rolled_back"]) == ("1", "2")
        assert _aliases(client) == {"champion": "1"}
    [run] = client.search_runs([client.get_experiment_by_name("recsys-online").experiment_id])
    assert run.info.run_id == result["mlflow_run_id"]
    assert (run.data.tags["decision"], run.data.tags["challenger_version"]) == (action, "2")
    assert run.data.metrics["p_value"] == pytest.approx(result["test"]["p_value"])
    evidence = json.loads(Path(client.download_artifacts(run.info.run_id, "analysis.json")).read_text())
    assert evidence["decision"]["action"] == action and evidence["actions"]
    assert client.get_model_version(MODEL, "2").tags["online_decision"] == action

    code, _, err = _analyze(capsys, *common, "--auto")  # nothing left to decide
    assert code == 1 and "no challenger is being tried" in err


def test_too_little_data_continues_and_changes_nothing(registry, capsys, monkeypatch):
    home, uri, client = registry
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    deploy_local(tracking_uri=uri, model_name=MODEL, home=home, challenger_percent=50)
    impressions, events = experiment_feedback("art-1", "art-2", rate_a=0.05, rate_b=0.09,
                                              sessions=150, start=time.time() + 1)
    with FeedbackStore(default_store_url(home)) as store:
        store.add_impressions(impressions)
        store.add_events(events)
    code, out, _ = _analyze(capsys, "--home", str(home), "--auto", "--config",
                            str(home / "config.yaml"), "--metrics-url", "http://127.0.0.1:9/metrics")
    assert code == 0 and "decision: CONTINUE (waiting)" in out
    assert "power analysis asks for" in out
    assert read_record(home / RECORD)["challenger"]["version"] == "2"
    assert _aliases(client) == {"champion": "1", "challenger": "2"}


def test_bad_options_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = _analyze(capsys, "--home", str(tmp_path))
    assert code == 1 and "no local deployment under" in err and len(err.strip().splitlines()) == 1
    code, _, err = _analyze(capsys, "--home", str(tmp_path), "--champion-version", "a")
    assert code == 1 and "give both" in err
    code, _, err = _analyze(capsys, "--home", str(tmp_path), "--champion-version", "a",
                            "--challenger-version", "b", "--since", "yesterday")
    assert code == 1 and "neither Unix seconds nor an ISO 8601 time" in err


class PrometheusDouble:
    """Prometheus' /api/v1/query for the three guardrail queries, per Knative revision."""

    def __init__(self, series: dict[str, dict[str, float]]):
        self.series = series  # revision -> {"requests", "errors", "p99"}
        self.queries: list[str] = []

    def __enter__(self):
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                query = parse_qs(urlparse(self.path).query)["query"][0]
                double.queries.append(query)
                kind = ("p99" if query.startswith("histogram_quantile") else
                        "errors" if "recsys_errors_total" in query else "requests")
                result = [{"metric": {"serving_knative_dev_revision": revision},
                           "value": [1.7e9, str(values[kind])]}
                          for revision, values in double.series.items()]
                body = json.dumps({"status": "success",
                                   "data": {"resultType": "vector", "result": result}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.mark.parametrize("canary_p99, action, basis", [(0.021, "promote", "effect"),
                                                       (0.300, "rollback", "guardrail")])
def test_cluster_auto_moves_the_canary(registry, tmp_path, capsys, monkeypatch, canary_p99,
                                       action, basis):
    home, uri, client = registry
    store = f"sqlite:///{tmp_path / 'cluster-feedback.db'}"
    _fill_store(store, rate_a=0.05, rate_b=0.09)
    with KubeApiDouble() as k8s:
        for version in ("1", "2"):
            deploy_inference_service(name="recsys", namespace="recsys", image="img:1",
                                     storage_uri=f"s3://mlflow/{version}/model",
                                     model_version=version, api=k8s.api())
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: double\n"
            f"clusters: [{{name: double, cluster: {{server: '{k8s.host}'}}}}]\n"
            "users: [{name: me, user: {token: not-a-secret}}]\n"
            "contexts: [{name: double, context: {cluster: double, user: me}}]\n")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        series = {"recsys-predictor-00001": {"requests": 9000, "errors": 1, "p99": 0.020},
                  "recsys-predictor-00002": {"requests": 1000, "errors": 0, "p99": canary_p99}}
        with PrometheusDouble(series) as prometheus:
            code, out, _ = _analyze(capsys, "--target", "cluster", "--auto", "--json",
                                    "--config", str(home / "config.yaml"),
                                    "--store", store, "--tracking-uri", uri,
                                    "--prometheus", prometheus.url, "--since", "0")
        result = json.loads(out)
        assert code == 0 and (result["decision"]["action"], result["decision"]["basis"]) == (action, basis)
        assert {q.split("(")[0] for q in prometheus.queries} == {"sum by ", "histogram_quantile"}
        assert all('namespace="recsys"' in q for q in prometheus.queries)
        latency = next(g for g in result["guardrails"] if g["name"] == "p99_latency")
        assert latency["challenger"] == pytest.approx(canary_p99)
        spec = k8s.get("recsys", "recsys")["spec"]["predictor"]
        if action == "promote":
            assert "canaryTrafficPercent" not in spec and _aliases(client) == {"champion": "2"}
        else:
            assert spec["canaryTrafficPercent"] == 0 and _aliases(client) == {"champion": "1"}
        assert any(a.startswith("cluster:") for a in result["actions"])
        assert result["mlflow_run_id"]
