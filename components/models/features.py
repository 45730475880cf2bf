"""Features of (user, candidate item) pairs for the LightGBM ranker.

Candidates are the union of each generator's top-N for the user (items the user already has are
never candidates). Each pair is described by every generator's score and rank, item popularity
and recency, item year, user activity, the genre overlap between the item and the user's
history, the item's popularity and year against the means of the user's history (a taste for
popular or for older films), and whether the item was in use while the user was active.
Everything is computed on whole [B, n_items] score matrices: no loop over items. A single
user's call (`build_candidates_one`) computes the same on [n_items] rows and its history's item
indices, without the sparse products whose fixed cost dominates at one row.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.preprocessing import MultiLabelBinarizer

from components.models.base import USER_TIMES

# Columns of the user times the features take ([B, 3], as `TrainingData.user_times()`).
MEAN_TIME, FIRST_TIME, LAST_TIME = (USER_TIMES.index(c) for c in ("mean_time", "first_time", "last_time"))

ITEM_FEATURES = ("item_log_share", "item_days_since_last_seen", "item_year", "item_mean_rating")
USER_FEATURES = (
    "user_log_activity",
    "user_genre_overlap",
    "user_item_days_apart",
    "item_first_seen_after_user_last_days",
    "item_last_seen_before_user_first_days",
    "item_share_over_user_mean",
    "item_year_over_user_mean",
)


@dataclass
class ItemStats:
    """Per-item facts the ranker uses; fitted once with the generators."""

    log_popularity: np.ndarray  # [n_items]
    year: np.ndarray  # [n_items], NaN when unknown
    genres: np.ndarray  # [n_items, n_genres] float32 0/1 (dense: genres are few)
    mean_time: np.ndarray  # [n_items] mean interaction time (Unix s), NaN when unknown
    mean_rating: np.ndarray  # [n_items], NaN when unknown
    # [n_items] first and last interaction time (Unix s), NaN when unknown
    first_seen: np.ndarray
    last_seen: np.ndarray
    train_end: float  # latest training timestamp (0 without timestamps)

    @classmethod
    def from_training(cls, data) -> ItemStats:
        matrix, items = data.matrix, data.items
        counts = np.asarray(matrix.sum(axis=0)).ravel()
        genre_lists = items["genres"].fillna("").str.split("|").apply(lambda g: [x for x in g if x])
        binarizer = MultiLabelBinarizer(sparse_output=True)
        genres = binarizer.fit_transform(genre_lists) if len(items) else sp.csr_matrix((0, 0))
        if genres.shape[1] == 0:
            genres = sp.csr_matrix((len(counts), 1), dtype=np.float32)
        genres = np.asarray(genres.toarray(), dtype=np.float32)
        return cls(
            log_popularity=np.log1p(counts).astype(np.float32),
            year=pd.to_numeric(items["year"], errors="coerce").to_numpy(dtype=np.float32),
            genres=genres,
            mean_time=np.asarray(data.item_mean_time, dtype=np.float64),
            mean_rating=np.asarray(data.item_mean_rating, dtype=np.float32),
            first_seen=_times(data.item_first_seen, len(counts)),
            last_seen=np.where(data.item_last_seen > 0, data.item_last_seen, np.nan).astype(np.float64),
            train_end=float(data.train_end),
        )

    def get_state(self) -> dict[str, np.ndarray | sp.csr_matrix]:
        return {
            "log_popularity": self.log_popularity,
            "year": self.year,
            "genres": self.genres,
            "mean_time": self.mean_time,
            "mean_rating": self.mean_rating,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "train_end": np.array(self.train_end),
        }

    @classmethod
    def from_state(cls, state: dict) -> ItemStats:
        return cls(
            state["log_popularity"],
            state["year"],
            np.asarray(state["genres"], dtype=np.float32),
            state["mean_time"],
            state["mean_rating"],
            # Artifacts written before these existed load (their ranker is then refused by
            # name, see components.models.artifact).
            _times(state.get("first_seen"), len(state["log_popularity"])),
            _times(state.get("last_seen"), len(state["log_popularity"])),
            float(state.get("train_end", 0.0)),
        )

    @cached_property
    def log_share(self) -> np.ndarray:
        """[n_items] log of each item's share of the training interactions. The ranker's
        popularity feature: its labels come from generators fitted on (K-1)/K of the data and it
        serves with ones fitted on all of it, so raw counts would shift by log(K/(K-1)) between
        training and serving, and shares do not. (On MovieLens 100K the effect on NDCG@10 is
        within noise: +0.001 over five splits, -0.002 over three other draws.)"""
        counts = np.expm1(self.log_popularity.astype(np.float64))
        return (self.log_popularity - np.log(max(counts.sum(), 1.0))).astype(np.float32)

    @cached_property
    def days_since_last_seen(self) -> np.ndarray:
        """[n_items] days from each item's last interaction to the end of training (NaN if
        unknown)."""
        if self.train_end <= 0:
            return np.full(len(self.last_seen), np.nan, dtype=np.float32)
        return ((self.train_end - self.last_seen) / 86_400.0).astype(np.float32)

    def history_time(self, history: sp.csr_matrix) -> np.ndarray:
        """[B] mean time of each history row's items: a user's "when", if not known otherwise."""
        return history_mean(history, self.mean_time)


def history_mean(history: sp.csr_matrix, values: np.ndarray) -> np.ndarray:
    """[B] mean of `values` ([n_items]) over each history row's items whose value is known
    (not NaN); NaN for a row with none."""
    known = ~np.isnan(values)
    weight = history @ known.astype(np.float64)
    total = history @ np.where(known, values, 0.0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.maximum(weight, 1), np.nan)


def _times(values: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, np.nan) if values is None else np.asarray(values, dtype=np.float64)


@dataclass
class Candidates:
    rows: np.ndarray  # [P] batch row of each pair, sorted
    items: np.ndarray  # [P] item index of each pair
    features: np.ndarray  # [P, n_features] float32


def feature_names(generators: list[str]) -> list[str]:
    per_generator = [f"{g}_{kind}" for g in generators for kind in ("z", "rank", "relative")]
    return per_generator + list(ITEM_FEATURES) + list(USER_FEATURES)


def top_n(scores: np.ndarray, n: int) -> np.ndarray:
    """[B, n] indices of each row's n best scores, best first."""
    n = min(n, scores.shape[1])
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    rows = np.arange(len(scores))[:, None]  # plain indexing: take_along_axis's own cost is most of it at one row
    order = np.argsort(-scores[rows, part], axis=1, kind="stable")
    return part[rows, order]


