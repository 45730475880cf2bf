"""Split: held-out interactions for evaluation, and a validation slice for the ranker.

`temporal_split` (the default) holds out each user's most recent interactions: a production
model predicts the future from the past, and a random split would let it peek. `stratified_split`
holds out a random fraction of each user's interactions, the protocol of the Microsoft
Recommenders benchmark, used for comparable figures. Users with too few interactions stay whole
in training. Both are vectorised (a rank within each user, no loop over users).

Both follow the benchmark's `python_stratified_split` / `python_chrono_split` (Microsoft
Recommenders 1.2.1) to the row: a user keeps in training the first round((1 - test_fraction) * n)
of their n interactions in draw (or time) order, rounded as numpy rounds, half to even (so 25 %
of 21 holds out 5, of 22 holds out 6, and a user with 2 keeps both), and the random draw is
`numpy.random.RandomState(seed).rand` over the rows in input order. With the same rows in the
same order and the same seed, the held-out set is the benchmark's: a test compares the two on
real data, row for row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import SplitConfig
from components.errors import DataValidationError


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame


def _holdout_mask(
    df: pd.DataFrame, order_key: np.ndarray, test_fraction: float, min_user_interactions: int
) -> np.ndarray:
    """True for the last `test_fraction` of each user's interactions in `order_key` order."""
    position, size = _user_positions(df, order_key)
    # The benchmark's rule, float for float: a user keeps the first round((1 - f) * n) rows in
    # training, with numpy's rounding (half to even): 21 rows keep 16, 22 keep 16, 6 keep 4.
    held_out = position + 1 > np.round((1.0 - test_fraction) * size)
    # At least one interaction in training for every user that is split at all.
    return held_out & (position > 0) & (size >= min_user_interactions)


def temporal_split(
    df: pd.DataFrame, test_fraction: float = 0.2, min_user_interactions: int = 3
) -> Split:
    if "timestamp" not in df.columns:
        raise DataValidationError(
            "temporal split needs a 'timestamp' column; this data has none "
            "(use split.method: stratified)"
        )
    # Ties in time keep file order, so the split is deterministic.
    key = df["timestamp"].to_numpy() * 1.0 + np.arange(len(df)) / (len(df) + 1)
    mask = _holdout_mask(df, key, test_fraction, min_user_interactions)
    return Split(df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True))


def stratified_split(
    df: pd.DataFrame, test_fraction: float = 0.25, min_user_interactions: int = 2, seed: int = 42
) -> Split:
    # The legacy generator on purpose: it is the benchmark's draw (see the module docstring).
    key = np.random.RandomState(seed).rand(len(df))
    mask = _holdout_mask(df, key, test_fraction, min_user_interactions)
    return Split(df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True))


def _user_positions(df: pd.DataFrame, order_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's position within its user in `order_key` order, and its user's size."""
    order = np.lexsort((order_key, df["user_id"].to_numpy()))
    users = df["user_id"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    sizes = np.diff(np.r_[starts, len(users)])
    position = np.empty(len(df), dtype=np.int64)
    size = np.empty(len(df), dtype=np.int64)
    position[order] = np.arange(len(users)) - np.repeat(starts, sizes)
    size[order] = np.repeat(sizes, sizes)
    return position, size


def kfold_splits(
    df: pd.DataFrame, n_folds: int, min_user_interactions: int = 2, seed: int = 42
) -> list[Split]:
    """Per-user stratified K folds: fold f holds out every K-th of each user's interactions (in
    random order), so every user appears in every fold. Users with fewer than
    `min_user_interactions` interactions are never held out."""
    key = np.random.default_rng(seed).random(len(df))
    position, size = _user_positions(df, key)
    fold = np.where(size >= max(min_user_interactions, n_folds), position % n_folds, -1)
    return [
        Split(df[fold != f].reset_index(drop=True), df[fold == f].reset_index(drop=True))
        for f in range(n_folds)
    ]


def split_interactions(df: pd.DataFrame, config: SplitConfig, *, validation: bool = False) -> Split:
    """Apply the configured method; `validation=True` carves the ranker's slice instead."""
    fraction = config.validation_fraction if validation else config.test_fraction
    if config.method == "temporal":
        return temporal_split(df, fraction, config.min_user_interactions)
    # A different seed for the validation slice: it must not mirror the test split's draw.
    seed = config.seed + 1 if validation else config.seed
    return stratified_split(df, fraction, config.min_user_interactions, seed=seed)
