"""Explanations of the two-stage model's answers are faithful to them (components.models.explain).

Each explanation must account for the very numbers of the answer: the ranker's contributions
sum to the score that ordered it, the "because" attributions to the generator's score, the
items are the answer's in its order, and the same request explains the same way. Removing an
item's top contributor from the history must lower its generator score more often, and by
more, than removing a random history item (measured here on the small synthetic model).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faithfulness import removals

from components.config import ModelConfig
from components.models.artifact import load_model
from components.models.explain import (
    FEATURE_GROUPS,
    because_generator,
    explain_recommendations,
    explain_similar,
    feature_group,
    history_contributions,
)
from components.models.two_stage import TwoStageRecommender

K = 10


@pytest.fixture(scope="module")
def model(small_model_dir):
    loaded = load_model(small_model_dir)
    assert loaded.ranker_ is not None and {"ease", "seq_ease", "als", "content"} <= set(loaded.generators_)
    return loaded


def users(model, step: int = 5) -> list[str]:
    return [str(u) for u in model.data_.user_ids[::step]]


def fresh_history(model, user: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    """The user's training history plus n items it has not seen (the fresh ones)."""
    data = model.data_
    row = model.user_index([user])[0]
    seen = data.matrix.indices[data.matrix.indptr[row] : data.matrix.indptr[row + 1]]
    added = np.random.default_rng(seed).choice(np.setdiff1d(np.arange(data.n_items), seen), n, replace=False)
    return data.item_ids[np.concatenate([seen, added])].tolist(), data.item_ids[added].tolist()


def served_scores(model, user: str, history: list[str] | None) -> dict[str, np.ndarray]:
    """Every generator's scores of the history the served answer used."""
    row, seen = model.one_user_history(user, history)
    scores, _ = model.one_user_candidates(row, seen)
    return scores


def test_explained_items_and_scores_are_the_answer(model):
    for user in users(model):
        answer = model.recommend([user], K)
        explained = explain_recommendations(model, user, answer.item_ids[0].tolist())
        assert explained["kind"] == "personal" and explained["user_id"] == user
        assert [e["item_id"] for e in explained["items"]] == answer.item_ids[0].tolist()
        assert [e["rank"] for e in explained["items"]] == list(range(1, K + 1))
        np.testing.assert_allclose([e["score"] for e in explained["items"]], answer.scores[0], rtol=1e-6, atol=1e-6)


def test_ranker_contributions_sum_to_the_raw_score(model):
    checked = 0
    for user in users(model):
        answer = model.recommend([user], K)
        for entry in explain_recommendations(model, user, answer.item_ids[0].tolist())["items"]:
            ranker = entry["ranker"]
            assert ranker is not None  # every item of these answers is a candidate
            assert set(ranker["groups"]) <= set(FEATURE_GROUPS) and "other" not in ranker["groups"]
            assert ranker["bias"] + sum(ranker["groups"].values()) == pytest.approx(ranker["raw_score"], abs=1e-9)
            assert ranker["raw_score"] == pytest.approx(entry["score"], abs=1e-9)
            checked += 1
    assert checked == len(users(model)) * K


def test_feature_groups_cover_the_ranker_features(model):
    groups = {name: feature_group(name) for name in model.ranker_.feature_name()}
    assert "other" not in groups.values()
    assert {"generator scores", "generator ranks", "popularity", "recency", "genre overlap", "user activity"} <= set(groups.values())
    assert groups["ease_z"] == "generator scores" and groups["als_rank"] == "generator ranks"


def test_versus_next_is_the_difference_of_adjacent_items(model):
    user = users(model)[3]
    items = explain_recommendations(model, user, model.recommend([user], K).item_ids[0].tolist())["items"]
    for this, nxt in itertools.pairwise(items):
        versus = this["versus_next"]
        assert versus["item_id"] == nxt["item_id"]
        assert versus["difference"] == pytest.approx(this["score"] - nxt["score"], abs=1e-12)
        assert sum(versus["groups"].values()) == pytest.approx(
            versus["difference"] - this["ranker"]["bias"] + nxt["ranker"]["bias"], abs=1e-9
        )
    assert items[-1]["versus_next"] is None


@pytest.mark.parametrize("fresh", [0, 3])
def test_because_attributions_sum_to_the_generator_score(model, fresh):
    """Over the whole history the attributions sum to the score the generator gave: exactly for
    EASE, sequence EASE and content; for ALS, to the user step's score, which is the served
    one when the history changed (a training user's learned factors come within one sweep)."""
    seen_generators = set()
    for n, user in enumerate(users(model, 3)):
        history, added = fresh_history(model, user, fresh, seed=n) if fresh else (None, [])
        answer = model.recommend([user], K, history_item_ids=None if history is None else [history])
        explained = explain_recommendations(model, user, answer.item_ids[0].tolist(), history, added)
        scores = served_scores(model, user, history)
        row, seen = model.one_user_history(user, history)
        for entry in explained["items"]:
            name = entry["because_generator"]
            item = int(np.searchsorted(model.data_.item_ids, entry["item_id"]))
            seen_generators.add(name)
            expected = scores[name][item]
            if name == "als" and row >= 0:  # a training user: the user step of its history
                expected = model.generators_["als"].score(np.array([-1]), _history(model, seen))[0, item]
            assert entry["because_score"] == pytest.approx(float(expected), rel=1e-4, abs=1e-5)
            assert entry["because"] == sorted(entry["because"], key=lambda b: -b["contribution"])
            assert all(b["generator"] == name and b["contribution"] > 0 for b in entry["because"])
            assert {b["item_id"] for b in entry["because"] if b["fresh"]} <= set(added)
    assert seen_generators <= {"ease", "seq_ease", "als", "content"}


