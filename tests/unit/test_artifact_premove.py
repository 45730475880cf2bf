"""A model saved before `components/` was split into stage packages still loads and answers.

The fixture (tests/fixtures/artifact_premove) was written by the code as it was before the
move (`save_model` of the flat layout, main at 10c58f6), on synthetic data (60 users, 40 items,
seed 3), with its answers for six users beside it. The artifact holds no pickles, so
no module path is stored in it; this test is the proof that loading does not depend on where the
modules live."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from components.models.artifact import load_model, read_manifest, verify_files

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "artifact_premove"


def test_artifact_saved_before_the_move_loads_and_answers_the_same(tmp_path):
    artifact = tmp_path / "artifact"
    shutil.copytree(FIXTURE / "artifact", artifact)
    expected = json.loads((FIXTURE / "answers.json").read_text())
    verify_files(artifact, read_manifest(artifact))
    model = load_model(artifact)
    answer = model.recommend(expected["users"], 5)
    assert answer.item_ids.tolist() == expected["item_ids"]
    np.testing.assert_allclose(answer.scores, np.array(expected["scores"]), rtol=0, atol=1e-5)


def test_artifact_format_names_no_module_path():
    """What would tie an artifact to the layout: a pickle, or a module path in its files."""
    files = [p for p in (FIXTURE / "artifact").rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} <= {".json", ".parquet", ".npz", ".npy", ".txt"}
    for path in files:
        assert b"components." not in path.read_bytes(), path
