"""Submitting and scheduling the compiled pipeline on Kubeflow Pipelines.

There is no Kubeflow here. The real `kfp.Client(host=...)` talks over HTTP to a small local
double of the KFP v2beta1 REST API defined below (healthz, experiments list/create, runs create,
recurringruns create: the endpoints kfp 2.17's client calls for these two operations), which
records each request; the tests check what the client sent. Parameter parsing is tested on its
own and against the parameters the committed pipeline package declares.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from components.errors import ClusterError, ConfigError
from pipelines.cli.cluster import DEFAULT_PACKAGE, register
from pipelines.submit import parse_params, pipeline_parameters, schedule_run, submit_run


class KfpApiDouble:
    """Just enough of /apis/v2beta1 for kfp.Client's run and recurring-run calls."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict, object]] = []
        self.experiments: list[dict] = []
        self.fail_runs_with: int | None = None
        double = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                double.requests.append((method, url.path, parse_qs(url.query), body))
                code, answer = double.handle(method, url.path, parse_qs(url.query), body)
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, method, path, query, body):
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
        if path == "/apis/v2beta1/experiments" and method == "GET":
            predicate = json.loads(query["filter"][0])["predicates"][0]
            wanted = predicate.get("stringValue", predicate.get("string_value"))
            return 200, {"experiments": [e for e in self.experiments if e["display_name"] == wanted]}
        if path == "/apis/v2beta1/experiments" and method == "POST":
            experiment = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if path == "/apis/v2beta1/runs" and method == "POST":
            if self.fail_runs_with:
                return self.fail_runs_with, {"error": "pipeline spec is invalid", "code": 3,
                                             "message": "pipeline spec is invalid"}
            return 200, {**body, "run_id": "run-123", "state": "PENDING"}
        if path == "/apis/v2beta1/recurringruns" and method == "POST":
            return 200, {**body, "recurring_run_id": "rr-456", "status": "ENABLED"}
        return 404, {"error": f"no route {method} {path}", "code": 5, "message": "not found"}

    def posts(self, path: str) -> list[dict]:
        return [body for method, p, _, body in self.requests if method == "POST" and p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def kfp_api():
    double = KfpApiDouble()
    yield double
    double.close()


def test_params_are_typed_by_their_text():
    assert parse_params(["seed=7", "rate=0.5", "cache=true", "off=No", "source=ml-100k", "empty="]) == {
        "seed": 7, "rate": 0.5, "cache": True, "off": False, "source": "ml-100k", "empty": ""}
    assert parse_params(["expr=a=b"]) == {"expr": "a=b"}  # only the first '=' separates
    for bad in ("seed", "=7", " =x"):
        with pytest.raises(ConfigError, match="is not of the form name=value"):
            parse_params([bad])


def test_params_follow_the_types_the_pipeline_declares():
    declared = pipeline_parameters(DEFAULT_PACKAGE)
    assert declared["seed"] == "NUMBER_INTEGER" and declared["items"] == "STRING"
    assert parse_params(["seed=7", "items=42", "source=true"], declared) == {
        "seed": 7, "items": "42", "source": "true"}
    with pytest.raises(ConfigError, match="declares seed as NUMBER_INTEGER"):
        parse_params(["seed=seven"], declared)
    with pytest.raises(ConfigError, match="no such parameter.*synthetic_users"):
        parse_params(["sed=7"], declared)


def test_submit_creates_the_experiment_and_one_run_with_the_arguments(kfp_api):
    run_id = submit_run(kfp_api.host, DEFAULT_PACKAGE, experiment="recsys-nightly",
                        params={"seed": 7, "source": "synthetic"}, run_name="try-1")

    assert run_id == "run-123"
    assert kfp_api.posts("/apis/v2beta1/experiments") == [{"display_name": "recsys-nightly", "namespace": ""}]
    [run] = kfp_api.posts("/apis/v2beta1/runs")
    assert run["display_name"] == "try-1" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {"seed": 7, "source": "synthetic"}
    # With a platform spec (the data-source Secret), kfp sends both documents under one key.
    sent = run["pipeline_spec"]
    assert sent["pipeline_spec"]["pipelineInfo"]["name"] == "recsys-training"
    ingest = sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-ingest-op"]
    assert ingest["secretAsEnv"][0]["secretNameParameter"] == {"componentInputParameter": "data_secret"}

    submit_run(kfp_api.host, DEFAULT_PACKAGE, experiment="recsys-nightly", params={})
    assert len(kfp_api.posts("/apis/v2beta1/experiments")) == 1  # found, not created again


def test_schedule_creates_a_recurring_run_on_a_six_field_cron(kfp_api):
    job_id = schedule_run(kfp_api.host, DEFAULT_PACKAGE, experiment="recsys", cron="0 3 * * *",
                          params={"source": "movielens-dslabs"}, name="recsys-nightly")

    assert job_id == "rr-456"
    [job] = kfp_api.posts("/apis/v2beta1/recurringruns")
    assert job["display_name"] == "recsys-nightly" and job["experiment_id"] == "exp-1"
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert job["mode"] == "ENABLE" and job["max_concurrency"] == 1 and job["no_catchup"] is True
    assert job["runtime_config"]["parameters"] == {"source": "movielens-dslabs"}
    with pytest.raises(ConfigError, match="5 fields"):
        schedule_run(kfp_api.host, DEFAULT_PACKAGE, experiment="recsys", cron="daily", params={}, name="x")


def test_server_errors_and_missing_host_are_one_line(kfp_api):
    kfp_api.fail_runs_with = 400
    with pytest.raises(ClusterError, match="refused to start a run of recsys_pipeline.yaml: 400"):
        submit_run(kfp_api.host, DEFAULT_PACKAGE, experiment="recsys", params={})
    with pytest.raises(ConfigError, match="--host"):
        submit_run("", DEFAULT_PACKAGE, experiment="recsys", params={})


def test_cli_submit_and_schedule(kfp_api, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="recsys")
    register(parser.add_subparsers(dest="command", required=True))

    args = parser.parse_args(["submit", "--host", kfp_api.host, "--param", "seed=3", "--run-name", "cli",
                              "--service-account", "recsys-deployer"])
    assert args.func(args) == 0
    assert "submitted run run-123" in capsys.readouterr().out
    [run] = kfp_api.posts("/apis/v2beta1/runs")
    assert run["runtime_config"]["parameters"] == {"seed": 3}
    assert run["service_account"] == "recsys-deployer"

    args = parser.parse_args(["schedule", "--host", kfp_api.host, "--cron", "30 2 * * 1", "--name", "weekly"])
    assert args.func(args) == 0
    assert kfp_api.posts("/apis/v2beta1/recurringruns")[0]["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * 1"

    args = parser.parse_args(["submit", "--host", kfp_api.host, "--param", "seed=x"])
    with pytest.raises(ConfigError):
        args.func(args)
    assert len(kfp_api.posts("/apis/v2beta1/runs")) == 1  # nothing sent for a bad parameter
