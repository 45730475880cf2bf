"""The model artifact: a round trip gives the same answers; a damaged one fails loudly."""
from __future__ import annotations

import json
import shutil

import pytest

from components.errors import ArtifactError
from components.models.artifact import load_model, read_manifest


def test_round_trip_answers_the_same(small_model_dir, small_dataset):
    from components.models.two_stage import TwoStageRecommender

    loaded = load_model(small_model_dir)
    manifest = read_manifest(small_model_dir)
    assert manifest["data_fingerprint"] == small_dataset.fingerprint
    assert loaded.model_version == manifest["model_version"]
    fresh = TwoStageRecommender().fit(small_dataset.interactions, small_dataset.items, progress=lambda _: None)
    users = ["u1", "u2", "stranger"]
    assert (loaded.recommend(users, 10).item_ids == fresh.recommend(users, 10).item_ids).all()


def test_no_pickles_in_the_artifact(small_model_dir):
    suffixes = {p.suffix for p in small_model_dir.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".parquet", ".npz", ".npy", ".txt"}


@pytest.mark.parametrize("damage", ["corrupt", "missing", "manifest", "version"])
def test_damaged_artifact_is_refused(tmp_path, small_model_dir, damage):
    copy = tmp_path / "model"
    shutil.copytree(small_model_dir, copy)
    if damage == "corrupt":
        path = copy / "generators" / "ease" / "weights.npy"
        path.write_bytes(path.read_bytes()[:-8] + b"\x00" * 8)
        expected = "corrupt"
    elif damage == "missing":
        (copy / "ranker.txt").unlink()
        expected = "missing file ranker.txt"
    elif damage == "manifest":
        (copy / "manifest.json").unlink()
        expected = "not a model artifact"
    else:
        manifest = json.loads((copy / "manifest.json").read_text())
        manifest["format_version"] = 99
        (copy / "manifest.json").write_text(json.dumps(manifest))
        expected = "not supported"
    with pytest.raises(ArtifactError, match=expected):
        load_model(copy)


def test_ranker_trained_on_other_features_is_refused(older_model_dir):
    """An artifact from a version that computed other ranker features must not serve silently."""
    with pytest.raises(ArtifactError, match="item_log_popularity, item_log_share.*retrain"):
        load_model(older_model_dir)
