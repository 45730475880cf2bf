"""The KFP pipeline: the committed IR YAML is in sync with the code and carries images,
resources and retries; and the pipeline runs end to end on this machine with the KFP local
runner (SubprocessRunner), MLflow on SQLite and the local deploy target."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.pipeline import COMPILED_PATH, compile_pipeline

SMALL = ["--data", "synthetic", "--synthetic-users", "200", "--synthetic-items", "120",
         "--synthetic-interactions", "5000"]


def test_committed_pipeline_is_in_sync_with_the_code(tmp_path):
    fresh = compile_pipeline(tmp_path / "p.yaml")
    assert fresh.read_text() == COMPILED_PATH.read_text(), "run `make compile` and commit the result"


def test_compiled_pipeline_sets_image_resources_retries_and_caching(tmp_path):
    # The second YAML document is the Kubernetes platform spec (the data-source Secret).
    spec, platform = yaml.safe_load_all(
        compile_pipeline(tmp_path / "p.yaml", image="registry.example/recsys:9").read_text()
    )
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 9
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "registry.example/recsys:9"
        resources = container["resources"]
        assert {"resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(resources)
        # install_kfp_package=False: the image brings kfp, nothing is pip-installed at run time.
        assert "pip install" not in " ".join(container["command"])
    tasks = spec["root"]["dag"]["tasks"]
    # Only the steps that call a service are retried; a retry of bad data only delays its error.
    for step in ("evaluate-op", "deploy-op"):
        assert tasks[step]["retryPolicy"]["maxRetryCount"] == 1, step
    for step in ("fingerprint-op", "ingest-op", "validate-op", "split-op", "tune-op", "train-op",
                 "register-op"):
        assert "retryPolicy" not in tasks[step], step
    # Kubeflow caches by parameter values and artifact identity: the uncached fingerprint step
    # feeds a content hash to ingest, so the cached chain below it follows the data.
    for step in ("ingest-op", "validate-op", "split-op", "tune-op", "train-op"):
        assert tasks[step]["cachingOptions"].get("enableCache") is True, step
    for step in ("fingerprint-op", "evaluate-op", "register-op", "deploy-op"):
        assert not tasks[step]["cachingOptions"].get("enableCache"), step
    ingest_inputs = tasks["ingest-op"]["inputs"]["parameters"]
    assert ingest_inputs["source_fingerprint"]["taskOutputParameter"]["producerTask"] == "fingerprint-op"
    # The two steps that touch the data get the data-source Secret (optional, named by a
    # parameter) as environment variables; no other step sees it.
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {"exec-fingerprint-op", "exec-ingest-op", "exec-tune-op"}
    # The tune step gets only its study database's password (for a PostgreSQL study).
    (tune_secret,) = executors.pop("exec-tune-op")["secretAsEnv"]
    assert tune_secret["optional"] is True
    assert tune_secret["secretNameParameter"] == {"componentInputParameter": "tune_secret"}
    assert tune_secret["keyToEnv"] == [{"secretKey": "TUNE_DB_PASSWORD", "envVar": "PGPASSWORD"}]
    for executor in executors.values():
        (secret,) = executor["secretAsEnv"]
        assert secret["optional"] is True
        assert secret["secretNameParameter"] == {"componentInputParameter": "data_secret"}
        envs = {pair["envVar"] for pair in secret["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "PGPASSWORD"} <= envs


def _recsys(*args: str, home: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECSYS_HOME": str(home), **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", *args], capture_output=True, text=True, env=env, timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    result = _recsys("run", *SMALL, "--home", str(home), home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    return home, result


def test_local_run_trains_registers_and_deploys(first_run):
    home, result = first_run
    out = result.stdout
    assert "two_stage" in out and "popularity" in out and "ndcg@10" in out
    assert "version 1: alias champion" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert f"recsys console --home {home.resolve()}" in out.splitlines()[-1]
    report = Path(out.split("HTML report: ")[1].split()[0])
    assert report.exists() and "<html" in report.read_text().lower()
    record = json.loads((home / "deployment.json").read_text())
    assert record["version"] == "1" and Path(record["model_dir"], "manifest.json").exists()


def test_local_run_prints_one_line_per_step_and_keeps_the_rest_in_a_log(first_run):
    home, result = first_run
    steps = [line.split()[0] for line in result.stderr.splitlines() if line.endswith("  done")]
    assert steps == ["fingerprint", "ingest", "validate", "split", "tune", "train", "evaluate",
                     "register", "deploy"], result.stderr
    assert len(result.stdout.splitlines()) + len(result.stderr.splitlines()) < 40
    assert "Executing task" not in result.stdout + result.stderr
    (log,) = (home / "logs").glob("run-*.log")
    assert f"full log: {log}" in result.stderr
    assert log.read_text().count("Executing task") == 9
    assert "tune_trials 0: training with the given config" in log.read_text()


def test_second_run_meets_the_gate(first_run):
    home, _ = first_run
    result = _recsys("run", *SMALL, "--home", str(home), home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "version 2:" in result.stdout
    # Same data, same seed: the same model cannot beat the champion by the margin.
    assert "alias none (gate refused)" in result.stdout
    assert json.loads((home / "deployment.json").read_text())["version"] == "1"


def test_bad_data_stops_the_run_and_registers_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,rating\n1,10,4\n1,11,five\n")
    result = _recsys("run", "--data", str(bad), "--home", str(tmp_path / "home"), home=tmp_path / "home")
    assert result.returncode != 0
    *_, step, last = result.stderr.strip().splitlines()
    assert step.split()[0] == "validate" and step.endswith("FAILED"), result.stderr[-2000:]
    assert last.startswith("recsys run: error: ") and "bad.csv" in last and "'rating'" in last
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    assert client.search_registered_models() == []


def test_unreadable_data_fails_once_with_its_cause_last(tmp_path):
    """A directory of random bytes in MovieLens layout: ingest fails on its first try (no retry
    of a deterministic error) and the cause is the last line of stderr, not a generic
    "task failed" with the reason buried in the output."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "u.data").write_bytes(os.urandom(20_000))
    home = tmp_path / "home"
    result = _recsys("run", "--data", str(data), "--home", str(home), home=home)
    assert result.returncode == 1
    *_, step, last = result.stderr.strip().splitlines()
    assert step.split()[0] == "ingest" and step.endswith("FAILED"), result.stderr
    assert last.startswith("recsys run: error: ") and "u.data" in last, result.stderr
    assert "Traceback" not in result.stderr
    (log,) = (home / "logs").glob("run-*.log")
    assert log.read_text().count("Executing task 'ingest-op'") == 1 and "Retrying" not in log.read_text()


def test_serve_without_a_model_dir_finds_what_the_run_deployed(first_run, tmp_path):
    """`recsys serve` with no --model-dir: the deployment record, else the registry's champion."""
    import shutil

    from components.models.artifact import load_model
    from components.release.deploy import RECORD, resolve_served_model

    home, _ = first_run
    served = resolve_served_model(home)
    assert served == Path(json.loads((home / RECORD).read_text())["model_dir"])
    assert load_model(served).model_version
    # Another home with the same registry but no record: the champion is downloaded into it
    # (the store's artifacts stay where the run wrote them).
    copy = tmp_path / "home"
    copy.mkdir()
    shutil.copy(home / "mlflow.db", copy / "mlflow.db")
    fetched = resolve_served_model(copy)
    assert fetched.is_relative_to(copy) and (copy / RECORD).exists()
    assert load_model(fetched).model_version == load_model(served).model_version
