"""Generators with nothing to learn from are left out of the fit, the others train.

A catalogue without an items file gives the content model no text: it is left out (one warning),
the fit says which generators it used, and both paths serve: the exact one and the retrieval
one above `model.scale.large_catalogue_items` (shrunk here so the data stays small), in one
process and on Dask workers. With an items file the content model trains on both paths."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import AlsConfig, ModelConfig, RankerConfig, ScaleConfig, SplitConfig
from components.models.artifact import load_model, save_model
from components.models.two_stage import TwoStageRecommender

REPO = Path(__file__).resolve().parents[2]
N_USERS, N_ITEMS, N_INTERACTIONS = 300, 1_500, 6_000
# Few trees and folds: the test is about which generators train, not about the ranker.
RANKER = RankerConfig(folds=2, n_estimators=10, min_child_samples=5)
ALS = AlsConfig(factors=8, iterations=3)
LARGE = ScaleConfig(large_catalogue_items=1_000, item_item_items=300, neighbours=20, content_dimensions=8)
EXACT = ScaleConfig()  # 1,500 items: below the default threshold


@pytest.fixture(scope="module")
def catalogue() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random interactions with ratings and no timestamps, as in the report, and an items file."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "user_id": rng.integers(0, N_USERS, N_INTERACTIONS).astype(str),
        # A skewed item draw: some items are popular, as in real data.
        "item_id": np.minimum(rng.zipf(1.3, N_INTERACTIONS), N_ITEMS).astype(str),
        "rating": rng.integers(1, 6, N_INTERACTIONS).astype(float),
    }).drop_duplicates(["user_id", "item_id"], ignore_index=True)
    frame["item_id"] = np.where(rng.random(len(frame)) < 0.5, frame["item_id"],
                                rng.integers(1, N_ITEMS + 1, len(frame)).astype(str))
    frame = frame.drop_duplicates(["user_id", "item_id"], ignore_index=True)
    ids = np.arange(1, N_ITEMS + 1).astype(str)
    genres = np.array(["Drama", "Comedy", "Action|Thriller", "Horror", "Documentary"])
    items = pd.DataFrame({"item_id": ids, "title": [f"Item {i} of the catalogue" for i in ids],
                          "genres": genres[np.arange(N_ITEMS) % len(genres)]})
    return frame, items


def _fit(interactions, items, scale, client=None, said=None):
    config = ModelConfig(ranker=RANKER, als=ALS, scale=scale)
    model = TwoStageRecommender(config, SplitConfig(method="stratified"))
    return model.fit(interactions, items, progress=(said if said is not None else []).append, client=client)


def _serves(model, interactions, tmp_path):
    users = list(interactions["user_id"].unique()[:20]) + ["nobody"]
    loaded = load_model(save_model(model, tmp_path / "m", data_fingerprint="x"))
    recs = loaded.recommend(users, 10)
    assert recs.item_ids.shape == (21, 10) and (recs.item_ids != "").all()
    np.testing.assert_array_equal(recs.item_ids, model.recommend(users, 10).item_ids)
    return json.loads((tmp_path / "m" / "manifest.json").read_text())


@pytest.mark.parametrize("scale", [EXACT, LARGE], ids=["exact", "retrieval"])
def test_without_items_content_is_left_out_and_the_rest_train(catalogue, scale, tmp_path, caplog):
    interactions, _ = catalogue
    said: list[str] = []
    with caplog.at_level(logging.WARNING, logger="components.models.two_stage"):
        model = _fit(interactions, None, scale, said=said)
    assert model.large_ == (scale is LARGE)
    assert list(model.generators_) == ["popularity", "ease", "seq_ease", "als"]
    assert model.ranker_ is None or "content_z" not in model.ranker_.feature_name()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("content generator left out: no item has")
    assert said[-1] == ("generators: popularity, ease, seq_ease (no timestamps: plain co-occurrence), "
                        "als; left out: content")
    manifest = _serves(model, interactions, tmp_path)
    assert manifest["generators"] == ["popularity", "ease", "seq_ease", "als"]
    assert list(manifest["generators_left_out"]) == ["content"]


@pytest.mark.parametrize("scale", [EXACT, LARGE], ids=["exact", "retrieval"])
def test_with_items_every_generator_trains(catalogue, scale, tmp_path):
    interactions, items = catalogue
    said: list[str] = []
    model = _fit(interactions, items, scale, said=said)
    assert list(model.generators_) == ["popularity", "ease", "seq_ease", "als", "content"]
    assert model.left_out_ == {} and "left out" not in said[-1]
    # The genre-only vocabulary is smaller than the LSA space: it is searched as it is.
    if scale is LARGE:
        assert model.generators_["content"].item_embeddings_.shape[0] == model.data_.n_items
    assert _serves(model, interactions, tmp_path)["generators_left_out"] == {}


def test_on_dask_workers_content_is_left_out_too(catalogue, tmp_path):
    from components.models.distributed import dask_client

    interactions, _ = catalogue
    with dask_client(2) as client:
        model = _fit(interactions, None, LARGE, client=client)
    assert list(model.generators_) == ["popularity", "ease", "seq_ease", "als"]
    _serves(model, interactions, tmp_path)


def test_recsys_fit_without_items_on_the_retrieval_path(catalogue, tmp_path):
    """The report's command: `recsys fit` of a large catalogue without items, stratified split."""
    interactions, _ = catalogue
    interactions.to_csv(tmp_path / "big.csv", index=False)
    (tmp_path / "strat.yaml").write_text(
        "split: {method: stratified}\n"
        "model:\n"
        "  scale: {large_catalogue_items: 1000, item_item_items: 300, neighbours: 20}\n"
        "  ranker: {folds: 2, n_estimators: 10, min_child_samples: 5}\n"
        "  als: {factors: 8, iterations: 3}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "fit", "--interactions", tmp_path / "big.csv",
         "--config", tmp_path / "strat.yaml", "--output", tmp_path / "m"],
        check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "WARNING content generator left out: no item has" in result.stderr
    assert "generators: popularity, ease, seq_ease (no timestamps: plain co-occurrence), als; left out: content" in result.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["generators_left_out"].keys() == {"content"}