def build_candidates(
    scores: dict[str, np.ndarray],
    history: sp.csr_matrix,
    stats: ItemStats,
    n_per_generator: int,
    user_time: np.ndarray,  # [B, 3] columns of TrainingData.user_times(); NaN if unknown
) -> Candidates:
    """Union of each generator's top-N (history excluded) and the pairs' features."""
    batch, n_items = history.shape
    seen = history.toarray().astype(bool)
    mask = np.zeros((batch, n_items), dtype=bool)
    ranks: dict[str, np.ndarray] = {}
    best: dict[str, np.ndarray] = {}
    for name, s in scores.items():
        s = np.where(seen, -np.inf, s)
        best[name] = s.max(axis=1)
        top = top_n(s, n_per_generator)
        rank = np.full((batch, n_items), top.shape[1], dtype=np.float32)
        np.put_along_axis(rank, top, np.arange(top.shape[1], dtype=np.float32)[None, :], axis=1)
        ranks[name] = rank
        np.put_along_axis(mask, top, True, axis=1)
    mask &= ~seen
    rows, items = np.nonzero(mask)
    columns = []
    unseen = ~seen
    n_unseen = np.maximum(unseen.sum(axis=1), 1)
    for name, s in scores.items():
        picked = s[rows, items]
        # Scores relative to the user's best, and standardised over the user's unseen items:
        # comparable across users and between the cross-fitted and the final generators, whose
        # raw scales differ (more history, larger scores).
        top = best[name][rows]
        relative = np.where(np.abs(top) > 1e-12, picked / np.where(top == 0, 1, top), 0.0)
        masked = np.where(unseen, s, 0.0)
        mean = masked.sum(axis=1) / n_unseen
        std = np.sqrt(np.maximum((masked**2).sum(axis=1) / n_unseen - mean**2, 0.0))
        z = (picked - mean[rows]) / np.maximum(std[rows], 1e-12)
        columns += [z, ranks[name][rows, items], relative]
    columns += _pair_columns(history, stats, rows, items, user_time)
    features = np.column_stack(columns).astype(np.float32)
    return Candidates(rows=rows, items=items, features=features)