def _history(model, seen: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(len(seen), np.float32), (np.zeros(len(seen), int), seen)), shape=(1, model.data_.n_items))


@pytest.mark.parametrize("name", ["ease", "seq_ease", "als", "content"])
def test_each_generator_attributions_are_exact_over_the_history(model, name):
    rows = np.arange(0, model.data_.n_users, 7)
    gen = model.generators_[name]
    for row in rows:
        seen = np.sort(model.data_.matrix[row].indices).astype(np.int64)
        items = np.arange(0, model.data_.n_items, 11)
        contributions = history_contributions(model, name, seen, items)
        expected = gen.score(np.array([-1]), _history(model, seen))[0, items]
        np.testing.assert_allclose(contributions.sum(axis=0), expected, rtol=1e-4, atol=1e-5)


def test_fresh_history_items_are_marked_and_count(model):
    """A fresh item the user just used explains what it brought: a user whose only history
    is fresh is explained by those items alone, each marked."""
    data = model.data_
    history = data.item_ids[[3, 17, 42]].tolist()
    answer = model.recommend(["someone-new"], K, history_item_ids=[history])
    explained = explain_recommendations(model, "someone-new", answer.item_ids[0].tolist(), history, history[:2])
    assert explained["kind"] == "personal"
    because = [b for e in explained["items"] for b in e["because"]]
    assert because and {b["item_id"] for b in because} <= set(history)
    assert all(b["fresh"] == (b["item_id"] in history[:2]) for b in because)
    assert any(b["fresh"] for b in because)


def test_removing_the_top_because_item_lowers_the_score_more_than_a_random_one(model):
    rows = np.arange(0, model.data_.n_users, 4)
    for name in ("ease", "seq_ease"):  # linear in the history: the drop is the attribution
        found = removals(model, name, rows)
        assert found.exactness_error < 1e-5
        assert found.top_lowers == 1.0 and found.top_lowers > found.random_lowers
    for name in ("als", "content"):  # the removal also moves the user step / the profile's norm
        found = removals(model, name, rows)
        assert len(found.top_drop) > 200
        assert found.top_lowers > found.random_lowers + 0.1, (found.top_lowers, found.random_lowers)
        assert found.top_beats_random > 0.75, found.top_beats_random
        assert found.top_drop.mean() > 2 * found.random_drop.mean()


def test_explanations_are_deterministic_and_json(model):
    user = users(model)[7]
    history, added = fresh_history(model, user, 2, seed=3)
    items = model.recommend([user], K, history_item_ids=[history]).item_ids[0].tolist()
    first = json.dumps(explain_recommendations(model, user, items, history, added))
    assert all(json.dumps(explain_recommendations(model, user, items, history, added)) == first for _ in range(3))
    similar = model.similar_items(np.array([5]), K)[0][0].tolist()
    once = json.dumps(explain_similar(model, model.data_.item_ids[5], similar))
    assert json.dumps(explain_similar(model, model.data_.item_ids[5], similar)) == once


def test_cold_start_answers_say_most_popular(model):
    answer = model.recommend(["nobody"], K)
    explained = explain_recommendations(model, "nobody", answer.item_ids[0].tolist())
    assert explained["kind"] == "cold_start" and explained["reason"] == "most popular"
    np.testing.assert_allclose([e["score"] for e in explained["items"]], answer.scores[0], rtol=1e-6)
    ranks = [e["generators"][0]["rank"] for e in explained["items"]]
    assert ranks == sorted(ranks) and all(e["because"] == [] for e in explained["items"])


def test_similar_items_name_shared_genres_and_similarity(model):
    data = model.data_
    source = 5
    ids, sims = model.similar_items(np.array([source]), K)
    explained = explain_similar(model, data.item_ids[source], ids[0].tolist())
    assert explained["kind"] == "similar" and explained["reason"] == f"similar to {data.items['title'].iloc[source]}"
    own = set(data.items["genres"].iloc[source].split("|"))
    for entry, sim in zip(explained["items"], sims[0]):
        assert entry["similarity"] == pytest.approx(float(sim))
        theirs = set(data.items["genres"].iloc[int(np.searchsorted(data.item_ids, entry["item_id"]))].split("|"))
        assert set(entry["shared_genres"]) == own & theirs - {""}


