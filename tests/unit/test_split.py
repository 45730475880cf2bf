"""Splits: no held-out interaction in training, the right amount held out, temporal order."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import SplitConfig
from components.data.split import kfold_splits, split_interactions, stratified_split, temporal_split
from components.errors import DataValidationError


def _pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df.user_id, df.item_id))


@pytest.mark.parametrize("method", ["temporal", "stratified"])
def test_no_leakage_and_nothing_lost(small_dataset, method):
    df = small_dataset.interactions
    parts = split_interactions(df, SplitConfig(method=method, test_fraction=0.25))
    assert not _pairs(parts.train) & _pairs(parts.test)
    assert len(parts.train) + len(parts.test) == len(df)
    assert _pairs(parts.train) | _pairs(parts.test) == _pairs(df)


def test_temporal_split_holds_out_each_users_most_recent(small_dataset):
    parts = temporal_split(small_dataset.interactions, 0.2, 3)
    last_train = parts.train.groupby("user_id").timestamp.max()
    first_test = parts.test.groupby("user_id").timestamp.min()
    common = first_test.index
    assert (last_train[common] <= first_test[common]).all()


def test_fraction_per_user_and_small_users_stay_in_training():
    df = pd.DataFrame(
        {"user_id": ["a"] * 8 + ["b"] * 2, "item_id": [str(i) for i in range(10)], "timestamp": range(10)}
    )
    parts = temporal_split(df, 0.25, min_user_interactions=3)
    assert (parts.test.user_id == "a").sum() == 2
    assert (parts.test.user_id == "b").sum() == 0
    assert list(parts.test.item_id) == ["6", "7"]


def test_stratified_split_is_seeded_and_random_within_users(small_dataset):
    df = small_dataset.interactions
    a = stratified_split(df, 0.25, seed=1)
    b = stratified_split(df, 0.25, seed=1)
    c = stratified_split(df, 0.25, seed=2)
    assert _pairs(a.test) == _pairs(b.test) and _pairs(a.test) != _pairs(c.test)
    ratio = len(a.test) / len(df)
    assert 0.2 < ratio < 0.3


@pytest.mark.parametrize(
    ("size", "held_out"), [(2, 0), (3, 1), (4, 1), (5, 1), (6, 2), (20, 5), (21, 5), (22, 6)]
)
def test_stratified_split_follows_the_benchmark_rule(size, held_out):
    """Microsoft Recommenders keeps round(0.75 n) in training, numpy rounding (half to even):
    2 keep 2 (round(1.5) = 2), 6 keep 4 (round(4.5) = 4), 21 keep 16, 22 keep 16."""
    df = pd.DataFrame({"user_id": ["u"] * size, "item_id": [f"i{n}" for n in range(size)]})
    parts = stratified_split(df, 0.25, seed=7)
    assert len(parts.test) == held_out


def test_stratified_split_draws_like_the_benchmark():
    """One legacy RandomState(seed).rand draw per row in input order; each user's rows with the
    largest draws are held out. Users are interleaved to show the draw follows rows, not users."""
    users = ["a", "b", "c"] * 8
    df = pd.DataFrame({"user_id": users, "item_id": [f"i{n}" for n in range(len(users))]})
    key = np.random.RandomState(5).rand(len(df))
    expected = set()
    for user in "abc":
        rows = np.flatnonzero(df.user_id.to_numpy() == user)
        expected |= set(df.item_id.to_numpy()[rows[np.argsort(key[rows])[-2:]]])  # 8 rows: 6 kept, 2 out
    assert set(stratified_split(df, 0.25, seed=5).test.item_id) == expected


def _benchmark_split(df: pd.DataFrame, seed: int) -> set[tuple[str, str]]:
    """The held-out pairs of Microsoft Recommenders' own `python_stratified_split`."""
    from recommenders.datasets.python_splitters import python_stratified_split

    frame = df.rename(columns={"user_id": "userID", "item_id": "itemID"})
    _, test = python_stratified_split(frame, ratio=0.75, col_user="userID", col_item="itemID", seed=seed)
    return set(zip(test.userID, test.itemID))


@pytest.mark.parametrize("seed", [42, 3])
def test_stratified_split_is_the_benchmarks_row_for_row_on_the_default_data(seed):
    """On the built-in default data (100,004 real ratings), our split holds out exactly the
    pairs the benchmark package's own splitter holds out."""
    from components.data.ingest import load_dataset

    df = load_dataset("movielens-dslabs").interactions
    ours = stratified_split(df, 0.25, seed=seed).test
    assert _pairs(ours) == _benchmark_split(df, seed) and len(ours) == len(_pairs(ours))


def test_stratified_split_is_the_benchmarks_row_for_row_on_ml100k(ml100k_dir):
    """The benchmark's own data: 25,008 ratings held out at seed 42, the same ones."""
    from components.data.ingest import load_dataset

    df = load_dataset(str(ml100k_dir)).interactions
    ours = stratified_split(df, 0.25, seed=42).test
    assert len(ours) == 25_008 and _pairs(ours) == _benchmark_split(df, 42)


def test_temporal_split_needs_timestamps():
    df = pd.DataFrame({"user_id": ["a"] * 4, "item_id": list("wxyz")})
    with pytest.raises(DataValidationError, match="timestamp"):
        temporal_split(df)


def test_kfolds_partition_every_users_interactions(small_dataset):
    df = small_dataset.interactions
    folds = kfold_splits(df, 4, seed=3)
    held = pd.concat([f.test for f in folds])
    assert len(held) == len(_pairs(held))  # each interaction held out at most once
    for fold in folds:
        assert not _pairs(fold.train) & _pairs(fold.test)
        assert len(fold.train) + len(fold.test) == len(df)
    sizes = df.groupby("user_id").size()
    eligible = sizes[sizes >= 4].index
    assert set(held.user_id) == set(eligible)
    assert np.isclose(len(held), sizes[eligible].sum())
