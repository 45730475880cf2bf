"""The MLflow champion-challenger gate on a real MLflow store (SQLite + local artifacts)."""
from __future__ import annotations

import os

import pytest

from components.config import GateConfig, RegistryConfig
from components.release.registry import CHALLENGER, CHAMPION, current_champion, register_model


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
    from components.models.artifact import load_model
    from components.release.registry import download_model

    _register(small_model_dir, store, 0.30, 0.20)
    _version, source = current_champion(store, "recsys-test")
    model = load_model(download_model(store, source, tmp_path / "dl"))
    assert model.recommend(["u1"], 3).item_ids.shape == (1, 3)


def test_the_server_fetches_a_model_by_registry_uri(store, small_model_dir, monkeypatch, tmp_path):
    """`python -m serving --model-dir models:/NAME@champion` downloads what the alias points to."""
    import subprocess
    import sys

    from components.errors import RecsysError
    from components.models.artifact import load_model
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
    from components.release.registry import default_tracking_uri, download_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _register(small_model_dir, store, 0.30, 0.20)
    _version, source = current_champion(store, "recsys-test")
    download_model(store, source, tmp_path / "dl")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert default_tracking_uri(tmp_path / "home") == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"


# ------------------------------------------------------------------ data identity
def _identity(source, items):
    from components.data.data_identity import identity_of

    return identity_of(source, [f"i{n}" for n in items])


def _register_on(model_dir, store, identity, ndcg, champion=None):
    results = {"two_stage": {"ndcg@10": ndcg, "recall@10": 0.2, "coverage@10": 0.3}}
    if champion is not None:
        results["champion"] = {"ndcg@10": champion, "recall@10": 0.2, "coverage@10": 0.3}
    return register_model(
        model_dir, results=results, params={}, data_fingerprint=f"fp-{ndcg}",
        gate_config=GateConfig(min_relative_gain=0.01, guardrails={"recall@10": 0.02}),
        registry=RegistryConfig(model_name="recsys-test", experiment="test"),
        tracking_uri=store, data_identity=identity,
    )


def test_the_gate_refuses_to_compare_models_of_another_data_set(store, small_model_dir):
    """A champion trained on one source, then a model twenty times "better" trained on another
    source (or on the same path holding another catalogue): registered without an alias, the
    reason saying why in one line, the champion untouched. New rows of the same source (a
    catalogue grown by a quarter) are compared as usual, and the identity is on each version."""
    from mlflow import MlflowClient

    from components.data.data_identity import CATALOGUE_TAG, SOURCE_TAG, DataIdentity

    first = _register_on(small_model_dir, store, _identity("movielens-dslabs", range(400)), 0.01)
    assert first.alias == CHAMPION
    other = _register_on(small_model_dir, store, _identity("/data/ml100k.csv", range(400)), 0.25,
                         champion=0.012)
    assert other.alias is None
    assert "another source" in other.reason and "does not compare" in other.reason
    assert "--model-name" in other.reason and "\n" not in other.reason
    recatalogued = _register_on(small_model_dir, store,
                                _identity("movielens-dslabs", range(5_000, 5_400)), 0.25,
                                champion=0.012)
    assert recatalogued.alias is None and "another catalogue (0% of the items in common)" in \
        recatalogued.reason
    grown = _register_on(small_model_dir, store, _identity("movielens-dslabs", range(500)), 0.02,
                         champion=0.01)
    assert grown.alias == CHALLENGER, grown.reason

    client = MlflowClient(tracking_uri=store)
    assert str(client.get_model_version_by_alias("recsys-test", CHAMPION).version) == "1"
    tags = client.get_model_version("recsys-test", other.version).tags
    assert tags["gate"] == "refused" and tags[SOURCE_TAG] == "/data/ml100k.csv"
    recorded = DataIdentity.from_tags(tags)
    assert recorded.items == 400 and tags[CATALOGUE_TAG].startswith("400:")


def test_a_champion_registered_before_identities_is_compared_as_before(store, small_model_dir):
    """Versions from before the tags existed have no identity: the gate compares with them as
    it always did and says so; the new version records its identity for the next gate."""
    _register(small_model_dir, store, 0.30, 0.20)  # no identity, as older code registered
    better = _register_on(small_model_dir, store, _identity("movielens-dslabs", range(50)), 0.35,
                          champion=0.30)
    assert better.alias == CHALLENGER
    assert "records no data identity" in better.reason and "compared as before" in better.reason


