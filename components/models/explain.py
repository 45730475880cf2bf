"""Faithful explanations of the two-stage model's answers: why each item, why in that place.

Every figure is computed from the quantities the answer was made of, never estimated:

- **because**: the history items behind an item, from one generator's score of it. The
  item-item models (EASE, sequence EASE) score an item as the sum over the history of their
  weights B[h, i], so each history item's contribution is its weight, and they sum to the
  score exactly. ALS scores y_i·x_u with the user step x_u = W·c·Σ_j y_j, W = (YᵀY + λI +
  (c-1)·Y_uᵀY_u)⁻¹ (`components.models.als`), so history item j contributes c·y_iᵀW y_j, as
  `implicit`'s `explain` splits it; the contributions sum to the user step's score (which is
  the served score when the history changed or the user is new, and within the last training
  sweep's change of it for a training user, whose learned factors serve). Content scores the
  cosine of the item with the normalised sum of the history's vectors, so item j contributes
  v_i·v_j / ‖Σ v‖, summing to the score exactly. Items from the real-time history count like
  training history and are marked `fresh`.

  Which generator explains an item: among the history-based generators (EASE, sequence EASE,
  ALS, content) that proposed it, the one with the best rank, EASE first on a tie (its
  attributions are exact); if none proposed it, EASE when present, else the first of the others
  the model has. Without a ranker, the generator that orders the answer, if it is history-based.
  `share` is a contribution over the sum of the absolute contributions of the whole history.

- **ranker**: LightGBM's own SHAP values (`pred_contrib`) of the item's feature row, the row
  the served answer was ranked on (`TwoStageRecommender.one_user_candidates`), summed by
  feature group (`feature_group`); bias plus the groups is the ranker's raw score.

- **versus_next**: this item's group contributions minus the next item's: the ranker's score
  means something only against the other items of the same list.

Cold-start answers (no history) are the popularity order; similar-item answers give the
shared genres and the similarity `similar_items` ranks by.
"""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg.lapack import dposv

from components.models.features import Candidates
from components.models.two_stage import TwoStageRecommender

# The history-based generators, in the order that breaks a tie between equal ranks.
HISTORY_GENERATORS = ("ease", "seq_ease", "als", "content")
# The ranker's feature groups, in the order answers list them.
FEATURE_GROUPS = (
    "generator scores", "generator ranks", "popularity", "recency", "genre overlap",
    "user activity", "timing", "year", "rating", "other",
)
_GROUP_OF_FEATURE = {
    "item_log_share": "popularity",
    "item_share_over_user_mean": "popularity",
    "item_days_since_last_seen": "recency",
    "user_genre_overlap": "genre overlap",
    "user_log_activity": "user activity",
    "user_item_days_apart": "timing",
    "item_first_seen_after_user_last_days": "timing",
    "item_last_seen_before_user_first_days": "timing",
    "item_year": "year",
    "item_year_over_user_mean": "year",
    "item_mean_rating": "rating",
}


def feature_group(name: str) -> str:
    """The group of one ranker feature: a generator's standardised and relative scores
    (`<generator>_z`, `_relative`) are "generator scores", its rank "generator ranks"."""
    if name in _GROUP_OF_FEATURE:
        return _GROUP_OF_FEATURE[name]
    if name.endswith("_rank"):
        return "generator ranks"
    if name.endswith(("_z", "_relative")):
        return "generator scores"
    return "other"


