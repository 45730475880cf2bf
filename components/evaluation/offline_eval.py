"""Offline evaluation on held-out interactions: the two-stage model, each of its candidate
generators alone (popularity among them, the baseline), and the current champion, all on the
same held-out users with training items excluded. The metrics themselves live in `evaluate`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.evaluation.evaluate import ranking_metrics

if TYPE_CHECKING:  # annotations only: evaluation sits below models (docs/architecture.md)
    from components.models.two_stage import TwoStageRecommender

_CHUNK = 512


def relevance_matrix(model: TwoStageRecommender, test: pd.DataFrame) -> tuple[np.ndarray, sp.csr_matrix]:
    """Held-out users known to the model, and their held-out items in its index space.

    Held-out items the model has never seen can never be recommended; they still count as
    relevant (a recall the model cannot reach is a fact about the model, not the data)."""
    data = model.data_
    users = model.user_index(test["user_id"].to_numpy(str))
    ids = test["item_id"].to_numpy(str)
    items = np.clip(np.searchsorted(data.item_ids, ids), 0, data.n_items - 1)
    found = data.item_ids[items] == ids
    evaluated = np.unique(users[users >= 0])
    row_of = np.full(data.n_users, -1)
    row_of[evaluated] = np.arange(len(evaluated))
    keep = users >= 0
    # Unseen items get a column past the catalogue so they count in recall's denominator.
    unseen_cols = data.n_items + np.unique(ids[~found], return_inverse=True)[1]
    cols = np.where(found, items, 0)
    cols[~found] = unseen_cols
    n_cols = data.n_items + int((~found).any()) * (unseen_cols.max(initial=data.n_items) - data.n_items + 1)
    relevant = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (row_of[users[keep]], cols[keep])),
        shape=(len(evaluated), max(n_cols, data.n_items)),
    )
    relevant.sum_duplicates()
    relevant.data[:] = 1.0
    return evaluated, relevant


def recommend_for_users(
    model: TwoStageRecommender, users: np.ndarray, k: int, generator: str | None = None
) -> np.ndarray:
    """[U, k] item indices for index-space users, in chunks to bound memory."""
    out = []
    for start in range(0, len(users), _CHUNK):
        batch = users[start : start + _CHUNK]
        top, _ = model.recommend_indices(batch, model.data_.matrix[batch], k, generator=generator)
        out.append(top)
    return np.vstack(out) if out else np.zeros((0, k), dtype=np.int64)


def evaluate_model(
    model: TwoStageRecommender,
    test: pd.DataFrame,
    *,
    k_values: tuple[int, ...] = (5, 10, 20),
    champion: TwoStageRecommender | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, dict[str, float]]:
    """Metrics for "two_stage", each generator, and "champion" (when given)."""
    users, relevant = relevance_matrix(model, test)
    k = max(k_values)
    n_cols = relevant.shape[1]
    common = {
        "k_values": k_values,
        "item_popularity": _pad(np.expm1(model.stats_.log_popularity), n_cols),
        "n_train_users": model.data_.n_users,
    }
    vectors = model.generators_.get("content")
    if vectors is not None:
        common["item_vectors"] = sp.vstack(
            [vectors.item_vectors_, sp.csr_matrix((n_cols - model.data_.n_items, vectors.item_vectors_.shape[1]))]
        ).tocsr()
    results: dict[str, dict[str, float]] = {}
    for name in [None, *model.generators_]:
        label = name or "two_stage"
        progress(f"evaluating {label} on {len(users):,} held-out users")
        top = recommend_for_users(model, users, k, generator=name)
        results[label] = ranking_metrics(top, relevant, **common)
    if champion is not None:
        progress("evaluating the champion on the same held-out users")
        results["champion"] = ranking_metrics(_champion_top(champion, model, users, k), relevant, **common)
    return results


def _champion_top(
    champion: TwoStageRecommender, model: TwoStageRecommender, users: np.ndarray, k: int
) -> np.ndarray:
    """The champion's top-k for the same users, mapped into the new model's item index space."""
    user_ids = model.data_.user_ids[users]
    ids = champion.recommend(list(user_ids), k).item_ids
    idx = np.clip(np.searchsorted(model.data_.item_ids, ids), 0, model.data_.n_items - 1)
    return np.where(model.data_.item_ids[idx] == ids, idx, -1)


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([values, np.zeros(size - len(values), dtype=values.dtype)])
