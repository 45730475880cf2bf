"""Evaluate: offline ranking metrics and the champion-challenger comparison.

Accuracy conventions follow the Microsoft Recommenders library (`python_evaluation.py`), so our
figures are comparable with its benchmarks:

- binary relevance: a recommended item is a hit iff it is among the user's held-out items;
- NDCG@k: DCG with a log2(rank + 1) discount over the ideal DCG of min(|relevant|, k) hits
  (Recommenders defaults to a natural-log discount; the base cancels in the ratio);
- precision@k = hits / k, even when fewer than k items were returned (as Spark and Recommenders);
- recall@k = hits / |relevant|;
- MAP@k = Σ precision@rank over hit ranks, divided by min(|relevant|, k): Recommenders'
  `map_at_k` (and Spark's `meanAveragePrecisionAt`). Its other function, `map`, divides by
  |relevant|, which caps a user with more than k held-out items below 1 even for a perfect list;
- MRR: reciprocal rank of the first hit within max(k_values) (0 without a hit), so it does not
  depend on how long a list the caller happened to produce;
- hit_rate@k: share of users with at least one hit in the top k.

Users with no relevant held-out item are left out of every accuracy metric (Recommenders only
scores users present in the ground truth); they still count for coverage, novelty and diversity,
which describe what the system shows rather than whether it was right. A user who has relevant
items but got no recommendation (an all-padding row) is scored 0, where Recommenders would drop
them: failing to recommend must not improve the score. An item repeated within a list counts
once, at its first position; later copies are treated as padding.

Beyond accuracy: coverage@k (distinct items shown / catalogue size), novelty@k (mean
self-information -log2(popularity / training users) over all recommended slots, as
Recommenders' `novelty`), diversity@k (intra-list diversity, mean pairwise 1 - cosine of item
content vectors; not reported, rather than a meaningless 1.0, when no item has a content vector,
as without an items file). Recommenders computes these from pandas frames row by row; here everything is
vectorised over users with numpy/scipy, which is why the metrics are implemented in this module
rather than taken from that library.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

_EPS = 1e-12


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.csr_matrix,
    *,
    k_values: Sequence[int] = (5, 10, 20),
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    item_vectors: sp.csr_matrix | np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, coverage, novelty and diversity of top-k lists for every k in `k_values`.

    `recommended` is [U, K] item indices, best first, -1 for padding; `relevant` is [U, n_items]
    with a nonzero where the item is held out for that user. Returns plain floats keyed
    "ndcg@10", "mrr", ... (novelty only with `item_popularity`, diversity only with
    `item_vectors` that describe at least one item: all-zero vectors would make every list
    look perfectly diverse)."""
    ks = _check_k_values(k_values)
    relevant = _binary(relevant)
    n_items = relevant.shape[1]
    top = _prepare_lists(recommended, n_rows=relevant.shape[0], n_items=n_items, width=ks[-1])
    n_relevant = np.diff(relevant.indptr).astype(np.float64)
    scored = n_relevant > 0
    hits = _hits(top[scored], relevant[scored])
    n_rel = n_relevant[scored]
    described = item_vectors is not None and bool(
        item_vectors.count_nonzero() if sp.issparse(item_vectors) else np.any(item_vectors)
    )
    unit_vectors = _unit_rows(item_vectors, n_items) if described else None
    if item_popularity is not None:
        self_information = _self_information(item_popularity, n_train_users, n_items)

    discount = 1.0 / np.log2(np.arange(2, ks[-1] + 2))
    ideal_prefix = np.concatenate([[0.0], np.cumsum(discount)])
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(axis=1)
        ideal_hits = np.minimum(n_rel, k).astype(np.int64)
        precision_at_rank = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        out[f"ndcg@{k}"] = _mean((h @ discount[:k]) / ideal_prefix[ideal_hits])
        out[f"precision@{k}"] = _mean(n_hits / k)
        out[f"recall@{k}"] = _mean(n_hits / n_rel)
        out[f"map@{k}"] = _mean((precision_at_rank * h).sum(axis=1) / ideal_hits)
        out[f"hit_rate@{k}"] = _mean((n_hits > 0).astype(np.float64))
        shown = top[:, :k]
        out[f"coverage@{k}"] = len(np.unique(shown[shown >= 0])) / n_items if n_items else 0.0
        if item_popularity is not None:
            out[f"novelty@{k}"] = _mean(self_information[shown[shown >= 0]])
        if unit_vectors is not None:
            out[f"diversity@{k}"] = _intra_list_diversity(shown, unit_vectors)
    first_hit_rank = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    out["mrr"] = _mean(1.0 / first_hit_rank)
    return out