def test_catalogue_overlap_is_exact_when_small_and_close_when_large():
    from components.data.data_identity import MIN_OVERLAP, SKETCH_SIZE, identity_of

    small_a, small_b = identity_of("s", range(100)), identity_of("s", range(50, 150))
    assert small_a.overlap(small_b) == pytest.approx(50 / 150)
    # 20,000 items each, 16,000 in common: Jaccard 16,000 / 24,000.
    large_a, large_b = identity_of("s", range(20_000)), identity_of("s", range(4_000, 24_000))
    assert len(large_a.sketch) == SKETCH_SIZE
    assert large_a.overlap(large_b) == pytest.approx(2 / 3, abs=0.1)
    assert large_a.same_data_set(large_b)
    assert not large_a.same_data_set(identity_of("s", range(15_000, 35_000)))
    assert identity_of("s", range(15_000, 35_000)).overlap(large_a) < MIN_OVERLAP


def _recsys_run(home, *args):
    import subprocess
    import sys

    env = {**os.environ, "RECSYS_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "pipelines.cli.main", "run", "--home", str(home), *args],
                          capture_output=True, text=True, env=env, timeout=900, check=False)


@pytest.fixture(scope="module")
def two_data_sets(tmp_path_factory):
    """A real run home: `recsys run` on the synthetic data, then on a CSV of another data set."""
    import numpy as np
    import pandas as pd

    tmp = tmp_path_factory.mktemp("two-data-sets")
    home = tmp / "home"
    first = _recsys_run(home, "--data", "synthetic", "--synthetic-users", "200",
                        "--synthetic-items", "120", "--synthetic-interactions", "5000")
    assert first.returncode == 0, first.stderr[-3000:]
    rng = np.random.default_rng(3)
    other = tmp / "other.csv"
    pd.DataFrame({"user_id": rng.integers(0, 150, 4_000), "item_id": rng.integers(1_000, 1_090, 4_000),
                  "rating": rng.integers(1, 6, 4_000),
                  "timestamp": 1_600_000_000 + rng.integers(0, 10_000_000, 4_000)}).drop_duplicates(
        ["user_id", "item_id"]).to_csv(other, index=False)
    second = _recsys_run(home, "--data", str(other))
    assert second.returncode == 0, second.stderr[-3000:]
    return home, other, first, second


def test_a_run_on_another_data_set_is_not_compared_and_does_not_deploy(two_data_sets):
    """`recsys run` twice in one home, on two data sets: the second is registered without an
    alias and without a comparison, in one line, and the deployment is unchanged; with
    `--model-name` it is registered under that name and becomes its own champion."""
    import json
    from pathlib import Path

    from mlflow import MlflowClient

    home, other, _, second = two_data_sets
    (line,) = [x for x in second.stdout.splitlines() if x.startswith("MLflow model")]
    assert "version 2: alias none (gate refused)" in line and "does not compare" in line, line
    assert "Deployed locally" not in second.stdout
    assert json.loads((home / "deployment.json").read_text())["version"] == "1"
    # Nor is the champion evaluated on the other data set's users: no champion row, and the
    # report says why.
    assert not [x for x in second.stdout.splitlines() if x.startswith("champion ")], second.stdout
    report = Path(second.stdout.split("HTML report: ")[1].split()[0]).read_text()
    assert "version 1, trained on another source: not compared" in report

    named = _recsys_run(home, "--data", str(other), "--model-name", "other-data")
    assert named.returncode == 0, named.stderr[-3000:]
    assert "MLflow model 'other-data' version 1: alias champion" in named.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == "1"
    tags = client.get_model_version("other-data", "1").tags
    assert tags["data_source"] == str(other.resolve())
    bad = _recsys_run(home, "--data", str(other), "--model-name", "a/b")
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(
        "recsys run: error: --model-name 'a/b'")


def test_the_models_page_links_the_report_of_a_real_run(two_data_sets):
    """The report `recsys run` printed is the one the Models page links and serves, for each
    version of the real run home."""
    import re
    from pathlib import Path

    from fastapi.testclient import TestClient

    from serving.console.app import create_app
    from serving.console.config import console_config
    from serving.console.state import build_console

    home, _, first, _ = two_data_sets
    printed = Path(first.stdout.split("HTML report: ")[1].split()[0]).read_text()
    closed = "http://127.0.0.1:9"
    config = console_config(home, predictor_url=closed, events_url=closed, timeout=1.0)
    with TestClient(create_app(build_console(config))) as client:
        page = client.get("/models").text
        assert "No report was logged" not in page
        assert set(re.findall(r'href="/models/(\d+)/report"', page)) >= {"1", "2"}
        report = client.get("/models/1/report")
    assert report.status_code == 200 and report.text == printed
