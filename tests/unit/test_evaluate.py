"""Ranking metrics against hand-computed cases and a plain-Python reference, and the gate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from components.evaluate import compare_to_champion, metrics_by_k, ranking_metrics


def _relevant(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(r, i) for r, items in enumerate(rows) for i in items]
    r, c = zip(*data) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def test_hand_computed_two_users():
    # user 0: recs [1, 2, 3], relevant {1, 3}: hits at ranks 1 and 3
    # user 1: recs [4, 5, 6], relevant {6, 7, 8}: hit at rank 3
    recommended = np.array([[1, 2, 3], [4, 5, 6]])
    relevant = _relevant([[1, 3], [6, 7, 8]], 10)
    m = ranking_metrics(recommended, relevant, k_values=(3,))
    d = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    ndcg0 = (d[0] + d[2]) / (d[0] + d[1])  # ideal: 2 hits at ranks 1, 2
    ndcg1 = d[2] / (d[0] + d[1] + d[2])  # ideal: 3 hits
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["recall@3"] == pytest.approx((2 / 2 + 1 / 3) / 2)
    # MAP@3: user 0 (1/1 + 2/3) / min(2, 3); user 1 (1/3) / min(3, 3)
    assert m["map@3"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 3) / 2)
    assert m["mrr"] == pytest.approx((1 / 1 + 1 / 3) / 2)
    assert m["hit_rate@3"] == 1.0
    assert m["coverage@3"] == pytest.approx(6 / 10)


def test_padding_users_without_relevant_items_and_perfect_lists():
    recommended = np.array([[2, -1, -1], [0, 1, 2], [5, 6, 7]])
    relevant = _relevant([[2], [0, 1], []], 8)  # the third user has nothing held out
    m = ranking_metrics(recommended, relevant, k_values=(3,))
    assert m["ndcg@3"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx((1 / 3 + 2 / 3) / 2)  # divides by k, not by list length
    assert m["coverage@3"] == pytest.approx(6 / 8)  # everyone's recommendations count


def test_novelty_and_diversity():
    recommended = np.array([[0, 1]])
    relevant = _relevant([[0]], 3)
    pop = np.array([50.0, 25.0, 0.0])
    m = ranking_metrics(recommended, relevant, k_values=(2,), item_popularity=pop, n_train_users=100)
    assert m["novelty@2"] == pytest.approx((-math.log2(0.5) - math.log2(0.25)) / 2)
    same = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert ranking_metrics(recommended, relevant, k_values=(2,), item_vectors=same)["diversity@2"] == pytest.approx(0.0)
    orthogonal = ranking_metrics(np.array([[0, 2]]), relevant, k_values=(2,), item_vectors=same)
    assert orthogonal["diversity@2"] == pytest.approx(1.0)


def _reference(recommended, relevant_sets, k):
    ndcgs, maps = [], []
    for recs, rel in zip(recommended, relevant_sets):
        if not rel:
            continue
        recs = [int(x) for x in recs[:k]]
        dcg = sum(1 / math.log2(i + 2) for i, x in enumerate(recs) if x in rel)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
        ndcgs.append(dcg / idcg)
        hits, ap = 0, 0.0
        for i, x in enumerate(recs):
            if x in rel:
                hits += 1
                ap += hits / (i + 1)
        maps.append(ap / min(len(rel), k))
    return float(np.mean(ndcgs)), float(np.mean(maps))


def test_matches_a_plain_python_reference_on_random_data():
    rng = np.random.default_rng(0)
    n_users, n_items, k = 200, 60, 10
    recommended = np.array([rng.permutation(n_items)[:k] for _ in range(n_users)])
    relevant_sets = [set(rng.choice(n_items, rng.integers(0, 15), replace=False).tolist()) for _ in range(n_users)]
    relevant = _relevant([sorted(s) for s in relevant_sets], n_items)
    m = ranking_metrics(recommended, relevant, k_values=(k,))
    ndcg, map_k = _reference(recommended, relevant_sets, k)
    assert m[f"ndcg@{k}"] == pytest.approx(ndcg)
    assert m[f"map@{k}"] == pytest.approx(map_k)


def test_metrics_by_k():
    assert metrics_by_k({"ndcg@10": 0.2, "ndcg@5": 0.1, "mrr": 0.3}) == {"ndcg": {5: 0.1, 10: 0.2}}


def test_gate_accepts_refuses_and_names_the_reason():
    champ = {"ndcg@10": 0.30, "recall@10": 0.20}
    guard = {"recall@10": 0.02}
    ok = compare_to_champion({"ndcg@10": 0.31, "recall@10": 0.199}, champ, primary="ndcg@10", margin=0.01, guardrails=guard)
    assert ok.accepted and ok.relative_gain == pytest.approx(1 / 30)
    small = compare_to_champion({"ndcg@10": 0.301, "recall@10": 0.2}, champ, primary="ndcg@10", margin=0.01, guardrails=guard)
    assert not small.accepted and "margin" in small.reason
    regress = compare_to_champion({"ndcg@10": 0.40, "recall@10": 0.19}, champ, primary="ndcg@10", margin=0.01, guardrails=guard)
    assert not regress.accepted and regress.guardrail_regressions == {"recall@10": pytest.approx(0.05)}
    with pytest.raises(ValueError, match="recall@10"):
        compare_to_champion({"ndcg@10": 0.4}, champ, primary="ndcg@10", margin=0.01, guardrails=guard)