def _check_k_values(k_values: Sequence[int]) -> list[int]:
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {list(k_values)!r}")
    return ks


def _binary(relevant: sp.spmatrix | np.ndarray) -> sp.csr_matrix:
    """A canonical 0/1 CSR copy: explicit zeros and duplicate entries would skew |relevant|."""
    matrix = sp.csr_matrix(relevant, dtype=bool, copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix.astype(np.float64)


def _prepare_lists(recommended: np.ndarray, *, n_rows: int, n_items: int, width: int) -> np.ndarray:
    """[U, width] int64: validated, padded or cut to `width`, repeats turned into padding."""
    top = np.array(recommended, dtype=np.int64, copy=True)
    if top.ndim != 2:
        raise ValueError(f"recommended must be 2-D [users, k], got shape {top.shape}")
    if top.shape[0] != n_rows:
        raise ValueError(f"{top.shape[0]} recommendation rows but {n_rows} relevance rows")
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValueError(f"recommended item indices must be in [0, {n_items}) or -1 for padding")
    if top.shape[1] < width:
        top = np.hstack([top, np.full((n_rows, width - top.shape[1]), -1, dtype=np.int64)])
    top = top[:, :width]
    # A stable sort puts each item's first position first among its copies.
    order = np.argsort(top, axis=1, kind="stable")
    ordered = np.take_along_axis(top, order, axis=1)
    repeat_sorted = np.zeros_like(ordered, dtype=bool)
    repeat_sorted[:, 1:] = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    repeat = np.zeros_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    top[repeat] = -1
    return top


def _hits(top: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """[U, K] 1.0 where the recommended item is relevant to that user (padding never is)."""
    hits = np.zeros(top.shape, dtype=np.float64)
    rows, cols = np.nonzero(top >= 0)
    if rows.size:
        hits[rows, cols] = np.asarray(relevant[rows, top[rows, cols]]).ravel()
    return hits


def _mean(values: np.ndarray) -> float:
    # No scored user (or no recommended slot) gives 0 rather than NaN, which JSON cannot carry.
    return float(values.mean()) if values.size else 0.0


def _self_information(
    popularity: np.ndarray, n_train_users: int | None, n_items: int
) -> np.ndarray:
    """-log2(p_i), p_i = training interactions of i / training users; unseen items count once."""
    popularity = np.asarray(popularity, dtype=np.float64).ravel()
    if popularity.shape[0] != n_items:
        raise ValueError(f"item_popularity has {popularity.shape[0]} entries for {n_items} items")
    if not n_train_users or n_train_users < 1:
        raise ValueError("n_train_users (a positive count) is required with item_popularity")
    p = np.minimum(np.maximum(popularity, 1.0) / float(n_train_users), 1.0)
    return -np.log2(p)


def _unit_rows(vectors: sp.spmatrix | np.ndarray, n_items: int) -> sp.csr_matrix | np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (cosine 0 with everything)."""
    if vectors.shape[0] != n_items:
        raise ValueError(f"item_vectors has {vectors.shape[0]} rows for {n_items} items")
    if sp.issparse(vectors):
        matrix = sp.csr_matrix(vectors, dtype=np.float64)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
        return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, _EPS)) @ matrix)
    matrix = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, _EPS)


def _intra_list_diversity(top: np.ndarray, unit: sp.csr_matrix | np.ndarray) -> float:
    """Mean over users (with 2+ items) of the mean pairwise 1 - cosine within their list.

    With unit vectors v, Σ_{i<j} cos(i, j) = (‖Σ v‖² - Σ ‖v‖²) / 2, so one sparse product
    that sums each user's vectors replaces the loop over pairs."""
    valid = top >= 0
    rows = np.nonzero(valid)[0]
    picker = sp.csr_matrix(
        (np.ones(rows.size), (rows, top[valid])), shape=(top.shape[0], unit.shape[0])
    )
    summed = picker @ unit
    if sp.issparse(summed):
        summed_sq = np.asarray(summed.multiply(summed).sum(axis=1)).ravel()
        self_sq = np.asarray(unit.multiply(unit).sum(axis=1)).ravel()
    else:
        summed_sq = np.einsum("ij,ij->i", summed, summed)
        self_sq = np.einsum("ij,ij->i", unit, unit)
    n = valid.sum(axis=1).astype(np.float64)
    pairs = n * (n - 1) / 2
    has_pairs = pairs > 0
    cosine_sum = (summed_sq - picker @ self_sq) / 2
    return _mean(1.0 - cosine_sum[has_pairs] / pairs[has_pairs])


def metrics_by_k(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """{"ndcg": {5: .., 10: ..}, ...} from {"ndcg@5": .., "ndcg@10": ..}.

    Metrics without an @k suffix (mrr) are left out."""
    out: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        base, sep, k = name.partition("@")
        if sep and k.isdigit():
            out.setdefault(base, {})[int(k)] = float(value)
    return {base: dict(sorted(by_k.items())) for base, by_k in out.items()}


@dataclass(frozen=True)
class GateDecision:
    """The champion-challenger verdict, with the numbers behind it."""

    accepted: bool
    primary: str
    challenger_value: float
    champion_value: float
    relative_gain: float
    guardrail_regressions: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def compare_to_champion(
    challenger: Mapping[str, float],
    champion: Mapping[str, float],
    *,
    primary: str,
    margin: float,
    guardrails: Mapping[str, float],
) -> GateDecision:
    """Accept iff the primary metric gains at least `margin` (relative to the champion) and no
    guardrail metric drops by more than its relative tolerance. All metrics are higher-is-better.
    A metric missing (or not a finite number) on either side raises ValueError naming it."""
    for name in (primary, *guardrails):
        for side, values in (("challenger", challenger), ("champion", champion)):
            if name not in values:
                raise ValueError(f"metric {name!r} is missing from the {side}'s results")
            if not math.isfinite(float(values[name])):
                raise ValueError(
                    f"metric {name!r} of the {side} is not a finite number: {values[name]!r}"
                )
    new, old = float(challenger[primary]), float(champion[primary])
    gain = _relative_change(new, old)
    regressions = {
        name: -_relative_change(float(challenger[name]), float(champion[name]))
        for name in guardrails
    }
    regressions = {name: drop for name, drop in regressions.items() if drop > guardrails[name]}
    accepted = gain >= margin and not regressions
    return GateDecision(
        accepted, primary, new, old, gain, regressions,
        _reason(primary, new, old, gain, margin, regressions, guardrails),
    )


def _relative_change(new: float, old: float) -> float:
    return (new - old) / max(old, _EPS)


def _reason(
    primary: str, new: float, old: float, gain: float, margin: float,
    regressions: Mapping[str, float], guardrails: Mapping[str, float],
) -> str:
    head = f"{primary} is {new:.4f} against the champion's {old:.4f} ({gain:+.1%})"
    drops = ", ".join(
        f"{name} dropped {drop:.1%} (tolerance {guardrails[name]:.1%})"
        for name, drop in regressions.items()
    )
    if gain >= margin and not regressions:
        return f"Accepted: {head}, meeting the {margin:+.1%} margin with no guardrail regression."
    if gain >= margin:
        return f"Refused: {head} meets the {margin:+.1%} margin, but {drops}."
    if regressions:
        return f"Refused: {head} is short of the {margin:+.1%} margin, and {drops}."
    return f"Refused: {head} is short of the {margin:+.1%} margin."
