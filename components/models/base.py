"""What every model learns from: interactions in index space, plus item metadata.

Ids are strings at the edges and dense integer indices inside, so every model works on one
sparse user-item matrix and the mapping is done once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp

# The per-user times `TrainingData.user_times()` returns, in its column order.
USER_TIMES = ("mean_time", "first_time", "last_time")


@dataclass
class TrainingData:
    user_ids: np.ndarray  # [n_users] str, index -> id
    item_ids: np.ndarray  # [n_items] str
    matrix: sp.csr_matrix  # [n_users, n_items] float32, 1.0 per positive interaction
    items: pd.DataFrame  # aligned with item_ids: title, genres, year, description ("" if unknown)
    item_last_seen: np.ndarray  # [n_items] latest interaction time (Unix s), 0 if unknown
    train_end: float  # latest timestamp in training (0 if the data has none)
    item_mean_time: np.ndarray | None = None  # [n_items] mean interaction time, NaN if unknown
    user_mean_time: np.ndarray | None = None  # [n_users] mean interaction time, NaN if unknown
    item_mean_rating: np.ndarray | None = None  # [n_items] NaN if unknown
    # [n_users, n_items]: each interaction's 1-based place in its user's history ordered by
    # time (ties keep input order); None when the data has no timestamps.
    positions: sp.csr_matrix | None = None
    item_first_seen: np.ndarray | None = None  # [n_items] earliest interaction time, NaN if unknown
    # [n_users] each user's first and last interaction time, NaN if unknown
    user_first_time: np.ndarray | None = None
    user_last_time: np.ndarray | None = None

    def user_times(self) -> np.ndarray:
        """[n_users, 3] each user's mean, first and last interaction time (`USER_TIMES`)."""
        return np.column_stack([
            np.asarray(t, dtype=np.float64)
            for t in (self.user_mean_time, self.user_first_time, self.user_last_time)
        ])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


