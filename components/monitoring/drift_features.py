"""What serving can observe, as the feature tables the drift detectors compare.

Three views, each a table with one row per unit that varies on its own:

- `requests`: one row per answered user row of a recommendation (from the predictor's request
  log or the feedback store's impressions): the user's activity bucket (unknown users fall in
  the lightest bucket), the requested k (bucketed), the mean popularity percentile and the
  dominant genre of the returned items (genres that lead under 5 % of the reference's lists
  count as "other"), and, when the source has scores, the top score
  (`scores` is a view of its own, since impressions carry no scores).
- `events`: one row per positive feedback event (consume, click, like, rating): the consumed
  item's popularity bucket (0: an item the model never saw) and the user's activity bucket.
- `ratings`: one row per rating event: the rating, in bins of at least 5 % of the reference.

A `DriftProfile` holds the cut points (quantiles of the reference, so each bucket holds a
similar share of it and the chi-squared cells are never nearly empty) and is saved beside the
detectors: the same rows always land in the same buckets. Nothing here imports alibi-detect;
`components.monitoring.drift` runs the tests, so either side can be replaced alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

POSITIVE_EVENT_TYPES = ("consume", "click", "like", "rating")
K_EDGES = (5, 10, 20, 50)  # k buckets: <=5, 6-10, 11-20, 21-50, >50
# The returned items' popularity and genre are read on the first positions only, so that a
# client asking for longer lists does not move them by itself (k is a feature of its own).
HEAD = 10
MAX_GENRES = 12  # most frequent genres kept by name; the rest are "other"
MIN_BIN_SHARE = 0.05


@dataclass(frozen=True)
class FeatureTable:
    """Rows of one view, ready for a detector (float32 values; categorical columns hold codes)."""

    view: str
    names: tuple[str, ...]
    categorical: tuple[bool, ...]
    values: np.ndarray  # [n, len(names)] float32

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.names.index(name)]


VIEWS: dict[str, tuple[tuple[str, bool], ...]] = {
    "requests": (
        ("user_activity", True),
        ("k", True),
        ("items_popularity", False),
        ("items_genre", True),
    ),
    "scores": (("top_score", False),),
    "events": (("item_popularity", True), ("user_activity", True)),
    "ratings": (("rating", True),),
}


@dataclass(frozen=True)
class ModelFacts:
    """What the features need from a model: its ids, training counts and item genres."""

    user_ids: np.ndarray  # sorted str
    item_ids: np.ndarray  # sorted str
    user_counts: np.ndarray  # training interactions per user
    item_counts: np.ndarray  # training interactions per item
    item_genres: list[list[str]]

    @classmethod
    def from_parts(
        cls, user_ids: np.ndarray, item_ids: np.ndarray, matrix: sp.spmatrix, items: pd.DataFrame
    ) -> ModelFacts:
        genres = (
            items["genres"].fillna("").astype(str)
            if "genres" in items
            else pd.Series([""] * len(item_ids))
        )
        return cls(
            user_ids=np.asarray(user_ids, dtype=str),
            item_ids=np.asarray(item_ids, dtype=str),
            user_counts=np.asarray(matrix.getnnz(axis=1), dtype=np.int64),
            item_counts=np.asarray(matrix.getnnz(axis=0), dtype=np.int64),
            item_genres=[[g for g in s.split("|") if g] for s in genres.tolist()],
        )

    @classmethod
    def from_model(cls, model) -> ModelFacts:
        data = model.data_
        return cls.from_parts(data.user_ids, data.item_ids, data.matrix, data.items)

    @classmethod
    def from_artifact(cls, directory: Path) -> ModelFacts:
        """Read only the id maps, the interaction matrix and the items: not the generators."""
        users = pd.read_parquet(directory / "users.parquet", columns=["user_id"])
        items = pd.read_parquet(directory / "items.parquet")
        matrix = sp.load_npz(directory / "interactions.npz")
        return cls.from_parts(
            users["user_id"].to_numpy(str), items["item_id"].to_numpy(str), matrix, items
        )

    def index(self, ids: np.ndarray, known: np.ndarray) -> np.ndarray:
        """Position of each id in the sorted `known` ids, -1 where it is absent."""
        ids = np.asarray(ids, dtype=str)
        if len(known) == 0:
            return np.full(len(ids), -1)
        pos = np.clip(np.searchsorted(known, ids), 0, len(known) - 1)
        return np.where(known[pos] == ids, pos, -1)

    @property
    def n_train_interactions(self) -> int:
        return int(self.user_counts.sum())


@dataclass
class DriftProfile:
    """Cut points fitted on the reference; the same rows always get the same codes."""

    activity_edges: list[float]
    popularity_edges: list[float]
    rating_edges: list[float]
    genres: list[str]  # the genres a list's dominant genre is chosen among
    k_edges: list[int] = field(default_factory=lambda: list(K_EDGES))
    default_k: int = 10
    # The genres that lead at least MIN_BIN_SHARE of the reference's lists, each a category of
    # its own; the others share "other" (None: every genre of `genres`).
    leading_genres: list[str] | None = None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path) -> DriftProfile:
        return cls(**json.loads(path.read_text()))


def quantile_edges(values: np.ndarray, buckets: int) -> list[float]:
    """Inner cut points that split `values` into about equal shares (ties may merge buckets)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return []
    inner = np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1], method="lower")
    return sorted({float(v) for v in inner})


