"""Ranking metrics on hand-computed cases and against a plain-Python reference; the gate."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from components.evaluation.evaluate import (
    GateDecision,
    compare_to_champion,
    metrics_by_k,
    ranking_metrics,
)

D1, D2, D3 = 1.0, 1 / math.log2(3), 1 / math.log2(4)  # rank discounts 1/log2(rank + 1)


def relevance(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    pairs = [(r, i) for r, items in enumerate(rows) for i in items]
    r, c = (list(x) for x in zip(*pairs)) if pairs else ([], [])
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


@pytest.fixture
def two_users_and_one_without_truth():
    # user 0: recs [1, 2, 3], relevant {1, 3} -> hits at ranks 1 and 3
    # user 1: recs [4, 5, 6], relevant {5, 9} -> hit at rank 2
    # user 2: recs [7, 8, 9], relevant {}     -> left out of accuracy, counted for coverage
    recommended = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    return ranking_metrics(recommended, relevance([[1, 3], [5, 9], []], 10), k_values=(1, 3))


def test_hand_computed_accuracy_at_3(two_users_and_one_without_truth):
    m = two_users_and_one_without_truth
    # NDCG: u0 (D1 + D3) / (D1 + D2) = 1.5 / 1.630930 = 0.919721; u1 D2 / (D1 + D2) = 0.386852
    assert m["ndcg@3"] == pytest.approx(((D1 + D3) / (D1 + D2) + D2 / (D1 + D2)) / 2)
    assert m["ndcg@3"] == pytest.approx(0.653287, abs=1e-6)  # (0.919721 + 0.386852) / 2
    # precision: (2/3 + 1/3) / 2 = 0.5
    assert m["precision@3"] == pytest.approx(0.5)
    # recall: (2/2 + 1/2) / 2 = 0.75
    assert m["recall@3"] == pytest.approx(0.75)
    # MAP: u0 (1/1 + 2/3) / min(2, 3) = 0.83333; u1 (1/2) / min(2, 3) = 0.25; mean 0.541667
    assert m["map@3"] == pytest.approx((5 / 6 + 1 / 4) / 2)
    # MRR: first hits at ranks 1 and 2 -> (1 + 1/2) / 2
    assert m["mrr"] == pytest.approx(0.75)
    assert m["hit_rate@3"] == pytest.approx(1.0)


def test_hand_computed_accuracy_at_1(two_users_and_one_without_truth):
    m = two_users_and_one_without_truth
    # only user 0 has a hit at rank 1
    assert m["ndcg@1"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert m["precision@1"] == pytest.approx(0.5)  # (1/1 + 0/1) / 2
    assert m["recall@1"] == pytest.approx(0.25)  # (1/2 + 0/2) / 2
    assert m["map@1"] == pytest.approx(0.5)  # u0: (1/1) / min(2, 1) = 1; u1: 0
    assert m["hit_rate@1"] == pytest.approx(0.5)


def test_coverage_counts_every_user(two_users_and_one_without_truth):
    m = two_users_and_one_without_truth
    assert m["coverage@3"] == pytest.approx(9 / 10)  # items 1..9, user 2's included
    assert m["coverage@1"] == pytest.approx(3 / 10)  # items 1, 4, 7


def test_result_keys_and_plain_floats(two_users_and_one_without_truth):
    m = two_users_and_one_without_truth
    names = ("ndcg", "precision", "recall", "map", "hit_rate", "coverage")
    expected = {f"{name}@{k}" for name in names for k in (1, 3)} | {"mrr"}
    assert set(m) == expected  # no novelty/diversity without their inputs
    assert all(type(v) is float for v in m.values())


def test_users_without_relevant_items_do_not_change_accuracy():
    recommended = np.array([[0, 1], [2, 3]])
    alone = ranking_metrics(recommended[:1], relevance([[0]], 4), k_values=(2,))
    with_empty = ranking_metrics(recommended, relevance([[0], []], 4), k_values=(2,))
    for name in ("ndcg@2", "precision@2", "recall@2", "map@2", "hit_rate@2", "mrr"):
        assert with_empty[name] == pytest.approx(alone[name])
    assert with_empty["coverage@2"] == pytest.approx(4 / 4)
    assert alone["coverage@2"] == pytest.approx(2 / 4)


def test_perfect_ranking_scores_one_and_map_divides_by_min_relevant_k():
    # 5 relevant items, the top 2 both relevant: ideal DCG over min(5, 2) = 2 hits.
    m = ranking_metrics(np.array([[0, 1]]), relevance([[0, 1, 2, 3, 4]], 6), k_values=(2,))
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["precision@2"] == pytest.approx(1.0)
    # (1/1 + 2/2) / min(5, 2) = 1; dividing by |rel| would give 0.4
    assert m["map@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(2 / 5)


def test_padding_is_never_a_hit_and_precision_divides_by_k():
    # user 0 got one recommendation (a hit) then padding; user 1 got nothing at all.
    recommended = np.array([[2, -1, -1], [-1, -1, -1]])
    m = ranking_metrics(recommended, relevance([[2], [0]], 4), k_values=(3,))
    assert m["precision@3"] == pytest.approx((1 / 3 + 0) / 2)  # k in the denominator, not 1 item
    assert m["ndcg@3"] == pytest.approx((1 + 0) / 2)  # the empty list scores 0, it is not dropped
    assert m["recall@3"] == pytest.approx(0.5)
    assert m["coverage@3"] == pytest.approx(1 / 4)


def test_lists_shorter_than_k_are_padded():
    short = ranking_metrics(np.array([[2]]), relevance([[2, 3]], 4), k_values=(3,))
    padded = ranking_metrics(np.array([[2, -1, -1]]), relevance([[2, 3]], 4), k_values=(3,))
    assert short == padded
    assert short["precision@3"] == pytest.approx(1 / 3)
    assert short["ndcg@3"] == pytest.approx(D1 / (D1 + D2))


def test_a_repeated_item_counts_once():
    # [1, 1, 2] against {1, 2}: the second 1 is padding, so hits at ranks 1 and 3.
    m = ranking_metrics(np.array([[1, 1, 2]]), relevance([[1, 2]], 3), k_values=(3,))
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((D1 + D3) / (D1 + D2))
    assert m["map@3"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_explicit_zeros_are_not_relevant():
    # the stored 0 for item 1 must count neither as a hit nor in |relevant|
    data, columns, row_starts = np.array([1.0, 0.0]), np.array([0, 1]), np.array([0, 2])
    relevant = sp.csr_matrix((data, columns, row_starts), shape=(1, 3))
    m = ranking_metrics(np.array([[1, 0]]), relevant, k_values=(2,))
    assert m["recall@2"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx(1 / 2)
    assert relevant.nnz == 2  # the caller's matrix is left as it was


@pytest.mark.parametrize(
    "recommended, message",
    [(np.array([[0, 9]]), "indices"), (np.array([[0, -2]]), "indices"), (np.array([0, 1]), "2-D"),
     (np.array([[0], [1]]), "rows")],
)
def test_bad_input_is_refused(recommended, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics(recommended, relevance([[0]], 3), k_values=(2,))


def test_novelty_is_mean_self_information():
    # p = pop / 100 users: item 0 -> 0.5 (1 bit), item 1 -> 0.25 (2 bits),
    # item 2 unseen -> treated as 1/100 (log2 100 = 6.643856 bits), item 3 -> 1.0 (0 bits)
    pop = np.array([50.0, 25.0, 0.0, 100.0])
    recommended = np.array([[0, 1], [2, 3]])
    m = ranking_metrics(recommended, relevance([[0], []], 4), k_values=(1, 2),
                        item_popularity=pop, n_train_users=100)
    assert m["novelty@2"] == pytest.approx((1 + 2 + math.log2(100) + 0) / 4)
    assert m["novelty@1"] == pytest.approx((1 + math.log2(100)) / 2)  # items 0 and 2
    with pytest.raises(ValueError, match="n_train_users"):
        ranking_metrics(recommended, relevance([[0], []], 4), k_values=(2,), item_popularity=pop)


def test_diversity_identical_orthogonal_and_mixed():
    vectors = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # lengths do not matter
    rel = relevance([[0]], 4)
    identical = ranking_metrics(np.array([[0, 1]]), rel, k_values=(2,), item_vectors=vectors)
    orthogonal = ranking_metrics(np.array([[0, 2]]), rel, k_values=(2,), item_vectors=vectors)
    assert identical["diversity@2"] == pytest.approx(0.0, abs=1e-12)
    assert orthogonal["diversity@2"] == pytest.approx(1.0)
    # [0, 2, 3]: cosines 0, 1/sqrt2, 1/sqrt2 -> mean (1 - cos) = (1 + 2 (1 - 1/sqrt2)) / 3 = 0.52860
    mixed = ranking_metrics(np.array([[0, 2, 3]]), rel, k_values=(3,), item_vectors=vectors)
    assert mixed["diversity@3"] == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    sparse = ranking_metrics(
        np.array([[0, 2, 3]]), rel, k_values=(3,), item_vectors=sp.csr_matrix(vectors)
    )
    assert sparse["diversity@3"] == pytest.approx(mixed["diversity@3"])


def test_diversity_averages_over_users_with_two_items_or_more():
    vectors = np.eye(3)
    # user 0: orthogonal pair -> 1; user 1: identical item twice -> one item, no pair, left out
    recommended = np.array([[0, 1], [2, 2]])
    m = ranking_metrics(recommended, relevance([[0], [2]], 3), k_values=(2,), item_vectors=vectors)
    assert m["diversity@2"] == pytest.approx(1.0)


def test_no_diversity_when_no_item_has_a_content_vector():
    """Items without text have all-zero vectors: every list would look perfectly diverse."""
    rel = relevance([[0]], 3)
    for empty in (np.zeros((3, 1)), sp.csr_matrix((3, 1))):
        m = ranking_metrics(np.array([[0, 1, 2]]), rel, k_values=(3,), item_vectors=empty)
        assert "diversity@3" not in m and "ndcg@3" in m


def _reference(recommended: np.ndarray, relevant_sets: list[set[int]], k: int) -> dict[str, float]:
    """Textbook per-user loops, following the conventions in the module docstring."""
    names = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")
    scores: dict[str, list[float]] = {name: [] for name in names}
    for recs, rel in zip(recommended, relevant_sets):
        if not rel:
            continue
        seen: set[int] = set()
        hits = []
        for item in (int(x) for x in recs[:k]):
            hits.append(item >= 0 and item in rel and item not in seen)
            seen.add(item)
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
        n_hits, ap = 0, 0.0
        for i, h in enumerate(hits):
            if h:
                n_hits += 1
                ap += n_hits / (i + 1)
        scores["ndcg"].append(dcg / idcg)
        scores["precision"].append(n_hits / k)
        scores["recall"].append(n_hits / len(rel))
        scores["map"].append(ap / min(len(rel), k))
        scores["hit_rate"].append(float(n_hits > 0))
        scores["mrr"].append(next((1 / (i + 1) for i, h in enumerate(hits) if h), 0.0))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def test_matches_a_plain_python_reference_on_random_data():
    rng = np.random.default_rng(7)
    n_users, n_items, width = 300, 40, 10
    recommended = rng.integers(0, n_items, size=(n_users, width))  # repeats happen
    lengths = rng.integers(0, width + 1, size=n_users)
    recommended[np.arange(width) >= lengths[:, None]] = -1  # ragged lists
    sizes = rng.integers(0, 12, size=n_users)
    relevant_sets = [set(rng.choice(n_items, size, replace=False).tolist()) for size in sizes]
    relevant = relevance([sorted(s) for s in relevant_sets], n_items)
    m = ranking_metrics(recommended, relevant, k_values=(1, 5, 10))
    for k in (1, 5, 10):
        ref = _reference(recommended, relevant_sets, k)
        for name in ("ndcg", "precision", "recall", "map", "hit_rate"):
            assert m[f"{name}@{k}"] == pytest.approx(ref[name]), f"{name}@{k}"
    assert m["mrr"] == pytest.approx(_reference(recommended, relevant_sets, 10)["mrr"])


def test_metrics_by_k():
    grouped = metrics_by_k({"ndcg@10": 0.2, "ndcg@5": 0.1, "mrr": 0.3, "recall@5": 0.4})
    assert grouped == {"ndcg": {5: 0.1, 10: 0.2}, "recall": {5: 0.4}}
    assert list(grouped["ndcg"]) == [5, 10]


CHAMPION = {"ndcg@10": 0.5, "recall@10": 0.5, "coverage@10": 0.25}
GUARDRAILS = {"recall@10": 0.25, "coverage@10": 0.5}


def gate(challenger: dict[str, float], margin: float = 0.25) -> GateDecision:
    return compare_to_champion(
        challenger, CHAMPION, primary="ndcg@10", margin=margin, guardrails=GUARDRAILS
    )


def test_gate_accepts_a_gain_at_the_margin_and_a_drop_at_the_tolerance():
    # ndcg (0.625 - 0.5) / 0.5 = +25% >= 25%; recall drop (0.5 - 0.375) / 0.5 = 25% <= 25%
    decision = gate({"ndcg@10": 0.625, "recall@10": 0.375, "coverage@10": 0.25})
    assert decision.accepted
    assert decision.primary == "ndcg@10"
    assert (decision.challenger_value, decision.champion_value) == (0.625, 0.5)
    assert decision.relative_gain == pytest.approx(0.25)
    assert decision.guardrail_regressions == {}
    assert all(part in decision.reason for part in ("Accepted", "0.6250", "0.5000", "+25.0%"))


def test_gate_refuses_a_gain_below_the_margin():
    decision = gate({"ndcg@10": 0.6, "recall@10": 0.6, "coverage@10": 0.3})  # +20% < 25%
    assert not decision.accepted
    assert decision.relative_gain == pytest.approx(0.2)
    assert "margin" in decision.reason and "+20.0%" in decision.reason


def test_gate_refuses_a_guardrail_regression_and_reports_only_those():
    # ndcg +60% but recall (0.5 - 0.25) / 0.5 = 50% > 25%; coverage -20% is within its 50%
    decision = gate({"ndcg@10": 0.8, "recall@10": 0.25, "coverage@10": 0.2})
    assert not decision.accepted
    assert decision.guardrail_regressions == {"recall@10": pytest.approx(0.5)}
    assert "recall@10" in decision.reason and "coverage@10" not in decision.reason


def test_gate_names_a_missing_metric():
    with pytest.raises(ValueError, match="coverage@10"):
        gate({"ndcg@10": 0.8, "recall@10": 0.5})
    with pytest.raises(ValueError, match="ndcg@10"):
        compare_to_champion(
            CHAMPION, {"recall@10": 0.5}, primary="ndcg@10", margin=0.0, guardrails={}
        )


def test_gate_decision_is_frozen():
    decision = gate({"ndcg@10": 0.625, "recall@10": 0.5, "coverage@10": 0.25})
    with pytest.raises(AttributeError):
        decision.accepted = False  # type: ignore[misc]


def test_accuracy_equals_the_benchmark_packages_own_metrics_on_real_data():
    """Our vectorised NDCG, precision, recall and MAP@k give the figures of Microsoft
    Recommenders' own `python_evaluation` functions, on the default data's benchmark split with
    top-10 lists that hit at every rank: each user's most popular unseen items, with some of
    their held-out items planted at random positions."""
    import pandas as pd
    from recommenders.evaluation import python_evaluation as reference

    from components.data.ingest import load_dataset
    from components.data.split import stratified_split

    df = load_dataset("movielens-dslabs").interactions
    parts = stratified_split(df, 0.25, seed=42)
    items = np.unique(df.item_id.to_numpy(str))
    users = np.unique(parts.test.user_id.to_numpy(str))
    rng = np.random.default_rng(0)
    order = np.argsort(-np.bincount(np.searchsorted(items, parts.train.item_id.to_numpy(str)),
                                    minlength=len(items)), kind="stable")
    seen = parts.train.groupby("user_id").item_id.agg(set)
    held = parts.test.groupby("user_id").item_id.agg(list)
    lists = []
    for user in users:
        ranked = [i for i in items[order[:200]] if i not in seen.get(user, ())][:10]
        for position, item in zip(rng.choice(10, size=3, replace=False), rng.permutation(held[user])):
            if rng.random() < 0.5 and item not in ranked:
                ranked[position] = item
        lists.append(ranked)
    recommended = np.searchsorted(items, np.asarray(lists))
    relevant = sp.csr_matrix(
        (np.ones(len(parts.test)), (np.searchsorted(users, parts.test.user_id.to_numpy(str)),
                                    np.searchsorted(items, parts.test.item_id.to_numpy(str)))),
        shape=(len(users), len(items)),
    )
    ours = ranking_metrics(recommended, relevant, k_values=(10,))
    truth = parts.test.rename(columns={"user_id": "userID", "item_id": "itemID"})[["userID", "itemID", "rating"]]
    pred = pd.DataFrame({"userID": np.repeat(users, 10), "itemID": np.asarray(lists).ravel(),
                         "prediction": np.tile(np.arange(10, 0, -1), len(users)).astype(float)})
    for ours_name, fn in [("ndcg@10", reference.ndcg_at_k), ("precision@10", reference.precision_at_k),
                          ("recall@10", reference.recall_at_k), ("map@10", reference.map_at_k)]:
        assert ours[ours_name] == pytest.approx(fn(truth, pred, k=10), rel=1e-9, abs=1e-12), ours_name
    assert 0.05 < ours["precision@10"] < 0.5  # hits at many ranks, not a degenerate case
