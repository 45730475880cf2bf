"""The MovieLens-25M-shaped generator and its quality-against-truth metric."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from components.data.synthetic import movielens_like, movielens_shape, truth_quality
from components.data.validate import validate_interactions


def _seen(inter, n_users, n_items):
    users = inter["user_id"].str[1:].astype(int).to_numpy()
    items = inter["item_id"].str[1:].astype(int).to_numpy()
    return sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))


def test_shape_is_movielens_25m_at_full_size_and_scales_below():
    assert movielens_shape(25_000_095) == (162_541, 62_423)
    users, items = movielens_shape(1_000_000)
    assert users == 6_502 and 12_000 < items < 13_000


def test_draws_the_requested_size_as_valid_distinct_interactions():
    inter, items, truth = movielens_like(60_000, seed=3)
    assert len(inter) == 60_000
    validate_interactions(inter, source="synthetic")  # ids, ratings, timestamps, no duplicates
    per_user = inter.groupby("user_id").size()
    assert per_user.min() >= 20 and per_user.max() > 5 * per_user.median()  # heavy tail
    per_item = inter.groupby("item_id").size().sort_values(ascending=False)
    assert per_item.iloc[0] > 10 * per_item.median()  # Zipf-like popularity
    assert set(inter["item_id"]) <= set(items["item_id"])
    assert truth.user_topics.shape[0] == inter["user_id"].nunique()
    assert items["genres"].str.len().min() > 0


def test_same_seed_same_data():
    a, _, _ = movielens_like(20_000, seed=5)
    b, _, _ = movielens_like(20_000, seed=5)
    assert a.equals(b)


def test_oracle_scores_one_and_the_truth_beats_popularity():
    inter, _, truth = movielens_like(40_000, seed=1)
    n_users, n_items = truth.user_topics.shape[0], truth.item_topics.shape[0]
    seen = _seen(inter, n_users, n_items)
    users = np.arange(n_users)
    pref = truth.preference(users)
    pref[seen.nonzero()] = -np.inf
    oracle = np.argsort(-pref, axis=1)[:, :10]
    assert truth_quality(oracle, users, seen, truth)["truth_ndcg@10"] > 0.999
    counts = np.asarray(seen.sum(axis=0)).ravel()
    popular = np.where(seen.toarray() > 0, -np.inf, counts[None, :])
    popular_top = np.argsort(-popular, axis=1, kind="stable")[:, :10]
    scored = truth_quality(popular_top, users, seen, truth)
    assert 0.0 < scored["truth_ndcg@10"] < 0.9
    assert scored["truth_overlap@10"] < truth_quality(oracle, users, seen, truth)["truth_overlap@10"]
