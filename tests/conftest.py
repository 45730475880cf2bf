"""Shared fixtures: real data and real, freshly trained (small) models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ml100k_path() -> Path:
    """MovieLens 100K lives beside the repository (`../shared/data/ml-100k`) or at $RECSYS_ML100K."""
    return Path(os.environ.get("RECSYS_ML100K", REPO.parent / "shared" / "data" / "ml-100k"))


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = ml100k_path()
    if not (path / "u.data").exists():
        # The data is not in the repository (its licence forbids redistribution) and cannot be
        # downloaded at test time; the same behaviour is checked on the built-in default data.
        pytest.skip(f"MovieLens 100K not found at {path} (set RECSYS_ML100K)")
    return path


@pytest.fixture(scope="session")
def small_dataset():
    """A synthetic dataset with titles and genres: seconds to train on, real structure."""
    from components.data import load_dataset

    return load_dataset(
        "synthetic", synthetic_users=300, synthetic_items=200, synthetic_interactions=8_000, seed=7
    )


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory, small_dataset) -> Path:
    """A two-stage model trained on `small_dataset` and saved as an artifact directory."""
    from components.artifact import save_model
    from components.models.two_stage import TwoStageRecommender

    model = TwoStageRecommender().fit(
        small_dataset.interactions, small_dataset.items, progress=lambda _: None
    )
    return save_model(
        model, tmp_path_factory.mktemp("model") / "artifact", data_fingerprint=small_dataset.fingerprint
    )


@pytest.fixture()
def older_model_dir(tmp_path, small_model_dir) -> Path:
    """`small_model_dir` as a version whose ranker learned on a feature this code no longer
    computes (`item_log_popularity`): consistent checksums, only older."""
    import json
    import shutil

    from components.artifact import _sha256

    older = tmp_path / "older-model"
    shutil.copytree(small_model_dir, older)
    ranker = older / "ranker.txt"
    ranker.write_text(ranker.read_text().replace("item_log_share", "item_log_popularity"))
    manifest = json.loads((older / "manifest.json").read_text())
    manifest["files"]["ranker.txt"] = _sha256(ranker)
    (older / "manifest.json").write_text(json.dumps(manifest))
    return older
