"""Synthetic interactions shaped like MovieLens 25M, with the true preferences they came from.

MovieLens 25M has 25,000,095 ratings by 162,541 users of 62,423 movies: item popularity is
Zipf-like, user activity heavy-tailed (at least 20 ratings each, a few users with thousands),
and every rating has a timestamp. `movielens_like` draws data of that shape at any size (users
grow with the data, the catalogue with its square root, both anchored at 25M) from a planted
topic model, so a model's quality can be measured against the truth instead of against a
held-out sample of it:

    p(i | u) = w_i · Σ_k θ_uk φ_ik / Z_k,   Z_k = Σ_j w_j φ_jk

θ_u (a user's mix of tastes) and φ_i (an item's mix of topics) are sparse Dirichlet draws, w_i a
Zipf popularity weight. Each interaction picks a topic from θ_u, then an item from that topic in
proportion to w_i φ_ik; a user's items are distinct. `truth_quality` scores top-k lists by the
true p(i | u) of the items shown against the best k the user has not interacted with (the
oracle's list), so 1.0 means "exactly what the generator would have picked".

The small `synthetic` built-in (`components.data.ingest.synthetic_dataset`) is unchanged; this module
is for scale: everything is vectorised over users and topics, and 25M rows take about a minute.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

ML25M_INTERACTIONS, ML25M_USERS, ML25M_ITEMS = 25_000_095, 162_541, 62_423
MIN_USER_INTERACTIONS = 20  # MovieLens keeps users with at least 20 ratings
_START, _END = 946_684_800, 1_577_836_800  # 2000-01-01 and 2020-01-01, Unix seconds


def movielens_shape(n_interactions: int) -> tuple[int, int]:
    """(users, items) for data of this size: MovieLens 25M's ratios, users growing with the
    data and the catalogue with its square root (1M: 6,502 x 12,485; 5M: 32,508 x 27,917)."""
    scale = n_interactions / ML25M_INTERACTIONS
    users = max(round(ML25M_USERS * scale), 10)
    items = max(round(ML25M_ITEMS * float(np.sqrt(scale))), 20)
    return users, items


@dataclass(frozen=True)
class PlantedTruth:
    """The parameters the interactions were drawn from (indices follow `u<row>` / `m<row>`)."""

    user_topics: np.ndarray  # [n_users, K] float32, rows sum to 1 (θ)
    item_topics: np.ndarray  # [n_items, K] float32, rows sum to 1 (φ)
    item_weight: np.ndarray  # [n_items] float64 Zipf popularity (w)

    @property
    def topic_item_matrix(self) -> np.ndarray:
        """[n_items, K] w_i φ_ik / Z_k: p(i | topic k)."""
        weighted = self.item_topics * self.item_weight[:, None]
        return (weighted / weighted.sum(axis=0, keepdims=True)).astype(np.float32)

    def preference(self, users: np.ndarray) -> np.ndarray:
        """[len(users), n_items] float32 p(i | u) for user rows."""
        return self.user_topics[users] @ self.topic_item_matrix.T


def movielens_like(
    n_interactions: int = ML25M_INTERACTIONS,
    *,
    n_users: int | None = None,
    n_items: int | None = None,
    n_topics: int = 24,
    seed: int = 42,
) -> tuple[pd.DataFrame, pd.DataFrame, PlantedTruth]:
    """Interactions (`user_id`, `item_id`, `rating`, `timestamp`), items (`item_id`, `title`,
    `genres`, `year`) and the truth they were drawn from. Ids are `u<row>` and `m<row>`."""
    default_users, default_items = movielens_shape(n_interactions)
    n_users, n_items = n_users or default_users, n_items or default_items
    rng = np.random.default_rng(seed)
    truth = PlantedTruth(
        user_topics=rng.dirichlet(np.full(n_topics, 0.15), n_users).astype(np.float32),
        item_topics=rng.dirichlet(np.full(n_topics, 0.08), n_items).astype(np.float32),
        item_weight=rng.permutation(_zipf_mandelbrot(n_items)),
    )
    activity = _user_activity(n_users, n_items, n_interactions, rng)
    users, items = _draw_distinct(truth, activity, rng)
    order = np.lexsort((rng.random(len(users)), users))
    users, items = users[order], items[order]
    inter = pd.DataFrame({
        "user_id": _ids("u", users),
        "item_id": _ids("m", items),
        "rating": _ratings(truth, users, items, rng),
        "timestamp": _timestamps(users, activity, n_users, rng),
    })
    return inter, _item_frame(truth, rng), truth


def _zipf_mandelbrot(n_items: int, exponent: float = 2.0, offset: float = 250.0) -> np.ndarray:
    """Popularity weight of rank r: (r + offset)^-exponent. MovieLens 25M's most rated movie
    has 0.3% of the ratings and its median movie a handful; a plain Zipf law cannot give both
    (with exponent 1 the tail is too fat, with more the head takes more than every user), the
    offset flattens the head: the top item gets about 1/offset of the draws at any size."""
    return (np.arange(1, n_items + 1) + offset) ** -exponent


def _user_activity(n_users: int, n_items: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: at least 20, a lognormal tail, summing to `total`."""
    floor = min(MIN_USER_INTERACTIONS, max(total // n_users, 1))
    extra = rng.lognormal(0.0, 1.3, n_users)
    counts = floor + np.floor(extra / extra.sum() * max(total - floor * n_users, 0)).astype(np.int64)
    counts = np.minimum(counts, n_items // 2)
    short = total - counts.sum()  # what rounding and the cap left out, given to random users
    if short > 0:
        room = n_items // 2 - counts
        picked = rng.choice(n_users, int(short), p=room / room.sum())
        counts += np.minimum(np.bincount(picked, minlength=n_users), room)
    return counts


def _draw_distinct(
    truth: PlantedTruth, activity: np.ndarray, rng: np.random.Generator, rounds: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's `activity` distinct items, topic first then item within the topic. Repeats
    are dropped and the shortfall drawn again; what heavy users in narrow tastes cannot reach
    goes to users who reached theirs, so the total is met to within a few rows. `activity` is
    updated in place to what each user got."""
    n_users, n_topics = truth.user_topics.shape
    n_items = truth.item_topics.shape[0]
    cdf = np.cumsum(truth.topic_item_matrix.T.astype(np.float64), axis=1)  # [K, n_items]
    cdf /= cdf[:, -1:]
    theta = truth.user_topics.astype(np.float64)
    # Scaled a hair below 1: multinomial refuses rows whose first K-1 entries round above 1.
    theta /= theta.sum(axis=1, keepdims=True) * (1.0 + 1e-9)
    keys = np.zeros(0, dtype=np.int64)
    for attempt in range(2):
        need = activity.astype(np.int64)
        for _ in range(rounds):
            topics = rng.multinomial(need, theta)
            new = [keys]
            for k in range(n_topics):  # a loop over topics, not interactions
                users = np.repeat(np.arange(n_users, dtype=np.int64), topics[:, k])
                items = np.searchsorted(cdf[k], rng.random(len(users)), side="right")
                new.append(users * n_items + np.minimum(items, n_items - 1))
            keys = np.unique(np.concatenate(new))
            have = np.bincount(keys // n_items, minlength=n_users)
            if (have >= activity).all():
                break
            # A little more than missing: heavy users draw items they already hold.
            need = np.where(have < activity, np.ceil((activity - have) * 1.2).astype(np.int64), 0)
        short = np.maximum(activity - have, 0)
        if attempt or short.sum() == 0:
            break
        full = (short == 0) & (activity < n_items // 2)
        activity -= short
        activity += rng.multinomial(short.sum(), full * activity / (full * activity).sum())
    users, items = keys // n_items, keys % n_items
    rank = _rank_within(users, rng.random(len(users)))
    keep = rank < activity[users]  # surplus items dropped at random
    np.minimum(activity, np.bincount(users, minlength=n_users), out=activity)
    return users[keep], items[keep]


def _rank_within(groups: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Each row's place within its group in `key` order (groups sorted ascending)."""
    order = np.lexsort((key, groups))
    starts = np.searchsorted(groups[order], groups[order], side="left")
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - starts
    return rank


def _ids(prefix: str, rows: np.ndarray) -> pd.Series:
    names = np.char.add(prefix, np.arange(rows.max(initial=0) + 1).astype(str)).astype(object)
    return pd.Series(names[rows])


def _ratings(truth: PlantedTruth, users: np.ndarray, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half-star ratings that rise with taste match (Σ_k θ_uk φ_ik), as MovieLens ratings do."""
    match = np.zeros(len(users), dtype=np.float32)
    for start in range(0, len(users), 1 << 21):
        part = slice(start, start + (1 << 21))
        match[part] = np.einsum("nk,nk->n", truth.user_topics[users[part]], truth.item_topics[items[part]])
    raw = 2.0 + 5.0 * np.sqrt(match) + rng.normal(0.0, 0.8, len(users))
    return np.clip(np.round(raw * 2) / 2, 0.5, 5.0)


def _timestamps(users: np.ndarray, activity: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Each user is active over a window (longer for heavier users) somewhere in 2000-2020."""
    span = np.minimum((_END - _START) * 0.02 * np.sqrt(activity / MIN_USER_INTERACTIONS), _END - _START)
    start = _START + rng.random(n_users) * (_END - _START - span)
    times = start[users] + rng.random(len(users)) * span[users]
    return times.astype(np.int64)


def _item_frame(truth: PlantedTruth, rng: np.random.Generator) -> pd.DataFrame:
    n_items, n_topics = truth.item_topics.shape
    strong = truth.item_topics >= 0.25  # an item's genres: the topics that make a quarter of it
    strong[np.arange(n_items), truth.item_topics.argmax(axis=1)] = True
    names = np.array([f"Genre{k}" for k in range(n_topics)], dtype=object)
    rows, cols = np.nonzero(strong)
    genres = pd.Series(names[cols]).groupby(rows).agg("|".join)
    return pd.DataFrame({
        "item_id": _ids("m", np.arange(n_items)),
        "title": [f"Movie {i}" for i in range(n_items)],
        "genres": genres.reindex(np.arange(n_items), fill_value="").to_numpy(),
        "year": rng.integers(1920, 2020, n_items),
    })


def truth_quality(
    recommended: np.ndarray, users: np.ndarray, seen: sp.csr_matrix, truth: PlantedTruth, k: int = 10
) -> dict[str, float]:
    """How close top-k lists come to the generator's own choice, for truth user rows `users`.

    `recommended` is [U, >=k] truth item rows (-1: nothing), `seen` the users' training items
    ([U, n_items]), which neither list may contain. truth_ndcg@k: DCG of the lists with the true
    p(i | u) as gains, over the DCG of the oracle's best k unseen items; truth_overlap@k: the
    share of the oracle's top k that the list holds."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg, overlap = [], []
    for start in range(0, len(users), 1024):
        rows = slice(start, start + 1024)
        pref = truth.preference(users[rows]).astype(np.float64)
        pref[seen[rows].nonzero()] = -np.inf  # items a user has are not recommendable
        oracle = np.argpartition(-pref, k - 1, axis=1)[:, :k]
        ideal = -np.sort(-np.take_along_axis(pref, oracle, axis=1), axis=1) @ discount
        top = recommended[rows, :k]
        gains = np.where(top >= 0, np.take_along_axis(pref, np.maximum(top, 0), axis=1), 0.0)
        gains = np.where(np.isfinite(gains), gains, 0.0)  # a seen item shown gains nothing
        ndcg.append((gains @ discount) / ideal)
        hit = (top[:, :, None] == oracle[:, None, :]).any(axis=2)
        overlap.append(hit.sum(axis=1) / k)
    return {f"truth_ndcg@{k}": float(np.concatenate(ndcg).mean()),
            f"truth_overlap@{k}": float(np.concatenate(overlap).mean())}
