"""Planted shifts for the drift benchmark and the end-to-end monitoring test.

Each shift takes a window of held-out interactions (user_id, item_id, rating, timestamp) and
returns the window as it would look after the world changed:

- `segment`: every request comes from one user segment (the quarter of users whose training
  history has the largest share of one genre);
- `new_items`: a share of the consumed items are items the model has never seen;
- `popularity_inverted`: each consumed item is replaced by the item at the mirrored popularity
  rank (the most popular becomes the least popular known item, and so on);
- `ratings_shifted`: every rating moves down by a number of stars (clipped to the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class ShiftContext:
    """What the shifts need, computed once: the segment's users and the popularity mirror."""

    segment_users: np.ndarray
    mirror: dict[str, str]
    rating_min: float
    rating_max: float

    @classmethod
    def build(
        cls, train: pd.DataFrame, items: pd.DataFrame, genre: str = "Comedy", quantile: float = 0.75
    ) -> ShiftContext:
        genres = items.set_index("item_id")["genres"].reindex(train["item_id"]).fillna("")
        share = (
            pd.Series(
                genres.str.contains(genre, regex=False).to_numpy(),
                index=train["user_id"].to_numpy(),
            )
            .groupby(level=0)
            .mean()
        )
        segment = share[share >= share.quantile(quantile)].index.to_numpy(dtype=str)
        counts = train["item_id"].value_counts(sort=False)
        ranked = counts.sort_values(ascending=False, kind="stable").index.to_numpy(dtype=str)
        ratings = train["rating"] if "rating" in train else pd.Series([1.0, 5.0])
        return cls(
            segment, dict(zip(ranked, ranked[::-1])), float(ratings.min()), float(ratings.max())
        )


def segment(
    pool: pd.DataFrame, n: int, ctx: ShiftContext, rng: np.random.Generator
) -> pd.DataFrame:
    """A window drawn only from the segment's held-out interactions."""
    members = pool[pool["user_id"].isin(ctx.segment_users)]
    return members.iloc[rng.choice(len(members), n, replace=len(members) < n)]


def new_items(
    window: pd.DataFrame, ctx: ShiftContext, rng: np.random.Generator, share: float = 0.25
) -> pd.DataFrame:
    window = window.copy()
    flooded = rng.random(len(window)) < share
    window.loc[flooded, "item_id"] = [
        f"new-item-{i}" for i in rng.integers(0, 10**9, flooded.sum())
    ]
    return window


def popularity_inverted(
    window: pd.DataFrame, ctx: ShiftContext, rng: np.random.Generator
) -> pd.DataFrame:
    return window.assign(item_id=[ctx.mirror.get(i, i) for i in window["item_id"]])


def ratings_shifted(
    window: pd.DataFrame, ctx: ShiftContext, rng: np.random.Generator, stars: float = 1.0
) -> pd.DataFrame:
    return window.assign(rating=np.clip(window["rating"] - stars, ctx.rating_min, ctx.rating_max))
