"""EASE against its closed form written out naively, with and without dropout emphasis."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.errors import ConfigError
from components.models.base import build_training_data
from components.models.ease import EaseModel


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
    shrink = lambda i: np.abs(emphasised[i]).sum() / np.abs(plain[i]).sum()  # noqa: E731
    assert shrink(popular) < shrink(rare)


def test_items_below_support_get_no_weights_and_large_catalogues_are_refused(data):
    model = EaseModel(10.0, min_item_support=5).fit(data)
    counts = np.asarray(data.matrix.sum(axis=0)).ravel()
    scores = model.score(np.arange(data.n_users), data.matrix)
    assert (scores[:, counts < 5] == 0).all()
    with pytest.raises(ConfigError, match="max_items"):
        EaseModel(10.0, max_items=3).fit(data)