def test_without_items_diversity_is_not_reported(catalogue):
    """No item text: no diversity for any model (it read 1.0000 for every one), and the
    metrics table has no such column; with items it is reported."""
    from components.data.split import split_interactions
    from components.evaluation.offline_eval import evaluate_model
    from components.evaluation.report import metrics_table

    interactions, items = catalogue
    parts = split_interactions(interactions, SplitConfig(method="stratified"))
    bare = evaluate_model(_fit(parts.train, None, EXACT), parts.test, k_values=(10,))
    assert set(bare) == {"two_stage", "popularity", "ease", "seq_ease", "als"}
    assert not [m for values in bare.values() for m in values if m.startswith("diversity")]
    assert "diversity" not in metrics_table(bare) and "ndcg@10" in metrics_table(bare)
    described = evaluate_model(_fit(parts.train, items, EXACT), parts.test, k_values=(10,))
    assert all(0.0 <= values["diversity@10"] <= 1.0 for values in described.values())


def test_the_registered_run_records_the_generators(catalogue, tmp_path):
    """The register step logs which generators the fit used and left out as MLflow params."""
    from mlflow import MlflowClient

    from components.steps import register

    interactions, _ = catalogue
    model_dir = save_model(_fit(interactions, None, EXACT), tmp_path / "m", data_fingerprint="x")
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"two_stage": {"ndcg@10": 0.1}, "popularity": {"ndcg@10": 0.05}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registration = register(str(model_dir), str(results), tracking_uri=uri)
    params = MlflowClient(tracking_uri=uri).get_run(registration["run_id"]).data.params
    assert params["generators"] == "popularity,ease,seq_ease,als"
    assert params["generators_left_out"] == "content"
