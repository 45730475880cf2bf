"""The monitoring pipeline: committed IR YAML in sync, its retraining branch under dsl.If, and the
loop end to end on this machine with real parts.

End to end (`make monitor-demo` runs it with its output shown): a small champion trained and
registered by the pipeline's own steps (MLflow on SQLite in a run home); `recsys serve` (the
KServe model server on loopback ports) answers requests concentrated on one user segment and
logs them to the home; `recsys events serve` (the real events service, SQLite store in the
home) takes rating events whose items are popularity-inverted or new; `recsys monitor` runs the
monitoring pipeline with the KFP local runner, decides `retrain`, and the training pipeline runs
in the same run on the source plus the feedback: the new version is registered and the gate
decides whether it becomes the challenger.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.monitoring import COMPILED_PATH, compile_monitoring_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import drift_shifts  # tests/ is not a package: its directory is on the path above
from events_process import free_port, start_service, stop_service

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = {
    "synthetic_users": 200,
    "synthetic_items": 120,
    "synthetic_interactions": 5000,
    "seed": 42,
}
# A lighter model keeps the two trainings of the test short; the loop is the same.
LIGHT = (
    "model:\n  als: {enabled: false}\n  content: {enabled: false}\n"
    "  ranker: {folds: 2, n_estimators: 40}\n"
)


def test_committed_monitoring_pipeline_is_in_sync_with_the_code(tmp_path):
    fresh = compile_monitoring_pipeline(tmp_path / "m.yaml")
    assert fresh.read_text() == COMPILED_PATH.read_text(), (
        "run `make compile` and commit the result"
    )


def test_the_retraining_branch_is_the_training_pipeline_under_a_condition(tmp_path):
    text = compile_monitoring_pipeline(tmp_path / "m.yaml", image="reg.example/r:2").read_text()
    spec, platform = yaml.safe_load_all(text)  # the pipeline, then its Kubernetes settings
    root = spec["root"]["dag"]["tasks"]
    assert not root["drift-check-op"]["cachingOptions"].get("enableCache")
    # A data error is the same on every try: the step retries only transient errors itself.
    assert "retryPolicy" not in root["drift-check-op"]
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    retrain = next(t for t in branches.values() if t["taskInfo"]["name"] == "retrain")
    condition = retrain["triggerPolicy"]["condition"]
    assert "action" in condition and "'retrain'" in condition
    inner = spec["components"][retrain["componentRef"]["name"]]["dag"]["tasks"]
    training = next(t for t in inner.values() if t["taskInfo"]["name"] == "training")
    trained = spec["components"][training["componentRef"]["name"]]["dag"]["tasks"]
    assert {
        "fingerprint-op",
        "ingest-op",
        "train-op",
        "evaluate-op",
        "register-op",
        "deploy-op",
    } <= set(trained)
    # The feedback reaches ingest (and the fingerprint that keys its cache).
    assert (
        training["inputs"]["parameters"]["feedback"]["componentInputParameter"]
        == "pipelinechannel--feedback"
    )
    assert "feedback" in trained["ingest-op"]["inputs"]["parameters"]
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == "reg.example/r:2"
    # The retraining's data steps get the data source's credentials, as in a training run.
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {"exec-fingerprint-op", "exec-ingest-op"} <= set(kubernetes)


def _recsys(*args: str, home: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )


def test_monitor_with_nothing_to_check_is_one_line(tmp_path):
    result = _recsys("monitor", "--home", str(tmp_path), home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("recsys monitor: error: nothing to check under")
    assert len(result.stderr.strip().splitlines()) == 1
    result = _recsys(
        "monitor", "--home", str(tmp_path), "--feedback", str(tmp_path / "no.jsonl"), home=tmp_path
    )
    assert "no such events file" in result.stderr and result.returncode == 1


def test_a_deterministic_error_of_the_check_is_not_retried(tmp_path):
    (tmp_path / "requests").mkdir()
    (tmp_path / "requests" / "requests-h-1.jsonl").write_text("not a record\n")
    result = _recsys("monitor", "--check-only", "--json", home=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert "retrying" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys monitor: error: model 'recsys' has no champion in ")


# --------------------------------------------------------------------------- end to end
def _champion(home: Path, monkeypatch) -> tuple:
    """Train and register the first champion with the pipeline's own step functions (what
    `recsys run` runs, without the KFP subprocesses), and record the source for retraining."""
    from components import steps
    from components.release.registry import default_tracking_uri
    from pipelines.cli.monitor import record_training_source

    monkeypatch.setenv("RECSYS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = home / "steps"
    work.mkdir(parents=True)
    f = {
        name: str(work / name)
        for name in ("raw", "raw_items", "inter", "items", "train", "test", "results", "report")
    }
    info = steps.ingest("synthetic", "", f["raw"], f["raw_items"], **SYNTHETIC)
    fingerprint = steps.validate(f["raw"], f["raw_items"], f["inter"], f["items"], **info)
    steps.split(f["inter"], f["train"], f["test"], config_yaml=LIGHT)
    steps.train(
        f["train"],
        f["items"],
        str(work / "model"),
        data_fingerprint=fingerprint,
        heldout_in=f["test"],
        config_yaml=LIGHT,
    )
    tracking = default_tracking_uri(home)
    steps.evaluate(
        str(work / "model"),
        f["test"],
        f["results"],
        f["report"],
        tracking_uri=tracking,
        config_yaml=LIGHT,
    )
    registration = steps.register(
        str(work / "model"),
        f["results"],
        tracking_uri=tracking,
        data_fingerprint=fingerprint,
        config_yaml=LIGHT,
    )
    steps.deploy(registration, target="local")
    record_training_source(
        home, {"data": "synthetic", "items": "", "config_yaml": LIGHT, **SYNTHETIC}
    )
    return pd.read_parquet(f["train"]), pd.read_parquet(f["test"]), pd.read_parquet(f["items"])


def _serve(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.cli.main",
                "serve",
                "--http-port",
                str(port),
                "--grpc-port",
                str(free_port()),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/models/recsys/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"recsys serve did not start:\n{log.read_text()[-3000:]}")


def _ask(url: str, users: list[str]) -> list[str]:
    """One v2 request per user (k=10); the answers' ids (what a click refers to)."""
    ids = []
    with httpx.Client(timeout=30) as client:
        for user in users:
            body = {
                "inputs": [
                    {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]},
                    {"name": "k", "datatype": "INT32", "shape": [1], "data": [10]},
                ]
            }
            answer = client.post(f"{url}/v2/models/recsys/infer", json=body)
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["id"])
    return ids


