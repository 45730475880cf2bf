"""EASE against its closed form written out naively, with and without dropout emphasis."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from components.errors import ConfigError
from components.models.base import build_training_data
from components.models.ease import EaseModel, SequenceEaseModel, sequence_gram


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 60, 900)
    items = rng.zipf(1.6, 900) % 40  # long-tailed, like real catalogues
    return build_training_data(pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str)}))


def _reference(x: np.ndarray, l2: float, dropout: float) -> np.ndarray:
    gram = x.T @ x
    penalty = l2 + dropout / (1 - dropout) * np.diag(gram)
    p = np.linalg.inv(gram + np.diag(penalty))
    b = np.eye(len(gram)) - p / np.diag(p)  # B = I - P diag(1/diag(P)): zero diagonal
    return x @ b


@pytest.mark.parametrize("l2, dropout", [(10.0, 0.0), (50.0, 0.0), (10.0, 0.5), (1.0, 0.8)])
def test_scores_match_the_closed_form(data, l2, dropout):
    x = data.matrix.toarray().astype(np.float64)
    model = EaseModel(l2, dropout=dropout).fit(data)
    scores = model.score(np.arange(data.n_users), data.matrix)
    np.testing.assert_allclose(scores, _reference(x, l2, dropout), rtol=2e-4, atol=2e-5)
    assert np.allclose(np.diag(model.weights_), 0.0)


def test_dropout_penalises_popular_items_more(data):
    plain = EaseModel(10.0).fit(data).weights_
    emphasised = EaseModel(10.0, dropout=0.5).fit(data).weights_
    counts = np.asarray(data.matrix.sum(axis=0)).ravel()
    popular, rare = np.argmax(counts), np.argmin(np.where(counts > 0, counts, np.inf))
    # Relative shrinkage of what each item predicts: larger for the popular one.
    shrink = lambda i: np.abs(emphasised[i]).sum() / np.abs(plain[i]).sum()
    assert shrink(popular) < shrink(rare)


def test_items_below_support_get_no_weights_and_large_catalogues_are_refused(data):
    model = EaseModel(10.0, min_item_support=5).fit(data)
    counts = np.asarray(data.matrix.sum(axis=0)).ravel()
    scores = model.score(np.arange(data.n_users), data.matrix)
    assert (scores[:, counts < 5] == 0).all()
    with pytest.raises(ConfigError, match="max_items"):
        EaseModel(10.0, max_items=3).fit(data)


# ----------------------------------------------------------------------- sequence EASE
def _timed(seed: int = 5, n_users: int = 40, n_items: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        chosen = rng.choice(n_items, rng.integers(2, 25), replace=False)
        times = rng.integers(0, 50, len(chosen))  # ties included
        rows += [(f"u{u}", f"i{i}", int(t)) for i, t in zip(chosen, times)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_positions_follow_time_with_ties_in_input_order():
    frame = pd.DataFrame(
        {"user_id": ["a", "a", "b", "a", "b"], "item_id": ["x", "y", "x", "z", "z"], "timestamp": [5, 1, 3, 1, 2]}
    )
    data = build_training_data(frame)
    # a: y (t=1), then z (t=1, later in the input), then x; b: z, then x.
    np.testing.assert_array_equal(data.positions.toarray(), [[3, 1, 2], [2, 0, 1]])
    assert build_training_data(frame.drop(columns="timestamp")).positions is None
    repeated = pd.DataFrame({"user_id": ["a"] * 3, "item_id": ["x", "y", "x"], "timestamp": [1, 2, 3]})
    np.testing.assert_array_equal(build_training_data(repeated).positions.toarray(), [[3, 2]])


@pytest.mark.parametrize("length_scale, window", [(3.0, 4), (30.0, 100)])
def test_sequence_gram_matches_pairs_summed_by_hand(length_scale, window):
    data = build_training_data(_timed())
    n = data.n_items
    expected = np.zeros((n, n))
    positions = data.positions.toarray()
    for row in positions:
        items = np.flatnonzero(row)
        for i in items:
            for j in items:
                distance = abs(row[i] - row[j])
                if distance <= window:
                    expected[i, j] += np.exp(-distance / length_scale)
    got = sequence_gram(data.positions, np.arange(n), n, length_scale, window)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sequence_ease_counts_near_pairs_more_than_far_ones():
    """Every user has a, b next to each other and c twenty interactions later: plain EASE sees
    b and c co-occur with a equally often, sequence EASE sees b as a's neighbour."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        filler = rng.choice(200, 20, replace=False)
        sequence = ["a", "b"] + [f"f{f}" for f in filler] + ["c"]
        rows += [(f"u{u}", item, t) for t, item in enumerate(sequence)]
    data = build_training_data(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    a, b, c = np.searchsorted(data.item_ids, ["a", "b", "c"])
    history = sp.csr_matrix(([1.0], ([0], [a])), shape=(1, data.n_items))
    plain = EaseModel(10.0).fit(data).score(np.array([-1]), history)[0]
    near = SequenceEaseModel(10.0, length_scale=5.0, window=30).fit(data).score(np.array([-1]), history)[0]
    assert plain[b] == pytest.approx(plain[c], rel=1e-4)
    assert near[b] > 2 * near[c]


def test_sequence_ease_without_timestamps_is_plain_ease():
    frame = _timed().drop(columns="timestamp")
    data = build_training_data(frame)
    plain = EaseModel(25.0, min_item_support=2).fit(data).weights_
    sequence = SequenceEaseModel(25.0, min_item_support=2).fit(data).weights_
    np.testing.assert_allclose(sequence, plain, rtol=1e-5, atol=1e-7)