def balanced_edges(
    values: np.ndarray, min_share: float = MIN_BIN_SHARE, max_bins: int = 12
) -> list[float]:
    """Cut points between the distinct values, merging neighbours until every bin holds at
    least `min_share` of them (few distinct values: a histogram; many: quantiles)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return []
    distinct, counts = np.unique(values, return_counts=True)
    if len(distinct) > 4 * max_bins:
        return quantile_edges(values, max_bins)
    edges, held = [], 0
    for i in range(len(distinct) - 1):
        held += counts[i]
        if held >= min_share * len(values) and counts[i + 1 :].sum() >= min_share * len(values):
            edges.append(float((distinct[i] + distinct[i + 1]) / 2))
            held = 0
    return edges


def bucket(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bucket 0..len(edges) of each value (a value equal to an edge falls below it)."""
    return np.searchsorted(
        np.asarray(edges, dtype=float), np.asarray(values, dtype=float), side="left"
    )


def _item_genre_codes(facts: ModelFacts, genres: list[str]) -> sp.csr_matrix:
    """[n_items, len(genres) + 1] 0/1: the kept genres, then "other" (every other genre)."""
    code = {g: i for i, g in enumerate(genres)}
    rows, cols = [], []
    for row, item_genres in enumerate(facts.item_genres):
        for g in item_genres:
            rows.append(row)
            cols.append(code.get(g, len(genres)))
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(facts.item_ids), len(genres) + 1))


def _genre_codes(profile: DriftProfile) -> np.ndarray:
    """Code of each genre index (and of "other", last): its place among the leading genres,
    else the code of "other"."""
    leading = profile.genres if profile.leading_genres is None else profile.leading_genres
    place = {g: i for i, g in enumerate(leading)}
    return np.asarray([place.get(g, len(leading)) for g in profile.genres] + [len(leading)])