# ----------------------------------------------------------------- attributions
def ease_contributions(gen, seen: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[len(seen), len(items)] EASE weights B[h, i]: what each history item adds to each
    item's score (0 for items without support, which EASE scores 0)."""
    weights = gen.weights_
    if not isinstance(weights, np.ndarray):  # pruned sparse weights in catalogue indices
        return weights[seen][:, items].toarray().astype(np.float64)
    column = np.full(gen.n_items_, -1, dtype=np.int64)
    column[gen.items_] = np.arange(len(gen.items_))
    rows, cols = column[seen], column[items]
    out = np.zeros((len(seen), len(items)))
    out[np.ix_(rows >= 0, cols >= 0)] = weights[np.ix_(rows[rows >= 0], cols[cols >= 0])]
    return out


def als_contributions(gen, seen: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[len(seen), len(items)] c·y_iᵀW y_j of the ALS user step on this history (as
    `AlsModel.user_factors` solves it): they sum, over the history, to y_i·x_u."""
    y = gen.item_factors64_
    picked = y[seen]
    a = gen.gram_ + (gen.alpha - 1.0) * (picked.T @ picked)
    targets = np.ascontiguousarray(y[items].T)
    _, w_items, info = dposv(a, targets)  # W y_i, [f, len(items)] (W is symmetric)
    if info != 0:  # as `AlsModel.user_factors`: the general solver where Cholesky fails
        w_items = np.linalg.solve(a, targets)
    return gen.alpha * (picked @ w_items)


def content_contributions(gen, seen: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[len(seen), len(items)] v_i·v_j / ‖Σ_j v_j‖: the share of each history item in the
    cosine of each item with the history's profile."""
    if gen.item_embeddings_ is not None:
        vectors = gen.item_embeddings_.astype(np.float64)
        norm = np.linalg.norm(vectors[seen].sum(axis=0))
        return vectors[seen] @ vectors[items].T / max(norm, 1e-12)
    vectors = gen.item_vectors_
    norm = np.linalg.norm(np.asarray(vectors[seen].sum(axis=0), dtype=np.float64))
    return (vectors[seen] @ vectors[items].T).toarray().astype(np.float64) / max(norm, 1e-12)


def history_contributions(model: TwoStageRecommender, name: str, seen: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[len(seen), len(items)] each history item's contribution to generator `name`'s score."""
    gen = model.generators_[name]
    if name in ("ease", "seq_ease"):
        return ease_contributions(gen, seen, items)
    if name == "als":
        return als_contributions(gen, seen, items)
    if name == "content":
        return content_contributions(gen, seen, items)
    raise ValueError(f"generator {name!r} has no history attribution")


@functools.lru_cache(maxsize=16)
def group_columns(names: tuple[str, ...]) -> tuple[tuple[str, np.ndarray], ...]:
    """(group, column indices) of the ranker's features, in `FEATURE_GROUPS` order."""
    groups = [feature_group(name) for name in names]
    found = ((g, np.flatnonzero(np.asarray(groups) == g)) for g in FEATURE_GROUPS)
    return tuple((g, columns) for g, columns in found if len(columns))


def ranker_contributions(model: TwoStageRecommender, features: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(bias [n], group -> [n] contributions) of the ranker's raw scores of `features`:
    LightGBM's `pred_contrib` (TreeSHAP), summed per `feature_group`. One thread: at an
    answer's ten rows, starting OpenMP threads costs more than the trees."""
    contrib = np.asarray(model.ranker_.predict(features, pred_contrib=True, num_threads=1), dtype=np.float64)
    columns = group_columns(tuple(model.ranker_.feature_name()))
    return contrib[:, -1], {group: contrib[:, at].sum(axis=1) for group, at in columns}


# --------------------------------------------------------------------- helpers
@dataclass
class _Request:
    """One user's answer being explained, in index space."""

    model: TwoStageRecommender
    seen: np.ndarray  # sorted history item indices
    fresh: set[int]  # history items from the real-time history
    items: np.ndarray  # the answer's item indices, in order
    titles: np.ndarray  # [n_items] str


def _lookup(model: TwoStageRecommender, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(catalogue index of each id, whether it is in the catalogue), in order."""
    ids = model.data_.item_ids  # sorted (np.unique)
    wanted = np.asarray([str(i) for i in item_ids], dtype=str)
    if not len(ids) or not len(wanted):
        return np.zeros(len(wanted), np.int64), np.zeros(len(wanted), bool)
    at = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
    return at.astype(np.int64), ids[at] == wanted


def item_indices(model: TwoStageRecommender, item_ids: Sequence[str]) -> np.ndarray:
    """Catalogue index of each id, in order; a ValueError naming the first unknown one."""
    at, known = _lookup(model, item_ids)
    if not known.all():
        raise ValueError(f"item {str(item_ids[int(np.argmin(known))])!r} is not in the model's catalogue")
    return at


def _known_set(model: TwoStageRecommender, item_ids: Sequence[str]) -> set[int]:
    at, known = _lookup(model, item_ids)
    return set(at[known].tolist())


def _titles(model: TwoStageRecommender) -> np.ndarray:
    """[n_items] titles ("" if unknown: `base.item_metadata` filled them), without a copy."""
    return model.data_.items["title"].to_numpy()


def because_generator(model: TwoStageRecommender, proposed: dict[str, int]) -> str | None:
    """The generator whose score explains an item (`proposed`: generator -> rank of the
    item in its list), by the rule in the module docstring."""
    present = [name for name in HISTORY_GENERATORS if name in model.generators_]
    if model.ranker_ is None and model.ranked_by in present:
        return model.ranked_by
    by_rank = sorted((rank, HISTORY_GENERATORS.index(name), name) for name, rank in proposed.items() if name in present)
    if by_rank:
        return by_rank[0][2]
    return present[0] if present else None


def because_list(req: _Request, contributions: np.ndarray, generator: str, top: int) -> list[dict]:
    """The `top` largest positive contributions of one item ([len(seen)]), largest first
    (ties by item index), with their share of the history's absolute total."""
    total = float(np.abs(contributions).sum())
    order = np.lexsort((req.seen, -contributions))
    out = []
    for j in order[:top]:
        if contributions[j] <= 0:
            break
        item = int(req.seen[j])
        out.append({
            "item_id": str(req.model.data_.item_ids[item]), "title": str(req.titles[item]),
            "contribution": float(contributions[j]), "share": float(contributions[j]) / total if total else 0.0,
            "fresh": item in req.fresh, "generator": generator,
        })
    return out


def _versus_next(items: list[dict], whole_difference: str | None = None) -> None:
    """Fills each item's `versus_next`: its ranker groups minus the next item's (or, where
    the order is one score's, the whole difference under `whole_difference`); None for the last."""
    for this, nxt in itertools.pairwise(items):
        if this["score"] is None or nxt["score"] is None:  # a history item: nothing to compare
            continue
        difference = this["score"] - nxt["score"]
        groups = {} if whole_difference is None else {whole_difference: difference}
        if this["ranker"] is not None and nxt["ranker"] is not None:
            groups = {g: this["ranker"]["groups"][g] - nxt["ranker"]["groups"][g] for g in this["ranker"]["groups"]}
        this["versus_next"] = {"item_id": nxt["item_id"], "difference": difference, "groups": groups}
    if items:
        items[-1]["versus_next"] = None


def _item(req: _Request, rank: int, score: float) -> dict:
    item = int(req.items[rank - 1])
    return {
        "item_id": str(req.model.data_.item_ids[item]), "title": str(req.titles[item]), "rank": rank,
        "score": float(score), "because": [], "because_generator": None, "because_score": None,
        "generators": [], "ranker": None, "versus_next": None,
    }


def _proposers(
    model: TwoStageRecommender,
    ranks: dict[str, int],  # generator -> 0-based rank of the item in its order
    scores: dict[str, np.ndarray],
    item: int,
    listed: Callable[[str, int], bool],
) -> list[dict]:
    """The generators `listed` keeps, best rank first (ties in the model's generator order),
    each with its 1-based rank and its score of the item."""
    order = list(model.generators_)
    return [
        {"name": g, "rank": r + 1, "score": float(scores[g][item])}
        for g, r in sorted(ranks.items(), key=lambda kv: (kv[1], order.index(kv[0])))
        if listed(g, r)
    ]


# ----------------------------------------------------------------- explanations
def explain_recommendations(
    model: TwoStageRecommender,
    user_id: str,
    item_ids: Sequence[str],
    history_item_ids: Sequence[str] | None = None,
    fresh_item_ids: Sequence[str] = (),
    top_because: int = 3,
) -> dict:
    """Why `model.recommend([user_id], history_item_ids=[history_item_ids])` answered
    `item_ids` in that order (see the module docstring and docs/architecture.md)."""
    user, seen = model.one_user_history(str(user_id), history_item_ids)
    req = _Request(
        model, seen, _known_set(model, fresh_item_ids) & set(seen.tolist()),
        item_indices(model, item_ids), _titles(model),
    )
    if not len(seen):
        return _cold_start(req, str(user_id))
    scores, cand = model.one_user_candidates(user, seen)
    items = _ranked_items(req, scores, cand) if model.ranker_ is not None else _generator_items(req, scores)
    _mark_history(req, items)
    _add_because(req, items, top_because)
    _versus_next(items, None if model.ranker_ is not None else "generator scores")
    return {"user_id": str(user_id), "kind": "personal", "reason": None, "items": items}


def _ranked_items(req: _Request, scores: dict[str, np.ndarray], cand: Candidates) -> list[dict]:
    """The answer's items with the ranker's score, its group contributions and the generators
    that proposed each (their rank from the very feature row the ranker saw)."""
    model = req.model
    row = np.minimum(np.searchsorted(cand.items, req.items), max(len(cand.items) - 1, 0))
    is_candidate = cand.items[row] == req.items if len(cand.items) else np.zeros(len(req.items), bool)
    features = cand.features[row[is_candidate]]
    raw = model.rank_scores(features) if len(features) else np.zeros(0)
    bias, groups = ranker_contributions(model, features) if len(features) else (np.zeros(0), {})
    names = model.ranker_.feature_name()
    listed = min(model.config.ranker.candidates_per_generator, model.data_.n_items)
    fallback = model.fallback_scores()
    out, at = [], 0
    for rank, item in enumerate(req.items, start=1):
        if not is_candidate[rank - 1]:  # no generator proposed it: the popularity fill
            out.append(_item(req, rank, float(fallback[item])))
            continue
        entry = _item(req, rank, float(raw[at]))
        entry["ranker"] = {
            "bias": float(bias[at]), "raw_score": float(raw[at]),
            "groups": {g: float(v[at]) for g, v in groups.items()},
        }
        ranks = {g: int(features[at, names.index(f"{g}_rank")]) for g in model.generators_ if f"{g}_rank" in names}
        entry["generators"] = _proposers(model, ranks, scores, int(item), lambda g, r: r < listed)
        out.append(entry)
        at += 1
    return out


def _generator_items(req: _Request, scores: dict[str, np.ndarray]) -> list[dict]:
    """The answer's items of a model without a ranker: the serving generator's score, and each
    generator's rank of the item among the unseen items (those within their candidate lists)."""
    model = req.model
    unseen = np.ones(model.data_.n_items, dtype=bool)
    unseen[req.seen] = False
    listed = min(model.config.ranker.candidates_per_generator, model.data_.n_items)
    out = []
    for rank, item in enumerate(req.items, start=1):
        entry = _item(req, rank, float(scores[model.ranked_by][item]))
        ranks = {g: int((s[unseen] > s[item]).sum()) for g, s in scores.items()}
        entry["generators"] = _proposers(model, ranks, scores, int(item), lambda g, r: r < listed or g == model.ranked_by)
        out.append(entry)
    return out


def _mark_history(req: _Request, items: list[dict]) -> None:
    """An answer longer than the unseen catalogue ends with history items, scored -inf by
    `recommend`: their score is null and they are marked `in_history`, unexplained."""
    seen = set(req.seen.tolist())
    for entry, item in zip(items, req.items):
        if int(item) in seen:
            entry.update(score=None, generators=[], ranker=None, in_history=True)


def _add_because(req: _Request, items: list[dict], top: int) -> None:
    """Fills each item's `because` from its generator (`because_generator`), computing each
    generator's attributions once for all the items it explains."""
    chosen = [
        None if entry.get("in_history") else because_generator(req.model, {g["name"]: g["rank"] for g in entry["generators"]})
        for entry in items
    ]
    for name in sorted({c for c in chosen if c is not None}):
        at = [i for i, c in enumerate(chosen) if c == name]
        contributions = history_contributions(req.model, name, req.seen, req.items[at])
        for column, i in enumerate(at):
            items[i]["because"] = because_list(req, contributions[:, column], name, top)
            items[i]["because_generator"] = name
            items[i]["because_score"] = float(contributions[:, column].sum())


def _cold_start(req: _Request, user_id: str) -> dict:
    """A user with no history gets the popularity order, on the served scale."""
    model = req.model
    popularity = model.stats_.log_popularity
    served = model.cold_start_scores(popularity)
    items = []
    for rank, item in enumerate(req.items, start=1):
        entry = _item(req, rank, float(served[item]))
        entry["generators"] = [{
            "name": "popularity", "rank": int((popularity > popularity[item]).sum()) + 1,
            "score": float(popularity[item]),
        }]
        items.append(entry)
    _versus_next(items, "popularity")
    return {"user_id": user_id, "kind": "cold_start", "reason": "most popular", "items": items}


def _genres(model: TwoStageRecommender, item: int) -> list[str]:
    return [g for g in str(model.data_.items["genres"].iloc[item] or "").split("|") if g]


def explain_similar(model: TwoStageRecommender, item_id: str, item_ids: Sequence[str]) -> dict:
    """Why `item_ids` are similar to `item_id`: the similarity `similar_items` ranks by
    (`similarity_measure`) and the genres each shares with it."""
    source = item_indices(model, [item_id])[0]
    items = item_indices(model, item_ids)
    titles = _titles(model)
    sims = model.similarity_rows(np.array([source]))[0]
    own = _genres(model, source)
    out = []
    for rank, item in enumerate(items, start=1):
        theirs = set(_genres(model, item))
        out.append({
            "item_id": str(model.data_.item_ids[item]), "title": str(titles[item]), "rank": rank,
            "score": float(sims[item]), "similarity": float(sims[item]),
            "shared_genres": [g for g in own if g in theirs],
            "because": [], "generators": [], "ranker": None, "versus_next": None,
        })
    _versus_next(out, "similarity")
    return {
        "user_id": None, "item_id": str(model.data_.item_ids[source]), "kind": "similar",
        "reason": f"similar to {titles[source]}", "measure": model.similarity_measure, "items": out,
    }
