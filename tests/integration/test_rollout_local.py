"""`recsys rollout status` and `recsys rollout analyze` on a local run home, through the CLI in
a subprocess: the deployment record and the MLflow registry (SQLite) are read, no Kubernetes
configuration is asked for, and the predictor whose /metrics the analysis reads is the one the
record names (a real HTTP server on a free loopback port), not whatever answers on 8080."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiment_data import experiment_feedback
from registry_home import two_version_home

from components.feedback.feedback_store import FeedbackStore, default_store_url
from components.release.deploy import RECORD, deploy_local, read_record, write_record

REPO = Path(__file__).resolve().parents[2]
MODEL = "recsys"


@pytest.fixture()
def home(tmp_path):
    """A run home with versions 1 (champion) and 2 (challenger), deployed locally 50/50."""
    home, uri, _ = two_version_home(tmp_path, MODEL, {"1": "art-1", "2": "art-2"})
    deploy_local(tracking_uri=uri, model_name=MODEL, home=home, challenger_percent=50)
    return home


def _recsys(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "KUBERNETES_SERVICE_HOST", "RECSYS_FEEDBACK_STORE")}
    env.update(RECSYS_HOME=str(home), KUBECONFIG=str(home / "no-kubeconfig"), HOME=str(home),
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pipelines.cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False, cwd=home)


def test_status_on_a_local_home_shows_the_record_and_the_registry(home):
    result = _recsys("rollout", "status", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert f"local deployment {home}/deployment.json" in out and "phase: challenger" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("champion ", "challenger "))}
    assert rows["champion"][1:4] == ["1", "art-1", "50%"]
    assert rows["challenger"][1:4] == ["2", "art-2", "50%"]
    assert "MLflow 'recsys'" in out and "champion -> 1, challenger -> 2" in out
    assert "no predictor recorded" in out
    assert "Kubernetes" not in result.stdout + result.stderr

    # Promote locally: the record first, then the registry; the status says so.
    result = _recsys("rollout", "promote", home=home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done: serving: version 2 now answers everyone" in result.stdout
    assert "phase: stable" in result.stdout and "champion -> 2, challenger -> -" in result.stdout
    assert read_record(home / RECORD)["version"] == "2"


class _Metrics(BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).paths.append(self.path)
        body = b"# no series yet\n"
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_analyze_reads_the_predictor_the_record_names_and_prints_no_http_log(home):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        write_record(home, {**read_record(home / RECORD), "predictor": {"url": url}})
        impressions, events = experiment_feedback("art-1", "art-2", rate_a=0.05, rate_b=0.09,
                                                  sessions=150, start=time.time() + 1)
        with FeedbackStore(default_store_url(home)) as store:
            store.add_impressions(impressions)
            store.add_events(events)
        result = _recsys("rollout", "analyze", home=home)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr[-2000:]
    assert _Metrics.paths == ["/metrics"]  # the recorded predictor, once
    assert "cannot read the predictor's metrics" not in result.stdout
    assert "HTTP Request:" not in result.stdout + result.stderr  # httpx's INFO line
    assert "decision: CONTINUE" in result.stdout