def top_genres(facts: ModelFacts, limit: int = MAX_GENRES) -> list[str]:
    """The genres with most training interactions (weighted by each item's count)."""
    weight: dict[str, float] = {}
    for count, item_genres in zip(facts.item_counts.tolist(), facts.item_genres):
        for g in item_genres:
            weight[g] = weight.get(g, 0.0) + count
    return [g for g, _ in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def _popularity_percentile(facts: ModelFacts) -> np.ndarray:
    """Each item's training popularity as a percentile in [0, 1] (ties share the lower rank)."""
    counts = facts.item_counts
    if len(counts) == 0:
        return np.zeros(0)
    return np.searchsorted(np.sort(counts), counts, side="left") / max(len(counts) - 1, 1)


# ---------------------------------------------------------------- the tables of each view
def served_table(served: pd.DataFrame, facts: ModelFacts, profile: DriftProfile) -> FeatureTable:
    """`requests` rows from served rows (`user_id`, `k`, `item_ids` lists)."""
    users = facts.index(served["user_id"].astype(str).to_numpy(), facts.user_ids)
    activity = _activity_codes(users, facts, profile)
    k = bucket(served["k"].to_numpy(dtype=float), profile.k_edges)
    head = [list(ids)[:HEAD] for ids in served["item_ids"]]
    lengths = np.fromiter((len(h) for h in head), np.int64, len(head))
    flat = facts.index(np.asarray([i for h in head for i in h], dtype=str), facts.item_ids)
    row_of = np.repeat(np.arange(len(head)), lengths)
    known = flat >= 0
    percentile = _popularity_percentile(facts)
    sums = np.bincount(row_of[known], weights=percentile[flat[known]], minlength=len(head))
    counts = np.bincount(row_of[known], minlength=len(head))
    popularity = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    genre_hits = _item_genre_codes(facts, profile.genres)[flat[known]]
    per_row = (
        sp.csr_matrix(
            (np.ones(known.sum(), np.float32), (row_of[known], np.arange(known.sum()))),
            shape=(len(head), int(known.sum())),
        )
        @ genre_hits
    )
    per_row = per_row.toarray()
    # The dominant genre of the list, coded among the leading genres ("other": any other genre,
    # or none).
    dominant = np.where(per_row.sum(axis=1) > 0, per_row.argmax(axis=1), len(profile.genres))
    dominant = _genre_codes(profile)[dominant]
    values = np.column_stack([activity, k, popularity, dominant]).astype(np.float32)
    return _table("requests", values)


def score_table(served: pd.DataFrame) -> FeatureTable:
    """`scores` rows: the top score of each served row that carries scores."""
    tops = [
        float(s[0])
        for s in served.get("scores", pd.Series([], dtype=object))
        if isinstance(s, (list, tuple, np.ndarray)) and len(s) > 0
    ]
    return _table("scores", np.asarray(tops, dtype=np.float32).reshape(-1, 1))


def event_table(events: pd.DataFrame, facts: ModelFacts, profile: DriftProfile) -> FeatureTable:
    """`events` rows from positive feedback events (`user_id`, `item_id`)."""
    items = facts.index(events["item_id"].astype(str).to_numpy(), facts.item_ids)
    counts = np.where(items >= 0, facts.item_counts[np.maximum(items, 0)], 0)
    # Bucket 0 is "new to the model"; known items go to 1.. by their training count.
    popularity = np.where(items >= 0, 1 + bucket(counts, profile.popularity_edges), 0)
    users = facts.index(events["user_id"].astype(str).to_numpy(), facts.user_ids)
    values = np.column_stack([popularity, _activity_codes(users, facts, profile)])
    return _table("events", values.astype(np.float32))


def rating_table(ratings: np.ndarray, profile: DriftProfile) -> FeatureTable:
    """`ratings` rows: each rating's bin."""
    ratings = np.asarray(ratings, dtype=float)
    ratings = ratings[np.isfinite(ratings)]
    return _table(
        "ratings", bucket(ratings, profile.rating_edges).astype(np.float32).reshape(-1, 1)
    )


def _activity_codes(users: np.ndarray, facts: ModelFacts, profile: DriftProfile) -> np.ndarray:
    counts = np.where(users >= 0, facts.user_counts[np.maximum(users, 0)], 0)
    # Unknown users (count 0) fall in the lightest bucket: a trickle of new users is not drift
    # by itself, a flood of them moves that bucket.
    return bucket(counts, profile.activity_edges)


def _table(view: str, values: np.ndarray) -> FeatureTable:
    names, categorical = zip(*VIEWS[view])
    values = np.asarray(values, dtype=np.float32).reshape(-1, len(names))
    return FeatureTable(view, tuple(names), tuple(categorical), values)


# ---------------------------------------------------------------- references
def fit_profile(
    facts: ModelFacts,
    served_users: np.ndarray,
    event_items: np.ndarray,
    ratings: np.ndarray,
    *,
    buckets: int,
    default_k: int = 10,
) -> DriftProfile:
    """Cut points from the reference: activity over the requesting users, popularity over the
    consumed known items, rating bins over the ratings."""
    users = facts.index(served_users, facts.user_ids)
    activity = np.where(users >= 0, facts.user_counts[np.maximum(users, 0)], 0)
    items = facts.index(event_items, facts.item_ids)
    known_counts = facts.item_counts[items[items >= 0]]
    return DriftProfile(
        activity_edges=quantile_edges(activity, buckets),
        popularity_edges=quantile_edges(known_counts, buckets),
        rating_edges=balanced_edges(ratings),
        genres=top_genres(facts),
        default_k=default_k,
    )


def reference_tables(
    model, heldout: pd.DataFrame, *, buckets: int, max_rows: int, default_k: int = 10, seed: int = 0
) -> tuple[DriftProfile, dict[str, FeatureTable]]:
    """The views as serving would have seen them over the held-out period: each held-out
    interaction is a request by its user (answered with `default_k` items, as the model answers
    it) and a consumption event; rated ones are rating events. At most `max_rows` per view,
    drawn at random."""
    rng = np.random.default_rng(seed)
    if len(heldout) > max_rows:
        heldout = heldout.iloc[np.sort(rng.choice(len(heldout), max_rows, replace=False))]
    facts = ModelFacts.from_model(model)
    users = heldout["user_id"].astype(str).to_numpy()
    ratings = heldout["rating"].to_numpy(dtype=float) if "rating" in heldout else np.zeros(0)
    profile = fit_profile(
        facts,
        users,
        heldout["item_id"].astype(str).to_numpy(),
        ratings,
        buckets=buckets,
        default_k=default_k,
    )
    distinct, row_of = np.unique(users, return_inverse=True)
    answers = model.recommend(distinct.tolist(), default_k)
    served = pd.DataFrame(
        {
            "user_id": users,
            "k": default_k,
            "item_ids": [list(r) for r in answers.item_ids[row_of]],
            "scores": [list(r) for r in answers.scores[row_of].astype(float)],
        }
    )
    # A genre that rarely leads a list would be a chi-squared cell with an expected count near
    # zero in a small window, where one or two lists make a "significant" difference: those
    # genres join "other".
    dominant = served_table(served, facts, profile).column("items_genre").astype(int)
    share = np.bincount(dominant, minlength=len(profile.genres) + 1) / max(len(dominant), 1)
    profile.leading_genres = [g for i, g in enumerate(profile.genres) if share[i] >= MIN_BIN_SHARE]
    tables = {
        "requests": served_table(served, facts, profile),
        "scores": score_table(served),
        "events": event_table(heldout, facts, profile),
        "ratings": rating_table(ratings, profile),
    }
    return profile, tables