def _pair_columns(
    history: sp.csr_matrix, stats: ItemStats, rows: np.ndarray, items: np.ndarray, user_time: np.ndarray
) -> list[np.ndarray]:
    """The item and user features of (batch row, item) pairs, whatever proposed them."""
    activity = np.diff(history.indptr).astype(np.float32)
    # Share of the user's history in the item's genres.
    profile = np.asarray(history @ stats.genres, dtype=np.float32)
    # The user's taste for popular and for older items: the mean popularity share and year of
    # their history, against which each candidate's is measured.
    share = history_mean(history, stats.log_share)
    user_year = history_mean(history, stats.year)
    return _pair_rows(stats, rows, items, user_time, activity, profile, share, user_year)


def _pair_columns_one(
    seen: np.ndarray, stats: ItemStats, items: np.ndarray, user_time: np.ndarray
) -> list[np.ndarray]:
    """`_pair_columns` for one user whose history is the sorted item indices `seen`: the
    per-user sums on those indices rather than by sparse products."""
    activity = np.array([len(seen)], dtype=np.float32)
    profile = stats.genres[seen].sum(axis=0, keepdims=True)
    share = np.array([mean_of_known(stats.log_share[seen])])
    user_year = np.array([mean_of_known(stats.year[seen])])
    rows = np.zeros(len(items), dtype=np.int64)
    return _pair_rows(stats, rows, items, user_time, activity, profile, share, user_year)


def mean_of_known(values: np.ndarray) -> float:
    """Mean of the values that are not NaN, in float64 (`history_mean` for one row)."""
    values = values.astype(np.float64)
    known = ~np.isnan(values)
    n = int(known.sum())
    return float(values[known].sum()) / n if n else np.nan


def _pair_rows(
    stats: ItemStats,
    rows: np.ndarray,
    items: np.ndarray,
    user_time: np.ndarray,
    activity: np.ndarray,  # [B] history lengths
    profile: np.ndarray,  # [B, n_genres] float32 genre counts of the history
    share: np.ndarray,  # [B] mean log share of the history
    user_year: np.ndarray,  # [B] mean year of the history
) -> list[np.ndarray]:
    profile = profile / np.maximum(profile.sum(axis=1, keepdims=True), 1e-12)
    overlap = np.einsum("pg,pg->p", profile[rows], stats.genres[items])
    return [
        stats.log_share[items],
        stats.days_since_last_seen[items],
        stats.year[items],
        stats.mean_rating[items],
        np.log1p(activity)[rows],
        overlap,
        # Items people used around the time this user was active (NaN without timestamps).
        (stats.mean_time[items] - user_time[rows, MEAN_TIME]) / 86_400.0,
        # Whether the item was in use while the user was active: one first used only after the
        # user's last interaction, or last used before their first, is unlikely in their history.
        (stats.first_seen[items] - user_time[rows, LAST_TIME]) / 86_400.0,
        (user_time[rows, FIRST_TIME] - stats.last_seen[items]) / 86_400.0,
        stats.log_share[items] - share[rows],
        stats.year[items] - user_year[rows],
    ]