@pytest.mark.timeout(1800)
def test_end_to_end_serve_shift_monitor_retrain(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    train, heldout, items = _champion(home, monkeypatch)
    ctx = drift_shifts.ShiftContext.build(train, items, genre="Genre3")
    rng = np.random.default_rng(11)

    server, url = _serve(home, tmp_path / "serve.log")
    store = f"sqlite:///{home / 'feedback.db'}"
    events_service, events_url = start_service(store, tmp_path / "events.log")
    try:
        # Requests concentrated on one segment of users.
        segment = [str(u) for u in rng.choice(ctx.segment_users, 300)]
        request_ids = _ask(url, segment)
        # Events: held-out interactions with popularity inverted and a quarter on new items,
        # each tied to an answer, happening now.
        window = heldout.iloc[rng.choice(len(heldout), 400, replace=False)]
        window = drift_shifts.new_items(
            drift_shifts.popularity_inverted(window, ctx, rng), ctx, rng, 0.25
        )
        now = time.time()
        events = [
            {
                "event_id": f"e{i}",
                "type": "rating",
                "user_id": str(r.user_id),
                "item_id": str(r.item_id),
                "value": float(r.rating),
                "timestamp": now - 60 + i * 0.1,
                "request_id": request_ids[i % len(request_ids)],
            }
            for i, r in enumerate(window.itertuples())
        ]
        for start in range(0, len(events), 100):
            answer = httpx.post(
                f"{events_url}/v1/events", json=events[start : start + 100], timeout=30
            )
            assert answer.status_code == 200, answer.text
    finally:
        server.send_signal(signal.SIGTERM)  # flushes the request log
        server.wait(60)
        stop_service(events_service)
    assert list((home / "requests").glob("requests-*.jsonl"))

    result = _recsys("monitor", "--json", home=home, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    with capsys.disabled():  # what `make monitor-demo` shows
        print("\n" + result.stdout)
    assert out["decision"] == "retrain"
    assert out["reasons"][0].startswith("drift: ")
    assert out["drift"]["events.item_popularity"]["drift"]
    assert any(
        out["drift"][f"requests.{f}"]["drift"]
        for f in ("user_activity", "items_genre", "items_popularity")
    )
    assert out["window"]["rows"] == {"requests": 300, "scores": 300, "events": 400, "ratings": 400}
    assert out["window"]["new_interactions"] == 400  # all later than the training data
    assert (
        Path(out["report"]).is_file() and "Drift check: RETRAIN" in Path(out["report"]).read_text()
    )

    retrained = out["retraining"]
    assert retrained["version"] == "2"
    accepted = retrained["reason"].startswith("Accepted")
    assert retrained["alias"] == ("challenger" if accepted else None)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    version = client.get_model_version("recsys", "2")
    assert version.tags["gate"] == ("accepted" if accepted else "refused")
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == "1"
    # The retrained model learnt from the feedback: its catalogue has the new items.
    from components.monitoring.drift_features import ModelFacts
    from components.release.registry import download_model

    model_dir = download_model(client.tracking_uri, version.source, tmp_path / "v2")
    facts = ModelFacts.from_artifact(model_dir)
    new = {e["item_id"] for e in events if e["item_id"].startswith("new-item-")}
    assert new and new <= set(facts.item_ids)
    # The check itself is in MLflow, with its report.
    runs = client.search_runs([client.get_experiment_by_name("recsys-monitoring").experiment_id])
    assert runs and runs[0].data.tags["decision"] == "retrain"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "check")} == {
        "check/drift-report.html",
        "check/decision.json",
    }


