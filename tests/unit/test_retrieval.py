"""Candidate retrieval for large catalogues gives what the dense path computes: the same top-N,
the same unseen-item moments, the same ranker features; and the large path trains, saves,
loads and serves end to end."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from components.models.base import build_training_data
from components.models.features import ItemStats, build_candidates, build_candidates_from_retrieval
from components.models.retrieval import FactorIndex, retrieve_sparse


def _history(rng, batch, n_items, density=0.05):
    history = sp.random(batch, n_items, density=density, format="csr", random_state=rng, dtype=np.float32)
    history.data[:] = 1.0
    return history


def _dense_top(scores, history, n):
    masked = np.where(history.toarray() > 0, -np.inf, scores)
    return np.argsort(-masked, axis=1, kind="stable")[:, :n], masked


def test_factor_search_is_exact_top_n_and_moments():
    rng = np.random.default_rng(0)
    items, users = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    history = _history(rng, 20, 300)
    found = FactorIndex(items).retrieve(users, history, 15)
    top, masked = _dense_top(users @ items.T, history, 15)
    np.testing.assert_array_equal(found.items, top)
    unseen = np.isfinite(masked)
    mean = np.array([masked[r][unseen[r]].mean() for r in range(20)])
    std = np.array([masked[r][unseen[r]].std() for r in range(20)])
    np.testing.assert_allclose(found.mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(found.std, std, rtol=1e-4)


def test_sparse_scores_retrieval_matches_dense():
    rng = np.random.default_rng(1)
    weights = sp.random(200, 200, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    history = _history(rng, 30, 200)
    scores = history @ weights
    found = retrieve_sparse(scores, history, 10)
    dense = scores.toarray()
    top, masked = _dense_top(dense, history, 10)
    positive = np.take_along_axis(masked, top, axis=1) > 0  # stored scores here are all positive
    np.testing.assert_array_equal(np.where(positive, found.items, -1), np.where(positive, top, -1))
    unseen = np.isfinite(masked)
    np.testing.assert_allclose(found.mean, [masked[r][unseen[r]].mean() for r in range(30)], atol=1e-6)


class _Linear:
    """A factor model seen two ways: dense scores and retrieval."""

    def __init__(self, items, users):
        self.items, self.users = items, users

    def score(self, rows, history):
        return self.users[rows] @ self.items.T

    def retrieve(self, rows, history, n):
        return FactorIndex(self.items).retrieve(self.users[rows], history, n)


def test_features_from_retrieval_equal_the_dense_features(small_dataset):
    data = build_training_data(small_dataset.interactions, small_dataset.items)
    stats = ItemStats.from_training(data)
    rng = np.random.default_rng(2)
    gens = {name: _Linear(rng.normal(size=(data.n_items, 6)).astype(np.float32),
                          rng.normal(size=(data.n_users, 6)).astype(np.float32)) for name in ("a", "b")}
    rows = np.arange(40)
    history = data.matrix[rows]
    user_time = data.user_times()[rows]
    dense = build_candidates({n: g.score(rows, history) for n, g in gens.items()}, history, stats, 20, user_time)
    found = {n: g.retrieve(rows, history, 20) for n, g in gens.items()}
    sparse = build_candidates_from_retrieval(found, history, stats, user_time)
    np.testing.assert_array_equal(sparse.rows, dense.rows)
    np.testing.assert_array_equal(sparse.items, dense.items)
    np.testing.assert_allclose(sparse.features, dense.features, rtol=2e-3, atol=2e-3)


def test_large_path_trains_saves_loads_and_serves(small_dataset, tmp_path):
    from components.config import ModelConfig, ScaleConfig
    from components.models.artifact import load_model, save_model
    from components.models.two_stage import TwoStageRecommender

    config = ModelConfig(scale=ScaleConfig(large_catalogue_items=50, item_item_items=120, neighbours=30))
    model = TwoStageRecommender(config).fit(small_dataset.interactions, small_dataset.items, progress=lambda _: None)
    assert model.large_ and sp.issparse(model.generators_["ease"].weights_)
    assert model.generators_["ease"].weights_.getnnz(axis=1).max() <= 30
    loaded = load_model(save_model(model, tmp_path / "m", data_fingerprint="x"))
    users = list(small_dataset.interactions["user_id"].unique()[:50]) + ["nobody"]
    recs = loaded.recommend(users, 10, history_item_ids=[[]] * 50 + [[str(loaded.data_.item_ids[0])]])
    assert recs.item_ids.shape == (51, 10) and (recs.item_ids != "").all()
    assert recs.cold_start[-1] and not recs.cold_start[:-1].any()
    for row, user in enumerate(users[:-1]):  # training items are never recommended
        seen = set(small_dataset.interactions.loc[small_dataset.interactions["user_id"] == user, "item_id"])
        assert not seen & set(recs.item_ids[row])
    np.testing.assert_array_equal(recs.item_ids, model.recommend(users, 10, history_item_ids=[[]] * 50 + [[str(loaded.data_.item_ids[0])]]).item_ids)


def test_large_path_exclusions_are_not_history(small_dataset):
    """Excluded items are never shown, and do not count as what the user liked: a generator's
    answer with exclusions is its answer without them, less the excluded items."""
    from components.config import ModelConfig, ScaleConfig
    from components.models.two_stage import TwoStageRecommender

    config = ModelConfig(scale=ScaleConfig(large_catalogue_items=50, item_item_items=120, neighbours=30))
    model = TwoStageRecommender(config).fit(small_dataset.interactions, small_dataset.items, progress=lambda _: None)
    users = np.arange(20)
    history = model.data_.matrix[users]
    for name in ("ease", "als"):
        plain, _ = model.recommend_indices(users, history, 10, generator=name)
        exclude = sp.csr_matrix((np.ones(20, np.float32), (users, plain[:, 0])), shape=history.shape)
        shown, _ = model.recommend_indices(users, history, 10, exclude=exclude, generator=name)
        np.testing.assert_array_equal(shown[:, :9], plain[:, 1:])
