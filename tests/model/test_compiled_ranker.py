"""The compiled ranker scores exactly what LightGBM scores, and LightGBM serves when it cannot.

`TwoStageRecommender.compile_ranker` swaps LightGBM's `predict` for the same trees compiled by
lleaves: the raw scores must be bit-identical (np.array_equal on float64) on every user's
candidate rows and on rows made to sit on the trees' thresholds, so the answers (items and
scores) are those of LightGBM for every user. Where compilation is refused or fails, the model
keeps LightGBM and says why.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from histories import grown_histories

from components.models import compiled_ranker
from components.models.artifact import load_model
from components.models.compiled_ranker import CompiledRanker, probe_rows


@pytest.fixture(scope="module")
def lightgbm_model(small_model_dir):
    model = load_model(small_model_dir)
    assert model.ranker_ is not None
    return model


@pytest.fixture(scope="module")
def compiled_model(small_model_dir, tmp_path_factory):
    model = load_model(small_model_dir)
    assert model.compile_ranker(tmp_path_factory.mktemp("compiled")) is None
    assert model.compiled_ranker_.ready
    return model


def candidate_rows(model) -> np.ndarray:
    """Every user's candidate rows, as trained and with a changed history."""
    rows = []
    for row, history in enumerate(grown_histories(model, range(model.data_.n_users), 3, seed=2)):
        for extra in (None, history):
            user, seen = model._history_of(row, extra)
            rows.append(model.one_user_candidates(user, seen)[1].features)
    return np.vstack(rows)


def test_raw_scores_are_lightgbms_bit_for_bit(lightgbm_model, compiled_model):
    booster = lightgbm_model.ranker_
    real = candidate_rows(lightgbm_model)
    probes = probe_rows(booster.model_to_string(), booster.num_feature(), seed=3)
    rng = np.random.default_rng(4)
    # Real rows with a few values replaced by NaN, zeros and values within the zero threshold.
    edited = real[rng.integers(0, len(real), 5000)].copy()
    cells = rng.integers(0, edited.shape[1], (len(edited), 3))
    specials = np.array([np.nan, 0.0, -0.0, 1e-38, -1e-40, compiled_ranker.ZERO_THRESHOLD], np.float32)
    for j in range(cells.shape[1]):
        edited[np.arange(len(edited)), cells[:, j]] = rng.choice(specials, len(edited))
    for rows in (real, probes, edited, real[:1], real[:0]):
        expected = booster.predict(rows, num_threads=1) if len(rows) else np.zeros(0)
        got = compiled_model.compiled_ranker_.predict(rows)
        assert got.dtype == np.float64
        assert np.array_equal(got, expected)
        if len(rows):
            assert np.array_equal(compiled_model.rank_scores(rows), expected)


@pytest.mark.parametrize("fresh", [0, 3])
def test_answers_are_lightgbms_for_every_user(lightgbm_model, compiled_model, fresh):
    data = lightgbm_model.data_
    everyone = range(data.n_users)
    histories = (grown_histories(lightgbm_model, everyone, fresh, seed=fresh) if fresh
                 else [None] * data.n_users)
    for user, history in zip(data.user_ids.tolist(), histories):
        extra = None if history is None else [history]
        want = lightgbm_model.recommend([user], 10, history_item_ids=extra)
        got = compiled_model.recommend([user], 10, history_item_ids=extra)
        np.testing.assert_array_equal(got.item_ids, want.item_ids, err_msg=user)
        assert np.array_equal(got.scores, want.scores), user
    users = data.user_ids[::3].tolist()
    batch = grown_histories(lightgbm_model, range(lightgbm_model.data_.n_users), 3, seed=7)[::3]
    want = lightgbm_model.recommend(users, 10, history_item_ids=batch)
    got = compiled_model.recommend(users, 10, history_item_ids=batch)
    np.testing.assert_array_equal(got.item_ids, want.item_ids)
    assert np.array_equal(got.scores, want.scores)


def test_a_restart_loads_the_cache_and_a_pickled_copy_stays_compiled(small_model_dir, tmp_path):
    first = load_model(small_model_dir)
    assert first.compile_ranker(tmp_path) is None
    assert not first.compiled_ranker_.cached and len(list(tmp_path.glob("ranker-*.o"))) == 1
    again = load_model(small_model_dir)
    assert again.compile_ranker(tmp_path) is None
    assert again.compiled_ranker_.cached
    copy = pickle.loads(pickle.dumps(again))
    assert copy.compiled_ranker_.ready
    rows = probe_rows(first.ranker_.model_to_string(), first.ranker_.num_feature())
    assert np.array_equal(copy.rank_scores(rows[:3000]), first.ranker_.predict(rows[:3000], num_threads=1))


def test_lightgbm_serves_when_compilation_fails(small_model_dir, tmp_path, monkeypatch, lightgbm_model):
    import lleaves

    def broken(self, *args, **kwargs):
        raise RuntimeError("no LLVM today")

    monkeypatch.setattr(lleaves.Model, "compile", broken)
    model = load_model(small_model_dir)
    reason = model.compile_ranker(tmp_path)
    assert reason is not None and "no LLVM today" in reason
    assert model.compiled_ranker_ is None
    user = str(model.data_.user_ids[0])
    want = lightgbm_model.recommend([user], 10)
    got = model.recommend([user], 10)
    np.testing.assert_array_equal(got.item_ids, want.item_ids)
    assert np.array_equal(got.scores, want.scores)


def test_scores_that_differ_from_lightgbms_are_refused(small_model_dir, tmp_path, monkeypatch):
    real_predict = CompiledRanker.predict
    monkeypatch.setattr(CompiledRanker, "predict", lambda self, x: np.nextafter(real_predict(self, x), np.inf))
    model = load_model(small_model_dir)
    reason = model.compile_ranker(tmp_path)
    assert reason is not None and "differ from LightGBM" in reason
    assert model.compiled_ranker_ is None


def test_categorical_and_linear_models_are_not_compiled():
    for line in ("num_cat=2", "is_linear=1"):
        with pytest.raises(compiled_ranker.CompileRefused):
            compiled_ranker._splits(f"tree\nTree=0\n{line}\n")


def test_the_predictor_compiles_unless_told_not_to(small_model_dir, tmp_path):
    from serving.predictor import RecommenderModel

    on = RecommenderModel("compiled-on", small_model_dir, compiled_ranker_cache=str(tmp_path))
    off = RecommenderModel("compiled-off", small_model_dir, compiled_ranker=False)
    assert on.load() and off.load()
    assert on._model.compiled_ranker_.ready and on._metrics.ranker_compiled._value.get() == 1
    assert off._model.compiled_ranker_ is None and off._metrics.ranker_compiled._value.get() == 0
    for model in (on, off):
        model.stop()
