"""Evaluate: offline ranking metrics and the champion-challenger comparison.

Conventions follow the Microsoft Recommenders library (`python_evaluation.py`), so figures are
comparable with its benchmark: binary relevance; NDCG@k with a log2(rank+1) discount and the
ideal DCG over min(|relevant|, k) hits; precision@k divides by k (not by the number of items
returned); recall@k by |relevant|; MAP@k averages precision at each hit over min(|relevant|, k).
Users with no relevant held-out item are left out of the accuracy metrics (they carry no
signal) but count for coverage. Everything is vectorised over users.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


def _hits(recommended: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """[U, K] 1.0 where the recommended item is relevant to that user (padding -1 never is)."""
    rows = np.repeat(np.arange(recommended.shape[0]), recommended.shape[1])
    cols = recommended.ravel()
    valid = cols >= 0
    hits = np.zeros(rows.shape[0], dtype=np.float64)
    hits[valid] = np.asarray(relevant[rows[valid], cols[valid]]).ravel() > 0
    return hits.reshape(recommended.shape)


def ranking_metrics(
    recommended: np.ndarray,
    relevant: sp.csr_matrix,
    *,
    k_values: Sequence[int] = (5, 10, 20),
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    item_vectors: sp.csr_matrix | np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy, coverage, novelty and diversity of top-k lists, for every k in `k_values`."""
    recommended = np.asarray(recommended, dtype=np.int64)
    relevant = sp.csr_matrix(relevant)
    if recommended.shape[0] != relevant.shape[0]:
        raise ValueError(f"{recommended.shape[0]} recommendation rows but {relevant.shape[0]} relevance rows")
    max_k = max(k_values)
    if recommended.shape[1] < max_k:
        pad = np.full((recommended.shape[0], max_k - recommended.shape[1]), -1, dtype=np.int64)
        recommended = np.hstack([recommended, pad])
    recommended = recommended[:, :max_k]
    n_relevant = np.diff(relevant.indptr).astype(np.float64)
    evaluated = n_relevant > 0
    hits_all = _hits(recommended, relevant)
    hits, n_rel = hits_all[evaluated], n_relevant[evaluated]
    discount = 1.0 / np.log2(np.arange(2, max_k + 2))
    out: dict[str, float] = {}
    for k in sorted(k_values):
        h = hits[:, :k]
        dcg = (h * discount[:k]).sum(axis=1)
        ideal_cut = np.minimum(n_rel, k).astype(int)
        idcg = np.concatenate([[0.0], np.cumsum(discount[:k])])[ideal_cut]
        precision_at = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        out[f"ndcg@{k}"] = _mean(dcg / np.maximum(idcg, 1e-12))
        out[f"precision@{k}"] = _mean(h.sum(axis=1) / k)
        out[f"recall@{k}"] = _mean(h.sum(axis=1) / n_rel)
        out[f"map@{k}"] = _mean((precision_at * h).sum(axis=1) / np.maximum(ideal_cut, 1))
        out[f"hit_rate@{k}"] = _mean((h.sum(axis=1) > 0).astype(float))
        top = recommended[:, :k]
        out[f"coverage@{k}"] = float(len(np.unique(top[top >= 0])) / relevant.shape[1])
        if item_popularity is not None:
            out[f"novelty@{k}"] = _novelty(top, item_popularity, n_train_users)
        if item_vectors is not None:
            out[f"diversity@{k}"] = _diversity(top, item_vectors)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, np.inf)
    out["mrr"] = _mean(1.0 / first_hit)
    return out


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


def _novelty(top: np.ndarray, popularity: np.ndarray, n_users: int | None) -> float:
    """Mean self-information -log2(p_i) of recommended items, p_i = training users of i / users."""
    valid = top >= 0
    if not valid.any():
        return 0.0
    pop = np.maximum(np.asarray(popularity, dtype=np.float64)[top[valid]], 1.0)
    total = float(n_users) if n_users else float(np.max(popularity))
    return float(np.mean(-np.log2(np.minimum(pop / total, 1.0))))


def _diversity(top: np.ndarray, vectors: sp.csr_matrix | np.ndarray) -> float:
    """Intra-list diversity: mean over users of the mean pairwise (1 - cosine) in the list.

    With unit vectors, Σ_{i<j} cos(i, j) = (‖Σ v‖² - Σ ‖v‖²) / 2: no loop over pairs."""
    vectors = sp.csr_matrix(vectors, dtype=np.float64)
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    unit = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ vectors
    scores = []
    valid = top >= 0
    n = valid.sum(axis=1)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])[valid.ravel()]
    picker = sp.csr_matrix(
        (np.ones(len(rows)), (rows, top[valid])), shape=(top.shape[0], vectors.shape[0])
    )
    summed = picker @ unit
    sq_sum = np.asarray(summed.multiply(summed).sum(axis=1)).ravel()
    self_sq = picker @ np.asarray(unit.multiply(unit).sum(axis=1)).ravel()
    pairs = n * (n - 1) / 2
    ok = pairs > 0
    cos_sum = (sq_sum - self_sq) / 2
    scores = 1.0 - cos_sum[ok] / pairs[ok]
    return _mean(scores)


def metrics_by_k(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """{"ndcg": {5: .., 10: ..}, ...} from {"ndcg@5": .., "ndcg@10": ..}."""
    out: dict[str, dict[int, float]] = {}
    for name, value in metrics.items():
        if "@" in name:
            base, k = name.split("@", 1)
            out.setdefault(base, {})[int(k)] = value
    return {base: dict(sorted(values.items())) for base, values in out.items()}


@dataclass(frozen=True)
class GateDecision:
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
    """Accept iff the primary metric gains at least `margin` (relative) and no guardrail metric
    drops by more than its tolerance (relative)."""
    for name in (primary, *guardrails):
        for side, values in (("challenger", challenger), ("champion", champion)):
            if name not in values:
                raise ValueError(f"metric {name!r} missing from the {side}'s results")
    new, old = float(challenger[primary]), float(champion[primary])
    gain = (new - old) / max(old, 1e-12)
    regressions = {}
    for name, tolerance in guardrails.items():
        drop = (float(champion[name]) - float(challenger[name])) / max(float(champion[name]), 1e-12)
        if drop > tolerance:
            regressions[name] = drop
    accepted = gain >= margin and not regressions
    if accepted:
        reason = f"{primary} {new:.4f} vs champion {old:.4f} ({gain:+.1%}, margin {margin:.1%}): accepted"
    elif regressions:
        worst = ", ".join(f"{m} {-d:+.1%} (tolerance {guardrails[m]:.1%})" for m, d in regressions.items())
        reason = f"{primary} {new:.4f} vs champion {old:.4f} ({gain:+.1%}) but guardrail regressed: {worst}"
    else:
        reason = f"{primary} {new:.4f} vs champion {old:.4f} ({gain:+.1%}) is below the {margin:.1%} margin"
    return GateDecision(accepted, primary, new, old, gain, regressions, reason)