def test_unknown_item_is_one_clear_error(model):
    with pytest.raises(ValueError, match="item 'no-such-item' is not in the model's catalogue"):
        explain_recommendations(model, users(model)[0], [model.data_.item_ids[0], "no-such-item"])


def test_a_model_without_ranker_explains_its_serving_generator(small_dataset):
    config = ModelConfig.model_validate({"ranker": {"enabled": False}})
    plain = TwoStageRecommender(config).fit(small_dataset.interactions, small_dataset.items, progress=lambda _: None)
    user = str(plain.data_.user_ids[0])
    answer = plain.recommend([user], K)
    explained = explain_recommendations(plain, user, answer.item_ids[0].tolist())
    np.testing.assert_allclose([e["score"] for e in explained["items"]], answer.scores[0], rtol=1e-6)
    for entry in explained["items"]:
        assert entry["ranker"] is None and entry["because_generator"] == plain.ranked_by
        assert entry["because_score"] == pytest.approx(entry["score"], rel=1e-4, abs=1e-5)


def test_a_large_catalogue_model_explains_its_retrieved_answer(small_dataset):
    """Above `scale.large_catalogue_items` the candidates come from retrieval and the item-item
    weights are pruned: the explanation uses those very rows and weights."""
    config = ModelConfig.model_validate({"scale": {
        "large_catalogue_items": 50, "item_item_items": 120, "neighbours": 30, "content_dimensions": 8,
    }, "ranker": {"folds": 2}})
    large = TwoStageRecommender(config).fit(small_dataset.interactions, small_dataset.items, progress=lambda _: None)
    assert large.large_ and large.ranker_ is not None
    assert large.generators_["content"].item_embeddings_ is not None  # the LSA space
    for name in ("ease", "seq_ease", "als", "content"):  # pruned weights, LSA: still exact sums
        for row in range(0, large.data_.n_users, 25):
            seen = np.sort(large.data_.matrix[row].indices).astype(np.int64)
            items = np.arange(0, large.data_.n_items, 9)
            expected = large.generators_[name].score(np.array([-1]), _history(large, seen))[0, items]
            got = history_contributions(large, name, seen, items).sum(axis=0)
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    for n, user in enumerate(users(large, 30)):
        history, added = fresh_history(large, user, 2, seed=n)
        answer = large.recommend([user], K, history_item_ids=[history])
        explained = explain_recommendations(large, user, answer.item_ids[0].tolist(), history, added)
        assert [e["item_id"] for e in explained["items"]] == answer.item_ids[0].tolist()
        np.testing.assert_allclose([e["score"] for e in explained["items"]], answer.scores[0], rtol=1e-6, atol=1e-6)
        scores = served_scores(large, user, history)
        for entry in explained["items"]:
            if entry["ranker"] is not None:
                assert entry["ranker"]["bias"] + sum(entry["ranker"]["groups"].values()) == pytest.approx(entry["score"], abs=1e-6)
            name = entry["because_generator"]
            item = int(np.searchsorted(large.data_.item_ids, entry["item_id"]))
            assert entry["because_score"] == pytest.approx(float(scores[name][item]), rel=1e-4, abs=1e-5)


def test_items_no_generator_proposed_are_the_popularity_fill(model):
    """Past the candidates, an answer continues in popularity order: those items have no
    ranker part and no proposing generator, and their score is the fill's."""
    user = users(model)[2]
    answer = model.recommend([user], model.data_.n_items)
    items = explain_recommendations(model, user, answer.item_ids[0].tolist())["items"]
    history = [e for e in items if e.get("in_history")]  # k beyond the unseen items: -inf in the answer
    assert len(history) == len(model.one_user_history(user, None)[1]) and np.isneginf(answer.scores[0][-len(history):]).all()
    assert all(e["score"] is None and e["because"] == [] and e["versus_next"] is None for e in history)
    items = items[: len(items) - len(history)]
    np.testing.assert_allclose([e["score"] for e in items], answer.scores[0][: len(items)], rtol=1e-6, atol=1e-6)
    filled = [e for e in items if e["ranker"] is None]
    assert filled and all(e["generators"] == [] for e in filled)
    assert all(e["ranker"] is not None for e in items[: len(items) - len(filled)])  # below every candidate
    last_ranked = items[len(items) - len(filled) - 1]
    assert last_ranked["versus_next"]["groups"] == {} and last_ranked["versus_next"]["item_id"] == filled[0]["item_id"]


def test_because_generator_is_the_best_ranked_history_generator(model):
    assert because_generator(model, {"als": 2, "ease": 5, "popularity": 1}) == "als"
    assert because_generator(model, {"seq_ease": 3, "ease": 3}) == "ease"  # a tie: EASE, exact
    assert because_generator(model, {"content": 1, "seq_ease": 3}) == "content"
    assert because_generator(model, {"popularity": 1}) == "ease"  # none proposed it: EASE
    assert because_generator(model, {}) == "ease"
