"""How many trees the ranker keeps, and whether it beats its own generators: the validation
NDCG of query groups (`ndcg_of_groups`, by `components.evaluation.evaluate.ranking_metrics`),
the ranker against each generator (`validation_ndcg`), the tree count from a validation curve
(`chosen_trees`) and a booster cut to it (`truncated`). Shared by the single-process fit
(`two_stage`) and the Dask fit (`distributed`): `two_stage` starts the Dask fit, so the Dask fit
takes these from here rather than from `two_stage`.
"""
from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

from components.evaluation.evaluate import ranking_metrics


def ndcg_of_groups(score: np.ndarray, label: np.ndarray, groups: np.ndarray, k: int) -> tuple[float, int]:
    """NDCG@k of query groups of consecutive rows ordered by score (ties in row order), by
    `components.evaluation.evaluate.ranking_metrics`, and how many groups it averages (those
    with a relevant row)."""
    group_of_row = np.repeat(np.arange(len(groups)), groups)
    local = np.arange(len(score)) - np.repeat(np.cumsum(groups) - groups, groups)
    relevant = sp.csr_matrix(((label > 0).astype(np.float64), (group_of_row, local)),
                             shape=(len(groups), max(int(groups.max(initial=0)), 1)))
    # Sorted by group, then by score: position i keeps row i's group and place in it.
    best_first = local[np.lexsort((-score, group_of_row))]
    shown = local < k
    recommended = np.full((len(groups), k), -1, dtype=np.int64)
    recommended[group_of_row[shown], local[shown]] = best_first[shown]
    ndcg = ranking_metrics(recommended, relevant, k_values=(k,))[f"ndcg@{k}"]
    return ndcg, int((np.diff(relevant.indptr) > 0).sum())


def validation_ndcg(
    predicted: np.ndarray, x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str],
    generators: list[str], k: int,
) -> dict[str, tuple[float, int]]:
    """`ndcg_of_groups` of validation candidates ordered by the ranker (`predicted`) and by each
    generator's own score (its z feature, monotone in the score within a user; popularity is left
    out: it is the cold-start answer, not a ranking to serve)."""
    orders = {"ranker": predicted}
    orders.update({g: x[:, names.index(f"{g}_z")] for g in generators if g != "popularity"})
    return {name: ndcg_of_groups(score, y, groups, k) for name, score in orders.items()}


def chosen_trees(curve: Sequence[float], patience: int | None = None) -> int:
    """The ranker's tree count from its validation curve (one NDCG per round): the best round
    overall, or with `patience` the best before the first `patience` rounds without a strict
    gain (LightGBM's early stopping). The first of equal bests; 0 for an empty curve."""
    best, at = -np.inf, -1
    for i, value in enumerate(curve):
        if value > best:
            best, at = value, i
        elif patience is not None and i - at >= patience:
            break
    return at + 1


def truncated(booster: lgb.Booster, trees: int) -> lgb.Booster:
    """The booster's first `trees` trees, as a booster of its own."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=trees))