def build_candidates_from_retrieval(
    retrieved: dict,
    history: sp.csr_matrix,
    stats: ItemStats,
    user_time: np.ndarray,  # [B, 3] columns of TrainingData.user_times(); NaN if unknown
) -> Candidates:
    """`build_candidates` for large catalogues: the union of each generator's retrieved top-N
    (`components.models.retrieval.Retrieved`, history already excluded) and the same features,
    from the pairs' scores and each user's unseen-item moments instead of dense score rows."""
    n_items = history.shape[1]
    keys = []
    for found in retrieved.values():
        valid = found.items >= 0
        keys.append(np.nonzero(valid)[0].astype(np.int64) * n_items + found.items[valid])
    keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)
    rows, items = keys // n_items, keys % n_items  # row-major, items ascending: as np.nonzero
    columns = []
    for found in retrieved.values():
        width = found.items.shape[1]
        picked = found.pair(rows, items).astype(np.float64)
        top = found.scores[:, 0].astype(np.float64)[rows] if width else np.zeros(len(rows))
        top = np.where(np.isfinite(top), top, 0.0)
        relative = np.where(np.abs(top) > 1e-12, picked / np.where(top == 0, 1, top), 0.0)
        z = (picked - found.mean[rows]) / np.maximum(found.std[rows], 1e-12)
        # Place in this generator's list, `width` for items it did not propose.
        listed = found.items >= 0
        list_rows = np.nonzero(listed)[0].astype(np.int64)
        list_keys = list_rows * n_items + found.items[listed]
        list_rank = np.nonzero(listed)[1].astype(np.float32)
        order = np.argsort(list_keys)
        at = np.minimum(np.searchsorted(list_keys[order], keys), max(len(list_keys) - 1, 0))
        hit = list_keys[order][at] == keys if len(list_keys) else np.zeros(len(keys), bool)
        rank = np.where(hit, list_rank[order][at] if len(list_keys) else 0, np.float32(width))
        columns += [z, rank, relative]
    columns += _pair_columns(history, stats, rows, items, user_time)
    features = np.column_stack(columns).astype(np.float32)
    return Candidates(rows=rows, items=items, features=features)


def build_candidates_one(
    scores: dict[str, np.ndarray],
    seen: np.ndarray,
    stats: ItemStats,
    n_per_generator: int,
    user_time: np.ndarray,  # [1, 3] as `build_candidates`
) -> Candidates:
    """`build_candidates` for a batch of one user, on [n_items] rows instead of [B, n_items]
    matrices: the same candidates in the same order and the same features. `seen` holds the
    user's (unique) history as sorted item indices. The generators' rows (float32, the
    generators' contract) are stacked into one [G, n_items] matrix, so that each step is one
    numpy call for all of them."""
    n_items = len(stats.log_popularity)
    matrix = np.concatenate(list(scores.values()))
    only_unseen = matrix.copy()  # np.where(unseen, matrix, -inf)
    only_unseen[:, seen] = -np.inf
    top = top_n(only_unseen, n_per_generator)
    mask = np.zeros(n_items, dtype=bool)
    mask[top.ravel()] = True
    mask[seen] = False
    items = np.flatnonzero(mask)
    columns = _generator_columns(matrix, only_unseen, seen, items, top, max(n_items - len(seen), 1))
    columns += _pair_columns_one(seen, stats, items, user_time)
    features = np.empty((len(items), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):  # float32 as `build_candidates` casts its stack
        features[:, j] = column
    return Candidates(rows=np.zeros(len(items), dtype=np.int64), items=items, features=features)


def _generator_columns(
    matrix: np.ndarray,
    only_unseen: np.ndarray,
    seen: np.ndarray,
    items: np.ndarray,
    top: np.ndarray,
    n_unseen: int,
) -> list[np.ndarray]:
    """Every generator's [z, rank, relative] columns at `items`, generator by generator, for
    the [G, n_items] scores of one user's generators, the same with -inf at the `seen` items
    and their top lists [G, width], in the scores' dtype as the one-row computation gives them."""
    dtype = matrix.dtype.type
    picked = matrix[:, items]
    best = only_unseen.max(axis=1)
    relative = np.where(
        (np.abs(best) > 1e-12)[:, None], picked / np.where(best == 0, dtype(1), best)[:, None], dtype(0)
    )
    masked = matrix.copy()  # np.where(unseen, matrix, 0)
    masked[:, seen] = 0
    # In float64, as `build_candidates` divides its sums by an int64 count; then back to the
    # scores' dtype, in which a one-row difference with a Python float is taken.
    mean = masked.sum(axis=1).astype(np.float64) / n_unseen
    std = np.sqrt(np.maximum((masked**2).sum(axis=1).astype(np.float64) / n_unseen - mean**2, 0.0))
    z = (picked - mean.astype(dtype)[:, None]) / np.maximum(std, 1e-12).astype(dtype)[:, None]
    width = top.shape[1]
    rank = np.full(matrix.size, width, dtype=np.float32)  # flat: row g at g * n_items
    rank[(top + (np.arange(len(matrix)) * matrix.shape[1])[:, None]).ravel()] = np.tile(
        np.arange(width, dtype=np.float32), len(matrix)
    )
    rank = rank.reshape(matrix.shape)[:, items]
    return [column for g in range(len(matrix)) for column in (z[g], rank[g], relative[g])]