@pytest.mark.timeout(1800)
def test_monitor_prints_its_decision_when_retraining_cannot_or_does_not_run(tmp_path, monkeypatch):
    """Requests from never-seen users drift, but the feedback store is empty: retraining would
    read the same data again, so the decision is an alert and nothing is trained. With new
    events and a retraining that then fails, the decision is still printed, exit code 3."""
    home = tmp_path / "home"
    train, heldout, _ = _champion(home, monkeypatch)
    from components.feedback.feedback_store import FeedbackStore

    with FeedbackStore(f"sqlite:///{home / 'feedback.db'}"):
        pass  # an empty store, as `recsys events serve` leaves it before any event
    server, url = _serve(home, tmp_path / "serve.log")
    try:
        _ask(url, [f"never-seen-{i}" for i in range(300)])
    finally:
        server.send_signal(signal.SIGTERM)  # flushes the request log
        server.wait(60)

    result = _recsys("monitor", "--json", home=home)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout)
    assert out["decision"] == "alert"
    assert out["reasons"][0].startswith("drift: ") and "requests.user_activity" in out["reasons"][0]
    assert out["no_retrain_reason"].startswith("no new data to retrain on")
    assert out["window"]["new_interactions"] == 0 and out["retraining"] is None
    assert "ingest" not in result.stderr  # the training pipeline did not start
    # Each step by its display name, not the compiler's task key (monitoring-summary-op-2).
    steps = [line.split()[0] for line in result.stderr.splitlines() if line.endswith("  done")]
    assert steps == ["drift-check", "summary"], result.stderr

    # New rating events (a fifth of the training size: a reason of their own), and a source
    # that has gone away since the champion was trained: the retraining fails at its first step.
    now = time.time()
    events = tmp_path / "events.jsonl"
    rows = heldout.head(len(train) // 5)
    events.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": f"e{i}",
                    "type": "rating",
                    "user_id": str(r.user_id),
                    "item_id": str(r.item_id),
                    "value": float(r.rating),
                    "timestamp": now - 60 + i * 0.01,
                }
            )
            + "\n"
            for i, r in enumerate(rows.itertuples())
        )
    )
    source = json.loads((home / "training_source.json").read_text())
    source["data"] = str(tmp_path / "moved-away.csv")
    (home / "training_source.json").write_text(json.dumps(source))
    result = _recsys("monitor", "--json", "--feedback", str(events), home=home)
    assert result.returncode == 3, result.stderr[-4000:]
    out = json.loads(result.stdout)
    assert out["decision"] == "retrain" and out["no_retrain_reason"] is None
    assert any(r.startswith("new data: ") for r in out["reasons"])
    assert out["retraining"] is None and Path(out["report"]).is_file()
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("recsys monitor: error: the retraining failed: ")
    assert "moved-away.csv" in last

    help_text = _recsys("monitor", "--help", home=home).stdout
    assert "exit codes:" in help_text and "the retraining failed" in help_text
