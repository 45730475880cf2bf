"""The MLflow champion-challenger gate on a real MLflow store (SQLite + local artifacts)."""
from __future__ import annotations

import os

import pytest

from components.config import GateConfig, RegistryConfig
from components.registry import CHALLENGER, CHAMPION, current_champion, register_model


@pytest.fixture()
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _register(model_dir, store, ndcg, recall, champion=None):
    results = {"two_stage": {"ndcg@10": ndcg, "recall@10": recall, "coverage@10": 0.3}}
    if champion is not None:
        results["champion"] = {"ndcg@10": champion[0], "recall@10": champion[1], "coverage@10": 0.3}
    return register_model(
        model_dir,
        results=results,
        params={"model.ease.l2": 400},
        data_fingerprint="abc",
        gate_config=GateConfig(min_relative_gain=0.01, guardrails={"recall@10": 0.02}),
        registry=RegistryConfig(model_name="recsys-test", experiment="test"),
        tracking_uri=store,
    )


def test_first_model_becomes_champion_then_gate_decides(store, small_model_dir):
    from mlflow import MlflowClient

    first = _register(small_model_dir, store, 0.30, 0.20)
    assert first.alias == CHAMPION and first.version == "1"
    assert current_champion(store, "recsys-test")[0] == "1"

    worse = _register(small_model_dir, store, 0.29, 0.20, champion=(0.30, 0.20))
    assert worse.alias is None and "0.29" in worse.reason
    slightly_better = _register(small_model_dir, store, 0.302, 0.20, champion=(0.30, 0.20))
    assert slightly_better.alias is None  # below the 1% margin
    regresses = _register(small_model_dir, store, 0.40, 0.15, champion=(0.30, 0.20))
    assert regresses.alias is None and "recall@10" in regresses.reason
    better = _register(small_model_dir, store, 0.33, 0.20, champion=(0.30, 0.20))
    assert better.alias == CHALLENGER

    client = MlflowClient(tracking_uri=store)
    assert str(client.get_model_version_by_alias("recsys-test", CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias("recsys-test", CHALLENGER).version) == better.version
    refused = client.get_model_version("recsys-test", worse.version)
    assert refused.tags["gate"] == "refused"
    run = client.get_run(better.run_id)
    assert run.data.metrics["ndcg_at_10"] == pytest.approx(0.33)
    assert run.data.metrics["champion.ndcg_at_10"] == pytest.approx(0.30)
    assert run.data.tags["data_fingerprint"] == "abc"


def test_a_champion_must_be_evaluated_before_the_gate(store, small_model_dir):
    """No champion metrics (e.g. this code cannot load the champion): kept, but no alias."""
    from mlflow import MlflowClient

    _register(small_model_dir, store, 0.30, 0.20)
    unchecked = _register(small_model_dir, store, 0.35, 0.20)
    assert unchecked.alias is None and "not evaluated" in unchecked.reason
    client = MlflowClient(tracking_uri=store)
    assert client.get_model_version("recsys-test", unchecked.version).tags["gate"] == "refused"
    assert str(client.get_model_version_by_alias("recsys-test", CHAMPION).version) == "1"


def test_registered_artifact_loads_back(store, small_model_dir, tmp_path):
    from components.artifact import load_model
    from components.registry import download_model

    _register(small_model_dir, store, 0.30, 0.20)
    _version, source = current_champion(store, "recsys-test")
    model = load_model(download_model(store, source, tmp_path / "dl"))
    assert model.recommend(["u1"], 3).item_ids.shape == (1, 3)


def test_the_server_fetches_a_model_by_registry_uri(store, small_model_dir, monkeypatch, tmp_path):
    """`python -m serving --model-dir models:/NAME@champion` downloads what the alias points to."""
    import subprocess
    import sys

    from components.artifact import load_model
    from components.errors import RecsysError
    from serving.predictor import find_artifact
    from serving.server import fetch_model, is_remote

    _register(small_model_dir, store, 0.30, 0.20)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    uri = "models:/recsys-test@champion"
    assert is_remote(uri) and not is_remote(str(small_model_dir))
    model = load_model(find_artifact(fetch_model(uri, tmp_path / "fetched")))
    assert model.data_.n_items == load_model(small_model_dir).data_.n_items
    with pytest.raises(RecsysError, match="models:/recsys-test@nobody: cannot download"):
        fetch_model("models:/recsys-test@nobody", tmp_path / "none")
    failed = subprocess.run(
        [sys.executable, "-m", "serving", "--model-dir", "models:/no-such-model@champion"],
        capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("serving: error: --model-dir models:/no-such-model")


def test_a_champion_this_code_cannot_load_is_left_out_not_fatal(
    store, small_model_dir, older_model_dir, small_dataset, tmp_path, caplog
):
    """A champion from a version with other ranker features: evaluation goes on without it and
    says why; the gate then gives the new model no alias."""
    import logging

    from components.steps import evaluate

    assert _register(older_model_dir, store, 0.30, 0.20).alias == CHAMPION
    test_in = tmp_path / "test.parquet"
    small_dataset.interactions.sample(400, random_state=0).to_parquet(test_in)
    with caplog.at_level(logging.WARNING):
        results = evaluate(
            str(small_model_dir), str(test_in), str(tmp_path / "results.json"), str(tmp_path / "report.html"),
            config_yaml="registry: {model_name: recsys-test}", tracking_uri=store,
        )
    assert "champion" not in results and "two_stage" in results
    assert "champion (version 1) cannot be evaluated" in caplog.text and "item_log_popularity" in caplog.text
    unchecked = _register(small_model_dir, store, 0.35, 0.20)
    assert unchecked.alias is None and "not evaluated" in unchecked.reason


def test_using_a_store_leaves_the_process_default_alone(store, small_model_dir, tmp_path, monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ; the registry must not,
    or a later default_tracking_uri(home) in the same process would follow this store."""
    from components.registry import default_tracking_uri, download_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _register(small_model_dir, store, 0.30, 0.20)
    _version, source = current_champion(store, "recsys-test")
    download_model(store, source, tmp_path / "dl")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert default_tracking_uri(tmp_path / "home") == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