def build_training_data(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None = None,
    *,
    positive_rating_threshold: float | None = None,
) -> TrainingData:
    """Index the interactions; the catalogue is every item seen in training plus described ones."""
    df = interactions
    if positive_rating_threshold is not None and "rating" in df.columns:
        # Unrated (implicit) interactions are positive; rated ones must reach the threshold.
        df = df[~(df["rating"] < positive_rating_threshold)]
    user_ids, user_idx = np.unique(df["user_id"].to_numpy(dtype=str), return_inverse=True)
    known = df["item_id"].to_numpy(dtype=str)
    catalogue = known if items is None else np.concatenate([known, items["item_id"].to_numpy(str)])
    item_ids = np.unique(catalogue)
    item_idx = np.searchsorted(item_ids, known)
    matrix = sp.csr_matrix(
        (np.ones(len(df), dtype=np.float32), (user_idx, item_idx)),
        shape=(len(user_ids), len(item_ids)),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    meta = pd.DataFrame({"item_id": item_ids})
    if items is not None:
        meta = meta.merge(items, on="item_id", how="left")
    meta = item_metadata(meta)
    last_seen = np.zeros(len(item_ids))
    train_end = 0.0
    item_time = np.full(len(item_ids), np.nan)
    user_time = np.full(len(user_ids), np.nan)
    first_seen = np.full(len(item_ids), np.inf)
    user_first, user_last = np.full(len(user_ids), np.inf), np.full(len(user_ids), -np.inf)
    if "timestamp" in df.columns and len(df):
        ts = df["timestamp"].to_numpy(dtype=float)
        np.maximum.at(last_seen, item_idx, ts)
        np.minimum.at(first_seen, item_idx, ts)
        np.minimum.at(user_first, user_idx, ts)
        np.maximum.at(user_last, user_idx, ts)
        train_end = float(ts.max())
        item_time = _group_mean(item_idx, ts, len(item_ids))
        user_time = _group_mean(user_idx, ts, len(user_ids))
    item_rating = np.full(len(item_ids), np.nan)
    if "rating" in df.columns and len(df):
        rating = df["rating"].to_numpy(dtype=float)
        rated = np.isfinite(rating)  # implicit interactions carry no rating
        item_rating = _group_mean(item_idx[rated], rating[rated], len(item_ids))
    positions = None
    if "timestamp" in df.columns:
        repeated = matrix.nnz < len(df)  # (user, item) pairs given more than once
        positions = _positions(user_idx, item_idx, df["timestamp"].to_numpy(dtype=float), matrix.shape, repeated)
    return TrainingData(
        user_ids, item_ids, matrix, meta, last_seen, train_end, item_time, user_time, item_rating, positions,
        item_first_seen=np.where(np.isfinite(first_seen), first_seen, np.nan),
        user_first_time=np.where(np.isfinite(user_first), user_first, np.nan),
        user_last_time=np.where(np.isfinite(user_last), user_last, np.nan),
    )


def item_metadata(items: pd.DataFrame) -> pd.DataFrame:
    """The items with title, genres and description as text ("" if unknown) and year as a
    number (NaN if unknown), whichever of them the frame has."""
    meta = items.copy()
    for column in ("title", "genres", "description"):
        meta[column] = meta[column].fillna("").astype(str) if column in meta else ""
    meta["year"] = pd.to_numeric(meta["year"], errors="coerce") if "year" in meta else np.nan
    return meta


def _positions(
    users: np.ndarray, items: np.ndarray, times: np.ndarray, shape: tuple[int, int], repeated: bool
) -> sp.csr_matrix:
    """Place (1-based) of each (user, item) in the user's time-ordered history; a repeated pair
    keeps its latest place."""
    order = np.lexsort((times, users))
    starts = np.searchsorted(users[order], users[order], side="left")
    place = np.empty(len(order), dtype=np.float32)
    place[order] = np.arange(len(order)) - starts + 1
    if repeated:  # validated data has none; keep each pair's latest place
        keys = users.astype(np.int64) * shape[1] + items
        frame = pd.DataFrame({"key": keys, "place": place}).groupby("key", sort=False)["place"].max()
        keys, place = frame.index.to_numpy(), frame.to_numpy(np.float32)
        users, items = keys // shape[1], keys % shape[1]
    return sp.csr_matrix((place, (users, items)), shape=shape)


def _group_mean(groups: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    counts = np.bincount(groups, minlength=size)
    sums = np.bincount(groups, weights=values, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def history_matrix(
    item_ids: np.ndarray, histories: list[list[str]], n_items: int
) -> sp.csr_matrix:
    """Rows of known-item indicators for callers that bring a history; unknown ids are ignored."""
    rows, cols = [], []
    for r, history in enumerate(histories):
        idx = np.searchsorted(item_ids, np.asarray(history, dtype=str))
        idx = np.clip(idx, 0, len(item_ids) - 1)
        idx = idx[item_ids[idx] == np.asarray(history, dtype=str)] if len(history) else idx[:0]
        rows.extend([r] * len(idx))
        cols.extend(idx.tolist())
    data = np.ones(len(rows), dtype=np.float32)
    out = sp.csr_matrix((data, (rows, cols)), shape=(len(histories), n_items))
    out.sum_duplicates()
    out.data[:] = 1.0
    return out


def one_row_history(seen: np.ndarray, n_items: int) -> sp.csr_matrix:
    """[1, n_items] history matrix of one user's sorted item indices, as the batch path
    builds its rows (1.0 per item)."""
    return sp.csr_matrix(
        (np.ones(len(seen), np.float32), seen.astype(np.int32), np.array([0, len(seen)], np.int32)),
        shape=(1, n_items),
    )


class CandidateGenerator(Protocol):
    """A first-stage model: scores every item for a batch of users."""

    name: str

    def fit(self, data: TrainingData) -> CandidateGenerator: ...

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> np.ndarray:
        """[B, n_items] float32 scores; `users` holds indices (-1 for users unseen in
        training) and `history` the matching rows of known items."""
        ...

    def score_one(self, user: int, seen: np.ndarray) -> np.ndarray:
        """[n_items] `score` of one user (index, -1 if unseen or grown) whose history is the
        sorted item indices `seen`: the same values, without the sparse matrices whose fixed
        cost dominates a single user's call."""
        ...
